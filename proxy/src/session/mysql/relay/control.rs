//! What tandem answers or runs itself in a MySQL session: the control functions
//! (`SELECT tandem_begin()` …), and, in XA mode, the branch around the client's
//! transaction: its START TRANSACTION becomes `XA START`, its COMMIT `XA END` and
//! `XA PREPARE` (answered by tandem), its ROLLBACK `XA END` and `XA ROLLBACK`.
//!
//! Owns the XA branch's life inside the session and tandem's own statements (run at a
//! sync point, each read to its one OK or ERR). Invariant: inside a global transaction,
//! no statement that may write runs outside an XA branch (AT mode is not built for
//! MySQL: such statements are refused), and no branch's transaction commits on its own.

use super::Relay;
use super::client_side::Handled;
use super::guard::sql_level_prepare;
use super::own::{Own, OwnError};
use crate::binding::Mode;
use crate::control::{self, BadCall, Control};
use crate::error::{Error, Result};
use crate::session::outside::some_statement;
use crate::wire::mysql::Header;
use crate::wire::mysql::codes::{CapabilityFlags, StatusFlags, command};
use crate::wire::mysql::messages::response::{put_err, put_ok, put_single_value};
use crate::wire::mysql::packet::put_message;
use bytes::BytesMut;
use std::time::Duration;
use tandem_lockserver::client::{BranchKind, Xid};

/// A COM_QUERY no longer than this may be a control statement; longer ones of an
/// unbound session stream through unread.
const CONTROL_SQL_MAX: usize = 1024;

/// The table, in the written table's database, whose reading asks the server whether
/// the session holds table locks (see `Relay::own_transaction_refused`).
const TABLE_LOCKS_PROBE: &str = "tandem_table_locks_probe";
/// ER_TABLE_NOT_LOCKED: "Table '…' was not locked with LOCK TABLES".
const ER_TABLE_NOT_LOCKED: u16 = 1100;
/// ER_NO_SUCH_TABLE.
const ER_NO_SUCH_TABLE: u16 = 1146;

/// The XA branch of the session's current transaction (between XA START and its end).
#[derive(Clone, Debug)]
pub struct XaBranch {
    xid: Xid,
    branch_id: u64,
}

/// What a statement means to an XA branch, by its first keywords.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::session::mysql) enum Kind {
    Begin,
    Commit,
    Rollback,
    /// The client's own `XA …`.
    ClientXa,
    /// Reads and session statements: they need no branch.
    Passive,
    /// Anything that may change data.
    Work,
}

/// A client's prepared statement, as tandem knows it.
#[derive(Clone, Debug)]
pub(in crate::session::mysql) struct Prepared {
    pub kind: Kind,
    /// Its text, for AT's capture (None when the COM_STMT_PREPARE was not read whole).
    pub sql: Option<std::sync::Arc<str>>,
    /// How many parameters it has (from the server's prepare-OK).
    pub params: u16,
    /// The parameter types the client last bound (`type | flags << 8`).
    pub types: Option<Vec<u16>>,
    /// COM_STMT_SEND_LONG_DATA sent values that its next execute does not carry.
    pub long_data: bool,
    /// `Relay::charset_changes` when it was prepared.
    pub charset_changes: u64,
    /// Each execute may set the session's character set (a prepared SET NAMES).
    pub sets_charset: bool,
    /// The session's current database when it was prepared, where tandem knew it: its
    /// unqualified tables are that database's, whatever USE runs since.
    pub database: Option<String>,
    /// The time limit each execute gives itself (`statement_time_limit`), read once.
    pub time_limit: Option<Duration>,
}

impl Prepared {
    pub fn new(sql: Option<&[u8]>) -> Self {
        Prepared {
            kind: sql.map_or(Kind::Work, classify),
            sql: sql
                .and_then(|s| std::str::from_utf8(s).ok())
                .map(std::sync::Arc::from),
            params: 0,
            types: None,
            long_data: false,
            charset_changes: 0,
            sets_charset: false,
            database: None,
            time_limit: sql.and_then(statement_time_limit),
        }
    }
}

/// The time limit a statement gives itself (MariaDB's `SET STATEMENT
/// max_statement_time = … FOR`): read only where its first words are SET STATEMENT, so
/// that other statements cost nothing.
pub(super) fn statement_time_limit(sql: &[u8]) -> Option<Duration> {
    let mut words = control::leading_words(sql, true);
    let set_statement = words.next().is_some_and(|w| w.eq_ignore_ascii_case(b"set"))
        && words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case(b"statement"));
    if !set_statement {
        return None;
    }
    tandem_undo::statement_time_limit(std::str::from_utf8(sql).ok()?)
}

fn first_word_is(sql: &[u8], word: &[u8]) -> bool {
    control::leading_words(sql, true)
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(word))
}

/// Statements that may create or drop a temporary table (by their first word; a
/// procedure or an SQL-level prepared statement may do either).
pub(super) fn may_change_temporary_tables(sql: &[u8]) -> bool {
    [
        &b"CREATE"[..],
        b"DROP",
        b"ALTER",
        b"RENAME",
        b"CALL",
        b"EXECUTE",
    ]
    .iter()
    .any(|word| first_word_is(sql, word))
        || several_statements(sql)
        // An executable comment (`/*! CREATE TEMPORARY TABLE … */`) runs as a statement.
        || sql.windows(3).any(|w| w == b"/*!")
}

/// Statements that may define views or foreign keys (by their first word: DDL, or
/// what may run some), which tandem reads from the catalog.
pub(super) fn may_change_catalog(sql: &[u8]) -> bool {
    [
        &b"CREATE"[..],
        b"ALTER",
        b"DROP",
        b"RENAME",
        b"CALL",
        b"EXECUTE",
    ]
    .iter()
    .any(|word| first_word_is(sql, word))
        || tandem_undo::has_executable_comment(sql)
}

/// Whether `sql` (a COM_QUERY's or COM_STMT_PREPARE's text; `whole`: all of it) may
/// take table locks that a START TRANSACTION releases: it names `LOCK TABLE(S)`, or
/// `READ LOCK` or `FOR EXPORT` (FLUSH TABLES), or runs an SQL-level prepared statement
/// (`EXECUTE`, `EXECUTE IMMEDIATE`), or is the start of several statements tandem has
/// not seen whole. A hint only, erring toward yes (the words may sit in a literal): the
/// server is asked before it counts.
pub(super) fn may_take_table_locks(sql: &[u8], whole: bool) -> bool {
    words_follow(sql, b"LOCK", b"TABLE")
        || words_follow(sql, b"READ", b"LOCK")
        || words_follow(sql, b"FOR", b"EXPORT")
        || control::leading_words(sql, true)
            .next()
            .is_none_or(|w| w.eq_ignore_ascii_case(b"EXECUTE"))
        || sql.windows(8).any(|w| w.eq_ignore_ascii_case(b"EXECUTE "))
        || (!whole && several_statements(sql))
}

/// Whether `sql`, all of one COM_QUERY that the server ran as sent, surely ends the
/// session's table locks: a lone UNLOCK TABLES, BEGIN or START TRANSACTION (a trailing
/// `;` allowed).
pub(super) fn ends_table_locks(sql: &[u8]) -> bool {
    let statement = sql.trim_ascii_end();
    let statement = statement.strip_suffix(b";").unwrap_or(statement);
    if several_statements(statement) {
        return false;
    }
    let (first, second) = first_two_words(statement);
    matches!(
        (first.as_slice(), second.as_slice()),
        (b"UNLOCK", b"TABLE" | b"TABLES") | (b"BEGIN", b"" | b"WORK") | (b"START", b"TRANSACTION")
    )
}

/// `first`, then whitespace or comments, then a word that starts with `second`,
/// anywhere in `sql` (ASCII case ignored; `first` must start a word).
fn words_follow(sql: &[u8], first: &[u8], second: &[u8]) -> bool {
    let word_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
    (0..sql.len()).any(|at| {
        let Some(head) = sql.get(at..at + first.len()) else {
            return false;
        };
        if !head.eq_ignore_ascii_case(first) || (at > 0 && word_char(sql[at - 1])) {
            return false;
        }
        let tail = &sql[at + first.len()..];
        let next = control::leading_words(tail, true).next();
        tail.first().is_some_and(|&b| !word_char(b))
            && next.is_some_and(|w| {
                w.get(..second.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(second))
            })
    })
}

/// A statement's first two words (`leading_words`), upper-cased; empty where missing.
pub(super) fn first_two_words(sql: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut words = control::leading_words(sql, true).map(|w| w.to_ascii_uppercase());
    let first = words.next().unwrap_or_default();
    (first, words.next().unwrap_or_default())
}

/// Whether `sql` is one statement that only reads (a locking read too), as the analysis
/// reads it: what `SET STATEMENT … FOR` runs, or what follows a WITH clause.
fn reads_only(sql: &[u8]) -> bool {
    let text = String::from_utf8_lossy(sql);
    !tandem_undo::has_executable_comment(sql)
        && matches!(
            tandem_undo::analyze(&tandem_undo::Mysql, &text).as_deref(),
            Ok([tandem_undo::Analysis::Read | tandem_undo::Analysis::LockingRead(_)])
        )
}

fn several_statements(sql: &[u8]) -> bool {
    sql.contains(&b';')
}

/// Whether `sql` (a COM_QUERY's, or a prepared statement's at each execute) may change
/// the session's current database: a USE, or one hidden in a multi-statement query, in
/// a comment the server runs, or in a statement SQL-level EXECUTE runs.
pub(super) fn may_change_database(sql: &[u8]) -> bool {
    first_word_is(sql, b"USE")
        || first_word_is(sql, b"EXECUTE")
        || several_statements(sql)
        || executable_comment(sql)
}

/// Whether `sql` runs a statement tandem does not read as such: SQL-level PREPARE,
/// EXECUTE or EXECUTE IMMEDIATE, or an XA statement, in any statement of a
/// multi-statement query or in a comment the server runs (an XA END there would end
/// the branch under tandem).
fn runs_unread_statement(sql: &[u8]) -> bool {
    let unread = |statement: &[u8]| {
        [&b"EXECUTE"[..], b"PREPARE", b"XA"]
            .iter()
            .any(|word| first_word_is(statement, word))
    };
    if unread(sql) {
        return true;
    }
    if several_statements(sql) {
        let text = String::from_utf8_lossy(sql);
        // Unsplittable: its first statement was read above.
        let statements = tandem_undo::split_mysql_statements(&text).unwrap_or_default();
        if statements.iter().any(|s| unread(s.as_bytes())) {
            return true;
        }
    }
    let mut rest = sql;
    while let Some(at) = rest.windows(2).position(|w| w == b"/*") {
        let comment = &rest[at + 2..];
        let body = comment
            .strip_prefix(b"M!")
            .or_else(|| comment.strip_prefix(b"!"));
        if let Some(body) = body {
            // A version number may come first: `/*!50000 XA END … */`.
            let version = body.iter().take_while(|b| b.is_ascii_digit()).count();
            if unread(&body[version..]) {
                return true;
            }
        }
        rest = comment;
    }
    false
}

/// Whether `sql` may hold a comment the server runs (`/*! … */`, MariaDB's `/*M! … */`).
fn executable_comment(sql: &[u8]) -> bool {
    sql.windows(3).any(|w| w == b"/*!") || sql.windows(4).any(|w| w == b"/*M!")
}

pub(super) fn classify(sql: &[u8]) -> Kind {
    let (first, second) = first_two_words(sql);
    match (first.as_slice(), second.as_slice()) {
        // MariaDB's `BEGIN NOT ATOMIC … END` is a compound statement, which may write.
        (b"BEGIN", b"NOT") => Kind::Work,
        (b"BEGIN", _) | (b"START", b"TRANSACTION") => Kind::Begin,
        (b"COMMIT", _) => Kind::Commit,
        (b"ROLLBACK", b"TO") => Kind::Passive,
        (b"ROLLBACK", _) => Kind::Rollback,
        (b"XA", b"RECOVER") => Kind::Passive,
        (b"XA", _) => Kind::ClientXa,
        // MariaDB's `SET STATEMENT … FOR` runs the statement after FOR, which may be
        // a read; MySQL 8 takes a WITH clause before UPDATE and DELETE.
        (b"SET", b"STATEMENT") | (b"WITH", _) => match reads_only(sql) {
            true => Kind::Passive,
            false => Kind::Work,
        },
        // MySQL 8's `EXPLAIN ANALYZE` runs the statement it explains.
        (b"EXPLAIN" | b"DESCRIBE" | b"DESC", b"ANALYZE") => Kind::Work,
        // The words stopped at an executable comment, which may hold the rest of the
        // statement (`SET /*!*/ STATEMENT … FOR UPDATE`): read as the server would run
        // it.
        (b"SET" | b"EXPLAIN" | b"DESCRIBE" | b"DESC", _)
            if tandem_undo::has_executable_comment(sql) =>
        {
            Kind::Work
        }
        (
            b"SELECT" | b"SHOW" | b"DESCRIBE" | b"DESC" | b"EXPLAIN" | b"SET" | b"USE" | b"HELP"
            | b"SAVEPOINT" | b"RELEASE" | b"VALUES" | b"TABLE",
            _,
        ) => Kind::Passive,
        _ => Kind::Work,
    }
}

impl Relay<'_> {
    /// A COM_QUERY tandem acts on: a control statement, or a bound session's statement
    /// its branch must see. `None`: the command goes on as usual.
    pub(super) async fn intercept_query(
        &mut self,
        header: Header,
        packet: &[u8],
    ) -> Result<Option<Handled>> {
        let payload = header.payload(packet);
        if header.seq == 0 {
            // Where this command's waits start hearing KILL QUERY, and until when its
            // own time limit lets them run.
            self.cancels_seen = self.interrupt.mark();
            self.statement_deadline = self
                .command_time_limit(payload)
                .map(|limit| std::time::Instant::now() + limit);
        }
        if let Some(handled) = self.kill_of_tandem_id(header, payload).await? {
            return Ok(Some(handled));
        }
        if header.seq == 0
            && let Some(handled) = self.refuse_own_statement(payload)?
        {
            return Ok(Some(handled));
        }
        // COM_STMT_CLOSE and COM_STMT_SEND_LONG_DATA run no statement (and get no
        // reply): ROW_COUNT() is the write's still after them.
        let runs_a_statement = !matches!(
            payload.first(),
            Some(&(command::STMT_CLOSE | command::STMT_SEND_LONG_DATA))
        );
        if header.seq == 0
            && runs_a_statement
            && let Some(row_count) = self.row_count_after_write.take()
            && let Some(handled) = self.with_row_count(header, packet, row_count).await?
        {
            return Ok(Some(handled));
        }
        let bound = self.binding.xid().is_some();
        if payload.first() == Some(&command::STMT_EXECUTE) && header.seq == 0 {
            return match bound {
                true => self.intercept_execute(header, packet).await,
                false => self.guard_execute(header, packet).await,
            };
        }
        if payload.first() == Some(&command::QUERY)
            && header.seq == 0
            && header.is_continued()
            && bound
        {
            return self
                .refuse(Error::Unsupported {
                    what: "a statement of 16 MiB or more inside a global transaction",
                })
                .map(Some);
        }
        if payload.first() == Some(&command::QUERY)
            && header.seq == 0
            && (payload.len() < header.payload_len || may_change_temporary_tables(&payload[1..]))
        {
            self.temporary_tables.clear();
        }
        if header.seq == 0 && std::mem::take(&mut self.catalog_may_have_changed) {
            // DDL the last command sent has run.
            self.ctx.at_meta.invalidate();
        }
        if payload.first() == Some(&command::QUERY)
            && header.seq == 0
            && some_statement(&payload[1..], may_change_catalog)
        {
            // It may define views or foreign keys: the catalog is read again now, and
            // once it has run (`catalog_may_have_changed`).
            self.ctx.at_meta.invalidate();
            self.catalog_may_have_changed = true;
        }
        if payload.first() == Some(&command::REFRESH) && header.seq == 0 && bound {
            return self.bound_refresh();
        }
        let prepares = payload.first() == Some(&command::STMT_PREPARE);
        if prepares && header.seq == 0 && self.database_uncertain && self.exchange.at_sync_point() {
            // Its unqualified tables are those of the database current now
            // (`Prepared::database`). No database at all is no failure here.
            let _ = self.settle_database().await?;
        }
        if (prepares || payload.first() == Some(&command::QUERY))
            && header.seq == 0
            && control::xid_hint(&payload[1..]).is_some()
        {
            return self
                .refuse(Error::Unsupported {
                    what: "the /*+ XID('…') */ hint on MySQL (the server would run the statement outside the global transaction; bind the session with SELECT tandem_join('…'))",
                })
                .map(Some);
        }
        if prepares
            && header.seq == 0
            && payload.len() == header.payload_len
            && !matches!(control::parse(&payload[1..]), Ok(None))
        {
            return self
                .refuse(Error::Unsupported {
                    what: "a control function in a server-side prepared statement on MySQL (send it as a text query: useServerPrepStmts=false, or the driver's plain query)",
                })
                .map(Some);
        }
        if payload.first() != Some(&command::QUERY) || header.seq != 0 {
            return Ok(None);
        }
        if header.is_continued() {
            // 16 MiB or more: relayed as it streams in (refused above when bound).
            self.must_read_outside_write(header, &payload[1..]);
            // Its PREPAREs, if any, are not read.
            self.sql_prepared.clear();
            return Ok(None);
        }
        if payload.len() < header.payload_len {
            // Control statements are short; a bound session's statement is read whole,
            // and so is a write that must be checked against global locks (the start
            // of the text tells whether it may be one).
            let readable = header.payload_len <= self.ctx.config.max_message_bytes;
            let must_read = bound
                || header.payload_len <= CONTROL_SQL_MAX
                || (readable
                    && (payload.len() <= CONTROL_SQL_MAX
                        || some_statement(&payload[1..], sql_level_prepare)
                        || self.must_read_outside_write(header, &payload[1..])));
            if !must_read {
                // Its PREPAREs, if any, are not read.
                self.sql_prepared.clear();
            }
            return Ok(must_read.then_some(Handled::NeedMore));
        }
        let sql = &payload[1..];
        // With no name known, nothing but a PREPARE can change what tandem knows.
        if !self.sql_prepared.is_empty() || some_statement(sql, sql_level_prepare) {
            self.follow_sql_prepares(sql);
        }
        if may_change_database(sql) {
            self.database_uncertain = true;
        }
        let parsed = control::parse(sql);
        let beside_held = match parsed {
            Ok(None) if !self.owned.is_empty() => BesideHeldBranch::of(sql),
            _ => None,
        };
        match beside_held {
            Some(BesideHeldBranch::EndsNoTransaction) => {
                return self.answer_no_transaction_to_end().map(Some);
            }
            Some(BesideHeldBranch::Autocommit(on)) => {
                if let Some(answered) = self.autocommit_beside_held_branch(on)? {
                    return Ok(Some(answered));
                }
            }
            None => {}
        }
        if matches!(parsed, Ok(None))
            && beside_held.is_none()
            && let Some(held) = self.held_by_owned_branches()?
        {
            return Ok(Some(held));
        }
        match parsed {
            Ok(Some(control)) => return self.answer_control(Ok(control)).await.map(Some),
            Err(BadCall(message)) => {
                return self
                    .answer_control(Err(Error::BadControlCall(message)))
                    .await
                    .map(Some);
            }
            Ok(None) if !bound => return self.guard_query(sql).await,
            Ok(None) => {}
        }
        let several = tandem_undo::count_mysql_statements(&String::from_utf8_lossy(sql))
            .map_or(true, |n| n > 1);
        let kind = match classify(sql) {
            // Read by its first statement only: a write may follow (`SET @a = 1;
            // UPDATE …`), which must not run outside the branch.
            Kind::Passive if several => Kind::Work,
            kind => kind,
        };
        if kind == Kind::ClientXa || runs_unread_statement(sql) {
            return self
                .refuse(Error::Unsupported {
                    what: "the client's own XA statements, or SQL-level PREPARE and EXECUTE (whose statement tandem does not read), inside a global transaction",
                })
                .map(Some);
        }
        let mode = if self.xa.is_some() {
            Mode::Xa
        } else {
            self.binding.mode().unwrap_or(self.ctx.config.mode)
        };
        if mode == Mode::At {
            // Relayed statements go through `on_command` like any other.
            return Ok(match self.at_query(sql).await? {
                Handled::Relay => None,
                handled => Some(handled),
            });
        }
        if self.xa.is_some()
            && BesideHeldBranch::of(sql) == Some(BesideHeldBranch::Autocommit(true))
            && !self
                .exchange
                .status()
                .is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT))
        {
            // Turning autocommit on commits the open transaction (JDBC's
            // setAutoCommit(true)), which MariaDB refuses in an XA branch (1399): it is
            // the branch's COMMIT, and the SET then waits for the prepared branch as
            // one sent beside it does.
            return self.xa_end(XaEnd::CommitThenAutocommit).await.map(Some);
        }
        let kind = self
            .work_if_it_calls_a_function(kind, &String::from_utf8_lossy(sql))
            .await;
        if several && matches!(kind, Kind::Begin | Kind::Commit | Kind::Rollback) {
            return self
                .refuse(Error::Unsupported {
                    what: "a multi-statement query that begins or ends a transaction, in XA mode",
                })
                .map(Some);
        }
        match kind {
            Kind::Begin => self.xa_begin(sql).await.map(Some),
            Kind::Commit if self.xa.is_some() => self.xa_end(XaEnd::Commit).await.map(Some),
            Kind::Rollback if self.xa.is_some() => self.xa_end(XaEnd::Rollback).await.map(Some),
            _ if self.opens_xa_branch_implicitly(kind, Some(sql)) => {
                match self.xa_begin_implicitly().await? {
                    Handled::Relay if kind == Kind::Work => self.guard_query(sql).await,
                    Handled::Relay => Ok(None),
                    handled => Ok(Some(handled)),
                }
            }
            Kind::Work if self.xa.is_none() => {
                let e = match self.bound_transaction_over().await {
                    Some(over) => over,
                    None => Error::Unsupported {
                        what: "a write outside START TRANSACTION … COMMIT in XA mode on MySQL (start the transaction inside the global one, or turn autocommit off)",
                    },
                };
                self.refuse(e).map(Some)
            }
            // Inside the branch: its rows must not be ones an AT-mode global
            // transaction holds, whose rollback would then stop at them. Checked as a
            // write outside a global transaction is, inside the client's transaction.
            Kind::Work => self.guard_query(sql).await,
            _ => Ok(None),
        }
    }

    /// A client's command naming one of tandem's own prepared statements (an image read
    /// kept on the connection), which the client never prepared: as the server treats
    /// an id it does not know. Run by the client, or given its long data, it would read
    /// or change what tandem's next capture reads. None: not one of tandem's.
    fn refuse_own_statement(&mut self, payload: &[u8]) -> Result<Option<Handled>> {
        let given_to = match payload.first() {
            Some(&command::STMT_EXECUTE) => "mysqld_stmt_execute",
            Some(&command::STMT_RESET) => "mysqld_stmt_reset",
            Some(&command::STMT_FETCH) => "mysqld_stmt_fetch",
            // No reply is due.
            Some(&(command::STMT_SEND_LONG_DATA | command::STMT_CLOSE)) => "",
            _ => return Ok(None),
        };
        let Some(id) =
            super::client_side::statement_id(payload).filter(|&id| self.own_statements.holds(id))
        else {
            return Ok(None);
        };
        if given_to.is_empty() {
            return Ok(Some(Handled::Answer));
        }
        self.refuse(Error::UnknownStatement { id, given_to })
            .map(Some)
    }

    /// COM_REFRESH of a bound session: it is FLUSH, which commits implicitly. In AT mode
    /// a branch's uncommitted rows would commit without their undo row, as FLUSH over
    /// COM_QUERY would (refused alike); with none, the transaction it may end takes its
    /// savepoints along. In XA mode the server refuses it inside a branch itself.
    fn bound_refresh(&mut self) -> Result<Option<Handled>> {
        if self.xa.is_some() || self.binding.mode().unwrap_or(self.ctx.config.mode) != Mode::At {
            return Ok(None);
        }
        if !self.exchange.at_sync_point() {
            return Ok(Some(Handled::Pause));
        }
        if !self.at_branch.is_empty() {
            return self
                .refuse(Error::Unsupported {
                    what: "COM_REFRESH (FLUSH, which commits implicitly) while the branch has uncommitted writes (MySQL would commit them without their undo log): COMMIT or ROLLBACK first",
                })
                .map(Some);
        }
        self.at_branch = crate::at::branch::Branch::default();
        Ok(None)
    }

    /// In XA mode, a read that calls a stored function (or whose functions cannot be
    /// looked up) is work: the function may write, which must happen in the branch.
    async fn work_if_it_calls_a_function(&self, kind: Kind, sql: &str) -> Kind {
        if kind == Kind::Passive && self.stored_function_refusal(sql).await.is_some() {
            Kind::Work
        } else {
            kind
        }
    }

    /// What a statement gets on a connection holding prepared XA branches, which the
    /// server runs nothing beside until they are finished: it waits for the global
    /// decision, which finishes them shortly; or, from a session bound to one of their
    /// transactions, whose decision could be waiting for this very session, it is
    /// refused at once. None: the connection holds none.
    pub(super) fn held_by_owned_branches(&mut self) -> Result<Option<Handled>> {
        if self.owned.is_empty() {
            return Ok(None);
        }
        if let Some(xid) = self.binding.xid()
            && self.owned.iter().any(|(owned, _)| owned == xid)
        {
            let e = Error::BranchPrepared {
                xid: xid.to_string(),
            };
            return self.refuse(e).map(Some);
        }
        Ok(Some(Handled::Pause))
    }

    /// COMMIT or ROLLBACK on a connection holding prepared branches: what frameworks
    /// send right after the COMMIT that prepared one (Django's `atomic()`, pools
    /// releasing a connection). No local transaction is open, so it ends nothing and is
    /// answered OK, as the server answers it without XA; MariaDB itself refuses it
    /// beside a prepared branch (1399), and the client would take its committed work
    /// for failed.
    fn answer_no_transaction_to_end(&mut self) -> Result<Handled> {
        if !self.exchange.at_sync_point() {
            return Ok(Handled::Pause);
        }
        let status = self.exchange.status().unwrap_or(StatusFlags::empty())
            - StatusFlags::SERVER_STATUS_IN_TRANS;
        self.answer_ok(status)
    }

    /// `SET autocommit` on a connection holding prepared branches: MariaDB runs one that
    /// leaves autocommit off, which is relayed (None, and it cancels one deferred), but
    /// refuses one that turns it on (that would commit): that one is answered OK with
    /// the status it sets, and runs once the connection holds no branch
    /// (`run_deferred_autocommit`); COM_PING is answered with that status meanwhile.
    fn autocommit_beside_held_branch(&mut self, on: bool) -> Result<Option<Handled>> {
        if !self.exchange.at_sync_point() {
            return Ok(Some(Handled::Pause));
        }
        let status = self.exchange.status().unwrap_or(StatusFlags::empty());
        let server_on =
            status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT) && !self.deferred_autocommit;
        if !on || server_on {
            self.deferred_autocommit = false;
            return Ok(None);
        }
        self.deferred_autocommit = true;
        self.answer_ok(status | StatusFlags::SERVER_STATUS_AUTOCOMMIT)
            .map(Some)
    }

    /// Runs the `SET autocommit = 1` answered while the connection held prepared
    /// branches, once it holds none (at a sync point, before anything more of the
    /// client's).
    pub(super) async fn run_deferred_autocommit(&mut self) -> Result<()> {
        if !self.deferred_autocommit || !self.owned.is_empty() || !self.exchange.at_sync_point() {
            return Ok(());
        }
        self.deferred_autocommit = false;
        match own_statement(
            &mut self.server,
            &mut self.from_server,
            "SET autocommit = 1",
        )
        .await?
        {
            Ok(status) => self.exchange.on_authenticated(status),
            Err(e) => {
                tracing::warn!(parent: self.binding.span(), code = e.code, message = %e.message, "the client's SET autocommit = 1, answered while the connection held a prepared XA branch, failed when run");
            }
        }
        Ok(())
    }

    /// An OK with `status`, as the answer to the client's command.
    pub(super) fn answer_ok(&mut self, status: StatusFlags) -> Result<Handled> {
        put_ok(&mut self.to_client, 1, status);
        self.exchange.on_authenticated(status);
        Ok(Handled::Answer)
    }

    /// COM_STMT_EXECUTE in a bound session: the statement it runs (known from its
    /// COM_STMT_PREPARE; unknown counts as a write) follows the COM_QUERY rules.
    async fn intercept_execute(
        &mut self,
        header: Header,
        packet: &[u8],
    ) -> Result<Option<Handled>> {
        if let Some(held) = self.held_by_owned_branches()? {
            return Ok(Some(held));
        }
        let payload = header.payload(packet);
        let Some(id) = super::client_side::statement_id(payload) else {
            if payload.len() < header.payload_len {
                return Ok(Some(Handled::NeedMore));
            }
            return self
                .refuse(Error::MalformedCommand {
                    what: "COM_STMT_EXECUTE (too short for a statement id)",
                })
                .map(Some);
        };
        let kind = self.prepared.get(&id).map_or(Kind::Work, |p| p.kind);
        if kind == Kind::ClientXa {
            // As over COM_QUERY: an XA END or XA COMMIT of the client's would end the
            // branch under tandem.
            return self
                .refuse(Error::Unsupported {
                    what: "the client's own XA statements inside a global transaction",
                })
                .map(Some);
        }
        let mode = if self.xa.is_some() {
            Mode::Xa
        } else {
            self.binding.mode().unwrap_or(self.ctx.config.mode)
        };
        if mode == Mode::Xa && matches!(kind, Kind::Begin | Kind::Commit | Kind::Rollback) {
            // Over COM_QUERY these become the branch's XA START, or its XA END and
            // PREPARE or ROLLBACK; run as prepared they would reach the server as they
            // are, beside the branch.
            return self
                .refuse(Error::Unsupported {
                    what: "a prepared START TRANSACTION, BEGIN, COMMIT or ROLLBACK inside a global transaction in XA mode (send it as a query, as drivers do)",
                })
                .map(Some);
        }
        // Every execute goes through AT's analysis: what a statement does is not told
        // by its first word alone (a prepared SET autocommit = 1 commits).
        if mode == Mode::At {
            return Ok(match self.at_execute(header, packet).await? {
                Handled::Relay => None,
                handled => Some(handled),
            });
        }
        // XA mode: a statement that may write runs only inside the branch.
        let sql = self.prepared.get(&id).and_then(|p| p.sql.clone());
        let kind = match &sql {
            Some(text) => self.work_if_it_calls_a_function(kind, text).await,
            None => kind,
        };
        if self.opens_xa_branch_implicitly(kind, sql.as_deref().map(str::as_bytes)) {
            return match self.xa_begin_implicitly().await? {
                // Checked against AT-mode global locks, as below.
                Handled::Relay if kind == Kind::Work => self.guard_execute(header, packet).await,
                Handled::Relay => Ok(None),
                handled => Ok(Some(handled)),
            };
        }
        if kind == Kind::Passive {
            return Ok(None);
        }
        if self.xa.is_some() {
            // Inside the branch: checked against AT-mode global locks (see
            // `intercept_query`).
            return self.guard_execute(header, packet).await;
        }
        self.refuse(Error::Unsupported {
            what: "a prepared statement that may write outside an XA branch inside a global transaction (in XA mode run it inside START TRANSACTION … COMMIT)",
        })
        .map(Some)
    }

    /// Answers a control statement at a sync point with a one-row result set.
    async fn answer_control(&mut self, control: Result<Control>) -> Result<Handled> {
        if !self.exchange.at_sync_point() {
            return Ok(Handled::Pause);
        }
        self.reconcile_branch().await?;
        let status = self.exchange.status().unwrap_or(StatusFlags::empty());
        let local = crate::binding::LocalTransaction {
            open: status.contains(StatusFlags::SERVER_STATUS_IN_TRANS) || self.xa.is_some(),
            has_branch: !self.at_branch.is_empty() || self.xa.is_some(),
            fresh: false,
        };
        let answer = match control {
            Ok(control) => {
                let column = control.column();
                // A rollback waits for every branch, this connection's prepared one
                // included: serve its phase 2 meanwhile.
                let Relay {
                    ctx,
                    binding,
                    server,
                    from_server,
                    phase2_rx,
                    owned,
                    ..
                } = &mut *self;
                let call = binding.carry_out(&ctx.lock, local, control);
                tokio::pin!(call);
                let result = loop {
                    tokio::select! {
                        result = &mut call => break result,
                        Some(request) = phase2_rx.recv() => {
                            serve_owned(server, from_server, &ctx.xa, owned, request).await?;
                        }
                    }
                };
                result.map(|value| (value, column))
            }
            Err(e) => Err(e),
        };
        self.run_deferred_autocommit().await?;
        match answer {
            Ok((value, column)) => put_single_value(
                &mut self.to_client,
                self.capabilities
                    .contains(CapabilityFlags::CLIENT_DEPRECATE_EOF),
                self.extended_metadata,
                column,
                value.as_deref(),
                status,
            ),
            Err(e) => {
                tracing::debug!(parent: self.binding.span(), error = %e, "control statement refused");
                self.put_error(&e);
            }
        }
        Ok(Handled::Answer)
    }

    /// Where tandem must open a transaction of its own around an autocommit write, at a
    /// sync point: the refusal if the session holds LOCK TABLES (or FLUSH TABLES … WITH
    /// READ LOCK) locks, which that START TRANSACTION would release behind the client's
    /// back. Only a session whose statements named such locks is asked: a table that
    /// does not exist is reported as not locked (1100) under table locks, and as
    /// missing (1146) otherwise. `written`: the write's table, whose database the
    /// client may read (with no current database, an unqualified name fails).
    pub(super) async fn own_transaction_refused(
        &mut self,
        written: &tandem_undo::TableRef,
    ) -> Result<Option<Error>> {
        use tandem_undo::Dialect;
        if !self.may_hold_table_locks {
            return Ok(None);
        }
        let probe = tandem_undo::Mysql.qualified(&tandem_undo::TableRef {
            schema: written.schema.clone(),
            name: TABLE_LOCKS_PROBE.to_owned(),
        });
        // DO: an OK whatever the server finds, never rows.
        let probe = format!("DO (SELECT 1 FROM {probe} LIMIT 0)");
        match self.own().query(&probe).await? {
            Err(e) if e.code == ER_TABLE_NOT_LOCKED => Ok(Some(Error::Unsupported {
                what: "an autocommit write that tandem must wrap in a transaction of its own while the session holds table locks (LOCK TABLES; starting that transaction would release them: UNLOCK TABLES first, or lock inside a transaction)",
            })),
            // 1142 where the user's grants are per table: the server checks them first.
            Err(e) if e.code != ER_NO_SUCH_TABLE => {
                tracing::debug!(parent: self.binding.span(), code = e.code, message = %e.message, "table-lock probe inconclusive");
                Ok(Some(Error::Unsupported {
                    what: "an autocommit write that tandem must wrap in a transaction of its own after the session's statements named table locks (LOCK TABLES), which tandem could not ask the server about (starting that transaction would release them: send UNLOCK TABLES first)",
                }))
            }
            _ => {
                self.may_hold_table_locks = false;
                Ok(None)
            }
        }
    }

    /// The time limit a command's statement gives itself (`statement_time_limit`),
    /// text or prepared.
    fn command_time_limit(&self, payload: &[u8]) -> Option<Duration> {
        match payload.first() {
            Some(&command::QUERY) => statement_time_limit(payload.get(1..)?),
            Some(&command::STMT_EXECUTE) => {
                let id = super::client_side::statement_id(payload)?;
                self.prepared.get(&id)?.time_limit
            }
            _ => None,
        }
    }

    pub(super) fn refuse(&mut self, e: Error) -> Result<Handled> {
        if !self.exchange.at_sync_point() {
            return Ok(Handled::Pause);
        }
        tracing::debug!(parent: self.binding.span(), error = %e, "statement refused in a global transaction");
        self.put_error(&e);
        Ok(Handled::Answer)
    }

    pub(super) fn put_error(&mut self, e: &Error) {
        let code = e.mysql_error();
        put_err(
            &mut self.to_client,
            1,
            code.code(),
            code.sqlstate(),
            &e.mysql_message(),
        );
    }

    /// START TRANSACTION in XA mode: the branch is registered and the transaction
    /// begins as `XA START` under its id (the client gets XA START's OK).
    async fn xa_begin(&mut self, sql: &[u8]) -> Result<Handled> {
        if !self.exchange.at_sync_point() {
            return Ok(Handled::Pause);
        }
        self.reconcile_branch().await?;
        let status = self.exchange.status().unwrap_or(StatusFlags::empty());
        if self.xa.is_some() || status.contains(StatusFlags::SERVER_STATUS_IN_TRANS) {
            return self.refuse(Error::Unsupported {
                what: "START TRANSACTION while a transaction is open, in XA mode",
            });
        }
        let start = match self.register_xa_branch().await? {
            Ok(Some(start)) => start,
            Ok(None) => return Ok(Handled::Relay),
            Err(e) => return self.refuse(e),
        };
        if starts_read_only(sql) {
            // XA START takes no access mode: the client's applies to the transaction
            // it starts, as SET TRANSACTION does to the next one.
            if let Err(e) = self.run_own("SET TRANSACTION READ ONLY").await? {
                // Registered, never started: the lockserver rolls the branch back with
                // its global transaction.
                self.xa = None;
                put_err(&mut self.to_client, 1, e.code, &e.sqlstate, &e.message);
                return Ok(Handled::Answer);
            }
        }
        let mut payload = Vec::with_capacity(1 + start.len());
        payload.push(command::QUERY);
        payload.extend_from_slice(start.as_bytes());
        let mut replacement = BytesMut::new();
        put_message(&mut replacement, 0, &payload);
        let Some(header) = Header::peek(&replacement) else {
            return Err(Error::Malformed {
                what: "tandem's XA START",
            });
        };
        // The replacement is the command the state machine follows.
        let _ = self.on_command(header, &replacement)?;
        self.to_server.extend_from_slice(&replacement);
        Ok(Handled::Replace)
    }

    /// With autocommit off, the statement that would open a transaction opens the XA
    /// branch first: XA START runs as tandem's own statement, then the statement as
    /// sent (`Relay`), inside the branch.
    async fn xa_begin_implicitly(&mut self) -> Result<Handled> {
        if !self.exchange.at_sync_point() {
            return Ok(Handled::Pause);
        }
        let start = match self.register_xa_branch().await? {
            Ok(Some(start)) => start,
            Ok(None) => return Ok(Handled::Relay),
            Err(e) => return self.refuse(e),
        };
        match self.run_own(&start).await? {
            Ok(status) => {
                self.exchange.on_authenticated(status);
                Ok(Handled::Relay)
            }
            Err(e) => {
                // Registered, never started: the lockserver rolls the branch back with
                // its global transaction.
                self.xa = None;
                put_err(&mut self.to_client, 1, e.code, &e.sqlstate, &e.message);
                Ok(Handled::Answer)
            }
        }
    }

    /// The error for a session still bound to a global transaction that has ended
    /// (decided or timed out elsewhere), as a START TRANSACTION there gets (1399); None
    /// while it is open, or when the lockserver cannot say. Asked only on the way to a
    /// refusal, whose advice (start a transaction) would not help such a session.
    async fn bound_transaction_over(&self) -> Option<Error> {
        let xid = self.binding.xid()?;
        match self.ctx.lock.status(xid).await {
            Ok(status) if status != tandem_lockserver::client::GlobalStatus::Begin => {
                Some(Error::NotJoinable {
                    xid: xid.to_string(),
                    status: status.as_str().to_owned(),
                })
            }
            Err(e) if e.transaction_is_over() => Some(e.into()),
            _ => None,
        }
    }

    /// Whether a statement of kind `kind` (`sql`: its text, when known) opens an XA
    /// branch before it runs, in a bound session in XA mode with no branch open: with
    /// autocommit off and no transaction open, one that would open a transaction.
    fn opens_xa_branch_implicitly(&self, kind: Kind, sql: Option<&[u8]>) -> bool {
        let status = self.exchange.status().unwrap_or(StatusFlags::empty());
        if self.xa.is_some()
            || status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT)
            || status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
        {
            return false;
        }
        match kind {
            Kind::Work => true,
            // Reads of tables open a transaction too (SET, SHOW and the like do not,
            // unless they read a table: `SET @a = (SELECT …)`, `EXPLAIN SELECT …`).
            Kind::Passive => sql.is_some_and(|sql| {
                control::leading_words(sql, true).next().is_some_and(|w| {
                    let is = |words: &[&[u8]]| words.iter().any(|v| w.eq_ignore_ascii_case(v));
                    is(&[b"select", b"with", b"table", b"values"])
                        || (is(&[b"set", b"explain", b"describe", b"desc", b"do"])
                            && may_read_a_table(sql))
                })
            }),
            _ => false,
        }
    }

    /// Registers an XA branch of the session's global transaction on its current
    /// database and returns its `XA START` (the branch is then open). `Ok(None)`: the
    /// session is bound to nothing.
    async fn register_xa_branch(&mut self) -> Result<std::result::Result<Option<String>, Error>> {
        match self.ctx.xa.server_supports_xa().await {
            Ok(true) => {}
            Ok(false) => {
                return Ok(Err(Error::Unsupported {
                    what: "XA mode on a server that loses prepared XA transactions with their connection (MySQL before 5.7.7, MariaDB before 10.5.2)",
                }));
            }
            Err(e) => {
                tracing::warn!(parent: self.binding.span(), error = %e, "could not ask the server's version");
                return Ok(Err(Error::Unsupported {
                    what: "XA mode while tandem's side connection to the server fails",
                }));
            }
        }
        let Some(xid) = self.binding.xid().cloned() else {
            return Ok(Ok(None));
        };
        let resource = self.ctx.xa.resource_id(&self.database);
        self.ctx.xa.serve(&resource);
        let branch_id = match self
            .ctx
            .lock
            .register_branch(&xid, &resource, BranchKind::XA, &[], Duration::ZERO)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                self.binding.on_registration_refused(&e);
                return Ok(Err(e.into()));
            }
        };
        let start = format!("XA START {}", crate::xa::mysql::xa_id(&xid, branch_id));
        tracing::debug!(parent: &self.binding.branch_span(&xid, branch_id), "XA branch started");
        self.xa = Some(XaBranch { xid, branch_id });
        Ok(Ok(Some(start)))
    }

    /// COMMIT (prepare the branch) or ROLLBACK of the open XA branch, answered by tandem.
    async fn xa_end(&mut self, end: XaEnd) -> Result<Handled> {
        if !self.exchange.at_sync_point() {
            return Ok(Handled::Pause);
        }
        let commit = end != XaEnd::Rollback;
        let Some(branch) = self.xa.take() else {
            return Ok(Handled::Relay);
        };
        let id = crate::xa::mysql::xa_id(&branch.xid, branch.branch_id);
        let mut outcome = self.run_own(&format!("XA END {id}")).await?;
        if outcome.is_ok() {
            let next = if commit {
                format!("XA PREPARE {id}")
            } else {
                format!("XA ROLLBACK {id}")
            };
            outcome = self.run_own(&next).await?;
        } else {
            // The branch cannot be prepared (a deadlock left it rollback-only, which
            // refuses XA END): make sure nothing of it stays. A client's ROLLBACK has
            // then done what it asked.
            let mut rolled_back = self.run_own(&format!("XA ROLLBACK {id}")).await?;
            if rolled_back.is_err() {
                rolled_back = self.run_own(super::OWN_ROLLBACK).await?;
            }
            if !commit && rolled_back.is_ok() {
                outcome = rolled_back;
            }
        }
        // The client's answer waits for the report: the global commit waits for every
        // XA branch's (a branch registered at XA START may never prepare), so a client
        // told its COMMIT went through lets its transaction commit. A ROLLBACK reports a
        // failed branch, which a global commit then owes nothing.
        let reported = self
            .ctx
            .lock
            .report(&branch.xid, branch.branch_id, commit && outcome.is_ok())
            .await;
        if let Err(e) = &reported {
            tracing::warn!(parent: &self.binding.branch_span(&branch.xid, branch.branch_id), error = %e, "phase-1 report failed");
        }
        if commit
            && outcome.is_ok()
            && let Err(e) = &reported
            && e.transaction_is_over()
        {
            // The global transaction ended without this branch (rolled back, timed out,
            // forgotten): no phase 2 will come for it, and recovery leaves alone a
            // branch attached to a live connection. Its locks would be held for ever.
            let e = Error::RolledBackDuringCommit {
                xid: branch.xid.to_string(),
            };
            if let Err(rollback) = self.run_own(&format!("XA ROLLBACK {id}")).await? {
                tracing::warn!(parent: &self.binding.branch_span(&branch.xid, branch.branch_id), error = %rollback.message, "XA ROLLBACK of a branch its transaction ended without failed: the connection is closed, and recovery finishes the branch");
                return Err(e);
            }
            self.put_error(&e);
            self.exchange
                .on_authenticated(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
            return Ok(Handled::Answer);
        }
        if commit && outcome.is_ok() {
            self.ctx
                .xa
                .owners()
                .own(&branch.xid, branch.branch_id, self.phase2_tx.clone());
            self.owned.push((branch.xid.clone(), branch.branch_id));
        }
        match outcome {
            // Prepared, but the lockserver does not know: the global transaction cannot
            // commit, and the branch follows its rollback.
            Ok(_) if commit && reported.is_err() => {
                let e = Error::from(
                    reported
                        .err()
                        .unwrap_or(tandem_lockserver::Error::ShuttingDown),
                );
                self.put_error(&e);
                self.exchange
                    .on_authenticated(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
            }
            Ok(status) => {
                // The branch is detached from the session now (prepared or rolled back):
                // the client's transaction is over, whatever the server's flag says.
                let status = status - StatusFlags::SERVER_STATUS_IN_TRANS;
                tracing::debug!(parent: &self.binding.branch_span(&branch.xid, branch.branch_id), commit, "XA branch ended");
                if end == XaEnd::CommitThenAutocommit {
                    // See `autocommit_beside_held_branch`.
                    self.deferred_autocommit = true;
                    return self.answer_ok(status | StatusFlags::SERVER_STATUS_AUTOCOMMIT);
                }
                return self.answer_ok(status);
            }
            Err(e) => {
                put_err(&mut self.to_client, 1, e.code, &e.sqlstate, &e.message);
            }
        }
        Ok(Handled::Answer)
    }

    /// The session ends: its prepared branches are no longer its to finish.
    pub fn release_owned(&mut self) {
        for (xid, branch_id) in self.owned.drain(..) {
            self.ctx.xa.owners().release(&xid, branch_id);
        }
    }

    /// Runs one of tandem's statements at a sync point and reads its one reply.
    async fn run_own(&mut self, sql: &str) -> Result<std::result::Result<StatusFlags, OwnError>> {
        own_statement(&mut self.server, &mut self.from_server, sql).await
    }

    /// Phase 2 of branches this session's connection prepared (MariaDB keeps them
    /// attached to it): run at sync points, in arrival order. Resumes the client once
    /// the connection owns no prepared branch any more.
    pub(super) async fn serve_owned_phase2(&mut self) -> Result<bool> {
        while self.exchange.at_sync_point()
            && let Some(request) = self.phase2_queue.pop_front()
        {
            serve_owned(
                &mut self.server,
                &mut self.from_server,
                &self.ctx.xa,
                &mut self.owned,
                request,
            )
            .await?;
        }
        self.run_deferred_autocommit().await?;
        if self.client_paused && self.owned.is_empty() && self.exchange.at_sync_point() {
            return self.relay_from_client().await;
        }
        Ok(false)
    }
}

/// Whether a statement that reads no table by itself (SET, EXPLAIN …) may read one
/// through a query in it: it names SELECT anywhere (in a literal too, which only costs
/// a branch opened early).
fn may_read_a_table(sql: &[u8]) -> bool {
    sql.windows(6).any(|w| w.eq_ignore_ascii_case(b"select"))
}

/// How the client ends its open XA branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum XaEnd {
    /// COMMIT: the branch is prepared.
    Commit,
    /// `SET autocommit = 1` with autocommit off: COMMIT, then the SET, run once the
    /// connection holds no prepared branch.
    CommitThenAutocommit,
    Rollback,
}

/// A statement a connection holding prepared XA branches takes at once, where every
/// other waits for the global decision or is refused (`held_by_owned_branches`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BesideHeldBranch {
    /// COMMIT or ROLLBACK: no local transaction is open (see
    /// `Relay::answer_no_transaction_to_end`).
    EndsNoTransaction,
    /// `SET [SESSION] autocommit = …` (Django, JDBC pools, pymysql): see
    /// `Relay::autocommit_beside_held_branch`.
    Autocommit(bool),
}

impl BesideHeldBranch {
    /// Reads `sql` as one of them: only the plain spellings, without comments, chaining
    /// or other settings; anything else is not one.
    fn of(sql: &[u8]) -> Option<BesideHeldBranch> {
        let text = std::str::from_utf8(sql).ok()?.trim_ascii();
        let text = text.strip_suffix(';').unwrap_or(text);
        let spaced = text.replace(":=", " = ").replace('=', " = ");
        let words: Vec<String> = spaced
            .split_ascii_whitespace()
            .map(str::to_ascii_lowercase)
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let (name, value) = match words[..] {
            ["commit" | "rollback"] | ["commit" | "rollback", "work"] => {
                return Some(BesideHeldBranch::EndsNoTransaction);
            }
            ["set", "session" | "local", name, "=", value] => (name, value),
            ["set", name, "=", value] => (name, value),
            _ => return None,
        };
        if !matches!(
            name,
            "autocommit" | "@@autocommit" | "@@session.autocommit" | "@@local.autocommit"
        ) {
            return None;
        }
        match value {
            "1" | "on" | "true" => Some(BesideHeldBranch::Autocommit(true)),
            "0" | "off" | "false" => Some(BesideHeldBranch::Autocommit(false)),
            _ => None,
        }
    }
}

/// Runs `sql` on the session's backend connection (at a sync point) and reads its one
/// reply, OK or ERR.
async fn own_statement(
    server: &mut crate::upstream::ServerStream,
    from_server: &mut BytesMut,
    sql: &str,
) -> Result<std::result::Result<StatusFlags, OwnError>> {
    let mut no_closes = BytesMut::new();
    let mut own = Own {
        server,
        from_server,
        pending_closes: &mut no_closes,
        deprecate_eof: false,
        extended_metadata: false,
        executes_last_prepared: false,
    };
    Ok(own.query(sql).await?.map(|ok| ok.status))
}

/// XA COMMIT or XA ROLLBACK of a branch this connection prepared, on the connection.
async fn serve_owned(
    server: &mut crate::upstream::ServerStream,
    from_server: &mut BytesMut,
    xa: &crate::xa::mysql::MysqlXa,
    owned: &mut Vec<(Xid, u64)>,
    request: crate::xa::mysql::OwnedPhase2,
) -> Result<()> {
    let verb = if request.commit { "COMMIT" } else { "ROLLBACK" };
    let id = crate::xa::mysql::xa_id(&request.xid, request.branch_id);
    let outcome = match own_statement(server, from_server, &format!("XA {verb} {id}")).await? {
        Ok(_) => tandem_lockserver::client::BranchOutcome::Done,
        // Not prepared here (any more): nothing left to do.
        Err(e) if e.code == 1397 => tandem_lockserver::client::BranchOutcome::Done,
        Err(e) => tandem_lockserver::client::BranchOutcome::Retry { reason: e.message },
    };
    if outcome == tandem_lockserver::client::BranchOutcome::Done {
        owned.retain(|(x, b)| !(*x == request.xid && *b == request.branch_id));
        xa.owners().release(&request.xid, request.branch_id);
    }
    let _ = request.reply.send(outcome);
    Ok(())
}

/// Whether the START TRANSACTION `sql` asks for READ ONLY (among its other
/// characteristics: `WITH CONSISTENT SNAPSHOT, READ ONLY`).
fn starts_read_only(sql: &[u8]) -> bool {
    tandem_undo::try_words(&tandem_undo::Mysql, &String::from_utf8_lossy(sql))
        .is_some_and(|words| words.windows(2).any(|w| w[0] == "read" && w[1] == "only"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_held_connection_takes_is_read_in_its_plain_spellings_only() {
        use BesideHeldBranch::*;
        for (sql, expected) in [
            ("COMMIT", Some(EndsNoTransaction)),
            (" rollback work ; ", Some(EndsNoTransaction)),
            ("ROLLBACK AND CHAIN", None),
            ("COMMIT RELEASE", None),
            ("ROLLBACK TO SAVEPOINT a", None),
            ("SET AUTOCOMMIT = 1", Some(Autocommit(true))),
            ("set autocommit=0", Some(Autocommit(false))),
            ("SET @@session.autocommit = OFF;", Some(Autocommit(false))),
            ("SET SESSION autocommit := on", Some(Autocommit(true))),
            ("SET LOCAL autocommit = TRUE", Some(Autocommit(true))),
            ("SET @@autocommit=1", Some(Autocommit(true))),
            ("SET GLOBAL autocommit = 1", None),
            ("SET autocommit = 1, sql_mode = ''", None),
            ("SET autocommit = 2", None),
            ("SET /* x */ autocommit = 1", None),
            ("SET autocommitx = 1", None),
            ("SET auto commit = 0", None),
            ("SET sessionautocommit=1", None),
            ("SELECT 1", None),
        ] {
            assert_eq!(BesideHeldBranch::of(sql.as_bytes()), expected, "{sql}");
        }
    }

    #[test]
    fn statements_are_classified_by_their_leading_words() {
        for (sql, kind) in [
            ("BEGIN", Kind::Begin),
            ("BEGIN WORK", Kind::Begin),
            ("BEGIN NOT ATOMIC UPDATE t SET v = 1; END", Kind::Work),
            (" start transaction read only", Kind::Begin),
            ("/* a note */ START TRANSACTION", Kind::Begin),
            ("/* x */ COMMIT", Kind::Commit),
            ("ROLLBACK", Kind::Rollback),
            ("ROLLBACK TO SAVEPOINT a", Kind::Passive),
            ("XA START 'x'", Kind::ClientXa),
            ("# c\nSELECT 1", Kind::Passive),
            ("SET autocommit = 0", Kind::Passive),
            (
                "SET STATEMENT max_statement_time = 1 FOR UPDATE t SET v = 1",
                Kind::Work,
            ),
            (
                "SET /*!*/ STATEMENT max_statement_time = 1 FOR UPDATE t SET v = 1",
                Kind::Work,
            ),
            (
                "SET STATEMENT max_statement_time = 1 FOR SELECT * FROM t",
                Kind::Passive,
            ),
            ("EXPLAIN ANALYZE DELETE FROM t", Kind::Work),
            ("EXPLAIN /*!*/ ANALYZE DELETE FROM t", Kind::Work),
            ("EXPLAIN DELETE FROM t", Kind::Passive),
            ("WITH x AS (SELECT 1) SELECT * FROM x", Kind::Passive),
            (
                "WITH x AS (SELECT 1) SELECT * FROM t FOR UPDATE",
                Kind::Passive,
            ),
            ("WITH x AS (SELECT 1) UPDATE t, x SET v = 1", Kind::Work),
            ("SET @a = 1", Kind::Passive),
            ("UPDATE t SET v = 1", Kind::Work),
            ("REPLACE INTO t VALUES (1)", Kind::Work),
            ("CALL p()", Kind::Work),
            ("-- c\nDELETE FROM t", Kind::Work),
        ] {
            assert_eq!(classify(sql.as_bytes()), kind, "{sql}");
        }
    }

    #[test]
    fn statements_that_may_take_table_locks_are_told_by_their_words() {
        for (sql, whole, takes) in [
            ("LOCK TABLES t WRITE", true, true),
            ("/* x */ lock table t read", true, true),
            ("/*!40000 LOCK TABLES t WRITE */", true, true),
            ("SELECT 1;\nlock\ttables t WRITE", true, true),
            ("LOCK /* x */ TABLES t WRITE", true, true),
            ("LOCK-- x\nTABLES t WRITE", true, true),
            ("UNLOCK TABLES; LOCK TABLES t READ", true, true),
            ("FLUSH TABLES t WITH READ LOCK", true, true),
            ("flush tables t for export", true, true),
            (
                "EXECUTE IMMEDIATE CONCAT('LO', 'CK TABLES t WRITE')",
                true,
                true,
            ),
            ("EXECUTE s", true, true),
            ("SELECT 1; EXECUTE s", true, true),
            ("SELECT 1; SELECT", false, true),
            ("UNLOCK TABLES", true, false),
            ("SELECT * FROM t LOCK IN SHARE MODE", true, false),
            ("SELECT * FROM t LOCK IN SHARE MODE", false, false),
            ("UPDATE unlock_tables SET a = 1", true, false),
            ("UPDATE t SET lock_tables = 1", true, false),
            ("UPDATE t SET block = 1 WHERE x = 'table'", true, false),
            ("SELECT * FROM t FOR UPDATE", true, false),
            ("SELECT 1; SELECT 2", true, false),
        ] {
            assert_eq!(
                may_take_table_locks(sql.as_bytes(), whole),
                takes,
                "{sql} (whole: {whole})"
            );
        }
    }

    #[test]
    fn only_a_lone_unlock_or_begin_surely_ends_table_locks() {
        for (sql, ends) in [
            ("UNLOCK TABLES", true),
            ("unlock tables;", true),
            ("UNLOCK TABLES ; ", true),
            ("/* c */ UNLOCK TABLE", true),
            ("BEGIN", true),
            ("BEGIN WORK;", true),
            ("START TRANSACTION READ WRITE", true),
            ("BEGIN NOT ATOMIC SELECT 1; END", false),
            ("UNLOCK TABLES; LOCK TABLES t READ", false),
            ("SELECT 1", false),
            ("/*!40000 UNLOCK TABLES */", false),
        ] {
            assert_eq!(ends_table_locks(sql.as_bytes()), ends, "{sql}");
        }
    }
}
