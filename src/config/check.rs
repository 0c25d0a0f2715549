//! Syntax checks for config values: domain names, `host:port` and SHA-512-crypt strings. Pure
//! functions of their argument; no I/O, and no knowledge of which key a value came from.

use std::net::{IpAddr, Ipv6Addr};

/// SHA-512-crypt rounds (glibc's range starts at 1000; above this one AUTH costs seconds of
/// CPU on a small board, which a password-guessing client could exploit).
const MIN_CRYPT_ROUNDS: u64 = 1000;
const MAX_CRYPT_ROUNDS: u64 = 5_000_000;

/// Checks the shape of a SHA-512-crypt string (`$6$[rounds=N$]salt$hash`, as made by
/// `mkpasswd -m sha-512` or `openssl passwd -6`); anything else is refused with what it is.
pub(super) fn check_sha512_crypt(hash: &str) -> Result<(), String> {
    const CRYPT_CHARS: &str = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let Some(rest) = hash.strip_prefix("$6$") else {
        let scheme = match hash.split('$').nth(1) {
            _ if !hash.starts_with('$') => {
                return Err(
                    "looks like a plaintext password; store a SHA-512-crypt hash \
                            (mkpasswd -m sha-512, or openssl passwd -6)"
                        .to_owned(),
                )
            }
            Some("1") => "MD5-crypt ($1$)",
            Some("2a" | "2b" | "2y") => "bcrypt ($2…$)",
            Some("5") => "SHA-256-crypt ($5$)",
            Some("y") => "yescrypt ($y$)",
            Some(s) if s.starts_with("argon2") => "Argon2",
            _ => "an unknown scheme",
        };
        return Err(format!(
            "{scheme} is not supported; use SHA-512-crypt ($6$: mkpasswd -m sha-512, or \
             openssl passwd -6)"
        ));
    };
    let mut parts: Vec<&str> = rest.split('$').collect();
    if let Some(rounds) = parts.first().and_then(|p| p.strip_prefix("rounds=")) {
        match rounds.parse::<u64>() {
            Ok(n) if (MIN_CRYPT_ROUNDS..=MAX_CRYPT_ROUNDS).contains(&n) => {}
            _ => {
                return Err(format!(
                    "rounds={rounds} is outside {MIN_CRYPT_ROUNDS}..={MAX_CRYPT_ROUNDS}"
                ))
            }
        }
        parts.remove(0);
    }
    let [salt, digest] = parts.as_slice() else {
        return Err("is not $6$salt$hash".to_owned());
    };
    let crypt_chars = |s: &str| s.chars().all(|c| CRYPT_CHARS.contains(c));
    if salt.is_empty() || salt.len() > 16 || !crypt_chars(salt) {
        return Err("has a bad salt (1 to 16 characters of [./0-9A-Za-z])".to_owned());
    }
    if digest.len() != 86 || !crypt_chars(digest) {
        return Err("has a bad hash part (86 characters of [./0-9A-Za-z])".to_owned());
    }
    Ok(())
}

/// RFC 1035 / RFC 5321 §4.1.2 `Domain` syntax (letters, digits, hyphens, dots), or an address
/// literal `[…]`. The name goes into every reply, so anything else (spaces, CR, LF) is refused.
pub(super) fn is_hostname(name: &str) -> bool {
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        let inner = inner.strip_prefix("IPv6:").unwrap_or(inner);
        return inner.parse::<IpAddr>().is_ok();
    }
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `host:port` or `[v6]:port` with a non-zero port.
pub(super) fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => is_hostname(host),
    };
    port_ok && host_ok
}
