//! Delivering one message on a ready session, and turning any delivery report (of a message
//! or a digest) into per-recipient results: the `status=` log lines, the store's record, the
//! next attempt and the DSN for bounced recipients. Never touches sled directly.

use std::cell::Cell;
use std::rc::Rc;

use log::{debug, error, info, warn};

use crate::logfmt::{Escaped, Quoted};
use crate::smtp::client::{ClientSession, DeliveryReport, Envelope};
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::store::{QueuedMessage, RcptState, StoreError};

use super::link::{transfer, Connection};
use super::outcome::{outcomes_of, ForwardError, Outcome};
use super::run::Forwarder;
use super::{dsn, rewrite, schedule, wall_clock_secs};

impl Forwarder {
    /// Sends one message on a ready session and records the outcome. `Ok(false)`: the session
    /// is over (the smarthost closed it), but the link is fine.
    pub(super) async fn deliver(
        &self,
        conn: &mut Connection,
        session: &mut ClientSession,
        message: &QueuedMessage,
    ) -> Result<bool, ForwardError> {
        self.link.set_delivering(message.id);
        let result = self.send_one(conn, session, message).await;
        self.link.delivered(message.id);
        result
    }

    async fn send_one(
        &self,
        conn: &mut Connection,
        session: &mut ClientSession,
        message: &QueuedMessage,
    ) -> Result<bool, ForwardError> {
        let pending: Vec<usize> = (0..message.recipients.len())
            .filter(|&i| message.recipients[i].state.is_open())
            .collect();
        // Over a smarthost with `from`, the sender it requires; the store keeps the original.
        let from = self.smarthost_from();
        let envelope = Envelope {
            sender: rewrite::envelope_sender(&message.info.sender, from.as_deref()),
            recipients: pending
                .iter()
                .map(|&i| message.recipients[i].address.clone())
                .collect(),
            size: message.size,
            eight_bit: message.info.eight_bit,
            smtputf8: message.info.smtputf8,
        };
        let store = self.store.clone();
        let id = message.id;
        // A piece that fails its checksum ends the transfer before it is written, and so
        // before the final dot: the smarthost never gets altered content.
        let damaged = Rc::new(Cell::new(false));
        let seen = Rc::clone(&damaged);
        let body = move || {
            store.body_chunks(id).map(|chunks| {
                let chunks = chunks.inspect(move |chunk| {
                    if matches!(chunk, Err(StoreError::Damaged(_))) {
                        seen.set(true);
                    }
                });
                rewrite::rewrite_from(chunks, from)
            })
        };
        let timeout = self.params.data_end_timeout;
        let report = match transfer(conn, session, &envelope, body, timeout).await {
            Ok(Some(report)) => report,
            Ok(None) => {
                debug!("queue_id={} not sent: session closed", message.id);
                return Ok(false);
            }
            Err(e) => {
                // Lost in the middle of a transaction: this message is deferred (so one
                // message that breaks the link cannot block the queue), then the link goes
                // down. A damaged body instead fails every pending recipient (their sender
                // gets a DSN), and the message leaves the queue for `quarantine/`; the
                // connection is dropped mid-DATA, so the smarthost discards what it got.
                let reply = if damaged.get() {
                    damaged_reply()
                } else {
                    e.as_reply()
                };
                if let Some(mut report) = session.aborted(reply.clone()) {
                    if damaged.get() {
                        report.local = Some(reply);
                    }
                    self.apply(message, &pending, &report).await;
                }
                if damaged.get() {
                    match self.store.quarantine(message.id) {
                        // It left the queue: the pass goes on at once without it.
                        Ok(()) => return Err(ForwardError::BodyDamaged),
                        Err(e) => error!("queue_id={} cannot quarantine: {e}", message.id),
                    }
                }
                return Err(e);
            }
        };
        self.apply(message, &pending, &report).await;
        Ok(session.is_ready())
    }

    /// Turns a report into per-recipient results, logs them, records them and bounces.
    pub(super) async fn apply(
        &self,
        message: &QueuedMessage,
        pending: &[usize],
        report: &DeliveryReport,
    ) {
        let outcomes = outcomes_of(report);
        let mut results = Vec::with_capacity(outcomes.len());
        let mut bounced = Vec::new();
        let mut retry = false;
        for (&index, outcome) in pending.iter().zip(&outcomes) {
            let address = &message.recipients[index].address;
            let reply = outcome.reply().to_string();
            let (state, status) = match outcome {
                Outcome::Delivered(_) => (RcptState::Delivered, "sent"),
                Outcome::Retry(_) => (RcptState::Deferred, "deferred"),
                Outcome::Bounce(_) => (RcptState::Failed, "bounced"),
            };
            let line = format!(
                "queue_id={} to=<{}> relay={} status={status} reply={}",
                message.id,
                Escaped(address),
                self.address(),
                Quoted(&reply)
            );
            match outcome {
                Outcome::Retry(_) => {
                    retry = true;
                    self.link.count_deferred();
                    self.link.set_error(format!("{address}: {reply}"));
                    warn!("{line}");
                }
                Outcome::Bounce(reply) => {
                    self.link.count_bounced();
                    self.link
                        .record_outcome(message.id, format!("bounced {reply}"));
                    self.link.set_error(format!("{address}: {reply}"));
                    warn!("{line}");
                    bounced.push(dsn::FailedRecipient {
                        address: address.clone(),
                        status: dsn::status_of(&reply.to_string()),
                        diagnostic: reply.to_string(),
                    });
                }
                Outcome::Delivered(_) => {
                    self.link.count_sent(self.active.get());
                    let smarthost = self.address();
                    self.link
                        .record_outcome(message.id, format!("sent to {smarthost}: {reply}"));
                    info!("{line}");
                }
            }
            results.push((index, state, Some(reply)));
        }
        if !self.record_attempt(message, &results, retry).await {
            return;
        }
        if !bounced.is_empty() {
            let remote = self.address().to_owned();
            self.bounce(message, &bounced, Some(&remote)).await;
        }
    }

    /// Records one delivery attempt's results; with a deferral, the next attempt is scheduled
    /// by the retry policy. `false`: the store did not record, and the task stalls.
    async fn record_attempt(
        &self,
        message: &QueuedMessage,
        results: &[(usize, RcptState, Option<String>)],
        retry: bool,
    ) -> bool {
        let attempts = message.attempts.saturating_add(1);
        let now = self.clock.now();
        let next = if retry {
            let delay = schedule::next_attempt(attempts, &self.params.policy, self.jitter());
            schedule::after(now, delay)
        } else {
            now
        };
        if let Err(e) = self
            .store
            .record(message.id, results, wall_clock_secs(), attempts, next)
            .await
        {
            error!(
                "queue_id={} cannot record delivery results: {e}",
                message.id
            );
            self.stall(now);
            return false;
        }
        true
    }
}

/// Why a message whose body failed its checksum was not sent (permanent: it never will be).
pub(super) fn damaged_reply() -> Reply {
    Reply::new(
        554,
        Some(EnhancedStatus::new(5, 3, 0)),
        "message body damaged in the queue (checksum mismatch): not sent",
    )
}
