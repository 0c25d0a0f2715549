//! End-to-end tests of TLS and AUTH through the real daemon (`run_with` on 127.0.0.1:0 in a
//! thread, real store in a temp dir): STARTTLS, implicit TLS, AUTH, `require_tls`, the
//! STARTTLS injection, and delivery to an independent TLS smarthost (mailin-embedded) with a
//! private CA. Certificates are made at test time (rcgen). Every wait is bounded.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use async_io::Timer;
use mailin_embedded::{AuthMechanism, Handler, Response, Server, SslConfig};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::*;
use crate::config::{Secret, Smarthost, SmarthostAuth, TlsFiles, User};
use crate::smtp::client::TlsPolicy;
use crate::store::{Store, StoreOptions, MAX_EXTENT};
use crate::tls::tests::TestPki;

/// `openssl passwd -6 -salt Zx9q2mB7 camera-pw`
const CAMERA_HASH: &str = "$6$Zx9q2mB7$7euoUzgiGoP/JG7b1oQ/kumgdF6Rt0IqsCVygrN/0nG5ZBWl2b626DDB\
                           nWCtQEYUs8L4DnHNrO320C/FDxqzL0";
/// base64 of `\0camera\0camera-pw`
const CAMERA_PLAIN: &str = "AGNhbWVyYQBjYW1lcmEtcHc=";
/// base64 of `\0camera\0wrong`
const WRONG_PLAIN: &str = "AGNhbWVyYQB3cm9uZw==";
const READ_TIMEOUT: Duration = Duration::from_secs(15);

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

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    Gone,
}

/// A blocking SMTP test client (std + rustls directly, independent of the daemon's glue).
struct Client {
    stream: Stream,
    buf: Vec<u8>,
    transcript: String,
}

impl Client {
    fn connect(port: u16) -> Self {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut client = Self {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
            transcript: String::new(),
        };
        client.expect(220);
        client
    }

    /// Implicit TLS: the handshake before the greeting.
    fn connect_tls(port: u16, config: Arc<ClientConfig>) -> Self {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut client = Self {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
            transcript: String::new(),
        };
        client.upgrade(config).unwrap();
        client.expect(220);
        client
    }

    fn upgrade(&mut self, config: Arc<ClientConfig>) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            panic!("upgrade of a TLS stream");
        };
        let name = tls::server_name("localhost:25").unwrap();
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) {
        self.transcript += &format!("C: {:?}\n", String::from_utf8_lossy(bytes));
        let result = match &mut self.stream {
            Stream::Plain(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Stream::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        };
        result.unwrap_or_else(|e| panic!("write: {e}\n{}", self.transcript));
    }

    fn read_some(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let n = match &mut self.stream {
            Stream::Plain(s) => s.read(&mut chunk)?,
            Stream::Tls(s) => s.read(&mut chunk)?,
            Stream::Gone => return Err(io::ErrorKind::NotConnected.into()),
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// One reply: code and text lines joined by `\n`.
    fn reply(&mut self) -> io::Result<(u16, String)> {
        let mut lines = Vec::new();
        loop {
            while !self.buf.contains(&b'\n') {
                if self.read_some()? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            let end = self.buf.iter().position(|&b| b == b'\n').unwrap_or(0);
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
            self.transcript += &format!("S: {line}\n");
            let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            lines.push(line.get(4..).unwrap_or("").to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, lines.join("\n")));
            }
        }
    }

    fn expect(&mut self, code: u16) -> String {
        match self.reply() {
            Ok((got, text)) if got == code => text,
            other => panic!("expected {code}, got {other:?}\n{}", self.transcript),
        }
    }

    fn cmd(&mut self, line: &str, code: u16) -> String {
        self.write(format!("{line}\r\n").as_bytes());
        self.expect(code)
    }

    /// EHLO, STARTTLS, handshake, EHLO again; returns the second EHLO reply.
    fn starttls(&mut self, config: Arc<ClientConfig>) -> String {
        let ehlo = self.cmd("EHLO lan.test", 250);
        assert!(ehlo.contains("STARTTLS"), "{ehlo}");
        assert!(!ehlo.contains("AUTH"), "AUTH offered in plaintext: {ehlo}");
        self.cmd("STARTTLS", 220);
        self.upgrade(config).unwrap();
        self.cmd("EHLO lan.test", 250)
    }

    fn send_mail(&mut self, rcpt: &str) -> String {
        self.cmd("MAIL FROM:<cam@lan.test>", 250);
        self.cmd(&format!("RCPT TO:<{rcpt}>"), 250);
        self.cmd("DATA", 354);
        self.write(b"Subject: tls test\r\n\r\nhello over TLS\r\n.\r\n");
        self.expect(250)
    }

    /// True when the server closed the connection (EOF or reset) within the read timeout.
    fn is_closed(&mut self) -> bool {
        loop {
            match self.read_some() {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    }
}

#[test]
fn starttls_then_auth_then_relay() {
    let pki = TestPki::new(&["localhost"]);
    let daemon = Daemon::start(tls_config(&pki));
    let mut client = Client::connect(daemon.port);
    let ehlo = client.starttls(pki.client_config());
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    // Not in relay_from: refused until authenticated.
    client.cmd("MAIL FROM:<cam@lan.test>", 250);
    client.cmd("RCPT TO:<ops@remote.test>", 554);
    client.cmd("RSET", 250);
    client.cmd(&format!("AUTH PLAIN {CAMERA_PLAIN}"), 235);
    let queued = client.send_mail("ops@remote.test");
    assert!(queued.starts_with("2.0.0 queued as "), "{queued}");
    client.cmd("QUIT", 221);
}

#[test]
fn implicit_tls_greets_after_the_handshake_and_offers_auth() {
    let pki = TestPki::new(&["localhost"]);
    let daemon = Daemon::start(tls_config(&pki));
    let mut client = Client::connect_tls(daemon.tls_port.unwrap(), pki.client_config());
    let ehlo = client.cmd("EHLO lan.test", 250);
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    client.cmd("AUTH LOGIN", 334);
    client.cmd("Y2FtZXJh", 334);
    client.cmd("Y2FtZXJhLXB3", 235);
    let queued = client.send_mail("ops@remote.test");
    assert!(queued.starts_with("2.0.0 queued as "), "{queued}");
}

#[test]
fn auth_before_tls_is_refused_and_failures_get_535_then_421() {
    let pki = TestPki::new(&["localhost"]);
    let daemon = Daemon::start(tls_config(&pki));
    let mut client = Client::connect(daemon.port);
    client.cmd("EHLO lan.test", 250);
    client.cmd(&format!("AUTH PLAIN {CAMERA_PLAIN}"), 538);
    client.cmd("STARTTLS", 220);
    client.upgrade(pki.client_config()).unwrap();
    client.cmd("EHLO lan.test", 250);
    let started = Instant::now();
    client.cmd(&format!("AUTH PLAIN {WRONG_PLAIN}"), 535);
    assert!(
        started.elapsed() >= AUTH_DELAY_FLOOR,
        "535 came without a delay"
    );
    client.cmd(&format!("AUTH PLAIN {WRONG_PLAIN}"), 535);
    client.cmd(&format!("AUTH PLAIN {WRONG_PLAIN}"), 535);
    client.expect(421);
    assert!(client.is_closed());
}

/// The failure delay is 1.5 s; checking for at least 1 s keeps the test meaningful without a
/// wall-clock upper bound.
const AUTH_DELAY_FLOOR: Duration = Duration::from_secs(1);

#[test]
fn require_tls_refuses_mail_before_starttls() {
    let pki = TestPki::new(&["localhost"]);
    let mut config = tls_config(&pki);
    config.require_tls = true;
    config.relay_from = vec!["127.0.0.0/8".parse().unwrap()];
    let daemon = Daemon::start(config);
    let mut client = Client::connect(daemon.port);
    client.cmd("EHLO lan.test", 250);
    let refused = client.cmd("MAIL FROM:<cam@lan.test>", 530);
    assert!(refused.starts_with("5.7.0"), "{refused}");
    client.cmd("STARTTLS", 220);
    client.upgrade(pki.client_config()).unwrap();
    client.cmd("EHLO lan.test", 250);
    client.send_mail("ops@remote.test");
}

/// CVE-2011-0411: a command pipelined behind STARTTLS in the same write must never be executed
/// inside the TLS session. outpost drops the connection after the 220.
#[test]
fn plaintext_pipelined_after_starttls_is_never_executed() {
    let pki = TestPki::new(&["localhost"]);
    let mut config = tls_config(&pki);
    config.relay_from = vec!["127.0.0.0/8".parse().unwrap()];
    let daemon = Daemon::start(config);
    let mut client = Client::connect(daemon.port);
    client.cmd("EHLO lan.test", 250);
    client.write(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n");
    client.expect(220);
    // The server must not go on: either the handshake fails or the connection is closed, and
    // no reply to the injected MAIL ever arrives, in plaintext or inside TLS.
    match client.upgrade(pki.client_config()) {
        Err(_) => {}
        Ok(()) => match client.reply() {
            Err(_) => {}
            Ok(reply) => panic!(
                "injected command answered: {reply:?}\n{}",
                client.transcript
            ),
        },
    }
    // Without the injection, the same server does STARTTLS fine.
    let mut honest = Client::connect(daemon.port);
    honest.starttls(pki.client_config());
    honest.cmd("MAIL FROM:<cam@lan.test>", 250);
}

// ---------------------------------------------------------------------------------------------
// Outbound: an independent smarthost (mailin-embedded, STARTTLS with rustls, AUTH)

#[derive(Clone, Default)]
struct Upstream {
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    logins: Arc<Mutex<Vec<String>>>,
    data: Vec<u8>,
}

impl Handler for Upstream {
    fn data_start(&mut self, _: &str, _: &str, _: bool, _: &[String]) -> Response {
        self.data.clear();
        mailin_embedded::response::OK
    }
    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }
    fn data_end(&mut self) -> Response {
        self.received
            .lock()
            .unwrap()
            .push(std::mem::take(&mut self.data));
        mailin_embedded::response::OK
    }
    fn auth_plain(&mut self, _authzid: &str, user: &str, password: &str) -> Response {
        self.check_login(user, password)
    }
    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.check_login(user, password)
    }
}

impl Upstream {
    fn check_login(&mut self, user: &str, password: &str) -> Response {
        self.logins.lock().unwrap().push(user.to_owned());
        if user == "relay" && password == "upstream-pw" {
            mailin_embedded::response::AUTH_OK
        } else {
            mailin_embedded::response::INVALID_CREDENTIALS
        }
    }

    /// Starts mailin on 127.0.0.1:0, with STARTTLS when `pki` is given and AUTH when `auth`.
    fn start(pki: Option<&TestPki>, auth: bool) -> (u16, Self) {
        // mailin builds its rustls config with the process-default provider; test builds
        // compile two providers, so one must be chosen (outpost itself always passes ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let upstream = Self::default();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = Server::new(upstream.clone());
        server
            .with_name("upstream.test")
            .with_tcp_listener(listener)
            .with_num_threads(4);
        if let Some(pki) = pki {
            server
                .with_ssl(SslConfig::SelfSigned {
                    cert_path: pki.cert.display().to_string(),
                    key_path: pki.key.display().to_string(),
                })
                .unwrap();
        }
        if auth {
            server.with_auth(AuthMechanism::Plain);
            server.with_auth(AuthMechanism::Login);
        }
        thread::spawn(move || {
            let _ = server.serve();
        });
        (port, upstream)
    }

    fn wait_for(&self, n: usize, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if self.received.lock().unwrap().len() >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(25));
        }
        false
    }
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

/// Submits one message in plaintext from loopback (inside the default relay_from).
fn submit(port: u16) {
    let mut client = Client::connect(port);
    client.cmd("EHLO lan.test", 250);
    client.send_mail("ops@remote.test");
    client.cmd("QUIT", 221);
}

#[test]
fn outbound_starttls_to_an_independent_smarthost_with_a_private_ca() {
    let pki = TestPki::new(&["127.0.0.1"]);
    let (port, upstream) = Upstream::start(Some(&pki), false);
    let daemon = Daemon::start(relay_to(port, TlsPolicy::StartTls, Some(&pki)));
    submit(daemon.port);
    assert!(
        upstream.wait_for(1, Duration::from_secs(20)),
        "not delivered"
    );
    let received = upstream.received.lock().unwrap()[0].clone();
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("hello over TLS"), "{text}");
}

#[test]
fn untrusted_certificate_means_not_sent_and_still_queued() {
    let pki = TestPki::new(&["127.0.0.1"]);
    let stranger = TestPki::new(&["127.0.0.1"]);
    let (port, upstream) = Upstream::start(Some(&pki), false);
    // Trusts another CA only: the smarthost's certificate must be refused.
    let daemon = Daemon::start(relay_to(port, TlsPolicy::StartTls, Some(&stranger)));
    submit(daemon.port);
    assert!(
        !upstream.wait_for(1, Duration::from_secs(3)),
        "sent despite a bad certificate"
    );
    // Same with the default web PKI roots, on the same queue.
    let dir = daemon.stop();
    let daemon = Daemon::start_in(relay_to(port, TlsPolicy::StartTls, None), dir);
    assert!(
        !upstream.wait_for(1, Duration::from_secs(3)),
        "sent despite a bad certificate"
    );
    // Still queued: once the operator trusts the right CA, it goes.
    let dir = daemon.stop();
    let _daemon = Daemon::start_in(relay_to(port, TlsPolicy::StartTls, Some(&pki)), dir);
    assert!(
        upstream.wait_for(1, Duration::from_secs(20)),
        "the message was lost"
    );
}

/// A TLS-terminating front for a plaintext SMTP server (mailin has no implicit TLS): each
/// connection is a rustls server stream on one side and plain TCP on the other, copied both
/// ways by polling with short read timeouts.
fn implicit_tls_front(pki: &TestPki, backend: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = pki.server_config();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let config = Arc::clone(&config);
            thread::spawn(move || proxy_tls(client, config, backend));
        }
    });
    port
}

fn proxy_tls(client: TcpStream, config: Arc<rustls::ServerConfig>, backend: u16) {
    let Ok(mut backend) = TcpStream::connect(("127.0.0.1", backend)) else {
        return;
    };
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let tick = Some(Duration::from_millis(10));
    let _ = client.set_read_timeout(tick);
    let _ = backend.set_read_timeout(tick);
    let mut tls = StreamOwned::new(conn, client);
    let mut buf = [0u8; 4096];
    let idle = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    };
    let end = Instant::now() + Duration::from_secs(60);
    // Finish the handshake before relaying: a write while handshaking reads the ClientHello
    // first, and a slow client (under emulation) may not have sent it within one tick.
    while tls.conn.is_handshaking() {
        match tls.conn.complete_io(&mut tls.sock) {
            Ok(_) => {}
            Err(e) if idle(&e) && Instant::now() < end => {}
            Err(_) => return,
        }
    }
    while Instant::now() < end {
        match tls.read(&mut buf) {
            Ok(0) => return,
            Ok(n) if backend.write_all(&buf[..n]).is_err() => return,
            Ok(_) => {}
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
        match backend.read(&mut buf) {
            Ok(0) => return,
            Ok(n) if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() => return,
            Ok(_) => {}
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn outbound_implicit_tls() {
    let pki = TestPki::new(&["127.0.0.1"]);
    let (backend, upstream) = Upstream::start(None, false);
    let port = implicit_tls_front(&pki, backend);
    let daemon = Daemon::start(relay_to(port, TlsPolicy::Implicit, Some(&pki)));
    submit(daemon.port);
    assert!(
        upstream.wait_for(1, Duration::from_secs(20)),
        "not delivered"
    );
    // An implicit-TLS policy against a plaintext server sends nothing.
    let (plain_port, plain) = Upstream::start(None, false);
    let daemon = Daemon::start(relay_to(plain_port, TlsPolicy::Implicit, Some(&pki)));
    submit(daemon.port);
    assert!(!plain.wait_for(1, Duration::from_secs(3)), "sent in clear");
}

#[test]
fn smarthost_without_starttls_gets_nothing_in_clear() {
    let (port, upstream) = Upstream::start(None, false);
    let pki = TestPki::new(&["127.0.0.1"]);
    let daemon = Daemon::start(relay_to(port, TlsPolicy::StartTls, Some(&pki)));
    submit(daemon.port);
    assert!(
        !upstream.wait_for(1, Duration::from_secs(3)),
        "sent in clear"
    );
}

#[test]
fn smarthost_auth_over_starttls() {
    let pki = TestPki::new(&["127.0.0.1"]);
    let (port, upstream) = Upstream::start(Some(&pki), true);
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pw");
    std::fs::write(&password_file, "upstream-pw\n").unwrap();
    let mut config = relay_to(port, TlsPolicy::StartTls, Some(&pki));
    if let Some(smarthost) = config.smarthosts.first_mut() {
        smarthost.auth = Some(SmarthostAuth {
            username: "relay".into(),
            password_file,
            password: Secret::new("upstream-pw".into()),
        });
    }
    let daemon = Daemon::start(config);
    submit(daemon.port);
    assert!(
        upstream.wait_for(1, Duration::from_secs(20)),
        "not delivered"
    );
    assert_eq!(upstream.logins.lock().unwrap().as_slice(), ["relay"]);
}

#[test]
fn smarthost_auth_failure_keeps_mail_queued() {
    let pki = TestPki::new(&["127.0.0.1"]);
    let (port, upstream) = Upstream::start(Some(&pki), true);
    let mut config = relay_to(port, TlsPolicy::StartTls, Some(&pki));
    if let Some(smarthost) = config.smarthosts.first_mut() {
        smarthost.auth = Some(SmarthostAuth {
            username: "relay".into(),
            password_file: "unused".into(),
            password: Secret::new("wrong".into()),
        });
    }
    let daemon = Daemon::start(config);
    submit(daemon.port);
    assert!(
        !upstream.wait_for(1, Duration::from_secs(3)),
        "delivered without AUTH"
    );
    assert!(
        !upstream.logins.lock().unwrap().is_empty(),
        "AUTH never tried"
    );
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
    let mut client = Client::connect(daemon.port);
    client.cmd("EHLO lan.test", 250);
    client.cmd("MAIL FROM:<cam@lan.test>", 250);
    client.cmd("RCPT TO:<ops@remote.test>", 250);
    client.cmd("DATA", 354);
    let line = format!("{}\r\n", "x".repeat(98));
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    while body.len() < 100 * 1024 {
        body.extend_from_slice(line.as_bytes());
    }
    client.write(&body);
    client.write(b".\r\n");
    client.expect(250);
    client.cmd("QUIT", 221);
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
