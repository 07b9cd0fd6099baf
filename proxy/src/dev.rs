//! `tandem dev` and `tandem lockserver`: the processes that host a lockserver.
//!
//! Owns only the wiring: both servers get the same shutdown signal, and either one
//! failing stops the other. Never configures anything the two configs do not say.

use crate::config::Config;
use crate::server::{self, Listeners};
use std::future::Future;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The bound lockserver listeners (gRPC for proxies, HTTP for applications).
pub struct LockserverListeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl LockserverListeners {
    pub async fn bind(config: &tandem_lockserver::Config) -> std::io::Result<Self> {
        let bind = |name: &'static str, addr: std::net::SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("lockserver {name} on {addr}: {e}"))
            })
        };
        Ok(LockserverListeners {
            grpc: bind("grpc_listen", config.grpc_listen).await?,
            http: bind("http_listen", config.http_listen).await?,
        })
    }
}

/// Errors of either hosted server.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("proxy: {0}")]
    Proxy(#[from] crate::Error),
    #[error("lockserver: {0}")]
    Lockserver(#[from] tandem_lockserver::Error),
}

/// Runs an embedded lockserver beside the proxies until `shutdown` completes.
pub async fn run(
    proxy_listeners: Listeners,
    proxy_config: Config,
    lock_listeners: LockserverListeners,
    lock_config: tandem_lockserver::Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DevError> {
    // The signal stops the proxies first: the sessions they drain may still commit
    // their branches, which needs the lockserver. It stops once they have.
    let stop_proxies = CancellationToken::new();
    let stop_lockserver = CancellationToken::new();
    let lockserver = tandem_lockserver::server::run(
        lock_listeners.grpc,
        lock_listeners.http,
        lock_config,
        stop_lockserver.clone().cancelled_owned(),
    );
    let proxies = server::run(
        proxy_listeners,
        proxy_config,
        stop_proxies.clone().cancelled_owned(),
    );
    let watch = async {
        tokio::select! {
            () = shutdown => stop_proxies.cancel(),
            // A server ended on its own: nothing to wait for.
            () = stop_proxies.cancelled() => {}
            () = stop_lockserver.cancelled() => {}
        }
    };
    // Whichever server ends first (an error, or the signal) takes the other down with it.
    let (proxy_result, lock_result, ()) = tokio::join!(
        async {
            let r = proxies.await;
            stop_lockserver.cancel();
            r
        },
        async {
            let r = lockserver.await;
            stop_proxies.cancel();
            r
        },
        watch
    );
    proxy_result?;
    lock_result?;
    Ok(())
}

/// The lockserver configuration at `path`, or every default.
pub fn load_lockserver_config(
    path: Option<&std::path::Path>,
) -> Result<tandem_lockserver::Config, tandem_lockserver::Error> {
    match path {
        Some(path) => tandem_lockserver::Config::load(path),
        None => Ok(tandem_lockserver::Config::default()),
    }
}

/// Prints where `tandem dev` serves what, for the newcomer who just started it.
pub fn announce(config: &Config, listeners: &Listeners, lock: &LockserverListeners) {
    for (addr, frontend) in listeners.postgres_addrs().iter().zip(&config.postgres) {
        println!(
            "tandem dev: PostgreSQL {} -> postgres://{addr}/",
            frontend.upstream
        );
    }
    for (addr, frontend) in listeners.mysql_addrs().iter().zip(&config.mysql) {
        println!(
            "tandem dev: MySQL {} -> mysql://root@{addr}/",
            frontend.upstream
        );
    }
    if let Ok(grpc) = lock.grpc.local_addr() {
        println!("tandem dev: lockserver gRPC {grpc}");
    }
    if let Ok(http) = lock.http.local_addr() {
        println!("tandem dev: lockserver HTTP http://{http}/v1/transactions");
    }
    if let Some(admin) = listeners.admin_addr() {
        println!("tandem dev: proxy metrics http://{admin}/metrics");
    }
}
