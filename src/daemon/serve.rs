//! The daemon at work: serves the SMTP listeners (and the ones whose address comes up late)
//! and the local submission socket,
//! runs the forwarder, the operator's services (control socket, maildrop pickup, metrics, link
//! watcher) and housekeeping, then shuts them down in order. Holds no protocol logic.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::future;
use log::{debug, error, info, warn};
use smol::{LocalExecutor, Task};

#[cfg(target_os = "linux")]
use super::netlink;
use super::{metrics, readiness, BIND_RETRY};
use crate::forward::{self, ForwardParams};
use crate::sd_notify::Notifier;
use crate::shared::Shared;
use crate::wait::Wake;
use crate::{control, net, sendmail};

/// How long in-flight sessions (and a delivery in progress) get to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often the queue clock is persisted (also at shutdown) and failed messages are purged.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);
/// How often housekeeping offers the store a compaction (`Store::compact_if_idle`), which it
/// does when the queue is empty at two checks in a row.
const COMPACT_CHECK: Duration = Duration::from_secs(10);

/// What `serve` starts besides the shared state.
pub(super) struct Services {
    /// Bound listeners, each flagged `true` for implicit TLS.
    pub(super) listeners: Vec<(Async<TcpListener>, bool)>,
    /// Clients of the plain listeners greeted while the queue opened (`greeter`).
    pub(super) greeted: Vec<super::greeter::Greeted>,
    /// Listen addresses that did not exist at start (EADDRNOTAVAIL), flagged `true` for
    /// implicit TLS: `serve` keeps trying to bind them.
    pub(super) late_listeners: Vec<(SocketAddr, bool)>,
    /// The local submission socket and its path (removed at shutdown).
    pub(super) submit: Option<(Async<UnixListener>, PathBuf)>,
    pub(super) forward: ForwardParams,
    /// The service manager (systemd `Type=notify`), if any.
    pub(super) notifier: Rc<Notifier>,
}

/// The forwarder's task, and the wake-up that stops it. With no smarthost the forwarder itself
/// logs the one "mail is held" warning.
fn spawn_forwarder(
    ex: &Rc<LocalExecutor<'static>>,
    forward: forward::ForwardParams,
    shared: &Rc<Shared>,
) -> (Task<()>, Rc<Wake>) {
    let stop = Wake::new();
    let task = ex.spawn(forward::run_linked(
        shared.store().clone(),
        shared.clock(),
        forward,
        (
            shared.forwarder().clone(),
            stop.clone(),
            shared.next_forward().clone(),
        ),
        shared.link().clone(),
        shared.intake().clone(),
    ));
    (task, stop)
}

/// Serves the listeners until `shutdown` resolves (or the store fails), then stops accepting,
/// gives in-flight sessions and the forwarder `SHUTDOWN_GRACE` to finish, and saves the queue
/// clock.
pub(super) async fn serve(
    ex: Rc<LocalExecutor<'static>>,
    services: Services,
    shared: Rc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    let Services {
        listeners,
        greeted,
        late_listeners,
        submit,
        forward,
        notifier,
    } = services;
    announce(&listeners, shared.tls().is_some());
    let (forwarder, stop_forwarder) = spawn_forwarder(&ex, forward, &shared);
    for (stream, peer) in greeted {
        net::adopt(&ex, stream, peer, &shared);
    }
    let late = late_listeners.into_iter().map(|(addr, implicit_tls)| {
        ex.spawn(late_listener(
            ex.clone(),
            addr,
            shared.clone(),
            implicit_tls,
        ))
    });
    let on_time = listeners.into_iter().map(|(listener, implicit_tls)| {
        ex.spawn(net::accept_loop(
            ex.clone(),
            listener,
            shared.clone(),
            implicit_tls,
        ))
    });
    let (local, submit_path) = local_submission(&ex, submit, &shared);
    let acceptors: Vec<_> = on_time.chain(late).chain(local).collect();
    let housekeeper = ex.spawn(housekeeping(shared.clone()));
    ex.spawn(crate::notice::watch(shared.clone())).detach();
    readiness::ready(&notifier, &shared);
    let reporter = ex.spawn(readiness::report(notifier.clone(), shared.clone()));

    future::or(shutdown, shared.intake().store_failure().wait()).await;
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    drop(reporter);
    readiness::stopping(&notifier);
    info!(
        "shutdown: no new connections; {} sessions in flight",
        shared.sessions().count()
    );
    shared.shutdown().raise();
    stop_forwarder.notify();
    for acceptor in acceptors {
        acceptor.await;
    }
    remove_socket(submit_path);
    drain(&shared, deadline, forwarder, housekeeper).await;
}

/// The acceptor of the local submission socket, if it was bound, and the socket's path.
fn local_submission(
    ex: &Rc<LocalExecutor<'static>>,
    submit: Option<(Async<UnixListener>, PathBuf)>,
    shared: &Rc<Shared>,
) -> (Option<Task<()>>, Option<PathBuf>) {
    let Some((listener, path)) = submit else {
        return (None, None);
    };
    let task = ex.spawn(net::submit_loop(ex.clone(), listener, shared.clone()));
    (Some(task), Some(path))
}

/// Removes the submission socket once it no longer accepts: `sendmail` then finds no daemon at
/// once and uses the maildrop.
fn remove_socket(path: Option<PathBuf>) {
    if let Some(path) = path {
        if let Err(e) = std::fs::remove_file(&path) {
            debug!("cannot remove {}: {e}", path.display());
        }
    }
}

/// One `listening on` line per listener (port 0 shows the real port: tests read it).
fn announce(listeners: &[(Async<TcpListener>, bool)], starttls: bool) {
    for (listener, implicit_tls) in listeners {
        let kind = match (implicit_tls, starttls) {
            (true, _) => " (implicit TLS)",
            (false, true) => " (STARTTLS)",
            (false, false) => "",
        };
        match listener.get_ref().local_addr() {
            Ok(addr) => info!("listening on {addr}{kind}"),
            Err(e) => warn!("listening on an address that cannot be read back: {e}"),
        }
    }
}

/// The end of a shutdown: waits for the sessions and the forwarder (until `deadline`), stops
/// housekeeping, then saves the queue clock and flushes the store.
async fn drain(shared: &Shared, deadline: Instant, forwarder: Task<()>, housekeeper: Task<()>) {
    if !shared.sessions().ended(deadline).await {
        warn!(
            "shutdown: {} sessions still open after {SHUTDOWN_GRACE:?}; dropping them",
            shared.sessions().count()
        );
    }
    if crate::wait::before(deadline, forwarder).await.is_none() {
        warn!("shutdown: the forwarder did not stop within {SHUTDOWN_GRACE:?}; cancelling it");
    }
    drop(housekeeper);
    if let Err(e) = shared.store().save_clock(shared.clock().now()) {
        error!("shutdown: cannot save the queue clock: {e}");
    }
    match shared.store().flush().await {
        Ok(()) => info!("shutdown complete"),
        Err(e) => error!("shutdown: final flush failed: {e}"),
    }
}

/// Keeps binding `addr` (which did not exist at start) every `BIND_RETRY`, then accepts on it
/// like any listener. Ends at shutdown.
async fn late_listener(
    ex: Rc<LocalExecutor<'static>>,
    addr: SocketAddr,
    shared: Rc<Shared>,
    implicit_tls: bool,
) {
    let listener = loop {
        if shared
            .shutdown()
            .interrupts(BIND_RETRY, future::pending())
            .await
        {
            return;
        }
        match TcpListener::bind(addr).and_then(Async::new) {
            Ok(listener) => break listener,
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
                debug!("cannot listen on {addr} yet: {e}");
            }
            Err(e) => {
                error!("cannot listen on {addr}: {e}; retrying");
            }
        }
    };
    match listener.get_ref().local_addr() {
        Ok(addr) => info!("listening on {addr} (address came up)"),
        Err(e) => warn!("listening on an address that cannot be read back: {e}"),
    }
    net::accept_loop(ex, listener, shared, implicit_tls).await;
}

/// The operator's side: control socket, maildrop pickup, metrics. Cancelled at the end of
/// `serve` (by dropping the task).
pub(super) async fn operations(
    ex: Rc<LocalExecutor<'static>>,
    shared: Rc<Shared>,
    control: Option<Async<UnixListener>>,
    metrics: Option<Async<TcpListener>>,
) {
    let control = control.map(|l| ex.spawn(control::serve(ex.clone(), l, shared.clone())));
    let maildrop = ex.spawn(sendmail::pickup_loop(shared.clone()));
    let metrics = metrics.map(|l| ex.spawn(metrics::serve(ex.clone(), l, shared.clone())));
    #[cfg(target_os = "linux")]
    let _netlink = match netlink::open() {
        Ok(socket) => Some(ex.spawn(netlink::watch(socket, shared.clone()))),
        Err(e) => {
            warn!("cannot watch for network changes (netlink): {e}");
            None
        }
    };
    match control {
        Some(control) => control.await,
        None => shared.shutdown().wait().await,
    }
    drop(maildrop);
    drop(metrics);
}

/// Every `HOUSEKEEPING_INTERVAL`: persist the queue clock (it counts time spent queued; saving
/// bounds what a crash can lose of it) and delete failed messages older than
/// `queue.failed_retention` (queue time, so a clock jump cannot purge early). Every
/// `COMPACT_CHECK`: give the disk back once the queue stayed empty, and reopen the database
/// once the start's recovery is done if that could not be done at once (`start::journal_pass`).
async fn housekeeping(shared: Rc<Shared>) {
    let (store, intake) = (shared.store(), shared.intake());
    let per_interval = HOUSEKEEPING_INTERVAL.as_secs() / COMPACT_CHECK.as_secs();
    let (mut checks, mut was_empty) = (0, false);
    loop {
        Timer::after(COMPACT_CHECK).await;
        let empty = store.usage().messages == 0;
        if empty && was_empty {
            if let Err(e) = store.compact_if_idle() {
                error!("cannot compact the database: {e}");
                intake.store_failed(&e);
            }
        }
        if let Err(e) = store.reopen_if_idle() {
            error!("cannot reopen the database: {e}");
            intake.store_failed(&e);
        }
        was_empty = empty;
        checks += 1;
        if checks % per_interval != 0 {
            continue;
        }
        let retention = shared.config().queue.failed_retention;
        let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        let now = shared.clock().now();
        if let Err(e) = store.save_clock(now) {
            error!("cannot save the queue clock: {e}");
            // Also how a store that failed under the forwarder alone (no session to notice)
            // gets the daemon restarted within a minute rather than redelivering forever.
            intake.store_failed(&e);
        }
        match store.purge_failed(now.saturating_sub(retention_ms)).await {
            Ok(0) => {}
            Ok(n) => info!("purged {n} failed messages older than queue.failed_retention"),
            Err(e) => {
                error!("cannot purge failed messages: {e}");
                intake.store_failed(&e);
            }
        }
    }
}
