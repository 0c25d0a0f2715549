//! Compaction: gives the disk back once the queue is empty. sled 0.34.7 never shrinks its `db`
//! file (nor the page state it keeps in memory for it), so when it holds no message and has
//! grown past `COMPACT_ABOVE`, every key of every tree is copied into a fresh database in
//! `compact.new/`, which is swapped in: by `Store::open`, and while the daemon runs by
//! `Store::compact_if_idle` (called periodically), which swaps the store's sled handles too.
//!
//! The swap survives a crash at any step. The copy is complete once the `complete` marker is
//! in `compact.new/` (written last, after every file and directory is fsynced); until then the
//! data directory's database is untouched, and the next start deletes `compact.new/`. After it,
//! `resolve` (which runs at every open, before sled) finishes the swap: sled's files in the data
//! directory move into `compact.old.tmp/`, renamed `compact.old/` once they all are there; then
//! the new files move in, the marker and `compact.new/` go, and last `compact.old/`. Only sled's
//! files move (`db`, `conf`, `blobs/`, `snap.*`): the body files, `quarantine/` and anything else
//! in the data directory stay where they are.

use std::fs;
use std::io;
use std::path::Path;
use std::time::Instant;

use super::{key, Database, Store, StoreError};

/// A `db` file above this many bytes is compacted at open when the queue is empty (an empty
/// store's database is a few hundred KiB).
pub(super) const COMPACT_ABOVE: u64 = 1 << 20;

const NEW: &str = "compact.new";
const OLD: &str = "compact.old";
const OLD_TMP: &str = "compact.old.tmp";
/// In `compact.new/`: the copy is whole and durable.
const COMPLETE: &str = "complete";

/// sled's `idgen_persist_interval` as the store opens it (sled's default, `config.rs`).
const IDGEN_INTERVAL: u64 = 1_000_000;

/// Prefixes whose keys belong to a queued message (or a legacy spool or body).
const MESSAGE_PREFIXES: [&[u8]; 5] = [key::MSG, key::SPOOL, key::PART, key::RCPT, key::BODY];

/// sled's own files in its directory (`config.rs` `db_path`, `blob_path`, snapshot files).
fn is_sled_file(name: &str) -> bool {
    matches!(name, "db" | "conf" | "blobs") || name.starts_with("snap.")
}

/// An exclusive `flock` on `dir`, to hold from `resolve` to the end of `compact_if_empty`: two
/// starts on one data directory never move its files at once (sled's own lock, on `db`, cannot
/// cover files that are being moved; the second start then waits for sled's). On a file system
/// without `flock`, a warning and no lock.
pub(super) fn lock(dir: &Path) -> Option<fs::File> {
    flock(dir, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| log::warn!("store: cannot lock {} ({e}); opening anyway", dir.display()))
        .ok()
}

fn flock(dir: &Path, operation: rustix::fs::FlockOperation) -> io::Result<fs::File> {
    let file = fs::File::open(dir)?;
    rustix::fs::flock(&file, operation)?;
    Ok(file)
}

/// Finishes or rolls back a swap a crash interrupted. Call before sled opens `dir`.
pub(super) fn resolve(dir: &Path) -> io::Result<()> {
    let new = dir.join(NEW);
    if new.join(COMPLETE).exists() {
        let old = dir.join(OLD);
        if !old.exists() {
            let tmp = dir.join(OLD_TMP);
            if !tmp.exists() {
                fs::create_dir(&tmp)?;
                crash_point();
            }
            move_sled_files(dir, &tmp)?;
            fs::rename(&tmp, &old)?;
            sync_dir(dir)?;
            crash_point();
        }
        move_sled_files(&new, dir)?;
        fs::remove_file(new.join(COMPLETE))?;
        crash_point();
        fs::remove_dir_all(&new)?;
        sync_dir(dir)?;
        crash_point();
    } else if new.exists() {
        // An interrupted copy: the database in `dir` is whole.
        fs::remove_dir_all(&new)?;
        crash_point();
    }
    let old = dir.join(OLD);
    if old.exists() {
        fs::remove_dir_all(&old)?;
        sync_dir(dir)?;
        crash_point();
    }
    Ok(())
}

/// How the store opens its sled database, which a compaction opens again.
#[derive(Clone)]
pub(super) struct Reopen {
    pub(super) config: sled::Config,
    /// The database's (`open.rs` `sled_segment_size`): its copy must have the same.
    pub(super) segment_size: usize,
    /// `open.rs` `open_db`: waits for a dropped handle's lock.
    pub(super) open_db: fn(&sled::Config) -> sled::Result<sled::Db>,
}

/// Compacts `db` (open on `dir`) when it holds no message and its file is larger than
/// `COMPACT_ABOVE`; returns the database to use: `db` itself, or the compact copy.
/// A failure to build the copy is logged and leaves the database as it is.
pub(super) fn compact_if_empty(
    dir: &Path,
    db: sled::Db,
    reopen: &Reopen,
) -> Result<sled::Db, StoreError> {
    let before = db_bytes(dir);
    if before <= COMPACT_ABOVE || !is_empty(&db)? {
        return Ok(db);
    }
    let started = Instant::now();
    if !try_build(dir, &db, reopen) {
        return Ok(db);
    }
    drop(db);
    resolve(dir)?;
    let db = (reopen.open_db)(&reopen.config)?;
    log::info!(
        "store: compacted the database: {} MB -> {} KB in {} ms",
        before >> 20,
        db_bytes(dir) >> 10,
        started.elapsed().as_millis()
    );
    Ok(db)
}

impl Store {
    /// Something runs that must not see the database swapped: a sync started and not finished
    /// (it holds a handle on the database), a database handle borrowed, or a pass over the body
    /// file journal (`rebuild.rs`), which may still rebuild messages into it.
    pub(super) fn compaction_blocked(&self) -> bool {
        !self.inner.flush.idle()
            || self.inner.db.try_borrow_mut().is_err()
            || self.inner.pass.borrow().is_some()
    }

    /// Compacts the database while the store runs, as `Store::open` does, when the queue is
    /// empty, nothing is in flight (`compaction_blocked`) and the `db` file has grown past
    /// `COMPACT_ABOVE`; true if it did. One synchronous step from the copy to the swap, so no
    /// write lands in the old database once the copy started. Every handle on the old database
    /// is dropped (sled flushes and closes it) before `resolve` moves its files.
    ///
    /// A copy that cannot be built is logged, and tried again once the file has doubled. An
    /// error means the swap failed half way: the database stays closed (every store call
    /// fails) and the next open finishes the swap.
    pub fn compact_if_idle(&self) -> Result<bool, StoreError> {
        if self.inner.usage.get().messages != 0 || self.compaction_blocked() {
            return Ok(false);
        }
        let mut slot = self.inner.db.borrow_mut();
        let Some(open) = slot.as_mut() else {
            return Ok(false);
        };
        let dir = self.inner.flush.files().dir().to_path_buf();
        let before = db_bytes(&dir);
        if before <= open.compact_above || !is_empty(&open.db)? {
            return Ok(false);
        }
        // Another start on this directory holds it: try again at the next call.
        let _lock = match flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            other => other.ok(),
        };
        let started = Instant::now();
        if !try_build(&dir, &open.db, &open.reopen) {
            open.compact_above = before.saturating_mul(2);
            return Ok(false);
        }
        let reopen = open.reopen.clone();
        self.reattach(&mut slot, reopen, COMPACT_ABOVE, || resolve(&dir))?;
        log::info!(
            "store: compacted the database while running: {} MB -> {} KB in {} ms",
            before >> 20,
            db_bytes(&dir) >> 10,
            started.elapsed().as_millis()
        );
        Ok(true)
    }
}

impl Store {
    /// Closes the database and opens it again when the start's recovery asked for it
    /// (`Inner::reopen_wanted`) and nothing is in flight (`compaction_blocked`); true if it did.
    /// sled keeps the leaves and the per-page state that the start-up scans (`recover.rs`,
    /// `rebuild.rs`) read until they are evicted, which is lazy: reopened, it holds only what
    /// the running queue reads (measured at 100,000 queued: about 3 MiB less). One synchronous
    /// step, like the compaction; writes not yet synced are flushed by sled as it closes and
    /// synced by the next group flush.
    pub fn reopen_if_idle(&self) -> Result<bool, StoreError> {
        if !self.inner.reopen_wanted.get() || self.compaction_blocked() {
            return Ok(false);
        }
        let mut slot = self.inner.db.borrow_mut();
        let Some(open) = slot.as_ref() else {
            return Ok(false);
        };
        let (reopen, compact_above) = (open.reopen.clone(), open.compact_above);
        let started = Instant::now();
        self.reattach(&mut slot, reopen, compact_above, || Ok(()))?;
        log::info!(
            "store: reopened the database after the start-up recovery in {} ms",
            started.elapsed().as_millis()
        );
        Ok(true)
    }

    /// Drops every handle on the open database (`slot`, the group flush's), runs `between`,
    /// and opens it again as `reopen` says (which is all `reopen_if_idle` asks for).
    fn reattach(
        &self,
        slot: &mut Option<Database>,
        reopen: Reopen,
        compact_above: u64,
        between: impl FnOnce() -> io::Result<()>,
    ) -> Result<(), StoreError> {
        *slot = None;
        self.inner.flush.detach();
        between()?;
        let db = (reopen.open_db)(&reopen.config)?;
        let corrupt = db.open_tree("corrupt")?;
        self.inner.flush.attach(db.clone())?;
        *slot = Some(Database {
            db,
            corrupt,
            reopen,
            compact_above,
        });
        self.inner.reopen_wanted.set(false);
        // sled wrote files as it closed and opened (a snapshot; a compaction's new files) under
        // the daemon's umask (`Store::open` checks them too).
        let dir = self.inner.flush.files().dir().to_path_buf();
        if let Err(e) = super::private::tighten(&dir) {
            log::warn!("store: cannot make the reopened database private: {e}");
        }
        Ok(())
    }
}

/// Whether sled's `db` file in `dir` has grown past `COMPACT_ABOVE`.
pub(super) fn grown(dir: &Path) -> bool {
    db_bytes(dir) > COMPACT_ABOVE
}

fn db_bytes(dir: &Path) -> u64 {
    fs::metadata(dir.join("db")).map_or(0, |m| m.len())
}

/// No key of a message under any prefix: one seek each, never a count.
fn is_empty(db: &sled::Db) -> sled::Result<bool> {
    for prefix in MESSAGE_PREFIXES {
        if db.scan_prefix(prefix).next().transpose()?.is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `build`; a copy that cannot be built is logged and removed, and the database stays as it is
/// (`false`).
fn try_build(dir: &Path, db: &sled::Db, reopen: &Reopen) -> bool {
    match build(dir, db, reopen) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("store: cannot compact the database ({e}); it stays as it is");
            let _ = fs::remove_dir_all(dir.join(NEW));
            false
        }
    }
}

/// Writes the copy of `db` into `compact.new/`, durable, marked complete last.
fn build(dir: &Path, db: &sled::Db, reopen: &Reopen) -> Result<(), StoreError> {
    let new = dir.join(NEW);
    let _ = fs::remove_dir_all(&new);
    fs::create_dir(&new)?;
    crash_point();
    // Above every number `db` gave out (sled's ids are monotonic and restart above the last
    // persisted one after a crash).
    let next_id = db.generate_id()?;
    let config = |interval: u64| {
        sled::Config::new()
            .path(&new)
            .segment_size(reopen.segment_size)
            .cache_capacity(1 << 20)
            .flush_every_ms(None)
            .use_compression(false)
            .mode(sled::Mode::LowSpace)
            .idgen_persist_interval(interval)
    };
    {
        let copy = (reopen.open_db)(&config(IDGEN_INTERVAL))?;
        for name in db.tree_names() {
            let (from, to) = (db.open_tree(&name)?, copy.open_tree(&name)?);
            for entry in from.iter() {
                let (k, v) = entry?;
                to.insert(k, v)?;
            }
        }
        copy.flush()?;
    }
    crash_point();
    // A fresh database's `generate_id` starts at 0; reopened, at its persisted counter plus
    // twice the interval (`pagecache/mod.rs`, `PageCache::start`). Reopened with half a
    // multiple of the store's interval above `next_id`, its first id is that multiple, which
    // it persists (`generate_id_inner`): every later open starts above it. The counter stays a
    // multiple of `IDGEN_INTERVAL`, as sled's next persist asserts.
    {
        let half = (next_id / IDGEN_INTERVAL + 1) * (IDGEN_INTERVAL / 2);
        let copy = (reopen.open_db)(&config(half))?;
        copy.generate_id()?;
        copy.flush()?;
    }
    crash_point();
    sync_tree(&new)?;
    fs::File::create(new.join(COMPLETE))?.sync_all()?;
    sync_dir(&new)?;
    sync_dir(dir)?;
    crash_point();
    Ok(())
}

/// Moves sled's files from `from` into `to`, then makes both directories durable.
fn move_sled_files(from: &Path, to: &Path) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let name = entry?.file_name();
        if name.to_str().is_some_and(is_sled_file) {
            fs::rename(from.join(&name), to.join(&name))?;
            crash_point();
        }
    }
    sync_dir(to)?;
    sync_dir(from)
}

/// fsyncs every file and directory under `dir`, then `dir` (sled's flush is not a barrier).
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            fs::File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
use std::cell::Cell;

#[cfg(test)]
thread_local! {
    /// Tests: how many crash points pass before one panics (a crash at that step).
    pub(super) static CRASH_AFTER: Cell<Option<u32>> = const { Cell::new(None) };
}

/// A step of the compaction a crash could follow; tests stop there (`CRASH_AFTER`).
fn crash_point() {
    #[cfg(test)]
    CRASH_AFTER.with(|left| {
        if let Some(n) = left.get() {
            if n == 0 {
                left.set(None);
                panic!("simulated crash");
            }
            left.set(Some(n - 1));
        }
    });
}
