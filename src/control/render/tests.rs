//! Tests of the pure renderers: `queue` listings, `queue show`, `status` and JSON.

use super::*;
use crate::store::{MessageInfo, QueueId, RcptRecord};

fn message(id: u64, states: &[RcptState], held: bool) -> QueuedMessage {
    let recipients: Vec<RcptRecord> = states
        .iter()
        .enumerate()
        .map(|(i, s)| RcptRecord {
            address: format!("r{i}@x.test"),
            state: *s,
            last_reply: (*s == RcptState::Deferred).then(|| "451 4.3.0 later".to_owned()),
        })
        .collect();
    QueuedMessage {
        id: QueueId(id),
        info: MessageInfo {
            sender: "a@lan.test".into(),
            recipients: recipients.iter().map(|r| r.address.clone()).collect(),
            eight_bit: false,
            smtputf8: false,
            received_unix: 0,
            priority: crate::priority::Priority::Normal,
            coalesce: None,
        },
        size: 100,
        enqueued_at: 1_000,
        attempts: 1,
        next_attempt: 70_000,
        held,
        recipients,
    }
}

#[test]
fn message_state_prefers_held_then_deferred() {
    use RcptState::*;
    assert_eq!(
        MessageState::of(&message(1, &[Pending], false)),
        MessageState::Pending
    );
    assert_eq!(
        MessageState::of(&message(1, &[Pending, Deferred], false)),
        MessageState::Deferred
    );
    assert_eq!(
        MessageState::of(&message(1, &[Deferred], true)),
        MessageState::Held
    );
    assert_eq!(
        MessageState::of(&message(1, &[Delivered, Failed], false)),
        MessageState::Failed
    );
}

#[test]
fn list_shows_ids_states_replies_and_next_attempt() {
    let text = render_list(
        &[message(
            0xAB,
            &[RcptState::Pending, RcptState::Deferred],
            false,
        )],
        61_000,
        false,
    );
    assert!(text.contains("00000000000000AB"), "{text}");
    assert!(text.contains("1m"), "{text}");
    assert!(
        text.contains("deferred  <r1@x.test>  451 4.3.0 later"),
        "{text}"
    );
    assert!(
        text.contains("next attempt: in 9s (attempts: 1, priority: normal)"),
        "{text}"
    );
    assert_eq!(render_list(&[], 0, false), "Mail queue is empty\n");
}

#[test]
fn without_a_smarthost_the_next_attempt_waits_for_one() {
    let pending = message(1, &[RcptState::Pending], false);
    let held = message(2, &[RcptState::Pending], true);
    let text = render_list(&[pending.clone(), held], 61_000, true);
    assert!(
        text.contains("next attempt: when a smarthost is configured (attempts: 1"),
        "{text}"
    );
    assert!(
        text.contains("next attempt: held (until released)"),
        "{text}"
    );
    let show = render_show(&pending, &[], "", 61_000, true);
    assert!(
        show.contains("next attempt: when a smarthost is configured\n"),
        "{show}"
    );
}

#[test]
fn show_lists_the_attempt_history_per_recipient() {
    let m = message(7, &[RcptState::Deferred, RcptState::Delivered], false);
    let history = [
        AttemptRecord {
            at_unix: 0,
            results: vec![
                (0, RcptState::Deferred, "451 4.3.0 first".into()),
                (1, RcptState::Delivered, "250 ok".into()),
            ],
        },
        AttemptRecord {
            at_unix: 86_400,
            results: vec![(0, RcptState::Deferred, "451 4.3.0 second".into())],
        },
    ];
    let text = render_show(&m, &history, "Subject: hi\r\n", 0, false);
    let expected = "history (oldest first, the last 10 attempts are kept):\n  \
                    Thu, 01 Jan 1970 00:00:00 +0000\n    \
                    <r0@x.test> deferred: 451 4.3.0 first\n    \
                    <r1@x.test> sent: 250 ok\n  \
                    Fri, 02 Jan 1970 00:00:00 +0000\n    \
                    <r0@x.test> deferred: 451 4.3.0 second\n";
    assert!(text.contains(expected), "{text}");
    assert!(text.contains("headers:\n  Subject: hi"), "{text}");
    let text = render_show(&m, &[], "", 0, false);
    assert!(text.contains("history: no attempt yet"), "{text}");
}

#[test]
fn while_the_link_is_down_the_next_attempt_is_the_next_probe() {
    let mut messages = [message(1, &[RcptState::Pending], false)];
    messages[0].next_attempt = 2_000;
    with_link_wait(&mut messages, Some(32_000));
    let text = render_list(&messages, 2_000, false);
    assert!(text.contains("next attempt: in 30s"), "{text}");
    with_link_wait(&mut messages, None);
    assert_eq!(messages[0].next_attempt, 32_000);
}

#[test]
fn json_list_escapes_and_nulls() {
    let mut m = message(1, &[RcptState::Pending], true);
    m.info.sender = "we\"ird\\@x".into();
    let json = render_list_json(&[m], 2_000);
    assert!(json.contains(r#""sender":"we\"ird\\@x""#), "{json}");
    assert!(json.contains(r#""next_attempt_in_secs":null"#), "{json}");
    assert!(json.contains(r#""state":"held""#), "{json}");
    assert!(json.contains(r#""last_reply":null"#), "{json}");
    assert!(json.contains(r#""priority":"normal""#), "{json}");
    assert_eq!(json_str("a\u{1}"), "\"a\\u0001\"");
}

#[test]
fn summary_counts_by_state_and_oldest_age() {
    use RcptState::*;
    let messages = [
        message(1, &[Pending], false),
        message(2, &[Deferred], false),
        message(3, &[Pending], true),
    ];
    let mut s = QueueSummary::default();
    for m in &messages {
        s.add(m, 5_000);
    }
    assert_eq!(s.messages, [1, 1, 1, 0]);
    assert_eq!(s.bytes, [100, 100, 100, 0]);
    assert_eq!(s.oldest_age_ms, Some(4_000));
}

#[test]
fn status_names_link_state() {
    let mut link = LinkReport::default();
    let s = QueueSummary::default();
    let u = Usage::default();
    assert!(render_status(&link, &s, u, None).contains("link: none"));
    link.smarthosts = vec![SmarthostReport {
        address: "h:25".into(),
        ..SmarthostReport::default()
    }];
    assert!(render_status(&link, &s, u, None).contains("not tried yet"));
    link.up = Some(false);
    assert!(render_status(&link, &s, u, None).contains("never reached"));
    link.ever_reached = true;
    let text = render_status(&link, &s, u, None);
    let link_line = text.lines().find(|l| l.starts_with("link: ")).unwrap();
    assert!(
        link_line.starts_with("link: down since") && !link_line.contains("never reached"),
        "{text}"
    );
    link.up = Some(true);
    link.current = Some(0);
    assert!(render_status(&link, &s, u, None).contains("link: up since"));
    assert!(render_status(&link, &s, u, None).contains("(h:25)"));
    link.up = Some(false);
    link.current = None;
    link.retry_at = Some(9_000);
    let text = render_status(&link, &s, u, Some(5_000));
    assert!(text.contains("next probe: in 4s"), "{text}");
}

#[test]
fn status_lists_every_smarthost_in_order() {
    let link = LinkReport {
        up: Some(true),
        ever_reached: true,
        current: Some(1),
        smarthosts: vec![
            SmarthostReport {
                address: "mx1.example:587".into(),
                up: Some(false),
                since_unix: 1_795_466_324,
                ever_reached: true,
                last_error: Some("smarthost mx1.example:587: connection refused".into()),
                retry_at: Some(255_000),
                sent: 3,
            },
            SmarthostReport {
                address: "lte.example:587".into(),
                up: Some(true),
                since_unix: 1_795_466_330,
                ever_reached: true,
                last_error: None,
                retry_at: None,
                sent: 2,
            },
            SmarthostReport {
                address: "last.example:25".into(),
                ..SmarthostReport::default()
            },
        ],
        ..LinkReport::default()
    };
    let text = render_status(
        &link,
        &QueueSummary::default(),
        Usage::default(),
        Some(5_000),
    );
    let lines: Vec<&str> = text.lines().skip(1).take(4).collect();
    assert!(
        lines[0].starts_with("link: up since ") && lines[0].ends_with(" (lte.example:587)"),
        "{text}"
    );
    assert_eq!(
        lines[1],
        format!(
            "smarthost 1 mx1.example:587: down since {} (next try in 4m 10s): last error \
             smarthost mx1.example:587: connection refused",
            rfc5322_date(1_795_466_324)
        )
    );
    assert_eq!(
        lines[2],
        format!(
            "smarthost 2 lte.example:587: up since {}, 2 sent (mail goes here)",
            rfc5322_date(1_795_466_330)
        )
    );
    assert_eq!(lines[3], "smarthost 3 last.example:25: not tried yet");
    assert!(!text.contains("next probe"), "the link is up: {text}");
}
