//! Outpost is never an open relay by configuration: `relay_from` that covers every IPv4 or
//! every IPv6 address (`0.0.0.0/0`, `::/0`, or networks that add up to one, such as
//! `0.0.0.0/1` and `128.0.0.0/1`, IPv4-mapped IPv6 included) is refused unless
//! `require_auth` makes every client authenticate; `require_auth` itself needs `[[users]]`.
//! Pure: reads only the validated config.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::effective::Config;
use crate::config::file::Problem;

/// `::ffff:0:0/96`: IPv4 addresses as an IPv6 socket sees them.
const V4_MAPPED: Ipv6Net =
    match Ipv6Net::new(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96) {
        Ok(net) => net,
        Err(_) => panic!("a /96 is a valid prefix"),
    };

/// Adds the open-relay and `require_auth` problems of `config` to `problems`.
pub(super) fn check_open_relay(config: &Config, problems: &mut Vec<Problem>) {
    if config.require_auth {
        if config.users.is_empty() {
            problems.push(Problem::new(
                "require_auth",
                "needs [[users]] (the clients that may authenticate)",
            ));
        }
        return;
    }
    if let Some(everyone) = covers_everyone(&config.relay_from) {
        problems.push(Problem::new(
            "relay_from",
            format!(
                "covers every address ({everyone}): outpost would be an open relay; narrow \
                 relay_from to the site's networks, or set require_auth = true so that every \
                 client must authenticate"
            ),
        ));
    }
}

/// `0.0.0.0/0` or `::/0` when `nets` together cover every IPv4 or every IPv6 address.
pub(super) fn covers_everyone(nets: &[IpNet]) -> Option<IpNet> {
    let mut v4: Vec<IpNet> = Vec::new();
    let mut v6: Vec<IpNet> = Vec::new();
    for net in nets {
        match net {
            IpNet::V4(net) => v4.push(IpNet::V4(*net)),
            IpNet::V6(net) => {
                v6.push(IpNet::V6(*net));
                if let Some(mapped) = as_v4(net) {
                    v4.push(IpNet::V4(mapped));
                }
            }
        }
    }
    let all_v4 = IpNet::V4(Ipv4Net::default());
    let all_v6 = IpNet::V6(Ipv6Net::default());
    if IpNet::aggregate(&v4).contains(&all_v4) {
        Some(all_v4)
    } else if IpNet::aggregate(&v6).contains(&all_v6) {
        Some(all_v6)
    } else {
        None
    }
}

/// The IPv4 network an IPv4-mapped IPv6 network (or one containing all of them) covers.
fn as_v4(net: &Ipv6Net) -> Option<Ipv4Net> {
    if net.contains(&V4_MAPPED) {
        return Some(Ipv4Net::default());
    }
    if !V4_MAPPED.contains(net) {
        return None;
    }
    let IpAddr::V4(addr) = IpAddr::V6(net.network()).to_canonical() else {
        return None;
    };
    Ipv4Net::new(addr, net.prefix_len().checked_sub(96)?).ok()
}

#[cfg(test)]
mod tests;
