//! The early greeting: while the main thread opens and recovers the store (seconds on a deep
//! queue and a slow card), a thread of its own accepts on the plain SMTP listeners, writes each
//! client the 220 banner its session would open with (`net::greeting`), and holds the
//! connection unread, at most `max_connections` of them, until the daemon hands them to their
//! sessions (`net::adopt`) once the queue is open. Beyond that number, and on the implicit-TLS
//! listeners and the local submission socket, clients wait in the kernel's backlog. Never reads
//! a command and never touches the store.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::task::Poll;
use std::thread::{self, JoinHandle};

use async_io::Async;
use futures_lite::future;
use log::{debug, info, warn};
use smol::channel::{self, Receiver, Sender};

use crate::accept;
use crate::config::Config;
use crate::smtp::reply::{EnhancedStatus, Reply};

/// The thread only accepts and writes one short line per client.
const STACK: usize = 128 * 1024;
/// Most octets read (and dropped) from a refused client before its connection is closed.
const DRAIN_MAX: usize = 64 * 1024;

/// A connection greeted early: its stream (banner written, nothing read) and the client.
pub(super) type Greeted = (TcpStream, SocketAddr);

/// The greeting thread, while the queue opens.
pub(super) struct Greeter {
    /// Dropped to stop the thread (its receiver then wakes).
    stop: Sender<()>,
    thread: JoinHandle<Vec<Greeted>>,
}

impl Greeter {
    /// Greets on clones of `listeners` until `finish` or `refuse`. `None` when there is nothing
    /// to greet on or the thread cannot start: clients then wait for the normal accept.
    pub(super) fn start(listeners: &[TcpListener], config: &Config) -> Option<Self> {
        let clones: Vec<TcpListener> = listeners
            .iter()
            .filter_map(|l| {
                l.try_clone()
                    .map_err(|e| debug!("no early greeting: {e}"))
                    .ok()
            })
            .collect();
        if clones.is_empty() || config.max_connections == 0 {
            return None;
        }
        let addrs: Vec<_> = clones.iter().filter_map(|l| l.local_addr().ok()).collect();
        let banner = crate::net::greeting(config);
        let max = config.max_connections;
        let (stop, stopped) = channel::bounded(1);
        let thread = thread::Builder::new()
            .name("greeter".into())
            .stack_size(STACK)
            .spawn(move || async_io::block_on(greet(clones, &banner, max, &stopped)));
        match thread {
            Ok(thread) => {
                for addr in addrs {
                    info!("greeting on {addr} while the queue opens");
                }
                Some(Self { stop, thread })
            }
            Err(e) => {
                warn!("no early greeting while the queue opens: cannot start a thread: {e}");
                None
            }
        }
    }

    /// Stops greeting; the greeted connections, in the order they came. The thread's clones of
    /// the listeners are closed on return, so every later client is the normal accept's.
    pub(super) fn finish(self) -> Vec<Greeted> {
        drop(self.stop);
        let greeted = self.thread.join().unwrap_or_else(|_| {
            // The thread only accepts and writes: a panic there is a bug, and the connections it
            // held are gone with it.
            warn!("the early greeting thread panicked");
            Vec::new()
        });
        if !greeted.is_empty() {
            info!("early greeting done: greeted={}", greeted.len());
        }
        greeted
    }

    /// The queue cannot be opened: every client greeted gets 421 4.3.0 and is closed.
    pub(super) fn refuse(self, hostname: &str) {
        let reply = Reply {
            code: 421,
            status: Some(EnhancedStatus::new(4, 3, 0)),
            text: Cow::Owned(format!(
                "{hostname} Service not available, the queue cannot be opened"
            )),
        };
        let mut wire = Vec::new();
        reply.write_to(&mut wire);
        for (stream, _) in self.finish() {
            close_with(stream, &wire);
        }
    }
}

/// The thread: accepts and greets until `stopped` wakes (its sender dropped).
async fn greet(
    listeners: Vec<TcpListener>,
    banner: &[u8],
    max: usize,
    stopped: &Receiver<()>,
) -> Vec<Greeted> {
    let listeners: Vec<Async<TcpListener>> = listeners
        .into_iter()
        .filter_map(|l| {
            Async::new(l)
                .map_err(|e| debug!("no early greeting: {e}"))
                .ok()
        })
        .collect();
    let greeted = RefCell::new(Vec::new());
    let stop = async {
        let _ = stopped.recv().await;
    };
    let next = || async {
        // At `max`, further clients wait in the kernel's backlog.
        if greeted.borrow().len() >= max {
            future::pending::<()>().await;
        }
        accept_any(&listeners).await
    };
    accept::until(stop, "early greeting: ", next, |(stream, peer)| {
        greeted
            .borrow_mut()
            .extend(write_banner(stream, peer, banner));
    })
    .await;
    greeted.into_inner()
}

/// The next connection on any of `listeners`.
async fn accept_any(listeners: &[Async<TcpListener>]) -> io::Result<(TcpStream, SocketAddr)> {
    future::poll_fn(|cx| {
        for listener in listeners {
            match listener.get_ref().accept() {
                Ok(connection) => return Poll::Ready(Ok(connection)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            match listener.poll_readable(cx) {
                Poll::Pending => {}
                // Readable since the accept above: try again.
                Poll::Ready(Ok(())) => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Pending
    })
    .await
}

/// Writes the banner; the connection, unless the client is already gone. A fresh socket's send
/// buffer is empty, so one non-blocking write takes the whole line.
fn write_banner(stream: TcpStream, peer: SocketAddr, banner: &[u8]) -> Option<Greeted> {
    let written = stream
        .set_nonblocking(true)
        .and_then(|()| (&stream).write(banner));
    match written {
        Ok(n) if n == banner.len() => Some((stream, peer)),
        Ok(n) => {
            debug!("peer={peer} took {n} octets of the banner; closed");
            None
        }
        Err(e) => {
            debug!("peer={peer} cannot be greeted: {e}");
            None
        }
    }
}

/// Writes `reply`, ends the sending side, and drops what the client sent (its commands, read
/// by no session) so that the close does not reset the connection before it reads the reply.
fn close_with(mut stream: TcpStream, reply: &[u8]) {
    // Best effort: the client learns the reason if the write lands, and is closed either way.
    let _ = stream.write(reply);
    let _ = stream.shutdown(Shutdown::Write);
    let mut buf = [0; 1024];
    let mut drained = 0;
    while drained < DRAIN_MAX {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
}
