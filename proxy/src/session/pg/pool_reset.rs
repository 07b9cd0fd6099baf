//! Pool resets (RESET ALL, DISCARD ALL) on their way to unbinding a session: a pool's
//! way of handing the connection to its next user, who must not write inside this
//! user's global transaction.
//!
//! A reset unbinds only once it has run and stayed, never at the sight of it: one the
//! server refused, one an earlier error kept from running, or one a rollback undid
//! (RESET ALL runs inside transactions and goes with them) changes nothing, and the
//! client's next writes still belong to its global transaction. What the server did
//! is known from the replies to the batch that carried the reset (a batch: the
//! messages up to a Sync, a Query, or a FunctionCall, numbered as `Tracked` numbers
//! them), and pipelined batches may carry a reset each. Pure bookkeeping: no I/O.

use std::collections::VecDeque;

/// Where one reset stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Sent; not run (yet).
    Sent,
    /// Its CommandComplete came, and no error or rollback after it in its batch.
    Ran,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reset {
    batch: u64,
    state: State,
}

/// What the session's binding must do at a batch's ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Keep,
    /// Outside a transaction block: unbind now.
    Unbind,
    /// Inside one: the binding ends with it (its branch commits or rolls back in the
    /// global transaction first).
    UnbindAtTransactionEnd,
}

#[derive(Debug, Default)]
pub(super) struct PoolResets {
    /// Oldest batch first.
    pending: VecDeque<Reset>,
}

impl PoolResets {
    /// The client sent a reset in batch `batch`.
    pub fn sent(&mut self, batch: u64) {
        if self.pending.back().is_some_and(|r| r.batch == batch) {
            return;
        }
        self.pending.push_back(Reset {
            batch,
            state: State::Sent,
        });
    }

    /// A CommandComplete with `tag` in batch `batch`: a RESET there is the reset run.
    /// (Another RESET in the same batch, of one setting, cannot be told from it; a
    /// client does not send both.)
    pub fn on_command_complete(&mut self, tag: &[u8], batch: u64) {
        let ran = match tag {
            b"RESET" => true,
            // It undoes a reset that ran in its transaction (or after the savepoint).
            b"ROLLBACK" => false,
            _ => return,
        };
        if let Some(reset) = self.in_batch(batch) {
            reset.state = if ran { State::Ran } else { State::Sent };
        }
    }

    /// An ErrorResponse in batch `batch`: it rolls back the batch's implicit transaction,
    /// or fails its block, and a reset that ran before it with either.
    pub fn on_error(&mut self, batch: u64) {
        if let Some(reset) = self.in_batch(batch) {
            reset.state = State::Sent;
        }
    }

    /// The ReadyForQuery of batch `batch`, with the transaction `in_block` after it.
    /// A reset of a script (`next_of_script`: the batch of the script's next statement,
    /// which tandem sends one at a time) that has not run yet may still be ahead.
    pub fn on_ready(&mut self, batch: u64, in_block: bool, next_of_script: Option<u64>) -> Verdict {
        let mut verdict = Verdict::Keep;
        while let Some(reset) = self.pending.front().copied() {
            if reset.batch > batch {
                break;
            }
            self.pending.pop_front();
            // An earlier batch's, whose ReadyForQuery never came: a Sync the backend
            // ignored in copy-in mode, which merged the batch into the next one.
            // Dropped as never run, though it may have: a RESET ALL and a COPY in one
            // batch is left bound (see the closing notes).
            if reset.batch < batch {
                continue;
            }
            match (reset.state, next_of_script) {
                (State::Ran, _) if in_block => verdict = Verdict::UnbindAtTransactionEnd,
                (State::Ran, _) => verdict = Verdict::Unbind,
                (State::Sent, Some(next)) => {
                    self.pending.push_front(Reset {
                        batch: next,
                        state: State::Sent,
                    });
                    break;
                }
                (State::Sent, None) => {}
            }
        }
        verdict
    }

    /// No reset is on its way: the replies need not be looked at.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// tandem answered batch `batch` itself: nothing of it reached the server.
    pub fn forget(&mut self, batch: u64) {
        self.pending.retain(|r| r.batch != batch);
    }

    /// A script is over: a reset it did not reach never ran.
    pub fn on_script_end(&mut self, next_batch: u64) {
        self.pending.retain(|r| r.batch < next_batch);
    }

    fn in_batch(&mut self, batch: u64) -> Option<&mut Reset> {
        self.pending.iter_mut().find(|r| r.batch == batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_unbinds_once_its_batch_ran_it_and_kept_it() {
        let mut resets = PoolResets::default();
        resets.sent(1);
        resets.on_command_complete(b"RESET", 1);
        assert_eq!(resets.on_ready(1, false, None), Verdict::Unbind);

        resets.sent(2);
        resets.on_command_complete(b"RESET", 2);
        assert_eq!(
            resets.on_ready(2, true, None),
            Verdict::UnbindAtTransactionEnd
        );

        // Never ran: an error came first.
        resets.sent(3);
        assert_eq!(resets.on_ready(3, false, None), Verdict::Keep);
        // Ran, then an error, or a rollback, undid it.
        resets.sent(4);
        resets.on_command_complete(b"RESET", 4);
        resets.on_error(4);
        assert_eq!(resets.on_ready(4, false, None), Verdict::Keep);
        resets.sent(5);
        resets.on_command_complete(b"RESET", 5);
        resets.on_command_complete(b"ROLLBACK", 5);
        assert_eq!(resets.on_ready(5, false, None), Verdict::Keep);
    }

    #[test]
    fn pipelined_batches_each_answer_for_their_own_reset() {
        let mut resets = PoolResets::default();
        // Batch 1 carries a RESET of one setting, not a pool reset; batch 2 the pool's.
        resets.sent(2);
        resets.on_command_complete(b"RESET", 1);
        assert_eq!(resets.on_ready(1, false, None), Verdict::Keep);
        resets.on_command_complete(b"RESET", 2);
        assert_eq!(resets.on_ready(2, false, None), Verdict::Unbind);

        // Two resets in flight: the first ran, the second did not.
        resets.sent(3);
        resets.sent(4);
        resets.on_command_complete(b"RESET", 3);
        assert_eq!(resets.on_ready(3, false, None), Verdict::Unbind);
        assert_eq!(resets.on_ready(4, false, None), Verdict::Keep);
    }

    #[test]
    fn a_scripts_reset_waits_for_its_statement_and_goes_with_the_script() {
        let mut resets = PoolResets::default();
        resets.sent(7);
        // The script's first statement is not the reset: it moves to the next one.
        assert_eq!(resets.on_ready(7, true, Some(8)), Verdict::Keep);
        resets.on_command_complete(b"RESET", 8);
        assert_eq!(
            resets.on_ready(8, true, Some(9)),
            Verdict::UnbindAtTransactionEnd
        );
        // A script that ends before its reset.
        resets.sent(10);
        assert_eq!(resets.on_ready(10, true, Some(11)), Verdict::Keep);
        resets.on_script_end(11);
        assert_eq!(resets.on_ready(11, false, None), Verdict::Keep);
        assert!(resets.pending.is_empty());
    }

    #[test]
    fn a_reset_in_a_batch_tandem_answered_never_ran() {
        let mut resets = PoolResets::default();
        resets.sent(3);
        resets.forget(3);
        // The client's next batch is numbered 3 in its turn: its RESET is not the pool's.
        resets.on_command_complete(b"RESET", 3);
        assert_eq!(resets.on_ready(3, false, None), Verdict::Keep);
    }

    #[test]
    fn a_reset_whose_sync_the_backend_ignored_is_dropped() {
        let mut resets = PoolResets::default();
        resets.sent(1);
        resets.on_command_complete(b"RESET", 2);
        assert_eq!(resets.on_ready(2, false, None), Verdict::Keep);
        assert!(resets.pending.is_empty());
    }
}
