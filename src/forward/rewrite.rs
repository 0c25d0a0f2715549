//! Sender rewriting for a smarthost with `from` (hosted services such as Microsoft 365, Gmail
//! and SES accept only the authenticated mailbox as sender): the envelope sender, and the
//! From: field of the message as it streams to the smarthost, with the original From: kept
//! in Reply-To: when there is none. Pure: chunks in, chunks out. Never changes the stored
//! message, and never holds more of it than the bounded header section (`MAX_HEADER`).

use crate::message::{address_list, fields, section_len};

/// The most header bytes held to rewrite From:; a longer header section goes out unchanged.
pub const MAX_HEADER: usize = 64 * 1024;

/// The MAIL FROM for a message with envelope `sender` over a smarthost with `from`: `from`,
/// except that the null sender (DSNs) stays null.
pub fn envelope_sender(sender: &str, from: Option<&str>) -> String {
    match from {
        Some(from) if !sender.is_empty() => from.to_owned(),
        _ => sender.to_owned(),
    }
}

/// `chunks` (a stored message) with its From: rewritten to `from`; with `None`, unchanged.
pub fn rewrite_from<I, E>(chunks: I, from: Option<String>) -> RewriteFrom<I>
where
    I: Iterator<Item = Result<Vec<u8>, E>>,
{
    RewriteFrom {
        inner: chunks,
        from,
        done: false,
    }
}

/// The iterator `rewrite_from` returns: it takes chunks until the header section is complete
/// (or `MAX_HEADER` is passed), hands out the header rewritten with what followed it in the
/// same chunks, then the remaining chunks as they come.
#[derive(Debug)]
pub struct RewriteFrom<I> {
    inner: I,
    from: Option<String>,
    done: bool,
}

impl<I, E> Iterator for RewriteFrom<I>
where
    I: Iterator<Item = Result<Vec<u8>, E>>,
{
    type Item = Result<Vec<u8>, E>;

    fn next(&mut self) -> Option<Self::Item> {
        let from = match (&self.from, self.done) {
            (Some(from), false) => from.clone(),
            _ => return self.inner.next(),
        };
        self.done = true;
        let mut head = Vec::new();
        loop {
            match self.inner.next() {
                Some(Ok(chunk)) => head.extend_from_slice(&chunk),
                Some(Err(e)) => return Some(Err(e)),
                None => break,
            }
            if header_complete(&head) || head.len() > MAX_HEADER {
                break;
            }
        }
        if head.is_empty() {
            return None;
        }
        if head.len() <= MAX_HEADER || header_complete(&head) {
            if let Some(rewritten) = rewrite_header(&head, &from) {
                return Some(Ok(rewritten));
            }
        }
        Some(Ok(head))
    }
}

/// Whether `bytes` hold a whole line past the header section (the empty line, or a body line
/// of a message without one).
fn header_complete(bytes: &[u8]) -> bool {
    let lines = whole_lines(bytes);
    section_len(&lines) < lines.len()
}

/// The whole lines (each ended by LF) of `bytes`, without their line ends.
fn whole_lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| line.ends_with(b"\n"))
        .map(strip_line_end)
        .collect()
}

fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `message` (at least its header section, or all of it) with From: set to `from`: every
/// From: field goes, one `From:` with `from` (and the first one's display name) takes the first
/// one's place, followed by `Reply-To:` with the original value unless the message has a
/// Reply-To:. `None` when nothing changes: the From: is `from` already, or the message starts
/// with a body line rather than a header.
pub fn rewrite_header(message: &[u8], from: &str) -> Option<Vec<u8>> {
    let raw: Vec<&[u8]> = message.split_inclusive(|&b| b == b'\n').collect();
    let lines: Vec<&[u8]> = raw.iter().map(|l| strip_line_end(l)).collect();
    let count = section_len(&lines);
    if count == 0 && lines.first().is_some_and(|l| !l.is_empty()) {
        return None;
    }
    let header = fields(&lines[..count]);
    let originals: Vec<_> = header.iter().filter(|f| f.name == "from").collect();
    if let [only] = originals.as_slice() {
        if let [address] = address_list(&only.value).as_slice() {
            if address.eq_ignore_ascii_case(from) {
                return None;
            }
        }
    }
    // The line end the message uses (stored bodies have CRLF; a bare LF one keeps LF).
    let eol: &[u8] = match raw.iter().find(|l| l.ends_with(b"\n")) {
        Some(line) if !line.ends_with(b"\r\n") => b"\n",
        _ => b"\r\n",
    };
    let first = originals.first();
    let mut new_from = b"From: ".to_vec();
    match first.and_then(|f| display_name(&f.value)) {
        Some(name) => new_from.extend_from_slice(format!("{name} <{from}>").as_bytes()),
        None => new_from.extend_from_slice(from.as_bytes()),
    }
    new_from.extend_from_slice(eol);
    if let Some(original) = first.filter(|_| !header.iter().any(|f| f.name == "reply-to")) {
        let lines = &raw[original.lines.clone()];
        new_from.extend_from_slice(&reply_to(lines, eol));
    }
    let mut out = Vec::with_capacity(message.len() + new_from.len());
    let at = first.map_or(count, |f| f.lines.start);
    let dropped = |i: usize| originals.iter().any(|f| f.lines.contains(&i));
    for (i, line) in raw.iter().enumerate() {
        if i == at {
            out.extend_from_slice(&new_from);
        }
        if !dropped(i) {
            out.extend_from_slice(line);
        }
    }
    if at >= raw.len() {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(&new_from);
    }
    Some(out)
}

/// The display name of a From: value with one `name <address>`; `None` without one.
fn display_name(value: &str) -> Option<&str> {
    if address_list(value).len() != 1 {
        return None;
    }
    let (name, _) = value.split_once('<')?;
    let name = name.trim();
    (!name.is_empty()).then_some(name)
}

/// A From: field's lines (with their line ends) renamed `Reply-To:`, folding kept; a field
/// without a line end (the end of the message) gets `eol`.
fn reply_to(lines: &[&[u8]], eol: &[u8]) -> Vec<u8> {
    let mut out = b"Reply-To:".to_vec();
    for (i, line) in lines.iter().enumerate() {
        let line = if i == 0 {
            line.iter()
                .position(|&b| b == b':')
                .map_or(&line[..], |colon| &line[colon + 1..])
        } else {
            line
        };
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\n") {
        out.extend_from_slice(eol);
    }
    out
}

#[cfg(test)]
mod tests;
