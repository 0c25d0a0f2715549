//! The body files as a second journal: every appended piece of a body is a framed record, each
//! committed message's envelope follows its last piece in the same body file, and a "done"
//! record is appended there when recipients or the whole message leave the queue. Pure: the
//! record format, its CRC-32, and a scanner that reads a body file's bytes back into records,
//! skipping (and counting) any that fail their checksum. No I/O (`body_file.rs` appends,
//! `rebuild.rs` reads).
//!
//! A record is a 20-byte header, then the payload: `MAGIC` (whose last byte is the format
//! version), the kind (`PIECE`, `ENVELOPE`, `DONE`), the queue id (`u64`), the payload length
//! (`u32`) and the CRC-32 of the header's first 16 bytes and the payload (`u32`); integers are
//! big-endian. An extent (`extent.rs`) of a framed piece points at the payload, its header just
//! before it. Records are only ever appended; a torn or flipped tail fails its checksum and is
//! skipped, and the scanner resynchronises at the next header whose checksum holds.

use super::QueueId;

/// Starts every record; the last byte is the format version.
pub(super) const MAGIC: [u8; 3] = *b"OJ\x01";
/// Length of a record header.
pub(super) const HEADER: usize = 20;
/// A piece of a message body (≤ `MAX_EXTENT` bytes).
pub(super) const PIECE: u8 = b'P';
/// A committed message's envelope (`record::encode_journal_envelope`).
pub(super) const ENVELOPE: u8 = b'E';
/// Recipients that left the queue: `u32` indexes, or none at all for the whole message.
pub(super) const DONE: u8 = b'D';
/// The longest payload the scanner accepts (an envelope with many recipients is the largest).
const MAX_PAYLOAD: usize = 4 << 20;

/// Continues a CRC-32 (IEEE, as sled checksums its own files: `crc32fast`) over `bytes`
/// (start with 0).
pub(super) fn crc32(crc: u32, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(crc);
    hasher.update(bytes);
    hasher.finalize()
}

/// The record `kind` of message `id` carrying `payload`: header and payload, ready to append.
pub(super) fn frame(kind: u8, id: QueueId, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(kind);
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    let crc = crc32(crc32(0, &out), payload);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Kind and id of the record `bytes` starts with, when its header and checksum hold and its
/// payload is `bytes[HEADER..HEADER + len]`; with the payload length.
pub(super) fn check(bytes: &[u8]) -> Option<(u8, QueueId, usize)> {
    let header = bytes.get(..HEADER)?;
    if header[..3] != MAGIC || ![PIECE, ENVELOPE, DONE].contains(&header[3]) {
        return None;
    }
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let len = usize::try_from(be32(12))
        .ok()
        .filter(|&n| n <= MAX_PAYLOAD)?;
    let payload = bytes.get(HEADER..HEADER + len)?;
    if crc32(crc32(0, &header[..16]), payload) != be32(16) {
        return None;
    }
    let mut id = [0; 8];
    id.copy_from_slice(&header[4..12]);
    Some((header[3], QueueId(u64::from_be_bytes(id)), len))
}

/// One record found in a body file: its kind, message, and where its payload lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Found {
    pub(super) kind: u8,
    pub(super) id: QueueId,
    pub(super) offset: u64,
    pub(super) len: u32,
}

/// What a body file holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Scan {
    pub(super) records: Vec<Found>,
    /// Damaged stretches skipped (a flipped or torn record, junk between records).
    pub(super) bad: u64,
    /// Not a journal at all (an unframed body file): nothing was read.
    pub(super) unframed: bool,
}

/// Reads a body file's bytes back into records. A stretch that is no valid record counts once
/// in `bad` and is skipped up to the next valid header.
pub(super) fn scan(bytes: &[u8]) -> Scan {
    let mut out = Scan {
        unframed: !bytes.is_empty() && !bytes.starts_with(&MAGIC),
        ..Scan::default()
    };
    if out.unframed {
        return out;
    }
    let mut pos = 0;
    while pos < bytes.len() {
        if let Some((kind, id, len)) = check(&bytes[pos..]) {
            out.records.push(Found {
                kind,
                id,
                offset: (pos + HEADER) as u64,
                len: u32::try_from(len).unwrap_or(u32::MAX),
            });
            pos += HEADER + len;
            continue;
        }
        out.bad += 1;
        // Resynchronise at the next header that checks (a magic inside a payload fails its CRC).
        pos = (pos + 1..bytes.len())
            .find(|&at| bytes[at..].starts_with(&MAGIC) && check(&bytes[at..]).is_some())
            .unwrap_or(bytes.len());
    }
    out
}
