//! The MySQL/MariaDB client/server protocol: framing and the few messages tandem reads.
//!
//! Owns packet framing (`packet`), the named command and header bytes (`codes`), the
//! error codes tandem itself sends (`errcode`) and the decoders of the messages tandem
//! must read (`messages`). Never does socket I/O and never holds session state.
//! Reference: the MySQL source's "Client/Server Protocol" pages, and MariaDB's
//! "Client/Server Protocol" knowledge base for its extended capabilities.

pub mod codes;
pub mod errcode;
pub mod messages;
pub mod packet;
mod reader;

pub use packet::{Header, PacketError};
pub use reader::{Reader, Truncated};
