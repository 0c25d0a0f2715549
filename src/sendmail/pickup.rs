//! The daemon's side of the maildrop: picks `*.msg` files up at start, on every poke and every
//! `PICKUP_INTERVAL`, queues each through `intake`, and deletes the file only after the commit
//! returned (durable). A file that is not a maildrop file is set aside as `*.bad`, never sent;
//! a full queue leaves the file for later. File system calls run on the blocking pool
//! (`smol::unblock`), never on the executor's thread.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use futures_lite::AsyncReadExt;
use log::{debug, error, warn};

use super::{MAGIC, MAILDROP};
use crate::intake::{Envelope, Intake, IntakeError, Source};
use crate::shared::Shared;
use crate::store::{QueueId, StoreError};

/// How often the daemon looks into the maildrop without a poke.
const PICKUP_INTERVAL: Duration = Duration::from_secs(5);
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
    let max_recipients = shared.config().max_recipients;
    loop {
        pickup(shared.intake(), &dir, max_recipients).await;
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
    /// The file is not a maildrop file: set aside as `*.bad`.
    Bad(String),
    /// The queue is full: the file waits.
    QueueFull,
    Io(io::Error),
    Store(StoreError),
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
async fn pickup(intake: &Intake, dir: &Path, max_recipients: usize) {
    let owned = dir.to_owned();
    let names = match smol::unblock(move || listing(&owned)).await {
        Ok(names) => names,
        Err(e) => {
            debug!("maildrop {}: {e}", dir.display());
            return;
        }
    };
    for path in names {
        match ingest(intake, &path, max_recipients).await {
            Ok(id) => {
                let done = path.clone();
                if let Err(e) = smol::unblock(move || fs::remove_file(done)).await {
                    // Stored already: at worst it is stored again (at least once).
                    error!(
                        "maildrop: queue_id={id} stored but {} not removed: {e}",
                        path.display()
                    );
                }
            }
            Err(PickupError::Bad(reason)) => {
                let bad = path.with_extension("bad");
                error!(
                    "maildrop: {} is unusable ({reason}); moved to {}",
                    path.display(),
                    bad.display()
                );
                let (from, to) = (path.clone(), bad.clone());
                if let Err(e) = smol::unblock(move || fs::rename(from, to)).await {
                    error!("maildrop: cannot set {} aside: {e}", path.display());
                }
            }
            Err(PickupError::QueueFull) => {
                warn!(
                    "maildrop: queue full (queue.max_bytes); {} waits",
                    path.display()
                );
                return;
            }
            Err(PickupError::Io(e)) => {
                // Gone meanwhile (another pickup) or unreadable: try again later.
                debug!("maildrop: {}: {e}", path.display());
            }
            Err(PickupError::Store(e)) => {
                error!("maildrop: cannot store {}: {e}", path.display());
                return;
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
}

/// Opens `path` and reads its envelope (blocking: run on the blocking pool).
fn open(path: &Path, max_recipients: usize) -> Result<Opened, PickupError> {
    let file = File::open(path).map_err(PickupError::Io)?;
    let received_unix = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let mut reader = BufReader::new(file);
    let (sender, recipients) = read_envelope(&mut reader, max_recipients)?;
    Ok(Opened {
        reader,
        sender,
        recipients,
        received_unix,
    })
}

async fn ingest(
    intake: &Intake,
    path: &Path,
    max_recipients: usize,
) -> Result<QueueId, PickupError> {
    let owned = path.to_owned();
    let opened = smol::unblock(move || open(&owned, max_recipients)).await?;
    let mut submission = intake.open().map_err(PickupError::Store)?;
    let mut body = smol::Unblock::with_capacity(CHUNK, opened.reader);
    let mut eight_bit = false;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = body.read(&mut buf).await.map_err(PickupError::Io)?;
        if n == 0 {
            break;
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

/// The envelope lines up to the empty line.
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
