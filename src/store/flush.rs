//! Group commit: makes the store's writes durable with exactly one flush in flight at a time.
//! Owns the `fdatasync`s that turn sled's flush into a power-loss barrier. Never writes data.
//!
//! One sync: `fdatasync` every body file appended to since the previous sync started (and
//! fsync `bodies/` if it gained a file), then flush sled and `fdatasync` its log: a `part/`
//! record that survives a power cut points at body bytes that survived it too.
//!
//! Why each step (sled 0.34.7 source, `~/.cargo/registry/src/*/sled-0.34.7/`):
//! - `Db::flush` (`src/tree.rs` `flush` → `src/pagecache/iobuf.rs` `flush`/`make_stable`)
//!   writes the io buffers with `pwrite_all` and ends in `libc::sync_file_range(..,
//!   WAIT_BEFORE | WRITE | WAIT_AFTER)` on Linux (`iobuf.rs` `write_to_log`). That pushes the
//!   pages to the device but neither flushes its volatile cache nor commits the inode, so it
//!   is not a power-loss barrier. Only the background flusher calls `sync_all`
//!   (`src/flusher.rs`). We therefore `fdatasync` the log file `<dir>/db` (`Config::db_path`
//!   in `src/config.rs`) through our own read-only handle after every flush.
//! - `flush_async` with ~8 or more calls in flight deadlocks (sled issue #1308):
//!   here only one flush ever runs; writes that land while it runs wait for the next one,
//!   which covers them all.
//! - Values too large for a log segment slot go to `<dir>/blobs/<lsn>` (`blob_io.rs`
//!   `write_blob`), written without any fsync, and snapshots (`snap.<lsn>`, `snapshot.rs`) are
//!   `sync_all`ed but renamed into place without a directory fsync. The store keeps values
//!   small so blobs should not appear; in case one does, each sync also fsyncs new files in
//!   `blobs/` and the directories whose listing changed.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use event_listener::Event;

use super::body_file::{BodyFiles, DirtyBodyFiles};

/// Called on the sync thread right after a sync completed (tests observe the order with it).
pub type SyncHook = Arc<dyn Fn() + Send + Sync>;

/// Counters shared with the sync thread.
#[derive(Default)]
pub(super) struct SyncStats {
    /// Completed syncs (flush + fdatasync): the durable epoch.
    pub(super) syncs: AtomicU64,
    /// Syncs running right now, and the most ever seen at once (must stay 1).
    pub(super) running: AtomicU64,
    pub(super) max_running: AtomicU64,
}

/// The files a sync makes durable, shared with the blocking thread.
pub(super) struct SyncFiles {
    dir: PathBuf,
    /// Our own handle on sled's log file: `fdatasync` works on any descriptor of the inode.
    /// Replaced when a live compaction puts a new database in place (`reopen`).
    log: Mutex<File>,
    /// Directory listings already made durable (data dir and `blobs/`).
    seen: Mutex<(BTreeSet<OsString>, BTreeSet<OsString>)>,
    stats: SyncStats,
    hook: Mutex<Option<SyncHook>>,
}

impl SyncFiles {
    /// Opens the log file and makes what sled created at open durable: `conf` (written without
    /// any fsync by `Config::write_config`), `db`, and the directory entries.
    pub(super) fn open(dir: &Path) -> io::Result<Self> {
        let files = Self {
            dir: dir.to_path_buf(),
            log: Mutex::new(File::open(dir.join("db"))?),
            seen: Mutex::new((BTreeSet::new(), BTreeSet::new())),
            stats: SyncStats::default(),
            hook: Mutex::new(None),
        };
        files.settle()?;
        // sled may just have created the data directory itself (`create_dir_all`).
        let parent = match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
        Ok(files)
    }

    /// Takes a handle on the log of the database a live compaction just put in place, and makes
    /// its files durable as `open` does. Call with no sync running.
    pub(super) fn reopen(&self) -> io::Result<()> {
        *self.log.lock().unwrap_or_else(PoisonError::into_inner) = File::open(self.dir.join("db"))?;
        self.settle()
    }

    fn settle(&self) -> io::Result<()> {
        File::open(self.dir.join("conf"))?.sync_all()?;
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sync_all()?;
        self.sync_directories(true)
    }

    /// The data directory.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn stats(&self) -> &SyncStats {
        &self.stats
    }

    pub(super) fn set_hook(&self, hook: Option<SyncHook>) {
        *self.hook.lock().unwrap_or_else(PoisonError::into_inner) = hook;
    }

    /// Make the body files durable, then flush sled and make that real. Blocking: runs on a
    /// `blocking` thread (or at start-up).
    pub(super) fn sync(&self, db: &sled::Db, bodies: &DirtyBodyFiles) -> io::Result<()> {
        let now = self.stats.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.stats.max_running.fetch_max(now, Ordering::SeqCst);
        let result = sync_bodies(bodies).and_then(|()| self.sync_inner(db));
        if result.is_ok() {
            self.stats.syncs.fetch_add(1, Ordering::SeqCst);
            let hook = self
                .hook
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(hook) = hook {
                hook();
            }
        }
        self.stats.running.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn sync_inner(&self, db: &sled::Db) -> io::Result<()> {
        db.flush()
            .map_err(|e| io::Error::other(format!("sled flush: {e}")))?;
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sync_data()?;
        self.sync_directories(false)
    }

    /// fsyncs new files under `blobs/` and every directory whose listing gained an entry.
    fn sync_directories(&self, force: bool) -> io::Result<()> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let blobs_dir = self.dir.join("blobs");
        let blobs = list(&blobs_dir)?;
        let new_blobs: Vec<&OsString> = blobs.difference(&seen.1).collect();
        for name in &new_blobs {
            File::open(blobs_dir.join(name))?.sync_data()?;
        }
        if force || !new_blobs.is_empty() {
            File::open(&blobs_dir)?.sync_all()?;
        }
        let top = list(&self.dir)?;
        if force || top.difference(&seen.0).next().is_some() {
            File::open(&self.dir)?.sync_all()?;
        }
        *seen = (top, blobs);
        Ok(())
    }
}

/// Bodies first: a `part/` record must never be durable before the bytes it points at.
fn sync_bodies(bodies: &DirtyBodyFiles) -> io::Result<()> {
    for (_, file) in &bodies.files {
        file.sync_data()?;
    }
    if let Some(dir) = &bodies.dir {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn list(dir: &Path) -> io::Result<BTreeSet<OsString>> {
    std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect()
}

/// A sync's result, with the body files it covered (put back for the next sync if it failed).
type SyncFuture = Pin<Box<dyn Future<Output = (io::Result<()>, DirtyBodyFiles)>>>;

/// The one sync in flight and the write sequence number it covers.
struct InFlight {
    covers: u64,
    future: SyncFuture,
}

/// Single-threaded group-commit state (lives in the store's `Rc`).
pub(super) struct GroupFlush {
    /// `None` while a live compaction swaps the database (`detach`, `attach`).
    db: RefCell<Option<sled::Db>>,
    files: Arc<SyncFiles>,
    body_files: BodyFiles,
    /// Sequence number of the last write applied to sled.
    written: Cell<u64>,
    /// Every write with a sequence number ≤ this is durable.
    durable: Cell<u64>,
    /// A sync has been started and not finished (it may be parked, see `Parker`).
    in_flight: Cell<bool>,
    parked: RefCell<Option<InFlight>>,
    changed: Event,
}

impl GroupFlush {
    pub(super) fn new(db: sled::Db, files: Arc<SyncFiles>, body_files: BodyFiles) -> Self {
        Self {
            db: RefCell::new(Some(db)),
            files,
            body_files,
            written: Cell::new(0),
            durable: Cell::new(0),
            in_flight: Cell::new(false),
            parked: RefCell::new(None),
            changed: Event::new(),
        }
    }

    /// No sync started and not finished (none running on its thread, none parked).
    pub(super) fn idle(&self) -> bool {
        !self.in_flight.get()
    }

    /// Lets go of the database (a live compaction drops every handle on it). Call when `idle`.
    pub(super) fn detach(&self) {
        self.db.replace(None);
    }

    /// Syncs `db` from now on: the database a live compaction put in place.
    pub(super) fn attach(&self, db: sled::Db) -> io::Result<()> {
        self.files.reopen()?;
        self.db.replace(Some(db));
        Ok(())
    }

    pub(super) fn files(&self) -> &Arc<SyncFiles> {
        &self.files
    }

    pub(super) fn body_files(&self) -> &BodyFiles {
        &self.body_files
    }

    /// Call right after a write was applied to sled; returns the number to wait for.
    pub(super) fn note_write(&self) -> u64 {
        let seq = self.written.get() + 1;
        self.written.set(seq);
        seq
    }

    /// Returns once write `seq` is durable. Starts a sync if none is in flight; otherwise waits
    /// for the one running and, if that one started before `seq` was written, for the next.
    pub(super) async fn wait(&self, seq: u64) -> io::Result<()> {
        loop {
            if self.durable.get() >= seq {
                return Ok(());
            }
            let parked = self.parked.borrow_mut().take();
            if let Some(flight) = parked {
                self.drive(flight).await?;
                continue;
            }
            if !self.in_flight.get() {
                self.in_flight.set(true);
                let flight = self.start();
                self.drive(flight).await?;
                continue;
            }
            let listener = self.changed.listen();
            if self.durable.get() >= seq || self.parked.borrow().is_some() || !self.in_flight.get()
            {
                continue;
            }
            listener.await;
        }
    }

    /// Waits up to `grace` for a sync started by other writes to make write `seq` durable;
    /// true if one did. Starts no sync itself.
    pub(super) async fn covered_within(&self, seq: u64, grace: Duration) -> bool {
        let deadline = crate::wait::deadline(Instant::now(), grace);
        crate::wait::until(&self.changed, deadline, || self.durable.get() >= seq).await
    }

    fn start(&self) -> InFlight {
        // Every write numbered ≤ `covers` has already been applied to sled and its body
        // appended to a body file (writes are synchronous on this thread), so the sync below
        // includes them.
        let covers = self.written.get();
        let db = self.db.borrow().clone();
        let files = Arc::clone(&self.files);
        let bodies = self.body_files.take_dirty();
        let future = Box::pin(smol::unblock(move || {
            let result = match &db {
                Some(db) => files.sync(db, &bodies),
                None => Err(io::Error::other("the database is closed")),
            };
            (result, bodies)
        }));
        InFlight { covers, future }
    }

    async fn drive(&self, flight: InFlight) -> io::Result<()> {
        let covers = flight.covers;
        let mut parker = Parker {
            flush: self,
            flight: Some(flight),
        };
        let (result, bodies) = std::future::poll_fn(|cx| match parker.flight.as_mut() {
            Some(flight) => flight.future.as_mut().poll(cx),
            None => Poll::Ready((
                Err(io::Error::other("sync lost")),
                DirtyBodyFiles::default(),
            )),
        })
        .await;
        if result.is_err() {
            self.body_files.restore_dirty(bodies);
        }
        parker.flight = None;
        self.in_flight.set(false);
        if result.is_ok() && covers > self.durable.get() {
            self.durable.set(covers);
        }
        if result.is_ok() {
            self.body_files.durable_up_to(covers);
        }
        self.changed.notify(usize::MAX);
        result
    }
}

/// If the task driving a sync is cancelled (e.g. a session timed out), the sync keeps running
/// on its thread; park it so the next waiter drives it instead of starting a second one.
struct Parker<'a> {
    flush: &'a GroupFlush,
    flight: Option<InFlight>,
}

impl Drop for Parker<'_> {
    fn drop(&mut self) {
        if let Some(flight) = self.flight.take() {
            *self.flush.parked.borrow_mut() = Some(flight);
            self.flush.changed.notify(usize::MAX);
        }
    }
}
