//! outpost: a store-and-forward SMTP relay for embedded and edge hardware.
//!
//! (Architecture doc: filled in as the modules land.)

pub mod clock;
pub mod config;
pub mod forward;
pub mod net;
pub mod smtp;
pub mod store;
