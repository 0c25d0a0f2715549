//! The test kit: one fake smarthost (`smarthost`, with the `link` that breaks the way to it and
//! the OAuth peers in `oauth`), one raw SMTP client (`client`), one PKI (`pki`), one runner for
//! the real binary (`process`, `config`, `command`), and the bounded waits every test uses. Plain
//! std and dev-dependencies only, so the integration suite (`tests/it`) and the crate's unit
//! tests can both include it (`#[path = ".../tests/kit/mod.rs"] mod kit;`). It never binds
//! anything but 127.0.0.1, never waits without a deadline, and never uses the relay's own SMTP
//! code.

// Test helpers may unwrap: a failed unwrap is a failed test (clippy.toml allows it in #[test]
// fns; this extends it to the helpers). Each includer uses a different part of the kit.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unused_imports)]

mod client;
mod command;
mod config;
mod link;
mod oauth;
mod pki;
mod process;
mod procfs;
mod settle;
mod smarthost;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

pub(crate) use client::*;
pub(crate) use command::*;
pub(crate) use config::*;
pub(crate) use link::*;
pub(crate) use oauth::*;
pub(crate) use pki::*;
pub(crate) use process::*;
pub(crate) use procfs::*;
pub(crate) use settle::*;
pub(crate) use smarthost::*;

/// `deadline` stretched by `OUTPOST_TEST_SLACK` (a factor, default 1): the one place where the
/// harness's deadlines grow for slow runs (the whole suite under qemu-user on a loaded machine).
/// Only deadlines for things that must happen go through it, so a slack never hides a failure;
/// it only makes a failing test wait longer before it says so.
pub(crate) fn slack(deadline: Duration) -> Duration {
    let factor = std::env::var("OUTPOST_TEST_SLACK")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|f| f.is_finite() && *f >= 1.0)
        .unwrap_or(1.0);
    deadline.mul_f64(factor)
}

/// Polls `cond` every `poll` until it holds or `deadline` (times the slack) passes; returns
/// whether it held. The number of polls is bounded by `slack(deadline) / poll + 1`.
pub(crate) fn wait_until(
    deadline: Duration,
    poll: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let end = Instant::now() + slack(deadline);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(poll);
    }
}

/// Makes a FIFO at `path` with permission bits `mode`: what a test puts where the relay will
/// read a file, to hold it there until the test opens the write end.
pub(crate) fn make_fifo(path: &std::path::Path, mode: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(mode),
        0,
    )
    .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

// Temp dirs

/// A per-test temporary directory, removed on drop (kept when the test panics, for inspection).
pub(crate) struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    pub(crate) fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("outpost-it-")
            .tempdir()
            .unwrap();
        Self { dir: Some(dir) }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.as_ref().map(tempfile::TempDir::path).unwrap()
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Recursive listing with sizes, for failure dumps.
    pub(crate) fn listing(&self) -> String {
        fn walk(dir: &Path, out: &mut String, depth: usize) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
            entries.sort_by_key(std::fs::DirEntry::file_name);
            for entry in entries {
                let path = entry.path();
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = writeln!(
                    out,
                    "{:indent$}{} ({len} bytes)",
                    "",
                    entry.file_name().to_string_lossy(),
                    indent = depth * 2
                );
                if path.is_dir() && depth < 4 {
                    walk(&path, out, depth + 1);
                }
            }
        }
        let mut out = String::new();
        walk(self.path(), &mut out, 0);
        out
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("test dir kept at {}", kept.display());
            }
        }
    }
}
