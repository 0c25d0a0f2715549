//! Absence proven by a later event, never by a fixed sleep. `settle` waits until the relay
//! holds nothing that could still reach the smarthost, with a marker message as the event that
//! comes after anything the relay still had to send; the test then asserts what did not arrive
//! (leaving the markers out: `Smarthost::unmarked`). Every wait has a deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{assert_queued, wait_until, RawClient, RelayProcess, Smarthost, MARKER_HEADER};

/// Upper bound for the marker to arrive (times the slack).
const MARKER_DEADLINE: Duration = Duration::from_secs(30);

/// Waits until the relay's queue is empty, then sends a marker message through the relay and
/// waits for it at `smarthost`, then waits for the queue to be empty again.
///
/// The forwarder works one message at a time, so by the time the marker (sent after the event
/// the test waited for) arrives, the work that event began — a bounce's DSN, a retry kept by
/// mistake, a smuggled second message — is queued; the second empty queue means it went out
/// too. The queue waits are bounded (`wait_queue_empty`); a queue that does not drain is left
/// for the test's own assertion to judge, as a message stuck in it keeps being retried.
pub(crate) fn settle(relay: &RelayProcess, smarthost: &Smarthost) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let _ = relay.wait_queue_empty();
    let marker = format!("{MARKER_HEADER}: {n}\r\nSubject: marker {n}\r\n\r\nmarker\r\n");
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail(
        "marker@lan.test",
        &["marker@remote.test"],
        marker.as_bytes(),
    ));
    let _ = client.try_send(b"QUIT\r\n");
    let line = format!("{MARKER_HEADER}: {n}");
    let arrived = wait_until(MARKER_DEADLINE, Duration::from_millis(25), || {
        smarthost
            .delivered()
            .iter()
            .any(|m| m.data_str().lines().any(|l| l == line))
    });
    if !arrived {
        relay.fail(&format!("marker {n} did not reach the smarthost"));
    }
    let _ = relay.wait_queue_empty();
}
