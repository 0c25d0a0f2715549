//! `mailq` in Postfix's format: the exact columns, the marks, the reasons and the closing line
//! that `check_mailq -M postfix` reads.

use super::*;
use crate::store::{MessageInfo, RcptRecord};

/// 2026-12-06 18:00:00 UTC, a Sunday.
const ARRIVAL: u64 = 1_796_580_000;

fn message(id: u64, sender: &str, recipients: &[(&str, RcptState, Option<&str>)]) -> QueuedMessage {
    let recipients: Vec<RcptRecord> = recipients
        .iter()
        .map(|(address, state, reply)| RcptRecord {
            address: (*address).to_owned(),
            state: *state,
            last_reply: reply.map(str::to_owned),
        })
        .collect();
    QueuedMessage {
        id: QueueId(id),
        info: MessageInfo {
            sender: sender.into(),
            recipients: recipients.iter().map(|r| r.address.clone()).collect(),
            eight_bit: false,
            smtputf8: false,
            received_unix: ARRIVAL,
            priority: crate::priority::Priority::Normal,
            coalesce: None,
        },
        size: 2048,
        enqueued_at: 0,
        attempts: 0,
        next_attempt: 0,
        held: false,
        recipients,
    }
}

#[test]
fn an_empty_queue_says_so() {
    assert_eq!(render_mailq(&[], None, None), "Mail queue is empty\n");
    let failed = message(1, "a@x", &[("b@y", RcptState::Failed, Some("550 no"))]);
    assert_eq!(render_mailq(&[failed], None, None), "Mail queue is empty\n");
}

#[test]
fn asctime_in_utc_cut_to_twenty_columns() {
    assert_eq!(asctime(ARRIVAL), "Sun Dec  6 18:00:00 ");
    assert_eq!(asctime(0), "Thu Jan  1 00:00:00 ");
    assert_eq!(asctime(ARRIVAL + 10 * 86_400), "Wed Dec 16 18:00:00 ");
}

#[test]
fn the_listing_has_postfix_columns() {
    let deferred = "451 4.3.0 try again later";
    let mut held = message(2, "", &[("c@example.org", RcptState::Pending, None)]);
    held.held = true;
    held.size = 500;
    let messages = [
        message(
            0xabc,
            "alice@lan.test",
            &[
                ("bob@example.org", RcptState::Deferred, Some(deferred)),
                ("carol@example.org", RcptState::Deferred, Some(deferred)),
                ("dave@example.org", RcptState::Delivered, Some("250 ok")),
                ("erin@example.org", RcptState::Pending, None),
            ],
        ),
        held,
        message(
            3,
            "x@lan.test",
            &[("y@example.org", RcptState::Pending, None)],
        ),
    ];
    let out = render_mailq(&messages, Some(QueueId(3)), None);
    let rcpt = " ".repeat(41);
    let reason_pad = " ".repeat(76 - deferred.len());
    let expected = format!(
        "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n\
         0000000000000ABC      2048 Sun Dec  6 18:00:00  alice@lan.test\n\
         {reason_pad}({deferred})\n\
         {rcpt}bob@example.org\n\
         {rcpt}carol@example.org\n\
         {rcpt}erin@example.org\n\
         \n\
         0000000000000002!      500 Sun Dec  6 18:00:00  MAILER-DAEMON\n\
         {rcpt}c@example.org\n\
         \n\
         0000000000000003*     2048 Sun Dec  6 18:00:00  x@lan.test\n\
         {rcpt}y@example.org\n\
         \n\
         -- 4 Kbytes in 3 Requests.\n"
    );
    assert_eq!(out, expected, "\n{out}");
}

#[test]
fn one_request_is_singular() {
    let m = message(7, "a@x", &[("b@y", RcptState::Pending, None)]);
    assert!(render_mailq(&[m], None, None).ends_with("\n-- 2 Kbytes in 1 Request.\n"));
}

#[test]
fn recipients_not_tried_show_why_the_link_is_down() {
    let m = message(7, "a@x", &[("b@y", RcptState::Pending, None)]);
    let out = render_mailq(&[m], None, Some("connection refused"));
    let reason = format!("{}(connection refused)\n", " ".repeat(76 - 18));
    assert!(
        out.contains(&format!("{reason}{}b@y\n", " ".repeat(41))),
        "{out}"
    );
}
