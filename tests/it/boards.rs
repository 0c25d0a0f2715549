//! boards/: one file per supported board, each a complete config that `outpost check-config`
//! accepts, all carrying the same `# board.KEY = value` fields (which `.ci/boards.sh` reads for
//! the targets to build and test, so the docs and CI cannot drift apart), and naming service
//! files that exist.

use std::path::{Path, PathBuf};

use crate::util::{run_command, OUTPOST};

/// The metadata every board file carries, in this order.
const FIELDS: &[&str] = &[
    "board.target",
    "board.also",
    "board.ram",
    "board.flash",
    "board.service",
    "board.uplink_hook",
];

/// The targets outpost is built and tested for (.cargo/config.toml, cross.toml, .ci/boards.sh).
/// In a board file a gnu target carries its glibc floor as cargo-zigbuild spells it
/// (`armv7-unknown-linux-gnueabihf.2.31`): CI links against that glibc and checks the result.
const TARGETS: &[&str] = &[
    "aarch64-unknown-linux-gnu",
    "armv7-unknown-linux-gnueabihf",
    "aarch64-unknown-linux-musl",
    "arm-unknown-linux-musleabihf",
];

/// Config keys a board file sets itself rather than leaving to the defaults.
const TUNED: &[&str] = &[
    "data_dir",
    "listen",
    "relay_from",
    "max_connections",
    "[queue]",
    "max_bytes",
    "[store]",
    "cache_bytes",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn board_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("boards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// The `# board.KEY = value` lines, in file order.
fn metadata(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# board."))
        .filter_map(|rest| rest.split_once('='))
        .map(|(k, v)| (format!("board.{}", k.trim()), v.trim().to_owned()))
        .collect()
}

/// A supported target; a gnu one must name its glibc floor (`….2.31`), a musl one must not.
fn known_target(spec: &str) -> bool {
    let (triple, floor) = spec.split_once('.').unwrap_or((spec, ""));
    let floor_ok = if triple.ends_with("-gnu") || triple.ends_with("-gnueabihf") {
        floor.split('.').count() == 2 && floor.split('.').all(|n| n.parse::<u8>().is_ok())
    } else {
        floor.is_empty()
    };
    TARGETS.contains(&triple) && floor_ok
}

/// Paths under `boards/` that a value mentions (`procd (boards/openwrt/outpost.init)`).
fn mentioned_files(value: &str) -> Vec<&str> {
    value
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .filter(|w| w.starts_with("boards/"))
        .collect()
}

#[test]
fn the_supported_boards_have_files() {
    let names: Vec<String> = board_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for board in [
        "raspberry-pi-64.toml",
        "raspberry-pi-32.toml",
        "openwrt-aarch64.toml",
        "raspberry-pi-zero.toml",
    ] {
        assert!(
            names.iter().any(|n| n == board),
            "{board} missing: {names:?}"
        );
    }
}

#[test]
fn every_board_file_passes_check_config() {
    for file in board_files() {
        let path = file.to_string_lossy().into_owned();
        let run = run_command(OUTPOST.as_ref(), &["check-config", "--config", &path], b"");
        assert_eq!(run.code, Some(0), "{path}: {run}");
        assert!(run.stdout.contains(": ok"), "{path}: {run}");
    }
}

#[test]
fn every_board_file_has_the_same_fields_and_names_real_files() {
    for file in board_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.display();
        let meta = metadata(&text);
        let keys: Vec<&str> = meta.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, FIELDS, "{name}: board fields");
        let value = |key: &str| &meta.iter().find(|(k, _)| k == key).unwrap().1;
        let target = value("board.target");
        assert!(known_target(target), "{name}: board.target {target}");
        for also in value("board.also").split_whitespace() {
            assert!(
                also == "none" || known_target(also),
                "{name}: board.also is `none` or targets, not {also}"
            );
        }
        for key in ["board.service", "board.uplink_hook"] {
            for path in mentioned_files(value(key)) {
                assert!(repo().join(path).is_file(), "{name}: {key} names {path}");
            }
        }
        assert!(
            !mentioned_files(value("board.service")).is_empty(),
            "{name}: board.service names no file"
        );
        for key in TUNED {
            assert!(
                text.lines().any(|l| l.starts_with(key)),
                "{name}: does not set {key}"
            );
        }
    }
}
