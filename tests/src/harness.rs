//! The one shared harness: a tandem proxy in-process on `127.0.0.1:0`, a fresh database
//! per test on the real PostgreSQL, and polling with deadlines.
//!
//! Never uses fixed ports or shared server settings. Invariant: a `Tandem` that a test
//! started is shut down by `Tandem::shutdown`, which fails the test if shutdown hangs.

use crate::env;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tandem_proxy::config::Config;
use tandem_proxy::server::{self, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// How long graceful shutdown may take before the test fails.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// A tandem proxy process, in this test's runtime.
pub struct Tandem {
    pub pg: SocketAddr,
    /// The MySQL front end, when the test started one (`crate::mysql::start_with`).
    pub mysql: Option<SocketAddr>,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tandem_proxy::Error>>>,
}

impl Tandem {
    /// A proxy with the default configuration in front of the test PostgreSQL.
    pub async fn start() -> Tandem {
        Self::start_with(|_| {}).await
    }

    /// A proxy whose configuration `edit` adjusts after the test defaults are set.
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> Tandem {
        let admin = env::pg_admin();
        let mut config = Config::default();
        config.admin.listen = "127.0.0.1:0".parse().expect("literal address");
        config.shutdown.drain_timeout_ms = 5_000;
        let pg = &mut config.postgres[0];
        pg.listen = "127.0.0.1:0".parse().expect("literal address");
        pg.upstream = env::pg_upstream();
        pg.service.user = admin.get_user().unwrap_or("postgres").to_owned();
        pg.service.password = admin
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        // PostgreSQL tests run no MySQL front end; `crate::mysql::start_with` adds one.
        config.mysql.clear();
        edit(&mut config);
        config.validate().expect("test configuration is valid");
        let listeners = Listeners::bind(&config).await.expect("bind test listeners");
        let pg = listeners.postgres_addrs()[0];
        let mysql = listeners.mysql_addrs().first().copied();
        let admin = listeners.admin_addr().expect("admin address");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server::run(listeners, config, async {
            let _ = stopped.await;
        }));
        Tandem {
            pg,
            mysql,
            admin,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A proxy whose control functions and phase 2 go to `lockserver`.
    pub async fn start_for(lockserver: &crate::lockserver::TestLockserver) -> Tandem {
        let endpoint = format!("http://{}", lockserver.grpc);
        Self::start_with(|c| c.lockserver.endpoint = endpoint).await
    }

    /// A client configuration for `database` through this proxy, as the admin user.
    pub fn config(&self, database: &str) -> tokio_postgres::Config {
        // A fresh Config: `host()` appends to the list, so editing the admin one would
        // leave the direct server first in line.
        let admin = env::pg_admin();
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.pg.ip().to_string())
            .port(self.pg.port())
            .user(admin.get_user().unwrap_or("postgres"))
            .dbname(database)
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        if let Some(password) = admin.get_password() {
            config.password(password);
        }
        config
    }

    /// A connected client for `database` through this proxy.
    pub async fn connect(&self, database: &str) -> Client {
        connect(self.config(database)).await
    }

    /// The value of a metric from `/metrics`, 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let body = http_get(self.admin, "/metrics").await;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                (key == name).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// Waits until the proxy has no client session and no backend connection open.
    pub async fn assert_no_sessions_left(&self) {
        eventually("sessions and backends back to zero", || async {
            self.metric("tandem_pg_clients_active").await == 0.0
                && self.metric("tandem_pg_backends_active").await == 0.0
        })
        .await;
    }

    /// Shuts the proxy down and fails the test if that takes longer than
    /// `SHUTDOWN_DEADLINE` or ends in an error.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(SHUTDOWN_DEADLINE, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("proxy ended with an error: {e}"),
                Ok(Err(e)) => panic!("proxy task failed: {e}"),
                Err(_) => panic!("proxy did not shut down within {SHUTDOWN_DEADLINE:?}"),
            }
        }
    }
}

impl Drop for Tandem {
    fn drop(&mut self) {
        // A test that panicked before `shutdown` still stops its proxy.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Connects and drives the connection in the background.
pub async fn connect(config: tokio_postgres::Config) -> Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A database of its own for one test, dropped afterwards.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn create(label: &str) -> TestDb {
        let name = format!("tandem_t_{label}_{:08x}", rand::random::<u32>());
        let admin = connect(admin_config()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        TestDb { name }
    }

    /// Creates tandem's tables (undo_log) in this database, as `tandem migrate` does.
    pub async fn migrate(&self) {
        let url = format!(
            "postgres://postgres@{}/{}?sslmode=disable",
            env::pg_upstream(),
            self.name
        );
        tandem_proxy::migrate::apply(&url)
            .await
            .expect("tandem migrate");
    }

    /// Creates table `t (id, v)` holding the one row (1, 0), for tests that need one
    /// row to write and read back (`v_of_row_1`).
    pub async fn one_row_table(&self) {
        self.direct()
            .await
            .batch_execute(
                "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0)",
            )
            .await
            .expect("create table t");
    }

    /// `v` of row 1 of `one_row_table`, read directly.
    pub async fn v_of_row_1(&self) -> i32 {
        self.direct()
            .await
            .query_one("SELECT v FROM t WHERE id = 1", &[])
            .await
            .expect("read row 1 of t")
            .get(0)
    }

    /// A direct client (no proxy) to this database.
    pub async fn direct(&self) -> Client {
        let mut config = admin_config();
        config.dbname(&self.name);
        connect(config).await
    }

    /// How many backends are connected to this database, tandem's side pools excluded.
    pub async fn backend_count(&self) -> i64 {
        let admin = connect(admin_config()).await;
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                 AND application_name <> 'tandem' AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await
            .expect("count backends");
        row.get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await; a thread with its own runtime removes the database.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok((client, conn)) = admin_config().connect(NoTls).await {
                        tokio::spawn(conn);
                        let _ = client
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

fn admin_config() -> tokio_postgres::Config {
    let mut config = env::pg_admin();
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    config
}

/// Polls `check` until it holds, failing the test after 15 seconds.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, Duration::from_secs(15), check).await
}

/// As [`eventually`], waiting up to `patience` (work whose size, not a timer, sets
/// how long it takes: replaying megabytes of images on a loaded machine).
pub async fn eventually_within<F, Fut>(what: &str, patience: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A minimal HTTP/1.0 GET, enough for `/metrics` and `/ready`.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect admin");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: tandem\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    response
}
