//! Store tests, by topic: `lifecycle`, `schedule`, `recovery`, `durability` (group commit),
//! `layout` (body files and sled settings) and `model` (against a `BTreeMap`). This file holds
//! the helpers they share.

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
    store.inner.db().unwrap().scan_prefix(prefix).count()
}

fn keys_in(db: &sled::Db, prefix: &[u8]) -> Vec<sled::IVec> {
    db.scan_prefix(prefix).keys().map(Result::unwrap).collect()
}

fn ids(messages: &[QueuedMessage]) -> Vec<QueueId> {
    messages.iter().map(|m| m.id).collect()
}

fn body_files(dir: &TempDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join(BODIES_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

mod compact;
mod durability;
mod layout;
mod lifecycle;
mod model;
mod recovery;
mod schedule;
mod second_journal;
