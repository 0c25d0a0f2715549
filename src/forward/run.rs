//! The forwarder task: it waits for new mail, the next due time, a flush or stop, then runs a
//! pass: expire old mail, choose a smarthost (`failover`), send what is due over up to
//! `connections` sessions to it that share the due mail (`claims`), and fail over to the next
//! smarthost on a site failure. Holds the task's state (`Forwarder`) between passes, and takes a
//! reload's new parameters between two turns. Never touches sled directly.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_io::Timer;
use event_listener::Event;
use futures_lite::future;
use log::{error, info, warn};
use smol::LocalExecutor;

use crate::clock::{QueueClock, QueueTime};
use crate::intake::{Intake, IntakePolicy};
use crate::smtp::client::{ClientSession, ClientStep, SessionFailure, Stage};
use crate::store::{QueuedMessage, Store};
use crate::wait::{self, Wake};

use super::claims::Claims;
use super::failover::{self, SmarthostTiming};
use super::link::Connection;
use super::outcome::ForwardError;
use super::schedule::{self, FailedNotices, Jitter};
use super::token::CachedToken;
use super::{wall_clock_secs, ForwardParams, LinkState, NextParams};

/// Longest wait for the reply to QUIT.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until `stop` is notified. Never returns an error: failures are logged and retried.
/// DSNs enter the queue through an intake of its own (no `[[priority]]` or `[coalesce]`).
pub async fn run(
    store: Store,
    clock: QueueClock,
    params: ForwardParams,
    wake: Rc<Wake>,
    stop: Rc<Wake>,
) {
    let intake = Intake::new(store.clone(), clock, Wake::new(), IntakePolicy::default());
    let link = LinkState::new();
    let next = NextParams::default();
    run_linked(
        store,
        clock,
        params,
        (wake, stop, next),
        link,
        Rc::new(intake),
    )
    .await;
}

/// `run`, reporting the link's state into `link`, obeying its `flush` signal, taking new
/// parameters from `next` (a reload) before the turn after `wake`, and queueing DSNs through
/// `intake`.
pub async fn run_linked(
    store: Store,
    clock: QueueClock,
    params: ForwardParams,
    (wake, stop, next): (Rc<Wake>, Rc<Wake>, NextParams),
    link: Rc<LinkState>,
    intake: Rc<Intake>,
) {
    let seed = clock.now() ^ wall_clock_secs().rotate_left(20) ^ u64::from(std::process::id());
    let mut forwarder = Forwarder {
        store,
        clock,
        timings: RefCell::default(),
        tokens: RefCell::default(),
        params: ForwardParams {
            smarthosts: Vec::new(),
            ..params.clone()
        },
        active: Cell::new(0),
        jitter: RefCell::new(Jitter::new(seed)),
        stalled_until: Cell::new(0),
        link,
        intake,
        failed_notices: RefCell::default(),
    };
    forwarder.reconfigure(params);
    loop {
        if forwarder.turn(&wake, &stop).await {
            return;
        }
        let params = next.borrow_mut().take();
        if let Some(params) = params {
            forwarder.reconfigure(params);
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

/// The forwarder task's state between passes. The sessions of a pass run together on the
/// task's thread and share it (`&self`): what they change is in cells.
pub(super) struct Forwarder {
    pub(super) store: Store,
    pub(super) clock: QueueClock,
    pub(super) params: ForwardParams,
    /// Backoff per smarthost, in `params.smarthosts` order.
    pub(super) timings: RefCell<Vec<SmarthostTiming>>,
    /// The OAuth 2.0 access token per smarthost, while it is good (memory only).
    pub(super) tokens: RefCell<Vec<Option<CachedToken>>>,
    /// The smarthost of the sessions in progress (or the last ones).
    pub(super) active: Cell<usize>,
    pub(super) jitter: RefCell<Jitter>,
    /// After local trouble (the store did not record, or claimed mail was due that it then did
    /// not return): no pass before this, so a broken store cannot make the task spin.
    pub(super) stalled_until: Cell<QueueTime>,
    pub(super) link: Rc<LinkState>,
    /// Where DSNs enter the queue.
    pub(super) intake: Rc<Intake>,
    /// The rate limit of the notices about failed messages.
    pub(super) failed_notices: RefCell<FailedNotices>,
}

/// The due mail of one pass and the signal that wakes the sessions waiting to start.
struct Pool {
    claims: RefCell<Claims>,
    /// Notified when a load filled the window or the queue closed.
    changed: Event,
    /// The most sessions this pass opens (`connections`).
    max: usize,
}

impl Pool {
    fn close(&self) {
        self.claims.borrow_mut().close();
        self.changed.notify(usize::MAX);
    }

    fn leave(&self) {
        self.claims.borrow_mut().leave();
        self.changed.notify(usize::MAX);
    }
}

impl Forwarder {
    /// One turn of the loop: a pass when mail is due, else a wait for the next due time, new
    /// mail, a flush or stop. `true` once stopped. A pass is cut short by stop: what was not
    /// recorded stays queued (at least once).
    async fn turn(&mut self, wake: &Wake, stop: &Wake) -> bool {
        if self.params.smarthosts.is_empty() {
            // Mail is held: only a reload (which wakes) can change that.
            let woken = async {
                wake.wait().await;
                false
            };
            return future::or(woken, async {
                stop.wait().await;
                true
            })
            .await;
        }
        let now = self.clock.now();
        let next = self.next_wake();
        if next.is_some_and(|at| at <= now) {
            return future::or(
                async {
                    self.pass().await;
                    false
                },
                async {
                    stop.wait().await;
                    true
                },
            )
            .await;
        }
        let timer = next.map(|at| Duration::from_millis(at - now));
        let link = self.link.clone();
        match idle(timer, wake, &link.flush, stop).await {
            Woken::Stop => true,
            Woken::Flush => {
                self.flush();
                false
            }
            Woken::Mail => false,
        }
    }

    /// Takes `params` (at start and after a reload): a smarthost whose address is unchanged
    /// keeps its backoff; OAuth 2.0 tokens are fetched again.
    fn reconfigure(&mut self, params: ForwardParams) {
        let old = &self.params.smarthosts;
        let before = self.timings.borrow().clone();
        let timings = params.smarthosts.iter().map(|new| {
            old.iter()
                .position(|s| s.address == new.address)
                .map_or_else(SmarthostTiming::default, |i| before[i])
        });
        *self.timings.get_mut() = timings.collect();
        let moved = old.len() != params.smarthosts.len()
            || old
                .iter()
                .zip(&params.smarthosts)
                .any(|(a, b)| a.address != b.address);
        if moved {
            self.link.set_smarthosts(&params.smarthosts);
        }
        if params.smarthosts.is_empty() {
            warn!("no smarthost configured: mail is accepted and held in the queue");
        }
        *self.tokens.get_mut() = params.smarthosts.iter().map(|_| None).collect();
        self.active.set(0);
        self.params = params;
    }

    /// `queue flush`, SIGUSR1, a link event: forget every smarthost's backoff and make every
    /// deferred message due now, so the next pass probes the smarthosts at once, in order.
    fn flush(&mut self) {
        info!("flush requested: trying the smarthost now");
        for smarthost in self.timings.get_mut() {
            smarthost.retry_at = 0;
        }
        self.link.clear_retries();
        self.stalled_until.set(0);
        if let Err(e) = self.store.reschedule_all(self.clock.now()) {
            error!("cannot reschedule the queue: {e}");
        }
    }

    /// When the next pass should start: `None` waits for a wake-up only.
    fn next_wake(&self) -> Option<QueueTime> {
        let due = self.store.next_due()?.max(self.stalled_until.get());
        // Every smarthost down: new mail waits for the first smarthost's own retry time.
        Some(failover::link_wait(&self.timings.borrow()).map_or(due, |at| due.max(at)))
    }

    /// Expires old mail, then delivers what is due over the first usable smarthost, over up to
    /// its `connections` sessions; a site failure marks that smarthost down and the pass goes on
    /// at once over the next usable smarthost, with what is still due. Per-recipient verdicts
    /// (4xx, 5xx) are the smarthost's answer and never fail over.
    async fn pass(&self) {
        // The first smarthost this pass may take; after a site failure, the ones after it.
        let mut from = 0;
        let mut tried = false;
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
            let mut live = 0;
            for message in due {
                if schedule::is_expired(message.enqueued_at, now, self.params.policy.max_age) {
                    self.expire(&message).await;
                } else {
                    live += 1;
                }
            }
            if live == 0 {
                // Everything loaded had expired: look behind the window again.
                if loaded > 0 {
                    continue;
                }
                // `next_due` said something was due but `due` found nothing (after a failover,
                // the failed sessions may have dealt with everything).
                if !tried {
                    self.stall(now);
                }
                break;
            }
            let Some(index) = failover::choose(&self.timings.borrow(), from, now) else {
                break;
            };
            if from > 0 {
                warn!(
                    "failing over to smarthost {} {}",
                    index + 1,
                    self.params.smarthosts[index].address
                );
            }
            tried = true;
            match self.sessions(index).await {
                Ok(()) => break,
                // That message left the queue: the rest goes over a new connection.
                Err(ForwardError::BodyDamaged) => continue,
                Err(e) => {
                    self.mark_down(index, &e);
                    from = index + 1;
                }
            }
        }
        // Removals of delivered mail are not waited for one by one (`Store::record`): one
        // sync per pass makes them durable and lets their body files go.
        if let Err(e) = self.store.settle_removals().await {
            error!("cannot sync the queue after a delivery pass: {e}");
        }
    }

    /// The sessions of a pass over smarthost `index`: the first connects at once, the others
    /// (up to `connections`) once a load filled the window. Each takes the next due delivery
    /// from the pass's `Claims` until none is left, then QUITs. A site failure on any connected
    /// one stops the others taking and is the pass's result; an extra session that cannot
    /// connect only ends itself.
    async fn sessions(&self, index: usize) -> Result<(), ForwardError> {
        self.active.set(index);
        let first = self.connect(index).await?;
        self.mark_up(index);
        let pool = Pool {
            claims: RefCell::default(),
            changed: Event::new(),
            max: self.params.smarthosts[index].connections.max(1),
        };
        pool.claims.borrow_mut().join(pool.max);
        // The first load: after `mark_up`, which makes mail deferred in an outage due.
        self.load(&pool);
        // The sessions run as tasks of a local executor of their own, driven by this task: each
        // is polled when its own I/O is ready.
        let ex = LocalExecutor::new();
        let mut first = Some(first);
        let tasks: Vec<_> = (0..pool.max)
            .map(|_| ex.spawn(self.session(index, first.take(), &pool)))
            .collect();
        let results = ex
            .run(async {
                let mut results = Vec::with_capacity(tasks.len());
                for task in tasks {
                    results.push(task.await);
                }
                results
            })
            .await;
        let mut damaged = false;
        for result in results {
            match result {
                Err(ForwardError::BodyDamaged) => damaged = true,
                Err(e) => return Err(e),
                Ok(()) => {}
            }
        }
        if damaged {
            return Err(ForwardError::BodyDamaged);
        }
        Ok(())
    }

    /// One session of a pass: `link` is the first session's; without it, this one waits until
    /// the pass wants another session (or ends), then connects.
    async fn session(
        &self,
        index: usize,
        link: Option<(Connection, ClientSession)>,
        pool: &Pool,
    ) -> Result<(), ForwardError> {
        let (mut conn, mut session) = match link {
            Some(link) => link,
            None => {
                let never = wait::deadline(Instant::now(), Duration::MAX);
                wait::until(&pool.changed, never, || {
                    pool.claims.borrow().settled(pool.max)
                })
                .await;
                if !pool.claims.borrow_mut().join(pool.max) {
                    return Ok(());
                }
                match self.connect(index).await {
                    Ok(link) => link,
                    // The first session proved the smarthost up: a refused extra one (a cap
                    // on connections per client) leaves the mail to the sessions it has.
                    Err(e) => {
                        warn!(
                            "smarthost {} {}: no extra session ({e}); going on with the \
                             sessions open",
                            index + 1,
                            self.params.smarthosts[index].address
                        );
                        pool.leave();
                        return Ok(());
                    }
                }
            }
        };
        let result = self
            .send_claimed(index, &mut conn, &mut session, pool)
            .await;
        match &result {
            Ok(()) => quit(&mut conn, &mut session, self.params.command_timeout).await,
            Err(ForwardError::BodyDamaged) => {}
            Err(_) => pool.close(),
        }
        pool.leave();
        result
    }

    /// Sends the pass's deliveries one after another on a ready session over smarthost
    /// `index`, until none is left, the pass's queue closes, or a preferred smarthost may be
    /// probed again.
    async fn send_claimed(
        &self,
        index: usize,
        conn: &mut Connection,
        session: &mut ClientSession,
        pool: &Pool,
    ) -> Result<(), ForwardError> {
        while let Some(delivery) = self.claim(index, pool) {
            let sent = match delivery.as_slice() {
                [message] => self.deliver(conn, session, message).await,
                [] => Ok(true),
                group => self.deliver_digest(conn, session, group).await,
            };
            pool.claims
                .borrow_mut()
                .done(&delivery, |id| !self.store.is_queued(id).unwrap_or(true));
            if !sent? {
                // The smarthost closed the session (421): the rest waits like for any site
                // failure.
                let failure = session.failure().cloned().unwrap_or(SessionFailure::Closed);
                return Err(failure.into());
            }
        }
        Ok(())
    }

    /// The next delivery for a session over smarthost `index`, loading what arrived or fell due
    /// when nothing is ready. `None` ends the session.
    fn claim(&self, index: usize, pool: &Pool) -> Option<Vec<QueuedMessage>> {
        if pool.claims.borrow().needs_load() {
            // A preferred smarthost's backoff ran out: end here, so the next pass probes it
            // first.
            if failover::preferred_due(&self.timings.borrow(), index, self.clock.now()) {
                pool.close();
                return None;
            }
            self.load(pool);
        }
        pool.claims.borrow_mut().take()
    }

    /// Loads the due messages no session of the pass took yet, planned as deliveries.
    fn load(&self, pool: &Pool) {
        let limit = pool.claims.borrow().load_limit(self.params.window);
        match self.store.due(self.clock.now(), limit) {
            Ok(due) => {
                let fresh = pool.claims.borrow_mut().fresh(due, limit);
                let deliveries = self.plan(fresh);
                pool.claims.borrow_mut().load(deliveries);
                pool.changed.notify(usize::MAX);
            }
            Err(e) => error!("cannot read the queue: {e}"),
        }
    }

    /// Local trouble: hold off for `retry_min`.
    pub(super) fn stall(&self, now: QueueTime) {
        self.stalled_until
            .set(schedule::after(now, self.params.policy.retry_min));
    }

    /// The next jitter value for a backoff or a random seed.
    pub(super) fn jitter(&self) -> u32 {
        self.jitter.borrow_mut().next_u32()
    }

    /// `from` of the smarthost in use: the sender it requires (`rewrite`).
    pub(super) fn smarthost_from(&self) -> Option<String> {
        self.params
            .smarthosts
            .get(self.active.get())
            .and_then(|smarthost| smarthost.from.clone())
    }

    /// `host:port` of the smarthost in use.
    pub(super) fn address(&self) -> &str {
        self.params
            .smarthosts
            .get(self.active.get())
            .map_or("", |smarthost| smarthost.address.as_str())
    }
}

/// Ends a session with QUIT, best effort: the mail is already recorded, so a slow 221 must not
/// hold up the next pass for a whole command timeout.
async fn quit(conn: &mut Connection, session: &mut ClientSession, command_timeout: Duration) {
    if let ClientStep::Send(bytes) = session.quit() {
        if conn.write(&bytes).await.is_ok() {
            let wait = command_timeout.min(QUIT_TIMEOUT);
            let _ = conn.read_reply_within(Stage::Quit, wait).await;
        }
    }
    conn.close(QUIT_TIMEOUT).await;
}
