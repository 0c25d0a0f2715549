//! The SMTP side facing clients: the accept loop (connection cap, relay ACL), one task per
//! connection driving a sans-I/O `smtp` session over the socket (timeouts, STARTTLS), and the
//! AUTH password check. Messages enter the queue only through `intake`; never touches sled,
//! and starts nothing but connection tasks (the daemon starts the listeners).

mod auth;
mod conn;
mod listen;

pub use self::listen::accept_loop;
