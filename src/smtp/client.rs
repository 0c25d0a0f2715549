//! `ClientSession`: the forwarder's SMTP client state machine (RFC 5321 client side, RFC 2920
//! pipelining, RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 3207 STARTTLS policy,
//! RFC 4954 AUTH PLAIN/LOGIN, or OAUTHBEARER (RFC 7628)/XOAUTH2 with an OAuth 2.0 access
//! token the glue fetched, only ever over TLS).
//!
//! Sans-I/O: the glue feeds every reply it parsed (`handle_reply`) and does what the returned
//! `ClientStep` says. One session carries several messages in turn. The session only *records*
//! replies per stage in a `DeliveryReport`; deciding what they mean (delivered, retry, bounce)
//! is `forward::outcome`'s job. Performs no I/O, reads no clock, never falls back from TLS to
//! plaintext.
//!
//! This file holds the session's types, its state and the glue's entry points; the phases live
//! in `handshake` (greeting, EHLO/HELO, STARTTLS), `sasl` (AUTH) and `transaction` (MAIL, RCPT,
//! DATA, the final dot and the report).

use std::collections::VecDeque;
use std::fmt;

use self::handshake::Extensions;
use self::transaction::fill_unanswered;
use super::reply::{EnhancedStatus, Reply};

mod handshake;
mod sasl;
mod transaction;

/// How the session protects the link to the smarthost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Plaintext.
    None,
    /// STARTTLS is required; a smarthost that does not offer it is a site failure (never a
    /// plaintext fallback: the downgrade attack).
    StartTls,
    /// TLS from the first byte (the glue performs the handshake before the greeting).
    Implicit,
}

/// Per-connection settings.
#[derive(Clone, Debug)]
pub struct ClientParams {
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    pub tls: TlsPolicy,
    /// The smarthost as configured (`host:port`), for failure texts.
    pub smarthost: String,
    /// AUTH to the smarthost after EHLO (over TLS only; never sent in plaintext).
    pub credentials: Option<ClientCredentials>,
}

/// The smarthost login. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    pub username: String,
    /// The password, or the OAuth 2.0 access token for `CredentialKind::Bearer`.
    pub password: String,
    pub kind: CredentialKind,
}

/// What `ClientCredentials::password` holds, and so which mechanisms may carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// AUTH PLAIN, else LOGIN.
    Password,
    /// An OAuth 2.0 access token: AUTH OAUTHBEARER, else XOAUTH2.
    Bearer,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("kind", &self.kind)
            .finish()
    }
}

/// One message to transfer: the envelope plus what MAIL parameters need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Empty for the null reverse-path `<>`.
    pub sender: String,
    /// Only the recipients still pending; the report answers them in this order.
    pub recipients: Vec<String>,
    /// Body size in octets (RFC 1870 `SIZE=`).
    pub size: u64,
    /// The body has 8-bit octets (RFC 6152 `BODY=8BITMIME`).
    pub eight_bit: bool,
    /// The envelope or headers need RFC 6531 SMTPUTF8.
    pub smtputf8: bool,
}

/// Where in the dialogue a reply was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Auth,
    Rset,
    Mail,
    Rcpt,
    Data,
    DataEnd,
    Quit,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Greeting => "greeting",
            Self::Ehlo => "EHLO",
            Self::Helo => "HELO",
            Self::StartTls => "STARTTLS",
            Self::Auth => "AUTH",
            Self::Rset => "RSET",
            Self::Mail => "MAIL FROM",
            Self::Rcpt => "RCPT TO",
            Self::Data => "DATA",
            Self::DataEnd => "end of data",
            Self::Quit => "QUIT",
        };
        f.write_str(name)
    }
}

/// What the smarthost said to one message, stage by stage. A field is `None` when its command
/// was never sent (an earlier stage failed). Replies the smarthost never gave because the
/// session ended (421, timeout, lost connection) are filled with the reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// A local verdict for every recipient; when set, nothing was sent for this message.
    pub local: Option<Reply>,
    pub mail: Option<Reply>,
    /// One per `Envelope::recipients` entry, same order.
    pub recipients: Vec<Option<Reply>>,
    pub data: Option<Reply>,
    /// The reply to the final dot; applies to every recipient accepted at RCPT.
    pub data_end: Option<Reply>,
}

/// Why a session cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionFailure {
    /// The smarthost refused us at `stage` (greeting, EHLO/HELO, STARTTLS, or a 421).
    Rejected { stage: Stage, reply: Reply },
    /// `TlsPolicy::StartTls` but the smarthost did not offer STARTTLS.
    NoStartTls { smarthost: String },
    /// Credentials are configured but the smarthost offers none of the mechanisms that can
    /// carry them (PLAIN/LOGIN for a password, OAUTHBEARER/XOAUTH2 for a token).
    NoAuth {
        smarthost: String,
        kind: CredentialKind,
    },
    /// Credentials are configured but the session is not encrypted: nothing was sent.
    AuthNeedsTls { smarthost: String },
    /// The smarthost refused the credentials (or the exchange).
    AuthFailed { reply: Reply },
    /// A reply when none was due (the smarthost is out of step).
    Unexpected { reply: Reply },
    /// The session ended earlier, or the caller asked for something out of turn.
    Closed,
}

impl fmt::Display for SessionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected { stage, reply } => write!(f, "smarthost rejected {stage}: {reply}"),
            Self::NoStartTls { smarthost } => {
                write!(f, "smarthost {smarthost} does not offer STARTTLS")
            }
            Self::NoAuth {
                smarthost,
                kind: CredentialKind::Password,
            } => write!(
                f,
                "smarthost {smarthost} does not offer AUTH PLAIN or LOGIN, but \
                 [smarthost] username is set"
            ),
            Self::NoAuth {
                smarthost,
                kind: CredentialKind::Bearer,
            } => write!(
                f,
                "smarthost {smarthost} does not offer AUTH OAUTHBEARER or XOAUTH2, but \
                 [smarthost] oauth2_token_url is set"
            ),
            Self::AuthNeedsTls { smarthost } => write!(
                f,
                "refusing to send the password to smarthost {smarthost} without TLS"
            ),
            Self::AuthFailed { reply } => write!(f, "authentication failed: {reply}"),
            Self::Unexpected { reply } => write!(f, "unexpected reply from smarthost: {reply}"),
            Self::Closed => f.write_str("SMTP session already closed"),
        }
    }
}

/// What the glue must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientStep {
    /// Write these bytes, then read the next reply and feed it to `handle_reply`.
    Send(Vec<u8>),
    /// Read the next reply (more replies of a pipelined group are due).
    Wait,
    /// Stream the body through `BodyEncoder` (including its final `.\r\n`), then read the
    /// reply to the final dot (with the longer data-end timeout).
    SendBody,
    /// The smarthost agreed to STARTTLS: do the handshake, then call `tls_established`.
    StartTls,
    /// Idle: call `start_message` or `quit`.
    Ready,
    /// A message is finished (whatever the outcome); the session is idle again unless it was
    /// closed (then the next call returns `Failed`).
    MessageDone(DeliveryReport),
    /// QUIT answered: close the connection.
    Done,
    /// The session cannot go on: close the connection.
    Failed(SessionFailure),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitGreeting,
    AwaitEhlo,
    AwaitHelo,
    AwaitStartTls,
    AwaitTlsHandshake,
    /// AUTH LOGIN sent: the username challenge is due.
    AwaitLoginUsername,
    /// Username sent: the password challenge is due.
    AwaitLoginPassword,
    /// The credentials are sent: 235 or a refusal is due.
    AwaitAuthResult,
    /// A token was refused with a 334 error challenge and the dummy response sent: the final
    /// refusal is due (RFC 7628 §3.2.3).
    AwaitAuthError,
    Ready,
    AwaitTransactionReplies,
    AwaitDataEnd,
    AwaitQuit,
    Closed,
}

/// A reply the session awaits, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaited {
    Rset,
    Mail,
    Rcpt(usize),
    Data,
}

/// The message in flight.
#[derive(Debug)]
struct Transaction {
    report: DeliveryReport,
    /// Commands not yet written (without pipelining they go one per reply).
    unsent: VecDeque<(Awaited, Vec<u8>)>,
    /// Commands written whose replies are due, oldest first.
    awaited: VecDeque<Awaited>,
    /// MAIL was accepted, so the smarthost holds a transaction until the dot or RSET.
    mail_accepted: bool,
    /// The body being sent is just `.` (354 after no accepted recipient, RFC 2920 §3.1).
    empty_body: bool,
}

/// The forwarder's side of one SMTP connection.
#[derive(Debug)]
pub struct ClientSession {
    params: ClientParams,
    state: State,
    extensions: Extensions,
    tls_active: bool,
    /// An aborted transaction is still open on the smarthost: send RSET before the next MAIL.
    needs_rset: bool,
    transaction: Option<Transaction>,
    /// Sticky once set (RFC 5321 §3.8: after 421 the server closes).
    failure: Option<SessionFailure>,
}

impl ClientSession {
    /// A session on a fresh connection; feed the greeting to `handle_reply` first.
    /// With `TlsPolicy::Implicit` the glue has finished the TLS handshake already.
    pub fn new(params: ClientParams) -> Self {
        let tls_active = params.tls == TlsPolicy::Implicit;
        Self {
            params,
            state: State::AwaitGreeting,
            extensions: Extensions::default(),
            tls_active,
            needs_rset: false,
            transaction: None,
            failure: None,
        }
    }

    /// The smarthost offered PIPELINING in its last EHLO reply.
    pub fn pipelining(&self) -> bool {
        self.extensions.pipelining
    }

    /// Idle and able to take a message.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Why the session ended, once it has.
    pub fn failure(&self) -> Option<&SessionFailure> {
        self.failure.as_ref()
    }

    /// True while the session is waiting for the reply to the final dot (its timeout is the
    /// RFC 5321 §4.5.3.2.6 data-end one).
    pub fn awaiting_data_end(&self) -> bool {
        self.state == State::AwaitDataEnd
    }

    /// Feeds one reply from the smarthost.
    pub fn handle_reply(&mut self, reply: &Reply) -> ClientStep {
        match self.state {
            State::AwaitGreeting => self.on_greeting(reply),
            State::AwaitEhlo => self.on_ehlo(reply),
            State::AwaitHelo => self.on_helo(reply),
            State::AwaitStartTls => self.on_starttls(reply),
            State::AwaitLoginUsername
            | State::AwaitLoginPassword
            | State::AwaitAuthResult
            | State::AwaitAuthError => self.on_auth(reply),
            State::AwaitTransactionReplies => self.on_transaction_reply(reply),
            State::AwaitDataEnd => self.on_data_end(reply),
            State::AwaitQuit => {
                self.state = State::Closed;
                self.failure = Some(SessionFailure::Closed);
                ClientStep::Done
            }
            State::Closed => {
                ClientStep::Failed(self.failure.clone().unwrap_or(SessionFailure::Closed))
            }
            // A reply nobody asked for: the peer is out of step, stop here.
            State::AwaitTlsHandshake | State::Ready => self.fail(SessionFailure::Unexpected {
                reply: reply.clone(),
            }),
        }
    }

    /// The glue finished the STARTTLS handshake: everything learned before is forgotten
    /// (RFC 3207 §4.2) and EHLO is sent again.
    pub fn tls_established(&mut self) -> ClientStep {
        if self.state != State::AwaitTlsHandshake {
            return self.fail(SessionFailure::Closed);
        }
        self.tls_active = true;
        self.extensions = Extensions::default();
        self.send_ehlo()
    }

    /// Starts the next message; only valid after `Ready` or `MessageDone`.
    pub fn start_message(&mut self, envelope: &Envelope) -> ClientStep {
        if self.state != State::Ready {
            return ClientStep::Failed(self.failure.clone().unwrap_or(SessionFailure::Closed));
        }
        if let Some(local) = self.local_verdict(envelope) {
            let report = DeliveryReport {
                local: Some(local),
                recipients: vec![None; envelope.recipients.len()],
                ..DeliveryReport::default()
            };
            return ClientStep::MessageDone(report);
        }
        let mut transaction = Transaction {
            report: DeliveryReport {
                recipients: vec![None; envelope.recipients.len()],
                ..DeliveryReport::default()
            },
            unsent: VecDeque::new(),
            awaited: VecDeque::new(),
            mail_accepted: false,
            empty_body: false,
        };
        if self.needs_rset {
            transaction
                .unsent
                .push_back((Awaited::Rset, b"RSET\r\n".to_vec()));
        }
        transaction
            .unsent
            .push_back((Awaited::Mail, self.mail_command(envelope)));
        for (i, recipient) in envelope.recipients.iter().enumerate() {
            if is_safe_path(recipient) {
                let command = format!("RCPT TO:<{recipient}>\r\n").into_bytes();
                transaction.unsent.push_back((Awaited::Rcpt(i), command));
            } else {
                transaction.report.recipients[i] = Some(Reply::new(
                    501,
                    Some(EnhancedStatus::new(5, 1, 3)),
                    "recipient address contains control characters",
                ));
            }
        }
        transaction
            .unsent
            .push_back((Awaited::Data, b"DATA\r\n".to_vec()));
        self.transaction = Some(transaction);
        self.state = State::AwaitTransactionReplies;
        self.send_next()
    }

    /// Ends the session politely.
    pub fn quit(&mut self) -> ClientStep {
        if self.state != State::Ready {
            self.state = State::Closed;
            return ClientStep::Done;
        }
        self.state = State::AwaitQuit;
        ClientStep::Send(b"QUIT\r\n".to_vec())
    }

    /// The connection broke or a reply timed out (the glue makes `reason`, a 4xx). Returns the
    /// report of the message in flight, its unanswered stages filled with `reason`.
    pub fn aborted(&mut self, reason: Reply) -> Option<DeliveryReport> {
        self.state = State::Closed;
        let stage = Stage::Greeting;
        self.failure.get_or_insert(SessionFailure::Rejected {
            stage,
            reply: reason.clone(),
        });
        let transaction = self.transaction.take()?;
        Some(fill_unanswered(transaction, &reason))
    }

    fn fail(&mut self, failure: SessionFailure) -> ClientStep {
        self.state = State::Closed;
        self.failure = Some(failure.clone());
        ClientStep::Failed(failure)
    }
}

impl From<Awaited> for Stage {
    fn from(awaited: Awaited) -> Self {
        match awaited {
            Awaited::Rset => Self::Rset,
            Awaited::Mail => Self::Mail,
            Awaited::Rcpt(_) => Self::Rcpt,
            Awaited::Data => Self::Data,
        }
    }
}

/// No control characters, so an address can never end a command line early (injection).
fn is_safe_path(path: &str) -> bool {
    !path.chars().any(char::is_control) && !path.contains(['<', '>'])
}

#[cfg(test)]
mod tests;
