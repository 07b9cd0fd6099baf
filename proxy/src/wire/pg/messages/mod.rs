//! The messages tandem reads or writes itself, one file per message family. Every other
//! message is relayed as raw bytes without being decoded.

pub mod extended;
pub mod response;
pub mod simple;
pub mod startup;
pub mod write;
