//! `run(grpc, http, config, shutdown)`: opens the store, serves both APIs, runs the
//! timers, the phase-2 dispatcher and the table-notice heartbeats, and shuts down
//! in order.
//!
//! Shutdown order: stop the APIs (stop accepting, end phase-2 streams, let
//! in-flight requests finish, bounded by [`DRAIN_TIMEOUT`]) → stop the timers, the
//! dispatcher and the heartbeats → flush and close the store → return.
//!
//! Owns: tasks and listeners. Never decides state. Invariant: when `run` returns,
//! every acknowledged command is durable and no task of it is left running.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::config::{Config, StoreConfig};
use crate::coordinator::Coordinator;
use crate::core::clock::SystemClock;
use crate::error::{Error, Result};
use crate::phase2;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisStore;
use crate::store::{AnyStore, Store};

/// How long shutdown waits for in-flight requests before giving up on them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the configured store.
pub async fn open_store(config: &Config) -> Result<AnyStore> {
    let limits = config.core_limits();
    Ok(match &config.store {
        StoreConfig::Embedded {
            path,
            compact_bytes,
        } => {
            let (path, compact) = (path.clone(), *compact_bytes);
            let s =
                tokio::task::spawn_blocking(move || EmbeddedStore::open(&path, limits, compact))
                    .await
                    .map_err(|_| Error::ShuttingDown)??;
            AnyStore::Embedded(Box::new(s))
        }
        StoreConfig::Redis { url, prefix } => {
            AnyStore::Redis(RedisStore::open(url, prefix, limits).await?)
        }
    })
}

/// Resolves on SIGINT or SIGTERM: the signal that begins a graceful shutdown. SIGHUP,
/// which PgBouncer operators send to reload a configuration, is logged and otherwise
/// ignored: tandem reads its configuration only at start, and the signal's default
/// action would end the process at once, with no drain.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut hangup = signal(SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => return,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::warn!("SIGHUP ignored: tandem reads its configuration only at start (restart it to apply a change)");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs a lockserver on the given listeners until `shutdown` completes.
///
/// The lockserver runs on its own runtime (`worker_threads`; one thread with the
/// embedded store by default),
/// not on the caller's: its latency then does not depend on how the host (a proxy,
/// `tandem dev`, a test) built its runtime. The caller's task only waits for
/// `shutdown` and for the lockserver's thread to finish.
pub async fn run(
    grpc: TcpListener,
    http: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    config.validate()?;
    let rt_io = |e| Error::Io {
        op: "start the lockserver runtime",
        path: Default::default(),
        source: e,
    };
    // Listeners move to the new runtime's reactor.
    let (grpc, http) = (
        grpc.into_std().map_err(rt_io)?,
        http.into_std().map_err(rt_io)?,
    );
    let mut builder = match config.runtime_threads() {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
    };
    let rt = builder
        .enable_all()
        .thread_name("tandem-lockserver")
        .build()
        .map_err(rt_io)?;
    let stop = CancellationToken::new();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let inner_stop = stop.clone();
    std::thread::Builder::new()
        .name("tandem-lockserver".into())
        .spawn(move || {
            let r = rt.block_on(async move {
                let grpc = TcpListener::from_std(grpc).map_err(rt_io)?;
                let http = TcpListener::from_std(http).map_err(rt_io)?;
                serve(grpc, http, config, inner_stop.cancelled_owned()).await
            });
            // Tasks still running (none after a clean shutdown) are dropped here.
            drop(rt);
            let _ = done_tx.send(r);
        })
        .map_err(rt_io)?;
    // Stops the lockserver if this future is dropped (the host gave up on it).
    let _stop_on_drop = stop.clone().drop_guard();
    let mut done_rx = done_rx;
    tokio::select! {
        _ = shutdown => {
            stop.cancel();
            done_rx.await.unwrap_or(Err(Error::ShuttingDown))
        }
        r = &mut done_rx => r.unwrap_or(Err(Error::ShuttingDown)),
    }
}

/// The lockserver itself, on its own runtime.
async fn serve(
    grpc: TcpListener,
    http: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(shutdown);
    // Opening may take long (a store that is slow to answer, a large log to replay):
    // a shutdown meanwhile stops waiting for it (a replay already running finishes).
    let store = tokio::select! {
        store = open_store(&config) => store?,
        _ = &mut shutdown => return Ok(()),
    };
    let coord = Arc::new(Coordinator::new(store, config, Arc::new(SystemClock)));
    tracing::info!(grpc = ?grpc.local_addr().ok(), http = ?http.local_addr().ok(), "lockserver listening");

    let stop_apis = CancellationToken::new();
    let stop_tasks = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(timers(coord.clone(), stop_tasks.clone()));
    tasks.spawn(phase2::dispatch(coord.clone(), stop_tasks.clone()));
    tasks.spawn(heartbeats(coord.clone(), stop_tasks.clone()));

    let grpc_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // A client pipelines every call on one HTTP/2 stream: with the default 64 KiB
        // windows, ~90 registrations of 10 keys fill a stream's window, and each
        // connection waited for WINDOW_UPDATEs (half the cores sat idle under load).
        .initial_stream_window_size(crate::client::H2_STREAM_WINDOW)
        .initial_connection_window_size(crate::client::H2_CONNECTION_WINDOW)
        .add_service(api::grpc::grpc_service(coord.clone(), stop_apis.clone()))
        // `tcp_nodelay` above applies only to listeners tonic binds itself: set it on
        // the accepted sockets too, or two replies written back to back wait out the
        // client's delayed ACK (measured: 40 ms per pipelined call).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
            stop_apis.clone().cancelled_owned(),
        );
    // A request's own wait (a commit or rollback waits up to rollback_wait_ms) must
    // never count as idleness: hyper keeps reading while a handler runs.
    let idle = api::listener::HTTP_IDLE_TIMEOUT
        .max(Duration::from_millis(coord.config.rollback_wait_ms) + Duration::from_secs(30));
    let http = api::listener::BoundedListener::with_limits(
        http,
        api::listener::MAX_HTTP_CONNECTIONS,
        idle,
    );
    let http_server = axum::serve(http, api::http::router(coord.clone()))
        .with_graceful_shutdown(stop_apis.clone().cancelled_owned());
    let mut grpc_task = tokio::spawn(grpc_server);
    let mut http_task = tokio::spawn(async move { http_server.await });

    let early = tokio::select! {
        _ = &mut shutdown => None,
        r = &mut grpc_task => Some(("grpc", r.map(|r| r.map_err(Error::from)))),
        r = &mut http_task => Some(("http", r.map(|r| r.map_err(|e| Error::Io { op: "serve http", path: Default::default(), source: e })))),
    };
    if let Some((which, r)) = &early {
        tracing::error!(server = which, result = ?r.as_ref().map(|r| r.as_ref().err().map(|e| e.to_string())), "server stopped unexpectedly");
    }
    tracing::info!("lockserver shutting down");
    stop_apis.cancel();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        if early.as_ref().is_none_or(|(w, _)| *w != "grpc") {
            let _ = (&mut grpc_task).await;
        }
        if early.as_ref().is_none_or(|(w, _)| *w != "http") {
            let _ = (&mut http_task).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("in-flight requests did not finish within the drain timeout");
        grpc_task.abort();
        http_task.abort();
    }
    stop_tasks.cancel();
    tasks.close();
    tasks.wait().await;
    coord.store.close().await?;
    tracing::info!("lockserver stopped");
    match early {
        Some((_, Ok(Err(e)))) => Err(e),
        _ => Ok(()),
    }
}

async fn timers(coord: Arc<Coordinator>, cancel: CancellationToken) {
    let every = Duration::from_millis(coord.config.tick_interval_ms);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match coord.tick().await {
            Ok(n) if n > 0 => tracing::debug!(commands = n, "timer pass"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "timer pass failed"),
        }
        coord.unannounce_idle();
    }
}

/// Table-notice subscribers hear from the lockserver every `table_heartbeat_ms`.
async fn heartbeats(coord: Arc<Coordinator>, cancel: CancellationToken) {
    let every = Duration::from_millis(coord.config.table_heartbeat_ms);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        coord.tables.heartbeat();
    }
}
