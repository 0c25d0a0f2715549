//! What the daemon's services share: the config, the store, the queue clock, the intake, the
//! forwarder's link state, the wake-ups and the shutdown flag, the inbound TLS config and the
//! count of open SMTP sessions. The daemon builds it whole at start; the SMTP listeners, the
//! control socket, the metrics endpoint, the local submission socket, the maildrop pickup and
//! the link watcher read it through accessors. A reload swaps the config, the TLS config, the
//! intake's policy and the forwarder's next parameters (`replace`): a reader keeps the `Rc` it
//! took, so an SMTP session runs on the config it started with. Single thread (`Rc`, `Cell`).
//! Starts no task and imports no service.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use event_listener::Event;
use rustls::ServerConfig;

use crate::clock::QueueClock;
use crate::config::Config;
use crate::forward::{ForwardParams, LinkState, NextParams};
use crate::intake::{Intake, IntakePolicy};
use crate::store::Store;
use crate::wait::{Shutdown, Wake};

/// The state every service of one daemon shares.
pub struct Shared {
    config: RefCell<Rc<Config>>,
    store: Store,
    clock: QueueClock,
    intake: Rc<Intake>,
    /// Poked after each commit and `queue release`: the forwarder looks at the queue at once.
    forwarder: Rc<Wake>,
    link: Rc<LinkState>,
    maildrop: Wake,
    /// Maildrop files the pickup cannot use: `(file name, reason)`.
    maildrop_waiting: RefCell<Vec<(String, String)>>,
    shutdown: Shutdown,
    tls: RefCell<Option<Arc<ServerConfig>>>,
    sessions: Sessions,
    /// The forwarder's parameters from the last reload, until it takes them.
    next_forward: NextParams,
    /// Reloads the config (`outpost reload`, SIGHUP); `None` where the daemon cannot.
    reloader: Option<Reloader>,
}

/// Re-reads the config and applies it to the daemon's shared state: a summary for the log and
/// `outpost reload`, or why the new config was refused.
pub type Reloader = Box<dyn Fn(&Shared) -> Result<String, String>>;

/// The intake's policy from `config`.
pub fn intake_policy(config: &Config) -> IntakePolicy {
    IntakePolicy {
        priority: config.priority.clone(),
        coalesce: config.coalesce,
        rate_limit: config.rate_limit,
        data_dir: config.data_dir.clone(),
        max_message_size: config.max_message_size,
        addresses: Some(config.local.address_map()),
        max_hops: config.max_hops,
    }
}

impl Shared {
    /// Everything the services share, built whole. `link` is the forwarder's (the signal
    /// handler flushes through it before the daemon exists).
    pub fn new(
        config: Config,
        store: Store,
        clock: QueueClock,
        tls: Option<Arc<ServerConfig>>,
        link: Rc<LinkState>,
        reloader: Option<Reloader>,
    ) -> Rc<Self> {
        let forwarder = Wake::new();
        let policy = intake_policy(&config);
        let intake = Rc::new(Intake::new(store.clone(), clock, forwarder.clone(), policy));
        Rc::new(Self {
            config: RefCell::new(Rc::new(config)),
            store,
            clock,
            intake,
            forwarder,
            link,
            maildrop: Wake::default(),
            maildrop_waiting: RefCell::new(Vec::new()),
            shutdown: Shutdown::default(),
            tls: RefCell::new(tls),
            sessions: Sessions::default(),
            next_forward: NextParams::default(),
            reloader,
        })
    }

    /// The config in force (a reload replaces it; the `Rc` taken stays as it was).
    pub fn config(&self) -> Rc<Config> {
        self.config.borrow().clone()
    }

    /// A reload: from now on new sessions and new mail use `config` and `tls`, and the
    /// forwarder's next pass `forward`.
    pub fn replace(&self, config: Config, tls: Option<Arc<ServerConfig>>, forward: ForwardParams) {
        self.intake.set_policy(intake_policy(&config));
        *self.config.borrow_mut() = Rc::new(config);
        *self.tls.borrow_mut() = tls;
        *self.next_forward.borrow_mut() = Some(forward);
        self.forwarder.notify();
    }

    /// Where a reload leaves the forwarder's new parameters.
    pub fn next_forward(&self) -> &NextParams {
        &self.next_forward
    }

    /// `outpost reload`, SIGHUP: re-reads the config and applies it.
    pub fn reload(&self) -> Result<String, String> {
        match &self.reloader {
            Some(reload) => reload(self),
            None => Err("this daemon was not started from a config file it can re-read\n".into()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn clock(&self) -> QueueClock {
        self.clock
    }

    /// The one door into the queue.
    pub fn intake(&self) -> &Rc<Intake> {
        &self.intake
    }

    /// The forwarder's wake-up: new mail, a released message.
    pub fn forwarder(&self) -> &Rc<Wake> {
        &self.forwarder
    }

    /// The forwarder's view of the smarthosts, and the flush signal (`queue flush`, SIGUSR1).
    pub fn link(&self) -> &Rc<LinkState> {
        &self.link
    }

    /// Poked by `sendmail` (over the control socket): pick up the maildrop now.
    pub fn maildrop(&self) -> &Wake {
        &self.maildrop
    }

    /// The maildrop files the pickup cannot use, as it last saw them.
    pub fn set_maildrop_waiting(&self, files: Vec<(String, String)>) {
        *self.maildrop_waiting.borrow_mut() = files;
    }

    /// `mailq` and `status`: the maildrop files waiting because the pickup cannot use them,
    /// one line each after a count; empty when there are none.
    pub fn maildrop_waiting_text(&self) -> String {
        let files = self.maildrop_waiting.borrow();
        if files.is_empty() {
            return String::new();
        }
        let mut text = format!("maildrop: {} files waiting, not sent:\n", files.len());
        for (name, reason) in files.iter() {
            text.push_str(&format!("  {name}: {reason}\n"));
        }
        text
    }

    /// Raised at SIGTERM (or a failed store): stop accepting, close idle sessions.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// `[tls]` loaded: STARTTLS on `listen`, and the `listen_tls` ports.
    pub fn tls(&self) -> Option<Arc<ServerConfig>> {
        self.tls.borrow().clone()
    }

    /// The open SMTP sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}

/// Counts open SMTP sessions and numbers new ones.
pub struct Sessions {
    open: Cell<usize>,
    ended: Event,
    next: Cell<u64>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            open: Cell::new(0),
            ended: Event::new(),
            next: Cell::new(1),
        }
    }
}

impl Sessions {
    /// Sessions currently open.
    pub fn count(&self) -> usize {
        self.open.get()
    }

    /// The number of the next session (`session=<n>` in the log).
    pub fn next_id(&self) -> u64 {
        let id = self.next.get();
        self.next.set(id.wrapping_add(1));
        id
    }

    /// Waits until no session is open or `deadline` passes; true if all ended.
    pub async fn ended(&self, deadline: Instant) -> bool {
        crate::wait::until(&self.ended, deadline, || self.open.get() == 0).await
    }
}

/// Counts one open session; dropping it (session task ends or is cancelled) uncounts it.
pub struct SessionSlot {
    shared: Rc<Shared>,
}

impl SessionSlot {
    pub fn new(shared: Rc<Shared>) -> Self {
        let open = &shared.sessions.open;
        open.set(open.get() + 1);
        Self { shared }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let sessions = &self.shared.sessions;
        sessions.open.set(sessions.open.get().saturating_sub(1));
        sessions.ended.notify(usize::MAX);
    }
}
