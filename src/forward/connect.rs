//! Connecting to one smarthost and keeping its up/down state: the session set-up with
//! credentials or an OAuth 2.0 access token (cached per smarthost, refreshed when refused), and
//! the backoff and log lines when a smarthost comes up or goes down. Never logs secrets.

use std::time::Duration;

use log::{debug, error, info, warn};

use crate::smtp::client::{ClientParams, ClientSession, SessionFailure};

use super::failover::{self, SmarthostTiming};
use super::link::{open_session, Connection};
use super::outcome::ForwardError;
use super::run::Forwarder;
use super::schedule;
use super::token::{self, CachedToken};
use super::{oauth, ClientCredentials, CredentialKind};

impl Forwarder {
    /// Connects over smarthost `index` up to a ready session. A cached token the smarthost
    /// refused (revoked, or its clock is ahead of ours): one fresh token, at once. A fresh token
    /// refused waits like any site failure.
    pub(super) async fn connect(
        &self,
        index: usize,
    ) -> Result<(Connection, ClientSession), ForwardError> {
        match self.open(index, false).await {
            Err((ForwardError::Session(SessionFailure::AuthFailed { reply }), true)) => {
                info!(
                    "smarthost {}: cached OAuth2 token refused ({reply}); refreshing it",
                    self.params.smarthosts[index].address
                );
                self.open(index, true).await.map_err(|(e, _)| e)
            }
            other => other.map_err(|(e, _)| e),
        }
    }

    /// One attempt at a ready session over smarthost `index`. With OAuth 2.0, the cached access
    /// token is used unless `refresh` (or it is due), else a new one is fetched first; a
    /// refused token is dropped. On error, `true` says a cached token was refused.
    async fn open(
        &self,
        index: usize,
        refresh: bool,
    ) -> Result<(Connection, ClientSession), (ForwardError, bool)> {
        let smarthost = &self.params.smarthosts[index];
        let mut credentials = smarthost.credentials.clone();
        let mut cached = false;
        if let Some(oauth) = &smarthost.oauth2 {
            let now = self.clock.now();
            let token = {
                let mut tokens = self.tokens.borrow_mut();
                let slot = &mut tokens[index];
                if refresh || slot.as_ref().is_some_and(|t| now >= t.refresh_at) {
                    *slot = None;
                }
                slot.as_ref().map(|t| t.token.clone())
            };
            cached = token.is_some();
            let token = match token {
                Some(token) => token,
                None => {
                    let timeout = self.params.command_timeout;
                    let reply = token::fetch(oauth, smarthost.tls_config.as_ref(), timeout)
                        .await
                        .map_err(|e| (e, false))?;
                    self.tokens.borrow_mut()[index] = Some(CachedToken {
                        token: reply.access_token.clone(),
                        refresh_at: oauth::refresh_at(self.clock.now(), reply.expires_in),
                    });
                    reply.access_token
                }
            };
            credentials = Some(ClientCredentials {
                username: oauth.username.clone(),
                password: token,
                kind: CredentialKind::Bearer,
            });
        }
        let client = ClientParams {
            helo_name: self.params.hostname.clone(),
            tls: smarthost.tls,
            smarthost: smarthost.address.clone(),
            credentials,
        };
        let opened = open_session(
            &smarthost.address,
            client,
            smarthost.tls_config.clone(),
            self.params.command_timeout,
        )
        .await;
        match opened {
            Err(e @ ForwardError::Session(SessionFailure::AuthFailed { .. }))
                if smarthost.oauth2.is_some() =>
            {
                self.tokens.borrow_mut()[index] = None;
                Err((e, cached))
            }
            other => other.map_err(|e| (e, false)),
        }
    }

    /// Smarthost `index` completed a handshake.
    pub(super) fn mark_up(&self, index: usize) {
        self.link.smarthost_up(index);
        {
            let mut timings = self.timings.borrow_mut();
            let Some(timing) = timings.get_mut(index) else {
                return;
            };
            if timing.is_up() {
                return;
            }
            *timing = SmarthostTiming::default();
        }
        info!(
            "smarthost {} {} is reachable again: sending the queue",
            index + 1,
            self.params.smarthosts[index].address
        );
        // Mail deferred during the outage goes now, on this connection.
        if let Err(e) = self.store.reschedule_all(self.clock.now()) {
            error!("cannot reschedule the queue: {e}");
        }
    }

    /// A site failure on smarthost `index`: it waits out its own backoff; no message's attempts are
    /// burned. The caller moves on to the next smarthost.
    pub(super) fn mark_down(&self, index: usize, error: &ForwardError) {
        let now = self.clock.now();
        let jitter = self.jitter();
        let mut timings = self.timings.borrow_mut();
        let Some(timing) = timings.get_mut(index) else {
            return;
        };
        timing.failures = timing.failures.saturating_add(1);
        let delay = schedule::link_backoff(timing.failures, &self.params.policy, jitter);
        timing.retry_at = schedule::after(now, delay);
        let (failures, retry_at) = (timing.failures, timing.retry_at);
        drop(timings);
        let address = &self.params.smarthosts[index].address;
        self.link
            .smarthost_down(index, &format!("smarthost {address}: {error}"), retry_at);
        // Whole seconds: the jitter's milliseconds are noise in a log line.
        let next = humantime::format_duration(Duration::from_secs(delay.as_secs().max(1)));
        let number = index + 1;
        let then = if failover::link_wait(&self.timings.borrow()).is_some() {
            "holding mail"
        } else {
            "trying the next smarthost"
        };
        if failures == 1 {
            warn!("smarthost {number} {address} unavailable: {error}; {then}, next try in {next}");
        } else {
            debug!("smarthost {number} {address} still unavailable: {error}; next try in {next}");
        }
    }
}
