//! The replay plan: the statements that undo one branch, newest row first, each behind
//! the check that the row still is what the branch left.
//!
//! Never runs SQL: the proxy executes the plan in one local transaction on a side
//! connection. Invariant: a step's `apply` may run only when its `check` returned
//! exactly `expect` (compared as binary values); anything else is a dirty write, and the
//! whole replay must stop without writing. Where the dialect has a NULL-safe equality
//! (MySQL's `<=>`), the check also compares every column itself, so that a changed row
//! comes back as no row at all.

use crate::dialect::Dialect;
use crate::image::{Row, Value};
use crate::record::{TableUndo, UndoRecord};
use std::collections::BTreeMap;

/// One statement with its binary parameters and their types (PostgreSQL: type OIDs;
/// MySQL: COM_STMT_EXECUTE parameter types, see [`crate::mysql::types`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stmt {
    /// SQL with the dialect's placeholders.
    pub sql: String,
    /// Parameter values, binary.
    pub params: Vec<Value>,
    /// Parameter types.
    pub types: Vec<u32>,
}

/// Undoing one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Reads the row as it is now, locking it (`FOR UPDATE`).
    pub check: Stmt,
    /// What `check` must return: the branch's after image (None: no row).
    pub expect: Option<Row>,
    /// Restores the before image; None when there is nothing to change.
    pub apply: Option<Stmt>,
    /// The index in the record of the table whose row this is (`check` selects its
    /// columns, in table order, as the images hold them).
    pub table: usize,
    /// The index of the row among that table's rows.
    pub row: usize,
}

/// The steps that undo `record`, in the order to run them.
pub fn plan(d: &dyn Dialect, record: &UndoRecord) -> Vec<Step> {
    let mut steps = Vec::new();
    for (index, table) in record.tables.iter().enumerate().rev() {
        for (row_index, row) in table.rows.iter().enumerate().rev() {
            let Some(key_row) = row.after.as_ref().or(row.before.as_ref()) else {
                continue;
            };
            let apply = match (&row.before, &row.after) {
                (Some(before), Some(after)) if before == after => None,
                (Some(before), Some(after)) => Some(update(d, table, before, after)),
                (Some(before), None) => Some(insert(d, table, before)),
                (None, Some(after)) => Some(delete(d, table, after)),
                (None, None) => None,
            };
            steps.push(Step {
                check: check(d, table, key_row, row.after.as_ref()),
                expect: row.after.clone(),
                apply,
                table: index,
                row: row_index,
            });
        }
    }
    steps
}

/// One statement that restores the rows of `steps` at once: rows whose restores, run
/// one at a time, refuse one another in every order (two rows that swapped a unique
/// value, rows that refer to each other). Every row the branch left is deleted first,
/// then every before image inserted again, so no unique value is held twice on the way,
/// and the foreign keys, checked at the end of the statement, find them all back (a
/// referencing key with ON DELETE RESTRICT is checked at once, and still refuses).
/// PostgreSQL's data-modifying WITH: None for a dialect without RETURNING, or for steps
/// the record does not have.
pub fn restore_together(d: &dyn Dialect, record: &UndoRecord, steps: &[&Step]) -> Option<Stmt> {
    if !d.supports_returning() {
        return None;
    }
    let mut stmt = empty();
    let mut parts = Vec::new();
    let mut deleted = Vec::new();
    for step in steps {
        let t = record.tables.get(step.table)?;
        let Some(after) = &t.rows.get(step.row)?.after else {
            continue;
        };
        let predicate = key_predicate(d, t, after, &mut stmt);
        let name = format!("tandem_gone_{}", deleted.len());
        parts.push(format!(
            "{name} AS (DELETE FROM {} WHERE {predicate} RETURNING 1)",
            qualified(d, t)
        ));
        deleted.push(format!("SELECT 1 FROM {name}"));
    }
    let after_deletions = after_deletions(&mut parts, &deleted);
    let mut inserted = 0;
    for step in steps {
        let t = record.tables.get(step.table)?;
        let Some(before) = &t.rows.get(step.row)?.before else {
            continue;
        };
        let (names, values) = insert_values(d, t, before, &mut stmt);
        parts.push(format!(
            "tandem_back_{inserted} AS (INSERT INTO {} ({names}) {} SELECT {values}{after_deletions} RETURNING 1)",
            qualified(d, t),
            d.insert_override(),
        ));
        inserted += 1;
    }
    if parts.is_empty() {
        return None;
    }
    stmt.sql = format!("WITH {} SELECT 1", parts.join(", "));
    Some(stmt)
}

/// The most parameters one statement binds: a Bind message counts them in two bytes.
pub const MOST_PARAMS: usize = u16::MAX as usize;

/// [`restore_together`] for rows whose images need more parameters than one statement
/// binds ([`MOST_PARAMS`]): the keys of the rows the branch left and the before images
/// are first copied, a statement at a time, into temporary tables made like the
/// written ones (dropped at the commit, or by a rollback to before them); then one
/// statement deletes and inserts from those, as [`restore_together`] does from its
/// parameters. PostgreSQL only; None for steps the record does not have.
pub fn restore_staged(d: &dyn Dialect, record: &UndoRecord, steps: &[&Step]) -> Option<Staged> {
    if !d.supports_returning() {
        return None;
    }
    // Table by table, in the record's order: the rows each restore takes out, and those
    // it puts back.
    let mut by_table: BTreeMap<usize, (Vec<&Row>, Vec<&Row>)> = BTreeMap::new();
    for step in steps {
        let images = record.tables.get(step.table)?.rows.get(step.row)?;
        let (gone, back) = by_table.entry(step.table).or_default();
        gone.extend(images.after.as_ref());
        back.extend(images.before.as_ref());
    }
    let mut setup = Vec::new();
    let mut deletions = Vec::new();
    let mut deleted = Vec::new();
    let mut insertions = Vec::new();
    for (index, (gone, back)) in &by_table {
        let t = &record.tables[*index];
        let table = qualified(d, t);
        if !gone.is_empty() {
            let stage = format!("pg_temp.tandem_stage_gone_{index}");
            setup.extend(staging(d, t, &stage, &t.pk, gone));
            let on_key =
                t.pk.iter()
                    .map(|&i| {
                        let column = d.quote_ident(&t.columns[i]);
                        format!("tandem_row.{column} = tandem_key.{column}")
                    })
                    .collect::<Vec<_>>()
                    .join(" AND ");
            let name = format!("tandem_gone_{index}");
            deletions.push(format!(
                "{name} AS (DELETE FROM {table} AS tandem_row USING {stage} AS tandem_key WHERE {on_key} RETURNING 1)"
            ));
            deleted.push(format!("SELECT 1 FROM {name}"));
        }
        if !back.is_empty() {
            let stage = format!("pg_temp.tandem_stage_back_{index}");
            let columns: Vec<usize> = writable(t).collect();
            setup.extend(staging(d, t, &stage, &columns, back));
            insertions.push((table, stage, names(d, t, &columns)));
        }
    }
    if deletions.is_empty() && insertions.is_empty() {
        return None;
    }
    let mut parts = deletions;
    let after_deletions = after_deletions(&mut parts, &deleted);
    for (n, (table, stage, names)) in insertions.iter().enumerate() {
        parts.push(format!(
            "tandem_back_{n} AS (INSERT INTO {table} ({names}) {} SELECT {names} FROM {stage}{after_deletions} RETURNING 1)",
            d.insert_override(),
        ));
    }
    let mut together = empty();
    together.sql = format!("WITH {} SELECT 1", parts.join(", "));
    Some(Staged { setup, together })
}

/// The condition that makes each insertion of a restore's WITH wait for every deletion
/// (`deleted`: a read of each one's rows), whose reads it adds to `parts`: reading them
/// all before its first row. The parts of a WITH otherwise run in no set order.
fn after_deletions(parts: &mut Vec<String>, deleted: &[String]) -> String {
    if deleted.is_empty() {
        return String::new();
    }
    parts.push(format!("tandem_gone AS ({})", deleted.join(" UNION ALL ")));
    " WHERE (SELECT count(*) FROM tandem_gone) >= 0".to_owned()
}

/// [`restore_staged`]'s statements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged {
    /// Make the temporary tables and fill them, in this order.
    pub setup: Vec<Stmt>,
    /// Restores every row from them.
    pub together: Stmt,
}

/// The temporary table `stage`, made with `t`'s `columns` as they are declared, and
/// the statements that fill it with those columns of `rows`, as many rows to a
/// statement as [`MOST_PARAMS`] lets bind.
fn staging(
    d: &dyn Dialect,
    t: &TableUndo,
    stage: &str,
    columns: &[usize],
    rows: &[&Row],
) -> Vec<Stmt> {
    let names = names(d, t, columns);
    let mut made = empty();
    made.sql = format!(
        "CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {names} FROM {} WITH NO DATA",
        qualified(d, t)
    );
    let mut statements = vec![made];
    let per_row: usize = columns.iter().map(|&i| d.restore_binds(t.types[i])).sum();
    let per_statement = (MOST_PARAMS / per_row.max(1)).max(1);
    for chunk in rows.chunks(per_statement) {
        let mut fill = empty();
        let values: Vec<String> = chunk
            .iter()
            .map(|row| {
                let placeholders: Vec<String> = columns
                    .iter()
                    .map(|&i| fill.bind_restored(d, t, row, i))
                    .collect();
                format!("({})", placeholders.join(", "))
            })
            .collect();
        fill.sql = format!("INSERT INTO {stage} ({names}) VALUES {}", values.join(", "));
        statements.push(fill);
    }
    statements
}

/// `columns` of `t`, quoted, in a list.
fn names(d: &dyn Dialect, t: &TableUndo, columns: &[usize]) -> String {
    columns
        .iter()
        .map(|&i| d.quote_ident(&t.columns[i]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A restore of `step`'s row in two statements, for a dialect without
/// [`restore_together`]: the DELETE of the row as the branch left it, then the INSERT
/// of its before image. None unless the row was there both before and after the
/// branch (its key, never changed by a branch, is the same in both).
pub fn moved_back(d: &dyn Dialect, record: &UndoRecord, step: &Step) -> Option<(Stmt, Stmt)> {
    let t = record.tables.get(step.table)?;
    let images = t.rows.get(step.row)?;
    match (&images.before, &images.after) {
        (Some(before), Some(after)) => Some((delete(d, t, after), insert(d, t, before))),
        _ => None,
    }
}

fn qualified(d: &dyn Dialect, t: &TableUndo) -> String {
    d.qualified(&crate::TableRef {
        schema: t.schema.clone(),
        name: t.table.clone(),
    })
}

impl Stmt {
    /// Binds column `i`'s value from `row` and returns its placeholder.
    fn bind(&mut self, d: &dyn Dialect, t: &TableUndo, row: &Row, i: usize) -> String {
        self.params.push(row[i].clone());
        self.types.push(d.param_type(t.types[i]));
        d.placeholder(self.params.len())
    }

    /// Binds column `i`'s value from `row` as often as the dialect's restore reads it;
    /// returns the expression that writes it back.
    fn bind_restored(&mut self, d: &dyn Dialect, t: &TableUndo, row: &Row, i: usize) -> String {
        let placeholders: Vec<String> = (0..d.restore_binds(t.types[i]))
            .map(|_| self.bind(d, t, row, i))
            .collect();
        d.restore(&placeholders, t.types[i])
    }
}

/// `pk1 = $n AND pk2 = $n+1 …`, parameters appended to `stmt`.
fn key_predicate(d: &dyn Dialect, t: &TableUndo, row: &Row, stmt: &mut Stmt) -> String {
    t.pk.iter()
        .map(|&i| {
            let p = stmt.bind(d, t, row, i);
            format!("{} = {p}", d.quote_ident(&t.columns[i]))
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn empty() -> Stmt {
    Stmt {
        sql: String::new(),
        params: Vec::new(),
        types: Vec::new(),
    }
}

/// Column `i` as the images read it.
fn captured(d: &dyn Dialect, t: &TableUndo, i: usize) -> String {
    d.capture(&d.quote_ident(&t.columns[i]), t.types[i])
}

/// Reads the row by `key_row`'s key; where the dialect can, also requires every column
/// to equal `after` (NULL-safe), the image the branch left.
fn check(d: &dyn Dialect, t: &TableUndo, key_row: &Row, after: Option<&Row>) -> Stmt {
    let mut stmt = empty();
    let columns = (0..t.columns.len())
        .map(|i| captured(d, t, i))
        .collect::<Vec<_>>()
        .join(", ");
    let mut predicate = key_predicate(d, t, key_row, &mut stmt);
    if let Some(after) = after {
        for i in 0..t.columns.len() {
            let column = captured(d, t, i);
            let Some(equal) = d.null_safe_equal(&column, &d.placeholder(stmt.params.len() + 1))
            else {
                break;
            };
            stmt.bind(d, t, after, i);
            predicate.push_str(&format!(" AND {equal}"));
        }
    }
    stmt.sql = format!(
        "SELECT {columns} FROM {} WHERE {predicate} FOR UPDATE",
        qualified(d, t)
    );
    stmt
}

fn writable(t: &TableUndo) -> impl Iterator<Item = usize> + '_ {
    (0..t.columns.len()).filter(|&i| !t.generated[i])
}

/// Assigns the columns the branch changed (PostgreSQL's GENERATED ALWAYS AS IDENTITY
/// column may be assigned DEFAULT only, and the branch could not have changed it), and
/// those the dialect says may change unassigned; every one where none of them changed,
/// so that a row that differs elsewhere fails loudly rather than stays as it is.
fn update(d: &dyn Dialect, t: &TableUndo, before: &Row, after: &Row) -> Stmt {
    let mut stmt = empty();
    let assignable: Vec<usize> = writable(t).filter(|i| !t.pk.contains(i)).collect();
    let assigned = if assignable.iter().all(|&i| before[i] == after[i]) {
        assignable
    } else {
        assignable
            .into_iter()
            .filter(|&i| before[i] != after[i] || d.restores_unchanged(t.types[i]))
            .collect()
    };
    let sets = assigned
        .into_iter()
        .map(|i| {
            let value = stmt.bind_restored(d, t, before, i);
            format!("{} = {value}", d.quote_ident(&t.columns[i]))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let predicate = key_predicate(d, t, before, &mut stmt);
    stmt.sql = format!("UPDATE {} SET {sets} WHERE {predicate}", qualified(d, t));
    stmt
}

/// The columns an INSERT of `before` writes, and their values, bound to `stmt`.
fn insert_values(
    d: &dyn Dialect,
    t: &TableUndo,
    before: &Row,
    stmt: &mut Stmt,
) -> (String, String) {
    let mut names = Vec::new();
    let mut values = Vec::new();
    for i in writable(t) {
        names.push(d.quote_ident(&t.columns[i]));
        values.push(stmt.bind_restored(d, t, before, i));
    }
    (names.join(", "), values.join(", "))
}

fn insert(d: &dyn Dialect, t: &TableUndo, before: &Row) -> Stmt {
    let mut stmt = empty();
    let (names, values) = insert_values(d, t, before, &mut stmt);
    let columns = format!("({names})");
    let head = match d.insert_override() {
        "" => columns,
        clause => format!("{columns} {clause}"),
    };
    stmt.sql = format!("INSERT INTO {} {head} VALUES ({values})", qualified(d, t));
    stmt
}

fn delete(d: &dyn Dialect, t: &TableUndo, after: &Row) -> Stmt {
    let mut stmt = empty();
    let predicate = key_predicate(d, t, after, &mut stmt);
    stmt.sql = format!("DELETE FROM {} WHERE {predicate}", qualified(d, t));
    stmt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Postgres;
    use crate::record::{RowImages, VERSION};

    fn v(n: u8) -> Value {
        Some(vec![n])
    }

    fn record(rows: Vec<RowImages>) -> UndoRecord {
        UndoRecord {
            version: VERSION,
            tables: vec![TableUndo {
                schema: None,
                table: "t".into(),
                columns: vec!["id".into(), "v".into(), "g".into()],
                types: vec![23, 25, 23],
                generated: vec![false, false, true],
                pk: vec![0],
                rows,
            }],
        }
    }

    #[test]
    fn each_kind_of_change_is_inverted_newest_first() {
        let r = record(vec![
            RowImages {
                before: Some(vec![v(1), v(10), v(0)]),
                after: Some(vec![v(1), v(11), v(0)]),
            },
            RowImages {
                before: Some(vec![v(2), None, v(0)]),
                after: None,
            },
            RowImages {
                before: None,
                after: Some(vec![v(3), v(30), v(0)]),
            },
            RowImages {
                before: Some(vec![v(4), v(40), v(0)]),
                after: Some(vec![v(4), v(40), v(0)]),
            },
        ]);
        let steps = plan(&Postgres, &r);
        let sql: Vec<Option<&str>> = steps
            .iter()
            .map(|s| s.apply.as_ref().map(|a| a.sql.as_str()))
            .collect();
        assert_eq!(
            sql,
            vec![
                None,
                Some("DELETE FROM \"t\" WHERE \"id\" = $1"),
                Some("INSERT INTO \"t\" (\"id\", \"v\") OVERRIDING SYSTEM VALUE VALUES ($1, $2)"),
                Some("UPDATE \"t\" SET \"v\" = $1 WHERE \"id\" = $2"),
            ]
        );
        assert_eq!(steps[2].apply.as_ref().unwrap().params, vec![v(2), None]);
        assert_eq!(steps[3].apply.as_ref().unwrap().params, vec![v(10), v(1)]);
        assert_eq!(
            steps[3].check.sql,
            "SELECT \"id\", \"v\", \"g\" FROM \"t\" WHERE \"id\" = $1 FOR UPDATE"
        );
        assert_eq!(steps[3].expect, Some(vec![v(1), v(11), v(0)]));
        assert_eq!(steps[2].expect, None);
    }

    #[test]
    fn an_update_assigns_only_the_columns_the_branch_changed() {
        // `seq` stands for a GENERATED ALWAYS AS IDENTITY column, which an UPDATE may
        // only set to DEFAULT.
        let mut r = record(vec![RowImages {
            before: Some(vec![v(1), v(10), v(0), v(5)]),
            after: Some(vec![v(1), v(11), v(0), v(5)]),
        }]);
        let t = &mut r.tables[0];
        t.columns.push("seq".into());
        t.types.push(23);
        t.generated.push(false);
        let steps = plan(&Postgres, &r);
        let apply = steps[0].apply.as_ref().unwrap();
        assert_eq!(apply.sql, "UPDATE \"t\" SET \"v\" = $1 WHERE \"id\" = $2");
        assert_eq!(apply.params, vec![v(10), v(1)]);
    }

    #[test]
    fn a_restore_staged_fills_its_tables_as_many_rows_to_a_statement_as_bind() {
        // 70,000 rows that each took another's place: two writable columns a row, so
        // 32,767 rows to a filling statement.
        let rows: Vec<RowImages> = (0..70_000u32)
            .map(|n| RowImages {
                before: Some(vec![Some(n.to_be_bytes().to_vec()), v(1), v(0)]),
                after: Some(vec![Some(n.to_be_bytes().to_vec()), v(2), v(0)]),
            })
            .collect();
        let r = record(rows);
        let steps = plan(&Postgres, &r);
        let stuck: Vec<&Step> = steps.iter().collect();
        let together = restore_together(&Postgres, &r, &stuck).unwrap();
        assert!(together.params.len() > MOST_PARAMS);
        let staged = restore_staged(&Postgres, &r, &stuck).unwrap();
        let sql: Vec<&str> = staged.setup.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(sql.len(), 3 + 4);
        assert_eq!(
            sql[0],
            "CREATE TEMPORARY TABLE pg_temp.tandem_stage_gone_0 ON COMMIT DROP AS SELECT \"id\" FROM \"t\" WITH NO DATA"
        );
        assert_eq!(
            sql[3],
            "CREATE TEMPORARY TABLE pg_temp.tandem_stage_back_0 ON COMMIT DROP AS SELECT \"id\", \"v\" FROM \"t\" WITH NO DATA"
        );
        let keys: Vec<usize> = staged.setup[1..3].iter().map(|s| s.params.len()).collect();
        assert_eq!(keys, vec![MOST_PARAMS, 70_000 - MOST_PARAMS]);
        let images: Vec<usize> = staged.setup[4..7].iter().map(|s| s.params.len()).collect();
        assert_eq!(
            images,
            vec![32_767 * 2, 32_767 * 2, (70_000 - 2 * 32_767) * 2]
        );
        // Newest row first, as the plan runs.
        assert_eq!(
            staged.setup[4].params[0],
            Some(69_999u32.to_be_bytes().to_vec())
        );
        assert_eq!(staged.setup[6].params[8_931], v(1));
        assert!(staged.setup[1].sql.ends_with("($65534), ($65535)"));
        assert_eq!(
            staged.together.sql,
            "WITH tandem_gone_0 AS (DELETE FROM \"t\" AS tandem_row USING pg_temp.tandem_stage_gone_0 AS tandem_key \
             WHERE tandem_row.\"id\" = tandem_key.\"id\" RETURNING 1), \
             tandem_gone AS (SELECT 1 FROM tandem_gone_0), \
             tandem_back_0 AS (INSERT INTO \"t\" (\"id\", \"v\") OVERRIDING SYSTEM VALUE SELECT \"id\", \"v\" \
             FROM pg_temp.tandem_stage_back_0 WHERE (SELECT count(*) FROM tandem_gone) >= 0 RETURNING 1) SELECT 1"
        );
        assert!(staged.together.params.is_empty());
    }

    mod mysql {
        use super::*;
        use crate::dialect::Mysql;
        use crate::mysql::types::{BLOB, CHARACTER, DATETIME, JSON, LONG, TIMESTAMP, VAR_STRING};

        fn record(rows: Vec<RowImages>) -> UndoRecord {
            UndoRecord {
                version: VERSION,
                tables: vec![TableUndo {
                    schema: Some("shop".into()),
                    table: "t`x".into(),
                    columns: vec!["id".into(), "v".into(), "ts".into(), "j".into()],
                    types: vec![LONG, VAR_STRING | CHARACTER, TIMESTAMP, JSON],
                    generated: vec![false, false, false, false],
                    pk: vec![0],
                    rows,
                }],
            }
        }

        const COLUMNS: &str = "`id`, CAST(`v` AS BINARY), TIMESTAMP'1970-01-01 00:00:00' + INTERVAL CAST(UNIX_TIMESTAMP(`ts`) * 1000000 AS SIGNED) MICROSECOND, CAST(CAST(`j` AS CHAR CHARACTER SET utf8mb4) AS BINARY)";

        /// A TIMESTAMP is written back from its value bound twice.
        const TS: &str = "IF(UNIX_TIMESTAMP(?) = 0, 0, CAST(? AS DATETIME(6)) + 0)";

        #[test]
        fn each_step_checks_every_column_null_safely_then_restores() {
            let updated = RowImages {
                before: Some(vec![v(1), v(10), None, v(7)]),
                after: Some(vec![v(1), v(11), v(5), v(7)]),
            };
            let deleted = RowImages {
                before: Some(vec![v(2), None, v(3), None]),
                after: None,
            };
            let inserted = RowImages {
                before: None,
                after: Some(vec![v(3), v(30), None, None]),
            };
            let steps = plan(&Mysql, &record(vec![updated, deleted, inserted]));
            let table = "`shop`.`t``x`";
            let compare = "AND `id` <=> ? AND CAST(`v` AS BINARY) <=> ? AND TIMESTAMP'1970-01-01 00:00:00' + INTERVAL CAST(UNIX_TIMESTAMP(`ts`) * 1000000 AS SIGNED) MICROSECOND <=> ? AND CAST(CAST(`j` AS CHAR CHARACTER SET utf8mb4) AS BINARY) <=> ?";
            let types = vec![LONG, LONG, BLOB, DATETIME, BLOB];

            assert_eq!(
                steps[0].check,
                Stmt {
                    sql: format!(
                        "SELECT {COLUMNS} FROM {table} WHERE `id` = ? {compare} FOR UPDATE"
                    ),
                    params: vec![v(3), v(3), v(30), None, None],
                    types: types.clone(),
                }
            );
            assert_eq!(
                steps[0].apply,
                Some(Stmt {
                    sql: format!("DELETE FROM {table} WHERE `id` = ?"),
                    params: vec![v(3)],
                    types: vec![LONG],
                })
            );

            assert_eq!(
                steps[1].check,
                Stmt {
                    sql: format!("SELECT {COLUMNS} FROM {table} WHERE `id` = ? FOR UPDATE"),
                    params: vec![v(2)],
                    types: vec![LONG],
                }
            );
            assert_eq!(steps[1].expect, None);
            assert_eq!(
                steps[1].apply,
                Some(Stmt {
                    sql: format!(
                        "INSERT INTO {table} (`id`, `v`, `ts`, `j`) VALUES (?, ?, {TS}, CONVERT(? USING utf8mb4))"
                    ),
                    params: vec![v(2), None, v(3), v(3), None],
                    types: vec![LONG, BLOB, DATETIME, DATETIME, BLOB],
                })
            );

            assert_eq!(steps[2].check.params, vec![v(1), v(1), v(11), v(5), v(7)]);
            assert_eq!(steps[2].check.types, types);
            // `ts`, unchanged, is assigned (ON UPDATE CURRENT_TIMESTAMP would move it);
            // `j`, unchanged and of no such type, is left alone.
            assert_eq!(
                steps[2].apply,
                Some(Stmt {
                    sql: format!("UPDATE {table} SET `v` = ?, `ts` = {TS} WHERE `id` = ?"),
                    params: vec![v(10), None, None, v(1)],
                    types: vec![BLOB, DATETIME, DATETIME, LONG],
                })
            );
        }
    }
}
