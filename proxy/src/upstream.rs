//! Connections to the database: the relayed backend connection of each session, the
//! one-shot connection that carries a CancelRequest, and the side pools that tandem uses
//! for its own statements.
//!
//! Owns connect timeouts and socket options. Never speaks for a client: the relayed
//! connection is handed to the session right after TCP connect.

use crate::config::PgFrontend;
use crate::error::{Error, Result};
use crate::wire::pg::messages::startup::CancelKey;
use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A connection to the database: TCP, or a unix-domain socket when the upstream is a
/// socket path (cheaper per message when tandem runs beside the database; note that
/// pg_hba.conf then applies its `local` rules instead of its `host` rules).
pub enum ServerStream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

/// Opens a connection to `addr` (`host:port`, or a socket path starting with `/`),
/// bounded by `timeout`.
pub async fn connect(addr: &str, timeout: Duration) -> Result<ServerStream> {
    let timed_out = || Error::UpstreamConnectTimeout {
        addr: addr.to_owned(),
    };
    let failed = |source| Error::UpstreamConnect {
        addr: addr.to_owned(),
        source,
    };
    #[cfg(unix)]
    if addr.starts_with('/') {
        let stream = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(addr))
            .await
            .map_err(|_| timed_out())?
            .map_err(failed)?;
        return Ok(ServerStream::Unix(stream));
    }
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())?
        .map_err(failed)?;
    // Each relayed message is a complete request or reply: Nagle would only add latency.
    stream.set_nodelay(true).map_err(Error::UpstreamIo)?;
    Ok(ServerStream::Tcp(stream))
}

/// A second handle on a backend connection's socket that only peeks, for tandem's own
/// waits while the backend is idle (a global lock the statement waits for before it is
/// sent): a backend that speaks then is closing the connection (a KILL CONNECTION,
/// `pg_terminate_backend`, a shutdown), and the wait ends at once instead of running
/// to its bound.
pub struct BackendWatch {
    socket: TcpStream,
    /// The first byte of the message an idle backend sends as it closes the connection
    /// (PostgreSQL's ErrorResponse), beside messages it sends anyway (a notification);
    /// None where an idle backend sends nothing else (MySQL).
    last_word: Option<u8>,
    closed: std::sync::atomic::AtomicBool,
}

impl BackendWatch {
    /// Resolves once the idle backend is closing the connection. Pending for ever once
    /// it has sent something else, which the relay passes on after the wait.
    pub async fn closing(&self) {
        let mut first = [0u8; 1];
        let closing = match self.socket.peek(&mut first).await {
            Ok(0) | Err(_) => true,
            Ok(_) => self.last_word.is_none_or(|last_word| first[0] == last_word),
        };
        if !closing {
            return std::future::pending().await;
        }
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`BackendWatch::closing`] has seen the backend closing.
    pub fn closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A session's [`BackendWatch`], made at its first wait while the backend is idle, and
/// kept for the next.
#[derive(Default)]
pub struct IdleWatch(std::sync::OnceLock<Option<std::sync::Arc<BackendWatch>>>);

impl IdleWatch {
    /// The watch on `server` (`last_word` as in [`BackendWatch`]); None where it cannot
    /// be made.
    pub fn of(
        &self,
        server: &ServerStream,
        last_word: Option<u8>,
    ) -> Option<std::sync::Arc<BackendWatch>> {
        self.0
            .get_or_init(|| server.watch(last_word).map(std::sync::Arc::new))
            .clone()
    }
}

impl ServerStream {
    /// A watch on this connection (see [`BackendWatch`]); `last_word` as there. None
    /// over a unix socket, which tokio cannot peek at.
    fn watch(&self, last_word: Option<u8>) -> Option<BackendWatch> {
        match self {
            #[cfg(unix)]
            ServerStream::Tcp(s) => {
                use std::os::fd::AsFd;
                let fd = s.as_fd().try_clone_to_owned().ok()?;
                let socket = std::net::TcpStream::from(fd);
                // The duplicate shares the original's flags: non-blocking already.
                let socket = TcpStream::from_std(socket).ok()?;
                Some(BackendWatch {
                    socket,
                    last_word,
                    closed: std::sync::atomic::AtomicBool::new(false),
                })
            }
            _ => None,
        }
    }

    /// Writes all of `bytes` while reading what the server sends meanwhile into
    /// `received`. The server answers a flight of statements one by one: once nobody
    /// reads its reply to an earlier one (a before image of a large row), it blocks on
    /// sending and stops reading, and a long later statement (the write itself) written
    /// without reading would wait for ever, with the row locks the earlier one took.
    pub async fn write_all_reading(
        &mut self,
        bytes: &[u8],
        received: &mut BytesMut,
    ) -> io::Result<()> {
        match self {
            ServerStream::Tcp(s) => {
                let (reader, writer) = s.split();
                write_all_reading(reader, writer, bytes, received).await
            }
            #[cfg(unix)]
            ServerStream::Unix(s) => {
                let (reader, writer) = s.split();
                write_all_reading(reader, writer, bytes, received).await
            }
        }
    }
}

async fn write_all_reading(
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    mut bytes: &[u8],
    received: &mut BytesMut,
) -> io::Result<()> {
    let mut server_closed = false;
    while !bytes.is_empty() {
        if received.capacity() - received.len() < 8 * 1024 {
            received.reserve(64 * 1024);
        }
        tokio::select! {
            // Writing first: a flight that fits the socket's buffer goes in one call.
            biased;
            written = writer.write(bytes) => match written? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => bytes = &bytes[n..],
            },
            // Closed: the write fails next, and the reader of the replies finds out.
            read = reader.read_buf(received), if !server_closed => server_closed = read? == 0,
        }
    }
    writer.flush().await
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            ServerStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            ServerStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            ServerStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            ServerStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
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
    // The server closes the connection once it has signalled the backend (as libpq's
    // PQcancel waits for): a cancel still on its way would otherwise cancel whatever
    // the session sends next, tandem's statements after a wait the cancel ended too.
    let mut closed = [0u8; 1];
    let _ = tokio::time::timeout(timeout, stream.read(&mut closed)).await;
    Ok(())
}

/// `host` and `port` for a libpq-style client: a socket path `/dir/.s.PGSQL.5432`
/// becomes host `/dir` and port 5432, as libpq spells it.
fn upstream_host_port(upstream: &str) -> (String, u16) {
    if upstream.starts_with('/') {
        let (dir, file) = upstream.rsplit_once('/').unwrap_or(("/", upstream));
        let port = file
            .rsplit_once('.')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(5432);
        let dir = if dir.is_empty() { "/" } else { dir };
        return (dir.to_owned(), port);
    }
    upstream
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.parse().unwrap_or(5432)))
        .unwrap_or_else(|| (upstream.to_owned(), 5432))
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
        let (host, port) = upstream_host_port(&frontend.upstream);
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

#[cfg(test)]
mod tests {
    use super::upstream_host_port;

    #[test]
    fn upstream_spellings() {
        assert_eq!(
            upstream_host_port("127.0.0.1:5433"),
            ("127.0.0.1".to_owned(), 5433)
        );
        assert_eq!(
            upstream_host_port("/var/run/postgresql/.s.PGSQL.5432"),
            ("/var/run/postgresql".to_owned(), 5432)
        );
    }
}
