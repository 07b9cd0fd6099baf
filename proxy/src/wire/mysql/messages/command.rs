//! Client commands tandem reads: `KILL [HARD|SOFT] [CONNECTION|QUERY] id` sent as a
//! COM_QUERY, and COM_PROCESS_KILL.
//!
//! Owns recognising a kill of one connection id, so the session can map tandem's ids to
//! backend thread ids. Anything else (`KILL QUERY ID n` kills by query id, `KILL USER u`)
//! is not recognised and passes through untouched.

use super::super::reader::Reader;

/// What a KILL ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillScope {
    /// `KILL CONNECTION n` or `KILL n`.
    Connection,
    /// `KILL QUERY n`.
    Query,
}

/// A kill of one connection id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kill {
    /// MariaDB's `HARD` or `SOFT`, kept as the client wrote it.
    pub modifier: Option<&'static str>,
    pub scope: KillScope,
    pub id: u64,
}

impl Kill {
    /// Recognises a whole COM_QUERY statement (its SQL text, after the command byte).
    /// Whitespace and comments around words, the id in parentheses and one trailing `;`
    /// are allowed; nothing else is (an executable comment, whose text the server
    /// runs, makes it not a kill tandem reads).
    pub fn parse(sql: &[u8]) -> Option<Kill> {
        // Runs on every short COM_QUERY: any other statement ends at its first word.
        let mut tokens = KillTokens { sql, at: 0 };
        if !tokens.next()??.eq_ignore_ascii_case(b"kill") {
            return None;
        }
        let tokens: Vec<&[u8]> = tokens.collect::<Option<_>>()?;
        let tokens = match tokens.split_last() {
            Some((&b";", rest)) => rest,
            _ => &tokens[..],
        };
        let tokens: Vec<&[u8]> = match tokens {
            // The id in parentheses, as the server reads an expression.
            [head @ .., b"(", id, b")"] => head.iter().copied().chain([*id]).collect(),
            _ => tokens.to_vec(),
        };
        let mut words = tokens.into_iter();
        let mut word = words.next()?;
        let modifier = if word.eq_ignore_ascii_case(b"hard") {
            Some("HARD")
        } else if word.eq_ignore_ascii_case(b"soft") {
            Some("SOFT")
        } else {
            None
        };
        if modifier.is_some() {
            word = words.next()?;
        }
        let scope = if word.eq_ignore_ascii_case(b"query") {
            KillScope::Query
        } else if word.eq_ignore_ascii_case(b"connection") {
            KillScope::Connection
        } else {
            // `KILL n`: no scope word; the word is the id.
            let id = parse_id(word)?;
            return words.next().is_none().then_some(Kill {
                modifier,
                scope: KillScope::Connection,
                id,
            });
        };
        let id = parse_id(words.next()?)?;
        words.next().is_none().then_some(Kill {
            modifier,
            scope,
            id,
        })
    }

    /// The statement that kills `thread_id` the same way.
    pub fn to_sql(&self, thread_id: u32) -> String {
        let scope = match self.scope {
            KillScope::Connection => "CONNECTION",
            KillScope::Query => "QUERY",
        };
        match self.modifier {
            Some(m) => format!("KILL {m} {scope} {thread_id}"),
            None => format!("KILL {scope} {thread_id}"),
        }
    }
}

/// The words of a KILL statement, and `(`, `)` and `;` each as one; whitespace and
/// comments skipped. `None` in their place: an executable comment, or a comment left
/// open, which makes the statement not one tandem reads.
struct KillTokens<'a> {
    sql: &'a [u8],
    at: usize,
}

impl<'a> Iterator for KillTokens<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.at < self.sql.len() {
            let rest = &self.sql[self.at..];
            if rest[0].is_ascii_whitespace() {
                self.at += 1;
            } else if rest.starts_with(b"/*") {
                if rest.starts_with(b"/*!") || rest.starts_with(b"/*M!") {
                    self.at = self.sql.len();
                    return Some(None);
                }
                let Some(end) = rest.windows(2).skip(2).position(|w| w == b"*/") else {
                    self.at = self.sql.len();
                    return Some(None);
                };
                self.at += end + 4;
            } else if rest[0] == b'#' || rest.starts_with(b"-- ") || rest.starts_with(b"--\t") {
                self.at += rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            } else if matches!(rest[0], b'(' | b')' | b';') {
                self.at += 1;
                return Some(Some(&rest[..1]));
            } else {
                let len = rest
                    .iter()
                    .position(|&b| {
                        b.is_ascii_whitespace() || matches!(b, b'(' | b')' | b';' | b'#')
                    })
                    .unwrap_or(rest.len());
                let len = match rest[..len].windows(2).position(|w| w == b"/*") {
                    Some(comment) => comment,
                    None => len,
                };
                self.at += len;
                return Some(Some(&rest[..len]));
            }
        }
        None
    }
}

fn parse_id(word: &[u8]) -> Option<u64> {
    if word.is_empty() || word.len() > 20 || !word.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(word).ok()?.parse().ok()
}

/// COM_PROCESS_KILL's connection id (the payload after the command byte).
pub fn process_kill_id(body: &[u8]) -> Option<u32> {
    Reader::new(body).u32().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_of_one_id_are_recognised() {
        let k = Kill::parse(b"KILL QUERY 1073741825").unwrap();
        assert_eq!(
            (k.scope, k.id, k.modifier),
            (KillScope::Query, 1_073_741_825, None)
        );
        let k = Kill::parse(b"  kill  hard\tconnection 7 ; ").unwrap();
        assert_eq!(
            (k.scope, k.id, k.modifier),
            (KillScope::Connection, 7, Some("HARD"))
        );
        // Comments, and the id in parentheses, as the server reads them.
        for sql in [
            &b"KILL /*c*/ QUERY 7"[..],
            b"KILL QUERY (7)",
            b"KILL QUERY ( 7 ) ;",
            b"kill query 7 -- stop it",
            b"KILL # why\nQUERY 7",
        ] {
            let k = Kill::parse(sql).unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(sql)));
            assert_eq!((k.scope, k.id), (KillScope::Query, 7));
        }
        let k = Kill::parse(b"kill 9;").unwrap();
        assert_eq!((k.scope, k.id), (KillScope::Connection, 9));
        assert_eq!(k.to_sql(42), "KILL CONNECTION 42");
        assert_eq!(
            Kill::parse(b"KILL SOFT QUERY 3").unwrap().to_sql(5),
            "KILL SOFT QUERY 5"
        );
    }

    #[test]
    fn other_statements_are_not_kills() {
        for sql in [
            &b"KILL QUERY ID 5"[..],
            b"KILL USER bob",
            b"KILL QUERY 5; SELECT 1",
            b"KILL QUERY",
            b"KILL QUERY -1",
            b"KILL QUERY 99999999999999999999999",
            b"SELECT 'KILL QUERY 1'",
            // The server runs an executable comment's text: not read by tandem.
            b"KILL /*!50000 QUERY */ 5",
            b"KILL QUERY 5 /* open",
            b"KILL QUERY ((5))",
            b"KILL QUERY 5;;",
            b"killer 1",
            b"",
        ] {
            assert_eq!(Kill::parse(sql), None, "{}", String::from_utf8_lossy(sql));
        }
    }

    #[test]
    fn process_kill_id_is_little_endian() {
        assert_eq!(process_kill_id(&[1, 0, 0, 0x40]), Some(0x4000_0001));
        assert_eq!(process_kill_id(&[1, 0]), None);
    }
}
