//! MySQL's `ROW_COUNT()` answered from a count tandem kept: after a captured write
//! tandem runs statements of its own (after images, the undo row, its COMMIT), and the
//! server's ROW_COUNT() would then count those instead of the client's write.
//!
//! Never changes anything but the calls themselves: a word in quotes, a comment, a
//! qualified name (`db.row_count()`, a stored function) or a call with arguments is
//! left as written, and so is every statement of a multi-statement text but the first
//! (the server's ROW_COUNT() there counts the statement before it).

use super::split::Offsets;
use sqlparser::dialect::MySqlDialect;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// `sql` with each `ROW_COUNT()` call replaced by `row_count`, typed as the server
/// types ROW_COUNT() (BIGINT, never NULL). A call that is a whole select item without
/// an alias keeps its column name (its own text) through one. None: no such call, or
/// text that does not tokenize.
pub fn with_row_count(sql: &str, row_count: i64) -> Option<String> {
    if !super::contains_ignore_case(sql.as_bytes(), b"row_count") {
        return None;
    }
    if sql.contains('"') && sql.contains('\\') {
        // Under sql_mode ANSI_QUOTES `"…\"` is a name, in which a backslash escapes
        // nothing; the tokenizer reads a string there, and could end it elsewhere.
        return None;
    }
    let tokens = Tokenizer::new(&MySqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    let tokens: Vec<&TokenWithSpan> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let offsets = Offsets::new(sql);
    let value = format!("LEAST({row_count}, 9223372036854775807)");
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    // For each open parenthesis, whether a query is inside it (a subquery, a derived
    // table): its select items are named as the top level's are. The statement itself
    // is the first entry.
    let mut in_query = vec![true];
    for (i, t) in tokens.iter().enumerate() {
        match t.token {
            Token::LParen => in_query.push(
                tokens
                    .get(i + 1)
                    .is_some_and(|n| is_plain_word(n, "SELECT") || is_plain_word(n, "WITH")),
            ),
            Token::RParen if in_query.len() > 1 => {
                in_query.pop();
            }
            Token::SemiColon if in_query.len() == 1 => break,
            _ => {}
        }
        let is_call = is_plain_word(t, "ROW_COUNT")
            && matches!(tokens.get(i + 1).map(|t| &t.token), Some(Token::LParen))
            && matches!(tokens.get(i + 2).map(|t| &t.token), Some(Token::RParen))
            && !matches!(
                i.checked_sub(1)
                    .and_then(|p| tokens.get(p))
                    .map(|t| &t.token),
                Some(Token::Period)
            );
        if !is_call {
            continue;
        }
        let (Some(start), Some(end)) =
            (offsets.of(t.span.start), offsets.of(tokens[i + 2].span.end))
        else {
            return None;
        };
        let before = i.checked_sub(1).and_then(|p| tokens.get(p));
        let after = tokens.get(i + 3);
        let replacement = if in_query.last() == Some(&true) && is_whole_unnamed_item(before, after)
        {
            format!("{value} AS {}", quoted_name(&sql[start..end]))
        } else {
            value.clone()
        };
        edits.push((start, end, replacement));
    }
    if edits.is_empty() {
        return None;
    }
    let mut text = String::with_capacity(sql.len() + edits.len() * 48);
    let mut from = 0;
    for (start, end, replacement) in edits {
        text.push_str(&sql[from..start]);
        text.push_str(&replacement);
        from = end;
    }
    text.push_str(&sql[from..]);
    Some(text)
}

fn is_plain_word(t: &TokenWithSpan, word: &str) -> bool {
    matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// Whether the call between `before` and `after`, in a query's select list (not inside
/// a function's parentheses), is a select item of its own with no alias: the server
/// then names its column by its text.
fn is_whole_unnamed_item(before: Option<&&TokenWithSpan>, after: Option<&&TokenWithSpan>) -> bool {
    let starts_item = before.is_some_and(|t| {
        matches!(t.token, Token::Comma)
            || [
                "SELECT",
                "DISTINCT",
                "ALL",
                "DISTINCTROW",
                "HIGH_PRIORITY",
                "STRAIGHT_JOIN",
                "SQL_SMALL_RESULT",
                "SQL_BIG_RESULT",
                "SQL_BUFFER_RESULT",
                "SQL_CACHE",
                "SQL_NO_CACHE",
                "SQL_CALC_FOUND_ROWS",
            ]
            .iter()
            .any(|w| is_plain_word(t, w))
    });
    let ends_item = match after {
        None => true,
        Some(t) => {
            matches!(t.token, Token::Comma | Token::SemiColon | Token::RParen)
                || [
                    "FROM",
                    "INTO",
                    "WHERE",
                    "GROUP",
                    "HAVING",
                    "ORDER",
                    "LIMIT",
                    "UNION",
                    "EXCEPT",
                    "INTERSECT",
                    "FOR",
                    "LOCK",
                    "WINDOW",
                ]
                .iter()
                .any(|w| is_plain_word(t, w))
        }
    };
    starts_item && ends_item
}

/// `name` as a backquoted identifier.
fn quoted_name(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::with_row_count;

    const THREE: &str = "LEAST(3, 9223372036854775807)";

    #[test]
    fn a_call_is_replaced_and_a_whole_item_keeps_its_name() {
        assert_eq!(
            with_row_count("SELECT ROW_COUNT()", 3).as_deref(),
            Some(format!("SELECT {THREE} AS `ROW_COUNT()`").as_str())
        );
        assert_eq!(
            with_row_count("select row_count( ) , 1;", 3).as_deref(),
            Some(format!("select {THREE} AS `row_count( )` , 1;").as_str())
        );
        assert_eq!(
            with_row_count("SELECT ROW_COUNT() AS n", 3).as_deref(),
            Some(format!("SELECT {THREE} AS n").as_str())
        );
        assert_eq!(
            with_row_count("SELECT ROW_COUNT() n", 3).as_deref(),
            Some(format!("SELECT {THREE} n").as_str())
        );
        assert_eq!(
            with_row_count("SELECT ROW_COUNT() + 1, IF(ROW_COUNT() > 0, 'y', 'n')", 3).as_deref(),
            Some(format!("SELECT {THREE} + 1, IF({THREE} > 0, 'y', 'n')").as_str())
        );
        assert_eq!(
            with_row_count("INSERT INTO log (n) VALUES (ROW_COUNT())", 3).as_deref(),
            Some(format!("INSERT INTO log (n) VALUES ({THREE})").as_str())
        );
        assert_eq!(
            with_row_count("SELECT SQL_NO_CACHE ROW_COUNT()", 3).as_deref(),
            Some(format!("SELECT SQL_NO_CACHE {THREE} AS `ROW_COUNT()`").as_str())
        );
    }

    #[test]
    fn a_call_inside_a_functions_parentheses_is_an_argument_not_an_item() {
        for (sql, expected) in [
            (
                "SELECT GREATEST(0, ROW_COUNT())",
                format!("SELECT GREATEST(0, {THREE})"),
            ),
            (
                "INSERT INTO log (s, n) VALUES ('x', ROW_COUNT())",
                format!("INSERT INTO log (s, n) VALUES ('x', {THREE})"),
            ),
            (
                "SELECT id FROM t WHERE id IN (1, ROW_COUNT())",
                format!("SELECT id FROM t WHERE id IN (1, {THREE})"),
            ),
            (
                "SELECT * FROM (SELECT ROW_COUNT()) d",
                format!("SELECT * FROM (SELECT {THREE} AS `ROW_COUNT()`) d"),
            ),
            (
                "WITH c AS (SELECT ROW_COUNT(), 1) SELECT * FROM c",
                format!("WITH c AS (SELECT {THREE} AS `ROW_COUNT()`, 1) SELECT * FROM c"),
            ),
        ] {
            assert_eq!(
                with_row_count(sql, 3).as_deref(),
                Some(expected.as_str()),
                "{sql}"
            );
        }
    }

    #[test]
    fn only_the_first_statement_is_rewritten() {
        assert_eq!(with_row_count("SELECT 1; SELECT ROW_COUNT()", 3), None);
        assert_eq!(
            with_row_count("SELECT ROW_COUNT(); SELECT ROW_COUNT()", 3).as_deref(),
            Some(format!("SELECT {THREE} AS `ROW_COUNT()`; SELECT ROW_COUNT()").as_str())
        );
    }

    #[test]
    fn a_backslash_beside_a_double_quote_is_left_to_the_server() {
        // Under ANSI_QUOTES, `"\"` is a name, and `'` then opens a string.
        assert_eq!(
            with_row_count(r#"SELECT 1 AS "\" , '", ROW_COUNT(), "' AS s"#, 3),
            None
        );
    }

    #[test]
    fn anything_but_a_call_of_the_built_in_is_left_alone() {
        for sql in [
            "SELECT row_count FROM stats",
            "SELECT 'ROW_COUNT()'",
            "SELECT `ROW_COUNT`()",
            "SELECT app.row_count()",
            "SELECT ROW_COUNT(1)",
            "SELECT 1 -- ROW_COUNT()",
            "SELECT 1 /* ROW_COUNT() */",
            "SELECT 1 # ROW_COUNT()",
            "SELECT 1",
        ] {
            assert_eq!(with_row_count(sql, 3), None, "{sql}");
        }
    }

    #[test]
    fn the_count_is_a_bigint_and_may_be_minus_one() {
        assert_eq!(
            with_row_count("SELECT ROW_COUNT() AS n", i64::MAX).as_deref(),
            Some("SELECT LEAST(9223372036854775807, 9223372036854775807) AS n")
        );
        // After a statement that failed.
        assert_eq!(
            with_row_count("SELECT ROW_COUNT() AS n", -1).as_deref(),
            Some("SELECT LEAST(-1, 9223372036854775807) AS n")
        );
    }
}
