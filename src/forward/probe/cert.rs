//! The three fields of a smarthost's X.509 certificate that `outpost test` prints: the
//! subject's and the issuer's common name and the end of validity, read from the DER by a
//! bounded walk. Pure; verifies nothing (rustls did that in the handshake).

/// What `outpost test` shows of a certificate.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Summary {
    pub(super) subject: String,
    pub(super) issuer: String,
    /// `notAfter` as `YYYY-MM-DD HH:MM:SS UTC`.
    pub(super) not_after: String,
}

/// Tags of the DER elements read here.
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version` in `TBSCertificate`.
const VERSION: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The DER elements in `input`, one after the other: `(tag, contents)`; stops at the first
/// malformed one (single-byte tags, definite lengths of up to four octets, as X.509 uses).
struct Elements<'a>(&'a [u8]);

impl<'a> Iterator for Elements<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let (octets, after) = rest.split_at_checked(usize::from(first & 0x7f))?;
            if octets.is_empty() || octets.len() > 4 {
                return None;
            }
            rest = after;
            octets
                .iter()
                .fold(0usize, |len, &octet| (len << 8) | usize::from(octet))
        };
        let (contents, rest) = rest.split_at_checked(len)?;
        self.0 = rest;
        Some((tag, contents))
    }
}

/// The contents of the only element in `input` if it has `tag`.
fn inside(input: &[u8], tag: u8) -> Option<&[u8]> {
    Elements(input)
        .next()
        .filter(|(t, _)| *t == tag)
        .map(|(_, contents)| contents)
}

/// Subject, issuer and expiry of a DER certificate; `None` if it is not one.
pub(super) fn summary(der: &[u8]) -> Option<Summary> {
    let tbs = inside(inside(der, SEQUENCE)?, SEQUENCE)?;
    let mut fields = Elements(tbs).peekable();
    fields.next_if(|(tag, _)| *tag == VERSION);
    // serialNumber, signature
    fields.nth(1)?;
    let (_, issuer) = fields.next()?;
    let (_, validity) = fields.next()?;
    let (_, subject) = fields.next()?;
    let (tag, time) = Elements(validity).nth(1)?;
    Some(Summary {
        subject: common_name(subject),
        issuer: common_name(issuer),
        not_after: date(tag, time)?,
    })
}

/// `CN=…` of an X.501 Name (the last CN, as the most specific), else `(no CN)`.
fn common_name(name: &[u8]) -> String {
    let found = Elements(name)
        .filter(|(tag, _)| *tag == SET)
        .flat_map(|(_, set)| Elements(set))
        .filter_map(|(_, pair)| {
            let mut pair = Elements(pair);
            let (tag, oid) = pair.next()?;
            let (_, value) = pair.next()?;
            (tag == OID && oid == COMMON_NAME).then_some(value)
        })
        .last();
    match found {
        Some(value) => format!("CN={}", String::from_utf8_lossy(value)),
        None => "(no CN)".to_owned(),
    }
}

/// An X.509 `Time` (UTCTime `YYMMDDHHMMSSZ`, years 1950–2049, or GeneralizedTime
/// `YYYYMMDDHHMMSSZ`) as `YYYY-MM-DD HH:MM:SS UTC`.
fn date(tag: u8, time: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(time).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let full = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let century = if digits < "50" { "20" } else { "19" };
            format!("{century}{digits}")
        }
        (GENERALIZED_TIME, 14) => digits.to_owned(),
        _ => return None,
    };
    let part = |range: std::ops::Range<usize>| full.get(range).unwrap_or("");
    Some(format!(
        "{}-{}-{} {}:{}:{} UTC",
        part(0..4),
        part(4..6),
        part(6..8),
        part(8..10),
        part(10..12),
        part(12..14)
    ))
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    use super::*;
    use crate::kit::TestPki;

    fn first_cert(path: &std::path::Path) -> Vec<u8> {
        CertificateDer::pem_file_iter(path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn reads_subject_issuer_and_expiry_of_a_test_pki_certificate() {
        let pki = TestPki::with_validity(&["mail.example"], Some((2020, 2031)));
        let summary = summary(&first_cert(&pki.cert)).unwrap();
        assert!(
            summary.issuer.starts_with("CN=outpost test CA "),
            "{summary:?}"
        );
        assert!(summary.subject.starts_with("CN="), "{summary:?}");
        assert_ne!(summary.subject, summary.issuer);
        assert_eq!(summary.not_after, "2031-01-01 00:00:00 UTC");
        let ca = summary_of_ca(&pki);
        assert_eq!(ca.subject, ca.issuer);
    }

    fn summary_of_ca(pki: &TestPki) -> Summary {
        summary(&first_cert(&pki.ca)).unwrap()
    }

    #[test]
    fn dates_in_both_time_forms() {
        assert_eq!(
            date(UTC_TIME, b"491231235959Z").as_deref(),
            Some("2049-12-31 23:59:59 UTC")
        );
        assert_eq!(
            date(UTC_TIME, b"500101000000Z").as_deref(),
            Some("1950-01-01 00:00:00 UTC")
        );
        assert_eq!(
            date(GENERALIZED_TIME, b"20510101000000Z").as_deref(),
            Some("2051-01-01 00:00:00 UTC")
        );
        assert_eq!(date(UTC_TIME, b"20510101000000Z"), None);
        assert_eq!(date(UTC_TIME, b"4912312359+0100"), None);
    }

    #[test]
    fn truncated_or_garbage_der_is_none_never_a_panic() {
        let pki = TestPki::loopback();
        let der = first_cert(&pki.cert);
        for len in 0..der.len() {
            let _ = summary(&der[..len]);
        }
        assert_eq!(summary(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(summary(&[0x30, 0x80]), None);
        assert_eq!(summary(b""), None);
    }
}
