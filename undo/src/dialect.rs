//! What differs between SQL dialects, as capability methods rather than `if mysql`.
//!
//! Every method with a default describes PostgreSQL's behaviour, so adding a capability
//! never changes what PostgreSQL gets. Invariant: a value read through [`Dialect::capture`]
//! and written back through [`Dialect::restore`] with [`Dialect::param_type`] is the value
//! that was there.

use crate::analyze::TableRef;
use crate::mysql::types;

/// Which grammar parses a dialect's statements (undo's own name for it, so that no
/// sqlparser type leaves `analyze`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grammar {
    /// PostgreSQL's.
    PostgreSql,
    /// MySQL's and MariaDB's.
    MySql,
}

/// A SQL dialect as undo needs it.
pub trait Dialect: Send + Sync {
    /// The name, for messages.
    fn name(&self) -> &'static str;
    /// An identifier, quoted.
    fn quote_ident(&self, ident: &str) -> String;
    /// The placeholder of the `n`th (1-based) parameter.
    fn placeholder(&self, n: usize) -> String;
    /// Whether UPDATE/DELETE/INSERT take a RETURNING clause.
    fn supports_returning(&self) -> bool;
    /// How INSERT forces values into identity columns (empty if plain INSERT can).
    fn insert_override(&self) -> &'static str;
    /// An expression a write's RETURNING can carry that gives the whole row, every
    /// column in its binary send format, in catalog order (`whole_row`: the table's
    /// name or alias in the statement); None where the dialect has none.
    fn row_image(&self, whole_row: &str) -> Option<String> {
        let _ = whole_row;
        None
    }
    /// `expr` as a `text` value holding what its type's output function prints (what a
    /// text-format result carries). A column tandem appends to what a write returns
    /// is wrapped so: text reads the same in either result format, so the client may
    /// ask for its own columns in binary.
    fn as_output_text(&self, expr: &str) -> String {
        format!("pg_catalog.format('%s', {expr})")
    }
    /// A table name, schema-qualified when it was.
    fn qualified(&self, table: &TableRef) -> String {
        match &table.schema {
            Some(schema) => format!(
                "{}.{}",
                self.quote_ident(schema),
                self.quote_ident(&table.name)
            ),
            None => self.quote_ident(&table.name),
        }
    }
    /// The grammar that parses its statements.
    fn grammar(&self) -> Grammar {
        Grammar::PostgreSql
    }
    /// Built-in functions that return another value at each call, as
    /// [`crate::called_functions`] names them: a predicate that calls one chooses other
    /// rows when evaluated again. Functions whose value only grows (`clock_timestamp()`,
    /// `NOW()`) choose more rows the second time, which the proxy's check of the rows a
    /// write returns or counts catches.
    fn volatile_functions(&self) -> &'static [&'static str] {
        &[
            "random",
            "random_normal",
            "nextval",
            "setval",
            "gen_random_uuid",
            "gen_random_bytes",
            "gen_salt",
            "uuidv4",
            "uuidv7",
            "uuid_generate_v1",
            "uuid_generate_v1mc",
            "uuid_generate_v4",
            // TABLESAMPLE's methods (`TABLESAMPLE BERNOULLI (50)`) sample anew each time.
            "bernoulli",
            "system",
            "system_rows",
            "system_time",
        ]
    }
    /// Whether placeholders are anonymous and bound by position (MySQL's `?`): then the
    /// SQL undo builds from a statement's fragments says which of the statement's
    /// parameters it binds (see [`crate::Capture`]).
    fn positional_placeholders(&self) -> bool {
        false
    }
    /// How a SELECT list reads `column` (already quoted, maybe qualified) of type
    /// `type_code` so that its value comes back exactly whatever the session's settings.
    fn capture(&self, column: &str, type_code: u32) -> String {
        let _ = type_code;
        column.to_owned()
    }
    /// How many times [`Dialect::restore`] reads the value it writes back into a column
    /// of type `type_code`: each read is a placeholder bound to it.
    fn restore_binds(&self, type_code: u32) -> usize {
        let _ = type_code;
        1
    }
    /// How a value read through [`Dialect::capture`] and bound at `placeholders` (as
    /// many as [`Dialect::restore_binds`] says) is written back into a column of type
    /// `type_code`.
    fn restore(&self, placeholders: &[String], type_code: u32) -> String {
        let _ = type_code;
        placeholders.join(", ")
    }
    /// The parameter type that binds a captured value of a column of type `type_code`.
    fn param_type(&self, type_code: u32) -> u32 {
        type_code
    }
    /// The clause that locks a before image's rows (`qualifier`: how the statement names
    /// the written table).
    fn lock_rows(&self, qualifier: &str) -> String {
        self.lock_read_rows(qualifier, false, false)
    }
    /// The clause that locks a locking read's rows as the read itself does: shared
    /// (FOR SHARE) or not, failing at once on a row locked elsewhere (NOWAIT) or not.
    fn lock_read_rows(&self, qualifier: &str, shared: bool, nowait: bool) -> String {
        let strength = if shared { "SHARE" } else { "UPDATE" };
        let nowait = if nowait { " NOWAIT" } else { "" };
        format!("FOR {strength} OF {qualifier}{nowait}")
    }
    /// A NULL-safe equality the replay check adds for every column, so that the server
    /// itself passes over a row that changed since; None where only the proxy compares
    /// the row the check returns.
    fn null_safe_equal(&self, left: &str, right: &str) -> Option<String> {
        let _ = (left, right);
        None
    }
    /// The LIMIT clause that lets a SELECT of tandem's, run on a client's session,
    /// return every row it matches, where the session can cap a SELECT that has none
    /// (MySQL's sql_select_limit); it goes before the locking clause.
    fn every_row(&self) -> Option<&'static str> {
        None
    }
    /// Whether the UPDATE that restores a row assigns a column of type `type_code` the
    /// branch did not change: one that may change unassigned when others do (MySQL's
    /// ON UPDATE CURRENT_TIMESTAMP, on TIMESTAMP and DATETIME columns) must be assigned
    /// to keep its before value. No other is: a value the server would no longer take
    /// (an ENUM's '' error value under a strict sql_mode, a row a CHECK added since
    /// refuses) must not stop the restore of the columns the branch did change.
    fn restores_unchanged(&self, type_code: u32) -> bool {
        let _ = type_code;
        false
    }
}

/// PostgreSQL.
#[derive(Clone, Copy, Debug, Default)]
pub struct Postgres;

impl Dialect for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn quote_ident(&self, ident: &str) -> String {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }

    fn placeholder(&self, n: usize) -> String {
        format!("${n}")
    }

    fn supports_returning(&self) -> bool {
        true
    }

    fn insert_override(&self) -> &'static str {
        "OVERRIDING SYSTEM VALUE"
    }

    fn row_image(&self, whole_row: &str) -> Option<String> {
        // record_send skips dropped columns, as the catalog's column list does.
        Some(format!("record_send({whole_row}.*)"))
    }
}

/// MySQL 8 and MariaDB 10.5+.
///
/// Type codes ([`crate::Column::type_oid`]) are those of [`crate::mysql::types`].
/// `supports_returning` is false: MariaDB 10.5+ has RETURNING for INSERT, REPLACE and
/// DELETE only, and MySQL none, so UPDATE's after images are read by key and the
/// dialect cannot promise RETURNING for every write.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mysql;

impl Dialect for Mysql {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn as_output_text(&self, expr: &str) -> String {
        // Nothing is appended to a write's results here: see `supports_returning`.
        expr.to_owned()
    }

    fn quote_ident(&self, ident: &str) -> String {
        format!("`{}`", ident.replace('`', "``"))
    }

    fn placeholder(&self, _n: usize) -> String {
        "?".to_owned()
    }

    fn supports_returning(&self) -> bool {
        false
    }

    fn insert_override(&self) -> &'static str {
        // An AUTO_INCREMENT column takes an explicit value as it is, as long as the
        // session's sql_mode has NO_AUTO_VALUE_ON_ZERO (for a 0): see ARCHITECTURE.md.
        ""
    }

    fn grammar(&self) -> Grammar {
        Grammar::MySql
    }

    fn positional_placeholders(&self) -> bool {
        true
    }
    fn volatile_functions(&self) -> &'static [&'static str] {
        // MariaDB's sequences move on at each evaluation too.
        &[
            "rand",
            "uuid",
            "uuid_short",
            "random_bytes",
            "sys_guid",
            "nextval",
            "setval",
            // tandem's own reading of the rows runs between, and changes them.
            "row_count",
            "found_rows",
        ]
    }

    fn capture(&self, column: &str, type_code: u32) -> String {
        types::capture(column, type_code)
    }

    fn restore_binds(&self, type_code: u32) -> usize {
        types::restore_binds(type_code)
    }

    fn restore(&self, placeholders: &[String], type_code: u32) -> String {
        types::restore(placeholders, type_code)
    }

    fn param_type(&self, type_code: u32) -> u32 {
        types::param_type(type_code)
    }

    fn lock_read_rows(&self, _qualifier: &str, shared: bool, nowait: bool) -> String {
        // MariaDB has no FOR UPDATE OF (the other tables of a multi-table write are
        // locked too, as the write itself would read them under lock), nor FOR SHARE.
        let clause = if shared {
            "LOCK IN SHARE MODE"
        } else {
            "FOR UPDATE"
        };
        let nowait = if nowait { " NOWAIT" } else { "" };
        format!("{clause}{nowait}")
    }

    fn null_safe_equal(&self, left: &str, right: &str) -> Option<String> {
        Some(format!("{left} <=> {right}"))
    }

    fn restores_unchanged(&self, type_code: u32) -> bool {
        matches!(
            type_code & 0xff,
            crate::mysql::types::TIMESTAMP | crate::mysql::types::DATETIME
        )
    }

    fn every_row(&self) -> Option<&'static str> {
        // The largest LIMIT there is: MySQL's own advice for "all rows".
        Some("LIMIT 18446744073709551615")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_quoting() {
        let d = Postgres;
        assert_eq!(d.quote_ident("a\"b"), "\"a\"\"b\"");
        let t = TableRef {
            schema: Some("s".into()),
            name: "T".into(),
        };
        assert_eq!(d.qualified(&t), "\"s\".\"T\"");
        assert_eq!(d.placeholder(3), "$3");
    }

    #[test]
    fn mysql_quoting_doubles_backticks() {
        let d = Mysql;
        assert_eq!(d.quote_ident("a`b"), "`a``b`");
        let t = TableRef {
            schema: Some("shop".into()),
            name: "Order Lines".into(),
        };
        assert_eq!(d.qualified(&t), "`shop`.`Order Lines`");
        assert_eq!(d.placeholder(3), "?");
        assert!(!d.supports_returning());
        assert_eq!(d.insert_override(), "");
        assert_eq!(d.row_image("t"), None);
        assert_eq!(d.lock_rows("`a`"), "FOR UPDATE");
        assert_eq!(d.null_safe_equal("`v`", "?").as_deref(), Some("`v` <=> ?"));
    }
}
