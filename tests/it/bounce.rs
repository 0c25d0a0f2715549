//! Bounces: a 5xx from the smarthost (or expiry after `max_age`) fails only the recipients it
//! concerns and sends one RFC 3464 report to the envelope sender, from `<>`; never a bounce of a
//! bounce.

use std::time::Duration;

use crate::util::{
    assert_queued, message, reply, settle, wait_until, Delivered, RawClient, RelayConfig,
    RelayProcess, Smarthost, Stage,
};

const DELIVERY: Duration = Duration::from_secs(30);

/// The addresses in the DSN's `Final-Recipient:` fields.
fn final_recipients(dsn: &Delivered) -> Vec<String> {
    dsn.data_str()
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("final-recipient:"))
        .filter_map(|l| l.split(';').nth(1))
        .map(|a| a.trim().trim_matches(['<', '>']).to_owned())
        .collect()
}

/// Checks the RFC 3464 shape of `dsn`: from `<>`, to `sender`, multipart/report, `Action:
/// failed` with a `Status:` starting with one of `statuses` (expiry may report 4.4.7, RFC 3463).
fn assert_is_dsn_with(dsn: &Delivered, sender: &str, statuses: &[&str]) {
    let text = dsn.data_str();
    let lower = text.to_ascii_lowercase();
    assert_eq!(dsn.from, "", "DSN not sent from the null sender: {text}");
    assert_eq!(
        dsn.to,
        vec![sender.to_owned()],
        "DSN not sent to the envelope sender"
    );
    assert!(
        lower.contains("multipart/report"),
        "DSN is not multipart/report: {text}"
    );
    assert!(
        lower.contains("report-type=delivery-status")
            || lower.contains("report-type=\"delivery-status\""),
        "{text}"
    );
    assert!(
        lower.contains("message/delivery-status"),
        "DSN lacks the status part: {text}"
    );
    assert!(
        lower.contains("action: failed"),
        "DSN lacks `Action: failed`: {text}"
    );
    assert!(
        statuses
            .iter()
            .any(|s| lower.contains(&format!("status: {s}"))),
        "DSN lacks a Status: in {statuses:?}: {text}"
    );
}

/// A DSN for a permanent (5xx) failure.
fn assert_is_dsn(dsn: &Delivered, sender: &str) {
    assert_is_dsn_with(dsn, sender, &["5."]);
}

fn dsns(upstream: &Smarthost) -> Vec<Delivered> {
    upstream
        .delivered()
        .into_iter()
        .filter(|m| m.from.is_empty())
        .collect()
}

#[test]
fn permanent_5xx_on_one_recipient_bounces_only_that_recipient() {
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { to } if to.starts_with("bad@") => Some(reply(550, "5.1.1 no such user")),
        _ => None,
    });
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    let rcpts = ["good1@remote.test", "bad@remote.test", "good2@remote.test"];
    assert_queued(&client.send_mail("sender@lan.test", &rcpts, &message("partly", "x\r\n")));

    let got = upstream
        .wait_for(2, DELIVERY)
        .unwrap_or_else(|| relay.fail("no delivery + DSN"));
    let originals: Vec<&Delivered> = got.iter().filter(|m| !m.from.is_empty()).collect();
    assert_eq!(
        originals.len(),
        1,
        "original delivered {} times",
        originals.len()
    );
    let mut to = originals[0].to.clone();
    to.sort();
    assert_eq!(to, ["good1@remote.test", "good2@remote.test"]);

    let reports = dsns(&upstream);
    assert_eq!(reports.len(), 1, "want one DSN: {reports:#?}");
    assert_is_dsn(&reports[0], "sender@lan.test");
    assert_eq!(final_recipients(&reports[0]), ["bad@remote.test"]);
    assert!(
        reports[0].data_str().contains("no such user"),
        "DSN lacks the smarthost's reply"
    );

    // A second DSN or a redelivery would be queued before the marker goes out.
    settle(&relay, &upstream);
    assert_eq!(
        upstream.unmarked().len(),
        2,
        "extra deliveries: {:#?}",
        upstream.delivered()
    );
}

#[test]
fn permanent_5xx_to_mail_bounces_every_recipient() {
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Mail { from } if *from == "doomed@lan.test" => {
            Some(reply(550, "5.7.1 sender rejected"))
        }
        _ => None,
    });
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    let rcpts = ["one@remote.test", "two@remote.test"];
    assert_queued(&client.send_mail("doomed@lan.test", &rcpts, &message("doomed", "x\r\n")));
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("no DSN"));
    assert_is_dsn(&got[0], "doomed@lan.test");
    let mut failed = final_recipients(&got[0]);
    failed.sort();
    assert_eq!(failed, rcpts);
    // A second DSN or a redelivery would be queued before the marker goes out.
    settle(&relay, &upstream);
    assert_eq!(
        upstream.unmarked().len(),
        1,
        "extra deliveries: {:#?}",
        upstream.delivered()
    );
}

#[test]
fn permanent_5xx_to_data_bounces_every_accepted_recipient() {
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Data { from, .. } if !from.is_empty() => Some(reply(554, "5.6.0 content refused")),
        _ => None,
    });
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    let rcpts = ["one@remote.test", "two@remote.test"];
    assert_queued(&client.send_mail("sender@lan.test", &rcpts, &message("refused", "x\r\n")));
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("no DSN"));
    assert_is_dsn(&got[0], "sender@lan.test");
    let mut failed = final_recipients(&got[0]);
    failed.sort();
    assert_eq!(failed, rcpts);
}

#[test]
fn bounce_of_a_null_sender_message_is_never_sent() {
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { to } if to.starts_with("bad@") => Some(reply(550, "5.1.1 no such user")),
        _ => None,
    });
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail("", &["bad@remote.test"], &message("nullbounce", "x\r\n")));
    // Wait until the relay tried; a report, had it been queued, would go out before the marker.
    let tried = wait_until(DELIVERY, Duration::from_millis(50), || {
        upstream.transcript().contains("RCPT TO:<bad@remote.test>")
    });
    assert!(tried, "the relay never tried the message");
    settle(&relay, &upstream);
    assert_eq!(
        upstream.unmarked().len(),
        0,
        "a bounce was sent for <>: {:#?}",
        upstream.delivered()
    );
}

#[test]
fn message_past_max_age_is_bounced_with_a_dsn() {
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { to } if to.starts_with("slow@") => Some(reply(450, "4.2.1 try later")),
        _ => None,
    });
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(upstream.port()).queue("max_age = \"3s\""),
    );
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail(
        "sender@lan.test",
        &["slow@remote.test"],
        &message("old", "x\r\n"),
    ));
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("no DSN after max_age"));
    assert_is_dsn_with(&got[0], "sender@lan.test", &["4.", "5."]);
    assert_eq!(final_recipients(&got[0]), ["slow@remote.test"]);
    // A second DSN or a redelivery would be queued before the marker goes out.
    settle(&relay, &upstream);
    assert_eq!(
        upstream.unmarked().len(),
        1,
        "extra deliveries: {:#?}",
        upstream.delivered()
    );
}
