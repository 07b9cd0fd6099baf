//! tandem-proxy: the wire proxies, their sessions, and the `tandem` command line.
//!
//! Module map:
//! - `config`: the TOML configuration and its validation.
//! - `dev`: hosting an embedded lockserver (`tandem dev`, `tandem lockserver`).
//! - `error`: `proxy::Error`, its classifiers and its SQLSTATE mapping.
//! - `server`: binding, accepting within limits, the admin endpoint (`/metrics`, `/ready`).
//! - `shutdown`: the shutdown order and the signals sessions watch.
//! - `session`: one state machine per protocol (`session::pg`, `session::mysql`).
//! - `wire`: codecs, free of I/O and session state (`wire::pg`, `wire::mysql`).
//! - `upstream`: backend connections, cancel delivery, side pools.
//! - `control`: the grammar of `SELECT tandem_begin()` and the other control statements.
//! - `at`: AT mode's protocol-independent half: branches, metadata, phase 2.
//! - `binding`: a session's binding to a global transaction; carries out control statements.
//! - `cancel`: the BackendKeyData tandem hands out, and what each key cancels.
//! - `tls`: TLS towards clients.
//! - `metrics`: Prometheus instruments.
//! - `migrate`: `tandem migrate`, the undo_log DDL per dialect.
#![forbid(unsafe_code)]

pub mod at;
pub mod binding;
pub mod cancel;
pub mod config;
pub mod control;
pub mod dev;
pub mod error;
pub mod metrics;
pub mod migrate;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod tls;
pub mod upstream;
pub mod wire;
pub mod xa;

pub use config::Config;
pub use error::{Error, Result};
