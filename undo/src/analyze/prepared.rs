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
    /// MariaDB's `ANALYZE [FORMAT = JSON] statement` (which runs it): the statement.
    Analyze(String),
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
    let words: Vec<&Token> = all
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
        .collect();
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
            let start = all
                .iter()
                .enumerate()
                .filter(|(_, t)| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
                .nth(at)
                .map(|(i, _)| i)?;
            Some(SqlLevel::Analyze(text_from(piece, start)?))
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

/// What `sql` (every statement of it, in order) does to the names of a session's
/// SQL-level prepared statements. Text that does not split forgets every name.
pub fn prepared_changes(dialect: &dyn Dialect, sql: &str) -> Vec<PreparedChange> {
    let pieces = match dialect.grammar() {
        Grammar::PostgreSql => super::split_statements(dialect, sql),
        Grammar::MySql => super::split_mysql_statements(sql),
    };
    let Ok(pieces) = pieces else {
        return vec![PreparedChange::AllForgotten];
    };
    pieces
        .into_iter()
        .filter_map(|piece| match sql_level(dialect, piece)? {
            SqlLevel::Prepare(name, text) => Some(PreparedChange::Prepared(name, text)),
            SqlLevel::Deallocate(name) => Some(PreparedChange::Forgotten(name)),
            SqlLevel::ForgetAll => Some(PreparedChange::AllForgotten),
            _ => None,
        })
        .collect()
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
            Some(SqlLevel::Analyze(
                "UPDATE t SET v = 'a''b' /* c */ WHERE id = 1".into()
            ))
        );
        assert_eq!(
            my("analyze delete from t"),
            Some(SqlLevel::Analyze("delete from t".into()))
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
        assert_eq!(
            prepared_changes(
                &Mysql,
                "PREPARE a FROM 'SELECT 1'; SELECT 2; DROP PREPARE b; CALL p(); PREPARE c FROM @x"
            ),
            [
                PreparedChange::Prepared("a".into(), Some("SELECT 1".into())),
                PreparedChange::Forgotten("b".into()),
                PreparedChange::AllForgotten,
                PreparedChange::Prepared("c".into(), None),
            ]
        );
        assert_eq!(
            prepared_changes(&Mysql, "SELECT 'unterminated"),
            [PreparedChange::AllForgotten]
        );
    }
}
