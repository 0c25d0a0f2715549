//! Fuzzes `parse_reply`, the smarthost reply parser, and `Reply::write_to`. Never does I/O.
//!
//! Invariants: no panic; a parsed reply consumed whole lines (ending in LF) and nothing past its
//! last line; every shorter prefix is "incomplete" (`Ok(None)`), so the parse does not depend
//! on how replies arrive; memory is bounded (`TooLong` beyond `MAX_PARSED_LINE` /
//! `MAX_PARSED_REPLY`, never an unbounded wait); whatever was parsed serialises to well-formed
//! reply lines (3 digits, ≤ 512 octets, CRLF) that parse back to the same code and status.

#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::smtp::reply::{
    parse_reply, EnhancedStatus, Reply, ReplyError, MAX_PARSED_LINE, MAX_PARSED_REPLY,
};

#[path = "common.rs"]
mod common;
use common::{check_replies, expand, Cursor};

/// Reply tokens: codes, separators, enhanced statuses and EHLO keywords.
const TOKENS: &[&[u8]] = &[
    b"220",
    b"221",
    b"235",
    b"250",
    b"251",
    b"252",
    b"334",
    b"354",
    b"421",
    b"450",
    b"451",
    b"452",
    b"500",
    b"501",
    b"530",
    b"535",
    b"550",
    b"552",
    b"553",
    b"554",
    b"999",
    b"000",
    b" ",
    b"-",
    b"\r\n",
    b"\n",
    b"\r",
    b"2.0.0",
    b"2.1.5",
    b"4.3.0",
    b"5.1.1",
    b"5.7.1",
    b"4.",
    b"5.5.",
    b"1.2.3",
    b"PIPELINING",
    b"SIZE 10240000",
    b"STARTTLS",
    b"AUTH PLAIN LOGIN",
    b"AUTH=LOGIN",
    b"8BITMIME",
    b"SMTPUTF8",
    b"mx.example ESMTP",
    b"OK",
    b"\xc3\xa9",
    b"\xff",
    b"\0",
    &[b'x'; 100],
    &[b'y'; 511],
    &[b'z'; 2047],
];

/// Checks one parse of `input` against the stated contract; returns the bytes consumed.
fn parse_one(input: &[u8], probe: usize) -> Option<usize> {
    let parsed = match parse_reply(input) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            // Incomplete must mean: no complete last line yet, within the bounds.
            assert!(
                input.len() < MAX_PARSED_REPLY,
                "Ok(None) past MAX_PARSED_REPLY"
            );
            return None;
        }
        Err(ReplyError::TooLong | ReplyError::Malformed) => return None,
    };
    let (reply, consumed) = parsed;
    assert!(consumed > 0 && consumed <= input.len() && consumed <= MAX_PARSED_REPLY);
    assert_eq!(
        input[consumed - 1],
        b'\n',
        "reply did not end at a line end"
    );
    assert!((0..=999).contains(&reply.code));
    // Whole lines only, each within the parse limit.
    for line in input[..consumed].split_inclusive(|&b| b == b'\n') {
        assert!(line.len() <= MAX_PARSED_LINE, "accepted an over-long line");
    }
    // The same reply from exactly its own bytes, and "incomplete" from any shorter prefix.
    let exact = parse_reply(&input[..consumed]);
    assert_eq!(
        exact,
        Ok(Some((reply.clone(), consumed))),
        "parse depends on what follows"
    );
    let cut = probe % consumed;
    assert_eq!(
        parse_reply(&input[..cut]),
        Ok(None),
        "prefix {cut} of a reply is not incomplete"
    );
    round_trip(&reply);
    Some(consumed)
}

/// `write_to` must produce well-formed lines that parse back to the same code and status.
fn round_trip(reply: &Reply) {
    let mut wire = Vec::new();
    reply.write_to(&mut wire);
    if !(200..=599).contains(&reply.code) {
        // Codes outside 2xx-5xx are the peer's nonsense; only the framing must hold.
        assert!(wire.ends_with(b"\r\n"));
        return;
    }
    let codes = check_replies(&wire);
    assert_eq!(
        codes,
        vec![reply.code],
        "one reply must serialise to one reply"
    );
    let (back, consumed) = match parse_reply(&wire) {
        Ok(Some(parsed)) => parsed,
        other => panic!("written reply does not parse back: {other:?} from {wire:?}"),
    };
    assert_eq!(consumed, wire.len());
    assert_eq!(back.code, reply.code);
    // Text that looks like a status once a stray CR became a space reads back as a status.
    let first = reply.lines().next().unwrap_or("").replace('\r', " ");
    let lookalike = EnhancedStatus::parse_prefix(&first)
        .map(|(status, _)| status)
        .filter(|status| u16::from(status.class) == reply.code / 100);
    assert_eq!(
        back.status,
        reply.status.or(lookalike),
        "status changed in the round trip"
    );
    assert_eq!(
        back.lines().count(),
        reply.lines().count(),
        "line count changed"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut cursor = Cursor::new(data);
    let mode = cursor.byte();
    let probe = usize::from(cursor.u16());
    let rest = cursor.rest();
    let input = if mode & 1 == 0 {
        expand(rest, TOKENS)
    } else {
        rest.to_vec()
    };
    // A stream of replies, as the client reads them: parse, drop what was consumed, repeat.
    let mut rest = &input[..];
    for _ in 0..64 {
        match parse_one(rest, probe) {
            Some(consumed) => rest = &rest[consumed..],
            None => break,
        }
    }
});
