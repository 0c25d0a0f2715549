//! Lines over 998 octets, from `sendmail` and over SMTP: accepted, stored as received, and
//! folded for transport with `CRLF SP` (Postfix's `smtp_line_length_limit = 998`), so the
//! smarthost gets every octet and no line over 1000 octets with its CRLF.

use std::time::Duration;

use crate::util::{assert_queued, Delivered, RawClient, RelayConfig, RelayProcess, Smarthost};

const DELIVERY: Duration = Duration::from_secs(20);

/// A 2,000-octet line that says where each octet was, so a lost or moved octet shows.
fn long_line() -> String {
    (0..200).map(|i| format!("{i:09}|")).collect()
}

/// Every line of the delivered data is at most 1000 octets with its CRLF, some line was
/// folded, and removing the folds gives `line` back whole.
fn assert_folded(mail: &Delivered, line: &str) {
    let data = mail.data_str();
    for l in mail.data.split_inclusive(|&b| b == b'\n') {
        assert!(
            l.len() <= 1000,
            "a line of {} octets arrived:\n{data}",
            l.len()
        );
        assert!(l.ends_with(b"\r\n"), "a line without CRLF:\n{data}");
    }
    assert!(!data.contains(line), "the long line arrived unfolded");
    let unfolded = data.replace("\r\n ", "");
    assert!(
        unfolded.contains(&format!("\r\n{line}\r\nafter\r\n")),
        "the long line did not arrive whole:\n{data}"
    );
    // Postfix's folding: 998 octets, then `CRLF SP` before each further 997.
    let (first, second, third) = (&line[..998], &line[998..1995], &line[1995..]);
    assert!(
        data.contains(&format!(
            "\r\n{first}\r\n {second}\r\n {third}\r\nafter\r\n"
        )),
        "{data}"
    );
}

#[test]
fn a_2000_octet_line_by_smtp_arrives_folded() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_with(RelayConfig::with_smarthost(upstream.port()));
    let line = long_line();
    let body = format!("Subject: long line\r\n\r\n{line}\r\nafter\r\n");
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], body.as_bytes()));
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("the message with a long line was not delivered"));
    assert_folded(&got[0], &line);
}

#[test]
fn a_2000_octet_line_by_sendmail_arrives_folded() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_with(RelayConfig::with_smarthost(upstream.port()));
    let line = long_line();
    let input = format!("Subject: cron output\n\n{line}\nafter\n");
    let run = relay.command(&["sendmail", "-i", "ops@remote.test"], input.as_bytes());
    assert_eq!(run.code, Some(0), "{run}");
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("the message with a long line was not delivered"));
    assert_folded(&got[0], &line);
}

#[test]
fn a_long_header_line_arrives_as_a_folded_field() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_with(RelayConfig::with_smarthost(upstream.port()));
    let subject = "s".repeat(1500);
    let input = format!("Subject: {subject}\n\nbody\n");
    let run = relay.command(&["sendmail", "-i", "ops@remote.test"], input.as_bytes());
    assert_eq!(run.code, Some(0), "{run}");
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("the message with a long Subject was not delivered"));
    let data = got[0].data_str();
    // The continuation starts with a space: still the Subject field (RFC 5322 §2.2.3).
    let folded = format!("Subject: {}\r\n {}\r\n", &subject[..989], &subject[989..]);
    assert!(data.contains(&folded), "{data}");
    assert!(data.contains("\r\n\r\nbody\r\n"), "{data}");
}
