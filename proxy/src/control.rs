//! tandem's control functions (`SELECT tandem_begin()` …): recognising them in a query
//! text, and what each one answers. Shared by every SQL front end.
//!
//! Owns the grammar of the control statements only. Never talks to the lockserver and
//! never touches session state: the session carries out the `Control` it is handed.
//! Invariant: a text is a control statement only if all of it is exactly one call, so
//! a query that merely mentions `tandem_` is relayed untouched. One exception: a call
//! of one of tandem's functions with a column alias is refused, with the reason.

/// A control statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// `tandem_begin()` / `tandem_begin(timeout_ms)`.
    Begin { timeout_ms: Option<u64> },
    /// `tandem_join('XID')`.
    Join { xid: String },
    /// `tandem_commit()`.
    Commit,
    /// `tandem_rollback()`.
    Rollback,
    /// `tandem_status()` / `tandem_status('XID')`.
    Status { xid: Option<String> },
    /// `tandem_leave()`.
    Leave,
    /// `tandem_xid()`.
    Xid,
    /// `tandem_mode('at' | 'xa')`.
    Mode { mode: String },
}

impl Control {
    /// The name of the one column the answer has (DESIGN.md, "The application's side").
    pub fn column(&self) -> &'static str {
        column_of(match self {
            Control::Begin { .. } => "begin",
            Control::Join { .. } => "join",
            Control::Leave => "leave",
            Control::Xid => "xid",
            Control::Commit => "commit",
            Control::Rollback => "rollback",
            Control::Status { .. } => "status",
            Control::Mode { .. } => "mode",
        })
    }
}

/// A control statement that cannot be carried out as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadCall(pub String);

/// Recognises a control statement. `Ok(None)`: not one (relay it). `Err`: it calls a
/// `tandem_` function in a way tandem does not accept (tell the client why), a
/// parameter (`$1`) included: no value comes with a text query.
pub fn parse(sql: &[u8]) -> Result<Option<Control>, BadCall> {
    parse_call(sql)?.map(|call| call.bind(&[])).transpose()
}

/// A control call as written, its parameter (`$1`, over PostgreSQL's extended
/// protocol) not bound yet: drivers pass the xid as one (psycopg's
/// `execute("SELECT tandem_join(%s)", [xid])`, a JDBC `setString`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    function: String,
    args: Vec<Arg>,
}

/// What a call's parameter holds, and so the type it has when the client leaves it
/// to the server: the timeout of `tandem_begin($1)` is an integer, the rest text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParameterKind {
    Integer,
    Text,
}

impl Call {
    /// The function's name after `tandem_`, lower case.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The name of the one column the answer has.
    pub fn column(&self) -> &'static str {
        column_of(&self.function)
    }

    /// The kinds of the parameters the call takes (`$1` only, however often it appears):
    /// none for literals.
    pub fn parameters(&self) -> Vec<ParameterKind> {
        let kind = match self.function.as_str() {
            "begin" => ParameterKind::Integer,
            _ => ParameterKind::Text,
        };
        if self.args.contains(&Arg::Parameter) {
            vec![kind]
        } else {
            Vec::new()
        }
    }

    /// The control statement, its parameter taken from `values` (`$1` first, as text;
    /// None for NULL).
    pub fn bind(&self, values: &[Option<String>]) -> Result<Control, BadCall> {
        let function = self.function.as_str();
        let bad = |what: &str| Err(BadCall(format!("tandem_{function}: {what}")));
        let mut args = Vec::with_capacity(self.args.len());
        for arg in &self.args {
            args.push(match arg {
                Arg::Parameter => match values.first() {
                    None => {
                        return bad("there is no parameter $1 (a text query has no parameters)");
                    }
                    Some(None) => return bad("its parameter is NULL"),
                    Some(Some(value)) if function == "begin" => match value.trim().parse() {
                        Ok(ms) => Arg::Int(ms),
                        Err(_) => return bad("its parameter is not a timeout in milliseconds"),
                    },
                    Some(Some(value)) => Arg::Text(value.clone()),
                },
                literal => literal.clone(),
            });
        }
        let control = match (function, args.as_slice()) {
            ("begin", []) => Control::Begin { timeout_ms: None },
            ("begin", [Arg::Int(ms)]) if *ms > 0 => Control::Begin {
                timeout_ms: Some(*ms),
            },
            ("begin", _) => return bad("takes no argument or a positive timeout in milliseconds"),
            ("join", [Arg::Text(xid)]) => Control::Join { xid: xid.clone() },
            ("join", _) => return bad("takes the xid as a string literal or a parameter"),
            ("commit", []) => Control::Commit,
            ("rollback", []) => Control::Rollback,
            ("leave", []) => Control::Leave,
            ("xid", []) => Control::Xid,
            ("commit" | "rollback" | "leave" | "xid", _) => return bad("takes no argument"),
            ("status", []) => Control::Status { xid: None },
            ("status", [Arg::Text(xid)]) => Control::Status {
                xid: Some(xid.clone()),
            },
            ("status", _) => return bad("takes no argument or an xid string literal"),
            ("mode", [Arg::Text(mode)])
                if matches!(mode.to_ascii_lowercase().as_str(), "at" | "xa") =>
            {
                Control::Mode {
                    mode: mode.to_ascii_lowercase(),
                }
            }
            ("mode", _) => return bad("takes 'at' or 'xa'"),
            _ => return bad("is not a tandem control function"),
        };
        Ok(control)
    }
}

/// Recognises a control call: as [`parse`], its parameter left to bind.
pub fn parse_call(sql: &[u8]) -> Result<Option<Call>, BadCall> {
    // Cheap rejection first: this runs on every simple query.
    if sql.len() > 512 || !contains_ignore_case(sql, b"tandem_") {
        return Ok(None);
    }
    let Ok(text) = std::str::from_utf8(sql) else {
        return Ok(None);
    };
    let mut p = Cursor { rest: text };
    p.skip_space();
    if !p.keyword("select") {
        return Ok(None);
    }
    p.skip_space();
    let Some(name) = p.identifier() else {
        return Ok(None);
    };
    let lower = name.to_ascii_lowercase();
    let Some(function) = lower.strip_prefix("tandem_") else {
        return Ok(None);
    };
    p.skip_space();
    if !p.eat('(') {
        return Ok(None);
    }
    let args = p
        .arguments()
        .map_err(|what| BadCall(format!("tandem_{function}: {what}")))?;
    let bad = |what: &str| Err(BadCall(format!("tandem_{function}: {what}")));
    if CONTROL_FUNCTIONS.contains(&function) && p.clone().column_alias() {
        // Relayed, it would meet only the database's "no such function".
        return bad(&format!(
            "a control call takes no column alias; its one column is named {}",
            column_of(function)
        ));
    }
    p.skip_space();
    p.eat(';');
    p.skip_space();
    if !p.rest.is_empty() {
        return Ok(None);
    }
    if !CONTROL_FUNCTIONS.contains(&function) {
        return bad("is not a tandem control function");
    }
    Ok(Some(Call {
        function: function.to_owned(),
        args,
    }))
}

/// The control functions, by their name after `tandem_`.
pub const CONTROL_FUNCTIONS: [&str; 8] = [
    "begin", "join", "commit", "rollback", "status", "leave", "xid", "mode",
];

/// The column of a control function's answer (`Control::column`), by its name.
fn column_of(function: &str) -> &'static str {
    match function {
        "commit" | "rollback" | "status" => "status",
        "mode" => "mode",
        _ => "xid",
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Arg {
    Int(u64),
    Text(String),
    /// `$1`: the one parameter a call may take.
    Parameter,
}

#[derive(Clone)]
struct Cursor<'a> {
    rest: &'a str,
}

impl Cursor<'_> {
    /// Whether all that is left is a column alias: `[AS] name` (quoted or not), then
    /// perhaps `;`.
    fn column_alias(mut self) -> bool {
        self.skip_space();
        self.keyword("as");
        self.skip_space();
        let quote = ['"', '`'].into_iter().find(|&q| self.eat(q));
        let named = match quote {
            Some(q) => match self.rest.find(q) {
                Some(end) => {
                    self.rest = &self.rest[end + 1..];
                    true
                }
                None => false,
            },
            None => self.identifier().is_some(),
        };
        self.skip_space();
        self.eat(';');
        self.skip_space();
        named && self.rest.is_empty()
    }

    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn keyword(&mut self, word: &str) -> bool {
        let n = word.len();
        let matches = self
            .rest
            .get(..n)
            .is_some_and(|head| head.eq_ignore_ascii_case(word))
            && self
                .rest
                .get(n..)
                .and_then(|tail| tail.chars().next())
                .is_none_or(|c| !is_ident_char(c));
        if matches {
            self.rest = &self.rest[n..];
        }
        matches
    }

    fn identifier(&mut self) -> Option<&str> {
        let end = self
            .rest
            .find(|c: char| !is_ident_char(c))
            .unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (ident, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(ident)
    }

    /// Comma-separated integer or string literals, or `$1`, up to the closing parenthesis.
    fn arguments(&mut self) -> Result<Vec<Arg>, &'static str> {
        let mut args = Vec::new();
        self.skip_space();
        if self.eat(')') {
            return Ok(args);
        }
        loop {
            self.skip_space();
            args.push(self.argument()?);
            self.skip_space();
            if self.eat(')') {
                return Ok(args);
            }
            if !self.eat(',') {
                return Err("arguments must be literals separated by commas");
            }
        }
    }

    /// A literal, as written, or as a driver that writes its parameters into the text
    /// does (pgJDBC's `preferQueryMode=simple`): in parentheses, cast to its type
    /// (`('30000'::int4)`, `('x'::varchar)`).
    fn argument(&mut self) -> Result<Arg, &'static str> {
        let parenthesized = self.eat('(');
        self.skip_space();
        let mut arg = self.literal()?;
        self.skip_space();
        if let Some(rest) = self.rest.strip_prefix("::") {
            self.rest = rest;
            self.skip_space();
            let type_name = self.identifier().ok_or("a cast must name a type")?;
            arg = cast(arg, type_name)?;
            self.skip_space();
        }
        if parenthesized && !self.eat(')') {
            return Err("an argument in parentheses must be one literal");
        }
        Ok(arg)
    }

    fn literal(&mut self) -> Result<Arg, &'static str> {
        if self.eat('$') {
            return match self.identifier() {
                Some("1") => Ok(Arg::Parameter),
                _ => Err("a call's one parameter is $1"),
            };
        }
        if self.eat('\'') {
            let mut out = String::new();
            loop {
                let Some(c) = self.rest.chars().next() else {
                    return Err("unterminated string literal");
                };
                self.rest = &self.rest[c.len_utf8()..];
                if c == '\'' {
                    // SQL doubles a quote inside a literal.
                    if self.eat('\'') {
                        out.push('\'');
                        continue;
                    }
                    return Ok(Arg::Text(out));
                }
                out.push(c);
            }
        }
        let end = self
            .rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(self.rest.len());
        if end == 0 {
            return Err("arguments must be integer or string literals");
        }
        let (digits, rest) = self.rest.split_at(end);
        self.rest = rest;
        digits
            .parse()
            .map(Arg::Int)
            .map_err(|_| "integer argument out of range")
    }
}

/// `arg` cast to the type named `type_name`: to an integer or a string type, as the
/// server would read the cast.
fn cast(arg: Arg, type_name: &str) -> Result<Arg, &'static str> {
    // Each integer type with the largest value it holds.
    const INTEGERS: [(&str, u64); 6] = [
        ("int2", i16::MAX as u64),
        ("smallint", i16::MAX as u64),
        ("int4", i32::MAX as u64),
        ("integer", i32::MAX as u64),
        ("int8", i64::MAX as u64),
        ("bigint", i64::MAX as u64),
    ];
    const STRINGS: [&str; 5] = ["text", "varchar", "bpchar", "char", "name"];
    let integer_max = INTEGERS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(type_name))
        .map(|&(_, max)| max);
    let string = STRINGS.iter().any(|n| n.eq_ignore_ascii_case(type_name));
    let in_range = |n: u64| match integer_max {
        Some(max) if n <= max => Ok(Arg::Int(n)),
        _ => Err("an integer argument out of its type's range"),
    };
    match arg {
        Arg::Parameter => Ok(Arg::Parameter),
        Arg::Int(n) if integer_max.is_some() => in_range(n),
        Arg::Int(n) if string => Ok(Arg::Text(n.to_string())),
        Arg::Text(text) if string => Ok(Arg::Text(text)),
        Arg::Text(text) if integer_max.is_some() => text
            .trim()
            .parse()
            .map_err(|_| "an integer argument that is not a non-negative integer")
            .and_then(in_range),
        _ => Err("arguments may be cast to integer or string types only"),
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

pub(crate) use tandem_undo::contains_ignore_case;

/// The xid of a leading `/*+ XID('…') */` hint, if the statement starts with one.
pub fn xid_hint(sql: &[u8]) -> Option<String> {
    // Only the start is read: text past it need not be UTF-8 (a MySQL latin1 literal,
    // or a packet that has not all arrived).
    let text = match std::str::from_utf8(sql) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&sql[..e.valid_up_to()]).ok()?,
    }
    .trim_start();
    let rest = text.strip_prefix("/*+")?.trim_start();
    let (keyword, rest) = rest.split_at_checked(3)?;
    if !keyword.eq_ignore_ascii_case("xid") {
        return None;
    }
    let rest = rest
        .trim_start()
        .strip_prefix('(')?
        .trim_start()
        .strip_prefix('\'')?;
    let end = rest.find('\'')?;
    let (xid, after) = rest.split_at(end);
    let after = after[1..].trim_start().strip_prefix(')')?.trim_start();
    after.starts_with("*/").then(|| xid.to_owned())
}

/// A string as a SQL literal, quotes doubled: `'it''s'`.
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The leading words of a statement (letters, digits, `_`), past whitespace and
/// comments, as the server reads them: `--` and `/* */`, nested on PostgreSQL; on MySQL
/// (`mysql`) also `#`. Stops at the first character that is none of these, and gives
/// no word at all at a MySQL executable comment (`/*!50000 …*/`, MariaDB's `/*M! …*/`):
/// whether the server runs its text depends on its version, and its words may run on
/// past the comment (`/*!50000 SET */ PASSWORD …`), so no reading by words is safe.
pub fn leading_words(sql: &[u8], mysql: bool) -> impl Iterator<Item = &[u8]> {
    let mut rest = sql;
    std::iter::from_fn(move || {
        loop {
            rest = past_spaces(rest, mysql);
            let line_comment = rest
                .strip_prefix(b"--")
                .or_else(|| rest.strip_prefix(b"#").filter(|_| mysql));
            if let Some(after) = line_comment {
                // PostgreSQL ends one at a carriage return too; MySQL only at a
                // newline.
                let end = after
                    .iter()
                    .position(|&b| b == b'\n' || (b == b'\r' && !mysql))
                    .unwrap_or(after.len());
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix(b"/*") {
                if mysql && (after.starts_with(b"!") || after.starts_with(b"M!")) {
                    return None;
                }
                rest = past_block_comment(after, !mysql);
            } else {
                break;
            }
        }
        let len = rest
            .iter()
            .position(|b| !b.is_ascii_alphanumeric() && *b != b'_')
            .unwrap_or(rest.len());
        if len == 0 {
            return None;
        }
        let (word, after) = rest.split_at(len);
        rest = after;
        Some(word)
    })
}

/// `sql` past the spaces the server reads as such: ASCII's, a vertical tab too (which
/// Rust's `is_ascii_whitespace` leaves out), and on MySQL the bytes 0xA0 and 0xFF (a
/// space in latin1, cp1250 and the like, or in cp866, cp852 and keybcs2; in another
/// character set a byte the server refuses there anyway).
fn past_spaces(sql: &[u8], mysql: bool) -> &[u8] {
    let start = sql
        .iter()
        .position(|&b| {
            !(b.is_ascii_whitespace() || b == 0x0b || (mysql && (b == 0xa0 || b == 0xff)))
        })
        .unwrap_or(sql.len());
    &sql[start..]
}

/// What follows a block comment whose text (after its `/*`) starts `after`; `nested`:
/// the comment holds others, each closed by its own `*/` (PostgreSQL).
fn past_block_comment(after: &[u8], nested: bool) -> &[u8] {
    let mut depth = 1usize;
    let mut at = 0;
    while at + 1 < after.len() {
        match &after[at..at + 2] {
            b"*/" => {
                depth -= 1;
                at += 2;
                if depth == 0 {
                    return &after[at..];
                }
            }
            b"/*" if nested => {
                depth += 1;
                at += 2;
            }
            _ => at += 1,
        }
    }
    &after[after.len()..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_words_skip_comments_as_the_server_does() {
        let first = |sql: &str, mysql: bool| {
            leading_words(sql.as_bytes(), mysql)
                .next()
                .map(|w| String::from_utf8_lossy(w).into_owned())
        };
        // PostgreSQL nests block comments; MySQL does not.
        let nested = "/* /* */ BEGIN */ UPDATE t SET v = 1";
        assert_eq!(first(nested, false).as_deref(), Some("UPDATE"));
        assert_eq!(first(nested, true).as_deref(), Some("BEGIN"));
        assert_eq!(
            first("/* a */ -- b\n /* c /* d */ */ SELECT 1", false).as_deref(),
            Some("SELECT")
        );
        // MySQL may run an executable comment's text, depending on its version: no
        // word is read there.
        for sql in [
            "/*!50000 UPDATE t SET v = 1 */",
            "/*M!100101 DELETE FROM t */",
            "/*!50000 SET */ PASSWORD = 'x'",
            "/*!50000 ROLLBACK */ TO SAVEPOINT a",
            "/*!99999 SELECT */ UPDATE t SET v = 1",
        ] {
            assert_eq!(first(sql, true), None, "{sql}");
        }
        assert_eq!(
            leading_words(b"SET /*!50000 PASSWORD */ = 'x'", true).count(),
            1,
            "words stop there"
        );
        assert_eq!(first("# note\nCOMMIT", true).as_deref(), Some("COMMIT"));
        assert_eq!(first("-- c\rUPDATE t", false).as_deref(), Some("UPDATE"));
        assert_eq!(
            first("# x\rSELECT 1\nUPDATE t", true).as_deref(),
            Some("UPDATE"),
            "MySQL's ends at a newline only"
        );
        assert_eq!(
            leading_words(b"\xffUPDATE t", true).next(),
            Some(&b"UPDATE"[..])
        );
        // A vertical tab is a space to both servers; 0xA0 to MySQL's latin1.
        assert_eq!(first("\x0bUPDATE t", false).as_deref(), Some("UPDATE"));
        assert_eq!(
            leading_words(b"\xa0\x0bUPDATE t", true).next(),
            Some(&b"UPDATE"[..])
        );
        assert_eq!(
            first("/*!50000 UPDATE t */", false),
            None,
            "a comment on PostgreSQL"
        );
        assert_eq!(first("/* never closed", false), None);
    }

    fn ok(sql: &str) -> Option<Control> {
        parse(sql.as_bytes()).unwrap()
    }

    #[test]
    fn recognises_every_control_function() {
        assert_eq!(
            ok("SELECT tandem_begin()"),
            Some(Control::Begin { timeout_ms: None })
        );
        assert_eq!(
            ok("  select TANDEM_BEGIN( 5000 ) ;  "),
            Some(Control::Begin {
                timeout_ms: Some(5000)
            })
        );
        assert_eq!(
            ok("SELECT tandem_join('ab-1')"),
            Some(Control::Join { xid: "ab-1".into() })
        );
        assert_eq!(ok("SELECT tandem_commit();"), Some(Control::Commit));
        assert_eq!(ok("SELECT tandem_rollback()"), Some(Control::Rollback));
        assert_eq!(
            ok("SELECT tandem_status()"),
            Some(Control::Status { xid: None })
        );
        assert_eq!(
            ok("SELECT tandem_status('x''y')"),
            Some(Control::Status {
                xid: Some("x'y".into())
            })
        );
        assert_eq!(ok("SELECT tandem_leave()"), Some(Control::Leave));
        assert_eq!(ok("SELECT tandem_xid()"), Some(Control::Xid));
        assert_eq!(
            ok("SELECT tandem_mode('XA')"),
            Some(Control::Mode { mode: "xa".into() })
        );
    }

    #[test]
    fn parameters_a_driver_writes_into_the_text_are_read_as_their_values() {
        // pgJDBC's preferQueryMode=simple.
        assert_eq!(
            ok("SELECT tandem_begin(('30000'::int4))"),
            Some(Control::Begin {
                timeout_ms: Some(30000)
            })
        );
        assert_eq!(
            ok("SELECT tandem_begin(( '30000' :: INT8 ))"),
            Some(Control::Begin {
                timeout_ms: Some(30000)
            })
        );
        assert_eq!(
            ok("SELECT tandem_join(('ab''1'))"),
            Some(Control::Join { xid: "ab'1".into() })
        );
        assert_eq!(
            ok("SELECT tandem_join(('ab-1'::varchar))"),
            Some(Control::Join { xid: "ab-1".into() })
        );
        assert_eq!(
            ok("SELECT tandem_mode('at'::text)"),
            Some(Control::Mode { mode: "at".into() })
        );
        for bad in [
            "SELECT tandem_begin(('x'::int4))",
            "SELECT tandem_begin(('-5'::int4))",
            "SELECT tandem_begin(('40000'::int2))",
            "SELECT tandem_begin(('99999999999'::int4))",
            "SELECT tandem_join(('x'::bytea))",
            "SELECT tandem_join((('x')))",
            "SELECT tandem_join(('x')",
            "SELECT tandem_join(('x'::))",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_queries_are_not_control_statements() {
        for sql in [
            "SELECT 1",
            "SELECT tandem_begin(), 1",
            "SELECT tandem_begin(); SELECT 2",
            "SELECT * FROM tandem_begin()",
            "UPDATE t SET tandem_x = 1",
            "SELECT tandem_begin",
            "SELECTtandem_begin()",
        ] {
            assert_eq!(parse(sql.as_bytes()), Ok(None), "{sql}");
        }
    }

    #[test]
    fn wrong_arguments_are_errors_not_relays() {
        for sql in [
            "SELECT tandem_begin() AS x",
            "select tandem_rollback() status;",
            "SELECT tandem_xid() AS \"Xid\"",
            "SELECT tandem_begin(100) `id`",
            "SELECT tandem_begin('x')",
            "SELECT tandem_begin(0)",
            "SELECT tandem_join()",
            "SELECT tandem_commit(1)",
            "SELECT tandem_mode('tcc')",
            "SELECT tandem_nonsense()",
            "SELECT tandem_join('unterminated)",
        ] {
            assert!(parse(sql.as_bytes()).is_err(), "{sql}");
        }
    }

    #[test]
    fn a_parameter_is_bound_later_and_read_as_the_call_reads_it() {
        let call = |sql: &str| parse_call(sql.as_bytes()).unwrap().unwrap();
        let join = call("SELECT tandem_join( $1 )");
        assert_eq!(join.parameters(), [ParameterKind::Text]);
        assert_eq!(join.column(), "xid");
        assert_eq!(
            join.bind(&[Some("ab-1".into())]),
            Ok(Control::Join { xid: "ab-1".into() })
        );
        assert!(join.bind(&[None]).is_err(), "NULL");
        assert!(join.bind(&[]).is_err(), "no value");
        let begin = call("select TANDEM_BEGIN($1);");
        assert_eq!(begin.parameters(), [ParameterKind::Integer]);
        assert_eq!(
            begin.bind(&[Some("5000".into())]),
            Ok(Control::Begin {
                timeout_ms: Some(5000)
            })
        );
        for bad in ["0", "-5", "5s", ""] {
            assert!(begin.bind(&[Some(bad.into())]).is_err(), "{bad}");
        }
        assert_eq!(
            call("SELECT tandem_mode($1)").bind(&[Some("XA".into())]),
            Ok(Control::Mode { mode: "xa".into() })
        );
        assert!(call("SELECT tandem_commit()").parameters().is_empty());
        // A text query has no values: the call says so instead of being relayed.
        assert!(parse(b"SELECT tandem_join($1)").is_err());
        assert!(parse(b"SELECT tandem_commit($1)").is_err());
        for other in [
            "SELECT tandem_join($2)",
            "SELECT tandem_join($)",
            "SELECT tandem_join($1x)",
        ] {
            assert!(parse_call(other.as_bytes()).is_err(), "{other}");
        }
    }

    #[test]
    fn xid_hints() {
        assert_eq!(
            xid_hint(b"/*+ XID('ab-1') */ UPDATE t SET v = 1"),
            Some("ab-1".into())
        );
        assert_eq!(xid_hint(b"  /*+xid( 'x' )*/SELECT 1"), Some("x".into()));
        assert_eq!(xid_hint(b"/* XID('x') */ SELECT 1"), None);
        assert_eq!(xid_hint(b"SELECT 1 /*+ XID('x') */"), None);
        assert_eq!(xid_hint(b"/*+ XID('x' */"), None);
        assert_eq!(
            xid_hint(b"/*+ XID('x') */ UPDATE t SET v = '\xe9'"),
            Some("x".into())
        );
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }
}
