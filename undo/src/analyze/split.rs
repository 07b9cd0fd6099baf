//! Where statements end: splitting a simple query into its statements (PostgreSQL) and
//! counting a COM_QUERY's statements (MySQL), by each dialect's tokenizer rules so that
//! semicolons inside quotes and comments never count. Never parses a statement.

use crate::dialect::Dialect;
use crate::error::Error;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::Location;

/// Byte offsets of a text's token locations (lines and characters counted from 1).
pub(super) struct Offsets<'a> {
    sql: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Offsets<'a> {
    pub(super) fn new(sql: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Offsets { sql, line_starts }
    }

    /// The byte offset of `at`, None if it lies outside the text.
    pub(super) fn of(&self, at: Location) -> Option<usize> {
        let start = *self
            .line_starts
            .get(usize::try_from(at.line).ok()?.checked_sub(1)?)?;
        let chars = usize::try_from(at.column).ok()?.checked_sub(1)?;
        let rest = self.sql.get(start..)?;
        Some(
            start
                + rest
                    .char_indices()
                    .nth(chars)
                    .map_or(rest.len(), |(i, _)| i),
        )
    }
}

/// The text of each statement of `sql`, split at the semicolons between statements
/// (not those inside quotes, dollar quotes or comments), without the semicolons and
/// without empty statements, so that each can be sent as a query of its own.
pub fn split_statements<'a>(dialect: &dyn Dialect, sql: &'a str) -> Result<Vec<&'a str>, Error> {
    split_by(&PostgreSqlDialect {}, dialect, sql)
}

/// As [`split_statements`], by MySQL's tokenizer rules (backticks, backslash escapes
/// in literals, `#` comments).
pub fn split_mysql_statements(sql: &str) -> Result<Vec<&str>, Error> {
    split_by(&sqlparser::dialect::MySqlDialect {}, &crate::Mysql, sql)
}

fn split_by<'a>(
    tokenizing: &dyn sqlparser::dialect::Dialect,
    dialect: &dyn Dialect,
    sql: &'a str,
) -> Result<Vec<&'a str>, Error> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(tokenizing, sql)
        .tokenize_with_location()
        .map_err(|e| Error::Parse {
            dialect: dialect.name(),
            excerpt: sql.chars().take(80).collect(),
            message: e.to_string(),
        })?;
    let offsets = Offsets::new(sql);
    let mut pieces = Vec::new();
    let mut from = 0;
    for t in tokens.iter().filter(|t| t.token == Token::SemiColon) {
        let at = offsets.of(t.span.start).ok_or_else(|| Error::Parse {
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

/// A PostgreSQL statement without what follows its last token (semicolons, whitespace,
/// comments), so that text appended to it continues the statement: after
/// `UPDATE t SET v = 1; -- done`, a RETURNING clause would start a statement of its
/// own. Text that does not tokenize is only trimmed (the server will refuse it anyway).
pub fn statement_body(sql: &str) -> &str {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let trimmed = sql.trim_end().trim_end_matches(';').trim_end();
    if !trimmed.contains(';') {
        // Nothing can end it early: a comment at its end continues to the end of the
        // text, which the appended text starts a new line after.
        return trimmed;
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location() else {
        return trimmed;
    };
    let offsets = Offsets::new(sql);
    tokens
        .iter()
        .rev()
        .find(|t| {
            !matches!(
                t.token,
                Token::Whitespace(_) | Token::SemiColon | Token::EOF
            )
        })
        .and_then(|last| offsets.of(last.span.end))
        .map_or(trimmed, |end| &sql[..end])
}

/// Whether a MySQL query holds a statement of nothing but whitespace and comments
/// before one of its semicolons (`a; ; b`, `;a`), or a comment after its last: the
/// server stops at the first with a syntax error, and answers the second as a statement
/// of its own, where [`split_mysql_statements`] drops both. Semicolons and whitespace
/// after the last statement are none. Text that does not tokenize counts as holding
/// one.
pub fn has_empty_mysql_statement(sql: &str) -> bool {
    use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
    let Ok(tokens) = Tokenizer::new(&sqlparser::dialect::MySqlDialect {}, sql).tokenize() else {
        return true;
    };
    let mut empty = true;
    let mut commented = false;
    for t in &tokens {
        match t {
            Token::SemiColon if empty => return true,
            Token::SemiColon => {
                empty = true;
                commented = false;
            }
            Token::Whitespace(
                Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_),
            ) => commented = true,
            Token::Whitespace(_) => {}
            _ => empty = false,
        }
    }
    empty && commented
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
