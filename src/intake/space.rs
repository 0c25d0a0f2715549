//! Free space in `data_dir`: below a reserve, new mail gets 452 4.3.1 before sled runs into
//! ENOSPC. sled refuses every write after one I/O error (0.34 `Config::global_error`), so a
//! full disk met head-on means a restart; the reserve keeps that the exception. Reads the
//! filesystem's counters only; never writes.

use std::path::Path;

/// Space kept free for sled: twice the largest message (sled's log writes a message's bytes
/// more than once before compaction), and at least 1 MiB.
pub(super) fn reserve(max_message_size: u64) -> u64 {
    max_message_size.saturating_mul(2).max(1 << 20)
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`; `None` when
/// unknown (the check is then skipped).
#[cfg(target_os = "linux")]
pub(super) fn available(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(not(target_os = "linux"))]
pub(super) fn available(_dir: &Path) -> Option<u64> {
    None
}
