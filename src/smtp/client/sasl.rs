//! AUTH from a `ClientSession` to the smarthost (RFC 4954): PLAIN or LOGIN with a password,
//! OAUTHBEARER (RFC 7628) or XOAUTH2 with an access token. Only ever over TLS; the bytes it
//! returns are secrets the glue never logs. Performs no I/O.

use super::{ClientSession, ClientStep, CredentialKind, SessionFailure, State};
use crate::smtp::auth;
use crate::smtp::reply::Reply;

impl ClientSession {
    /// RFC 4954 §4: PLAIN (one round trip) if offered, else LOGIN; for a token OAUTHBEARER
    /// (the standard) if offered, else XOAUTH2. The bytes returned are secret: the glue never
    /// logs what it sends.
    pub(super) fn start_auth(&mut self) -> ClientStep {
        let smarthost = self.params.smarthost.clone();
        if !self.tls_active {
            return self.fail(SessionFailure::AuthNeedsTls { smarthost });
        }
        let Some(credentials) = &self.params.credentials else {
            return self.fail(SessionFailure::Closed);
        };
        if credentials.kind == CredentialKind::Bearer {
            let command = if self.extensions.auth_oauthbearer {
                let (host, port) = split_host_port(&smarthost);
                auth::oauthbearer_command(&credentials.username, host, port, &credentials.password)
            } else if self.extensions.auth_xoauth2 {
                auth::xoauth2_command(&credentials.username, &credentials.password)
            } else {
                let kind = CredentialKind::Bearer;
                return self.fail(SessionFailure::NoAuth { smarthost, kind });
            };
            self.state = State::AwaitAuthResult;
            return ClientStep::Send(command);
        }
        if self.extensions.auth_plain {
            let command = auth::plain_command(&credentials.username, &credentials.password);
            self.state = State::AwaitAuthResult;
            return ClientStep::Send(command);
        }
        if self.extensions.auth_login {
            self.state = State::AwaitLoginUsername;
            return ClientStep::Send(b"AUTH LOGIN\r\n".to_vec());
        }
        let kind = CredentialKind::Password;
        self.fail(SessionFailure::NoAuth { smarthost, kind })
    }

    pub(super) fn on_auth(&mut self, reply: &Reply) -> ClientStep {
        let bearer = self
            .params
            .credentials
            .as_ref()
            .is_some_and(|c| c.kind == CredentialKind::Bearer);
        if bearer && self.state == State::AwaitAuthResult && reply.code == 334 {
            // The token was refused; the 334 carries a JSON error. The exchange must still be
            // ended by the client: a single ^A for OAUTHBEARER (RFC 7628 §3.2.3), an empty line
            // for XOAUTH2. The refusal itself follows.
            self.state = State::AwaitAuthError;
            let response: &[u8] = if self.extensions.auth_oauthbearer {
                b"AQ==\r\n"
            } else {
                b"\r\n"
            };
            return ClientStep::Send(response.to_vec());
        }
        if self.state == State::AwaitAuthError {
            let reply = reply.clone();
            return self.fail(SessionFailure::AuthFailed { reply });
        }
        let expected = if self.state == State::AwaitAuthResult {
            235
        } else {
            334
        };
        if reply.code != expected {
            return self.fail(SessionFailure::AuthFailed {
                reply: reply.clone(),
            });
        }
        let Some(credentials) = &self.params.credentials else {
            return self.fail(SessionFailure::Closed);
        };
        match self.state {
            State::AwaitLoginUsername => {
                let response = auth::login_response(&credentials.username);
                self.state = State::AwaitLoginPassword;
                ClientStep::Send(response)
            }
            State::AwaitLoginPassword => {
                let response = auth::login_response(&credentials.password);
                self.state = State::AwaitAuthResult;
                ClientStep::Send(response)
            }
            _ => {
                self.state = State::Ready;
                ClientStep::Ready
            }
        }
    }
}

/// `host` and `port` of the configured `host:port` (`[::1]:25` too) for OAUTHBEARER; port 0
/// when there is none (config validation requires one).
fn split_host_port(smarthost: &str) -> (&str, u16) {
    match smarthost.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse().unwrap_or(0),
        ),
        None => (smarthost, 0),
    }
}
