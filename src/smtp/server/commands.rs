//! The command phase of `ServerSession`: framing a command line, the one dispatch, and a
//! `check_*`/`proceed_*` pair per command (HELO/EHLO, MAIL, RCPT, DATA and the final dot, RSET,
//! QUIT, STARTTLS); refusals and the error count. Performs no I/O; every reply goes through
//! the `ReplyBuffer`. AUTH is in `sasl`.

use std::borrow::Cow;

use super::canned;
use super::{
    BodyType, Envelope, Helo, Next, ReplyBuffer, ServerSession, State, TlsMode, Transaction,
    JUNK_COMMAND_LIMIT,
};
use crate::smtp::address::{Mailbox, ReversePath};
use crate::smtp::body::{BodyDecoder, BodyError};
use crate::smtp::command::{parse_command, Command, MailParams, SyntaxError};
use crate::smtp::line::Frame;
use crate::smtp::reply::Reply;

impl ServerSession {
    /// Frames and handles one command line. `None`: go on with the rest of the input.
    pub(super) fn handle_line(
        &mut self,
        input: &[u8],
        out: &mut ReplyBuffer,
    ) -> (usize, Option<Next>) {
        match self.framer.next_line(input) {
            Frame::Partial { consumed } => (consumed, Some(Next::NeedInput)),
            Frame::TooLong { consumed } => (
                consumed,
                self.reject(Reply::from(&SyntaxError::LineTooLong), out),
            ),
            Frame::Line { line, consumed } => (consumed, self.handle_command(line, out)),
        }
    }

    /// One command line: parse, dispatch, then count junk and refusals.
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
        let result = self.dispatch(command, out);
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

    /// The one dispatch: `check_*` decides (sequencing, limits), `proceed_*` applies.
    fn dispatch(&mut self, command: Command, out: &mut ReplyBuffer) -> Result<Option<Next>, Reply> {
        match command {
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
        }
    }

    /// Queues a refusal and counts it; too many earn 421 and a close (Postfix
    /// `smtpd_hard_error_limit`). Size and recipient-limit refusals are not the client's junk.
    pub(super) fn reject(&mut self, reply: Reply, out: &mut ReplyBuffer) -> Option<Next> {
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
        if self.params.require_auth && self.authenticated.is_none() {
            return Err(canned::AUTH_REQUIRED);
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

    pub(super) fn proceed_mail(
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
    pub(super) fn end_of_data(&mut self, out: &mut ReplyBuffer) -> Next {
        let (error, size) = match &self.state {
            State::InBody(decoder) => (decoder.error(), decoder.size()),
            _ => (None, 0),
        };
        self.state = State::AwaitMail;
        let tx = self.tx.take();
        let refusal = match (error, tx) {
            (Some(BodyError::TooLarge), _) => canned::MESSAGE_TOO_BIG,
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
}

/// Queues a reply that changes no state.
fn answer(reply: &Reply, out: &mut ReplyBuffer) -> Option<Next> {
    out.push(reply);
    None
}
