//! XA mode: a branch is the database's own prepared transaction, and the lockserver's
//! decision picks COMMIT PREPARED or ROLLBACK PREPARED. Shared by every SQL front end.
//!
//! Owns the branch id format (which must survive a crash: recovery finds branches by
//! it) and the decision recovery takes for a prepared branch it finds. Never touches
//! a socket. Invariant: a prepared transaction whose id is not tandem's is never
//! touched, and one of tandem's is committed only when its global transaction
//! committed.

pub mod mysql;
pub mod pg;

use std::time::Duration;
use tandem_lockserver::client::{GlobalStatus, LockClient, Xid};

/// Every tandem branch id starts with this, so recovery and operators tell tandem's
/// prepared transactions from anyone else's.
pub const GID_PREFIX: &str = "tandem:";

/// The database's id of a branch: `tandem:<xid>:<branch>`. An xid is at most 38
/// characters (16 hex digits, a dash, a u64), so this stays within PostgreSQL's 200
/// bytes; MySQL's 64-byte gtrid and bqual get `tandem:<xid>` and the branch.
pub fn gid(xid: &Xid, branch_id: u64) -> String {
    format!("{GID_PREFIX}{xid}:{branch_id}")
}

/// The xid and branch of one of tandem's ids; `None` for anyone else's.
pub fn parse_gid(gid: &str) -> Option<(Xid, u64)> {
    let rest = gid.strip_prefix(GID_PREFIX)?;
    let (xid, branch) = rest.rsplit_once(':')?;
    let branch = branch.parse().ok()?;
    Some((Xid::parse(xid).ok()?, branch))
}

/// What recovery does with a prepared branch it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Rollback,
    /// Still open (or its prepare may still be reporting): the lockserver decides later.
    Leave,
}

/// Recovery's decision for a branch prepared `age` ago whose global transaction has
/// `status` (`None`: the lockserver does not know it). An unknown transaction is
/// rolled back only after `orphan_after`: it may have been begun by a lockserver this
/// proxy cannot see yet, but no global transaction outlives its timeout.
pub fn decide(status: Option<GlobalStatus>, age: Duration, orphan_after: Duration) -> Decision {
    use GlobalStatus::*;
    match status {
        Some(AsyncCommitting | Committed) => Decision::Commit,
        Some(
            Rollbacking
            | RollbackRetrying
            | TimeoutRollbacking
            | TimeoutRollbackRetrying
            | Rollbacked
            | TimeoutRollbacked
            | RollbackFailed
            | TimeoutRollbackFailed,
        ) => Decision::Rollback,
        Some(Begin) => Decision::Leave,
        None if age >= orphan_after => Decision::Rollback,
        None => Decision::Leave,
    }
}

/// Recovery's decision for a prepared branch of `xid`, asking the lockserver for its
/// global transaction's status. An error means no decision can be read: nothing is
/// safe to do now.
pub async fn decide_for(
    lock: &LockClient,
    xid: &Xid,
    age: Duration,
    orphan_after: Duration,
) -> Result<Decision, tandem_lockserver::Error> {
    let status = match lock.status(xid).await {
        Ok(status) => Some(status),
        Err(
            tandem_lockserver::Error::UnknownXid { .. }
            | tandem_lockserver::Error::Rpc {
                code: tonic::Code::NotFound,
                ..
            },
        ) => None,
        Err(e) => return Err(e),
    };
    Ok(decide(status, age, orphan_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_round_trips_and_fits_the_databases_limits() {
        let xid = Xid::parse("0123456789abcdef-18446744073709551615").unwrap();
        let g = gid(&xid, u64::MAX);
        assert!(g.len() <= 200, "{g}");
        assert!(format!("{GID_PREFIX}{xid}").len() <= 64);
        assert_eq!(parse_gid(&g), Some((xid, u64::MAX)));
    }

    #[test]
    fn ids_that_are_not_tandems_are_not_parsed() {
        for other in [
            "",
            "my-own-gid",
            "tandem",
            "tandem:",
            "tandem:0123456789abcdef-1",
            "tandem:0123456789abcdef-1:x",
            "tandem:not an xid:3",
            "TANDEM:0123456789abcdef-1:3",
        ] {
            assert_eq!(parse_gid(other), None, "{other}");
        }
    }

    #[test]
    fn decisions_follow_the_global_status() {
        let young = Duration::from_secs(1);
        let old = Duration::from_secs(600);
        let orphan = Duration::from_secs(120);
        assert_eq!(
            decide(Some(GlobalStatus::Committed), young, orphan),
            Decision::Commit
        );
        assert_eq!(
            decide(Some(GlobalStatus::AsyncCommitting), young, orphan),
            Decision::Commit
        );
        assert_eq!(
            decide(Some(GlobalStatus::TimeoutRollbacking), young, orphan),
            Decision::Rollback
        );
        assert_eq!(
            decide(Some(GlobalStatus::Rollbacked), old, orphan),
            Decision::Rollback
        );
        assert_eq!(
            decide(Some(GlobalStatus::Begin), old, orphan),
            Decision::Leave
        );
        assert_eq!(decide(None, young, orphan), Decision::Leave);
        assert_eq!(decide(None, old, orphan), Decision::Rollback);
    }
}
