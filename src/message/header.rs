//! Header fields (RFC 5322 §2.2): recognising a field line, splitting it into name and value,
//! unfolding continuation lines (§2.2.3), and the fields of a header section held as lines.
//! Pure: no I/O.

use std::ops::Range;

/// Longest line RFC 5322 §2.1.1 allows: 998 characters, without the CRLF.
pub const MAX_LINE: usize = 998;

/// A continuation line of a folded field: it starts with a space or a tab (§2.2.3).
pub fn is_continuation(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

/// `Name:` with RFC 5322 field-name characters (printable ASCII except `:`, §2.2).
pub fn is_field_start(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(colon) if colon > 0 => line[..colon].iter().all(|&b| (33..=126).contains(&b)),
        _ => false,
    }
}

/// `Name: value` as (lowercase name, trimmed value); `None` without a colon.
pub fn split_field(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once(':')?;
    Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
}

/// Unfolds one continuation line onto `value`: the line trimmed, after one space unless
/// `value` is empty. A blank continuation adds nothing, and neither does one that would make
/// `value` longer than `limit` bytes (with the space counted even when it is left out).
pub fn unfold_onto(value: &mut String, continuation: &str, limit: usize) {
    let more = continuation.trim();
    if more.is_empty() || value.len().saturating_add(1).saturating_add(more.len()) > limit {
        return;
    }
    if !value.is_empty() {
        value.push(' ');
    }
    value.push_str(more);
}

/// Lines that form the header section: field lines and their continuation lines, up to the
/// first line that is neither (usually the empty line). Input without a header gives 0.
pub fn section_len(lines: &[&[u8]]) -> usize {
    let mut n = 0;
    for line in lines {
        let continuation = n > 0 && is_continuation(line);
        if !continuation && !is_field_start(line) {
            break;
        }
        n += 1;
    }
    n
}

/// One field of a header section held as lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field name, lowercase.
    pub name: String,
    /// The value, unfolded and trimmed (no length limit).
    pub value: String,
    /// The lines (indices into the section) the field spans, continuation lines included.
    pub lines: Range<usize>,
}

/// The fields of a header section given as lines without their line ends (see `section_len`).
pub fn fields(section: &[&[u8]]) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    for (i, line) in section.iter().enumerate() {
        let text = String::from_utf8_lossy(line);
        if is_continuation(line) {
            if let Some(last) = out.last_mut() {
                unfold_onto(&mut last.value, &text, usize::MAX);
                last.lines.end = i + 1;
            }
            continue;
        }
        if let Some((name, value)) = split_field(&text) {
            out.push(Field {
                name,
                value,
                lines: i..i + 1,
            });
        }
    }
    out
}

/// The value of the first field named `name` (lowercase) among (lowercase name, value) pairs.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&[u8]> {
        text.split('\n').map(str::as_bytes).collect()
    }

    #[test]
    fn field_lines_are_recognised_by_their_name() {
        for (line, start) in [
            (&b"Subject: hi"[..], true),
            (b"X-Priority:1", true),
            (b"Subject : hi", false),
            (b": no name", false),
            (b"no colon", false),
            (b" Folded: no", false),
            (b"", false),
            (b"\xc3\xa9t\xc3\xa9: no", false),
        ] {
            assert_eq!(is_field_start(line), start, "{line:?}");
        }
        assert!(is_continuation(b" more"));
        assert!(is_continuation(b"\tmore"));
        assert!(!is_continuation(b"more"));
        assert!(!is_continuation(b""));
    }

    #[test]
    fn fields_split_into_lowercase_name_and_trimmed_value() {
        for (line, expected) in [
            ("Subject: hi there ", Some(("subject", "hi there"))),
            ("X-Priority:1", Some(("x-priority", "1"))),
            ("Empty:", Some(("empty", ""))),
            ("Time: 12:30", Some(("time", "12:30"))),
            ("no colon", None),
        ] {
            let got = split_field(line);
            let want = expected.map(|(n, v)| (n.to_owned(), v.to_owned()));
            assert_eq!(got, want, "{line}");
        }
    }

    #[test]
    fn unfolding_joins_with_one_space_within_the_limit() {
        for (start, more, limit, expected) in [
            ("a", "  b ", usize::MAX, "a b"),
            ("", "\tb", usize::MAX, "b"),
            ("a", "   ", usize::MAX, "a"),
            ("abc", " de", 6, "abc de"),
            ("abc", " def", 6, "abc"),
            ("", "abc", 3, ""),
        ] {
            let mut value = start.to_owned();
            unfold_onto(&mut value, more, limit);
            assert_eq!(value, expected, "{start:?} + {more:?} within {limit}");
        }
    }

    #[test]
    fn a_section_ends_at_the_first_line_that_is_no_field() {
        for (text, len) in [
            ("A: b\nC: d\n\nbody", 2),
            ("A: b\n folded\nC: d", 3),
            (" A: b\nC: d", 0),
            ("no header\nA: b", 0),
            ("", 0),
            ("A: b\nFrom nobody\nC: d", 1),
        ] {
            assert_eq!(section_len(&lines(text)), len, "{text:?}");
        }
    }

    #[test]
    fn folded_fields_are_unfolded_with_their_line_spans() {
        let section = lines("To: a@x,\n  b@x\nSubject: hi\nCc:\n\tc@x\n \nJunk line");
        let got = fields(&section);
        let want = [
            ("to", "a@x, b@x", 0..2),
            ("subject", "hi", 2..3),
            ("cc", "c@x", 3..6),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (field, (name, value, span)) in got.iter().zip(want) {
            assert_eq!((field.name.as_str(), field.value.as_str()), (name, value));
            assert_eq!(field.lines, span);
        }
        let pairs = [
            ("subject".to_owned(), "one".to_owned()),
            ("subject".to_owned(), "two".to_owned()),
        ];
        assert_eq!(field(&pairs, "subject"), Some("one"));
        assert_eq!(field(&pairs, "date"), None);
    }
}
