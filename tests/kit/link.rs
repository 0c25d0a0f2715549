//! A flaky link between the relay and its smarthost: a byte-level TCP proxy on 127.0.0.1 whose
//! behaviour the test switches at any moment — pass, down (nothing listens: connection
//! refused), cut after a pattern in what the relay sent (mid-DATA, mid-TLS-handshake), drop or
//! stall at the final dot, a black hole that accepts and never answers, or a hang-up right after
//! the accept. Byte-level, so TLS passes through untouched.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the link does with the connections accepted while it is in force (a connection keeps
/// the mode it was accepted under).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkMode {
    /// Forward both ways.
    Pass,
    /// Not listening: connects are refused.
    Down,
    /// Forward until the relay has sent `pattern` and then `extra` more bytes; then close both
    /// sides (mid-DATA: `b"DATA\r\n"`; mid-handshake: `b"STARTTLS\r\n"`).
    CutAfter(&'static [u8], usize),
    /// Forward everything but the final dot `\r\n.\r\n`; close instead (the smarthost took the
    /// body and dropped the connection before the end of data).
    DropBeforeDot,
    /// Forward the final dot to the smarthost (which accepts the message) but drop its reply
    /// and close: the relay cannot know the message was delivered.
    DropDotReply,
    /// Forward the final dot and hold the smarthost's reply back without closing (timeout).
    StallAtDot,
    /// Accept and never send a byte (not even a greeting).
    BlackHole,
    /// Accept and close at once, before a greeting (a site failure that still accepts).
    Hangup,
}

struct Shared {
    mode: Mutex<LinkMode>,
    stop: AtomicBool,
    accepted: AtomicUsize,
}

/// The proxy; its port is what the relay is told is the smarthost.
pub(crate) struct FlakyLink {
    port: u16,
    shared: Arc<Shared>,
}

impl FlakyLink {
    /// A link on a fresh 127.0.0.1 port to the smarthost on `target` (127.0.0.1).
    pub(crate) fn start(target: u16, mode: LinkMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        thread::spawn(move || accept_loop(listener, port, target, &accept_shared));
        Self { port, shared }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn set(&self, mode: LinkMode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Connections accepted so far (in any mode but `Down`).
    pub(crate) fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FlakyLink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, port: u16, target: u16, shared: &Arc<Shared>) {
    let mut listener = Some(listener);
    while !shared.stop.load(Ordering::SeqCst) {
        let mode = *shared.mode.lock().unwrap();
        if mode == LinkMode::Down {
            listener = None;
            thread::sleep(Duration::from_millis(5));
            continue;
        }
        let Some(l) = listener.as_ref() else {
            // Back up: listen on the same port again (SO_REUSEADDR is set by std).
            listener = TcpListener::bind(("127.0.0.1", port)).ok();
            if let Some(l) = &listener {
                l.set_nonblocking(true).unwrap();
            } else {
                thread::sleep(Duration::from_millis(20));
            }
            continue;
        };
        l.set_nonblocking(true).unwrap();
        match l.accept() {
            Ok((client, _)) => {
                client.set_nonblocking(false).unwrap();
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || serve(client, target, mode));
            }
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn close(a: &TcpStream, b: Option<&TcpStream>) {
    let _ = a.shutdown(Shutdown::Both);
    if let Some(b) = b {
        let _ = b.shutdown(Shutdown::Both);
    }
}

/// One relay connection under `mode`.
fn serve(mut client: TcpStream, target: u16, mode: LinkMode) {
    if mode == LinkMode::Hangup {
        close(&client, None);
        return;
    }
    if mode == LinkMode::BlackHole {
        // Read and discard until the relay gives up.
        let mut buf = [0u8; 4096];
        while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
        close(&client, None);
        return;
    };
    let mute = Arc::new(AtomicBool::new(false));
    let (Ok(mut server_r), Ok(mut client_w)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    // Set once the smarthost's reply to the final dot arrived and was dropped.
    let swallowed = Arc::new(AtomicBool::new(false));
    let (back_mute, back_swallowed) = (Arc::clone(&mute), Arc::clone(&swallowed));
    let back = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = match server_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if back_mute.load(Ordering::SeqCst) {
                back_swallowed.store(true, Ordering::SeqCst);
                continue;
            }
            if client_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = client_w.shutdown(Shutdown::Both);
    });
    let mut server_w = server;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let before = seen.len();
        seen.extend_from_slice(&buf[..n]);
        // How much of this chunk to forward, and whether to close afterwards.
        let (forward, then_close) = match mode {
            LinkMode::CutAfter(pattern, extra) => match find(&seen, pattern) {
                Some(at) => {
                    let end = (at + pattern.len() + extra).max(before);
                    (end.min(seen.len()) - before, end <= seen.len())
                }
                None => (n, false),
            },
            LinkMode::DropBeforeDot => match find(&seen, b"\r\n.\r\n") {
                // Keep the body's last CRLF, withhold the dot.
                Some(at) => ((at + 2).max(before) - before, true),
                None => (n, false),
            },
            LinkMode::DropDotReply | LinkMode::StallAtDot => {
                if find(&seen, b"\r\n.\r\n").is_some() {
                    mute.store(true, Ordering::SeqCst);
                }
                (n, false)
            }
            _ => (n, false),
        };
        if server_w.write_all(&buf[..forward]).is_err() {
            break;
        }
        if then_close {
            break;
        }
        if mode == LinkMode::DropDotReply && mute.load(Ordering::SeqCst) {
            // Hang up once the smarthost took the dot and answered (into the void); a smarthost
            // that does not answer within the bound is hung up on all the same.
            super::wait_until(Duration::from_secs(10), Duration::from_millis(2), || {
                swallowed.load(Ordering::SeqCst)
            });
            break;
        }
    }
    close(&client, Some(&server_w));
    let _ = back.join();
}
