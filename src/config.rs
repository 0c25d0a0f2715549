//! `Config`: the validated, typed configuration and the embedded defaults (stage two of two).
//! Everything is parsed and checked here, once; nothing downstream parses config text again.
//! Reads the config file, the files it names and the kernel hostname, nothing else; never
//! async.
//!
//! - [`file`](mod@file): `ConfigFile`, the TOML keys as written (stage one).
//! - `validate`: `Config::from_file`, every key typed and checked, problems named by key.
//! - `effective`: `Config` and its parts, the values the daemon runs on, and their TOML.
//! - `defaults`: `Config::default()`, the embedded defaults.
//! - `load`: finding and reading the file, and the command-line `Overrides`.
//! - `local`: `domain`, `[aliases]`, `aliases_file` and `admin` (local names).
//! - `check`: the syntax checks (domain names, `host:port`, SHA-512-crypt strings).
//! - `token_url`: the OAuth token endpoint's URL, parsed once.

mod check;
mod defaults;
mod effective;
pub mod file;
mod load;
mod local;
mod token_url;
mod validate;

pub use self::effective::{
    Config, NotifyConfig, QueueConfig, Secret, Smarthost, SmarthostAuth, SmarthostOAuth2,
    StoreConfig, Timeouts, TlsFiles, User, MAX_SMARTHOSTS,
};
pub use self::file::Problem;
pub use self::load::{choose, locate, Overrides, CONFIG_ENV, SYSTEM_CONFIG};
pub use self::local::LocalNames;
pub use self::token_url::TokenUrl;
pub use self::validate::ConfigError;

#[cfg(test)]
mod tests;
