//! Harness for the lockserver: an in-process lockserver on `127.0.0.1:0` with the
//! embedded store (fresh temp dir) or Redis (fresh key prefix), a gRPC client, and a
//! tiny HTTP/1.1 client for the JSON API.
//!
//! Redis comes from `TANDEM_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`); if it
//! is unreachable the test fails with instructions, it never skips.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem_lockserver::Config;
use tandem_lockserver::client::{ClientOptions, LockClient};
use tandem_lockserver::config::StoreConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Which store a test lockserver uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Embedded log in a fresh temp dir.
    Embedded,
    /// Redis under a fresh prefix.
    Redis,
}

/// The Redis URL for tests.
pub fn redis_url() -> String {
    std::env::var("TANDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A config suited to tests: fast timers and retries, given store.
/// The test lockservers' `release_after_idle_ms`.
pub const RELEASE_AFTER_IDLE: Duration = Duration::from_millis(200);

pub fn test_config(kind: Kind) -> (Config, Option<PathBuf>) {
    let mut c = Config {
        tick_interval_ms: 20,
        // Tests read "Rollbacked" from the rollback's own answer: a loaded 2-core CI
        // machine can take over a second to undo a branch.
        rollback_wait_ms: 3_000,
        // A table-judged outside write lets a table go this long after its last
        // registration (tests wait it out, see `RELEASE_AFTER_IDLE`).
        release_after_idle_ms: RELEASE_AFTER_IDLE.as_millis() as u64,
        ..Config::default()
    };
    c.phase2.retry_initial_ms = 20;
    c.phase2.retry_max_ms = 200;
    c.phase2.poll_interval_ms = 10;
    c.phase2.ack_timeout_ms = 2_000;
    let dir = match kind {
        Kind::Embedded => {
            let d = std::env::temp_dir().join(format!("tandem-ls-{:016x}", rand::random::<u64>()));
            c.store = StoreConfig::Embedded {
                path: d.clone(),
                compact_bytes: 1 << 20,
            };
            Some(d)
        }
        Kind::Redis => {
            c.store = StoreConfig::Redis {
                url: redis_url(),
                prefix: format!("tandem-it:{:016x}", rand::random::<u64>()),
            };
            None
        }
    };
    (c, dir)
}

/// An in-process lockserver. Call [`TestLockserver::stop`] at the end of a test: it
/// fails the test if shutdown does not finish in time.
pub struct TestLockserver {
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<tandem_lockserver::Result<()>>>,
    dir: Option<PathBuf>,
    config: Config,
}

/// A lockserver stopped by [`TestLockserver::stop_for_restart`].
pub struct StoppedLockserver {
    grpc: SocketAddr,
    http: SocketAddr,
    config: Config,
    dir: Option<PathBuf>,
}

impl StoppedLockserver {
    /// Starts it again on the same addresses and the same store.
    pub async fn start(self) -> TestLockserver {
        let g = TcpListener::bind(self.grpc).await.expect("rebind grpc");
        let h = TcpListener::bind(self.http).await.expect("rebind http");
        TestLockserver::serve(g, h, self.config, self.dir).await
    }
}

impl TestLockserver {
    /// Starts a lockserver with the test config for `kind`.
    pub async fn start(kind: Kind) -> Self {
        let (c, dir) = test_config(kind);
        Self::start_with(c, dir).await
    }

    /// Starts a lockserver with `config`; `dir` is removed when it is dropped.
    pub async fn start_with(config: Config, dir: Option<PathBuf>) -> Self {
        if let StoreConfig::Redis { url, .. } = &config.store {
            check_redis(url).await;
        }
        let g = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
        let h = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        Self::serve(g, h, config, dir).await
    }

    /// Stops this lockserver gracefully and starts it again on the same addresses and
    /// the same store: what a proxy sees when its lockserver restarts.
    pub async fn restart(self) -> Self {
        self.stop_for_restart().await.start().await
    }

    /// Stops this lockserver gracefully, keeping its addresses and store for
    /// [`StoppedLockserver::start`]: proxies see it down meanwhile.
    pub async fn stop_for_restart(mut self) -> StoppedLockserver {
        let stopped = StoppedLockserver {
            grpc: self.grpc,
            http: self.http,
            config: self.config.clone(),
            dir: self.dir.take(),
        };
        self.stop().await;
        stopped
    }

    async fn serve(g: TcpListener, h: TcpListener, config: Config, dir: Option<PathBuf>) -> Self {
        let (grpc, http) = (g.local_addr().unwrap(), h.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(tandem_lockserver::server::run(
            g,
            h,
            config.clone(),
            async {
                let _ = rx.await;
            },
        ));
        let me = TestLockserver {
            grpc,
            http,
            stop: Some(tx),
            task: Some(task),
            dir,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while me.get("/v1/transactions").await.0 != 200 {
            assert!(Instant::now() < deadline, "lockserver did not become ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        me
    }

    /// A gRPC client.
    pub fn client(&self) -> LockClient {
        LockClient::connect_lazy(&format!("http://{}", self.grpc), ClientOptions::default())
            .expect("client")
    }

    /// `GET path` → (status, JSON body or Null).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        http(self.http, "GET", path, None).await
    }

    /// Asserts that `xid` has two branches, the first withdrawn (PhaseOneFailed): a
    /// registration whose answer was lost, and the one that replaced it.
    pub async fn assert_first_of_two_branches_withdrawn(&self, xid: &str) {
        let (_, global) = self.get(&format!("/v1/transactions/{xid}")).await;
        let statuses: Vec<_> = global["branches"]
            .as_array()
            .expect("branches")
            .iter()
            .map(|b| b["status"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            (statuses.len(), statuses[0].as_str()),
            (2, "PhaseOneFailed"),
            "the lost registration reached the lockserver and was withdrawn: {global}"
        );
    }

    /// The value of metric `name` on `/metrics` (its whole name, with its labels if it
    /// has any), -1 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, metrics) = http_raw(self.http, "GET", "/metrics", None).await;
        String::from_utf8_lossy(&metrics)
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    }

    /// `POST path` with an optional body.
    pub async fn post(&self, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        http(self.http, "POST", path, body).await
    }

    /// Graceful shutdown; panics if it takes more than 15 s or fails.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("lockserver shutdown timed out");
            r.expect("lockserver task panicked")
                .expect("lockserver returned an error");
        }
    }
}

impl Drop for TestLockserver {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

async fn check_redis(url: &str) {
    let ok = async {
        let c = redis::Client::open(url).ok()?;
        let mut conn = c.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    if tokio::time::timeout(Duration::from_secs(3), ok)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        panic!(
            "these tests need Redis at {url}: start one (`redis-server --daemonize yes`) or set TANDEM_TEST_REDIS_URL"
        );
    }
}

/// A minimal HTTP/1.1 request (Connection: close); returns status and JSON body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let raw = http_raw(addr, method, path, body.map(str::as_bytes)).await;
    let status = raw.0;
    (
        status,
        serde_json::from_slice(&raw.1).unwrap_or(serde_json::Value::Null),
    )
}

/// Like [`http`], returning the raw body bytes.
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> (u16, Vec<u8>) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.ok()?;
        // A server refusing the body (413) may answer and close before reading it all.
        let _ = s.write_all(body).await;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&buf[..split]).ok()?;
        let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
        let mut rest = buf[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            rest = dechunk(&rest);
        }
        Some((status, rest))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, Vec::new()))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(p) = b.windows(2).position(|w| w == b"\r\n") {
        let Ok(n) = usize::from_str_radix(std::str::from_utf8(&b[..p]).unwrap_or("0").trim(), 16)
        else {
            break;
        };
        if n == 0 || b.len() < p + 2 + n {
            break;
        }
        out.extend_from_slice(&b[p + 2..p + 2 + n]);
        b = &b[(p + 4 + n).min(b.len())..];
    }
    out
}

/// Polls `f` until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
