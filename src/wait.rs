//! Listening and re-checking: the one way a task waits for something another task announces.
//! [`Wake`] is a level-triggered poke (new mail for the forwarder, a maildrop poke, a flush),
//! [`Shutdown`] a one-way broadcast flag (SIGTERM, a failed store), [`until`] a condition an
//! `event_listener::Event` announces, with a deadline (sessions ended, a sync covered the
//! removals), [`before`] a future with a deadline. Each registers its listener before the
//! second check, so a notification between the check and the wait is never missed. Single
//! thread (`Cell`); does no I/O beyond timers.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_io::Timer;
use event_listener::Event;
use futures_lite::future;

/// `from + after`, never panicking: a duration too long for `Instant` gives the latest
/// instant it can reach (halving `after` until the sum fits; at most 64 halvings).
pub fn deadline(from: Instant, after: Duration) -> Instant {
    let mut after = after;
    for _ in 0..64 {
        if let Some(at) = from.checked_add(after) {
            return at;
        }
        after /= 2;
    }
    from
}

/// A level-triggered wake-up flag shared by two tasks on one thread.
#[derive(Default)]
pub struct Wake {
    pending: Cell<bool>,
    event: Event,
}

impl Wake {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// New mail committed, `queue flush`, link-up, a maildrop poke.
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

/// A one-way broadcast flag: once raised, every current and future waiter returns.
#[derive(Default)]
pub struct Shutdown {
    raised: Cell<bool>,
    event: Event,
}

impl Shutdown {
    pub fn raise(&self) {
        self.raised.set(true);
        self.event.notify(usize::MAX);
    }

    pub fn is_raised(&self) -> bool {
        self.raised.get()
    }

    pub async fn wait(&self) {
        while !self.raised.get() {
            let listener = self.event.listen();
            if self.raised.get() {
                return;
            }
            listener.await;
        }
    }

    /// Waits for `wake` or `period`, whichever comes first; `true` when shutdown came first
    /// (the caller's loop should end).
    pub async fn interrupts(&self, period: Duration, wake: impl Future<Output = ()>) -> bool {
        let timer = async {
            Timer::after(period).await;
        };
        future::or(
            async {
                future::or(wake, timer).await;
                false
            },
            async {
                self.wait().await;
                true
            },
        )
        .await
    }
}

/// Waits until `done()` holds, rechecking whenever `event` is notified, or until `deadline`
/// passes; returns whether `done()` held.
pub async fn until(event: &Event, deadline: Instant, done: impl Fn() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        let listener = event.listen();
        if done() {
            return true;
        }
        if before(deadline, listener).await.is_none() {
            return done();
        }
    }
}

/// `work`'s output, or `None` once `deadline` passes first (`work` is then dropped).
pub async fn before<T>(deadline: Instant, work: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(work.await) }, async {
        Timer::at(deadline).await;
        None
    })
    .await
}

#[cfg(test)]
mod tests {
    use futures_lite::future::block_on;
    use smol::LocalExecutor;

    use super::*;

    #[test]
    fn returns_when_notified_and_done_or_at_the_deadline() {
        let event = Event::new();
        let flag = Cell::new(false);
        // Never done: false once the deadline passed.
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(!block_on(until(&event, soon, || flag.get())));
        // Done before waiting: true at once.
        flag.set(true);
        let far = Instant::now() + Duration::from_secs(600);
        assert!(block_on(until(&event, far, || flag.get())));
        // Done later, announced by the event: true without reaching the (far) deadline.
        flag.set(false);
        let ex = LocalExecutor::new();
        let waiter = ex.spawn(until(&event, far, || flag.get()));
        for _ in 0..3 {
            ex.try_tick();
        }
        flag.set(true);
        event.notify(usize::MAX);
        assert!(block_on(ex.run(waiter)));
    }

    #[test]
    fn before_gives_the_output_or_none_at_the_deadline() {
        let far = Instant::now() + Duration::from_secs(600);
        assert_eq!(block_on(before(far, async { 7 })), Some(7));
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(block_on(before(soon, future::pending::<u8>())), None);
    }
}
