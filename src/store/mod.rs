//! The journal: the only module that touches sled and the body files. A message is a body
//! appended to body files in `<dir>/bodies/` (`body_file.rs`) plus a committed envelope with one
//! record per recipient; a commit is durable (bodies and sled's log `fdatasync`ed, shared among
//! concurrent sessions) before it returns.
//!
//! Layout (`key.rs`): one sled tree with `msg/`, `rcpt/`, `part/`, `hist/`, `failed/` and
//! `meta/` keys (plus legacy `spool/` and `due/` keys, which only `recover` reads), written one
//! at a time in an order `recover` can finish (`writes.rs`: sled's atomic batches cost two or
//! three log writes each); a `corrupt` tree holds quarantined records (`recover.rs`). Encodings
//! are versioned and hand-written (`record.rs`, `extent.rs`): a message with one recipient and
//! a body of at most four pieces is a single `msg/` record. The schedule (which message is due
//! when) is an in-memory index derived from the `msg/` records (`due.rs`). Durability is the
//! group flush in `flush.rs`: one sync (the body files written since the last one, then sled
//! flush + `fdatasync` of `<dir>/db`) in flight at a time, shared by every write that landed
//! before it started.
//!
//! The body files are also a second journal (`journal.rs`): every piece framed with a CRC-32,
//! the envelope after a message's last piece, a done record when recipients leave; `rebuild.rs`
//! rebuilds from it what sled lost, and a body file that may still hold mail is moved to
//! `quarantine/`, never deleted.
//!
//! sled never shrinks its `db` file: `compact.rs` rewrites the database into a fresh one when the
//! queue is empty and the file has grown, at open or while the store runs, with a swap a crash
//! cannot leave half done.
//!
//! The `Store` handle's operations, by file: `open.rs` (open, recover, new spools, plain
//! flush), `query.rs` (reads: one message, the list, the due ones, a body), `update.rs`
//! (delivery results, hold/release/delete, removal), `housekeeping.rs` (queue clock, purge,
//! reschedule); `spool.rs` is the body being received and its commit, `index.rs` where a
//! message is indexed, `error.rs` the errors.
//!
//! Never: call `Tree::len` or scan `part/` or `msg/` on a hot path (only `recover`, `list`
//! and `purge_failed`'s bounded index scan read more than one message); run two flushes at
//! once; write a body into sled; unlink a body file before the removal of its last extent is
//! durable, or one that may hold mail no record points to; assume sled's flush alone survives a
//! power cut; send a body piece that failed its checksum.

mod body_file;
mod compact;
mod due;
mod error;
mod extent;
mod flush;
mod housekeeping;
mod index;
mod journal;
mod key;
mod open;
mod private;
mod query;
mod rebuild;
mod record;
mod recover;
mod spool;
mod update;
mod writes;

use std::cell::{Cell, Ref, RefCell};
use std::fmt;
use std::rc::Rc;

pub use self::body_file::BODY_FILE_BYTES;
use self::due::DueIndex;
pub use self::error::StoreError;
use self::extent::Extent;
pub use self::extent::MAX_EXTENT;
use self::flush::GroupFlush;
pub use self::flush::SyncHook;
pub use self::open::SLED_SEGMENT_SIZE;
pub use self::private::create_data_dir;
pub use self::rebuild::JournalPass;
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

/// What `recover` found at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub messages: u64,
    pub swept_spools: u64,
    /// Database records moved to the `corrupt` tree.
    pub quarantined: u64,
    /// Messages the database lacked, rebuilt from the body file journal.
    pub recovered: u64,
    /// Messages the database lacked whose body in the journal is damaged (kept aside).
    pub lost: u64,
    /// Damaged journal records skipped.
    pub bad_records: u64,
    /// Body files moved to `quarantine/`.
    pub quarantined_files: u64,
}

impl RecoveryReport {
    /// This report (the start up to an open queue) with what the journal pass after it found.
    pub fn and(self, pass: Self) -> Self {
        Self {
            messages: pass.messages,
            recovered: self.recovered + pass.recovered,
            lost: self.lost + pass.lost,
            bad_records: self.bad_records + pass.bad_records,
            quarantined_files: self.quarantined_files + pass.quarantined_files,
            ..self
        }
    }
}

/// What damage the store met since it opened, for `status` and the metrics: the start's
/// recovery plus `queue recover` runs and messages quarantined when a body failed its checksum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Damage {
    /// Messages rebuilt from the body file journal.
    pub recovered: u64,
    /// Messages (or body files) kept aside in `quarantine/`, and records moved to `corrupt`.
    pub quarantined: u64,
    /// Messages the journal names whose body is damaged (not queued, kept aside).
    pub lost: u64,
    /// Damaged journal records skipped.
    pub bad_records: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub messages: u64,
    pub bytes: u64,
}

/// Handle to the open store; cheap to clone (shared inside one thread).
#[derive(Clone)]
pub struct Store {
    inner: Rc<Inner>,
}

struct Inner {
    /// The open database (`Inner::db`, `Inner::corrupt`), replaced whole by a live compaction
    /// (`compact.rs`); `None` only after one failed half way, when every call fails until the
    /// next open finishes the swap.
    db: RefCell<Option<Database>>,
    usage: Cell<Usage>,
    clock: Cell<QueueTime>,
    max_bytes: u64,
    flush: GroupFlush,
    /// The write number of the latest removal not waited for (`Durability::Lazy`).
    lazy_removal: Cell<u64>,
    /// Which messages are due when (`due.rs`): built by `recover`.
    due: DueIndex,
    damage: Cell<Damage>,
    /// Added to sled's `generate_id` (`Store::fresh_number`): `meta/idfloor`.
    id_floor: Cell<u64>,
    /// The start's recovery is done: the database is to be reopened (`Store::reopen_if_idle`).
    reopen_wanted: Cell<bool>,
    /// The pass over the body files running, if any (`rebuild.rs`).
    pass: std::cell::RefCell<Option<rebuild::Watch>>,
}

/// The open sled database and its trees.
struct Database {
    /// The default tree holds every live key (see `key.rs`); one tree makes every update one
    /// ordered sequence of writes (`writes.rs`).
    db: sled::Db,
    /// Quarantined records (`recover.rs`).
    corrupt: sled::Tree,
    /// How `db` is opened: what a compaction or a reopen opens it with.
    reopen: compact::Reopen,
    /// A live compaction waits for the `db` file to grow past this many bytes (`compact.rs`).
    compact_above: u64,
}

impl Inner {
    /// The database's default tree. Never hold it across an await: a live compaction swaps it.
    fn db(&self) -> sled::Result<Ref<'_, sled::Db>> {
        self.database(|d| &d.db)
    }

    /// The `corrupt` tree (same rule as `db`).
    fn corrupt(&self) -> sled::Result<Ref<'_, sled::Tree>> {
        self.database(|d| &d.corrupt)
    }

    fn database<T>(&self, part: impl FnOnce(&Database) -> &T) -> sled::Result<Ref<'_, T>> {
        Ref::filter_map(self.db.borrow(), |d| d.as_ref().map(part)).map_err(|_| {
            sled::Error::Io(std::io::Error::other(
                "the database is closed after a failed compaction; restart to finish it",
            ))
        })
    }
}

/// An uncommitted message body being written.
pub struct Spool {
    store: Store,
    id: QueueId,
    /// Where the body went so far, one extent per appended piece: written as `part/` records
    /// at commit (24 bytes per 32 KiB piece of memory until then).
    extents: Vec<Extent>,
    bytes: u64,
    /// Body files appended to, with the extents in each (released if never committed).
    body_files: Vec<(u64, u64)>,
    /// Committed (or already cleaned up): `Drop` has nothing to remove.
    finished: bool,
}

#[cfg(test)]
mod tests;
