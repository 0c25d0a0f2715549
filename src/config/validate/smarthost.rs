//! Validation of `[smarthost]` / `[[smarthost]]`: the address, the TLS policy, the CA file and
//! the credentials (a password or OAuth 2.0), each problem named by its entry
//! (`smarthost[2].address`). Reads the secret files the entries name; never connects anywhere.

use std::path::PathBuf;

use super::{dotted, Validator};
use crate::config::check::is_host_port;
use crate::config::effective::{
    Secret, Smarthost, SmarthostAuth, SmarthostOAuth2, DEFAULT_SMARTHOST_CONNECTIONS,
    MAX_SMARTHOSTS, MAX_SMARTHOST_CONNECTIONS,
};
use crate::config::file::{SmarthostSection, SmarthostTables};
use crate::config::token_url::TokenUrl;
use crate::smtp::address::Mailbox;
use crate::smtp::client::TlsPolicy;

impl Validator {
    /// Every entry, in order; problems name the entry (`smarthost[2].address`).
    pub(super) fn smarthosts(
        &mut self,
        tables: Option<&SmarthostTables>,
    ) -> heapless::Vec<Smarthost, MAX_SMARTHOSTS> {
        let mut out = heapless::Vec::new();
        let Some(tables) = tables else {
            return out;
        };
        let sections = tables.sections();
        if sections.len() > MAX_SMARTHOSTS {
            self.problem(
                "smarthost",
                format!(
                    "{} entries; at most {MAX_SMARTHOSTS} are tried in order",
                    sections.len()
                ),
            );
        }
        let mut seen: Vec<(String, &str)> = Vec::new();
        for (index, section) in sections.iter().enumerate() {
            let key = tables.key(index);
            if let Some(address) = section.address.as_deref() {
                if let Some((other, _)) = seen.iter().find(|(_, a)| *a == address) {
                    self.problem(
                        &dotted(&key, "address"),
                        format!("{address:?} is already {other}: each route is tried once"),
                    );
                }
                seen.push((key.clone(), address));
            }
            if let Some(smarthost) = self.smarthost(&key, section) {
                // Entries past the bound are still checked, so that every problem is reported,
                // but not kept: their count is a problem already.
                let _ = out.push(smarthost);
            }
        }
        out
    }

    /// One entry; `key` is `smarthost` or `smarthost[N]`.
    fn smarthost(&mut self, key: &str, section: &SmarthostSection) -> Option<Smarthost> {
        let address = self.smarthost_address(key, section.address.as_deref());
        let tls = self.smarthost_tls(key, section.tls.as_deref());
        let ca_file = match section.ca_file.as_deref() {
            None => Some(None),
            Some(path) => self
                .readable_file(&dotted(key, "ca_file"), Some(path))
                .map(Some),
        };
        let (auth, oauth2) = if section.oauth2_token_url.is_some() {
            (Some(None), self.smarthost_oauth2(key, section, tls))
        } else {
            self.oauth2_keys_without_token_url(key, section);
            (self.smarthost_auth(key, section, tls), Some(None))
        };
        let connections = self.count(
            &dotted(key, "connections"),
            section.connections,
            DEFAULT_SMARTHOST_CONNECTIONS,
            MAX_SMARTHOST_CONNECTIONS,
        );
        Some(Smarthost {
            address: address?,
            tls: tls?,
            ca_file: ca_file?,
            auth: auth?,
            oauth2: oauth2?,
            from: self.smarthost_from(key, section.from.as_deref())?,
            connections,
        })
    }

    /// `from`: one ASCII mailbox (`local@domain`), written without angle brackets.
    fn smarthost_from(&mut self, key: &str, value: Option<&str>) -> Option<Option<String>> {
        let Some(from) = value else {
            return Some(None);
        };
        match Mailbox::parse(from, false) {
            Some(mailbox) if !mailbox.is_bare_postmaster() => Some(Some(from.to_owned())),
            _ => {
                self.problem(
                    &dotted(key, "from"),
                    format!("{from:?} is not an ASCII address local@domain (no <>, no name)"),
                );
                None
            }
        }
    }

    /// `address`: `host:port`, the port required.
    fn smarthost_address(&mut self, key: &str, value: Option<&str>) -> Option<String> {
        match value {
            None => {
                self.problem(
                    &dotted(key, "address"),
                    "missing: [smarthost] needs address = \"host:port\"".to_owned(),
                );
                None
            }
            Some(address) if !is_host_port(address) => {
                self.problem(
                    &dotted(key, "address"),
                    format!("{address:?} is not host:port (a port is required)"),
                );
                None
            }
            Some(address) => Some(address.to_owned()),
        }
    }

    /// `tls`: `starttls` (the default), `tls` (implicit TLS) or `none`.
    fn smarthost_tls(&mut self, key: &str, value: Option<&str>) -> Option<TlsPolicy> {
        match value {
            None | Some("starttls") => Some(TlsPolicy::StartTls),
            Some("tls") => Some(TlsPolicy::Implicit),
            Some("none") => Some(TlsPolicy::None),
            Some(other) => {
                self.problem(
                    &dotted(key, "tls"),
                    format!("{other:?} is not one of \"none\", \"starttls\", \"tls\""),
                );
                None
            }
        }
    }

    /// Without `oauth2_token_url`, every other `oauth2_*` key is a problem.
    fn oauth2_keys_without_token_url(&mut self, key: &str, section: &SmarthostSection) {
        for (name, value) in [
            ("oauth2_client_id", &section.oauth2_client_id),
            (
                "oauth2_client_secret_file",
                &section.oauth2_client_secret_file,
            ),
            (
                "oauth2_refresh_token_file",
                &section.oauth2_refresh_token_file,
            ),
            ("oauth2_scope", &section.oauth2_scope),
        ] {
            if value.is_some() {
                self.problem(
                    &dotted(key, name),
                    "needs oauth2_token_url (the token endpoint)".to_owned(),
                );
            }
        }
    }

    /// `oauth2_token_url` is set: `username`, `oauth2_client_id` and
    /// `oauth2_refresh_token_file` are required, `password_file` is refused, and so is
    /// `tls = "none"` (the token would go in clear).
    fn smarthost_oauth2(
        &mut self,
        key: &str,
        section: &SmarthostSection,
        tls: Option<TlsPolicy>,
    ) -> Option<Option<SmarthostOAuth2>> {
        let token_url = self.oauth2_token_url(key, section, tls);
        let mut required = |name: &str, value: &Option<String>| match value {
            Some(value) if !value.is_empty() => Some(value.clone()),
            _ => {
                self.problem(
                    &dotted(key, name),
                    "missing: oauth2_token_url needs it".to_owned(),
                );
                None
            }
        };
        let username = required("username", &section.username);
        let client_id = required("oauth2_client_id", &section.oauth2_client_id);
        let refresh_token_file = required(
            "oauth2_refresh_token_file",
            &section.oauth2_refresh_token_file,
        );
        let refresh_token_file = refresh_token_file.and_then(|path| {
            self.secret_file(key, "oauth2_refresh_token_file", &path)
                .map(|_| PathBuf::from(path))
        });
        let client_secret = match &section.oauth2_client_secret_file {
            None => Some(None),
            Some(path) => self
                .secret_file(key, "oauth2_client_secret_file", path)
                .map(Some),
        };
        Some(Some(SmarthostOAuth2 {
            username: username?,
            token_url: token_url?,
            client_id: client_id?,
            client_secret_file: section
                .oauth2_client_secret_file
                .as_ref()
                .map(PathBuf::from),
            client_secret: client_secret?,
            refresh_token_file: refresh_token_file?,
            scope: section.oauth2_scope.clone().filter(|s| !s.is_empty()),
        }))
    }

    /// The checks that refuse an OAuth 2.0 entry as a whole (`password_file` beside it,
    /// `tls = "none"`), then `oauth2_token_url` itself, parsed.
    fn oauth2_token_url(
        &mut self,
        key: &str,
        section: &SmarthostSection,
        tls: Option<TlsPolicy>,
    ) -> Option<TokenUrl> {
        let mut ok = true;
        if section.password_file.is_some() {
            self.problem(
                &dotted(key, "password_file"),
                "cannot be combined with oauth2_token_url: choose a password or OAuth2".to_owned(),
            );
            ok = false;
        }
        if tls == Some(TlsPolicy::None) {
            self.problem(
                &dotted(key, "oauth2_token_url"),
                "AUTH would send the access token in clear: set tls = \"starttls\" or \"tls\""
                    .to_owned(),
            );
            ok = false;
        }
        let text = section.oauth2_token_url.as_deref().unwrap_or_default();
        match TokenUrl::parse(text) {
            Ok(url) if ok => Some(url),
            Ok(_) => None,
            Err(e) => {
                self.problem(&dotted(key, "oauth2_token_url"), e);
                None
            }
        }
    }

    /// A file holding one secret (a token, a client secret): read now, trimmed, not empty.
    fn secret_file(&mut self, key: &str, name: &str, path: &str) -> Option<Secret> {
        match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim().to_owned())),
            Ok(_) => {
                self.problem(&dotted(key, name), format!("{path:?} is empty"));
                None
            }
            Err(e) => {
                self.problem(&dotted(key, name), format!("cannot read {path:?}: {e}"));
                None
            }
        }
    }

    /// `username` + `password_file`, both or neither; never with `tls = "none"`.
    fn smarthost_auth(
        &mut self,
        key: &str,
        section: &SmarthostSection,
        tls: Option<TlsPolicy>,
    ) -> Option<Option<SmarthostAuth>> {
        let (username, password_file) = match (&section.username, &section.password_file) {
            (None, None) => return Some(None),
            (Some(username), Some(file)) => (username, file),
            (Some(_), None) => {
                self.problem(
                    &dotted(key, "password_file"),
                    "missing: username needs it".to_owned(),
                );
                return None;
            }
            (None, Some(_)) => {
                self.problem(
                    &dotted(key, "username"),
                    "missing: password_file needs it".to_owned(),
                );
                return None;
            }
        };
        if tls == Some(TlsPolicy::None) {
            self.problem(
                &dotted(key, "username"),
                "AUTH would send the password in clear: set tls = \"starttls\" or \"tls\""
                    .to_owned(),
            );
            return None;
        }
        let password = self.password_file(key, password_file)?;
        Some(Some(SmarthostAuth {
            username: username.clone(),
            password_file: PathBuf::from(password_file),
            password,
        }))
    }

    /// `password_file`: the password is the file without its final line ending (kept as
    /// written otherwise: spaces may be part of a password).
    fn password_file(&mut self, key: &str, path: &str) -> Option<Secret> {
        let password = match std::fs::read_to_string(path) {
            Ok(text) => {
                let text = text.strip_suffix('\n').unwrap_or(&text);
                text.strip_suffix('\r').unwrap_or(text).to_owned()
            }
            Err(e) => {
                self.problem(
                    &dotted(key, "password_file"),
                    format!("cannot read {path:?}: {e}"),
                );
                return None;
            }
        };
        if password.is_empty() {
            self.problem(&dotted(key, "password_file"), format!("{path:?} is empty"));
            return None;
        }
        Some(Secret::new(password))
    }
}
