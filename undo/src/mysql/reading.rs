//! Where MariaDB may read a statement's text otherwise than tandem's tokenizer.
//! tandem reads literals as MySQL's default sql_mode does, takes the text of every
//! `/*!` comment for code up to the first `*/` after it, and every `/*M!` comment for
//! a comment. The server reads literals by the session's sql_mode, skips `/*!`
//! comments for versions it does not run, runs `/*M!` ones up to its own version, and
//! lets an executable comment hold one nested `/* … */`. Past a place they read
//! otherwise, what tandem takes for the end of a statement, a literal or a comment need
//! not be the server's: a caller judges such a text by every table, or refuses it.
//!
//! A byte lexer of its own, as [`super::binary_literals`]: it must follow the server's
//! rules where sqlparser's tokenizer follows others.

use super::binary_literals::{block_comment_len, find, line_len, opens_line_comment, quoted_len};

/// The sql_mode flags that change where a MySQL literal ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quoting {
    /// A backslash is itself in a literal (NO_BACKSLASH_ESCAPES).
    pub no_backslash_escapes: bool,
    /// `"…"` is a name, in which a backslash is itself (ANSI_QUOTES).
    pub ansi_quotes: bool,
    /// `[…]` is a name too (MariaDB's sql_mode MSSQL).
    pub brackets: bool,
}

impl Quoting {
    /// Whether a backslash escapes inside a run quoted by `quote`.
    fn escapes(self, quote: u8) -> bool {
        match quote {
            b'\'' => !self.no_backslash_escapes,
            b'"' => !self.no_backslash_escapes && !self.ansi_quotes,
            _ => false,
        }
    }
}

/// How the server reads a text's quoted runs under a [`Quoting`], beside tandem's
/// reading under the default one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotedReading {
    /// Run for run the same.
    Same,
    /// Every run ends where tandem reads it end, but a backslash in one stands for
    /// itself: its value (or name) is not the one tandem reads.
    ValuesDiffer,
    /// A run ends elsewhere, or does not end: what follows it may be other
    /// statements than tandem reads.
    BoundariesDiffer,
}

/// How the server reads the quoted runs of `sql` under `quoting` (tandem reads them
/// under the default). Text inside a plain comment is skipped; an executable comment's
/// is read as code (see [`comments_read_otherwise`] for where that is not so).
pub fn quoted_reading(sql: &[u8], quoting: Quoting) -> QuotedReading {
    let default = Quoting::default();
    let mut reading = QuotedReading::Same;
    let mut at = 0;
    while at < sql.len() {
        let rest = &sql[at..];
        at += match rest[0] {
            quote @ (b'\'' | b'"' | b'`') => {
                let ours = quoted_len(rest, quote, default.escapes(quote));
                let servers = quoted_len(rest, quote, quoting.escapes(quote));
                match (ours, servers) {
                    (Some(ours), Some(servers)) if ours == servers => {
                        if quoting.escapes(quote) != default.escapes(quote)
                            && rest[..ours].contains(&b'\\')
                        {
                            reading = QuotedReading::ValuesDiffer;
                        }
                        ours
                    }
                    _ => return QuotedReading::BoundariesDiffer,
                }
            }
            b'[' if quoting.brackets => match bracketed_len(rest) {
                Some(len) => len,
                None => return QuotedReading::BoundariesDiffer,
            },
            _ if opens_line_comment(rest) => line_len(rest),
            b'/' if rest.starts_with(b"/*!") || rest.starts_with(b"/*M!") => 3,
            b'/' if rest.starts_with(b"/*") => block_comment_len(rest),
            _ => 1,
        };
    }
    reading
}

/// The length of the `[…]` name at the head of `rest` (`]]` stands for `]`), if
/// tandem, which reads its text as code, finds no literal, comment or statement end
/// in it either.
fn bracketed_len(rest: &[u8]) -> Option<usize> {
    let mut at = 1;
    while at < rest.len() {
        match rest[at] {
            b']' if rest.get(at + 1) == Some(&b']') => at += 2,
            b']' => return Some(at + 1),
            b'\'' | b'"' | b'`' | b'#' | b';' => return None,
            b'-' if rest.get(at + 1) == Some(&b'-') => return None,
            b'/' if rest.get(at + 1) == Some(&b'*') => return None,
            _ => at += 1,
        }
    }
    None
}

/// Whether the server may read a comment of `sql` otherwise than tandem: a `/*M!`
/// one that MariaDB may run (tandem never does; one for a version from 900000, such
/// as mariadb-dump's sandbox line, is skipped by both), a `/*!` one whose version
/// MariaDB may skip (five digits from 50700, which it takes for MySQL's, or any other
/// count of digits but none), an executable one whose end tandem reads elsewhere (a
/// nested comment, a literal holding `*/`, a line comment inside it), or `--` before
/// a character that only one of them takes for the start of a comment (a space that
/// is not ASCII's: tandem's tokenizer does; an ASCII control character: the server
/// does). Literals are skipped as the default sql_mode ends them (where the session's
/// ends them elsewhere, `quoted_reading` tells); one that does not end counts.
pub fn comments_read_otherwise(sql: &[u8]) -> bool {
    let default = Quoting::default();
    let mut at = 0;
    while at < sql.len() {
        let rest = &sql[at..];
        let read_alike = match rest[0] {
            quote @ (b'\'' | b'"' | b'`') => quoted_len(rest, quote, default.escapes(quote)),
            b'-' if rest.starts_with(b"--") && dashes_read_otherwise(&rest[2..]) => None,
            _ if opens_line_comment(rest) => Some(line_len(rest)),
            b'/' if rest.starts_with(b"/*M!") => skipped_by_both(&rest[4..]).map(|len| 4 + len),
            b'/' if rest.starts_with(b"/*!") => run_by_both(&rest[3..]).map(|len| 3 + len),
            b'/' if rest.starts_with(b"/*") => Some(block_comment_len(rest)),
            _ => Some(1),
        };
        match read_alike {
            Some(len) => at += len,
            None => return true,
        }
    }
    false
}

/// The length of a `/*M!` comment's `body` up to its end, if both readers skip it
/// whole: a version no MariaDB reaches, and no nested comment (MariaDB's skipping
/// follows one; tandem's comment ends at the first `*/`).
fn skipped_by_both(body: &[u8]) -> Option<usize> {
    let digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits != 6 || &body[..6] < b"900000".as_slice() {
        return None;
    }
    let end = find(body, b"*/")?;
    (find(&body[..end], b"/*").is_none()).then_some(end + 2)
}

/// The length of a `/*!` comment's `body` up to its end, if both readers run it and
/// end it in the same place.
fn run_by_both(body: &[u8]) -> Option<usize> {
    let digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    let version_run_by_both = match digits {
        0 => true,
        5 => &body[..5] < b"50700".as_slice(),
        _ => false,
    };
    if !version_run_by_both {
        return None;
    }
    // tandem's reading: the first `*/` after the opening ends it.
    let ours = find(body, b"*/")?;
    let servers = servers_comment_end(&body[digits..])?;
    (servers + digits == ours).then_some(ours + 2)
}

/// Whether `--` followed by `after` may open a comment for only one of tandem's
/// tokenizer (a space to Rust after it) and the server (a space or control character
/// of the session's character set).
fn dashes_read_otherwise(after: &[u8]) -> bool {
    let Some(&first) = after.first() else {
        return false;
    };
    if !first.is_ascii() {
        // A space to Rust (U+00A0, U+2003), or a byte the session's character set
        // may call a control character (macroman's 0xCB): either reader may take it
        // for a comment's start.
        return true;
    }
    let to_server = first.is_ascii_whitespace() || first.is_ascii_control();
    to_server != char::from(first).is_whitespace()
}

/// Where the server reads a run executable comment's body (`body`, after its version)
/// end: the offset of its `*/`. None where it holds what tandem reads otherwise (a
/// nested comment, a line comment) or does not end.
fn servers_comment_end(body: &[u8]) -> Option<usize> {
    let default = Quoting::default();
    let mut at = 0;
    while at < body.len() {
        let rest = &body[at..];
        if rest.starts_with(b"*/") {
            return Some(at);
        }
        if rest.starts_with(b"/*")
            || opens_line_comment(rest)
            || rest.starts_with(b"--") && dashes_read_otherwise(&rest[2..])
        {
            return None;
        }
        at += match rest[0] {
            quote @ (b'\'' | b'"' | b'`') => quoted_len(rest, quote, default.escapes(quote))?,
            _ => 1,
        };
    }
    None
}

/// Where in `sql` a statement may first set a sql_mode that changes where literals
/// end (NO_BACKSLASH_ESCAPES, ANSI_QUOTES or MSSQL, or a combination that holds one:
/// ANSI, ORACLE, DB2, POSTGRESQL, MAXDB): an assignment to `sql_mode` of a literal
/// naming one, or of anything else (a variable, DEFAULT, an expression), or spelled so
/// that tandem cannot tell. A read of it (`@@SQL_MODE,`) and a name that only ends in
/// it (`@OLD_SQL_MODE`) set nothing.
pub fn quoting_sql_mode_set_at(sql: &[u8]) -> Option<usize> {
    const QUOTING_MODES: [&[u8]; 7] = [
        b"NO_BACKSLASH_ESCAPES",
        b"ANSI",
        b"ORACLE",
        b"DB2",
        b"POSTGRESQL",
        b"MAXDB",
        b"MSSQL",
    ];
    let name = b"sql_mode";
    let skip_spaces = |rest: &[u8]| -> usize {
        rest.iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(rest.len())
    };
    let mut from = 0;
    while from + name.len() <= sql.len() {
        let found = sql[from..]
            .windows(name.len())
            .position(|w| w.eq_ignore_ascii_case(name))?;
        let at = from + found;
        from = at + name.len();
        let part_of_a_name =
            at > 0 && (sql[at - 1].is_ascii_alphanumeric() || matches!(sql[at - 1], b'_' | b'$'));
        if part_of_a_name {
            continue;
        }
        let mut rest = &sql[from..];
        rest = &rest[skip_spaces(rest)..];
        if rest.is_empty() || matches!(rest[0], b',' | b';' | b')') || rest.starts_with(b"*/") {
            continue;
        }
        let Some(value) = rest.strip_prefix(b":=").or_else(|| rest.strip_prefix(b"=")) else {
            return Some(at);
        };
        let value = &value[skip_spaces(value)..];
        let Some(len) = value
            .first()
            .filter(|q| matches!(q, b'\'' | b'"'))
            .and_then(|&q| quoted_len(value, q, true))
        else {
            return Some(at);
        };
        let literal = &value[..len];
        let after = &value[len..];
        let joined = after[skip_spaces(after)..]
            .first()
            .is_some_and(|b| matches!(b, b'\'' | b'"'));
        let names_one = QUOTING_MODES.iter().any(|mode| {
            literal
                .windows(mode.len())
                .any(|w| w.eq_ignore_ascii_case(mode))
        });
        // An escape (`'AN\SI_QUOTES'`) or a literal joined to the next may spell a
        // mode's name otherwise.
        if names_one || joined || literal.contains(&b'\\') {
            return Some(at);
        }
    }
    None
}

/// `sql` with each byte other than ASCII's inside a literal (`'…'`, `"…"`) or a plain
/// comment made an `x`, if there is none elsewhere: a text in a character set whose
/// characters hold no ASCII byte, whose tables tandem can then name. None if such a
/// byte stands in a name or in code, or a literal does not end.
pub fn literals_blanked(sql: &[u8]) -> Option<String> {
    let default = Quoting::default();
    let mut out = sql.to_vec();
    let mut at = 0;
    while at < sql.len() {
        let rest = &sql[at..];
        let (len, blank) = match rest[0] {
            quote @ (b'\'' | b'"') => (quoted_len(rest, quote, default.escapes(quote))?, true),
            b'`' => {
                // A name: one with such a byte would be misread.
                let len = quoted_len(rest, b'`', false)?;
                if !rest[..len].is_ascii() {
                    return None;
                }
                (len, false)
            }
            _ if opens_line_comment(rest) => (line_len(rest), true),
            b'/' if rest.starts_with(b"/*!") || rest.starts_with(b"/*M!") => (3, false),
            b'/' if rest.starts_with(b"/*") => (block_comment_len(rest), true),
            b if !b.is_ascii() => return None,
            _ => (1, false),
        };
        if blank {
            for byte in &mut out[at..at + len] {
                if !byte.is_ascii() {
                    *byte = b'x';
                }
            }
        }
        at += len;
    }
    String::from_utf8(out).ok()
}

/// `bytes` as MySQL's latin1 (Windows' cp1252) reads them. Its five bytes cp1252
/// leaves undefined are read as the C1 controls of the same value, as MySQL does; none
/// of those is a space (U+0085, one to Rust, is 0x85's `…` here).
pub fn decode_cp1252(bytes: &[u8]) -> String {
    const HIGH: [char; 32] = [
        '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}',
        '\u{8f}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}',
        '\u{178}',
    ];
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9f => HIGH[usize::from(b - 0x80)],
            _ => char::from(b),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_BACKSLASH_ESCAPES: Quoting = Quoting {
        no_backslash_escapes: true,
        ansi_quotes: false,
        brackets: false,
    };
    const ANSI_QUOTES: Quoting = Quoting {
        no_backslash_escapes: false,
        ansi_quotes: true,
        brackets: false,
    };

    #[test]
    fn a_backslash_before_a_quote_moves_where_a_literal_ends() {
        use QuotedReading::*;
        let hidden = br#"SELECT 1 AS "a\"; UPDATE t SET v = 1; -- ""#;
        assert_eq!(quoted_reading(hidden, ANSI_QUOTES), BoundariesDiffer);
        assert_eq!(
            quoted_reading(hidden, NO_BACKSLASH_ESCAPES),
            BoundariesDiffer
        );
        assert_eq!(quoted_reading(hidden, Quoting::default()), Same);
        let single = br"SELECT '\'; DELETE FROM t; -- '";
        assert_eq!(
            quoted_reading(single, NO_BACKSLASH_ESCAPES),
            BoundariesDiffer
        );
        assert_eq!(
            quoted_reading(single, ANSI_QUOTES),
            Same,
            "single quotes keep"
        );
        // Ends in the same place, but stands for another value.
        assert_eq!(
            quoted_reading(br"UPDATE t SET v = 'a\\b'", NO_BACKSLASH_ESCAPES),
            ValuesDiffer
        );
        assert_eq!(
            quoted_reading(br#"UPDATE t SET v = "a\\b""#, ANSI_QUOTES),
            ValuesDiffer
        );
        // JSON in a single-quoted literal: its double quotes are not runs of their own.
        assert_eq!(
            quoted_reading(br#"UPDATE t SET j = '{"a": "x\\ny"}'"#, ANSI_QUOTES),
            Same
        );
        // Not inside a comment; inside an executable one, yes.
        assert_eq!(
            quoted_reading(br#"UPDATE t SET v = 1 /* "\" */"#, ANSI_QUOTES),
            Same
        );
        assert_eq!(
            quoted_reading(
                br#"UPDATE t SET v = 1 -- "\"
"#,
                ANSI_QUOTES
            ),
            Same
        );
        assert_eq!(
            quoted_reading(
                br#"SELECT /*! "\" */ 1; UPDATE t SET v = 1; -- ""#,
                ANSI_QUOTES
            ),
            BoundariesDiffer
        );
        // sql_mode MSSQL's `[…]` names.
        let mssql = Quoting {
            brackets: true,
            ..Quoting::default()
        };
        assert_eq!(
            quoted_reading(
                b"SELECT 1 AS [']; UPDATE t SET v = 5; SELECT 1 AS [']",
                mssql
            ),
            BoundariesDiffer
        );
        assert_eq!(quoted_reading(b"UPDATE [t] SET [v]]w] = 5", mssql), Same);
        assert_eq!(quoted_reading(b"SELECT 1 AS [x", mssql), BoundariesDiffer);
        // A literal that never ends, under either reading.
        assert_eq!(
            quoted_reading(br"SELECT 'a", Quoting::default()),
            BoundariesDiffer
        );
    }

    #[test]
    fn only_a_sql_mode_that_moves_literal_ends_counts() {
        let header = b"/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;";
        assert_eq!(quoting_sql_mode_set_at(header), None);
        assert_eq!(
            quoting_sql_mode_set_at(
                b"SET SQL_MODE='NO_AUTO_VALUE_ON_ZERO'; INSERT INTO u VALUES ('It\\'s')"
            ),
            None
        );
        for sql in [
            &b"SET sql_mode = 'ANSI_QUOTES'; SELECT 1"[..],
            b"SET SESSION sql_mode='oracle'",
            b"SET sql_mode = @OLD_SQL_MODE",
            b"SET @@sql_mode := CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')",
            b"SET sql_mode = DEFAULT",
            b"SET sql_mode /* x */ = ''",
            b"SET `sql_mode` = 'MSSQL'",
            b"SET sql_mode = 'AN\\SI_QUOTES'",
            b"SET sql_mode = 'AN' 'SI_QUOTES'",
        ] {
            assert!(
                quoting_sql_mode_set_at(sql).is_some(),
                "{}",
                String::from_utf8_lossy(sql)
            );
        }
        let trailer = b"INSERT INTO u VALUES ('a\\'b'); /*!40101 SET SQL_MODE=@OLD_SQL_MODE */;";
        let set_back = find(trailer, b"SQL_MODE=@");
        assert_eq!(quoting_sql_mode_set_at(trailer), set_back, "after the data");
    }

    #[test]
    fn bytes_in_literals_are_blanked_and_elsewhere_refused() {
        assert_eq!(
            literals_blanked(b"UPDATE u SET s = '\xe8\x9a' /* \xff */ WHERE id = 1").as_deref(),
            Some("UPDATE u SET s = 'xx' /* x */ WHERE id = 1")
        );
        assert_eq!(literals_blanked(b"UPDATE \xe8 SET s = 1"), None);
        // A quote inside a backtick name opens no literal.
        assert_eq!(
            literals_blanked(b"SELECT 1 AS `'`; UPDATE t\xa0zz SET v = 5; SELECT 1 AS `'`"),
            None
        );
        assert_eq!(literals_blanked(b"\xffUPDATE u SET s = 1"), None);
        assert_eq!(literals_blanked(b"UPDATE u SET s = '\xe8"), None);
    }

    #[test]
    fn latin1_reads_as_cp1252() {
        assert_eq!(decode_cp1252(b"caf\xe9\xa0\x80\x85"), "café\u{a0}€…");
        assert!(
            decode_cp1252(&(0x80..=0x9f).collect::<Vec<u8>>())
                .chars()
                .all(|c| !c.is_whitespace())
        );
    }

    #[test]
    fn executable_comments_read_otherwise_by_the_server() {
        for sql in [
            // Nested: the server's comment ends at the second `*/`.
            "/*!99999 /* x */ */ UPDATE t SET v = 1",
            "/*!50000 /* x */ */ UPDATE t SET v = 1",
            "SELECT 1 /*!40000 # x */ */; UPDATE t SET v = 1",
            // MariaDB may run it; tandem never does.
            "UPDATE t SET v = 1 WHERE id = 1 /*M!100000 OR 1 = 1 */",
            // Versions MariaDB may skip, or reads otherwise.
            "/*!99999 SELECT */ UPDATE t SET v = 1",
            "/*!100000 SELECT */ UPDATE t SET v = 1",
            "UPDATE t SET v = 1 WHERE id IN (/*!1,*/ 2)",
            // A literal holding `*/`: tandem's comment ends inside it.
            "SELECT /*!40000 '*/' */ 1; UPDATE t SET v = 1",
            // Never ends.
            "SELECT /*!40000 1",
            // A comment to sqlparser, two minus signs to the server.
            "SELECT 1 --\u{a0} x; UPDATE t SET v = 1",
            "SELECT 1 --\u{2003}; UPDATE t SET v = 1",
            // A comment to the server only.
            "SELECT 1 --\x01 '\n; UPDATE t SET v = 1; -- '",
            "SELECT 1 --\x7f '\n; UPDATE t SET v = 1; -- '",
            // A literal that does not end.
            "SELECT 'a",
            // Skipped by both, but nested: MariaDB's skipping ends at the second `*/`.
            "/*M!999999 /* x */ */ UPDATE t SET v = 1",
        ] {
            assert!(comments_read_otherwise(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "/*!40101 SET NAMES utf8mb4 */",
            "/*!40103 SET TIME_ZONE='+00:00' */; UPDATE t SET v = 1",
            "UPDATE /*! LOW_PRIORITY */ t SET v = 1",
            "SELECT /*!40001 SQL_NO_CACHE */ 1 /* a plain /* comment */",
            "UPDATE t SET v = '/*M' WHERE id = 1",
            // Comment-like text inside a literal.
            "UPDATE u SET s = 'prix --\u{a0}10 €' WHERE id = 1",
            "UPDATE u SET s = '/*!80016 DEFAULT ENCRYPTION=''N'' */' WHERE id = 1",
            "INSERT INTO u VALUES (7, '/*M!100616 SET NOTE_VERBOSITY=0 */')",
            // mariadb-dump's first line.
            "/*M!999999\\- enable the sandbox mode */\nREPLACE INTO u VALUES (1, 'x')",
            "/*M!999999 x */ UPDATE t SET v = 1",
            "SELECT 1 -- \u{a0}; UPDATE t SET v = 1",
        ] {
            assert!(!comments_read_otherwise(sql.as_bytes()), "{sql}");
        }
    }
}
