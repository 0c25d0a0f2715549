//! The one test PKI: a private CA and a server certificate it signed, made at test time with
//! rcgen, as PEM files in a temp dir, plus rustls configs built from them for the kit's own TLS
//! peers. Never reads a certificate from the repository and never trusts the web PKI.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A private CA and one server certificate it signed, as PEM files in a temp dir.
pub(crate) struct TestPki {
    _dir: tempfile::TempDir,
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl TestPki {
    /// A certificate for the IP address 127.0.0.1 signed by a fresh CA.
    pub(crate) fn loopback() -> Self {
        Self::new(&["127.0.0.1"])
    }

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
        static SERIAL: AtomicU32 = AtomicU32::new(0);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
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
        let dir = tempfile::Builder::new()
            .prefix("outpost-pki-")
            .tempdir()
            .unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Self {
            ca: write("ca.pem", &ca.pem()),
            cert: write("cert.pem", &cert.pem()),
            key: write("key.pem", &key.serialize_pem()),
            _dir: dir,
        }
    }

    /// A rustls server config (ring) presenting this certificate, for the kit's TLS peers.
    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        server_config(&self.cert, &self.key)
    }

    /// A rustls client config (ring) that trusts this CA only.
    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        Arc::new(config)
    }
}

/// A rustls server config (ring) for the PEM files `cert` and `key`.
pub(crate) fn server_config(cert: &Path, key: &Path) -> Arc<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    Arc::new(config)
}
