//! Compaction tests: an emptied database given back at the next open and while the store runs,
//! with every key kept and ids moving forward; a queue with a message (or a sync running) left
//! as it is; a crash at every step of the copy and the swap.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use super::super::compact::{COMPACT_ABOVE, CRASH_AFTER};
use super::*;

/// Keys a drained queue still holds, besides the counters: they must survive compaction.
const HIST: &[u8] = b"hist/\0\0\0\0\0\0\0\x07/\0\0\0\0";
const FAILED: &[u8] = b"failed/\0\0\0\0\0\0\0\x09/\0\0\0\0\0\0\0\x07";

/// A store that queued and removed messages over several starts (its ids well past sled's
/// first ones), then had its database grown past `COMPACT_ABOVE` by keys written and removed:
/// the queue is empty. Returns the largest id it gave out.
fn grown(dir: &TempDir) -> QueueId {
    let mut last = QueueId(0);
    for round in 0..3 {
        let (store, _) = open(dir);
        for n in 0..3 {
            last = commit(&store, &[b"a body"], &["a@x"], round * 10 + n);
            block_on(store.delete(last)).unwrap();
        }
        store.save_clock(round * 10 + 5).unwrap();
        block_on(store.flush()).unwrap();
    }
    let db = grow(dir);
    db.insert(HIST, &b"an attempt"[..]).unwrap();
    db.insert(FAILED, &b""[..]).unwrap();
    db.open_tree("corrupt")
        .unwrap()
        .insert(b"msg/x", &b"kept aside"[..])
        .unwrap();
    db.flush().unwrap();
    drop(db);
    assert!(
        sled_bytes(dir.path()) > COMPACT_ABOVE,
        "grown past the threshold"
    );
    last
}

/// sled's database in `dir`, grown by keys written and removed (about 2 MB of log).
fn grow(dir: &TempDir) -> sled::Db {
    let db = raw_db(dir);
    let filler = [0x5a; 200];
    for n in 0..8000u64 {
        db.insert(key::msg(QueueId(1 << 40 | n)), &filler[..])
            .unwrap();
    }
    for n in 0..8000u64 {
        db.remove(key::msg(QueueId(1 << 40 | n))).unwrap();
    }
    db
}

/// Bytes in sled's `db` file.
fn sled_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("db")).unwrap().len()
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dir_bytes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// What every open after a compaction (whole or interrupted) must find: the drained queue's
/// keys, the clock, no compaction directory left, and a new id above every old one.
fn assert_whole(store: &Store, dir: &Path, last: QueueId, clock: &[u8]) {
    let db = store.inner.db().unwrap();
    assert_eq!(db.get(HIST).unwrap().as_deref(), Some(&b"an attempt"[..]));
    assert!(db.contains_key(FAILED).unwrap());
    assert_eq!(db.get(key::CLOCK).unwrap().as_deref(), Some(clock));
    assert_eq!(
        store
            .inner
            .corrupt()
            .unwrap()
            .get(b"msg/x")
            .unwrap()
            .as_deref(),
        Some(&b"kept aside"[..])
    );
    for leftover in ["compact.new", "compact.old", "compact.old.tmp"] {
        assert!(!dir.join(leftover).exists(), "{leftover} left behind");
    }
    let id = store.spool().unwrap().id;
    assert!(id > last, "new id {id} not above the old {last}");
}

#[test]
fn an_emptied_database_is_given_back_at_the_next_open() {
    let dir = TempDir::new().unwrap();
    let last = grown(&dir);
    let clock = raw_db(&dir).get(key::CLOCK).unwrap().unwrap();
    let body_files_before = body_files(&dir);
    let before = dir_bytes(dir.path());

    let store = Store::open(dir.path(), options(1 << 30)).unwrap();
    let after = dir_bytes(dir.path());
    assert!(after < 2 << 20, "data directory {before} -> {after} bytes");
    assert!(sled_bytes(dir.path()) <= COMPACT_ABOVE);
    assert_whole(&store, dir.path(), last, &clock);
    assert_eq!(body_files(&dir), body_files_before, "body files untouched");

    // The new database works as the old one did, and later ids keep climbing across starts.
    store.recover().unwrap();
    let id = commit(&store, &[b"after"], &["b@y"], 40);
    assert!(id > last);
    drop(store);
    let (store, report) = open(&dir);
    assert_eq!(report.messages, 1);
    assert_eq!(body_of(&store, id), b"after");
    assert!(store.spool().unwrap().id > id);
}

#[test]
fn a_queue_with_a_message_is_not_compacted() {
    let dir = TempDir::new().unwrap();
    grown(&dir);
    let kept = {
        let (store, _) = open(&dir);
        commit(&store, &[b"still queued"], &["a@x"], 50)
    };
    let before = sled_bytes(dir.path());
    let (store, report) = open(&dir);
    assert_eq!(report.messages, 1);
    assert_eq!(body_of(&store, kept), b"still queued");
    assert!(sled_bytes(dir.path()) >= before, "not compacted");
}

#[test]
fn a_crash_at_any_step_of_the_compaction_leaves_a_whole_database() {
    let template = TempDir::new().unwrap();
    let last = grown(&template);
    let clock = raw_db(&template).get(key::CLOCK).unwrap().unwrap();
    for step in 0..100 {
        let dir = TempDir::new().unwrap();
        copy_dir(template.path(), dir.path());
        CRASH_AFTER.with(|c| c.set(Some(step)));
        let opened = catch_unwind(AssertUnwindSafe(|| {
            Store::open(dir.path(), options(1 << 30)).unwrap()
        }));
        CRASH_AFTER.with(|c| c.set(None));
        if let Ok(store) = opened {
            // Past the last step: every earlier `step` crashed at a point of its own.
            assert_whole(&store, dir.path(), last, &clock);
            assert!(step >= 10, "only {step} crash points");
            return;
        }
        let store = Store::open(dir.path(), options(1 << 30))
            .unwrap_or_else(|e| panic!("after a crash at step {step}: {e}"));
        assert_whole(&store, dir.path(), last, &clock);
        drop(store);
        // Whichever database the crash left, the next open gets the compacted one.
        let store = Store::open(dir.path(), options(1 << 30)).unwrap();
        assert!(sled_bytes(dir.path()) <= COMPACT_ABOVE, "step {step}");
        assert_whole(&store, dir.path(), last, &clock);
    }
    panic!("the compaction never finished in 100 steps");
}

/// An open store whose queue was used and emptied, then its database grown past
/// `COMPACT_ABOVE` while it runs by keys written and removed (what a drained backlog leaves),
/// with the keys `assert_whole` checks. Returns the store, the largest id it gave out and the
/// clock record.
fn grown_live(dir: &TempDir) -> (Store, QueueId, Vec<u8>) {
    let (store, _) = open(dir);
    let mut last = QueueId(0);
    for n in 0..3 {
        last = commit(&store, &[b"a body"], &["a@x"], n);
        block_on(store.delete(last)).unwrap();
    }
    store.save_clock(5).unwrap();
    {
        let db = store.inner.db().unwrap();
        let filler = [0x5a; 2000];
        for n in 0..800u64 {
            db.insert(key::msg(QueueId(1 << 40 | n)), &filler[..])
                .unwrap();
        }
        for n in 0..800u64 {
            db.remove(key::msg(QueueId(1 << 40 | n))).unwrap();
        }
        db.insert(HIST, &b"an attempt"[..]).unwrap();
        db.insert(FAILED, &b""[..]).unwrap();
        store
            .inner
            .corrupt()
            .unwrap()
            .insert(b"msg/x", &b"kept aside"[..])
            .unwrap();
    }
    block_on(store.flush()).unwrap();
    assert!(
        sled_bytes(dir.path()) > COMPACT_ABOVE,
        "grown past the threshold"
    );
    let clock = store.inner.db().unwrap().get(key::CLOCK).unwrap().unwrap();
    (store, last, clock.to_vec())
}

#[test]
fn an_emptied_database_is_compacted_while_the_store_runs() {
    let dir = TempDir::new().unwrap();
    let (store, last, clock) = grown_live(&dir);
    let body_files_before = body_files(&dir);
    // A session in DATA while the compaction runs: its body is in a body file, not in sled.
    let mut receiving = store.spool().unwrap();
    receiving.append(b"received across ").unwrap();

    assert!(store.compact_if_idle().unwrap(), "compacted");
    assert!(sled_bytes(dir.path()) <= COMPACT_ABOVE);
    assert!(dir_bytes(dir.path()) < 2 << 20);
    assert_eq!(body_files(&dir), body_files_before, "body files untouched");
    assert_whole(&store, dir.path(), last, &clock);
    assert!(
        !store.compact_if_idle().unwrap(),
        "nothing more to give back"
    );

    // The store goes on with the new database: the spool commits, new ids climb, syncs reach
    // the new log.
    receiving.append(b"the compaction").unwrap();
    let spooled = block_on(receiving.commit(info(&["a@x"]), 50))
        .unwrap()
        .unwrap();
    let epoch = store.durable_epoch();
    let after = commit(&store, &[b"after"], &["b@y"], 51);
    assert!(
        after > spooled && spooled > last,
        "{last} < {spooled} < {after}"
    );
    assert!(store.durable_epoch() > epoch);
    // The syncs flush the new database: its files as they are on disk hold the commit.
    let on_disk = TempDir::new().unwrap();
    copy_dir(dir.path(), on_disk.path());
    let copy = open_db(
        &sled::Config::new()
            .path(on_disk.path())
            .segment_size(sled_segment_size(on_disk.path())),
    )
    .unwrap();
    assert!(
        copy.contains_key(key::msg(after)).unwrap(),
        "commit flushed"
    );
    drop(copy);
    assert_eq!(body_of(&store, spooled), b"received across the compaction");
    drop(store);

    // Before `recover`, which drops the attempt record of no message that `assert_whole` checks.
    let store = Store::open(dir.path(), options(1 << 30)).unwrap();
    assert_whole(&store, dir.path(), after, &clock);
    assert_eq!(store.recover().unwrap().messages, 2);
    assert_eq!(body_of(&store, spooled), b"received across the compaction");
    assert_eq!(body_of(&store, after), b"after");
}

#[test]
fn no_live_compaction_with_a_message_queued_a_sync_running_or_a_handle_borrowed() {
    let dir = TempDir::new().unwrap();
    let (store, _, _) = grown_live(&dir);
    let queued = commit(&store, &[b"queued"], &["a@x"], 60);
    assert!(!store.compact_if_idle().unwrap(), "a message is queued");
    block_on(store.delete(queued)).unwrap();

    let (synced, release) = super::durability::gated_hook(&store);
    let ex = LocalExecutor::new();
    let flushing = ex.spawn(store.flush());
    super::durability::tick_until_synced(&ex, &synced, 1);
    assert!(!store.compact_if_idle().unwrap(), "a sync is running");
    release.send(()).unwrap();
    block_on(ex.run(flushing)).unwrap();
    store.set_sync_hook(None);

    let borrowed = store.inner.db().unwrap();
    assert!(!store.compact_if_idle().unwrap(), "a handle is borrowed");
    drop(borrowed);
    let before = sled_bytes(dir.path());
    assert!(before > COMPACT_ABOVE, "nothing compacted so far");
    assert!(store.compact_if_idle().unwrap());
}

#[test]
fn a_crash_at_any_step_of_the_live_compaction_leaves_a_whole_database() {
    for step in 0..100 {
        let dir = TempDir::new().unwrap();
        let (store, last, clock) = grown_live(&dir);
        CRASH_AFTER.with(|c| c.set(Some(step)));
        let compacted = catch_unwind(AssertUnwindSafe(|| store.compact_if_idle()));
        CRASH_AFTER.with(|c| c.set(None));
        if let Ok(compacted) = compacted {
            // Past the last step: every earlier `step` crashed at a point of its own.
            assert!(compacted.unwrap());
            assert_whole(&store, dir.path(), last, &clock);
            assert!(step >= 10, "only {step} crash points");
            return;
        }
        drop(store);
        let store = Store::open(dir.path(), options(1 << 30))
            .unwrap_or_else(|e| panic!("after a crash at step {step}: {e}"));
        assert_whole(&store, dir.path(), last, &clock);
        assert!(sled_bytes(dir.path()) <= COMPACT_ABOVE, "step {step}");
        assert_eq!(store.recover().unwrap().messages, 0, "step {step}");
        let id = commit(&store, &[b"after"], &["b@y"], 70);
        assert!(id > last);
        drop(store);
        let (store, report) = open(&dir);
        assert_eq!(report.messages, 1, "step {step}");
        assert_eq!(body_of(&store, id), b"after");
    }
    panic!("the live compaction never finished in 100 steps");
}

#[test]
fn a_copy_that_cannot_be_built_leaves_the_database_working_and_waits_for_growth() {
    let dir = TempDir::new().unwrap();
    let (store, last, clock) = grown_live(&dir);
    // `compact.new` cannot be created as a directory.
    let blocker = dir.path().join("compact.new");
    std::fs::write(&blocker, b"in the way").unwrap();
    let before = sled_bytes(dir.path());
    assert!(!store.compact_if_idle().unwrap(), "the copy failed");
    assert!(sled_bytes(dir.path()) >= before, "the database stays");
    let id = commit(&store, &[b"still works"], &["a@x"], 80);
    assert!(id > last);
    block_on(store.delete(id)).unwrap();
    std::fs::remove_file(&blocker).unwrap();
    assert!(
        !store.compact_if_idle().unwrap(),
        "not tried again before the file has doubled"
    );
    drop(store);
    // The next open compacts.
    let store = Store::open(dir.path(), options(1 << 30)).unwrap();
    assert!(sled_bytes(dir.path()) <= COMPACT_ABOVE);
    assert_whole(&store, dir.path(), id, &clock);
}

#[test]
fn a_grown_database_is_reopened_once_after_the_start_up_recovery_and_keeps_everything() {
    let dir = TempDir::new().unwrap();
    // A fresh store's scans read next to nothing: no reopen (its first ids stay small).
    let (store, _) = open(&dir);
    assert!(!store.reopen_if_idle().unwrap());
    let kept = commit(&store, &[b"queued across the reopen"], &["a@x"], 1);
    drop(store);
    // Grown with a message queued: not compacted at open, reopened after the recovery.
    let db = grow(&dir);
    db.flush().unwrap();
    drop(db);
    assert!(sled_bytes(dir.path()) > COMPACT_ABOVE);
    let (store, _) = open(&dir);
    // A removal not waited for: sled flushes it as it closes, the next sync makes it durable.
    let gone = commit(&store, &[b"removed just before"], &["b@x"], 2);
    block_on(store.delete(gone)).unwrap();
    assert!(
        store.reopen_if_idle().unwrap(),
        "recover asked for a reopen"
    );
    assert!(!store.reopen_if_idle().unwrap(), "once");
    assert_eq!(ids(&store.list().unwrap()), vec![kept]);
    assert_eq!(body_of(&store, kept), b"queued across the reopen");
    // The group flush syncs the reopened database: a commit after it survives a reopen.
    let after = commit(&store, &[b"after"], &["c@x"], 3);
    assert!(after > kept);
    drop(store);
    let (store, report) = open(&dir);
    assert_eq!(report.messages, 2);
    assert_eq!(ids(&store.list().unwrap()), vec![kept, after]);
}
