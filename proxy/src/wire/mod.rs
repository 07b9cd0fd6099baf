//! Wire codecs, one submodule per protocol.
//!
//! Owns framing and the decoding/encoding of the messages tandem must read or write.
//! Never does socket I/O and never holds session state: the session modules feed it
//! bytes and act on what it returns.

pub mod mysql;
pub mod pg;
