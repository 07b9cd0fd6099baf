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
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tandem_lockserver::client::{BoxFuture, BranchHandler, BranchKind, BranchOutcome, Phase2Work};
use tandem_undo::{Postgres, UndoRecord, replay};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Kind, ToSql, Type};

/// log_status of a normal undo row, as phase 1 writes it.
pub const LOG_NORMAL: i32 = 0;
/// log_status of the marker a rollback leaves when it finds no undo row.
pub const LOG_GLOBAL_FINISHED: i32 = 1;

pub struct PgBranchHandler {
    /// The server whose databases these are, as resource ids name it
    /// (`PgFrontend::server`).
    pub server: String,
    pub side: Arc<SidePools>,
    /// Deletes committed branches' undo rows in batches.
    pub cleanup: super::cleanup::Cleanup,
}

impl PgBranchHandler {
    /// The database of a resource id of ours.
    fn database<'a>(&self, resource: &'a str) -> Option<&'a str> {
        super::database_of(resource, &self.server)
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

    /// One attempt at the rollback of `work` (see [`look_for_undo`]): in the plan's
    /// order, and again in a workable one if a key refused a restore in that order.
    async fn replay(
        &self,
        database: &str,
        work: &Phase2Work,
    ) -> crate::Result<Option<BranchOutcome>> {
        match self.replay_in(database, work, Order::Plan).await? {
            Attempt::Outcome(outcome) => Ok(outcome),
            Attempt::OrderRefused => match self.replay_in(database, work, Order::Workable).await? {
                Attempt::Outcome(outcome) => Ok(outcome),
                // Not from a workable order: a refused restore is an error there.
                Attempt::OrderRefused => Ok(Some(retry("a key refused a restore".to_owned()))),
            },
        }
    }

    async fn replay_in(
        &self,
        database: &str,
        work: &Phase2Work,
        order: Order,
    ) -> crate::Result<Attempt> {
        let mut client = self.side.get(database).await?;
        let tx = client.transaction().await?;
        let xid = work.xid.as_str();
        let branch = work.branch_id as i64;
        // The branch wrote its row into the undo_log its session found on the search
        // path of tandem's own connections, as here. A table of that name in another
        // schema of that path (put ahead of it since, say) must not hide the row: each
        // is asked, in path order, and the row is undone from the one that holds it.
        let undo_logs: Vec<String> = tx
            .query(
                "SELECT n.nspname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relname = 'undo_log' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
                 AND n.nspname = ANY (current_schemas(false)) \
                 ORDER BY array_position(current_schemas(false), n.nspname)",
                &[],
            )
            .await?
            .iter()
            .map(|r| {
                format!(
                    "\"{}\".undo_log",
                    r.get::<_, String>(0).replace('"', "\"\"")
                )
            })
            .collect();
        let tables = match undo_logs.len() {
            // The usual case, and none at all (its error says so): by its plain name.
            0 | 1 => vec!["undo_log".to_owned()],
            _ => undo_logs,
        };
        let mut found = None;
        for table in &tables {
            let row = tx
                .query_opt(
                    &format!(
                        "SELECT rollback_info, log_status FROM {table} WHERE xid = $1 AND branch_id = $2 FOR UPDATE"
                    ),
                    &[&xid, &branch],
                )
                .await?;
            if let Some(row) = row {
                found = Some((table.as_str(), row));
                break;
            }
        }
        let (undo_log, row) = match found {
            Some((table, row)) => (table, Some(row)),
            None => (tables[0].as_str(), None),
        };
        let Some(row) = row else {
            // Phase 1 never committed, or has not yet: the marker makes a late phase-1
            // commit of this branch fail on the unique (xid, branch_id). A phase 1 whose
            // undo row is inserted but not yet committed is invisible to the SELECT; the
            // marker's INSERT waits for it and then fails on the key if it commits. It
            // must fail (no ON CONFLICT DO NOTHING): the branch then has data to undo.
            // Into the first undo_log on the path: the one a phase 1 finds now.
            let marked = tx
                .execute(
                    &format!(
                        "INSERT INTO {undo_log} (branch_id, xid, context, rollback_info, log_status) \
                         VALUES ($1, $2, 'tandem', '\\x', $3)"
                    ),
                    &[&branch, &xid, &LOG_GLOBAL_FINISHED],
                )
                .await;
            return match marked {
                Ok(_) => {
                    tx.commit().await?;
                    Ok(Attempt::Outcome(Some(BranchOutcome::Done)))
                }
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    Ok(Attempt::Outcome(None))
                }
                Err(e) => Err(e.into()),
            };
        };
        let status: i32 = row.get(1);
        if status == LOG_GLOBAL_FINISHED {
            return Ok(Attempt::Outcome(Some(BranchOutcome::Done)));
        }
        let record = match UndoRecord::decode(row.get::<_, &[u8]>(0)) {
            Ok(record) => record,
            Err(e) => {
                return Ok(Attempt::Outcome(Some(BranchOutcome::RollbackFailed {
                    reason: e.to_string(),
                })));
            }
        };
        let types = DeclaredTypes::of(&tx, &record).await?;
        // A DEFERRABLE constraint lets a statement leave rows that break it for a moment
        // (two rows swap their places in one UPDATE): restored row by row, they would
        // be refused in any order. Checked at the COMMIT, they hold as they held before.
        tx.batch_execute("SET CONSTRAINTS ALL DEFERRED").await?;
        match run_steps(&tx, &types, &record, order).await? {
            Ran::Done => {}
            Ran::Stopped(outcome) => {
                tracing::warn!("dirty write found: rollback stopped");
                return Ok(Attempt::Outcome(Some(outcome)));
            }
            Ran::OrderRefused => return Ok(Attempt::OrderRefused),
        }
        // Undone in the same local transaction as the replay: both happen, or neither.
        tx.execute(
            &format!("DELETE FROM {undo_log} WHERE xid = $1 AND branch_id = $2"),
            &[&xid, &branch],
        )
        .await?;
        tx.commit().await?;
        Ok(Attempt::Outcome(Some(BranchOutcome::Done)))
    }
}

/// In which order a replay restores rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// The plan's (table by table, newest row first), each row checked then restored.
    Plan,
    /// The plan's, but a row whose restore a foreign, unique or exclusion key refuses at that
    /// point is put off (under a savepoint, since the refusal fails the transaction)
    /// behind the others, checked again and retried, until a pass restores nothing more.
    /// A branch keeps one before image per row, not one per statement, so no fixed
    /// order restores every branch: one that pointed a child at a parent it inserted,
    /// then deleted the old parent, needs the old parent back, then the child, and only
    /// then the new parent gone.
    Workable,
}

/// What running a replay's steps came to.
enum Ran {
    Done,
    /// A dirty write: everything stays as it is (the transaction rolls back on drop),
    /// and so do the locks.
    Stopped(BranchOutcome),
    /// In the plan's order a key refused a restore, which failed the transaction.
    OrderRefused,
}

/// One replay in one order.
enum Attempt {
    /// What `look_for_undo` takes.
    Outcome(Option<BranchOutcome>),
    /// The plan's order failed on a key: try a workable one.
    OrderRefused,
}

async fn run_steps(
    tx: &tokio_postgres::Transaction<'_>,
    types: &DeclaredTypes,
    record: &UndoRecord,
    order: Order,
) -> crate::Result<Ran> {
    let steps = replay::plan(&Postgres, record);
    let careful =
        order == Order::Workable && steps.iter().filter(|s| s.apply.is_some()).count() > 1;
    let mut pending = steps;
    loop {
        let tried = pending.len();
        let mut put_off = Vec::new();
        let mut refusal = None;
        for step in pending {
            let column_types = record
                .tables
                .get(step.table)
                .map_or(&[][..], |t| t.types.as_slice());
            if let Some(outcome) = check_step(tx, types, &step, column_types).await? {
                return Ok(Ran::Stopped(outcome));
            }
            let Some(apply) = &step.apply else {
                continue;
            };
            if careful {
                tx.batch_execute("SAVEPOINT tandem_restore").await?;
            }
            match types.execute(tx, apply).await {
                Ok(_) if careful => tx.batch_execute("RELEASE SAVEPOINT tandem_restore").await?,
                Ok(_) => {}
                Err(e) if refused_by_a_key(&e) && order == Order::Plan => {
                    return Ok(Ran::OrderRefused);
                }
                Err(e) if refused_by_a_key(&e) && careful => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT tandem_restore")
                        .await?;
                    refusal.get_or_insert(e);
                    put_off.push(step);
                }
                Err(e) => return Err(e.into()),
            }
        }
        match refusal {
            None => return Ok(Ran::Done),
            // No restore got through this pass: none ever will one at a time.
            Some(e) if put_off.len() == tried => {
                return match restore_together(tx, types, record, &put_off).await? {
                    true => Ok(Ran::Done),
                    false => Err(e.into()),
                };
            }
            // The other way round next: a row whose restore waits for the next
            // one's (rows that each moved into the next one's unique value) is put
            // off by one pass in the plan's order, and restored by the following
            // one, where one pass a row would take as many passes as rows.
            Some(_) => {
                put_off.reverse();
                pending = put_off;
            }
        }
    }
}

/// Restores the rows of `stuck` (checked, and locked, by this pass) in one statement
/// ([`replay::restore_together`]), or through temporary tables where their images need
/// more parameters than one statement binds, under a savepoint; whether that got
/// through.
async fn restore_together(
    tx: &tokio_postgres::Transaction<'_>,
    types: &DeclaredTypes,
    record: &UndoRecord,
    stuck: &[replay::Step],
) -> crate::Result<bool> {
    let steps: Vec<&replay::Step> = stuck.iter().collect();
    let Some(together) = replay::restore_together(&Postgres, record, &steps) else {
        return Ok(false);
    };
    if !deletable_as_captured(tx, record, stuck).await? {
        return Ok(false);
    }
    let staged = if together.params.len() <= replay::MOST_PARAMS {
        None
    } else {
        let Some(staged) = replay::restore_staged(&Postgres, record, &steps) else {
            return Ok(false);
        };
        Some(staged)
    };
    tx.batch_execute("SAVEPOINT tandem_restore").await?;
    let restored = match &staged {
        None => types.execute(tx, &together).await,
        Some(staged) => restore_staged(tx, types, staged).await,
    };
    match restored {
        Ok(_) => {
            tx.batch_execute("RELEASE SAVEPOINT tandem_restore").await?;
            Ok(true)
        }
        Err(e) => {
            tracing::debug!(error = %e, rows = stuck.len(), "rows that refuse one another's restores were not restored together either");
            tx.batch_execute("ROLLBACK TO SAVEPOINT tandem_restore")
                .await?;
            Ok(false)
        }
    }
}

/// [`replay::restore_staged`]: the rows of `steps` through temporary tables, for images
/// that need more parameters than one statement binds.
async fn restore_staged(
    tx: &tokio_postgres::Transaction<'_>,
    types: &DeclaredTypes,
    staged: &replay::Staged,
) -> Result<u64, tokio_postgres::Error> {
    for statement in &staged.setup {
        types.execute(tx, statement).await?;
    }
    types.execute(tx, &staged.together).await
}

/// Whether the tables of `stuck` are still as the branch captured them, so that
/// deleting their rows and inserting them again changes nothing else: no foreign key
/// whose ON DELETE action would reach rows the branch never held, no trigger and no
/// rewrite rule, on the table or any partition of it, and no column the images lack
/// (DDL since the branch wrote: a table like that is never captured, and a row put
/// back by UPDATE keeps what the images do not name).
async fn deletable_as_captured(
    tx: &tokio_postgres::Transaction<'_>,
    record: &UndoRecord,
    stuck: &[replay::Step],
) -> crate::Result<bool> {
    let mut tables: Vec<usize> = stuck.iter().map(|s| s.table).collect();
    tables.sort_unstable();
    tables.dedup();
    for t in tables {
        let Some(table) = record.tables.get(t) else {
            return Ok(false);
        };
        let name = tandem_undo::Dialect::qualified(
            &Postgres,
            &tandem_undo::TableRef {
                schema: table.schema.clone(),
                name: table.table.clone(),
            },
        );
        let row = tx
            .query_one(
                "WITH tree AS (SELECT to_regclass($1) AS r \
                   UNION SELECT relid FROM pg_catalog.pg_partition_tree(to_regclass($1))) \
                 SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE contype = 'f' \
                   AND confdeltype IN ('c', 'n', 'd') AND confrelid IN (SELECT r FROM tree)) \
                 OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger \
                   WHERE tgrelid IN (SELECT r FROM tree) AND NOT tgisinternal) \
                 OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite \
                   WHERE ev_class IN (SELECT r FROM tree) AND rulename <> '_RETURN'), \
                 ARRAY(SELECT attname::text FROM pg_catalog.pg_attribute \
                   WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum)",
                &[&name],
            )
            .await?;
        let (acted_on, columns): (bool, Vec<String>) = (row.get(0), row.get(1));
        if acted_on || columns != table.columns {
            tracing::debug!(table = %name, "rows that refuse one another's restores are not put back together: the table changed since the branch wrote");
            return Ok(false);
        }
    }
    Ok(true)
}

/// A refusal that another order of restores may avoid: a row put back where another
/// still holds its key, or its place under an exclusion constraint, or before the row
/// it refers to.
fn refused_by_a_key(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(
            &SqlState::FOREIGN_KEY_VIOLATION
                | &SqlState::UNIQUE_VIOLATION
                | &SqlState::EXCLUSION_VIOLATION
        )
    )
}

/// The parameter types a replay declares: left to the server, a parameter compared with
/// a composite-typed key would be an anonymous `record`, which has no binary input. The
/// images were read with the OIDs they hold; a user type dropped and created again since
/// has another, and its parameters are left to the server to infer.
struct DeclaredTypes {
    /// The record's user-defined type OIDs that still exist.
    live: HashSet<u32>,
}

impl DeclaredTypes {
    async fn of(
        tx: &tokio_postgres::Transaction<'_>,
        record: &UndoRecord,
    ) -> Result<Self, tokio_postgres::Error> {
        let user: HashSet<u32> = record
            .tables
            .iter()
            .flat_map(|t| t.types.iter().copied())
            .filter(|&oid| Type::from_oid(oid).is_none())
            .collect();
        let mut live = HashSet::new();
        if !user.is_empty() {
            let user: Vec<u32> = user.into_iter().collect();
            for row in tx
                .query(
                    "SELECT oid FROM pg_catalog.pg_type WHERE oid = ANY($1)",
                    &[&user],
                )
                .await?
            {
                live.insert(row.get::<_, u32>(0));
            }
        }
        Ok(DeclaredTypes { live })
    }

    async fn prepare(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        stmt: &replay::Stmt,
    ) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
        let types: Vec<Type> = stmt
            .types
            .iter()
            .map(|&oid| match Type::from_oid(oid) {
                Some(builtin) => builtin,
                // 0: unspecified, for the server to infer.
                None => {
                    let declared = if self.live.contains(&oid) { oid } else { 0 };
                    Type::new(format!("oid {oid}"), declared, Kind::Simple, String::new())
                }
            })
            .collect();
        tx.prepare_typed(&stmt.sql, &types).await
    }

    /// Prepares `stmt` with its declared types and runs it with its binary parameters.
    async fn execute(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        stmt: &replay::Stmt,
    ) -> Result<u64, tokio_postgres::Error> {
        let params: Vec<Raw> = stmt.params.iter().cloned().map(Raw).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let statement = self.prepare(tx, stmt).await?;
        tx.execute(&statement, &refs).await
    }
}

/// Reads the step's row, locked; a RollbackFailed outcome if it is not what the branch
/// left.
async fn check_step(
    tx: &tokio_postgres::Transaction<'_>,
    types: &DeclaredTypes,
    step: &replay::Step,
    column_types: &[u32],
) -> crate::Result<Option<BranchOutcome>> {
    let params: Vec<Raw> = step.check.params.iter().cloned().map(Raw).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let rows = tx
        .query(&types.prepare(tx, &step.check).await?, &refs)
        .await?;
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
    if !same_row(now.as_deref(), step.expect.as_deref(), column_types) {
        // The row changed after the branch wrote it.
        return Ok(Some(BranchOutcome::RollbackFailed {
            reason: format!(
                "a row changed after the branch wrote it ({})",
                step.check.sql
            ),
        }));
    }
    Ok(None)
}

/// Whether two binary rows hold the same values, column by column: byte for byte,
/// except that a built-in array type's has-nulls flag is read from its elements. An
/// array stored with a null bitmap but no NULL left (`a[2] = 5` on `'{1,NULL}'`, a
/// slice) sends the flag 1; the same array written back by a restore is stored
/// without the bitmap and sends 0, though nothing changed it.
fn same_row(
    a: Option<&[Option<Vec<u8>>]>,
    b: Option<&[Option<Vec<u8>>]>,
    column_types: &[u32],
) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return a.is_none() && b.is_none();
    };
    a.len() == b.len()
        && a.iter().zip(b).enumerate().all(|(i, (x, y))| {
            x == y
                || column_types
                    .get(i)
                    .and_then(|&oid| Type::from_oid(oid))
                    .is_some_and(|t| matches!(t.kind(), Kind::Array(_)))
                    && matches!((x, y), (Some(x), Some(y)) if array_flagged_as_is(x) == array_flagged_as_is(y))
        })
}

/// A binary array with its has-nulls flag set as its elements say (unchanged if it is
/// not a well-formed one-level-per-dimension array).
fn array_flagged_as_is(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|w| i32::from_be_bytes([w[0], w[1], w[2], w[3]]))
    };
    let (Some(ndim), Some(flag)) = (word(0), word(4)) else {
        return bytes.into();
    };
    if flag != 1 || !(0..=6).contains(&ndim) {
        return bytes.into();
    }
    let mut at = 12 + 8 * ndim as usize;
    let mut any_null = false;
    while at < bytes.len() {
        let Some(len) = word(at) else {
            return bytes.into();
        };
        at += 4;
        if len < 0 {
            any_null = true;
        } else {
            at += len as usize;
        }
    }
    if any_null || at != bytes.len() {
        return bytes.into();
    }
    let mut cleared = bytes.to_vec();
    cleared[4..8].copy_from_slice(&0i32.to_be_bytes());
    cleared.into()
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
            Err(e) => {
                // Retrying may never clear it (a unique value another row took since):
                // an operator must hear of it where the rows are.
                tracing::warn!(error = %e, "rollback of a branch failed; the lockserver retries it");
                return retry(e.to_string());
            }
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

/// How long a replaced phase-2 stream is kept for its successor's snapshot, at most.
const REPLACED_STREAM_KEPT: Duration = Duration::from_secs(10);

/// The resources this proxy serves phase 2 for, and the worker stream that announces
/// them to the lockserver. A resource is added the first time a branch is registered
/// on it, or at start-up for every database of the upstream.
pub struct Phase2Registry {
    lock: tandem_lockserver::client::LockClient,
    handler: Arc<dyn BranchHandler>,
    /// Fed with the lockserver's table notices, for writes outside global
    /// transactions.
    tables: Option<Arc<tandem_lockserver::client::TableLockView>>,
    /// Shared by the workers that replace one another as resources are added.
    in_flight: tandem_lockserver::client::InFlight,
    // A std Mutex: never held across an await (old workers are shut down in tasks).
    state: Arc<std::sync::Mutex<Workers>>,
}

/// The workers of a [`Phase2Registry`].
#[derive(Default)]
struct Workers {
    resources: Vec<String>,
    /// The newest, for every resource.
    current: Option<tandem_lockserver::client::Phase2Worker>,
    /// Replaced ones, retired, until `current` delivers its snapshot (the view follows
    /// theirs until then; stopped at once, the newest of them would leave every
    /// database's view untrusted meanwhile: all writes checked, some refused).
    kept: Vec<tandem_lockserver::client::Phase2Worker>,
    /// Workers spawned so far; `current` is the last.
    spawned: u64,
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
            in_flight: Default::default(),
            state: Default::default(),
        }
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, Workers> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The resources phase 2 serves now.
    pub fn served(&self) -> Vec<String> {
        self.workers().resources.clone()
    }

    /// Makes sure phase-2 work for `resource` reaches this proxy.
    pub fn serve(&self, resource: &str) {
        self.serve_all(std::iter::once(resource.to_owned()));
    }

    pub fn serve_all(&self, resources: impl IntoIterator<Item = String>) {
        let mut workers = self.workers();
        let before = workers.resources.len();
        for r in resources {
            if !workers.resources.contains(&r) {
                workers.resources.push(r);
            }
        }
        if workers.resources.len() == before && workers.current.is_some() {
            return;
        }
        let worker = tandem_lockserver::client::Phase2Worker::spawn(
            &self.lock,
            workers.resources.clone(),
            Arc::clone(&self.handler),
            tandem_lockserver::client::WorkerOptions {
                table_view: self.tables.clone(),
                in_flight: self.in_flight.clone(),
                // What the lockserver names this proxy by, with its address, when it
                // waits for its acknowledgements: the process, on its host.
                name: format!("tandem-proxy pid {}", std::process::id()),
                ..Default::default()
            },
        );
        let delivered = worker.delivered();
        workers.spawned += 1;
        let this = workers.spawned;
        if let Some(old) = workers.current.replace(worker) {
            old.retire();
            workers.kept.push(old);
        }
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            // A new stream that never delivers does not keep the old ones for good.
            let _ = tokio::time::timeout(REPLACED_STREAM_KEPT, delivered).await;
            let kept = {
                let mut workers = state.lock().unwrap_or_else(|p| p.into_inner());
                if workers.spawned != this {
                    // Replaced in turn: the newer worker's wait lets them go.
                    return;
                }
                std::mem::take(&mut workers.kept)
            };
            for old in kept {
                old.shutdown().await;
            }
        });
    }

    /// Whether phase-2 work reaches this proxy: its stream to the lockserver is
    /// established. None while it serves no resource (no stream is wanted).
    pub fn connected(&self) -> Option<bool> {
        self.workers()
            .current
            .as_ref()
            .map(|worker| worker.is_connected())
    }

    /// Stops the workers (shutdown).
    pub async fn shutdown(&self) {
        let (current, kept) = {
            let mut workers = self.workers();
            (workers.current.take(), std::mem::take(&mut workers.kept))
        };
        for worker in current.into_iter().chain(kept) {
            worker.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{array_flagged_as_is, same_row};

    /// A one-dimensional int4 array in binary: has-nulls `flag`, elements (None: NULL).
    fn int_array(flag: i32, elements: &[Option<i32>]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [1, flag, 23, elements.len() as i32, 1] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        for e in elements {
            match e {
                Some(v) => {
                    out.extend_from_slice(&4i32.to_be_bytes());
                    out.extend_from_slice(&v.to_be_bytes());
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out
    }

    #[test]
    fn an_arrays_has_nulls_flag_is_read_from_its_elements() {
        let flagged = int_array(1, &[Some(1)]);
        assert_eq!(
            &*array_flagged_as_is(&flagged),
            &int_array(0, &[Some(1)])[..]
        );
        let with_null = int_array(1, &[Some(1), None]);
        assert_eq!(&*array_flagged_as_is(&with_null), &with_null[..]);
        assert_eq!(&*array_flagged_as_is(&[0, 0, 0]), &[0, 0, 0][..]);

        let int4_array = 1007;
        let row = |a: Vec<u8>| vec![Some(vec![0, 0, 0, 1]), Some(a)];
        let (stored, put_back) = (row(flagged), row(int_array(0, &[Some(1)])));
        assert!(same_row(Some(&stored), Some(&put_back), &[23, int4_array]));
        // Not an array column: bytes must match.
        assert!(!same_row(Some(&stored), Some(&put_back), &[23, 17]));
        let other = row(int_array(0, &[Some(2)]));
        assert!(!same_row(Some(&stored), Some(&other), &[23, int4_array]));
        assert!(same_row(None, None, &[]));
        assert!(!same_row(Some(&stored), None, &[23, int4_array]));
    }
}
