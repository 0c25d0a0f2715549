//! A word to the administrator: with `admin` set, a message that fails for good brings `admin`
//! a notice (who, to whom, the smarthost's reply), a notice that itself fails brings nothing,
//! and a queue older than `[notify] queue_age` brings one notice, delivered once the smarthost
//! is back.

use std::time::Duration;

use crate::util::*;

const DELIVERY: Duration = Duration::from_secs(20);
const ADMIN: &str = "ops@example.com";

fn marker_message() -> Vec<u8> {
    format!("{MARKER_HEADER}: notices\r\nSubject: marker\r\n\r\nmarker\r\n").into_bytes()
}

/// Waits until the marker message arrived.
fn wait_marker(relay: &RelayProcess, upstream: &Smarthost) {
    let arrived = wait_until(DELIVERY, Duration::from_millis(50), || {
        upstream.delivered().iter().any(Delivered::is_marker)
    });
    if !arrived {
        relay.fail("marker not delivered");
    }
}

fn notices(upstream: &Smarthost) -> Vec<Delivered> {
    upstream
        .delivered()
        .into_iter()
        .filter(|m| m.from.is_empty() && m.to == [ADMIN])
        .collect()
}

#[test]
fn a_message_that_fails_for_good_brings_admin_a_notice() {
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { to } if to.starts_with("bad@") => Some(reply(550, "5.1.1 no such user")),
        _ => None,
    });
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(upstream.port()).top(&format!("admin = \"{ADMIN}\"")),
    );
    let mut client = RawClient::ready(relay.port());
    let id = assert_queued(&client.send_mail(
        "cam@lan.test",
        &["bad@remote.test"],
        &message("doomed", "x\r\n"),
    ));
    // The DSN to the sender and the notice to admin.
    upstream
        .wait_for(2, DELIVERY)
        .unwrap_or_else(|| relay.fail("no DSN and notice"));
    let got = notices(&upstream);
    assert_eq!(got.len(), 1, "one notice: {got:#?}");
    let text = got[0].data_str();
    for wanted in [
        "Subject: outpost: mail to bad@remote.test failed for good",
        "Auto-Submitted: auto-generated",
        &format!("Queue ID: {id}"),
        "From: <cam@lan.test>",
        "<bad@remote.test>: 550 5.1.1 no such user",
        &format!("Smarthost: 127.0.0.1:{}", upstream.port()),
    ] {
        assert!(text.contains(wanted), "{wanted:?} missing in {text}");
    }
    let dsn = upstream
        .delivered()
        .into_iter()
        .filter(|m| m.from.is_empty() && m.to == ["cam@lan.test"])
        .count();
    assert_eq!(dsn, 1, "the sender still gets its DSN");
}

#[test]
fn a_notice_that_fails_for_good_brings_no_notice_and_no_dsn() {
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { to } if to.starts_with("bad@") || *to == ADMIN => {
            Some(reply(550, "5.1.1 no such user"))
        }
        _ => None,
    });
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(upstream.port()).top(&format!("admin = \"{ADMIN}\"")),
    );
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail(
        "cam@lan.test",
        &["bad@remote.test"],
        &message("doomed", "x\r\n"),
    ));
    relay.wait_log("notice (failed) queued as");
    relay.wait_log(&format!("to=<{ADMIN}> relay="));
    // A marker sent after the notice failed arrives after anything the failure would queue.
    assert_queued(&client.send_mail("cam@lan.test", &["m@remote.test"], &marker_message()));
    wait_marker(&relay, &upstream);
    let log = relay.log();
    assert_eq!(log.matches("notice (failed) queued as").count(), 1, "{log}");
    assert_eq!(
        log.matches("DSN queued as").count(),
        1,
        "only the sender's: {log}"
    );
}

#[test]
fn an_old_queue_brings_one_notice_delivered_when_the_smarthost_is_back() {
    let port = Smarthost::reserve_port();
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(port)
            .top(&format!("admin = \"{ADMIN}\""))
            .section("[notify]\nqueue_age = \"2s\""),
    );
    let mut client = RawClient::ready(relay.port());
    let id = assert_queued(&client.send_mail(
        "cam@lan.test",
        &["ops2@remote.test"],
        &message("waiting", "x\r\n"),
    ));
    relay.wait_log("notice (queue_age) queued as");
    // Later checks still see the old queue and hold their notice back.
    relay.wait_log("notice (queue_age) held back");
    let upstream = Smarthost::start_on(port);
    upstream
        .wait_for(2, DELIVERY)
        .unwrap_or_else(|| relay.fail("message and notice not delivered"));
    assert_queued(&client.send_mail("cam@lan.test", &["m@remote.test"], &marker_message()));
    wait_marker(&relay, &upstream);
    let got = notices(&upstream);
    assert_eq!(got.len(), 1, "one notice: {got:#?}\n{}", relay.dump());
    let text = got[0].data_str();
    assert!(text.contains("Subject: outpost: mail has waited"), "{text}");
    assert!(text.contains(&format!("Queue ID: {id}")), "{text}");
    assert!(text.contains("To: <ops2@remote.test>"), "{text}");
    let log = relay.log();
    assert_eq!(
        log.matches("notice (queue_age) queued as").count(),
        1,
        "{log}"
    );
}

#[test]
fn a_queue_past_queue_fill_brings_a_notice() {
    let port = Smarthost::reserve_port();
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(port)
            .top(&format!("admin = \"{ADMIN}\"\nmax_message_size = 20000"))
            .queue("max_bytes = 20000")
            // A short queue_age: checks every second.
            .section("[notify]\nqueue_fill = 10\nqueue_age = \"2s\""),
    );
    let mut client = RawClient::ready(relay.port());
    let body = "x".repeat(3000) + "\r\n";
    assert_queued(&client.send_mail("cam@lan.test", &["big@remote.test"], &message("big", &body)));
    relay.wait_log("notice (queue_fill) queued as");
    let upstream = Smarthost::start_on(port);
    let arrived = wait_until(DELIVERY, Duration::from_millis(50), || {
        !notices(&upstream).is_empty()
    });
    if !arrived {
        relay.fail("queue_fill notice not delivered");
    }
    let text = notices(&upstream)[0].data_str();
    assert!(
        text.contains("Subject: outpost: the queue is over 10% full"),
        "{text}"
    );
    assert!(text.contains("of [queue] max_bytes (20000)"), "{text}");
    // queue_age is short only to make the checks frequent: a queue_age notice may come too on a
    // slow machine, but the queue_fill one is queued once however often the check runs.
    let log = relay.log();
    assert_eq!(
        log.matches("notice (queue_fill) queued as").count(),
        1,
        "{log}"
    );
}
