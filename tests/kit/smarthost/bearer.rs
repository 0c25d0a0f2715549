//! The bearer engine of the fake smarthost, the kit's own because mailin has no XOAUTH2: it
//! offers STARTTLS and, over TLS only, AUTH XOAUTH2 (and OAUTHBEARER when asked), accepts only
//! the access token the `OAuthState` says is valid, and records mail in the smarthost's
//! `Delivered` list. Independent of the relay's code; binds nothing itself (the smarthost
//! hands it a 127.0.0.1 listener).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::super::oauth::serve;
use super::super::OAuthShared;
use super::{Delivered, SmarthostShared};

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
