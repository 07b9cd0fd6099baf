//! Sessions: one state machine per protocol. A session reads from its client and its
//! backend, hands bytes to `wire/` to find and decode messages, and decides what to relay.

pub mod mysql;
pub mod outside;
pub mod pg;
