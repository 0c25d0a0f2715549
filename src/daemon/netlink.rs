//! Linux only: listens for rtnetlink route, address and link events, and when something comes
//! up while the first smarthost is not known to be reachable, raises the forwarder's flush so it
//! probes at once instead of waiting out the link backoff. Safe code only (rustix's socket
//! API, no libc); reads events, never sends a netlink request and never changes the system.

use std::io;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::future;
use log::{debug, info, warn};
use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SocketType};

use crate::shared::Shared;

/// rtnetlink multicast groups (linux/rtnetlink.h): RTMGRP_LINK, RTMGRP_IPV4_IFADDR,
/// RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE.
const GROUPS: u32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
/// `struct nlmsghdr` is 16 bytes; `struct ifinfomsg` has `ifi_flags` at offset 8.
const NLMSG_HDR: usize = 16;
const IFI_FLAGS: usize = NLMSG_HDR + 8;
const IFF_UP: u32 = 0x1;
const IFF_RUNNING: u32 = 0x40;
/// An interface coming up sends a burst (link, addresses, routes): wait for it to settle.
const SETTLE: Duration = Duration::from_secs(1);

/// Something that may mean the uplink is back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    LinkUp,
    NewAddress,
    NewRoute,
}

impl Change {
    fn describe(self) -> &'static str {
        match self {
            Self::LinkUp => "an interface came up",
            Self::NewAddress => "an address was added",
            Self::NewRoute => "a route was added",
        }
    }
}

/// The rtnetlink socket, subscribed to `GROUPS`.
pub(super) fn open() -> io::Result<Async<OwnedFd>> {
    let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    rustix::net::bind(&fd, &SocketAddrNetlink::new(0, GROUPS))?;
    Async::new(fd)
}

/// Watches until the task is dropped.
pub(super) async fn watch(socket: Async<OwnedFd>, shared: Rc<Shared>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let first = match receive(&socket, &mut buf).await {
            Ok(Some(change)) => change,
            Ok(None) => continue,
            Err(e) => {
                warn!("netlink: {e}; no longer watching for network changes");
                return;
            }
        };
        // Swallow the rest of the burst.
        let settle = async {
            Timer::after(SETTLE).await;
        };
        let drain = async {
            loop {
                if receive(&socket, &mut buf).await.is_err() {
                    future::pending::<()>().await;
                }
            }
        };
        future::or(settle, drain).await;
        // Mail prefers the first smarthost: while it is up a probe changes nothing; while it is
        // down (even with mail going over a secondary) a network change may have brought it
        // back.
        if shared.link().primary_up() {
            debug!(
                "netlink: {}; the smarthost is reachable, nothing to do",
                first.describe()
            );
            continue;
        }
        if !shared.config().smarthosts.is_empty() {
            info!(
                "network change ({}): probing the smarthost now",
                first.describe()
            );
            shared.link().flush.notify();
        }
    }
}

async fn receive(socket: &Async<OwnedFd>, buf: &mut [u8]) -> io::Result<Option<Change>> {
    let n = socket
        .read_with(|fd| {
            rustix::net::recv(fd, &mut *buf, RecvFlags::empty())
                .map(|(n, _)| n)
                .map_err(io::Error::from)
        })
        .await;
    match n {
        Ok(n) => Ok(changes(buf.get(..n).unwrap_or_default()).into_iter().next()),
        // The kernel drops events when our buffer overflows: something changed, so probe.
        Err(e) if e.raw_os_error() == Some(105) => Ok(Some(Change::NewRoute)),
        Err(e) => Err(e),
    }
}

/// The interesting changes in one datagram of netlink messages (pure; malformed input ends
/// the parse).
fn changes(mut data: &[u8]) -> Vec<Change> {
    let mut out = Vec::new();
    while data.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
        let Ok(len) = usize::try_from(len) else { break };
        if len < NLMSG_HDR || len > data.len() {
            break;
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let message = &data[..len];
        match kind {
            RTM_NEWLINK => {
                if let Some(flags) = message.get(IFI_FLAGS..IFI_FLAGS + 4) {
                    let flags = u32::from_ne_bytes([flags[0], flags[1], flags[2], flags[3]]);
                    if flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING {
                        out.push(Change::LinkUp);
                    }
                }
            }
            RTM_NEWADDR => out.push(Change::NewAddress),
            RTM_NEWROUTE => out.push(Change::NewRoute),
            _ => {}
        }
        // NLMSG_ALIGN: messages are padded to 4 bytes.
        let next = len.saturating_add(3) & !3;
        data = data.get(next..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(NLMSG_HDR + payload.len()).unwrap();
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]); // flags, seq, pid
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn ifinfo(flags: u32) -> Vec<u8> {
        let mut p = vec![0u8; 8]; // family, pad, type, index
        p.extend_from_slice(&flags.to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes()); // change
        p
    }

    #[test]
    fn link_up_and_running_address_and_route_are_changes() {
        let mut data = message(RTM_NEWLINK, &ifinfo(IFF_UP | IFF_RUNNING));
        data.extend(message(RTM_NEWADDR, &[1, 2, 3])); // odd length: padded
        data.extend(message(RTM_NEWROUTE, &[0; 12]));
        assert_eq!(
            changes(&data),
            [Change::LinkUp, Change::NewAddress, Change::NewRoute]
        );
    }

    #[test]
    fn link_without_carrier_and_deletions_are_not() {
        let mut data = message(RTM_NEWLINK, &ifinfo(IFF_UP));
        data.extend(message(17, &[0; 16])); // RTM_DELLINK
        data.extend(message(21, &[0; 8])); // RTM_DELADDR
        assert!(changes(&data).is_empty());
    }

    #[test]
    fn malformed_input_ends_the_parse_without_panicking() {
        let mut data = message(RTM_NEWADDR, &[0; 4]);
        data.extend_from_slice(&[0xff; 7]);
        assert_eq!(changes(&data), [Change::NewAddress]);
        assert!(changes(&[0; 3]).is_empty());
        let mut huge = message(RTM_NEWROUTE, &[]);
        huge[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(changes(&huge).is_empty());
    }
}
