//! OAuth 2.0 for the smarthost, the pure part: for a `config::TokenUrl`, the refresh-token grant
//! (RFC 6749 §6) as one HTTP/1.1 POST, the endpoint's reply (status line and headers read by
//! `httparse`, a body with `Content-Length`, chunked or ended by the close; then the JSON token
//! reply), and when a cached access token must be refreshed. No I/O, no clock: `forward::token`
//! is the glue.
//!
//! JSON: the main crate has no JSON parser (serde_json is not in its tree), and the reply needs
//! three fields, so `json_fields` is a small bounded reader of one flat object's string and
//! number members; nested values are skipped, never interpreted. Both readers take network
//! input: the fuzz targets `oauth_response` and `oauth_json` (in `fuzz/`) run them on
//! arbitrary bytes.
//!
//! Secrets (the refresh token, the client secret, the access token) never appear in a `Debug`
//! form or an error text.

use std::fmt;

use crate::config::TokenUrl;

/// Largest reply accepted from the token endpoint (headers and body): token replies are a few
/// KiB (Microsoft's access tokens are JWTs of 1–3 KiB).
pub const MAX_RESPONSE: usize = 64 * 1024;

/// A token this close to its expiry is refreshed before use: it must survive the SMTP
/// handshake.
pub const REFRESH_MARGIN_MS: u64 = 60_000;

/// Lifetime assumed when the reply has no `expires_in` (RFC 6749 §5.1 makes it optional):
/// short, so a token without one is not used for long.
pub const DEFAULT_LIFETIME_SECS: u64 = 300;

/// The refresh-token grant's parameters (RFC 6749 §6).
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshGrant<'a> {
    pub client_id: &'a str,
    pub client_secret: Option<&'a str>,
    pub refresh_token: &'a str,
    pub scope: Option<&'a str>,
}

impl fmt::Debug for RefreshGrant<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshGrant")
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl RefreshGrant<'_> {
    /// The `application/x-www-form-urlencoded` body. The client credentials go in the body
    /// (RFC 6749 §2.3.1 allows it; public clients such as Thunderbird's have no secret).
    pub fn form(&self) -> String {
        let mut out = String::new();
        let mut pair = |name: &str, value: &str| {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(name);
            out.push('=');
            form_encode(value, &mut out);
        };
        pair("grant_type", "refresh_token");
        pair("refresh_token", self.refresh_token);
        pair("client_id", self.client_id);
        if let Some(secret) = self.client_secret {
            pair("client_secret", secret);
        }
        if let Some(scope) = self.scope {
            pair("scope", scope);
        }
        out
    }

    /// The whole request: one POST, `Connection: close`, so the reply ends with the
    /// connection. A secret: never log it.
    pub fn request(&self, url: &TokenUrl) -> Vec<u8> {
        let body = self.form();
        let host = if url.port == 443 {
            url.host.clone()
        } else {
            url.address()
        };
        format!(
            "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: outpost\r\n\
             Accept: application/json\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            url.path,
            body.len()
        )
        .into_bytes()
    }
}

/// WHATWG `application/x-www-form-urlencoded` byte serializer: unreserved bytes as they are,
/// space as `+`, everything else `%XX`.
fn form_encode(value: &str, out: &mut String) {
    for &b in value.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

/// Why the token endpoint's reply could not be used. Texts never quote the body (it may hold
/// a token); `Status` carries the OAuth `error` code, which is not secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not HTTP, too large, or cut short.
    Http(String),
    /// A status other than 200, with the reply's `error` field when it had one.
    Status { code: u16, error: Option<String> },
    /// 200, but no usable `access_token`.
    Reply(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(what) => write!(f, "bad HTTP reply: {what}"),
            Self::Status { code, error: None } => write!(f, "HTTP status {code}"),
            Self::Status {
                code,
                error: Some(error),
            } => write!(f, "HTTP status {code} ({error})"),
            Self::Reply(what) => write!(f, "unusable token reply: {what}"),
        }
    }
}

/// Header lines read from the endpoint's reply head; a head with more is not a token reply.
const MAX_HEADERS: usize = 64;

/// A complete HTTP response: status code and decoded body. `Ok(None)`: more bytes are needed
/// (call again when more arrived); `eof` says the peer closed, so a body without a length ends
/// here.
pub fn parse_response(input: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, TokenError> {
    let http = |what: &str| TokenError::Http(what.to_owned());
    if input.len() > MAX_RESPONSE {
        return Err(http("larger than 64 KiB"));
    }
    let Some(head) = read_head(input)? else {
        return if eof {
            Err(http("cut short"))
        } else {
            Ok(None)
        };
    };
    let (code, body) = (head.code, &input[head.len..]);
    if head.chunked {
        return match dechunk(body)? {
            Some(body) => Ok(Some((code, body))),
            None if eof => Err(http("chunked body cut short")),
            None => Ok(None),
        };
    }
    match head.length {
        Some(n) if body.len() >= n => Ok(Some((code, body[..n].to_vec()))),
        Some(_) if eof => Err(http("body shorter than its Content-Length")),
        Some(_) => Ok(None),
        None if eof => Ok(Some((code, body.to_vec()))),
        None => Ok(None),
    }
}

/// What the reply head says about the body.
struct Head {
    code: u16,
    /// Octets of the head, up to and including its empty line.
    len: usize,
    length: Option<usize>,
    chunked: bool,
}

/// The status line and headers; `None` until the head is complete.
fn read_head(input: &[u8]) -> Result<Option<Head>, TokenError> {
    let http = |what: &str| TokenError::Http(what.to_owned());
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::Version | httparse::Error::Status) => {
            return Err(http("no HTTP/1.x status line"))
        }
        Err(httparse::Error::TooManyHeaders) => return Err(http("too many headers")),
        Err(_) => return Err(http("malformed header")),
    };
    let Some(code) = response.code.filter(|c| (100..600).contains(c)) else {
        return Err(http("no HTTP/1.x status line"));
    };
    let mut head = Head {
        code,
        len,
        length: None,
        chunked: false,
    };
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).map(str::trim);
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = value.ok().and_then(|v| v.parse::<usize>().ok());
            head.length = Some(length.ok_or_else(|| http("bad Content-Length"))?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.is_ok_and(|v| v.eq_ignore_ascii_case("chunked"));
            if !head.chunked {
                return Err(http("unsupported Transfer-Encoding"));
            }
        }
    }
    Ok(Some(head))
}

/// RFC 9112 §7.1 chunked body; `None` until the last chunk arrived. Trailers are ignored.
fn dechunk(mut input: &[u8]) -> Result<Option<Vec<u8>>, TokenError> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = input.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size = std::str::from_utf8(&input[..eol])
            .ok()
            .map(|line| line.split(';').next().unwrap_or("").trim())
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .filter(|&n| n <= MAX_RESPONSE)
            .ok_or_else(|| TokenError::Http("bad chunk size".to_owned()))?;
        input = &input[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if input.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&input[..size]);
        input = &input[size + 2..];
    }
}

/// A successful token reply (RFC 6749 §5.1). `Debug` shows neither token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenReply {
    pub access_token: String,
    pub expires_in: u64,
    /// A new refresh token, when the endpoint rotates them (Microsoft does): it replaces the
    /// one in the file.
    pub refresh_token: Option<String>,
}

impl fmt::Debug for TokenReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReply")
            .field("expires_in", &self.expires_in)
            .field("rotated", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// Judges the endpoint's answer: 200 with a bearer `access_token`, else a `TokenError`.
pub fn token_reply(code: u16, body: &[u8]) -> Result<TokenReply, TokenError> {
    let fields = json_fields(body);
    let field = |name: &str| {
        fields
            .as_ref()
            .ok()
            .and_then(|f| f.iter().find(|(k, _)| k == name))
            .map(|(_, v)| v.clone())
    };
    if code != 200 {
        let error = match field("error") {
            Some(JsonValue::String(error)) if is_oauth_error_code(&error) => Some(error),
            _ => None,
        };
        return Err(TokenError::Status { code, error });
    }
    let reply = |what: &str| TokenError::Reply(what.to_owned());
    if let Err(what) = &fields {
        return Err(reply(what));
    }
    if let Some(JsonValue::String(kind)) = field("token_type") {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(reply("token_type is not Bearer"));
        }
    }
    let Some(JsonValue::String(access_token)) = field("access_token") else {
        return Err(reply("no access_token"));
    };
    // RFC 6750 §2.1 b64token: anything else could break the SASL message.
    let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if access_token.is_empty() || !access_token.chars().all(b64token) {
        return Err(reply("access_token is not a bearer token"));
    }
    let expires_in = match field("expires_in") {
        Some(JsonValue::Number(n)) => n,
        // Some endpoints (older Azure AD) send the number as a string.
        Some(JsonValue::String(s)) => s.parse().map_err(|_| reply("bad expires_in"))?,
        _ => DEFAULT_LIFETIME_SECS,
    };
    let refresh_token = match field("refresh_token") {
        Some(JsonValue::String(token))
            if !token.is_empty() && !token.contains(|c: char| c.is_ascii_control()) =>
        {
            Some(token)
        }
        _ => None,
    };
    Ok(TokenReply {
        access_token,
        expires_in,
        refresh_token,
    })
}

/// RFC 6749 §5.2: `error` is NQSCHAR; anything else is not logged.
fn is_oauth_error_code(error: &str) -> bool {
    !error.is_empty() && error.len() <= 64 && error.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// When a token fetched at `fetched_at` (queue-clock ms) with `expires_in` seconds must be
/// refreshed: `REFRESH_MARGIN_MS` before its end (at once if it lives shorter than that).
pub fn refresh_at(fetched_at: u64, expires_in: u64) -> u64 {
    fetched_at
        .saturating_add(expires_in.saturating_mul(1000))
        .saturating_sub(REFRESH_MARGIN_MS)
}

/// A member of the reply object, as far as it matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
enum JsonValue {
    String(String),
    Number(u64),
    /// Anything else (other numbers, booleans, null, objects, arrays): skipped.
    Other,
}

/// The members of one JSON object (RFC 8259), in order. Bounded by the input (at most
/// `MAX_RESPONSE`) and by a nesting depth of 32 for skipped values.
fn json_fields(input: &[u8]) -> Result<Vec<(String, JsonValue)>, String> {
    let mut p = Json { input, at: 0 };
    p.space();
    p.expect(b'{')?;
    let mut fields = Vec::new();
    p.space();
    if p.peek() == Some(b'}') {
        p.at += 1;
    } else {
        loop {
            p.space();
            let name = p.string()?;
            p.space();
            p.expect(b':')?;
            p.space();
            let value = match p.peek() {
                Some(b'"') => JsonValue::String(p.string()?),
                Some(b'0'..=b'9') => {
                    let start = p.at;
                    p.skip_value(0)?;
                    std::str::from_utf8(&input[start..p.at])
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .map_or(JsonValue::Other, JsonValue::Number)
                }
                _ => {
                    p.skip_value(0)?;
                    JsonValue::Other
                }
            };
            fields.push((name, value));
            p.space();
            match p.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err("malformed JSON object".to_owned()),
            }
        }
    }
    p.space();
    if p.at != input.len() {
        return Err("data after the JSON object".to_owned());
    }
    Ok(fields)
}

struct Json<'a> {
    input: &'a [u8],
    at: usize,
}

impl Json<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        if self.next() == Some(b) {
            Ok(())
        } else {
            Err(format!("expected {:?} in JSON", char::from(b)))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.next() {
                None => return Err("unterminated JSON string".to_owned()),
                Some(b'"') => break,
                Some(b'\\') => {
                    let c = match self.next() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hex = self.input.get(self.at..self.at + 4);
                            self.at += 4;
                            hex.and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .and_then(char::from_u32)
                                // Surrogate pairs never occur in tokens or error codes.
                                .ok_or("unsupported \\u escape in JSON")?
                        }
                        _ => return Err("bad escape in JSON string".to_owned()),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                Some(b) if b < 0x20 => return Err("control character in JSON string".to_owned()),
                Some(b) => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| "JSON string not UTF-8".to_owned())
    }

    /// Skips one value of any kind.
    fn skip_value(&mut self, depth: usize) -> Result<(), String> {
        if depth > 32 {
            return Err("JSON nested too deeply".to_owned());
        }
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(open @ (b'{' | b'[')) => {
                self.at += 1;
                let close = if open == b'{' { b'}' } else { b']' };
                self.space();
                if self.peek() == Some(close) {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    self.space();
                    if open == b'{' {
                        self.string()?;
                        self.space();
                        self.expect(b':')?;
                        self.space();
                    }
                    self.skip_value(depth + 1)?;
                    self.space();
                    match self.next() {
                        Some(b',') => continue,
                        Some(b) if b == close => return Ok(()),
                        _ => return Err("malformed JSON".to_owned()),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                let start = self.at;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'0'..=b'9' | b'a'..=b'z' | b'E')
                ) {
                    self.at += 1;
                }
                let word = &self.input[start..self.at];
                let number = word[0] == b'-' || word[0].is_ascii_digit();
                if number || matches!(word, b"true" | b"false" | b"null") {
                    Ok(())
                } else {
                    Err("bad JSON literal".to_owned())
                }
            }
            _ => Err("bad JSON value".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> RefreshGrant<'static> {
        RefreshGrant {
            client_id: "9e5f94bc-e8a4-4e73-b8be-63364c29d753",
            client_secret: None,
            refresh_token: "0.AX8A/r+t=k&n",
            scope: Some("https://outlook.office.com/SMTP.Send offline_access"),
        }
    }

    #[test]
    fn refresh_grant_is_form_encoded() {
        assert_eq!(
            grant().form(),
            "grant_type=refresh_token&refresh_token=0.AX8A%2Fr%2Bt%3Dk%26n\
             &client_id=9e5f94bc-e8a4-4e73-b8be-63364c29d753\
             &scope=https%3A%2F%2Foutlook.office.com%2FSMTP.Send+offline_access"
        );
        let with_secret = RefreshGrant {
            client_secret: Some("s é"),
            scope: None,
            ..grant()
        };
        assert!(with_secret.form().ends_with("&client_secret=s+%C3%A9"));
        let shown = format!("{:?}", grant());
        assert!(!shown.contains("AX8A"), "{shown}");
    }

    #[test]
    fn request_is_one_post_that_closes() {
        let url = TokenUrl::parse("https://127.0.0.1:4443/token").unwrap();
        let request = String::from_utf8(grant().request(&url)).unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, grant().form());
        assert!(head.starts_with("POST /token HTTP/1.1\r\nHost: 127.0.0.1:4443\r\n"));
        assert!(head.contains("\r\nContent-Type: application/x-www-form-urlencoded\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        assert!(head.ends_with("\r\nConnection: close"));
    }

    #[test]
    fn responses_with_length_chunked_or_until_close() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(ok, false), Ok(Some((200, b"{}".to_vec()))));
        assert_eq!(parse_response(&ok[..ok.len() - 1], false), Ok(None));
        assert!(parse_response(&ok[..ok.len() - 1], true).is_err());
        let chunked = b"HTTP/1.1 400 Bad\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked, false),
            Ok(Some((400, b"{\"a\":1}".to_vec())))
        );
        assert_eq!(parse_response(&chunked[..60], false), Ok(None));
        let close = b"HTTP/1.0 200 OK\r\nX: y\r\n\r\n{\"x\":2}";
        assert_eq!(parse_response(close, false), Ok(None));
        assert_eq!(
            parse_response(close, true),
            Ok(Some((200, b"{\"x\":2}".to_vec())))
        );
        for bad in [
            &b"SMTP 220\r\n\r\n"[..],
            b"HTTP/1.1 2000 x\r\n\r\n",
            b"HTTP/1.1 200\r\nbad\r\n\r\n",
        ] {
            assert!(parse_response(bad, true).is_err(), "{bad:?}");
        }
        let huge = vec![b'x'; MAX_RESPONSE + 1];
        assert!(parse_response(&huge, false).is_err());
    }

    #[test]
    fn reply_heads_are_bounded() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            head.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        assert!(parse_response(&head, false).is_err());
        let lf_only = b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}";
        assert_eq!(
            parse_response(lf_only, false),
            Ok(Some((200, b"{}".to_vec())))
        );
    }

    #[test]
    fn token_replies_are_judged() {
        let body = br#"{"token_type":"Bearer","scope":"SMTP.Send","expires_in":3599,
            "ext_expires_in":3599,"access_token":"eyJ0eXAi.eyJhdWQi.sig-_",
            "refresh_token":"0.AX8A\/new","id":{"nested":[1,2.5e3,true,null,"\"}"]}}"#;
        let reply = token_reply(200, body).unwrap();
        assert_eq!(reply.access_token, "eyJ0eXAi.eyJhdWQi.sig-_");
        assert_eq!(reply.expires_in, 3599);
        assert_eq!(reply.refresh_token.as_deref(), Some("0.AX8A/new"));
        let shown = format!("{reply:?}");
        assert!(!shown.contains("eyJ") && !shown.contains("AX8A"), "{shown}");

        let minimal = token_reply(200, br#"{"access_token":"abc","expires_in":"60"}"#).unwrap();
        assert_eq!((minimal.expires_in, minimal.refresh_token), (60, None));
        let defaulted = token_reply(200, br#" {"access_token":"abc"} "#).unwrap();
        assert_eq!(defaulted.expires_in, DEFAULT_LIFETIME_SECS);

        assert_eq!(
            token_reply(
                400,
                br#"{"error":"invalid_grant","error_description":"AADSTS70000"}"#
            ),
            Err(TokenError::Status {
                code: 400,
                error: Some("invalid_grant".into())
            })
        );
        assert_eq!(
            token_reply(503, b"<html>down</html>")
                .unwrap_err()
                .to_string(),
            "HTTP status 503"
        );
        for bad in [
            &br#"{"expires_in":3600}"#[..],
            br#"{"access_token":"a b"}"#,
            br#"{"access_token":"abc","token_type":"mac"}"#,
            br#"{"access_token":"abc""#,
            br#"{"access_token":"abc"} x"#,
            br#"["access_token"]"#,
            br#"{"access_token":"abc","x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
        ] {
            assert!(
                matches!(token_reply(200, bad), Err(TokenError::Reply(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn refresh_time_keeps_a_margin() {
        assert_eq!(refresh_at(1_000, 3600), 1_000 + 3_600_000 - 60_000);
        assert_eq!(refresh_at(1_000, 30), 0);
    }
}
