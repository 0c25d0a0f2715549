//! `ServerSession`: the receiver state machine. Bytes in, replies and decisions out.
//! Performs no I/O and reads no clock.
//!
//! The glue feeds whatever it read to `handle_input` and acts on the returned `Step`; every
//! reply goes through `ReplyBuffer` (the one choke point), and every decision the glue must make
//! (open a spool, commit, start TLS, close) is a `Next` variant. The session never produces the
//! 250 for a message by itself: only `committed` does, after the glue made the message durable.

use core::net::IpAddr;
use std::borrow::Cow;
use std::time::Duration;

use super::address::{Mailbox, ReversePath};
use super::auth::{Mechanism, SaslError, SaslExchange, SaslStep};
use super::body::{BodyDecoder, BodyError};
use super::command::{parse_command, Command, MailParams, SyntaxError};
use super::line::{Frame, LineFramer};
use super::reply::Reply;

pub use super::auth::Credentials;
pub use super::command::BodyType;

pub mod canned;

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

    /// RFC 5321 §4.4 trace header for the current transaction, CRLF-terminated (folded).
    pub fn received_header(&self, queue_id: &str, date: &str) -> String {
        let helo = self
            .helo
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |h| sanitize(&h.name));
        let peer = match self.params.peer.to_canonical() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("IPv6:{ip}"),
        };
        let mut header = format!(
            "Received: from {helo} ([{peer}])\r\n\tby {} (outpost) with {} id {queue_id}",
            self.params.hostname,
            self.protocol_name(),
        );
        // One recipient only: naming several would disclose the Bcc list to each of them.
        if let Some([recipient]) = self.tx.as_ref().map(|tx| tx.recipients.as_slice()) {
            header.push_str(&format!("\r\n\tfor <{recipient}>"));
        }
        header.push_str(&format!("; {date}\r\n"));
        header
    }

    /// RFC 3848 / RFC 6531 §3.7.3 `with` protocol names.
    fn protocol_name(&self) -> &'static str {
        let extended = self.helo.as_ref().is_some_and(|h| h.extended);
        let utf8 = self.tx.as_ref().is_some_and(|tx| tx.smtputf8);
        let auth = self.authenticated.is_some();
        match (utf8, self.tls_active, extended) {
            (true, true, _) if auth => "UTF8SMTPSA",
            (true, true, _) => "UTF8SMTPS",
            (true, false, _) => "UTF8SMTP",
            (false, true, _) if auth => "ESMTPSA",
            (false, true, _) => "ESMTPS",
            (false, false, true) => "ESMTP",
            (false, false, false) => "SMTP",
        }
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.tx = None;
    }

    /// Frames and handles one command line. `None`: go on with the rest of the input.
    fn handle_line(&mut self, input: &[u8], out: &mut ReplyBuffer) -> (usize, Option<Next>) {
        match self.framer.next_line(input) {
            Frame::Partial { consumed } => (consumed, Some(Next::NeedInput)),
            Frame::TooLong { consumed } => (
                consumed,
                self.reject(Reply::from(&SyntaxError::LineTooLong), out),
            ),
            Frame::Line { line, consumed } => (consumed, self.handle_command(line, out)),
        }
    }

    /// The one dispatch: `check_*` decides (sequencing, limits), `proceed_*` applies.
    fn handle_command(&mut self, line: &[u8], out: &mut ReplyBuffer) -> Option<Next> {
        let command = match parse_command(line) {
            Ok(command) => command,
            Err(error) => return self.reject(Reply::from(&error), out),
        };
        let ends_group = command.ends_pipeline_group();
        let junk = matches!(
            command,
            Command::Noop | Command::Rset | Command::Vrfy | Command::Help
        );
        let result = match command {
            Command::Ehlo(name) => Ok(self.proceed_helo(name, true, out)),
            Command::Helo(name) => Ok(self.proceed_helo(name, false, out)),
            Command::Mail { path, params } => self.check_mail(&params).map(|()| {
                if self.params.check_sender {
                    let sender = path.as_str().to_owned();
                    self.state = State::AwaitMailCheck(path, params);
                    Some(Next::MailCheck(sender))
                } else {
                    self.proceed_mail(path, params, out)
                }
            }),
            Command::Rcpt { path } => self
                .check_rcpt(&path)
                .map(|()| self.proceed_rcpt(path, out)),
            Command::Data => self.check_data().map(|()| self.proceed_data(out)),
            Command::Rset => Ok(self.proceed_rset(out)),
            Command::Noop => Ok(answer(&canned::OK, out)),
            Command::Vrfy => Ok(answer(&canned::CANNOT_VRFY, out)),
            Command::Help => Ok(answer(&canned::HELP, out)),
            Command::Quit => Ok(self.proceed_quit(out)),
            Command::StartTls => self.check_starttls().map(|()| self.proceed_starttls(out)),
            // The initial response is a secret: it goes to the exchange, never to a log.
            Command::Auth {
                mechanism,
                initial_response,
            } => self.check_auth().and_then(|()| {
                self.proceed_auth(
                    &mechanism,
                    initial_response.as_ref().map(|r| r.0.as_str()),
                    out,
                )
            }),
        };
        if junk {
            self.junk = self.junk.saturating_add(1);
            if self.junk > JUNK_COMMAND_LIMIT {
                // Answered as usual, and counted: the 421 follows its reply.
                if let Some(close) = self.count_error(out) {
                    return Some(close);
                }
            }
        }
        match result {
            Ok(Some(next)) => Some(next),
            Ok(None) => ends_group.then_some(Next::FlushReplies),
            Err(reply) => self
                .reject(reply, out)
                .or(ends_group.then_some(Next::FlushReplies)),
        }
    }

    /// Queues a refusal and counts it; too many earn 421 and a close (Postfix
    /// `smtpd_hard_error_limit`). Size and recipient-limit refusals are not the client's junk.
    fn reject(&mut self, reply: Reply, out: &mut ReplyBuffer) -> Option<Next> {
        out.push(&reply);
        if reply.code < 500 || reply.code == 552 {
            return None;
        }
        self.count_error(out)
    }

    /// Counts an error; at `max_errors` queues `421 4.7.0` and closes.
    fn count_error(&mut self, out: &mut ReplyBuffer) -> Option<Next> {
        self.errors = self.errors.saturating_add(1);
        if self.errors < self.params.limits.max_errors.max(1) {
            return None;
        }
        out.push(&self.closing(&canned::TOO_MANY_ERRORS));
        self.close();
        Some(Next::Close)
    }

    /// EHLO/HELO are valid in every command state and act as RSET (RFC 5321 §4.1.4).
    fn proceed_helo(
        &mut self,
        name: String,
        extended: bool,
        out: &mut ReplyBuffer,
    ) -> Option<Next> {
        let mut text = self.params.hostname.clone();
        if extended {
            text.push_str("\nPIPELINING");
            text.push_str(&format!("\nSIZE {}", self.params.limits.max_message_size));
            text.push_str("\n8BITMIME\nENHANCEDSTATUSCODES\nSMTPUTF8");
            if self.params.tls == TlsMode::Offered && !self.tls_active {
                text.push_str("\nSTARTTLS");
            }
            // RFC 4954 §4: never invite credentials over plaintext.
            if self.params.auth_offered && self.tls_active {
                text.push_str("\nAUTH PLAIN LOGIN");
            }
        }
        out.push(&Reply {
            code: 250,
            status: None,
            text: Cow::Owned(text),
        });
        self.helo = Some(Helo { name, extended });
        self.tx = None;
        self.state = State::AwaitMail;
        None
    }

    fn check_mail(&self, params: &MailParams) -> Result<(), Reply> {
        if self.helo.is_none() {
            return Err(canned::NEED_HELO);
        }
        if self.tx.is_some() {
            return Err(canned::NESTED_MAIL);
        }
        if self.params.require_tls && !self.tls_active {
            return Err(canned::MUST_STARTTLS);
        }
        // RFC 1870 §6: refuse a declared size over the limit before any body is sent.
        if params
            .size
            .is_some_and(|size| size > self.params.limits.max_message_size)
        {
            return Err(canned::MESSAGE_TOO_BIG);
        }
        Ok(())
    }

    fn proceed_mail(
        &mut self,
        reverse_path: ReversePath,
        params: MailParams,
        out: &mut ReplyBuffer,
    ) -> Option<Next> {
        self.tx = Some(Transaction {
            reverse_path,
            recipients: Vec::new(),
            body_type: params.body.unwrap_or(BodyType::SevenBit),
            smtputf8: params.smtputf8,
        });
        self.state = State::AwaitRcptOrData;
        answer(&canned::SENDER_OK, out)
    }

    fn check_rcpt(&self, path: &Mailbox) -> Result<(), Reply> {
        if self.helo.is_none() {
            return Err(canned::NEED_HELO);
        }
        let Some(tx) = &self.tx else {
            return Err(canned::NEED_MAIL);
        };
        if !path.is_ascii() && !tx.smtputf8 {
            return Err(canned::NEED_SMTPUTF8);
        }
        // Never an open relay: the glue decides `relay_allowed` from `relay_from`; an
        // authenticated client may relay from anywhere.
        if !self.params.relay_allowed && self.authenticated.is_none() {
            return Err(canned::RELAY_DENIED);
        }
        if tx.recipients.len() >= self.params.limits.max_recipients {
            return Err(canned::TOO_MANY_RECIPIENTS);
        }
        Ok(())
    }

    fn proceed_rcpt(&mut self, path: Mailbox, out: &mut ReplyBuffer) -> Option<Next> {
        if let Some(tx) = &mut self.tx {
            // A repeated recipient is acknowledged but kept once: one delivery per address.
            if !tx.recipients.contains(&path) {
                tx.recipients.push(path);
            }
        }
        answer(&canned::RECIPIENT_OK, out)
    }

    fn check_data(&self) -> Result<(), Reply> {
        if self.helo.is_none() {
            return Err(canned::NEED_HELO);
        }
        match &self.tx {
            None => Err(canned::NEED_MAIL),
            Some(tx) if tx.recipients.is_empty() => Err(canned::NO_VALID_RECIPIENTS),
            Some(_) => Ok(()),
        }
    }

    fn proceed_data(&mut self, out: &mut ReplyBuffer) -> Option<Next> {
        self.state = State::InBody(BodyDecoder::new(self.params.limits.max_message_size));
        out.push(&canned::START_DATA);
        Some(Next::BodyStart)
    }

    /// The final dot: hand the envelope over, or queue the refusal of a drained body.
    fn end_of_data(&mut self, out: &mut ReplyBuffer) -> Next {
        let (error, size) = match &self.state {
            State::InBody(decoder) => (decoder.error(), decoder.size()),
            _ => (None, 0),
        };
        self.state = State::AwaitMail;
        let tx = self.tx.take();
        let refusal = match (error, tx) {
            (Some(BodyError::TooLarge), _) => canned::MESSAGE_TOO_BIG,
            (Some(BodyError::LineTooLong), _) => canned::BODY_LINE_TOO_LONG,
            // DATA is only entered with a transaction; answer 451 rather than panic.
            (None, None) => canned::STORE_FAILED,
            (None, Some(tx)) => {
                self.state = State::AwaitCommit;
                return Next::Commit(Envelope {
                    reverse_path: tx.reverse_path,
                    recipients: tx.recipients,
                    body_type: tx.body_type,
                    smtputf8: tx.smtputf8,
                    size,
                });
            }
        };
        out.push(&refusal);
        Next::BodyDiscarded
    }

    fn proceed_rset(&mut self, out: &mut ReplyBuffer) -> Option<Next> {
        self.tx = None;
        self.state = if self.helo.is_some() {
            State::AwaitMail
        } else {
            State::AwaitHelo
        };
        answer(&canned::OK, out)
    }

    fn proceed_quit(&mut self, out: &mut ReplyBuffer) -> Option<Next> {
        out.push(&canned::BYE);
        self.close();
        Some(Next::Close)
    }

    fn check_starttls(&self) -> Result<(), Reply> {
        if self.tls_active {
            return Err(canned::TLS_ALREADY_ACTIVE);
        }
        if self.params.tls != TlsMode::Offered {
            return Err(canned::NOT_IMPLEMENTED);
        }
        if self.helo.is_none() {
            return Err(canned::NEED_HELO);
        }
        if self.tx.is_some() {
            return Err(canned::TRANSACTION_IN_PROGRESS);
        }
        Ok(())
    }

    /// Stops right after the STARTTLS line: see `Next::StartTls`.
    fn proceed_starttls(&mut self, out: &mut ReplyBuffer) -> Option<Next> {
        out.push(&canned::READY_FOR_TLS);
        self.state = State::AwaitTls;
        Some(Next::StartTls)
    }

    /// RFC 4954 §4: AUTH only when offered, after EHLO, over TLS, once, outside a transaction.
    fn check_auth(&self) -> Result<(), Reply> {
        if !self.params.auth_offered {
            return Err(canned::NOT_IMPLEMENTED);
        }
        if self.helo.is_none() {
            return Err(canned::NEED_HELO);
        }
        if !self.tls_active {
            return Err(canned::ENCRYPTION_REQUIRED);
        }
        if self.authenticated.is_some() {
            return Err(canned::ALREADY_AUTHENTICATED);
        }
        if self.tx.is_some() {
            return Err(canned::TRANSACTION_IN_PROGRESS);
        }
        Ok(())
    }

    fn proceed_auth(
        &mut self,
        mechanism: &str,
        initial_response: Option<&str>,
        out: &mut ReplyBuffer,
    ) -> Result<Option<Next>, Reply> {
        let mechanism = Mechanism::parse(mechanism).ok_or(canned::UNKNOWN_AUTH_MECHANISM)?;
        let (exchange, step) = SaslExchange::start(mechanism, initial_response);
        self.state = State::AwaitSasl(exchange);
        self.sasl_step(step, out)
    }

    /// One SASL response line (RFC 4954 §4); the framer's limits apply to it.
    fn handle_sasl_line(&mut self, input: &[u8], out: &mut ReplyBuffer) -> (usize, Option<Next>) {
        let (consumed, step) = match self.framer.next_line(input) {
            Frame::Partial { consumed } => return (consumed, Some(Next::NeedInput)),
            Frame::TooLong { consumed } => {
                self.state = State::AwaitMail;
                return (consumed, self.reject(canned::AUTH_LINE_TOO_LONG, out));
            }
            Frame::Line { line, consumed } => {
                let step = match (std::str::from_utf8(line), &mut self.state) {
                    (Ok(line), State::AwaitSasl(exchange)) => exchange.respond(line),
                    _ => SaslStep::Failed(SaslError::BadBase64),
                };
                (consumed, step)
            }
        };
        let next = match self.sasl_step(step, out) {
            Ok(next) => next,
            Err(reply) => self.reject(reply, out),
        };
        (consumed, next.or(Some(Next::FlushReplies)))
    }

    /// Acts on the exchange's move: a challenge, credentials for the glue, or a refusal
    /// (which ends the exchange).
    fn sasl_step(&mut self, step: SaslStep, out: &mut ReplyBuffer) -> Result<Option<Next>, Reply> {
        match step {
            SaslStep::Challenge(challenge) => {
                out.push_challenge(challenge);
                Ok(Some(Next::FlushReplies))
            }
            SaslStep::Done(credentials) => {
                self.state = State::AwaitAuthCheck;
                Ok(Some(Next::AuthCheck(credentials)))
            }
            SaslStep::Failed(error) => {
                self.state = State::AwaitMail;
                Err(match error {
                    SaslError::Canceled => canned::AUTH_CANCELED,
                    SaslError::BadBase64 | SaslError::Malformed => canned::AUTH_BAD_RESPONSE,
                })
            }
        }
    }
}

/// Queues a reply that changes no state.
fn answer(reply: &Reply, out: &mut ReplyBuffer) -> Option<Next> {
    out.push(reply);
    None
}

/// The HELO name as printed in the trace header: printable ASCII only, no comment or
/// separator characters, bounded, so a client cannot inject header lines or fields.
fn sanitize(name: &str) -> String {
    let clean: String = name
        .chars()
        .take(super::address::MAX_DOMAIN)
        .map(|c| match c {
            '(' | ')' | ';' | '\\' | '"' => '?',
            c if c.is_ascii_graphic() => c,
            _ => '?',
        })
        .collect();
    if clean.is_empty() {
        "unknown".to_owned()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests;
