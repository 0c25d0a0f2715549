//! The periodic word to the administrator about the queue. A notice goes to `admin` when the
//! oldest waiting message has waited longer than `[notify] queue_age`, when the queue holds more
//! than `[notify] queue_fill` percent of `[queue] max_bytes`, and when the free disk under
//! `data_dir` falls under the reserve. One notice when a condition starts, then at most one per
//! `[notify] interval` for that condition. Reads the config at each check; queues notices
//! through intake (`Intake::notify_admin`) and never touches the store's records.

use std::rc::Rc;
use std::time::{Duration, Instant};

use async_io::Timer;
use log::{debug, error};

use crate::shared::Shared;

/// The longest and the shortest wait between two checks (half of `queue_age` in between).
const CHECK_MAX: Duration = Duration::from_secs(60);
const CHECK_MIN: Duration = Duration::from_secs(1);

/// The conditions, in the order checked; `kind` names a notice in log lines.
const KINDS: [&str; 3] = ["queue_age", "queue_fill", "disk_free"];

/// Checks the queue until the daemon stops (spawned by the daemon, dropped at shutdown).
pub async fn watch(shared: Rc<Shared>) {
    let mut sent: [Option<Instant>; 3] = [None; 3];
    loop {
        let notify = shared.config().notify.clone();
        Timer::after((notify.queue_age / 2).clamp(CHECK_MIN, CHECK_MAX)).await;
        let found = conditions(&shared);
        for ((kind, last), found) in KINDS.iter().zip(sent.iter_mut()).zip(found) {
            let Some((subject, text)) = found else {
                continue;
            };
            if last.is_some_and(|at| at.elapsed() < notify.interval) {
                debug!("notice ({kind}) held back: one was sent less than notify.interval ago");
                continue;
            }
            *last = Some(Instant::now());
            shared.intake().notify_admin(kind, &subject, &text).await;
        }
    }
}

/// Subject and text of each condition that holds now, in `KINDS` order.
fn conditions(shared: &Shared) -> [Option<(String, String)>; 3] {
    let config = shared.config();
    let now = shared.clock().now();
    let oldest = shared.store().oldest_waiting().unwrap_or_else(|e| {
        error!("notice check: cannot read the queue: {e}");
        None
    });
    let usage = shared.store().usage();
    let link = shared.link().report();
    let smarthost = link.last_error.as_deref().unwrap_or("no error recorded");
    let age = oldest.and_then(|m| {
        let waited = Duration::from_millis(now.saturating_sub(m.enqueued_at));
        (waited > config.notify.queue_age).then(|| {
            let waited = humantime::format_duration(Duration::from_secs(waited.as_secs()));
            let to: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
            (
                format!("outpost: mail has waited {waited} in the queue"),
                format!(
                    "The oldest message in the queue has waited {waited}, longer than \
                     [notify] queue_age.\n\nQueue ID: {}\nFrom: <{}>\nTo: <{}>\n\n\
                     Messages queued: {}\nLast smarthost error: {smarthost}\n",
                    m.id,
                    m.info.sender,
                    to.join(">, <"),
                    usage.messages
                ),
            )
        })
    });
    let max = config.queue.max_bytes;
    let fill = (usage.bytes.saturating_mul(100)
        > max.saturating_mul(u64::from(config.notify.queue_fill)))
    .then(|| {
        (
            format!(
                "outpost: the queue is over {}% full",
                config.notify.queue_fill
            ),
            format!(
                "The queue holds {} bytes in {} messages, more than [notify] queue_fill \
                     ({}%) of [queue] max_bytes ({max}). At max_bytes new mail is refused \
                     (452).\n\nLast smarthost error: {smarthost}\n",
                usage.bytes, usage.messages, config.notify.queue_fill
            ),
        )
    });
    let disk = shared.intake().short_of_space().map(|free| {
        (
            "outpost: the disk under the queue is almost full".to_owned(),
            format!(
                "Only {free} bytes are free where the queue is ({}), less than the reserve \
                 outpost keeps: new mail is refused (452) until space is freed.\n",
                config.data_dir.display()
            ),
        )
    });
    [age, fill, disk]
}
