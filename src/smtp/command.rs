//! SMTP commands: the `Command` enum, `parse_command` for one framed line, and `SyntaxError`
//! with the one table that maps every syntax error to its reply. Performs no I/O and keeps no
//! session state: sequencing and limits belong to `server`.

use std::fmt;

use super::address::{Mailbox, ReversePath};
use super::reply::{EnhancedStatus, Reply};

/// RFC 1652 / RFC 6152 body type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

/// ESMTP parameters of MAIL FROM (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// Declared size; saturates at `u64::MAX` for absurd values (it is then simply too big).
    pub size: Option<u64>,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
}

/// One parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The client's self-identification, as sent (sanitised only where it is printed).
    Ehlo(String),
    Helo(String),
    Mail {
        path: ReversePath,
        params: MailParams,
    },
    /// RCPT TO takes no parameters here: DSN (RFC 3461) is not advertised.
    Rcpt {
        path: Mailbox,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    /// RFC 4954. The initial response is a secret: its `Debug` form is redacted.
    Auth {
        mechanism: String,
        initial_response: Option<SaslResponse>,
    },
}

/// A SASL response (base64 as sent). Its `Debug` never shows the content, so a logged
/// `Command` cannot leak credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslResponse(pub String);

impl fmt::Debug for SaslResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SaslResponse(<redacted>)")
    }
}

impl Command {
    /// RFC 2920 §3.1: commands after which the server flushes its replies (the last command
    /// of a pipelined group). MAIL, RCPT and RSET may be followed by more.
    pub fn ends_pipeline_group(&self) -> bool {
        !matches!(self, Self::Mail { .. } | Self::Rcpt { .. } | Self::Rset)
    }
}

/// Why a command line is not a usable command. Each maps to exactly one reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntaxError {
    /// Verb not known at all.
    UnknownCommand,
    /// Known SMTP verb that outpost does not implement (BDAT, EXPN, ETRN, TURN).
    NotImplemented,
    /// Command line over 512 octets (RFC 5321 §4.5.3.1.4); reported by the line framer.
    LineTooLong,
    /// Not UTF-8, or control characters in the line.
    BadEncoding,
    /// Arguments missing, superfluous, or malformed (e.g. `MAIL` without `FROM:`).
    BadArguments,
    BadSenderAddress,
    BadRecipientAddress,
    /// Non-ASCII address without SMTPUTF8 (RFC 6531 §3.5).
    NonAsciiAddress,
    /// ESMTP parameter not recognised or not advertised.
    UnknownParameter,
    /// Recognised parameter with a bad or repeated value.
    BadParameterValue,
}

const fn status(class: u8, subject: u16, detail: u16) -> Option<EnhancedStatus> {
    Some(EnhancedStatus {
        class,
        subject,
        detail,
    })
}

impl From<&SyntaxError> for Reply {
    /// The one table of syntax replies (RFC 5321 §4.2.3 codes, RFC 3463 statuses).
    fn from(error: &SyntaxError) -> Self {
        let (code, status, text) = match error {
            SyntaxError::UnknownCommand => (500, status(5, 5, 1), "Command unrecognized"),
            SyntaxError::NotImplemented => (502, status(5, 5, 1), "Command not implemented"),
            SyntaxError::LineTooLong => (500, status(5, 5, 2), "Line too long"),
            SyntaxError::BadEncoding => (500, status(5, 5, 2), "Syntax error"),
            SyntaxError::BadArguments => (501, status(5, 5, 4), "Syntax error in arguments"),
            SyntaxError::BadSenderAddress => (501, status(5, 1, 7), "Bad sender address syntax"),
            SyntaxError::BadRecipientAddress => {
                (501, status(5, 1, 3), "Bad recipient address syntax")
            }
            SyntaxError::NonAsciiAddress => {
                (553, status(5, 6, 7), "Non-ASCII address requires SMTPUTF8")
            }
            SyntaxError::UnknownParameter => (555, status(5, 5, 4), "Unsupported parameter"),
            SyntaxError::BadParameterValue => (501, status(5, 5, 4), "Invalid parameter value"),
        };
        Self {
            code,
            status,
            text: text.into(),
        }
    }
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Reply::from(self).text, f)
    }
}

impl std::error::Error for SyntaxError {}

/// Parses one command line, without its line terminator.
pub fn parse_command(line: &[u8]) -> Result<Command, SyntaxError> {
    let line = std::str::from_utf8(line).map_err(|_| SyntaxError::BadEncoding)?;
    // Tab is tolerated as white space; everything else below SP (bare CR, NUL …) is junk.
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(SyntaxError::BadEncoding);
    }
    let line = line.trim_end_matches([' ', '\t']);
    let (verb, args) = match line.split_once([' ', '\t']) {
        Some((verb, args)) => (verb, args.trim_start_matches([' ', '\t'])),
        None => (line, ""),
    };
    if verb.len() > 10 || !verb.is_ascii() {
        return Err(SyntaxError::UnknownCommand);
    }
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => parse_helo(args).map(Command::Ehlo),
        "HELO" => parse_helo(args).map(Command::Helo),
        "MAIL" => parse_mail(args),
        "RCPT" => parse_rcpt(args),
        "DATA" => no_args(args, Command::Data),
        "RSET" => no_args(args, Command::Rset),
        "QUIT" => no_args(args, Command::Quit),
        "STARTTLS" => no_args(args, Command::StartTls),
        // RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
        "NOOP" => Ok(Command::Noop),
        "VRFY" if !args.is_empty() => Ok(Command::Vrfy),
        "VRFY" => Err(SyntaxError::BadArguments),
        "HELP" => Ok(Command::Help),
        "AUTH" => parse_auth(args),
        "BDAT" | "EXPN" | "ETRN" | "TURN" | "ATRN" => Err(SyntaxError::NotImplemented),
        _ => Err(SyntaxError::UnknownCommand),
    }
}

fn no_args(args: &str, command: Command) -> Result<Command, SyntaxError> {
    if args.is_empty() {
        Ok(command)
    } else {
        Err(SyntaxError::BadArguments)
    }
}

/// Lenient: any single printable token is accepted as the client's name (LAN devices send
/// `EHLO localhost`, bare host names, sometimes worse); only emptiness is refused.
fn parse_helo(args: &str) -> Result<String, SyntaxError> {
    match args.split_whitespace().next() {
        Some(name) => Ok(name.to_owned()),
        None => Err(SyntaxError::BadArguments),
    }
}

/// `MAIL FROM:<reverse-path> [params]`; also `MAIL FROM: <path>` and `MAIL FROM:path`.
fn parse_mail(args: &str) -> Result<Command, SyntaxError> {
    let rest = strip_keyword(args, "FROM:").ok_or(SyntaxError::BadArguments)?;
    let (path, params) = split_path(rest).ok_or(SyntaxError::BadSenderAddress)?;
    let params = parse_mail_params(params)?;
    if path.is_empty() {
        return Ok(Command::Mail {
            path: ReversePath::Null,
            params,
        });
    }
    let mailbox = Mailbox::parse(path, true)
        .filter(|m| !m.is_bare_postmaster())
        .ok_or(SyntaxError::BadSenderAddress)?;
    if !mailbox.is_ascii() && !params.smtputf8 {
        return Err(SyntaxError::NonAsciiAddress);
    }
    Ok(Command::Mail {
        path: ReversePath::Mailbox(mailbox),
        params,
    })
}

/// `RCPT TO:<forward-path>`; the SMTPUTF8 check needs the transaction, so `server` does it.
fn parse_rcpt(args: &str) -> Result<Command, SyntaxError> {
    let rest = strip_keyword(args, "TO:").ok_or(SyntaxError::BadArguments)?;
    let (path, params) = split_path(rest).ok_or(SyntaxError::BadRecipientAddress)?;
    let path = Mailbox::parse(path, true).ok_or(SyntaxError::BadRecipientAddress)?;
    if params.split_whitespace().next().is_some() {
        return Err(SyntaxError::UnknownParameter);
    }
    Ok(Command::Rcpt { path })
}

fn parse_auth(args: &str) -> Result<Command, SyntaxError> {
    let mut words = args.split_whitespace();
    let mechanism = words
        .next()
        .ok_or(SyntaxError::BadArguments)?
        .to_ascii_uppercase();
    let initial_response = words.next().map(|r| SaslResponse(r.to_owned()));
    if words.next().is_some() {
        return Err(SyntaxError::BadArguments);
    }
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}

/// Strips `FROM:`/`TO:` case-insensitively, then optional white space after the colon.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| args[keyword.len()..].trim_start_matches([' ', '\t']))
}

/// Splits `<path> params` or lenient `path params` into the bare path and the parameter text.
/// A source route (`<@a,@b:user@c>`, RFC 5321 §4.1.2, deprecated) is accepted and dropped.
fn split_path(rest: &str) -> Option<(&str, &str)> {
    let (path, params) = match rest.strip_prefix('<') {
        Some(inner) => {
            let end = closing_bracket(inner)?;
            let params = &inner[end + 1..];
            if params.starts_with(|c| c != ' ' && c != '\t') {
                return None;
            }
            (&inner[..end], params)
        }
        // Lenient form without brackets: the path runs to the first space and is never empty.
        None if rest.is_empty() => return None,
        None => rest.split_once([' ', '\t']).unwrap_or((rest, "")),
    };
    let path = match path.strip_prefix('@') {
        Some(route) => route.split_once(':')?.1,
        None => path,
    };
    Some((path, params))
}

/// Index of the `>` closing the path, skipping quoted strings (which may contain `>`).
fn closing_bracket(inner: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_mail_params(text: &str) -> Result<MailParams, SyntaxError> {
    let mut params = MailParams::default();
    for param in text.split_whitespace() {
        let (keyword, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        match (keyword.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) if params.size.is_none() => params.size = Some(parse_size(v)?),
            ("BODY", Some(v)) if params.body.is_none() => {
                params.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    _ => return Err(SyntaxError::BadParameterValue),
                });
            }
            ("SMTPUTF8", None) if !params.smtputf8 => params.smtputf8 = true,
            ("SIZE" | "BODY" | "SMTPUTF8", _) => return Err(SyntaxError::BadParameterValue),
            _ => return Err(SyntaxError::UnknownParameter),
        }
    }
    Ok(params)
}

/// RFC 1870: `1*20DIGIT`. Values beyond `u64` saturate (they exceed any limit anyway).
fn parse_size(value: &str) -> Result<u64, SyntaxError> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SyntaxError::BadParameterValue);
    }
    Ok(value.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(text: &str) -> Mailbox {
        Mailbox::parse(text, true).unwrap()
    }

    fn mail(path: &str, params: MailParams) -> Command {
        let path = if path.is_empty() {
            ReversePath::Null
        } else {
            ReversePath::Mailbox(mailbox(path))
        };
        Command::Mail { path, params }
    }

    fn rcpt(path: &str) -> Command {
        Command::Rcpt {
            path: mailbox(path),
        }
    }

    #[test]
    fn commands_parse_table() {
        let plain = MailParams::default();
        let table: Vec<(&str, Command)> = vec![
            (
                "EHLO client.example",
                Command::Ehlo("client.example".into()),
            ),
            (
                "ehlo client.example",
                Command::Ehlo("client.example".into()),
            ),
            ("EhLo [192.0.2.1]", Command::Ehlo("[192.0.2.1]".into())),
            ("HELO client", Command::Helo("client".into())),
            ("HELO  client  ", Command::Helo("client".into())),
            (
                "MAIL FROM:<a@b.example>",
                mail("a@b.example", plain.clone()),
            ),
            (
                "mail from:<a@b.example>",
                mail("a@b.example", plain.clone()),
            ),
            (
                "MAIL FROM: <a@b.example>",
                mail("a@b.example", plain.clone()),
            ),
            ("MAIL FROM:a@b.example", mail("a@b.example", plain.clone())),
            ("MAIL FROM:<>", mail("", plain.clone())),
            (
                "MAIL FROM:<@relay.example:a@b.example>",
                mail("a@b.example", plain.clone()),
            ),
            (
                "MAIL FROM:<\"a >b\"@b.example>",
                mail("\"a >b\"@b.example", plain.clone()),
            ),
            (
                "MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME",
                mail(
                    "a@b.example",
                    MailParams {
                        size: Some(1000),
                        body: Some(BodyType::EightBitMime),
                        ..plain
                    },
                ),
            ),
            (
                "MAIL FROM:a@b.example body=7bit",
                mail(
                    "a@b.example",
                    MailParams {
                        body: Some(BodyType::SevenBit),
                        ..plain
                    },
                ),
            ),
            (
                "MAIL FROM:<δ@b.example> SMTPUTF8",
                mail(
                    "δ@b.example",
                    MailParams {
                        smtputf8: true,
                        ..plain
                    },
                ),
            ),
            (
                "MAIL FROM:<a@b.example> SIZE=99999999999999999999",
                mail(
                    "a@b.example",
                    MailParams {
                        size: Some(u64::MAX),
                        ..plain
                    },
                ),
            ),
            ("RCPT TO:<c@d.example>", rcpt("c@d.example")),
            ("rcpt to: <c@d.example>", rcpt("c@d.example")),
            ("RCPT TO:c@d.example", rcpt("c@d.example")),
            ("RCPT TO:<Postmaster>", rcpt("Postmaster")),
            ("RCPT TO:<δ@d.example>", rcpt("δ@d.example")),
            ("DATA", Command::Data),
            ("data ", Command::Data),
            ("RSET", Command::Rset),
            ("NOOP", Command::Noop),
            ("NOOP anything at all", Command::Noop),
            ("QUIT", Command::Quit),
            ("VRFY someone", Command::Vrfy),
            ("HELP", Command::Help),
            ("HELP MAIL", Command::Help),
            ("STARTTLS", Command::StartTls),
            ("starttls", Command::StartTls),
            (
                "AUTH plain dGVzdA==",
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: Some(SaslResponse("dGVzdA==".into())),
                },
            ),
            (
                "AUTH LOGIN",
                Command::Auth {
                    mechanism: "LOGIN".into(),
                    initial_response: None,
                },
            ),
        ];
        for (line, expected) in table {
            assert_eq!(parse_command(line.as_bytes()), Ok(expected), "{line:?}");
        }
    }

    #[test]
    fn syntax_errors_table() {
        use SyntaxError::*;
        let table: &[(&[u8], SyntaxError)] = &[
            (b"", UnknownCommand),
            (b"FOO", UnknownCommand),
            (b"MAILX FROM:<a@b>", UnknownCommand),
            (b"\xff\xfe", BadEncoding),
            (b"NOOP \x00", BadEncoding),
            (b"DATA\r", BadEncoding),
            (b"BDAT 100 LAST", NotImplemented),
            (b"EXPN list", NotImplemented),
            (b"EHLO", BadArguments),
            (b"HELO ", BadArguments),
            (b"MAIL", BadArguments),
            (b"MAIL TO:<a@b.example>", BadArguments),
            (b"MAIL FROM", BadArguments),
            (b"MAIL FROM:", BadSenderAddress),
            (b"MAIL FROM:<a@b.example", BadSenderAddress),
            (b"MAIL FROM:<a@b.example>x", BadSenderAddress),
            (b"MAIL FROM:<<a@b.example>>", BadSenderAddress),
            (b"MAIL FROM:<not an address>", BadSenderAddress),
            (b"MAIL FROM:<postmaster>", BadSenderAddress),
            (b"MAIL FROM:<\xce\xb4@b.example>", NonAsciiAddress),
            (b"MAIL FROM:<a@b.example> FOO=BAR", UnknownParameter),
            (b"MAIL FROM:<a@b.example> RET=HDRS", UnknownParameter),
            (b"MAIL FROM:<a@b.example> SIZE=", BadParameterValue),
            (b"MAIL FROM:<a@b.example> SIZE=12a", BadParameterValue),
            (b"MAIL FROM:<a@b.example> SIZE=1 SIZE=2", BadParameterValue),
            (b"MAIL FROM:<a@b.example> SIZE", BadParameterValue),
            (
                b"MAIL FROM:<a@b.example> BODY=BINARYMIME",
                BadParameterValue,
            ),
            (b"MAIL FROM:<a@b.example> SMTPUTF8=yes", BadParameterValue),
            (b"RCPT", BadArguments),
            (b"RCPT FROM:<c@d.example>", BadArguments),
            (b"RCPT TO:<>", BadRecipientAddress),
            (b"RCPT TO:<c@d.example> NOTIFY=NEVER", UnknownParameter),
            (b"DATA now", BadArguments),
            (b"QUIT please", BadArguments),
            (b"RSET x", BadArguments),
            (b"STARTTLS x", BadArguments),
            (b"VRFY", BadArguments),
            (b"AUTH", BadArguments),
            (b"AUTH PLAIN a b", BadArguments),
        ];
        for &(line, expected) in table {
            assert_eq!(
                parse_command(line),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn syntax_error_replies_table() {
        use SyntaxError::*;
        let table = [
            (UnknownCommand, 500, (5, 5, 1)),
            (NotImplemented, 502, (5, 5, 1)),
            (LineTooLong, 500, (5, 5, 2)),
            (BadEncoding, 500, (5, 5, 2)),
            (BadArguments, 501, (5, 5, 4)),
            (BadSenderAddress, 501, (5, 1, 7)),
            (BadRecipientAddress, 501, (5, 1, 3)),
            (NonAsciiAddress, 553, (5, 6, 7)),
            (UnknownParameter, 555, (5, 5, 4)),
            (BadParameterValue, 501, (5, 5, 4)),
        ];
        for (error, code, (class, subject, detail)) in table {
            let reply = Reply::from(&error);
            assert_eq!(reply.code, code, "{error:?}");
            assert_eq!(
                reply.status,
                Some(EnhancedStatus {
                    class,
                    subject,
                    detail
                }),
                "{error:?}"
            );
            assert!(!reply.text.is_empty());
        }
    }

    #[test]
    fn auth_initial_response_is_redacted_in_debug() {
        let command = parse_command(b"AUTH PLAIN AHVzZXIAc2VjcmV0").unwrap();
        let debug = format!("{command:?}");
        assert!(!debug.contains("AHVzZXIAc2VjcmV0"), "{debug}");
        assert!(debug.contains("PLAIN"));
    }

    #[test]
    fn pipeline_group_enders_follow_rfc_2920() {
        assert!(!parse_command(b"MAIL FROM:<>")
            .unwrap()
            .ends_pipeline_group());
        assert!(!parse_command(b"RCPT TO:<a@b.example>")
            .unwrap()
            .ends_pipeline_group());
        assert!(!parse_command(b"RSET").unwrap().ends_pipeline_group());
        for line in [
            "EHLO x", "HELO x", "DATA", "NOOP", "QUIT", "VRFY x", "STARTTLS",
        ] {
            assert!(
                parse_command(line.as_bytes())
                    .unwrap()
                    .ends_pipeline_group(),
                "{line}"
            );
        }
    }
}
