//! AT mode: what a session captures around its writes, the metadata it needs, and the
//! phase-2 work (cleanup and undo replay) a proxy does for the lockserver.
//!
//! Owns the protocol-independent half of AT. Never reads or writes a client socket.

pub mod branch;
pub mod cleanup;
pub mod meta;
pub mod mysql;
pub mod phase2;
pub mod raw;

/// The resource id of `database` behind `upstream` (DESIGN.md, "Resources").
pub fn resource_id(upstream: &str, database: &str) -> String {
    format!("postgres://{upstream}/{database}")
}
