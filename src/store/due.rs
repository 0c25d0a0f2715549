//! The scheduler index: which messages are due when, kept in memory. Derived entirely from the
//! `msg/` records (`priority`, `next_attempt`, `held`, `failed_at`): `recover` builds it while
//! it reads every message at start-up, and each update changes it in the same ordered
//! `Writes` that rewrites the record. Owns no sled keys.
//!
//! Why not sled keys (`due/`): an index key is two more sled log writes per message (insert
//! at commit, removal at delivery) and two per retry, each dirtying a page of sled's log, and
//! sled keeps the leaves it has touched in memory whatever `cache_capacity` says, so a large
//! queue would cost both disk writes and memory per message. Here an entry is its 24-byte key
//! in a `BTreeSet` node. Downgrading stays possible: an older build's `recover` restores the
//! `due/` keys from the `msg/` records.

use std::cell::RefCell;
use std::collections::BTreeSet;

use super::{QueueId, QueueTime};
use crate::priority::Priority;

/// One message's place in the schedule: `Priority` orders most urgent first, then the time it
/// is due, then its id (the order the `due/` keys had).
pub(super) type DueEntry = (Priority, QueueTime, QueueId);

#[derive(Default)]
pub(super) struct DueIndex(RefCell<BTreeSet<DueEntry>>);

impl DueIndex {
    pub(super) fn insert(&self, entry: DueEntry) {
        self.0.borrow_mut().insert(entry);
    }

    pub(super) fn remove(&self, entry: &DueEntry) {
        self.0.borrow_mut().remove(entry);
    }

    /// Replaces the whole index (`recover`).
    pub(super) fn replace(&self, entries: BTreeSet<DueEntry>) {
        *self.0.borrow_mut() = entries;
    }

    /// Calls `f` with each message of `priority` due at or before `now`, oldest first, until
    /// it returns false. `f` must not change the index (collect, then change).
    pub(super) fn each_due(
        &self,
        priority: Priority,
        now: QueueTime,
        mut f: impl FnMut(DueEntry) -> bool,
    ) {
        let index = self.0.borrow();
        let range = (priority, 0, QueueId(0))..=(priority, now, QueueId(u64::MAX));
        for &entry in index.range(range) {
            if !f(entry) {
                break;
            }
        }
    }

    /// The entries of `priority` due at or after `at`.
    pub(super) fn from(&self, priority: Priority, at: QueueTime) -> Vec<DueEntry> {
        let index = self.0.borrow();
        let range = (priority, at, QueueId(0))..=(priority, QueueTime::MAX, QueueId(u64::MAX));
        index.range(range).copied().collect()
    }

    /// The earliest due time of any message.
    pub(super) fn earliest(&self) -> Option<QueueTime> {
        let index = self.0.borrow();
        Priority::ALL
            .into_iter()
            .filter_map(|priority| {
                let range =
                    (priority, 0, QueueId(0))..=(priority, QueueTime::MAX, QueueId(u64::MAX));
                index.range(range).next().map(|&(_, at, _)| at)
            })
            .min()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_urgent_first_then_oldest_then_id() {
        let index = DueIndex::default();
        index.insert((Priority::Low, 1, QueueId(1)));
        index.insert((Priority::Urgent, 9, QueueId(2)));
        index.insert((Priority::Normal, 5, QueueId(9)));
        index.insert((Priority::Normal, 5, QueueId(3)));
        index.insert((Priority::Normal, 7, QueueId(4)));
        assert_eq!(index.earliest(), Some(1));
        let mut seen = Vec::new();
        index.each_due(Priority::Normal, 6, |(_, _, id)| {
            seen.push(id);
            true
        });
        assert_eq!(seen, [QueueId(3), QueueId(9)]);
        let mut first = Vec::new();
        index.each_due(Priority::Normal, QueueTime::MAX, |(_, _, id)| {
            first.push(id);
            false
        });
        assert_eq!(first, [QueueId(3)]);
        assert_eq!(
            index.from(Priority::Normal, 6),
            [(Priority::Normal, 7, QueueId(4))]
        );
        index.remove(&(Priority::Low, 1, QueueId(1)));
        assert_eq!(index.earliest(), Some(5));
        assert_eq!(index.len(), 4);
    }
}
