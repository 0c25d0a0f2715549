//! The sans-I/O SMTP protocol core. Performs no I/O, reads no clock, touches no store.
//!
//! Bytes and time arrive as arguments; replies and decisions leave as return values. The async
//! glue in `net` owns sockets, timers and TLS; the store owns durability. Nothing here may name
//! the runtime, the database, the TLS library, or the standard network and file modules (CI
//! greps for them); addresses use `core::net`.
//!
//! # Layout
//!
//! - [`server`]: `ServerSession`, the receiver state machine (states named for what they
//!   await, one `check_*`/`proceed_*` pair per command, sticky `Closed`), its `ReplyBuffer`
//!   (replies waiting to be written) and [`server::canned`], the receiver's named replies,
//!   each with its RFC 3463 status.
//! - [`client`]: `ClientSession`, the forwarder's state machine, with a per-recipient report.
//! - [`command`]: `Command`, `parse_command`, `SyntaxError` and its one table of replies.
//! - [`reply`]: `Reply`, its wire form (the one place that formats replies), `parse_reply`.
//! - [`address`]: `Mailbox`, `ReversePath` (RFC 5321 §4.1.2 grammar).
//! - [`auth`]: SASL PLAIN/LOGIN decoding (server) and encoding (client); no password checks.
//! - [`line`](mod@line): command-line framing over the caller's buffer.
//! - [`body`]: `BodyDecoder` (dot-unstuffing, end of data, line-end policy, limits) and
//!   `BodyEncoder` (dot-stuffing and folding of long lines for the forwarder).
//!
//! # Standards implemented (receiver)
//!
//! | RFC | what |
//! |---|---|
//! | 5321 | SMTP: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, VRFY (252), HELP; §4.4 `Received:` |
//! | 2920 | PIPELINING: replies in order, flushed at the end of each group |
//! | 1870 | SIZE: advertised, `SIZE=` refused early at MAIL, enforced while draining |
//! | 6152 | 8BITMIME: `BODY=7BIT` / `BODY=8BITMIME` |
//! | 2034, 3463 | ENHANCEDSTATUSCODES on every reply but the greeting, EHLO/HELO and 354 |
//! | 6531 | SMTPUTF8: UTF-8 addresses only in transactions that declare it (else 553 5.6.7) |
//! | 3207 | STARTTLS (when the glue offers it): state reset after the handshake |
//! | 3848 | `with ESMTP`/`SMTP`/`ESMTPS` (and RFC 6531 `UTF8SMTP[S]`) in `Received:` |
//! | 4954 | AUTH PLAIN (RFC 4616) and LOGIN, advertised and accepted only over TLS ([`auth`]) |
//! | 3207 §4 | `require_tls`: MAIL before STARTTLS gets `530 5.7.0` |
//!
//! The client side (RFC 5321, 2920, 1870, 6152, 6531, 3207; AUTH PLAIN/LOGIN, and OAUTHBEARER
//! (RFC 7628) or XOAUTH2 with an OAuth 2.0 token) is described in [`client`].
//!
//! # Limits
//!
//! | limit | value | source | when exceeded |
//! |---|---|---|---|
//! | command line | 512 octets incl. CRLF ([`MAX_COMMAND_LINE`](line::MAX_COMMAND_LINE)) | RFC 5321 §4.5.3.1.4 | discarded to its end, `500 5.5.2` |
//! | body text line | none received (`max_message_size` only); 1000 octets incl. CRLF sent ([`body::MAX_TEXT_LINE`]) | RFC 5321 §4.5.3.1.6 | stored as received, folded with `CRLF SP` when forwarded |
//! | local part / domain / path | 64 / 255 / 256 octets | RFC 5321 §4.5.3.1.1–3 | `501 5.1.7` (sender), `501 5.1.3` (recipient) |
//! | reply line | 512 octets ([`reply::MAX_REPLY_LINE`]) | RFC 5321 §4.5.3.1.5 | truncated by `Reply::write_to` |
//! | message size | `max_message_size` (config) | RFC 1870 | `552 5.3.4` at MAIL, or after draining the body |
//! | recipients | `max_recipients` (config) | RFC 5321 §4.5.3.1.8 | `452 4.5.3` per extra RCPT |
//! | bad commands | `max_errors` (config) | Postfix `smtpd_hard_error_limit` | `421 4.7.0`, close |
//! | `Received:` fields (hops) | `max_hops` (config; counted by the glue) | Postfix `hopcount_limit` | body drained, `554 5.4.6` |
//! | NOOP, RSET, VRFY, HELP since the last accepted message | 100 ([`JUNK_COMMAND_LIMIT`](server::JUNK_COMMAND_LIMIT)) | Postfix `smtpd_junk_command_limit` | each further one counts towards `max_errors` |
//! | queued replies | about 4 KiB per `handle_input` call | — | `Next::FlushReplies` |
//! | unconsumed input at `NeedInput` | < 512 octets | — | a 4 KiB caller buffer never stalls |
//!
//! # Line ends and end of data
//!
//! Commands end at CRLF or a bare LF (lenient for LAN devices). DATA ends only at
//! `<CRLF>.<CRLF>`; bare LF in the body is stored as CRLF, and a lone `.` line that did not end
//! DATA is stored as `.` CRLF, which the forwarder stuffs again. The precise rules are in
//! [`body`].
//!
//! # Known attacks
//!
//! - **STARTTLS command injection (CVE-2011-0411).** Plaintext pipelined after STARTTLS must
//!   not be executed inside the TLS session. `handle_input` stops consuming right after the
//!   STARTTLS line (the glue drops the leftover), drops input fed before `tls_established`, and
//!   `tls_established` forgets HELO and any transaction; the glue drops a connection that sent
//!   anything behind STARTTLS. Proven by
//!   `smtp::server::tests::starttls_leaves_pipelined_plaintext_unconsumed_and_resets_the_session`
//!   and, through the daemon over TCP, `daemon::tests::inbound::plaintext_pipelined_after_starttls_is_never_executed`.
//! - **SMTP smuggling** (bare LF, `<LF>.<LF>`, `<LF>.<CRLF>`, `<CRLF>.<LF>`). Only
//!   `<CRLF>.<CRLF>` ends DATA, and whatever is stored is re-stuffed on the way out, so outpost
//!   and its smarthost always agree where a message ends. Proven by
//!   `smtp::body::tests::end_of_data_only_on_crlf_dot_crlf`,
//!   `smtp::body::tests::smuggled_dot_lines_are_stored_with_their_dot`,
//!   `smtp::body::tests::decode_of_encode_is_normalised_input` (proptest) and
//!   `smtp::server::tests::bare_lf_dot_does_not_end_data`. A bare CR (`<CR>.<CR>`, which some
//!   servers take for a line end) is stored as received and sent as CRLF, so the dot line goes
//!   out stuffed; NUL is never sent. Proven by `smtp::body::bare_cr` and, through the daemon,
//!   `hostile::bare_cr_and_nul_never_reach_the_smarthost` (`tests/it`).
//! - **Open relay.** Every RCPT from a client the glue did not mark `relay_allowed` (from
//!   `relay_from`) gets `554 5.7.1`, `postmaster` included, and such refusals count towards
//!   `max_errors`. Proven by `smtp::server::tests::relay_denied_gets_554_5_7_1`. A `relay_from`
//!   that adds up to everyone is refused at start unless `require_auth` (MAIL before AUTH gets
//!   `530 5.7.0`): `smtp::server::tests::hostile` and `config::validate::relay`.
//! - **AUTH in plaintext.** AUTH is advertised only once TLS is active; AUTH without TLS gets
//!   `538 5.7.11` before any credentials are exchanged, and SASL responses never reach a log
//!   (`Credentials` and `SaslResponse` redact themselves in `Debug`). Proven by
//!   `smtp::server::tests::auth_is_refused_in_plaintext_when_offered` and
//!   `smtp::server::tests::auth_is_advertised_only_over_tls`.
//! - **Password guessing.** Each failed AUTH gets `535 5.7.8` after the glue's delay; the third
//!   closes the session with `421 4.7.0`. Proven by
//!   `smtp::server::tests::auth_failures_get_535_then_421_and_close`.
//! - **Smarthost TLS downgrade.** With `TlsPolicy::StartTls` a smarthost that does not offer
//!   STARTTLS (or refuses it) is a failure, never a plaintext fallback; credentials are never
//!   sent without TLS; a certificate that does not verify leaves the mail queued. Proven by
//!   `smtp::client::tests::starttls_policy_never_falls_back_to_plaintext`,
//!   `smtp::client::tests::credentials_are_never_sent_without_tls`,
//!   `daemon::tests::outbound::smarthost_without_starttls_gets_nothing_in_clear` and
//!   `daemon::tests::outbound::untrusted_certificate_means_not_sent_and_still_queued`.
//! - **Trace-header injection.** The HELO name is reduced to printable ASCII without comment
//!   or separator characters before it enters `Received:`. Proven by
//!   `smtp::server::tests::received_header_traces_helo_peer_protocol_and_single_recipient`.
//! - **Reply-buffer growth from unread pipelining.** `handle_input` asks for a flush once about
//!   4 KiB of replies are queued. Proven by
//!   `smtp::server::tests::junk_flood_asks_for_a_flush_before_the_reply_buffer_grows`.

pub mod address;
pub mod auth;
pub mod body;
pub mod client;
pub mod command;
pub mod line;
pub mod reply;
pub mod server;
