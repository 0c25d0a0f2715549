//! OAuth 2.0 peers, written here because no test crate offers them: a token endpoint (HTTPS,
//! one POST per connection, RFC 6749 §6 refresh-token grant) and the bearer engine of the fake
//! smarthost (`Smarthost::builder().oauth(…)`), which offers STARTTLS and, over TLS only, AUTH
//! XOAUTH2 (and OAUTHBEARER when asked) and accepts only the access token the endpoint issued
//! last. Both use rustls directly with the test PKI's certificate for 127.0.0.1, bind 127.0.0.1
//! only, and share one `OAuthState` the tests read and change. Independent of the relay's code:
//! they parse with their own simple rules.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::smarthost::SmarthostShared;
use super::{server_config, Delivered};

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
fn serve(
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

/// The bearer smarthost on `listener`: STARTTLS, then AUTH with a bearer token, then mail,
/// recorded in `recorder`. `oauthbearer`: offer OAUTHBEARER next to XOAUTH2.
pub(super) fn serve_smarthost(
    listener: TcpListener,
    cert: &Path,
    key: &Path,
    state: &OAuthShared,
    recorder: &Arc<SmarthostShared>,
    oauthbearer: bool,
) {
    let recorder = Arc::clone(recorder);
    serve(listener, cert, key, state, move |stream, config, state| {
        let _ = serve_smtp(stream, config, state, &recorder, oauthbearer);
    });
}

/// One line without CRLF; `None` at EOF.
fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
}

fn serve_smtp(
    stream: TcpStream,
    config: Arc<ServerConfig>,
    state: &OAuthShared,
    recorder: &SmarthostShared,
    oauthbearer: bool,
) -> io::Result<()> {
    let mut plain = BufReader::new(stream);
    plain.get_mut().write_all(b"220 oauth.test ESMTP\r\n")?;
    // Plaintext: EHLO and STARTTLS only.
    loop {
        let Some(line) = read_line(&mut plain)? else {
            return Ok(());
        };
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-oauth.test\r\n250 STARTTLS\r\n",
            "STARTTLS" => {
                assert!(plain.buffer().is_empty(), "data pipelined after STARTTLS");
                plain.get_mut().write_all(b"220 go ahead\r\n")?;
                break;
            }
            "QUIT" => {
                plain.get_mut().write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => b"530 5.7.0 STARTTLS first\r\n",
        };
        plain.get_mut().write_all(reply)?;
    }
    let conn = ServerConnection::new(config).unwrap();
    let mut tls = BufReader::new(StreamOwned::new(conn, plain.into_inner()));
    let mut authenticated = false;
    let (mut from, mut to) = (String::new(), Vec::new());
    loop {
        let Some(line) = read_line(&mut tls)? else {
            return Ok(());
        };
        let mut words = line.splitn(3, ' ');
        let verb = words.next().unwrap_or("").to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => {
                let bearer = if oauthbearer { " OAUTHBEARER" } else { "" };
                format!("250-oauth.test\r\n250-AUTH XOAUTH2{bearer}\r\n250 8BITMIME\r\n")
            }
            "AUTH" => {
                let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
                let response = words.next().unwrap_or("");
                let (user, token) = decode_bearer(&mechanism, response, oauthbearer);
                let mut st = state.lock().unwrap();
                let ok = !user.is_empty() && st.valid_token.as_deref() == Some(token.as_str());
                st.auths.push((mechanism.clone(), user, token, ok));
                drop(st);
                if ok {
                    authenticated = true;
                    "235 2.7.0 Authentication successful\r\n".to_owned()
                } else {
                    // The error challenge; the client must answer before the final refusal.
                    let error = STANDARD.encode(r#"{"status":"401","schemes":"bearer"}"#);
                    tls.get_mut()
                        .write_all(format!("334 {error}\r\n").as_bytes())?;
                    tls.get_mut().flush()?;
                    let answer = read_line(&mut tls)?.unwrap_or_default();
                    let expected = if mechanism == "OAUTHBEARER" {
                        "AQ=="
                    } else {
                        ""
                    };
                    assert_eq!(answer, expected, "{mechanism} error challenge answer");
                    "535 5.7.3 Authentication unsuccessful\r\n".to_owned()
                }
            }
            "MAIL" | "RCPT" | "DATA" if !authenticated => {
                "530 5.7.0 Authentication required\r\n".to_owned()
            }
            "MAIL" => {
                from = path(&line);
                to.clear();
                "250 ok\r\n".to_owned()
            }
            "RCPT" => {
                to.push(path(&line));
                "250 ok\r\n".to_owned()
            }
            "DATA" => {
                tls.get_mut().write_all(b"354 go\r\n")?;
                tls.get_mut().flush()?;
                let mut data = Vec::new();
                loop {
                    let Some(line) = read_line(&mut tls)? else {
                        return Ok(());
                    };
                    if line == "." {
                        break;
                    }
                    let line = line.strip_prefix('.').unwrap_or(&line);
                    data.extend_from_slice(line.as_bytes());
                    data.extend_from_slice(b"\r\n");
                }
                recorder.delivered.lock().unwrap().push(Delivered {
                    from: std::mem::take(&mut from),
                    to: std::mem::take(&mut to),
                    data,
                    is8bit: false,
                });
                "250 2.0.0 queued\r\n".to_owned()
            }
            "RSET" | "NOOP" => "250 ok\r\n".to_owned(),
            "QUIT" => {
                tls.get_mut().write_all(b"221 bye\r\n")?;
                tls.get_mut().flush()?;
                return Ok(());
            }
            _ => "502 5.5.1 unknown\r\n".to_owned(),
        };
        tls.get_mut().write_all(reply.as_bytes())?;
        tls.get_mut().flush()?;
    }
}

/// `MAIL FROM:<a@b> …` → `a@b`.
fn path(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line[start..].find('>').map_or(line.len(), |i| start + i);
    line[start..end].to_owned()
}

/// The user and the token of an XOAUTH2 or OAUTHBEARER initial response; empty strings when it
/// is not in the mechanism's exact form.
fn decode_bearer(mechanism: &str, response: &str, oauthbearer: bool) -> (String, String) {
    let Ok(decoded) = STANDARD.decode(response) else {
        return (String::new(), String::new());
    };
    let text = String::from_utf8(decoded).unwrap_or_default();
    let parsed = match mechanism {
        "XOAUTH2" => text
            .strip_prefix("user=")
            .and_then(|rest| rest.strip_suffix("\x01\x01"))
            .and_then(|rest| rest.split_once("\x01auth=Bearer "))
            .map(|(user, token)| (user.to_owned(), token.to_owned())),
        "OAUTHBEARER" if oauthbearer => {
            // n,a=<user>,^Ahost=…^Aport=…^Aauth=Bearer <token>^A^A
            text.strip_prefix("n,a=")
                .and_then(|rest| rest.strip_suffix("\x01\x01"))
                .and_then(|rest| {
                    let (user, rest) = rest.split_once(",\x01")?;
                    let fields: Vec<&str> = rest.split('\x01').collect();
                    let host_ok = fields.contains(&"host=127.0.0.1");
                    let port_ok = fields.iter().any(|f| f.starts_with("port="));
                    let token = fields.iter().find_map(|f| f.strip_prefix("auth=Bearer "))?;
                    (host_ok && port_ok).then(|| (user.to_owned(), token.to_owned()))
                })
        }
        _ => None,
    };
    parsed.unwrap_or_default()
}
