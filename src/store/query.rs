//! Reading the queue: one message (`get`, `failed_at`, `history`, its body), every message
//! (`list`), the due ones (`due`, `next_due`) and the counters (`usage`). Never writes sled
//! (`due` only drops a stale entry from the in-memory schedule); never reads more than the
//! message asked for, except `list` and `due`, which read one message per entry they return.

use super::body_file::ExtentReader;
use super::extent::Extent;
use super::record::{self, MessageMeta};
use super::{
    key, AttemptRecord, MessageInfo, QueueId, QueuedMessage, RcptRecord, Store, StoreError, Usage,
};
use crate::clock::QueueTime;
use crate::priority::Priority;

/// A message's recipient records in index order, each with its `rcpt/` key (`None`: inline in
/// `msg/`).
pub(super) type Recipients = Vec<(Option<Vec<u8>>, RcptRecord)>;

impl Store {
    pub fn get(&self, id: QueueId) -> Result<QueuedMessage, StoreError> {
        let meta = self.meta(id)?;
        let recipients = self.recipients(id, &meta)?;
        let recipients = recipients.into_iter().map(|(_, r)| r).collect();
        Ok(assemble(id, meta, recipients))
    }

    /// Whether message `id` is in the queue (a point look-up, nothing decoded).
    pub fn is_queued(&self, id: QueueId) -> Result<bool, StoreError> {
        Ok(self.inner.db()?.contains_key(key::msg(id))?)
    }

    /// When a message without pending recipients became failed (`None` while deliverable).
    pub fn failed_at(&self, id: QueueId) -> Result<Option<QueueTime>, StoreError> {
        Ok(self.meta(id)?.failed_at)
    }

    /// Every message, in id (arrival) order. Unreadable ones are logged and skipped.
    pub fn list(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut out = Vec::new();
        self.each(|message| out.push(message))?;
        Ok(out)
    }

    /// Calls `f` with every message, in id (arrival) order, one at a time: what a summary over
    /// a deep queue reads without holding every record at once (`list` holds them all).
    /// Unreadable ones are logged and skipped.
    pub fn each(&self, mut f: impl FnMut(QueuedMessage)) -> Result<(), StoreError> {
        for entry in self.inner.db()?.scan_prefix(key::MSG).keys() {
            let Some(id) = key::parse_id(key::MSG, &entry?) else {
                continue;
            };
            match self.get(id) {
                Ok(message) => f(message),
                Err(StoreError::Corrupt(e)) => {
                    log::error!("store: queue_id={id} unreadable, not listed: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The deliverable message waiting longest (neither held nor failed; the lowest id in the
    /// schedule, as ids are taken in arrival order), read without reading the others: a check
    /// that runs while the queue is deep must not read every record (`list`).
    pub fn oldest_waiting(&self) -> Result<Option<QueuedMessage>, StoreError> {
        self.inner
            .due
            .lowest_id()
            .map(|id| self.get(id))
            .transpose()
    }

    /// The message's most recent attempts (at most `KEPT_ATTEMPTS`), oldest first. An
    /// unreadable entry is logged and skipped: history is informational.
    pub fn history(&self, id: QueueId) -> Result<Vec<AttemptRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.db()?.scan_prefix(key::hist_prefix(id)) {
            let (k, raw) = entry?;
            match record::decode_attempt(&raw) {
                Ok(attempt) => out.push(attempt),
                Err(e) => log::warn!(
                    "store: queue_id={id} attempt record {:?} unreadable: {e}",
                    key::parse_numbered(key::HIST, &k).map(|(_, n)| n)
                ),
            }
        }
        Ok(out)
    }

    pub fn usage(&self) -> Usage {
        self.inner.usage.get()
    }

    /// Up to `limit` messages with pending/deferred recipients, not held, whose `next_attempt`
    /// is ≤ `now`: the most urgent priority first, oldest first within a priority. Reads only
    /// the index ranges up to `now`.
    pub fn due(&self, now: QueueTime, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut out = Vec::new();
        for priority in Priority::ALL {
            self.due_of(priority, now, limit, &mut out)?;
        }
        Ok(out)
    }

    fn due_of(
        &self,
        priority: Priority,
        now: QueueTime,
        limit: usize,
        out: &mut Vec<QueuedMessage>,
    ) -> Result<(), StoreError> {
        let mut stale = Vec::new();
        let mut failure = None;
        self.inner.due.each_due(priority, now, |entry| {
            let (_, _, id) = entry;
            if out.len() >= limit {
                return false;
            }
            match self.get(id) {
                Ok(message) => out.push(message),
                Err(StoreError::NotFound(_)) => stale.push(entry),
                Err(StoreError::Corrupt(e)) => {
                    log::error!("store: queue_id={id} unreadable, skipped: {e}");
                }
                Err(e) => {
                    failure = Some(e);
                    return false;
                }
            }
            true
        });
        // Only after a removal failed between its `msg/` and its schedule change (the store
        // then stops): kept as a repair.
        for entry in stale {
            log::warn!("store: queue_id={} stale due entry removed", entry.2);
            self.inner.due.remove(&entry);
        }
        failure.map_or(Ok(()), Err)
    }

    /// Earliest `next_attempt` among deliverable messages.
    pub fn next_due(&self) -> Option<QueueTime> {
        self.inner.due.earliest()
    }

    /// Reads the body in order, one appended piece (≤ `MAX_EXTENT`) at a time, from the
    /// extents in `msg/` or the `part/` records. A legacy body stored as sled values (`body/`
    /// keys) reads the same way.
    pub fn body_chunks(
        &self,
        id: QueueId,
    ) -> Result<impl Iterator<Item = Result<Vec<u8>, StoreError>>, StoreError> {
        let meta = self.meta(id)?;
        // With the extents in `msg/` there are no `part/` records or `body/` keys to look for.
        let listed = meta.extents.is_empty();
        let db = self.inner.db()?;
        let scan = |prefix: Vec<u8>| {
            listed
                .then(|| db.scan_prefix(prefix).values())
                .into_iter()
                .flatten()
        };
        let inline = scan(key::body_prefix(id));
        let inline = inline.map(|chunk| chunk.map(|c| c.to_vec()).map_err(StoreError::from));
        let parts = scan(key::part_prefix(id)).map(move |raw| {
            Extent::decode(&raw?)
                .map_err(|e| StoreError::Corrupt(format!("queue_id={id} key=part: {e}")))
        });
        let mut reader = ExtentReader::new(self.inner.flush.body_files().dir().to_path_buf());
        let pieces = meta.extents.into_iter().map(Ok).chain(parts);
        let pieces = pieces.map(move |extent: Result<Extent, StoreError>| {
            let extent = extent?;
            reader.read(id, &extent).map_err(|e| {
                let what = format!(
                    "queue_id={id} body file {:016X} at {}+{}: {e}",
                    extent.file, extent.offset, extent.len
                );
                if e.kind() == std::io::ErrorKind::InvalidData {
                    StoreError::Damaged(what)
                } else {
                    StoreError::Corrupt(what)
                }
            })
        });
        Ok(inline.chain(pieces))
    }

    pub(super) fn meta(&self, id: QueueId) -> Result<MessageMeta, StoreError> {
        let raw = self
            .inner
            .db()?
            .get(key::msg(id))?
            .ok_or(StoreError::NotFound(id))?;
        MessageMeta::decode(&raw)
            .map_err(|e| StoreError::Corrupt(format!("queue_id={id} key=msg: {e}")))
    }

    /// Recipient records in index order, with their keys; a single recipient kept inline in
    /// `meta` has none (`None`).
    pub(super) fn recipients(
        &self,
        id: QueueId,
        meta: &MessageMeta,
    ) -> Result<Recipients, StoreError> {
        if let Some(rcpt) = &meta.rcpt {
            return Ok(vec![(None, rcpt.clone())]);
        }
        let mut out = Vec::new();
        for entry in self.inner.db()?.scan_prefix(key::rcpt_prefix(id)) {
            let (k, raw) = entry?;
            let rcpt = record::decode_rcpt(&raw)
                .map_err(|e| StoreError::Corrupt(format!("queue_id={id} key=rcpt: {e}")))?;
            out.push((Some(k.to_vec()), rcpt));
        }
        Ok(out)
    }
}

fn assemble(id: QueueId, meta: MessageMeta, recipients: Vec<RcptRecord>) -> QueuedMessage {
    QueuedMessage {
        id,
        info: MessageInfo {
            sender: meta.sender,
            recipients: recipients.iter().map(|r| r.address.clone()).collect(),
            eight_bit: meta.eight_bit,
            smtputf8: meta.smtputf8,
            received_unix: meta.received_unix,
            priority: meta.priority,
            coalesce: meta.coalesce,
        },
        size: meta.size,
        enqueued_at: meta.enqueued_at,
        attempts: meta.attempts,
        next_attempt: meta.next_attempt,
        held: meta.held,
        recipients,
    }
}
