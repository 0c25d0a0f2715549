//! Schedule tests: which messages are due when, by priority and age, across reopen and
//! reschedule; held and failed messages; the retention purge.

use super::*;

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
    // Recovery rebuilds every priority's schedule from the records, and removes legacy `due/` keys
    // in sled (here one missing and one of no message).
    store
        .inner
        .db()
        .unwrap()
        .remove(key::due(Priority::Urgent, 100, urgent_new))
        .unwrap();
    store
        .inner
        .db()
        .unwrap()
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
fn the_oldest_waiting_message_is_the_lowest_deliverable_id_neither_held_nor_failed() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    assert!(store.oldest_waiting().unwrap().is_none());
    let held = commit(&store, &[b"1"], &["a@x"], 5);
    let failed = commit(&store, &[b"2"], &["a@x"], 6);
    let deferred = commit(&store, &[b"3"], &["a@x"], 7);
    commit(&store, &[b"4"], &["a@x"], 8);
    block_on(store.hold(held)).unwrap();
    let bounced = [(0, RcptState::Failed, Some("550 no".into()))];
    block_on(store.record(failed, &bounced, AT, 1, 9)).unwrap();
    let later = [(0, RcptState::Deferred, Some("451".into()))];
    block_on(store.record(deferred, &later, AT, 10, 900)).unwrap();
    let oldest = |store: &Store| store.oldest_waiting().unwrap().map(|m| m.id);
    assert_eq!(oldest(&store), Some(deferred), "deferred still waits");
    drop(store);
    let (store, _) = open(&dir);
    assert_eq!(oldest(&store), Some(deferred), "rebuilt by recover");
    block_on(store.release(held)).unwrap();
    assert_eq!(oldest(&store), Some(held));
}
