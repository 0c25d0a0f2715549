//! The daemon's logger: one line per record on stderr, `2026-01-31T12:00:00.123Z INFO  [target]
//! message` (UTC, milliseconds), sled held at warn unless tracing. The timestamp is humantime's
//! RFC 3339 formatter, which outpost already links for durations; a general-purpose logger
//! crate would bring the `time` crate along for the same line (about 60 KB of a board binary).

use std::fmt::Arguments;
use std::io::Write;
use std::time::SystemTime;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Logs `level` and above, and `sled` records at `sled_level` and above.
struct StderrLogger {
    level: LevelFilter,
    sled_level: LevelFilter,
}

impl StderrLogger {
    fn level_for(&self, target: &str) -> LevelFilter {
        let is_sled = target == "sled" || target.starts_with("sled::");
        if is_sled {
            self.sled_level
        } else {
            self.level
        }
    }
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let target = match record.target() {
                "" => record.module_path().unwrap_or_default(),
                target => target,
            };
            let line = format_line(SystemTime::now(), record.level(), target, *record.args());
            // One write per line, so lines from threads do not interleave; a closed stderr is
            // not a reason to stop relaying mail.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// One log line, newline included.
fn format_line(now: SystemTime, level: Level, target: &str, args: Arguments<'_>) -> String {
    format!(
        "{} {:<5} [{target}] {args}\n",
        humantime::format_rfc3339_millis(now),
        level.as_str()
    )
}

/// Installs the logger: records at `level` and above, sled's at `level` only when tracing
/// (sled is chatty below warn; its details matter only then).
pub fn init(level: LevelFilter) -> Result<(), log::SetLoggerError> {
    let sled_level = if level == LevelFilter::Trace {
        level
    } else {
        level.min(LevelFilter::Warn)
    };
    // Lives for the rest of the process, like any installed logger.
    log::set_logger(Box::leak(Box::new(StderrLogger { level, sled_level })))?;
    log::set_max_level(level);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn line_format_is_utc_millis_padded_level_target() {
        let at = UNIX_EPOCH + Duration::from_millis(1_780_000_000_123);
        let line = format_line(
            at,
            Level::Info,
            "outpost::net",
            format_args!("listening on {}", 25),
        );
        assert_eq!(
            line,
            "2026-05-28T20:26:40.123Z INFO  [outpost::net] listening on 25\n"
        );
        let line = format_line(UNIX_EPOCH, Level::Error, "x", format_args!("boom"));
        assert_eq!(line, "1970-01-01T00:00:00.000Z ERROR [x] boom\n");
    }

    #[test]
    fn sled_is_held_at_warn_unless_tracing() {
        let logger = StderrLogger {
            level: LevelFilter::Debug,
            sled_level: LevelFilter::Warn,
        };
        let meta = |level, target| Metadata::builder().level(level).target(target).build();
        assert!(logger.enabled(&meta(Level::Debug, "outpost::net::conn")));
        assert!(!logger.enabled(&meta(Level::Trace, "outpost::net::conn")));
        assert!(!logger.enabled(&meta(Level::Info, "sled::pagecache")));
        assert!(logger.enabled(&meta(Level::Warn, "sled::pagecache")));
        assert!(logger.enabled(&meta(Level::Info, "sledgehammer")));
    }
}
