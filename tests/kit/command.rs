//! Short-lived `outpost` commands (check-config, queue, status, sendmail) with a bounded run
//! time and their output, signals to the daemon, and argv[0] aliases (symlinks). Never leaves a
//! command running past its deadline.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{outpost_command, slack, RelayProcess, TestDir, OUTPOST};

/// What a short-lived `outpost` command (queue, status, sendmail) did.
pub(crate) struct CmdRun {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl CmdRun {
    /// Standard output followed by standard error.
    pub(crate) fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for CmdRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `program args…` with `stdin` as input; kills it and panics after 30 s (times the slack).
pub(crate) fn run_command(program: &Path, args: &[&str], stdin: &[u8]) -> CmdRun {
    run_command_in(None, program, args, stdin)
}

/// `run_command` in the working directory `cwd` (`None`: the test's own).
pub(crate) fn run_command_in(
    cwd: Option<&Path>,
    program: &Path,
    args: &[&str],
    stdin: &[u8],
) -> CmdRun {
    run_command_with(cwd, &[], program, args, stdin)
}

/// `run_command_in` with the environment variables `env` set for the child.
pub(crate) fn run_command_with(
    cwd: Option<&Path>,
    env: &[(&str, &OsStr)],
    program: &Path,
    args: &[&str],
    stdin: &[u8],
) -> CmdRun {
    let mut command = outpost_command(program);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    command.envs(env.iter().copied()).args(args);
    let label = format!("{} {}", program.display(), args.join(" "));
    run_prepared(command, &label, stdin)
}

/// Runs `sh -c script` (never through `OUTPOST_TEST_RUNNER`: the shell is the host's) with
/// `$OUTPOST` set to the command that runs the binary under test, runner included, for a script
/// that sets process state first (`umask 077; exec $OUTPOST sendmail …`).
pub(crate) fn run_shell(script: &str, stdin: &[u8]) -> CmdRun {
    let runner = std::env::var("OUTPOST_TEST_RUNNER").unwrap_or_default();
    let outpost = format!("{runner} {OUTPOST}").trim().to_owned();
    let mut command = Command::new("sh");
    command.args(["-c", script]).env("OUTPOST", outpost);
    run_prepared(command, script, stdin)
}

/// Runs `command` with `stdin` as input; kills it and panics after 30 s (times the slack).
fn run_prepared(mut command: Command, label: &str, stdin: &[u8]) -> CmdRun {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + slack(Duration::from_secs(30));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{label}` did not exit in time");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    CmdRun {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

impl RelayProcess {
    /// Runs `outpost SUBCOMMAND… --config <this relay's config>` (finds the daemon).
    pub(crate) fn command(&self, args: &[&str], stdin: &[u8]) -> CmdRun {
        let config = self.config_path.to_string_lossy().into_owned();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", &config]);
        run_command(Path::new(OUTPOST), &all, stdin)
    }

    /// Like `command`, and fails the test (with the relay's log) unless it exits 0.
    pub(crate) fn command_ok(&self, args: &[&str]) -> String {
        let run = self.command(args, b"");
        if run.code != Some(0) {
            self.fail(&format!("`outpost {}` failed: {run}", args.join(" ")));
        }
        run.stdout
    }

    /// Stops the daemon (SIGTERM, bounded); `restart` starts it again.
    pub(crate) fn stop(&mut self) {
        if self.terminate(Duration::from_secs(20)).is_none() {
            self.fail("relay did not exit after SIGTERM");
        }
    }

    /// Sends `signal` (e.g. "USR1") to the running daemon.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.pid().unwrap_or_else(|| self.fail("relay not running"));
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

/// A directory holding a symlink `name` → the outpost binary (argv[0] aliases).
pub(crate) fn alias(dir: &TestDir, name: &str) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(OUTPOST, &link).unwrap();
    link
}
