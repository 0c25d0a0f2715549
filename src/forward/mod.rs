//! Delivery to the smarthost: one task that wakes on new mail, on the next due time, on a
//! flush request and at start, and pushes due messages over one connection.
//!
//! This file is the glue: sockets, timers and store calls. What the SMTP dialogue means lives in
//! `smtp::client` (sans-I/O); what to do about a reply lives in `outcome`; when to retry in
//! `schedule`; bounce messages in `dsn`. Never touches sled directly, never logs secrets.

use std::cell::Cell;
use std::collections::HashSet;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_io::Timer;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use log::{debug, error, info, warn};
use smol::net::TcpStream;

use crate::clock::{QueueClock, QueueTime};
use crate::net::tls::{self, MaybeTls};
use crate::smtp::body::BodyEncoder;
use crate::smtp::client::{
    ClientParams, ClientSession, ClientStep, DeliveryReport, Envelope, SessionFailure, Stage,
};
use crate::smtp::date::rfc5322_date;
use crate::smtp::reply::{parse_reply, Reply};
use crate::store::{MessageInfo, QueueId, QueuedMessage, RcptState, Store, StoreError};

use self::outcome::{classify, ForwardError, Outcome};
use self::schedule::Jitter;

pub use crate::smtp::client::{ClientCredentials, TlsPolicy};

pub mod dsn;
pub mod outcome;
pub mod schedule;

/// Retry policy (config `[queue]`).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub max_age: Duration,
}

/// Everything the forwarder needs from the config.
#[derive(Clone, Debug)]
pub struct ForwardParams {
    /// `host:port`; `None` holds all mail (no smarthost configured).
    pub smarthost: Option<String>,
    /// Our name in EHLO and in DSNs.
    pub hostname: String,
    pub policy: RetryPolicy,
    /// Max messages loaded per pass (the active window).
    pub window: usize,
    /// Timeout for connect and each reply (config `[timeouts] smarthost`).
    pub command_timeout: Duration,
    /// Timeout for the reply to the final dot (config `[timeouts] smarthost_data_end`, RFC 5321
    /// §4.5.3.2.6: 10 minutes).
    pub data_end_timeout: Duration,
    /// Config `[smarthost] tls`. `StartTls` and `Implicit` never fall back to plaintext.
    pub tls: TlsPolicy,
    /// Certificate roots for `StartTls`/`Implicit` (web PKI, or `ca_file`); required by them.
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    /// `[smarthost] username` + the password from `password_file`.
    pub credentials: Option<ClientCredentials>,
}

/// A level-triggered wake-up flag shared by the glue and the forwarder (single thread).
#[derive(Default)]
pub struct Wake {
    pending: Cell<bool>,
    event: event_listener::Event,
}

impl Wake {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }
    /// New mail committed, `queue flush`, or link-up.
    pub fn notify(&self) {
        self.pending.set(true);
        self.event.notify(usize::MAX);
    }
    /// Waits until notified (returns at once if a notification is pending), then clears it.
    pub async fn wait(&self) {
        loop {
            if self.pending.replace(false) {
                return;
            }
            let listener = self.event.listen();
            if self.pending.replace(false) {
                return;
            }
            listener.await;
        }
    }
}

/// Body bytes written to the smarthost per write.
const WRITE_CHUNK: usize = 32 * 1024;

/// Longest wait for the reply to QUIT.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Chunk size when spooling a DSN (the store keeps chunks ≤ 32 KiB, see SLED.md).
const SPOOL_CHUNK: usize = 32 * 1024;

/// Runs until `stop` is notified. Never returns an error: failures are logged and retried.
pub async fn run(
    store: Store,
    clock: QueueClock,
    params: ForwardParams,
    wake: Rc<Wake>,
    stop: Rc<Wake>,
) {
    let Some(smarthost) = params.smarthost.clone() else {
        warn!("no smarthost configured: mail is accepted and held in the queue");
        stop.wait().await;
        return;
    };
    let seed = clock.now() ^ wall_clock_secs().rotate_left(20) ^ u64::from(std::process::id());
    let mut forwarder = Forwarder {
        store,
        clock,
        params,
        smarthost,
        jitter: Jitter::new(seed),
        link_failures: 0,
        link_retry_at: 0,
        stalled_until: 0,
    };
    loop {
        let now = forwarder.clock.now();
        let next = forwarder.next_wake();
        let stopped = if next.is_some_and(|at| at <= now) {
            // A pass is cut short by stop: what was not recorded stays queued (at least once).
            future::or(
                async {
                    forwarder.pass().await;
                    false
                },
                async {
                    stop.wait().await;
                    true
                },
            )
            .await
        } else {
            idle(next.map(|at| Duration::from_millis(at - now)), &wake, &stop).await
        };
        if stopped {
            return;
        }
    }
}

/// Waits for new mail, the timer (`None`: no timer) or stop; true when stopped.
async fn idle(timer: Option<Duration>, wake: &Wake, stop: &Wake) -> bool {
    let stopped = async {
        stop.wait().await;
        true
    };
    let woken = async {
        wake.wait().await;
        false
    };
    let timed_out = async {
        match timer {
            Some(delay) => {
                Timer::after(delay).await;
            }
            None => future::pending::<()>().await,
        }
        false
    };
    future::or(stopped, future::or(woken, timed_out)).await
}

/// The forwarder task's state between passes.
struct Forwarder {
    store: Store,
    clock: QueueClock,
    params: ForwardParams,
    smarthost: String,
    jitter: Jitter,
    /// Consecutive site failures; 0 while the link is up.
    link_failures: u32,
    /// While the link is down: when to try again.
    link_retry_at: QueueTime,
    /// After local trouble (the store did not record, or claimed mail was due that it then did
    /// not return): no pass before this, so a broken store cannot make the task spin.
    stalled_until: QueueTime,
}

impl Forwarder {
    /// When the next pass should start: `None` waits for a wake-up only.
    fn next_wake(&self) -> Option<QueueTime> {
        let due = self.store.next_due()?.max(self.stalled_until);
        if self.link_failures > 0 {
            // Link down: new mail waits for the link's own retry time.
            return Some(due.max(self.link_retry_at));
        }
        Some(due)
    }

    /// Expires old mail, then delivers what is due over one connection.
    async fn pass(&mut self) {
        loop {
            let now = self.clock.now();
            let due = match self.store.due(now, self.params.window) {
                Ok(due) => due,
                Err(e) => {
                    error!("cannot read the queue: {e}");
                    self.stall(now);
                    return;
                }
            };
            let loaded = due.len();
            let mut live = Vec::with_capacity(loaded);
            for message in due {
                if schedule::is_expired(message.enqueued_at, now, self.params.policy.max_age) {
                    self.expire(&message).await;
                } else {
                    live.push(message);
                }
            }
            if live.is_empty() {
                // Everything loaded had expired: look behind the window again.
                if loaded > 0 {
                    continue;
                }
                // `next_due` said something was due but `due` found nothing.
                self.stall(now);
                return;
            }
            if let Err(e) = self.session(live).await {
                self.link_down(&e);
            }
            return;
        }
    }

    /// One connection: handshake, then every due message in turn, then QUIT.
    async fn session(&mut self, mut batch: Vec<QueuedMessage>) -> Result<(), ForwardError> {
        let client = ClientParams {
            helo_name: self.params.hostname.clone(),
            tls: self.params.tls,
            smarthost: self.smarthost.clone(),
            credentials: self.params.credentials.clone(),
        };
        let tls_config = self.params.tls_config.clone();
        let (mut conn, mut session) = open_session(
            &self.smarthost,
            client,
            tls_config,
            self.params.command_timeout,
        )
        .await?;
        self.link_up();
        let mut attempted = HashSet::new();
        loop {
            for message in batch {
                attempted.insert(message.id);
                if !self.deliver(&mut conn, &mut session, &message).await? {
                    // The smarthost closed the session (421): the rest waits like for any
                    // site failure.
                    let failure = session.failure().cloned().unwrap_or(SessionFailure::Closed);
                    return Err(failure.into());
                }
            }
            // Mail that arrived or fell due meanwhile goes on the same connection.
            let now = self.clock.now();
            batch = match self.store.due(now, self.params.window) {
                Ok(due) => due
                    .into_iter()
                    .filter(|m| !attempted.contains(&m.id))
                    .collect(),
                Err(e) => {
                    error!("cannot read the queue: {e}");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                break;
            }
        }
        if let ClientStep::Send(bytes) = session.quit() {
            // Best effort: the mail is already recorded, so a slow 221 must not hold up the
            // next pass for a whole command timeout.
            if conn.write(&bytes).await.is_ok() {
                let wait = self.params.command_timeout.min(QUIT_TIMEOUT);
                let _ = conn.read_reply_within(Stage::Quit, wait).await;
            }
        }
        // TLS close_notify, bounded like the QUIT.
        let stream = &mut conn.stream;
        let _ = with_timeout(QUIT_TIMEOUT, Stage::Quit, async {
            stream.close().await.map_err(ForwardError::Io)
        })
        .await;
        Ok(())
    }

    /// Sends one message on a ready session and records the outcome. `Ok(false)`: the session
    /// is over (the smarthost closed it), but the link is fine.
    async fn deliver(
        &mut self,
        conn: &mut Connection,
        session: &mut ClientSession,
        message: &QueuedMessage,
    ) -> Result<bool, ForwardError> {
        let pending: Vec<usize> = (0..message.recipients.len())
            .filter(|&i| {
                matches!(
                    message.recipients[i].state,
                    RcptState::Pending | RcptState::Deferred
                )
            })
            .collect();
        let envelope = Envelope {
            sender: message.info.sender.clone(),
            recipients: pending
                .iter()
                .map(|&i| message.recipients[i].address.clone())
                .collect(),
            size: message.size,
            eight_bit: message.info.eight_bit,
            smtputf8: message.info.smtputf8,
        };
        let store = self.store.clone();
        let id = message.id;
        let body = move || store.body_chunks(id);
        let timeout = self.params.data_end_timeout;
        let report = match transfer(conn, session, &envelope, body, timeout).await {
            Ok(Some(report)) => report,
            Ok(None) => {
                debug!("queue_id={} not sent: session closed", message.id);
                return Ok(false);
            }
            Err(e) => {
                // Lost in the middle of a transaction: this message is deferred (so one
                // message that breaks the link cannot block the queue), then the link goes
                // down.
                if let Some(report) = session.aborted(e.as_reply()) {
                    self.apply(message, &pending, &report).await;
                }
                return Err(e);
            }
        };
        self.apply(message, &pending, &report).await;
        Ok(session.is_ready())
    }

    /// Turns a report into per-recipient results, logs them, records them and bounces.
    async fn apply(&mut self, message: &QueuedMessage, pending: &[usize], report: &DeliveryReport) {
        let outcomes = classify(report);
        let mut results = Vec::with_capacity(outcomes.len());
        let mut bounced = Vec::new();
        let mut retry = false;
        for (&index, outcome) in pending.iter().zip(&outcomes) {
            let address = &message.recipients[index].address;
            let reply = outcome.reply().to_string();
            let (state, status) = match outcome {
                Outcome::Delivered(_) => (RcptState::Delivered, "sent"),
                Outcome::Retry(_) => (RcptState::Deferred, "deferred"),
                Outcome::Bounce(_) => (RcptState::Failed, "bounced"),
            };
            let line = format!(
                "queue_id={} to=<{address}> relay={} status={status} reply=\"{reply}\"",
                message.id, self.smarthost
            );
            match outcome {
                Outcome::Retry(_) => {
                    retry = true;
                    warn!("{line}");
                }
                Outcome::Bounce(reply) => {
                    info!("{line}");
                    bounced.push(dsn::FailedRecipient {
                        address: address.clone(),
                        status: dsn::status_of(&reply.to_string()),
                        diagnostic: reply.to_string(),
                    });
                }
                Outcome::Delivered(_) => info!("{line}"),
            }
            results.push((index, state, Some(reply)));
        }
        let attempts = message.attempts.saturating_add(1);
        let now = self.clock.now();
        let next = if retry {
            let delay =
                schedule::next_attempt(attempts, &self.params.policy, self.jitter.next_u32());
            schedule::after(now, delay)
        } else {
            now
        };
        if let Err(e) = self
            .store
            .record(message.id, &results, attempts, next)
            .await
        {
            error!(
                "queue_id={} cannot record delivery results: {e}",
                message.id
            );
            self.stall(now);
            return;
        }
        if !bounced.is_empty() {
            self.bounce(message, &bounced, Some(&self.smarthost.clone()))
                .await;
        }
    }

    /// Fails every pending recipient of a message queued longer than `max_age`.
    async fn expire(&mut self, message: &QueuedMessage) {
        let max_age = humantime::format_duration(self.params.policy.max_age);
        let mut results = Vec::new();
        let mut failed = Vec::new();
        for (index, recipient) in message.recipients.iter().enumerate() {
            if !matches!(recipient.state, RcptState::Pending | RcptState::Deferred) {
                continue;
            }
            let last = recipient.last_reply.as_deref().unwrap_or("none");
            let diagnostic =
                format!("delivery time expired: queued longer than {max_age}; last reply: {last}");
            info!(
                "queue_id={} to=<{}> status=bounced reply=\"{diagnostic}\"",
                message.id, recipient.address
            );
            failed.push(dsn::FailedRecipient {
                address: recipient.address.clone(),
                status: "4.4.7".into(),
                diagnostic: diagnostic.clone(),
            });
            results.push((index, RcptState::Failed, Some(diagnostic)));
        }
        let now = self.clock.now();
        if let Err(e) = self
            .store
            .record(message.id, &results, message.attempts, now)
            .await
        {
            error!("queue_id={} cannot record expiry: {e}", message.id);
            self.stall(now);
            return;
        }
        self.bounce(message, &failed, None).await;
    }

    /// Queues a DSN to the sender (never for the null sender: no bounce of a bounce).
    async fn bounce(
        &mut self,
        message: &QueuedMessage,
        failed: &[dsn::FailedRecipient],
        smarthost: Option<&str>,
    ) {
        if failed.is_empty() || !dsn::wants_dsn(&message.info.sender) {
            return;
        }
        let original = match self.header_bytes(message.id) {
            Ok(bytes) => bytes,
            Err(e) => {
                error!(
                    "queue_id={} cannot read headers for the DSN: {e}",
                    message.id
                );
                Vec::new()
            }
        };
        let now_unix = wall_clock_secs();
        let date = rfc5322_date(now_unix);
        let arrival = rfc5322_date(message.info.received_unix);
        let remote = smarthost.map(|s| format!("dns; {}", host_of(s)));
        let queue_id = message.id.to_string();
        let input = dsn::DsnInput {
            hostname: &self.params.hostname,
            date: &date,
            seed: message.id.0 ^ now_unix.rotate_left(32) ^ u64::from(self.jitter.next_u32()),
            sender: &message.info.sender,
            queue_id: &queue_id,
            arrival_date: Some(&arrival),
            remote_mta: remote.as_deref(),
            failed,
            original: &original,
        };
        let bytes = dsn::build(&input);
        let info = MessageInfo {
            sender: String::new(),
            recipients: vec![message.info.sender.clone()],
            eight_bit: !bytes.is_ascii(),
            smtputf8: !message.info.sender.is_ascii(),
            received_unix: now_unix,
        };
        match self.enqueue(&bytes, info).await {
            Ok(Ok(id)) => info!(
                "queue_id={} DSN queued as {id} to=<{}>",
                message.id, message.info.sender
            ),
            Ok(Err(_)) => error!("queue_id={} DSN not queued: queue full", message.id),
            Err(e) => error!("queue_id={} DSN not queued: {e}", message.id),
        }
    }

    async fn enqueue(
        &self,
        bytes: &[u8],
        info: MessageInfo,
    ) -> Result<Result<QueueId, crate::store::QueueFull>, StoreError> {
        let mut spool = self.store.spool()?;
        for chunk in bytes.chunks(SPOOL_CHUNK) {
            if let Err(e) = spool.append(chunk) {
                spool.abort();
                return Err(e);
            }
        }
        spool.commit(info, self.clock.now()).await
    }

    /// The start of the stored message, enough for its header section (bounded).
    fn header_bytes(&self, id: QueueId) -> Result<Vec<u8>, StoreError> {
        let mut bytes = Vec::new();
        for chunk in self.store.body_chunks(id)? {
            bytes.extend_from_slice(&chunk?);
            let end_of_headers = bytes.windows(4).any(|w| w == b"\r\n\r\n");
            if end_of_headers || bytes.len() > dsn::MAX_DSN_HEADERS {
                break;
            }
        }
        Ok(bytes)
    }

    /// Local trouble: hold off for `retry_min`.
    fn stall(&mut self, now: QueueTime) {
        self.stalled_until = schedule::after(now, self.params.policy.retry_min);
    }

    fn link_up(&mut self) {
        if self.link_failures == 0 {
            return;
        }
        info!(
            "smarthost {} is reachable again: sending the queue",
            self.smarthost
        );
        self.link_failures = 0;
        self.link_retry_at = 0;
        // Mail deferred during the outage goes now, on this connection.
        if let Err(e) = self.store.reschedule_all(self.clock.now()) {
            error!("cannot reschedule the queue: {e}");
        }
    }

    /// A site failure: all mail waits, no message's attempts are burned.
    fn link_down(&mut self, error: &ForwardError) {
        self.link_failures = self.link_failures.saturating_add(1);
        let delay = schedule::link_backoff(
            self.link_failures,
            &self.params.policy,
            self.jitter.next_u32(),
        );
        self.link_retry_at = schedule::after(self.clock.now(), delay);
        let next = humantime::format_duration(Duration::from_millis(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        ));
        if self.link_failures == 1 {
            warn!(
                "smarthost {} unavailable: {error}; holding mail, next try in {next}",
                self.smarthost
            );
        } else {
            debug!(
                "smarthost {} still unavailable: {error}; next try in {next}",
                self.smarthost
            );
        }
    }
}

/// Connects and runs the handshake (TLS for `Implicit`, greeting, EHLO/HELO, STARTTLS, AUTH)
/// until the session is ready. With a TLS policy, nothing but the handshake happens before
/// TLS is up: no plaintext fallback.
async fn open_session(
    smarthost: &str,
    params: ClientParams,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<(Connection, ClientSession), ForwardError> {
    let stream = with_timeout(timeout, Stage::Greeting, async {
        TcpStream::connect(smarthost)
            .await
            .map_err(ForwardError::Connect)
    })
    .await?;
    let mut conn = Connection {
        stream: MaybeTls::Plain(stream),
        input: Vec::new(),
        timeout,
    };
    if params.tls == TlsPolicy::Implicit {
        conn.start_tls(smarthost, tls_config.as_ref(), Stage::Greeting)
            .await?;
    }
    let mut session = ClientSession::new(params);
    let mut step = session.handle_reply(&conn.read_reply(Stage::Greeting).await?);
    loop {
        match step {
            // The bytes may be AUTH secrets: never logged.
            ClientStep::Send(bytes) => {
                conn.write(&bytes).await?;
                step = session.handle_reply(&conn.read_reply(Stage::Ehlo).await?);
            }
            ClientStep::StartTls => {
                conn.start_tls(smarthost, tls_config.as_ref(), Stage::StartTls)
                    .await?;
                step = session.tls_established();
            }
            ClientStep::Ready => return Ok((conn, session)),
            ClientStep::Failed(failure) => return Err(failure.into()),
            other => {
                debug!("unexpected step during the smarthost handshake: {other:?}");
                return Err(SessionFailure::Closed.into());
            }
        }
    }
}

/// Sends one message on a ready session: envelope, then the body from `open_body` (dot-stuffed
/// on the way), then the final dot. `Ok(None)`: the session was closed before the message
/// could start. On `Err`, the caller gets the partial report from `session.aborted`.
async fn transfer<I>(
    conn: &mut Connection,
    session: &mut ClientSession,
    envelope: &Envelope,
    open_body: impl FnOnce() -> Result<I, StoreError>,
    data_end_timeout: Duration,
) -> Result<Option<DeliveryReport>, ForwardError>
where
    I: Iterator<Item = Result<Vec<u8>, StoreError>>,
{
    let mut open_body = Some(open_body);
    let mut step = session.start_message(envelope);
    loop {
        let reply = match step {
            ClientStep::Send(bytes) => {
                conn.write(&bytes).await?;
                conn.read_reply(Stage::Mail).await?
            }
            ClientStep::Wait => conn.read_reply(Stage::Rcpt).await?,
            ClientStep::SendBody => {
                let Some(open_body) = open_body.take() else {
                    return Err(SessionFailure::Closed.into());
                };
                send_body(conn, open_body().map_err(store_io)?).await?;
                conn.read_reply_within(Stage::DataEnd, data_end_timeout)
                    .await?
            }
            ClientStep::MessageDone(report) => return Ok(Some(report)),
            ClientStep::Failed(_) | ClientStep::Ready | ClientStep::Done | ClientStep::StartTls => {
                return Ok(None);
            }
        };
        step = session.handle_reply(&reply);
    }
}

/// Streams body chunks, dot-stuffed, ending with `.\r\n`, in writes of about `WRITE_CHUNK`.
async fn send_body(
    conn: &mut Connection,
    chunks: impl Iterator<Item = Result<Vec<u8>, StoreError>>,
) -> Result<(), ForwardError> {
    let mut encoder = BodyEncoder::new();
    let mut out = Vec::with_capacity(WRITE_CHUNK + 1024);
    for chunk in chunks {
        let chunk = chunk.map_err(store_io)?;
        encoder.encode(&chunk, &mut out);
        if out.len() >= WRITE_CHUNK {
            conn.write(&out).await?;
            out.clear();
        }
    }
    encoder.finish(&mut out);
    conn.write(&out).await
}

/// The TCP stream to the smarthost with its unparsed input.
struct Connection {
    stream: MaybeTls<TcpStream>,
    input: Vec<u8>,
    timeout: Duration,
}

impl Connection {
    /// The client handshake, bounded by the command timeout; the certificate must be valid for
    /// the smarthost's host name (also the SNI).
    async fn start_tls(
        &mut self,
        smarthost: &str,
        config: Option<&Arc<rustls::ClientConfig>>,
        stage: Stage,
    ) -> Result<(), ForwardError> {
        // RFC 3207 §4.2 in reverse: a reply the smarthost sent behind its 220 in plaintext
        // could be an attacker's; refuse rather than read it inside TLS.
        if !self.input.is_empty() {
            return Err(ForwardError::Tls {
                message: format!("smarthost {smarthost} sent data after its 220 to STARTTLS"),
                transient: true,
            });
        }
        let (Some(config), Ok(name)) = (config, tls::server_name(smarthost)) else {
            return Err(ForwardError::Tls {
                message: format!("no usable TLS settings for smarthost {smarthost}"),
                transient: false,
            });
        };
        let stream = &mut self.stream;
        let handshake = with_timeout(self.timeout, stage, async {
            stream.connect(config, name).await.map_err(ForwardError::Io)
        })
        .await;
        match handshake {
            Ok(()) => {
                debug!(
                    "smarthost {smarthost}: TLS established ({})",
                    self.stream.describe()
                );
                Ok(())
            }
            Err(ForwardError::Io(e)) => {
                let failure = tls::describe_handshake_error(&e, smarthost);
                if failure.clock_wrong {
                    error!("the system clock is wrong: {}", failure.message);
                }
                Err(ForwardError::Tls {
                    message: failure.message,
                    transient: failure.clock_wrong || e.get_ref().is_none(),
                })
            }
            Err(other) => Err(other),
        }
    }

    async fn read_reply(&mut self, stage: Stage) -> Result<Reply, ForwardError> {
        self.read_reply_within(stage, self.timeout).await
    }

    async fn read_reply_within(
        &mut self,
        stage: Stage,
        timeout: Duration,
    ) -> Result<Reply, ForwardError> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.input).map_err(ForwardError::Protocol)? {
                self.input.drain(..used);
                debug!("smarthost: {reply}");
                return Ok(reply);
            }
            let mut buf = [0u8; 4096];
            let stream = &mut self.stream;
            let n = with_timeout(timeout, stage, async {
                stream.read(&mut buf).await.map_err(ForwardError::Io)
            })
            .await?;
            if n == 0 {
                let eof = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "smarthost closed the connection",
                );
                return Err(ForwardError::Io(eof));
            }
            self.input.extend_from_slice(&buf[..n]);
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ForwardError> {
        let stream = &mut self.stream;
        with_timeout(self.timeout, Stage::Data, async {
            stream.write_all(bytes).await.map_err(ForwardError::Io)?;
            stream.flush().await.map_err(ForwardError::Io)
        })
        .await
    }
}

/// Races `work` against a timer (the async-io timeout idiom).
async fn with_timeout<T>(
    timeout: Duration,
    stage: Stage,
    work: impl std::future::Future<Output = Result<T, ForwardError>>,
) -> Result<T, ForwardError> {
    future::or(work, async {
        Timer::after(timeout).await;
        Err(ForwardError::Timeout(stage))
    })
    .await
}

fn store_io(error: StoreError) -> ForwardError {
    ForwardError::Io(io::Error::other(error.to_string()))
}

/// `host` of `host:port` (for `Remote-MTA` and messages).
fn host_of(smarthost: &str) -> &str {
    smarthost
        .rsplit_once(':')
        .map_or(smarthost, |(host, _)| host)
}

/// Wall-clock Unix seconds: only for Date headers, never for queue decisions.
fn wall_clock_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
