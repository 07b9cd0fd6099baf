//! Which tables a statement may change rows of, for a write tandem does not analyse
//! (TRUNCATE, MERGE, a write in a WITH clause, a multi-statement query): outside a
//! global transaction such a write cannot be checked row by row, so what matters is
//! only whether any table it may change holds global locks.

use super::{Names, POSTGRES_NAMES, RECURSION_LIMIT, mysql};
use crate::dialect::{Dialect, Grammar};
use crate::error::Error;
use sqlparser::ast::{
    FromTable, ObjectName, ObjectNamePart, OnConflictAction, OnInsert, Statement, TableFactor,
    TableObject, TableWithJoins, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

/// The tables whose existing rows `sql` may update or delete, in any of its
/// statements and at any depth (a WITH clause, EXPLAIN ANALYZE): UPDATE, DELETE,
/// MERGE, TRUNCATE, an upsert's DO UPDATE or ON DUPLICATE KEY UPDATE, REPLACE. Each is
/// named by its last part, as the server reads it (PostgreSQL folds unquoted names).
/// A plain INSERT only adds rows and is not named. `None`: the text does not parse,
/// and nothing can be said. Writes inside functions are not seen.
pub fn tables_changed(dialect: &dyn Dialect, sql: &str) -> Option<Vec<String>> {
    let (statements, names) = match dialect.grammar() {
        Grammar::PostgreSql => (
            Parser::new(&PostgreSqlDialect {})
                .with_recursion_limit(RECURSION_LIMIT)
                .try_with_sql(sql)
                .and_then(|mut p| p.parse_statements())
                .ok()?,
            POSTGRES_NAMES,
        ),
        Grammar::MySql => (
            mysql::parse(sql, |message| Error::Parse {
                dialect: dialect.name(),
                excerpt: String::new(),
                message,
            })
            .ok()?,
            mysql::MYSQL_NAMES,
        ),
    };
    let mut changed = Changed {
        names,
        tables: Vec::new(),
    };
    for statement in &statements {
        let _ = statement.visit(&mut changed);
    }
    changed.tables.dedup();
    Some(changed.tables)
}

struct Changed {
    names: Names,
    tables: Vec<String>,
}

impl Changed {
    fn add(&mut self, name: &ObjectName) {
        if let Some(ObjectNamePart::Identifier(ident)) = name.0.last() {
            let table = self.names.table(ident);
            if !self.tables.contains(&table) {
                self.tables.push(table);
            }
        }
    }

    /// Every table of a FROM list: which of them a MySQL multi-table write changes is
    /// not worth telling apart here.
    fn add_all(&mut self, from: &[TableWithJoins]) {
        for t in from {
            self.add_factor(&t.relation);
            for join in &t.joins {
                self.add_factor(&join.relation);
            }
        }
    }

    fn add_factor(&mut self, factor: &TableFactor) {
        if let TableFactor::Table { name, .. } = factor {
            self.add(name);
        }
    }
}

impl Visitor for Changed {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        match statement {
            Statement::Update(update) => {
                self.add_factor(&update.table.relation);
                for join in &update.table.joins {
                    self.add_factor(&join.relation);
                }
            }
            Statement::Delete(delete) if !delete.tables.is_empty() => {
                for name in &delete.tables {
                    self.add(name);
                }
            }
            Statement::Delete(delete) => match &delete.from {
                FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from) => {
                    self.add_all(from)
                }
            },
            Statement::Insert(insert) => {
                let changes = insert.replace_into
                    || match &insert.on {
                        Some(OnInsert::DuplicateKeyUpdate(_)) => true,
                        Some(OnInsert::OnConflict(c)) => {
                            matches!(c.action, OnConflictAction::DoUpdate(_))
                        }
                        _ => false,
                    };
                if let (true, TableObject::TableName(name)) = (changes, &insert.table) {
                    self.add(name);
                }
            }
            Statement::Merge(merge) => self.add_factor(&merge.table),
            Statement::Truncate(truncate) => {
                for target in &truncate.table_names {
                    self.add(&target.name);
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::tables_changed;
    use crate::{Mysql, Postgres};

    fn pg(sql: &str) -> Option<Vec<String>> {
        tables_changed(&Postgres, sql)
    }

    #[test]
    fn names_what_each_statement_may_change() {
        let some = |names: &[&str]| Some(names.iter().map(|n| n.to_string()).collect());
        assert_eq!(pg("TRUNCATE a, s.B, \"C\""), some(&["a", "b", "C"]));
        assert_eq!(
            pg("SELECT 1; UPDATE t SET v = 1; DELETE FROM u USING w WHERE u.id = w.id"),
            some(&["t", "u"])
        );
        assert_eq!(
            pg("WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved"),
            some(&["a"])
        );
        assert_eq!(
            pg("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v"),
            some(&["t"])
        );
        assert_eq!(
            pg(
                "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = 2; INSERT INTO u VALUES (1) ON CONFLICT DO NOTHING"
            ),
            some(&["t"])
        );
        assert_eq!(pg("EXPLAIN ANALYZE UPDATE t SET v = 1"), some(&["t"]));
        // Only new rows, or none at all.
        assert_eq!(
            pg("INSERT INTO t VALUES (1); SELECT f(1); COPY t FROM STDIN"),
            some(&[])
        );
        assert_eq!(pg("UPDATE t SET"), None);
        assert_eq!(
            tables_changed(
                &Mysql,
                "REPLACE INTO a VALUES (1); DELETE a, b FROM a JOIN b ON a.id = b.id; UPDATE c JOIN d ON c.id = d.id SET c.v = 1"
            ),
            some(&["a", "b", "c", "d"])
        );
        assert_eq!(
            tables_changed(
                &Mysql,
                "INSERT INTO T VALUES (1) ON DUPLICATE KEY UPDATE v = 2"
            ),
            some(&["T"])
        );
    }
}
