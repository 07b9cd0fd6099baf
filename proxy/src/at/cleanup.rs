//! Phase-2 commit of AT branches: their undo rows are deleted in batches, one statement
//! and one commit per batch and database, instead of one committed DELETE per branch.
//!
//! A batch is whatever queued while the previous one ran, so under load the batches
//! grow by themselves and at rest a branch waits for no timer. The batch commits with
//! `synchronous_commit = off`: a crash may forget the last deletions, which leaves undo
//! rows of finished transactions behind (garbage, never undone: phase 2 of a committed
//! transaction only deletes), but no commit waits for a flush of its own.

use crate::control::quote_literal;
use crate::upstream::SidePools;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Deletions per statement, at most.
const MAX_BATCH: usize = 512;

struct Job {
    xid: String,
    branch_id: u64,
    done: oneshot::Sender<Result<(), String>>,
}

/// One queue (and one task draining it) per database.
pub struct Cleanup {
    side: Arc<SidePools>,
    // A std Mutex: held only to find or start a queue, never across an await.
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<Job>>>,
}

impl Cleanup {
    pub fn new(side: Arc<SidePools>) -> Self {
        Cleanup {
            side,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Deletes the undo row of branch `branch_id` of `xid` in `database`, with others
    /// queued at the same time; returns once that batch committed (or failed: the
    /// lockserver then retries the branch).
    pub async fn delete_undo(
        &self,
        database: &str,
        xid: &str,
        branch_id: u64,
    ) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        let job = Job {
            xid: xid.to_owned(),
            branch_id,
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
        tokio::spawn(drain(Arc::clone(&self.side), database.to_owned(), jobs));
        queues.insert(database.to_owned(), queue.clone());
        queue
    }
}

async fn drain(side: Arc<SidePools>, database: String, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = delete_batch(&side, &database, &batch).await;
        if let Err(e) = &result {
            tracing::debug!(database = %database, error = %e, rows = batch.len(), "undo cleanup failed");
        }
        for job in batch {
            let _ = job.done.send(result.clone());
        }
    }
}

async fn delete_batch(side: &SidePools, database: &str, batch: &[Job]) -> Result<(), String> {
    let client = side.get(database).await.map_err(|e| e.to_string())?;
    let result = client.batch_execute(&delete_sql(batch)).await;
    if result.is_err() {
        // The connection goes back to the pool: not inside a failed transaction.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result.map_err(|e| e.to_string())
}

/// The batch's one round trip: values inline (xids are quoted literals, branch ids
/// numbers), so that it can travel as one simple query with its own transaction.
fn delete_sql(batch: &[Job]) -> String {
    let keys: Vec<String> = batch
        .iter()
        .map(|j| format!("({}, {})", quote_literal(&j.xid), j.branch_id as i64))
        .collect();
    format!(
        "BEGIN; SET LOCAL synchronous_commit TO off; \
         DELETE FROM undo_log WHERE (xid, branch_id) IN ({}); COMMIT",
        keys.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_statement_deletes_the_whole_batch_with_quoted_xids() {
        let job = |xid: &str, branch_id| Job {
            xid: xid.into(),
            branch_id,
            done: oneshot::channel().0,
        };
        let sql = delete_sql(&[job("a:1", 1), job("o'x", 2)]);
        assert_eq!(
            sql,
            "BEGIN; SET LOCAL synchronous_commit TO off; DELETE FROM undo_log WHERE (xid, branch_id) IN (('a:1', 1), ('o''x', 2)); COMMIT"
        );
    }
}
