//! Changing a message's delivery state: one attempt's results (`record`, with the attempt
//! history), `hold`/`release`, `delete`, and the removal of a message with its body
//! (`remove_message`), each an ordered write sequence (`writes.rs`) made durable by the group
//! flush, or, for a delivered message's removal, by the next sync (`settle_removals`). Never
//! reads more than the message it changes.

use std::time::Duration;

use super::extent::{count_extent, Extent};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

use super::body_file::ExtentReader;
use super::index::{index, unindex};
use super::journal;
use super::private::{DIR_MODE, FILE_MODE};
use super::query::Recipients;
use super::rebuild::QUARANTINE_DIR;
use super::record::{self, MessageMeta};
use super::writes::Writes;
use super::{key, AttemptRecord, QueueId, RcptState, Store, StoreError, Usage, KEPT_ATTEMPTS};
use crate::clock::QueueTime;

/// How long `settle_removals` waits for a commit's sync to carry the removals of a delivery
/// pass before it syncs them alone. While mail arrives, commits sync every few milliseconds and
/// the removals ride along: a sync of their own would rewrite the last page of sled's log for
/// nothing (4 KiB per pass, a pass per message with one session). The cost: a crash within
/// this window after a delivery may deliver those messages again (never lose them).
const SETTLE_GRACE: Duration = Duration::from_millis(200);

/// The longest `last_reply` the store keeps (cut at a char boundary): keeps every recipient
/// record, and so every leaf of them, far below the blob threshold whatever the smarthost says.
pub(super) const MAX_REPLY: usize = 1024;

/// `reply` cut to at most `MAX_REPLY` bytes.
fn clip_reply(reply: Option<&String>) -> Option<String> {
    reply.map(|text| {
        let mut end = text.len().min(MAX_REPLY);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    })
}

impl Store {
    /// Records one attempt's per-recipient results (`idx` is the position in
    /// `QueuedMessage::recipients`), made at `at_unix` (wall clock, for the attempt history);
    /// `attempts` and `next_attempt` for what stays queued. A message whose recipients are all
    /// delivered is removed; one with failed recipients and none pending stays listed as
    /// failed, is never due again, and its retention starts at `next_attempt` (pass `now` then;
    /// see `failed_at`, `purge_failed`). Durable on return, except the removal of a message
    /// delivered to every recipient: that one is made durable by the next sync (any commit,
    /// `flush`, which the forwarder calls after each pass), so the forwarder does not wait for
    /// an `fdatasync` per message. Should the process die before, the message is delivered
    /// again after the restart (at least once, as with any crash between the smarthost's 250
    /// and the removal); Postfix does not sync its unlink of a delivered queue file either.
    pub async fn record(
        &self,
        id: QueueId,
        results: &[(usize, RcptState, Option<String>)],
        at_unix: u64,
        attempts: u32,
        next_attempt: QueueTime,
    ) -> Result<(), StoreError> {
        let mut meta = self.meta(id)?;
        let mut recipients = self.recipients(id, &meta)?;
        let mut batch = Writes::default();
        let attempt = apply_results(id, results, &mut recipients, &mut meta, &mut batch, at_unix);
        let open = recipients.iter().any(|(_, r)| r.state.is_open());
        let failed = recipients.iter().any(|(_, r)| r.state == RcptState::Failed);
        let before = meta.clone();
        unindex(&mut batch, id, &meta);
        meta.attempts = attempts;
        meta.next_attempt = next_attempt;
        if open || failed {
            meta.failed_at = if open {
                None
            } else {
                meta.failed_at.or(Some(next_attempt))
            };
            index(&mut batch, id, &meta);
            batch.insert(key::msg(id), meta.encode());
            // After `msg/`: the history is informational; a crash before it loses one entry.
            if !attempt.results.is_empty() {
                self.append_attempt(&mut batch, id, &attempt)?;
            }
            let done: Vec<u32> = attempt
                .results
                .iter()
                .filter(|(_, state, _)| !state.is_open())
                .map(|(idx, _, _)| *idx)
                .collect();
            if !done.is_empty() {
                self.mark_done(id, &meta, &done);
            }
            self.apply(batch).await
        } else {
            log::debug!("store: queue_id={id} all recipients delivered; removed");
            // The recipient updates are moot: the removal starts with `msg/` (`writes.rs`).
            let mut batch = Writes::default();
            unindex(&mut batch, id, &before);
            self.remove_message(batch, id, &before, Durability::Lazy)
                .await
        }
    }

    /// Adds `attempt` as the message's newest history entry to `batch`, dropping the entry that
    /// falls out of the last `KEPT_ATTEMPTS` (a bounded scan: at most that many keys).
    fn append_attempt(
        &self,
        batch: &mut Writes,
        id: QueueId,
        attempt: &AttemptRecord,
    ) -> Result<(), StoreError> {
        // A forward scan (at most `KEPT_ATTEMPTS` keys): iterating backwards would link sled's
        // 1 MiB `MAX_KEY` constant (`iter.rs`, used for reverse scans only) into the binary.
        let mut last = None;
        for k in self.inner.db()?.scan_prefix(key::hist_prefix(id)).keys() {
            last = key::parse_numbered(key::HIST, &k?).map(|(_, n)| n).or(last);
        }
        let n = last.map_or(0, |n| n.saturating_add(1));
        batch.insert(key::hist(id, n), record::encode_attempt(attempt));
        if let Some(old) = n.checked_sub(KEPT_ATTEMPTS) {
            batch.remove(key::hist(id, old));
        }
        Ok(())
    }

    /// Removes a message whatever its state. Durable on return.
    pub async fn delete(&self, id: QueueId) -> Result<(), StoreError> {
        let meta = self.meta(id)?;
        let mut batch = Writes::default();
        unindex(&mut batch, id, &meta);
        self.remove_message(batch, id, &meta, Durability::Wait)
            .await
    }

    /// Takes a message whose body failed its checksum out of the queue, kept whole in
    /// `<data_dir>/quarantine/<id>` (0600): its envelope as text lines, a blank line, then the
    /// body as stored, unverified. The copy is synced before the message is removed (with a done
    /// record, so no rebuild brings it back); the removal rides the next sync.
    pub fn quarantine(&self, id: QueueId) -> Result<(), StoreError> {
        let message = self.get(id)?;
        let meta = self.meta(id)?;
        let mut text = format!("queue_id: {id}\nsender: <{}>\n", message.info.sender);
        for r in &message.recipients {
            text.push_str(&format!("recipient: <{}> {:?}\n", r.address, r.state));
        }
        text.push('\n');
        let mut bytes = text.into_bytes();
        let bodies = self.inner.flush.body_files().dir().to_path_buf();
        let mut reader = ExtentReader::new(bodies.clone());
        for extent in self.extents(id, &meta)? {
            bytes.extend(reader.read_unchecked(&extent)?);
        }
        let dir = bodies.parent().unwrap_or(&bodies).join(QUARANTINE_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(dir.join(id.to_string()))?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        log::warn!(
            "store: queue_id={id} body failed its checksum: kept in {QUARANTINE_DIR}/{id}, out \
             of the queue"
        );
        self.note_damage(&super::RecoveryReport {
            quarantined: 1,
            ..Default::default()
        });
        let mut batch = Writes::default();
        unindex(&mut batch, id, &meta);
        let seq = self.remove_unsynced(batch, id, &meta)?;
        self.inner.lazy_removal.set(seq);
        Ok(())
    }

    /// Where a message's body is: the extents in `msg/`, else its `part/` records.
    fn extents(&self, id: QueueId, meta: &MessageMeta) -> Result<Vec<Extent>, StoreError> {
        if !meta.extents.is_empty() {
            return Ok(meta.extents.clone());
        }
        let mut out = Vec::new();
        for raw in self.inner.db()?.scan_prefix(key::part_prefix(id)).values() {
            out.push(Extent::decode(&raw?)?);
        }
        Ok(out)
    }

    /// Keeps a message out of `due` until `release`. Durable on return.
    pub async fn hold(&self, id: QueueId) -> Result<(), StoreError> {
        self.set_held(id, true).await
    }

    /// Makes a held message deliverable again at its old `next_attempt`. Durable on return.
    pub async fn release(&self, id: QueueId) -> Result<(), StoreError> {
        self.set_held(id, false).await
    }

    async fn set_held(&self, id: QueueId, held: bool) -> Result<(), StoreError> {
        let mut meta = self.meta(id)?;
        if meta.held == held {
            return Ok(());
        }
        let mut batch = Writes::default();
        unindex(&mut batch, id, &meta);
        meta.held = held;
        index(&mut batch, id, &meta);
        batch.insert(key::msg(id), meta.encode());
        self.apply(batch).await
    }

    /// Returns once every removal `record` did not wait for is durable: at once when the syncs
    /// since have covered them (no sync of its own for a pass that removed nothing), else as
    /// soon as a commit's sync covers them, and after `SETTLE_GRACE` with a sync of its own.
    pub async fn settle_removals(&self) -> Result<(), StoreError> {
        let seq = self.inner.lazy_removal.get();
        if self.inner.flush.covered_within(seq, SETTLE_GRACE).await {
            return Ok(());
        }
        self.inner.flush.wait(seq).await.map_err(StoreError::Io)
    }

    /// Deletes every key of a message (`msg/` first, then the index entries already in `rest`,
    /// then the rest: `writes.rs`), updates the counters. With `Durability::Wait`, returns once
    /// the removal is durable; with `Durability::Lazy`, at once (the next sync makes it
    /// durable). Either way the body bytes go only after that sync.
    pub(super) async fn remove_message(
        &self,
        rest: Writes,
        id: QueueId,
        meta: &MessageMeta,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let seq = self.remove_unsynced(rest, id, meta)?;
        match durability {
            Durability::Wait => self.inner.flush.wait(seq).await.map_err(StoreError::Io),
            Durability::Lazy => {
                self.inner.lazy_removal.set(seq);
                Ok(())
            }
        }
    }

    /// `remove_message` up to its sync: returns the write number the sync must cover.
    fn remove_unsynced(
        &self,
        rest: Writes,
        id: QueueId,
        meta: &MessageMeta,
    ) -> Result<u64, StoreError> {
        let mut batch = Writes::default();
        batch.remove(key::msg(id));
        batch.append(rest);
        if meta.rcpt.is_none() {
            for idx in 0..meta.recipients {
                batch.remove(key::rcpt(id, idx));
            }
        }
        let mut body_files: Vec<(u64, u64)> = Vec::new();
        for extent in &meta.extents {
            count_extent(&mut body_files, extent.file);
        }
        // With the extents inline there are no `part/` records (nor `body/` keys) to remove.
        let listed = if meta.extents.is_empty() {
            meta.chunks
        } else {
            0
        };
        for chunk in 0..listed {
            batch.remove(key::body(id, chunk)); // legacy inline chunks
            let k = key::part(id, chunk);
            if let Some(raw) = self.inner.db()?.get(&k)? {
                if let Ok(extent) = Extent::decode(&raw) {
                    count_extent(&mut body_files, extent.file);
                }
            }
            batch.remove(k);
        }
        for k in self.inner.db()?.scan_prefix(key::hist_prefix(id)).keys() {
            batch.remove(k?.to_vec());
        }
        let old = self.inner.usage.get();
        let usage = Usage {
            messages: old.messages.saturating_sub(1),
            bytes: old.bytes.saturating_sub(meta.size),
        };
        self.mark_done(id, meta, &[]);
        batch.apply(&*self.inner.db()?, &self.inner.due)?;
        super::rebuild::note_removed(self, id);
        self.inner.usage.set(usage);
        let seq = self.inner.flush.note_write();
        // Only once the removal is durable may the bytes go (see `body_file.rs`).
        for (num, n) in body_files {
            self.inner.flush.body_files().release_after(seq, num, n);
        }
        Ok(seq)
    }

    /// Appends a done record for `id` (`recipients`: their indexes; none: the whole message)
    /// to the body file of its last piece, where its journal envelope is (`journal.rs`), so
    /// that a rebuild from the body files does not send it again. Rides the next sync. A
    /// failure costs at most a duplicate after a rebuild: logged, not returned.
    pub(super) fn mark_done(&self, id: QueueId, meta: &MessageMeta, recipients: &[u32]) {
        let last = match meta.extents.last() {
            Some(extent) => Some(*extent),
            None => meta
                .chunks
                .checked_sub(1)
                .and_then(|n| self.inner.db().ok()?.get(key::part(id, n)).ok().flatten())
                .and_then(|raw| Extent::decode(&raw).ok()),
        };
        let Some(last) = last.filter(|e| e.framed) else {
            return; // no journal envelope (a body from before the journal, or none)
        };
        let payload: Vec<u8> = recipients.iter().flat_map(|i| i.to_be_bytes()).collect();
        let record = journal::frame(journal::DONE, id, &payload);
        if let Err(e) = self
            .inner
            .flush
            .body_files()
            .append_record(last.file, &record)
        {
            log::warn!("store: queue_id={id} done record not journaled: {e}");
        }
    }

    /// Applies `batch` in order, then waits for the group flush.
    pub(super) async fn apply(&self, batch: Writes) -> Result<(), StoreError> {
        batch.apply(&*self.inner.db()?, &self.inner.due)?;
        let seq = self.inner.flush.note_write();
        self.inner.flush.wait(seq).await.map_err(StoreError::Io)
    }
}

/// Sets each result's recipient state and reply (cut to `MAX_REPLY`) in `recipients`, adds the
/// `rcpt/` records that changed to `batch` (an inline recipient goes into `meta` instead), and
/// returns the attempt as the history keeps it. A result for no recipient is logged and skipped.
fn apply_results(
    id: QueueId,
    results: &[(usize, RcptState, Option<String>)],
    recipients: &mut Recipients,
    meta: &mut MessageMeta,
    batch: &mut Writes,
    at_unix: u64,
) -> AttemptRecord {
    let mut attempt = AttemptRecord {
        at_unix,
        results: Vec::with_capacity(results.len()),
    };
    for (idx, state, reply) in results {
        let Some((k, rcpt)) = recipients.get_mut(*idx) else {
            log::warn!("store: queue_id={id} no recipient #{idx}; result ignored");
            continue;
        };
        rcpt.state = *state;
        rcpt.last_reply = clip_reply(reply.as_ref());
        match k {
            Some(k) => batch.insert(k.clone(), record::encode_rcpt(rcpt)),
            // Inline: written with `msg/` by the caller.
            None => meta.rcpt = Some(rcpt.clone()),
        }
        let reply = rcpt.last_reply.clone().unwrap_or_default();
        attempt
            .results
            .push((u32::try_from(*idx).unwrap_or(u32::MAX), *state, reply));
    }
    attempt
}

/// Whether a removal waits for its sync.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    Wait,
    Lazy,
}
