//! The command line: argv → `Cmd`. Performs no I/O (not even reading the config file) and
//! never exits; `main` prints and picks the exit code.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::config::Overrides;

pub const USAGE: &str = "\
Usage:
  outpost                          serve on the embedded defaults
  outpost serve [OPTIONS]          run the relay
  outpost check-config [OPTIONS]   validate the configuration and print it
  outpost --help | --version

Options (flags override the config file):
  -c, --config FILE        TOML config file
  -l, --listen ADDR        listen on IP:PORT (repeatable; replaces `listen`)
  -d, --data-dir DIR       queue directory (`data_dir`)
  -s, --smarthost H:PORT   upstream relay (`[smarthost] address`)
  -n, --hostname NAME      our name in the banner and headers (`hostname`)

Exit codes: 0 ok, 64 usage error, 78 config error, 73/74 store cannot be created/opened.
Logging: OUTPOST_LOG (or RUST_LOG) = error|warn|info|debug|trace; default info.
";

/// What the command line asks for. Later issues add `Queue(QueueCmd)`, `Sendmail(SendmailArgs)`
/// (also chosen by argv[0] == "sendmail") and `Status` here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    Serve(ServeArgs),
    /// Same options as `serve`: validate and print the effective config.
    CheckConfig(ServeArgs),
    Help,
    Version,
}

/// Where the config comes from and what the flags override.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeArgs {
    pub config: Option<PathBuf>,
    pub overrides: Overrides,
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

/// `outpost --version` text.
pub fn version() -> String {
    format!("outpost {}", env!("CARGO_PKG_VERSION"))
}

/// Parses the arguments after argv[0].
pub fn parse<I>(args: I) -> Result<Cmd, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut parser = lexopt::Parser::from_args(args);
    let Some(first) = parser.next()? else {
        return Ok(Cmd::Serve(ServeArgs::default()));
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
fn parse_serve_args(parser: &mut lexopt::Parser) -> Result<Option<ServeArgs>, UsageError> {
    let mut args = ServeArgs::default();
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
    fn no_arguments_serves_on_defaults() {
        assert_eq!(parse_str(&[]).unwrap(), Cmd::Serve(ServeArgs::default()));
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
            Cmd::CheckConfig(ServeArgs {
                config: Some("x.toml".into()),
                ..ServeArgs::default()
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
    fn option_before_command_suggests_serve() {
        let err = parse_str(&["--listen", "x"]).unwrap_err();
        assert!(err.0.contains("outpost serve --listen"), "{err}");
    }
}
