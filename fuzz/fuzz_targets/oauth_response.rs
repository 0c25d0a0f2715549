//! Fuzzes `forward::oauth::parse_response`, the reader of the OAuth token endpoint's HTTP reply
//! (head by `httparse`, then a body with `Content-Length`, chunked, or ended by the close), and
//! `token_reply` on whatever body it returns. Never does I/O.
//!
//! Invariants: no panic; a reply is complete or not regardless of how its bytes arrive (once a
//! prefix gives a reply, every longer prefix and the closed stream give the same one); a status
//! is 100–599 and a body is never longer than the input; an unusable reply's error text is short
//! and never quotes the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::forward::oauth::{parse_response, token_reply, MAX_RESPONSE};

#[path = "common.rs"]
mod common;
use common::Cursor;

fuzz_target!(|data: &[u8]| {
    // Header: the step at which prefixes are tried (1–16 octets), then the reply bytes.
    let mut cursor = Cursor::new(data);
    let step = usize::from(cursor.byte() % 16) + 1;
    let input = cursor.rest();
    if input.len() > MAX_RESPONSE {
        assert!(
            parse_response(input, true).is_err(),
            "a reply over the limit"
        );
        return;
    }

    let mut complete = None;
    let mut end = 0;
    while end < input.len() {
        end = (end + step).min(input.len());
        match parse_response(&input[..end], false) {
            Ok(Some(reply)) => {
                if let Some(first) = &complete {
                    assert_eq!(first, &reply, "a longer prefix changed the reply");
                }
                complete.get_or_insert(reply);
            }
            Ok(None) => assert!(complete.is_none(), "a complete reply became incomplete"),
            Err(_) => {}
        }
    }
    let at_close = parse_response(input, true);
    if let Some(first) = &complete {
        assert_eq!(
            at_close.as_ref(),
            Ok(&Some(first.clone())),
            "the close changed a reply"
        );
    }
    let Ok(Some((code, body))) = at_close else {
        return;
    };
    assert!((100..600).contains(&code), "status {code}");
    assert!(body.len() <= input.len(), "body longer than the input");
    if let Err(error) = token_reply(code, &body) {
        // Longest text: the status with a 64-octet `error` code.
        assert!(error.to_string().len() <= 100, "{error}");
    }
});
