//! End-to-end tests of the forwarder: `open_session`/`transfer` and `run` against the test
//! kit's smarthost (an independent server on 127.0.0.1:0) and, for `run`, the real store in a
//! temp dir.

use std::rc::Rc;

use async_io::Timer;
use mailin_embedded::response::NO_MAILBOX;

use super::link::{open_session, transfer};
use super::outcome::{outcomes_of, ForwardError, Outcome};
use super::*;
use crate::clock::QueueClock;
use crate::kit;
use crate::priority::Priority;
use crate::smtp::client::{ClientParams, ClientStep, Envelope, Stage};
use crate::store::{MessageInfo, QueueId, QueuedMessage, RcptState, Store, StoreError};
use crate::wait::Wake;

/// A kit smarthost refusing the recipients in `reject` with 550, and the null sender too: a
/// DSN the forwarder tries ends failed, which also shows that a failed bounce is never bounced
/// again.
fn start_upstream(reject: &'static [&'static str]) -> kit::Smarthost {
    kit::Smarthost::start_with_policy(move |stage| match stage {
        kit::Stage::Rcpt { to } if reject.contains(to) => Some(NO_MAILBOX),
        kit::Stage::Mail { from: "" } => Some(kit::reply(550, "5.7.1 no DSNs here")),
        _ => None,
    })
}

/// `127.0.0.1:port`, the smarthost address the forwarder is given.
fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn client_params(smarthost: &str) -> ClientParams {
    ClientParams {
        helo_name: "outpost.test".into(),
        tls: TlsPolicy::None,
        smarthost: smarthost.to_owned(),
        credentials: None,
    }
}

const TIMEOUT: Duration = Duration::from_secs(20);

/// Body with lines that need dot-stuffing, a lone dot, 8-bit octets and no final CRLF
/// trouble.
const BODY: &[u8] = b"Subject: test\r\nFrom: cron@lan\r\n\r\n.leading dot\r\n..two dots\r\n\
    .\r\nd\xc3\xa9j\xc3\xa0 vu 8-bit\r\nlast line\r\n";

fn chunks(body: &[u8], size: usize) -> impl Iterator<Item = Result<Vec<u8>, StoreError>> {
    body.chunks(size)
        .map(|c| Ok(c.to_vec()))
        .collect::<Vec<_>>()
        .into_iter()
}

#[test]
fn transfer_is_byte_exact_through_an_independent_upstream() {
    let upstream = start_upstream(&[]);
    let addr = loopback(upstream.port());
    smol::block_on(async {
        let (mut conn, mut session) = open_session(&addr, client_params(&addr), None, TIMEOUT)
            .await
            .unwrap();
        for (i, chunk_size) in [7, BODY.len()].into_iter().enumerate() {
            let envelope = Envelope {
                sender: format!("cron{i}@lan"),
                recipients: vec!["a@example.org".into(), "b@example.org".into()],
                size: u64::try_from(BODY.len()).unwrap(),
                eight_bit: true,
                smtputf8: false,
            };
            let body = || Ok(chunks(BODY, chunk_size));
            let report = transfer(&mut conn, &mut session, &envelope, body, TIMEOUT)
                .await
                .unwrap()
                .unwrap();
            let outcomes = outcomes_of(&report);
            assert!(matches!(
                outcomes[..],
                [Outcome::Delivered(_), Outcome::Delivered(_)]
            ));
        }
        assert_eq!(session.quit(), ClientStep::Send(b"QUIT\r\n".to_vec()));
    });
    let received = upstream.delivered();
    assert_eq!(received.len(), 2, "two messages on one connection");
    for (i, message) in received.iter().enumerate() {
        assert_eq!(message.from, format!("cron{i}@lan"));
        assert_eq!(message.to, ["a@example.org", "b@example.org"]);
        assert!(message.is8bit, "BODY=8BITMIME sent");
        assert_eq!(
            message.data,
            BODY,
            "{:?}",
            String::from_utf8_lossy(&message.data)
        );
    }
}

#[test]
fn one_rejected_recipient_does_not_stop_the_others() {
    let upstream = start_upstream(&["nobody@example.org"]);
    let addr = loopback(upstream.port());
    let report = smol::block_on(async {
        let (mut conn, mut session) = open_session(&addr, client_params(&addr), None, TIMEOUT)
            .await
            .unwrap();
        let envelope = Envelope {
            sender: "cron@lan".into(),
            recipients: vec!["nobody@example.org".into(), "b@example.org".into()],
            size: 10,
            eight_bit: false,
            smtputf8: false,
        };
        let body = || Ok(chunks(b"Subject: x\r\n\r\nhi\r\n", 64));
        transfer(&mut conn, &mut session, &envelope, body, TIMEOUT)
            .await
            .unwrap()
            .unwrap()
    });
    let outcomes = outcomes_of(&report);
    assert!(
        matches!(&outcomes[0], Outcome::Bounce(r) if r.code == 550),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1], Outcome::Delivered(_)),
        "{outcomes:?}"
    );
    let received = upstream.delivered();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].to, ["b@example.org"]);
}

#[test]
fn unreachable_smarthost_is_a_transient_connect_failure() {
    // Nothing listens on this port.
    let addr = loopback(kit::Smarthost::reserve_port());
    let result = smol::block_on(open_session(&addr, client_params(&addr), None, TIMEOUT));
    let Err(error) = result else {
        panic!("connected to a closed port");
    };
    assert!(matches!(error, ForwardError::Connect(_)), "{error}");
    assert!(error.is_transient());
}

#[test]
fn silent_smarthost_times_out_at_the_greeting() {
    // Accepts and never sends a byte (the link's target is never connected to).
    let link = kit::FlakyLink::start(kit::Smarthost::reserve_port(), kit::LinkMode::BlackHole);
    let addr = loopback(link.port());
    let result = smol::block_on(open_session(
        &addr,
        client_params(&addr),
        None,
        Duration::from_millis(200),
    ));
    let Err(error) = result else {
        panic!("a silent server produced a session");
    };
    assert!(
        matches!(error, ForwardError::Timeout(Stage::Greeting)),
        "{error}"
    );
}

// ---- forward::run end to end, with the real store ----

fn forward_params(port: u16, retry_min: Duration) -> ForwardParams {
    ForwardParams {
        smarthosts: vec![Smarthost {
            address: loopback(port),
            tls: TlsPolicy::None,
            tls_config: None,
            credentials: None,
            oauth2: None,
            from: None,
            connections: 1,
        }],
        hostname: "outpost.test".into(),
        policy: RetryPolicy {
            retry_min,
            retry_max: retry_min * 4,
            max_age: Duration::from_secs(86_400),
        },
        window: 16,
        command_timeout: TIMEOUT,
        data_end_timeout: TIMEOUT,
        coalesce: None,
        max_digest_bytes: u64::MAX,
    }
}

async fn enqueue(store: &Store, clock: &QueueClock, sender: &str, to: &[&str]) -> QueueId {
    let mut spool = store.spool().unwrap();
    for chunk in BODY.chunks(10) {
        spool.append(chunk).unwrap();
    }
    let info = MessageInfo {
        sender: sender.into(),
        recipients: to.iter().map(|r| (*r).to_owned()).collect(),
        eight_bit: true,
        smtputf8: false,
        received_unix: 1_795_466_324,
        priority: Priority::Normal,
        coalesce: None,
    };
    spool.commit(info, clock.now()).await.unwrap().unwrap()
}

/// Polls `done` every 20 ms, at most 500 times (10 s), on the executor's timer.
async fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        Timer::after(Duration::from_millis(20)).await;
    }
    done()
}

/// The queued DSN (null sender), once the forwarder has tried it: the smarthost refuses
/// `MAIL FROM:<>` (`start_upstream`; nothing listens in the expiry test), so the DSN ends up
/// failed.
fn tried_dsn(store: &Store) -> Option<QueuedMessage> {
    let list = store.list().ok()?;
    list.into_iter().find(|m| {
        m.info.sender.is_empty() && m.recipients.iter().all(|r| r.state == RcptState::Failed)
    })
}

#[test]
fn run_forwards_byte_exact_and_bounces_a_rejected_recipient() {
    let upstream = start_upstream(&["nobody@example.org"]);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_for_tests(dir.path());
    let clock = QueueClock::new(store.clock_base());
    let ex = smol::LocalExecutor::new();
    let (id, dsn) = smol::block_on(ex.run(async {
        let to = ["a@example.org", "nobody@example.org"];
        let id = enqueue(&store, &clock, "cron@lan", &to).await;
        let (wake, stop) = (Wake::new(), Wake::new());
        let params = forward_params(upstream.port(), Duration::from_millis(50));
        let task = ex.spawn(run(
            store.clone(),
            clock,
            params,
            Rc::clone(&wake),
            Rc::clone(&stop),
        ));
        wake.notify();
        wait_until(|| tried_dsn(&store).is_some()).await;
        stop.notify();
        task.await;
        (id, tried_dsn(&store))
    }));
    let received = upstream.delivered();
    assert_eq!(received.len(), 1, "upstream got {received:?}");
    assert_eq!(received[0].from, "cron@lan");
    assert_eq!(received[0].to, ["a@example.org"]);
    assert_eq!(received[0].data, BODY);
    // The original stays listed as failed for the rejected recipient, with the reply.
    let message = store.get(id).unwrap();
    assert_eq!(message.recipients[0].state, RcptState::Delivered);
    let failed = &message.recipients[1];
    assert_eq!(failed.state, RcptState::Failed);
    assert!(
        failed
            .last_reply
            .as_deref()
            .is_some_and(|r| r.starts_with("550")),
        "{failed:?}"
    );
    // The DSN: from the null sender to the original sender, naming the failed recipient.
    let dsn = dsn.expect("a DSN was queued and tried");
    assert_eq!(dsn.info.recipients, ["cron@lan"]);
    let body: Vec<u8> = store
        .body_chunks(dsn.id)
        .unwrap()
        .flat_map(Result::unwrap)
        .collect();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("\r\nTo: <cron@lan>\r\n"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; nobody@example.org\r\n"),
        "{text}"
    );
    assert!(text.contains("Diagnostic-Code: smtp; 550 "), "{text}");
    assert!(
        text.contains("Subject: test\r\n"),
        "original headers returned: {text}"
    );
    // No bounce of the bounce: the original and the DSN are all there is.
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn smarthost_down_burns_no_attempts_and_link_up_drains_the_queue() {
    // The smarthost's port accepts connections and closes them at once (a site failure)
    // until the link passes them on to the smarthost.
    let upstream = kit::Smarthost::start();
    let link = kit::FlakyLink::start(upstream.port(), kit::LinkMode::Hangup);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_for_tests(dir.path());
    let clock = QueueClock::new(store.clock_base());
    let ex = smol::LocalExecutor::new();
    let delivered = smol::block_on(ex.run(async {
        let first = enqueue(&store, &clock, "cron@lan", &["a@example.org"]).await;
        let second = enqueue(&store, &clock, "ups@lan", &["b@example.org"]).await;
        let (wake, stop) = (Wake::new(), Wake::new());
        let params = forward_params(link.port(), Duration::from_millis(30));
        let task = ex.spawn(run(
            store.clone(),
            clock,
            params,
            Rc::clone(&wake),
            Rc::clone(&stop),
        ));
        wake.notify();
        let three_failures = wait_until(|| link.accepted() >= 3).await;
        assert!(three_failures, "the forwarder did not retry the link");
        for id in [first, second] {
            assert_eq!(
                store.get(id).unwrap().attempts,
                0,
                "site failures burn no attempts"
            );
        }
        link.set(kit::LinkMode::Pass);
        let delivered = wait_until(|| upstream.count() >= 2).await;
        // The smarthost counts a message at its final dot, before the forwarder has read the
        // 250 and recorded it: stop only once the queue says so (or the wait runs out).
        wait_until(|| store.list().is_ok_and(|queued| queued.is_empty())).await;
        stop.notify();
        task.await;
        delivered
    }));
    let received = upstream.delivered();
    assert!(delivered, "upstream got {received:?}");
    assert_eq!(
        received
            .iter()
            .map(|m| m.to[0].as_str())
            .collect::<Vec<_>>(),
        ["a@example.org", "b@example.org"]
    );
    assert!(received.iter().all(|m| m.data == BODY));
    assert!(
        store.list().unwrap().is_empty(),
        "delivered mail leaves the queue"
    );
}

#[test]
fn expired_mail_bounces_without_a_connection_and_bounces_are_never_bounced() {
    // Nothing listens here: expiry must not depend on the link.
    let port = kit::Smarthost::reserve_port();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_for_tests(dir.path());
    let clock = QueueClock::new(store.clock_base());
    let ex = smol::LocalExecutor::new();
    let id = smol::block_on(ex.run(async {
        let id = enqueue(&store, &clock, "cron@lan", &["a@example.org"]).await;
        let (wake, stop) = (Wake::new(), Wake::new());
        let mut params = forward_params(port, Duration::from_millis(20));
        params.policy.max_age = Duration::ZERO;
        let task = ex.spawn(run(
            store.clone(),
            clock,
            params,
            Rc::clone(&wake),
            Rc::clone(&stop),
        ));
        wake.notify();
        // The DSN expires too (max_age 0) and must end failed without a DSN of its own.
        wait_until(|| tried_dsn(&store).is_some()).await;
        stop.notify();
        task.await;
        id
    }));
    let original = store.get(id).unwrap();
    assert_eq!(original.recipients[0].state, RcptState::Failed);
    let reason = original.recipients[0]
        .last_reply
        .clone()
        .unwrap_or_default();
    assert!(reason.starts_with("delivery time expired"), "{reason}");
    let dsn = tried_dsn(&store).expect("a DSN was queued");
    let body: Vec<u8> = store
        .body_chunks(dsn.id)
        .unwrap()
        .flat_map(Result::unwrap)
        .collect();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("Status: 4.4.7\r\n"), "{text}");
    assert_eq!(store.list().unwrap().len(), 2, "no bounce of the bounce");
}
