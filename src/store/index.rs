//! Where a message is indexed: under a `failed/` key in sled when it failed, in the in-memory
//! schedule (`due.rs`) while deliverable, nowhere while held. Adds and removes that entry as
//! part of an ordered write sequence (`writes.rs`); never writes by itself.

use super::due::DueEntry;
use super::key;
use super::record::MessageMeta;
use super::writes::Writes;
use super::QueueId;

/// Removes the index entry `meta` implies (due, failed, or none when held).
pub(super) fn unindex(batch: &mut Writes, id: QueueId, meta: &MessageMeta) {
    match index_of(id, meta) {
        Some(Index::Failed(k)) => batch.remove(k),
        Some(Index::Due(entry)) => batch.unschedule(entry),
        None => {}
    }
}

/// Adds the index entry `meta` implies (due, failed, or none when held).
pub(super) fn index(batch: &mut Writes, id: QueueId, meta: &MessageMeta) {
    match index_of(id, meta) {
        Some(Index::Failed(k)) => batch.insert(k, Vec::new()),
        Some(Index::Due(entry)) => batch.schedule(entry),
        None => {}
    }
}

/// Where a message is indexed: under a `failed/` key in sled, or in the in-memory schedule.
pub(super) enum Index {
    Failed(Vec<u8>),
    Due(DueEntry),
}

/// The index entry a message belongs under, if any (held ones have none).
pub(super) fn index_of(id: QueueId, meta: &MessageMeta) -> Option<Index> {
    match meta.failed_at {
        Some(at) => Some(Index::Failed(key::failed(at, id))),
        None if meta.held => None,
        None => Some(Index::Due((meta.priority, meta.next_attempt, id))),
    }
}
