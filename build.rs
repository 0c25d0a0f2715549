//! Build script: link flags for release binaries only.
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

use std::path::PathBuf;

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
