//! DATA body codec: `BodyDecoder` (dot-unstuffing, CRLF.CRLF, bare-LF policy, size count) for
//! the receiver and `BodyEncoder` (dot-stuffing) for the forwarder. Performs no I/O.
//!
//! # Line-end and end-of-data rules (the SMTP smuggling defence)
//!
//! * DATA ends only on `<CRLF>.<CRLF>`: a line holding a single `.`, preceded by CRLF (or by the
//!   DATA command itself) and followed by CRLF. `<LF>.<LF>`, `<LF>.<CRLF>`, `<CRLF>.<LF>` and
//!   anything with a bare CR never end DATA.
//! * A bare LF (not preceded by CR) is a line end, lenient for LAN devices, and is stored as
//!   CRLF. So the decoded body only ever has CRLF line ends, plus bare CRs, which are text.
//! * Dot-unstuffing (RFC 5321 §4.5.2): a line that starts with `.` and has other characters
//!   loses that first `.`. A line that is just `.` but does not end DATA (because a bare LF
//!   precedes or ends it) keeps its `.` and is stored as `.<CRLF>`. This is safe: the
//!   `BodyEncoder` stuffs it to `..<CRLF>` when forwarding, so the smarthost can never see an
//!   end of data that outpost did not see.
//! * A bare CR is passed through unchanged and never starts a line.
//! * The encoder also turns bare LF into CRLF (RFC 5321 §2.3.8: never transmit bare LF), since
//!   bodies from the sendmail front end arrive with LF line ends, and bare CR into CRLF too,
//!   and drops NUL: nothing a server might read as a line end other than CRLF, and no NUL,
//!   leaves outpost, whichever way the message came in.

/// RFC 5321 §4.5.3.1.6: maximum text line in the body, including the CRLF and excluding the
/// stuffing dot; counted on the line as stored (a bare LF counts as CRLF).
pub const MAX_TEXT_LINE: usize = 1000;

/// Why a body, although fully drained, cannot be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Decoded size exceeded `max_message_size` (552 5.3.4).
    TooLarge,
    /// A line longer than `MAX_TEXT_LINE` (554 5.6.0).
    LineTooLong,
}

/// Position of the decoder relative to the line structure of the received stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecodeState {
    /// At the start of a line; `crlf`: the previous line ended with a real CRLF.
    LineStart { crlf: bool },
    /// Saw `.` at the start of a line (held back).
    Dot { crlf: bool },
    /// Saw `.` CR at the start of a line (both held back).
    DotCr { crlf: bool },
    /// Inside a line; `cr`: the last byte was CR (already emitted).
    Text { cr: bool },
}

/// Result of one `BodyDecoder::decode` call.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub consumed: usize,
    /// The end-of-data line was consumed; `consumed` stops right after it.
    pub done: bool,
}

/// Streaming DATA decoder; the output is independent of how the input is split.
#[derive(Debug)]
pub struct BodyDecoder {
    state: DecodeState,
    /// Octets of the current line as stored (CRLF-normalised, without the stuffing dot).
    line_len: usize,
    size: u64,
    max_size: u64,
    /// Some line exceeded `MAX_TEXT_LINE`.
    long_line: bool,
}

impl BodyDecoder {
    pub fn new(max_size: u64) -> Self {
        Self {
            state: DecodeState::LineStart { crlf: true },
            line_len: 0,
            size: 0,
            max_size,
            long_line: false,
        }
    }

    /// Decoded octets so far, including those not appended because of an error.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Why the body cannot be stored. Once either limit is crossed nothing more is appended,
    /// but input is still drained. Size wins over line length, whatever came first, so the
    /// answer does not depend on how the input was split.
    pub fn error(&self) -> Option<BodyError> {
        if self.size > self.max_size {
            Some(BodyError::TooLarge)
        } else if self.long_line {
            Some(BodyError::LineTooLong)
        } else {
            None
        }
    }

    /// Decodes from `input`, appending decoded octets to `out`, up to and including the
    /// end-of-data line.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Decoded {
        let mut pos = 0;
        while pos < input.len() {
            if let DecodeState::Text { .. } = self.state {
                // Fast path: copy the run up to the next CR or LF in one go.
                let run = input[pos..].iter().position(|&b| b == b'\r' || b == b'\n');
                let run = run.unwrap_or(input.len() - pos);
                if run > 0 {
                    self.emit(&input[pos..pos + run], out);
                    self.state = DecodeState::Text { cr: false };
                    pos += run;
                    continue;
                }
            }
            let byte = input[pos];
            pos += 1;
            if self.step(byte, out) {
                return Decoded {
                    consumed: pos,
                    done: true,
                };
            }
        }
        Decoded {
            consumed: pos,
            done: false,
        }
    }

    /// One byte through the state machine; true when it completed the end-of-data line.
    fn step(&mut self, byte: u8, out: &mut Vec<u8>) -> bool {
        use DecodeState::*;
        match (self.state, byte) {
            (LineStart { crlf }, b'.') => self.state = Dot { crlf },
            (LineStart { .. }, _) => self.text(false, byte, out),
            (Dot { crlf }, b'\r') => self.state = DotCr { crlf },
            (Dot { .. }, b'\n') => {
                // `.` + bare LF: not an end; a lone dot keeps its dot (see module doc).
                self.emit(b".\r\n", out);
                self.end_line(false);
            }
            // Stuffed line: drop the first dot, the byte is ordinary text.
            (Dot { .. }, _) => self.text(false, byte, out),
            (DotCr { crlf: true }, b'\n') => {
                self.end_line(true);
                return true;
            }
            (DotCr { crlf: false }, b'\n') => {
                // `<LF>.<CRLF>`: not an end.
                self.emit(b".\r\n", out);
                self.end_line(true);
            }
            (DotCr { .. }, _) => {
                // `.` CR x: stuffed line whose text starts with a bare CR.
                self.emit(b"\r", out);
                self.text(true, byte, out);
            }
            (Text { cr }, _) => self.text(cr, byte, out),
        }
        false
    }

    /// A byte inside a line; `cr`: the previous byte of the line was CR.
    fn text(&mut self, cr: bool, byte: u8, out: &mut Vec<u8>) {
        match byte {
            b'\n' if cr => {
                self.emit(b"\n", out);
                self.end_line(true);
            }
            b'\n' => {
                self.emit(b"\r\n", out);
                self.end_line(false);
            }
            _ => {
                self.emit(&[byte], out);
                self.state = DecodeState::Text { cr: byte == b'\r' };
            }
        }
    }

    fn end_line(&mut self, crlf: bool) {
        self.long_line |= self.line_len > MAX_TEXT_LINE;
        self.line_len = 0;
        self.state = DecodeState::LineStart { crlf };
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        self.size = self.size.saturating_add(len);
        // The text-line limit counts the line as stored and forwarded: CRLF-normalised (a bare
        // LF becomes two octets) and without the stuffing dot, which RFC 5321 §4.5.3.1.6
        // excludes (the forwarder adds it back on the wire).
        self.line_len = self.line_len.saturating_add(bytes.len());
        // A line already past the limit is an error as soon as it is seen, so memory stays
        // bounded however long the line grows.
        self.long_line |= self.line_len > MAX_TEXT_LINE;
        if self.size <= self.max_size && !self.long_line {
            out.extend_from_slice(bytes);
        }
    }
}

/// Dot-stuffs a stored body for transmission (RFC 5321 §4.5.2), chunk by chunk.
#[derive(Debug)]
pub struct BodyEncoder {
    at_line_start: bool,
    after_cr: bool,
}

impl Default for BodyEncoder {
    fn default() -> Self {
        Self {
            at_line_start: true,
            after_cr: false,
        }
    }
}

impl BodyEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the stuffed form of `chunk` to `out`. Chunk boundaries may fall anywhere.
    /// Bare LF and bare CR become CRLF, NUL octets are dropped (see `clean`); every line
    /// starting with `.` gets one more. Copies a line at a time, not a byte: this runs over
    /// every octet the forwarder sends.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + chunk.len() / 32);
        let cleaned;
        let mut rest = if chunk.contains(&0) {
            cleaned = clean(chunk);
            &cleaned[..]
        } else {
            chunk
        };
        while let Some(&first) = rest.first() {
            if self.after_cr {
                // The CR is out already: CRLF, or a bare CR completed to one.
                self.after_cr = false;
                self.at_line_start = true;
                out.push(b'\n');
                if first == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            if self.at_line_start && first == b'.' {
                out.push(b'.');
            }
            let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                // No line end in the rest of the chunk: the line goes on in the next one.
                out.extend_from_slice(rest);
                self.at_line_start = false;
                return;
            };
            out.extend_from_slice(&rest[..end]);
            out.push(b'\r');
            if rest[end] == b'\n' {
                out.push(b'\n');
                self.at_line_start = true;
            } else {
                self.after_cr = true;
                self.at_line_start = false;
            }
            rest = &rest[end + 1..];
        }
    }

    /// Appends CRLF if the body did not end with one, then `.\r\n`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.after_cr {
            out.push(b'\n');
        } else if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = Self::default();
    }
}

/// `chunk` without its NUL octets. No bare CR or NUL is forwarded as received: a bare CR
/// (which some servers take for a line end, so `<CR>.<CR>` could end DATA there and smuggle
/// what follows) is sent as CRLF, and NUL, which RFC 5322 §2.3 forbids in a message, is dropped.
fn clean(chunk: &[u8]) -> Vec<u8> {
    chunk.iter().copied().filter(|&b| b != 0).collect()
}

#[cfg(test)]
mod bare_cr;

#[cfg(test)]
mod tests {
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

    /// The model: bare LF and bare CR become CRLF, NUL is dropped, and the body is terminated
    /// by a line end.
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
    fn stuffing_dot_does_not_count_toward_the_line_limit() {
        let line = [b".".to_vec(), vec![b'x'; 998], b"\r\n.\r\n".to_vec()].concat();
        let (out, _, done, error) = decode_split(&line, &[], u64::MAX);
        assert!(done);
        assert_eq!(error, None);
        assert_eq!(out.len(), 1000);
    }

    #[test]
    fn bare_lf_line_counts_as_normalised_crlf() {
        // 999 octets + LF is 1000 on the wire but 1001 once stored as CRLF: too long to forward.
        let line = [vec![b'x'; 999], b"\n\r\n.\r\n".to_vec()].concat();
        let (_, _, done, error) = decode_split(&line, &[], u64::MAX);
        assert!(done);
        assert_eq!(error, Some(BodyError::LineTooLong));
    }

    #[test]
    fn line_of_1000_octets_is_fine_1001_is_drained_then_error() {
        let ok = [vec![b'y'; MAX_TEXT_LINE - 2], b"\r\n.\r\n".to_vec()].concat();
        let (_, _, done, error) = decode_split(&ok, &[], u64::MAX);
        assert!(done && error.is_none());
        let stuffed_ok = [
            b".".to_vec(),
            vec![b'y'; MAX_TEXT_LINE - 3],
            b"\r\n.\r\n".to_vec(),
        ];
        let (_, _, done, error) = decode_split(&stuffed_ok.concat(), &[], u64::MAX);
        assert!(done && error.is_none());
        let long = [vec![b'y'; 5000], b"\r\nok\r\n.\r\n".to_vec()].concat();
        let (out, consumed, done, error) = decode_split(&long, &[999, 1000, 1001], u64::MAX);
        assert!(done);
        assert_eq!(consumed, long.len());
        assert_eq!(error, Some(BodyError::LineTooLong));
        assert!(out.len() <= MAX_TEXT_LINE);
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

    /// The plainest encoder, one byte at a time: the reference the line-at-a-time one must
    /// match.
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
        let mut end = BodyEncoder {
            at_line_start,
            after_cr,
        };
        end.finish(&mut out);
        out
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
    }
}
