//! The daemon's side of the maildrop, which it never trusts: picks `*.msg` files up at start,
//! on every poke and every `PICKUP_INTERVAL`, queues each through `intake`, and deletes the
//! file only after the commit returned (durable). A file is opened only if it is a regular
//! file (never through a symlink, never a FIFO or device: `O_NOFOLLOW | O_NONBLOCK`, then
//! `fstat` of the opened file) owned by the daemon's user or root, writable by nobody else,
//! with one link; its envelope is validated as strictly as SMTP input and its size held to
//! `max_message_size`. A file that fails is logged at WARN once, listed as waiting (`mailq`,
//! `status`), and set aside into `maildrop/bad/` after `SET_ASIDE_AFTER`; it is never sent.
//! A full queue leaves the file for later. File system calls run on the blocking pool
//! (`smol::unblock`), never on the executor's thread.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures_lite::AsyncReadExt;
use log::{debug, error, warn};
use rustix::fs::{Mode, OFlags};

use super::{MAGIC, MAILDROP};
use crate::intake::{Envelope, IntakeError, Source};
use crate::message::rfc5322_date;
use crate::shared::Shared;
use crate::smtp::address::Mailbox;
use crate::store::{QueueId, StoreError};

/// How often the daemon looks into the maildrop without a poke.
const PICKUP_INTERVAL: Duration = Duration::from_secs(5);
/// How long a file the daemon cannot use stays in the maildrop (listed as waiting, for the
/// operator to fix its owner or mode) before it is moved to `maildrop/bad/`.
const SET_ASIDE_AFTER: Duration = Duration::from_secs(3600);
/// Where unusable files are set aside, inside the maildrop.
const BAD_DIR: &str = "bad";
/// Longest envelope line in a maildrop file.
const MAX_ENVELOPE_LINE: usize = 2048;
/// Body bytes per `Submission::add`.
const CHUNK: usize = 32 * 1024;

/// Picks up the maildrop at start, on every poke and every `PICKUP_INTERVAL`, until shutdown.
pub async fn pickup_loop(shared: Rc<Shared>) {
    let dir = shared.config().data_dir.join(MAILDROP);
    let created = dir.clone();
    if let Err(e) = smol::unblock(move || fs::create_dir_all(created)).await {
        error!("cannot create the maildrop {}: {e}", dir.display());
    }
    let mut waiting = Waiting::default();
    loop {
        pickup(&shared, &dir, &mut waiting).await;
        shared.set_maildrop_waiting(waiting.report());
        if shared
            .shutdown()
            .interrupts(PICKUP_INTERVAL, shared.maildrop().wait())
            .await
        {
            return;
        }
    }
}

/// Why a maildrop file was not stored.
pub(super) enum PickupError {
    /// The file must not or cannot be used: it waits, then is set aside. Never sent.
    Bad(String),
    /// The queue is full: the file waits.
    QueueFull,
    /// Gone meanwhile (another pickup): nothing to do.
    Gone,
    Io(io::Error),
    Store(StoreError),
}

/// The files the daemon could not use, with when it first saw each and why.
#[derive(Default)]
struct Waiting {
    files: HashMap<PathBuf, (Instant, String)>,
}

/// What `Waiting::note` makes of an unusable file.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Not seen before: say so (the one WARN).
    First,
    /// Seen, and waiting less than `SET_ASIDE_AFTER`.
    Again,
    /// Waited `SET_ASIDE_AFTER`: set it aside.
    Due,
}

impl Waiting {
    /// Records that `path` could not be used at `now` because of `reason`.
    fn note(&mut self, path: &Path, reason: &str, now: Instant) -> Seen {
        match self.files.get_mut(path) {
            None => {
                self.files.insert(path.to_owned(), (now, reason.to_owned()));
                Seen::First
            }
            Some((since, last)) => {
                reason.clone_into(last);
                if now.saturating_duration_since(*since) >= SET_ASIDE_AFTER {
                    Seen::Due
                } else {
                    Seen::Again
                }
            }
        }
    }

    /// `(file name, reason)` of each, sorted, for `mailq` and `status`.
    fn report(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self
            .files
            .iter()
            .map(|(path, (_, reason))| (file_name(path), reason.clone()))
            .collect();
        out.sort();
        out
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// What the daemon needs to know about a maildrop file before it reads a byte of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileFacts {
    pub regular: bool,
    pub uid: u32,
    pub mode: u32,
    pub nlink: u64,
    pub size: u64,
}

/// Whether files written by `owner` are trusted by a daemon running as `daemon_uid`: its own,
/// and root's (who can queue mail any way anyhow).
pub(super) fn owner_trusted(owner: u32, daemon_uid: u32) -> bool {
    owner == daemon_uid || owner == 0
}

/// Whether a maildrop file is one outpost's `sendmail` writes (pure).
pub(super) fn vet(facts: FileFacts, daemon_uid: u32, max_bytes: u64) -> Result<(), String> {
    if !facts.regular {
        return Err("not a regular file".into());
    }
    if !owner_trusted(facts.uid, daemon_uid) {
        return Err(format!(
            "owned by uid {}, neither the daemon's user (uid {daemon_uid}) nor root",
            facts.uid
        ));
    }
    if facts.mode & 0o022 != 0 {
        return Err(format!(
            "mode {:04o}: writable by group or others",
            facts.mode & 0o7777
        ));
    }
    if facts.nlink != 1 {
        return Err(format!("{} hard links", facts.nlink));
    }
    if facts.size > max_bytes {
        return Err(format!(
            "{} bytes, more than max_message_size allows",
            facts.size
        ));
    }
    Ok(())
}

/// The `*.msg` files in `dir`, oldest first (their names start with the time).
fn listing(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "msg"))
        .collect();
    names.sort();
    Ok(names)
}

/// Stores every `*.msg` file, oldest first; removes each only after its durable commit.
async fn pickup(shared: &Shared, dir: &Path, waiting: &mut Waiting) {
    let owned = dir.to_owned();
    let names = match smol::unblock(move || listing(&owned)).await {
        Ok(names) => names,
        Err(e) => {
            debug!("maildrop {}: {e}", dir.display());
            return;
        }
    };
    waiting.files.retain(|path, _| names.contains(path));
    for path in names {
        match ingest(shared, &path).await {
            Ok(id) => {
                waiting.files.remove(&path);
                let done = path.clone();
                if let Err(e) = smol::unblock(move || fs::remove_file(done)).await {
                    // Stored already: at worst it is stored again (at least once).
                    error!(
                        "maildrop: queue_id={id} stored but {} not removed: {e}",
                        path.display()
                    );
                }
            }
            Err(PickupError::Bad(reason)) => unusable(dir, path, reason, waiting).await,
            Err(PickupError::QueueFull) => {
                warn!(
                    "maildrop: queue full (queue.max_bytes); {} waits",
                    path.display()
                );
                return;
            }
            Err(PickupError::Gone) => {}
            Err(PickupError::Io(e)) => {
                let reason = format!("cannot be read: {e}");
                unusable(dir, path, reason, waiting).await;
            }
            Err(PickupError::Store(e)) => {
                error!("maildrop: cannot store {}: {e}", path.display());
                return;
            }
        }
    }
}

/// A file the daemon cannot use: WARN the first time, set aside after `SET_ASIDE_AFTER`.
async fn unusable(dir: &Path, path: PathBuf, reason: String, waiting: &mut Waiting) {
    match waiting.note(&path, &reason, Instant::now()) {
        Seen::First => warn!(
            "maildrop: {} is not sent: {reason}; it waits in the maildrop and is set aside to \
             {MAILDROP}/{BAD_DIR}/ after {}s",
            path.display(),
            SET_ASIDE_AFTER.as_secs()
        ),
        Seen::Again => {}
        Seen::Due => {
            let bad = dir.join(BAD_DIR);
            let to = bad.join(file_name(&path));
            let from = path.clone();
            let moved = smol::unblock(move || {
                fs::create_dir_all(&bad)?;
                fs::rename(from, to)
            })
            .await;
            match moved {
                Ok(()) => {
                    warn!(
                        "maildrop: {} set aside to {MAILDROP}/{BAD_DIR}/ ({reason})",
                        path.display()
                    );
                    waiting.files.remove(&path);
                }
                Err(e) => error!("maildrop: cannot set {} aside: {e}", path.display()),
            }
        }
    }
}

/// A maildrop file opened and its envelope read: the reader stands at the first body byte.
struct Opened {
    reader: BufReader<File>,
    sender: String,
    recipients: Vec<String>,
    received_unix: u64,
    uid: u32,
}

/// Opens `path` without following a symlink or blocking on a FIFO, vets what was opened and
/// reads its envelope (blocking: run on the blocking pool).
fn open(path: &Path, max_bytes: u64, max_recipients: usize) -> Result<Opened, PickupError> {
    let seen = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PickupError::Gone),
        Err(e) => return Err(PickupError::Io(e)),
    };
    let kind = seen.file_type();
    if !kind.is_file() {
        let what = if kind.is_symlink() {
            "a symlink"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_block_device() || kind.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(PickupError::Bad(what.into()));
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::NOENT) => return Err(PickupError::Gone),
        Err(e) => return Err(PickupError::Io(e.into())),
    };
    let meta = file.metadata().map_err(PickupError::Io)?;
    if (meta.dev(), meta.ino()) != (seen.dev(), seen.ino()) {
        return Err(PickupError::Bad("replaced while being opened".into()));
    }
    let facts = FileFacts {
        regular: meta.file_type().is_file(),
        uid: meta.uid(),
        mode: meta.mode(),
        nlink: meta.nlink(),
        size: meta.size(),
    };
    let envelope_room = u64::try_from((max_recipients + 2) * MAX_ENVELOPE_LINE).unwrap_or(u64::MAX);
    let daemon_uid = rustix::process::geteuid().as_raw();
    vet(facts, daemon_uid, max_bytes.saturating_add(envelope_room)).map_err(PickupError::Bad)?;
    let received_unix = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let mut reader = BufReader::new(file);
    let (sender, recipients) = read_envelope(&mut reader, max_recipients)?;
    let at = reader.stream_position().map_err(PickupError::Io)?;
    if facts.size.saturating_sub(at) > max_bytes {
        return Err(too_big(max_bytes));
    }
    Ok(Opened {
        reader,
        sender,
        recipients,
        received_unix,
        uid: facts.uid,
    })
}

async fn ingest(shared: &Shared, path: &Path) -> Result<QueueId, PickupError> {
    let config = shared.config();
    let (max_bytes, max_recipients) = (config.max_message_size, config.max_recipients);
    let owned = path.to_owned();
    let opened = smol::unblock(move || open(&owned, max_bytes, max_recipients)).await?;
    let intake = shared.intake();
    let mut submission = intake.open().map_err(PickupError::Store)?;
    let trace = crate::net::local_received(
        opened.uid,
        &config.hostname,
        &submission.id().to_string(),
        &rfc5322_date(opened.received_unix),
    );
    // Stored, not scanned: outpost's own trace header does not count towards `max_hops`.
    submission
        .append(trace.as_bytes())
        .map_err(PickupError::Store)?;
    let mut body = smol::Unblock::with_capacity(CHUNK, opened.reader);
    let (mut eight_bit, mut size) = (false, 0u64);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = body.read(&mut buf).await.map_err(PickupError::Io)?;
        if n == 0 {
            break;
        }
        size = size.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        if size > max_bytes {
            // The file grew after it was opened.
            submission.abort();
            return Err(too_big(max_bytes));
        }
        eight_bit |= !buf[..n].is_ascii();
        submission.add(&buf[..n]).map_err(PickupError::Store)?;
    }
    let (sender, recipients) = (opened.sender, opened.recipients);
    let smtputf8 = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
    let envelope = Envelope {
        sender,
        recipients,
        eight_bit,
        smtputf8,
        received_unix: opened.received_unix,
    };
    match intake.commit(submission, envelope, Source::Maildrop).await {
        Ok(id) => Ok(id),
        Err(IntakeError::QueueFull) => Err(PickupError::QueueFull),
        Err(IntakeError::Store(e)) => Err(PickupError::Store(e)),
        Err(e @ IntakeError::TooManyHops { .. }) => Err(PickupError::Bad(e.to_string())),
    }
}

fn too_big(max_bytes: u64) -> PickupError {
    PickupError::Bad(format!(
        "message larger than max_message_size ({max_bytes} bytes)"
    ))
}

/// The envelope lines up to the empty line, each address checked as SMTP checks it.
pub(super) fn read_envelope(
    reader: &mut impl BufRead,
    max_recipients: usize,
) -> Result<(String, Vec<String>), PickupError> {
    let mut line = Vec::new();
    let mut next = |reader: &mut dyn BufRead| -> Result<String, PickupError> {
        line.clear();
        reader
            .take(u64::try_from(MAX_ENVELOPE_LINE).unwrap_or(u64::MAX))
            .read_until(b'\n', &mut line)
            .map_err(PickupError::Io)?;
        if line.pop() != Some(b'\n') {
            return Err(PickupError::Bad("truncated envelope".into()));
        }
        String::from_utf8(line.clone()).map_err(|_| PickupError::Bad("envelope not UTF-8".into()))
    };
    if next(reader)? != MAGIC {
        return Err(PickupError::Bad(format!("first line is not {MAGIC:?}")));
    }
    let sender = next(reader)?
        .strip_prefix("from ")
        .map(str::to_owned)
        .ok_or_else(|| PickupError::Bad("no sender line".into()))?;
    if !sender.is_empty() && Mailbox::parse(&sender, true).is_none() {
        return Err(PickupError::Bad(format!(
            "sender {sender:?} is not an address"
        )));
    }
    let mut recipients = Vec::new();
    loop {
        let text = next(reader)?;
        if text.is_empty() {
            break;
        }
        let Some(rcpt) = text.strip_prefix("to ") else {
            return Err(PickupError::Bad(format!(
                "unexpected envelope line {text:?}"
            )));
        };
        if Mailbox::parse(rcpt, true).is_none() {
            return Err(PickupError::Bad(format!(
                "recipient {rcpt:?} is not an address"
            )));
        }
        if recipients.len() >= max_recipients {
            return Err(PickupError::Bad(format!(
                "more than {max_recipients} recipients"
            )));
        }
        recipients.push(rcpt.to_owned());
    }
    if recipients.is_empty() {
        return Err(PickupError::Bad("no recipients".into()));
    }
    Ok((sender, recipients))
}

#[cfg(test)]
#[path = "pickup_tests.rs"]
mod tests;
