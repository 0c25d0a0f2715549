//! `ServerSession`: the receiver state machine. Bytes in, replies and decisions out.
//! Performs no I/O and reads no clock.
//!
//! The glue feeds whatever it read to `handle_input` and acts on the returned `Step`; every
//! reply goes through `ReplyBuffer` (the one choke point), and every decision the glue must make
//! (open a spool, commit, start TLS, close) is a `Next` variant. The session never produces the
//! 250 for a message by itself: only `committed` does, after the glue made the message durable.
//!
//! This file holds the session's types, its state and the glue's entry points; the phases live
//! in `commands` (framing, dispatch, a `check_*`/`proceed_*` pair per command), `sasl` (AUTH),
//! `trace` (the `Received:` header) and [`canned`] (the named replies).

use core::net::IpAddr;
use std::borrow::Cow;
use std::time::Duration;

use super::address::{Mailbox, ReversePath};
use super::auth::SaslExchange;
use super::body::BodyDecoder;
use super::command::MailParams;
use super::line::LineFramer;
use super::reply::Reply;

pub use super::auth::Credentials;
pub use super::command::BodyType;

pub mod canned;
mod commands;
mod sasl;
mod trace;

/// Whether STARTTLS can be offered on this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Unavailable,
    Offered,
    Active,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Bad commands before 421 and close.
    pub max_errors: u32,
}

#[derive(Clone, Debug)]
pub struct SessionParams {
    pub hostname: String,
    pub peer: IpAddr,
    pub relay_allowed: bool,
    pub tls: TlsMode,
    /// AUTH PLAIN/LOGIN is offered, but only once TLS is active (RFC 4954 §4).
    pub auth_offered: bool,
    /// `require_tls`: MAIL before STARTTLS gets 530 5.7.0 (RFC 3207 §4).
    pub require_tls: bool,
    /// `require_auth`: MAIL before AUTH gets 530 5.7.0 (RFC 4954 §6).
    pub require_auth: bool,
    /// `[rate_limit]` is set: every MAIL the session would accept goes to the glue first
    /// (`Next::MailCheck`).
    pub check_sender: bool,
    pub limits: Limits,
}

/// The glue's verdict on `Next::MailCheck`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailVerdict {
    Allowed,
    /// `[rate_limit]`: the sender sent `messages` in `window` already; allowed again after
    /// `retry_after`.
    RateExceeded {
        messages: u32,
        window: Duration,
        retry_after: Duration,
    },
}

/// What the session hands the glue at the final dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub reverse_path: ReversePath,
    pub recipients: Vec<Mailbox>,
    pub body_type: BodyType,
    pub smtputf8: bool,
    /// Decoded body octets (what was appended to the body buffer).
    pub size: u64,
}

/// The store's answer to `Next::Commit`, defined here so the core never imports store types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    Stored(String),
    QueueFull,
    Failed,
    /// More `Received:` fields than `max_hops`: a mail loop (554 5.4.6).
    TooManyHops,
}

/// What the session is waiting for; the glue picks the matching timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Awaiting {
    Command,
    Body,
    Commit,
    /// The glue is checking credentials (`Next::AuthCheck`).
    AuthCheck,
    Closed,
}

#[derive(Debug)]
pub struct Step {
    pub consumed: usize,
    pub next: Next,
}

#[derive(Debug)]
pub enum Next {
    /// Everything usable was consumed; write pending replies, then read more.
    NeedInput,
    /// End of a pipelined group: write pending replies, then call again with the rest.
    FlushReplies,
    /// 354 was queued: write it, open a spool, write `received_header`, call again.
    BodyStart,
    /// The body ended without a message to store (size exceeded …); the reply is queued.
    /// Discard the spool.
    BodyDiscarded,
    /// Final dot seen: append the body buffer, store, flush, then `committed`.
    Commit(Envelope),
    /// 220 queued: write it, then start TLS (see the STARTTLS invariant).
    ///
    /// STARTTLS invariant (CVE-2011-0411): `consumed` ends right after the STARTTLS line.
    /// Whatever follows in the caller's buffer was sent in plaintext and must be dropped, never
    /// fed back after the handshake. Input fed before `tls_established` is dropped too.
    StartTls,
    /// AUTH exchange complete: check the credentials (never log the password), wait the
    /// failure delay if they are wrong, then call `auth_checked`. Nothing is consumed meanwhile.
    AuthCheck(Credentials),
    /// A MAIL the session would accept, from this sender (empty for `<>`): count it against
    /// the sender's rate limit and call `mail_checked`. Nothing is consumed meanwhile.
    MailCheck(String),
    /// Write pending replies and close.
    Close,
}

/// Serialized replies waiting to be written: the one reply choke point.
#[derive(Default)]
pub struct ReplyBuffer {
    buf: Vec<u8>,
}

impl ReplyBuffer {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, reply: &Reply) {
        reply.write_to(&mut self.buf);
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// RFC 4954 §4 `334 SP [base64] CRLF`: the space is kept even for an empty challenge,
    /// which `Reply::write_to` would drop.
    pub fn push_challenge(&mut self, challenge: &str) {
        self.buf.extend_from_slice(b"334 ");
        self.buf.extend_from_slice(challenge.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

/// Queued replies beyond which `handle_input` asks the glue to write before going on, so a
/// client pipelining junk without reading cannot grow the reply buffer without bound.
const MAX_QUEUED_REPLIES: usize = 4096;

/// The session state, named for what it awaits.
#[derive(Debug)]
enum State {
    AwaitHelo,
    AwaitMail,
    AwaitRcptOrData,
    InBody(BodyDecoder),
    AwaitCommit,
    /// STARTTLS accepted; waiting for the glue's handshake. Plaintext input is dropped.
    AwaitTls,
    /// AUTH in progress: the next line is a SASL response, not a command.
    AwaitSasl(SaslExchange),
    /// Credentials handed to the glue; waiting for `auth_checked`.
    AwaitAuthCheck,
    /// A MAIL handed to the glue; waiting for `mail_checked`.
    AwaitMailCheck(ReversePath, MailParams),
    Closed,
}

/// Failed AUTH attempts before 421 and close (a password-guessing client gets three tries per
/// connection, each after the glue's delay).
pub const MAX_AUTH_FAILURES: u32 = 3;

/// NOOP, RSET, VRFY and HELP a session may send since it last had a message accepted before
/// each further one also counts as an error towards `max_errors` (Postfix
/// `smtpd_junk_command_limit`, same value): a session that only ever sends those — a
/// pipelining flood of NOOPs — is closed with `421 4.7.0`, not served for as long as it sends.
pub const JUNK_COMMAND_LIMIT: u32 = 100;

#[derive(Debug)]
struct Helo {
    name: String,
    extended: bool,
}

/// The MAIL … end-of-data transaction (OpenSMTPD `smtp_tx`).
#[derive(Debug)]
struct Transaction {
    reverse_path: ReversePath,
    recipients: Vec<Mailbox>,
    body_type: BodyType,
    smtputf8: bool,
}

pub struct ServerSession {
    params: SessionParams,
    state: State,
    helo: Option<Helo>,
    tx: Option<Transaction>,
    framer: LineFramer,
    tls_active: bool,
    errors: u32,
    /// NOOP, RSET, VRFY and HELP since the session last had a message accepted.
    junk: u32,
    /// The user name once AUTH succeeded.
    authenticated: Option<String>,
    auth_failures: u32,
}

impl ServerSession {
    pub fn new(params: SessionParams) -> Self {
        let tls_active = params.tls == TlsMode::Active;
        Self {
            params,
            state: State::AwaitHelo,
            helo: None,
            tx: None,
            framer: LineFramer::new(),
            tls_active,
            errors: 0,
            junk: 0,
            authenticated: None,
            auth_failures: 0,
        }
    }

    /// `220 <hostname> ESMTP outpost` (no enhanced status: RFC 2034 §3).
    pub fn greeting(&self) -> Reply {
        let text = format!("{} ESMTP outpost", self.params.hostname);
        Reply {
            code: 220,
            status: None,
            text: Cow::Owned(text),
        }
    }

    /// Feeds bytes. In body state, decoded (dot-unstuffed, CRLF-normalised) octets are appended
    /// to `body`. Guarantee: when this returns `NeedInput`, the unconsumed tail is shorter than
    /// `MAX_COMMAND_LINE`, so a caller buffer of 4 KiB never deadlocks.
    ///
    /// While awaiting a commit (`Next::Commit` returned, `committed` not yet called) nothing is
    /// consumed: the glue must commit before feeding more. After `Next::StartTls` input is
    /// dropped until `tls_established`; after `Next::Close` it is dropped for good.
    pub fn handle_input(
        &mut self,
        input: &[u8],
        out: &mut ReplyBuffer,
        body: &mut Vec<u8>,
    ) -> Step {
        let mut consumed = 0;
        loop {
            let rest = &input[consumed..];
            let (used, next) = match &mut self.state {
                // Sticky terminal state: input ignored, no reply.
                State::Closed => (rest.len(), Some(Next::Close)),
                State::AwaitTls => (rest.len(), Some(Next::StartTls)),
                // The glue must call `committed` (`auth_checked`) first; nothing is consumed.
                State::AwaitCommit | State::AwaitAuthCheck | State::AwaitMailCheck(..) => {
                    (0, Some(Next::NeedInput))
                }
                State::AwaitSasl(_) => self.handle_sasl_line(rest, out),
                State::InBody(decoder) => {
                    let decoded = decoder.decode(rest, body);
                    let next = if decoded.done {
                        self.end_of_data(out)
                    } else {
                        Next::NeedInput
                    };
                    (decoded.consumed, Some(next))
                }
                State::AwaitHelo | State::AwaitMail | State::AwaitRcptOrData => {
                    self.handle_line(rest, out)
                }
            };
            consumed += used;
            let next = match next {
                Some(Next::FlushReplies) if consumed == input.len() => Some(Next::NeedInput),
                None if out.as_bytes().len() >= MAX_QUEUED_REPLIES => Some(Next::FlushReplies),
                next => next,
            };
            if let Some(next) = next {
                return Step { consumed, next };
            }
        }
    }

    /// The only way a 250 after DATA is produced.
    pub fn committed(&mut self, outcome: CommitOutcome) -> Reply {
        if !matches!(self.state, State::AwaitCommit) {
            return canned::NOTHING_TO_COMMIT;
        }
        self.state = State::AwaitMail;
        match outcome {
            CommitOutcome::Stored(queue_id) => {
                self.junk = 0;
                canned::queued_as(&queue_id)
            }
            CommitOutcome::QueueFull => canned::QUEUE_FULL,
            CommitOutcome::Failed => canned::STORE_FAILED,
            CommitOutcome::TooManyHops => canned::TOO_MANY_HOPS,
        }
    }

    /// The glue's verdict on `Next::AuthCheck`: 235 2.7.0, or 535 5.7.8 (and after
    /// `MAX_AUTH_FAILURES` a 421 and `Next::Close`). Queues the replies.
    pub fn auth_checked(&mut self, username: Option<String>, out: &mut ReplyBuffer) -> Next {
        if !matches!(self.state, State::AwaitAuthCheck) {
            out.push(&canned::NOTHING_TO_COMMIT);
            return Next::FlushReplies;
        }
        self.state = State::AwaitMail;
        if let Some(username) = username {
            self.authenticated = Some(username);
            out.push(&canned::AUTH_SUCCEEDED);
            return Next::FlushReplies;
        }
        self.auth_failures = self.auth_failures.saturating_add(1);
        out.push(&canned::AUTH_FAILED);
        if self.auth_failures >= MAX_AUTH_FAILURES {
            out.push(&canned::TOO_MANY_AUTH_FAILURES);
            self.close();
            return Next::Close;
        }
        Next::FlushReplies
    }

    /// The glue's verdict on `Next::MailCheck`: the 250 of MAIL, or 451 4.7.1 and no
    /// transaction. Then feed the rest of the input as before.
    pub fn mail_checked(&mut self, verdict: MailVerdict, out: &mut ReplyBuffer) {
        let (path, params) = match std::mem::replace(&mut self.state, State::AwaitMail) {
            State::AwaitMailCheck(path, params) => (path, params),
            // Not awaiting a check (a glue bug): leave the state as it was.
            other => {
                self.state = other;
                return;
            }
        };
        match verdict {
            MailVerdict::Allowed => {
                self.proceed_mail(path, params, out);
            }
            MailVerdict::RateExceeded {
                messages,
                window,
                retry_after,
            } => out.push(&canned::sender_rate_exceeded(
                path.as_str(),
                messages,
                window,
                retry_after,
            )),
        }
    }

    /// The user name of a successful AUTH, for the glue's log lines.
    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// RFC 3207 §4.2: after the handshake the session starts afresh (no HELO, no transaction).
    pub fn tls_established(&mut self) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.tls_active = true;
        self.helo = None;
        self.tx = None;
        self.authenticated = None;
        self.framer.reset();
        self.state = State::AwaitHelo;
    }

    /// `421 4.4.2`; the session is closed for good.
    pub fn timed_out(&mut self) -> Reply {
        self.close();
        self.closing(&canned::TIMEOUT)
    }

    /// A 421 names our domain first (RFC 5321 §4.2: `421 <domain> Service not available,
    /// closing transmission channel`), so a client's log shows which relay hung up.
    fn closing(&self, base: &Reply) -> Reply {
        Reply {
            code: base.code,
            status: base.status,
            text: Cow::Owned(format!("{} {}", self.params.hostname, base.text)),
        }
    }

    /// Whether the session was closed at `max_errors` (its last reply was `421 4.7.0`).
    pub fn closed_for_errors(&self) -> bool {
        matches!(self.state, State::Closed) && self.errors >= self.params.limits.max_errors.max(1)
    }

    pub fn awaiting(&self) -> Awaiting {
        match self.state {
            State::AwaitHelo
            | State::AwaitMail
            | State::AwaitRcptOrData
            | State::AwaitTls
            | State::AwaitMailCheck(..)
            | State::AwaitSasl(_) => Awaiting::Command,
            State::AwaitAuthCheck => Awaiting::AuthCheck,
            State::InBody(_) => Awaiting::Body,
            State::AwaitCommit => Awaiting::Commit,
            State::Closed => Awaiting::Closed,
        }
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.tx = None;
    }
}

#[cfg(test)]
mod tests;
