//! The one door into the queue (Postfix's `cleanup`): an SMTP commit, a maildrop pickup and a
//! DSN all enter here. Intake owns what happens to a message on its way in: the envelope data
//! it is stored with, classification (`[[priority]]` and the `[coalesce]` key, from the header
//! fields collected as the body arrives), the `[rate_limit]` check, the free-space reserve,
//! the accepted counter, waking the forwarder, reporting a failed store, and the one
//! `status=queued` (or `DSN queued as`) log line per message, and local names: `domain`,
//! aliases and `admin` applied to every envelope (`mapping`). Never talks to a peer, never
//! touches sled directly (only the `store` API), and never imports the daemon that builds it.

mod notice;
mod rejects;
mod space;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;

use log::{error, info};

use crate::clock::QueueClock;
use crate::coalesce::{self, CoalescePolicy};
use crate::logfmt::Escaped;
use crate::mapping::AddressMap;
use crate::message::HeaderWatch;
use crate::priority::{priority_of, watched_headers, Priority, PriorityRule};
use crate::rate::{SenderLimit, SenderRates, Verdict};
use crate::smtp::server::MailVerdict;
use crate::store::{MessageInfo, QueueId, Spool, Store, StoreError, MAX_EXTENT};
use crate::wait::{Shutdown, Wake};

pub use self::rejects::Reject;
use self::rejects::Rejects;

/// What intake applies to every message, from the config.
#[derive(Clone, Debug, Default)]
pub struct IntakePolicy {
    /// `[[priority]]` rules.
    pub priority: Vec<PriorityRule>,
    /// `[coalesce]`: the key stored at commit; `None`: off.
    pub coalesce: Option<CoalescePolicy>,
    /// `[rate_limit]`: messages per envelope sender (SMTP only: `sendmail` callers are local
    /// programs that cannot be asked to retry).
    pub rate_limit: Option<SenderLimit>,
    /// Where the queue lives, for the free-space check.
    pub data_dir: PathBuf,
    /// `max_message_size`, which sizes the free-space reserve.
    pub max_message_size: u64,
    /// `domain`, aliases and `admin`: applied to every envelope (SMTP, maildrop and DSNs);
    /// `None`: envelopes are stored as given.
    pub addresses: Option<AddressMap>,
    /// `max_hops`: more `Received:` fields is a mail loop (0: no limit).
    pub max_hops: u32,
}

/// Where a message comes from; decides its log line and whether it is classified and counted.
pub enum Source<'a> {
    /// An SMTP client: `tag` is the session's `session=<n> peer=<ip>`, `user` the AUTH user,
    /// `size` the message size the session counted.
    Smtp {
        tag: &'a dyn fmt::Display,
        user: Option<&'a str>,
        size: u64,
    },
    /// A local submission over the submission socket: `tag` is the session's, `uid` the
    /// submitting user (SO_PEERCRED), `size` the message size the session counted.
    Local {
        tag: &'a dyn fmt::Display,
        uid: u32,
        size: u64,
    },
    /// A file from `sendmail`'s maildrop.
    Maildrop,
    /// A delivery-status notification about message `of`.
    Dsn { of: QueueId },
    /// A notice to `admin` (`notify_admin`); `kind` names it in the log line.
    Notice { kind: &'static str },
}

/// The envelope of a message entering the queue.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Empty for the null reverse path `<>`.
    pub sender: String,
    pub recipients: Vec<String>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// Wall-clock Unix seconds at receipt.
    pub received_unix: u64,
}

/// Why a message was not queued.
#[derive(Debug)]
pub enum IntakeError {
    /// Committed bytes plus this message would exceed `queue.max_bytes`.
    QueueFull,
    /// The store failed (already reported: see `Intake::store_failed`).
    Store(StoreError),
    /// `received` `Received:` fields, more than `max_hops`: a mail loop; nothing was stored.
    TooManyHops { received: u32, max_hops: u32 },
}

impl fmt::Display for IntakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueueFull => f.write_str("queue full"),
            Self::Store(e) => write!(f, "{e}"),
            Self::TooManyHops { received, max_hops } => write!(
                f,
                "mail loop: {received} Received: header fields, more than max_hops ({max_hops})"
            ),
        }
    }
}

impl std::error::Error for IntakeError {}

/// The door. One per daemon, shared on its thread.
pub struct Intake {
    store: Store,
    clock: QueueClock,
    /// Poked after each SMTP or maildrop commit so the forwarder picks new mail up at once.
    forwarder: Rc<Wake>,
    /// The policy, the header fields it watches and the per-sender counts (replaced together
    /// by `set_policy`).
    rules: RefCell<Rc<Rules>>,
    /// SMTP and maildrop messages committed since start, for the metrics.
    accepted: Cell<u64>,
    /// Mail refused at the door since start, by reason, for the metrics.
    rejects: Rejects,
    /// Raised when the store fails with an I/O error: the daemon shuts down and exits 75.
    store_failure: Shutdown,
    store_error: RefCell<Option<String>>,
    /// Notices queued since start (their Message-IDs).
    notices: Cell<u64>,
    /// Kinds of notice already logged as not sent for want of `admin` (logged once each).
    unsent_notices: RefCell<Vec<&'static str>>,
}

/// What `IntakePolicy` makes of the intake: the policy, the header fields its `[[priority]]`
/// rules name (and Subject with `[coalesce]`) and the per-sender counts of `[rate_limit]`.
struct Rules {
    policy: IntakePolicy,
    watched: Rc<[String]>,
    sender_rates: Option<Rc<RefCell<SenderRates>>>,
}

impl Rules {
    fn new(policy: IntakePolicy) -> Self {
        let mut watched = watched_headers(&policy.priority);
        if policy.coalesce.is_some() && !watched.iter().any(|n| n == "subject") {
            watched.push("subject".to_owned());
        }
        Self {
            watched: watched.into(),
            sender_rates: policy
                .rate_limit
                .map(|limit| Rc::new(RefCell::new(SenderRates::new(limit)))),
            policy,
        }
    }
}

/// A message on its way in: its spool and the header fields seen so far.
pub struct Submission<'a> {
    intake: &'a Intake,
    spool: Spool,
    headers: HeaderWatch,
}

impl Intake {
    pub fn new(store: Store, clock: QueueClock, forwarder: Rc<Wake>, policy: IntakePolicy) -> Self {
        Self {
            store,
            clock,
            forwarder,
            rules: RefCell::new(Rc::new(Rules::new(policy))),
            accepted: Cell::new(0),
            rejects: Rejects::default(),
            store_failure: Shutdown::default(),
            store_error: RefCell::new(None),
            notices: Cell::new(0),
            unsent_notices: RefCell::default(),
        }
    }

    /// `Next::MailCheck`: counts one message from `sender` against `[rate_limit]`.
    pub fn check_sender(&self, sender: &str) -> MailVerdict {
        let rules = self.rules();
        let Some(rates) = &rules.sender_rates else {
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

    /// A reload: new mail from now on gets `policy` (the per-sender counts start over when
    /// `[rate_limit]` changed).
    pub fn set_policy(&self, policy: IntakePolicy) {
        let mut rules = Rules::new(policy);
        let old = self.rules();
        if old.policy.rate_limit == rules.policy.rate_limit {
            rules.sender_rates = old.sender_rates.clone();
        }
        *self.rules.borrow_mut() = Rc::new(rules);
    }

    fn rules(&self) -> Rc<Rules> {
        self.rules.borrow().clone()
    }

    /// Free space left in `data_dir` for new mail, when it is below the reserve.
    pub fn short_of_space(&self) -> Option<u64> {
        let policy = &self.rules().policy;
        let available = space::available(&policy.data_dir)?;
        (available < space::reserve(policy.max_message_size)).then_some(available)
    }

    /// Opens a spool for a new message (a failed store is reported).
    pub fn open(&self) -> Result<Submission<'_>, StoreError> {
        match self.store.spool() {
            Ok(spool) => Ok(Submission {
                intake: self,
                spool,
                headers: HeaderWatch::new(Rc::clone(&self.rules().watched)),
            }),
            Err(e) => {
                self.store_failed(&e);
                Err(e)
            }
        }
    }

    /// A message whose bytes are all in memory (a DSN): opened, stored in pieces the store
    /// keeps whole, and committed as `commit` does.
    pub async fn submit(
        &self,
        bytes: &[u8],
        envelope: Envelope,
        source: Source<'_>,
    ) -> Result<QueueId, IntakeError> {
        let mut submission = self.open().map_err(IntakeError::Store)?;
        for piece in bytes.chunks(MAX_EXTENT) {
            submission.add(piece).map_err(IntakeError::Store)?;
        }
        self.commit(submission, envelope, source).await
    }

    /// Classifies the message, commits it (durable on `Ok`), logs the one line that says it is
    /// queued, and (for SMTP and maildrop mail) counts it and pokes the forwarder. A DSN keeps
    /// the normal priority and no coalesce key: it is never part of a digest.
    pub async fn commit(
        &self,
        submission: Submission<'_>,
        envelope: Envelope,
        source: Source<'_>,
    ) -> Result<QueueId, IntakeError> {
        let Submission { spool, headers, .. } = submission;
        if let Err(e) = self.check_hops(&headers, &source) {
            spool.abort();
            return Err(e);
        }
        let stored = spool.len();
        let (sender, recipients) = self.map_envelope(envelope.sender, envelope.recipients);
        let mut info = MessageInfo {
            sender,
            recipients,
            eight_bit: envelope.eight_bit,
            smtputf8: envelope.smtputf8,
            received_unix: envelope.received_unix,
            priority: Priority::Normal,
            coalesce: None,
        };
        let own = matches!(source, Source::Dsn { .. } | Source::Notice { .. });
        if !own {
            self.label(&mut info, &headers);
        }
        let sender = info.sender.clone();
        let (nrcpt, first) = (info.recipients.len(), info.recipients.first().cloned());
        let id = match spool.commit(info, self.clock.now()).await {
            Ok(Ok(id)) => id,
            Ok(Err(_queue_full)) => return Err(IntakeError::QueueFull),
            Err(e) => {
                self.store_failed(&e);
                return Err(IntakeError::Store(e));
            }
        };
        let first = first.unwrap_or_default();
        log_queued(id, &source, &sender, (nrcpt, &first), stored);
        // The forwarder queues DSNs itself, in its pass; a notice comes from elsewhere.
        match source {
            Source::Dsn { .. } => return Ok(id),
            Source::Notice { .. } => {
                self.forwarder.notify();
                return Ok(id);
            }
            _ => {}
        }
        self.accepted.set(self.accepted.get().saturating_add(1));
        self.forwarder.notify();
        Ok(id)
    }

    /// The envelope as it is stored: local names qualified with `domain`, senders at a local
    /// domain rewritten to it, local recipients through the aliases and `admin`.
    fn map_envelope(&self, sender: String, recipients: Vec<String>) -> (String, Vec<String>) {
        match &self.rules().policy.addresses {
            None => (sender, recipients),
            Some(map) => (map.sender(&sender), map.recipients(&recipients)),
        }
    }

    /// The loop check: more `Received:` fields than `max_hops` (DSNs, which outpost writes
    /// itself, are not checked).
    fn check_hops(&self, headers: &HeaderWatch, source: &Source<'_>) -> Result<(), IntakeError> {
        let (received, max_hops) = (headers.received(), self.rules().policy.max_hops);
        if max_hops == 0
            || received <= max_hops
            || matches!(source, Source::Dsn { .. } | Source::Notice { .. })
        {
            return Ok(());
        }
        Err(IntakeError::TooManyHops { received, max_hops })
    }

    /// Labels a message about to be committed with its `[[priority]]` and, with `[coalesce]`,
    /// its digest key, from its envelope and the header fields `headers` collected.
    fn label(&self, info: &mut MessageInfo, headers: &HeaderWatch) {
        let rules = self.rules();
        info.priority = priority_of(
            &rules.policy.priority,
            &info.sender,
            &info.recipients,
            headers.fields(),
        );
        info.coalesce = rules
            .policy
            .coalesce
            .and_then(|_| coalesce::key(&info.sender, &info.recipients, headers.field("subject")));
    }

    /// Bytes an unprivileged writer may still use where `data_dir` is (`None`: unknown).
    pub fn disk_free(&self) -> Option<u64> {
        space::available(&self.rules().policy.data_dir)
    }

    /// Counts one refusal (the caller answers and logs it).
    pub fn count_reject(&self, reason: Reject) {
        self.rejects.count(reason);
    }

    /// Refusals of `reason` since start.
    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejects.get(reason)
    }

    /// SMTP and maildrop messages committed since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.get()
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

    /// Raised once the store failed with an I/O error.
    pub fn store_failure(&self) -> &Shutdown {
        &self.store_failure
    }

    /// The error that raised `store_failure`, if any.
    pub fn store_error(&self) -> Option<String> {
        self.store_error.borrow().clone()
    }
}

/// The one line that says a message is queued: `recipients` is their number and the first,
/// `stored` the message's bytes in the store.
fn log_queued(
    id: QueueId,
    source: &Source<'_>,
    sender: &str,
    (nrcpt, first): (usize, &str),
    stored: u64,
) {
    let sender = Escaped(sender);
    match source {
        Source::Smtp { tag, user, size } => {
            // Who relayed it: the AUTH user, if any (Postfix's sasl_username).
            let user = user.map_or_else(String::new, |user| format!(" user={user:?}"));
            info!(
                "{tag} queue_id={id} from=<{sender}> nrcpt={nrcpt} size={size}{user} status=queued"
            );
        }
        Source::Local { tag, uid, size } => info!(
            "{tag} queue_id={id} from=<{sender}> nrcpt={nrcpt} size={size} uid={uid} status=queued"
        ),
        Source::Maildrop => info!(
            "maildrop queue_id={id} from=<{sender}> nrcpt={nrcpt} size={stored} status=queued"
        ),
        Source::Dsn { of } => info!("queue_id={of} DSN queued as {id} to=<{}>", Escaped(first)),
        Source::Notice { kind } => {
            info!("notice ({kind}) queued as {id} to=<{}>", Escaped(first));
        }
    }
}

impl Submission<'_> {
    /// The queue id the message gets when committed.
    pub fn id(&self) -> QueueId {
        self.spool.id()
    }

    /// Bytes appended so far.
    pub fn len(&self) -> u64 {
        self.spool.len()
    }

    /// Whether nothing was appended yet.
    pub fn is_empty(&self) -> bool {
        self.spool.is_empty()
    }

    /// Collects the watched header fields from the next message bytes (no storing).
    pub fn scan(&mut self, bytes: &[u8]) {
        self.headers.feed(bytes);
    }

    /// Stores the next message bytes (a failed store is reported).
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let appended = self.spool.append(bytes);
        if let Err(e) = &appended {
            self.intake.store_failed(e);
        }
        appended
    }

    /// Scans and stores the next message bytes.
    pub fn add(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.scan(bytes);
        self.append(bytes)
    }

    /// Drops the message: nothing of it stays in the store.
    pub fn abort(self) {
        self.spool.abort();
    }
}

#[cfg(test)]
mod tests;
