//! `Extent`: where one appended piece of a body lives (body file, offset, length), and its
//! encoding, the `part/<id>/<n>` record (also kept inline in `msg/`, `record.rs`). Pure: no I/O
//! (the body files themselves are `body_file.rs`'s), and decoding never panics on any input.

use super::error::DecodeError;

/// Largest piece one `part/` record covers (callers append at most 32 KiB at a time), and so the
/// largest buffer `body_chunks` yields.
pub const MAX_EXTENT: usize = 32 * 1024;

/// Where one appended piece of a body lives: body file number (`body_file.rs`), offset, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Extent {
    pub(super) file: u64,
    pub(super) offset: u64,
    pub(super) len: u32,
    /// The piece is a journal record (`journal.rs`): its header, with the checksum, lies just
    /// before `offset`. Unframed pieces (version 1 records) have no checksum.
    pub(super) framed: bool,
}

/// Version byte of the `part/` record: 1 for an unframed piece, 2 for a framed one.
const EXTENT_VERSION: u8 = 1;
const FRAMED_VERSION: u8 = 2;

/// Length of an encoded `Extent` (a `part/` record, or one inline in `msg/`).
pub(super) const EXTENT_BYTES: usize = 21;

impl Extent {
    pub(super) fn encode(&self) -> [u8; EXTENT_BYTES] {
        let mut out = [0; EXTENT_BYTES];
        out[0] = if self.framed {
            FRAMED_VERSION
        } else {
            EXTENT_VERSION
        };
        out[1..9].copy_from_slice(&self.file.to_be_bytes());
        out[9..17].copy_from_slice(&self.offset.to_be_bytes());
        out[17..21].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes: &[u8; EXTENT_BYTES] = bytes
            .try_into()
            .map_err(|_| DecodeError("part record of the wrong length"))?;
        let framed = match bytes[0] {
            EXTENT_VERSION => false,
            FRAMED_VERSION => true,
            _ => return Err(DecodeError("unknown part record version")),
        };
        let u64_at = |at: usize| {
            let mut b = [0; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let mut len = [0; 4];
        len.copy_from_slice(&bytes[17..21]);
        Ok(Self {
            file: u64_at(1),
            offset: u64_at(9),
            len: u32::from_be_bytes(len),
            framed,
        })
    }

    /// Offset one past the extent's last byte.
    pub(super) fn end(&self) -> u64 {
        self.offset.saturating_add(u64::from(self.len))
    }
}

/// Counts one more extent in body file `file` into `counts` (body file, extents), the tally a
/// spool and a removal hand to `BodyFiles::release`/`release_after`. A body's pieces are
/// appended in order, so one body file's extents are contiguous and the list stays a handful
/// of entries.
pub(super) fn count_extent(counts: &mut Vec<(u64, u64)>, file: u64) {
    match counts.last_mut() {
        Some((f, n)) if *f == file => *n += 1,
        _ => counts.push((file, 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_records_round_trip_and_reject_junk() {
        let e = Extent {
            file: 0x0102_0304_0506_0708,
            offset: u64::MAX - 1,
            len: 32 * 1024,
            framed: false,
        };
        assert_eq!(Extent::decode(&e.encode()), Ok(e));
        let framed = Extent { framed: true, ..e };
        assert_eq!(Extent::decode(&framed.encode()), Ok(framed));
        assert!(Extent::decode(&e.encode()[..20]).is_err());
        let mut bad = e.encode();
        bad[0] = 9;
        assert!(Extent::decode(&bad).is_err());
    }
}
