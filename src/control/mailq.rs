//! `mailq` (and `sendmail -bp`) in Postfix's listing format, so that the monitoring written for
//! Postfix (nagios-plugins' `check_mailq -M postfix`, munin) reads outpost's queue. A pure
//! function of store records; `outpost queue list` keeps its own format (`render`).
//!
//! The layout, column for column (Postfix's showq):
//!
//! ```text
//! -Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
//! 0123456789ABCDEF*      406 Sun Dec  6 18:00:00  alice@lan.test
//!                                             (451 4.3.0 try again later)
//!                                          bob@example.org
//!
//! -- 0 Kbytes in 1 Request.
//! ```
//!
//! A message being delivered is marked `*`, a held one `!`; failed messages (kept only for
//! `queue show`) are not listed: they are no longer queued for delivery.

use std::fmt::Write as _;

use crate::message::rfc5322_date;
use crate::store::{QueueId, QueuedMessage, RcptState};

use super::render::MessageState;

/// The header line, as Postfix prints it.
pub const MAILQ_HEADER: &str = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------";
/// The listing of an empty queue.
pub const MAILQ_EMPTY: &str = "Mail queue is empty\n";
/// The column the deferral reason's closing parenthesis is padded towards.
const REASON_WIDTH: usize = 76;

/// The listing; `delivering` is the message on its way to the smarthost now, `link_down` the
/// reason no smarthost can be reached (shown for recipients not tried yet).
pub fn render_mailq(
    messages: &[QueuedMessage],
    delivering: Option<QueueId>,
    link_down: Option<&str>,
) -> String {
    let listed: Vec<&QueuedMessage> = messages
        .iter()
        .filter(|m| MessageState::of(m) != MessageState::Failed)
        .collect();
    if listed.is_empty() {
        return MAILQ_EMPTY.to_owned();
    }
    let mut out = format!("{MAILQ_HEADER}\n");
    for (n, message) in listed.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let mark = if message.held {
            '!'
        } else if delivering == Some(message.id) {
            '*'
        } else {
            ' '
        };
        entry(&mut out, message, mark, link_down);
    }
    let bytes: u64 = listed.iter().map(|m| m.size).sum();
    let count = listed.len();
    let plural = if count == 1 { "" } else { "s" };
    let _ = write!(
        out,
        "\n-- {} Kbytes in {count} Request{plural}.\n",
        bytes / 1024
    );
    out
}

/// One message: its line, then each recipient still to deliver, each group of recipients with
/// the same deferral reason after that reason in parentheses.
fn entry(out: &mut String, message: &QueuedMessage, mark: char, link_down: Option<&str>) {
    let sender = if message.info.sender.is_empty() {
        "MAILER-DAEMON"
    } else {
        message.info.sender.as_str()
    };
    let _ = writeln!(
        out,
        "{:<10}{mark} {:>8} {:<20.20} {sender}",
        message.id.to_string(),
        message.size,
        asctime(message.info.received_unix),
    );
    let mut last_reason: Option<&str> = None;
    for recipient in message.recipients.iter().filter(|r| r.state.is_open()) {
        let reason = match recipient.state {
            RcptState::Deferred => recipient.last_reply.as_deref().or(link_down),
            _ if message.held => None,
            _ => link_down,
        };
        if let Some(reason) = reason.filter(|r| Some(*r) != last_reason) {
            let one_line: String = reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let padding = REASON_WIDTH.saturating_sub(one_line.chars().count());
            let _ = writeln!(out, "{:padding$}({one_line})", "");
        }
        last_reason = reason;
        let _ = writeln!(out, "{:<10} {:>8} {:<20} {}", "", "", "", recipient.address);
    }
}

/// asctime(3) in UTC without the year and newline, padded to 20 columns as Postfix cuts it:
/// `Sun Dec  6 18:00:00 `.
fn asctime(unix_secs: u64) -> String {
    // "Sun, 06 Dec 2026 18:00:00 +0000"
    let date = rfc5322_date(unix_secs);
    let mut words = date.split(' ');
    let weekday = words.next().unwrap_or("").trim_end_matches(',');
    let day = words.next().unwrap_or("").trim_start_matches('0');
    let month = words.next().unwrap_or("");
    let _year = words.next();
    let time = words.next().unwrap_or("");
    format!("{weekday} {month} {day:>2} {time} ")
}

#[cfg(test)]
mod tests;
