//! Tests of the door: what each source gets (classification, the counter, the forwarder's
//! wake-up) on a real store in a temp dir.

use std::time::{Duration, Instant};

use futures_lite::future::block_on;

use super::*;
use crate::store::StoreOptions;
use crate::wait::before;

fn intake(dir: &std::path::Path, policy: IntakePolicy) -> (Intake, Rc<Wake>, Store) {
    let options = StoreOptions {
        cache_bytes: 1 << 20,
        flush_every_ms: None,
        max_bytes: 1 << 30,
    };
    let store = Store::open(dir, options).unwrap();
    store.recover().unwrap();
    let clock = QueueClock::new(store.clock_base());
    let wake = Wake::new();
    (
        Intake::new(store.clone(), clock, wake.clone(), policy),
        wake,
        store,
    )
}

fn urgent_for_alerts() -> IntakePolicy {
    IntakePolicy {
        priority: vec![PriorityRule {
            sender: None,
            recipient: None,
            header: Some(("subject".into(), "ALERT*".into())),
            priority: Priority::Urgent,
        }],
        ..IntakePolicy::default()
    }
}

fn envelope() -> Envelope {
    Envelope {
        sender: "cam@site.example".into(),
        recipients: vec!["ops@example.com".into()],
        eight_bit: false,
        smtputf8: false,
        received_unix: 0,
    }
}

/// Submits `body` from `source`; the stored message's priority.
fn submit(intake: &Intake, store: &Store, body: &[u8], source: Source<'_>) -> Priority {
    let mut submission = intake.open().unwrap();
    submission.add(body).unwrap();
    let id = block_on(intake.commit(submission, envelope(), source)).unwrap();
    store.get(id).unwrap().info.priority
}

#[test]
fn smtp_and_maildrop_mail_is_classified_counted_and_wakes_the_forwarder() {
    let dir = tempfile::tempdir().unwrap();
    let (intake, wake, store) = intake(dir.path(), urgent_for_alerts());
    let body = b"Subject: ALERT disk\r\n\r\nbody\r\n";
    let tag = "session=1 peer=127.0.0.1";
    let smtp = Source::Smtp {
        tag: &tag,
        user: None,
        size: 30,
    };
    assert_eq!(submit(&intake, &store, body, smtp), Priority::Urgent);
    assert_eq!(
        submit(&intake, &store, b"\r\nx\r\n", Source::Maildrop),
        Priority::Normal
    );
    assert_eq!(intake.accepted(), 2);
    let soon = Instant::now() + Duration::from_secs(5);
    assert!(block_on(before(soon, wake.wait())).is_some());
}

#[test]
fn a_dsn_is_neither_classified_nor_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (intake, _wake, store) = intake(dir.path(), urgent_for_alerts());
    let body = b"Subject: ALERT returned mail\r\n\r\nbody\r\n";
    let of = QueueId(7);
    assert_eq!(
        submit(&intake, &store, body, Source::Dsn { of }),
        Priority::Normal
    );
    assert_eq!(intake.accepted(), 0);
}
