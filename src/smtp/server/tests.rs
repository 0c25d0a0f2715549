//! Transcript tests of `ServerSession`: sequencing, limits, pipelining, STARTTLS, the
//! 250-only-after-commit rule and chunking invariance, with no sockets.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::*;
use crate::smtp::line::MAX_COMMAND_LINE;

/// The glue's read buffer size in these tests (a fixed 4 KiB array in the daemon).
const BUFFER: usize = 4096;

const EHLO_REPLY: &str = "250-mx.example\n250-PIPELINING\n250-SIZE 1000\n250-8BITMIME\n\
                          250-ENHANCEDSTATUSCODES\n250 SMTPUTF8";

fn params() -> SessionParams {
    SessionParams {
        hostname: "mx.example".into(),
        peer: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        relay_allowed: true,
        tls: TlsMode::Unavailable,
        auth_offered: false,
        require_tls: false,
        require_auth: false,
        check_sender: false,
        limits: Limits {
            max_message_size: 1000,
            max_recipients: 3,
            max_errors: 5,
        },
    }
}

/// A simulated glue: a bounded input buffer, the reply stream, committed messages.
struct Glue {
    session: ServerSession,
    pending: Vec<u8>,
    body: Vec<u8>,
    /// Everything the session wrote, in order.
    output: Vec<u8>,
    /// Committed messages: envelope and body.
    messages: Vec<(Envelope, Vec<u8>)>,
    /// Plaintext bytes left over after STARTTLS (dropped, as the glue must).
    tls_leftover: Vec<Vec<u8>>,
    closed: bool,
    commits: u32,
    /// Senders handed over by `Next::MailCheck`, in order.
    checked_senders: Vec<String>,
}

/// The sender these tests' glue finds over its rate limit.
const LIMITED_SENDER: &str = "ups@lan.test";

impl Glue {
    fn new(params: SessionParams) -> Self {
        let session = ServerSession::new(params);
        let mut output = Vec::new();
        session.greeting().write_to(&mut output);
        Self {
            session,
            pending: Vec::new(),
            body: Vec::new(),
            output,
            messages: Vec::new(),
            tls_leftover: Vec::new(),
            closed: false,
            commits: 0,
            checked_senders: Vec::new(),
        }
    }

    /// Feeds `bytes` through a `BUFFER`-sized buffer, as the daemon's connection task does.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.closed {
            let room = BUFFER - self.pending.len();
            assert!(room > 0, "the session stalled with a full buffer");
            let take = room.min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            self.drive();
        }
    }

    fn drive(&mut self) {
        let mut replies = ReplyBuffer::new();
        loop {
            let step = self
                .session
                .handle_input(&self.pending, &mut replies, &mut self.body);
            self.pending.drain(..step.consumed);
            self.output.extend_from_slice(replies.as_bytes());
            replies.clear();
            match step.next {
                Next::NeedInput => {
                    assert!(self.pending.len() < MAX_COMMAND_LINE, "NeedInput guarantee");
                    return;
                }
                Next::FlushReplies | Next::BodyStart => {}
                Next::BodyDiscarded => self.body.clear(),
                Next::Commit(envelope) => {
                    self.commits += 1;
                    let id = format!("ID{}", self.commits);
                    self.messages
                        .push((envelope, std::mem::take(&mut self.body)));
                    self.session
                        .committed(CommitOutcome::Stored(id))
                        .write_to(&mut self.output);
                }
                Next::StartTls => {
                    self.tls_leftover.push(std::mem::take(&mut self.pending));
                    self.session.tls_established();
                }
                // The one user of these tests: camera / pw.
                Next::AuthCheck(credentials) => {
                    let ok = credentials.username == "camera" && credentials.password == "pw";
                    let next = self
                        .session
                        .auth_checked(ok.then_some(credentials.username), &mut replies);
                    self.output.extend_from_slice(replies.as_bytes());
                    replies.clear();
                    if matches!(next, Next::Close) {
                        self.closed = true;
                        return;
                    }
                }
                Next::MailCheck(sender) => {
                    let verdict = if sender == LIMITED_SENDER {
                        MailVerdict::RateExceeded {
                            messages: 60,
                            window: Duration::from_secs(3600),
                            retry_after: Duration::from_millis(54_200),
                        }
                    } else {
                        MailVerdict::Allowed
                    };
                    self.checked_senders.push(sender);
                    self.session.mail_checked(verdict, &mut replies);
                    self.output.extend_from_slice(replies.as_bytes());
                    replies.clear();
                }
                Next::Close => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    fn take_output(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.output)).unwrap()
    }
}

/// Runs `("C: line", "S: reply-line-prefixes")` pairs; `\r\n` is appended to each client
/// entry, and each expected line (separated by `\n`) must prefix the matching reply line.
fn transcript_with(params: SessionParams, script: &[(&str, &str)]) -> Glue {
    let mut glue = Glue::new(params);
    glue.take_output();
    for &(client, server) in script {
        let client = client
            .strip_prefix("C: ")
            .expect("client line starts with C: ");
        let server = server
            .strip_prefix("S:")
            .expect("server line starts with S:")
            .trim_start();
        glue.feed(format!("{client}\r\n").as_bytes());
        let output = glue.take_output();
        let actual: Vec<&str> = output.split_terminator("\r\n").collect();
        let expected: Vec<&str> = server.split_terminator('\n').collect();
        assert_eq!(
            actual.len(),
            expected.len(),
            "after {client:?}: got {output:?}"
        );
        for (line, prefix) in actual.iter().zip(&expected) {
            assert!(
                line.starts_with(prefix),
                "after {client:?}: {line:?} vs {prefix:?}"
            );
        }
    }
    glue
}

fn transcript(script: &[(&str, &str)]) -> Glue {
    transcript_with(params(), script)
}

#[test]
fn greeting_names_the_host_without_status() {
    let glue = Glue::new(params());
    assert_eq!(glue.output, b"220 mx.example ESMTP outpost\r\n");
}

#[test]
fn ehlo_advertises_extensions_and_helo_none() {
    transcript(&[
        ("C: EHLO client.example", &format!("S: {EHLO_REPLY}")),
        ("C: HELO c", "S: 250 mx.example"),
    ]);
    let offered = SessionParams {
        tls: TlsMode::Offered,
        ..params()
    };
    let glue = transcript_with(offered, &[("C: EHLO c", "S: 250-mx.example\n250-PIPELINING\n250-SIZE 1000\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250-SMTPUTF8\n250 STARTTLS")]);
    assert!(!glue.closed);
}

#[test]
fn full_transaction_is_committed_then_250() {
    let glue = transcript(&[
        ("C: EHLO client.example", &format!("S: {EHLO_REPLY}")),
        ("C: MAIL FROM:<a@b.example> BODY=8BITMIME", "S: 250 2.1.0"),
        ("C: RCPT TO:<c@d.example>", "S: 250 2.1.5"),
        ("C: DATA", "S: 354 End data"),
        ("C: Subject: hi\r\n\r\n..dot\r\nline", "S:"),
        ("C: .", "S: 250 2.0.0 queued as ID1"),
        ("C: QUIT", "S: 221 2.0.0"),
    ]);
    assert!(glue.closed);
    let (envelope, body) = &glue.messages[0];
    assert_eq!(body, b"Subject: hi\r\n\r\n.dot\r\nline\r\n");
    assert_eq!(envelope.reverse_path.as_str(), "a@b.example");
    assert_eq!(
        envelope.recipients,
        vec![Mailbox::parse("c@d.example", false).unwrap()]
    );
    assert_eq!(envelope.body_type, BodyType::EightBitMime);
    assert_eq!(envelope.size, u64::try_from(body.len()).unwrap());
}

#[test]
fn mail_before_helo_gets_503() {
    transcript(&[
        ("C: MAIL FROM:<a@b.example>", "S: 503 5.5.1"),
        ("C: DATA", "S: 503 5.5.1"),
    ]);
}

#[test]
fn rcpt_before_mail_gets_503() {
    transcript(&[
        ("C: HELO c", "S: 250"),
        ("C: RCPT TO:<c@d.example>", "S: 503 5.5.1"),
    ]);
}

#[test]
fn data_without_recipients_gets_554_and_without_mail_503() {
    transcript(&[
        ("C: HELO c", "S: 250"),
        ("C: DATA", "S: 503 5.5.1"),
        ("C: MAIL FROM:<>", "S: 250 2.1.0"),
        ("C: DATA", "S: 554 5.5.1"),
    ]);
}

#[test]
fn nested_mail_gets_503_and_rset_or_ehlo_clear_the_transaction() {
    transcript(&[
        ("C: EHLO c", &format!("S: {EHLO_REPLY}")),
        ("C: MAIL FROM:<a@b.example>", "S: 250 2.1.0"),
        ("C: MAIL FROM:<a@b.example>", "S: 503 5.5.1"),
        ("C: RSET", "S: 250 2.0.0"),
        ("C: MAIL FROM:<a@b.example>", "S: 250 2.1.0"),
        ("C: EHLO c", &format!("S: {EHLO_REPLY}")),
        ("C: RCPT TO:<c@d.example>", "S: 503 5.5.1"),
    ]);
}

#[test]
fn declared_size_over_limit_gets_552() {
    transcript(&[
        ("C: EHLO c", &format!("S: {EHLO_REPLY}")),
        ("C: MAIL FROM:<a@b.example> SIZE=1001", "S: 552 5.3.4"),
        ("C: MAIL FROM:<a@b.example> SIZE=1000", "S: 250 2.1.0"),
    ]);
}

#[test]
fn relay_denied_gets_554_5_7_1() {
    let denied = SessionParams {
        relay_allowed: false,
        ..params()
    };
    transcript_with(
        denied,
        &[
            ("C: HELO c", "S: 250"),
            ("C: MAIL FROM:<a@b.example>", "S: 250 2.1.0"),
            ("C: RCPT TO:<c@d.example>", "S: 554 5.7.1 Relaying denied"),
            ("C: RCPT TO:<postmaster>", "S: 554 5.7.1"),
            ("C: DATA", "S: 554 5.5.1"),
        ],
    );
}

#[test]
fn too_many_recipients_gets_452() {
    let glue = transcript(&[
        ("C: HELO c", "S: 250"),
        ("C: MAIL FROM:<a@b.example>", "S: 250"),
        (
            "C: RCPT TO:<r1@d.example>\r\nRCPT TO:<r2@d.example>\r\nRCPT TO:<r3@d.example>",
            "S: 250 2.1.5\n250 2.1.5\n250 2.1.5",
        ),
        ("C: RCPT TO:<r4@d.example>", "S: 452 4.5.3"),
        ("C: RCPT TO:<r5@d.example>", "S: 452 4.5.3"),
        ("C: DATA", "S: 354"),
        ("C: .", "S: 250 2.0.0 queued as ID1"),
    ]);
    assert_eq!(glue.messages[0].0.recipients.len(), 3);
    assert!(!glue.closed, "452s are not junk");
}

#[test]
fn non_ascii_recipient_needs_smtputf8() {
    transcript(&[
        ("C: EHLO c", &format!("S: {EHLO_REPLY}")),
        ("C: MAIL FROM:<a@b.example>", "S: 250"),
        ("C: RCPT TO:<δ@d.example>", "S: 553 5.6.7"),
        ("C: RSET", "S: 250"),
        ("C: MAIL FROM:<a@b.example> SMTPUTF8", "S: 250"),
        ("C: RCPT TO:<δ@d.example>", "S: 250 2.1.5"),
    ]);
}

#[test]
fn too_many_errors_get_421_and_close_for_good() {
    let mut glue = transcript(&[
        ("C: FOO", "S: 500 5.5.1"),
        ("C: BAR", "S: 500 5.5.1"),
        ("C: MAIL FROM:<a@b.example>", "S: 503 5.5.1"),
        ("C: HELO", "S: 501 5.5.4"),
        ("C: BAZ", "S: 500 5.5.1\n421 4.7.0"),
    ]);
    assert!(glue.closed);
    assert!(glue.session.closed_for_errors());
    assert_eq!(glue.session.awaiting(), Awaiting::Closed);
    // Sticky: more input is swallowed without a reply.
    let mut replies = ReplyBuffer::new();
    let step = glue
        .session
        .handle_input(b"HELO c\r\n", &mut replies, &mut Vec::new());
    assert!(matches!(step.next, Next::Close));
    assert!(replies.is_empty());
    assert_eq!(
        glue.session
            .committed(CommitOutcome::Stored("X".into()))
            .code,
        503
    );
}

#[test]
fn simple_commands_have_their_replies() {
    transcript(&[
        ("C: NOOP", "S: 250 2.0.0"),
        ("C: VRFY someone", "S: 252 2.1.5"),
        ("C: HELP", "S: 214 2.0.0"),
        ("C: RSET", "S: 250 2.0.0"),
        ("C: BDAT 10 LAST", "S: 502 5.5.1"),
        ("C: STARTTLS", "S: 502 5.5.1"),
        ("C: AUTH PLAIN AHVzZXIAcGFzcw==", "S: 502 5.5.1"),
        ("C: QUIT", "S: 221 2.0.0"),
    ]);
}

#[test]
fn auth_is_refused_in_plaintext_when_offered() {
    let offered = SessionParams {
        auth_offered: true,
        ..params()
    };
    transcript_with(
        offered,
        &[
            ("C: EHLO c", &format!("S: {EHLO_REPLY}")),
            ("C: AUTH PLAIN AHVzZXIAcGFzcw==", "S: 538 5.7.11"),
        ],
    );
}

const EHLO_TLS_AUTH: &str = "250-mx.example\n250-PIPELINING\n250-SIZE 1000\n250-8BITMIME\n\
                             250-ENHANCEDSTATUSCODES\n250-SMTPUTF8\n250 AUTH PLAIN LOGIN";

/// A session over TLS (implicit, or after STARTTLS) that offers AUTH, from outside `relay_from`.
fn tls_auth_params() -> SessionParams {
    SessionParams {
        tls: TlsMode::Active,
        auth_offered: true,
        relay_allowed: false,
        ..params()
    }
}

#[test]
fn auth_is_advertised_only_over_tls() {
    let offered = SessionParams {
        tls: TlsMode::Offered,
        auth_offered: true,
        ..params()
    };
    transcript_with(
        offered,
        &[
            ("C: EHLO c", "S: 250-mx.example\n250-PIPELINING\n250-SIZE 1000\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250-SMTPUTF8\n250 STARTTLS"),
            ("C: AUTH LOGIN", "S: 538 5.7.11"),
            ("C: STARTTLS", "S: 220 2.0.0"),
            ("C: EHLO c", &format!("S: {EHLO_TLS_AUTH}")),
        ],
    );
}

#[test]
fn auth_plain_success_lets_an_outsider_relay() {
    let glue = transcript_with(
        tls_auth_params(),
        &[
            ("C: EHLO c", &format!("S: {EHLO_TLS_AUTH}")),
            ("C: MAIL FROM:<a@b.example>", "S: 250 2.1.0"),
            ("C: RCPT TO:<c@d.example>", "S: 554 5.7.1"),
            ("C: AUTH PLAIN AGNhbWVyYQBwdw==", "S: 503 5.5.1"),
            ("C: RSET", "S: 250 2.0.0"),
            ("C: AUTH PLAIN AGNhbWVyYQBwdw==", "S: 235 2.7.0"),
            ("C: AUTH PLAIN AGNhbWVyYQBwdw==", "S: 503 5.5.1"),
            ("C: MAIL FROM:<a@b.example>", "S: 250 2.1.0"),
            ("C: RCPT TO:<c@d.example>", "S: 250 2.1.5"),
        ],
    );
    assert_eq!(glue.session.authenticated(), Some("camera"));
    let header = glue.session.received_header("ID", "date");
    assert!(header.contains("with ESMTPSA id ID"), "{header}");
}

#[test]
fn auth_plain_and_login_with_challenges() {
    transcript_with(
        tls_auth_params(),
        &[
            ("C: EHLO c", &format!("S: {EHLO_TLS_AUTH}")),
            ("C: AUTH PLAIN", "S: 334 "),
            ("C: AGNhbWVyYQBwdw==", "S: 235 2.7.0"),
        ],
    );
    let glue = transcript_with(
        tls_auth_params(),
        &[
            ("C: EHLO c", &format!("S: {EHLO_TLS_AUTH}")),
            ("C: auth login", "S: 334 VXNlcm5hbWU6"),
            ("C: Y2FtZXJh", "S: 334 UGFzc3dvcmQ6"),
            ("C: cHc=", "S: 235 2.7.0"),
            ("C: RCPT TO:<c@d.example>", "S: 503 5.5.1"),
        ],
    );
    assert!(!glue.closed);
}

#[test]
fn empty_challenge_keeps_its_space() {
    let mut glue = Glue::new(tls_auth_params());
    glue.feed(b"EHLO c\r\nAUTH PLAIN\r\n");
    assert!(glue.take_output().ends_with("\r\n334 \r\n"));
}

#[test]
fn auth_failures_get_535_then_421_and_close() {
    let glue = transcript_with(
        tls_auth_params(),
        &[
            ("C: EHLO c", &format!("S: {EHLO_TLS_AUTH}")),
            // camera / wrong
            ("C: AUTH PLAIN AGNhbWVyYQB3cm9uZw==", "S: 535 5.7.8"),
            ("C: AUTH LOGIN Y2FtZXJh", "S: 334 UGFzc3dvcmQ6"),
            ("C: d3Jvbmc=", "S: 535 5.7.8"),
            (
                "C: AUTH PLAIN AGNhbWVyYQB3cm9uZw==",
                "S: 535 5.7.8\n421 4.7.0",
            ),
        ],
    );
    assert!(glue.closed);
    assert_eq!(glue.session.authenticated(), None);
}

#[test]
fn auth_cancel_junk_and_unknown_mechanisms_are_refused() {
    let mut params = tls_auth_params();
    params.limits.max_errors = 10;
    let glue = transcript_with(
        params,
        &[
            ("C: AUTH PLAIN AGNhbWVyYQBwdw==", "S: 503 5.5.1"),
            ("C: EHLO c", &format!("S: {EHLO_TLS_AUTH}")),
            ("C: AUTH CRAM-MD5", "S: 504 5.5.4"),
            ("C: AUTH", "S: 501 5.5.4"),
            ("C: AUTH LOGIN", "S: 334 VXNlcm5hbWU6"),
            ("C: *", "S: 501 5.0.0"),
            ("C: AUTH PLAIN", "S: 334 "),
            ("C: !!not base64!!", "S: 501 5.5.2"),
            ("C: AUTH PLAIN bm8gbnVscw==", "S: 501 5.5.2"),
            ("C: NOOP", "S: 250 2.0.0"),
        ],
    );
    assert_eq!(glue.session.authenticated(), None);
}

#[test]
fn over_long_auth_response_gets_500_5_5_6() {
    let long = format!("C: {}", "QUFB".repeat(200));
    transcript_with(
        tls_auth_params(),
        &[
            ("C: EHLO c", &format!("S: {EHLO_TLS_AUTH}")),
            ("C: AUTH PLAIN", "S: 334 "),
            (long.as_str(), "S: 500 5.5.6"),
            ("C: NOOP", "S: 250 2.0.0"),
        ],
    );
}

#[test]
fn require_tls_refuses_mail_before_starttls() {
    let required = SessionParams {
        tls: TlsMode::Offered,
        require_tls: true,
        ..params()
    };
    transcript_with(
        required,
        &[
            ("C: EHLO c", "S: 250-mx.example\n250-PIPELINING\n250-SIZE 1000\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250-SMTPUTF8\n250 STARTTLS"),
            ("C: MAIL FROM:<a@b.example>", "S: 530 5.7.0"),
            ("C: STARTTLS", "S: 220 2.0.0"),
            ("C: EHLO c", &format!("S: {EHLO_REPLY}")),
            ("C: MAIL FROM:<a@b.example>", "S: 250 2.1.0"),
        ],
    );
}

#[test]
fn over_long_command_line_gets_500_5_5_2_and_session_goes_on() {
    let long = format!("C: NOOP {}", "x".repeat(600));
    transcript(&[(long.as_str(), "S: 500 5.5.2"), ("C: NOOP", "S: 250 2.0.0")]);
    let mut glue = Glue::new(params());
    glue.take_output();
    // A 10 KiB line without LF through a 4 KiB buffer: no stall, one reply at its end.
    glue.feed(&vec![b'A'; 10 * 1024]);
    assert_eq!(glue.take_output(), "");
    glue.feed(b"\r\nNOOP\r\n");
    assert_eq!(
        glue.take_output(),
        "500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n"
    );
}

#[test]
fn pipelined_group_gets_replies_in_order() {
    let mut session = ServerSession::new(params());
    let mut replies = ReplyBuffer::new();
    let mut body = Vec::new();
    let input = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n\
                  RCPT TO:<e@f.example>\r\nDATA\r\nbody\r\n.\r\n";
    let step = session.handle_input(input, &mut replies, &mut body);
    assert!(matches!(step.next, Next::FlushReplies), "EHLO ends a group");
    let mut consumed = step.consumed;
    let step = session.handle_input(&input[consumed..], &mut replies, &mut body);
    assert!(matches!(step.next, Next::BodyStart));
    consumed += step.consumed;
    let text = String::from_utf8(replies.as_bytes().to_vec()).unwrap();
    let codes: Vec<&str> = text.split_terminator("\r\n").map(|l| &l[..4]).collect();
    let ehlo = vec!["250-"; 5];
    assert_eq!(
        codes,
        [ehlo, vec!["250 ", "250 ", "250 ", "250 ", "354 "]].concat()
    );
    let step = session.handle_input(&input[consumed..], &mut replies, &mut body);
    assert!(matches!(step.next, Next::Commit(ref e) if e.recipients.len() == 2));
    assert_eq!(consumed + step.consumed, input.len());
    assert_eq!(body, b"body\r\n");
}

#[test]
fn reply_250_only_after_committed() {
    let mut session = ServerSession::new(params());
    let mut replies = ReplyBuffer::new();
    let mut body = Vec::new();
    let input = b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n";
    let mut consumed = 0;
    let envelope = loop {
        let step = session.handle_input(&input[consumed..], &mut replies, &mut body);
        consumed += step.consumed;
        if let Next::Commit(envelope) = step.next {
            break envelope;
        }
    };
    assert_eq!(envelope.reverse_path, ReversePath::Null);
    assert!(replies
        .as_bytes()
        .ends_with(b"354 End data with <CR><LF>.<CR><LF>\r\n"));
    assert_eq!(session.awaiting(), Awaiting::Commit);
    // While the store works, the pipelined QUIT waits unconsumed and nothing is replied.
    let before = replies.as_bytes().len();
    let step = session.handle_input(&input[consumed..], &mut replies, &mut body);
    assert_eq!((step.consumed, replies.as_bytes().len()), (0, before));
    assert_eq!(
        session
            .committed(CommitOutcome::Stored("0123456789ABCDEF".into()))
            .to_string(),
        "250 2.0.0 queued as 0123456789ABCDEF"
    );
    assert_eq!(session.awaiting(), Awaiting::Command);
    assert_eq!(
        session.committed(CommitOutcome::Stored("X".into())).code,
        503
    );
}

mod hostile;

#[test]
fn commit_failures_are_transient() {
    for (outcome, code, detail) in [
        (CommitOutcome::QueueFull, 452, 1),
        (CommitOutcome::Failed, 451, 0),
    ] {
        let mut session = ServerSession::new(params());
        let mut replies = ReplyBuffer::new();
        let mut body = Vec::new();
        let input = b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n.\r\n";
        let mut consumed = 0;
        while !matches!(session.awaiting(), Awaiting::Commit) {
            consumed += session
                .handle_input(&input[consumed..], &mut replies, &mut body)
                .consumed;
        }
        let reply = session.committed(outcome);
        assert_eq!(reply.code, code);
        assert_eq!(
            reply.status,
            Some(crate::smtp::reply::EnhancedStatus::new(4, 3, detail))
        );
    }
}

#[test]
fn oversized_body_is_drained_then_552() {
    let big = format!("C: {}\r\n{}", "y".repeat(900), "z".repeat(900));
    let glue = transcript(&[
        ("C: HELO c", "S: 250"),
        ("C: MAIL FROM:<a@b.example>", "S: 250"),
        ("C: RCPT TO:<c@d.example>", "S: 250"),
        ("C: DATA", "S: 354"),
        (big.as_str(), "S:"),
        ("C: .", "S: 552 5.3.4"),
        ("C: MAIL FROM:<a@b.example>", "S: 250 2.1.0"),
    ]);
    assert!(glue.messages.is_empty());
    assert!(glue.body.is_empty(), "the glue discarded the spool");
}

#[test]
fn long_body_line_is_stored_as_received() {
    let params = SessionParams {
        limits: Limits {
            max_message_size: 100_000,
            ..params().limits
        },
        ..params()
    };
    let long = format!("C: {}", "w".repeat(5000));
    let glue = transcript_with(
        params,
        &[
            ("C: HELO c", "S: 250"),
            ("C: MAIL FROM:<a@b.example>", "S: 250"),
            ("C: RCPT TO:<c@d.example>", "S: 250"),
            ("C: DATA", "S: 354"),
            (long.as_str(), "S:"),
            ("C: .", "S: 250 2.0.0 queued as ID1"),
        ],
    );
    assert_eq!(glue.messages.len(), 1);
    assert_eq!(
        glue.messages[0].1,
        format!("{}\r\n", "w".repeat(5000)).as_bytes()
    );
}

#[test]
fn bare_lf_dot_does_not_end_data() {
    let glue = transcript(&[
        ("C: HELO c", "S: 250"),
        ("C: MAIL FROM:<a@b.example>", "S: 250"),
        ("C: RCPT TO:<c@d.example>", "S: 250"),
        ("C: DATA", "S: 354"),
        (
            "C: one\n.\nMAIL FROM:<evil@x.example>\n.\r\nRCPT TO:<v@x.example>\r\n.\nDATA",
            "S:",
        ),
        ("C: .", "S: 250 2.0.0 queued as ID1"),
    ]);
    assert_eq!(glue.messages.len(), 1);
    assert_eq!(
        glue.messages[0].1,
        b"one\r\n.\r\nMAIL FROM:<evil@x.example>\r\n.\r\nRCPT TO:<v@x.example>\r\n.\r\nDATA\r\n"
    );
}

#[test]
fn starttls_leaves_pipelined_plaintext_unconsumed_and_resets_the_session() {
    let offered = SessionParams {
        tls: TlsMode::Offered,
        ..params()
    };
    let mut session = ServerSession::new(offered.clone());
    let mut replies = ReplyBuffer::new();
    let mut body = Vec::new();
    let step = session.handle_input(b"EHLO c\r\n", &mut replies, &mut body);
    assert_eq!(step.consumed, 8);
    replies.clear();
    // CVE-2011-0411: a MAIL injected after STARTTLS in the same packet.
    let input = b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\n";
    let step = session.handle_input(input, &mut replies, &mut body);
    assert!(matches!(step.next, Next::StartTls));
    assert_eq!(step.consumed, b"STARTTLS\r\n".len());
    assert_eq!(replies.as_bytes(), b"220 2.0.0 Ready to start TLS\r\n");
    // Even if a buggy glue fed the leftover, it is dropped without a reply.
    replies.clear();
    let step = session.handle_input(&input[10..], &mut replies, &mut body);
    assert!(matches!(step.next, Next::StartTls));
    assert!(replies.is_empty());
    session.tls_established();
    let step = session.handle_input(b"MAIL FROM:<a@b.example>\r\n", &mut replies, &mut body);
    assert!(matches!(step.next, Next::NeedInput));
    assert!(
        replies.as_bytes().starts_with(b"503 5.5.1"),
        "HELO state was reset"
    );
    // The same through the simulated glue, which drops the leftover.
    let mut glue = transcript_with(
        offered,
        &[
            ("C: EHLO c", "S: 250-mx.example\n250-PIPELINING\n250-SIZE 1000\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250-SMTPUTF8\n250 STARTTLS"),
            ("C: STARTTLS\r\nMAIL FROM:<evil@x.example>", "S: 220 2.0.0"),
            ("C: EHLO c", &format!("S: {EHLO_REPLY}")),
            ("C: STARTTLS", "S: 503 5.5.1"),
            ("C: MAIL FROM:<a@b.example>", "S: 250 2.1.0"),
        ],
    );
    assert_eq!(
        glue.tls_leftover,
        vec![b"MAIL FROM:<evil@x.example>\r\n".to_vec()]
    );
    assert_eq!(glue.take_output(), "");
}

#[test]
fn starttls_needs_ehlo_and_no_transaction() {
    let offered = SessionParams {
        tls: TlsMode::Offered,
        ..params()
    };
    transcript_with(
        offered,
        &[
            ("C: STARTTLS", "S: 503 5.5.1"),
            ("C: HELO c", "S: 250"),
            ("C: MAIL FROM:<a@b.example>", "S: 250"),
            ("C: STARTTLS", "S: 503 5.5.1"),
        ],
    );
}

#[test]
fn timed_out_gets_421_4_4_2_and_closes() {
    let mut session = ServerSession::new(params());
    let reply = session.timed_out();
    assert_eq!(
        reply.to_string(),
        format!(
            "421 4.4.2 {} Timeout, closing connection",
            params().hostname
        )
    );
    assert_eq!(session.awaiting(), Awaiting::Closed);
    let mut replies = ReplyBuffer::new();
    let step = session.handle_input(b"EHLO c\r\n", &mut replies, &mut Vec::new());
    assert!(matches!(step.next, Next::Close) && replies.is_empty());
}

#[test]
fn received_header_traces_helo_peer_protocol_and_single_recipient() {
    let mut glue = transcript(&[
        ("C: EHLO client.example", &format!("S: {EHLO_REPLY}")),
        ("C: MAIL FROM:<a@b.example>", "S: 250"),
        ("C: RCPT TO:<c@d.example>", "S: 250"),
    ]);
    let date = "Mon, 23 Nov 2026 20:38:44 +0000";
    assert_eq!(
        glue.session.received_header("ID", date),
        "Received: from client.example ([192.0.2.7])\r\n\tby mx.example (outpost) with ESMTP id ID\
         \r\n\tfor <c@d.example>; Mon, 23 Nov 2026 20:38:44 +0000\r\n"
    );
    glue.feed(b"RCPT TO:<e@d.example>\r\n");
    let header = glue.session.received_header("ID", date);
    assert!(header.ends_with("with ESMTP id ID; Mon, 23 Nov 2026 20:38:44 +0000\r\n"));

    let v6 = SessionParams {
        peer: IpAddr::V6(Ipv6Addr::LOCALHOST),
        ..params()
    };
    let glue = transcript_with(v6, &[("C: HELO a(b);c\\d\"é", "S: 250")]);
    let header = glue.session.received_header("ID", date);
    assert!(
        header.starts_with("Received: from a?b??c?d?? ([IPv6:::1])\r\n"),
        "{header}"
    );
    assert!(header.contains(" with SMTP id ID; "));
    assert_eq!(header.matches("\r\n").count(), 2);

    let tls = SessionParams {
        tls: TlsMode::Active,
        ..params()
    };
    let glue = transcript_with(tls, &[("C: EHLO c", &format!("S: {EHLO_REPLY}"))]);
    assert!(glue
        .session
        .received_header("ID", date)
        .contains(" with ESMTPS id "));
}

/// The client side of a session exercising most paths, as raw bytes.
fn long_transcript() -> Vec<u8> {
    let mut input = Vec::new();
    input
        .extend_from_slice(b"EHLO client.example\r\nNOOP\nMAIL FROM:sender@b.example SIZE=500\r\n");
    input.extend_from_slice(b"RCPT TO:<c@d.example>\r\nRCPT TO:<e@f.example>\r\nDATA\r\n");
    input.extend_from_slice(b"Subject: x\r\n\r\n..a\n.\nb\r\n.\r\n");
    input.extend_from_slice(b"BOGUS\r\n");
    input.extend(std::iter::repeat(b'L').take(700));
    input.extend_from_slice(b"\r\nMAIL FROM:<>\r\nRCPT TO:<g@h.example>\r\nDATA\r\n");
    input.extend(std::iter::repeat(b'M').take(1200));
    input.extend_from_slice(
        b"\r\n.\r\nRSET\r\nMAIL FROM:<>\r\nRCPT TO:<g@h.example>\r\nDATA\r\n.\r\n",
    );
    input.extend_from_slice(b"QUIT\r\nNOOP\r\n");
    input
}

fn run_split(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<(Envelope, Vec<u8>)>) {
    let mut glue = Glue::new(params());
    let mut start = 0;
    for &cut in cuts.iter().chain([input.len()].iter()) {
        glue.feed(&input[start..cut]);
        start = cut;
    }
    assert!(glue.closed);
    (glue.output, glue.messages)
}

#[test]
fn every_split_gives_the_same_replies_and_bodies() {
    let input = long_transcript();
    let whole = run_split(&input, &[]);
    let text = String::from_utf8(whole.0.clone()).unwrap();
    let codes: Vec<&str> = text.split_terminator("\r\n").map(|l| &l[..3]).collect();
    assert_eq!(
        codes,
        [
            "220", "250", "250", "250", "250", "250", "250", "250", "250", "250", "250", "354",
            "250", "500", "500", "250", "250", "354", "552", "250", "250", "250", "354", "250",
            "221"
        ]
    );
    assert_eq!(whole.1.len(), 2);
    assert_eq!(whole.1[0].1, b"Subject: x\r\n\r\n.a\r\n.\r\nb\r\n");
    for cut in 0..=input.len() {
        assert_eq!(run_split(&input, &[cut]), whole, "split at {cut}");
    }
    let every_byte: Vec<usize> = (1..input.len()).collect();
    assert_eq!(run_split(&input, &every_byte), whole, "byte by byte");
}

#[test]
fn junk_flood_asks_for_a_flush_before_the_reply_buffer_grows() {
    let limits = Limits {
        max_errors: u32::MAX,
        ..params().limits
    };
    let mut session = ServerSession::new(SessionParams { limits, ..params() });
    let mut replies = ReplyBuffer::new();
    let input = b"RSET\n".repeat(800);
    let step = session.handle_input(&input, &mut replies, &mut Vec::new());
    assert!(matches!(step.next, Next::FlushReplies));
    assert!(step.consumed < input.len());
    assert!(replies.as_bytes().len() < MAX_QUEUED_REPLIES + 100);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Tokens that reach the interesting states quickly (the smtp-proto alphabet trick).
    fn token() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"EHLO c\r\n".to_vec()),
            Just(b"HELO c\n".to_vec()),
            Just(b"MAIL FROM:<a@b.example>\r\n".to_vec()),
            Just(b"MAIL FROM:<> SIZE=5000\r\n".to_vec()),
            Just(b"RCPT TO:<c@d.example>\r\n".to_vec()),
            Just(b"DATA\r\n".to_vec()),
            Just(b"RSET\r\n".to_vec()),
            Just(b"STARTTLS\r\n".to_vec()),
            Just(b"AUTH PLAIN AGNhbWVyYQBwdw==\r\n".to_vec()),
            Just(b"AUTH PLAIN\r\n".to_vec()),
            Just(b"AUTH LOGIN\r\n".to_vec()),
            Just(b"Y2FtZXJh\r\n".to_vec()),
            Just(b"cHc=\r\n".to_vec()),
            Just(b"*\r\n".to_vec()),
            Just(b"\r\n.\r\n".to_vec()),
            Just(b"\n.\n".to_vec()),
            Just(b".".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(vec![b'x'; 700]),
            proptest::collection::vec(any::<u8>(), 0..20),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_input_never_panics_and_splits_do_not_matter(
            tokens in proptest::collection::vec(token(), 0..40),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let input = tokens.concat();
            // With STARTTLS offered, what is plaintext leftover depends on what was read before
            // the handshake, so splits matter there by design: only check it does not panic.
            let offered = SessionParams { tls: TlsMode::Offered, ..params() };
            Glue::new(offered).feed(&input);
            // Over TLS with AUTH offered (and relaying only after AUTH), and in plaintext.
            for session in [tls_auth_params(), params()] {
            let run = |cuts: &[usize]| {
                let mut glue = Glue::new(session.clone());
                let mut start = 0;
                for &cut in cuts.iter().chain([input.len()].iter()) {
                    glue.feed(&input[start..cut]);
                    start = cut;
                }
                (glue.output, glue.messages)
            };
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.sort_unstable();
            let whole = run(&[]);
            let text = String::from_utf8(whole.0.clone()).unwrap();
            for line in text.split_terminator("\r\n") {
                prop_assert!(line.len() >= 3 && line.len() <= 510);
                prop_assert!(line.as_bytes()[..3].iter().all(u8::is_ascii_digit));
            }
            let split = run(&points);
            prop_assert_eq!(split.0, whole.0);
            prop_assert_eq!(split.1, whole.1);
            }
        }
    }
}

fn rate_limited_params() -> SessionParams {
    SessionParams {
        check_sender: true,
        ..params()
    }
}

#[test]
fn a_sender_over_its_rate_limit_gets_451_at_mail_and_no_transaction() {
    let glue = transcript_with(
        rate_limited_params(),
        &[
            ("C: EHLO c", &format!("S: {EHLO_REPLY}")),
            (
                "C: MAIL FROM:<ups@lan.test>",
                "S: 451 4.7.1 <ups@lan.test>: sender rate limit exceeded (60 messages per 1h), \
                 try again in 55s",
            ),
            ("C: RCPT TO:<ops@example.com>", "S: 503 5.5.1"),
            ("C: MAIL FROM:<camera@lan.test>", "S: 250 2.1.0"),
            ("C: RCPT TO:<ops@example.com>", "S: 250 2.1.5"),
            ("C: DATA", "S: 354"),
            (
                "C: Subject: hi\r\n\r\nbody\r\n.",
                "S: 250 2.0.0 queued as ID1",
            ),
            ("C: MAIL FROM:<>", "S: 250 2.1.0"),
        ],
    );
    assert_eq!(
        glue.checked_senders,
        ["ups@lan.test", "camera@lan.test", ""]
    );
    assert_eq!(glue.messages.len(), 1);
}

#[test]
fn a_pipelined_group_from_a_limited_sender_is_refused_whole() {
    let mut glue = Glue::new(rate_limited_params());
    glue.feed(b"EHLO c\r\n");
    glue.take_output();
    glue.feed(
        b"MAIL FROM:<ups@lan.test>\r\nRCPT TO:<ops@example.com>\r\nDATA\r\n\
          Subject: x\r\n\r\nbody\r\n.\r\n",
    );
    let output = glue.take_output();
    let codes: Vec<&str> = output
        .split_terminator("\r\n")
        .map(|line| &line[..3])
        .collect();
    // MAIL refused, RCPT and DATA out of sequence, the would-be body lines junk commands; the
    // fifth error (max_errors) ends the session.
    assert_eq!(
        codes,
        ["451", "503", "503", "500", "500", "500", "421"],
        "{output}"
    );
    assert!(glue.messages.is_empty());
}

#[test]
fn without_a_rate_limit_mail_is_not_handed_to_the_glue() {
    let glue = transcript(&[
        ("C: EHLO c", &format!("S: {EHLO_REPLY}")),
        ("C: MAIL FROM:<ups@lan.test>", "S: 250 2.1.0"),
    ]);
    assert!(glue.checked_senders.is_empty());
}

#[test]
fn junk_commands_past_the_limit_count_as_errors_until_421() {
    // Postfix `smtpd_junk_command_limit`: NOOP, RSET, VRFY and HELP are answered as usual, but
    // past the limit each one also counts towards `max_errors` (5 here).
    let mut glue = Glue::new(params());
    glue.feed(b"EHLO c\r\n");
    glue.take_output();
    let junk = ["NOOP", "RSET", "VRFY x", "HELP"];
    for n in 0..JUNK_COMMAND_LIMIT {
        glue.feed(format!("{}\r\n", junk[n as usize % junk.len()]).as_bytes());
        assert!(!glue.closed, "closed after {} junk commands", n + 1);
    }
    let output = glue.take_output();
    assert!(!output.contains("421"), "{output}");
    for extra in 1..=4 {
        glue.feed(b"NOOP\r\n");
        assert_eq!(glue.take_output(), "250 2.0.0 Ok\r\n", "extra junk {extra}");
    }
    glue.feed(b"NOOP\r\n");
    let output = glue.take_output();
    assert!(
        output.starts_with("250 2.0.0 Ok\r\n421 4.7.0"),
        "the fifth extra junk command: {output:?}"
    );
    assert!(glue.closed);
    assert!(glue.session.closed_for_errors());
}

#[test]
fn an_accepted_message_resets_the_junk_count() {
    let mut glue = Glue::new(params());
    glue.feed(b"EHLO c\r\n");
    // A client that checks its connection with NOOP and sends RSET before each message is
    // never cut off, however many messages it sends.
    for round in 0..3 {
        for _ in 0..JUNK_COMMAND_LIMIT - 1 {
            glue.feed(b"NOOP\r\n");
        }
        glue.feed(b"RSET\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n");
        glue.feed(b"Subject: x\r\n\r\nx\r\n.\r\n");
        assert!(!glue.closed, "closed in round {round}");
    }
    assert_eq!(glue.messages.len(), 3);
    assert!(!glue.take_output().contains("421"));
    // A refused message does not reset it.
    for _ in 0..JUNK_COMMAND_LIMIT {
        glue.feed(b"NOOP\r\n");
    }
    glue.feed(b"MAIL FROM:<a@b.example> SIZE=999999\r\n");
    for _ in 0..5 {
        glue.feed(b"NOOP\r\n");
    }
    assert!(glue.take_output().contains("421 4.7.0"));
    assert!(glue.closed);
}

#[test]
fn quit_after_errors_is_not_a_close_for_errors() {
    let glue = transcript(&[("C: FOO", "S: 500 5.5.1"), ("C: QUIT", "S: 221 2.0.0")]);
    assert!(glue.closed);
    assert!(!glue.session.closed_for_errors());
}
