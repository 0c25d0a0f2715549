//! `outpost status --json`: what `outpost status` says, as one JSON object for monitoring
//! (`version` is the format's version, raised when a field changes meaning or goes away). A pure
//! function of the link report and the queue summary; no I/O.

use std::fmt::Write as _;

use crate::forward::LinkReport;
use crate::store::{Damage, Usage};

use super::render::{json_str, MessageState, QueueSummary, JSON_VERSION};

/// `{"version":1,"outpost":"…","link":{…},"smarthosts":[…],"queue":{…},"totals":{…}}`.
pub fn render_status_json(
    link: &LinkReport,
    summary: &QueueSummary,
    usage: Usage,
    damage: Damage,
) -> String {
    let opt = |v: Option<u64>| v.map_or("null".to_owned(), |v| v.to_string());
    let up = |v: Option<bool>| v.map_or("null".to_owned(), |v| v.to_string());
    let text = |v: Option<&str>| v.map_or("null".to_owned(), json_str);
    let mut out = format!(
        "{{\"version\":{JSON_VERSION},\"outpost\":{},\"link\":{{\"up\":{},\"since_unix\":{},\
         \"ever_reached\":{},\"last_success_unix\":{},\"last_error\":{}}},\"smarthosts\":[",
        json_str(env!("CARGO_PKG_VERSION")),
        up(link.up),
        link.since_unix,
        link.ever_reached,
        opt(link.last_success_unix),
        text(link.last_error.as_deref()),
    );
    for (n, route) in link.smarthosts.iter().enumerate() {
        let _ = write!(
            out,
            "{}{{\"address\":{},\"up\":{},\"since_unix\":{},\"current\":{},\"sent\":{},\
             \"last_error\":{}}}",
            if n > 0 { "," } else { "" },
            json_str(&route.address),
            up(route.up),
            route.since_unix,
            link.current == Some(n),
            route.sent,
            text(route.last_error.as_deref()),
        );
    }
    out.push_str("],\"queue\":{\"messages\":");
    out.push_str(&usage.messages.to_string());
    let _ = write!(out, ",\"bytes\":{}", usage.bytes);
    let _ = write!(
        out,
        ",\"oldest_age_secs\":{}",
        opt(summary.oldest_age_ms.map(|ms| ms / 1000))
    );
    for (state, count) in MessageState::ALL.iter().zip(summary.messages) {
        let _ = write!(out, ",\"{}\":{count}", state.as_str());
    }
    let _ = write!(
        out,
        "}},\"totals\":{{\"sent_recipients\":{},\"deferred_recipients\":{},\
         \"bounced_recipients\":{}}}",
        link.sent, link.deferred, link.bounced
    );
    let _ = writeln!(
        out,
        ",\"store\":{{\"recovered\":{},\"quarantined\":{},\"lost\":{},\"bad_records\":{}}}}}",
        damage.recovered, damage.quarantined, damage.lost, damage.bad_records
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::SmarthostReport;

    #[test]
    fn status_json_has_the_version_and_every_part() {
        let link = LinkReport {
            up: Some(false),
            since_unix: 5,
            last_error: Some("connection \"refused\"".into()),
            bounced: 2,
            smarthosts: vec![SmarthostReport {
                address: "mx.example:587".into(),
                up: Some(false),
                ..SmarthostReport::default()
            }],
            ..LinkReport::default()
        };
        let summary = QueueSummary {
            messages: [1, 2, 0, 0],
            bytes: [10, 20, 0, 0],
            oldest_age_ms: Some(61_000),
        };
        let usage = Usage {
            messages: 3,
            bytes: 30,
        };
        let damage = Damage {
            recovered: 4,
            ..Damage::default()
        };
        let json = render_status_json(&link, &summary, usage, damage);
        assert!(json.starts_with("{\"version\":1,\"outpost\":\""), "{json}");
        for part in [
            "\"link\":{\"up\":false,\"since_unix\":5,\"ever_reached\":false,",
            "\"last_success_unix\":null,\"last_error\":\"connection \\\"refused\\\"\"}",
            "\"smarthosts\":[{\"address\":\"mx.example:587\",\"up\":false,",
            "\"queue\":{\"messages\":3,\"bytes\":30,\"oldest_age_secs\":61,\"pending\":1,",
            "\"deferred\":2,\"held\":0,\"failed\":0}",
            "\"bounced_recipients\":2}",
            ",\"store\":{\"recovered\":4,\"quarantined\":0,\"lost\":0,\"bad_records\":0}}\n",
        ] {
            assert!(json.contains(part), "{part} in {json}");
        }
    }
}
