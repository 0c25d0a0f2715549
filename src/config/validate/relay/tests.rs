//! Open relay by configuration: every spelling of "everyone" is found, site networks are not.

use ipnet::IpNet;

use super::covers_everyone;
use crate::config::file::ConfigFile;
use crate::config::Config;

fn nets(items: &[&str]) -> Vec<IpNet> {
    items.iter().map(|n| n.parse().unwrap()).collect()
}

#[test]
fn every_spelling_of_everyone_is_found() {
    let open = [
        &["0.0.0.0/0"][..],
        &["::/0"],
        &["0.0.0.0/1", "128.0.0.0/1"],
        &["128.0.0.0/2", "0.0.0.0/1", "192.0.0.0/2", "10.0.0.0/8"],
        &["::ffff:0:0/96"],
        &["::ffff:0.0.0.0/97", "128.0.0.0/1"],
        &["::/1", "8000::/1"],
        // ::/1 holds ::ffff:0:0/96, every IPv4 client of a dual-stack socket.
        &["::/1"],
    ];
    for items in open {
        assert!(covers_everyone(&nets(items)).is_some(), "{items:?}");
    }
    let closed = [
        &["192.168.0.0/16", "10.0.0.0/8", "127.0.0.0/8", "::1/128"][..],
        &["0.0.0.0/1"],
        &["0.0.0.0/1", "128.0.0.0/2", "192.0.0.0/3"],
        &["8000::/1", "2001:db8::/32"],
        &[],
    ];
    for items in closed {
        assert_eq!(covers_everyone(&nets(items)), None, "{items:?}");
    }
}

fn problems(text: &str) -> Vec<(String, String)> {
    let file = ConfigFile::parse(text).unwrap();
    match Config::from_file(&file) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.into_iter().map(|p| (p.key, p.message)).collect(),
    }
}

#[test]
fn an_open_relay_is_refused_unless_every_client_must_authenticate() {
    let found = problems("relay_from = [\"0.0.0.0/1\", \"128.0.0.0/1\"]\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "relay_from");
    assert!(found[0].1.contains("open relay"), "{found:?}");
    assert!(found[0].1.contains("require_auth"), "{found:?}");
    assert!(problems("relay_from = [\"192.168.0.0/16\"]\n").is_empty());
}

#[test]
fn require_auth_needs_users() {
    let found = problems("require_auth = true\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "require_auth");
}
