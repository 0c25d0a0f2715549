//! `Writes`: the store's state changes, applied to sled one key at a time in the order given
//! (the in-memory schedule's changes in their place among them) instead of `sled::Batch`. Owns
//! nothing but that order; every caller puts its commit point where a crash at any step leaves
//! what `recover` repairs.
//!
//! Why not `apply_batch`: sled makes a batch atomic with `PageCache::pin_log`
//! (`pagecache/mod.rs`), which rolls the io buffer before the batch and seals the buffer that
//! holds its manifest after it: every batch costs two or three log writes of its own (`pwrite` +
//! `sync_file_range` in `iobuf.rs` `write_to_log`), each dirtying a 4 KiB page again: with two
//! batches per message (commit, removal), a small message would cost several pages of writes.
//! Single inserts only reserve space in the current buffer, and the group flush writes them all
//! at once.
//!
//! Why in order is enough: the store runs on one thread, so its writes get increasing log
//! sequence numbers, and sled recovers a prefix of the log (`pagecache/segment.rs`: a later
//! segment is not recovered without its predecessors). So a crash leaves the first k writes of
//! a sequence. The orders the store uses:
//! - commit: `part/` records, recipient records, then `msg/<id>` (the commit point), then its
//!   place in the in-memory schedule. Without `msg/`, `recover` removes the parts and recipient
//!   records as records of no message. (Older builds also wrote a `spool/<id>` marker first
//!   and removed it last; `recover` sweeps such a spool with its records.)
//! - removal: `msg/<id>` first (the point of no return), then recipients, parts and index entry;
//!   `recover` removes records of no message and rebuilds indexes and counters.
//! - updates (attempt results, hold, reschedule): recipient records and index entries, then
//!   `msg/<id>`, then an attempt's `hist/` entry (informational: a crash before it loses only
//!   that entry); `recover` rebuilds the `failed/` index and the in-memory schedule (`due.rs`)
//!   from `msg/` records and removes `hist/` entries of no message.

use super::due::{DueEntry, DueIndex};

/// An ordered list of sled inserts and removals, and of changes to the in-memory scheduler
/// index (`due.rs`), which has no keys of its own.
#[derive(Default)]
pub(super) struct Writes(Vec<Write>);

enum Write {
    Insert(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
    Schedule(DueEntry),
    Unschedule(DueEntry),
}

impl Writes {
    pub(super) fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.0.push(Write::Insert(key.into(), value.into()));
    }

    pub(super) fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.0.push(Write::Remove(key.into()));
    }

    pub(super) fn schedule(&mut self, entry: DueEntry) {
        self.0.push(Write::Schedule(entry));
    }

    pub(super) fn unschedule(&mut self, entry: DueEntry) {
        self.0.push(Write::Unschedule(entry));
    }

    /// Appends `other`'s writes after these.
    pub(super) fn append(&mut self, mut other: Self) {
        self.0.append(&mut other.0);
    }

    /// Applies the writes in order; on a sled error the rest are not applied.
    pub(super) fn apply(self, db: &sled::Db, due: &DueIndex) -> Result<(), sled::Error> {
        for write in self.0 {
            match write {
                Write::Insert(key, value) => drop(db.insert(key, value)?),
                Write::Remove(key) => drop(db.remove(key)?),
                Write::Schedule(entry) => due.insert(entry),
                Write::Unschedule(entry) => due.remove(&entry),
            }
        }
        Ok(())
    }
}
