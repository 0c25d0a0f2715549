//! Where log lines go, in the form the system around the daemon reads them.
//!
//! - **stderr** (a terminal, the default): simple_logger's lines with a UTC timestamp.
//! - **journal** (under systemd: `JOURNAL_STREAM` names our stderr, or `log = "journal"`): each
//!   line starts with its sd-daemon(3) priority (`<3>` error … `<7>` debug) and carries no
//!   timestamp of its own; journald adds one, and `journalctl -p err` then works.
//! - **syslog** (`log = "syslog"`: BusyBox syslogd, OpenWrt's logd): one RFC 3164 datagram per
//!   line to `/dev/log`, `<PRI>outpost[PID]: message`, facility mail as other MTAs use, so
//!   the severity survives (procd would log all of stderr at `daemon.err`). The environment
//!   variable `OUTPOST_SYSLOG_SOCKET` names another socket (for tests and unusual systems).
//!
//! Owns nothing else: levels come from the caller (`OUTPOST_LOG`). Never fails the daemon: a
//! line that cannot be written is dropped or goes to stderr.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::str::FromStr;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// syslog(3) facility `LOG_MAIL`.
const FACILITY_MAIL: u8 = 2;
/// A datagram longer than this is cut (BusyBox syslogd reads at most about 1 KiB; RFC 3164 §4.1
/// says 1024 octets).
const MAX_DATAGRAM: usize = 1024;
/// The syslog socket, unless `SYSLOG_SOCKET_ENV` names another.
const SYSLOG_SOCKET: &str = "/dev/log";
/// The environment variable that overrides `SYSLOG_SOCKET`.
pub const SYSLOG_SOCKET_ENV: &str = "OUTPOST_SYSLOG_SOCKET";

/// The `log` config key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogTarget {
    /// The journal when `JOURNAL_STREAM` names our stderr, else stderr with timestamps.
    #[default]
    Auto,
    Stderr,
    Journal,
    Syslog,
}

impl FromStr for LogTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "stderr" => Ok(Self::Stderr),
            "journal" => Ok(Self::Journal),
            "syslog" => Ok(Self::Syslog),
            other => Err(format!(
                "{other:?} is not one of \"auto\", \"stderr\", \"journal\", \"syslog\""
            )),
        }
    }
}

impl LogTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Stderr => "stderr",
            Self::Journal => "journal",
            Self::Syslog => "syslog",
        }
    }
}

/// sd-daemon(3) / syslog(3) severity of a `log` level.
pub fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// True when systemd connected our stderr to the journal: `JOURNAL_STREAM` is `DEV:INODE` of
/// the stream it set up, which a redirected stderr (a child with `2>file`) no longer matches.
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    // The field types differ between targets (u64 on most, narrower on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    let (dev, ino) = (u64::from(stat.st_dev), u64::from(stat.st_ino));
    journal_stream_matches(&value, dev, ino)
}

fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// Installs the logger for `target` at `level` (sled is held at warn unless tracing). Returns
/// the target actually in use (a syslog socket that cannot be reached falls back to stderr).
pub fn init(target: LogTarget, level: LevelFilter) -> LogTarget {
    let target = match target {
        LogTarget::Auto if stderr_is_journal() => LogTarget::Journal,
        LogTarget::Auto => LogTarget::Stderr,
        other => other,
    };
    let sled = if level == LevelFilter::Trace {
        level
    } else {
        level.min(LevelFilter::Warn)
    };
    let installed = match target {
        LogTarget::Journal => install(Line::journal(level, sled)),
        LogTarget::Syslog => match UnixDatagram::unbound() {
            Ok(socket) => install(Line::syslog(level, sled, socket, syslog_socket())),
            Err(e) => {
                eprintln!("outpost: no syslog socket ({e}); logging to stderr");
                return init(LogTarget::Stderr, level);
            }
        },
        LogTarget::Stderr | LogTarget::Auto => simple_logger::SimpleLogger::new()
            .with_level(level)
            .with_module_level("sled", sled)
            .with_utc_timestamps()
            .init()
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = installed {
        eprintln!("outpost: cannot set up logging: {e}");
    }
    target
}

/// `/dev/log`, or the path in `OUTPOST_SYSLOG_SOCKET`.
fn syslog_socket() -> PathBuf {
    std::env::var_os(SYSLOG_SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(SYSLOG_SOCKET), PathBuf::from)
}

fn install(logger: Line) -> Result<(), String> {
    let max = logger.level.max(logger.sled);
    log::set_boxed_logger(Box::new(logger)).map_err(|e| e.to_string())?;
    log::set_max_level(max);
    Ok(())
}

/// The journal and syslog loggers: one formatted line per record.
struct Line {
    level: LevelFilter,
    sled: LevelFilter,
    sink: Sink,
}

enum Sink {
    Journal,
    Syslog {
        socket: UnixDatagram,
        path: PathBuf,
        pid: u32,
    },
}

impl Line {
    fn journal(level: LevelFilter, sled: LevelFilter) -> Self {
        Self {
            level,
            sled,
            sink: Sink::Journal,
        }
    }

    fn syslog(level: LevelFilter, sled: LevelFilter, socket: UnixDatagram, path: PathBuf) -> Self {
        Self {
            level,
            sled,
            sink: Sink::Syslog {
                socket,
                path,
                pid: std::process::id(),
            },
        }
    }
}

impl Log for Line {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let limit = if metadata.target().starts_with("sled") {
            self.sled
        } else {
            self.level
        };
        metadata.level() <= limit
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match &self.sink {
            Sink::Journal => {
                let line = journal_line(record.level(), &record.args().to_string());
                // Nowhere to report a failed write to stderr.
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Syslog { socket, path, pid } => {
                let datagram = syslog_datagram(record.level(), *pid, &record.args().to_string());
                if socket.send_to(&datagram, path).is_err() {
                    // syslogd restarting: the line still reaches whoever reads stderr.
                    let line = journal_line(record.level(), &record.args().to_string());
                    let _ = std::io::stderr().lock().write_all(line.as_bytes());
                }
            }
        }
    }

    fn flush(&self) {}
}

/// `<N>message\n`, one line per record (a multi-line message keeps its prefix on each line,
/// so the journal files every line at the same priority).
pub fn journal_line(level: Level, message: &str) -> String {
    let prefix = format!("<{}>", severity(level));
    let mut out = String::with_capacity(message.len() + 4);
    for line in message.lines() {
        out.push_str(&prefix);
        out.push_str(line);
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str(&prefix);
        out.push('\n');
    }
    out
}

/// RFC 3164 §4.1 without the timestamp and host (syslogd adds both, as for syslog(3)):
/// `<PRI>outpost[PID]: message`, control characters replaced, at most `MAX_DATAGRAM` octets.
pub fn syslog_datagram(level: Level, pid: u32, message: &str) -> Vec<u8> {
    let pri = u16::from(FACILITY_MAIL) * 8 + u16::from(severity(level));
    let mut out = format!("<{pri}>outpost[{pid}]: ").into_bytes();
    for c in message.chars() {
        let c = if c.is_control() { ' ' } else { c };
        let mut buf = [0u8; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        if out.len() + bytes.len() > MAX_DATAGRAM {
            break;
        }
        out.extend_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_the_sd_daemon_priority() {
        assert_eq!(journal_line(Level::Error, "disk full"), "<3>disk full\n");
        assert_eq!(journal_line(Level::Warn, "w"), "<4>w\n");
        assert_eq!(journal_line(Level::Info, "i"), "<6>i\n");
        assert_eq!(journal_line(Level::Debug, "d"), "<7>d\n");
        assert_eq!(journal_line(Level::Trace, "a\nb"), "<7>a\n<7>b\n");
    }

    #[test]
    fn syslog_datagrams_have_facility_mail_and_the_severity() {
        let d = syslog_datagram(Level::Error, 42, "cannot reach\nthe smarthost");
        assert_eq!(d, b"<19>outpost[42]: cannot reach the smarthost");
        let d = syslog_datagram(Level::Info, 7, "queued");
        assert_eq!(d, b"<22>outpost[7]: queued");
        let long = "x".repeat(5000);
        assert_eq!(syslog_datagram(Level::Info, 1, &long).len(), MAX_DATAGRAM);
    }

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 1));
        assert!(!journal_stream_matches("garbage", 8, 12345));
    }

    #[test]
    fn log_target_names() {
        for t in [
            LogTarget::Auto,
            LogTarget::Stderr,
            LogTarget::Journal,
            LogTarget::Syslog,
        ] {
            assert_eq!(t.as_str().parse::<LogTarget>(), Ok(t));
        }
        assert!("file".parse::<LogTarget>().is_err());
    }
}
