//! `outpost test [RCPT]`: the route as configured, checked from this machine: the config in
//! use, the queue and the daemon, then each smarthost's dialogue up to `RCPT TO` and back out
//! (`forward::probe`), so nothing is sent. Talks to the daemon only to ask whether it runs.

use std::io::Write;

use crate::config::Config;
use crate::control::{self, ClientError, Request};
use crate::forward::probe::{self, Envelope};
use crate::forward::ForwardParams;

/// sysexits(3): no smarthost is configured (all mail is held).
const EX_CONFIG: u8 = 78;

/// Runs `outpost test`: prints every step and returns the exit code (0: every smarthost works;
/// else the first failure's code, `forward::probe`).
pub fn main(
    config: &Config,
    origin: &str,
    params: &ForwardParams,
    recipient: Option<&str>,
    out: &mut dyn Write,
) -> u8 {
    let _ = writeln!(out, "config: {origin}");
    let _ = writeln!(out, "queue: {}", config.data_dir.display());
    let daemon = match control::request(&config.data_dir, &Request::Status) {
        Ok(_) => "running".to_owned(),
        Err(ClientError::NotRunning(..)) => "not running".to_owned(),
        Err(e) => format!("unknown: {e}"),
    };
    let _ = writeln!(out, "daemon: {daemon}");
    if params.smarthosts.is_empty() {
        let _ = writeln!(out, "no smarthost is configured: all mail is held");
        return EX_CONFIG;
    }
    let envelope = envelope(config, recipient);
    let _ = writeln!(
        out,
        "envelope: MAIL FROM:<{}> RCPT TO:<{}> (a smarthost's `from` replaces the sender)",
        envelope.sender,
        envelope.recipients.join(">, <")
    );
    let code = probe::run(params, &envelope, out);
    let verdict = if code == 0 { "works" } else { "FAILS" };
    let _ = writeln!(out, "route: {verdict}");
    code
}

/// The sender a local submission by this user gets and `recipient` (default `root`), mapped
/// as intake maps them (domain, aliases, `admin`).
fn envelope(config: &Config, recipient: Option<&str>) -> Envelope {
    let map = config.local.address_map();
    let user = std::env::var("LOGNAME")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "root".into());
    Envelope {
        sender: map.sender(&user),
        recipients: map.recipients(&[recipient.unwrap_or("root")]),
    }
}

/// `outpost test --send RCPT`: not built yet.
pub fn send(_config: &Config, _args: &crate::cli::TestArgs, out: &mut dyn Write) -> u8 {
    let _ = writeln!(out, "todo");
    1
}
