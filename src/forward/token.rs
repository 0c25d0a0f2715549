//! OAuth 2.0 to the smarthost, the glue: one HTTPS POST to the token endpoint over smol and
//! rustls (the route's `ClientConfig`, so the entry's `ca_file` or the web PKI roots), the
//! refresh token read from its file at each refresh and rewritten atomically when the endpoint
//! rotates it, and the access token cached in memory until a minute before it expires. The
//! protocol itself is `forward::oauth`. Never logs a token or a secret.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_io::Timer;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use log::{error, info};
use smol::net::TcpStream;

use super::oauth::{self, RefreshGrant, TokenReply};
use super::outcome::ForwardError;
use crate::clock::QueueTime;
use crate::config::TokenUrl;
use crate::tls::{self, MaybeTls};

/// One route's OAuth 2.0 settings (config `[smarthost] oauth2_*`). `Debug` hides the secret.
#[derive(Clone)]
pub struct OAuth2 {
    /// The mailbox in the SASL message.
    pub username: String,
    pub url: TokenUrl,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub refresh_token_file: PathBuf,
    pub scope: Option<String>,
}

impl fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2")
            .field("username", &self.username)
            .field("url", &self.url.display())
            .field("client_id", &self.client_id)
            .field("refresh_token_file", &self.refresh_token_file)
            .finish_non_exhaustive()
    }
}

/// An access token held in memory between sessions.
pub(super) struct CachedToken {
    pub token: String,
    /// Queue-clock time from which it is refreshed before use (`oauth::refresh_at`).
    pub refresh_at: QueueTime,
}

/// Asks the token endpoint for a new access token; everything (connect, TLS, request, reply)
/// within `timeout`. Errors are `ForwardError::Token`: the mail waits, like for a link down.
pub(super) async fn fetch(
    oauth: &OAuth2,
    tls_config: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<TokenReply, ForwardError> {
    let endpoint = oauth.url.display();
    let failed = |message: String| ForwardError::Token {
        endpoint: endpoint.clone(),
        message,
    };
    let refresh_token = read_refresh_token(&oauth.refresh_token_file).map_err(|e| {
        failed(format!(
            "cannot read the refresh token from {}: {e}",
            oauth.refresh_token_file.display()
        ))
    })?;
    let grant = RefreshGrant {
        client_id: &oauth.client_id,
        client_secret: oauth.client_secret.as_deref(),
        refresh_token: &refresh_token,
        scope: oauth.scope.as_deref(),
    };
    let request = grant.request(&oauth.url);
    let exchange = exchange(&oauth.url, tls_config, &request);
    let timed_out = async {
        Timer::after(timeout).await;
        Err(failed(format!("no reply within {}s", timeout.as_secs())))
    };
    let (code, body) = future::or(async { exchange.await.map_err(failed) }, timed_out).await?;
    let reply = oauth::token_reply(code, &body).map_err(|e| failed(e.to_string()))?;
    if let Some(rotated) = &reply.refresh_token {
        if *rotated != refresh_token {
            match replace_file(&oauth.refresh_token_file, rotated) {
                Ok(()) => info!(
                    "OAuth2: the token endpoint {endpoint} rotated the refresh token; \
                     saved to {}",
                    oauth.refresh_token_file.display()
                ),
                // The access token is still good; the old refresh token may stop working.
                Err(e) => error!(
                    "OAuth2: cannot save the rotated refresh token to {}: {e}",
                    oauth.refresh_token_file.display()
                ),
            }
        }
    }
    info!(
        "OAuth2: new access token for {} from {endpoint}, valid for {}s",
        oauth.username, reply.expires_in
    );
    Ok(reply)
}

/// Connect, TLS, write the request, read the reply to the end (or until it is complete).
async fn exchange(
    url: &TokenUrl,
    tls_config: Option<&Arc<rustls::ClientConfig>>,
    request: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let address = url.address();
    let (Some(config), Ok(name)) = (tls_config, tls::server_name(&address)) else {
        return Err("no usable TLS settings".to_owned());
    };
    let stream = TcpStream::connect(address.as_str())
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut stream = MaybeTls::Plain(stream);
    if let Err(e) = stream.connect(config, name).await {
        return Err(tls::describe_handshake_error(&e, &address).message);
    }
    let io = |e: io::Error| format!("connection failed: {e}");
    stream.write_all(request).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut input = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            // A peer that closes without close_notify after a complete reply is common.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(io(e)),
        };
        input.extend_from_slice(&buf[..n]);
        let parsed = oauth::parse_response(&input, n == 0).map_err(|e| e.to_string())?;
        if let Some(reply) = parsed {
            let _ = stream.close().await;
            return Ok(reply);
        }
        if n == 0 {
            return Err("the connection closed before the reply was complete".to_owned());
        }
    }
}

/// The file's first line, trimmed.
fn read_refresh_token(path: &Path) -> io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the file is empty",
        ));
    }
    Ok(token.to_owned())
}

/// Replaces `path` with `text` + newline so that a crash leaves the old or the new token,
/// never a torn one: a temporary file in the same directory (mode 0600), fsync, rename, fsync
/// of the directory.
fn replace_file(path: &Path, text: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.new"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temp)?;
    // The file keeps its owner when root rewrites it (`outpost test` run as root): the daemon,
    // running as its own user, must still read it. Not root: the owner is this user anyway.
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::MetadataExt;
        let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
    }
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_refresh_token_file_keeps_its_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refresh");
        std::fs::write(&path, "old\n").unwrap();
        // As root (CI), the file belongs to another user, as the daemon's does; otherwise this
        // user keeps owning it.
        let owner = if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
            65534
        } else {
            std::fs::metadata(&path).unwrap().uid()
        };
        replace_file(&path, "new").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.uid(), owner);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
    }

    #[test]
    fn refresh_token_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refresh");
        std::fs::write(&path, "old-token\n\n").unwrap();
        assert_eq!(read_refresh_token(&path).unwrap(), "old-token");
        replace_file(&path, "new-token").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new-token\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["refresh"], "no temporary file left");
        std::fs::write(&path, " \n").unwrap();
        assert!(read_refresh_token(&path).is_err());
    }

    #[test]
    fn debug_hides_the_client_secret() {
        let oauth = OAuth2 {
            username: "site@example.com".into(),
            url: TokenUrl::parse("https://login.example/token").unwrap(),
            client_id: "id".into(),
            client_secret: Some("hunter2".into()),
            refresh_token_file: "refresh".into(),
            scope: None,
        };
        let shown = format!("{oauth:?}");
        assert!(
            shown.contains("site@example.com") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
