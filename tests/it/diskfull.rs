//! Disk full without root: the relay runs under a file-size limit (`ulimit -f`, SIGXFSZ
//! ignored, so writes past it fail with EFBIG as they would with ENOSPC). The commit that hits
//! the wall gets 451 4.3.0, never 250; sled refuses every write after an I/O error, so the
//! daemon shuts down and exits 75 (EX_TEMPFAIL) for its supervisor; restarted with room, the
//! store reopens cleanly and every acknowledged message is delivered. (The free-space reserve
//! that answers 452 4.3.1 before the disk is full needs a real small filesystem: see
//! `.ci/faults.sh`, which mounts a tmpfs.)

use std::time::Duration;

use crate::util::{RawClient, RelayConfig, RelayProcess, Smarthost};

const DELIVERY: Duration = Duration::from_secs(120);

fn padded(id: &str) -> Vec<u8> {
    let mut body = format!("X-Test-Id: {id}\r\nSubject: {id}\r\n\r\n").into_bytes();
    for n in 0..120 {
        body.extend_from_slice(
            format!("{id} {n:04} filler filler filler filler filler\r\n").as_bytes(),
        );
    }
    body
}

#[test]
fn full_disk_gets_451_then_exit_75_and_a_restart_with_room_delivers_every_acknowledged_message() {
    // 2048 blocks: 1 MiB (dash counts 512-octet blocks) or 2 MiB (bash, 1024).
    const LIMIT: &str = "ulimit -S -f 2048\ntrap '' XFSZ";
    const MAX_MESSAGES: usize = 2000;

    let port = Smarthost::reserve_port();
    let mut relay = RelayProcess::start_wrapped(RelayConfig::with_smarthost(port), LIMIT);
    let mut client = RawClient::ready(relay.port());
    let mut acked = Vec::new();
    let mut refusal = None;
    for n in 0..MAX_MESSAGES {
        let id = format!("full-{n}");
        match client.try_send_mail("a@lan.test", &["b@remote.test"], &padded(&id)) {
            Ok(reply) if reply.code == 250 => acked.push(id),
            Ok(reply) => {
                refusal = Some(reply);
                break;
            }
            Err(e) => relay.fail(&format!("message {n}: {e}")),
        }
    }
    let Some(refusal) = refusal else {
        relay.fail(&format!(
            "{MAX_MESSAGES} messages fitted under the file-size limit"
        ));
    };
    assert_eq!(refusal.code, 451, "reply at the wall: {refusal}");
    assert!(refusal.text().starts_with("4.3.0"), "{refusal}");
    assert!(!acked.is_empty(), "nothing fitted before the wall");

    // The daemon stops by itself (exit 75), as it must: sled is unusable after the error.
    let status = relay
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| relay.fail("the relay kept running on a failed store"));
    if status.code() != Some(75) {
        relay.fail(&format!("exit status {status}, expected 75 (EX_TEMPFAIL)"));
    }
    if !relay.log().contains("the queue failed") {
        relay.fail("no log line explains the exit");
    }

    // The supervisor restarts it with room (and a smarthost): it reopens cleanly and
    // delivers everything it acknowledged.
    let upstream = Smarthost::start_on(port);
    relay.set_wrapper(None);
    relay.restart();
    // The queue holds every acknowledged message, and perhaps the one in flight at the wall:
    // its records may have reached the disk before the failing flush, and its 451 told the
    // client to send it again (a duplicate, never a loss).
    let log = relay.log();
    let reopened: Option<usize> = log
        .lines()
        .filter_map(|l| l.split("queue opened: ").nth(1))
        .next_back()
        .and_then(|l| l.split("messages=").nth(1))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    match reopened {
        Some(n) if n == acked.len() || n == acked.len() + 1 => {}
        other => relay.fail(&format!(
            "the reopened queue holds {other:?} messages, not the {} acknowledged",
            acked.len()
        )),
    }
    let all = crate::util::wait_until(DELIVERY, Duration::from_millis(50), || {
        let ids = upstream.arrived_ids();
        acked.iter().all(|id| ids.contains_key(id))
    });
    if !all {
        relay.fail("acknowledged messages were not delivered after the restart");
    }
    println!("disk full: {} messages acknowledged before the wall, then 451, exit 75; all delivered after the restart", acked.len());
    // And it accepts new mail again.
    let mut client = RawClient::ready(relay.port());
    let reply = client.send_mail("a@lan.test", &["b@remote.test"], &padded("after"));
    assert_eq!(reply.code, 250, "{reply}");
}
