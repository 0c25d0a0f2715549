//! Opening the store: the sled configuration (its log segment size, cache, flusher), the
//! compaction of an empty queue's database (`compact.rs`), the `bodies/` directory, the counters
//! and clock read back, and the handle-wide operations that belong to no single message:
//! `recover`, a new `Spool`, a plain group flush and the sync statistics. Never reads or writes a
//! message's records (the other `impl Store` files do), except to check that a fresh id is free.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::body_file::BodyFiles;
use super::due::DueIndex;
use super::flush::{GroupFlush, SyncFiles, SyncHook};
use super::{
    compact, key, private, record, recover, Damage, Database, Inner, JournalPass, QueueId,
    RecoveryReport, Spool, Store, StoreError, StoreOptions, Usage,
};

// Why sled values stay small (bodies live in body files, `body_file.rs`; the largest value is
// a recipient record with a `MAX_REPLY` reply): sled writes a page that does not fit a quarter
// of its log segment (`logger.rs` `reserve_inner`, `MINIMUM_ITEMS_PER_SEGMENT` in
// `constants.rs`) to a `blobs/<lsn>` file that it never fsyncs (`blob_io.rs` `write_blob`), and
// a leaf page holds up to 17 values before it splits (`node.rs` `should_split`). The sync still
// fsyncs any blob that appears (`flush.rs`).

/// Directory of the body files inside the data directory (`body_file.rs`).
pub(super) const BODIES_DIR: &str = "bodies";

/// sled `segment_size` (the size of its log segments) for a new store; sled's default is
/// 512 KiB. sled allocates a fresh segment-sized io buffer (`pagecache/iobuf.rs`
/// `AlignedBuf::new`) for every log segment it rolls to, and under a burst dozens of sealed ones
/// wait for their write at once: the size bounds most of the peak RSS. Half the default keeps
/// the accept rate; a quarter costs about a third of it (`benches/`). Must stay ≥ 4 × the
/// largest page (see above).
pub const SLED_SEGMENT_SIZE: usize = 256 * 1024;

/// How long opening the store waits for another holder of sled's file lock to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// sled refuses to open a database with another `segment_size` than the one it was created
/// with (`config.rs` `verify_config`), so an existing store keeps the one in its `conf` file
/// (`StorageParameters::serialize`: a `segment_size: N` line); new stores get `SLED_SEGMENT_SIZE`.
pub(super) fn sled_segment_size(dir: &Path) -> usize {
    let Ok(conf) = std::fs::read(dir.join("conf")) else {
        return SLED_SEGMENT_SIZE;
    };
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|line| line.strip_prefix("segment_size: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(SLED_SEGMENT_SIZE)
}

/// Removes sled's snapshot files (`snap.*`, `config.rs` `snapshot_path`) from `dir`; how many.
fn remove_snapshots(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        std::fs::File::open(dir)?.sync_all()?;
        log::warn!(
            "store: sled's snapshot does not match its log in {} (a damaged or missing db): \
             removed {removed} snapshot files; sled reads its whole log instead",
            dir.display()
        );
    }
    Ok(removed)
}

/// Checks sled's `conf` (its settings, `StorageParameters::serialize` in `config.rs`, then a
/// little-endian CRC-32) and rewrites it when damaged: sled only warns on a bad CRC and then
/// fails on the damaged text with a misleading "created using a sled version earlier than
/// 0.29". The settings are few and fixed (compression off, format 0.34); the segment size is
/// the damaged file's when its line still reads as a power of two, else `SLED_SEGMENT_SIZE`.
/// The damaged file is kept as `conf.damaged`. `true`: it was rewritten.
fn repair_conf(dir: &Path) -> std::io::Result<bool> {
    let path = dir.join("conf");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(false); // none yet: sled writes it
    };
    if let Some((text, crc)) = bytes.split_last_chunk::<4>() {
        if crc32fast::hash(text).to_le_bytes() == *crc {
            return Ok(false);
        }
    }
    let segment = Some(sled_segment_size(dir))
        .filter(|n| n.is_power_of_two() && (64 << 10..=16 << 20).contains(n))
        .unwrap_or(SLED_SEGMENT_SIZE);
    let mut conf =
        format!("segment_size: {segment}\nuse_compression: false\nversion: 0.34\n").into_bytes();
    conf.extend_from_slice(&crc32fast::hash(&conf).to_le_bytes());
    std::fs::rename(&path, dir.join("conf.damaged"))?;
    std::fs::write(&path, conf)?;
    std::fs::File::open(&path)?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    log::error!(
        "store: {} (sled's settings) was damaged: rewritten with segment_size {segment}, the \
         damaged copy kept as conf.damaged",
        path.display()
    );
    Ok(true)
}

/// The start check: the data directory and everything in it private, tightened (and said so
/// when other users could reach what was loose; not when sled has just created its files, or
/// created new ones inside the private directory, under a loose umask).
fn check_private(dir: &Path, fresh: bool) -> Result<(), StoreError> {
    let done = private::tighten(dir)?;
    let loosened = done.dirs > 0 || done.files > 0;
    if !fresh && loosened && done.reachable {
        log::warn!(
            "store: data_dir={} was open to other users: set {} directories to 0700 and {} files \
             to 0600",
            dir.display(),
            done.dirs,
            done.files
        );
    }
    Ok(())
}

/// `config.open()`, retried (bounded by `LOCK_WAIT`) while sled reports its file lock taken: a
/// store that was just dropped, or a daemon still exiting, holds it until its last sync is done.
/// A second daemon really running on the same directory still fails, after the wait.
pub(super) fn open_db(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut logged = false;
    loop {
        match config.open() {
            // sled 0.34.7 `config.rs`: "could not acquire lock on {path}: {error}".
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                if !logged {
                    log::warn!("store: {e}; waiting up to {LOCK_WAIT:?} for it");
                    logged = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Store {
    /// A recovered store in `dir` with a 1 MiB cache, no background flush and a 1 GiB cap: what
    /// the other modules' tests run against.
    #[cfg(test)]
    pub(crate) fn open_for_tests(dir: &Path) -> Self {
        let options = StoreOptions {
            cache_bytes: 1 << 20,
            flush_every_ms: None,
            max_bytes: 1 << 30,
        };
        let store = Self::open(dir, options).unwrap();
        store.recover().unwrap();
        store
    }

    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        // Before sled: the files it creates are unreachable to others from the first moment.
        private::create_data_dir(dir)?;
        let compacting = compact::lock(dir);
        compact::resolve(dir)?;
        let fresh = !dir.join("conf").exists();
        repair_conf(dir)?;
        let segment_size = sled_segment_size(dir);
        let config = sled::Config::new()
            .path(dir)
            .segment_size(segment_size)
            .cache_capacity(options.cache_bytes)
            .flush_every_ms(options.flush_every_ms)
            .use_compression(false)
            // LowSpace (sled's default) favours small files on flash over write throughput.
            .mode(sled::Mode::LowSpace);
        let db = match open_db(&config) {
            // A snapshot of sled's page table pointing past what is left of its log (a `db`
            // deleted, truncated or damaged): sled refuses to open. Snapshots only spare sled
            // reading its whole log, so without them it opens from the log alone.
            Err(sled::Error::Corruption { .. }) if remove_snapshots(dir)? > 0 => open_db(&config),
            other => other,
        }
        .map_err(|e| match e {
            sled::Error::Io(e) => StoreError::Io(e),
            e => StoreError::Sled(format!(
                "cannot open the database in {}: {e}. If it is damaged, move {0}/db and {0}/conf \
                 aside and start again: the queue is rebuilt from the body files",
                dir.display()
            )),
        })?;
        let reopen = compact::Reopen {
            config,
            segment_size,
            open_db,
        };
        let db = compact::compact_if_empty(dir, db, &reopen)?;
        drop(compacting);
        let corrupt = db.open_tree("corrupt")?;
        // Created before `SyncFiles::open`, whose directory fsync makes the entry durable.
        let bodies = dir.join(BODIES_DIR);
        std::fs::create_dir_all(&bodies)?;
        check_private(dir, fresh)?;
        let files = Arc::new(SyncFiles::open(dir).map_err(StoreError::Io)?);
        let usage = match db.get(key::USAGE)? {
            Some(raw) => record::decode_usage(&raw).unwrap_or_else(|e| {
                // `recover` recounts; until then count from zero rather than refuse to start.
                log::warn!("store: key=meta/usage undecodable ({e}); recount at recover");
                Usage::default()
            }),
            None => Usage::default(),
        };
        let clock = match db.get(key::CLOCK)? {
            Some(raw) => record::decode_clock(&raw).unwrap_or_else(|e| {
                log::warn!("store: key=meta/clock undecodable ({e}); recover rebuilds it");
                0
            }),
            None => 0,
        };
        let flush = GroupFlush::new(db.clone(), files, BodyFiles::new(bodies));
        let inner = Inner {
            db: RefCell::new(Some(Database {
                db,
                corrupt,
                reopen,
                compact_above: compact::COMPACT_ABOVE,
            })),
            usage: Cell::new(usage),
            clock: Cell::new(clock),
            max_bytes: options.max_bytes,
            flush,
            lazy_removal: Cell::new(0),
            due: DueIndex::default(),
            damage: Cell::new(Damage::default()),
            id_floor: Cell::new(0),
            pass: std::cell::RefCell::new(None),
            reopen_wanted: Cell::new(false),
        };
        Ok(Self {
            inner: Rc::new(inner),
        })
    }

    /// Sweeps spools never committed, quarantines undecodable records, rebuilds the counters and
    /// the schedule and the `failed/` index from the message records, and rebuilds from the body
    /// file journal what sled lacks. Call once after open. Blocks until all of it is done
    /// (`recover_queue` leaves the journal pass to run behind the open queue).
    pub fn recover(&self) -> Result<RecoveryReport, StoreError> {
        let (report, pass) = self.recover_queue()?;
        match pass {
            Some(pass) => {
                Ok(report.and(futures_lite::future::block_on(self.finish_recovery(pass))?))
            }
            None => Ok(report),
        }
    }

    /// Start-up recovery up to an open queue (`recover.rs`): the message records checked, the
    /// schedule, counters and indexes rebuilt. Returns the pass over the body file journal still
    /// to run, behind the open queue, with `finish_recovery` (none when it had to run first:
    /// sled lost its database). Call once after open.
    pub fn recover_queue(&self) -> Result<(RecoveryReport, Option<JournalPass>), StoreError> {
        recover::run(self)
    }

    /// Runs the start's pass over the body file journal (`rebuild.rs`) while the queue runs:
    /// rebuilds the messages sled lacks, then deletes the body files no record points into.
    /// Durable on return.
    pub async fn finish_recovery(&self, pass: JournalPass) -> Result<RecoveryReport, StoreError> {
        recover::finish(self, &pass).await
    }

    /// Whether a pass over the body file journal runs (`finish_recovery`, `recover_journal`).
    pub fn journal_pass_running(&self) -> bool {
        self.inner.pass.borrow().is_some()
    }

    /// Rebuilds the messages the body file journal holds and the database lacks (`rebuild.rs`),
    /// while the queue runs (`outpost queue recover`). Durable on return.
    pub async fn recover_journal(&self) -> Result<RecoveryReport, StoreError> {
        let pass = JournalPass::plan(self, false)?;
        recover::finish(self, &pass).await
    }

    /// Adds what a recovery found to the damage counters (`Damage`).
    pub(super) fn note_damage(&self, report: &RecoveryReport) {
        let mut damage = self.inner.damage.get();
        damage.recovered += report.recovered;
        damage.quarantined += report.quarantined + report.quarantined_files;
        damage.lost += report.lost;
        damage.bad_records += report.bad_records;
        self.inner.damage.set(damage);
    }

    /// The damage met since the store opened.
    pub fn damage(&self) -> Damage {
        self.inner.damage.get()
    }

    /// A new message body. Nothing goes into sled until `commit`: a spool a crash interrupts
    /// leaves only body bytes in a body file, which go with the body file (`recover` deletes
    /// body files no record points into).
    pub fn spool(&self) -> Result<Spool, StoreError> {
        let id = self.fresh_id()?;
        Ok(Spool {
            store: self.clone(),
            id,
            extents: Vec::new(),
            bytes: 0,
            body_files: Vec::new(),
            finished: false,
        })
    }

    /// sled's `generate_id` (`db.rs`) is monotonic and, after a crash, restarts 2 ×
    /// `idgen_persist_interval` past the last persisted value; should an id still be in use
    /// (state lost by a power cut between sled's own syncs), take the next one. Only `msg/`
    /// can hold one: a spool writes nothing to sled, and `recover` sweeps legacy `spool/`
    /// markers before any spool opens.
    pub(super) fn fresh_id(&self) -> Result<QueueId, StoreError> {
        for _ in 0..16 {
            let id = QueueId(self.fresh_number()?);
            if !self.inner.db()?.contains_key(key::msg(id))? {
                return Ok(id);
            }
            log::warn!("store: queue_id={id} generated twice; skipped");
        }
        Err(StoreError::Sled(
            "generate_id keeps returning ids in use".into(),
        ))
    }

    /// sled's `generate_id`, raised past every id and body file number the body file journal
    /// holds (`id_floor`): after a database lost its counter, a new message or body file must
    /// not take the number of one the journal still names.
    pub(super) fn fresh_number(&self) -> Result<u64, sled::Error> {
        Ok(self
            .inner
            .db()?
            .generate_id()?
            .saturating_add(self.inner.id_floor.get()))
    }

    /// Makes every write so far durable (group flush): `save_clock` at shutdown, for example.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let seq = self.inner.flush.note_write();
        self.inner.flush.wait(seq).await.map_err(StoreError::Io)
    }

    /// Completed syncs (sled flush + `fdatasync`) so far: the durable epoch.
    #[doc(hidden)]
    pub fn durable_epoch(&self) -> u64 {
        self.inner
            .flush
            .files()
            .stats()
            .syncs
            .load(Ordering::SeqCst)
    }

    /// The most syncs ever seen running at once (the group commit keeps it at 1).
    #[doc(hidden)]
    pub fn max_concurrent_syncs(&self) -> u64 {
        self.inner
            .flush
            .files()
            .stats()
            .max_running
            .load(Ordering::SeqCst)
    }

    /// Test hook: runs on the sync thread right after each completed `fdatasync`.
    #[doc(hidden)]
    pub fn set_sync_hook(&self, hook: Option<SyncHook>) {
        self.inner.flush.files().set_hook(hook);
    }
}
