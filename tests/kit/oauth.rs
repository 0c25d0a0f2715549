//! OAuth 2.0 peers, written here because no test crate offers them: a token endpoint (HTTPS,
//! one POST per connection, RFC 6749 §6 refresh-token grant), and the `OAuthState` it shares
//! with the fake smarthost's bearer engine (`Smarthost::builder().oauth(…)`) and the test. Uses
//! rustls directly with the test PKI's certificate for 127.0.0.1, binds 127.0.0.1 only, and is
//! independent of the relay's code: it parses with its own simple rules. Knows nothing of SMTP.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::server_config;

/// What both peers know and record.
#[derive(Debug, Default)]
pub(crate) struct OAuthState {
    /// The refresh token the endpoint accepts.
    pub(crate) refresh_token: String,
    pub(crate) client_id: String,
    /// When set, the endpoint hands out this refresh token with the next access token (and
    /// accepts only it from then on): rotation.
    pub(crate) rotate_to: Option<String>,
    /// The access token the smarthost accepts; `None` refuses every token (revoked).
    pub(crate) valid_token: Option<String>,
    /// Grants the endpoint answered with 200.
    pub(crate) issued: usize,
    /// Every request to the endpoint (form bodies, as sent).
    pub(crate) requests: Vec<String>,
    /// Every AUTH at the smarthost: mechanism, user, token, accepted.
    pub(crate) auths: Vec<(String, String, String, bool)>,
}

/// The `OAuthState` both peers and the test hold.
pub(crate) type OAuthShared = Arc<Mutex<OAuthState>>;

/// Every connection gets 10 s of I/O at most: a stuck peer fails the test, never hangs it.
fn bounded(stream: &TcpStream) {
    let limit = Some(super::slack(Duration::from_secs(10)));
    stream.set_read_timeout(limit).unwrap();
    stream.set_write_timeout(limit).unwrap();
}

/// Accepts on `listener` and runs `handler` on a thread per connection, each connection
/// bounded; `handler` gets the server TLS config for `cert`/`key` to use as it needs.
pub(super) fn serve(
    listener: TcpListener,
    cert: &Path,
    key: &Path,
    state: &OAuthShared,
    handler: impl Fn(TcpStream, Arc<ServerConfig>, &OAuthShared) + Send + Sync + 'static,
) {
    let config = server_config(cert, key);
    let state = Arc::clone(state);
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (config, state, handler) = (
                Arc::clone(&config),
                Arc::clone(&state),
                Arc::clone(&handler),
            );
            thread::spawn(move || {
                bounded(&stream);
                handler(stream, config, &state);
            });
        }
    });
}

/// The token endpoint on `https://127.0.0.1:<port>/token`.
pub(crate) struct TokenEndpoint {
    pub(crate) port: u16,
}

impl TokenEndpoint {
    pub(crate) fn start(cert: &Path, key: &Path, state: &OAuthShared) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        serve(listener, cert, key, state, |stream, config, state| {
            let conn = ServerConnection::new(config).unwrap();
            let mut tls = StreamOwned::new(conn, stream);
            let _ = serve_token(&mut tls, state);
        });
        Self { port }
    }

    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}/token", self.port)
    }
}

/// RFC 3986 percent-decoding with `+` as space (form encoding).
fn form_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn serve_token(tls: &mut impl ReadWrite, state: &OAuthShared) -> io::Result<()> {
    let mut input = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, length) = loop {
        let n = tls.read(&mut buf)?;
        assert!(n > 0, "token request cut short");
        input.extend_from_slice(&buf[..n]);
        if let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(input[..end].to_vec()).unwrap();
            input.drain(..end + 4);
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().unwrap())
                })
                .expect("no Content-Length");
            break (head, length);
        }
    };
    while input.len() < length {
        let n = tls.read(&mut buf)?;
        assert!(n > 0, "token request body cut short");
        input.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8(input).unwrap();
    let form: Vec<(String, String)> = body
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect();
    let get = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut st = state.lock().unwrap();
    st.requests.push(body.clone());
    let ok_request = head.starts_with("POST /token HTTP/1.1\r\n")
        && head
            .to_ascii_lowercase()
            .contains("content-type: application/x-www-form-urlencoded");
    let (status, json) = if !ok_request || get("grant_type") != Some("refresh_token") {
        (
            "400 Bad Request",
            r#"{"error":"unsupported_grant_type"}"#.to_owned(),
        )
    } else if get("client_id") != Some(st.client_id.as_str()) {
        (
            "401 Unauthorized",
            r#"{"error":"invalid_client"}"#.to_owned(),
        )
    } else if get("refresh_token") != Some(st.refresh_token.as_str()) {
        ("400 Bad Request", r#"{"error":"invalid_grant"}"#.to_owned())
    } else {
        st.issued += 1;
        let token = format!("access-{}", st.issued);
        st.valid_token = Some(token.clone());
        let rotated = match st.rotate_to.take() {
            Some(next) => {
                st.refresh_token = next.clone();
                format!(r#","refresh_token":"{next}""#)
            }
            None => String::new(),
        };
        let json = format!(
            r#"{{"token_type":"Bearer","expires_in":3599,"access_token":"{token}"{rotated}}}"#
        );
        ("200 OK", json)
    };
    drop(st);
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{json}",
        json.len()
    );
    tls.write_all(reply.as_bytes())?;
    tls.flush()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}
