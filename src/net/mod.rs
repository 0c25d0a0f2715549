//! The smol glue: listeners, connection tasks, the daemon's main loop. The only code with
//! sockets and timers on the receiving side.
