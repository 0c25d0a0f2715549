//! The sans-I/O SMTP protocol core. Performs no I/O, reads no clock, touches no store.

pub mod address;
pub mod body;
pub mod client;
pub mod command;
pub mod date;
pub mod line;
pub mod replies;
pub mod reply;
pub mod server;
