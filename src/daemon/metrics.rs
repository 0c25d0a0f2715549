//! `[metrics] listen`: Prometheus text exposition (format 0.0.4) on `GET /metrics`.
//!
//! A hand-written HTTP/1.1 responder for exactly one request per connection: every HTTP
//! server crate that fits a single-threaded smol executor pulls in hyper (or brings its own
//! runtime), which is more code than everything here on a 512 MB board. It reads one request
//! head (bounded in size and time), answers with `Connection: close`, and never keeps a
//! connection open, reads a body, or touches the store beyond `list`/`usage`.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use log::{debug, info, warn};
use smol::LocalExecutor;

use super::DaemonError;
use crate::accept;
use crate::control::{self, MessageState, QueueSummary};
use crate::forward::{LinkReport, SmarthostReport};
use crate::intake::Reject;
use crate::shared::Shared;

/// Longest request head (request line + headers).
const MAX_HEAD: usize = 8 * 1024;
/// A scraper gets this long to send its request and read the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once; more are closed at accept.
const MAX_SCRAPES: usize = 4;

pub(super) fn bind(addr: SocketAddr) -> Result<Async<TcpListener>, DaemonError> {
    TcpListener::bind(addr)
        .and_then(Async::new)
        .map_err(|source| DaemonError::Bind { addr, source })
}

/// Accepts scrapers until shutdown.
pub(super) async fn serve(
    ex: Rc<LocalExecutor<'static>>,
    listener: Async<TcpListener>,
    shared: Rc<Shared>,
) {
    if let Ok(addr) = listener.get_ref().local_addr() {
        info!("metrics on http://{addr}/metrics");
    }
    let busy = Rc::new(Cell::new(0usize));
    let accept = || listener.accept();
    accept::until_shutdown(shared.shutdown(), "metrics: ", accept, |(stream, _)| {
        if busy.get() >= MAX_SCRAPES {
            return; // dropped: closed
        }
        busy.set(busy.get() + 1);
        let (shared, busy) = (shared.clone(), busy.clone());
        ex.spawn(async move {
            let served = future::or(scrape(stream, &shared), async {
                Timer::after(SCRAPE_TIMEOUT).await;
                Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
            });
            if let Err(e) = served.await {
                debug!("metrics client: {e}");
            }
            busy.set(busy.get().saturating_sub(1));
        })
        .detach();
    })
    .await;
}

async fn scrape(mut stream: Async<TcpStream>, shared: &Shared) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (words.next(), words.next());
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let body = render(shared);
            respond(&mut stream, "200 OK", &body).await
        }
        (Some(b"GET"), _) => respond(&mut stream, "404 Not Found", "try /metrics\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "").await,
    }
}

async fn respond(stream: &mut Async<TcpStream>, status: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

fn render(shared: &Shared) -> String {
    let now = shared.clock().now();
    let summary = control::queue_summary(shared.store(), now).unwrap_or_else(|e| {
        warn!("metrics: cannot read the queue: {e}");
        QueueSummary::default()
    });
    let sample = Sample {
        summary,
        link: shared.link().report(),
        accepted: shared.intake().accepted(),
        sessions: shared.sessions().count(),
        disk_free: shared.intake().disk_free(),
        rejected: Reject::ALL.map(|r| (r, shared.intake().rejected(r))),
    };
    let mut out = exposition(&sample);
    store_damage(&mut out, shared.store().damage());
    out
}

/// The store's damage counters (`store::Damage`): since start, in this process.
fn store_damage(out: &mut String, d: crate::store::Damage) {
    for (name, help, value) in [
        (
            "store_recovered_total",
            "Messages rebuilt from the body file journal.",
            d.recovered,
        ),
        (
            "store_quarantined_total",
            "Messages, body files or records kept aside.",
            d.quarantined,
        ),
        (
            "store_lost_total",
            "Messages the journal names whose body is damaged.",
            d.lost,
        ),
        (
            "store_bad_records_total",
            "Damaged body file journal records skipped.",
            d.bad_records,
        ),
    ] {
        family(out, (name, "counter", help), &[(String::new(), value)]);
    }
}

/// What one scrape reports.
struct Sample {
    summary: QueueSummary,
    link: LinkReport,
    accepted: u64,
    sessions: usize,
    /// Free bytes where `data_dir` is, if known.
    disk_free: Option<u64>,
    /// Mail refused at the door since start, by reason.
    rejected: [(Reject, u64); 4],
}

/// A metric family: name (after `outpost_`), type, help text.
type Family = (&'static str, &'static str, &'static str);

const QUEUE_OLDEST_AGE_SECONDS: Family = (
    "queue_oldest_age_seconds",
    "gauge",
    "Time the oldest queued message has spent in the queue (0 when empty).",
);
const ACCEPTED_TOTAL: Family = (
    "accepted_total",
    "counter",
    "Messages accepted into the queue since start (SMTP and sendmail).",
);
const SENT_TOTAL: Family = (
    "sent_total",
    "counter",
    "Recipients the smarthost accepted since start.",
);
const DEFERRED_TOTAL: Family = (
    "deferred_total",
    "counter",
    "Recipient attempts deferred (temporary failure) since start.",
);
const BOUNCED_TOTAL: Family = (
    "bounced_total",
    "counter",
    "Recipients failed for good (5xx or expired) since start.",
);
const LINK_UP: Family = (
    "link_up",
    "gauge",
    "1 when the last attempt reached the smarthost, else 0.",
);
const LINK_KNOWN: Family = (
    "link_known",
    "gauge",
    "1 once the smarthost has been tried since start (0 also without a smarthost).",
);
const LINK_CHANGE_TIMESTAMP_SECONDS: Family = (
    "link_change_timestamp_seconds",
    "gauge",
    "Unix time of the last link state change (0: none yet).",
);
const LAST_SUCCESS_TIMESTAMP_SECONDS: Family = (
    "last_success_timestamp_seconds",
    "gauge",
    "Unix time of the last delivery to the smarthost (0: none since start).",
);
const SMTP_SESSIONS: Family = ("smtp_sessions", "gauge", "SMTP sessions open now.");
const QUEUE_OLDEST_SECONDS: Family = (
    "queue_oldest_seconds",
    "gauge",
    "Time the oldest queued message has spent in the queue (0 when empty).",
);
const ACCEPTED_MESSAGES_TOTAL: Family = (
    "accepted_messages_total",
    "counter",
    "Messages accepted into the queue since start (SMTP and sendmail).",
);
const SENT_RECIPIENTS_TOTAL: Family = (
    "sent_recipients_total",
    "counter",
    "Recipients the smarthost accepted since start.",
);
const DEFERRED_RECIPIENTS_TOTAL: Family = (
    "deferred_recipients_total",
    "counter",
    "Recipient attempts deferred (temporary failure) since start.",
);
const BOUNCED_RECIPIENTS_TOTAL: Family = (
    "bounced_recipients_total",
    "counter",
    "Recipients failed for good (5xx or expired) since start.",
);
const BUILD_INFO: Family = (
    "build_info",
    "gauge",
    "Always 1; the label says which outpost answers.",
);
const REJECTED_TOTAL: Family = (
    "rejected_total",
    "counter",
    "Mail refused on the way in since start, by reason: connections (max_connections), disk \
     (data_dir nearly full), queue_full (queue.max_bytes), rate_limit.",
);
const DISK_FREE_BYTES: Family = (
    "disk_free_bytes",
    "gauge",
    "Bytes outpost may still write where data_dir is (absent when unknown).",
);

/// The Prometheus text format (one HELP and TYPE per family).
fn exposition(s: &Sample) -> String {
    let mut out = String::new();
    let by_state = |values: &[u64; 4]| -> Vec<(String, u64)> {
        MessageState::ALL
            .iter()
            .zip(values)
            .map(|(state, v)| (format!("{{state=\"{}\"}}", state.as_str()), *v))
            .collect()
    };
    let messages = ("queue_messages", "gauge", "Messages in the queue by state.");
    family(&mut out, messages, &by_state(&s.summary.messages));
    let bytes = (
        "queue_bytes",
        "gauge",
        "Message bytes in the queue by state.",
    );
    family(&mut out, bytes, &by_state(&s.summary.bytes));
    for (kind, value) in plain_samples(s) {
        family(&mut out, kind, &[(String::new(), value)]);
    }
    let version = format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    family(&mut out, BUILD_INFO, &[(version, 1)]);
    let rejected: Vec<(String, u64)> = s
        .rejected
        .iter()
        .map(|(reason, n)| (format!("{{reason=\"{}\"}}", reason.as_str()), *n))
        .collect();
    family(&mut out, REJECTED_TOTAL, &rejected);
    if let Some(free) = s.disk_free {
        family(&mut out, DISK_FREE_BYTES, &[(String::new(), free)]);
    }
    // Per smarthost (`[[smarthost]]` order), labelled with its `host:port`.
    let routes = &s.link.smarthosts;
    per_route(
        &mut out,
        ["smarthost_up", "gauge"],
        "1 when the last attempt over this smarthost completed the handshake, else 0.",
        routes,
        |r| u64::from(r.up == Some(true)),
    );
    per_route(
        &mut out,
        ["smarthost_change_timestamp_seconds", "gauge"],
        "Unix time of this smarthost's last link state change (0: none yet).",
        routes,
        |r| r.since_unix,
    );
    per_route(
        &mut out,
        ["smarthost_sent_total", "counter"],
        "Recipients this smarthost accepted since start.",
        routes,
        |r| r.sent,
    );
    out
}

/// The families with one unlabelled sample each, in exposition order.
fn plain_samples(s: &Sample) -> [(Family, u64); 15] {
    let link = &s.link;
    let oldest = s.summary.oldest_age_ms.unwrap_or(0) / 1000;
    [
        (QUEUE_OLDEST_SECONDS, oldest),
        (ACCEPTED_MESSAGES_TOTAL, s.accepted),
        (SENT_RECIPIENTS_TOTAL, link.sent),
        (DEFERRED_RECIPIENTS_TOTAL, link.deferred),
        (BOUNCED_RECIPIENTS_TOTAL, link.bounced),
        (QUEUE_OLDEST_AGE_SECONDS, oldest),
        (ACCEPTED_TOTAL, s.accepted),
        (SENT_TOTAL, link.sent),
        (DEFERRED_TOTAL, link.deferred),
        (BOUNCED_TOTAL, link.bounced),
        (LINK_UP, u64::from(link.up == Some(true))),
        (
            LINK_KNOWN,
            u64::from(!link.smarthosts.is_empty() && link.up.is_some()),
        ),
        (LINK_CHANGE_TIMESTAMP_SECONDS, link.since_unix),
        (
            LAST_SUCCESS_TIMESTAMP_SECONDS,
            link.last_success_unix.unwrap_or(0),
        ),
        (SMTP_SESSIONS, u64::try_from(s.sessions).unwrap_or(u64::MAX)),
    ]
}

/// One family: its HELP and TYPE lines, then its samples.
fn family(out: &mut String, (name, kind, help): Family, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP outpost_{name} {help}");
    let _ = writeln!(out, "# TYPE outpost_{name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "outpost_{name}{labels} {value}");
    }
}

/// One family with a sample per smarthost. The label needs no escaping: the config admits only
/// `host:port` (a host name, an IPv4 or a bracketed IPv6 address): no quote, backslash or newline.
fn per_route(
    out: &mut String,
    [name, kind]: [&str; 2],
    help: &str,
    routes: &[SmarthostReport],
    value: fn(&SmarthostReport) -> u64,
) {
    let _ = write!(
        out,
        "# HELP outpost_{name} {help}\n# TYPE outpost_{name} {kind}\n"
    );
    for route in routes {
        let _ = writeln!(
            out,
            "outpost_{name}{{smarthost=\"{}\"}} {}",
            route.address,
            value(route)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_labelled_states() {
        let sample = Sample {
            summary: QueueSummary {
                messages: [1, 2, 0, 3],
                bytes: [10, 20, 0, 30],
                oldest_age_ms: Some(61_500),
            },
            link: LinkReport {
                up: Some(true),
                sent: 7,
                current: Some(1),
                smarthosts: vec![
                    SmarthostReport {
                        address: "mx1.example:587".into(),
                        up: Some(false),
                        since_unix: 1_700_000_000,
                        ..SmarthostReport::default()
                    },
                    SmarthostReport {
                        address: "lte.example:587".into(),
                        up: Some(true),
                        sent: 7,
                        ..SmarthostReport::default()
                    },
                ],
                ..LinkReport::default()
            },
            accepted: 9,
            sessions: 1,
            disk_free: Some(123_456),
            rejected: Reject::ALL.map(|r| (r, u64::from(r == Reject::QueueFull) * 4)),
        };
        let text = exposition(&sample);
        assert!(
            text.contains("# TYPE outpost_queue_messages gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("outpost_queue_messages{state=\"deferred\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("outpost_queue_bytes{state=\"failed\"} 30\n"));
        assert!(text.contains("outpost_queue_oldest_age_seconds 61\n"));
        assert!(text.contains("outpost_accepted_total 9\n"));
        assert!(text.contains("outpost_sent_total 7\n"));
        assert!(text.contains("outpost_link_up 1\n"));
        // The names that say what they count, next to the older ones.
        assert!(text.contains("outpost_queue_oldest_seconds 61\n"));
        assert!(text.contains("outpost_accepted_messages_total 9\n"));
        assert!(text.contains("outpost_sent_recipients_total 7\n"));
        assert!(text.contains("outpost_deferred_recipients_total 0\n"));
        assert!(text.contains("outpost_bounced_recipients_total 0\n"));
        let build = format!(
            "outpost_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
        assert!(text.contains("outpost_disk_free_bytes 123456\n"));
        assert!(text.contains("outpost_rejected_total{reason=\"queue_full\"} 4\n"));
        assert!(text.contains("outpost_rejected_total{reason=\"rate_limit\"} 0\n"));
        assert!(text.contains("outpost_link_known 1\n"));
        assert!(text.contains("outpost_smarthost_up{smarthost=\"mx1.example:587\"} 0\n"));
        assert!(text.contains("outpost_smarthost_up{smarthost=\"lte.example:587\"} 1\n"));
        assert!(text.contains(
            "outpost_smarthost_change_timestamp_seconds{smarthost=\"mx1.example:587\"} 1700000000\n"
        ));
        assert!(text.contains("outpost_smarthost_sent_total{smarthost=\"lte.example:587\"} 7\n"));
        // Every sample line belongs to a family declared just before.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
