//! Where a message's header section ends, and bounded reads of it: from a message being read
//! chunk by chunk (`read_section`) or held whole (`excerpt`). Pure: the chunks are passed in.

/// Where the header section of `message` ends: just past the line end of its last line, at
/// the empty line that separates it from the body (CRLF, or a bare LF for input that has
/// those). `None` while no empty line is in sight.
pub fn section_end(message: &[u8]) -> Option<usize> {
    find(message, b"\r\n\r\n")
        .map(|i| i + 2)
        .or_else(|| find(message, b"\n\n").map(|i| i + 1))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads the header section of a message given as chunks, without the empty line that ends
/// it, and at most `limit` bytes of it (cut wherever the limit falls). Stops taking chunks at
/// the end of the section or past the limit, so only a bounded start of the message is ever
/// held. A message without a body gives all of it, up to the limit.
pub fn read_section<E>(
    chunks: impl IntoIterator<Item = Result<Vec<u8>, E>>,
    limit: usize,
) -> Result<Vec<u8>, E> {
    let mut bytes = Vec::new();
    for chunk in chunks {
        bytes.extend_from_slice(&chunk?);
        if let Some(end) = find(&bytes, b"\r\n\r\n") {
            bytes.truncate(end + 2);
            break;
        }
        if bytes.len() > limit {
            break;
        }
    }
    bytes.truncate(limit);
    Ok(bytes)
}

/// The header section of `message` (all of it if it has no body), cut at the last whole line
/// within `limit` bytes: empty if its first line alone is longer.
pub fn excerpt(message: &[u8], limit: usize) -> &[u8] {
    let section = &message[..section_end(message).unwrap_or(message.len())];
    if section.len() <= limit {
        return section;
    }
    let cut = &section[..limit];
    match cut.iter().rposition(|&b| b == b'\n') {
        Some(i) => &cut[..=i],
        None => &[],
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// `message` in chunks of `size` bytes, as the store hands a body out.
    fn chunks(message: &[u8], size: usize) -> Vec<Result<Vec<u8>, Infallible>> {
        message.chunks(size).map(|c| Ok(c.to_vec())).collect()
    }

    #[test]
    fn the_section_ends_at_the_empty_line() {
        for (message, end) in [
            (&b"A: b\r\nC: d\r\n\r\nbody\r\n\r\nmore"[..], Some(12)),
            (b"A: b\n\nbody", Some(5)),
            (b"\r\n\r\nbody", Some(2)),
            (b"A: b\r\n", None),
            (b"", None),
        ] {
            assert_eq!(section_end(message), end, "{message:?}");
        }
    }

    #[test]
    fn a_bounded_read_stops_at_the_section_end_in_any_chunking() {
        let message = b"Subject: hi\r\nTo: a@x\r\n\r\nbody\r\n\r\nmore\r\n";
        for size in 1..message.len() + 1 {
            let read = read_section(chunks(message, size), 1024);
            assert_eq!(
                read,
                Ok(b"Subject: hi\r\nTo: a@x\r\n".to_vec()),
                "size {size}"
            );
        }
        assert_eq!(
            read_section(chunks(b"A: b\r\n", 4), 1024),
            Ok(b"A: b\r\n".to_vec())
        );
        assert_eq!(read_section(chunks(b"", 4), 1024), Ok(Vec::new()));
    }

    #[test]
    fn a_bounded_read_takes_at_most_the_limit_and_stops_taking_chunks() {
        let mut message = Vec::new();
        while message.len() < 100_000 {
            message.extend_from_slice(b"X-Filler: 0123456789\r\n");
        }
        message.extend_from_slice(b"\r\nbody");
        for (limit, size) in [
            (1000, 64),
            (1000, 1000),
            (1000, 1001),
            (64 * 1024, 32 * 1024),
        ] {
            let mut taken = 0;
            let counted = chunks(&message, size).into_iter().inspect(|_| taken += 1);
            let read = read_section(counted, limit);
            assert_eq!(read, Ok(message[..limit].to_vec()), "{limit}/{size}");
            assert_eq!(taken, limit / size + 1, "{limit}/{size}");
        }
        // The section ends within the last chunk taken but past the limit: still cut.
        let read = read_section(chunks(b"A: bcdefgh\r\n\r\nbody", 64), 4);
        assert_eq!(read, Ok(b"A: b".to_vec()));
        // A failing chunk fails the read.
        let failing = [Ok(b"A: b\r\n".to_vec()), Err("lost")];
        assert_eq!(read_section(failing, 1024), Err("lost"));
    }

    #[test]
    fn an_excerpt_is_the_section_cut_at_a_whole_line() {
        for (message, limit, expected) in [
            (
                &b"A: b\r\nC: d\r\n\r\nbody"[..],
                100,
                &b"A: b\r\nC: d\r\n"[..],
            ),
            (b"A: b\n\nbody", 100, b"A: b\n"),
            (b"A: b\r\n", 100, b"A: b\r\n"),
            (b"A: b\r\nC: d\r\n\r\nbody", 11, b"A: b\r\n"),
            (b"A: b\r\nC: d\r\n\r\nbody", 12, b"A: b\r\nC: d\r\n"),
            (b"Abcdef: g\r\n\r\n", 4, b""),
        ] {
            assert_eq!(
                excerpt(message, limit),
                expected,
                "{message:?} within {limit}"
            );
        }
    }
}
