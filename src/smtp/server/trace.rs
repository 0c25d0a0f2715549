//! The `Received:` trace header (RFC 5321 §4.4) the session writes at the top of each
//! message: the HELO name, the peer, the protocol name and, for one recipient, the recipient.
//! Formats text only; performs no I/O and reads no clock (the date comes from the glue).

use core::net::IpAddr;

use super::ServerSession;
use crate::smtp::address::MAX_DOMAIN;

impl ServerSession {
    /// RFC 5321 §4.4 trace header for the current transaction, CRLF-terminated (folded).
    pub fn received_header(&self, queue_id: &str, date: &str) -> String {
        let helo = self
            .helo
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |h| sanitize(&h.name));
        let peer = match self.params.peer.to_canonical() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("IPv6:{ip}"),
        };
        let mut header = format!(
            "Received: from {helo} ([{peer}])\r\n\tby {} (outpost) with {} id {queue_id}",
            self.params.hostname,
            self.protocol_name(),
        );
        // One recipient only: naming several would disclose the Bcc list to each of them.
        if let Some([recipient]) = self.tx.as_ref().map(|tx| tx.recipients.as_slice()) {
            header.push_str(&format!("\r\n\tfor <{recipient}>"));
        }
        header.push_str(&format!("; {date}\r\n"));
        header
    }

    /// RFC 3848 / RFC 6531 §3.7.3 `with` protocol names.
    fn protocol_name(&self) -> &'static str {
        let extended = self.helo.as_ref().is_some_and(|h| h.extended);
        let utf8 = self.tx.as_ref().is_some_and(|tx| tx.smtputf8);
        let auth = self.authenticated.is_some();
        match (utf8, self.tls_active, extended) {
            (true, true, _) if auth => "UTF8SMTPSA",
            (true, true, _) => "UTF8SMTPS",
            (true, false, _) => "UTF8SMTP",
            (false, true, _) if auth => "ESMTPSA",
            (false, true, _) => "ESMTPS",
            (false, false, true) => "ESMTP",
            (false, false, false) => "SMTP",
        }
    }
}

/// The HELO name as printed in the trace header: printable ASCII only, no comment or
/// separator characters, bounded, so a client cannot inject header lines or fields.
fn sanitize(name: &str) -> String {
    let clean: String = name
        .chars()
        .take(MAX_DOMAIN)
        .map(|c| match c {
            '(' | ')' | ';' | '\\' | '"' => '?',
            c if c.is_ascii_graphic() => c,
            _ => '?',
        })
        .collect();
    if clean.is_empty() {
        "unknown".to_owned()
    } else {
        clean
    }
}
