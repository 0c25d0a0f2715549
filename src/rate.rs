//! Per-sender rate limits on the way in (`[rate_limit]`): how many messages one envelope sender
//! may hand over in a window, as pure state over an explicit clock. Performs no I/O and reads
//! no clock.
//!
//! The algorithm is GCRA (the "generic cell rate algorithm", a token bucket kept as one number
//! per sender): a sender may send `messages` at once, then one more every `window / messages`.
//! Each sender costs one map entry holding the time its bucket is full again; entries whose
//! bucket is full are dropped, and the map is a fixed table of `MAX_SENDERS` entries.

use std::time::Duration;

use heapless::FnvIndexMap;

/// Senders tracked at once. Beyond it, full buckets go first, then the sender nearest to a full
/// bucket: a LAN never has this many senders in a window, and a client inventing addresses gets
/// nothing from the limit that a fresh address would not give it anyway.
pub const MAX_SENDERS: usize = 1024;

/// `[rate_limit] per_sender` messages per `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderLimit {
    pub messages: u32,
    pub window: Duration,
}

impl SenderLimit {
    fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Time between two messages once the burst is spent, at least 1 ms.
    fn interval_ms(&self) -> u64 {
        (self.window_ms() / u64::from(self.messages.max(1))).max(1)
    }
}

/// The verdict on one more message from a sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit: the next message would be allowed after this long.
    Exceeded {
        retry_after: Duration,
    },
}

/// Per sender key: when its bucket is full again ("theoretical arrival time"), in ms on the
/// caller's clock. The capacity is `MAX_SENDERS`; FNV hashing keeps a lookup cheap, and even
/// keys chosen to collide cost at most a scan of this bounded table. Boxed: the table is about
/// 44 KiB, which should not travel by value.
type FullAt = FnvIndexMap<String, u64, MAX_SENDERS>;

#[derive(Debug)]
pub struct SenderRates {
    limit: SenderLimit,
    full_at: Box<FullAt>,
}

impl SenderRates {
    pub fn new(limit: SenderLimit) -> Self {
        Self {
            limit,
            full_at: Box::default(),
        }
    }

    pub fn limit(&self) -> SenderLimit {
        self.limit
    }

    /// Counts one message from `sender` (an address as given in MAIL FROM; empty for the null
    /// sender) at `now_ms`, or refuses it without counting.
    pub fn take(&mut self, sender: &str, now_ms: u64) -> Verdict {
        let key = sender_key(sender);
        let full_at = self
            .full_at
            .get(&key)
            .copied()
            .unwrap_or(now_ms)
            .max(now_ms);
        let next = full_at.saturating_add(self.limit.interval_ms());
        let ahead = next - now_ms;
        let window = self.limit.window_ms();
        if ahead > window {
            return Verdict::Exceeded {
                retry_after: Duration::from_millis(ahead - window),
            };
        }
        if let Some(tracked) = self.full_at.get_mut(&key) {
            *tracked = next;
        } else {
            self.track(key, next, now_ms);
        }
        Verdict::Allowed
    }

    /// Senders currently tracked.
    pub fn tracked(&self) -> usize {
        self.full_at.len()
    }

    /// Adds a sender not tracked yet. In a full table, full buckets go first, then the sender
    /// nearest to a full bucket, which may be the new one: then it is not tracked.
    fn track(&mut self, key: String, next: u64, now_ms: u64) {
        if self.full_at.len() == MAX_SENDERS {
            self.full_at.retain(|_, full_at| *full_at > now_ms);
        }
        if self.full_at.len() == MAX_SENDERS {
            let nearest = self
                .full_at
                .iter()
                .min_by_key(|(_, full_at)| **full_at)
                .map(|(key, full_at)| (key.clone(), *full_at));
            match nearest {
                Some((nearest, full_at)) if full_at <= next => {
                    self.full_at.swap_remove(&nearest);
                }
                _ => return,
            }
        }
        // There is room: `insert` refuses only when the table is full.
        let _ = self.full_at.insert(key, next);
    }
}

/// One key per mailbox: the whole address lowercased (the local part is case-sensitive in
/// theory, never in the devices that send to a relay); `<>` for the null sender.
fn sender_key(sender: &str) -> String {
    if sender.is_empty() {
        "<>".to_owned()
    } else {
        sender.to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(messages: u32, window_secs: u64) -> SenderRates {
        SenderRates::new(SenderLimit {
            messages,
            window: Duration::from_secs(window_secs),
        })
    }

    fn exceeded(secs: u64) -> Verdict {
        Verdict::Exceeded {
            retry_after: Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_burst_of_the_limit_then_one_per_interval() {
        // 3 per minute: 3 at once, then one every 20 s.
        let mut r = rates(3, 60);
        for _ in 0..3 {
            assert_eq!(r.take("ups@lan.test", 0), Verdict::Allowed);
        }
        assert_eq!(r.take("ups@lan.test", 0), exceeded(20));
        assert_eq!(r.take("ups@lan.test", 5_000), exceeded(15));
        assert_eq!(r.take("ups@lan.test", 20_000), Verdict::Allowed);
        assert_eq!(r.take("ups@lan.test", 20_000), exceeded(20));
        // A quiet sender gets its whole burst back after one window.
        assert_eq!(r.take("ups@lan.test", 100_000), Verdict::Allowed);
        assert_eq!(r.take("ups@lan.test", 100_000), Verdict::Allowed);
        assert_eq!(r.take("ups@lan.test", 100_000), Verdict::Allowed);
        assert_eq!(r.take("ups@lan.test", 100_000), exceeded(20));
    }

    #[test]
    fn a_refused_message_is_not_counted() {
        let mut r = rates(1, 60);
        assert_eq!(r.take("a@lan.test", 0), Verdict::Allowed);
        for t in [1_000, 2_000, 30_000] {
            assert!(matches!(r.take("a@lan.test", t), Verdict::Exceeded { .. }));
        }
        assert_eq!(r.take("a@lan.test", 60_000), Verdict::Allowed);
    }

    #[test]
    fn senders_are_counted_apart_and_case_blind() {
        let mut r = rates(1, 60);
        assert_eq!(r.take("a@lan.test", 0), Verdict::Allowed);
        assert_eq!(r.take("b@lan.test", 0), Verdict::Allowed);
        assert_eq!(r.take("", 0), Verdict::Allowed);
        assert_eq!(r.take("A@LAN.test", 0), exceeded(60));
        assert_eq!(r.take("", 1_000), exceeded(59));
    }

    #[test]
    fn the_map_stays_bounded_and_keeps_the_busiest_senders() {
        let mut r = rates(2, 60);
        // The heavy sender spends its burst first.
        r.take("heavy@lan.test", 0);
        r.take("heavy@lan.test", 0);
        for i in 0..(MAX_SENDERS * 3) {
            assert_eq!(r.take(&format!("s{i}@lan.test"), 10), Verdict::Allowed);
            assert!(r.tracked() <= MAX_SENDERS);
        }
        assert!(matches!(
            r.take("heavy@lan.test", 10),
            Verdict::Exceeded { .. }
        ));
        // Full buckets are forgotten first.
        assert_eq!(r.take("new@lan.test", 120_000), Verdict::Allowed);
        assert!(r.tracked() <= MAX_SENDERS);
    }

    #[test]
    fn a_full_table_keeps_busier_senders_over_a_new_one() {
        let mut r = rates(2, 60);
        for i in 0..MAX_SENDERS {
            r.take(&format!("s{i}@lan.test"), 0);
            r.take(&format!("s{i}@lan.test"), 0);
        }
        // Each tracked sender is a full window from a full bucket; the new one only half.
        assert_eq!(r.take("new@lan.test", 0), Verdict::Allowed);
        assert_eq!(r.tracked(), MAX_SENDERS);
        assert_eq!(r.take("s0@lan.test", 0), exceeded(30));
        assert_eq!(
            r.take(&format!("s{}@lan.test", MAX_SENDERS - 1), 0),
            exceeded(30)
        );
    }

    #[test]
    fn extreme_limits_do_not_overflow() {
        let mut r = rates(u32::MAX, 1);
        for _ in 0..1000 {
            assert_eq!(r.take("a@lan.test", u64::MAX - 10), Verdict::Allowed);
        }
        let mut r = rates(1, 365 * 24 * 3600);
        assert_eq!(r.take("a@lan.test", 0), Verdict::Allowed);
        assert!(matches!(r.take("a@lan.test", 0), Verdict::Exceeded { .. }));
    }
}
