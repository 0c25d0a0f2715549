//! Receiving: what a LAN client sees on the wire (EHLO, pipelining, sequencing, replies) and that
//! what it sent reaches the smarthost byte for byte behind one prepended `Received:` field.

use std::time::Duration;

use crate::util::{assert_queued, message, send_lettre, RawClient, RelayProcess, Smarthost};

const DELIVERY: Duration = Duration::from_secs(30);

#[test]
fn lettre_message_reaches_upstream_byte_exact_after_received_header() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_to(upstream.port());
    // lettre ends DATA with CRLF.CRLF after the message, so the relay sees (and must keep) the
    // message plus one CRLF.
    let sent = message(
        "byte-exact",
        "first line\r\n.starts with a dot\r\n..two dots\r\n.\r\n \r\ntrailing spaces   \r\n\
         \ttab\r\nlast line",
    );
    let mut original = sent.clone();
    original.extend_from_slice(b"\r\n");
    let reply = send_lettre(
        relay.port(),
        "sender@lan.test",
        &["rcpt@remote.test"],
        &sent,
    )
    .unwrap_or_else(|e| relay.fail(&format!("lettre send failed: {e}")));
    assert!(
        reply.starts_with("250 2.0.0 queued as "),
        "reply to the final dot: {reply}"
    );

    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].from, "sender@lan.test");
    assert_eq!(got[0].to, vec!["rcpt@remote.test".to_owned()]);
    let body = got[0]
        .after_received()
        .unwrap_or_else(|| panic!("no leading Received: field in {:?}", got[0].data_str()));
    assert_eq!(
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(&original),
        "message altered in transit"
    );
    assert_eq!(body, &original[..]);
}

#[test]
fn received_header_names_the_relay_and_the_client() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], &message("trace", "x\r\n")));
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    let data = got[0].data_str();
    let received_end = data.len() - got[0].after_received().unwrap().len();
    let received = &data[..received_end];
    assert!(
        received.contains("outpost.test"),
        "Received: lacks our hostname: {received}"
    );
    assert!(
        received.contains("127.0.0.1"),
        "Received: lacks the client address: {received}"
    );
    assert!(
        received.ends_with("\r\n"),
        "Received: not CRLF-terminated: {received:?}"
    );
}

#[test]
fn dot_stuffed_lines_are_unstuffed_and_restuffed_for_the_smarthost() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    // On the wire (stuffed) → as the message really is.
    let wire = b"Subject: dots\r\n\r\n..\r\n...\r\n..leading\r\nmiddle . dot\r\n";
    let real = b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmiddle . dot\r\n";
    assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], wire));
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    assert_eq!(
        got[0].after_received(),
        Some(&real[..]),
        "got {:?}",
        got[0].data_str()
    );
}

#[test]
fn eight_bit_body_with_body_8bitmime_is_relayed_unchanged() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    let mut body = b"Subject: 8bit\r\nContent-Type: text/plain; charset=latin1\r\n\
                     Content-Transfer-Encoding: 8bit\r\n\r\n"
        .to_vec();
    // Every octet except CR and LF, in lines of 64.
    let octets: Vec<u8> = (1..=255u8).filter(|b| *b != b'\r' && *b != b'\n').collect();
    for chunk in octets.chunks(64) {
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice("Grüße, ça va? ☃\r\n".as_bytes());
    let reply = client.cmd("MAIL FROM:<a@lan.test> BODY=8BITMIME");
    assert_eq!(reply.code, 250, "{reply}");
    assert_eq!(client.cmd("RCPT TO:<b@remote.test>").code, 250);
    assert_eq!(client.cmd("DATA").code, 354);
    // No line of `body` starts with '.', so it needs no stuffing.
    assert!(!body
        .split(|b| *b == b'\n')
        .any(|line| line.starts_with(b".")));
    client.send(&body);
    client.send(b".\r\n");
    assert_queued(&client.read_reply());

    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    assert_eq!(
        got[0].after_received(),
        Some(&body[..]),
        "8-bit body altered"
    );
    assert!(
        got[0].is8bit,
        "relay dropped BODY=8BITMIME towards the smarthost"
    );
}

#[test]
fn lettre_8bit_message_is_relayed_unchanged() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_to(upstream.port());
    let sent = message("utf8", "Sensor Temperatur: 21,5 °C — ok");
    let mut original = sent.clone();
    original.extend_from_slice(b"\r\n"); // lettre's CRLF before the final dot
                                         // lettre adds BODY=8BITMIME itself for non-ASCII content.
    let reply = send_lettre(relay.port(), "sensor@lan.test", &["ops@remote.test"], &sent)
        .unwrap_or_else(|e| relay.fail(&e));
    assert!(reply.starts_with("250 "), "{reply}");
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    assert_eq!(got[0].after_received(), Some(&original[..]));
    assert!(
        got[0].is8bit,
        "relay dropped BODY=8BITMIME towards the smarthost"
    );
}

#[test]
fn ehlo_advertises_pipelining_size_8bitmime_enhancedstatuscodes_smtputf8() {
    let relay = RelayProcess::start("max_message_size = 123456");
    let (mut client, greeting) = RawClient::connect(relay.port());
    assert_eq!(greeting.code, 220, "greeting: {greeting}");
    let ehlo = client.cmd("EHLO client.test");
    assert_eq!(ehlo.code, 250, "{ehlo}");
    let keywords: Vec<String> = ehlo.lines[1..]
        .iter()
        .map(|l| l.to_ascii_uppercase())
        .collect();
    for wanted in ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"] {
        assert!(
            keywords.iter().any(|k| k == wanted),
            "EHLO lacks {wanted}: {ehlo}"
        );
    }
    assert!(
        keywords.iter().any(|k| k == "SIZE 123456"),
        "EHLO lacks `SIZE 123456`: {ehlo}"
    );
}

#[test]
fn helo_is_accepted() {
    let relay = RelayProcess::start("");
    let (mut client, _) = RawClient::connect(relay.port());
    assert_eq!(client.cmd("HELO client.test").code, 250);
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 250);
}

#[test]
fn pipelined_mail_rcpt_rcpt_data_get_replies_in_order() {
    let upstream = Smarthost::start();
    let relay = RelayProcess::start_to(upstream.port());
    let mut client = RawClient::ready(relay.port());
    client.send(
        b"MAIL FROM:<a@lan.test>\r\nRCPT TO:<b@remote.test>\r\nRCPT TO:<c@remote.test>\r\nDATA\r\n",
    );
    let codes: Vec<u16> = (0..4).map(|_| client.read_reply().code).collect();
    assert_eq!(codes, [250, 250, 250, 354], "{}", client.transcript());
    // Body, dot and the next transaction in one write as well.
    client.send(b"Subject: p\r\n\r\nhi\r\n.\r\nMAIL FROM:<d@lan.test>\r\nRSET\r\nNOOP\r\n");
    assert_queued(&client.read_reply());
    let codes: Vec<u16> = (0..3).map(|_| client.read_reply().code).collect();
    assert_eq!(codes, [250, 250, 250], "{}", client.transcript());
    let got = upstream
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing delivered"));
    let mut to = got[0].to.clone();
    to.sort();
    assert_eq!(to, ["b@remote.test", "c@remote.test"]);
}

#[test]
fn pipelined_transaction_sent_byte_by_byte_gets_the_same_replies() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    let input = b"MAIL FROM:<a@lan.test>\r\nRCPT TO:<b@remote.test>\r\nDATA\r\nSubject: s\r\n\r\nx\r\n.\r\n";
    for byte in input {
        client.send(&[*byte]);
    }
    let codes: Vec<u16> = (0..3).map(|_| client.read_reply().code).collect();
    assert_eq!(codes, [250, 250, 354]);
    assert_queued(&client.read_reply());
}

#[test]
fn final_dot_gets_250_queued_as_queue_id_and_ids_differ() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    let first = assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], b"x\r\n"));
    let second = assert_queued(&client.send_mail("a@lan.test", &["b@remote.test"], b"y\r\n"));
    assert_ne!(first, second, "two messages got the same queue id");
}

#[test]
fn replies_carry_enhanced_status_codes() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    for command in [
        "NOOP",
        "MAIL FROM:<a@lan.test>",
        "RCPT TO:<b@remote.test>",
        "RSET",
        "RCPT TO:<b@remote.test>",
        "VRFY someone",
        "BOGUS",
        "QUIT",
    ] {
        let reply = client.cmd(command);
        assert!(
            reply.has_enhanced_status(),
            "`{command}` got `{reply}` without RFC 3463 status"
        );
    }
}

#[test]
fn rcpt_before_mail_gets_503() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    let reply = client.cmd("RCPT TO:<b@remote.test>");
    assert_eq!(reply.code, 503, "{reply}");
    assert!(reply.text().starts_with("5.5.1"), "{reply}");
}

#[test]
fn data_without_recipients_gets_503_and_rset_clears_the_transaction() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("DATA").code, 503);
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 250);
    assert_eq!(client.cmd("RCPT TO:<b@remote.test>").code, 250);
    assert_eq!(client.cmd("RSET").code, 250);
    assert_eq!(client.cmd("DATA").code, 503, "RSET kept the transaction");
}

#[test]
fn mail_before_helo_gets_503() {
    let relay = RelayProcess::start("");
    let (mut client, _) = RawClient::connect(relay.port());
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 503);
}

#[test]
fn unknown_command_gets_500() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    let reply = client.cmd("FROBNICATE now");
    assert_eq!(reply.code, 500, "{reply}");
    assert_eq!(
        client.cmd("NOOP").code,
        250,
        "session unusable after a bad command"
    );
}

#[test]
fn mail_from_without_brackets_is_accepted() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    assert_eq!(
        client.cmd("MAIL FROM:cron@lan.test").code,
        250,
        "{}",
        client.transcript()
    );
    assert_eq!(client.cmd("RCPT TO:<ops@remote.test>").code, 250);
}

#[test]
fn bare_lf_commands_are_accepted() {
    let relay = RelayProcess::start("");
    let (mut client, _) = RawClient::connect(relay.port());
    client.send(b"EHLO sensor.lan\n");
    assert_eq!(client.read_reply().code, 250);
    client.send(b"MAIL FROM:<sensor@lan.test>\n");
    assert_eq!(client.read_reply().code, 250);
}

#[test]
fn vrfy_gets_252_and_help_gets_214() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("VRFY root").code, 252);
    let help = client.cmd("HELP");
    assert!(help.code == 214 || help.code == 211, "{help}");
}

#[test]
fn quit_gets_221_and_closes() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("QUIT").code, 221);
    assert!(client.is_closed(), "connection still open after QUIT");
}

#[test]
fn null_sender_is_accepted() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("MAIL FROM:<>").code, 250);
    assert_eq!(client.cmd("RCPT TO:<postmaster@remote.test>").code, 250);
}

#[test]
fn smtputf8_addresses_are_accepted_with_the_smtputf8_parameter() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    let reply = client.cmd("MAIL FROM:<jörg@lan.test> SMTPUTF8");
    assert_eq!(reply.code, 250, "{reply}");
    let reply = client.cmd("RCPT TO:<zoë@remote.test>");
    assert_eq!(reply.code, 250, "{reply}");
    assert_eq!(client.cmd("DATA").code, 354);
    client.send("Subject: ünïcödé\r\n\r\nx\r\n.\r\n".as_bytes());
    assert_queued(&client.read_reply());
}
