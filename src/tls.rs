//! TLS glue: PEM loading, rustls `ServerConfig`/`ClientConfig` (provider `ring` always passed
//! explicitly, never the process default), the `MaybeTls` stream that STARTTLS upgrades in
//! place, and the operator-grade wording of handshake failures. Speaks no SMTP and never logs
//! key material.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};

/// No certificate check can be trusted on a machine whose clock says it is earlier than this
/// (2026-11-01T00:00:00Z, earlier than any release of outpost that speaks TLS). Boards without
/// a battery-backed clock boot in 1970 until NTP has run.
const CLOCK_FLOOR_UNIX: u64 = 1_793_491_200;

/// Why a TLS configuration could not be built; names the file.
#[derive(Debug)]
pub enum TlsError {
    Read {
        path: PathBuf,
        source: io::Error,
    },
    NoCertificate {
        path: PathBuf,
    },
    NoPrivateKey {
        path: PathBuf,
    },
    /// rustls refused the material (key does not match the certificate, bad CA …).
    Rejected {
        what: String,
        source: rustls::Error,
    },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Self::NoCertificate { path } => {
                write!(f, "{} holds no PEM certificate", path.display())
            }
            Self::NoPrivateKey { path } => write!(
                f,
                "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                path.display()
            ),
            Self::Rejected { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for TlsError {}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn open(path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Every certificate in a PEM file (a chain: leaf first).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let reader = open(path)?;
    let certs = CertificateDer::pem_reader_iter(reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let reader = open(path)?;
    match PrivateKeyDer::from_pem_reader(reader) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoPrivateKey {
            path: path.to_owned(),
        }),
        Err(e) => Err(unreadable(path, e)),
    }
}

/// A PEM file that could not be read or parsed.
fn unreadable(path: &Path, error: pem::Error) -> TlsError {
    let source = match error {
        pem::Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    };
    TlsError::Read {
        path: path.to_owned(),
        source,
    }
}

/// The inbound side (`[tls] cert`, `key`): TLS 1.2 and 1.3, no client certificates.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certificates(cert)?;
    let key = load_private_key(key)?;
    let rejected = |source| TlsError::Rejected {
        what: format!("tls.cert/tls.key ({})", cert.display()),
        source,
    };
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(rejected)?;
    Ok(Arc::new(config))
}

/// The outbound side: web PKI roots (webpki-roots, so boards without a CA store work), or only
/// the CAs in `ca_file` (a private CA replaces the public ones).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            for cert in load_certificates(path)? {
                roots.add(cert).map_err(|source| TlsError::Rejected {
                    what: format!("smarthost.ca_file ({})", path.display()),
                    source,
                })?;
            }
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rejected {
            what: "TLS client".to_owned(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name the smarthost's certificate must carry (and the SNI): the host of `host:port`,
/// `[v6]` without brackets.
pub fn server_name(smarthost: &str) -> Result<ServerName<'static>, String> {
    let host = smarthost
        .rsplit_once(':')
        .map_or(smarthost, |(host, _)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned())
        .map_err(|_| format!("{host:?} cannot be checked against a certificate"))
}

/// A connection that starts in plaintext and may be upgraded in place (STARTTLS).
pub enum MaybeTls<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// Only during an upgrade, or after a failed one: every operation fails.
    Broken,
}

impl<S: AsyncRead + AsyncWrite + Unpin> MaybeTls<S> {
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Server handshake on the plaintext stream (STARTTLS or implicit TLS).
    pub async fn accept(&mut self, config: &Arc<ServerConfig>) -> io::Result<()> {
        let Self::Plain(stream) = std::mem::replace(self, Self::Broken) else {
            return Err(not_plain());
        };
        let tls = TlsAcceptor::from(Arc::clone(config)).accept(stream).await?;
        *self = Self::Tls(Box::new(TlsStream::from(tls)));
        Ok(())
    }

    /// Client handshake: verifies the certificate for `name`, which is also the SNI.
    pub async fn connect(
        &mut self,
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<()> {
        let Self::Plain(stream) = std::mem::replace(self, Self::Broken) else {
            return Err(not_plain());
        };
        let tls = TlsConnector::from(Arc::clone(config))
            .connect(name, stream)
            .await?;
        *self = Self::Tls(Box::new(TlsStream::from(tls)));
        Ok(())
    }

    /// The negotiated protocol version and cipher suite, for the log line.
    pub fn describe(&self) -> String {
        let Self::Tls(tls) = self else {
            return "plaintext".to_owned();
        };
        let (_, state) = tls.get_ref();
        let version = state
            .protocol_version()
            .map_or_else(|| "?".to_owned(), |v| format!("{v:?}"));
        let suite = state
            .negotiated_cipher_suite()
            .map_or_else(|| "?".to_owned(), |s| format!("{:?}", s.suite()));
        format!("{version} {suite}")
    }
}

fn not_plain() -> io::Error {
    io::Error::other("TLS upgrade of a stream that is not plaintext")
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS handshake failed earlier")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Broken => Poll::Ready(Err(broken())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Broken => Poll::Ready(Err(broken())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Broken => Poll::Ready(Err(broken())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_close(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Self::Broken => Poll::Ready(Ok(())),
        }
    }
}

/// A failed client handshake, worded for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeFailure {
    pub message: String,
    /// The system clock is before `CLOCK_FLOOR_UNIX` and the certificate was refused for its
    /// validity period: waiting for NTP fixes it.
    pub clock_wrong: bool,
}

/// Words a client handshake error: "certificate for X not valid for name Y", untrusted
/// issuer, expiry (or a clock that is obviously wrong), else the rustls error as is.
pub fn describe_handshake_error(error: &io::Error, smarthost: &str) -> HandshakeFailure {
    describe_at(error, smarthost, wall_clock())
}

fn describe_at(error: &io::Error, smarthost: &str, now: Duration) -> HandshakeFailure {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let certificate = match rustls_error {
        Some(rustls::Error::InvalidCertificate(certificate)) => certificate,
        Some(other) => return plain(format!("TLS handshake with {smarthost} failed: {other}")),
        None => return plain(format!("TLS handshake with {smarthost} failed: {error}")),
    };
    let host = server_name(smarthost).map_or_else(|_| smarthost.to_owned(), |n| n.to_str().into());
    match certificate {
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => plain(format!(
            "certificate for {} not valid for name {}",
            presented
                .iter()
                .map(|name| presented_name(name))
                .collect::<Vec<_>>()
                .join(", "),
            expected.to_str()
        )),
        CertificateError::NotValidForName => plain(format!(
            "certificate of smarthost {smarthost} not valid for name {host}"
        )),
        CertificateError::UnknownIssuer => plain(format!(
            "certificate of smarthost {smarthost} is not signed by a trusted CA (for a \
             private CA set [smarthost] ca_file)"
        )),
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. }
            if now.as_secs() < CLOCK_FLOOR_UNIX =>
        {
            HandshakeFailure {
                message: format!(
                    "certificate of smarthost {smarthost} refused as {certificate}, but the \
                     system clock is wrong (it says {} seconds after 1970, before this build \
                     of outpost); mail stays queued until the clock is set (NTP)",
                    now.as_secs()
                ),
                clock_wrong: true,
            }
        }
        other => plain(format!(
            "certificate of smarthost {smarthost} refused: {other}"
        )),
    }
}

/// rustls renders presented names as `DnsName("x")` / `IpAddress(…)`; the operator wants `x`.
fn presented_name(name: &str) -> &str {
    let inner = name
        .strip_prefix("DnsName(")
        .or_else(|| name.strip_prefix("IpAddress("))
        .and_then(|n| n.strip_suffix(')'))
        .unwrap_or(name);
    inner.trim_matches('"')
}

fn plain(message: String) -> HandshakeFailure {
    HandshakeFailure {
        message,
        clock_wrong: false,
    }
}

fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests;
