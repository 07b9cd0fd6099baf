//! tandem-undo: statement analysis, table metadata, before/after images, the undo record
//! format and undo replay with the dirty-write check, per SQL dialect.
//!
//! Module map (filled as AT mode lands, issue 4):
//! - `analyze`: the only module that imports sqlparser; turns statements into undo's own types.
//! - `image`: before/after row images.
//! - `replay`: undo replay with the dirty-write check.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
