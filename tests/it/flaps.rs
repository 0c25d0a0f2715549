//! Link flaps between the relay and its smarthost, through `FlakyLink` (a byte proxy the test
//! switches): down/up many times, cuts mid-DATA and mid-TLS-handshake, a smarthost that takes
//! the body and drops the connection before (or instead of) its reply to the final dot, and one
//! that never answers. Nothing acknowledged is lost, the queue ends empty (nothing stuck), and a
//! stalled smarthost costs the relay little CPU (no busy loop).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{
    assert_queued, cpu_time, tagged_message, wait_until, FlakyLink, LinkMode, RawClient,
    RelayConfig, RelayProcess, Smarthost, TestPki,
};

const DELIVERY: Duration = Duration::from_secs(60);

/// Relay settings for flap tests: retry every second, short smarthost timeouts.
fn flap_config(link: &FlakyLink) -> RelayConfig {
    RelayConfig::with_smarthost(link.port())
        .queue("retry_min = \"1s\"\nretry_max = \"1s\"")
        .timeouts("smarthost = \"2s\"\nsmarthost_data_end = \"2s\"")
}

/// Switches `link` to `mode` and waits (bounded) until the relay has opened a connection under
/// it. Returns whether it did.
fn flap_to(link: &FlakyLink, mode: LinkMode, deadline: Duration) -> bool {
    let before = link.accepted();
    link.set(mode);
    wait_until(deadline, Duration::from_millis(5), || {
        link.accepted() > before
    })
}

/// Fails unless every id in `acked` arrived; returns the number of duplicate deliveries.
fn check_all_arrived(relay: &RelayProcess, upstream: &Smarthost, acked: &[String]) -> usize {
    let arrived = wait_until(DELIVERY, Duration::from_millis(50), || {
        let ids = upstream.arrived_ids();
        acked.iter().all(|id| ids.contains_key(id))
    });
    let tally = upstream.tally(acked);
    if !arrived {
        relay.fail(&format!(
            "acknowledged messages never arrived: {:?}",
            tally.lost
        ));
    }
    tally.duplicates
}

#[test]
fn link_flaps_mid_data_and_at_the_final_dot_lose_nothing_and_leave_nothing_stuck() {
    let upstream = Smarthost::start();
    let link = FlakyLink::start(upstream.port(), LinkMode::Down);
    let relay = RelayProcess::start_with(flap_config(&link));

    // A client keeps sending while the link flaps.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let sender = {
        let (port, stop, acked) = (relay.port(), Arc::clone(&stop), Arc::clone(&acked));
        thread::spawn(move || {
            let mut client = RawClient::ready(port);
            for n in 0..400 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let id = format!("flap-{n}");
                assert_queued(&client.send_mail(
                    "a@lan.test",
                    &["b@remote.test"],
                    &tagged_message(&id),
                ));
                acked.lock().unwrap().push(id);
                // Pacing, not a proof: mail keeps coming while the link flaps.
                thread::sleep(Duration::from_millis(150));
            }
        })
    };

    let faults = [
        LinkMode::CutAfter(b"DATA\r\n", 0),
        LinkMode::CutAfter(b"DATA\r\n", 20),
        LinkMode::DropBeforeDot,
        LinkMode::CutAfter(b"EHLO", 3),
        LinkMode::DropDotReply,
        LinkMode::CutAfter(b"MAIL FROM:", 0),
    ];
    let (mut flaps, mut hit) = (0, 0);
    for round in 0..3 {
        for (n, fault) in faults.iter().enumerate() {
            // Down (connection refused) for a while, then the fault for one connection, then
            // up for a moment. The sleeps in this loop pace the flaps; none proves an absence
            // (the checks after the loop wait for arrivals and an empty queue).
            link.set(LinkMode::Down);
            thread::sleep(Duration::from_millis(200 + 100 * ((round + n) as u64 % 4)));
            if flap_to(&link, *fault, Duration::from_secs(5)) {
                hit += 1;
            }
            // The proxy acts on the connection as it goes; give it time to reach the fault.
            thread::sleep(Duration::from_millis(300));
            link.set(LinkMode::Pass);
            thread::sleep(Duration::from_millis(100));
            flaps += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    link.set(LinkMode::Pass);

    let acked = acked.lock().unwrap().clone();
    let duplicates = check_all_arrived(&relay, &upstream, &acked);
    if !relay.wait_queue_empty() {
        relay.fail("messages stuck in the queue after the link came back");
    }
    println!(
        "link flaps: {flaps} down/fault/up cycles, {hit} faulty connections, {} acknowledged, \
         0 lost, {duplicates} duplicates, queue empty",
        acked.len()
    );
    assert!(
        hit >= faults.len(),
        "only {hit} connections met a fault: the flaps were not exercised"
    );
}

#[test]
fn tls_handshake_cut_midway_is_retried_until_delivered() {
    let pki = TestPki::loopback();
    let upstream = Smarthost::start_starttls(&pki.cert, &pki.key);
    // Cut after STARTTLS at 0 bytes (before the ClientHello), inside it, and after it (the
    // client's Finished never reaches the smarthost: rustls's ClientHello is ~250 octets).
    let cuts = [0, 1, 40, 120, 200, 260];
    let link = FlakyLink::start(upstream.port(), LinkMode::Down);
    let relay =
        RelayProcess::start_with(flap_config(&link).smarthost_tls("starttls", pki.ca.clone()));
    let mut client = RawClient::ready(relay.port());
    let mut acked = Vec::new();
    for n in 0..3 {
        let id = format!("tls-flap-{n}");
        assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], &tagged_message(&id)));
        acked.push(id);
    }
    let mut hit = 0;
    // As in the flap loop above, the sleeps here pace the cuts.
    for (n, extra) in cuts.iter().enumerate() {
        link.set(LinkMode::Down);
        thread::sleep(Duration::from_millis(100 + 50 * (n as u64 % 3)));
        if flap_to(&link, LinkMode::CutAfter(b"STARTTLS\r\n", *extra), DELIVERY) {
            hit += 1;
        }
        thread::sleep(Duration::from_millis(300));
    }
    if upstream.count() > 0 {
        relay.fail("delivered although every TLS handshake was cut");
    }
    link.set(LinkMode::Pass);
    let duplicates = check_all_arrived(&relay, &upstream, &acked);
    if !relay.wait_queue_empty() {
        relay.fail("messages stuck in the queue after the handshake cuts");
    }
    assert_eq!(hit, cuts.len(), "not every cut met a connection");
    assert_eq!(duplicates, 0, "a message arrived twice over TLS");
    let log = relay.log();
    assert!(
        log.matches("TLS handshake with").count() >= 3,
        "handshake failures were not logged as such"
    );
}

/// CPU used by `pid` over `window` as a fraction of one core.
fn cpu_share(pid: u32, window: Duration) -> f64 {
    let (cpu0, t0) = (cpu_time(pid), Instant::now());
    thread::sleep(window);
    let (cpu1, wall) = (cpu_time(pid), t0.elapsed());
    (cpu1 - cpu0).as_secs_f64() / wall.as_secs_f64()
}

#[test]
fn silent_smarthost_times_out_without_a_busy_loop_and_nothing_is_stuck() {
    const WINDOW: Duration = Duration::from_secs(5);
    // A busy loop takes a whole core; an idle relay waiting on timers takes next to nothing.
    const MAX_SHARE: f64 = 0.2;

    let upstream = Smarthost::start();
    let link = FlakyLink::start(upstream.port(), LinkMode::BlackHole);
    let relay = RelayProcess::start_with(flap_config(&link));
    let pid = relay.pid().unwrap();

    // The smarthost accepts connections and never says a word: the relay still serves clients
    // at once, and keeps retrying after each timeout.
    let mut client = RawClient::ready(relay.port());
    let mut acked = Vec::new();
    for n in 0..3 {
        let id = format!("silent-{n}");
        assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], &tagged_message(&id)));
        acked.push(id);
    }
    let before = link.accepted();
    let silent_share = cpu_share(pid, WINDOW);
    let silent_attempts = link.accepted() - before;

    // A smarthost that takes the message and never answers the final dot.
    link.set(LinkMode::StallAtDot);
    let before = link.accepted();
    let stall_share = cpu_share(pid, WINDOW);
    let stall_attempts = link.accepted() - before;

    println!(
        "silent smarthost: relay CPU {:.1}% of one core over {WINDOW:?} ({silent_attempts} \
         connections); stalled final dot: {:.1}% ({stall_attempts} connections)",
        silent_share * 100.0,
        stall_share * 100.0
    );
    if silent_share > MAX_SHARE || stall_share > MAX_SHARE {
        relay.fail(&format!(
            "the relay burns CPU while the smarthost is silent: {silent_share:.2} / \
             {stall_share:.2} of a core"
        ));
    }
    // Each timeout ends the attempt and a later one follows (2 s timeout, 1 s retry).
    if silent_attempts < 1 || stall_attempts < 1 {
        relay.fail(&format!(
            "attempts stuck on a silent smarthost: {silent_attempts} and {stall_attempts} new \
             connections in {WINDOW:?}"
        ));
    }
    link.set(LinkMode::Pass);
    check_all_arrived(&relay, &upstream, &acked);
    if !relay.wait_queue_empty() {
        relay.fail("messages stuck in the queue after the smarthost woke up");
    }
}
