//! The command line: `--version`, `--help`, `check-config`, exit codes (sysexits: 64 usage,
//! 78 config, 73/74 store) and a clean exit 0 on SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::util::{
    outpost_command, run_command_in, slack, toml_string, CmdRun, RawClient, RelayProcess, TestDir,
    OUTPOST,
};

/// Runs `outpost args…` in `dir` with a deadline; kills it and panics when the deadline passes.
fn outpost(dir: &TestDir, args: &[&str]) -> CmdRun {
    run_command_in(Some(dir.path()), Path::new(OUTPOST), args, b"")
}

/// Writes `body` as `outpost.toml` in `dir` (with a data dir inside `dir`) and returns its path.
fn config_file(dir: &TestDir, body: &str) -> String {
    let data_dir = dir.join("data");
    let text = format!(
        "data_dir = {}\n{body}",
        toml_string(&data_dir.to_string_lossy())
    );
    let path = dir.join("outpost.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn check_config(body: &str) -> CmdRun {
    let dir = TestDir::new();
    let path = config_file(&dir, body);
    outpost(&dir, &["check-config", "--config", &path])
}

#[test]
fn version_flag_prints_the_version_and_exits_0() {
    let run = outpost(&TestDir::new(), &["--version"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains(env!("CARGO_PKG_VERSION")), "{run}");
}

/// Built from a git checkout, `--version` names the checked-out commit (build.rs); without a
/// `.git` or without git it is the crate version alone.
#[test]
fn version_names_the_git_commit_of_a_checkout() {
    let root = env!("CARGO_MANIFEST_DIR");
    let head = Command::new("git")
        .args(["-C", root, "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success() && Path::new(root).join(".git").exists())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let run = outpost(&TestDir::new(), &["--version"]);
    assert_eq!(run.code, Some(0), "{run}");
    let expected = match head {
        Some(commit) => format!("outpost {} ({commit})\n", env!("CARGO_PKG_VERSION")),
        None => format!("outpost {}\n", env!("CARGO_PKG_VERSION")),
    };
    assert_eq!(run.stdout, expected, "{run}");
}

#[test]
fn help_flag_lists_the_commands_and_exits_0() {
    let run = outpost(&TestDir::new(), &["--help"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stdout.contains("serve"),
        "--help does not mention serve: {run}"
    );
    assert!(
        run.stdout.contains("check-config"),
        "--help does not mention check-config: {run}"
    );
}

#[test]
fn unknown_flag_exits_64() {
    let run = outpost(&TestDir::new(), &["serve", "--no-such-flag"]);
    assert_eq!(run.code, Some(64), "{run}");
}

#[test]
fn unknown_subcommand_exits_64() {
    let run = outpost(&TestDir::new(), &["frobnicate"]);
    assert_eq!(run.code, Some(64), "{run}");
}

#[test]
fn check_config_on_a_valid_file_exits_0_and_prints_the_effective_config() {
    let run = check_config(
        "listen = [\"127.0.0.1:2526\"]\nmax_recipients = 7\n\n[smarthost]\n\
         address = \"127.0.0.1:2600\"\ntls = \"none\"\n",
    );
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("max_recipients"), "{run}");
    assert!(run.stdout.contains('7'), "{run}");
    assert!(run.stdout.contains("127.0.0.1:2600"), "{run}");
}

#[test]
fn check_config_on_a_bad_value_exits_78_naming_the_key() {
    let run = check_config("max_recipients = \"lots\"\n");
    assert_eq!(run.code, Some(78), "{run}");
    assert!(
        run.all().contains("max_recipients"),
        "message does not name the key: {run}"
    );
}

#[test]
fn check_config_on_a_bad_duration_exits_78_naming_the_key() {
    let run = check_config("[queue]\nretry_min = \"soonish\"\n");
    assert_eq!(run.code, Some(78), "{run}");
    assert!(
        run.all().contains("retry_min"),
        "message does not name the key: {run}"
    );
}

#[test]
fn check_config_on_a_bad_cidr_exits_78_naming_the_key() {
    let run = check_config("relay_from = [\"10.0.0.0/33\"]\n");
    assert_eq!(run.code, Some(78), "{run}");
    assert!(
        run.all().contains("relay_from"),
        "message does not name the key: {run}"
    );
}

#[test]
fn check_config_on_an_unknown_key_exits_78_naming_the_key() {
    let run = check_config("frobnicate = 1\n");
    assert_eq!(run.code, Some(78), "{run}");
    assert!(
        run.all().contains("frobnicate"),
        "message does not name the key: {run}"
    );
}

#[test]
fn check_config_on_an_unknown_key_in_a_section_exits_78_naming_the_key() {
    let run = check_config("[queue]\nretry_minimum = \"1s\"\n");
    assert_eq!(run.code, Some(78), "{run}");
    assert!(
        run.all().contains("retry_minimum"),
        "message does not name the key: {run}"
    );
}

#[test]
fn check_config_on_a_missing_file_exits_78() {
    let dir = TestDir::new();
    let missing = dir.join("missing.toml");
    let run = outpost(
        &dir,
        &["check-config", "--config", &missing.to_string_lossy()],
    );
    assert_eq!(run.code, Some(78), "{run}");
    assert!(
        run.all().contains("missing.toml"),
        "message does not name the file: {run}"
    );
}

#[test]
fn check_config_prints_every_smarthost_in_order() {
    let run = check_config(
        "[[smarthost]]\naddress = \"127.0.0.1:2601\"\ntls = \"none\"\n\
         [[smarthost]]\naddress = \"127.0.0.1:2602\"\ntls = \"none\"\n",
    );
    assert_eq!(run.code, Some(0), "{run}");
    let first = run.stdout.find("address = \"127.0.0.1:2601\"");
    let second = run.stdout.find("address = \"127.0.0.1:2602\"");
    assert!(
        first.is_some() && second.is_some() && first < second,
        "{run}"
    );
    assert_eq!(run.stdout.matches("[[smarthost]]").count(), 2, "{run}");
}

#[test]
fn check_config_names_the_bad_smarthost_entry_and_exits_78() {
    let run = check_config(
        "[[smarthost]]\naddress = \"127.0.0.1:2601\"\ntls = \"none\"\n\
         [[smarthost]]\naddress = \"lte.example\"\n",
    );
    assert_eq!(run.code, Some(78), "{run}");
    assert!(run.all().contains("smarthost[2].address"), "{run}");
}

#[test]
fn smarthost_ca_file_that_cannot_be_read_exits_78_naming_the_key() {
    let run = check_config(
        "[smarthost]\naddress = \"127.0.0.1:2600\"\ntls = \"starttls\"\n\
         ca_file = \"/nonexistent/ca.pem\"\n",
    );
    assert_eq!(run.code, Some(78), "{run}");
    assert!(
        run.all().contains("smarthost.ca_file"),
        "message does not name the key: {run}"
    );
}

#[test]
fn serve_with_a_bad_config_exits_78() {
    let dir = TestDir::new();
    let path = config_file(&dir, "max_connections = -1\n");
    let run = outpost(&dir, &["serve", "--config", &path]);
    assert_eq!(run.code, Some(78), "{run}");
    assert!(run.all().contains("max_connections"), "{run}");
}

#[test]
fn serve_with_an_unusable_data_dir_exits_73_or_74() {
    let dir = TestDir::new();
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let data_dir = file.join("data");
    let path = dir.join("outpost.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {}\nlisten = [\"127.0.0.1:0\"]\n",
            toml_string(&data_dir.to_string_lossy())
        ),
    )
    .unwrap();
    let run = outpost(&dir, &["serve", "--config", &path.to_string_lossy()]);
    assert!(matches!(run.code, Some(73 | 74)), "{run}");
}

#[test]
fn serve_flags_override_the_config_file() {
    let dir = TestDir::new();
    // The file's listen address is unusable here; --listen must replace it.
    let path = config_file(&dir, "listen = [\"192.0.2.1:25\"]\n");
    let mut child = outpost_command(OUTPOST)
        .args(["serve", "--config", &path, "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut log = String::new();
    let mut listening = false;
    while let Ok(line) = rx.recv_timeout(slack(Duration::from_secs(20))) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening on 127.0.0.1:") {
            listening = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "--listen did not take effect:\n{log}");
}

#[test]
fn sigterm_exits_0() {
    let mut relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("QUIT").code, 221);
    let status = relay.terminate(Duration::from_secs(20));
    match status {
        Some(status) if status.success() => {}
        other => relay.fail(&format!("after SIGTERM: {other:?}")),
    }
}

#[test]
fn sigterm_lets_an_in_flight_transaction_finish_then_exits_0() {
    let mut relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 250);
    assert_eq!(client.cmd("RCPT TO:<b@remote.test>").code, 250);
    assert_eq!(client.cmd("DATA").code, 354);
    client.send(b"Subject: in flight\r\n\r\nfirst half\r\n");
    let pid = relay.pid().expect("relay not running");
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status();
    // Finish the transaction once the relay has taken the signal: it must still be accepted.
    relay.wait_log("shutting down");
    client.send(b"second half\r\n.\r\n");
    let reply = client.read_reply();
    if reply.code != 250 {
        relay.fail(&format!(
            "in-flight message not accepted after SIGTERM: {reply}"
        ));
    }
    let status = relay.terminate(Duration::from_secs(20));
    match status {
        Some(status) if status.success() => {}
        other => relay.fail(&format!("after SIGTERM: {other:?}")),
    }
}

#[test]
fn hostname_flag_names_the_relay_in_the_banner() {
    let relay = crate::util::RelayProcess::start_with_args(
        crate::util::RelayConfig::default(),
        &["--hostname", "edge7.example"],
    );
    let (_client, greeting) = RawClient::connect(relay.port());
    assert_eq!(greeting.code, 220);
    assert!(
        greeting.text().contains("edge7.example"),
        "banner: {greeting}"
    );
}
