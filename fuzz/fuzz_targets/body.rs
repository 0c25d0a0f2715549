//! Fuzzes the DATA body codec (`BodyDecoder`: dot-unstuffing, `<CRLF>.<CRLF>` detection, the
//! size limit; `BodyEncoder`: dot-stuffing, folding of long lines). Never does I/O.
//!
//! Invariants:
//! - round trip: `decode(encode(x)) == fold(normalise(x))` (the CRLF normalisation of the
//!   proptest in `src/smtp/body/tests.rs`, then `CRLF SP` after 998 octets of a line and every
//!   997 after that), whatever the chunking on either side; no decoded line exceeds 1000
//!   octets with its CRLF;
//! - on arbitrary wire bytes: the result does not depend on how the input is split; output
//!   stays within `max_size` and has CRLF line ends only; DATA ends only after `<CRLF>.<CRLF>`;
//!   a stored body, forwarded again, decodes to itself normalised (no bare CR, no NUL) and
//!   folded.

#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::smtp::body::{BodyDecoder, BodyEncoder, BodyError, MAX_TEXT_LINE};

#[path = "common.rs"]
mod common;
use common::{cuts, expand, only_crlf, pieces, Cursor};

/// Body tokens: the characters that move the decoder's state machine, the smuggling
/// sequences, and long runs to reach the fold point.
const TOKENS: &[&[u8]] = &[
    b".",
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n.\r\n",
    b".\r\n",
    b"..",
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r",
    b".\r",
    b"x",
    b"\xff",
    b"\0",
    b"\xc3\xbc",
    &[b'a'; 100],
    &[b'b'; 400],
    &[b'c'; 997],
    &[b'd'; 998],
];

/// What the smarthost must receive of a stored body, before folding: bare LF and bare CR →
/// CRLF, NUL dropped, and a final line end added.
fn normalise(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 8 + 2);
    let mut prev = 0u8;
    for &b in body {
        if b == 0 {
            continue;
        }
        if prev == b'\r' && b != b'\n' {
            out.push(b'\n');
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    match out.last() {
        None | Some(b'\n') => {}
        Some(b'\r') => out.push(b'\n'),
        Some(_) => out.extend_from_slice(b"\r\n"),
    }
    out
}

fn encode(body: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut encoder = BodyEncoder::new();
    let mut wire = Vec::new();
    for piece in pieces(body, cuts) {
        encoder.encode(piece, &mut wire);
    }
    encoder.finish(&mut wire);
    wire
}

struct Decoded {
    out: Vec<u8>,
    consumed: usize,
    done: bool,
    error: Option<BodyError>,
}

/// Decodes `input` chunked at `cuts`, as the session feeds it: every chunk is consumed whole
/// until the end of data.
fn decode(input: &[u8], cuts: &[usize], max: u64) -> Decoded {
    let mut decoder = BodyDecoder::new(max);
    let mut out = Vec::new();
    let mut consumed = 0;
    for piece in pieces(input, cuts) {
        let before = out.len();
        let step = decoder.decode(piece, &mut out);
        assert!(step.consumed <= piece.len());
        // LF → CRLF at most doubles; a held-back `.` CR may come out one call later.
        assert!(
            out.len() - before <= 2 * step.consumed + 2,
            "decoder output outgrew input"
        );
        consumed += step.consumed;
        if step.done {
            return Decoded {
                out,
                consumed,
                done: true,
                error: decoder.error(),
            };
        }
        assert_eq!(step.consumed, piece.len(), "decoder left input unconsumed");
    }
    Decoded {
        out,
        consumed,
        done: false,
        error: decoder.error(),
    }
}

/// The folds the encoder must make in a normalised body: each line's text cut after 998 octets
/// and every 997 after that, each cut a `CRLF SP`.
fn fold(normalised: &[u8]) -> Vec<u8> {
    let text_max = MAX_TEXT_LINE - 2;
    let mut out = Vec::with_capacity(normalised.len() + normalised.len() / 300);
    for line in normalised.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\r\n").unwrap_or(line);
        let (first, mut rest) = text.split_at(text.len().min(text_max));
        out.extend_from_slice(first);
        while !rest.is_empty() {
            let (piece, more) = rest.split_at(rest.len().min(text_max - 1));
            out.extend_from_slice(b"\r\n ");
            out.extend_from_slice(piece);
            rest = more;
        }
        out.extend_from_slice(&line[text.len()..]);
    }
    out
}

fn round_trip(body: &[u8], encode_cuts: &[usize], decode_raw: &[u16]) {
    let wire = encode(body, encode_cuts);
    assert!(only_crlf(&wire), "encoder sent a bare LF");
    assert!(wire.ends_with(b"\r\n.\r\n") || wire == b".\r\n");
    let decoded = decode(&wire, &cuts(decode_raw, wire.len()), u64::MAX);
    assert!(decoded.done, "encoded body did not end DATA");
    assert_eq!(
        decoded.consumed,
        wire.len(),
        "DATA ended before the encoder's final dot"
    );
    assert_eq!(decoded.error, None, "an error with an unlimited size");
    assert_eq!(
        decoded.out,
        fold(&normalise(body)),
        "decode(encode(x)) != fold(normalise(x))"
    );
    assert!(
        decoded
            .out
            .split_inclusive(|&b| b == b'\n')
            .all(|line| line.len() <= MAX_TEXT_LINE),
        "a line over 1000 octets went out"
    );
}

fn wire_bytes(input: &[u8], raw: &[u16], max: u64) {
    let split = decode(input, &cuts(raw, input.len()), max);
    let whole = decode(input, &[], max);
    assert_eq!(
        (split.consumed, split.done, split.error),
        (whole.consumed, whole.done, whole.error),
        "decoding depends on chunking"
    );
    // After an error the output is discarded by contract, so only compare clean bodies.
    if whole.error.is_none() {
        assert_eq!(split.out, whole.out, "decoded body depends on chunking");
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    assert!(
        whole.out.len() <= limit,
        "decoder stored more than max_size"
    );
    assert!(only_crlf(&whole.out), "decoder stored a bare LF");
    if whole.done {
        let ended = &input[..whole.consumed];
        assert!(
            ended.ends_with(b"\r\n.\r\n") || ended == b".\r\n",
            "DATA ended without <CRLF>.<CRLF>"
        );
        if whole.error.is_none() {
            // What is stored is forwarded: the smarthost must see the same body and end.
            let wire = encode(&whole.out, &[]);
            let again = decode(&wire, &[], u64::MAX);
            assert!(again.done && again.consumed == wire.len());
            assert_eq!(
                again.out,
                fold(&normalise(&whole.out)),
                "a stored body does not survive forwarding"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cursor = Cursor::new(data);
    let mode = cursor.byte();
    let raw: Vec<u16> = (0..6).map(|_| cursor.u16()).collect();
    let rest = cursor.rest();
    let input = if mode & 1 == 0 {
        expand(rest, TOKENS)
    } else {
        rest.to_vec()
    };
    if mode & 2 == 0 {
        let encode_cuts = cuts(&raw[..3], input.len());
        round_trip(&input, &encode_cuts, &raw[3..]);
    } else {
        let max = [0, 1, 10, 100, 1000, 5000, u64::MAX][usize::from(mode >> 2) % 7];
        wire_bytes(&input, &raw, max);
    }
});
