//! The embedded defaults: `Config::default()`, what `outpost` with no arguments runs on (the
//! configuration reference documents them), and the defaults of optional sections. Reads only
//! the kernel hostname; checks nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::check::is_hostname;
use super::effective::{Config, NotifyConfig, QueueConfig, StoreConfig, Timeouts};
use super::local::LocalNames;

pub(super) const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// `[rate_limit] window` when only `per_sender` is given.
pub(super) const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(3600);
/// `[coalesce] window` and `max_parts` when not given.
pub(super) const DEFAULT_COALESCE_WINDOW: Duration = Duration::from_secs(3600);
pub(super) const DEFAULT_COALESCE_PARTS: usize = 100;

impl Default for Config {
    /// The embedded defaults: what `outpost` with no arguments runs on (the configuration reference documents them).
    fn default() -> Self {
        let hostname = system_hostname();
        Self {
            local: LocalNames::discovered(&hostname, &hostname),
            hostname,
            data_dir: PathBuf::from("./outpost-data"),
            listen: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2525)],
            listen_tls: Vec::new(),
            require_tls: false,
            tls: None,
            users: Vec::new(),
            relay_from: vec![
                IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
                IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            ],
            max_message_size: 10 * MIB,
            max_recipients: 100,
            max_connections: 32,
            max_errors: 10,
            log: crate::logging::LogTarget::Auto,
            max_hops: 50,
            require_auth: false,
            smarthosts: heapless::Vec::new(),
            queue: QueueConfig {
                retry_min: Duration::from_secs(30),
                retry_max: Duration::from_secs(15 * 60),
                max_age: Duration::from_secs(5 * 24 * 3600),
                max_bytes: 256 * MIB,
                failed_retention: Duration::from_secs(7 * 24 * 3600),
            },
            store: StoreConfig { cache_bytes: MIB },
            timeouts: Timeouts {
                command: Duration::from_secs(5 * 60),
                data: Duration::from_secs(3 * 60),
                smarthost: Duration::from_secs(5 * 60),
                smarthost_data_end: Duration::from_secs(10 * 60),
            },
            notify: NotifyConfig {
                queue_age: Duration::from_secs(3600),
                queue_fill: 80,
                interval: Duration::from_secs(24 * 3600),
            },
            metrics: None,
            rate_limit: None,
            priority: Vec::new(),
            coalesce: None,
        }
    }
}

/// `/proc/sys/kernel/hostname` if it is a usable domain name, else `localhost`.
pub(super) fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| is_hostname(name))
        .unwrap_or_else(|| "localhost".to_owned())
}
