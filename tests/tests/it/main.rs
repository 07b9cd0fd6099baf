//! tandem's integration suite: one module per user-visible capability, all compiled
//! into one binary. Server addresses come from the environment (see `tandem_tests::env`).

mod dev;
mod lockserver;
mod mysql;
mod pg;
