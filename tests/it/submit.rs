//! Local submission (issue: the system's mailer): `sendmail` hands mail to the running daemon
//! over its submission socket whatever the umask, with a trace header naming the uid; while
//! the daemon is down it uses an existing maildrop, and with none it exits 75 and creates
//! nothing; `sendmail -bs` is one SMTP session on stdin/stdout; and the daemon never trusts
//! the maildrop (symlinks, FIFOs, foreign modes, oversized and malformed files are never sent,
//! reported once, and the daemon keeps serving and stops on SIGTERM throughout).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::util::{
    assert_queued, make_fifo, outpost_command, run_shell, settle, RawClient, RelayConfig,
    RelayProcess, Smarthost, OUTPOST,
};

const DELIVERY: Duration = Duration::from_secs(20);

fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// `outpost sendmail ARGS --config CONFIG` under `sh` with `umask 077`, as root's cron runs it.
fn sendmail_umask_077(relay: &RelayProcess, args: &str, input: &[u8]) -> crate::util::CmdRun {
    let script = format!(
        "umask 077; exec $OUTPOST sendmail {args} --config '{}'",
        relay.config_path.display()
    );
    run_shell(&script, input)
}

fn maildrop_files(relay: &RelayProcess) -> Vec<String> {
    std::fs::read_dir(relay.data_dir.join("maildrop"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".msg"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn umask_077_submission_goes_through_the_socket_with_a_uid_trace_header() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_with(RelayConfig::with_smarthost(upstream.port()));
    let run = sendmail_umask_077(
        &relay,
        "-i ops@remote.test",
        b"Subject: cron\n\n.hidden dot\n",
    );
    assert_eq!(run.code, Some(0), "{run}");
    // Queued as a local submission by the uid the kernel reported.
    let log = relay.wait_log(&format!("uid={} status=queued", uid()));
    assert!(log.contains(" peer=local queue_id="), "{log}");
    assert!(maildrop_files(&relay).is_empty(), "the maildrop was used");
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("local submission not delivered"));
    let data = got[0].data_str();
    let trace = format!("Received: from local (uid {})\r\n\tby ", uid());
    assert!(data.starts_with(&trace), "{data}");
    assert!(
        data.contains("Subject: cron\r\n") && data.contains("\r\n.hidden dot\r\n"),
        "{data}"
    );
}

#[test]
fn umask_077_while_the_daemon_is_down_is_picked_up_at_start() {
    let upstream = Smarthost::start();
    let mut relay = RelayProcess::start_with(RelayConfig::with_smarthost(upstream.port()));
    relay.stop();
    let run = sendmail_umask_077(&relay, "ops@remote.test", b"Subject: while down\n\nx\n");
    assert_eq!(run.code, Some(0), "{run}");
    let files = maildrop_files(&relay);
    assert_eq!(files.len(), 1, "{files:?}");
    let file = relay.data_dir.join("maildrop").join(&files[0]);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "the umask decided the maildrop file's mode");
    relay.restart();
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("maildrop message not delivered after start"));
    let data = got[0].data_str();
    assert!(
        data.starts_with(&format!("Received: from local (uid {})", uid())),
        "{data}"
    );
    assert!(data.contains("Subject: while down"), "{data}");
}

#[test]
fn daemon_down_and_no_maildrop_exits_75_and_creates_nothing() {
    let mut relay = RelayProcess::start("");
    relay.stop();
    let maildrop = relay.data_dir.join("maildrop");
    std::fs::remove_dir_all(&maildrop).unwrap();
    let run = relay.command(&["sendmail", "ops@remote.test"], b"Subject: x\n\nx\n");
    assert_eq!(run.code, Some(75), "{run}");
    assert!(
        run.stderr.contains("not running") && run.stderr.contains("no maildrop"),
        "{run}"
    );
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{run}");
    assert!(!maildrop.exists(), "sendmail created the maildrop");
    // Without the data directory at all (a daemon that never ran with this config), sendmail
    // says so with EX_CONFIG and creates nothing either.
    std::fs::remove_dir_all(&relay.data_dir).unwrap();
    let run = relay.command(&["sendmail", "ops@remote.test"], b"Subject: x\n\nx\n");
    assert_eq!(run.code, Some(78), "{run}");
    assert!(
        !relay.data_dir.exists(),
        "sendmail created the data directory"
    );
}

/// A maildrop file as `sendmail` writes it, with `rcpt` as the envelope recipient line.
fn maildrop_text(rcpt: &str, subject: &str, body_len: usize) -> Vec<u8> {
    let mut text =
        format!("outpost-maildrop 1\nfrom cron@lan.test\nto {rcpt}\n\nSubject: {subject}\r\n\r\n")
            .into_bytes();
    text.resize(text.len() + body_len, b'x');
    text.extend_from_slice(b"\r\n");
    text
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn the_daemon_never_trusts_the_maildrop() {
    let upstream = Smarthost::start();
    let config = RelayConfig::with_smarthost(upstream.port()).top("max_message_size = 4096");
    let mut relay = RelayProcess::start_with(config);
    let maildrop = relay.data_dir.join("maildrop");
    // A file the daemon may read but no one asked it to send, behind a symlink.
    let secret = relay.dir.join("secret");
    write_mode(
        &secret,
        &maildrop_text("ops@remote.test", "secret", 10),
        0o600,
    );
    std::os::unix::fs::symlink(&secret, maildrop.join("1-link.msg")).unwrap();
    let fifo = maildrop.join("2-fifo.msg");
    make_fifo(&fifo, 0o644);
    write_mode(
        &maildrop.join("3-foreign.msg"),
        &maildrop_text("ops@remote.test", "foreign", 10),
        0o666,
    );
    write_mode(
        &maildrop.join("4-big.msg"),
        &maildrop_text("ops@remote.test", "big", 8000),
        0o644,
    );
    write_mode(
        &maildrop.join("5-null.msg"),
        &maildrop_text("", "null", 10),
        0o644,
    );
    write_mode(
        &maildrop.join("6-space.msg"),
        &maildrop_text("a b@remote.test", "space", 10),
        0o644,
    );
    let reasons = [
        ("1-link.msg", "a symlink"),
        ("2-fifo.msg", "a FIFO"),
        ("3-foreign.msg", "mode 0666: writable by group or others"),
        ("4-big.msg", "message larger than max_message_size"),
        ("5-null.msg", "recipient \"\" is not an address"),
        (
            "6-space.msg",
            "recipient \"a b@remote.test\" is not an address",
        ),
    ];
    for (name, reason) in reasons {
        relay.wait_log(&format!("{name} is not sent: {reason}"));
    }
    // The daemon keeps serving SMTP meanwhile.
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail(
        "a@lan.test",
        &["ops@remote.test"],
        b"Subject: smtp\r\n\r\nx\r\n",
    ));
    // A good file written later is picked up in a later pass, after the bad ones (names sort
    // first): its arrival proves they were seen again, and not reported again.
    write_mode(
        &maildrop.join("7-good.msg"),
        &maildrop_text("ops@remote.test", "good", 10),
        0o644,
    );
    let got = upstream
        .wait_for(2, DELIVERY)
        .unwrap_or_else(|| relay.fail("the SMTP and the good maildrop message not delivered"));
    let subjects: Vec<String> = got.iter().map(|m| m.data_str()).collect();
    assert!(
        subjects.iter().any(|d| d.contains("Subject: good")),
        "{subjects:?}"
    );
    let log = relay.log();
    for (name, _) in reasons {
        let warned = log.matches(&format!("{name} is not sent")).count();
        assert_eq!(warned, 1, "{name} reported {warned} times:\n{log}");
    }
    let status = relay.command_ok(&["status"]);
    assert!(status.contains("maildrop: 6 files waiting"), "{status}");
    settle(&relay, &upstream);
    assert_eq!(
        upstream.unmarked().len(),
        2,
        "an untrusted maildrop file was sent"
    );
    // The FIFO never blocked the daemon: it stops on SIGTERM at once.
    let status = relay.terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "no clean exit after SIGTERM"
    );
    assert!(std::fs::read(&secret).is_ok() && maildrop.join("1-link.msg").exists());
}

/// `outpost sendmail -bs` with piped stdin and stdout: a scripted SMTP client.
/// Killed after `BS_DEADLINE` if still running, so no read of its output waits for ever.
struct Bs {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    _watchdog: mpsc::Sender<()>,
}

const BS_DEADLINE: Duration = Duration::from_secs(60);

impl Bs {
    fn start(relay: &RelayProcess) -> Self {
        let config = relay.config_path.to_string_lossy().into_owned();
        let mut child = outpost_command(OUTPOST)
            .args(["sendmail", "-bs", "--config", &config])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        let (watchdog, done) = mpsc::channel::<()>();
        let pid = rustix::process::Pid::from_child(&child);
        std::thread::spawn(move || {
            // Disconnected (the test is done with it) or the deadline passed.
            if let Err(mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(BS_DEADLINE) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        });
        Self {
            child,
            input,
            output,
            _watchdog: watchdog,
        }
    }

    /// One reply: its code and last line.
    fn reply(&mut self) -> (u16, String) {
        loop {
            let mut line = String::new();
            assert!(
                self.output.read_line(&mut line).unwrap() > 0,
                "sendmail -bs closed"
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                return (line[..3].parse().unwrap(), line.trim_end().to_owned());
            }
        }
    }

    fn cmd(&mut self, line: &str) -> (u16, String) {
        self.input
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }
}

#[test]
fn sendmail_bs_is_one_smtp_session_on_stdin_and_stdout() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_with(RelayConfig::with_smarthost(upstream.port()));
    let mut bs = Bs::start(&relay);
    assert_eq!(bs.reply().0, 220);
    assert_eq!(bs.cmd("EHLO app.lan.test").0, 250);
    assert_eq!(bs.cmd("MAIL FROM:<app@lan.test>").0, 250);
    // Relaying is allowed for a local submission (no relay_from, no AUTH).
    assert_eq!(bs.cmd("RCPT TO:<user@far.example>").0, 250);
    assert_eq!(bs.cmd("DATA").0, 354);
    let (code, text) = bs.cmd("Subject: via -bs\r\n\r\nhello\r\n.");
    assert_eq!(code, 250, "{text}");
    assert_eq!(bs.cmd("QUIT").0, 221);
    drop(bs.input);
    let status = bs.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("-bs message not delivered"));
    assert_eq!(got[0].to, ["user@far.example"]);
    let data = got[0].data_str();
    assert!(
        data.starts_with(&format!("Received: from local (uid {})", uid())),
        "{data}"
    );
    assert!(data.contains("Subject: via -bs\r\n\r\nhello\r\n"), "{data}");
}

#[test]
fn sendmail_bs_with_the_daemon_down_exits_75() {
    let mut relay = RelayProcess::start("");
    relay.stop();
    let run = relay.command(&["sendmail", "-bs"], b"EHLO x\r\n");
    assert_eq!(run.code, Some(75), "{run}");
    assert!(
        run.stdout.is_empty() && run.stderr.contains("not running"),
        "{run}"
    );
}
