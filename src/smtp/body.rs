//! DATA body codec: `BodyDecoder` (dot-unstuffing, CRLF.CRLF, bare-LF policy, size count) for
//! the receiver and `BodyEncoder` (dot-stuffing) for the forwarder. Performs no I/O.

/// Dot-stuffs a stored body for transmission (RFC 5321 §4.5.2), chunk by chunk.
#[derive(Debug, Default)]
pub struct BodyEncoder {}

impl BodyEncoder {
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends the stuffed form of `chunk` to `out`. Chunk boundaries may fall anywhere.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let _ = (chunk, out);
        todo!()
    }
    /// Appends CRLF if the body did not end with one, then `.\r\n`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let _ = out;
        todo!()
    }
}
