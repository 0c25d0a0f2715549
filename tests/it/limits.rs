//! Limits and abuse: message size, recipients, connections, line lengths, junk, timeouts, and SMTP
//! smuggling. Each limit answers with its code from the brief and leaves the session usable
//! (or closes it, for 421).

use std::time::Duration;

use crate::util::{assert_queued, settle, RawClient, RelayConfig, RelayProcess, Smarthost};

const DELIVERY: Duration = Duration::from_secs(30);

fn body_of(lines: usize, width: usize) -> Vec<u8> {
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for n in 0..lines {
        let line = format!("{n:06}{}\r\n", "x".repeat(width.saturating_sub(6)));
        body.extend_from_slice(line.as_bytes());
    }
    body
}

#[test]
fn oversized_body_is_drained_then_552() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(upstream.port()).top("max_message_size = 1000"),
    );
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 250);
    assert_eq!(client.cmd("RCPT TO:<b@remote.test>").code, 250);
    assert_eq!(client.cmd("DATA").code, 354);
    // 100 lines of 70 octets: no reply may arrive before the final dot.
    client.send(&body_of(100, 70));
    client.send(b".\r\n");
    let reply = client.read_reply();
    assert_eq!(reply.code, 552, "{}", client.transcript());
    assert!(reply.text().starts_with("5.3.4"), "{reply}");
    // The body was drained, not parsed as commands: the next command gets a normal reply.
    assert_eq!(client.cmd("NOOP").code, 250, "{}", client.transcript());
    // The session still works and only the small message reaches the smarthost.
    assert_queued(&client.send_mail(
        "a@lan.test",
        &["b@remote.test"],
        b"Subject: small\r\n\r\nok\r\n",
    ));
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    assert!(
        got[0].data_str().contains("Subject: small"),
        "the oversized message was relayed"
    );
}

#[test]
fn mail_size_parameter_above_max_message_size_gets_552() {
    let relay = RelayProcess::start("max_message_size = 1000");
    let mut client = RawClient::ready(relay.port());
    let reply = client.cmd("MAIL FROM:<a@lan.test> SIZE=2000");
    assert_eq!(reply.code, 552, "{reply}");
    assert!(reply.text().starts_with("5.3.4"), "{reply}");
    let reply = client.cmd("MAIL FROM:<a@lan.test> SIZE=500");
    assert_eq!(
        reply.code, 250,
        "a SIZE under the limit was refused: {reply}"
    );
}

#[test]
fn third_recipient_gets_452_with_max_recipients_2() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(upstream.port()).top("max_recipients = 2"),
    );
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 250);
    assert_eq!(client.cmd("RCPT TO:<one@remote.test>").code, 250);
    assert_eq!(client.cmd("RCPT TO:<two@remote.test>").code, 250);
    let reply = client.cmd("RCPT TO:<three@remote.test>");
    assert_eq!(reply.code, 452, "{reply}");
    assert!(reply.text().starts_with("4.5.3"), "{reply}");
    assert_eq!(client.cmd("DATA").code, 354);
    client.send(b"Subject: two\r\n\r\nx\r\n.\r\n");
    assert_queued(&client.read_reply());
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    let mut to = got[0].to.clone();
    to.sort();
    assert_eq!(to, ["one@remote.test", "two@remote.test"]);
}

#[test]
fn third_connection_is_greeted_421_with_max_connections_2() {
    let relay = RelayProcess::start("max_connections = 2");
    let (mut first, greeting) = RawClient::connect(relay.port());
    assert_eq!(greeting.code, 220);
    let (_second, greeting) = RawClient::connect(relay.port());
    assert_eq!(greeting.code, 220);
    let (mut third, greeting) = RawClient::connect(relay.port());
    assert_eq!(greeting.code, 421, "third connection: {greeting}");
    assert!(greeting.text().starts_with("4.7.0"), "{greeting}");
    assert!(third.is_closed(), "the refused connection stays open");
    // A slot frees when a session ends.
    assert_eq!(first.cmd("QUIT").code, 221);
    drop(first);
    let mut greeted = None;
    let freed = crate::util::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let (_client, greeting) = RawClient::connect(relay.port());
        greeted = Some(greeting.code);
        greeting.code == 220
    });
    assert!(
        freed,
        "no slot after a session ended (last greeting {greeted:?})"
    );
}

#[test]
fn command_line_over_512_octets_gets_500() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    let long = format!("NOOP {}", "x".repeat(595)); // 600 octets before CRLF
    let reply = client.cmd(&long);
    assert_eq!(reply.code, 500, "{reply}");
    assert!(reply.text().starts_with("5.5.2"), "{reply}");
    // Exactly one reply for the long line; the session continues.
    assert_eq!(client.cmd("NOOP").code, 250, "{}", client.transcript());
    let long_mail = format!("MAIL FROM:<{}@lan.test>", "a".repeat(600));
    assert_eq!(client.cmd(&long_mail).code, 500);
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 250);
}

#[test]
fn body_line_over_1000_octets_is_accepted() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 250);
    assert_eq!(client.cmd("RCPT TO:<b@remote.test>").code, 250);
    assert_eq!(client.cmd("DATA").code, 354);
    let mut body = b"Subject: long line\r\n\r\n".to_vec();
    body.extend_from_slice(&[b'y'; 1200]);
    body.extend_from_slice(b"\r\nafter\r\n.\r\n");
    client.send(&body);
    let reply = client.read_reply();
    assert_eq!(reply.code, 250, "{}", client.transcript());
    assert_eq!(client.cmd("NOOP").code, 250, "{}", client.transcript());
}

/// Sends a body with `smuggle` (a fake end of data) followed by a second, smuggled transaction,
/// then the real CRLF.CRLF, and checks that only one message to the real recipient results.
/// With `may_refuse`, refusing the whole message (5xx to the final dot) is also safe.
fn smuggled_end_of_data_is_body(smuggle: &[u8], may_refuse: bool) {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 250);
    assert_eq!(client.cmd("RCPT TO:<real@remote.test>").code, 250);
    assert_eq!(client.cmd("DATA").code, 354);
    let mut body = b"Subject: smuggling\r\n\r\nhello".to_vec();
    body.extend_from_slice(smuggle);
    body.extend_from_slice(
        b"MAIL FROM:<admin@lan.test>\r\nRCPT TO:<victim@remote.test>\r\nDATA\r\n\
          Subject: smuggled\r\n\r\nevil\r\n",
    );
    body.extend_from_slice(b".\r\n");
    client.send(&body);
    let end = client.read_reply();
    let refused = may_refuse && end.code >= 500;
    if !refused {
        assert_queued(&end);
    }
    // Were the smuggled commands executed, their replies would come before QUIT's.
    let quit = client.cmd("QUIT");
    assert_eq!(
        quit.code,
        221,
        "smuggled commands were executed: {}",
        client.transcript()
    );
    if refused {
        return;
    }

    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    // A smuggled second message (the relay re-smuggling to the smarthost) would be queued
    // with the first, so it goes out before the marker.
    settle(&relay, &upstream);
    let got_all = upstream.unmarked();
    assert_eq!(
        got_all.len(),
        1,
        "more than one message reached the smarthost: {got_all:#?}"
    );
    assert_eq!(got[0].to, vec!["real@remote.test".to_owned()]);
    let data = got[0].data_str();
    assert!(
        data.contains("RCPT TO:<victim@remote.test>"),
        "smuggled text lost: {data:?}"
    );
    assert!(
        data.contains("Subject: smuggled"),
        "smuggled text lost: {data:?}"
    );
}

#[test]
fn lf_dot_lf_in_body_does_not_end_data() {
    smuggled_end_of_data_is_body(b"\n.\n", false);
}

#[test]
fn crlf_dot_lf_in_body_does_not_end_data() {
    smuggled_end_of_data_is_body(b"\r\n.\n", false);
}

#[test]
fn lf_dot_crlf_in_body_does_not_end_data() {
    smuggled_end_of_data_is_body(b"\n.\r\n", false);
}

#[test]
fn cr_dot_cr_in_body_does_not_end_data() {
    smuggled_end_of_data_is_body(b"\r.\r", true);
}

#[test]
fn too_many_bad_commands_get_421_and_close() {
    let relay = RelayProcess::start("max_errors = 3");
    let mut client = RawClient::ready(relay.port());
    let mut got_421 = false;
    for n in 0..6 {
        if client.try_send(format!("JUNK{n}\r\n").as_bytes()).is_err() {
            break;
        }
        let Ok(reply) = client.try_read_reply() else {
            break;
        };
        if reply.code == 421 {
            assert!(reply.text().starts_with("4.7.0"), "{reply}");
            got_421 = true;
            break;
        }
        assert_eq!(reply.code, 500, "{reply}");
    }
    assert!(
        got_421,
        "no 421 after repeated junk: {}",
        client.transcript()
    );
    assert!(client.is_closed(), "connection open after 421");
    relay.wait_log("closed: too many errors; 421 4.7.0 sent");
}

#[test]
fn a_pipelined_noop_flood_is_closed_with_421_4_7_0_past_the_junk_limit() {
    // Postfix `smtpd_junk_command_limit` (100): past it each NOOP also counts towards
    // `max_errors` (3 here), so a session that only sends NOOPs ends, however fast it sends.
    let relay = RelayProcess::start("max_errors = 3");
    let mut client = RawClient::ready(relay.port());
    client.send(&b"NOOP\r\n".repeat(200));
    let mut ok = 0;
    let last = loop {
        let reply = client.read_reply();
        if reply.code != 250 {
            break reply;
        }
        ok += 1;
        assert!(ok <= 200, "every NOOP was answered 250");
    };
    assert_eq!(last.code, 421, "{last}");
    assert!(last.text().starts_with("4.7.0"), "{last}");
    assert_eq!(ok, 103, "NOOPs answered before the 421");
    assert!(client.is_closed(), "connection open after 421");
    relay.wait_log("closed: too many errors; 421 4.7.0 sent");
}

#[test]
fn idle_session_times_out_with_421_4_4_2() {
    let relay = RelayProcess::start_with(RelayConfig::default().timeouts("command = \"1s\""));
    let mut client = RawClient::ready(relay.port());
    // Send nothing; the relay must speak first, well within the client's read timeout.
    let reply = client.read_reply();
    assert_eq!(reply.code, 421, "{reply}");
    assert!(reply.text().starts_with("4.4.2"), "{reply}");
    assert!(
        client.is_closed(),
        "connection open after the timeout reply"
    );
}

#[test]
fn stalled_data_times_out_with_421_4_4_2_and_nothing_is_queued() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(upstream.port()).timeouts("data = \"1s\""),
    );
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 250);
    assert_eq!(client.cmd("RCPT TO:<b@remote.test>").code, 250);
    assert_eq!(client.cmd("DATA").code, 354);
    client.send(b"Subject: stalled\r\n\r\npartial");
    let reply = client.read_reply();
    assert_eq!(reply.code, 421, "{reply}");
    assert!(reply.text().starts_with("4.4.2"), "{reply}");
    // A later message arrives alone: the stalled one was not queued.
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail(
        "a@lan.test",
        &["b@remote.test"],
        b"Subject: next\r\n\r\nx\r\n",
    ));
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    assert!(
        got[0].data_str().contains("Subject: next"),
        "the stalled message was relayed"
    );
}

#[test]
fn full_queue_gets_452_4_3_1_and_keeps_what_it_accepted() {
    // The smarthost is down: everything accepted stays queued, so the cap is reached.
    let down = Smarthost::reserve_port();
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(down)
            .top("max_message_size = 2000")
            .queue("max_bytes = 4000"),
    );
    let mut client = RawClient::ready(relay.port());
    let body = body_of(20, 70); // about 1.5 KB per message
    let mut accepted = 0;
    let mut refused = None;
    for _ in 0..10 {
        let reply = client.cmd("MAIL FROM:<a@lan.test>");
        if reply.code != 250 {
            refused = Some(reply);
            break;
        }
        assert_eq!(client.cmd("RCPT TO:<b@remote.test>").code, 250);
        let data = client.cmd("DATA");
        if data.code != 354 {
            refused = Some(data);
            break;
        }
        client.send(&body);
        client.send(b".\r\n");
        let reply = client.read_reply();
        if reply.code != 250 {
            refused = Some(reply);
            break;
        }
        accepted += 1;
    }
    let refused = refused.unwrap_or_else(|| relay.fail("max_bytes never refused a message"));
    assert_eq!(refused.code, 452, "{refused}\n{}", client.transcript());
    assert!(refused.text().starts_with("4.3.1"), "{refused}");
    assert!(
        accepted >= 1,
        "the first message was refused: {}",
        client.transcript()
    );
    assert_eq!(client.cmd("RSET").code, 250, "session unusable after 452");
    // Everything acknowledged is delivered once the smarthost is back.
    let upstream = Smarthost::start_on(down);
    upstream
        .wait_for(accepted, DELIVERY)
        .unwrap_or_else(|| relay.fail("accepted messages lost after the queue filled"));
}

#[test]
fn slowloris_command_line_times_out_at_the_command_deadline() {
    // The command timeout is a deadline for the whole command line, not per read: an octet a
    // second must not hold a session (and a `max_connections` slot) forever.
    let relay = RelayProcess::start_with(RelayConfig::default().timeouts("command = \"2s\""));
    let mut client = RawClient::ready(relay.port());
    let started = std::time::Instant::now();
    let mut reply = None;
    // 40 octets at 4 a second: 10 s, five times the timeout; each gap is far below it.
    for byte in b"NOOP xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".iter() {
        if client.try_send(&[*byte]).is_err() {
            break;
        }
        if let Ok(r) = client.try_read_reply_within(Duration::from_millis(250)) {
            reply = Some(r);
            break;
        }
    }
    let reply = reply.unwrap_or_else(|| {
        relay.fail(&format!(
            "no reply after {:?} of a never-ending command line",
            started.elapsed()
        ))
    });
    assert_eq!(reply.code, 421, "{reply}");
    assert!(reply.text().starts_with("4.4.2"), "{reply}");
    assert!(client.is_closed(), "connection open after 421");
}
