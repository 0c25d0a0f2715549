//! `Spool`: a message body appended to a body file (`body_file.rs`) as DATA arrives, then
//! committed: the envelope with the pieces' extents inline (up to `INLINE_EXTENTS` pieces) or
//! one `part/` record per piece, written in order, then the group flush; or dropped, which only
//! releases the body file space. Never holds a body in memory (only its extents). Nothing reaches
//! sled before the commit: a `spool/` marker and `part/` records written as the body arrives
//! would cost two more sled log entries per message and a leaf of their own; `recover` sweeps
//! legacy `spool/` markers.

use std::io;

use super::extent::{count_extent, MAX_EXTENT};
use super::index::index;
use super::journal;
use super::record::{self, MessageMeta, INLINE_EXTENTS};
use super::writes::Writes;
use super::{
    key, MessageInfo, QueueFull, QueueId, RcptRecord, RcptState, Spool, StoreError, Usage,
};
use crate::clock::QueueTime;

impl Spool {
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// Body bytes appended so far.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Appends `bytes` to the body (pieces of at most `MAX_EXTENT`, each with its `part/`
    /// record). Not flushed: the commit's sync covers every piece.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let inner = &self.store.inner;
        for piece in bytes.chunks(MAX_EXTENT) {
            if u32::try_from(self.extents.len() + 1).is_err() {
                return Err(StoreError::Corrupt(format!(
                    "queue_id={} too many chunks",
                    self.id
                )));
            }
            let fresh = || {
                self.store
                    .fresh_number()
                    .map_err(|e| io::Error::other(format!("sled generate_id: {e}")))
            };
            let extent = inner
                .flush
                .body_files()
                .append(self.id, piece, fresh)
                .map_err(StoreError::Io)?;
            // Counted at once: `Drop` releases it whatever happens next.
            count_extent(&mut self.body_files, extent.file);
            self.extents.push(extent);
            self.bytes += u64::try_from(piece.len()).unwrap_or(u64::MAX);
        }
        Ok(())
    }

    /// Writes the `part/` records, recipient records (none for a single recipient: it goes into
    /// the envelope) and the envelope in the order `writes.rs` gives, schedules the message,
    /// then waits for a group flush (`flush` + `fdatasync`).
    /// Returns only once durable. `QueueFull` (the spool is removed) when the committed bytes
    /// plus this message would exceed `max_bytes`.
    pub async fn commit(
        mut self,
        info: MessageInfo,
        now: QueueTime,
    ) -> Result<Result<QueueId, QueueFull>, StoreError> {
        let store = self.store.clone();
        let inner = &store.inner;
        let old = inner.usage.get();
        if old.bytes.saturating_add(self.bytes) > inner.max_bytes {
            drop(self); // `Drop` releases the body file space
            return Ok(Err(QueueFull));
        }
        let id = self.id;
        let last_file = self.extents.last().map(|e| e.file);
        let (meta, records) = self.envelope(info, now)?;
        // The journal's copy of the envelope, after the last piece in its body file: the
        // commit's sync makes it durable with the body (`journal.rs`).
        if let Some(num) = last_file {
            let record = record::encode_journal_envelope(&meta, &records);
            let framed = journal::frame(journal::ENVELOPE, id, &record);
            inner
                .flush
                .body_files()
                .append_record(num, &framed)
                .map_err(StoreError::Io)?;
        }
        let batch = self.writes(&meta, &records);
        // Neither the queue clock nor the counters are written per message (one more key each
        // in sled's log): `recover` takes the clock past every `enqueued_at` and recounts.
        let clock = inner.clock.get().max(now);
        let usage = Usage {
            messages: old.messages + 1,
            bytes: old.bytes + self.bytes,
        };
        // A failure up to the `msg/` insert leaves the body for `Drop` to release (and records
        // of no message for `recover` to drop).
        batch.apply(&*inner.db()?, &inner.due)?;
        inner.clock.set(clock);
        // Committed: from here on the parts belong to the message.
        self.finished = true;
        inner.usage.set(usage);
        let seq = inner.flush.note_write();
        inner.flush.wait(seq).await.map_err(StoreError::Io)?;
        Ok(Ok(id))
    }

    /// The message's envelope record, and the recipient records that go beside it (none for a
    /// single recipient: it goes inline into `msg/`, as do at most `INLINE_EXTENTS` extents).
    fn envelope(
        &mut self,
        info: MessageInfo,
        now: QueueTime,
    ) -> Result<(MessageMeta, Vec<RcptRecord>), StoreError> {
        let id = self.id;
        let chunks = u32::try_from(self.extents.len())
            .map_err(|_| StoreError::Corrupt(format!("queue_id={id} too many chunks")))?;
        let recipients = u32::try_from(info.recipients.len())
            .map_err(|_| StoreError::Corrupt(format!("queue_id={id} too many recipients")))?;
        let mut records: Vec<RcptRecord> = info
            .recipients
            .into_iter()
            .map(|address| RcptRecord {
                address,
                state: RcptState::Pending,
                last_reply: None,
            })
            .collect();
        // A single recipient goes inline into `msg/` (no `rcpt/` record).
        let rcpt = if records.len() == 1 {
            records.pop()
        } else {
            None
        };
        let meta = MessageMeta {
            sender: info.sender,
            eight_bit: info.eight_bit,
            smtputf8: info.smtputf8,
            received_unix: info.received_unix,
            size: self.bytes,
            enqueued_at: now,
            attempts: 0,
            next_attempt: now,
            held: false,
            failed_at: None,
            recipients,
            chunks,
            priority: info.priority,
            coalesce: info.coalesce,
            extents: if self.extents.len() <= INLINE_EXTENTS {
                std::mem::take(&mut self.extents)
            } else {
                Vec::new()
            },
            rcpt,
        };
        Ok((meta, records))
    }

    /// The commit's writes, in the order `writes.rs` explains: everything else, then
    /// `msg/<id>`, then its place in the schedule.
    fn writes(&self, meta: &MessageMeta, records: &[RcptRecord]) -> Writes {
        let id = self.id;
        let mut batch = Writes::default();
        // `extents` is empty here when they went inline into `msg/`.
        for (n, extent) in (0..meta.chunks).zip(&self.extents) {
            batch.insert(key::part(id, n), extent.encode());
        }
        // `records` is empty here when the one recipient went inline.
        for (idx, rcpt) in (0..meta.recipients).zip(records) {
            batch.insert(key::rcpt(id, idx), record::encode_rcpt(rcpt));
        }
        batch.insert(key::msg(id), meta.encode());
        index(&mut batch, id, meta);
        batch
    }

    /// Drops the chunks written so far.
    pub fn abort(self) {}

    /// Releases the body file space of a spool never committed (no record points at it).
    fn release(&mut self) {
        let body_files = self.store.inner.flush.body_files();
        for (num, n) in self.body_files.drain(..) {
            body_files.release(num, n);
        }
    }
}

impl Drop for Spool {
    /// An uncommitted spool's body file space is released at once (nothing is in sled).
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.release();
    }
}
