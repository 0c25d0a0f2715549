//! Forwarding to the smarthost: envelope kept, every message delivered, and a queue built up
//! during an outage drained over one connection when the link returns.

use std::time::Duration;

use crate::util::{assert_queued, message, RawClient, RelayProcess, Smarthost};

const DELIVERY: Duration = Duration::from_secs(30);

#[test]
fn envelope_with_several_recipients_reaches_the_smarthost() {
    let upstream = Smarthost::start();
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
    let upstream = Smarthost::start();
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
    let upstream = Smarthost::start();
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
    let port = Smarthost::reserve_port();
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
    let upstream = Smarthost::start_on(port);
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

#[test]
fn large_message_spanning_many_store_chunks_is_relayed_byte_exact() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    // About 600 KB: many 32 KiB spool chunks, lines of varied length, some starting with '.'.
    let mut real = b"Subject: large\r\n\r\n".to_vec();
    let mut wire = real.clone();
    for n in 0..8000usize {
        let line = if n % 97 == 0 {
            format!(".dot line {n}\r\n")
        } else {
            format!("{n:05} {}\r\n", "abcdefghij".repeat(n % 9 + 1))
        };
        real.extend_from_slice(line.as_bytes());
        if line.starts_with('.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(line.as_bytes());
    }
    assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], &wire));
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    let body = got[0].after_received().expect("no Received: field");
    assert_eq!(body.len(), real.len(), "length differs");
    assert!(body == &real[..], "large message altered in transit");
}

#[test]
fn smarthost_flag_overrides_the_config_file() {
    let upstream = Smarthost::start();
    // The file names a smarthost that is down; the flag must win.
    let down = Smarthost::reserve_port();
    let relay = RelayProcess::start_with_args(
        crate::util::RelayConfig::with_smarthost(down),
        &["--smarthost", &format!("127.0.0.1:{}", upstream.port())],
    );
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], &message("flag", "x\r\n")));
    upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("--smarthost did not take effect"));
}
