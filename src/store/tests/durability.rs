//! Group-commit tests: a commit returns only after its `fdatasync`, one flush at a time, and a
//! cancelled commit starts no second flush.

use super::*;

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
        store
            .inner
            .db()
            .unwrap()
            .contains_key(key::msg(id))
            .unwrap(),
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
pub(super) fn gated_hook(store: &Store) -> (Arc<AtomicU64>, std::sync::mpsc::Sender<()>) {
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
pub(super) fn tick_until_synced(ex: &LocalExecutor<'_>, synced: &AtomicU64, n: u64) {
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
