//! The forwarder task: it waits for new mail, the next due time, a flush or stop, then runs a
//! pass: expire old mail, choose a smarthost (`failover`), send what is due over one session
//! and fail over to the next smarthost on a site failure. Holds the task's state
//! (`Forwarder`) between passes, and takes a reload's new parameters between two turns.
//! Never touches sled directly.

use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use async_io::Timer;
use futures_lite::future;
use log::{error, info, warn};

use crate::clock::{QueueClock, QueueTime};
use crate::intake::{Intake, IntakePolicy};
use crate::smtp::client::{ClientSession, ClientStep, SessionFailure, Stage};
use crate::store::{QueuedMessage, Store};
use crate::wait::Wake;

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
        timings: Vec::new(),
        tokens: Vec::new(),
        params: ForwardParams {
            smarthosts: Vec::new(),
            ..params.clone()
        },
        active: 0,
        jitter: Jitter::new(seed),
        stalled_until: 0,
        link,
        intake,
        failed_notices: FailedNotices::default(),
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

/// The forwarder task's state between passes.
pub(super) struct Forwarder {
    pub(super) store: Store,
    pub(super) clock: QueueClock,
    pub(super) params: ForwardParams,
    /// Backoff per smarthost, in `params.smarthosts` order.
    pub(super) timings: Vec<SmarthostTiming>,
    /// The OAuth 2.0 access token per smarthost, while it is good (memory only).
    pub(super) tokens: Vec<Option<CachedToken>>,
    /// The smarthost of the session in progress (or the last one).
    pub(super) active: usize,
    pub(super) jitter: Jitter,
    /// After local trouble (the store did not record, or claimed mail was due that it then did
    /// not return): no pass before this, so a broken store cannot make the task spin.
    pub(super) stalled_until: QueueTime,
    pub(super) link: Rc<LinkState>,
    /// Where DSNs enter the queue.
    pub(super) intake: Rc<Intake>,
    /// The rate limit of the notices about failed messages.
    pub(super) failed_notices: FailedNotices,
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
        let timings = params.smarthosts.iter().map(|new| {
            old.iter()
                .position(|s| s.address == new.address)
                .map_or_else(SmarthostTiming::default, |i| self.timings[i])
        });
        self.timings = timings.collect();
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
        self.tokens = params.smarthosts.iter().map(|_| None).collect();
        self.active = 0;
        self.params = params;
    }

    /// `queue flush`, SIGUSR1, a link event: forget every smarthost's backoff and make every
    /// deferred message due now, so the next pass probes the smarthosts at once, in order.
    fn flush(&mut self) {
        info!("flush requested: trying the smarthost now");
        for smarthost in &mut self.timings {
            smarthost.retry_at = 0;
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
        // Every smarthost down: new mail waits for the first smarthost's own retry time.
        Some(failover::link_wait(&self.timings).map_or(due, |at| due.max(at)))
    }

    /// Expires old mail, then delivers what is due over one connection: over the first usable
    /// smarthost; a site failure marks that smarthost down and the pass goes on at once over
    /// the next usable smarthost, with what is still due. Per-recipient verdicts (4xx, 5xx) are
    /// the smarthost's answer and never fail over.
    async fn pass(&mut self) {
        // The first smarthost this pass may take; after a site failure, the ones after it.
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
            let Some(index) = failover::choose(&self.timings, from, now) else {
                break;
            };
            if from > 0 {
                warn!(
                    "failing over to smarthost {} {}",
                    index + 1,
                    self.params.smarthosts[index].address
                );
            }
            match self.session(index, live).await {
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

    /// One connection over smarthost `index`: handshake, then every due message in turn, then
    /// QUIT.
    async fn session(
        &mut self,
        index: usize,
        batch: Vec<QueuedMessage>,
    ) -> Result<(), ForwardError> {
        self.active = index;
        let (mut conn, mut session) = self.connect(index).await?;
        self.mark_up(index);
        self.send_all(index, &mut conn, &mut session, batch).await?;
        quit(&mut conn, &mut session, self.params.command_timeout).await;
        Ok(())
    }

    /// Sends `batch` on a ready session over smarthost `index`, then whatever arrived or fell
    /// due meanwhile, until nothing is left or a preferred smarthost may be probed again.
    async fn send_all(
        &mut self,
        index: usize,
        conn: &mut Connection,
        session: &mut ClientSession,
        mut batch: Vec<QueuedMessage>,
    ) -> Result<(), ForwardError> {
        let mut attempted = HashSet::new();
        loop {
            for mut delivery in self.plan(batch) {
                attempted.extend(delivery.iter().map(|m| m.id));
                let sent = if delivery.len() > 1 {
                    self.deliver_digest(conn, session, &delivery).await?
                } else if let Some(message) = delivery.pop() {
                    self.deliver(conn, session, &message).await?
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
            // A preferred smarthost's backoff ran out: end here, so the next pass probes it first.
            let now = self.clock.now();
            if failover::preferred_due(&self.timings, index, now) {
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
        Ok(())
    }

    /// Local trouble: hold off for `retry_min`.
    pub(super) fn stall(&mut self, now: QueueTime) {
        self.stalled_until = schedule::after(now, self.params.policy.retry_min);
    }

    /// `from` of the smarthost in use: the sender it requires (`rewrite`).
    pub(super) fn smarthost_from(&self) -> Option<String> {
        self.params
            .smarthosts
            .get(self.active)
            .and_then(|smarthost| smarthost.from.clone())
    }

    /// `host:port` of the smarthost in use.
    pub(super) fn address(&self) -> &str {
        self.params
            .smarthosts
            .get(self.active)
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
