//! The mailin-embedded engine of the fake smarthost: the recording handler (reply policy, AUTH
//! PLAIN/LOGIN), the line proxy that records the transcript and passes `MAIL FROM:<>`, and the
//! TLS front for implicit TLS (mailin has only STARTTLS). Binds 127.0.0.1 only.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mailin_embedded::{response, AuthMechanism, Handler, Response, Server, SslConfig};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::{Delivered, SmarthostShared, Stage};

/// mailin's parser wants a non-empty path in `MAIL FROM:<…>`; the proxy rewrites `<>` to this
/// marker and the handler maps it back to the empty reverse-path.
const NULL_SENDER_MARKER: &str = "null-sender=";

#[derive(Clone)]
struct RecordingHandler {
    shared: Arc<SmarthostShared>,
    from: String,
    to: Vec<String>,
    is8bit: bool,
    data: Vec<u8>,
}

impl RecordingHandler {
    fn decide(&self, stage: &Stage<'_>) -> Response {
        (self.shared.policy)(stage).unwrap_or(response::OK)
    }

    /// Records the login and accepts it when `user`/`password` is one of the configured pairs.
    fn check_login(&mut self, user: &str, password: &str) -> Response {
        self.shared.logins.lock().unwrap().push(user.to_owned());
        let known = self
            .shared
            .credentials
            .iter()
            .any(|(u, p)| u == user && p == password);
        if known {
            response::AUTH_OK
        } else {
            response::INVALID_CREDENTIALS
        }
    }
}

impl Handler for RecordingHandler {
    fn auth_plain(&mut self, _authzid: &str, user: &str, password: &str) -> Response {
        self.check_login(user, password)
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.check_login(user, password)
    }

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

/// Runs mailin on `listener` with `shared`'s policy and credentials (AUTH PLAIN and LOGIN when
/// there are any), with STARTTLS when `tls` is given.
pub(super) fn run(shared: &Arc<SmarthostShared>, listener: TcpListener, tls: Option<SslConfig>) {
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
        // mailin builds its rustls config with the process-default provider; this build links
        // two providers, so one must be chosen.
        let _ = rustls::crypto::ring::default_provider().install_default();
        server.with_ssl(tls).unwrap();
    }
    if !shared.credentials.is_empty() {
        server.with_auth(AuthMechanism::Plain);
        server.with_auth(AuthMechanism::Login);
    }
    thread::spawn(move || {
        let _ = server.serve();
    });
}

/// Accepts on `public` and copies each connection to `target` through `proxy_connection`.
pub(super) fn proxy(public: TcpListener, target: SocketAddr, shared: &Arc<SmarthostShared>) {
    let shared = Arc::clone(shared);
    thread::spawn(move || {
        for (n, client) in public.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            // The proxy writes line by line: without NODELAY each small write after the
            // first waits for a delayed ACK (40 ms a message).
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let shared = Arc::clone(&shared);
            thread::spawn(move || proxy_connection(n, client, server, &shared));
        }
    });
}

/// Copies one relay→smarthost connection in both directions, line by line from the client,
/// recording both sides. Ends when either side closes.
fn proxy_connection(n: usize, client: TcpStream, server: TcpStream, shared: &Arc<SmarthostShared>) {
    let (Ok(client_w), Ok(server_r)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let open = shared.open.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_open.fetch_max(open, Ordering::SeqCst);
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
    shared.open.fetch_sub(1, Ordering::SeqCst);
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

fn record(shared: &SmarthostShared, n: usize, side: &str, line: &[u8]) {
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

/// A TLS-terminating front on `public` for the plaintext server on `backend`: each connection
/// is a rustls server stream on one side and plain TCP on the other.
pub(super) fn tls_front(public: TcpListener, config: Arc<ServerConfig>, backend: SocketAddr) {
    thread::spawn(move || {
        for client in public.incoming().flatten() {
            let config = Arc::clone(&config);
            thread::spawn(move || front_connection(client, config, backend));
        }
    });
}

/// Copies one TLS connection to `backend` both ways, polling with short read timeouts; gives
/// up after 60 s.
fn front_connection(client: TcpStream, config: Arc<ServerConfig>, backend: SocketAddr) {
    let Ok(mut backend) = TcpStream::connect(backend) else {
        return;
    };
    let Ok(conn) = ServerConnection::new(config) else {
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
