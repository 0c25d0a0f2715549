//! Delivery to the smarthost: one task that wakes on new mail, on the next due time, on a
//! flush request and at start, and pushes due messages over one or more sessions that share
//! the due mail, each message taken by one of them (`claims`). With several
//! smarthosts (`[[smarthost]]`), each pass sends over the first smarthost that is up or due for
//! a probe, and a site failure moves on to the next smarthost at once (`failover`, pure). The
//! smarthost is chosen per pass, never stored with a message.
//!
//! The glue (sockets, timers and store calls) is split by job: the task and its passes in
//! `run`, connecting and marking a smarthost up or down in `connect`, one message in
//! `deliver`, digests in `digest`, expiry and DSNs in `bounce`, and what `outpost status` sees
//! in `state`. What the SMTP dialogue means lives in `smtp::client` (sans-I/O); what to do
//! about a reply lives in `outcome`; when to retry in `schedule`; bounce messages in `dsn`;
//! the sender a smarthost with `from` requires in `rewrite`.
//! Never touches sled directly, never logs secrets.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::coalesce::CoalescePolicy;

pub use self::failover::SmarthostReport;
pub use self::run::{run, run_linked};
pub use self::state::{LinkReport, LinkState};
pub use self::token::OAuth2;
pub use crate::smtp::client::{ClientCredentials, CredentialKind, TlsPolicy};

mod bounce;
mod claims;
mod connect;
mod deliver;
mod digest;
pub mod dsn;
pub mod failover;
mod link;
pub mod oauth;
pub mod outcome;
pub mod probe;
pub mod rewrite;
mod run;
pub mod schedule;
mod state;
mod token;

/// Retry policy (config `[queue]`).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub max_age: Duration,
}

/// One smarthost (`[smarthost]` / `[[smarthost]]` entry) as the forwarder uses it.
#[derive(Clone, Debug)]
pub struct Smarthost {
    /// `host:port`, resolved at each connect.
    pub address: String,
    /// `tls`: `StartTls` and `Implicit` never fall back to plaintext.
    pub tls: TlsPolicy,
    /// Certificate roots for `StartTls`/`Implicit` (web PKI, or `ca_file`); required by them.
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    /// `username` + the password from `password_file`.
    pub credentials: Option<ClientCredentials>,
    /// OAuth 2.0 instead of `credentials`: the access token is fetched and cached here.
    pub oauth2: Option<OAuth2>,
    /// `from`: MAIL FROM (unless null) and From: of the mail sent over this smarthost
    /// (`rewrite`).
    pub from: Option<String>,
    /// `connections`: the most sessions a pass keeps open to this smarthost at once.
    pub connections: usize,
}

/// Everything the forwarder needs from the config.
#[derive(Clone, Debug)]
pub struct ForwardParams {
    /// The smarthosts in the order they are tried; empty holds all mail.
    pub smarthosts: Vec<Smarthost>,
    /// Our name in EHLO and in DSNs.
    pub hostname: String,
    pub policy: RetryPolicy,
    /// Max messages loaded per pass (the active window).
    pub window: usize,
    /// Timeout for connect and each reply (config `[timeouts] smarthost`).
    pub command_timeout: Duration,
    /// Timeout for the reply to the final dot (config `[timeouts] smarthost_data_end`, RFC 5321
    /// §4.5.3.2.6: 10 minutes).
    pub data_end_timeout: Duration,
    /// `[coalesce]`: due messages of one kind go out as one digest; `None`: off.
    pub coalesce: Option<CoalescePolicy>,
    /// The most bytes of originals one digest carries (`max_message_size`).
    pub max_digest_bytes: u64,
}

/// New parameters from a reload, taken by the forwarder before its next pass.
pub type NextParams = Rc<RefCell<Option<ForwardParams>>>;

/// Wall-clock Unix seconds: only for Date headers, never for queue decisions.
fn wall_clock_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
