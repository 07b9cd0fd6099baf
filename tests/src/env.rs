//! Where the real servers are: read from the environment, never guessed.
//!
//! `tests/run.sh` sets these for the local services. Where one is unset, the suite built
//! with the `containers` feature starts that server in a container if a Docker engine is
//! reachable; otherwise the test fails with instructions rather than skipping.

/// The PostgreSQL server, as a URL with a superuser, e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub const PG_URL: &str = "TANDEM_TEST_PG_URL";
/// The MySQL/MariaDB server, e.g. `mysql://root@127.0.0.1:3306/test`.
pub const MYSQL_URL: &str = "TANDEM_TEST_MYSQL_URL";
/// The Redis server, e.g. `redis://127.0.0.1:6379`.
pub const REDIS_URL: &str = "TANDEM_TEST_REDIS_URL";

/// The value of `var`, or a container's address, or a failure that says what to do.
pub fn server_url(var: &str, example: &str) -> String {
    if let Ok(value) = std::env::var(var)
        && !value.is_empty()
    {
        return value;
    }
    if let Some(url) = containers::url_for(var) {
        return url;
    }
    panic!(
        "{var} is not set. The integration suite runs against real servers: run \
         `bash tests/run.sh` (it starts the local services and sets the variables), \
         export {var}={example}, or build the suite with `--features containers` on a \
         machine with a Docker engine"
    )
}

/// The PostgreSQL superuser connection, as a tokio-postgres configuration.
pub fn pg_admin() -> tokio_postgres::Config {
    let url = server_url(PG_URL, "postgres://postgres@127.0.0.1:5432/postgres");
    url.parse()
        .unwrap_or_else(|e| panic!("{PG_URL}={url} is not a valid connection URL: {e}"))
}

/// `host:port` of the PostgreSQL server, for the proxy's upstream.
pub fn pg_upstream() -> String {
    let config = pg_admin();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => panic!("{PG_URL} must name a TCP host"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// The same `host:port` spelled otherwise (`localhost` for `127.0.0.1`, and the
/// other way round): another way a proxy can name one server.
pub fn other_spelling(upstream: &str) -> String {
    let (host, port) = upstream.rsplit_once(':').expect("host:port");
    match host {
        "localhost" => format!("127.0.0.1:{port}"),
        _ => format!("localhost:{port}"),
    }
}

/// The Redis server's URL.
pub fn redis_url() -> String {
    server_url(REDIS_URL, "redis://127.0.0.1:6379")
}

/// The MySQL/MariaDB server's URL.
pub fn mysql_url() -> String {
    server_url(MYSQL_URL, "mysql://root@127.0.0.1:3306/test")
}

#[cfg(not(feature = "containers"))]
mod containers {
    pub fn url_for(_var: &str) -> Option<String> {
        None
    }
}

#[cfg(feature = "containers")]
mod containers {
    //! One container per server for the whole test binary, started on first use and
    //! left to testcontainers' reaper when the process ends.

    use std::sync::OnceLock;
    use testcontainers_modules::mariadb::Mariadb;
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::redis::Redis;
    use testcontainers_modules::testcontainers::runners::SyncRunner;
    use testcontainers_modules::testcontainers::{Container, ImageExt};

    struct Started<I: testcontainers_modules::testcontainers::Image> {
        _container: Container<I>,
        url: String,
    }

    static PG: OnceLock<Option<Started<Postgres>>> = OnceLock::new();
    static MYSQL: OnceLock<Option<Started<Mariadb>>> = OnceLock::new();
    static REDIS: OnceLock<Option<Started<Redis>>> = OnceLock::new();

    fn docker_reachable() -> bool {
        std::env::var_os("DOCKER_HOST").is_some()
            || std::path::Path::new("/var/run/docker.sock").exists()
    }

    /// Runs `start` on a plain thread: the blocking runner builds its own runtime, which
    /// must not happen inside the test's.
    fn on_thread<T: Send + 'static>(
        start: impl FnOnce() -> Option<T> + Send + 'static,
    ) -> Option<T> {
        if !docker_reachable() {
            return None;
        }
        std::thread::spawn(start).join().ok().flatten()
    }

    pub fn url_for(var: &str) -> Option<String> {
        match var {
            super::PG_URL => PG
                .get_or_init(|| {
                    on_thread(|| {
                        let container = Postgres::default()
                            .with_cmd([
                                "postgres",
                                "-c",
                                "max_prepared_transactions=100",
                                "-c",
                                "max_connections=1200",
                            ])
                            .start()
                            .ok()?;
                        let port = container.get_host_port_ipv4(5432).ok()?;
                        Some(Started {
                            _container: container,
                            url: format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres"),
                        })
                    })
                })
                .as_ref()
                .map(|s| s.url.clone()),
            super::MYSQL_URL => MYSQL
                .get_or_init(|| {
                    on_thread(|| {
                        let container = Mariadb::default().start().ok()?;
                        let port = container.get_host_port_ipv4(3306).ok()?;
                        Some(Started {
                            _container: container,
                            url: format!("mysql://root@127.0.0.1:{port}/test"),
                        })
                    })
                })
                .as_ref()
                .map(|s| s.url.clone()),
            super::REDIS_URL => REDIS
                .get_or_init(|| {
                    on_thread(|| {
                        let container = Redis::default().start().ok()?;
                        let port = container.get_host_port_ipv4(6379).ok()?;
                        Some(Started {
                            _container: container,
                            url: format!("redis://127.0.0.1:{port}"),
                        })
                    })
                })
                .as_ref()
                .map(|s| s.url.clone()),
            _ => None,
        }
    }
}
