//! Ordered smarthost failover as pure functions: which smarthost a pass sends over, when the
//! link as a whole waits, and what `outpost status` reports as "the link". No I/O, no clock:
//! `now` is an argument and every smarthost's state is passed in.
//!
//! The rule: smarthosts are tried in config order; a smarthost is usable when it is up (no site
//! failure since it last worked, or never tried) or when its own backoff has run out. A pass
//! takes the first usable smarthost; a site failure on smarthost k moves on to the first usable
//! smarthost after k in the same pass. Because every pass starts again from the first
//! smarthost, the primary is probed first as soon as its backoff expires, and mail returns to
//! it once it answers.

use crate::clock::QueueTime;

/// The forwarder's backoff state of one smarthost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmarthostTiming {
    /// Consecutive site failures; 0 while the smarthost is up (or not tried yet).
    pub failures: u32,
    /// While the smarthost is down: when it may be tried again.
    pub retry_at: QueueTime,
}

impl SmarthostTiming {
    pub fn is_up(&self) -> bool {
        self.failures == 0
    }

    /// Up, or down with its backoff run out.
    pub fn usable(&self, now: QueueTime) -> bool {
        self.is_up() || self.retry_at <= now
    }
}

/// The first usable smarthost at or after `from` (config order), if any.
pub fn choose(smarthosts: &[SmarthostTiming], from: usize, now: QueueTime) -> Option<usize> {
    smarthosts
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, smarthost)| smarthost.usable(now))
        .map(|(index, _)| index)
}

/// While every smarthost is down: the earliest time one of them may be tried again. `None` while
/// any smarthost is up (mail can go now) or there is no smarthost at all.
pub fn link_wait(smarthosts: &[SmarthostTiming]) -> Option<QueueTime> {
    if smarthosts.iter().any(SmarthostTiming::is_up) {
        return None;
    }
    smarthosts.iter().map(|smarthost| smarthost.retry_at).min()
}

/// A session on smarthost `current` should end after its batch: a smarthost before it (preferred)
/// may be tried again, so the next pass probes it first.
pub fn preferred_due(smarthosts: &[SmarthostTiming], current: usize, now: QueueTime) -> bool {
    choose(smarthosts, 0, now).is_some_and(|index| index < current)
}

/// The state of one smarthost, for `outpost status` and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmarthostReport {
    /// `host:port` as configured.
    pub address: String,
    /// Tried at least once: `Some(true)` up, `Some(false)` down; `None` before the first try.
    pub up: Option<bool>,
    /// Wall-clock Unix seconds of the last change of `up`.
    pub since_unix: u64,
    /// The smarthost answered at least once since start.
    pub ever_reached: bool,
    /// The site failure that took the smarthost down last.
    pub last_error: Option<String>,
    /// While the smarthost is down: the queue time of its next probe.
    pub retry_at: Option<QueueTime>,
    /// Recipients this smarthost accepted since start.
    pub sent: u64,
}

/// "The link" over all smarthosts, as the `link:` line of `outpost status` shows it: up (via
/// the first smarthost that is up: where mail goes now) if any smarthost is up; down
/// (since the last smarthost went down, next probe at the earliest retry) when every tried
/// smarthost is down; unknown before any try.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkView {
    pub up: Option<bool>,
    pub since_unix: u64,
    pub ever_reached: bool,
    pub retry_at: Option<QueueTime>,
    /// The smarthost mail goes to now (index), while the link is up.
    pub current: Option<usize>,
}

pub fn link_view(smarthosts: &[SmarthostReport]) -> LinkView {
    let ever_reached = smarthosts.iter().any(|r| r.ever_reached);
    if let Some(current) = smarthosts.iter().position(|r| r.up == Some(true)) {
        return LinkView {
            up: Some(true),
            since_unix: smarthosts[current].since_unix,
            ever_reached,
            retry_at: None,
            current: Some(current),
        };
    }
    let down = smarthosts.iter().filter(|r| r.up == Some(false));
    let since_unix = down.clone().map(|r| r.since_unix).max();
    // A smarthost not tried yet would be tried at once: no link wait.
    let untried = smarthosts.iter().any(|r| r.up.is_none());
    LinkView {
        up: since_unix.map(|_| false),
        since_unix: since_unix.unwrap_or(0),
        ever_reached,
        retry_at: if untried {
            None
        } else {
            down.filter_map(|r| r.retry_at).min()
        },
        current: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: SmarthostTiming = SmarthostTiming {
        failures: 0,
        retry_at: 0,
    };

    fn down(retry_at: QueueTime) -> SmarthostTiming {
        SmarthostTiming {
            failures: 1,
            retry_at,
        }
    }

    #[test]
    fn the_first_usable_smarthost_in_order_is_chosen() {
        assert_eq!(choose(&[UP, UP], 0, 100), Some(0));
        assert_eq!(choose(&[down(500), UP], 0, 100), Some(1));
        assert_eq!(choose(&[down(500), down(600), UP], 0, 100), Some(2));
        assert_eq!(choose(&[down(500), down(600)], 0, 100), None);
        assert_eq!(choose(&[], 0, 100), None);
    }

    #[test]
    fn after_a_failure_the_next_smarthost_is_tried_in_the_same_pass() {
        let smarthosts = [UP, UP, UP];
        // Smarthost 0 failed at connect: the pass goes on from 1, never back to 0.
        assert_eq!(choose(&smarthosts, 1, 100), Some(1));
        assert_eq!(choose(&[down(500), down(500), UP], 1, 100), Some(2));
        assert_eq!(choose(&smarthosts, 3, 100), None);
    }

    #[test]
    fn the_primary_is_probed_first_once_its_backoff_expires() {
        let smarthosts = [down(500), UP];
        assert_eq!(choose(&smarthosts, 0, 499), Some(1));
        assert_eq!(choose(&smarthosts, 0, 500), Some(0));
        assert!(!preferred_due(&smarthosts, 1, 499));
        assert!(preferred_due(&smarthosts, 1, 500));
        // On the primary itself nothing is preferred.
        assert!(!preferred_due(&[UP, UP], 0, 500));
        assert!(!preferred_due(&[UP, down(10)], 0, 500));
    }

    #[test]
    fn the_link_waits_only_while_every_smarthost_is_down() {
        assert_eq!(link_wait(&[down(700), down(500), down(900)]), Some(500));
        assert_eq!(link_wait(&[down(700), UP]), None);
        assert_eq!(link_wait(&[]), None);
    }

    fn view(up: Option<bool>, since_unix: u64, retry_at: Option<QueueTime>) -> SmarthostReport {
        SmarthostReport {
            up,
            since_unix,
            ever_reached: up == Some(true),
            retry_at,
            ..SmarthostReport::default()
        }
    }

    #[test]
    fn the_link_is_up_via_the_first_smarthost_that_is_up() {
        let smarthosts = [
            view(Some(false), 10, Some(900)),
            view(Some(true), 20, None),
            view(Some(true), 5, None),
        ];
        let link = link_view(&smarthosts);
        assert_eq!(link.up, Some(true));
        assert_eq!(link.current, Some(1));
        assert_eq!(link.since_unix, 20);
        assert_eq!(link.retry_at, None);
    }

    #[test]
    fn the_link_is_down_since_the_last_smarthost_went_down() {
        let smarthosts = [
            view(Some(false), 10, Some(900)),
            view(Some(false), 30, Some(700)),
        ];
        let link = link_view(&smarthosts);
        assert_eq!(link.up, Some(false));
        assert_eq!(link.since_unix, 30);
        assert_eq!(link.retry_at, Some(700));
        assert_eq!(link.current, None);
        assert!(!link.ever_reached);
        // A smarthost not tried yet: the link is not known to be waiting.
        let smarthosts = [view(Some(false), 10, Some(900)), view(None, 0, None)];
        assert_eq!(link_view(&smarthosts).retry_at, None);
        assert_eq!(link_view(&smarthosts).up, Some(false));
        assert_eq!(link_view(&[view(None, 0, None)]).up, None);
        assert_eq!(link_view(&[]), LinkView::default());
    }
}
