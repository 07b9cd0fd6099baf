//! What the branch does once a statement bound over the extended protocol has run:
//! savepoint statements, ROLLBACK AND CHAIN and, in XA mode, ROLLBACK.
//!
//! A Bind runs nothing by itself. Its portal runs at an Execute, in its batch or a
//! later one, and the backend skips a Bind and Execute that come behind a failed
//! message of their batch. Followed at its Bind, a skipped ROLLBACK TO made the branch
//! drop rows the transaction still changed, and a block revived by another ROLLBACK
//! TO committed them outside the branch. So the Bind's portal carries the follow-up
//! (`Tracked`), and it is applied at the CommandComplete of an Execute of that portal:
//! proof that it ran, in the order the statements ran.
//!
//! Pure: no I/O.

use tandem_undo::SavepointOp;

/// What the branch does once the statement has run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowUp {
    /// SAVEPOINT, RELEASE SAVEPOINT or ROLLBACK TO SAVEPOINT, in AT mode.
    Savepoint(SavepointOp),
    /// The local transaction rolled back, and a new one may have begun in its place
    /// (ROLLBACK AND CHAIN, or a COMMIT [AND CHAIN] of a failed block), in AT mode: the
    /// branch starts again.
    RolledBack,
    /// Any ROLLBACK, or a COMMIT of a failed block, in XA mode: the block holds no
    /// branch work any more.
    XaRolledBack,
}

impl FollowUp {
    /// Whether a CommandComplete with `tag` is the statement's own: anything else means
    /// the ledger and the backend disagree, and the branch does not follow.
    pub fn completes_with(&self, tag: &[u8]) -> bool {
        let expected: &[u8] = match self {
            FollowUp::Savepoint(SavepointOp::Set(_)) => b"SAVEPOINT",
            FollowUp::Savepoint(SavepointOp::Release(_)) => b"RELEASE",
            FollowUp::Savepoint(SavepointOp::RollbackTo(_))
            | FollowUp::RolledBack
            | FollowUp::XaRolledBack => b"ROLLBACK",
        };
        tag == expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_follow_up_completes_with_its_statements_tag() {
        let rollback_to = FollowUp::Savepoint(SavepointOp::RollbackTo("s".into()));
        assert!(rollback_to.completes_with(b"ROLLBACK"));
        assert!(!rollback_to.completes_with(b"RELEASE"));
        assert!(FollowUp::Savepoint(SavepointOp::Set("s".into())).completes_with(b"SAVEPOINT"));
        assert!(FollowUp::Savepoint(SavepointOp::Release("s".into())).completes_with(b"RELEASE"));
        // PostgreSQL answers the COMMIT of a failed block with ROLLBACK.
        assert!(FollowUp::RolledBack.completes_with(b"ROLLBACK"));
        assert!(!FollowUp::XaRolledBack.completes_with(b"COMMIT"));
    }
}
