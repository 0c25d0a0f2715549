//! The disk given back with the real binary: a backlog queued with the smarthost down, then
//! delivered, leaves sled's database grown; the running daemon compacts it once the queue stayed
//! empty, and so does the next start; the queue ids keep climbing.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::{
    assert_queued, slack, tagged_message, wait_until, RawClient, RelayProcess, Smarthost,
};

const DELIVERY: Duration = Duration::from_secs(120);

/// The store compacts a `db` file above this (`COMPACT_ABOVE` in `src/store/compact.rs`).
const COMPACT_ABOVE: u64 = 1 << 20;

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| {
                    let e = e.unwrap();
                    if e.file_type().unwrap().is_dir() {
                        dir_bytes(&e.path())
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn db_bytes(data_dir: &Path) -> u64 {
    std::fs::metadata(data_dir.join("db")).map_or(0, |m| m.len())
}

/// Queues messages (the smarthost down) until sled's `db` file is 3 MiB, past the 2 MB aimed
/// at; returns how many and the last queue id.
fn grow_backlog(relay: &RelayProcess) -> (usize, u64) {
    const GROWN: u64 = 3 << 20;
    const MAX_MESSAGES: usize = 6000;
    let recipients: Vec<String> = (0..20).map(|n| format!("rcpt{n}@remote.test")).collect();
    let to: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let end = Instant::now() + slack(Duration::from_secs(120));
    let mut sent = 0;
    let mut last = 0;
    while db_bytes(&relay.data_dir) < GROWN {
        assert!(
            sent < MAX_MESSAGES && Instant::now() < end,
            "db only {} bytes after {sent} messages",
            db_bytes(&relay.data_dir)
        );
        let mut client = RawClient::ready(relay.port());
        for _ in 0..50 {
            let reply = client.send_mail("a@lan.test", &to, &tagged_message(&format!("m{sent}")));
            let id = u64::from_str_radix(&assert_queued(&reply), 16).unwrap();
            assert!(id > last, "queue ids climb");
            last = id;
            sent += 1;
        }
    }
    (sent, last)
}

/// Starts the smarthost on `port`; returns once it has all `sent` messages and the queue is
/// empty.
fn drain(relay: &RelayProcess, port: u16, sent: usize) -> Smarthost {
    let upstream = Smarthost::start_on(port);
    if !wait_until(DELIVERY, Duration::from_millis(100), || {
        upstream.arrived_ids().len() == sent
    }) {
        relay.fail(&format!(
            "{} of {sent} messages delivered",
            upstream.arrived_ids().len()
        ));
    }
    assert!(relay.wait_queue_empty(), "queue not empty after delivery");
    upstream
}

/// A message sent now gets a queue id above `last` and is delivered.
fn still_delivers(relay: &RelayProcess, upstream: &Smarthost, last: u64) {
    let mut client = RawClient::ready(relay.port());
    let reply = client.send_mail("a@lan.test", &["b@remote.test"], &tagged_message("after"));
    let id = assert_queued(&reply);
    assert!(
        u64::from_str_radix(&id, 16).unwrap() > last,
        "queue id {id} not above the last before the compaction ({last:016X})"
    );
    if !wait_until(DELIVERY, Duration::from_millis(50), || {
        upstream.arrived_ids().contains_key("after")
    }) {
        relay.fail("the message after the compaction was not delivered");
    }
}

#[test]
fn a_drained_backlog_gives_the_disk_back_while_the_daemon_runs() {
    let port = Smarthost::reserve_port();
    let relay = RelayProcess::start_to(port);
    let (sent, last) = grow_backlog(&relay);
    let upstream = drain(&relay, port, sent);
    let (drained, db_drained) = (dir_bytes(&relay.data_dir), db_bytes(&relay.data_dir));

    // Housekeeping compacts once it found the queue empty at two checks 10 s apart.
    if !wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        dir_bytes(&relay.data_dir) < 2 << 20
    }) {
        relay.fail(&format!(
            "data directory {drained} bytes (db {db_drained}) with the queue empty, still {} a \
             minute later",
            dir_bytes(&relay.data_dir)
        ));
    }
    // sled may have cleaned its log under the threshold by itself while the queue drained.
    if db_drained > COMPACT_ABOVE {
        relay.wait_log("store: compacted the database while running");
    }
    still_delivers(&relay, &upstream, last);
}

#[test]
fn a_drained_backlog_gives_the_disk_back_at_the_next_start() {
    let port = Smarthost::reserve_port();
    let mut relay = RelayProcess::start_to(port);
    // Each start moves sled's id counter on by 2,000,000: ids well above a fresh database's.
    relay.restart();
    relay.restart();
    let (sent, last) = grow_backlog(&relay);
    let upstream = drain(&relay, port, sent);
    assert!(relay.terminate(Duration::from_secs(20)).is_some());
    // sled cleans some of its log by itself while the queue drains (how much depends on
    // timing: under qemu it was down to 1 MB), and at open it cuts a partly written last log
    // segment: the start compacts whenever `db` is still over the store's 1 MiB threshold then,
    // which it surely is when it was over it by a segment before; the data directory is under
    // 2 MB after the start either way.
    let (grown, db_grown) = (dir_bytes(&relay.data_dir), db_bytes(&relay.data_dir));

    relay.restart();
    if db_grown > COMPACT_ABOVE + outpost::store::SLED_SEGMENT_SIZE as u64 {
        relay.wait_log("store: compacted the database");
    }
    let after = dir_bytes(&relay.data_dir);
    assert!(
        after < 2 << 20,
        "data directory {grown} bytes (db {db_grown}) with the queue empty, {after} after the \
         start"
    );
    still_delivers(&relay, &upstream, last);
}
