//! Loading: reads the config file (or starts from the defaults), puts the command-line
//! `Overrides` on top and hands the result to validation. The only place that reads the config
//! file itself; never interprets a key's value.

use std::path::Path;

use super::effective::Config;
use super::file::{ConfigFile, Problem, SmarthostTables};
use super::validate::ConfigError;

/// Command-line flags that override the file (`serve --listen …`). Applied before validation,
/// so a bad flag is reported like a bad key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub listen: Vec<String>,
    pub data_dir: Option<String>,
    pub smarthost: Option<String>,
    pub hostname: Option<String>,
}

impl Overrides {
    /// Puts the flags that are set over the file's keys.
    pub fn apply(&self, file: &mut ConfigFile) {
        if !self.listen.is_empty() {
            file.listen = Some(self.listen.clone());
        }
        if let Some(dir) = &self.data_dir {
            file.data_dir = Some(dir.clone());
        }
        // `--smarthost` replaces the list with one smarthost: the first entry's settings (tls,
        // ca_file, credentials) with this address.
        if let Some(address) = &self.smarthost {
            let mut first = file
                .smarthost
                .take()
                .and_then(|tables| tables.sections().first().cloned())
                .unwrap_or_default();
            first.address = Some(address.clone());
            file.smarthost = Some(SmarthostTables::One(first));
        }
        if let Some(name) = &self.hostname {
            file.hostname = Some(name.clone());
        }
    }
}

impl Config {
    /// Reads and validates `path` (or only the defaults when `None`), with `overrides` on top.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let (origin, file) = Self::read(path, overrides)?;
        Self::from_file(&file).map_err(|problems| ConfigError { origin, problems })
    }

    /// For `queue`, `status` and `sendmail`, which need only `data_dir`, `hostname` and the
    /// limits: like `load`, but `[tls]`, `[[users]]` and the smarthost's credentials are not
    /// checked, so a user who may not read the key or password files can still run them.
    pub fn load_client(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let (origin, mut file) = Self::read(path, overrides)?;
        file.tls = None;
        file.users.clear();
        file.listen_tls = None;
        file.require_tls = None;
        // The listener's policy: clients do not serve SMTP (and `[[users]]` are gone).
        file.require_auth = None;
        file.relay_from = None;
        if let Some(tables) = file.smarthost.as_mut() {
            for smarthost in tables.sections_mut() {
                smarthost.ca_file = None;
                smarthost.username = None;
                smarthost.password_file = None;
                smarthost.oauth2_token_url = None;
                smarthost.oauth2_client_id = None;
                smarthost.oauth2_client_secret_file = None;
                smarthost.oauth2_refresh_token_file = None;
                smarthost.oauth2_scope = None;
            }
        }
        Self::from_file(&file).map_err(|problems| ConfigError { origin, problems })
    }

    /// Reads `path` (or starts from the defaults when `None`) and applies `overrides`: the
    /// common first stage of `load` and `load_client`.
    fn read(
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<(String, ConfigFile), ConfigError> {
        let (origin, mut file) = match path {
            None => ("defaults".to_owned(), ConfigFile::default()),
            Some(path) => {
                let origin = path.display().to_string();
                let parsed = std::fs::read_to_string(path)
                    .map_err(|e| Problem::new("(file)", format!("cannot read: {e}")))
                    .and_then(|text| ConfigFile::parse(&text));
                match parsed {
                    Ok(file) => (origin, file),
                    Err(problem) => {
                        return Err(ConfigError {
                            origin,
                            problems: vec![problem],
                        })
                    }
                }
            }
        };
        overrides.apply(&mut file);
        Ok((origin, file))
    }
}
