//! Delivery to the smarthost: one task that wakes on new mail, on the next due time, on a
//! flush request and at start, and pushes due messages over one connection.
//!
//! This file is the glue: sockets, timers and store calls. What the SMTP dialogue means lives in
//! `smtp::client` (sans-I/O); what to do about a reply lives in `outcome`; when to retry in
//! `schedule`; bounce messages in `dsn`. Never touches sled directly, never logs secrets.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_io::Timer;
use futures_lite::future;
use log::{debug, error, info, warn};

use crate::clock::{QueueClock, QueueTime};
use crate::priority::Priority;
use crate::smtp::client::{
    ClientParams, ClientSession, ClientStep, DeliveryReport, Envelope, SessionFailure, Stage,
};
use crate::smtp::date::rfc5322_date;
use crate::store::{MessageInfo, QueueId, QueuedMessage, RcptState, Store, StoreError};

use self::link::{open_session, transfer, Connection};
use self::outcome::{classify, ForwardError, Outcome};
use self::schedule::Jitter;

pub use crate::smtp::client::{ClientCredentials, TlsPolicy};

pub mod dsn;
mod link;
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

/// What the forwarder knows about the link to the smarthost, for `outpost status` and the
/// metrics; plus the `flush` signal (`queue flush`, SIGUSR1, link events) that makes the
/// forwarder try at once, even while the link backoff would wait. Shared on one thread.
#[derive(Default)]
pub struct LinkState {
    /// Tried at least once: `Some(true)` up, `Some(false)` down; `None` before the first try.
    up: Cell<Option<bool>>,
    /// Wall-clock Unix seconds of the last change of `up`.
    since_unix: Cell<u64>,
    /// The smarthost answered at least once since start.
    ever_reached: Cell<bool>,
    /// Wall-clock Unix seconds of the last message the smarthost took (any recipient).
    last_success_unix: Cell<Option<u64>>,
    last_error: RefCell<Option<String>>,
    /// Recipients by outcome since start.
    sent: Cell<u64>,
    deferred: Cell<u64>,
    bounced: Cell<u64>,
    /// While the link is down: the queue time of the next probe.
    retry_at: Cell<Option<QueueTime>>,
    /// Raised by `queue flush`, SIGUSR1 or a link event: try now, ignore the link backoff.
    pub flush: Wake,
}

/// A snapshot of `LinkState`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkReport {
    pub up: Option<bool>,
    pub since_unix: u64,
    pub ever_reached: bool,
    pub last_success_unix: Option<u64>,
    pub last_error: Option<String>,
    pub sent: u64,
    pub deferred: u64,
    pub bounced: u64,
    /// While the link is down: the queue time of the next probe.
    pub retry_at: Option<QueueTime>,
}

impl LinkState {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    pub fn report(&self) -> LinkReport {
        LinkReport {
            up: self.up.get(),
            since_unix: self.since_unix.get(),
            ever_reached: self.ever_reached.get(),
            last_success_unix: self.last_success_unix.get(),
            last_error: self.last_error.borrow().clone(),
            sent: self.sent.get(),
            deferred: self.deferred.get(),
            bounced: self.bounced.get(),
            retry_at: self.retry_at.get(),
        }
    }

    fn set_up(&self, up: bool) {
        if self.up.get() != Some(up) {
            self.up.set(Some(up));
            self.since_unix.set(wall_clock_secs());
        }
        if up {
            self.ever_reached.set(true);
        }
    }

    fn set_error(&self, error: String) {
        *self.last_error.borrow_mut() = Some(error);
    }

    fn count(&self, counter: &Cell<u64>) {
        counter.set(counter.get().saturating_add(1));
    }
}

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
    run_linked(store, clock, params, wake, stop, LinkState::new()).await;
}

/// `run`, reporting the link's state into `link` and obeying its `flush` signal.
pub async fn run_linked(
    store: Store,
    clock: QueueClock,
    params: ForwardParams,
    wake: Rc<Wake>,
    stop: Rc<Wake>,
    link: Rc<LinkState>,
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
        link,
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
            let timer = next.map(|at| Duration::from_millis(at - now));
            let link = forwarder.link.clone();
            match idle(timer, &wake, &link.flush, &stop).await {
                Woken::Stop => true,
                Woken::Flush => {
                    forwarder.flush();
                    false
                }
                Woken::Mail => false,
            }
        };
        if stopped {
            return;
        }
    }
}

enum Woken {
    Stop,
    Flush,
    Mail,
}

/// Waits for new mail or the timer (`None`: no timer), a flush or stop.
async fn idle(timer: Option<Duration>, wake: &Wake, flush: &Wake, stop: &Wake) -> Woken {
    let stopped = async {
        stop.wait().await;
        Woken::Stop
    };
    let flushed = async {
        flush.wait().await;
        Woken::Flush
    };
    let woken = async {
        wake.wait().await;
        Woken::Mail
    };
    let timed_out = async {
        match timer {
            Some(delay) => {
                Timer::after(delay).await;
            }
            None => future::pending::<()>().await,
        }
        Woken::Mail
    };
    future::or(stopped, future::or(flushed, future::or(woken, timed_out))).await
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
    link: Rc<LinkState>,
}

impl Forwarder {
    /// `queue flush`, SIGUSR1, a link event: forget the link backoff and make every deferred
    /// message due now, so the next pass probes the smarthost at once.
    fn flush(&mut self) {
        info!("flush requested: trying the smarthost now");
        self.link_retry_at = 0;
        self.link.retry_at.set(None);
        self.stalled_until = 0;
        if let Err(e) = self.store.reschedule_all(self.clock.now()) {
            error!("cannot reschedule the queue: {e}");
        }
    }

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
            // Removals of delivered mail are not waited for one by one (`Store::record`): one
            // sync per pass makes them durable and lets their body segments go.
            if let Err(e) = self.store.settle_removals().await {
                error!("cannot sync the queue after a delivery pass: {e}");
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
        conn.close(QUIT_TIMEOUT).await;
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
                    self.link.count(&self.link.deferred);
                    self.link.set_error(format!("{address}: {reply}"));
                    warn!("{line}");
                }
                Outcome::Bounce(reply) => {
                    self.link.count(&self.link.bounced);
                    self.link.set_error(format!("{address}: {reply}"));
                    info!("{line}");
                    bounced.push(dsn::FailedRecipient {
                        address: address.clone(),
                        status: dsn::status_of(&reply.to_string()),
                        diagnostic: reply.to_string(),
                    });
                }
                Outcome::Delivered(_) => {
                    self.link.count(&self.link.sent);
                    self.link.last_success_unix.set(Some(wall_clock_secs()));
                    info!("{line}");
                }
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
            .record(message.id, &results, wall_clock_secs(), attempts, next)
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
            self.link.count(&self.link.bounced);
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
            .record(
                message.id,
                &results,
                wall_clock_secs(),
                message.attempts,
                now,
            )
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
            priority: Priority::Normal,
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
        self.link.set_up(true);
        self.link.retry_at.set(None);
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
        self.link.set_up(false);
        self.link
            .set_error(format!("smarthost {}: {error}", self.smarthost));
        self.link_failures = self.link_failures.saturating_add(1);
        let delay = schedule::link_backoff(
            self.link_failures,
            &self.params.policy,
            self.jitter.next_u32(),
        );
        self.link_retry_at = schedule::after(self.clock.now(), delay);
        self.link.retry_at.set(Some(self.link_retry_at));
        // Whole seconds: the jitter's milliseconds are noise in a log line.
        let next = humantime::format_duration(Duration::from_secs(delay.as_secs().max(1)));
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
