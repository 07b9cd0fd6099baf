//! tandem-lockserver: the transaction coordinator (Seata's TC).
//!
//! Module map:
//! - `core`    — pure state machine: transactions, branches, lock table, injected time
//! - `store`   — durable state: the `Store` contract, the embedded log and the Redis store
//! - `api`     — thin gRPC (proxies) and HTTP/JSON (applications, operators) adapters
//! - `server`  — the async shell: `run(grpc, http, config, shutdown)`, timers, phase-2 dispatch
//! - `coordinator` — the operations both APIs offer: lock waits, rollback waits, timers
//! - `phase2`  — phase-2 delivery to connected proxies, retry and backoff
//! - `tables`  — which tables may hold global locks, announced to proxies with acks
//! - `client`  — what proxies link: `LockClient`, the phase-2 worker, `TableLockView`
//! - `metrics` — Prometheus instruments
//! - `proto`   — generated gRPC code
//! - `config`  — the TOML `Config`
//! - `error`   — the one `Error` enum and its classifiers
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod config;
pub mod coordinator;
pub mod core;
pub mod error;
pub mod metrics;
pub mod phase2;
pub mod proto;
pub mod server;
pub mod store;
pub mod tables;

pub use config::Config;
pub use error::{Error, Result};
