//! Fuzzes command framing (`LineFramer`) and `parse_command`. Never does I/O.
//!
//! Invariants: no panic; the framer makes progress, never returns a line containing LF or over
//! `MAX_COMMAND_LINE`, and keeps the unconsumed tail of a partial line under that limit;
//! every syntax error maps to a well-formed reply; accepted names and addresses carry no
//! control characters (they end up in `Received:` headers, logs and generated DSNs) and keep
//! within the RFC 5321 path limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::smtp::address::MAX_PATH;
use outpost::smtp::command::{parse_command, Command};
use outpost::smtp::line::{Frame, LineFramer, MAX_COMMAND_LINE};
use outpost::smtp::reply::Reply;

#[path = "common.rs"]
mod common;
use common::{check_replies, expand, Cursor};

/// Command tokens (the smtp-proto alphabet trick): verbs, keywords, parameters, path parts.
const TOKENS: &[&[u8]] = &[
    b"EHLO ",
    b"HELO ",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"VRFY ",
    b"HELP",
    b"STARTTLS",
    b"AUTH ",
    b"BDAT ",
    b"EXPN ",
    b"mail from:",
    b"rcpt to:",
    b"ehlo ",
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b"<",
    b">",
    b"<>",
    b"@",
    b":",
    b",",
    b".",
    b"\"",
    b"\\",
    b"[",
    b"]",
    b"IPv6:",
    b"::1",
    b"192.0.2.1",
    b"SIZE=",
    b"BODY=8BITMIME",
    b"BODY=7BIT",
    b"SMTPUTF8",
    b"RET=HDRS",
    b"NOTIFY=NEVER",
    b"=",
    b"PLAIN",
    b"LOGIN",
    b"AGNhbWVyYQBwdw==",
    b"*",
    b"postmaster",
    b"Postmaster@",
    b"user",
    b"example.com",
    b"lan",
    b"@a,@b:",
    b"18446744073709551616",
    b"1000",
    b"\xc3\xbc",
    b"\xe2\x82\xac",
    b"\xff",
    b"\0",
    b"\x7f",
    &[b'l'; 64],
    &[b'd'; 63],
    &[b'x'; 250],
    &[b'y'; 511],
];

fn check_command(command: &Command) {
    let clean = |s: &str| !s.chars().any(char::is_control);
    match command {
        Command::Ehlo(name) | Command::Helo(name) => {
            assert!(!name.is_empty() && clean(name), "HELO name {name:?}");
            assert!(
                !name.contains([' ', '\t']),
                "HELO name with white space {name:?}"
            );
        }
        Command::Mail { path, .. } => {
            let path = path.as_str();
            assert!(clean(path) && path.len() + 2 <= MAX_PATH, "sender {path:?}");
        }
        Command::Rcpt { path } => {
            let path = path.as_str();
            assert!(!path.is_empty() && clean(path), "recipient {path:?}");
            assert!(path.len() + 2 <= MAX_PATH, "recipient over the path limit");
        }
        Command::Auth {
            mechanism,
            initial_response,
        } => {
            assert!(!mechanism.is_empty() && clean(mechanism));
            if let Some(response) = initial_response {
                assert!(clean(&response.0));
            }
        }
        _ => {}
    }
}

fn parse_line(line: &[u8]) {
    match parse_command(line) {
        Ok(command) => check_command(&command),
        Err(error) => {
            let mut wire = Vec::new();
            Reply::from(&error).write_to(&mut wire);
            check_replies(&wire);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cursor = Cursor::new(data);
    let mode = cursor.byte();
    let rest = cursor.rest();
    let input = if mode & 1 == 0 {
        expand(rest, TOKENS)
    } else {
        rest.to_vec()
    };
    // The raw parser on the whole input as one "line" (framing not involved).
    if mode & 2 != 0 {
        parse_line(&input);
        return;
    }
    // Framing over a buffer that keeps the unconsumed tail, fed in chunks of `step` bytes.
    let step = usize::from(mode >> 2).max(1) * 16;
    let mut framer = LineFramer::new();
    let mut buffer: Vec<u8> = Vec::new();
    for chunk in input.chunks(step) {
        buffer.extend_from_slice(chunk);
        loop {
            match framer.next_line(&buffer) {
                Frame::Line { line, consumed } => {
                    assert!(consumed > line.len() && consumed <= buffer.len());
                    assert!(!line.contains(&b'\n'), "framed line contains LF");
                    assert!(consumed <= MAX_COMMAND_LINE, "over-long line framed");
                    let line = line.to_vec();
                    buffer.drain(..consumed);
                    parse_line(&line);
                }
                Frame::TooLong { consumed } => {
                    assert!(consumed > 0 && consumed <= buffer.len());
                    buffer.drain(..consumed);
                }
                Frame::Partial { consumed } => {
                    assert!(consumed <= buffer.len());
                    buffer.drain(..consumed);
                    assert!(
                        buffer.len() < MAX_COMMAND_LINE,
                        "partial tail over the limit"
                    );
                    break;
                }
            }
        }
    }
});
