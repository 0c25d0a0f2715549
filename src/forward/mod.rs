//! Delivery to the smarthost: one task that wakes on new mail, on the next due time, on a
//! flush request and at start, and pushes due messages over one connection.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::clock::QueueClock;
use crate::store::Store;

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
    /// Timeout for connect and each reply; DATA end gets 10 minutes (RFC 5321 §4.5.3.2.6).
    pub command_timeout: Duration,
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

/// Runs until `stop` is notified. Never returns an error: failures are logged and retried.
pub async fn run(
    store: Store,
    clock: QueueClock,
    params: ForwardParams,
    wake: Rc<Wake>,
    stop: Rc<Wake>,
) {
    let _ = (store, clock, params, wake, stop);
    todo!()
}
