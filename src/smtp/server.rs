//! `ServerSession`: the receiver state machine. Bytes in, replies and decisions out.
//! Performs no I/O and reads no clock.

use core::net::IpAddr;

use super::address::{Mailbox, ReversePath};
use super::reply::Reply;

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
    pub auth_offered: bool,
    pub limits: Limits,
}

/// RFC 1652 / RFC 6152 body type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
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
    Closed,
}

pub struct Step {
    pub consumed: usize,
    pub next: Next,
}

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
    StartTls,
    /// Write pending replies and close.
    Close,
}

/// Serialized replies waiting to be written: the one reply choke point.
#[derive(Default)]
pub struct Replies {
    buf: Vec<u8>,
}

impl Replies {
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
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

pub struct ServerSession {
    params: SessionParams,
}

impl ServerSession {
    pub fn new(params: SessionParams) -> Self {
        Self { params }
    }
    pub fn greeting(&self) -> Reply {
        let _ = &self.params;
        todo!()
    }
    /// Feeds bytes. In body state, decoded (dot-unstuffed, CRLF-normalised) octets are appended
    /// to `body`. Guarantee: when this returns `NeedInput`, the unconsumed tail is shorter than
    /// `MAX_COMMAND_LINE`, so a caller buffer of 4 KiB never deadlocks.
    pub fn handle_input(&mut self, input: &[u8], out: &mut Replies, body: &mut Vec<u8>) -> Step {
        let _ = (input, out, body);
        todo!()
    }
    /// The only way a 250 after DATA is produced.
    pub fn committed(&mut self, outcome: CommitOutcome) -> Reply {
        let _ = outcome;
        todo!()
    }
    pub fn tls_established(&mut self) {
        todo!()
    }
    pub fn timed_out(&mut self) -> Reply {
        todo!()
    }
    pub fn awaiting(&self) -> Awaiting {
        todo!()
    }
    /// RFC 5321 §4.4 trace header for the current transaction, CRLF-terminated (folded).
    pub fn received_header(&self, queue_id: &str, date: &str) -> String {
        let _ = (queue_id, date);
        todo!()
    }
}
