//! Fuzzes `ClientSession` (the forwarder's side) against a hostile smarthost: the fuzz input
//! chooses the TLS policy, credentials and messages, and the smarthost's byte stream (replies
//! built with the alphabet trick, parsed with `parse_reply` as the glue does). Never does I/O.
//!
//! Invariants:
//! - no panic, no busy loop (every step consumes a reply or ends a message);
//! - every command is CRLF-terminated lines without bare CR/LF, each ≤ 512 octets (an address
//!   can never inject a command);
//! - no TLS downgrade: under `TlsPolicy::StartTls` nothing but EHLO, STARTTLS and QUIT is sent
//!   before the handshake; AUTH and credentials are never sent without TLS;
//! - a body is sent only after MAIL and at least one RCPT were accepted and DATA got 354;
//! - every report has one entry per recipient; a local verdict means nothing was sent; a
//!   data-end reply only follows a 354;
//! - a failed or finished session stays that way.

#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::smtp::client::{
    ClientCredentials, ClientParams, ClientSession, ClientStep, CredentialKind, DeliveryReport,
    Envelope, TlsPolicy,
};
use outpost::smtp::reply::{parse_reply, Reply, MAX_REPLY_LINE};

#[path = "common.rs"]
mod common;
use common::{expand, Cursor};

/// Smarthost reply lines.
const TOKENS: &[&[u8]] = &[
    b"220 mx.example ESMTP\r\n",
    b"220 2.0.0 Ready to start TLS\r\n",
    b"250-mx.example\r\n",
    b"250-PIPELINING\r\n",
    b"250-STARTTLS\r\n",
    b"250-AUTH PLAIN LOGIN\r\n",
    b"250-AUTH=LOGIN\r\n",
    b"250-AUTH CRAM-MD5\r\n",
    b"250-SIZE 100\r\n",
    b"250-SIZE\r\n",
    b"250-8BITMIME\r\n",
    b"250-SMTPUTF8\r\n",
    b"250 mx.example\r\n",
    b"250 OK\r\n",
    b"250 2.1.5 OK\r\n",
    b"250 2.0.0 queued\r\n",
    b"251 forwarded\r\n",
    b"354 go ahead\r\n",
    b"334 VXNlcm5hbWU6\r\n",
    b"334 UGFzc3dvcmQ6\r\n",
    b"334 \r\n",
    b"235 2.7.0 ok\r\n",
    b"221 2.0.0 bye\r\n",
    b"421 4.3.0 closing\r\n",
    b"450 4.2.0 busy\r\n",
    b"451 4.3.0 error\r\n",
    b"452 4.5.3 too many\r\n",
    b"500 5.5.1 what\r\n",
    b"502 5.5.1 no\r\n",
    b"530 5.7.0 tls\r\n",
    b"535 5.7.8 no\r\n",
    b"550 5.1.1 unknown\r\n",
    b"552 5.3.4 big\r\n",
    b"554 5.7.1 denied\r\n",
    b"250-",
    b"250 ",
    b"421-",
    b"550-",
    b"\r\n",
    b"\n",
    b" ",
];

const SENDERS: &[&str] = &["cron@lan", "", "\u{fc}@lan", "a\r\nRCPT TO:<x@y>", "<evil>"];
const RECIPIENTS: &[&str] = &[
    "ops@example.com",
    "a@b",
    "postmaster",
    "\u{fc}@b",
    "x@y\r\nDATA",
    "<x@y>",
    "b@c",
];

const PASSWORD: &str = "s3cret-pass";

fn envelopes(cursor: &mut Cursor<'_>) -> Vec<Envelope> {
    let count = usize::from(cursor.byte() % 4);
    (0..count)
        .map(|_| {
            let flags = cursor.byte();
            let recipients = cursor.byte();
            let n = usize::from(recipients % 5);
            Envelope {
                sender: SENDERS[usize::from(flags >> 4) % SENDERS.len()].to_owned(),
                recipients: (0..n)
                    .map(|i| RECIPIENTS[(usize::from(recipients >> 3) + i) % RECIPIENTS.len()])
                    .map(str::to_owned)
                    .collect(),
                size: [0, 50, 100, 1_000_000][usize::from(flags & 3)],
                eight_bit: flags & 4 != 0,
                smtputf8: flags & 8 != 0,
            }
        })
        .collect()
}

/// What the glue has seen so far, for the protocol invariants.
#[derive(Default)]
struct Seen {
    tls: bool,
    sends: usize,
    mail_accepted: bool,
    rcpt_accepted: bool,
    got_354: bool,
    in_message: bool,
}

fn check_command(bytes: &[u8], policy: TlsPolicy, seen: &Seen) {
    assert!(!bytes.is_empty(), "empty Send");
    assert!(bytes.ends_with(b"\r\n"), "command without CRLF: {bytes:?}");
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        assert!(line.len() <= MAX_REPLY_LINE, "command line over 512 octets");
        assert!(line.ends_with(b"\r\n"), "bare LF in a command: {bytes:?}");
        assert!(
            !line[..line.len() - 2].contains(&b'\r'),
            "bare CR in a command: {bytes:?}"
        );
        let text = String::from_utf8_lossy(line).to_ascii_uppercase();
        let verb = text.split([' ', '\r']).next().unwrap_or("");
        if !seen.tls {
            assert!(verb != "AUTH", "AUTH without TLS");
            if policy == TlsPolicy::StartTls {
                assert!(
                    matches!(verb, "EHLO" | "STARTTLS" | "QUIT"),
                    "{verb} sent in plaintext under the STARTTLS policy"
                );
            }
        }
    }
    if !seen.tls {
        let secret = outpost::smtp::auth::login_response(PASSWORD);
        let secret = &secret[..secret.len() - 2];
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "password sent in clear"
        );
    }
}

fn check_report(
    report: &DeliveryReport,
    envelope: Option<&Envelope>,
    sends_at_start: usize,
    seen: &Seen,
) {
    let Some(envelope) = envelope else {
        panic!("MessageDone without a message");
    };
    assert_eq!(
        report.recipients.len(),
        envelope.recipients.len(),
        "report per recipient"
    );
    if report.local.is_some() {
        assert_eq!(
            seen.sends, sends_at_start,
            "a local verdict, but commands were sent"
        );
    }
    if let Some(end) = &report.data_end {
        let data = report.data.as_ref().map(|d| d.code);
        assert_eq!(data, Some(354), "data-end reply {end:?} without a 354");
    }
}

fn next_reply(stream: &mut &[u8]) -> Option<Reply> {
    match parse_reply(stream) {
        Ok(Some((reply, consumed))) => {
            *stream = &stream[consumed..];
            Some(reply)
        }
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cursor = Cursor::new(data);
    let flags = cursor.byte();
    let policy = match flags & 3 {
        0 | 1 => TlsPolicy::None,
        2 => TlsPolicy::StartTls,
        _ => TlsPolicy::Implicit,
    };
    let credentials = (flags & 4 != 0).then(|| ClientCredentials {
        username: "relay".into(),
        password: PASSWORD.into(),
        // Bit 16: the same secret as an OAuth 2.0 token (OAUTHBEARER/XOAUTH2).
        kind: if flags & 16 == 0 {
            CredentialKind::Password
        } else {
            CredentialKind::Bearer
        },
    });
    let messages = envelopes(&mut cursor);
    let rest = cursor.rest();
    let server = if flags & 8 == 0 {
        expand(rest, TOKENS)
    } else {
        rest.to_vec()
    };
    let mut stream = &server[..];

    let mut session = ClientSession::new(ClientParams {
        helo_name: "outpost.lan".into(),
        tls: policy,
        smarthost: "mx.example:25".into(),
        credentials,
    });
    let mut seen = Seen {
        tls: policy == TlsPolicy::Implicit,
        ..Seen::default()
    };
    let mut queue = messages.iter();
    let mut current: Option<&Envelope> = None;
    let mut sends_at_start = 0;
    // The greeting first; every later reply is read when the step asks for one.
    let mut step = match next_reply(&mut stream) {
        Some(greeting) => session.handle_reply(&greeting),
        None => return,
    };
    let bound = server.len() + 4 * messages.len() + 8;
    for _ in 0..bound {
        match step {
            ClientStep::Send(bytes) => {
                check_command(&bytes, policy, &seen);
                seen.sends += 1;
            }
            ClientStep::Wait => {}
            ClientStep::SendBody => {
                assert!(
                    seen.in_message && seen.mail_accepted && seen.rcpt_accepted && seen.got_354,
                    "body sent without MAIL, an accepted RCPT and 354"
                );
                seen.sends += 1;
            }
            ClientStep::StartTls => {
                seen.tls = true;
                step = session.tls_established();
                continue;
            }
            ClientStep::Ready => {
                assert!(session.is_ready());
                if policy == TlsPolicy::StartTls {
                    assert!(
                        seen.tls,
                        "ready for mail without TLS under the STARTTLS policy"
                    );
                }
                match queue.next() {
                    Some(envelope) => {
                        current = Some(envelope);
                        sends_at_start = seen.sends;
                        seen.in_message = true;
                        seen.mail_accepted = false;
                        seen.rcpt_accepted = false;
                        seen.got_354 = false;
                        step = session.start_message(envelope);
                    }
                    None => step = session.quit(),
                }
                continue;
            }
            ClientStep::MessageDone(report) => {
                check_report(&report, current.take(), sends_at_start, &seen);
                seen.in_message = false;
                step = ClientStep::Ready;
                if !session.is_ready() {
                    // Closed (a 421): the next call must fail, and stay failed.
                    let again = session.start_message(&messages[0]);
                    assert!(
                        matches!(again, ClientStep::Failed(_)),
                        "closed session took a message"
                    );
                    return;
                }
                continue;
            }
            ClientStep::Done | ClientStep::Failed(_) => {
                let any = Reply::new(250, None, "OK");
                let again = session.handle_reply(&any);
                assert!(
                    matches!(again, ClientStep::Failed(_)),
                    "session came back to life: {again:?}"
                );
                return;
            }
        }
        let Some(reply) = next_reply(&mut stream) else {
            // The smarthost went quiet or sent junk: the glue aborts.
            let reason = Reply::new(421, None, "connection lost");
            if let Some(report) = session.aborted(reason) {
                check_report(&report, current.take(), sends_at_start, &seen);
            }
            return;
        };
        if seen.in_message {
            // Rough model of what was accepted, for the SendBody check.
            match reply.code {
                354 => seen.got_354 = true,
                200..=299 if !seen.mail_accepted => seen.mail_accepted = true,
                200..=299 => seen.rcpt_accepted = true,
                _ => {}
            }
        }
        step = session.handle_reply(&reply);
    }
    panic!("no end after {bound} steps: busy loop");
});
