//! `Config`: the validated, typed configuration and the embedded defaults (stage two of two).
//! Everything is parsed and checked here, once; nothing downstream parses config text again.
//! Reads the config file and the kernel hostname, nothing else; never async.

pub mod file;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use self::file::Problem;
use self::file::{ConfigFile, SmarthostTables};
use crate::coalesce::CoalescePolicy;
use crate::priority::{Priority, PriorityRule};
use crate::rate::SenderLimit;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Upper bound for `max_recipients`: each recipient is held in memory per session.
const MAX_RECIPIENTS_LIMIT: u64 = 10_000;
/// Upper bound for `max_connections` (file descriptors, and RAM per session).
const MAX_CONNECTIONS_LIMIT: u64 = 10_000;
/// Upper bound for `max_errors`.
const MAX_ERRORS_LIMIT: u64 = 1_000;
/// sled needs some cache to work at all; below this it thrashes.
const MIN_CACHE_BYTES: u64 = 64 * KIB;
/// `[rate_limit]`: `per_sender` range, and `window`'s default and maximum.
const MAX_RATE_MESSAGES: u64 = 1_000_000;
const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(3600);
const MAX_RATE_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// `[coalesce]`: `window`'s default and maximum, `max_parts`' default and maximum (each part is
/// a due message the forwarder loads at once, see docs/features.md, "Alert storms").
const DEFAULT_COALESCE_WINDOW: Duration = Duration::from_secs(3600);
const MAX_COALESCE_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_COALESCE_PARTS: usize = 100;
const MAX_COALESCE_PARTS: u64 = 1000;
/// SHA-512-crypt rounds (glibc's range starts at 1000; above this one AUTH costs seconds of
/// CPU on a small board, which a password-guessing client could exploit).
const MIN_CRYPT_ROUNDS: u64 = 1000;
const MAX_CRYPT_ROUNDS: u64 = 5_000_000;
/// Upper bound for `[[smarthost]]` entries: each has its own link state and, during an outage,
/// its own connect attempt (and timeout) in every pass.
pub const MAX_SMARTHOSTS: usize = 8;

/// The validated configuration the daemon runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Our name in the banner, EHLO, Received: headers and DSNs.
    pub hostname: String,
    pub data_dir: PathBuf,
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (RFC 8314); empty unless `[tls]` is set.
    pub listen_tls: Vec<SocketAddr>,
    /// MAIL before STARTTLS gets 530 5.7.0.
    pub require_tls: bool,
    /// `[tls]`: with it, `listen` ports offer STARTTLS.
    pub tls: Option<TlsFiles>,
    /// `[[users]]`: AUTH PLAIN/LOGIN over TLS; an authenticated client may relay.
    pub users: Vec<User>,
    /// Clients allowed to relay (RFC 5321 §3.6.1: never an open relay).
    pub relay_from: Vec<IpNet>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    /// Bad commands in one session before 421 and close.
    pub max_errors: u32,
    /// `[smarthost]` or `[[smarthost]]`, in the order they are tried (failover); empty: mail is
    /// accepted and held.
    pub smarthosts: Vec<Smarthost>,
    pub queue: QueueConfig,
    pub store: StoreConfig,
    pub timeouts: Timeouts,
    /// `[metrics] listen`: Prometheus text exposition on `GET /metrics`; `None`: off.
    pub metrics: Option<SocketAddr>,
    /// `[rate_limit]`: messages per envelope sender in a window; `None`: no limit.
    pub rate_limit: Option<SenderLimit>,
    /// `[[priority]]` rules in order (the first match decides; none: every message `normal`).
    pub priority: Vec<PriorityRule>,
    /// `[coalesce]`: alert storms delivered as digests; `None`: off.
    pub coalesce: Option<CoalescePolicy>,
}

/// One `[smarthost]` / `[[smarthost]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Smarthost {
    /// `host:port`, port required; the host is resolved at each connect.
    pub address: String,
    pub tls: SmarthostTls,
    /// PEM CAs replacing the built-in web PKI roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// `username` + `password_file`: AUTH to the smarthost (never over plaintext).
    pub auth: Option<SmarthostAuth>,
    /// `username` + `oauth2_*`: AUTH OAUTHBEARER/XOAUTH2 with a token outpost refreshes.
    pub oauth2: Option<SmarthostOAuth2>,
}

/// OAuth 2.0 to the smarthost: the access token is fetched from `token_url` with the refresh
/// token in `refresh_token_file` (read at each refresh, so it can be replaced without a
/// restart; rewritten when the endpoint rotates it). The endpoint's certificate is checked
/// against the entry's `ca_file` or the web PKI roots, like the smarthost's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmarthostOAuth2 {
    /// The mailbox (`user=`/`a=` in the SASL message).
    pub username: String,
    pub token_url: String,
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    /// Read at load.
    pub client_secret: Option<Secret>,
    pub refresh_token_file: PathBuf,
    pub scope: Option<String>,
}

/// `[smarthost] tls`: `starttls` (default) and `tls` never fall back to plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmarthostTls {
    None,
    StartTls,
    /// Implicit TLS (RFC 8314, usually port 465).
    Implicit,
}

impl SmarthostTls {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::StartTls => "starttls",
            Self::Implicit => "tls",
        }
    }
}

/// Credentials for the smarthost; the password was read from `password_file` at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmarthostAuth {
    pub username: String,
    pub password_file: PathBuf,
    pub password: Secret,
}

/// A secret string: `Debug` never shows it, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Self {
        Self(secret)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `[tls]`: checked readable at load; parsed (PEM) when the daemon starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One `[[users]]` entry; `password_hash` is a checked SHA-512-crypt string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password_hash: String,
}

/// `[queue]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Time spent queued (queue clock, not wall clock) before a message bounces.
    pub max_age: Duration,
    /// Queue cap in body bytes; beyond it commits get 452 4.3.1.
    pub max_bytes: u64,
    /// How long failed messages stay listed.
    pub failed_retention: Duration,
}

/// `[store]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// sled `cache_capacity`.
    pub cache_bytes: u64,
}

/// `[timeouts]` (RFC 5321 §4.5.3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the next command (§4.5.3.2.7).
    pub command: Duration,
    /// Each read of a DATA block (§4.5.3.2.6).
    pub data: Duration,
    /// Connecting to the smarthost and each of its replies.
    pub smarthost: Duration,
    /// The smarthost's reply to our final dot (§4.5.3.2.6).
    pub smarthost_data_end: Duration,
}

/// Command-line flags that override the file (`serve --listen …`). Applied before validation,
/// so a bad flag is reported like a bad key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub listen: Vec<String>,
    pub data_dir: Option<String>,
    pub smarthost: Option<String>,
    pub hostname: Option<String>,
}

impl Overrides {
    pub fn apply(&self, file: &mut ConfigFile) {
        if !self.listen.is_empty() {
            file.listen = Some(self.listen.clone());
        }
        if let Some(dir) = &self.data_dir {
            file.data_dir = Some(dir.clone());
        }
        // `--smarthost` replaces the list with one route: the first entry's settings (tls,
        // ca_file, credentials) with this address, so the flag changes only where mail goes.
        if let Some(address) = &self.smarthost {
            let mut first = file
                .smarthost
                .take()
                .and_then(|tables| tables.sections().first().cloned())
                .unwrap_or_default();
            first.address = Some(address.clone());
            file.smarthost = Some(SmarthostTables::One(first));
        }
        if let Some(name) = &self.hostname {
            file.hostname = Some(name.clone());
        }
    }
}

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

impl Default for Config {
    /// The embedded defaults: what `outpost` with no arguments runs on (docs/configuration.md documents them).
    fn default() -> Self {
        Self {
            hostname: system_hostname(),
            data_dir: PathBuf::from("./outpost-data"),
            listen: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2525)],
            listen_tls: Vec::new(),
            require_tls: false,
            tls: None,
            users: Vec::new(),
            relay_from: vec![
                IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
                IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            ],
            max_message_size: 10 * MIB,
            max_recipients: 100,
            max_connections: 32,
            max_errors: 10,
            smarthosts: Vec::new(),
            queue: QueueConfig {
                retry_min: Duration::from_secs(30),
                retry_max: Duration::from_secs(15 * 60),
                max_age: Duration::from_secs(5 * 24 * 3600),
                max_bytes: 256 * MIB,
                failed_retention: Duration::from_secs(7 * 24 * 3600),
            },
            store: StoreConfig { cache_bytes: MIB },
            timeouts: Timeouts {
                command: Duration::from_secs(5 * 60),
                data: Duration::from_secs(3 * 60),
                smarthost: Duration::from_secs(5 * 60),
                smarthost_data_end: Duration::from_secs(10 * 60),
            },
            metrics: None,
            rate_limit: None,
            priority: Vec::new(),
            coalesce: None,
        }
    }
}

impl Config {
    /// Reads and validates `path` (or only the defaults when `None`), with `overrides` on top.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let (origin, file) = Self::read(path, overrides)?;
        Self::from_file(&file).map_err(|problems| ConfigError { origin, problems })
    }

    /// For `queue`, `status` and `sendmail`, which need only `data_dir`, `hostname` and the
    /// limits: like `load`, but `[tls]`, `[[users]]` and the smarthost's credentials are not
    /// checked, so a user who may not read the key or password files can still run them.
    pub fn load_client(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let (origin, mut file) = Self::read(path, overrides)?;
        file.tls = None;
        file.users.clear();
        file.listen_tls = None;
        file.require_tls = None;
        if let Some(tables) = file.smarthost.as_mut() {
            for smarthost in tables.sections_mut() {
                smarthost.ca_file = None;
                smarthost.username = None;
                smarthost.password_file = None;
                smarthost.oauth2_token_url = None;
                smarthost.oauth2_client_id = None;
                smarthost.oauth2_client_secret_file = None;
                smarthost.oauth2_refresh_token_file = None;
                smarthost.oauth2_scope = None;
            }
        }
        Self::from_file(&file).map_err(|problems| ConfigError { origin, problems })
    }

    /// Reads `path` (or starts from the defaults when `None`) and applies `overrides`: the
    /// common first stage of `load` and `load_client`.
    fn read(
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<(String, ConfigFile), ConfigError> {
        let (origin, mut file) = match path {
            None => ("defaults".to_owned(), ConfigFile::default()),
            Some(path) => {
                let origin = path.display().to_string();
                let parsed = std::fs::read_to_string(path)
                    .map_err(|e| Problem::new("(file)", format!("cannot read: {e}")))
                    .and_then(|text| ConfigFile::parse(&text));
                match parsed {
                    Ok(file) => (origin, file),
                    Err(problem) => {
                        return Err(ConfigError {
                            origin,
                            problems: vec![problem],
                        })
                    }
                }
            }
        };
        overrides.apply(&mut file);
        Ok((origin, file))
    }

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
            smarthosts: v.smarthosts(file.smarthost.as_ref()),
            queue: v.queue(&file.queue, d.queue),
            store: StoreConfig {
                cache_bytes: v.size(
                    "store.cache_bytes",
                    file.store.cache_bytes,
                    d.store.cache_bytes,
                    MIN_CACHE_BYTES,
                ),
            },
            timeouts: v.timeouts(&file.timeouts, d.timeouts),
            metrics: match file.metrics.as_ref().and_then(|m| m.listen.as_deref()) {
                None => d.metrics,
                Some(addr) => v
                    .addresses("metrics.listen", &[addr.to_owned()])
                    .into_iter()
                    .next(),
            },
            rate_limit: v.rate_limit(file.rate_limit.as_ref()),
            priority: file
                .priority
                .iter()
                .enumerate()
                .filter_map(|(i, rule)| v.priority_rule(i + 1, rule))
                .collect(),
            coalesce: v.coalesce(file.coalesce.as_ref()),
        };
        config.cross_check(&mut v.problems);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(v.problems)
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

    /// The effective configuration as TOML that `Config::load` reads back to the same value.
    pub fn to_toml(&self) -> String {
        fn list<T: fmt::Display>(items: &[T]) -> String {
            let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
            format!("[{}]", quoted.join(", "))
        }
        let dur = |d: Duration| toml_str(&humantime::format_duration(d).to_string());
        let mut out = String::new();
        out += &format!("hostname = {}\n", toml_str(&self.hostname));
        out += &format!(
            "data_dir = {}\n",
            toml_str(&self.data_dir.display().to_string())
        );
        out += &format!("listen = {}\n", list(&self.listen));
        out += &format!("listen_tls = {}\n", list(&self.listen_tls));
        out += &format!("require_tls = {}\n", self.require_tls);
        out += &format!("relay_from = {}\n", list(&self.relay_from));
        out += &format!("max_message_size = {}\n", self.max_message_size);
        out += &format!("max_recipients = {}\n", self.max_recipients);
        out += &format!("max_connections = {}\n", self.max_connections);
        out += &format!("max_errors = {}\n", self.max_errors);
        if let Some(tls) = &self.tls {
            let path = |p: &Path| toml_str(&p.display().to_string());
            out += &format!(
                "\n[tls]\ncert = {}\nkey = {}\n",
                path(&tls.cert),
                path(&tls.key)
            );
        }
        for user in &self.users {
            out += &format!(
                "\n[[users]]\nname = {}\npassword_hash = {}\n",
                toml_str(&user.name),
                toml_str(&user.password_hash)
            );
        }
        // One entry keeps the `[smarthost]` form every config before failover used.
        let header = if self.smarthosts.len() == 1 {
            "[smarthost]"
        } else {
            "[[smarthost]]"
        };
        if self.smarthosts.is_empty() {
            out += "\n# [smarthost]: none configured; mail is accepted and held\n";
        }
        for s in &self.smarthosts {
            out += &format!("\n{header}\naddress = {}\n", toml_str(&s.address));
            out += &format!("tls = {}\n", toml_str(s.tls.as_str()));
            if let Some(ca) = &s.ca_file {
                out += &format!("ca_file = {}\n", toml_str(&ca.display().to_string()));
            }
            if let Some(auth) = &s.auth {
                out += &format!("username = {}\n", toml_str(&auth.username));
                out += &format!(
                    "password_file = {}\n",
                    toml_str(&auth.password_file.display().to_string())
                );
            }
            if let Some(oauth) = &s.oauth2 {
                out += &format!("username = {}\n", toml_str(&oauth.username));
                out += &format!("oauth2_token_url = {}\n", toml_str(&oauth.token_url));
                out += &format!("oauth2_client_id = {}\n", toml_str(&oauth.client_id));
                if let Some(file) = &oauth.client_secret_file {
                    let file = file.display().to_string();
                    out += &format!("oauth2_client_secret_file = {}\n", toml_str(&file));
                }
                let file = oauth.refresh_token_file.display().to_string();
                out += &format!("oauth2_refresh_token_file = {}\n", toml_str(&file));
                if let Some(scope) = &oauth.scope {
                    out += &format!("oauth2_scope = {}\n", toml_str(scope));
                }
            }
        }
        let q = &self.queue;
        out += &format!("\n[queue]\nretry_min = {}\n", dur(q.retry_min));
        out += &format!(
            "retry_max = {}\nmax_age = {}\n",
            dur(q.retry_max),
            dur(q.max_age)
        );
        out += &format!("max_bytes = {}\n", q.max_bytes);
        out += &format!("failed_retention = {}\n", dur(q.failed_retention));
        out += &format!("\n[store]\ncache_bytes = {}\n", self.store.cache_bytes);
        let t = &self.timeouts;
        out += &format!(
            "\n[timeouts]\ncommand = {}\ndata = {}\n",
            dur(t.command),
            dur(t.data)
        );
        out += &format!("smarthost = {}\n", dur(t.smarthost));
        out += &format!("smarthost_data_end = {}\n", dur(t.smarthost_data_end));
        if let Some(addr) = self.metrics {
            out += &format!("\n[metrics]\nlisten = \"{addr}\"\n");
        }
        for rule in &self.priority {
            out += "\n[[priority]]\n";
            if let Some(sender) = &rule.sender {
                let sender = if sender.is_empty() { "<>" } else { sender };
                out += &format!("sender = {}\n", toml_str(sender));
            }
            if let Some(recipient) = &rule.recipient {
                out += &format!("recipient = {}\n", toml_str(recipient));
            }
            if let Some((name, value)) = &rule.header {
                out += &format!("header = {}\nvalue = {}\n", toml_str(name), toml_str(value));
            }
            out += &format!("level = \"{}\"\n", rule.priority);
        }
        if let Some(limit) = self.rate_limit {
            out += &format!(
                "\n[rate_limit]\nper_sender = {}\nwindow = {}\n",
                limit.messages,
                dur(limit.window)
            );
        }
        if let Some(policy) = self.coalesce {
            out += &format!(
                "\n[coalesce]\nwindow = {}\nmax_parts = {}\nmin = {}\n",
                dur(policy.window),
                policy.max_parts,
                policy.min
            );
        }
        out
    }
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn toml_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
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

    /// One `[[priority]]` entry (`n` counts from 1, as `priority[n]` in messages).
    fn priority_rule(&mut self, n: usize, rule: &file::PrioritySection) -> Option<PriorityRule> {
        let key = |k: &str| format!("priority[{n}].{k}");
        let priority = match rule.level.as_deref() {
            None => {
                self.problem(
                    &key("level"),
                    "is required: urgent, high, normal or low".into(),
                );
                return None;
            }
            Some(text) => match Priority::parse(text) {
                Some(p) => p,
                None => {
                    self.problem(
                        &key("level"),
                        format!("{text:?} is not one of urgent, high, normal, low"),
                    );
                    return None;
                }
            },
        };
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

    /// Every entry, in order; problems name the entry (`smarthost[2].address`).
    fn smarthosts(&mut self, tables: Option<&SmarthostTables>) -> Vec<Smarthost> {
        let Some(tables) = tables else {
            return Vec::new();
        };
        let sections = tables.sections();
        if sections.len() > MAX_SMARTHOSTS {
            self.problem(
                "smarthost",
                format!(
                    "{} entries; at most {MAX_SMARTHOSTS} are tried in order",
                    sections.len()
                ),
            );
        }
        let mut out: Vec<Smarthost> = Vec::with_capacity(sections.len());
        let mut seen: Vec<(String, &str)> = Vec::new();
        for (index, section) in sections.iter().enumerate() {
            let key = tables.key(index);
            if let Some(address) = section.address.as_deref() {
                if let Some((other, _)) = seen.iter().find(|(_, a)| *a == address) {
                    self.problem(
                        &dotted(&key, "address"),
                        format!("{address:?} is already {other}: each route is tried once"),
                    );
                }
                seen.push((key.clone(), address));
            }
            if let Some(smarthost) = self.smarthost(&key, section) {
                out.push(smarthost);
            }
        }
        out
    }

    /// One entry; `key` is `smarthost` or `smarthost[N]`.
    fn smarthost(&mut self, key: &str, section: &file::SmarthostSection) -> Option<Smarthost> {
        let address = match section.address.as_deref() {
            None => {
                self.problem(
                    &dotted(key, "address"),
                    "missing: [smarthost] needs address = \"host:port\"".to_owned(),
                );
                None
            }
            Some(address) if !is_host_port(address) => {
                self.problem(
                    &dotted(key, "address"),
                    format!("{address:?} is not host:port (a port is required)"),
                );
                None
            }
            Some(address) => Some(address.to_owned()),
        };
        let tls = match section.tls.as_deref() {
            None | Some("starttls") => Some(SmarthostTls::StartTls),
            Some("tls") => Some(SmarthostTls::Implicit),
            Some("none") => Some(SmarthostTls::None),
            Some(other) => {
                self.problem(
                    &dotted(key, "tls"),
                    format!("{other:?} is not one of \"none\", \"starttls\", \"tls\""),
                );
                None
            }
        };
        let ca_file = match section.ca_file.as_deref() {
            None => Some(None),
            Some(path) => self
                .readable_file(&dotted(key, "ca_file"), Some(path))
                .map(Some),
        };
        let (auth, oauth2) = if section.oauth2_token_url.is_some() {
            (Some(None), self.smarthost_oauth2(key, section, tls))
        } else {
            for (name, value) in [
                ("oauth2_client_id", &section.oauth2_client_id),
                (
                    "oauth2_client_secret_file",
                    &section.oauth2_client_secret_file,
                ),
                (
                    "oauth2_refresh_token_file",
                    &section.oauth2_refresh_token_file,
                ),
                ("oauth2_scope", &section.oauth2_scope),
            ] {
                if value.is_some() {
                    self.problem(
                        &dotted(key, name),
                        "needs oauth2_token_url (the token endpoint)".to_owned(),
                    );
                }
            }
            (self.smarthost_auth(key, section, tls), Some(None))
        };
        Some(Smarthost {
            address: address?,
            tls: tls?,
            ca_file: ca_file?,
            auth: auth?,
            oauth2: oauth2?,
        })
    }

    /// `oauth2_token_url` is set: `username`, `oauth2_client_id` and
    /// `oauth2_refresh_token_file` are required, `password_file` is refused, and so is
    /// `tls = "none"` (the token would go in clear).
    fn smarthost_oauth2(
        &mut self,
        key: &str,
        section: &file::SmarthostSection,
        tls: Option<SmarthostTls>,
    ) -> Option<Option<SmarthostOAuth2>> {
        let mut ok = true;
        if section.password_file.is_some() {
            self.problem(
                &dotted(key, "password_file"),
                "cannot be combined with oauth2_token_url: choose a password or OAuth2".to_owned(),
            );
            ok = false;
        }
        if tls == Some(SmarthostTls::None) {
            self.problem(
                &dotted(key, "oauth2_token_url"),
                "AUTH would send the access token in clear: set tls = \"starttls\" or \"tls\""
                    .to_owned(),
            );
            ok = false;
        }
        let token_url = section.oauth2_token_url.clone().unwrap_or_default();
        if let Err(e) = crate::forward::oauth::TokenUrl::parse(&token_url) {
            self.problem(&dotted(key, "oauth2_token_url"), e);
            ok = false;
        }
        let mut required = |name: &str, value: &Option<String>| match value {
            Some(value) if !value.is_empty() => Some(value.clone()),
            _ => {
                self.problem(
                    &dotted(key, name),
                    "missing: oauth2_token_url needs it".to_owned(),
                );
                None
            }
        };
        let username = required("username", &section.username);
        let client_id = required("oauth2_client_id", &section.oauth2_client_id);
        let refresh_token_file = required(
            "oauth2_refresh_token_file",
            &section.oauth2_refresh_token_file,
        );
        let refresh_token_file = match refresh_token_file {
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(text) if text.trim().is_empty() => {
                    self.problem(
                        &dotted(key, "oauth2_refresh_token_file"),
                        format!("{path:?} is empty"),
                    );
                    None
                }
                Ok(_) => Some(PathBuf::from(path)),
                Err(e) => {
                    self.problem(
                        &dotted(key, "oauth2_refresh_token_file"),
                        format!("cannot read {path:?}: {e}"),
                    );
                    None
                }
            },
            None => None,
        };
        let client_secret = match &section.oauth2_client_secret_file {
            None => Some(None),
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => {
                    Some(Some(Secret::new(text.trim().to_owned())))
                }
                Ok(_) => {
                    self.problem(
                        &dotted(key, "oauth2_client_secret_file"),
                        format!("{path:?} is empty"),
                    );
                    None
                }
                Err(e) => {
                    self.problem(
                        &dotted(key, "oauth2_client_secret_file"),
                        format!("cannot read {path:?}: {e}"),
                    );
                    None
                }
            },
        };
        if !ok {
            return None;
        }
        Some(Some(SmarthostOAuth2 {
            username: username?,
            token_url,
            client_id: client_id?,
            client_secret_file: section
                .oauth2_client_secret_file
                .as_ref()
                .map(PathBuf::from),
            client_secret: client_secret?,
            refresh_token_file: refresh_token_file?,
            scope: section.oauth2_scope.clone().filter(|s| !s.is_empty()),
        }))
    }

    /// `username` + `password_file`, both or neither; never with `tls = "none"`.
    fn smarthost_auth(
        &mut self,
        key: &str,
        section: &file::SmarthostSection,
        tls: Option<SmarthostTls>,
    ) -> Option<Option<SmarthostAuth>> {
        let (username, password_file) = match (&section.username, &section.password_file) {
            (None, None) => return Some(None),
            (Some(username), Some(file)) => (username, file),
            (Some(_), None) => {
                self.problem(
                    &dotted(key, "password_file"),
                    "missing: username needs it".to_owned(),
                );
                return None;
            }
            (None, Some(_)) => {
                self.problem(
                    &dotted(key, "username"),
                    "missing: password_file needs it".to_owned(),
                );
                return None;
            }
        };
        if tls == Some(SmarthostTls::None) {
            self.problem(
                &dotted(key, "username"),
                "AUTH would send the password in clear: set tls = \"starttls\" or \"tls\""
                    .to_owned(),
            );
            return None;
        }
        let password = match std::fs::read_to_string(password_file) {
            Ok(text) => {
                let text = text.strip_suffix('\n').unwrap_or(&text);
                text.strip_suffix('\r').unwrap_or(text).to_owned()
            }
            Err(e) => {
                self.problem(
                    &dotted(key, "password_file"),
                    format!("cannot read {password_file:?}: {e}"),
                );
                return None;
            }
        };
        if password.is_empty() {
            self.problem(
                &dotted(key, "password_file"),
                format!("{password_file:?} is empty"),
            );
            return None;
        }
        Some(Some(SmarthostAuth {
            username: username.clone(),
            password_file: PathBuf::from(password_file),
            password: Secret::new(password),
        }))
    }
}

/// `key.field`: a key inside a table (`smarthost[2].address`).
fn dotted(key: &str, field: &str) -> String {
    format!("{key}.{field}")
}

/// Checks the shape of a SHA-512-crypt string (`$6$[rounds=N$]salt$hash`, as made by
/// `mkpasswd -m sha-512` or `openssl passwd -6`); anything else is refused with what it is.
fn check_sha512_crypt(hash: &str) -> Result<(), String> {
    const CRYPT_CHARS: &str = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let Some(rest) = hash.strip_prefix("$6$") else {
        let scheme = match hash.split('$').nth(1) {
            _ if !hash.starts_with('$') => {
                return Err(
                    "looks like a plaintext password; store a SHA-512-crypt hash \
                            (mkpasswd -m sha-512, or openssl passwd -6)"
                        .to_owned(),
                )
            }
            Some("1") => "MD5-crypt ($1$)",
            Some("2a" | "2b" | "2y") => "bcrypt ($2…$)",
            Some("5") => "SHA-256-crypt ($5$)",
            Some("y") => "yescrypt ($y$)",
            Some(s) if s.starts_with("argon2") => "Argon2",
            _ => "an unknown scheme",
        };
        return Err(format!(
            "{scheme} is not supported; use SHA-512-crypt ($6$: mkpasswd -m sha-512, or \
             openssl passwd -6)"
        ));
    };
    let mut parts: Vec<&str> = rest.split('$').collect();
    if let Some(rounds) = parts.first().and_then(|p| p.strip_prefix("rounds=")) {
        match rounds.parse::<u64>() {
            Ok(n) if (MIN_CRYPT_ROUNDS..=MAX_CRYPT_ROUNDS).contains(&n) => {}
            _ => {
                return Err(format!(
                    "rounds={rounds} is outside {MIN_CRYPT_ROUNDS}..={MAX_CRYPT_ROUNDS}"
                ))
            }
        }
        parts.remove(0);
    }
    let [salt, digest] = parts.as_slice() else {
        return Err("is not $6$salt$hash".to_owned());
    };
    let crypt_chars = |s: &str| s.chars().all(|c| CRYPT_CHARS.contains(c));
    if salt.is_empty() || salt.len() > 16 || !crypt_chars(salt) {
        return Err("has a bad salt (1 to 16 characters of [./0-9A-Za-z])".to_owned());
    }
    if digest.len() != 86 || !crypt_chars(digest) {
        return Err("has a bad hash part (86 characters of [./0-9A-Za-z])".to_owned());
    }
    Ok(())
}

/// `/proc/sys/kernel/hostname` if it is a usable domain name, else `localhost`.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| is_hostname(name))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// RFC 1035 / RFC 5321 §4.1.2 `Domain` syntax (letters, digits, hyphens, dots), or an address
/// literal `[…]`. The name goes into every reply, so anything else (spaces, CR, LF) is refused.
fn is_hostname(name: &str) -> bool {
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        let inner = inner.strip_prefix("IPv6:").unwrap_or(inner);
        return inner.parse::<IpAddr>().is_ok();
    }
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `host:port` or `[v6]:port` with a non-zero port.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => is_hostname(host),
    };
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_text(text: &str) -> Result<Config, Vec<Problem>> {
        let file = ConfigFile::parse(text).map_err(|p| vec![p])?;
        Config::from_file(&file)
    }

    fn keys(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(from_text("").unwrap(), Config::default());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let d = Config::default();
        assert_eq!(
            d.listen,
            vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(d.data_dir, PathBuf::from("./outpost-data"));
        let relay: Vec<String> = d.relay_from.iter().map(ToString::to_string).collect();
        assert_eq!(relay, ["127.0.0.0/8", "::1/128"]);
        assert_eq!(d.max_message_size, 10 * 1024 * 1024);
        assert_eq!(
            (d.max_recipients, d.max_connections, d.max_errors),
            (100, 32, 10)
        );
        assert!(d.smarthosts.is_empty());
        assert_eq!(d.queue.retry_min, Duration::from_secs(30));
        assert_eq!(d.queue.retry_max, Duration::from_secs(900));
        assert_eq!(d.queue.max_age, Duration::from_secs(5 * 86_400));
        assert_eq!(d.queue.max_bytes, 256 * 1024 * 1024);
        assert_eq!(d.queue.failed_retention, Duration::from_secs(7 * 86_400));
        assert_eq!(d.store.cache_bytes, 1024 * 1024);
        assert_eq!(d.timeouts.command, Duration::from_secs(300));
        assert_eq!(d.timeouts.data, Duration::from_secs(180));
        assert_eq!(d.timeouts.smarthost, Duration::from_secs(300));
        assert_eq!(d.timeouts.smarthost_data_end, Duration::from_secs(600));
        assert!(is_hostname(&d.hostname));
    }

    #[test]
    fn full_file_is_typed() {
        let c = from_text(
            r#"
hostname = "relay.example.org"
data_dir = "/var/spool/outpost"
listen = ["0.0.0.0:25", "[::]:25"]
relay_from = ["192.168.1.0/24", "10.0.0.7"]
max_message_size = 1048576
max_recipients = 50
max_connections = 8
max_errors = 3
[smarthost]
address = "mail.example.org:587"
tls = "none"
[queue]
retry_min = "1m"
retry_max = "1h"
max_age = "3d"
max_bytes = 1073741824
failed_retention = "1d"
[store]
cache_bytes = 2097152
[timeouts]
command = "1m"
data = "2m"
smarthost = "30s"
smarthost_data_end = "5m"
"#,
        )
        .unwrap();
        assert_eq!(c.hostname, "relay.example.org");
        assert_eq!(c.listen.len(), 2);
        assert!(c.relay_from[1].contains(&"10.0.0.7".parse::<IpAddr>().unwrap()));
        assert_eq!(c.relay_from[1].prefix_len(), 32);
        assert_eq!(c.max_recipients, 50);
        assert_eq!(
            c.smarthosts,
            [Smarthost {
                address: "mail.example.org:587".into(),
                tls: SmarthostTls::None,
                ca_file: None,
                auth: None,
                oauth2: None,
            }]
        );
        assert_eq!(c.queue.max_age, Duration::from_secs(3 * 86_400));
        assert_eq!(c.timeouts.smarthost, Duration::from_secs(30));
    }

    #[test]
    fn unknown_key_is_rejected_naming_it() {
        let problems = from_text("max_message_sise = 5\n").unwrap_err();
        assert_eq!(keys(&problems), ["max_message_sise"]);
    }

    #[test]
    fn bad_duration_names_its_key() {
        let problems = from_text("[queue]\nretry_min = \"soon\"\n").unwrap_err();
        assert_eq!(keys(&problems), ["queue.retry_min"]);
        assert!(problems[0].message.contains("\"soon\""), "{}", problems[0]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = from_text(
            "listen = [\"localhost:25\"]\nrelay_from = [\"10.0.0.0/33\"]\nmax_recipients = 0\n\
             [timeouts]\ncommand = \"0s\"\ndata = \"x\"\n",
        )
        .unwrap_err();
        assert_eq!(
            keys(&problems),
            [
                "listen",
                "relay_from",
                "max_recipients",
                "timeouts.command",
                "timeouts.data"
            ]
        );
    }

    #[test]
    fn smarthost_needs_a_port() {
        let problems = from_text("[smarthost]\naddress = \"mail.example.org\"\n").unwrap_err();
        assert_eq!(keys(&problems), ["smarthost.address"]);
        assert!(from_text("[smarthost]\naddress = \"[::1]:25\"\n").is_ok());
        assert!(from_text("[smarthost]\naddress = \"mx:0\"\n").is_err());
    }

    #[test]
    fn smarthost_tls_defaults_to_starttls() {
        let modes = [
            ("", SmarthostTls::StartTls),
            ("tls = \"starttls\"\n", SmarthostTls::StartTls),
            ("tls = \"tls\"\n", SmarthostTls::Implicit),
            ("tls = \"none\"\n", SmarthostTls::None),
        ];
        for (line, mode) in modes {
            let text = format!("[smarthost]\naddress = \"mx:25\"\n{line}");
            assert_eq!(from_text(&text).unwrap().smarthosts[0].tls, mode);
        }
        let problems = from_text("[smarthost]\naddress = \"mx:25\"\ntls = \"yes\"\n").unwrap_err();
        assert_eq!(keys(&problems), ["smarthost.tls"]);
    }

    /// `openssl passwd -6 -salt Zx9q2mB7 camera-pw`
    const HASH: &str = "$6$Zx9q2mB7$7euoUzgiGoP/JG7b1oQ/kumgdF6Rt0IqsCVygrN/0nG5ZBWl2b626DDBnWCtQE\
                        YUs8L4DnHNrO320C/FDxqzL0";

    fn tls_dir() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        for name in ["cert.pem", "key.pem", "ca.pem", "password"] {
            std::fs::write(dir.path().join(name), "secret-pw\n").unwrap();
        }
        let tls = format!(
            "[tls]\ncert = {}\nkey = {}\n",
            toml_str(&dir.path().join("cert.pem").display().to_string()),
            toml_str(&dir.path().join("key.pem").display().to_string())
        );
        (dir, tls)
    }

    #[test]
    fn tls_users_and_smarthost_auth_are_typed() {
        let (dir, tls) = tls_dir();
        let path = |name: &str| toml_str(&dir.path().join(name).display().to_string());
        let text = format!(
            "listen_tls = [\"127.0.0.1:465\"]\nrequire_tls = true\n{tls}\n\
             [[users]]\nname = \"camera\"\npassword_hash = \"{HASH}\"\n\
             [[users]]\nname = \"printer\"\npassword_hash = \"$6$rounds=10000$abc$IdWKNKTJEb8LxY7CGg8YBXlvtfZzFw7Mp/r6niK9YB2mdvgY..TKjv1T..8RadRt2qvUHYRLr/TsVArtr91iR1\"\n\
             [smarthost]\naddress = \"smtp.example.com:465\"\ntls = \"tls\"\nca_file = {}\n\
             username = \"relay\"\npassword_file = {}\n",
            path("ca.pem"),
            path("password")
        );
        let c = from_text(&text).unwrap();
        assert_eq!(c.listen_tls, vec!["127.0.0.1:465".parse().unwrap()]);
        assert!(c.require_tls);
        assert_eq!(c.tls.as_ref().unwrap().cert, dir.path().join("cert.pem"));
        assert_eq!(c.users.len(), 2);
        assert_eq!(c.users[0].name, "camera");
        let smarthost = c.smarthosts[0].clone();
        assert_eq!(smarthost.tls, SmarthostTls::Implicit);
        let auth = smarthost.auth.unwrap();
        assert_eq!(auth.username, "relay");
        assert_eq!(
            auth.password.expose(),
            "secret-pw",
            "trailing newline stripped"
        );
        assert!(
            !format!("{c:?}").contains("secret-pw"),
            "Debug leaks the password"
        );
        assert!(!c.to_toml().contains("secret-pw"));
        assert_eq!(from_text(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn password_hashes_other_than_sha512_crypt_are_refused_by_name() {
        let (_dir, tls) = tls_dir();
        let cases = [
            ("hunter2", "plaintext"),
            ("$1$abc$xyz", "MD5-crypt"),
            ("$2b$12$abcdefghijklmnopqrstuv", "bcrypt"),
            ("$5$abc$xyz", "SHA-256-crypt"),
            ("$y$j9T$abc$xyz", "yescrypt"),
            ("$6$abc", "$6$salt$hash"),
            ("$6$abc$short", "hash part"),
            ("$6$rounds=10$abc$x", "rounds=10"),
        ];
        for (hash, needle) in cases {
            let text = format!(
                "{tls}[[users]]\nname = \"u\"\npassword_hash = {}\n",
                toml_str(hash)
            );
            let problems = from_text(&text).unwrap_err();
            assert_eq!(keys(&problems), ["users.password_hash"], "{hash}");
            assert!(
                problems[0].message.contains(needle),
                "{hash}: {}",
                problems[0]
            );
        }
    }

    #[test]
    fn tls_features_need_the_tls_section() {
        let text = format!(
            "listen_tls = [\"127.0.0.1:465\"]\nrequire_tls = true\n\
             [[users]]\nname = \"camera\"\npassword_hash = \"{HASH}\"\n"
        );
        let problems = from_text(&text).unwrap_err();
        assert_eq!(keys(&problems), ["listen_tls", "require_tls", "users"]);
        let problems = from_text("[tls]\ncert = \"/nonexistent/c.pem\"\n").unwrap_err();
        assert_eq!(keys(&problems), ["tls.cert", "tls.key"]);
    }

    #[test]
    fn smarthost_auth_needs_both_keys_and_tls() {
        let (dir, _) = tls_dir();
        let file = toml_str(&dir.path().join("password").display().to_string());
        let base = "[smarthost]\naddress = \"mx:587\"\n";
        let problems = from_text(&format!("{base}username = \"u\"\n")).unwrap_err();
        assert_eq!(keys(&problems), ["smarthost.password_file"]);
        let problems = from_text(&format!("{base}password_file = {file}\n")).unwrap_err();
        assert_eq!(keys(&problems), ["smarthost.username"]);
        let text = format!("{base}tls = \"none\"\nusername = \"u\"\npassword_file = {file}\n");
        let problems = from_text(&text).unwrap_err();
        assert_eq!(keys(&problems), ["smarthost.username"]);
        assert!(problems[0].message.contains("in clear"), "{}", problems[0]);
        let text = format!("{base}username = \"u\"\npassword_file = \"/nonexistent/pw\"\n");
        assert_eq!(
            keys(&from_text(&text).unwrap_err()),
            ["smarthost.password_file"]
        );
    }

    #[test]
    fn smarthost_oauth2_is_typed_and_round_trips() {
        let (dir, _) = tls_dir();
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(path("refresh"), "0.AX8A-refresh\n").unwrap();
        std::fs::write(path("secret"), "client-s3cret\n").unwrap();
        let text = format!(
            "[smarthost]\naddress = \"smtp.office365.com:587\"\nusername = \"site@example.com\"\n\
             oauth2_token_url = \"https://login.microsoftonline.com/common/oauth2/v2.0/token\"\n\
             oauth2_client_id = \"9e5f94bc\"\noauth2_client_secret_file = {}\n\
             oauth2_refresh_token_file = {}\n\
             oauth2_scope = \"https://outlook.office.com/SMTP.Send offline_access\"\n",
            toml_str(&path("secret")),
            toml_str(&path("refresh")),
        );
        let c = from_text(&text).unwrap();
        let smarthost = &c.smarthosts[0];
        assert_eq!(smarthost.auth, None);
        let oauth = smarthost.oauth2.as_ref().unwrap();
        assert_eq!(oauth.username, "site@example.com");
        assert_eq!(oauth.client_id, "9e5f94bc");
        assert_eq!(
            oauth.client_secret.as_ref().unwrap().expose(),
            "client-s3cret"
        );
        assert_eq!(oauth.refresh_token_file, dir.path().join("refresh"));
        let shown = format!("{c:?}{}", c.to_toml());
        assert!(
            !shown.contains("s3cret") && !shown.contains("AX8A"),
            "{shown}"
        );
        assert_eq!(from_text(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn smarthost_oauth2_problems_name_the_key() {
        let (dir, _) = tls_dir();
        let refresh = dir.path().join("refresh");
        std::fs::write(&refresh, "r\n").unwrap();
        let refresh = toml_str(&refresh.display().to_string());
        let pw = toml_str(&dir.path().join("password").display().to_string());
        let base = "[smarthost]\naddress = \"mx:587\"\n";
        let url = "oauth2_token_url = \"https://login.example/token\"\n";
        let full = format!(
            "{base}{url}username = \"u\"\noauth2_client_id = \"c\"\n\
             oauth2_refresh_token_file = {refresh}\n"
        );
        assert!(from_text(&full).is_ok());
        let cases = [
            (
                format!("{full}password_file = {pw}\n"),
                "smarthost.password_file",
            ),
            (
                format!("{full}tls = \"none\"\n"),
                "smarthost.oauth2_token_url",
            ),
            (
                full.replace("https://login", "http://login"),
                "smarthost.oauth2_token_url",
            ),
            (full.replace("username = \"u\"\n", ""), "smarthost.username"),
            (
                full.replace("oauth2_client_id = \"c\"\n", ""),
                "smarthost.oauth2_client_id",
            ),
            (
                full.replace(&refresh, "\"/nonexistent/refresh\""),
                "smarthost.oauth2_refresh_token_file",
            ),
            (
                format!("{base}username = \"u\"\noauth2_client_id = \"c\"\npassword_file = {pw}\n"),
                "smarthost.oauth2_client_id",
            ),
        ];
        for (text, key) in cases {
            let problems = from_text(&text).unwrap_err();
            assert_eq!(keys(&problems), [key], "{text}");
        }
    }

    #[test]
    fn hostname_with_spaces_or_crlf_is_refused() {
        for bad in ["bad name", "a\r\n250 x", "", "-a.example", "a..b"] {
            let text = format!("hostname = {bad:?}\n");
            assert_eq!(
                keys(&from_text(&text).unwrap_err()),
                ["hostname"],
                "{bad:?}"
            );
        }
        assert!(from_text("hostname = \"[192.0.2.1]\"\n").is_ok());
    }

    #[test]
    fn retry_min_above_retry_max_is_refused() {
        let problems = from_text("[queue]\nretry_min = \"1h\"\nretry_max = \"1m\"\n").unwrap_err();
        assert_eq!(keys(&problems), ["queue.retry_min"]);
    }

    #[test]
    fn message_larger_than_queue_is_refused() {
        let problems =
            from_text("max_message_size = 2000\n[queue]\nmax_bytes = 1000\n").unwrap_err();
        assert_eq!(keys(&problems), ["max_message_size"]);
    }

    #[test]
    fn priority_rules_are_typed_checked_and_read_back() {
        let text = "[[priority]]\nsender = \"ups@*\"\nrecipient = \"*@pager.example\"\n\
                    level = \"urgent\"\n\n[[priority]]\nheader = \"X-Priority\"\n\
                    value = \"1*\"\nlevel = \"high\"\n\n[[priority]]\nsender = \"<>\"\n\
                    level = \"low\"\n\n[[priority]]\nheader = \"Importance\"\nlevel = \"high\"\n";
        let config = from_text(text).unwrap();
        assert_eq!(
            config.priority,
            [
                PriorityRule {
                    sender: Some("ups@*".into()),
                    recipient: Some("*@pager.example".into()),
                    header: None,
                    priority: Priority::Urgent,
                },
                PriorityRule {
                    sender: None,
                    recipient: None,
                    header: Some(("x-priority".into(), "1*".into())),
                    priority: Priority::High,
                },
                PriorityRule {
                    sender: Some(String::new()),
                    recipient: None,
                    header: None,
                    priority: Priority::Low,
                },
                PriorityRule {
                    sender: None,
                    recipient: None,
                    header: Some(("importance".into(), "*".into())),
                    priority: Priority::High,
                },
            ]
        );
        assert_eq!(from_text(&config.to_toml()).unwrap(), config);
        for (text, key) in [
            ("[[priority]]\nsender = \"a@b\"\n", "priority[1].level"),
            (
                "[[priority]]\nsender = \"a@b\"\nlevel = \"asap\"\n",
                "priority[1].level",
            ),
            ("[[priority]]\nlevel = \"high\"\n", "priority[1]"),
            (
                "[[priority]]\nvalue = \"1\"\nlevel = \"high\"\n",
                "priority[1].value",
            ),
            (
                "[[priority]]\nheader = \"X Priority:\"\nlevel = \"high\"\n",
                "priority[1].header",
            ),
            (
                "[[priority]]\nsender = \"a@b\"\nlevel = \"low\"\n[[priority]]\nlevel = \"low\"\n",
                "priority[2]",
            ),
        ] {
            let problems = from_text(text).unwrap_err();
            assert_eq!(keys(&problems), [key], "{text}");
        }
    }

    #[test]
    fn coalesce_is_typed_checked_and_read_back() {
        assert_eq!(from_text("").unwrap().coalesce, None);
        let config = from_text("[coalesce]\n").unwrap();
        let defaults = CoalescePolicy {
            window: Duration::from_secs(3600),
            max_parts: 100,
            min: 2,
        };
        assert_eq!(config.coalesce, Some(defaults));
        let config = from_text("[coalesce]\nwindow = \"10m\"\nmax_parts = 20\nmin = 5\n").unwrap();
        let policy = CoalescePolicy {
            window: Duration::from_secs(600),
            max_parts: 20,
            min: 5,
        };
        assert_eq!(config.coalesce, Some(policy));
        assert!(config
            .to_toml()
            .contains("[coalesce]\nwindow = \"10m\"\nmax_parts = 20\nmin = 5\n"));
        assert_eq!(from_text(&config.to_toml()).unwrap(), config);
        for (text, key) in [
            ("[coalesce]\nwindow = \"0s\"\n", "coalesce.window"),
            ("[coalesce]\nwindow = \"31d\"\n", "coalesce.window"),
            ("[coalesce]\nmax_parts = 1\n", "coalesce.max_parts"),
            ("[coalesce]\nmax_parts = 5000\n", "coalesce.max_parts"),
            ("[coalesce]\nmin = 1\n", "coalesce.min"),
            ("[coalesce]\nmax_parts = 5\nmin = 6\n", "coalesce.min"),
            ("[coalesce]\nwindows = \"1h\"\n", "windows"),
        ] {
            let err = format!("{:?}", from_text(text).unwrap_err());
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn rate_limit_is_typed_checked_and_read_back() {
        assert_eq!(from_text("").unwrap().rate_limit, None);
        let config = from_text("[rate_limit]\nper_sender = 60\nwindow = \"10m\"\n").unwrap();
        let limit = SenderLimit {
            messages: 60,
            window: Duration::from_secs(600),
        };
        assert_eq!(config.rate_limit, Some(limit));
        assert!(config
            .to_toml()
            .contains("[rate_limit]\nper_sender = 60\nwindow = \"10m\""));
        // The window defaults to an hour.
        let config = from_text("[rate_limit]\nper_sender = 5\n").unwrap();
        assert_eq!(
            config.rate_limit.map(|l| l.window),
            Some(Duration::from_secs(3600))
        );
        for (text, key) in [
            ("[rate_limit]\nwindow = \"1h\"\n", "rate_limit.per_sender"),
            ("[rate_limit]\nper_sender = 0\n", "rate_limit.per_sender"),
            (
                "[rate_limit]\nper_sender = 5\nwindow = \"0s\"\n",
                "rate_limit.window",
            ),
            (
                "[rate_limit]\nper_sender = 5\nwindow = \"31d\"\n",
                "rate_limit.window",
            ),
            (
                "[rate_limit]\nper_sender = 5\nwindow = \"soon\"\n",
                "rate_limit.window",
            ),
        ] {
            let problems = from_text(text).unwrap_err();
            assert_eq!(keys(&problems), [key], "{text}");
        }
    }

    #[test]
    fn metrics_listen_is_typed_and_read_back() {
        let config = from_text("[metrics]\nlisten = \"127.0.0.1:9325\"\n").unwrap();
        assert_eq!(config.metrics, Some("127.0.0.1:9325".parse().unwrap()));
        assert!(config
            .to_toml()
            .contains("[metrics]\nlisten = \"127.0.0.1:9325\""));
        let again = from_text(&config.to_toml()).unwrap();
        assert_eq!(again, config);
        let problems = from_text("[metrics]\nlisten = \"localhost\"\n").unwrap_err();
        assert_eq!(keys(&problems), ["metrics.listen"]);
        assert_eq!(from_text("").unwrap().metrics, None);
    }

    #[test]
    fn client_load_ignores_unreadable_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "data_dir = \"/q\"\n[smarthost]\naddress = \"h:587\"\nusername = \"u\"\n\
             password_file = \"/nonexistent/pw\"\n",
        )
        .unwrap();
        assert!(Config::load(Some(&path), &Overrides::default()).is_err());
        let config = Config::load_client(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/q"));
    }

    #[test]
    fn overrides_replace_file_values() {
        let mut file =
            ConfigFile::parse("listen = [\"127.0.0.1:25\"]\nhostname = \"a.example\"\n").unwrap();
        let overrides = Overrides {
            listen: vec!["127.0.0.1:2600".into(), "[::1]:2600".into()],
            data_dir: Some("/tmp/q".into()),
            smarthost: Some("mx.example:25".into()),
            hostname: Some("b.example".into()),
        };
        overrides.apply(&mut file);
        let c = Config::from_file(&file).unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/q"));
        assert_eq!(c.hostname, "b.example");
        let addresses: Vec<_> = c.smarthosts.iter().map(|s| s.address.as_str()).collect();
        assert_eq!(addresses, ["mx.example:25"]);
    }

    #[test]
    fn smarthost_flag_replaces_the_list_keeping_the_first_entrys_settings() {
        let mut file = ConfigFile::parse(
            "[[smarthost]]\naddress = \"a:25\"\ntls = \"none\"\n\
             [[smarthost]]\naddress = \"b:25\"\n",
        )
        .unwrap();
        let overrides = Overrides {
            smarthost: Some("mx.example:2525".into()),
            ..Overrides::default()
        };
        overrides.apply(&mut file);
        let c = Config::from_file(&file).unwrap();
        assert_eq!(c.smarthosts.len(), 1);
        assert_eq!(c.smarthosts[0].address, "mx.example:2525");
        assert_eq!(c.smarthosts[0].tls, SmarthostTls::None);
    }

    #[test]
    fn smarthost_array_is_kept_in_order() {
        let c = from_text(
            "[[smarthost]]\naddress = \"fibre.example:587\"\n\
             [[smarthost]]\naddress = \"lte.example:465\"\ntls = \"tls\"\n\
             [[smarthost]]\naddress = \"[::1]:25\"\ntls = \"none\"\n",
        )
        .unwrap();
        let routes: Vec<_> = c
            .smarthosts
            .iter()
            .map(|s| (s.address.as_str(), s.tls))
            .collect();
        assert_eq!(
            routes,
            [
                ("fibre.example:587", SmarthostTls::StartTls),
                ("lte.example:465", SmarthostTls::Implicit),
                ("[::1]:25", SmarthostTls::None),
            ]
        );
        // An empty array holds mail, like no table at all.
        assert!(from_text("smarthost = []\n").unwrap().smarthosts.is_empty());
    }

    #[test]
    fn smarthost_array_problems_name_the_entry() {
        let problems = from_text(
            "[[smarthost]]\naddress = \"a:25\"\n\
             [[smarthost]]\naddress = \"b\"\ntls = \"maybe\"\n\
             [[smarthost]]\nusername = \"u\"\n\
             [[smarthost]]\naddress = \"a:25\"\n",
        )
        .unwrap_err();
        assert_eq!(
            keys(&problems),
            [
                "smarthost[2].address",
                "smarthost[2].tls",
                "smarthost[3].address",
                "smarthost[3].password_file",
                "smarthost[4].address",
            ]
        );
        assert!(
            problems[4].message.contains("already smarthost[1]"),
            "{}",
            problems[4]
        );
        // The one-table form keeps its key without an index.
        let problems = from_text("[smarthost]\ntls = \"none\"\n").unwrap_err();
        assert_eq!(keys(&problems), ["smarthost.address"]);
    }

    #[test]
    fn too_many_smarthosts_is_a_problem() {
        let mut text = String::new();
        for n in 0..=MAX_SMARTHOSTS {
            text += &format!("[[smarthost]]\naddress = \"mx{n}.example:25\"\n");
        }
        let problems = from_text(&text).unwrap_err();
        assert_eq!(keys(&problems), ["smarthost"]);
    }

    #[test]
    fn effective_config_reads_back_to_the_same_value() {
        let mut c = Config {
            smarthosts: vec![Smarthost {
                address: "mx.example:25".into(),
                tls: SmarthostTls::None,
                ca_file: None,
                auth: None,
                oauth2: None,
            }],
            ..Config::default()
        };
        c.listen.push("[::1]:25".parse().unwrap());
        c.rate_limit = Some(SenderLimit {
            messages: 100,
            window: Duration::from_secs(90),
        });
        assert!(c
            .to_toml()
            .contains("\n[smarthost]\naddress = \"mx.example:25\"\n"));
        assert_eq!(from_text(&c.to_toml()).unwrap(), c);
        c.smarthosts.push(Smarthost {
            address: "lte.example:587".into(),
            tls: SmarthostTls::StartTls,
            ca_file: None,
            auth: None,
            oauth2: None,
        });
        let text = c.to_toml();
        assert_eq!(text.matches("\n[[smarthost]]\n").count(), 2, "{text}");
        assert_eq!(from_text(&text).unwrap(), c);
        let d = Config::default();
        assert_eq!(from_text(&d.to_toml()).unwrap(), d);
    }

    #[test]
    fn unreadable_file_is_a_config_error_naming_the_file() {
        let err = Config::load(
            Some(Path::new("/nonexistent/outpost.toml")),
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.origin, "/nonexistent/outpost.toml");
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
