//! Mail that cannot be delivered: expiry after `max_age`, and the DSN to the sender, built by
//! `dsn` from the original's header section and queued like any message, and the notice to
//! `admin`. Never bounces a bounce, never sends a notice about one; never touches sled directly.

use std::time::Instant;

use log::{error, info, warn};

use crate::intake::{self, IntakeError, Source};
use crate::logfmt::{Escaped, Quoted};
use crate::message::{self, rfc5322_date};
use crate::store::{QueueId, QueuedMessage, RcptState, StoreError};

use super::run::Forwarder;
use super::schedule::FAILED_NOTICES;
use super::{dsn, wall_clock_secs};

impl Forwarder {
    /// Fails every pending recipient of a message queued longer than `max_age`.
    pub(super) async fn expire(&self, message: &QueuedMessage) {
        let max_age = humantime::format_duration(self.params.policy.max_age);
        let mut results = Vec::new();
        let mut failed = Vec::new();
        for (index, recipient) in message.recipients.iter().enumerate() {
            if !recipient.state.is_open() {
                continue;
            }
            let last = recipient.last_reply.as_deref().unwrap_or("none");
            let diagnostic =
                format!("delivery time expired: queued longer than {max_age}; last reply: {last}");
            warn!(
                "queue_id={} to=<{}> status=bounced reply={}",
                message.id,
                Escaped(&recipient.address),
                Quoted(&diagnostic)
            );
            self.link.count_bounced();
            failed.push(dsn::FailedRecipient {
                address: recipient.address.clone(),
                status: "4.4.7".into(),
                diagnostic: diagnostic.clone(),
            });
            results.push((index, RcptState::Failed, Some(diagnostic)));
        }
        let now = self.clock.now();
        if let Err(e) = self
            .store
            .record(
                message.id,
                &results,
                wall_clock_secs(),
                message.attempts,
                now,
            )
            .await
        {
            error!("queue_id={} cannot record expiry: {e}", message.id);
            self.stall(now);
            return;
        }
        self.bounce(message, &failed, None).await;
    }

    /// Queues a DSN to the sender (never for the null sender: no bounce of a bounce).
    pub(super) async fn bounce(
        &self,
        message: &QueuedMessage,
        failed: &[dsn::FailedRecipient],
        smarthost: Option<&str>,
    ) {
        if failed.is_empty() {
            return;
        }
        // Never a notice about a null-sender message: DSNs and notices themselves.
        if !message.info.sender.is_empty() {
            self.notify_failed(message, failed, smarthost).await;
        }
        if !dsn::wants_dsn(&message.info.sender) {
            return;
        }
        let original = match self.header_bytes(message.id) {
            Ok(bytes) => bytes,
            Err(e) => {
                error!(
                    "queue_id={} cannot read headers for the DSN: {e}",
                    message.id
                );
                Vec::new()
            }
        };
        let now_unix = wall_clock_secs();
        let date = rfc5322_date(now_unix);
        let arrival = rfc5322_date(message.info.received_unix);
        let remote = smarthost.map(|s| format!("dns; {}", host_of(s)));
        let queue_id = message.id.to_string();
        let input = dsn::DsnInput {
            hostname: &self.params.hostname,
            date: &date,
            seed: message.id.0 ^ now_unix.rotate_left(32) ^ u64::from(self.jitter()),
            sender: &message.info.sender,
            queue_id: &queue_id,
            arrival_date: Some(&arrival),
            remote_mta: remote.as_deref(),
            failed,
            original: &original,
        };
        let bytes = dsn::build(&input);
        let envelope = intake::Envelope {
            sender: String::new(),
            recipients: vec![message.info.sender.clone()],
            eight_bit: !bytes.is_ascii(),
            smtputf8: !message.info.sender.is_ascii(),
            received_unix: now_unix,
        };
        self.enqueue(&bytes, envelope, message.id).await;
    }

    /// The notice to `admin` that `message` failed for good: who, to whom, the reply (within
    /// the rate limit of `FailedNotices`).
    async fn notify_failed(
        &self,
        message: &QueuedMessage,
        failed: &[dsn::FailedRecipient],
        smarthost: Option<&str>,
    ) {
        let first = failed.first().map_or("", |f| f.address.as_str());
        let subject = format!("outpost: mail to {first} failed for good");
        let mut text = format!(
            "outpost gave up on a message and returned it to its sender.\n\n\
             Queue ID: {}\nFrom: <{}>\nSmarthost: {}\n\nFailed recipients:\n",
            message.id,
            message.info.sender,
            smarthost.unwrap_or("none (it expired in the queue)")
        );
        for recipient in failed {
            text.push_str(&format!(
                "  <{}>: {}\n",
                recipient.address, recipient.diagnostic
            ));
        }
        let Some(held) = self.failed_notices.borrow_mut().take(Instant::now()) else {
            info!(
                "queue_id={} no notice to admin: more than {FAILED_NOTICES} failures this hour",
                message.id
            );
            return;
        };
        if held > 0 {
            text.push_str(&format!(
                "\n{held} more messages failed for good since the last notice, more than \
                 {FAILED_NOTICES} in an hour: see the log (status=bounced).\n"
            ));
        }
        self.intake.notify_admin("failed", &subject, &text).await;
    }

    /// Queues the DSN `bytes` about message `of` through intake (which logs it).
    async fn enqueue(&self, bytes: &[u8], envelope: intake::Envelope, of: QueueId) {
        let source = Source::Dsn { of };
        match self.intake.submit(bytes, envelope, source).await {
            Ok(_) => {}
            Err(IntakeError::QueueFull) => error!("queue_id={of} DSN not queued: queue full"),
            Err(IntakeError::Store(e)) => error!("queue_id={of} DSN not queued: {e}"),
            Err(e @ IntakeError::TooManyHops { .. }) => error!("queue_id={of} DSN not queued: {e}"),
        }
    }

    /// The stored message's header section, enough for a DSN's excerpt of it (bounded).
    pub(super) fn header_bytes(&self, id: QueueId) -> Result<Vec<u8>, StoreError> {
        // One byte past the excerpt's bound: a longer section is then cut at a whole line.
        message::read_section(self.store.body_chunks(id)?, dsn::MAX_DSN_HEADERS + 1)
    }
}

/// `host` of `host:port` (for `Remote-MTA` and messages).
fn host_of(smarthost: &str) -> &str {
    smarthost
        .rsplit_once(':')
        .map_or(smarthost, |(host, _)| host)
}
