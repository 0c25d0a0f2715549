//! `mailq` and `sendmail -bp` in Postfix's format, read the way monitoring reads it: the
//! regular expressions of nagios-plugins' `check_mailq -M postfix` (the last line, `Kbytes in
//! (\d+)` or `Mail queue is empty`) and of Postfix queue parsers (the message line, the
//! recipients, the deferral reason in parentheses). `outpost queue list` keeps its own format.
//! Also the metrics alerting reads: refusals by reason, `build_info`, free disk.

use std::time::Duration;

use crate::util::{
    alias, assert_queued, message, reply, run_command, wait_until, RawClient, RelayConfig,
    RelayProcess, Smarthost, Stage,
};

/// What `check_mailq -M postfix` takes from the listing: the request count on the last line.
fn check_mailq_count(listing: &str) -> Option<u64> {
    let last = listing.lines().last()?;
    if last.contains("Mail queue is empty") {
        return Some(0);
    }
    // /Kbytes in (\d+)/
    let rest = &last[last.find("Kbytes in ")? + "Kbytes in ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A message line: `^([0-9A-F]+)([*!]?) +(\d+) (\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d) +(\S+)$`;
/// returns (id, mark, size, sender).
fn message_line(line: &str) -> Option<(String, char, u64, String)> {
    let id: String = line.chars().take_while(char::is_ascii_hexdigit).collect();
    if id.is_empty() {
        return None;
    }
    let rest = &line[id.len()..];
    let (mark, rest) = match rest.chars().next()? {
        c @ ('*' | '!') => (c, &rest[1..]),
        _ => (' ', rest),
    };
    let mut words = rest.split_whitespace();
    let size = words.next()?.parse().ok()?;
    let date: Vec<&str> = words.by_ref().take(4).collect();
    let time_ok = date.len() == 4
        && date[0].len() == 3
        && date[1].len() == 3
        && date[2].parse::<u8>().is_ok()
        && date[3].len() == 8
        && date[3].as_bytes()[2] == b':';
    let sender = words.next()?.to_owned();
    (time_ok && words.next().is_none()).then_some((id, mark, size, sender))
}

/// A relay whose smarthost defers every recipient, retried long after the test ends.
fn relay_deferring() -> (Smarthost, RelayProcess) {
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { .. } => Some(reply(451, "4.3.0 try again later")),
        _ => None,
    });
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(upstream.port())
            .queue("retry_min = \"5m\"\nretry_max = \"10m\""),
    );
    (upstream, relay)
}

fn mailq(relay: &RelayProcess) -> String {
    let program = relay.dir.join("mailq");
    if !program.exists() {
        alias(&relay.dir, "mailq");
    }
    let config = relay.config_path.to_string_lossy().into_owned();
    let run = run_command(&program, &["--config", &config], b"");
    assert_eq!(run.code, Some(0), "{run}");
    run.stdout
}

#[test]
fn an_empty_queue_reads_as_zero() {
    let relay = RelayProcess::start("");
    let out = mailq(&relay);
    assert_eq!(out, "Mail queue is empty\n");
    assert_eq!(check_mailq_count(&out), Some(0));
}

#[test]
fn deferred_and_held_messages_parse_as_postfix() {
    let (_upstream, relay) = relay_deferring();
    let mut client = RawClient::ready(relay.port());
    let to = ["b@remote.test", "c@remote.test"];
    let first = assert_queued(&client.send_mail("a@lan.test", &to, &message("one", "x\r\n")));
    let second = assert_queued(&client.send_mail("", &["d@remote.test"], &message("two", "y\r\n")));
    relay.command_ok(&["queue", "hold", &second]);
    let reason = format!("{}(451 4.3.0 try again later)", " ".repeat(76 - 25));
    // Wait until the first attempt failed: the reason is then in the listing.
    let deferred = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        mailq(&relay).contains(&reason)
    });
    assert!(deferred, "never deferred:\n{}", mailq(&relay));
    let out = mailq(&relay);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------")
    );
    assert_eq!(check_mailq_count(&out), Some(2), "{out}");
    let parsed: Vec<_> = out.lines().filter_map(message_line).collect();
    assert_eq!(parsed.len(), 2, "{out}");
    let by_id = |id: &str| parsed.iter().find(|p| p.0 == id).unwrap();
    assert_eq!(by_id(&first).1, ' ', "{out}");
    assert_eq!(by_id(&first).3, "a@lan.test");
    assert_eq!(by_id(&second).1, '!', "{out}");
    assert_eq!(by_id(&second).3, "MAILER-DAEMON");
    // Recipients: 41 columns of blanks, then the address; the reason in parentheses before.
    let rcpt = format!("{}b@remote.test", " ".repeat(41));
    assert!(out.lines().any(|l| l == rcpt), "{out}");
    let reason = out
        .lines()
        .find(|l| l.trim_start().starts_with('('))
        .unwrap();
    assert!(reason.ends_with(')'), "{reason}");
    let total: u64 = parsed.iter().map(|p| p.2).sum();
    assert!(out.ends_with(&format!("\n\n-- {} Kbytes in 2 Requests.\n", total / 1024)));
    // `sendmail -bp` is the same listing; `queue list` keeps outpost's own.
    let sendmail = alias(&relay.dir, "sendmail");
    let config = relay.config_path.to_string_lossy().into_owned();
    let run = run_command(&sendmail, &["--config", &config, "-bp"], b"");
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(check_mailq_count(&run.stdout), Some(2), "{run}");
    // The JSON forms carry their format's version.
    let list = relay.command_ok(&["queue", "list", "--json"]);
    assert_eq!(list.matches("{\"version\":1,\"id\":").count(), 2, "{list}");
    let status = relay.command_ok(&["status", "--json"]);
    assert!(status.starts_with("{\"version\":1,"), "{status}");
    assert!(status.contains("\"queue\":{\"messages\":2,"), "{status}");
    assert!(status.contains("\"held\":1,"), "{status}");
    let own = relay.command_ok(&["queue", "list"]);
    assert!(
        own.contains("<b@remote.test>") && !own.contains("-Queue ID-"),
        "{own}"
    );
}

#[test]
fn status_without_permission_says_so() {
    let relay = RelayProcess::start("");
    if runs_as_root() {
        // root passes every permission check: nothing to provoke here (the unit test
        // control::tests::permission_denied_is_not_a_missing_daemon covers the mapping).
        return;
    }
    let socket = relay.data_dir.join("control.sock");
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o000);
    std::fs::set_permissions(&socket, mode).unwrap();
    let run = relay.command(&["status"], b"");
    assert_eq!(run.code, Some(77), "{run}");
    assert!(run.stderr.contains("permission denied"), "{run}");
    assert!(!run.stderr.contains("not running"), "{run}");
}

/// Whether the test runs as root (reads /proc: no libc call needed).
fn runs_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The body of `GET /metrics` on the relay's metrics port.
fn scrape(relay: &RelayProcess) -> String {
    use std::io::{Read, Write};
    let line = relay.wait_log("metrics on http://");
    let rest = &line[line.find("http://").unwrap() + "http://".len()..];
    let addr: std::net::SocketAddr = rest.split('/').next().unwrap().parse().unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[test]
fn metrics_count_refusals_by_reason_and_say_what_runs() {
    let relay = RelayProcess::start_with(
        RelayConfig::default().top("max_connections = 1\n[metrics]\nlisten = \"127.0.0.1:0\""),
    );
    let _first = RawClient::ready(relay.port());
    // The second session is one too many: greeted 421 and closed.
    let (_second, greeting) = RawClient::connect(relay.port());
    assert_eq!(greeting.code, 421, "{greeting:?}");
    let counted = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        scrape(&relay).contains("outpost_rejected_total{reason=\"connections\"} 1\n")
    });
    let body = scrape(&relay);
    assert!(counted, "{body}");
    assert!(
        body.contains("outpost_rejected_total{reason=\"rate_limit\"} 0\n"),
        "{body}"
    );
    let build = format!(
        "outpost_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    assert!(body.contains(&build), "{body}");
    let free = body
        .lines()
        .find_map(|l| l.strip_prefix("outpost_disk_free_bytes "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(free.is_some_and(|f| f > 0), "{body}");
    assert!(
        body.contains("outpost_accepted_messages_total 0\n"),
        "{body}"
    );
    assert!(body.contains("outpost_queue_oldest_seconds 0\n"), "{body}");
}
