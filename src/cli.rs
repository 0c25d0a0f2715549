//! The command line: argv → `Cmd`. Performs no I/O (not even reading the config file) and
//! never exits; `main` prints and picks the exit code.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::config::Overrides;
use crate::control::Request;
use crate::sendmail::args::{self as sendmail_args, Mode, SendmailArgs};

pub const USAGE: &str = "\
Usage:
  outpost                          serve on the embedded defaults
  outpost serve [OPTIONS]          run the relay
  outpost check-config [OPTIONS]   validate the configuration and print it
  outpost queue [list [--json]]    the queue: ID, age, size, sender, recipients, next attempt
  outpost queue show ID            one message: envelope, state, last replies, headers
  outpost queue flush              try the smarthost now (also SIGUSR1 to the daemon)
  outpost queue delete|hold|release ID...
  outpost queue recover            rebuild messages the database lost from the body files
  outpost status [--json]          link state, queue counts, last error (exit 69: not running,
                                   75: still opening its queue, 77: no permission on the
                                   control socket)
  outpost reload                   re-read the config in the daemon (also SIGHUP; exit 78:
                                   refused, the old config stays)
  outpost sendmail [-t] [-i] [-f FROM] [-F NAME] [RCPT...]   submit stdin (sendmail(1))
  outpost sendmail -bv RCPT...     where each recipient goes (aliases, admin, domain)
  outpost newaliases               check the aliases (also `sendmail -bi`)
  outpost test [RCPT]              check the route to every smarthost, up to RCPT TO (default
                                   root, mapped); nothing is sent (exit 0: all work)
  outpost test --send RCPT [--timeout 60s]   queue a test message, wait until a smarthost took it
  outpost --help | --version
  (invoked as `mailq` or `sendmail -bp`: the queue in Postfix's format; as `sendmail`:
  `outpost sendmail`; as `newaliases`: `outpost newaliases`; any other program name is a usage
  error)

Options (flags override the config file):
  -c, --config FILE        TOML config file
  -l, --listen ADDR        listen on IP:PORT (repeatable; replaces `listen`)
  -d, --data-dir DIR       queue directory (`data_dir`)
  -s, --smarthost H:PORT   the only smarthost (the first `[smarthost]` entry's tls/AUTH stay)
  -n, --hostname NAME      our name in the banner and headers (`hostname`)

The config file: --config FILE, else $OUTPOST_CONFIG, else /etc/outpost/outpost.toml if it
exists, else the embedded defaults; the same for every command. queue and status also take
-c/--config FILE and -d/--data-dir DIR anywhere; sendmail takes only --config FILE (-d and -C
are sendmail's debugging and config flags, accepted and ignored).

Exit codes: 0 ok, 64 usage error, 78 config error, 73/74 store cannot be created/opened.
Logging: OUTPOST_LOG (or RUST_LOG) = error|warn|info|debug|trace; default info.
";

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    Serve(ConfigArgs),
    /// Same options as `serve`: validate and print the effective config.
    CheckConfig(ConfigArgs),
    /// `outpost queue …` (and `mailq`): one request to the daemon.
    Queue(ConfigArgs, Request),
    /// `outpost status`.
    Status(ConfigArgs),
    /// `outpost test [RCPT] [--send] [--timeout DURATION]`.
    Test(ConfigArgs, TestArgs),
    /// `outpost sendmail …` (and `argv[0] == "sendmail"`).
    Sendmail(ConfigArgs, SendmailArgs),
    Help,
    Version,
}

/// Where the config comes from and what the flags override: every option of `serve` and
/// `check-config`; `queue`, `status` and `sendmail` take `--config` and `--data-dir` (how they
/// find the daemon's `data_dir`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigArgs {
    pub config: Option<PathBuf>,
    pub overrides: Overrides,
}

/// `outpost test`'s arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestArgs {
    /// `None`: `root`, mapped as a local name.
    pub recipient: Option<String>,
    /// `--send`: queue a real test message through the daemon.
    pub send: bool,
    /// `--timeout`: how long `--send` waits for the smarthost (default 60 s).
    pub timeout: Option<std::time::Duration>,
}

/// A malformed command line (exit 64).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

impl From<lexopt::Error> for UsageError {
    fn from(e: lexopt::Error) -> Self {
        Self(e.to_string())
    }
}

/// Parses a whole argv: `argv[0]` named `mailq` or `sendmail` (a symlink to the binary) picks
/// that front end; anything else parses the rest with `parse`.
pub fn parse_invocation<I>(argv: I) -> Result<Cmd, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut argv = argv.into_iter().map(Into::into);
    let name = argv
        .next()
        .map(|a0| {
            let path = PathBuf::from(a0);
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    match name.as_str() {
        "mailq" => parse_queue(&mut lexopt::Parser::from_args(argv), true),
        "sendmail" => parse_sendmail(argv, Mode::Deliver),
        "newaliases" => parse_sendmail(argv, Mode::NewAliases),
        name if name.starts_with("outpost") => parse(argv),
        _ => Err(UsageError(format!(
            "unknown program name {name:?}: run as `outpost`, or through a symlink named \
             `sendmail`, `mailq` or `newaliases` (e.g. `ln -s /usr/bin/outpost /usr/sbin/sendmail`)"
        ))),
    }
}

/// sendmail(1)'s arguments (`sendmail::args`): `-bp` is `mailq`, `-q` is `queue flush`; the
/// other modes go to `sendmail::main`. Only `--config FILE` names the config.
fn parse_sendmail<I>(args: I, mode: Mode) -> Result<Cmd, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let invocation = sendmail_args::parse(args, mode).map_err(UsageError)?;
    let target = ConfigArgs {
        config: invocation.config,
        overrides: Overrides::default(),
    };
    Ok(match invocation.args.mode {
        Mode::ListQueue => Cmd::Queue(target, Request::Mailq),
        Mode::Flush => Cmd::Queue(target, Request::Flush),
        _ => Cmd::Sendmail(target, invocation.args),
    })
}

/// Parses the arguments after `argv[0]`.
pub fn parse<I>(args: I) -> Result<Cmd, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut parser = lexopt::Parser::from_args(args);
    let Some(first) = parser.next()? else {
        return Ok(Cmd::Serve(ConfigArgs::default()));
    };
    match first {
        Short('h') | Long("help") => nothing_after(&mut parser, Cmd::Help),
        Short('V') | Long("version") => nothing_after(&mut parser, Cmd::Version),
        Value(word) => match word.to_str() {
            Some("serve") => parse_serve_args(&mut parser).map(|a| a.map_or(Cmd::Help, Cmd::Serve)),
            Some("check-config") => {
                parse_serve_args(&mut parser).map(|a| a.map_or(Cmd::Help, Cmd::CheckConfig))
            }
            Some("help") => Ok(Cmd::Help),
            Some("queue") => parse_queue(&mut parser, false),
            Some("status") => parse_status(&mut parser),
            // `reload` takes what `status` takes, but not --json.
            Some("reload") => match parse_status(&mut parser)? {
                Cmd::Status(target) => Ok(Cmd::Queue(target, Request::Reload)),
                Cmd::Help => Ok(Cmd::Help),
                _ => Err(UsageError("`reload` takes no --json".into())),
            },
            Some("test") => parse_test(&mut parser),
            Some("sendmail") => {
                parse_sendmail(parser.raw_args()?.collect::<Vec<_>>(), Mode::Deliver)
            }
            Some("newaliases") => {
                parse_sendmail(parser.raw_args()?.collect::<Vec<_>>(), Mode::NewAliases)
            }
            _ => Err(UsageError(format!(
                "unknown command {word:?} (try `outpost --help`)"
            ))),
        },
        other => {
            let hint = describe(&other);
            Err(UsageError(format!(
                "{} before a command (try `outpost serve {hint}`)",
                other.unexpected()
            )))
        }
    }
}

fn nothing_after(parser: &mut lexopt::Parser, cmd: Cmd) -> Result<Cmd, UsageError> {
    match parser.next()? {
        None => Ok(cmd),
        Some(other) => Err(other.unexpected().into()),
    }
}

/// `serve`/`check-config` options; `None` when `--help` was asked for.
fn parse_serve_args(parser: &mut lexopt::Parser) -> Result<Option<ConfigArgs>, UsageError> {
    let mut args = ConfigArgs::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('c') | Long("config") => {
                if args.config.is_some() {
                    return Err(UsageError("--config given twice".into()));
                }
                args.config = Some(PathBuf::from(parser.value()?));
            }
            Short('l') | Long("listen") => args.overrides.listen.push(string(parser, "--listen")?),
            Short('d') | Long("data-dir") => {
                args.overrides.data_dir = Some(string(parser, "--data-dir")?)
            }
            Short('s') | Long("smarthost") => {
                args.overrides.smarthost = Some(string(parser, "--smarthost")?);
            }
            Short('n') | Long("hostname") => {
                args.overrides.hostname = Some(string(parser, "--hostname")?)
            }
            Short('h') | Long("help") => return Ok(None),
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(Some(args))
}

/// `--config`/`--data-dir` of the client commands.
#[derive(Clone, Copy)]
enum ClientFlag {
    Config,
    DataDir,
}

fn client_flag(arg: &lexopt::Arg<'_>) -> Option<ClientFlag> {
    match arg {
        Short('c') | Long("config") => Some(ClientFlag::Config),
        Short('d') | Long("data-dir") => Some(ClientFlag::DataDir),
        _ => None,
    }
}

fn client_value(
    parser: &mut lexopt::Parser,
    flag: ClientFlag,
    target: &mut ConfigArgs,
) -> Result<(), UsageError> {
    match flag {
        ClientFlag::Config => {
            if target.config.is_some() {
                return Err(UsageError("--config given twice".into()));
            }
            target.config = Some(PathBuf::from(parser.value()?));
        }
        ClientFlag::DataDir => {
            target.overrides.data_dir = Some(string(parser, "--data-dir")?);
        }
    }
    Ok(())
}

/// `queue [VERB] [IDS…] [--json]`; `mailq` is `queue list` in Postfix's format (`mailq --json`
/// is outpost's JSON), with no verb allowed.
fn parse_queue(parser: &mut lexopt::Parser, mailq: bool) -> Result<Cmd, UsageError> {
    let mut target = ConfigArgs::default();
    let mut verb: Option<String> = if mailq { Some("list".into()) } else { None };
    let mut json = false;
    let mut ids = Vec::new();
    while let Some(arg) = parser.next()? {
        if let Some(flag) = client_flag(&arg) {
            client_value(parser, flag, &mut target)?;
            continue;
        }
        match arg {
            Long("json") => json = true,
            Short('h') | Long("help") => return Ok(Cmd::Help),
            Value(v) => {
                let v = v
                    .into_string()
                    .map_err(|v| UsageError(format!("{v:?} is not valid UTF-8")))?;
                if verb.is_none() {
                    verb = Some(v);
                } else {
                    ids.push(v);
                }
            }
            other => return Err(other.unexpected().into()),
        }
    }
    let verb = verb.unwrap_or_else(|| "list".into());
    if json && verb != "list" {
        return Err(UsageError("--json goes with `queue list` only".into()));
    }
    let request = queue_request(&verb, ids, json, mailq)?;
    Ok(Cmd::Queue(target, request))
}

/// The request for `queue VERB [IDS…]` (`mailq`: `list` in Postfix's format).
fn queue_request(
    verb: &str,
    ids: Vec<String>,
    json: bool,
    mailq: bool,
) -> Result<Request, UsageError> {
    let need_ids = |ids: Vec<String>| match ids.is_empty() {
        true => Err(UsageError(format!(
            "`queue {verb}` needs one or more queue ids"
        ))),
        false => Ok(ids),
    };
    Ok(match verb {
        "list" | "flush" if !ids.is_empty() => {
            return Err(UsageError(format!("`queue {verb}` takes no queue ids")))
        }
        "list" if mailq && !json => Request::Mailq,
        "list" => Request::List { json },
        "flush" => Request::Flush,
        "show" => match <[String; 1]>::try_from(ids) {
            Ok([id]) => Request::Show(id),
            Err(_) => return Err(UsageError("`queue show` takes exactly one queue id".into())),
        },
        "delete" => Request::Delete(need_ids(ids)?),
        "hold" => Request::Hold(need_ids(ids)?),
        "release" => Request::Release(need_ids(ids)?),
        "recover" if ids.is_empty() => Request::Recover,
        other => {
            return Err(UsageError(format!(
            "unknown queue command {other:?} (list, show, flush, delete, hold, release, recover)"
        )))
        }
    })
}

/// `test [RCPT] [--send] [--timeout DURATION]`; the recipient may not carry characters that
/// would change the SMTP command it goes into.
fn parse_test(parser: &mut lexopt::Parser) -> Result<Cmd, UsageError> {
    let mut target = ConfigArgs::default();
    let mut args = TestArgs::default();
    while let Some(arg) = parser.next()? {
        if let Some(flag) = client_flag(&arg) {
            client_value(parser, flag, &mut target)?;
            continue;
        }
        match arg {
            Long("send") => args.send = true,
            Long("timeout") => {
                let text = string(parser, "--timeout")?;
                let timeout = humantime::parse_duration(&text)
                    .map_err(|e| UsageError(format!("--timeout {text:?}: {e}")))?;
                args.timeout = Some(timeout);
            }
            Short('h') | Long("help") => return Ok(Cmd::Help),
            Value(v) if args.recipient.is_none() => {
                let v = v
                    .into_string()
                    .map_err(|v| UsageError(format!("{v:?} is not valid UTF-8")))?;
                if v.is_empty() || v.chars().any(|c| c.is_control() || " <>".contains(c)) {
                    return Err(UsageError(format!("{v:?} is not a mail address")));
                }
                args.recipient = Some(v);
            }
            other => return Err(other.unexpected().into()),
        }
    }
    if args.send && args.recipient.is_none() {
        return Err(UsageError("`test --send` needs a recipient".into()));
    }
    Ok(Cmd::Test(target, args))
}

fn parse_status(parser: &mut lexopt::Parser) -> Result<Cmd, UsageError> {
    let mut target = ConfigArgs::default();
    let mut json = false;
    while let Some(arg) = parser.next()? {
        if let Some(flag) = client_flag(&arg) {
            client_value(parser, flag, &mut target)?;
            continue;
        }
        match arg {
            Long("json") => json = true,
            Short('h') | Long("help") => return Ok(Cmd::Help),
            other => return Err(other.unexpected().into()),
        }
    }
    // `status --json` is one request to the daemon like any `queue` one.
    if json {
        return Ok(Cmd::Queue(target, Request::StatusJson));
    }
    Ok(Cmd::Status(target))
}

fn string(parser: &mut lexopt::Parser, flag: &str) -> Result<String, UsageError> {
    parser
        .value()?
        .into_string()
        .map_err(|v| UsageError(format!("{flag}: {v:?} is not valid UTF-8")))
}

fn describe(arg: &lexopt::Arg<'_>) -> String {
    match arg {
        Short(c) => format!("-{c} …"),
        Long(name) => format!("--{name} …"),
        Value(v) => v.to_string_lossy().into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Cmd, UsageError> {
        parse(args.iter().copied())
    }

    #[test]
    fn test_takes_a_recipient_send_and_timeout() {
        assert_eq!(
            parse_str(&["test"]).unwrap(),
            Cmd::Test(ConfigArgs::default(), TestArgs::default())
        );
        let Cmd::Test(target, args) = parse_str(&[
            "test",
            "ops@example.com",
            "--send",
            "--timeout",
            "90s",
            "-c",
            "/etc/o.toml",
        ])
        .unwrap() else {
            panic!("not a test command");
        };
        assert_eq!(target.config, Some(PathBuf::from("/etc/o.toml")));
        assert_eq!(args.recipient.as_deref(), Some("ops@example.com"));
        assert!(args.send);
        assert_eq!(args.timeout, Some(std::time::Duration::from_secs(90)));
        for bad in [
            &["test", "--send"][..],
            &["test", "a@b", "c@d"],
            &["test", "a@b>\r\nDATA"],
            &["test", "a b@c"],
            &["test", "--timeout", "soon"],
        ] {
            assert!(parse_str(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_arguments_serves_on_defaults() {
        assert_eq!(parse_str(&[]).unwrap(), Cmd::Serve(ConfigArgs::default()));
    }

    #[test]
    fn serve_collects_overrides() {
        let cmd = parse_str(&[
            "serve",
            "--config",
            "/etc/outpost.toml",
            "--listen",
            "127.0.0.1:25",
            "-l",
            "[::1]:25",
            "--data-dir=/tmp/q",
            "--smarthost",
            "mx.example:587",
            "--hostname",
            "relay.example",
        ])
        .unwrap();
        let Cmd::Serve(args) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(args.config, Some(PathBuf::from("/etc/outpost.toml")));
        assert_eq!(args.overrides.listen, ["127.0.0.1:25", "[::1]:25"]);
        assert_eq!(args.overrides.data_dir.as_deref(), Some("/tmp/q"));
        assert_eq!(args.overrides.smarthost.as_deref(), Some("mx.example:587"));
        assert_eq!(args.overrides.hostname.as_deref(), Some("relay.example"));
    }

    #[test]
    fn check_config_takes_a_config_file() {
        let cmd = parse_str(&["check-config", "--config", "x.toml"]).unwrap();
        assert_eq!(
            cmd,
            Cmd::CheckConfig(ConfigArgs {
                config: Some("x.toml".into()),
                ..ConfigArgs::default()
            })
        );
    }

    #[test]
    fn help_and_version_anywhere_sensible() {
        assert_eq!(parse_str(&["--help"]).unwrap(), Cmd::Help);
        assert_eq!(parse_str(&["-h"]).unwrap(), Cmd::Help);
        assert_eq!(parse_str(&["help"]).unwrap(), Cmd::Help);
        assert_eq!(parse_str(&["serve", "--help"]).unwrap(), Cmd::Help);
        assert_eq!(parse_str(&["--version"]).unwrap(), Cmd::Version);
        assert_eq!(parse_str(&["-V"]).unwrap(), Cmd::Version);
    }

    #[test]
    fn usage_errors_are_reported() {
        for bad in [
            &["frobnicate"][..],
            &["serve", "--bogus"],
            &["serve", "--listen"],
            &["serve", "extra"],
            &["--config", "x.toml"],
            &["serve", "-c", "a", "-c", "b"],
            &["--version=2"],
        ] {
            assert!(parse_str(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn queue_commands_and_options_anywhere() {
        let dir = ConfigArgs {
            config: Some("c.toml".into()),
            overrides: Overrides {
                data_dir: Some("/q".into()),
                ..Overrides::default()
            },
        };
        assert_eq!(
            parse_str(&["queue"]).unwrap(),
            Cmd::Queue(ConfigArgs::default(), Request::List { json: false })
        );
        assert_eq!(
            parse_str(&["queue", "--config", "c.toml", "list", "--json", "-d", "/q"]).unwrap(),
            Cmd::Queue(dir.clone(), Request::List { json: true })
        );
        assert_eq!(
            parse_str(&["queue", "delete", "A", "--data-dir=/q", "B", "-c", "c.toml"]).unwrap(),
            Cmd::Queue(dir.clone(), Request::Delete(vec!["A".into(), "B".into()]))
        );
        assert_eq!(
            parse_str(&["queue", "show", "A"]).unwrap(),
            Cmd::Queue(ConfigArgs::default(), Request::Show("A".into()))
        );
        assert_eq!(
            parse_str(&["status", "--json"]).unwrap(),
            Cmd::Queue(ConfigArgs::default(), Request::StatusJson)
        );
        assert_eq!(
            parse_str(&["status", "-d", "/q", "--config", "c.toml"]).unwrap(),
            Cmd::Status(dir)
        );
        assert_eq!(
            parse_str(&["reload", "--config", "c.toml"]).unwrap(),
            Cmd::Queue(
                ConfigArgs {
                    config: Some("c.toml".into()),
                    ..ConfigArgs::default()
                },
                Request::Reload
            )
        );
        assert!(parse_str(&["reload", "--json"]).is_err());
        for bad in [
            &["queue", "show"][..],
            &["queue", "show", "A", "B"],
            &["queue", "hold"],
            &["queue", "flush", "A"],
            &["queue", "list", "A"],
            &["queue", "show", "A", "--json"],
            &["queue", "frob"],
            &["status", "extra"],
        ] {
            assert!(parse_str(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn argv0_mailq_and_sendmail_pick_their_front_ends() {
        assert_eq!(
            parse_invocation(["/usr/bin/mailq"]).unwrap(),
            Cmd::Queue(ConfigArgs::default(), Request::Mailq)
        );
        assert_eq!(
            parse_invocation(["mailq", "--json"]).unwrap(),
            Cmd::Queue(ConfigArgs::default(), Request::List { json: true })
        );
        assert!(parse_invocation(["mailq", "flush"]).is_err());
        let Cmd::Sendmail(_, args) =
            parse_invocation(["/usr/sbin/sendmail", "-t", "-oi", "-f", "me@x", "you@y"]).unwrap()
        else {
            panic!()
        };
        assert!(args.extract && args.ignore_dots);
        assert_eq!(args.from.as_deref(), Some("me@x"));
        assert_eq!(args.recipients, ["you@y"]);
        assert_eq!(
            parse_invocation(["/x/outpost", "--version"]).unwrap(),
            Cmd::Version
        );
    }

    #[test]
    fn sendmail_accepts_common_ignored_flags() {
        let Cmd::Sendmail(target, args) = parse_str(&[
            "sendmail",
            "-oem",
            "-odi",
            "-v",
            "-B",
            "8BITMIME",
            "-bm",
            "-Fcron daemon",
            "-i",
            "-d0.1",
            "-C",
            "/etc/mail/sendmail.cf",
            "--config",
            "/etc/o.toml",
            "--",
            "-weird@x",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(target.config, Some(PathBuf::from("/etc/o.toml")));
        assert_eq!(target.overrides, Overrides::default());
        assert!(args.ignore_dots && !args.extract);
        assert_eq!(args.full_name.as_deref(), Some("cron daemon"));
        assert_eq!(args.recipients, ["-weird@x"]);
        assert!(parse_str(&["sendmail", "--data-dir", "/q", "a@b"]).is_err());
        assert_eq!(
            parse_str(&["sendmail", "-bp"]).unwrap(),
            Cmd::Queue(ConfigArgs::default(), Request::Mailq)
        );
        assert_eq!(
            parse_str(&["sendmail", "-q"]).unwrap(),
            Cmd::Queue(ConfigArgs::default(), Request::Flush)
        );
        let Cmd::Sendmail(_, args) = parse_str(&["sendmail", "-bs"]).unwrap() else {
            panic!()
        };
        assert_eq!(args.mode, Mode::Smtp);
    }

    #[test]
    fn issue_15_argv0_newaliases_checks_and_unknown_names_are_usage_errors() {
        let Cmd::Sendmail(_, args) = parse_invocation(["/usr/bin/newaliases"]).unwrap() else {
            panic!()
        };
        assert_eq!(args.mode, Mode::NewAliases);
        let Cmd::Sendmail(_, args) = parse_str(&["newaliases"]).unwrap() else {
            panic!()
        };
        assert_eq!(args.mode, Mode::NewAliases);
        for accepted in ["outpost", "/usr/bin/outpost-aarch64", "sendmail", "mailq"] {
            assert!(parse_invocation([accepted]).is_ok(), "{accepted}");
        }
        let err = parse_invocation(["/usr/sbin/exim4"]).unwrap_err();
        assert!(
            err.0.contains("`sendmail`, `mailq` or `newaliases`"),
            "{err}"
        );
        assert!(parse_invocation(["rmail", "root"]).is_err());
    }

    #[test]
    fn option_before_command_suggests_serve() {
        let err = parse_str(&["--listen", "x"]).unwrap_err();
        assert!(err.0.contains("outpost serve --listen"), "{err}");
    }
}
