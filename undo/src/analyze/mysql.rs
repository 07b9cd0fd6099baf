//! MySQL/MariaDB statements: their text made parseable (numbered placeholders, the
//! syntax sqlparser lacks), then analysed into the same [`Analysis`] as PostgreSQL's.
//!
//! Owns MySQL's name rules (tables as written, columns case-insensitive) and its write
//! forms: ORDER BY/LIMIT, multi-table UPDATE/DELETE, INSERT IGNORE, ON DUPLICATE KEY
//! UPDATE, REPLACE, INSERT … SET. Never changes what the statement means: every edit of
//! the text only respells it. Invariant: the n-th `?` of the text is `?n` in every
//! fragment an analysis holds.

use super::split::Offsets;
use super::{
    Analysis, InsertRows, Names, OnDuplicate, RECURSION_LIMIT, SavepointOp, TableRef, Write,
    WriteKind, analyze_query, assigned_columns, explain_analyze, explain_analyze_target,
    insert_value, join_list, refuse_data_modifying_ctes, single_table, table_ref, values_rows,
};
use crate::error::Error;
use sqlparser::ast::{
    Assignment, AssignmentTarget, Delete, Expr, FromTable, Insert, ObjectName, ObjectNamePart,
    OnInsert, OrderByExpr, Set, Statement, TableFactor, TableObject, TableWithJoins, Update,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

pub(super) const MYSQL_NAMES: Names = Names {
    fold_tables: false,
    lower_columns: true,
    doubled_quotes: true,
    qualified_targets: true,
};

/// A savepoint's name as MySQL compares it.
fn savepoint_name(name: &sqlparser::ast::Ident) -> String {
    MYSQL_NAMES.as_named(name).to_lowercase()
}

/// Parses `sql` as MySQL, after [`respell`].
pub(super) fn parse(
    sql: &str,
    parse_error: impl Fn(String) -> Error,
) -> Result<Vec<Statement>, Error> {
    let text = respell(sql, &parse_error)?;
    // Literals keep their escapes as written: fragments of the statement go back to the
    // server in tandem's own SQL, and an unescaped `'a\\b'` would come back as `'a\b'`.
    Parser::new(&MySqlDialect {})
        .with_options(sqlparser::parser::ParserOptions::new().with_unescape(false))
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(&text)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| match unparsed_form(&text) {
            Some(what) => Error::unsupported(what),
            None => parse_error(e.to_string()),
        })
}

/// What a statement the parser does not read is, where its first words say: a clearer
/// refusal than the parser's complaint about the word it stopped at.
fn unparsed_form(sql: &str) -> Option<&'static str> {
    let tokens = Tokenizer::new(&MySqlDialect {}, sql).tokenize().ok()?;
    let mut words = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .map(|t| match t {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
            _ => String::new(),
        });
    let first = words.next()?;
    let second = words.next().unwrap_or_default();
    Some(match (first.as_str(), second.as_str()) {
        ("PREPARE", _) => "SQL-level PREPARE … FROM (use the protocol's prepared statements)",
        ("EXECUTE", "IMMEDIATE") => "EXECUTE IMMEDIATE",
        ("LOAD", "DATA" | "XML") => {
            "LOAD DATA or LOAD XML (rows loaded from a file are not captured)"
        }
        ("BEGIN", "NOT") => "MariaDB's compound statement BEGIN NOT ATOMIC … END",
        _ => return None,
    })
}

/// Whether the tokenizer took a non-ASCII space character (U+00A0, say) for the space
/// that makes `--` a comment: MySQL counts only ASCII ones, and to it such a character
/// is part of a name, so that text tandem reads as a comment would run. (Between
/// tokens the tokenizer reads such characters as part of a name too.)
fn comment_read_otherwise(tokens: &[TokenWithSpan]) -> bool {
    use sqlparser::tokenizer::Whitespace;
    tokens.iter().any(|t| {
        matches!(&t.token, Token::Whitespace(Whitespace::SingleLineComment { prefix, comment })
            if prefix == "--" && comment.chars().next().is_some_and(|c| !c.is_ascii()))
    })
}

/// The version of a `/*!NNNNN … */` comment that MySQL and MariaDB may read
/// differently: five digits from 50700 (MariaDB takes them for MySQL's and skips them),
/// or six (a version MariaDB runs only up to its own). Text in literals counts too: it
/// only makes tandem refuse.
fn version_read_otherwise(sql: &str) -> Option<u32> {
    sql.match_indices("/*!").find_map(|(at, _)| {
        let digits: String = sql[at + 3..]
            .chars()
            .take_while(char::is_ascii_digit)
            .take(7)
            .collect();
        let version: u32 = digits.parse().ok()?;
        match digits.len() {
            5 if version >= 50700 => Some(version),
            6 => Some(version),
            _ => None,
        }
    })
}

/// The statement's text with each `?` numbered in order (`?1` …), `LOCK IN SHARE MODE`
/// spelled `FOR SHARE`, UPDATE's and DELETE's modifiers (`LOW_PRIORITY`, `QUICK`,
/// `IGNORE`: they never widen which rows are written) dropped, and the tables of
/// `UPDATE a, b SET` joined with `CROSS JOIN`, which MySQL defines as the same join.
fn respell(sql: &str, parse_error: &impl Fn(String) -> Error) -> Result<String, Error> {
    if let Some(version) = version_read_otherwise(sql) {
        return Err(Error::unsupported(format!(
            "an executable comment for version {version} (MariaDB skips `/*!` comments for MySQL 5.7 and later, and for versions above its own; MySQL runs them: tandem cannot tell which server reads it)"
        )));
    }
    let tokens = Tokenizer::new(&MySqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| parse_error(e.to_string()))?;
    if !sql.is_ascii() && comment_read_otherwise(&tokens) {
        return Err(Error::unsupported(
            "`--` followed by a space character other than ASCII's (MySQL reads no comment there, where tandem's parser reads one)",
        ));
    }
    let tokens: Vec<&TokenWithSpan> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let offsets = Offsets::new(sql);
    let range = |from: &TokenWithSpan, to: &TokenWithSpan| {
        Some((offsets.of(from.span.start)?, offsets.of(to.span.end)?))
    };
    let mut edits: Vec<((usize, usize), String)> = Vec::new();
    let mut placeholders = 0;
    let mut first_word: Option<String> = None;
    let mut before_set = false;
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(t) = tokens.get(i) {
        let mut edit = |from: usize, to: usize, text: &str| -> Result<(), Error> {
            let at = range(tokens[from], tokens[to])
                .ok_or_else(|| parse_error("a token outside the text".into()))?;
            edits.push((at, text.to_owned()));
            Ok(())
        };
        match &t.token {
            Token::SemiColon => {
                first_word = None;
                before_set = false;
                depth = 0;
            }
            Token::Placeholder(p) if p == "?" => {
                placeholders += 1;
                edit(i, i, &format!("?{placeholders}"))?;
            }
            Token::Placeholder(p) => {
                return Err(Error::unsupported(format!(
                    "the placeholder {p} (MySQL binds ? only)"
                )));
            }
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Comma if before_set && depth == 0 => edit(i, i, " CROSS JOIN")?,
            Token::Word(_)
                if first_word.is_none()
                    && plain_word(t).as_deref() == Some("SET")
                    && tokens.get(i + 1).and_then(|n| plain_word(n)).as_deref()
                        == Some("STATEMENT") =>
            {
                // Read as the statement after FOR: the settings it may name change
                // nothing tandem's own statements read.
                let statement = settings_for_one_statement(&tokens, i)?;
                edit(i, statement - 1, "")?;
                i = statement;
                continue;
            }
            Token::Word(_) if first_word.is_none() => {
                let word = plain_word(t).unwrap_or_default();
                let modifiers: &[&str] = match word.as_str() {
                    "UPDATE" => &["LOW_PRIORITY", "IGNORE"],
                    "DELETE" => &["LOW_PRIORITY", "QUICK", "IGNORE"],
                    _ => &[],
                };
                while let Some(next) = tokens.get(i + 1).and_then(|n| plain_word(n)) {
                    if !modifiers.contains(&next.as_str()) {
                        break;
                    }
                    i += 1;
                    edit(i, i, "")?;
                }
                before_set = word == "UPDATE";
                first_word = Some(word);
            }
            Token::Word(_) => {
                let words: Vec<String> = (i..i + 4)
                    .map(|j| {
                        tokens
                            .get(j)
                            .and_then(|n| plain_word(n))
                            .unwrap_or_default()
                    })
                    .collect();
                if words == ["LOCK", "IN", "SHARE", "MODE"] {
                    edit(i, i + 3, "FOR SHARE")?;
                    i += 3;
                } else if before_set && depth == 0 && words[0] == "SET" {
                    before_set = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut text = String::with_capacity(sql.len() + edits.len() * 4);
    let mut from = 0;
    for ((start, end), replacement) in edits {
        text.push_str(&sql[from..start]);
        text.push_str(&replacement);
        from = end;
    }
    text.push_str(&sql[from..]);
    Ok(text)
}

/// Settings MariaDB's `SET STATEMENT … FOR` may give a statement that tandem reads
/// past: limits, timeouts and the optimizer's choices, which change whether and how
/// fast the statement runs, never which rows it reads or writes nor how tandem's own
/// statements read them.
const SETTINGS_READ_PAST: &[&str] = &[
    "MAX_STATEMENT_TIME",
    "LOCK_WAIT_TIMEOUT",
    "INNODB_LOCK_WAIT_TIMEOUT",
    "LONG_QUERY_TIME",
    "OPTIMIZER_SWITCH",
    "OPTIMIZER_SEARCH_DEPTH",
    "OPTIMIZER_PRUNE_LEVEL",
    "JOIN_BUFFER_SIZE",
    "SORT_BUFFER_SIZE",
    "READ_BUFFER_SIZE",
    "READ_RND_BUFFER_SIZE",
    "TMP_TABLE_SIZE",
    "MAX_HEAP_TABLE_SIZE",
];

/// Where the statement after `SET STATEMENT a = 1, b = 2 FOR` begins, `set` being the
/// index of SET: the token after FOR. Refused if it sets anything but
/// `SETTINGS_READ_PAST`, or binds a parameter (whose number would shift).
fn settings_for_one_statement(tokens: &[&TokenWithSpan], set: usize) -> Result<usize, Error> {
    let mut i = set + 2;
    let mut expect_name = true;
    let mut depth = 0usize;
    while let Some(t) = tokens.get(i) {
        match &t.token {
            Token::Word(_) if expect_name => {
                let name = plain_word(t).unwrap_or_default();
                if !SETTINGS_READ_PAST.contains(&name.as_str()) {
                    return Err(Error::unsupported(format!(
                        "MariaDB's SET STATEMENT of {} (only limits, timeouts and optimizer settings may be set so)",
                        if name.is_empty() {
                            "a quoted name"
                        } else {
                            &name
                        }
                    )));
                }
                expect_name = false;
            }
            Token::Word(_) if depth == 0 && plain_word(t).as_deref() == Some("FOR") => {
                return Ok(i + 1);
            }
            Token::Placeholder(_) => {
                return Err(Error::unsupported(
                    "a parameter in MariaDB's SET STATEMENT … FOR",
                ));
            }
            Token::SemiColon => break,
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => expect_name = true,
            _ => {}
        }
        i += 1;
    }
    Err(Error::unsupported(
        "MariaDB's SET STATEMENT without FOR and a statement",
    ))
}

/// The time limit MariaDB's `SET STATEMENT max_statement_time = s FOR …` gives the
/// statement `sql` (Connector/J's query timeout comes so); None without one, or for 0,
/// which the server reads as no limit.
pub fn statement_time_limit(sql: &str) -> Option<std::time::Duration> {
    let tokens = Tokenizer::new(&MySqlDialect {}, sql).tokenize().ok()?;
    let mut tokens = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_)));
    let word = |t: Option<&Token>| match t {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    };
    if word(tokens.next()).as_deref() != Some("SET")
        || word(tokens.next()).as_deref() != Some("STATEMENT")
    {
        return None;
    }
    // Where the reading is: at a setting's name, at its `=`, or in its value.
    #[derive(PartialEq)]
    enum At {
        Name,
        Equals,
        Value,
    }
    let mut at = At::Name;
    let mut limit = None;
    let mut depth = 0usize;
    let mut setting = String::new();
    for t in tokens {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::SemiColon => return None,
            _ if depth > 0 => {}
            Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("FOR") => {
                return limit;
            }
            Token::Word(w) if at == At::Name => {
                setting = w.value.to_ascii_uppercase();
                at = At::Equals;
            }
            Token::Eq if at == At::Equals => at = At::Value,
            Token::Number(n, _) if at == At::Value && setting == "MAX_STATEMENT_TIME" => {
                let seconds: f64 = n.parse().ok()?;
                limit = (seconds > 0.0)
                    .then(|| std::time::Duration::try_from_secs_f64(seconds).ok())
                    .flatten();
            }
            Token::Comma => at = At::Name,
            _ => {}
        }
    }
    None
}

/// An unquoted word, upper case.
fn plain_word(t: &TokenWithSpan) -> Option<String> {
    match &t.token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

/// `sql` with its numbered placeholders (`?n`) made plain `?`, and for each, in order,
/// the 0-based index of the statement parameter it stands for.
pub(crate) fn bind_positionally(sql: &str) -> Result<(String, Vec<usize>), Error> {
    let malformed = |message: String| Error::Parse {
        dialect: "mysql",
        excerpt: sql.chars().take(80).collect(),
        message,
    };
    let tokens = Tokenizer::new(&MySqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| malformed(e.to_string()))?;
    let offsets = Offsets::new(sql);
    let mut text = String::with_capacity(sql.len());
    let mut params = Vec::new();
    let mut from = 0;
    for t in &tokens {
        let Token::Placeholder(p) = &t.token else {
            continue;
        };
        let n: usize = p
            .strip_prefix('?')
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| malformed(format!("the placeholder {p} is not numbered")))?;
        let (Some(start), Some(end)) = (offsets.of(t.span.start), offsets.of(t.span.end)) else {
            return Err(malformed("a placeholder outside the text".into()));
        };
        text.push_str(&sql[from..start]);
        text.push('?');
        params.push(n - 1);
        from = end;
    }
    text.push_str(&sql[from..]);
    Ok((text, params))
}

pub(super) fn analyze_statement(statement: &Statement) -> Result<Analysis, Error> {
    if let Some(target) = explain_analyze_target(statement) {
        return explain_analyze(target, analyze_statement);
    }
    Ok(match statement {
        Statement::Query(query) => analyze_query(query, MYSQL_NAMES)?,
        Statement::Insert(insert) => Analysis::Write(analyze_insert(insert)?),
        Statement::Update(update) => Analysis::Write(analyze_update(update)?),
        Statement::Delete(delete) => Analysis::Write(analyze_delete(delete)?),
        Statement::StartTransaction { .. } => Analysis::Begin,
        Statement::Commit { chain: false, .. } => Analysis::Commit,
        Statement::Rollback {
            chain: false,
            savepoint: None,
        } => Analysis::Rollback,
        Statement::Commit { .. }
        | Statement::Rollback {
            savepoint: None, ..
        } => {
            return Err(Error::unsupported("COMMIT or ROLLBACK AND CHAIN"));
        }
        Statement::Set(set) => analyze_set(set)?,
        Statement::Execute { .. } => {
            return Err(Error::unsupported(
                "EXECUTE of a SQL-level prepared statement (use the protocol's prepared statements)",
            ));
        }
        // MySQL compares savepoint names without regard to case.
        Statement::Rollback {
            savepoint: Some(name),
            ..
        } => Analysis::Savepoint(SavepointOp::RollbackTo(savepoint_name(name))),
        Statement::Savepoint { name } => {
            Analysis::Savepoint(SavepointOp::Set(savepoint_name(name)))
        }
        Statement::ReleaseSavepoint { name } => {
            Analysis::Savepoint(SavepointOp::Release(savepoint_name(name)))
        }
        Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowCollation { .. }
        | Statement::Use(_)
        | Statement::ExplainTable { .. }
        | Statement::Explain { .. }
        | Statement::Deallocate { .. }
        | Statement::UnlockTables => Analysis::Other,
        Statement::Truncate { .. } => return Err(Error::unsupported("TRUNCATE")),
        Statement::LockTables { .. } => {
            return Err(Error::unsupported(
                "LOCK TABLES (it commits the transaction implicitly)",
            ));
        }
        Statement::Call(_) => {
            return Err(Error::unsupported(
                "CALL (tandem cannot see what a procedure writes)",
            ));
        }
        Statement::CreateTable { .. }
        | Statement::AlterTable { .. }
        | Statement::Drop { .. }
        | Statement::CreateIndex { .. }
        | Statement::CreateView { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateFunction { .. }
        | Statement::CreateProcedure { .. }
        | Statement::CreateTrigger { .. }
        | Statement::DropTrigger { .. }
        | Statement::RenameTable(_) => return Err(Error::unsupported("DDL")),
        other => {
            let text = other.to_string();
            let first: Vec<&str> = text.split_whitespace().take(2).collect();
            return Err(Error::unsupported(first.join(" ")));
        }
    })
}

/// `SET autocommit = 1` commits the open transaction, as COMMIT does; any other SET
/// leaves it open.
fn analyze_set(set: &Set) -> Result<Analysis, Error> {
    let assignments: Vec<(&ObjectName, &Expr)> = match set {
        Set::SingleAssignment {
            variable, values, ..
        } => values.iter().map(|v| (variable, v)).collect(),
        Set::MultipleAssignments { assignments } => {
            assignments.iter().map(|a| (&a.name, &a.value)).collect()
        }
        _ => vec![],
    };
    let mut commits = false;
    for (name, value) in assignments {
        let variable = name.to_string().to_ascii_lowercase();
        let variable = variable.trim_start_matches('@');
        let variable = variable
            .strip_prefix("session.")
            .or_else(|| variable.strip_prefix("local."))
            .unwrap_or(variable);
        if variable != "autocommit" {
            continue;
        }
        match value.to_string().to_ascii_lowercase().as_str() {
            "0" | "off" | "false" => {}
            "1" | "on" | "true" => commits = true,
            _ => {
                return Err(Error::unsupported(
                    "SET autocommit to anything but a literal",
                ));
            }
        }
    }
    Ok(if commits {
        Analysis::Commit
    } else {
        Analysis::Other
    })
}

fn analyze_update(update: &Update) -> Result<Write, Error> {
    if update.from.is_some() {
        return Err(Error::unsupported("UPDATE … FROM"));
    }
    let targets = assignment_targets(&update.assignments)?;
    let mut write = if update.table.joins.is_empty() {
        let (table, alias) = single_table(&update.table, MYSQL_NAMES)?;
        single_table_order(
            Write::of(WriteKind::Update, table, alias),
            &update.order_by,
            update.limit.as_ref(),
        )
    } else {
        let written = written_by_assignments(&targets)?;
        let (table, alias) = resolve(written, std::slice::from_ref(&update.table))?;
        Write {
            joined: Some(update.table.to_string()),
            ..Write::of(WriteKind::Update, table, alias)
        }
    };
    write.selection = update.selection.as_ref().map(ToString::to_string);
    write.assigned = assigned_columns(&update.assignments, MYSQL_NAMES)?;
    write.has_returning = update.returning.is_some();
    Ok(write)
}

fn analyze_delete(delete: &Delete) -> Result<Write, Error> {
    let from = match &delete.from {
        FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
    };
    // DELETE t FROM <tables>, or DELETE FROM t USING <tables>: t is written.
    let (written, joined): (Vec<&ObjectName>, &[TableWithJoins]) = match &delete.using {
        Some(using) => (
            from.iter()
                .map(|t| match &t.relation {
                    TableFactor::Table { name, .. } if t.joins.is_empty() => Ok(name),
                    _ => Err(Error::unsupported("DELETE FROM a join … USING")),
                })
                .collect::<Result<_, _>>()?,
            using,
        ),
        None if !delete.tables.is_empty() => (delete.tables.iter().collect(), from),
        None => {
            let [only] = from.as_slice() else {
                return Err(Error::unsupported("DELETE from several tables"));
            };
            let (table, alias) = single_table(only, MYSQL_NAMES)?;
            let mut write = single_table_order(
                Write::of(WriteKind::Delete, table, alias),
                &delete.order_by,
                delete.limit.as_ref(),
            );
            write.selection = delete.selection.as_ref().map(ToString::to_string);
            write.has_returning = delete.returning.is_some();
            return Ok(write);
        }
    };
    let [written] = written.as_slice() else {
        return Err(Error::unsupported("a DELETE from several tables at once"));
    };
    let parts = name_parts(written)?;
    let (table, alias) = resolve(&parts, joined)?;
    Ok(Write {
        selection: delete.selection.as_ref().map(ToString::to_string),
        has_returning: delete.returning.is_some(),
        joined: Some(join_list(joined)),
        ..Write::of(WriteKind::Delete, table, alias)
    })
}

/// A single-table write's ORDER BY and LIMIT, which the before image repeats.
fn single_table_order(write: Write, order_by: &[OrderByExpr], limit: Option<&Expr>) -> Write {
    let order_columns = order_by
        .iter()
        .filter_map(|o| match &o.expr {
            Expr::Identifier(ident) => Some(MYSQL_NAMES.column(ident)),
            Expr::CompoundIdentifier(parts) => parts.last().map(|i| MYSQL_NAMES.column(i)),
            _ => None,
        })
        .collect();
    let order_by = (!order_by.is_empty()).then(|| {
        order_by
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    });
    Write {
        order_by,
        order_columns,
        limit: limit.map(ToString::to_string),
        ..write
    }
}

/// Each assignment's target as (qualifier parts, column).
fn assignment_targets(assignments: &[Assignment]) -> Result<Vec<Vec<String>>, Error> {
    let mut out = Vec::new();
    for a in assignments {
        let names: Vec<&ObjectName> = match &a.target {
            AssignmentTarget::ColumnName(n) => vec![n],
            AssignmentTarget::Tuple(ns) => ns.iter().collect(),
        };
        for n in names {
            out.push(name_parts(n)?);
        }
    }
    Ok(out)
}

/// The one table every assignment of a multi-table UPDATE names.
fn written_by_assignments(targets: &[Vec<String>]) -> Result<&[String], Error> {
    let mut qualifiers = targets.iter().map(|t| &t[..t.len().saturating_sub(1)]);
    let first = qualifiers.next().unwrap_or_default();
    if first.is_empty() {
        return Err(Error::unsupported(
            "a multi-table UPDATE with an assignment that does not name its table",
        ));
    }
    if qualifiers.any(|q| q != first) {
        return Err(Error::unsupported(
            "a multi-table UPDATE that writes more than one table",
        ));
    }
    Ok(first)
}

/// The table (and alias) that `name` means among the tables of `from`: its alias, or
/// its name where it has no alias.
fn resolve(name: &[String], from: &[TableWithJoins]) -> Result<(TableRef, Option<String>), Error> {
    let factors = from
        .iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)));
    let mut found = Vec::new();
    for factor in factors {
        let TableFactor::Table {
            name: table, alias, ..
        } = factor
        else {
            continue;
        };
        let table_parts = name_parts(table)?;
        let matches = match alias {
            Some(alias) => name == [MYSQL_NAMES.table(&alias.name)],
            None => name == table_parts.as_slice() || name == &table_parts[table_parts.len() - 1..],
        };
        if matches {
            found.push((
                table_ref(table, MYSQL_NAMES)?,
                alias.as_ref().map(|a| MYSQL_NAMES.table(&a.name)),
            ));
        }
    }
    match <[_; 1]>::try_from(found) {
        Ok([only]) => Ok(only),
        Err(_) => Err(Error::unsupported(format!(
            "a multi-table write whose written table {} tandem cannot tell among its tables",
            name.join(".")
        ))),
    }
}

fn name_parts(name: &ObjectName) -> Result<Vec<String>, Error> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Ok(MYSQL_NAMES.table(ident)),
            _ => Err(Error::unsupported("a computed name")),
        })
        .collect()
}

fn analyze_insert(insert: &Insert) -> Result<Write, Error> {
    let TableObject::TableName(name) = &insert.table else {
        return Err(Error::unsupported("INSERT into a table function"));
    };
    let (on_duplicate, assigned, assigned_as_inserted) = match &insert.on {
        _ if insert.replace_into => (OnDuplicate::Replace, vec![], vec![]),
        Some(OnInsert::DuplicateKeyUpdate(assignments)) => (
            OnDuplicate::Update,
            assigned_columns(assignments, MYSQL_NAMES)?,
            assignments
                .iter()
                .filter_map(assigns_the_inserted_value)
                .collect(),
        ),
        Some(_) => return Err(Error::unsupported("INSERT … ON CONFLICT")),
        None if insert.ignore => (OnDuplicate::Ignore, vec![], vec![]),
        None => (OnDuplicate::Error, vec![], vec![]),
    };
    if let Some(source) = &insert.source {
        refuse_data_modifying_ctes(source)?;
    }
    Ok(Write {
        assigned,
        assigned_as_inserted,
        has_returning: insert.returning.is_some(),
        on_duplicate,
        rows: Some(insert_rows(insert)?),
        ..Write::of(WriteKind::Insert, table_ref(name, MYSQL_NAMES)?, None)
    })
}

/// The column an ON DUPLICATE KEY UPDATE assignment sets to the value the row would
/// have inserted: `c = VALUES(c)` (or MariaDB's `VALUE(c)`), the column named alike on
/// both sides.
fn assigns_the_inserted_value(assignment: &Assignment) -> Option<String> {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments};
    let AssignmentTarget::ColumnName(target) = &assignment.target else {
        return None;
    };
    let Some(ObjectNamePart::Identifier(target)) = target.0.last() else {
        return None;
    };
    let Expr::Function(call) = &assignment.value else {
        return None;
    };
    let [ObjectNamePart::Identifier(name)] = &call.name.0[..] else {
        return None;
    };
    let plain = call.filter.is_none()
        && call.over.is_none()
        && call.within_group.is_empty()
        && matches!(call.parameters, FunctionArguments::None);
    if !plain
        || !(name.value.eq_ignore_ascii_case("values") || name.value.eq_ignore_ascii_case("value"))
    {
        return None;
    }
    let FunctionArguments::List(list) = &call.args else {
        return None;
    };
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(column)))] = &list.args[..]
    else {
        return None;
    };
    let target = MYSQL_NAMES.column(target);
    (list.duplicate_treatment.is_none()
        && list.clauses.is_empty()
        && MYSQL_NAMES.column(column) == target)
        .then_some(target)
}

fn insert_rows(insert: &Insert) -> Result<InsertRows, Error> {
    if !insert.assignments.is_empty() {
        let columns = assigned_columns(&insert.assignments, MYSQL_NAMES)?;
        let row = insert
            .assignments
            .iter()
            .map(|a| insert_value(&a.value))
            .collect();
        return Ok(InsertRows {
            columns: Some(columns),
            rows: vec![row],
            double_quoted: insert
                .assignments
                .iter()
                .any(|a| super::double_quoted(&a.value)),
        });
    }
    values_rows(insert, MYSQL_NAMES, insert_value)?.ok_or_else(|| {
        Error::unsupported("INSERT … SELECT (MySQL reports no keys of the rows it inserts)")
    })
}
