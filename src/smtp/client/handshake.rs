//! The opening of a `ClientSession`: the greeting, EHLO (with the HELO fallback for old
//! servers), what the EHLO reply offers (`Extensions`) and STARTTLS. Never falls back from TLS
//! to plaintext under `TlsPolicy::StartTls`; performs no I/O.

use super::{ClientSession, ClientStep, SessionFailure, Stage, State, TlsPolicy};
use crate::smtp::auth;
use crate::smtp::reply::Reply;

/// What the smarthost's EHLO reply offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Extensions {
    pub(super) pipelining: bool,
    /// `Some(0)`: SIZE without a limit.
    pub(super) size: Option<u64>,
    pub(super) eight_bit_mime: bool,
    pub(super) smtputf8: bool,
    pub(super) starttls: bool,
    pub(super) auth_plain: bool,
    pub(super) auth_login: bool,
    pub(super) auth_oauthbearer: bool,
    pub(super) auth_xoauth2: bool,
}

impl Extensions {
    /// Keywords are the first word of every line after the first (RFC 5321 §4.1.1.1).
    pub(super) fn parse(reply: &Reply) -> Self {
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

impl ClientSession {
    pub(super) fn on_greeting(&mut self, reply: &Reply) -> ClientStep {
        if reply.code != 220 {
            return self.fail(SessionFailure::Rejected {
                stage: Stage::Greeting,
                reply: reply.clone(),
            });
        }
        self.send_ehlo()
    }

    pub(super) fn send_ehlo(&mut self) -> ClientStep {
        self.state = State::AwaitEhlo;
        ClientStep::Send(format!("EHLO {}\r\n", self.params.helo_name).into_bytes())
    }

    pub(super) fn on_ehlo(&mut self, reply: &Reply) -> ClientStep {
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

    pub(super) fn on_helo(&mut self, reply: &Reply) -> ClientStep {
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

    pub(super) fn on_starttls(&mut self, reply: &Reply) -> ClientStep {
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
}
