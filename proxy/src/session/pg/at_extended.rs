//! AT mode over the extended query protocol, for the batch every driver sends to run one
//! statement: `[Parse] Bind [Describe] Execute Sync`.
//!
//! At a sync point tandem holds such a batch when it runs a write in a bound session,
//! and sends the backend, in one flight, the before image with the Bind's own
//! parameters, then the same batch with the write prepared again under tandem's
//! statement name with the key appended to its RETURNING. Its reply script is fixed:
//! CloseComplete and ParseComplete of tandem's statement come first and are swallowed;
//! the key columns are stripped from the rows (and from a portal's RowDescription); the
//! batch's ReadyForQuery finishes the write as in the simple protocol. A branch's COMMIT in such a batch is relayed as sent,
//! once tandem has registered the branch and written its undo row. Any other shape of
//! batch that writes or commits a branch is refused with an error answered by tandem
//! itself, and never reaches the backend.

use super::Relay;
use super::at::{RowDescriptionRule, WriteInFlight};
use super::exchange::Param;
use super::follow_up::FollowUp;
use super::tracked::Refusal;
use crate::at::branch::Branch;
use crate::error::{Error, Result};
use crate::wire::pg::Frame;
use crate::wire::pg::codes::{frontend, target};
use crate::wire::pg::messages::extended::{Bind, Format, Parse};
use crate::wire::pg::messages::response::{Severity, TxStatus, put_error};
use crate::wire::pg::messages::write::{put_cstr, put_msg};
use bytes::{BufMut, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;
use tandem_undo::{Analysis, Postgres, analyze};

/// tandem's own name for the write it prepares again (see exchange.rs's `STATEMENT`).
const WRITE_STATEMENT: &[u8] = b"\x01tandem_write";

/// What happens to a Parse or Bind of a bound session.
pub(super) enum Extended {
    /// Not a write: relay as usual.
    NotAWrite,
    /// The rest of the batch has not arrived yet.
    NeedMore,
    /// Requests are still in flight; wait for the sync point.
    WaitForSyncPoint,
    /// Nothing has run since the last sync point, and no reply is due
    /// (`may_settle`): make one with a Sync of tandem's (`settle`), then handle this
    /// message there.
    SettleFirst,
    /// A Bind of a write that cannot be held (its batch is already under way): replace
    /// it with a failing Bind and answer with this error.
    RefuseBind(Refusal),
    /// An Execute that cannot run nor be held (its batch is already under way): replace
    /// it with a failing Bind of its portal, answered with this error; the backend then
    /// skips the rest of the batch, as after the Execute's own error.
    RefuseExecute(Refusal),
    /// Relay this Parse in place of the client's (a control statement being prepared).
    ReplaceParse(BytesMut),
    /// The batch (this many bytes) was handled: `to_backend` is what to send instead
    /// (None: tandem answered the client itself).
    Handled {
        consumed: usize,
        to_backend: Option<BytesMut>,
    },
}

pub(super) struct Batch<'a> {
    pub(super) parse: Option<Parse<'a>>,
    pub(super) parse_frame: Option<&'a [u8]>,
    pub(super) bind: Bind<'a>,
    pub(super) bind_frame: &'a [u8],
    pub(super) describe: Option<(u8, &'a [u8])>,
    /// The Describe, of the statement, comes before the Bind (see `read_batch`).
    pub(super) describe_before_bind: bool,
    /// The most rows its Execute asks for, 0 for all (pgJDBC asks for 1 when it wants
    /// none, asyncpg's fetchrow for 1): it matters only to a statement that returns
    /// rows. tandem's rewritten batch asks for all, and passes on this many.
    pub(super) max_rows: u32,
    pub(super) len: usize,
}

impl Relay<'_> {
    /// `rest` starts with the Parse or Bind frame `tag`/`body`.
    /// `sql`: the statement the Parse or Bind at the head of `rest` prepares or binds.
    pub(super) async fn intercept_extended(
        &mut self,
        rest: &[u8],
        tag: u8,
        sql: &[u8],
    ) -> Result<Extended> {
        if tag == frontend::BIND {
            if sql.contains(&b'\\')
                && let Some(instead) = self.unless_at_sync_point(
                    tag,
                    "a statement with a backslash in the middle of a pipelined batch inside a global transaction",
                )
            {
                return Ok(instead);
            }
            if let Some(e) = self.text_misread(sql) {
                return Ok(Extended::RefuseBind(refusal(e)));
            }
        }
        if tag == frontend::BIND && super::xa::is_two_phase_statement(sql) {
            // Refused at its Parse inside a global transaction; this one was prepared
            // before the session was bound.
            return Ok(Extended::RefuseBind(refusal(Error::Unsupported {
                what: super::xa::TWO_PHASE_REFUSED,
            })));
        }
        let sql = String::from_utf8_lossy(sql).into_owned();
        if self.branch_mode() == crate::binding::Mode::Xa {
            return self.extended_in_xa(rest, tag, &sql).await;
        }
        if tag == frontend::BIND
            && let Some(e) = self.refusal_before_analysis(&sql).await
        {
            return Ok(Extended::RefuseBind(refusal(e)));
        }
        let (write, locking_read) = match self.ctx.analyses.analyze(&sql) {
            Ok(mut a) if a.len() == 1 => match a.remove(0) {
                Analysis::Commit if !self.branch.is_empty() => {
                    return self.commit_extended(rest, tag).await;
                }
                Analysis::Write(w) => (Some(w), None),
                Analysis::LockingRead(Some(read)) => (None, Some(read)),
                // Each when it runs (its Bind).
                Analysis::Other => {
                    if tag == frontend::BIND {
                        self.branch.forget_all_after();
                    }
                    return Ok(Extended::NotAWrite);
                }
                // Followed once they ran, in the order they ran (follow_up.rs).
                Analysis::Savepoint(op) if tag == frontend::BIND => {
                    if let Err(e) = self.check_savepoint_statement(&op) {
                        return Ok(Extended::RefuseBind(refusal(e)));
                    }
                    self.next_follow_up = Some(FollowUp::Savepoint(op));
                    return Ok(Extended::NotAWrite);
                }
                Analysis::Rollback if tag == frontend::BIND && super::at::chains(&sql) => {
                    self.next_follow_up = Some(FollowUp::RolledBack);
                    return Ok(Extended::NotAWrite);
                }
                Analysis::LockingRead(None) if tag == frontend::BIND => {
                    return Ok(Extended::RefuseBind(refusal(Error::Unsupported {
                        what: "SELECT … FOR UPDATE over a join or a derived table inside a global transaction (lock the rows of one table, choosing them with a subquery: WHERE id IN (SELECT …))",
                    })));
                }
                _ => return Ok(Extended::NotAWrite),
            },
            // Bound, it runs here and now, whenever it was prepared: one prepared before
            // the session was bound was never analysed, and a write tandem cannot read
            // would change rows the rollback never restores.
            Err(e) if tag == frontend::BIND => {
                return Ok(Extended::RefuseBind(refusal(Error::Undo(e))));
            }
            Ok(a) if tag == frontend::BIND && a.len() > 1 => {
                return Ok(Extended::RefuseBind(refusal(Error::Unsupported {
                    what: "a prepared statement of several statements inside a global transaction",
                })));
            }
            // Prepared: the server judges it first (a syntax error fails as it would
            // directly); if it prepares, it is refused when bound.
            _ => return Ok(Extended::NotAWrite),
        };
        if self.phase == super::Phase::Ready(TxStatus::Failed) {
            // In a failed block the backend refuses it (25P02) and runs nothing: nothing
            // to capture or check, and nothing of tandem's goes into the block.
            return Ok(Extended::NotAWrite);
        }
        if let Some(instead) = self.unless_at_sync_point(
            tag,
            "a write in the middle of a pipelined batch inside a global transaction",
        ) {
            return Ok(instead);
        }
        // Inside a transaction block, a write that leads a longer batch runs on its own
        // first, under a Sync of tandem's (pgJDBC's executeBatch): the rest of the batch
        // comes back here statement by statement.
        let max = self.ctx.config.max_message_bytes;
        let leading = match (&write, self.phase) {
            (Some(_), super::Phase::Ready(TxStatus::InTransaction)) => {
                leading_statement(rest, max)?
            }
            // Outside a block the batch is one implicit transaction: run piecewise, it
            // stays one inside a block of tandem's, ended at the client's Sync.
            (Some(_), super::Phase::Ready(TxStatus::Idle)) => match leading_statement(rest, max)? {
                // Not where the batch begins or ends a block (see begin_ahead.rs): its
                // shape is then refused below.
                Some(batch) if !self.batch_changes_the_block(rest)? => {
                    self.begin_implicit_batch().await?;
                    Some(batch)
                }
                _ => None,
            },
            _ => None,
        };
        let leads = leading.is_some();
        // Preparing a write changes nothing; it is captured when it is bound.
        let batch = match leading {
            Some(batch) => batch,
            None => match self
                .batch_to_run(
                    rest,
                    tag,
                    "a write followed by Flush before its Sync inside a global transaction",
                    false,
                )
                .await?
            {
                Ok(batch) => batch,
                Err(instead) => return Ok(instead),
            },
        };
        let consumed = batch.len;
        if let Some(read) = locking_read {
            // The rows it locks must not be held by another global transaction.
            let param_types = match self.batch_param_types(&sql, &batch).await {
                Ok(types) => types,
                // The statement does not prepare: the client hears why.
                Err(e) if e.is_injected() => return self.answer_directly(consumed, e).await,
                Err(e) => return Err(e),
            };
            let params = bind_params(&batch, &param_types);
            if let Err(e) = self.check_read_locks(&read, &params).await {
                return self.answer_directly(consumed, e).await;
            }
            let to_backend = self.forward_batch(&rest[..consumed])?;
            return Ok(Extended::Handled {
                consumed,
                to_backend: Some(to_backend),
            });
        }
        let Some(write) = write else {
            return Ok(Extended::NotAWrite);
        };
        match self.rewrite_batch(&sql, write, batch).await {
            Ok(to_backend) => {
                self.batch_continues = leads;
                Ok(Extended::Handled {
                    consumed,
                    to_backend: Some(to_backend),
                })
            }
            Err(e) if leads => self.fail_rest_of_batch(consumed, e).await,
            Err(e) => self.answer_directly(consumed, e).await,
        }
    }

    /// The COMMIT of a branch in a `[Parse] Bind [Describe] Execute Sync` batch (as
    /// libpq's extended mode and tokio-postgres' `execute` send it): at its sync point tandem registers the branch and writes
    /// its undo row, as for a COMMIT over the simple protocol, then relays the batch
    /// unchanged, so that the client's own statement, named or not, commits and answers.
    /// If registering or the undo row fails, the local transaction is rolled back and
    /// the batch is answered with the error without reaching the backend.
    async fn commit_extended(&mut self, rest: &[u8], tag: u8) -> Result<Extended> {
        if self.block_stays_failed() {
            // PostgreSQL answers the COMMIT of a failed transaction with ROLLBACK (and
            // with AND CHAIN begins the next): nothing of the branch survives, so there
            // is nothing to register. The branch ends once it has run: a Parse, or a
            // Bind never executed, leaves the block to be revived by a ROLLBACK TO.
            if tag == frontend::BIND {
                self.next_follow_up = Some(FollowUp::RolledBack);
            }
            return Ok(Extended::NotAWrite);
        }
        if let Some(instead) = self.unless_at_sync_point(
            tag,
            "COMMIT of a branch in the middle of a pipelined batch (send it as [Parse] Bind [Describe] Execute Sync)",
        ) {
            return Ok(instead);
        }
        // Preparing COMMIT runs nothing; its Bind comes back here.
        let consumed = match self
            .batch_to_run(
                rest,
                tag,
                "COMMIT of a branch followed by Flush before its Sync",
                true,
            )
            .await?
        {
            Ok(batch) => batch.len,
            Err(instead) => return Ok(instead),
        };
        let undo = match self.prepare_commit().await {
            Ok(undo) => undo,
            Err(e) => {
                return self
                    .abandon_commit(consumed, super::at::rolled_back_at_commit(e))
                    .await;
            }
        };
        if let Err(e) = self.write_undo_row(&undo).await {
            self.report_phase_one_failed(undo.as_ref());
            return self.abandon_commit(consumed, e).await;
        }
        self.commit_in_flight = undo.map(|undo| (undo, false));
        let to_backend = self.forward_batch(&rest[..consumed])?;
        Ok(Extended::Handled {
            consumed,
            to_backend: Some(to_backend),
        })
    }

    /// What a Parse or Bind that must run alone at a sync point gets when the session is
    /// not at one: a sync point of tandem's where nothing ran since the last one; else it
    /// waits for it; or, when earlier messages of its batch are already at the backend,
    /// the Parse is relayed (it runs nothing) and the Bind is refused with `mid_batch`.
    /// None: the session is at a sync point.
    pub(super) fn unless_at_sync_point(
        &self,
        tag: u8,
        mid_batch: &'static str,
    ) -> Option<Extended> {
        if self.phase.at_sync_point() {
            return None;
        }
        Some(match self.phase {
            // Nothing ran since the last sync point (a Parse, Describe and Flush: how
            // asyncpg prepares, and without its statement cache it sends the Parse again
            // with the Bind): one of tandem's is made first.
            _ if matches!(tag, frontend::BIND | frontend::PARSE) && self.may_settle() => {
                Extended::SettleFirst
            }
            // The same behind earlier batches still being answered (postgres.js
            // pipelines its queries): once they are, tandem's Sync makes one.
            super::Phase::Busy {
                unsynced: true,
                awaiting: 1..,
                ..
            } if tag == frontend::BIND && self.may_settle_once_answered() => {
                Extended::WaitForSyncPoint
            }
            super::Phase::Busy { unsynced: true, .. } if tag == frontend::BIND => {
                Extended::RefuseBind(refusal(Error::Unsupported { what: mid_batch }))
            }
            super::Phase::Busy { unsynced: true, .. } => Extended::NotAWrite,
            _ => Extended::WaitForSyncPoint,
        })
    }

    /// The batch at the head of `rest` when it is whole and of the one shape tandem runs
    /// (`[Parse] Bind [Describe] Execute Sync`), or else what to do instead: wait for
    /// the rest; relay a Parse that runs nothing (prepared only, or followed by Flush);
    /// refuse a Bind followed by Flush with `flushed`; answer any other shape whole with
    /// the shape's own error, or, for a branch's COMMIT (`commit`), end the block as a
    /// failed COMMIT does: PostgreSQL ends it at any COMMIT, and drivers count on it
    /// (postgres.js keeps a connection that is not idle).
    pub(super) async fn batch_to_run<'b>(
        &mut self,
        rest: &'b [u8],
        tag: u8,
        flushed: &'static str,
        commit: bool,
    ) -> Result<std::result::Result<Batch<'b>, Extended>> {
        let max = self.ctx.config.max_message_bytes;
        let instead = match read_batch(rest, max)? {
            Shape::Run(batch) => return Ok(Ok(batch)),
            Shape::Incomplete => Extended::NeedMore,
            Shape::PrepareOnly => Extended::NotAWrite,
            Shape::Flushed if tag == frontend::PARSE => Extended::NotAWrite,
            Shape::Flushed => Extended::RefuseBind(refusal(Error::Unsupported { what: flushed })),
            Shape::Other(_) if commit => {
                let e = Error::Unsupported {
                    what: "COMMIT of a branch batched with other messages over the extended protocol (send it as [Parse] Bind [Describe] Execute Sync)",
                };
                self.abandon_commit(rest_len(rest, max)?, e).await?
            }
            Shape::Other(e) => self.answer_directly(rest_len(rest, max)?, e).await?,
        };
        Ok(Err(instead))
    }

    /// A branch's COMMIT that cannot go ahead: the local transaction is rolled back (the
    /// branch's work, AT or XA) and the client's batch is answered with `e`.
    async fn abandon_commit(&mut self, consumed: usize, e: Error) -> Result<Extended> {
        self.branch = Branch::default();
        self.xa = super::xa::XaBranch::None;
        self.roll_back_local().await?;
        self.phase = super::Phase::Ready(TxStatus::Idle);
        self.binding.on_local_transaction_end();
        self.forget_resolutions_of_ended_transaction();
        self.answer_directly(consumed, e).await
    }

    /// A statement leading a longer batch was refused: the client's transaction fails as
    /// the statement would have made it fail, and the rest of its batch is dropped up
    /// to its Sync (`skip_to_client_sync`).
    pub(super) async fn fail_rest_of_batch(
        &mut self,
        consumed: usize,
        e: Error,
    ) -> Result<Extended> {
        self.fail_block(&e).await?;
        let mut out = BytesMut::new();
        put_error(
            &mut out,
            Severity::Error,
            e.sqlstate().code(),
            &e.to_string(),
        );
        self.write_client(&out);
        self.skip_to_client_sync = Some(TxStatus::Failed);
        Ok(Extended::Handled {
            consumed,
            to_backend: None,
        })
    }

    /// Refuses a batch without running it: ErrorResponse, then ReadyForQuery. Inside a
    /// transaction block the block fails first, as the error would fail it.
    pub(super) async fn answer_directly(&mut self, consumed: usize, e: Error) -> Result<Extended> {
        let mut status = self.phase.tx_status().unwrap_or(TxStatus::Idle);
        if status == TxStatus::InTransaction {
            // As the backend would (and as over the simple protocol): an error fails
            // the transaction block, so that its COMMIT cannot keep what ran before.
            self.fail_block(&e).await?;
            status = TxStatus::Failed;
        }
        let mut out = BytesMut::new();
        put_error(
            &mut out,
            Severity::Error,
            e.sqlstate().code(),
            &e.to_string(),
        );
        // In tandem's block of an implicit batch, the block ends rolled back (it failed),
        // as the backend ends a failed implicit transaction.
        self.put_batch_end(&mut out, status).await?;
        self.answered(&out, consumed).await
    }

    /// Fails the open transaction block on the backend with `e`, as the statement
    /// tandem refused would have failed it.
    async fn fail_block(&mut self, e: &Error) -> Result<()> {
        let sql = super::intercept::error_sql(e.sqlstate().code(), &e.to_string());
        self.exchange_simple(&sql).await?;
        self.phase = super::Phase::Ready(TxStatus::Failed);
        Ok(())
    }

    /// tandem answered the client's batch (`consumed` bytes) itself with `out`: sent
    /// at once, since the client waits for it.
    pub(super) async fn answered(&mut self, out: &[u8], consumed: usize) -> Result<Extended> {
        // The server never sees this batch: a reset in it never ran.
        self.pool_resets.forget(self.tracked.batch_being_sent());
        self.write_client(out);
        self.flush_client().await?;
        Ok(Extended::Handled {
            consumed,
            to_backend: None,
        })
    }

    /// The client's batch with its write prepared again as tandem's statement with
    /// `rewritten` SQL (its RETURNING extended by `appended` text columns), every
    /// message tracked as the client sent it; and what to do with the RowDescription
    /// that comes back. Its replies start with CloseComplete and ParseComplete of
    /// tandem's statement.
    pub(super) fn put_rewritten_batch(
        &mut self,
        rewritten: &str,
        param_types: &[u32],
        batch: &Batch<'_>,
        write: &tandem_undo::Write,
        appended: usize,
    ) -> Result<(BytesMut, RowDescriptionRule)> {
        let mut out = BytesMut::new();
        let mut close = BytesMut::new();
        close.put_u8(target::STATEMENT);
        put_cstr(&mut close, WRITE_STATEMENT);
        put_msg(&mut out, frontend::CLOSE, &close);
        let mut parse = BytesMut::new();
        put_cstr(&mut parse, WRITE_STATEMENT);
        put_cstr(&mut parse, rewritten.as_bytes());
        parse.put_u16(param_types.len() as u16);
        for t in param_types {
            parse.put_u32(*t);
        }
        put_msg(&mut out, frontend::PARSE, &parse);
        if let Some(frame) = batch.parse_frame {
            out.put_slice(frame);
            self.on_client_message(frontend::PARSE, &frame[5..])?;
        }
        // The client's Describe of its own statement, where it sent it: described as
        // the client prepared it.
        let describe_statement = |out: &mut BytesMut, relay: &mut Self| -> Result<()> {
            if let Some((_, describe)) = batch.describe {
                out.put_slice(describe);
                relay.on_client_message(frontend::DESCRIBE, &describe[5..])?;
            }
            Ok(())
        };
        if batch.describe_before_bind {
            describe_statement(&mut out, self)?;
        }
        // The client's Bind, pointed at tandem's statement, its columns in the formats
        // it asked for.
        let mut bind = BytesMut::new();
        put_cstr(&mut bind, batch.bind.portal);
        put_cstr(&mut bind, WRITE_STATEMENT);
        bind.put_u16(batch.bind.param_formats.len() as u16);
        for f in &batch.bind.param_formats {
            bind.put_i16(*f);
        }
        bind.put_u16(batch.bind.params.len() as u16);
        for v in &batch.bind.params {
            match v {
                Some(v) => {
                    bind.put_i32(v.len() as i32);
                    bind.put_slice(v);
                }
                None => bind.put_i32(-1),
            }
        }
        // Without a RETURNING of its own the client's codes name no column (PostgreSQL
        // ignores them then): tandem's columns get none, text.
        let client_formats: &[i16] = if write.has_returning {
            &batch.bind.result_formats
        } else {
            &[]
        };
        put_result_formats(&mut bind, client_formats, appended);
        put_msg(&mut out, frontend::BIND, &bind);
        // Tracked as the client sent it: its portal is the client's statement's.
        self.on_client_message(frontend::BIND, &batch.bind_frame[5..])?;
        let rule = match batch.describe {
            Some(_) if batch.describe_before_bind => RowDescriptionRule::Relay,
            Some((kind, _)) => {
                describe_statement(&mut out, self)?;
                if kind == target::PORTAL {
                    if write.has_returning {
                        RowDescriptionRule::Strip
                    } else {
                        RowDescriptionRule::ToNoData
                    }
                } else {
                    RowDescriptionRule::Relay
                }
            }
            None => RowDescriptionRule::Relay,
        };
        let mut execute = BytesMut::new();
        put_cstr(&mut execute, batch.bind.portal);
        execute.put_i32(0);
        put_msg(&mut out, frontend::EXECUTE, &execute);
        self.on_client_message(frontend::EXECUTE, &execute)?;
        put_msg(&mut out, frontend::SYNC, &[]);
        self.on_client_message(frontend::SYNC, &[])?;
        Ok((out, rule))
    }

    async fn rewrite_batch(
        &mut self,
        sql: &str,
        write: tandem_undo::Write,
        batch: Batch<'_>,
    ) -> Result<BytesMut> {
        let meta = self.captured_table_meta(&write.table).await?;
        meta.check_capturable(&Postgres, &write)?;
        self.check_session_for_images(&meta)?;
        let param_types = self.batch_param_types(sql, &batch).await?;
        let implicit = self.phase.tx_status() == Some(TxStatus::Idle);
        let before = super::at::before_image_query(&meta, &write).map_err(Error::Undo)?;
        let rewritten = super::at::with_returning_key_and_table(&meta, sql, &write);
        let appended = super::at::appended_columns(&meta, &write);
        let (out, rule) =
            self.put_rewritten_batch(&rewritten, &param_types, &batch, &write, appended)?;
        let mut in_flight = WriteInFlight::new(
            Arc::clone(&meta),
            &write,
            implicit,
            rule,
            VecDeque::from([
                crate::wire::pg::codes::backend::CLOSE_COMPLETE,
                crate::wire::pg::codes::backend::PARSE_COMPLETE,
            ]),
        );
        in_flight.pass_on_at_most(batch.bind.portal, batch.max_rows);
        // BEGIN (for an autocommit write), the before image and the batch go in one
        // round trip and under the batch's Sync, as over the simple protocol: the image
        // is read before the batch's replies, which follow it. If the image fails, the
        // backend skips the batch and the image's error is the client's reply.
        let params = bind_params(&batch, &param_types);
        let formats = super::at::image_formats(&meta);
        let mut statements: Vec<(&str, &[Param<'_>], &[i16])> = Vec::with_capacity(2);
        if implicit {
            statements.push(("BEGIN", &[], &[]));
        }
        if let Some(before) = &before {
            statements.push((before.as_str(), &params, &formats));
        }
        if statements.is_empty() {
            self.write_in_flight = Some(in_flight);
            return Ok(out);
        }
        let mut results = self.exchange_many_then(&statements, &out).await?;
        if let Some(e) = results.iter().find_map(|r| r.error.as_ref()) {
            tracing::debug!(parent: self.binding.span(), error = %e.message, "before image failed");
        } else if before.is_some()
            && let Some(got) = results.pop()
        {
            let rows = super::at::split_rows(got.rows, meta.columns.len());
            self.branch.record_before(&meta, rows);
        }
        self.write_in_flight = Some(in_flight);
        // Sent already; the batch's ReadyForQuery finishes the write.
        Ok(BytesMut::new())
    }
}

/// The result formats of a rewritten Bind: the client's, for its columns and tandem's
/// `appended` ones. No code, or one, applies to every column, and tandem's read the
/// same in either (`Dialect::as_output_text`); a code per column gets text codes for
/// tandem's.
fn put_result_formats(bind: &mut BytesMut, client: &[i16], appended: usize) {
    let ours = if client.len() > 1 { appended } else { 0 };
    bind.put_u16((client.len() + ours) as u16);
    for code in client {
        bind.put_i16(*code);
    }
    for _ in 0..ours {
        bind.put_i16(0);
    }
}

/// The Bind's parameters as tandem's own statements take them.
pub(super) fn bind_params<'a>(batch: &Batch<'a>, param_types: &[u32]) -> Vec<Param<'a>> {
    batch
        .bind
        .params
        .iter()
        .enumerate()
        .map(|(i, v)| Param {
            type_oid: param_types.get(i).copied().unwrap_or(0),
            value: *v,
            text: batch.bind.param_format(i) == Format::Text,
        })
        .collect()
}

/// A Bind of a named statement that may have been replaced, where tandem could not ask
/// the backend (`Relay::verify_statements`).
const UNVERIFIED_STATEMENT: &str = "a Bind of a named statement that a statement since its Parse may have replaced (a SQL-level PREPARE or DEALLOCATE, a DO or CALL, or one that failed), where tandem could not ask the backend which it is (in the middle of a pipelined batch, in a transaction block where only BEGIN has run, or under a statement_timeout too short for the question), inside a global transaction";

/// A Bind (or a later Execute) of a named statement tandem cannot tell, inside a global
/// transaction.
pub(super) const OPAQUE_STATEMENT: Error = Error::Unsupported {
    what: "a Bind of a named statement tandem did not see prepared over the protocol, or that was replaced since, inside a global transaction (tandem cannot tell which statement the name binds)",
};

const TEXT_ARRAY_OID: u32 = 1009;

/// The client's statements of the names given in hex, as made over the protocol: names
/// and texts in the server's own bytes, which are the client's where no conversion
/// runs between them (and taken so, no conversion validates them, nor can fail).
const LIST_PREPARED_STATEMENTS: &str = "SELECT pg_catalog.encode(pg_catalog.convert_to(name, 'SQL_ASCII'), 'hex'), pg_catalog.convert_to(statement, 'SQL_ASCII') \
     FROM pg_catalog.pg_prepared_statements \
     WHERE NOT from_sql AND pg_catalog.encode(pg_catalog.convert_to(name, 'SQL_ASCII'), 'hex') = ANY ($1)";
/// As `LIST_PREPARED_STATEMENTS`, converted from the server's encoding to the
/// session's (which may fail, in a UTF8 session never: the statements are then left
/// unverified).
const LIST_PREPARED_STATEMENTS_CONVERTED: &str = "SELECT pg_catalog.encode(pg_catalog.textsend(name), 'hex'), pg_catalog.textsend(statement) \
     FROM pg_catalog.pg_prepared_statements \
     WHERE NOT from_sql AND pg_catalog.encode(pg_catalog.textsend(name), 'hex') = ANY ($1)";
pub(super) const SAVEPOINT_VERIFY: &str = "SAVEPOINT tandem_verify_statements";
pub(super) const RELEASE_VERIFY: &str = "RELEASE SAVEPOINT tandem_verify_statements";
pub(super) const ROLLBACK_TO_VERIFY: &str = "ROLLBACK TO SAVEPOINT tandem_verify_statements";

impl Relay<'_> {
    /// Asks the backend which unverified statements (`Tracked::unverified_names`) are
    /// still the ones tandem recorded: those are known again, the others forgotten
    /// (opaque). Names and texts are compared in the bytes the client sent them in;
    /// nothing is converted from the client's encoding, so no conversion can fail
    /// (`LIST_PREPARED_STATEMENTS`). In the client's block it runs
    /// under a savepoint of its own, so that an error (the client's statement_timeout,
    /// say) leaves the block as it was, and the statements unverified. Not asked in a
    /// failed block (nothing can run there), nor in a block where only BEGIN (or
    /// SAVEPOINT) has run: a query of tandem's would take the snapshot that
    /// `SET TRANSACTION ISOLATION LEVEL` must come before.
    pub(super) async fn verify_statements(&mut self) -> Result<()> {
        let in_block = match self.phase {
            super::Phase::Ready(TxStatus::Idle) => false,
            super::Phase::Ready(TxStatus::InTransaction) if !self.block_untouched => true,
            _ => return Ok(()),
        };
        let names = self.tracked.unverified_names();
        if names.is_empty() {
            return Ok(());
        }
        let hex_names: Vec<String> = names.iter().map(|n| crate::at::branch::hex(n)).collect();
        let hex_list = format!("{{{}}}", hex_names.join(","));
        let params = [Param {
            type_oid: TEXT_ARRAY_OID,
            value: Some(hex_list.as_bytes()),
            text: true,
        }];
        // PostgreSQL converts nothing between a client and a server of one encoding,
        // nor where either is SQL_ASCII.
        let (client, server) = (
            self.server_param("client_encoding"),
            self.server_param("server_encoding"),
        );
        let unconverted = client.eq_ignore_ascii_case(server)
            || client.eq_ignore_ascii_case("SQL_ASCII")
            || server.eq_ignore_ascii_case("SQL_ASCII");
        let list = if unconverted {
            LIST_PREPARED_STATEMENTS
        } else {
            LIST_PREPARED_STATEMENTS_CONVERTED
        };
        let list_statements = (list, &params[..], &[0i16, 1][..]);
        let found = if in_block {
            let mut results = self
                .exchange_many(&[
                    (SAVEPOINT_VERIFY, &[], &[]),
                    list_statements,
                    (RELEASE_VERIFY, &[], &[]),
                ])
                .await?;
            if results.iter().any(|r| r.error.is_some()) {
                let restored = self
                    .exchange_many(&[(ROLLBACK_TO_VERIFY, &[], &[]), (RELEASE_VERIFY, &[], &[])])
                    .await?;
                return match restored.into_iter().find_map(|r| r.error) {
                    Some(e) => Err(Error::injected(&e.code, e.message)),
                    None => Ok(()),
                };
            }
            results.swap_remove(1)
        } else {
            let found = self.exchange_many(&[list_statements]).await?;
            match found.into_iter().next() {
                Some(found) if found.error.is_none() => found,
                _ => return Ok(()),
            }
        };
        let backend: std::collections::HashMap<&[u8], &[u8]> = found
            .rows
            .iter()
            .filter_map(|row| match row.as_slice() {
                [Some(name), Some(sql)] => Some((name.as_slice(), sql.as_slice())),
                _ => None,
            })
            .collect();
        for (name, hex_name) in names.iter().zip(&hex_names) {
            let sql = backend.get(hex_name.as_bytes()).copied();
            self.tracked.confirm_statement(name, sql);
        }
        Ok(())
    }

    /// The parameter types the server resolved for the client's statement (declared,
    /// or asked for): tandem's own statements use only some of its parameters and
    /// could not infer the others.
    pub(super) async fn batch_param_types(
        &mut self,
        sql: &str,
        batch: &Batch<'_>,
    ) -> Result<Vec<u32>> {
        let (declared, known) = match &batch.parse {
            Some(p) => (p.param_types.clone(), None),
            None => match self.tracked.statement_for_bind(batch.bind.statement) {
                Some(s) => (s.param_types.clone(), s.inferred.clone()),
                None => (Vec::new(), None),
            },
        };
        if declared.len() == batch.bind.params.len() && declared.iter().all(|&t| t != 0) {
            return Ok(declared);
        }
        if let Some(known) = known {
            return Ok(known);
        }
        // The client's declarations win where it made them: its values (a binary int2,
        // say) are encoded for them, not for what the server would infer.
        let described = self.describe_params(sql, &declared).await?;
        let types: Vec<u32> = described
            .iter()
            .enumerate()
            .map(|(i, &inferred)| match declared.get(i) {
                Some(&t) if t != 0 => t,
                _ => inferred,
            })
            .collect();
        if batch.parse.is_none() {
            // A statement prepared earlier: the next Bind of it needs no describe.
            self.tracked.remember_inferred(batch.bind.statement, &types);
        }
        Ok(types)
    }

    /// A Parse or Bind that is not a control statement: a statement with an XID hint
    /// binds the session first; then AT (or XA) for a bound session, the check of
    /// writes outside global transactions for the others.
    pub(super) async fn intercept_statement(
        &mut self,
        rest: &[u8],
        tag: u8,
        body: &[u8],
    ) -> Result<Extended> {
        if tag == frontend::BIND
            && let Ok(statement) = Bind::statement_of(body)
        {
            if self.binding.xid().is_some()
                && self.tracked.statement_unverified(statement)
                && self.phase != super::Phase::Ready(TxStatus::Failed)
            {
                // Not asked at the batch's start (`verify_statements`): replaced, or
                // failed, in this batch, or not askable. In a failed block, where only
                // the end of the block runs, the record is as good as it was.
                return Ok(self
                    .unless_at_sync_point(tag, UNVERIFIED_STATEMENT)
                    .unwrap_or(Extended::RefuseBind(refusal(Error::Unsupported {
                        what: UNVERIFIED_STATEMENT,
                    }))));
            }
            if self.tracked.statement_opaque(statement) {
                // Bound, it may write outside what the branch captures; unbound, it
                // goes to the backend as sent, unchecked (as SQL-level EXECUTE does).
                return Ok(match self.binding.xid() {
                    Some(_) => Extended::RefuseBind(refusal(OPAQUE_STATEMENT)),
                    None => Extended::NotAWrite,
                });
            }
            if self.tracked.bind_statement_uncertain(statement)
                && let Some(instead) = self.unless_at_sync_point(
                    tag,
                    "a Bind of a statement whose Parse in an earlier batch may still fail (send it once that batch is answered)",
                )
            {
                return Ok(instead);
            }
        }
        let Some(sql) = self.statement_sql(tag, body) else {
            if tag == frontend::BIND
                && Bind::statement_of(body).is_ok_and(|s| self.tracked.meets_tandems_unnamed(s))
            {
                // The backend's unnamed statement is tandem's, where PostgreSQL would
                // have none: the client's Bind must not run it.
                return Ok(Extended::RefuseBind(refusal(Error::UnnamedStatementGone)));
            }
            // Malformed, or a Bind of an unknown statement: the backend says so.
            return Ok(Extended::NotAWrite);
        };
        if tag == frontend::BIND {
            if (self.implicit_batch || self.xa == super::xa::XaBranch::Implicit)
                && let Some(what) = super::begin_ahead::needs_a_block(&sql)
            {
                // The client's batch is an implicit transaction, which tandem's block
                // stands for: the backend would refuse it there.
                return Ok(Extended::RefuseBind(refusal(Error::ServerError {
                    state: crate::wire::pg::sqlstate::SqlState::NoActiveSqlTransaction,
                    message: format!("{what} can only be used in transaction blocks"),
                })));
            }
            self.note_set_config(&sql);
            if super::intercept::is_pool_reset(&sql) {
                self.on_pool_reset_sent();
            }
        }
        if let Some(xid) = crate::control::xid_hint(&sql) {
            if self.binding.xid().is_some() {
                // Bound already: a hint naming another transaction is refused (its
                // statement would run in this one), as over the simple protocol.
                if tag == frontend::BIND
                    && let Err(e) = self.binding.check_hint(&xid)
                {
                    return Ok(Extended::RefuseBind(refusal(e)));
                }
            } else {
                // Mid-batch it cannot join its global transaction, so it must not run.
                if let Some(instead) = self.unless_at_sync_point(
                    tag,
                    "a statement with an XID hint in the middle of a pipelined batch (send it with its own Sync)",
                ) {
                    return Ok(instead);
                }
                let open = self.block_holds_work();
                if let Err(e) = self
                    .binding
                    .bind_from_hint(&self.ctx.lock, &xid, open)
                    .await
                {
                    let max = self.ctx.config.max_message_bytes;
                    return self.answer_directly(rest_len(rest, max)?, e).await;
                }
            }
        }
        let opens_block = self.begins_a_block_ahead(&sql);
        if opens_block || self.sets_a_savepoint_ahead(&sql) {
            match self.begin_ahead(rest, opens_block).await? {
                Extended::NotAWrite => {}
                handled => return Ok(handled),
            }
        }
        let handled = if self.binding.xid().is_some() {
            self.intercept_extended(rest, tag, &sql).await?
        } else {
            self.guard_extended(rest, tag, &sql, false).await?
        };
        if matches!(handled, Extended::NotAWrite) && self.may_run_ahead_of_a_write(&sql) {
            // Let through unchecked: a later write of its batch must not be (see
            // begin_ahead.rs).
            return self.run_ahead_of_a_write(rest).await;
        }
        Ok(handled)
    }

    /// The statement this Parse prepares or this Bind binds (the Parse still in flight
    /// included); a Bind's is shared with `Tracked`, not copied.
    pub(super) fn statement_sql(&self, tag: u8, body: &[u8]) -> Option<bytes::Bytes> {
        match tag {
            frontend::PARSE => Parse::decode(body)
                .ok()
                .map(|p| bytes::Bytes::copy_from_slice(p.sql)),
            _ => {
                let name = Bind::statement_of(body).ok()?;
                Some(self.tracked.statement_for_bind(name)?.sql.clone())
            }
        }
    }

    /// A whole batch that tandem sends on as the client wrote it, each message tracked
    /// as if relayed.
    pub(super) fn forward_batch(&mut self, batch: &[u8]) -> Result<BytesMut> {
        let max = self.ctx.config.max_message_bytes;
        let mut at = 0;
        while at < batch.len() {
            let frame =
                Frame::header(&batch[at..], max)?.ok_or(Error::Malformed { what: "batch" })?;
            self.on_client_message(frame.tag, frame.body(&batch[at..]))?;
            at += frame.wire_len;
        }
        Ok(BytesMut::from(batch))
    }
}

pub(super) fn refusal(e: Error) -> Refusal {
    Refusal {
        sqlstate: e.sqlstate().code(),
        message: e.to_string(),
    }
}

/// The bytes of the whole batch starting at `rest`, up to and including its Sync.
pub(super) fn rest_len(rest: &[u8], max: usize) -> Result<usize> {
    let mut at = 0;
    while let Some(frame) = Frame::peek(&rest[at..], max)? {
        at += frame.wire_len;
        if frame.tag == frontend::SYNC {
            break;
        }
    }
    Ok(at)
}

/// The shape of the batch that starts with a write's Parse or Bind.
pub(super) enum Shape<'a> {
    /// The Sync has not arrived yet.
    Incomplete,
    /// `Parse [Describe] Sync`: only prepares the statement.
    PrepareOnly,
    /// `[Parse] Bind [Describe] Execute(0 rows) Sync`: runs it once.
    Run(Batch<'a>),
    /// Anything else, refused whole (once its Sync has arrived).
    Other(Error),
    /// A Flush before the Sync: the client waits for replies mid-batch, so tandem
    /// cannot hold the batch until its Sync.
    Flushed,
}

/// The batch at the head of `rest`. Its Describe may also come between its Parse and
/// its Bind, of the statement: pgJDBC sends `Parse Describe(statement) Bind Execute
/// Sync` when it prepares a statement on the server (its fifth execution) while a
/// parameter's type is left to the server (`setTimestamp`, `setObject` without a type,
/// `stringtype=unspecified`).
pub(super) fn read_batch(rest: &[u8], max: usize) -> Result<Shape<'_>> {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let Some(frame) = Frame::peek(&rest[at..], max)? else {
            return Ok(Shape::Incomplete);
        };
        if frame.tag == frontend::FLUSH {
            return Ok(Shape::Flushed);
        }
        frames.push((frame.tag, &rest[at..at + frame.wire_len]));
        at += frame.wire_len;
        if frame.tag == frontend::SYNC {
            break;
        }
        if frames.len() > 5 {
            // Not a shape tandem runs: refused whole, so the rest must be here too.
            loop {
                let Some(frame) = Frame::peek(&rest[at..], max)? else {
                    return Ok(Shape::Incomplete);
                };
                match frame.tag {
                    frontend::FLUSH => return Ok(Shape::Flushed),
                    frontend::SYNC => break,
                    _ => at += frame.wire_len,
                }
            }
            break;
        }
    }
    let other = || {
        Ok(Shape::Other(Error::Unsupported {
            what: "a write batched with other messages over the extended protocol inside a global transaction (send it as [Parse] Bind [Describe] Execute Sync)",
        }))
    };
    let tags: Vec<u8> = frames.iter().map(|(t, _)| *t).collect();
    if matches!(
        tags.as_slice(),
        [frontend::PARSE, frontend::SYNC] | [frontend::PARSE, frontend::DESCRIBE, frontend::SYNC]
    ) {
        return Ok(Shape::PrepareOnly);
    }
    let (parse_at, bind_at, describe_at) = match tags.as_slice() {
        [
            frontend::PARSE,
            frontend::BIND,
            frontend::DESCRIBE,
            frontend::EXECUTE,
            frontend::SYNC,
        ] => (Some(0), 1, Some(2)),
        [
            frontend::PARSE,
            frontend::BIND,
            frontend::EXECUTE,
            frontend::SYNC,
        ] => (Some(0), 1, None),
        [
            frontend::BIND,
            frontend::DESCRIBE,
            frontend::EXECUTE,
            frontend::SYNC,
        ] => (None, 0, Some(1)),
        [frontend::BIND, frontend::EXECUTE, frontend::SYNC] => (None, 0, None),
        [
            frontend::PARSE,
            frontend::DESCRIBE,
            frontend::BIND,
            frontend::EXECUTE,
            frontend::SYNC,
        ] => (Some(0), 2, Some(1)),
        _ => return other(),
    };
    decode_batch(&frames, parse_at, bind_at, describe_at, at)
}

/// Whether the batch at the head of `rest` executes anything before its Sync or
/// Flush; None while that end has not arrived.
fn batch_executes(rest: &[u8], max: usize) -> Result<Option<bool>> {
    let mut at = 0;
    while let Some(frame) = Frame::peek(&rest[at..], max)? {
        at += frame.wire_len;
        match frame.tag {
            frontend::EXECUTE => return Ok(Some(true)),
            frontend::SYNC | frontend::FLUSH => return Ok(Some(false)),
            _ => {}
        }
    }
    Ok(None)
}

/// The first statement of a longer batch, `[Parse] Bind [Describe] Execute` followed by
/// more than its Sync (pgJDBC's executeBatch), or by a Flush (psycopg's pipeline, whose
/// client waits for the statement's replies before it sends the Sync): its messages as
/// a `Batch` of their own (`len` excludes what follows). None: another shape, or not
/// all here yet.
pub(super) fn leading_statement(rest: &[u8], max: usize) -> Result<Option<Batch<'_>>> {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let Some(frame) = Frame::peek(&rest[at..], max)? else {
            return Ok(None);
        };
        frames.push((frame.tag, &rest[at..at + frame.wire_len]));
        at += frame.wire_len;
        if frame.tag == frontend::EXECUTE || frames.len() == 4 {
            break;
        }
    }
    let tags: Vec<u8> = frames.iter().map(|(t, _)| *t).collect();
    let (parse_at, bind_at, describe_at) = match tags.as_slice() {
        [
            frontend::PARSE,
            frontend::BIND,
            frontend::DESCRIBE,
            frontend::EXECUTE,
        ] => (Some(0), 1, Some(2)),
        [frontend::PARSE, frontend::BIND, frontend::EXECUTE] => (Some(0), 1, None),
        [frontend::BIND, frontend::DESCRIBE, frontend::EXECUTE] => (None, 0, Some(1)),
        [frontend::BIND, frontend::EXECUTE] => (None, 0, None),
        _ => return Ok(None),
    };
    match Frame::peek(&rest[at..], max)? {
        Some(next) if next.tag != frontend::SYNC => {}
        _ => return Ok(None),
    }
    match decode_batch(&frames, parse_at, bind_at, describe_at, at)? {
        Shape::Run(batch) => Ok(Some(batch)),
        _ => Ok(None),
    }
}

/// The `Batch` of frames whose Parse (if any), Bind and Describe (if any) are at these
/// places, the Execute right after; `len` bytes in all.
fn decode_batch<'a>(
    frames: &[(u8, &'a [u8])],
    parse_at: Option<usize>,
    bind_at: usize,
    describe_at: Option<usize>,
    len: usize,
) -> Result<Shape<'a>> {
    let other = || {
        Ok(Shape::Other(Error::Unsupported {
            what: "a write batched with other messages over the extended protocol inside a global transaction (send it as [Parse] Bind [Describe] Execute Sync)",
        }))
    };
    let body = |i: usize| &frames[i].1[5..];
    let malformed = |what| Error::Malformed { what };
    let parse = match parse_at {
        Some(i) => Some(Parse::decode(body(i)).map_err(|_| malformed("Parse"))?),
        None => None,
    };
    let bind = Bind::decode(body(bind_at)).map_err(|_| malformed("Bind"))?;
    if let Some(p) = &parse
        && p.name != bind.statement
    {
        return other();
    }
    let describe = match describe_at {
        // Ahead of the Bind, a Describe of a portal would describe another one.
        Some(i) if i < bind_at && body(i).first() != Some(&target::STATEMENT) => return other(),
        Some(i) => {
            let kind = body(i).first().copied().unwrap_or(0);
            Some((kind, frames[i].1))
        }
        None => None,
    };
    let execute_at = frames
        .iter()
        .rposition(|(tag, _)| *tag == frontend::EXECUTE)
        .ok_or(malformed("Execute"))?;
    let execute = body(execute_at);
    let max_rows = execute
        .iter()
        .position(|&b| b == 0)
        .and_then(|end| execute.get(end + 1..end + 5))
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(-1);
    Ok(Shape::Run(Batch {
        parse_frame: parse_at.map(|i| frames[i].1),
        parse,
        bind,
        bind_frame: frames[bind_at].1,
        describe,
        describe_before_bind: describe_at.is_some_and(|d| d < bind_at),
        max_rows: u32::try_from(max_rows).unwrap_or(0),
        len,
    }))
}

impl Relay<'_> {
    /// A Parse or Bind in XA mode: work joins the open transaction block's branch, and
    /// the block's COMMIT prepares it (`xa_commit_extended`). Work that arrives outside
    /// a block (an autocommit statement, or pgJDBC's executeBatch with autocommit on)
    /// gets a block of tandem's, begun ahead of it, whose branch is prepared at the
    /// client's Sync (`end_xa_implicit`), as over the simple protocol. Its writes are
    /// checked against AT-mode global locks inside the block (guard.rs).
    async fn extended_in_xa(&mut self, rest: &[u8], tag: u8, sql: &str) -> Result<Extended> {
        use super::xa::{XaBranch, XaStatement, classify};
        let analyses = analyze(&Postgres, sql);
        // A Parse holds one statement (the server refuses more), so text that cannot
        // be split hides no COMMIT behind other work.
        let mut statements = classify(sql, &analyses).unwrap_or_else(|_| vec![XaStatement::Work]);
        if !statements.contains(&XaStatement::Work)
            && !matches!(self.writing_function_in(sql).await, Ok(None))
        {
            // A read through a function that may write is work of the branch too (as
            // is one whose functions could not be looked up).
            statements.push(XaStatement::Work);
        }
        if statements == [XaStatement::Commit] && self.xa == XaBranch::Open {
            if super::at::chains(sql) {
                return Ok(if tag == frontend::BIND {
                    Extended::RefuseBind(refusal(super::xa::CHAINED_XA_COMMIT))
                } else {
                    Extended::NotAWrite
                });
            }
            return self.xa_commit_extended(rest, tag).await;
        }
        // Only statements tandem reads: COPY, say, would wait for data from a client
        // paused at its Sync. A read ahead of work in its batch opens the block too:
        // the batch is one implicit transaction, whose work must be the branch's.
        let autocommit = self.xa == XaBranch::None
            && analyses.is_ok()
            && self.phase == super::Phase::Ready(TxStatus::Idle)
            && !statements.iter().any(|s| {
                matches!(
                    s,
                    XaStatement::Begin | XaStatement::Commit | XaStatement::Rollback
                )
            });
        let work_behind = match autocommit && !statements.contains(&XaStatement::Work) {
            true => {
                let is_work = |sql: &[u8]| {
                    let sql = String::from_utf8_lossy(sql);
                    classify(&sql, &analyze(&Postgres, &sql))
                        .map_or(true, |s| s.contains(&XaStatement::Work))
                };
                match self.read_leads_xa_work(sql.as_bytes(), rest, is_work)? {
                    Some(work) => work,
                    None => return Ok(Extended::NeedMore),
                }
            }
            false => false,
        };
        if autocommit && (statements.contains(&XaStatement::Work) || work_behind) {
            if tag == frontend::PARSE {
                // A Parse alone runs nothing: the block waits for a batch that executes.
                match batch_executes(rest, self.ctx.config.max_message_bytes)? {
                    Some(true) => {}
                    Some(false) => return Ok(Extended::NotAWrite),
                    None => return Ok(Extended::NeedMore),
                }
            }
            self.begin_xa_implicit_block().await?;
            // Checked in there against AT-mode global locks, as in the client's block.
            return self.guard_extended(rest, tag, sql.as_bytes(), true).await;
        }
        if (self.xa == XaBranch::None || self.tracked.follow_up_in_flight())
            && matches!(
                self.phase,
                super::Phase::Busy {
                    unsynced: false,
                    ..
                }
            )
        {
            // Behind a Sync or Query still unanswered (pgJDBC's autosave sends its
            // SAVEPOINT as a Query between the BEGIN and the statements): only that
            // ReadyForQuery tells whether work in this batch runs in an open block.
            // Let through, this message would leave the batch's work, here or behind
            // it, in the middle of a batch.
            return Ok(Extended::WaitForSyncPoint);
        }
        let work = statements.contains(&XaStatement::Work);
        if tag != frontend::BIND {
            if work && self.phase.tx_status() == Some(TxStatus::InTransaction) {
                // A batch that runs it in the client's block is checked whole from its
                // Parse, at a sync point (guard.rs).
                return self.guard_in_block(rest, tag, sql).await;
            }
            // Preparing a statement changes nothing; the Parse checks refuse the rest.
            return Ok(Extended::NotAWrite);
        }
        match self.bind_in_xa(&statements) {
            Extended::NotAWrite if work && self.xa != XaBranch::None => {
                self.guard_in_block(rest, tag, sql).await
            }
            bound => Ok(bound),
        }
    }

    /// Work of an XA branch in a transaction block (the client's, or tandem's around
    /// autocommit work): its rows must not be ones an AT-mode global transaction holds
    /// (its own too, as on MySQL), and are checked as a write outside a global
    /// transaction is inside the client's transaction (guard.rs). A batch tandem sends
    /// itself makes the block the branch.
    async fn guard_in_block(&mut self, rest: &[u8], tag: u8, sql: &str) -> Result<Extended> {
        let guarded = self
            .guard_extended(rest, tag, sql.as_bytes(), false)
            .await?;
        if self.xa == super::xa::XaBranch::None
            && matches!(
                guarded,
                Extended::Handled {
                    to_backend: Some(_),
                    ..
                }
            )
        {
            self.xa = super::xa::XaBranch::Open;
        }
        Ok(guarded)
    }

    /// A Bind in XA mode of anything but the branch's COMMIT.
    fn bind_in_xa(&mut self, statements: &[super::xa::XaStatement]) -> Extended {
        use super::xa::{XaBranch, XaStatement};
        let refuse =
            |what: &'static str| Extended::RefuseBind(refusal(Error::Unsupported { what }));
        if statements.contains(&XaStatement::Commit) && self.xa != XaBranch::None {
            return refuse(
                "COMMIT of a branch together with other statements over the extended query protocol",
            );
        }
        if self.xa == XaBranch::Implicit
            && statements
                .iter()
                .any(|s| matches!(s, XaStatement::Begin | XaStatement::Rollback))
        {
            // The batch runs in tandem's block, to be prepared at its Sync.
            return refuse(
                "BEGIN or ROLLBACK inside a batch of autocommit work in XA mode (send it in a batch of its own)",
            );
        }
        if statements.contains(&XaStatement::Rollback) {
            if self.xa != XaBranch::None {
                self.next_follow_up = Some(FollowUp::XaRolledBack);
            }
            return Extended::NotAWrite;
        }
        // A rollback bound ahead of it may end the branch's block: the work waits as it
        // would outside a branch.
        let in_branch = matches!(self.xa, XaBranch::Open | XaBranch::Implicit)
            && !self.tracked.follow_up_in_flight();
        if !statements.contains(&XaStatement::Work) || in_branch {
            return Extended::NotAWrite;
        }
        match self.phase {
            super::Phase::Ready(TxStatus::InTransaction) => {
                self.xa = XaBranch::Open;
                Extended::NotAWrite
            }
            // Readable autocommit work got tandem's block at its Parse or Bind
            // (`extended_in_xa`); what is left here is work tandem cannot read.
            super::Phase::Ready(TxStatus::Idle) => refuse(
                "in XA mode, a statement tandem cannot read (COPY, say) over the extended query protocol outside BEGIN … COMMIT (it would commit outside the branch)",
            ),
            super::Phase::Busy {
                unsynced: false, ..
            } => Extended::WaitForSyncPoint,
            // Inside an open block, only Parses (pgJDBC's first run of a statement) or
            // statements that cannot end the block (a SELECT of a composite query) went
            // ahead of it in this batch: it joins the block's branch.
            super::Phase::Busy {
                tx: TxStatus::InTransaction,
                awaiting: 0,
                unsynced: true,
                ..
            } if !self.block_may_have_ended => {
                self.xa = XaBranch::Open;
                Extended::NotAWrite
            }
            _ if self.may_settle() => Extended::SettleFirst,
            _ => refuse(
                "a write in the middle of a pipelined batch that does not run inside an open transaction block, in XA mode",
            ),
        }
    }
}
