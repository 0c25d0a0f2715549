//! Property tests of the bounds: extreme durations and sizes go through validation, and every
//! value it accepts then goes through the arithmetic the daemon does with it (deadlines,
//! retry schedules, queue-time sums, the free-space reserve) without a panic.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{MAX_CACHE_BYTES, MAX_MESSAGE_SIZE, MAX_QUEUE_BYTES};
use crate::clock::QueueTime;
use crate::config::file::ConfigFile;
use crate::config::Config;
use crate::forward::schedule;
use crate::forward::RetryPolicy;
use crate::wait;

/// Every duration key, as `(section, key)`; `""` is the top level.
const DURATION_KEYS: &[(&str, &str)] = &[
    ("timeouts", "command"),
    ("timeouts", "data"),
    ("timeouts", "smarthost"),
    ("timeouts", "smarthost_data_end"),
    ("queue", "retry_min"),
    ("queue", "retry_max"),
    ("queue", "max_age"),
    ("queue", "failed_retention"),
    ("rate_limit", "window"),
    ("coalesce", "window"),
];

fn validate(text: &str) -> Option<Config> {
    let file = ConfigFile::parse(text).ok()?;
    Config::from_file(&file).ok()
}

fn section(name: &str, body: &str) -> String {
    let extra = if name == "rate_limit" {
        "per_sender = 10\n"
    } else {
        ""
    };
    format!("[{name}]\n{extra}{body}\n")
}

/// Seconds spread over every order of magnitude up to `u64::MAX`.
fn extreme_secs() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX / 1000),
        Just(365 * 86400),
        Just(365 * 86400 + 1),
        (0u32..64).prop_flat_map(|bits| 0..=(u64::MAX >> bits)),
    ]
}

/// The daemon's uses of one accepted duration, none of which may panic.
fn exercise(d: Duration) {
    let now = Instant::now();
    assert!(now.checked_add(d).is_some(), "{d:?} overflows an Instant");
    assert_eq!(wait::deadline(now, d), now + d);
    let policy = RetryPolicy {
        retry_min: d,
        retry_max: d,
        max_age: d,
    };
    for attempts in [1, 2, 40, u32::MAX] {
        let delay = schedule::next_attempt(attempts, &policy, u32::MAX);
        let _ = schedule::after(QueueTime::MAX, delay);
    }
    let _ = schedule::is_expired(0, QueueTime::MAX, d);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_accepted_duration_is_usable(
        key in 0..DURATION_KEYS.len(),
        secs in extreme_secs(),
        nanos in 0u32..1_000_000_000,
    ) {
        let (name, field) = DURATION_KEYS[key];
        let text = section(name, &format!("{field} = \"{secs}s {nanos}ns\""));
        if let Some(config) = validate(&text) {
            let d = Duration::new(secs, nanos);
            prop_assert!(d <= super::MAX_DURATION, "{text} accepted");
            exercise(d);
            exercise(config.timeouts.command);
            exercise(config.queue.max_age);
        }
    }

    #[test]
    fn every_accepted_size_is_usable(which in 0usize..3, n in any::<u64>()) {
        let text = match which {
            0 => format!("max_message_size = {n}\n[queue]\nmax_bytes = {MAX_QUEUE_BYTES}"),
            1 => format!("[queue]\nmax_bytes = {n}"),
            _ => format!("[store]\ncache_bytes = {n}"),
        };
        // TOML integers are i64: larger values are refused by the parser already.
        if let Some(config) = validate(&text) {
            prop_assert!(config.max_message_size <= MAX_MESSAGE_SIZE);
            prop_assert!(config.queue.max_bytes <= MAX_QUEUE_BYTES);
            prop_assert!(config.store.cache_bytes <= MAX_CACHE_BYTES);
            prop_assert!(usize::try_from(config.store.cache_bytes).is_ok());
            // The reserve and queue sums the daemon computes stay far from overflow.
            prop_assert!(config.max_message_size.checked_mul(2).is_some());
            prop_assert!(config.queue.max_bytes.checked_add(config.max_message_size).is_some());
        }
    }
}

#[test]
fn the_duration_from_the_report_is_refused_by_key() {
    let text = section("timeouts", "command = \"18446744073709551615s\"");
    let file = ConfigFile::parse(&text).unwrap();
    let problems = Config::from_file(&file).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "timeouts.command");
    assert!(problems[0].message.contains("1 day"), "{problems:?}");
}

#[test]
fn each_bound_is_accepted_and_one_past_it_refused() {
    let cases = [
        ("timeouts", "data", "1day", "1day 1s"),
        ("queue", "retry_max", "30days", "30days 1s"),
        ("queue", "max_age", "365days", "365days 1s"),
    ];
    for (name, field, ok, bad) in cases {
        let good = validate(&section(name, &format!("{field} = \"{ok}\"")));
        assert!(good.is_some(), "{name}.{field} = {ok} refused");
        let text = section(name, &format!("{field} = \"{bad}\""));
        let problems = Config::from_file(&ConfigFile::parse(&text).unwrap()).unwrap_err();
        assert_eq!(problems[0].key, format!("{name}.{field}"), "{problems:?}");
    }
    let too_big = format!("[store]\ncache_bytes = {}", MAX_CACHE_BYTES + 1);
    assert!(validate(&too_big).is_none());
    let too_big = format!("max_message_size = {}", MAX_MESSAGE_SIZE + 1);
    assert!(validate(&too_big).is_none());
}

#[test]
fn a_deadline_past_what_instant_holds_is_the_latest_it_can_reach() {
    let now = Instant::now();
    let far = wait::deadline(now, Duration::MAX);
    assert!(far >= now + super::MAX_DURATION, "{:?}", far - now);
    assert_eq!(wait::deadline(now, Duration::ZERO), now);
}
