//! Reload (`outpost reload`, SIGHUP): re-reads the config the daemon started with (the same
//! file and command-line flags), refuses one with problems with the same per-key messages as at
//! start, keeps the old values of the keys only a restart applies (one warning naming each),
//! and hands the rest to the shared state (`Shared::replace`). Tells the service manager
//! `RELOADING=1` before and `READY=1` after.

use std::rc::Rc;

use log::{error, info, warn};

use super::{readiness, start};
use crate::config::{Config, ConfigError};
use crate::sd_notify::Notifier;
use crate::shared::{Reloader, Shared};
use crate::tls;
use crate::wait::Wake;

/// Reads the config again, as the daemon read it at start.
pub type Loader = Box<dyn Fn() -> Result<Config, ConfigError>>;

/// The daemon's `Shared::reload`.
pub(super) fn reloader(load: Loader, notifier: Rc<Notifier>) -> Reloader {
    Box::new(move |shared| {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
        notifier.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
        let result = reload(shared, &load);
        match &result {
            Ok(summary) => info!("{}", summary.trim_end()),
            Err(problems) => {
                for line in problems.lines() {
                    error!("reload refused, the old configuration stays in force: {line}");
                }
            }
        }
        readiness::ready(&notifier, shared);
        result
    })
}

/// SIGHUP: a reload each time `hup` is poked (the outcome is logged).
pub(super) async fn on_signal(hup: Rc<Wake>, shared: Rc<Shared>) {
    loop {
        hup.wait().await;
        let _ = shared.reload();
    }
}

/// Loads, checks and applies the config; the problems, one a line, when it is refused.
fn reload(shared: &Shared, load: &Loader) -> Result<String, String> {
    let mut config = load().map_err(|e| {
        let origin = &e.origin;
        e.problems
            .iter()
            .map(|problem| format!("config error: {origin}: {problem}\n"))
            .collect::<String>()
    })?;
    let refused = |e: &dyn std::fmt::Display| format!("{e}\n");
    let server_tls = match &config.tls {
        Some(files) => {
            let built = tls::server_config(&files.cert, &files.key);
            Some(built.map_err(|e| refused(&super::DaemonError::Tls(e)))?)
        }
        None => None,
    };
    let client_tls = start::smarthost_client_configs(&config).map_err(|e| refused(&e))?;
    let kept = keep_restart_only(&shared.config(), &mut config);
    if config.tls.is_none() && !config.listen_tls.is_empty() {
        return Err("tls: the listen_tls ports stay open until a restart and need [tls]\n".into());
    }
    let mut summary = "configuration reloaded\n".to_owned();
    if !kept.is_empty() {
        let keys = kept.join(", ");
        warn!("reload: {keys} changed: only a restart applies that; the old value stays");
        summary = format!("configuration reloaded; these keys need a restart: {keys}\n");
    }
    let forward = start::forward_params(&config, &client_tls);
    shared.replace(config, server_tls, forward);
    Ok(summary)
}

/// The keys `new` changes that only a restart applies (what is bound or opened at start),
/// named as in the config file; `new` gets their old values back.
pub(super) fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    let mut keep = |name, same: bool| {
        if !same {
            kept.push(name);
        }
    };
    keep("listen", old.listen == new.listen);
    keep("listen_tls", old.listen_tls == new.listen_tls);
    keep("data_dir", old.data_dir == new.data_dir);
    keep("store.cache_bytes", old.store == new.store);
    keep(
        "queue.max_bytes",
        old.queue.max_bytes == new.queue.max_bytes,
    );
    keep("metrics", old.metrics == new.metrics);
    keep("log", old.log == new.log);
    new.listen.clone_from(&old.listen);
    new.listen_tls.clone_from(&old.listen_tls);
    new.data_dir.clone_from(&old.data_dir);
    new.store = old.store.clone();
    new.queue.max_bytes = old.queue.max_bytes;
    new.metrics = old.metrics;
    new.log = old.log;
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_are_named_and_keep_their_old_values() {
        let old = Config::default();
        let mut new = old.clone();
        new.listen = vec!["127.0.0.1:2526".parse().unwrap()];
        new.data_dir = "/srv/elsewhere".into();
        new.store.cache_bytes += 1;
        new.queue.max_bytes += 1;
        new.metrics = Some("127.0.0.1:9100".parse().unwrap());
        new.max_recipients += 1;
        new.hostname = "new.example".into();
        let kept = keep_restart_only(&old, &mut new);
        assert_eq!(
            kept,
            [
                "listen",
                "data_dir",
                "store.cache_bytes",
                "queue.max_bytes",
                "metrics"
            ]
        );
        assert_eq!(new.listen, old.listen);
        assert_eq!(new.data_dir, old.data_dir);
        assert_eq!(new.store, old.store);
        assert_eq!(new.queue.max_bytes, old.queue.max_bytes);
        assert_eq!(new.metrics, old.metrics);
        // What a reload applies is taken from the new config.
        assert_eq!(new.max_recipients, old.max_recipients + 1);
        assert_eq!(new.hostname, "new.example");
    }

    #[test]
    fn an_unchanged_config_keeps_nothing() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(keep_restart_only(&old, &mut new).is_empty());
        assert_eq!(new, old);
    }
}
