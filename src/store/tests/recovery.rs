//! Recovery tests: quarantine of damaged records and bodies, removal of records of no
//! message, legacy layouts, and crashes at every step of a commit or a removal.

use super::*;

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
    assert_eq!(
        report.quarantined, 6,
        "bad msg + its 2 recipients; half (one recipient damaged) whole: msg + 2 recipients"
    );
    // Both come back from the body file journal, their damaged records kept aside.
    assert_eq!((report.messages, report.recovered), (3, 2));
    assert_eq!(body_of(&store, bad), b"bad!!");
    assert_eq!(store.get(bad).unwrap().info.recipients, ["a@x", "b@y"]);
    assert_eq!(store.get(half).unwrap().info.recipients, ["d@w", "e@v"]);
    assert_eq!(body_of(&store, good), b"good");
    assert_eq!(
        ids(&store.due(u64::MAX, 10).unwrap()),
        vec![bad, good, half]
    );
    assert_eq!(
        store.usage(),
        Usage {
            messages: 3,
            bytes: 13
        }
    );
    let corrupt = store.inner.corrupt().unwrap();
    assert_eq!(
        corrupt.get(key::msg(bad)).unwrap().as_deref(),
        Some(&b"\x01garbage"[..])
    );
    assert!(
        corrupt.get(key::rcpt(half, 0)).unwrap().is_some()
            && corrupt.get(key::msg(half)).unwrap().is_some(),
        "the message with a damaged recipient is kept aside whole"
    );
    assert_eq!(store.damage().recovered, 2);
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
    assert_eq!(keys_with_prefix(&store, key::HIST), 0);
    assert_eq!(keys_with_prefix(&store, key::RCPT), 0);
    // The message itself was never delivered: the body file journal brings it back.
    assert_eq!((report.messages, report.recovered), (1, 1));
    assert_eq!(body_of(&store, id), b"body");
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
    // Kept aside from the database, both are rebuilt whole from the body file journal.
    assert_eq!((report.messages, report.recovered), (3, 2));
    assert_eq!(body_of(&store, cut), b"onetwothreefourfive");
    assert_eq!(store.get(lone).unwrap().info.recipients, ["b@y", "b2@y"]);
    assert_eq!(
        ids(&store.due(u64::MAX, 10).unwrap()),
        vec![cut, lone, good]
    );
    let corrupt = store.inner.corrupt().unwrap();
    assert!(corrupt.get(key::msg(cut)).unwrap().is_some());
    // Its body's extent is inline: the record kept aside still says where the body is.
    let kept = corrupt.get(key::msg(lone)).unwrap().unwrap();
    assert_eq!(MessageMeta::decode(&kept).unwrap().extents.len(), 1);
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
    let inside_cut = store.meta(cut).unwrap().extents[0].offset + 5;
    drop(store);
    let files = body_files(&dir);
    assert_eq!(files.len(), 2);
    let bodies = dir.path().join(BODIES_DIR);
    std::fs::remove_file(bodies.join(&files[1])).unwrap();
    let first = std::fs::OpenOptions::new()
        .write(true)
        .open(bodies.join(&files[0]))
        .unwrap();
    first.set_len(inside_cut).unwrap();
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
        assert!(store
            .inner
            .corrupt()
            .unwrap()
            .get(key::msg(id))
            .unwrap()
            .is_some());
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
fn a_legacy_body_stored_inline_in_sled_still_reads_and_deletes() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"x"], &["a@x"], 1);
    // Rewrite it as a legacy body: `body/` values, no `part/` keys.
    let mut meta = store.meta(id).unwrap();
    meta.chunks = 2;
    meta.extents.clear();
    let db = store.inner.db().unwrap();
    db.remove(key::part(id, 0)).unwrap();
    db.insert(key::body(id, 0), &b"old "[..]).unwrap();
    db.insert(key::body(id, 1), &b"body"[..]).unwrap();
    db.insert(key::msg(id), meta.encode()).unwrap();
    block_on(store.flush()).unwrap();
    drop(db);
    drop(store);
    let (store, report) = open(&dir);
    assert_eq!(report.quarantined, 0);
    assert_eq!(body_of(&store, id), b"old body");
    block_on(store.delete(id)).unwrap();
    assert_eq!(keys_with_prefix(&store, key::BODY), 0);
}

#[test]
fn a_crash_inside_a_commit_or_a_removal_leaves_nothing_behind_after_recover() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    // A commit cut before its `msg/` write: parts, recipient records and an index entry.
    let mut spool = store.spool().unwrap();
    spool.append(b"never committed").unwrap();
    let half = spool.id();
    let db = store.inner.db().unwrap();
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
    store.mark_done(gone, &store.meta(gone).unwrap(), &[]);
    db.remove(key::msg(gone)).unwrap();
    let kept = commit(&store, &[b"kept"], &["c@z"], 3);
    block_on(store.flush()).unwrap();
    drop(db);
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
