//! Rebuilding the queue from the body files (`journal.rs`): every journal envelope with no
//! message record in sled and no done record becomes a message again, its body the framed
//! pieces of that id, its recipients those not marked done. A message whose pieces are missing
//! or damaged is not rebuilt: one `error` line names it and its body file is kept aside
//! (`quarantine/`, never deleted). Reads every body file once, one at a time off the executor's
//! thread, so the queue runs meanwhile; writes only the rebuilt messages. Runs behind the open
//! queue at start (`recover.rs`: before it when sled lost its database) and on demand
//! (`Store::recover_journal`, `outpost queue recover`).
//!
//! While the queue runs, a message in sled when the pass began may be delivered and removed
//! before the pass reads its envelope: the pass only rebuilds ids below the first one it did not
//! see issued (`below`) that were not removed since it began (`Watch`), and keeps the body files
//! it reads on disk until it ends (`BodyFiles::pin_below`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;

use super::body_file::{body_file_path, parse_body_file_name};
use super::extent::{count_extent, Extent};
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
    /// Body files moved to `quarantine/` after the pass.
    pub(super) quarantined_files: u64,
}

/// What a running pass needs to know of the queue's changes: the messages removed from sled
/// since it began (ids below `below` only; newer ones it never rebuilds anyway).
pub(super) struct Watch {
    below: u64,
    removed: BTreeSet<QueueId>,
}

/// Notes that message `id` left sled (`update.rs`): a running pass may hold a copy of its body
/// file without the done record, and must not rebuild it from that copy.
pub(super) fn note_removed(store: &Store, id: QueueId) {
    if let Some(watch) = store.inner.pass.borrow_mut().as_mut() {
        if id.0 < watch.below {
            watch.removed.insert(id);
        }
    }
}

/// The body file numbers in `dir`, in creation order. Logs what else is there.
pub(super) fn body_file_numbers(dir: &Path) -> io::Result<Vec<u64>> {
    let mut nums = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        match entry.file_name().to_str().and_then(parse_body_file_name) {
            Some(num) => nums.push(num),
            None => log::warn!(
                "store: {} in the bodies directory is not a body file; left alone",
                entry.path().display()
            ),
        }
    }
    nums.sort_unstable();
    Ok(nums)
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

/// A pass over the body files listed in `bodies/` by `plan`.
pub struct JournalPass {
    nums: Vec<u64>,
    /// Ids from here on were issued after the plan: never rebuilt.
    below: u64,
    /// At start: body files no record points into are deleted (or kept aside) after the pass.
    at_start: bool,
}

impl JournalPass {
    /// The body files now in `bodies/`. At start, a body file numbered at or above sled's id
    /// counter means sled lost its database (and its counter): then every id counts, and the
    /// pass must end before any new id is taken (`blocks_start`).
    pub(super) fn plan(store: &Store, at_start: bool) -> Result<Self, StoreError> {
        let nums = body_file_numbers(store.inner.flush.body_files().dir())?;
        let next = store.fresh_number()?;
        let went_back = at_start && nums.last().is_some_and(|&num| num >= next);
        Ok(Self {
            nums,
            below: if went_back { u64::MAX } else { next },
            at_start,
        })
    }

    /// Whether the pass must run before the queue opens (see `plan`).
    pub(super) fn blocks_start(&self) -> bool {
        self.below == u64::MAX
    }

    /// Whether it is the start's pass (not `outpost queue recover`'s).
    pub(super) fn at_start(&self) -> bool {
        self.at_start
    }

    /// How many body files it reads.
    pub fn body_files(&self) -> usize {
        self.nums.len()
    }
}

/// Rebuilds every message the pass's body files hold that sled lacks (see the module doc), of
/// the ids below `below` (issued before `plan`); makes them durable; then lets go of the body files:
/// the ones emptied meanwhile are unlinked, and at start the ones no record points into are
/// deleted or, when they may hold mail, moved to `quarantine/`. One pass over the body files in
/// number (creation) order, keeping only what belongs to messages sled lacks: memory goes with
/// what is missing, not with the depth of the queue. One pass at a time.
pub(super) async fn run(store: &Store, pass: &JournalPass) -> Result<Rebuilt, StoreError> {
    if store.inner.pass.borrow().is_some() {
        return Err(StoreError::Sled(
            "the body files are being read already (by the start-up recovery); try again once \
             it is done"
                .into(),
        ));
    }
    *store.inner.pass.borrow_mut() = Some(Watch {
        below: pass.below,
        removed: BTreeSet::new(),
    });
    store.inner.flush.body_files().pin_below(pass.below);
    // On an error the body files stay pinned: kept on disk until the next start.
    let result = run_pinned(store, pass).await;
    *store.inner.pass.borrow_mut() = None;
    result
}

async fn run_pinned(store: &Store, pass: &JournalPass) -> Result<Rebuilt, StoreError> {
    let (mut out, lacking) = read_all(store, &pass.nums, pass.below).await?;
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
    admit(store, &out)?;
    // The rebuilt messages, and every removal so far, durable before a body file goes.
    store.flush().await?;
    out.quarantined_files = settle(store, pass, &out.keep)?;
    Ok(out)
}

/// Counts the rebuilt messages in the counters and body file references, and keeps new ids
/// above every number the journal holds (`id_floor`, stored so that later starts keep it).
fn admit(store: &Store, out: &Rebuilt) -> Result<(), StoreError> {
    let inner = &store.inner;
    let mut usage = inner.usage.get();
    let mut clock = inner.clock.get();
    for (_, meta, pieces) in &out.messages {
        usage.messages += 1;
        usage.bytes = usage.bytes.saturating_add(meta.size);
        clock = clock.max(meta.enqueued_at);
        let mut counts = Vec::new();
        for extent in pieces {
            count_extent(&mut counts, extent.file);
        }
        inner.flush.body_files().add_refs(&counts);
    }
    inner.usage.set(usage);
    inner.clock.set(clock);
    let next = store.fresh_number()?;
    if next <= out.max_number {
        let floor = inner.id_floor.get() + (out.max_number + 1 - next);
        log::warn!(
            "store: sled's id counter is behind the body files (its database was lost or \
             replaced): new ids start above {:016X}",
            out.max_number
        );
        inner.db()?.insert(key::ID_FLOOR, &floor.to_be_bytes())?;
        inner.id_floor.set(floor);
    }
    Ok(())
}

/// After a pass: the body files go back to the usual rule (unlinked once nothing points into
/// them), and at start the ones no record points into are deleted, or moved to `quarantine/`
/// when they may still hold mail (`keep`: damaged, unframed, or holding a message that could
/// not be rebuilt). Returns how many were moved.
fn settle(store: &Store, pass: &JournalPass, keep: &[u64]) -> Result<u64, StoreError> {
    let bodies = store.inner.flush.body_files();
    let free: Vec<u64> = pass
        .nums
        .iter()
        .copied()
        .filter(|num| !keep.contains(num))
        .collect();
    bodies.unpin(&free);
    if !pass.at_start {
        return Ok(0);
    }
    let mut moved = 0;
    for &num in &pass.nums {
        if bodies.live(num).is_some_and(|n| n > 0) {
            continue;
        }
        if keep.contains(&num) {
            log::error!(
                "store: body file {num:016X} referenced by no message, and it may hold mail \
                 (damaged or not a journal): moved to {QUARANTINE_DIR}/"
            );
            quarantine_file(bodies.dir(), num)?;
            moved += 1;
            continue;
        }
        match std::fs::remove_file(bodies.path(num)) {
            Ok(()) => log::info!("store: body file {num:016X} holds no queued message; removed"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(moved)
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

/// Scans the body files `nums`, in number (creation) order, so a message's pieces come in the
/// order they were appended; keeps the records of the messages sled lacks (a message leaves the
/// map at its whole-message done record). Each file is read on a blocking thread; the queue runs
/// meanwhile.
async fn read_all(
    store: &Store,
    nums: &[u64],
    below: u64,
) -> Result<(Rebuilt, BTreeMap<QueueId, Lacking>), StoreError> {
    let dir = store.inner.flush.body_files().dir().to_path_buf();
    let mut out = Rebuilt::default();
    let mut lacking: BTreeMap<QueueId, Lacking> = BTreeMap::new();
    for &num in nums {
        let path = body_file_path(&dir, num);
        let bytes = match smol::unblock(move || std::fs::read(path)).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        out.max_number = out.max_number.max(num);
        read_one(store, num, &bytes, below, &mut lacking, &mut out)?;
    }
    Ok((out, lacking))
}

/// Whether sled lacks message `id` for this pass: once found lacking, it stays in the map; an id
/// issued after the pass began, or removed since, is never lacking.
fn lacks(
    store: &Store,
    lacking: &BTreeMap<QueueId, Lacking>,
    id: QueueId,
    below: u64,
) -> Result<bool, StoreError> {
    if lacking.contains_key(&id) {
        return Ok(true);
    }
    let removed = store
        .inner
        .pass
        .borrow()
        .as_ref()
        .is_some_and(|watch| watch.removed.contains(&id));
    if id.0 >= below || removed {
        return Ok(false);
    }
    Ok(!store.inner.db()?.contains_key(key::msg(id))?)
}

/// The records of body file `num` (its bytes as read), into `lacking` and `out`.
fn read_one(
    store: &Store,
    num: u64,
    bytes: &[u8],
    below: u64,
    lacking: &mut BTreeMap<QueueId, Lacking>,
    out: &mut Rebuilt,
) -> Result<(), StoreError> {
    let scan = journal::scan(bytes);
    if scan.unframed {
        out.keep.push(num);
        return Ok(());
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
            PIECE if lacks(store, lacking, id, below)? => {
                lacking.entry(id).or_default().pieces.push(Extent {
                    file: num,
                    offset: found.offset,
                    len: found.len,
                    framed: true,
                });
            }
            ENVELOPE if lacks(store, lacking, id, below)? => {
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
    Ok(())
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
