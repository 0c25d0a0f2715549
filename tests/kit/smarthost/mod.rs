//! The one fake smarthost of the test kit. Every test that needs a peer for the relay's
//! outgoing mail builds one `Smarthost`: a reply policy per stage and recipient, an optional
//! fixed port ("down, then up"), STARTTLS or implicit TLS with the test PKI, AUTH PLAIN/LOGIN
//! credentials, or OAuth bearer tokens. Plain and TLS smarthosts are mailin-embedded (an
//! independent server, `mailin`); the bearer one is the kit's own (`bearer`), as mailin has no
//! XOAUTH2. Either way it records what it accepted in `Delivered`. Binds 127.0.0.1 only and
//! never uses the relay's SMTP code.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use mailin_embedded::{Response, SslConfig};

use super::{wait_until, OAuthShared, TestPki};

mod bearer;
mod mailin;

/// The header that marks a message a test sends only to prove that an earlier one is settled
/// (`settle`); `Smarthost::unmarked` leaves such messages out.
pub(crate) const MARKER_HEADER: &str = "X-Test-Marker";

/// One message the smarthost accepted with 250 to its final dot.
#[derive(Clone, Debug)]
pub(crate) struct Delivered {
    /// Reverse-path without brackets; empty for the null sender `<>`.
    pub(crate) from: String,
    pub(crate) to: Vec<String>,
    /// The message as received, dot-unstuffed, CRLF line ends as sent.
    pub(crate) data: Vec<u8>,
    /// Whether MAIL carried `BODY=8BITMIME`.
    pub(crate) is8bit: bool,
}

impl Delivered {
    pub(crate) fn data_str(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The data with the first header field (the relay's `Received:`) removed, or `None` when
    /// the message does not start with `Received:`.
    pub(crate) fn after_received(&self) -> Option<&[u8]> {
        strip_received(&self.data)
    }

    /// Whether this is a marker message (`MARKER_HEADER`), not one the test is about.
    pub(crate) fn is_marker(&self) -> bool {
        let head = format!("{MARKER_HEADER}:");
        self.data_str().lines().any(|l| l.starts_with(&head))
    }
}

/// Removes the leading `Received:` field (with its folded continuation lines).
pub(crate) fn strip_received(data: &[u8]) -> Option<&[u8]> {
    if !data.get(..9)?.eq_ignore_ascii_case(b"Received:") {
        return None;
    }
    let mut pos = 0;
    loop {
        let nl = data[pos..].iter().position(|&b| b == b'\n')? + pos + 1;
        pos = nl;
        match data.get(pos) {
            Some(b' ' | b'\t') => continue,
            _ => return Some(&data[pos..]),
        }
    }
}

/// The point in the smarthost's dialogue a policy is asked about. (Not every test reads every
/// field.)
#[derive(Debug)]
#[allow(dead_code)]
pub(crate) enum Stage<'a> {
    Helo,
    Mail {
        from: &'a str,
    },
    Rcpt {
        to: &'a str,
    },
    Data {
        from: &'a str,
        to: &'a [String],
    },
    /// Final dot; the message is recorded only if the policy returns `None` or a 2xx.
    DataEnd(&'a Delivered),
}

/// Decides a non-default reply; `None` means 250.
pub(crate) type Policy = dyn Fn(&Stage<'_>) -> Option<Response> + Send + Sync;

/// What every engine of one smarthost shares: the policy and what it recorded.
pub(super) struct SmarthostShared {
    pub(super) delivered: Mutex<Vec<Delivered>>,
    pub(super) policy: Box<Policy>,
    pub(super) transcript: Mutex<String>,
    /// Accepted `(user, password)` pairs for AUTH PLAIN/LOGIN (none: no AUTH offered).
    pub(super) credentials: Vec<(String, String)>,
    /// The user of every AUTH attempt, accepted or not.
    pub(super) logins: Mutex<Vec<String>>,
    /// Connections open now, and the most open at once (counted by the plain-TCP recorder).
    pub(super) open: AtomicUsize,
    pub(super) max_open: AtomicUsize,
}

/// `Smarthost::tally`: acknowledged ids that never arrived, deliveries beyond the first of an id,
/// ids that arrived without having been acknowledged, and distinct ids arrived.
pub(crate) struct Tally {
    pub(crate) lost: Vec<String>,
    pub(crate) duplicates: usize,
    pub(crate) unacked: usize,
    pub(crate) arrived: usize,
}

/// How a `Smarthost` is started; `Smarthost::builder()`.
pub(crate) struct SmarthostBuilder {
    policy: Box<Policy>,
    port: Option<u16>,
    starttls: Option<(PathBuf, PathBuf)>,
    implicit: Option<(PathBuf, PathBuf)>,
    credentials: Vec<(String, String)>,
    oauth: Option<(PathBuf, PathBuf, OAuthShared, bool)>,
}

impl SmarthostBuilder {
    /// Replies other than 250: `policy` is asked at every stage (`None` means 250).
    pub(crate) fn policy(
        mut self,
        policy: impl Fn(&Stage<'_>) -> Option<Response> + Send + Sync + 'static,
    ) -> Self {
        self.policy = Box::new(policy);
        self
    }

    /// Listens on `port` (from `Smarthost::reserve_port`), waiting (bounded) until it is free.
    pub(crate) fn on_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Offers STARTTLS with `pki`'s certificate (mailin's own TLS: no transcript is recorded).
    pub(crate) fn starttls(self, pki: &TestPki) -> Self {
        self.starttls_files(&pki.cert, &pki.key)
    }

    /// STARTTLS with the PEM files `cert` and `key`.
    pub(crate) fn starttls_files(mut self, cert: &Path, key: &Path) -> Self {
        self.starttls = Some((cert.to_owned(), key.to_owned()));
        self
    }

    /// Implicit TLS (the handshake before the greeting) with `pki`'s certificate.
    pub(crate) fn implicit_tls(mut self, pki: &TestPki) -> Self {
        self.implicit = Some((pki.cert.clone(), pki.key.clone()));
        self
    }

    /// Offers AUTH PLAIN and LOGIN and accepts `user` with `password` (may be called again).
    pub(crate) fn login(mut self, user: &str, password: &str) -> Self {
        self.credentials
            .push((user.to_owned(), password.to_owned()));
        self
    }

    /// The bearer-token smarthost: STARTTLS with `pki`, then AUTH XOAUTH2 (and OAUTHBEARER when
    /// `oauthbearer`) with the access token `state` says is valid.
    pub(crate) fn oauth(mut self, pki: &TestPki, state: &OAuthShared, oauthbearer: bool) -> Self {
        let state = Arc::clone(state);
        self.oauth = Some((pki.cert.clone(), pki.key.clone(), state, oauthbearer));
        self
    }

    pub(crate) fn start(self) -> Smarthost {
        let public = match self.port {
            Some(port) => bind_when_free(port),
            None => TcpListener::bind("127.0.0.1:0").unwrap(),
        };
        let port = public.local_addr().unwrap().port();
        let shared = Arc::new(SmarthostShared {
            delivered: Mutex::new(Vec::new()),
            policy: self.policy,
            transcript: Mutex::new(String::new()),
            credentials: self.credentials,
            logins: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            max_open: AtomicUsize::new(0),
        });
        if let Some((cert, key, state, oauthbearer)) = self.oauth {
            bearer::serve_smarthost(public, &cert, &key, &state, &shared, oauthbearer);
        } else if let Some((cert, key)) = self.starttls {
            let tls = SslConfig::SelfSigned {
                cert_path: cert.display().to_string(),
                key_path: key.display().to_string(),
            };
            mailin::run(&shared, public, Some(tls));
        } else {
            let inner = TcpListener::bind("127.0.0.1:0").unwrap();
            let inner_addr = inner.local_addr().unwrap();
            mailin::run(&shared, inner, None);
            match self.implicit {
                None => mailin::proxy(public, inner_addr, &shared),
                Some((cert, key)) => {
                    let recorder = TcpListener::bind("127.0.0.1:0").unwrap();
                    let recorder_addr = recorder.local_addr().unwrap();
                    mailin::proxy(recorder, inner_addr, &shared);
                    let config = super::server_config(&cert, &key);
                    mailin::tls_front(public, config, recorder_addr);
                }
            }
        }
        Smarthost { port, shared }
    }
}

/// Binds 127.0.0.1:`port`, retrying (bounded) while the port is still taken.
fn bind_when_free(port: u16) -> TcpListener {
    let mut listener = None;
    let found = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        listener = TcpListener::bind(("127.0.0.1", port)).ok();
        listener.is_some()
    });
    assert!(found, "could not bind the reserved smarthost port {port}");
    listener.unwrap()
}

/// A fake smarthost; see the module doc. Dumps its transcript and deliveries when a test fails.
///
/// mailin stays in its DATA state after a 4xx/5xx to the final dot, so policies should refuse at
/// HELO, MAIL, RCPT or DATA, or answer the final dot with 421 (which closes the connection).
pub(crate) struct Smarthost {
    port: u16,
    shared: Arc<SmarthostShared>,
}

impl Smarthost {
    pub(crate) fn builder() -> SmarthostBuilder {
        SmarthostBuilder {
            policy: Box::new(|_| None),
            port: None,
            starttls: None,
            implicit: None,
            credentials: Vec::new(),
            oauth: None,
        }
    }

    /// A smarthost that accepts everything.
    pub(crate) fn start() -> Self {
        Self::builder().start()
    }

    pub(crate) fn start_with_policy(
        policy: impl Fn(&Stage<'_>) -> Option<Response> + Send + Sync + 'static,
    ) -> Self {
        Self::builder().policy(policy).start()
    }

    /// Starts on a port chosen earlier with `reserve_port` ("smarthost down, then up").
    pub(crate) fn start_on(port: u16) -> Self {
        Self::builder().on_port(port).start()
    }

    pub(crate) fn start_on_with_policy(
        port: u16,
        policy: impl Fn(&Stage<'_>) -> Option<Response> + Send + Sync + 'static,
    ) -> Self {
        Self::builder().on_port(port).policy(policy).start()
    }

    /// A smarthost offering STARTTLS with the PEM `cert` and `key`.
    pub(crate) fn start_starttls(cert: &Path, key: &Path) -> Self {
        Self::builder().starttls_files(cert, key).start()
    }

    /// A loopback port that nothing listens on now (the smarthost is "down").
    ///
    /// Picked below the kernel's ephemeral range, so that neither another test's `bind(0)` nor
    /// an outgoing connection (the relay's own, which could otherwise connect to itself) takes
    /// it before `start_on`.
    pub(crate) fn reserve_port() -> u16 {
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        let span = low.saturating_sub(10_000).max(1);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().wrapping_mul(2_654_435_761);
        for _ in 0..200 {
            let n = u32::from(NEXT.fetch_add(1, Ordering::SeqCst));
            let offset = (seed.wrapping_add(n.wrapping_mul(7919))) % u32::from(span);
            let port = low - 1 - u16::try_from(offset).unwrap();
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
        // Fall back to any free port.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The user of every AUTH PLAIN/LOGIN attempt so far.
    pub(crate) fn logins(&self) -> Vec<String> {
        self.shared.logins.lock().unwrap().clone()
    }

    /// Every message accepted so far but the markers (`MARKER_HEADER`).
    pub(crate) fn unmarked(&self) -> Vec<Delivered> {
        let mut all = self.delivered();
        all.retain(|m| !m.is_marker());
        all
    }

    /// A copy of every message accepted so far.
    pub(crate) fn delivered(&self) -> Vec<Delivered> {
        self.shared.delivered.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.shared.delivered.lock().unwrap().len()
    }

    /// Waits (bounded) until at least `n` messages arrived; returns them all.
    pub(crate) fn wait_for(&self, n: usize, deadline: Duration) -> Option<Vec<Delivered>> {
        wait_until(deadline, Duration::from_millis(25), || self.count() >= n)
            .then(|| self.delivered())
    }

    /// The `X-Test-Id` values of the messages accepted so far, with how often each arrived.
    pub(crate) fn arrived_ids(&self) -> std::collections::HashMap<String, usize> {
        let mut ids = std::collections::HashMap::new();
        for m in self.delivered() {
            for line in m.data_str().lines() {
                if let Some(id) = line.strip_prefix("X-Test-Id: ") {
                    *ids.entry(id.trim().to_owned()).or_insert(0) += 1;
                }
            }
        }
        ids
    }

    /// What arrived, weighed against the ids the relay acknowledged.
    pub(crate) fn tally(&self, acked: &[String]) -> Tally {
        let ids = self.arrived_ids();
        Tally {
            lost: acked
                .iter()
                .filter(|id| !ids.contains_key(*id))
                .cloned()
                .collect(),
            duplicates: ids.values().map(|n| n - 1).sum(),
            unacked: ids.keys().filter(|id| !acked.contains(id)).count(),
            arrived: ids.len(),
        }
    }

    /// The most connections that were open at once so far (plain and implicit-TLS smarthosts,
    /// whose connections pass the recorder; 0 for the others).
    pub(crate) fn max_sessions(&self) -> usize {
        self.shared.max_open.load(Ordering::SeqCst)
    }

    pub(crate) fn transcript(&self) -> String {
        self.shared.transcript.lock().unwrap().clone()
    }
}

impl Drop for Smarthost {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "==== smarthost transcript (port {}) ====\n{}\n==== smarthost delivered ====\n{:#?}",
                self.port,
                self.transcript(),
                self.delivered()
            );
        }
    }
}

/// A reply for a smarthost policy.
pub(crate) fn reply(code: u16, text: &str) -> Response {
    Response::custom(code, text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::RawClient;
    use super::*;

    #[test]
    fn received_header_with_folded_lines_is_stripped() {
        let data = b"Received: from x\r\n\tby y; date\r\nSubject: s\r\n\r\nbody\r\n";
        assert_eq!(
            strip_received(data),
            Some(&b"Subject: s\r\n\r\nbody\r\n"[..])
        );
        assert_eq!(strip_received(b"Subject: s\r\n"), None);
    }

    #[test]
    fn smarthost_records_message_and_accepts_null_sender() {
        let upstream = Smarthost::start();
        let mut client = RawClient::ready(upstream.port());
        let reply = client.send_mail(
            "",
            &["postmaster@remote.test"],
            b"Subject: x\r\n\r\n..dot\r\n",
        );
        assert_eq!(reply.code, 250, "{}", client.transcript());
        let got = upstream.wait_for(1, Duration::from_secs(10)).unwrap();
        assert_eq!(got[0].from, "");
        assert_eq!(got[0].to, vec!["postmaster@remote.test".to_owned()]);
        assert_eq!(got[0].data, b"Subject: x\r\n\r\n.dot\r\n");
    }

    #[test]
    fn smarthost_policy_refuses_a_recipient() {
        let upstream = Smarthost::start_with_policy(|stage| match stage {
            Stage::Rcpt { to } if to.starts_with("bad") => Some(reply(550, "5.1.1 no such user")),
            _ => None,
        });
        let mut client = RawClient::ready(upstream.port());
        client.cmd("MAIL FROM:<a@lan.test>");
        assert_eq!(client.cmd("RCPT TO:<bad@remote.test>").code, 550);
        assert_eq!(client.cmd("RCPT TO:<good@remote.test>").code, 250);
    }

    #[test]
    fn starttls_then_auth_plain_then_mail() {
        let pki = TestPki::loopback();
        let smarthost = Smarthost::builder()
            .starttls(&pki)
            .login("relay", "upstream-pw")
            .start();
        let mut client = RawClient::ready(smarthost.port());
        client.starttls(pki.client_config()).unwrap();
        assert!(client.is_tls());
        let ehlo = client.cmd("EHLO client.test");
        assert_eq!(ehlo.code, 250, "{}", client.transcript());
        assert_eq!(client.cmd("AUTH PLAIN AHJlbGF5AHdyb25n").code, 535);
        // "\0relay\0upstream-pw"
        assert_eq!(client.cmd("AUTH PLAIN AHJlbGF5AHVwc3RyZWFtLXB3").code, 235);
        let reply = client.send_mail("a@lan.test", &["b@remote.test"], b"Subject: t\r\n\r\nx\r\n");
        assert_eq!(reply.code, 250, "{}", client.transcript());
        assert!(smarthost.wait_for(1, Duration::from_secs(10)).is_some());
        assert_eq!(smarthost.logins(), ["relay", "relay"]);
    }

    #[test]
    fn implicit_tls_greets_after_the_handshake_and_records_the_transcript() {
        let pki = TestPki::loopback();
        let smarthost = Smarthost::builder().implicit_tls(&pki).start();
        let (mut client, greeting) = RawClient::connect_tls(smarthost.port(), pki.client_config());
        assert_eq!(greeting.code, 220, "{}", client.transcript());
        assert_eq!(client.cmd("EHLO client.test").code, 250);
        let reply = client.send_mail("a@lan.test", &["b@remote.test"], b"Subject: t\r\n\r\nx\r\n");
        assert_eq!(reply.code, 250, "{}", client.transcript());
        let got = smarthost.wait_for(1, Duration::from_secs(10)).unwrap();
        assert_eq!(got[0].to, ["b@remote.test"]);
        assert!(smarthost.transcript().contains("RCPT TO:<b@remote.test>"));
    }
}
