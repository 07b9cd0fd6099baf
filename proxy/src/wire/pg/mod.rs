//! PostgreSQL frontend/backend protocol 3.0: framing, message codes, SQLSTATEs and the
//! few messages tandem reads or writes itself.

pub mod codes;
pub mod frame;
pub mod messages;
pub mod reader;
pub mod sqlstate;

pub use frame::{Frame, FrameError, StartupFrame};
