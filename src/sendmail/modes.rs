//! sendmail(1)'s modes other than listing and flushing the queue (those are `outpost queue`'s):
//! `-bm` (queue a message: `sendmail::main`), `-bv` (where each recipient goes), `-bi` and
//! `argv[0]` `newaliases` (the aliases are checked), and the check that a queue exists before
//! anything is written. Never creates a directory and never starts a daemon.

use std::io::{Read, Write};
use std::path::Path;

use crate::config::Config;

use super::args::{Mode, SendmailArgs};
use super::EX_USAGE;

/// sysexits(3): the configuration names no usable queue.
const EX_CONFIG: u8 = 78;

/// Runs sendmail in `args.mode` with `config` (read from `config_file`, `None`: the embedded
/// defaults). Returns the exit code; prints its own messages.
pub fn run(
    args: &SendmailArgs,
    config: &Config,
    config_file: Option<&Path>,
    input: &mut dyn Read,
) -> u8 {
    let mut stdout = std::io::stdout().lock();
    match args.mode {
        Mode::NewAliases => newaliases(config, config_file, &mut stdout),
        Mode::Verify => verify(args, config, &mut stdout),
        // `main` runs `-bs` itself (`stdio`), with stdin unlocked.
        Mode::Smtp => super::stdio::main(
            &super::socket_path(&config.data_dir),
            std::io::stdin(),
            &mut stdout,
        ),
        Mode::Deliver | Mode::ListQueue | Mode::Flush => match no_queue(config, config_file) {
            Some(reason) => {
                eprintln!("sendmail: {reason}");
                EX_CONFIG
            }
            None => super::main(args, config, input),
        },
    }
}

/// Why a message cannot be placed where a daemon takes it: the data directory does not exist
/// (the daemon creates it at its first start). `None`: it exists.
pub fn no_queue(config: &Config, config_file: Option<&Path>) -> Option<String> {
    if queue_exists(std::fs::metadata(&config.data_dir)) {
        return None;
    }
    let from = match config_file {
        Some(file) => format!("data_dir of {}", file.display()),
        None => format!(
            "the embedded default (no --config, no ${}, no {})",
            crate::config::CONFIG_ENV,
            crate::config::SYSTEM_CONFIG
        ),
    };
    Some(format!(
        "no queue at {} ({from}); is the outpost daemon set up? nothing was sent",
        config.data_dir.display()
    ))
}

/// Whether the queue directory whose `stat` is `stat` exists as far as this user can tell. A
/// queue this user may not look into still exists: under systemd's `DynamicUser` the state
/// directory is a link into the 0700 `/var/lib/private`, and an unprivileged user still
/// submits through the daemon's socket.
fn queue_exists(stat: std::io::Result<std::fs::Metadata>) -> bool {
    match stat {
        Ok(meta) => meta.is_dir(),
        Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
    }
}

/// `newaliases`, `-bi`: the aliases were checked when the config was loaded (a problem exits
/// 78 there, naming the line); says what is in use.
fn newaliases(config: &Config, config_file: Option<&Path>, out: &mut dyn Write) -> u8 {
    let local = &config.local;
    let file = match &local.aliases_file {
        Some(path) => format!(" (aliases_file {})", path.display()),
        None => String::new(),
    };
    let config_file = config_file.map_or("embedded defaults".into(), |p| p.display().to_string());
    let admin = local.admin.as_deref().unwrap_or("none");
    let _ = writeln!(
        out,
        "outpost: {} aliases ok{file}, {} in [aliases]; admin: {admin}; domain: {}; config: {config_file}",
        local.aliases.len(),
        local.table.len(),
        local.domain,
    );
    0
}

/// `-bv ADDR…`: one line per address each recipient reaches; sends nothing.
fn verify(args: &SendmailArgs, config: &Config, out: &mut dyn Write) -> u8 {
    if args.recipients.is_empty() {
        eprintln!("sendmail: -bv needs one or more addresses");
        return EX_USAGE;
    }
    let map = config.local.address_map();
    for rcpt in &args.recipients {
        for (address, via) in map.explain(rcpt) {
            let _ = writeln!(out, "{rcpt} -> {address} ({})", via.as_str());
        }
    }
    0
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_queue_this_user_may_not_look_into_still_exists() {
        use std::io::{Error, ErrorKind};
        let dir = tempfile::tempdir().unwrap();
        assert!(super::queue_exists(std::fs::metadata(dir.path())));
        assert!(super::queue_exists(Err(Error::from(
            ErrorKind::PermissionDenied
        ))));
        assert!(!super::queue_exists(Err(Error::from(ErrorKind::NotFound))));
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(!super::queue_exists(std::fs::metadata(&file)));
    }

    use super::*;

    fn config(text: &str) -> Config {
        let file = crate::config::file::ConfigFile::parse(text).unwrap();
        Config::from_file(&file).unwrap()
    }

    #[test]
    fn verify_prints_where_each_recipient_goes() {
        let config = config(
            "hostname = \"gw\"\ndomain = \"site.example\"\nadmin = \"ops@corp.example\"\n\
             [aliases]\nroot = [\"a@corp.example\", \"b@corp.example\"]\n",
        );
        let args = SendmailArgs {
            mode: Mode::Verify,
            recipients: vec!["root".into(), "pi@gw".into(), "x@remote.example".into()],
            ..SendmailArgs::default()
        };
        let mut out = Vec::new();
        assert_eq!(verify(&args, &config, &mut out), 0);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "root -> a@corp.example (alias)\nroot -> b@corp.example (alias)\n\
             pi@gw -> ops@corp.example (admin)\nx@remote.example -> x@remote.example (remote)\n"
        );
    }

    #[test]
    fn no_data_dir_is_no_queue() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config("");
        config.data_dir = dir.path().join("missing");
        let reason = no_queue(&config, None).unwrap();
        assert!(reason.contains("OUTPOST_CONFIG"), "{reason}");
        assert!(!config.data_dir.exists());
        config.data_dir = dir.path().to_path_buf();
        assert_eq!(no_queue(&config, None), None);
    }
}
