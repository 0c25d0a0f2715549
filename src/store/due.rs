//! The scheduler index: which messages are due when, kept in memory. Derived entirely from the
//! `msg/` records (`priority`, `next_attempt`, `held`, `failed_at`): `recover` builds it while
//! it reads every message at start-up, and each update changes it in the same ordered
//! `Writes` that rewrites the record. Owns no sled keys.
//!
//! Why not sled keys: an index key is two more sled log writes per message (insert at commit,
//! removal at delivery) and two per retry, and sled keeps the leaves it has touched in memory
//! whatever `cache_capacity` says.
//!
//! The form: per priority, a map from the due second (queue time in 1,024 ms slices) to the
//! entries due in it, each packed into 8 bytes (the milliseconds within the slice, then the
//! id) in a sorted vector. A backlog accepted during an outage fills each slice in order, so an
//! insert is an append and a delivery takes from the front of the oldest slice. Measured with
//! a counting allocator at 100,000 and 400,000 entries: 8.0 bytes per queued message in
//! accept order, 12–14 with a tenth of them moved to random times of the next hour (retries:
//! sparse slices); a `BTreeSet` of the 24-byte entries took 49. Ids from 2^54 up (sled's counter never gets there)
//! are ordered after the lower ones of their slice instead of by time within it.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::{QueueId, QueueTime};
use crate::priority::Priority;

/// One message's place in the schedule: `Priority` orders most urgent first, then the time it
/// is due, then its id (the order the `due/` keys had).
pub(super) type DueEntry = (Priority, QueueTime, QueueId);

/// Bits of queue time (milliseconds) within a slice, and of an id within a packed entry.
const SLICE_BITS: u32 = 10;
const ID_BITS: u32 = 64 - SLICE_BITS;
const ID_MASK: u64 = (1 << ID_BITS) - 1;

/// A slice: its queue time in slices, and the id's bits above `ID_BITS` (zero in practice).
type Slice = (QueueTime, u64);

/// Per priority (`Priority as usize`, most urgent first), each slice's packed entries,
/// ascending.
#[derive(Default)]
pub(super) struct DueIndex(RefCell<[BTreeMap<Slice, Vec<u64>>; 4]>);

/// Where `(at, id)` goes: its slice and its packed entry.
fn pack(at: QueueTime, QueueId(id): QueueId) -> (Slice, u64) {
    let within = at & ((1 << SLICE_BITS) - 1);
    (
        (at >> SLICE_BITS, id >> ID_BITS),
        within << ID_BITS | id & ID_MASK,
    )
}

/// The queue time of a packed entry in `slice`.
fn due_at((slice, _): Slice, packed: u64) -> QueueTime {
    slice << SLICE_BITS | packed >> ID_BITS
}

/// The id of a packed entry in `slice`.
fn id_of((_, high): Slice, packed: u64) -> QueueId {
    QueueId(high << ID_BITS | packed & ID_MASK)
}

fn unpack(priority: Priority, slice: Slice, packed: u64) -> DueEntry {
    (priority, due_at(slice, packed), id_of(slice, packed))
}

impl DueIndex {
    /// Adds an entry; adding one already there changes nothing.
    pub(super) fn insert(&self, (priority, at, id): DueEntry) {
        let mut index = self.0.borrow_mut();
        let slices = &mut index[priority as usize];
        let (slice, packed) = pack(at, id);
        let entries = slices.entry(slice).or_insert_with(|| Vec::with_capacity(1));
        match entries.last() {
            Some(&last) if last < packed => entries.push(packed),
            _ => {
                if let Err(i) = entries.binary_search(&packed) {
                    entries.insert(i, packed);
                }
            }
        }
        // A new slice: the one before it is usually complete (queue time only grows), so
        // its spare capacity goes.
        if entries.len() == 1 {
            if let Some((_, before)) = slices.range_mut(..slice).next_back() {
                before.shrink_to_fit();
            }
        }
    }

    /// Removes an entry; removing one not there changes nothing.
    pub(super) fn remove(&self, &(priority, at, id): &DueEntry) {
        let mut index = self.0.borrow_mut();
        let slices = &mut index[priority as usize];
        let (slice, packed) = pack(at, id);
        let Some(entries) = slices.get_mut(&slice) else {
            return;
        };
        if let Ok(i) = entries.binary_search(&packed) {
            entries.remove(i);
        }
        if entries.is_empty() {
            slices.remove(&slice);
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
        for (&slice, entries) in index[priority as usize].range(..=(now >> SLICE_BITS, u64::MAX)) {
            for &packed in entries {
                let entry = unpack(priority, slice, packed);
                if entry.1 > now {
                    break;
                }
                if !f(entry) {
                    return;
                }
            }
        }
    }

    /// The entries of `priority` due at or after `at`.
    pub(super) fn from(&self, priority: Priority, at: QueueTime) -> Vec<DueEntry> {
        let index = self.0.borrow();
        let slices = index[priority as usize].range((at >> SLICE_BITS, 0)..);
        let entries = slices.flat_map(|(&slice, entries)| {
            entries
                .iter()
                .map(move |&packed| unpack(priority, slice, packed))
        });
        entries.filter(|entry| entry.1 >= at).collect()
    }

    /// The earliest due time of any message.
    pub(super) fn earliest(&self) -> Option<QueueTime> {
        let index = self.0.borrow();
        let firsts = index.iter().flat_map(|slices| {
            let first = slices.keys().next().map(|&(slice, _)| slice);
            let earliest = slices.range((first?, 0)..=(first?, u64::MAX));
            Some(earliest.map(|(&slice, entries)| due_at(slice, entries[0])))
        });
        firsts.flatten().min()
    }

    /// The lowest id of any entry (ids are taken in arrival order: the message waiting
    /// longest). Reads every entry, in memory: no record is read.
    pub(super) fn lowest_id(&self) -> Option<QueueId> {
        let index = self.0.borrow();
        let slices = index.iter().flat_map(|slices| slices.iter());
        let ids = slices.flat_map(|(&slice, entries)| {
            let first = entries.iter().map(|&packed| packed & ID_MASK).min();
            first.map(|low| id_of(slice, low))
        });
        ids.min()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        let index = self.0.borrow();
        index.iter().flat_map(BTreeMap::values).map(Vec::len).sum()
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
        let far = (Priority::High, QueueTime::MAX, QueueId(u64::MAX));
        index.insert(far);
        assert_eq!(index.from(Priority::High, 10), [far]);
        index.remove(&far);
        assert_eq!(index.len(), 4);
    }

    /// The index against a `BTreeSet` of the same entries, under random inserts and removals
    /// (repeated ones included) across slice boundaries: same order, same answers, and each
    /// slice stays sorted without duplicates, with no empty slice left behind.
    #[test]
    fn packed_slices_answer_as_a_sorted_set_would() {
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
                [0, 5, 1023, 1024, 1030, 4096][(state >> 8) as usize % 6],
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
            for slices in index.0.borrow().iter() {
                for entries in slices.values() {
                    assert!(!entries.is_empty());
                    assert!(entries.windows(2).all(|w| w[0] < w[1]));
                }
            }
            let mut all = Vec::new();
            for priority in Priority::ALL {
                index.each_due(priority, QueueTime::MAX, |entry| {
                    all.push(entry);
                    true
                });
                let later = model.iter().filter(|e| e.0 == priority && e.1 >= 1024);
                assert_eq!(
                    index.from(priority, 1024),
                    later.copied().collect::<Vec<_>>()
                );
                let mut due = Vec::new();
                index.each_due(priority, 1024, |entry| {
                    due.push(entry);
                    true
                });
                let model_due = model.iter().filter(|e| e.0 == priority && e.1 <= 1024);
                assert_eq!(due, model_due.copied().collect::<Vec<_>>());
            }
            assert_eq!(all, model.iter().copied().collect::<Vec<_>>());
            assert_eq!(index.len(), model.len());
            assert_eq!(index.lowest_id(), model.iter().map(|e| e.2).min());
            assert_eq!(index.earliest(), model.iter().map(|e| e.1).min());
        }
    }
}
