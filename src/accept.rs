//! The accept-until-shutdown loop that every listening service runs (SMTP listeners, the
//! control socket, the metrics endpoint): accept, hand the connection over, pause after a
//! failed accept so the loop does not spin, stop when shutdown is raised (or, for the early
//! greeting's thread, when its stop signal comes). Never reads from a
//! connection itself.

use std::future::Future;
use std::io;
use std::pin::pin;
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
    handle: impl FnMut(C),
) where
    F: Future<Output = io::Result<C>>,
{
    until(shutdown.wait(), what, accept, handle).await;
}

/// `until_shutdown` for a loop that ends when `stop` completes (a signal from another thread,
/// where there is no `Shutdown` to share). The pause after a failed accept ends early at
/// `stop` too.
pub async fn until<C, F>(
    stop: impl Future<Output = ()>,
    what: &str,
    accept: impl Fn() -> F,
    mut handle: impl FnMut(C),
) where
    F: Future<Output = io::Result<C>>,
{
    let mut stop = pin!(stop);
    loop {
        let accepted = future::or(async { Some(accept().await) }, async {
            stop.as_mut().await;
            None
        });
        match accepted.await {
            None => return,
            Some(Ok(connection)) => handle(connection),
            Some(Err(e)) => {
                warn!("{what}accept failed: {e}");
                let paused = future::or(
                    async {
                        Timer::after(ACCEPT_ERROR_PAUSE).await;
                        false
                    },
                    async {
                        stop.as_mut().await;
                        true
                    },
                );
                if paused.await {
                    return;
                }
            }
        }
    }
}
