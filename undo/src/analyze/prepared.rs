//! SQL-level statements that run another statement's text: `EXECUTE` of a statement
//! prepared by name (`PREPARE`), MariaDB's `EXECUTE IMMEDIATE` and its `ANALYZE` of a
//! statement (which runs it). What such a statement may change is what that text may;
//! a session follows its own `PREPARE`s to know the text a name stands for.

use super::tokens;
use crate::dialect::{Dialect, Grammar};
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// What one statement does with other statements' texts, read from its first tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SqlLevel {
    /// `PREPARE name FROM …` (MySQL), `PREPARE name AS statement` (PostgreSQL): the
    /// text, None when it is not a literal (a variable, an expression) or does not
    /// parse.
    Prepare(String, Option<String>),
    /// `DEALLOCATE PREPARE name`, `DROP PREPARE name`.
    Deallocate(String),
    /// Something after which no name can be trusted to stand for the text last seen
    /// prepared under it: `CALL` (a procedure may prepare statements), PostgreSQL's
    /// `DO` and `DEALLOCATE ALL`.
    ForgetAll,
    /// An `EXECUTE` whose statement tandem cannot name (`EXECUTE U&"…"`).
    RunsUnknown,
    /// `EXECUTE name …`.
    Execute(String),
    /// MariaDB's `EXECUTE IMMEDIATE`: the text it runs, None when it is not a literal.
    Immediate(Option<String>),
    /// What runs the statement in its text: MariaDB's `ANALYZE [FORMAT = JSON]
    /// statement`, `SET STATEMENT … FOR statement`.
    Runs(String),
}

/// A change a statement makes to the names of a session's SQL-level prepared
/// statements, in the order its pieces make them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreparedChange {
    /// The name now stands for this text (None: one tandem cannot read).
    Prepared(String, Option<String>),
    /// The name stands for nothing tandem knows any more.
    Forgotten(String),
    /// No name stands for anything tandem knows any more.
    AllForgotten,
}

/// Reads `piece` (one statement) as a [`SqlLevel`] statement, if it is one.
pub(super) fn sql_level(dialect: &dyn Dialect, piece: &str) -> Option<SqlLevel> {
    let mysql = dialect.grammar() == Grammar::MySql;
    let all = tokens(dialect, piece)?;
    // The significant tokens, and where each stands among all of them.
    let (at_token, words): (Vec<usize>, Vec<&Token>) = all
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
        .unzip();
    let word = |i: usize| match words.get(i) {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_lowercase()),
        _ => None,
    };
    // Prepared statements' names: case-insensitive on MySQL, folded unless quoted on
    // PostgreSQL.
    let name = |i: usize| match words.get(i) {
        Some(Token::Word(w)) if mysql || w.quote_style.is_none() => {
            Some(w.value.to_ascii_lowercase())
        }
        Some(Token::Word(w)) => Some(w.value.clone()),
        _ => None,
    };
    // What may follow the name an EXECUTE runs: its parameters.
    let ends_name = |i: usize| match words.get(i) {
        None | Some(Token::LParen) => true,
        Some(Token::Word(w)) => {
            mysql && w.quote_style.is_none() && w.value.eq_ignore_ascii_case("using")
        }
        _ => false,
    };
    let literal = |i: usize| match (words.get(i), words.get(i + 1)) {
        (Some(Token::SingleQuotedString(s) | Token::DoubleQuotedString(s)), None) if mysql => {
            Some(s.clone())
        }
        _ => None,
    };
    match word(0)?.as_str() {
        "prepare" if mysql && word(2).as_deref() == Some("from") => {
            Some(SqlLevel::Prepare(name(1)?, literal(3)))
        }
        "prepare" if !mysql => {
            let statement =
                sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
                    .try_with_sql(piece)
                    .and_then(|mut p| p.parse_statement())
                    .ok();
            match statement {
                Some(sqlparser::ast::Statement::Prepare {
                    name, statement, ..
                }) => Some(SqlLevel::Prepare(
                    super::fold(&name),
                    Some(statement.to_string()),
                )),
                _ if ends_name(2) || word(2).as_deref() == Some("as") => {
                    Some(SqlLevel::Prepare(name(1)?, None))
                }
                _ => Some(SqlLevel::ForgetAll),
            }
        }
        "do" if !mysql => Some(SqlLevel::ForgetAll),
        "deallocate" if word(1).as_deref() == Some("all") && !mysql => Some(SqlLevel::ForgetAll),
        "deallocate" if word(1).as_deref() == Some("prepare") => {
            match (name(2), word(2).as_deref()) {
                (_, Some("all")) if !mysql => Some(SqlLevel::ForgetAll),
                (Some(n), _) => Some(SqlLevel::Deallocate(n)),
                _ => None,
            }
        }
        "deallocate" if !mysql => Some(SqlLevel::Deallocate(name(1)?)),
        "drop" if mysql && word(1).as_deref() == Some("prepare") => {
            Some(SqlLevel::Deallocate(name(2)?))
        }
        "call" => Some(SqlLevel::ForgetAll),
        "execute" if mysql && word(1).as_deref() == Some("immediate") => {
            Some(SqlLevel::Immediate(literal(2)))
        }
        "execute" => match name(1) {
            Some(name) if ends_name(2) => Some(SqlLevel::Execute(name)),
            _ => Some(SqlLevel::RunsUnknown),
        },
        "analyze" if mysql => {
            // Past `FORMAT = JSON`, if given: a write's first word, else ANALYZE TABLE.
            let at = if word(1).as_deref() == Some("format") {
                4
            } else {
                1
            };
            let first = word(at)?;
            let writes = ["update", "delete", "insert", "replace", "select", "with"];
            if !writes.contains(&first.as_str()) {
                return None;
            }
            Some(SqlLevel::Runs(text_from(piece, *at_token.get(at)?)?))
        }
        "set" if mysql && word(1).as_deref() == Some("statement") => {
            // The statement after the first FOR (the settings before it are values).
            let at = (2..words.len()).find(|&i| word(i).as_deref() == Some("for"))?;
            Some(SqlLevel::Runs(text_from(piece, *at_token.get(at + 1)?)?))
        }
        _ => None,
    }
}

/// The text of MySQL statement `piece` from its `token`-th token on, as written.
fn text_from(piece: &str, token: usize) -> Option<String> {
    // Tokens that keep their escapes spell the text back exactly.
    let dialect = sqlparser::dialect::MySqlDialect {};
    let raw = Tokenizer::new(&dialect, piece)
        .with_unescape(false)
        .tokenize()
        .ok()?;
    let rest: String = raw.get(token..)?.iter().map(spelled).collect();
    Some(rest)
}

/// A token as it was written (`with_unescape(false)` keeps a literal's escapes).
fn spelled(token: &Token) -> String {
    match token {
        Token::Whitespace(Whitespace::SingleLineComment { comment, prefix }) => {
            format!("{prefix}{comment}")
        }
        other => other.to_string(),
    }
}

/// What MySQL text `sql` (every statement of it, in order) does to the names of a
/// session's SQL-level prepared statements; `known`: what the session knows a name
/// stands for. Only a query of one statement is sure to have run what it says: in a
/// longer one a statement after a failed one does not run, so its PREPARE and
/// DEALLOCATE leave the name unknown. Whatever may run stored code or text tandem does
/// not know (CALL, a compound statement, an executable comment, an EXECUTE of such a
/// text or of an unknown one) forgets every name, as does text that does not split.
pub fn prepared_changes(sql: &str, known: &dyn Fn(&str) -> Option<String>) -> Vec<PreparedChange> {
    let Ok(pieces) = super::split_mysql_statements(sql) else {
        return vec![PreparedChange::AllForgotten];
    };
    let alone = pieces.len() == 1;
    let mut changes = Vec::new();
    for piece in pieces {
        if super::has_executable_comment(piece) {
            changes.push(PreparedChange::AllForgotten);
            continue;
        }
        let change = match sql_level(&crate::Mysql, piece) {
            Some(SqlLevel::Prepare(name, text)) if alone => PreparedChange::Prepared(name, text),
            // Known to stand for nothing: its EXECUTE fails.
            Some(SqlLevel::Deallocate(name)) if alone => {
                PreparedChange::Prepared(name, Some(String::new()))
            }
            Some(SqlLevel::Prepare(name, _) | SqlLevel::Deallocate(name)) => {
                PreparedChange::Forgotten(name)
            }
            Some(SqlLevel::Execute(name)) => match known(&name) {
                Some(text) if !runs_stored_code(&text) => continue,
                _ => PreparedChange::AllForgotten,
            },
            Some(SqlLevel::Immediate(Some(text)) | SqlLevel::Runs(text)) => {
                if !runs_stored_code(&text) {
                    continue;
                }
                PreparedChange::AllForgotten
            }
            Some(SqlLevel::ForgetAll | SqlLevel::Immediate(None) | SqlLevel::RunsUnknown) => {
                PreparedChange::AllForgotten
            }
            None if runs_stored_code(piece) => PreparedChange::AllForgotten,
            None => continue,
        };
        changes.push(change);
    }
    changes
}

/// Whether MySQL statement text may run stored code or text tandem cannot see, which
/// may prepare or drop SQL-level statements: CALL, a compound statement (BEGIN NOT
/// ATOMIC, IF, CASE, LOOP, WHILE, REPEAT, FOR, a label), an executable comment,
/// EXECUTE, or a statement that runs one of these (`SET STATEMENT … FOR CALL …`).
pub fn runs_stored_code(sql: &str) -> bool {
    const COMPOUND: [&str; 9] = [
        "call", "begin", "if", "case", "loop", "while", "repeat", "for", "execute",
    ];
    if super::has_executable_comment(sql) {
        return true;
    }
    let Ok(pieces) = super::split_mysql_statements(sql) else {
        return true;
    };
    pieces.into_iter().any(|piece| {
        let Some(tokens) = tokens(&crate::Mysql, piece) else {
            return true;
        };
        let mut significant = tokens
            .iter()
            .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon));
        let first = match significant.next() {
            Some(Token::Word(w)) => w.value.to_ascii_lowercase(),
            _ => return false,
        };
        if COMPOUND.contains(&first.as_str()) || significant.next() == Some(&Token::Colon) {
            return true;
        }
        match sql_level(&crate::Mysql, piece) {
            Some(SqlLevel::Runs(text)) => runs_stored_code(&text),
            Some(SqlLevel::Prepare(..) | SqlLevel::Deallocate(_)) => true,
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{PreparedChange, SqlLevel, prepared_changes, sql_level};
    use crate::{Mysql, Postgres};

    #[test]
    fn reads_what_runs_another_statement() {
        let my = |sql| sql_level(&Mysql, sql);
        assert_eq!(
            my("PREPARE Stmt FROM 'UPDATE t SET v = ''x'' WHERE id = ?'"),
            Some(SqlLevel::Prepare(
                "stmt".into(),
                Some("UPDATE t SET v = 'x' WHERE id = ?".into())
            ))
        );
        assert_eq!(
            my("PREPARE s FROM @sql"),
            Some(SqlLevel::Prepare("s".into(), None))
        );
        assert_eq!(
            my("PREPARE s FROM CONCAT('UPDATE', ' t SET v = 1')"),
            Some(SqlLevel::Prepare("s".into(), None))
        );
        assert_eq!(
            my("EXECUTE S USING @a"),
            Some(SqlLevel::Execute("s".into()))
        );
        assert_eq!(
            my("EXECUTE IMMEDIATE 'DELETE FROM t'"),
            Some(SqlLevel::Immediate(Some("DELETE FROM t".into())))
        );
        assert_eq!(my("EXECUTE IMMEDIATE @q"), Some(SqlLevel::Immediate(None)));
        assert_eq!(my("DROP PREPARE s"), Some(SqlLevel::Deallocate("s".into())));
        assert_eq!(
            my("DEALLOCATE PREPARE s"),
            Some(SqlLevel::Deallocate("s".into()))
        );
        assert_eq!(
            my("ANALYZE FORMAT=JSON UPDATE t SET v = 'a''b' /* c */ WHERE id = 1"),
            Some(SqlLevel::Runs(
                "UPDATE t SET v = 'a''b' /* c */ WHERE id = 1".into()
            ))
        );
        assert_eq!(
            my("analyze delete from t"),
            Some(SqlLevel::Runs("delete from t".into()))
        );
        assert_eq!(
            my("SET STATEMENT max_statement_time = 100 FOR EXECUTE s"),
            Some(SqlLevel::Runs("EXECUTE s".into()))
        );
        assert_eq!(my("ANALYZE TABLE t"), None);
        assert_eq!(my("CALL p()"), Some(SqlLevel::ForgetAll));
        assert_eq!(
            sql_level(&Postgres, "EXECUTE Plan(1, 2)"),
            Some(SqlLevel::Execute("plan".into()))
        );
        assert_eq!(
            sql_level(&Postgres, "EXECUTE \"Plan\""),
            Some(SqlLevel::Execute("Plan".into()))
        );
        assert_eq!(
            sql_level(&Postgres, "DEALLOCATE ALL"),
            Some(SqlLevel::ForgetAll)
        );
        assert_eq!(
            sql_level(&Postgres, "DEALLOCATE PREPARE p"),
            Some(SqlLevel::Deallocate("p".into()))
        );
        assert_eq!(sql_level(&Postgres, "UPDATE t SET v = 1"), None);
    }

    #[test]
    fn follows_prepares_in_order() {
        let known = |name: &str| match name {
            "sel" => Some("SELECT 1".to_owned()),
            "proc" => Some("CALL p()".to_owned()),
            _ => None,
        };
        let changes = |sql: &str| prepared_changes(sql, &known);
        assert_eq!(
            changes("PREPARE a FROM 'SELECT 1'"),
            [PreparedChange::Prepared(
                "a".into(),
                Some("SELECT 1".into())
            )]
        );
        assert_eq!(
            changes("PREPARE c FROM @x"),
            [PreparedChange::Prepared("c".into(), None)]
        );
        assert_eq!(
            changes("DROP PREPARE b"),
            [PreparedChange::Prepared("b".into(), Some(String::new()))]
        );
        // Several statements: a later one may not have run.
        assert_eq!(
            changes("SELECT * FROM nosuch; PREPARE s FROM 'SELECT 1'; DROP PREPARE b"),
            [
                PreparedChange::Forgotten("s".into()),
                PreparedChange::Forgotten("b".into())
            ]
        );
        for sql in [
            "CALL p()",
            "EXECUTE proc",
            "EXECUTE unknown",
            "EXECUTE IMMEDIATE 'CALL p()'",
            "EXECUTE IMMEDIATE @q",
            "SET STATEMENT max_statement_time = 1 FOR CALL p()",
            "/*!CALL p() */",
            "/*M!100000 CALL p() */",
            "BEGIN NOT ATOMIC CALL p(); END",
            "IF 1 = 1 THEN PREPARE s FROM 'UPDATE t SET v = 1'; END IF",
            "lbl: LOOP LEAVE lbl; END LOOP",
            "SELECT 'unterminated",
        ] {
            assert_eq!(changes(sql), [PreparedChange::AllForgotten], "{sql}");
        }
        for sql in [
            "EXECUTE sel",
            "EXECUTE IMMEDIATE 'SELECT 1'",
            "SELECT 1",
            "ANALYZE UPDATE t SET v = 1",
        ] {
            assert_eq!(changes(sql), [], "{sql}");
        }
    }
}
