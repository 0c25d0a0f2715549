//! The integration-test binary: runs the real `outpost` binary on 127.0.0.1:0 against independent
//! peers from the test kit (`tests/kit`: lettre and the raw client; the fake smarthost). It never
//! links the relay's own SMTP code into a peer, never uses the network beyond loopback, and
//! bounds every wait.

// Test helpers may unwrap: a failed unwrap is a failed test (clippy.toml allows it in #[test] fns;
// this extends it to the helpers in util).
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The kit is shared with the crate's unit tests, which include it the same way.
#[path = "../kit/mod.rs"]
mod kit;
mod util;

mod abuse;
mod boards;
mod bounce;
mod chaos;
mod cli;
mod coalesce;
mod compact;
mod corruption;
mod damage;
mod diskfull;
mod drain;
mod durability;
mod failover;
mod flaps;
mod forward;
mod hostile;
mod limits;
mod local_names;
mod logs;
mod long_lines;
mod mailq;
mod notices;
mod notify;
mod oauth;
mod ops;
mod priority;
mod rate_limit;
mod receive;
mod relay_acl;
mod reload;
mod retry;
mod route_test;
mod sender_rewrite;
mod sendmail;
mod startup;
mod submit;
