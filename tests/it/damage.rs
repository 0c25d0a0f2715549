//! Damaged storage: with messages queued and the relay stopped, sled's database is damaged
//! (bits flipped, truncated, deleted), a body file has a bit flipped, or sled's `conf` is
//! damaged; at the next start every message is delivered whole (rebuilt from the body file
//! journal), an altered body is quarantined and bounced and never reaches the smarthost, and
//! a damaged `conf` is rewritten.

use std::path::Path;
use std::time::Duration;

use crate::util::{
    assert_queued, strip_received, wait_until, RawClient, RelayConfig, RelayProcess, Smarthost,
};

const DELIVERY: Duration = Duration::from_secs(60);
const MESSAGES: usize = 20;

/// A message with a recognisable body of `lines` lines (a few hundred bytes to ~20 KiB).
fn body(tag: &str, lines: usize) -> Vec<u8> {
    let mut out = format!("X-Test-Id: {tag}\r\nSubject: {tag}\r\n\r\n").into_bytes();
    for n in 0..lines {
        out.extend_from_slice(
            format!("{tag} line {n:04} of the body ................\r\n").as_bytes(),
        );
    }
    out
}

/// Queues `MESSAGES` messages with the smarthost down, stops the relay, damages its data
/// directory with `damage`, starts it with the smarthost up; returns the relay, the smarthost
/// and the bodies sent (by tag).
fn queue_damage_restart(
    damage: impl FnOnce(&Path),
) -> (RelayProcess, Smarthost, Vec<(String, Vec<u8>)>) {
    let port = Smarthost::reserve_port();
    let mut relay = RelayProcess::start_to(port);
    let mut client = RawClient::ready(relay.port());
    let mut sent = Vec::new();
    for n in 0..MESSAGES {
        let tag = format!("dmg-{n:02}");
        let data = body(&tag, 4 + n * 20);
        let reply = client.send_mail("a@lan.test", &["b@remote.test", "c@remote.test"], &data);
        assert_queued(&reply);
        sent.push((tag, data));
    }
    drop(client);
    relay.stop();
    damage(&relay.data_dir);
    let upstream = Smarthost::start_on(port);
    relay.restart();
    (relay, upstream, sent)
}

/// Every message arrived, each exactly as sent (after the relay's `Received:`).
fn assert_all_whole(relay: &RelayProcess, upstream: &Smarthost, sent: &[(String, Vec<u8>)]) {
    if upstream.wait_for(sent.len(), DELIVERY).is_none() {
        relay.fail(&format!(
            "{} of {} messages delivered after the damage: {:?}",
            upstream.count(),
            sent.len(),
            upstream.arrived_ids()
        ));
    }
    let delivered = upstream.delivered();
    for (tag, data) in sent {
        let whole = delivered
            .iter()
            .any(|m| strip_received(&m.data) == Some(data.as_slice()));
        if !whole {
            relay.fail(&format!("{tag} did not arrive whole"));
        }
    }
}

/// Flips `bits` bits of `path` at positions spread over the file (deterministic).
fn flip_bits(path: &Path, bits: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..bits {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = usize::try_from(x % bytes.len() as u64).unwrap();
        bytes[at] ^= 1 << (x % 8);
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_deleted_database_is_rebuilt_from_the_body_files_and_every_message_delivered() {
    let (relay, upstream, sent) = queue_damage_restart(|dir| {
        std::fs::remove_file(dir.join("db")).unwrap();
    });
    assert_all_whole(&relay, &upstream, &sent);
    let log = relay.log();
    let line = format!(
        "the database lacked {MESSAGES} messages the body file journal holds: {MESSAGES} rebuilt"
    );
    if !log.contains(&line) || !log.contains("ERROR") {
        relay.fail(&format!("no ERROR line with the counts ({line})"));
    }
    let status = relay.command_ok(&["status"]);
    if !status.contains(&format!("store damage: {MESSAGES} messages rebuilt")) {
        relay.fail(&format!("status does not show the rebuild: {status}"));
    }
}

#[test]
fn a_truncated_database_loses_no_message() {
    let (relay, upstream, sent) = queue_damage_restart(|dir| {
        let db = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("db"))
            .unwrap();
        let len = db.metadata().unwrap().len();
        db.set_len(len / 2).unwrap();
    });
    assert_all_whole(&relay, &upstream, &sent);
}

#[test]
fn flipped_bits_in_the_database_lose_no_message() {
    let (relay, upstream, sent) = queue_damage_restart(|dir| flip_bits(&dir.join("db"), 64));
    assert_all_whole(&relay, &upstream, &sent);
}

#[test]
fn a_damaged_sled_conf_is_rewritten_and_the_queue_delivered() {
    let (relay, upstream, sent) = queue_damage_restart(|dir| {
        let path = dir.join("conf");
        let mut conf = std::fs::read(&path).unwrap();
        conf[2] ^= 0x21; // "segment_size" no longer reads as such
        std::fs::write(&path, conf).unwrap();
    });
    assert_all_whole(&relay, &upstream, &sent);
    if !relay
        .log()
        .contains("(sled's settings) was damaged: rewritten")
    {
        relay.fail("no clear line about the damaged conf");
    }
    assert!(relay.data_dir.join("conf.damaged").exists());
}

#[test]
fn an_altered_body_is_quarantined_and_bounced_and_never_reaches_the_smarthost() {
    let victim = "dmg-victim";
    let port = Smarthost::reserve_port();
    let mut relay = RelayProcess::start_to(port);
    let mut client = RawClient::ready(relay.port());
    let good = body("dmg-good", 10);
    let bad = body(victim, 400); // ~20 KiB
    let good_id = assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], &good));
    let victim_id = assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], &bad));
    drop(client);
    relay.stop();
    // One bit flipped inside the victim's body, in its body file: "line 0300" -> "line 0302".
    let needle = format!("{victim} line 0300").into_bytes();
    flip_in_body_files(&relay.data_dir, &needle);
    let upstream = Smarthost::start_on(port);
    relay.restart();
    // The DSN to the sender comes after the victim's attempt: wait for it and the good one.
    let arrived = crate::util::wait_until(DELIVERY, Duration::from_millis(50), || {
        let all = upstream.delivered();
        all.iter()
            .any(|m| m.from.is_empty() && m.data_str().contains(&victim_id))
            && all
                .iter()
                .any(|m| strip_received(&m.data) == Some(good.as_slice()))
    });
    if !arrived {
        relay.fail(&format!(
            "no DSN for {victim_id} or {good_id} not delivered"
        ));
    }
    for m in upstream.delivered() {
        if m.data_str().contains(&format!("{victim} line 0302")) {
            relay.fail("altered content reached the smarthost");
        }
        if !m.from.is_empty() && m.data_str().contains(victim) {
            relay.fail("the damaged message was delivered");
        }
    }
    let log = relay.log();
    if !log.contains(&format!("queue_id={victim_id} body failed its checksum")) {
        relay.fail("no WARN line naming the quarantined message");
    }
    let kept = std::fs::read(relay.data_dir.join("quarantine").join(&victim_id)).unwrap();
    assert!(kept
        .windows(needle.len())
        .any(|w| w.starts_with(format!("{victim} line 030").as_bytes())));
    if !relay.wait_queue_empty() {
        relay.fail("the queue did not drain");
    }
}

/// Flips one bit of the last byte of `needle` where it stands in a body file of `data_dir`.
fn flip_in_body_files(data_dir: &Path, needle: &[u8]) {
    for entry in std::fs::read_dir(data_dir.join("bodies")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at + needle.len() - 1] ^= 0x02;
            std::fs::write(&path, bytes).unwrap();
            return;
        }
    }
    panic!(
        "{} not found in a body file",
        String::from_utf8_lossy(needle)
    );
}

/// `[coalesce]`: three alerts of one storm leave as a digest; the second one's body is damaged.
/// It is quarantined and bounced, the other two still leave at once (as a digest of two), and
/// nothing of the damaged one reaches the smarthost.
#[test]
fn an_altered_original_in_a_digest_is_quarantined_and_the_rest_delivered() {
    let victim = "dmg-digest-victim";
    let port = Smarthost::reserve_port();
    let mut relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(port).section("[coalesce]\nwindow = \"1h\""),
    );
    let mut client = RawClient::ready(relay.port());
    let tags = ["dmg-digest-a", victim, "dmg-digest-b"];
    let mut ids = Vec::new();
    for tag in tags {
        let lines = if tag == victim { 400 } else { 10 };
        // One storm: the same sender and Subject (body() names the tag in its own Subject).
        let data = String::from_utf8(body(tag, lines))
            .unwrap()
            .replace(&format!("Subject: {tag}"), "Subject: UPS on battery");
        ids.push(assert_queued(&client.send_mail(
            "ups@site.test",
            &["ops@remote.test"],
            data.as_bytes(),
        )));
    }
    drop(client);
    relay.stop();
    flip_in_body_files(&relay.data_dir, format!("{victim} line 0300").as_bytes());
    let upstream = Smarthost::start_on(port);
    relay.restart();
    let victim_id = &ids[1];
    let arrived = wait_until(DELIVERY, Duration::from_millis(50), || {
        let all = upstream.delivered();
        all.iter()
            .any(|m| m.from.is_empty() && m.data_str().contains(victim_id.as_str()))
            && ["dmg-digest-a", "dmg-digest-b"].iter().all(|tag| {
                all.iter().any(|m| {
                    !m.from.is_empty() && m.data_str().contains(&format!("{tag} line 0009"))
                })
            })
    });
    if !arrived {
        relay.fail(&format!(
            "no DSN for {victim_id}, or the other two not delivered"
        ));
    }
    for m in upstream.delivered() {
        if !m.from.is_empty() && m.data_str().contains(victim) {
            relay.fail("the damaged original reached the smarthost");
        }
    }
    // Tried as one digest, the damaged original cut it; the other two were neither deferred
    // nor held back by a link marked down: they left at once, in a digest of two.
    let whole = relay.log();
    let log = whole.rsplit("---- start #").next().unwrap_or_default();
    if !log.contains("digest of 3 messages") || !log.contains("digest of 2 messages") {
        relay.fail("not tried as a digest of three, then of two");
    }
    if log.contains("status=deferred") || log.contains("unavailable") {
        relay.fail("the damaged original deferred the others or marked the link down");
    }
    if !log.contains(&format!("queue_id={victim_id} body failed its checksum")) {
        relay.fail("no WARN line naming the quarantined original");
    }
    assert!(relay.data_dir.join("quarantine").join(victim_id).exists());
    if !relay.wait_queue_empty() {
        relay.fail("the queue did not drain");
    }
}
