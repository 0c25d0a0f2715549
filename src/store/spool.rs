//! `Spool`: a message body appended to a body segment (`segment.rs`) as DATA arrives, one
//! `part/` record per piece, then committed with its envelope in one atomic batch followed by
//! the group flush, or removed. Never holds a body in memory.

use std::io;

use super::record::{self, MessageMeta};
use super::segment::{count_extent, MAX_EXTENT};
use super::writes::Writes;
use super::{
    index, key, MessageInfo, QueueFull, QueueId, RcptRecord, RcptState, Spool, StoreError, Usage,
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
            let next = self.chunks.checked_add(1).ok_or_else(|| {
                StoreError::Corrupt(format!("queue_id={} too many chunks", self.id))
            })?;
            let fresh = || {
                inner
                    .db
                    .generate_id()
                    .map_err(|e| io::Error::other(format!("sled generate_id: {e}")))
            };
            let extent = inner
                .flush
                .segments()
                .append(piece, fresh)
                .map_err(StoreError::Io)?;
            // Counted before the record goes in: `Drop` releases it whatever happens next.
            count_extent(&mut self.segments, extent.seg);
            inner
                .db
                .insert(key::part(self.id, self.chunks), &extent.encode())?;
            self.chunks = next;
            self.bytes += u64::try_from(piece.len()).unwrap_or(u64::MAX);
        }
        Ok(())
    }

    /// Writes envelope, recipient records, due entry and counters in one atomic batch (which
    /// also removes the spool marker), then waits for a group flush (`flush` + `fdatasync`).
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
            drop(self); // `Drop` removes chunks and marker
            return Ok(Err(QueueFull));
        }
        let id = self.id;
        let recipients = u32::try_from(info.recipients.len())
            .map_err(|_| StoreError::Corrupt(format!("queue_id={id} too many recipients")))?;
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
            chunks: self.chunks,
            priority: info.priority,
            coalesce: info.coalesce,
        };
        // In the order `writes.rs` explains: everything else, then `msg/<id>`, then the marker.
        let mut batch = Writes::default();
        for (idx, address) in (0..recipients).zip(info.recipients) {
            let rcpt = RcptRecord {
                address,
                state: RcptState::Pending,
                last_reply: None,
            };
            batch.insert(key::rcpt(id, idx), record::encode_rcpt(&rcpt));
        }
        index(&mut batch, id, &meta);
        // Neither the queue clock nor the counters are written per message (one more key each
        // in sled's log): `recover` takes the clock past every `enqueued_at` and recounts.
        let clock = inner.clock.get().max(now);
        let usage = Usage {
            messages: old.messages + 1,
            bytes: old.bytes + self.bytes,
        };
        // A failure up to the `msg/` insert leaves the spool for `Drop` to remove (and records
        // of no message for `due` and `recover` to drop).
        batch.apply(&inner.db)?;
        inner.clock.set(clock);
        inner.db.insert(key::msg(id), meta.encode())?;
        // Committed: from here on the parts belong to the message.
        self.finished = true;
        inner.usage.set(usage);
        inner.db.remove(key::spool(id))?;
        let seq = inner.flush.note_write();
        inner.flush.wait(seq).await.map_err(StoreError::Io)?;
        Ok(Ok(id))
    }

    /// Drops the chunks written so far.
    pub fn abort(self) {}

    fn remove_all(&mut self) -> Result<(), StoreError> {
        // The marker last: until it goes, `recover` would sweep what is left.
        let mut batch = Writes::default();
        for chunk in 0..self.chunks {
            batch.remove(key::part(self.id, chunk));
        }
        batch.remove(key::spool(self.id));
        let applied = batch.apply(&self.store.inner.db);
        // Even if the records stay (a write failed), the marker makes `recover` sweep them,
        // and the sweep needs no body bytes: the segments can go.
        let segments = self.store.inner.flush.segments();
        for (seg, n) in self.segments.drain(..) {
            segments.release(seg, n);
        }
        applied?;
        Ok(())
    }
}

impl Drop for Spool {
    /// An uncommitted spool's chunks go at once (not flushed: if they survive a crash, the
    /// marker makes `recover` sweep them).
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if let Err(e) = self.remove_all() {
            log::error!(
                "store: queue_id={} spool not removed ({e}); swept at restart",
                self.id
            );
        }
    }
}
