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

use std::collections::VecDeque;
use std::fmt;

use super::auth;
use super::reply::{EnhancedStatus, Reply};

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

/// What the smarthost's EHLO reply offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Extensions {
    pipelining: bool,
    /// `Some(0)`: SIZE without a limit.
    size: Option<u64>,
    eight_bit_mime: bool,
    smtputf8: bool,
    starttls: bool,
    auth_plain: bool,
    auth_login: bool,
    auth_oauthbearer: bool,
    auth_xoauth2: bool,
}

impl Extensions {
    /// Keywords are the first word of every line after the first (RFC 5321 §4.1.1.1).
    fn parse(reply: &Reply) -> Self {
        let mut ext = Self::default();
        for line in reply.lines().skip(1) {
            // `AUTH=PLAIN LOGIN` is the pre-RFC 4954 spelling some servers still send.
            let line = line.replacen('=', " ", 1);
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "AUTH" => {
                    for word in words.by_ref() {
                        match auth::Mechanism::parse(word) {
                            Some(auth::Mechanism::Plain) => ext.auth_plain = true,
                            Some(auth::Mechanism::Login) => ext.auth_login = true,
                            // Client-side only: the server never offers these.
                            None if word.eq_ignore_ascii_case("OAUTHBEARER") => {
                                ext.auth_oauthbearer = true;
                            }
                            None if word.eq_ignore_ascii_case("XOAUTH2") => {
                                ext.auth_xoauth2 = true;
                            }
                            None => {}
                        }
                    }
                }
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                _ => {}
            }
        }
        ext
    }
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

    fn on_greeting(&mut self, reply: &Reply) -> ClientStep {
        if reply.code != 220 {
            return self.fail(SessionFailure::Rejected {
                stage: Stage::Greeting,
                reply: reply.clone(),
            });
        }
        self.send_ehlo()
    }

    fn send_ehlo(&mut self) -> ClientStep {
        self.state = State::AwaitEhlo;
        ClientStep::Send(format!("EHLO {}\r\n", self.params.helo_name).into_bytes())
    }

    fn on_ehlo(&mut self, reply: &Reply) -> ClientStep {
        if reply.is_permanent() && reply.code != 421 && self.params.tls != TlsPolicy::StartTls {
            // RFC 5321 §3.2: an old server may not know EHLO.
            self.state = State::AwaitHelo;
            return ClientStep::Send(format!("HELO {}\r\n", self.params.helo_name).into_bytes());
        }
        if !reply.is_positive() {
            if reply.is_permanent() {
                // EHLO refused under the STARTTLS policy: HELO could never offer TLS.
                let smarthost = self.params.smarthost.clone();
                return self.fail(SessionFailure::NoStartTls { smarthost });
            }
            return self.fail(SessionFailure::Rejected {
                stage: Stage::Ehlo,
                reply: reply.clone(),
            });
        }
        self.extensions = Extensions::parse(reply);
        if self.params.tls == TlsPolicy::StartTls && !self.tls_active {
            if !self.extensions.starttls {
                let smarthost = self.params.smarthost.clone();
                return self.fail(SessionFailure::NoStartTls { smarthost });
            }
            self.state = State::AwaitStartTls;
            return ClientStep::Send(b"STARTTLS\r\n".to_vec());
        }
        if self.params.credentials.is_some() {
            return self.start_auth();
        }
        self.state = State::Ready;
        ClientStep::Ready
    }

    /// RFC 4954 §4: PLAIN (one round trip) if offered, else LOGIN; for a token OAUTHBEARER
    /// (the standard) if offered, else XOAUTH2. The bytes returned are secret: the glue never
    /// logs what it sends.
    fn start_auth(&mut self) -> ClientStep {
        let smarthost = self.params.smarthost.clone();
        if !self.tls_active {
            return self.fail(SessionFailure::AuthNeedsTls { smarthost });
        }
        let Some(credentials) = &self.params.credentials else {
            return self.fail(SessionFailure::Closed);
        };
        if credentials.kind == CredentialKind::Bearer {
            let command = if self.extensions.auth_oauthbearer {
                let (host, port) = split_host_port(&smarthost);
                auth::oauthbearer_command(&credentials.username, host, port, &credentials.password)
            } else if self.extensions.auth_xoauth2 {
                auth::xoauth2_command(&credentials.username, &credentials.password)
            } else {
                let kind = CredentialKind::Bearer;
                return self.fail(SessionFailure::NoAuth { smarthost, kind });
            };
            self.state = State::AwaitAuthResult;
            return ClientStep::Send(command);
        }
        if self.extensions.auth_plain {
            let command = auth::plain_command(&credentials.username, &credentials.password);
            self.state = State::AwaitAuthResult;
            return ClientStep::Send(command);
        }
        if self.extensions.auth_login {
            self.state = State::AwaitLoginUsername;
            return ClientStep::Send(b"AUTH LOGIN\r\n".to_vec());
        }
        let kind = CredentialKind::Password;
        self.fail(SessionFailure::NoAuth { smarthost, kind })
    }

    fn on_auth(&mut self, reply: &Reply) -> ClientStep {
        let bearer = self
            .params
            .credentials
            .as_ref()
            .is_some_and(|c| c.kind == CredentialKind::Bearer);
        if bearer && self.state == State::AwaitAuthResult && reply.code == 334 {
            // The token was refused; the 334 carries a JSON error. The exchange must still be
            // ended by the client: a single ^A for OAUTHBEARER (RFC 7628 §3.2.3), an empty line
            // for XOAUTH2. The refusal itself follows.
            self.state = State::AwaitAuthError;
            let response: &[u8] = if self.extensions.auth_oauthbearer {
                b"AQ==\r\n"
            } else {
                b"\r\n"
            };
            return ClientStep::Send(response.to_vec());
        }
        if self.state == State::AwaitAuthError {
            let reply = reply.clone();
            return self.fail(SessionFailure::AuthFailed { reply });
        }
        let expected = if self.state == State::AwaitAuthResult {
            235
        } else {
            334
        };
        if reply.code != expected {
            return self.fail(SessionFailure::AuthFailed {
                reply: reply.clone(),
            });
        }
        let Some(credentials) = &self.params.credentials else {
            return self.fail(SessionFailure::Closed);
        };
        match self.state {
            State::AwaitLoginUsername => {
                let response = auth::login_response(&credentials.username);
                self.state = State::AwaitLoginPassword;
                ClientStep::Send(response)
            }
            State::AwaitLoginPassword => {
                let response = auth::login_response(&credentials.password);
                self.state = State::AwaitAuthResult;
                ClientStep::Send(response)
            }
            _ => {
                self.state = State::Ready;
                ClientStep::Ready
            }
        }
    }

    fn on_helo(&mut self, reply: &Reply) -> ClientStep {
        if !reply.is_positive() {
            return self.fail(SessionFailure::Rejected {
                stage: Stage::Helo,
                reply: reply.clone(),
            });
        }
        self.extensions = Extensions::default();
        self.state = State::Ready;
        ClientStep::Ready
    }

    fn on_starttls(&mut self, reply: &Reply) -> ClientStep {
        if reply.code != 220 {
            return self.fail(SessionFailure::Rejected {
                stage: Stage::StartTls,
                reply: reply.clone(),
            });
        }
        // Nothing learned in plaintext survives the handshake (RFC 3207 §4.2).
        self.extensions = Extensions::default();
        self.state = State::AwaitTlsHandshake;
        ClientStep::StartTls
    }

    fn on_transaction_reply(&mut self, reply: &Reply) -> ClientStep {
        let Some(transaction) = self.transaction.as_mut() else {
            return self.fail(SessionFailure::Closed);
        };
        let Some(awaited) = transaction.awaited.pop_front() else {
            return self.fail(SessionFailure::Closed);
        };
        match awaited {
            Awaited::Rset => self.needs_rset = !reply.is_positive(),
            Awaited::Mail => {
                transaction.report.mail = Some(reply.clone());
                transaction.mail_accepted = reply.is_positive();
            }
            Awaited::Rcpt(i) => transaction.report.recipients[i] = Some(reply.clone()),
            Awaited::Data => transaction.report.data = Some(reply.clone()),
        }
        if reply.code == 421 {
            // RFC 5321 §3.8: the server is closing; no further replies will come.
            return self.closing(Stage::from(awaited), reply);
        }
        if !transaction.awaited.is_empty() {
            return ClientStep::Wait;
        }
        if awaited != Awaited::Data && !transaction.unsent.is_empty() {
            // Without pipelining: stop early when nothing can succeed any more.
            let any_accepted = accepted_count(&transaction.report) > 0;
            let rcpt_left = transaction
                .unsent
                .iter()
                .any(|(a, _)| matches!(a, Awaited::Rcpt(_)));
            if awaited == Awaited::Mail && !transaction.mail_accepted {
                return self.finish_message();
            }
            if !rcpt_left && !any_accepted {
                return self.finish_message();
            }
            return self.send_next();
        }
        self.after_data(reply)
    }

    /// DATA answered (and with it the whole group).
    fn after_data(&mut self, reply: &Reply) -> ClientStep {
        let Some(transaction) = self.transaction.as_mut() else {
            return self.fail(SessionFailure::Closed);
        };
        if reply.code != 354 {
            return self.finish_message();
        }
        self.state = State::AwaitDataEnd;
        if transaction.mail_accepted && accepted_count(&transaction.report) > 0 {
            return ClientStep::SendBody;
        }
        // RFC 2920 §3.1: DATA got 354 although no recipient was accepted; end it at once.
        transaction.empty_body = true;
        ClientStep::Send(b".\r\n".to_vec())
    }

    fn on_data_end(&mut self, reply: &Reply) -> ClientStep {
        if let Some(transaction) = self.transaction.as_mut() {
            if !transaction.empty_body {
                transaction.report.data_end = Some(reply.clone());
            }
            // The dot ends the transaction whatever the reply (RFC 5321 §4.1.1.4).
            transaction.mail_accepted = false;
        }
        if reply.code == 421 {
            return self.closing(Stage::DataEnd, reply);
        }
        self.finish_message()
    }

    fn finish_message(&mut self) -> ClientStep {
        let Some(transaction) = self.transaction.take() else {
            return self.fail(SessionFailure::Closed);
        };
        self.needs_rset = self.needs_rset || transaction.mail_accepted;
        self.state = State::Ready;
        ClientStep::MessageDone(transaction.report)
    }

    /// A 421 arrived: report the message in flight (if any) and close.
    fn closing(&mut self, stage: Stage, reply: &Reply) -> ClientStep {
        self.state = State::Closed;
        self.failure = Some(SessionFailure::Rejected {
            stage,
            reply: reply.clone(),
        });
        match self.transaction.take() {
            Some(transaction) => ClientStep::MessageDone(fill_unanswered(transaction, reply)),
            None => ClientStep::Failed(SessionFailure::Rejected {
                stage,
                reply: reply.clone(),
            }),
        }
    }

    /// Writes the next command, or the whole rest of the group under PIPELINING (RFC 2920:
    /// RSET, MAIL and RCPT may be grouped; DATA ends the group).
    fn send_next(&mut self) -> ClientStep {
        let pipelining = self.extensions.pipelining;
        let Some(transaction) = self.transaction.as_mut() else {
            return self.fail(SessionFailure::Closed);
        };
        let mut out = Vec::new();
        while let Some((awaited, command)) = transaction.unsent.pop_front() {
            out.extend_from_slice(&command);
            transaction.awaited.push_back(awaited);
            if !pipelining {
                break;
            }
        }
        ClientStep::Send(out)
    }

    /// A verdict on the message before sending anything, or `None` to go ahead.
    fn local_verdict(&self, envelope: &Envelope) -> Option<Reply> {
        let host = &self.params.smarthost;
        if envelope.smtputf8 && !self.extensions.smtputf8 {
            let text = format!("SMTPUTF8 is required, but smarthost {host} does not offer it");
            return Some(Reply::new(553, Some(EnhancedStatus::new(5, 6, 7)), text));
        }
        if let Some(limit) = self.extensions.size.filter(|&limit| limit > 0) {
            if envelope.size > limit {
                let text = format!("message size exceeds the fixed maximum of smarthost {host}");
                return Some(Reply::new(552, Some(EnhancedStatus::new(5, 3, 4)), text));
            }
        }
        if !is_safe_path(&envelope.sender) {
            let text = "sender address contains control characters";
            return Some(Reply::new(501, Some(EnhancedStatus::new(5, 1, 7)), text));
        }
        if envelope.recipients.is_empty() {
            return Some(Reply::new(
                554,
                Some(EnhancedStatus::new(5, 5, 1)),
                "no recipients",
            ));
        }
        None
    }

    fn mail_command(&self, envelope: &Envelope) -> Vec<u8> {
        let mut command = format!("MAIL FROM:<{}>", envelope.sender);
        if self.extensions.size.is_some() {
            command.push_str(&format!(" SIZE={}", envelope.size));
        }
        // Without 8BITMIME offered the body goes as is: outpost does not convert (RFC 6152
        // §3 allows refusing; a relay that converts would alter the message).
        if envelope.eight_bit && self.extensions.eight_bit_mime {
            command.push_str(" BODY=8BITMIME");
        }
        if envelope.smtputf8 {
            command.push_str(" SMTPUTF8");
        }
        command.push_str("\r\n");
        command.into_bytes()
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

/// Every stage that was sent (or was still to be sent) but never answered gets `reason`.
fn fill_unanswered(transaction: Transaction, reason: &Reply) -> DeliveryReport {
    let mut report = transaction.report;
    let pending = transaction
        .awaited
        .iter()
        .chain(transaction.unsent.iter().map(|(a, _)| a));
    for awaited in pending {
        match awaited {
            Awaited::Rset => {}
            Awaited::Mail => report.mail = Some(reason.clone()),
            Awaited::Rcpt(i) => report.recipients[*i] = Some(reason.clone()),
            Awaited::Data => report.data = Some(reason.clone()),
        }
    }
    let body_in_flight = report.data.as_ref().is_some_and(|data| data.code == 354);
    if body_in_flight && report.data_end.is_none() && !transaction.empty_body {
        report.data_end = Some(reason.clone());
    }
    report
}

/// Recipients accepted at RCPT.
fn accepted_count(report: &DeliveryReport) -> usize {
    report
        .recipients
        .iter()
        .filter(|r| r.as_ref().is_some_and(Reply::is_positive))
        .count()
}

/// No control characters, so an address can never end a command line early (injection).
/// `host` and `port` of the configured `host:port` (`[::1]:25` too) for OAUTHBEARER; port 0
/// when there is none (config validation requires one).
fn split_host_port(smarthost: &str) -> (&str, u16) {
    match smarthost.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse().unwrap_or(0),
        ),
        None => (smarthost, 0),
    }
}

fn is_safe_path(path: &str) -> bool {
    !path.chars().any(char::is_control) && !path.contains(['<', '>'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::parse_reply;

    fn params(tls: TlsPolicy) -> ClientParams {
        ClientParams {
            helo_name: "outpost.lan".into(),
            tls,
            smarthost: "mx.example:25".into(),
            credentials: None,
        }
    }

    fn envelope(recipients: &[&str]) -> Envelope {
        Envelope {
            sender: "cron@lan".into(),
            recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
            size: 1234,
            eight_bit: false,
            smtputf8: false,
        }
    }

    fn r(text: &str) -> Reply {
        let wire = format!("{}\r\n", text.replace('\n', "\r\n"));
        parse_reply(wire.as_bytes()).unwrap().unwrap().0
    }

    fn send(text: &str) -> ClientStep {
        ClientStep::Send(text.as_bytes().to_vec())
    }

    const EHLO_PIPELINING: &str = "250-mx.example\n250-PIPELINING\n250-SIZE 10000\n250 8BITMIME";
    const EHLO_PLAIN: &str = "250-mx.example\n250 SIZE";

    /// A session that is `Ready` after greeting and EHLO.
    fn ready(ehlo: &str) -> ClientSession {
        let mut session = ClientSession::new(params(TlsPolicy::None));
        assert_eq!(
            session.handle_reply(&r("220 mx ESMTP")),
            send("EHLO outpost.lan\r\n")
        );
        assert_eq!(session.handle_reply(&r(ehlo)), ClientStep::Ready);
        session
    }

    fn done(step: ClientStep) -> DeliveryReport {
        match step {
            ClientStep::MessageDone(report) => report,
            other => panic!("expected MessageDone, got {other:?}"),
        }
    }

    #[test]
    fn pipelined_message_goes_in_one_write() {
        let mut session = ready(EHLO_PIPELINING);
        let step = session.start_message(&envelope(&["a@x", "b@x"]));
        assert_eq!(
            step,
            send("MAIL FROM:<cron@lan> SIZE=1234\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        );
        assert_eq!(session.handle_reply(&r("250 2.1.0 ok")), ClientStep::Wait);
        assert_eq!(session.handle_reply(&r("250 2.1.5 ok")), ClientStep::Wait);
        assert_eq!(session.handle_reply(&r("250 2.1.5 ok")), ClientStep::Wait);
        assert_eq!(session.handle_reply(&r("354 go")), ClientStep::SendBody);
        assert!(session.awaiting_data_end());
        let report = done(session.handle_reply(&r("250 2.0.0 queued")));
        assert_eq!(report.mail, Some(r("250 2.1.0 ok")));
        assert_eq!(report.recipients, vec![Some(r("250 2.1.5 ok")); 2]);
        assert_eq!(report.data_end, Some(r("250 2.0.0 queued")));
        assert_eq!(report.local, None);
        // Next message: no RSET needed after a completed transaction.
        assert_eq!(
            session.start_message(&envelope(&["c@x"])),
            send("MAIL FROM:<cron@lan> SIZE=1234\r\nRCPT TO:<c@x>\r\nDATA\r\n")
        );
    }

    #[test]
    fn unpipelined_message_goes_command_by_command() {
        let mut session = ready(EHLO_PLAIN);
        assert!(!session.pipelining());
        let mut env = envelope(&["a@x", "b@x"]);
        env.eight_bit = true;
        // 8BITMIME not offered: no BODY parameter; SIZE offered without a limit.
        assert_eq!(
            session.start_message(&env),
            send("MAIL FROM:<cron@lan> SIZE=1234\r\n")
        );
        assert_eq!(
            session.handle_reply(&r("250 ok")),
            send("RCPT TO:<a@x>\r\n")
        );
        assert_eq!(
            session.handle_reply(&r("250 ok")),
            send("RCPT TO:<b@x>\r\n")
        );
        assert_eq!(session.handle_reply(&r("250 ok")), send("DATA\r\n"));
        assert_eq!(session.handle_reply(&r("354 go")), ClientStep::SendBody);
        let report = done(session.handle_reply(&r("250 queued")));
        assert_eq!(report.data, Some(r("354 go")));
        assert_eq!(session.quit(), send("QUIT\r\n"));
        assert_eq!(session.handle_reply(&r("221 bye")), ClientStep::Done);
    }

    #[test]
    fn one_recipient_rejected_others_still_get_the_body() {
        for ehlo in [EHLO_PIPELINING, EHLO_PLAIN] {
            let mut session = ready(ehlo);
            let mut step = session.start_message(&envelope(&["a@x", "bad@x", "c@x"]));
            let script = [
                "250 ok",
                "250 ok",
                "550 5.1.1 no such user",
                "250 ok",
                "354 go",
            ];
            for reply in script {
                assert!(
                    matches!(step, ClientStep::Send(_) | ClientStep::Wait),
                    "{step:?}"
                );
                step = session.handle_reply(&r(reply));
            }
            assert_eq!(step, ClientStep::SendBody);
            let report = done(session.handle_reply(&r("250 queued")));
            assert_eq!(report.recipients[1], Some(r("550 5.1.1 no such user")));
            assert_eq!(report.recipients[0], Some(r("250 ok")));
            assert_eq!(report.recipients[2], Some(r("250 ok")));
        }
    }

    #[test]
    fn all_recipients_rejected_unpipelined_skips_data_and_resets_next_time() {
        let mut session = ready(EHLO_PLAIN);
        session.start_message(&envelope(&["a@x"]));
        assert_eq!(
            session.handle_reply(&r("250 ok")),
            send("RCPT TO:<a@x>\r\n")
        );
        let report = done(session.handle_reply(&r("550 5.1.1 no")));
        assert_eq!(report.data, None);
        assert_eq!(session.start_message(&envelope(&["b@x"])), send("RSET\r\n"));
        assert_eq!(
            session.handle_reply(&r("250 ok")),
            send("MAIL FROM:<cron@lan> SIZE=1234\r\n")
        );
    }

    #[test]
    fn all_recipients_rejected_pipelined_then_354_sends_only_the_dot() {
        let mut session = ready(EHLO_PIPELINING);
        session.start_message(&envelope(&["a@x"]));
        assert_eq!(session.handle_reply(&r("250 ok")), ClientStep::Wait);
        assert_eq!(session.handle_reply(&r("550 no")), ClientStep::Wait);
        assert_eq!(session.handle_reply(&r("354 go")), send(".\r\n"));
        let report = done(session.handle_reply(&r("554 no valid recipients")));
        assert_eq!(report.data_end, None);
        assert_eq!(report.recipients, vec![Some(r("550 no"))]);
        let next = session.start_message(&envelope(&["b@x"]));
        assert_eq!(
            next,
            send("MAIL FROM:<cron@lan> SIZE=1234\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        );
    }

    #[test]
    fn mail_4xx_ends_the_message_without_recipients() {
        let mut session = ready(EHLO_PLAIN);
        session.start_message(&envelope(&["a@x", "b@x"]));
        let report = done(session.handle_reply(&r("451 4.3.0 try later")));
        assert_eq!(report.mail, Some(r("451 4.3.0 try later")));
        assert_eq!(report.recipients, vec![None, None]);
        // No transaction was opened: the next message starts with MAIL.
        assert_eq!(
            session.start_message(&envelope(&["c@x"])),
            send("MAIL FROM:<cron@lan> SIZE=1234\r\n")
        );
    }

    #[test]
    fn data_5xx_is_recorded_and_the_transaction_reset() {
        let mut session = ready(EHLO_PIPELINING);
        session.start_message(&envelope(&["a@x"]));
        session.handle_reply(&r("250 ok"));
        session.handle_reply(&r("250 ok"));
        let report = done(session.handle_reply(&r("554 5.6.0 no data today")));
        assert_eq!(report.data, Some(r("554 5.6.0 no data today")));
        assert_eq!(report.data_end, None);
        let next = session.start_message(&envelope(&["b@x"]));
        assert_eq!(
            next,
            send("RSET\r\nMAIL FROM:<cron@lan> SIZE=1234\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        );
        assert_eq!(session.handle_reply(&r("250 reset")), ClientStep::Wait);
    }

    #[test]
    fn reply_421_mid_session_fills_the_rest_and_closes() {
        let mut session = ready(EHLO_PIPELINING);
        session.start_message(&envelope(&["a@x", "b@x"]));
        assert_eq!(session.handle_reply(&r("250 ok")), ClientStep::Wait);
        let closing = r("421 4.3.2 shutting down");
        let report = done(session.handle_reply(&closing));
        assert_eq!(report.mail, Some(r("250 ok")));
        assert_eq!(
            report.recipients,
            vec![Some(closing.clone()), Some(closing.clone())]
        );
        assert_eq!(report.data, Some(closing.clone()));
        let expected = SessionFailure::Rejected {
            stage: Stage::Rcpt,
            reply: closing,
        };
        assert_eq!(
            session.start_message(&envelope(&["c@x"])),
            ClientStep::Failed(expected)
        );
        assert_eq!(session.quit(), ClientStep::Done);
    }

    #[test]
    fn reply_421_to_the_greeting_is_a_site_failure() {
        let mut session = ClientSession::new(params(TlsPolicy::None));
        let reply = r("421 4.3.2 busy");
        let expected = SessionFailure::Rejected {
            stage: Stage::Greeting,
            reply: reply.clone(),
        };
        assert_eq!(session.handle_reply(&reply), ClientStep::Failed(expected));
    }

    #[test]
    fn ehlo_5xx_falls_back_to_helo() {
        let mut session = ClientSession::new(params(TlsPolicy::None));
        session.handle_reply(&r("220 old"));
        assert_eq!(
            session.handle_reply(&r("502 what")),
            send("HELO outpost.lan\r\n")
        );
        assert_eq!(session.handle_reply(&r("250 hi")), ClientStep::Ready);
        // No extensions after HELO: no SIZE, no pipelining.
        assert_eq!(
            session.start_message(&envelope(&["a@x"])),
            send("MAIL FROM:<cron@lan>\r\n")
        );
    }

    #[test]
    fn starttls_policy_never_falls_back_to_plaintext() {
        let mut session = ClientSession::new(params(TlsPolicy::StartTls));
        session.handle_reply(&r("220 mx"));
        let step = session.handle_reply(&r(EHLO_PIPELINING));
        let ClientStep::Failed(failure) = step else {
            panic!("expected failure, got {step:?}");
        };
        assert_eq!(
            failure.to_string(),
            "smarthost mx.example:25 does not offer STARTTLS"
        );
        assert!(matches!(
            session.start_message(&envelope(&["a@x"])),
            ClientStep::Failed(_)
        ));

        // EHLO refused: HELO cannot do STARTTLS either.
        let mut session = ClientSession::new(params(TlsPolicy::StartTls));
        session.handle_reply(&r("220 mx"));
        let step = session.handle_reply(&r("500 unknown"));
        assert!(
            matches!(step, ClientStep::Failed(SessionFailure::NoStartTls { .. })),
            "{step:?}"
        );
    }

    #[test]
    fn starttls_policy_upgrades_and_ehlos_again() {
        let mut session = ClientSession::new(params(TlsPolicy::StartTls));
        session.handle_reply(&r("220 mx"));
        let step = session.handle_reply(&r("250-mx\n250-PIPELINING\n250 STARTTLS"));
        assert_eq!(step, send("STARTTLS\r\n"));
        assert_eq!(
            session.handle_reply(&r("220 go ahead")),
            ClientStep::StartTls
        );
        assert!(!session.pipelining(), "pre-TLS extensions are forgotten");
        assert_eq!(session.tls_established(), send("EHLO outpost.lan\r\n"));
        assert_eq!(
            session.handle_reply(&r("250-mx\n250 PIPELINING")),
            ClientStep::Ready
        );
    }

    fn with_credentials(tls: TlsPolicy) -> ClientSession {
        ClientSession::new(ClientParams {
            credentials: Some(ClientCredentials {
                username: "relay".into(),
                password: "pw".into(),
                kind: CredentialKind::Password,
            }),
            ..params(tls)
        })
    }

    fn with_token(tls: TlsPolicy) -> ClientSession {
        ClientSession::new(ClientParams {
            credentials: Some(ClientCredentials {
                username: "relay@example.com".into(),
                password: "tok".into(),
                kind: CredentialKind::Bearer,
            }),
            ..params(tls)
        })
    }

    /// The decoded initial response of an `AUTH <mechanism> <base64>` step.
    fn initial_response(step: ClientStep, mechanism: &str) -> String {
        let ClientStep::Send(bytes) = step else {
            panic!("{step:?}");
        };
        let line = String::from_utf8(bytes).unwrap();
        let encoded = line
            .strip_prefix(&format!("AUTH {mechanism} "))
            .and_then(|rest| rest.strip_suffix("\r\n"))
            .unwrap_or_else(|| panic!("{line:?}"));
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        String::from_utf8(decoded).unwrap()
    }

    #[test]
    fn token_prefers_oauthbearer_with_host_and_port() {
        let mut session = with_token(TlsPolicy::Implicit);
        session.handle_reply(&r("220 mx"));
        let step = session.handle_reply(&r("250-mx\n250 AUTH PLAIN XOAUTH2 OAUTHBEARER"));
        assert_eq!(
            initial_response(step, "OAUTHBEARER"),
            "n,a=relay@example.com,\x01host=mx.example\x01port=25\x01auth=Bearer tok\x01\x01"
        );
        assert_eq!(session.handle_reply(&r("235 2.7.0 ok")), ClientStep::Ready);
    }

    #[test]
    fn token_uses_xoauth2_when_oauthbearer_is_not_offered() {
        let mut session = with_token(TlsPolicy::Implicit);
        session.handle_reply(&r("220 mx"));
        let step = session.handle_reply(&r("250-mx\n250 AUTH LOGIN PLAIN XOAUTH2"));
        assert_eq!(
            initial_response(step, "XOAUTH2"),
            "user=relay@example.com\x01auth=Bearer tok\x01\x01"
        );
        assert_eq!(session.handle_reply(&r("235 2.7.0 ok")), ClientStep::Ready);
    }

    #[test]
    fn refused_token_ends_the_exchange_then_fails() {
        // XOAUTH2: the error challenge is answered with an empty line.
        let mut session = with_token(TlsPolicy::Implicit);
        session.handle_reply(&r("220 mx"));
        session.handle_reply(&r("250-mx\n250 AUTH XOAUTH2"));
        let challenge = r("334 eyJzdGF0dXMiOiI0MDEifQ==");
        assert_eq!(session.handle_reply(&challenge), send("\r\n"));
        let step = session.handle_reply(&r("535 5.7.8 token expired"));
        assert_eq!(
            step,
            ClientStep::Failed(SessionFailure::AuthFailed {
                reply: r("535 5.7.8 token expired")
            })
        );
        // OAUTHBEARER: with a single ^A (RFC 7628 §3.2.3).
        let mut session = with_token(TlsPolicy::Implicit);
        session.handle_reply(&r("220 mx"));
        session.handle_reply(&r("250-mx\n250 AUTH OAUTHBEARER"));
        assert_eq!(session.handle_reply(&challenge), send("AQ==\r\n"));
        assert!(matches!(
            session.handle_reply(&r("535 5.7.8 no")),
            ClientStep::Failed(SessionFailure::AuthFailed { .. })
        ));
    }

    #[test]
    fn token_needs_a_token_mechanism_and_tls() {
        let mut session = with_token(TlsPolicy::Implicit);
        session.handle_reply(&r("220 mx"));
        let step = session.handle_reply(&r("250-mx\n250 AUTH PLAIN LOGIN"));
        let ClientStep::Failed(failure) = step else {
            panic!("{step:?}");
        };
        assert_eq!(
            failure.to_string(),
            "smarthost mx.example:25 does not offer AUTH OAUTHBEARER or XOAUTH2, but \
             [smarthost] oauth2_token_url is set"
        );
        let mut session = with_token(TlsPolicy::None);
        session.handle_reply(&r("220 mx"));
        let step = session.handle_reply(&r("250-mx\n250 AUTH XOAUTH2"));
        assert!(
            matches!(
                step,
                ClientStep::Failed(SessionFailure::AuthNeedsTls { .. })
            ),
            "{step:?}"
        );
    }

    #[test]
    fn auth_plain_after_starttls() {
        let mut session = with_credentials(TlsPolicy::StartTls);
        session.handle_reply(&r("220 mx"));
        session.handle_reply(&r("250-mx\n250-AUTH PLAIN LOGIN\n250 STARTTLS"));
        assert_eq!(session.handle_reply(&r("220 go")), ClientStep::StartTls);
        session.tls_established();
        // base64 of "\0relay\0pw"
        assert_eq!(
            session.handle_reply(&r("250-mx\n250 AUTH LOGIN PLAIN")),
            send("AUTH PLAIN AHJlbGF5AHB3\r\n")
        );
        assert_eq!(session.handle_reply(&r("235 2.7.0 ok")), ClientStep::Ready);
    }

    #[test]
    fn auth_login_when_plain_is_not_offered() {
        let mut session = with_credentials(TlsPolicy::Implicit);
        session.handle_reply(&r("220 mx"));
        let step = session.handle_reply(&r("250-mx\n250 AUTH=LOGIN"));
        assert_eq!(step, send("AUTH LOGIN\r\n"));
        assert_eq!(
            session.handle_reply(&r("334 VXNlcm5hbWU6")),
            send("cmVsYXk=\r\n")
        );
        assert_eq!(
            session.handle_reply(&r("334 UGFzc3dvcmQ6")),
            send("cHc=\r\n")
        );
        assert_eq!(session.handle_reply(&r("235 ok")), ClientStep::Ready);
    }

    #[test]
    fn auth_refusal_and_missing_mechanisms_fail_the_session() {
        let mut session = with_credentials(TlsPolicy::Implicit);
        session.handle_reply(&r("220 mx"));
        session.handle_reply(&r("250-mx\n250 AUTH PLAIN"));
        let step = session.handle_reply(&r("535 5.7.8 bad credentials"));
        let ClientStep::Failed(failure) = step else {
            panic!("{step:?}");
        };
        assert_eq!(
            failure.to_string(),
            "authentication failed: 535 5.7.8 bad credentials"
        );
        let mut session = with_credentials(TlsPolicy::Implicit);
        session.handle_reply(&r("220 mx"));
        let step = session.handle_reply(&r("250-mx\n250 AUTH CRAM-MD5"));
        assert!(
            matches!(step, ClientStep::Failed(SessionFailure::NoAuth { .. })),
            "{step:?}"
        );
    }

    #[test]
    fn credentials_are_never_sent_without_tls() {
        let mut session = with_credentials(TlsPolicy::None);
        session.handle_reply(&r("220 mx"));
        let step = session.handle_reply(&r("250-mx\n250 AUTH PLAIN LOGIN"));
        assert!(
            matches!(
                step,
                ClientStep::Failed(SessionFailure::AuthNeedsTls { .. })
            ),
            "{step:?}"
        );
        let shown = format!("{:?}", session);
        assert!(!shown.contains("\"pw\""), "{shown}");
    }

    #[test]
    fn smtputf8_needed_but_not_offered_fails_locally() {
        let mut session = ready(EHLO_PIPELINING);
        let mut env = envelope(&["ü@x", "b@x"]);
        env.smtputf8 = true;
        let report = done(session.start_message(&env));
        let local = report.local.unwrap();
        assert_eq!(local.code, 553);
        assert!(local.text.contains("SMTPUTF8"), "{local}");
        assert_eq!(report.recipients.len(), 2);
    }

    #[test]
    fn mail_parameters_follow_the_offer() {
        let mut session = ready("250-mx\n250-SIZE 100000\n250-8BITMIME\n250 SMTPUTF8");
        let mut env = envelope(&["a@x"]);
        env.eight_bit = true;
        env.smtputf8 = true;
        let step = session.start_message(&env);
        assert_eq!(
            step,
            send("MAIL FROM:<cron@lan> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\n")
        );
    }

    #[test]
    fn message_over_the_advertised_size_fails_locally() {
        let mut session = ready("250-mx\n250 SIZE 1000");
        let report = done(session.start_message(&envelope(&["a@x"])));
        assert_eq!(report.local.map(|r| r.code), Some(552));
    }

    #[test]
    fn null_sender_is_sent_as_empty_path() {
        let mut session = ready(EHLO_PLAIN);
        let mut env = envelope(&["a@x"]);
        env.sender = String::new();
        assert_eq!(
            session.start_message(&env),
            send("MAIL FROM:<> SIZE=1234\r\n")
        );
    }

    #[test]
    fn control_characters_in_addresses_are_never_sent() {
        let mut session = ready(EHLO_PIPELINING);
        let step = session.start_message(&envelope(&["a@x\r\nRCPT TO:<evil@y>", "b@x"]));
        assert_eq!(
            step,
            send("MAIL FROM:<cron@lan> SIZE=1234\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        );
        session.handle_reply(&r("250 ok"));
        session.handle_reply(&r("250 ok"));
        session.handle_reply(&r("354 go"));
        let report = done(session.handle_reply(&r("250 ok")));
        assert_eq!(report.recipients[0].as_ref().map(|r| r.code), Some(501));

        let mut session = ready(EHLO_PIPELINING);
        let mut env = envelope(&["a@x"]);
        env.sender = "x@y>\r\nDATA".into();
        assert!(done(session.start_message(&env)).local.is_some());
    }

    #[test]
    fn timeout_during_data_end_reports_the_reason_for_the_dot() {
        let mut session = ready(EHLO_PIPELINING);
        session.start_message(&envelope(&["a@x"]));
        session.handle_reply(&r("250 ok"));
        session.handle_reply(&r("250 ok"));
        assert_eq!(session.handle_reply(&r("354 go")), ClientStep::SendBody);
        let reason = r("451 4.4.2 timeout");
        let report = session.aborted(reason.clone()).unwrap();
        assert_eq!(report.recipients, vec![Some(r("250 ok"))]);
        assert_eq!(report.data_end, Some(reason));
        assert!(matches!(
            session.start_message(&envelope(&["a@x"])),
            ClientStep::Failed(_)
        ));
    }

    #[test]
    fn lost_connection_while_idle_reports_nothing() {
        let mut session = ready(EHLO_PIPELINING);
        assert_eq!(session.aborted(r("451 4.4.2 lost")), None);
    }

    proptest::proptest! {
        /// Whatever the smarthost answers, the session never panics, never sends a command
        /// after QUIT or failure, and every report answers every recipient slot.
        #[test]
        fn any_reply_sequence_is_handled(
            codes in proptest::collection::vec(
                proptest::sample::select(vec![220u16, 221, 235, 250, 251, 334, 354, 421, 450, 451, 500, 535, 550, 554, 199, 600]),
                0..40,
            ),
            pipelining in proptest::bool::ANY,
            recipients in 1usize..4,
            authenticate in proptest::bool::ANY,
        ) {
            let mut session = if authenticate {
                with_credentials(TlsPolicy::Implicit)
            } else {
                ClientSession::new(params(TlsPolicy::None))
            };
            let ehlo = match (authenticate, pipelining) {
                (true, true) => "250-mx.example\n250-PIPELINING\n250 AUTH PLAIN",
                (true, false) => "250-mx.example\n250 AUTH LOGIN",
                (false, true) => EHLO_PIPELINING,
                (false, false) => EHLO_PLAIN,
            };
            let names: Vec<String> = (0..recipients).map(|i| format!("r{i}@x")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut finished = false;
            for (i, code) in codes.into_iter().enumerate() {
                if finished {
                    break;
                }
                let reply = if i == 1 && code == 250 { r(ehlo) } else { Reply::new(code, None, "x") };
                let mut step = session.handle_reply(&reply);
                loop {
                    match step {
                        ClientStep::Ready => step = session.start_message(&envelope(&names)),
                        ClientStep::MessageDone(report) => {
                            proptest::prop_assert_eq!(report.recipients.len(), recipients);
                            step = session.start_message(&envelope(&names));
                            if !session.is_ready() && matches!(step, ClientStep::Failed(_)) {
                                finished = true;
                                break;
                            }
                        }
                        ClientStep::Failed(_) | ClientStep::Done => {
                            finished = true;
                            break;
                        }
                        ClientStep::Send(_) | ClientStep::Wait | ClientStep::SendBody | ClientStep::StartTls => break,
                    }
                }
            }
        }
    }
}
