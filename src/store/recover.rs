//! Start-up recovery: sweeps spools never committed, moves undecodable records into the
//! `corrupt` tree (one `warn` line per key, never a refusal to start), and rebuilds the counters
//! and the `due/`/`failed/` indexes from the message records. Runs once, before any session;
//! the only code that scans every message.

use std::collections::BTreeSet;

use super::record::{self, MessageMeta};
use super::{index_key, key, QueueId, RecoveryReport, Store, StoreError, Usage};

pub(super) fn run(store: &Store) -> Result<RecoveryReport, StoreError> {
    let mut report = RecoveryReport {
        swept_spools: sweep_spools(store)?,
        ..RecoveryReport::default()
    };

    let db = &store.inner.db;
    let mut usage = Usage::default();
    let mut clock = store.inner.clock.get();
    let mut expected = BTreeSet::new();
    for entry in db.scan_prefix(key::MSG) {
        let (k, raw) = entry?;
        let Some(id) = key::parse_id(key::MSG, &k) else {
            quarantine(store, &k, &raw, "malformed message key")?;
            report.quarantined += 1;
            continue;
        };
        let meta = match MessageMeta::decode(&raw) {
            Ok(meta) => meta,
            Err(e) => {
                quarantine(store, &k, &raw, &e.to_string())?;
                report.quarantined += 1 + quarantine_parts(store, id)?;
                continue;
            }
        };
        // A message with a damaged or missing part goes to `corrupt` whole: delivering it with
        // a recipient or a body chunk short would lose mail silently.
        if let Some(why) = damaged_part(store, id, &meta)? {
            quarantine(store, &k, &raw, &why)?;
            report.quarantined += 1 + quarantine_parts(store, id)?;
            continue;
        }
        usage.messages += 1;
        usage.bytes = usage.bytes.saturating_add(meta.size);
        clock = clock.max(meta.enqueued_at).max(meta.failed_at.unwrap_or(0));
        if let Some(k) = index_key(id, &meta) {
            expected.insert(k);
        }
    }
    report.messages = usage.messages;
    rebuild_index(store, expected)?;

    if usage != store.inner.usage.get() {
        log::warn!(
            "store: counters were messages={} bytes={}, recounted messages={} bytes={}",
            store.inner.usage.get().messages,
            store.inner.usage.get().bytes,
            usage.messages,
            usage.bytes
        );
    }
    db.insert(key::USAGE, record::encode_usage(usage))?;
    store.inner.usage.set(usage);
    db.insert(key::CLOCK, record::encode_clock(clock))?;
    store.inner.clock.set(clock);
    // Start-up only, nothing else runs yet: a blocking sync is fine here.
    store.inner.flush.files().sync(db).map_err(StoreError::Io)?;
    Ok(report)
}

/// Deletes the chunks of every spool whose marker is still there (never committed: the commit
/// batch removes the marker).
fn sweep_spools(store: &Store) -> Result<u64, StoreError> {
    let db = &store.inner.db;
    let mut swept = 0;
    for entry in db.scan_prefix(key::SPOOL).keys() {
        let marker = entry?;
        let mut batch = sled::Batch::default();
        if let Some(id) = key::parse_id(key::SPOOL, &marker) {
            if !db.contains_key(key::msg(id))? {
                for chunk in db.scan_prefix(key::body_prefix(id)).keys() {
                    batch.remove(chunk?);
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
/// record, fewer or more recipient records than the envelope names, or a body chunk missing
/// (chunks are numbered `0..meta.chunks`; a point look-up each, no body is read into memory
/// beyond sled's page cache).
fn damaged_part(
    store: &Store,
    id: QueueId,
    meta: &MessageMeta,
) -> Result<Option<String>, StoreError> {
    let db = &store.inner.db;
    let mut recipients = 0u64;
    for rcpt in db.scan_prefix(key::rcpt_prefix(id)) {
        let (k, raw) = rcpt?;
        if let Err(e) = record::decode_rcpt(&raw) {
            return Ok(Some(format!("recipient record {}: {e}", printable(&k))));
        }
        recipients += 1;
    }
    if recipients != u64::from(meta.recipients) {
        return Ok(Some(format!(
            "{recipients} recipient records for {} recipients",
            meta.recipients
        )));
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
    let db = &store.inner.db;
    let mut moved = 0;
    for prefix in [
        key::rcpt_prefix(id),
        key::body_prefix(id),
        key::hist_prefix(id),
    ] {
        for entry in db.scan_prefix(prefix) {
            let (k, raw) = entry?;
            store.inner.corrupt.insert(&k, raw)?;
            db.remove(&k)?;
            if k.starts_with(key::RCPT) {
                moved += 1;
            }
        }
    }
    Ok(moved)
}

/// Copies the raw record into `corrupt` under the same key, then removes it from the queue.
fn quarantine(store: &Store, k: &[u8], raw: &[u8], why: &str) -> Result<(), StoreError> {
    log::warn!(
        "store: key={} damaged ({why}); moved to the corrupt tree",
        printable(k)
    );
    store.inner.corrupt.insert(k, raw)?;
    store.inner.db.remove(k)?;
    Ok(())
}

/// Makes `due/` and `failed/` hold exactly the entries the message records imply.
fn rebuild_index(store: &Store, mut expected: BTreeSet<Vec<u8>>) -> Result<(), StoreError> {
    let db = &store.inner.db;
    let mut batch = sled::Batch::default();
    for prefix in [key::DUE, key::FAILED] {
        for entry in db.scan_prefix(prefix).keys() {
            let k = entry?;
            if !expected.remove(k.as_ref()) {
                log::warn!("store: key={} stale index entry removed", printable(&k));
                batch.remove(k);
            }
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
