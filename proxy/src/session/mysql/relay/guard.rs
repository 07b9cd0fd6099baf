//! Writes outside a global transaction on MySQL (DESIGN.md, "Global row locks"; what
//! both protocols share is `session::outside`): they must not change a row that an
//! unfinished global transaction holds, or that transaction's rollback would stop at
//! the dirty write and leave its branches non-atomic.
//!
//! The lockserver announces, for this server's lock scope, which tables may hold global
//! locks. A write to any other table runs as the client sent it, under an
//! `UncheckedWrite` guard held until its reply is over: the lockserver grants the first
//! lock on a table only after every proxy has seen it announced and its unchecked
//! writes have finished. A write to an announced table is checked first: its rows are
//! locked (`SELECT … FOR UPDATE` with the write's own predicate, or the rows an upsert
//! collides with) and their keys asked of the lockserver. A held row makes the write
//! wait (`lockserver.outside_writes = "wait"`, up to `lock_wait_ms`) or fail with 1205.
//! Inside the client's transaction the write then runs after a savepoint of tandem's,
//! its rows still locked; an autocommit write runs in a transaction tandem opens around
//! the check, and commits after it. Either way, if it changed more rows than were
//! checked (a row that began to match behind the check's scan, under READ COMMITTED,
//! which takes no gap locks), it is undone (to the savepoint, or rolled back) and
//! checked again.
//!
//! A plain INSERT (or INSERT IGNORE, or an upsert or REPLACE that gives its keys) has
//! no rows to lock before it runs, but it may recreate a row a global transaction
//! deleted and still holds; the rows an upsert or REPLACE collides with are read and
//! locked first, and asked with its own. Its rows are checked
//! once it has run, by the primary keys its VALUES give (read back, so compared as the
//! server stores them): in tandem's transaction around an autocommit one, or after a
//! savepoint inside the client's, so that a held key undoes it alone. Its new rows are
//! locked by then, so the global transaction's undo cannot slip in between. While it
//! waits it is undone; inside the client's transaction its duplicate check may still
//! hold a lock on the deleted row, and the holder's rollback then waits for the
//! client's transaction to end. Keys the server generates are new, and need no check.
//!
//! MariaDB's RETURNING changes none of this: tandem reads the write's rows whole and
//! holds them until its savepoint is released or its transaction committed, then
//! answers them with the status the server reports then.
//!
//! Left unchecked, and so caught only as a dirty write when the global transaction
//! rolls back: an UPDATE or DELETE whose rows are chosen by RAND(), UUID(), a sequence
//! or a variable assignment (the rows checked need not be those it then changes; AT
//! refuses such writes), an INSERT … SELECT, LOAD DATA,
//! CALL, writes in stored programs and triggers, statements tandem could not read
//! whole (16 MiB or more, long data), a write with a non-ASCII character before a backslash or a
//! backtick from a session whose character set may read them as one character (gbk,
//! big5, sjis, cp932, gb18030), an execute with RETURNING that opens a cursor (its
//! rows would come after tandem's transaction had ended), and every write while the
//! lockserver is unreachable (counted in `tandem_mysql_outside_writes_unchecked`).
//!
//! A multi-statement query of writes alone (a driver's rewritten batch) is checked
//! statement by statement (`batch`) while one of its tables (those it inserts into
//! too) may hold global locks.
//! A statement tandem cannot check row by row (TRUNCATE, any other multi-statement
//! query, counting the tables its INSERTs name, a write it cannot analyse, such as a
//! multi-table write to several tables) is judged
//! by the tables it may update or delete rows of: guarded while none may hold global
//! locks, else it waits or fails as a held row does (`unanalysed_write`). Text that
//! begins as a write but does not parse counts as naming every table, and so does
//! text the server reads otherwise than tandem (`tandem_undo::mysql::reading`): an
//! executable comment MariaDB skips, runs or ends elsewhere, a backslash the
//! session's sql_mode reads as itself (NO_BACKSLASH_ESCAPES, ANSI_QUOTES). An INSERT
//! with a double-quoted value under ANSI_QUOTES, a column to the server, is judged by
//! its table. The tables a
//! checked write's foreign-key actions reach (`Cascade::reached_by`) are judged the
//! same way, before its rows are checked, and so are the tables under a view a write
//! goes through (`tables_under_views`), whose rows no key of the view names. What runs
//! another statement's text (an SQL-level EXECUTE of what the session prepared under
//! that name, EXECUTE IMMEDIATE, MariaDB's ANALYZE of a statement) is judged by that
//! text's tables (`follow_sql_prepares`; a text tandem cannot read, by every table).
//! Such statements follow the foreign-key actions of the tables they name too
//! (`MysqlMetaCache::actions`), and DDL ahead of a write in one query makes what it
//! changes count as every table.

use super::at::{AtFailure, Source, TextReading, execute_parameters};
use super::client_side::Handled;
use super::control::Kind;
use super::own::OwnError;
use super::{Relay, in_transaction};
use crate::at::branch::qualified_name;
use crate::at::mysql::AtTable;
use crate::error::{Error, Result};
use crate::session::outside::{RECHECK, TablesGuarded, some_statement};
use crate::wire::mysql::Header;
use crate::wire::mysql::codes::StatusFlags;
use crate::wire::mysql::messages::response::HeldResultSet;
use crate::wire::mysql::messages::statement::{BinaryRow, OkPacket};
use std::ops::ControlFlow;
use std::time::Instant;
use tandem_lockserver::client::{LockKey, Xid};
use tandem_undo::{Analysis, Capture, Cascade, Mysql, OnDuplicate, Write, WriteKind};

/// What a checked write waits for: a lock holder, or the lockserver's silence.
enum Check {
    Free,
    /// By this transaction; `true`: it is rolling back.
    Held(Xid, bool),
    /// The lockserver did not answer an XA branch's check: its write is refused.
    Unanswered(tandem_lockserver::Error),
}

impl Relay<'_> {
    /// A COM_QUERY of a session bound to no global transaction, or of an XA-mode
    /// session inside its branch, read whole and not a control call. None: it goes on
    /// as sent.
    pub(super) async fn guard_query(&mut self, sql: &[u8]) -> Result<Option<Handled>> {
        if !some_statement(sql, may_write) || self.enter_unchecked_anywhere() {
            return Ok(None);
        }
        let values_differ = match self.text_reading(sql).await? {
            None => return Ok(Some(Handled::Pause)),
            Some(TextReading::Same) => false,
            Some(TextReading::ValuesDiffer) => true,
            // Where its literals or comments end, tandem cannot tell: any table may be
            // written.
            Some(TextReading::Otherwise(_)) => return self.guard_every_table().await,
        };
        let hex_text;
        let text = match std::str::from_utf8(sql) {
            Ok(text) => text,
            Err(_) => {
                if !self.exchange.at_sync_point() {
                    return Ok(Some(Handled::Pause));
                }
                match self.binary_literals_as_hex(sql).await? {
                    Ok(Some(text)) => {
                        hex_text = text;
                        &hex_text
                    }
                    // Judged by its tables, as a write tandem cannot read: read as the
                    // session's character set reads it, or else as naming every table
                    // (a character tandem would take for part of a name may be a
                    // space).
                    _ => {
                        return match self.readable_text(sql).await? {
                            Some(text) => self.unanalysed_write(&text).await,
                            None => self.guard_every_table().await,
                        };
                    }
                }
            }
        };
        if values_differ {
            // Its literals end where tandem reads them end, but hold other values: its
            // rows are not those tandem would check, its tables are.
            return self.unanalysed_write(text).await;
        }
        let write = match tandem_undo::analyze(&Mysql, text) {
            Ok(mut analyses) if analyses.len() == 1 => match analyses.pop() {
                Some(Analysis::Write(write)) => write,
                _ => return self.unanalysed_write(text).await,
            },
            Ok(analyses) if analyses.len() > 1 => return self.guard_several(text, analyses).await,
            // Several statements, or one tandem cannot read.
            _ => return self.unanalysed_write(text).await,
        };
        self.guard_write(text, &write, &Source::Query(text)).await
    }

    /// A statement tandem cannot check row by row (TRUNCATE, a multi-statement query
    /// that updates or deletes, a write tandem cannot analyse): judged by the tables
    /// `tables_changed` names. It runs under a guard on each; while one of them may
    /// hold global locks it waits (as configured, in autocommit) until none does, or
    /// is refused with 1205. Text that does not parse, plain INSERTs, XA-mode work
    /// and a lockserver that tracks no tables (Redis) leave it unchecked (see the
    /// module comment).
    async fn unanalysed_write(&mut self, text: &str) -> Result<Option<Handled>> {
        match self.tables_changed(text) {
            Some(changed) => self.guard_changed_tables(changed, None).await,
            None => Ok(None),
        }
    }

    /// The tables the statements of `text` may update or delete rows of; None if
    /// none.
    fn tables_changed(&self, text: &str) -> Option<Vec<String>> {
        let prepared = &self.sql_prepared;
        let resolve = |name: &str| prepared.get(name).cloned().flatten();
        // MySQL's stored functions cannot prepare statements.
        match tandem_undo::tables_changed_resolving(&Mysql, text, &resolve, &|_| false) {
            Some(changed) if changed.is_empty() => None,
            Some(changed) => Some(changed),
            // Text tandem's tokenizer cannot read may still run (a literal tandem
            // reads as unended that the session's sql_mode ends).
            None => Some(vec![tandem_undo::EVERY_TABLE.to_owned()]),
        }
    }

    /// A multi-statement query: judged by its tables (`unanalysed_write`, and the
    /// tables it inserts into), unless one of them may hold global locks and every
    /// statement is a write tandem can read; then each is checked row by row in turn
    /// (`batch`), rather than waiting for every global lock on its tables.
    async fn guard_several(
        &mut self,
        text: &str,
        analyses: Vec<Analysis>,
    ) -> Result<Option<Handled>> {
        // An INSERT's table counts too: it may recreate a row a global transaction
        // deleted and still holds.
        let targets: Vec<String> = analyses
            .iter()
            .filter_map(|analysis| match analysis {
                Analysis::Write(write) => Some(write.table.name.clone()),
                _ => None,
            })
            .collect();
        let mut changed = self.tables_changed(text).unwrap_or_default();
        changed.extend(targets);
        if changed.is_empty() {
            return Ok(None);
        }
        let in_turn = super::batch::writes_alone(text, analyses).filter(|_| self.multi_statements);
        self.guard_changed_tables(changed, in_turn).await
    }

    /// A write that may change any table: see `unanalysed_write`.
    async fn guard_every_table(&mut self) -> Result<Option<Handled>> {
        self.guard_changed_tables(vec![tandem_undo::EVERY_TABLE.to_owned()], None)
            .await
    }

    /// A write tandem cannot check row by row, by the tables it may change (`changed`):
    /// see `unanalysed_write`. A batch of writes alone (`in_turn`) does not wait while
    /// one of them may hold global locks: its statements are checked row by row in
    /// turn instead (`batch`).
    async fn guard_changed_tables(
        &mut self,
        changed: Vec<String>,
        in_turn: Option<Vec<(&str, Write)>>,
    ) -> Result<Option<Handled>> {
        if self.xa.is_some() {
            // XA mode's gap stays as README documents it (as on PostgreSQL).
            return Ok(None);
        }
        let scope = self.ctx.xa.lock_scope();
        if self.ctx.outside.tables.untracked(&scope) {
            return Ok(None);
        }
        if !self.exchange.at_sync_point() {
            return Ok(Some(Handled::Pause));
        }
        match (
            self.guard_tables(&changed, in_turn.is_none()).await,
            in_turn,
        ) {
            (TablesGuarded::Yes | TablesGuarded::LockserverDown(_), _) => Ok(None),
            // Boxed: a statement of the batch may be judged by its table in turn.
            (TablesGuarded::Locked(_), Some(writes)) => {
                Box::pin(self.writes_in_turn(super::batch::Statementwise::Checked, writes))
                    .await
                    .map(Some)
            }
            (TablesGuarded::Locked(table), None) => {
                self.refuse(Error::UncheckedWriteLocked { table }).map(Some)
            }
            (TablesGuarded::Ended(e), _) => self.refuse(e).map(Some),
        }
    }

    /// Follows what the statements of `sql` (read whole) do to the names of the
    /// session's SQL-level prepared statements (`sql_prepared`). A PREPARE whose
    /// statement the server refuses leaves the name standing for nothing, which an
    /// EXECUTE then fails on.
    pub(super) fn follow_sql_prepares(&mut self, sql: &[u8]) {
        let text = String::from_utf8_lossy(sql);
        let known = |name: &str| self.sql_prepared.get(name).cloned().flatten();
        for change in tandem_undo::prepared_changes(&text, &known) {
            match change {
                tandem_undo::PreparedChange::Prepared(name, text) => {
                    self.sql_prepared.insert(name, text);
                }
                tandem_undo::PreparedChange::Forgotten(name) => {
                    self.sql_prepared.remove(&name);
                }
                tandem_undo::PreparedChange::AllForgotten => self.sql_prepared.clear(),
            }
        }
    }

    /// A prepared statement that is not one write tandem can check row by row, but may
    /// run one (MariaDB's ANALYZE of a write): judged by its tables, as text is.
    async fn unanalysed_execute(&mut self, sql: &str) -> Result<Option<Handled>> {
        if !some_statement(sql.as_bytes(), may_write) {
            return Ok(None);
        }
        self.unanalysed_write(sql).await
    }

    /// Guards on the tables (as the catalog named them) a write changes besides its own
    /// rows (`guard_tables`). Break: what the write then gets, to go on as sent (the
    /// lockserver does not answer) or the refusal `refusal` makes of a table that may
    /// hold global locks.
    async fn guard_reached(
        &mut self,
        reached: &[String],
        refusal: impl FnOnce(String) -> Error,
    ) -> Result<ControlFlow<Option<Handled>>> {
        if reached.is_empty() {
            return Ok(ControlFlow::Continue(()));
        }
        Ok(match self.guard_tables(reached, true).await {
            TablesGuarded::Yes => ControlFlow::Continue(()),
            // An XA branch's write is refused rather than run unchecked (see `check`).
            TablesGuarded::LockserverDown(e) if self.xa.is_some() => {
                ControlFlow::Break(Some(self.refuse(Error::Lockserver(e))?))
            }
            TablesGuarded::LockserverDown(_) => ControlFlow::Break(None),
            TablesGuarded::Locked(table) => ControlFlow::Break(Some(self.refuse(refusal(table))?)),
            TablesGuarded::Ended(e) => ControlFlow::Break(Some(self.refuse(e)?)),
        })
    }

    /// Guards on the tables named `names` for a write that may change their rows
    /// unchecked (`OutsideWriteChecks::guard_tables`): if `may_wait`, it waits, as
    /// configured and in autocommit, while one may hold global locks. At a sync point.
    async fn guard_tables(&mut self, names: &[String], may_wait: bool) -> TablesGuarded {
        // A view's tables are written through its name, and what foreign-key actions
        // change is changed with what they act on.
        let mut names = names.to_vec();
        for name in names.clone() {
            let view = tandem_undo::TableRef { schema: None, name };
            names.extend(self.tables_under_view(&view).await);
        }
        let actions = self.ctx.at_meta.actions(self.ctx.xa.pool()).await;
        for name in names.clone() {
            match &actions {
                Ok(actions) => names.extend(actions.get(&name).cloned().unwrap_or_default()),
                Err(_) => names.push(tandem_undo::EVERY_TABLE.to_owned()),
            }
        }
        names.sort_unstable();
        names.dedup();
        // In the client's transaction its earlier work may hold rows a rollback
        // needs: it fails at once, as a checked write there does.
        let status = self.exchange.status().unwrap_or(StatusFlags::empty());
        let waits = may_wait && self.ctx.outside.waits() && !in_transaction(status);
        let deadline = Instant::now() + self.ctx.lock_wait;
        let scope = self.ctx.xa.lock_scope();
        let guarded = (self.ctx.outside)
            .guard_tables(
                &self.ctx.lock,
                &scope,
                &names,
                waits.then_some(deadline),
                &self.waits_end_while_idle(),
                &mut self.unchecked,
            )
            .await;
        if matches!(guarded, TablesGuarded::LockserverDown(_)) && self.xa.is_none() {
            self.count_unchecked();
            // The rest of the batch goes the same way (see `UncheckedGuards`).
            self.unchecked.pass_all();
        }
        guarded
    }

    /// The tables a write through the view `view` changes (one without a database:
    /// any view of that name, in any database); none if it names no view, every table
    /// if the views could not be read.
    async fn tables_under_view(&self, view: &tandem_undo::TableRef) -> Vec<String> {
        if view.name == tandem_undo::EVERY_TABLE {
            return Vec::new();
        }
        let key = match &view.schema {
            Some(schema) => crate::at::meta::qualified_key(schema, &view.name),
            None => view.name.clone(),
        };
        match self.ctx.at_meta.views(self.ctx.xa.pool()).await {
            Ok(views) => views.get(&key).cloned().unwrap_or_default(),
            Err(_) => vec![tandem_undo::EVERY_TABLE.to_owned()],
        }
    }

    /// The first bytes of a COM_QUERY of an unbound session that tandem does not read
    /// whole unless it must: whether it must (it may write, and some table of the
    /// server may hold global locks). One it cannot read whole (16 MiB or more) is let
    /// through unchecked.
    pub(super) fn must_read_outside_write(&mut self, header: Header, sql_start: &[u8]) -> bool {
        if !some_statement(sql_start, may_write) || self.enter_unchecked_anywhere() {
            return false;
        }
        if header.is_continued() {
            self.count_unchecked();
            return false;
        }
        true
    }

    /// A COM_STMT_EXECUTE of a session bound to no global transaction, or of an XA-mode
    /// session inside its branch. None: it goes on as sent.
    pub(super) async fn guard_execute(
        &mut self,
        header: Header,
        packet: &[u8],
    ) -> Result<Option<Handled>> {
        let payload = header.payload(packet);
        let Some(id) = super::client_side::statement_id(payload) else {
            // Whole and still too short: the server answers it as malformed.
            let whole = payload.len() == header.payload_len;
            return Ok((!whole).then_some(Handled::NeedMore));
        };
        // Every execute of every session comes here: reads leave at once.
        if self.prepared.get(&id).is_some_and(|p| p.kind != Kind::Work)
            || self.enter_unchecked_anywhere()
        {
            return Ok(None);
        }
        // A statement tandem did not see prepared, long data, or an execute of 16 MiB
        // or more: see the module comment.
        let Some(prepared) = self
            .prepared
            .get(&id)
            .filter(|p| !p.long_data && !header.is_continued())
            .cloned()
        else {
            return Ok(None);
        };
        if payload.len() < header.payload_len {
            return Ok(Some(Handled::NeedMore));
        }
        if !self.exchange.at_sync_point() {
            return Ok(Some(Handled::Pause));
        }
        let Some(sql) = prepared.sql.clone() else {
            // Its text is not UTF-8 (a latin1 space may begin it), or was not read
            // whole: any table may be written.
            return self.guard_every_table().await;
        };
        let (values, types) = match execute_parameters(payload, &prepared) {
            Ok(Some(parameters)) => parameters,
            Ok(None) => return Ok(None),
            // Parameters that do not decode: the server should answer the execute as
            // malformed; if it reads them after all, the write ran unchecked.
            Err(_) => {
                self.count_unchecked();
                return Ok(None);
            }
        };
        // Read as the session's sql_mode reads it now, which is mostly the one it was
        // prepared under.
        match self.text_reading(sql.as_bytes()).await? {
            Some(TextReading::Same) => {}
            Some(TextReading::ValuesDiffer) => return self.unanalysed_write(&sql).await,
            _ => return self.guard_every_table().await,
        }
        let write = match self.ctx.analyses.analyze(&sql) {
            Ok(analyses) => match analyses.into_iter().next() {
                Some(Analysis::Write(write)) => write,
                _ => return self.unanalysed_execute(&sql).await,
            },
            Err(_) => return self.unanalysed_execute(&sql).await,
        };
        if self.prepared_under_another_charset(&prepared, &sql) {
            // Its rows are not those tandem reads: see the module comment.
            self.count_unchecked();
            return Ok(None);
        }
        if !self.prepared_here(&prepared).await? {
            // tandem would check rows of another database's table than it writes.
            return self.refuse(super::at::PREPARED_ELSEWHERE).map(Some);
        }
        let source = Source::Execute {
            packet: &packet[..header.wire_len()],
            values,
            types,
        };
        self.execute_forwarded = false;
        let handled = self.guard_write(&sql, &write, &source).await?;
        if matches!(handled, Some(Handled::Answer)) && self.execute_forwarded {
            // tandem answered after the server ran it: the relay's own bookkeeping.
            self.on_execute(payload);
        }
        Ok(handled)
    }

    /// Whether a write may run unchecked because no table of this server's lock scope
    /// may hold global locks (a guard is then held until the reply is over), or the
    /// lockserver is unreachable (counted).
    fn enter_unchecked_anywhere(&mut self) -> bool {
        if self.unchecked.covers(None) {
            return true;
        }
        let scope = self.ctx.xa.lock_scope();
        if let Some(guard) = self.ctx.outside.tables.enter_unchecked(&scope, None) {
            self.unchecked.hold(guard, None);
            return true;
        }
        if self.ctx.outside.failed_lately() && self.xa.is_none() {
            self.count_unchecked();
            // The rest of the batch goes the same way (see `UncheckedGuards`).
            self.unchecked.pass_all();
            return true;
        }
        false
    }

    /// Checks the rows `write` will change (see the module comment). None: the write
    /// goes on as sent; `Answer`: tandem ran it, or refused it.
    pub(super) async fn guard_write(
        &mut self,
        sql: &str,
        write: &Write,
        source: &Source<'_>,
    ) -> Result<Option<Handled>> {
        let upsert = matches!(
            write.on_duplicate,
            OnDuplicate::Update | OnDuplicate::Replace
        );
        if write.has_returning && source.opens_cursor() {
            // Its rows come with later fetches, after tandem's transaction would have
            // ended: see the module comment.
            self.count_unchecked();
            return Ok(None);
        }
        if !self.exchange.at_sync_point() {
            return Ok(Some(Handled::Pause));
        }
        // No such table, no database selected: the write fails on its own.
        let Ok(table) = self.table_of(&write.table).await? else {
            return Ok(None);
        };
        // A write through a view changes rows of the tables under it, which no key of
        // the view names: their tables are judged as a whole (a plain INSERT too: it may
        // recreate a key a global transaction deleted).
        let reached = self.tables_under_view(&table.meta.table).await;
        let refusal = |reached| Error::ReachedLocked {
            relation: qualified_name(&table.meta),
            table: reached,
        };
        if let ControlFlow::Break(handled) = self.guard_reached(&reached, refusal).await? {
            return Ok(handled);
        }
        // Rows foreign-key actions change in other tables are not the write's own:
        // their tables are judged as a whole.
        let cascaded = Cascade::reached_by(&table.meta.cascades, write);
        let refusal = |reached| Error::CascadeLocked {
            table: qualified_name(&table.meta),
            reached,
        };
        if let ControlFlow::Break(handled) = self.guard_reached(&cascaded, refusal).await? {
            return Ok(handled);
        }
        if table.meta.pk.is_empty() {
            // Never captured, so never globally locked.
            return Ok(None);
        }
        let name = qualified_name(&table.meta);
        if self.unchecked.covers(Some(&name)) {
            return Ok(None);
        }
        let scope = self.ctx.xa.lock_scope();
        if let Some(guard) = self.ctx.outside.tables.enter_unchecked(&scope, Some(&name)) {
            self.unchecked.hold(guard, Some(name));
            return Ok(None);
        }
        if matches!(self.is_temporary(&write.table).await?, Ok(true)) {
            // No other session sees its rows: no global transaction holds them.
            return Ok(None);
        }
        if !table.meta.limit_takes_certain_rows(write) {
            // Among rows that tie, the check's read and the write may take others: the
            // write could land on a held row the check never saw.
            return self
                .refuse(Error::Unsupported {
                    what: "UPDATE or DELETE … LIMIT whose ORDER BY does not name every primary-key column, to a table that holds global locks (among rows that tie tandem cannot tell which it takes: add the key to its ORDER BY)",
                })
                .map(Some);
        }
        if !matches!(self.charset_misreads(sql).await?, Ok(false)) {
            // Its rows are not those tandem reads: see the module comment.
            self.count_unchecked();
            return Ok(None);
        }
        if write.rows.as_ref().is_some_and(|r| r.double_quoted)
            && !matches!(self.ansi_quotes().await?, Ok(false))
        {
            // Its keys are not what tandem reads, its table is.
            return self
                .guard_changed_tables(vec![write.table.name.clone()], None)
                .await;
        }
        // An upsert or REPLACE that gives its keys may recreate a row a global
        // transaction deleted, as a plain INSERT may: it is checked the same way, the
        // rows it collides with included.
        if write.kind == WriteKind::Insert {
            let plan = table.mysql.insert_plan(write);
            let gives_keys = plan.as_ref().is_ok_and(|plan| plan.after.is_some());
            if !upsert || gives_keys {
                return match plan {
                    Ok(plan) => self.guard_plain_insert(&table, write, plan, source).await,
                    // Rows tandem does not see (INSERT … SELECT), say: see the module
                    // comment.
                    Err(_) => Ok(None),
                };
            }
        }
        let capture = match rows_of(&table, write) {
            Ok(Some(capture)) => capture,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.put_error(&e);
                return Ok(Some(Handled::Answer));
            }
        };
        let params = match source.bind(&capture.params) {
            Ok(params) => params,
            Err(failure) => {
                self.put_failure(&failure);
                return Ok(Some(Handled::Answer));
            }
        };
        let status = self.exchange.status().unwrap_or(StatusFlags::empty());
        let deadline = Instant::now() + self.ctx.lock_wait;
        if in_transaction(status) {
            return self
                .run_checked_in_transaction(&table, write, &capture.sql, &params, source, deadline)
                .await;
        }
        self.run_checked_autocommit(&table, write, &capture.sql, &params, source, deadline)
            .await
    }

    /// Inside the client's transaction: checked, then run after a savepoint of
    /// tandem's, so that a write that changed more rows than were checked (a row that
    /// began to match behind the check's scan, under READ COMMITTED) is undone alone
    /// and checked again.
    async fn run_checked_in_transaction(
        &mut self,
        table: &AtTable,
        write: &Write,
        sql: &str,
        params: &[crate::wire::mysql::messages::statement::Param<'_>],
        source: &Source<'_>,
        deadline: Instant,
    ) -> Result<Option<Handled>> {
        loop {
            let checked = match self
                .check_in_transaction(table, sql, params, deadline)
                .await?
            {
                Ok(checked) => checked,
                Err(refused) => return Ok(Some(refused)),
            };
            let scope = GuardScope::Savepoint;
            if let Err(e) = self.own().query(scope.open()).await? {
                self.put_failure(&AtFailure::Server(e));
                return Ok(Some(Handled::Answer));
            }
            let around = self.around_write(None, source, None).await?;
            let ok = match around.write {
                Ok(ok) => ok,
                Err(e) => {
                    // The server undid the statement; a deadlock took the savepoint
                    // with the transaction, and then the release fails, harmlessly.
                    let _ = self.end_guard_scope(scope, false).await?;
                    self.put_failure(&AtFailure::Server(e));
                    return Ok(Some(Handled::Answer));
                }
            };
            if rows_changed(write, &ok) > checked {
                // A row began to match after the check: it was not checked. Its lock
                // stays with the transaction (InnoDB keeps locks past a rollback to a
                // savepoint), and the next check reads it.
                let _ = self.end_guard_scope(scope, true).await?;
                if Instant::now() < deadline {
                    continue;
                }
                self.put_failure(&super::at::uncaptured(&table.meta));
                return Ok(Some(Handled::Answer));
            }
            // The client gets the write's own OK (its status flags, such as no index
            // used, and session-state data); the release changes no transaction state.
            if !matches!(self.end_guard_scope(scope, false).await?, Ok(Some(_))) {
                // Gone with a transaction a deadlock ended: the write's own status says
                // where the session stands.
                self.exchange.on_authenticated(ok.status);
            }
            // tandem's RELEASE set ROW_COUNT() anew.
            self.answer_write(&ok, around.returned);
            return Ok(Some(Handled::Answer));
        }
    }

    /// Locks the rows a write in the client's transaction would change (they stay
    /// locked there while it waits for their holder) and checks them; how many it
    /// found, or the refusal the client got.
    async fn check_in_transaction(
        &mut self,
        table: &AtTable,
        sql: &str,
        params: &[crate::wire::mysql::messages::statement::Param<'_>],
        deadline: Instant,
    ) -> Result<std::result::Result<u64, Handled>> {
        let (found, keys) = match self.own_select(sql, params).await? {
            Ok(rows) => (rows.len() as u64, self.keys_of(table, &rows).await),
            Err(e) => {
                // The write would fail the same way (a deadlock has ended the
                // transaction: running it would start afresh in autocommit).
                self.put_failure(&AtFailure::Server(e));
                return Ok(Err(Handled::Answer));
            }
        };
        loop {
            let (holder, rolling_back) = match self.check(&keys).await {
                Check::Free => return Ok(Ok(found)),
                Check::Held(holder, rolling_back) => (holder, rolling_back),
                Check::Unanswered(e) => return Ok(Err(self.refuse(Error::Lockserver(e))?)),
            };
            // A holder rolling back needs the rows this transaction holds locked: its
            // undo would wait until this wait gave up.
            if !self.ctx.outside.waits() || Instant::now() + RECHECK > deadline || rolling_back {
                return Ok(Err(self.refuse_held(table, &holder, rolling_back)));
            }
            if let Err(e) = self.pause_for_holder().await {
                return Ok(Err(self.refuse(e)?));
            }
        }
    }

    /// An autocommit write: checked in tandem's own transaction, run there, committed.
    /// A held row's holder needs it for its rollback: it is let go while the write
    /// waits.
    async fn run_checked_autocommit(
        &mut self,
        table: &AtTable,
        write: &Write,
        sql: &str,
        params: &[crate::wire::mysql::messages::statement::Param<'_>],
        source: &Source<'_>,
        deadline: Instant,
    ) -> Result<Option<Handled>> {
        if let Some(refusal) = self.own_transaction_refused(&write.table).await? {
            return self.refuse(refusal).map(Some);
        }
        loop {
            if let Err(e) = self.own().query("START TRANSACTION").await? {
                self.put_failure(&AtFailure::Server(e));
                return Ok(Some(Handled::Answer));
            }
            let (found, keys) = match self.own_select(sql, params).await? {
                Ok(rows) => (rows.len() as u64, self.keys_of(table, &rows).await),
                Err(e) => return self.end_own_transaction(AtFailure::Server(e)).await,
            };
            let check = self.check(&keys).await;
            if let Check::Unanswered(e) = check {
                self.own_rollback().await?;
                return self.refuse(Error::Lockserver(e)).map(Some);
            }
            if let Check::Held(holder, _) = check {
                self.own_rollback().await?;
                if self.ctx.outside.waits() && Instant::now() + RECHECK <= deadline {
                    if let Err(e) = self.pause_for_holder().await {
                        return self.refuse(e).map(Some);
                    }
                    continue;
                }
                tracing::debug!(parent: self.binding.span(), holder = %holder, "outside write refused: row globally locked");
                return Ok(Some(self.refuse_held(table, &holder, false)));
            }
            let around = self.around_write(None, source, None).await?;
            let mut ok = match around.write {
                Ok(ok) => ok,
                Err(e) => return self.end_own_transaction(AtFailure::Server(e)).await,
            };
            if rows_changed(write, &ok) > found {
                // A row began to match after the check: it was not checked.
                self.own_rollback().await?;
                if Instant::now() < deadline {
                    continue;
                }
                self.put_failure(&super::at::uncaptured(&table.meta));
                return Ok(Some(Handled::Answer));
            }
            match self.own().query(super::OWN_COMMIT).await? {
                Ok(committed) => {
                    ok.take_status_of(committed.status);
                    self.exchange.on_authenticated(committed.status);
                    // tandem's COMMIT set ROW_COUNT() anew.
                    self.answer_write(&ok, around.returned);
                }
                Err(e) => self.put_failure(&AtFailure::Server(e)),
            }
            return Ok(Some(Handled::Answer));
        }
    }

    /// A plain INSERT: run, its given keys read back and checked, then kept or undone
    /// (see the module comment). A held key undoes it before it waits.
    async fn guard_plain_insert(
        &mut self,
        table: &AtTable,
        write: &Write,
        plan: tandem_undo::mysql::capture::InsertPlan,
        source: &Source<'_>,
    ) -> Result<Option<Handled>> {
        let Some(after) = plan.after else {
            // Generated keys: see the module comment.
            return Ok(None);
        };
        let Ok(params) = source.bind(&after.params) else {
            return Ok(None);
        };
        // The rows it meets are read first, locked: an INSERT IGNORE leaves them alone
        // (only the others are its own), an upsert or REPLACE changes them.
        let existing = match plan
            .before
            .filter(|_| write.on_duplicate != OnDuplicate::Error)
        {
            Some(before) => match source.bind(&before.params) {
                Ok(before_params) => Some((before.sql, before_params)),
                Err(_) => return Ok(None),
            },
            None => None,
        };
        // A locking read: a consistent one would fix the snapshot of the client's
        // REPEATABLE READ transaction here rather than at its own first read.
        let read_back = format!(
            "{} LOCK IN SHARE MODE",
            after.sql.strip_suffix(" FOR UPDATE").unwrap_or(&after.sql)
        );
        let status = self.exchange.status().unwrap_or(StatusFlags::empty());
        let mut scope = if in_transaction(status) {
            GuardScope::Savepoint
        } else {
            GuardScope::OwnTransaction
        };
        let deadline = Instant::now() + self.ctx.lock_wait;
        loop {
            if scope == GuardScope::OwnTransaction
                && let Some(refusal) = self.own_transaction_refused(&write.table).await?
            {
                return self.refuse(refusal).map(Some);
            }
            match self.own().query(scope.open()).await? {
                Ok(opened) if scope == GuardScope::Savepoint && !in_transaction(opened.status) => {
                    // The status tandem knew was stale (an ERR carries none): the
                    // session autocommits, and a savepoint there would undo nothing.
                    scope = GuardScope::OwnTransaction;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    self.put_failure(&AtFailure::Server(e));
                    return Ok(Some(Handled::Answer));
                }
            }
            let around = self
                .around_write(
                    existing.as_ref().map(|(sql, p)| (sql.as_str(), &p[..])),
                    source,
                    Some((read_back.as_str(), &params[..])),
                )
                .await?;
            if !around.write_sent {
                // The read back could not even be prepared (MySQL checks its privilege
                // then): the INSERT runs as sent, unchecked.
                let _ = self.end_guard_scope(scope, false).await?;
                self.count_unchecked();
                return Ok(None);
            }
            let mut ok = match around.write {
                Ok(ok) => ok,
                Err(e) => {
                    // It changed nothing (MySQL undoes a failed statement); a savepoint
                    // a deadlock took with its transaction is gone already.
                    // The client gets the INSERT's own error, whatever ending says.
                    let _ = self.end_guard_scope(scope, false).await?;
                    self.put_failure(&AtFailure::Server(e));
                    return Ok(Some(Handled::Answer));
                }
            };
            let met_rows = match &around.before {
                Some(Ok(met)) => met.len(),
                _ => 0,
            };
            if let Some(Ok(rows)) = &around.after
                && ok.affected_rows > (rows.len() + met_rows) as u64
            {
                // A row went where the key its VALUES give does not name it (MySQL
                // stores 2.4 in an INT key as 2), so its key was never read back nor
                // asked: each row read back or met accounts for at most one change
                // (an upsert's update counts 2, but its row is both met and read back).
                let _ = self.end_guard_scope(scope, true).await?;
                return self
                    .refuse(Error::Unsupported {
                        what: "an INSERT, upsert or REPLACE into a table that may hold global locks, whose rows tandem could not read back by the keys it gives (a value the column converts, as 2.4 into an INT key)",
                    })
                    .map(Some);
            }
            let keys = match around.after {
                // An INSERT IGNORE that inserted nothing recreated nothing.
                Some(Ok(_)) if ok.affected_rows == 0 => Vec::new(),
                Some(Ok(rows)) => {
                    let met = match &around.before {
                        Some(Ok(met)) => self.keys_of(table, met).await,
                        _ => Vec::new(),
                    };
                    let mut keys = self.keys_of(table, &rows).await;
                    if write.on_duplicate == OnDuplicate::Ignore {
                        keys.retain(|k| !met.contains(k));
                    } else {
                        // An upsert's or REPLACE's: the rows it changed or deleted too.
                        keys.extend(
                            met.into_iter()
                                .filter(|k| !keys.contains(k))
                                .collect::<Vec<_>>(),
                        );
                    }
                    keys
                }
                Some(Err(e)) if self.exchange.server.may_end_transaction(e.code) => {
                    // The server rolled the transaction back, the INSERT with it.
                    let _ = self.end_guard_scope(scope, true).await?;
                    self.put_failure(&AtFailure::Server(e));
                    return Ok(Some(Handled::Answer));
                }
                // The INSERT ran and its rows could not be read back (a role with
                // INSERT but no SELECT privilege, say): it stays, unchecked, as it
                // would have without tandem, rather than be refused.
                Some(Err(_)) | None => {
                    self.count_unchecked();
                    Vec::new()
                }
            };
            let check = self.check(&keys).await;
            if let Check::Unanswered(e) = check {
                // Undone: the INSERT must not stay unchecked.
                let _ = self.end_guard_scope(scope, true).await?;
                return self.refuse(Error::Lockserver(e)).map(Some);
            }
            let Check::Held(holder, _) = check else {
                match self.end_guard_scope(scope, false).await? {
                    Ok(status) => {
                        // tandem's COMMIT ends the transaction it opened; a savepoint's
                        // release changes nothing the write's own OK does not say.
                        if let Some(status) = status
                            && scope == GuardScope::OwnTransaction
                        {
                            ok.take_status_of(status);
                        }
                        // tandem's statements after it set ROW_COUNT() anew.
                        self.answer_write(&ok, around.returned);
                    }
                    // A COMMIT that failed undid the INSERT.
                    Err(e) => self.put_failure(&AtFailure::Server(e)),
                }
                return Ok(Some(Handled::Answer));
            };
            // A ROLLBACK (TO SAVEPOINT) that fails has nothing left to undo.
            let _ = self.end_guard_scope(scope, true).await?;
            if self.ctx.outside.waits() && Instant::now() + RECHECK <= deadline {
                if let Err(e) = self.pause_for_holder().await {
                    return self.refuse(e).map(Some);
                }
                continue;
            }
            tracing::debug!(parent: self.binding.span(), holder = %holder, "outside insert refused: key globally locked");
            return Ok(Some(self.refuse_held(table, &holder, false)));
        }
    }

    /// Waits a moment before a held row's check again; the error that refuses the
    /// write instead if a KILL QUERY of the session's came since its command began, or
    /// the statement's own time limit ran out, as either ends the server's own lock
    /// wait.
    async fn pause_for_holder(&self) -> Result<()> {
        self.waits_end_while_idle().pause(RECHECK).await
    }

    /// Answers a write tandem ran, once the transaction or savepoint tandem ran it in
    /// is ended: its OK, or the rows its RETURNING gave, with the status `ok` has
    /// taken from tandem's last statement. Either way ROW_COUNT() is answered as after
    /// the write (-1 after rows), not after tandem's statement.
    pub(super) fn answer_write(&mut self, ok: &OkPacket, returned: Option<HeldResultSet>) {
        match returned {
            Some(mut rows) => {
                rows.set_status(ok.status);
                rows.put(&mut self.to_client, 1);
                self.row_count_after_write = Some(-1);
            }
            None => {
                self.row_count_after_write = Some(ok.row_count());
                ok.put(&mut self.to_client, 1);
            }
        }
    }

    /// Ends what a checked write was run in (`GuardScope`), keeping the write or
    /// (`undo`) not; the status the server reports after it (None: the savepoint was
    /// gone with its transaction), or its error to tandem's COMMIT or ROLLBACK.
    async fn end_guard_scope(
        &mut self,
        scope: GuardScope,
        undo: bool,
    ) -> Result<std::result::Result<Option<StatusFlags>, OwnError>> {
        if undo && scope == GuardScope::Savepoint {
            // An error here means the savepoint is gone with its transaction: nothing
            // of the INSERT is left to undo.
            let _ = self.own().query(UNDO_TO_GUARD).await?;
        }
        let end = match (scope, undo) {
            (GuardScope::Savepoint, _) => RELEASE_GUARD,
            (GuardScope::OwnTransaction, false) => super::OWN_COMMIT,
            (GuardScope::OwnTransaction, true) => super::OWN_ROLLBACK,
        };
        Ok(match self.own().query(end).await? {
            Ok(done) => {
                self.exchange.on_authenticated(done.status);
                Ok(Some(done.status))
            }
            // A savepoint a deadlock or a rollback on timeout took along.
            Err(_) if scope == GuardScope::Savepoint => Ok(None),
            Err(e) => Err(e),
        })
    }

    /// Ends tandem's transaction around an autocommit write, and answers `failure`.
    async fn end_own_transaction(&mut self, failure: AtFailure) -> Result<Option<Handled>> {
        self.own_rollback().await?;
        self.put_failure(&failure);
        Ok(Some(Handled::Answer))
    }

    async fn own_rollback(&mut self) -> Result<()> {
        if let Ok(ok) = self.own().query(super::OWN_ROLLBACK).await? {
            self.exchange.on_authenticated(ok.status);
        }
        Ok(())
    }

    /// The lock keys of the rows a check read (their key columns, as images read them;
    /// `lock_keys`). Should the weighing of keys a collation compares fail (the side
    /// connection lost with the server, most likely), no key names them as a holder
    /// did: the write runs unchecked, counted, as when the lockserver is unreachable.
    async fn keys_of(&self, table: &AtTable, rows: &[BinaryRow]) -> Vec<LockKey> {
        let keys: Vec<_> = rows.iter().map(|row| table.meta.key_of(row)).collect();
        match self.lock_keys(&table.meta, keys).await {
            Ok(weighed) => weighed,
            Err(e) => {
                tracing::debug!(parent: self.binding.span(), error = %e, "outside write not checked: its keys could not be weighed");
                self.count_unchecked();
                Vec::new()
            }
        }
    }

    /// Who holds any of `keys`. Outside a global transaction a lockserver that does
    /// not answer counts as nobody: the write runs, and so do the next ones for a
    /// while (see `session::outside`). An XA branch's write must not overwrite a row an
    /// AT branch holds, and the branch cannot end without the lockserver anyway: it is
    /// refused.
    async fn check(&mut self, keys: &[LockKey]) -> Check {
        match self.ctx.outside.held(&self.ctx.lock, keys).await {
            // An XA-mode session's own global transaction holding the row (an AT
            // branch of it) is a holder too: its rollback replays newest branch first,
            // and would wait on this XA branch's row lock if the XA branch came first.
            Ok(Some(held)) => Check::Held(held.holder, held.holder_rolling_back),
            Ok(None) => Check::Free,
            Err(e) if self.xa.is_some() => Check::Unanswered(e),
            Err(e) => {
                tracing::debug!(parent: self.binding.span(), error = %e, "outside write not checked");
                self.count_unchecked();
                Check::Free
            }
        }
    }

    fn refuse_held(&mut self, table: &AtTable, holder: &Xid, rolling_back: bool) -> Handled {
        let e = Error::RowGloballyLocked {
            table: qualified_name(&table.meta),
            holder: holder.to_string(),
            rolling_back,
        };
        self.put_error(&e);
        Handled::Answer
    }

    /// Counts (and now and then logs) a write that runs without its check.
    fn count_unchecked(&self) {
        if self
            .ctx
            .metrics
            .mysql
            .outside_writes_unchecked
            .inc()
            .is_multiple_of(1000)
        {
            tracing::warn!(parent: self.binding.span(), "writes outside global transactions run unchecked");
        }
    }
}

/// The rows a checked write changed, to compare with those its check found: an
/// UPDATE's matched rows (changed or not), a DELETE's; none for an upsert, whose count
/// mixes rows inserted and updated (by any unique key) and tells nothing of rows it was
/// not checked for.
fn rows_changed(write: &Write, ok: &OkPacket) -> u64 {
    match write.kind {
        WriteKind::Update => ok.rows_matched().unwrap_or(ok.affected_rows),
        WriteKind::Delete => ok.affected_rows,
        WriteKind::Insert => 0,
    }
}

/// tandem's savepoint around a checked write in the client's transaction. MySQL keeps
/// one savepoint per name: a client's of the same name would be replaced, then
/// released. This one's name begins with a control character, which no client's does.
const SET_GUARD: &str = "SAVEPOINT `\u{1}tandem_guard`";
const RELEASE_GUARD: &str = "RELEASE SAVEPOINT `\u{1}tandem_guard`";
const UNDO_TO_GUARD: &str = "ROLLBACK TO SAVEPOINT `\u{1}tandem_guard`";

/// What a checked write runs in, so that it can be undone alone: a held key a plain
/// INSERT recreated, a row that began to match behind an UPDATE's or DELETE's check.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GuardScope {
    /// The client's transaction, after a savepoint of tandem's.
    Savepoint,
    /// tandem's own transaction around an autocommit INSERT.
    OwnTransaction,
}

impl GuardScope {
    fn open(self) -> &'static str {
        match self {
            GuardScope::Savepoint => SET_GUARD,
            GuardScope::OwnTransaction => "START TRANSACTION",
        }
    }
}

/// The SELECT that locks and reads the existing rows `write` may change: those its
/// predicate finds, or those an upsert collides with. None: it changes no existing row.
fn rows_of(table: &AtTable, write: &Write) -> std::result::Result<Option<Capture>, Error> {
    if write.kind != WriteKind::Insert {
        return Ok(Some(table.meta.before_image(&Mysql, write)?));
    }
    Ok(table.mysql.insert_plan(write)?.before)
}

/// Whether a statement is an SQL-level `PREPARE`, from its first word.
pub(super) fn sql_level_prepare(sql: &[u8]) -> bool {
    crate::control::leading_words(sql, true)
        .next()
        .is_some_and(|word| word.eq_ignore_ascii_case(b"prepare"))
}

/// Whether a statement may change rows, from its first word: cheap enough for every
/// statement of every session.
fn may_write(sql: &[u8]) -> bool {
    let mut words = crate::control::leading_words(sql, true);
    let Some(word) = words.next() else {
        // An executable comment may hold a write (`leading_words` reads none there).
        return tandem_undo::has_executable_comment(sql);
    };
    // What runs another statement's text: SQL-level EXECUTE (and EXECUTE IMMEDIATE),
    // MariaDB's ANALYZE of a statement (not ANALYZE TABLE), MySQL's EXPLAIN ANALYZE.
    if word.eq_ignore_ascii_case(b"EXECUTE") {
        return true;
    }
    if word.eq_ignore_ascii_case(b"ANALYZE") {
        return words
            .next()
            .is_none_or(|second| !second.eq_ignore_ascii_case(b"TABLE"));
    }
    if word.eq_ignore_ascii_case(b"EXPLAIN") {
        return words
            .next()
            .is_some_and(|second| second.eq_ignore_ascii_case(b"ANALYZE"));
    }
    // A compound statement (BEGIN NOT ATOMIC, IF, a loop; under sql_mode ORACLE an
    // anonymous block, `DECLARE … BEGIN` or `BEGIN UPDATE …`) runs the statements in
    // it. A BEGIN that starts a transaction is alone, or followed by WORK.
    if [
        &b"if"[..],
        b"case",
        b"loop",
        b"while",
        b"repeat",
        b"for",
        b"declare",
    ]
    .iter()
    .any(|w| word.eq_ignore_ascii_case(w))
    {
        return true;
    }
    if word.eq_ignore_ascii_case(b"BEGIN") {
        return words
            .next()
            .is_some_and(|second| !second.eq_ignore_ascii_case(b"WORK"));
    }
    // MariaDB's `SET STATEMENT … FOR` runs the statement after FOR; the words stop at
    // an executable comment, which may hold STATEMENT.
    if word.eq_ignore_ascii_case(b"SET") {
        return match words.next() {
            Some(second) => second.eq_ignore_ascii_case(b"STATEMENT"),
            None => tandem_undo::has_executable_comment(sql),
        };
    }
    [
        &b"update"[..],
        b"delete",
        b"insert",
        b"replace",
        b"truncate",
    ]
    .iter()
    .any(|w| word.eq_ignore_ascii_case(w))
}

#[cfg(test)]
mod tests {
    use super::{may_write, some_statement};

    #[test]
    fn first_word_decides() {
        assert!(may_write(b"UPDATE t SET v = 1"));
        assert!(may_write(b"BEGIN NOT ATOMIC UPDATE t SET v = 1; END"));
        assert!(may_write(b"IF 1 THEN DELETE FROM t; END IF"));
        assert!(!may_write(b"BEGIN"));
        assert!(!may_write(b"BEGIN WORK"));
        assert!(may_write(b"  /* c */ delete from t"));
        assert!(may_write(b"# x\ninsert into t values (1)"));
        assert!(may_write(b"REPLACE INTO t VALUES (1)"));
        assert!(may_write(b"truncate table t"));
        assert!(!may_write(b"SELECT 1; DELETE FROM t"));
        assert!(some_statement(b"SELECT 1; DELETE FROM t", may_write));
        assert!(!some_statement(b"SELECT 1; SELECT 2", may_write));
        assert!(!may_write(b"SELECT 1"));
        assert!(!may_write(b"BEGIN"));
        assert!(!may_write(b"updated"));
        assert!(may_write(b"/*!50000 UPDATE t SET v = 1 */"));
        assert!(may_write(b"/*!50000*/ DELETE FROM t"));
        assert!(may_write(
            b"SET STATEMENT max_statement_time = 1 FOR UPDATE t SET v = 1"
        ));
        assert!(!may_write(b"SET autocommit = 1"));
        assert!(may_write(
            b"SET /*!*/ STATEMENT max_statement_time = 1 FOR DELETE FROM t"
        ));
    }
}
