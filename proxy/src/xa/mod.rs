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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tandem_lockserver::client::{BranchOutcome, GlobalStatus, LockClient, Xid};

/// How long a global commit keeps retrying a branch it finds not prepared. A branch
/// registers before its PREPARE, so a commit decided meanwhile (another service
/// commits first) can reach it first; taking "not prepared" as done then would leave
/// the branch prepared after its global transaction was forgotten, and recovery would
/// roll it back as an orphan. As long as AT's wait for an undo row (`at::cleanup`).
const PREPARE_PATIENCE: Duration = Duration::from_secs(600);

/// Branches remembered at most; past it a branch not prepared is taken as done at once.
const UNPREPARED_KEPT: usize = 10_000;

/// The branches a global commit found not prepared, and since when (see
/// `PREPARE_PATIENCE`); and those this proxy committed lately, so that a second
/// delivery of one (a lease that ran out while it committed) is done at once. Keyed by
/// the database's id of the branch.
#[derive(Default)]
pub struct UnpreparedCommits(Mutex<HashMap<String, Seen>>);

#[derive(Clone, Copy)]
enum Seen {
    NotPrepared(Instant),
    Committed(Instant),
}

impl Seen {
    fn since(self) -> Instant {
        match self {
            Seen::NotPrepared(at) | Seen::Committed(at) => at,
        }
    }
}

impl UnpreparedCommits {
    /// A commit found `branch` not prepared: Retry while its PREPARE may still come,
    /// then Done (phase 1 never reached the prepare, or an earlier delivery finished
    /// it); Done at once if this proxy committed it.
    pub fn not_prepared(&self, branch: &str) -> BranchOutcome {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if seen.len() >= UNPREPARED_KEPT && !seen.contains_key(branch) {
            seen.retain(|_, s| now.duration_since(s.since()) < PREPARE_PATIENCE);
            if seen.len() >= UNPREPARED_KEPT {
                return BranchOutcome::Done;
            }
        }
        match *seen
            .entry(branch.to_owned())
            .or_insert(Seen::NotPrepared(now))
        {
            Seen::Committed(_) => BranchOutcome::Done,
            Seen::NotPrepared(first) if now.duration_since(first) < PREPARE_PATIENCE => {
                BranchOutcome::Retry {
                    reason: format!(
                        "{branch} is not prepared (yet): its PREPARE may still be on its way"
                    ),
                }
            }
            Seen::NotPrepared(_) => {
                seen.remove(branch);
                BranchOutcome::Done
            }
        }
    }

    /// This proxy committed `branch`: it is no longer waited for, and a second delivery
    /// of its commit finds it done.
    pub fn finished(&self, branch: &str) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if seen.len() >= UNPREPARED_KEPT {
            seen.retain(|_, s| now.duration_since(s.since()) < PREPARE_PATIENCE);
        }
        if seen.len() < UNPREPARED_KEPT {
            seen.insert(branch.to_owned(), Seen::Committed(now));
        }
    }
}

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
