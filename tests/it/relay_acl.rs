//! Relay access: only clients in `relay_from` may relay; everyone else gets 554 5.7.1 on RCPT.
//! outpost must never be an open relay.

use crate::util::{RawClient, RelayProcess};

#[test]
fn client_outside_relay_from_gets_554_5_7_1_on_rcpt() {
    let relay = RelayProcess::start("relay_from = [\"10.0.0.0/8\"]");
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 250);
    for rcpt in [
        "victim@remote.test",
        "postmaster@remote.test",
        "root@localhost",
    ] {
        let reply = client.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert_eq!(
            reply.code, 554,
            "RCPT {rcpt} from outside relay_from: {reply}"
        );
        assert!(reply.text().starts_with("5.7.1"), "{reply}");
    }
    let data = client.cmd("DATA");
    assert!(
        data.code >= 500,
        "DATA without an accepted recipient: {data}"
    );
}

#[test]
fn pipelined_data_after_refused_rcpt_does_not_take_a_body() {
    let relay = RelayProcess::start("relay_from = [\"10.0.0.0/8\"]");
    let mut client = RawClient::ready(relay.port());
    client.send(
        b"MAIL FROM:<a@lan.test>\r\nRCPT TO:<victim@remote.test>\r\nDATA\r\n\
          Subject: spam\r\n\r\nspam\r\n.\r\nNOOP\r\n",
    );
    let mail = client.read_reply();
    let rcpt = client.read_reply();
    let data = client.read_reply();
    assert_eq!(
        (mail.code, rcpt.code),
        (250, 554),
        "{}",
        client.transcript()
    );
    assert!(data.code >= 500, "DATA got {data}");
    // The body lines are now junk commands, never a queued message.
    let mut ended = false;
    for _ in 0..6 {
        let reply = client.read_reply();
        assert_ne!(reply.code, 354, "{}", client.transcript());
        assert!(!reply.text().contains("queued"), "{}", client.transcript());
        // The NOOP's 250, or 421 for too many errors, ends the exchange.
        if reply.code == 250 || reply.code == 421 {
            ended = true;
            break;
        }
    }
    assert!(ended, "{}", client.transcript());
}

#[test]
fn loopback_client_is_allowed_by_default_relay_from() {
    let relay = RelayProcess::start("");
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 250);
    let reply = client.cmd("RCPT TO:<b@remote.test>");
    assert_eq!(reply.code, 250, "{reply}");
}

#[test]
fn explicit_loopback_relay_from_allows_the_client() {
    let relay = RelayProcess::start("relay_from = [\"10.0.0.0/8\", \"127.0.0.1/32\"]");
    let mut client = RawClient::ready(relay.port());
    assert_eq!(client.cmd("MAIL FROM:<a@lan.test>").code, 250);
    assert_eq!(client.cmd("RCPT TO:<b@remote.test>").code, 250);
}
