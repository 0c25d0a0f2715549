//! `[[priority]]`: which queued mail goes first when the link comes back. Rules match the
//! envelope sender, a recipient or a header field (`X-Priority`, `Importance` …); the first
//! rule that matches decides, and mail no rule matches is `normal`. Within a priority the queue
//! stays oldest first. Pure: patterns and rules over the envelope and the header fields
//! `message::HeaderWatch` collected; no I/O.

use std::fmt;

/// Delivery order: every due `urgent` message before any `high` one, and so on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Urgent,
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    /// All priorities, most urgent first.
    pub const ALL: [Self; 4] = [Self::Urgent, Self::High, Self::Normal, Self::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Urgent => "urgent",
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[priority]]` entry: every condition given must match (at least one is given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorityRule {
    /// Pattern for the envelope sender (`""` is the null sender).
    pub sender: Option<String>,
    /// Pattern that at least one envelope recipient must match.
    pub recipient: Option<String>,
    /// A header field name (matched without regard to case) and a pattern for its value
    /// (unfolded, trimmed); the rule matches if any field of that name matches.
    pub header: Option<(String, String)>,
    pub priority: Priority,
}

impl PriorityRule {
    fn matches(&self, sender: &str, recipients: &[String], fields: &[(String, String)]) -> bool {
        let sender_ok = self
            .sender
            .as_deref()
            .map_or(true, |p| pattern_matches(p, sender));
        let recipient_ok = self
            .recipient
            .as_deref()
            .map_or(true, |p| recipients.iter().any(|r| pattern_matches(p, r)));
        let header_ok = self.header.as_ref().map_or(true, |(name, value)| {
            fields
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name) && pattern_matches(value, v))
        });
        sender_ok && recipient_ok && header_ok
    }
}

/// The priority of a message: the first rule that matches, else `normal`.
pub fn priority_of(
    rules: &[PriorityRule],
    sender: &str,
    recipients: &[String],
    fields: &[(String, String)],
) -> Priority {
    rules
        .iter()
        .find(|rule| rule.matches(sender, recipients, fields))
        .map_or(Priority::Normal, |rule| rule.priority)
}

/// The header field names the rules look at (lowercase, each once).
pub fn watched_headers(rules: &[PriorityRule]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (name, _) in rules.iter().filter_map(|r| r.header.as_ref()) {
        let name = name.to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// A shell-style pattern: `*` matches any run of characters, everything else itself, ASCII
/// letters without regard to case (`*@pager.example`, `ups-*@site.example`, `1*`).
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    let pattern = pattern.as_bytes();
    let text = text.as_bytes();
    // Iterative matching with one backtrack point (the last `*`): linear in practice,
    // O(pattern × text) at worst, both bounded by the address and header limits.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p].eq_ignore_ascii_case(&text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        sender: Option<&str>,
        recipient: Option<&str>,
        header: Option<(&str, &str)>,
        priority: Priority,
    ) -> PriorityRule {
        PriorityRule {
            sender: sender.map(str::to_owned),
            recipient: recipient.map(str::to_owned),
            header: header.map(|(n, v)| (n.to_owned(), v.to_owned())),
            priority,
        }
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn patterns_match_like_the_shell_without_regard_to_case() {
        for (pattern, text) in [
            ("ups@site.example", "UPS@Site.Example"),
            ("*@pager.example", "ops@pager.example"),
            ("ups-*@site.example", "ups-rack2@site.example"),
            ("1*", "1 (Highest)"),
            ("*", ""),
            ("*high*", "very HIGH indeed"),
            ("a*b*c", "aXXbYYc"),
        ] {
            assert!(pattern_matches(pattern, text), "{pattern} vs {text}");
        }
        for (pattern, text) in [
            ("ups@site.example", "ups@site.example.org"),
            ("*@pager.example", "ops@pager.example.net"),
            ("1*", "2 (High)"),
            ("", "x"),
            ("a*b*c", "aXXbYY"),
        ] {
            assert!(!pattern_matches(pattern, text), "{pattern} vs {text}");
        }
    }

    #[test]
    fn the_first_matching_rule_decides_and_every_condition_must_hold() {
        let rules = [
            rule(
                Some("ups@*"),
                Some("*@pager.example"),
                None,
                Priority::Urgent,
            ),
            rule(None, None, Some(("X-Priority", "1*")), Priority::High),
            rule(Some("backup@*"), None, None, Priority::Low),
            rule(Some("ups@*"), None, None, Priority::High),
        ];
        let ops = ["ops@example.com".to_owned()];
        let pager = [
            "ops@example.com".to_owned(),
            "duty@pager.example".to_owned(),
        ];
        let none = fields(&[]);
        let x1 = fields(&[("x-priority", "1 (Highest)")]);
        assert_eq!(
            priority_of(&rules, "ups@site", &pager, &none),
            Priority::Urgent
        );
        assert_eq!(priority_of(&rules, "ups@site", &ops, &none), Priority::High);
        assert_eq!(priority_of(&rules, "cam@site", &ops, &x1), Priority::High);
        assert_eq!(
            priority_of(&rules, "backup@site", &ops, &x1),
            Priority::High
        );
        assert_eq!(
            priority_of(&rules, "backup@site", &ops, &none),
            Priority::Low
        );
        assert_eq!(
            priority_of(&rules, "cam@site", &ops, &none),
            Priority::Normal
        );
        assert_eq!(priority_of(&[], "ups@site", &pager, &x1), Priority::Normal);
        assert_eq!(watched_headers(&rules), ["x-priority"]);
    }
}
