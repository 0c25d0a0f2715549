//! Mail refused on the way in, counted by reason for the metrics
//! (`outpost_rejected_total{reason}`). Counts only; the refusal itself and its log line belong
//! to the caller.

use std::cell::Cell;

/// Why mail was refused at the door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// `max_connections` sessions were open: greeted 421 and closed.
    Connections,
    /// The disk of `data_dir` is nearly full: 452 at DATA.
    Disk,
    /// `queue.max_bytes` reached: 452 at the final dot.
    QueueFull,
    /// The sender is over its `[rate_limit]`: 450 at MAIL.
    RateLimit,
}

impl Reject {
    pub const ALL: [Self; 4] = [
        Self::Connections,
        Self::Disk,
        Self::QueueFull,
        Self::RateLimit,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Disk => "disk",
            Self::QueueFull => "queue_full",
            Self::RateLimit => "rate_limit",
        }
    }

    fn slot(self) -> usize {
        match self {
            Self::Connections => 0,
            Self::Disk => 1,
            Self::QueueFull => 2,
            Self::RateLimit => 3,
        }
    }
}

/// Refusals since start, per `Reject`.
#[derive(Debug, Default)]
pub(super) struct Rejects {
    counts: [Cell<u64>; 4],
}

impl Rejects {
    pub(super) fn count(&self, reason: Reject) {
        let cell = &self.counts[reason.slot()];
        cell.set(cell.get().saturating_add(1));
    }

    pub(super) fn get(&self, reason: Reject) -> u64 {
        self.counts[reason.slot()].get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_reason() {
        let rejects = Rejects::default();
        rejects.count(Reject::Disk);
        rejects.count(Reject::Disk);
        rejects.count(Reject::RateLimit);
        let counts: Vec<u64> = Reject::ALL.iter().map(|r| rejects.get(*r)).collect();
        assert_eq!(counts, [0, 2, 0, 1]);
        let labels: Vec<&str> = Reject::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, ["connections", "disk", "queue_full", "rate_limit"]);
    }
}
