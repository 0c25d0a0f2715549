//! The system's mailer (issue 15): every command finds the config the same way (`--config`,
//! `OUTPOST_CONFIG`, `/etc/outpost/outpost.toml`), `sendmail` works from any working directory
//! with sendmail(1)'s own flags, and local names (`root`, `x@localhost`) leave qualified, through
//! `[aliases]`, `admin` and `domain`, DSNs included.

use std::path::Path;
use std::time::Duration;

use crate::util::{
    alias, reply, run_command_with, toml_string, CmdRun, RelayConfig, RelayProcess, Smarthost,
    Stage, TestDir, OUTPOST,
};

const DELIVERY: Duration = Duration::from_secs(20);

/// Runs `program args…` in `cwd` with `OUTPOST_CONFIG=config` (and `LOGNAME=cron`), as cron
/// runs sendmail: no `--config`. Bounded like the kit's `run_command`.
fn run_as_cron(cwd: &Path, program: &Path, config: &Path, args: &[&str], stdin: &[u8]) -> CmdRun {
    let env = [
        ("OUTPOST_CONFIG", config.as_os_str()),
        ("LOGNAME", "cron".as_ref()),
    ];
    run_command_with(Some(cwd), &env, program, args, stdin)
}

/// A relay to `upstream` with `domain = "site.example"` and `extra` (sections) appended.
fn start_relay(upstream: &Smarthost, top: &str, extra: &str) -> RelayProcess {
    RelayProcess::start_with(
        RelayConfig::with_smarthost(upstream.port())
            .top(&format!("domain = \"site.example\"\n{top}"))
            .section(extra),
    )
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn issue_15_cron_invocation_from_another_cwd_reaches_the_daemons_queue() {
    let upstream = Smarthost::start();
    let relay = start_relay(&upstream, "", "");
    let sendmail = alias(&relay.dir, "sendmail");
    let home = TestDir::new();
    let run = run_as_cron(
        home.path(),
        &sendmail,
        &relay.config_path,
        &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
        b"Subject: Cron <cron@pi> backup\n\nbackup failed\n",
    );
    assert_eq!(run.code, Some(0), "{run}");
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("cron's mail not delivered"));
    assert_eq!(got[0].to, ["root@site.example"]);
    assert_eq!(got[0].from, "cron@site.example");
    assert!(got[0].data_str().contains("backup failed"));
    assert!(
        entries(home.path()).is_empty(),
        "sendmail wrote into the caller's cwd: {:?}",
        entries(home.path())
    );
}

#[test]
fn issue_15_debug_flag_d0_1_is_not_a_data_dir() {
    let upstream = Smarthost::start();
    let relay = start_relay(&upstream, "", "");
    let sendmail = alias(&relay.dir, "sendmail");
    let cwd = TestDir::new();
    let run = run_as_cron(
        cwd.path(),
        &sendmail,
        &relay.config_path,
        &["-d0.1", "-C", "/etc/mail/sendmail.cf", "ops@remote.test"],
        b"Subject: debug\n\nx\n",
    );
    assert_eq!(run.code, Some(0), "{run}");
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("not delivered"));
    assert_eq!(got[0].to, ["ops@remote.test"]);
    assert!(entries(cwd.path()).is_empty(), "{:?}", entries(cwd.path()));
}

#[test]
fn issue_15_sendmail_with_no_config_and_no_queue_exits_78_and_creates_nothing() {
    let cwd = TestDir::new();
    let missing = cwd.join("nowhere.toml");
    let sendmail = alias(&cwd, "sendmail");
    let config = cwd.join("outpost.toml");
    std::fs::write(&config, "data_dir = \"queue\"\n").unwrap();
    let run = run_as_cron(
        cwd.path(),
        &sendmail,
        &config,
        &["root"],
        b"Subject: x\n\nx\n",
    );
    assert_eq!(run.code, Some(78), "{run}");
    assert!(run.stderr.contains("no queue at"), "{run}");
    assert!(!cwd.join("queue").exists() && !cwd.join("outpost-data").exists());
    let run = run_as_cron(cwd.path(), &sendmail, &missing, &["root"], b"x\n");
    assert_eq!(run.code, Some(78), "{run}");
}

#[test]
fn issue_15_newaliases_checks_the_aliases_and_starts_no_daemon() {
    let dir = TestDir::new();
    let newaliases = alias(&dir, "newaliases");
    let aliases = dir.join("aliases");
    std::fs::write(
        &aliases,
        "# local\nroot: ops@corp.example\npostmaster: root\n",
    )
    .unwrap();
    let config = dir.join("outpost.toml");
    let text =
        "domain = \"site.example\"\naliases_file = \"aliases\"\nlisten = [\"127.0.0.1:0\"]\n\
                [aliases]\nteam = [\"a@corp.example\", \"b@corp.example\"]\n";
    std::fs::write(&config, text).unwrap();
    let run = run_as_cron(dir.path(), &newaliases, &config, &[], b"");
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("3 aliases ok"), "{run}");
    assert!(!run.all().contains("listening"), "{run}");
    std::fs::write(
        &aliases,
        "root: ops@corp.example\nbackup: |/usr/bin/store\n",
    )
    .unwrap();
    let run = run_as_cron(dir.path(), &newaliases, &config, &[], b"");
    assert_eq!(run.code, Some(78), "{run}");
    assert!(
        run.stderr.contains("aliases_file") && run.stderr.contains("line 2"),
        "{run}"
    );
    let run = run_as_cron(
        dir.path(),
        Path::new(OUTPOST),
        &config,
        &["sendmail", "-bi"],
        b"",
    );
    assert_eq!(run.code, Some(78), "{run}");
}

#[test]
fn issue_15_unknown_program_name_is_a_usage_error_not_a_daemon() {
    let dir = TestDir::new();
    let exim = alias(&dir, "exim4");
    let config = dir.join("outpost.toml");
    std::fs::write(&config, "listen = [\"127.0.0.1:0\"]\n").unwrap();
    let run = run_as_cron(dir.path(), &exim, &config, &[], b"");
    assert_eq!(run.code, Some(64), "{run}");
    assert!(
        run.stderr.contains("`sendmail`, `mailq` or `newaliases`"),
        "{run}"
    );
    assert!(!run.all().contains("listening"), "{run}");
}

#[test]
fn issue_15_sendmail_root_goes_to_its_alias_admin_or_the_domain() {
    let upstream = Smarthost::start();
    let relay = start_relay(
        &upstream,
        "admin = \"admin@corp.example\"\n",
        "\n[aliases]\nroot = [\"ops@corp.example\", \"oncall@corp.example\"]\n",
    );
    let cwd = TestDir::new();
    let sendmail = alias(&relay.dir, "sendmail");
    let run = run_as_cron(
        cwd.path(),
        &sendmail,
        &relay.config_path,
        &["root"],
        b"Subject: a\n\nx\n",
    );
    assert_eq!(run.code, Some(0), "{run}");
    let run = run_as_cron(
        cwd.path(),
        &sendmail,
        &relay.config_path,
        &["pi@localhost"],
        b"Subject: b\n\nx\n",
    );
    assert_eq!(run.code, Some(0), "{run}");
    let got = upstream
        .wait_for(2, DELIVERY)
        .unwrap_or_else(|| relay.fail("not delivered"));
    let to_of = |subject: &str| {
        let mail = got.iter().find(|m| m.data_str().contains(subject)).unwrap();
        mail.to.clone()
    };
    assert_eq!(
        to_of("Subject: a"),
        ["ops@corp.example", "oncall@corp.example"]
    );
    assert_eq!(to_of("Subject: b"), ["admin@corp.example"]);

    // Without an alias or admin: qualified with `domain`, over SMTP as well.
    let upstream = Smarthost::start();
    let relay = start_relay(&upstream, "", "");
    let sendmail = alias(&relay.dir, "sendmail");
    let run = run_as_cron(
        cwd.path(),
        &sendmail,
        &relay.config_path,
        &["root"],
        b"Subject: c\n\nx\n",
    );
    assert_eq!(run.code, Some(0), "{run}");
    let mut client = crate::util::RawClient::ready(relay.port());
    let message = b"Subject: d\r\n\r\nx\r\n";
    let _ = client.send_mail("ups@localhost", &["root@outpost.test"], message);
    let got = upstream
        .wait_for(2, DELIVERY)
        .unwrap_or_else(|| relay.fail("not delivered"));
    for mail in &got {
        assert_eq!(mail.to, ["root@site.example"], "{}", mail.data_str());
    }
    assert!(got.iter().any(|m| m.from == "ups@site.example"));
}

#[test]
fn issue_15_bv_prints_where_recipients_go_and_sends_nothing() {
    let upstream = Smarthost::start();
    let relay = start_relay(&upstream, "", "\n[aliases]\nroot = \"ops@corp.example\"\n");
    let run = relay.command(&["sendmail", "-bv", "root", "x@remote.test"], b"");
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout,
        "root -> ops@corp.example (alias)\nx@remote.test -> x@remote.test (remote)\n"
    );
    let list = relay.command_ok(&["queue"]);
    assert!(list.contains("Mail queue is empty"), "{list}");
}

#[test]
fn issue_15_null_sender_f_angle_brackets_is_sent_with_an_empty_reverse_path() {
    let upstream = Smarthost::start();
    let relay = start_relay(&upstream, "", "");
    let run = relay.command(
        &["sendmail", "-f", "<>", "ops@remote.test"],
        b"Subject: away\n\nx\n",
    );
    assert_eq!(run.code, Some(0), "{run}");
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("not delivered"));
    assert_eq!(got[0].from, "");
    assert_eq!(got[0].to, ["ops@remote.test"]);
}

#[test]
fn issue_15_relative_data_dir_is_resolved_against_the_config_files_directory() {
    let etc = TestDir::new();
    let config = etc.join("outpost.toml");
    std::fs::write(&config, "data_dir = \"queue\"\n").unwrap();
    let elsewhere = TestDir::new();
    let run = run_as_cron(
        elsewhere.path(),
        Path::new(OUTPOST),
        &config,
        &["check-config"],
        b"",
    );
    assert_eq!(run.code, Some(0), "{run}");
    let expected = format!(
        "data_dir = {}",
        toml_string(&etc.join("queue").to_string_lossy())
    );
    assert!(run.stdout.contains(&expected), "{expected} not in {run}");
    assert!(
        run.stdout
            .starts_with(&format!("# {}: ok", config.display())),
        "check-config does not name the file: {run}"
    );
}

#[test]
fn issue_15_a_dsn_to_a_local_sender_reaches_admin() {
    let upstream = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { to } if *to == "bad@remote.test" => Some(reply(550, "5.1.1 no such user")),
        _ => None,
    });
    let relay = start_relay(&upstream, "admin = \"admin@corp.example\"\n", "");
    let run = relay.command(
        &["sendmail", "-f", "backup", "bad@remote.test"],
        b"Subject: x\n\nx\n",
    );
    assert_eq!(run.code, Some(0), "{run}");
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("no DSN"));
    assert_eq!(got[0].from, "");
    assert_eq!(got[0].to, ["admin@corp.example"]);
    assert!(
        got[0].data_str().contains("no such user"),
        "{}",
        got[0].data_str()
    );
}

#[test]
fn issue_15_status_and_mailq_find_the_daemon_through_outpost_config() {
    let upstream = Smarthost::start();
    let relay = start_relay(&upstream, "", "");
    let cwd = TestDir::new();
    let run = run_as_cron(
        cwd.path(),
        Path::new(OUTPOST),
        &relay.config_path,
        &["status"],
        b"",
    );
    assert_eq!(run.code, Some(0), "{run}");
    let named = format!("config: {}\n", relay.config_path.display());
    assert!(
        run.stdout.ends_with(&named),
        "status does not name the config: {run}"
    );
    let mailq = alias(&cwd, "mailq");
    let run = run_as_cron(cwd.path(), &mailq, &relay.config_path, &[], b"");
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("Mail queue is empty"), "{run}");
}
