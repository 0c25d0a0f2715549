//! `HeaderWatch`: collects named header fields from a message as its bytes arrive, in pieces of
//! any size and in memory bounded by constants (one RFC 5322 line, `MAX_WATCHED` fields), and
//! counts the `Received:` fields (the hop count `max_hops` limits). It feeds `[[priority]]` and
//! `[coalesce]` classification, the digest's summary and the loop check. Pure.

use std::rc::Rc;

use super::header::{is_continuation, split_field, unfold_onto, MAX_LINE};

/// Fields a watch keeps at most: a message repeating a watched field a thousand times gets no
/// more.
pub const MAX_WATCHED: usize = 16;

/// Collects the watched fields from a message's header section as its bytes arrive; stops at
/// the empty line that ends the header. A line longer than `MAX_LINE` is cut there; a field is
/// unfolded up to `MAX_LINE` bytes.
#[derive(Debug, Default)]
pub struct HeaderWatch {
    names: Rc<[String]>,
    line: heapless::Vec<u8, MAX_LINE>,
    /// The current field is a watched one: its continuation lines belong to it.
    in_watched: bool,
    fields: heapless::Vec<(String, String), MAX_WATCHED>,
    /// `Received:` fields in the header section so far (saturating).
    received: u32,
    done: bool,
}

impl HeaderWatch {
    /// Watches `names` (lowercase; shared, since they depend on the config only); with none,
    /// `feed` only counts `Received:` fields.
    pub fn new(names: Rc<[String]>) -> Self {
        Self {
            names,
            ..Self::default()
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !self.done && !bytes.is_empty() {
            let (piece, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            let room = MAX_LINE.saturating_sub(self.line.len());
            // Cannot fail: the piece is cut to the room left.
            let _ = self.line.extend_from_slice(&piece[..piece.len().min(room)]);
            bytes = rest;
            if complete {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&line);
            }
        }
    }

    fn line_done(&mut self, line: &[u8]) {
        if line.is_empty() {
            self.done = true;
            return;
        }
        if is_continuation(line) {
            if let (true, Some((_, value))) = (self.in_watched, self.fields.last_mut()) {
                unfold_onto(value, &String::from_utf8_lossy(line), MAX_LINE);
            }
            return;
        }
        self.in_watched = false;
        if is_received(line) {
            self.received = self.received.saturating_add(1);
        }
        if self.names.is_empty() || self.fields.is_full() {
            return;
        }
        let Some((name, value)) = split_field(&String::from_utf8_lossy(line)) else {
            return;
        };
        if self.names.contains(&name) {
            // Cannot fail: checked for room just above.
            let _ = self.fields.push((name, value));
            self.in_watched = true;
        }
    }

    /// The watched fields seen so far: (lowercase name, unfolded trimmed value).
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    /// The `Received:` fields in the header section seen so far: the message's hop count.
    pub fn received(&self) -> u32 {
        self.received
    }

    /// The value of the first watched field named `name` (lowercase) seen so far.
    pub fn field(&self, name: &str) -> Option<&str> {
        super::header::field(&self.fields, name)
    }
}

/// A `Received:` field's first line (the name in any case, optional blanks before the colon).
fn is_received(line: &[u8]) -> bool {
    const NAME: &[u8] = b"received";
    line.len() > NAME.len()
        && line[..NAME.len()].eq_ignore_ascii_case(NAME)
        && line[NAME.len()..]
            .iter()
            .find(|&&b| b != b' ' && b != b'\t')
            == Some(&b':')
}

#[cfg(test)]
mod hops;

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_watch_finds_fields_across_any_split_and_stops_at_the_body() {
        let message = b"Received: from cam\r\n\tby outpost; now\r\nX-Priority: 1\r\n \
            (Highest)\r\nSubject: UPS on battery\r\nimportance:   High  \r\n\r\n\
            X-Priority: 5\r\nbody\r\n";
        for cut in 0..message.len() {
            let mut watch = HeaderWatch::new(["x-priority".into(), "importance".into()].into());
            watch.feed(&message[..cut]);
            watch.feed(&message[cut..]);
            assert_eq!(
                watch.fields(),
                fields(&[("x-priority", "1 (Highest)"), ("importance", "High")]),
                "cut at {cut}"
            );
            assert_eq!(watch.field("importance"), Some("High"));
            assert_eq!(watch.field("subject"), None);
        }
        // Byte by byte, bare LF line ends too.
        let mut watch = HeaderWatch::new(["importance".into()].into());
        for b in b"Importance: low\n\nImportance: high\n" {
            watch.feed(&[*b]);
        }
        assert_eq!(watch.fields(), fields(&[("importance", "low")]));
    }

    #[test]
    fn the_watch_is_bounded() {
        let mut watch = HeaderWatch::new(["x-priority".into()].into());
        let long = format!("X-Priority: {}\r\n", "9".repeat(100_000));
        watch.feed(long.as_bytes());
        for _ in 0..1000 {
            watch.feed(b"X-Priority: 1\r\n \r\n\tmore\r\n");
        }
        assert_eq!(watch.fields().len(), MAX_WATCHED);
        assert!(watch.fields().iter().all(|(_, v)| v.len() <= MAX_LINE));
        assert_eq!(watch.fields()[1].1, "1 more");
        // Continuation lines stop adding once the value would pass one line.
        let mut folded = HeaderWatch::new(["subject".into()].into());
        folded.feed(b"Subject: a\r\n");
        for _ in 0..1000 {
            folded.feed(b" 0123456789\r\n");
        }
        let subject = folded.field("subject").unwrap_or_default();
        assert!(
            subject.len() <= MAX_LINE && subject.len() > MAX_LINE - 11,
            "{subject}"
        );
        // Nothing watched: nothing kept.
        let mut idle = HeaderWatch::new(Rc::from([]));
        idle.feed(b"X-Priority: 1\r\n\r\n");
        assert!(idle.fields().is_empty());
    }
}
