//! Ordered smarthost failover (`[[smarthost]]`): the real binary against several independent
//! upstreams, some of them down (a closed port, or a 421 greeting). Mail goes to the first
//! smarthost that answers, in config order; it returns to the primary once the primary is back;
//! a recipient's 4xx/5xx is the smarthost's verdict and never fails over; `outpost status`
//! lists every smarthost.

use std::time::Duration;

use crate::util::{
    assert_queued, message, reply, wait_until, RawClient, RelayConfig, RelayProcess, Smarthost,
    Stage,
};

const DELIVERY: Duration = Duration::from_secs(20);

/// A relay over `ports` (in order), with a route backoff far above every deadline here: a
/// smarthost that failed stays down unless `queue flush` says otherwise.
fn relay_over(ports: &[u16]) -> RelayProcess {
    RelayProcess::start_with(
        RelayConfig::with_smarthosts(ports).queue("retry_min = \"5m\"\nretry_max = \"10m\""),
    )
}

fn send(relay: &RelayProcess, subject: &str, to: &[&str]) -> String {
    let mut client = RawClient::ready(relay.port());
    assert_queued(&client.send_mail("a@lan.test", to, &message(subject, "x\r\n")))
}

/// The `smarthost N …` line of a status text (empty if missing).
fn route_line(status: &str, n: usize) -> String {
    let prefix = format!("smarthost {n} ");
    status
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_default()
        .to_owned()
}

fn link_line(status: &str) -> String {
    status
        .lines()
        .find(|l| l.starts_with("link: "))
        .unwrap_or_default()
        .to_owned()
}

/// Polls `outpost status` until `cond` holds (bounded); returns the status that satisfied it.
fn wait_status(relay: &RelayProcess, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    let held = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        last = relay.command_ok(&["status"]);
        cond(&last)
    });
    if !held {
        relay.fail(&format!("status never showed {what}; last:\n{last}"));
    }
    last
}

fn subject_of(upstream: &Smarthost, n: usize) -> Vec<String> {
    upstream
        .delivered()
        .iter()
        .take(n)
        .map(|m| {
            let data = m.data_str();
            data.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn primary_down_sends_to_the_secondary_and_status_lists_both() {
    let primary = Smarthost::reserve_port();
    let secondary = Smarthost::start();
    let relay = relay_over(&[primary, secondary.port()]);
    send(&relay, "via-secondary", &["b@remote.test"]);
    secondary
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing reached the secondary"));
    assert_eq!(subject_of(&secondary, 1), ["via-secondary"]);
    let status = wait_status(&relay, "the primary down and the secondary up", |s| {
        route_line(s, 1).contains(": down since") && route_line(s, 2).contains(": up since")
    });
    let first = route_line(&status, 1);
    assert!(
        first.starts_with(&format!("smarthost 1 127.0.0.1:{primary}: down since ")),
        "{status}"
    );
    assert!(first.contains(", never reached (next try in "), "{status}");
    assert!(
        first.contains(&format!("last error smarthost 127.0.0.1:{primary}: ")),
        "{status}"
    );
    let second = route_line(&status, 2);
    assert!(
        second.starts_with(&format!(
            "smarthost 2 127.0.0.1:{}: up since ",
            secondary.port()
        )),
        "{status}"
    );
    assert!(second.ends_with(", 1 sent (mail goes here)"), "{status}");
    // The `link:` line (what scripts grep) is up, via the route mail goes to.
    let link = link_line(&status);
    assert!(
        link.starts_with("link: up since ")
            && link.ends_with(&format!("(127.0.0.1:{})", secondary.port())),
        "{status}"
    );
    relay.wait_log("failing over to smarthost 2 ");
}

#[test]
fn queue_flush_sends_new_mail_to_the_primary_once_it_is_back() {
    let primary_port = Smarthost::reserve_port();
    let secondary = Smarthost::start();
    let relay = relay_over(&[primary_port, secondary.port()]);
    send(&relay, "while-primary-down", &["b@remote.test"]);
    secondary
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing reached the secondary"));
    wait_status(&relay, "the primary waiting for its backoff", |s| {
        route_line(s, 1).contains("(next try in ")
    });
    let primary = Smarthost::start_on(primary_port);
    relay.command_ok(&["queue", "flush"]);
    // The flush has reached the forwarder once the primary's backoff is gone.
    wait_status(&relay, "the primary's backoff reset", |s| {
        route_line(s, 1).contains("(next try now)")
    });
    send(&relay, "primary-again", &["b@remote.test"]);
    primary
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("new mail did not go to the primary"));
    assert_eq!(subject_of(&primary, 1), ["primary-again"]);
    assert_eq!(
        secondary.count(),
        1,
        "the secondary got mail after the flush"
    );
    let status = wait_status(&relay, "the primary up", |s| {
        route_line(s, 1).contains(": up since ")
    });
    assert!(
        route_line(&status, 1).ends_with(", 1 sent (mail goes here)"),
        "{status}"
    );
    assert!(
        link_line(&status).ends_with(&format!("(127.0.0.1:{primary_port})")),
        "{status}"
    );
}

#[test]
fn the_primary_is_probed_first_again_when_its_backoff_expires() {
    let primary_port = Smarthost::reserve_port();
    let secondary = Smarthost::start();
    // The harness's backoff (retry_min 1s, retry_max 2s): the primary is due again soon.
    let relay = RelayProcess::start_with(RelayConfig::with_smarthosts(&[
        primary_port,
        secondary.port(),
    ]));
    send(&relay, "while-primary-down", &["b@remote.test"]);
    secondary
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing reached the secondary"));
    let primary = Smarthost::start_on(primary_port);
    // No flush: the primary's own backoff runs out.
    wait_status(&relay, "the primary due for a probe", |s| {
        route_line(s, 1).contains("(next try now)")
    });
    send(&relay, "back-to-primary", &["b@remote.test"]);
    primary
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("mail did not return to the primary"));
    assert_eq!(subject_of(&primary, 1), ["back-to-primary"]);
    assert_eq!(
        secondary.count(),
        1,
        "the secondary got mail after the primary was back"
    );
}

#[test]
fn routes_are_tried_in_order_and_the_first_that_answers_gets_the_mail() {
    let first = Smarthost::reserve_port();
    let second = Smarthost::reserve_port();
    assert_ne!(first, second);
    let third = Smarthost::start();
    let relay = relay_over(&[first, second, third.port()]);
    send(&relay, "via-third", &["b@remote.test"]);
    third
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("nothing reached the third smarthost"));
    let sent = format!("relay=127.0.0.1:{} status=sent", third.port());
    let log = relay.wait_log(&sent);
    let position = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| relay.fail(&format!("no {needle:?} in the log")))
    };
    let tried_first = position(&format!("smarthost 1 127.0.0.1:{first} unavailable"));
    let tried_second = position(&format!("smarthost 2 127.0.0.1:{second} unavailable"));
    let delivered = position(&sent);
    assert!(
        tried_first < tried_second && tried_second < delivered,
        "not tried in order:\n{log}"
    );
    let status = wait_status(&relay, "two routes down and the third up", |s| {
        route_line(s, 3).contains(": up since ")
    });
    for n in [1, 2] {
        assert!(route_line(&status, n).contains(": down since "), "{status}");
    }
}

#[test]
fn a_421_greeting_fails_over() {
    let primary = Smarthost::start_with_policy(|stage| {
        matches!(stage, Stage::Helo).then(|| reply(421, "4.3.2 shutting down"))
    });
    let secondary = Smarthost::start();
    let relay = relay_over(&[primary.port(), secondary.port()]);
    send(&relay, "after-421", &["b@remote.test"]);
    secondary
        .wait_for(1, DELIVERY)
        .unwrap_or_else(|| relay.fail("a 421 greeting did not fail over"));
    assert_eq!(primary.count(), 0);
    let status = wait_status(&relay, "the primary down", |s| {
        route_line(s, 1).contains(": down since ")
    });
    assert!(route_line(&status, 1).contains("421"), "{status}");
}

#[test]
fn recipient_verdicts_do_not_fail_over() {
    let primary = Smarthost::start_with_policy(|stage| match stage {
        Stage::Rcpt { to } if to.contains("defer") => Some(reply(450, "4.2.1 mailbox busy")),
        Stage::Rcpt { to } if to.contains("reject") => Some(reply(550, "5.1.1 no such user")),
        _ => None,
    });
    let secondary = Smarthost::start();
    let relay = relay_over(&[primary.port(), secondary.port()]);
    send(
        &relay,
        "verdicts",
        &["defer@remote.test", "reject@remote.test"],
    );
    let status = wait_status(&relay, "one deferral and one bounce", |s| {
        s.contains(" 1 deferred, 1 bounced")
    });
    assert!(route_line(&status, 1).contains(": up since "), "{status}");
    assert_eq!(
        route_line(&status, 2),
        format!("smarthost 2 127.0.0.1:{}: not tried yet", secondary.port()),
        "{status}"
    );
    assert_eq!(secondary.count(), 0, "a recipient verdict failed over");
}
