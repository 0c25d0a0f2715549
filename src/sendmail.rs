//! sendmail(1) for local programs: the command (`outpost sendmail`, or the binary invoked as
//! `sendmail`) turns stdin into a message and hands it to the daemon over its submission socket
//! (`submit`), exiting 0 only once the daemon committed it; `-bs` runs one SMTP session on
//! stdin/stdout through the same socket (`stdio`). Only while no daemon listens does it write a
//! maildrop file into an existing `data_dir/maildrop/` (temp file of mode 0644, fsync, rename,
//! fsync the directory), and only if the daemon will accept it; otherwise it exits 75. The
//! daemon (`pickup_loop`) moves each maildrop file into the store, never trusting it, and
//! removes it only once the store's commit is durable.
//!
//! Owns the maildrop file format: the writer here, the reader in `pickup`. Never touches sled
//! (only `intake`), never creates a data directory, and never deletes a file it has not stored.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use log::debug;

use crate::config::Config;
use crate::control::{self, Request};
use crate::message::{self, rfc5322_date};

pub use self::args::{Mode, SendmailArgs};
pub use self::pickup::pickup_loop;
pub use self::submit::{socket_path, SubmitError};

pub mod args;
mod modes;
mod pickup;
pub mod stdio;
pub mod submit;

pub use self::modes::{no_queue, run};

/// sysexits(3)
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_CANTCREAT: u8 = 73;
pub const EX_TEMPFAIL: u8 = 75;

/// The maildrop directory inside `data_dir`.
pub const MAILDROP: &str = "maildrop";
/// First line of every maildrop file.
const MAGIC: &str = "outpost-maildrop 1";
/// A maildrop file's mode: readable by the daemon's user, writable by nobody else.
const FILE_MODE: u32 = 0o644;

/// Why sendmail refuses (exit code and message).
#[derive(Debug, PartialEq, Eq)]
pub struct SendmailError {
    pub code: u8,
    pub message: String,
}

impl SendmailError {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EX_USAGE,
            message: message.into(),
        }
    }

    fn data(message: impl Into<String>) -> Self {
        Self {
            code: EX_DATAERR,
            message: message.into(),
        }
    }
}

impl fmt::Display for SendmailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A message ready for the maildrop.
#[derive(Debug, PartialEq, Eq)]
pub struct Prepared {
    pub sender: String,
    pub recipients: Vec<String>,
    /// CRLF line ends.
    pub message: Vec<u8>,
}

/// What `prepare` needs from the environment (passed in so it stays pure).
pub struct Origin<'a> {
    /// The mail domain (`domain`): qualifies bare local parts (`root` → `root@domain`) and
    /// Message-IDs.
    pub hostname: &'a str,
    /// The login name, for the default sender.
    pub user: &'a str,
    pub now_unix: u64,
    /// Unique per call (Message-ID).
    pub unique: u64,
}

/// `sendmail`: reads `input`, writes the maildrop file, pokes the daemon. Returns the exit
/// code; prints its own errors.
pub fn main(args: &SendmailArgs, config: &Config, input: &mut dyn Read) -> u8 {
    let mut raw = Vec::new();
    let limit = config.max_message_size.saturating_add(1);
    if let Err(e) = input.take(limit).read_to_end(&mut raw) {
        eprintln!("sendmail: cannot read the message: {e}");
        return EX_DATAERR;
    }
    if u64::try_from(raw.len()).unwrap_or(u64::MAX) >= limit {
        eprintln!(
            "sendmail: message larger than max_message_size ({} bytes)",
            config.max_message_size
        );
        return EX_DATAERR;
    }
    if let Err(e) = check_hops(&raw, config.max_hops) {
        eprintln!("sendmail: {e}");
        return EX_DATAERR;
    }
    let user = std::env::var("LOGNAME")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "root".into());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let origin = Origin {
        hostname: &config.local.domain,
        user: &user,
        now_unix: now.as_secs(),
        unique: u64::from(now.subsec_nanos()) ^ (u64::from(std::process::id()) << 32),
    };
    let prepared = match prepare(args, &origin, &raw) {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return e.code;
        }
    };
    deliver(config, &prepared, origin.unique)
}

/// Hands the message to the daemon over its submission socket; only while nothing listens
/// there, writes it to the maildrop, and only if the daemon will take it from there. The exit
/// code is 0 only when the message is where the daemon takes it.
fn deliver(config: &Config, prepared: &Prepared, unique: u64) -> u8 {
    let socket = submit::socket_path(&config.data_dir);
    let down = match submit::send(&socket, prepared) {
        Ok(_) => return 0,
        Err(SubmitError::Down(e)) => e,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return e.exit_code();
        }
    };
    let dir = config.data_dir.join(MAILDROP);
    if let Err(reason) = maildrop_usable(&dir) {
        eprintln!(
            "sendmail: the daemon is not running ({}: {down}) and {reason}; try again later",
            socket.display()
        );
        return EX_TEMPFAIL;
    }
    if let Err(e) = drop_file(&dir, prepared, unique) {
        eprintln!(
            "sendmail: cannot write to {}: {e}; try again later",
            dir.display()
        );
        return EX_TEMPFAIL;
    }
    // The daemon also looks every few seconds and at start: a failed poke loses nothing.
    if let Err(e) = control::request(&config.data_dir, &Request::Poke) {
        debug!("sendmail: no poke: {e}");
    }
    0
}

/// Whether this process may leave mail in the maildrop `dir` for the daemon: the directory
/// must exist (sendmail creates none) and the daemon (its owner) must accept files this user
/// writes.
fn maildrop_usable(dir: &Path) -> Result<(), String> {
    let meta = fs::metadata(dir)
        .map_err(|e| format!("there is no maildrop at {} ({e})", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let euid = rustix::process::geteuid().as_raw();
    if !pickup::owner_trusted(euid, meta.uid()) {
        return Err(format!(
            "the daemon (uid {}) would not accept a maildrop file from uid {euid}",
            meta.uid()
        ));
    }
    Ok(())
}

/// The loop check (`max_hops`) on the message as given, before it reaches the maildrop.
fn check_hops(raw: &[u8], max_hops: u32) -> Result<(), String> {
    let mut watch = message::HeaderWatch::new(std::rc::Rc::from([]));
    watch.feed(raw);
    let received = watch.received();
    if received > max_hops {
        return Err(format!(
            "mail loop: {received} Received: header fields, more than max_hops ({max_hops})"
        ));
    }
    Ok(())
}

/// Turns raw input into a message and its envelope (pure).
pub fn prepare(
    args: &SendmailArgs,
    origin: &Origin<'_>,
    raw: &[u8],
) -> Result<Prepared, SendmailError> {
    if raw.contains(&0) {
        return Err(SendmailError::data("the message contains NUL bytes"));
    }
    let lines = input_lines(raw, args.ignore_dots);
    let header_end = message::section_len(&lines);
    let (headers, body) = lines.split_at(header_end);
    let fields = message::fields(headers);
    let sender = envelope_sender(args, origin)?;
    let (mut recipients, headers) = recipients(args, origin, headers, &fields)?;
    dedup(&mut recipients);
    if recipients.is_empty() {
        return Err(SendmailError::usage(if args.extract {
            "no recipients: none on the command line and no To:, Cc: or Bcc: header"
        } else {
            "no recipients given (name them, or use -t to read them from the headers)"
        }));
    }
    let mut message = Vec::with_capacity(raw.len() + 256);
    missing_fields(args, origin, &sender, &fields, &mut message)?;
    for line in &headers {
        push_line(&mut message, line);
    }
    if header_end == 0 || !body.is_empty() {
        // The empty line between headers and body (kept or added).
        if !body.first().is_some_and(|l| l.is_empty()) {
            message.extend_from_slice(b"\r\n");
        }
        for line in body {
            push_line(&mut message, line);
        }
    }
    Ok(Prepared {
        sender,
        recipients,
        message,
    })
}

/// The input's lines without their line ends: an mbox `From ` separator dropped, and cut at a
/// line holding a single dot unless `-i`.
fn input_lines(raw: &[u8], ignore_dots: bool) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = raw
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    if raw.ends_with(b"\n") {
        lines.pop();
    }
    // An mbox separator (`From user date`, no colon after the name) is not a header.
    if lines.first().is_some_and(|l| l.starts_with(b"From ")) {
        lines.remove(0);
    }
    if !ignore_dots {
        if let Some(end) = lines.iter().position(|l| *l == b".") {
            lines.truncate(end);
        }
    }
    lines
}

/// `-f`/`-r`, else the login name, qualified; `-f '<>'` (`Some("")`) is the null sender, as
/// auto-responders and bounces use.
fn envelope_sender(args: &SendmailArgs, origin: &Origin<'_>) -> Result<String, SendmailError> {
    match args
        .from
        .as_deref()
        .map(|f| f.trim_matches(|c| c == '<' || c == '>'))
    {
        Some("") => Ok(String::new()),
        Some(from) => qualify(from, origin.hostname),
        None => qualify(origin.user, origin.hostname),
    }
}

/// The recipients from the command line and, with `-t`, from To:, Cc: and Bcc:; and the
/// header lines to keep (without Bcc: under `-t`).
fn recipients<'a>(
    args: &SendmailArgs,
    origin: &Origin<'_>,
    headers: &[&'a [u8]],
    fields: &[message::Field],
) -> Result<(Vec<String>, Vec<&'a [u8]>), SendmailError> {
    let mut recipients = Vec::new();
    for rcpt in &args.recipients {
        for address in message::address_list(rcpt) {
            recipients.push(qualify(&address, origin.hostname)?);
        }
    }
    if !args.extract {
        return Ok((recipients, headers.to_vec()));
    }
    let mut kept: Vec<&[u8]> = Vec::with_capacity(headers.len());
    for field in fields {
        if ["to", "cc", "bcc"].contains(&field.name.as_str()) {
            for address in message::address_list(&field.value) {
                recipients.push(qualify(&address, origin.hostname)?);
            }
        }
        if field.name != "bcc" {
            kept.extend_from_slice(&headers[field.lines.clone()]);
        }
    }
    Ok((recipients, kept))
}

/// From: (`-F` for the display name), Date: and Message-ID: when the input has none.
fn missing_fields(
    args: &SendmailArgs,
    origin: &Origin<'_>,
    sender: &str,
    fields: &[message::Field],
    out: &mut Vec<u8>,
) -> Result<(), SendmailError> {
    let has = |name: &str| fields.iter().any(|field| field.name == name);
    if !has("from") {
        let author = if sender.is_empty() {
            qualify(origin.user, origin.hostname)?
        } else {
            sender.to_owned()
        };
        let from = match &args.full_name {
            Some(name) => format!("From: \"{}\" <{author}>", name.replace(['"', '\\'], "")),
            None => format!("From: <{author}>"),
        };
        push_line(out, from.as_bytes());
    }
    if !has("date") {
        push_line(
            out,
            format!("Date: {}", rfc5322_date(origin.now_unix)).as_bytes(),
        );
    }
    if !has("message-id") {
        let id = format!(
            "Message-ID: <{}.{:016x}@{}>",
            origin.now_unix, origin.unique, origin.hostname
        );
        push_line(out, id.as_bytes());
    }
    Ok(())
}

fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
}

/// `user` → `user@hostname`; refuses what cannot be an address.
fn qualify(address: &str, hostname: &str) -> Result<String, SendmailError> {
    let address = address.trim();
    let bad = address.is_empty()
        || address.len() > 254
        || address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'))
        || address.starts_with('@')
        || address.ends_with('@');
    if bad {
        return Err(SendmailError::data(format!(
            "{address:?} is not a mail address"
        )));
    }
    if address.contains('@') {
        Ok(address.to_owned())
    } else {
        Ok(format!("{address}@{hostname}"))
    }
}

/// Removes later duplicates (case-insensitively), keeping order.
fn dedup(addresses: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    addresses.retain(|a| seen.insert(a.to_ascii_lowercase()));
}

/// Writes the maildrop file durably into the existing `dir`: temp file (mode `FILE_MODE`
/// whatever the umask, so the daemon can read it), fsync, rename to `*.msg`, fsync the
/// directory. Never creates `dir`.
pub fn drop_file(dir: &Path, prepared: &Prepared, unique: u64) -> io::Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("{nanos:024}-{:016x}", unique);
    let tmp = dir.join(format!(".tmp-{name}"));
    let path = dir.join(format!("{name}.msg"));
    let mut envelope = format!("{MAGIC}\nfrom {}\n", prepared.sender);
    for rcpt in &prepared.recipients {
        envelope.push_str(&format!("to {rcpt}\n"));
    }
    envelope.push('\n');
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        file.write_all(envelope.as_bytes())?;
        file.write_all(&prepared.message)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::io::BufReader;

    use super::pickup::read_envelope;
    use super::*;

    fn origin() -> Origin<'static> {
        Origin {
            hostname: "gw.test",
            user: "cron",
            now_unix: 0,
            unique: 0xabc,
        }
    }

    fn args(rcpts: &[&str]) -> SendmailArgs {
        SendmailArgs {
            recipients: rcpts.iter().map(|s| (*s).to_owned()).collect(),
            ..SendmailArgs::default()
        }
    }

    fn text(p: &Prepared) -> String {
        String::from_utf8(p.message.clone()).unwrap()
    }

    #[test]
    fn adds_from_date_and_message_id_when_missing() {
        let p = prepare(&args(&["ops@x.test"]), &origin(), b"Subject: hi\n\nbody\n").unwrap();
        let t = text(&p);
        assert!(
            t.starts_with("From: <cron@gw.test>\r\nDate: Thu, 01 Jan 1970"),
            "{t}"
        );
        assert!(
            t.contains("Message-ID: <0.0000000000000abc@gw.test>\r\n"),
            "{t}"
        );
        assert!(t.ends_with("Subject: hi\r\n\r\nbody\r\n"), "{t}");
        assert_eq!(p.sender, "cron@gw.test");
        assert_eq!(p.recipients, ["ops@x.test"]);
    }

    #[test]
    fn keeps_existing_from_date_message_id() {
        let raw = b"From: a@b.test\nDate: x\nMessage-Id: <1@b>\n\nbody\n";
        let p = prepare(&args(&["ops@x.test"]), &origin(), raw).unwrap();
        assert_eq!(
            text(&p),
            "From: a@b.test\r\nDate: x\r\nMessage-Id: <1@b>\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn extract_reads_to_cc_bcc_and_removes_bcc() {
        let raw = b"To: \"Ops, Team\" <ops@x.test>, b@x.test (Bee)\n\
                    Cc: undisclosed:;\nBcc: secret@x.test,\n  other@x.test\nSubject: s\n\nhi\n";
        let mut a = args(&["extra@x.test", "ops@x.test"]);
        a.extract = true;
        let p = prepare(&a, &origin(), raw).unwrap();
        assert_eq!(
            p.recipients,
            [
                "extra@x.test",
                "ops@x.test",
                "b@x.test",
                "secret@x.test",
                "other@x.test"
            ]
        );
        let t = text(&p);
        assert!(
            !t.contains("Bcc") && !t.contains("secret") && !t.contains("other@"),
            "{t}"
        );
        assert!(t.contains("Subject: s\r\n\r\nhi\r\n"), "{t}");
    }

    #[test]
    fn no_recipients_is_a_usage_error() {
        let e = prepare(&args(&[]), &origin(), b"Subject: x\n\n").unwrap_err();
        assert_eq!(e.code, EX_USAGE);
        let mut a = args(&[]);
        a.extract = true;
        assert_eq!(
            prepare(&a, &origin(), b"Subject: x\n\n").unwrap_err().code,
            EX_USAGE
        );
    }

    #[test]
    fn bad_input_is_a_data_error() {
        assert_eq!(
            prepare(&args(&["a@b"]), &origin(), b"x\0y")
                .unwrap_err()
                .code,
            EX_DATAERR
        );
        assert_eq!(
            prepare(&args(&["a b@c"]), &origin(), b"x")
                .unwrap_err()
                .code,
            EX_DATAERR
        );
    }

    #[test]
    fn a_line_over_998_octets_is_kept_whole() {
        // The forwarder folds it for transport (`smtp::body::BodyEncoder`).
        let raw = [b"Subject: x\n\n".to_vec(), vec![b'x'; 2000], b"\n".to_vec()].concat();
        let p = prepare(&args(&["a@b"]), &origin(), &raw).unwrap();
        let line = [b"\r\n".to_vec(), vec![b'x'; 2000], b"\r\n".to_vec()].concat();
        assert!(p.message.ends_with(&line));
    }

    #[test]
    fn a_leading_mbox_from_line_is_dropped() {
        let raw = b"From cron Mon Nov 23 12:00:00 2026\nSubject: x\n\nbody\n";
        let p = prepare(&args(&["a@b"]), &origin(), raw).unwrap();
        let t = text(&p);
        assert!(!t.contains("From cron"), "{t}");
        assert!(t.contains("\r\nSubject: x\r\n\r\nbody\r\n"), "{t}");
    }

    #[test]
    fn single_dot_ends_input_unless_i() {
        let raw = b"Subject: x\n\none\n.\ntwo\n";
        let p = prepare(&args(&["a@b"]), &origin(), raw).unwrap();
        assert!(text(&p).ends_with("\r\n\r\none\r\n"));
        let mut a = args(&["a@b"]);
        a.ignore_dots = true;
        let p = prepare(&a, &origin(), raw).unwrap();
        assert!(text(&p).ends_with("one\r\n.\r\ntwo\r\n"));
    }

    #[test]
    fn bare_local_parts_are_qualified_and_full_name_used() {
        let mut a = args(&["root"]);
        a.from = Some("<backup>".into());
        a.full_name = Some("Backup \"Job\"".into());
        let p = prepare(&a, &origin(), b"no headers here\n").unwrap();
        assert_eq!(p.recipients, ["root@gw.test"]);
        assert_eq!(p.sender, "backup@gw.test");
        let t = text(&p);
        assert!(
            t.starts_with("From: \"Backup Job\" <backup@gw.test>\r\n"),
            "{t}"
        );
        assert!(t.ends_with("\r\n\r\nno headers here\r\n"), "{t}");
    }

    #[test]
    fn null_sender_is_kept_and_from_names_the_user() {
        let mut a = args(&["ops@x.test"]);
        a.from = Some(String::new());
        let p = prepare(&a, &origin(), b"Subject: away\n\nback soon\n").unwrap();
        assert_eq!(p.sender, "");
        assert!(
            text(&p).starts_with("From: <cron@gw.test>\r\n"),
            "{}",
            text(&p)
        );
    }

    #[test]
    fn maildrop_file_round_trips_its_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let p = prepare(
            &args(&["a@x.test", "b@x.test"]),
            &origin(),
            b"Subject: s\n\nb\n",
        )
        .unwrap();
        let path = drop_file(dir.path(), &p, 1).unwrap();
        assert_eq!(path.extension().unwrap(), "msg");
        let mut reader = BufReader::new(File::open(&path).unwrap());
        let Ok((sender, rcpts)) = read_envelope(&mut reader, 10) else {
            panic!("envelope unreadable");
        };
        assert_eq!(sender, "cron@gw.test");
        assert_eq!(rcpts, ["a@x.test", "b@x.test"]);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, p.message);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind");
    }
}
