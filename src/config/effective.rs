//! The effective configuration: `Config` and its parts, the typed and checked values the daemon
//! runs on, and their TOML form (what `check-config` prints). Builds nothing from text and
//! checks nothing: `validate` makes these values, `defaults` the embedded ones.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::local::LocalNames;
use super::token_url::TokenUrl;
use crate::coalesce::CoalescePolicy;
use crate::logging::LogTarget;
use crate::priority::PriorityRule;
use crate::rate::SenderLimit;
use crate::smtp::client::TlsPolicy;

/// Upper bound for `[[smarthost]]` entries: each has its own link state and, during an outage,
/// its own connect attempt (and timeout) in every pass.
pub const MAX_SMARTHOSTS: usize = 8;

/// `[smarthost] connections` when not given: two sessions drain a deep queue faster than one.
pub(super) const DEFAULT_SMARTHOST_CONNECTIONS: usize = 2;
/// Upper bound for `[smarthost] connections`.
pub(super) const MAX_SMARTHOST_CONNECTIONS: u64 = 16;

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
    /// `log`: where log lines go (`auto`: the journal under systemd, else stderr).
    pub log: LogTarget,
    /// More `Received:` fields than this: a mail loop, refused with 554 5.4.6.
    pub max_hops: u32,
    /// Every client must AUTH before MAIL (530 5.7.0 otherwise).
    pub require_auth: bool,
    /// `[smarthost]` or `[[smarthost]]`, in the order they are tried (failover); empty: mail is
    /// accepted and held.
    pub smarthosts: heapless::Vec<Smarthost, MAX_SMARTHOSTS>,
    pub queue: QueueConfig,
    pub store: StoreConfig,
    pub timeouts: Timeouts,
    pub notify: NotifyConfig,
    /// `[metrics] listen`: Prometheus text exposition on `GET /metrics`; `None`: off.
    pub metrics: Option<SocketAddr>,
    /// `[rate_limit]`: messages per envelope sender in a window; `None`: no limit.
    pub rate_limit: Option<SenderLimit>,
    /// `[[priority]]` rules in order (the first match decides; none: every message `normal`).
    pub priority: Vec<PriorityRule>,
    /// `[coalesce]`: alert storms delivered as digests; `None`: off.
    pub coalesce: Option<CoalescePolicy>,
    /// `domain`, `[aliases]`, `aliases_file`, `admin`: what local names become.
    pub local: LocalNames,
}

/// One `[smarthost]` / `[[smarthost]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Smarthost {
    /// `host:port`, port required; the host is resolved at each connect.
    pub address: String,
    /// `tls`: `starttls` (default) and `tls` never fall back to plaintext.
    pub tls: TlsPolicy,
    /// PEM CAs replacing the built-in web PKI roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// `username` + `password_file`: AUTH to the smarthost (never over plaintext).
    pub auth: Option<SmarthostAuth>,
    /// `username` + `oauth2_*`: AUTH OAUTHBEARER/XOAUTH2 with a token outpost refreshes.
    pub oauth2: Option<SmarthostOAuth2>,
    /// `from`: the envelope sender (unless null) and the From: address of all mail sent over
    /// this smarthost (hosted services accept only the authenticated mailbox).
    pub from: Option<String>,
    /// `connections`: the most sessions to this smarthost at once while mail is due (1–16).
    pub connections: usize,
}

/// OAuth 2.0 to the smarthost: the access token is fetched from `token_url` with the refresh
/// token in `refresh_token_file` (read at each refresh, so it can be replaced without a
/// restart; rewritten when the endpoint rotates it). The endpoint's certificate is checked
/// against the entry's `ca_file` or the web PKI roots, like the smarthost's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmarthostOAuth2 {
    /// The mailbox (`user=`/`a=` in the SASL message).
    pub username: String,
    /// `oauth2_token_url`, parsed at load.
    pub token_url: TokenUrl,
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    /// Read at load.
    pub client_secret: Option<Secret>,
    pub refresh_token_file: PathBuf,
    pub scope: Option<String>,
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
    /// Wraps a secret read from a file.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret itself, for the one place that sends it.
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

/// `[notify]`: the queue conditions `admin` is told about, each at most once per `interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyConfig {
    /// The oldest queued message has waited longer than this.
    pub queue_age: Duration,
    /// The queue holds more than this percentage of `[queue] max_bytes`.
    pub queue_fill: u8,
    /// The least time between two notices about one condition.
    pub interval: Duration,
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

impl Config {
    /// The effective configuration as TOML that `Config::load` reads back to the same value.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        self.toml_top(&mut out);
        // One entry keeps the `[smarthost]` form; several are `[[smarthost]]` tables.
        let header = if self.smarthosts.len() == 1 {
            "[smarthost]"
        } else {
            "[[smarthost]]"
        };
        if self.smarthosts.is_empty() {
            out += "\n# [smarthost]: none configured; mail is accepted and held\n";
        }
        for s in &self.smarthosts {
            toml_smarthost(&mut out, header, s);
        }
        self.toml_queue(&mut out);
        self.toml_policies(&mut out);
        out += &toml_aliases(&self.local);
        out
    }

    /// The top-level keys, `[tls]` and `[[users]]`.
    fn toml_top(&self, out: &mut String) {
        fn list<T: fmt::Display>(items: &[T]) -> String {
            let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
            format!("[{}]", quoted.join(", "))
        }
        *out += &format!("hostname = {}\n", toml_str(&self.hostname));
        *out += &format!("data_dir = {}\n", toml_path(&self.data_dir));
        *out += &format!("listen = {}\n", list(&self.listen));
        *out += &format!("listen_tls = {}\n", list(&self.listen_tls));
        *out += &format!("require_tls = {}\n", self.require_tls);
        *out += &format!("relay_from = {}\n", list(&self.relay_from));
        *out += &format!("max_message_size = {}\n", self.max_message_size);
        *out += &format!("max_recipients = {}\n", self.max_recipients);
        *out += &format!("max_connections = {}\n", self.max_connections);
        *out += &format!("max_errors = {}\n", self.max_errors);
        *out += &toml_local_keys(&self.local);
        *out += &format!("log = \"{}\"\n", self.log.as_str());
        *out += &format!("max_hops = {}\n", self.max_hops);
        *out += &format!("require_auth = {}\n", self.require_auth);
        if let Some(tls) = &self.tls {
            *out += &format!(
                "\n[tls]\ncert = {}\nkey = {}\n",
                toml_path(&tls.cert),
                toml_path(&tls.key)
            );
        }
        for user in &self.users {
            *out += &format!(
                "\n[[users]]\nname = {}\npassword_hash = {}\n",
                toml_str(&user.name),
                toml_str(&user.password_hash)
            );
        }
    }

    /// `[queue]`, `[store]`, `[timeouts]`, `[notify]` and `[metrics]`.
    fn toml_queue(&self, out: &mut String) {
        let q = &self.queue;
        *out += &format!("\n[queue]\nretry_min = {}\n", toml_duration(q.retry_min));
        *out += &format!(
            "retry_max = {}\nmax_age = {}\n",
            toml_duration(q.retry_max),
            toml_duration(q.max_age)
        );
        *out += &format!("max_bytes = {}\n", q.max_bytes);
        *out += &format!("failed_retention = {}\n", toml_duration(q.failed_retention));
        *out += &format!("\n[store]\ncache_bytes = {}\n", self.store.cache_bytes);
        let t = &self.timeouts;
        *out += &format!(
            "\n[timeouts]\ncommand = {}\ndata = {}\n",
            toml_duration(t.command),
            toml_duration(t.data)
        );
        *out += &format!("smarthost = {}\n", toml_duration(t.smarthost));
        *out += &format!(
            "smarthost_data_end = {}\n",
            toml_duration(t.smarthost_data_end)
        );
        let n = &self.notify;
        *out += &format!(
            "\n[notify]\nqueue_age = {}\nqueue_fill = {}\ninterval = {}\n",
            toml_duration(n.queue_age),
            n.queue_fill,
            toml_duration(n.interval)
        );
        if let Some(addr) = self.metrics {
            *out += &format!("\n[metrics]\nlisten = \"{addr}\"\n");
        }
    }

    /// `[[priority]]`, `[rate_limit]` and `[coalesce]`.
    fn toml_policies(&self, out: &mut String) {
        for rule in &self.priority {
            *out += "\n[[priority]]\n";
            if let Some(sender) = &rule.sender {
                let sender = if sender.is_empty() { "<>" } else { sender };
                *out += &format!("sender = {}\n", toml_str(sender));
            }
            if let Some(recipient) = &rule.recipient {
                *out += &format!("recipient = {}\n", toml_str(recipient));
            }
            if let Some((name, value)) = &rule.header {
                *out += &format!("header = {}\nvalue = {}\n", toml_str(name), toml_str(value));
            }
            *out += &format!("level = \"{}\"\n", rule.priority);
        }
        if let Some(limit) = self.rate_limit {
            *out += &format!(
                "\n[rate_limit]\nper_sender = {}\nwindow = {}\n",
                limit.messages,
                toml_duration(limit.window)
            );
        }
        if let Some(policy) = self.coalesce {
            *out += &format!(
                "\n[coalesce]\nwindow = {}\nmax_parts = {}\nmin = {}\n",
                toml_duration(policy.window),
                policy.max_parts,
                policy.min
            );
        }
    }
}

/// `domain`, `admin` and `aliases_file`: top-level keys.
fn toml_local_keys(local: &LocalNames) -> String {
    let mut out = format!("domain = {}\n", toml_str(&local.domain));
    if let Some(admin) = &local.admin {
        out += &format!("admin = {}\n", toml_str(admin));
    }
    if let Some(file) = &local.aliases_file {
        out += &format!("aliases_file = {}\n", toml_path(file));
    }
    out
}

/// The `[aliases]` table as configured (the file's entries stay in the file).
fn toml_aliases(local: &LocalNames) -> String {
    if local.table.is_empty() {
        return String::new();
    }
    let mut out = "\n[aliases]\n".to_owned();
    for (name, targets) in local.table.iter() {
        let list: Vec<String> = targets.iter().map(|t| toml_str(t)).collect();
        out += &format!("{} = [{}]\n", toml_str(name), list.join(", "));
    }
    out
}

/// One `[smarthost]` / `[[smarthost]]` table (`header` says which).
fn toml_smarthost(out: &mut String, header: &str, s: &Smarthost) {
    *out += &format!("\n{header}\naddress = {}\n", toml_str(&s.address));
    *out += &format!("tls = {}\n", toml_str(tls_key(s.tls)));
    if let Some(ca) = &s.ca_file {
        *out += &format!("ca_file = {}\n", toml_path(ca));
    }
    if let Some(auth) = &s.auth {
        *out += &format!("username = {}\n", toml_str(&auth.username));
        *out += &format!("password_file = {}\n", toml_path(&auth.password_file));
    }
    if let Some(oauth) = &s.oauth2 {
        *out += &format!("username = {}\n", toml_str(&oauth.username));
        *out += &format!(
            "oauth2_token_url = {}\n",
            toml_str(oauth.token_url.as_str())
        );
        *out += &format!("oauth2_client_id = {}\n", toml_str(&oauth.client_id));
        if let Some(file) = &oauth.client_secret_file {
            *out += &format!("oauth2_client_secret_file = {}\n", toml_path(file));
        }
        *out += &format!(
            "oauth2_refresh_token_file = {}\n",
            toml_path(&oauth.refresh_token_file)
        );
        if let Some(scope) = &oauth.scope {
            *out += &format!("oauth2_scope = {}\n", toml_str(scope));
        }
    }
    if let Some(from) = &s.from {
        *out += &format!("from = {}\n", toml_str(from));
    }
    *out += &format!("connections = {}\n", s.connections);
}

/// The `[smarthost] tls` value that selects `policy`.
fn tls_key(policy: TlsPolicy) -> &'static str {
    match policy {
        TlsPolicy::None => "none",
        TlsPolicy::StartTls => "starttls",
        TlsPolicy::Implicit => "tls",
    }
}

/// A humantime duration ("1h 30m") as a TOML string.
fn toml_duration(d: Duration) -> String {
    toml_str(&humantime::format_duration(d).to_string())
}

/// A path as a TOML string.
fn toml_path(path: &Path) -> String {
    toml_str(&path.display().to_string())
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
pub(super) fn toml_str(text: &str) -> String {
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
