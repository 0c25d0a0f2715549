//! `[smarthost] connections`: a backlog queued during an outage drains over several sessions
//! to the smarthost once it is back, every acknowledged message exactly once. With parallel
//! sessions each one takes the most urgent message no session took yet, so when the first
//! message of a lower priority is taken, every more urgent one has arrived or is in flight on
//! one of the other `connections - 1` sessions: at most that many more urgent messages can
//! arrive after it. With one connection the order is strict. Drives the real binary against
//! the kit's smarthost, which counts the sessions open at once.

use std::collections::HashMap;
use std::time::Duration;

use std::sync::atomic::Ordering;

use crate::util::{
    assert_queued, make_fifo, reply, wait_until, Delivered, RawClient, RelayConfig, RelayProcess,
    Smarthost, Stage,
};

const DELIVERY: Duration = Duration::from_secs(60);

const RULES: &str = "[[priority]]\nsender = \"ups@*\"\nlevel = \"urgent\"\n\n\
                     [[priority]]\nsender = \"backup@*\"\nlevel = \"low\"";

/// The priorities in delivery order, with the sender that selects each.
const LEVELS: [(&str, &str); 3] = [
    ("urgent", "ups@lan.test"),
    ("normal", "cron@lan.test"),
    ("low", "backup@lan.test"),
];

/// Queues `n` messages during an outage, levels interleaved (low first, so that queue order
/// alone would get the order wrong); returns their Message-IDs (`<level>-<n>@lan.test`).
fn queue_backlog(relay: &RelayProcess, n: usize) -> Vec<String> {
    let mut client = RawClient::ready(relay.port());
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        // low, normal, normal, urgent, normal, low, …: about 1/5 urgent, 2/5 low.
        let level = [2, 1, 1, 0, 1][i % 5];
        let (name, sender) = LEVELS[level];
        let id = format!("{name}-{i}@lan.test");
        let message = format!(
            "From: {sender}\r\nTo: ops@remote.test\r\nSubject: backlog {i}\r\n\
             Message-ID: <{id}>\r\n\r\nbody {i}\r\n"
        );
        assert_queued(&client.send_mail(sender, &["ops@remote.test"], message.as_bytes()));
        ids.push(id);
    }
    let _ = client.cmd("QUIT");
    ids
}

/// The Message-ID of a delivered message, without brackets.
fn message_id(data: &str) -> String {
    data.lines()
        .find_map(|l| l.strip_prefix("Message-ID: <"))
        .and_then(|rest| rest.strip_suffix('>'))
        .unwrap_or("?")
        .to_owned()
}

/// The index in `LEVELS` of a Message-ID.
fn level_of(id: &str) -> usize {
    LEVELS
        .iter()
        .position(|(name, _)| id.starts_with(&format!("{name}-")))
        .unwrap_or_else(|| panic!("unexpected message {id}"))
}

fn config(port: u16, connections: usize) -> RelayConfig {
    RelayConfig::with_smarthost(port)
        .smarthost_keys(&format!("connections = {connections}"))
        .queue("retry_min = \"5m\"\nretry_max = \"10m\"")
        .section(RULES)
}

/// Queues `n` messages with the smarthost down over `connections` sessions, or as many as
/// `reload` says after a reload while it is still down; brings the smarthost up and drains.
/// Returns the Message-IDs in arrival order and the most sessions open at once.
fn drain(n: usize, connections: usize, reload: Option<usize>) -> (Vec<String>, usize) {
    let port = Smarthost::reserve_port();
    let relay = RelayProcess::start_with(config(port, connections));
    let sent = queue_backlog(&relay, n);
    if let Some(connections) = reload {
        let text = config(port, connections).render(&relay.data_dir);
        std::fs::write(&relay.config_path, text).unwrap();
        relay.command_ok(&["reload"]);
    }
    let upstream = Smarthost::start_on(port);
    relay.command_ok(&["queue", "flush"]);
    let got = upstream
        .wait_for(n, DELIVERY)
        .unwrap_or_else(|| relay.fail("the backlog did not drain"));
    let arrived: Vec<String> = got.iter().map(|d| message_id(&d.data_str())).collect();
    // Exactly once each, and nothing else.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &arrived {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, &c)| c > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    let lost: Vec<_> = sent
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged but never arrived: {lost:?}");
    assert_eq!(arrived.len(), n, "{arrived:?}");
    // Every outcome is recorded: the queue empties, nothing waits for another try.
    let empty = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        !relay.command_ok(&["queue"]).contains("@lan.test")
    });
    assert!(empty, "{}", relay.command_ok(&["queue"]));
    (arrived, upstream.max_sessions())
}

/// `got` (what the smarthost received) is `sent`, each message once, nothing else, in strict
/// priority order.
fn assert_whole_in_strict_order(got: &[Delivered], mut sent: Vec<String>) {
    let mut arrived: Vec<String> = got.iter().map(|d| message_id(&d.data_str())).collect();
    let levels: Vec<usize> = arrived.iter().map(|id| level_of(id)).collect();
    assert!(levels.windows(2).all(|w| w[0] <= w[1]), "{arrived:?}");
    arrived.sort();
    sent.sort();
    assert_eq!(
        arrived, sent,
        "each acknowledged message once, nothing else"
    );
}

/// For each pair of levels: how many messages of the more urgent one arrived after the first
/// one of the less urgent level; the largest such count.
fn most_overtaken(arrived: &[String]) -> usize {
    let levels: Vec<usize> = arrived.iter().map(|id| level_of(id)).collect();
    let mut most = 0;
    for later in 1..LEVELS.len() {
        let Some(first) = levels.iter().position(|&l| l == later) else {
            continue;
        };
        let overtaken = levels[first..].iter().filter(|&&l| l < later).count();
        most = most.max(overtaken);
    }
    most
}

#[test]
fn a_backlog_drains_over_three_sessions_once_each_and_in_priority_order_per_session() {
    let (arrived, sessions) = drain(300, 3, None);
    assert!(
        (2..=3).contains(&sessions),
        "{sessions} sessions open at once (wanted 2 or 3)"
    );
    // When a less urgent message was taken, at most the other two sessions still held a more
    // urgent one.
    let overtaken = most_overtaken(&arrived);
    assert!(overtaken <= 2, "{overtaken} overtaken: {arrived:?}");
}

#[test]
fn over_one_connection_the_backlog_drains_in_strict_priority_order() {
    let (arrived, sessions) = drain(60, 1, None);
    assert_eq!(sessions, 1);
    assert_eq!(most_overtaken(&arrived), 0, "{arrived:?}");
    let levels: Vec<usize> = arrived.iter().map(|id| level_of(id)).collect();
    assert!(levels.windows(2).all(|w| w[0] <= w[1]), "{arrived:?}");
}

#[test]
fn a_reload_changes_the_number_of_sessions_at_the_next_pass() {
    let (_, sessions) = drain(200, 1, Some(3));
    assert!(
        (2..=3).contains(&sessions),
        "{sessions} sessions open at once"
    );
}

#[test]
fn a_backlog_recovered_after_kill_9_drains_whole_in_strict_order() {
    // The schedule is rebuilt by recovery from the message records, not kept from the load.
    let port = Smarthost::reserve_port();
    let mut relay = RelayProcess::start_with(config(port, 1));
    let sent = queue_backlog(&relay, 300);
    relay.kill9();
    relay.restart();
    let upstream = Smarthost::start_on(port);
    relay.command_ok(&["queue", "flush"]);
    let got = upstream
        .wait_for(sent.len(), DELIVERY)
        .unwrap_or_else(|| relay.fail("the recovered backlog did not drain"));
    assert_whole_in_strict_order(&got, sent);
}

#[test]
fn an_extra_session_the_smarthost_refuses_leaves_the_drain_to_the_first() {
    // A smarthost that takes one connection per client: every greeting after the first one
    // is refused, as a per-client connection cap does.
    let port = Smarthost::reserve_port();
    let relay = RelayProcess::start_with(config(port, 3));
    let sent = queue_backlog(&relay, 200);
    let before = relay.log().len();
    let greetings = std::sync::atomic::AtomicUsize::new(0);
    let upstream = Smarthost::builder()
        .on_port(port)
        .policy(move |stage| match stage {
            Stage::Helo if greetings.fetch_add(1, Ordering::SeqCst) > 0 => {
                Some(reply(421, "4.7.0 too many connections from your host"))
            }
            _ => None,
        })
        .start();
    relay.command_ok(&["queue", "flush"]);
    let got = upstream
        .wait_for(sent.len(), DELIVERY)
        .unwrap_or_else(|| relay.fail("the backlog did not drain over the one session"));
    assert_eq!(got.len(), sent.len());
    relay.wait_log("no extra session");
    // Not a site failure: the smarthost was never marked down once it was back.
    let log = relay.log();
    assert!(!log[before..].contains("unavailable"), "{log}");
}

#[test]
fn a_backlog_drains_in_strict_order_while_the_journal_pass_still_reads_the_body_files() {
    // Start-up recovery opens the queue from the message records; its pass over the body files
    // runs behind the open queue. A FIFO named like the first body file holds that pass until
    // the test opens and closes its write end.
    let port = Smarthost::reserve_port();
    let mut relay = RelayProcess::start_with(config(port, 1));
    let sent = queue_backlog(&relay, 100);
    relay.kill9();
    let fifo = relay.data_dir.join("bodies").join("0000000000000001");
    make_fifo(&fifo, 0o600);
    let upstream = Smarthost::start_on(port);
    relay.restart();
    let got = upstream
        .wait_for(sent.len(), DELIVERY)
        .unwrap_or_else(|| relay.fail("the backlog did not drain while the pass waited"));
    // The pass is still inside the body files: its read end of the FIFO is open.
    let writer = rustix::fs::open(
        &fifo,
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK,
        rustix::fs::Mode::empty(),
    )
    .unwrap_or_else(|e| relay.fail(&format!("the journal pass does not hold the FIFO: {e}")));
    // The log of this start only (the first one ran its own, empty pass).
    let this_start = || {
        relay
            .log()
            .rsplit("---- start #")
            .next()
            .unwrap_or("")
            .to_owned()
    };
    if this_start().contains("journal pass done") {
        relay.fail("the journal pass ended while it held the FIFO");
    }
    assert_whole_in_strict_order(&got, sent);
    // The operator sees that recovery still runs, and a second pass waits for it.
    let status = relay.command_ok(&["status"]);
    assert!(
        status.contains("recovery: reading the body files"),
        "{status}"
    );
    let recover = relay.command(&["queue", "recover"], b"");
    assert!(
        recover.code != Some(0) && recover.stderr.contains("try again once it is done"),
        "{recover}"
    );
    drop(writer);
    let done = wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
        this_start().contains("journal pass done")
    });
    if !done {
        relay.fail("the journal pass did not end once the FIFO closed");
    }
    assert!(
        !fifo.exists(),
        "the FIFO holds no mail: deleted after the pass"
    );
    assert_eq!(upstream.count(), 100, "nothing sent twice");
}
