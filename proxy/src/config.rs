//! The proxy's configuration: one TOML file, every value defaulted.
//!
//! Owns parsing and validation. Never reads the environment or opens sockets. Invariant:
//! a `Config` that passed `validate()` can be served as is.

mod mysql;

pub use mysql::{MysqlFrontend, MysqlServiceCredentials};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole process: its admin endpoint and every front end it serves.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP endpoint for `/metrics` and `/ready`. Default `127.0.0.1:7433`.
    pub admin: AdminConfig,
    /// PostgreSQL front ends. Default: one, `127.0.0.1:6433` in front of `127.0.0.1:5432`.
    pub postgres: Vec<PgFrontend>,
    /// MySQL/MariaDB front ends. Default: one, `127.0.0.1:3307` in front of
    /// `127.0.0.1:3306`.
    pub mysql: Vec<MysqlFrontend>,
    /// How the process stops.
    pub shutdown: ShutdownConfig,
    /// The lockserver that sessions' control functions talk to.
    pub lockserver: LockserverConfig,
    /// Housekeeping of the undo_log tables (`at::sweep`).
    pub undo: UndoConfig,
    /// Threads the proxy's runtime relays on. Default: `TOKIO_WORKER_THREADS` when
    /// set, else half the machine's cores, at least one ([`Config::runtime_threads`]).
    pub worker_threads: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin: AdminConfig::default(),
            postgres: vec![PgFrontend::default()],
            mysql: vec![MysqlFrontend::default()],
            shutdown: ShutdownConfig::default(),
            lockserver: LockserverConfig::default(),
            undo: UndoConfig::default(),
            worker_threads: None,
        }
    }
}

impl Config {
    /// The runtime threads to start: `worker_threads`, else `TOKIO_WORKER_THREADS`
    /// (None: tokio reads it), else half the cores, at least one. A proxy shares its
    /// host with the database or the application it serves, and a relay thread that
    /// hands a session to another on every wake-up costs more than it gives: on two
    /// cores one thread relayed sysbench's oltp_read_only at 0.65 of direct where two
    /// gave 0.55, and pgbench -S at 1.10 where two gave 0.93 (same run, alternating).
    pub fn runtime_threads(&self) -> Option<usize> {
        if let Some(n) = self.worker_threads {
            return Some(n);
        }
        if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
            return None;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Some((cores / 2).max(1))
    }
}

/// Housekeeping of the undo_log of every database phase 2 serves.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UndoConfig {
    /// How often old GlobalFinished markers are deleted, in milliseconds. Default
    /// 3600000 (an hour); 0 never.
    pub sweep_interval_ms: u64,
    /// A GlobalFinished marker older than this is deleted, in milliseconds (Seata's
    /// `logSaveDays`). Normal undo rows older than it are counted and logged, never
    /// deleted. Default 604800000 (seven days); at least a day.
    pub marker_retention_ms: u64,
}

impl Default for UndoConfig {
    fn default() -> Self {
        UndoConfig {
            sweep_interval_ms: 3_600_000,
            marker_retention_ms: 7 * 24 * 3_600_000,
        }
    }
}

impl UndoConfig {
    /// The sweep's period and retention; None when it is off.
    pub fn sweep(&self) -> Option<(Duration, Duration)> {
        (self.sweep_interval_ms > 0).then(|| {
            (
                Duration::from_millis(self.sweep_interval_ms),
                Duration::from_millis(self.marker_retention_ms),
            )
        })
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LockserverConfig {
    /// gRPC endpoint of the lockserver. Default `http://127.0.0.1:8091`. The connection is
    /// opened on first use; a session calling a control function while it is down gets
    /// SQLSTATE 58000 and keeps its connection.
    pub endpoint: String,
    /// Bound on each call, in milliseconds. Default 5000.
    pub call_timeout_ms: u64,
    /// How long a branch registration (at the local COMMIT) and a locking read wait for
    /// global locks another transaction holds, in milliseconds. Default 5000. Past it the
    /// local transaction is rolled back and the client gets SQLSTATE 40001.
    pub lock_wait_ms: u64,
    /// A write outside any global transaction that would change a row an unfinished
    /// global transaction holds: `wait` (default) waits up to `lock_wait_ms` for the
    /// global transaction to finish, `fail` fails at once. Either way the client gets
    /// SQLSTATE 55P03 when the row stays held, and the write changes nothing.
    pub outside_writes: OutsideWrites,
}

impl Default for LockserverConfig {
    fn default() -> Self {
        LockserverConfig {
            endpoint: "http://127.0.0.1:8091".to_owned(),
            call_timeout_ms: 5_000,
            lock_wait_ms: 5_000,
            outside_writes: OutsideWrites::Wait,
        }
    }
}

/// What a write outside a global transaction does about a globally locked row.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutsideWrites {
    /// Wait for the holder to finish, up to `lock_wait_ms`.
    Wait,
    /// Fail at once, like a lock conflict under NOWAIT.
    Fail,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address of the admin HTTP endpoint. Default `127.0.0.1:7433`.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7433)),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long sessions get to reach their next sync point once shutdown begins, in
    /// milliseconds. Default 10000. Sessions still busy then are closed mid-request.
    pub drain_timeout_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout_ms: 10_000,
        }
    }
}

impl ShutdownConfig {
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

/// One PostgreSQL listener and the server it relays to. The client's startup packet
/// picks the database, so one front end serves every database of its server.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PgFrontend {
    /// Where clients connect. Default `127.0.0.1:6433`.
    pub listen: SocketAddr,
    /// The PostgreSQL server, as `host:port`, or the path of its unix-domain socket
    /// (`/var/run/postgresql/.s.PGSQL.5432`), which costs less per message when tandem
    /// runs beside the database (pg_hba.conf then applies its `local` rules). Default
    /// `127.0.0.1:5432`.
    pub upstream: String,
    /// How resource ids and global lock keys name this server:
    /// `postgres://<name>/<database>`. Default: `upstream` as written. Every proxy of
    /// one server must name it alike, or their global locks never meet (one reaching it
    /// as `localhost:5432`, another as `127.0.0.1:5432` or through its socket): name it
    /// here where their upstreams are spelled otherwise.
    pub name: Option<String>,
    /// Certificate and key for TLS to clients. Default: none, and SSLRequest is
    /// answered `N` so that clients continue in plain text.
    pub tls: Option<TlsConfig>,
    /// Credentials for tandem's own side connections (health checks now; undo replay and
    /// phase 2 later). Default user `postgres`, no password.
    pub service: ServiceCredentials,
    /// Client connections served at once. Default 10000. The next one is answered with
    /// SQLSTATE 53300 too_many_connections and closed.
    pub max_client_connections: usize,
    /// The largest message accepted from either side, in bytes. Default 1 GiB (the
    /// server's own limit for most messages). A larger one is answered with SQLSTATE
    /// 54000 and the session is closed.
    pub max_message_bytes: usize,
    /// Timeout for opening an upstream connection, in milliseconds. Default 5000. The
    /// client then gets SQLSTATE 08001.
    pub connect_timeout_ms: u64,
    /// How long a client has to send its StartupMessage (TLS negotiation included),
    /// in milliseconds; then the connection is closed. Default 60000, as PostgreSQL's
    /// authentication_timeout: a connection that never starts would hold one of
    /// `max_client_connections` for ever.
    pub startup_timeout_ms: u64,
    /// Connections per database in the side pool. Default 4.
    pub side_pool_size: usize,
    /// The branch mode of sessions that did not choose one with `tandem_mode`:
    /// `"at"` (undo images, the default) or `"xa"` (the database's two-phase commit).
    pub mode: BranchMode,
    /// XA recovery: how often the upstream's prepared transactions are scanned for
    /// tandem's branches, in milliseconds (also once at start). Default 10000.
    pub xa_recovery_interval_ms: u64,
    /// XA recovery: a prepared branch whose global transaction the lockserver does not
    /// know is rolled back once it is this old, in milliseconds. Default 600000 (ten
    /// minutes, past any sensible global timeout).
    pub xa_orphan_after_ms: u64,
    /// XA recovery looks at these databases only. Default: every database of the
    /// upstream. Narrow it when proxies of other tandem deployments (with other
    /// lockservers, which cannot tell each other's transactions) share the server.
    pub xa_recovery_databases: Vec<String>,
}

/// How a session's local transaction becomes a branch.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BranchMode {
    /// Undo images and global row locks (Seata's AT).
    #[default]
    At,
    /// The database's own two-phase commit.
    Xa,
}

impl Default for PgFrontend {
    fn default() -> Self {
        PgFrontend {
            listen: SocketAddr::from(([127, 0, 0, 1], 6433)),
            upstream: "127.0.0.1:5432".to_owned(),
            name: None,
            tls: None,
            service: ServiceCredentials::default(),
            max_client_connections: 10_000,
            max_message_bytes: 1 << 30,
            connect_timeout_ms: 5_000,
            startup_timeout_ms: 60_000,
            side_pool_size: 4,
            mode: BranchMode::At,
            xa_recovery_interval_ms: 10_000,
            xa_orphan_after_ms: 600_000,
            xa_recovery_databases: Vec::new(),
        }
    }
}

impl PgFrontend {
    /// The server as resource ids and lock keys name it (`name`, else `upstream`).
    pub fn server(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.upstream)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn startup_timeout(&self) -> Duration {
        Duration::from_millis(self.startup_timeout_ms)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceCredentials {
    /// Default `postgres`.
    pub user: String,
    /// Default empty (trust or peer authentication).
    pub password: String,
}

impl Default for ServiceCredentials {
    fn default() -> Self {
        ServiceCredentials {
            user: "postgres".to_owned(),
            password: String::new(),
        }
    }
}

/// Everything wrong with a configuration file, reported at once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
    Invalid { problems: Vec<String> },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        let mut config: Config = toml::from_str(text)?;
        // A file that lists front ends of one protocol only wants those: the other
        // protocol's default front end applies only when the file lists none at all.
        let table: toml::Table = toml::from_str(text)?;
        match (table.contains_key("postgres"), table.contains_key("mysql")) {
            (true, false) => config.mysql.clear(),
            (false, true) => config.postgres.clear(),
            _ => {}
        }
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.worker_threads == Some(0) {
            problems.push("worker_threads must be at least 1".to_owned());
        }
        if self.undo.marker_retention_ms < 86_400_000 {
            // A marker must outlive any branch commit still under way, whatever a
            // daylight-saving shift does to MySQL's local-time log_created.
            problems.push("undo.marker_retention_ms must be at least 86400000 (a day)".to_owned());
        }
        let mut listens = vec![self.admin.listen];
        for (i, pg) in self.postgres.iter().enumerate() {
            let at = format!("postgres[{i}]");
            if listens.contains(&pg.listen) && pg.listen.port() != 0 {
                problems.push(format!("{at}.listen {} is used twice", pg.listen));
            }
            listens.push(pg.listen);
            let is_socket = pg.upstream.starts_with('/');
            if !is_socket
                && pg
                    .upstream
                    .rsplit_once(':')
                    .is_none_or(|(_, port)| port.parse::<u16>().is_err())
            {
                problems.push(format!(
                    "{at}.upstream {:?} is neither host:port nor a socket path",
                    pg.upstream
                ));
            }
            if pg.max_client_connections == 0 {
                problems.push(format!("{at}.max_client_connections must be at least 1"));
            }
            if pg.max_message_bytes < 1024 {
                problems.push(format!("{at}.max_message_bytes must be at least 1024"));
            }
            if pg.connect_timeout_ms == 0 {
                problems.push(format!("{at}.connect_timeout_ms must be at least 1"));
            }
            if pg.startup_timeout_ms == 0 {
                problems.push(format!("{at}.startup_timeout_ms must be at least 1"));
            }
            if pg.side_pool_size == 0 {
                problems.push(format!("{at}.side_pool_size must be at least 1"));
            }
            if let Some(tls) = &pg.tls {
                for (what, path) in [("cert", &tls.cert), ("key", &tls.key)] {
                    if !path.exists() {
                        problems.push(format!("{at}.tls.{what} {} does not exist", path.display()));
                    }
                }
            }
        }
        mysql::validate(&self.mysql, &mut listens, &mut problems);
        // Parsed as the client will: a port that is not a number would otherwise pass,
        // and every control call then fail with "tcp connect error".
        let endpoint = self.lockserver.endpoint.parse::<tonic::transport::Uri>();
        let usable = endpoint.as_ref().is_ok_and(|uri| {
            // The URI parser takes any text after the host's colon as its port.
            let port_text = uri
                .authority()
                .and_then(|a| a.as_str().rsplit('@').next())
                .and_then(|host_port| host_port.rsplit_once(':'))
                .map(|(_, port)| port)
                .filter(|port| !port.contains(']'));
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|h| !h.is_empty())
                && port_text.is_none_or(|p| p.parse::<u16>().is_ok())
        });
        if !usable {
            problems.push(format!(
                "lockserver.endpoint {:?} must be an http:// or https:// URI with a host and, optionally, a numeric port",
                self.lockserver.endpoint
            ));
        }
        if self.lockserver.call_timeout_ms == 0 {
            problems.push("lockserver.call_timeout_ms must be at least 1".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let config = Config::parse("").unwrap();
        assert_eq!(config, Config::default());
        config.validate().unwrap();
    }

    #[test]
    fn a_lockserver_endpoint_must_be_a_uri_the_client_can_dial() {
        for bad in [
            "127.0.0.1:8091",
            "http://127.0.0.1:notaport",
            "http://",
            "ftp://127.0.0.1:8091",
            "http://127.0.0.1:99999",
        ] {
            let mut config = Config::default();
            config.lockserver.endpoint = bad.to_owned();
            assert!(config.validate().is_err(), "{bad}");
        }
        for good in [
            "http://127.0.0.1:8091",
            "https://lock.example:443",
            "http://lock",
            "http://[::1]:8091",
            "http://[::1]",
            "http://user:secret@lock",
            "http://lock:8091/",
        ] {
            let mut config = Config::default();
            config.lockserver.endpoint = good.to_owned();
            config.validate().unwrap();
        }
    }

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../../tandem.example.toml");
        let config = Config::parse(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.postgres[0].listen.port(), 6433);
        assert_eq!(config.mysql[0].listen.port(), 3307);
    }

    #[test]
    fn compose_config_parses_and_validates() {
        let text = include_str!("../../compose/proxy.toml");
        let config = Config::parse(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.postgres[0].upstream, "postgres:5432");
        assert_eq!(config.mysql[0].upstream, "mysql:3306");
        assert_eq!(config.lockserver.endpoint, "http://lockserver:8091");
    }

    #[test]
    fn front_ends_of_one_protocol_leave_out_the_other_default() {
        let pg_only = Config::parse("[[postgres]]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        assert!(pg_only.mysql.is_empty());
        let mysql_only = Config::parse("[[mysql]]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        assert!(mysql_only.postgres.is_empty());
        let neither = Config::parse("[admin]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        assert_eq!((neither.postgres.len(), neither.mysql.len()), (1, 1));
    }

    #[test]
    fn worker_threads_are_configured_or_half_the_cores() {
        let one = Config::parse("worker_threads = 1\n").unwrap();
        assert_eq!(one.runtime_threads(), Some(1));
        assert!(
            Config::parse("worker_threads = 0\n")
                .unwrap()
                .validate()
                .is_err()
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            assert_eq!(
                Config::default().runtime_threads(),
                Some((cores / 2).max(1))
            );
        }
    }

    #[test]
    fn the_undo_sweep_can_be_turned_off_and_keeps_markers_a_day_at_least() {
        let off = Config::parse("[undo]\nsweep_interval_ms = 0\n").unwrap();
        assert_eq!(off.undo.sweep(), None);
        let default = Config::default().undo.sweep();
        assert_eq!(
            default,
            Some((
                Duration::from_secs(3600),
                Duration::from_secs(7 * 24 * 3600)
            ))
        );
        assert!(
            Config::parse("[undo]\nmarker_retention_ms = 3600000\n")
                .unwrap()
                .validate()
                .is_err()
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(Config::parse("[admin]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n").is_err());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = Config::parse(
            "[[postgres]]\nupstream = \"nowhere\"\nmax_client_connections = 0\nmax_message_bytes = 1\n",
        )
        .unwrap();
        let Err(ConfigError::Invalid { problems }) = config.validate() else {
            panic!("expected an invalid config");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
