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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_io::Timer;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use log::{debug, error, info, warn};
use smol::net::TcpStream;

use crate::clock::{QueueClock, QueueTime};
use crate::smtp::body::BodyEncoder;
use crate::smtp::client::{
    ClientParams, ClientSession, ClientStep, DeliveryReport, Envelope, SessionFailure, Stage,
};
use crate::smtp::date::rfc5322_date;
use crate::smtp::reply::{parse_reply, Reply};
use crate::store::{MessageInfo, QueueId, QueuedMessage, RcptState, Store, StoreError};

use self::outcome::{classify, ForwardError, Outcome};
use self::schedule::Jitter;

pub use crate::smtp::client::TlsPolicy;

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
    /// Config `[smarthost] tls`. Only `None` is wired; the others fail the link (never a
    /// plaintext fallback) until TLS support lands.
    pub tls: TlsPolicy,
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
        if next.is_some_and(|at| at <= now) {
            let stopped = future::or(
                async {
                    forwarder.pass().await;
                    false
                },
                async {
                    stop.wait().await;
                    true
                },
            )
            .await;
            if stopped {
                return;
            }
            continue;
        }
        let timer = async {
            match next {
                Some(at) => {
                    Timer::after(Duration::from_millis(at - now)).await;
                }
                None => future::pending::<()>().await,
            }
        };
        let stopped = future::or(
            async {
                stop.wait().await;
                true
            },
            future::or(
                async {
                    wake.wait().await;
                    false
                },
                async {
                    timer.await;
                    false
                },
            ),
        )
        .await;
        if stopped {
            return;
        }
    }
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
        if self.params.tls != TlsPolicy::None {
            // Never fall back to plaintext: without TLS support the link stays down.
            let reason =
                "TLS to the smarthost is not supported yet (set [smarthost] tls = \"none\")";
            return Err(ForwardError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                reason,
            )));
        }
        let client = ClientParams {
            helo_name: self.params.hostname.clone(),
            tls: self.params.tls,
            smarthost: self.smarthost.clone(),
        };
        let (mut conn, mut session) =
            open_session(&self.smarthost, client, self.params.command_timeout).await?;
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

/// Connects and runs the handshake (greeting, EHLO/HELO) until the session is ready.
async fn open_session(
    smarthost: &str,
    params: ClientParams,
    timeout: Duration,
) -> Result<(Connection, ClientSession), ForwardError> {
    let stream = with_timeout(timeout, Stage::Greeting, async {
        TcpStream::connect(smarthost)
            .await
            .map_err(ForwardError::Connect)
    })
    .await?;
    let mut conn = Connection {
        stream,
        input: Vec::new(),
        timeout,
    };
    let mut session = ClientSession::new(params);
    let mut step = session.handle_reply(&conn.read_reply(Stage::Greeting).await?);
    loop {
        match step {
            ClientStep::Send(bytes) => {
                conn.write(&bytes).await?;
                step = session.handle_reply(&conn.read_reply(Stage::Ehlo).await?);
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
    stream: TcpStream,
    input: Vec<u8>,
    timeout: Duration,
}

impl Connection {
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
mod tests {
    use std::net::{SocketAddr, TcpListener};
    use std::sync::{Arc, Mutex};

    use mailin_embedded::response::{NO_MAILBOX, OK};
    use mailin_embedded::{Handler, Response, Server};

    use super::*;

    /// What the independent upstream (mailin-embedded) saw.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    struct Received {
        from: String,
        to: Vec<String>,
        data: Vec<u8>,
        eight_bit: bool,
    }

    #[derive(Clone)]
    struct Upstream {
        received: Arc<Mutex<Vec<Received>>>,
        current: Received,
        /// Recipients answered with 550.
        reject: Vec<String>,
    }

    impl Handler for Upstream {
        fn mail(&mut self, _ip: std::net::IpAddr, _domain: &str, from: &str) -> Response {
            self.current = Received {
                from: from.to_owned(),
                ..Received::default()
            };
            OK
        }
        fn rcpt(&mut self, to: &str) -> Response {
            if self.reject.iter().any(|r| r == to) {
                return NO_MAILBOX;
            }
            self.current.to.push(to.to_owned());
            OK
        }
        fn data_start(&mut self, _: &str, _: &str, is8bit: bool, _: &[String]) -> Response {
            self.current.eight_bit = is8bit;
            OK
        }
        fn data(&mut self, buf: &[u8]) -> io::Result<()> {
            self.current.data.extend_from_slice(buf);
            Ok(())
        }
        fn data_end(&mut self) -> Response {
            self.received.lock().unwrap().push(self.current.clone());
            OK
        }
    }

    /// Starts an upstream on 127.0.0.1:0 (its thread lives until the test process ends).
    fn start_upstream(reject: &[&str]) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler = Upstream {
            received: Arc::clone(&received),
            current: Received::default(),
            reject: reject.iter().map(|r| (*r).to_owned()).collect(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = Server::new(handler);
        server
            .with_name("upstream.test")
            .with_tcp_listener(listener)
            .with_num_threads(2);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        (addr, received)
    }

    fn client_params(addr: SocketAddr) -> ClientParams {
        ClientParams {
            helo_name: "outpost.test".into(),
            tls: TlsPolicy::None,
            smarthost: addr.to_string(),
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(20);

    /// Body with lines that need dot-stuffing, a lone dot, 8-bit octets and no final CRLF
    /// trouble.
    const BODY: &[u8] = b"Subject: test\r\nFrom: cron@lan\r\n\r\n.leading dot\r\n..two dots\r\n\
        .\r\nd\xc3\xa9j\xc3\xa0 vu 8-bit\r\nlast line\r\n";

    fn chunks(body: &[u8], size: usize) -> impl Iterator<Item = Result<Vec<u8>, StoreError>> {
        body.chunks(size)
            .map(|c| Ok(c.to_vec()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn transfer_is_byte_exact_through_an_independent_upstream() {
        let (addr, received) = start_upstream(&[]);
        smol::block_on(async {
            let (mut conn, mut session) =
                open_session(&addr.to_string(), client_params(addr), TIMEOUT)
                    .await
                    .unwrap();
            for (i, chunk_size) in [7, BODY.len()].into_iter().enumerate() {
                let envelope = Envelope {
                    sender: format!("cron{i}@lan"),
                    recipients: vec!["a@example.org".into(), "b@example.org".into()],
                    size: u64::try_from(BODY.len()).unwrap(),
                    eight_bit: true,
                    smtputf8: false,
                };
                let body = || Ok(chunks(BODY, chunk_size));
                let report = transfer(&mut conn, &mut session, &envelope, body, TIMEOUT)
                    .await
                    .unwrap()
                    .unwrap();
                let outcomes = classify(&report);
                assert!(matches!(
                    outcomes[..],
                    [Outcome::Delivered(_), Outcome::Delivered(_)]
                ));
            }
            assert_eq!(session.quit(), ClientStep::Send(b"QUIT\r\n".to_vec()));
        });
        let received = received.lock().unwrap();
        assert_eq!(received.len(), 2, "two messages on one connection");
        for (i, message) in received.iter().enumerate() {
            assert_eq!(message.from, format!("cron{i}@lan"));
            assert_eq!(message.to, ["a@example.org", "b@example.org"]);
            assert!(message.eight_bit, "BODY=8BITMIME sent");
            assert_eq!(
                message.data,
                BODY,
                "{:?}",
                String::from_utf8_lossy(&message.data)
            );
        }
    }

    #[test]
    fn one_rejected_recipient_does_not_stop_the_others() {
        let (addr, received) = start_upstream(&["nobody@example.org"]);
        let report = smol::block_on(async {
            let (mut conn, mut session) =
                open_session(&addr.to_string(), client_params(addr), TIMEOUT)
                    .await
                    .unwrap();
            let envelope = Envelope {
                sender: "cron@lan".into(),
                recipients: vec!["nobody@example.org".into(), "b@example.org".into()],
                size: 10,
                eight_bit: false,
                smtputf8: false,
            };
            let body = || Ok(chunks(b"Subject: x\r\n\r\nhi\r\n", 64));
            transfer(&mut conn, &mut session, &envelope, body, TIMEOUT)
                .await
                .unwrap()
                .unwrap()
        });
        let outcomes = classify(&report);
        assert!(
            matches!(&outcomes[0], Outcome::Bounce(r) if r.code == 550),
            "{outcomes:?}"
        );
        assert!(
            matches!(&outcomes[1], Outcome::Delivered(_)),
            "{outcomes:?}"
        );
        let received = received.lock().unwrap();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].to, ["b@example.org"]);
    }

    #[test]
    fn unreachable_smarthost_is_a_transient_connect_failure() {
        // Bind then drop: nothing listens on this port any more.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let result = smol::block_on(open_session(
            &addr.to_string(),
            client_params(addr),
            TIMEOUT,
        ));
        let Err(error) = result else {
            panic!("connected to a closed port");
        };
        assert!(matches!(error, ForwardError::Connect(_)), "{error}");
        assert!(error.is_transient());
    }

    #[test]
    fn silent_smarthost_times_out_at_the_greeting() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let result = smol::block_on(open_session(
            &addr.to_string(),
            client_params(addr),
            Duration::from_millis(200),
        ));
        drop(listener);
        let Err(error) = result else {
            panic!("a silent server produced a session");
        };
        assert!(
            matches!(error, ForwardError::Timeout(Stage::Greeting)),
            "{error}"
        );
    }

    // ---- forward::run end to end, with the real store ----

    use crate::store::StoreOptions;

    fn forward_params(smarthost: SocketAddr, retry_min: Duration) -> ForwardParams {
        ForwardParams {
            smarthost: Some(smarthost.to_string()),
            hostname: "outpost.test".into(),
            policy: RetryPolicy {
                retry_min,
                retry_max: retry_min * 4,
                max_age: Duration::from_secs(86_400),
            },
            window: 16,
            command_timeout: TIMEOUT,
            data_end_timeout: TIMEOUT,
            tls: TlsPolicy::None,
        }
    }

    fn open_store(dir: &std::path::Path) -> Store {
        let options = StoreOptions {
            cache_bytes: 1 << 20,
            flush_every_ms: None,
            max_bytes: 1 << 30,
        };
        let store = Store::open(dir, options).unwrap();
        store.recover().unwrap();
        store
    }

    async fn enqueue(store: &Store, clock: &QueueClock, sender: &str, to: &[&str]) -> QueueId {
        let mut spool = store.spool().unwrap();
        for chunk in BODY.chunks(10) {
            spool.append(chunk).unwrap();
        }
        let info = MessageInfo {
            sender: sender.into(),
            recipients: to.iter().map(|r| (*r).to_owned()).collect(),
            eight_bit: true,
            smtputf8: false,
            received_unix: 1_795_466_324,
        };
        spool.commit(info, clock.now()).await.unwrap().unwrap()
    }

    /// Polls `done` every 20 ms, at most 500 times (10 s), on the executor's timer.
    async fn wait_until(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if done() {
                return true;
            }
            Timer::after(Duration::from_millis(20)).await;
        }
        done()
    }

    /// The queued DSN (null sender), once the forwarder has tried it: mailin-embedded refuses
    /// `MAIL FROM:<>` (its parser needs a non-empty path), so the DSN ends up failed, which
    /// also shows that a failed bounce is never bounced again.
    fn tried_dsn(store: &Store) -> Option<QueuedMessage> {
        let list = store.list().ok()?;
        list.into_iter().find(|m| {
            m.info.sender.is_empty() && m.recipients.iter().all(|r| r.state == RcptState::Failed)
        })
    }

    #[test]
    fn run_forwards_byte_exact_and_bounces_a_rejected_recipient() {
        let (addr, received) = start_upstream(&["nobody@example.org"]);
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let clock = QueueClock::new(store.clock_base());
        let ex = smol::LocalExecutor::new();
        let (id, dsn) = smol::block_on(ex.run(async {
            let to = ["a@example.org", "nobody@example.org"];
            let id = enqueue(&store, &clock, "cron@lan", &to).await;
            let (wake, stop) = (Wake::new(), Wake::new());
            let params = forward_params(addr, Duration::from_millis(50));
            let task = ex.spawn(run(
                store.clone(),
                clock,
                params,
                Rc::clone(&wake),
                Rc::clone(&stop),
            ));
            wake.notify();
            wait_until(|| tried_dsn(&store).is_some()).await;
            stop.notify();
            task.await;
            (id, tried_dsn(&store))
        }));
        let received = received.lock().unwrap();
        assert_eq!(received.len(), 1, "upstream got {received:?}");
        assert_eq!(received[0].from, "cron@lan");
        assert_eq!(received[0].to, ["a@example.org"]);
        assert_eq!(received[0].data, BODY);
        // The original stays listed as failed for the rejected recipient, with the reply.
        let message = store.get(id).unwrap();
        assert_eq!(message.recipients[0].state, RcptState::Delivered);
        let failed = &message.recipients[1];
        assert_eq!(failed.state, RcptState::Failed);
        assert!(
            failed
                .last_reply
                .as_deref()
                .is_some_and(|r| r.starts_with("550")),
            "{failed:?}"
        );
        // The DSN: from the null sender to the original sender, naming the failed recipient.
        let dsn = dsn.expect("a DSN was queued and tried");
        assert_eq!(dsn.info.recipients, ["cron@lan"]);
        let body: Vec<u8> = store
            .body_chunks(dsn.id)
            .unwrap()
            .flat_map(Result::unwrap)
            .collect();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("\r\nTo: <cron@lan>\r\n"), "{text}");
        assert!(
            text.contains("Final-Recipient: rfc822; nobody@example.org\r\n"),
            "{text}"
        );
        assert!(text.contains("Diagnostic-Code: smtp; 550 "), "{text}");
        assert!(
            text.contains("Subject: test\r\n"),
            "original headers returned: {text}"
        );
        // No bounce of the bounce: the original and the DSN are all there is.
        assert_eq!(store.list().unwrap().len(), 2);
    }

    #[test]
    fn smarthost_down_burns_no_attempts_and_link_up_drains_the_queue() {
        // The smarthost's port accepts connections and closes them at once (a site failure)
        // until the upstream takes the same listener over.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let refuser = std::thread::spawn(move || {
            for _ in 0..3 {
                let (stream, _) = listener.accept().unwrap();
                drop(stream);
            }
            listener
        });
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let clock = QueueClock::new(store.clock_base());
        let ex = smol::LocalExecutor::new();
        let received = Arc::new(Mutex::new(Vec::new()));
        let received_in_test = Arc::clone(&received);
        let delivered = smol::block_on(ex.run(async {
            let first = enqueue(&store, &clock, "cron@lan", &["a@example.org"]).await;
            let second = enqueue(&store, &clock, "ups@lan", &["b@example.org"]).await;
            let (wake, stop) = (Wake::new(), Wake::new());
            let params = forward_params(addr, Duration::from_millis(30));
            let task = ex.spawn(run(
                store.clone(),
                clock,
                params,
                Rc::clone(&wake),
                Rc::clone(&stop),
            ));
            wake.notify();
            let three_failures = wait_until(|| refuser.is_finished()).await;
            assert!(three_failures, "the forwarder did not retry the link");
            for id in [first, second] {
                assert_eq!(
                    store.get(id).unwrap().attempts,
                    0,
                    "site failures burn no attempts"
                );
            }
            let listener = refuser.join().unwrap();
            let handler = Upstream {
                received: received_in_test,
                current: Received::default(),
                reject: Vec::new(),
            };
            let mut server = Server::new(handler);
            server
                .with_name("upstream.test")
                .with_tcp_listener(listener)
                .with_num_threads(2);
            std::thread::spawn(move || {
                let _ = server.serve();
            });
            let delivered = wait_until(|| received.lock().unwrap().len() >= 2).await;
            stop.notify();
            task.await;
            delivered
        }));
        let received = received.lock().unwrap();
        assert!(delivered, "upstream got {received:?}");
        assert_eq!(
            received
                .iter()
                .map(|m| m.to[0].as_str())
                .collect::<Vec<_>>(),
            ["a@example.org", "b@example.org"]
        );
        assert!(received.iter().all(|m| m.data == BODY));
        assert!(
            store.list().unwrap().is_empty(),
            "delivered mail leaves the queue"
        );
    }

    #[test]
    fn expired_mail_bounces_without_a_connection_and_bounces_are_never_bounced() {
        // Nothing listens here: expiry must not depend on the link.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let clock = QueueClock::new(store.clock_base());
        let ex = smol::LocalExecutor::new();
        let id = smol::block_on(ex.run(async {
            let id = enqueue(&store, &clock, "cron@lan", &["a@example.org"]).await;
            let (wake, stop) = (Wake::new(), Wake::new());
            let mut params = forward_params(addr, Duration::from_millis(20));
            params.policy.max_age = Duration::ZERO;
            let task = ex.spawn(run(
                store.clone(),
                clock,
                params,
                Rc::clone(&wake),
                Rc::clone(&stop),
            ));
            wake.notify();
            // The DSN expires too (max_age 0) and must end failed without a DSN of its own.
            wait_until(|| tried_dsn(&store).is_some()).await;
            stop.notify();
            task.await;
            id
        }));
        let original = store.get(id).unwrap();
        assert_eq!(original.recipients[0].state, RcptState::Failed);
        let reason = original.recipients[0]
            .last_reply
            .clone()
            .unwrap_or_default();
        assert!(reason.starts_with("delivery time expired"), "{reason}");
        let dsn = tried_dsn(&store).expect("a DSN was queued");
        let body: Vec<u8> = store
            .body_chunks(dsn.id)
            .unwrap()
            .flat_map(Result::unwrap)
            .collect();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("Status: 4.4.7\r\n"), "{text}");
        assert_eq!(store.list().unwrap().len(), 2, "no bounce of the bounce");
    }
}
