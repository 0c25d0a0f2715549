//! Start-up material built before the shared state: the store opened and recovered up to an
//! open queue, the TLS client configs for the smarthosts, the forwarder's parameters from the
//! config, the listeners registered with the reactor and the control socket; and the rest of
//! recovery, the pass over the body file journal, which runs on the executor behind the open
//! queue (`journal_pass`). Never serves anything.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use async_io::Async;
use log::{error, info, warn};
use rustls::ClientConfig;

use super::DaemonError;
use crate::config::Config;
use crate::forward::{
    ClientCredentials, CredentialKind, ForwardParams, OAuth2, RetryPolicy, Smarthost,
};
use crate::shared::Shared;
use crate::smtp::client::TlsPolicy;
use crate::store::{JournalPass, Store, StoreOptions};
use crate::{control, net, sendmail, tls};

/// sled's background flush; commits flush explicitly anyway.
const STORE_FLUSH_EVERY_MS: u64 = 1000;
/// Messages the forwarder loads per pass (the bounded active window).
const FORWARD_WINDOW: usize = 64;

/// Opens the store in `data_dir` (created if missing) and sweeps what a crash left behind, up
/// to an open queue; returns the journal pass still to run (`journal_pass`). Logs how long that
/// took.
pub(super) fn open_store(config: &Config) -> Result<(Store, Option<JournalPass>), DaemonError> {
    let began = Instant::now();
    let dir = &config.data_dir;
    crate::store::create_data_dir(dir).map_err(|source| DaemonError::CreateDataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let options = StoreOptions {
        cache_bytes: config.store.cache_bytes,
        flush_every_ms: Some(STORE_FLUSH_EVERY_MS),
        max_bytes: config.queue.max_bytes,
    };
    let store = Store::open(dir, options).map_err(DaemonError::OpenStore)?;
    // Before the listeners: `sendmail` finds the maildrop of a daemon that ever started.
    let maildrop = dir.join(sendmail::MAILDROP);
    if let Err(e) = std::fs::create_dir_all(&maildrop) {
        error!("cannot create the maildrop {}: {e}", maildrop.display());
    }
    let (report, pass) = store.recover_queue().map_err(DaemonError::OpenStore)?;
    info!(
        "queue opened: data_dir={} messages={} swept_spools={} quarantined={} in {} ms",
        dir.display(),
        report.messages,
        report.swept_spools,
        report.quarantined,
        began.elapsed().as_millis()
    );
    if report.quarantined > 0 {
        warn!(
            "{} damaged queue records were moved to the corrupt tree",
            report.quarantined
        );
    }
    Ok((store, pass))
}

/// The rest of start-up recovery, while the queue runs: reads the body files for messages the
/// database lacks and deletes the ones no message needs (`Store::finish_recovery`, which logs
/// `journal pass done`), then reopens the database (`Store::reopen_if_idle`). Rebuilt messages
/// go to the forwarder at once. A failure of the pass is logged: the body files it did not
/// finish with stay on disk until the next start retries.
pub(super) async fn journal_pass(shared: Rc<Shared>, pass: JournalPass) {
    match shared.store().finish_recovery(pass).await {
        Ok(report) if report.recovered > 0 => shared.forwarder().notify(),
        Ok(_) => {}
        Err(e) => {
            error!("journal pass failed: {e}; the body files stay until the next start retries it")
        }
    }
    // What recovery read leaves sled's memory with a reopen (housekeeping retries it when a
    // sync is running now).
    if let Err(e) = shared.store().reopen_if_idle() {
        error!("cannot reopen the database: {e}");
        shared.intake().store_failed(&e);
    }
}

/// One TLS client config per smarthost that uses TLS, built once per distinct `ca_file`: the
/// root store is the bulk of a client config, and three smarthosts over the same PKI need one.
pub(super) fn smarthost_client_configs(
    config: &Config,
) -> Result<Vec<Option<Arc<ClientConfig>>>, DaemonError> {
    let mut built: Vec<(Option<&std::path::Path>, Arc<ClientConfig>)> = Vec::new();
    let mut out = Vec::with_capacity(config.smarthosts.len());
    for smarthost in &config.smarthosts {
        if smarthost.tls == TlsPolicy::None {
            out.push(None);
            continue;
        }
        let ca_file = smarthost.ca_file.as_deref();
        let client = match built.iter().find(|(ca, _)| *ca == ca_file) {
            Some((_, client)) => client.clone(),
            None => {
                let client = tls::client_config(ca_file).map_err(DaemonError::Tls)?;
                built.push((ca_file, client.clone()));
                client
            }
        };
        out.push(Some(client));
    }
    Ok(out)
}

pub(super) fn forward_params(
    config: &Config,
    tls_configs: &[Option<Arc<ClientConfig>>],
) -> ForwardParams {
    let smarthosts = config
        .smarthosts
        .iter()
        .enumerate()
        .map(|(index, smarthost)| Smarthost {
            address: smarthost.address.clone(),
            tls: smarthost.tls,
            tls_config: tls_configs.get(index).cloned().flatten(),
            credentials: smarthost.auth.as_ref().map(|auth| ClientCredentials {
                username: auth.username.clone(),
                password: auth.password.expose().to_owned(),
                kind: CredentialKind::Password,
            }),
            oauth2: smarthost.oauth2.as_ref().map(|oauth| OAuth2 {
                username: oauth.username.clone(),
                url: oauth.token_url.clone(),
                client_id: oauth.client_id.clone(),
                client_secret: oauth.client_secret.as_ref().map(|s| s.expose().to_owned()),
                refresh_token_file: oauth.refresh_token_file.clone(),
                scope: oauth.scope.clone(),
            }),
            from: smarthost.from.clone(),
            connections: smarthost.connections,
        })
        .collect();
    ForwardParams {
        smarthosts,
        hostname: config.hostname.clone(),
        policy: RetryPolicy {
            retry_min: config.queue.retry_min,
            retry_max: config.queue.retry_max,
            max_age: config.queue.max_age,
        },
        // With `[coalesce]`, a pass loads up to `max_parts` due messages so that a digest can
        // hold that many (each loaded message costs its envelope in memory).
        window: config
            .coalesce
            .map_or(FORWARD_WINDOW, |c| FORWARD_WINDOW.max(c.max_parts)),
        command_timeout: config.timeouts.smarthost,
        data_end_timeout: config.timeouts.smarthost_data_end,
        coalesce: config.coalesce,
        max_digest_bytes: config.max_message_size,
    }
}

/// The bound listeners registered with the reactor, each flagged `true` for implicit TLS.
pub(super) fn registered(
    listeners: Vec<TcpListener>,
    tls_listeners: Vec<TcpListener>,
) -> Result<Vec<(Async<TcpListener>, bool)>, DaemonError> {
    let plain = listeners.into_iter().map(|l| (l, false));
    let implicit = tls_listeners.into_iter().map(|l| (l, true));
    plain
        .chain(implicit)
        .map(|(listener, implicit_tls)| {
            let addr = listener.local_addr();
            Async::new(listener)
                .map(|listener| (listener, implicit_tls))
                .map_err(|source| DaemonError::Bind {
                    addr: addr.unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
                    source,
                })
        })
        .collect()
}

/// The control socket in `data_dir`. Without it the relay still relays (and sendmail's
/// maildrop is still picked up every few seconds); only `outpost queue`/`status` cannot reach
/// the daemon.
pub(super) fn control_socket(data_dir: &Path) -> Option<Async<UnixListener>> {
    match control::bind(data_dir) {
        Ok(listener) => Some(listener),
        Err(e) => {
            error!(
                "cannot create the control socket in {}: {e}; `outpost queue` and `outpost \
                 status` will not reach this daemon",
                data_dir.display()
            );
            None
        }
    }
}

/// The local submission socket (`sendmail::socket_path`): every local user may connect.
/// Without it `sendmail` falls back to the maildrop, usable by root and the daemon's user.
pub(super) fn submit_socket(data_dir: &Path) -> Option<(Async<UnixListener>, PathBuf)> {
    let path = sendmail::socket_path(data_dir);
    match net::bind_submit(&path) {
        Ok(listener) => {
            info!("local submission on {}", path.display());
            Some((listener, path))
        }
        Err(e) => {
            error!(
                "cannot create the submission socket {}: {e}; `sendmail` works only for root \
                 and the daemon's user, through the maildrop",
                path.display()
            );
            None
        }
    }
}
