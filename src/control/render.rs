//! What `queue list`, `queue show` and `status` print, and the per-state counts the metrics
//! share: pure functions of store records and the link report. No I/O, no clock reads (`now`
//! is an argument).

use std::fmt::Write as _;
use std::time::Duration;

use crate::clock::QueueTime;
use crate::forward::{LinkReport, SmarthostReport};
use crate::message::rfc5322_date;
use crate::store::{AttemptRecord, QueuedMessage, RcptState, Usage, KEPT_ATTEMPTS};

/// A message's overall state for listings and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageState {
    Pending,
    Deferred,
    Held,
    Failed,
}

impl MessageState {
    pub const ALL: [Self; 4] = [Self::Pending, Self::Deferred, Self::Held, Self::Failed];

    pub fn of(message: &QueuedMessage) -> Self {
        if message.recipients.iter().any(|r| r.state.is_open()) {
            if message.held {
                Self::Held
            } else if message
                .recipients
                .iter()
                .any(|r| r.state == RcptState::Deferred)
            {
                Self::Deferred
            } else {
                Self::Pending
            }
        } else if message.held {
            Self::Held
        } else {
            Self::Failed
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Deferred => "deferred",
            Self::Held => "held",
            Self::Failed => "failed",
        }
    }
}

fn rcpt_state(message: &QueuedMessage, state: RcptState) -> &'static str {
    match state {
        RcptState::Pending | RcptState::Deferred if message.held => "held",
        _ => state_word(state),
    }
}

fn state_word(state: RcptState) -> &'static str {
    match state {
        RcptState::Pending => "pending",
        RcptState::Deferred => "deferred",
        RcptState::Delivered => "sent",
        RcptState::Failed => "failed",
    }
}

/// Counts and bytes per `MessageState`, and the oldest message's age.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueSummary {
    /// Indexed like `MessageState::ALL`.
    pub messages: [u64; 4],
    pub bytes: [u64; 4],
    /// Queue-clock milliseconds since the oldest message arrived.
    pub oldest_age_ms: Option<u64>,
}

impl QueueSummary {
    /// Counts one more message (`control::queue_summary` feeds it from `Store::each`).
    pub fn add(&mut self, message: &QueuedMessage, now: QueueTime) {
        let state = MessageState::of(message);
        let slot = MessageState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or(0);
        self.messages[slot] += 1;
        self.bytes[slot] = self.bytes[slot].saturating_add(message.size);
        let age = now.saturating_sub(message.enqueued_at);
        self.oldest_age_ms = Some(self.oldest_age_ms.map_or(age, |a| a.max(age)));
    }
}

/// `1h 2m 3s` from queue-clock milliseconds, to the second.
fn age(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// `holding`: no smarthost is configured, so nothing is tried until one is.
fn next_attempt(message: &QueuedMessage, now: QueueTime, holding: bool) -> String {
    match MessageState::of(message) {
        MessageState::Held => "held (until released)".into(),
        MessageState::Failed => "never (failed)".into(),
        _ if holding => "when a smarthost is configured".into(),
        _ if message.next_attempt <= now => "now".into(),
        _ => format!("in {}", age(message.next_attempt - now)),
    }
}

/// `outpost queue list`: mailq-like, one block per message. `holding`: no smarthost configured.
pub fn render_list(messages: &[QueuedMessage], now: QueueTime, holding: bool) -> String {
    if messages.is_empty() {
        return "Mail queue is empty\n".into();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16}  {:>10}  {:>9}  {:<8}  SENDER / RECIPIENTS",
        "ID", "AGE", "SIZE", "STATE"
    );
    for m in messages {
        let sender = if m.info.sender.is_empty() {
            "<>".to_owned()
        } else {
            format!("<{}>", m.info.sender)
        };
        let _ = writeln!(
            out,
            "{:<16}  {:>10}  {:>9}  {:<8}  {sender}",
            m.id.to_string(),
            age(now.saturating_sub(m.enqueued_at)),
            m.size,
            MessageState::of(m).as_str(),
        );
        for r in &m.recipients {
            let _ = write!(
                out,
                "{:52}{:<8}  <{}>",
                "",
                rcpt_state(m, r.state),
                r.address
            );
            if let Some(reply) = &r.last_reply {
                let _ = write!(out, "  {reply}");
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{:52}next attempt: {} (attempts: {}, priority: {})",
            "",
            next_attempt(m, now, holding),
            m.attempts,
            m.info.priority
        );
    }
    let total: u64 = messages.iter().map(|m| m.size).sum();
    let _ = writeln!(out, "-- {} messages, {total} bytes", messages.len());
    out
}

/// The format version of `queue list --json` and `status --json`, raised when a field changes
/// meaning or goes away.
pub const JSON_VERSION: u32 = 1;

/// `outpost queue list --json`: an array of objects (ages in seconds), each with the format's
/// `version` first.
pub fn render_list_json(messages: &[QueuedMessage], now: QueueTime) -> String {
    let mut out = String::from("[");
    for (n, m) in messages.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let next = match MessageState::of(m) {
            MessageState::Held | MessageState::Failed => "null".to_owned(),
            _ => (m.next_attempt.saturating_sub(now) / 1000).to_string(),
        };
        let _ = write!(
            out,
            "\n{{\"version\":{},\"id\":\"{}\",\"age_secs\":{},\"size\":{},\"sender\":{},\"state\":\"{}\",\
             \"held\":{},\"attempts\":{},\"next_attempt_in_secs\":{next},\"received_unix\":{},\
             \"priority\":\"{}\",\"recipients\":[",
            JSON_VERSION,
            m.id,
            now.saturating_sub(m.enqueued_at) / 1000,
            m.size,
            json_str(&m.info.sender),
            MessageState::of(m).as_str(),
            m.held,
            m.attempts,
            m.info.received_unix,
            m.info.priority,
        );
        for (i, r) in m.recipients.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let reply = r.last_reply.as_deref().map_or("null".into(), json_str);
            let _ = write!(
                out,
                "{{\"address\":{},\"state\":\"{}\",\"last_reply\":{reply}}}",
                json_str(&r.address),
                rcpt_state(m, r.state)
            );
        }
        out.push_str("]}");
    }
    out.push_str("\n]\n");
    out
}

/// A JSON string literal.
pub fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `outpost queue show ID`.
pub fn render_show(
    m: &QueuedMessage,
    history: &[AttemptRecord],
    headers: &str,
    now: QueueTime,
    holding: bool,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "id: {}", m.id);
    let _ = writeln!(out, "state: {}", MessageState::of(m).as_str());
    let _ = writeln!(out, "sender: <{}>", m.info.sender);
    let _ = writeln!(out, "size: {} bytes", m.size);
    let _ = writeln!(out, "received: {}", rfc5322_date(m.info.received_unix));
    let _ = writeln!(
        out,
        "queued for: {}",
        age(now.saturating_sub(m.enqueued_at))
    );
    let _ = writeln!(out, "priority: {}", m.info.priority);
    let _ = writeln!(out, "attempts: {}", m.attempts);
    let _ = writeln!(out, "next attempt: {}", next_attempt(m, now, holding));
    let _ = writeln!(out, "recipients:");
    for r in &m.recipients {
        let reply = r.last_reply.as_deref().unwrap_or("no reply yet");
        let _ = writeln!(out, "  <{}> {}: {reply}", r.address, rcpt_state(m, r.state));
    }
    if history.is_empty() {
        let _ = writeln!(out, "history: no attempt yet");
    } else {
        let _ = writeln!(
            out,
            "history (oldest first, the last {KEPT_ATTEMPTS} attempts are kept):"
        );
    }
    for attempt in history {
        let _ = writeln!(out, "  {}", rfc5322_date(attempt.at_unix));
        for (idx, state, reply) in &attempt.results {
            let address = usize::try_from(*idx)
                .ok()
                .and_then(|i| m.recipients.get(i))
                .map_or("?", |r| r.address.as_str());
            let _ = writeln!(out, "    <{address}> {}: {reply}", state_word(*state));
        }
    }
    let _ = writeln!(out, "headers:");
    for line in headers.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// `outpost status`. The `link:` line is the link as one thing (up via the smarthost mail goes
/// to now, or down when every smarthost is); then one line per smarthost, in the order tried.
pub fn render_status(
    link: &LinkReport,
    summary: &QueueSummary,
    usage: Usage,
    now: Option<QueueTime>,
) -> String {
    let mut out = format!("{}\n", crate::version());
    let _ = writeln!(out, "link: {}", link_line(link));
    for (index, route) in link.smarthosts.iter().enumerate() {
        let _ = write!(out, "smarthost {} {}: ", index + 1, route.address);
        route_state(&mut out, route, link.current == Some(index), now);
    }
    if let (Some(at), Some(now)) = (link.retry_at, now) {
        let _ = writeln!(
            out,
            "next probe: in {} (`outpost queue flush` probes now)",
            age(at.saturating_sub(now))
        );
    }
    queue_lines(&mut out, summary, usage);
    let _ = writeln!(
        out,
        "last success: {}",
        link.last_success_unix.map_or("never".into(), rfc5322_date)
    );
    let _ = writeln!(
        out,
        "last error: {}",
        link.last_error.as_deref().unwrap_or("none")
    );
    let _ = writeln!(
        out,
        "since start: {} sent, {} deferred, {} bounced",
        link.sent, link.deferred, link.bounced
    );
    out
}

/// The `link:` line of `outpost status`, after `link: `.
fn link_line(link: &LinkReport) -> String {
    let hosts: Vec<&str> = link.smarthosts.iter().map(|r| r.address.as_str()).collect();
    let smarthost = match link.current {
        Some(current) => hosts.get(current).map(|h| (*h).to_owned()),
        None if hosts.is_empty() => None,
        None => Some(hosts.join(", ")),
    };
    let smarthost = smarthost.as_deref();
    match (smarthost, link.up) {
        (None, _) => "none (no smarthost configured: mail is held)".to_owned(),
        (Some(host), None) => format!("unknown ({host} not tried yet)"),
        (Some(host), Some(true)) => format!("up since {} ({host})", rfc5322_date(link.since_unix)),
        (Some(host), Some(false)) if link.ever_reached => {
            format!("down since {} ({host})", rfc5322_date(link.since_unix))
        }
        (Some(host), Some(false)) => format!(
            "down since {}, never reached ({host})",
            rfc5322_date(link.since_unix)
        ),
    }
}

/// The `queue:` and `oldest:` lines of `outpost status`.
fn queue_lines(out: &mut String, summary: &QueueSummary, usage: Usage) {
    let _ = write!(
        out,
        "queue: {} messages, {} bytes",
        usage.messages, usage.bytes
    );
    for (i, state) in MessageState::ALL.iter().enumerate() {
        let _ = write!(
            out,
            "{}{} {}",
            if i == 0 { " (" } else { ", " },
            summary.messages[i],
            state.as_str()
        );
    }
    out.push_str(")\n");
    match summary.oldest_age_ms {
        Some(ms) => {
            let _ = writeln!(out, "oldest: {}", age(ms));
        }
        None => out.push_str("oldest: -\n"),
    }
}

/// The rest of one smarthost's line in `outpost status` (after `smarthost N host:port: `).
fn route_state(out: &mut String, route: &SmarthostReport, current: bool, now: Option<QueueTime>) {
    let Some(up) = route.up else {
        out.push_str("not tried yet\n");
        return;
    };
    let since = rfc5322_date(route.since_unix);
    if up {
        let here = if current { " (mail goes here)" } else { "" };
        let _ = writeln!(out, "up since {since}, {} sent{here}", route.sent);
        return;
    }
    let _ = write!(out, "down since {since}");
    if !route.ever_reached {
        out.push_str(", never reached");
    }
    match (route.retry_at, now) {
        (Some(at), Some(now)) if at > now => {
            let _ = write!(out, " (next try in {})", age(at - now));
        }
        _ => out.push_str(" (next try now)"),
    }
    let error = route.last_error.as_deref().unwrap_or("none");
    let _ = writeln!(out, ": last error {error}");
}

/// While the link is down nothing goes before the next probe: show that as the next attempt.
pub(super) fn with_link_wait(messages: &mut [QueuedMessage], link_retry: Option<QueueTime>) {
    if let Some(at) = link_retry {
        for m in messages {
            m.next_attempt = m.next_attempt.max(at);
        }
    }
}

#[cfg(test)]
mod tests;
