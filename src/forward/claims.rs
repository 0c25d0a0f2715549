//! The due mail that the sessions of one pass share, as pure bookkeeping: each delivery is taken
//! by exactly one session, in the order the store loaded it (most urgent first), and a message
//! once taken is never taken again in the pass, even while the store still lists it as due
//! because its outcome is not recorded yet. Also decides when a pass opens sessions beyond the
//! first: once a load filled the window (at least a window's worth of mail is due). No I/O.

use std::collections::{HashSet, VecDeque};

use crate::store::{QueueId, QueuedMessage};

/// A pass's shared queue of deliveries (each one message, or several for one digest).
#[derive(Default)]
pub(super) struct Claims {
    /// Loaded and not taken yet, in the store's order.
    ready: VecDeque<Vec<QueuedMessage>>,
    /// Every message taken this pass that is still in the queue: in flight, or done and kept
    /// (deferred, or its outcome not recorded). A message that left the queue is forgotten:
    /// the store never lists it again, and a pass over a deep backlog holds about a window's
    /// worth of ids, not every id it sent.
    taken: HashSet<QueueId>,
    /// Messages taken whose outcome is not recorded yet (the store still lists them as due).
    in_flight: usize,
    /// The last load returned as many messages as it asked for.
    full: bool,
    /// A session failed (or the pass ends): nothing more is taken.
    closed: bool,
    /// Sessions taking from this queue (connecting or connected).
    sessions: usize,
}

impl Claims {
    /// Nothing is ready and the pass goes on: the caller loads from the store.
    pub(super) fn needs_load(&self) -> bool {
        self.ready.is_empty() && !self.closed
    }

    /// How many due messages a load asks for so that up to `window` of them are not in flight.
    pub(super) fn load_limit(&self, window: usize) -> usize {
        window.saturating_add(self.in_flight)
    }

    /// The messages of a load (asked for `limit`) that were not taken yet this pass, in order.
    pub(super) fn fresh(&mut self, due: Vec<QueuedMessage>, limit: usize) -> Vec<QueuedMessage> {
        self.full = due.len() >= limit;
        due.into_iter()
            .filter(|m| !self.taken.contains(&m.id))
            .collect()
    }

    /// Queues the deliveries planned from `fresh`'s messages, after what is still ready.
    pub(super) fn load(&mut self, deliveries: Vec<Vec<QueuedMessage>>) {
        self.ready
            .extend(deliveries.into_iter().filter(|d| !d.is_empty()));
    }

    /// The next delivery, marked taken; `None` when nothing is ready or the queue is closed.
    pub(super) fn take(&mut self) -> Option<Vec<QueuedMessage>> {
        if self.closed {
            return None;
        }
        let delivery = self.ready.pop_front()?;
        self.taken.extend(delivery.iter().map(|m| m.id));
        self.in_flight += delivery.len();
        Some(delivery)
    }

    /// The outcome of a taken delivery is recorded (or given up on); `left(id)` says whether
    /// a message of it is out of the queue now (delivered, bounced, quarantined).
    pub(super) fn done(&mut self, delivery: &[QueuedMessage], left: impl Fn(QueueId) -> bool) {
        self.in_flight = self.in_flight.saturating_sub(delivery.len());
        for message in delivery {
            if left(message.id) {
                self.taken.remove(&message.id);
            }
        }
    }

    /// No more taking: the sessions finish what they hold and end.
    pub(super) fn close(&mut self) {
        self.closed = true;
        self.ready.clear();
    }

    /// Whether a session in waiting should decide now: the queue is closed, or a session can
    /// be added (`join` then takes it).
    pub(super) fn settled(&self, max: usize) -> bool {
        self.closed || (self.full && self.sessions < max)
    }

    /// A session starts taking: the first always, more (up to `max`) only while a load filled
    /// the window. `false`: it is not needed.
    pub(super) fn join(&mut self, max: usize) -> bool {
        let wanted = self.sessions == 0 || (self.full && self.sessions < max);
        if wanted && !self.closed {
            self.sessions += 1;
            return true;
        }
        false
    }

    /// A session ended; with the last one the pass's queue closes.
    pub(super) fn leave(&mut self) {
        self.sessions = self.sessions.saturating_sub(1);
        if self.sessions == 0 {
            self.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::priority::Priority;
    use crate::store::MessageInfo;

    fn message(id: u64, priority: Priority) -> QueuedMessage {
        QueuedMessage {
            id: QueueId(id),
            info: MessageInfo {
                sender: "a@lan.test".into(),
                recipients: vec!["b@remote.test".into()],
                eight_bit: false,
                smtputf8: false,
                received_unix: 0,
                priority,
                coalesce: None,
            },
            size: 10,
            enqueued_at: 0,
            attempts: 0,
            next_attempt: 0,
            held: false,
            recipients: Vec::new(),
        }
    }

    fn ids(delivery: &Option<Vec<QueuedMessage>>) -> Vec<u64> {
        delivery.iter().flatten().map(|m| m.id.0).collect()
    }

    /// Loads `due` (as the store returned it for `limit`) one message per delivery.
    fn load(claims: &mut Claims, due: Vec<QueuedMessage>, limit: usize) {
        let fresh = claims.fresh(due, limit);
        claims.load(fresh.into_iter().map(|m| vec![m]).collect());
    }

    #[test]
    fn sessions_take_in_load_order_and_each_message_once() {
        let mut claims = Claims::default();
        assert!(claims.join(3));
        assert!(claims.needs_load());
        let due = vec![
            message(4, Priority::Urgent),
            message(2, Priority::Normal),
            message(1, Priority::Low),
        ];
        load(&mut claims, due, 64);
        // Two sessions take in turn: the most urgent first, whichever session asks.
        assert_eq!(ids(&claims.take()), [4]);
        assert_eq!(ids(&claims.take()), [2]);
        assert_eq!(claims.load_limit(64), 66);
        // The store still lists 4 and 2 as due (not recorded yet) and now has 7 too.
        let due = vec![
            message(4, Priority::Urgent),
            message(7, Priority::Urgent),
            message(2, Priority::Normal),
        ];
        let fresh = claims.fresh(due, 66);
        assert_eq!(fresh.iter().map(|m| m.id.0).collect::<Vec<_>>(), [7]);
        claims.load(fresh.into_iter().map(|m| vec![m]).collect());
        // Deliveries are taken in load order: 1, of the first load, before 7.
        assert_eq!(ids(&claims.take()), [1]);
        assert_eq!(ids(&claims.take()), [7]);
        assert_eq!(claims.take(), None);
        // 4 and 1 were delivered (out of the queue), 2 and 7 deferred.
        for id in [4, 2, 1, 7] {
            claims.done(&[message(id, Priority::Normal)], |id| {
                [4, 1].contains(&id.0)
            });
        }
        assert_eq!(claims.load_limit(64), 64);
        // Done is still taken while in the queue: a message deferred this pass is not tried
        // again in it.
        load(&mut claims, vec![message(2, Priority::Normal)], 64);
        assert_eq!(claims.take(), None);
        // What left the queue is forgotten: the pass holds no id of it.
        assert_eq!(claims.taken.len(), 2);
    }

    #[test]
    fn a_digest_is_taken_whole() {
        let mut claims = Claims::default();
        claims.load(vec![
            vec![message(1, Priority::Normal), message(3, Priority::Normal)],
            Vec::new(),
            vec![message(2, Priority::Low)],
        ]);
        assert_eq!(ids(&claims.take()), [1, 3]);
        assert_eq!(claims.load_limit(10), 12);
        assert_eq!(ids(&claims.take()), [2]);
        assert_eq!(claims.take(), None);
    }

    #[test]
    fn more_sessions_start_only_once_a_load_filled_the_window() {
        let mut claims = Claims::default();
        assert!(claims.join(3));
        // A short load: one session is enough.
        load(&mut claims, vec![message(1, Priority::Normal)], 4);
        assert!(!claims.settled(3));
        assert!(!claims.join(3));
        // A full load: up to three sessions.
        let due = (10..14).map(|id| message(id, Priority::Normal)).collect();
        load(&mut claims, due, 4);
        assert!(claims.settled(3));
        assert!(claims.join(3));
        assert!(claims.join(3));
        assert!(!claims.settled(3));
        assert!(!claims.join(3));
        // With one allowed, never a second.
        let mut one = Claims::default();
        assert!(one.join(1));
        load(
            &mut one,
            (1..5).map(|id| message(id, Priority::Normal)).collect(),
            4,
        );
        assert!(!one.join(1));
    }

    #[test]
    fn a_closed_queue_hands_out_nothing_and_the_last_session_closes_it() {
        let mut claims = Claims::default();
        assert!(claims.join(2));
        load(
            &mut claims,
            (1..5).map(|id| message(id, Priority::Normal)).collect(),
            4,
        );
        assert!(claims.join(2));
        assert_eq!(ids(&claims.take()), [1]);
        // One session failed: the other gets nothing more, a waiting one is told to stop.
        claims.close();
        assert!(!claims.needs_load());
        assert_eq!(claims.take(), None);
        assert!(claims.settled(3));
        assert!(!claims.join(3));
        // The last session out closes the queue for good, even one not closed before.
        let mut claims = Claims::default();
        assert!(claims.join(2));
        claims.leave();
        assert!(claims.settled(2));
        assert!(!claims.join(2));
    }
}
