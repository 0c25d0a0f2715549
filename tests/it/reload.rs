//! Reload against the real binary: SIGHUP and `outpost reload` re-read the config file; new
//! mail and new sessions use the new one while the queue and open sessions carry on; a broken
//! config is refused with its per-key messages and the old one keeps serving; a renewed
//! certificate is presented by new handshakes; a restart-only key keeps its value;
//! `RELOADING=1`/`READY=1` reach the service manager. And the signals that would end a process
//! by default end this one cleanly or not at all.

use std::time::Duration;

use crate::logs::{bind_datagram, recv_until, BareDaemon};
use crate::util::*;

const DELIVERY: Duration = Duration::from_secs(30);

/// Rewrites the relay's config file with `config`.
fn rewrite(relay: &RelayProcess, config: &RelayConfig) {
    std::fs::write(&relay.config_path, config.render(&relay.data_dir)).unwrap();
}

/// A session that got as far as RCPT, to finish after a reload.
fn open_session(port: u16, id: &str) -> RawClient {
    let mut client = RawClient::ready(port);
    client.cmd_expect("MAIL FROM:<a@lan.test>", 250);
    client.cmd_expect(&format!("RCPT TO:<{id}@example.org>"), 250);
    client
}

fn send_tagged(port: u16, id: &str) -> String {
    let mut client = RawClient::ready(port);
    assert_queued(&client.send_mail("a@lan.test", &["b@example.org"], &tagged_message(id)))
}

/// The lines `check-config` prints for `config`, without the `outpost: config error: ` prefix.
fn config_problems(relay: &RelayProcess) -> Vec<String> {
    let run = relay.command(&["check-config"], b"");
    assert_eq!(run.code, Some(78), "{run}");
    let problems: Vec<String> = run
        .stderr
        .lines()
        .filter_map(|l| l.split_once("config error: ").map(|(_, p)| p.to_owned()))
        .collect();
    assert!(!problems.is_empty(), "{run}");
    problems
}

#[test]
fn sighup_sends_new_mail_to_the_new_smarthost_and_keeps_the_queue_and_open_sessions() {
    // The old smarthost takes mail but defers `queued@`: that message stays in the queue.
    let old = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { to } if to.starts_with("queued@") => Some(reply(451, "4.3.0 not now")),
        _ => None,
    });
    let relay = RelayProcess::start_to(old.port());
    send_tagged(relay.port(), "before");
    assert!(old.wait_for(1, DELIVERY).is_some(), "{}", relay.dump());
    let mut client = RawClient::ready(relay.port());
    let queued = tagged_message("queued");
    assert_queued(&client.send_mail("a@lan.test", &["queued@example.org"], &queued));
    relay.wait_log("to=<queued@example.org> relay=127.0.0.1");
    let mut open = open_session(relay.port(), "open");

    let new = Smarthost::start();
    rewrite(&relay, &RelayConfig::with_smarthost(new.port()));
    relay.signal("HUP");
    relay.wait_log("configuration reloaded");

    // The session opened before the reload completes.
    open.cmd_expect("DATA", 354);
    open.send(&tagged_message("open"));
    open.send(b".\r\n");
    assert_queued(&open.read_reply());
    open.cmd_expect("QUIT", 221);
    send_tagged(relay.port(), "after");
    let all = new.wait_for(3, DELIVERY);
    assert!(all.is_some(), "{}", relay.dump());
    let ids = new.arrived_ids();
    for id in ["queued", "open", "after"] {
        assert_eq!(ids.get(id), Some(&1), "{id}: {ids:?}\n{}", relay.dump());
    }
    assert!(relay.wait_queue_empty(), "{}", relay.dump());
    assert_eq!(old.count(), 1, "{}", relay.dump());
}

#[test]
fn a_broken_config_is_refused_and_the_old_one_keeps_serving() {
    let old = Smarthost::start();
    let new = Smarthost::start();
    let relay = RelayProcess::start_to(old.port());
    // `[[users]]` without a password hash, and a new smarthost that must not be used.
    let broken = RelayConfig::with_smarthost(new.port()).top("[[users]]\nname = \"camera\"");
    rewrite(&relay, &broken);
    let problems = config_problems(&relay);

    relay.signal("HUP");
    let line = relay.wait_log("reload refused");
    assert!(line.contains("ERROR"), "{line}");
    let log = relay.log();
    for problem in &problems {
        assert!(
            log.lines()
                .any(|l| l.contains("reload refused") && l.contains(problem.as_str())),
            "{problem:?} not logged:\n{log}"
        );
    }
    // `outpost reload` says the same and exits 78 (the client itself does not check users).
    let run = relay.command(&["reload"], b"");
    assert_eq!(run.code, Some(78), "{run}");
    for problem in &problems {
        assert!(run.stderr.contains(problem.as_str()), "{problem:?}: {run}");
    }
    // The old config is still in force: mail goes to the old smarthost.
    send_tagged(relay.port(), "still-old");
    assert!(old.wait_for(1, DELIVERY).is_some(), "{}", relay.dump());
    assert!(relay.wait_queue_empty(), "{}", relay.dump());
    assert_eq!(new.count(), 0);
    // Fixed, the config reloads.
    rewrite(&relay, &RelayConfig::with_smarthost(new.port()));
    let reloaded = relay.command_ok(&["reload"]);
    assert!(reloaded.contains("configuration reloaded"), "{reloaded}");
    send_tagged(relay.port(), "new");
    assert!(new.wait_for(1, DELIVERY).is_some(), "{}", relay.dump());
}

/// `[tls]` with the certificate of `pki`, and no smarthost.
fn tls_config(pki: &TestPki) -> RelayConfig {
    RelayConfig::default().section(&format!(
        "[tls]\ncert = {}\nkey = {}",
        toml_string(&pki.cert.to_string_lossy()),
        toml_string(&pki.key.to_string_lossy())
    ))
}

/// Whether a new session's STARTTLS handshake verifies against `pki`'s CA.
fn handshake_trusting(port: u16, pki: &TestPki) -> bool {
    let mut client = RawClient::ready(port);
    client.starttls(pki.client_config()).is_ok()
}

#[test]
fn a_renewed_certificate_is_presented_by_new_handshakes() {
    let (first, renewed) = (TestPki::loopback(), TestPki::loopback());
    let relay = RelayProcess::start_with(tls_config(&first));
    assert!(handshake_trusting(relay.port(), &first));
    assert!(!handshake_trusting(relay.port(), &renewed));
    // A session opened before the reload keeps the certificate it started with.
    let mut before = RawClient::ready(relay.port());

    rewrite(&relay, &tls_config(&renewed));
    let out = relay.command_ok(&["reload"]);
    assert!(out.contains("configuration reloaded"), "{out}");
    assert!(
        handshake_trusting(relay.port(), &renewed),
        "{}",
        relay.dump()
    );
    assert!(!handshake_trusting(relay.port(), &first));
    assert!(before.starttls(first.client_config()).is_ok());
}

#[test]
fn a_changed_restart_only_key_is_named_and_keeps_its_value() {
    let relay = RelayProcess::start("");
    let port = relay.port();
    let moved = RelayConfig::default().top("max_recipients = 1");
    let text = moved
        .render(&relay.data_dir)
        .replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:1\"]");
    std::fs::write(&relay.config_path, text).unwrap();
    let out = relay.command_ok(&["reload"]);
    assert!(out.contains("need a restart: listen"), "{out}");
    let warning = relay.wait_log("reload: listen changed");
    assert!(warning.contains("WARN"), "{warning}");
    // Still listening where it was, with the key a reload applies in force.
    let mut client = RawClient::ready(port);
    client.cmd_expect("MAIL FROM:<a@lan.test>", 250);
    client.cmd_expect("RCPT TO:<b@example.org>", 250);
    let second = client.cmd("RCPT TO:<c@example.org>");
    assert_eq!(second.code / 100, 4, "{second}\n{}", relay.dump());
}

#[test]
fn reloading_then_ready_reach_the_notify_socket() {
    let dir = TestDir::new();
    let (socket, path) = bind_datagram(&dir, "notify");
    let daemon = BareDaemon::start("", &[("NOTIFY_SOCKET", path.display().to_string())]);
    recv_until(&socket, |d| d.starts_with("READY=1"));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let seen = recv_until(&socket, |d| d.starts_with("RELOADING=1"));
    let reloading = seen.last().unwrap();
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{reloading:?}");
    let seen = recv_until(&socket, |d| d.starts_with("READY=1"));
    assert!(
        seen.iter()
            .all(|d| d.starts_with("STATUS=") || d.starts_with("READY=1")),
        "{seen:#?}"
    );
    daemon.wait_log("configuration reloaded");
}

#[test]
fn signals_end_the_daemon_cleanly_or_not_at_all() {
    let mut relay = RelayProcess::start("");
    for (signal, name) in [("USR2", "Usr2"), ("ALRM", "Alarm"), ("PROF", "Prof")] {
        relay.signal(signal);
        relay.wait_log(&format!("received {name}: ignored"));
        send_tagged(relay.port(), signal);
    }
    // Blocked: they stay pending and the daemon goes on serving (40 and 64: real-time signals
    // of both C libraries; 32 to 34 are their own).
    for signal in ["PWR", "STKFLT", "40", "64"] {
        relay.signal(signal);
        send_tagged(relay.port(), signal);
    }
    relay.signal("QUIT");
    let status = relay.wait_exit(Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", relay.dump());
    assert!(
        relay.log().contains("shutdown complete"),
        "{}",
        relay.dump()
    );
    assert!(!relay.data_dir.join("control.sock").exists());
}
