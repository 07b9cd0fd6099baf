//! Multi-statement simple queries in a bound AT session (`UPDATE …; INSERT …; COMMIT`).
//!
//! tandem sends the statements one at a time, each captured like a query of its own,
//! and the client sees what the backend would have answered for the whole query: every
//! statement's replies, and one ReadyForQuery at the end. Invariant: the statements run
//! in one local transaction, as PostgreSQL runs a multi-statement query (tandem opens
//! it when the query ran outside a block, and ends it: committed through the branch's
//! commit protocol, or rolled back after an error).

use super::Relay;
use super::intercept::Intercepted;
use super::tracked::SyncKind;
use crate::at::branch::Branch;
use crate::error::{Error, Result};
use crate::wire::pg::messages::response::{
    Severity, TxStatus, put_command_complete, put_error, put_ready_for_query,
};
use crate::wire::pg::messages::simple::put_query;
use bytes::BytesMut;
use std::collections::VecDeque;
use tandem_undo::{Analysis, Postgres, split_statements};

/// A multi-statement query in flight.
pub(super) struct Script {
    /// Statements not sent yet, with their analyses.
    rest: VecDeque<(String, Analysis)>,
    /// The query ran outside a transaction block: tandem opened one and ends it.
    implicit: bool,
    /// The query ended with COMMIT: tandem runs the commit protocol and answers it.
    commit_at_end: bool,
}

impl Relay<'_> {
    /// Starts a multi-statement query, or refuses a shape tandem cannot run exactly.
    pub(super) async fn start_script(
        &mut self,
        sql: &str,
        analyses: Vec<Analysis>,
    ) -> Result<Intercepted> {
        let pieces = match split_statements(&Postgres, sql) {
            Ok(pieces) if pieces.len() == analyses.len() => pieces,
            Ok(_) => {
                return Ok(self.refuse(Error::Unsupported {
                    what: "a multi-statement query tandem cannot split into its statements",
                }));
            }
            Err(e) => return Ok(self.refuse(Error::Undo(e))),
        };
        let last = analyses.len() - 1;
        // `ROLLBACK; BEGIN; …` ends the block (a failed one too) and opens the next: the
        // rest runs in that block, as it would sent on its own. A ROLLBACK followed by
        // anything else would leave the rest in one implicit transaction, which tandem
        // does not open behind it.
        let rolls_back_first = matches!(
            analyses.as_slice(),
            [Analysis::Rollback, Analysis::Begin, ..]
        );
        for (i, a) in analyses.iter().enumerate() {
            let refused = match a {
                Analysis::Begin if i == 1 && rolls_back_first => None,
                Analysis::Rollback if i == 0 && rolls_back_first => None,
                Analysis::Begin if i != 0 => Some("BEGIN after the first statement of a query"),
                Analysis::Commit if i != last => {
                    Some("COMMIT before the last statement of a query")
                }
                // tandem commits the script's branch itself, with a plain COMMIT: the
                // chained transaction would not open.
                Analysis::Commit if super::at::chains(pieces[i]) => {
                    Some("COMMIT AND CHAIN in a multi-statement query (send it alone)")
                }
                Analysis::Rollback => Some("ROLLBACK in a multi-statement query"),
                Analysis::LockingRead(None) => Some(
                    "SELECT … FOR UPDATE over a join or a derived table inside a global transaction (lock the rows of one table, choosing them with a subquery: WHERE id IN (SELECT …))",
                ),
                _ => None,
            };
            if let Some(what) = refused {
                // In a failed block the backend would answer a refusal's query with
                // 25P02: tandem answers it itself.
                return Ok(self.refuse_or_answer(Error::Unsupported { what }));
            }
        }
        if !self.phase.at_sync_point() {
            return Ok(Intercepted::WaitForSyncPoint);
        }
        // In a failed block only a script that starts with ROLLBACK TO SAVEPOINT gets
        // here (`intercept_at` relays the others; ROLLBACK and an early COMMIT are
        // refused above): it brings the block back, and what follows it runs.
        let status = self.phase.tx_status();
        let mut rest: VecDeque<(String, Analysis)> = pieces
            .into_iter()
            .map(str::to_owned)
            .zip(analyses)
            .collect();
        let commit_at_end = matches!(rest.back(), Some((_, Analysis::Commit)));
        if commit_at_end {
            rest.pop_back();
        }
        let opens_block = rolls_back_first || matches!(rest.front(), Some((_, Analysis::Begin)));
        let implicit = status == Some(TxStatus::Idle) && !opens_block;
        if implicit
            && let Some(statement) = rest.iter().find_map(|(_, a)| match a {
                Analysis::Savepoint(op) => Some(op.statement()),
                _ => None,
            })
        {
            // The server runs the query in an implicit transaction, not a block, and
            // fails it whole there; tandem's block for the script would let it run.
            return Ok(self.refuse(Error::ServerError {
                state: crate::wire::pg::sqlstate::SqlState::NoActiveSqlTransaction,
                message: format!("{statement} can only be used in transaction blocks"),
            }));
        }
        if implicit {
            self.exchange_required("BEGIN").await?;
            self.phase = super::Phase::Ready(TxStatus::InTransaction);
        }
        self.script = Some(Script {
            rest,
            implicit,
            commit_at_end,
        });
        match self.next_script_statement().await? {
            Some(Some(query)) => Ok(Intercepted::ReplaceAndHold(query)),
            Some(None) => Ok(Intercepted::SentAndHold),
            // Only BEGIN … COMMIT with nothing between: end it at once.
            None => {
                let answer = self.finish_script(TxStatus::InTransaction, false).await?;
                Ok(Intercepted::Answer(answer))
            }
        }
    }

    /// The next statement, captured like a query of its own: the Query to send, or
    /// `Some(None)` when tandem sent it already (pipelined behind its before image).
    async fn next_script_statement(&mut self) -> Result<Option<Option<BytesMut>>> {
        let Some((sql, analysis)) = self.script.as_mut().and_then(|s| s.rest.pop_front()) else {
            return Ok(None);
        };
        let intercepted = match analysis {
            Analysis::Write(write) => self.begin_write(&sql, write).await?,
            Analysis::LockingRead(Some(read)) => match self.check_read_locks(&read, &[]).await {
                Ok(()) => Intercepted::Relay,
                Err(e) => self.refuse(e),
            },
            Analysis::Other => {
                self.branch.forget_all_after();
                Intercepted::Relay
            }
            Analysis::Savepoint(op) => match self.on_savepoint_statement(&op) {
                Ok(()) => Intercepted::Relay,
                Err(e) => self.refuse(e),
            },
            _ => Intercepted::Relay,
        };
        let query = match intercepted {
            Intercepted::SentAndHold => return Ok(Some(None)),
            Intercepted::Replace(query) | Intercepted::ReplaceAndHold(query) => query,
            _ => {
                let mut query = BytesMut::new();
                put_query(&mut query, &sql);
                query
            }
        };
        Ok(Some(Some(query)))
    }

    /// ReadyForQuery of one statement of the script: send the next one (the client does
    /// not see this ReadyForQuery), or end the script. Returns what the client gets.
    pub(super) async fn on_script_ready(&mut self, body: &[u8]) -> Result<BytesMut> {
        let backend_status =
            TxStatus::decode(body).ok_or(Error::UpstreamProtocol("bad ReadyForQuery"))?;
        let mut out = BytesMut::new();
        let (status, error) = if self.write_in_flight.is_some() {
            // Records the write's rows; tandem, not the write, owns the transaction.
            let _ =
                self.on_server_message(crate::wire::pg::codes::backend::READY_FOR_QUERY, body)?;
            self.finish_write(backend_status).await?
        } else {
            let _ =
                self.on_server_message(crate::wire::pg::codes::backend::READY_FOR_QUERY, body)?;
            (backend_status, None)
        };
        if let Some((code, message)) = &error {
            // The write could not stay: its transaction is rolled back, or failed (its
            // held CommandComplete with it). A failed one that tandem opened for the
            // script ends here, as PostgreSQL ends a failed query sent outside a block.
            self.held_complete = None;
            put_error(&mut out, Severity::Error, code, message);
            let implicit = self.script.take().is_some_and(|script| script.implicit);
            let status = if implicit && status == TxStatus::Failed {
                self.roll_back_scripts_block().await?
            } else {
                status
            };
            self.finish_status(status, &mut out);
            return Ok(out);
        }
        let failed = status == TxStatus::Failed;
        if !failed && let Some(query) = self.next_script_statement().await? {
            if let Some(query) = query {
                self.write_server(&query).await?;
            }
            self.tracked.on_sync_point_request(SyncKind::Query);
            self.phase = self.phase.on_request(true);
            return Ok(out);
        }
        let end = self.finish_script(status, failed).await?;
        out.extend_from_slice(&end);
        Ok(out)
    }

    /// Rolls back the block tandem opened for a failed script, as PostgreSQL ends a
    /// failed query sent outside a block; returns the status after it.
    async fn roll_back_scripts_block(&mut self) -> Result<TxStatus> {
        self.roll_back_local().await?;
        self.branch = Branch::default();
        Ok(TxStatus::Idle)
    }

    /// Ends the script's transaction as PostgreSQL would have ended the query's.
    async fn finish_script(&mut self, status: TxStatus, failed: bool) -> Result<BytesMut> {
        let Some(script) = self.script.take() else {
            return Ok(BytesMut::new());
        };
        let mut out = BytesMut::new();
        let held_complete = self.held_complete.take();
        if failed {
            // An earlier statement's, sent as the backend would have.
            out.extend_from_slice(held_complete.as_deref().unwrap_or_default());
            let status = if script.implicit {
                self.roll_back_scripts_block().await?
            } else {
                status
            };
            self.finish_status(status, &mut out);
            return Ok(out);
        }
        if !(script.implicit || script.commit_at_end) {
            out.extend_from_slice(held_complete.as_deref().unwrap_or_default());
            self.finish_status(status, &mut out);
            return Ok(out);
        }
        match self.commit_branch().await? {
            None if script.commit_at_end => put_command_complete(&mut out, "COMMIT"),
            None => out.extend_from_slice(held_complete.as_deref().unwrap_or_default()),
            Some((code, message)) => put_error(&mut out, Severity::Error, &code, &message),
        }
        self.finish_status(TxStatus::Idle, &mut out);
        Ok(out)
    }

    /// Whether the query in flight runs in a transaction tandem opened and commits
    /// itself at its ReadyForQuery (see `held_complete`): an autocommit write (AT, or
    /// checked outside a global transaction), an XA autocommit statement, or a
    /// multi-statement query sent outside a block.
    /// Not while extended messages are unsynced: a client that ends its batch with
    /// Flush waits for the CommandComplete before it sends the Sync whose
    /// ReadyForQuery would release it (and over the extended protocol PostgreSQL itself
    /// commits at the Sync, after the CommandComplete).
    pub(super) fn ends_implicit_transaction_itself(&self) -> bool {
        if self.phase.unsynced() {
            return false;
        }
        self.xa == super::xa::XaBranch::Implicit
            || self.write_in_flight.as_ref().is_some_and(|w| w.implicit)
            || self
                .script
                .as_ref()
                .is_some_and(|s| s.implicit && !s.commit_at_end)
    }

    fn finish_status(&mut self, status: TxStatus, out: &mut BytesMut) {
        self.phase = super::Phase::Ready(status);
        self.pool_resets
            .on_script_end(self.tracked.batch_being_sent());
        if status == TxStatus::Idle {
            self.binding.on_local_transaction_end();
            self.forget_resolutions_of_ended_transaction();
        }
        put_ready_for_query(out, status);
    }
}
