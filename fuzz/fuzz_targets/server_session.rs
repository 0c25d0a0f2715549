//! Fuzzes `ServerSession` through a simulated glue (a bounded read buffer, immediate commits,
//! a TLS handshake that always succeeds). Never does I/O.
//!
//! The fuzz input is a configuration header and a client byte stream built with the alphabet
//! trick. Token 0 is not a byte but a *segment boundary*: when the session asks for STARTTLS,
//! the glue drops the rest of the current segment (the plaintext pipelined behind STARTTLS, see
//! CVE-2011-0411) and the next segment is what the client sends inside TLS. That keeps the
//! transcript independent of chunking, so it can be checked.
//!
//! Invariants:
//! - no panic; the session never stalls a 4 KiB buffer and leaves < 512 octets at `NeedInput`;
//! - every reply is well-formed (3 digits, SP or '-', ≤ 512 octets, CRLF) and parses with the
//!   client's `parse_reply`;
//! - bounded memory: one `handle_input` call queues at most about 4 KiB of replies, and the
//!   body buffer never exceeds `max_message_size` nor grows faster than twice the input;
//! - `250 … queued as` appears exactly once per stored commit (the 250-after-commit rule);
//! - the same input split at two arbitrary extra points gives identical replies, messages and
//!   events.

#![no_main]

use core::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use outpost::smtp::line::MAX_COMMAND_LINE;
use outpost::smtp::reply::parse_reply;
use outpost::smtp::server::{
    CommitOutcome, Envelope, Limits, MailVerdict, Next, ReplyBuffer, ServerSession, SessionParams,
    TlsMode,
};

#[path = "common.rs"]
mod common;
use common::{check_replies, cuts, expand, Cursor};

/// The daemon's read buffer.
const BUFFER: usize = 4096;
/// `server::MAX_QUEUED_REPLIES` plus the largest single step (an EHLO reply, or a refusal and
/// the 421 that may follow it).
const MAX_REPLIES_PER_CALL: usize = 4096 + 1024;
/// Bound on glue iterations per fed chunk: a busy loop is a bug too.
const MAX_STEPS: usize = 100_000;

/// Token 0 (empty) marks a segment boundary; see the module doc.
const TOKENS: &[&[u8]] = &[
    b"",
    b"EHLO lan\r\n",
    b"HELO lan\r\n",
    b"MAIL FROM:<cam@lan>\r\n",
    b"RCPT TO:<ops@example.com>\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY x\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH PLAIN AGNhbWVyYQBwdw==\r\n",
    b"AGNhbWVyYQBwdw==\r\n",
    b"Y2FtZXJh\r\n",
    b"cHc=\r\n",
    b"d3Jvbmc=\r\n",
    b"*\r\n",
    b"=\r\n",
    b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<a@b> SIZE=100\r\n",
    b"MAIL FROM:<a@b> SIZE=99999999\r\n",
    b"MAIL FROM:<\xc3\xbc@b> SMTPUTF8\r\n",
    b"MAIL FROM:<a@b> BODY=8BITMIME\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"RCPT TO:<\xc3\xbc@b>\r\n",
    b"RCPT TO:<x@y>\r\n",
    b"EHLO ",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"AUTH ",
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"<",
    b">",
    b"@",
    b":",
    b".",
    b"\r\n.\r\n",
    b".\r\n",
    b"\n.\n",
    b"\n.\r\n",
    b"..",
    b"Subject: hi\r\n",
    b"\xff",
    b"\0",
    &[b'x'; 100],
    &[b'y'; 600],
    &[b'z'; 1200],
];

/// Everything observable about one run, compared between chunkings.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    output: Vec<u8>,
    messages: Vec<(Envelope, Vec<u8>)>,
    events: Vec<&'static str>,
}

struct Glue {
    session: ServerSession,
    pending: Vec<u8>,
    body: Vec<u8>,
    max_body: usize,
    /// Bits choosing each commit's outcome, so that both runs agree.
    outcomes: u8,
    commits: u32,
    stored: usize,
    skip_segment: bool,
    closed: bool,
    t: Transcript,
}

impl Glue {
    fn new(params: SessionParams, outcomes: u8) -> Self {
        let max_body = usize::try_from(params.limits.max_message_size).unwrap_or(usize::MAX);
        let session = ServerSession::new(params);
        let mut output = Vec::new();
        session.greeting().write_to(&mut output);
        Self {
            session,
            pending: Vec::new(),
            body: Vec::new(),
            max_body,
            outcomes,
            commits: 0,
            stored: 0,
            skip_segment: false,
            closed: false,
            t: Transcript {
                output,
                messages: Vec::new(),
                events: Vec::new(),
            },
        }
    }

    /// Feeds one piece of a segment through the bounded buffer.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.closed && !self.skip_segment {
            let room = BUFFER - self.pending.len();
            assert!(room > 0, "the session stalled with a full buffer");
            let take = room.min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            self.drive();
        }
    }

    fn end_segment(&mut self) {
        self.skip_segment = false;
    }

    fn drive(&mut self) {
        let mut replies = ReplyBuffer::new();
        for _ in 0..MAX_STEPS {
            let body_before = self.body.len();
            let step = self
                .session
                .handle_input(&self.pending, &mut replies, &mut self.body);
            assert!(step.consumed <= self.pending.len());
            let grown = self.body.len() - body_before;
            assert!(
                grown <= 2 * step.consumed + 3,
                "body grew faster than the input"
            );
            assert!(
                self.body.len() <= self.max_body,
                "body buffer over max_message_size"
            );
            assert!(
                replies.as_bytes().len() <= MAX_REPLIES_PER_CALL,
                "one call queued {} octets of replies",
                replies.as_bytes().len()
            );
            self.pending.drain(..step.consumed);
            self.t.output.extend_from_slice(replies.as_bytes());
            replies.clear();
            match step.next {
                Next::NeedInput => {
                    assert!(self.pending.len() < MAX_COMMAND_LINE, "NeedInput guarantee");
                    return;
                }
                Next::FlushReplies => {}
                Next::BodyStart => self.t.events.push("body"),
                Next::BodyDiscarded => {
                    self.t.events.push("discarded");
                    self.body.clear();
                }
                Next::Commit(envelope) => self.commit(envelope),
                Next::StartTls => {
                    // The plaintext behind STARTTLS is dropped, never fed after the handshake.
                    self.t.events.push("starttls");
                    self.pending.clear();
                    self.skip_segment = true;
                    self.session.tls_established();
                    return;
                }
                Next::AuthCheck(credentials) => {
                    self.t.events.push("authcheck");
                    let ok = credentials.username == "camera" && credentials.password == "pw";
                    let next = self
                        .session
                        .auth_checked(ok.then_some(credentials.username), &mut replies);
                    self.t.output.extend_from_slice(replies.as_bytes());
                    replies.clear();
                    if matches!(next, Next::Close) {
                        self.close();
                        return;
                    }
                }
                Next::MailCheck(sender) => {
                    // The glue's rate limit: senders of odd length are over it.
                    self.t.events.push("mailcheck");
                    let verdict = if sender.len() % 2 == 1 {
                        MailVerdict::RateExceeded {
                            messages: 3,
                            window: Duration::from_secs(60),
                            retry_after: Duration::from_millis(sender.len() as u64 * 997),
                        }
                    } else {
                        MailVerdict::Allowed
                    };
                    self.session.mail_checked(verdict, &mut replies);
                    self.t.output.extend_from_slice(replies.as_bytes());
                    replies.clear();
                }
                Next::Close => {
                    self.close();
                    return;
                }
            }
        }
        panic!("no NeedInput after {MAX_STEPS} steps: busy loop");
    }

    fn commit(&mut self, envelope: Envelope) {
        self.t.events.push("commit");
        assert!(!envelope.recipients.is_empty(), "commit without recipients");
        assert_eq!(
            u64::try_from(self.body.len()).ok(),
            Some(envelope.size),
            "envelope size differs from the body"
        );
        let outcome = match (self.outcomes >> (self.commits % 4 * 2)) & 3 {
            0 | 1 => {
                self.stored += 1;
                CommitOutcome::Stored(format!("{:016X}", self.commits))
            }
            2 => CommitOutcome::QueueFull,
            _ => CommitOutcome::Failed,
        };
        self.commits += 1;
        self.t
            .messages
            .push((envelope, std::mem::take(&mut self.body)));
        self.session.committed(outcome).write_to(&mut self.t.output);
    }

    fn close(&mut self) {
        self.t.events.push("close");
        self.closed = true;
        self.pending.clear();
    }
}

fn params(cursor: &mut Cursor<'_>) -> (SessionParams, u8) {
    let flags = cursor.byte();
    let limits = cursor.byte();
    let tls = match flags & 3 {
        0 => TlsMode::Unavailable,
        1 | 2 => TlsMode::Offered,
        _ => TlsMode::Active,
    };
    let params = SessionParams {
        hostname: "mx.example".into(),
        peer: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        relay_allowed: flags & 4 == 0,
        tls,
        auth_offered: flags & 8 == 0,
        require_tls: flags & 16 != 0,
        check_sender: flags & 32 != 0,
        require_auth: flags & 64 != 0,
        limits: Limits {
            max_message_size: [0, 10, 1000, 100_000][usize::from(limits & 3)],
            max_recipients: [0, 1, 3, 100][usize::from(limits >> 2 & 3)],
            max_errors: u32::from(limits >> 4),
        },
    };
    (params, cursor.byte())
}

/// Runs the segments, each split at the given global cut points.
fn run(params: &SessionParams, outcomes: u8, segments: &[Vec<u8>], cuts: &[usize]) -> Glue {
    let mut glue = Glue::new(params.clone(), outcomes);
    let mut offset = 0;
    for segment in segments {
        let mut start = 0;
        for &cut in cuts {
            if cut > offset + start && cut < offset + segment.len() {
                glue.feed(&segment[start..cut - offset]);
                start = cut - offset;
            }
        }
        glue.feed(&segment[start..]);
        glue.end_segment();
        offset += segment.len();
    }
    glue
}

fn check_transcript(glue: &Glue) {
    let output = &glue.t.output;
    check_replies(output);
    // The client's own parser must read every reply the server writes.
    let mut rest = &output[..];
    while !rest.is_empty() {
        match parse_reply(rest) {
            Ok(Some((_, consumed))) => rest = &rest[consumed..],
            other => panic!("server reply the client cannot parse: {other:?}"),
        }
    }
    let queued = output
        .split(|&b| b == b'\n')
        .filter(|line| line.starts_with(b"250 2.0.0 queued as "))
        .count();
    assert_eq!(
        queued, glue.stored,
        "a 250 for a message that was not stored"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut cursor = Cursor::new(data);
    let mode = cursor.byte();
    let (params, outcomes) = params(&mut cursor);
    let raw = [cursor.u16(), cursor.u16()];
    let rest = cursor.rest();
    let segments: Vec<Vec<u8>> = if mode & 1 == 0 {
        rest.split(|&b| b == 0).map(|s| expand(s, TOKENS)).collect()
    } else {
        vec![rest.to_vec()]
    };
    let total: usize = segments.iter().map(Vec::len).sum();
    let whole = run(&params, outcomes, &segments, &[]);
    check_transcript(&whole);
    let split = run(&params, outcomes, &segments, &cuts(&raw, total));
    assert!(
        split.t == whole.t,
        "chunking changed the transcript:\nwhole: {:?}\nsplit: {:?}",
        String::from_utf8_lossy(&whole.t.output),
        String::from_utf8_lossy(&split.t.output)
    );
});
