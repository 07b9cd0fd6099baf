//! The lockserver's TOML configuration. Every field has a default, so an empty file
//! (or none) is a working embedded lockserver on the default ports.
//!
//! Owns: parsing and validation. Never opens sockets or files. Invariant: a `Config`
//! that passed [`Config::validate`] can be run.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::core::txn::Limits;
use crate::error::{Error, Result};

/// The lockserver configuration (`tandem lockserver -c FILE`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC address for proxies. Default `127.0.0.1:8091`.
    pub grpc_listen: SocketAddr,
    /// HTTP/JSON API and `/metrics`. Default `127.0.0.1:7091`.
    pub http_listen: SocketAddr,
    /// Where state lives. Default: the embedded store in `.tandem/lockserver`.
    pub store: StoreConfig,
    /// Timeout of a global transaction that does not ask for one, in ms. Default 60000.
    pub default_timeout_ms: u64,
    /// Longest timeout a client may ask for, in ms; longer requests are refused. Default 3600000.
    pub max_timeout_ms: u64,
    /// Upper bound on a branch registration's wait for conflicting locks, in ms; a
    /// client asking for more gets this much. Default 10000.
    pub max_lock_wait_ms: u64,
    /// How long a rollback request waits for every branch to be undone before it
    /// answers with the current status (`Rollbacking` while attempts are under way,
    /// `RollbackRetrying` once one has failed), in ms. Default 5000.
    pub rollback_wait_ms: u64,
    /// How often timeouts and retention are checked, in ms. Default 100.
    pub tick_interval_ms: u64,
    /// How long finished transactions stay queryable, in ms. Default 60000 (see also `limits.max_finished`).
    pub finished_retention_ms: u64,
    /// Threads of the lockserver's own async runtime (it never runs on its host's
    /// runtime, e.g. inside `tandem dev`); 0 means one per core. Default: 1 with the
    /// embedded store, where a request crossing between worker threads cost more
    /// (each hop wakes an idle core, ~30 µs on a small VM) than a second thread gained
    /// and the log's fsyncs run on their own thread anyway; one per core with Redis,
    /// whose several round trips per command outgrow one thread (12k vs 10k
    /// registrations/s on 2 cores).
    pub worker_threads: Option<usize>,
    /// How long a registration that announces a new table to the proxies (see
    /// `Hello.table_locks`) waits for every one of them to acknowledge, in ms. Past it
    /// the registration fails with UNAVAILABLE and takes no lock (the table stays
    /// announced; a retry waits for the acknowledgements still missing). Default 2000.
    pub table_ack_timeout_ms: u64,
    /// How often a table-notice stream hears from the lockserver when nothing else
    /// is sent (an empty `Phase2Down`), in ms. Default 1000.
    pub table_heartbeat_ms: u64,
    /// How long a proxy may trust its table view without hearing from the lockserver,
    /// in ms; so also how long a closed table-notice stream delays announcements of
    /// its resources. Must exceed twice `table_heartbeat_ms`. Default 3000. Sent in
    /// each snapshot: proxies trust their view at most two thirds of it after they last
    /// heard from the lockserver.
    pub table_lease_ms: u64,
    /// An announced table that has held no lock for this long (sampled every
    /// `tick_interval_ms`) is unannounced, so proxies stop checking writes to it, in
    /// ms. Embedded store only (with Redis, proxies check every write). Default 10000.
    pub unannounce_after_ms: u64,
    /// A write outside global transactions that tandem can judge only by its tables
    /// (a multi-statement query, TRUNCATE, a write through a view) has the lockserver
    /// unannounce a table holding no lock at once, rather than after
    /// `unannounce_after_ms`, once no registration has used the table for this long,
    /// in ms: a busy table stays announced, so that its global transactions do not
    /// announce it again (and wait for every proxy) between one another. Default 1000.
    pub release_after_idle_ms: u64,
    /// Phase-2 delivery.
    pub phase2: Phase2Config,
    /// Bounds.
    pub limits: LimitsConfig,
}

/// Where coordinator state is stored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// A local log with fsync (the default).
    Embedded {
        /// Directory of the log. Default `.tandem/lockserver`.
        #[serde(default = "default_store_path")]
        path: PathBuf,
        /// Compact the log once it grows past this many bytes. Default 67108864 (64 MiB).
        #[serde(default = "default_compact_bytes")]
        compact_bytes: u64,
    },
    /// Redis, shared by several lockservers. Use `appendonly yes` with
    /// `appendfsync always` for the embedded store's no-loss guarantee.
    Redis {
        /// Redis URL. Default `redis://127.0.0.1:6379`.
        #[serde(default = "default_redis_url")]
        url: String,
        /// Key prefix; lockservers sharing transactions use the same one. Default `tandem`.
        #[serde(default = "default_redis_prefix")]
        prefix: String,
    },
}

fn default_store_path() -> PathBuf {
    PathBuf::from(".tandem/lockserver")
}
fn default_compact_bytes() -> u64 {
    64 << 20
}
fn default_redis_url() -> String {
    "redis://127.0.0.1:6379".into()
}
fn default_redis_prefix() -> String {
    "tandem".into()
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Embedded {
            path: default_store_path(),
            compact_bytes: default_compact_bytes(),
        }
    }
}

/// How phase-2 work reaches proxies.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Phase2Config {
    /// First retry delay after a `Retry` answer or when no proxy serves the resource, in ms. Default 100.
    pub retry_initial_ms: u64,
    /// Retry delays double up to this, in ms. Default 5000.
    pub retry_max_ms: u64,
    /// A delivered item unanswered for this long is delivered again (possibly to
    /// another proxy or by another lockserver), in ms. Default 10000.
    pub ack_timeout_ms: u64,
    /// How often the dispatcher looks for due work when not woken, in ms. Default 50.
    pub poll_interval_ms: u64,
    /// Transactions claimed per dispatcher pass. Default 512.
    pub batch: usize,
}

impl Default for Phase2Config {
    fn default() -> Self {
        Phase2Config {
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
            ack_timeout_ms: 10_000,
            poll_interval_ms: 50,
            batch: 512,
        }
    }
}

/// Bounds. Each says what happens when it is hit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests served at once (gRPC and HTTP together); more get
    /// RESOURCE_EXHAUSTED / 503. Default 20000.
    pub max_in_flight: usize,
    /// Branches per global transaction; more are refused. Default 1000.
    pub max_branches_per_global: usize,
    /// Lock keys per branch registration; more are refused. Default 10000.
    pub max_keys_per_branch: usize,
    /// Connected phase-2 streams; more are refused with RESOURCE_EXHAUSTED. Default 1024.
    pub max_phase2_streams: usize,
    /// Work items queued per phase-2 stream; when full the item waits for a retry. Default 1024.
    pub phase2_queue: usize,
    /// Rows returned by a listing (`GET /v1/transactions`, `/v1/locks`). Default 1000.
    pub max_list: usize,
    /// HTTP request bodies larger than this are refused (413), in bytes. Default 65536.
    pub max_body_bytes: usize,
    /// Finished transactions kept for status queries; past it the oldest are
    /// forgotten (a query then answers "unknown transaction"). Default 10000.
    pub max_finished: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_in_flight: 20_000,
            max_branches_per_global: 1000,
            max_keys_per_branch: 10_000,
            max_phase2_streams: 1024,
            phase2_queue: 1024,
            max_list: 1000,
            max_body_bytes: 64 << 10,
            max_finished: 10_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_listen: ([127, 0, 0, 1], 8091).into(),
            http_listen: ([127, 0, 0, 1], 7091).into(),
            store: StoreConfig::default(),
            default_timeout_ms: 60_000,
            max_timeout_ms: 3_600_000,
            max_lock_wait_ms: 10_000,
            rollback_wait_ms: 5_000,
            tick_interval_ms: 100,
            finished_retention_ms: 60_000,
            worker_threads: None,
            table_ack_timeout_ms: 2_000,
            table_heartbeat_ms: 1_000,
            table_lease_ms: 3_000,
            unannounce_after_ms: 10_000,
            release_after_idle_ms: 1_000,
            phase2: Phase2Config::default(),
            limits: LimitsConfig::default(),
        }
    }
}

impl Config {
    /// Parses TOML and validates it.
    pub fn from_toml(text: &str) -> Result<Self> {
        let c: Config = toml::from_str(text).map_err(|e| Error::Config {
            problems: vec![e.to_string()],
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Reads and parses a file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io("read config", path))?;
        Self::from_toml(&text)
    }

    /// Reports every problem at once.
    pub fn validate(&self) -> Result<()> {
        let mut p = Vec::new();
        let positive = [
            ("default_timeout_ms", self.default_timeout_ms as usize),
            ("max_timeout_ms", self.max_timeout_ms as usize),
            ("tick_interval_ms", self.tick_interval_ms as usize),
            ("table_ack_timeout_ms", self.table_ack_timeout_ms as usize),
            ("table_heartbeat_ms", self.table_heartbeat_ms as usize),
            ("table_lease_ms", self.table_lease_ms as usize),
            ("unannounce_after_ms", self.unannounce_after_ms as usize),
            (
                "phase2.retry_initial_ms",
                self.phase2.retry_initial_ms as usize,
            ),
            ("phase2.ack_timeout_ms", self.phase2.ack_timeout_ms as usize),
            (
                "phase2.poll_interval_ms",
                self.phase2.poll_interval_ms as usize,
            ),
            ("phase2.batch", self.phase2.batch),
            ("limits.max_in_flight", self.limits.max_in_flight),
            (
                "limits.max_branches_per_global",
                self.limits.max_branches_per_global,
            ),
            (
                "limits.max_keys_per_branch",
                self.limits.max_keys_per_branch,
            ),
            ("limits.max_phase2_streams", self.limits.max_phase2_streams),
            ("limits.phase2_queue", self.limits.phase2_queue),
            ("limits.max_list", self.limits.max_list),
            ("limits.max_body_bytes", self.limits.max_body_bytes),
            ("limits.max_finished", self.limits.max_finished),
        ];
        for (name, v) in positive {
            if v == 0 {
                p.push(format!("{name} must be greater than 0"));
            }
        }
        if self.default_timeout_ms > self.max_timeout_ms {
            p.push("default_timeout_ms must not exceed max_timeout_ms".into());
        }
        if self.table_lease_ms <= self.table_heartbeat_ms.saturating_mul(2) {
            p.push("table_lease_ms must exceed twice table_heartbeat_ms".into());
        }
        if self.phase2.retry_max_ms < self.phase2.retry_initial_ms {
            p.push("phase2.retry_max_ms must be at least phase2.retry_initial_ms".into());
        }
        if let StoreConfig::Redis { url, prefix } = &self.store {
            if redis::Client::open(url.as_str()).is_err() {
                p.push(format!("store.url {url:?} is not a Redis URL"));
            }
            if prefix.is_empty() {
                p.push("store.prefix must not be empty".into());
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(Error::Config { problems: p })
        }
    }

    /// The runtime threads to start: `worker_threads`, or the store's default.
    pub fn runtime_threads(&self) -> usize {
        self.worker_threads.unwrap_or(match self.store {
            StoreConfig::Embedded { .. } => 1,
            StoreConfig::Redis { .. } => 0,
        })
    }

    /// The core's limits.
    pub fn core_limits(&self) -> Limits {
        Limits {
            max_branches: self.limits.max_branches_per_global,
            max_keys_per_branch: self.limits.max_keys_per_branch,
            max_timeout_ms: self.max_timeout_ms,
            max_finished: self.limits.max_finished,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_file_parses_to_a_redis_store() {
        let c = Config::from_toml(include_str!("../../compose/lockserver.toml")).unwrap();
        assert_eq!(
            c.store,
            StoreConfig::Redis {
                url: "redis://redis:6379".into(),
                prefix: "tandem".into()
            }
        );
        assert_eq!(c.grpc_listen.port(), 8091);
    }

    #[test]
    fn example_file_parses_and_empty_means_defaults() {
        let example = include_str!("../lockserver.example.toml");
        let c = Config::from_toml(example).unwrap();
        assert_eq!(c, Config::default(), "the example shows the defaults");
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        let redis = Config::from_toml("[store]\nkind = \"redis\"\n").unwrap();
        assert_eq!(
            redis.store,
            StoreConfig::Redis {
                url: "redis://127.0.0.1:6379".into(),
                prefix: "tandem".into()
            }
        );
        let bad = Config::from_toml("[store]\nkind = \"redis\"\nurl = \"nope\"\nprefix = \"\"\n")
            .unwrap_err();
        assert!(matches!(bad, Error::Config { problems } if problems.len() == 2));
    }

    #[test]
    fn unknown_fields_and_every_problem_are_reported() {
        assert!(Config::from_toml("grpc_lsiten = \"x\"").is_err());
        let e = Config::from_toml("tick_interval_ms = 0\n[phase2]\nbatch = 0\n").unwrap_err();
        let Error::Config { problems } = e else {
            panic!()
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        let e =
            Config::from_toml("table_heartbeat_ms = 1500\nunannounce_after_ms = 0\n").unwrap_err();
        let Error::Config { problems } = e else {
            panic!()
        };
        assert_eq!(
            problems.len(),
            2,
            "lease too short, zero delay: {problems:?}"
        );
    }
}
