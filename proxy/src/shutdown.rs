//! Graceful shutdown of the proxy process.
//!
//! The order, which `server::run` follows:
//! 1. Stop accepting: every accept loop ends when `drain` is cancelled.
//! 2. Let each session reach its next sync point outside a transaction (ReadyForQuery
//!    with nothing in flight, outside a block), where it tells its client
//!    `57P01 admin_shutdown` (MySQL: 1053) and closes; idle sessions close at once, and
//!    one inside a transaction may still end it. This is bounded by
//!    `shutdown.drain_timeout_ms`.
//! 3. Sessions still busy then are cut (`abort`), each with the same FATAL message.
//! 4. Global transactions are not ended here: a session that closes is a client that
//!    went away, and its global transaction is decided by its owner or rolled back by
//!    its timeout, as after a client's disconnect.
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

/// Resolves on SIGINT or SIGTERM (SIGHUP is logged and ignored: see
/// `tandem_lockserver::server::shutdown_signal`).
pub async fn os_signal() {
    tandem_lockserver::server::shutdown_signal().await;
}
