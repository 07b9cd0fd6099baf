//! Which tables a statement may change rows of, for a write tandem does not analyse
//! (TRUNCATE, MERGE, a write in a WITH clause, a multi-statement query): outside a
//! global transaction such a write cannot be checked row by row, so what matters is
//! only whether any table it may change holds global locks.

use super::prepared::{SqlLevel, sql_level};
use super::{
    Names, POSTGRES_NAMES, RECURSION_LIMIT, mysql, split_mysql_statements, split_statements,
};
use crate::dialect::{Dialect, Grammar};
use crate::error::Error;
use sqlparser::ast::{
    CascadeOption, FromTable, ObjectName, ObjectNamePart, OnConflictAction, OnInsert, Statement,
    TableFactor, TableObject, TableWithJoins, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::collections::HashMap;
use std::ops::ControlFlow;

/// What [`tables_changed`] names for a statement that may change rows of any table:
/// `TRUNCATE … CASCADE` (every table referencing the named ones, at any depth), or a
/// statement that reads as a write but does not parse.
pub const EVERY_TABLE: &str = "*";

/// The tables whose existing rows `sql` may update or delete, in any of its
/// statements and at any depth (a WITH clause, EXPLAIN ANALYZE, COPY's query):
/// UPDATE, DELETE, MERGE, TRUNCATE, an upsert's DO UPDATE or ON DUPLICATE KEY UPDATE,
/// REPLACE. Each is named by its last part, as the server reads it (PostgreSQL folds
/// unquoted names); [`EVERY_TABLE`] where any table may be. A plain INSERT only adds
/// rows and is not named. `None`: the text does not split into statements. Writes
/// inside functions are not seen.
pub fn tables_changed(dialect: &dyn Dialect, sql: &str) -> Option<Vec<String>> {
    tables_changed_resolving(dialect, sql, &|_| None, &|_| true)
}

/// As [`tables_changed`], following SQL-level statements that run another statement's
/// text: `EXECUTE name` runs what `prepared(name)` says the session prepared under that
/// name (or a `PREPARE` earlier in `sql`), `EXECUTE IMMEDIATE` its literal, MariaDB's
/// `ANALYZE` its statement. A text tandem does not know (a variable, a name
/// `prepared` does not know) may change any table: [`EVERY_TABLE`], and so may an
/// `EXECUTE` behind a call of a function that `prepares_names` says may prepare or
/// drop statements (PostgreSQL: one of the database's own, by dynamic SQL).
pub fn tables_changed_resolving(
    dialect: &dyn Dialect,
    sql: &str,
    prepared: &dyn Fn(&str) -> Option<String>,
    prepares_names: &dyn Fn(&str) -> bool,
) -> Option<Vec<String>> {
    let names = match dialect.grammar() {
        Grammar::PostgreSql => POSTGRES_NAMES,
        Grammar::MySql => mysql::MYSQL_NAMES,
    };
    let mut changed = Changed {
        names,
        tables: Vec::new(),
        executes: Vec::new(),
        plans: 0,
        prepares_names,
        after_ddl: false,
    };
    changed.statements_of(dialect, sql, prepared, 0)?;
    Some(changed.tables)
}

/// How deep texts that run texts are followed (the servers refuse most nesting).
const RUNS_OTHER_DEPTH: usize = 4;

impl Changed<'_> {
    /// Adds what every statement of `sql` may change; None if it does not split.
    fn statements_of(
        &mut self,
        dialect: &dyn Dialect,
        sql: &str,
        prepared: &dyn Fn(&str) -> Option<String>,
        depth: usize,
    ) -> Option<()> {
        if dialect.grammar() == Grammar::MySql
            && crate::mysql::reading::comments_read_otherwise(sql.as_bytes())
        {
            // Where its statements begin and end, tandem cannot tell.
            self.push(EVERY_TABLE.to_owned());
            return Some(());
        }
        let pieces = match dialect.grammar() {
            Grammar::PostgreSql => split_statements(dialect, sql).ok()?,
            Grammar::MySql => split_mysql_statements(sql).ok()?,
        };
        // What earlier statements of this text prepared (None: a text tandem cannot
        // read), and whether one may have prepared or dropped names unseen.
        let mut names = PreparedHere::default();
        for piece in pieces {
            if dialect.grammar() == Grammar::MySql && opens_compound(piece) {
                // Its statements run as one, split by tandem where the server does
                // not: any table may be written.
                self.push(EVERY_TABLE.to_owned());
                continue;
            }
            let run = match sql_level(dialect, piece) {
                Some(SqlLevel::Prepare(name, text)) => {
                    names.texts.insert(name, text);
                    continue;
                }
                Some(SqlLevel::Deallocate(name)) => {
                    // Its EXECUTE fails: it runs nothing.
                    names.texts.insert(name, Some(String::new()));
                    continue;
                }
                Some(SqlLevel::ForgetAll) => {
                    names.forget_all();
                    continue;
                }
                Some(SqlLevel::Execute(name)) => Run::Named(name),
                Some(SqlLevel::Immediate(text)) => Run::Text(text),
                Some(SqlLevel::Runs(text)) => Run::Text(Some(text)),
                Some(SqlLevel::RunsUnknown) => Run::Text(None),
                None => {
                    self.statement(dialect, piece);
                    for executed in std::mem::take(&mut self.executes) {
                        let run = match executed {
                            Some(name) => Run::Named(name),
                            None => Run::Text(None),
                        };
                        self.run(dialect, run, &names, prepared, depth);
                    }
                    // A PostgreSQL function may prepare or drop statements (by
                    // dynamic SQL).
                    let prepares =
                        |functions: Vec<String>| functions.iter().any(|f| (self.prepares_names)(f));
                    if dialect.grammar() == Grammar::PostgreSql
                        && super::try_called_functions(dialect, piece).is_none_or(prepares)
                    {
                        names.forget_all();
                    }
                    continue;
                }
            };
            self.run(dialect, run, &names, prepared, depth);
        }
        Some(())
    }

    /// Adds what a statement that runs another text (`run`) may change: what that text
    /// may, or every table if tandem does not know it.
    fn run(
        &mut self,
        dialect: &dyn Dialect,
        run: Run,
        names: &PreparedHere,
        prepared: &dyn Fn(&str) -> Option<String>,
        depth: usize,
    ) {
        let followed = match run {
            Run::Named(name) => {
                let text = match names.texts.get(&name) {
                    Some(text) => text.clone(),
                    None if names.forgot_all => None,
                    None => prepared(&name),
                };
                text.filter(|_| depth < RUNS_OTHER_DEPTH).and_then(|text| {
                    match self.prepare_of(dialect, &text, &name) {
                        PreparedText::Statement(statement) => {
                            let _ = statement.visit(self);
                            Some(())
                        }
                        PreparedText::Plain => {
                            self.statements_of(dialect, &text, prepared, depth + 1)
                        }
                        PreparedText::Unknown => None,
                    }
                })
            }
            Run::Text(text) => text
                .filter(|_| depth < RUNS_OTHER_DEPTH)
                .and_then(|text| self.statements_of(dialect, &text, prepared, depth + 1)),
        };
        if followed.is_none() {
            self.push(EVERY_TABLE.to_owned());
        }
    }

    /// PostgreSQL lists a statement made by SQL-level PREPARE with the whole query that
    /// made it, other statements and all: which statement `PREPARE name AS …` in
    /// `text` prepares. Unknown where the text prepares the name more than once, or
    /// holds a statement tandem cannot parse (which may be that PREPARE).
    fn prepare_of(&self, dialect: &dyn Dialect, text: &str, name: &str) -> PreparedText {
        if dialect.grammar() != Grammar::PostgreSql {
            return PreparedText::Plain;
        }
        let Ok(pieces) = split_statements(dialect, text) else {
            return PreparedText::Unknown;
        };
        let mut found = None;
        let mut prepares = false;
        for piece in pieces {
            let Some(statements) = parse(dialect, piece) else {
                return PreparedText::Unknown;
            };
            for statement in statements {
                if let Statement::Prepare {
                    name: prepared,
                    statement,
                    ..
                } = statement
                {
                    prepares = true;
                    if self.names.table(&prepared) == name {
                        if found.is_some() {
                            return PreparedText::Unknown;
                        }
                        found = Some(*statement);
                    }
                }
            }
        }
        match found {
            Some(statement) => PreparedText::Statement(Box::new(statement)),
            // A text that prepares only other names is not this one's.
            None if prepares => PreparedText::Unknown,
            None => PreparedText::Plain,
        }
    }

    /// Adds what one statement that runs no other text may change; the statements it
    /// runs by name (EXPLAIN ANALYZE EXECUTE) are left in `executes`.
    fn statement(&mut self, dialect: &dyn Dialect, piece: &str) {
        if is_ddl(dialect, piece) {
            // A view, rule or foreign key a write behind it in the same text goes
            // through is not in the catalog tandem read.
            self.after_ddl = true;
            return;
        }
        match parse(dialect, piece) {
            Some(statements) => {
                for statement in &statements {
                    let _ = statement.visit(self);
                }
            }
            None => match unparsed_target(dialect, piece, self.names) {
                Unparsed::NotAWrite => {}
                Unparsed::Writes(table) => self.push(table),
                Unparsed::Unknown => self.push(EVERY_TABLE.to_owned()),
            },
        }
    }
}

/// What one statement runs besides itself.
enum Run {
    /// A statement prepared under this name.
    Named(String),
    /// This text (None: one tandem cannot read).
    Text(Option<String>),
}

/// The names earlier statements of one text prepared or dropped.
#[derive(Default)]
struct PreparedHere {
    /// What each name stands for now (None: a text tandem cannot read; "": nothing).
    texts: HashMap<String, Option<String>>,
    /// A statement may have prepared or dropped names unseen: no earlier text holds.
    forgot_all: bool,
}

impl PreparedHere {
    fn forget_all(&mut self) {
        self.texts.clear();
        self.forgot_all = true;
    }
}

/// Which statement a name's listed text prepares (`Changed::prepare_of`).
enum PreparedText {
    Statement(Box<Statement>),
    /// Not made by SQL-level PREPARE: the text is the statement.
    Plain,
    Unknown,
}

/// Whether a MySQL statement opens a compound statement: BEGIN NOT ATOMIC, IF, CASE,
/// a loop, and under sql_mode ORACLE an anonymous block (`DECLARE …`, `BEGIN UPDATE
/// …`). A BEGIN alone or with WORK starts a transaction.
fn opens_compound(piece: &str) -> bool {
    use sqlparser::tokenizer::Token;
    let Some(tokens) = super::tokens(&crate::Mysql, piece) else {
        return false;
    };
    let mut words = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .map(|t| match t {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_lowercase(),
            _ => String::new(),
        });
    match words.next().as_deref() {
        Some("if" | "case" | "loop" | "while" | "repeat" | "for" | "declare") => true,
        Some("begin") => words
            .next()
            .is_some_and(|second| second != "work" && !second.is_empty()),
        _ => false,
    }
}

/// DDL (`CREATE`, `ALTER`, `DROP`, `RENAME`): a statement after which a name may
/// stand for other tables than the catalog tandem read says (a view, a rule, a
/// foreign key with actions).
fn is_ddl(dialect: &dyn Dialect, piece: &str) -> bool {
    use sqlparser::tokenizer::Token;
    let Some(tokens) = super::tokens(dialect, piece) else {
        return false;
    };
    let first = tokens.iter().find_map(|t| match t {
        Token::Whitespace(_) => None,
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_lowercase()),
        _ => Some(String::new()),
    });
    matches!(
        first.as_deref(),
        Some("create" | "alter" | "drop" | "rename")
    )
}

/// Every table (or view) `sql` names anywhere, by its last part as the server reads
/// it: what a view's definition reads, and so what a write through it may change.
/// `None`: it does not parse.
pub fn tables_named(dialect: &dyn Dialect, sql: &str) -> Option<Vec<String>> {
    let names = match dialect.grammar() {
        Grammar::PostgreSql => POSTGRES_NAMES,
        Grammar::MySql => mysql::MYSQL_NAMES,
    };
    let mut named = Vec::new();
    for statement in parse(dialect, sql)? {
        let _ = sqlparser::ast::visit_relations(&statement, |relation| {
            if let Some(ObjectNamePart::Identifier(ident)) = relation.0.last() {
                let name = names.table(ident);
                if !named.contains(&name) {
                    named.push(name);
                }
            }
            ControlFlow::<()>::Continue(())
        });
    }
    Some(named)
}

/// The statements of one piece of text, None if it does not parse.
fn parse(dialect: &dyn Dialect, sql: &str) -> Option<Vec<Statement>> {
    match dialect.grammar() {
        Grammar::PostgreSql => Parser::new(&PostgreSqlDialect {})
            .with_recursion_limit(RECURSION_LIMIT)
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_statements())
            .ok(),
        Grammar::MySql => mysql::parse(sql, |message| Error::Parse {
            dialect: dialect.name(),
            excerpt: String::new(),
            message,
        })
        .ok(),
    }
}

/// What the words of a statement that does not parse say it writes.
enum Unparsed {
    /// It does not begin as a write.
    NotAWrite,
    /// `UPDATE t …`, `DELETE FROM t …`, `INSERT INTO t …`, `MERGE INTO t …`,
    /// `REPLACE INTO t …`, `TRUNCATE t`: this table (PostgreSQL's subscripted `SET
    /// a[1] = …`, say, which the parser does not take).
    Writes(String),
    /// A write tandem cannot name the table of.
    Unknown,
}

/// The table an unparsed statement writes, read from its first tokens: only where they
/// leave no doubt (one table, then what follows a single table's name in that kind of
/// statement); anything else (a join, USING, a name the tokens do not spell whole such
/// as `U&"t"`, a MySQL executable comment) is `Unknown`.
fn unparsed_target(dialect: &dyn Dialect, sql: &str, names: Names) -> Unparsed {
    use sqlparser::tokenizer::Token;
    const WRITES: [&str; 9] = [
        "update", "delete", "insert", "replace", "merge", "with", "truncate", "copy", "explain",
    ];
    // Text that does not tokenize fails on the server too.
    let Some(tokens) = super::tokens(dialect, sql) else {
        return Unparsed::NotAWrite;
    };
    let mut words = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon));
    let first = match words.next() {
        Some(Token::Word(w)) => w.value.to_ascii_lowercase(),
        _ => return Unparsed::NotAWrite,
    };
    if !WRITES.contains(&first.as_str()) {
        return Unparsed::NotAWrite;
    }
    if super::has_executable_comment(sql) {
        // The server may read what tandem's tokens take for a comment, or the reverse.
        return Unparsed::Unknown;
    }
    // The words a write's table follows, those that may stand between, and those that
    // may follow a single table's name (and its alias).
    let (lead, optional, follow): (&[&str], &[&str], &[&str]) = match first.as_str() {
        "update" => (&[], &["only", "low_priority", "ignore"], &["set"]),
        "delete" => (
            &["from"],
            &["only", "low_priority", "quick", "ignore"],
            &["where", "order", "limit", "returning"],
        ),
        "insert" | "replace" => (
            &["into"],
            &["low_priority", "delayed", "high_priority", "ignore"],
            &["values", "value", "select", "set", "default", "overriding"],
        ),
        "merge" => (&["into"], &[], &["using"]),
        "truncate" => (&[], &["table", "only"], &[]),
        _ => return Unparsed::Unknown,
    };
    let keyword = |t: Option<&Token>, set: &[&str]| {
        matches!(t, Some(Token::Word(w)) if w.quote_style.is_none()
            && set.iter().any(|k| w.value.eq_ignore_ascii_case(k)))
    };
    let mut next = words.next();
    while keyword(next, optional) {
        next = words.next();
    }
    for wanted in lead {
        if !keyword(next, &[wanted]) {
            return Unparsed::Unknown;
        }
        next = words.next();
        while keyword(next, optional) {
            next = words.next();
        }
    }
    // `name` or `schema.name`: the last part.
    let mut table = None;
    while let Some(Token::Word(w)) = next {
        table = Some(names.table(&sqlparser::ast::Ident {
            value: w.value.clone(),
            quote_style: w.quote_style,
            span: sqlparser::tokenizer::Span::empty(),
        }));
        next = words.next();
        if !matches!(next, Some(Token::Period)) {
            break;
        }
        next = words.next();
    }
    let Some(table) = table else {
        return Unparsed::Unknown;
    };
    // What follows: the end, or what follows one table (after an alias, if any).
    let inserts = first == "insert" || first == "replace";
    let follows = |t: Option<&Token>| {
        t.is_none() || keyword(t, follow) || (inserts && matches!(t, Some(Token::LParen)))
    };
    if follows(next) {
        return Unparsed::Writes(table);
    }
    if first != "truncate" {
        if keyword(next, &["as"]) {
            next = words.next();
        }
        if matches!(next, Some(Token::Word(_))) && follows(words.next()) {
            return Unparsed::Writes(table);
        }
    }
    Unparsed::Unknown
}

struct Changed<'a> {
    names: Names,
    /// Whether a called function may prepare or drop statements.
    prepares_names: &'a dyn Fn(&str) -> bool,
    /// DDL ran ahead in the text: what the names written after it go through (a
    /// view, a rule, a foreign key) is not what the catalog tandem read says.
    after_ddl: bool,
    tables: Vec<String>,
    /// The statements a visited one runs by name (EXPLAIN ANALYZE EXECUTE; None: one
    /// tandem cannot name), for `statements_of` to follow.
    executes: Vec<Option<String>>,
    /// How deep inside EXPLAIN without ANALYZE or PREPARE (which run nothing) the visit
    /// is.
    plans: usize,
}

impl Changed<'_> {
    fn push(&mut self, table: String) {
        if self.plans == 0 && !self.tables.contains(&table) {
            self.tables.push(table);
            if self.after_ddl {
                self.push(EVERY_TABLE.to_owned());
            }
        }
    }

    fn add(&mut self, name: &ObjectName) {
        if let Some(ObjectNamePart::Identifier(ident)) = name.0.last() {
            self.push(self.names.table(ident));
        }
    }

    /// Every table of a FROM list: which of them a MySQL multi-table write changes is
    /// not worth telling apart here.
    fn add_all(&mut self, from: &[TableWithJoins]) {
        for t in from {
            self.add_factor(&t.relation);
            for join in &t.joins {
                self.add_factor(&join.relation);
            }
        }
    }

    fn add_factor(&mut self, factor: &TableFactor) {
        if let TableFactor::Table { name, .. } = factor {
            self.add(name);
        }
    }
}

impl Visitor for Changed<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        match statement {
            Statement::Update(update) => {
                self.add_factor(&update.table.relation);
                for join in &update.table.joins {
                    self.add_factor(&join.relation);
                }
            }
            Statement::Delete(delete) if !delete.tables.is_empty() => {
                for name in &delete.tables {
                    self.add(name);
                }
            }
            Statement::Delete(delete) => match &delete.from {
                FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from) => {
                    self.add_all(from)
                }
            },
            Statement::Insert(insert) => {
                let changes = insert.replace_into
                    || match &insert.on {
                        Some(OnInsert::DuplicateKeyUpdate(_)) => true,
                        Some(OnInsert::OnConflict(c)) => {
                            matches!(c.action, OnConflictAction::DoUpdate(_))
                        }
                        _ => false,
                    };
                if let (true, TableObject::TableName(name)) = (changes, &insert.table) {
                    self.add(name);
                }
            }
            Statement::Merge(merge) => self.add_factor(&merge.table),
            Statement::Execute {
                name, immediate, ..
            } if self.plans == 0 => {
                let named = match (name, immediate) {
                    (Some(name), false) => match name.0.as_slice() {
                        [ObjectNamePart::Identifier(ident)] => Some(self.names.table(ident)),
                        _ => None,
                    },
                    _ => None,
                };
                self.executes.push(named);
            }
            Statement::Truncate(truncate) => {
                for target in &truncate.table_names {
                    self.add(&target.name);
                }
                if matches!(truncate.cascade, Some(CascadeOption::Cascade)) {
                    self.push(EVERY_TABLE.to_owned());
                }
            }
            Statement::Explain {
                analyze: false,
                options: None,
                ..
            }
            | Statement::Prepare { .. } => self.plans += 1,
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        if matches!(
            statement,
            Statement::Explain {
                analyze: false,
                options: None,
                ..
            } | Statement::Prepare { .. }
        ) {
            self.plans -= 1;
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::tables_changed;
    use crate::{Mysql, Postgres};

    fn pg(sql: &str) -> Option<Vec<String>> {
        tables_changed(&Postgres, sql)
    }

    #[test]
    fn follows_what_runs_another_statements_text() {
        let some = |names: &[&str]| Some(names.iter().map(|n| n.to_string()).collect());
        let session = |name: &str| {
            match name {
            "upd" => Some("UPDATE t SET v = 1".to_owned()),
            "sel" => Some("SELECT 1".to_owned()),
            "pg" => Some(
                "PREPARE other AS UPDATE t SET v = 1; PREPARE pg(int) AS DELETE FROM u WHERE id = $1"
                    .to_owned(),
            ),
            _ => None,
        }
        };
        let my = |sql: &str| super::tables_changed_resolving(&Mysql, sql, &session, &|_| true);
        assert_eq!(my("EXECUTE upd"), some(&["t"]));
        assert_eq!(my("EXECUTE sel USING @a"), some(&[]));
        assert_eq!(my("EXECUTE unknown"), some(&["*"]));
        assert_eq!(
            my("PREPARE sel FROM 'DELETE FROM u'; EXECUTE sel"),
            some(&["u"])
        );
        assert_eq!(my("CALL p(); EXECUTE upd"), some(&["*"]));
        assert_eq!(my("DROP PREPARE upd; EXECUTE upd"), some(&[]));
        assert_eq!(my("EXECUTE IMMEDIATE 'UPDATE w SET v = 1'"), some(&["w"]));
        assert_eq!(my("EXECUTE IMMEDIATE @q"), some(&["*"]));
        assert_eq!(my("ANALYZE UPDATE x SET v = 1 WHERE id = 2"), some(&["x"]));
        assert_eq!(my("ANALYZE SELECT 1; ANALYZE TABLE x"), some(&[]));
        assert_eq!(
            super::tables_changed_resolving(&Postgres, "EXECUTE pg(1)", &session, &|_| true),
            some(&["u"])
        );
        assert_eq!(
            super::tables_changed(&Postgres, "PREPARE p AS UPDATE t SET v = 1"),
            some(&[])
        );
        // From review: what a text prepares, drops or may change unseen before its
        // EXECUTE, and texts that name the statement unclearly.
        let select = |name: &str| (name == "s").then(|| "SELECT 1".to_owned());
        let pg = |sql: &str, session: &dyn Fn(&str) -> Option<String>| {
            super::tables_changed_resolving(&Postgres, sql, session, &|f| f == "pf")
        };
        let none = |_: &str| None;
        assert_eq!(
            pg(
                "PREPARE s AS UPDATE t SET v = 99 WHERE id = 1; EXECUTE s",
                &none
            ),
            some(&["t"])
        );
        assert_eq!(
            pg(
                "DEALLOCATE s; PREPARE s AS UPDATE t SET v = 40; EXECUTE s",
                &select
            ),
            some(&["t"])
        );
        assert_eq!(
            pg("DO $$BEGIN NULL; END$$; EXECUTE s", &select),
            some(&["*"])
        );
        assert_eq!(pg("SELECT pf('x'); EXECUTE s", &select), some(&["*"]));
        assert_eq!(pg("SELECT 1; EXECUTE s", &select), some(&[]));
        assert_eq!(
            pg("SELECT now(), count(*) FROM t; EXECUTE s", &select),
            some(&[])
        );
        let listed = |text: &'static str| move |_: &str| Some(text.to_owned());
        assert_eq!(
            pg(
                "EXECUTE s",
                &listed("PREPARE s AS SELECT 1; DEALLOCATE s; PREPARE s AS UPDATE t SET v = 98")
            ),
            some(&["*"])
        );
        assert_eq!(
            pg(
                "EXECUTE s",
                &listed("PREPARE s AS UPDATE t SET arr[1] = 7 WHERE id = 1")
            ),
            some(&["*"])
        );
        assert_eq!(
            pg("EXECUTE s", &listed("PREPARE other AS SELECT 1")),
            some(&["*"])
        );
        assert_eq!(pg("EXECUTE U&\"\\0073\"", &select), some(&["*"]));
        assert_eq!(
            pg(
                "EXPLAIN ANALYZE EXECUTE s",
                &listed("PREPARE s AS UPDATE t SET v = 1")
            ),
            some(&["t"])
        );
        assert_eq!(
            pg(
                "CREATE VIEW tv AS SELECT * FROM t; UPDATE tv SET v = 43",
                &none
            ),
            some(&["tv", "*"])
        );
        assert_eq!(
            tables_changed(
                &Mysql,
                "ALTER TABLE c ADD FOREIGN KEY (p) REFERENCES p (id) ON DELETE CASCADE; DELETE FROM p WHERE id = 1"
            ),
            some(&["p", "*"])
        );
        assert_eq!(
            tables_changed(
                &Postgres,
                "BEGIN; CREATE TEMP TABLE a (id int) ON COMMIT DROP; INSERT INTO a VALUES (1)"
            ),
            some(&[])
        );
        // Without a session's names: any table.
        assert_eq!(tables_changed(&Mysql, "EXECUTE upd"), some(&["*"]));
    }

    #[test]
    fn names_every_table_a_view_reads() {
        let named = super::tables_named(
            &Mysql,
            "select `d`.`a`.`id` AS `id`,`b`.`v` AS `v` from (`d`.`a` join `e`.`B` `b` on(`b`.`id` = `d`.`a`.`id`)) where `d`.`a`.`id` in (select `c`.`id` from `d`.`c`)",
        );
        assert_eq!(
            named,
            Some(vec!["a".to_owned(), "B".to_owned(), "c".to_owned()])
        );
        assert_eq!(super::tables_named(&Mysql, "select from where"), None);
    }

    #[test]
    fn names_what_each_statement_may_change() {
        let some = |names: &[&str]| Some(names.iter().map(|n| n.to_string()).collect());
        assert_eq!(pg("TRUNCATE a, s.B, \"C\""), some(&["a", "b", "C"]));
        assert_eq!(
            pg("SELECT 1; UPDATE t SET v = 1; DELETE FROM u USING w WHERE u.id = w.id"),
            some(&["t", "u"])
        );
        assert_eq!(
            pg("WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved"),
            some(&["a"])
        );
        assert_eq!(
            pg("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v"),
            some(&["t"])
        );
        assert_eq!(
            pg(
                "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = 2; INSERT INTO u VALUES (1) ON CONFLICT DO NOTHING"
            ),
            some(&["t"])
        );
        assert_eq!(pg("EXPLAIN ANALYZE UPDATE t SET v = 1"), some(&["t"]));
        assert_eq!(
            pg("EXPLAIN UPDATE t SET v = 1; EXPLAIN (ANALYZE) DELETE FROM u"),
            some(&["u"])
        );
        assert_eq!(
            pg("COPY (UPDATE t SET v = 1 RETURNING *) TO STDOUT"),
            some(&["t"])
        );
        assert_eq!(pg("TRUNCATE a CASCADE"), some(&["a", "*"]));
        // Only new rows, or none at all.
        assert_eq!(
            pg("INSERT INTO t VALUES (1); SELECT f(1); COPY t FROM STDIN"),
            some(&[])
        );
        // A statement that does not parse: any table if it reads as a write.
        assert_eq!(pg("UPDATE t SET v = 1; CHECKPOINT"), some(&["t"]));
        assert_eq!(pg("UPDATE s.t SET"), some(&["t"]));
        assert_eq!(pg("UPDATE w SET arr[1] = 5 WHERE id = 1"), some(&["w"]));
        assert_eq!(
            pg("DELETE FROM ONLY \"W\" WHERE CURRENT OF c"),
            some(&["W"])
        );
        assert_eq!(
            pg("WITH x AS (UPDATE t SET arr[1] = 1) SELECT 1"),
            some(&["*"])
        );
        // Only what a single table's name leaves no doubt about.
        assert_eq!(pg("UPDATE w AS x SET a[1] = 5"), some(&["w"]));
        assert_eq!(pg("UPDATE U&\"r\" SET a[1] = 5"), some(&["*"]));
        assert_eq!(
            pg("DELETE FROM t x USING u WHERE CURRENT OF c"),
            some(&["*"])
        );
        assert_eq!(pg("TRUNCATE t RESTART IDENTITY; CHECKPOINT"), some(&["t"]));
        for sql in [
            "UPDATE a JOIN h ON a.id = h.id SET h.v = 5 WHERE a.s SOUNDS LIKE 'x'",
            "UPDATE a AS x JOIN h ON x.id = h.id SET h.v = 5 WHERE x.s SOUNDS LIKE 'x'",
            "UPDATE a LEFT JOIN h USING (id) SET h.v = 5 WHERE a.s SOUNDS LIKE 'x'",
            "DELETE FROM hh USING h AS hh WHERE hh.id = 1 AND hh.s SOUNDS LIKE 'x'",
            "DELETE FROM hh.* USING h AS hh WHERE hh.id = 1 AND hh.s SOUNDS LIKE 'x'",
            "UPDATE /*!99999 a */ h SET v = 5 WHERE s SOUNDS LIKE 'x'",
            // Comments the server reads otherwise, before statements tandem would
            // have read as none, or as a read.
            "/*!99999 /* x */ */ UPDATE t SET v = 1",
            "/*M!999999 /* x */ */ UPDATE t SET v = 1",
            "/*M!100000 UPDATE t SET v = 1 */",
            "/*!99999 SELECT */ UPDATE t SET v = 1",
            // Compound statements.
            "BEGIN NOT ATOMIC UPDATE t SET v = 1; END",
            "IF 1 THEN UPDATE t SET v = 1; END IF",
            "DECLARE x INT; BEGIN UPDATE t SET v = 1; END",
        ] {
            assert_eq!(tables_changed(&Mysql, sql), some(&["*"]), "{sql}");
        }
        assert_eq!(
            tables_changed(&Mysql, "UPDATE h SET v = 5 WHERE s SOUNDS LIKE 'x'"),
            some(&["h"])
        );
        assert_eq!(
            pg("SELECT 1; UPDATE t SET v = 1 WHERE CURRENT OF c"),
            some(&["t"])
        );
        assert_eq!(
            pg("TRUNCATE a, b CASCADE; CHECKPOINT"),
            some(&["a", "b", "*"])
        );
        assert_eq!(
            pg("COPY (WITH x AS (DELETE FROM t) SELECT 1) TO STDOUT"),
            some(&["t"])
        );
        assert_eq!(pg("SELECT 'unterminated"), None);
        assert_eq!(
            tables_changed(
                &Mysql,
                "REPLACE INTO a VALUES (1); DELETE a, b FROM a JOIN b ON a.id = b.id; UPDATE c JOIN d ON c.id = d.id SET c.v = 1"
            ),
            some(&["a", "b", "c", "d"])
        );
        assert_eq!(
            tables_changed(
                &Mysql,
                "INSERT INTO T VALUES (1) ON DUPLICATE KEY UPDATE v = 2"
            ),
            some(&["T"])
        );
    }
}
