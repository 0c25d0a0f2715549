//! RFC 5321 §4.1.2 paths: `Mailbox`, `ReversePath`. Performs no I/O.
//!
//! Owns the mailbox grammar only: `Local-part "@" ( Domain / address-literal )`, with RFC 6531
//! UTF-8 when the transaction uses SMTPUTF8, and the special `Postmaster` (§4.1.1.3). It never
//! resolves, normalises or case-folds an address: what is accepted is stored as received.

use core::net::{Ipv4Addr, Ipv6Addr};
use std::fmt;

/// RFC 5321 §4.5.3.1.1: maximum length of a local part.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: maximum length of a domain.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3: maximum length of a path including the angle brackets.
pub const MAX_PATH: usize = 256;

/// A validated `Local-part@Domain` (or the special `postmaster`), stored as its wire text
/// without angle brackets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox(String);

impl Mailbox {
    /// Validates RFC 5321 syntax (with RFC 6531 UTF-8 when `smtputf8`).
    pub fn parse(text: &str, smtputf8: bool) -> Option<Self> {
        if !smtputf8 && !text.is_ascii() {
            return None;
        }
        // `MAX_PATH` counts the two angle brackets.
        if text.len() + 2 > MAX_PATH {
            return None;
        }
        if text.eq_ignore_ascii_case("postmaster") {
            return Some(Self(text.to_owned()));
        }
        // A domain never contains '@' (a quoted local part may), so the last one splits.
        let (local, domain) = text.rsplit_once('@')?;
        (is_local_part(local) && is_domain_or_literal(domain)).then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain or address literal; `None` for the bare `postmaster`.
    pub fn domain(&self) -> Option<&str> {
        self.0.rsplit_once('@').map(|(_, domain)| domain)
    }

    /// The bare `Postmaster` of §4.1.1.3, valid only as a forward-path.
    pub fn is_bare_postmaster(&self) -> bool {
        self.domain().is_none()
    }

    /// Whether the address needs SMTPUTF8 (RFC 6531) to be transmitted.
    pub fn is_ascii(&self) -> bool {
        self.0.is_ascii()
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

/// RFC 5322 `atext`, extended by RFC 6531 with any non-ASCII, non-control character.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || is_utf8_non_ascii(c)
}

fn is_utf8_non_ascii(c: char) -> bool {
    !c.is_ascii() && !c.is_control()
}

fn is_local_part(local: &str) -> bool {
    if local.is_empty() || local.len() > MAX_LOCAL_PART {
        return false;
    }
    match local
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        Some(quoted) => is_quoted_content(quoted),
        None => is_dot_string(local),
    }
}

/// `Dot-string = Atom *("." Atom)`.
fn is_dot_string(text: &str) -> bool {
    text.split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// `*QcontentSMTP` between the quotes: qtextSMTP or a backslash pair.
fn is_quoted_content(text: &str) -> bool {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let ok = match c {
            '\\' => chars.next().is_some_and(|e| (' '..='~').contains(&e)),
            '"' => false,
            ' '..='~' => true,
            _ => is_utf8_non_ascii(c),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn is_domain_or_literal(domain: &str) -> bool {
    match domain
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        Some(literal) => is_address_literal(literal),
        None => is_domain(domain),
    }
}

/// `Domain = sub-domain *("." sub-domain)`, `sub-domain = Let-dig [Ldh-str]`, U-labels allowed.
pub(crate) fn is_domain(domain: &str) -> bool {
    if domain.is_empty() || domain.len() > MAX_DOMAIN {
        return false;
    }
    domain.split('.').all(|label| {
        let is_let_dig = |c: char| c.is_ascii_alphanumeric() || is_utf8_non_ascii(c);
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| is_let_dig(c) || c == '-')
            && label.chars().next().is_some_and(is_let_dig)
            && label.chars().next_back().is_some_and(is_let_dig)
    })
}

/// IPv4 dotted quad or `IPv6:` followed by an IPv6 address (§4.1.3). General literals with
/// other tags are refused: no standardized tag exists that a relay could route to.
fn is_address_literal(literal: &str) -> bool {
    match literal.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => literal[5..].parse::<Ipv6Addr>().is_ok(),
        _ => literal.parse::<Ipv4Addr>().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_syntax_table() {
        // (input, smtputf8, valid)
        let table: &[(&str, bool, bool)] = &[
            ("user@example.com", false, true),
            ("first.last@sub.example.com", false, true),
            ("a+tag@example.com", false, true),
            ("!#$%&'*+-/=?^_`{|}~@example.com", false, true),
            ("\"quoted local\"@example.com", false, true),
            ("\"with\\\"escape\"@example.com", false, true),
            ("\"at@inside\"@example.com", false, true),
            ("user@[192.0.2.1]", false, true),
            ("user@[IPv6:2001:db8::1]", false, true),
            ("user@[ipv6:::1]", false, true),
            ("user@localhost", false, true),
            ("user@xn--bcher-kva.example", false, true),
            ("Postmaster", false, true),
            ("postmaster", false, true),
            ("postmaster@example.com", false, true),
            ("用户@例子.广告", true, true),
            ("用户@例子.广告", false, false),
            ("user@bücher.example", true, true),
            ("user@bücher.example", false, false),
            ("", false, false),
            ("user", false, false),
            ("@example.com", false, false),
            ("user@", false, false),
            (".user@example.com", false, false),
            ("user.@example.com", false, false),
            ("us..er@example.com", false, false),
            ("us er@example.com", false, false),
            ("user@exa mple.com", false, false),
            ("user@-example.com", false, false),
            ("user@example-.com", false, false),
            ("user@example..com", false, false),
            ("user@example.com.", false, false),
            ("user@[192.0.2.256]", false, false),
            ("user@[IPv6:nonsense]", false, false),
            ("user@[tag:value]", false, false),
            ("user@[192.0.2.1", false, false),
            ("\"unterminated@example.com", false, false),
            ("\"bad\"quote\"@example.com", false, false),
            ("\"trailing\\\"@example.com", false, false),
            ("user\u{85}@example.com", true, false),
            ("user\r@example.com", true, false),
            ("<user@example.com>", false, false),
        ];
        for &(input, smtputf8, valid) in table {
            assert_eq!(
                Mailbox::parse(input, smtputf8).is_some(),
                valid,
                "{input:?} smtputf8={smtputf8}"
            );
        }
    }

    #[test]
    fn length_limits_are_enforced() {
        let local = "a".repeat(MAX_LOCAL_PART);
        assert!(Mailbox::parse(&format!("{local}@example.com"), false).is_some());
        assert!(Mailbox::parse(&format!("{local}a@example.com"), false).is_none());
        let label = "b".repeat(63);
        assert!(Mailbox::parse(&format!("u@{label}.com"), false).is_some());
        assert!(Mailbox::parse(&format!("u@{label}b.com"), false).is_none());
        let long_domain = vec!["c".repeat(60); 5].join(".");
        assert!(Mailbox::parse(&format!("u@{long_domain}"), false).is_none());
    }

    #[test]
    fn accessors_report_domain_and_postmaster() {
        let m = Mailbox::parse("\"a@b\"@example.com", false).unwrap();
        assert_eq!(m.domain(), Some("example.com"));
        assert!(!m.is_bare_postmaster());
        let p = Mailbox::parse("PostMaster", false).unwrap();
        assert!(p.is_bare_postmaster());
        assert_eq!(p.as_str(), "PostMaster");
        assert_eq!(ReversePath::Null.as_str(), "");
    }
}
