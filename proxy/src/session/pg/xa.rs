//! XA mode in a PostgreSQL session: the local transaction is the branch, and its COMMIT
//! becomes `PREPARE TRANSACTION '<tandem's branch id>'`. The lockserver's decision later
//! runs COMMIT PREPARED or ROLLBACK PREPARED on a side connection (`xa::pg`).
//!
//! Owns the branch's life inside the session: when a local transaction becomes a
//! branch, the implicit transaction around an autocommit write, and the client's
//! COMMIT, answered by tandem once the branch is prepared. Invariant: no local
//! transaction of a bound XA session that did work commits on its own; it is prepared
//! under a registered branch, or rolled back.

use super::Relay;
use super::at_extended::Extended;
use super::intercept::Intercepted;
use crate::binding::Mode;
use crate::control::quote_literal;
use crate::error::{Error, Result};
use crate::wire::pg::codes::{backend, target};
use crate::wire::pg::messages::response::{
    Severity, TxStatus, put_command_complete, put_error, put_ready_for_query,
};
use crate::wire::pg::messages::write::put_empty;
use bytes::{BufMut, BytesMut};
use std::time::Duration;
use tandem_lockserver::client::BranchKind;
use tandem_undo::{Analysis, Postgres, analyze, split_statements};

/// The XA branch of the session's current local transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum XaBranch {
    /// No work done yet: the COMMIT, if any, is relayed as it is.
    #[default]
    None,
    /// The client's own transaction block did work: its COMMIT prepares the branch.
    Open,
    /// Autocommit work that tandem wrapped in BEGIN is in flight; the end of the
    /// client's batch prepares the branch (or rolls back what failed): its
    /// ReadyForQuery, a checked write's (`on_write_ready`), or tandem's own answer
    /// (`put_batch_end`), whichever ends it (`end_xa_implicit`). Statements of the
    /// batch that ran ahead under Syncs of tandem's do not.
    Implicit,
}

/// The chained transaction would start after the prepare, outside any branch, where
/// the client believes its next statements run in one transaction it may still roll
/// back; tandem does not carry the transaction's characteristics across the prepare.
pub(super) const CHAINED_XA_COMMIT: Error = Error::Unsupported {
    what: "COMMIT AND CHAIN of a branch in XA mode (send COMMIT, then BEGIN)",
};

/// What a statement means to an XA branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum XaStatement {
    Begin,
    Commit,
    Rollback,
    /// Reads and session statements (SET, SAVEPOINT…): they need no branch.
    Passive,
    /// Anything that may change data, including what tandem cannot parse.
    Work,
}

/// Each statement of `sql` as XA mode treats it. One tandem cannot analyse is work, and
/// the others keep their meaning beside it: the COMMIT of `BEGIN; CREATE TABLE …;
/// COMMIT` would otherwise commit the DDL outside the branch. The client's own
/// `PREPARE TRANSACTION` (or `COMMIT`/`ROLLBACK PREPARED`) among others ends the
/// transaction too. Text with a semicolon that cannot even be split into statements
/// might hide such an end: refused.
pub(super) fn classify(
    sql: &str,
    analyses: &std::result::Result<Vec<Analysis>, tandem_undo::Error>,
) -> Result<Vec<XaStatement>> {
    match analyses {
        Ok(analyses)
            if analyses.len() == 1
                || !crate::control::contains_ignore_case(sql.as_bytes(), b"prepare") =>
        {
            return Ok(analyses.iter().map(xa_statement).collect());
        }
        _ => {}
    }
    match split_statements(&Postgres, sql) {
        Ok(pieces) => Ok(pieces
            .iter()
            .map(|piece| {
                if is_two_phase_statement(piece.as_bytes()) {
                    return XaStatement::Commit;
                }
                match analyze(&Postgres, piece).as_deref() {
                    Ok([analysis]) => xa_statement(analysis),
                    _ => XaStatement::Work,
                }
            })
            .collect()),
        Err(_) if !sql.contains(';') => Ok(vec![XaStatement::Work]),
        Err(_) => Err(Error::Unsupported {
            what: "in XA mode, a query of several statements that tandem cannot split (it could not tell whether one ends the transaction)",
        }),
    }
}

fn xa_statement(analysis: &Analysis) -> XaStatement {
    match analysis {
        Analysis::Begin => XaStatement::Begin,
        Analysis::Commit => XaStatement::Commit,
        Analysis::Rollback => XaStatement::Rollback,
        Analysis::Read | Analysis::LockingRead(_) | Analysis::Savepoint(_) | Analysis::Other => {
            XaStatement::Passive
        }
        Analysis::Write(_) => XaStatement::Work,
    }
}

/// Whether a Query is a COPY that reads its rows from the client (`FROM STDIN`).
fn copies_from_client(sql: &str) -> bool {
    let first = crate::control::leading_words(sql.as_bytes(), false).next();
    first.is_some_and(|w| w.eq_ignore_ascii_case(b"copy"))
        && sql.to_ascii_lowercase().contains("stdin")
}

/// What is refused, of [`is_two_phase_statement`]'s statements, inside a global
/// transaction (at their Parse, Query or Bind).
pub(super) const TWO_PHASE_REFUSED: &str = "the client's own two-phase commit (PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED) inside a global transaction";

/// `PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`: the client's own
/// two-phase commit. Outside a global transaction they pass through untouched; inside
/// one they would take the local transaction away from its branch.
pub(super) fn is_two_phase_statement(sql: &[u8]) -> bool {
    let mut words = crate::control::leading_words(sql, false);
    match (words.next(), words.next()) {
        (Some(a), Some(b)) => {
            (a.eq_ignore_ascii_case(b"prepare") && b.eq_ignore_ascii_case(b"transaction"))
                || ((a.eq_ignore_ascii_case(b"commit") || a.eq_ignore_ascii_case(b"rollback"))
                    && b.eq_ignore_ascii_case(b"prepared"))
        }
        _ => false,
    }
}

impl Relay<'_> {
    /// The mode of the session's current local transaction: the one its branch started
    /// in, else the session's choice, else the resource's.
    pub(super) fn branch_mode(&self) -> Mode {
        if self.xa != XaBranch::None {
            return Mode::Xa;
        }
        if !self.branch.is_empty() {
            return Mode::At;
        }
        self.binding.mode().unwrap_or(self.ctx.config.mode)
    }

    /// A simple Query of a bound session in XA mode.
    pub(super) async fn intercept_xa(&mut self, sql: &str) -> Result<Intercepted> {
        if self.xa == XaBranch::Implicit {
            // Between the messages of an extended-protocol batch that runs in tandem's
            // block (a COMMIT here would commit its work outside the branch): the block
            // fails, and tandem ends it at this Query's ReadyForQuery, with nothing in
            // flight behind it.
            return Ok(Intercepted::ReplaceAndHold(self.refusal_query(
                Error::Unsupported {
                    what: "a simple Query inside a batch of autocommit work in XA mode",
                },
            )));
        }
        let mut statements = match classify(sql, &analyze(&Postgres, sql)) {
            Ok(statements) => statements,
            Err(e) => return Ok(self.refuse(e)),
        };
        if !statements.contains(&XaStatement::Work)
            && !matches!(self.writing_function_in(sql).await, Ok(None))
        {
            // A read through a function that may write is work of the branch too (as
            // is one whose functions could not be looked up).
            statements.push(XaStatement::Work);
        }
        let ends = statements.iter().any(|s| {
            matches!(
                s,
                XaStatement::Begin | XaStatement::Commit | XaStatement::Rollback
            )
        });
        if statements.len() > 1 && ends {
            return Ok(self.refuse(Error::Unsupported {
                what: "a multi-statement query that begins or ends a transaction, in XA mode",
            }));
        }
        let status = self.phase.tx_status();
        match statements.first() {
            Some(XaStatement::Commit) if self.xa == XaBranch::Open && super::at::chains(sql) => {
                Ok(self.refuse(CHAINED_XA_COMMIT))
            }
            Some(XaStatement::Commit) if self.xa == XaBranch::Open => {
                if !self.phase.at_sync_point() {
                    return Ok(Intercepted::WaitForSyncPoint);
                }
                if status == Some(TxStatus::Failed) {
                    // PostgreSQL answers it with ROLLBACK: there is nothing to prepare.
                    self.xa = XaBranch::None;
                    return Ok(Intercepted::Relay);
                }
                let outcome = self.prepare_xa_branch().await?;
                let mut out = BytesMut::new();
                match outcome {
                    Ok(()) => put_command_complete(&mut out, "COMMIT"),
                    Err(failure) => failure.put(&mut out),
                }
                put_ready_for_query(&mut out, TxStatus::Idle);
                self.phase = super::Phase::Ready(TxStatus::Idle);
                self.binding.on_local_transaction_end();
                self.forget_resolutions_of_ended_transaction();
                Ok(Intercepted::Answer(out))
            }
            // The branch stays until it has run, at its CommandComplete (follow_up.rs):
            // behind extended messages with no Sync, an error among them makes the
            // backend skip it.
            Some(XaStatement::Rollback) => {
                if self.xa != XaBranch::None {
                    self.next_follow_up = Some(super::follow_up::FollowUp::XaRolledBack);
                }
                Ok(Intercepted::Relay)
            }
            _ if statements.contains(&XaStatement::Work) => {
                if !self.phase.at_sync_point() {
                    return Ok(Intercepted::WaitForSyncPoint);
                }
                match status {
                    Some(TxStatus::Idle) if copies_from_client(sql) => {
                        // Its CopyData would wait behind the held statement for good.
                        Ok(self.refuse(Error::Unsupported {
                            what: "COPY … FROM STDIN as an autocommit statement in XA mode (run it inside BEGIN … COMMIT)",
                        }))
                    }
                    Some(TxStatus::Idle) => {
                        // An autocommit statement: its own branch, in a transaction of
                        // tandem's that ends in the prepare, checked in there as in the
                        // client's own.
                        self.begin_xa_implicit_block().await?;
                        let held = |query: BytesMut| Intercepted::ReplaceAndHold(query);
                        Ok(match self.guard_query(sql.as_bytes(), true).await? {
                            Intercepted::Replace(refusal) => held(refusal),
                            // Ended by guard.rs's answer (`put_batch_end`).
                            answered @ (Intercepted::Answer(_) | Intercepted::SentAndHold) => {
                                answered
                            }
                            Intercepted::Relay => {
                                let mut query = BytesMut::new();
                                crate::wire::pg::messages::simple::put_query(&mut query, sql);
                                held(query)
                            }
                            // Not from a check at a sync point; never let through
                            // unchecked.
                            Intercepted::WaitForSyncPoint | Intercepted::ReplaceAndHold(_) => {
                                held(self.refusal_query(Error::Unsupported {
                                    what: "an XA-mode write whose check against global locks could not run at a sync point",
                                }))
                            }
                        })
                    }
                    // A failed block that the Query's ROLLBACK TO SAVEPOINT may revive (a
                    // plain ROLLBACK among others was refused above): what follows runs
                    // in the block, which is the branch then. A block left failed
                    // prepares nothing: its COMMIT is a ROLLBACK.
                    Some(TxStatus::Failed) => {
                        self.xa = XaBranch::Open;
                        Ok(Intercepted::Relay)
                    }
                    Some(TxStatus::InTransaction) => {
                        self.xa = XaBranch::Open;
                        // Its rows must not be ones an AT-mode global transaction holds
                        // (its own too, as on MySQL, where that rollback would wait on
                        // this branch's row locks): checked as a write outside a global
                        // transaction is (guard.rs).
                        self.guard_query(sql.as_bytes(), false).await
                    }
                    _ => Ok(Intercepted::Relay),
                }
            }
            _ => Ok(Intercepted::Relay),
        }
    }

    /// Begins tandem's block around autocommit work of an XA-mode session: the work
    /// runs and is checked in it, and the end of the client's batch prepares it as a
    /// branch (`end_xa_implicit`).
    pub(super) async fn begin_xa_implicit_block(&mut self) -> Result<()> {
        self.exchange_required("BEGIN").await?;
        self.phase = super::Phase::Ready(TxStatus::InTransaction);
        self.xa = XaBranch::Implicit;
        tracing::debug!(parent: self.binding.span(), "autocommit work runs in tandem's block");
        Ok(())
    }

    /// COMMIT of an open XA branch over the extended protocol (`[Parse] Bind [Describe]
    /// Execute Sync`, as pgx and other drivers send it): the branch is prepared as over
    /// the simple protocol, and tandem answers the batch as the backend answers COMMIT.
    pub(super) async fn xa_commit_extended(&mut self, rest: &[u8], tag: u8) -> Result<Extended> {
        if self.block_stays_failed() {
            // PostgreSQL answers it with ROLLBACK: there is nothing to prepare. The
            // branch ends once it has run: a Parse, or a Bind never executed, leaves
            // the block to be revived by a ROLLBACK TO.
            if tag == crate::wire::pg::codes::frontend::BIND {
                self.next_follow_up = Some(super::follow_up::FollowUp::XaRolledBack);
            }
            return Ok(Extended::NotAWrite);
        }
        if let Some(instead) = self.unless_at_sync_point(
            tag,
            "COMMIT of a branch in the middle of a pipelined batch (send it as [Parse] Bind [Describe] Execute Sync)",
        ) {
            return Ok(instead);
        }
        // Preparing COMMIT runs nothing (relayed); its Bind comes back here.
        let batch = match self
            .batch_to_run(
                rest,
                tag,
                "COMMIT of a branch followed by Flush before its Sync",
                true,
            )
            .await?
        {
            Ok(batch) => batch,
            Err(instead) => return Ok(instead),
        };
        let mut out = BytesMut::new();
        if let Some(frame) = batch.parse_frame {
            // The client's statement, created as it thinks, before anything is
            // prepared: a Parse the backend refuses (a name in use) fails the block,
            // as it would have without tandem, and nothing is prepared.
            if let Some((code, message)) = self.create_statement(frame, &frame[5..]).await? {
                put_error(&mut out, Severity::Error, &code, &message);
                put_ready_for_query(&mut out, TxStatus::Failed);
                self.phase = super::Phase::Ready(TxStatus::Failed);
                return self.answered(&out, batch.len).await;
            }
            put_empty(&mut out, backend::PARSE_COMPLETE);
        }
        let outcome = self.prepare_xa_branch().await?;
        self.phase = super::Phase::Ready(TxStatus::Idle);
        self.binding.on_local_transaction_end();
        self.forget_resolutions_of_ended_transaction();
        // COMMIT takes no parameter and returns no rows.
        let put_description = |out: &mut BytesMut| match batch.describe {
            Some((target::STATEMENT, _)) => {
                out.put_u8(backend::PARAMETER_DESCRIPTION);
                out.put_i32(6);
                out.put_i16(0);
                put_empty(out, backend::NO_DATA);
            }
            Some(_) => put_empty(out, backend::NO_DATA),
            None => {}
        };
        if batch.describe_before_bind {
            put_description(&mut out);
        }
        put_empty(&mut out, backend::BIND_COMPLETE);
        if !batch.describe_before_bind {
            put_description(&mut out);
        }
        match outcome {
            Ok(()) => put_command_complete(&mut out, "COMMIT"),
            Err(failure) => failure.put(&mut out),
        }
        put_ready_for_query(&mut out, TxStatus::Idle);
        self.answered(&out, batch.len).await
    }

    /// ReadyForQuery of an autocommit statement tandem wrapped: prepare its branch (or
    /// roll back what failed), and tell the client the session is idle, as it would be.
    pub(super) async fn on_xa_implicit_ready(&mut self, body: &[u8]) -> Result<BytesMut> {
        let status = self.on_block_ending_ready(body)?;
        let held_complete = self.held_complete.take();
        self.end_xa_implicit(status, held_complete, None).await
    }

    /// Ends tandem's block around XA autocommit work, in `status`: its branch prepared
    /// if the work went through, else rolled back. `refused` is tandem's error for the
    /// work (a checked write that met a global lock, guard.rs), which failed the block;
    /// `held_complete` the work's CommandComplete, which the client gets only if its
    /// work stays. Returns the rest of the client's answer, ReadyForQuery 'I' last.
    pub(super) async fn end_xa_implicit(
        &mut self,
        status: TxStatus,
        held_complete: Option<BytesMut>,
        refused: Option<(String, String)>,
    ) -> Result<BytesMut> {
        self.xa = XaBranch::None;
        let mut out = BytesMut::new();
        if let Some((code, message)) = refused {
            put_error(&mut out, Severity::Error, &code, &message);
            self.roll_back_local().await?;
        } else if status == TxStatus::InTransaction {
            match self.prepare_xa_branch().await? {
                Ok(()) => out.extend_from_slice(held_complete.as_deref().unwrap_or_default()),
                Err(failure) => failure.put(&mut out),
            }
        } else {
            // The statement failed (the client has its error): nothing to prepare.
            out.extend_from_slice(held_complete.as_deref().unwrap_or_default());
            self.roll_back_local().await?;
        }
        self.phase = super::Phase::Ready(TxStatus::Idle);
        self.binding.on_local_transaction_end();
        self.forget_resolutions_of_ended_transaction();
        put_ready_for_query(&mut out, TxStatus::Idle);
        Ok(out)
    }

    /// Registers the branch and prepares the local transaction under its id. Either
    /// way the local transaction is over afterwards. `Ok(Err(..))` is the error the
    /// client gets for its COMMIT.
    async fn prepare_xa_branch(&mut self) -> Result<std::result::Result<(), CommitFailure>> {
        self.xa = XaBranch::None;
        let Some(xid) = self.binding.xid().cloned() else {
            self.roll_back_local().await?;
            return Ok(Err(CommitFailure::of(&Error::NotBound)));
        };
        let resource = self.resource.clone();
        self.ctx.phase2.serve(&resource);
        let registered = self
            .ctx
            .lock
            .register_branch(&xid, &resource, BranchKind::XA, &[], Duration::ZERO)
            .await;
        let branch_id = match registered {
            Ok(id) => id,
            Err(e) => {
                self.binding.on_registration_refused(&e);
                self.roll_back_local().await?;
                return Ok(Err(CommitFailure::of(&Error::from(e))));
            }
        };
        let gid = crate::xa::gid(&xid, branch_id);
        let prepared = self
            .exchange_simple(&format!("PREPARE TRANSACTION {}", quote_literal(&gid)))
            .await?;
        let success = prepared.error.is_none();
        if !success && prepared.status != Some(TxStatus::Idle) {
            // Cancelled before it ran (the client's statement_timeout): the block is
            // failed, not over, and the client is told it is.
            self.roll_back_local().await?;
        }
        // The client's answer waits for the report: the global commit waits for every
        // XA branch's, so a client told its COMMIT went through lets its transaction
        // commit.
        let reported = self.ctx.lock.report(&xid, branch_id, success).await;
        if success
            && let Err(e) = &reported
            && e.transaction_is_over()
        {
            // Decided without this branch in the meantime (a timeout): no phase 2 will
            // come for it, and recovery would hold its locks until xa_orphan_after_ms.
            let gid = quote_literal(&gid);
            if let Some(e) = self
                .exchange_simple(&format!("ROLLBACK PREPARED {gid}"))
                .await?
                .error
            {
                tracing::warn!(parent: &self.binding.branch_span(&xid, branch_id), error = %e.message, "ROLLBACK PREPARED of a branch its transaction ended without failed");
            }
        }
        match prepared.error {
            // Prepared, but the lockserver does not know: the global transaction cannot
            // commit, and the branch follows its rollback.
            None if reported.is_err() => {
                let e = Error::from(
                    reported
                        .err()
                        .unwrap_or(tandem_lockserver::Error::ShuttingDown),
                );
                tracing::warn!(parent: &self.binding.branch_span(&xid, branch_id), error = %e, "phase-1 report failed");
                Ok(Err(CommitFailure::of(&e)))
            }
            None => {
                tracing::debug!(parent: &self.binding.branch_span(&xid, branch_id), %gid, "XA branch prepared");
                Ok(Ok(()))
            }
            // A failed PREPARE TRANSACTION rolls the transaction back. The client gets
            // the server's error whole: a deferred constraint names itself in it, as
            // the COMMIT would have, for ORMs that map errors by constraint.
            Some(e) => Ok(Err(match prepared.error_response {
                Some(whole) => CommitFailure::Server(whole),
                None => CommitFailure::Tandem(e.code, e.message),
            })),
        }
    }
}

/// Why a branch's COMMIT failed, as the client gets it.
enum CommitFailure {
    /// The server's own ErrorResponse, whole (DETAIL, constraint, table and all).
    Server(Vec<u8>),
    /// tandem's: SQLSTATE and message.
    Tandem(String, String),
}

impl CommitFailure {
    fn of(e: &Error) -> Self {
        CommitFailure::Tandem(e.sqlstate().code().to_owned(), e.to_string())
    }

    fn put(&self, out: &mut BytesMut) {
        match self {
            CommitFailure::Server(whole) => out.extend_from_slice(whole),
            CommitFailure::Tandem(code, message) => {
                put_error(out, Severity::Error, code, message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_phase_statements_are_recognised_past_comments_and_case() {
        for yes in [
            "PREPARE TRANSACTION 'x'",
            "  prepare\ttransaction 'x'",
            "/* c */ COMMIT PREPARED 'x'",
            "-- c\nrollback prepared 'x'",
        ] {
            assert!(is_two_phase_statement(yes.as_bytes()), "{yes}");
        }
        for no in [
            "PREPARE p AS SELECT 1",
            "COMMIT",
            "ROLLBACK",
            "COMMIT AND CHAIN",
            "SELECT 'PREPARE TRANSACTION'",
            "",
            "/* unterminated",
        ] {
            assert!(!is_two_phase_statement(no.as_bytes()), "{no}");
        }
    }
}
