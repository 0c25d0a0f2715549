//! SMTP replies: the `Reply` type, its wire form (`write_to`, the one place that formats a reply
//! for the wire), and the incremental, bounded parser the client side uses (`parse_reply`).
//! Performs no I/O.

use std::borrow::Cow;
use std::fmt;

/// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including CRLF.
pub const MAX_REPLY_LINE: usize = 512;

/// Longest reply line `parse_reply` accepts from a peer. Larger than RFC 5321 §4.5.3.1.5's 512
/// because real servers exceed it (be lenient in what we accept), but bounded.
pub const MAX_PARSED_LINE: usize = 2048;

/// Largest multi-line reply `parse_reply` accepts (EHLO replies are the longest in practice).
pub const MAX_PARSED_REPLY: usize = 64 * 1024;

/// RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnhancedStatus {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedStatus {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parses `class.subject.detail` (RFC 3463 §2: class 2, 4 or 5; subject and detail 1–3
    /// digits) from the start of `text`. Returns the status and the bytes it spans.
    pub fn parse_prefix(text: &str) -> Option<(Self, usize)> {
        let bytes = text.as_bytes();
        let class = match bytes.first() {
            Some(b'2') => 2,
            Some(b'4') => 4,
            Some(b'5') => 5,
            _ => return None,
        };
        if bytes.get(1) != Some(&b'.') {
            return None;
        }
        let (subject, subject_len) = parse_digits(&bytes[2..])?;
        let detail_start = 2 + subject_len + 1;
        if bytes.get(2 + subject_len) != Some(&b'.') {
            return None;
        }
        let (detail, detail_len) = parse_digits(bytes.get(detail_start..)?)?;
        let end = detail_start + detail_len;
        match bytes.get(end) {
            None | Some(b' ') => Some((Self::new(class, subject, detail), end)),
            Some(_) => None,
        }
    }
}

/// One to three ASCII digits at the start of `bytes`.
fn parse_digits(bytes: &[u8]) -> Option<(u16, usize)> {
    let len = bytes
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if len == 0 || len > 3 {
        return None;
    }
    let value = bytes[..len]
        .iter()
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    Some((value, len))
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// RFC 5321 reply-code class (first digit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    PositiveCompletion,
    PositiveIntermediate,
    TransientNegative,
    PermanentNegative,
    /// Outside 2xx–5xx: a protocol error.
    Invalid,
}

/// One (possibly multi-line) SMTP reply. `text` holds lines separated by `'\n'`, without the
/// code and status, which `write_to` prefixes on every line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: Option<EnhancedStatus>,
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with owned or borrowed text.
    pub fn new(
        code: u16,
        status: Option<EnhancedStatus>,
        text: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            code,
            status,
            text: text.into(),
        }
    }

    /// A reply usable in a `const` (fixed text).
    pub const fn fixed(code: u16, status: Option<EnhancedStatus>, text: &'static str) -> Self {
        Self {
            code,
            status,
            text: Cow::Borrowed(text),
        }
    }

    pub fn severity(&self) -> Severity {
        match self.code {
            200..=299 => Severity::PositiveCompletion,
            300..=399 => Severity::PositiveIntermediate,
            400..=499 => Severity::TransientNegative,
            500..=599 => Severity::PermanentNegative,
            _ => Severity::Invalid,
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        self.severity() == Severity::PositiveCompletion
    }

    /// 3xx.
    pub fn is_intermediate(&self) -> bool {
        self.severity() == Severity::PositiveIntermediate
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        self.severity() == Severity::TransientNegative
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.severity() == Severity::PermanentNegative
    }

    /// The text lines (at least one, possibly empty).
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split('\n')
    }

    /// Appends the wire form: `250-2.0.0 line\r\n` … `250 2.0.0 last\r\n`; each line capped at
    /// 512 octets including CRLF (RFC 5321 §4.5.3.1.5). A stray CR in the text is replaced by a
    /// space so that text can never end a line early.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let code = self.code % 1000;
        let mut lines = self.lines().peekable();
        while let Some(line) = lines.next() {
            let last = lines.peek().is_none();
            let mut prefix = format!("{code:03}");
            let mut rest = String::new();
            if let Some(status) = self.status {
                rest.push_str(&status.to_string());
                if !line.is_empty() {
                    rest.push(' ');
                }
            }
            // A last line with no status and no text is just the code (RFC 5321 §4.2).
            if !last || !rest.is_empty() || !line.is_empty() {
                prefix.push(if last { ' ' } else { '-' });
            }
            prefix.push_str(&rest);
            out.extend_from_slice(prefix.as_bytes());
            let room = (MAX_REPLY_LINE - 2).saturating_sub(prefix.len());
            let text = truncate_at_char(line, room);
            out.extend(text.bytes().map(|b| if b == b'\r' { b' ' } else { b }));
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a char boundary.
fn truncate_at_char(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl fmt::Display for Reply {
    /// One line for logs: `550 5.1.1 text; next line`. Control characters are shown as spaces
    /// so that a peer's reply cannot forge log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03}", self.code)?;
        if let Some(status) = self.status {
            write!(f, " {status}")?;
        }
        for (i, line) in self.lines().enumerate() {
            f.write_str(if i == 0 { " " } else { "; " })?;
            for c in line.chars() {
                if c.is_control() {
                    f.write_str(" ")?;
                } else {
                    write!(f, "{c}")?;
                }
            }
        }
        Ok(())
    }
}

/// Why bytes from a server are not a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// Not `DDD[ -]text`, or the lines of one reply carry different codes.
    Malformed,
    /// A line over `MAX_PARSED_LINE` or a reply over `MAX_PARSED_REPLY`.
    TooLong,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => f.write_str("malformed reply"),
            Self::TooLong => f.write_str("reply too long"),
        }
    }
}

impl std::error::Error for ReplyError {}

/// Parses one complete reply (all its lines) from the start of `input`.
/// `Ok(None)`: incomplete, read more. `Ok(Some((reply, consumed)))`: one reply.
/// Lines end in CRLF or a bare LF (tolerated). The enhanced status is taken from the first
/// line when it carries one whose class matches the code (RFC 3463 §2) and is stripped from
/// every line that repeats it (RFC 2034).
pub fn parse_reply(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code = None;
    let mut lines: Vec<&[u8]> = Vec::new();
    loop {
        let rest = &input[pos..];
        let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() >= MAX_PARSED_LINE || input.len() >= MAX_PARSED_REPLY {
                return Err(ReplyError::TooLong);
            }
            return Ok(None);
        };
        if newline + 1 > MAX_PARSED_LINE {
            return Err(ReplyError::TooLong);
        }
        let mut line = &rest[..newline];
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        pos += newline + 1;
        if pos > MAX_PARSED_REPLY {
            return Err(ReplyError::TooLong);
        }
        let (line_code, last, text) = split_line(line)?;
        if *code.get_or_insert(line_code) != line_code {
            return Err(ReplyError::Malformed);
        }
        lines.push(text);
        if last {
            break;
        }
    }
    let code = code.ok_or(ReplyError::Malformed)?;
    Ok(Some((assemble(code, &lines), pos)))
}

/// `DDD-text` → (code, false, text); `DDD text` or `DDD` → (code, true, text).
fn split_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let Some(digits) = line.get(..3) else {
        return Err(ReplyError::Malformed);
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(ReplyError::Malformed);
    }
    let code = digits
        .iter()
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    match line.get(3) {
        None => Ok((code, true, &[])),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(ReplyError::Malformed),
    }
}

fn assemble(code: u16, lines: &[&[u8]]) -> Reply {
    let texts: Vec<String> = lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let status = texts
        .first()
        .and_then(|first| EnhancedStatus::parse_prefix(first))
        .map(|(status, _)| status)
        .filter(|status| u16::from(status.class) == code / 100);
    let mut text = String::new();
    for (i, line) in texts.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        let body = match status {
            Some(status) => match EnhancedStatus::parse_prefix(line) {
                Some((found, len)) if found == status => {
                    line[len..].strip_prefix(' ').unwrap_or("")
                }
                _ => line.as_str(),
            },
            None => line.as_str(),
        };
        text.push_str(body);
    }
    Reply {
        code,
        status,
        text: Cow::Owned(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(class: u8, subject: u16, detail: u16) -> Option<EnhancedStatus> {
        Some(EnhancedStatus::new(class, subject, detail))
    }

    fn wire(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn severity_follows_first_digit() {
        let cases = [
            (220, Severity::PositiveCompletion),
            (354, Severity::PositiveIntermediate),
            (421, Severity::TransientNegative),
            (550, Severity::PermanentNegative),
            (199, Severity::Invalid),
            (600, Severity::Invalid),
            (0, Severity::Invalid),
        ];
        for (code, severity) in cases {
            assert_eq!(Reply::new(code, None, "x").severity(), severity, "{code}");
        }
    }

    #[test]
    fn write_to_single_and_multi_line() {
        let cases: [(Reply, &str); 5] = [
            (Reply::new(250, st(2, 0, 0), "ok"), "250 2.0.0 ok\r\n"),
            (Reply::new(220, None, "host ESMTP"), "220 host ESMTP\r\n"),
            (
                Reply::new(250, None, "host\nPIPELINING\nSIZE 10"),
                "250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
            ),
            (
                Reply::new(550, st(5, 1, 1), "no such user\nreally"),
                "550-5.1.1 no such user\r\n550 5.1.1 really\r\n",
            ),
            (Reply::new(354, None, ""), "354\r\n"),
        ];
        for (reply, expected) in cases {
            assert_eq!(wire(&reply), expected);
        }
    }

    #[test]
    fn write_to_caps_lines_at_512_octets() {
        let long = "é".repeat(600);
        let out = wire(&Reply::new(250, st(2, 0, 0), format!("{long}\n{long}")));
        let lines: Vec<&str> = out.split_inclusive("\r\n").collect();
        assert_eq!(lines.len(), 2);
        for line in lines {
            assert!(line.len() <= MAX_REPLY_LINE, "{}", line.len());
            assert!(line.len() >= MAX_REPLY_LINE - 1);
            assert!(line.ends_with("\r\n"));
        }
    }

    #[test]
    fn write_to_never_emits_a_bare_cr() {
        let out = wire(&Reply::new(550, None, "a\rb"));
        assert_eq!(out, "550 a b\r\n");
    }

    #[test]
    fn display_is_one_line() {
        let reply = Reply::new(550, st(5, 1, 1), "no such user\nsecond\x1bline");
        assert_eq!(reply.to_string(), "550 5.1.1 no such user; second line");
        assert_eq!(Reply::new(250, None, "ok").to_string(), "250 ok");
    }

    #[test]
    fn parse_table() {
        type Case = (
            &'static [u8],
            Option<(u16, Option<EnhancedStatus>, &'static str, usize)>,
        );
        let cases: &[Case] = &[
            (b"220 host ESMTP\r\n", Some((220, None, "host ESMTP", 16))),
            (b"250 2.1.0 Ok\r\n", Some((250, st(2, 1, 0), "Ok", 14))),
            (b"250 2.1.0\r\n", Some((250, st(2, 1, 0), "", 11))),
            (b"250\r\n", Some((250, None, "", 5))),
            (b"250 ok\n", Some((250, None, "ok", 7))),
            (
                b"250-a\r\n250-b\r\n250 c\r\nrest",
                Some((250, None, "a\nb\nc", 21)),
            ),
            (b"250-a\n250 b\r\n", Some((250, None, "a\nb", 13))),
            (
                b"550-5.1.1 no\r\n550 5.1.1 user\r\n",
                Some((550, st(5, 1, 1), "no\nuser", 30)),
            ),
            // Status class must match the code: kept as text otherwise.
            (b"250 5.1.1 odd\r\n", Some((250, None, "5.1.1 odd", 15))),
            (
                b"250 2.0 not a status\r\n",
                Some((250, None, "2.0 not a status", 22)),
            ),
            (b"999 weird\r\n", Some((999, None, "weird", 11))),
            (b"250-a\r\n250", None),
            (b"25", None),
            (b"", None),
        ];
        for (input, expected) in cases {
            let got = parse_reply(input).unwrap();
            let got = got.map(|(r, n)| (r.code, r.status, r.text.into_owned(), n));
            let expected = expected.map(|(c, s, t, n)| (c, s, t.to_owned(), n));
            assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn parse_rejects_malformed() {
        let cases: &[&[u8]] = &[
            b"25x ok\r\n",
            b"2500 ok\r\n",
            b"250-a\r\n251 b\r\n",
            b"\r\n",
            b"ok\r\n",
            b"250_x\r\n",
        ];
        for input in cases {
            assert_eq!(parse_reply(input), Err(ReplyError::Malformed), "{input:?}");
        }
    }

    #[test]
    fn parse_bounds_line_and_reply_length() {
        let long_line = vec![b'a'; MAX_PARSED_LINE + 1];
        assert_eq!(parse_reply(&long_line), Err(ReplyError::TooLong));
        let mut complete_long = b"250 ".to_vec();
        complete_long.extend(vec![b'a'; MAX_PARSED_LINE]);
        complete_long.extend(b"\r\n");
        assert_eq!(parse_reply(&complete_long), Err(ReplyError::TooLong));

        let mut many = Vec::new();
        while many.len() <= MAX_PARSED_REPLY {
            many.extend(b"250-0123456789012345678901234567890123456789\r\n");
        }
        assert_eq!(parse_reply(&many), Err(ReplyError::TooLong));
        // Just under the line limit is fine.
        let mut ok = b"250 ".to_vec();
        ok.extend(vec![b'a'; MAX_PARSED_LINE - 6]);
        ok.extend(b"\r\n");
        assert!(parse_reply(&ok).unwrap().is_some());
    }

    #[test]
    fn parse_is_invariant_under_splitting() {
        let transcript: &[u8] =
            b"220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n250 2.1.0 Ok\r\n\
              550 5.1.1 <b@x>: no\r\n354 go\r\n250 2.0.0 Ok: queued\r\n";
        let whole = parse_all(transcript, transcript.len());
        assert_eq!(whole.len(), 6);
        assert_eq!(whole[1].text, "mx\nPIPELINING\nSIZE 1000");
        for step in 1..transcript.len() {
            assert_eq!(parse_all(transcript, step), whole, "step {step}");
        }
        // Every split point of two pieces.
        for cut in 0..=transcript.len() {
            let mut buf = Vec::new();
            let mut got = Vec::new();
            for piece in [&transcript[..cut], &transcript[cut..]] {
                buf.extend_from_slice(piece);
                drain(&mut buf, &mut got);
            }
            assert_eq!(got, whole, "cut {cut}");
        }
    }

    fn parse_all(input: &[u8], step: usize) -> Vec<Reply> {
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            drain(&mut buf, &mut got);
        }
        assert!(buf.is_empty());
        got
    }

    fn drain(buf: &mut Vec<u8>, got: &mut Vec<Reply>) {
        while let Some((reply, used)) = parse_reply(buf).unwrap() {
            got.push(reply);
            buf.drain(..used);
        }
    }

    #[test]
    fn write_then_parse_round_trips() {
        let replies = [
            Reply::new(250, st(2, 0, 0), "queued as 0123456789ABCDEF"),
            Reply::new(250, None, "mx\nPIPELINING\n8BITMIME"),
            Reply::new(451, st(4, 3, 0), "local\nproblem"),
        ];
        for reply in replies {
            let bytes = wire(&reply);
            let (parsed, used) = parse_reply(bytes.as_bytes()).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(parsed, reply);
        }
    }
}
