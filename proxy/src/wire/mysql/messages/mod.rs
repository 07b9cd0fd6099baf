//! The messages tandem reads or writes, one file per family.
//!
//! - `handshake`: the greeting, SSLRequest, HandshakeResponse41, AuthSwitchRequest,
//!   COM_CHANGE_USER.
//! - `response`: OK, ERR, EOF, result-set terminators, the prepare-OK.
//! - `command`: KILL statements and COM_PROCESS_KILL.
//! - `statement`: tandem's own prepared statements, binary rows, the whole OK packet.

pub mod command;
pub mod handshake;
pub mod response;
pub mod statement;
