//! A session's message on its way into the queue: the submission opened at DATA (after the
//! free-space check), the body moved into it in whole pieces, and the commit through intake at
//! the final dot, whose outcome is the only road to the session's 250. Never replies itself.

use futures_lite::{AsyncRead, AsyncWrite};
use log::{error, warn};

use super::{unix_now, Conn, Peer, SpoolState, MAX_CHUNK};
use crate::intake::{self, IntakeError, Reject, Source};
use crate::message::rfc5322_date;
use crate::smtp::server::{BodyType, CommitOutcome, Envelope};

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    /// DATA accepted (354 sent): open a submission and put the trace header first in the body
    /// buffer (not appended on its own: a small message then reaches the store in one append,
    /// one write to its body file).
    pub(super) fn open_spool(&mut self) {
        self.body.clear();
        self.received_unix = unix_now();
        let intake = self.shared.intake();
        if let Some(available) = intake.short_of_space() {
            intake.count_reject(Reject::Disk);
            warn!(
                "{} status=rejected reason=\"data_dir nearly full ({} KiB available)\"",
                self.tag,
                available / 1024
            );
            self.spool = SpoolState::NoSpace;
            return;
        }
        let submission = match intake.open() {
            Ok(submission) => submission,
            Err(e) => {
                error!("{} cannot open a spool: {e}", self.tag);
                self.spool = SpoolState::Failed;
                return;
            }
        };
        let (id, date) = (
            submission.id().to_string(),
            rfc5322_date(self.received_unix),
        );
        let header = match self.tag.peer {
            Peer::Ip(_) => self.session.received_header(&id, &date),
            Peer::Local { uid } => {
                super::super::local_received(uid, &self.shared.config().hostname, &id, &date)
            }
        };
        // The header is far below `MAX_CHUNK` (a line of names bounded by RFC 5321 limits), so
        // the buffer stays below `BODY_BUF` as the body arrives.
        self.body.extend_from_slice(header.as_bytes());
        self.spool = SpoolState::Open(submission);
    }

    /// Moves one whole piece (`MAX_CHUNK`) from the front of the body buffer into the spool.
    pub(super) fn spill_piece(&mut self) {
        self.append_to_spool(MAX_CHUNK);
        self.body.drain(..MAX_CHUNK);
    }

    /// Moves the body buffer into the spool in pieces of at most `MAX_CHUNK`.
    fn spill_body(&mut self) {
        self.append_to_spool(self.body.len());
        self.body.clear();
    }

    /// Appends the first `len` octets of the body buffer to the spool. Without an open spool
    /// (store failed) the bytes are dropped: the body is drained and the commit fails.
    fn append_to_spool(&mut self, len: usize) {
        if let SpoolState::Open(submission) = &mut self.spool {
            let appended = self.body[..len]
                .chunks(MAX_CHUNK)
                .try_for_each(|chunk| submission.append(chunk));
            if let Err(e) = appended {
                error!(
                    "{} queue_id={} cannot write to the spool: {e}",
                    self.tag,
                    submission.id()
                );
                if let SpoolState::Open(spool) =
                    std::mem::replace(&mut self.spool, SpoolState::Failed)
                {
                    spool.abort();
                }
            }
        }
    }

    /// The final dot: append the rest of the body, commit through intake (durable on return,
    /// the forwarder told). Only a `Stored` outcome lets the session answer 250.
    pub(super) async fn commit(&mut self, envelope: &Envelope) -> CommitOutcome {
        self.spill_body();
        let submission = match std::mem::take(&mut self.spool) {
            SpoolState::Open(submission) => submission,
            SpoolState::NoSpace => return CommitOutcome::QueueFull,
            SpoolState::Idle | SpoolState::Failed => return CommitOutcome::Failed,
        };
        let entering = intake::Envelope {
            sender: envelope.reverse_path.as_str().to_owned(),
            recipients: envelope
                .recipients
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            eight_bit: envelope.body_type == BodyType::EightBitMime,
            smtputf8: envelope.smtputf8,
            received_unix: self.received_unix,
        };
        let tag = self.tag;
        let spool_id = submission.id();
        let source = match tag.peer {
            Peer::Ip(_) => Source::Smtp {
                tag: &tag,
                user: self.session.authenticated(),
                size: envelope.size,
            },
            Peer::Local { uid } => Source::Local {
                tag: &tag,
                uid,
                size: envelope.size,
            },
        };
        match self
            .shared
            .intake()
            .commit(submission, entering, source)
            .await
        {
            Ok(id) => CommitOutcome::Stored(id.to_string()),
            Err(IntakeError::QueueFull) => {
                self.shared.intake().count_reject(Reject::QueueFull);
                warn!(
                    "{tag} queue_id={spool_id} size={} status=rejected reason=\"queue full \
                     (queue.max_bytes)\"",
                    envelope.size
                );
                CommitOutcome::QueueFull
            }
            Err(IntakeError::Store(e)) => {
                error!("{tag} queue_id={spool_id} commit failed: {e}");
                CommitOutcome::Failed
            }
            Err(e @ IntakeError::TooManyHops { .. }) => {
                warn!("{tag} queue_id={spool_id} status=rejected reason=\"{e}\"");
                CommitOutcome::TooManyHops
            }
        }
    }
}
