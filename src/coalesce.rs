//! `[coalesce]`: alert-storm control. Messages from one sender to the same recipients with the
//! same normalised Subject that wait in the queue together (queued within `window` of the
//! first) leave as one digest: a `multipart/mixed` message with a `text/plain` summary and
//! every original, unchanged, as a `message/rfc822` part. Each original is journaled on
//! arrival as any other message; only the delivery is combined.
//!
//! Pure: the Subject normalisation, the coalescing key stored with a message at commit, the
//! grouping of due messages and the digest's layout. The forwarder streams the originals'
//! bodies between the pieces built here, so a digest is never held in memory whole.

use std::fmt::Write as _;
use std::time::Duration;

/// `[coalesce]` as the forwarder uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoalescePolicy {
    /// Messages queued within this span of the first one may share a digest.
    pub window: Duration,
    /// A digest never holds more originals than this; more make several digests.
    pub max_parts: usize,
    /// Fewer due messages of one kind than this go out one by one, as without `[coalesce]`.
    pub min: usize,
}

/// Longest normalised Subject kept (bytes, cut at a char boundary): with the digest's
/// `[N alerts] ` prefix the header line stays under RFC 5322's 998 octets.
const MAX_SUBJECT: usize = 900;

/// The Subject as messages are compared: unfolded, every run of whitespace one space, trimmed,
/// and every run of ASCII digits one `#` ("disk 91% full" and "disk 97% full" are both
/// "disk #% full"). Case is kept here (the digest shows it) and folded in `key`. Encoded words
/// (RFC 2047) are compared as written, not decoded.
pub fn normalise_subject(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len().min(MAX_SUBJECT));
    let mut space = false;
    let mut digits = false;
    for c in subject.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            digits = false;
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        if c.is_ascii_digit() {
            if !digits {
                out.push('#');
                digits = true;
            }
        } else {
            out.push(c);
            digits = false;
        }
        if out.len() >= MAX_SUBJECT {
            break;
        }
    }
    while out.len() > MAX_SUBJECT {
        out.pop();
    }
    out
}

/// The coalescing key stored with a message at commit: a 64-bit FNV-1a hash of the envelope
/// sender, the recipients (lowercased; each hashed alone and the hashes added, so their order
/// does not matter) and the normalised Subject (lowercased; a missing Subject counts as empty).
/// Stable across builds and restarts. `None` for the null sender: bounces are never combined.
/// The forwarder still compares sender and recipients before it combines, so only two Subjects
/// hashing alike (odds 2^-64) could be mixed up.
pub fn key(sender: &str, recipients: &[String], subject: Option<&str>) -> Option<u64> {
    if sender.is_empty() {
        return None;
    }
    let mut hash = Fnv::new();
    hash.write(sender.as_bytes());
    let mut sum = 0u64;
    for rcpt in recipients {
        let mut one = Fnv::new();
        one.write(rcpt.to_lowercase().as_bytes());
        sum = sum.wrapping_add(one.0);
    }
    hash.write(&sum.to_be_bytes());
    let subject = normalise_subject(subject.unwrap_or(""));
    hash.write(subject.to_lowercase().as_bytes());
    Some(hash.0)
}

/// Whether two recipient lists hold the same addresses (without regard to case), each as
/// often, in any order.
pub fn same_recipients(a: &[String], b: &[String]) -> bool {
    let count =
        |list: &[String], x: &String| list.iter().filter(|y| y.eq_ignore_ascii_case(x)).count();
    a.len() == b.len() && a.iter().all(|x| count(a, x) == count(b, x))
}

/// FNV-1a, 64 bits (a fixed, documented function: std's hashers may change between releases).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// What grouping needs to know about one due message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// `None`: never combined (no key, a recipient already dealt with, …).
    pub key: Option<u64>,
    /// The envelope sender and recipients, compared as well as the key.
    pub sender: String,
    pub recipients: Vec<String>,
    /// Queue time (ms) of the commit.
    pub enqueued_at: u64,
    pub size: u64,
}

impl Candidate {
    fn same_kind(&self, other: &Self) -> bool {
        self.key.is_some()
            && self.key == other.key
            && self.sender == other.sender
            && same_recipients(&self.recipients, &other.recipients)
    }
}

/// Splits due messages (in the order they are due) into deliveries: each a list of indices into
/// `due`; one index is a message sent as it is, more are one digest, oldest first. A digest
/// starts at the first due message of its kind not yet taken and takes the later ones (in due
/// order: after a flush, oldest first) whose queue times lie within `window` of it, at most
/// `max_parts` of them and at most `max_bytes` of originals; a group smaller than `min` is not
/// formed (its messages go one by one, or join a later group). Deliveries keep the due order
/// of their first message. O(n²) in the window's length, which `max_parts` bounds.
pub fn plan(due: &[Candidate], policy: &CoalescePolicy, max_bytes: u64) -> Vec<Vec<usize>> {
    let window = u64::try_from(policy.window.as_millis()).unwrap_or(u64::MAX);
    let mut taken = vec![false; due.len()];
    let mut out = Vec::new();
    for (i, first) in due.iter().enumerate() {
        if taken[i] {
            continue;
        }
        let mut group = vec![i];
        let mut bytes = first.size;
        for (j, next) in due.iter().enumerate().skip(i + 1) {
            if group.len() >= policy.max_parts {
                break;
            }
            if !taken[j]
                && first.same_kind(next)
                && first.enqueued_at.abs_diff(next.enqueued_at) <= window
                && bytes.saturating_add(next.size) <= max_bytes
            {
                bytes = bytes.saturating_add(next.size);
                group.push(j);
            }
        }
        if group.len() < policy.min.max(2) {
            group.truncate(1);
        }
        for &j in &group {
            taken[j] = true;
        }
        // Oldest first (insertion sort: the group is short and mostly in order already).
        for k in 1..group.len() {
            let mut m = k;
            while m > 0 && due[group[m - 1]].enqueued_at > due[group[m]].enqueued_at {
                group.swap(m - 1, m);
                m -= 1;
            }
        }
        out.push(group);
    }
    out
}

/// One original in a digest: what the summary lists about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestEntry {
    /// RFC 5322 date of its receipt by outpost.
    pub received: String,
    /// Its `Date` and `Message-ID` header fields, if it had them.
    pub date: Option<String>,
    pub message_id: Option<String>,
}

/// Everything a digest says besides the originals themselves.
#[derive(Clone, Debug)]
pub struct DigestInput<'a> {
    pub hostname: &'a str,
    /// RFC 5322 date of the digest.
    pub date: &'a str,
    /// Makes the boundary and Message-ID unique (e.g. first queue id ⊕ time).
    pub seed: u64,
    /// The envelope sender (the summary names it).
    pub sender: &'a str,
    /// The first original's From and To fields (unfolded), copied into the digest's header;
    /// without From, the envelope sender; without To, `undisclosed-recipients:;` (never the
    /// envelope recipients: that would disclose a Bcc list).
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    /// The first original's normalised Subject.
    pub subject: &'a str,
    /// Oldest first, as the parts follow.
    pub entries: &'a [DigestEntry],
    /// Some original has 8-bit content: the parts say `8bit`.
    pub eight_bit: bool,
}

/// A digest as pieces around the originals: `head`, original 1, `between`, original 2, …,
/// original n, `tail`. The originals go in byte for byte as journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestLayout {
    pub head: Vec<u8>,
    pub between: Vec<u8>,
    pub tail: Vec<u8>,
}

impl DigestLayout {
    /// Size of the whole digest given the originals' sizes (for SIZE=).
    pub fn size(&self, originals: &[u64]) -> u64 {
        let n = originals.len() as u64;
        let pieces = self.head.len() as u64
            + self.between.len() as u64 * n.saturating_sub(1)
            + self.tail.len() as u64;
        originals
            .iter()
            .fold(pieces, |acc, s| acc.saturating_add(*s))
    }

    /// The whole digest in memory (tests; the forwarder streams the same pieces).
    pub fn assemble(&self, originals: &[&[u8]]) -> Vec<u8> {
        let mut out = self.head.clone();
        for (i, original) in originals.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(&self.between);
            }
            out.extend_from_slice(original);
        }
        out.extend_from_slice(&self.tail);
        out
    }
}

/// Control characters (CR, LF, …) out of a value that goes into a header or the summary, so
/// nothing from outside can start a line of its own.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Longest From/To value copied from an original; a longer one (a huge list) is replaced, as
/// cutting it would leave half an address.
const MAX_ADDRESS_FIELD: usize = 900;

/// Builds the digest's pieces. Headers: From and To as the first original had them, Subject
/// `[N alerts] <normalised subject>`. The boundary starts with `=_`, which neither base64 nor
/// quoted-printable content can contain, and carries the seed.
pub fn layout(input: &DigestInput<'_>) -> DigestLayout {
    let hostname = clean(input.hostname);
    let boundary = format!("=_outpost-digest-{:016X}", input.seed);
    let n = input.entries.len();
    let subject = clean(input.subject);
    let sender = clean(input.sender);
    let field = |value: Option<&str>| {
        value
            .map(clean)
            .filter(|v| !v.trim().is_empty() && v.len() <= MAX_ADDRESS_FIELD)
    };
    let from = field(input.from).unwrap_or_else(|| format!("<{sender}>"));
    let to = field(input.to).unwrap_or_else(|| "undisclosed-recipients:;".to_owned());
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = write!(out, "From: {from}\r\n");
    let _ = write!(out, "To: {to}\r\n");
    let _ = write!(out, "Subject: [{n} alerts] {subject}\r\n");
    let _ = write!(out, "Date: {}\r\n", clean(input.date));
    let _ = write!(
        out,
        "Message-ID: <{:016x}.digest@{hostname}>\r\n",
        input.seed
    );
    out.push_str("Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n");
    let _ = write!(
        out,
        "Content-Type: multipart/mixed;\r\n\tboundary=\"{boundary}\"\r\n"
    );
    out.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");
    let _ = write!(
        out,
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    summary(&mut out, input, &hostname, &subject, &sender);
    let part = if input.eight_bit {
        format!("--{boundary}\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
    } else {
        format!("--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n")
    };
    let mut head = out;
    head.push_str("\r\n");
    head.push_str(&part);
    DigestLayout {
        head: head.into_bytes(),
        between: format!("\r\n{part}").into_bytes(),
        tail: format!("\r\n--{boundary}--\r\n").into_bytes(),
    }
}

/// The digest's `text/plain` summary: what it combines, from whom, and one entry per original.
fn summary(out: &mut String, input: &DigestInput<'_>, hostname: &str, subject: &str, sender: &str) {
    let n = input.entries.len();
    let _ = write!(
        out,
        "{n} messages with the same subject (digits shown as #) waited in the queue of\r\n\
         {hostname} and are combined into this digest, each attached unchanged.\r\n\r\n"
    );
    let _ = write!(out, "Subject:   {subject}\r\n");
    let _ = write!(out, "Sender:    <{sender}>\r\n");
    let _ = write!(out, "Count:     {n}\r\n");
    if let (Some(first), Some(last)) = (input.entries.first(), input.entries.last()) {
        let _ = write!(out, "First:     {}\r\n", clean(&first.received));
        let _ = write!(out, "Last:      {}\r\n", clean(&last.received));
    }
    out.push_str("\r\nThe messages, oldest first:\r\n\r\n");
    let none = "(none)".to_owned();
    for (i, entry) in input.entries.iter().enumerate() {
        let _ = write!(
            out,
            "{:3}. Received:   {}\r\n     Date:       {}\r\n     Message-ID: {}\r\n",
            i + 1,
            clean(&entry.received),
            clean(entry.date.as_ref().unwrap_or(&none)),
            clean(entry.message_id.as_ref().unwrap_or(&none)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn subjects_are_unfolded_collapsed_and_digits_folded() {
        for (raw, normal) in [
            ("UPS on battery, load 41%", "UPS on battery, load #%"),
            ("  disk  91%\t full ", "disk #% full"),
            ("disk 9% full", "disk #% full"),
            ("load 12.5 at 2026-11-30", "load #.# at #-#-#"),
            ("", ""),
            ("Übertemperatur 80 °C", "Übertemperatur # °C"),
            ("folded\r\n line", "folded line"),
        ] {
            assert_eq!(normalise_subject(raw), normal, "{raw:?}");
        }
        let long = "x".repeat(5000);
        assert_eq!(normalise_subject(&long).len(), MAX_SUBJECT);
        let wide = "é".repeat(1000);
        let cut = normalise_subject(&wide);
        assert!(cut.len() <= MAX_SUBJECT && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn the_key_ignores_digits_case_and_recipient_order_but_nothing_else() {
        let ops = rcpts(&["ops@example.com", "Duty@Pager.example"]);
        let swapped = rcpts(&["duty@pager.example", "OPS@example.com"]);
        let k = key("ups@site", &ops, Some("UPS on battery, load 41%"));
        assert!(k.is_some());
        assert_eq!(
            k,
            key("ups@site", &swapped, Some("ups on  battery, LOAD 7%"))
        );
        assert_ne!(k, key("ups@site", &ops, Some("UPS on mains, load 41%")));
        assert_ne!(k, key("cam@site", &ops, Some("UPS on battery, load 41%")));
        assert_ne!(
            k,
            key("ups@site", &ops[..1], Some("UPS on battery, load 41%"))
        );
        assert_eq!(key("", &ops, Some("x")), None);
        assert!(same_recipients(&ops, &swapped));
        assert!(!same_recipients(&ops, &ops[..1]));
        let twice = rcpts(&["ops@example.com", "ops@example.com"]);
        assert!(!same_recipients(&ops, &twice) && !same_recipients(&twice, &ops));
        assert_eq!(key("a@b", &ops, None), key("a@b", &ops, Some(" ")));
        // Fixed function (FNV-1a, checked against an independent Python computation): a stored key
        // means the same after an upgrade.
        const KEY_PIN: u64 = 0x36b2_c3d0_4215_e262;
        assert_eq!(key("a@b", &rcpts(&["c@d"]), Some("x 1")), Some(KEY_PIN));
    }

    fn cand(key: u64, sender: &str, at: u64) -> Candidate {
        Candidate {
            key: Some(key),
            sender: sender.into(),
            recipients: rcpts(&["ops@example.com"]),
            enqueued_at: at,
            size: 100,
        }
    }

    fn policy(window_ms: u64, max_parts: usize, min: usize) -> CoalescePolicy {
        CoalescePolicy {
            window: Duration::from_millis(window_ms),
            max_parts,
            min,
        }
    }

    #[test]
    fn grouping_respects_key_window_max_parts_min_and_size() {
        let due = vec![
            cand(1, "ups@site", 0),  // 0
            cand(2, "disk@site", 5), // 1
            cand(1, "ups@site", 10), // 2
            Candidate {
                key: None,
                ..cand(1, "ups@site", 11)
            }, // 3: not eligible
            cand(1, "ups@site", 20), // 4
            cand(1, "ups@site", 2000), // 5: past the window of 0
            cand(1, "other@site", 21), // 6: same key, other sender (a collision)
            cand(2, "disk@site", 30), // 7
        ];
        let p = policy(1000, 100, 2);
        assert_eq!(
            plan(&due, &p, u64::MAX),
            vec![vec![0, 2, 4], vec![1, 7], vec![3], vec![5], vec![6]]
        );
        // max_parts 2: 0+2, then 4 alone (min 2 not reached).
        assert_eq!(
            plan(&due, &policy(1000, 2, 2), u64::MAX),
            vec![vec![0, 2], vec![1, 7], vec![3], vec![4], vec![5], vec![6]]
        );
        // min 3: the pair of disk alerts goes one by one.
        assert_eq!(
            plan(&due, &policy(1000, 100, 3), u64::MAX),
            vec![vec![0, 2, 4], vec![1], vec![3], vec![5], vec![6], vec![7]]
        );
        // At most 250 bytes of originals per digest.
        assert_eq!(
            plan(&due, &p, 250),
            vec![vec![0, 2], vec![1, 7], vec![3], vec![4], vec![5], vec![6]]
        );
        // Oldest first inside a digest whatever the due order (retried ones come later).
        let late = vec![cand(1, "a@b", 50), cand(1, "a@b", 10)];
        assert_eq!(plan(&late, &p, u64::MAX), vec![vec![1, 0]]);
        assert!(plan(&[], &p, u64::MAX).is_empty());
    }

    #[test]
    fn the_digest_is_laid_out_byte_for_byte() {
        let entries = [
            DigestEntry {
                received: "Mon, 30 Nov 2026 04:00:00 +0000".into(),
                date: Some("Mon, 30 Nov 2026 03:59:59 +0000".into()),
                message_id: Some("<1@ups>".into()),
            },
            DigestEntry {
                received: "Mon, 30 Nov 2026 05:00:00 +0000".into(),
                date: None,
                message_id: Some("<2@ups>\r\nBcc: x".into()),
            },
        ];
        let input = DigestInput {
            hostname: "outpost.lan",
            date: "Mon, 30 Nov 2026 06:00:00 +0000",
            seed: 0xABCD,
            sender: "ups@site.example",
            from: Some("UPS <ups@site.example>"),
            to: Some("ops@example.com, duty@pager.example"),
            subject: "UPS on battery, load #%",
            entries: &entries,
            eight_bit: false,
        };
        let layout = layout(&input);
        let one: &[u8] = b"Received: x\r\nSubject: UPS on battery, load 41%\r\n\r\nA\r\n";
        let two: &[u8] = b"Subject: UPS on battery, load 7%\r\n\r\nB\r\n";
        let digest = layout.assemble(&[one, two]);
        let expected = "From: UPS <ups@site.example>\r\n\
To: ops@example.com, duty@pager.example\r\n\
Subject: [2 alerts] UPS on battery, load #%\r\n\
Date: Mon, 30 Nov 2026 06:00:00 +0000\r\n\
Message-ID: <000000000000abcd.digest@outpost.lan>\r\n\
Auto-Submitted: auto-generated\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed;\r\n\tboundary=\"=_outpost-digest-000000000000ABCD\"\r\n\
\r\n\
This is a MIME-encapsulated message.\r\n\
\r\n\
--=_outpost-digest-000000000000ABCD\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
2 messages with the same subject (digits shown as #) waited in the queue of\r\n\
outpost.lan and are combined into this digest, each attached unchanged.\r\n\
\r\n\
Subject:   UPS on battery, load #%\r\n\
Sender:    <ups@site.example>\r\n\
Count:     2\r\n\
First:     Mon, 30 Nov 2026 04:00:00 +0000\r\n\
Last:      Mon, 30 Nov 2026 05:00:00 +0000\r\n\
\r\n\
The messages, oldest first:\r\n\
\r\n  \
1. Received:   Mon, 30 Nov 2026 04:00:00 +0000\r\n     \
Date:       Mon, 30 Nov 2026 03:59:59 +0000\r\n     \
Message-ID: <1@ups>\r\n  \
2. Received:   Mon, 30 Nov 2026 05:00:00 +0000\r\n     \
Date:       (none)\r\n     \
Message-ID: <2@ups>  Bcc: x\r\n\
\r\n\
--=_outpost-digest-000000000000ABCD\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Received: x\r\nSubject: UPS on battery, load 41%\r\n\r\nA\r\n\
\r\n\
--=_outpost-digest-000000000000ABCD\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Subject: UPS on battery, load 7%\r\n\r\nB\r\n\
\r\n\
--=_outpost-digest-000000000000ABCD--\r\n";
        assert_eq!(String::from_utf8(digest.clone()).unwrap(), expected);
        assert_eq!(
            layout.size(&[one.len() as u64, two.len() as u64]),
            digest.len() as u64
        );
        // Without From and To fields (or with an injected line), the envelope stands in.
        let bare = super::layout(&DigestInput {
            from: None,
            to: Some(" "),
            ..input.clone()
        });
        assert!(String::from_utf8(bare.head).unwrap().starts_with(
            "From: <ups@site.example>\r\nTo: undisclosed-recipients:;\r\nSubject: [2 alerts]"
        ));
        let long = "a@b, ".repeat(200);
        let injected = super::layout(&DigestInput {
            from: Some("x@y\r\nBcc: z@w"),
            to: Some(&long),
            ..input.clone()
        });
        assert!(String::from_utf8(injected.head)
            .unwrap()
            .starts_with("From: x@y  Bcc: z@w\r\nTo: undisclosed-recipients:;\r\n"));
        let eight = super::layout(&DigestInput {
            eight_bit: true,
            ..input
        });
        assert!(String::from_utf8(eight.between)
            .unwrap()
            .ends_with("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"));
    }
}
