//! What the daemon tells its service manager (sd_notify(3) through `sd_notify::Notifier`):
//! `READY=1` once the queue is open and the listeners bound, `STATUS=` with the queue size and
//! the link state whenever either changes (checked at most every `STATUS_INTERVAL`),
//! `WATCHDOG=1` every half `WATCHDOG_USEC`, and `STOPPING=1` at shutdown.
//!
//! Never blocks or fails the daemon: without `NOTIFY_SOCKET` every call does nothing, and a
//! send that fails is logged at debug.

use std::rc::Rc;
use std::time::Duration;

use async_io::Timer;

use crate::sd_notify::{status_line, Notifier};
use crate::shared::Shared;

/// How often the status is compared with the one last sent (the bound on `STATUS=` updates).
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// `READY=1` with the first status.
pub(super) fn ready(notifier: &Notifier, shared: &Shared) {
    notifier.notify(&format!("READY=1\n{}", status_line(&status_text(shared))));
}

/// `STOPPING=1` with a status saying so.
pub(super) fn stopping(notifier: &Notifier) {
    notifier.notify(&format!("STOPPING=1\n{}", status_line("shutting down")));
}

/// `STATUS=` updates and `WATCHDOG=1` keep-alives until the task is dropped; returns at once
/// without a service manager.
pub(super) async fn report(notifier: Rc<Notifier>, shared: Rc<Shared>) {
    if !notifier.is_active() {
        return;
    }
    let watchdog = notifier.watchdog_interval();
    let tick = watchdog.map_or(STATUS_INTERVAL, |w| w.min(STATUS_INTERVAL));
    let mut last = status_text(&shared);
    let mut since_watchdog = Duration::ZERO;
    loop {
        Timer::after(tick).await;
        since_watchdog += tick;
        if let Some(interval) = watchdog {
            if since_watchdog >= interval {
                notifier.notify("WATCHDOG=1");
                since_watchdog = Duration::ZERO;
            }
        }
        let now = status_text(&shared);
        if now != last {
            notifier.notify(&status_line(&now));
            last = now;
        }
    }
}

/// `queue: 3 messages, 12 KiB; link: up` (or `down`, `not tried yet`, `no smarthost`).
fn status_text(shared: &Shared) -> String {
    let usage = shared.store().usage();
    let link = shared.link().report();
    let state = match link.up {
        _ if shared.config().smarthosts.is_empty() => "no smarthost",
        Some(true) => "up",
        Some(false) => "down",
        None => "not tried yet",
    };
    format!(
        "queue: {} message{}, {} KiB; link: {state}",
        usage.messages,
        if usage.messages == 1 { "" } else { "s" },
        usage.bytes.div_ceil(1024)
    )
}
