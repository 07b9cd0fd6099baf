//! Writes outside a global transaction (DESIGN.md, "Global row locks"): they must not
//! change a row that an unfinished global transaction holds, or that transaction's
//! rollback would undo someone else's committed work. An XA-mode session's writes are
//! checked the same way, inside its branch's local transaction (the client's block, or
//! tandem's around autocommit work, which xa.rs ends): an XA branch changes rows as
//! the database does, and an AT transaction's rollback would stop at its change.
//!
//! The lockserver tells every proxy which tables may hold global locks (the
//! `TableLockView`). A write to any other table runs as the client sent it, under an
//! `UncheckedWrite` guard that lives until its statement is over: the lockserver grants
//! the first lock on a table only after every proxy has seen the table announced and
//! its unchecked writes have finished, so such a write can never have overwritten a
//! locked row. A write to a table that may hold locks is checked: its rows are locked
//! locally first (`SELECT … FOR UPDATE` with the write's own predicate), their keys are
//! asked of the lockserver, and only then does the write run, in the same local
//! transaction (one tandem opens around an autocommit write). A held row makes the write
//! wait (`lockserver.outside_writes = "wait"`, up to `lock_wait_ms`) or fail with 55P03.
//! Which table an unqualified name means is the client's search_path's answer, known
//! only at a sync point: between sync points a name not resolved yet lets its write
//! through unchecked only while no schema's table of that name may hold locks.
//!
//! A plain INSERT (ON CONFLICT DO NOTHING included) has no rows to lock yet, but may
//! recreate a row a global transaction deleted. The keys its VALUES give are read
//! first, each cast to its column's type in the session (`VALUES (CAST($1 AS integer))`:
//! no SELECT on the table, which an INSERT-only role lacks, and no RETURNING, which
//! row-level security or a rewrite rule would refuse), asked of the lockserver, and
//! asked again once the INSERT is over: a global transaction that deleted one of them
//! meanwhile has registered it by then, since its DELETE committed before the INSERT
//! could take the key. An INSERT of a held key waits or fails as above; an ON CONFLICT
//! DO NOTHING that would skip a held row waits or fails too. Keys that a unique index
//! takes as equal but that differ in bytes (numeric `1.0` and `1.00`, citext, a
//! nondeterministic collation) are not told apart: such an INSERT is caught only as a
//! dirty write. Keys that cannot be read (a cast to a type in a schema the role may not
//! use) leave the INSERT unchecked; the read runs under a savepoint in the client's
//! transaction, so it never fails that transaction.
//!
//! Left unchecked, and so caught only as a dirty write when the global transaction
//! rolls back: an UPDATE or DELETE whose predicate calls a volatile function
//! (random(), nextval(): the rows tandem reads and checks are not those the write then
//! chooses; AT refuses such writes), an INSERT whose keys the server generates (they
//! are new) or computes (`INSERT … SELECT`, a function call), an INSERT pipelined in a
//! batch of several outside a transaction block (a driver's executeBatch with
//! autocommit on; inside a block each write of such a batch runs on its own under a
//! Sync of tandem's, checked, and a BEGIN ahead of one statement, as pgJDBC sends it,
//! runs first on its own: begin_ahead.rs), writes in a failed transaction block (they
//! run nothing), statements whose first word is not a write's (CALL, DO), writes
//! inside functions (and a search_path a function changes), and every write while the
//! lockserver is unreachable (counted in `tandem_pg_outside_writes_unchecked`): plain
//! traffic does not stop with the coordinator.
//!
//! A statement tandem cannot check row by row (TRUNCATE, MERGE, a data-modifying WITH,
//! a write in COPY's query or under EXPLAIN ANALYZE, a multi-statement query) is judged
//! by the tables whose rows it may update or delete (`tables_changed`), and so are the
//! tables a write's foreign-key actions reach (`Cascade::reached_by`) and those a
//! write through a view or a table's rewrite rule reaches (`REACHED_THROUGH_RULES`:
//! no key of the view names their rows): while none of them may hold global locks it
//! runs under guards on them; otherwise it waits or fails as a held row does
//! (`guard_tables`). TRUNCATE … CASCADE, and text that begins as a write but does not
//! parse, count as naming every table. An SQL-level EXECUTE is judged by the text of
//! the statement it runs, which the backend lists (`prepared_texts`). Such statements
//! follow the foreign-key actions of the tables they name too (`REACHED_BY_ACTIONS`),
//! and DDL ahead of a write in one query makes what it changes count as every table.

use super::Relay;
use super::at::WriteInFlight;
use super::at_extended::{
    Extended, RELEASE_VERIFY, ROLLBACK_TO_VERIFY, SAVEPOINT_VERIFY, Shape, leading_statement,
    read_batch, rest_len,
};
use super::exchange::Param;
use super::intercept::Intercepted;
use crate::at::branch::{lock_key, lock_name_part, qualified_name};
use crate::at::meta::CatalogReach;
use crate::error::{Error, Result};
use crate::session::outside::{RECHECK, TablesGuarded, some_statement};
use crate::wire::pg::codes::{backend, frontend};
use crate::wire::pg::messages::response::{Severity, TxStatus, put_error};
use crate::wire::pg::messages::simple::put_query;
use crate::wire::pg::messages::write::{put_empty, put_msg};
use bytes::BytesMut;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;
use tandem_lockserver::client::{HeldLock, LockKey, Xid};
use tandem_undo::{
    Analysis, Cascade, Postgres, TableMeta, Write, WriteKind, analyze, tables_changed_resolving,
};

impl Relay<'_> {
    /// A simple Query outside a global transaction, or XA-mode work in a transaction
    /// block (xa.rs; `own_block_empty`: tandem's block around autocommit work, begun for
    /// this statement).
    pub(super) async fn guard_query(
        &mut self,
        sql: &[u8],
        own_block_empty: bool,
    ) -> Result<Intercepted> {
        // In a failed transaction block nothing runs: there is nothing to check. Only
        // at a sync point: a ROLLBACK TO SAVEPOINT still in flight may revive the block.
        if !some_statement(sql, may_change_rows)
            || self.phase == super::Phase::Ready(TxStatus::Failed)
        {
            return Ok(Intercepted::Relay);
        }
        let (meta, write, inserted_keys) = match self.rows_to_check(sql, true).await? {
            RowsToCheck::Unchecked => return Ok(Intercepted::Relay),
            RowsToCheck::AtSyncPoint { .. } => return Ok(Intercepted::WaitForSyncPoint),
            RowsToCheck::Refused(_) if !self.phase.at_sync_point() => {
                return Ok(Intercepted::WaitForSyncPoint);
            }
            RowsToCheck::Refused(e) => {
                let status = self.phase.tx_status().unwrap_or(TxStatus::Idle);
                return self.refuse_query(Refused::of(&e, status)).await;
            }
            RowsToCheck::Check(meta, write, inserted_keys) => (meta, *write, inserted_keys),
        };
        if !self.phase.at_sync_point() {
            return Ok(Intercepted::WaitForSyncPoint);
        }
        let check_in = self.check_in(own_block_empty);
        let implicit = check_in == CheckIn::Autocommit;
        match self
            .check(&meta, &write, inserted_keys.as_deref(), &[], check_in)
            .await?
        {
            Checked::Refused(refused) => self.refuse_query(refused).await,
            Checked::KeysUnread => Ok(Intercepted::Relay),
            Checked::Free(keys) if inserted_keys.is_some() => {
                // Its keys are checked again when it is over: a global transaction
                // may have deleted one of them in the meantime.
                let mut query = BytesMut::new();
                crate::wire::pg::messages::write::put_msg(
                    &mut query,
                    frontend::QUERY,
                    &[sql, b"\0"].concat(),
                );
                self.write_server(&query).await?;
                self.write_in_flight = Some(WriteInFlight::inserted(meta, implicit, keys));
                Ok(Intercepted::SentAndHold)
            }
            Checked::Free(_) => {
                // The rows it actually changes are checked again when it is over: a row
                // can start to match its predicate, or an upsert meet a row a global
                // transaction inserted, after the check above.
                let mut query = BytesMut::new();
                put_query(
                    &mut query,
                    &returning_rows(&String::from_utf8_lossy(sql), &write),
                );
                self.write_server(&query).await?;
                self.write_in_flight = Some(WriteInFlight::checked(meta, &write, implicit, None));
                Ok(Intercepted::SentAndHold)
            }
        }
    }

    /// The client's answer to a Query tandem refused: in a transaction block, the
    /// block must fail as the write would have made it fail.
    async fn refuse_query(&mut self, refused: Refused) -> Result<Intercepted> {
        if refused.status == TxStatus::InTransaction {
            let mut replacement = BytesMut::new();
            put_query(
                &mut replacement,
                &super::intercept::error_sql(&refused.code, &refused.message),
            );
            return Ok(Intercepted::Replace(replacement));
        }
        Ok(Intercepted::Answer(self.answer_refused(refused).await?))
    }

    /// An Execute outside a global transaction (or in XA mode) that opens a batch: its
    /// portal was bound in an earlier batch, whose guard is gone. A write through it to
    /// a table that may hold global locks cannot be checked here (its rows were never
    /// locked by tandem), so its batch is refused; any other runs (under a guard).
    pub(super) async fn guard_execute(&mut self, rest: &[u8], body: &[u8]) -> Result<Extended> {
        let Ok(portal) = crate::wire::pg::reader::Reader::new(body).cstr() else {
            return Ok(Extended::NotAWrite);
        };
        let mid_batch = !self.phase.at_sync_point();
        if mid_batch && self.tracked.bound_in_this_batch(portal) {
            // Its Bind, in this batch, was checked or guarded moments ago.
            return Ok(Extended::NotAWrite);
        }
        let Some(sql) = self
            .tracked
            .portal_sql(portal)
            .map(|sql| sql.to_vec())
            .filter(|sql| may_change_rows(sql))
        else {
            return Ok(Extended::NotAWrite);
        };
        match self.rows_to_check(&sql, true).await? {
            RowsToCheck::Unchecked | RowsToCheck::AtSyncPoint { plain_insert: true } => {
                return Ok(Extended::NotAWrite);
            }
            // As where it cannot be checked in its own batch (see guard_extended).
            RowsToCheck::Check(_, _, Some(_)) => return Ok(Extended::NotAWrite),
            RowsToCheck::Check(..) | RowsToCheck::AtSyncPoint { .. } | RowsToCheck::Refused(_) => {}
        }
        let e = Error::Unsupported {
            what: "executing, in a later batch than its Bind, a portal that writes to a table holding global locks (bind and execute it in one batch)",
        };
        if mid_batch {
            // Behind a Query or Sync still in flight it waits for their answers, and is
            // refused there with its batch; behind extended messages not yet synced no
            // sync point comes first.
            if !self.phase.unsynced() {
                return Ok(Extended::WaitForSyncPoint);
            }
            return Ok(Extended::RefuseExecute(super::at_extended::refusal(e)));
        }
        let max = self.ctx.config.max_message_bytes;
        let consumed = match batch_end(rest, max)? {
            BatchEnd::Sync(consumed) => consumed,
            BatchEnd::NotYet => return Ok(Extended::NeedMore),
            // The client waits for replies before any Sync: tandem cannot answer the
            // batch in order, so it runs (see the module comment).
            BatchEnd::Flush => return Ok(Extended::NotAWrite),
        };
        self.answer_directly(consumed, e).await
    }

    /// The end of a checked write (simple protocol) or a guarded one (extended): the
    /// rows it returned must not be held by a global transaction, or it is undone (its
    /// statement, or the client's transaction, fails with 55P03); then tandem's own
    /// transaction commits. Returns the status the client sees, and its error.
    pub(super) async fn finish_outside_write(
        &mut self,
        w: WriteInFlight,
        status: TxStatus,
    ) -> Result<(TxStatus, Option<(String, String)>)> {
        if w.failed || status == TxStatus::Failed {
            if w.implicit {
                self.roll_back_local().await?;
                return Ok((TxStatus::Idle, None));
            }
            return Ok((status, None));
        }
        let returned = w
            .images
            .iter()
            .flatten()
            .map(|row| lock_key(&self.resource, &w.meta, &w.meta.key_of(row)));
        let keys: Vec<_> = returned.chain(w.inserted_keys.iter().cloned()).collect();
        let deadline = Instant::now() + self.ctx.lock_wait;
        if let Some(e) = self.wait_until_free(&w.meta, &keys, deadline, true).await? {
            let refused = (e.sqlstate().code().to_owned(), e.to_string());
            if w.implicit {
                self.roll_back_local().await?;
                return Ok((TxStatus::Idle, Some(refused)));
            }
            // The client's transaction holds the write: it must fail.
            let sql = super::intercept::error_sql(&refused.0, &refused.1);
            self.exchange_simple(&sql).await?;
            return Ok((TxStatus::Failed, Some(refused)));
        }
        if w.implicit {
            let got = self.exchange_simple("COMMIT").await?;
            if got.error.is_some() && got.status != Some(TxStatus::Idle) {
                // Cancelled before it ran (the client's statement_timeout): the block
                // is failed, not over.
                self.roll_back_local().await?;
            }
            // A COMMIT that failed (a deferred constraint, say) undid the write.
            return Ok((TxStatus::Idle, got.error.map(|e| (e.code, e.message))));
        }
        Ok((status, None))
    }

    /// Waits (as configured, up to `deadline`) until no unfinished global transaction
    /// holds `keys`; the error when one still does. When this session holds their rows
    /// locked (`rows_locked`), a holder that is rolling back is not waited for: its
    /// undo needs those rows, and would wait until this wait gave up. A lockserver that
    /// does not answer lets the write stay (see rows_to_check).
    async fn wait_until_free(
        &mut self,
        meta: &TableMeta,
        keys: &[LockKey],
        deadline: Instant,
        rows_locked: bool,
    ) -> Result<Option<Error>> {
        if self.skips_checks() {
            return Ok(None);
        }
        let waits = self.ctx.outside.waits();
        loop {
            let held = match self.held(keys).await {
                Ok(Some(held)) => held,
                Ok(None) => return Ok(None),
                Err(e) => return Ok(Some(e)),
            };
            let gives_way = rows_locked && held.holder_rolling_back;
            if !waits || Instant::now() + RECHECK > deadline || gives_way {
                return Ok(Some(Error::RowGloballyLocked {
                    table: qualified_name(meta),
                    holder: held.holder.to_string(),
                    rolling_back: gives_way,
                }));
            }
            if let Err(e) = self.waits_end_while_idle().pause(RECHECK).await {
                self.on_wait_ended(&e).await?;
                return Ok(Some(e));
            }
        }
    }

    /// The unfinished global transaction holding any of `keys`, if one does (see
    /// `held`).
    async fn holder_of(&mut self, keys: &[LockKey]) -> Result<Option<Xid>> {
        Ok(self.held(keys).await?.map(|held| held.holder))
    }

    /// The first of `keys` an unfinished global transaction holds, if one does. Outside
    /// a global transaction a lockserver that does not answer counts as none: the write
    /// runs, and so do the next ones for a while without asking (see rows_to_check).
    /// An XA branch's write fails instead (`Err`): the branch cannot end without the
    /// lockserver anyway, and its write must not overwrite a row an AT branch holds.
    async fn held(&mut self, keys: &[LockKey]) -> Result<Option<HeldLock>> {
        match self.ctx.outside.held(&self.ctx.lock, keys).await {
            Ok(held) => Ok(held),
            Err(e) if self.binding.xid().is_some() => Err(Error::Lockserver(e)),
            Err(e) => {
                tracing::debug!(parent: self.binding.span(), error = %e, "outside write not checked");
                self.unchecked_outside_write();
                Ok(None)
            }
        }
    }

    /// Writes skip their check while the lockserver failed lately, outside global
    /// transactions only (see `held`).
    pub(super) fn skips_checks(&self) -> bool {
        self.binding.xid().is_none() && self.ctx.outside.failed_lately()
    }

    /// A Parse or Bind outside a global transaction, or of XA-mode work in a transaction
    /// block (`rest` starts with it; `sql` is the statement it prepares or binds;
    /// `own_block_empty` as for `guard_query`). A checked write's whole batch is sent by
    /// tandem (`Handled`).
    pub(super) async fn guard_extended(
        &mut self,
        rest: &[u8],
        tag: u8,
        sql: &[u8],
        own_block_empty: bool,
    ) -> Result<Extended> {
        // As in guard_query: a batch that opens in a failed block runs nothing.
        if !may_change_rows(sql) || self.phase == super::Phase::Ready(TxStatus::Failed) {
            return Ok(Extended::NotAWrite);
        }
        // A Parse runs nothing: only its Bind counts as a write.
        let runs = tag == frontend::BIND;
        let (checked, plain_insert) = match self.rows_to_check(sql, runs).await? {
            RowsToCheck::Unchecked => return Ok(Extended::NotAWrite),
            RowsToCheck::Check(meta, write, inserted_keys) => {
                let plain_insert = inserted_keys.is_some();
                (Some((meta, *write, inserted_keys)), plain_insert)
            }
            // Only between sync points: handled as a check there.
            RowsToCheck::AtSyncPoint { plain_insert } => (None, plain_insert),
            RowsToCheck::Refused(e) => return self.refuse_extended(rest, tag, e).await,
        };
        if plain_insert && self.phase.unsynced() {
            // An INSERT that cannot be checked runs unchecked, as it did before tandem
            // checked INSERTs (see the module comment).
            return Ok(Extended::NotAWrite);
        }
        // Earlier messages of this batch may be at the backend already: tandem cannot
        // run its check in between.
        if let Some(instead) = self.unless_at_sync_point(
            tag,
            "a write to a table that holds global locks in the middle of a pipelined batch (send it with its own Sync)",
        ) {
            return Ok(instead);
        }
        let Some((meta, write, inserted_keys)) = checked else {
            return Ok(Extended::WaitForSyncPoint);
        };
        let max = self.ctx.config.max_message_bytes;
        // Inside a transaction block (the client's, or tandem's around XA autocommit
        // work), a write that leads a longer batch (pgJDBC's executeBatch) is checked
        // and runs on its own first, under a Sync of tandem's: the rest of the batch
        // comes back here statement by statement, as in AT mode.
        let leading = match self.phase {
            super::Phase::Ready(TxStatus::InTransaction) => leading_statement(rest, max)?,
            // Outside a block the batch is one implicit transaction: run piecewise, it
            // stays one inside a block of tandem's, committed at the client's Sync (as
            // in AT mode; XA mode's autocommit work has blocks of its own).
            super::Phase::Ready(TxStatus::Idle) if self.binding.xid().is_none() => {
                match leading_statement(rest, max)? {
                    // Not where the batch begins or ends a block (see begin_ahead.rs):
                    // its shape is then refused below.
                    Some(batch) if !self.batch_changes_the_block(rest)? => {
                        self.begin_implicit_batch().await?;
                        Some(batch)
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let leads = leading.is_some();
        let batch = match leading.map_or_else(|| read_batch(rest, max), |b| Ok(Shape::Run(b)))? {
            Shape::Incomplete => return Ok(Extended::NeedMore),
            Shape::Run(batch) => batch,
            // Preparing a write changes nothing; it is checked when it is bound.
            Shape::PrepareOnly => return Ok(Extended::NotAWrite),
            Shape::Flushed if tag == frontend::PARSE || plain_insert => {
                return Ok(Extended::NotAWrite);
            }
            Shape::Flushed => {
                return Ok(Extended::RefuseBind(super::at_extended::refusal(
                    Error::Unsupported {
                        what: "a write followed by Flush before its Sync, to a table that holds global locks",
                    },
                )));
            }
            // A batch of several INSERTs (a driver's executeBatch, say) runs unchecked.
            Shape::Other(_) if plain_insert => return Ok(Extended::NotAWrite),
            // Other shapes (more messages): no parameters tandem can use.
            Shape::Other(_) => {
                let consumed = rest_len(rest, max)?;
                let e = Error::Unsupported {
                    what: "a write batched with other messages to a table that holds global locks (send it as Bind [Describe] Execute Sync)",
                };
                return self.answer_directly(consumed, e).await;
            }
        };
        let consumed = batch.len;
        let param_types = match self
            .batch_param_types(&String::from_utf8_lossy(sql), &batch)
            .await
        {
            Ok(types) => types,
            // The statement does not prepare (tandem's describe, with the client's
            // types, failed as the client's Parse would): the client hears why.
            Err(e) if e.is_injected() && leads => {
                return self.fail_rest_of_batch(consumed, e).await;
            }
            Err(e) if e.is_injected() => return self.answer_directly(consumed, e).await,
            Err(e) => return Err(e),
        };
        let rewritable = !write.has_returning || batch.max_rows == 0;
        if leads && !rewritable && !plain_insert {
            // Its rows could not be checked once it has run (see below), and tandem's
            // Sync after it would end its portal.
            let e = Error::Unsupported {
                what: "a write with RETURNING and a row limit batched with other messages, to a table that holds global locks (send it as Bind [Describe] Execute Sync)",
            };
            return self.fail_rest_of_batch(consumed, e).await;
        }
        let params = super::at_extended::bind_params(&batch, &param_types);
        let check_in = self.check_in(own_block_empty);
        let implicit = check_in == CheckIn::Autocommit;
        let keys = match self
            .check(&meta, &write, inserted_keys.as_deref(), &params, check_in)
            .await?
        {
            Checked::Free(keys) => keys,
            Checked::KeysUnread => return Ok(Extended::NotAWrite),
            Checked::Refused(mut refused) => {
                // The backend would have run the batch's Parse before the write failed:
                // the client's statement exists afterwards (drivers that prepare in the
                // same batch, psycopg's, bind it again). Not in a failed block, where
                // the backend would refuse it.
                let mut out = BytesMut::new();
                if let Some(frame) = batch.parse_frame
                    && refused.status != TxStatus::Failed
                {
                    match self.create_statement(frame, &frame[5..]).await? {
                        None => put_empty(&mut out, backend::PARSE_COMPLETE),
                        // The Parse itself fails (its name in use): that is the
                        // batch's answer, as without tandem, and it failed the block.
                        Some((code, message)) => {
                            refused.code = code;
                            refused.message = message;
                            if refused.status == TxStatus::InTransaction {
                                refused.status = TxStatus::Failed;
                            }
                        }
                    }
                }
                if refused.status == TxStatus::InTransaction {
                    // The client's transaction must fail as the write would have made it
                    // fail.
                    let sql = super::intercept::error_sql(&refused.code, &refused.message);
                    self.exchange_simple(&sql).await?;
                    refused.status = TxStatus::Failed;
                }
                if leads {
                    // The rest of the batch is skipped, as the backend skips it after
                    // an error, up to the client's Sync.
                    put_error(&mut out, Severity::Error, &refused.code, &refused.message);
                    self.write_client(&out);
                    self.phase = super::Phase::Ready(refused.status);
                    self.skip_to_client_sync = Some(refused.status);
                    return Ok(Extended::Handled {
                        consumed,
                        to_backend: None,
                    });
                }
                out.extend_from_slice(&self.answer_refused(refused).await?);
                return self.answered(&out, consumed).await;
            }
        };
        self.batch_continues = leads;
        if plain_insert {
            // As sent; its keys are checked again when it is over (see guard_query).
            let mut out = self.forward_batch(&rest[..consumed])?;
            if leads {
                put_msg(&mut out, frontend::SYNC, &[]);
                self.on_client_message(frontend::SYNC, &[])?;
            }
            self.write_in_flight = Some(WriteInFlight::inserted(meta, implicit, keys));
            return Ok(Extended::Handled {
                consumed,
                to_backend: Some(out),
            });
        }
        let to_backend = if rewritable {
            // Prepared again with the changed rows returned, checked as over the
            // simple protocol when it is over (see guard_query).
            let rewritten = returning_rows(&String::from_utf8_lossy(sql), &write);
            let (out, rule) =
                self.put_rewritten_batch(&rewritten, &param_types, &batch, &write, 1)?;
            let checked = WriteInFlight::checked(meta, &write, implicit, Some(rule));
            self.write_in_flight = Some(checked);
            out
        } else {
            // RETURNING with a row limit: the batch goes as the client sent it,
            // checked by its predicate only; tandem's transaction around an autocommit
            // write ends at its ReadyForQuery.
            let out = self.forward_batch(&rest[..consumed])?;
            if implicit {
                self.write_in_flight = Some(WriteInFlight::guarded());
            }
            out
        };
        Ok(Extended::Handled {
            consumed,
            to_backend: Some(to_backend),
        })
    }

    /// A Parse or Bind of a write tandem cannot check, to a table that may hold global
    /// locks: its batch is refused where the statement would run (preparing it runs
    /// nothing), as a checked write's is where it cannot be checked.
    async fn refuse_extended(&mut self, rest: &[u8], tag: u8, e: Error) -> Result<Extended> {
        if let Some(instead) = self.unless_at_sync_point(
            tag,
            "a write tandem cannot check, to a table that holds global locks, in the middle of a pipelined batch",
        ) {
            return Ok(instead);
        }
        let max = self.ctx.config.max_message_bytes;
        match read_batch(rest, max)? {
            Shape::Incomplete => Ok(Extended::NeedMore),
            Shape::PrepareOnly => Ok(Extended::NotAWrite),
            Shape::Flushed if tag == frontend::PARSE => Ok(Extended::NotAWrite),
            Shape::Flushed => Ok(Extended::RefuseBind(super::at_extended::refusal(e))),
            Shape::Run(_) | Shape::Other(_) => {
                let consumed = rest_len(rest, max)?;
                self.answer_directly(consumed, e).await
            }
        }
    }

    /// Counts (and now and then logs) a write that runs without its check.
    fn unchecked_outside_write(&self) {
        let metric = &self.ctx.metrics.outside_writes_unchecked;
        if metric.inc().is_multiple_of(1000) {
            tracing::warn!(parent: self.binding.span(), "writes outside global transactions run unchecked: the lockserver is unreachable");
        }
    }

    /// The client's answer to a refused write: the error and the ReadyForQuery of the
    /// state the backend is in (tandem's block around XA autocommit work ends first).
    async fn answer_refused(&mut self, refused: Refused) -> Result<BytesMut> {
        self.phase = super::Phase::Ready(refused.status);
        let mut out = BytesMut::new();
        put_error(&mut out, Severity::Error, &refused.code, &refused.message);
        self.put_batch_end(&mut out, refused.status).await?;
        Ok(out)
    }

    /// Whether a write must have its rows checked before it runs, and which: see
    /// `RowsToCheck` (`Unchecked`: it runs as sent, under an unchecked guard held until
    /// the sync point, or because tandem cannot name its rows: see the module comment).
    async fn rows_to_check(&mut self, sql: &[u8], runs: bool) -> Result<RowsToCheck> {
        let tables = &self.ctx.outside.tables;
        if self.unchecked.covers(None) {
            return Ok(RowsToCheck::Unchecked);
        }
        if let Some(guard) = tables.enter_unchecked(&self.resource, None) {
            self.unchecked.hold(guard, None);
            return Ok(RowsToCheck::Unchecked);
        }
        if self.skips_checks() {
            // The lockserver is unreachable: neither its notices nor its locks can be
            // read. The write runs; one under a global lock is caught as a dirty write
            // when that transaction rolls back.
            if runs {
                self.unchecked_outside_write();
            }
            // The rest of the batch goes the same way: a Parse let through this way
            // must not see its Bind refused because the pause ended in between.
            self.unchecked.pass_all();
            return Ok(RowsToCheck::Unchecked);
        }
        if self.text_misread(sql).is_some() {
            // Where its literals or comments end, tandem cannot tell: any table may be
            // written.
            return self.guard_every_table().await;
        }
        // Some table of the database may hold global locks: which one does this write?
        let text = String::from_utf8_lossy(sql);
        let write = match analyze(&Postgres, &text).map(|mut a| (a.len(), a.pop())) {
            Ok((1, Some(Analysis::Write(w)))) if !is_plain_insert(&w) || w.rows.is_some() => w,
            // Not one write tandem can name the rows of: see the module comment.
            _ => return self.unanalysed_write(&text, runs).await,
        };
        if !self.phase.at_sync_point() && self.resolves_in_session(&write.table) {
            // Which schema's table the name means is asked of the backend, which is
            // busy: the side connection's answer may be another table, and so may a
            // remembered one (a SET ahead in the same pipeline is not over yet). Only
            // if no schema's table of that name may hold global locks can it run now.
            // A partition's rows are locked under its root's name, which its own does
            // not show, and a view's are other tables' rows: either waits for the sync
            // point like a name that may be held.
            let partition = match self
                .ctx
                .partition_roots
                .get(&self.ctx.side, &self.database)
                .await
            {
                Ok(roots) => roots.contains_key(&write.table.name),
                Err(_) => true,
            };
            let written_elsewhere = partition
                || !matches!(self.reached_through_rules(&write.table.name).await, Some(r) if r.is_empty());
            let guard = tables
                .enter_unchecked_by_name(&self.resource, &lock_name_part(&write.table.name))
                .filter(|_| !written_elsewhere);
            return Ok(match guard {
                Some(guard) => {
                    self.unchecked.hold_uncovering(guard);
                    RowsToCheck::Unchecked
                }
                None => RowsToCheck::AtSyncPoint {
                    plain_insert: is_plain_insert(&write),
                },
            });
        }
        let meta = match self.table_meta(&write.table).await {
            Ok(meta) => meta,
            // No such table, say: the write fails on its own.
            Err(_) => return Ok(RowsToCheck::Unchecked),
        };
        // Rows foreign-key actions change in other tables are not the write's own:
        // their tables are judged as a whole.
        let cascaded = Cascade::reached_by(&meta.cascades, &write);
        let refusal = |reached| Error::CascadeLocked {
            table: qualified_name(&meta),
            reached,
        };
        if let ControlFlow::Break(outcome) = self.guard_reached(&cascaded, refusal).await? {
            return Ok(outcome);
        }
        // A write through a view (or a table's rule) changes other tables' rows, which
        // no key of its own names: their tables are judged as a whole. A plain INSERT
        // too: one through a view may recreate a key a global transaction deleted, and
        // a rule may update rows.
        let reached = match self.reached_by_relation(&meta.table).await {
            Some(reached) => reached,
            None => vec![tandem_undo::EVERY_TABLE.to_owned()],
        };
        let refusal = |table| Error::ReachedLocked {
            relation: qualified_name(&meta),
            table,
        };
        if let ControlFlow::Break(outcome) = self.guard_reached(&reached, refusal).await? {
            return Ok(outcome);
        }
        if meta.pk.is_empty() {
            // Never captured, so never globally locked.
            return Ok(RowsToCheck::Unchecked);
        }
        let inserted_keys = if is_plain_insert(&write) {
            match write
                .rows
                .as_ref()
                .and_then(|r| meta.inserted_keys_query(r))
            {
                Some(keys_sql) => Some(keys_sql),
                // Keys the server generates are new; computed ones cannot be known
                // before the INSERT runs.
                None => return Ok(RowsToCheck::Unchecked),
            }
        } else {
            None
        };
        let table = qualified_name(&meta);
        if self.unchecked.covers(Some(&table)) {
            return Ok(RowsToCheck::Unchecked);
        }
        if let Some(guard) = tables.enter_unchecked(&self.resource, Some(&table)) {
            self.unchecked.hold(guard, Some(table));
            return Ok(RowsToCheck::Unchecked);
        }
        Ok(RowsToCheck::Check(meta, Box::new(write), inserted_keys))
    }

    /// A write tandem cannot check row by row (`tables_changed`): judged by the tables
    /// whose rows it may update or delete (`guard_tables`). An SQL-level EXECUTE is
    /// judged by its statement's text, which the backend is asked for at a sync point
    /// (elsewhere it may change any table). Text that does not parse, plain INSERTs,
    /// XA-mode work and a lockserver that tracks no tables (Redis) leave it unchecked
    /// (see the module comment).
    async fn unanalysed_write(&mut self, sql: &str, runs: bool) -> Result<RowsToCheck> {
        if self.binding.xid().is_some() {
            // XA mode's gap stays as README documents it: its scripts would otherwise
            // be refused while AT work holds locks on their tables.
            return Ok(RowsToCheck::Unchecked);
        }
        // First without the texts, noting which names an EXECUTE runs.
        let (mut changed, executed) = {
            let executed = std::cell::RefCell::new(Vec::new());
            let unresolved = |name: &str| {
                executed.borrow_mut().push(name.to_owned());
                None
            };
            let changed = tables_changed_resolving(&Postgres, sql, &unresolved, &|_| true);
            (changed, executed.into_inner())
        };
        if !executed.is_empty() {
            // What the backend listed holds until another message may prepare or
            // drop names (a Parse at a batch's head asks for the Bind behind it), and
            // within the batch it was asked in.
            let now = (
                self.tracked.batch_being_sent(),
                self.tracked.name_messages(),
            );
            if self.prepared_texts.0 != now {
                self.prepared_texts = (now, Default::default());
            }
            let unknown: Vec<String> = executed
                .into_iter()
                .filter(|name| !self.prepared_texts.1.contains_key(name))
                .collect();
            // Asked at a sync point only (the Parse at a batch's head, say, for the
            // Bind behind it); elsewhere a text not known yet may change any table.
            if !unknown.is_empty() && self.phase.at_sync_point() {
                let listed = self.prepared_texts(&unknown).await?;
                // A name not listed stays unknown: its EXECUTE fails, unless something
                // ahead of it in the same text prepares it.
                self.prepared_texts.1.extend(listed.unwrap_or_default());
                // A Parse asking now is counted once it is sent, and its Bind follows.
                self.prepared_texts.0.1 += u64::from(!runs);
            }
            let known = &self.prepared_texts.1;
            let resolved = |name: &str| known.get(name).cloned();
            // A function of the database's own (not a built-in, not C) may prepare or
            // drop statements by dynamic SQL; one the list cannot say of may too.
            let writing = (self.ctx.writing_functions)
                .get(&self.ctx.side, &self.database)
                .await
                .ok();
            let prepares_names =
                |function: &str| writing.as_ref().is_none_or(|w| w.contains(function));
            changed = tables_changed_resolving(&Postgres, sql, &resolved, &prepares_names);
        }
        let changed = match changed {
            Some(changed) if changed.is_empty() => return Ok(RowsToCheck::Unchecked),
            Some(changed) => changed,
            // Text tandem's tokenizer cannot read may still run (`U&'\' UESCAPE '!'`).
            None => vec![tandem_undo::EVERY_TABLE.to_owned()],
        };
        self.guard_changed(&changed).await
    }

    /// A write that may change any table: see `unanalysed_write`.
    async fn guard_every_table(&mut self) -> Result<RowsToCheck> {
        if self.binding.xid().is_some() {
            // XA mode refuses such text itself (`text_misread`, before it gets here).
            return Ok(RowsToCheck::Unchecked);
        }
        self.guard_changed(&[tandem_undo::EVERY_TABLE.to_owned()])
            .await
    }

    /// Guards on the tables `changed` names, as written (see `unanalysed_write`).
    async fn guard_changed(&mut self, changed: &[String]) -> Result<RowsToCheck> {
        Ok(match self.guard_tables(changed, Names::AsWritten).await? {
            TablesGuarded::Yes | TablesGuarded::LockserverDown(_) => RowsToCheck::Unchecked,
            TablesGuarded::Locked(table) => {
                RowsToCheck::Refused(Error::UncheckedWriteLocked { table })
            }
            TablesGuarded::Ended(e) => RowsToCheck::Refused(e),
        })
    }

    /// The texts of the session's prepared statements named `names` (made by SQL-level
    /// PREPARE or over the protocol), as the backend lists them (a name it does not
    /// list is missing); None if they could not be asked. In the client's block the
    /// question runs under a savepoint of its own, so that its failure (a
    /// statement_timeout, say) leaves the block as it was.
    async fn prepared_texts(
        &mut self,
        names: &[String],
    ) -> Result<Option<std::collections::HashMap<String, String>>> {
        let mut texts = std::collections::HashMap::new();
        let in_block = match self.phase {
            super::Phase::Ready(TxStatus::Idle) => false,
            super::Phase::Ready(TxStatus::InTransaction) => true,
            _ => return Ok(None),
        };
        let params: Vec<[Param<'_>; 1]> = names
            .iter()
            .map(|name| {
                [Param {
                    type_oid: TEXT_OID,
                    value: Some(name.as_bytes()),
                    text: true,
                }]
            })
            .collect();
        let mut questions: Vec<(&str, &[Param<'_>], &[i16])> = Vec::new();
        if in_block {
            questions.push((SAVEPOINT_VERIFY, &[], &[]));
        }
        for param in &params {
            questions.push((PREPARED_TEXT, param, &[]));
        }
        if in_block {
            questions.push((RELEASE_VERIFY, &[], &[]));
        }
        let answers = self.exchange_many(&questions).await?;
        if answers.iter().any(|a| a.error.is_some()) {
            if in_block {
                let restored = self
                    .exchange_many(&[(ROLLBACK_TO_VERIFY, &[], &[]), (RELEASE_VERIFY, &[], &[])])
                    .await?;
                if let Some(e) = restored.into_iter().find_map(|r| r.error) {
                    return Err(Error::injected(&e.code, e.message));
                }
            }
            return Ok(None);
        }
        let first = usize::from(in_block);
        for (name, answer) in names.iter().zip(&answers[first..]) {
            if let Some(Some(text)) = answer.rows.first().and_then(|row| row.first()) {
                texts.insert(name.clone(), String::from_utf8_lossy(text).into_owned());
            }
        }
        Ok(Some(texts))
    }

    /// Guards on the tables (as the catalog named them) a write changes besides its own
    /// rows (`guard_tables`). Break: what the write then needs, to run unchecked (the
    /// lockserver does not answer) or the refusal `refusal` makes of a table that may
    /// hold global locks.
    async fn guard_reached(
        &mut self,
        reached: &[String],
        refusal: impl FnOnce(String) -> Error,
    ) -> Result<ControlFlow<RowsToCheck>> {
        if reached.is_empty() {
            return Ok(ControlFlow::Continue(()));
        }
        Ok(match self.guard_tables(reached, Names::Tables).await? {
            TablesGuarded::Yes => ControlFlow::Continue(()),
            // An XA branch's write is refused rather than run unchecked (see `held`).
            TablesGuarded::LockserverDown(e) if self.binding.xid().is_some() => {
                ControlFlow::Break(RowsToCheck::Refused(Error::Lockserver(e)))
            }
            TablesGuarded::LockserverDown(_) => ControlFlow::Break(RowsToCheck::Unchecked),
            TablesGuarded::Locked(table) => {
                ControlFlow::Break(RowsToCheck::Refused(refusal(table)))
            }
            TablesGuarded::Ended(e) => ControlFlow::Break(RowsToCheck::Refused(e)),
        })
    }

    /// Guards on the tables named `names` for a write that may change their rows
    /// unchecked (`OutsideWriteChecks::guard_tables`): it waits, as configured and
    /// outside a transaction block, while one may hold global locks.
    async fn guard_tables(&mut self, names: &[String], named: Names) -> Result<TablesGuarded> {
        // A partition's rows are locked under its root's name, a view's (or a rule's)
        // tables are written through its name, and what foreign-key actions change is
        // changed with what they act on.
        let mut names = names.to_vec();
        let reaches = match named {
            Names::AsWritten => &[
                &self.ctx.partition_roots,
                &self.ctx.reached_through_rules,
                &self.ctx.reached_by_actions,
            ][..],
            Names::Tables => &[&self.ctx.reached_by_actions][..],
        };
        for reach in reaches {
            for name in names.clone() {
                match self.reached(reach, &name).await {
                    Some(reached) => names.extend(reached),
                    None => names.push(tandem_undo::EVERY_TABLE.to_owned()),
                }
            }
        }
        names.sort_unstable();
        names.dedup();
        // In a block the client's earlier work may hold rows a rollback needs: it
        // fails at once, as a checked write there does.
        let waits = self.ctx.outside.waits() && self.phase == super::Phase::Ready(TxStatus::Idle);
        let deadline = Instant::now() + self.ctx.lock_wait;
        let guarded = (self.ctx.outside)
            .guard_tables(
                &self.ctx.lock,
                &self.resource,
                &names,
                waits.then_some(deadline),
                &self.waits_end_while_idle(),
                &mut self.unchecked,
            )
            .await;
        if let TablesGuarded::Ended(e) = &guarded {
            self.on_wait_ended(e).await?;
        }
        if matches!(guarded, TablesGuarded::LockserverDown(_)) && self.binding.xid().is_none() {
            self.unchecked_outside_write();
            // The rest of the batch goes the same way (see `UncheckedGuards`).
            self.unchecked.pass_all();
        }
        Ok(guarded)
    }

    /// The tables a write through the relation named `name` (in any schema) changes
    /// besides or instead of it, by views and rewrite rules (`REACHED_THROUGH_RULES`);
    /// None if the catalog could not be read.
    async fn reached_through_rules(&self, name: &str) -> Option<Vec<String>> {
        self.reached(&self.ctx.reached_through_rules, name).await
    }

    /// The tables a write through the relation `table` (schema-qualified, as the
    /// catalog names it) changes besides or instead of it, by views and rewrite rules;
    /// None if the catalog could not be read.
    async fn reached_by_relation(&self, table: &tandem_undo::TableRef) -> Option<Vec<String>> {
        let reached = (self.ctx.reached_through_rules)
            .get(&self.ctx.side, &self.database)
            .await
            .ok()?;
        let key = match &table.schema {
            Some(schema) => crate::at::meta::qualified_key(schema, &table.name),
            None => table.name.clone(),
        };
        Some(reached.get(&key).cloned().unwrap_or_default())
    }

    /// What `reach` says a write through `name` also changes in this database; None if
    /// the catalog could not be read.
    async fn reached(&self, reach: &CatalogReach, name: &str) -> Option<Vec<String>> {
        if name == tandem_undo::EVERY_TABLE {
            return Some(Vec::new());
        }
        let reached = reach.get(&self.ctx.side, &self.database).await.ok()?;
        Some(reached.get(name).cloned().unwrap_or_default())
    }

    /// Whose transaction a check about to run is in, at a sync point.
    fn check_in(&self, own_block_empty: bool) -> CheckIn {
        match self.phase.tx_status() {
            Some(TxStatus::Idle) => CheckIn::Autocommit,
            _ if own_block_empty => CheckIn::EmptyOwnBlock,
            _ => CheckIn::Block,
        }
    }

    /// The check a write needs before it runs: a plain INSERT's keys by
    /// `inserted_keys` (`check_inserted_keys`), any other write's rows (`check_rows`).
    async fn check(
        &mut self,
        meta: &Arc<TableMeta>,
        write: &Write,
        inserted_keys: Option<&str>,
        params: &[Param<'_>],
        check_in: CheckIn,
    ) -> Result<Checked> {
        let implicit = check_in == CheckIn::Autocommit;
        if let Some(keys_sql) = inserted_keys {
            return self
                .check_inserted_keys(meta, keys_sql, params, implicit)
                .await;
        }
        Ok(
            match self.check_rows(meta, write, params, check_in).await? {
                Some(refused) => Checked::Refused(refused),
                None => Checked::Free(Vec::new()),
            },
        )
    }

    /// A plain INSERT's keys, read by `keys_sql` in the session (in tandem's own
    /// transaction when `implicit`, which stays open for the INSERT; else under a
    /// savepoint, so that a cast the INSERT itself would not make, to a type in a schema
    /// the role may not use, say, cannot fail the client's transaction). Waits (or not)
    /// until no unfinished global transaction holds them; nothing is locked meanwhile.
    async fn check_inserted_keys(
        &mut self,
        meta: &TableMeta,
        keys_sql: &str,
        params: &[Param<'_>],
        implicit: bool,
    ) -> Result<Checked> {
        const SAVEPOINT: &str = "SAVEPOINT tandem_keys";
        const RELEASE: &str = "RELEASE SAVEPOINT tandem_keys";
        let deadline = Instant::now() + self.ctx.lock_wait;
        let formats = vec![1i16; meta.pk.len()];
        let opening = if implicit { "BEGIN" } else { SAVEPOINT };
        let mut statements: Vec<(&str, &[Param<'_>], &[i16])> =
            vec![(opening, &[], &[]), (keys_sql, params, &formats)];
        if !implicit {
            statements.push((RELEASE, &[], &[]));
        }
        let mut results = self.exchange_many(&statements).await?;
        if let Some(e) = results.iter().find_map(|r| r.error.as_ref()) {
            let e = (e.code.clone(), e.message.clone());
            if implicit {
                self.roll_back_local().await?;
            } else {
                let undone = self
                    .exchange_many(&[
                        ("ROLLBACK TO SAVEPOINT tandem_keys", &[], &[]),
                        (RELEASE, &[], &[]),
                    ])
                    .await?;
                if let Some(e) = undone.iter().find_map(|r| r.error.as_ref()) {
                    return Err(Error::injected(&e.code, e.message.clone()));
                }
            }
            // A key the session cannot cast (a privilege, a type changed since the
            // metadata was read; a bad literal, which fails the INSERT as well): the
            // INSERT runs unchecked. Anything else (a cancel, a serialization failure)
            // is the INSERT's answer.
            if matches!(&e.0[..2], "42" | "22") {
                tracing::debug!(parent: self.binding.span(), error = %e.1, "outside INSERT not checked: its keys could not be read");
                return Ok(Checked::KeysUnread);
            }
            let status = if implicit {
                TxStatus::Idle
            } else {
                TxStatus::InTransaction
            };
            return Ok(Checked::Refused(Refused {
                code: e.0,
                message: e.1,
                status,
            }));
        }
        let keys: Vec<_> = results
            .swap_remove(1)
            .rows
            .iter()
            .map(|key| lock_key(&self.resource, meta, key))
            .collect();
        if implicit {
            // A lockserver that fails an XA branch's check fails it in the wait.
            if self.skips_checks() || matches!(self.holder_of(&keys).await, Ok(None)) {
                return Ok(Checked::Free(keys));
            }
            // tandem's transaction holds nothing yet: it is not kept open while waiting
            // (idle_in_transaction_session_timeout), and opens again for the INSERT.
            self.roll_back_local().await?;
            return Ok(
                match self.wait_until_free(meta, &keys, deadline, false).await? {
                    None => {
                        self.exchange_required("BEGIN").await?;
                        Checked::Free(keys)
                    }
                    Some(e) => Checked::Refused(Refused::of(&e, TxStatus::Idle)),
                },
            );
        }
        Ok(
            match self.wait_until_free(meta, &keys, deadline, false).await? {
                None => Checked::Free(keys),
                Some(e) => Checked::Refused(Refused::of(&e, TxStatus::InTransaction)),
            },
        )
    }

    /// Locks the rows the write will change and waits (or not) until no unfinished
    /// global transaction holds them. `Some`: the write must not run. On `None` the rows
    /// stay locked in the open local transaction (tandem's own BEGIN for an autocommit
    /// write) for the write that follows. While it waits, the rows stay locked in a
    /// block that holds other work; in a transaction of tandem's that holds nothing
    /// else they are let go (the holder's rollback needs them), and locked again.
    async fn check_rows(
        &mut self,
        meta: &Arc<TableMeta>,
        write: &Write,
        params: &[Param<'_>],
        check_in: CheckIn,
    ) -> Result<Option<Refused>> {
        let implicit = check_in == CheckIn::Autocommit;
        let open = if implicit {
            TxStatus::Idle
        } else {
            TxStatus::InTransaction
        };
        let refused = |e: Error, status: TxStatus| Ok(Some(Refused::of(&e, status)));
        // An upsert on another unique key than the primary key is checked by the rows it
        // returns instead (below), which name every row it met, whatever key it met it by.
        let in_advance = write.upsert.is_none() || meta.upsert_on_primary_key(write);
        let before = match in_advance.then(|| super::at::before_image_query(meta, write)) {
            Some(Ok(Some(before))) => row_lock_of_the_write(before, write),
            Some(Ok(None)) => return Ok(None),
            Some(Err(e)) if write.upsert.is_none() => return refused(Error::Undo(e), open),
            _ if write
                .assigned
                .iter()
                .any(|c| meta.pk.iter().any(|&i| &meta.columns[i].name == c)) =>
            {
                // Its DO UPDATE may move the row it meets to another key: the rows it
                // returns name the key it moved to, not the one it left, which a
                // global transaction may hold.
                return refused(
                    Error::Unsupported {
                        what: "an upsert whose DO UPDATE sets a primary-key column, into a table that holds global locks, on a conflict target other than the primary key (tandem cannot tell which row it moves)",
                    },
                    open,
                );
            }
            _ => {
                // An upsert not checked in advance (its target is another unique key
                // than the primary key, or its rows cannot be read before it): the rows
                // it returns are checked once it has run (`finish_outside_write`), in
                // tandem's transaction around an autocommit one.
                if implicit {
                    self.exchange_required("BEGIN").await?;
                }
                return Ok(None);
            }
        };
        let formats = super::at::image_formats(meta);
        let waits = self.ctx.outside.waits();
        let deadline = Instant::now() + self.ctx.lock_wait;
        let mut statements: Vec<(&str, &[Param<'_>], &[i16])> = Vec::with_capacity(2);
        if implicit {
            statements.push(("BEGIN", &[], &[]));
        }
        statements.push((before.as_str(), params, &formats));
        loop {
            let mut results = self.exchange_many(&statements).await?;
            let got = results.pop().unwrap_or_default();
            if let Some(e) = results.iter().chain([&got]).find_map(|r| r.error.as_ref()) {
                // The write's own predicate fails: the client gets that error, in the
                // state the failure leaves (tandem's transaction is ended).
                let (code, message) = (e.code.clone(), e.message.clone());
                let status = if implicit {
                    self.roll_back_local().await?;
                    TxStatus::Idle
                } else {
                    TxStatus::Failed
                };
                return Ok(Some(Refused {
                    code,
                    message,
                    status,
                }));
            }
            let keys: Vec<_> = super::at::split_rows(got.rows, meta.columns.len())
                .iter()
                .map(|(image, _)| lock_key(&self.resource, meta, &meta.key_of(image)))
                .collect();
            if check_in == CheckIn::Block {
                // Its other work keeps the block: the rows stay locked while waiting.
                return match self.wait_until_free(meta, &keys, deadline, true).await? {
                    None => Ok(None),
                    Some(e) => refused(e, open),
                };
            }
            let holder = match self.holder_of(&keys).await {
                Ok(None) => return Ok(None),
                Ok(Some(holder)) => holder,
                Err(e) => {
                    if check_in == CheckIn::Autocommit {
                        self.roll_back_local().await?;
                    }
                    return refused(e, open);
                }
            };
            let waiting = waits && Instant::now() + RECHECK <= deadline;
            if waiting || check_in == CheckIn::Autocommit {
                // Let go for the wait (the holder's rollback needs the rows), or, for
                // an autocommit write refused now, with tandem's transaction.
                self.roll_back_local().await?;
            }
            if waiting {
                if check_in == CheckIn::EmptyOwnBlock && statements.len() == 1 {
                    statements.insert(0, ("BEGIN", &[], &[]));
                }
                let Err(e) = self.waits_end_while_idle().pause(RECHECK).await else {
                    continue;
                };
                self.on_wait_ended(&e).await?;
                if check_in == CheckIn::EmptyOwnBlock {
                    // Refused as when it does not wait: in tandem's block, which it fails.
                    self.exchange_required("BEGIN").await?;
                }
                return refused(e, open);
            }
            // tandem's own block is still open here, as its caller left it (the refusal
            // fails it): it is ended only to wait, and each wait begins it again.
            tracing::debug!(parent: self.binding.span(), holder = %holder, "outside write refused: row globally locked");
            let e = Error::RowGloballyLocked {
                table: qualified_name(meta),
                holder: holder.to_string(),
                rolling_back: false,
            };
            return refused(e, open);
        }
    }
}

/// Whose transaction a write's check runs in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CheckIn {
    /// An autocommit write's, which tandem begins for the check and ends after the write.
    Autocommit,
    /// tandem's block around XA autocommit work, begun for this statement and holding
    /// nothing yet: it may be ended and begun again while the check waits.
    EmptyOwnBlock,
    /// A block that holds other work (the client's, as a rule).
    Block,
}

/// What the names given to `guard_tables` are.
#[derive(Clone, Copy)]
enum Names {
    /// As a statement wrote them: any may be a view, or a table with rules, in some
    /// schema.
    AsWritten,
    /// Tables the catalog named (what views, rules or foreign-key actions reach).
    Tables,
}

/// What a write outside a global transaction needs before it runs.
enum RowsToCheck {
    /// Nothing: it runs as sent (see `rows_to_check`).
    Unchecked,
    /// Its rows must be checked; a plain INSERT's by the keys this query reads
    /// (`TableMeta::inserted_keys_query`).
    Check(Arc<TableMeta>, Box<Write>, Option<String>),
    /// It may need a check, and which table it writes is known only at the sync point.
    AtSyncPoint { plain_insert: bool },
    /// It must not run: tandem cannot check it, and a table it may change may hold
    /// global locks.
    Refused(Error),
}

/// An INSERT without ON CONFLICT DO UPDATE: the rows it writes do not exist yet, so
/// they are checked by the keys its VALUES give, where they can be known before it
/// runs and where the check fits the batch; elsewhere it runs unchecked.
fn is_plain_insert(write: &Write) -> bool {
    write.kind == WriteKind::Insert && write.upsert.is_none()
}

/// What the check before a write found.
enum Checked {
    /// Nobody holds its rows; an INSERT's keys, to ask again when it is over.
    Free(Vec<LockKey>),
    /// It must not run.
    Refused(Refused),
    /// An INSERT whose keys could not be read: it runs unchecked.
    KeysUnread,
}

/// A write tandem did not let run: the error, and the transaction state the backend
/// is in now (`InTransaction`: the client's transaction must still be made to fail).
struct Refused {
    code: String,
    message: String,
    status: TxStatus,
}

impl Refused {
    fn of(e: &Error, status: TxStatus) -> Self {
        Refused {
            code: e.sqlstate().code().to_owned(),
            message: e.to_string(),
            status,
        }
    }
}

/// The write with `record_send` of each row it changes appended to what it returns
/// (the client's own RETURNING columns come first and reach it unchanged). A newline
/// first: the statement may end in a line comment.
fn returning_rows(sql: &str, write: &Write) -> String {
    use tandem_undo::Dialect;
    let body = tandem_undo::statement_body(sql);
    let whole_row = Postgres.quote_ident(write.alias.as_deref().unwrap_or(&write.table.name));
    let image = Postgres.as_output_text(&format!("record_send({whole_row}.*)"));
    let image = format!("{image} AS \"tandem_image\"");
    if write.has_returning {
        format!("{body}\n, {image}")
    } else {
        format!("{body}\nRETURNING {image}")
    }
}

/// The check locks rows no harder than the write will: an UPDATE that keeps its key
/// takes `FOR NO KEY UPDATE`, which does not block foreign-key checks of other sessions
/// (`FOR KEY SHARE`); a DELETE or an upsert keeps `FOR UPDATE`.
fn row_lock_of_the_write(before: String, write: &Write) -> String {
    if write.kind != WriteKind::Update {
        return before;
    }
    match before.rfind(" FOR UPDATE") {
        Some(at) => format!("{} FOR NO KEY UPDATE{}", &before[..at], &before[at + 11..]),
        None => before,
    }
}

/// Where the batch at the head of the client's bytes ends.
enum BatchEnd {
    /// At its Sync, this many bytes in.
    Sync(usize),
    /// The client flushes before any Sync: it waits for replies mid-batch.
    Flush,
    /// The Sync has not arrived yet.
    NotYet,
}

fn batch_end(rest: &[u8], max: usize) -> Result<BatchEnd> {
    let mut at = 0;
    while let Some(frame) = crate::wire::pg::Frame::peek(&rest[at..], max)? {
        at += frame.wire_len;
        match frame.tag {
            frontend::SYNC => return Ok(BatchEnd::Sync(at)),
            frontend::FLUSH => return Ok(BatchEnd::Flush),
            _ => {}
        }
    }
    Ok(BatchEnd::NotYet)
}

/// The text of one of the session's prepared statements, by name.
const PREPARED_TEXT: &str =
    "SELECT statement FROM pg_catalog.pg_prepared_statements WHERE name = $1";
const TEXT_OID: u32 = 25;

/// Whether a statement may change rows, from its first word: cheap enough for every
/// statement of every session.
pub(super) fn may_write(sql: &[u8]) -> bool {
    let Some(word) = crate::control::leading_words(sql, false).next() else {
        return false;
    };
    [
        &b"update"[..],
        b"delete",
        b"insert",
        b"merge",
        b"with",
        b"truncate",
    ]
    .iter()
    .any(|w| word.eq_ignore_ascii_case(w))
}

/// As `may_write`, and COPY, EXPLAIN and SQL-level EXECUTE, whose statement may write
/// (`COPY (UPDATE … RETURNING *) TO`, `EXPLAIN ANALYZE DELETE …`, a prepared DELETE):
/// what a write outside a global transaction is looked at for.
fn may_change_rows(sql: &[u8]) -> bool {
    may_write(sql)
        || crate::control::leading_words(sql, false)
            .next()
            .is_some_and(|w| {
                [&b"copy"[..], b"explain", b"execute"]
                    .iter()
                    .any(|word| w.eq_ignore_ascii_case(word))
            })
}

#[cfg(test)]
mod tests {
    use super::{Analysis, Postgres, may_change_rows, may_write, some_statement};

    #[test]
    fn an_update_locks_its_rows_no_harder_than_it_will() {
        let update = tandem_undo::analyze(&Postgres, "UPDATE t SET v = 1 WHERE id = 1")
            .unwrap()
            .pop();
        let Some(Analysis::Write(update)) = update else {
            panic!("an update");
        };
        assert_eq!(
            super::row_lock_of_the_write(
                "SELECT a FROM t WHERE id = 1 FOR UPDATE OF \"t\"".into(),
                &update
            ),
            "SELECT a FROM t WHERE id = 1 FOR NO KEY UPDATE OF \"t\""
        );
    }

    #[test]
    fn first_word_decides() {
        assert!(may_write(b"UPDATE t SET v = 1"));
        assert!(may_write(b"  /* c */ delete from t"));
        assert!(may_write(b"-- x\ninsert into t values (1)"));
        assert!(may_write(b"TRUNCATE t"));
        assert!(!may_write(b"SELECT 1; UPDATE t SET v = 1"));
        assert!(some_statement(
            b"SELECT 1; UPDATE t SET v = 1",
            may_change_rows
        ));
        assert!(some_statement(
            b"SELECT 1;\n  /* c */ truncate t",
            may_change_rows
        ));
        assert!(!some_statement(b"SELECT 1; SELECT 2;", may_change_rows));
        assert!(some_statement(
            b"COPY (DELETE FROM t RETURNING *) TO STDOUT",
            may_change_rows
        ));
        assert!(some_statement(
            b"SELECT 1; explain analyze delete from t",
            may_change_rows
        ));
        assert!(may_write(b"WITH d AS (DELETE FROM t RETURNING *) SELECT 1"));
        assert!(!may_write(b"SELECT 1"));
        assert!(!may_write(b"BEGIN"));
        assert!(!may_write(b"updated"));
    }
}
