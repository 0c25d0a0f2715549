//! Tests of sender rewriting: the envelope sender, From: and Reply-To: in the header section,
//! and the streaming wrapper in any chunking.

use std::convert::Infallible;

use super::*;

const FROM: &str = "alerts@site.example";

fn rewritten(message: &str) -> String {
    let out = rewrite_header(message.as_bytes(), FROM).expect("rewritten");
    String::from_utf8(out).expect("UTF-8")
}

/// `message` streamed in chunks of `size` through `rewrite_from`, joined.
fn streamed(message: &[u8], size: usize, from: Option<&str>) -> Vec<u8> {
    let chunks = message
        .chunks(size)
        .map(|c| Ok::<_, Infallible>(c.to_vec()));
    rewrite_from(chunks, from.map(str::to_owned))
        .map(|c| c.expect("no error"))
        .collect::<Vec<_>>()
        .concat()
}

#[test]
fn the_null_sender_stays_null() {
    assert_eq!(envelope_sender("", Some(FROM)), "");
    assert_eq!(envelope_sender("root@pi", Some(FROM)), FROM);
    assert_eq!(envelope_sender("root@pi", None), "root@pi");
}

#[test]
fn from_is_replaced_and_kept_in_reply_to() {
    let message = "Received: by x\r\n\tfor y\r\nFrom: Cron Daemon <root@pi>\r\nSubject: s\r\n\r\nFrom: body\r\n";
    assert_eq!(
        rewritten(message),
        "Received: by x\r\n\tfor y\r\nFrom: Cron Daemon <alerts@site.example>\r\n\
         Reply-To: Cron Daemon <root@pi>\r\nSubject: s\r\n\r\nFrom: body\r\n"
    );
    // A folded From: is kept folded in Reply-To:.
    assert_eq!(
        rewritten("From: a@pi,\r\n b@pi\r\n\r\nx"),
        "From: alerts@site.example\r\nReply-To: a@pi,\r\n b@pi\r\n\r\nx"
    );
}

#[test]
fn an_existing_reply_to_is_kept_and_extra_from_fields_go() {
    assert_eq!(
        rewritten("Reply-To: ops@x\nFrom: <root@pi>\nFrom: other@pi\n\nbody\n"),
        "Reply-To: ops@x\nFrom: alerts@site.example\n\nbody\n"
    );
}

#[test]
fn a_message_without_from_gets_one() {
    assert_eq!(
        rewritten("Subject: s\r\n\r\nbody\r\n"),
        "Subject: s\r\nFrom: alerts@site.example\r\n\r\nbody\r\n"
    );
    assert_eq!(
        rewritten("Subject: s"),
        "Subject: s\r\nFrom: alerts@site.example\r\n"
    );
    assert_eq!(
        rewritten("\r\nbody\r\n"),
        "From: alerts@site.example\r\n\r\nbody\r\n"
    );
}

#[test]
fn nothing_changes_when_from_is_already_the_address_or_there_is_no_header() {
    for message in [
        "From: alerts@site.example\r\n\r\nbody\r\n",
        "From: Alerts <ALERTS@site.example>\r\n\r\nbody\r\n",
        "not a header\r\nFrom: x@y\r\n",
    ] {
        assert_eq!(rewrite_header(message.as_bytes(), FROM), None, "{message}");
    }
}

#[test]
fn streaming_gives_the_same_in_any_chunking() {
    let message = b"Received: by x\r\nFrom: root@pi\r\nSubject: s\r\n\r\nbody\r\nmore\r\n";
    let expected = b"Received: by x\r\nFrom: alerts@site.example\r\nReply-To: root@pi\r\n\
                     Subject: s\r\n\r\nbody\r\nmore\r\n";
    for size in 1..=message.len() {
        assert_eq!(streamed(message, size, Some(FROM)), expected, "size {size}");
        assert_eq!(streamed(message, size, None), message, "size {size}");
    }
    assert_eq!(streamed(b"", 4, Some(FROM)), b"");
}

#[test]
fn a_header_past_the_bound_goes_out_unchanged_and_only_the_bound_is_held() {
    let mut message = b"From: root@pi\r\n".to_vec();
    while message.len() <= MAX_HEADER + 4096 {
        message.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
    }
    message.extend_from_slice(b"\r\nbody\r\n");
    let chunks: Vec<Result<Vec<u8>, Infallible>> =
        message.chunks(1024).map(|c| Ok(c.to_vec())).collect();
    let mut stream = rewrite_from(chunks.into_iter(), Some(FROM.to_owned()));
    let first = stream.next().expect("a chunk").expect("no error");
    assert!(first.len() <= MAX_HEADER + 1024);
    let rest: Vec<u8> = stream
        .map(|c| c.expect("no error"))
        .collect::<Vec<_>>()
        .concat();
    assert!([first, rest].concat() == message, "the message changed");
}

#[test]
fn a_store_error_is_passed_on() {
    let chunks = vec![Ok(b"From: a@b\r\n".to_vec()), Err("lost")];
    let mut stream = rewrite_from(chunks.into_iter(), Some(FROM.to_owned()));
    assert_eq!(stream.next(), Some(Err("lost")));
}
