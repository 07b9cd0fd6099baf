//! The MySQL relay, through the real proxy over TCP to the real MariaDB/MySQL.

mod at_mode;
mod auth;
mod bad_input;
mod bank_transfer;
mod batches;
mod drivers;
mod kill;
mod outside_writes;
mod relay;
mod reset;
mod shutdown;
mod tls;
mod xa;
