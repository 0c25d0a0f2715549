//! Absence proven by a later event, never by a fixed sleep. `settle` waits until the relay
//! holds nothing that could still reach the smarthost, with a marker message as the event that
//! comes after anything the relay still had to send; the test then asserts what did not arrive
//! (leaving the markers out: `Smarthost::unmarked`). Every wait has a deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{assert_queued, wait_until, RawClient, RelayProcess, Smarthost, MARKER_HEADER};

/// Upper bound for the marker to arrive (times the slack).
const MARKER_DEADLINE: Duration = Duration::from_secs(30);
/// Upper bound for the queue to have nothing due (times the slack).
const QUEUE_DEADLINE: Duration = Duration::from_secs(30);

/// Waits until nothing in the relay's queue is due (`wait_nothing_due`), then sends a marker
/// message through the relay and waits for it at `smarthost`, then waits until nothing is due
/// again.
///
/// The forwarder works one message at a time, so by the time the marker (sent after the event
/// the test waited for) arrives, the work that event began — a bounce's DSN, a retry kept by
/// mistake, a smuggled second message — is queued; nothing due afterwards means it went out
/// too. The queue waits are bounded; a message that stays due is left for the test's own
/// assertion to judge, as it keeps being retried meanwhile.
pub(crate) fn settle(relay: &RelayProcess, smarthost: &Smarthost) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let _ = wait_nothing_due(relay);
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
    let _ = wait_nothing_due(relay);
}

/// Waits (polled, bounded by a slack-scaled 30 s) until no message in the relay's queue waits
/// for a delivery attempt: none is pending or deferred (`queue list --json`). Failed messages
/// kept for `queue show` and held ones do not count. Returns whether it came to that.
pub(crate) fn wait_nothing_due(relay: &RelayProcess) -> bool {
    wait_until(QUEUE_DEADLINE, Duration::from_millis(100), || {
        let list = relay.command_ok(&["queue", "list", "--json"]);
        !list.contains("\"state\":\"pending\"") && !list.contains("\"state\":\"deferred\"")
    })
}
