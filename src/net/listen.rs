//! The SMTP accept loop: connection cap, relay ACL → `SessionParams`, one task per connection
//! on the daemon's `LocalExecutor`; the same for a connection the early greeting holds
//! (`adopt`). Never reads from a client and never touches the store.

use std::borrow::Cow;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;

use async_io::Async;
use log::{debug, warn};
use smol::LocalExecutor;

use super::conn::{self, Opening, Peer};
use crate::accept;
use crate::config::Config;
use crate::intake::Reject;
use crate::shared::{SessionSlot, Shared};
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::smtp::server::{Limits, ServerSession, SessionParams, TlsMode};

/// Accepts until shutdown is raised; then the listener is dropped (new connects are refused).
/// `implicit_tls`: a `listen_tls` port (RFC 8314), where TLS starts before the greeting.
pub async fn accept_loop(
    ex: Rc<LocalExecutor<'static>>,
    listener: Async<TcpListener>,
    shared: Rc<Shared>,
    implicit_tls: bool,
) {
    let accept = || listener.accept();
    let opening = if implicit_tls {
        Opening::TlsThenGreet
    } else {
        Opening::Greet
    };
    accept::until_shutdown(shared.shutdown(), "", accept, |connection| {
        admit(&ex, connection, &shared, opening);
    })
    .await;
}

/// A connection on a plain listener whose 220 banner (`greeting`) the daemon already wrote:
/// served like any accepted one (connection cap, relay ACL, logging), without a second banner.
pub fn adopt(
    ex: &Rc<LocalExecutor<'static>>,
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Rc<Shared>,
) {
    match Async::new(stream) {
        Ok(stream) => admit(ex, (stream, peer), shared, Opening::Greeted),
        Err(e) => warn!(
            "peer={} greeted before the queue opened, but cannot be served: {e}",
            peer.ip().to_canonical()
        ),
    }
}

/// The 220 banner a session on a plain listener opens with, on the wire.
pub fn greeting(config: &Config) -> Vec<u8> {
    let params = session_params(config, IpAddr::from([127, 0, 0, 1]), TlsMode::Unavailable);
    let mut wire = Vec::new();
    ServerSession::new(params).greeting().write_to(&mut wire);
    wire
}

/// One accepted connection: refused at the connection cap, else served by its own task.
fn admit(
    ex: &LocalExecutor<'static>,
    (stream, peer): (Async<TcpStream>, SocketAddr),
    shared: &Rc<Shared>,
    opening: Opening,
) {
    let id = shared.sessions().next_id();
    // A v4 client on a dual-stack [::] listener shows up as ::ffff:a.b.c.d.
    let peer = peer.ip().to_canonical();
    let config = shared.config();
    if shared.sessions().count() >= config.max_connections {
        shared.intake().count_reject(Reject::Connections);
        warn!(
            "session={id} peer={peer} status=rejected reason=\"too many connections ({})\"",
            config.max_connections
        );
        // A TLS client could not read a plaintext 421: it is just closed.
        if opening != Opening::TlsThenGreet {
            refuse(stream.get_ref(), &config.hostname);
        }
        return;
    }
    if let Err(e) = stream.get_ref().set_nodelay(true) {
        debug!("session={id} peer={peer} cannot set TCP_NODELAY: {e}");
    }
    let slot = SessionSlot::new(shared.clone());
    let tls = match (shared.tls().is_some(), opening == Opening::TlsThenGreet) {
        (false, _) => TlsMode::Unavailable,
        (true, false) => TlsMode::Offered,
        (true, true) => TlsMode::Active,
    };
    let params = session_params(&config, peer, tls);
    let shared = shared.clone();
    ex.spawn(async move {
        conn::run(stream, params, (id, Peer::Ip(peer)), &shared, opening).await;
        drop(slot);
    })
    .detach();
}

/// RFC 5321 §3.1: a server may answer the connection with 421 instead of 220. A fresh
/// socket's send buffer is empty, so one non-blocking write suffices and the accept loop
/// never waits on a client it is turning away.
fn refuse(stream: &TcpStream, hostname: &str) {
    let reply = Reply {
        code: 421,
        status: Some(EnhancedStatus {
            class: 4,
            subject: 7,
            detail: 0,
        }),
        text: Cow::Owned(format!("{hostname} Too many connections, try again later")),
    };
    let mut wire = Vec::new();
    reply.write_to(&mut wire);
    let mut stream = stream;
    // Best effort: the client learns the reason if the write lands, and is closed either way.
    let _ = stream.write(&wire);
}

/// What the session needs to know about this client.
pub(super) fn session_params(config: &Config, peer: IpAddr, tls: TlsMode) -> SessionParams {
    SessionParams {
        hostname: config.hostname.clone(),
        peer,
        relay_allowed: config.relay_from.iter().any(|net| net.contains(&peer)),
        tls,
        // The session advertises and accepts AUTH only once TLS is active.
        auth_offered: !config.users.is_empty() && tls != TlsMode::Unavailable,
        require_tls: config.require_tls && tls != TlsMode::Unavailable,
        require_auth: config.require_auth,
        check_sender: config.rate_limit.is_some(),
        limits: Limits {
            max_message_size: config.max_message_size,
            max_recipients: config.max_recipients,
            max_errors: config.max_errors,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_allowed_only_inside_relay_from() {
        let config = Config::default();
        let inside: IpAddr = "127.0.0.5".parse().unwrap();
        let v6_loopback: IpAddr = "::1".parse().unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(session_params(&config, inside, TlsMode::Unavailable).relay_allowed);
        assert!(session_params(&config, v6_loopback, TlsMode::Unavailable).relay_allowed);
        assert!(!session_params(&config, outside, TlsMode::Unavailable).relay_allowed);
    }

    #[test]
    fn mapped_v4_peer_matches_v4_network() {
        let config = Config::default();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(session_params(&config, mapped.to_canonical(), TlsMode::Unavailable).relay_allowed);
    }
}
