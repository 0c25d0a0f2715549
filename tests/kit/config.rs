//! The relay's config file for a test: the fixed keys every test shares (127.0.0.1:0, a data
//! dir in the test's own temp dir, short retry times) and the sections a test varies. Writes
//! no file itself; `process` does.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Config sections the tests vary; everything else is fixed by `RelayProcess::start_with`.
#[derive(Clone, Default)]
pub(crate) struct RelayConfig {
    /// Port of the smarthost on 127.0.0.1 (`None`: no `[smarthost]` section).
    pub(crate) smarthost: Option<u16>,
    /// Ports of `[[smarthost]]` entries on 127.0.0.1 (plaintext), in the order tried.
    pub(crate) failover: Vec<u16>,
    /// Extra top-level keys, e.g. `max_recipients = 2`.
    pub(crate) top: String,
    /// Extra `[queue]` keys.
    pub(crate) queue: String,
    /// Extra `[timeouts]` keys.
    pub(crate) timeouts: String,
    /// `[smarthost]` `tls` and `ca_file` (default: `tls = "none"`).
    pub(crate) smarthost_tls: Option<(&'static str, PathBuf)>,
    /// Extra `[smarthost]` keys (credentials, OAuth2).
    pub(crate) smarthost_keys: String,
    /// Whole sections appended at the end, e.g. `[rate_limit]` and its keys.
    pub(crate) sections: String,
}

impl RelayConfig {
    pub(crate) fn with_smarthost(port: u16) -> Self {
        Self {
            smarthost: Some(port),
            ..Self::default()
        }
    }

    /// Several smarthosts on 127.0.0.1 (`[[smarthost]]`, plaintext), tried in this order.
    pub(crate) fn with_smarthosts(ports: &[u16]) -> Self {
        Self {
            failover: ports.to_vec(),
            ..Self::default()
        }
    }

    /// TLS to the smarthost (`"starttls"` or `"implicit"`), trusting the CA in `ca_file`.
    pub(crate) fn smarthost_tls(mut self, tls: &'static str, ca_file: PathBuf) -> Self {
        self.smarthost_tls = Some((tls, ca_file));
        self
    }

    /// Extra keys in the `[smarthost]` section.
    pub(crate) fn smarthost_keys(mut self, toml: &str) -> Self {
        self.smarthost_keys.push_str(toml);
        self.smarthost_keys.push('\n');
        self
    }

    pub(crate) fn top(mut self, toml: &str) -> Self {
        self.top.push_str(toml);
        self.top.push('\n');
        self
    }

    pub(crate) fn queue(mut self, toml: &str) -> Self {
        self.queue.push_str(toml);
        self.queue.push('\n');
        self
    }

    pub(crate) fn timeouts(mut self, toml: &str) -> Self {
        self.timeouts.push_str(toml);
        self.timeouts.push('\n');
        self
    }

    /// A whole section (`[name]` line included), appended after the others.
    pub(crate) fn section(mut self, toml: &str) -> Self {
        self.sections.push('\n');
        self.sections.push_str(toml);
        self.sections.push('\n');
        self
    }

    pub(crate) fn render(&self, data_dir: &Path) -> String {
        let mut toml = String::new();
        let _ = writeln!(toml, "hostname = \"outpost.test\"");
        let _ = writeln!(
            toml,
            "data_dir = {}",
            toml_string(&data_dir.to_string_lossy())
        );
        let _ = writeln!(toml, "listen = [\"127.0.0.1:0\"]");
        toml.push_str(&self.top);
        if let Some(port) = self.smarthost {
            let _ = writeln!(toml, "\n[smarthost]\naddress = \"127.0.0.1:{port}\"");
            match &self.smarthost_tls {
                Some((tls, ca)) => {
                    let ca = toml_string(&ca.to_string_lossy());
                    let _ = writeln!(toml, "tls = \"{tls}\"\nca_file = {ca}");
                }
                None => {
                    let _ = writeln!(toml, "tls = \"none\"");
                }
            }
            toml.push_str(&self.smarthost_keys);
        }
        for port in &self.failover {
            let _ = writeln!(
                toml,
                "\n[[smarthost]]\naddress = \"127.0.0.1:{port}\"\ntls = \"none\""
            );
        }
        let _ = writeln!(toml, "\n[queue]");
        // A test that sets its own retry times replaces these (TOML refuses duplicate keys).
        if !self.queue.contains("retry_min") {
            let _ = writeln!(toml, "retry_min = \"1s\"");
        }
        if !self.queue.contains("retry_max") {
            let _ = writeln!(toml, "retry_max = \"2s\"");
        }
        toml.push_str(&self.queue);
        let _ = writeln!(toml, "\n[timeouts]");
        // As with `[queue]`: a test's own values replace these.
        if !self.timeouts.contains("smarthost =") {
            let _ = writeln!(toml, "smarthost = \"10s\"");
        }
        if !self.timeouts.contains("smarthost_data_end") {
            let _ = writeln!(toml, "smarthost_data_end = \"10s\"");
        }
        toml.push_str(&self.timeouts);
        toml.push_str(&self.sections);
        toml
    }
}

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
