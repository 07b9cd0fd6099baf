//! The TCP listener behind the HTTP servers (the lockserver's API, a proxy's admin
//! endpoint): a bounded number of connections, each closed once idle.
//!
//! Without it, every connection a client opened and left silent (a leaky keep-alive
//! pool, a half-sent request) held a file descriptor for good: enough of them used up
//! the process's descriptors, and proxies could no longer reach the coordinator at all.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Open HTTP connections at most; past it, new ones wait in the kernel's backlog.
pub const MAX_HTTP_CONNECTIONS: usize = 512;

/// A connection with nothing read or written for this long is closed. While a handler
/// runs, hyper keeps a read pending on the connection (to see the client leave), so
/// the timeout must outlast every handler's own wait: the lockserver raises it past
/// `rollback_wait_ms`, the longest of its requests.
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// An [`axum::serve::Listener`] that keeps at most `max` connections open and closes
/// those idle for `idle`.
pub struct BoundedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl BoundedListener {
    /// The defaults: [`MAX_HTTP_CONNECTIONS`], [`HTTP_IDLE_TIMEOUT`].
    pub fn new(inner: TcpListener) -> Self {
        Self::with_limits(inner, MAX_HTTP_CONNECTIONS, HTTP_IDLE_TIMEOUT)
    }

    /// At most `max` open connections, each closed after `idle` without traffic.
    pub fn with_limits(inner: TcpListener, max: usize, idle: Duration) -> Self {
        BoundedListener {
            inner,
            permits: Arc::new(Semaphore::new(max)),
            idle,
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = IdleClosing;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Waiting for a permit before accepting: connections past the bound cost no
        // descriptor of this process.
        let permit = match Arc::clone(&self.permits).acquire_owned().await {
            Ok(permit) => permit,
            // Never closed; were it, the listener would stop accepting.
            Err(_) => std::future::pending().await,
        };
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let io = IdleClosing {
            stream,
            _permit: permit,
            idle: self.idle,
            deadline: Box::pin(tokio::time::sleep(self.idle)),
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection that fails its reads once nothing moved for `idle` (the
/// server then closes it), and gives its permit back when dropped.
pub struct IdleClosing {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl IdleClosing {
    fn moved(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }
}

impl AsyncRead for IdleClosing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                self.moved();
                Poll::Ready(r)
            }
            Poll::Pending if self.deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                io::Error::new(io::ErrorKind::TimedOut, "idle HTTP connection closed"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for IdleClosing {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        if r.is_ready() {
            self.moved();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn connections_past_the_bound_wait_and_idle_ones_are_closed() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let listener = BoundedListener::with_limits(inner, 2, Duration::from_millis(300));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let silent_a = TcpStream::connect(addr).await.unwrap();
        let silent_b = TcpStream::connect(addr).await.unwrap();
        // Both permits are taken by silent connections: a request waits...
        let get = || async { tandem_http_get(addr).await };
        let waited = tokio::time::timeout(Duration::from_millis(150), get()).await;
        assert!(waited.is_err(), "served past the bound");
        // ...until the idle ones are closed, which their clients see as EOF.
        let started = Instant::now();
        for mut silent in [silent_a, silent_b] {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte))
                .await
                .expect("an idle connection stayed open")
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        let answer = tokio::time::timeout(Duration::from_secs(5), get())
            .await
            .expect("served once the idle connections closed");
        assert!(answer.ends_with("ok"), "{answer}");
    }

    async fn tandem_http_get(addr: SocketAddr) -> String {
        use tokio::io::AsyncWriteExt;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}
