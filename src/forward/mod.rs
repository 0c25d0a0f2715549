//! Delivery to the smarthost: one task that wakes on new mail, on the next due time, on a
//! flush request and at start, and pushes due messages over one connection. With several
//! smarthosts (`[[smarthost]]`), each pass sends over the first route that is up or due for a
//! probe, and a site failure moves on to the next route at once (`route`, pure). The route is
//! chosen per pass, never stored with a message.
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
use crate::coalesce::{self, CoalescePolicy, DigestEntry, DigestInput};
use crate::priority::HeaderWatch;
use crate::priority::Priority;
use crate::smtp::client::{
    ClientParams, ClientSession, ClientStep, DeliveryReport, Envelope, SessionFailure, Stage,
};
use crate::smtp::date::rfc5322_date;
use crate::store::{MessageInfo, QueueId, QueuedMessage, RcptState, Store, StoreError};

use self::link::{open_session, transfer, Connection};
use self::outcome::{classify, ForwardError, Outcome};
use self::route::RouteTiming;
use self::schedule::Jitter;
use self::token::CachedToken;

pub use self::route::RouteReport;
pub use self::token::OAuth2;
pub use crate::smtp::client::{ClientCredentials, CredentialKind, TlsPolicy};

pub mod dsn;
mod link;
pub mod oauth;
pub mod outcome;
pub mod route;
pub mod schedule;
mod token;

/// Retry policy (config `[queue]`).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub max_age: Duration,
}

/// One smarthost (`[smarthost]` / `[[smarthost]]` entry) as the forwarder uses it.
#[derive(Clone, Debug)]
pub struct Route {
    /// `host:port`, resolved at each connect.
    pub address: String,
    /// `tls`: `StartTls` and `Implicit` never fall back to plaintext.
    pub tls: TlsPolicy,
    /// Certificate roots for `StartTls`/`Implicit` (web PKI, or `ca_file`); required by them.
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    /// `username` + the password from `password_file`.
    pub credentials: Option<ClientCredentials>,
    /// OAuth 2.0 instead of `credentials`: the access token is fetched and cached here.
    pub oauth2: Option<OAuth2>,
}

/// Everything the forwarder needs from the config.
#[derive(Clone, Debug)]
pub struct ForwardParams {
    /// The smarthosts in the order they are tried; empty holds all mail.
    pub routes: Vec<Route>,
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
    /// `[coalesce]`: due messages of one kind go out as one digest; `None`: off.
    pub coalesce: Option<CoalescePolicy>,
    /// The most bytes of originals one digest carries (`max_message_size`).
    pub max_digest_bytes: u64,
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

/// What the forwarder knows about the links to its smarthosts, for `outpost status` and the
/// metrics; plus the `flush` signal (`queue flush`, SIGUSR1, link events) that makes the
/// forwarder try at once, even while the link backoff would wait. Shared on one thread.
#[derive(Default)]
pub struct LinkState {
    /// One per smarthost, in config order.
    routes: RefCell<Vec<RouteReport>>,
    /// Wall-clock Unix seconds of the last message a smarthost took (any recipient).
    last_success_unix: Cell<Option<u64>>,
    /// The last error of any route, or the last deferral or bounce.
    last_error: RefCell<Option<String>>,
    /// Recipients by outcome since start, over all routes.
    sent: Cell<u64>,
    deferred: Cell<u64>,
    bounced: Cell<u64>,
    /// Raised by `queue flush`, SIGUSR1 or a link event: try now, ignore the link backoff.
    pub flush: Wake,
}

/// A snapshot of `LinkState`. The top-level fields describe "the link" as one thing (see
/// `route::link_view`): up while any route is up, down when all are.
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
    /// While every route is down: the queue time of the next probe.
    pub retry_at: Option<QueueTime>,
    /// The route mail goes to now (index into `routes`), while the link is up.
    pub current: Option<usize>,
    pub routes: Vec<RouteReport>,
}

impl LinkState {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// The routes (config order), none tried yet; set by the forwarder when it starts.
    fn set_routes(&self, routes: &[Route]) {
        *self.routes.borrow_mut() = routes
            .iter()
            .map(|route| RouteReport {
                address: route.address.clone(),
                ..RouteReport::default()
            })
            .collect();
    }

    pub fn report(&self) -> LinkReport {
        let routes = self.routes.borrow().clone();
        let link = route::link_view(&routes);
        LinkReport {
            up: link.up,
            since_unix: link.since_unix,
            ever_reached: link.ever_reached,
            last_success_unix: self.last_success_unix.get(),
            last_error: self.last_error.borrow().clone(),
            sent: self.sent.get(),
            deferred: self.deferred.get(),
            bounced: self.bounced.get(),
            retry_at: link.retry_at,
            current: link.current,
            routes,
        }
    }

    /// The first route is up: mail goes where it is preferred, a probe would change nothing.
    pub fn primary_up(&self) -> bool {
        self.routes
            .borrow()
            .first()
            .is_some_and(|r| r.up == Some(true))
    }

    fn with_route(&self, index: usize, change: impl FnOnce(&mut RouteReport)) {
        if let Some(route) = self.routes.borrow_mut().get_mut(index) {
            change(route);
        }
    }

    fn route_up(&self, index: usize) {
        self.with_route(index, |route| {
            if route.up != Some(true) {
                route.up = Some(true);
                route.since_unix = wall_clock_secs();
            }
            route.ever_reached = true;
            route.retry_at = None;
        });
    }

    fn route_down(&self, index: usize, error: &str, retry_at: QueueTime) {
        self.with_route(index, |route| {
            if route.up != Some(false) {
                route.up = Some(false);
                route.since_unix = wall_clock_secs();
            }
            route.last_error = Some(error.to_owned());
            route.retry_at = Some(retry_at);
        });
        self.set_error(error.to_owned());
    }

    /// `queue flush`: no route waits for its backoff any more.
    fn clear_retries(&self) {
        for route in self.routes.borrow_mut().iter_mut() {
            route.retry_at = None;
        }
    }

    fn set_error(&self, error: String) {
        *self.last_error.borrow_mut() = Some(error);
    }

    fn count(&self, counter: &Cell<u64>) {
        counter.set(counter.get().saturating_add(1));
    }

    fn count_sent(&self, index: usize) {
        self.count(&self.sent);
        self.with_route(index, |route| route.sent = route.sent.saturating_add(1));
        self.last_success_unix.set(Some(wall_clock_secs()));
    }
}

/// Longest wait for the reply to QUIT.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Chunk size when spooling a DSN (the store takes body pieces of at most 32 KiB).
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
    if params.routes.is_empty() {
        warn!("no smarthost configured: mail is accepted and held in the queue");
        stop.wait().await;
        return;
    }
    link.set_routes(&params.routes);
    let seed = clock.now() ^ wall_clock_secs().rotate_left(20) ^ u64::from(std::process::id());
    let mut forwarder = Forwarder {
        store,
        clock,
        routes: vec![RouteTiming::default(); params.routes.len()],
        tokens: params.routes.iter().map(|_| None).collect(),
        params,
        active: 0,
        jitter: Jitter::new(seed),
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
    /// Backoff per route, in `params.routes` order.
    routes: Vec<RouteTiming>,
    /// The OAuth 2.0 access token per route, while it is good (memory only).
    tokens: Vec<Option<CachedToken>>,
    /// The route of the session in progress (or the last one).
    active: usize,
    jitter: Jitter,
    /// After local trouble (the store did not record, or claimed mail was due that it then did
    /// not return): no pass before this, so a broken store cannot make the task spin.
    stalled_until: QueueTime,
    link: Rc<LinkState>,
}

impl Forwarder {
    /// `queue flush`, SIGUSR1, a link event: forget every route's backoff and make every
    /// deferred message due now, so the next pass probes the smarthosts at once, in order.
    fn flush(&mut self) {
        info!("flush requested: trying the smarthost now");
        for route in &mut self.routes {
            route.retry_at = 0;
        }
        self.link.clear_retries();
        self.stalled_until = 0;
        if let Err(e) = self.store.reschedule_all(self.clock.now()) {
            error!("cannot reschedule the queue: {e}");
        }
    }

    /// When the next pass should start: `None` waits for a wake-up only.
    fn next_wake(&self) -> Option<QueueTime> {
        let due = self.store.next_due()?.max(self.stalled_until);
        // Every route down: new mail waits for the first route's own retry time.
        Some(route::link_wait(&self.routes).map_or(due, |at| due.max(at)))
    }

    /// Expires old mail, then delivers what is due over one connection: over the first usable
    /// route; a site failure marks that route down and the pass goes on at once over the next
    /// usable route, with what is still due. Per-recipient verdicts (4xx, 5xx) are the
    /// smarthost's answer and never fail over.
    async fn pass(&mut self) {
        // The first route this pass may take; after a site failure, the ones after it.
        let mut from = 0;
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
                // `next_due` said something was due but `due` found nothing (after a failover,
                // the failed session may have dealt with everything).
                if from == 0 {
                    self.stall(now);
                }
                break;
            }
            let Some(index) = route::choose(&self.routes, from, now) else {
                break;
            };
            if from > 0 {
                info!(
                    "failing over to smarthost {} {}",
                    index + 1,
                    self.params.routes[index].address
                );
            }
            match self.session(index, live).await {
                Ok(()) => break,
                Err(e) => {
                    self.link_down(index, &e);
                    from = index + 1;
                }
            }
        }
        // Removals of delivered mail are not waited for one by one (`Store::record`): one
        // sync per pass makes them durable and lets their body segments go.
        if let Err(e) = self.store.settle_removals().await {
            error!("cannot sync the queue after a delivery pass: {e}");
        }
    }

    /// One connection over route `index`: handshake, then every due message in turn, then
    /// QUIT.
    async fn session(
        &mut self,
        index: usize,
        mut batch: Vec<QueuedMessage>,
    ) -> Result<(), ForwardError> {
        self.active = index;
        let (mut conn, mut session) = match self.open(index, false).await {
            // A cached token the smarthost refused (revoked, or its clock is ahead of ours):
            // one fresh token, at once. A fresh token refused waits like any site failure.
            Err((ForwardError::Session(SessionFailure::AuthFailed { reply }), true)) => {
                info!(
                    "smarthost {}: cached OAuth2 token refused ({reply}); refreshing it",
                    self.params.routes[index].address
                );
                self.open(index, true).await.map_err(|(e, _)| e)?
            }
            other => other.map_err(|(e, _)| e)?,
        };
        self.link_up(index);
        let mut attempted = HashSet::new();
        loop {
            for mut delivery in self.plan(batch) {
                attempted.extend(delivery.iter().map(|m| m.id));
                let sent = if delivery.len() > 1 {
                    self.deliver_digest(&mut conn, &mut session, &delivery)
                        .await?
                } else if let Some(message) = delivery.pop() {
                    self.deliver(&mut conn, &mut session, &message).await?
                } else {
                    true
                };
                if !sent {
                    // The smarthost closed the session (421): the rest waits like for any
                    // site failure.
                    let failure = session.failure().cloned().unwrap_or(SessionFailure::Closed);
                    return Err(failure.into());
                }
            }
            // A preferred route's backoff ran out: end here, so the next pass probes it first.
            let now = self.clock.now();
            if route::preferred_due(&self.routes, index, now) {
                break;
            }
            // Mail that arrived or fell due meanwhile goes on the same connection.
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

    /// Connects over route `index` up to a ready session. With OAuth 2.0, the cached access
    /// token is used unless `refresh` (or it is due), else a new one is fetched first; a
    /// refused token is dropped. On error, `true` says a cached token was refused.
    async fn open(
        &mut self,
        index: usize,
        refresh: bool,
    ) -> Result<(Connection, ClientSession), (ForwardError, bool)> {
        let route = &self.params.routes[index];
        let mut credentials = route.credentials.clone();
        let mut cached = false;
        if let Some(oauth) = &route.oauth2 {
            let now = self.clock.now();
            let slot = &mut self.tokens[index];
            if refresh || slot.as_ref().is_some_and(|t| now >= t.refresh_at) {
                *slot = None;
            }
            cached = slot.is_some();
            if slot.is_none() {
                let timeout = self.params.command_timeout;
                let reply = token::fetch(oauth, route.tls_config.as_ref(), timeout)
                    .await
                    .map_err(|e| (e, false))?;
                *slot = Some(CachedToken {
                    token: reply.access_token,
                    refresh_at: oauth::refresh_at(self.clock.now(), reply.expires_in),
                });
            }
            credentials = slot.as_ref().map(|t| ClientCredentials {
                username: oauth.username.clone(),
                password: t.token.clone(),
                kind: CredentialKind::Bearer,
            });
        }
        let client = ClientParams {
            helo_name: self.params.hostname.clone(),
            tls: route.tls,
            smarthost: route.address.clone(),
            credentials,
        };
        let opened = open_session(
            &route.address,
            client,
            route.tls_config.clone(),
            self.params.command_timeout,
        )
        .await;
        match opened {
            Err(e @ ForwardError::Session(SessionFailure::AuthFailed { .. }))
                if route.oauth2.is_some() =>
            {
                self.tokens[index] = None;
                Err((e, cached))
            }
            other => other.map_err(|e| (e, false)),
        }
    }

    /// `[coalesce]`: the due messages as deliveries, in due order: one message each, or
    /// several of one kind for one digest (`coalesce::plan`), compared by the recipients
    /// still to be tried.
    fn plan(&self, batch: Vec<QueuedMessage>) -> Vec<Vec<QueuedMessage>> {
        let Some(policy) = self.params.coalesce else {
            return batch.into_iter().map(|m| vec![m]).collect();
        };
        let candidates: Vec<coalesce::Candidate> = batch
            .iter()
            .map(|m| {
                let open = open_recipients(m);
                coalesce::Candidate {
                    key: m.info.coalesce.filter(|_| !open.is_empty()),
                    sender: m.info.sender.clone(),
                    recipients: open,
                    enqueued_at: m.enqueued_at,
                    size: m.size,
                }
            })
            .collect();
        let plan = coalesce::plan(&candidates, &policy, self.params.max_digest_bytes);
        let mut slots: Vec<Option<QueuedMessage>> = batch.into_iter().map(Some).collect();
        plan.into_iter()
            .map(|delivery| {
                delivery
                    .into_iter()
                    .filter_map(|i| slots.get_mut(i).and_then(Option::take))
                    .collect()
            })
            .collect()
    }

    /// Sends `group` (oldest first, same sender and recipients still to be tried) as one
    /// digest and records the smarthost's verdict for every original: delivered, deferred or
    /// bounced (one DSN per original) together. `Ok(false)` as for `deliver`.
    async fn deliver_digest(
        &mut self,
        conn: &mut Connection,
        session: &mut ClientSession,
        group: &[QueuedMessage],
    ) -> Result<bool, ForwardError> {
        let Some(first) = group.first() else {
            return Ok(true);
        };
        let mut entries = Vec::with_capacity(group.len());
        let mut subject = None;
        let mut addresses = (None, None);
        let names: Rc<[String]> = ["subject", "date", "message-id", "from", "to"]
            .map(String::from)
            .into();
        for message in group {
            // Unreadable here, unreadable in the digest too: the store error then ends the
            // transfer, and every original is deferred.
            let header = self.header_bytes(message.id).unwrap_or_default();
            let mut watch = HeaderWatch::new(Rc::clone(&names));
            watch.feed(&header);
            let field = |name: &str| {
                watch
                    .fields()
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            };
            if subject.is_none() {
                subject = Some(coalesce::normalise_subject(
                    &field("subject").unwrap_or_default(),
                ));
                addresses = (field("from"), field("to"));
            }
            entries.push(DigestEntry {
                received: rfc5322_date(message.info.received_unix),
                date: field("date"),
                message_id: field("message-id"),
            });
        }
        // The recipients still to be tried are the same in every original (`plan`): the digest
        // goes to them in the first original's order; each original's are matched by address.
        let recipients = open_recipients(first);
        let now_unix = wall_clock_secs();
        let date = rfc5322_date(now_unix);
        let eight_bit = group.iter().any(|m| m.info.eight_bit);
        let layout = coalesce::layout(&DigestInput {
            hostname: &self.params.hostname,
            date: &date,
            seed: first.id.0 ^ now_unix.rotate_left(32) ^ u64::from(self.jitter.next_u32()),
            sender: &first.info.sender,
            from: addresses.0.as_deref(),
            to: addresses.1.as_deref(),
            subject: subject.as_deref().unwrap_or(""),
            entries: &entries,
            eight_bit,
        });
        let sizes: Vec<u64> = group.iter().map(|m| m.size).collect();
        let envelope = Envelope {
            sender: first.info.sender.clone(),
            recipients: recipients.clone(),
            size: layout.size(&sizes),
            eight_bit: eight_bit || !layout.head.is_ascii(),
            smtputf8: group.iter().any(|m| m.info.smtputf8),
        };
        let ids: Vec<QueueId> = group.iter().map(|m| m.id).collect();
        info!(
            "queue_id={} digest of {} messages: {}",
            first.id,
            ids.len(),
            ids.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let store = self.store.clone();
        // Streamed: the head, each original's body as journaled (read as it goes out), the
        // separators and the tail; never the whole digest in memory.
        let body = move || {
            let coalesce::DigestLayout {
                head,
                between,
                tail,
            } = layout;
            let parts = ids.into_iter().enumerate().flat_map(move |(i, id)| {
                let separator = (i > 0).then(|| Ok(between.clone()));
                let chunks: Box<dyn Iterator<Item = Result<Vec<u8>, StoreError>>> =
                    match store.body_chunks(id) {
                        Ok(chunks) => Box::new(chunks),
                        Err(e) => Box::new(std::iter::once(Err(e))),
                    };
                separator.into_iter().chain(chunks)
            });
            Ok::<_, StoreError>(
                std::iter::once(Ok(head))
                    .chain(parts)
                    .chain(std::iter::once(Ok(tail))),
            )
        };
        let timeout = self.params.data_end_timeout;
        let (report, result) = match transfer(conn, session, &envelope, body, timeout).await {
            Ok(Some(report)) => (report, Ok(session.is_ready())),
            Ok(None) => {
                debug!("queue_id={} digest not sent: session closed", first.id);
                return Ok(false);
            }
            Err(e) => match session.aborted(e.as_reply()) {
                Some(report) => (report, Err(e)),
                None => return Err(e),
            },
        };
        for message in group {
            let pending = match_recipients(&recipients, message);
            self.apply(message, &pending, &report).await;
        }
        result
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
            .filter(|&i| message.recipients[i].state.is_open())
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
                message.id,
                self.address()
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
                    self.link.count_sent(self.active);
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
            let remote = self.address().to_owned();
            self.bounce(message, &bounced, Some(&remote)).await;
        }
    }

    /// Fails every pending recipient of a message queued longer than `max_age`.
    async fn expire(&mut self, message: &QueuedMessage) {
        let max_age = humantime::format_duration(self.params.policy.max_age);
        let mut results = Vec::new();
        let mut failed = Vec::new();
        for (index, recipient) in message.recipients.iter().enumerate() {
            if !recipient.state.is_open() {
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
            coalesce: None,
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

    /// `host:port` of the route in use.
    fn address(&self) -> &str {
        self.params
            .routes
            .get(self.active)
            .map_or("", |route| route.address.as_str())
    }

    /// Route `index` completed a handshake.
    fn link_up(&mut self, index: usize) {
        self.link.route_up(index);
        let Some(timing) = self.routes.get_mut(index) else {
            return;
        };
        if timing.is_up() {
            return;
        }
        *timing = RouteTiming::default();
        info!(
            "smarthost {} {} is reachable again: sending the queue",
            index + 1,
            self.params.routes[index].address
        );
        // Mail deferred during the outage goes now, on this connection.
        if let Err(e) = self.store.reschedule_all(self.clock.now()) {
            error!("cannot reschedule the queue: {e}");
        }
    }

    /// A site failure on route `index`: it waits out its own backoff; no message's attempts are
    /// burned. The caller moves on to the next route.
    fn link_down(&mut self, index: usize, error: &ForwardError) {
        let now = self.clock.now();
        let jitter = self.jitter.next_u32();
        let Some(timing) = self.routes.get_mut(index) else {
            return;
        };
        timing.failures = timing.failures.saturating_add(1);
        let delay = schedule::link_backoff(timing.failures, &self.params.policy, jitter);
        timing.retry_at = schedule::after(now, delay);
        let (failures, retry_at) = (timing.failures, timing.retry_at);
        let address = &self.params.routes[index].address;
        self.link
            .route_down(index, &format!("smarthost {address}: {error}"), retry_at);
        // Whole seconds: the jitter's milliseconds are noise in a log line.
        let next = humantime::format_duration(Duration::from_secs(delay.as_secs().max(1)));
        let number = index + 1;
        let then = if route::link_wait(&self.routes).is_some() {
            "holding mail"
        } else {
            "trying the next smarthost"
        };
        if failures == 1 {
            warn!("smarthost {number} {address} unavailable: {error}; {then}, next try in {next}");
        } else {
            debug!("smarthost {number} {address} still unavailable: {error}; next try in {next}");
        }
    }
}

/// The recipients of `message` still to be tried (pending or deferred), in order.
fn open_recipients(message: &QueuedMessage) -> Vec<String> {
    message
        .recipients
        .iter()
        .filter(|r| r.state.is_open())
        .map(|r| r.address.clone())
        .collect()
}

/// For each of a digest's recipients (in order), the index of the same address (without
/// regard to case) among `message`'s recipients still to be tried, each index used once: the
/// digest's report read as this original's.
fn match_recipients(recipients: &[String], message: &QueuedMessage) -> Vec<usize> {
    let mut used = vec![false; message.recipients.len()];
    let mut out = Vec::with_capacity(recipients.len());
    for address in recipients {
        let found = message.recipients.iter().enumerate().position(|(i, r)| {
            !used[i] && r.state.is_open() && r.address.eq_ignore_ascii_case(address)
        });
        if let Some(i) = found {
            used[i] = true;
            out.push(i);
        }
    }
    out
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
