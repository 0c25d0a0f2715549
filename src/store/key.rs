//! Key layout of the store's one sled tree. Ids, chunk numbers and times are big-endian so
//! sled's byte order is numeric order: a prefix scan of `failed/` is oldest-first, `part/<id>/`
//! is body order. Pure: builds and parses byte strings, never touches sled.
//!
//! | key                           | value                          |
//! |-------------------------------|--------------------------------|
//! | `msg/<id:8>`                  | `MessageMeta`                  |
//! | `rcpt/<id:8>/<idx:4>`         | `RcptRecord`                   |
//! | `part/<id:8>/<n:4>`           | `Extent` of body piece n       |
//! | `body/<id:8>/<chunk:4>`       | raw body bytes (legacy)        |
//! | `hist/<id:8>/<n:4>`           | `AttemptRecord` (last few)     |
//! | `spool/<id:8>`                | empty: a spool not committed (legacy) |
//! | `due/<time:8>/<id:8>`         | empty: a scheduler index (legacy, `normal`) |
//! | `due0/`, `due1/`, `due3/` …    | the same for `urgent`, `high`, `low` (legacy) |
//! | `failed/<time:8>/<id:8>`      | empty: retention index         |
//! | `meta/usage`, `meta/clock`    | counters, clock (see below)    |
//! | `meta/idfloor`                | added to sled's ids (`rebuild.rs`) |
//!
//! The scheduler index is in memory (`due.rs`); `recover` removes any legacy `due/` keys, and
//! the store never creates legacy keys: it reads and removes them.
//!
//! `meta/usage` is written by `recover` only (the counters live in memory and are recounted at
//! every start); `meta/clock` by `recover` and `Store::save_clock` (periodically, at shutdown).

use super::QueueId;
use crate::clock::QueueTime;
use crate::priority::Priority;

pub(super) const MSG: &[u8] = b"msg/";
pub(super) const RCPT: &[u8] = b"rcpt/";
pub(super) const BODY: &[u8] = b"body/";
pub(super) const PART: &[u8] = b"part/";
pub(super) const HIST: &[u8] = b"hist/";
pub(super) const SPOOL: &[u8] = b"spool/";
pub(super) const DUE: &[u8] = b"due/";
pub(super) const FAILED: &[u8] = b"failed/";
pub(super) const USAGE: &[u8] = b"meta/usage";
pub(super) const CLOCK: &[u8] = b"meta/clock";
/// What new ids add to sled's `generate_id` once sled lost its counter (`Store::fresh_number`).
pub(super) const ID_FLOOR: &[u8] = b"meta/idfloor";

fn join(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 24);
    key.extend_from_slice(prefix);
    for (n, part) in parts.iter().enumerate() {
        if n > 0 {
            key.push(b'/');
        }
        key.extend_from_slice(part);
    }
    key
}

pub(super) fn msg(id: QueueId) -> Vec<u8> {
    join(MSG, &[&id.0.to_be_bytes()])
}

/// A legacy spool marker: only tests write one (`recover` finds them by the `SPOOL` prefix).
#[cfg(test)]
pub(super) fn spool(id: QueueId) -> Vec<u8> {
    join(SPOOL, &[&id.0.to_be_bytes()])
}

/// `rcpt/<id>/`: the prefix of one message's recipient records.
pub(super) fn rcpt_prefix(id: QueueId) -> Vec<u8> {
    let mut key = join(RCPT, &[&id.0.to_be_bytes()]);
    key.push(b'/');
    key
}

pub(super) fn rcpt(id: QueueId, idx: u32) -> Vec<u8> {
    join(RCPT, &[&id.0.to_be_bytes(), &idx.to_be_bytes()])
}

/// `body/<id>/`: the prefix of one message's body chunks.
pub(super) fn body_prefix(id: QueueId) -> Vec<u8> {
    let mut key = join(BODY, &[&id.0.to_be_bytes()]);
    key.push(b'/');
    key
}

pub(super) fn body(id: QueueId, chunk: u32) -> Vec<u8> {
    join(BODY, &[&id.0.to_be_bytes(), &chunk.to_be_bytes()])
}

/// `part/<id>/`: the prefix of one message's body extents.
pub(super) fn part_prefix(id: QueueId) -> Vec<u8> {
    let mut key = join(PART, &[&id.0.to_be_bytes()]);
    key.push(b'/');
    key
}

/// `hist/<id>/`: the prefix of one message's attempt history.
pub(super) fn hist_prefix(id: QueueId) -> Vec<u8> {
    let mut key = join(HIST, &[&id.0.to_be_bytes()]);
    key.push(b'/');
    key
}

pub(super) fn part(id: QueueId, n: u32) -> Vec<u8> {
    join(PART, &[&id.0.to_be_bytes(), &n.to_be_bytes()])
}

pub(super) fn hist(id: QueueId, n: u32) -> Vec<u8> {
    join(HIST, &[&id.0.to_be_bytes(), &n.to_be_bytes()])
}

/// The legacy sled scheduler index of one priority (`normal` is the plain `due/`); `recover`
/// removes these keys.
pub(super) fn due_prefix(priority: Priority) -> &'static [u8] {
    match priority {
        Priority::Urgent => b"due0/",
        Priority::High => b"due1/",
        Priority::Normal => DUE,
        Priority::Low => b"due3/",
    }
}

#[cfg(test)]
pub(super) fn due(priority: Priority, at: QueueTime, id: QueueId) -> Vec<u8> {
    join(
        due_prefix(priority),
        &[&at.to_be_bytes(), &id.0.to_be_bytes()],
    )
}

pub(super) fn failed(at: QueueTime, id: QueueId) -> Vec<u8> {
    join(FAILED, &[&at.to_be_bytes(), &id.0.to_be_bytes()])
}

/// The id in `msg/<id>` or `spool/<id>` (the last 8 bytes after `prefix`).
pub(super) fn parse_id(prefix: &[u8], key: &[u8]) -> Option<QueueId> {
    let rest = key.strip_prefix(prefix)?;
    let bytes: [u8; 8] = rest.try_into().ok()?;
    Some(QueueId(u64::from_be_bytes(bytes)))
}

/// `(time, id)` of a `due/` or `failed/` index key.
pub(super) fn parse_timed(prefix: &[u8], key: &[u8]) -> Option<(QueueTime, QueueId)> {
    let rest = key.strip_prefix(prefix)?;
    if rest.len() != 17 || rest[8] != b'/' {
        return None;
    }
    let time: [u8; 8] = rest[..8].try_into().ok()?;
    let id: [u8; 8] = rest[9..].try_into().ok()?;
    Some((u64::from_be_bytes(time), QueueId(u64::from_be_bytes(id))))
}

/// `(id, n)` of a `rcpt/<id>/<n>`, `part/<id>/<n>`, `body/<id>/<n>` or `hist/<id>/<n>` key.
pub(super) fn parse_numbered(prefix: &[u8], key: &[u8]) -> Option<(QueueId, u32)> {
    let rest = key.strip_prefix(prefix)?;
    if rest.len() != 13 || rest[8] != b'/' {
        return None;
    }
    let id: [u8; 8] = rest[..8].try_into().ok()?;
    let n: [u8; 4] = rest[9..].try_into().ok()?;
    Some((QueueId(u64::from_be_bytes(id)), u32::from_be_bytes(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_sort_by_time_then_id() {
        let a = due(Priority::Normal, 5, QueueId(9));
        let b = due(Priority::Normal, 6, QueueId(1));
        let c = due(Priority::Normal, 256, QueueId(0));
        assert!(a < b && b < c);
        assert_eq!(parse_timed(DUE, &c), Some((256, QueueId(0))));
        // Each priority has its own index; none is inside another's prefix.
        for p in Priority::ALL {
            let k = due(p, 7, QueueId(3));
            assert_eq!(parse_timed(due_prefix(p), &k), Some((7, QueueId(3))));
            for q in Priority::ALL.into_iter().filter(|&q| q != p) {
                assert!(!k.starts_with(due_prefix(q)), "{p} vs {q}");
            }
        }
        assert_eq!(parse_timed(DUE, &msg(QueueId(1))), None);
    }

    #[test]
    fn body_keys_sort_by_chunk_and_stay_under_their_prefix() {
        let id = QueueId(0x0102);
        let first = body(id, 1);
        let later = body(id, 256);
        assert!(first < later);
        assert!(first.starts_with(&body_prefix(id)));
        assert!(!body(QueueId(0x0103), 0).starts_with(&body_prefix(id)));
        assert_eq!(parse_numbered(BODY, &later), Some((id, 256)));
    }

    #[test]
    fn message_ids_round_trip() {
        let id = QueueId(u64::MAX - 3);
        assert_eq!(parse_id(MSG, &msg(id)), Some(id));
        assert_eq!(parse_id(SPOOL, &spool(id)), Some(id));
        assert_eq!(parse_id(MSG, &spool(id)), None);
        assert_eq!(parse_numbered(RCPT, &rcpt(id, 7)), Some((id, 7)));
        assert_eq!(parse_numbered(HIST, &hist(id, 300)), Some((id, 300)));
        assert!(hist(id, 1) < hist(id, 256));
        assert!(hist(id, 9).starts_with(&hist_prefix(id)));
    }
}
