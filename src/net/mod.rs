//! The smol glue: the daemon's start-up and shutdown, listeners, connection tasks. The only code
//! with sockets, timers and signals on the receiving side. It drives the sans-I/O `smtp`
//! sessions and reaches the journal only through the `store` API (never sled directly).
//!
//! Everything runs on one `LocalExecutor` on the calling thread (`run`/`run_with` block).

mod auth;
mod conn;
mod listen;
pub mod tls;

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use event_listener::Event;
use futures_lite::{future, StreamExt};
use log::{error, info, warn};
use rustls::{ClientConfig, ServerConfig};
use smol::LocalExecutor;

use crate::clock::QueueClock;
use crate::config::{Config, SmarthostTls};
use crate::forward::{self, ClientCredentials, ForwardParams, RetryPolicy, Wake};
use crate::smtp::client::TlsPolicy;
use crate::store::{Store, StoreError, StoreOptions};

use self::tls::TlsError;

/// How long in-flight sessions (and a delivery in progress) get to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often the queue clock is persisted (also at shutdown) and failed messages are purged.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);
/// sled's background flush; commits flush explicitly anyway.
const STORE_FLUSH_EVERY_MS: u64 = 1000;
/// Messages the forwarder loads per pass (the bounded active window).
const FORWARD_WINDOW: usize = 64;

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
        }
    }
}

impl std::error::Error for DaemonError {}

/// A one-way broadcast flag: once raised, every current and future waiter returns.
#[derive(Default)]
pub struct Shutdown {
    raised: Cell<bool>,
    event: Event,
}

impl Shutdown {
    pub fn raise(&self) {
        self.raised.set(true);
        self.event.notify(usize::MAX);
    }

    pub fn is_raised(&self) -> bool {
        self.raised.get()
    }

    pub async fn wait(&self) {
        while !self.raised.get() {
            let listener = self.event.listen();
            if self.raised.get() {
                return;
            }
            listener.await;
        }
    }
}

/// What every connection task shares (single thread: `Rc`, `Cell`).
pub struct Ctx {
    pub config: Config,
    pub store: Store,
    pub clock: QueueClock,
    /// Poked after each commit so the forwarder picks new mail up at once.
    pub wake: Rc<Wake>,
    /// Raised at SIGTERM: stop accepting, close idle sessions.
    pub shutdown: Shutdown,
    /// `[tls]` loaded: STARTTLS on `listen`, and the `listen_tls` ports.
    pub tls: Option<Arc<ServerConfig>>,
    /// Roots for the smarthost's certificate (`[smarthost] tls` other than "none").
    pub smarthost_tls: Option<Arc<ClientConfig>>,
    sessions: Cell<usize>,
    session_ended: Event,
    next_session: Cell<u64>,
}

impl Ctx {
    pub fn new(
        config: Config,
        store: Store,
        clock: QueueClock,
        tls: Option<Arc<ServerConfig>>,
        smarthost_tls: Option<Arc<ClientConfig>>,
    ) -> Rc<Self> {
        Rc::new(Self {
            config,
            store,
            clock,
            wake: Wake::new(),
            shutdown: Shutdown::default(),
            tls,
            smarthost_tls,
            sessions: Cell::new(0),
            session_ended: Event::new(),
            next_session: Cell::new(1),
        })
    }

    /// Sessions currently open.
    pub fn sessions(&self) -> usize {
        self.sessions.get()
    }

    fn next_session_id(&self) -> u64 {
        let id = self.next_session.get();
        self.next_session.set(id.wrapping_add(1));
        id
    }

    /// Waits until no session is open or `deadline` passes; true if all ended.
    async fn sessions_ended(&self, deadline: Instant) -> bool {
        loop {
            if self.sessions.get() == 0 {
                return true;
            }
            let listener = self.session_ended.listen();
            if self.sessions.get() == 0 {
                return true;
            }
            let timed_out = future::or(
                async {
                    listener.await;
                    false
                },
                async {
                    Timer::at(deadline).await;
                    true
                },
            );
            if timed_out.await {
                return false;
            }
        }
    }
}

/// Counts one open session; dropping it (session task ends or is cancelled) uncounts it.
struct SessionSlot {
    ctx: Rc<Ctx>,
}

impl SessionSlot {
    fn new(ctx: Rc<Ctx>) -> Self {
        ctx.sessions.set(ctx.sessions.get() + 1);
        Self { ctx }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.ctx
            .sessions
            .set(self.ctx.sessions.get().saturating_sub(1));
        self.ctx.session_ended.notify(usize::MAX);
    }
}

/// The daemon: binds `config.listen`, serves until SIGTERM or SIGINT, then shuts down cleanly.
/// Blocks the calling thread.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let signals =
        async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])
            .map_err(DaemonError::Signals)?;
    let listeners = bind(&config.listen)?;
    let tls_listeners = bind(&config.listen_tls)?;
    run_with(config, listeners, tls_listeners, async move {
        let mut signals = signals;
        if let Some(Ok(signal)) = signals.next().await {
            info!("received {signal:?}: shutting down");
        }
    })
}

/// Binds every address (port 0 picks a free port; the log line shows the real one).
pub fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, DaemonError> {
    addrs
        .iter()
        .map(|&addr| TcpListener::bind(addr).map_err(|source| DaemonError::Bind { addr, source }))
        .collect()
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
    let tls = match &config.tls {
        Some(files) => Some(tls::server_config(&files.cert, &files.key).map_err(DaemonError::Tls)?),
        None => None,
    };
    // Built here so a bad ca_file stops the start instead of failing every delivery.
    let smarthost_tls = match &config.smarthost {
        Some(smarthost) if smarthost.tls != SmarthostTls::None => {
            Some(tls::client_config(smarthost.ca_file.as_deref()).map_err(DaemonError::Tls)?)
        }
        _ => None,
    };
    let store = open_store(&config)?;
    let clock = QueueClock::new(store.clock_base());
    let plain = listeners.into_iter().map(|l| (l, false));
    let implicit = tls_listeners.into_iter().map(|l| (l, true));
    let listeners = plain
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
        .collect::<Result<Vec<_>, _>>()?;
    let ex = Rc::new(LocalExecutor::new());
    let ctx = Ctx::new(config, store, clock, tls, smarthost_tls);
    async_io::block_on(ex.run(serve(ex.clone(), listeners, ctx, shutdown)));
    Ok(())
}

/// Opens the store in `data_dir` (created if missing) and sweeps what a crash left behind.
fn open_store(config: &Config) -> Result<Store, DaemonError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| DaemonError::CreateDataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let options = StoreOptions {
        cache_bytes: config.store.cache_bytes,
        flush_every_ms: Some(STORE_FLUSH_EVERY_MS),
        max_bytes: config.queue.max_bytes,
    };
    let store = Store::open(dir, options).map_err(DaemonError::OpenStore)?;
    let report = store.recover().map_err(DaemonError::OpenStore)?;
    info!(
        "queue opened: data_dir={} messages={} swept_spools={} quarantined={}",
        dir.display(),
        report.messages,
        report.swept_spools,
        report.quarantined
    );
    if report.quarantined > 0 {
        warn!(
            "{} undecodable queue records were moved to the corrupt tree",
            report.quarantined
        );
    }
    Ok(store)
}

/// Serves `listeners` (each flagged `true` for implicit TLS) until `shutdown` resolves, then
/// stops accepting, gives in-flight sessions and the forwarder `SHUTDOWN_GRACE` to finish, and
/// saves the queue clock.
pub async fn serve(
    ex: Rc<LocalExecutor<'static>>,
    listeners: Vec<(Async<TcpListener>, bool)>,
    ctx: Rc<Ctx>,
    shutdown: impl Future<Output = ()>,
) {
    for (listener, implicit_tls) in &listeners {
        let kind = match (implicit_tls, ctx.tls.is_some()) {
            (true, _) => " (implicit TLS)",
            (false, true) => " (STARTTLS)",
            (false, false) => "",
        };
        match listener.get_ref().local_addr() {
            Ok(addr) => info!("listening on {addr}{kind}"),
            Err(e) => warn!("listening on an address that cannot be read back: {e}"),
        }
    }
    if ctx.config.smarthost.is_none() {
        warn!("no smarthost configured: mail is accepted and held");
    }
    let stop_forwarder = Wake::new();
    let forwarder = ex.spawn(forward::run(
        ctx.store.clone(),
        ctx.clock,
        forward_params(&ctx.config, ctx.smarthost_tls.clone()),
        ctx.wake.clone(),
        stop_forwarder.clone(),
    ));
    let housekeeper = ex.spawn(housekeeping(ctx.clone()));
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|(listener, implicit_tls)| {
            ex.spawn(listen::accept_loop(
                ex.clone(),
                listener,
                ctx.clone(),
                implicit_tls,
            ))
        })
        .collect();

    shutdown.await;
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    info!(
        "shutdown: no new connections; {} sessions in flight",
        ctx.sessions()
    );
    ctx.shutdown.raise();
    stop_forwarder.notify();
    for acceptor in acceptors {
        acceptor.await;
    }
    if !ctx.sessions_ended(deadline).await {
        warn!(
            "shutdown: {} sessions still open after {SHUTDOWN_GRACE:?}; dropping them",
            ctx.sessions()
        );
    }
    let forwarder_done = future::or(
        async {
            forwarder.await;
            true
        },
        async {
            Timer::at(deadline).await;
            false
        },
    );
    if !forwarder_done.await {
        warn!("shutdown: the forwarder did not stop within {SHUTDOWN_GRACE:?}; cancelling it");
    }
    drop(housekeeper);
    if let Err(e) = ctx.store.save_clock(ctx.clock.now()) {
        error!("shutdown: cannot save the queue clock: {e}");
    }
    match ctx.store.flush().await {
        Ok(()) => info!("shutdown complete"),
        Err(e) => error!("shutdown: final flush failed: {e}"),
    }
}

fn forward_params(config: &Config, tls_config: Option<Arc<ClientConfig>>) -> ForwardParams {
    ForwardParams {
        smarthost: config.smarthost.as_ref().map(|s| s.address.clone()),
        hostname: config.hostname.clone(),
        policy: RetryPolicy {
            retry_min: config.queue.retry_min,
            retry_max: config.queue.retry_max,
            max_age: config.queue.max_age,
        },
        window: FORWARD_WINDOW,
        command_timeout: config.timeouts.smarthost,
        data_end_timeout: config.timeouts.smarthost_data_end,
        tls: match config.smarthost.as_ref().map(|s| s.tls) {
            None | Some(SmarthostTls::None) => TlsPolicy::None,
            Some(SmarthostTls::StartTls) => TlsPolicy::StartTls,
            Some(SmarthostTls::Implicit) => TlsPolicy::Implicit,
        },
        tls_config,
        credentials: config
            .smarthost
            .as_ref()
            .and_then(|s| s.auth.as_ref())
            .map(|auth| ClientCredentials {
                username: auth.username.clone(),
                password: auth.password.expose().to_owned(),
            }),
    }
}

/// Every `HOUSEKEEPING_INTERVAL`: persist the queue clock (it counts time spent queued; saving
/// bounds what a crash can lose of it) and delete failed messages older than
/// `queue.failed_retention` (queue time, so a clock jump cannot purge early).
async fn housekeeping(ctx: Rc<Ctx>) {
    let retention_ms =
        u64::try_from(ctx.config.queue.failed_retention.as_millis()).unwrap_or(u64::MAX);
    loop {
        Timer::after(HOUSEKEEPING_INTERVAL).await;
        let now = ctx.clock.now();
        if let Err(e) = ctx.store.save_clock(now) {
            error!("cannot save the queue clock: {e}");
        }
        match ctx
            .store
            .purge_failed(now.saturating_sub(retention_ms))
            .await
        {
            Ok(0) => {}
            Ok(n) => info!("purged {n} failed messages older than queue.failed_retention"),
            Err(e) => error!("cannot purge failed messages: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;
