//! Tests of the TLS glue, with the kit's certificates made at test time: configs from PEM
//! files, handshakes over 127.0.0.1, and the wording of certificate failures.

use async_io::Async;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::kit::TestPki;

/// The crate's own server config loader (under test here) on `pki`'s certificate and key.
fn server(pki: &TestPki) -> Arc<ServerConfig> {
    server_config(&pki.cert, &pki.key).unwrap()
}

/// The crate's own client config loader (under test here) trusting `pki`'s CA only.
fn client(pki: &TestPki) -> Arc<ClientConfig> {
    client_config(Some(&pki.ca)).unwrap()
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
    handshake(server(&pki), client(&pki), "localhost:25").unwrap();
    handshake(server(&pki), client(&pki), "127.0.0.1:25").unwrap();
}

#[test]
fn wrong_name_is_worded_for_the_operator() {
    let pki = TestPki::new(&["mail.example.net"]);
    let error = handshake(server(&pki), client(&pki), "localhost:587").unwrap_err();
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
    let error = handshake(server(&pki), client(&other), "localhost:25").unwrap_err();
    let failure = describe_handshake_error(&error, "localhost:25");
    assert!(
        failure.message.contains("not signed by a trusted CA"),
        "{}",
        failure.message
    );
    // The default roots (web PKI) do not know a private CA either.
    let web = client_config(None).unwrap();
    let error = handshake(server(&pki), web, "localhost:25").unwrap_err();
    assert!(describe_handshake_error(&error, "localhost:25")
        .message
        .contains("trusted CA"));
}

#[test]
fn expired_certificate_is_a_clock_problem_only_when_the_clock_is_unset() {
    let pki = TestPki::with_validity(&["localhost"], Some((2000, 2001)));
    let error = handshake(server(&pki), client(&pki), "localhost:25").unwrap_err();
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
