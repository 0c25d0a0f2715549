//! The largest value each duration and size key accepts, so that every configuration
//! `check-config` accepts is one the daemon can run on: no deadline that overflows an
//! `Instant`, no size that overflows a counter or sled's cache. Pure tables; it never reads a
//! file and never decides defaults.

use std::time::Duration;

const DAY: u64 = 24 * 3600;
const GIB: u64 = 1 << 30;

/// Any duration key not listed below: one year.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * DAY);
/// `[timeouts]`: one day (a session or a smarthost reply waited on for longer is gone).
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(DAY);
/// `queue.retry_min` and `queue.retry_max`: 30 days.
pub(crate) const MAX_RETRY: Duration = Duration::from_secs(30 * DAY);

/// `max_hops`: 1000 `Received:` fields.
pub(crate) const MAX_HOPS: u64 = 1000;

/// `max_message_size`: 4 GiB.
pub(crate) const MAX_MESSAGE_SIZE: u64 = 4 * GIB;
/// `queue.max_bytes`: 1 PiB (sums of message sizes stay far from `u64::MAX`).
pub(crate) const MAX_QUEUE_BYTES: u64 = 1 << 50;
/// `store.cache_bytes`: 16 GiB, or 1 GiB where `usize` is 32 bits (sled sizes its cache in
/// memory).
pub(crate) const MAX_CACHE_BYTES: u64 = if usize::BITS < 64 { GIB } else { 16 * GIB };

/// The longest duration `key` accepts, and how the message names it.
pub(super) fn duration_max(key: &str) -> (Duration, &'static str) {
    if key.starts_with("timeouts.") {
        (MAX_TIMEOUT, "1 day")
    } else if key == "queue.retry_min" || key == "queue.retry_max" {
        (MAX_RETRY, "30 days")
    } else {
        (MAX_DURATION, "1 year")
    }
}

/// The largest size `key` accepts (bytes).
pub(super) fn size_max(key: &str) -> u64 {
    match key {
        "max_message_size" => MAX_MESSAGE_SIZE,
        "store.cache_bytes" => MAX_CACHE_BYTES,
        "queue.max_bytes" => MAX_QUEUE_BYTES,
        _ => MAX_QUEUE_BYTES,
    }
}

#[cfg(test)]
mod tests;
