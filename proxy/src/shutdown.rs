//! Graceful shutdown of the proxy process.
//!
//! The order, which `server::run` follows:
//! 1. Stop accepting: every accept loop ends when `drain` is cancelled.
//! 2. Let each session reach its next sync point (ReadyForQuery with nothing in
//!    flight), where it tells its client `57P01 admin_shutdown` and closes; idle
//!    sessions close at once. This is bounded by `shutdown.drain_timeout_ms`.
//! 3. Sessions still busy then are cut (`abort`), each with the same FATAL message.
//! 4. (With AT mode: open tandem transactions are rolled back and the lockserver told.)
//! 5. The admin endpoint closes last, so metrics stay readable while sessions drain.

use tokio_util::sync::CancellationToken;

/// The two stages of shutdown that sessions watch.
#[derive(Clone, Debug, Default)]
pub struct Signals {
    /// Stop accepting; close each session at its next sync point.
    pub drain: CancellationToken,
    /// Close every session now.
    pub abort: CancellationToken,
}

/// Resolves on SIGINT or SIGTERM.
pub async fn os_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
