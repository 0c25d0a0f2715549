//! Fuzzes `forward::oauth::token_reply`, the judge of the OAuth token endpoint's JSON reply,
//! and through it the bounded JSON reader `json_fields`. Never does I/O.
//!
//! Invariants: no panic and no stack overflow (skipped values nest at most 32 deep); an
//! accepted reply carries a non-empty RFC 6750 b64token and a rotated refresh token without
//! control characters, and neither appears in its `Debug` form; a refused reply's text is short
//! and names at most an RFC 6749 §5.2 `error` code (printable ASCII, at most 64 octets), never
//! the rest of the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::forward::oauth::{token_reply, TokenError};

/// RFC 6750 §2.1 b64token characters.
fn b64token(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/=".contains(c)
}

fuzz_target!(|data: &[u8]| {
    // The same body judged as the answer to a success and to a refusal.
    match token_reply(200, data) {
        Ok(reply) => {
            assert!(!reply.access_token.is_empty());
            assert!(reply.access_token.chars().all(b64token));
            if let Some(rotated) = &reply.refresh_token {
                assert!(!rotated.is_empty());
                assert!(!rotated.contains(|c: char| c.is_ascii_control()));
            }
            // The longest run of token characters in the `Debug` form is a u64 (20 digits).
            let shown = format!("{reply:?}");
            if reply.access_token.len() > 20 {
                assert!(!shown.contains(&reply.access_token), "{shown}");
            }
        }
        Err(TokenError::Status { .. }) => panic!("a 200 judged as a refusal"),
        Err(error) => assert!(error.to_string().len() <= 100, "{error}"),
    }
    match token_reply(400, data) {
        Err(TokenError::Status { code: 400, error }) => {
            if let Some(error) = error {
                assert!(!error.is_empty() && error.len() <= 64, "{error:?}");
                assert!(
                    error.bytes().all(|b| (0x20..0x7f).contains(&b)),
                    "{error:?}"
                );
            }
        }
        other => panic!("a 400 judged as {other:?}"),
    }
});
