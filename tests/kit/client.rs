//! The SMTP clients of the kit: lettre's sync transport, and the one raw client for byte-exact
//! transcripts (plain, STARTTLS or implicit TLS, with rustls directly). Every read has a
//! timeout; the raw client keeps a transcript for failure messages. Never uses the relay's code.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// Read timeout of the clients: a reply that takes longer (times the slack) is a failure.
fn reply_timeout() -> Duration {
    super::slack(Duration::from_secs(15))
}

/// Sends `message` with lettre's sync SMTP transport (no TLS) and returns the reply to the final
/// dot as `"250 2.0.0 queued as …"`, or lettre's error text.
pub(crate) fn send_lettre(
    port: u16,
    from: &str,
    to: &[&str],
    message: &[u8],
) -> Result<String, String> {
    use lettre::address::Envelope;
    use lettre::{Address, SmtpTransport, Transport};
    let from: Address = from.parse().map_err(|e| format!("{e}"))?;
    let to: Vec<Address> = to.iter().map(|a| a.parse().unwrap()).collect();
    let envelope = Envelope::new(Some(from), to).map_err(|e| format!("{e}"))?;
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(reply_timeout()))
        .build();
    let message = message.to_vec();
    thread::spawn(move || match transport.send_raw(&envelope, &message) {
        Ok(response) => {
            let lines: Vec<&str> = response.message().collect();
            Ok(format!("{} {}", response.code(), lines.join("\n")))
        }
        Err(e) => Err(format!("{e}")),
    })
    .join()
    .unwrap()
}

/// One reply: its code and each line's text after `NNN-`/`NNN `.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub(crate) code: u16,
    pub(crate) lines: Vec<String>,
}

impl Reply {
    /// The first line's text (after the code).
    pub(crate) fn text(&self) -> &str {
        self.lines.first().map_or("", String::as_str)
    }

    /// Whether every line's text starts with an RFC 3463 status `c.s.d` with `c` = code / 100.
    pub(crate) fn has_enhanced_status(&self) -> bool {
        let class = char::from_digit(u32::from(self.code / 100), 10).unwrap_or('?');
        self.lines.iter().all(|line| {
            let status = line.split(' ').next().unwrap_or("");
            let parts: Vec<&str> = status.split('.').collect();
            parts.len() == 3
                && parts[0].len() == 1
                && parts[0].starts_with(class)
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        })
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

/// The raw client's connection: plain TCP, or TLS over it after a handshake.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// A raw SMTP client for byte-exact checks; keeps a transcript for failure messages.
pub(crate) struct RawClient {
    /// `None` only while a TLS upgrade replaces the stream.
    stream: Option<Stream>,
    buf: Vec<u8>,
    transcript: String,
}

impl RawClient {
    /// Connects and reads the greeting.
    pub(crate) fn connect(port: u16) -> (Self, Reply) {
        let mut client = Self::connect_no_greeting(port).unwrap();
        let greeting = client.read_reply();
        (client, greeting)
    }

    pub(crate) fn connect_no_greeting(port: u16) -> std::io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(reply_timeout()))?;
        stream.set_write_timeout(Some(reply_timeout()))?;
        Ok(Self {
            stream: Some(Stream::Plain(stream)),
            buf: Vec::new(),
            transcript: String::new(),
        })
    }

    /// Implicit TLS: connects, completes the handshake (server name 127.0.0.1) and reads the
    /// greeting.
    pub(crate) fn connect_tls(port: u16, config: Arc<ClientConfig>) -> (Self, Reply) {
        let mut client = Self::connect_no_greeting(port).unwrap();
        if let Err(e) = client.upgrade(config) {
            client.fail(&format!("TLS handshake failed: {e}"));
        }
        let greeting = client.read_reply();
        (client, greeting)
    }

    /// STARTTLS: sends it, expects 220, and completes the handshake (server name 127.0.0.1).
    /// Does not send EHLO again.
    pub(crate) fn starttls(&mut self, config: Arc<ClientConfig>) -> io::Result<()> {
        let reply = self.cmd("STARTTLS");
        self.check(reply.code == 220, "STARTTLS 220");
        self.upgrade(config)
    }

    /// Replaces the plain stream by TLS over it for the server name 127.0.0.1; bytes already
    /// read stay unread in the buffer (a test of pipelining before the handshake sees them).
    pub(crate) fn upgrade(&mut self, config: Arc<ClientConfig>) -> io::Result<()> {
        self.upgrade_for(config, "127.0.0.1")
    }

    /// `upgrade` for the server name `name` (a DNS name or an IP address).
    pub(crate) fn upgrade_for(&mut self, config: Arc<ClientConfig>, name: &str) -> io::Result<()> {
        let Some(Stream::Plain(tcp)) = self.stream.take() else {
            self.fail("TLS upgrade of a stream that is not plain TCP");
        };
        let name = ServerName::try_from(name.to_owned()).map_err(io::Error::other)?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, tcp);
        let result = (|| {
            while tls.conn.is_handshaking() {
                tls.conn.complete_io(&mut tls.sock)?;
            }
            Ok(())
        })();
        self.note("C", b"<TLS handshake>");
        self.stream = Some(Stream::Tls(Box::new(tls)));
        result
    }

    /// Whether the connection is TLS now.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.stream, Some(Stream::Tls(_)))
    }

    fn stream(&mut self) -> io::Result<&mut Stream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Connects, reads the greeting and sends EHLO; panics unless both succeed.
    pub(crate) fn ready(port: u16) -> Self {
        let (mut client, greeting) = Self::connect(port);
        client.check(greeting.code == 220, "greeting 220");
        let ehlo = client.cmd("EHLO client.test");
        client.check(ehlo.code == 250, "EHLO 250");
        client
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send(bytes) {
            self.fail(&format!("write failed: {e}"));
        }
    }

    /// Like `send` but reports errors (the peer may have closed).
    pub(crate) fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.note("C", bytes);
        let stream = self.stream()?;
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Sends `line` + CRLF and reads one reply.
    pub(crate) fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// `cmd`, then checks the reply's code; panics with the transcript when it differs.
    pub(crate) fn cmd_expect(&mut self, line: &str, code: u16) -> Reply {
        let reply = self.cmd(line);
        self.check_code(&reply, code);
        reply
    }

    /// `read_reply`, then checks the reply's code; panics with the transcript when it differs.
    pub(crate) fn read_expect(&mut self, code: u16) -> Reply {
        let reply = self.read_reply();
        self.check_code(&reply, code);
        reply
    }

    fn check_code(&self, reply: &Reply, code: u16) {
        if reply.code != code {
            self.fail(&format!("expected {code}, got `{reply}`"));
        }
    }

    /// Reads one complete (possibly multi-line) reply; panics on timeout or EOF.
    pub(crate) fn read_reply(&mut self) -> Reply {
        match self.try_read_reply() {
            Ok(reply) => reply,
            Err(e) => self.fail(&format!("no complete reply: {e}")),
        }
    }

    pub(crate) fn try_read_reply(&mut self) -> std::io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            let code = text
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("not a reply: {text:?}"),
                    )
                })?;
            let sep = text.as_bytes().get(3).copied();
            lines.push(text.get(4..).unwrap_or("").to_owned());
            if sep != Some(b'-') {
                return Ok(Reply { code, lines });
            }
        }
    }

    /// Whether the server closed the connection: EOF or a reset within the read timeout.
    /// Unread bytes or a timeout count as open.
    pub(crate) fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        let read = self.stream().and_then(|s| s.read(&mut byte));
        match read {
            Ok(0) => true,
            Ok(_) => {
                self.buf.push(byte[0]);
                false
            }
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    /// `try_read_reply` waiting at most `wait` (a timeout is `WouldBlock`/`TimedOut`).
    pub(crate) fn try_read_reply_within(&mut self, wait: Duration) -> std::io::Result<Reply> {
        self.set_read_timeout(wait);
        let reply = self.try_read_reply();
        self.set_read_timeout(reply_timeout());
        reply
    }

    fn set_read_timeout(&self, wait: Duration) {
        if let Some(stream) = &self.stream {
            let _ = stream.tcp().set_read_timeout(Some(wait));
        }
    }

    fn read_line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                self.note("S", &line);
                return Ok(line);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream()?.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Runs MAIL, RCPT…, DATA, body (already dot-stuffed, ending in CRLF), `.`; returns the reply
    /// to the final dot. Panics if an earlier step is refused.
    pub(crate) fn send_mail(&mut self, from: &str, to: &[&str], body: &[u8]) -> Reply {
        let reply = self.cmd(&format!("MAIL FROM:<{from}>"));
        self.check(reply.code == 250, "MAIL 250");
        for rcpt in to {
            let reply = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            self.check(reply.code == 250, "RCPT 250");
        }
        let reply = self.cmd("DATA");
        self.check(reply.code == 354, "DATA 354");
        self.send(body);
        self.send(b".\r\n");
        self.read_reply()
    }

    /// `send_mail` without panics, for clients that expect the relay to die under them.
    pub(crate) fn try_send_mail(
        &mut self,
        from: &str,
        to: &[&str],
        body: &[u8],
    ) -> std::io::Result<Reply> {
        let refused =
            |what: &str, reply: &Reply| std::io::Error::other(format!("{what} refused: {reply}"));
        self.try_send(format!("MAIL FROM:<{from}>\r\n").as_bytes())?;
        let reply = self.try_read_reply()?;
        if reply.code != 250 {
            return Err(refused("MAIL", &reply));
        }
        for rcpt in to {
            self.try_send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())?;
            let reply = self.try_read_reply()?;
            if reply.code != 250 {
                return Err(refused("RCPT", &reply));
            }
        }
        self.try_send(b"DATA\r\n")?;
        let reply = self.try_read_reply()?;
        if reply.code != 354 {
            return Err(refused("DATA", &reply));
        }
        self.try_send(body)?;
        self.try_send(b".\r\n")?;
        self.try_read_reply()
    }

    pub(crate) fn transcript(&self) -> &str {
        &self.transcript
    }

    pub(crate) fn check(&self, cond: bool, what: &str) {
        if !cond {
            self.fail(&format!("expected {what}"));
        }
    }

    pub(crate) fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n==== client transcript ====\n{}", self.transcript);
    }

    fn note(&mut self, side: &str, bytes: &[u8]) {
        if self.transcript.len() > 64 * 1024 {
            return;
        }
        let text = String::from_utf8_lossy(bytes);
        let shown: String = text.chars().take(300).collect();
        let _ = writeln!(self.transcript, "{side}: {:?}", shown);
    }
}

/// Asserts that `reply` is `250 2.0.0 queued as <16 upper-case hex>` and returns the queue id.
pub(crate) fn assert_queued(reply: &Reply) -> String {
    let id = reply
        .text()
        .strip_prefix("2.0.0 queued as ")
        .unwrap_or_else(|| {
            panic!("expected `250 2.0.0 queued as <ID>`, got `{reply}`");
        });
    assert_eq!(reply.code, 250, "reply to the final dot: {reply}");
    assert!(
        id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
        "queue id is not 16 upper-case hex digits: {reply}"
    );
    id.to_owned()
}

/// A message carrying `X-Test-Id: id`, for counting arrivals (`Smarthost::arrived_ids`).
pub(crate) fn tagged_message(id: &str) -> Vec<u8> {
    format!("X-Test-Id: {id}\r\nSubject: {id}\r\n\r\nbody of {id}\r\n").into_bytes()
}

/// A small RFC 5322 message with CRLF line ends and the given extra header and body.
pub(crate) fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: sender@lan.test\r\nTo: rcpt@remote.test\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@lan.test>\r\n\r\n{body}"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_status_is_recognised() {
        let ok = Reply {
            code: 250,
            lines: vec!["2.1.0 ok".into()],
        };
        let bad = Reply {
            code: 250,
            lines: vec!["ok".into()],
        };
        let wrong_class = Reply {
            code: 550,
            lines: vec!["4.1.0 no".into()],
        };
        assert!(ok.has_enhanced_status());
        assert!(!bad.has_enhanced_status());
        assert!(!wrong_class.has_enhanced_status());
    }
}
