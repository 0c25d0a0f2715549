//! What clients see of the daemon: STARTTLS and implicit TLS, AUTH and its failure delay,
//! `require_tls`, the STARTTLS command injection, and a large body reaching the store in whole
//! pieces. The kit's raw client is the peer.

use std::time::{Duration, Instant};

use super::*;
use crate::store::{Store, StoreOptions, MAX_EXTENT};

/// base64 of `\0camera\0camera-pw`
const CAMERA_PLAIN: &str = "AGNhbWVyYQBjYW1lcmEtcHc=";
/// base64 of `\0camera\0wrong`
const WRONG_PLAIN: &str = "AGNhbWVyYQB3cm9uZw==";
/// The failure delay is 1.5 s; checking for at least 1 s keeps the test meaningful without a
/// wall-clock upper bound.
const AUTH_DELAY_FLOOR: Duration = Duration::from_secs(1);

#[test]
fn starttls_then_auth_then_relay() {
    let pki = TestPki::new(&["localhost"]);
    let daemon = Daemon::start(tls_config(&pki));
    let mut client = connect(daemon.port);
    let ehlo = starttls(&mut client, &pki);
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    // Not in relay_from: refused until authenticated.
    client.cmd_expect("MAIL FROM:<cam@lan.test>", 250);
    client.cmd_expect("RCPT TO:<ops@remote.test>", 554);
    client.cmd_expect("RSET", 250);
    client.cmd_expect(&format!("AUTH PLAIN {CAMERA_PLAIN}"), 235);
    send_mail(&mut client, "ops@remote.test");
    client.cmd_expect("QUIT", 221);
}

#[test]
fn implicit_tls_greets_after_the_handshake_and_offers_auth() {
    let pki = TestPki::new(&["localhost"]);
    let daemon = Daemon::start(tls_config(&pki));
    let mut client = RawClient::connect_no_greeting(daemon.tls_port.unwrap()).unwrap();
    client
        .upgrade_for(pki.client_config(), "localhost")
        .unwrap();
    client.read_expect(220);
    let ehlo = client.cmd_expect("EHLO lan.test", 250).to_string();
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    client.cmd_expect("AUTH LOGIN", 334);
    client.cmd_expect("Y2FtZXJh", 334);
    client.cmd_expect("Y2FtZXJhLXB3", 235);
    send_mail(&mut client, "ops@remote.test");
}

#[test]
fn auth_before_tls_is_refused_and_failures_get_535_then_421() {
    let pki = TestPki::new(&["localhost"]);
    let daemon = Daemon::start(tls_config(&pki));
    let mut client = connect(daemon.port);
    client.cmd_expect("EHLO lan.test", 250);
    client.cmd_expect(&format!("AUTH PLAIN {CAMERA_PLAIN}"), 538);
    client.cmd_expect("STARTTLS", 220);
    client
        .upgrade_for(pki.client_config(), "localhost")
        .unwrap();
    client.cmd_expect("EHLO lan.test", 250);
    let started = Instant::now();
    client.cmd_expect(&format!("AUTH PLAIN {WRONG_PLAIN}"), 535);
    assert!(
        started.elapsed() >= AUTH_DELAY_FLOOR,
        "535 came without a delay"
    );
    client.cmd_expect(&format!("AUTH PLAIN {WRONG_PLAIN}"), 535);
    client.cmd_expect(&format!("AUTH PLAIN {WRONG_PLAIN}"), 535);
    client.read_expect(421);
    assert!(client.is_closed(), "{}", client.transcript());
}

#[test]
fn require_tls_refuses_mail_before_starttls() {
    let pki = TestPki::new(&["localhost"]);
    let mut config = tls_config(&pki);
    config.require_tls = true;
    config.relay_from = vec!["127.0.0.0/8".parse().unwrap()];
    let daemon = Daemon::start(config);
    let mut client = connect(daemon.port);
    client.cmd_expect("EHLO lan.test", 250);
    let refused = client.cmd_expect("MAIL FROM:<cam@lan.test>", 530);
    assert!(refused.text().starts_with("5.7.0"), "{refused}");
    client.cmd_expect("STARTTLS", 220);
    client
        .upgrade_for(pki.client_config(), "localhost")
        .unwrap();
    client.cmd_expect("EHLO lan.test", 250);
    send_mail(&mut client, "ops@remote.test");
}

/// CVE-2011-0411: a command pipelined behind STARTTLS in the same write must never be executed
/// inside the TLS session. outpost drops the connection after the 220.
#[test]
fn plaintext_pipelined_after_starttls_is_never_executed() {
    let pki = TestPki::new(&["localhost"]);
    let mut config = tls_config(&pki);
    config.relay_from = vec!["127.0.0.0/8".parse().unwrap()];
    let daemon = Daemon::start(config);
    let mut client = connect(daemon.port);
    client.cmd_expect("EHLO lan.test", 250);
    client.send(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n");
    client.read_expect(220);
    // The server must not go on: either the handshake fails or the connection is closed, and
    // no reply to the injected MAIL ever arrives, in plaintext or inside TLS.
    match client.upgrade_for(pki.client_config(), "localhost") {
        Err(_) => {}
        Ok(()) => match client.try_read_reply() {
            Err(_) => {}
            Ok(reply) => client.fail(&format!("injected command answered: {reply}")),
        },
    }
    // Without the injection, the same server does STARTTLS fine.
    let mut honest = connect(daemon.port);
    starttls(&mut honest, &pki);
    honest.cmd_expect("MAIL FROM:<cam@lan.test>", 250);
}

/// A body arrives in 4 KiB reads; the session hands the store whole `MAX_EXTENT` pieces, so a
/// 100 KiB message is four pieces, with its extents inline in `msg/` rather than five or more
/// `part/` records that sled would hold in memory while the message is queued.
#[test]
fn a_large_body_reaches_the_store_in_whole_pieces() {
    let daemon = Daemon::start(Config {
        hostname: "outpost.test".into(),
        ..Config::default()
    });
    let mut client = connect(daemon.port);
    client.cmd_expect("EHLO lan.test", 250);
    let line = format!("{}\r\n", "x".repeat(98));
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    while body.len() < 100 * 1024 {
        body.extend_from_slice(line.as_bytes());
    }
    let reply = client.send_mail("cam@lan.test", &["ops@remote.test"], &body);
    client.check(reply.code == 250, "250 to the final dot");
    client.cmd_expect("QUIT", 221);
    let dir = daemon.stop();

    let options = StoreOptions {
        cache_bytes: 1024 * 1024,
        flush_every_ms: None,
        max_bytes: u64::MAX,
    };
    let store = Store::open(&dir.path().join("data"), options).unwrap();
    let queued = store.list().unwrap();
    assert_eq!(queued.len(), 1);
    let pieces: Vec<Vec<u8>> = store
        .body_chunks(queued[0].id)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let sizes: Vec<usize> = pieces.iter().map(Vec::len).collect();
    let (last, whole) = sizes.split_last().unwrap();
    assert_eq!(sizes.len(), 4, "{sizes:?}");
    assert!(whole.iter().all(|&n| n == MAX_EXTENT), "{sizes:?}");
    assert!(*last > 0 && *last <= MAX_EXTENT, "{sizes:?}");
    let stored = pieces.concat();
    assert!(stored.starts_with(b"Received: "));
    assert!(
        stored.ends_with(&body),
        "the body arrived whole and in order"
    );
}
