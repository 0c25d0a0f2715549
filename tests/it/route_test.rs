//! `outpost test`: the route checked against real smarthosts from the kit, step by step, with
//! nothing sent: a good STARTTLS smarthost with AUTH, a refused connection, a smarthost without
//! STARTTLS, an untrusted certificate, a wrong password and a refused recipient, each naming
//! its failing step and exit code.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::*;

/// Writes `config` (no daemon runs) and runs `outpost test ARGS… --config FILE`.
fn route_test(dir: &TestDir, config: &RelayConfig, args: &[&str]) -> CmdRun {
    let file = dir.join("outpost.toml");
    std::fs::write(&file, config.render(&dir.join("data"))).unwrap();
    let file = file.to_string_lossy().into_owned();
    let mut all = vec!["test"];
    all.extend_from_slice(args);
    all.extend(["--config", &file]);
    run_command(Path::new(OUTPOST), &all, b"")
}

/// `[smarthost]` with STARTTLS trusting `pki`, `username = "relay"` and `password`.
fn tls_login(dir: &TestDir, port: u16, pki: &TestPki, password: &str) -> RelayConfig {
    let secret = dir.join("password");
    std::fs::write(&secret, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    RelayConfig::with_smarthost(port)
        .smarthost_tls("starttls", pki.ca.clone())
        .smarthost_keys(&format!(
            "username = \"relay\"\npassword_file = {}",
            toml_string(&secret.to_string_lossy())
        ))
}

/// The line of `step` in the output (the step name is padded to 12 columns).
fn step_line<'a>(run: &'a CmdRun, step: &str) -> &'a str {
    let wanted = format!(" {step:<12} ");
    run.stdout
        .lines()
        .find(|line| line.contains(&wanted))
        .unwrap_or_else(|| panic!("no {step} line: {run}"))
}

#[test]
fn test_walks_every_step_of_a_good_route_and_sends_nothing() {
    let dir = TestDir::new();
    let pki = TestPki::with_validity(&["127.0.0.1"], Some((2020, 2090)));
    let smarthost = Smarthost::builder()
        .starttls(&pki)
        .login("relay", "upstream-pw")
        .start();
    let config = tls_login(&dir, smarthost.port(), &pki, "upstream-pw");
    let run = route_test(&dir, &config, &["ops@example.com"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("daemon: not running"), "{run}");
    assert!(
        step_line(&run, "resolve").contains("ok 127.0.0.1:"),
        "{run}"
    );
    assert!(
        step_line(&run, "connect").contains("ok 127.0.0.1:"),
        "{run}"
    );
    assert!(step_line(&run, "greeting").contains("ok 220"), "{run}");
    let ehlo = run.stdout.lines().filter(|l| l.contains(" EHLO ")).count();
    assert_eq!(ehlo, 2, "EHLO before and after STARTTLS: {run}");
    assert!(step_line(&run, "EHLO").contains("STARTTLS"), "{run}");
    assert!(step_line(&run, "STARTTLS").contains("ok 220"), "{run}");
    let tls = step_line(&run, "TLS");
    assert!(tls.contains("issuer CN=outpost test CA"), "{run}");
    assert!(tls.contains("expires 2090-01-01 00:00:00 UTC"), "{run}");
    assert!(tls.contains("verified"), "{run}");
    assert!(step_line(&run, "AUTH").contains("ok 235"), "{run}");
    assert!(step_line(&run, "MAIL FROM").contains("ok 250"), "{run}");
    assert!(step_line(&run, "RCPT TO").contains("ok 250"), "{run}");
    assert!(step_line(&run, "RSET").contains("ok 250"), "{run}");
    assert!(step_line(&run, "QUIT").contains("ok 221"), "{run}");
    assert!(run.stdout.contains("RCPT TO:<ops@example.com>"), "{run}");
    assert!(run.stdout.contains("route: works"), "{run}");
    assert_eq!(smarthost.logins(), ["relay"], "{run}");
    assert_eq!(smarthost.count(), 0, "nothing may be sent: {run}");
}

/// Asserts exit `code`, a FAILED line for `step`, and the closing verdict.
fn assert_fails_at(run: &CmdRun, step: &str, code: i32, text: &str) {
    assert_eq!(run.code, Some(code), "{run}");
    let line = step_line(run, step);
    assert!(line.contains("FAILED") && line.contains(text), "{run}");
    assert!(
        run.stdout
            .contains(&format!("fails at {step} (exit {code})")),
        "{run}"
    );
    assert!(run.stdout.contains("route: FAILS"), "{run}");
}

#[test]
fn test_names_a_refused_connection() {
    let dir = TestDir::new();
    let port = Smarthost::reserve_port();
    let run = route_test(&dir, &RelayConfig::with_smarthost(port), &[]);
    assert_fails_at(&run, "connect", 69, "cannot connect");
}

#[test]
fn test_names_a_smarthost_without_starttls_when_it_is_required() {
    let dir = TestDir::new();
    let pki = TestPki::loopback();
    let smarthost = Smarthost::start();
    let config = RelayConfig::with_smarthost(smarthost.port()).smarthost_tls("starttls", pki.ca);
    let run = route_test(&dir, &config, &[]);
    assert_fails_at(&run, "STARTTLS", 76, "does not offer STARTTLS");
    assert!(!run.stdout.contains("MAIL FROM "), "{run}");
}

#[test]
fn test_names_a_certificate_from_an_untrusted_ca() {
    let dir = TestDir::new();
    let (served, trusted) = (TestPki::loopback(), TestPki::loopback());
    let smarthost = Smarthost::builder().starttls(&served).start();
    let config =
        RelayConfig::with_smarthost(smarthost.port()).smarthost_tls("starttls", trusted.ca);
    let run = route_test(&dir, &config, &[]);
    assert_fails_at(&run, "TLS", 76, "");
    assert!(!run.stdout.contains(" AUTH "), "{run}");
}

#[test]
fn test_names_a_wrong_password() {
    let dir = TestDir::new();
    let pki = TestPki::loopback();
    let smarthost = Smarthost::builder()
        .starttls(&pki)
        .login("relay", "upstream-pw")
        .start();
    let config = tls_login(&dir, smarthost.port(), &pki, "not-the-password");
    let run = route_test(&dir, &config, &[]);
    assert_fails_at(&run, "AUTH", 77, "authentication failed");
    assert!(!run.stdout.contains("not-the-password"), "{run}");
}

#[test]
fn test_names_a_refused_recipient_and_maps_root() {
    let dir = TestDir::new();
    let smarthost = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { .. } => Some(reply(550, "5.1.1 no such user")),
        _ => None,
    });
    let config = RelayConfig::with_smarthost(smarthost.port())
        .top("domain = \"example.net\"\nadmin = \"ops@example.com\"");
    let run = route_test(&dir, &config, &[]);
    assert_fails_at(&run, "RCPT TO", 67, "550 5.1.1 no such user");
    assert!(run.stdout.contains("RCPT TO:<ops@example.com>"), "{run}");
    assert!(step_line(&run, "MAIL FROM").contains("ok 250"), "{run}");
}

#[test]
fn test_send_queues_a_message_and_waits_for_the_smarthost_reply() {
    let smarthost = Smarthost::start();
    let relay = RelayProcess::start_to(smarthost.port());
    let run = relay.command(
        &["test", "--send", "ops@example.com", "--timeout", "20s"],
        b"",
    );
    assert_eq!(run.code, Some(0), "{run}\n{}", relay.dump());
    let id = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("queued as "))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no queue id: {run}"));
    assert_eq!(id.len(), 16, "{run}");
    let sent = format!(": sent to 127.0.0.1:{}: 250", smarthost.port());
    assert!(run.stdout.contains(&sent), "{run}");
    let got = smarthost.delivered();
    assert_eq!(got.len(), 1, "{run}");
    assert_eq!(got[0].to, ["ops@example.com"]);
    assert!(got[0].data_str().contains("Subject: outpost test message"));
    assert!(relay.log().contains(&format!("queue_id={id}")), "{run}");
}

#[test]
fn test_send_reports_a_refusal_for_good() {
    let smarthost = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { .. } => Some(reply(550, "5.1.1 no such user")),
        _ => None,
    });
    let relay = RelayProcess::start_to(smarthost.port());
    let run = relay.command(&["test", "--send", "nobody@example.com"], b"");
    assert_eq!(run.code, Some(69), "{run}\n{}", relay.dump());
    assert!(
        run.stdout.contains("bounced 550 5.1.1 no such user"),
        "{run}"
    );
}

#[test]
fn test_send_without_a_daemon_says_so() {
    let dir = TestDir::new();
    let config = RelayConfig::with_smarthost(Smarthost::reserve_port());
    let run = route_test(&dir, &config, &["--send", "ops@example.com"]);
    assert_eq!(run.code, Some(69), "{run}");
    assert!(run.stdout.contains("the daemon is not running"), "{run}");
}

#[test]
fn test_walks_implicit_tls_before_the_greeting() {
    let dir = TestDir::new();
    let pki = TestPki::loopback();
    let smarthost = Smarthost::builder().implicit_tls(&pki).start();
    let config = RelayConfig::with_smarthost(smarthost.port()).smarthost_tls("tls", pki.ca.clone());
    let run = route_test(&dir, &config, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    let tls = run.stdout.find(" TLS ").unwrap_or_else(|| panic!("{run}"));
    let greeting = run
        .stdout
        .find(" greeting ")
        .unwrap_or_else(|| panic!("{run}"));
    assert!(tls < greeting, "TLS before the greeting: {run}");
    assert!(step_line(&run, "TLS").contains("verified"), "{run}");
    assert!(run.stdout.contains("(tls = implicit)"), "{run}");
}

#[test]
fn test_refreshes_the_oauth2_token_then_authenticates_with_it() {
    use std::sync::{Arc, Mutex};
    const REFRESH: &str = "refresh-1";
    let dir = TestDir::new();
    let pki = TestPki::loopback();
    let state = Arc::new(Mutex::new(OAuthState {
        refresh_token: REFRESH.to_owned(),
        client_id: "client-1".to_owned(),
        ..OAuthState::default()
    }));
    let endpoint = TokenEndpoint::start(&pki.cert, &pki.key, &state);
    let smarthost = Smarthost::builder().oauth(&pki, &state, true).start();
    let refresh = dir.join("refresh-token");
    std::fs::write(&refresh, format!("{REFRESH}\n")).unwrap();
    let config = RelayConfig::with_smarthost(smarthost.port())
        .smarthost_tls("starttls", pki.ca.clone())
        .smarthost_keys(&format!(
            "username = \"site@example.com\"\noauth2_token_url = {}\n\
             oauth2_client_id = \"client-1\"\noauth2_refresh_token_file = {}",
            toml_string(&endpoint.url()),
            toml_string(&refresh.to_string_lossy())
        ));
    let run = route_test(&dir, &config, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        step_line(&run, "OAuth2 token").contains("ok from https://"),
        "{run}"
    );
    assert!(step_line(&run, "AUTH").contains("ok 235"), "{run}");
    assert_eq!(state.lock().unwrap().issued, 1, "{run}");
    // A refused refresh token is the token step's failure, exit 77.
    state.lock().unwrap().refresh_token = "another".to_owned();
    let run = route_test(&dir, &config, &[]);
    assert_fails_at(&run, "OAuth2 token", 77, "OAuth2 token endpoint");
}
