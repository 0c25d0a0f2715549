//! Waiting with a deadline: for a future ([`before`]: the daemon's shutdown waits so for the
//! forwarder), or for a condition that an `event_listener::Event` announces ([`until`]: the one
//! loop the shutdown (sessions ended) and the store's removal grace (a sync covered the
//! removals) both need; it registers the listener before the second check, so a notification
//! between the check and the wait is never missed).

use std::future::Future;
use std::time::Instant;

use async_io::Timer;
use event_listener::Event;
use futures_lite::future;

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
    use std::cell::Cell;
    use std::time::Duration;

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
