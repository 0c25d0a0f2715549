//! The receiver's canned replies: each named, with its RFC 3463 enhanced status, the one table
//! the session answers from (syntax errors have theirs in `command`). Performs no I/O and
//! formats nothing for the wire (that is `Reply::write_to`).
//!
//! Exceptions to "every reply carries a status": the 220 greeting and the EHLO/HELO replies
//! (RFC 2034 §3 excludes them, and an EHLO keyword line must not start with a status), and 354
//! (RFC 3463 has no class 3).

use std::borrow::Cow;
use std::time::Duration;

use crate::smtp::reply::{EnhancedStatus, Reply};

const fn reply(code: u16, status: (u8, u16, u16), text: &'static str) -> Reply {
    let (class, subject, detail) = status;
    Reply {
        code,
        status: Some(EnhancedStatus {
            class,
            subject,
            detail,
        }),
        text: Cow::Borrowed(text),
    }
}

pub const OK: Reply = reply(250, (2, 0, 0), "Ok");
pub const SENDER_OK: Reply = reply(250, (2, 1, 0), "Ok");
pub const RECIPIENT_OK: Reply = reply(250, (2, 1, 5), "Ok");
/// RFC 5321 §3.5.3: outpost cannot verify, but will accept and try.
pub const CANNOT_VRFY: Reply = reply(252, (2, 1, 5), "Cannot VRFY user, but will accept message");
pub const HELP: Reply = reply(214, (2, 0, 0), "outpost: see RFC 5321");
pub const BYE: Reply = reply(221, (2, 0, 0), "Bye");
pub const START_DATA: Reply = Reply {
    code: 354,
    status: None,
    text: Cow::Borrowed("End data with <CR><LF>.<CR><LF>"),
};
/// RFC 3207 §4.
pub const READY_FOR_TLS: Reply = reply(220, (2, 0, 0), "Ready to start TLS");

pub const NEED_HELO: Reply = reply(503, (5, 5, 1), "Send HELO/EHLO first");
pub const NEED_MAIL: Reply = reply(503, (5, 5, 1), "Need MAIL command");
pub const NESTED_MAIL: Reply = reply(503, (5, 5, 1), "Nested MAIL command");
pub const TRANSACTION_IN_PROGRESS: Reply = reply(503, (5, 5, 1), "Mail transaction in progress");
pub const TLS_ALREADY_ACTIVE: Reply = reply(503, (5, 5, 1), "TLS already active");
pub const NOTHING_TO_COMMIT: Reply = reply(503, (5, 5, 1), "No message to commit");
pub const NOT_IMPLEMENTED: Reply = reply(502, (5, 5, 1), "Command not implemented");
/// RFC 2920 §3.1: DATA after every RCPT failed.
pub const NO_VALID_RECIPIENTS: Reply = reply(554, (5, 5, 1), "No valid recipients");
/// RFC 6531 §3.5: a non-ASCII recipient in a transaction without SMTPUTF8.
pub const NEED_SMTPUTF8: Reply = reply(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8");
pub const RELAY_DENIED: Reply = reply(554, (5, 7, 1), "Relaying denied");
pub const TOO_MANY_RECIPIENTS: Reply = reply(452, (4, 5, 3), "Too many recipients");
/// RFC 1870 §6.
pub const MESSAGE_TOO_BIG: Reply = reply(552, (5, 3, 4), "Message size exceeds fixed limit");
/// RFC 4954 §4: no AUTH over plaintext.
pub const ENCRYPTION_REQUIRED: Reply = reply(
    538,
    (5, 7, 11),
    "Encryption required for requested authentication mechanism",
);
/// RFC 4954 §4: a mechanism other than PLAIN or LOGIN.
pub const UNKNOWN_AUTH_MECHANISM: Reply = reply(504, (5, 5, 4), "Unrecognized authentication type");
/// RFC 4954 §4: one successful AUTH per session.
pub const ALREADY_AUTHENTICATED: Reply = reply(503, (5, 5, 1), "Already authenticated");
/// RFC 4954 §6.
pub const AUTH_SUCCEEDED: Reply = reply(235, (2, 7, 0), "Authentication successful");
/// RFC 4954 §6; the glue has already waited its failure delay.
pub const AUTH_FAILED: Reply = reply(535, (5, 7, 8), "Authentication credentials invalid");
/// RFC 4954 §4: the client sent `*`.
pub const AUTH_CANCELED: Reply = reply(501, (5, 0, 0), "Authentication canceled");
/// RFC 4954 §4: a response that is not base64 or not the mechanism's format.
pub const AUTH_BAD_RESPONSE: Reply = reply(501, (5, 5, 2), "Cannot decode response");
/// RFC 4954 §6.
pub const AUTH_LINE_TOO_LONG: Reply =
    reply(500, (5, 5, 6), "Authentication exchange line is too long");
pub const TOO_MANY_AUTH_FAILURES: Reply = reply(
    421,
    (4, 7, 0),
    "Too many authentication failures, closing connection",
);
/// RFC 4954 §6: `require_auth` and MAIL before AUTH.
pub const AUTH_REQUIRED: Reply = reply(530, (5, 7, 0), "Authentication required");
/// RFC 3207 §4: `require_tls` and MAIL before STARTTLS.
pub const MUST_STARTTLS: Reply = reply(530, (5, 7, 0), "Must issue a STARTTLS command first");

pub const QUEUE_FULL: Reply = reply(452, (4, 3, 1), "Insufficient system storage");
/// RFC 5321 §6.3 and RFC 3463 X.4.6: more `Received:` fields than `max_hops`.
pub const TOO_MANY_HOPS: Reply = reply(554, (5, 4, 6), "Too many hops, mail loop detected");
pub const STORE_FAILED: Reply = reply(451, (4, 3, 0), "Local error in processing");
pub const TOO_MANY_ERRORS: Reply = reply(421, (4, 7, 0), "Too many errors, closing connection");
pub const TIMEOUT: Reply = reply(421, (4, 4, 2), "Timeout, closing connection");

/// `250 2.0.0 queued as <id>`: the only success reply to the final dot.
pub fn queued_as(queue_id: &str) -> Reply {
    Reply {
        code: 250,
        status: Some(EnhancedStatus {
            class: 2,
            subject: 0,
            detail: 0,
        }),
        text: Cow::Owned(format!("queued as {queue_id}")),
    }
}

/// `[rate_limit]`: `451 4.7.1` (RFC 3463 §3.8: delivery not authorized, the policy is
/// temporary) with the sender, the limit and when to come back, e.g. `<ups@lan.test>: sender
/// rate limit exceeded (60 messages per 1h), try again in 55s`.
pub fn sender_rate_exceeded(
    sender: &str,
    messages: u32,
    window: Duration,
    retry_after: Duration,
) -> Reply {
    // At least one second: "try again in 0s" would invite a busy loop.
    let whole = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let retry = Duration::from_secs(whole.max(1));
    Reply {
        code: 451,
        status: Some(EnhancedStatus {
            class: 4,
            subject: 7,
            detail: 1,
        }),
        text: Cow::Owned(format!(
            "<{sender}>: sender rate limit exceeded ({messages} message{} per {}), try again in {}",
            if messages == 1 { "" } else { "s" },
            span(window),
            span(retry)
        )),
    }
}

/// Whole seconds as the config writes them: `1h`, `10m`, `29m 55s`, `90ms` below a second.
fn span(d: Duration) -> String {
    // Whole seconds ("29m 55s"); below one second, milliseconds.
    let shown = match d.as_secs() {
        0 => Duration::from_millis(d.subsec_millis().into()),
        secs => Duration::from_secs(secs),
    };
    humantime::format_duration(shown).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_reply_names_the_limit_and_a_readable_wait() {
        let reply = sender_rate_exceeded(
            "cam@lan.test",
            2,
            Duration::from_secs(3600),
            Duration::from_millis(1_794_100),
        );
        assert_eq!(reply.code, 451);
        assert_eq!(
            reply.text,
            "<cam@lan.test>: sender rate limit exceeded (2 messages per 1h), try again in 29m 55s"
        );
        let reply = sender_rate_exceeded("", 1, Duration::from_secs(5400), Duration::ZERO);
        assert!(
            reply
                .text
                .ends_with("(1 message per 1h 30m), try again in 1s"),
            "{}",
            reply.text
        );
    }
}
