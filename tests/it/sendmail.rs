//! `outpost sendmail` and the `sendmail` alias: a message handed over while the daemon is down
//! is delivered once it starts; with the daemon up it goes at once (the poke); -t takes the
//! recipients from the headers and drops Bcc:; missing headers are added; bad calls get
//! sysexits 64/65; a file in the maildrop that is not a maildrop file is never sent.

use std::time::Duration;

use crate::util::{alias, run_command, settle, RelayConfig, RelayProcess, Smarthost};

const DELIVERY: Duration = Duration::from_secs(20);

#[test]
fn sendmail_while_the_daemon_is_down_is_delivered_after_it_starts() {
    let upstream = Smarthost::start();
    let mut relay = RelayProcess::start_with(RelayConfig::with_smarthost(upstream.port()));
    relay.stop();
    let input = b"To: Ops <ops@remote.test>\nBcc: hidden@remote.test\nSubject: cron alert\n\n\
                  disk full\n";
    let run = relay.command(&["sendmail", "-t", "-i", "-f", "cron@lan.test"], input);
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(upstream.count(), 0);
    relay.restart();
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("maildrop message not delivered after start"));
    let mail = &got[0];
    assert_eq!(mail.from, "cron@lan.test");
    let mut to = mail.to.clone();
    to.sort();
    assert_eq!(to, ["hidden@remote.test", "ops@remote.test"]);
    let data = mail.data_str();
    for needle in [
        "From: <cron@lan.test>\r\n",
        "Date: ",
        "Message-ID: <",
        "Subject: cron alert\r\n",
        "\r\n\r\ndisk full\r\n",
    ] {
        assert!(data.contains(needle), "{needle:?} missing from:\n{data}");
    }
    assert!(!data.contains("Bcc") && !data.contains("hidden"), "{data}");
    // The maildrop file is gone once stored.
    let left = std::fs::read_dir(relay.data_dir.join("maildrop"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".msg"))
        .count();
    assert_eq!(left, 0, "maildrop file left behind");
}

#[test]
fn invoked_as_sendmail_with_the_daemon_up_delivers_at_once() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_with(RelayConfig::with_smarthost(upstream.port()));
    let sendmail = alias(&relay.dir, "sendmail");
    let config = relay.config_path.to_string_lossy().into_owned();
    let run = run_command(
        &sendmail,
        &["--config", &config, "-oi", "ops@remote.test"],
        b"Subject: via alias\n\nhello\n.\nstill body\n",
    );
    assert_eq!(run.code, Some(0), "{run}");
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("not delivered"));
    assert_eq!(got[0].to, ["ops@remote.test"]);
    // -oi: the lone dot is message text (the upstream shows it dot-unstuffed).
    let data = got[0].data_str();
    assert!(data.contains("hello\r\n.\r\nstill body\r\n"), "{data}");
}

#[test]
fn sendmail_without_recipients_exits_64_and_bad_input_65() {
    let relay = RelayProcess::start("");
    let run = relay.command(&["sendmail"], b"Subject: x\n\nbody\n");
    assert_eq!(run.code, Some(64), "{run}");
    assert!(run.stderr.contains("no recipients"), "{run}");
    let run = relay.command(&["sendmail", "-t"], b"Subject: x\n\nbody\n");
    assert_eq!(run.code, Some(64), "{run}");
    let run = relay.command(&["sendmail", "a@b.test"], b"Subject: x\n\nnul\0byte\n");
    assert_eq!(run.code, Some(65), "{run}");
    let run = relay.command(&["sendmail", "not an address"], b"Subject: x\n\nbody\n");
    assert_eq!(run.code, Some(65), "{run}");
    let list = relay.command_ok(&["queue"]);
    assert!(list.contains("Mail queue is empty"), "{list}");
}

#[test]
fn a_file_that_is_not_a_maildrop_file_waits_unsent_and_the_rest_is_delivered() {
    let upstream = Smarthost::start();
    let mut relay = RelayProcess::start_with(RelayConfig::with_smarthost(upstream.port()));
    relay.stop();
    let maildrop = relay.data_dir.join("maildrop");
    std::fs::write(maildrop.join("0-junk.msg"), b"Subject: not ours\n\nx\n").unwrap();
    let run = relay.command(&["sendmail", "ops@remote.test"], b"Subject: good\n\nx\n");
    assert_eq!(run.code, Some(0), "{run}");
    relay.restart();
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("good message not delivered"));
    assert!(got[0].data_str().contains("Subject: good"));
    relay.wait_log("0-junk.msg is not sent: first line is not");
    // It waits in the maildrop (set aside only after an hour) and `mailq` says so.
    assert!(maildrop.join("0-junk.msg").exists());
    let list = relay.command_ok(&["queue", "list"]);
    assert!(
        list.contains("maildrop: 1 files waiting") && list.contains("0-junk.msg"),
        "{list}"
    );
    // The pickup is done with the maildrop; had it queued the junk, it would go out before the
    // marker.
    settle(&relay, &upstream);
    assert_eq!(upstream.unmarked().len(), 1, "the junk file was sent");
}
