//! Body files: message bodies live outside sled, appended to files `<dir>/bodies/<num>` (`num` =
//! 16 hex digits from sled's `generate_id`, the body file number); sled keeps one small
//! `part/<id>/<n>` record per appended piece (`Extent`, `extent.rs`: body file, offset,
//! length). Owns the body files: their creation, the appends, which ones the next group flush
//! must `fdatasync`, and their removal once no extent points into them. Never writes sled (the
//! caller stores the extents) and never syncs by itself (`flush.rs` does, before sled's flush).
//!
//! Why not sled values: every body chunk in a sled leaf is rewritten whenever the leaf is
//! consolidated or split, and sled's io buffers hold it again, so a body would be written to
//! disk many times over and held in memory while it waits. Appended once to a file, a body is
//! written once. Why body files shared by many messages rather than one file per message: a
//! 1 KiB body alone in a file still dirties a whole 4 KiB page (and a directory entry and an
//! inode per message), while appends from one group commit share their pages.
//!
//! Durability: an append only reaches the page cache. `take_dirty` hands the group flush every
//! body file written since the previous sync started, plus whether `bodies/` gained an entry;
//! the flush `fdatasync`s them, then the directory, then flushes sled and `fdatasync`s its log,
//! so a durable `part/` record never points at body bytes that were not durable first. A body
//! file is unlinked only after the removal of its last extent was made durable (or at recovery,
//! when no record points into it): a crash then leaves at worst an orphan file, which `recover`
//! deletes, or keeps aside when its journal (`journal.rs`) says it may still hold mail.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::extent::Extent;
use super::journal;
use super::private::FILE_MODE;
use super::QueueId;

/// A body file is closed once an append would take it past this size. A body file stays on disk
/// while any message in it is queued, so this bounds what one long-queued message can pin
/// (besides its own body); bigger body files mean fewer files and directory syncs.
pub const BODY_FILE_BYTES: u64 = 1024 * 1024;

/// The body file being appended to.
struct Active {
    num: u64,
    file: Arc<File>,
    len: u64,
}

/// What one sync must make durable before sled's flush.
#[derive(Default)]
pub(super) struct DirtyBodyFiles {
    /// Body files appended to (number, handle).
    pub(super) files: Vec<(u64, Arc<File>)>,
    /// `bodies/` gained an entry: fsync the directory too.
    pub(super) dir: Option<PathBuf>,
}

/// Single-threaded state of the body files (lives in the store's `Rc`).
pub(super) struct BodyFiles {
    dir: PathBuf,
    active: RefCell<Option<Active>>,
    /// Live extents per body file (committed messages and open spools).
    refs: RefCell<BTreeMap<u64, u64>>,
    dirty: RefCell<Vec<(u64, Arc<File>)>>,
    dir_dirty: Cell<bool>,
    /// Extents whose removal was applied to sled with write number `.0`: released once a sync
    /// covering that write completed (`durable_up_to`).
    after_sync: RefCell<Vec<(u64, u64, u64)>>,
    /// Body files numbered below this are never unlinked, even once nothing points into them:
    /// a pass over the journal (`rebuild.rs`) may still read a message sled lacks from them.
    pinned_below: Cell<u64>,
}

impl BodyFiles {
    /// `dir` is `<data_dir>/bodies`, created (and made durable) by the caller.
    pub(super) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            active: RefCell::new(None),
            refs: RefCell::new(BTreeMap::new()),
            dirty: RefCell::new(Vec::new()),
            dir_dirty: Cell::new(false),
            after_sync: RefCell::new(Vec::new()),
            pinned_below: Cell::new(0),
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn path(&self, num: u64) -> PathBuf {
        body_file_path(&self.dir, num)
    }

    /// Replaces the reference counts (recovery rebuilds them from the `part/` records).
    pub(super) fn set_refs(&self, refs: BTreeMap<u64, u64>) {
        *self.refs.borrow_mut() = refs;
    }

    /// Appends `piece` (≤ `MAX_EXTENT`) of message `id`'s body as a journal record
    /// (`journal.rs`) to the active body file, opening a new one (numbered by `fresh`) when
    /// there is none or this append would pass `BODY_FILE_BYTES`. Counts the extent as live.
    /// Not durable until the next sync (`take_dirty`).
    pub(super) fn append(
        &self,
        id: QueueId,
        piece: &[u8],
        fresh: impl Fn() -> io::Result<u64>,
    ) -> io::Result<Extent> {
        let len = u32::try_from(piece.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "extent too long"))?;
        let record = journal::frame(journal::PIECE, id, piece);
        let mut active = self.active.borrow_mut();
        let full = active
            .as_ref()
            .is_some_and(|a| a.len > 0 && a.len + record.len() as u64 > BODY_FILE_BYTES);
        if full {
            if let Some(old) = active.take() {
                self.release_if_unused(old.num, None);
            }
        }
        if active.is_none() {
            *active = Some(self.create(fresh)?);
        }
        let Some(a) = active.as_mut() else {
            return Err(io::Error::other("no active body file")); // set just above
        };
        a.file.write_all_at(&record, a.len)?;
        let extent = Extent {
            file: a.num,
            offset: a.len + journal::HEADER as u64,
            len,
            framed: true,
        };
        a.len += record.len() as u64;
        *self.refs.borrow_mut().entry(a.num).or_insert(0) += 1;
        self.mark_dirty(a.num, &a.file);
        Ok(extent)
    }

    /// A new body file, numbered by `fresh` (a number already taken, after a database lost its
    /// id counter, is skipped).
    fn create(&self, fresh: impl Fn() -> io::Result<u64>) -> io::Result<Active> {
        let mut tries = 0;
        loop {
            let num = fresh()?;
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(self.path(num));
            match opened {
                Ok(file) => {
                    self.dir_dirty.set(true);
                    return Ok(Active {
                        num,
                        file: Arc::new(file),
                        len: 0,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 64 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Appends a journal record (an envelope, a done mark) to body file `num`, the one holding
    /// the message's last piece, so that the record lives and goes with that file. Rides the
    /// next sync like any append.
    pub(super) fn append_record(&self, num: u64, record: &[u8]) -> io::Result<()> {
        let mut active = self.active.borrow_mut();
        if let Some(a) = active.as_mut().filter(|a| a.num == num) {
            a.file.write_all_at(record, a.len)?;
            a.len += record.len() as u64;
            self.mark_dirty(a.num, &a.file);
            return Ok(());
        }
        let mut file = OpenOptions::new().append(true).open(self.path(num))?;
        io::Write::write_all(&mut file, record)?;
        self.mark_dirty(num, &Arc::new(file));
        Ok(())
    }

    fn mark_dirty(&self, num: u64, file: &Arc<File>) {
        let mut dirty = self.dirty.borrow_mut();
        if !dirty.iter().any(|(n, _)| *n == num) {
            dirty.push((num, Arc::clone(file)));
        }
    }

    /// Everything written since the last call: the sync about to start makes it durable.
    pub(super) fn take_dirty(&self) -> DirtyBodyFiles {
        DirtyBodyFiles {
            files: std::mem::take(&mut *self.dirty.borrow_mut()),
            dir: self.dir_dirty.replace(false).then(|| self.dir.clone()),
        }
    }

    /// A sync failed: what it should have made durable goes back for the next one.
    pub(super) fn restore_dirty(&self, failed: DirtyBodyFiles) {
        let mut dirty = self.dirty.borrow_mut();
        for (num, file) in failed.files {
            if !dirty.iter().any(|(n, _)| *n == num) {
                dirty.push((num, file));
            }
        }
        if failed.dir.is_some() {
            self.dir_dirty.set(true);
        }
    }

    /// Live extents in body file `num`; `None` when no record of a queued message or open spool
    /// points into it (an orphan, or one emptied while pinned).
    pub(super) fn live(&self, num: u64) -> Option<u64> {
        self.refs.borrow().get(&num).copied()
    }

    /// Keeps every body file numbered below `num` on disk until `unpin` (see `pinned_below`).
    pub(super) fn pin_below(&self, num: u64) {
        self.pinned_below.set(num);
    }

    /// Ends `pin_below`: the pinned body files among `nums` that nothing points into any more
    /// (their last removal is durable: the caller synced) are unlinked.
    pub(super) fn unpin(&self, nums: &[u64]) {
        self.pinned_below.set(0);
        for &num in nums {
            if self.live(num) == Some(0) {
                self.release(num, 0);
            }
        }
    }

    /// Counts more live extents (a message rebuilt while running): (body file, extents).
    pub(super) fn add_refs(&self, counts: &[(u64, u64)]) {
        let mut refs = self.refs.borrow_mut();
        for (num, n) in counts {
            *refs.entry(*num).or_insert(0) += n;
        }
    }

    /// `count` extents in body file `num` are gone (their removal is durable, or they belonged
    /// to a spool never committed). Unlinks the body file when nothing points into it any more
    /// and it is not the one being appended to.
    pub(super) fn release(&self, num: u64, count: u64) {
        {
            let mut refs = self.refs.borrow_mut();
            if let Some(n) = refs.get_mut(&num) {
                *n = n.saturating_sub(count);
            }
        }
        let active = self.active.borrow();
        self.release_if_unused(num, active.as_ref().map(|a| a.num));
    }

    /// `count` extents in body file `num` were removed by write number `seq`, not yet durable:
    /// they are released once a sync covers `seq`. Joins the entry before when it is of the
    /// same body file (released at the later write's sync: later, never sooner), so a drain
    /// that removes thousands of messages between two syncs keeps about one entry per body
    /// file, not one per message.
    pub(super) fn release_after(&self, seq: u64, num: u64, count: u64) {
        let mut pending = self.after_sync.borrow_mut();
        match pending.last_mut() {
            Some((last_seq, last_num, n)) if *last_num == num => {
                *last_seq = (*last_seq).max(seq);
                *n += count;
            }
            _ => pending.push((seq, num, count)),
        }
    }

    /// A sync covering every write numbered ≤ `covers` completed.
    pub(super) fn durable_up_to(&self, covers: u64) {
        let ready: Vec<(u64, u64, u64)> = {
            let mut pending = self.after_sync.borrow_mut();
            let (ready, later) = pending.drain(..).partition(|(seq, _, _)| *seq <= covers);
            *pending = later;
            ready
        };
        for (_, num, count) in ready {
            self.release(num, count);
        }
    }

    fn release_if_unused(&self, num: u64, active: Option<u64>) {
        if active == Some(num) || num < self.pinned_below.get() {
            return;
        }
        let mut refs = self.refs.borrow_mut();
        if refs.get(&num).copied().unwrap_or(0) > 0 {
            return;
        }
        refs.remove(&num);
        match std::fs::remove_file(self.path(num)) {
            Ok(()) => log::debug!("store: body file {num:016X} removed"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Left behind, it is an orphan `recover` deletes at the next start.
            Err(e) => log::error!("store: body file {num:016X} not removed: {e}"),
        }
    }
}

pub(super) fn body_file_path(dir: &Path, num: u64) -> PathBuf {
    dir.join(format!("{num:016X}"))
}

/// The body file number a file name in `bodies/` stands for.
pub(super) fn parse_body_file_name(name: &str) -> Option<u64> {
    if name.len() != 16 {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

/// Reads extents one after the other, keeping the last body file open.
pub(super) struct ExtentReader {
    dir: PathBuf,
    open: Option<(u64, File)>,
}

impl ExtentReader {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self { dir, open: None }
    }

    /// The extent's bytes as stored, unchecked (to keep a damaged body aside).
    pub(super) fn read_unchecked(&mut self, extent: &Extent) -> io::Result<Vec<u8>> {
        let plain = Extent {
            framed: false,
            ..*extent
        };
        self.read(QueueId(0), &plain)
    }

    /// The extent's bytes; `UnexpectedEof` when the body file is shorter than the record says,
    /// `InvalidData` when a framed piece fails its checksum (or is not message `id`'s).
    pub(super) fn read(&mut self, id: QueueId, extent: &Extent) -> io::Result<Vec<u8>> {
        let file = match &mut self.open {
            Some((num, file)) if *num == extent.file => file,
            slot => {
                let file = File::open(body_file_path(&self.dir, extent.file))?;
                &mut slot.insert((extent.file, file)).1
            }
        };
        let len = usize::try_from(extent.len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "extent too long"))?;
        let header = if extent.framed { journal::HEADER } else { 0 };
        let mut buf = vec![0; header + len];
        let start = extent.offset.checked_sub(header as u64).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "framed extent at offset 0")
        })?;
        file.read_exact_at(&mut buf, start)?;
        if extent.framed {
            match journal::check(&buf) {
                Some((journal::PIECE, of, n)) if of == id && n == len => {}
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        CHECKSUM_MISMATCH,
                    ))
                }
            }
            buf.drain(..header);
        }
        Ok(buf)
    }
}

/// What a framed piece that fails its check reads as.
pub(super) const CHECKSUM_MISMATCH: &str = "body checksum mismatch";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_file_names_round_trip() {
        let dir = Path::new("bodies");
        let path = body_file_path(dir, 0xAB);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap();
        assert_eq!(parse_body_file_name(name), Some(0xAB));
        assert_eq!(parse_body_file_name("00AB"), None);
        assert_eq!(parse_body_file_name("zzzzzzzzzzzzzzzz"), None);
    }
}
