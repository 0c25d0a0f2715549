//! The smol glue: the daemon's start-up and shutdown, listeners, connection tasks. The only code
//! with sockets, timers and signals on the receiving side. It drives the sans-I/O `smtp`
//! sessions and reaches the journal only through the `store` API (never sled directly).
//!
//! Everything runs on one `LocalExecutor` on the calling thread (`run`/`run_with` block).

mod auth;
mod conn;
mod listen;
pub mod metrics;
#[cfg(target_os = "linux")]
mod netlink;
mod space;

use std::cell::{Cell, RefCell};
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
use log::{debug, error, info, warn};
use rustls::{ClientConfig, ServerConfig};
use smol::LocalExecutor;

use crate::clock::QueueClock;
use crate::coalesce;
use crate::config::{Config, SmarthostTls};
use crate::forward::oauth::TokenUrl;
use crate::forward::{
    self, ClientCredentials, CredentialKind, ForwardParams, LinkState, OAuth2, RetryPolicy, Route,
    Wake,
};
use crate::priority::{classify, watched_headers, HeaderWatch, Priority};
use crate::rate::{SenderRates, Verdict};
use crate::smtp::client::TlsPolicy;
use crate::smtp::server::MailVerdict;
use crate::store::{MessageInfo, Store, StoreError, StoreOptions};

use crate::tls::{self, TlsError};

/// How long in-flight sessions (and a delivery in progress) get to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often the queue clock is persisted (also at shutdown) and failed messages are purged.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);
/// sled's background flush; commits flush explicitly anyway.
const STORE_FLUSH_EVERY_MS: u64 = 1000;
/// Messages the forwarder loads per pass (the bounded active window).
const FORWARD_WINDOW: usize = 64;
/// How often a listen address that does not exist yet (EADDRNOTAVAIL) is tried again.
const BIND_RETRY: Duration = Duration::from_secs(5);

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

    /// Waits for `wake` or `period`, whichever comes first; `true` when shutdown came first
    /// (the caller's loop should end).
    pub async fn interrupts(&self, period: Duration, wake: impl Future<Output = ()>) -> bool {
        let timer = async {
            Timer::after(period).await;
        };
        future::or(
            async {
                future::or(wake, timer).await;
                false
            },
            async {
                self.wait().await;
                true
            },
        )
        .await
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
    /// Raised when the store fails with an I/O error: shut down, exit 75.
    pub store_failure: Shutdown,
    store_error: RefCell<Option<String>>,
    /// `[tls]` loaded: STARTTLS on `listen`, and the `listen_tls` ports.
    pub tls: Option<Arc<ServerConfig>>,
    /// Roots for each smarthost's certificate (`tls` other than "none"), in config order;
    /// entries with the same `ca_file` share one client config.
    pub smarthost_tls: Vec<Option<Arc<ClientConfig>>>,
    /// The forwarder's view of the smarthosts, and the flush signal (`queue flush`, SIGUSR1).
    pub link: Rc<LinkState>,
    /// Poked by `sendmail` (over the control socket): pick up the maildrop now.
    pub maildrop: Rc<Wake>,
    /// Messages committed since start (SMTP and maildrop), for the metrics.
    pub accepted: Cell<u64>,
    /// Listen addresses that did not exist at start (EADDRNOTAVAIL), flagged `true` for
    /// implicit TLS: `serve` keeps trying to bind them.
    pub late_listeners: RefCell<Vec<(SocketAddr, bool)>>,
    sessions: Cell<usize>,
    session_ended: Event,
    next_session: Cell<u64>,
    /// `[rate_limit]`: messages counted per envelope sender (SMTP only: `sendmail` callers
    /// are local programs that cannot be asked to retry).
    sender_rates: Option<RefCell<SenderRates>>,
    /// The header fields `header_watch` looks for: those `[[priority]]` names, and Subject
    /// with `[coalesce]`.
    watched: Rc<[String]>,
}

impl Ctx {
    pub fn new(
        config: Config,
        store: Store,
        clock: QueueClock,
        tls: Option<Arc<ServerConfig>>,
        smarthost_tls: Vec<Option<Arc<ClientConfig>>>,
    ) -> Rc<Self> {
        let mut watched = watched_headers(&config.priority);
        if config.coalesce.is_some() && !watched.iter().any(|n| n == "subject") {
            watched.push("subject".to_owned());
        }
        Rc::new(Self {
            watched: watched.into(),
            store,
            clock,
            wake: Wake::new(),
            shutdown: Shutdown::default(),
            store_failure: Shutdown::default(),
            store_error: RefCell::new(None),
            tls,
            smarthost_tls,
            link: LinkState::new(),
            maildrop: Wake::new(),
            accepted: Cell::new(0),
            late_listeners: RefCell::new(Vec::new()),
            sessions: Cell::new(0),
            session_ended: Event::new(),
            next_session: Cell::new(1),
            sender_rates: config
                .rate_limit
                .map(|limit| RefCell::new(SenderRates::new(limit))),
            config,
        })
    }

    /// A scanner for the header fields the `[[priority]]` rules name, and Subject with
    /// `[coalesce]` (none: it does nothing).
    pub fn header_watch(&self) -> HeaderWatch {
        HeaderWatch::new(Rc::clone(&self.watched))
    }

    /// `[priority]` and `[coalesce]` of a message about to be committed, from its envelope
    /// and the fields `header_watch` collected.
    pub fn classify(&self, info: &mut MessageInfo, fields: &[(String, String)]) {
        info.priority = self.priority_of(info, fields);
        info.coalesce = self.config.coalesce.and_then(|_| {
            let subject = fields.iter().find(|(n, _)| n == "subject");
            coalesce::key(
                &info.sender,
                &info.recipients,
                subject.map(|(_, v)| v.as_str()),
            )
        });
    }

    /// The `[[priority]]` of a message about to be committed.
    pub fn priority_of(&self, info: &MessageInfo, fields: &[(String, String)]) -> Priority {
        classify(
            &self.config.priority,
            &info.sender,
            &info.recipients,
            fields,
        )
    }

    /// `Next::MailCheck`: counts one message from `sender` against `[rate_limit]`.
    pub fn check_sender(&self, sender: &str) -> MailVerdict {
        let Some(rates) = &self.sender_rates else {
            return MailVerdict::Allowed;
        };
        let mut rates = rates.borrow_mut();
        match rates.take(sender, self.clock.now()) {
            Verdict::Allowed => MailVerdict::Allowed,
            Verdict::Exceeded { retry_after } => MailVerdict::RateExceeded {
                messages: rates.limit().messages,
                window: rates.limit().window,
                retry_after,
            },
        }
    }

    /// Counts one committed message and pokes the forwarder.
    pub fn accepted_one(&self) {
        self.accepted.set(self.accepted.get().saturating_add(1));
        self.wake.notify();
    }

    /// A store operation failed. An I/O error (disk full, failed fsync) leaves sled refusing
    /// every later write and the page cache's state unknown (PostgreSQL's "fsyncgate"): the
    /// only safe recovery is a fresh open, so the daemon shuts down and exits 75 for its
    /// supervisor to restart it. Other errors (a damaged record) concern one message only.
    pub fn store_failed(&self, e: &StoreError) {
        if !matches!(e, StoreError::Io(_) | StoreError::Sled(_)) || self.store_failure.is_raised() {
            return;
        }
        error!("the queue failed: {e}; shutting down (the queue is reopened at the next start)");
        *self.store_error.borrow_mut() = Some(e.to_string());
        self.store_failure.raise();
    }

    /// Free space left in `data_dir` for new mail, when it is below the reserve.
    pub fn short_of_space(&self) -> Option<u64> {
        let available = space::available(&self.config.data_dir)?;
        (available < space::reserve(&self.config)).then_some(available)
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
        crate::wait::until(&self.session_ended, deadline, || self.sessions.get() == 0).await
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

/// The daemon: binds `config.listen`, serves until SIGTERM or SIGINT (SIGUSR1 flushes the
/// queue), then shuts down cleanly. Blocks the calling thread.
pub fn run(config: Config) -> Result<(), DaemonError> {
    use async_signal::Signal;
    let signals = async_signal::Signals::new([Signal::Term, Signal::Int, Signal::Usr1])
        .map_err(DaemonError::Signals)?;
    let (listeners, late) = bind_or_wait(&config.listen)?;
    let (tls_listeners, late_tls) = bind_or_wait(&config.listen_tls)?;
    let late = late
        .into_iter()
        .map(|a| (a, false))
        .chain(late_tls.into_iter().map(|a| (a, true)))
        .collect();
    let link = LinkState::new();
    let flush_link = link.clone();
    let shutdown = async move {
        let mut signals = signals;
        while let Some(signal) = signals.next().await {
            match signal {
                Ok(Signal::Usr1) => {
                    info!("received SIGUSR1: flushing the queue");
                    flush_link.flush.notify();
                }
                Ok(signal) => {
                    info!("received {signal:?}: shutting down");
                    return;
                }
                Err(e) => warn!("signal stream: {e}"),
            }
        }
    };
    run_daemon(config, listeners, tls_listeners, late, link, shutdown)
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
    let link = LinkState::new();
    run_daemon(config, listeners, tls_listeners, Vec::new(), link, shutdown)
}

fn run_daemon(
    config: Config,
    listeners: Vec<TcpListener>,
    tls_listeners: Vec<TcpListener>,
    late_listeners: Vec<(SocketAddr, bool)>,
    link: Rc<LinkState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let tls = match &config.tls {
        Some(files) => Some(tls::server_config(&files.cert, &files.key).map_err(DaemonError::Tls)?),
        None => None,
    };
    // Built here so a bad ca_file stops the start instead of failing every delivery.
    let smarthost_tls = smarthost_client_configs(&config)?;
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
    let metrics = match config.metrics {
        Some(addr) => Some(metrics::bind(addr)?),
        None => None,
    };
    // After the store: its lock proves no other daemon owns this data_dir and its socket.
    // Without it the relay still relays (and sendmail's maildrop is still picked up every few
    // seconds); only `outpost queue`/`status` cannot reach the daemon.
    let control = match crate::control::bind(&config.data_dir) {
        Ok(listener) => Some(listener),
        Err(e) => {
            error!(
                "cannot create the control socket in {}: {e}; `outpost queue` and `outpost \
                 status` will not reach this daemon",
                config.data_dir.display()
            );
            None
        }
    };
    let ex = Rc::new(LocalExecutor::new());
    let mut ctx = Ctx::new(config, store, clock, tls, smarthost_tls);
    if let Some(fresh) = Rc::get_mut(&mut ctx) {
        fresh.link = link;
        *fresh.late_listeners.get_mut() = late_listeners;
    }
    let ops = ex.spawn(operations(ex.clone(), ctx.clone(), control, metrics));
    let served = ctx.clone();
    async_io::block_on(ex.run(async {
        serve(ex.clone(), listeners, ctx, shutdown).await;
        drop(ops);
    }));
    match served.store_error.take() {
        Some(e) => Err(DaemonError::StoreFailed(e)),
        None => Ok(()),
    }
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
            "{} damaged queue records were moved to the corrupt tree",
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
    // With no smarthost the forwarder itself logs the one "mail is held" warning.
    let stop_forwarder = Wake::new();
    let forwarder = ex.spawn(forward::run_linked(
        ctx.store.clone(),
        ctx.clock,
        forward_params(&ctx.config, &ctx.smarthost_tls),
        ctx.wake.clone(),
        stop_forwarder.clone(),
        ctx.link.clone(),
    ));
    let late: Vec<_> = ctx.late_listeners.borrow_mut().drain(..).collect();
    let late_acceptors: Vec<_> = late
        .into_iter()
        .map(|(addr, implicit_tls)| {
            ex.spawn(late_listener(ex.clone(), addr, ctx.clone(), implicit_tls))
        })
        .collect();
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

    future::or(shutdown, ctx.store_failure.wait()).await;
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    info!(
        "shutdown: no new connections; {} sessions in flight",
        ctx.sessions()
    );
    ctx.shutdown.raise();
    stop_forwarder.notify();
    for acceptor in acceptors.into_iter().chain(late_acceptors) {
        acceptor.await;
    }
    if !ctx.sessions_ended(deadline).await {
        warn!(
            "shutdown: {} sessions still open after {SHUTDOWN_GRACE:?}; dropping them",
            ctx.sessions()
        );
    }
    if crate::wait::before(deadline, forwarder).await.is_none() {
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

/// Keeps binding `addr` (which did not exist at start) every `BIND_RETRY`, then accepts on it
/// like any listener. Ends at shutdown.
async fn late_listener(
    ex: Rc<LocalExecutor<'static>>,
    addr: SocketAddr,
    ctx: Rc<Ctx>,
    implicit_tls: bool,
) {
    let listener = loop {
        if ctx.shutdown.interrupts(BIND_RETRY, future::pending()).await {
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
    listen::accept_loop(ex, listener, ctx, implicit_tls).await;
}

/// The operator's side: control socket, maildrop pickup, metrics. Cancelled at the end of
/// `serve` (by dropping the task).
async fn operations(
    ex: Rc<LocalExecutor<'static>>,
    ctx: Rc<Ctx>,
    control: Option<Async<std::os::unix::net::UnixListener>>,
    metrics: Option<Async<TcpListener>>,
) {
    let control = control.map(|l| ex.spawn(crate::control::serve(ex.clone(), l, ctx.clone())));
    let maildrop = ex.spawn(crate::sendmail::pickup_loop(ctx.clone()));
    let metrics = metrics.map(|l| ex.spawn(metrics::serve(ex.clone(), l, ctx.clone())));
    #[cfg(target_os = "linux")]
    let _netlink = match netlink::open() {
        Ok(socket) => Some(ex.spawn(netlink::watch(socket, ctx.clone()))),
        Err(e) => {
            warn!("cannot watch for network changes (netlink): {e}");
            None
        }
    };
    match control {
        Some(control) => control.await,
        None => ctx.shutdown.wait().await,
    }
    drop(maildrop);
    drop(metrics);
}

/// One TLS client config per smarthost that uses TLS, built once per distinct `ca_file`: the
/// root store is the bulk of a client config, and three routes over the same PKI need one.
fn smarthost_client_configs(
    config: &Config,
) -> Result<Vec<Option<Arc<ClientConfig>>>, DaemonError> {
    let mut built: Vec<(Option<&std::path::Path>, Arc<ClientConfig>)> = Vec::new();
    let mut out = Vec::with_capacity(config.smarthosts.len());
    for smarthost in &config.smarthosts {
        if smarthost.tls == SmarthostTls::None {
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

fn forward_params(config: &Config, tls_configs: &[Option<Arc<ClientConfig>>]) -> ForwardParams {
    let routes = config
        .smarthosts
        .iter()
        .enumerate()
        .map(|(index, smarthost)| Route {
            address: smarthost.address.clone(),
            tls: match smarthost.tls {
                SmarthostTls::None => TlsPolicy::None,
                SmarthostTls::StartTls => TlsPolicy::StartTls,
                SmarthostTls::Implicit => TlsPolicy::Implicit,
            },
            tls_config: tls_configs.get(index).cloned().flatten(),
            credentials: smarthost.auth.as_ref().map(|auth| ClientCredentials {
                username: auth.username.clone(),
                password: auth.password.expose().to_owned(),
                kind: CredentialKind::Password,
            }),
            oauth2: smarthost.oauth2.as_ref().and_then(|oauth| {
                Some(OAuth2 {
                    username: oauth.username.clone(),
                    // Checked when the config was loaded.
                    url: TokenUrl::parse(&oauth.token_url).ok()?,
                    client_id: oauth.client_id.clone(),
                    client_secret: oauth.client_secret.as_ref().map(|s| s.expose().to_owned()),
                    refresh_token_file: oauth.refresh_token_file.clone(),
                    scope: oauth.scope.clone(),
                })
            }),
        })
        .collect();
    ForwardParams {
        routes,
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
            // Also how a store that failed under the forwarder alone (no session to notice)
            // gets the daemon restarted within a minute rather than redelivering forever.
            ctx.store_failed(&e);
        }
        match ctx
            .store
            .purge_failed(now.saturating_sub(retention_ms))
            .await
        {
            Ok(0) => {}
            Ok(n) => info!("purged {n} failed messages older than queue.failed_retention"),
            Err(e) => {
                error!("cannot purge failed messages: {e}");
                ctx.store_failed(&e);
            }
        }
    }
}

#[cfg(test)]
mod tests;
