//! Delivery policy: the one place that turns what the smarthost said (stage + `Reply`) into a
//! decision, after Postfix's `smtp_trouble`:
//!
//! - site failures (connect, greeting, EHLO/HELO, STARTTLS, lost link): `ForwardError`; all
//!   mail is retried later and no message's attempt count is burned;
//! - message failures (MAIL): 4xx retries every recipient, 5xx bounces every recipient;
//! - recipient failures (RCPT): 4xx retries, 5xx bounces that recipient only;
//! - DATA and the final dot apply to every recipient accepted at RCPT;
//! - a reply outside 2xx–5xx, or a positive reply where another was due (a 3xx to MAIL, a 250
//!   to DATA), is a protocol error and retried.
//!
//! Pure: no I/O, no clock.

use std::fmt;
use std::io;

use crate::smtp::client::{DeliveryReport, SessionFailure, Stage};
use crate::smtp::reply::{Reply, ReplyError, Severity};

/// What happens to one recipient after an attempt. Each carries the reply that decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The smarthost took responsibility (250 to the final dot).
    Delivered(Reply),
    /// Try again later.
    Retry(Reply),
    /// Permanent failure: mark failed, send a DSN.
    Bounce(Reply),
}

impl Outcome {
    pub fn reply(&self) -> &Reply {
        match self {
            Self::Delivered(reply) | Self::Retry(reply) | Self::Bounce(reply) => reply,
        }
    }
}

/// One stage's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Proceed,
    Retry,
    Fail,
}

/// The verdict on `reply` at `stage`.
fn verdict(stage: Stage, reply: &Reply) -> Verdict {
    let expected = match stage {
        Stage::Data | Stage::Greeting | Stage::StartTls => {
            reply.code == if stage == Stage::Data { 354 } else { 220 }
        }
        _ => reply.is_positive(),
    };
    if expected {
        return Verdict::Proceed;
    }
    match reply.severity() {
        Severity::TransientNegative => Verdict::Retry,
        Severity::PermanentNegative => Verdict::Fail,
        // Protocol error: neither side knows what happened; retry is the safe answer.
        Severity::PositiveCompletion | Severity::PositiveIntermediate | Severity::Invalid => {
            Verdict::Retry
        }
    }
}

/// Per-recipient outcomes of one message, in the report's recipient order.
pub fn outcomes_of(report: &DeliveryReport) -> Vec<Outcome> {
    (0..report.recipients.len())
        .map(|i| outcome_of(report, i))
        .collect()
}

fn outcome_of(report: &DeliveryReport, index: usize) -> Outcome {
    if let Some(local) = &report.local {
        return if local.is_transient() {
            Outcome::Retry(local.clone())
        } else {
            Outcome::Bounce(local.clone())
        };
    }
    let rcpt = report.recipients.get(index).and_then(Option::as_ref);
    let stages = [
        (Stage::Mail, report.mail.as_ref()),
        (Stage::Rcpt, rcpt),
        (Stage::Data, report.data.as_ref()),
        (Stage::DataEnd, report.data_end.as_ref()),
    ];
    let mut last = None;
    for (stage, reply) in stages {
        let Some(reply) = reply else {
            // A stage never reached although all before it went well: the session broke off
            // without a reason (should not happen: the session fills one in).
            return Outcome::Retry(no_reply(stage));
        };
        match verdict(stage, reply) {
            Verdict::Proceed => last = Some(reply),
            Verdict::Retry => return Outcome::Retry(reply.clone()),
            Verdict::Fail => return Outcome::Bounce(reply.clone()),
        }
    }
    match last {
        Some(reply) => Outcome::Delivered(reply.clone()),
        None => Outcome::Retry(no_reply(Stage::DataEnd)),
    }
}

fn no_reply(stage: Stage) -> Reply {
    Reply::new(451, None, format!("no reply from smarthost to {stage}"))
}

/// A failure that stops a whole session before or between messages (a site failure).
/// The forwarder keeps all mail queued either way; `is_transient` says whether waiting alone
/// can fix it (otherwise the operator has to look, e.g. at the TLS policy).
#[derive(Debug)]
pub enum ForwardError {
    /// Resolving or connecting to the smarthost failed.
    Connect(io::Error),
    /// Reading or writing the connection failed.
    Io(io::Error),
    /// No reply within the timeout.
    Timeout(Stage),
    /// The smarthost sent something that is not a reply.
    Protocol(ReplyError),
    /// The smarthost refused the session (greeting, EHLO, STARTTLS, AUTH, 421).
    Session(SessionFailure),
    /// The TLS handshake failed (worded for the operator: certificate name, issuer, clock).
    /// `transient` when waiting can fix it (a wrong clock, a broken connection).
    Tls { message: String, transient: bool },
    /// The OAuth 2.0 token endpoint gave no access token (unreachable, an HTTP error such as
    /// `invalid_grant`, a bad reply). The mail waits; the operator may have to act.
    Token { endpoint: String, message: String },
    /// The message in flight failed its body checksum: outpost cut the transfer before the
    /// final dot (the smarthost discards what it got). Not the link's fault: the pass goes on
    /// at once over a new connection.
    BodyDamaged,
}

impl ForwardError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Io(_) | Self::Timeout(_) | Self::Protocol(_) => true,
            Self::Token { .. } | Self::BodyDamaged => true,
            Self::Tls { transient, .. } => *transient,
            Self::Session(SessionFailure::Rejected { reply, .. }) => !reply.is_permanent(),
            Self::Session(SessionFailure::Unexpected { .. } | SessionFailure::Closed) => true,
            Self::Session(
                SessionFailure::NoStartTls { .. }
                | SessionFailure::NoAuth { .. }
                | SessionFailure::AuthNeedsTls { .. },
            ) => false,
            Self::Session(SessionFailure::AuthFailed { reply }) => !reply.is_permanent(),
        }
    }

    /// The reason as a reply, for recipients of the message in flight when the session broke.
    pub fn as_reply(&self) -> Reply {
        Reply::new(
            451,
            Some(crate::smtp::reply::EnhancedStatus::new(4, 4, 2)),
            self.to_string(),
        )
    }
}

impl From<SessionFailure> for ForwardError {
    fn from(failure: SessionFailure) -> Self {
        Self::Session(failure)
    }
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect to smarthost: {e}"),
            Self::Io(e) => write!(f, "connection to smarthost failed: {e}"),
            Self::Timeout(stage) => write!(f, "timeout waiting for smarthost reply to {stage}"),
            Self::Protocol(e) => write!(f, "smarthost protocol error: {e}"),
            Self::Session(failure) => write!(f, "{failure}"),
            Self::Tls { message, .. } => f.write_str(message),
            Self::Token { endpoint, message } => {
                write!(f, "OAuth2 token endpoint {endpoint}: {message}")
            }
            Self::BodyDamaged => f.write_str("transfer cut: the message body is damaged"),
        }
    }
}

impl std::error::Error for ForwardError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::parse_reply;

    fn r(text: &str) -> Reply {
        parse_reply(format!("{text}\r\n").as_bytes())
            .unwrap()
            .unwrap()
            .0
    }

    fn report(mail: &str, rcpts: &[&str], data: Option<&str>, end: Option<&str>) -> DeliveryReport {
        DeliveryReport {
            local: None,
            mail: Some(r(mail)),
            recipients: rcpts.iter().map(|t| Some(r(t))).collect(),
            data: data.map(r),
            data_end: end.map(r),
        }
    }

    fn kinds(outcomes: &[Outcome]) -> Vec<&'static str> {
        outcomes
            .iter()
            .map(|o| match o {
                Outcome::Delivered(_) => "sent",
                Outcome::Retry(_) => "retry",
                Outcome::Bounce(_) => "bounce",
            })
            .collect()
    }

    #[test]
    fn classification_table() {
        let ok = "250 ok";
        let cases: Vec<(DeliveryReport, Vec<&str>)> = vec![
            (
                report(ok, &[ok, ok], Some("354 go"), Some("250 queued")),
                vec!["sent", "sent"],
            ),
            (
                report(
                    ok,
                    &[ok, "550 5.1.1 no", "451 later"],
                    Some("354"),
                    Some("250 q"),
                ),
                vec!["sent", "bounce", "retry"],
            ),
            (report("451 4.3.0 later", &[], None, None), vec![]),
            (
                DeliveryReport {
                    mail: Some(r("451 4.3.0 later")),
                    recipients: vec![None, None],
                    ..DeliveryReport::default()
                },
                vec!["retry", "retry"],
            ),
            (
                DeliveryReport {
                    mail: Some(r("553 5.7.1 sender rejected")),
                    recipients: vec![None, None],
                    ..DeliveryReport::default()
                },
                vec!["bounce", "bounce"],
            ),
            // Pipelined: MAIL 5xx and every RCPT 503: the MAIL reply decides.
            (
                report(
                    "550 5.7.1 no",
                    &["503 5.5.1 need MAIL", "503 5.5.1"],
                    Some("503"),
                    None,
                ),
                vec!["bounce", "bounce"],
            ),
            (
                report(ok, &[ok, "550 no"], Some("554 5.6.0 no"), None),
                vec!["bounce", "bounce"],
            ),
            (
                report(ok, &[ok, "550 no"], Some("451 busy"), None),
                vec!["retry", "bounce"],
            ),
            (
                report(ok, &[ok], Some("354"), Some("552 5.3.4 too big")),
                vec!["bounce"],
            ),
            (
                report(ok, &[ok], Some("354"), Some("452 4.3.1 full")),
                vec!["retry"],
            ),
            // Protocol errors: 3xx to MAIL, 250 to DATA, 600 to the dot.
            (
                report("354 what", &[ok], Some("354"), Some("250 q")),
                vec!["retry"],
            ),
            (report(ok, &[ok], Some("250 what"), None), vec!["retry"]),
            (
                report(ok, &[ok], Some("354"), Some("600 what")),
                vec!["retry"],
            ),
            (
                report(ok, &["199 what"], Some("354"), Some("250 q")),
                vec!["retry"],
            ),
        ];
        for (report, expected) in cases {
            assert_eq!(kinds(&outcomes_of(&report)), expected, "{report:?}");
        }
    }

    #[test]
    fn outcome_carries_the_deciding_reply() {
        let outcomes = outcomes_of(&report(
            "250 ok",
            &["250 ok", "550 5.1.1 unknown"],
            Some("354 go"),
            Some("250 2.0.0 queued as X"),
        ));
        assert_eq!(outcomes[0], Outcome::Delivered(r("250 2.0.0 queued as X")));
        assert_eq!(outcomes[1], Outcome::Bounce(r("550 5.1.1 unknown")));
    }

    #[test]
    fn local_verdicts_apply_to_every_recipient() {
        let report = DeliveryReport {
            local: Some(r("553 5.6.7 SMTPUTF8 required")),
            recipients: vec![None, None],
            ..DeliveryReport::default()
        };
        assert_eq!(kinds(&outcomes_of(&report)), vec!["bounce", "bounce"]);
    }

    #[test]
    fn missing_replies_are_retried_never_delivered() {
        let report = DeliveryReport {
            mail: Some(r("250 ok")),
            recipients: vec![Some(r("250 ok"))],
            data: Some(r("354 go")),
            ..DeliveryReport::default()
        };
        assert_eq!(kinds(&outcomes_of(&report)), vec!["retry"]);
    }

    #[test]
    fn transient_site_failures() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(ForwardError::Connect(refused).is_transient());
        assert!(ForwardError::Timeout(Stage::Greeting).is_transient());
        let busy = SessionFailure::Rejected {
            stage: Stage::Greeting,
            reply: r("421 busy"),
        };
        assert!(ForwardError::from(busy).is_transient());
        let no_service = SessionFailure::Rejected {
            stage: Stage::Greeting,
            reply: r("554 no"),
        };
        assert!(!ForwardError::from(no_service).is_transient());
        let no_tls = SessionFailure::NoStartTls {
            smarthost: "mx:25".into(),
        };
        let error = ForwardError::from(no_tls);
        assert!(!error.is_transient());
        assert_eq!(error.to_string(), "smarthost mx:25 does not offer STARTTLS");
    }
}
