//! `ConfigFile`: the TOML file as written, key for key (stage one of two). Serde checks the
//! shape (known keys, value types); `Config::from_file` does the rest. Reads no files itself.

use std::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The config file's keys, exactly as in TOML and the docs. Every key is optional: a missing
/// key takes its embedded default in `Config::from_file`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub hostname: Option<String>,
    pub data_dir: Option<String>,
    pub listen: Option<Vec<String>>,
    /// Implicit-TLS listeners (RFC 8314), e.g. `["0.0.0.0:465"]`; needs `[tls]`.
    pub listen_tls: Option<Vec<String>>,
    /// MAIL before STARTTLS gets 530 5.7.0.
    pub require_tls: Option<bool>,
    pub relay_from: Option<Vec<String>>,
    pub max_message_size: Option<u64>,
    pub max_recipients: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_errors: Option<u64>,
    /// Where log lines go: `auto`, `stderr`, `journal` or `syslog`.
    pub log: Option<String>,
    /// More `Received:` fields than this: refused as a mail loop (554 5.4.6).
    pub max_hops: Option<u64>,
    /// Every client must AUTH before MAIL (530 5.7.0 otherwise).
    pub require_auth: Option<bool>,
    /// `[smarthost]` (one table) or `[[smarthost]]` (several, tried in order).
    pub smarthost: Option<SmarthostTables>,
    pub tls: Option<TlsSection>,
    /// `[[users]]`: who may AUTH (over TLS only).
    #[serde(default)]
    pub users: Vec<UserSection>,
    #[serde(default)]
    pub queue: QueueSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    /// `[notify]`: when `admin` is told about the queue.
    #[serde(default)]
    pub notify: NotifySection,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: Option<MetricsSection>,
    /// `[rate_limit]`: per-sender limits on the way in.
    pub rate_limit: Option<RateLimitSection>,
    /// `[[priority]]`: which queued mail goes first.
    #[serde(default)]
    pub priority: Vec<PrioritySection>,
    /// `[coalesce]`: alert storms delivered as digests.
    pub coalesce: Option<CoalesceSection>,
    // Local names and the mail domain (`config::local`).
    /// Qualifies bare names; local recipients are at it.
    pub domain: Option<String>,
    /// `[aliases]`: each local name with its address or addresses.
    pub aliases: Option<std::collections::BTreeMap<String, AliasTargets>>,
    /// An aliases(5) file (addresses only).
    pub aliases_file: Option<String>,
    /// Where mail for a local name without an alias goes.
    pub admin: Option<String>,
}

/// One `[aliases]` value: `root = "ops@example.com"` or `team = ["a@x", "b@x"]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum AliasTargets {
    One(String),
    Many(Vec<String>),
}

impl AliasTargets {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        }
    }
}

/// The smarthost key as written: one `[smarthost]` table, or an array of `[[smarthost]]` tables
/// in the order they are tried. Kept apart so that problems name the key as the operator wrote
/// it: `smarthost.address` or `smarthost[2].address`.
// Parsed once at load and dropped: boxing `One` would only complicate every match on it.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmarthostTables {
    One(SmarthostSection),
    Many(Vec<SmarthostSection>),
}

impl SmarthostTables {
    pub fn sections(&self) -> &[SmarthostSection] {
        match self {
            Self::One(section) => std::slice::from_ref(section),
            Self::Many(sections) => sections,
        }
    }

    pub fn sections_mut(&mut self) -> &mut [SmarthostSection] {
        match self {
            Self::One(section) => std::slice::from_mut(section),
            Self::Many(sections) => sections,
        }
    }

    /// The config key of entry `index` (0-based), numbered from 1 as in `outpost status`.
    pub fn key(&self, index: usize) -> String {
        match self {
            Self::One(_) => "smarthost".to_owned(),
            Self::Many(_) => format!("smarthost[{}]", index + 1),
        }
    }
}

/// A table or an array of tables, each with `SmarthostSection`'s own (derived) rules, so
/// unknown keys and wrong types are reported exactly as for any other section. (An untagged
/// enum would replace those messages with "did not match any variant".)
impl<'de> Deserialize<'de> for SmarthostTables {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TablesVisitor;
        impl<'de> Visitor<'de> for TablesVisitor {
            type Value = SmarthostTables;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a [smarthost] table or [[smarthost]] tables")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                SmarthostSection::deserialize(MapAccessDeserializer::new(map))
                    .map(SmarthostTables::One)
            }

            // Each element goes through this same visitor (so through the one `visit_map`
            // above): one copy of the table's deserializer in the binary, not two.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut sections = Vec::new();
                while let Some(element) = seq.next_element::<SmarthostTables>()? {
                    let SmarthostTables::One(section) = element else {
                        return Err(de::Error::custom("an array inside [[smarthost]]"));
                    };
                    sections.push(section);
                }
                Ok(SmarthostTables::Many(sections))
            }
        }
        deserializer.deserialize_any(TablesVisitor)
    }
}

/// One `[smarthost]` / `[[smarthost]]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SmarthostSection {
    pub address: Option<String>,
    pub tls: Option<String>,
    /// PEM CA certificates that replace the built-in web PKI roots.
    pub ca_file: Option<String>,
    pub username: Option<String>,
    /// File holding the smarthost password (read at start, trailing newline stripped).
    pub password_file: Option<String>,
    /// OAuth 2.0 instead of a password: the token endpoint (https://…).
    pub oauth2_token_url: Option<String>,
    pub oauth2_client_id: Option<String>,
    /// File holding the client secret (confidential clients only; read at start).
    pub oauth2_client_secret_file: Option<String>,
    /// File holding the refresh token; read at each refresh, rewritten when it rotates.
    pub oauth2_refresh_token_file: Option<String>,
    pub oauth2_scope: Option<String>,
    /// The sender this smarthost requires: MAIL FROM and From: are rewritten to it.
    pub from: Option<String>,
    /// The most sessions to this smarthost at once while mail is due.
    pub connections: Option<u64>,
}

/// `[tls]`: the certificate and key outpost presents to its clients.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// One `[[users]]` entry.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    pub name: Option<String>,
    /// SHA-512-crypt (`$6$…`, `mkpasswd -m sha-512`, `openssl passwd -6`).
    pub password_hash: Option<String>,
}

/// `[queue]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    pub retry_min: Option<String>,
    pub retry_max: Option<String>,
    pub max_age: Option<String>,
    pub max_bytes: Option<u64>,
    pub failed_retention: Option<String>,
}

/// `[store]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub cache_bytes: Option<u64>,
}

/// `[timeouts]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    pub command: Option<String>,
    pub data: Option<String>,
    pub smarthost: Option<String>,
    pub smarthost_data_end: Option<String>,
}

/// `[notify]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    pub queue_age: Option<String>,
    /// Percent of `[queue] max_bytes`.
    pub queue_fill: Option<u64>,
    pub interval: Option<String>,
}

/// `[metrics]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `IP:PORT` serving `GET /metrics` (Prometheus text format).
    pub listen: Option<String>,
}

/// One thing wrong with the configuration, named by its key (`queue.retry_min`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl ConfigFile {
    /// Parses TOML text. Serde stops at the first shape error, so this returns one problem;
    /// its key is recovered from the error's position because toml's message does not name it.
    pub fn parse(text: &str) -> Result<Self, Problem> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_owned();
            let Some(span) = e.span() else {
                return Problem::new("(file)", message);
            };
            let line = 1 + text
                .get(..span.start)
                .map_or(0, |t| t.matches('\n').count());
            let message = if message.is_empty() {
                format!("line {line}: TOML syntax error")
            } else {
                format!("line {line}: {message}")
            };
            Problem::new(
                key_at(text, span.start).unwrap_or_else(|| "(file)".to_owned()),
                message,
            )
        })
    }
}

/// Best-effort dotted key (`queue.retry_min`) for the TOML position `pos`: the key of the
/// nearest `key =` line at or before `pos`, prefixed by the enclosing `[section]`.
fn key_at(text: &str, pos: usize) -> Option<String> {
    // The rest of the line the position is on counts too (unknown keys point at the key).
    let line_end = text.get(pos..)?.find('\n').map_or(text.len(), |n| pos + n);
    let upto = text.get(..line_end)?;
    let mut key = None;
    let mut section = None;
    for line in upto.lines().rev().map(str::trim) {
        if line.starts_with('[') {
            section = Some(line.trim_matches(|c| c == '[' || c == ']').trim());
            break;
        }
        if key.is_none() && !line.starts_with('#') {
            key = line
                .split_once('=')
                .map(|(name, _)| name.trim().trim_matches('"'));
        }
    }
    match (section, key) {
        (Some(section), Some(key)) => Some(format!("{section}.{key}")),
        (None, Some(key)) => Some(key.to_owned()),
        (Some(section), None) => Some(section.to_owned()),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_top_level_key_is_named() {
        let p = ConfigFile::parse("hostname = \"a\"\nlisten_on = [\"x\"]\n").unwrap_err();
        assert_eq!(p.key, "listen_on");
        assert!(p.message.contains("unknown field `listen_on`"), "{p}");
        assert!(p.message.contains("line 2"), "{p}");
    }

    #[test]
    fn unknown_key_in_section_is_named_with_section() {
        let p = ConfigFile::parse("[queue]\nretry_min = \"1s\"\nretry_mix = \"2s\"\n").unwrap_err();
        assert_eq!(p.key, "queue.retry_mix");
    }

    #[test]
    fn wrong_type_names_key() {
        let p = ConfigFile::parse("[timeouts]\ncommand = 5\n").unwrap_err();
        assert_eq!(p.key, "timeouts.command");
        assert!(p.message.contains("expected a string"), "{p}");
    }

    #[test]
    fn wrong_type_in_multiline_array_names_key() {
        let p = ConfigFile::parse("listen = [\n  \"127.0.0.1:25\",\n  25,\n]\n").unwrap_err();
        assert_eq!(p.key, "listen");
    }

    #[test]
    fn unknown_section_is_named() {
        let p = ConfigFile::parse("[tsl]\ncert = \"x\"\n").unwrap_err();
        assert!(p.message.contains("unknown field `tsl`"), "{p}");
    }

    #[test]
    fn unknown_key_in_users_is_named() {
        let p = ConfigFile::parse("[[users]]\nname = \"a\"\npassword = \"x\"\n").unwrap_err();
        assert!(p.message.contains("unknown field `password`"), "{p}");
    }

    #[test]
    fn smarthost_is_one_table_or_an_array_of_tables() {
        let one = ConfigFile::parse("[smarthost]\naddress = \"a:25\"\n").unwrap();
        let Some(SmarthostTables::One(section)) = &one.smarthost else {
            panic!("{one:?}");
        };
        assert_eq!(section.address.as_deref(), Some("a:25"));
        let many = ConfigFile::parse(
            "[[smarthost]]\naddress = \"a:25\"\n[[smarthost]]\naddress = \"b:587\"\n",
        )
        .unwrap();
        let tables = many.smarthost.unwrap();
        let addresses: Vec<_> = tables
            .sections()
            .iter()
            .map(|s| s.address.as_deref().unwrap())
            .collect();
        assert_eq!(addresses, ["a:25", "b:587"]);
        assert_eq!(tables.key(1), "smarthost[2]");
    }

    #[test]
    fn unknown_key_in_a_smarthost_array_entry_is_named() {
        let p = ConfigFile::parse(
            "[[smarthost]]\naddress = \"a:25\"\n[[smarthost]]\naddres = \"b:25\"\n",
        )
        .unwrap_err();
        assert!(p.message.contains("unknown field `addres`"), "{p}");
        assert_eq!(p.key, "smarthost.addres");
        let p = ConfigFile::parse("smarthost = \"a:25\"\n").unwrap_err();
        assert_eq!(p.key, "smarthost");
        let p = ConfigFile::parse("smarthost = [[{ address = \"a:25\" }]]\n").unwrap_err();
        assert!(p.message.contains("an array inside [[smarthost]]"), "{p}");
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(ConfigFile::parse("").unwrap(), ConfigFile::default());
    }
}

/// `[rate_limit]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Messages one envelope sender may hand over per `window` (a burst of that many, then
    /// evenly spread).
    pub per_sender: Option<u64>,
    pub window: Option<String>,
}

/// `[coalesce]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CoalesceSection {
    /// Messages queued within this span of the first may share a digest (default 1h).
    pub window: Option<String>,
    /// Most originals in one digest (default 100).
    pub max_parts: Option<u64>,
    /// Fewest messages worth a digest (default 2).
    pub min: Option<u64>,
}

/// One `[[priority]]` entry.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PrioritySection {
    /// Pattern for the envelope sender (`*` wildcards; `"<>"` is the null sender).
    pub sender: Option<String>,
    /// Pattern that one of the envelope recipients must match.
    pub recipient: Option<String>,
    /// A header field name, with `value` (a pattern, default `*`) for its value.
    pub header: Option<String>,
    pub value: Option<String>,
    /// `urgent`, `high`, `normal` or `low`.
    pub level: Option<String>,
}
