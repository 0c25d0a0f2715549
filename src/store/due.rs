//! The scheduler index: which messages are due when, kept in memory. Derived entirely from the
//! `msg/` records (`priority`, `next_attempt`, `held`, `failed_at`): `recover` builds it while
//! it reads every message at start-up, and each update changes it in the same ordered
//! `Writes` that rewrites the record. Owns no sled keys.
//!
//! Why not sled keys: an index key is two more sled log writes per message (insert at commit,
//! removal at delivery) and two per retry, and sled keeps the leaves it has touched in memory
//! whatever `cache_capacity` says.
//!
//! The form: per priority, a map from the due second to the ids due then, as a sorted vector
//! of runs of consecutive ids (`first..=last`, 16 bytes a run). Queue ids are numbered in
//! commit order, so a backlog accepted during an outage is a few runs per second, whatever its
//! depth. Measured with a counting allocator (100,000 and 400,000 entries): under 0.1 byte per
//! queued message in accept order; 7–9 bytes with a tenth of them moved to random seconds of
//! the next hour (retries); at worst, no two ids of a second consecutive, 16 bytes plus the
//! vector's spare capacity. Insert and remove are a map look-up and a binary search in that
//! second's runs; adding or dropping a whole run shifts the runs after it in that second.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::{QueueId, QueueTime};
use crate::priority::Priority;

/// One message's place in the schedule: `Priority` orders most urgent first, then the time it
/// is due, then its id (the order the `due/` keys had).
pub(super) type DueEntry = (Priority, QueueTime, QueueId);

/// The ids due in one second: ascending, disjoint, non-adjacent runs `(first, last)`.
type Runs = Vec<(u64, u64)>;

/// Per priority (`Priority as usize`, most urgent first), the runs due in each second.
#[derive(Default)]
pub(super) struct DueIndex(RefCell<[BTreeMap<QueueTime, Runs>; 4]>);

/// The first run of `runs` that ends at or after `id` (where `id` is, or would go).
fn position(runs: &Runs, id: u64) -> usize {
    runs.partition_point(|&(_, last)| last < id)
}

impl DueIndex {
    /// Adds an entry; adding one already there changes nothing.
    pub(super) fn insert(&self, (priority, at, QueueId(id)): DueEntry) {
        let mut index = self.0.borrow_mut();
        let runs = index[priority as usize].entry(at).or_default();
        let i = position(runs, id);
        let next = runs.get(i).copied();
        if next.is_some_and(|(first, _)| first <= id) {
            return;
        }
        let joins_next = next.is_some_and(|(first, _)| first - 1 == id);
        match (i.checked_sub(1).map(|p| (p, runs[p])), joins_next) {
            (Some((p, (_, last))), true) if last + 1 == id => {
                runs[p].1 = runs[i].1;
                runs.remove(i);
            }
            (Some((p, (_, last))), false) if last + 1 == id => runs[p].1 = id,
            (_, true) => runs[i].0 = id,
            _ => runs.insert(i, (id, id)),
        }
    }

    /// Removes an entry; removing one not there changes nothing.
    pub(super) fn remove(&self, &(priority, at, QueueId(id)): &DueEntry) {
        let mut index = self.0.borrow_mut();
        let seconds = &mut index[priority as usize];
        let Some(runs) = seconds.get_mut(&at) else {
            return;
        };
        let i = position(runs, id);
        let Some((first, last)) = runs.get(i).copied().filter(|&(first, _)| first <= id) else {
            return;
        };
        if first == last {
            runs.remove(i);
            if runs.is_empty() {
                seconds.remove(&at);
            }
        } else if id == first {
            runs[i].0 = id + 1;
        } else {
            runs[i].1 = id - 1;
            if id != last {
                runs.insert(i + 1, (id + 1, last));
            }
        }
    }

    /// Empties the index (`recover` fills it again).
    pub(super) fn clear(&self) {
        *self.0.borrow_mut() = Default::default();
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
        for (&at, runs) in index[priority as usize].range(..=now) {
            for &(first, last) in runs {
                for id in first..=last {
                    if !f((priority, at, QueueId(id))) {
                        return;
                    }
                }
            }
        }
    }

    /// The entries of `priority` due at or after `at`.
    pub(super) fn from(&self, priority: Priority, at: QueueTime) -> Vec<DueEntry> {
        let index = self.0.borrow();
        let mut out = Vec::new();
        for (&at, runs) in index[priority as usize].range(at..) {
            for &(first, last) in runs {
                out.extend((first..=last).map(|id| (priority, at, QueueId(id))));
            }
        }
        out
    }

    /// The earliest due time of any message.
    pub(super) fn earliest(&self) -> Option<QueueTime> {
        let index = self.0.borrow();
        index
            .iter()
            .filter_map(|seconds| seconds.keys().next().copied())
            .min()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        let index = self.0.borrow();
        let runs = index.iter().flat_map(BTreeMap::values).flatten();
        runs.map(|&(first, last)| (last - first + 1) as usize).sum()
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

    /// The runs against a `BTreeSet` of the same entries, under random inserts and removals
    /// (repeated ones included): same order, same answers, and the runs stay ascending,
    /// disjoint and non-adjacent, with no empty second left behind.
    #[test]
    fn runs_answer_as_a_sorted_set_would() {
        use std::collections::BTreeSet;
        let index = DueIndex::default();
        let mut model = BTreeSet::new();
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        for step in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let entry = (
                Priority::ALL[(state % 2) as usize],
                (state >> 8) % 3,
                QueueId((state >> 16) % 40),
            );
            if state >> 40 & 1 == 0 {
                index.insert(entry);
                model.insert(entry);
            } else {
                index.remove(&entry);
                model.remove(&entry);
            }
            if step % 97 != 0 {
                continue;
            }
            for seconds in index.0.borrow().iter() {
                for runs in seconds.values() {
                    assert!(!runs.is_empty());
                    assert!(runs.iter().all(|&(first, last)| first <= last));
                    assert!(runs
                        .iter()
                        .zip(runs.iter().skip(1))
                        .all(|(a, b)| a.1 + 1 < b.0));
                }
            }
            let mut all = Vec::new();
            for priority in Priority::ALL {
                index.each_due(priority, QueueTime::MAX, |entry| {
                    all.push(entry);
                    true
                });
                let later = model.iter().filter(|e| e.0 == priority && e.1 >= 1);
                assert_eq!(index.from(priority, 1), later.copied().collect::<Vec<_>>());
            }
            assert_eq!(all, model.iter().copied().collect::<Vec<_>>());
            assert_eq!(index.len(), model.len());
            assert_eq!(index.earliest(), model.iter().map(|e| e.1).min());
        }
    }
}
