//! Build script: link flags for release binaries only.
//!
//! A release build aborts on panic (`panic = "abort"`), so nothing in it ever unwinds: the
//! `.eh_frame_hdr` index that speeds up unwinding (`PT_GNU_EH_FRAME`) is dead weight, about
//! 74 KB of the aarch64 musl binary's 2.5 MB budget. It is left out of the `outpost` binary in
//! release builds; debug builds and test binaries, which unwind to report a failing test, keep it.
//! A backtrace printed at a panic (`RUST_BACKTRACE=1`) then has fewer frames.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if release && linux {
        println!("cargo:rustc-link-arg-bins=-Wl,--no-eh-frame-hdr");
    }
}
