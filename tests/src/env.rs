//! Where the real servers are: read from the environment, never guessed.
//!
//! `tests/run.sh` sets these for the local services. Without them a test fails with
//! instructions rather than skipping.

/// The PostgreSQL server, as a URL with a superuser, e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub const PG_URL: &str = "TANDEM_TEST_PG_URL";

fn require(var: &str, example: &str) -> String {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{var} is not set. The integration suite runs against real servers: run \
             `bash tests/run.sh` (it starts the local services and sets the variables), or \
             export {var}={example}"
        ),
    }
}

/// The PostgreSQL superuser connection, as a tokio-postgres configuration.
pub fn pg_admin() -> tokio_postgres::Config {
    let url = require(PG_URL, "postgres://postgres@127.0.0.1:5432/postgres");
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
