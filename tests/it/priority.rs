//! `[[priority]]`: after an outage, urgent mail reaches the smarthost first, then high, normal
//! and low, each oldest first; rules match the sender and a header field; the queue listing
//! shows each message's priority. Drives the real binary against a real upstream.

use std::time::Duration;

use crate::util::{assert_queued, wait_until, RawClient, RelayConfig, RelayProcess, Smarthost};

const DELIVERY: Duration = Duration::from_secs(30);

const RULES: &str = "[[priority]]\nsender = \"ups@*\"\nlevel = \"urgent\"\n\n\
                     [[priority]]\nheader = \"X-Priority\"\nvalue = \"1*\"\nlevel = \"high\"\n\n\
                     [[priority]]\nsender = \"backup@*\"\nlevel = \"low\"";

fn send(relay: &RelayProcess, from: &str, subject: &str, extra_header: &str) -> String {
    let mut client = RawClient::ready(relay.port());
    let message = format!(
        "From: {from}\r\nTo: ops@remote.test\r\nSubject: {subject}\r\n{extra_header}\r\nbody\r\n"
    );
    assert_queued(&client.send_mail(from, &["ops@remote.test"], message.as_bytes()))
}

#[test]
fn after_an_outage_urgent_mail_goes_first_then_high_normal_and_low_each_oldest_first() {
    let port = Smarthost::reserve_port();
    let relay = RelayProcess::start_with(
        RelayConfig::with_smarthost(port)
            .queue("retry_min = \"5m\"\nretry_max = \"10m\"")
            .section(RULES),
    );
    // Queued during the outage in this order.
    let sent = [
        ("cron@lan.test", "normal-1", ""),
        ("backup@lan.test", "low-1", ""),
        ("cam@lan.test", "high-1", "X-Priority: 1 (Highest)\r\n"),
        ("ups@lan.test", "urgent-1", ""),
        ("cron@lan.test", "normal-2", ""),
        ("UPS@lan.test", "urgent-2", ""),
        ("cam@lan.test", "normal-3", "X-Priority: 3 (Normal)\r\n"),
    ];
    let ids: Vec<String> = sent
        .iter()
        .map(|(from, subject, header)| send(&relay, from, subject, header))
        .collect();
    let down = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        relay.command_ok(&["status"]).contains("link: down since")
    });
    assert!(down, "status never said the link is down");

    // The listing names each message's priority.
    let json = relay.command_ok(&["queue", "list", "--json"]);
    for (id, (_, subject, _)) in ids.iter().zip(&sent) {
        let level = subject.split('-').next().unwrap();
        let entry = json
            .lines()
            .find(|line| line.contains(&format!("\"id\":\"{id}\"")))
            .unwrap_or_else(|| panic!("{id} not listed: {json}"));
        assert!(
            entry.contains(&format!("\"priority\":\"{level}\"")),
            "{subject}: {entry}"
        );
    }
    let list = relay.command_ok(&["queue"]);
    assert!(list.contains("priority: urgent"), "{list}");
    assert!(relay
        .command_ok(&["queue", "show", &ids[2]])
        .contains("priority: high"));

    // The link comes back.
    let upstream = Smarthost::start_on(port);
    relay.command_ok(&["queue", "flush"]);
    let got = upstream
        .wait_for(sent.len(), DELIVERY)
        .unwrap_or_else(|| relay.fail("the queue did not drain"));
    let order: Vec<String> = got
        .iter()
        .map(|d| {
            let data = d.data_str();
            let subject = data
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or("?");
            subject.to_owned()
        })
        .collect();
    assert_eq!(
        order,
        ["urgent-1", "urgent-2", "high-1", "normal-1", "normal-2", "normal-3", "low-1"],
        "{}",
        relay.log()
    );
}
