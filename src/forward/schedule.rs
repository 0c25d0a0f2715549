//! Retry timing: exponential backoff with jitter and queue-age expiry, as pure functions of
//! `QueueTime` (queued time, immune to wall-clock jumps) and caller-supplied randomness, after
//! OpenSMTPD's `scheduler_backoff`; and the rate limit of the notices about failed messages
//! (`FailedNotices`, over a caller-supplied `Instant`). No I/O, no clock, no randomness of its
//! own.

use std::time::{Duration, Instant};

use super::RetryPolicy;
use crate::clock::QueueTime;

/// Delay before the next attempt after `attempts` failed ones (1 for the first failure):
/// `retry_min · 2^(attempts−1)`, capped at `retry_max`, then spread by ±12.5 % with `jitter`
/// (uniform over `u32`) so deferred messages do not move in lock-step, and kept within
/// `[retry_min, retry_max]`.
pub fn next_attempt(attempts: u32, policy: &RetryPolicy, jitter: u32) -> Duration {
    let min = millis(policy.retry_min).max(1);
    let max = millis(policy.retry_max).max(min);
    let shift = attempts.saturating_sub(1).min(63);
    let base = min.checked_mul(1u128 << shift).map_or(max, |d| d.min(max));
    // base · (7/8 + jitter/2^34): jitter/2^32 ∈ [0, 1) scaled to a quarter.
    let spread = base * 7 / 8 + ((base * u128::from(jitter)) >> 34);
    let delay = spread.clamp(min, max);
    Duration::from_millis(u64::try_from(delay).unwrap_or(u64::MAX))
}

/// Link-level backoff while the smarthost is unreachable: the same curve, counted in
/// consecutive site failures instead of per-message attempts.
pub fn link_backoff(failures: u32, policy: &RetryPolicy, jitter: u32) -> Duration {
    next_attempt(failures, policy, jitter)
}

/// `now + delay` in queue time.
pub fn after(now: QueueTime, delay: Duration) -> QueueTime {
    now.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
}

/// The message has been queued for `max_age` or longer.
pub fn is_expired(enqueued_at: QueueTime, now: QueueTime, max_age: Duration) -> bool {
    u128::from(now.saturating_sub(enqueued_at)) >= max_age.as_millis()
}

fn millis(duration: Duration) -> u128 {
    duration.as_millis()
}

/// A tiny xorshift64* generator for jitter (no `rand` crate; not for anything secret).
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// Any seed works (zero is replaced).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let mixed = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        u32::try_from(mixed >> 32).unwrap_or(u32::MAX)
    }
}

/// At most this many notices about failed messages go to `admin` per `FAILED_WINDOW`; the
/// failures past that are counted and the next notice that goes says how many.
pub(super) const FAILED_NOTICES: u32 = 10;
const FAILED_WINDOW: Duration = Duration::from_secs(3600);

/// The rate limit of the notices about failed messages (a storm of failures is one mail an
/// hour after the first ten, not one per message).
#[derive(Debug, Default)]
pub(super) struct FailedNotices {
    window: Option<Instant>,
    sent: u32,
    held: u32,
}

impl FailedNotices {
    /// `Some(held)`: a notice may go now, `held` failures since the last one went unreported.
    pub(super) fn take(&mut self, now: Instant) -> Option<u32> {
        if !self
            .window
            .is_some_and(|start| now.duration_since(start) < FAILED_WINDOW)
        {
            self.window = Some(now);
            self.sent = 0;
        }
        if self.sent < FAILED_NOTICES {
            self.sent += 1;
            Some(std::mem::take(&mut self.held))
        } else {
            self.held = self.held.saturating_add(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            retry_min: Duration::from_secs(30),
            retry_max: Duration::from_secs(15 * 60),
            max_age: Duration::from_secs(5 * 86_400),
        }
    }

    const MIDDLE: u32 = 1 << 31;

    #[test]
    fn backoff_doubles_from_min_to_max() {
        let expected = [30, 60, 120, 240, 480, 900, 900, 900];
        for (i, secs) in expected.iter().enumerate() {
            let attempts = u32::try_from(i + 1).unwrap();
            assert_eq!(
                next_attempt(attempts, &policy(), MIDDLE),
                Duration::from_secs(*secs),
                "attempt {attempts}"
            );
        }
        assert_eq!(
            next_attempt(u32::MAX, &policy(), MIDDLE),
            Duration::from_secs(900)
        );
        assert_eq!(next_attempt(0, &policy(), MIDDLE), Duration::from_secs(30));
    }

    #[test]
    fn jitter_spreads_but_stays_within_bounds() {
        let policy = policy();
        // 4th attempt: base 240 s, spread over [210, 270).
        assert_eq!(next_attempt(4, &policy, 0), Duration::from_secs(210));
        let top = next_attempt(4, &policy, u32::MAX);
        assert!(
            top > Duration::from_secs(269) && top < Duration::from_secs(270),
            "{top:?}"
        );
        for jitter in [0, 1, MIDDLE, u32::MAX] {
            for attempts in 1..20 {
                let delay = next_attempt(attempts, &policy, jitter);
                assert!(delay >= policy.retry_min && delay <= policy.retry_max);
            }
        }
    }

    #[test]
    fn odd_policies_do_not_panic() {
        let zero = RetryPolicy {
            retry_min: Duration::ZERO,
            retry_max: Duration::ZERO,
            max_age: Duration::ZERO,
        };
        assert_eq!(next_attempt(5, &zero, 7), Duration::from_millis(1));
        let inverted = RetryPolicy {
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(10),
            max_age: Duration::ZERO,
        };
        assert_eq!(next_attempt(3, &inverted, MIDDLE), Duration::from_secs(60));
        let huge = RetryPolicy {
            retry_max: Duration::MAX,
            ..policy()
        };
        assert!(next_attempt(200, &huge, u32::MAX) > Duration::from_secs(1 << 40));
    }

    #[test]
    fn expiry_uses_queued_time() {
        let max_age = Duration::from_secs(5 * 86_400);
        let enqueued = 1_000;
        let age_ms = 5 * 86_400 * 1000;
        assert!(!is_expired(enqueued, enqueued, max_age));
        assert!(!is_expired(enqueued, enqueued + age_ms - 1, max_age));
        assert!(is_expired(enqueued, enqueued + age_ms, max_age));
        // A queue clock behind the enqueue time (should not happen) never expires anything.
        assert!(!is_expired(enqueued, 0, max_age));
    }

    #[test]
    fn after_adds_in_queue_time() {
        assert_eq!(after(1_000, Duration::from_secs(30)), 31_000);
        assert_eq!(after(u64::MAX - 1, Duration::from_secs(30)), u64::MAX);
    }

    #[test]
    fn jitter_generator_is_not_constant() {
        let mut jitter = Jitter::new(0);
        let values: Vec<u32> = (0..8).map(|_| jitter.next_u32()).collect();
        let mut unique = values.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), values.len());
    }

    #[test]
    fn failed_notices_go_ten_an_hour_and_the_next_one_counts_the_rest() {
        let mut notices = FailedNotices::default();
        let start = Instant::now();
        for _ in 0..FAILED_NOTICES {
            assert_eq!(notices.take(start), Some(0));
        }
        assert_eq!(notices.take(start + Duration::from_secs(60)), None);
        assert_eq!(notices.take(start + Duration::from_secs(120)), None);
        let later = start + FAILED_WINDOW;
        assert_eq!(notices.take(later), Some(2));
        assert_eq!(notices.take(later), Some(0));
    }
}
