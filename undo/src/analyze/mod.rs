//! Statement analysis: the only module that imports sqlparser. It turns a statement into
//! undo's own [`Analysis`], so that a sqlparser upgrade touches nothing else.
//!
//! Never guesses: whatever it cannot map to an exactly invertible write is refused with
//! [`Error::Unsupported`]. Invariant: a `Write` names exactly one table, and the rows it
//! changes are those its own predicate selects.

use crate::dialect::Dialect;
use crate::error::Error;
use sqlparser::ast::{
    Assignment, AssignmentTarget, ConflictTarget, FromTable, Ident, ObjectName, ObjectNamePart,
    OnConflict, OnConflictAction, OnInsert, Query, SetExpr, Statement, TableFactor, TableObject,
    TableWithJoins, UpdateTableFromKind,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// A table as a statement names it; unquoted names folded to lower case as PostgreSQL
/// does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableRef {
    /// Schema, when the statement gave one.
    pub schema: Option<String>,
    /// Table name.
    pub name: String,
}

/// What a write does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
}

/// A write AT mode can capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// INSERT, UPDATE or DELETE.
    pub kind: WriteKind,
    /// The one table written.
    pub table: TableRef,
    /// The alias the statement gives it.
    pub alias: Option<String>,
    /// The WHERE predicate as SQL (UPDATE, DELETE), with the statement's own
    /// placeholders.
    pub selection: Option<String>,
    /// Columns an UPDATE assigns.
    pub assigned: Vec<String>,
    /// Whether the statement has its own RETURNING list.
    pub has_returning: bool,
    /// The other tables of an UPDATE … FROM or DELETE … USING, as SQL.
    pub from: Option<String>,
    /// INSERT … ON CONFLICT (columns) DO UPDATE: what the before image needs.
    pub upsert: Option<Upsert>,
}

/// The parts of an `INSERT … VALUES … ON CONFLICT (columns) DO UPDATE` that name the rows
/// it may update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upsert {
    /// The conflict target's columns.
    pub target: Vec<String>,
    /// The INSERT's column list.
    pub columns: Vec<String>,
    /// Each VALUES row, one SQL expression per column (the statement's placeholders kept).
    pub rows: Vec<Vec<String>>,
}

/// A single-table SELECT … FOR UPDATE / FOR SHARE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedRead {
    /// The table read.
    pub table: TableRef,
    /// Its alias in the statement.
    pub alias: Option<String>,
    /// The WHERE predicate as SQL, with the statement's own placeholders.
    pub selection: Option<String>,
}

/// What a statement means for AT mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Analysis {
    /// Reads nothing under lock and writes nothing: relay it.
    Read,
    /// SELECT … FOR UPDATE / FOR SHARE: it must not pass a global lock. `None` when it
    /// reads more than one table, which tandem cannot check row by row.
    LockingRead(Option<LockedRead>),
    /// A write to capture.
    Write(Write),
    /// BEGIN / START TRANSACTION.
    Begin,
    /// COMMIT / END.
    Commit,
    /// ROLLBACK / ABORT (not ROLLBACK TO SAVEPOINT).
    Rollback,
    /// SET, SHOW, SAVEPOINT and the like: nothing to capture.
    Other,
}

/// Deep enough for real statements; a statement nested deeper is refused rather than
/// risking the stack.
const RECURSION_LIMIT: usize = 64;

/// Analyses every statement of `sql` (a simple query may hold several).
pub fn analyze(dialect: &dyn Dialect, sql: &str) -> Result<Vec<Analysis>, Error> {
    let statements = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Error::Parse {
            dialect: dialect.name(),
            excerpt: sql.chars().take(80).collect(),
            message: e.to_string(),
        })?;
    statements.iter().map(analyze_statement).collect()
}

fn analyze_statement(statement: &Statement) -> Result<Analysis, Error> {
    Ok(match statement {
        Statement::Query(query) => analyze_query(query)?,
        Statement::Insert(insert) => {
            let upsert = match &insert.on {
                None => None,
                // Rows it skips are untouched; rows it inserts come back in RETURNING.
                Some(OnInsert::OnConflict(OnConflict {
                    action: OnConflictAction::DoNothing,
                    ..
                })) => None,
                Some(OnInsert::OnConflict(OnConflict {
                    action: OnConflictAction::DoUpdate(_),
                    conflict_target:
                        Some(ConflictTarget::Columns {
                            columns,
                            predicate: None,
                        }),
                })) => Some(upsert(insert, columns)?),
                Some(_) => {
                    return Err(Error::unsupported(
                        "INSERT … ON CONFLICT DO UPDATE without a plain column list as its target",
                    ));
                }
            };
            if let Some(source) = &insert.source {
                refuse_data_modifying_ctes(source)?;
            }
            let TableObject::TableName(name) = &insert.table else {
                return Err(Error::unsupported("INSERT into a table function"));
            };
            Analysis::Write(Write {
                kind: WriteKind::Insert,
                table: table_ref(name)?,
                alias: insert.table_alias.as_ref().map(|a| fold(&a.alias)),
                selection: None,
                assigned: vec![],
                has_returning: insert.returning.is_some(),
                from: None,
                upsert,
            })
        }
        Statement::Update(update) => {
            let from = match &update.from {
                None => None,
                Some(UpdateTableFromKind::AfterSet(tables)) => Some(join_list(tables)),
                Some(UpdateTableFromKind::BeforeSet(_)) => {
                    return Err(Error::unsupported("UPDATE FROM … SET"));
                }
            };
            let (table, alias) = single_table(&update.table)?;
            Analysis::Write(Write {
                kind: WriteKind::Update,
                table,
                alias,
                selection: update.selection.as_ref().map(|e| e.to_string()),
                assigned: assigned_columns(&update.assignments)?,
                has_returning: update.returning.is_some(),
                from,
                upsert: None,
            })
        }
        Statement::Delete(delete) => {
            let tables = match &delete.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            let [only] = tables.as_slice() else {
                return Err(Error::unsupported("DELETE from several tables"));
            };
            let (table, alias) = single_table(only)?;
            Analysis::Write(Write {
                kind: WriteKind::Delete,
                table,
                alias,
                selection: delete.selection.as_ref().map(|e| e.to_string()),
                assigned: vec![],
                has_returning: delete.returning.is_some(),
                from: delete.using.as_ref().map(|t| join_list(t)),
                upsert: None,
            })
        }
        Statement::StartTransaction { .. } => Analysis::Begin,
        Statement::Commit { .. } => Analysis::Commit,
        Statement::Rollback {
            savepoint: None, ..
        } => Analysis::Rollback,
        // A SQL-level prepared statement runs later, by name, where tandem cannot see
        // what it does: one that writes is refused when prepared, and EXECUTE is
        // refused outright (its PREPARE may predate the global transaction).
        Statement::Prepare { statement, .. } => match analyze_statement(statement)? {
            Analysis::Write(_) => {
                return Err(Error::unsupported(
                    "PREPARE of a write (use the protocol's prepared statements)",
                ));
            }
            _ => Analysis::Other,
        },
        Statement::Execute { .. } => {
            return Err(Error::unsupported(
                "EXECUTE of a SQL-level prepared statement (use the protocol's prepared statements)",
            ));
        }
        // EXPLAIN ANALYZE runs its statement.
        Statement::Explain {
            analyze,
            statement,
            options,
            ..
        } if *analyze
            || options.iter().flatten().any(|o| {
                o.name.value.eq_ignore_ascii_case("analyze")
                    && !matches!(&o.arg, Some(arg) if matches!(arg.to_string().to_ascii_lowercase().as_str(), "false" | "off" | "0"))
            }) =>
        {
            match analyze_statement(statement)? {
                Analysis::Read => Analysis::Read,
                _ => return Err(Error::unsupported("EXPLAIN ANALYZE of a write")),
            }
        }
        Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::Discard { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Deallocate { .. }
        | Statement::Explain { .. }
        | Statement::LISTEN { .. }
        | Statement::NOTIFY { .. }
        | Statement::UNLISTEN { .. } => Analysis::Other,
        Statement::Truncate { .. } => return Err(Error::unsupported("TRUNCATE")),
        Statement::Copy { .. } => return Err(Error::unsupported("COPY")),
        Statement::Merge { .. } => return Err(Error::unsupported("MERGE")),
        Statement::CreateTable { .. }
        | Statement::AlterTable { .. }
        | Statement::Drop { .. }
        | Statement::CreateIndex { .. }
        | Statement::CreateView { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateFunction { .. }
        | Statement::CreateTrigger { .. } => return Err(Error::unsupported("DDL")),
        other => {
            let text = other.to_string();
            let first: String = text
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            return Err(Error::unsupported(first));
        }
    })
}

fn analyze_query(query: &Query) -> Result<Analysis, Error> {
    refuse_data_modifying_ctes(query)?;
    if query.locks.is_empty() {
        return Ok(Analysis::Read);
    }
    let single = match query.body.as_ref() {
        SetExpr::Select(select) if query.with.is_none() => match select.from.as_slice() {
            [only] => single_table(only).ok().map(|(table, alias)| LockedRead {
                table,
                alias,
                selection: select.selection.as_ref().map(|e| e.to_string()),
            }),
            _ => None,
        },
        _ => None,
    };
    Ok(Analysis::LockingRead(single))
}

/// `WITH x AS (UPDATE …) SELECT …` writes where tandem would not capture it.
fn refuse_data_modifying_ctes(query: &Query) -> Result<(), Error> {
    let writes = |body: &SetExpr| {
        matches!(
            body,
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_)
        )
    };
    if writes(&query.body) {
        return Err(Error::unsupported(
            "a data-modifying statement nested in a query",
        ));
    }
    if let Some(with) = &query.with {
        for cte in &with.cte_tables {
            if writes(&cte.query.body) {
                return Err(Error::unsupported("a data-modifying CTE"));
            }
            refuse_data_modifying_ctes(&cte.query)?;
        }
    }
    Ok(())
}

/// The VALUES rows of an upsert, as SQL per column.
fn upsert(insert: &sqlparser::ast::Insert, target: &[Ident]) -> Result<Upsert, Error> {
    let values = match insert.source.as_deref().map(|q| q.body.as_ref()) {
        Some(SetExpr::Values(values)) => values,
        _ => {
            return Err(Error::unsupported(
                "INSERT … SELECT … ON CONFLICT DO UPDATE",
            ));
        }
    };
    let columns: Vec<String> = insert
        .columns
        .iter()
        .filter_map(|c| match c.0.last() {
            Some(ObjectNamePart::Identifier(ident)) => Some(fold(ident)),
            _ => None,
        })
        .collect();
    if columns.is_empty() || columns.len() != insert.columns.len() {
        return Err(Error::unsupported(
            "INSERT … ON CONFLICT DO UPDATE without an explicit column list",
        ));
    }
    let rows = values
        .rows
        .iter()
        .map(|row| row.content.iter().map(ToString::to_string).collect())
        .collect();
    Ok(Upsert {
        target: target.iter().map(fold).collect(),
        columns,
        rows,
    })
}

fn join_list(tables: &[TableWithJoins]) -> String {
    tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn single_table(t: &TableWithJoins) -> Result<(TableRef, Option<String>), Error> {
    if !t.joins.is_empty() {
        return Err(Error::unsupported("a write over a join"));
    }
    match &t.relation {
        TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } => Ok((table_ref(name)?, alias.as_ref().map(|a| fold(&a.name)))),
        _ => Err(Error::unsupported(
            "a write to something other than a table",
        )),
    }
}

fn table_ref(name: &ObjectName) -> Result<TableRef, Error> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Ok(fold(ident)),
            _ => Err(Error::unsupported("a computed table name")),
        })
        .collect::<Result<_, _>>()?;
    match parts.as_slice() {
        [table] => Ok(TableRef {
            schema: None,
            name: table.clone(),
        }),
        [schema, table] => Ok(TableRef {
            schema: Some(schema.clone()),
            name: table.clone(),
        }),
        _ => Err(Error::unsupported("a table name with a database part")),
    }
}

fn assigned_columns(assignments: &[Assignment]) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for a in assignments {
        let names: Vec<&ObjectName> = match &a.target {
            AssignmentTarget::ColumnName(n) => vec![n],
            AssignmentTarget::Tuple(ns) => ns.iter().collect(),
        };
        for n in names {
            match n.0.last() {
                Some(ObjectNamePart::Identifier(ident)) => out.push(fold(ident)),
                _ => {
                    return Err(Error::unsupported(
                        "an assignment to a computed column name",
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// PostgreSQL folds unquoted identifiers to lower case.
fn fold(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

#[cfg(test)]
mod tests;

/// The text of each statement of `sql`, split at the semicolons between statements
/// (not those inside quotes, dollar quotes or comments), without the semicolons and
/// without empty statements, so that each can be sent as a query of its own.
pub fn split_statements<'a>(dialect: &dyn Dialect, sql: &'a str) -> Result<Vec<&'a str>, Error> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| Error::Parse {
            dialect: dialect.name(),
            excerpt: sql.chars().take(80).collect(),
            message: e.to_string(),
        })?;
    // Byte offset of each line's start: locations count lines and characters from 1.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |line: u64, column: u64| -> Option<usize> {
        let start = *line_starts.get(usize::try_from(line).ok()?.checked_sub(1)?)?;
        let chars = usize::try_from(column).ok()?.checked_sub(1)?;
        let rest = sql.get(start..)?;
        Some(
            start
                + rest
                    .char_indices()
                    .nth(chars)
                    .map_or(rest.len(), |(i, _)| i),
        )
    };
    let mut pieces = Vec::new();
    let mut from = 0;
    for t in tokens.iter().filter(|t| t.token == Token::SemiColon) {
        let at = offset(t.span.start.line, t.span.start.column).ok_or_else(|| Error::Parse {
            dialect: dialect.name(),
            excerpt: sql.chars().take(80).collect(),
            message: "a statement separator outside the text".into(),
        })?;
        pieces.push(&sql[from..at]);
        from = at + 1;
    }
    pieces.push(&sql[from..]);
    Ok(pieces
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .collect())
}

/// How many statements a MySQL query holds (semicolons between statements, not those
/// inside quotes, backticks or comments, MySQL's tokenizer rules).
pub fn count_mysql_statements(sql: &str) -> Result<usize, Error> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&sqlparser::dialect::MySqlDialect {}, sql)
        .tokenize()
        .map_err(|e| Error::Parse {
            dialect: "mysql",
            excerpt: sql.chars().take(80).collect(),
            message: e.to_string(),
        })?;
    let mut count = 0;
    let mut in_statement = false;
    for t in &tokens {
        match t {
            Token::SemiColon => in_statement = false,
            Token::Whitespace(_) => {}
            _ if !in_statement => {
                in_statement = true;
                count += 1;
            }
            _ => {}
        }
    }
    Ok(count)
}
