//! The upstream smarthost: mailin-embedded (an independent SMTP server) behind a line proxy that
//! records the transcript, with a scriptable reply policy. Binds 127.0.0.1 only.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use mailin_embedded::{response, Handler, Response, Server};

use super::wait_until;

/// One message the upstream accepted with 250 to its final dot.
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

struct UpstreamShared {
    delivered: Mutex<Vec<Delivered>>,
    policy: Box<Policy>,
    transcript: Mutex<String>,
}

/// mailin's parser wants a non-empty path in `MAIL FROM:<…>`; the proxy rewrites `<>` to this
/// marker and the handler maps it back to the empty reverse-path.
const NULL_SENDER_MARKER: &str = "null-sender=";

#[derive(Clone)]
struct RecordingHandler {
    shared: Arc<UpstreamShared>,
    from: String,
    to: Vec<String>,
    is8bit: bool,
    data: Vec<u8>,
}

impl RecordingHandler {
    fn decide(&self, stage: &Stage<'_>) -> Response {
        (self.shared.policy)(stage).unwrap_or(response::OK)
    }
}

impl Handler for RecordingHandler {
    fn helo(&mut self, _ip: std::net::IpAddr, _domain: &str) -> Response {
        self.decide(&Stage::Helo)
    }

    fn mail(&mut self, _ip: std::net::IpAddr, _domain: &str, from: &str) -> Response {
        let from = if from == NULL_SENDER_MARKER { "" } else { from };
        self.decide(&Stage::Mail { from })
    }

    fn rcpt(&mut self, to: &str) -> Response {
        self.decide(&Stage::Rcpt { to })
    }

    fn data_start(&mut self, _domain: &str, from: &str, is8bit: bool, to: &[String]) -> Response {
        let from = if from == NULL_SENDER_MARKER { "" } else { from };
        self.from = from.to_owned();
        self.to = to.to_vec();
        self.is8bit = is8bit;
        self.data.clear();
        self.decide(&Stage::Data { from, to })
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let message = Delivered {
            from: std::mem::take(&mut self.from),
            to: std::mem::take(&mut self.to),
            data: std::mem::take(&mut self.data),
            is8bit: self.is8bit,
        };
        let reply = self.decide(&Stage::DataEnd(&message));
        if !reply.is_error {
            self.shared.delivered.lock().unwrap().push(message);
        }
        reply
    }
}

/// `Upstream::tally`: acknowledged ids that never arrived, deliveries beyond the first of an id,
/// ids that arrived without having been acknowledged, and distinct ids arrived.
pub(crate) struct Tally {
    pub(crate) lost: Vec<String>,
    pub(crate) duplicates: usize,
    pub(crate) unacked: usize,
    pub(crate) arrived: usize,
}

/// An independent SMTP smarthost: mailin-embedded's server, reached through a line proxy that
/// records the transcript (and works around mailin's refusal of `MAIL FROM:<>`).
///
/// mailin stays in its DATA state after a 4xx/5xx to the final dot, so scripts should refuse at
/// HELO, MAIL, RCPT or DATA, or answer the final dot with 421 (which closes the connection).
pub(crate) struct Upstream {
    port: u16,
    shared: Arc<UpstreamShared>,
}

impl Upstream {
    /// A smarthost that accepts everything.
    pub(crate) fn start() -> Self {
        Self::start_with_policy(|_| None)
    }

    pub(crate) fn start_with_policy(
        policy: impl Fn(&Stage<'_>) -> Option<Response> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::serve(listener, Box::new(policy))
    }

    /// Starts on a port chosen earlier with `reserve_port` ("smarthost down, then up").
    pub(crate) fn start_on(port: u16) -> Self {
        Self::start_on_with_policy(port, |_| None)
    }

    pub(crate) fn start_on_with_policy(
        port: u16,
        policy: impl Fn(&Stage<'_>) -> Option<Response> + Send + Sync + 'static,
    ) -> Self {
        let mut listener = None;
        let found = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            listener = TcpListener::bind(("127.0.0.1", port)).ok();
            listener.is_some()
        });
        assert!(found, "could not bind the reserved upstream port {port}");
        Self::serve(listener.unwrap(), Box::new(policy))
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

    /// A smarthost offering STARTTLS with the PEM `cert` and `key`, reached directly (no
    /// recording proxy, which reads lines: the transcript stays empty; `delivered` works).
    pub(crate) fn start_starttls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        // mailin builds its rustls config with the process-default provider; this build links
        // two providers, so one must be chosen.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Self::shared(Box::new(|_| None));
        let tls = mailin_embedded::SslConfig::SelfSigned {
            cert_path: cert.display().to_string(),
            key_path: key.display().to_string(),
        };
        Self::run_mailin(&shared, listener, Some(tls));
        Self { port, shared }
    }

    fn shared(policy: Box<Policy>) -> Arc<UpstreamShared> {
        Arc::new(UpstreamShared {
            delivered: Mutex::new(Vec::new()),
            policy,
            transcript: Mutex::new(String::new()),
        })
    }

    fn run_mailin(
        shared: &Arc<UpstreamShared>,
        listener: TcpListener,
        tls: Option<mailin_embedded::SslConfig>,
    ) {
        let handler = RecordingHandler {
            shared: Arc::clone(shared),
            from: String::new(),
            to: Vec::new(),
            is8bit: false,
            data: Vec::new(),
        };
        let mut server = Server::new(handler);
        server
            .with_name("upstream.test")
            .with_num_threads(16)
            .with_tcp_listener(listener);
        if let Some(tls) = tls {
            server.with_ssl(tls).unwrap();
        }
        thread::spawn(move || {
            let _ = server.serve();
        });
    }

    fn serve(public: TcpListener, policy: Box<Policy>) -> Self {
        let port = public.local_addr().unwrap().port();
        let shared = Self::shared(policy);
        let inner = TcpListener::bind("127.0.0.1:0").unwrap();
        let inner_addr = inner.local_addr().unwrap();
        Self::run_mailin(&shared, inner, None);
        let proxy_shared = Arc::clone(&shared);
        thread::spawn(move || {
            for (n, client) in public.incoming().enumerate() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(inner_addr) else {
                    continue;
                };
                // The proxy writes line by line: without NODELAY each small write after the
                // first waits for a delayed ACK (40 ms a message).
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let shared = Arc::clone(&proxy_shared);
                thread::spawn(move || proxy_connection(n, client, server, &shared));
            }
        });
        Self { port, shared }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
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

    pub(crate) fn transcript(&self) -> String {
        self.shared.transcript.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "==== upstream transcript (port {}) ====\n{}\n==== upstream delivered ====\n{:#?}",
                self.port,
                self.transcript(),
                self.delivered()
            );
        }
    }
}

/// Copies one relay→upstream connection in both directions, line by line from the client,
/// recording both sides. Ends when either side closes.
fn proxy_connection(n: usize, client: TcpStream, server: TcpStream, shared: &Arc<UpstreamShared>) {
    let (Ok(client_w), Ok(server_r)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let back_shared = Arc::clone(shared);
    let back = thread::spawn(move || {
        let mut server_r = BufReader::new(server_r);
        let mut client_w = client_w;
        let mut line = Vec::new();
        loop {
            line.clear();
            match server_r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            record(&back_shared, n, "S", &line);
            if client_w.write_all(&line).is_err() {
                break;
            }
        }
        let _ = client_w.shutdown(Shutdown::Both);
    });
    let mut client_r = BufReader::new(client);
    let mut server_w = server;
    let mut line = Vec::new();
    loop {
        line.clear();
        match client_r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        record(shared, n, "C", &line);
        let forwarded = rewrite_null_sender(&line);
        if server_w.write_all(&forwarded).is_err() {
            break;
        }
    }
    let _ = server_w.shutdown(Shutdown::Write);
    let _ = back.join();
}

fn rewrite_null_sender(line: &[u8]) -> Vec<u8> {
    const NULL: &[u8] = b"MAIL FROM:<>";
    match line.get(..NULL.len()) {
        Some(head) if head.eq_ignore_ascii_case(NULL) => {
            let mut out = format!("MAIL FROM:<{NULL_SENDER_MARKER}>").into_bytes();
            out.extend_from_slice(&line[NULL.len()..]);
            out
        }
        _ => line.to_vec(),
    }
}

fn record(shared: &UpstreamShared, n: usize, side: &str, line: &[u8]) {
    let mut transcript = shared.transcript.lock().unwrap();
    // Keep failure dumps readable: long message bodies are cut.
    if transcript.len() < 256 * 1024 {
        let _ = writeln!(
            transcript,
            "#{n} {side}: {}",
            String::from_utf8_lossy(line).trim_end()
        );
    }
}

/// A reply for an upstream policy.
pub(crate) fn reply(code: u16, text: &str) -> Response {
    Response::custom(code, text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::RawClient;
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
    fn upstream_records_message_and_accepts_null_sender() {
        let upstream = Upstream::start();
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
    fn upstream_policy_refuses_a_recipient() {
        let upstream = Upstream::start_with_policy(|stage| match stage {
            Stage::Rcpt { to } if to.starts_with("bad") => Some(reply(550, "5.1.1 no such user")),
            _ => None,
        });
        let mut client = RawClient::ready(upstream.port());
        client.cmd("MAIL FROM:<a@lan.test>");
        assert_eq!(client.cmd("RCPT TO:<bad@remote.test>").code, 550);
        assert_eq!(client.cmd("RCPT TO:<good@remote.test>").code, 250);
    }
}
