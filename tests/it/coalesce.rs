//! `[coalesce]`: an alert storm queued while the smarthost is unreachable leaves as one digest
//! when the link returns: every original, byte for byte as journaled (with outpost's
//! `Received:`), as a `message/rfc822` part after a summary naming the count, the first and
//! last receipt and each original's Date and Message-ID. A different alert from the same
//! sender goes out on its own, unchanged. The smarthost's per-recipient verdict on a digest
//! applies to every original, and what is deferred is retried as a digest again; `sendmail`
//! alerts join SMTP ones. Drives the real binary against a real upstream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::{
    alias, assert_queued, reply, run_command, strip_received, wait_until, RawClient, RelayConfig,
    RelayProcess, Smarthost, Stage,
};

const DELIVERY: Duration = Duration::from_secs(30);
const ALERTS: usize = 20;

fn alert(i: usize) -> String {
    // A body line starting with a dot: the digest must carry it through dot-stuffing intact.
    format!(
        "From: UPS <ups@site.test>\r\nTo: ops@remote.test\r\nSubject: UPS on battery, load {}%\r\n\
         Date: Mon, 30 Nov 2026 04:{i:02}:00 +0000\r\nMessage-ID: <alert-{i}@ups.site.test>\r\n\
         \r\nOn battery since 04:{i:02}.\r\n.runtime {} min\r\n",
        40 + i,
        90 - i
    )
}

fn send(relay: &RelayProcess, message: &str) -> String {
    let mut client = RawClient::ready(relay.port());
    // The raw client sends DATA as given: dot-stuff it here (RFC 5321 §4.5.2).
    let stuffed = message.replace("\r\n.", "\r\n..");
    assert_queued(&client.send_mail("ups@site.test", &["ops@remote.test"], stuffed.as_bytes()))
}

/// The date at the end of a `Received:` field (`…; <date>\r\n`).
fn received_date(field: &[u8]) -> String {
    let text = String::from_utf8_lossy(field);
    text.rsplit_once("; ").unwrap().1.trim_end().to_owned()
}

#[test]
fn an_alert_storm_queued_during_an_outage_arrives_as_one_digest() {
    let port = Smarthost::reserve_port();
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(port)
            .queue("retry_min = \"5m\"\nretry_max = \"10m\"")
            .section("[coalesce]\nwindow = \"1h\""),
    );
    let originals: Vec<String> = (0..ALERTS).map(alert).collect();
    let mut ids = Vec::new();
    for (i, message) in originals.iter().enumerate() {
        ids.push(send(&relay, message));
        if i == 9 {
            // A different alert in the middle of the storm.
            let disk = "From: ups@site.test\r\nTo: ops@remote.test\r\nSubject: Disk 91% full\r\n\
                        \r\n/var\r\n";
            send(&relay, disk);
        }
    }
    let down = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        relay.command_ok(&["status"]).contains("link: down since")
    });
    assert!(down, "status never said the link is down");
    // Each original is journaled on its own.
    let list = relay.command_ok(&["queue", "list", "--json"]);
    for id in &ids {
        assert!(list.contains(&format!("\"id\":\"{id}\"")), "{id}: {list}");
    }

    let upstream = Smarthost::start_on(port);
    relay.command_ok(&["queue", "flush"]);
    upstream
        .wait_for(2, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing arrived"));
    assert!(
        relay.wait_queue_empty(),
        "the queue did not drain: {}",
        relay.log()
    );
    let got = upstream.delivered();
    assert_eq!(got.len(), 2, "{}", relay.log());

    let (digest, disk): (Vec<_>, Vec<_>) = got
        .iter()
        .partition(|d| d.data_str().contains("Subject: [20 alerts]"));
    assert_eq!((digest.len(), disk.len()), (1, 1), "{}", relay.log());
    let disk = disk[0];
    assert_eq!(
        disk.after_received().unwrap(),
        b"From: ups@site.test\r\nTo: ops@remote.test\r\nSubject: Disk 91% full\r\n\r\n/var\r\n"
    );
    let digest = digest[0];
    assert_eq!(digest.from, "ups@site.test");
    assert_eq!(digest.to, ["ops@remote.test"]);
    let text = digest.data_str();

    // Header section: from the envelope, the count and the normalised subject.
    let boundary = text
        .split_once("boundary=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(b, _)| b.to_owned())
        .unwrap_or_else(|| panic!("no boundary: {text}"));
    let (head, _) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with(
            "From: UPS <ups@site.test>\r\nTo: ops@remote.test\r\n\
             Subject: [20 alerts] UPS on battery, load #%\r\nDate: "
        ),
        "{head}"
    );
    assert!(head.contains("\r\nMIME-Version: 1.0\r\n"), "{head}");
    assert!(
        head.ends_with(&format!(
            "Content-Type: multipart/mixed;\r\n\tboundary=\"{boundary}\""
        )),
        "{head}"
    );

    // The parts: the summary, then every original exactly as journaled, oldest first.
    let delimiter = format!("\r\n--{boundary}");
    let data = &digest.data;
    let mut pieces = split(data, delimiter.as_bytes());
    let closing = pieces.pop().unwrap();
    assert_eq!(
        closing, b"--\r\n",
        "the digest ends with the close delimiter"
    );
    assert_eq!(
        pieces.len(),
        2 + ALERTS,
        "preamble, summary, {ALERTS} originals"
    );
    let mut dates = Vec::new();
    for (i, (part, original)) in pieces[2..].iter().zip(&originals).enumerate() {
        let content = part
            .strip_prefix(b"\r\nContent-Type: message/rfc822\r\n\r\n".as_slice())
            .unwrap_or_else(|| panic!("part {i}: {}", String::from_utf8_lossy(part)));
        let rest = strip_received(content).unwrap();
        assert_eq!(
            String::from_utf8_lossy(rest),
            *original,
            "original {i} not carried byte for byte"
        );
        let field = &content[..content.len() - rest.len()];
        assert!(
            String::from_utf8_lossy(field).contains(&format!("id {}", ids[i])),
            "part {i} is not queue id {}: {}",
            ids[i],
            String::from_utf8_lossy(field)
        );
        dates.push(received_date(field));
    }

    // The summary, byte for byte (receipt dates as the Received fields say).
    let mut expected = String::from(
        "\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         20 messages with the same subject (digits shown as #) waited in the queue of\r\n\
         outpost.test and are combined into this digest, each attached unchanged.\r\n\r\n\
         Subject:   UPS on battery, load #%\r\n\
         Sender:    <ups@site.test>\r\n\
         Count:     20\r\n",
    );
    expected += &format!("First:     {}\r\n", dates[0]);
    expected += &format!("Last:      {}\r\n", dates[ALERTS - 1]);
    expected += "\r\nThe messages, oldest first:\r\n\r\n";
    for (i, date) in dates.iter().enumerate() {
        expected += &format!(
            "{:3}. Received:   {date}\r\n     Date:       Mon, 30 Nov 2026 04:{i:02}:00 +0000\r\n     \
             Message-ID: <alert-{i}@ups.site.test>\r\n",
            i + 1
        );
    }
    assert_eq!(String::from_utf8_lossy(pieces[1]), expected);

    // The log names the digest and each original as sent (lines the capture may get a moment
    // after the queue is empty).
    for id in &ids {
        relay.wait_log(&format!("queue_id={id} to=<ops@remote.test>"));
    }
    let log = relay.wait_log("digest of 20 messages");
    for id in &ids {
        assert!(
            log.contains(&format!("queue_id={id} to=<ops@remote.test>"))
                && log.contains("status=sent"),
            "{id}: {log}"
        );
    }
}

#[test]
fn the_smarthost_verdict_on_a_digest_applies_to_every_original_per_recipient_and_the_rest_is_retried_as_a_digest(
) {
    const N: usize = 4;
    let port = Smarthost::reserve_port();
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(port)
            .queue("retry_min = \"5m\"\nretry_max = \"10m\"")
            .section("[coalesce]\nwindow = \"1h\"\nmax_parts = 10"),
    );
    let rcpts = ["ops@remote.test", "pager@remote.test", "later@remote.test"];
    let mut ids = Vec::new();
    for i in 0..N {
        let mut client = RawClient::ready(relay.port());
        let message = format!(
            "Subject: disk {} % full\r\nMessage-ID: <disk-{i}@site.test>\r\n\r\n/var\r\n",
            90 + i
        );
        let sent = client.send_mail("disk@site.test", &rcpts, message.as_bytes());
        ids.push(assert_queued(&sent));
    }
    let down = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        relay.command_ok(&["status"]).contains("link: down since")
    });
    assert!(down, "status never said the link is down");

    // ops takes it, pager does not exist, later is busy (until the test says otherwise).
    let busy = Arc::new(AtomicBool::new(true));
    let busy_policy = busy.clone();
    let upstream = Smarthost::start_on_with_policy(port, move |stage| match stage {
        Stage::Rcpt { to } if to.starts_with("pager@") => Some(reply(550, "5.1.1 no such user")),
        Stage::Rcpt { to } if to.starts_with("later@") && busy_policy.load(Ordering::SeqCst) => {
            Some(reply(451, "4.2.1 busy"))
        }
        _ => None,
    });
    relay.command_ok(&["queue", "flush"]);
    // One digest to ops, then one DSN per original to the sender.
    let got = upstream
        .wait_for(1 + N, DELIVERY)
        .unwrap_or_else(|| relay.fail("no digest and DSNs"));
    let (digests, dsns): (Vec<_>, Vec<_>) = got.iter().partition(|d| !d.from.is_empty());
    assert_eq!(digests.len(), 1, "{}", relay.log());
    assert_eq!(digests[0].to, ["ops@remote.test"]);
    assert!(digests[0]
        .data_str()
        .contains(&format!("Subject: [{N} alerts] disk # % full\r\n")));
    assert_eq!(dsns.len(), N, "one DSN per original: {}", relay.log());
    for (i, id) in ids.iter().enumerate() {
        let dsn = dsns
            .iter()
            .find(|d| d.data_str().contains(&format!("<disk-{i}@site.test>")))
            .unwrap_or_else(|| panic!("no DSN quotes original {i}"));
        assert_eq!(dsn.to, ["disk@site.test"]);
        assert!(dsn.data_str().contains("pager@remote.test"));
        // Each original keeps its own state: sent, failed, and deferred for a retry.
        let show = relay.command_ok(&["queue", "show", id]);
        assert!(show.contains("<ops@remote.test> sent: 250"), "{show}");
        assert!(
            show.contains("<pager@remote.test> failed: 550 5.1.1 no such user"),
            "{show}"
        );
        assert!(
            show.contains("<later@remote.test> deferred: 451 4.2.1 busy"),
            "{show}"
        );
        assert!(show.contains("attempts: 1\n"), "{show}");
    }

    // The retry: the originals differ from the first try (ops sent, pager failed) but agree on
    // what is left, so `later` gets one digest of the four, not four messages.
    busy.store(false, Ordering::SeqCst);
    relay.command_ok(&["queue", "flush"]);
    let done = wait_until(DELIVERY, Duration::from_millis(100), || {
        ids.iter().all(|id| {
            relay
                .command_ok(&["queue", "show", id])
                .contains("<later@remote.test> sent: 250")
        })
    });
    assert!(
        done,
        "the deferred recipient was not retried: {}",
        relay.log()
    );
    let got = upstream.delivered();
    assert_eq!(got.len(), 2 + N, "{}", relay.log());
    let retried = &got[1 + N];
    assert_eq!(retried.to, ["later@remote.test"]);
    let text = retried.data_str();
    assert!(text.contains(&format!("Subject: [{N} alerts] disk # % full\r\n")));
    for i in 0..N {
        assert!(text.contains(&format!("<disk-{i}@site.test>")), "{text}");
    }
}

#[test]
fn alerts_handed_to_sendmail_are_combined_with_those_over_smtp() {
    let port = Smarthost::reserve_port();
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(port)
            .queue("retry_min = \"5m\"\nretry_max = \"10m\"")
            .section("[coalesce]"),
    );
    send(&relay, &alert(1));
    let sendmail = alias(&relay.dir, "sendmail");
    let config = relay.config_path.to_string_lossy().into_owned();
    let run = run_command(
        &sendmail,
        &[
            "--config",
            &config,
            "-f",
            "ups@site.test",
            "ops@remote.test",
        ],
        b"Subject: UPS on battery, load 57%\nMessage-ID: <local@ups.site.test>\n\nlocal\n",
    );
    assert_eq!(run.code, Some(0), "{run}");
    send(&relay, &alert(2));
    let queued = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        relay
            .command_ok(&["queue", "list", "--json"])
            .matches("\"id\"")
            .count()
            == 3
    });
    assert!(queued, "{}", relay.command_ok(&["queue", "list"]));

    let upstream = Smarthost::start_on(port);
    relay.command_ok(&["queue", "flush"]);
    assert!(
        relay.wait_queue_empty(),
        "the queue did not drain: {}",
        relay.log()
    );
    let got = upstream.delivered();
    assert_eq!(got.len(), 1, "{}", relay.log());
    let text = got[0].data_str();
    assert!(
        text.contains("Subject: [3 alerts] UPS on battery, load #%\r\n"),
        "{text}"
    );
    for id in [
        "<alert-1@ups.site.test>",
        "<local@ups.site.test>",
        "<alert-2@ups.site.test>",
    ] {
        assert!(text.contains(&format!("Message-ID: {id}")), "{id}: {text}");
    }
}

/// `data` cut at every occurrence of `delimiter` (the delimiters dropped).
fn split<'a>(data: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(delimiter.len()).position(|w| w == delimiter) {
        out.push(&rest[..at]);
        rest = &rest[at + delimiter.len()..];
    }
    out.push(rest);
    out
}
