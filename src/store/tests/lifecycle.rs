//! Message life-cycle tests: commit and reopen, spools that never commit, the queue cap,
//! delivery results and removal, the attempt history, and when removals become durable.

use super::*;

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
            ..RecoveryReport::default()
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
fn a_legacy_spool_marker_and_its_parts_are_swept_after_reopen() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let kept = commit(&store, &[b"kept"], &["a@x"], 1);
    // What a build that wrote `spool/` markers left when it died inside DATA.
    let lost = store.fresh_id().unwrap();
    let db = store.inner.db().unwrap();
    db.insert(key::spool(lost), &[]).unwrap();
    for n in 0..2 {
        db.insert(key::part(lost, n), b"any".as_slice()).unwrap();
    }
    drop(db);
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
fn a_message_without_inline_records_reads_delivers_and_deletes() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(
        &store,
        &[b"Subject: s\r\n\r\n", b"old layout"],
        &["ops@x"],
        1,
    );
    // Rewrite it without inline records: one `part/` record per
    // piece, the recipient in `rcpt/<id>/0`, neither in `msg/`.
    let mut meta = store.meta(id).unwrap();
    let db = store.inner.db().unwrap();
    for (n, extent) in (0..).zip(&meta.extents) {
        db.insert(key::part(id, n), &extent.encode()).unwrap();
    }
    let rcpt = meta.rcpt.take().unwrap();
    db.insert(key::rcpt(id, 0), record::encode_rcpt(&rcpt))
        .unwrap();
    meta.extents.clear();
    let old = meta.encode();
    assert_eq!(old[1] & 0b1100_0000, 0, "neither inline flag set");
    db.insert(key::msg(id), old).unwrap();
    drop(db);
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
