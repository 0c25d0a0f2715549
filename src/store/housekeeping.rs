//! Housekeeping of the whole queue: the persisted queue clock, the retention purge of failed
//! messages and the reschedule of every deferred message (link up, `queue flush`). Never scans
//! `msg/`: the purge reads the `failed/` index, the reschedule the in-memory schedule.

use super::writes::Writes;
use super::{key, record, QueueId, Store, StoreError};
use crate::clock::QueueTime;
use crate::priority::Priority;

impl Store {
    /// The persisted queue-clock base to build a `QueueClock` from.
    pub fn clock_base(&self) -> QueueTime {
        self.inner.clock.get()
    }

    /// Persists the queue clock (called periodically and at shutdown). Never moves it back.
    /// Durable with the next group flush (any commit, `flush`), sled's periodic `sync_all`, or
    /// when the last handle is dropped (sled's `Log::drop` flushes and `sync_all`s,
    /// `pagecache/logger.rs`).
    pub fn save_clock(&self, now: QueueTime) -> Result<(), StoreError> {
        let now = now.max(self.inner.clock.get());
        self.inner
            .db()?
            .insert(key::CLOCK, record::encode_clock(now))?;
        self.inner.clock.set(now);
        Ok(())
    }

    /// Deletes failed messages whose `failed_at` is before `older_than` (retention); returns
    /// how many. Reads only the `failed/` index range. Durable on return.
    pub async fn purge_failed(&self, older_than: QueueTime) -> Result<u64, StoreError> {
        let range = key::failed(0, QueueId(0))..key::failed(older_than, QueueId(0));
        let mut ids = Vec::new();
        for entry in self.inner.db()?.range(range).keys() {
            if let Some((_, id)) = key::parse_timed(key::FAILED, &entry?) {
                ids.push(id);
            }
        }
        let mut purged = 0;
        for id in ids {
            match self.delete(id).await {
                Ok(()) => purged += 1,
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(purged)
    }

    /// Makes every deferred message due at once (link up, `queue flush`): its `next_attempt`
    /// becomes the time it was queued, so within each priority the drain goes oldest first. Not
    /// flushed: losing it in a crash only delays a retry.
    pub fn reschedule_all(&self, now: QueueTime) -> Result<(), StoreError> {
        let Some(after) = now.checked_add(1) else {
            return Ok(());
        };
        let mut batch = Writes::default();
        for priority in Priority::ALL {
            self.reschedule_of(priority, now, after, &mut batch)?;
        }
        batch.apply(&*self.inner.db()?, &self.inner.due)?;
        Ok(())
    }

    fn reschedule_of(
        &self,
        priority: Priority,
        now: QueueTime,
        after: QueueTime,
        batch: &mut Writes,
    ) -> Result<(), StoreError> {
        for (_, at, id) in self.inner.due.from(priority, after) {
            let mut meta = match self.meta(id) {
                Ok(meta) => meta,
                Err(StoreError::NotFound(_) | StoreError::Corrupt(_)) => continue,
                Err(e) => return Err(e),
            };
            batch.unschedule((priority, at, id));
            // Due at once, in its place by age: never-tried messages are due since they were
            // queued, so the drain goes oldest first whichever of them were tried before.
            meta.next_attempt = meta.enqueued_at.min(now);
            batch.schedule((priority, meta.next_attempt, id));
            batch.insert(key::msg(id), meta.encode());
        }
        Ok(())
    }
}
