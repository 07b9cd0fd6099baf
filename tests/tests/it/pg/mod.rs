//! The PostgreSQL relay, through the real proxy over TCP to the real PostgreSQL.

mod admin;
mod at_constraints;
mod at_locks;
mod at_mode;
pub(crate) use at_mode::{
    dump as at_mode_dump, one as at_mode_one, prepare as at_mode_prepare,
    undo_rows as at_mode_undo_rows,
};
mod at_protocols;
mod at_scripts;
mod at_types;
mod auth;
mod bad_input;
mod bank_transfer;
pub(crate) use bank_transfer::balances as bank_balances;
mod cancel;
mod control;
mod copy;
mod drivers;
mod limits;
mod migrate;
mod notify;
mod outside_writes;
mod pgbench_tool;
mod pgjdbc;
mod relay_passthrough;
mod shutdown;
mod tls;
mod xa;
