//! The journal: the only module that touches sled. A message is a spool of body chunks plus a
//! committed envelope with one record per recipient; a commit is durable (flushed and
//! fdatasync'ed, shared among concurrent sessions) before it returns.

use std::fmt;
use std::path::Path;

use crate::clock::QueueTime;

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RcptState {
    Pending,
    Deferred,
    Delivered,
    Failed,
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

/// Handle to the open store; cheap to clone (shared inside one thread).
#[derive(Clone)]
pub struct Store {}

/// An uncommitted message body being written.
pub struct Spool {}

impl Store {
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        let _ = (dir, options);
        todo!()
    }
    /// Sweeps spools never committed, quarantines undecodable records. Call once after open.
    pub fn recover(&self) -> Result<RecoveryReport, StoreError> {
        todo!()
    }
    /// The persisted queue-clock base to build a `QueueClock` from.
    pub fn clock_base(&self) -> QueueTime {
        todo!()
    }
    /// Persists the queue clock (called periodically and at shutdown).
    pub fn save_clock(&self, now: QueueTime) -> Result<(), StoreError> {
        let _ = now;
        todo!()
    }
    pub fn spool(&self) -> Result<Spool, StoreError> {
        todo!()
    }
    pub fn usage(&self) -> Usage {
        todo!()
    }
    /// Up to `limit` messages with pending/deferred recipients, not held, whose `next_attempt`
    /// is ≤ `now`, oldest first.
    pub fn due(&self, now: QueueTime, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        let _ = (now, limit);
        todo!()
    }
    /// Earliest `next_attempt` among deliverable messages.
    pub fn next_due(&self) -> Option<QueueTime> {
        todo!()
    }
    /// Reads the body in stored chunk order.
    pub fn body_chunks(
        &self,
        id: QueueId,
    ) -> Result<impl Iterator<Item = Result<Vec<u8>, StoreError>>, StoreError> {
        let _ = id;
        Ok(std::iter::empty())
    }
    /// Records one attempt's per-recipient results; `attempts` and `next_attempt` for what
    /// stays queued. A message whose recipients are all delivered is removed; one with failed
    /// recipients and none pending stays listed as failed. Durable on return.
    pub async fn record(
        &self,
        id: QueueId,
        results: &[(usize, RcptState, Option<String>)],
        attempts: u32,
        next_attempt: QueueTime,
    ) -> Result<(), StoreError> {
        let _ = (id, results, attempts, next_attempt);
        todo!()
    }
    pub fn get(&self, id: QueueId) -> Result<QueuedMessage, StoreError> {
        let _ = id;
        todo!()
    }
    pub fn list(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        todo!()
    }
    pub async fn delete(&self, id: QueueId) -> Result<(), StoreError> {
        let _ = id;
        todo!()
    }
    /// Moves every deferred message's `next_attempt` to `now` (link up, `queue flush`).
    pub fn reschedule_all(&self, now: QueueTime) -> Result<(), StoreError> {
        let _ = now;
        todo!()
    }
}

impl Spool {
    pub fn id(&self) -> QueueId {
        todo!()
    }
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let _ = bytes;
        todo!()
    }
    /// Writes envelope and recipient records in one transaction, then a group flush
    /// (`flush_async` + `fdatasync`). Returns only once durable.
    pub async fn commit(
        self,
        info: MessageInfo,
        now: QueueTime,
    ) -> Result<Result<QueueId, QueueFull>, StoreError> {
        let _ = (info, now);
        todo!()
    }
    /// Drops the chunks written so far.
    pub fn abort(self) {}
}
