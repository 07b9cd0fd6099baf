//! Statement text that is not UTF-8 only because of binary string literals: drivers
//! that interpolate parameters on the client (MariaDB Connector/J's default, PyMySQL,
//! mysqlclient) send a byte array as `_binary'…'` with its bytes as they are, escaped
//! only where a quote, a backslash or a NUL would end or break the literal. The same
//! value written as a hexadecimal literal, `_binary X'…'`, is the same binary string
//! and plain ASCII, so the text can be analysed as UTF-8 and run as it is.
//!
//! A byte lexer of its own: the text is not a `str`, which sqlparser's tokenizer takes.

/// `sql` with every `_binary'…'` literal (and the literals right after it, which MySQL
/// joins to it) written as `_binary X'…'`, if that leaves valid UTF-8; None otherwise
/// (bytes that are not UTF-8 elsewhere, in another literal or a comment, or a literal
/// that does not end). `backslash_escapes`: whether a backslash escapes in a literal
/// (false under sql_mode NO_BACKSLASH_ESCAPES).
///
/// Only for a client character set whose multi-byte characters hold no ASCII byte
/// (utf8mb4, latin1, binary …): in gbk or sjis a quote or a backslash may be the
/// second byte of a character.
pub fn binary_literals_as_hex(sql: &[u8], backslash_escapes: bool) -> Option<String> {
    let mut out = Vec::with_capacity(sql.len() * 2);
    let mut at = 0;
    while at < sql.len() {
        let rest = &sql[at..];
        let taken = match rest[0] {
            quote @ (b'\'' | b'"' | b'`') => quoted_len(rest, quote, backslash_escapes)?,
            _ if opens_line_comment(rest) => line_len(rest),
            b'/' if rest.starts_with(b"/*") => block_comment_len(rest),
            b'_' if starts_binary_literal(sql, at) => {
                let (bytes, len) = binary_value(rest, backslash_escapes)?;
                out.extend_from_slice(b"_binary X'");
                for b in bytes {
                    out.extend_from_slice(format!("{b:02X}").as_bytes());
                }
                out.push(b'\'');
                at += len;
                continue;
            }
            b if is_identifier_byte(b) => {
                // A whole word, so that `_binary` inside one is not taken for the
                // introducer.
                rest.iter()
                    .position(|&b| !is_identifier_byte(b))
                    .unwrap_or(rest.len())
            }
            _ => 1,
        };
        out.extend_from_slice(&rest[..taken]);
        at += taken;
    }
    String::from_utf8(out).ok()
}

fn is_identifier_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || !b.is_ascii()
}

/// Whether the word at `at` is the introducer `_binary` (ASCII case ignored), a quote
/// after it (spaces between allowed), and not part of a name (`t._binary`, `@_binary`).
fn starts_binary_literal(sql: &[u8], at: usize) -> bool {
    let word = b"_binary";
    let Some(candidate) = sql.get(at..at + word.len()) else {
        return false;
    };
    if !candidate.eq_ignore_ascii_case(word) {
        return false;
    }
    if at > 0 && matches!(sql[at - 1], b'.' | b'@' | b'`') {
        return false;
    }
    let after = &sql[at + word.len()..];
    if after.first().is_some_and(|&b| is_identifier_byte(b)) {
        return false;
    }
    after
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'\'')
}

/// The bytes of the literal at the head of `rest` (`_binary`, spaces, then one or more
/// single-quoted strings with only spaces between them), and its length.
fn binary_value(rest: &[u8], backslash_escapes: bool) -> Option<(Vec<u8>, usize)> {
    let mut at = "_binary".len();
    let mut value = Vec::new();
    loop {
        let spaces = rest[at..]
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(rest.len() - at);
        if rest.get(at + spaces) != Some(&b'\'') {
            // At least one string follows the introducer (`starts_binary_literal`).
            return Some((value, at));
        }
        at += spaces;
        let len = quoted_len(&rest[at..], b'\'', backslash_escapes)?;
        unescape(&rest[at + 1..at + len - 1], backslash_escapes, &mut value);
        at += len;
    }
}

/// The length of the quoted run at the head of `rest` (both quotes included); None if
/// it does not end.
pub(super) fn quoted_len(rest: &[u8], quote: u8, backslash_escapes: bool) -> Option<usize> {
    let mut at = 1;
    while at < rest.len() {
        match rest[at] {
            b'\\' if backslash_escapes && quote != b'`' => at += 2,
            b if b == quote && rest.get(at + 1) == Some(&quote) => at += 2,
            b if b == quote => return Some(at + 1),
            _ => at += 1,
        }
    }
    None
}

/// The bytes a single-quoted literal's content stands for, appended to `value`.
fn unescape(content: &[u8], backslash_escapes: bool, value: &mut Vec<u8>) {
    let mut at = 0;
    while at < content.len() {
        match content[at] {
            b'\\' if backslash_escapes && at + 1 < content.len() => {
                let escaped = content[at + 1];
                match escaped {
                    b'0' => value.push(0),
                    b'b' => value.push(8),
                    b'n' => value.push(b'\n'),
                    b'r' => value.push(b'\r'),
                    b't' => value.push(b'\t'),
                    b'Z' => value.push(26),
                    // Kept with their backslash, for LIKE.
                    b'%' | b'_' => value.extend_from_slice(&[b'\\', escaped]),
                    other => value.push(other),
                }
                at += 2;
            }
            b'\'' => {
                // A doubled quote (the only way one is inside).
                value.push(b'\'');
                at += 2;
            }
            b => {
                value.push(b);
                at += 1;
            }
        }
    }
}

/// Whether a `#` or `-- ` comment (to the end of the line) starts at the head of
/// `rest`: MySQL wants a space or a control character after `--`.
pub(super) fn opens_line_comment(rest: &[u8]) -> bool {
    rest.first() == Some(&b'#')
        || rest.starts_with(b"--")
            && rest
                .get(2)
                .is_none_or(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

/// The length of the `/* … */` comment at the head of `rest` (MySQL's do not nest;
/// one that does not end runs to the end of the text).
pub(super) fn block_comment_len(rest: &[u8]) -> usize {
    find(&rest[2..], b"*/").map_or(rest.len(), |end| end + 4)
}

pub(super) fn line_len(rest: &[u8]) -> usize {
    rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len())
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::binary_literals_as_hex;

    #[test]
    fn binary_literals_become_hexadecimal_ones() {
        let sql = b"UPDATE t SET b = _binary'\\0\xff\x10\\'\\\\x''' WHERE k = _BINARY  '\x80' 'z'";
        assert_eq!(
            binary_literals_as_hex(sql, true).as_deref(),
            Some("UPDATE t SET b = _binary X'00FF10275C7827' WHERE k = _binary X'807A'")
        );
        // Under NO_BACKSLASH_ESCAPES a backslash is itself.
        assert_eq!(
            binary_literals_as_hex(b"SELECT _binary'\xfe\\'", false).as_deref(),
            Some("SELECT _binary X'FE5C'")
        );
        // LIKE's escapes keep their backslash, as MySQL keeps it.
        assert_eq!(
            binary_literals_as_hex(b"SELECT _binary'\xfe\\%\\_\\n'", true).as_deref(),
            Some("SELECT _binary X'FE5C255C5F0A'")
        );
    }

    #[test]
    fn only_the_introducer_counts_and_other_bytes_stay_refused() {
        // In another literal, an identifier, a comment: left as it is.
        let sql =
            "SELECT '_binary''x', `_binary` '_binary', t._binary, x_binary 'a' -- _binary'y'\n";
        assert_eq!(
            binary_literals_as_hex(sql.as_bytes(), true).as_deref(),
            Some(sql)
        );
        // Bytes that are not UTF-8 outside a binary literal.
        assert_eq!(binary_literals_as_hex(b"SELECT '\xff'", true), None);
        assert_eq!(binary_literals_as_hex(b"SELECT 1 /* \xff */", true), None);
        assert_eq!(binary_literals_as_hex(b"SELECT _latin1'\xe9'", true), None);
        // A literal that does not end.
        assert_eq!(binary_literals_as_hex(b"SELECT _binary'\xff", true), None);
        assert_eq!(
            binary_literals_as_hex(b"SELECT _binary'\xff\\'", true),
            None
        );
    }
}
