//! Test certificates made at test time (rcgen) and tests of the TLS glue: configs from PEM
//! files, handshakes over 127.0.0.1, and the wording of certificate failures.

use std::path::PathBuf;

use async_io::Async;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::*;

/// A private CA and one server certificate it signed, as PEM files in a temp dir.
pub(crate) struct TestPki {
    _dir: tempfile::TempDir,
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl TestPki {
    /// A server certificate valid for `names` (DNS names or IP addresses).
    pub(crate) fn new(names: &[&str]) -> Self {
        Self::with_validity(names, None)
    }

    /// `validity`: (not_before, not_after) years, for expired certificates.
    pub(crate) fn with_validity(names: &[&str], validity: Option<(i32, i32)>) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A distinct name per CA, as real CAs have: same-named CAs make rustls report a bad
        // signature instead of an unknown issuer.
        static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("outpost test CA {serial}"));
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        if let Some((from, to)) = validity {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_path = write("ca.pem", &ca.pem());
        let cert_path = write("cert.pem", &cert.pem());
        let key_path = write("key.pem", &key.serialize_pem());
        Self {
            ca: ca_path,
            cert: cert_path,
            key: key_path,
            _dir: dir,
        }
    }

    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        server_config(&self.cert, &self.key).unwrap()
    }

    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        client_config(Some(&self.ca)).unwrap()
    }
}

/// Runs a server handshake (then echoes one line) against a client handshake for `name`;
/// returns the client's result.
fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>, name: &str) -> io::Result<()> {
    let name = server_name(name).unwrap();
    async_io::block_on(async {
        let listener = Async::<std::net::TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
        let addr = listener.get_ref().local_addr().unwrap();
        let serve = async {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = MaybeTls::Plain(stream);
            if stream.accept(&server).await.is_ok() {
                let mut buf = [0u8; 5];
                if stream.read_exact(&mut buf).await.is_ok() {
                    let _ = stream.write_all(&buf).await;
                    let _ = stream.flush().await;
                }
            }
        };
        let connect = async {
            let stream = Async::<std::net::TcpStream>::connect(addr).await?;
            let mut stream = MaybeTls::Plain(stream);
            stream.connect(&client, name).await?;
            assert!(stream.is_tls());
            stream.write_all(b"hello").await?;
            stream.flush().await?;
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"hello");
            Ok(())
        };
        future::zip(serve, connect).await.1
    })
}

#[test]
fn handshake_with_a_private_ca_works() {
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    handshake(pki.server_config(), pki.client_config(), "localhost:25").unwrap();
    handshake(pki.server_config(), pki.client_config(), "127.0.0.1:25").unwrap();
}

#[test]
fn wrong_name_is_worded_for_the_operator() {
    let pki = TestPki::new(&["mail.example.net"]);
    let error = handshake(pki.server_config(), pki.client_config(), "localhost:587").unwrap_err();
    let failure = describe_handshake_error(&error, "localhost:587");
    assert_eq!(
        failure.message,
        "certificate for mail.example.net not valid for name localhost"
    );
    assert!(!failure.clock_wrong);
}

#[test]
fn untrusted_issuer_is_worded_for_the_operator() {
    let pki = TestPki::new(&["localhost"]);
    let other = TestPki::new(&["localhost"]);
    let error = handshake(pki.server_config(), other.client_config(), "localhost:25").unwrap_err();
    let failure = describe_handshake_error(&error, "localhost:25");
    assert!(
        failure.message.contains("not signed by a trusted CA"),
        "{}",
        failure.message
    );
    // The default roots (web PKI) do not know a private CA either.
    let web = client_config(None).unwrap();
    let error = handshake(pki.server_config(), web, "localhost:25").unwrap_err();
    assert!(describe_handshake_error(&error, "localhost:25")
        .message
        .contains("trusted CA"));
}

#[test]
fn expired_certificate_is_a_clock_problem_only_when_the_clock_is_unset() {
    let pki = TestPki::with_validity(&["localhost"], Some((2000, 2001)));
    let error = handshake(pki.server_config(), pki.client_config(), "localhost:25").unwrap_err();
    let now = describe_at(&error, "localhost:25", wall_clock());
    assert!(!now.clock_wrong);
    assert!(now.message.contains("refused"), "{}", now.message);
    let in_1970 = describe_at(&error, "localhost:25", Duration::from_secs(3600));
    assert!(in_1970.clock_wrong);
    assert!(
        in_1970.message.contains("clock is wrong"),
        "{}",
        in_1970.message
    );
}

#[test]
fn pem_problems_name_the_file() {
    let pki = TestPki::new(&["localhost"]);
    let missing = Path::new("/nonexistent/outpost-cert.pem");
    let error = server_config(missing, &pki.key).unwrap_err();
    assert!(error.to_string().contains("outpost-cert.pem"), "{error}");
    // A key file given as the certificate, and the other way round.
    let error = server_config(&pki.key, &pki.key).unwrap_err();
    assert!(error.to_string().contains("no PEM certificate"), "{error}");
    let error = server_config(&pki.cert, &pki.cert).unwrap_err();
    assert!(error.to_string().contains("no PEM private key"), "{error}");
    // A key that does not belong to the certificate.
    let other = TestPki::new(&["localhost"]);
    assert!(server_config(&pki.cert, &other.key).is_err());
}

#[test]
fn server_name_is_the_host_without_port_or_brackets() {
    assert_eq!(
        server_name("smtp.example.com:587").unwrap().to_str(),
        "smtp.example.com"
    );
    assert_eq!(server_name("[::1]:25").unwrap().to_str(), "::1");
}
