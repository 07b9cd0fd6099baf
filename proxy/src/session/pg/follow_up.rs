//! Statements that take something away from a branch (ROLLBACK TO SAVEPOINT, RELEASE
//! SAVEPOINT, ROLLBACK AND CHAIN; in XA mode a ROLLBACK), bound over the extended
//! protocol: the branch follows one only once it has surely run.
//!
//! A Bind runs nothing by itself, and the backend skips a Bind and Execute that come
//! behind a failed message of their batch. Followed at its Bind, a skipped ROLLBACK TO
//! made the branch drop rows the transaction still changed, and a block revived by
//! another ROLLBACK TO committed them outside the branch. So the statement is followed
//! at its batch's ReadyForQuery, and only if the portal was executed in that batch and
//! the batch reported no error: then it ran. After an error it is not followed even
//! if it ran before the error; but that error failed the transaction block the
//! statement left open (ROLLBACK TO and RELEASE keep it, ROLLBACK AND CHAIN opens the
//! next), and a failed block goes on only by a ROLLBACK, which ends the branch, or a
//! ROLLBACK TO an older savepoint, which the branch follows and which takes away at
//! least what the missed statement did. (A plain ROLLBACK in XA mode leaves no block:
//! its batch ends idle, which ends the branch in any case.)
//!
//! Owns that bookkeeping only: pure, no I/O.

use tandem_undo::SavepointOp;

/// What the branch does once the statement has run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum FollowUp {
    /// ROLLBACK TO SAVEPOINT or RELEASE SAVEPOINT in AT mode.
    Savepoint(SavepointOp),
    /// ROLLBACK AND CHAIN in AT mode: the branch starts again.
    RollbackAndChain,
    /// Any ROLLBACK in XA mode: the block holds no branch work any more.
    XaRollback,
}

/// A bound statement whose follow-up waits for its batch's end.
#[derive(Debug)]
pub(super) struct Bound {
    follow_up: FollowUp,
    /// The batch its Bind was sent in (`Tracked::batch_being_sent`).
    batch: u64,
    portal: Vec<u8>,
    /// Its own Bind went to the backend.
    bind_sent: bool,
    executed: bool,
}

impl Bound {
    pub(super) fn new(follow_up: FollowUp, batch: u64, portal: &[u8]) -> Self {
        Bound {
            follow_up,
            batch,
            portal: portal.to_vec(),
            bind_sent: false,
            executed: false,
        }
    }

    pub(super) fn batch(&self) -> u64 {
        self.batch
    }

    /// The client sent Execute of `portal` in batch `batch`.
    pub(super) fn on_execute(&mut self, batch: u64, portal: &[u8]) {
        if batch == self.batch && portal == self.portal {
            self.executed = true;
        }
    }

    /// A Bind of `portal` in batch `batch` went to the backend: the statement's own,
    /// or one that binds its portal again, after which it will not run from it unless
    /// it ran already. Returns whether the statement may still run.
    pub(super) fn on_bind(&mut self, batch: u64, portal: &[u8]) -> bool {
        if self.executed || batch != self.batch || portal != self.portal {
            return true;
        }
        !std::mem::replace(&mut self.bind_sent, true)
    }

    /// The ReadyForQuery that ended batch `answered` arrived: the follow-up, if the
    /// statement ran in it. `error`: the batch reported an error.
    pub(super) fn ran(self, answered: u64, error: bool) -> Option<FollowUp> {
        (answered == self.batch && self.executed && !error).then_some(self.follow_up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ROLLBACK TO bound into the unnamed portal in batch 4, its Bind sent.
    fn rollback_to() -> Bound {
        let mut bound = Bound::new(
            FollowUp::Savepoint(SavepointOp::RollbackTo("s".into())),
            4,
            b"",
        );
        assert!(bound.on_bind(4, b""));
        bound
    }

    #[test]
    fn followed_once_executed_in_a_batch_without_error() {
        let mut bound = rollback_to();
        bound.on_execute(4, b"");
        assert_eq!(
            bound.ran(4, false),
            Some(FollowUp::Savepoint(SavepointOp::RollbackTo("s".into())))
        );
    }

    #[test]
    fn not_followed_after_an_error_or_without_its_execute() {
        let mut bound = rollback_to();
        bound.on_execute(4, b"");
        assert_eq!(bound.ran(4, true), None);
        assert_eq!(rollback_to().ran(4, false), None, "bound, never executed");
        let mut bound = rollback_to();
        bound.on_execute(4, b"other");
        bound.on_execute(5, b"");
        assert_eq!(bound.ran(4, false), None, "another portal, another batch");
    }

    #[test]
    fn not_followed_at_another_batchs_ready_for_query() {
        let mut bound = rollback_to();
        bound.on_execute(4, b"");
        assert_eq!(bound.ran(3, false), None);
    }

    #[test]
    fn a_portal_bound_again_before_its_execute_runs_the_new_statement() {
        let mut bound = rollback_to();
        assert!(bound.on_bind(4, b"p"), "another portal");
        assert!(bound.on_bind(5, b""), "another batch");
        assert!(!bound.on_bind(4, b""));
        let mut bound = rollback_to();
        bound.on_execute(4, b"");
        assert!(bound.on_bind(4, b""), "executed before it was bound again");
    }
}
