//! What the smarthost sees of the daemon: STARTTLS with a private CA, certificates it must
//! refuse, implicit TLS, a smarthost without STARTTLS, and smarthost AUTH. The kit's fake
//! smarthost is the peer; where nothing may arrive, the daemon's report of the failed attempt
//! (`outpost status`) is the event that would have come after a delivery.

use std::time::Duration;

use super::*;
use crate::config::{Secret, SmarthostAuth};
use crate::kit::Smarthost;

/// How long a delivery that must happen may take (times the kit's slack).
const DELIVERY: Duration = Duration::from_secs(20);

#[test]
fn outbound_starttls_to_an_independent_smarthost_with_a_private_ca() {
    let pki = TestPki::loopback();
    let upstream = Smarthost::builder().starttls(&pki).start();
    let daemon = Daemon::start(relay_to(upstream.port(), TlsPolicy::StartTls, Some(&pki)));
    submit(daemon.port);
    let delivered = upstream.wait_for(1, DELIVERY).expect("not delivered");
    let text = delivered[0].data_str();
    assert!(text.contains("hello over TLS"), "{text}");
}

#[test]
fn untrusted_certificate_means_not_sent_and_still_queued() {
    let pki = TestPki::loopback();
    let stranger = TestPki::loopback();
    let upstream = Smarthost::builder().starttls(&pki).start();
    let port = upstream.port();
    // Trusts another CA only: the smarthost's certificate must be refused.
    let daemon = Daemon::start(relay_to(port, TlsPolicy::StartTls, Some(&stranger)));
    submit(daemon.port);
    daemon.wait_status("last error:", "not signed by a trusted CA");
    assert_eq!(upstream.count(), 0, "sent despite a bad certificate");
    // Same with the default web PKI roots, on the same queue.
    let dir = daemon.stop();
    let daemon = Daemon::start_in(relay_to(port, TlsPolicy::StartTls, None), dir);
    daemon.wait_status("last error:", "not signed by a trusted CA");
    assert_eq!(upstream.count(), 0, "sent despite a bad certificate");
    // Still queued: once the operator trusts the right CA, it goes.
    let dir = daemon.stop();
    let _daemon = Daemon::start_in(relay_to(port, TlsPolicy::StartTls, Some(&pki)), dir);
    assert!(
        upstream.wait_for(1, DELIVERY).is_some(),
        "the message was lost"
    );
}

#[test]
fn outbound_implicit_tls() {
    let pki = TestPki::loopback();
    let upstream = Smarthost::builder().implicit_tls(&pki).start();
    let daemon = Daemon::start(relay_to(upstream.port(), TlsPolicy::Implicit, Some(&pki)));
    submit(daemon.port);
    assert!(upstream.wait_for(1, DELIVERY).is_some(), "not delivered");
    // An implicit-TLS policy against a plaintext server sends nothing.
    let plain = Smarthost::start();
    let daemon = Daemon::start(relay_to(plain.port(), TlsPolicy::Implicit, Some(&pki)));
    submit(daemon.port);
    daemon.wait_status("last error:", "TLS handshake with");
    assert_eq!(plain.count(), 0, "sent in clear");
}

#[test]
fn smarthost_without_starttls_gets_nothing_in_clear() {
    let upstream = Smarthost::start();
    let pki = TestPki::loopback();
    let daemon = Daemon::start(relay_to(upstream.port(), TlsPolicy::StartTls, Some(&pki)));
    submit(daemon.port);
    daemon.wait_status("last error:", "does not offer STARTTLS");
    assert_eq!(upstream.count(), 0, "sent in clear");
}

#[test]
fn smarthost_auth_over_starttls() {
    let pki = TestPki::loopback();
    let upstream = Smarthost::builder()
        .starttls(&pki)
        .login("relay", "upstream-pw")
        .start();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pw");
    std::fs::write(&password_file, "upstream-pw\n").unwrap();
    let mut config = relay_to(upstream.port(), TlsPolicy::StartTls, Some(&pki));
    if let Some(smarthost) = config.smarthosts.first_mut() {
        smarthost.auth = Some(SmarthostAuth {
            username: "relay".into(),
            password_file,
            password: Secret::new("upstream-pw".into()),
        });
    }
    let daemon = Daemon::start(config);
    submit(daemon.port);
    assert!(upstream.wait_for(1, DELIVERY).is_some(), "not delivered");
    assert_eq!(upstream.logins(), ["relay"]);
}

#[test]
fn smarthost_auth_failure_keeps_mail_queued() {
    let pki = TestPki::loopback();
    let upstream = Smarthost::builder()
        .starttls(&pki)
        .login("relay", "upstream-pw")
        .start();
    let mut config = relay_to(upstream.port(), TlsPolicy::StartTls, Some(&pki));
    if let Some(smarthost) = config.smarthosts.first_mut() {
        smarthost.auth = Some(SmarthostAuth {
            username: "relay".into(),
            password_file: "unused".into(),
            password: Secret::new("wrong".into()),
        });
    }
    let daemon = Daemon::start(config);
    submit(daemon.port);
    daemon.wait_status("last error:", "authentication failed: 535");
    assert_eq!(upstream.count(), 0, "delivered without AUTH");
    assert!(!upstream.logins().is_empty(), "AUTH never tried");
}
