//! Body segments: message bodies live outside sled, appended to files `<dir>/bodies/<seg>`
//! (`seg` = 16 hex digits from sled's `generate_id`); sled keeps one small `part/<id>/<n>`
//! record per appended piece (`Extent`: segment, offset, length). Owns the segment files: their
//! creation, the appends, which ones the next group flush must `fdatasync`, and their removal
//! once no extent points into them. Never writes sled (the caller stores the extents) and never
//! syncs by itself (`flush.rs` does, before sled's flush).
//!
//! Why not sled values: every body chunk in a sled leaf is rewritten whenever the leaf is
//! consolidated or split, and sled's io buffers hold it again, so a body stored in sled is
//! written many times its size and held in memory while it waits. Appended once to a file, a
//! body is written once. Why segments shared by many messages rather than one file per message: a
//! 1 KiB body alone in a file still dirties a whole 4 KiB page (and a directory entry and an
//! inode per message), while appends from one group commit share their pages.
//!
//! Durability: an append only reaches the page cache. `take_dirty` hands the group flush every
//! segment written since the previous sync started, plus whether `bodies/` gained an entry; the
//! flush `fdatasync`s them, then the directory, then flushes sled and `fdatasync`s its log, so
//! a durable `part/` record never points at body bytes that were not durable first. A segment is
//! unlinked only after the removal of its last extent was made durable (or at recovery, when no
//! record points into it): a crash then leaves at worst an orphan file, which `recover` deletes.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::DecodeError;

/// A segment is closed once an append would take it past this size. A segment stays on disk
/// while any message in it is queued, so this bounds what one long-queued message can pin
/// (besides its own body); bigger segments mean fewer files and directory syncs.
pub const SEGMENT_BYTES: u64 = 1024 * 1024;

/// Largest piece one `part/` record covers (callers append at most 32 KiB at a time), and so the
/// largest buffer `body_chunks` yields.
pub const MAX_EXTENT: usize = 32 * 1024;

/// Where one appended piece of a body lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Extent {
    pub(super) seg: u64,
    pub(super) offset: u64,
    pub(super) len: u32,
}

/// Version byte of the `part/` record.
const EXTENT_VERSION: u8 = 1;

/// Length of an encoded `Extent` (a `part/` record, or one inline in `msg/`).
pub(super) const EXTENT_BYTES: usize = 21;

impl Extent {
    pub(super) fn encode(&self) -> [u8; EXTENT_BYTES] {
        let mut out = [0; EXTENT_BYTES];
        out[0] = EXTENT_VERSION;
        out[1..9].copy_from_slice(&self.seg.to_be_bytes());
        out[9..17].copy_from_slice(&self.offset.to_be_bytes());
        out[17..21].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes: &[u8; EXTENT_BYTES] = bytes
            .try_into()
            .map_err(|_| DecodeError("part record of the wrong length"))?;
        if bytes[0] != EXTENT_VERSION {
            return Err(DecodeError("unknown part record version"));
        }
        let u64_at = |at: usize| {
            let mut b = [0; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let mut len = [0; 4];
        len.copy_from_slice(&bytes[17..21]);
        Ok(Self {
            seg: u64_at(1),
            offset: u64_at(9),
            len: u32::from_be_bytes(len),
        })
    }

    /// Offset one past the extent's last byte.
    pub(super) fn end(&self) -> u64 {
        self.offset.saturating_add(u64::from(self.len))
    }
}

/// The segment being appended to.
struct Active {
    seg: u64,
    file: Arc<File>,
    len: u64,
}

/// What one sync must make durable before sled's flush.
#[derive(Default)]
pub(super) struct DirtySegments {
    pub(super) files: Vec<(u64, Arc<File>)>,
    /// `bodies/` gained an entry: fsync the directory too.
    pub(super) dir: Option<PathBuf>,
}

/// Single-threaded state of the segment files (lives in the store's `Rc`).
pub(super) struct Segments {
    dir: PathBuf,
    active: RefCell<Option<Active>>,
    /// Live extents per segment (committed messages and open spools).
    refs: RefCell<BTreeMap<u64, u64>>,
    dirty: RefCell<Vec<(u64, Arc<File>)>>,
    dir_dirty: Cell<bool>,
    /// Extents whose removal was applied to sled with write number `.0`: released once a sync
    /// covering that write completed (`durable_up_to`).
    after_sync: RefCell<Vec<(u64, u64, u64)>>,
}

impl Segments {
    /// `dir` is `<data_dir>/bodies`, created (and made durable) by the caller.
    pub(super) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            active: RefCell::new(None),
            refs: RefCell::new(BTreeMap::new()),
            dirty: RefCell::new(Vec::new()),
            dir_dirty: Cell::new(false),
            after_sync: RefCell::new(Vec::new()),
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn path(&self, seg: u64) -> PathBuf {
        segment_path(&self.dir, seg)
    }

    /// Replaces the reference counts (recovery rebuilds them from the `part/` records).
    pub(super) fn set_refs(&self, refs: BTreeMap<u64, u64>) {
        *self.refs.borrow_mut() = refs;
    }

    /// Appends `bytes` (≤ `MAX_EXTENT`) to the active segment, opening a new one (numbered by
    /// `fresh`) when there is none or this append would pass `SEGMENT_BYTES`. Counts the extent
    /// as live. Not durable until the next sync (`take_dirty`).
    pub(super) fn append(
        &self,
        bytes: &[u8],
        fresh: impl FnOnce() -> io::Result<u64>,
    ) -> io::Result<Extent> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "extent too long"))?;
        let mut active = self.active.borrow_mut();
        let full = active
            .as_ref()
            .is_some_and(|a| a.len > 0 && a.len + u64::from(len) > SEGMENT_BYTES);
        if full {
            if let Some(old) = active.take() {
                self.release_if_unused(old.seg, None);
            }
        }
        if active.is_none() {
            let seg = fresh()?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(self.path(seg))?;
            self.dir_dirty.set(true);
            *active = Some(Active {
                seg,
                file: Arc::new(file),
                len: 0,
            });
        }
        let Some(a) = active.as_mut() else {
            return Err(io::Error::other("no active segment")); // set just above
        };
        a.file.write_all_at(bytes, a.len)?;
        let extent = Extent {
            seg: a.seg,
            offset: a.len,
            len,
        };
        a.len += u64::from(len);
        *self.refs.borrow_mut().entry(a.seg).or_insert(0) += 1;
        let mut dirty = self.dirty.borrow_mut();
        if !dirty.iter().any(|(seg, _)| *seg == a.seg) {
            dirty.push((a.seg, Arc::clone(&a.file)));
        }
        Ok(extent)
    }

    /// Everything written since the last call: the sync about to start makes it durable.
    pub(super) fn take_dirty(&self) -> DirtySegments {
        DirtySegments {
            files: std::mem::take(&mut *self.dirty.borrow_mut()),
            dir: self.dir_dirty.replace(false).then(|| self.dir.clone()),
        }
    }

    /// A sync failed: what it should have made durable goes back for the next one.
    pub(super) fn restore_dirty(&self, failed: DirtySegments) {
        let mut dirty = self.dirty.borrow_mut();
        for (seg, file) in failed.files {
            if !dirty.iter().any(|(s, _)| *s == seg) {
                dirty.push((seg, file));
            }
        }
        if failed.dir.is_some() {
            self.dir_dirty.set(true);
        }
    }

    /// `count` extents in segment `seg` are gone (their removal is durable, or they belonged to
    /// a spool never committed). Unlinks the segment when nothing points into it any more and
    /// it is not the one being appended to.
    pub(super) fn release(&self, seg: u64, count: u64) {
        {
            let mut refs = self.refs.borrow_mut();
            if let Some(n) = refs.get_mut(&seg) {
                *n = n.saturating_sub(count);
            }
        }
        let active = self.active.borrow();
        self.release_if_unused(seg, active.as_ref().map(|a| a.seg));
    }

    /// `count` extents in `seg` were removed by write number `seq`, not yet durable: they are
    /// released once a sync covers `seq`.
    pub(super) fn release_after(&self, seq: u64, seg: u64, count: u64) {
        self.after_sync.borrow_mut().push((seq, seg, count));
    }

    /// A sync covering every write numbered ≤ `covers` completed.
    pub(super) fn durable_up_to(&self, covers: u64) {
        let ready: Vec<(u64, u64, u64)> = {
            let mut pending = self.after_sync.borrow_mut();
            let (ready, later) = pending.drain(..).partition(|(seq, _, _)| *seq <= covers);
            *pending = later;
            ready
        };
        for (_, seg, count) in ready {
            self.release(seg, count);
        }
    }

    fn release_if_unused(&self, seg: u64, active: Option<u64>) {
        if active == Some(seg) {
            return;
        }
        let mut refs = self.refs.borrow_mut();
        if refs.get(&seg).copied().unwrap_or(0) > 0 {
            return;
        }
        refs.remove(&seg);
        match std::fs::remove_file(self.path(seg)) {
            Ok(()) => log::debug!("store: body segment {seg:016X} removed"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Left behind, it is an orphan `recover` deletes at the next start.
            Err(e) => log::error!("store: body segment {seg:016X} not removed: {e}"),
        }
    }
}

/// Counts one more extent in `seg` into `counts` (segment, extents), the tally a spool and a
/// removal hand to `release`/`release_after`. A body's pieces are appended in order, so one
/// segment's extents are contiguous and the list stays a handful of entries.
pub(super) fn count_extent(counts: &mut Vec<(u64, u64)>, seg: u64) {
    match counts.last_mut() {
        Some((s, n)) if *s == seg => *n += 1,
        _ => counts.push((seg, 1)),
    }
}

pub(super) fn segment_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:016X}"))
}

/// The segment number a file name in `bodies/` stands for.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    if name.len() != 16 {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

/// Reads extents one after the other, keeping the last segment file open.
pub(super) struct ExtentReader {
    dir: PathBuf,
    open: Option<(u64, File)>,
}

impl ExtentReader {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self { dir, open: None }
    }

    /// The extent's bytes; `UnexpectedEof` when the segment is shorter than the record says.
    pub(super) fn read(&mut self, extent: &Extent) -> io::Result<Vec<u8>> {
        let file = match &mut self.open {
            Some((seg, file)) if *seg == extent.seg => file,
            slot => {
                let file = File::open(segment_path(&self.dir, extent.seg))?;
                &mut slot.insert((extent.seg, file)).1
            }
        };
        let len = usize::try_from(extent.len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "extent too long"))?;
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, extent.offset)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_records_round_trip_and_reject_junk() {
        let e = Extent {
            seg: 0x0102_0304_0506_0708,
            offset: u64::MAX - 1,
            len: 32 * 1024,
        };
        assert_eq!(Extent::decode(&e.encode()), Ok(e));
        assert!(Extent::decode(&e.encode()[..20]).is_err());
        let mut bad = e.encode();
        bad[0] = 9;
        assert!(Extent::decode(&bad).is_err());
    }

    #[test]
    fn segment_names_round_trip() {
        let dir = Path::new("bodies");
        let path = segment_path(dir, 0xAB);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap();
        assert_eq!(parse_segment_name(name), Some(0xAB));
        assert_eq!(parse_segment_name("00AB"), None);
        assert_eq!(parse_segment_name("zzzzzzzzzzzzzzzz"), None);
    }
}
