//! The hop count: `Received:` fields in the header section, counted in any split, never in
//! the body, with or without watched fields.

use std::rc::Rc;

use super::HeaderWatch;

fn hops(message: &[u8], names: &[&str]) -> u32 {
    let names: Rc<[String]> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut watch = HeaderWatch::new(names);
    watch.feed(message);
    watch.received()
}

#[test]
fn received_fields_are_counted_in_the_header_only() {
    let message = b"Received: from a\r\n\tby b; now\r\nRECEIVED : x\r\nreceived:y\r\n\
        Received-SPF: pass\r\nX-Received: z\r\nSubject: s\r\n\r\nReceived: in the body\r\n";
    assert_eq!(hops(message, &[]), 3);
    assert_eq!(hops(message, &["subject"]), 3);
    for cut in 0..message.len() {
        let mut watch = HeaderWatch::new(Rc::from([]));
        watch.feed(&message[..cut]);
        watch.feed(&message[cut..]);
        assert_eq!(watch.received(), 3, "cut at {cut}");
    }
}

#[test]
fn the_count_is_bounded_and_saturates() {
    let mut watch = HeaderWatch::new(Rc::from([]));
    for _ in 0..10_000 {
        watch.feed(b"Received: x\r\n");
    }
    assert_eq!(watch.received(), 10_000);
    watch.feed(b"\r\nReceived: y\r\n");
    assert_eq!(watch.received(), 10_000);
}
