//! Scripted-reply tests of `ClientSession`'s secure set-up: STARTTLS without downgrade, AUTH
//! with a password, and OAuth bearer tokens; no sockets.

use super::*;

#[test]
fn starttls_policy_never_falls_back_to_plaintext() {
    let mut session = ClientSession::new(params(TlsPolicy::StartTls));
    session.handle_reply(&r("220 mx"));
    let step = session.handle_reply(&r(EHLO_PIPELINING));
    let ClientStep::Failed(failure) = step else {
        panic!("expected failure, got {step:?}");
    };
    assert_eq!(
        failure.to_string(),
        "smarthost mx.example:25 does not offer STARTTLS"
    );
    assert!(matches!(
        session.start_message(&envelope(&["a@x"])),
        ClientStep::Failed(_)
    ));

    // EHLO refused: HELO cannot do STARTTLS either.
    let mut session = ClientSession::new(params(TlsPolicy::StartTls));
    session.handle_reply(&r("220 mx"));
    let step = session.handle_reply(&r("500 unknown"));
    assert!(
        matches!(step, ClientStep::Failed(SessionFailure::NoStartTls { .. })),
        "{step:?}"
    );
}

#[test]
fn starttls_policy_upgrades_and_ehlos_again() {
    let mut session = ClientSession::new(params(TlsPolicy::StartTls));
    session.handle_reply(&r("220 mx"));
    let step = session.handle_reply(&r("250-mx\n250-PIPELINING\n250 STARTTLS"));
    assert_eq!(step, send("STARTTLS\r\n"));
    assert_eq!(
        session.handle_reply(&r("220 go ahead")),
        ClientStep::StartTls
    );
    assert!(!session.pipelining(), "pre-TLS extensions are forgotten");
    assert_eq!(session.tls_established(), send("EHLO outpost.lan\r\n"));
    assert_eq!(
        session.handle_reply(&r("250-mx\n250 PIPELINING")),
        ClientStep::Ready
    );
}

fn with_token(tls: TlsPolicy) -> ClientSession {
    ClientSession::new(ClientParams {
        credentials: Some(ClientCredentials {
            username: "relay@example.com".into(),
            password: "tok".into(),
            kind: CredentialKind::Bearer,
        }),
        ..params(tls)
    })
}

/// The decoded initial response of an `AUTH <mechanism> <base64>` step.
fn initial_response(step: ClientStep, mechanism: &str) -> String {
    let ClientStep::Send(bytes) = step else {
        panic!("{step:?}");
    };
    let line = String::from_utf8(bytes).unwrap();
    let encoded = line
        .strip_prefix(&format!("AUTH {mechanism} "))
        .and_then(|rest| rest.strip_suffix("\r\n"))
        .unwrap_or_else(|| panic!("{line:?}"));
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    String::from_utf8(decoded).unwrap()
}

#[test]
fn token_prefers_oauthbearer_with_host_and_port() {
    let mut session = with_token(TlsPolicy::Implicit);
    session.handle_reply(&r("220 mx"));
    let step = session.handle_reply(&r("250-mx\n250 AUTH PLAIN XOAUTH2 OAUTHBEARER"));
    assert_eq!(
        initial_response(step, "OAUTHBEARER"),
        "n,a=relay@example.com,\x01host=mx.example\x01port=25\x01auth=Bearer tok\x01\x01"
    );
    assert_eq!(session.handle_reply(&r("235 2.7.0 ok")), ClientStep::Ready);
}

#[test]
fn token_uses_xoauth2_when_oauthbearer_is_not_offered() {
    let mut session = with_token(TlsPolicy::Implicit);
    session.handle_reply(&r("220 mx"));
    let step = session.handle_reply(&r("250-mx\n250 AUTH LOGIN PLAIN XOAUTH2"));
    assert_eq!(
        initial_response(step, "XOAUTH2"),
        "user=relay@example.com\x01auth=Bearer tok\x01\x01"
    );
    assert_eq!(session.handle_reply(&r("235 2.7.0 ok")), ClientStep::Ready);
}

#[test]
fn refused_token_ends_the_exchange_then_fails() {
    // XOAUTH2: the error challenge is answered with an empty line.
    let mut session = with_token(TlsPolicy::Implicit);
    session.handle_reply(&r("220 mx"));
    session.handle_reply(&r("250-mx\n250 AUTH XOAUTH2"));
    let challenge = r("334 eyJzdGF0dXMiOiI0MDEifQ==");
    assert_eq!(session.handle_reply(&challenge), send("\r\n"));
    let step = session.handle_reply(&r("535 5.7.8 token expired"));
    assert_eq!(
        step,
        ClientStep::Failed(SessionFailure::AuthFailed {
            reply: r("535 5.7.8 token expired")
        })
    );
    // OAUTHBEARER: with a single ^A (RFC 7628 §3.2.3).
    let mut session = with_token(TlsPolicy::Implicit);
    session.handle_reply(&r("220 mx"));
    session.handle_reply(&r("250-mx\n250 AUTH OAUTHBEARER"));
    assert_eq!(session.handle_reply(&challenge), send("AQ==\r\n"));
    assert!(matches!(
        session.handle_reply(&r("535 5.7.8 no")),
        ClientStep::Failed(SessionFailure::AuthFailed { .. })
    ));
}

#[test]
fn token_needs_a_token_mechanism_and_tls() {
    let mut session = with_token(TlsPolicy::Implicit);
    session.handle_reply(&r("220 mx"));
    let step = session.handle_reply(&r("250-mx\n250 AUTH PLAIN LOGIN"));
    let ClientStep::Failed(failure) = step else {
        panic!("{step:?}");
    };
    assert_eq!(
        failure.to_string(),
        "smarthost mx.example:25 does not offer AUTH OAUTHBEARER or XOAUTH2, but \
         [smarthost] oauth2_token_url is set"
    );
    let mut session = with_token(TlsPolicy::None);
    session.handle_reply(&r("220 mx"));
    let step = session.handle_reply(&r("250-mx\n250 AUTH XOAUTH2"));
    assert!(
        matches!(
            step,
            ClientStep::Failed(SessionFailure::AuthNeedsTls { .. })
        ),
        "{step:?}"
    );
}

#[test]
fn auth_plain_after_starttls() {
    let mut session = with_credentials(TlsPolicy::StartTls);
    session.handle_reply(&r("220 mx"));
    session.handle_reply(&r("250-mx\n250-AUTH PLAIN LOGIN\n250 STARTTLS"));
    assert_eq!(session.handle_reply(&r("220 go")), ClientStep::StartTls);
    session.tls_established();
    // base64 of "\0relay\0pw"
    assert_eq!(
        session.handle_reply(&r("250-mx\n250 AUTH LOGIN PLAIN")),
        send("AUTH PLAIN AHJlbGF5AHB3\r\n")
    );
    assert_eq!(session.handle_reply(&r("235 2.7.0 ok")), ClientStep::Ready);
}

#[test]
fn auth_login_when_plain_is_not_offered() {
    let mut session = with_credentials(TlsPolicy::Implicit);
    session.handle_reply(&r("220 mx"));
    let step = session.handle_reply(&r("250-mx\n250 AUTH=LOGIN"));
    assert_eq!(step, send("AUTH LOGIN\r\n"));
    assert_eq!(
        session.handle_reply(&r("334 VXNlcm5hbWU6")),
        send("cmVsYXk=\r\n")
    );
    assert_eq!(
        session.handle_reply(&r("334 UGFzc3dvcmQ6")),
        send("cHc=\r\n")
    );
    assert_eq!(session.handle_reply(&r("235 ok")), ClientStep::Ready);
}

#[test]
fn auth_refusal_and_missing_mechanisms_fail_the_session() {
    let mut session = with_credentials(TlsPolicy::Implicit);
    session.handle_reply(&r("220 mx"));
    session.handle_reply(&r("250-mx\n250 AUTH PLAIN"));
    let step = session.handle_reply(&r("535 5.7.8 bad credentials"));
    let ClientStep::Failed(failure) = step else {
        panic!("{step:?}");
    };
    assert_eq!(
        failure.to_string(),
        "authentication failed: 535 5.7.8 bad credentials"
    );
    let mut session = with_credentials(TlsPolicy::Implicit);
    session.handle_reply(&r("220 mx"));
    let step = session.handle_reply(&r("250-mx\n250 AUTH CRAM-MD5"));
    assert!(
        matches!(step, ClientStep::Failed(SessionFailure::NoAuth { .. })),
        "{step:?}"
    );
}

#[test]
fn credentials_are_never_sent_without_tls() {
    let mut session = with_credentials(TlsPolicy::None);
    session.handle_reply(&r("220 mx"));
    let step = session.handle_reply(&r("250-mx\n250 AUTH PLAIN LOGIN"));
    assert!(
        matches!(
            step,
            ClientStep::Failed(SessionFailure::AuthNeedsTls { .. })
        ),
        "{step:?}"
    );
    let shown = format!("{:?}", session);
    assert!(!shown.contains("\"pw\""), "{shown}");
}
