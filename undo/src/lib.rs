//! tandem-undo: what AT mode needs to know about a statement and its rows, without any
//! I/O: statement analysis, table metadata, before/after images, the undo record format,
//! and the replay plan with its dirty-write checks, per SQL dialect.
//!
//! Module map:
//! - `analyze`: the only module that imports sqlparser; turns a statement into undo's
//!   own types ([`Analysis`]) or refuses it.
//! - `dialect`: what differs between PostgreSQL and MySQL (quoting, placeholders,
//!   how each type is captured and restored).
//! - `image`: table metadata, row images, and the SQL that captures them.
//! - `record`: the undo record stored in `undo_log.rollback_info`.
//! - `replay`: the statements that undo a branch, each behind its dirty-write check.
//! - `mysql`: MySQL's type codes, catalog queries and the capture plan of its writes.
//! - `error`: [`Error`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod analyze;
pub mod dialect;
pub mod error;
pub mod image;
pub mod mysql;
pub mod record;
pub mod replay;

pub use analyze::{
    Analysis, AnalysisCache, EVERY_TABLE, InsertRows, InsertValue, LockedRead, OnDuplicate,
    PreparedChange, SavepointOp, TableRef, Upsert, Write, WriteKind, analyze, called_functions,
    contains_ignore_case, count_mysql_statements, has_empty_mysql_statement,
    has_executable_comment, operator_swallows_comment, prepared_changes, resets_session,
    runs_stored_code, split_mysql_statements, split_statements, statement_body,
    statement_time_limit, tables_changed, tables_changed_resolving, tables_named,
    try_called_functions, try_words, with_row_count,
};
pub use dialect::{Dialect, Grammar, Mysql, Postgres};
pub use error::Error;
pub use image::{
    Capture, Cascade, Collation, Column, Row, TableMeta, Value, row_from_returned_image,
};
pub use record::{RowImages, TableUndo, UndoRecord};
