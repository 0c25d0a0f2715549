//! The escaping of log values: a hostile reply or address cannot close its field or add a line.

use super::{Escaped, Quoted};

#[test]
fn a_quote_in_a_reply_cannot_forge_a_field() {
    let reply = r#"250 ok" status=sent x=""#;
    let line = format!("status=deferred reply={}", Quoted(reply));
    assert_eq!(line, r#"status=deferred reply="250 ok\" status=sent x=\"""#);
    // A parser that reads the quoted value up to the first unescaped quote gets it all back.
    let value = &line["status=deferred reply=".len()..];
    assert!(value.starts_with('"') && value.ends_with('"'));
    let inner = &value[1..value.len() - 1];
    let unescaped_quotes = inner
        .char_indices()
        .filter(|&(i, c)| c == '"' && !inner[..i].ends_with('\\'))
        .count();
    assert_eq!(unescaped_quotes, 0, "{line}");
}

#[test]
fn backslashes_and_control_characters_are_escaped() {
    let text = "a\\b\r\nc\0d\x1be\u{7f}f\u{85}g\u{2028}h";
    assert_eq!(
        Quoted(text).to_string(),
        r#""a\\b\x0d\x0ac\x00d\x1be\x7ff\x85g\u{2028}h""#
    );
}

#[test]
fn plain_text_and_utf8_pass_unchanged() {
    assert_eq!(
        Quoted("250 2.0.0 Ok: queued as 4Bx").to_string(),
        "\"250 2.0.0 Ok: queued as 4Bx\""
    );
    assert_eq!(
        Escaped("jörg@exämple.test").to_string(),
        "jörg@exämple.test"
    );
}

#[test]
fn an_address_cannot_close_its_angle_brackets() {
    let address = "\"a> status=sent\"@x.test";
    assert_eq!(
        format!("to=<{}>", Escaped(address)),
        r#"to=<\"a\x3e status=sent\"@x.test>"#
    );
}
