//! The queue clock: milliseconds of time spent queued, persisted by the store across restarts,
//! immune to wall-clock jumps (RTC-less boards boot in 1970). Pure arithmetic on an `Instant`.

use std::time::Instant;

/// Queue time in milliseconds since the store was created (only time the daemon ran counts).
pub type QueueTime = u64;

/// `now() = base + (Instant::now() - started)`; `base` comes from the store at open.
#[derive(Clone, Copy, Debug)]
pub struct QueueClock {
    base: QueueTime,
    started: Instant,
}

impl QueueClock {
    pub fn new(base: QueueTime) -> Self {
        Self {
            base,
            started: Instant::now(),
        }
    }
    pub fn now(&self) -> QueueTime {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base.saturating_add(elapsed)
    }
}
