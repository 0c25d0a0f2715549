//! Logging that fits where it runs, against the real binary: sd-daemon priority prefixes and no
//! timestamps when `JOURNAL_STREAM` names the daemon's stderr (and timestamps when it names
//! another file), RFC 3164 datagrams with facility mail on the syslog socket the test binds
//! (`log = "syslog"`, `OUTPOST_SYSLOG_SOCKET`). Also the bare child runner the notify tests use:
//! stderr to a file the test owns, the environment set by the test.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{
    assert_queued, message, outpost_command, reply, run_command, wait_until, RawClient,
    RelayConfig, Smarthost, Stage, TestDir, OUTPOST,
};

const START: Duration = Duration::from_secs(30);

/// `outpost serve` with its stderr in a file of the test's directory and the environment the
/// test chose (the service manager's variables cleared first). Killed on drop.
pub(crate) struct BareDaemon {
    pub(crate) dir: TestDir,
    pub(crate) stderr: PathBuf,
    child: Child,
}

impl BareDaemon {
    /// Starts `outpost serve` with `top` as extra top-level config and `env` set.
    pub(crate) fn start(top: &str, env: &[(&'static str, String)]) -> Self {
        Self::start_with(RelayConfig::default().top(top), |_| env.to_vec())
    }

    /// Like `start`; `env` gets the path of the stderr file (to name it in `JOURNAL_STREAM`).
    pub(crate) fn start_with(
        config: RelayConfig,
        env: impl FnOnce(&std::fs::File) -> Vec<(&'static str, String)>,
    ) -> Self {
        let dir = TestDir::new();
        let config_path = dir.join("outpost.toml");
        std::fs::write(&config_path, config.render(&dir.join("data"))).unwrap();
        let stderr = dir.join("stderr");
        let file = std::fs::File::create(&stderr).unwrap();
        let vars = env(&file);
        let mut command: Command = outpost_command(OUTPOST);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("OUTPOST_SYSLOG_SOCKET")
            .env("RUST_LOG", "debug")
            .envs(vars)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let child = command.spawn().unwrap();
        Self { dir, stderr, child }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) until the log has a line containing `text`; fails with the log if not.
    pub(crate) fn wait_log(&self, text: &str) -> String {
        let mut found = None;
        let seen = wait_until(START, Duration::from_millis(50), || {
            found = self
                .log()
                .lines()
                .find(|l| l.contains(text))
                .map(str::to_owned);
            found.is_some()
        });
        assert!(seen, "no {text:?} in the log:\n{}", self.log());
        found.unwrap()
    }

    /// The SMTP port from the `listening on` line.
    pub(crate) fn port(&self) -> u16 {
        let line = self.wait_log("listening on 127.0.0.1:");
        let rest = &line[line.find("127.0.0.1:").unwrap() + "127.0.0.1:".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap()
    }

    /// Runs `outpost ARGS… --config <this daemon's config>`; fails unless it exits 0.
    pub(crate) fn command_ok(&self, args: &[&str]) -> String {
        let config = self.dir.join("outpost.toml").display().to_string();
        let mut all = args.to_vec();
        all.extend(["--config", &config]);
        let run = run_command(std::path::Path::new(OUTPOST), &all, b"");
        assert_eq!(
            run.code,
            Some(0),
            "{run}
{}",
            self.log()
        );
        run.stdout
    }

    /// SIGTERM, then waits (bounded) for the exit; its code.
    pub(crate) fn terminate(&mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut code = None;
        let exited = wait_until(
            Duration::from_secs(20),
            Duration::from_millis(50),
            || match self.child.try_wait() {
                Ok(Some(status)) => {
                    code = status.code();
                    true
                }
                _ => false,
            },
        );
        assert!(exited, "no exit after SIGTERM:\n{}", self.log());
        code
    }
}

impl Drop for BareDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A datagram socket bound in `dir` that tests read with a deadline.
pub(crate) fn bind_datagram(dir: &TestDir, name: &str) -> (UnixDatagram, PathBuf) {
    let path = dir.join(name);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (socket, path)
}

/// Reads datagrams until one satisfies `want` (bounded); every datagram read, in order.
pub(crate) fn recv_until(socket: &UnixDatagram, want: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    let found = wait_until(START, Duration::ZERO, || match socket.recv(&mut buf) {
        Ok(n) => {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = want(&text);
            seen.push(text);
            done
        }
        Err(_) => false,
    });
    assert!(found, "the wanted datagram never came; got {seen:#?}");
    seen
}

/// `DEV:INODE` of `file`, as systemd sets `JOURNAL_STREAM`.
fn journal_stream(file: &std::fs::File) -> String {
    let meta = file.metadata().unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

/// simple_logger's UTC timestamp at the start of a line (`2026-12-06T18:00:00.000Z`).
fn has_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && line[..4].parse::<u16>().is_ok()
}

#[test]
fn under_systemd_every_line_has_its_priority_and_no_timestamp() {
    let mut daemon = BareDaemon::start_with(RelayConfig::default(), |file| {
        vec![("JOURNAL_STREAM", journal_stream(file))]
    });
    daemon.wait_log("<6>listening on 127.0.0.1:");
    // No smarthost: the forwarder warns once that mail is held.
    daemon.wait_log("<4>no smarthost configured");
    // A control request is logged at debug.
    daemon.command_ok(&["status"]);
    daemon.wait_log("<7>control: STATUS");
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log();
    assert!(log.contains("<6>shutdown complete"), "{log}");
    assert!(
        log.lines().any(|l| l.starts_with("<7>")),
        "no debug line:\n{log}"
    );
    for line in log.lines() {
        let prefixed = ["<3>", "<4>", "<6>", "<7>"]
            .iter()
            .any(|p| line.starts_with(p));
        assert!(prefixed, "line without a priority: {line:?}\n{log}");
        assert!(!has_timestamp(&line[3..]), "timestamped: {line:?}");
    }
}

#[test]
fn journal_stream_naming_another_file_keeps_timestamps() {
    let other = tempfile::tempfile().unwrap();
    let stream = journal_stream(&other);
    let mut daemon = BareDaemon::start("", &[("JOURNAL_STREAM", stream)]);
    let line = daemon.wait_log("listening on 127.0.0.1:");
    assert!(has_timestamp(&line), "{line:?}");
    assert!(!line.starts_with('<'), "{line:?}");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn log_journal_forces_the_prefixes() {
    let mut daemon = BareDaemon::start("log = \"journal\"", &[]);
    daemon.wait_log("<6>listening on 127.0.0.1:");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn syslog_sends_rfc3164_datagrams_with_facility_mail() {
    let dir = TestDir::new();
    let (socket, path) = bind_datagram(&dir, "log");
    let env = [("OUTPOST_SYSLOG_SOCKET", path.display().to_string())];
    let mut daemon = BareDaemon::start("log = \"syslog\"", &env);
    let pid = daemon.pid();
    // mail (2) * 8 + info (6) = 22; warning (4) = 20; debug (7) = 23.
    let info = format!("<22>outpost[{pid}]: listening on 127.0.0.1:");
    let warn = format!("<20>outpost[{pid}]: no smarthost configured");
    let mut seen = recv_until(&socket, |d| d.starts_with(&info));
    seen.extend(recv_until(&socket, |d| d.starts_with(&warn)));
    daemon.command_ok(&["status"]);
    let debug = format!("<23>outpost[{pid}]: control: STATUS");
    seen.extend(recv_until(&socket, |d| d == debug));
    for d in &seen {
        assert!(!d.contains('\n'), "{d:?}");
    }
    assert_eq!(daemon.terminate(), Some(0));
    recv_until(&socket, |d| {
        d == format!("<22>outpost[{pid}]: shutdown complete")
    });
    // Nothing went to stderr while the socket was there.
    assert!(!daemon.log().contains("listening on"), "{}", daemon.log());
}

#[test]
fn an_unknown_log_target_is_a_config_error() {
    let dir = TestDir::new();
    let config = dir.join("outpost.toml");
    std::fs::write(&config, "log = \"file\"\n").unwrap();
    let run = run_command(
        std::path::Path::new(OUTPOST),
        &["check-config", "--config", config.to_str().unwrap()],
        b"",
    );
    assert_eq!(run.code, Some(78), "{run}");
    assert!(run.stderr.contains("log"), "{run}");
}

#[test]
fn a_recipient_failed_for_good_is_a_warning() {
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { to } if to.starts_with("bad@") => Some(reply(550, "5.1.1 no such user")),
        _ => None,
    });
    let mut daemon = BareDaemon::start_with(RelayConfig::with_smarthost(upstream.port()), |_| {
        vec![
            ("OUTPOST_LOG", "info".to_owned()),
            ("JOURNAL_STREAM", String::new()),
        ]
    });
    let mut client = RawClient::ready(daemon.port());
    let to = ["good@example.org", "bad@example.org"];
    let id = assert_queued(&client.send_mail("a@lan.test", &to, &message("b", "x\r\n")));
    let bounced = daemon.wait_log(&format!("queue_id={id} to=<bad@example.org>"));
    assert!(
        bounced.contains(" WARN ") && bounced.contains("status=bounced"),
        "{bounced}"
    );
    let sent = daemon.wait_log(&format!("queue_id={id} to=<good@example.org>"));
    assert!(
        sent.contains(" INFO ") && sent.contains("status=sent"),
        "{sent}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}
