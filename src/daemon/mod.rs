//! The composition root: the daemon's start-up and shutdown. Binds the listeners, loads the
//! TLS material, greets SMTP clients early (`greeter`) while it opens and recovers the store
//! (its pass over the body file journal then runs behind the open queue),
//! builds the state the services share
//! (`shared::Shared`) whole, starts the SMTP listeners, the forwarder, the control and metrics
//! servers, the maildrop pickup and the link watcher, and runs the shutdown. Signals are
//! handled here, and reloads (`reload`). Nothing imports this module but `main.rs` (and its tests); it holds no
//! protocol logic.
//!
//! Everything runs on one `LocalExecutor` on the calling thread (`run`/`run_with` block).

mod greeter;
mod metrics;
#[cfg(target_os = "linux")]
mod netlink;
mod readiness;
mod reload;
mod serve;
mod start;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;

use futures_lite::StreamExt;
use log::{info, warn};
use smol::LocalExecutor;

use crate::clock::QueueClock;
use crate::config::Config;
use crate::forward::LinkState;
use crate::sd_notify::Notifier;
use crate::shared::Shared;
use crate::store::StoreError;
use crate::tls::{self, TlsError};
use crate::wait::Wake;

pub use self::reload::Loader;

pub use self::serve::SHUTDOWN_GRACE;

/// How often a listen address that does not exist yet (EADDRNOTAVAIL) is tried again.
const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the daemon could not start; each maps to a sysexits code.
#[derive(Debug)]
pub enum DaemonError {
    CreateDataDir {
        path: String,
        source: io::Error,
    },
    OpenStore(StoreError),
    Bind {
        addr: SocketAddr,
        source: io::Error,
    },
    Signals(io::Error),
    /// `[tls]` or `[smarthost] ca_file` could not be loaded (a config error).
    Tls(TlsError),
    /// The store failed while serving (an I/O error: disk full, fsync failure); sled refuses
    /// every write after one, so the daemon stops for its supervisor to restart it.
    StoreFailed(String),
}

impl DaemonError {
    /// sysexits(3): 73 EX_CANTCREAT, 74 EX_IOERR, 77 EX_NOPERM, 69 EX_UNAVAILABLE, 71 EX_OSERR.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::CreateDataDir { .. } => 73,
            Self::OpenStore(_) => 74,
            Self::Bind { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => 77,
            Self::Bind { .. } => 69,
            Self::Signals(_) => 71,
            // EX_CONFIG: the PEM files named in the config are unusable.
            Self::Tls(_) => 78,
            // EX_TEMPFAIL: restart and try again.
            Self::StoreFailed(_) => 75,
        }
    }
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateDataDir { path, source } => {
                write!(f, "cannot create data_dir {path}: {source}")
            }
            Self::OpenStore(e) => write!(f, "cannot open the queue: {e}"),
            Self::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Self::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            Self::Tls(e) => write!(f, "TLS configuration: {e}"),
            Self::StoreFailed(e) => write!(
                f,
                "the queue failed while serving ({e}); exiting so that outpost is restarted \
                 with the queue reopened"
            ),
        }
    }
}

impl std::error::Error for DaemonError {}

/// Blocks, in the calling thread and so in every thread the daemon starts after it, each signal
/// that `run` does not handle and whose default would end the process: `SIGPWR`, `SIGSTKFLT`
/// and the real-time signals. Sent to the daemon, they stay pending instead of ending it without
/// its clean shutdown. The handled signals, the faults (`SIGSEGV`, `SIGBUS`, …: a crash),
/// `SIGCHLD`, `SIGWINCH`, `SIGURG`, `SIGCONT` and the stop signals keep their course (the C
/// library's own real-time signals are never blocked: `sigfillset` leaves them out).
#[cfg(target_os = "linux")]
fn block_unhandled_signals() {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal::*};
    let mut blocked = SigSet::all();
    for keep in [
        SIGTERM, SIGINT, SIGQUIT, SIGXCPU, SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF,
        SIGIO, SIGXFSZ, SIGPIPE, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGABRT, SIGSYS,
        SIGCHLD, SIGWINCH, SIGURG, SIGCONT, SIGTSTP, SIGTTIN, SIGTTOU, SIGKILL, SIGSTOP,
    ] {
        blocked.remove(keep);
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None) {
        log::warn!("cannot block SIGPWR, SIGSTKFLT and the real-time signals: {e}");
    }
}

#[cfg(not(target_os = "linux"))]
fn block_unhandled_signals() {}

/// The daemon: binds `config.listen`, serves until SIGTERM, SIGINT, SIGQUIT or SIGXCPU, then
/// shuts down cleanly. SIGHUP reloads the config through `load`, SIGUSR1 flushes the queue;
/// SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO and SIGXFSZ are logged and ignored. Blocks the
/// calling thread.
pub fn run(config: Config, load: Loader) -> Result<(), DaemonError> {
    use async_signal::Signal::*;
    block_unhandled_signals();
    let handled = [
        Term, Int, Quit, Xcpu, Hup, Usr1, Usr2, Alarm, Vtalarm, Prof, Io, Xfsz,
    ];
    let signals = async_signal::Signals::new(handled).map_err(DaemonError::Signals)?;
    let (listeners, late) = bind_or_wait(&config.listen)?;
    let (tls_listeners, late_tls) = bind_or_wait(&config.listen_tls)?;
    let late = late
        .into_iter()
        .map(|a| (a, false))
        .chain(late_tls.into_iter().map(|a| (a, true)))
        .collect();
    let link = LinkState::new();
    let flush_link = link.clone();
    let hup = Wake::new();
    let reload = (load, hup.clone());
    let shutdown = async move {
        let mut signals = signals;
        while let Some(signal) = signals.next().await {
            match signal {
                Ok(Term | Int | Quit | Xcpu) => {
                    info!("received {signal:?}: shutting down");
                    return;
                }
                Ok(Hup) => {
                    info!("received SIGHUP: reloading the configuration");
                    hup.notify();
                }
                Ok(Usr1) => {
                    info!("received SIGUSR1: flushing the queue");
                    flush_link.flush.notify();
                }
                Ok(signal) => info!("received {signal:?}: ignored"),
                Err(e) => warn!("signal stream: {e}"),
            }
        }
    };
    let daemon = Daemon {
        listeners,
        tls_listeners,
        late_listeners: late,
        link,
        reload: Some(reload),
    };
    run_daemon(config, daemon, shutdown)
}

/// The smarthosts and their settings as the forwarder would use them (`outpost test`).
pub fn route_params(config: &Config) -> Result<crate::forward::ForwardParams, DaemonError> {
    let tls = start::smarthost_client_configs(config)?;
    Ok(start::forward_params(config, &tls))
}

/// Binds every address (port 0 picks a free port; the log line shows the real one).
pub fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, DaemonError> {
    addrs
        .iter()
        .map(|&addr| TcpListener::bind(addr).map_err(|source| DaemonError::Bind { addr, source }))
        .collect()
}

/// Like `bind`, but an address that does not exist yet (EADDRNOTAVAIL: a router interface
/// that comes up late) is returned separately, for `serve` to keep trying.
fn bind_or_wait(addrs: &[SocketAddr]) -> Result<(Vec<TcpListener>, Vec<SocketAddr>), DaemonError> {
    let mut bound = Vec::new();
    let mut late = Vec::new();
    for &addr in addrs {
        match TcpListener::bind(addr) {
            Ok(listener) => bound.push(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
                warn!(
                    "cannot listen on {addr} yet ({e}): retrying every {}s",
                    BIND_RETRY.as_secs()
                );
                late.push(addr);
            }
            Err(source) => return Err(DaemonError::Bind { addr, source }),
        }
    }
    Ok((bound, late))
}

/// The daemon on already-bound listeners (tests bind 127.0.0.1:0): `listeners` speak SMTP
/// (with STARTTLS when `[tls]` is set), `tls_listeners` implicit TLS. Loads the TLS material,
/// opens and recovers the store, then serves until `shutdown` resolves. Blocks the calling
/// thread.
pub fn run_with(
    config: Config,
    listeners: Vec<TcpListener>,
    tls_listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let daemon = Daemon {
        listeners,
        tls_listeners,
        late_listeners: Vec::new(),
        link: LinkState::new(),
        reload: None,
    };
    run_daemon(config, daemon, shutdown)
}

/// What `run` and `run_with` hand to `run_daemon` besides the config.
struct Daemon {
    listeners: Vec<TcpListener>,
    tls_listeners: Vec<TcpListener>,
    late_listeners: Vec<(SocketAddr, bool)>,
    link: Rc<LinkState>,
    /// How to read the config again, and the wake-up SIGHUP pokes.
    reload: Option<(Loader, Rc<Wake>)>,
}

fn run_daemon(
    config: Config,
    daemon: Daemon,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let Daemon {
        listeners,
        tls_listeners,
        late_listeners,
        link,
        reload,
    } = daemon;
    let tls = match &config.tls {
        Some(files) => Some(tls::server_config(&files.cert, &files.key).map_err(DaemonError::Tls)?),
        None => None,
    };
    // Built here so a bad ca_file stops the start instead of failing every delivery.
    let smarthost_tls = start::smarthost_client_configs(&config)?;
    let greeter = greeter::Greeter::start(&listeners, &config);
    let (store, journal_pass) = match start::open_store(&config) {
        Ok(opened) => opened,
        Err(e) => {
            if let Some(greeter) = greeter {
                greeter.refuse(&config.hostname);
            }
            return Err(e);
        }
    };
    let greeted = greeter.map_or_else(Vec::new, greeter::Greeter::finish);
    let clock = QueueClock::new(store.clock_base());
    let listeners = start::registered(listeners, tls_listeners)?;
    let metrics = match config.metrics {
        Some(addr) => Some(metrics::bind(addr)?),
        None => None,
    };
    // After the store: its lock proves no other daemon owns this data_dir and its socket.
    let control = start::control_socket(&config.data_dir);
    let submit = start::submit_socket(&config.data_dir);
    let forward = start::forward_params(&config, &smarthost_tls);
    let ex = Rc::new(LocalExecutor::new());
    let notifier = Rc::new(Notifier::from_env());
    let (reloader, hup) = match reload {
        Some((load, hup)) => (Some(reload::reloader(load, notifier.clone())), Some(hup)),
        None => (None, None),
    };
    let shared = Shared::new(config, store, clock, tls, link, reloader);
    let on_hup = hup.map(|hup| ex.spawn(reload::on_signal(hup, shared.clone())));
    let journal = journal_pass.map(|pass| ex.spawn(start::journal_pass(shared.clone(), pass)));
    let ops = ex.spawn(serve::operations(
        ex.clone(),
        shared.clone(),
        control,
        metrics,
    ));
    let services = serve::Services {
        listeners,
        greeted,
        late_listeners,
        submit,
        forward,
        notifier,
    };
    async_io::block_on(ex.run(async {
        serve::serve(ex.clone(), services, shared.clone(), shutdown).await;
        drop(on_hup);
        drop(journal);
        drop(ops);
    }));
    match shared.intake().store_error() {
        Some(e) => Err(DaemonError::StoreFailed(e)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
