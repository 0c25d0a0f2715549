//! AUTH in `ServerSession` (RFC 4954): when it may start, and each step of the SASL exchange
//! (`smtp::auth` decodes the mechanisms). Checks no password: the glue does, on
//! `Next::AuthCheck`. Performs no I/O and never puts a SASL response in a reply or a log.

use super::canned;
use super::{Next, ReplyBuffer, ServerSession, State};
use crate::smtp::auth::{Mechanism, SaslError, SaslExchange, SaslStep};
use crate::smtp::line::Frame;
use crate::smtp::reply::Reply;

impl ServerSession {
    /// RFC 4954 §4: AUTH only when offered, after EHLO, over TLS, once, outside a transaction.
    pub(super) fn check_auth(&self) -> Result<(), Reply> {
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

    pub(super) fn proceed_auth(
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
    pub(super) fn handle_sasl_line(
        &mut self,
        input: &[u8],
        out: &mut ReplyBuffer,
    ) -> (usize, Option<Next>) {
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
