//! A proxy in its own process (`tandem-under-test`), so that a test can kill it with
//! SIGKILL: what a crash between two steps of a protocol leaves behind.

use crate::lockserver::TestLockserver;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

pub struct ProxyProcess {
    child: Child,
    /// The front end's port (the `{port}` of the section it was started with).
    pub port: u16,
    config: std::path::PathBuf,
}

impl ProxyProcess {
    /// Starts `binary` (a test's `env!("CARGO_BIN_EXE_tandem-under-test")`: Cargo tells
    /// only integration tests where it is) with one front-end `section` (TOML, with
    /// `{port}` where its listen port goes) and `lockserver`; waits until it listens.
    pub async fn start(binary: &str, section: &str, lockserver: &TestLockserver) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("its address")
            .port();
        let config = std::env::temp_dir().join(format!(
            "tandem-process-{:016x}.toml",
            rand::random::<u64>()
        ));
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[lockserver]\nendpoint = \"http://{}\"\n{}",
            lockserver.grpc,
            section.replace("{port}", &port.to_string())
        );
        std::fs::write(&config, text).expect("write the proxy's configuration");
        let child = Command::new(binary)
            .arg(&config)
            .spawn()
            .expect("start the proxy process");
        let me = ProxyProcess {
            child,
            port,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the proxy process did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        me
    }

    /// A PostgreSQL client through this proxy, as the test admin user.
    pub async fn connect_pg(&self, database: &str) -> Client {
        let admin = crate::env::pg_admin();
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(admin.get_user().unwrap_or("postgres"))
            .dbname(database)
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        if let Some(password) = admin.get_password() {
            config.password(password);
        }
        crate::harness::connect(config).await
    }

    /// A MySQL client through this proxy, as the test admin user.
    pub async fn connect_mysql(&self, database: &str) -> mysql_async::Conn {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        mysql_async::Conn::new(crate::mysql::opts_at(addr, Some(database)))
            .await
            .expect("connect through the proxy process")
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill(mut self) {
        self.child.kill().expect("kill -9 the proxy");
        self.child.wait().expect("reap the proxy");
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}
