//! Forwarding to the smarthost: envelope kept, every message delivered, and a queue built up
//! during an outage drained over one connection when the link returns.

use std::time::Duration;

use crate::util::{assert_queued, message, RawClient, RelayProcess, Upstream};

const DELIVERY: Duration = Duration::from_secs(30);

#[test]
fn envelope_with_several_recipients_reaches_the_smarthost() {
    let upstream = Upstream::start();
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    let rcpts = ["one@remote.test", "two@remote.test", "three@other.test"];
    assert_queued(&client.send_mail("cron@lan.test", &rcpts, &message("env", "x\r\n")));
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    assert_eq!(got[0].from, "cron@lan.test");
    let mut to = got[0].to.clone();
    to.sort();
    let mut want = rcpts.map(str::to_owned).to_vec();
    want.sort();
    assert_eq!(to, want);
}

#[test]
fn null_sender_from_the_lan_is_relayed_as_null_sender() {
    let upstream = Upstream::start();
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail("", &["postmaster@remote.test"], &message("null", "x\r\n")));
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    assert_eq!(got[0].from, "", "null reverse-path changed");
}

#[test]
fn many_messages_from_concurrent_clients_all_arrive() {
    let upstream = Upstream::start();
    let relay = RelayProcess::start_to(upstream.port());
    let port = relay.port();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut client = RawClient::ready(port);
                for n in 0..5 {
                    let subject = format!("concurrent-{t}-{n}");
                    assert_queued(&client.send_mail(
                        "a@lan.test",
                        &["b@remote.test"],
                        &message(&subject, "x\r\n"),
                    ));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let got = upstream
        .wait_for(20, DELIVERY)
        .unwrap_or_else(|| relay.fail("not all delivered"));
    for t in 0..4 {
        for n in 0..5 {
            let subject = format!("Subject: concurrent-{t}-{n}\r\n");
            let copies = got
                .iter()
                .filter(|m| m.data_str().contains(&subject))
                .count();
            assert_eq!(copies, 1, "{subject:?} arrived {copies} times");
        }
    }
}

#[test]
fn queue_built_during_outage_is_drained_over_one_connection() {
    let port = Upstream::reserve_port();
    let relay = RelayProcess::start_to(port);
    let mut client = RawClient::ready(relay.port());
    for n in 0..3 {
        let subject = format!("outage-{n}");
        assert_queued(&client.send_mail(
            "a@lan.test",
            &["b@remote.test"],
            &message(&subject, "x\r\n"),
        ));
    }
    let upstream = Upstream::start_on(port);
    upstream
        .wait_for(3, DELIVERY)
        .unwrap_or_else(|| relay.fail("queue not drained"));
    let transcript = upstream.transcript();
    let mut sessions: Vec<&str> = transcript
        .lines()
        .filter(|l| l.to_ascii_uppercase().contains(" C: MAIL FROM:"))
        .filter_map(|l| l.split(' ').next())
        .collect();
    sessions.dedup();
    assert_eq!(
        sessions.len(),
        1,
        "queued mail was sent over several connections:\n{transcript}"
    );
}
