//! Readiness against the real binary: the sd_notify(3) datagrams read from a `NOTIFY_SOCKET`
//! the test binds: `READY=1` once the listeners accept, `STATUS=` following the queue,
//! `WATCHDOG=1` at half `WATCHDOG_USEC`, `STOPPING=1` at SIGTERM.

use crate::logs::{bind_datagram, recv_until, BareDaemon};
use crate::util::{assert_queued, message, RawClient, TestDir};

#[test]
fn ready_status_watchdog_and_stopping() {
    let dir = TestDir::new();
    let (socket, path) = bind_datagram(&dir, "notify");
    let env = [
        ("NOTIFY_SOCKET", path.display().to_string()),
        ("WATCHDOG_USEC", "600000".to_owned()),
    ];
    let mut daemon = BareDaemon::start("", &env);
    let seen = recv_until(&socket, |d| d.starts_with("READY=1"));
    let ready = seen.last().unwrap();
    assert!(
        ready.contains("\nSTATUS=queue: 0 messages, 0 KiB; link: no smarthost"),
        "{ready:?}"
    );
    assert_eq!(seen.len(), 1, "something before READY=1: {seen:#?}");
    // Ready means listening: the port takes a message now.
    let port = daemon.port();
    let mut client = RawClient::ready(port);
    assert_queued(&client.send_mail("a@lan.test", &["b@example.org"], &message("s", "x\r\n")));
    let seen = recv_until(&socket, |d| d.starts_with("STATUS=queue: 1 message,"));
    // WATCHDOG_USEC is 0.6 s: keep-alives every 0.3 s, so at least one came by now (the
    // status is checked at most every 2 s).
    let seen_more = recv_until(&socket, |d| d == "WATCHDOG=1");
    assert!(
        seen.iter()
            .chain(&seen_more)
            .all(|d| d == "WATCHDOG=1" || d.starts_with("STATUS=")),
        "{seen:#?} {seen_more:#?}"
    );
    assert_eq!(daemon.terminate(), Some(0));
    recv_until(&socket, |d| d.starts_with("STOPPING=1"));
}

#[test]
fn an_abstract_notify_socket_works_too() {
    let name = format!("outpost-it-notify-{}", std::process::id());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.as_bytes(),
        )
        .unwrap();
    let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let mut daemon = BareDaemon::start("", &[("NOTIFY_SOCKET", format!("@{name}"))]);
    recv_until(&socket, |d| d.starts_with("READY=1"));
    assert_eq!(daemon.terminate(), Some(0));
    recv_until(&socket, |d| d.starts_with("STOPPING=1"));
}
