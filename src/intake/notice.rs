//! A word to the administrator: a notice (a plain-text message to `admin`, null sender) queued
//! through the door like any message. Null sender, so a notice that fails for good makes no
//! DSN and no notice of its own. Without `admin` no notice is queued: its subject is logged once
//! per kind at INFO instead.

use std::time::{SystemTime, UNIX_EPOCH};

use log::{error, info};

use super::{Envelope, Intake, IntakeError, Source};
use crate::message::rfc5322_date;
use crate::store::QueueId;

impl Intake {
    /// Queues a notice to `admin` with `subject` and the body `text` (LF line ends); `kind`
    /// names it in log lines. `None` when `admin` is not set or the queue would not take it.
    pub async fn notify_admin(
        &self,
        kind: &'static str,
        subject: &str,
        text: &str,
    ) -> Option<QueueId> {
        let Some((admin, domain)) = self
            .rules()
            .policy
            .addresses
            .as_ref()
            .and_then(|map| Some((map.admin()?.to_owned(), map.domain().to_owned())))
        else {
            let mut unsent = self.unsent_notices.borrow_mut();
            if !unsent.contains(&kind) {
                unsent.push(kind);
                info!("no admin address set: notice not sent ({kind}): {subject}");
            }
            return None;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let serial = self.notices.get().wrapping_add(1);
        self.notices.set(serial);
        let bytes = message(&admin, &domain, subject, text, now, serial);
        let envelope = Envelope {
            sender: String::new(),
            recipients: vec![admin],
            eight_bit: !bytes.is_ascii(),
            smtputf8: false,
            received_unix: now,
        };
        match self.submit(&bytes, envelope, Source::Notice { kind }).await {
            Ok(id) => Some(id),
            Err(IntakeError::QueueFull) => {
                error!("notice ({kind}) not queued: queue full: {subject}");
                None
            }
            Err(e) => {
                error!("notice ({kind}) not queued: {e}: {subject}");
                None
            }
        }
    }
}

/// The notice as RFC 5322 text with CRLF line ends.
fn message(to: &str, domain: &str, subject: &str, text: &str, now: u64, serial: u64) -> Vec<u8> {
    let mut out = format!(
        "From: outpost <MAILER-DAEMON@{domain}>\nTo: <{to}>\nSubject: {subject}\n\
         Date: {}\nMessage-ID: <notice.{now}.{serial}.{}@{domain}>\n\
         Auto-Submitted: auto-generated\nContent-Type: text/plain; charset=utf-8\n\n{text}",
        rfc5322_date(now),
        std::process::id()
    );
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.replace('\r', "").replace('\n', "\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_is_crlf_text_with_its_headers() {
        let bytes = message("ops@example.com", "gw.test", "s", "line 1\nline 2", 0, 7);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("From: outpost <MAILER-DAEMON@gw.test>\r\nTo: <ops@example.com>\r\n")
        );
        assert!(text.contains("\r\nSubject: s\r\n"));
        assert!(text.contains("\r\nAuto-Submitted: auto-generated\r\n"));
        assert!(text.ends_with("\r\n\r\nline 1\r\nline 2\r\n"));
        assert!(!text.replace("\r\n", "").contains('\n'));
    }
}
