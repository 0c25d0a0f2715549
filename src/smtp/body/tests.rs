//! Tests of the body codec: end-of-data and smuggling rules, dot-stuffing, folding, and the
//! round trip and chunking properties.

use proptest::prelude::*;

use super::*;

/// Decodes `input` split at the given cut points; returns (output, consumed, done, error).
fn decode_split(
    input: &[u8],
    cuts: &[usize],
    max: u64,
) -> (Vec<u8>, usize, bool, Option<BodyError>) {
    let mut decoder = BodyDecoder::new(max);
    let mut out = Vec::new();
    let mut start = 0;
    let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    points.sort_unstable();
    points.push(input.len());
    for end in points {
        if end < start {
            continue;
        }
        let step = decoder.decode(&input[start..end], &mut out);
        start += step.consumed;
        if step.done {
            return (out, start, true, decoder.error());
        }
        assert_eq!(start, end, "decoder must consume everything until the end");
    }
    (out, start, false, decoder.error())
}

fn decode(input: &[u8]) -> (Vec<u8>, usize, bool) {
    let (out, consumed, done, error) = decode_split(input, &[], u64::MAX);
    assert_eq!(error, None);
    (out, consumed, done)
}

fn encode_split(body: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut encoder = BodyEncoder::new();
    let mut out = Vec::new();
    let mut start = 0;
    let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(body.len())).collect();
    points.sort_unstable();
    points.push(body.len());
    for end in points {
        encoder.encode(&body[start..end], &mut out);
        start = end;
    }
    encoder.finish(&mut out);
    out
}

/// The model: bare LF and bare CR become CRLF, NUL is dropped, and the body is terminated by
/// a line end.
fn normalise(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
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

#[test]
fn end_of_data_only_on_crlf_dot_crlf() {
    assert_eq!(decode(b"hi\r\n.\r\nMAIL"), (b"hi\r\n".to_vec(), 7, true));
    assert_eq!(decode(b".\r\n"), (Vec::new(), 3, true));
    // Smuggling variants: none of these ends DATA.
    for input in [
        &b"a\n.\nb"[..],
        b"a\n.\r\nb",
        b"a\r\n.\nb",
        b"a\r.\rb",
        b"a\r\n.\rb",
    ] {
        let (_, consumed, done) = decode(input);
        assert!(!done, "{:?}", String::from_utf8_lossy(input));
        assert_eq!(consumed, input.len());
    }
}

#[test]
fn smuggled_dot_lines_are_stored_with_their_dot() {
    let (out, _, done) = decode(b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n");
    assert!(done);
    assert_eq!(out, b"a\r\n.\r\nMAIL FROM:<x@y>\r\n");
    let (out, _, done) = decode(b"a\n.\r\nb\r\n.\r\n");
    assert!(done);
    assert_eq!(out, b"a\r\n.\r\nb\r\n");
    let (out, _, done) = decode(b"a\r\n.\nb\r\n.\r\n");
    assert!(done);
    assert_eq!(out, b"a\r\n.\r\nb\r\n");
    // Re-encoding stuffs it, so the smarthost sees no end of data either.
    assert_eq!(encode_split(&out, &[]), b"a\r\n..\r\nb\r\n.\r\n");
}

#[test]
fn dot_unstuffing_removes_one_leading_dot() {
    let (out, _, _) = decode(b"..\r\n...x\r\n.a.b\r\n .\r\n.\r\n");
    assert_eq!(out, b".\r\n..x\r\na.b\r\n .\r\n");
    let (out, _, _) = decode(b".\rx\r\n.\r\n");
    assert_eq!(out, b"\rx\r\n");
}

#[test]
fn bare_lf_becomes_crlf_and_bare_cr_is_text() {
    let (out, _, done) = decode(b"a\nb\rc\r\r\n.\r\n");
    assert!(done);
    assert_eq!(out, b"a\r\nb\rc\r\r\n");
}

#[test]
fn oversized_body_is_drained_and_stops_growing() {
    let mut input = vec![b'x'; 100];
    input.extend(b"\r\n".repeat(50));
    input.extend(b".\r\nQUIT\r\n");
    let (out, consumed, done, error) = decode_split(&input, &[3, 77], 50);
    assert!(done);
    assert_eq!(consumed, input.len() - 6);
    assert_eq!(error, Some(BodyError::TooLarge));
    assert!(out.len() <= 50);
}

#[test]
fn lines_of_any_length_are_stored_as_received() {
    let long = [vec![b'y'; 5000], b"\r\nok\n.x\r\n.\r\n".to_vec()].concat();
    let (out, consumed, done, error) = decode_split(&long, &[999, 1000, 1001, 4999], u64::MAX);
    assert!(done);
    assert_eq!(consumed, long.len());
    assert_eq!(error, None);
    assert_eq!(
        out,
        [vec![b'y'; 5000], b"\r\nok\r\nx\r\n".to_vec()].concat()
    );
    // Only the size bounds a line.
    let (out, _, done, error) = decode_split(&long, &[3], 4000);
    assert!(done);
    assert_eq!(error, Some(BodyError::TooLarge));
    assert!(out.len() <= 4000);
}

#[test]
fn lines_up_to_998_octets_go_out_unchanged() {
    for line in [vec![b'y'; 998], [b".".to_vec(), vec![b'y'; 997]].concat()] {
        let body = [line.clone(), b"\r\n".to_vec()].concat();
        let mut expected = body.clone();
        if line[0] == b'.' {
            expected.insert(0, b'.');
        }
        expected.extend_from_slice(b".\r\n");
        assert_eq!(encode_split(&body, &[]), expected);
    }
}

#[test]
fn long_lines_are_folded_with_crlf_space() {
    let body = [
        vec![b'a'; 998],
        vec![b'b'; 997],
        vec![b'c'; 3],
        b"\n".to_vec(),
    ]
    .concat();
    let expected = [
        vec![b'a'; 998],
        b"\r\n ".to_vec(),
        vec![b'b'; 997],
        b"\r\n ".to_vec(),
        vec![b'c'; 3],
        b"\r\n.\r\n".to_vec(),
    ]
    .concat();
    for cut in [0, 1, 997, 998, 999, 1995, 1996, 1997] {
        assert_eq!(encode_split(&body, &[cut]), expected, "cut {cut}");
    }
    // A stuffed line: the dot is not counted, the continuation is never stuffed.
    let dotted = [b".".to_vec(), vec![b'.'; 1000]].concat();
    let wire = encode_split(&dotted, &[]);
    let expected = [
        b"..".to_vec(),
        vec![b'.'; 997],
        b"\r\n ...\r\n.\r\n".to_vec(),
    ]
    .concat();
    assert_eq!(wire, expected);
    // A bare CR at the fold point ends the line (it goes out as CRLF): nothing to fold.
    let body = [
        vec![b'a'; 998],
        b"\rb\r\n".to_vec(),
        vec![b'a'; 998],
        b"\r".to_vec(),
    ]
    .concat();
    let wire = encode_split(&body, &[998, 999, 2000]);
    let expected = [
        vec![b'a'; 998],
        b"\r\nb\r\n".to_vec(),
        vec![b'a'; 998],
        b"\r\n.\r\n".to_vec(),
    ]
    .concat();
    assert_eq!(wire, expected);
}

#[test]
fn encoder_stuffs_dots_and_terminates() {
    assert_eq!(encode_split(b"", &[]), b".\r\n");
    assert_eq!(encode_split(b"a", &[]), b"a\r\n.\r\n");
    assert_eq!(encode_split(b"a\r", &[]), b"a\r\n.\r\n");
    assert_eq!(
        encode_split(b".a\n.\r\nb.\n", &[1, 3]),
        b"..a\r\n..\r\nb.\r\n.\r\n"
    );
}

#[test]
fn every_split_of_a_transcript_decodes_the_same() {
    let input = b"Subject: x\r\n\r\n..dot\nbare\r\n.\nnot end\r\n.\r\nNEXT".as_slice();
    let whole = decode_split(input, &[], u64::MAX);
    assert!(whole.2);
    for a in 0..input.len() {
        for b in a..input.len() {
            assert_eq!(
                decode_split(input, &[a, b], u64::MAX),
                whole,
                "cuts {a} {b}"
            );
        }
    }
}

/// The plainest encoder, one byte at a time, for bodies without lines long enough to fold:
/// the reference the run-at-a-time one must match.
fn encode_bytewise(body: &[u8]) -> Vec<u8> {
    let (mut at_line_start, mut after_cr) = (true, false);
    let mut out = Vec::new();
    for &byte in body {
        if byte == 0 {
            continue;
        }
        if after_cr && byte != b'\n' {
            out.push(b'\n');
            at_line_start = true;
        }
        if at_line_start && byte == b'.' {
            out.push(b'.');
        }
        if byte == b'\n' && !after_cr {
            out.push(b'\r');
        }
        out.push(byte);
        at_line_start = byte == b'\n';
        after_cr = byte == b'\r';
    }
    if after_cr {
        out.push(b'\n');
    } else if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Removes every `CRLF SP`: the folds, in a body that has no space after a line end of its
/// own.
fn unfold(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while let Some(&byte) = rest.first() {
        if rest.starts_with(b"\r\n ") {
            rest = &rest[3..];
        } else {
            out.push(byte);
            rest = &rest[1..];
        }
    }
    out
}

/// Bodies with lines from empty to several times the limit, and no space (so every `CRLF SP`
/// on the wire is a fold).
fn long_line_body() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        (0usize..2600).prop_map(|n| vec![b'x'; n]),
        Just(b".".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn line_at_a_time_encoding_matches_byte_at_a_time(
        body in proptest::collection::vec(
            prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a'), any::<u8>()], 0..300),
        cuts in proptest::collection::vec(0usize..300, 0..6),
    ) {
        prop_assert_eq!(encode_split(&body, &cuts), encode_bytewise(&body));
    }

    #[test]
    fn decode_of_encode_is_normalised_input(
        body in proptest::collection::vec(
            prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..300),
        encode_cuts in proptest::collection::vec(0usize..300, 0..6),
        decode_cuts in proptest::collection::vec(0usize..400, 0..6),
    ) {
        let wire = encode_split(&body, &encode_cuts);
        let (out, consumed, done, error) = decode_split(&wire, &decode_cuts, u64::MAX);
        prop_assert!(done);
        prop_assert_eq!(consumed, wire.len());
        prop_assert_eq!(error, None);
        prop_assert_eq!(out, normalise(&body));
    }

    #[test]
    fn decoding_is_split_invariant_for_arbitrary_bytes(
        input in proptest::collection::vec(
            prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..300),
        cuts in proptest::collection::vec(0usize..300, 0..6),
    ) {
        // After an error the output is discarded by contract, so only its absence matters.
        let (out, consumed, done, error) = decode_split(&input, &cuts, 100);
        let whole = decode_split(&input, &[], 100);
        prop_assert_eq!((consumed, done, error), (whole.1, whole.2, whole.3));
        if error.is_none() {
            prop_assert_eq!(out, whole.0);
        }
    }

    #[test]
    fn folded_lines_fit_and_unfold_to_the_input(
        body in long_line_body(),
        encode_cuts in proptest::collection::vec(0usize..8000, 0..6),
        decode_cuts in proptest::collection::vec(0usize..8000, 0..6),
    ) {
        let wire = encode_split(&body, &encode_cuts);
        prop_assert_eq!(&wire, &encode_split(&body, &[]));
        let (out, consumed, done, error) = decode_split(&wire, &decode_cuts, u64::MAX);
        prop_assert!(done);
        prop_assert_eq!(consumed, wire.len());
        prop_assert_eq!(error, None);
        for line in out.split_inclusive(|&b| b == b'\n') {
            prop_assert!(line.len() <= MAX_TEXT_LINE, "a line of {} octets", line.len());
        }
        prop_assert_eq!(unfold(&out), normalise(&body));
    }
}
