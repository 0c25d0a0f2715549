//! The body file journal: record framing and its checksum, a torn or flipped tail, the
//! rebuild of the queue with sled's database gone or damaged, the checksum check on read, and
//! body files kept aside in `quarantine/` instead of deleted.

use super::super::journal::{self, scan, DONE, ENVELOPE, HEADER, PIECE};
use super::*;

#[test]
fn crc32_matches_the_standard_check_value() {
    assert_eq!(journal::crc32(0, b"123456789"), 0xCBF4_3926);
    let split = journal::crc32(journal::crc32(0, b"1234"), b"56789");
    assert_eq!(split, 0xCBF4_3926);
}

#[test]
fn records_round_trip_and_a_torn_or_flipped_tail_is_skipped_and_counted() {
    let id = QueueId(0x42);
    let mut file = journal::frame(PIECE, id, b"hello");
    file.extend(journal::frame(ENVELOPE, id, b"env"));
    file.extend(journal::frame(DONE, id, b""));
    let whole = scan(&file);
    assert_eq!(
        (whole.records.len(), whole.bad, whole.unframed),
        (3, 0, false)
    );
    assert_eq!(whole.records[0].offset, HEADER as u64);
    assert_eq!(whole.records[0].len, 5);
    assert_eq!(whole.records[2].kind, DONE);
    // A torn tail: the last record cut short.
    let torn = scan(&file[..file.len() - 3]);
    assert_eq!((torn.records.len(), torn.bad), (2, 1));
    // A flipped bit in the first payload: that record is skipped, the next ones are found.
    let mut flipped = file.clone();
    flipped[HEADER + 1] ^= 0x10;
    let found = scan(&flipped);
    assert_eq!(found.bad, 1);
    let kinds: Vec<u8> = found.records.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [ENVELOPE, DONE]);
    // A flipped length: never trusted, the scanner resynchronises.
    let mut long = file.clone();
    long[14] ^= 0x7F;
    assert_eq!(scan(&long).records.len(), 2);
    // Junk everywhere: no panic, nothing trusted.
    assert!(scan(&[0x4F; 100]).records.is_empty());
    assert!(scan(b"Subject: an unframed body file\r\n").unframed);
}

#[test]
fn the_queue_is_rebuilt_from_the_body_files_when_the_database_is_gone() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let one = commit(&store, &[b"Subject: one\r\n\r\n", b"1\r\n"], &["a@x"], 1);
    let many: Vec<&[u8]> = vec![b"a", b"b", b"c", b"d", b"e", b"f"];
    let two = commit(&store, &many, &["b@y", "c@z", "d@w"], 2);
    let sent = commit(&store, &[b"sent"], &["e@v"], 3);
    // `two` delivered to its first recipient; `sent` delivered and removed.
    let results = [(0, RcptState::Delivered, Some("250 ok".to_owned()))];
    block_on(store.record(two, &results, AT, 1, 10)).unwrap();
    block_on(store.record(sent, &results, AT, 1, 10)).unwrap();
    block_on(store.flush()).unwrap();
    drop(store);
    for name in ["db", "conf", "snap.0000000000000000"] {
        let _ = std::fs::remove_file(dir.path().join(name));
    }
    let (store, report) = open(&dir);
    assert_eq!((report.messages, report.recovered, report.lost), (2, 2, 0));
    assert_eq!(ids(&store.due(u64::MAX, 10).unwrap()), vec![one, two]);
    assert_eq!(body_of(&store, one), b"Subject: one\r\n\r\n1\r\n");
    assert_eq!(body_of(&store, two), b"abcdef");
    let two = store.get(two).unwrap();
    assert_eq!(two.info.recipients, ["b@y", "c@z", "d@w"]);
    let open_rcpts: Vec<bool> = two.recipients.iter().map(|r| r.state.is_open()).collect();
    assert_eq!(
        open_rcpts,
        [false, true, true],
        "the delivered one is not sent again"
    );
    assert_eq!(store.usage().messages, 2);
    // A new message after the rebuild gets a fresh id and body file, and reads back.
    let next = commit(&store, &[b"next"], &["f@u"], 4);
    assert_eq!(body_of(&store, next), b"next");
    assert!(
        next > sent,
        "sled's lost id counter must not hand out an id the journal holds"
    );
    drop(store);
    let (_, report) = open(&dir);
    assert_eq!(
        (report.messages, report.recovered),
        (3, 0),
        "rebuilt once, not again"
    );
    // The id floor is kept in the database: later starts need not read the journal first.
    let store = Store::open(dir.path(), options(1 << 30)).unwrap();
    let (_, pass) = store.recover_queue().unwrap();
    assert!(
        pass.is_some(),
        "the journal pass runs behind the open queue"
    );
    let later = commit(&store, &[b"later"], &["g@u"], 5);
    assert!(later > next, "ids keep climbing");
}

/// Waits (bounded) until the journal pass, polled by `ex`, holds the read end of `fifo` (a
/// FIFO named like a body file); returns the write end, whose close lets the pass go on.
fn pass_held_at(ex: &LocalExecutor<'_>, fifo: &std::path::Path) -> rustix::fd::OwnedFd {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        ex.try_tick();
        let opened = rustix::fs::open(
            fifo,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK,
            rustix::fs::Mode::empty(),
        );
        if let Ok(writer) = opened {
            return writer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the journal pass never opened the FIFO"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_journal_pass_behind_the_open_queue_rebuilds_what_sled_lacks_and_nothing_that_left_meanwhile()
{
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let lacking = commit(&store, &[b"sled lost me"], &["a@x"], 1);
    let leaving = commit(&store, &[b"delivered during the pass"], &["b@x"], 2);
    let file = store.meta(leaving).unwrap().extents[0].file;
    assert_eq!(store.meta(lacking).unwrap().extents[0].file, file);
    block_on(store.flush()).unwrap();
    drop(store);
    {
        let db = raw_db(&dir);
        db.remove(key::msg(lacking)).unwrap();
        db.flush().unwrap();
    }
    // A FIFO named like the first body file: the pass waits on it until the test closes it.
    let fifo = dir.path().join(BODIES_DIR).join("0000000000000001");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let store = Store::open(dir.path(), options(1 << 30)).unwrap();
    let (report, pass) = store.recover_queue().unwrap();
    assert_eq!((report.messages, report.recovered), (1, 0));
    let pass = pass.expect("sled kept its database: the pass runs behind the open queue");
    let ex = LocalExecutor::new();
    let task = ex.spawn({
        let store = store.clone();
        async move { store.finish_recovery(pass).await }
    });
    let writer = pass_held_at(&ex, &fifo);
    // The queue runs meanwhile: the message sled holds is delivered. Its body file also holds
    // the lacking one, which the pass has not read yet: it stays on disk.
    let path = dir.path().join(BODIES_DIR).join(format!("{file:016X}"));
    let before = std::fs::metadata(&path).unwrap().len();
    block_on(ex.run(store.delete(leaving))).unwrap();
    assert!(
        path.exists(),
        "a body file is kept until the pass has read it"
    );
    // The pass reads that body file as it was before the done record, as a read that began
    // before the delivery does: the delivered message must not come back.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(before)
        .unwrap();
    drop(writer);
    let report = block_on(ex.run(task)).unwrap();
    assert_eq!((report.recovered, report.messages), (1, 1), "{report:?}");
    assert_eq!(ids(&store.list().unwrap()), vec![lacking]);
    assert_eq!(body_of(&store, lacking), b"sled lost me");
    assert!(
        !fifo.exists(),
        "a body file with no journal in it goes after the pass"
    );
    // The body file goes with the last message in it.
    block_on(store.delete(lacking)).unwrap();
    assert!(!path.exists());
    // And a second pass while the queue runs has nothing to do.
    assert_eq!(block_on(store.recover_journal()).unwrap().recovered, 0);
}

#[test]
fn a_damaged_database_loses_nothing_the_body_files_hold() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let ids_in: Vec<QueueId> = (0..20)
        .map(|n| commit(&store, &[b"body of a message"], &["a@x", "b@y"], n))
        .collect();
    block_on(store.flush()).unwrap();
    drop(store);
    // Damage sled's log: half of it zeroed.
    let db = dir.path().join("db");
    let len = std::fs::metadata(&db).unwrap().len();
    let mut bytes = std::fs::read(&db).unwrap();
    let half = usize::try_from(len / 2).unwrap();
    bytes[half..].fill(0);
    std::fs::write(&db, bytes).unwrap();
    let (store, report) = open(&dir);
    assert_eq!(report.messages, 20, "{report:?}");
    let mut got = ids(&store.due(u64::MAX, 100).unwrap());
    got.sort();
    assert_eq!(got, ids_in);
}

#[test]
fn a_flipped_body_byte_is_detected_on_read_and_never_returned() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let good = commit(&store, &[b"intact"], &["a@x"], 1);
    let bad = commit(&store, &[b"first piece ", b"altered piece"], &["b@y"], 2);
    let extent = store.meta(bad).unwrap().extents[1];
    let path = dir
        .path()
        .join(BODIES_DIR)
        .join(format!("{:016X}", extent.file));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[usize::try_from(extent.offset).unwrap() + 3] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let mut chunks = store.body_chunks(bad).unwrap();
    assert_eq!(chunks.next().unwrap().unwrap(), b"first piece ");
    assert!(matches!(chunks.next(), Some(Err(StoreError::Damaged(_)))));
    assert_eq!(body_of(&store, good), b"intact");
    // Quarantined: the message leaves the queue, its body is kept whole in `quarantine/`.
    store.quarantine(bad).unwrap();
    block_on(store.settle_removals()).unwrap();
    assert!(matches!(store.get(bad), Err(StoreError::NotFound(_))));
    let kept = std::fs::read(dir.path().join("quarantine").join(bad.to_string())).unwrap();
    assert!(kept.starts_with(format!("queue_id: {bad}\n").as_bytes()));
    assert!(
        kept.ends_with(b"\n\nfirst piece altdred piece"),
        "kept as stored"
    );
    assert_eq!(store.damage().quarantined, 1);
    drop(store);
    let (_, report) = open(&dir);
    assert_eq!(
        (report.messages, report.recovered),
        (1, 0),
        "not rebuilt: it is done"
    );
}

#[test]
fn an_unreferenced_body_file_that_may_hold_mail_is_quarantined_not_deleted() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"the only copy"], &["a@x"], 1);
    let extent = store.meta(id).unwrap().extents[0];
    block_on(store.flush()).unwrap();
    drop(store);
    let name = format!("{:016X}", extent.file);
    let path = dir.path().join(BODIES_DIR).join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[usize::try_from(extent.offset).unwrap()] ^= 0x80; // the piece fails its checksum
    std::fs::write(&path, bytes).unwrap();
    {
        let db = raw_db(&dir);
        db.remove(key::msg(id)).unwrap();
        db.flush().unwrap();
    }
    let (store, report) = open(&dir);
    assert_eq!(
        (report.messages, report.lost, report.quarantined_files),
        (0, 1, 1)
    );
    assert!(!path.exists());
    assert!(dir.path().join("quarantine").join(&name).exists());
    assert_eq!(store.damage().lost, 1);
    // An unframed body file (an old layout, or junk) is kept aside too.
    drop(store);
    let junk = dir.path().join(BODIES_DIR).join("00000000000000AA");
    std::fs::write(&junk, b"unframed bytes").unwrap();
    let (_, report) = open(&dir);
    assert_eq!(report.quarantined_files, 1);
    assert!(dir.path().join("quarantine/00000000000000AA").exists());
}

#[test]
fn queue_recover_rebuilds_while_running() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"runtime"], &["a@x", "b@y"], 1);
    // sled loses the message while the queue runs (as after a damaged replay).
    store.inner.db().unwrap().remove(key::msg(id)).unwrap();
    for k in keys_in(&store.inner.db().unwrap(), &key::rcpt_prefix(id)) {
        store.inner.db().unwrap().remove(k).unwrap();
    }
    store.inner.due.clear();
    store.inner.usage.set(Usage::default());
    let report = block_on(store.recover_journal()).unwrap();
    assert_eq!(report.recovered, 1);
    assert_eq!(ids(&store.due(u64::MAX, 10).unwrap()), vec![id]);
    assert_eq!(
        store.usage(),
        Usage {
            messages: 1,
            bytes: 7
        }
    );
    assert_eq!(body_of(&store, id), b"runtime");
    // Nothing more to do the second time.
    assert_eq!(block_on(store.recover_journal()).unwrap().recovered, 0);
}

#[test]
fn a_damaged_sled_conf_is_rewritten_and_the_queue_opens() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(&dir);
    let id = commit(&store, &[b"kept"], &["a@x"], 1);
    block_on(store.flush()).unwrap();
    drop(store);
    let conf = dir.path().join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    let original = bytes.clone();
    for at in [0, 3, 9] {
        bytes[at] ^= 0x24; // "segment_size" no longer reads
    }
    std::fs::write(&conf, &bytes).unwrap();
    let (store, report) = open(&dir);
    assert_eq!(report.messages, 1);
    assert_eq!(body_of(&store, id), b"kept");
    assert_eq!(
        std::fs::read(&conf).unwrap(),
        original,
        "rewritten as sled wrote it"
    );
    assert_eq!(
        std::fs::read(dir.path().join("conf.damaged")).unwrap(),
        bytes
    );
}
