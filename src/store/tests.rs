//! Store tests: round trips through sled and reopen, recovery, the group-commit ordering, and a
//! model test against a `BTreeMap`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::future::block_on;
use proptest::prelude::*;
use smol::LocalExecutor;
use tempfile::TempDir;

use super::open::{open_db, sled_segment_size, BODIES_DIR};
use super::record::MessageMeta;
use super::update::MAX_REPLY;
use super::*;

/// The wall-clock time the tests record attempts at.
const AT: u64 = 1_700_000_000;

fn options(max_bytes: u64) -> StoreOptions {
    StoreOptions {
        cache_bytes: 1 << 20,
        flush_every_ms: None,
        max_bytes,
    }
}

/// The store's sled database opened directly (to damage it), waiting for the dropped store's
/// file lock as `Store::open` does.
fn raw_db(dir: &TempDir) -> sled::Db {
    open_db(
        &sled::Config::new()
            .path(dir.path())
            .segment_size(SLED_SEGMENT_SIZE),
    )
    .unwrap()
}

fn open(dir: &TempDir) -> (Store, RecoveryReport) {
    // A dropped store's last sync may still hold sled's file lock for a moment: `Store::open`
    // waits for it (bounded).
    let store = Store::open(dir.path(), options(1 << 30))
        .unwrap_or_else(|e| panic!("cannot reopen the store: {e}"));
    let report = store.recover().unwrap();
    (store, report)
}

fn info(recipients: &[&str]) -> MessageInfo {
    MessageInfo {
        sender: "cron@lan.example".into(),
        recipients: recipients.iter().map(|r| (*r).to_string()).collect(),
        eight_bit: true,
        smtputf8: false,
        received_unix: 1_700_000_000,
        priority: Priority::Normal,
        coalesce: None,
    }
}

fn commit(store: &Store, body: &[&[u8]], recipients: &[&str], now: QueueTime) -> QueueId {
    let mut spool = store.spool().unwrap();
    for chunk in body {
        spool.append(chunk).unwrap();
    }
    block_on(spool.commit(info(recipients), now))
        .unwrap()
        .unwrap()
}

fn body_of(store: &Store, id: QueueId) -> Vec<u8> {
    store
        .body_chunks(id)
        .unwrap()
        .map(Result::unwrap)
        .collect::<Vec<_>>()
        .concat()
}

fn keys_with_prefix(store: &Store, prefix: &[u8]) -> usize {
    store.inner.db.scan_prefix(prefix).count()
}

fn keys_in(db: &sled::Db, prefix: &[u8]) -> Vec<sled::IVec> {
    db.scan_prefix(prefix).keys().map(Result::unwrap).collect()
}

fn ids(messages: &[QueuedMessage]) -> Vec<QueueId> {
    messages.iter().map(|m| m.id).collect()
}

#[test]
fn commit_then_reopen_round_trips() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let big = vec![b'x'; MAX_EXTENT + 10];
    let a = commit(
        &store,
        &[b"Subject: a\r\n\r\n", b"hello\r\n"],
        &["a@x", "b@y"],
        7,
    );
    let b = commit(&store, &[&big], &["c@z"], 9);
    let before = store.get(a).unwrap();
    assert_eq!(
        store.usage(),
        Usage {
            messages: 2,
            bytes: 21 + big.len() as u64
        }
    );
    drop(store);

    let (store, report) = open(&dir);
    assert_eq!(
        report,
        RecoveryReport {
            messages: 2,
            swept_spools: 0,
            quarantined: 0
        }
    );
    let after = store.get(a).unwrap();
    assert_eq!(after, before);
    assert_eq!(after.info, info(&["a@x", "b@y"]));
    assert_eq!(after.enqueued_at, 7);
    assert_eq!(after.size, 21);
    assert!(after
        .recipients
        .iter()
        .all(|r| r.state == RcptState::Pending));
    assert_eq!(body_of(&store, a), b"Subject: a\r\n\r\nhello\r\n");
    assert_eq!(body_of(&store, b), big);
    assert_eq!(
        store.body_chunks(b).unwrap().count(),
        2,
        "over-long append is split"
    );
    assert_eq!(
        store.usage(),
        Usage {
            messages: 2,
            bytes: 21 + big.len() as u64
        }
    );
    assert!(store.clock_base() >= 9);
    assert_eq!(ids(&store.list().unwrap()), vec![a, b]);
}

#[test]
fn an_uncommitted_spool_writes_nothing_to_sled_and_is_gone_after_reopen() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let kept = commit(&store, &[b"kept"], &["a@x"], 1);
    let mut spool = store.spool().unwrap();
    spool.append(b"half a message").unwrap();
    spool.append(b"more").unwrap();
    let lost = spool.id();
    assert_eq!(keys_with_prefix(&store, &key::part_prefix(lost)), 0);
    assert_eq!(keys_with_prefix(&store, key::SPOOL), 0);
    spool.finished = true; // as if the process died here: `Drop` does not clean up
    drop(spool);
    drop(store);

    let (store, report) = open(&dir);
    assert_eq!(report.swept_spools, 0);
    assert_eq!(report.messages, 1);
    assert_eq!(body_of(&store, kept), b"kept");
    assert!(matches!(store.get(lost), Err(StoreError::NotFound(_))));
}

#[test]
fn an_older_builds_spool_marker_and_its_parts_are_swept_after_reopen() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let kept = commit(&store, &[b"kept"], &["a@x"], 1);
    // What a build that wrote `spool/` markers left when it died inside DATA.
    let lost = store.fresh_id().unwrap();
    let db = &store.inner.db;
    db.insert(key::spool(lost), &[]).unwrap();
    for n in 0..2 {
        db.insert(key::part(lost, n), b"any".as_slice()).unwrap();
    }
    block_on(store.flush()).unwrap();
    drop(store);

    let (store, report) = open(&dir);
    assert_eq!(report.swept_spools, 1);
    assert_eq!(report.messages, 1);
    assert_eq!(keys_with_prefix(&store, &key::part_prefix(lost)), 0);
    assert_eq!(keys_with_prefix(&store, key::SPOOL), 0);
    assert_eq!(body_of(&store, kept), b"kept");
}

#[test]
fn dropped_and_aborted_spools_leave_nothing() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let mut spool = store.spool().unwrap();
    spool.append(b"abc").unwrap();
    spool.abort();
    let mut spool = store.spool().unwrap();
    spool.append(b"def").unwrap();
    drop(spool);
    assert_eq!(keys_with_prefix(&store, key::PART), 0);
    assert_eq!(keys_with_prefix(&store, key::SPOOL), 0);
}

#[test]
fn queue_full_is_reported_and_the_spool_removed() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path(), options(100)).unwrap();
    store.recover().unwrap();
    let first = commit(&store, &[&[b'a'; 60]], &["a@x"], 1);
    let mut spool = store.spool().unwrap();
    spool.append(&[b'b'; 41]).unwrap();
    let id = spool.id();
    assert_eq!(
        block_on(spool.commit(info(&["a@x"]), 2)).unwrap(),
        Err(QueueFull)
    );
    assert_eq!(keys_with_prefix(&store, &key::part_prefix(id)), 0);
    assert_eq!(keys_with_prefix(&store, key::SPOOL), 0);
    assert_eq!(
        store.usage(),
        Usage {
            messages: 1,
            bytes: 60
        }
    );
    // Exactly at the cap still fits.
    commit(&store, &[&[b'c'; 40]], &["a@x"], 3);
    assert_eq!(
        store.usage(),
        Usage {
            messages: 2,
            bytes: 100
        }
    );
    assert_eq!(ids(&store.list().unwrap())[0], first);
}

#[test]
fn all_delivered_removes_the_message_and_its_body() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"one", b"two"], &["a@x", "b@y"], 1);
    let results = [
        (0, RcptState::Delivered, Some("250 ok".into())),
        (1, RcptState::Delivered, None),
    ];
    block_on(store.record(id, &results, AT, 1, 100)).unwrap();
    assert!(matches!(store.get(id), Err(StoreError::NotFound(_))));
    assert_eq!(store.usage(), Usage::default());
    assert_eq!(keys_with_prefix(&store, key::PART), 0);
    assert_eq!(keys_with_prefix(&store, key::RCPT), 0);
    assert_eq!(keys_with_prefix(&store, key::DUE), 0);
    assert_eq!(keys_with_prefix(&store, key::HIST), 0);
    assert_eq!(store.next_due(), None);
}

#[test]
fn a_single_recipient_lives_in_the_envelope_through_attempts_reopen_and_removal() {
    let dir = TempDir::new().unwrap();
    let id = {
        let (store, _) = open(&dir);
        let id = commit(&store, &[b"body"], &["ops@x"], 1);
        assert_eq!(keys_with_prefix(&store, key::RCPT), 0);
        let results = [(0, RcptState::Deferred, Some("451 4.3.0 later".to_owned()))];
        block_on(store.record(id, &results, AT, 1, 100)).unwrap();
        assert_eq!(keys_with_prefix(&store, key::RCPT), 0);
        id
    };
    let (store, report) = open(&dir);
    assert_eq!((report.messages, report.quarantined), (1, 0));
    let message = store.get(id).unwrap();
    assert_eq!(message.info.recipients, ["ops@x"]);
    assert_eq!(message.recipients[0].state, RcptState::Deferred);
    assert_eq!(
        message.recipients[0].last_reply.as_deref(),
        Some("451 4.3.0 later")
    );
    assert_eq!((message.attempts, message.next_attempt), (1, 100));
    assert_eq!(store.history(id).unwrap().len(), 1);
    let results = [(0, RcptState::Delivered, Some("250 ok".to_owned()))];
    block_on(store.record(id, &results, AT, 2, 200)).unwrap();
    assert!(matches!(store.get(id), Err(StoreError::NotFound(_))));
    for prefix in [key::MSG, key::RCPT, key::PART, key::DUE, key::HIST] {
        assert_eq!(keys_with_prefix(&store, prefix), 0);
    }
}

#[test]
fn a_message_in_the_layout_before_inline_records_reads_delivers_and_deletes() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(
        &store,
        &[b"Subject: s\r\n\r\n", b"old layout"],
        &["ops@x"],
        1,
    );
    // Rewrite it the way builds before inline records stored it: one `part/` record per
    // piece, the recipient in `rcpt/<id>/0`, neither in `msg/`.
    let mut meta = store.meta(id).unwrap();
    let db = &store.inner.db;
    for (n, extent) in (0..).zip(&meta.extents) {
        db.insert(key::part(id, n), &extent.encode()).unwrap();
    }
    let rcpt = meta.rcpt.take().unwrap();
    db.insert(key::rcpt(id, 0), record::encode_rcpt(&rcpt))
        .unwrap();
    meta.extents.clear();
    let old = meta.encode();
    assert_eq!(
        old[1] & 0b1100_0000,
        0,
        "no flag an older build does not know"
    );
    db.insert(key::msg(id), old).unwrap();
    block_on(store.flush()).unwrap();
    drop(store);

    let (store, report) = open(&dir);
    assert_eq!((report.messages, report.quarantined), (1, 0));
    assert_eq!(body_files(&dir).len(), 1);
    assert_eq!(body_of(&store, id), b"Subject: s\r\n\r\nold layout");
    assert_eq!(store.get(id).unwrap().info.recipients, ["ops@x"]);
    let results = [(0, RcptState::Deferred, Some("451 later".to_owned()))];
    block_on(store.record(id, &results, AT, 1, 100)).unwrap();
    assert_eq!(
        store.get(id).unwrap().recipients[0].state,
        RcptState::Deferred
    );
    let results = [(0, RcptState::Delivered, None)];
    block_on(store.record(id, &results, AT, 2, 200)).unwrap();
    block_on(store.flush()).unwrap();
    for prefix in [key::MSG, key::RCPT, key::PART, key::DUE, key::HIST] {
        assert_eq!(keys_with_prefix(&store, prefix), 0);
    }
    assert!(body_files(&dir).is_empty());
}

#[test]
fn attempt_history_keeps_the_last_attempts_in_order_and_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let id = {
        let (store, _) = open(&dir);
        let id = commit(&store, &[b"body"], &["a@x", "b@y"], 1);
        assert!(store.history(id).unwrap().is_empty());
        let total = KEPT_ATTEMPTS + 3;
        for n in 0..total {
            let results = [
                (0, RcptState::Deferred, Some(format!("451 try {n}"))),
                (1, RcptState::Deferred, Some(format!("452 try {n}"))),
            ];
            let at = AT + u64::from(n);
            block_on(store.record(id, &results, at, n + 1, 100)).unwrap();
        }
        let history = store.history(id).unwrap();
        assert_eq!(history.len(), KEPT_ATTEMPTS as usize);
        assert_eq!(history[0].at_unix, AT + 3, "the oldest three were dropped");
        let last = history.last().unwrap();
        assert_eq!(last.at_unix, AT + u64::from(total - 1));
        assert_eq!(
            last.results,
            vec![
                (0, RcptState::Deferred, format!("451 try {}", total - 1)),
                (1, RcptState::Deferred, format!("452 try {}", total - 1)),
            ]
        );
        // The delivery of one recipient is an attempt of its own, listing only who was tried.
        let results = [(1, RcptState::Delivered, Some("250 ok".to_owned()))];
        block_on(store.record(id, &results, AT + 99, total + 1, 200)).unwrap();
        id
    };
    let (store, _) = open(&dir);
    let history = store.history(id).unwrap();
    assert_eq!(history.len(), KEPT_ATTEMPTS as usize);
    let last = history.last().unwrap();
    assert_eq!(last.at_unix, AT + 99);
    assert_eq!(
        last.results,
        vec![(1, RcptState::Delivered, "250 ok".to_owned())]
    );
    // Deleting the message takes its history with it.
    block_on(store.delete(id)).unwrap();
    assert_eq!(keys_with_prefix(&store, key::HIST), 0);
    assert!(store.history(id).unwrap().is_empty());
}

/// A delivery pass's removals wait for the sync a commit starts anyway (`SETTLE_GRACE`)
/// instead of a sync of their own.
#[test]
fn settle_removals_rides_the_sync_of_a_commit_that_comes_along() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"body"], &["a@x"], 1);
    let results = [(0, RcptState::Delivered, Some("250 ok".to_owned()))];
    block_on(store.record(id, &results, AT, 1, 100)).unwrap();
    let before = store.durable_epoch();
    let ex = LocalExecutor::new();
    let settler = store.clone();
    let settle = ex.spawn(async move { settler.settle_removals().await });
    // The settle is waiting (no sync yet); then mail arrives.
    for _ in 0..3 {
        ex.try_tick();
    }
    assert_eq!(
        store.durable_epoch(),
        before,
        "settle waits for a commit first"
    );
    let committer = store.clone();
    let arrived = ex.spawn(async move {
        let mut spool = committer.spool().unwrap();
        spool.append(b"next").unwrap();
        spool.commit(info(&["b@y"]), 2).await.unwrap().unwrap()
    });
    block_on(ex.run(async {
        arrived.await;
        settle.await.unwrap();
    }));
    assert_eq!(
        store.durable_epoch(),
        before + 1,
        "one sync made the commit and the removal durable"
    );
    assert!(matches!(store.get(id), Err(StoreError::NotFound(_))));
}

#[test]
fn settle_removals_syncs_only_what_record_left_unsynced() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"body"], &["a@x"], 1);
    let results = [(0, RcptState::Delivered, Some("250 ok".to_owned()))];
    let before = store.durable_epoch();
    block_on(store.record(id, &results, AT, 1, 100)).unwrap();
    assert_eq!(
        store.durable_epoch(),
        before,
        "a delivered removal is not waited for"
    );
    block_on(store.settle_removals()).unwrap();
    let settled = store.durable_epoch();
    assert!(settled > before, "settling synced the removal");
    block_on(store.settle_removals()).unwrap();
    assert_eq!(
        store.durable_epoch(),
        settled,
        "nothing left to sync: no sync"
    );
}

#[test]
fn partial_delivery_reschedules_the_rest() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"body"], &["a@x", "b@y"], 1);
    let results = [
        (0, RcptState::Delivered, None),
        (1, RcptState::Deferred, Some("451".into())),
    ];
    block_on(store.record(id, &results, AT, 1, 500)).unwrap();
    let message = store.get(id).unwrap();
    assert_eq!(message.attempts, 1);
    assert_eq!(message.next_attempt, 500);
    assert_eq!(message.recipients[0].state, RcptState::Delivered);
    assert_eq!(message.recipients[1].last_reply.as_deref(), Some("451"));
    assert!(store.due(499, 10).unwrap().is_empty());
    assert_eq!(ids(&store.due(500, 10).unwrap()), vec![id]);
    assert_eq!(store.next_due(), Some(500));
    assert_eq!(store.inner.due.len(), 1, "old due entry replaced");
    assert_eq!(
        keys_with_prefix(&store, key::DUE),
        0,
        "the schedule is in memory"
    );

    // Due at once, at its place by age (queued at 1).
    store.reschedule_all(20).unwrap();
    assert_eq!(store.next_due(), Some(1));
    assert_eq!(store.get(id).unwrap().next_attempt, 1);
}

fn commit_with(store: &Store, priority: Priority, now: QueueTime) -> QueueId {
    let mut spool = store.spool().unwrap();
    spool.append(b"body").unwrap();
    let info = MessageInfo {
        priority,
        ..info(&["ops@x"])
    };
    block_on(spool.commit(info, now)).unwrap().unwrap()
}

#[test]
fn the_coalescing_key_is_kept_through_a_deferral_and_a_reopen() {
    let dir = TempDir::new().unwrap();
    let id = {
        let (store, _) = open(&dir);
        let mut spool = store.spool().unwrap();
        spool.append(b"Subject: x\r\n\r\nbody").unwrap();
        let info = MessageInfo {
            coalesce: Some(0xFEED_F00D_0000_0001),
            ..info(&["ops@x"])
        };
        let id = block_on(spool.commit(info, 1)).unwrap().unwrap();
        let plain = commit_with(&store, Priority::High, 2);
        assert_eq!(store.get(plain).unwrap().info.coalesce, None);
        let deferred = [(0, RcptState::Deferred, Some("451".into()))];
        block_on(store.record(id, &deferred, AT, 1, 5)).unwrap();
        id
    };
    let (store, report) = open(&dir);
    assert_eq!(report.quarantined, 0);
    let message = store.get(id).unwrap();
    assert_eq!(message.info.coalesce, Some(0xFEED_F00D_0000_0001));
    assert_eq!(message.attempts, 1);
}

#[test]
fn due_mail_goes_most_urgent_first_then_oldest_first_across_reopen_and_reschedule() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let low = commit_with(&store, Priority::Low, 1);
    let normal_old = commit_with(&store, Priority::Normal, 2);
    let urgent_old = commit_with(&store, Priority::Urgent, 3);
    let high = commit_with(&store, Priority::High, 5);
    let normal_new = commit_with(&store, Priority::Normal, 6);
    let urgent_new = commit_with(&store, Priority::Urgent, 9);
    let order = vec![urgent_old, urgent_new, high, normal_old, normal_new, low];
    assert_eq!(ids(&store.due(100, 10).unwrap()), order);
    // The limit takes the most urgent; the time bound applies within each priority.
    assert_eq!(ids(&store.due(100, 2).unwrap()), order[..2]);
    assert_eq!(
        ids(&store.due(4, 10).unwrap()),
        vec![urgent_old, normal_old, low]
    );
    assert_eq!(store.next_due(), Some(1));
    assert_eq!(
        store.get(urgent_old).unwrap().info.priority,
        Priority::Urgent
    );
    // A deferred urgent message keeps its place among the urgent ones.
    let deferred = [(0, RcptState::Deferred, Some("451".into()))];
    block_on(store.record(urgent_old, &deferred, AT, 10, 500)).unwrap();
    assert_eq!(ids(&store.due(100, 10).unwrap()), order[1..]);
    // Link up: everything due now, in the same order (the deferred one back in its place).
    store.reschedule_all(100).unwrap();
    assert_eq!(ids(&store.due(100, 10).unwrap()), order);
    drop(store);
    let (store, report) = open(&dir);
    assert_eq!(report.messages, 6);
    assert_eq!(ids(&store.due(100, 10).unwrap()), order);
    // Held mail leaves its index, and comes back to it.
    block_on(store.hold(high)).unwrap();
    assert!(!ids(&store.due(100, 10).unwrap()).contains(&high));
    block_on(store.release(high)).unwrap();
    assert_eq!(ids(&store.due(100, 10).unwrap()), order);
    // Recovery rebuilds every priority's schedule from the records, and removes the `due/` keys
    // an older build kept in sled (here one missing and one of no message).
    store
        .inner
        .db
        .remove(key::due(Priority::Urgent, 100, urgent_new))
        .unwrap();
    store
        .inner
        .db
        .insert(key::due(Priority::Low, 7, QueueId(999)), &[])
        .unwrap();
    drop(store);
    let (store, _) = open(&dir);
    assert_eq!(ids(&store.due(100, 10).unwrap()), order);
    for priority in Priority::ALL {
        assert_eq!(keys_with_prefix(&store, key::due_prefix(priority)), 0);
    }
}

#[test]
fn failed_with_none_pending_stays_listed_until_purged() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"body"], &["a@x", "b@y"], 1);
    let results = [
        (0, RcptState::Delivered, None),
        (1, RcptState::Failed, Some("550 no".into())),
    ];
    block_on(store.record(id, &results, AT, 1, 300)).unwrap();
    assert_eq!(store.failed_at(id).unwrap(), Some(300));
    assert!(store.due(u64::MAX, 10).unwrap().is_empty());
    assert_eq!(store.next_due(), None);
    assert_eq!(ids(&store.list().unwrap()), vec![id]);
    assert_eq!(store.usage().messages, 1);

    drop(store);
    let (store, report) = open(&dir);
    assert_eq!(report.messages, 1);
    assert_eq!(
        store.next_due(),
        None,
        "recover does not make a failed message due"
    );
    assert_eq!(block_on(store.purge_failed(300)).unwrap(), 0);
    assert_eq!(block_on(store.purge_failed(301)).unwrap(), 1);
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.usage(), Usage::default());
}

#[test]
fn due_is_oldest_first_and_bounded() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let late = commit(&store, &[b"1"], &["a@x"], 30);
    let early = commit(&store, &[b"2"], &["a@x"], 10);
    let middle = commit(&store, &[b"3"], &["a@x"], 20);
    assert_eq!(ids(&store.due(25, 10).unwrap()), vec![early, middle]);
    assert_eq!(ids(&store.due(u64::MAX, 2).unwrap()), vec![early, middle]);
    assert_eq!(ids(&store.due(30, 10).unwrap()), vec![early, middle, late]);
    assert!(store.due(9, 10).unwrap().is_empty());
    assert_eq!(store.next_due(), Some(10));
}

#[test]
fn held_messages_are_never_due_until_released() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"1"], &["a@x"], 5);
    block_on(store.hold(id)).unwrap();
    assert!(store.get(id).unwrap().held);
    assert!(store.due(u64::MAX, 10).unwrap().is_empty());
    store.reschedule_all(0).unwrap();
    drop(store);
    let (store, _) = open(&dir);
    assert!(store.due(u64::MAX, 10).unwrap().is_empty());
    block_on(store.release(id)).unwrap();
    assert_eq!(ids(&store.due(5, 10).unwrap()), vec![id]);
}

#[test]
fn corrupt_record_is_quarantined_and_the_rest_loads() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    // More pieces than `INLINE_EXTENTS`: `part/` records.
    let bad = commit(&store, &[b"b", b"a", b"d", b"!", b"!"], &["a@x", "b@y"], 1);
    let good = commit(&store, &[b"good"], &["c@z"], 2);
    let half = commit(&store, &[b"half"], &["d@w", "e@v"], 3);
    drop(store);
    {
        let db = raw_db(&dir);
        db.insert(key::msg(bad), &b"\x01garbage"[..]).unwrap();
        db.insert(key::rcpt(half, 1), &b"\xff"[..]).unwrap();
        db.flush().unwrap();
    }

    let (store, report) = open(&dir);
    assert_eq!(report.messages, 1);
    assert_eq!(
        report.quarantined, 6,
        "bad msg + its 2 recipients; half (one recipient damaged) whole: msg + 2 recipients"
    );
    assert!(matches!(store.get(bad), Err(StoreError::NotFound(_))));
    assert!(matches!(store.get(half), Err(StoreError::NotFound(_))));
    assert_eq!(body_of(&store, good), b"good");
    assert_eq!(ids(&store.list().unwrap()), vec![good]);
    assert_eq!(ids(&store.due(u64::MAX, 10).unwrap()), vec![good]);
    assert_eq!(
        store.usage(),
        Usage {
            messages: 1,
            bytes: 4
        }
    );
    let corrupt = &store.inner.corrupt;
    assert_eq!(
        corrupt.get(key::msg(bad)).unwrap().as_deref(),
        Some(&b"\x01garbage"[..])
    );
    assert!(
        corrupt.get(key::part(bad, 0)).unwrap().is_some(),
        "its body is kept aside"
    );
    assert_eq!(keys_with_prefix(&store, &key::part_prefix(bad)), 0);
    assert!(
        corrupt.get(key::rcpt(half, 0)).unwrap().is_some()
            && corrupt.get(key::msg(half)).unwrap().is_some(),
        "the message with a damaged recipient is kept aside whole"
    );
}

#[test]
fn attempt_records_of_no_message_are_removed_at_recovery() {
    // A removal starts with `msg/`: a crash right after it leaves the history behind.
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"body"], &["a@x"], 1);
    let results = [(0, RcptState::Deferred, Some("451 later".to_owned()))];
    block_on(store.record(id, &results, AT, 1, 100)).unwrap();
    assert_eq!(keys_with_prefix(&store, key::HIST), 1);
    drop(store);
    {
        let db = raw_db(&dir);
        db.remove(key::msg(id)).unwrap();
        db.flush().unwrap();
    }
    let (store, report) = open(&dir);
    assert_eq!(report.messages, 0);
    assert_eq!(keys_with_prefix(&store, key::HIST), 0);
    assert_eq!(keys_with_prefix(&store, key::RCPT), 0);
}

#[test]
fn message_with_a_missing_body_part_or_recipient_is_quarantined_whole() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    // More pieces than `INLINE_EXTENTS`: `part/` records.
    let cut = commit(
        &store,
        &[b"one", b"two", b"three", b"four", b"five"],
        &["a@x"],
        1,
    );
    // Two recipients: `rcpt/` records (a single one would be inline in `msg/`).
    let lone = commit(&store, &[b"lone"], &["b@y", "b2@y"], 2);
    let good = commit(&store, &[b"good"], &["c@z"], 3);
    drop(store);
    {
        let db = raw_db(&dir);
        let parts = keys_in(&db, &key::part_prefix(cut));
        assert!(parts.len() >= 2, "the test needs a body in several parts");
        db.remove(parts.last().unwrap()).unwrap();
        db.remove(key::rcpt(lone, 0)).unwrap();
        db.flush().unwrap();
    }
    let (store, report) = open(&dir);
    assert_eq!(report.messages, 1);
    assert!(matches!(store.get(cut), Err(StoreError::NotFound(_))));
    assert!(matches!(store.get(lone), Err(StoreError::NotFound(_))));
    assert_eq!(ids(&store.due(u64::MAX, 10).unwrap()), vec![good]);
    let corrupt = &store.inner.corrupt;
    assert!(corrupt.get(key::msg(cut)).unwrap().is_some());
    // Its body's extent is inline: the record kept aside still says where the body is.
    let kept = corrupt.get(key::msg(lone)).unwrap().unwrap();
    assert_eq!(MessageMeta::decode(&kept).unwrap().extents.len(), 1);
}

#[test]
fn commit_completes_only_after_its_fdatasync() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let (synced, release) = gated_hook(&store);

    let ex = LocalExecutor::new();
    let returned = Rc::new(Cell::new(false));
    let mut spool = store.spool().unwrap();
    spool.append(b"must be durable").unwrap();
    let id = spool.id();
    let flag = Rc::clone(&returned);
    let task = ex.spawn(async move {
        let result = spool.commit(info(&["a@x"]), 1).await;
        flag.set(true);
        result
    });
    for _ in 0..2000 {
        ex.try_tick();
        if synced.load(Ordering::SeqCst) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        synced.load(Ordering::SeqCst),
        1,
        "the commit started a sync"
    );
    assert!(
        store.inner.db.contains_key(key::msg(id)).unwrap(),
        "written before the sync"
    );
    for _ in 0..20 {
        ex.try_tick();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!returned.get(), "commit returned before its sync finished");
    release.send(()).unwrap();
    assert_eq!(block_on(ex.run(task)).unwrap(), Ok(id));
    assert!(returned.get());
    assert!(store.durable_epoch() >= 1);
}

#[test]
fn concurrent_commits_share_one_flush_at_a_time() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let ex = LocalExecutor::new();
    let before = store.durable_epoch();
    let tasks: Vec<_> = (0..32u8)
        .map(|n| {
            let store = store.clone();
            ex.spawn(async move {
                let mut spool = store.spool().unwrap();
                spool.append(&[n; 100]).unwrap();
                spool
                    .commit(info(&["a@x"]), u64::from(n))
                    .await
                    .unwrap()
                    .unwrap()
            })
        })
        .collect();
    let ids = block_on(ex.run(async {
        let mut ids = Vec::new();
        for task in tasks {
            ids.push(task.await);
        }
        ids
    }));
    assert_eq!(ids.len(), 32);
    let syncs = store.durable_epoch() - before;
    assert!((1..32).contains(&syncs), "{syncs} syncs for 32 commits");
    assert_eq!(store.max_concurrent_syncs(), 1);
    assert_eq!(
        store.usage(),
        Usage {
            messages: 32,
            bytes: 3200
        }
    );
}

/// A hook that counts syncs and holds each one open until the test sends on the channel.
fn gated_hook(store: &Store) -> (Arc<AtomicU64>, std::sync::mpsc::Sender<()>) {
    let synced = Arc::new(AtomicU64::new(0));
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let hook_synced = Arc::clone(&synced);
    store.set_sync_hook(Some(Arc::new(move || {
        // Runs on the sync thread after `fdatasync` returned; hold the sync open here.
        hook_synced.fetch_add(1, Ordering::SeqCst);
        let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(20));
    })));
    (synced, release)
}

/// Ticks `ex` until `synced` reaches `n` (bounded: 2000 rounds).
fn tick_until_synced(ex: &LocalExecutor<'_>, synced: &AtomicU64, n: u64) {
    for _ in 0..2000 {
        ex.try_tick();
        if synced.load(Ordering::SeqCst) >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("sync #{n} never started");
}

#[test]
fn cancelled_commit_does_not_start_a_second_flush() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let (synced, release) = gated_hook(&store);
    let ex = LocalExecutor::new();
    let mut spool = store.spool().unwrap();
    spool.append(b"x").unwrap();
    let first = ex.spawn(spool.commit(info(&["a@x"]), 1));
    tick_until_synced(&ex, &synced, 1);
    // The session went away while its sync is still running (held open by the hook).
    assert!(block_on(ex.run(first.cancel())).is_none());

    let mut spool = store.spool().unwrap();
    spool.append(b"y").unwrap();
    let second = ex.spawn(spool.commit(info(&["a@x"]), 2));
    for _ in 0..20 {
        ex.try_tick();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        synced.load(Ordering::SeqCst),
        1,
        "no second sync while the first runs"
    );
    release.send(()).unwrap(); // first sync ends; the second commit needs a sync of its own
    tick_until_synced(&ex, &synced, 2);
    release.send(()).unwrap();
    let id = block_on(ex.run(second)).unwrap().unwrap();
    assert_eq!(store.max_concurrent_syncs(), 1);
    assert_eq!(store.usage().messages, 2);
    assert!(store.get(id).is_ok());
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Op {
    Commit {
        body: Vec<Vec<u8>>,
        recipients: usize,
        now: u64,
    },
    Abort,
    Record {
        pick: usize,
        results: Vec<(usize, u8)>,
        next: u64,
    },
    Delete {
        pick: usize,
    },
    Hold {
        pick: usize,
        held: bool,
    },
    Reopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let chunk = proptest::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        4 => (proptest::collection::vec(chunk, 0..3), 1..4usize, 0..100u64)
            .prop_map(|(body, recipients, now)| Op::Commit { body, recipients, now }),
        1 => Just(Op::Abort),
        4 => (any::<usize>(), proptest::collection::vec((0..4usize, 0..4u8), 0..4), 0..200u64)
            .prop_map(|(pick, results, next)| Op::Record { pick, results, next }),
        1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, held)| Op::Hold { pick, held }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug)]
struct Model {
    body: Vec<u8>,
    states: Vec<RcptState>,
    next_attempt: u64,
    held: bool,
}

fn state(n: u8) -> RcptState {
    match n {
        0 => RcptState::Pending,
        1 => RcptState::Deferred,
        2 => RcptState::Delivered,
        _ => RcptState::Failed,
    }
}

fn pick(model: &BTreeMap<QueueId, Model>, n: usize) -> Option<QueueId> {
    (!model.is_empty()).then(|| *model.keys().nth(n % model.len()).unwrap_or(&QueueId(0)))
}

/// Applies `op` to store and model; `Reopen` is done by the caller (the old handle must go first).
fn apply(store: &Store, model: &mut BTreeMap<QueueId, Model>, op: Op) {
    match op {
        Op::Commit {
            body,
            recipients,
            now,
        } => {
            let addresses: Vec<String> = (0..recipients).map(|n| format!("r{n}@x")).collect();
            let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
            let chunks: Vec<&[u8]> = body.iter().map(Vec::as_slice).collect();
            let id = commit(store, &chunks, &refs, now);
            let states = vec![RcptState::Pending; recipients];
            model.insert(
                id,
                Model {
                    body: body.concat(),
                    states,
                    next_attempt: now,
                    held: false,
                },
            );
        }
        Op::Abort => {
            let mut spool = store.spool().unwrap();
            spool.append(b"aborted").unwrap();
            spool.abort();
        }
        Op::Record {
            pick: n,
            results,
            next,
        } => {
            let Some(id) = pick(model, n) else { return };
            let results: Vec<_> = results.iter().map(|&(i, s)| (i, state(s), None)).collect();
            block_on(store.record(id, &results, AT, 1, next)).unwrap();
            let entry = model.get_mut(&id).unwrap();
            for (i, s, _) in &results {
                if let Some(slot) = entry.states.get_mut(*i) {
                    *slot = *s;
                }
            }
            entry.next_attempt = next;
            let open = entry
                .states
                .iter()
                .any(|s| matches!(s, RcptState::Pending | RcptState::Deferred));
            if !open && !entry.states.contains(&RcptState::Failed) {
                model.remove(&id);
            }
        }
        Op::Delete { pick: n } => {
            let Some(id) = pick(model, n) else { return };
            block_on(store.delete(id)).unwrap();
            model.remove(&id);
        }
        Op::Hold { pick: n, held } => {
            let Some(id) = pick(model, n) else { return };
            if held {
                block_on(store.hold(id)).unwrap();
            } else {
                block_on(store.release(id)).unwrap();
            }
            model.get_mut(&id).unwrap().held = held;
        }
        Op::Reopen => {}
    }
}

fn check(store: &Store, model: &BTreeMap<QueueId, Model>) {
    let listed = store.list().unwrap();
    assert_eq!(ids(&listed), model.keys().copied().collect::<Vec<_>>());
    for message in &listed {
        let expected = &model[&message.id];
        let states: Vec<_> = message.recipients.iter().map(|r| r.state).collect();
        assert_eq!(states, expected.states);
        assert_eq!(message.held, expected.held);
        assert_eq!(message.next_attempt, expected.next_attempt);
        assert_eq!(body_of(store, message.id), expected.body);
    }
    let bytes = model.values().map(|m| m.body.len() as u64).sum();
    assert_eq!(
        store.usage(),
        Usage {
            messages: model.len() as u64,
            bytes
        }
    );
    let mut due: Vec<_> = model
        .iter()
        .filter(|(_, m)| {
            !m.held
                && m.states
                    .iter()
                    .any(|s| matches!(s, RcptState::Pending | RcptState::Deferred))
        })
        .map(|(id, m)| (m.next_attempt, *id))
        .collect();
    due.sort();
    let got: Vec<_> = store
        .due(u64::MAX, 1000)
        .unwrap()
        .iter()
        .map(|m| (m.next_attempt, m.id))
        .collect();
    assert_eq!(got, due);
    assert_eq!(store.next_due(), due.first().map(|d| d.0));
    assert_eq!(keys_with_prefix(store, key::SPOOL), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_btreemap_model(ops in proptest::collection::vec(op_strategy(), 1..24)) {
        let dir = TempDir::new().unwrap();
        let (mut store, _) = open(&dir);
        let mut model = BTreeMap::new();
        for op in ops {
            if matches!(op, Op::Reopen) {
                drop(store);
                let report;
                (store, report) = open(&dir);
                prop_assert_eq!(report.messages, model.len() as u64);
                prop_assert_eq!(report.swept_spools + report.quarantined, 0);
            }
            apply(&store, &mut model, op);
            check(&store, &model);
        }
    }
}

#[test]
fn queue_clock_persists_and_never_goes_back() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    assert_eq!(store.clock_base(), 0);
    store.save_clock(5_000).unwrap();
    store.save_clock(4_000).unwrap();
    block_on(store.flush()).unwrap();
    assert_eq!(store.clock_base(), 5_000);
    commit(&store, &[b"x"], &["a@x"], 9_000); // a commit carries the clock forward too
    drop(store);
    let (store, _) = open(&dir);
    assert_eq!(store.clock_base(), 9_000);
    let clock = crate::clock::QueueClock::new(store.clock_base());
    assert!(clock.now() >= 9_000);
}

#[test]
fn large_bodies_never_spill_into_unsynced_blob_files() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let chunk = vec![7u8; 32 * 1024];
    for n in 0..12 {
        let chunks: Vec<&[u8]> = (0..20).map(|_| chunk.as_slice()).collect();
        let id = commit(&store, &chunks, &["a@x"], n);
        if n % 3 == 0 {
            block_on(store.delete(id)).unwrap();
        }
    }
    let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
    assert_eq!(blobs, 0, "sled wrote blob files");
}

#[test]
fn a_store_created_with_sleds_default_segment_size_still_opens() {
    let dir = TempDir::new().unwrap();
    let old = sled::Config::new()
        .path(dir.path())
        .segment_size(512 * 1024)
        .open()
        .unwrap();
    old.insert(b"meta/x", b"kept".as_slice()).unwrap();
    old.flush().unwrap();
    drop(old);
    let (store, _) = open(&dir);
    assert_eq!(sled_segment_size(dir.path()), 512 * 1024);
    let id = commit(&store, &[b"body"], &["a@x"], 1);
    assert_eq!(body_of(&store, id), b"body");
    let fresh = TempDir::new().unwrap();
    let (_store, _) = open(&fresh);
    assert_eq!(sled_segment_size(fresh.path()), SLED_SEGMENT_SIZE);
}

#[test]
fn a_long_smarthost_reply_is_kept_cut_to_max_reply() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"body"], &["a@x", "b@y"], 1);
    let long = "é".repeat(MAX_REPLY); // 2 bytes each: the cut lands inside one
    let results = [(0, RcptState::Deferred, Some(long.clone()))];
    block_on(store.record(id, &results, AT, 1, 50)).unwrap();
    let kept = store.get(id).unwrap().recipients[0]
        .last_reply
        .clone()
        .unwrap();
    assert_eq!(kept.len(), MAX_REPLY);
    assert!(long.starts_with(&kept));
}

fn body_files(dir: &TempDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join(BODIES_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn bodies_live_in_body_files_not_in_sled() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"Subject: s\r\n\r\n", b"body\r\n"], &["a@x"], 1);
    assert_eq!(keys_with_prefix(&store, key::BODY), 0);
    // Two pieces: their extents are inline in `msg/`, no `part/` records.
    assert_eq!(keys_with_prefix(&store, &key::part_prefix(id)), 0);
    assert_eq!(store.meta(id).unwrap().extents.len(), 2);
    let files = body_files(&dir);
    assert_eq!(files.len(), 1);
    let on_disk = std::fs::read(dir.path().join(BODIES_DIR).join(&files[0])).unwrap();
    assert_eq!(on_disk, b"Subject: s\r\n\r\nbody\r\n");
    // More pieces than fit inline: one `part/` record each.
    let pieces: Vec<&[u8]> = vec![b"1", b"2", b"3", b"4", b"5"];
    let long = commit(&store, &pieces, &["a@x"], 2);
    assert_eq!(keys_with_prefix(&store, &key::part_prefix(long)), 5);
    assert!(store.meta(long).unwrap().extents.is_empty());
    // Both read back, also after a reopen (recover counts inline extents as references).
    drop(store);
    let (store, report) = open(&dir);
    assert_eq!((report.messages, report.quarantined), (2, 0));
    assert_eq!(body_files(&dir).len(), 1);
    assert_eq!(body_of(&store, id), b"Subject: s\r\n\r\nbody\r\n");
    assert_eq!(body_of(&store, long), b"12345");
    // The body file is counted for both: it stays while either message is queued.
    block_on(store.delete(long)).unwrap();
    block_on(store.flush()).unwrap();
    assert_eq!(body_files(&dir).len(), 1);
    assert_eq!(body_of(&store, id), b"Subject: s\r\n\r\nbody\r\n");
    block_on(store.delete(id)).unwrap();
    block_on(store.flush()).unwrap();
    assert!(body_files(&dir).is_empty());
}

#[test]
fn body_files_are_unlinked_once_every_message_in_them_is_gone() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let piece = vec![b'p'; MAX_EXTENT];
    let pieces = usize::try_from(BODY_FILE_BYTES).unwrap() / MAX_EXTENT;
    let body: Vec<&[u8]> = (0..pieces).map(|_| piece.as_slice()).collect();
    // Each message fills one body file exactly: three of them take three body files.
    let ids: Vec<QueueId> = (0..3).map(|n| commit(&store, &body, &["a@x"], n)).collect();
    assert_eq!(body_files(&dir).len(), 3);
    block_on(store.delete(ids[0])).unwrap();
    assert_eq!(
        body_files(&dir).len(),
        2,
        "the first body file held only the first message"
    );
    block_on(store.delete(ids[2])).unwrap();
    assert_eq!(body_files(&dir).len(), 2, "the active body file stays");
    assert_eq!(body_of(&store, ids[1]), body.concat());
    block_on(store.delete(ids[1])).unwrap();
    assert_eq!(
        body_files(&dir).len(),
        1,
        "only the active body file is left"
    );
    drop(store);
    let (_store, report) = open(&dir);
    assert_eq!(report.messages, 0);
    assert!(
        body_files(&dir).is_empty(),
        "an unreferenced body file is an orphan"
    );
}

#[test]
fn an_aborted_spool_releases_its_body_file() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let piece = vec![b'q'; MAX_EXTENT];
    let mut spool = store.spool().unwrap();
    for _ in 0..usize::try_from(BODY_FILE_BYTES).unwrap() / MAX_EXTENT + 1 {
        spool.append(&piece).unwrap();
    }
    assert_eq!(body_files(&dir).len(), 2);
    spool.abort();
    assert_eq!(
        body_files(&dir).len(),
        1,
        "the full one went, the active one stays"
    );
    assert_eq!(keys_with_prefix(&store, key::PART), 0);
}

#[test]
fn orphan_body_files_are_deleted_at_recovery_and_foreign_files_left() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let kept = commit(&store, &[b"kept"], &["a@x"], 1);
    drop(store);
    let bodies = dir.path().join(BODIES_DIR);
    std::fs::write(bodies.join(format!("{:016X}", u64::MAX - 1)), b"orphan").unwrap();
    std::fs::write(bodies.join("README"), b"not ours").unwrap();
    let (store, report) = open(&dir);
    assert_eq!(report.messages, 1);
    assert_eq!(body_files(&dir).len(), 2, "{:?}", body_files(&dir));
    assert!(bodies.join("README").exists());
    assert_eq!(body_of(&store, kept), b"kept");
}

#[test]
fn a_missing_or_truncated_body_is_quarantined_and_the_rest_flows() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let whole = commit(&store, &[b"whole body"], &["a@x"], 1);
    let cut = commit(&store, &[b"this one gets cut"], &["b@y", "c@z"], 2);
    let piece = vec![b'r'; MAX_EXTENT];
    let fill: Vec<&[u8]> = (0..usize::try_from(BODY_FILE_BYTES).unwrap() / MAX_EXTENT)
        .map(|_| piece.as_slice())
        .collect();
    let gone = commit(&store, &fill, &["d@w"], 3); // rolls: its last piece opens a new body file
    drop(store);
    let files = body_files(&dir);
    assert_eq!(files.len(), 2);
    let bodies = dir.path().join(BODIES_DIR);
    std::fs::remove_file(bodies.join(&files[1])).unwrap();
    let first = std::fs::OpenOptions::new()
        .write(true)
        .open(bodies.join(&files[0]))
        .unwrap();
    first.set_len(15).unwrap(); // inside `cut`'s body
    drop(first);

    let (store, report) = open(&dir);
    assert_eq!(report.messages, 1);
    assert_eq!(
        report.quarantined, 4,
        "2 messages, with the 2 recipient records of `cut` (`gone`'s one is inline)"
    );
    assert_eq!(ids(&store.due(u64::MAX, 10).unwrap()), vec![whole]);
    assert_eq!(body_of(&store, whole), b"whole body");
    for id in [cut, gone] {
        assert!(matches!(store.get(id), Err(StoreError::NotFound(_))));
        assert!(store.inner.corrupt.get(key::msg(id)).unwrap().is_some());
    }
    assert_eq!(
        store.usage(),
        Usage {
            messages: 1,
            bytes: 10
        }
    );
    // The queue goes on: a new message is stored and read back.
    let next = commit(&store, &[b"next"], &["e@v"], 4);
    assert_eq!(body_of(&store, next), b"next");
}

#[test]
fn a_body_stored_inline_by_an_older_build_still_reads_and_deletes() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"x"], &["a@x"], 1);
    // Rewrite it the way the previous layout stored bodies: `body/` values, no `part/` keys.
    let mut meta = store.meta(id).unwrap();
    meta.chunks = 2;
    meta.extents.clear();
    let db = &store.inner.db;
    db.remove(key::part(id, 0)).unwrap();
    db.insert(key::body(id, 0), &b"old "[..]).unwrap();
    db.insert(key::body(id, 1), &b"body"[..]).unwrap();
    db.insert(key::msg(id), meta.encode()).unwrap();
    block_on(store.flush()).unwrap();
    drop(store);
    let (store, report) = open(&dir);
    assert_eq!(report.quarantined, 0);
    assert_eq!(body_of(&store, id), b"old body");
    block_on(store.delete(id)).unwrap();
    assert_eq!(keys_with_prefix(&store, key::BODY), 0);
}

#[test]
fn a_delivered_message_goes_at_once_and_its_body_file_after_the_next_sync() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let piece = vec![b'd'; MAX_EXTENT];
    let body: Vec<&[u8]> = (0..usize::try_from(BODY_FILE_BYTES).unwrap() / MAX_EXTENT)
        .map(|_| piece.as_slice())
        .collect();
    let first = commit(&store, &body, &["a@x"], 1); // fills the first body file
    commit(&store, &[b"second"], &["b@y"], 2); // opens the next one
    let before = store.durable_epoch();
    let results = [(0, RcptState::Delivered, Some("250 ok".into()))];
    block_on(store.record(first, &results, AT, 1, 3)).unwrap();
    assert_eq!(
        store.durable_epoch(),
        before,
        "a delivered removal does not wait for a sync"
    );
    assert!(matches!(store.get(first), Err(StoreError::NotFound(_))));
    assert_eq!(
        body_files(&dir).len(),
        2,
        "its bytes stay until the removal is durable"
    );
    block_on(store.flush()).unwrap();
    assert_eq!(body_files(&dir).len(), 1);
}

#[test]
fn a_crash_inside_a_commit_or_a_removal_leaves_nothing_behind_after_recover() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    // A commit cut before its `msg/` write: parts, recipient records and an index entry.
    let mut spool = store.spool().unwrap();
    spool.append(b"never committed").unwrap();
    let half = spool.id();
    let db = &store.inner.db;
    db.insert(key::part(half, 0), &spool.extents[0].encode())
        .unwrap();
    let rcpt = RcptRecord {
        address: "a@x".into(),
        state: RcptState::Pending,
        last_reply: None,
    };
    db.insert(key::rcpt(half, 0), record::encode_rcpt(&rcpt))
        .unwrap();
    db.insert(key::due(Priority::Normal, 1, half), &[]).unwrap();
    spool.finished = true; // the process died here
    drop(spool);
    // A removal cut right after its `msg/` write.
    let gone = commit(&store, &[b"delivered"], &["b@y"], 2);
    db.remove(key::msg(gone)).unwrap();
    let kept = commit(&store, &[b"kept"], &["c@z"], 3);
    block_on(store.flush()).unwrap();
    drop(store);

    let (store, report) = open(&dir);
    assert_eq!(report.messages, 1);
    assert_eq!(report.swept_spools, 0);
    assert_eq!(report.quarantined, 0);
    for id in [half, gone] {
        assert_eq!(keys_with_prefix(&store, &key::rcpt_prefix(id)), 0);
        assert_eq!(keys_with_prefix(&store, &key::part_prefix(id)), 0);
    }
    assert_eq!(ids(&store.due(u64::MAX, 10).unwrap()), vec![kept]);
    assert_eq!(
        store.usage(),
        Usage {
            messages: 1,
            bytes: 4
        }
    );
    assert_eq!(body_of(&store, kept), b"kept");
}
