//! Durability with the real binary: a message that got 250 survives SIGKILL at any moment and
//! reaches the smarthost after a restart. Duplicates are tolerated (and counted), losses are not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{
    assert_queued, tagged_message, wait_until, RawClient, RelayProcess, Smarthost, Tally,
};

const DELIVERY: Duration = Duration::from_secs(30);

#[test]
fn acknowledged_message_survives_kill9_right_after_250() {
    let port = Smarthost::reserve_port();
    let mut relay = RelayProcess::start_to(port);
    for round in 0..3 {
        let mut client = RawClient::ready(relay.port());
        let id = format!("kill-after-250-{round}");
        assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], &tagged_message(&id)));
        relay.kill9();
        relay.restart();
    }
    let upstream = Smarthost::start_on(port);
    let all = wait_until(DELIVERY, Duration::from_millis(50), || {
        upstream.arrived_ids().len() == 3
    });
    if !all {
        relay.fail(&format!(
            "lost acknowledged messages; arrived: {:?}",
            upstream.arrived_ids()
        ));
    }
}

/// One client: sends tagged messages in a loop, reconnecting whenever the relay dies, and records
/// the ids that got `250`. Stops when `stop` is set (bounded by `MAX_PER_CLIENT` as well).
fn client_loop(
    t: usize,
    port: Arc<std::sync::atomic::AtomicU16>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) {
    const MAX_PER_CLIENT: usize = 5000;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) && n < MAX_PER_CLIENT {
        let Ok(mut client) = RawClient::connect_no_greeting(port.load(Ordering::SeqCst)) else {
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        let greeted = client
            .try_read_reply()
            .map(|r| r.code == 220)
            .unwrap_or(false)
            && client.try_send(b"EHLO load.test\r\n").is_ok()
            && client
                .try_read_reply()
                .map(|r| r.code == 250)
                .unwrap_or(false);
        if !greeted {
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        while !stop.load(Ordering::SeqCst) && n < MAX_PER_CLIENT {
            let id = format!("load-{t}-{n}");
            n += 1;
            match client.try_send_mail("load@lan.test", &["sink@remote.test"], &tagged_message(&id))
            {
                Ok(reply) if reply.code == 250 => acked.lock().unwrap().push(id),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

#[test]
fn kill9_restart_loop_under_load_loses_no_acknowledged_message() {
    const CLIENTS: usize = 4;
    const MAX_ROUNDS: usize = 30;
    const CHAOS: Duration = Duration::from_secs(12);

    let upstream = Smarthost::start();
    let mut relay = RelayProcess::start_to(upstream.port());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (port, stop, acked) = (relay.port_handle(), Arc::clone(&stop), Arc::clone(&acked));
            thread::spawn(move || client_loop(t, port, stop, acked))
        })
        .collect();

    // Kill at pseudo-random points 100–400 ms apart (xorshift, seeded from the clock: every run
    // explores other points; the seed is printed for reproduction).
    let mut seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::from(d.subsec_nanos()))
        ^ 0x9E37_79B9_7F4A_7C15;
    println!("kill loop seed {seed:#x}");
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < MAX_ROUNDS && started.elapsed() < CHAOS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Pacing, not a proof: a random moment for the next kill.
        thread::sleep(Duration::from_millis(100 + seed % 300));
        relay.restart();
        rounds += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    // The relay restarted last is the one that stays up and drains the queue.
    let acked = acked.lock().unwrap().clone();
    let done = wait_until(DELIVERY, Duration::from_millis(100), || {
        let arrived = upstream.arrived_ids();
        acked.iter().all(|id| arrived.contains_key(id))
    });
    let Tally {
        lost,
        duplicates,
        unacked,
        arrived,
    } = upstream.tally(&acked);
    println!(
        "kill loop: {rounds} kills, {} acknowledged, {arrived} arrived ({unacked} unacknowledged \
         extras), {} lost, {duplicates} duplicate deliveries",
        acked.len(),
        lost.len(),
    );
    assert!(
        rounds >= 5,
        "too few kill rounds ({rounds}) to mean anything"
    );
    assert!(
        !acked.is_empty(),
        "no message was acknowledged during the kill loop"
    );
    if !done || !lost.is_empty() {
        relay.fail(&format!(
            "lost {} acknowledged messages: {lost:?}",
            lost.len()
        ));
    }
}

#[test]
fn message_cut_off_by_kill9_mid_data_is_never_delivered() {
    let port = Smarthost::reserve_port();
    let mut relay = RelayProcess::start_to(port);
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 250);
    assert_eq!(client.cmd("RCPT TO:<b@remote.test>").code, 250);
    assert_eq!(client.cmd("DATA").code, 354);
    // Enough body to have reached the store in several chunks, but no final dot.
    let mut partial = b"X-Test-Id: partial\r\nSubject: partial\r\n\r\n".to_vec();
    for n in 0..3000 {
        partial.extend_from_slice(format!("{n:06} partial body line\r\n").as_bytes());
    }
    client.send(&partial);
    // Pacing, not a proof: time for some of the body to reach the store before the kill (the
    // test holds whether or not it did).
    std::thread::sleep(Duration::from_millis(300));
    relay.kill9();
    drop(client);
    // Restart against a live smarthost on the port the relay knows; a marker message sent
    // after the restart shows the queue has been worked through.
    let upstream = Smarthost::start_on(port);
    relay.restart();
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], &tagged_message("marker")));
    let arrived = wait_until(DELIVERY, Duration::from_millis(50), || {
        upstream.arrived_ids().contains_key("marker")
    });
    if !arrived {
        relay.fail("marker not delivered after restart");
    }
    // Recovered mail is queued at the start, before the marker; once the queue is empty it
    // has all gone out.
    let _ = relay.wait_queue_empty();
    let ids = upstream.arrived_ids();
    if ids.contains_key("partial") {
        relay.fail("a message without its final dot was delivered");
    }
}
