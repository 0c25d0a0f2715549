//! `sendmail`'s way into the queue while the daemon runs: one SMTP transaction over the
//! daemon's submission socket (a minimal blocking client), answered only once the message is
//! committed. Owns where that socket is (`socket_path`) and what each outcome means for the
//! exit code. Never writes the maildrop and never touches the store.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Prepared;

/// The runtime directories the systemd unit (`RuntimeDirectory=outpost`: `/run/outpost`) and
/// the OpenWrt init script (`/var/run/outpost`, on its tmpfs) create for the daemon's user: when
/// one exists and belongs to the owner of `data_dir`, the submission socket lives there,
/// reachable by every user however closed `data_dir` is.
pub const RUNTIME_DIRS: [&str; 2] = ["/run/outpost", "/var/run/outpost"];
/// The submission socket's file name.
pub const SOCKET: &str = "submit.sock";
/// How long `sendmail` waits for any one reply; the final dot's waits for a durable commit.
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest reply line read (RFC 5321 §4.5.3.1.5 says 512).
const MAX_REPLY_LINE: u64 = 4096;

/// Where the daemon listens for local submissions: `submit.sock` in the first of
/// `RUNTIME_DIRS` that exists and belongs to the owner of `data_dir` (the daemon's user, who
/// owns both), else in `data_dir`. Another instance (its own `data_dir`, another owner, as a
/// test or a `cargo run` beside the installed daemon) keeps its socket in its own `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    socket_path_among(RUNTIME_DIRS.map(Path::new), data_dir)
}

fn socket_path_among<'a>(runtime: impl IntoIterator<Item = &'a Path>, data_dir: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let owner = |dir: &Path| {
        std::fs::metadata(dir)
            .ok()
            .filter(|m| m.is_dir())
            .map(|m| m.uid())
    };
    let run =
        owner(data_dir).and_then(|uid| runtime.into_iter().find(|dir| owner(dir) == Some(uid)));
    match run {
        Some(run) => run.join(SOCKET),
        None => data_dir.join(SOCKET),
    }
}

/// Why a submission over the socket did not end in a commit.
#[derive(Debug)]
pub enum SubmitError {
    /// Nothing listens there (no socket, or refused): the daemon is down.
    Down(io::Error),
    /// The daemon refused the message: its reply code and text.
    Refused(u16, String),
    /// The connection broke after it was made: the outcome is unknown, the caller retries.
    Broken(io::Error),
}

impl SubmitError {
    /// sysexits(3): a permanent refusal is the message's fault (65), the rest temporary (75).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused(code, _) if *code >= 500 => super::EX_DATAERR,
            _ => super::EX_TEMPFAIL,
        }
    }
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Down(e) => write!(f, "the daemon is not running ({e})"),
            Self::Refused(code, text) => write!(f, "the daemon refused the message: {code} {text}"),
            Self::Broken(e) => write!(f, "the connection to the daemon failed: {e}"),
        }
    }
}

/// Connects to the submission socket (the error is `Down`).
pub fn connect(path: &Path) -> Result<UnixStream, SubmitError> {
    let stream = UnixStream::connect(path).map_err(SubmitError::Down)?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
        .map_err(SubmitError::Broken)?;
    Ok(stream)
}

/// Hands `prepared` to the daemon at `path`; `Ok` only once the daemon said 250 to the final
/// dot (the message is committed), with the text of that reply (`… queued as ID`).
pub fn send(path: &Path, prepared: &Prepared) -> Result<String, SubmitError> {
    let stream = connect(path)?;
    let mut writer = stream.try_clone().map_err(SubmitError::Broken)?;
    let mut reader = BufReader::new(stream);
    expect(&mut reader, 220)?;
    command(&mut writer, &mut reader, "EHLO localhost", 250)?;
    let mut mail = format!("MAIL FROM:<{}>", prepared.sender);
    if !prepared.message.is_ascii() {
        mail.push_str(" BODY=8BITMIME");
    }
    if !prepared.sender.is_ascii() || prepared.recipients.iter().any(|r| !r.is_ascii()) {
        mail.push_str(" SMTPUTF8");
    }
    command(&mut writer, &mut reader, &mail, 250)?;
    for rcpt in &prepared.recipients {
        command(&mut writer, &mut reader, &format!("RCPT TO:<{rcpt}>"), 250)?;
    }
    command(&mut writer, &mut reader, "DATA", 354)?;
    writer
        .write_all(&dot_stuffed(&prepared.message))
        .map_err(SubmitError::Broken)?;
    let queued = expect(&mut reader, 250)?;
    // The message is committed: a failed QUIT changes nothing. Its reply is read so that the
    // daemon's 221 does not meet a closed socket.
    let _ = command(&mut writer, &mut reader, "QUIT", 221);
    Ok(queued)
}

/// Sends one command line and reads its reply, which must have code `want`.
fn command(
    writer: &mut impl Write,
    reader: &mut impl BufRead,
    line: &str,
    want: u16,
) -> Result<String, SubmitError> {
    writer
        .write_all(format!("{line}\r\n").as_bytes())
        .map_err(SubmitError::Broken)?;
    expect(reader, want)
}

/// Reads one (possibly multi-line) reply, whose last line's text is returned; anything but
/// `want` is a refusal.
fn expect(reader: &mut impl BufRead, want: u16) -> Result<String, SubmitError> {
    let (code, text) = read_reply(reader).map_err(SubmitError::Broken)?;
    if code == want {
        Ok(text)
    } else {
        Err(SubmitError::Refused(code, text))
    }
}

/// One reply: its code and the text of its last line.
fn read_reply(reader: &mut impl BufRead) -> io::Result<(u16, String)> {
    loop {
        let mut line = Vec::new();
        Read::take(&mut *reader, MAX_REPLY_LINE).read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection",
            ));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        let code = text
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an SMTP reply"))?;
        if text.as_bytes().get(3) != Some(&b'-') {
            return Ok((code, text.get(4..).unwrap_or("").to_owned()));
        }
    }
}

/// The message as DATA sends it: a leading dot doubled (RFC 5321 §4.5.2), then the final dot.
/// `message` has CRLF line ends.
fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut line_start = true;
    for &byte in message {
        if line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        line_start = byte == b'\n';
    }
    if !line_start && !message.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_in_a_runtime_dir_of_the_data_dirs_owner_only() {
        let (run, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let missing = Path::new("/nonexistent/outpost-run");
        assert_eq!(
            socket_path_among([missing, run.path()], data.path()),
            run.path().join(SOCKET)
        );
        // A runtime directory of another user: the data directory's own socket.
        let (elsewhere, data_dir) = if rustix::process::geteuid().is_root() {
            let nobody = rustix::fs::Uid::from_raw(65534);
            rustix::fs::chown(run.path(), Some(nobody), None).unwrap();
            (run.path(), data.path())
        } else {
            (run.path(), Path::new("/"))
        };
        assert_eq!(
            socket_path_among([elsewhere], data_dir),
            data_dir.join(SOCKET)
        );
        assert_eq!(
            socket_path_among([missing], data.path()),
            data.path().join(SOCKET)
        );
    }

    #[test]
    fn leading_dots_are_doubled_and_the_end_marked() {
        assert_eq!(
            dot_stuffed(b"a\r\n.b\r\n..\r\n"),
            b"a\r\n..b\r\n...\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(b"x"), b"x\r\n.\r\n");
        assert_eq!(dot_stuffed(b""), b".\r\n");
    }

    #[test]
    fn multi_line_replies_are_read_whole() {
        let mut input: &[u8] = b"250-gw.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n354 go\r\n";
        assert_eq!(read_reply(&mut input).unwrap(), (250, "SIZE 10".into()));
        assert_eq!(read_reply(&mut input).unwrap(), (354, "go".into()));
        assert!(read_reply(&mut input).is_err());
    }

    #[test]
    fn permanent_refusals_are_data_errors_the_rest_temporary() {
        assert_eq!(SubmitError::Refused(550, String::new()).exit_code(), 65);
        assert_eq!(SubmitError::Refused(452, String::new()).exit_code(), 75);
        let broken = SubmitError::Broken(io::Error::other("x"));
        assert_eq!(broken.exit_code(), 75);
    }

    #[test]
    fn the_maildrop_is_used_only_if_it_exists_and_the_daemon_takes_our_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("maildrop");
        let reason = super::super::maildrop_usable(&missing).unwrap_err();
        assert!(reason.contains("there is no maildrop"), "{reason}");
        assert!(!missing.exists(), "sendmail created the maildrop");
        // Our own directory: the daemon runs as its owner, which is us.
        std::fs::create_dir(&missing).unwrap();
        assert_eq!(super::super::maildrop_usable(&missing), Ok(()));
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(super::super::maildrop_usable(&file).is_err());
    }

    #[test]
    fn a_missing_socket_means_the_daemon_is_down() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect(&dir.path().join(SOCKET)).unwrap_err();
        assert!(matches!(err, SubmitError::Down(_)), "{err}");
    }
}
