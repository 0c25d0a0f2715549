//! Tests of the door: what each source gets (classification, the counter, the forwarder's
//! wake-up) on a real store in a temp dir.

use std::time::{Duration, Instant};

use futures_lite::future::block_on;

use super::*;
use crate::wait::before;

fn intake(dir: &std::path::Path, policy: IntakePolicy) -> (Intake, Rc<Wake>, Store) {
    let store = Store::open_for_tests(dir);
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

#[test]
fn every_source_gets_local_names_mapped_dsns_included() {
    let dir = tempfile::tempdir().unwrap();
    let aliases = crate::aliases::Aliases::parse("root: ops@corp.example\n").unwrap();
    let map = AddressMap::new(
        "site.example",
        &["gw"],
        aliases,
        Some("admin@corp.example".into()),
    );
    let policy = IntakePolicy {
        addresses: Some(map),
        ..IntakePolicy::default()
    };
    let (intake, _, store) = intake(dir.path(), policy);
    let stored = |envelope: Envelope, source: Source<'_>| {
        let id = block_on(intake.submit(b"\r\nx\r\n", envelope, source)).unwrap();
        store.get(id).unwrap().info
    };
    let mut local = envelope();
    local.sender = "cron@gw".into();
    local.recipients = vec![
        "root".into(),
        "pi@localhost".into(),
        "x@remote.example".into(),
    ];
    let info = stored(local, Source::Maildrop);
    assert_eq!(info.sender, "cron@site.example");
    assert_eq!(
        info.recipients,
        ["ops@corp.example", "admin@corp.example", "x@remote.example"]
    );
    let mut dsn = envelope();
    dsn.sender = String::new();
    dsn.recipients = vec!["www-data@site.example".into()];
    let info = stored(dsn, Source::Dsn { of: QueueId(1) });
    assert_eq!(info.sender, "");
    assert_eq!(info.recipients, ["admin@corp.example"]);
}
