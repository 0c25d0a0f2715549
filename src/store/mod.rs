//! The journal: the only module that touches sled and the body files. A message is a body
//! appended to segment files in `<dir>/bodies/` (`segment.rs`) plus a committed envelope with one
//! record per recipient; a commit is durable (bodies and sled's log `fdatasync`ed, shared among
//! concurrent sessions) before it returns.
//!
//! Layout (`key.rs`): one sled tree with `msg/`, `rcpt/`, `part/`, `failed/` and `meta/` keys
//! (and `spool/` and `due/` from older builds), written one at a time in an order `recover` can
//! finish (`writes.rs`: sled's atomic batches cost two or three log writes each); a `corrupt`
//! tree holds quarantined records (`recover.rs`). Encodings are versioned and hand-written
//! (`record.rs`): a message with one recipient and a body of at most four pieces is a single
//! `msg/` record. The schedule (which message is due when) is an in-memory index derived from
//! the `msg/` records (`due.rs`). Durability is the group flush in `flush.rs`:
//! one sync (the body segments written since the last one, then sled flush + `fdatasync` of
//! `<dir>/db`) in flight at a time, shared by every write that landed before it started.
//!
//! Never: call `Tree::len` or scan `part/` or `msg/` on a hot path (only `recover`, `list`
//! and `purge_failed`'s bounded index scan read more than one message); run two flushes at
//! once; write a body into sled; unlink a segment before the removal of its last extent is
//! durable; assume sled's flush alone survives a power cut.

mod due;
mod flush;
mod key;
mod record;
mod recover;
mod segment;
mod spool;
mod writes;

use std::cell::Cell;
use std::fmt;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use self::due::{DueEntry, DueIndex};
pub use self::flush::SyncHook;
use self::flush::{GroupFlush, SyncFiles};
use self::record::{DecodeError, MessageMeta};
use self::segment::{count_extent, Extent, ExtentReader, Segments};
pub use self::segment::{MAX_EXTENT, SEGMENT_BYTES};
use self::writes::Writes;
use crate::clock::QueueTime;
use crate::priority::Priority;

/// A queued message's id: sled's monotonic `generate_id`, shown as 16 upper-case hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl QueueId {
    pub fn parse(text: &str) -> Option<Self> {
        u64::from_str_radix(text, 16).ok().map(Self)
    }
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// sled `cache_capacity` in bytes (sled's default of 1 GiB is never used).
    pub cache_bytes: u64,
    /// sled `flush_every_ms`; `None` disables the background flusher.
    pub flush_every_ms: Option<u64>,
    /// Queue cap: committed body bytes beyond this get `QueueFull`.
    pub max_bytes: u64,
}

/// Envelope as the store keeps it (plain strings: the store does not depend on the parser).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    /// Empty for the null reverse path `<>`.
    pub sender: String,
    pub recipients: Vec<String>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// Wall-clock Unix seconds at receipt (informational only: may be wrong on RTC-less boards).
    pub received_unix: u64,
    /// `[[priority]]`: due messages of a higher priority go first.
    pub priority: Priority,
    /// `[coalesce]`: the key of messages that may share a digest (`coalesce::key`); `None`
    /// when `[coalesce]` was off at commit, or for the null sender.
    pub coalesce: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RcptState {
    Pending,
    Deferred,
    Delivered,
    Failed,
}

impl RcptState {
    /// Still to be tried: pending or deferred.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Deferred)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcptRecord {
    pub address: String,
    pub state: RcptState,
    /// The last reply from the smarthost (or a local reason), for `queue list` and DSNs.
    pub last_reply: Option<String>,
}

/// A message's full queue state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    pub id: QueueId,
    pub info: MessageInfo,
    pub size: u64,
    pub enqueued_at: QueueTime,
    pub attempts: u32,
    pub next_attempt: QueueTime,
    pub held: bool,
    pub recipients: Vec<RcptRecord>,
}

/// One delivery attempt of a message, as `queue show` lists it: when (wall clock, seconds since
/// the epoch) and, per recipient tried, its position in `QueuedMessage::recipients`, the state it
/// was left in and the reply that decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    pub at_unix: u64,
    pub results: Vec<(u32, RcptState, String)>,
}

/// How many of a message's most recent attempts the store keeps (older ones are dropped in the
/// batch that writes a new one).
pub const KEPT_ATTEMPTS: u32 = 10;

/// The store's verdict at commit when `max_bytes` would be exceeded: expected, not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull;

#[derive(Debug)]
pub enum StoreError {
    Sled(String),
    Io(std::io::Error),
    Corrupt(String),
    NotFound(QueueId),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sled(e) => write!(f, "store: {e}"),
            Self::Io(e) => write!(f, "store I/O: {e}"),
            Self::Corrupt(e) => write!(f, "store record corrupt: {e}"),
            Self::NotFound(id) => write!(f, "no message {id} in the queue"),
        }
    }
}

impl std::error::Error for StoreError {}

/// What `recover` found at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub messages: u64,
    pub swept_spools: u64,
    pub quarantined: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub messages: u64,
    pub bytes: u64,
}

// Why sled values stay small (bodies live in segment files, `segment.rs`; the largest value is
// a recipient record with a `MAX_REPLY` reply): sled writes a page that does not fit a quarter
// of its log segment (`logger.rs` `reserve_inner`, `MINIMUM_ITEMS_PER_SEGMENT` in
// `constants.rs`) to a `blobs/<lsn>` file that it never fsyncs (`blob_io.rs` `write_blob`), and
// a leaf page holds up to 17 values before it splits (`node.rs` `should_split`). The sync still
// fsyncs any blob that appears (`flush.rs`).

/// Directory of the body segments inside the data directory (`segment.rs`).
const BODIES_DIR: &str = "bodies";

/// sled `segment_size` for a new store (sled's default is 512 KiB). sled allocates a fresh
/// segment-sized io buffer (`pagecache/iobuf.rs` `AlignedBuf::new`) for every segment it
/// rolls to, and under a burst dozens of sealed ones wait for their write at once, so the
/// buffer size multiplies into the peak RSS under load. Half sled's default cuts that cost
/// without slowing acceptance; much smaller segments (and so smaller pages) cost accept rate.
/// Must stay ≥ 4 × the largest page (see above).
pub const SEGMENT_SIZE: usize = 256 * 1024;

/// How long `settle_removals` waits for a commit's sync to carry the removals of a delivery
/// pass before it syncs them alone. While mail arrives, commits sync every few milliseconds and
/// the removals ride along: a sync of their own rewrote the last page of sled's log for nothing
/// (4 KiB per pass, a pass per message with one session). The cost: a crash within this window
/// after a delivery may deliver those messages again (never lose them).
const SETTLE_GRACE: Duration = Duration::from_millis(200);

/// The longest `last_reply` the store keeps (cut at a char boundary): keeps every recipient
/// record, and so every leaf of them, far below the blob threshold whatever the smarthost says.
const MAX_REPLY: usize = 1024;

/// sled refuses to open a database with another `segment_size` than the one it was created
/// with (`config.rs` `verify_config`), so an existing store keeps the one in its `conf` file
/// (`StorageParameters::serialize`: a `segment_size: N` line); new stores get `SEGMENT_SIZE`.
fn segment_size(dir: &Path) -> usize {
    let Ok(conf) = std::fs::read(dir.join("conf")) else {
        return SEGMENT_SIZE;
    };
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|line| line.strip_prefix("segment_size: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(SEGMENT_SIZE)
}

/// `reply` cut to at most `MAX_REPLY` bytes.
fn clip_reply(reply: Option<&String>) -> Option<String> {
    reply.map(|text| {
        let mut end = text.len().min(MAX_REPLY);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    })
}

/// Handle to the open store; cheap to clone (shared inside one thread).
#[derive(Clone)]
pub struct Store {
    inner: Rc<Inner>,
}

struct Inner {
    /// The default tree holds every live key (see `key.rs`); one tree makes every update one
    /// ordered sequence of writes (`writes.rs`).
    db: sled::Db,
    corrupt: sled::Tree,
    usage: Cell<Usage>,
    clock: Cell<QueueTime>,
    max_bytes: u64,
    flush: GroupFlush,
    /// The write number of the latest removal not waited for (`Durability::Lazy`).
    lazy_removal: Cell<u64>,
    /// Which messages are due when (`due.rs`): built by `recover`.
    due: DueIndex,
}

/// An uncommitted message body being written.
pub struct Spool {
    store: Store,
    id: QueueId,
    /// Where the body went so far, one extent per appended piece: written as `part/` records
    /// at commit (24 bytes per 32 KiB piece of memory until then).
    extents: Vec<Extent>,
    bytes: u64,
    /// Body segments appended to, with the extents in each (released if never committed).
    segments: Vec<(u64, u64)>,
    /// Committed (or already cleaned up): `Drop` has nothing to remove.
    finished: bool,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(e) => Self::Io(e),
            other => Self::Sled(other.to_string()),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<DecodeError> for StoreError {
    fn from(e: DecodeError) -> Self {
        Self::Corrupt(e.to_string())
    }
}

/// How long opening the store waits for another holder of sled's file lock to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `config.open()`, retried (bounded by `LOCK_WAIT`) while sled reports its file lock taken: a
/// store that was just dropped, or a daemon still exiting, holds it until its last sync is done.
/// A second daemon really running on the same directory still fails, after the wait.
fn open_db(config: &sled::Config) -> sled::Result<sled::Db> {
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
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .segment_size(segment_size(dir))
            .cache_capacity(options.cache_bytes)
            .flush_every_ms(options.flush_every_ms)
            .use_compression(false)
            // LowSpace (sled's default) favours small files on flash over write throughput.
            .mode(sled::Mode::LowSpace);
        let db = open_db(&config)?;
        let corrupt = db.open_tree("corrupt")?;
        // Created before `SyncFiles::open`, whose directory fsync makes the entry durable.
        let bodies = dir.join(BODIES_DIR);
        std::fs::create_dir_all(&bodies)?;
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
        let flush = GroupFlush::new(db.clone(), files, Segments::new(bodies));
        let inner = Inner {
            db,
            corrupt,
            usage: Cell::new(usage),
            clock: Cell::new(clock),
            max_bytes: options.max_bytes,
            flush,
            lazy_removal: Cell::new(0),
            due: DueIndex::default(),
        };
        Ok(Self {
            inner: Rc::new(inner),
        })
    }

    /// Sweeps spools never committed, quarantines undecodable records, rebuilds the counters and
    /// the schedule and the `failed/` index from the message records. Call once after open.
    pub fn recover(&self) -> Result<RecoveryReport, StoreError> {
        recover::run(self)
    }

    /// The persisted queue-clock base to build a `QueueClock` from.
    pub fn clock_base(&self) -> QueueTime {
        self.inner.clock.get()
    }

    /// Persists the queue clock (called periodically and at shutdown). Never moves it back.
    /// Durable with the next group flush (any commit, `flush`), sled's periodic `sync_all`, or
    /// when the last handle is dropped (sled's `Log::drop` flushes and `sync_all`s,
    /// `pagecache/logger.rs`).
    pub fn save_clock(&self, now: QueueTime) -> Result<(), StoreError> {
        let now = now.max(self.inner.clock.get());
        self.inner
            .db
            .insert(key::CLOCK, record::encode_clock(now))?;
        self.inner.clock.set(now);
        Ok(())
    }

    /// A new message body. Nothing goes into sled until `commit`: a spool a crash interrupts
    /// leaves only body bytes in a segment, which go with the segment (`recover` deletes
    /// segments no record points into).
    pub fn spool(&self) -> Result<Spool, StoreError> {
        let id = self.fresh_id()?;
        Ok(Spool {
            store: self.clone(),
            id,
            extents: Vec::new(),
            bytes: 0,
            segments: Vec::new(),
            finished: false,
        })
    }

    /// sled's `generate_id` (`db.rs`) is monotonic and, after a crash, restarts 2 ×
    /// `idgen_persist_interval` past the last persisted value; should an id still be in use
    /// (state lost by a power cut between sled's own syncs), take the next one. Only `msg/`
    /// can hold one: a spool writes nothing to sled, and `recover` swept older builds' `spool/`
    /// markers before any spool opens.
    fn fresh_id(&self) -> Result<QueueId, StoreError> {
        for _ in 0..16 {
            let id = QueueId(self.inner.db.generate_id()?);
            if !self.inner.db.contains_key(key::msg(id))? {
                return Ok(id);
            }
            log::warn!("store: queue_id={id} generated twice; skipped");
        }
        Err(StoreError::Sled(
            "generate_id keeps returning ids in use".into(),
        ))
    }

    /// Makes every write so far durable (group flush): `save_clock` at shutdown, for example.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let seq = self.inner.flush.note_write();
        self.inner.flush.wait(seq).await.map_err(StoreError::Io)
    }

    /// Returns once every removal `record` did not wait for is durable: at once when the syncs
    /// since have covered them (no sync of its own for a pass that removed nothing), else as
    /// soon as a commit's sync covers them, and after `SETTLE_GRACE` with a sync of its own.
    pub async fn settle_removals(&self) -> Result<(), StoreError> {
        let seq = self.inner.lazy_removal.get();
        if self.inner.flush.covered_within(seq, SETTLE_GRACE).await {
            return Ok(());
        }
        self.inner.flush.wait(seq).await.map_err(StoreError::Io)
    }

    pub fn usage(&self) -> Usage {
        self.inner.usage.get()
    }

    /// Up to `limit` messages with pending/deferred recipients, not held, whose `next_attempt`
    /// is ≤ `now`: the most urgent priority first, oldest first within a priority. Reads only
    /// the index ranges up to `now`.
    pub fn due(&self, now: QueueTime, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut out = Vec::new();
        for priority in Priority::ALL {
            self.due_of(priority, now, limit, &mut out)?;
        }
        Ok(out)
    }

    fn due_of(
        &self,
        priority: Priority,
        now: QueueTime,
        limit: usize,
        out: &mut Vec<QueuedMessage>,
    ) -> Result<(), StoreError> {
        let mut stale = Vec::new();
        let mut failure = None;
        self.inner.due.each_due(priority, now, |entry| {
            let (_, _, id) = entry;
            if out.len() >= limit {
                return false;
            }
            match self.get(id) {
                Ok(message) => out.push(message),
                Err(StoreError::NotFound(_)) => stale.push(entry),
                Err(StoreError::Corrupt(e)) => {
                    log::error!("store: queue_id={id} unreadable, skipped: {e}");
                }
                Err(e) => {
                    failure = Some(e);
                    return false;
                }
            }
            true
        });
        // Only after a removal failed between its `msg/` and its schedule change (the store
        // then stops): kept as a repair.
        for entry in stale {
            log::warn!("store: queue_id={} stale due entry removed", entry.2);
            self.inner.due.remove(&entry);
        }
        failure.map_or(Ok(()), Err)
    }

    /// Earliest `next_attempt` among deliverable messages.
    pub fn next_due(&self) -> Option<QueueTime> {
        self.inner.due.earliest()
    }

    /// Reads the body in order, one appended piece (≤ `MAX_EXTENT`) at a time, from the
    /// extents in `msg/` or the `part/` records. A body stored by an older build as sled values
    /// (`body/` keys) reads the same way.
    pub fn body_chunks(
        &self,
        id: QueueId,
    ) -> Result<impl Iterator<Item = Result<Vec<u8>, StoreError>>, StoreError> {
        let meta = self.meta(id)?;
        // With the extents in `msg/` there are no `part/` records or `body/` keys to look for.
        let listed = meta.extents.is_empty();
        let scan = |prefix: Vec<u8>| {
            listed
                .then(|| self.inner.db.scan_prefix(prefix).values())
                .into_iter()
                .flatten()
        };
        let inline = scan(key::body_prefix(id));
        let inline = inline.map(|chunk| chunk.map(|c| c.to_vec()).map_err(StoreError::from));
        let parts = scan(key::part_prefix(id)).map(move |raw| {
            Extent::decode(&raw?)
                .map_err(|e| StoreError::Corrupt(format!("queue_id={id} key=part: {e}")))
        });
        let mut reader = ExtentReader::new(self.inner.flush.segments().dir().to_path_buf());
        let pieces = meta.extents.into_iter().map(Ok).chain(parts);
        let pieces = pieces.map(move |extent: Result<Extent, StoreError>| {
            let extent = extent?;
            reader.read(&extent).map_err(|e| {
                StoreError::Corrupt(format!(
                    "queue_id={id} body segment {:016X} at {}+{}: {e}",
                    extent.seg, extent.offset, extent.len
                ))
            })
        });
        Ok(inline.chain(pieces))
    }

    /// Records one attempt's per-recipient results (`idx` is the position in
    /// `QueuedMessage::recipients`), made at `at_unix` (wall clock, for the attempt history);
    /// `attempts` and `next_attempt` for what stays queued. A message whose recipients are all
    /// delivered is removed; one with failed recipients and none pending stays listed as
    /// failed, is never due again, and its retention starts at `next_attempt` (pass `now` then;
    /// see `failed_at`, `purge_failed`). Durable on return, except the removal of a message
    /// delivered to every recipient: that one is made durable by the next sync (any commit,
    /// `flush`, which the forwarder calls after each pass), so the forwarder does not wait for
    /// an `fdatasync` per message. Should the process die before, the message is delivered
    /// again after the restart (at least once, as with any crash between the smarthost's 250
    /// and the removal); Postfix does not sync its unlink of a delivered queue file either.
    pub async fn record(
        &self,
        id: QueueId,
        results: &[(usize, RcptState, Option<String>)],
        at_unix: u64,
        attempts: u32,
        next_attempt: QueueTime,
    ) -> Result<(), StoreError> {
        let mut meta = self.meta(id)?;
        let mut recipients = self.recipients(id, &meta)?;
        let mut batch = Writes::default();
        let mut attempt = AttemptRecord {
            at_unix,
            results: Vec::with_capacity(results.len()),
        };
        for (idx, state, reply) in results {
            let Some((k, rcpt)) = recipients.get_mut(*idx) else {
                log::warn!("store: queue_id={id} no recipient #{idx}; result ignored");
                continue;
            };
            rcpt.state = *state;
            rcpt.last_reply = clip_reply(reply.as_ref());
            match k {
                Some(k) => batch.insert(k.clone(), record::encode_rcpt(rcpt)),
                // Inline: written with `msg/` below.
                None => meta.rcpt = Some(rcpt.clone()),
            }
            let reply = rcpt.last_reply.clone().unwrap_or_default();
            attempt
                .results
                .push((u32::try_from(*idx).unwrap_or(u32::MAX), *state, reply));
        }
        let open = recipients.iter().any(|(_, r)| r.state.is_open());
        let failed = recipients.iter().any(|(_, r)| r.state == RcptState::Failed);
        let before = meta.clone();
        unindex(&mut batch, id, &meta);
        meta.attempts = attempts;
        meta.next_attempt = next_attempt;
        if open || failed {
            meta.failed_at = if open {
                None
            } else {
                meta.failed_at.or(Some(next_attempt))
            };
            index(&mut batch, id, &meta);
            batch.insert(key::msg(id), meta.encode());
            // After `msg/`: the history is informational; a crash before it loses one entry.
            if !attempt.results.is_empty() {
                self.append_attempt(&mut batch, id, &attempt)?;
            }
            self.apply(batch).await
        } else {
            log::debug!("store: queue_id={id} all recipients delivered; removed");
            // The recipient updates are moot: the removal starts with `msg/` (`writes.rs`).
            let mut batch = Writes::default();
            unindex(&mut batch, id, &before);
            self.remove_message(batch, id, &before, Durability::Lazy)
                .await
        }
    }

    /// The message's most recent attempts (at most `KEPT_ATTEMPTS`), oldest first. An
    /// unreadable entry is logged and skipped: history is informational.
    pub fn history(&self, id: QueueId) -> Result<Vec<AttemptRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.db.scan_prefix(key::hist_prefix(id)) {
            let (k, raw) = entry?;
            match record::decode_attempt(&raw) {
                Ok(attempt) => out.push(attempt),
                Err(e) => log::warn!(
                    "store: queue_id={id} attempt record {:?} unreadable: {e}",
                    key::parse_numbered(key::HIST, &k).map(|(_, n)| n)
                ),
            }
        }
        Ok(out)
    }

    /// Adds `attempt` as the message's newest history entry to `batch`, dropping the entry that
    /// falls out of the last `KEPT_ATTEMPTS` (a bounded scan: at most that many keys).
    fn append_attempt(
        &self,
        batch: &mut Writes,
        id: QueueId,
        attempt: &AttemptRecord,
    ) -> Result<(), StoreError> {
        // A forward scan (at most `KEPT_ATTEMPTS` keys): iterating backwards would link sled's
        // 1 MiB `MAX_KEY` constant (`iter.rs`, used for reverse scans only) into the binary.
        let mut last = None;
        for k in self.inner.db.scan_prefix(key::hist_prefix(id)).keys() {
            last = key::parse_numbered(key::HIST, &k?).map(|(_, n)| n).or(last);
        }
        let n = last.map_or(0, |n| n.saturating_add(1));
        batch.insert(key::hist(id, n), record::encode_attempt(attempt));
        if let Some(old) = n.checked_sub(KEPT_ATTEMPTS) {
            batch.remove(key::hist(id, old));
        }
        Ok(())
    }

    pub fn get(&self, id: QueueId) -> Result<QueuedMessage, StoreError> {
        let meta = self.meta(id)?;
        let recipients = self.recipients(id, &meta)?;
        let recipients = recipients.into_iter().map(|(_, r)| r).collect();
        Ok(assemble(id, meta, recipients))
    }

    /// When a message without pending recipients became failed (`None` while deliverable).
    pub fn failed_at(&self, id: QueueId) -> Result<Option<QueueTime>, StoreError> {
        Ok(self.meta(id)?.failed_at)
    }

    /// Every message, in id (arrival) order. Unreadable ones are logged and skipped.
    pub fn list(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.db.scan_prefix(key::MSG).keys() {
            let Some(id) = key::parse_id(key::MSG, &entry?) else {
                continue;
            };
            match self.get(id) {
                Ok(message) => out.push(message),
                Err(StoreError::Corrupt(e)) => {
                    log::error!("store: queue_id={id} unreadable, not listed: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Removes a message whatever its state. Durable on return.
    pub async fn delete(&self, id: QueueId) -> Result<(), StoreError> {
        let meta = self.meta(id)?;
        let mut batch = Writes::default();
        unindex(&mut batch, id, &meta);
        self.remove_message(batch, id, &meta, Durability::Wait)
            .await
    }

    /// Keeps a message out of `due` until `release`. Durable on return.
    pub async fn hold(&self, id: QueueId) -> Result<(), StoreError> {
        self.set_held(id, true).await
    }

    /// Makes a held message deliverable again at its old `next_attempt`. Durable on return.
    pub async fn release(&self, id: QueueId) -> Result<(), StoreError> {
        self.set_held(id, false).await
    }

    /// Deletes failed messages whose `failed_at` is before `older_than` (retention); returns
    /// how many. Reads only the `failed/` index range. Durable on return.
    pub async fn purge_failed(&self, older_than: QueueTime) -> Result<u64, StoreError> {
        let range = key::failed(0, QueueId(0))..key::failed(older_than, QueueId(0));
        let mut ids = Vec::new();
        for entry in self.inner.db.range(range).keys() {
            if let Some((_, id)) = key::parse_timed(key::FAILED, &entry?) {
                ids.push(id);
            }
        }
        let mut purged = 0;
        for id in ids {
            match self.delete(id).await {
                Ok(()) => purged += 1,
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(purged)
    }

    /// Makes every deferred message due at once (link up, `queue flush`): its `next_attempt`
    /// becomes the time it was queued, so within each priority the drain goes oldest first. Not
    /// flushed: losing it in a crash only delays a retry.
    pub fn reschedule_all(&self, now: QueueTime) -> Result<(), StoreError> {
        let Some(after) = now.checked_add(1) else {
            return Ok(());
        };
        let mut batch = Writes::default();
        for priority in Priority::ALL {
            self.reschedule_of(priority, now, after, &mut batch)?;
        }
        batch.apply(&self.inner.db, &self.inner.due)?;
        Ok(())
    }

    fn reschedule_of(
        &self,
        priority: Priority,
        now: QueueTime,
        after: QueueTime,
        batch: &mut Writes,
    ) -> Result<(), StoreError> {
        for (_, at, id) in self.inner.due.from(priority, after) {
            let mut meta = match self.meta(id) {
                Ok(meta) => meta,
                Err(StoreError::NotFound(_) | StoreError::Corrupt(_)) => continue,
                Err(e) => return Err(e),
            };
            batch.unschedule((priority, at, id));
            // Due at once, in its place by age: never-tried messages are due since they were
            // queued, so the drain goes oldest first whichever of them were tried before.
            meta.next_attempt = meta.enqueued_at.min(now);
            batch.schedule((priority, meta.next_attempt, id));
            batch.insert(key::msg(id), meta.encode());
        }
        Ok(())
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

    fn meta(&self, id: QueueId) -> Result<MessageMeta, StoreError> {
        let raw = self
            .inner
            .db
            .get(key::msg(id))?
            .ok_or(StoreError::NotFound(id))?;
        MessageMeta::decode(&raw)
            .map_err(|e| StoreError::Corrupt(format!("queue_id={id} key=msg: {e}")))
    }

    /// Recipient records in index order, with their keys; a single recipient kept inline in
    /// `meta` has none (`None`).
    fn recipients(&self, id: QueueId, meta: &MessageMeta) -> Result<Recipients, StoreError> {
        if let Some(rcpt) = &meta.rcpt {
            return Ok(vec![(None, rcpt.clone())]);
        }
        let mut out = Vec::new();
        for entry in self.inner.db.scan_prefix(key::rcpt_prefix(id)) {
            let (k, raw) = entry?;
            let rcpt = record::decode_rcpt(&raw)
                .map_err(|e| StoreError::Corrupt(format!("queue_id={id} key=rcpt: {e}")))?;
            out.push((Some(k.to_vec()), rcpt));
        }
        Ok(out)
    }

    async fn set_held(&self, id: QueueId, held: bool) -> Result<(), StoreError> {
        let mut meta = self.meta(id)?;
        if meta.held == held {
            return Ok(());
        }
        let mut batch = Writes::default();
        unindex(&mut batch, id, &meta);
        meta.held = held;
        index(&mut batch, id, &meta);
        batch.insert(key::msg(id), meta.encode());
        self.apply(batch).await
    }

    /// Deletes every key of a message (`msg/` first, then the index entries already in `rest`,
    /// then the rest: `writes.rs`), updates the counters. With `Durability::Wait`, returns once
    /// the removal is durable; with `Durability::Lazy`, at once (the next sync makes it
    /// durable). Either way the body bytes go only after that sync.
    async fn remove_message(
        &self,
        rest: Writes,
        id: QueueId,
        meta: &MessageMeta,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let mut batch = Writes::default();
        batch.remove(key::msg(id));
        batch.append(rest);
        if meta.rcpt.is_none() {
            for idx in 0..meta.recipients {
                batch.remove(key::rcpt(id, idx));
            }
        }
        let mut segments: Vec<(u64, u64)> = Vec::new();
        for extent in &meta.extents {
            count_extent(&mut segments, extent.seg);
        }
        // With the extents inline there are no `part/` records (nor `body/` keys) to remove.
        let listed = if meta.extents.is_empty() {
            meta.chunks
        } else {
            0
        };
        for chunk in 0..listed {
            batch.remove(key::body(id, chunk)); // an older build's inline chunks
            let k = key::part(id, chunk);
            if let Some(raw) = self.inner.db.get(&k)? {
                if let Ok(extent) = Extent::decode(&raw) {
                    count_extent(&mut segments, extent.seg);
                }
            }
            batch.remove(k);
        }
        for k in self.inner.db.scan_prefix(key::hist_prefix(id)).keys() {
            batch.remove(k?.to_vec());
        }
        let old = self.inner.usage.get();
        let usage = Usage {
            messages: old.messages.saturating_sub(1),
            bytes: old.bytes.saturating_sub(meta.size),
        };
        batch.apply(&self.inner.db, &self.inner.due)?;
        self.inner.usage.set(usage);
        let seq = self.inner.flush.note_write();
        // Only once the removal is durable may the bytes go (see `segment.rs`).
        for (seg, n) in segments {
            self.inner.flush.segments().release_after(seq, seg, n);
        }
        match durability {
            Durability::Wait => self.inner.flush.wait(seq).await.map_err(StoreError::Io),
            Durability::Lazy => {
                self.inner.lazy_removal.set(seq);
                Ok(())
            }
        }
    }

    /// Applies `batch` in order, then waits for the group flush.
    async fn apply(&self, batch: Writes) -> Result<(), StoreError> {
        batch.apply(&self.inner.db, &self.inner.due)?;
        let seq = self.inner.flush.note_write();
        self.inner.flush.wait(seq).await.map_err(StoreError::Io)
    }
}

/// A message's recipient records in index order, each with its `rcpt/` key (`None`: inline in
/// `msg/`).
type Recipients = Vec<(Option<Vec<u8>>, RcptRecord)>;

/// Whether a removal waits for its sync.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    Wait,
    Lazy,
}

/// Removes the index entry `meta` implies (due, failed, or none when held).
fn unindex(batch: &mut Writes, id: QueueId, meta: &MessageMeta) {
    match index_of(id, meta) {
        Some(Index::Failed(k)) => batch.remove(k),
        Some(Index::Due(entry)) => batch.unschedule(entry),
        None => {}
    }
}

fn index(batch: &mut Writes, id: QueueId, meta: &MessageMeta) {
    match index_of(id, meta) {
        Some(Index::Failed(k)) => batch.insert(k, Vec::new()),
        Some(Index::Due(entry)) => batch.schedule(entry),
        None => {}
    }
}

/// Where a message is indexed: under a `failed/` key in sled, or in the in-memory schedule.
enum Index {
    Failed(Vec<u8>),
    Due(DueEntry),
}

/// The index entry a message belongs under, if any (held ones have none).
fn index_of(id: QueueId, meta: &MessageMeta) -> Option<Index> {
    match meta.failed_at {
        Some(at) => Some(Index::Failed(key::failed(at, id))),
        None if meta.held => None,
        None => Some(Index::Due((meta.priority, meta.next_attempt, id))),
    }
}

fn assemble(id: QueueId, meta: MessageMeta, recipients: Vec<RcptRecord>) -> QueuedMessage {
    QueuedMessage {
        id,
        info: MessageInfo {
            sender: meta.sender,
            recipients: recipients.iter().map(|r| r.address.clone()).collect(),
            eight_bit: meta.eight_bit,
            smtputf8: meta.smtputf8,
            received_unix: meta.received_unix,
            priority: meta.priority,
            coalesce: meta.coalesce,
        },
        size: meta.size,
        enqueued_at: meta.enqueued_at,
        attempts: meta.attempts,
        next_attempt: meta.next_attempt,
        held: meta.held,
        recipients,
    }
}

#[cfg(test)]
mod tests;
