//! Retries: transient failures (4xx at any stage, the smarthost down) delay a message but never
//! lose or duplicate it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::{
    assert_queued, message, reply, settle, RawClient, RelayProcess, Smarthost, Stage,
};

const DELIVERY: Duration = Duration::from_secs(30);

/// Sends one message, waits for it, then checks for duplicates once the relay has settled (a
/// wrongly kept message would still be in the queue, or go out again before the marker).
fn delivered_exactly_once(upstream: &Smarthost, relay: &RelayProcess) {
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], &message("retry", "x\r\n")));
    upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("never delivered after 4xx"));
    settle(relay, upstream);
    let got = upstream.unmarked();
    if got.len() != 1 {
        relay.fail(&format!("delivered {} times, want exactly once", got.len()));
    }
}

/// A policy that answers `code text` at the chosen stage for the first `failures` times.
fn fail_first(
    failures: usize,
    at: fn(&Stage<'_>) -> bool,
    code: u16,
    text: &'static str,
) -> (
    Arc<AtomicUsize>,
    impl Fn(&Stage<'_>) -> Option<mailin_embedded::Response> + Send + Sync + 'static,
) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let policy = move |stage: &Stage<'_>| {
        if at(stage) && counter.fetch_add(1, Ordering::SeqCst) < failures {
            Some(reply(code, text))
        } else {
            None
        }
    };
    (seen, policy)
}

#[test]
fn transient_4xx_at_data_then_success_delivers_exactly_once() {
    let (seen, policy) = fail_first(
        2,
        |s| matches!(s, Stage::Data { .. }),
        451,
        "4.3.0 try again later",
    );
    let upstream = Smarthost::start_with_policy(policy);
    let relay = RelayProcess::start_to(upstream.port());
    delivered_exactly_once(&upstream, &relay);
    assert!(
        seen.load(Ordering::SeqCst) >= 3,
        "the relay did not retry after 451"
    );
}

#[test]
fn transient_4xx_on_rcpt_then_success_delivers_exactly_once() {
    let (seen, policy) = fail_first(
        2,
        |s| matches!(s, Stage::Rcpt { .. }),
        450,
        "4.2.1 mailbox busy",
    );
    let upstream = Smarthost::start_with_policy(policy);
    let relay = RelayProcess::start_to(upstream.port());
    delivered_exactly_once(&upstream, &relay);
    assert!(seen.load(Ordering::SeqCst) >= 3);
}

#[test]
fn transient_4xx_on_mail_then_success_delivers_exactly_once() {
    let (seen, policy) = fail_first(
        1,
        |s| matches!(s, Stage::Mail { .. }),
        451,
        "4.7.1 greylisted",
    );
    let upstream = Smarthost::start_with_policy(policy);
    let relay = RelayProcess::start_to(upstream.port());
    delivered_exactly_once(&upstream, &relay);
    assert!(seen.load(Ordering::SeqCst) >= 2);
}

#[test]
fn smarthost_421_at_ehlo_then_success_delivers_exactly_once() {
    let (seen, policy) = fail_first(2, |s| matches!(s, Stage::Helo), 421, "4.3.2 shutting down");
    let upstream = Smarthost::start_with_policy(policy);
    let relay = RelayProcess::start_to(upstream.port());
    delivered_exactly_once(&upstream, &relay);
    assert!(seen.load(Ordering::SeqCst) >= 3);
}

#[test]
fn smarthost_421_to_final_dot_then_success_delivers_exactly_once() {
    // 421 closes the connection (mailin cannot send 4xx to the dot and carry on).
    let (seen, policy) = fail_first(
        1,
        |s| matches!(s, Stage::DataEnd(_)),
        421,
        "4.3.0 disk trouble",
    );
    let upstream = Smarthost::start_with_policy(policy);
    let relay = RelayProcess::start_to(upstream.port());
    delivered_exactly_once(&upstream, &relay);
    assert!(seen.load(Ordering::SeqCst) >= 2);
}

#[test]
fn smarthost_down_then_up_message_is_queued_then_delivered() {
    let port = Smarthost::reserve_port();
    let relay = RelayProcess::start_to(port);
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail(
        "a@lan.test",
        &["b@remote.test"],
        &message("down-up", "x\r\n"),
    ));
    // Let the relay fail against the closed port at least once.
    relay.wait_log("unavailable");
    let upstream = Smarthost::start_on(port);
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("not delivered after up"));
    assert!(got[0].data_str().contains("Subject: down-up"));
    settle(&relay, &upstream);
    assert_eq!(
        upstream.unmarked().len(),
        1,
        "duplicate delivery after the outage"
    );
}
