//! The systemd notification protocol (sd_notify(3)) without libsystemd: datagrams of
//! `KEY=VALUE` lines to the Unix socket named by `NOTIFY_SOCKET` (a path, or `@name` for an
//! abstract socket).
//!
//! Without `NOTIFY_SOCKET` (not under systemd, or `Type=` other than notify) every call does
//! nothing. A failed send is never an error for the daemon: it keeps serving.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to the service manager, if there is one.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half of `WATCHDOG_USEC`, when the unit asks for keep-alives.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (honouring `WATCHDOG_PID` when set).
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let target = socket.and_then(|s| {
            let addr = address(s.to_str()?).ok()?;
            let sock = UnixDatagram::unbound().ok()?;
            Some((sock, addr))
        });
        let pid_matches = std::env::var("WATCHDOG_PID")
            .map_or(true, |p| p.trim().parse() == Ok(std::process::id()));
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && pid_matches)
            .map(|usec| Duration::from_micros(usec / 2));
        Self { target, watchdog }
    }

    /// A notifier that sends nothing.
    pub fn none() -> Self {
        Self {
            target: None,
            watchdog: None,
        }
    }

    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1`, if the unit has `WatchdogSec=`.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines).
    pub fn send(&self, state: &str) -> io::Result<()> {
        match &self.target {
            Some((socket, addr)) => socket.send_to_addr(state.as_bytes(), addr).map(drop),
            None => Ok(()),
        }
    }

    /// `send`, with a failure logged at debug: the daemon never stops for it.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.send(state) {
            log::debug!("sd_notify {state:?}: {e}");
        }
    }
}

/// `NOTIFY_SOCKET`'s address: `@name` is an abstract socket (Linux), anything else a path.
fn address(value: &str) -> io::Result<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            return SocketAddr::from_abstract_name(name.as_bytes());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract sockets need Linux",
            ));
        }
    }
    SocketAddr::from_pathname(value)
}

/// `STATUS=` text: one line, as `systemctl status` shows it.
pub fn status_line(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("STATUS={one_line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                address(path.to_str().unwrap()).unwrap(),
            )),
            watchdog: None,
        };
        notifier.notify("READY=1\nSTATUS=queue 0");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=queue 0");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("outpost-test-{}", std::process::id());
        let addr = address(&format!("@{name}")).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), addr)),
            watchdog: None,
        };
        notifier.notify("STOPPING=1");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        assert!(Notifier::none().send("READY=1").is_ok());
        assert!(!Notifier::none().is_active());
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(status_line("queue 3\nlink up"), "STATUS=queue 3 link up");
    }
}
