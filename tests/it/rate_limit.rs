//! `[rate_limit]`: per-sender limits on the way in. A sender past its limit gets `451 4.7.1` at
//! MAIL with the limit and when to come back; other senders are not affected; the sender gets
//! through again once its window has moved on.

use std::thread;
use std::time::Duration;

use crate::util::{
    assert_queued, send_lettre, slack, wait_until, RawClient, RelayConfig, RelayProcess, Smarthost,
};

const DELIVERY: Duration = Duration::from_secs(30);

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: ups@lan.test\r\nTo: ops@remote.test\r\nSubject: {subject}\r\n\r\nOn battery.\r\n"
    )
    .into_bytes()
}

#[test]
fn a_sender_past_its_rate_limit_gets_451_and_other_senders_still_get_through() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(upstream.port())
            .section("[rate_limit]\nper_sender = 3\nwindow = \"1h\""),
    );
    // A real client (lettre): three alerts go through, the fourth is refused.
    for n in 1..=3 {
        let reply = send_lettre(
            relay.port(),
            "ups@lan.test",
            &["ops@remote.test"],
            &message(&format!("alert {n}")),
        );
        assert!(
            reply.as_ref().is_ok_and(|r| r.starts_with("250")),
            "{reply:?}"
        );
    }
    let refused = send_lettre(
        relay.port(),
        "ups@lan.test",
        &["ops@remote.test"],
        &message("alert 4"),
    )
    .expect_err("the fourth message in the hour was accepted");
    assert!(refused.contains("sender rate limit exceeded"), "{refused}");
    // The exact reply, and the session stays usable for another sender; the address is
    // matched without regard to case.
    let mut client = RawClient::ready(relay.port());
    let reply = client.cmd("MAIL FROM:<UPS@lan.test>");
    assert_eq!(reply.code, 451, "{}", client.transcript());
    assert!(
        reply.text().starts_with(
            "4.7.1 <UPS@lan.test>: sender rate limit exceeded (3 messages per 1h), try again in "
        ),
        "{reply}"
    );
    assert_eq!(client.cmd("RCPT TO:<ops@remote.test>").code, 503);
    assert_queued(&client.send_mail("camera@lan.test", &["ops@remote.test"], &message("motion")));
    let got = upstream
        .wait_for(4, DELIVERY)
        .unwrap_or_else(|| relay.fail("the accepted messages were not delivered"));
    let from_ups = got.iter().filter(|d| d.from == "ups@lan.test").count();
    assert_eq!(from_ups, 3, "{got:?}");
    assert!(got.iter().any(|d| d.from == "camera@lan.test"));
    relay.wait_log("reason=\"sender rate limit\" from=<ups@lan.test>");
}

#[test]
fn a_limited_sender_gets_through_again_once_its_window_has_moved_on() {
    let upstream = Smarthost::start();
    // Long enough that the first exchange cannot outlast it, even under emulation.
    let window = slack(Duration::from_secs(3)).as_secs().max(3);
    let relay = RelayProcess::start_with(RelayConfig::with_smarthost(upstream.port()).section(
        &format!("[rate_limit]\nper_sender = 1\nwindow = \"{window}s\""),
    ));
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail("ups@lan.test", &["ops@remote.test"], &message("first")));
    let reply = client.cmd("MAIL FROM:<ups@lan.test>");
    assert_eq!(reply.code, 451, "{}", client.transcript());
    assert!(
        reply
            .text()
            .contains(&format!("(1 message per {window}s), try again in ")),
        "{reply}"
    );
    assert_eq!(client.cmd("RSET").code, 250);
    // After the window the sender is allowed again (polled, bounded). The window is time
    // that must pass, not a proof of absence: waiting it out first keeps refused MAILs (which
    // count as errors) few.
    thread::sleep(Duration::from_secs(window));
    let mut last = String::new();
    let allowed = wait_until(Duration::from_secs(10), Duration::from_millis(250), || {
        let reply = client.cmd("MAIL FROM:<ups@lan.test>");
        last = reply.to_string();
        if reply.code == 250 {
            return true;
        }
        client.cmd("RSET");
        false
    });
    assert!(
        allowed,
        "still refused after {:?}: {last}",
        slack(Duration::from_secs(12))
    );
    assert_eq!(client.cmd("RCPT TO:<ops@remote.test>").code, 250);
    assert_eq!(client.cmd("DATA").code, 354);
    client.send(&message("second"));
    client.send(b".\r\n");
    assert_eq!(client.read_reply().code, 250, "{}", client.transcript());
    upstream
        .wait_for(2, DELIVERY)
        .unwrap_or_else(|| relay.fail("the two messages were not delivered"));
}
