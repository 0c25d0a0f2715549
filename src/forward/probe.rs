//! `outpost test`'s dialogue with each smarthost: the forwarder's own connect, TLS, EHLO and
//! AUTH (or OAuth 2.0 token refresh) code, watched step by step, then `MAIL FROM`, `RCPT TO`,
//! `RSET` and `QUIT`: nothing is ever sent. Prints each step with its time and verdict and
//! names the one that failed; the exit code is a sysexits(3) code per kind of failure.

use std::time::Instant;

use super::link::{open_session_watched, Connection, Progress};
use super::outcome::ForwardError;
use super::{
    rewrite, token, ClientCredentials, CredentialKind, ForwardParams, Smarthost, TlsPolicy,
};
use crate::smtp::client::{ClientParams, SessionFailure, Stage};
use crate::smtp::reply::Reply;
use crate::tls::MaybeTls;

mod cert;

/// sysexits(3) codes of a failed step.
pub const EX_NOUSER: u8 = 67;
pub const EX_NOHOST: u8 = 68;
pub const EX_UNAVAILABLE: u8 = 69;
pub const EX_PROTOCOL: u8 = 76;
pub const EX_NOPERM: u8 = 77;

/// The envelope the test offers every smarthost.
pub struct Envelope {
    /// MAIL FROM before a smarthost's `from` replaces it (the mapped sender of a local
    /// submission).
    pub sender: String,
    /// RCPT TO, mapped as intake maps it.
    pub recipients: Vec<String>,
}

/// Tests every smarthost in order and returns 0 when each of them works, else the exit code
/// of the first failure (`failure_code`). Each line of output goes to `out`.
pub fn run(params: &ForwardParams, envelope: &Envelope, out: &mut dyn FnMut(&str)) -> u8 {
    let mut code = 0;
    for (index, smarthost) in params.smarthosts.iter().enumerate() {
        out(&format!(
            "smarthost {}: {} (tls = {})",
            index + 1,
            smarthost.address,
            match smarthost.tls {
                TlsPolicy::None => "none",
                TlsPolicy::StartTls => "starttls",
                TlsPolicy::Implicit => "implicit",
            }
        ));
        let mut steps = Steps {
            out: &mut *out,
            step: "resolve",
            last: Instant::now(),
        };
        let result = smol::block_on(one(params, smarthost, envelope, &mut steps));
        let verdict = match result {
            Ok(()) => "works".to_owned(),
            Err(e) => {
                let failed = match &e {
                    ForwardError::Session(SessionFailure::NoStartTls { .. }) => "STARTTLS",
                    ForwardError::Session(
                        SessionFailure::NoAuth { .. } | SessionFailure::AuthNeedsTls { .. },
                    ) => "AUTH",
                    _ => steps.step,
                };
                steps.line(failed, &format!("FAILED: {e}"));
                let exit = failure_code(failed, &e);
                if code == 0 {
                    code = exit;
                }
                format!("fails at {failed} (exit {exit})")
            }
        };
        out(&format!("smarthost {}: {verdict}", index + 1));
    }
    code
}

/// Prints the steps of one smarthost, each with the time since the previous line.
struct Steps<'a> {
    out: &'a mut dyn FnMut(&str),
    /// The step under way (named in the failure line).
    step: &'static str,
    last: Instant,
}

impl Steps<'_> {
    fn line(&mut self, step: &str, text: &str) {
        let now = Instant::now();
        let ms = now.duration_since(self.last).as_millis();
        self.last = now;
        (self.out)(&format!("  {ms:>5} ms  {step:<12} {text}"));
    }

    fn progress(&mut self, progress: Progress<'_>) {
        match progress {
            Progress::Step(step) => self.step = step,
            Progress::Resolved(addrs) => {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                self.line(self.step, &format!("ok {}", list.join(" ")));
            }
            Progress::Connected(peer) => self.line(self.step, &format!("ok {peer}")),
            // A refusal is the failure, printed once with the error that quotes it.
            Progress::Reply(reply) if reply.code < 400 => {
                self.line(self.step, &format!("ok {reply}"));
            }
            Progress::Reply(_) => {}
            Progress::Tls(stream) => {
                let text = tls_text(stream);
                self.line(self.step, &text);
            }
        }
    }

    /// Sends one command line and reads its reply: 2xx goes on, anything else fails the step.
    async fn command(
        &mut self,
        conn: &mut Connection,
        step: &'static str,
        line: &str,
        stage: Stage,
        timeout: std::time::Duration,
    ) -> Result<Reply, ForwardError> {
        self.step = step;
        conn.write(format!("{line}\r\n").as_bytes()).await?;
        let reply = conn.read_reply_within(stage, timeout).await?;
        self.progress(Progress::Reply(&reply));
        if reply.is_positive() {
            Ok(reply)
        } else {
            Err(ForwardError::Session(SessionFailure::Rejected {
                stage,
                reply,
            }))
        }
    }
}

/// The handshake, then MAIL/RCPT/RSET/QUIT, over one smarthost.
async fn one(
    params: &ForwardParams,
    smarthost: &Smarthost,
    envelope: &Envelope,
    steps: &mut Steps<'_>,
) -> Result<(), ForwardError> {
    let timeout = params.command_timeout;
    let mut credentials = smarthost.credentials.clone();
    if let Some(oauth) = &smarthost.oauth2 {
        steps.step = "OAuth2 token";
        let reply = token::fetch(oauth, smarthost.tls_config.as_ref(), timeout).await?;
        steps.line(
            steps.step,
            &format!(
                "ok from {} (valid {} s)",
                oauth.url.display(),
                reply.expires_in
            ),
        );
        credentials = Some(ClientCredentials {
            username: oauth.username.clone(),
            password: reply.access_token,
            kind: CredentialKind::Bearer,
        });
    }
    let client = ClientParams {
        helo_name: params.hostname.clone(),
        tls: smarthost.tls,
        smarthost: smarthost.address.clone(),
        credentials,
    };
    let (mut conn, _session) = open_session_watched(
        &smarthost.address,
        client,
        smarthost.tls_config.clone(),
        timeout,
        &mut |progress| steps.progress(progress),
    )
    .await?;
    let sender = rewrite::envelope_sender(&envelope.sender, smarthost.from.as_deref());
    let mail = format!("MAIL FROM:<{sender}>");
    steps
        .command(&mut conn, "MAIL FROM", &mail, Stage::Mail, timeout)
        .await?;
    for rcpt in &envelope.recipients {
        let line = format!("RCPT TO:<{rcpt}>");
        steps
            .command(&mut conn, "RCPT TO", &line, Stage::Rcpt, timeout)
            .await?;
    }
    steps
        .command(&mut conn, "RSET", "RSET", Stage::Rset, timeout)
        .await?;
    steps
        .command(&mut conn, "QUIT", "QUIT", Stage::Quit, timeout)
        .await?;
    conn.close(timeout).await;
    Ok(())
}

/// The TLS line: version and suite, the certificate's subject, issuer and expiry, and the
/// verification result (the handshake only succeeds with a verified certificate).
fn tls_text<S>(stream: &MaybeTls<S>) -> String
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let MaybeTls::Tls(tls) = stream else {
        return "plaintext".to_owned();
    };
    let certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| cert::summary(leaf));
    let about = match certificate {
        Some(c) => format!(
            "subject {}, issuer {}, expires {}",
            c.subject, c.issuer, c.not_after
        ),
        None => "certificate not readable".to_owned(),
    };
    format!(
        "ok {}; {about}; verified (trusted issuer, name matches)",
        stream.describe()
    )
}

/// The exit code for a failure at `step`: 68 name resolution, 69 connect or a refused or
/// silent session, 76 TLS and protocol trouble (no STARTTLS, bad certificate, no usable AUTH
/// mechanism), 77 credentials or token refused and a refused sender, 67 a refused recipient.
fn failure_code(step: &str, error: &ForwardError) -> u8 {
    match error {
        ForwardError::Connect(_) if step == "resolve" => EX_NOHOST,
        ForwardError::Connect(_) | ForwardError::Io(_) | ForwardError::Timeout(_) => EX_UNAVAILABLE,
        ForwardError::Token { .. } | ForwardError::Session(SessionFailure::AuthFailed { .. }) => {
            EX_NOPERM
        }
        ForwardError::Session(SessionFailure::Rejected { stage, .. }) => match stage {
            Stage::Rcpt => EX_NOUSER,
            Stage::Mail => EX_NOPERM,
            Stage::Greeting => EX_UNAVAILABLE,
            _ => EX_PROTOCOL,
        },
        ForwardError::Tls { .. }
        | ForwardError::Protocol(_)
        | ForwardError::Session(_)
        | ForwardError::BodyDamaged => EX_PROTOCOL,
    }
}
