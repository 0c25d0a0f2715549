//! The queue is private whatever the umask: the data directory is created 0700, body files
//! 0600, and at every open the directory, sled's files and the body files are checked and
//! tightened (directories to 0700, files to 0600), with one WARN naming what was loosened. The
//! data directory keeps search (`x`) bits an administrator gave a group so that `sendmail`
//! callers reach `data_dir/maildrop` (search lets them open names they know, never list or read
//! the 0600 files). The maildrop directory (with modes of its own) and sockets are left alone.
//! Touches modes only, never contents.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of the data directory and every directory in it.
pub(super) const DIR_MODE: u32 = 0o700;
/// Mode of every file in the data directory (the umask can only narrow it).
pub(super) const FILE_MODE: u32 = 0o600;
/// `data_dir/maildrop`: written by `sendmail` callers; its modes are the pickup's concern.
const MAILDROP: &str = "maildrop";
/// Levels of directories below the data directory that are checked (sled's `blobs/`, the
/// `bodies/` directory).
const DEPTH: usize = 2;

/// Creates `dir` (and missing parents) with mode 0700, whatever the umask allows beyond it.
pub fn create_data_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// What `tighten` changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Tightened {
    pub(super) dirs: usize,
    pub(super) files: usize,
    /// Group or others had some access to the data directory itself, so what was loose in it
    /// could be reached (inside a 0700 directory a 0644 file is out of everyone's reach).
    pub(super) reachable: bool,
}

/// Takes read and write for group and others from `dir`, and sets everything in it (but the
/// maildrop and sockets) to 0700 / 0600 where group or others had any access.
pub(super) fn tighten(dir: &Path) -> io::Result<Tightened> {
    let mut done = Tightened::default();
    let current = fs::metadata(dir)?.permissions().mode();
    done.reachable = current & 0o077 != 0;
    // Read and write for group and others go; search stays (see the module doc).
    if current & 0o066 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(current & 0o7711))?;
        done.dirs = 1;
    }
    walk(dir, DEPTH, &mut done)?;
    Ok(done)
}

fn walk(dir: &Path, depth: usize, done: &mut Tightened) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if depth == DEPTH && entry.file_name() == MAILDROP {
            continue;
        }
        // Not followed: a symbolic link's target is not the queue's to change.
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            tighten_entry(&path, DIR_MODE, &mut done.dirs)?;
            if depth > 0 {
                walk(&path, depth - 1, done)?;
            }
        } else if kind.is_file() {
            tighten_entry(&path, FILE_MODE, &mut done.files)?;
        }
    }
    Ok(())
}

/// Sets `path` to `mode` when group or others have any access; counts it in `count`.
fn tighten_entry(path: &Path, mode: u32, count: &mut usize) -> io::Result<()> {
    let current = fs::symlink_metadata(path)?.permissions().mode();
    if current & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        *count = count.saturating_add(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
