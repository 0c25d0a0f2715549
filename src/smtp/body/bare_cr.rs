//! No bare CR or NUL leaves outpost: the smuggling bodies (`<CR>.<CR>`, `<LF>.<CR>`) and NUL,
//! through the decoder (what is stored) and the encoder (what the smarthost gets).

use super::{BodyDecoder, BodyEncoder};

fn encode(body: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut encoder = BodyEncoder::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain([body.len()].iter()) {
        let cut = cut.clamp(start, body.len());
        encoder.encode(&body[start..cut], &mut out);
        start = cut;
    }
    encoder.finish(&mut out);
    out
}

/// Every CR on the wire is followed by LF, every LF preceded by CR, and there is no NUL.
fn assert_clean(wire: &[u8]) {
    for (i, &b) in wire.iter().enumerate() {
        assert_ne!(b, 0, "NUL at {i}: {wire:?}");
        if b == b'\r' {
            assert_eq!(wire.get(i + 1), Some(&b'\n'), "bare CR at {i}: {wire:?}");
        }
        if b == b'\n' {
            assert_eq!(wire.get(i.wrapping_sub(1)), Some(&b'\r'), "bare LF at {i}");
        }
    }
}

#[test]
fn cr_dot_cr_is_sent_as_a_stuffed_line_in_every_split() {
    let body = b"a\r.\rMAIL FROM:<x@evil.test>\r\n";
    for cut in 0..=body.len() {
        let wire = encode(body, &[cut]);
        assert_eq!(
            wire, b"a\r\n..\r\nMAIL FROM:<x@evil.test>\r\n.\r\n",
            "cut {cut}"
        );
        assert_clean(&wire);
    }
}

#[test]
fn a_stored_smuggling_body_reaches_the_wire_clean() {
    // As received: neither variant ends DATA, so both are stored whole.
    let received = b"a\r.\rb\n.\rc\r\0d\r\n.\r\n";
    let mut decoder = BodyDecoder::new(u64::MAX);
    let mut stored = Vec::new();
    assert!(decoder.decode(received, &mut stored).done);
    let wire = encode(&stored, &[3, 7]);
    assert_clean(&wire);
    // `<LF>.<CR>c`: the decoder takes the dot for a stuffing dot (a line of text starting
    // with a bare CR); the CR then goes out as an empty line.
    assert_eq!(wire, b"a\r\n..\r\nb\r\n\r\nc\r\nd\r\n.\r\n");
}

#[test]
fn nul_is_dropped_and_crlf_is_untouched() {
    assert_eq!(encode(b"x\0y\r\n\0", &[1, 2]), b"xy\r\n.\r\n");
    assert_eq!(encode(b"\r\r\n", &[1]), b"\r\n\r\n.\r\n");
    assert_eq!(encode(b"a\r", &[]), b"a\r\n.\r\n");
}
