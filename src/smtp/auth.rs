//! SASL for SMTP AUTH (RFC 4954): the PLAIN (RFC 4616) and LOGIN mechanisms, decoded on the
//! server side and encoded on the client side; the OAuth 2.0 bearer-token mechanisms
//! OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's and Microsoft's older form) on the client side
//! only. Pure: performs no I/O, checks no password (the
//! glue does, with the hash from the config, see `Next::AuthCheck`), and never puts a secret
//! into a `Debug` or `Display` form.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The mechanisms outpost speaks, in the order it prefers them as a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// Case-insensitive mechanism name (RFC 4954 §4).
    pub fn parse(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Some(Self::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Some(Self::Login)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
        }
    }
}

/// What a client presented. `Debug` shows the user name only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// RFC 4616 authorization identity; empty when the client did not ask for one.
    pub authzid: String,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authzid", &self.authzid)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why an exchange ended without credentials. Each maps to one reply in `server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 §4).
    Canceled,
    /// Not base64.
    BadBase64,
    /// Decoded, but not the mechanism's format (PLAIN without two NULs, not UTF-8 …).
    Malformed,
}

/// The next move of a server-side exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum SaslStep {
    /// Send `334 <challenge>` (already base64) and wait for the next response line.
    Challenge(&'static str),
    /// The exchange is complete: check these credentials.
    Done(Credentials),
    Failed(SaslError),
}

/// `Username:` and `Password:` in base64: the de-facto LOGIN challenges.
const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

/// The server side of one AUTH exchange.
#[derive(Debug)]
pub struct SaslExchange {
    mechanism: Mechanism,
    /// LOGIN: the user name, once it arrived. Not secret, but kept out of `Debug` anyway.
    username: Option<String>,
}

impl SaslExchange {
    /// Starts an exchange for `AUTH <mechanism> [initial-response]`.
    pub fn start(mechanism: Mechanism, initial_response: Option<&str>) -> (Self, SaslStep) {
        let mut exchange = Self {
            mechanism,
            username: None,
        };
        let step = match (mechanism, initial_response) {
            // RFC 4954 §4: an empty challenge asks for the response.
            (Mechanism::Plain, None) => SaslStep::Challenge(""),
            (Mechanism::Login, None) => SaslStep::Challenge(LOGIN_USERNAME),
            (_, Some(response)) => exchange.respond(response),
        };
        (exchange, step)
    }

    /// Feeds one response line (base64, without CRLF).
    pub fn respond(&mut self, line: &str) -> SaslStep {
        let line = line.trim_end_matches([' ', '\t']);
        if line == "*" {
            return SaslStep::Failed(SaslError::Canceled);
        }
        let decoded = match decode(line) {
            Ok(decoded) => decoded,
            Err(error) => return SaslStep::Failed(error),
        };
        match self.mechanism {
            Mechanism::Plain => match decode_plain(&decoded) {
                Ok(credentials) => SaslStep::Done(credentials),
                Err(error) => SaslStep::Failed(error),
            },
            Mechanism::Login => {
                let Ok(text) = String::from_utf8(decoded) else {
                    return SaslStep::Failed(SaslError::Malformed);
                };
                match self.username.take() {
                    None => {
                        self.username = Some(text);
                        SaslStep::Challenge(LOGIN_PASSWORD)
                    }
                    Some(username) => SaslStep::Done(Credentials {
                        authzid: String::new(),
                        username,
                        password: text,
                    }),
                }
            }
        }
    }
}

/// Base64 of a response; `=` alone is the empty response (RFC 4954 §4).
fn decode(line: &str) -> Result<Vec<u8>, SaslError> {
    if line == "=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| SaslError::BadBase64)
}

/// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`, UTF-8, no NUL inside the fields.
pub fn decode_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut fields = message.split(|&b| b == 0);
    let (Some(authzid), Some(username), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| SaslError::Malformed);
    let credentials = Credentials {
        authzid: text(authzid)?,
        username: text(username)?,
        password: text(password)?,
    };
    if credentials.username.is_empty() || credentials.password.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(credentials)
}

/// The client's `AUTH PLAIN <initial-response>` line, CRLF-terminated (RFC 4954 §4, RFC 4616).
/// The bytes are a secret: never log them.
pub fn plain_command(username: &str, password: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(username.len() + password.len() + 2);
    message.push(0);
    message.extend_from_slice(username.as_bytes());
    message.push(0);
    message.extend_from_slice(password.as_bytes());
    format!("AUTH PLAIN {}\r\n", STANDARD.encode(message)).into_bytes()
}

/// One LOGIN response line (`base64(text)` CRLF). A secret when `text` is the password.
pub fn login_response(text: &str) -> Vec<u8> {
    format!("{}\r\n", STANDARD.encode(text)).into_bytes()
}

/// The client's `AUTH OAUTHBEARER <initial-response>` line (RFC 7628 §3.1): the GS2 header
/// with the authorization identity, then `host`, `port` and `auth=Bearer <token>`, each ended by
/// ^A, and a final ^A. The bytes are a secret: never log them.
pub fn oauthbearer_command(username: &str, host: &str, port: u16, token: &str) -> Vec<u8> {
    let message = format!(
        "n,a={},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01",
        gs2_escape(username)
    );
    format!("AUTH OAUTHBEARER {}\r\n", STANDARD.encode(message)).into_bytes()
}

/// The client's `AUTH XOAUTH2 <initial-response>` line: `user=<user>^Aauth=Bearer
/// <token>^A^A` in base64. The bytes are a secret: never log them.
pub fn xoauth2_command(username: &str, token: &str) -> Vec<u8> {
    let message = format!("user={username}\x01auth=Bearer {token}\x01\x01");
    format!("AUTH XOAUTH2 {}\r\n", STANDARD.encode(message)).into_bytes()
}

/// RFC 5801 §4 `saslname`: `,` and `=` are written `=2C` and `=3D`.
fn gs2_escape(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    fn creds(authzid: &str, username: &str, password: &str) -> Credentials {
        Credentials {
            authzid: authzid.into(),
            username: username.into(),
            password: password.into(),
        }
    }

    #[test]
    fn plain_with_initial_response_is_done_at_once() {
        let response = b64(b"\0camera\0s3cret");
        let (_, step) = SaslExchange::start(Mechanism::Plain, Some(&response));
        assert_eq!(step, SaslStep::Done(creds("", "camera", "s3cret")));
    }

    #[test]
    fn plain_without_initial_response_gets_an_empty_challenge() {
        let (mut exchange, step) = SaslExchange::start(Mechanism::Plain, None);
        assert_eq!(step, SaslStep::Challenge(""));
        let step = exchange.respond(&b64(b"admin\0camera\0pw"));
        assert_eq!(step, SaslStep::Done(creds("admin", "camera", "pw")));
    }

    #[test]
    fn plain_rejects_wrong_field_counts_and_empty_fields() {
        for bad in [
            &b"camera\0pw"[..],
            b"\0camera\0pw\0x",
            b"\0\0pw",
            b"\0camera\0",
            b"\0cam\xffera\0pw",
            b"",
        ] {
            assert_eq!(decode_plain(bad), Err(SaslError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn login_asks_for_username_then_password() {
        let (mut exchange, step) = SaslExchange::start(Mechanism::Login, None);
        assert_eq!(step, SaslStep::Challenge("VXNlcm5hbWU6"));
        assert_eq!(
            exchange.respond(&b64(b"camera")),
            SaslStep::Challenge("UGFzc3dvcmQ6")
        );
        assert_eq!(
            exchange.respond(&b64(b"pw")),
            SaslStep::Done(creds("", "camera", "pw"))
        );
    }

    #[test]
    fn login_initial_response_is_the_username() {
        let (mut exchange, step) = SaslExchange::start(Mechanism::Login, Some(&b64(b"camera")));
        assert_eq!(step, SaslStep::Challenge("UGFzc3dvcmQ6"));
        assert_eq!(
            exchange.respond(&b64(b"pw")),
            SaslStep::Done(creds("", "camera", "pw"))
        );
    }

    #[test]
    fn star_cancels_and_junk_is_bad_base64() {
        let (mut exchange, _) = SaslExchange::start(Mechanism::Login, None);
        assert_eq!(exchange.respond("*"), SaslStep::Failed(SaslError::Canceled));
        let (mut exchange, _) = SaslExchange::start(Mechanism::Plain, None);
        assert_eq!(
            exchange.respond("not base64!"),
            SaslStep::Failed(SaslError::BadBase64)
        );
        let (_, step) = SaslExchange::start(Mechanism::Plain, Some("="));
        assert_eq!(step, SaslStep::Failed(SaslError::Malformed));
    }

    #[test]
    fn mechanism_names_are_case_insensitive() {
        assert_eq!(Mechanism::parse("plain"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::parse("LoGiN"), Some(Mechanism::Login));
        assert_eq!(Mechanism::parse("CRAM-MD5"), None);
    }

    #[test]
    fn client_encodings_round_trip_through_the_server_side() {
        let line = plain_command("camera", "pw");
        let text = String::from_utf8(line).unwrap();
        let response = text
            .strip_prefix("AUTH PLAIN ")
            .unwrap()
            .strip_suffix("\r\n")
            .unwrap();
        let (_, step) = SaslExchange::start(Mechanism::Plain, Some(response));
        assert_eq!(step, SaslStep::Done(creds("", "camera", "pw")));
        assert_eq!(login_response("camera"), b"Y2FtZXJh\r\n");
    }

    #[test]
    fn oauthbearer_initial_response_follows_rfc_7628() {
        let line =
            String::from_utf8(oauthbearer_command("a=b,c@x", "mx.test", 587, "T0k")).unwrap();
        let encoded = line
            .strip_prefix("AUTH OAUTHBEARER ")
            .unwrap()
            .strip_suffix("\r\n")
            .unwrap();
        let decoded = STANDARD.decode(encoded).unwrap();
        assert_eq!(
            decoded,
            b"n,a=a=3Db=2Cc@x,\x01host=mx.test\x01port=587\x01auth=Bearer T0k\x01\x01"
        );
    }

    #[test]
    fn xoauth2_initial_response_is_the_known_form() {
        // The example of Google's XOAUTH2 documentation.
        let line = xoauth2_command(
            "someuser@example.com",
            "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
        );
        assert_eq!(
            line,
            b"AUTH XOAUTH2 dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==\r\n"
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let shown = format!("{:?}", creds("", "camera", "hunter2"));
        assert!(
            shown.contains("camera") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
