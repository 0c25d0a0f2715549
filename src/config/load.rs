//! Loading: finds the config file (`--config`, else `OUTPOST_CONFIG`, else
//! `/etc/outpost/outpost.toml` if it exists, else the embedded defaults), reads it, resolves its
//! relative paths against its own directory, puts the command-line `Overrides` on top and hands
//! the result to validation. The only place that reads the config file itself; never
//! interprets a key's value beyond making a path absolute.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

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

/// The system-wide config file, used when neither `--config` nor `OUTPOST_CONFIG` names one.
pub const SYSTEM_CONFIG: &str = "/etc/outpost/outpost.toml";

/// The environment variable that names the config file when `--config` does not.
pub const CONFIG_ENV: &str = "OUTPOST_CONFIG";

/// Which config file every command uses: `flag` (`--config`), else `env` (`OUTPOST_CONFIG`,
/// ignored when empty), else `system` when `system_exists`, else none (the embedded defaults).
/// Pure: the caller looks at the environment and the file system.
pub fn choose(
    flag: Option<&Path>,
    env: Option<OsString>,
    system: &Path,
    system_exists: bool,
) -> Option<PathBuf> {
    if let Some(flag) = flag {
        return Some(flag.to_path_buf());
    }
    if let Some(env) = env.filter(|e| !e.is_empty()) {
        return Some(PathBuf::from(env));
    }
    system_exists.then(|| system.to_path_buf())
}

/// `choose` with this process's `OUTPOST_CONFIG` and the system file.
pub fn locate(flag: Option<&Path>) -> Option<PathBuf> {
    let system = Path::new(SYSTEM_CONFIG);
    choose(flag, std::env::var_os(CONFIG_ENV), system, system.is_file())
}

/// `path` as written in the config file at `config`: a relative one is taken from the config
/// file's directory, never the caller's working directory.
fn beside(config: &Path, path: &str) -> String {
    let path = Path::new(path);
    if path.is_absolute() || path.as_os_str().is_empty() {
        return path.display().to_string();
    }
    let dir = config.parent().unwrap_or(Path::new(""));
    let dir = if dir.as_os_str().is_empty() {
        std::env::current_dir().unwrap_or_default()
    } else {
        std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
    };
    dir.join(path).display().to_string()
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
                    Ok(mut file) => {
                        file.data_dir = file.data_dir.map(|d| beside(path, &d));
                        file.aliases_file = file.aliases_file.map(|f| beside(path, &f));
                        (origin, file)
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_is_the_flag_then_the_environment_then_the_system_file() {
        let system = Path::new("/etc/outpost/outpost.toml");
        let flag = Some(Path::new("my.toml"));
        let env = || Some(OsString::from("/srv/env.toml"));
        assert_eq!(
            choose(flag, env(), system, true),
            Some(PathBuf::from("my.toml"))
        );
        assert_eq!(
            choose(None, env(), system, true),
            Some(PathBuf::from("/srv/env.toml"))
        );
        assert_eq!(
            choose(None, Some(OsString::new()), system, true),
            Some(system.to_path_buf())
        );
        assert_eq!(choose(None, None, system, true), Some(system.to_path_buf()));
        assert_eq!(choose(None, None, system, false), None);
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_files_directory() {
        let config = Path::new("/etc/outpost/outpost.toml");
        assert_eq!(beside(config, "queue"), "/etc/outpost/queue");
        assert_eq!(beside(config, "./q/../q"), "/etc/outpost/./q/../q");
        assert_eq!(beside(config, "/var/lib/outpost"), "/var/lib/outpost");
    }
}
