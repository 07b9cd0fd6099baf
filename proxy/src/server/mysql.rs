//! Accepting MySQL clients within the front end's connection limit, and the readiness
//! probe of a MySQL upstream.

use crate::error::Error;
use crate::session::mysql::{self, MysqlFrontendContext};
use crate::wire::mysql::codes::reply;
use crate::wire::mysql::messages::response::put_err_before_greeting;
use bytes::BytesMut;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

pub(super) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<MysqlFrontendContext>,
    tracker: TaskTracker,
    session_ids: Arc<AtomicU64>,
) {
    let limit = ctx.config.max_client_connections;
    let permits = Arc::new(Semaphore::new(limit));
    loop {
        let accepted = tokio::select! {
            () = ctx.signals.drain.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let socket = match accepted {
            Ok((socket, _)) => socket,
            Err(e) => {
                // Out of file descriptors, mostly: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        // The permit is taken after accept, so that a client over the limit hears error
        // 1040 instead of waiting in the backlog.
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                let id = session_ids.fetch_add(1, Ordering::Relaxed);
                let ctx = Arc::clone(&ctx);
                tracker.spawn(async move {
                    mysql::serve(ctx, socket, id).await;
                    drop(permit);
                });
            }
            Err(_) => {
                ctx.metrics.mysql.count_error("too_many_connections");
                tracker.spawn(refuse_over_limit(socket, limit));
            }
        }
    }
}

/// Error 1040 in place of the greeting, as the server itself answers over its limit.
async fn refuse_over_limit(mut socket: TcpStream, limit: usize) {
    let e = Error::TooManyConnections { limit };
    let code = e.mysql_error();
    let mut out = BytesMut::new();
    put_err_before_greeting(&mut out, code.code(), &e.to_string());
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(&out)).await;
}

/// Whether `upstream` greets a new connection (its first packet is not an ERR).
pub(super) async fn ping(upstream: &str, timeout: Duration) -> Result<(), Error> {
    let mut stream = crate::upstream::connect(upstream, timeout).await?;
    let mut first = [0u8; 5];
    tokio::time::timeout(timeout, stream.read_exact(&mut first))
        .await
        .map_err(|_| Error::UpstreamConnectTimeout {
            addr: upstream.to_owned(),
        })?
        .map_err(Error::UpstreamIo)?;
    if first[4] == reply::ERR {
        return Err(Error::UpstreamProtocol(
            "the server refused a new connection",
        ));
    }
    Ok(())
}
