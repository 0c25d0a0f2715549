//! RFC 3464 delivery status notifications ("bounces"): a pure builder of the
//! `multipart/report; report-type=delivery-status` message sent to the original envelope
//! sender from the null reverse-path. Everything that varies (date, unique seed, hostname) is
//! an argument. No I/O.
//!
//! Injection guard: every value that came from outside (addresses, smarthost replies) has its
//! control characters replaced before it goes into a header or a delivery-status field, so it
//! can never start a header line of its own.

use std::fmt::Write as _;

use crate::message;

/// Largest excerpt of the original header section returned in the `text/rfc822-headers` part.
pub const MAX_DSN_HEADERS: usize = 16 * 1024;

/// Longest diagnostic text kept per recipient (well under RFC 5322's 998-octet line limit).
const MAX_DIAGNOSTIC: usize = 800;

/// One recipient the DSN reports as failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedRecipient {
    pub address: String,
    /// RFC 3463 status, e.g. `5.1.1` (see `status_of`).
    pub status: String,
    /// What the smarthost said (`550 5.1.1 …`) or the local reason.
    pub diagnostic: String,
}

/// Everything a DSN says.
#[derive(Clone, Debug)]
pub struct DsnInput<'a> {
    /// Our hostname: `Reporting-MTA` and `MAILER-DAEMON@hostname`.
    pub hostname: &'a str,
    /// RFC 5322 date of the DSN (`message::rfc5322_date`).
    pub date: &'a str,
    /// Makes the boundary and Message-ID unique (e.g. queue id ⊕ time).
    pub seed: u64,
    /// The original envelope sender: the DSN's recipient. Never empty (see `wants_dsn`).
    pub sender: &'a str,
    /// The original message's queue id, for the operator.
    pub queue_id: &'a str,
    /// When the original arrived (RFC 5322 date), if known.
    pub arrival_date: Option<&'a str>,
    /// Where the diagnostics came from (`dns; host`), if a smarthost answered.
    pub remote_mta: Option<&'a str>,
    pub failed: &'a [FailedRecipient],
    /// The start of the original message; only its header section is used, bounded.
    pub original: &'a [u8],
}

/// A DSN goes to the sender unless the sender is the null reverse-path: bounces are never
/// bounced (RFC 5321 §4.5.5, RFC 3464 §2).
pub fn wants_dsn(sender: &str) -> bool {
    !sender.trim().is_empty()
}

/// The RFC 3463 status to report: the reply's own enhanced status when it has one, else one
/// derived from the reply class (`5.0.0`, `4.0.0`).
pub fn status_of(diagnostic: &str) -> String {
    let mut words = diagnostic.split_ascii_whitespace();
    let code = words.next().unwrap_or("");
    let status = words.next().unwrap_or("");
    let parsed = crate::smtp::reply::EnhancedStatus::parse_prefix(status);
    match (code.as_bytes().first(), parsed) {
        (_, Some((status, _))) if code.len() == 3 => status.to_string(),
        (Some(b'4'), _) => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

/// The header section of `message` (without the empty line that ends it; all of `message` if
/// it has no body), cut at the last whole line within `MAX_DSN_HEADERS`.
pub fn header_excerpt(message: &[u8]) -> &[u8] {
    message::excerpt(message, MAX_DSN_HEADERS)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Builds the whole DSN message (headers and body, CRLF line ends, no dot-stuffing).
pub fn build(input: &DsnInput<'_>) -> Vec<u8> {
    let hostname = clean(input.hostname);
    let headers = normalize_crlf(header_excerpt(input.original));
    let boundary = boundary(input.seed, &hostname, &headers);
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = write!(
        out,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    );
    let _ = write!(out, "To: <{}>\r\n", clean(input.sender));
    let _ = write!(out, "Subject: Undelivered Mail Returned to Sender\r\n");
    let _ = write!(out, "Date: {}\r\n", clean(input.date));
    let _ = write!(out, "Message-ID: <{:016x}.dsn@{hostname}>\r\n", input.seed);
    out.push_str("Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
    let _ = write!(
        out,
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    );
    out.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    let _ = write!(
        out,
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    human_part(&mut out, input, &hostname);

    let _ = write!(
        out,
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    );
    status_part(&mut out, input, &hostname);

    let _ = write!(
        out,
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    );
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&headers);
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

fn human_part(out: &mut String, input: &DsnInput<'_>, hostname: &str) {
    let _ = write!(
        out,
        "This is the mail system at host {hostname}.\r\n\r\n\
         Your message (queue id {}) could not be delivered to one or more recipients.\r\n\
         It has been removed from the queue for them.\r\n\r\n",
        clean(input.queue_id)
    );
    for failed in input.failed {
        let _ = write!(
            out,
            "<{}>: {}\r\n",
            clean(&failed.address),
            diagnostic(failed)
        );
    }
}

fn status_part(out: &mut String, input: &DsnInput<'_>, hostname: &str) {
    let _ = write!(out, "Reporting-MTA: dns; {hostname}\r\n");
    let _ = write!(out, "X-Outpost-Queue-ID: {}\r\n", clean(input.queue_id));
    if let Some(date) = input.arrival_date {
        let _ = write!(out, "Arrival-Date: {}\r\n", clean(date));
    }
    for failed in input.failed {
        let address = clean(&failed.address);
        // RFC 6533: non-ASCII addresses use the utf-8 address type.
        let kind = if address.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        let _ = write!(out, "\r\nFinal-Recipient: {kind}; {address}\r\n");
        out.push_str("Action: failed\r\n");
        let status = clean(&failed.status);
        let status = if status.is_empty() {
            status_of(&failed.diagnostic)
        } else {
            status
        };
        let _ = write!(out, "Status: {status}\r\n");
        if let Some(remote) = input.remote_mta {
            let _ = write!(out, "Remote-MTA: {}\r\n", clean(remote));
        }
        let _ = write!(out, "Diagnostic-Code: smtp; {}\r\n", diagnostic(failed));
    }
}

fn diagnostic(failed: &FailedRecipient) -> String {
    let text = clean(&failed.diagnostic);
    if text.len() <= MAX_DIAGNOSTIC {
        return text;
    }
    let mut end = MAX_DIAGNOSTIC;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Control characters (CR, LF, TAB, …) become spaces: no value can break a header line.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Bare LF and bare CR line ends become CRLF, so the part is valid in an SMTP body.
fn normalize_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let mut iter = bytes.iter().peekable();
    while let Some(&b) = iter.next() {
        match b {
            b'\r' => {
                if iter.peek() == Some(&&b'\n') {
                    iter.next();
                }
                out.extend_from_slice(b"\r\n");
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
    }
    out
}

/// A boundary that does not occur in the quoted headers (RFC 2046 §5.1.1).
fn boundary(seed: u64, hostname: &str, headers: &[u8]) -> String {
    let mut n = 0u32;
    loop {
        let candidate = format!("{seed:016X}.{n}/{}", hostname.replace(['"', ' '], ""));
        if find(headers, candidate.as_bytes()).is_none() {
            return candidate;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(address: &str, diagnostic: &str) -> FailedRecipient {
        FailedRecipient {
            address: address.into(),
            status: status_of(diagnostic),
            diagnostic: diagnostic.into(),
        }
    }

    fn dsn(failed: &[FailedRecipient], original: &[u8]) -> String {
        let input = DsnInput {
            hostname: "outpost.lan",
            date: "Mon, 23 Nov 2026 20:38:44 +0000",
            seed: 0xABCD,
            sender: "cron@lan",
            queue_id: "00000000000000AB",
            arrival_date: Some("Mon, 23 Nov 2026 20:00:00 +0000"),
            remote_mta: Some("dns; mx.example"),
            failed,
            original,
        };
        String::from_utf8(build(&input)).unwrap()
    }

    const ORIGINAL: &[u8] = b"Subject: disk full\r\nFrom: cron@lan\r\n\r\nbody text\r\n";

    #[test]
    fn dsn_has_the_three_parts_and_the_fields() {
        let text = dsn(&[failed("a@x", "550 5.1.1 <a@x>: no such user")], ORIGINAL);
        let boundary = "000000000000ABCD.0/outpost.lan";
        assert!(text.starts_with("From: Mail Delivery System <MAILER-DAEMON@outpost.lan>\r\n"));
        assert!(text.contains("\r\nTo: <cron@lan>\r\n"));
        assert!(text.contains(&format!("boundary=\"{boundary}\"")));
        assert!(text.contains(&format!("--{boundary}\r\nContent-Type: text/plain")));
        assert!(text.contains(&format!(
            "--{boundary}\r\nContent-Type: message/delivery-status"
        )));
        assert!(text.contains(&format!(
            "--{boundary}\r\nContent-Type: text/rfc822-headers"
        )));
        assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")));
        assert!(text.contains("Reporting-MTA: dns; outpost.lan\r\n"));
        assert!(text.contains(
            "\r\nFinal-Recipient: rfc822; a@x\r\nAction: failed\r\nStatus: 5.1.1\r\n\
             Remote-MTA: dns; mx.example\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 <a@x>: no such user\r\n"
        ));
        assert!(text.contains("Subject: disk full\r\nFrom: cron@lan\r\n"));
        assert!(!text.contains("body text"), "only headers are returned");
        assert!(text.split("\r\n").all(|line| line.len() <= 998));
    }

    #[test]
    fn crlf_in_values_cannot_inject_headers() {
        let evil = failed(
            "a@x\r\nBcc: victim@y",
            "550 no\r\nX-Injected: yes\nBcc: v@y",
        );
        let text = dsn(&[evil], ORIGINAL);
        for line in text.split("\r\n") {
            assert!(!line.starts_with("Bcc:"), "{line}");
            assert!(!line.starts_with("X-Injected"), "{line}");
        }
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']));
    }

    #[test]
    fn status_comes_from_the_reply_or_its_class() {
        let cases = [
            ("550 5.1.1 no such user", "5.1.1"),
            ("452 4.2.2 mailbox full", "4.2.2"),
            ("554 transaction failed", "5.0.0"),
            ("421 closing", "4.0.0"),
            ("queued too long", "5.0.0"),
            ("550 5.1.1.1 odd", "5.0.0"),
        ];
        for (diagnostic, status) in cases {
            assert_eq!(status_of(diagnostic), status, "{diagnostic}");
        }
    }

    #[test]
    fn utf8_recipients_use_the_utf8_address_type() {
        let text = dsn(&[failed("jörg@x", "553 5.6.7 no SMTPUTF8")], ORIGINAL);
        assert!(text.contains("Final-Recipient: utf-8; jörg@x\r\n"));
    }

    #[test]
    fn header_excerpt_is_bounded_and_stops_at_the_body() {
        assert_eq!(
            header_excerpt(ORIGINAL),
            b"Subject: disk full\r\nFrom: cron@lan\r\n"
        );
        assert_eq!(header_excerpt(b"A: b\n\nbody"), b"A: b\n");
        assert_eq!(header_excerpt(b"A: b\r\n"), b"A: b\r\n");
        let mut huge = Vec::new();
        while huge.len() < 3 * MAX_DSN_HEADERS {
            huge.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        let excerpt = header_excerpt(&huge);
        assert!(excerpt.len() <= MAX_DSN_HEADERS && excerpt.len() > MAX_DSN_HEADERS - 100);
        assert!(excerpt.ends_with(b"\r\n"));
    }

    #[test]
    fn bare_lf_headers_are_returned_with_crlf() {
        let text = dsn(&[failed("a@x", "550 no")], b"Subject: x\nFrom: y\n\nbody");
        assert!(text.contains("Subject: x\r\nFrom: y\r\n"));
    }

    #[test]
    fn boundary_avoids_the_quoted_headers() {
        let original = b"X-Trap: --000000000000ABCD.0/outpost.lan\r\n\r\n";
        let text = dsn(&[failed("a@x", "550 no")], original);
        assert!(text.contains("boundary=\"000000000000ABCD.1/outpost.lan\""));
    }

    #[test]
    fn null_sender_gets_no_dsn() {
        assert!(!wants_dsn(""));
        assert!(wants_dsn("cron@lan"));
    }

    #[test]
    fn long_diagnostics_are_cut() {
        let long = format!("550 5.0.0 {}", "x".repeat(5000));
        let text = dsn(&[failed("a@x", &long)], ORIGINAL);
        assert!(text.split("\r\n").all(|line| line.len() <= 998));
    }
}
