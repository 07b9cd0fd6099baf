//! The proxy process: binding, accepting within limits, and the admin endpoint.
//!
//! Owns listeners and the task tracker. Never parses protocol bytes: each accepted
//! connection goes to its session. Invariant: every task it spawns is tracked, so
//! shutdown knows when the last session is gone.

mod mysql;

use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::session::pg::{self, PgFrontendContext};
use crate::shutdown::Signals;
use crate::upstream::SidePools;
use crate::wire::pg::messages::response::{Severity, put_error};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tandem_lockserver::client::{ClientOptions, LockClient};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// How long a table view is trusted after the lockserver was last heard from, at most:
/// a lockserver whose `table_lease_ms` (how long it waits for a proxy whose stream
/// closed before it grants the first lock on a table again) is shorter says so in its
/// snapshot, and the view then trusts two thirds of that.
const TABLE_VIEW_LEASE: Duration = Duration::from_millis(2_000);

/// Statement texts whose analysis a front end remembers: far more than the prepared
/// statements of a typical application.
const ANALYSES_KEPT: usize = 4096;

/// The bound sockets of a proxy process, in the order of the configuration.
pub struct Listeners {
    pub postgres: Vec<TcpListener>,
    pub mysql: Vec<TcpListener>,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> io::Result<Listeners> {
        let mut postgres = Vec::with_capacity(config.postgres.len());
        for frontend in &config.postgres {
            postgres.push(bind(frontend.listen).await?);
        }
        let mut mysql = Vec::with_capacity(config.mysql.len());
        for frontend in &config.mysql {
            mysql.push(bind(frontend.listen).await?);
        }
        Ok(Listeners {
            postgres,
            mysql,
            admin: bind(config.admin.listen).await?,
        })
    }

    pub fn mysql_addrs(&self) -> Vec<SocketAddr> {
        self.mysql
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn postgres_addrs(&self) -> Vec<SocketAddr> {
        self.postgres
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }
}

async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))
}

/// Serves until `shutdown` resolves, then shuts down in the order `shutdown.rs` gives.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let signals = Signals::default();
    let tracker = TaskTracker::new();
    let metrics = Arc::new(Metrics::new());
    let cancels = Arc::new(CancelRegistry::default());
    let session_ids = Arc::new(AtomicU64::new(1));
    let lock = LockClient::connect_lazy(
        &config.lockserver.endpoint,
        ClientOptions {
            call_timeout: Duration::from_millis(config.lockserver.call_timeout_ms),
            ..ClientOptions::default()
        },
    )?;
    let mut frontends = Vec::new();

    for (frontend, listener) in config.postgres.iter().zip(listeners.postgres) {
        let tls = match &frontend.tls {
            Some(tls) => Some(crate::tls::acceptor(tls).map_err(Error::TlsHandshake)?),
            None => None,
        };
        let side = Arc::new(SidePools::new(frontend));
        let handler = Arc::new(crate::at::phase2::PgBranchHandler {
            server: frontend.server().to_owned(),
            side: Arc::clone(&side),
            cleanup: crate::at::cleanup::Cleanup::postgres(
                Arc::clone(&side),
                metrics.undo_sweep.rows_awaited.clone(),
            ),
        });
        let tables = tandem_lockserver::client::TableLockView::new(TABLE_VIEW_LEASE);
        let ctx = Arc::new(PgFrontendContext {
            config: frontend.clone(),
            upstream: frontend.upstream.as_str().into(),
            server: frontend.server().into(),
            metrics: Arc::clone(&metrics),
            cancels: Arc::clone(&cancels),
            tls,
            side,
            signals: signals.clone(),
            lock: lock.clone(),
            lock_wait: Duration::from_millis(config.lockserver.lock_wait_ms),
            meta: crate::at::meta::MetaCache::default(),
            writing_functions: crate::at::meta::CatalogNames::new(
                crate::at::meta::WRITING_FUNCTIONS,
            ),
            partition_roots: crate::at::meta::CatalogReach::new(crate::at::meta::PARTITION_ROOTS),
            reached_through_rules: crate::at::meta::CatalogReach::new(
                crate::at::meta::REACHED_THROUGH_RULES,
            ),
            reached_by_actions: crate::at::meta::CatalogReach::new(
                crate::at::meta::REACHED_BY_ACTIONS,
            ),
            analyses: tandem_undo::AnalysisCache::new(&tandem_undo::Postgres, ANALYSES_KEPT),
            phase2: crate::at::phase2::Phase2Registry::new(
                lock.clone(),
                handler,
                Some(Arc::clone(&tables)),
            ),
            outside: crate::session::outside::OutsideWriteChecks::new(
                tables,
                config.lockserver.outside_writes,
            ),
        });
        tokio::spawn(serve_existing_databases(Arc::clone(&ctx)));
        if let Some((every, retention)) = config.undo.sweep() {
            let served = Arc::clone(&ctx);
            tokio::spawn(crate::at::sweep::run(
                Arc::new(crate::at::sweep::PostgresSweep(Arc::clone(&ctx.side))),
                frontend.upstream.clone(),
                move || {
                    served
                        .phase2
                        .served()
                        .iter()
                        .filter_map(|r| crate::at::database_of(r, &served.server))
                        .map(str::to_owned)
                        .collect()
                },
                every,
                retention,
                metrics.undo_sweep.clone(),
                signals.drain.clone(),
            ));
        }
        tokio::spawn(recover_prepared_branches(
            Arc::clone(&ctx),
            signals.drain.clone(),
        ));
        tracing::info!(listen = %frontend.listen, upstream = %frontend.upstream, "postgres front end");
        frontends.push(Arc::clone(&ctx));
        tracker.spawn(accept_loop(
            listener,
            ctx,
            tracker.clone(),
            Arc::clone(&session_ids),
        ));
    }

    let connection_ids = Arc::new(crate::session::mysql::ids::ConnectionIds::default());
    let mut mysql_upstreams = Vec::new();
    let mut mysql_xa = Vec::new();
    for (frontend, listener) in config.mysql.iter().zip(listeners.mysql) {
        let tls = match &frontend.tls {
            Some(tls) => Some(crate::tls::acceptor(tls).map_err(Error::TlsHandshake)?),
            None => None,
        };
        let tables = tandem_lockserver::client::TableLockView::new(TABLE_VIEW_LEASE);
        let ctx = Arc::new(crate::session::mysql::MysqlFrontendContext {
            config: frontend.clone(),
            upstream: frontend.upstream.as_str().into(),
            metrics: Arc::clone(&metrics),
            ids: Arc::clone(&connection_ids),
            tls,
            signals: signals.clone(),
            lock: lock.clone(),
            lock_wait: std::time::Duration::from_millis(config.lockserver.lock_wait_ms),
            at_meta: crate::at::mysql::MysqlMetaCache::default(),
            analyses: tandem_undo::AnalysisCache::new(&tandem_undo::Mysql, ANALYSES_KEPT),
            xa: Arc::new(crate::xa::mysql::MysqlXa::new(
                frontend,
                lock.clone(),
                Arc::clone(&tables),
                metrics.mysql.undo_sweep.rows_awaited.clone(),
            )),
            outside: crate::session::outside::OutsideWriteChecks::new(
                tables,
                config.lockserver.outside_writes,
            ),
        });
        ctx.xa.start_recovery(signals.drain.clone());
        if let Some((every, retention)) = config.undo.sweep() {
            ctx.xa.start_undo_sweep(
                every,
                retention,
                metrics.mysql.undo_sweep.clone(),
                signals.drain.clone(),
            );
        }
        tracing::info!(listen = %frontend.listen, upstream = %frontend.upstream, "mysql front end");
        mysql_upstreams.push((Arc::clone(&ctx.upstream), frontend.connect_timeout()));
        mysql_xa.push(Arc::clone(&ctx.xa));
        tracker.spawn(mysql::accept_loop(
            listener,
            ctx,
            tracker.clone(),
            Arc::clone(&session_ids),
        ));
    }

    let frontends_for_shutdown = frontends.clone();
    let admin_stop = tokio_util::sync::CancellationToken::new();
    let admin = tokio::spawn({
        let app = admin_router(AdminState {
            metrics: Arc::clone(&metrics),
            frontends,
            mysql_upstreams,
            mysql_xa,
        });
        let stop = admin_stop.clone();
        async move {
            let admin = tandem_lockserver::api::listener::BoundedListener::new(listeners.admin);
            axum::serve(admin, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    });

    shutdown.await;
    tracing::info!("shutting down: draining sessions");
    signals.drain.cancel();
    tracker.close();
    let drain = config.shutdown.drain_timeout();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            open = tracker.len(),
            "sessions still busy after the drain timeout; closing them"
        );
        signals.abort.cancel();
        tracker.wait().await;
    }
    for frontend in &frontends_for_shutdown {
        frontend.phase2.shutdown().await;
    }
    admin_stop.cancel();
    if let Ok(Err(e)) = admin.await {
        tracing::warn!(error = %e, "admin endpoint");
    }
    tracing::info!("stopped");
    Ok(())
}

/// After a restart, phase-2 work may wait for branches of any database: announce every
/// database of the upstream, not only those a session touches later.
async fn serve_existing_databases(ctx: Arc<PgFrontendContext>) {
    let names = async {
        let client = ctx.side.get("postgres").await?;
        let rows = client
            .query(
                "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate",
                &[],
            )
            .await?;
        Ok::<_, Error>(
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>(),
        )
    }
    .await;
    match names {
        Ok(names) => ctx.phase2.serve_all(
            names
                .iter()
                .map(|db| crate::at::resource_id(&ctx.server, db)),
        ),
        Err(e) => tracing::warn!(error = %e, "could not list the upstream's databases for phase 2"),
    }
}

/// XA recovery: at start and then periodically, tandem's prepared branches on the
/// upstream are finished as their global transactions decided (a proxy may have died
/// between the prepare and phase 2, or phase 2 may have found no proxy).
async fn recover_prepared_branches(
    ctx: Arc<PgFrontendContext>,
    stop: tokio_util::sync::CancellationToken,
) {
    let every = Duration::from_millis(ctx.config.xa_recovery_interval_ms.max(100));
    let orphan_after = Duration::from_millis(ctx.config.xa_orphan_after_ms);
    loop {
        match crate::xa::pg::recover(
            &ctx.side,
            &ctx.lock,
            orphan_after,
            &ctx.config.xa_recovery_databases,
        )
        .await
        {
            Ok(r) if r.committed + r.rolled_back > 0 => {
                tracing::info!(upstream = %ctx.upstream, committed = r.committed, rolled_back = r.rolled_back, left = r.left, "XA recovery pass")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(upstream = %ctx.upstream, error = %e, "XA recovery pass failed")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<PgFrontendContext>,
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
        // The permit is taken after accept, not before, so that a client over the limit
        // hears 53300 too_many_connections instead of waiting in the backlog.
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                let id = session_ids.fetch_add(1, Ordering::Relaxed);
                let ctx = Arc::clone(&ctx);
                tracker.spawn(async move {
                    pg::serve(ctx, socket, id).await;
                    drop(permit);
                });
            }
            Err(_) => {
                ctx.metrics.count_error("too_many_connections");
                tracker.spawn(refuse_over_limit(socket, limit));
            }
        }
    }
}

async fn refuse_over_limit(mut socket: TcpStream, limit: usize) {
    let e = Error::TooManyConnections { limit };
    let mut out = BytesMut::new();
    put_error(
        &mut out,
        Severity::Fatal,
        e.sqlstate().code(),
        &e.to_string(),
    );
    // The client's StartupMessage is not read: the error is the whole answer, and the
    // protocol lets the server send it at any point of the startup.
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(&out)).await;
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    frontends: Vec<Arc<PgFrontendContext>>,
    /// Each MySQL front end's upstream and connect timeout.
    mysql_upstreams: Vec<(Arc<str>, Duration)>,
    mysql_xa: Vec<Arc<crate::xa::mysql::MysqlXa>>,
}

impl AdminState {
    /// Whether every front end's phase-2 stream to the lockserver is established; None
    /// while none is wanted yet (no database served).
    fn lockserver_connected(&self) -> Option<bool> {
        let streams = self
            .frontends
            .iter()
            .map(|f| f.phase2.connected())
            .chain(self.mysql_xa.iter().map(|x| x.lockserver_connected()));
        streams.flatten().reduce(|all, one| all && one)
    }
}

fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/ready", get(ready))
        .with_state(state)
}

async fn metrics_page(State(state): State<AdminState>) -> impl axum::response::IntoResponse {
    let connected = state.lockserver_connected() == Some(true);
    state.metrics.lockserver_connected.set(i64::from(connected));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            tandem_lockserver::metrics::OPENMETRICS_CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
}

/// 200 when every upstream answers a side connection, 503 naming the one that does not.
/// The lockserver does not decide it (plain traffic and local transactions go on
/// without it, and a proxy taken out of service for it would stop them too): the
/// body says whether it is reached.
async fn ready(State(state): State<AdminState>) -> (StatusCode, String) {
    for frontend in &state.frontends {
        if let Err(e) = frontend.side.ping("postgres").await {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}: {e}\n", frontend.upstream),
            );
        }
    }
    for (upstream, timeout) in &state.mysql_upstreams {
        if let Err(e) = mysql::ping(upstream, *timeout).await {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{upstream}: {e}\n"),
            );
        }
    }
    let lockserver = match state.lockserver_connected() {
        Some(true) => "connected",
        Some(false) => "unreachable (global transactions cannot begin or end)",
        None => "not used yet",
    };
    (StatusCode::OK, format!("ready\nlockserver: {lockserver}\n"))
}
