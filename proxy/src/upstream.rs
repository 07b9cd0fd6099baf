//! Connections to the database: the relayed backend connection of each session, the
//! one-shot connection that carries a CancelRequest, and the side pools that tandem uses
//! for its own statements.
//!
//! Owns connect timeouts and socket options. Never speaks for a client: the relayed
//! connection is handed to the session right after TCP connect.

use crate::config::PgFrontend;
use crate::error::{Error, Result};
use crate::wire::pg::messages::startup::CancelKey;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Opens a TCP connection to `addr` with `TCP_NODELAY`, bounded by `timeout`.
pub async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::UpstreamConnectTimeout {
            addr: addr.to_owned(),
        })?
        .map_err(|source| Error::UpstreamConnect {
            addr: addr.to_owned(),
            source,
        })?;
    // Each relayed message is a complete request or reply: Nagle would only add latency.
    stream.set_nodelay(true).map_err(Error::UpstreamIo)?;
    Ok(stream)
}

/// Delivers a CancelRequest for `backend` to `upstream`. The server closes the connection
/// without replying, by protocol.
pub async fn send_cancel(upstream: &str, backend: CancelKey, timeout: Duration) -> Result<()> {
    let mut stream = connect(upstream, timeout).await?;
    let packet = backend.encode_request();
    tokio::time::timeout(timeout, stream.write_all(&packet))
        .await
        .map_err(|_| Error::UpstreamConnectTimeout {
            addr: upstream.to_owned(),
        })?
        .map_err(Error::UpstreamIo)?;
    Ok(())
}

/// tandem's own connections to each database of one upstream server, with the service
/// credentials from the configuration. Pools are created on first use per database.
pub struct SidePools {
    host: String,
    port: u16,
    user: String,
    password: String,
    size: usize,
    timeout: Duration,
    // A std Mutex: held only to look up or insert a pool handle, never across an await.
    pools: Mutex<HashMap<String, Pool>>,
}

impl SidePools {
    pub fn new(frontend: &PgFrontend) -> Self {
        let (host, port) = frontend
            .upstream
            .rsplit_once(':')
            .map(|(h, p)| (h.to_owned(), p.parse().unwrap_or(5432)))
            .unwrap_or_else(|| (frontend.upstream.clone(), 5432));
        SidePools {
            host,
            port,
            user: frontend.service.user.clone(),
            password: frontend.service.password.clone(),
            size: frontend.side_pool_size,
            timeout: frontend.connect_timeout(),
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// A pooled connection to `database`.
    pub async fn get(&self, database: &str) -> Result<deadpool_postgres::Client> {
        let pool = self.pool(database)?;
        Ok(pool.get().await?)
    }

    fn pool(&self, database: &str) -> Result<Pool> {
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(pool) = pools.get(database) {
            return Ok(pool.clone());
        }
        let mut pg = tokio_postgres::Config::new();
        pg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(database)
            .application_name("tandem")
            .connect_timeout(self.timeout);
        if !self.password.is_empty() {
            pg.password(&self.password);
        }
        let manager = Manager::from_config(
            pg,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.size)
            .wait_timeout(Some(self.timeout))
            .create_timeout(Some(self.timeout))
            .recycle_timeout(Some(self.timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|_| Error::SidePoolBuild {
                database: database.to_owned(),
                reason: "invalid pool settings",
            })?;
        pools.insert(database.to_owned(), pool.clone());
        Ok(pool)
    }

    /// Checks that the server answers on `database` through the side pool.
    pub async fn ping(&self, database: &str) -> Result<()> {
        let client = self.get(database).await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}
