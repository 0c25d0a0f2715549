//! Helpers shared by the fuzz targets: a byte cursor for the fuzzer-chosen configuration, the
//! alphabet trick (fuzz bytes mapped onto SMTP tokens, after smtp-proto's fuzzer) and the
//! reply well-formedness check. Included with `#[path]` by each target; never does I/O.

#![allow(dead_code)]

use outpost::smtp::reply::MAX_REPLY_LINE;

/// Reads configuration bytes off the front of the fuzz input; yields zeros once exhausted.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Filler for bytes that do not select a token: CR, LF, TAB and printable ASCII.
const CHARS: &[u8] = b"\r\n\t !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";

/// The alphabet trick: each fuzz byte below `tokens.len()` stands for that token, every other
/// byte for one character of `CHARS`. Mutating a single byte then swaps whole SMTP words, so the
/// fuzzer reaches deep session states instead of fighting the verb parser.
pub fn expand(data: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4);
    for &b in data {
        let i = usize::from(b);
        match tokens.get(i) {
            Some(token) => out.extend_from_slice(token),
            None => out.push(CHARS[(i - tokens.len()) % CHARS.len()]),
        }
    }
    out
}

/// Asserts that `bytes` is a sequence of complete, well-formed SMTP replies (RFC 5321 §4.2):
/// every line is `DDD` then `-` (more lines follow) or ` ` / nothing (last line), at most
/// `MAX_REPLY_LINE` octets including CRLF, with no bare CR or LF inside; the lines of one reply
/// share one code, whose first digit is 2 to 5. Returns the codes of the replies.
pub fn check_replies(bytes: &[u8]) -> Vec<u16> {
    let mut codes = Vec::new();
    let mut open: Option<u16> = None;
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            panic!(
                "reply stream ends inside a line: {:?}",
                String::from_utf8_lossy(rest)
            );
        };
        let line = &rest[..=lf];
        rest = &rest[lf + 1..];
        let shown = String::from_utf8_lossy(line);
        assert!(
            line.len() <= MAX_REPLY_LINE,
            "reply line over 512 octets: {shown:?}"
        );
        assert!(
            line.ends_with(b"\r\n"),
            "reply line without CRLF: {shown:?}"
        );
        let body = &line[..line.len() - 2];
        assert!(
            !body.contains(&b'\r'),
            "bare CR inside a reply line: {shown:?}"
        );
        assert!(body.len() >= 3, "reply line shorter than a code: {shown:?}");
        assert!(
            body[..3].iter().all(u8::is_ascii_digit),
            "no 3-digit code: {shown:?}"
        );
        assert!(
            (b'2'..=b'5').contains(&body[0]),
            "code out of range: {shown:?}"
        );
        let code = body[..3]
            .iter()
            .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
        if let Some(open) = open {
            assert_eq!(open, code, "multi-line reply changes its code: {shown:?}");
        }
        let last = match body.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => panic!("code not followed by SP or '-': {shown:?}"),
        };
        if last {
            codes.push(code);
            open = None;
        } else {
            open = Some(code);
        }
    }
    assert!(open.is_none(), "multi-line reply without its last line");
    codes
}

/// RFC 5321 §2.3.8 line ends: every LF is preceded by CR.
pub fn only_crlf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b != b'\n' || (i > 0 && bytes[i - 1] == b'\r'))
}

/// Cut points for chunking invariance: the fuzzer's raw values mapped into `0..=len`, sorted.
pub fn cuts(raw: &[u16], len: usize) -> Vec<usize> {
    let mut points: Vec<usize> = raw.iter().map(|&r| usize::from(r) % (len + 1)).collect();
    points.sort_unstable();
    points
}

/// Splits `bytes` at the (sorted) cut points.
pub fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts {
        let cut = cut.min(bytes.len());
        if cut > start {
            out.push(&bytes[start..cut]);
            start = cut;
        }
    }
    out.push(&bytes[start..]);
    out
}
