//! Hostile and absurd input at the edges: configuration values at their bounds, an open relay
//! by configuration, bare CR and NUL in a body, mail loops, smarthost replies that would forge
//! log fields, and the queue's file modes. Each runs the real binary against the kit's peers.

use std::path::Path;
use std::time::Duration;

use crate::util::{
    assert_queued, reply, run_command_in, toml_string, CmdRun, RawClient, RelayConfig,
    RelayProcess, Smarthost, Stage, TestDir, OUTPOST,
};

const DELIVERY: Duration = Duration::from_secs(30);

/// `outpost check-config` on `body` (with a data dir in a fresh test dir).
fn check_config(body: &str) -> CmdRun {
    let dir = TestDir::new();
    let data_dir = dir.join("data");
    let text = format!(
        "data_dir = {}\n{body}",
        toml_string(&data_dir.to_string_lossy())
    );
    let path = dir.join("outpost.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_string_lossy().into_owned();
    run_command_in(
        Some(dir.path()),
        Path::new(OUTPOST),
        &["check-config", "--config", &path],
        b"",
    )
}

#[test]
fn check_config_refuses_a_duration_that_overflows() {
    let run = check_config("[timeouts]\ncommand = \"18446744073709551615s\"\n");
    assert_eq!(run.code, Some(78), "{run}");
    assert!(run.all().contains("timeouts.command"), "{run}");
    assert!(run.all().contains("1 day"), "{run}");
}

/// The largest value of every duration and size key: check-config accepts it, and the daemon
/// then serves SMTP and delivers with it.
#[test]
fn the_largest_accepted_values_keep_the_daemon_serving() {
    let upstream = Smarthost::start();
    let config = RelayConfig::with_smarthost(upstream.port())
        .top("max_message_size = 4294967296\n[store]\ncache_bytes = 1073741824\n")
        .queue(
            "max_age = \"365days\"\nfailed_retention = \"365days\"\nmax_bytes = 1125899906842624\n",
        )
        .timeouts("command = \"1day\"\ndata = \"1day\"\n")
        .section("[rate_limit]\nper_sender = 1000000\nwindow = \"30days\"\n");
    let checked = check_config(&config.render(Path::new("unused")).replacen(
        "data_dir",
        "# data_dir",
        1,
    ));
    assert_eq!(checked.code, Some(0), "{checked}");
    let relay = RelayProcess::start_with(config);
    let mut client = RawClient::ready(relay.port());
    let ehlo = client.cmd("EHLO lan.test");
    assert!(ehlo.to_string().contains("SIZE 4294967296"), "{ehlo}");
    // The free-space reserve is twice max_message_size: 250 where the disk has room, 452 where
    // not; either way the session goes on.
    let reply = client.send_mail(
        "a@lan.test",
        &["b@remote.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    );
    assert!(
        matches!(reply.code, 250 | 452),
        "{reply}\n{}",
        client.transcript()
    );
    assert_eq!(client.cmd("NOOP").code, 250, "{}", client.transcript());
    let mut second = RawClient::ready(relay.port());
    assert_eq!(second.cmd("NOOP").code, 250, "{}", second.transcript());
    if reply.code == 250 {
        assert_queued(&reply);
        upstream
            .wait_for(1, DELIVERY)
            .unwrap_or_else(|| relay.fail("nothing delivered"));
    }
}

/// A smarthost reply with `"` in it: the `status=deferred` line quotes and escapes it, so a log
/// parser cannot read a forged `status=sent` field from it.
#[test]
fn a_smarthost_reply_cannot_forge_a_log_field() {
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { .. } => Some(reply(451, "4.3.0 busy\" status=sent x=\"\\")),
        _ => None,
    });
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail(
        "a@lan.test",
        &["b@remote.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    ));
    let line = relay.wait_log("status=deferred");
    let line = line
        .lines()
        .find(|l| l.contains("status=deferred"))
        .unwrap_or_else(|| relay.fail("no status=deferred line"));
    assert!(
        line.ends_with(r#"reply="451 4.3.0 busy\" status=sent x=\"\\""#),
        "{line}"
    );
    // Every `"` before ` status=sent` in the whole log is an escaped one.
    let log = relay.log();
    let forged = log
        .match_indices("\" status=sent")
        .filter(|&(i, _)| !log[..i].ends_with('\\'))
        .count();
    assert_eq!(forged, 0, "{log}");
}
