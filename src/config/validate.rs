//! Validation: `Config::from_file` types and checks every key of a `ConfigFile`, fills in the
//! defaults and returns every problem found, each naming its key (`ConfigError` carries them
//! with the file's name). Reads only the files the config names (to check they are readable,
//! and the secrets in them); never touches the network or the store.

mod bounds;
mod relay;
mod smarthost;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::check::{check_sha512_crypt, is_hostname};
use super::defaults::{DEFAULT_COALESCE_PARTS, DEFAULT_COALESCE_WINDOW, DEFAULT_RATE_WINDOW, KIB};
use super::effective::{Config, NotifyConfig, QueueConfig, StoreConfig, Timeouts, TlsFiles, User};
use super::file::{self, ConfigFile, Problem};
use super::local::{local_names, LocalNames};
use crate::coalesce::CoalescePolicy;
use crate::logging::LogTarget;
use crate::priority::{Priority, PriorityRule};
use crate::rate::SenderLimit;

/// Upper bound for `max_recipients`: each recipient is held in memory per session.
const MAX_RECIPIENTS_LIMIT: u64 = 10_000;
/// Upper bound for `max_connections` (file descriptors, and RAM per session).
const MAX_CONNECTIONS_LIMIT: u64 = 10_000;
/// Upper bound for `max_errors`.
const MAX_ERRORS_LIMIT: u64 = 1_000;
/// sled needs some cache to work at all; below this it thrashes.
const MIN_CACHE_BYTES: u64 = 64 * KIB;
/// `[rate_limit]`: `per_sender` range, and `window`'s maximum.
const MAX_RATE_MESSAGES: u64 = 1_000_000;
const MAX_RATE_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// `[coalesce]`: `window`'s maximum, and `max_parts`' maximum (each part is a due message the
/// forwarder loads at once).
const MAX_COALESCE_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_COALESCE_PARTS: u64 = 1000;

/// Every problem found in a configuration, each naming its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the config came from: the file's path, or "defaults".
    pub origin: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, problem) in self.problems.iter().enumerate() {
            if n > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {problem}", self.origin)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Types and checks every key of `file`, filling in defaults; returns all problems found.
    pub fn from_file(file: &ConfigFile) -> Result<Self, Vec<Problem>> {
        let mut v = Validator::default();
        let d = Self::default();
        let config = Self {
            hostname: v.hostname(file.hostname.as_deref(), d.hostname),
            data_dir: v.data_dir(file.data_dir.as_deref(), d.data_dir),
            listen: v.listen(file.listen.as_deref(), d.listen),
            listen_tls: match file.listen_tls.as_deref() {
                None => d.listen_tls,
                Some(items) => v.addresses("listen_tls", items),
            },
            require_tls: file.require_tls.unwrap_or(d.require_tls),
            tls: v.tls(file.tls.as_ref()),
            users: v.users(&file.users),
            relay_from: v.relay_from(file.relay_from.as_deref(), d.relay_from),
            max_message_size: v.size(
                "max_message_size",
                file.max_message_size,
                d.max_message_size,
                1,
            ),
            max_recipients: v.count(
                "max_recipients",
                file.max_recipients,
                d.max_recipients,
                MAX_RECIPIENTS_LIMIT,
            ),
            max_connections: v.count(
                "max_connections",
                file.max_connections,
                d.max_connections,
                MAX_CONNECTIONS_LIMIT,
            ),
            max_errors: v.count(
                "max_errors",
                file.max_errors,
                d.max_errors,
                MAX_ERRORS_LIMIT,
            ),
            log: v.log(file.log.as_deref(), d.log),
            max_hops: v.count("max_hops", file.max_hops, d.max_hops, bounds::MAX_HOPS),
            require_auth: file.require_auth.unwrap_or(d.require_auth),
            smarthosts: v.smarthosts(file.smarthost.as_ref()),
            queue: v.queue(&file.queue, d.queue),
            store: v.store(&file.store, d.store),
            timeouts: v.timeouts(&file.timeouts, d.timeouts),
            notify: v.notify(&file.notify, d.notify),
            metrics: v.metrics(file.metrics.as_ref(), d.metrics),
            rate_limit: v.rate_limit(file.rate_limit.as_ref()),
            priority: v.priority(&file.priority),
            coalesce: v.coalesce(file.coalesce.as_ref()),
            local: LocalNames::default(),
        };
        config.finish(file, v.problems)
    }

    /// The checks that need the other keys: local names, the keys between them, the relay ACL.
    fn finish(
        mut self,
        file: &ConfigFile,
        mut problems: Vec<Problem>,
    ) -> Result<Self, Vec<Problem>> {
        let kernel = super::defaults::system_hostname();
        self.local = local_names(file, (&self.hostname, &kernel), &mut problems);
        self.cross_check(&mut problems);
        relay::check_open_relay(&self, &mut problems);
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(problems)
        }
    }

    /// Checks between keys, reported on the key a user would change.
    fn cross_check(&self, problems: &mut Vec<Problem>) {
        if self.tls.is_none() {
            let needs_tls = [
                ("listen_tls", !self.listen_tls.is_empty()),
                ("require_tls", self.require_tls),
                ("users", !self.users.is_empty()),
            ];
            for (key, set) in needs_tls {
                if set {
                    problems.push(Problem::new(
                        key,
                        "needs [tls] cert and key (TLS is how clients reach it; AUTH is never \
                         offered in plaintext)",
                    ));
                }
            }
        }
        if self.queue.retry_min > self.queue.retry_max {
            problems.push(Problem::new(
                "queue.retry_min",
                format!(
                    "{} is longer than queue.retry_max ({})",
                    humantime::format_duration(self.queue.retry_min),
                    humantime::format_duration(self.queue.retry_max)
                ),
            ));
        }
        if self.max_message_size > self.queue.max_bytes {
            problems.push(Problem::new(
                "max_message_size",
                format!(
                    "{} is larger than the whole queue (queue.max_bytes = {})",
                    self.max_message_size, self.queue.max_bytes
                ),
            ));
        }
    }
}

/// Collects problems while typing keys; each method returns the default on error so that
/// validation carries on and reports everything in one go.
#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, key: &str, message: String) {
        self.problems.push(Problem::new(key, message));
    }

    fn hostname(&mut self, value: Option<&str>, default: String) -> String {
        let Some(name) = value else { return default };
        if is_hostname(name) {
            name.to_owned()
        } else {
            self.problem("hostname", format!("{name:?} is not a valid domain name"));
            default
        }
    }

    fn data_dir(&mut self, value: Option<&str>, default: PathBuf) -> PathBuf {
        match value {
            None => default,
            Some("") => {
                self.problem("data_dir", "must not be empty".to_owned());
                default
            }
            Some(dir) => PathBuf::from(dir),
        }
    }

    fn listen(&mut self, value: Option<&[String]>, default: Vec<SocketAddr>) -> Vec<SocketAddr> {
        let Some(items) = value else { return default };
        if items.is_empty() {
            self.problem("listen", "needs at least one address".to_owned());
        }
        self.addresses("listen", items)
    }

    fn addresses(&mut self, key: &str, items: &[String]) -> Vec<SocketAddr> {
        let mut addrs = Vec::with_capacity(items.len());
        for item in items {
            match item.parse::<SocketAddr>() {
                Ok(addr) => addrs.push(addr),
                Err(_) => self.problem(
                    key,
                    format!(
                        "{item:?} is not an IP:port address (e.g. \"0.0.0.0:25\", \"[::]:25\")"
                    ),
                ),
            }
        }
        addrs
    }

    /// A file that must be readable now (the daemon reads it at start).
    fn readable_file(&mut self, key: &str, value: Option<&str>) -> Option<PathBuf> {
        let Some(path) = value else {
            self.problem(key, "missing".to_owned());
            return None;
        };
        match std::fs::File::open(path) {
            Ok(_) => Some(PathBuf::from(path)),
            Err(e) => {
                self.problem(key, format!("cannot read {path:?}: {e}"));
                None
            }
        }
    }

    fn tls(&mut self, section: Option<&file::TlsSection>) -> Option<TlsFiles> {
        let section = section?;
        let cert = self.readable_file("tls.cert", section.cert.as_deref());
        let key = self.readable_file("tls.key", section.key.as_deref());
        Some(TlsFiles {
            cert: cert?,
            key: key?,
        })
    }

    fn users(&mut self, sections: &[file::UserSection]) -> Vec<User> {
        let mut users: Vec<User> = Vec::with_capacity(sections.len());
        for section in sections {
            let Some(name) = section.name.as_deref().filter(|n| !n.is_empty()) else {
                self.problem(
                    "users.name",
                    "missing or empty in a [[users]] entry".to_owned(),
                );
                continue;
            };
            if users.iter().any(|u| u.name == name) {
                self.problem("users.name", format!("{name:?} is listed twice"));
                continue;
            }
            let Some(hash) = section.password_hash.as_deref() else {
                self.problem("users.password_hash", format!("missing for user {name:?}"));
                continue;
            };
            if let Err(message) = check_sha512_crypt(hash) {
                self.problem("users.password_hash", format!("user {name:?}: {message}"));
                continue;
            }
            users.push(User {
                name: name.to_owned(),
                password_hash: hash.to_owned(),
            });
        }
        users
    }

    fn relay_from(&mut self, value: Option<&[String]>, default: Vec<IpNet>) -> Vec<IpNet> {
        let Some(items) = value else { return default };
        let mut nets = Vec::with_capacity(items.len());
        for item in items {
            // A bare address means just that host.
            match item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => nets.push(net),
                Err(_) => self.problem(
                    "relay_from",
                    format!("{item:?} is not a network (e.g. \"192.168.1.0/24\") or an address"),
                ),
            }
        }
        nets
    }

    fn size(&mut self, key: &str, value: Option<u64>, default: u64, min: u64) -> u64 {
        match value {
            None => default,
            Some(n) if n > bounds::size_max(key) => {
                let max = bounds::size_max(key);
                self.problem(key, format!("{n} is too large (at most {max})"));
                default
            }
            Some(n) if n >= min => n,
            Some(n) => {
                self.problem(key, format!("{n} is too small (at least {min})"));
                default
            }
        }
    }

    fn count<T: TryFrom<u64>>(&mut self, key: &str, value: Option<u64>, default: T, max: u64) -> T {
        let Some(n) = value else { return default };
        match T::try_from(n) {
            Ok(count) if (1..=max).contains(&n) => count,
            _ => {
                self.problem(key, format!("{n} is out of range (1 to {max})"));
                default
            }
        }
    }

    /// A humantime duration ("30s", "15m", "5d"); zero only where `zero_ok`.
    fn duration(
        &mut self,
        key: &str,
        value: &Option<String>,
        default: Duration,
        zero_ok: bool,
    ) -> Duration {
        let Some(text) = value else { return default };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.problem(key, format!("{text:?} must be longer than zero"));
                default
            }
            Ok(d) if d > bounds::duration_max(key).0 => {
                let most = bounds::duration_max(key).1;
                self.problem(
                    key,
                    format!("{text:?} is longer than {most}, the most it allows"),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(
                    key,
                    format!("{text:?} is not a duration like \"30s\", \"15m\", \"5d\": {e}"),
                );
                default
            }
        }
    }

    /// `[[priority]] level`: required, one of the four levels.
    fn priority_level(&mut self, key: &str, value: Option<&str>) -> Option<Priority> {
        let Some(text) = value else {
            self.problem(key, "is required: urgent, high, normal or low".into());
            return None;
        };
        let level = Priority::parse(text);
        if level.is_none() {
            self.problem(
                key,
                format!("{text:?} is not one of urgent, high, normal, low"),
            );
        }
        level
    }

    /// One `[[priority]]` entry (`n` counts from 1, as `priority[n]` in messages).
    fn priority_rule(&mut self, n: usize, rule: &file::PrioritySection) -> Option<PriorityRule> {
        let key = |k: &str| format!("priority[{n}].{k}");
        let priority = self.priority_level(&key("level"), rule.level.as_deref())?;
        if rule.value.is_some() && rule.header.is_none() {
            self.problem(
                &key("value"),
                "needs `header` (the field it matches)".into(),
            );
            return None;
        }
        if let Some(name) = &rule.header {
            let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if !valid {
                self.problem(
                    &key("header"),
                    format!("{name:?} is not a header field name"),
                );
                return None;
            }
        }
        if rule.sender.is_none() && rule.recipient.is_none() && rule.header.is_none() {
            self.problem(
                &format!("priority[{n}]"),
                "needs at least one of sender, recipient, header".into(),
            );
            return None;
        }
        Some(PriorityRule {
            // `<>`: the null sender, whose address is empty.
            sender: rule
                .sender
                .as_ref()
                .map(|s| if s == "<>" { String::new() } else { s.clone() }),
            recipient: rule.recipient.clone(),
            header: rule.header.as_ref().map(|name| {
                (
                    name.to_ascii_lowercase(),
                    rule.value.clone().unwrap_or_else(|| "*".to_owned()),
                )
            }),
            priority,
        })
    }

    /// `[rate_limit]`: `per_sender` is required, `window` defaults to an hour (at most 30 days).
    fn rate_limit(&mut self, section: Option<&file::RateLimitSection>) -> Option<SenderLimit> {
        let section = section?;
        let window = self.duration(
            "rate_limit.window",
            &section.window,
            DEFAULT_RATE_WINDOW,
            false,
        );
        if window > MAX_RATE_WINDOW {
            self.problem(
                "rate_limit.window",
                format!("{window:?} is longer than 30 days"),
            );
        }
        let Some(per_sender) = section.per_sender else {
            self.problem(
                "rate_limit.per_sender",
                "is required in [rate_limit] (messages per sender per window)".to_owned(),
            );
            return None;
        };
        let messages = self.count(
            "rate_limit.per_sender",
            Some(per_sender),
            1,
            MAX_RATE_MESSAGES,
        );
        Some(SenderLimit { messages, window })
    }

    /// `[coalesce]`: every key optional; `window` up to 30 days, `max_parts` 2 to 1000, `min`
    /// 2 to `max_parts`.
    fn coalesce(&mut self, section: Option<&file::CoalesceSection>) -> Option<CoalescePolicy> {
        let section = section?;
        let window = self.duration(
            "coalesce.window",
            &section.window,
            DEFAULT_COALESCE_WINDOW,
            false,
        );
        if window > MAX_COALESCE_WINDOW {
            self.problem(
                "coalesce.window",
                format!("{window:?} is longer than 30 days"),
            );
        }
        let max_parts = self.count(
            "coalesce.max_parts",
            section.max_parts,
            DEFAULT_COALESCE_PARTS,
            MAX_COALESCE_PARTS,
        );
        let min = self.count("coalesce.min", section.min, 2, MAX_COALESCE_PARTS);
        if max_parts < 2 {
            self.problem(
                "coalesce.max_parts",
                "must be at least 2 (a digest combines two messages or more)".to_owned(),
            );
        }
        if min < 2 || min > max_parts {
            self.problem(
                "coalesce.min",
                format!("must be between 2 and max_parts ({max_parts})"),
            );
        }
        Some(CoalescePolicy {
            window,
            max_parts,
            min,
        })
    }

    fn store(&mut self, section: &file::StoreSection, d: StoreConfig) -> StoreConfig {
        StoreConfig {
            cache_bytes: self.size(
                "store.cache_bytes",
                section.cache_bytes,
                d.cache_bytes,
                MIN_CACHE_BYTES,
            ),
        }
    }

    /// `log`: one of the `LogTarget` names.
    fn log(&mut self, value: Option<&str>, default: LogTarget) -> LogTarget {
        match value.map(str::parse::<LogTarget>) {
            None => default,
            Some(Ok(target)) => target,
            Some(Err(message)) => {
                self.problem("log", message);
                default
            }
        }
    }

    /// `[metrics] listen`: one address, or the default (off).
    fn metrics(
        &mut self,
        section: Option<&file::MetricsSection>,
        default: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        match section.and_then(|m| m.listen.as_deref()) {
            None => default,
            Some(addr) => self
                .addresses("metrics.listen", &[addr.to_owned()])
                .into_iter()
                .next(),
        }
    }

    /// `[[priority]]` in order; a rule with a problem is left out (and reported).
    fn priority(&mut self, rules: &[file::PrioritySection]) -> Vec<PriorityRule> {
        rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| self.priority_rule(i + 1, rule))
            .collect()
    }

    fn queue(&mut self, q: &file::QueueSection, d: QueueConfig) -> QueueConfig {
        QueueConfig {
            retry_min: self.duration("queue.retry_min", &q.retry_min, d.retry_min, false),
            retry_max: self.duration("queue.retry_max", &q.retry_max, d.retry_max, false),
            max_age: self.duration("queue.max_age", &q.max_age, d.max_age, false),
            max_bytes: self.size("queue.max_bytes", q.max_bytes, d.max_bytes, 1),
            failed_retention: self.duration(
                "queue.failed_retention",
                &q.failed_retention,
                d.failed_retention,
                true,
            ),
        }
    }

    fn notify(&mut self, n: &file::NotifySection, d: NotifyConfig) -> NotifyConfig {
        NotifyConfig {
            queue_age: self.duration("notify.queue_age", &n.queue_age, d.queue_age, false),
            queue_fill: self.count("notify.queue_fill", n.queue_fill, d.queue_fill, 100),
            interval: self.duration("notify.interval", &n.interval, d.interval, false),
        }
    }

    fn timeouts(&mut self, t: &file::TimeoutsSection, d: Timeouts) -> Timeouts {
        Timeouts {
            command: self.duration("timeouts.command", &t.command, d.command, false),
            data: self.duration("timeouts.data", &t.data, d.data, false),
            smarthost: self.duration("timeouts.smarthost", &t.smarthost, d.smarthost, false),
            smarthost_data_end: self.duration(
                "timeouts.smarthost_data_end",
                &t.smarthost_data_end,
                d.smarthost_data_end,
                false,
            ),
        }
    }
}

/// `key.field`: a key inside a table (`smarthost[2].address`).
fn dotted(key: &str, field: &str) -> String {
    format!("{key}.{field}")
}
