//! End-to-end tests through the real daemon (`run_with` on 127.0.0.1:0 in a thread, real store
//! in a temp dir), with the test kit's peers: what clients see (`inbound`: STARTTLS, implicit
//! TLS, AUTH, `require_tls`, the STARTTLS injection, a large body in the store) and what the
//! smarthost sees (`outbound`: TLS with a private CA, implicit TLS, smarthost AUTH). This file
//! holds the daemon harness and the configs both share. Certificates are made at test time
//! (the kit's PKI); every wait is bounded, and an absence is proven by the daemon's own report
//! (`outpost status` over its control socket) of the attempt that did not send.

mod inbound;
mod outbound;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use async_io::Timer;

use super::*;
use crate::config::{Smarthost, TlsFiles, User};
use crate::control::{self, Request};
use crate::kit::{assert_queued, wait_until, RawClient, TestPki};
use crate::smtp::client::TlsPolicy;

/// `openssl passwd -6 -salt Zx9q2mB7 camera-pw`
const CAMERA_HASH: &str = "$6$Zx9q2mB7$7euoUzgiGoP/JG7b1oQ/kumgdF6Rt0IqsCVygrN/0nG5ZBWl2b626DDB\
                           nWCtQEYUs8L4DnHNrO320C/FDxqzL0";
/// The message every test submits.
const BODY: &[u8] = b"Subject: tls test\r\n\r\nhello over TLS\r\n";
/// How long the daemon gets to report an attempt in `outpost status` (times the kit's slack).
const STATUS_DEADLINE: Duration = Duration::from_secs(20);

/// The daemon in a thread, stopped and joined on drop.
struct Daemon {
    port: u16,
    tls_port: Option<u16>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), DaemonError>>>,
    dir: Option<tempfile::TempDir>,
}

impl Daemon {
    fn start(config: Config) -> Self {
        Self::start_in(config, tempfile::tempdir().unwrap())
    }

    /// Starts on the queue in `dir` (a restart keeps the queue).
    fn start_in(mut config: Config, dir: tempfile::TempDir) -> Self {
        config.data_dir = dir.path().join("data");
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = plain.local_addr().unwrap().port();
        let tls = config
            .tls
            .is_some()
            .then(|| TcpListener::bind("127.0.0.1:0").unwrap());
        let tls_port = tls.as_ref().map(|l| l.local_addr().unwrap().port());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            run_with(config, vec![plain], tls.into_iter().collect(), async move {
                while !flag.load(Ordering::SeqCst) {
                    Timer::after(Duration::from_millis(20)).await;
                }
            })
        });
        Self {
            port,
            tls_port,
            stop,
            thread: Some(thread),
            dir: Some(dir),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.as_ref().unwrap().path().join("data")
    }

    /// Waits (bounded) until the daemon's `outpost status` (over its control socket) holds a
    /// line starting with `prefix` and containing `needle`; panics with the last status if not.
    fn wait_status(&self, prefix: &str, needle: &str) {
        let mut status = String::new();
        let seen = wait_until(STATUS_DEADLINE, Duration::from_millis(50), || {
            if let Ok(answer) = control::request(&self.data_dir(), &Request::Status) {
                status = answer.body;
            }
            status
                .lines()
                .any(|l| l.starts_with(prefix) && l.contains(needle))
        });
        assert!(seen, "no `{prefix}…{needle}…` in the status:\n{status}");
    }

    /// Stops the daemon and hands its data dir over (for a restart).
    fn stop(mut self) -> tempfile::TempDir {
        self.join();
        self.dir.take().unwrap()
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            if !thread::panicking() {
                result.unwrap().unwrap();
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.join();
    }
}

/// A relay with `[tls]`, one user (camera), relaying only for 192.0.2.0/24 (so the loopback
/// test client must authenticate to relay), and no smarthost.
fn tls_config(pki: &TestPki) -> Config {
    let mut config = Config {
        hostname: "outpost.test".into(),
        tls: Some(TlsFiles {
            cert: pki.cert.clone(),
            key: pki.key.clone(),
        }),
        users: vec![User {
            name: "camera".into(),
            password_hash: CAMERA_HASH.into(),
        }],
        relay_from: vec!["192.0.2.0/24".parse().unwrap()],
        ..Config::default()
    };
    config.queue.retry_min = Duration::from_secs(1);
    config.queue.retry_max = Duration::from_secs(2);
    config.timeouts.smarthost = Duration::from_secs(10);
    config
}

/// A relay that forwards to `127.0.0.1:port` with `tls`, trusting `ca` (None: web PKI).
fn relay_to(port: u16, tls: TlsPolicy, ca: Option<&TestPki>) -> Config {
    let mut config = Config {
        hostname: "outpost.test".into(),
        smarthosts: [Smarthost {
            address: format!("127.0.0.1:{port}"),
            tls,
            ca_file: ca.map(|pki| pki.ca.clone()),
            auth: None,
            oauth2: None,
            from: None,
            connections: 2,
        }]
        .into_iter()
        .collect(),
        ..Config::default()
    };
    config.queue.retry_min = Duration::from_secs(1);
    config.queue.retry_max = Duration::from_secs(2);
    config.timeouts.smarthost = Duration::from_secs(10);
    config
}

/// Connects and checks the 220 greeting.
fn connect(port: u16) -> RawClient {
    let (client, greeting) = RawClient::connect(port);
    client.check(greeting.code == 220, "greeting 220");
    client
}

/// EHLO, STARTTLS, the handshake for `localhost` (the daemon's certificate), EHLO again;
/// returns the second EHLO reply.
fn starttls(client: &mut RawClient, pki: &TestPki) -> String {
    let ehlo = client.cmd_expect("EHLO lan.test", 250).to_string();
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "AUTH offered in plaintext: {ehlo}");
    client.cmd_expect("STARTTLS", 220);
    client
        .upgrade_for(pki.client_config(), "localhost")
        .unwrap();
    client.cmd_expect("EHLO lan.test", 250).to_string()
}

/// Sends `BODY` from cam@lan.test to `rcpt`; checks that it is queued.
fn send_mail(client: &mut RawClient, rcpt: &str) {
    assert_queued(&client.send_mail("cam@lan.test", &[rcpt], BODY));
}

/// Submits one message in plaintext from loopback (inside the default relay_from).
fn submit(port: u16) {
    let mut client = connect(port);
    client.cmd_expect("EHLO lan.test", 250);
    send_mail(&mut client, "ops@remote.test");
    client.cmd_expect("QUIT", 221);
}
