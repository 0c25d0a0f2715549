//! `from` per smarthost (hosted services accept only the authenticated mailbox as sender):
//! MAIL FROM and From: rewritten, the original From: kept in Reply-To:, a From: that already
//! is the address left alone, the null sender kept null, and on failover the `from` of the
//! smarthost in use (or none). All against the kit's fake smarthost.

use std::time::Duration;

use crate::util::{assert_queued, RawClient, RelayConfig, RelayProcess, Smarthost};

const DELIVERY: Duration = Duration::from_secs(20);
const FROM: &str = "alerts@site.example";

/// A `[[smarthost]]` table on 127.0.0.1, plaintext, with `from` if given.
fn entry(port: u16, from: Option<&str>) -> String {
    let from = from.map_or(String::new(), |f| format!("from = \"{f}\"\n"));
    format!("\n[[smarthost]]\naddress = \"127.0.0.1:{port}\"\ntls = \"none\"\n{from}")
}

fn relay_to(entries: &[String]) -> RelayProcess {
    let config = RelayConfig::default()
        .queue("retry_min = \"5m\"\nretry_max = \"10m\"")
        .section(&entries.concat());
    RelayProcess::start_with(config)
}

/// Sends `header` + a body from `sender`; returns the queue id.
fn send(relay: &RelayProcess, sender: &str, header: &str) -> String {
    let mut client = RawClient::ready(relay.port());
    let body = format!("{header}Subject: disk\r\n\r\ndisk full\r\n");
    assert_queued(&client.send_mail(sender, &["ops@remote.test"], body.as_bytes()))
}

/// The header section the smarthost got, after the relay's Received:.
fn header_of(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data).into_owned();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

#[test]
fn from_sets_mail_from_and_from_and_keeps_the_original_in_reply_to() {
    let upstream = Smarthost::start();
    let relay = relay_to(&[entry(upstream.port(), Some(FROM))]);
    send(
        &relay,
        "root@lan.test",
        "From: Cron Daemon <root@lan.test>\r\n",
    );
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("not delivered"));
    assert_eq!(got[0].from, FROM);
    let header = header_of(&got[0].data);
    let lines: Vec<&str> = header.lines().collect();
    assert!(
        lines.contains(&"From: Cron Daemon <alerts@site.example>"),
        "{header}"
    );
    assert!(
        lines.contains(&"Reply-To: Cron Daemon <root@lan.test>"),
        "{header}"
    );
    assert_eq!(lines.iter().filter(|l| l.starts_with("From:")).count(), 1);
    assert!(got[0].data_str().ends_with("\r\n\r\ndisk full\r\n"));
}

#[test]
fn a_from_that_already_is_the_address_is_untouched() {
    let upstream = Smarthost::start();
    let relay = relay_to(&[entry(upstream.port(), Some(FROM))]);
    let header = "From: Alerts <alerts@site.example>\r\nReply-To: ops@lan.test\r\n";
    send(&relay, "root@lan.test", header);
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("not delivered"));
    assert_eq!(got[0].from, FROM);
    let sent = got[0].after_received().expect("a Received: first");
    let expected = format!("{header}Subject: disk\r\n\r\ndisk full\r\n");
    assert_eq!(String::from_utf8_lossy(sent), expected);
}

#[test]
fn the_null_sender_stays_null() {
    let upstream = Smarthost::start();
    let relay = relay_to(&[entry(upstream.port(), Some(FROM))]);
    send(&relay, "", "From: MAILER-DAEMON@lan.test\r\n");
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("not delivered"));
    assert_eq!(got[0].from, "", "MAIL FROM:<> must stay null");
    let header = header_of(&got[0].data);
    assert!(
        header.lines().any(|l| l == "From: alerts@site.example"),
        "{header}"
    );
    assert!(
        header
            .lines()
            .any(|l| l == "Reply-To: MAILER-DAEMON@lan.test"),
        "{header}"
    );
}

#[test]
fn failover_to_a_smarthost_without_from_sends_the_original_sender() {
    let primary = Smarthost::reserve_port();
    let secondary = Smarthost::start();
    let relay = relay_to(&[entry(primary, Some(FROM)), entry(secondary.port(), None)]);
    send(&relay, "root@lan.test", "From: root@lan.test\r\n");
    let got = secondary
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing reached the secondary"));
    assert_eq!(got[0].from, "root@lan.test");
    let header = header_of(&got[0].data);
    assert!(
        header.lines().any(|l| l == "From: root@lan.test"),
        "{header}"
    );
    assert!(
        !header.contains("Reply-To") && !header.contains(FROM),
        "{header}"
    );
    relay.wait_log("failing over to smarthost 2 ");
}

#[test]
fn failover_uses_the_from_of_the_smarthost_in_use() {
    let primary = Smarthost::reserve_port();
    let secondary = Smarthost::start();
    let other = "relay@backup.example";
    let relay = relay_to(&[
        entry(primary, Some(FROM)),
        entry(secondary.port(), Some(other)),
    ]);
    send(&relay, "root@lan.test", "From: root@lan.test\r\n");
    let got = secondary
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing reached the secondary"));
    assert_eq!(got[0].from, other);
    let header = header_of(&got[0].data);
    assert!(
        header.lines().any(|l| l == format!("From: {other}")),
        "{header}"
    );
    assert!(
        header.lines().any(|l| l == "Reply-To: root@lan.test"),
        "{header}"
    );
}
