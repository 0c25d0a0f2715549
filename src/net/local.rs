//! Local submission: the Unix socket every local user may connect to (`sendmail` and
//! `sendmail -bs` are its clients), one SMTP session per connection with the same engine as
//! the TCP listener, trusted as a local submission (relaying allowed, no AUTH, no rate limit)
//! and tagged with the uid the kernel reports for the peer (SO_PEERCRED). Never trusts what
//! the client says about itself, and never touches the store.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::rc::Rc;

use async_io::Async;
use log::{debug, warn};
use smol::LocalExecutor;

use super::conn::{self, Opening, Peer};
use super::listen::session_params;
use crate::accept;
use crate::shared::{SessionSlot, Shared};
use crate::smtp::server::{SessionParams, TlsMode};

/// The submission socket's mode: every local user may submit.
const SOCKET_MODE: u32 = 0o666;

/// Binds the submission socket at `path`: a stale socket left by a daemon that died is
/// replaced (the store's lock proves no other daemon owns this `data_dir`), anything else at
/// that path is left alone and the bind fails.
pub fn bind_submit(path: &Path) -> io::Result<Async<UnixListener>> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    Async::new(listener)
}

/// The trace header of a local submission (over the socket, or a maildrop file by its
/// owner), naming the submitting uid as Postfix and dma do.
pub fn local_received(uid: u32, hostname: &str, queue_id: &str, date: &str) -> String {
    format!(
        "Received: from local (uid {uid})\r\n\tby {hostname} (outpost) id {queue_id}; {date}\r\n"
    )
}

/// Accepts local submissions until shutdown is raised.
pub async fn submit_loop(
    ex: Rc<LocalExecutor<'static>>,
    listener: Async<UnixListener>,
    shared: Rc<Shared>,
) {
    let accept = || listener.accept();
    accept::until_shutdown(
        shared.shutdown(),
        "submission socket: ",
        accept,
        |(stream, _)| {
            admit(&ex, stream, &shared);
        },
    )
    .await;
}

/// One local connection: its uid from the kernel, then served like an SMTP client within
/// `max_connections`.
fn admit(ex: &LocalExecutor<'static>, stream: Async<UnixStream>, shared: &Rc<Shared>) {
    let id = shared.sessions().next_id();
    let uid = match rustix::net::sockopt::socket_peercred(stream.get_ref()) {
        Ok(cred) => cred.uid.as_raw(),
        Err(e) => {
            warn!("session={id} peer=local: cannot read the peer's credentials: {e}");
            return;
        }
    };
    if shared.sessions().count() >= shared.config().max_connections {
        // The client sees the connection close and exits 75: its caller keeps the mail.
        warn!(
            "session={id} peer=local uid={uid} status=rejected reason=\"too many connections \
             ({})\"",
            shared.config().max_connections
        );
        return;
    }
    debug!("session={id} peer=local uid={uid} connected");
    let slot = SessionSlot::new(shared.clone());
    let params = local_params(&shared.config());
    let shared = shared.clone();
    ex.spawn(async move {
        conn::run(
            stream,
            params,
            (id, Peer::Local { uid }),
            &shared,
            Opening::Greet,
        )
        .await;
        drop(slot);
    })
    .detach();
}

/// A local submission: the limits of the TCP listener, relaying allowed, no TLS, no AUTH (nor
/// `require_auth`), no rate limit (local programs cannot be asked to retry).
fn local_params(config: &crate::config::Config) -> SessionParams {
    let mut params = session_params(
        config,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        TlsMode::Unavailable,
    );
    params.relay_allowed = true;
    params.auth_offered = false;
    params.require_tls = false;
    // `require_auth` is for network clients; local programs are trusted by their uid.
    params.require_auth = false;
    params.check_sender = false;
    params
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::config::Config;

    #[test]
    fn local_trace_header_names_the_uid() {
        assert_eq!(
            local_received(1000, "gw.test", "Q1", "Mon, 23 Nov 2026 20:38:44 +0000"),
            "Received: from local (uid 1000)\r\n\tby gw.test (outpost) id Q1; \
             Mon, 23 Nov 2026 20:38:44 +0000\r\n"
        );
    }

    #[test]
    fn local_sessions_relay_without_auth_or_rate_limit() {
        let config = Config {
            relay_from: Vec::new(),
            ..Config::default()
        };
        let params = local_params(&config);
        assert!(params.relay_allowed);
        assert!(!params.auth_offered && !params.require_tls && !params.check_sender);
        assert_eq!(params.tls, TlsMode::Unavailable);
    }

    #[test]
    fn the_socket_is_open_to_every_user_and_replaces_only_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("submit.sock");
        let first = bind_submit(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o666);
        drop(first);
        let again = bind_submit(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let (server, _) = async_io::block_on(again.accept()).unwrap();
        let cred = rustix::net::sockopt::socket_peercred(server.get_ref()).unwrap();
        assert_eq!(cred.uid, rustix::process::getuid());
        drop(client);
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(bind_submit(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }
}
