//! The replay plan: the statements that undo one branch, newest row first, each behind
//! the check that the row still is what the branch left.
//!
//! Never runs SQL: the proxy executes the plan in one local transaction on a side
//! connection. Invariant: a step's `apply` may run only when its `check` returned
//! exactly `expect` (compared as binary values); anything else is a dirty write, and the
//! whole replay must stop without writing.

use crate::dialect::Dialect;
use crate::image::{Row, Value};
use crate::record::{TableUndo, UndoRecord};

/// One statement with its binary parameters and their type OIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stmt {
    /// SQL with the dialect's placeholders.
    pub sql: String,
    /// Parameter values, binary.
    pub params: Vec<Value>,
    /// Parameter type OIDs.
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
}

/// The steps that undo `record`, in the order to run them.
pub fn plan(d: &dyn Dialect, record: &UndoRecord) -> Vec<Step> {
    let mut steps = Vec::new();
    for table in record.tables.iter().rev() {
        for row in table.rows.iter().rev() {
            let Some(key_row) = row.after.as_ref().or(row.before.as_ref()) else {
                continue;
            };
            let apply = match (&row.before, &row.after) {
                (Some(before), Some(after)) if before == after => None,
                (Some(before), Some(_)) => Some(update(d, table, before)),
                (Some(before), None) => Some(insert(d, table, before)),
                (None, Some(after)) => Some(delete(d, table, after)),
                (None, None) => None,
            };
            steps.push(Step {
                check: check(d, table, key_row),
                expect: row.after.clone(),
                apply,
            });
        }
    }
    steps
}

fn qualified(d: &dyn Dialect, t: &TableUndo) -> String {
    d.qualified(&crate::TableRef {
        schema: t.schema.clone(),
        name: t.table.clone(),
    })
}

/// `pk1 = $n AND pk2 = $n+1 …`, parameters appended to `stmt`.
fn key_predicate(d: &dyn Dialect, t: &TableUndo, row: &Row, stmt: &mut Stmt) -> String {
    t.pk.iter()
        .map(|&i| {
            stmt.params.push(row[i].clone());
            stmt.types.push(t.types[i]);
            format!(
                "{} = {}",
                d.quote_ident(&t.columns[i]),
                d.placeholder(stmt.params.len())
            )
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

fn check(d: &dyn Dialect, t: &TableUndo, row: &Row) -> Stmt {
    let mut stmt = empty();
    let columns = t
        .columns
        .iter()
        .map(|c| d.quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let predicate = key_predicate(d, t, row, &mut stmt);
    stmt.sql = format!(
        "SELECT {columns} FROM {} WHERE {predicate} FOR UPDATE",
        qualified(d, t)
    );
    stmt
}

fn writable(t: &TableUndo) -> impl Iterator<Item = usize> + '_ {
    (0..t.columns.len()).filter(|&i| !t.generated[i])
}

fn update(d: &dyn Dialect, t: &TableUndo, before: &Row) -> Stmt {
    let mut stmt = empty();
    let sets = writable(t)
        .filter(|i| !t.pk.contains(i))
        .map(|i| {
            stmt.params.push(before[i].clone());
            stmt.types.push(t.types[i]);
            format!(
                "{} = {}",
                d.quote_ident(&t.columns[i]),
                d.placeholder(stmt.params.len())
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let predicate = key_predicate(d, t, before, &mut stmt);
    stmt.sql = format!("UPDATE {} SET {sets} WHERE {predicate}", qualified(d, t));
    stmt
}

fn insert(d: &dyn Dialect, t: &TableUndo, before: &Row) -> Stmt {
    let mut stmt = empty();
    let mut names = Vec::new();
    let mut values = Vec::new();
    for i in writable(t) {
        stmt.params.push(before[i].clone());
        stmt.types.push(t.types[i]);
        names.push(d.quote_ident(&t.columns[i]));
        values.push(d.placeholder(stmt.params.len()));
    }
    stmt.sql = format!(
        "INSERT INTO {} ({}) {} VALUES ({})",
        qualified(d, t),
        names.join(", "),
        d.insert_override(),
        values.join(", ")
    );
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
}
