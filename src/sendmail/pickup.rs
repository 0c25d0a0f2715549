//! The daemon's side of the maildrop: picks `*.msg` files up at start, on every poke and every
//! `PICKUP_INTERVAL`, stores each through `Store::spool`/`commit`, and deletes the file only
//! after the commit returned (durable). A file that is not a maildrop file is set aside as
//! `*.bad`, never sent; a full queue leaves the file for later.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use log::{debug, error, info, warn};

use super::{MAGIC, MAILDROP};
use crate::net::Ctx;
use crate::priority::Priority;
use crate::store::{MessageInfo, QueueId, StoreError};

/// How often the daemon looks into the maildrop without a poke.
const PICKUP_INTERVAL: Duration = Duration::from_secs(5);
/// Longest envelope line in a maildrop file.
const MAX_ENVELOPE_LINE: usize = 2048;
/// Body bytes per `Spool::append`.
const CHUNK: usize = 32 * 1024;

/// Picks up the maildrop at start, on every poke and every `PICKUP_INTERVAL`, until shutdown.
pub async fn pickup_loop(ctx: Rc<Ctx>) {
    let dir = ctx.config.data_dir.join(MAILDROP);
    if let Err(e) = fs::create_dir_all(&dir) {
        error!("cannot create the maildrop {}: {e}", dir.display());
    }
    loop {
        pickup(&ctx, &dir).await;
        if ctx
            .shutdown
            .interrupts(PICKUP_INTERVAL, ctx.maildrop.wait())
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

/// Stores every `*.msg` file, oldest first; removes each only after its durable commit.
async fn pickup(ctx: &Ctx, dir: &Path) {
    let mut names: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "msg"))
            .collect(),
        Err(e) => {
            debug!("maildrop {}: {e}", dir.display());
            return;
        }
    };
    names.sort();
    for path in names {
        match ingest(ctx, &path).await {
            Ok(id) => {
                ctx.accepted_one();
                if let Err(e) = fs::remove_file(&path) {
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
                if let Err(e) = fs::rename(&path, &bad) {
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

async fn ingest(ctx: &Ctx, path: &Path) -> Result<QueueId, PickupError> {
    let file = File::open(path).map_err(PickupError::Io)?;
    let received_unix = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let mut reader = BufReader::new(file);
    let (sender, recipients) = read_envelope(&mut reader, ctx.config.max_recipients)?;
    let mut spool = ctx.store.spool().map_err(PickupError::Store)?;
    let mut eight_bit = false;
    let mut headers = ctx.header_watch();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = reader.read(&mut buf).map_err(PickupError::Io)?;
        if n == 0 {
            break;
        }
        eight_bit |= !buf[..n].is_ascii();
        headers.feed(&buf[..n]);
        spool.append(&buf[..n]).map_err(PickupError::Store)?;
    }
    let smtputf8 = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
    let mut info = MessageInfo {
        sender: sender.clone(),
        recipients,
        eight_bit,
        smtputf8,
        received_unix,
        priority: Priority::Normal,
        coalesce: None,
    };
    ctx.classify(&mut info, headers.fields());
    let nrcpt = info.recipients.len();
    let size = spool.len();
    match spool.commit(info, ctx.clock.now()).await {
        Ok(Ok(id)) => {
            info!("maildrop queue_id={id} from=<{sender}> nrcpt={nrcpt} size={size} status=queued");
            Ok(id)
        }
        Ok(Err(_)) => Err(PickupError::QueueFull),
        Err(e) => Err(PickupError::Store(e)),
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
