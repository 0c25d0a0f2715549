//! outpost: a store-and-forward SMTP relay for embedded and edge hardware.
//!
//! Devices on a site's LAN hand outpost mail over SMTP; outpost journals every message durably
//! in an embedded sled store and pushes it to an upstream smarthost whenever the link is up.
//!
//! ```text
//!            SMTP                 bytes / replies           envelope + body
//!  device ─────────▶ listener ──▶ session (sans-I/O) ──▶ intake ──▶ store (sled + fdatasync)
//!                    net           smtp::server           ▲         │ due messages
//!  sendmail ─▶ maildrop ─▶ pickup (sendmail::pickup) ─────┤         ▼
//!                                          DSNs ──────────┘  forward (policy: backoff,
//!  smarthost ◀────── forwarder glue ◀── client session ◀──── per-recipient outcome, DSN)
//!            SMTP    forward::run       smtp::client
//! ```
//!
//! [`daemon`] builds all of it at start (the shared state in [`shared`], whole) and stops it
//! at shutdown; the parts below it never import it.
//!
//! What outpost does *not* do: it delivers only to the configured smarthosts, tried in order
//! (`[[smarthost]]` failover; no MX lookups), it never relays for hosts outside `relay_from`,
//! and it never answers 250 to a final dot before the message is on stable storage.
//!
//! # Layout
//! - [`daemon`]: the composition root: start-up, signals, the services' tasks, housekeeping,
//!   shutdown; the metrics endpoint and the link watcher (netlink).
//! - [`shared`]: the state the daemon's services share, built whole by the daemon.
//! - [`intake`]: the one door into the queue (SMTP, maildrop, DSNs): classification, the
//!   rate limit and free-space checks, the accepted counter, the `status=queued` line.
//! - [`smtp`]: the SMTP protocol core. No I/O, no clock: bytes in, replies and decisions out.
//! - [`net`]: the SMTP side facing clients: the accept loop, one task per connection,
//!   timeouts, STARTTLS, and the AUTH password check.
//! - [`tls`]: rustls configs from PEM files, the stream STARTTLS upgrades in place, and the
//!   wording of handshake failures (used by `net` and `forward`).
//! - [`store`]: the journal; the only module that touches sled.
//! - [`forward`]: delivery to the smarthost; retry, outcome, smarthost choice (ordered failover)
//!   and DSN policy as pure functions; OAuth 2.0 access tokens for the smarthost (the refresh
//!   grant pure in `forward::oauth`, its HTTPS request in `forward::token`).
//! - [`config`]: the validated configuration and its embedded defaults.
//! - [`cli`]: the command line: argv to a `Cmd`, no I/O beyond the arguments.
//! - [`control`]: the control socket (`outpost queue`, `outpost status`): daemon and CLI side.
//! - [`sendmail`]: sendmail(1) into `data_dir/maildrop/`, and the daemon's pickup from there.
//! - [`message`]: RFC 5322 as pure functions: the header section, its fields, address lists
//!   and dates.
//! - [`priority`]: `[[priority]]` rules, the order queued mail goes in after an outage.
//! - [`coalesce`]: `[coalesce]`, alert storms delivered as one digest: Subject normalisation,
//!   the key stored at commit, grouping and the digest's layout (pure).
//! - [`rate`]: per-sender rate limits (`[rate_limit]`) as pure state over an explicit clock.
//! - [`clock`]: the queue clock, which counts time spent queued and ignores wall-clock jumps.
//! - [`wait`]: listening and re-checking: wake-ups, the shutdown flag, waits with deadlines.
//! - [`accept`]: the accept-until-shutdown loop of every listening service.
//! - [`logfmt`]: peer- and smarthost-chosen values in `key=value` log lines, quoted and escaped.
//!
//! Everything runs on one thread: a single `smol::LocalExecutor` drives every session and the
//! forwarder; sled runs its own flusher and I/O threads.

pub mod accept;
pub mod aliases;
pub mod cli;
pub mod clock;
pub mod coalesce;
pub mod config;
pub mod control;
pub mod daemon;
pub mod forward;
pub mod intake;
pub mod logfmt;
pub mod logging;
pub mod mapping;
pub mod message;
pub mod net;
pub mod priority;
pub mod rate;
pub mod sd_notify;
pub mod sendmail;
pub mod shared;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod wait;

/// `outpost --version` text (also the first line of `outpost status`).
pub fn version() -> String {
    format!("outpost {}", env!("CARGO_PKG_VERSION"))
}
