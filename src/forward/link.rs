//! The link to the smarthost: connect, TLS (implicit or STARTTLS, never a plaintext fallback),
//! the handshake up to a ready session (EHLO, AUTH), and the transfer of one message with its
//! body streamed from the store. Sockets and timers only; what replies mean is
//! `smtp::client`'s and `outcome`'s business. Never logs what it sends (AUTH secrets).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_io::Timer;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use log::{debug, error};
use smol::net::TcpStream;

use super::outcome::ForwardError;
use super::TlsPolicy;
use crate::logfmt::Quoted;
use crate::smtp::body::BodyEncoder;
use crate::smtp::client::{
    ClientParams, ClientSession, ClientStep, DeliveryReport, Envelope, SessionFailure, Stage,
};
use crate::smtp::reply::{parse_reply, Reply};
use crate::store::StoreError;
use crate::tls::{self, MaybeTls};

/// Body bytes written to the smarthost per write.
const WRITE_CHUNK: usize = 32 * 1024;

/// Connects and runs the handshake (TLS for `Implicit`, greeting, EHLO/HELO, STARTTLS, AUTH)
/// until the session is ready. With a TLS policy, nothing but the handshake happens before
/// TLS is up: no plaintext fallback.
pub(super) async fn open_session(
    smarthost: &str,
    params: ClientParams,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<(Connection, ClientSession), ForwardError> {
    open_session_watched(smarthost, params, tls_config, timeout, &mut |_| {}).await
}

/// How far `open_session_watched` got, for `outpost test` (the forwarder ignores it).
pub(super) enum Progress<'a> {
    /// A step begins: `resolve`, `connect`, `greeting`, `TLS`, or the verb sent (`EHLO`,
    /// `HELO`, `STARTTLS`, `AUTH`; never the bytes, which may be AUTH secrets).
    Step(&'static str),
    Resolved(&'a [SocketAddr]),
    Connected(SocketAddr),
    Reply(&'a Reply),
    /// The TLS handshake succeeded (the certificate verified).
    Tls(&'a MaybeTls<TcpStream>),
}

/// `open_session`, telling `watch` each step as it begins and what it got.
pub(super) async fn open_session_watched(
    smarthost: &str,
    params: ClientParams,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    watch: &mut dyn FnMut(Progress<'_>),
) -> Result<(Connection, ClientSession), ForwardError> {
    watch(Progress::Step("resolve"));
    let addrs = with_timeout(timeout, Stage::Greeting, async {
        smol::net::resolve(smarthost)
            .await
            .map_err(ForwardError::Connect)
    })
    .await?;
    watch(Progress::Resolved(&addrs));
    watch(Progress::Step("connect"));
    let stream = with_timeout(timeout, Stage::Greeting, async {
        TcpStream::connect(&addrs[..])
            .await
            .map_err(ForwardError::Connect)
    })
    .await?;
    if let Ok(peer) = stream.peer_addr() {
        watch(Progress::Connected(peer));
    }
    // The body goes out in large writes followed by a short final one (`.\r\n`); with Nagle's
    // algorithm that last segment waits for the smarthost's delayed ACK (40 ms on Linux), a
    // wait per message that would cap the relay rate for large messages. Our writes are already
    // batched, so Nagle only adds latency.
    if let Err(e) = stream.set_nodelay(true) {
        debug!("smarthost {smarthost}: cannot set TCP_NODELAY: {e}");
    }
    let mut conn = Connection {
        stream: MaybeTls::Plain(stream),
        input: Vec::new(),
        timeout,
    };
    if params.tls == TlsPolicy::Implicit {
        watch(Progress::Step("TLS"));
        conn.start_tls(smarthost, tls_config.as_ref(), Stage::Greeting)
            .await?;
        watch(Progress::Tls(&conn.stream));
    }
    let mut session = ClientSession::new(params);
    watch(Progress::Step("greeting"));
    let reply = conn.read_reply(Stage::Greeting).await?;
    watch(Progress::Reply(&reply));
    let mut step = session.handle_reply(&reply);
    loop {
        match step {
            // The bytes may be AUTH secrets: never logged, only their verb told.
            ClientStep::Send(bytes) => {
                watch(Progress::Step(verb(&bytes)));
                conn.write(&bytes).await?;
                let reply = conn.read_reply(Stage::Ehlo).await?;
                watch(Progress::Reply(&reply));
                step = session.handle_reply(&reply);
            }
            ClientStep::StartTls => {
                watch(Progress::Step("TLS"));
                conn.start_tls(smarthost, tls_config.as_ref(), Stage::StartTls)
                    .await?;
                watch(Progress::Tls(&conn.stream));
                step = session.tls_established();
            }
            ClientStep::Ready => return Ok((conn, session)),
            ClientStep::Failed(failure) => return Err(failure.into()),
            other => {
                debug!("unexpected step during the smarthost handshake: {other:?}");
                return Err(SessionFailure::Closed.into());
            }
        }
    }
}

/// The verb of a handshake command; anything else is an AUTH continuation line.
fn verb(command: &[u8]) -> &'static str {
    ["EHLO", "HELO", "STARTTLS"]
        .into_iter()
        .find(|verb| command.starts_with(verb.as_bytes()))
        .unwrap_or("AUTH")
}

/// Sends one message on a ready session: envelope, then the body from `open_body` (dot-stuffed
/// on the way), then the final dot. `Ok(None)`: the session was closed before the message
/// could start. On `Err`, the caller gets the partial report from `session.aborted`.
pub(super) async fn transfer<I>(
    conn: &mut Connection,
    session: &mut ClientSession,
    envelope: &Envelope,
    open_body: impl FnOnce() -> Result<I, StoreError>,
    data_end_timeout: Duration,
) -> Result<Option<DeliveryReport>, ForwardError>
where
    I: Iterator<Item = Result<Vec<u8>, StoreError>>,
{
    let mut open_body = Some(open_body);
    let mut step = session.start_message(envelope);
    loop {
        let reply = match step {
            ClientStep::Send(bytes) => {
                conn.write(&bytes).await?;
                conn.read_reply(Stage::Mail).await?
            }
            ClientStep::Wait => conn.read_reply(Stage::Rcpt).await?,
            ClientStep::SendBody => {
                let Some(open_body) = open_body.take() else {
                    return Err(SessionFailure::Closed.into());
                };
                send_body(conn, open_body().map_err(store_io)?).await?;
                conn.read_reply_within(Stage::DataEnd, data_end_timeout)
                    .await?
            }
            ClientStep::MessageDone(report) => return Ok(Some(report)),
            ClientStep::Failed(_) | ClientStep::Ready | ClientStep::Done | ClientStep::StartTls => {
                return Ok(None);
            }
        };
        step = session.handle_reply(&reply);
    }
}

/// Streams body chunks, dot-stuffed, ending with `.\r\n`, in writes of about `WRITE_CHUNK`.
async fn send_body(
    conn: &mut Connection,
    chunks: impl Iterator<Item = Result<Vec<u8>, StoreError>>,
) -> Result<(), ForwardError> {
    let mut encoder = BodyEncoder::new();
    let mut out = Vec::with_capacity(WRITE_CHUNK + 1024);
    for chunk in chunks {
        let chunk = chunk.map_err(store_io)?;
        encoder.encode(&chunk, &mut out);
        if out.len() >= WRITE_CHUNK {
            conn.write(&out).await?;
            out.clear();
        }
    }
    encoder.finish(&mut out);
    conn.write(&out).await
}

/// The TCP stream to the smarthost with its unparsed input.
pub(super) struct Connection {
    stream: MaybeTls<TcpStream>,
    input: Vec<u8>,
    timeout: Duration,
}

impl Connection {
    /// TLS close_notify (or a TCP half-close), bounded: the mail is already recorded.
    pub(super) async fn close(&mut self, timeout: Duration) {
        let stream = &mut self.stream;
        let _ = with_timeout(timeout, Stage::Quit, async {
            stream.close().await.map_err(ForwardError::Io)
        })
        .await;
    }

    /// The client handshake, bounded by the command timeout; the certificate must be valid for
    /// the smarthost's host name (also the SNI).
    async fn start_tls(
        &mut self,
        smarthost: &str,
        config: Option<&Arc<rustls::ClientConfig>>,
        stage: Stage,
    ) -> Result<(), ForwardError> {
        // RFC 3207 §4.2 in reverse: a reply the smarthost sent behind its 220 in plaintext
        // could be an attacker's; refuse rather than read it inside TLS.
        if !self.input.is_empty() {
            return Err(ForwardError::Tls {
                message: format!("smarthost {smarthost} sent data after its 220 to STARTTLS"),
                transient: true,
            });
        }
        let (Some(config), Ok(name)) = (config, tls::server_name(smarthost)) else {
            return Err(ForwardError::Tls {
                message: format!("no usable TLS settings for smarthost {smarthost}"),
                transient: false,
            });
        };
        let stream = &mut self.stream;
        let handshake = with_timeout(self.timeout, stage, async {
            stream.connect(config, name).await.map_err(ForwardError::Io)
        })
        .await;
        match handshake {
            Ok(()) => {
                debug!(
                    "smarthost {smarthost}: TLS established ({})",
                    self.stream.describe()
                );
                Ok(())
            }
            Err(ForwardError::Io(e)) => {
                let failure = tls::describe_handshake_error(&e, smarthost);
                if failure.clock_wrong {
                    error!("the system clock is wrong: {}", failure.message);
                }
                Err(ForwardError::Tls {
                    message: failure.message,
                    transient: failure.clock_wrong || e.get_ref().is_none(),
                })
            }
            Err(other) => Err(other),
        }
    }

    async fn read_reply(&mut self, stage: Stage) -> Result<Reply, ForwardError> {
        self.read_reply_within(stage, self.timeout).await
    }

    pub(super) async fn read_reply_within(
        &mut self,
        stage: Stage,
        timeout: Duration,
    ) -> Result<Reply, ForwardError> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.input).map_err(ForwardError::Protocol)? {
                self.input.drain(..used);
                debug!("smarthost: reply={}", Quoted(&reply.to_string()));
                return Ok(reply);
            }
            let mut buf = [0u8; 4096];
            let stream = &mut self.stream;
            let n = with_timeout(timeout, stage, async {
                stream.read(&mut buf).await.map_err(ForwardError::Io)
            })
            .await?;
            if n == 0 {
                let eof = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "smarthost closed the connection",
                );
                return Err(ForwardError::Io(eof));
            }
            self.input.extend_from_slice(&buf[..n]);
        }
    }

    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<(), ForwardError> {
        let stream = &mut self.stream;
        with_timeout(self.timeout, Stage::Data, async {
            stream.write_all(bytes).await.map_err(ForwardError::Io)?;
            stream.flush().await.map_err(ForwardError::Io)
        })
        .await
    }
}

/// Races `work` against a timer (the async-io timeout idiom).
async fn with_timeout<T>(
    timeout: Duration,
    stage: Stage,
    work: impl std::future::Future<Output = Result<T, ForwardError>>,
) -> Result<T, ForwardError> {
    future::or(work, async {
        Timer::after(timeout).await;
        Err(ForwardError::Timeout(stage))
    })
    .await
}

fn store_io(error: StoreError) -> ForwardError {
    ForwardError::Io(io::Error::other(error.to_string()))
}
