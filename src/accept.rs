//! The accept-until-shutdown loop that every listening service runs (SMTP listeners, the
//! control socket, the metrics endpoint): accept, hand the connection over, pause after a
//! failed accept so the loop does not spin, stop when shutdown is raised. Never reads from a
//! connection itself.

use std::future::Future;
use std::io;
use std::time::Duration;

use async_io::Timer;
use futures_lite::future;
use log::warn;

use crate::wait::Shutdown;

/// Pause after a failed accept (EMFILE and friends) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Calls `accept` until `shutdown` is raised and hands every accepted connection to `handle`
/// (which spawns what serves it). A failed accept is logged as `{what}accept failed: …`.
pub async fn until_shutdown<C, F>(
    shutdown: &Shutdown,
    what: &str,
    accept: impl Fn() -> F,
    mut handle: impl FnMut(C),
) where
    F: Future<Output = io::Result<C>>,
{
    loop {
        let accepted = future::or(async { Some(accept().await) }, async {
            shutdown.wait().await;
            None
        });
        match accepted.await {
            None => return,
            Some(Ok(connection)) => handle(connection),
            Some(Err(e)) => {
                warn!("{what}accept failed: {e}");
                Timer::after(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}
