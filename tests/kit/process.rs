//! The one process runner: the real `outpost serve` binary as a child process (optionally under
//! `OUTPOST_TEST_RUNNER` or a shell wrapper), its captured log, `wait_log`, SIGKILL/restart/
//! SIGTERM, and the dump of the log and the data-dir listing when a test fails. Never waits for
//! it without a deadline.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{RelayConfig, TestDir};

/// Path of the binary under test. Cargo names it only for integration tests and benches; a
/// unit test that includes the kit gets the empty string and must not start the binary.
pub(crate) const OUTPOST: &str = match option_env!("CARGO_BIN_EXE_outpost") {
    Some(path) => path,
    None => "",
};

/// A `Command` that runs `program` (`OUTPOST` or an argv[0] alias of it). In a cross test run the
/// binary is for another architecture and the kernel here cannot exec it (no binfmt_misc), so
/// when `OUTPOST_TEST_RUNNER` is set (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`, split on
/// whitespace) the command is `RUNNER… program`; qemu-user passes `program` on as argv[0], so
/// aliases keep working. Every test that starts the binary goes through here.
pub(crate) fn outpost_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let runner = std::env::var("OUTPOST_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        None => Command::new(program),
        Some(first) => {
            let mut command = Command::new(first);
            command.args(words).arg(program);
            command
        }
    }
}

/// Upper bound for the relay to print its `listening on` line.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The real `outpost serve` binary, run as a child process with its stderr captured.
pub(crate) struct RelayProcess {
    pub(crate) dir: TestDir,
    pub(crate) config_path: PathBuf,
    pub(crate) data_dir: PathBuf,
    child: Option<Child>,
    /// Extra `serve` arguments (flags that override the file).
    args: Vec<String>,
    /// Shell commands run before `exec outpost …` (e.g. `ulimit`), if any.
    wrapper: Option<String>,
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

    /// Starts a relay relaying to the smarthost on `port` (which may not be listening yet).
    pub(crate) fn start_to(port: u16) -> Self {
        Self::start_with(RelayConfig::with_smarthost(port))
    }

    pub(crate) fn start_with(config: RelayConfig) -> Self {
        Self::start_with_args(config, &[])
    }

    /// Like `start_with`, adding `serve` flags after `--config FILE`.
    pub(crate) fn start_with_args(config: RelayConfig, args: &[&str]) -> Self {
        Self::launch(config, args, None)
    }

    /// Like `start_with`, with `sh -c '<wrapper>; exec outpost serve …'` (limits, signal
    /// dispositions: an ignored signal stays ignored across exec).
    pub(crate) fn start_wrapped(config: RelayConfig, wrapper: &str) -> Self {
        Self::launch(config, &[], Some(wrapper))
    }

    fn launch(config: RelayConfig, args: &[&str], wrapper: Option<&str>) -> Self {
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
            wrapper: wrapper.map(str::to_owned),
            log: Arc::new(Mutex::new(String::new())),
            port: Arc::new(AtomicU16::new(0)),
            starts: 0,
        };
        relay.spawn();
        relay
    }

    /// The wrapper for the next `restart` (`None`: run the binary directly).
    pub(crate) fn set_wrapper(&mut self, wrapper: Option<&str>) {
        self.wrapper = wrapper.map(str::to_owned);
    }

    /// Waits (bounded) for the relay to exit on its own; its status, or `None` if it still runs.
    pub(crate) fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                self.note(&format!("---- exited on its own: {status} ----"));
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
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

    /// The log once it contains `needle` (polled, bounded by a slack-scaled 20 s; fails with
    /// the dump otherwise). A line written just after an event the test saw (the smarthost got
    /// the message, then the relay logs `status=sent`) reaches the capture a moment later.
    pub(crate) fn wait_log(&self, needle: &str) -> String {
        let end = Instant::now() + super::slack(Duration::from_secs(20));
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            if Instant::now() >= end {
                self.fail(&format!("no {needle:?} in the log"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (polled, bounded by a slack-scaled 30 s) until `queue list` reports an empty
    /// queue; returns whether it did.
    pub(crate) fn wait_queue_empty(&self) -> bool {
        super::wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            self.command_ok(&["queue", "list"])
                .contains("queue is empty")
        })
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
        let end = Instant::now() + super::slack(deadline);
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
        let mut command = match &self.wrapper {
            // The wrapper (shell lines such as `ulimit`) runs first, then execs the command
            // `outpost_command` would run (under the emulator in a cross test run).
            Some(wrapper) => {
                let inner = outpost_command(OUTPOST);
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("{wrapper}\nexec \"$0\" \"$@\""))
                    .arg(inner.get_program())
                    .args(inner.get_args());
                sh
            }
            None => outpost_command(OUTPOST),
        };
        let mut child = command
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
        let end = Instant::now() + super::slack(START_DEADLINE);
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
                        // The reader threads end at the pipes' end of file, which the exit
                        // brings: wait (bounded) until they collected the last lines.
                        let until = Instant::now() + Duration::from_secs(2);
                        while Instant::now() < until
                            && !matches!(
                                rx.recv_timeout(Duration::from_millis(20)),
                                Err(mpsc::RecvTimeoutError::Disconnected)
                            )
                        {}
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
}
