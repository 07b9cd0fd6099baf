//! XA branches on PostgreSQL: phase 2 (`COMMIT PREPARED` / `ROLLBACK PREPARED` on a
//! side connection to the branch's database) and the recovery scan of
//! `pg_prepared_xacts`.
//!
//! Both run on side connections only, and both are idempotent: a branch that is no
//! longer prepared was finished already (by another proxy, or by an earlier delivery).

use super::{Decision, decide_for, parse_gid};
use crate::control::quote_literal;
use crate::upstream::SidePools;
use std::time::Duration;
use tandem_lockserver::client::{BranchOutcome, LockClient};

/// PostgreSQL's "prepared transaction with identifier … does not exist".
const UNDEFINED_OBJECT: &str = "42704";

/// Finishes the prepared branch `gid` in `database`. A branch that is not prepared
/// (any more) is done: phase 1 never reached the prepare, or phase 2 ran already. (A
/// PREPARE still on its way cannot be overtaken: the lockserver commits only once
/// every XA branch has reported its prepare.)
pub async fn finish(side: &SidePools, database: &str, gid: &str, commit: bool) -> BranchOutcome {
    let verb = if commit { "COMMIT" } else { "ROLLBACK" };
    let sql = format!("{verb} PREPARED {}", quote_literal(gid));
    let result = async {
        let client = side.get(database).await?;
        client.batch_execute(&sql).await.map_err(crate::Error::from)
    }
    .await;
    match result {
        Ok(()) => {
            tracing::debug!(gid, database, verb, "prepared branch finished");
            BranchOutcome::Done
        }
        Err(crate::Error::SideQuery(e)) if e.code().map(|c| c.code()) == Some(UNDEFINED_OBJECT) => {
            BranchOutcome::Done
        }
        Err(e) => BranchOutcome::Retry {
            reason: e.to_string(),
        },
    }
}

/// What one recovery pass did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub committed: usize,
    pub rolled_back: usize,
    pub left: usize,
}

/// One pass over the upstream's prepared transactions: each of tandem's is finished
/// as its global transaction decided. Those of other software are never touched.
pub async fn recover(
    side: &SidePools,
    lock: &LockClient,
    orphan_after: Duration,
    only: &[String],
) -> crate::Result<Recovered> {
    let rows = {
        let client = side.get("postgres").await?;
        client
            .query(
                "SELECT gid, database::text, \
                 extract(epoch FROM now() - prepared)::float8 \
                 FROM pg_prepared_xacts WHERE gid LIKE 'tandem:%'",
                &[],
            )
            .await?
    };
    let mut done = Recovered::default();
    for row in rows {
        let gid: String = row.get(0);
        let database: String = row.get(1);
        if !only.is_empty() && !only.contains(&database) {
            continue;
        }
        let age = Duration::from_secs_f64(row.get::<_, f64>(2).max(0.0));
        let Some((xid, _branch)) = parse_gid(&gid) else {
            continue;
        };
        let commit = match decide_for(lock, &xid, age, orphan_after).await {
            Ok(Decision::Commit) => true,
            Ok(Decision::Rollback) => false,
            Ok(Decision::Leave) => {
                done.left += 1;
                continue;
            }
            Err(e) => {
                tracing::warn!(%gid, error = %e, "XA recovery: lockserver unavailable");
                done.left += 1;
                continue;
            }
        };
        match finish(side, &database, &gid, commit).await {
            BranchOutcome::Done if commit => done.committed += 1,
            BranchOutcome::Done => done.rolled_back += 1,
            other => {
                tracing::warn!(%gid, outcome = ?other, "XA recovery: branch not finished");
                done.left += 1;
            }
        }
        tracing::info!(%gid, %database, commit, "XA recovery");
    }
    Ok(done)
}
