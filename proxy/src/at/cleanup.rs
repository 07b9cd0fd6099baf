//! Phase-2 commit of AT branches: their undo rows are deleted in batches, one statement
//! and one commit per batch and database, instead of one committed DELETE per branch.
//!
//! A batch is whatever queued while the previous one ran, plus what arrives within
//! `GATHER` of its first job. Without that wait the batches stayed at one or two
//! branches under load (pgbench TPC-B at ~600 global transactions a second: 1,426
//! cleanup transactions for 1,781 branches), each its own BEGIN, DELETE and COMMIT.
//! Nothing waits on a cleanup but phase 2's acknowledgement to the lockserver.
//!
//! On PostgreSQL the batch commits with `synchronous_commit = off`: a crash may forget
//! the last deletions, which leaves undo rows of finished transactions behind (garbage,
//! never undone: phase 2 of a committed transaction only deletes), but no commit waits
//! for a flush of its own.
//!
//! The queues are the same for both engines; `BatchDelete` is the one statement each
//! runs.
//!
//! A branch registers its locks before its local COMMIT, so a global commit decided in
//! between (another service commits while this branch's COMMIT is on its way) reaches
//! its cleanup before the undo row is visible. Deleting nothing then would leave the
//! row behind for good once the COMMIT lands. So a branch whose row is not found is
//! retried (the lockserver redelivers it with backoff) for `ABSENT_ROW_PATIENCE`, and
//! only then taken as a branch that never committed (its local transaction died with
//! its proxy) or whose row an earlier delivery already deleted. A row this proxy
//! deleted is remembered for as long (`DELETED_ROWS_KEPT`), so that a delivery repeated
//! after a lost acknowledgement is answered at once; one that reaches another proxy
//! still waits. A local COMMIT held up
//! longer than that, after a global commit overtook it, still leaves its row (counted
//! by the sweep once past the retention).

use crate::control::quote_literal;
use crate::upstream::SidePools;
use prometheus_client::metrics::counter::Counter;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_lockserver::client::{BoxFuture, BranchOutcome};
use tokio::sync::{mpsc, oneshot};

/// An undo row's key: `(xid, branch_id)`.
pub type UndoKey = (String, u64);

/// Deletes a batch of undo rows in one database; answers the keys it deleted.
pub trait BatchDelete: Send + Sync + 'static {
    fn delete<'a>(
        &'a self,
        database: &'a str,
        keys: &'a [UndoKey],
    ) -> BoxFuture<'a, Result<HashSet<UndoKey>, String>>;
}

/// How long a committed branch's missing undo row is waited for, from the first
/// delivery that did not find it. A local COMMIT follows its branch's registration
/// within a round trip; this covers one held up by a commit-time lock wait or a stalled
/// disk or standby, and costs nothing but the global transaction's record staying open
/// meanwhile (its locks went at the decision) and a redelivery every few seconds.
const ABSENT_ROW_PATIENCE: Duration = Duration::from_secs(600);

/// Absent rows remembered at most. Past it, stale ones are forgotten; while it is
/// still full, a missing row is taken as gone at once, as before this wait existed.
const ABSENT_ROWS_KEPT: usize = 10_000;

/// Rows this proxy deleted, remembered at most (the oldest forgotten first), and for
/// no longer than `ABSENT_ROW_PATIENCE`: a second delivery of a commit whose
/// acknowledgement the lockserver lost (it died, or its record of the answer did not
/// reach its store) finds the row gone, which would otherwise wait out the patience
/// as a local COMMIT still on its way.
const DELETED_ROWS_KEPT: usize = 50_000;

/// Deletions per statement, at most.
const MAX_BATCH: usize = 512;

/// How long a batch waits for more branches after its first one.
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);

struct Job {
    key: UndoKey,
    /// Whether the row was there to delete.
    done: oneshot::Sender<Result<bool, String>>,
}

/// One queue (and one task draining it) per database.
pub struct Cleanup {
    engine: Arc<dyn BatchDelete>,
    // The std Mutexes are never held across an await.
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<Job>>>,
    /// Branches whose undo row a delivery did not find → when it first did not.
    absent_since: Mutex<HashMap<(String, UndoKey), Instant>>,
    /// Rows this proxy deleted, and when (see `DELETED_ROWS_KEPT`).
    deleted: Mutex<RecentlyDeleted>,
    /// Counts the Retry answers for a row not there yet.
    rows_awaited: Counter,
}

impl Cleanup {
    pub fn new(engine: Arc<dyn BatchDelete>, rows_awaited: Counter) -> Self {
        Cleanup {
            engine,
            queues: Mutex::new(HashMap::new()),
            absent_since: Mutex::new(HashMap::new()),
            deleted: Mutex::new(RecentlyDeleted::default()),
            rows_awaited,
        }
    }

    /// PostgreSQL's undo rows, over the side pools.
    pub fn postgres(side: Arc<SidePools>, rows_awaited: Counter) -> Self {
        Cleanup::new(Arc::new(PostgresDelete(side)), rows_awaited)
    }

    /// Phase 2 of a committed AT branch: its undo row deleted, with the others queued at
    /// the same time. Answers once that batch committed; `Retry` when it failed, or
    /// while a row that is not there yet may still come (see the module's notes).
    pub async fn commit_branch(&self, database: &str, xid: &str, branch_id: u64) -> BranchOutcome {
        let deleted = match self.delete_undo(database, xid, branch_id).await {
            Ok(deleted) => deleted,
            Err(reason) => return BranchOutcome::Retry { reason },
        };
        let key = (database.to_owned(), (xid.to_owned(), branch_id));
        let now = Instant::now();
        {
            let mut recent = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
            if deleted {
                recent.remember(key.clone(), now);
            } else if recent.holds(&key, now) {
                return BranchOutcome::Done;
            }
        }
        let mut absent = self.absent_since.lock().unwrap_or_else(|p| p.into_inner());
        if deleted {
            absent.remove(&key);
            return BranchOutcome::Done;
        }
        if absent.len() >= ABSENT_ROWS_KEPT && !absent.contains_key(&key) {
            absent.retain(|_, since| now.duration_since(*since) < ABSENT_ROW_PATIENCE);
        }
        let since = match absent.get(&key) {
            Some(since) => Some(*since),
            None if absent.len() < ABSENT_ROWS_KEPT => {
                absent.insert(key.clone(), now);
                Some(now)
            }
            None => None,
        };
        if let Some(since) = since
            && now.duration_since(since) < ABSENT_ROW_PATIENCE
        {
            self.rows_awaited.inc();
            return BranchOutcome::Retry {
                reason: "no undo row yet: the branch's local COMMIT may still be on its way"
                    .to_owned(),
            };
        }
        absent.remove(&key);
        tracing::info!(%database, "committed branch has no undo row: its local transaction never committed, or an earlier delivery deleted the row");
        BranchOutcome::Done
    }

    /// Deletes the undo row of branch `branch_id` of `xid` in `database`, with others
    /// queued at the same time; returns once that batch committed, with whether the row
    /// was there.
    async fn delete_undo(&self, database: &str, xid: &str, branch_id: u64) -> Result<bool, String> {
        let (done, wait) = oneshot::channel();
        let job = Job {
            key: (xid.to_owned(), branch_id),
            done,
        };
        self.queue(database)
            .send(job)
            .map_err(|_| "the cleanup task ended".to_owned())?;
        wait.await
            .map_err(|_| "the cleanup task ended".to_owned())?
    }

    fn queue(&self, database: &str) -> mpsc::UnboundedSender<Job> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = queues.get(database).filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (queue, jobs) = mpsc::unbounded_channel();
        tokio::spawn(drain(Arc::clone(&self.engine), database.to_owned(), jobs));
        queues.insert(database.to_owned(), queue.clone());
        queue
    }
}

/// The undo rows this proxy deleted lately, oldest first.
#[derive(Default)]
struct RecentlyDeleted {
    keys: HashSet<(String, UndoKey)>,
    order: std::collections::VecDeque<(Instant, (String, UndoKey))>,
}

impl RecentlyDeleted {
    fn remember(&mut self, key: (String, UndoKey), now: Instant) {
        self.forget_old(now);
        if self.keys.len() >= DELETED_ROWS_KEPT
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.keys.remove(&oldest);
        }
        if self.keys.insert(key.clone()) {
            self.order.push_back((now, key));
        }
    }

    fn holds(&mut self, key: &(String, UndoKey), now: Instant) -> bool {
        self.forget_old(now);
        self.keys.contains(key)
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front()
            && now.duration_since(*at) >= ABSENT_ROW_PATIENCE
        {
            if let Some((_, key)) = self.order.pop_front() {
                self.keys.remove(&key);
            }
        }
    }
}

async fn drain(
    engine: Arc<dyn BatchDelete>,
    database: String,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        let gathered = tokio::time::Instant::now() + GATHER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(gathered, jobs.recv()).await {
                Ok(Some(job)) => batch.push(job),
                // The deadline passed, or every sender is gone: run what is here.
                Ok(None) | Err(_) => break,
            }
        }
        let keys: Vec<UndoKey> = batch.iter().map(|j| j.key.clone()).collect();
        let result = engine.delete(&database, &keys).await;
        if let Err(e) = &result {
            tracing::debug!(database = %database, error = %e, rows = batch.len(), "undo cleanup failed");
        }
        for job in batch {
            let found = match &result {
                Ok(deleted) => Ok(deleted.contains(&job.key)),
                Err(e) => Err(e.clone()),
            };
            let _ = job.done.send(found);
        }
    }
}

struct PostgresDelete(Arc<SidePools>);

impl BatchDelete for PostgresDelete {
    fn delete<'a>(
        &'a self,
        database: &'a str,
        keys: &'a [UndoKey],
    ) -> BoxFuture<'a, Result<HashSet<UndoKey>, String>> {
        Box::pin(async move {
            let client = self.0.get(database).await.map_err(|e| e.to_string())?;
            let messages = match client.simple_query(&delete_sql(keys)).await {
                Ok(messages) => messages,
                Err(e) => {
                    // The connection goes back to the pool: not inside a failed transaction.
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(e.to_string());
                }
            };
            Ok(messages
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => {
                        let xid = row.get(0)?;
                        let branch_id = row.get(1)?.parse::<i64>().ok()?;
                        Some((xid.to_owned(), branch_id as u64))
                    }
                    _ => None,
                })
                .collect())
        })
    }
}

/// The batch's one round trip: values inline (xids are quoted literals, branch ids
/// numbers), so that it can travel as one simple query with its own transaction.
fn delete_sql(batch: &[UndoKey]) -> String {
    let keys: Vec<String> = batch
        .iter()
        .map(|(xid, branch_id)| format!("({}, {})", quote_literal(xid), *branch_id as i64))
        .collect();
    format!(
        "BEGIN; SET LOCAL synchronous_commit TO off; \
         DELETE FROM undo_log WHERE (xid, branch_id) IN ({}) RETURNING xid, branch_id; COMMIT",
        keys.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An undo_log holding these rows: a batch deletes the ones it names.
    struct UndoLog(Mutex<HashSet<UndoKey>>);

    impl BatchDelete for UndoLog {
        fn delete<'a>(
            &'a self,
            _database: &'a str,
            keys: &'a [UndoKey],
        ) -> BoxFuture<'a, Result<HashSet<UndoKey>, String>> {
            Box::pin(async move {
                let mut rows = self.0.lock().unwrap();
                Ok(keys.iter().filter(|k| rows.remove(*k)).cloned().collect())
            })
        }
    }

    #[tokio::test]
    async fn a_second_delivery_of_a_commit_this_proxy_finished_is_done_at_once() {
        let rows = HashSet::from([("x-1".to_owned(), 1)]);
        let cleanup = Cleanup::new(Arc::new(UndoLog(Mutex::new(rows))), Counter::default());
        let first = cleanup.commit_branch("db", "x-1", 1).await;
        assert_eq!(first, BranchOutcome::Done);
        // The lockserver lost the answer and delivers again: the row is gone because
        // this proxy deleted it, not because its COMMIT is still on its way.
        let again = cleanup.commit_branch("db", "x-1", 1).await;
        assert_eq!(again, BranchOutcome::Done);
        // A row never seen deleted is still awaited.
        let other = cleanup.commit_branch("db", "x-2", 1).await;
        assert!(matches!(other, BranchOutcome::Retry { .. }), "{other:?}");
    }

    #[test]
    fn recently_deleted_rows_are_kept_for_the_patience_and_up_to_the_cap() {
        let mut recent = RecentlyDeleted::default();
        let start = Instant::now();
        let key = |i: u64| ("db".to_owned(), ("x".to_owned(), i));
        recent.remember(key(1), start);
        assert!(recent.holds(&key(1), start + ABSENT_ROW_PATIENCE / 2));
        assert!(!recent.holds(&key(1), start + ABSENT_ROW_PATIENCE));
        for i in 0..=DELETED_ROWS_KEPT as u64 {
            recent.remember(key(i), start);
        }
        assert_eq!(recent.keys.len(), DELETED_ROWS_KEPT);
        assert!(!recent.holds(&key(0), start), "the oldest goes first");
        assert!(recent.holds(&key(DELETED_ROWS_KEPT as u64), start));
    }

    #[test]
    fn one_statement_deletes_the_whole_batch_with_quoted_xids() {
        let sql = delete_sql(&[("a:1".into(), 1), ("o'x".into(), 2)]);
        assert_eq!(
            sql,
            "BEGIN; SET LOCAL synchronous_commit TO off; DELETE FROM undo_log WHERE (xid, branch_id) IN (('a:1', 1), ('o''x', 2)) RETURNING xid, branch_id; COMMIT"
        );
    }
}
