//! Versioned on-disk encodings of the store's records: `MessageMeta` (`msg/<id>`),
//! `RcptRecord` (`rcpt/<id>/<idx>`) and the counters under `meta/`. Hand-written compact binary:
//! every record starts with a version byte; integers are big-endian; strings are a `u32` length
//! plus UTF-8 bytes. Pure functions: no I/O, and decoding never panics on any input (it returns
//! `DecodeError`, which the store turns into a quarantine).

use super::error::DecodeError;
use super::extent::{Extent, EXTENT_BYTES};
use super::{AttemptRecord, RcptRecord, RcptState, Usage};
use crate::clock::QueueTime;
use crate::priority::Priority;

/// Version byte of every record this build writes.
const VERSION: u8 = 1;

/// Envelope and schedule of one committed message (`msg/<id>`); its recipients live in their
/// own records so one attempt's results rewrite only what changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MessageMeta {
    pub(super) sender: String,
    pub(super) eight_bit: bool,
    pub smtputf8: bool,
    pub(super) received_unix: u64,
    /// Body bytes as stored (what the queue cap counts).
    pub(super) size: u64,
    pub(super) enqueued_at: QueueTime,
    pub(super) attempts: u32,
    pub(super) next_attempt: QueueTime,
    pub(super) held: bool,
    /// Set when no recipient is left to try and at least one failed: retention starts here.
    pub(super) failed_at: Option<QueueTime>,
    /// Number of `rcpt/<id>/<idx>` records written at commit (idx `0..recipients`).
    pub(super) recipients: u32,
    /// Number of `body/<id>/<chunk>` keys (chunk `0..chunks`): deletion needs no scan.
    pub(super) chunks: u32,
    /// `[[priority]]` at commit. `normal` has no flag and no byte, so a record without the
    /// priority flag reads as `normal`.
    pub(super) priority: Priority,
    /// `[coalesce]` key at commit: eight bytes after the priority byte, only when set (so
    /// a record without one has no coalescing key).
    pub(super) coalesce: Option<u64>,
    /// Where the body is, when the message has at most `INLINE_EXTENTS` pieces: `chunks`
    /// extents kept in this record (after the coalescing key) instead of `part/` records, which
    /// saves two sled log writes per message (insert and removal). Empty: `part/` records (or
    /// legacy `body/` keys) hold the body.
    pub(super) extents: Vec<Extent>,
    /// The recipient's record when the message has exactly one (`recipients == 1`), kept here
    /// (after the extents) instead of `rcpt/<id>/0`: two sled log writes fewer per message, and
    /// an attempt rewrites `msg/` anyway. `None`: `rcpt/` records hold the recipients.
    pub(super) rcpt: Option<RcptRecord>,
}

/// The most body pieces (`MAX_EXTENT` each) a `msg/` record carries inline: 128 KiB of body,
/// 84 bytes of record.
pub(super) const INLINE_EXTENTS: usize = 4;

const FLAG_EIGHT_BIT: u8 = 1;
const FLAG_SMTPUTF8: u8 = 2;
const FLAG_HELD: u8 = 4;
const FLAG_FAILED: u8 = 8;
/// A priority byte follows the last field.
const FLAG_PRIORITY: u8 = 16;
/// A coalescing key (`u64`) follows (after the priority byte, if any).
const FLAG_COALESCE: u8 = 32;
/// `chunks` encoded extents follow (after the coalescing key, if any).
const FLAG_EXTENTS: u8 = 64;
/// The one recipient's record follows (after the extents, if any), as a `u32` length and an
/// `encode_rcpt` record.
const FLAG_RCPT: u8 = 128;
const KNOWN_FLAGS: u8 = FLAG_EIGHT_BIT
    | FLAG_SMTPUTF8
    | FLAG_HELD
    | FLAG_FAILED
    | FLAG_PRIORITY
    | FLAG_COALESCE
    | FLAG_EXTENTS
    | FLAG_RCPT;

impl MessageMeta {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.sender.len());
        out.push(VERSION);
        let mut flags = 0;
        if self.eight_bit {
            flags |= FLAG_EIGHT_BIT;
        }
        if self.smtputf8 {
            flags |= FLAG_SMTPUTF8;
        }
        if self.held {
            flags |= FLAG_HELD;
        }
        if self.failed_at.is_some() {
            flags |= FLAG_FAILED;
        }
        if self.priority != Priority::Normal {
            flags |= FLAG_PRIORITY;
        }
        if self.coalesce.is_some() {
            flags |= FLAG_COALESCE;
        }
        if !self.extents.is_empty() {
            flags |= FLAG_EXTENTS;
        }
        if self.rcpt.is_some() {
            flags |= FLAG_RCPT;
        }
        out.push(flags);
        put_str(&mut out, &self.sender);
        out.extend_from_slice(&self.received_unix.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.enqueued_at.to_be_bytes());
        out.extend_from_slice(&self.attempts.to_be_bytes());
        out.extend_from_slice(&self.next_attempt.to_be_bytes());
        out.extend_from_slice(&self.failed_at.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.recipients.to_be_bytes());
        out.extend_from_slice(&self.chunks.to_be_bytes());
        if self.priority != Priority::Normal {
            out.push(priority_byte(self.priority));
        }
        if let Some(key) = self.coalesce {
            out.extend_from_slice(&key.to_be_bytes());
        }
        for extent in &self.extents {
            out.extend_from_slice(&extent.encode());
        }
        if let Some(rcpt) = &self.rcpt {
            let record = encode_rcpt(rcpt);
            out.extend_from_slice(
                &u32::try_from(record.len())
                    .unwrap_or(u32::MAX)
                    .to_be_bytes(),
            );
            out.extend_from_slice(&record);
        }
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let meta = Self::decode_from(&mut r)?;
        r.end()?;
        Ok(meta)
    }

    /// Decodes a record from the front of `r`, leaving what follows it.
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version()?;
        let flags = r.u8()?;
        // Every bit of `flags` has a meaning now (`KNOWN_FLAGS` is all of them): a field
        // added later needs a second flags byte behind a new `VERSION`.
        debug_assert_eq!(KNOWN_FLAGS, u8::MAX);
        let sender = r.string()?;
        let received_unix = r.u64()?;
        let size = r.u64()?;
        let enqueued_at = r.u64()?;
        let attempts = r.u32()?;
        let next_attempt = r.u64()?;
        let failed_at = r.u64()?;
        let recipients = r.u32()?;
        let chunks = r.u32()?;
        let priority = if flags & FLAG_PRIORITY != 0 {
            priority_of(r.u8()?)?
        } else {
            Priority::Normal
        };
        let coalesce = if flags & FLAG_COALESCE != 0 {
            Some(r.u64()?)
        } else {
            None
        };
        let extents = inline_extents(r, flags, chunks)?;
        let rcpt = inline_rcpt(r, flags, recipients)?;
        Ok(Self {
            sender,
            eight_bit: flags & FLAG_EIGHT_BIT != 0,
            smtputf8: flags & FLAG_SMTPUTF8 != 0,
            received_unix,
            size,
            enqueued_at,
            attempts,
            next_attempt,
            held: flags & FLAG_HELD != 0,
            failed_at: (flags & FLAG_FAILED != 0).then_some(failed_at),
            recipients,
            chunks,
            priority,
            coalesce,
            extents,
            rcpt,
        })
    }
}

/// The extents a `msg/` record carries inline (`FLAG_EXTENTS`; empty without it).
fn inline_extents(r: &mut Reader<'_>, flags: u8, chunks: u32) -> Result<Vec<Extent>, DecodeError> {
    let mut extents = Vec::new();
    if flags & FLAG_EXTENTS != 0 {
        if chunks == 0 {
            return Err(DecodeError("inline extents of an empty body"));
        }
        // Each one consumes input: a lying `chunks` ends in an error, not a big allocation.
        for _ in 0..chunks {
            extents.push(Extent::decode(r.take(EXTENT_BYTES)?)?);
        }
    }
    Ok(extents)
}

/// The one recipient's record a `msg/` record carries inline (`FLAG_RCPT`; `None` without it).
fn inline_rcpt(
    r: &mut Reader<'_>,
    flags: u8,
    recipients: u32,
) -> Result<Option<RcptRecord>, DecodeError> {
    if flags & FLAG_RCPT == 0 {
        return Ok(None);
    }
    if recipients != 1 {
        return Err(DecodeError(
            "inline recipient of a message without exactly one",
        ));
    }
    let len = usize::try_from(r.u32()?).map_err(|_| DecodeError("record too short"))?;
    Ok(Some(decode_rcpt(r.take(len)?)?))
}

fn priority_byte(priority: Priority) -> u8 {
    match priority {
        Priority::Urgent => 0,
        Priority::High => 1,
        Priority::Normal => 2,
        Priority::Low => 3,
    }
}

fn priority_of(byte: u8) -> Result<Priority, DecodeError> {
    Priority::ALL
        .into_iter()
        .find(|&p| priority_byte(p) == byte)
        .ok_or(DecodeError("unknown priority"))
}

fn state_byte(state: RcptState) -> u8 {
    match state {
        RcptState::Pending => 0,
        RcptState::Deferred => 1,
        RcptState::Delivered => 2,
        RcptState::Failed => 3,
    }
}

fn state_of(byte: u8) -> Result<RcptState, DecodeError> {
    Ok(match byte {
        0 => RcptState::Pending,
        1 => RcptState::Deferred,
        2 => RcptState::Delivered,
        3 => RcptState::Failed,
        _ => return Err(DecodeError("unknown recipient state")),
    })
}

pub(super) fn encode_rcpt(rcpt: &RcptRecord) -> Vec<u8> {
    let reply_len = rcpt.last_reply.as_ref().map_or(0, String::len);
    let mut out = Vec::with_capacity(16 + rcpt.address.len() + reply_len);
    out.push(VERSION);
    out.push(state_byte(rcpt.state));
    put_str(&mut out, &rcpt.address);
    match &rcpt.last_reply {
        None => out.push(0),
        Some(reply) => {
            out.push(1);
            put_str(&mut out, reply);
        }
    }
    out
}

pub(super) fn decode_rcpt(bytes: &[u8]) -> Result<RcptRecord, DecodeError> {
    let mut r = Reader::new(bytes);
    r.version()?;
    let state = state_of(r.u8()?)?;
    let address = r.string()?;
    let last_reply = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        _ => return Err(DecodeError("bad reply tag")),
    };
    r.end()?;
    Ok(RcptRecord {
        address,
        state,
        last_reply,
    })
}

/// `hist/<id>/<n>`: one delivery attempt (when, and each recipient's result).
pub(super) fn encode_attempt(attempt: &AttemptRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 64 * attempt.results.len());
    out.push(VERSION);
    out.extend_from_slice(&attempt.at_unix.to_be_bytes());
    let count = u32::try_from(attempt.results.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for (idx, state, reply) in attempt.results.iter().take(count as usize) {
        out.extend_from_slice(&idx.to_be_bytes());
        out.push(state_byte(*state));
        put_str(&mut out, reply);
    }
    out
}

pub(super) fn decode_attempt(bytes: &[u8]) -> Result<AttemptRecord, DecodeError> {
    let mut r = Reader::new(bytes);
    r.version()?;
    let at_unix = r.u64()?;
    let count = r.u32()?;
    let mut results = Vec::new();
    for _ in 0..count {
        let idx = r.u32()?;
        let state = state_of(r.u8()?)?;
        results.push((idx, state, r.string()?));
    }
    r.end()?;
    Ok(AttemptRecord { at_unix, results })
}

/// `meta/usage`: the queue counters, kept so nothing ever has to count the tree.
pub(super) fn encode_usage(usage: Usage) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(VERSION);
    out.extend_from_slice(&usage.messages.to_be_bytes());
    out.extend_from_slice(&usage.bytes.to_be_bytes());
    out
}

pub(super) fn decode_usage(bytes: &[u8]) -> Result<Usage, DecodeError> {
    let mut r = Reader::new(bytes);
    r.version()?;
    let messages = r.u64()?;
    let bytes = r.u64()?;
    r.end()?;
    Ok(Usage { messages, bytes })
}

/// `meta/clock`: the queue clock (ms of time spent queued).
pub(super) fn encode_clock(now: QueueTime) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(VERSION);
    out.extend_from_slice(&now.to_be_bytes());
    out
}

pub(super) fn decode_clock(bytes: &[u8]) -> Result<QueueTime, DecodeError> {
    let mut r = Reader::new(bytes);
    r.version()?;
    let now = r.u64()?;
    r.end()?;
    Ok(now)
}

/// A committed message's envelope as the journal keeps it (`journal::ENVELOPE`): `meta` as
/// committed, without its extents, then the recipients (`records`, or the one inline in
/// `meta`) as a `u32` count and strings.
pub(super) fn encode_journal_envelope(meta: &MessageMeta, records: &[RcptRecord]) -> Vec<u8> {
    let rcpt = meta.rcpt.as_ref();
    let bare = MessageMeta {
        extents: Vec::new(),
        rcpt: None,
        ..meta.clone()
    };
    let mut out = bare.encode();
    let addresses: Vec<&str> = rcpt
        .into_iter()
        .chain(records)
        .map(|r| r.address.as_str())
        .collect();
    out.extend_from_slice(
        &u32::try_from(addresses.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for address in addresses {
        put_str(&mut out, address);
    }
    out
}

/// The envelope and recipient addresses of a `journal::ENVELOPE` payload.
pub(super) fn decode_journal_envelope(
    bytes: &[u8],
) -> Result<(MessageMeta, Vec<String>), DecodeError> {
    // The recipient list follows the `msg/` encoding, whose end the count marks: decode the
    // envelope from the front, then read the count and addresses from where it stopped.
    let mut r = Reader::new(bytes);
    let meta = MessageMeta::decode_from(&mut r)?;
    let count = r.u32()?;
    let mut recipients = Vec::new();
    for _ in 0..count {
        recipients.push(r.string()?);
    }
    r.end()?;
    Ok((meta, recipients))
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    // Addresses and replies are bounded far below 4 GiB by the SMTP limits; saturate anyway so
    // the encoding can never be silently wrong (decoding would then report a short record).
    let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// A bounds-checked cursor: every read returns `DecodeError` instead of panicking.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError("record too short"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn version(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            VERSION => Ok(()),
            _ => Err(DecodeError("unknown record version")),
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = usize::try_from(self.u32()?).map_err(|_| DecodeError("string too long"))?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError("string not UTF-8"))
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests;
