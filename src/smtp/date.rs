//! RFC 5322 §3.3 date-time formatting from a Unix time given by the caller. Performs no I/O.

/// `Mon, 23 Nov 2026 20:38:44 +0000`.
pub fn rfc5322_date(unix_secs: u64) -> String {
    let _ = unix_secs;
    todo!()
}
