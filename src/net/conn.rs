//! One SMTP session over a stream (a TCP connection, or a local submission over the Unix
//! socket, whose peer is a uid rather than an address): read → `ServerSession::handle_input` → write, with a
//! timeout on every read and write; streams the body into an intake submission in bounded
//! chunks (`message`) and commits it before the session may say 250. Holds no protocol logic:
//! every reply comes from the session (or, for shutdown, from one named reply here). Carries
//! out STARTTLS (dropping any plaintext pipelined behind it) and AUTH checks (with the failure
//! delay).

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_io::Timer;
use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use log::{debug, error, info, trace, warn};

use super::auth::{verify, AUTH_FAILURE_DELAY};
use crate::config::Config;
use crate::intake::{Reject, Submission};
use crate::shared::Shared;
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::smtp::server::{
    Awaiting, Credentials, MailVerdict, Next, ReplyBuffer, ServerSession, SessionParams,
};
use crate::store::MAX_EXTENT;
use crate::tls::MaybeTls;
use crate::wait;
use rustls::ServerConfig;

mod message;

/// Input buffer: commands are ≤ 512 octets (RFC 5321 §4.5.3.1.4) and the session guarantees
/// the unconsumed tail after `NeedInput` is shorter than that, so 4 KiB always has room.
const INPUT_BUF: usize = 4096;
/// How long a session may keep the one thread, reading input that is always ready, before it
/// yields it to the other sessions (see `fill`).
const TURN: Duration = Duration::from_millis(1);
/// Body piece handed to the store: `MAX_EXTENT`, so every piece but the last is a whole one and
/// a body of up to `INLINE_EXTENTS` × 32 KiB keeps its extents inside its `msg/` record (a
/// 100 KiB message cut at 24 KiB would take five pieces, five `part/` records, and sled holds
/// each in memory while the message is queued).
const MAX_CHUNK: usize = MAX_EXTENT;
/// The body buffer's most: one `handle_input` call adds at most 2 × `INPUT_BUF` (bare LF
/// becomes CRLF) to fewer than `MAX_CHUNK` octets before a whole piece is taken off.
const BODY_BUF: usize = MAX_CHUNK + 2 * INPUT_BUF;

/// Longest wait for a clean close (TLS close_notify) after the session said `Close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a session begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Opening {
    /// With the session's 220 banner.
    Greet,
    /// A `listen_tls` port (RFC 8314): the TLS handshake, then the banner.
    TlsThenGreet,
    /// The banner is on the wire already (the daemon greets early while the queue opens): the
    /// session answers the client's first command without sending it again.
    Greeted,
}

/// Drives one session to its end; never panics on peer input, logs how it ended.
pub(super) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    params: SessionParams,
    (id, peer): (u64, Peer),
    shared: &Shared,
    opening: Opening,
) {
    let tag = Tag { id, peer };
    let early = match opening {
        Opening::Greeted => " greeted_early=true",
        Opening::Greet | Opening::TlsThenGreet => "",
    };
    debug!(
        "{tag} connected relay_allowed={}{early}",
        params.relay_allowed
    );
    let mut stream = MaybeTls::Plain(stream);
    // The session keeps the config (and TLS certificate) it started with across a reload.
    let (config, tls) = (shared.config(), shared.tls());
    if opening == Opening::TlsThenGreet {
        if let Err(e) = handshake(&mut stream, tls.as_ref(), &config).await {
            info!("{tag} TLS handshake failed: {e}");
            return;
        }
        debug!("{tag} TLS established ({})", stream.describe());
    }
    let mut conn = Conn {
        stream,
        session: ServerSession::new(params),
        shared,
        config,
        tls,
        tag,
        replies: ReplyBuffer::new(),
        body: Vec::new(),
        spool: SpoolState::Idle,
        received_unix: 0,
        input: [0; INPUT_BUF],
        len: 0,
        command_since: None,
        turn_began: Instant::now(),
    };
    let end = conn.drive(opening != Opening::Greeted).await;
    if matches!(end, End::Closed) {
        // TLS close_notify (or a TCP half-close), so the client sees a clean end; bounded.
        let stream = &mut conn.stream;
        future::or(
            async {
                let _ = stream.close().await;
            },
            async {
                Timer::after(CLOSE_TIMEOUT).await;
            },
        )
        .await;
    }
    let in_body = conn.session.awaiting() == Awaiting::Body;
    if let SpoolState::Open(spool) = std::mem::take(&mut conn.spool) {
        spool.abort();
    }
    log_end(tag, end, in_body, conn.session.closed_for_errors());
}

/// The one line that says how a session ended.
fn log_end(tag: Tag, end: End, in_body: bool, closed_for_errors: bool) {
    match end {
        End::Closed if closed_for_errors => {
            warn!("{tag} closed: too many errors; 421 4.7.0 sent");
        }
        End::Closed => debug!("{tag} closed"),
        End::PeerClosed if in_body => warn!("{tag} disconnected during DATA; message discarded"),
        End::PeerClosed => debug!("{tag} disconnected"),
        End::TimedOut(what) => warn!("{tag} timed out awaiting {what}; 421 sent"),
        End::Shutdown => info!("{tag} closed for shutdown"),
        End::Io(e) => info!("{tag} connection error: {e}"),
        End::PlaintextAfterStartTls(n) => warn!(
            "{tag} closed: {n} bytes of plaintext pipelined after STARTTLS (command injection, \
             CVE-2011-0411) were discarded"
        ),
        End::TlsFailed(e) => info!("{tag} STARTTLS handshake failed: {e}"),
        End::Internal(what) => error!("{tag} closed: {what}"),
    }
}

/// Who is at the other end of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Peer {
    /// A TCP client.
    Ip(IpAddr),
    /// A local submission over the Unix socket, by the user the kernel vouches for
    /// (SO_PEERCRED).
    Local { uid: u32 },
}

/// `session=<n> peer=<ip>` (or `peer=local`: its uid is in the `connected` and `status=queued`
/// lines), the prefix of every session log line.
#[derive(Clone, Copy)]
struct Tag {
    id: u64,
    peer: Peer,
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer {
            Peer::Ip(ip) => write!(f, "session={} peer={ip}", self.id),
            Peer::Local { .. } => write!(f, "session={} peer=local", self.id),
        }
    }
}

/// How a session ended.
enum End {
    /// The session said `Close` (QUIT, too many errors …).
    Closed,
    PeerClosed,
    TimedOut(&'static str),
    Shutdown,
    Io(io::Error),
    /// A broken invariant on our side.
    Internal(&'static str),
    /// The client sent bytes after STARTTLS before the handshake; they were dropped.
    PlaintextAfterStartTls(usize),
    TlsFailed(io::Error),
}

/// What a read raced against.
enum Wait {
    Read(io::Result<usize>),
    TimedOut,
    Shutdown,
}

/// Where the current message body goes. One per connection, inside the connection task's own
/// allocation: the open submission's bounded header buffers (`HeaderWatch`) sit inline rather
/// than in an allocation per message.
#[derive(Default)]
#[allow(clippy::large_enum_variant)]
enum SpoolState<'a> {
    /// No DATA in progress.
    #[default]
    Idle,
    Open(Submission<'a>),
    /// The store failed during this DATA: drain the body, then answer 451 (via `Failed`).
    Failed,
    /// `data_dir` was below its free-space reserve at DATA: drain, then answer 452 4.3.1.
    NoSpace,
}

struct Conn<'a, S> {
    stream: MaybeTls<S>,
    session: ServerSession,
    shared: &'a Shared,
    config: Rc<Config>,
    tls: Option<Arc<ServerConfig>>,
    tag: Tag,
    replies: ReplyBuffer,
    /// Decoded body octets not yet in the spool (< `BODY_BUF`).
    body: Vec<u8>,
    /// The message being received (with the header fields intake classifies it by).
    spool: SpoolState<'a>,
    received_unix: u64,
    input: [u8; INPUT_BUF],
    len: usize,
    /// When the wait for the current command began: the command timeout is a deadline for the
    /// whole command line, not for each read (a client sending an octet a second — slowloris —
    /// would otherwise hold a session, and one of `max_connections`, forever). Cleared when a
    /// reply is written (every command gets one; the session's line reader takes partial
    /// lines in, so consumed input is no sign of a complete command).
    command_since: Option<Instant>,
    /// When the session last waited for input, or yielded: its turn on the thread began then
    /// (see `fill`).
    turn_began: Instant,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Conn<'a, S> {
    /// Runs the session; with `greet`, its 220 banner first (without it, the banner is on the
    /// wire already).
    async fn drive(&mut self, greet: bool) -> End {
        if greet {
            let greeting = self.session.greeting();
            self.replies.push(&greeting);
        }
        match self.step_loop().await {
            Ok(()) => End::Closed,
            Err(end) => end,
        }
    }

    /// Feeds input to the session and carries out what it asks, until it closes.
    async fn step_loop(&mut self) -> Result<(), End> {
        loop {
            let before = self.body.len();
            // A body past a few KiB gets its whole buffer at once, not doubling past it.
            if before >= 2 * INPUT_BUF && self.body.capacity() < BODY_BUF {
                self.body.reserve_exact(BODY_BUF - before);
            }
            let step = self.session.handle_input(
                &self.input[..self.len],
                &mut self.replies,
                &mut self.body,
            );
            if let SpoolState::Open(submission) = &mut self.spool {
                submission.scan(&self.body[before..]);
            }
            self.discard(step.consumed);
            if self.body.len() >= MAX_CHUNK {
                self.spill_piece();
            }
            match step.next {
                Next::NeedInput => {
                    self.flush().await?;
                    self.fill().await?;
                }
                Next::FlushReplies => self.flush().await?,
                Next::BodyStart => {
                    self.flush().await?;
                    self.open_spool();
                }
                Next::BodyDiscarded => {
                    if let SpoolState::Open(spool) = std::mem::take(&mut self.spool) {
                        spool.abort();
                    }
                    self.body.clear();
                }
                Next::Commit(envelope) => {
                    let outcome = self.commit(&envelope).await;
                    // The commit waited for a sync: the others had their turn meanwhile.
                    self.turn_began = Instant::now();
                    // Idle sessions should not keep a chunk-sized buffer each.
                    self.body = Vec::new();
                    let reply = self.session.committed(outcome);
                    self.replies.push(&reply);
                    self.flush().await?;
                }
                Next::StartTls => self.start_tls().await?,
                Next::AuthCheck(credentials) => {
                    if self.auth_check(credentials).await? {
                        return Ok(());
                    }
                }
                Next::MailCheck(sender) => self.mail_check(&sender),
                Next::Close => {
                    self.flush().await?;
                    return Ok(());
                }
            }
        }
    }

    /// `Next::AuthCheck`: checks the password (failures wait `AUTH_FAILURE_DELAY`) and sends
    /// the session's reply; `true` when the session then closes (too many failures).
    async fn auth_check(&mut self, credentials: Credentials) -> Result<bool, End> {
        let verdict = verify(&self.config.users, &credentials);
        match &verdict {
            Some(user) => info!("{} authenticated user={user}", self.tag),
            None => {
                warn!("{} AUTH failed user={:?}", self.tag, credentials.username);
                Timer::after(AUTH_FAILURE_DELAY).await;
            }
        }
        drop(credentials);
        let next = self.session.auth_checked(verdict, &mut self.replies);
        self.flush().await?;
        Ok(matches!(next, Next::Close))
    }

    /// `Next::MailCheck`: counts the message against the sender's `[rate_limit]`.
    fn mail_check(&mut self, sender: &str) {
        let verdict = self.shared.intake().check_sender(sender);
        if let MailVerdict::RateExceeded { retry_after, .. } = verdict {
            self.shared.intake().count_reject(Reject::RateLimit);
            warn!(
                "{} status=deferred reason=\"sender rate limit\" from=<{}> retry_after={}s",
                self.tag,
                crate::logfmt::Escaped(sender),
                retry_after.as_secs().max(1)
            );
        }
        self.session.mail_checked(verdict, &mut self.replies);
    }

    /// RFC 3207 and the STARTTLS invariant: the 220 goes out in plaintext; anything the
    /// client sent behind STARTTLS before reading it is an injection attempt (or a broken
    /// client) and ends the connection unread. Then the handshake, and a fresh session state.
    async fn start_tls(&mut self) -> Result<(), End> {
        self.flush().await?;
        if self.len > 0 {
            let leftover = self.len;
            self.len = 0;
            return Err(End::PlaintextAfterStartTls(leftover));
        }
        handshake(&mut self.stream, self.tls.as_ref(), &self.config)
            .await
            .map_err(End::TlsFailed)?;
        debug!("{} TLS established ({})", self.tag, self.stream.describe());
        self.session.tls_established();
        Ok(())
    }

    /// Drops the first `consumed` input bytes, keeping the rest (pipelined commands).
    fn discard(&mut self, consumed: usize) {
        let consumed = consumed.min(self.len);
        self.input.copy_within(consumed..self.len, 0);
        self.len -= consumed;
    }

    /// Reads more input, racing the read against the RFC 5321 §4.5.3.2 timeout for what the
    /// session awaits, and (between commands) against shutdown.
    async fn fill(&mut self) -> Result<(), End> {
        let (deadline, what) = self.read_deadline()?;
        // An idle session (no partial command, not in DATA) is closed at shutdown; a session in
        // DATA gets to finish its message.
        let closable = what == "command" && self.len == 0;
        let shutdown = self.shared.shutdown();
        let buf = &mut self.input[self.len..];
        let stream = &mut self.stream;
        // Whether the read had to wait for input (see the end of this function).
        let waited = Cell::new(false);
        let mut reading = pin!(stream.read(buf));
        let read = future::poll_fn(|cx| {
            let poll = reading.as_mut().poll(cx);
            if poll.is_pending() {
                waited.set(true);
            }
            poll.map(Wait::Read)
        });
        let timer = async {
            Timer::at(deadline).await;
            Wait::TimedOut
        };
        let stop = async {
            if closable {
                shutdown.wait().await;
            } else {
                future::pending::<()>().await;
            }
            Wait::Shutdown
        };
        match future::or(read, future::or(stop, timer)).await {
            Wait::Read(Ok(0)) => Err(End::PeerClosed),
            Wait::Read(Ok(n)) => {
                self.len += n;
                self.end_of_read(waited.get()).await;
                Ok(())
            }
            Wait::Read(Err(e)) => Err(End::Io(e)),
            Wait::Shutdown => {
                self.replies.push(&shutting_down(&self.config.hostname));
                let _ = self.flush().await;
                Err(End::Shutdown)
            }
            Wait::TimedOut => {
                let reply = self.session.timed_out();
                self.replies.push(&reply);
                let _ = self.flush().await;
                Err(End::TimedOut(what))
            }
        }
    }

    /// When the wait for input times out, and what the session awaits (for the log line).
    /// Commands: one deadline per command line (see `command_since`). Body: the RFC 5321
    /// §4.5.3.2.6 data-block timeout, per read.
    fn read_deadline(&mut self) -> Result<(Instant, &'static str), End> {
        let timeouts = &self.config.timeouts;
        let due = match self.session.awaiting() {
            Awaiting::Command => {
                let since = *self.command_since.get_or_insert_with(Instant::now);
                (wait::deadline(since, timeouts.command), "command")
            }
            Awaiting::Body => (wait::deadline(Instant::now(), timeouts.data), "data"),
            Awaiting::Commit | Awaiting::AuthCheck | Awaiting::Closed => {
                return Err(End::Internal("session asked for input while not reading"));
            }
        };
        if self.len == INPUT_BUF {
            return Err(End::Internal(
                "input buffer full without a complete command",
            ));
        }
        Ok(due)
    }

    /// After a read that got input. One thread serves every session, and a read that finds
    /// input ready does not yield: a client whose input is always ready (a pipelining flood, a
    /// fast stream of commands) would keep every other session, and the listener, waiting for
    /// as long as it kept sending. So a session that has not `waited` for `TURN` gives the
    /// others a turn. Not after every read: a 100 KiB body would then be read in turns with
    /// every other body, and each reply would wait for all.
    async fn end_of_read(&mut self, waited: bool) {
        let now = Instant::now();
        if waited {
            self.turn_began = now;
        } else if now.duration_since(self.turn_began) >= TURN {
            future::yield_now().await;
            self.turn_began = Instant::now();
        }
    }

    /// Writes pending replies, bounded by the command timeout (a client that stops reading
    /// must not pin the session forever).
    async fn flush(&mut self) -> Result<(), End> {
        if self.replies.is_empty() {
            return Ok(());
        }
        self.command_since = None;
        trace!(
            "{} S: {:?}",
            self.tag,
            String::from_utf8_lossy(self.replies.as_bytes())
        );
        let timeout = self.config.timeouts.command;
        let bytes = self.replies.as_bytes();
        let stream = &mut self.stream;
        let written = future::or(
            async {
                let written = stream.write_all(bytes).await;
                // TLS buffers records; flush pushes them to the socket.
                Some(match written {
                    Ok(()) => stream.flush().await,
                    Err(e) => Err(e),
                })
            },
            async {
                Timer::after(timeout).await;
                None
            },
        )
        .await;
        self.replies.clear();
        match written {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(End::Io(e)),
            None => Err(End::TimedOut("the client to read our reply")),
        }
    }
}

/// The server side of a TLS handshake, bounded by the command timeout.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut MaybeTls<S>,
    tls: Option<&Arc<ServerConfig>>,
    config: &Config,
) -> io::Result<()> {
    let Some(tls) = tls else {
        return Err(io::Error::other("TLS is not configured"));
    };
    let timeout = config.timeouts.command;
    future::or(async { stream.accept(tls).await }, async {
        Timer::after(timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        ))
    })
    .await
}

/// RFC 5321 §3.8: 421 when the service is shutting down.
fn shutting_down(hostname: &str) -> Reply {
    Reply {
        code: 421,
        status: Some(EnhancedStatus {
            class: 4,
            subject: 3,
            detail: 2,
        }),
        text: Cow::Owned(format!("{hostname} Service shutting down, try again later")),
    }
}

/// Wall-clock seconds, for the Received: date only (queue ages use the queue clock).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
