//! Operating the daemon: `outpost queue …` and `outpost status` over the control socket,
//! `queue flush` and SIGUSR1 during an outage, the `mailq` alias, the Prometheus endpoint and
//! listen addresses that do not exist yet. Every test drives the real binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::util::{
    alias, assert_queued, message, reply, run_command, RawClient, RelayConfig, RelayProcess,
    Smarthost, Stage, TestDir, OUTPOST,
};

const DELIVERY: Duration = Duration::from_secs(20);

fn send(relay: &RelayProcess, subject: &str, to: &[&str]) -> String {
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail("a@lan.test", to, &message(subject, "x\r\n")))
}

/// `text` with every duration (`1s`, `5m 3s`, `2h`) replaced by one `<t>` and runs of spaces
/// (column padding, which depends on the width of the age) collapsed to one.
fn without_durations(text: &str) -> String {
    let is_duration = |word: &str| {
        word.len() >= 2
            && word.ends_with(['s', 'm', 'h', 'd'])
            && word[..word.len() - 1].bytes().all(|b| b.is_ascii_digit())
    };
    text.lines()
        .map(|line| {
            let mut words: Vec<&str> = line
                .split_whitespace()
                .map(|word| if is_duration(word) { "<t>" } else { word })
                .collect();
            // "5m 3s" and "5m" are one duration each.
            words.dedup_by(|a, b| *a == "<t>" && *b == "<t>");
            words.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A relay whose smarthost port is closed, with retry times far above every test deadline.
fn relay_with_outage() -> (u16, RelayProcess) {
    let port = Smarthost::reserve_port();
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(port).queue("retry_min = \"5m\"\nretry_max = \"10m\""),
    );
    (port, relay)
}

/// Waits until `outpost status` says the link is down (the first attempt has failed).
fn wait_link_down(relay: &RelayProcess) {
    let down = crate::util::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        relay.command_ok(&["status"]).contains("link: down since")
    });
    if !down {
        relay.fail("status never said the link is down");
    }
}

#[test]
fn queue_list_show_hold_release_delete_and_status() {
    let (_port, relay) = relay_with_outage();
    let first = send(&relay, "first", &["b@remote.test"]);
    let second = send(&relay, "second", &["c@remote.test", "d@remote.test"]);
    wait_link_down(&relay);

    // Only the daemon's user may talk to it.
    let socket = relay.data_dir.join("control.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");

    let list = relay.command_ok(&["queue"]);
    for needle in [
        &first,
        &second,
        "<a@lan.test>",
        "<c@remote.test>",
        "2 messages",
    ] {
        assert!(list.contains(needle), "{needle} missing from:\n{list}");
    }
    // The two listings are taken at different times: an age or a countdown may tick in between
    // (often under emulation), so durations are compared as placeholders.
    assert_eq!(
        without_durations(&relay.command_ok(&["queue", "list"])),
        without_durations(&list)
    );
    let json = relay.command_ok(&["queue", "list", "--json"]);
    assert!(json.trim_start().starts_with('[') && json.trim_end().ends_with(']'));
    assert!(json.contains(&format!("\"id\":\"{second}\"")), "{json}");
    assert!(json.contains("\"address\":\"d@remote.test\""), "{json}");

    let show = relay.command_ok(&["queue", "show", &second]);
    assert!(show.contains("sender: <a@lan.test>"), "{show}");
    assert!(show.contains("<d@remote.test>"), "{show}");
    assert!(show.contains("Subject: second"), "{show}");

    relay.command_ok(&["queue", "hold", &first]);
    let json = relay.command_ok(&["queue", "list", "--json"]);
    assert!(
        json.contains(&format!("\"id\":\"{first}\"")) && json.contains("\"state\":\"held\""),
        "{json}"
    );
    relay.command_ok(&["queue", "release", &first]);
    let json = relay.command_ok(&["queue", "list", "--json"]);
    assert!(!json.contains("\"state\":\"held\""), "{json}");

    // --data-dir works as well as --config, before or after the verb.
    let data_dir = relay.data_dir.to_string_lossy().into_owned();
    let run = run_command(
        OUTPOST.as_ref(),
        &["queue", "--data-dir", &data_dir, "delete", &first],
        b"",
    );
    assert_eq!(run.code, Some(0), "{run}");
    let list = relay.command_ok(&["queue"]);
    assert!(!list.contains(&first) && list.contains(&second), "{list}");

    let unknown = relay.command(&["queue", "delete", "00000000DEADBEEF"], b"");
    assert_eq!(unknown.code, Some(1), "{unknown}");
    assert!(unknown.stderr.contains("no such message"), "{unknown}");

    let status = relay.command_ok(&["status"]);
    for needle in [
        "outpost ",
        "link: down since",
        "never reached",
        "queue: 1 messages",
        "last error: smarthost 127.0.0.1:",
    ] {
        assert!(status.contains(needle), "{needle} missing from:\n{status}");
    }
}

#[test]
fn status_and_queue_exit_69_when_the_daemon_is_not_running() {
    let dir = TestDir::new();
    let data_dir = dir.join("nothing-here").to_string_lossy().into_owned();
    for args in [
        &["status", "--data-dir", &data_dir][..],
        &["queue", "-d", &data_dir],
    ] {
        let run = run_command(OUTPOST.as_ref(), args, b"");
        assert_eq!(run.code, Some(69), "{run}");
        assert!(run.stderr.contains("not running"), "{run}");
    }
}

#[test]
fn queue_flush_during_an_outage_delivers_as_soon_as_the_upstream_is_back() {
    let (port, relay) = relay_with_outage();
    let subjects = ["flushed-1", "flushed-2", "flushed-3"];
    for subject in subjects {
        send(&relay, subject, &["b@remote.test"]);
    }
    wait_link_down(&relay);
    let upstream = Smarthost::start_on(port);
    // The link backoff (retry_min = 5m) would hold the messages far beyond the deadline below.
    relay.command_ok(&["queue", "flush"]);
    let got = upstream
        .wait_for(subjects.len(), DELIVERY)
        .unwrap_or_else(|| relay.fail("queue flush did not deliver"));
    // The queue drains oldest first.
    for (delivered, subject) in got.iter().zip(subjects) {
        let data = delivered.data_str();
        assert!(data.contains(&format!("Subject: {subject}\r\n")), "{data}");
    }
    let up = crate::util::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        relay.command_ok(&["status"]).contains("link: up since")
    });
    assert!(up, "status does not say the link is up");
}

#[test]
fn sigusr1_flushes_like_queue_flush() {
    let (port, relay) = relay_with_outage();
    send(&relay, "usr1", &["b@remote.test"]);
    wait_link_down(&relay);
    let upstream = Smarthost::start_on(port);
    relay.signal("USR1");
    upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("SIGUSR1 did not deliver"));
}

#[test]
fn invoked_as_mailq_lists_the_queue() {
    let (_port, relay) = relay_with_outage();
    let id = send(&relay, "mailq", &["b@remote.test"]);
    let mailq = alias(&relay.dir, "mailq");
    let config = relay.config_path.to_string_lossy().into_owned();
    let run = run_command(&mailq, &["--config", &config], b"");
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains(&id), "{run}");
    assert!(run.stdout.contains(" b@remote.test\n"), "{run}");
}

/// `GET path` on the metrics port; returns (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_owned();
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    (status, body.to_owned())
}

fn metrics_port(relay: &RelayProcess) -> u16 {
    let log = relay.log();
    let rest = log
        .split("metrics on http://")
        .nth(1)
        .unwrap_or_else(|| relay.fail("no `metrics on` line"));
    let addr: std::net::SocketAddr = rest.split('/').next().unwrap().parse().unwrap();
    addr.port()
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, state: Option<&str>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && state.map_or(true, |st| s.labels.get("state") == Some(st)))
        .unwrap_or_else(|| panic!("no sample {name} {state:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: unexpected {other:?}"),
    }
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(upstream.port()).top("[metrics]\nlisten = \"127.0.0.1:0\""),
    );
    send(&relay, "metrics", &["b@remote.test", "c@remote.test"]);
    upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("not delivered"));
    let port = metrics_port(&relay);
    // The queue entry goes once the delivery is recorded; poll the endpoint for that.
    let mut scrape = None;
    let done = crate::util::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let (status, body) = http_get(port, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines).unwrap();
        let sent = value(&parsed, "outpost_sent_total", None);
        scrape = Some(parsed);
        sent >= 2.0
    });
    let scrape = scrape.unwrap();
    assert!(done, "sent_total never reached 2: {:?}", scrape.samples);
    assert_eq!(value(&scrape, "outpost_accepted_total", None), 1.0);
    assert_eq!(value(&scrape, "outpost_link_up", None), 1.0);
    assert_eq!(value(&scrape, "outpost_bounced_total", None), 0.0);
    for state in ["pending", "deferred", "held", "failed"] {
        assert_eq!(value(&scrape, "outpost_queue_messages", Some(state)), 0.0);
        assert_eq!(value(&scrape, "outpost_queue_bytes", Some(state)), 0.0);
    }
    assert!(value(&scrape, "outpost_last_success_timestamp_seconds", None) > 0.0);
    assert!(scrape.docs.contains_key("outpost_queue_oldest_age_seconds"));
    let (status, _) = http_get(port, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn queue_show_lists_the_attempt_history_with_each_reply() {
    // One recipient is always deferred, the other accepted at the first attempt.
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { to } if to.contains("busy@") => Some(reply(451, "4.2.1 mailbox busy")),
        _ => None,
    });
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(upstream.port())
            .queue("retry_min = \"1s\"\nretry_max = \"1s\""),
    );
    let id = send(&relay, "history", &["ok@remote.test", "busy@remote.test"]);
    let mut show = String::new();
    let tried_twice = crate::util::wait_until(DELIVERY, Duration::from_millis(200), || {
        show = relay.command_ok(&["queue", "show", &id]);
        show.matches("\n    <busy@remote.test> deferred: 451 4.2.1 mailbox busy")
            .count()
            >= 2
    });
    assert!(tried_twice, "no history of two attempts:\n{show}");
    assert!(
        show.contains("history (oldest first"),
        "no history heading:\n{show}"
    );
    // History lines are indented by four. The first attempt lists both recipients; later
    // ones only the one still deferred.
    assert_eq!(
        show.matches("\n    <ok@remote.test> sent: 250").count(),
        1,
        "{show}"
    );
    assert_eq!(upstream.count(), 1, "ok@ delivered once");
}

#[test]
fn a_listen_address_that_does_not_exist_yet_is_retried_not_fatal() {
    // 192.0.2.0/24 (TEST-NET-1) is never configured here: bind fails with EADDRNOTAVAIL and
    // no packet is sent.
    let relay = RelayProcess::start_with_args(
        RelayConfig::default(),
        &["--listen", "127.0.0.1:0", "--listen", "192.0.2.1:2525"],
    );
    let log = relay.log();
    assert!(
        log.contains("cannot listen on 192.0.2.1:2525 yet"),
        "no retry line:\n{log}"
    );
    // Still serving on the address that exists.
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], &message("late", "x\r\n")));
    // No smarthost is configured: the queue says what the mail waits for, not "now".
    let list = relay.command_ok(&["queue"]);
    assert!(
        list.contains("next attempt: when a smarthost is configured (attempts: 0"),
        "{list}"
    );
}

#[test]
fn a_held_message_stays_through_a_flush_and_goes_once_released() {
    let (port, relay) = relay_with_outage();
    let held = send(&relay, "held", &["b@remote.test"]);
    send(&relay, "free", &["c@remote.test"]);
    wait_link_down(&relay);
    relay.command_ok(&["queue", "hold", &held]);
    let list = relay.command_ok(&["queue"]);
    assert!(list.contains("next attempt: held"), "{list}");
    assert!(
        list.contains("next attempt: in "),
        "link wait not shown:\n{list}"
    );
    let upstream = Smarthost::start_on(port);
    relay.command_ok(&["queue", "flush"]);
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("the free message was not delivered"));
    assert!(got[0].data_str().contains("Subject: free"));
    // The free one is recorded before the session ends; the held one is still queued, held.
    let recorded =
        crate::util::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            !relay.command_ok(&["queue"]).contains("Subject: free")
                && relay
                    .command_ok(&["queue", "list", "--json"])
                    .matches("\"id\"")
                    .count()
                    == 1
        });
    assert!(recorded, "{}", relay.command_ok(&["queue"]));
    let show = relay.command_ok(&["queue", "show", &held]);
    assert!(show.contains("state: held"), "{show}");
    assert_eq!(upstream.count(), 1, "a held message was sent");
    relay.command_ok(&["queue", "release", &held]);
    let got = upstream
        .wait_for(2, DELIVERY)
        .unwrap_or_else(|| relay.fail("released message not delivered"));
    assert!(got[1].data_str().contains("Subject: held"));
}
