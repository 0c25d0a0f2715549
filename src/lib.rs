//! outpost: a store-and-forward SMTP relay for embedded and edge hardware.
//!
//! Devices on a site's LAN hand outpost mail over SMTP; outpost journals every message durably
//! in an embedded sled store and pushes it to an upstream smarthost whenever the link is up.
//!
//! ```text
//!            SMTP                 bytes / replies           envelope + body
//!  device ─────────▶ listener ──▶ session (sans-I/O) ──▶ intake ──▶ store (sled + fdatasync)
//!                    net           smtp::server           ▲         │ due messages
//!  sendmail ─▶ submission socket ─▶ session (net, uid) ───┤         │
//!  sendmail ─▶ maildrop (daemon down) ─▶ sendmail::pickup ┤         ▼
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
//!
//! From the composition root down: a module imports only modules listed after it.
//! `python3 .ci/module-map.py` prints each module's lines, purpose and imports from the source,
//! `.ci/import-cycles.py` fails CI on an import cycle, and `docs/design.md` has the table with
//! what each module must never do.
//!
//! The daemon and the commands:
//! - [`daemon`]: the composition root: start-up, signals, the services' tasks, housekeeping,
//!   shutdown; the metrics endpoint and the link watcher (netlink).
//! - [`cli`]: the command line: argv to a `Cmd`, no I/O beyond the arguments.
//! - [`sendmail`]: sendmail(1) through the submission socket (and `-bs`), the maildrop while the
//!   daemon is down, and the daemon's untrusting pickup from there.
//! - [`control`]: the control socket (`outpost queue`, `outpost status`): daemon and CLI side.
//! - [`net`]: the SMTP side facing clients: the accept loops (TCP, and the local submission
//!   socket with the peer's uid), one task per connection, timeouts, STARTTLS, and the AUTH
//!   password check.
//! - [`route`]: `outpost test`: the route to every smarthost checked step by step, and a test
//!   message sent through the daemon.
//! - [`notice`]: the periodic word to `admin` about the queue (too old, too full, disk short).
//! - [`shared`]: the state the daemon's services share, built whole by the daemon.
//!
//! The queue:
//! - [`forward`]: delivery to the smarthost; retry, outcome, smarthost choice (ordered failover)
//!   and DSN policy as pure functions; OAuth 2.0 access tokens for the smarthost (the refresh
//!   grant pure in `forward::oauth`, its HTTPS request in `forward::token`).
//! - [`intake`]: the one door into the queue (SMTP, maildrop, DSNs): classification, the
//!   rate limit and free-space checks, the accepted counter, the `status=queued` line.
//! - [`store`]: the journal; the only module that touches sled.
//! - [`config`]: the validated configuration and its embedded defaults.
//! - [`mapping`]: local names and the mail domain: what `root` becomes before a message is
//!   queued (qualification, aliases, the admin address, sender rewriting); pure.
//! - [`aliases`]: the `[aliases]` table and an aliases(5) file as one table from local name to
//!   addresses; address entries only, pure.
//!
//! Pure protocol and policy (no I/O, no clock):
//! - [`smtp`]: the SMTP protocol core: bytes in, replies and decisions out.
//! - [`message`]: RFC 5322: the header section, its fields, address lists and dates.
//! - [`priority`]: `[[priority]]` rules, the order queued mail goes in after an outage.
//! - [`coalesce`]: `[coalesce]`, alert storms delivered as one digest: Subject normalisation,
//!   the key stored at commit, grouping and the digest's layout.
//! - [`rate`]: per-sender rate limits (`[rate_limit]`) as state over an explicit clock.
//! - [`clock`]: the queue clock, which counts time spent queued and ignores wall-clock jumps.
//!
//! Shared services, below the parts that use them:
//! - [`accept`]: the accept-until-shutdown loop of every listening service.
//! - [`wait`]: listening and re-checking: wake-ups, the shutdown flag, waits with deadlines.
//! - [`tls`]: rustls configs from PEM files, the stream STARTTLS upgrades in place, and the
//!   wording of handshake failures (used by `net` and `forward`).
//! - [`logging`]: where log lines go: stderr, the journal (with sd-daemon priorities) or
//!   syslog.
//! - [`sd_notify`]: the systemd notification protocol (sd_notify(3)) without libsystemd.
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
#[cfg(test)]
#[path = "../tests/kit/mod.rs"]
mod kit;
pub mod logfmt;
pub mod logging;
pub mod mapping;
pub mod message;
pub mod net;
pub mod notice;
pub mod priority;
pub mod rate;
pub mod route;
pub mod sd_notify;
pub mod sendmail;
pub mod shared;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod wait;

/// `outpost --version` text (also the first line of `outpost status`): the crate version, and
/// the git commit when built from a checkout (build.rs), e.g. `outpost 0.1.0 (1a2b3c4d5e6f)`.
pub fn version() -> String {
    match option_env!("OUTPOST_GIT_COMMIT") {
        Some(commit) => format!("outpost {} ({commit})", env!("CARGO_PKG_VERSION")),
        None => format!("outpost {}", env!("CARGO_PKG_VERSION")),
    }
}
