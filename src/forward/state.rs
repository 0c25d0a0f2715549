//! What the forwarder reports about its smarthosts: `LinkState`, shared on the one thread with
//! `outpost status` and the metrics, and its snapshot `LinkReport` (the link as one thing, plus
//! one `SmarthostReport` per smarthost). Also carries the `flush` signal. Only the forwarder
//! writes it; it makes no decisions and does no I/O.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::clock::QueueTime;
use crate::store::QueueId;

use super::failover::{self, SmarthostReport};
use super::{wall_clock_secs, Smarthost};
use crate::wait::Wake;

/// What the forwarder knows about the links to its smarthosts, for `outpost status` and the
/// metrics; plus the `flush` signal (`queue flush`, SIGUSR1, link events) that makes the
/// forwarder try at once, even while the link backoff would wait. Shared on one thread.
#[derive(Default)]
pub struct LinkState {
    /// One per smarthost, in config order.
    smarthosts: RefCell<Vec<SmarthostReport>>,
    /// Wall-clock Unix seconds of the last message a smarthost took (any recipient).
    last_success_unix: Cell<Option<u64>>,
    /// The last error of any smarthost, or the last deferral or bounce.
    last_error: RefCell<Option<String>>,
    /// Recipients by outcome since start, over all smarthosts.
    sent: Cell<u64>,
    deferred: Cell<u64>,
    bounced: Cell<u64>,
    /// Raised by `queue flush`, SIGUSR1 or a link event: try now, ignore the link backoff.
    pub flush: Wake,
    /// The message on its way to a smarthost now, the last one a session started (`mailq`
    /// marks it `*`).
    delivering: Cell<Option<QueueId>>,
    /// The last `RECENT` final outcomes (sent or bounced) with the smarthost's reply, for
    /// `outpost test --send`.
    recent: RefCell<std::collections::VecDeque<(QueueId, String)>>,
}

/// How many final outcomes `LinkState` remembers.
const RECENT: usize = 32;

/// A snapshot of `LinkState`. The top-level fields describe "the link" as one thing (see
/// `failover::link_view`): up while any smarthost is up, down when all are.
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
    /// While every smarthost is down: the queue time of the next probe.
    pub retry_at: Option<QueueTime>,
    /// The smarthost mail goes to now (index into `smarthosts`), while the link is up.
    pub current: Option<usize>,
    pub smarthosts: Vec<SmarthostReport>,
}

impl LinkState {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// The smarthosts (config order), none tried yet; set by the forwarder when it starts.
    pub(super) fn set_smarthosts(&self, smarthosts: &[Smarthost]) {
        *self.smarthosts.borrow_mut() = smarthosts
            .iter()
            .map(|smarthost| SmarthostReport {
                address: smarthost.address.clone(),
                ..SmarthostReport::default()
            })
            .collect();
    }

    /// The message being sent to a smarthost now, if any.
    pub fn delivering(&self) -> Option<QueueId> {
        self.delivering.get()
    }

    pub(super) fn set_delivering(&self, id: QueueId) {
        self.delivering.set(Some(id));
    }

    /// `id`'s transfer is over: it is no longer the one on its way, unless another session
    /// started one since.
    pub(super) fn delivered(&self, id: QueueId) {
        if self.delivering.get() == Some(id) {
            self.delivering.set(None);
        }
    }

    pub fn report(&self) -> LinkReport {
        let smarthosts = self.smarthosts.borrow().clone();
        let link = failover::link_view(&smarthosts);
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
            smarthosts,
        }
    }

    /// What became of message `id`, if it was sent or bounced lately: `sent REPLY` or
    /// `bounced REPLY` (the last recipient's).
    pub fn outcome(&self, id: QueueId) -> Option<String> {
        let recent = self.recent.borrow();
        recent
            .iter()
            .rev()
            .find(|(of, _)| *of == id)
            .map(|(_, o)| o.clone())
    }

    pub(super) fn record_outcome(&self, id: QueueId, outcome: String) {
        let mut recent = self.recent.borrow_mut();
        if recent.len() >= RECENT {
            recent.pop_front();
        }
        recent.push_back((id, outcome));
    }

    /// The first smarthost is up: mail goes where it is preferred, a probe would change nothing.
    pub fn primary_up(&self) -> bool {
        self.smarthosts
            .borrow()
            .first()
            .is_some_and(|r| r.up == Some(true))
    }

    pub(super) fn with_smarthost(&self, index: usize, change: impl FnOnce(&mut SmarthostReport)) {
        if let Some(smarthost) = self.smarthosts.borrow_mut().get_mut(index) {
            change(smarthost);
        }
    }

    pub(super) fn smarthost_up(&self, index: usize) {
        self.with_smarthost(index, |smarthost| {
            if smarthost.up != Some(true) {
                smarthost.up = Some(true);
                smarthost.since_unix = wall_clock_secs();
            }
            smarthost.ever_reached = true;
            smarthost.retry_at = None;
        });
    }

    pub(super) fn smarthost_down(&self, index: usize, error: &str, retry_at: QueueTime) {
        self.with_smarthost(index, |smarthost| {
            if smarthost.up != Some(false) {
                smarthost.up = Some(false);
                smarthost.since_unix = wall_clock_secs();
            }
            smarthost.last_error = Some(error.to_owned());
            smarthost.retry_at = Some(retry_at);
        });
        self.set_error(error.to_owned());
    }

    /// `queue flush`: no smarthost waits for its backoff any more.
    pub(super) fn clear_retries(&self) {
        for smarthost in self.smarthosts.borrow_mut().iter_mut() {
            smarthost.retry_at = None;
        }
    }

    pub(super) fn set_error(&self, error: String) {
        *self.last_error.borrow_mut() = Some(error);
    }

    fn count(counter: &Cell<u64>) {
        counter.set(counter.get().saturating_add(1));
    }

    pub(super) fn count_deferred(&self) {
        Self::count(&self.deferred);
    }

    pub(super) fn count_bounced(&self) {
        Self::count(&self.bounced);
    }

    pub(super) fn count_sent(&self, index: usize) {
        Self::count(&self.sent);
        self.with_smarthost(index, |smarthost| {
            smarthost.sent = smarthost.sent.saturating_add(1)
        });
        self.last_success_unix.set(Some(wall_clock_secs()));
    }
}
