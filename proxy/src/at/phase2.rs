//! Phase 2 on this proxy's resources: deleting a committed branch's undo row, and
//! replaying a rolled-back branch's undo record behind its dirty-write checks. XA
//! branches go to `xa::pg` (COMMIT PREPARED / ROLLBACK PREPARED).
//!
//! Runs on side connections only. Both operations are idempotent (delivery is at least
//! once): a second commit finds nothing to delete; a second rollback finds its
//! GlobalFinished marker. Invariant: a replay writes nothing unless every row still
//! equals the branch's after image.

use super::raw::Raw;
use crate::upstream::SidePools;
use std::sync::Arc;
use tandem_lockserver::client::{BoxFuture, BranchHandler, BranchKind, BranchOutcome, Phase2Work};
use tandem_undo::{Postgres, UndoRecord, replay};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

/// log_status of a normal undo row, as phase 1 writes it.
pub const LOG_NORMAL: i32 = 0;
/// log_status of the marker a rollback leaves when it finds no undo row.
pub const LOG_GLOBAL_FINISHED: i32 = 1;

pub struct PgBranchHandler {
    /// The upstream `host:port` whose databases these are.
    pub upstream: String,
    pub side: Arc<SidePools>,
    /// Deletes committed branches' undo rows in batches.
    pub cleanup: super::cleanup::Cleanup,
}

impl PgBranchHandler {
    /// The database of a resource id of ours.
    fn database<'a>(&self, resource: &'a str) -> Option<&'a str> {
        super::database_of(resource, &self.upstream)
    }

    async fn commit_branch(&self, work: Phase2Work) -> BranchOutcome {
        let Some(database) = self.database(&work.resource_id) else {
            return retry(format!("resource {} is not served here", work.resource_id));
        };
        if work.kind == BranchKind::XA {
            let gid = crate::xa::gid(&work.xid, work.branch_id);
            return crate::xa::pg::finish(&self.side, database, &gid, true).await;
        }
        self.cleanup
            .commit_branch(database, work.xid.as_str(), work.branch_id)
            .await
    }

    async fn rollback_branch(&self, work: Phase2Work) -> BranchOutcome {
        let Some(database) = self.database(&work.resource_id) else {
            return retry(format!("resource {} is not served here", work.resource_id));
        };
        if work.kind == BranchKind::XA {
            let gid = crate::xa::gid(&work.xid, work.branch_id);
            return crate::xa::pg::finish(&self.side, database, &gid, false).await;
        }
        look_for_undo(&work, || self.replay(database, &work)).await
    }

    /// One attempt at the rollback of `work` (see [`look_for_undo`]).
    async fn replay(
        &self,
        database: &str,
        work: &Phase2Work,
    ) -> crate::Result<Option<BranchOutcome>> {
        let mut client = self.side.get(database).await?;
        let tx = client.transaction().await?;
        let xid = work.xid.as_str();
        let branch = work.branch_id as i64;
        let row = tx
            .query_opt(
                "SELECT rollback_info, log_status FROM undo_log WHERE xid = $1 AND branch_id = $2 FOR UPDATE",
                &[&xid, &branch],
            )
            .await?;
        let Some(row) = row else {
            // Phase 1 never committed, or has not yet: the marker makes a late phase-1
            // commit of this branch fail on the unique (xid, branch_id). A phase 1 whose
            // undo row is inserted but not yet committed is invisible to the SELECT; the
            // marker's INSERT waits for it and then fails on the key if it commits. It
            // must fail (no ON CONFLICT DO NOTHING): the branch then has data to undo.
            let marked = tx
                .execute(
                    "INSERT INTO undo_log (branch_id, xid, context, rollback_info, log_status) \
                     VALUES ($1, $2, 'tandem', '\\x', $3)",
                    &[&branch, &xid, &LOG_GLOBAL_FINISHED],
                )
                .await;
            return match marked {
                Ok(_) => {
                    tx.commit().await?;
                    Ok(Some(BranchOutcome::Done))
                }
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(None),
                Err(e) => Err(e.into()),
            };
        };
        let status: i32 = row.get(1);
        if status == LOG_GLOBAL_FINISHED {
            return Ok(Some(BranchOutcome::Done));
        }
        let record = match UndoRecord::decode(row.get::<_, &[u8]>(0)) {
            Ok(record) => record,
            Err(e) => {
                return Ok(Some(BranchOutcome::RollbackFailed {
                    reason: e.to_string(),
                }));
            }
        };
        // Every row is checked before any is restored: a restore touches only the
        // branch's own rows, by key, so no check reads what another restore wrote.
        let mut restores = Vec::new();
        for step in replay::plan(&Postgres, &record) {
            let params: Vec<Raw> = step.check.params.iter().cloned().map(Raw).collect();
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            let rows = tx.query(step.check.sql.as_str(), &refs).await?;
            let now: Option<Vec<Option<Vec<u8>>>> = match rows.as_slice() {
                [] => None,
                [row] => Some(
                    (0..row.len())
                        .map(|i| row.try_get::<_, Raw>(i).map(|r| r.0))
                        .collect::<Result<_, _>>()?,
                ),
                _ => {
                    return Ok(Some(BranchOutcome::RollbackFailed {
                        reason: format!("{}: several rows share a primary key", step.check.sql),
                    }));
                }
            };
            if now != step.expect {
                // A dirty write: the row changed after the branch. Leave everything as
                // it is (the transaction rolls back on drop) and keep the locks.
                tracing::warn!(xid, branch, check = %step.check.sql, "dirty write found: rollback stopped");
                return Ok(Some(BranchOutcome::RollbackFailed {
                    reason: format!(
                        "a row changed after the branch wrote it ({})",
                        step.check.sql
                    ),
                }));
            }
            restores.extend(step.apply);
        }
        restore_in_workable_order(&tx, restores).await?;
        // Undone in the same local transaction as the replay: both happen, or neither.
        tx.execute(
            "DELETE FROM undo_log WHERE xid = $1 AND branch_id = $2",
            &[&xid, &branch],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(BranchOutcome::Done))
    }
}

/// Runs the restores of a replay in the plan's order (newest row first), putting off
/// behind the others each one that a foreign key or a unique key refuses at that point,
/// until a pass restores nothing more. A branch keeps one before image per row, not
/// one per statement, so no fixed order restores every branch: one that pointed a
/// child at a parent it inserted, then deleted the old parent, must get the old parent
/// back, then the child, and only then delete the new parent. Each restore runs under
/// a savepoint where there are several, since a refused one fails the transaction.
async fn restore_in_workable_order(
    tx: &tokio_postgres::Transaction<'_>,
    restores: Vec<replay::Stmt>,
) -> crate::Result<()> {
    let run = |restore: &replay::Stmt| {
        let params: Vec<Raw> = restore.params.iter().cloned().map(Raw).collect();
        let sql = restore.sql.clone();
        async move {
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            tx.execute(sql.as_str(), &refs).await
        }
    };
    if restores.len() < 2 {
        for restore in &restores {
            run(restore).await?;
        }
        return Ok(());
    }
    let mut pending = restores;
    loop {
        let mut put_off = Vec::new();
        let mut refusal = None;
        let tried = pending.len();
        for restore in pending {
            tx.batch_execute("SAVEPOINT tandem_restore").await?;
            match run(&restore).await {
                Ok(_) => tx.batch_execute("RELEASE SAVEPOINT tandem_restore").await?,
                Err(e)
                    if matches!(
                        e.code(),
                        Some(&SqlState::FOREIGN_KEY_VIOLATION | &SqlState::UNIQUE_VIOLATION)
                    ) =>
                {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT tandem_restore")
                        .await?;
                    refusal.get_or_insert(e);
                    put_off.push(restore);
                }
                Err(e) => return Err(e.into()),
            }
        }
        match refusal {
            None => return Ok(()),
            // No restore got through this pass: none ever will.
            Some(e) if put_off.len() == tried => return Err(e.into()),
            Some(_) => pending = put_off,
        }
    }
}

/// How many times a rollback looks for a branch's undo row before it leaves the branch
/// to the lockserver's retry. Each look after the first follows a phase 1 that committed
/// during the previous one, which happens once per branch.
const LOOKS: usize = 3;

/// The rollback of AT branch `work` on either engine: `attempt` replays it once, and
/// gives `None` when the branch's phase 1 committed while it looked (its GlobalFinished
/// marker met the branch's own undo row), so it must look again.
pub async fn look_for_undo<F, E>(work: &Phase2Work, mut attempt: impl FnMut() -> F) -> BranchOutcome
where
    F: std::future::Future<Output = Result<Option<BranchOutcome>, E>>,
    E: std::fmt::Display,
{
    for _ in 0..LOOKS {
        match attempt().await {
            Ok(Some(outcome)) => return outcome,
            Ok(None) => continue,
            Err(e) => return retry(e.to_string()),
        }
    }
    retry(format!(
        "the undo row of branch {} appeared {LOOKS} times while its rollback looked for it",
        work.branch_id
    ))
}

fn retry(reason: String) -> BranchOutcome {
    BranchOutcome::Retry { reason }
}

impl BranchHandler for PgBranchHandler {
    fn commit(&self, work: Phase2Work) -> BoxFuture<'_, BranchOutcome> {
        Box::pin(self.commit_branch(work))
    }

    fn rollback(&self, work: Phase2Work) -> BoxFuture<'_, BranchOutcome> {
        Box::pin(self.rollback_branch(work))
    }
}

/// The resources this proxy serves phase 2 for, and the worker stream that announces
/// them to the lockserver. A resource is added the first time a branch is registered
/// on it, or at start-up for every database of the upstream.
pub struct Phase2Registry {
    lock: tandem_lockserver::client::LockClient,
    handler: Arc<dyn BranchHandler>,
    /// Fed with the lockserver's table notices, for writes outside global
    /// transactions.
    tables: Option<Arc<tandem_lockserver::client::TableLockView>>,
    // A std Mutex: never held across an await (the old worker is shut down in a task).
    state: std::sync::Mutex<(Vec<String>, Option<tandem_lockserver::client::Phase2Worker>)>,
}

impl Phase2Registry {
    pub fn new(
        lock: tandem_lockserver::client::LockClient,
        handler: Arc<dyn BranchHandler>,
        tables: Option<Arc<tandem_lockserver::client::TableLockView>>,
    ) -> Self {
        Phase2Registry {
            lock,
            handler,
            tables,
            state: std::sync::Mutex::new((Vec::new(), None)),
        }
    }

    /// The resources phase 2 serves now.
    pub fn served(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Makes sure phase-2 work for `resource` reaches this proxy.
    pub fn serve(&self, resource: &str) {
        self.serve_all(std::iter::once(resource.to_owned()));
    }

    pub fn serve_all(&self, resources: impl IntoIterator<Item = String>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = state.0.len();
        for r in resources {
            if !state.0.contains(&r) {
                state.0.push(r);
            }
        }
        if state.0.len() == before && state.1.is_some() {
            return;
        }
        let worker = tandem_lockserver::client::Phase2Worker::spawn(
            &self.lock,
            state.0.clone(),
            Arc::clone(&self.handler),
            tandem_lockserver::client::WorkerOptions {
                table_view: self.tables.clone(),
                ..Default::default()
            },
        );
        if let Some(old) = state.1.replace(worker) {
            tokio::spawn(old.shutdown());
        }
    }

    /// Stops the worker (shutdown).
    pub async fn shutdown(&self) {
        let worker = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .take();
        if let Some(worker) = worker {
            worker.shutdown().await;
        }
    }
}
