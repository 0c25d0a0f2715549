//! `sendmail -bs`: one SMTP session on standard input and output, served by the daemon over
//! its submission socket with the same session engine as the listener and trusted as a local
//! submission. This side only copies bytes both ways; every reply is the daemon's. Never
//! reads or writes the maildrop: with the daemon down it exits 75.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Runs the session: stdin to the daemon, the daemon's replies to stdout, until the daemon
/// closes the connection (after QUIT, or at its timeouts). Returns the exit code.
pub fn main(socket: &Path, input: impl Read + Send + 'static, output: &mut dyn Write) -> u8 {
    let stream = match super::submit::connect(socket) {
        Ok(stream) => stream,
        Err(e) => {
            eprintln!("sendmail: {e} ({}); try again later", socket.display());
            return super::EX_TEMPFAIL;
        }
    };
    let upstream = match stream.try_clone() {
        Ok(upstream) => upstream,
        Err(e) => {
            eprintln!("sendmail: cannot use the submission socket: {e}");
            return super::EX_TEMPFAIL;
        }
    };
    // The copy of stdin ends at its EOF (or with the process: it may block on a client that
    // keeps stdin open after QUIT).
    std::thread::spawn(move || copy_in(input, upstream));
    match copy_out(stream, output) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sendmail: the SMTP session failed: {e}");
            super::EX_TEMPFAIL
        }
    }
}

fn copy_in(mut input: impl Read, mut upstream: UnixStream) {
    let _ = io::copy(&mut input, &mut upstream);
    let _ = upstream.shutdown(Shutdown::Write);
}

/// The daemon's replies, flushed as they come (the client waits for each).
fn copy_out(mut stream: UnixStream, output: &mut dyn Write) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        output.write_all(&buf[..n])?;
        output.flush()?;
    }
}
