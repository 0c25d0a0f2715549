//! One message through a `ClientSession`: MAIL, RCPT and DATA (grouped under PIPELINING, RFC
//! 2920), the reply to the final dot, and the per-stage `DeliveryReport`. Records replies and
//! never judges them (that is `forward::outcome`); performs no I/O.

use super::{
    is_safe_path, Awaited, ClientSession, ClientStep, DeliveryReport, Envelope, SessionFailure,
    Stage, State, Transaction,
};
use crate::smtp::reply::{EnhancedStatus, Reply};

impl ClientSession {
    pub(super) fn on_transaction_reply(&mut self, reply: &Reply) -> ClientStep {
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

    pub(super) fn on_data_end(&mut self, reply: &Reply) -> ClientStep {
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
    pub(super) fn send_next(&mut self) -> ClientStep {
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
    pub(super) fn local_verdict(&self, envelope: &Envelope) -> Option<Reply> {
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

    pub(super) fn mail_command(&self, envelope: &Envelope) -> Vec<u8> {
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
}

/// Every stage that was sent (or was still to be sent) but never answered gets `reason`.
pub(super) fn fill_unanswered(transaction: Transaction, reason: &Reply) -> DeliveryReport {
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
