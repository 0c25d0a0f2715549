//! Corruption: records damaged in a stopped relay's store (through sled itself, with the key
//! layout of `src/store/key.rs`) are quarantined with a log line at the next start, the
//! messages they belonged to are rebuilt whole from the body file journal, and the queue flows.

use std::path::Path;
use std::time::Duration;

use crate::util::{
    assert_queued, settle, tagged_message, wait_until, RawClient, RelayProcess, Smarthost,
};

const DELIVERY: Duration = Duration::from_secs(30);

/// Opens the stopped relay's store the way the daemon does (sled, same segment size).
fn open_store(data_dir: &Path) -> sled::Db {
    let conf = String::from_utf8_lossy(&std::fs::read(data_dir.join("conf")).unwrap()).into_owned();
    let segment_size = conf
        .lines()
        .find_map(|l| l.strip_prefix("segment_size: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    sled::Config::new()
        .path(data_dir)
        .segment_size(segment_size)
        .open()
        .unwrap()
}

/// `prefix` + the 8-byte big-endian queue id (`msg/<id>`, `rcpt/<id>`, `part/<id>`).
fn key(prefix: &str, queue_id: &str) -> Vec<u8> {
    let id = u64::from_str_radix(queue_id, 16).unwrap();
    let mut k = prefix.as_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn body_of(id: &str, lines: usize) -> Vec<u8> {
    let mut body = tagged_message(id);
    for n in 0..lines {
        body.extend_from_slice(
            format!("{id} body line {n:05} .........................\r\n").as_bytes(),
        );
    }
    body
}

#[test]
fn damaged_records_are_quarantined_at_start_and_the_rest_of_the_queue_flows() {
    let port = Smarthost::reserve_port();
    let mut relay = RelayProcess::start_to(port);
    let mut client = RawClient::ready(relay.port());
    let mut queued = Vec::new();
    for (name, lines) in [
        ("good-0", 0),
        ("bad-meta", 0),
        ("bad-rcpt", 0),
        // ~190 KB: more pieces than the envelope carries inline, so `part/` records.
        ("cut-body", 4000),
        ("good-1", 0),
    ] {
        // bad-rcpt has two recipients: a single one lives inside the envelope (`msg/`), not in
        // a `rcpt/` record of its own.
        let recipients: &[&str] = if name == "bad-rcpt" {
            &["b@remote.test", "c@remote.test"]
        } else {
            &["b@remote.test"]
        };
        let reply = client.send_mail("a@lan.test", recipients, &body_of(name, lines));
        queued.push((name, assert_queued(&reply)));
    }
    drop(client);
    relay.stop();

    let db = open_store(&relay.data_dir);
    let id = |name: &str| queued.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    // An envelope cut short.
    let meta_key = key("msg/", &id("bad-meta"));
    let meta = db.get(&meta_key).unwrap().unwrap();
    db.insert(&meta_key, &meta[..5]).unwrap();
    // A recipient record with an unknown state.
    let mut rcpt_prefix = key("rcpt/", &id("bad-rcpt"));
    rcpt_prefix.push(b'/');
    let (rcpt_key, _) = db.scan_prefix(&rcpt_prefix).next().unwrap().unwrap();
    db.insert(rcpt_key, &[1u8, 0xEE][..]).unwrap();
    // A body that lost the record of its last part (`part/<id>/<n>`: where in the body
    // segment files each piece of the body is).
    let mut part_prefix = key("part/", &id("cut-body"));
    part_prefix.push(b'/');
    let parts: Vec<_> = db
        .scan_prefix(&part_prefix)
        .keys()
        .map(Result::unwrap)
        .collect();
    assert!(parts.len() >= 2, "the long body took {} parts", parts.len());
    db.remove(parts.last().unwrap()).unwrap();
    // A message key that is not one.
    db.insert(b"msg/bad", &b"junk"[..]).unwrap();
    db.flush().unwrap();
    drop(db);

    let upstream = Smarthost::start_on(port);
    relay.restart();
    let names = ["good-0", "bad-meta", "bad-rcpt", "cut-body", "good-1"];
    let arrived = wait_until(DELIVERY, Duration::from_millis(50), || {
        let ids = upstream.arrived_ids();
        names.iter().all(|name| ids.contains_key(*name))
    });
    if !arrived {
        relay.fail("not every message flowed after the restart");
    }
    // A message going out twice would do so before the marker.
    settle(&relay, &upstream);
    let ids = upstream.arrived_ids();
    println!("arrived: {ids:?}");
    for name in names {
        if ids.get(name) != Some(&1) {
            relay.fail(&format!("{name} arrived {:?} times", ids.get(name)));
        }
    }
    // Every message arrived whole: the damaged records were set aside, and the messages
    // rebuilt from the body files, never delivered short.
    for m in upstream.unmarked() {
        let (name, lines) = [
            ("good-0", 0),
            ("bad-meta", 0),
            ("bad-rcpt", 0),
            ("cut-body", 4000),
            ("good-1", 0),
        ]
        .into_iter()
        .find(|(name, _)| m.data_str().contains(&format!("X-Test-Id: {name}\r\n")))
        .unwrap();
        if m.after_received() != Some(body_of(name, lines).as_slice()) {
            relay.fail(&format!("{name} did not arrive whole"));
        }
    }
    let log = relay.log();
    // One line per damaged message, naming it, then its rebuild.
    for bad in ["bad-meta", "bad-rcpt", "cut-body"] {
        let line = format!("key=msg/{} damaged", id(bad));
        if !log.contains(&line) {
            relay.fail(&format!("no quarantine line for {bad} ({line})"));
        }
        let rebuilt = format!("queue_id={} rebuilt from the body file journal", id(bad));
        if !log.contains(&rebuilt) {
            relay.fail(&format!("no rebuild line for {bad}"));
        }
    }
    if !log.contains("key=msg/626164 damaged (malformed message key)") {
        relay.fail("no quarantine line for the malformed key");
    }
    if !log.contains("quarantined=") || !relay.command_ok(&["queue", "list"]).contains("empty") {
        relay.fail("the queue did not drain after the quarantine");
    }
}
