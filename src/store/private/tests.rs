//! Tightening: loose modes become 0700 / 0600, private ones and the maildrop are untouched.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{create_data_dir, tighten, Tightened};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn set(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn loose_modes_are_tightened_and_the_maildrop_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    create_data_dir(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    fs::create_dir_all(dir.join("bodies")).unwrap();
    fs::create_dir_all(dir.join("maildrop")).unwrap();
    fs::write(dir.join("db"), b"x").unwrap();
    fs::write(dir.join("bodies/0000000000000001"), b"x").unwrap();
    fs::write(dir.join("maildrop/1.msg"), b"x").unwrap();
    set(&dir, 0o755);
    set(&dir.join("bodies"), 0o775);
    set(&dir.join("maildrop"), 0o1733);
    set(&dir.join("db"), 0o644);
    set(&dir.join("bodies/0000000000000001"), 0o666);
    set(&dir.join("maildrop/1.msg"), 0o644);
    assert_eq!(counts(tighten(&dir).unwrap()), (2, 2, true));
    // Search stays for the maildrop's callers; read and write go.
    assert_eq!(mode(&dir), 0o711);
    assert_eq!(mode(&dir.join("bodies")), 0o700);
    assert_eq!(mode(&dir.join("db")), 0o600);
    assert_eq!(mode(&dir.join("bodies/0000000000000001")), 0o600);
    assert_eq!(mode(&dir.join("maildrop")), 0o1733);
    assert_eq!(mode(&dir.join("maildrop/1.msg")), 0o644);
    // Private already: nothing to do.
    assert_eq!(counts(tighten(&dir).unwrap()), (0, 0, true));
    // A group that may traverse to the maildrop keeps that, and only that.
    set(&dir, 0o775);
    assert_eq!(counts(tighten(&dir).unwrap()), (1, 0, true));
    assert_eq!(mode(&dir), 0o711);
    set(&dir, 0o710);
    assert_eq!(counts(tighten(&dir).unwrap()), (0, 0, true));
    // A file created loose inside a 0700 directory (sled under umask 022) is tightened, and
    // was out of everyone else's reach: nothing to warn about.
    set(&dir, 0o700);
    set(&dir.join("db"), 0o644);
    assert_eq!(counts(tighten(&dir).unwrap()), (0, 1, false));
    assert_eq!(mode(&dir.join("db")), 0o600);
}

fn counts(done: Tightened) -> (usize, usize, bool) {
    (done.dirs, done.files, done.reachable)
}
