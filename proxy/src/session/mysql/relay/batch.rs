//! A multi-statement query of writes alone, as a driver's batch rewriting sends it
//! (Connector/J's `rewriteBatchedStatements` makes an UPDATE or DELETE batch one
//! `UPDATE …; UPDATE …` query): tandem runs it one statement at a time, each as the
//! session would run it sent alone, captured in AT mode or checked row by row outside a
//! global transaction. Judged whole, such a query could only be refused in AT mode, and
//! outside one it waited for every global lock on its tables.
//!
//! The statements' replies make one reply, as the server's to the whole query would:
//! numbered on, flagged SERVER_MORE_RESULTS_EXISTS but the last, and ended by the first
//! error, after which the server runs nothing. Each statement is its own transaction
//! in autocommit, as sent directly; what ran before an error stays, as it does there.

use super::Relay;
use super::at::Source;
use super::client_side::Handled;
use crate::error::Result;
use crate::wire::mysql::messages::response::continue_multi_result;
use bytes::BytesMut;
use tandem_undo::{Analysis, Write};

/// How each statement of the batch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Statementwise {
    /// In a session bound in AT mode: captured.
    Captured,
    /// Outside a global transaction: its rows checked against the global locks.
    Checked,
}

/// The statements of the multi-statement query `text`, each with its write, if every one
/// is a write; None otherwise, or if the texts do not split as `analyses` counts them.
pub(super) fn writes_alone(text: &str, analyses: Vec<Analysis>) -> Option<Vec<(&str, Write)>> {
    if tandem_undo::has_empty_mysql_statement(text) {
        // The server stops at an empty statement (or answers a trailing comment) where
        // the split statements say nothing.
        return None;
    }
    let texts = tandem_undo::split_mysql_statements(text).ok()?;
    if texts.len() != analyses.len() {
        return None;
    }
    texts
        .into_iter()
        .zip(analyses)
        .map(|(text, analysis)| match analysis {
            Analysis::Write(write) => Some((text, write)),
            _ => None,
        })
        .collect()
}

impl Relay<'_> {
    /// Runs `statements` (a multi-statement query's, at a sync point) one at a time
    /// and answers with their replies as one (see the module comment).
    pub(super) async fn writes_in_turn(
        &mut self,
        how: Statementwise,
        statements: Vec<(&str, Write)>,
    ) -> Result<Handled> {
        let deprecate_eof = self.exchange.server.deprecate_eof;
        let count = statements.len();
        let mut reply = BytesMut::new();
        let mut seq = 1;
        for (i, (text, write)) in statements.into_iter().enumerate() {
            let start = self.to_client.len();
            let source = Source::Query(text);
            match how {
                Statementwise::Captured => {
                    // A statement that failed before this one ended the reply: the
                    // branch's local transaction is as the last OK left it.
                    self.at_write(&write, &source).await?;
                }
                Statementwise::Checked => {
                    match self.guard_write(text, &write, &source).await? {
                        Some(Handled::Answer) => {}
                        None => self.run_as_sent(&source).await?,
                        // Only away from a sync point, which tandem's own statements
                        // never leave: never run unchecked for it.
                        Some(_) => self.put_error(&crate::error::Error::Unsupported {
                            what: "a statement of a multi-statement query that tandem could not check in turn",
                        }),
                    }
                }
            }
            let mut answer = self.to_client.split_off(start);
            let (next, failed) =
                continue_multi_result(&mut answer, seq, i + 1 < count, deprecate_eof);
            reply.extend_from_slice(&answer);
            seq = next;
            if failed {
                // After a failed statement ROW_COUNT() is -1, whoever failed it.
                self.row_count_after_write = Some(-1);
                break;
            }
        }
        self.to_client.extend_from_slice(&reply);
        Ok(Handled::Answer)
    }

    /// Runs one statement of a batch as the client sent it, unchecked (what
    /// `guard_write` lets go on as sent), and answers with its reply.
    async fn run_as_sent(&mut self, source: &Source<'_>) -> Result<()> {
        let around = self.around_write(None, source, None).await?;
        match around.write {
            Ok(ok) => {
                self.exchange.on_authenticated(ok.status);
                self.answer_write(&ok, around.returned);
            }
            Err(e) => self.put_failure(&super::at::AtFailure::Server(e)),
        }
        Ok(())
    }
}
