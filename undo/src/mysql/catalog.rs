//! The catalog queries MySQL needs for a table, and the [`MysqlTable`] built from their
//! results.
//!
//! Owns the SQL (information_schema only, the same on MySQL 8 and MariaDB 10.5+) and
//! the reading of its rows; never runs a query: the proxy runs them over whatever driver
//! it has and hands the rows over as text. Invariant: a table that tandem cannot
//! capture exactly still builds (locking reads need its key), with the reason kept and
//! given by [`MysqlTable::check_capturable`] for every write.

use super::types;
use crate::analyze::TableRef;
use crate::error::Error;
use crate::image::{Cascade, Collation, Column, TableMeta};

/// Every query takes two parameters, in this order: the schema (NULL: the connection's
/// current database) and the table name.
macro_rules! this_table {
    ($schema:literal, $table:literal) => {
        concat!($schema, " = COALESCE(?, DATABASE()) AND ", $table, " = ?")
    };
}

/// The table itself: `TABLE_SCHEMA, TABLE_NAME, ENGINE, TABLE_TYPE`; no row if there is
/// no such table (or it is temporary).
pub const TABLE: &str = concat!(
    "SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE, TABLE_TYPE FROM information_schema.TABLES WHERE ",
    this_table!("TABLE_SCHEMA", "TABLE_NAME")
);

/// Its columns in ordinal order: `COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, EXTRA,
/// CHARACTER_SET_NAME, COLLATION_NAME`. EXTRA tells the generated columns (`VIRTUAL
/// GENERATED`, `STORED GENERATED`) and the AUTO_INCREMENT one (`auto_increment`); the
/// last two are NULL but for strings of a character set.
pub const COLUMNS: &str = concat!(
    "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, EXTRA, CHARACTER_SET_NAME, COLLATION_NAME \
     FROM information_schema.COLUMNS WHERE ",
    this_table!("TABLE_SCHEMA", "TABLE_NAME"),
    " ORDER BY ORDINAL_POSITION"
);

/// Its primary key and unique keys, each in key order, the primary key first:
/// `INDEX_NAME, COLUMN_NAME, SUB_PART`. COLUMN_NAME is NULL for a functional key part,
/// SUB_PART set for a prefix key part.
pub const UNIQUE_KEYS: &str = concat!(
    "SELECT INDEX_NAME, COLUMN_NAME, SUB_PART FROM information_schema.STATISTICS WHERE ",
    this_table!("TABLE_SCHEMA", "TABLE_NAME"),
    " AND NON_UNIQUE = 0 ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX"
);

/// How many triggers the table has: one row, one count.
pub const TRIGGERS: &str = concat!(
    "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE ",
    this_table!("EVENT_OBJECT_SCHEMA", "EVENT_OBJECT_TABLE")
);

/// The foreign keys elsewhere that cascade, or set NULL or a default, when this table's
/// rows change, one row each: `ON_DELETE, ON_UPDATE` (1 or 0), the referenced columns
/// (lower case) and the names of the key's table and of every table foreign-key
/// actions reach from there, each list separated by U+0001 (which no name holds in
/// practice, and which needs no escape whatever the session's sql_mode).
pub const CASCADES: &str = concat!(
    "WITH RECURSIVE acting AS (SELECT CONSTRAINT_SCHEMA AS fk_schema, CONSTRAINT_NAME AS fk_name, \
         TABLE_NAME AS child, UNIQUE_CONSTRAINT_SCHEMA AS parent_schema, \
         REFERENCED_TABLE_NAME AS parent, \
         DELETE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT') AS on_delete, \
         UPDATE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT') AS on_update \
       FROM information_schema.REFERENTIAL_CONSTRAINTS \
       WHERE DELETE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT') \
         OR UPDATE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT')), \
     here AS (SELECT * FROM acting WHERE ",
    this_table!("parent_schema", "parent"),
    "), \
     reach (fk_schema, fk_name, child_schema, child) AS ( \
       SELECT fk_schema, fk_name, fk_schema, child FROM here \
       UNION SELECT r.fk_schema, r.fk_name, a.fk_schema, a.child FROM reach r \
         JOIN acting a ON a.parent_schema = r.child_schema AND a.parent = r.child) \
     SELECT h.on_delete, h.on_update, \
       (SELECT GROUP_CONCAT(LOWER(k.REFERENCED_COLUMN_NAME) SEPARATOR '\u{1}') \
         FROM information_schema.KEY_COLUMN_USAGE k WHERE k.CONSTRAINT_SCHEMA = h.fk_schema \
         AND k.CONSTRAINT_NAME = h.fk_name AND k.TABLE_NAME = h.child \
         AND k.REFERENCED_TABLE_NAME IS NOT NULL), \
       (SELECT GROUP_CONCAT(DISTINCT r.child SEPARATOR '\u{1}') FROM reach r \
         WHERE r.fk_schema = h.fk_schema AND r.fk_name = h.fk_name) \
     FROM here h ORDER BY h.fk_schema, h.fk_name"
);

/// One result row, each value as text (None: NULL), as any driver returns it.
pub type CatalogRow = Vec<Option<String>>;

/// What the catalog queries returned for one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    /// [`TABLE`]'s rows.
    pub table: Vec<CatalogRow>,
    /// [`COLUMNS`]' rows.
    pub columns: Vec<CatalogRow>,
    /// [`UNIQUE_KEYS`]' rows.
    pub unique_keys: Vec<CatalogRow>,
    /// [`TRIGGERS`]' rows.
    pub triggers: Vec<CatalogRow>,
    /// [`CASCADES`]' rows.
    pub cascades: Vec<CatalogRow>,
}

/// A MySQL table as AT mode needs it: the dialect-neutral [`TableMeta`] (column names
/// in lower case, as MySQL compares them; type codes of [`types`]) and what only MySQL
/// writes need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MysqlTable {
    /// Columns, primary key, triggers, cascades.
    pub meta: TableMeta,
    /// Position of the AUTO_INCREMENT column.
    pub auto_increment: Option<usize>,
    /// Positions of each unique key's columns other than the primary key's, in key
    /// order: an upsert or REPLACE collides on any of them.
    pub unique_keys: Vec<Vec<usize>>,
    /// Why no write to the table can be captured exactly, if one cannot.
    pub refusal: Option<String>,
}

impl MysqlTable {
    /// Reads the catalog's answers for `table`. Errors only when rows do not have the
    /// shape their query gives, or the table does not exist.
    pub fn from_catalog(table: &TableRef, catalog: &Catalog) -> Result<MysqlTable, Error> {
        let [table_row] = catalog.table.as_slice() else {
            return Err(Error::Catalog {
                what: format!("{} rows for table {}", catalog.table.len(), table.name),
            });
        };
        let resolved = TableRef {
            schema: Some(text(table_row, 0, "TABLE_SCHEMA")?.to_owned()),
            name: text(table_row, 1, "TABLE_NAME")?.to_owned(),
        };
        let mut refusals = Vec::new();
        let engine = field(table_row, 2, "ENGINE")?.unwrap_or_default();
        if !engine.eq_ignore_ascii_case("InnoDB") {
            refusals.push(format!("its engine is {engine}, not InnoDB"));
        }
        let kind = field(table_row, 3, "TABLE_TYPE")?.unwrap_or_default();
        if kind != "BASE TABLE" {
            refusals.push(format!("it is a {kind}"));
        }
        let mut columns = Vec::new();
        let mut auto_increment = None;
        for (i, row) in catalog.columns.iter().enumerate() {
            let name = crate::analyze::fold_mysql_column(text(row, 0, "COLUMN_NAME")?);
            let data_type = text(row, 1, "DATA_TYPE")?;
            let extra = field(row, 3, "EXTRA")?
                .unwrap_or_default()
                .to_ascii_lowercase();
            let type_oid = types::type_code(data_type, text(row, 2, "COLUMN_TYPE")?)
                .unwrap_or_else(|_| {
                    refusals.push(format!("column {name} has type {data_type}"));
                    types::BLOB
                });
            if extra.contains("auto_increment") {
                auto_increment = Some(i);
            }
            let collation = match (
                field(row, 4, "CHARACTER_SET_NAME")?,
                field(row, 5, "COLLATION_NAME")?,
            ) {
                (Some(charset), Some(collation)) if types::compares_by_collation(type_oid) => {
                    if !is_name(charset) || !is_name(collation) {
                        return Err(Error::Catalog {
                            what: format!("column {name} has collation {charset} {collation}"),
                        });
                    }
                    Some(Collation {
                        charset: charset.to_owned(),
                        name: collation.to_owned(),
                    })
                }
                _ => None,
            };
            columns.push(Column {
                name,
                type_oid,
                sql_type: String::new(),
                generated: extra.contains("virtual generated")
                    || extra.contains("stored generated"),
                identity_always: false,
                set_on_update: extra.contains("on update"),
                collation,
            });
        }
        let position = |name: &str| {
            let name = crate::analyze::fold_mysql_column(name);
            columns.iter().position(|c| c.name == name)
        };
        let mut keys: Vec<(String, Vec<usize>)> = Vec::new();
        for row in &catalog.unique_keys {
            let index = text(row, 0, "INDEX_NAME")?;
            let column = field(row, 1, "COLUMN_NAME")?;
            if field(row, 2, "SUB_PART")?.is_some() || column.is_none() {
                // A collision on a prefix or an expression is not equality of the
                // columns a before image can select by.
                refusals.push(format!(
                    "its unique key {index} has a prefix or expression part"
                ));
                continue;
            }
            let at = column.and_then(position).ok_or_else(|| Error::Catalog {
                what: format!("unique key {index} names a column the table does not have"),
            })?;
            match keys.last_mut() {
                Some((name, parts)) if name == index => parts.push(at),
                _ => keys.push((index.to_owned(), vec![at])),
            }
        }
        let pk = match keys.first() {
            Some((name, _)) if name == "PRIMARY" => keys.remove(0).1,
            _ => Vec::new(),
        };
        let cascades = catalog
            .cascades
            .iter()
            .map(|row| {
                let list = |at, name| -> Result<Vec<String>, Error> {
                    Ok(field(row, at, name)?
                        .map(|l| l.split('\u{1}').map(str::to_owned).collect())
                        .unwrap_or_default())
                };
                Ok(Cascade {
                    on_delete: text(row, 0, "ON_DELETE")? == "1",
                    on_update: text(row, 1, "ON_UPDATE")? == "1",
                    columns: list(2, "COLUMNS")?,
                    reaches: list(3, "REACHES")?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(MysqlTable {
            meta: TableMeta {
                table: resolved,
                columns,
                pk,
                has_triggers: count(&catalog.triggers, "TRIGGERS")? > 0,
                has_cascades: !cascades.is_empty(),
                cascades,
                oid: 0,
                // MySQL's partitions are no tables of their own, and it has no
                // inheritance.
                lock_table: None,
                inheritance: false,
                row_security: false,
                inexact_key: false,
                // Collations are weighed (WEIGHT_STRING) before keys are locked.
                loose_key: false,
                key_checked_at_commit: false,
                partitioned: false,
                root_without_key: false,
                // Images are the text protocol's, and types without one refused above.
                imageless_column: None,
                // MySQL validates every constraint it adds.
                unvalidated_constraint: None,
            },
            auto_increment,
            unique_keys: keys.into_iter().map(|(_, parts)| parts).collect(),
            refusal: (!refusals.is_empty()).then(|| refusals.join("; ")),
        })
    }
}

/// A character set's or collation's name as MySQL spells them, safe to write into SQL.
fn is_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn field<'a>(row: &'a CatalogRow, at: usize, name: &str) -> Result<Option<&'a str>, Error> {
    row.get(at)
        .map(Option::as_deref)
        .ok_or_else(|| Error::Catalog {
            what: format!("a row without {name}"),
        })
}

fn text<'a>(row: &'a CatalogRow, at: usize, name: &str) -> Result<&'a str, Error> {
    field(row, at, name)?.ok_or_else(|| Error::Catalog {
        what: format!("{name} is NULL"),
    })
}

fn count(rows: &[CatalogRow], query: &str) -> Result<u64, Error> {
    let [row] = rows else {
        return Err(Error::Catalog {
            what: format!("{query} gave {} rows, not one", rows.len()),
        });
    };
    text(row, 0, query)?.parse().map_err(|_| Error::Catalog {
        what: format!("{query} gave no count"),
    })
}
