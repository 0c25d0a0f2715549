//! RFC 5321 §4.1.2 paths: `Mailbox`, `ReversePath`. Performs no I/O.

use std::fmt;

/// A validated `Local-part@Domain` (or the special `postmaster`), stored as its wire text
/// without angle brackets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox(String);

impl Mailbox {
    /// Validates RFC 5321 syntax (with RFC 6531 UTF-8 when `smtputf8`).
    pub fn parse(text: &str, smtputf8: bool) -> Option<Self> {
        let _ = (text, smtputf8);
        todo!()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `MAIL FROM:<>` or a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(Mailbox),
}

impl ReversePath {
    /// Empty string for the null path.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Null => "",
            Self::Mailbox(m) => m.as_str(),
        }
    }
}
