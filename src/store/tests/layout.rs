//! On-disk layout tests: bodies in body files and when those go, sled values that stay
//! small, sled's segment size, the queue clock and the reply length kept.

use super::*;

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
    // The body file is a journal: two framed pieces, then the envelope.
    let on_disk = std::fs::read(dir.path().join(BODIES_DIR).join(&files[0])).unwrap();
    let scan = journal::scan(&on_disk);
    let kinds: Vec<u8> = scan.records.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [journal::PIECE, journal::PIECE, journal::ENVELOPE]);
    assert_eq!(scan.bad, 0);
    let body: Vec<u8> = scan.records[..2]
        .iter()
        .flat_map(|r| on_disk[usize::try_from(r.offset).unwrap()..][..r.len as usize].to_vec())
        .collect();
    assert_eq!(body, b"Subject: s\r\n\r\nbody\r\n");
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
    let pieces = usize::try_from(BODY_FILE_BYTES).unwrap() / (MAX_EXTENT + journal::HEADER);
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
