//! SMTP replies: the type, its wire form, and the client-side parser. Performs no I/O.

use std::borrow::Cow;
use std::fmt;

/// RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnhancedStatus {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
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
    pub fn severity(&self) -> Severity {
        todo!()
    }
    /// Appends the wire form: `250-2.0.0 line\r\n` … `250 2.0.0 last\r\n`; each line capped at
    /// 512 octets including CRLF (RFC 5321 §4.5.3.1.5).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let _ = out;
        todo!()
    }
}

impl fmt::Display for Reply {
    /// One line for logs: `550 5.1.1 text; next line`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let _ = f;
        todo!()
    }
}

/// Why bytes from a server are not a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyError {
    Malformed,
    TooLong,
}

/// Parses one complete reply (all its lines) from the start of `input`.
/// `Ok(None)`: incomplete, read more. `Ok(Some((reply, consumed)))`: one reply.
/// Enhanced status is parsed when every line carries one (RFC 2034).
pub fn parse_reply(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let _ = input;
    todo!()
}
