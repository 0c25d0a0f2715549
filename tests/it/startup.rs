//! Start-up: the plain SMTP listeners greet while the queue is still being opened and
//! recovered, and the sessions carry on once it is. Recovery is held at a known point by a FIFO
//! named like a body file: the journal pass blocks opening it until the test opens the write
//! end, so whatever the test sees before that happened before recovery ended. The relay runs
//! here rather than through `RelayProcess`, whose start waits for the `listening on` line that
//! comes only once the queue is open.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// Upper bound for the relay to say it greets, and for recovery to reach the FIFO.
const START: Duration = Duration::from_secs(30);
/// Upper bound for a message to reach the smarthost.
const DELIVERY: Duration = Duration::from_secs(30);

/// The real binary started on a data dir whose `bodies/` holds a FIFO that recovery waits on.
struct HeldRelay {
    dir: TestDir,
    child: Child,
    log: Arc<Mutex<String>>,
    port: u16,
    fifo: PathBuf,
}

impl HeldRelay {
    /// Starts the relay with `config` on a data dir holding the FIFO (and `more` entries, each
    /// made in `bodies/` by the closure), and waits for its `greeting on` line.
    fn start(config: RelayConfig, more: impl FnOnce(&Path)) -> Self {
        let dir = TestDir::new();
        let data = dir.join("data");
        let bodies = data.join("bodies");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&bodies)
            .unwrap();
        let fifo = bodies.join("0000000000000001");
        make_fifo(&fifo, 0o600);
        more(&bodies);
        let config_path = dir.join("outpost.toml");
        std::fs::write(&config_path, config.render(&data)).unwrap();
        let mut child = outpost_command(OUTPOST)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = greeting_port(&line) {
                    let _ = tx.send(port);
                }
                let mut log = lines.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let port = rx.recv_timeout(slack(START));
        let mut relay = Self {
            dir,
            child,
            log,
            port: 0,
            fifo,
        };
        match port {
            Ok(port) => relay.port = port,
            Err(e) => relay.fail(&format!("no `greeting on` line: {e}")),
        }
        relay
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Lets recovery past the FIFO: opens its write end (which succeeds only once recovery
    /// holds the read end open, polled within `START`) and closes it, an empty body file.
    fn release(&self) {
        let opened = wait_until(START, Duration::from_millis(10), || {
            rustix::fs::open(
                &self.fifo,
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK,
                rustix::fs::Mode::empty(),
            )
            .is_ok()
        });
        if !opened {
            self.fail("recovery never opened the FIFO in bodies/");
        }
    }

    /// Waits until recovery holds the FIFO's read end and keeps it waiting there: the write
    /// end, open (recovery reads on until it is closed).
    fn hold(&self) -> rustix::fd::OwnedFd {
        let mut writer = None;
        let opened = wait_until(START, Duration::from_millis(10), || {
            writer = rustix::fs::open(
                &self.fifo,
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK,
                rustix::fs::Mode::empty(),
            )
            .ok();
            writer.is_some()
        });
        match writer {
            Some(writer) if opened => writer,
            _ => self.fail("recovery never opened the FIFO in bodies/"),
        }
    }

    /// The log once it contains `needle` (polled within `START`).
    fn wait_log(&self, needle: &str) -> String {
        let mut log = String::new();
        if !wait_until(START, Duration::from_millis(20), || {
            log = self.log();
            log.contains(needle)
        }) {
            self.fail(&format!("no {needle:?} in the log"));
        }
        log
    }

    /// The exit status, once the relay exits on its own (polled within `START`).
    fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + slack(START);
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.fail("the relay did not exit");
    }

    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n==== relay log ====\n{}\n==== data dir ====\n{}",
            self.log(),
            self.dir.listing()
        );
    }
}

impl Drop for HeldRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port of a `greeting on 127.0.0.1:PORT while the queue opens` line.
fn greeting_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("greeting on ")? + "greeting on ".len()..];
    let addr = rest.split_whitespace().next()?;
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

/// Connects and checks the banner is the session's own.
fn greeted(relay: &HeldRelay) -> RawClient {
    let (client, greeting) = RawClient::connect(relay.port);
    if greeting.code != 220 || greeting.text() != "outpost.test ESMTP outpost" {
        relay.fail(&format!(
            "expected `220 outpost.test ESMTP outpost`, got `{greeting}`\n{}",
            client.transcript()
        ));
    }
    client
}

#[test]
fn banner_and_ehlo_come_while_recovery_waits() {
    let upstream = Smarthost::start();
    let relay = HeldRelay::start(RelayConfig::with_smarthost(upstream.port()), |_| {});
    let mut client = greeted(&relay);
    client.send(b"EHLO client.test\r\n");
    // Recovery is still held at the FIFO: the queue cannot have opened.
    if relay.log().contains("queue opened") {
        relay.fail("the queue opened while recovery was held at the FIFO");
    }
    relay.release();
    let ehlo = client.read_expect(250);
    client.check(
        ehlo.lines.iter().any(|l| l == "PIPELINING"),
        "EHLO keywords",
    );
    let reply = client.send_mail("a@lan.test", &["b@remote.test"], &tagged_message("early"));
    assert_queued(&reply);
    client.cmd_expect("QUIT", 221);
    if upstream.wait_for(1, DELIVERY).is_none() {
        relay.fail("the message of the early session was not delivered");
    }
    assert_eq!(upstream.arrived_ids().get("early"), Some(&1));
    let log = relay.wait_log("queue opened");
    let timed = log
        .lines()
        .filter_map(|l| l.split("queue opened: ").nth(1))
        .any(|l| l.ends_with(" ms") && l.contains(" in "));
    if !timed {
        relay.fail("the `queue opened` line does not say how long it took");
    }
}

#[test]
fn clients_greeted_early_and_after_the_hand_over_all_deliver() {
    let upstream = Smarthost::start();
    let relay = HeldRelay::start(RelayConfig::with_smarthost(upstream.port()), |_| {});
    let mut first = greeted(&relay);
    let mut second = greeted(&relay);
    // One client sends its first command before the queue opens, the other after.
    first.send(b"EHLO first.test\r\n");
    relay.release();
    relay.wait_log("listening on ");
    let mut late = greeted(&relay);
    first.read_expect(250);
    second.cmd_expect("EHLO second.test", 250);
    late.cmd_expect("EHLO late.test", 250);
    for (client, id) in [
        (&mut first, "first"),
        (&mut second, "second"),
        (&mut late, "late"),
    ] {
        let reply = client.send_mail("a@lan.test", &["b@remote.test"], &tagged_message(id));
        assert_queued(&reply);
        client.cmd_expect("QUIT", 221);
    }
    if upstream.wait_for(3, DELIVERY).is_none() {
        relay.fail("not every message was delivered");
    }
    let ids = upstream.arrived_ids();
    for id in ["first", "second", "late"] {
        assert_eq!(ids.get(id), Some(&1), "{id} delivered once: {ids:?}");
    }
}

#[test]
fn early_greeting_stops_at_max_connections() {
    let upstream = Smarthost::start();
    let config = RelayConfig::with_smarthost(upstream.port()).top("max_connections = 1");
    let relay = HeldRelay::start(config, |_| {});
    let mut first = greeted(&relay);
    // The second client waits in the backlog, ungreeted: once the queue is open, the normal
    // accept finds the one session slot taken and turns it away (its first reply is no 220).
    let mut second = RawClient::connect_no_greeting(relay.port).unwrap();
    relay.release();
    let refused = second.read_expect(421);
    second.check(
        refused.text().contains("Too many connections"),
        "421 too many",
    );
    first.cmd_expect("EHLO client.test", 250);
    let reply = first.send_mail("a@lan.test", &["b@remote.test"], &tagged_message("only"));
    assert_queued(&reply);
}

#[test]
fn greeted_client_gets_421_when_the_queue_cannot_open() {
    // A directory named like a body file, after the FIFO: the journal pass fails on it.
    let mut relay = HeldRelay::start(RelayConfig::default(), |bodies| {
        std::fs::create_dir(bodies.join("0000000000000002")).unwrap();
    });
    let mut client = greeted(&relay);
    client.send(b"EHLO client.test\r\n");
    relay.release();
    let reply = client.read_expect(421);
    client.check(reply.text().starts_with("4.3.0 "), "421 4.3.0");
    let closed = client.is_closed();
    client.check(closed, "closed after the 421");
    let status = relay.wait_exit();
    assert_eq!(status.code(), Some(74), "exit status: {status}");
}

#[test]
fn status_says_the_daemon_is_starting_while_its_queue_opens() {
    let relay = HeldRelay::start(RelayConfig::default(), |_| {});
    let config = relay.dir.join("outpost.toml");
    let config = config.to_str().unwrap();
    // Recovery is inside the journal pass, so sled holds the database: the daemon is starting.
    let writer = relay.hold();
    let starting = run_command(Path::new(OUTPOST), &["status", "--config", config], b"");
    assert_eq!(starting.code, Some(75), "{starting}");
    let pid = relay.child.id();
    assert!(
        starting
            .stderr
            .contains(&format!("the outpost daemon (pid {pid}) is starting")),
        "{starting}"
    );
    drop(writer);
    relay.wait_log("listening on");
    let running = run_command(Path::new(OUTPOST), &["status", "--config", config], b"");
    assert_eq!(running.code, Some(0), "{running}");
}
