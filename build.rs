//! Build script: the git commit in `--version`, and link flags for release binaries.
//!
//! Built from a git checkout, `outpost --version` names the commit: `OUTPOST_GIT_COMMIT` is set
//! to `git rev-parse --short=12 HEAD`, and the script runs again when HEAD or the branch it
//! points at moves (uncommitted edits are not marked: watching the work tree would rerun the
//! script at every build). Without a `.git` next to Cargo.toml (a source tarball, a crate
//! download) or without git, the variable is not set and the version is the crate's alone; a
//! parent directory's repository is never consulted.
//!
//! A release build aborts on panic (`panic = "abort"`), so nothing in it ever unwinds: the unwind
//! tables are dead weight. Release binaries for Linux leave out the `.eh_frame_hdr` index
//! (`PT_GNU_EH_FRAME`, about 74 KB of the aarch64 musl binary); the static musl builds, which are
//! held to the 2.5 MB budget, also leave out `.eh_frame` itself and the landing-pad tables
//! (`.gcc_except_table`), about 290 KB, through a linker script that augments the default one
//! (`INSERT`) with a `/DISCARD/` rule. The C runtime's own start and end objects keep their
//! frames (their `.text` refers to them). Debug builds and test binaries, which unwind to report
//! a failing test, keep everything. A panic still prints its message; a backtrace printed at a
//! panic (`RUST_BACKTRACE=1`) has no frames.

use std::path::{Path, PathBuf};
use std::process::Command;

const DISCARD_UNWIND_TABLES: &str = "\
SECTIONS
{
  /DISCARD/ : {
    *(EXCLUDE_FILE(*crtbegin*.o *crtend*.o) .eh_frame)
    *(.gcc_except_table .gcc_except_table.*)
  }
}
INSERT BEFORE .text;
";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    git_commit();
    let env = |key: &str| std::env::var(key).unwrap_or_default();
    let release = env("PROFILE") == "release";
    let linux = env("CARGO_CFG_TARGET_OS") == "linux";
    if release && linux {
        println!("cargo:rustc-link-arg-bins=-Wl,--no-eh-frame-hdr");
    }
    if release && linux && env("CARGO_CFG_TARGET_ENV") == "musl" {
        let script = PathBuf::from(env("OUT_DIR")).join("discard-unwind-tables.ld");
        if std::fs::write(&script, DISCARD_UNWIND_TABLES).is_ok() {
            println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
        }
    }
}

/// `git ARGS` in the crate's directory: its trimmed stdout, or `None` if git fails or is absent.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| text.trim().to_owned())
}

fn git_commit() {
    let Some(root) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let root = Path::new(&root);
    // `.git` is a directory in a clone, a file in a worktree.
    if !root.join(".git").exists() {
        return;
    }
    let Some(commit) = git(root, &["rev-parse", "--short=12", "HEAD"]) else {
        return;
    };
    // Run again when HEAD moves: HEAD itself (a checkout), the branch's ref file (a commit) and
    // packed-refs. Only existing paths: cargo treats a missing one as always changed.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(root, &["rev-parse", "--git-path", &name]) {
            let path = root.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    println!("cargo:rustc-env=OUTPOST_GIT_COMMIT={commit}");
}
