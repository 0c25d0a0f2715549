//! sendmail(1)'s command line as the programs that call it use it (cron, mailx, PHP, Symfony,
//! git send-email, Debian's maintainer scripts): Postfix's option set, where every option is
//! accepted and most mean nothing to a relay. In sendmail's tradition `-d` is debugging and
//! `-C` a configuration of sendmail's own: neither ever names outpost's data or config (only
//! the long `--config FILE` does). Pure: argv in, a [`Invocation`] out.

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;

/// What sendmail was asked to do (`-b…`, `-q`, `argv[0]` `newaliases`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// `-bm` (the default): read a message from stdin and queue it.
    #[default]
    Deliver,
    /// `-bp`, `argv[0]` `mailq`: list the queue.
    ListQueue,
    /// `-bs`: one SMTP session on stdin/stdout.
    Smtp,
    /// `-bi`, `-I`, `argv[0]` `newaliases`: check the aliases.
    NewAliases,
    /// `-bv`: print where each recipient goes; send nothing.
    Verify,
    /// `-q…`: try the queue now.
    Flush,
}

/// sendmail's options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendmailArgs {
    pub mode: Mode,
    /// `-t`: recipients from To:, Cc:, Bcc: (Bcc: is removed).
    pub extract: bool,
    /// `-i`/`-oi`: a line with a single dot does not end the input.
    pub ignore_dots: bool,
    /// `-f`/`-r`: envelope sender; `Some("")` is the null sender (`-f '<>'`).
    pub from: Option<String>,
    /// `-F`: full name for an added From:.
    pub full_name: Option<String>,
    /// `-v`: say what happened on stderr.
    pub verbose: bool,
    pub recipients: Vec<String>,
}

/// A sendmail command line: the options and `--config FILE`, if given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    pub config: Option<PathBuf>,
    pub args: SendmailArgs,
}

/// Options that take a value, attached (`-FCronDaemon`) or as the next argument (`-F Cron`):
/// Postfix's `A:B:C:F:L:N:O:R:V:X:b:e:f:h:o:p:r:`.
const WITH_VALUE: &[char] = &[
    'A', 'B', 'C', 'F', 'L', 'N', 'O', 'R', 'V', 'X', 'b', 'e', 'f', 'h', 'o', 'p', 'r',
];
/// Flags without a value that mean nothing to a relay: Postfix's `G c m n x` and `U`.
const IGNORED_FLAGS: &[char] = &['G', 'U', 'c', 'm', 'n', 'x'];

/// Parses sendmail's arguments (after `argv[0]`); `mode` is `argv[0]`'s (`newaliases`, `mailq`).
pub fn parse<I>(args: I, mode: Mode) -> Result<Invocation, String>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut parser = lexopt::Parser::from_args(args);
    let mut out = Invocation {
        args: SendmailArgs {
            mode,
            ..SendmailArgs::default()
        },
        ..Invocation::default()
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("config") => out.config = Some(PathBuf::from(parser.value().map_err(str_err)?)),
            Long("help") => return Err("see `outpost --help`".into()),
            Short(c) => option(&mut parser, c, &mut out.args)?,
            Value(v) => out.args.recipients.push(utf8(v)?),
            Long(other) => return Err(format!("unknown option --{other}")),
        }
    }
    Ok(out)
}

fn option(parser: &mut lexopt::Parser, c: char, args: &mut SendmailArgs) -> Result<(), String> {
    match c {
        't' => args.extract = true,
        'i' => args.ignore_dots = true,
        'v' => args.verbose = true,
        'I' => args.mode = Mode::NewAliases,
        // `-d0.1` (debugging) and `-q`, `-q30m`, `-qR…`: an optional attached value.
        'd' => {
            parser.optional_value();
        }
        'q' => {
            parser.optional_value();
            args.mode = Mode::Flush;
        }
        c if IGNORED_FLAGS.contains(&c) => {}
        c if WITH_VALUE.contains(&c) => {
            let value = utf8(parser.value().map_err(str_err)?)?;
            with_value(c, value, args)?;
        }
        other => return Err(format!("invalid option -{other}")),
    }
    Ok(())
}

fn with_value(c: char, value: String, args: &mut SendmailArgs) -> Result<(), String> {
    match c {
        'f' | 'r' => {
            let bare = value.trim();
            let bare = bare
                .strip_prefix('<')
                .and_then(|v| v.strip_suffix('>'))
                .unwrap_or(bare);
            args.from = Some(bare.to_owned());
        }
        'F' => args.full_name = Some(value),
        'o' if value == "i" => args.ignore_dots = true,
        'b' => {
            args.mode = match value.as_str() {
                "m" => Mode::Deliver,
                "p" => Mode::ListQueue,
                "s" => Mode::Smtp,
                "i" => Mode::NewAliases,
                "v" => Mode::Verify,
                other => {
                    return Err(format!(
                        "-b{other} is not supported (-bm, -bp, -bs, -bi and -bv are)"
                    ))
                }
            }
        }
        // -A -B -C -L -N -O -R -V -X -e -h -o… -p: accepted and ignored, as Postfix does.
        _ => {}
    }
    Ok(())
}

fn utf8(value: OsString) -> Result<String, String> {
    value
        .into_string()
        .map_err(|v| format!("{v:?} is not valid UTF-8"))
}

fn str_err(e: lexopt::Error) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> SendmailArgs {
        parse(argv.iter().copied(), Mode::Deliver).unwrap().args
    }

    #[test]
    fn cron_invocation() {
        let a = args(&["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"]);
        assert_eq!(a.full_name.as_deref(), Some("CronDaemon"));
        assert!(a.ignore_dots);
        assert_eq!(a.recipients, ["root"]);
        assert_eq!(a.mode, Mode::Deliver);
        let a = args(&["-FAnacron", "-odi", "root"]);
        assert_eq!(a.recipients, ["root"]);
        let a = args(&["-ti"]);
        assert!(a.extract && a.ignore_dots);
    }

    #[test]
    fn debug_flag_is_never_a_directory() {
        let parsed = parse(["-d0.1", "root"], Mode::Deliver).unwrap();
        assert_eq!(parsed.config, None);
        assert_eq!(parsed.args.recipients, ["root"]);
        let a = args(&["-d", "root"]);
        assert_eq!(a.recipients, ["root"]);
    }

    #[test]
    fn null_sender_and_senders() {
        assert_eq!(args(&["-f", "<>", "x@y"]).from.as_deref(), Some(""));
        assert_eq!(args(&["-f<>", "x@y"]).from.as_deref(), Some(""));
        assert_eq!(args(&["-r", "a@b", "x@y"]).from.as_deref(), Some("a@b"));
        assert_eq!(args(&["-f", "<a@b>", "x@y"]).from.as_deref(), Some("a@b"));
    }

    #[test]
    fn modes() {
        assert_eq!(args(&["-bs"]).mode, Mode::Smtp);
        assert_eq!(args(&["-bi"]).mode, Mode::NewAliases);
        assert_eq!(args(&["-I"]).mode, Mode::NewAliases);
        assert_eq!(args(&["-bp"]).mode, Mode::ListQueue);
        assert_eq!(args(&["-bv", "root"]).mode, Mode::Verify);
        assert_eq!(args(&["-q"]).mode, Mode::Flush);
        assert_eq!(args(&["-q30m"]).mode, Mode::Flush);
        assert_eq!(args(&["-bm", "a@b"]).mode, Mode::Deliver);
        assert!(parse(["-bd"], Mode::Deliver).is_err());
        let newaliases = parse(Vec::<String>::new(), Mode::NewAliases).unwrap();
        assert_eq!(newaliases.args.mode, Mode::NewAliases);
    }

    #[test]
    fn postfix_options_are_accepted_and_ignored() {
        let a = args(&[
            "-A",
            "x",
            "-B",
            "8BITMIME",
            "-C",
            "/etc/mail.cf",
            "-G",
            "-h",
            "30",
            "-L",
            "tag",
            "-m",
            "-n",
            "-N",
            "never",
            "-O",
            "opt=1",
            "-R",
            "full",
            "-U",
            "-V",
            "envid",
            "-X",
            "/tmp/log",
            "-x",
            "-c",
            "-e",
            "m",
            "-p",
            "smtp",
            "-v",
            "--",
            "-notanoption",
        ]);
        assert_eq!(a.recipients, ["-notanoption"]);
        assert!(a.verbose);
    }

    #[test]
    fn config_only_by_its_long_name() {
        let parsed = parse(["--config", "o.toml", "a@b"], Mode::Deliver).unwrap();
        assert_eq!(parsed.config, Some(PathBuf::from("o.toml")));
        assert!(parse(["-Z"], Mode::Deliver).is_err());
    }
}
