//! `outpost test`: the route as configured, checked from this machine, or a test message sent
//! through the daemon. `outpost test [RCPT]` prints the config in use, the queue and the daemon,
//! then each smarthost's dialogue up to `RCPT TO` and back out (`forward::probe`): nothing is
//! sent. `outpost test --send RCPT` queues a real test message through the daemon's submission
//! socket and follows it until a smarthost took it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cli::TestArgs;
use crate::config::Config;
use crate::control::{self, ClientError, Request};
use crate::forward::probe::{self, Envelope};
use crate::forward::ForwardParams;
use crate::sendmail::{self, Origin, SendmailArgs, SubmitError};

/// sysexits(3).
const EX_USAGE: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;
const EX_TEMPFAIL: u8 = 75;
/// No smarthost is configured (all mail is held).
const EX_CONFIG: u8 = 78;
/// How long `--send` waits by default, and between two questions to the daemon.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// Runs `outpost test`: prints every step and returns the exit code (0: every smarthost works;
/// else the first failure's code, `forward::probe`).
pub fn main(
    config: &Config,
    origin: &str,
    params: &ForwardParams,
    recipient: Option<&str>,
    out: &mut dyn FnMut(&str),
) -> u8 {
    out(&format!("config: {origin}"));
    out(&format!("queue: {}", config.data_dir.display()));
    let daemon = match control::request(&config.data_dir, &Request::Status) {
        Ok(_) => "running".to_owned(),
        Err(ClientError::NotRunning(..)) => "not running".to_owned(),
        Err(ClientError::Starting(pid)) => format!("starting (pid {pid}): opening its queue"),
        Err(e) => format!("unknown: {e}"),
    };
    out(&format!("daemon: {daemon}"));
    if params.smarthosts.is_empty() {
        out("no smarthost is configured: all mail is held");
        return EX_CONFIG;
    }
    let envelope = envelope(config, recipient);
    out(&format!(
        "envelope: MAIL FROM:<{}> RCPT TO:<{}> (a smarthost's `from` replaces the sender)",
        envelope.sender,
        envelope.recipients.join(">, <")
    ));
    let code = probe::run(params, &envelope, out);
    let verdict = if code == 0 { "works" } else { "FAILS" };
    out(&format!("route: {verdict}"));
    code
}

/// The sender a local submission by this user gets and `recipient` (default `root`), mapped
/// as intake maps them (domain, aliases, `admin`).
fn envelope(config: &Config, recipient: Option<&str>) -> Envelope {
    let map = config.local.address_map();
    Envelope {
        sender: map.sender(&login()),
        recipients: map.recipients(&[recipient.unwrap_or("root")]),
    }
}

/// `outpost test --send RCPT`: queues a test message through the daemon's submission socket
/// (as `sendmail` does) and waits, within `--timeout` (default 60 s), until a smarthost took it
/// (exit 0) or refused it for good (69); still queued at the deadline: 75, the message stays.
pub fn send(config: &Config, args: &TestArgs, out: &mut dyn FnMut(&str)) -> u8 {
    let Some(recipient) = args.recipient.as_deref() else {
        return EX_USAGE;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let user = login();
    let origin = Origin {
        hostname: &config.local.domain,
        user: &user,
        now_unix: now.as_secs(),
        unique: u64::from(now.subsec_nanos()) ^ (u64::from(std::process::id()) << 32),
    };
    let sendmail_args = SendmailArgs {
        recipients: vec![recipient.to_owned()],
        ..SendmailArgs::default()
    };
    let raw = format!(
        "Subject: outpost test message\n\nThis message was sent by `outpost test --send` on {} \
         to check the route to the smarthost.\n",
        config.hostname
    );
    let prepared = match sendmail::prepare(&sendmail_args, &origin, raw.as_bytes()) {
        Ok(prepared) => prepared,
        Err(e) => {
            out(&format!("cannot make the test message: {e}"));
            return e.code;
        }
    };
    let queued = match sendmail::submit::send(&sendmail::socket_path(&config.data_dir), &prepared) {
        Ok(text) => text,
        Err(e @ SubmitError::Down(_)) => {
            out(&format!("cannot queue the test message: {e}"));
            return EX_UNAVAILABLE;
        }
        Err(e) => {
            out(&format!("cannot queue the test message: {e}"));
            return e.exit_code();
        }
    };
    let id = queued
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned();
    // What the daemon's intake makes of the recipients (aliases, `admin`), as `test` shows it.
    let mapped = config.local.address_map().recipients(&prepared.recipients);
    out(&format!(
        "queued as {id}: from <{}> to <{}>",
        prepared.sender,
        mapped.join(">, <")
    ));
    wait_outcome(config, &id, args.timeout.unwrap_or(SEND_TIMEOUT), out)
}

/// Polls the daemon until message `id` was sent or bounced, or `timeout` passed.
fn wait_outcome(config: &Config, id: &str, timeout: Duration, out: &mut dyn FnMut(&str)) -> u8 {
    let start = Instant::now();
    let request = Request::Outcome(id.to_owned());
    loop {
        match control::request(&config.data_dir, &request) {
            Ok(response) if response.ok => {
                let outcome = response.body.trim();
                let ms = start.elapsed().as_millis();
                out(&format!("after {ms} ms: {outcome}"));
                return if outcome.starts_with("sent") {
                    0
                } else {
                    EX_UNAVAILABLE
                };
            }
            Ok(_) => {}
            Err(e) => {
                out(&format!("{e}"));
                return EX_UNAVAILABLE;
            }
        }
        if start.elapsed() >= timeout {
            let wait = humantime::format_duration(timeout);
            out(&format!(
                "not taken by a smarthost within {wait}: the message stays queued \
                 (`outpost queue show {id}` says why)"
            ));
            return EX_TEMPFAIL;
        }
        std::thread::sleep(POLL);
    }
}

/// The login name, as `sendmail` takes it for the default sender.
fn login() -> String {
    std::env::var("LOGNAME")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "root".into())
}
