//! Statement analysis: the only module that imports sqlparser. It turns a statement into
//! undo's own [`Analysis`], so that a sqlparser upgrade touches nothing else.
//!
//! Never guesses: whatever it cannot map to an exactly invertible write is refused with
//! [`Error::Unsupported`]. Invariant: a `Write` names exactly one table, and the rows it
//! changes are those its own predicate selects. PostgreSQL's statements are analysed
//! here, MySQL's in `mysql` (same types, MySQL's grammar and name rules).

mod cache;
mod changed;
mod mysql;
mod prepared;
mod row_count;
mod split;

pub use cache::AnalysisCache;
pub use changed::{EVERY_TABLE, tables_changed, tables_changed_resolving, tables_named};
pub(crate) use mysql::bind_positionally;
pub use mysql::statement_time_limit;
pub use prepared::{PreparedChange, prepared_changes, runs_stored_code};
pub use row_count::with_row_count;
pub use split::{
    count_mysql_statements, has_empty_mysql_statement, split_mysql_statements, split_statements,
    statement_body,
};

use crate::dialect::{Dialect, Grammar};
use crate::error::Error;
use sqlparser::ast::{
    Assignment, AssignmentTarget, ConflictTarget, CopySource, CopyTarget, Expr, FromTable, Ident,
    InsertOverriding, ObjectName, ObjectNamePart, OnConflict, OnConflictAction, OnInsert, Query,
    SetExpr, Statement, TableFactor, TableObject, TableWithJoins, UnaryOperator,
    UpdateTableFromKind, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// A table as a statement names it: PostgreSQL's unquoted names folded to lower case as
/// PostgreSQL does; MySQL's as written (whether they are case-sensitive is a server
/// setting, so the catalog resolves them).
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
    /// Those of `assigned` that a MySQL ON DUPLICATE KEY UPDATE sets to the value the
    /// row would have inserted (`c = VALUES(c)`, knex's `merge()`): unchanged in a row
    /// that collided on that column's key.
    pub assigned_as_inserted: Vec<String>,
    /// Whether the statement has its own RETURNING list.
    pub has_returning: bool,
    /// The other tables of an UPDATE … FROM or DELETE … USING, as SQL.
    pub from: Option<String>,
    /// INSERT … ON CONFLICT (columns) DO UPDATE: what the before image needs.
    pub upsert: Option<Upsert>,
    /// The ORDER BY list of a single-table UPDATE/DELETE (MySQL), as SQL.
    pub order_by: Option<String>,
    /// The columns that ORDER BY names plainly (lower case), to tell whether it orders
    /// the rows totally.
    pub order_columns: Vec<String>,
    /// The LIMIT row count of a single-table UPDATE/DELETE (MySQL), as SQL.
    pub limit: Option<String>,
    /// Every table a multi-table UPDATE/DELETE (MySQL) reads, the written one among
    /// them, as SQL: the before image selects from it.
    pub joined: Option<String>,
    /// What an INSERT does with a row whose unique key is taken.
    pub on_duplicate: OnDuplicate,
    /// The rows a MySQL INSERT, REPLACE or INSERT … SET gives, which name the rows it
    /// inserts (MySQL returns no keys) and, for an upsert, those it may change.
    pub rows: Option<InsertRows>,
}

/// What an INSERT does with a row whose primary or unique key another row holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDuplicate {
    /// Fails (also: not an INSERT).
    #[default]
    Error,
    /// Skips the row: INSERT IGNORE, ON CONFLICT DO NOTHING.
    Ignore,
    /// Updates the row it collides with: ON DUPLICATE KEY UPDATE, ON CONFLICT DO UPDATE.
    Update,
    /// Deletes every row it collides with, then inserts: REPLACE.
    Replace,
}

/// The rows an INSERT … VALUES gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InsertRows {
    /// The column list (lower case); None: every column, in table order.
    pub columns: Option<Vec<String>>,
    /// Each row, one value per column.
    pub rows: Vec<Vec<InsertValue>>,
    /// A value is a double-quoted literal: under MySQL's sql_mode ANSI_QUOTES the
    /// server reads it as a column, not as the string tandem takes it for.
    pub double_quoted: bool,
}

/// Whether an INSERT value is a double-quoted literal (signed or not).
fn double_quoted(expr: &Expr) -> bool {
    match expr {
        Expr::Value(v) => matches!(v.value, Value::DoubleQuotedString(_)),
        Expr::UnaryOp { expr, .. } | Expr::Nested(expr) => double_quoted(expr),
        _ => false,
    }
}

/// One value of an INSERT's row, as SQL with the statement's placeholders numbered
/// (`?1`, `?2` …: see [`crate::Capture`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InsertValue {
    /// `DEFAULT`.
    Default,
    /// `NULL`.
    Null,
    /// A literal or a placeholder: evaluating it again gives the same value.
    Constant(String),
    /// Any other expression (a function call, a column, a subquery): evaluating it
    /// again may not give the value the INSERT wrote.
    Computed(String),
}

impl Write {
    /// A write of `kind` to `table` with nothing else known yet.
    fn of(kind: WriteKind, table: TableRef, alias: Option<String>) -> Self {
        Write {
            kind,
            table,
            alias,
            selection: None,
            assigned: vec![],
            assigned_as_inserted: vec![],
            has_returning: false,
            from: None,
            upsert: None,
            order_by: None,
            order_columns: vec![],
            limit: None,
            joined: None,
            on_duplicate: OnDuplicate::Error,
            rows: None,
        }
    }
}

/// The parts of an `INSERT … VALUES … ON CONFLICT (columns) DO UPDATE` that name the rows
/// it may update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upsert {
    /// The conflict target's columns.
    pub target: Vec<String>,
    /// The INSERT's column list; empty when it has none (the table's columns in order).
    pub columns: Vec<String>,
    /// Each VALUES row, one SQL expression per column (the statement's placeholders kept).
    pub rows: Vec<Vec<String>>,
    /// `INSERT … SELECT`'s query instead of VALUES (Django's multi-row upsert from
    /// `UNNEST`), as SQL with the statement's placeholders; its columns are `columns`.
    pub select: Option<String>,
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
    /// FOR SHARE (LOCK IN SHARE MODE), not FOR UPDATE.
    pub shared: bool,
    /// NOWAIT: a row locked elsewhere fails the read at once.
    pub nowait: bool,
}

/// What a statement means for AT mode.
// One per statement and short-lived; boxing the write would change the shape every
// caller matches on.
#[allow(clippy::large_enum_variant)]
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
    /// SAVEPOINT, RELEASE SAVEPOINT or ROLLBACK TO SAVEPOINT: what a branch captured
    /// after a savepoint is undone with it.
    Savepoint(SavepointOp),
    /// SET, SHOW and the like: nothing to capture.
    Other,
}

/// A savepoint statement, with the savepoint's name as the server compares it (case
/// folded where the dialect folds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavepointOp {
    /// `SAVEPOINT name`
    Set(String),
    /// `RELEASE [SAVEPOINT] name`
    Release(String),
    /// `ROLLBACK [WORK] TO [SAVEPOINT] name`
    RollbackTo(String),
}

impl SavepointOp {
    /// The statement, as the server names it in its messages.
    pub fn statement(&self) -> &'static str {
        match self {
            SavepointOp::Set(_) => "SAVEPOINT",
            SavepointOp::Release(_) => "RELEASE SAVEPOINT",
            SavepointOp::RollbackTo(_) => "ROLLBACK TO SAVEPOINT",
        }
    }
}

/// A savepoint's name as PostgreSQL compares it: unquoted names fold to lower case.
fn postgres_savepoint_name(name: &sqlparser::ast::Ident) -> String {
    let mut name = match name.quote_style {
        Some(_) => name.value.clone(),
        None => name.value.to_ascii_lowercase(),
    };
    // PostgreSQL cuts every identifier to 63 bytes (NAMEDATALEN - 1), at a character
    // boundary: two names alike in those are one savepoint.
    const LONGEST_NAME: usize = 63;
    if name.len() > LONGEST_NAME {
        let mut cut = LONGEST_NAME;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

/// Deep enough for real statements; a statement nested deeper is refused rather than
/// risking the stack.
const RECURSION_LIMIT: usize = 64;

/// Analyses every statement of `sql` (a simple query may hold several).
///
/// MySQL's placeholders come back numbered in the order they appear (`?1`, `?2` …) in
/// every fragment of SQL an [`Analysis`] holds, so that what undo builds from them can
/// say which of the statement's parameters it binds.
pub fn analyze(dialect: &dyn Dialect, sql: &str) -> Result<Vec<Analysis>, Error> {
    let parse_error = |message: String| Error::Parse {
        dialect: dialect.name(),
        excerpt: sql.chars().take(80).collect(),
        message,
    };
    match dialect.grammar() {
        Grammar::PostgreSql => {
            let statements = match Parser::new(&PostgreSqlDialect {})
                .with_recursion_limit(RECURSION_LIMIT)
                .try_with_sql(sql)
                .and_then(|mut p| p.parse_statements())
            {
                Ok(statements) => statements,
                Err(_) if moves_a_cursor(sql) => return Ok(vec![Analysis::Other]),
                Err(e) => return Err(parse_error(e.to_string())),
            };
            let may_lock = may_lock_rows(sql);
            statements
                .iter()
                .map(|s| unless_locked_below(s, analyze_statement(s)?, may_lock))
                .collect()
        }
        Grammar::MySql => {
            let statements = mysql::parse(sql, parse_error)?;
            let may_lock = may_lock_rows(sql);
            statements
                .iter()
                .map(|s| unless_locked_below(s, mysql::analyze_statement(s)?, may_lock))
                .collect()
        }
    }
}

/// Whether text may hold a lock clause (`FOR UPDATE`, `FOR SHARE`, `LOCK IN SHARE
/// MODE`): most reads do not, and leave without a second look.
fn may_lock_rows(sql: &str) -> bool {
    contains_ignore_case(sql.as_bytes(), b"update")
        || contains_ignore_case(sql.as_bytes(), b"share")
}

/// `analysis` of `statement`, unless the statement is a read that locks rows where
/// tandem does not look: a global transaction's locking read is checked against the
/// global locks by its outer lock clause only, and one in a subquery, a CTE, a derived
/// table, parentheses or a cursor would read rows another global transaction may yet
/// roll back. (A write's own rows are locked globally whatever chose them.)
fn unless_locked_below(
    statement: &Statement,
    analysis: Analysis,
    may_lock: bool,
) -> Result<Analysis, Error> {
    let checked = match (statement, &analysis) {
        _ if !may_lock => return Ok(analysis),
        (_, Analysis::Write(_)) => return Ok(analysis),
        // A plan only: nothing runs.
        (Statement::Explain { analyze: false, .. }, _) => return Ok(analysis),
        (Statement::Query(query), _) => query.locks.len(),
        // DECLARE … CURSOR, EXPLAIN ANALYZE, MySQL's SET @v = (SELECT … FOR UPDATE):
        // none of their lock clauses is checked.
        _ => 0,
    };
    if lock_clauses(statement) > checked {
        return Err(Error::unchecked(
            "a lock clause in a subquery, a CTE, a derived table, parentheses or a cursor (only a top-level SELECT … FOR UPDATE is checked)",
        ));
    }
    Ok(analysis)
}

/// How many lock clauses `statement` has, in every query it holds.
fn lock_clauses(statement: &Statement) -> usize {
    use sqlparser::ast::{Visit, Visitor};
    use std::ops::ControlFlow;
    struct Count(usize);
    impl Visitor for Count {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            self.0 += query.locks.len();
            ControlFlow::Continue(())
        }
    }
    let mut count = Count(0);
    let _ = statement.visit(&mut count);
    count.0
}

/// Whether PostgreSQL text holds `RESET ALL` or `DISCARD ALL` among its statements: a
/// connection pool's reset, which may come with others (asyncpg's pool sends
/// `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`). Read by its
/// tokens, so literals, quoted names and comments never count; text that does not
/// tokenize holds none.
pub fn resets_session(sql: &str) -> bool {
    use sqlparser::tokenizer::{Token, Tokenizer};
    // Every query of a bound session comes here: most leave without allocating.
    let text = sql.as_bytes();
    if !contains_ignore_case(text, b"all")
        || !(contains_ignore_case(text, b"reset") || contains_ignore_case(text, b"discard"))
    {
        return false;
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return false;
    };
    tokens.split(|t| *t == Token::SemiColon).any(|statement| {
        let mut words = statement
            .iter()
            .filter(|t| !matches!(t, Token::Whitespace(_)));
        let word = |t: Option<&Token>, expected: &[&str]| {
            matches!(t, Some(Token::Word(w)) if w.quote_style.is_none()
                    && expected.iter().any(|e| w.value.eq_ignore_ascii_case(e)))
        };
        word(words.next(), &["reset", "discard"])
            && word(words.next(), &["all"])
            && words.next().is_none()
    })
}

/// Whether `needle` occurs in `haystack`, ASCII case ignored.
pub fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether MySQL text holds `/*!…*/` or MariaDB's `/*M!…*/` anywhere, a string literal
/// included. sqlparser reads the first always and the second never, while the server
/// runs either only if its version gate lets it (MariaDB skips MySQL's 5.7 and later):
/// the rows tandem reads for a write could differ from those the server changes.
pub fn has_executable_comment(sql: impl AsRef<[u8]>) -> bool {
    let sql = sql.as_ref();
    sql.windows(3).any(|w| w == b"/*!") || sql.windows(4).any(|w| w == b"/*M!")
}

/// Whether tandem's PostgreSQL tokenizer reads an operator on through `--` or `/*`
/// (`#--`, `</*`), which the server ends the operator before, reading a comment: the
/// text after it, a literal to tandem, may be statements to the server. False for text
/// that does not tokenize (its callers refuse that anyway).
pub fn operator_swallows_comment(sql: &str) -> bool {
    use sqlparser::tokenizer::Token;
    if !(sql.contains("--") || sql.contains("/*")) {
        return false;
    }
    tokens(&crate::Postgres, sql).is_some_and(|tokens| {
        let inside = tokens.iter().any(|t| {
            matches!(t, Token::CustomBinaryOperator(op) if op.contains("--") || op.contains("/*"))
        });
        // An operator token of the tokenizer's own that ends in `-` or `/` right
        // before a `-` or `*` (`?-` then `-`): the server reads `?` and a comment.
        let across = tokens.windows(2).any(|pair| {
            let (before, after) = (pair[0].to_string(), pair[1].to_string());
            let operator = !matches!(
                pair[0],
                Token::Word(_)
                    | Token::Number(..)
                    | Token::SingleQuotedString(_)
                    | Token::Whitespace(_)
            );
            operator
                && (before.ends_with('-') && after.starts_with('-')
                    || before.ends_with('/') && after.starts_with('*'))
        });
        inside || across
    })
}

/// The names `sql` calls as functions: each word right before a `(`, the last part of/// The names `sql` calls as functions: each word right before a `(`, the last part of
/// a qualified name, as the dialect folds it (PostgreSQL folds unquoted names to lower
/// case and keeps quoted ones; MySQL's function names ignore case). Keywords before a
/// parenthesis (`IN (`, `VALUES (`) come too: callers look the names up. Text that
/// does not tokenize gives none (it does not parse either).
pub fn called_functions(dialect: &dyn Dialect, sql: &str) -> Vec<String> {
    try_called_functions(dialect, sql).unwrap_or_default()
}

/// As [`called_functions`], or None when the text does not tokenize (for a caller
/// that must refuse what it cannot read).
pub fn try_called_functions(dialect: &dyn Dialect, sql: &str) -> Option<Vec<String>> {
    use sqlparser::tokenizer::Token;
    let tokens = tokens(dialect, sql)?;
    let mut significant = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .peekable();
    let mut names = Vec::new();
    while let Some(token) = significant.next() {
        if let Token::Word(word) = token
            && significant.peek() == Some(&&Token::LParen)
        {
            let folded = match (dialect.grammar(), word.quote_style) {
                (Grammar::PostgreSql, Some(_)) => word.value.clone(),
                _ => word.value.to_lowercase(),
            };
            names.push(folded);
        }
    }
    Some(names)
}

/// Every word of `sql`, keyword or name, quoted or not, in lower case; None when the
/// text does not tokenize.
pub fn try_words(dialect: &dyn Dialect, sql: &str) -> Option<Vec<String>> {
    use sqlparser::tokenizer::Token;
    Some(
        tokens(dialect, sql)?
            .into_iter()
            .filter_map(|t| match t {
                Token::Word(word) => Some(word.value.to_lowercase()),
                _ => None,
            })
            .collect(),
    )
}

fn tokens(dialect: &dyn Dialect, sql: &str) -> Option<Vec<sqlparser::tokenizer::Token>> {
    use sqlparser::tokenizer::Tokenizer;
    match dialect.grammar() {
        Grammar::PostgreSql => Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize(),
        Grammar::MySql => Tokenizer::new(&sqlparser::dialect::MySqlDialect {}, sql).tokenize(),
    }
    .ok()
}

/// How a dialect turns identifiers into names.
#[derive(Clone, Copy)]
struct Names {
    /// Fold unquoted table names to lower case (PostgreSQL); else keep them as written.
    fold_tables: bool,
    /// Fold column names to lower case even when quoted (MySQL, whose column names
    /// are case-insensitive).
    lower_columns: bool,
    /// A quoted name still holds its quote character doubled (MySQL, parsed without
    /// unescaping so that literals keep their escapes): `` `a``b` `` names a`b.
    doubled_quotes: bool,
    /// An assignment's target may name its table before the column (MySQL's
    /// `SET t.c = 1`); else it names the column first, then a field of it
    /// (PostgreSQL's `SET c.f = 1`).
    qualified_targets: bool,
}

const POSTGRES_NAMES: Names = Names {
    fold_tables: true,
    lower_columns: false,
    doubled_quotes: false,
    qualified_targets: false,
};

impl Names {
    fn table(self, ident: &Ident) -> String {
        if self.fold_tables {
            fold(ident)
        } else {
            self.as_named(ident)
        }
    }

    fn column(self, ident: &Ident) -> String {
        if self.lower_columns {
            fold_mysql_column(&self.as_named(ident))
        } else {
            fold(ident)
        }
    }

    /// The name an identifier gives, as written otherwise.
    fn as_named(self, ident: &Ident) -> String {
        match ident.quote_style {
            Some(quote) if self.doubled_quotes => undouble(&ident.value, quote),
            _ => ident.value.clone(),
        }
    }
}

/// A quoted identifier's text with each doubled `quote` made single.
fn undouble(quoted: &str, quote: char) -> String {
    let mut name = String::with_capacity(quoted.len());
    let mut chars = quoted.chars().peekable();
    while let Some(c) = chars.next() {
        name.push(c);
        if c == quote && chars.peek() == Some(&quote) {
            chars.next();
        }
    }
    name
}

/// A MySQL column name as tandem compares and writes it: its ASCII letters in lower
/// case, every other character as written. MySQL's column names are case-insensitive,
/// but by its own tables, older than Unicode's: `ẞ` and `ß`, Georgian or Cherokee
/// capitals and their small letters are other names to MariaDB 10.11, and `İ`'s lower
/// case is two characters. A name folded otherwise than the server folds it would
/// name no column in tandem's SQL, or two columns as one; one spelled in another case
/// outside ASCII only goes unfound (refused).
pub fn fold_mysql_column(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// The statement an `EXPLAIN ANALYZE` runs (it executes it), if `statement` is one.
fn explain_analyze_target(statement: &Statement) -> Option<&Statement> {
    let Statement::Explain {
        analyze,
        statement,
        options,
        ..
    } = statement
    else {
        return None;
    };
    let off = |arg: &sqlparser::ast::Expr| {
        matches!(
            arg.to_string().to_ascii_lowercase().as_str(),
            "false" | "off" | "0"
        )
    };
    // PostgreSQL takes the British spelling too.
    let analyzes = *analyze
        || options.iter().flatten().any(|o| {
            (o.name.value.eq_ignore_ascii_case("analyze")
                || o.name.value.eq_ignore_ascii_case("analyse"))
                && !o.arg.as_ref().is_some_and(off)
        });
    analyzes.then_some(statement.as_ref())
}

/// An EXPLAIN ANALYZE runs its statement: only a read may run so.
fn explain_analyze(
    target: &Statement,
    analyze: fn(&Statement) -> Result<Analysis, Error>,
) -> Result<Analysis, Error> {
    match analyze(target)? {
        Analysis::Read => Ok(Analysis::Read),
        Analysis::LockingRead(_) => Err(Error::unchecked("EXPLAIN ANALYZE of a locking read")),
        _ => Err(Error::unsupported("EXPLAIN ANALYZE of a write")),
    }
}

/// Whether `sql` is one FETCH or MOVE, which the parser reads only with FROM or IN
/// before the cursor's name (`FETCH ALL c`, `MOVE 2 c` are PostgreSQL too): it runs
/// no statement of its own (the cursor's query was judged when it was declared).
fn moves_a_cursor(sql: &str) -> bool {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return false;
    };
    let mut words = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF));
    let first = words.next();
    let mut rest = words.skip_while(|t| !matches!(t, Token::SemiColon));
    matches!(first, Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("fetch") || w.value.eq_ignore_ascii_case("move"))
        && rest.all(|t| matches!(t, Token::SemiColon))
}

fn analyze_statement(statement: &Statement) -> Result<Analysis, Error> {
    if let Some(target) = explain_analyze_target(statement) {
        return explain_analyze(target, analyze_statement);
    }
    Ok(match statement {
        Statement::Query(query) if creates_a_table(&query.body) => {
            return Err(Error::unsupported(
                "SELECT … INTO, which creates a table (DDL)",
            ));
        }
        Statement::Query(query) => analyze_query(query, POSTGRES_NAMES)?,
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
            let on_duplicate = match &insert.on {
                Some(OnInsert::OnConflict(OnConflict {
                    action: OnConflictAction::DoNothing,
                    ..
                })) => OnDuplicate::Ignore,
                Some(_) => OnDuplicate::Update,
                None => OnDuplicate::Error,
            };
            // `col = excluded.col` (or the row's own `col`), as ORMs write every column,
            // keeps the value the conflict matched on: no change of the key.
            let table_names: Vec<String> = match &insert.table {
                TableObject::TableName(name) => name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(fold)
                    .into_iter()
                    .chain(insert.table_alias.as_ref().map(|a| fold(&a.alias)))
                    .collect(),
                _ => Vec::new(),
            };
            let assigned = match &insert.on {
                Some(OnInsert::OnConflict(OnConflict {
                    action: OnConflictAction::DoUpdate(update),
                    conflict_target,
                })) => {
                    let target: Vec<String> = match conflict_target {
                        Some(ConflictTarget::Columns { columns, .. }) => {
                            columns.iter().map(fold).collect()
                        }
                        _ => Vec::new(),
                    };
                    let changing: Vec<Assignment> = update
                        .assignments
                        .iter()
                        .filter(|a| !keeps_its_value(a, &target, &table_names))
                        .cloned()
                        .collect();
                    assigned_columns(&changing, POSTGRES_NAMES)?
                }
                _ => Vec::new(),
            };
            Analysis::Write(Write {
                has_returning: insert.returning.is_some(),
                upsert,
                on_duplicate,
                assigned,
                // OVERRIDING USER VALUE replaces given identity values with generated
                // ones: the rows' keys are not what VALUES says.
                rows: match insert.overriding {
                    Some(InsertOverriding::User) => None,
                    _ => values_rows(insert, POSTGRES_NAMES, pg_insert_value)?,
                },
                ..Write::of(
                    WriteKind::Insert,
                    table_ref(name, POSTGRES_NAMES)?,
                    insert.table_alias.as_ref().map(|a| fold(&a.alias)),
                )
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
            let (table, alias) = single_table(&update.table, POSTGRES_NAMES)?;
            Analysis::Write(Write {
                selection: update.selection.as_ref().map(|e| e.to_string()),
                assigned: assigned_columns(&update.assignments, POSTGRES_NAMES)?,
                has_returning: update.returning.is_some(),
                from,
                ..Write::of(WriteKind::Update, table, alias)
            })
        }
        Statement::Delete(delete) => {
            let tables = match &delete.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            let [only] = tables.as_slice() else {
                return Err(Error::unsupported("DELETE from several tables"));
            };
            let (table, alias) = single_table(only, POSTGRES_NAMES)?;
            Analysis::Write(Write {
                selection: delete.selection.as_ref().map(|e| e.to_string()),
                has_returning: delete.returning.is_some(),
                from: delete.using.as_ref().map(|t| join_list(t)),
                ..Write::of(WriteKind::Delete, table, alias)
            })
        }
        Statement::StartTransaction { .. } => Analysis::Begin,
        Statement::Commit { .. } => Analysis::Commit,
        Statement::Rollback {
            savepoint: None, ..
        } => Analysis::Rollback,
        Statement::Rollback {
            savepoint: Some(name),
            ..
        } => Analysis::Savepoint(SavepointOp::RollbackTo(postgres_savepoint_name(name))),
        Statement::Savepoint { name } => {
            Analysis::Savepoint(SavepointOp::Set(postgres_savepoint_name(name)))
        }
        Statement::ReleaseSavepoint { name } => {
            Analysis::Savepoint(SavepointOp::Release(postgres_savepoint_name(name)))
        }
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
        Statement::Set(_)
        | Statement::Reset(_)
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
        // Out to the client, COPY reads: what a table or a query holds, as a SELECT
        // reads it. Into a table, or out of a write's RETURNING, it writes.
        Statement::Copy {
            to: true,
            target: CopyTarget::Stdout,
            source,
            ..
        } => match source {
            CopySource::Table { .. } => Analysis::Read,
            CopySource::Query(query) if only_reads(&query.body) => {
                match analyze_query(query, POSTGRES_NAMES)? {
                    Analysis::Read => Analysis::Read,
                    _ => {
                        return Err(Error::unsupported(
                            "COPY of a locking read (SELECT … FOR UPDATE)",
                        ));
                    }
                }
            }
            CopySource::Query(_) => {
                return Err(Error::unsupported("COPY of a write's RETURNING"));
            }
        },
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

fn analyze_query(query: &Query, names: Names) -> Result<Analysis, Error> {
    use sqlparser::ast::{LockType, NonBlock};
    refuse_data_modifying_ctes(query)?;
    if query.locks.is_empty() {
        return Ok(Analysis::Read);
    }
    if query
        .locks
        .iter()
        .any(|l| l.nonblock == Some(NonBlock::SkipLocked))
    {
        return Err(Error::unchecked(
            "SELECT … SKIP LOCKED (tandem cannot make the read pass over rows another global transaction holds)",
        ));
    }
    let single = match (query.body.as_ref(), query.locks.as_slice()) {
        (SetExpr::Select(select), [lock]) if query.with.is_none() => match select.from.as_slice() {
            [only] => single_table(only, names)
                .ok()
                .map(|(table, alias)| LockedRead {
                    table,
                    alias,
                    selection: select.selection.as_ref().map(|e| e.to_string()),
                    shared: lock.lock_type == LockType::Share,
                    nowait: lock.nonblock == Some(NonBlock::Nowait),
                }),
            _ => None,
        },
        _ => None,
    };
    Ok(Analysis::LockingRead(single))
}

/// Whether a query body only reads: no INSERT, UPDATE, DELETE or MERGE as (a part of)
/// it, at any depth of parentheses and set operations (a data-modifying CTE is refused
/// by `analyze_query`).
fn only_reads(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => true,
        SetExpr::Query(query) => only_reads(&query.body),
        SetExpr::SetOperation { left, right, .. } => only_reads(left) && only_reads(right),
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => false,
    }
}

/// PostgreSQL's `SELECT … INTO t` is `CREATE TABLE t AS SELECT …` (MySQL's INTO names
/// variables or a file instead).
fn creates_a_table(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(select) => select.into.is_some(),
        SetExpr::SetOperation { left, right, .. } => {
            creates_a_table(left) || creates_a_table(right)
        }
        SetExpr::Query(query) => creates_a_table(&query.body),
        _ => false,
    }
}

/// `WITH x AS (UPDATE …) SELECT …` writes where tandem would not capture it.
fn refuse_data_modifying_ctes(query: &Query) -> Result<(), Error> {
    let writes = |body: &SetExpr| {
        matches!(
            body,
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_)
        )
    };
    if writes(&query.body) && query.with.is_some() {
        // Its before image would have to repeat the WITH clause, which tandem does not.
        return Err(Error::unsupported("a write with a WITH clause"));
    }
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
    refuse_writes_in_operands(&query.body)
}

/// A query in parentheses, or an operand of UNION and the like, is a query of its own:
/// `(WITH x AS (UPDATE …) SELECT …)` writes as the same without parentheses does.
fn refuse_writes_in_operands(body: &SetExpr) -> Result<(), Error> {
    match body {
        SetExpr::Query(query) => refuse_data_modifying_ctes(query),
        SetExpr::SetOperation { left, right, .. } => {
            refuse_writes_in_operands(left)?;
            refuse_writes_in_operands(right)
        }
        _ => Ok(()),
    }
}

/// The rows of an INSERT … VALUES, each value as `value_of` reads it; None for any
/// other source (INSERT … SELECT, DEFAULT VALUES).
fn values_rows(
    insert: &sqlparser::ast::Insert,
    names: Names,
    value_of: fn(&Expr) -> InsertValue,
) -> Result<Option<InsertRows>, Error> {
    let Some(SetExpr::Values(values)) = insert.source.as_deref().map(|q| q.body.as_ref()) else {
        return Ok(None);
    };
    let rows: Vec<Vec<InsertValue>> = values
        .rows
        .iter()
        .map(|row| row.content.iter().map(value_of).collect())
        .collect();
    let columns = if insert.columns.is_empty() {
        // `VALUES ()` gives every column its default; any other row, every column.
        rows.iter().all(Vec::is_empty).then(Vec::new)
    } else {
        let columns = insert
            .columns
            .iter()
            .map(|c| match c.0.last() {
                Some(ObjectNamePart::Identifier(ident)) => Ok(names.column(ident)),
                _ => Err(Error::unsupported("an INSERT column with a computed name")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Some(columns)
    };
    let double_quoted = values
        .rows
        .iter()
        .any(|row| row.content.iter().any(double_quoted));
    Ok(Some(InsertRows {
        columns,
        rows,
        double_quoted,
    }))
}

/// One VALUES entry: a literal (signed or not) or a placeholder is a constant.
fn insert_value(expr: &Expr) -> InsertValue {
    let literal = |e: &Expr| matches!(e, Expr::Value(_));
    match expr {
        Expr::Value(v) if v.value == Value::Null => InsertValue::Null,
        Expr::Identifier(ident)
            if ident.quote_style.is_none() && ident.value.eq_ignore_ascii_case("default") =>
        {
            InsertValue::Default
        }
        _ if literal(expr) => InsertValue::Constant(expr.to_string()),
        Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr: inner,
        } if literal(inner) => InsertValue::Constant(expr.to_string()),
        _ => InsertValue::Computed(expr.to_string()),
    }
}

/// As [`insert_value`], with PostgreSQL's casts of a constant (`$1::int8`,
/// `'a'::text`, `CAST(1 AS int2)`) constants too: drivers and ORMs write them.
fn pg_insert_value(expr: &Expr) -> InsertValue {
    match expr {
        Expr::Cast { expr: inner, .. } => match pg_insert_value(inner) {
            InsertValue::Constant(_) => InsertValue::Constant(expr.to_string()),
            _ => InsertValue::Computed(expr.to_string()),
        },
        Expr::Nested(inner) => match pg_insert_value(inner) {
            InsertValue::Constant(_) => InsertValue::Constant(expr.to_string()),
            other => other,
        },
        _ => insert_value(expr),
    }
}

/// The VALUES rows of an upsert, as SQL per column.
fn upsert(insert: &sqlparser::ast::Insert, target: &[Ident]) -> Result<Upsert, Error> {
    let Some(source) = insert.source.as_deref() else {
        return Err(Error::unsupported(
            "INSERT … DEFAULT VALUES … ON CONFLICT DO UPDATE",
        ));
    };
    let columns: Vec<String> = insert
        .columns
        .iter()
        .filter_map(|c| match c.0.last() {
            Some(ObjectNamePart::Identifier(ident)) => Some(fold(ident)),
            _ => None,
        })
        .collect();
    if columns.len() != insert.columns.len() {
        return Err(Error::unsupported(
            "INSERT … ON CONFLICT DO UPDATE with a column it cannot name",
        ));
    }
    let (rows, select) = match source.body.as_ref() {
        SetExpr::Values(values)
            if source.with.is_none()
                && source.order_by.is_none()
                && source.limit_clause.is_none()
                && source.fetch.is_none() =>
        {
            (
                values
                    .rows
                    .iter()
                    .map(|row| row.content.iter().map(ToString::to_string).collect())
                    .collect(),
                None,
            )
        }
        // Its rows are read again for the before image: their columns are named by the
        // INSERT's list (without one, how many it gives is not known in advance).
        _ if columns.is_empty() => {
            return Err(Error::unsupported(
                "INSERT … SELECT … ON CONFLICT DO UPDATE without a column list",
            ));
        }
        _ => (Vec::new(), Some(source.to_string())),
    };
    Ok(Upsert {
        target: target.iter().map(fold).collect(),
        columns,
        rows,
        select,
    })
}

fn join_list(tables: &[TableWithJoins]) -> String {
    tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn single_table(t: &TableWithJoins, names: Names) -> Result<(TableRef, Option<String>), Error> {
    if !t.joins.is_empty() {
        return Err(Error::unsupported("a write over a join"));
    }
    match &t.relation {
        TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } => Ok((
            table_ref(name, names)?,
            alias.as_ref().map(|a| names.table(&a.name)),
        )),
        _ => Err(Error::unsupported(
            "a write to something other than a table",
        )),
    }
}

fn table_ref(name: &ObjectName, names: Names) -> Result<TableRef, Error> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Ok(names.table(ident)),
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

/// Whether an upsert's DO UPDATE assignment sets a column to itself: `c = t.c`
/// (`tables`: the table's name and alias), or `c = excluded.c` for a column of the
/// conflict `target` (the row met is the one equal in it).
fn keeps_its_value(assignment: &Assignment, target: &[String], tables: &[String]) -> bool {
    let AssignmentTarget::ColumnName(assigned) = &assignment.target else {
        return false;
    };
    let Some(column) = assigned.0.last().and_then(|p| p.as_ident()).map(fold) else {
        return false;
    };
    match &assignment.value {
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            let (qualifier, name) = (fold(&parts[0]), fold(&parts[1]));
            name == column
                && ((qualifier == "excluded" && target.contains(&column))
                    || tables.contains(&qualifier))
        }
        _ => false,
    }
}

fn assigned_columns(assignments: &[Assignment], names: Names) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for a in assignments {
        let targets: Vec<&ObjectName> = match &a.target {
            AssignmentTarget::ColumnName(n) => vec![n],
            AssignmentTarget::Tuple(ns) => ns.iter().collect(),
        };
        for n in targets {
            let column = if names.qualified_targets {
                n.0.last()
            } else {
                n.0.first()
            };
            match column {
                Some(ObjectNamePart::Identifier(ident)) => out.push(names.column(ident)),
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

/// PostgreSQL folds unquoted identifiers to lower case: ASCII letters only, in a
/// multibyte encoding such as UTF8 (`Ś1` names the table `Ś1`).
fn fold(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests;
