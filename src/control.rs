//! The control socket: how `outpost queue`, `outpost status`, `outpost reload` and `outpost
//! sendmail` talk to the running daemon (sled locks its files, so the CLI never opens the store
//! itself).
//!
//! Protocol: the client connects to `data_dir/control.sock` (mode 0600), writes one request
//! line (`LIST`, `LIST JSON`, `LIST POSTFIX`, `SHOW <id>`, `FLUSH`, `DELETE <id>…`, `HOLD <id>…`,
//! `RELEASE <id>…`, `STATUS`, `STATUS JSON`, `POKE`, `RELOAD`), and reads the answer until the daemon closes: a first
//! line `OK` or `ERR`, then text for a human (or JSON for `LIST JSON`).
//!
//! This file holds both sides: `serve` (daemon, on the `LocalExecutor`) and `request`/
//! `client_main` (blocking, in the CLI process); `render` holds the pure renderers. It never
//! touches sled (only the `store` API) and never blocks the executor on a client.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use log::{debug, info};
use smol::LocalExecutor;

use crate::accept;
use crate::clock::QueueTime;
use crate::message;
use crate::shared::Shared;
use crate::store::{Damage, QueueId, Store, StoreError};

pub use self::mailq::{render_mailq, MAILQ_EMPTY, MAILQ_HEADER};
use self::render::with_link_wait;
pub use self::render::{
    json_str, render_list, render_list_json, render_show, render_status, MessageState,
    QueueSummary, JSON_VERSION,
};
pub use self::status_json::render_status_json;

mod mailq;
mod render;
mod status_json;

/// File name of the socket inside `data_dir`.
pub const SOCKET_NAME: &str = "control.sock";
/// Longest request line.
const MAX_REQUEST: usize = 4096;
/// A client gets this long to send its request and to read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a message `queue show` prints as its header section.
const MAX_SHOWN_HEADERS: usize = 64 * 1024;
/// How long the CLI waits for the daemon's answer (deleting many ids flushes each).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// sysexits(3) used by the client side.
pub const EX_UNAVAILABLE: u8 = 69;
const EX_SOFTWARE: u8 = 70;
const EX_TEMPFAIL: u8 = 75;
pub const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

/// `data_dir/control.sock`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// One request over the control socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    List {
        json: bool,
    },
    /// `mailq`, `sendmail -bp`: the queue in Postfix's format.
    Mailq,
    Show(String),
    Flush,
    Delete(Vec<String>),
    Hold(Vec<String>),
    Release(Vec<String>),
    Status,
    /// `status --json`.
    StatusJson,
    /// New files in the maildrop (`sendmail`).
    Poke,
    /// `outpost reload`: re-read the config (`ERR` with its problems when refused).
    Reload,
    /// What became of a message lately sent or bounced (`outpost test --send`).
    Outcome(String),
    /// `queue recover`: rebuild what the database lacks from the body files.
    Recover,
}

impl Request {
    /// The request line, without the line end.
    pub fn to_line(&self) -> String {
        let ids = |verb: &str, ids: &[String]| format!("{verb} {}", ids.join(" "));
        match self {
            Self::List { json: false } => "LIST".into(),
            Self::List { json: true } => "LIST JSON".into(),
            Self::Mailq => "LIST POSTFIX".into(),
            Self::Show(id) => format!("SHOW {id}"),
            Self::Flush => "FLUSH".into(),
            Self::Delete(list) => ids("DELETE", list),
            Self::Hold(list) => ids("HOLD", list),
            Self::Release(list) => ids("RELEASE", list),
            Self::Status => "STATUS".into(),
            Self::StatusJson => "STATUS JSON".into(),
            Self::Poke => "POKE".into(),
            Self::Reload => "RELOAD".into(),
            Self::Outcome(id) => format!("OUTCOME {id}"),
            Self::Recover => "RECOVER".into(),
        }
    }

    pub fn parse_line(line: &str) -> Option<Self> {
        let mut words = line.split_ascii_whitespace();
        let verb = words.next()?;
        let rest: Vec<String> = words.map(str::to_owned).collect();
        let request = match (verb, rest.as_slice()) {
            ("LIST", []) => Self::List { json: false },
            ("LIST", [json]) if json == "JSON" => Self::List { json: true },
            ("LIST", [postfix]) if postfix == "POSTFIX" => Self::Mailq,
            ("SHOW", [id]) => Self::Show(id.clone()),
            ("FLUSH", []) => Self::Flush,
            ("DELETE", ids) if !ids.is_empty() => Self::Delete(rest),
            ("HOLD", ids) if !ids.is_empty() => Self::Hold(rest),
            ("RELEASE", ids) if !ids.is_empty() => Self::Release(rest),
            ("STATUS", []) => Self::Status,
            ("STATUS", [json]) if json == "JSON" => Self::StatusJson,
            ("POKE", []) => Self::Poke,
            ("RELOAD", []) => Self::Reload,
            ("OUTCOME", [id]) => Self::Outcome(id.clone()),
            ("RECOVER", []) => Self::Recover,
            _ => return None,
        };
        Some(request)
    }
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub ok: bool,
    pub body: String,
}

impl Response {
    fn ok(body: String) -> Self {
        Self { ok: true, body }
    }

    fn err(body: String) -> Self {
        Self { ok: false, body }
    }

    fn to_wire(&self) -> Vec<u8> {
        let mut out = if self.ok { "OK\n" } else { "ERR\n" }.to_owned();
        out.push_str(&self.body);
        out.into_bytes()
    }

    fn from_wire(text: &str) -> Option<Self> {
        let (status, body) = text.split_once('\n').unwrap_or((text, ""));
        let ok = match status {
            "OK" => true,
            "ERR" => false,
            _ => return None,
        };
        Some(Self {
            ok,
            body: body.to_owned(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Daemon side

/// Binds `data_dir/control.sock` (a stale socket from a crash is replaced: the store's lock
/// already proved no other daemon uses this `data_dir`) with mode 0600.
pub fn bind(data_dir: &Path) -> io::Result<Async<UnixListener>> {
    let path = socket_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => debug!("removed a stale control socket {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    // Before this, the umask's mode lacks write for others (connect needs write permission).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Async::new(listener)
}

/// Accepts control clients until shutdown; one short task per client.
pub async fn serve(
    ex: Rc<LocalExecutor<'static>>,
    listener: Async<UnixListener>,
    shared: Rc<Shared>,
) {
    let accept = || listener.accept();
    accept::until_shutdown(
        shared.shutdown(),
        "control socket: ",
        accept,
        |(stream, _)| {
            let shared = shared.clone();
            ex.spawn(async move {
                let served = future::or(client(stream, &shared), async {
                    Timer::after(ANSWER_TIMEOUT).await;
                    Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
                });
                if let Err(e) = served.await {
                    debug!("control client: {e}");
                }
            })
            .detach();
        },
    )
    .await;
    let path = socket_path(&shared.config().data_dir);
    if let Err(e) = std::fs::remove_file(&path) {
        debug!("cannot remove {}: {e}", path.display());
    }
}

async fn client(mut stream: Async<UnixStream>, shared: &Shared) -> io::Result<()> {
    let line = future::or(read_request(&mut stream), async {
        Timer::after(CLIENT_TIMEOUT).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "no request"))
    })
    .await?;
    let response = match Request::parse_line(&line) {
        Some(request) => {
            if request != Request::Poke {
                debug!("control: {}", request.to_line());
            }
            answer(&request, shared).await
        }
        None => Response::err(format!("unknown request {line:?}\n")),
    };
    stream.write_all(&response.to_wire()).await?;
    stream.flush().await
}

async fn read_request(stream: &mut Async<UnixStream>) -> io::Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 256];
    loop {
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&byte[..n]);
        if buf.contains(&b'\n') || buf.len() > MAX_REQUEST {
            break;
        }
    }
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    buf.truncate(end.min(MAX_REQUEST));
    String::from_utf8(buf).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

async fn answer(request: &Request, shared: &Shared) -> Response {
    let now = shared.clock().now();
    match request {
        Request::List { json } => match shared.store().list() {
            Ok(mut messages) => {
                with_link_wait(&mut messages, shared.link().report().retry_at);
                if *json {
                    Response::ok(render_list_json(&messages, now))
                } else {
                    let holding = shared.config().smarthosts.is_empty();
                    let mut text = render_list(&messages, now, holding);
                    text.push_str(&shared.maildrop_waiting_text());
                    Response::ok(text)
                }
            }
            Err(e) => Response::err(format!("cannot read the queue: {e}\n")),
        },
        Request::Mailq => match shared.store().list() {
            Ok(messages) => {
                let link = shared.link().report();
                let down = link
                    .last_error
                    .as_deref()
                    .filter(|_| link.up == Some(false));
                // Maildrop files the daemon will not send come first: Postfix's parsers
                // (`check_mailq`) read the listing and its closing totals line.
                let mut text = shared.maildrop_waiting_text();
                text.push_str(&render_mailq(&messages, shared.link().delivering(), down));
                Response::ok(text)
            }
            Err(e) => Response::err(format!("cannot read the queue: {e}\n")),
        },
        Request::Show(id) => show(shared, id, now),
        Request::Flush => {
            shared.link().flush.notify();
            Response::ok("flush requested: the forwarder tries the smarthost now\n".into())
        }
        Request::Delete(ids) => per_id(shared, ids, "deleted", Action::Delete).await,
        Request::Hold(ids) => per_id(shared, ids, "held", Action::Hold).await,
        Request::Release(ids) => {
            let response = per_id(shared, ids, "released", Action::Release).await;
            shared.forwarder().notify();
            response
        }
        Request::Reload => match shared.reload() {
            Ok(summary) => Response::ok(summary),
            Err(problems) => Response::err(problems),
        },
        Request::Status => status(shared, now, false),
        Request::StatusJson => status(shared, now, true),
        Request::Poke => {
            shared.maildrop().notify();
            Response::ok(String::new())
        }
        Request::Outcome(text) => match parse_id(text).map(|id| shared.link().outcome(id)) {
            Some(Some(outcome)) => Response::ok(format!("{outcome}\n")),
            Some(None) => Response::err(format!("{text}: not sent or bounced lately\n")),
            None => Response::err(format!("{text}: not a queue id (16 hex digits)\n")),
        },
        Request::Recover => match shared.store().recover_journal().await {
            Ok(report) => {
                shared.forwarder().notify();
                Response::ok(format!(
                    "{} messages rebuilt from the body files, {} damaged (kept in quarantine/), \
                     {} damaged journal records skipped; {} messages queued\n",
                    report.recovered, report.lost, report.bad_records, report.messages
                ))
            }
            Err(e) => Response::err(format!("cannot recover: {e}\n")),
        },
    }
}

/// The queue counted by state (`status`, the metrics), reading one message at a time: a deep
/// queue is never held in memory whole.
pub fn queue_summary(store: &Store, now: QueueTime) -> Result<QueueSummary, StoreError> {
    let mut summary = QueueSummary::default();
    store.each(|message| summary.add(&message, now))?;
    Ok(summary)
}

/// `status`, as text or (`json`) as one JSON object.
fn status(shared: &Shared, now: QueueTime, json: bool) -> Response {
    let summary = match queue_summary(shared.store(), now) {
        Ok(summary) => summary,
        Err(e) => return Response::err(format!("cannot read the queue: {e}\n")),
    };
    let link = shared.link().report();
    let (usage, damage) = (shared.store().usage(), shared.store().damage());
    Response::ok(if json {
        render_status_json(&link, &summary, usage, damage)
    } else {
        let mut text = render_status(&link, &summary, usage, Some(now));
        if damage != Damage::default() {
            let _ = writeln!(
                text,
                "store damage: {} messages rebuilt from the body files, {} quarantined, {} lost \
                 (damaged, kept in quarantine/), {} damaged journal records",
                damage.recovered, damage.quarantined, damage.lost, damage.bad_records
            );
        }
        if shared.store().journal_pass_running() {
            text.push_str(
                "recovery: reading the body files for messages the database lacks (the queue \
                 runs meanwhile)\n",
            );
        }
        text.push_str(&shared.maildrop_waiting_text());
        text
    })
}

#[derive(Clone, Copy)]
enum Action {
    Delete,
    Hold,
    Release,
}

async fn per_id(shared: &Shared, ids: &[String], done: &str, action: Action) -> Response {
    let mut body = String::new();
    let mut ok = true;
    for text in ids {
        let Some(id) = parse_id(text) else {
            ok = false;
            let _ = writeln!(body, "{text}: not a queue id (16 hex digits)");
            continue;
        };
        let result = match action {
            Action::Delete => shared.store().delete(id).await,
            Action::Hold => shared.store().hold(id).await,
            Action::Release => shared.store().release(id).await,
        };
        match result {
            Ok(()) => {
                info!("control: queue_id={id} {done}");
                let _ = writeln!(body, "{id}: {done}");
            }
            Err(StoreError::NotFound(_)) => {
                ok = false;
                let _ = writeln!(body, "{id}: no such message");
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(body, "{id}: {e}");
            }
        }
    }
    Response { ok, body }
}

fn parse_id(text: &str) -> Option<QueueId> {
    let hex = text.len() <= 16 && !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then(|| QueueId::parse(text)).flatten()
}

fn show(shared: &Shared, text: &str, now: QueueTime) -> Response {
    let Some(id) = parse_id(text) else {
        return Response::err(format!("{text}: not a queue id (16 hex digits)\n"));
    };
    let message = match shared.store().get(id) {
        Ok(mut message) => {
            with_link_wait(
                std::slice::from_mut(&mut message),
                shared.link().report().retry_at,
            );
            message
        }
        Err(e) => return Response::err(format!("{e}\n")),
    };
    let history = match shared.store().history(id) {
        Ok(history) => history,
        Err(e) => return Response::err(format!("{e}\n")),
    };
    let headers = match header_section(shared, id) {
        Ok(headers) => headers,
        Err(e) => format!("(headers unreadable: {e})\n"),
    };
    let holding = shared.config().smarthosts.is_empty();
    Response::ok(render_show(&message, &history, &headers, now, holding))
}

/// The stored message's header section, bounded by `MAX_SHOWN_HEADERS`.
fn header_section(shared: &Shared, id: QueueId) -> Result<String, StoreError> {
    let bytes = message::read_section(shared.store().body_chunks(id)?, MAX_SHOWN_HEADERS)?;
    Ok(String::from_utf8_lossy(&bytes).replace("\r\n", "\n"))
}

// ---------------------------------------------------------------------------------------------
// Client side (blocking; the CLI process)

/// Why a request did not get an answer.
#[derive(Debug)]
pub enum ClientError {
    /// No socket, or nobody listening on it.
    NotRunning(PathBuf, io::Error),
    /// No socket yet, but process `pid` holds the queue's database: the daemon is opening and
    /// recovering it (the control socket is made once it is open).
    Starting(u32),
    /// The socket is there but this user may not connect (the daemon runs as another user).
    PermissionDenied(PathBuf, io::Error),
    Io(io::Error),
    Protocol(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotRunning(path, e) => write!(
                f,
                "the outpost daemon is not running (control socket {}: {e})",
                path.display()
            ),
            Self::Starting(pid) => write!(
                f,
                "the outpost daemon (pid {pid}) is starting: it is opening its queue; try again \
                 in a moment"
            ),
            Self::PermissionDenied(path, e) => write!(
                f,
                "permission denied on the control socket {} ({e}): run this as the daemon's \
                 user or root",
                path.display()
            ),
            Self::Io(e) => write!(f, "control socket: {e}"),
            Self::Protocol(e) => write!(f, "control socket: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Sends one request to the daemon whose `data_dir` is given and waits (bounded) for the
/// answer.
pub fn request(data_dir: &Path, request: &Request) -> Result<Response, ClientError> {
    let path = socket_path(data_dir);
    let mut stream = UnixStream::connect(&path).map_err(|e| connect_error(data_dir, &path, e))?;
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .map_err(ClientError::Io)?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(ClientError::Io)?;
    stream
        .write_all(format!("{}\n", request.to_line()).as_bytes())
        .map_err(ClientError::Io)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(ClientError::Io)?;
    let text = String::from_utf8_lossy(&answer);
    Response::from_wire(&text)
        .ok_or_else(|| ClientError::Protocol(format!("unexpected answer {:?}", text.trim())))
}

/// Why `connect` failed: a permission problem is not an absent daemon, and a daemon still
/// opening its queue has no socket yet.
fn connect_error(data_dir: &Path, path: &Path, e: io::Error) -> ClientError {
    if e.kind() == io::ErrorKind::PermissionDenied {
        ClientError::PermissionDenied(path.to_owned(), e)
    } else if let Some(pid) = database_holder(data_dir) {
        ClientError::Starting(pid)
    } else {
        ClientError::NotRunning(path.to_owned(), e)
    }
}

/// The process holding the `flock` sled takes on `data_dir/db` (the running daemon), read from
/// `/proc/locks`: looking never takes the lock, so it cannot stop a daemon starting meanwhile.
fn database_holder(data_dir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(data_dir.join("db")).ok()?;
    let dev = meta.dev();
    // Linux's dev_t encoding, as /proc/locks prints it (`%02x:%02x:%lu`).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let file = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, at, ..] if *at == file => pid.parse().ok(),
            _ => None,
        }
    })
}

/// The exit code of a request that got no answer.
fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::NotRunning(..) => EX_UNAVAILABLE,
        ClientError::Starting(_) => EX_TEMPFAIL,
        ClientError::PermissionDenied(..) => EX_NOPERM,
        ClientError::Io(_) | ClientError::Protocol(_) => EX_SOFTWARE,
    }
}

/// Runs a `queue`/`status`/`reload` command: prints the answer; returns the exit code (0 ok,
/// 1 the daemon refused part of it, 78 it refused the config to reload, 69 the daemon is not
/// running, 75 it is still opening its queue, 70 the socket misbehaved, 77 this user may not use
/// the control socket).
pub fn client_main(data_dir: &Path, req: &Request) -> u8 {
    match request(data_dir, req) {
        Ok(response) => {
            let mut stdout = io::stdout();
            let mut stderr = io::stderr();
            let sink: &mut dyn Write = if response.ok {
                &mut stdout
            } else {
                &mut stderr
            };
            let _ = sink.write_all(response.body.as_bytes());
            match (response.ok, req) {
                (true, _) => 0,
                (false, Request::Reload) => EX_CONFIG,
                (false, _) => 1,
            }
        }
        Err(e) => {
            eprintln!("outpost: {e}");
            exit_code(&e)
        }
    }
}

/// `outpost status`: `client_main` for `Request::Status`, naming the config file in use
/// (`config`) on its last line, or in the message when the daemon is not running.
pub fn status_main(data_dir: &Path, config: &str) -> u8 {
    match request(data_dir, &Request::Status) {
        Ok(response) if response.ok => {
            let mut stdout = io::stdout();
            let _ = writeln!(stdout, "{}config: {config}", response.body);
            0
        }
        Err(e @ ClientError::NotRunning(..)) => {
            eprintln!("outpost: {e} (config: {config})");
            EX_UNAVAILABLE
        }
        Ok(response) => {
            let _ = io::stderr().write_all(response.body.as_bytes());
            1
        }
        Err(e) => {
            eprintln!("outpost: {e}");
            exit_code(&e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_is_not_a_missing_daemon() {
        let (dir, path) = (Path::new("/x"), Path::new("/x/control.sock"));
        let denied = connect_error(dir, path, io::ErrorKind::PermissionDenied.into());
        assert!(matches!(denied, ClientError::PermissionDenied(..)));
        assert_eq!(exit_code(&denied), 77);
        assert!(denied.to_string().contains("permission denied"), "{denied}");
        let absent = connect_error(dir, path, io::ErrorKind::NotFound.into());
        assert!(matches!(absent, ClientError::NotRunning(..)));
        assert_eq!(exit_code(&absent), 69);
        assert!(absent.to_string().contains("not running"), "{absent}");
    }

    #[test]
    fn every_request_round_trips_through_its_line() {
        let ids = vec!["00000000000000AB".to_owned(), "1".to_owned()];
        for request in [
            Request::List { json: false },
            Request::List { json: true },
            Request::Mailq,
            Request::StatusJson,
            Request::Show("00000000000000AB".into()),
            Request::Flush,
            Request::Delete(ids.clone()),
            Request::Hold(ids.clone()),
            Request::Release(ids),
            Request::Status,
            Request::Poke,
            Request::Reload,
            Request::Outcome("00000000000000AB".into()),
            Request::Recover,
        ] {
            assert_eq!(Request::parse_line(&request.to_line()), Some(request));
        }
        assert_eq!(Request::parse_line("DELETE"), None);
        assert_eq!(Request::parse_line("LIST XML"), None);
        assert_eq!(Request::parse_line("RM 1"), None);
    }

    #[test]
    fn response_wire_form_round_trips() {
        let r = Response::err("x: no such message\n".into());
        let wire = String::from_utf8(r.to_wire()).unwrap();
        assert_eq!(Response::from_wire(&wire), Some(r));
        assert_eq!(Response::from_wire("HELLO\n"), None);
    }

    #[test]
    fn queue_ids_must_be_hex() {
        assert_eq!(parse_id("00000000000000ab"), Some(QueueId(0xab)));
        assert_eq!(parse_id("xyz"), None);
        assert_eq!(parse_id("+1"), None);
        assert_eq!(parse_id("00000000000000000001"), None);
    }
}
