//! tandem-lockserver: the transaction coordinator (Seata's TC).
//!
//! Module map:
//! - `core`    — pure state machine: transactions, branches, lock table, injected time
//! - `store`   — durable state: the `Store` contract, the embedded log and the Redis store
//! - `api`     — thin gRPC (proxies) and HTTP/JSON (applications, operators) adapters
//! - `server`  — the async shell: `run(grpc, http, config, shutdown)`, timers, phase-2 dispatch
//! - `client`  — what proxies link: `LockClient` and the phase-2 worker
//! - `config`  — the TOML `Config`
//! - `error`   — the one `Error` enum and its classifiers
#![forbid(unsafe_code)]

pub mod core;
pub mod error;
pub mod store;

pub use error::{Error, Result};
