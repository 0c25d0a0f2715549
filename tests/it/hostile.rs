//! Hostile and absurd input at the edges: configuration values at their bounds, an open relay
//! by configuration, bare CR and NUL in a body, mail loops, smarthost replies that would forge
//! log fields, and the queue's file modes. Each runs the real binary against the kit's peers.

use std::path::Path;
use std::time::Duration;

use crate::util::{
    assert_queued, reply, run_command_in, settle, toml_string, CmdRun, RawClient, RelayConfig,
    RelayProcess, Smarthost, Stage, TestDir, TestPki, OUTPOST,
};

const DELIVERY: Duration = Duration::from_secs(30);

/// `outpost check-config` on `body` (with a data dir in a fresh test dir).
fn check_config(body: &str) -> CmdRun {
    run_with_config(body, "check-config")
}

/// `outpost <command> --config FILE` on `body` (with a data dir in a fresh test dir).
fn run_with_config(body: &str, command: &str) -> CmdRun {
    let dir = TestDir::new();
    let data_dir = dir.join("data");
    let text = format!(
        "data_dir = {}\n{body}",
        toml_string(&data_dir.to_string_lossy())
    );
    let path = dir.join("outpost.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_string_lossy().into_owned();
    run_command_in(
        Some(dir.path()),
        Path::new(OUTPOST),
        &[command, "--config", &path],
        b"",
    )
}

#[test]
fn check_config_refuses_a_duration_that_overflows() {
    let run = check_config("[timeouts]\ncommand = \"18446744073709551615s\"\n");
    assert_eq!(run.code, Some(78), "{run}");
    assert!(run.all().contains("timeouts.command"), "{run}");
    assert!(run.all().contains("1 day"), "{run}");
}

/// The largest value of every duration and size key: check-config accepts it, and the daemon
/// then serves SMTP and delivers with it.
#[test]
fn the_largest_accepted_values_keep_the_daemon_serving() {
    let upstream = Smarthost::start();
    let config = RelayConfig::with_smarthost(upstream.port())
        .top("max_message_size = 4294967296\n[store]\ncache_bytes = 1073741824\n")
        .queue(
            "max_age = \"365days\"\nfailed_retention = \"365days\"\nmax_bytes = 1125899906842624\n",
        )
        .timeouts("command = \"1day\"\ndata = \"1day\"\n")
        .section("[rate_limit]\nper_sender = 1000000\nwindow = \"30days\"\n");
    let checked = check_config(&config.render(Path::new("unused")).replacen(
        "data_dir",
        "# data_dir",
        1,
    ));
    assert_eq!(checked.code, Some(0), "{checked}");
    let relay = RelayProcess::start_with(config);
    let mut client = RawClient::ready(relay.port());
    let ehlo = client.cmd("EHLO lan.test");
    assert!(ehlo.to_string().contains("SIZE 4294967296"), "{ehlo}");
    // The free-space reserve is twice max_message_size: 250 where the disk has room, 452 where
    // not; either way the session goes on.
    let reply = client.send_mail(
        "a@lan.test",
        &["b@remote.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    );
    assert!(
        matches!(reply.code, 250 | 452),
        "{reply}\n{}",
        client.transcript()
    );
    assert_eq!(client.cmd("NOOP").code, 250, "{}", client.transcript());
    let mut second = RawClient::ready(relay.port());
    assert_eq!(second.cmd("NOOP").code, 250, "{}", second.transcript());
    if reply.code == 250 {
        assert_queued(&reply);
        upstream
            .wait_for(1, DELIVERY)
            .unwrap_or_else(|| relay.fail("nothing delivered"));
    }
}

/// A smarthost reply with `"` in it: the `status=deferred` line quotes and escapes it, so a log
/// parser cannot read a forged `status=sent` field from it.
#[test]
fn a_smarthost_reply_cannot_forge_a_log_field() {
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { .. } => Some(reply(451, "4.3.0 busy\" status=sent x=\"\\")),
        _ => None,
    });
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail(
        "a@lan.test",
        &["b@remote.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    ));
    let line = relay.wait_log("status=deferred");
    let line = line
        .lines()
        .find(|l| l.contains("status=deferred"))
        .unwrap_or_else(|| relay.fail("no status=deferred line"));
    assert!(
        line.ends_with(r#"reply="451 4.3.0 busy\" status=sent x=\"\\""#),
        "{line}"
    );
    // Every `"` before ` status=sent` in the whole log is an escaped one.
    let log = relay.log();
    let forged = log
        .match_indices("\" status=sent")
        .filter(|&(i, _)| !log[..i].ends_with('\\'))
        .count();
    assert_eq!(forged, 0, "{log}");
}

/// `openssl passwd -6 -salt Zx9q2mB7 camera-pw`
const CAMERA_HASH: &str = "$6$Zx9q2mB7$7euoUzgiGoP/JG7b1oQ/kumgdF6Rt0IqsCVygrN/0nG5ZBWl2b626DDBnWCtQEYUs8L4DnHNrO320C/FDxqzL0";

/// `relay_from` that adds up to everyone: refused by check-config and at start (exit 78), unless
/// `require_auth`; then a client inside it must still AUTH before MAIL, while local programs
/// still submit through the socket.
#[test]
fn an_open_relay_by_configuration_is_refused_unless_every_client_authenticates() {
    let open =
        "relay_from = [\"0.0.0.0/1\", \"128.0.0.0/1\", \"::1\"]\nlisten = [\"127.0.0.1:0\"]\n";
    for command in ["check-config", "serve"] {
        let run = run_with_config(open, command);
        assert_eq!(run.code, Some(78), "{command}: {run}");
        assert!(run.all().contains("relay_from"), "{run}");
        assert!(run.all().contains("open relay"), "{run}");
    }
    let pki = TestPki::loopback();
    let upstream = Smarthost::start();
    let secured = format!(
        "relay_from = [\"0.0.0.0/0\"]\nrequire_auth = true\n\
         [tls]\ncert = {}\nkey = {}\n[[users]]\nname = \"camera\"\npassword_hash = \"{CAMERA_HASH}\"\n",
        toml_string(&pki.cert.to_string_lossy()),
        toml_string(&pki.key.to_string_lossy()),
    );
    let relay =
        RelayProcess::start_with(RelayConfig::with_smarthost(upstream.port()).top(&secured));
    let mut client = RawClient::ready(relay.port());
    assert_eq!(
        client.cmd("MAIL FROM:<a@lan.test>").code,
        530,
        "{}",
        client.transcript()
    );
    client.starttls(pki.client_config()).unwrap();
    assert_eq!(client.cmd("EHLO lan.test").code, 250);
    let reply = client.cmd("MAIL FROM:<a@lan.test>");
    assert_eq!(reply.code, 530, "{}", client.transcript());
    assert!(reply.text().starts_with("5.7.0"), "{reply}");
    // AUTH PLAIN camera / camera-pw.
    assert_eq!(
        client.cmd("AUTH PLAIN AGNhbWVyYQBjYW1lcmEtcHc=").code,
        235,
        "{}",
        client.transcript()
    );
    assert_queued(&client.send_mail(
        "a@lan.test",
        &["b@remote.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    ));
    upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    // `require_auth` is for network clients: local programs still submit through the socket.
    let run = relay.command(&["sendmail", "ops@remote.test"], b"Subject: local\n\nhi\n");
    assert_eq!(run.code, Some(0), "{run}");
    upstream
        .wait_for(2, DELIVERY)
        .unwrap_or_else(|| relay.fail("the local submission was not delivered"));
}

fn with_hops(n: usize, eol: &str) -> Vec<u8> {
    let mut message = String::new();
    for hop in 0..n {
        message.push_str(&format!("Received: from h{hop} by h{}; now{eol}", hop + 1));
    }
    message.push_str(&format!("Subject: loop{eol}{eol}body{eol}"));
    message.into_bytes()
}

/// More than `max_hops` (default 50) `Received:` fields: 554 5.4.6 at the final dot, after
/// the body is drained; the session goes on, and 50 are fine.
#[test]
fn a_mail_loop_is_refused_with_554_5_4_6_over_smtp() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    let reply = client.send_mail("a@lan.test", &["b@remote.test"], &with_hops(51, "\r\n"));
    assert_eq!(reply.code, 554, "{}", client.transcript());
    assert!(reply.text().starts_with("5.4.6"), "{reply}");
    assert_eq!(client.cmd("NOOP").code, 250, "{}", client.transcript());
    relay.wait_log("status=rejected reason=\"mail loop: 51 Received: header fields");
    assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], &with_hops(50, "\r\n")));
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    assert!(got[0].data_str().contains("Received: from h49 "));
    // Had the looping message been queued, it would go out before the marker.
    settle(&relay, &upstream);
    assert_eq!(
        upstream.unmarked().len(),
        1,
        "the looping message was relayed"
    );
}

/// `max_hops` from sendmail: the submission is refused (exit 65) with a clear error and
/// nothing reaches the maildrop or the queue.
#[test]
fn a_mail_loop_is_refused_by_sendmail() {
    let relay = RelayProcess::start("max_hops = 5");
    let run = relay.command(&["sendmail", "ops@remote.test"], &with_hops(6, "\n"));
    assert_eq!(run.code, Some(65), "{run}");
    assert!(
        run.stderr
            .contains("mail loop: 6 Received: header fields, more than max_hops (5)"),
        "{run}"
    );
    let run = relay.command(&["sendmail", "ops@remote.test"], &with_hops(5, "\n"));
    assert_eq!(run.code, Some(0), "{run}");
}

/// No bare CR or NUL is forwarded as received: `<CR>.<CR>` in a body (SMTP smuggling) reaches
/// the smarthost as a stuffed line of its own, over SMTP and from sendmail.
#[test]
fn bare_cr_and_nul_never_reach_the_smarthost() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    let smuggled = b"Subject: smtp\r\n\r\na\r.\rMAIL FROM:<x@evil.test>\r\nb\0c\r\n";
    assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], smuggled));
    let run = relay.command(
        &["sendmail", "-i", "ops@remote.test"],
        b"Subject: sendmail\n\na\r.\rMAIL FROM:<x@evil.test>\n",
    );
    assert_eq!(run.code, Some(0), "{run}");
    let got = upstream
        .wait_for(2, DELIVERY)
        .unwrap_or_else(|| relay.fail("not delivered"));
    for mail in &got {
        let data = &mail.data;
        for (i, &b) in data.iter().enumerate() {
            assert_ne!(b, 0, "NUL forwarded: {:?}", mail.data_str());
            if b == b'\r' {
                assert_eq!(
                    data.get(i + 1),
                    Some(&b'\n'),
                    "bare CR forwarded: {:?}",
                    mail.data_str()
                );
            }
        }
        // The smarthost saw the dot line as text (dot-unstuffed), never as an end of data.
        assert!(
            mail.data_str()
                .contains("a\r\n.\r\nMAIL FROM:<x@evil.test>\r\n"),
            "{}",
            mail.data_str()
        );
    }
    assert!(got.iter().any(|m| m.data_str().contains("bc\r\n")));
}

/// Group or other access to anything in `data_dir` but the maildrop and sockets.
fn loose_entries(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut loose = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if entry.file_name() == "maildrop" || kind.is_socket() {
                continue;
            }
            let mode = entry.metadata().unwrap().permissions().mode();
            if mode & 0o077 != 0 {
                loose.push(format!("{} {mode:o}", entry.path().display()));
            }
            if kind.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    loose
}

/// Under `umask 000` the queue is still private: `data_dir` 0700, its files 0600; a data
/// directory opened up meanwhile is tightened at the next start, with a WARN.
#[test]
fn the_queue_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { .. } => Some(reply(451, "4.3.0 later")),
        _ => None,
    });
    let mut relay =
        RelayProcess::start_wrapped(RelayConfig::with_smarthost(upstream.port()), "umask 000");
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail(
        "a@lan.test",
        &["b@remote.test"],
        b"Subject: x\r\n\r\nsecret\r\n",
    ));
    relay.wait_log("status=deferred");
    let dir = relay.data_dir.clone();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dir), 0o700);
    let bodies: Vec<_> = std::fs::read_dir(dir.join("bodies")).unwrap().collect();
    assert!(!bodies.is_empty(), "no body file");
    assert_eq!(loose_entries(&dir), Vec::<String>::new());
    relay.stop();
    let set =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    set(&dir, 0o755);
    set(&dir.join("db"), 0o644);
    set(&dir.join("bodies"), 0o777);
    relay.restart();
    let log = relay.wait_log("was open to other users");
    // `db` at least (sled may write more files under the loose umask, e.g. at shutdown, all
    // inside the private directory).
    assert!(log.contains("set 2 directories to 0700 and "), "{log}");
    assert_eq!(mode(&dir) & 0o066, 0, "{:o}", mode(&dir));
    assert_eq!(loose_entries(&dir), Vec::<String>::new());
}

/// A maildrop file over `max_hops` (written while the limit was higher) is
/// never queued: reported once at WARN naming the loop; the next file is delivered.
#[test]
fn a_mail_loop_in_the_maildrop_is_never_sent() {
    let upstream = Smarthost::start();
    let mut relay = RelayProcess::start_to(upstream.port());
    relay.stop();
    let run = relay.command(&["sendmail", "ops@remote.test"], &with_hops(6, "\n"));
    assert_eq!(run.code, Some(0), "{run}");
    let config = std::fs::read_to_string(&relay.config_path).unwrap();
    std::fs::write(&relay.config_path, format!("max_hops = 5\n{config}")).unwrap();
    relay.restart();
    // Reported once, then kept waiting in the maildrop until it is set aside (see `pickup`).
    let log = relay.wait_log("is not sent");
    assert!(
        log.contains("mail loop: 6 Received: header fields, more than max_hops (5)"),
        "{log}"
    );
    let run = relay.command(&["sendmail", "ops@remote.test"], &with_hops(5, "\n"));
    assert_eq!(run.code, Some(0), "{run}");
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("not delivered"));
    assert!(got[0].data_str().contains("Received: from h4 "));
    settle(&relay, &upstream);
    assert_eq!(
        upstream.unmarked().len(),
        1,
        "the looping message was relayed"
    );
}
