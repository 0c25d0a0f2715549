//! `require_auth` (MAIL before AUTH gets 530 5.7.0, from inside `relay_from` too) and the
//! loop verdict at the final dot (554 5.4.6, the session goes on).

use super::*;

#[test]
fn require_auth_refuses_mail_before_auth_even_inside_relay_from() {
    let required = SessionParams {
        require_auth: true,
        relay_allowed: true,
        ..tls_auth_params()
    };
    let glue = transcript_with(
        required,
        &[
            ("C: EHLO c", &format!("S: {EHLO_TLS_AUTH}")),
            ("C: MAIL FROM:<a@b.example>", "S: 530 5.7.0"),
            ("C: AUTH PLAIN AGNhbWVyYQBwdw==", "S: 235 2.7.0"),
            ("C: MAIL FROM:<a@b.example>", "S: 250 2.1.0"),
            ("C: RCPT TO:<c@d.example>", "S: 250 2.1.5"),
        ],
    );
    assert_eq!(glue.session.authenticated(), Some("camera"));
}

#[test]
fn too_many_hops_is_554_5_4_6_and_the_session_goes_on() {
    let mut session = ServerSession::new(params());
    let mut replies = ReplyBuffer::new();
    let mut body = Vec::new();
    let input = b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n.\r\nNOOP\r\n";
    let mut consumed = 0;
    while !matches!(session.awaiting(), Awaiting::Commit) {
        consumed += session
            .handle_input(&input[consumed..], &mut replies, &mut body)
            .consumed;
    }
    let reply = session.committed(CommitOutcome::TooManyHops);
    assert_eq!(
        reply.to_string(),
        "554 5.4.6 Too many hops, mail loop detected"
    );
    assert_eq!(session.awaiting(), Awaiting::Command);
    replies.clear();
    session.handle_input(&input[consumed..], &mut replies, &mut body);
    let text = String::from_utf8_lossy(replies.as_bytes()).into_owned();
    assert!(text.starts_with("250 2.0.0"), "{text}");
}
