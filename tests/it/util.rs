//! Test harness: temp dirs, the real `outpost` binary as a child process, an independent upstream
//! smarthost (mailin-embedded behind a small recording proxy), SMTP clients (lettre and a raw
//! transcript client) and a bounded `wait_until`. Never binds anything but 127.0.0.1, never
//! waits without a deadline, and never uses the relay's own SMTP code.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mailin_embedded::{response, Handler, Response, Server};

/// Path of the binary under test.
pub(crate) const OUTPOST: &str = env!("CARGO_BIN_EXE_outpost");

/// Upper bound for the relay to print its `listening on` line.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Read timeout of the raw client: a reply that takes longer is a failure.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Waiting

/// Polls `cond` every `poll` until it holds or `deadline` passes; returns whether it held.
/// The number of polls is bounded by `deadline / poll + 1`.
pub(crate) fn wait_until(
    deadline: Duration,
    poll: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(poll);
    }
}

// ---------------------------------------------------------------------------------------------
// Temp dirs

/// A per-test temporary directory, removed on drop (kept when the test panics, for inspection).
pub(crate) struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    pub(crate) fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("outpost-it-")
            .tempdir()
            .unwrap();
        Self { dir: Some(dir) }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.as_ref().map(tempfile::TempDir::path).unwrap()
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Recursive listing with sizes, for failure dumps.
    pub(crate) fn listing(&self) -> String {
        fn walk(dir: &Path, out: &mut String, depth: usize) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
            entries.sort_by_key(std::fs::DirEntry::file_name);
            for entry in entries {
                let path = entry.path();
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = writeln!(
                    out,
                    "{:indent$}{} ({len} bytes)",
                    "",
                    entry.file_name().to_string_lossy(),
                    indent = depth * 2
                );
                if path.is_dir() && depth < 4 {
                    walk(&path, out, depth + 1);
                }
            }
        }
        let mut out = String::new();
        walk(self.path(), &mut out, 0);
        out
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("test dir kept at {}", kept.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The relay under test

/// Config sections the tests vary; everything else is fixed by `RelayProcess::start_with`.
#[derive(Clone, Default)]
pub(crate) struct RelayConfig {
    /// Port of the smarthost on 127.0.0.1 (`None`: no `[smarthost]` section).
    pub(crate) smarthost: Option<u16>,
    /// Extra top-level keys, e.g. `max_recipients = 2`.
    pub(crate) top: String,
    /// Extra `[queue]` keys.
    pub(crate) queue: String,
    /// Extra `[timeouts]` keys.
    pub(crate) timeouts: String,
}

impl RelayConfig {
    pub(crate) fn with_smarthost(port: u16) -> Self {
        Self {
            smarthost: Some(port),
            ..Self::default()
        }
    }

    pub(crate) fn top(mut self, toml: &str) -> Self {
        self.top.push_str(toml);
        self.top.push('\n');
        self
    }

    pub(crate) fn queue(mut self, toml: &str) -> Self {
        self.queue.push_str(toml);
        self.queue.push('\n');
        self
    }

    pub(crate) fn timeouts(mut self, toml: &str) -> Self {
        self.timeouts.push_str(toml);
        self.timeouts.push('\n');
        self
    }

    fn render(&self, data_dir: &Path) -> String {
        let mut toml = String::new();
        let _ = writeln!(toml, "hostname = \"outpost.test\"");
        let _ = writeln!(
            toml,
            "data_dir = {}",
            toml_string(&data_dir.to_string_lossy())
        );
        let _ = writeln!(toml, "listen = [\"127.0.0.1:0\"]");
        toml.push_str(&self.top);
        if let Some(port) = self.smarthost {
            let _ = writeln!(
                toml,
                "\n[smarthost]\naddress = \"127.0.0.1:{port}\"\ntls = \"none\""
            );
        }
        let _ = writeln!(toml, "\n[queue]\nretry_min = \"1s\"\nretry_max = \"2s\"");
        toml.push_str(&self.queue);
        let _ = writeln!(
            toml,
            "\n[timeouts]\nsmarthost = \"10s\"\nsmarthost_data_end = \"10s\""
        );
        toml.push_str(&self.timeouts);
        toml
    }
}

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The real `outpost serve` binary, run as a child process with its stderr captured.
pub(crate) struct RelayProcess {
    pub(crate) dir: TestDir,
    pub(crate) config_path: PathBuf,
    pub(crate) data_dir: PathBuf,
    child: Option<Child>,
    /// Extra `serve` arguments (flags that override the file).
    args: Vec<String>,
    /// Everything the relay printed, over all restarts.
    log: Arc<Mutex<String>>,
    /// The current listening port (changes on every restart: the config says port 0).
    port: Arc<AtomicU16>,
    starts: usize,
}

impl RelayProcess {
    /// Starts a relay with no smarthost and `top` as extra top-level config.
    pub(crate) fn start(top: &str) -> Self {
        Self::start_with(RelayConfig::default().top(top))
    }

    /// Starts a relay relaying to the upstream on `port` (which may not be listening yet).
    pub(crate) fn start_to(port: u16) -> Self {
        Self::start_with(RelayConfig::with_smarthost(port))
    }

    pub(crate) fn start_with(config: RelayConfig) -> Self {
        Self::start_with_args(config, &[])
    }

    /// Like `start_with`, adding `serve` flags after `--config FILE`.
    pub(crate) fn start_with_args(config: RelayConfig, args: &[&str]) -> Self {
        let dir = TestDir::new();
        let data_dir = dir.join("data");
        let config_path = dir.join("outpost.toml");
        std::fs::write(&config_path, config.render(&data_dir)).unwrap();
        let mut relay = Self {
            dir,
            config_path,
            data_dir,
            child: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            log: Arc::new(Mutex::new(String::new())),
            port: Arc::new(AtomicU16::new(0)),
            starts: 0,
        };
        relay.spawn();
        relay
    }

    /// The port the relay listens on now.
    pub(crate) fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    /// A handle that follows the port across restarts (for client threads).
    pub(crate) fn port_handle(&self) -> Arc<AtomicU16> {
        Arc::clone(&self.port)
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The running child's process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, no chance to flush or clean up.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.note("---- killed with SIGKILL ----");
        }
    }

    /// Starts the binary again on the same config and data dir (killing it first if running).
    pub(crate) fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub(crate) fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id().to_string();
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status();
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                self.note(&format!("---- exited after SIGTERM: {status} ----"));
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Panics with `msg`, the relay's log and the data-dir listing.
    pub(crate) fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}", self.dump());
    }

    pub(crate) fn dump(&self) -> String {
        format!(
            "==== relay log ({}) ====\n{}\n==== data dir {} ====\n{}",
            self.config_path.display(),
            self.log(),
            self.data_dir.display(),
            self.dir.listing()
        )
    }

    fn note(&self, line: &str) {
        let mut log = self.log.lock().unwrap();
        log.push_str(line);
        log.push('\n');
    }

    fn spawn(&mut self) {
        self.starts += 1;
        self.note(&format!("---- start #{} ----", self.starts));
        let mut child = Command::new(OUTPOST)
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .args(&self.args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        for pipe in [
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = Arc::clone(&self.log);
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).split(b'\n') {
                    let Ok(line) = line else { break };
                    let line = String::from_utf8_lossy(&line).into_owned();
                    if let Some(addr) = listening_addr(&line) {
                        let _ = tx.send(addr);
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        drop(tx);
        self.child = Some(child);
        let end = Instant::now() + START_DEADLINE;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => {
                    self.port.store(addr.port(), Ordering::SeqCst);
                    return;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    self.fail(&format!("relay exited before listening: {status:?}"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                        // Give the reader threads a moment to collect the last lines.
                        thread::sleep(Duration::from_millis(100));
                        self.fail(&format!("relay exited before listening: {status}"));
                    }
                    if Instant::now() >= end {
                        self.fail("relay printed no `listening on 127.0.0.1:PORT` line in time");
                    }
                }
            }
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

/// Finds `listening on 127.0.0.1:PORT` in a log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let token: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',' && *c != ')')
        .collect();
    token.trim_matches(|c| c == '"' || c == '\'').parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The upstream smarthost

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

    fn serve(public: TcpListener, policy: Box<Policy>) -> Self {
        let port = public.local_addr().unwrap().port();
        let shared = Arc::new(UpstreamShared {
            delivered: Mutex::new(Vec::new()),
            policy,
            transcript: Mutex::new(String::new()),
        });
        let inner = TcpListener::bind("127.0.0.1:0").unwrap();
        let inner_addr = inner.local_addr().unwrap();
        let handler = RecordingHandler {
            shared: Arc::clone(&shared),
            from: String::new(),
            to: Vec::new(),
            is8bit: false,
            data: Vec::new(),
        };
        thread::spawn(move || {
            let mut server = Server::new(handler);
            server
                .with_name("upstream.test")
                .with_num_threads(16)
                .with_tcp_listener(inner);
            let _ = server.serve();
        });
        let proxy_shared = Arc::clone(&shared);
        thread::spawn(move || {
            for (n, client) in public.incoming().enumerate() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(inner_addr) else {
                    continue;
                };
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

// ---------------------------------------------------------------------------------------------
// Clients

/// Sends `message` with lettre's sync SMTP transport (no TLS) and returns the reply to the final
/// dot as `"250 2.0.0 queued as …"`, or lettre's error text.
pub(crate) fn send_lettre(
    port: u16,
    from: &str,
    to: &[&str],
    message: &[u8],
) -> Result<String, String> {
    use lettre::address::Envelope;
    use lettre::{Address, SmtpTransport, Transport};
    let from: Address = from.parse().map_err(|e| format!("{e}"))?;
    let to: Vec<Address> = to.iter().map(|a| a.parse().unwrap()).collect();
    let envelope = Envelope::new(Some(from), to).map_err(|e| format!("{e}"))?;
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(REPLY_TIMEOUT))
        .build();
    let message = message.to_vec();
    thread::spawn(move || match transport.send_raw(&envelope, &message) {
        Ok(response) => {
            let lines: Vec<&str> = response.message().collect();
            Ok(format!("{} {}", response.code(), lines.join("\n")))
        }
        Err(e) => Err(format!("{e}")),
    })
    .join()
    .unwrap()
}

/// One reply: its code and each line's text after `NNN-`/`NNN `.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub(crate) code: u16,
    pub(crate) lines: Vec<String>,
}

impl Reply {
    /// The first line's text (after the code).
    pub(crate) fn text(&self) -> &str {
        self.lines.first().map_or("", String::as_str)
    }

    /// Whether every line's text starts with an RFC 3463 status `c.s.d` with `c` = code / 100.
    pub(crate) fn has_enhanced_status(&self) -> bool {
        let class = char::from_digit(u32::from(self.code / 100), 10).unwrap_or('?');
        self.lines.iter().all(|line| {
            let status = line.split(' ').next().unwrap_or("");
            let parts: Vec<&str> = status.split('.').collect();
            parts.len() == 3
                && parts[0].len() == 1
                && parts[0].starts_with(class)
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        })
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

/// A raw SMTP client for byte-exact checks; keeps a transcript for failure messages.
pub(crate) struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    transcript: String,
}

impl RawClient {
    /// Connects and reads the greeting.
    pub(crate) fn connect(port: u16) -> (Self, Reply) {
        let mut client = Self::connect_no_greeting(port).unwrap();
        let greeting = client.read_reply();
        (client, greeting)
    }

    pub(crate) fn connect_no_greeting(port: u16) -> std::io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Self {
            stream,
            buf: Vec::new(),
            transcript: String::new(),
        })
    }

    /// Connects, reads the greeting and sends EHLO; panics unless both succeed.
    pub(crate) fn ready(port: u16) -> Self {
        let (mut client, greeting) = Self::connect(port);
        client.check(greeting.code == 220, "greeting 220");
        let ehlo = client.cmd("EHLO client.test");
        client.check(ehlo.code == 250, "EHLO 250");
        client
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.note("C", bytes);
        if let Err(e) = self.stream.write_all(bytes) {
            self.fail(&format!("write failed: {e}"));
        }
    }

    /// Like `send` but reports errors (the peer may have closed).
    pub(crate) fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.note("C", bytes);
        self.stream.write_all(bytes)
    }

    /// Sends `line` + CRLF and reads one reply.
    pub(crate) fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// Reads one complete (possibly multi-line) reply; panics on timeout or EOF.
    pub(crate) fn read_reply(&mut self) -> Reply {
        match self.try_read_reply() {
            Ok(reply) => reply,
            Err(e) => self.fail(&format!("no complete reply: {e}")),
        }
    }

    pub(crate) fn try_read_reply(&mut self) -> std::io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            let code = text
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("not a reply: {text:?}"),
                    )
                })?;
            let sep = text.as_bytes().get(3).copied();
            lines.push(text.get(4..).unwrap_or("").to_owned());
            if sep != Some(b'-') {
                return Ok(Reply { code, lines });
            }
        }
    }

    /// Whether the server closed the connection: EOF or a reset within the read timeout.
    /// Unread bytes or a timeout count as open.
    pub(crate) fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => {
                self.buf.push(byte[0]);
                false
            }
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    fn read_line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                self.note("S", &line);
                return Ok(line);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Runs MAIL, RCPT…, DATA, body (already dot-stuffed, ending in CRLF), `.`; returns the reply
    /// to the final dot. Panics if an earlier step is refused.
    pub(crate) fn send_mail(&mut self, from: &str, to: &[&str], body: &[u8]) -> Reply {
        let reply = self.cmd(&format!("MAIL FROM:<{from}>"));
        self.check(reply.code == 250, "MAIL 250");
        for rcpt in to {
            let reply = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            self.check(reply.code == 250, "RCPT 250");
        }
        let reply = self.cmd("DATA");
        self.check(reply.code == 354, "DATA 354");
        self.send(body);
        self.send(b".\r\n");
        self.read_reply()
    }

    /// `send_mail` without panics, for clients that expect the relay to die under them.
    pub(crate) fn try_send_mail(
        &mut self,
        from: &str,
        to: &[&str],
        body: &[u8],
    ) -> std::io::Result<Reply> {
        let refused =
            |what: &str, reply: &Reply| std::io::Error::other(format!("{what} refused: {reply}"));
        self.try_send(format!("MAIL FROM:<{from}>\r\n").as_bytes())?;
        let reply = self.try_read_reply()?;
        if reply.code != 250 {
            return Err(refused("MAIL", &reply));
        }
        for rcpt in to {
            self.try_send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())?;
            let reply = self.try_read_reply()?;
            if reply.code != 250 {
                return Err(refused("RCPT", &reply));
            }
        }
        self.try_send(b"DATA\r\n")?;
        let reply = self.try_read_reply()?;
        if reply.code != 354 {
            return Err(refused("DATA", &reply));
        }
        self.try_send(body)?;
        self.try_send(b".\r\n")?;
        self.try_read_reply()
    }

    pub(crate) fn transcript(&self) -> &str {
        &self.transcript
    }

    pub(crate) fn check(&self, cond: bool, what: &str) {
        if !cond {
            self.fail(&format!("expected {what}"));
        }
    }

    pub(crate) fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n==== client transcript ====\n{}", self.transcript);
    }

    fn note(&mut self, side: &str, bytes: &[u8]) {
        if self.transcript.len() > 64 * 1024 {
            return;
        }
        let text = String::from_utf8_lossy(bytes);
        let shown: String = text.chars().take(300).collect();
        let _ = writeln!(self.transcript, "{side}: {:?}", shown);
    }
}

/// Asserts that `reply` is `250 2.0.0 queued as <16 upper-case hex>` and returns the queue id.
pub(crate) fn assert_queued(reply: &Reply) -> String {
    let id = reply
        .text()
        .strip_prefix("2.0.0 queued as ")
        .unwrap_or_else(|| {
            panic!("expected `250 2.0.0 queued as <ID>`, got `{reply}`");
        });
    assert_eq!(reply.code, 250, "reply to the final dot: {reply}");
    assert!(
        id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
        "queue id is not 16 upper-case hex digits: {reply}"
    );
    id.to_owned()
}

/// A small RFC 5322 message with CRLF line ends and the given extra header and body.
pub(crate) fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: sender@lan.test\r\nTo: rcpt@remote.test\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@lan.test>\r\n\r\n{body}"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_is_parsed() {
        let line = "2026-01-01T00:00:00Z INFO  [outpost::net] listening on 127.0.0.1:4321";
        assert_eq!(
            listening_addr(line),
            Some("127.0.0.1:4321".parse().unwrap())
        );
        assert_eq!(listening_addr("listening on addr=127.0.0.1:9 x"), None);
        assert_eq!(listening_addr("nothing here"), None);
    }

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
    fn enhanced_status_is_recognised() {
        let ok = Reply {
            code: 250,
            lines: vec!["2.1.0 ok".into()],
        };
        let bad = Reply {
            code: 250,
            lines: vec!["ok".into()],
        };
        let wrong_class = Reply {
            code: 550,
            lines: vec!["4.1.0 no".into()],
        };
        assert!(ok.has_enhanced_status());
        assert!(!bad.has_enhanced_status());
        assert!(!wrong_class.has_enhanced_status());
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
