//! Command-line framing: finds CRLF (or bare LF) line ends in the caller's input buffer and
//! enforces the RFC 5321 §4.5.3.1.4 command-line limit. Performs no I/O.
//!
//! The framer borrows the caller's buffer (the glue's fixed-size read buffer) instead of copying
//! into its own: a line is only consumed once complete, so pipelined bytes after it stay in the
//! caller's buffer as leftover (what STARTTLS needs, see `server`). A partial line is never
//! consumed unless it is already over-long, which keeps the unconsumed tail under
//! `MAX_COMMAND_LINE` octets: a caller buffer of at least that size never deadlocks.

/// RFC 5321 §4.5.3.1.4: maximum command line, including the CRLF.
pub const MAX_COMMAND_LINE: usize = 512;

/// One framing result over the start of an input slice.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line, without its CRLF or bare LF.
    Line { line: &'a [u8], consumed: usize },
    /// The end of an over-long line was reached; the whole line was discarded.
    TooLong { consumed: usize },
    /// No complete line: read more. `consumed` is non-zero only while discarding an over-long
    /// line, and the unconsumed rest is always shorter than `MAX_COMMAND_LINE`.
    Partial { consumed: usize },
}

/// Frames command lines; its only state is "inside an over-long line being discarded".
#[derive(Debug, Default)]
pub struct LineFramer {
    discarding: bool,
}

impl LineFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets a line being discarded (after a TLS handshake the byte stream starts afresh).
    pub fn reset(&mut self) {
        self.discarding = false;
    }

    /// Frames the next line at the start of `input`.
    pub fn next_line<'a>(&mut self, input: &'a [u8]) -> Frame<'a> {
        let newline = input.iter().position(|&b| b == b'\n');
        match newline {
            Some(lf) if self.discarding => {
                self.discarding = false;
                Frame::TooLong { consumed: lf + 1 }
            }
            Some(lf) if lf + 1 > MAX_COMMAND_LINE => Frame::TooLong { consumed: lf + 1 },
            Some(lf) => {
                let line = &input[..lf];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                Frame::Line {
                    line,
                    consumed: lf + 1,
                }
            }
            None if self.discarding || input.len() >= MAX_COMMAND_LINE => {
                // No line end within the limit: this line can no longer be valid. Drop what we
                // have, remember to drop the rest of it too.
                self.discarding = true;
                Frame::Partial {
                    consumed: input.len(),
                }
            }
            None => Frame::Partial { consumed: 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames `input` fed in chunks of `chunk` bytes through a caller buffer that keeps the
    /// unconsumed tail, as the glue does. Returns lines (`None` for a too-long line).
    fn frame_all(input: &[u8], chunk: usize) -> Vec<Option<Vec<u8>>> {
        let mut framer = LineFramer::new();
        let mut buffer = Vec::new();
        let mut lines = Vec::new();
        for piece in input.chunks(chunk) {
            buffer.extend_from_slice(piece);
            loop {
                match framer.next_line(&buffer) {
                    Frame::Line { line, consumed } => {
                        lines.push(Some(line.to_vec()));
                        buffer.drain(..consumed);
                    }
                    Frame::TooLong { consumed } => {
                        lines.push(None);
                        buffer.drain(..consumed);
                    }
                    Frame::Partial { consumed } => {
                        buffer.drain(..consumed);
                        assert!(buffer.len() < MAX_COMMAND_LINE);
                        break;
                    }
                }
            }
        }
        lines
    }

    #[test]
    fn crlf_and_bare_lf_both_end_command_lines() {
        let lines = frame_all(b"NOOP\r\nNOOP\nNOOP\r\r\nPART", 1000);
        let expected: Vec<Option<Vec<u8>>> = vec![
            Some(b"NOOP".to_vec()),
            Some(b"NOOP".to_vec()),
            Some(b"NOOP\r".to_vec()),
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn line_of_exactly_512_octets_is_accepted_513_is_not() {
        let ok = [vec![b'A'; MAX_COMMAND_LINE - 2], b"\r\n".to_vec()].concat();
        assert_eq!(
            frame_all(&ok, 4096),
            vec![Some(vec![b'A'; MAX_COMMAND_LINE - 2])]
        );
        let long = [vec![b'A'; MAX_COMMAND_LINE - 1], b"\r\n".to_vec()].concat();
        assert_eq!(frame_all(&long, 4096), vec![None]);
    }

    #[test]
    fn over_long_line_is_discarded_to_its_end_then_framing_resumes() {
        let input = [vec![b'X'; 5000], b"\r\nQUIT\r\n".to_vec()].concat();
        for chunk in [1, 7, 511, 512, 513, 4096, 10_000] {
            assert_eq!(
                frame_all(&input, chunk),
                vec![None, Some(b"QUIT".to_vec())],
                "{chunk}"
            );
        }
    }

    #[test]
    fn framing_is_independent_of_chunk_boundaries() {
        let mut input = b"EHLO a\r\nMAIL FROM:<a@b.example>\nRCPT TO:<c@d.example>\r\n".to_vec();
        input.extend([b'Z'; 600]);
        input.extend(b"\nDATA\r\n");
        let whole = frame_all(&input, input.len());
        assert_eq!(whole.len(), 5);
        for chunk in 1..input.len() {
            assert_eq!(frame_all(&input, chunk), whole, "chunk {chunk}");
        }
    }
}
