//! The SMTP side facing clients: the accept loops (TCP: connection cap, relay ACL; the local
//! submission socket: the submitting uid), one task per
//! connection driving a sans-I/O `smtp` session over the socket (timeouts, STARTTLS), and the
//! AUTH password check. Messages enter the queue only through `intake`; never touches sled,
//! and starts nothing but connection tasks (the daemon starts the listeners).

mod auth;
mod conn;
mod listen;
mod local;

pub use self::listen::{accept_loop, adopt, greeting};
pub use self::local::{bind_submit, local_received, submit_loop};
