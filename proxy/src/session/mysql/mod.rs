//! The MySQL/MariaDB session: one client connection relayed to one backend connection.
//!
//! Owns the session's life: the opening (`handshake`), the relay loop (`relay`), and
//! what the client is told when the session ends. Relays raw bytes and decodes only the
//! packets listed in `wire::mysql::messages`. Invariant: every byte from one side
//! reaches the other in order, except what tandem rewrites on purpose (its connection id
//! and the relayable capabilities in the greeting and the response, a KILL of one of
//! its ids, which tandem runs itself, and the RSA exchange `auth` adds).

mod auth;
mod handshake;
pub mod ids;
mod phase;
mod relay;
pub(crate) mod side;

pub use phase::{Expect, Phase, Reply};

use crate::config::MysqlFrontend;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::shutdown::Signals;
use crate::tls::ClientStream;
use crate::wire::mysql::messages::response::{put_err, put_err_before_greeting};
use bytes::BytesMut;
use handshake::Opening;
use ids::{Backend, ConnectionIds};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What every session of one MySQL front end shares.
pub struct MysqlFrontendContext {
    pub config: MysqlFrontend,
    pub upstream: Arc<str>,
    pub metrics: Arc<Metrics>,
    /// tandem's connection ids, shared by every MySQL front end of the process.
    pub ids: Arc<ConnectionIds>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub signals: Signals,
    /// The lockserver that control functions and XA branches talk to.
    pub lock: tandem_lockserver::client::LockClient,
    /// `lockserver.lock_wait_ms`: how long a branch's registration or a locking read
    /// waits for another global transaction's row locks.
    pub lock_wait: std::time::Duration,
    /// AT mode's table metadata for this front end's server.
    pub at_meta: crate::at::mysql::MysqlMetaCache,
    /// What each prepared statement's text does, analysed once (every execute asks).
    pub analyses: tandem_undo::AnalysisCache,
    /// XA phase 2 and recovery on this front end's server.
    pub xa: Arc<crate::xa::mysql::MysqlXa>,
    /// Writes outside global transactions: the announced tables, and how to check.
    pub outside: crate::session::outside::OutsideWriteChecks,
}

/// Serves one accepted client connection to its end.
pub async fn serve(ctx: Arc<MysqlFrontendContext>, socket: TcpStream, session_id: u64) {
    let registration = ctx.ids.allocate();
    // Passed to events explicitly rather than entered around the session future, as in
    // the PostgreSQL session (entering costs the subscriber work on every poll).
    let span = tracing::info_span!(
        "mysql_session",
        session = session_id,
        connection_id = registration.id
    );
    let metrics = &ctx.metrics.mysql;
    metrics.client_connections.inc();
    metrics.clients_active.inc();
    let result = run(&ctx, socket, &registration, &span).await;
    metrics.clients_active.dec();
    match result {
        Ok(()) => tracing::debug!(parent: &span, "session closed"),
        Err(e) => {
            metrics.count_error(e.kind());
            if e.is_client_fault() || matches!(e, Error::ShuttingDown) {
                tracing::debug!(parent: &span, error = %e, "session ended");
            } else {
                tracing::warn!(parent: &span, error = %e, "session ended");
            }
        }
    }
}

async fn run(
    ctx: &MysqlFrontendContext,
    socket: TcpStream,
    registration: &ids::Registration,
    span: &tracing::Span,
) -> Result<()> {
    // The backend gauge counts from the TCP connect: `open` connects first thing, and a
    // failed opening has no backend left to count.
    let opened = handshake::open(ctx, socket, registration.id).await;
    let opened = match opened {
        Ok(Opening::Session(opened)) => opened,
        Ok(Opening::Refused) => {
            ctx.metrics.mysql.auth_refused.inc();
            return Ok(());
        }
        Ok(Opening::Closed) => return Ok(()),
        Err(e) => return Err(e),
    };
    tracing::debug!(
        parent: span,
        user = %opened.user,
        database = %opened.database,
        thread_id = opened.thread_id,
        tls = opened.client_tls,
        "authenticated"
    );
    let mut relay = relay::Relay::new(ctx, *opened, span.clone());
    registration.bind(Backend {
        upstream: Arc::clone(&ctx.upstream),
        thread_id: relay.thread_id,
        interrupt: relay.interrupt.clone(),
    });
    ctx.metrics.mysql.backends_active.inc();
    let result = relay.run().await;
    if let Err(e) = &result {
        relay.report(e).await;
    }
    relay.end_backend().await;
    relay.outlive_unchecked_writes().await;
    // The connection's prepared branches outlive it; phase 2 now goes to a side
    // connection.
    relay.release_owned();
    ctx.metrics.mysql.backends_active.dec();
    result
}

/// Tells the client why its session or command fails, as an ERR packet with sequence
/// id `seq`, or in place of the greeting when `before_greeting`. Best effort: the client
/// may already be gone.
async fn report(client: &mut ClientStream, seq: u8, before_greeting: bool, error: &Error) {
    let mut out = BytesMut::new();
    let code = error.mysql_error();
    if before_greeting {
        put_err_before_greeting(&mut out, code.code(), &error.mysql_message());
    } else {
        put_err(
            &mut out,
            seq,
            code.code(),
            code.sqlstate(),
            &error.mysql_message(),
        );
    }
    let _ = client.write_all(&out).await;
    let _ = client.flush().await;
}
