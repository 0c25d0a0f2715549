//! `[coalesce]` at delivery: the due messages planned as deliveries (`coalesce::plan`), and a
//! group of originals sent as one digest, streamed from the store between the pieces
//! `coalesce::layout` builds, with the smarthost's verdict applied to every original. Never
//! holds a whole digest in memory; never touches sled directly.

use std::cell::Cell;
use std::rc::Rc;

use log::{debug, error, info};

use crate::coalesce::{self, DigestEntry, DigestInput, DigestLayout};
use crate::message::{rfc5322_date, HeaderWatch};
use crate::smtp::client::{ClientSession, Envelope};
use crate::store::{QueueId, QueuedMessage, Store, StoreError};

use super::deliver::damaged_reply;
use super::link::{transfer, Connection};
use super::outcome::ForwardError;
use super::run::Forwarder;
use super::{rewrite, wall_clock_secs};

impl Forwarder {
    /// `[coalesce]`: the due messages as deliveries, in due order: one message each, or
    /// several of one kind for one digest (`coalesce::plan`), compared by the recipients
    /// still to be tried.
    pub(super) fn plan(&self, batch: Vec<QueuedMessage>) -> Vec<Vec<QueuedMessage>> {
        let Some(policy) = self.params.coalesce else {
            return batch.into_iter().map(|m| vec![m]).collect();
        };
        let candidates: Vec<coalesce::Candidate> = batch
            .iter()
            .map(|m| {
                let open = open_recipients(m);
                coalesce::Candidate {
                    key: m.info.coalesce.filter(|_| !open.is_empty()),
                    sender: m.info.sender.clone(),
                    recipients: open,
                    enqueued_at: m.enqueued_at,
                    size: m.size,
                }
            })
            .collect();
        let plan = coalesce::plan(&candidates, &policy, self.params.max_digest_bytes);
        let mut slots: Vec<Option<QueuedMessage>> = batch.into_iter().map(Some).collect();
        plan.into_iter()
            .map(|delivery| {
                delivery
                    .into_iter()
                    .filter_map(|i| slots.get_mut(i).and_then(Option::take))
                    .collect()
            })
            .collect()
    }

    /// Sends `group` (oldest first, same sender and recipients still to be tried) as one
    /// digest and records the smarthost's verdict for every original: delivered, deferred or
    /// bounced (one DSN per original) together. `Ok(false)` as for `deliver`.
    pub(super) async fn deliver_digest(
        &self,
        conn: &mut Connection,
        session: &mut ClientSession,
        group: &[QueuedMessage],
    ) -> Result<bool, ForwardError> {
        let Some(first) = group.first() else {
            return Ok(true);
        };
        // The recipients still to be tried are the same in every original (`plan`): the digest
        // goes to them in the first original's order; each original's are matched by address.
        let recipients = open_recipients(first);
        let layout = self.digest_layout(group);
        let sizes: Vec<u64> = group.iter().map(|m| m.size).collect();
        let from = self.smarthost_from();
        let envelope = Envelope {
            sender: rewrite::envelope_sender(&first.info.sender, from.as_deref()),
            recipients: recipients.clone(),
            size: layout.size(&sizes),
            eight_bit: group.iter().any(|m| m.info.eight_bit) || !layout.head.is_ascii(),
            smtputf8: group.iter().any(|m| m.info.smtputf8),
        };
        let ids: Vec<QueueId> = group.iter().map(|m| m.id).collect();
        info!(
            "queue_id={} digest of {} messages: {}",
            first.id,
            ids.len(),
            ids.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let store = self.store.clone();
        // An original whose piece fails its checksum ends the transfer before the final dot.
        let damaged = Rc::new(Cell::new(None));
        let seen = Rc::clone(&damaged);
        let body = move || {
            let chunks = digest_body(&store, ids, layout, seen);
            Ok::<_, StoreError>(rewrite::rewrite_from(chunks, from))
        };
        let timeout = self.params.data_end_timeout;
        let (report, result) = match transfer(conn, session, &envelope, body, timeout).await {
            Ok(Some(report)) => (report, Ok(session.is_ready())),
            Ok(None) => {
                debug!("queue_id={} digest not sent: session closed", first.id);
                return Ok(false);
            }
            Err(e) => {
                if let Some(bad) = damaged.get() {
                    return self
                        .quarantine_original(session, group, &recipients, bad, e)
                        .await;
                }
                match session.aborted(e.as_reply()) {
                    Some(report) => (report, Err(e)),
                    None => return Err(e),
                }
            }
        };
        for message in group {
            let pending = match_recipients(&recipients, message);
            self.apply(message, &pending, &report).await;
        }
        result
    }

    /// A digest cut because original `bad` failed its checksum: `bad`'s recipients fail for
    /// good (its sender gets a DSN) and it leaves the queue for `quarantine/`; the other
    /// originals stay as they were, due at once. `BodyDamaged` lets the pass go on over a new
    /// connection; `error` (the link's) when `bad` could not be quarantined.
    async fn quarantine_original(
        &self,
        session: &mut ClientSession,
        group: &[QueuedMessage],
        recipients: &[String],
        bad: QueueId,
        error: ForwardError,
    ) -> Result<bool, ForwardError> {
        let reply = damaged_reply();
        let Some(message) = group.iter().find(|m| m.id == bad) else {
            return Err(error);
        };
        if let Some(mut report) = session.aborted(reply.clone()) {
            report.local = Some(reply);
            let pending = match_recipients(recipients, message);
            self.apply(message, &pending, &report).await;
        }
        match self.store.quarantine(bad) {
            Ok(()) => Err(ForwardError::BodyDamaged),
            Err(e) => {
                error!("queue_id={bad} cannot quarantine: {e}");
                Err(error)
            }
        }
    }

    /// The digest's pieces for `group` (not empty): its header and summary from the
    /// originals' header fields (Subject, From and To of the first; Date and Message-ID of
    /// each), the separators and the tail.
    fn digest_layout(&self, group: &[QueuedMessage]) -> DigestLayout {
        let mut entries = Vec::with_capacity(group.len());
        let mut subject = None;
        let mut addresses = (None, None);
        let names: Rc<[String]> = ["subject", "date", "message-id", "from", "to"]
            .map(String::from)
            .into();
        for message in group {
            // Unreadable here, unreadable in the digest too: the store error then ends the
            // transfer, and every original is deferred.
            let header = self.header_bytes(message.id).unwrap_or_default();
            let mut watch = HeaderWatch::new(Rc::clone(&names));
            watch.feed(&header);
            let field = |name: &str| watch.field(name).map(str::to_owned);
            if subject.is_none() {
                subject = Some(coalesce::normalise_subject(
                    &field("subject").unwrap_or_default(),
                ));
                addresses = (field("from"), field("to"));
            }
            entries.push(DigestEntry {
                received: rfc5322_date(message.info.received_unix),
                date: field("date"),
                message_id: field("message-id"),
            });
        }
        let (first_id, sender) = group
            .first()
            .map_or((0, ""), |m| (m.id.0, m.info.sender.as_str()));
        let now_unix = wall_clock_secs();
        let date = rfc5322_date(now_unix);
        coalesce::layout(&DigestInput {
            hostname: &self.params.hostname,
            date: &date,
            seed: first_id ^ now_unix.rotate_left(32) ^ u64::from(self.jitter()),
            sender,
            from: addresses.0.as_deref(),
            to: addresses.1.as_deref(),
            subject: subject.as_deref().unwrap_or(""),
            entries: &entries,
            eight_bit: group.iter().any(|m| m.info.eight_bit),
        })
    }
}

/// The recipients of `message` still to be tried (pending or deferred), in order.
fn open_recipients(message: &QueuedMessage) -> Vec<String> {
    message
        .recipients
        .iter()
        .filter(|r| r.state.is_open())
        .map(|r| r.address.clone())
        .collect()
}

/// For each of a digest's recipients (in order), the index of the same address (without
/// regard to case) among `message`'s recipients still to be tried, each index used once: the
/// digest's report read as this original's.
fn match_recipients(recipients: &[String], message: &QueuedMessage) -> Vec<usize> {
    let mut used = vec![false; message.recipients.len()];
    let mut out = Vec::with_capacity(recipients.len());
    for address in recipients {
        let found = message.recipients.iter().enumerate().position(|(i, r)| {
            !used[i] && r.state.is_open() && r.address.eq_ignore_ascii_case(address)
        });
        if let Some(i) = found {
            used[i] = true;
            out.push(i);
        }
    }
    out
}

/// A digest's body as it goes out: the head, each original's body as journaled (read as it
/// goes out), the separators and the tail; never the whole digest in memory.
fn digest_body(
    store: &Store,
    ids: Vec<QueueId>,
    layout: DigestLayout,
    damaged: Rc<Cell<Option<QueueId>>>,
) -> impl Iterator<Item = Result<Vec<u8>, StoreError>> {
    let DigestLayout {
        head,
        between,
        tail,
    } = layout;
    let store = store.clone();
    let parts = ids.into_iter().enumerate().flat_map(move |(i, id)| {
        let separator = (i > 0).then(|| Ok(between.clone()));
        let chunks: Box<dyn Iterator<Item = Result<Vec<u8>, StoreError>>> =
            match store.body_chunks(id) {
                Ok(chunks) => Box::new(chunks),
                Err(e) => Box::new(std::iter::once(Err(e))),
            };
        let seen = Rc::clone(&damaged);
        let chunks = chunks.inspect(move |chunk| {
            if matches!(chunk, Err(StoreError::Damaged(_))) {
                seen.set(Some(id));
            }
        });
        separator.into_iter().chain(chunks)
    });
    std::iter::once(Ok(head))
        .chain(parts)
        .chain(std::iter::once(Ok(tail)))
}
