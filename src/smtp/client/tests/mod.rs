//! Scripted-reply tests of `ClientSession`: per-recipient outcomes, pipelining, the HELO
//! fallback and the checks made before sending, with the smarthost simulated as a sequence of
//! replies and no sockets. STARTTLS, AUTH and tokens are in `auth`.

mod auth;

use super::*;
use crate::smtp::reply::parse_reply;

fn params(tls: TlsPolicy) -> ClientParams {
    ClientParams {
        helo_name: "outpost.lan".into(),
        tls,
        smarthost: "mx.example:25".into(),
        credentials: None,
    }
}

fn envelope(recipients: &[&str]) -> Envelope {
    Envelope {
        sender: "cron@lan".into(),
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
        size: 1234,
        eight_bit: false,
        smtputf8: false,
    }
}

fn r(text: &str) -> Reply {
    let wire = format!("{}\r\n", text.replace('\n', "\r\n"));
    parse_reply(wire.as_bytes()).unwrap().unwrap().0
}

fn send(text: &str) -> ClientStep {
    ClientStep::Send(text.as_bytes().to_vec())
}

const EHLO_PIPELINING: &str = "250-mx.example\n250-PIPELINING\n250-SIZE 10000\n250 8BITMIME";
const EHLO_PLAIN: &str = "250-mx.example\n250 SIZE";

/// A session that is `Ready` after greeting and EHLO.
fn ready(ehlo: &str) -> ClientSession {
    let mut session = ClientSession::new(params(TlsPolicy::None));
    assert_eq!(
        session.handle_reply(&r("220 mx ESMTP")),
        send("EHLO outpost.lan\r\n")
    );
    assert_eq!(session.handle_reply(&r(ehlo)), ClientStep::Ready);
    session
}

/// A session that authenticates as `relay` with a password.
fn with_credentials(tls: TlsPolicy) -> ClientSession {
    ClientSession::new(ClientParams {
        credentials: Some(ClientCredentials {
            username: "relay".into(),
            password: "pw".into(),
            kind: CredentialKind::Password,
        }),
        ..params(tls)
    })
}

fn done(step: ClientStep) -> DeliveryReport {
    match step {
        ClientStep::MessageDone(report) => report,
        other => panic!("expected MessageDone, got {other:?}"),
    }
}

#[test]
fn pipelined_message_goes_in_one_write() {
    let mut session = ready(EHLO_PIPELINING);
    let step = session.start_message(&envelope(&["a@x", "b@x"]));
    assert_eq!(
        step,
        send("MAIL FROM:<cron@lan> SIZE=1234\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
    );
    assert_eq!(session.handle_reply(&r("250 2.1.0 ok")), ClientStep::Wait);
    assert_eq!(session.handle_reply(&r("250 2.1.5 ok")), ClientStep::Wait);
    assert_eq!(session.handle_reply(&r("250 2.1.5 ok")), ClientStep::Wait);
    assert_eq!(session.handle_reply(&r("354 go")), ClientStep::SendBody);
    assert!(session.awaiting_data_end());
    let report = done(session.handle_reply(&r("250 2.0.0 queued")));
    assert_eq!(report.mail, Some(r("250 2.1.0 ok")));
    assert_eq!(report.recipients, vec![Some(r("250 2.1.5 ok")); 2]);
    assert_eq!(report.data_end, Some(r("250 2.0.0 queued")));
    assert_eq!(report.local, None);
    // Next message: no RSET needed after a completed transaction.
    assert_eq!(
        session.start_message(&envelope(&["c@x"])),
        send("MAIL FROM:<cron@lan> SIZE=1234\r\nRCPT TO:<c@x>\r\nDATA\r\n")
    );
}

#[test]
fn unpipelined_message_goes_command_by_command() {
    let mut session = ready(EHLO_PLAIN);
    assert!(!session.pipelining());
    let mut env = envelope(&["a@x", "b@x"]);
    env.eight_bit = true;
    // 8BITMIME not offered: no BODY parameter; SIZE offered without a limit.
    assert_eq!(
        session.start_message(&env),
        send("MAIL FROM:<cron@lan> SIZE=1234\r\n")
    );
    assert_eq!(
        session.handle_reply(&r("250 ok")),
        send("RCPT TO:<a@x>\r\n")
    );
    assert_eq!(
        session.handle_reply(&r("250 ok")),
        send("RCPT TO:<b@x>\r\n")
    );
    assert_eq!(session.handle_reply(&r("250 ok")), send("DATA\r\n"));
    assert_eq!(session.handle_reply(&r("354 go")), ClientStep::SendBody);
    let report = done(session.handle_reply(&r("250 queued")));
    assert_eq!(report.data, Some(r("354 go")));
    assert_eq!(session.quit(), send("QUIT\r\n"));
    assert_eq!(session.handle_reply(&r("221 bye")), ClientStep::Done);
}

#[test]
fn one_recipient_rejected_others_still_get_the_body() {
    for ehlo in [EHLO_PIPELINING, EHLO_PLAIN] {
        let mut session = ready(ehlo);
        let mut step = session.start_message(&envelope(&["a@x", "bad@x", "c@x"]));
        let script = [
            "250 ok",
            "250 ok",
            "550 5.1.1 no such user",
            "250 ok",
            "354 go",
        ];
        for reply in script {
            assert!(
                matches!(step, ClientStep::Send(_) | ClientStep::Wait),
                "{step:?}"
            );
            step = session.handle_reply(&r(reply));
        }
        assert_eq!(step, ClientStep::SendBody);
        let report = done(session.handle_reply(&r("250 queued")));
        assert_eq!(report.recipients[1], Some(r("550 5.1.1 no such user")));
        assert_eq!(report.recipients[0], Some(r("250 ok")));
        assert_eq!(report.recipients[2], Some(r("250 ok")));
    }
}

#[test]
fn all_recipients_rejected_unpipelined_skips_data_and_resets_next_time() {
    let mut session = ready(EHLO_PLAIN);
    session.start_message(&envelope(&["a@x"]));
    assert_eq!(
        session.handle_reply(&r("250 ok")),
        send("RCPT TO:<a@x>\r\n")
    );
    let report = done(session.handle_reply(&r("550 5.1.1 no")));
    assert_eq!(report.data, None);
    assert_eq!(session.start_message(&envelope(&["b@x"])), send("RSET\r\n"));
    assert_eq!(
        session.handle_reply(&r("250 ok")),
        send("MAIL FROM:<cron@lan> SIZE=1234\r\n")
    );
}

#[test]
fn all_recipients_rejected_pipelined_then_354_sends_only_the_dot() {
    let mut session = ready(EHLO_PIPELINING);
    session.start_message(&envelope(&["a@x"]));
    assert_eq!(session.handle_reply(&r("250 ok")), ClientStep::Wait);
    assert_eq!(session.handle_reply(&r("550 no")), ClientStep::Wait);
    assert_eq!(session.handle_reply(&r("354 go")), send(".\r\n"));
    let report = done(session.handle_reply(&r("554 no valid recipients")));
    assert_eq!(report.data_end, None);
    assert_eq!(report.recipients, vec![Some(r("550 no"))]);
    let next = session.start_message(&envelope(&["b@x"]));
    assert_eq!(
        next,
        send("MAIL FROM:<cron@lan> SIZE=1234\r\nRCPT TO:<b@x>\r\nDATA\r\n")
    );
}

#[test]
fn mail_4xx_ends_the_message_without_recipients() {
    let mut session = ready(EHLO_PLAIN);
    session.start_message(&envelope(&["a@x", "b@x"]));
    let report = done(session.handle_reply(&r("451 4.3.0 try later")));
    assert_eq!(report.mail, Some(r("451 4.3.0 try later")));
    assert_eq!(report.recipients, vec![None, None]);
    // No transaction was opened: the next message starts with MAIL.
    assert_eq!(
        session.start_message(&envelope(&["c@x"])),
        send("MAIL FROM:<cron@lan> SIZE=1234\r\n")
    );
}

#[test]
fn data_5xx_is_recorded_and_the_transaction_reset() {
    let mut session = ready(EHLO_PIPELINING);
    session.start_message(&envelope(&["a@x"]));
    session.handle_reply(&r("250 ok"));
    session.handle_reply(&r("250 ok"));
    let report = done(session.handle_reply(&r("554 5.6.0 no data today")));
    assert_eq!(report.data, Some(r("554 5.6.0 no data today")));
    assert_eq!(report.data_end, None);
    let next = session.start_message(&envelope(&["b@x"]));
    assert_eq!(
        next,
        send("RSET\r\nMAIL FROM:<cron@lan> SIZE=1234\r\nRCPT TO:<b@x>\r\nDATA\r\n")
    );
    assert_eq!(session.handle_reply(&r("250 reset")), ClientStep::Wait);
}

#[test]
fn reply_421_mid_session_fills_the_rest_and_closes() {
    let mut session = ready(EHLO_PIPELINING);
    session.start_message(&envelope(&["a@x", "b@x"]));
    assert_eq!(session.handle_reply(&r("250 ok")), ClientStep::Wait);
    let closing = r("421 4.3.2 shutting down");
    let report = done(session.handle_reply(&closing));
    assert_eq!(report.mail, Some(r("250 ok")));
    assert_eq!(
        report.recipients,
        vec![Some(closing.clone()), Some(closing.clone())]
    );
    assert_eq!(report.data, Some(closing.clone()));
    let expected = SessionFailure::Rejected {
        stage: Stage::Rcpt,
        reply: closing,
    };
    assert_eq!(
        session.start_message(&envelope(&["c@x"])),
        ClientStep::Failed(expected)
    );
    assert_eq!(session.quit(), ClientStep::Done);
}

#[test]
fn reply_421_to_the_greeting_is_a_site_failure() {
    let mut session = ClientSession::new(params(TlsPolicy::None));
    let reply = r("421 4.3.2 busy");
    let expected = SessionFailure::Rejected {
        stage: Stage::Greeting,
        reply: reply.clone(),
    };
    assert_eq!(session.handle_reply(&reply), ClientStep::Failed(expected));
}

#[test]
fn ehlo_5xx_falls_back_to_helo() {
    let mut session = ClientSession::new(params(TlsPolicy::None));
    session.handle_reply(&r("220 old"));
    assert_eq!(
        session.handle_reply(&r("502 what")),
        send("HELO outpost.lan\r\n")
    );
    assert_eq!(session.handle_reply(&r("250 hi")), ClientStep::Ready);
    // No extensions after HELO: no SIZE, no pipelining.
    assert_eq!(
        session.start_message(&envelope(&["a@x"])),
        send("MAIL FROM:<cron@lan>\r\n")
    );
}

#[test]
fn smtputf8_needed_but_not_offered_fails_locally() {
    let mut session = ready(EHLO_PIPELINING);
    let mut env = envelope(&["ü@x", "b@x"]);
    env.smtputf8 = true;
    let report = done(session.start_message(&env));
    let local = report.local.unwrap();
    assert_eq!(local.code, 553);
    assert!(local.text.contains("SMTPUTF8"), "{local}");
    assert_eq!(report.recipients.len(), 2);
}

#[test]
fn mail_parameters_follow_the_offer() {
    let mut session = ready("250-mx\n250-SIZE 100000\n250-8BITMIME\n250 SMTPUTF8");
    let mut env = envelope(&["a@x"]);
    env.eight_bit = true;
    env.smtputf8 = true;
    let step = session.start_message(&env);
    assert_eq!(
        step,
        send("MAIL FROM:<cron@lan> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\n")
    );
}

#[test]
fn message_over_the_advertised_size_fails_locally() {
    let mut session = ready("250-mx\n250 SIZE 1000");
    let report = done(session.start_message(&envelope(&["a@x"])));
    assert_eq!(report.local.map(|r| r.code), Some(552));
}

#[test]
fn null_sender_is_sent_as_empty_path() {
    let mut session = ready(EHLO_PLAIN);
    let mut env = envelope(&["a@x"]);
    env.sender = String::new();
    assert_eq!(
        session.start_message(&env),
        send("MAIL FROM:<> SIZE=1234\r\n")
    );
}

#[test]
fn control_characters_in_addresses_are_never_sent() {
    let mut session = ready(EHLO_PIPELINING);
    let step = session.start_message(&envelope(&["a@x\r\nRCPT TO:<evil@y>", "b@x"]));
    assert_eq!(
        step,
        send("MAIL FROM:<cron@lan> SIZE=1234\r\nRCPT TO:<b@x>\r\nDATA\r\n")
    );
    session.handle_reply(&r("250 ok"));
    session.handle_reply(&r("250 ok"));
    session.handle_reply(&r("354 go"));
    let report = done(session.handle_reply(&r("250 ok")));
    assert_eq!(report.recipients[0].as_ref().map(|r| r.code), Some(501));

    let mut session = ready(EHLO_PIPELINING);
    let mut env = envelope(&["a@x"]);
    env.sender = "x@y>\r\nDATA".into();
    assert!(done(session.start_message(&env)).local.is_some());
}

#[test]
fn timeout_during_data_end_reports_the_reason_for_the_dot() {
    let mut session = ready(EHLO_PIPELINING);
    session.start_message(&envelope(&["a@x"]));
    session.handle_reply(&r("250 ok"));
    session.handle_reply(&r("250 ok"));
    assert_eq!(session.handle_reply(&r("354 go")), ClientStep::SendBody);
    let reason = r("451 4.4.2 timeout");
    let report = session.aborted(reason.clone()).unwrap();
    assert_eq!(report.recipients, vec![Some(r("250 ok"))]);
    assert_eq!(report.data_end, Some(reason));
    assert!(matches!(
        session.start_message(&envelope(&["a@x"])),
        ClientStep::Failed(_)
    ));
}

#[test]
fn lost_connection_while_idle_reports_nothing() {
    let mut session = ready(EHLO_PIPELINING);
    assert_eq!(session.aborted(r("451 4.4.2 lost")), None);
}

proptest::proptest! {
    /// Whatever the smarthost answers, the session never panics, never sends a command
    /// after QUIT or failure, and every report answers every recipient slot.
    #[test]
    fn any_reply_sequence_is_handled(
        codes in proptest::collection::vec(
            proptest::sample::select(vec![220u16, 221, 235, 250, 251, 334, 354, 421, 450, 451, 500, 535, 550, 554, 199, 600]),
            0..40,
        ),
        pipelining in proptest::bool::ANY,
        recipients in 1usize..4,
        authenticate in proptest::bool::ANY,
    ) {
        let mut session = if authenticate {
            with_credentials(TlsPolicy::Implicit)
        } else {
            ClientSession::new(params(TlsPolicy::None))
        };
        let ehlo = match (authenticate, pipelining) {
            (true, true) => "250-mx.example\n250-PIPELINING\n250 AUTH PLAIN",
            (true, false) => "250-mx.example\n250 AUTH LOGIN",
            (false, true) => EHLO_PIPELINING,
            (false, false) => EHLO_PLAIN,
        };
        let names: Vec<String> = (0..recipients).map(|i| format!("r{i}@x")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut finished = false;
        for (i, code) in codes.into_iter().enumerate() {
            if finished {
                break;
            }
            let reply = if i == 1 && code == 250 { r(ehlo) } else { Reply::new(code, None, "x") };
            let mut step = session.handle_reply(&reply);
            loop {
                match step {
                    ClientStep::Ready => step = session.start_message(&envelope(&names)),
                    ClientStep::MessageDone(report) => {
                        proptest::prop_assert_eq!(report.recipients.len(), recipients);
                        step = session.start_message(&envelope(&names));
                        if !session.is_ready() && matches!(step, ClientStep::Failed(_)) {
                            finished = true;
                            break;
                        }
                    }
                    ClientStep::Failed(_) | ClientStep::Done => {
                        finished = true;
                        break;
                    }
                    ClientStep::Send(_) | ClientStep::Wait | ClientStep::SendBody | ClientStep::StartTls => break,
                }
            }
        }
    }
}
