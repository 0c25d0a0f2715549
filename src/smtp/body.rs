//! DATA body codec: `BodyDecoder` (dot-unstuffing, CRLF.CRLF, bare-LF policy, size count) for
//! the receiver and `BodyEncoder` (dot-stuffing, folding of long lines) for the forwarder.
//! Performs no I/O and never holds more than the bytes it is given.
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
//!
//! # Long lines
//!
//! RFC 5321 §4.5.3.1.6 limits a text line to 1000 octets with its CRLF, yet cron jobs and
//! scripts write longer ones. The decoder accepts a line of any length (only
//! `max_message_size` bounds it) and stores it as received. The encoder folds it for
//! transport as Postfix does with `smtp_line_length_limit = 998`: after 998 octets of text it
//! inserts `CRLF SP`, so every line sent is at most 998 octets plus CRLF (plus a stuffing
//! dot, which §4.5.3.1.6 does not count), and removing each inserted `CRLF SP` gives the
//! stored line back. Lines of 998 octets or fewer go out unchanged.

/// RFC 5321 §4.5.3.1.6: the longest text line the forwarder sends, including the CRLF and
/// excluding the stuffing dot. Longer stored lines are folded (see the module doc).
pub const MAX_TEXT_LINE: usize = 1000;

/// The longest line's text without its CRLF (RFC 5322 §2.1.1: 998 characters).
const MAX_LINE_TEXT: usize = MAX_TEXT_LINE - 2;

/// Why a body, although fully drained, cannot be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Decoded size exceeded `max_message_size` (552 5.3.4).
    TooLarge,
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
    size: u64,
    max_size: u64,
}

impl BodyDecoder {
    pub fn new(max_size: u64) -> Self {
        Self {
            state: DecodeState::LineStart { crlf: true },
            size: 0,
            max_size,
        }
    }

    /// Decoded octets so far, including those not appended because of an error.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Why the body cannot be stored. Once the size limit is crossed nothing more is appended,
    /// but input is still drained. Line length is no reason: a line of any length is stored
    /// as received (it costs no more memory than its octets in `out`, which the caller writes
    /// out as it goes) and folded by the `BodyEncoder` when forwarded.
    pub fn error(&self) -> Option<BodyError> {
        (self.size > self.max_size).then_some(BodyError::TooLarge)
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
        self.state = DecodeState::LineStart { crlf };
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        self.size = self.size.saturating_add(len);
        if self.size <= self.max_size {
            out.extend_from_slice(bytes);
        }
    }
}

/// Dot-stuffs and folds a stored body for transmission (RFC 5321 §4.5.2, §4.5.3.1.6), chunk by
/// chunk.
#[derive(Debug)]
pub struct BodyEncoder {
    /// At the start of a line: a `.` here gets stuffed.
    at_line_start: bool,
    /// The last byte seen was a CR, already sent as a line end (CRLF): an LF right after it
    /// belongs to it and is skipped.
    after_cr: bool,
    /// Octets of text on the current output line, the stuffing dot excluded.
    column: usize,
}

impl Default for BodyEncoder {
    fn default() -> Self {
        Self {
            at_line_start: true,
            after_cr: false,
            column: 0,
        }
    }
}

impl BodyEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the stuffed and folded form of `chunk` to `out`. Chunk boundaries may fall
    /// anywhere. Bare LF and bare CR become CRLF, NUL octets are dropped (see `clean`); every
    /// line starting with `.` gets one more; a line longer than 998 octets is folded. Copies a
    /// run at a time, not a byte: this runs over every octet the forwarder sends.
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
                // The CR went out as a line end already; an LF right after it belongs to it.
                self.after_cr = false;
                if first == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            if self.at_line_start && first == b'.' {
                out.push(b'.');
            }
            let Some(stop) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
                // No line end in the rest of the chunk: the line goes on in the next one.
                self.text(rest, out);
                return;
            };
            self.text(&rest[..stop], out);
            self.end_line(out);
            self.after_cr = rest[stop] == b'\r';
            rest = &rest[stop + 1..];
        }
    }

    /// Appends CRLF if the body did not end with one, then `.\r\n`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = Self::default();
    }

    /// Text of the current line, folded where it would pass 998 octets: `CRLF SP` goes in
    /// before the octet that would be the 999th, as Postfix's `smtp_line_length_limit` does.
    /// The continuation starts with the space, so it is never stuffed and never ends DATA.
    fn text(&mut self, mut text: &[u8], out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        self.at_line_start = false;
        while !text.is_empty() {
            if self.column == MAX_LINE_TEXT {
                out.extend_from_slice(b"\r\n ");
                self.column = 1;
            }
            let take = text.len().min(MAX_LINE_TEXT - self.column);
            out.extend_from_slice(&text[..take]);
            self.column += take;
            text = &text[take..];
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.at_line_start = true;
        self.column = 0;
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
mod tests;
