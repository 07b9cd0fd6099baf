//! tandem-tests: the shared harness for the integration suite in `tests/it/`.
//!
//! - `env`: where the real servers are (environment variables).
//! - `harness`: an in-process proxy, a fresh database per test, polling with deadlines.
//! - `raw_pg`: a byte-level PostgreSQL client for malformed-input tests.
//! - `lockserver`: the lockserver harness.
//! - `mysql`: the MySQL side of the harness (front end, test databases, raw packets).
//! - `relay`: a TCP relay that loses a server's answers on demand.
#![forbid(unsafe_code)]

pub mod env;
pub mod harness;
pub mod lockserver;
pub mod mysql;
pub mod process;
pub mod raw_pg;
pub mod relay;
