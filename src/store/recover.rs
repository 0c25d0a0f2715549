//! Start-up recovery: sweeps spools never committed, moves undecodable records into the
//! `corrupt` tree (one `warn` line per key, never a refusal to start), quarantines messages
//! whose body file is missing or shorter than their `part/` records say (one `error` line
//! each; the rest of the queue flows), and rebuilds the counters, the body file reference
//! counts, the in-memory schedule (`due.rs`) and the `failed/` index from the message records:
//! then the queue can open. The pass over the body file journal (`rebuild.rs`: the messages
//! sled lacks, the body files no record points into) runs behind it (`finish`), or before it
//! when sled lost its database. Runs once, before any session; the only code that scans every
//! message.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use super::body_file::DirtyBodyFiles;
use super::extent::Extent;
use super::index::{index_of, Index};
use super::rebuild;
use super::record::{self, MessageMeta};
use super::{key, JournalPass, QueueId, RecoveryReport, Store, StoreError, Usage};
use crate::clock::QueueTime;
use crate::priority::Priority;

/// Everything up to an open queue; the journal pass still to run, unless it had to run first
/// (see `JournalPass::plan`).
pub(super) fn run(store: &Store) -> Result<(RecoveryReport, Option<JournalPass>), StoreError> {
    let mut report = RecoveryReport {
        swept_spools: sweep_spools(store)?,
        ..RecoveryReport::default()
    };
    if let Some(raw) = store.inner.db()?.get(key::ID_FLOOR)? {
        let floor = <[u8; 8]>::try_from(raw.as_ref()).map_or(0, u64::from_be_bytes);
        store.inner.id_floor.set(floor);
    }
    let pass = JournalPass::plan(store, true)?;
    remove_orphan_recipients(store)?;
    let mut parts = check_parts(store)?;
    store.inner.due.clear();
    let mut kept = Kept::new(store, store.inner.clock.get());
    for entry in store.inner.db()?.scan_prefix(key::MSG) {
        let (k, raw) = entry?;
        // sled's iterator reads a leaf once and walks a copy of it (sled 0.34.7 `iter.rs`,
        // `next_inner`), and its LRU pages out only once 64 accesses have queued in one of its
        // 256 shards (`lru.rs`, `MAX_QUEUE_ITEMS`, `N_SHARDS`): a scan alone keeps every leaf
        // it read in memory. A look-up per key is an access to that key's leaf, so sled pages
        // out as the scan goes: at 100,000 messages the start-up peak is 12.5 MiB instead of
        // 34.6, in no measurable time.
        store.inner.db()?.contains_key(&k)?;
        match check_message(store, &k, &raw, &mut parts)? {
            Ok((id, meta)) => kept.add(id, &meta),
            Err(quarantined) => report.quarantined += quarantined,
        }
    }
    report.messages = kept.usage.messages;
    rebuild_index(store, kept.expected)?;
    let refs = count_refs(store, kept.inline_refs)?;
    store.note_damage(&report);
    store.inner.flush.body_files().set_refs(refs);
    save_counters(store, kept.usage, kept.clock)?;
    if pass.blocks_start() {
        // Nothing runs yet: the pass, with its reads and its sync, is the start's to wait for.
        let rest = futures_lite::future::block_on(finish(store, &pass))?;
        return Ok((report.and(rest), None));
    }
    Ok((report, Some(pass)))
}

/// The journal pass (`rebuild.rs`), reported and logged.
pub(super) async fn finish(
    store: &Store,
    pass: &JournalPass,
) -> Result<RecoveryReport, StoreError> {
    let began = std::time::Instant::now();
    let rebuilt = rebuild::run(store, pass).await?;
    let report = RecoveryReport {
        messages: store.inner.usage.get().messages,
        recovered: rebuilt.messages.len() as u64,
        lost: rebuilt.lost,
        bad_records: rebuilt.bad_records,
        quarantined_files: rebuilt.quarantined_files,
        ..RecoveryReport::default()
    };
    if report.recovered + report.lost + report.bad_records > 0 {
        log::error!(
            "store: the database lacked {} messages the body file journal holds: {} rebuilt \
             from it (they will be delivered), {} damaged (kept in quarantine/); {} damaged \
             journal records skipped",
            report.recovered + report.lost,
            report.recovered,
            report.lost,
            report.bad_records,
        );
    }
    log::info!(
        "store: journal pass done: {} body files read in {} ms; {} messages rebuilt, {} body \
         files kept in quarantine/",
        pass.body_files(),
        began.elapsed().as_millis(),
        report.recovered,
        report.quarantined_files
    );
    store.note_damage(&report);
    // Worth it only where the scans read a deep queue (a fresh store keeps its first ids).
    if pass.at_start() && super::compact::grown(store.inner.flush.files().dir()) {
        store.inner.reopen_wanted.set(true);
    }
    Ok(report)
}

/// What the messages kept add up to: the counters, the queue clock, the `failed/` index they
/// imply, and the body file extents they hold inline. Their schedule goes straight into the
/// store's (`due.rs`).
struct Kept<'a> {
    store: &'a Store,
    usage: Usage,
    clock: QueueTime,
    expected: BTreeSet<Vec<u8>>,
    inline_refs: BTreeMap<u64, u64>,
}

impl<'a> Kept<'a> {
    fn new(store: &'a Store, clock: QueueTime) -> Self {
        Self {
            store,
            usage: Usage::default(),
            clock,
            expected: BTreeSet::new(),
            inline_refs: BTreeMap::new(),
        }
    }

    fn add(&mut self, id: QueueId, meta: &MessageMeta) {
        for extent in &meta.extents {
            *self.inline_refs.entry(extent.file).or_insert(0) += 1;
        }
        self.usage.messages += 1;
        self.usage.bytes = self.usage.bytes.saturating_add(meta.size);
        self.clock = self
            .clock
            .max(meta.enqueued_at)
            .max(meta.failed_at.unwrap_or(0));
        match index_of(id, meta) {
            Some(Index::Failed(k)) => drop(self.expected.insert(k)),
            Some(Index::Due(entry)) => self.store.inner.due.insert(entry),
            None => {}
        }
    }
}

/// One `msg/` record: the message to keep, or `Err(n)` when it went to `corrupt` with `n`
/// records in all (its envelope and parts).
fn check_message(
    store: &Store,
    k: &[u8],
    raw: &[u8],
    parts: &mut Parts,
) -> Result<Result<(QueueId, MessageMeta), u64>, StoreError> {
    let Some(id) = key::parse_id(key::MSG, k) else {
        quarantine(store, k, raw, "malformed message key")?;
        return Ok(Err(1));
    };
    let meta = match MessageMeta::decode(raw) {
        Ok(meta) => meta,
        Err(e) => {
            quarantine(store, k, raw, &e.to_string())?;
            return Ok(Err(1 + quarantine_parts(store, id)?));
        }
    };
    // A message with a damaged or missing part goes to `corrupt` whole: delivering it with
    // a recipient or a piece of its body short would lose mail silently.
    let damaged = match body_intact(store, id, &meta, parts)? {
        Err(why) => Some(format!("queue_id={id} body {why}")),
        Ok(()) => {
            let in_sled = meta.extents.is_empty() && !parts.count.contains_key(&id);
            damaged_part(store, id, &meta, in_sled)?
        }
    };
    if let Some(why) = damaged {
        quarantine(store, k, raw, &why)?;
        return Ok(Err(1 + quarantine_parts(store, id)?));
    }
    Ok(Ok((id, meta)))
}

/// Writes the recounted counters and clock and makes everything recovery did durable.
fn save_counters(store: &Store, usage: Usage, clock: QueueTime) -> Result<(), StoreError> {
    let db = store.inner.db()?;
    // The stored counters date from the last start (commits do not write them): the recount is
    // the truth, not a repair.
    db.insert(key::USAGE, record::encode_usage(usage))?;
    store.inner.usage.set(usage);
    db.insert(key::CLOCK, record::encode_clock(clock))?;
    store.inner.clock.set(clock);
    // Start-up only, nothing else runs yet: a blocking sync is fine here.
    store
        .inner
        .flush
        .files()
        .sync(&db, &DirtyBodyFiles::default())
        .map_err(StoreError::Io)
}

/// Deletes the chunks of every spool whose marker is still there (never committed: the commit
/// batch removes the marker).
fn sweep_spools(store: &Store) -> Result<u64, StoreError> {
    let db = store.inner.db()?;
    let mut swept = 0;
    for entry in db.scan_prefix(key::SPOOL).keys() {
        let marker = entry?;
        let mut batch = sled::Batch::default();
        if let Some(id) = key::parse_id(key::SPOOL, &marker) {
            if !db.contains_key(key::msg(id))? {
                let prefixes = [
                    key::body_prefix(id),
                    key::part_prefix(id),
                    key::rcpt_prefix(id),
                ];
                for prefix in prefixes {
                    for chunk in db.scan_prefix(prefix).keys() {
                        batch.remove(chunk?);
                    }
                }
                swept += 1;
                log::info!("store: queue_id={id} uncommitted spool swept");
            }
        }
        batch.remove(marker);
        db.apply_batch(batch)?;
    }
    Ok(swept)
}

/// What is wrong with the parts of a message whose envelope decodes: an undecodable recipient
/// record, fewer or more recipient records than the envelope names, or, for a body stored
/// inline in sled as legacy `body/` keys (`inline`), a chunk missing (chunks are numbered
/// `0..meta.chunks`; a point look-up each, no body is read into memory beyond sled's page
/// cache). Bodies in body files are checked by `body_intact`.
fn damaged_part(
    store: &Store,
    id: QueueId,
    meta: &MessageMeta,
    inline: bool,
) -> Result<Option<String>, StoreError> {
    let db = store.inner.db()?;
    let mut recipients = 0u64;
    for rcpt in db.scan_prefix(key::rcpt_prefix(id)) {
        let (k, raw) = rcpt?;
        if let Err(e) = record::decode_rcpt(&raw) {
            return Ok(Some(format!("recipient record {}: {e}", printable(&k))));
        }
        recipients += 1;
    }
    // A single recipient may be inline in the envelope: then no `rcpt/` record.
    let expected = if meta.rcpt.is_some() {
        0
    } else {
        meta.recipients
    };
    if recipients != u64::from(expected) {
        return Ok(Some(format!(
            "{recipients} recipient records for {} recipients{}",
            meta.recipients,
            if meta.rcpt.is_some() {
                " (one inline)"
            } else {
                ""
            }
        )));
    }
    if !inline {
        return Ok(None);
    }
    for chunk in 0..meta.chunks {
        if !db.contains_key(key::body(id, chunk))? {
            return Ok(Some(format!(
                "body chunk {chunk} of {} missing",
                meta.chunks
            )));
        }
    }
    if db.contains_key(key::body(id, meta.chunks))? {
        return Ok(Some(format!("body longer than its {} chunks", meta.chunks)));
    }
    Ok(None)
}

/// Moves the recipient records, body chunks and attempt history of a message whose envelope
/// is unreadable, or whose parts are damaged, next to it in `corrupt` (kept for the operator,
/// out of the queue). Returns the recipient records moved (body chunks are data, not records).
fn quarantine_parts(store: &Store, id: QueueId) -> Result<u64, StoreError> {
    let db = store.inner.db()?;
    let mut moved = 0;
    for prefix in [
        key::rcpt_prefix(id),
        key::body_prefix(id),
        key::part_prefix(id),
        key::hist_prefix(id),
    ] {
        for entry in db.scan_prefix(prefix) {
            let (k, raw) = entry?;
            store.inner.corrupt()?.insert(&k, raw)?;
            db.remove(&k)?;
            if k.starts_with(key::RCPT) {
                moved += 1;
            }
        }
    }
    Ok(moved)
}

/// Removes recipient and attempt records of no message: what a crash left in the middle of a
/// removal (which starts with `msg/`, see `writes.rs`) or of a commit (which ends with it).
fn remove_orphan_recipients(store: &Store) -> Result<(), StoreError> {
    let db = store.inner.db()?;
    let mut stray = sled::Batch::default();
    for (prefix, what) in [(key::RCPT, "recipient"), (key::HIST, "attempt record")] {
        for k in db.scan_prefix(prefix).keys() {
            let k = k?;
            let orphan = match key::parse_numbered(prefix, &k) {
                Some((id, _)) => !db.contains_key(key::msg(id))?,
                None => true,
            };
            if orphan {
                log::info!("store: key={} {what} of no message removed", printable(&k));
                stray.remove(k);
            }
        }
    }
    db.apply_batch(stray)?;
    Ok(())
}

/// What the `part/` records say, per message: how many there are, and whether each decodes and
/// lies inside an existing body file.
#[derive(Default)]
struct Parts {
    count: BTreeMap<QueueId, u32>,
    broken: BTreeMap<QueueId, String>,
    /// Body file lengths looked up so far (`None`: missing).
    lengths: BTreeMap<u64, Option<u64>>,
}

impl Parts {
    /// What is wrong with `extent`: its body file is missing or ends before it does.
    fn problem(&mut self, store: &Store, extent: &Extent) -> Result<Option<String>, StoreError> {
        let len = match self.lengths.get(&extent.file) {
            Some(len) => *len,
            None => {
                let path = store.inner.flush.body_files().path(extent.file);
                let len = match std::fs::metadata(path) {
                    Ok(meta) => Some(meta.len()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(StoreError::Io(e)),
                };
                *self.lengths.entry(extent.file).or_insert(len)
            }
        };
        Ok(match len {
            None => Some(format!("body file {:016X} missing", extent.file)),
            Some(len) if len < extent.end() => Some(format!(
                "body file {:016X} truncated ({len} bytes, a part ends at {})",
                extent.file,
                extent.end()
            )),
            Some(_) => None,
        })
    }
}

/// Reads every `part/` record once: records of no message (neither committed nor a spool, both
/// handled before) are removed; the others are checked against the body files' lengths.
fn check_parts(store: &Store) -> Result<Parts, StoreError> {
    let db = store.inner.db()?;
    let mut parts = Parts::default();
    let mut stray = sled::Batch::default();
    for entry in db.scan_prefix(key::PART) {
        let (k, raw) = entry?;
        let Some((id, _)) = key::parse_numbered(key::PART, &k) else {
            log::warn!("store: key={} malformed part key removed", printable(&k));
            stray.remove(k);
            continue;
        };
        if !db.contains_key(key::msg(id))? {
            log::warn!("store: key={} part of no message removed", printable(&k));
            stray.remove(k);
            continue;
        }
        *parts.count.entry(id).or_insert(0) += 1;
        let problem = match Extent::decode(&raw) {
            Err(e) => Some(format!("record undecodable ({e})")),
            Ok(extent) => parts.problem(store, &extent)?,
        };
        if let Some(problem) = problem {
            parts.broken.entry(id).or_insert(problem);
        }
    }
    db.apply_batch(stray)?;
    Ok(parts)
}

/// Whether a committed message's body can be read back whole.
fn body_intact(
    store: &Store,
    id: QueueId,
    meta: &MessageMeta,
    parts: &mut Parts,
) -> Result<Result<(), String>, StoreError> {
    if let Some(problem) = parts.broken.get(&id) {
        return Ok(Err(problem.clone()));
    }
    let listed = parts.count.get(&id).copied().unwrap_or(0);
    if !meta.extents.is_empty() {
        if listed != 0 {
            return Ok(Err(format!(
                "has {listed} parts besides its {} inline extents",
                meta.extents.len()
            )));
        }
        for extent in &meta.extents {
            if let Some(problem) = parts.problem(store, extent)? {
                return Ok(Err(problem));
            }
        }
        return Ok(Ok(()));
    }
    Ok(match listed {
        // Legacy bodies inline in sled (`body/` keys).
        0 if meta.chunks == 0 => Ok(()),
        0 => match store.inner.db()?.scan_prefix(key::body_prefix(id)).next() {
            Some(_) => Ok(()),
            None => Err(format!("has no parts ({} expected)", meta.chunks)),
        },
        n if n == meta.chunks => Ok(()),
        n => Err(format!("has {n} parts, {} expected", meta.chunks)),
    })
}

/// Live extents per body file: `inline` (those in the `msg/` records kept), plus the `part/`
/// records left after the checks.
fn count_refs(
    store: &Store,
    mut refs: BTreeMap<u64, u64>,
) -> Result<BTreeMap<u64, u64>, StoreError> {
    for raw in store.inner.db()?.scan_prefix(key::PART).values() {
        if let Ok(extent) = Extent::decode(&raw?) {
            *refs.entry(extent.file).or_insert(0) += 1;
        }
    }
    Ok(refs)
}

/// Copies the raw record into `corrupt` under the same key, then removes it from the queue.
fn quarantine(store: &Store, k: &[u8], raw: &[u8], why: &str) -> Result<(), StoreError> {
    log::warn!(
        "store: key={} damaged ({why}); moved to the corrupt tree",
        printable(k)
    );
    store.inner.corrupt()?.insert(k, raw)?;
    store.inner.db()?.remove(k)?;
    Ok(())
}

/// Makes `failed/` hold exactly the entries the message records imply, and removes the
/// legacy `due/` index keys (the schedule is in memory: `due.rs`).
fn rebuild_index(store: &Store, mut expected: BTreeSet<Vec<u8>>) -> Result<(), StoreError> {
    let db = store.inner.db()?;
    let mut batch = sled::Batch::default();
    let mut legacy = 0_u64;
    for prefix in Priority::ALL.map(key::due_prefix) {
        for entry in db.scan_prefix(prefix).keys() {
            batch.remove(entry?);
            legacy += 1;
        }
    }
    if legacy > 0 {
        log::info!("store: removed {legacy} legacy due/ keys (the schedule is kept in memory)");
    }
    for entry in db.scan_prefix(key::FAILED).keys() {
        let k = entry?;
        if !expected.remove(k.as_ref()) {
            log::warn!("store: key={} stale index entry removed", printable(&k));
            batch.remove(k);
        }
    }
    for k in expected {
        log::warn!("store: key={} missing index entry restored", printable(&k));
        batch.insert(k, &[]);
    }
    db.apply_batch(batch)?;
    Ok(())
}

/// `msg/0000000000000001`: the ASCII prefix, then the binary part in hex.
fn printable(k: &[u8]) -> String {
    let split = k
        .iter()
        .position(|&b| b == b'/')
        .map_or(0, |slash| slash + 1);
    let (prefix, rest) = k.split_at(split);
    let mut out = String::from_utf8_lossy(prefix).into_owned();
    for b in rest {
        out.push_str(&format!("{b:02X}"));
    }
    out
}
