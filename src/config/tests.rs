//! Tests of loading and validation: defaults, typing, every problem named by its key, and the
//! effective config reading back to the same value. Smarthost entries are in `tests/smarthost`.

mod smarthost;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::check::is_hostname;
use super::effective::toml_str;
use super::file::ConfigFile;
use super::*;
use crate::coalesce::CoalescePolicy;
use crate::priority::{Priority, PriorityRule};
use crate::rate::SenderLimit;
use crate::smtp::client::TlsPolicy;

/// `openssl passwd -6 -salt Zx9q2mB7 camera-pw`
pub(super) const HASH: &str =
    "$6$Zx9q2mB7$7euoUzgiGoP/JG7b1oQ/kumgdF6Rt0IqsCVygrN/0nG5ZBWl2b626DDBnWCtQE\
     YUs8L4DnHNrO320C/FDxqzL0";

pub(super) fn from_text(text: &str) -> Result<Config, Vec<Problem>> {
    let file = ConfigFile::parse(text).map_err(|p| vec![p])?;
    Config::from_file(&file)
}

pub(super) fn keys(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.key.as_str()).collect()
}

#[test]
fn empty_file_gives_the_defaults() {
    assert_eq!(from_text("").unwrap(), Config::default());
}

#[test]
fn defaults_are_the_documented_ones() {
    let d = Config::default();
    assert_eq!(
        d.listen,
        vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(d.data_dir, PathBuf::from("./outpost-data"));
    let relay: Vec<String> = d.relay_from.iter().map(ToString::to_string).collect();
    assert_eq!(relay, ["127.0.0.0/8", "::1/128"]);
    assert_eq!(d.max_message_size, 10 * 1024 * 1024);
    assert_eq!(
        (d.max_recipients, d.max_connections, d.max_errors),
        (100, 32, 10)
    );
    assert!(d.smarthosts.is_empty());
    assert_eq!(d.queue.retry_min, Duration::from_secs(30));
    assert_eq!(d.queue.retry_max, Duration::from_secs(900));
    assert_eq!(d.queue.max_age, Duration::from_secs(5 * 86_400));
    assert_eq!(d.queue.max_bytes, 256 * 1024 * 1024);
    assert_eq!(d.queue.failed_retention, Duration::from_secs(7 * 86_400));
    assert_eq!(d.store.cache_bytes, 1024 * 1024);
    assert_eq!(d.timeouts.command, Duration::from_secs(300));
    assert_eq!(d.timeouts.data, Duration::from_secs(180));
    assert_eq!(d.timeouts.smarthost, Duration::from_secs(300));
    assert_eq!(d.timeouts.smarthost_data_end, Duration::from_secs(600));
    assert!(is_hostname(&d.hostname));
}

#[test]
fn full_file_is_typed() {
    let c = from_text(
        r#"
hostname = "relay.example.org"
data_dir = "/var/spool/outpost"
listen = ["0.0.0.0:25", "[::]:25"]
relay_from = ["192.168.1.0/24", "10.0.0.7"]
max_message_size = 1048576
max_recipients = 50
max_connections = 8
max_errors = 3
[smarthost]
address = "mail.example.org:587"
tls = "none"
[queue]
retry_min = "1m"
retry_max = "1h"
max_age = "3d"
max_bytes = 1073741824
failed_retention = "1d"
[store]
cache_bytes = 2097152
[timeouts]
command = "1m"
data = "2m"
smarthost = "30s"
smarthost_data_end = "5m"
"#,
    )
    .unwrap();
    assert_eq!(c.hostname, "relay.example.org");
    assert_eq!(c.listen.len(), 2);
    assert!(c.relay_from[1].contains(&"10.0.0.7".parse::<IpAddr>().unwrap()));
    assert_eq!(c.relay_from[1].prefix_len(), 32);
    assert_eq!(c.max_recipients, 50);
    assert_eq!(
        c.smarthosts,
        [Smarthost {
            address: "mail.example.org:587".into(),
            tls: TlsPolicy::None,
            ca_file: None,
            auth: None,
            oauth2: None,
            from: None,
            connections: 2,
        }]
    );
    assert_eq!(c.queue.max_age, Duration::from_secs(3 * 86_400));
    assert_eq!(c.timeouts.smarthost, Duration::from_secs(30));
}

#[test]
fn unknown_key_is_rejected_naming_it() {
    let problems = from_text("max_message_sise = 5\n").unwrap_err();
    assert_eq!(keys(&problems), ["max_message_sise"]);
}

#[test]
fn bad_duration_names_its_key() {
    let problems = from_text("[queue]\nretry_min = \"soon\"\n").unwrap_err();
    assert_eq!(keys(&problems), ["queue.retry_min"]);
    assert!(problems[0].message.contains("\"soon\""), "{}", problems[0]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let problems = from_text(
        "listen = [\"localhost:25\"]\nrelay_from = [\"10.0.0.0/33\"]\nmax_recipients = 0\n\
         [timeouts]\ncommand = \"0s\"\ndata = \"x\"\n",
    )
    .unwrap_err();
    assert_eq!(
        keys(&problems),
        [
            "listen",
            "relay_from",
            "max_recipients",
            "timeouts.command",
            "timeouts.data"
        ]
    );
}

pub(super) fn tls_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    for name in ["cert.pem", "key.pem", "ca.pem", "password"] {
        std::fs::write(dir.path().join(name), "secret-pw\n").unwrap();
    }
    let tls = format!(
        "[tls]\ncert = {}\nkey = {}\n",
        toml_str(&dir.path().join("cert.pem").display().to_string()),
        toml_str(&dir.path().join("key.pem").display().to_string())
    );
    (dir, tls)
}

#[test]
fn password_hashes_other_than_sha512_crypt_are_refused_by_name() {
    let (_dir, tls) = tls_dir();
    let cases = [
        ("hunter2", "plaintext"),
        ("$1$abc$xyz", "MD5-crypt"),
        ("$2b$12$abcdefghijklmnopqrstuv", "bcrypt"),
        ("$5$abc$xyz", "SHA-256-crypt"),
        ("$y$j9T$abc$xyz", "yescrypt"),
        ("$6$abc", "$6$salt$hash"),
        ("$6$abc$short", "hash part"),
        ("$6$rounds=10$abc$x", "rounds=10"),
    ];
    for (hash, needle) in cases {
        let text = format!(
            "{tls}[[users]]\nname = \"u\"\npassword_hash = {}\n",
            toml_str(hash)
        );
        let problems = from_text(&text).unwrap_err();
        assert_eq!(keys(&problems), ["users.password_hash"], "{hash}");
        assert!(
            problems[0].message.contains(needle),
            "{hash}: {}",
            problems[0]
        );
    }
}

#[test]
fn tls_features_need_the_tls_section() {
    let text = format!(
        "listen_tls = [\"127.0.0.1:465\"]\nrequire_tls = true\n\
         [[users]]\nname = \"camera\"\npassword_hash = \"{HASH}\"\n"
    );
    let problems = from_text(&text).unwrap_err();
    assert_eq!(keys(&problems), ["listen_tls", "require_tls", "users"]);
    let problems = from_text("[tls]\ncert = \"/nonexistent/c.pem\"\n").unwrap_err();
    assert_eq!(keys(&problems), ["tls.cert", "tls.key"]);
}

#[test]
fn hostname_with_spaces_or_crlf_is_refused() {
    for bad in ["bad name", "a\r\n250 x", "", "-a.example", "a..b"] {
        let text = format!("hostname = {bad:?}\n");
        assert_eq!(
            keys(&from_text(&text).unwrap_err()),
            ["hostname"],
            "{bad:?}"
        );
    }
    assert!(from_text("hostname = \"[192.0.2.1]\"\n").is_ok());
}

#[test]
fn retry_min_above_retry_max_is_refused() {
    let problems = from_text("[queue]\nretry_min = \"1h\"\nretry_max = \"1m\"\n").unwrap_err();
    assert_eq!(keys(&problems), ["queue.retry_min"]);
}

#[test]
fn message_larger_than_queue_is_refused() {
    let problems = from_text("max_message_size = 2000\n[queue]\nmax_bytes = 1000\n").unwrap_err();
    assert_eq!(keys(&problems), ["max_message_size"]);
}

#[test]
fn priority_rules_are_typed_checked_and_read_back() {
    let text = "[[priority]]\nsender = \"ups@*\"\nrecipient = \"*@pager.example\"\n\
                level = \"urgent\"\n\n[[priority]]\nheader = \"X-Priority\"\n\
                value = \"1*\"\nlevel = \"high\"\n\n[[priority]]\nsender = \"<>\"\n\
                level = \"low\"\n\n[[priority]]\nheader = \"Importance\"\nlevel = \"high\"\n";
    let config = from_text(text).unwrap();
    assert_eq!(
        config.priority,
        [
            PriorityRule {
                sender: Some("ups@*".into()),
                recipient: Some("*@pager.example".into()),
                header: None,
                priority: Priority::Urgent,
            },
            PriorityRule {
                sender: None,
                recipient: None,
                header: Some(("x-priority".into(), "1*".into())),
                priority: Priority::High,
            },
            PriorityRule {
                sender: Some(String::new()),
                recipient: None,
                header: None,
                priority: Priority::Low,
            },
            PriorityRule {
                sender: None,
                recipient: None,
                header: Some(("importance".into(), "*".into())),
                priority: Priority::High,
            },
        ]
    );
    assert_eq!(from_text(&config.to_toml()).unwrap(), config);
    for (text, key) in [
        ("[[priority]]\nsender = \"a@b\"\n", "priority[1].level"),
        (
            "[[priority]]\nsender = \"a@b\"\nlevel = \"asap\"\n",
            "priority[1].level",
        ),
        ("[[priority]]\nlevel = \"high\"\n", "priority[1]"),
        (
            "[[priority]]\nvalue = \"1\"\nlevel = \"high\"\n",
            "priority[1].value",
        ),
        (
            "[[priority]]\nheader = \"X Priority:\"\nlevel = \"high\"\n",
            "priority[1].header",
        ),
        (
            "[[priority]]\nsender = \"a@b\"\nlevel = \"low\"\n[[priority]]\nlevel = \"low\"\n",
            "priority[2]",
        ),
    ] {
        let problems = from_text(text).unwrap_err();
        assert_eq!(keys(&problems), [key], "{text}");
    }
}

#[test]
fn coalesce_is_typed_checked_and_read_back() {
    assert_eq!(from_text("").unwrap().coalesce, None);
    let config = from_text("[coalesce]\n").unwrap();
    let defaults = CoalescePolicy {
        window: Duration::from_secs(3600),
        max_parts: 100,
        min: 2,
    };
    assert_eq!(config.coalesce, Some(defaults));
    let config = from_text("[coalesce]\nwindow = \"10m\"\nmax_parts = 20\nmin = 5\n").unwrap();
    let policy = CoalescePolicy {
        window: Duration::from_secs(600),
        max_parts: 20,
        min: 5,
    };
    assert_eq!(config.coalesce, Some(policy));
    assert!(config
        .to_toml()
        .contains("[coalesce]\nwindow = \"10m\"\nmax_parts = 20\nmin = 5\n"));
    assert_eq!(from_text(&config.to_toml()).unwrap(), config);
    for (text, key) in [
        ("[coalesce]\nwindow = \"0s\"\n", "coalesce.window"),
        ("[coalesce]\nwindow = \"31d\"\n", "coalesce.window"),
        ("[coalesce]\nmax_parts = 1\n", "coalesce.max_parts"),
        ("[coalesce]\nmax_parts = 5000\n", "coalesce.max_parts"),
        ("[coalesce]\nmin = 1\n", "coalesce.min"),
        ("[coalesce]\nmax_parts = 5\nmin = 6\n", "coalesce.min"),
        ("[coalesce]\nwindows = \"1h\"\n", "windows"),
    ] {
        let err = format!("{:?}", from_text(text).unwrap_err());
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn rate_limit_is_typed_checked_and_read_back() {
    assert_eq!(from_text("").unwrap().rate_limit, None);
    let config = from_text("[rate_limit]\nper_sender = 60\nwindow = \"10m\"\n").unwrap();
    let limit = SenderLimit {
        messages: 60,
        window: Duration::from_secs(600),
    };
    assert_eq!(config.rate_limit, Some(limit));
    assert!(config
        .to_toml()
        .contains("[rate_limit]\nper_sender = 60\nwindow = \"10m\""));
    // The window defaults to an hour.
    let config = from_text("[rate_limit]\nper_sender = 5\n").unwrap();
    assert_eq!(
        config.rate_limit.map(|l| l.window),
        Some(Duration::from_secs(3600))
    );
    for (text, key) in [
        ("[rate_limit]\nwindow = \"1h\"\n", "rate_limit.per_sender"),
        ("[rate_limit]\nper_sender = 0\n", "rate_limit.per_sender"),
        (
            "[rate_limit]\nper_sender = 5\nwindow = \"0s\"\n",
            "rate_limit.window",
        ),
        (
            "[rate_limit]\nper_sender = 5\nwindow = \"31d\"\n",
            "rate_limit.window",
        ),
        (
            "[rate_limit]\nper_sender = 5\nwindow = \"soon\"\n",
            "rate_limit.window",
        ),
    ] {
        let problems = from_text(text).unwrap_err();
        assert_eq!(keys(&problems), [key], "{text}");
    }
}

#[test]
fn metrics_listen_is_typed_and_read_back() {
    let config = from_text("[metrics]\nlisten = \"127.0.0.1:9325\"\n").unwrap();
    assert_eq!(config.metrics, Some("127.0.0.1:9325".parse().unwrap()));
    assert!(config
        .to_toml()
        .contains("[metrics]\nlisten = \"127.0.0.1:9325\""));
    let again = from_text(&config.to_toml()).unwrap();
    assert_eq!(again, config);
    let problems = from_text("[metrics]\nlisten = \"localhost\"\n").unwrap_err();
    assert_eq!(keys(&problems), ["metrics.listen"]);
    assert_eq!(from_text("").unwrap().metrics, None);
}

#[test]
fn client_load_ignores_unreadable_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "data_dir = \"/q\"\n[smarthost]\naddress = \"h:587\"\nusername = \"u\"\n\
         password_file = \"/nonexistent/pw\"\n",
    )
    .unwrap();
    assert!(Config::load(Some(&path), &Overrides::default()).is_err());
    let config = Config::load_client(Some(&path), &Overrides::default()).unwrap();
    assert_eq!(config.data_dir, PathBuf::from("/q"));
}

#[test]
fn overrides_replace_file_values() {
    let mut file =
        ConfigFile::parse("listen = [\"127.0.0.1:25\"]\nhostname = \"a.example\"\n").unwrap();
    let overrides = Overrides {
        listen: vec!["127.0.0.1:2600".into(), "[::1]:2600".into()],
        data_dir: Some("/tmp/q".into()),
        smarthost: Some("mx.example:25".into()),
        hostname: Some("b.example".into()),
    };
    overrides.apply(&mut file);
    let c = Config::from_file(&file).unwrap();
    assert_eq!(c.listen.len(), 2);
    assert_eq!(c.data_dir, PathBuf::from("/tmp/q"));
    assert_eq!(c.hostname, "b.example");
    let addresses: Vec<_> = c.smarthosts.iter().map(|s| s.address.as_str()).collect();
    assert_eq!(addresses, ["mx.example:25"]);
}

#[test]
fn effective_config_reads_back_to_the_same_value() {
    let mut c = Config {
        smarthosts: [Smarthost {
            address: "mx.example:25".into(),
            tls: TlsPolicy::None,
            ca_file: None,
            auth: None,
            oauth2: None,
            from: None,
            connections: 2,
        }]
        .into_iter()
        .collect(),
        ..Config::default()
    };
    c.listen.push("[::1]:25".parse().unwrap());
    c.rate_limit = Some(SenderLimit {
        messages: 100,
        window: Duration::from_secs(90),
    });
    assert!(c
        .to_toml()
        .contains("\n[smarthost]\naddress = \"mx.example:25\"\n"));
    assert_eq!(from_text(&c.to_toml()).unwrap(), c);
    c.smarthosts
        .push(Smarthost {
            address: "lte.example:587".into(),
            tls: TlsPolicy::StartTls,
            ca_file: None,
            auth: None,
            oauth2: None,
            from: None,
            connections: 2,
        })
        .unwrap();
    let text = c.to_toml();
    assert_eq!(text.matches("\n[[smarthost]]\n").count(), 2, "{text}");
    assert_eq!(from_text(&text).unwrap(), c);
    let d = Config::default();
    assert_eq!(from_text(&d.to_toml()).unwrap(), d);
}

#[test]
fn unreadable_file_is_a_config_error_naming_the_file() {
    let err = Config::load(
        Some(Path::new("/nonexistent/outpost.toml")),
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(err.origin, "/nonexistent/outpost.toml");
    assert!(err.to_string().contains("cannot read"), "{err}");
}

#[test]
fn smarthost_connections_default_to_two_and_are_checked_per_entry() {
    let config = from_text("[smarthost]\naddress = \"a:25\"\ntls = \"none\"\n").unwrap();
    assert_eq!(config.smarthosts[0].connections, 2);
    let text = "[[smarthost]]\naddress = \"a:25\"\ntls = \"none\"\nconnections = 16\n\
                [[smarthost]]\naddress = \"b:25\"\ntls = \"none\"\nconnections = 1\n";
    let config = from_text(text).unwrap();
    let counts: Vec<usize> = config.smarthosts.iter().map(|s| s.connections).collect();
    assert_eq!(counts, [16, 1]);
    assert_eq!(from_text(&config.to_toml()).unwrap(), config);
    for (text, key) in [
        ("[smarthost]\naddress = \"a:25\"\nconnections = 0\n", "smarthost.connections"),
        ("[smarthost]\naddress = \"a:25\"\nconnections = 17\n", "smarthost.connections"),
        (
            "[[smarthost]]\naddress = \"a:25\"\n[[smarthost]]\naddress = \"b:25\"\nconnections = 99\n",
            "smarthost[2].connections",
        ),
        (
            "[smarthost]\naddress = \"a:25\"\nconnections = -1\n",
            "smarthost.connections",
        ),
    ] {
        let err = format!("{:?}", from_text(text).unwrap_err());
        assert!(err.contains(key), "{text}: {err}");
    }
}
