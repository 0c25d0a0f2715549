//! Rebuilding the queue from the body files (`journal.rs`): every journal envelope with no
//! message record in sled and no done record becomes a message again, its body the framed
//! pieces of that id, its recipients those not marked done. A message whose pieces are missing
//! or damaged is not rebuilt: one `error` line names it and its body file is kept aside
//! (`quarantine/`, never deleted). Runs at start (`recover.rs`, after sled's records were
//! checked, so a message whose records were quarantined is rebuilt too) and on demand
//! (`Store::recover_journal`, `outpost queue recover`). Reads every body file once; writes only
//! the rebuilt messages.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use super::body_file::{body_file_path, parse_body_file_name};
use super::extent::Extent;
use super::index::index;
use super::journal::{self, ENVELOPE, PIECE};
use super::private::DIR_MODE;
use super::record::{self, MessageMeta, INLINE_EXTENTS};
use super::writes::Writes;
use super::{key, QueueId, RcptRecord, RcptState, Store, StoreError};

/// What one pass over the body files found and did.
#[derive(Debug, Default)]
pub(super) struct Rebuilt {
    /// Messages rebuilt: their new record and their body's pieces.
    pub(super) messages: Vec<(QueueId, MessageMeta, Vec<Extent>)>,
    /// Journal envelopes of no message whose body could not be read back whole.
    pub(super) lost: u64,
    /// Damaged journal stretches skipped.
    pub(super) bad_records: u64,
    /// Body files that must not be deleted even when no message points into them: damaged,
    /// unframed, or holding the body of a message that could not be rebuilt.
    pub(super) keep: Vec<u64>,
    /// The highest queue id or body file number the body files hold.
    pub(super) max_number: u64,
}

/// A journal envelope found: where, and what it says.
struct Envelope {
    file: u64,
    meta: MessageMeta,
    recipients: Vec<String>,
}

/// What the body files hold of one message that sled's database lacks: its pieces in the order
/// appended, its envelope once found, the recipients marked done.
#[derive(Default)]
struct Lacking {
    pieces: Vec<Extent>,
    envelope: Option<Envelope>,
    done: Vec<u32>,
}

/// Rebuilds every message the body files hold that sled lost (see the module doc). One pass
/// over the body files in number (creation) order, keeping only what belongs to messages sled
/// lacks: memory goes with what is missing, not with the depth of the queue.
pub(super) fn run(store: &Store) -> Result<Rebuilt, StoreError> {
    let dir = store.inner.flush.body_files().dir().to_path_buf();
    let mut out = Rebuilt::default();
    let lacking = read_all(store, &dir, &mut out)?;
    for (id, message) in lacking {
        let Some(envelope) = message.envelope else {
            // Pieces of a message never committed (no envelope): nothing was acknowledged.
            continue;
        };
        let pieces = message.pieces;
        let size: u64 = pieces.iter().map(|e| u64::from(e.len)).sum();
        if pieces.len() != envelope.meta.chunks as usize || size != envelope.meta.size {
            log::error!(
                "store: queue_id={id} in the body file journal but not in the database, and its \
                 body is damaged ({} of {} pieces, {size} of {} bytes): not queued; body file \
                 {:016X} kept in quarantine/",
                pieces.len(),
                envelope.meta.chunks,
                envelope.meta.size,
                envelope.file
            );
            out.lost += 1;
            out.keep.extend(pieces.iter().map(|e| e.file));
            out.keep.push(envelope.file);
            continue;
        }
        if let Some(meta) = restore(store, id, &envelope, &pieces, &message.done)? {
            log::warn!("store: queue_id={id} rebuilt from the body file journal");
            out.messages.push((id, meta, pieces));
        }
    }
    Ok(out)
}

/// Writes a rebuilt message (parts, recipients, then `msg/`, as `writes.rs` orders them).
/// `None` when every recipient is done.
fn restore(
    store: &Store,
    id: QueueId,
    envelope: &Envelope,
    pieces: &[Extent],
    done: &[u32],
) -> Result<Option<MessageMeta>, StoreError> {
    let mut records: Vec<RcptRecord> = (0..)
        .zip(&envelope.recipients)
        .map(|(idx, address)| RcptRecord {
            address: address.clone(),
            state: if done.contains(&idx) {
                RcptState::Delivered
            } else {
                RcptState::Pending
            },
            last_reply: None,
        })
        .collect();
    if records.iter().all(|r| !r.state.is_open()) {
        return Ok(None);
    }
    let Ok(recipients) = u32::try_from(records.len()) else {
        return Ok(None);
    };
    let inline = pieces.len() <= INLINE_EXTENTS;
    let meta = MessageMeta {
        recipients,
        extents: if inline { pieces.to_vec() } else { Vec::new() },
        rcpt: if records.len() == 1 {
            records.pop()
        } else {
            None
        },
        attempts: 0,
        held: false,
        failed_at: None,
        ..envelope.meta.clone()
    };
    let mut batch = Writes::default();
    if !inline {
        for (n, extent) in (0..).zip(pieces) {
            batch.insert(key::part(id, n), extent.encode());
        }
    }
    for (idx, rcpt) in (0..).zip(&records) {
        batch.insert(key::rcpt(id, idx), record::encode_rcpt(rcpt));
    }
    batch.insert(key::msg(id), meta.encode());
    index(&mut batch, id, &meta);
    batch.apply(&*store.inner.db()?, &store.inner.due)?;
    Ok(Some(meta))
}

/// Scans every body file, in number (creation) order, so a message's pieces come in the order
/// they were appended; keeps the records of the messages sled lacks (a message leaves the map
/// at its whole-message done record).
fn read_all(
    store: &Store,
    dir: &Path,
    out: &mut Rebuilt,
) -> Result<BTreeMap<QueueId, Lacking>, StoreError> {
    let mut nums = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if let Some(num) = entry?.file_name().to_str().and_then(parse_body_file_name) {
            nums.push(num);
        }
    }
    nums.sort_unstable();
    let mut lacking: BTreeMap<QueueId, Lacking> = BTreeMap::new();
    // Whether sled lacks message `id`: once found lacking, it stays in the map.
    let lacks = |lacking: &BTreeMap<QueueId, Lacking>, id: QueueId| -> Result<bool, StoreError> {
        Ok(lacking.contains_key(&id) || !store.inner.db()?.contains_key(key::msg(id))?)
    };
    for num in nums {
        let bytes = match std::fs::read(body_file_path(dir, num)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        out.max_number = out.max_number.max(num);
        let scan = journal::scan(&bytes);
        if scan.unframed {
            out.keep.push(num);
            continue;
        }
        if scan.bad > 0 {
            log::error!(
                "store: body file {num:016X}: {} damaged journal records skipped",
                scan.bad
            );
            out.bad_records += scan.bad;
            out.keep.push(num);
        }
        for found in scan.records {
            let at = usize::try_from(found.offset).unwrap_or(usize::MAX);
            let payload = &bytes[at..at + found.len as usize];
            let id = found.id;
            out.max_number = out.max_number.max(id.0);
            match found.kind {
                PIECE if lacks(&lacking, id)? => {
                    lacking.entry(id).or_default().pieces.push(Extent {
                        file: num,
                        offset: found.offset,
                        len: found.len,
                        framed: true,
                    });
                }
                ENVELOPE if lacks(&lacking, id)? => {
                    match record::decode_journal_envelope(payload) {
                        Ok((meta, recipients)) => {
                            lacking.entry(id).or_default().envelope = Some(Envelope {
                                file: num,
                                meta,
                                recipients,
                            });
                        }
                        Err(e) => {
                            log::error!(
                            "store: body file {num:016X}: queue_id={id} envelope undecodable ({e})"
                        );
                            out.bad_records += 1;
                            out.keep.push(num);
                        }
                    }
                }
                PIECE | ENVELOPE => {}
                // The whole message left the queue.
                _ if payload.is_empty() => {
                    lacking.remove(&id);
                }
                _ => {
                    if let Some(message) = lacking.get_mut(&id) {
                        for idx in payload.chunks_exact(4) {
                            let idx = u32::from_be_bytes([idx[0], idx[1], idx[2], idx[3]]);
                            message.done.push(idx);
                        }
                    }
                }
            }
        }
    }
    Ok(lacking)
}

/// Moves body file `num` into `<data_dir>/quarantine/` (created 0700), where the operator can
/// look at it; never deletes it.
pub(super) fn quarantine_file(bodies: &Path, num: u64) -> io::Result<()> {
    let parent = bodies.parent().unwrap_or(bodies);
    let dir = parent.join(QUARANTINE_DIR);
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), DIR_MODE)
        .create(&dir)?;
    let from = body_file_path(bodies, num);
    let to = body_file_path(&dir, num);
    std::fs::rename(from, to)
}

/// Directory, inside the data directory, of the body files kept aside.
pub(super) const QUARANTINE_DIR: &str = "quarantine";
