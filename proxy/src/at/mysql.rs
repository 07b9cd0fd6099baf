//! AT mode's side-connection half on MySQL/MariaDB: table metadata from
//! information_schema (cached), and phase 2 of AT branches: deleting a committed
//! branch's undo row, replaying a rolled-back one behind its dirty-write checks.
//!
//! Runs on tandem's side connections (service credentials), never on a client's. Phase 2
//! is idempotent as on PostgreSQL: a second commit deletes nothing, a second rollback
//! finds its GlobalFinished marker. Invariant: a replay writes nothing unless every row
//! still equals the branch's after image.

use super::branch::KeyValues;
use super::phase2::{LOG_GLOBAL_FINISHED, LOG_NORMAL};
use crate::error::Result;
use mysql_async::Value;
use mysql_async::prelude::Queryable;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tandem_lockserver::client::{BranchOutcome, Phase2Work};
use tandem_undo::mysql::catalog::{self, Catalog, CatalogRow, MysqlTable};
use tandem_undo::mysql::types;
use tandem_undo::{Mysql, TableRef, UndoRecord, replay};

/// What the replay connection runs first (undo/ARCHITECTURE.md, "MySQL and MariaDB"):
/// parameters are binary strings, TIMESTAMP images are UTC, zero dates and key 0 go
/// back as they were, and a value that does not fit fails.
const REPLAY_SESSION: &str = "SET NAMES binary, time_zone = '+00:00', sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,ALLOW_INVALID_DATES,NO_ENGINE_SUBSTITUTION', foreign_key_checks = 1";

/// A table as AT on MySQL needs it: what MySQL adds, and the metadata undo shares.
pub struct AtTable {
    pub mysql: MysqlTable,
    /// `mysql.meta`, shared with the branches that hold the table's rows.
    pub meta: Arc<tandem_undo::TableMeta>,
}

/// Cached tables by (database, table), each with when it was read.
type Tables = HashMap<(String, TableRef), (Instant, Arc<AtTable>)>;

/// Table metadata per (database, table), read over the side pool.
#[derive(Default)]
pub struct MysqlMetaCache {
    // A std Mutex: held only to look up or insert, never across an await.
    tables: Mutex<Tables>,
    /// The server's stored functions (names lower-cased), under the key "".
    functions: super::meta::NamesCache,
    /// The tables under each view of the server (`tables_under_views`), under the
    /// key "".
    views: super::meta::NamesCache<HashMap<String, Vec<String>>>,
    /// The tables foreign-key actions reach from each table of the server
    /// (`reached_by_actions`), under the key "".
    actions: super::meta::NamesCache<HashMap<String, Vec<String>>>,
}

/// Each foreign key with actions: the table it references and its own.
const ACTING_KEYS: &str = "SELECT REFERENCED_TABLE_NAME, TABLE_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE DELETE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT') OR UPDATE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT')";

/// For each table (by name, in any database) that foreign keys with actions reference:
/// every table those actions may change, at any depth.
fn reached_by_actions(keys: Vec<(String, String)>) -> HashMap<String, Vec<String>> {
    let mut acting: HashMap<String, Vec<String>> = HashMap::new();
    for (referenced, table) in keys {
        let tables = acting.entry(referenced).or_default();
        if !tables.contains(&table) {
            tables.push(table);
        }
    }
    acting
        .iter()
        .map(|(root, tables)| (root.clone(), reachable(&acting, tables)))
        .collect()
}

/// Every name `first` holds and every name reached from those through `next`, at any
/// depth, each once.
fn reachable(next: &HashMap<String, Vec<String>>, first: &[String]) -> Vec<String> {
    let mut reached: Vec<String> = Vec::new();
    let mut to_visit: Vec<&String> = first.iter().collect();
    while let Some(name) = to_visit.pop() {
        if reached.contains(name) {
            continue;
        }
        reached.push(name.clone());
        to_visit.extend(next.get(name).into_iter().flatten());
    }
    reached
}

/// Every view of the server with its definition (empty where the service user may
/// not read it).
const VIEWS: &str = "SELECT TABLE_SCHEMA, TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS WHERE TABLE_SCHEMA NOT IN ('sys', 'mysql', 'information_schema', 'performance_schema')";

/// For each view, by database and name (`meta::qualified_key`) and by name alone (any
/// database's view of that name), the tables a write through it may change: every
/// name its definition reads, followed through the views of those names at any depth
/// (a name that is a view somewhere may be a table elsewhere: it is kept too). A
/// definition tandem cannot read counts as reading every table.
fn tables_under_views(views: Vec<(String, String, String)>) -> HashMap<String, Vec<String>> {
    let mut reads: HashMap<String, Vec<String>> = HashMap::new();
    let mut qualified = Vec::with_capacity(views.len());
    for (schema, view, definition) in views {
        let named = tandem_undo::tables_named(&tandem_undo::Mysql, &definition)
            .filter(|named| !named.is_empty())
            .unwrap_or_else(|| vec![tandem_undo::EVERY_TABLE.to_owned()]);
        // One name in several databases: what any of them reads.
        let entry = reads.entry(view.clone()).or_default();
        for table in &named {
            if !entry.contains(table) {
                entry.push(table.clone());
            }
        }
        qualified.push((super::meta::qualified_key(&schema, &view), named));
    }
    let mut under_views: HashMap<String, Vec<String>> = reads
        .iter()
        .map(|(view, named)| (view.clone(), reachable(&reads, named)))
        .collect();
    for (key, named) in qualified {
        under_views.insert(key, reachable(&reads, &named));
    }
    under_views
}

/// Every stored function of the server, by name. MySQL does not enforce `READS SQL
/// DATA` or `NO SQL`, so any of them may write.
/// The server's own schemas (MariaDB's and MySQL's `sys` helpers) are left out.
const STORED_FUNCTIONS: &str = "SELECT DISTINCT LOWER(ROUTINE_NAME) FROM information_schema.ROUTINES WHERE ROUTINE_TYPE = 'FUNCTION' AND ROUTINE_SCHEMA NOT IN ('sys', 'mysql', 'information_schema', 'performance_schema')";

impl MysqlMetaCache {
    pub async fn get(
        &self,
        pool: &mysql_async::Pool,
        database: &str,
        table: &TableRef,
    ) -> Result<Arc<AtTable>> {
        let key = (database.to_owned(), table.clone());
        if let Some(fresh) = super::meta::fresh_or_claimed(&mut self.lock(), &key) {
            return Ok(fresh);
        }
        let mysql = match load(pool, database, table).await {
            Ok(mysql) => mysql,
            Err(e) => {
                self.lock().remove(&key);
                return Err(e);
            }
        };
        let meta = Arc::new(AtTable {
            meta: Arc::new(mysql.meta.clone()),
            mysql,
        });
        self.lock().insert(key, (Instant::now(), Arc::clone(&meta)));
        Ok(meta)
    }

    /// The names of the server's stored functions (see `STORED_FUNCTIONS`), read again
    /// every few seconds or after DDL (`NamesCache`): tandem captures no write one
    /// makes.
    pub async fn stored_functions(&self, pool: &mysql_async::Pool) -> Result<Arc<HashSet<String>>> {
        let read = async {
            let mut conn = pool.get_conn().await?;
            let names: Vec<String> = conn.query(STORED_FUNCTIONS).await?;
            Ok::<_, crate::error::Error>(names.into_iter().collect())
        };
        self.functions.get("", read).await
    }

    /// The tables under each view of the server, by view name (see
    /// `tables_under_views`), read again every few seconds or after DDL.
    pub async fn views(
        &self,
        pool: &mysql_async::Pool,
    ) -> Result<Arc<HashMap<String, Vec<String>>>> {
        let read = async {
            let mut conn = pool.get_conn().await?;
            let views: Vec<(String, String, Option<String>)> = conn.query(VIEWS).await?;
            let views = views
                .into_iter()
                .map(|(schema, name, definition)| (schema, name, definition.unwrap_or_default()))
                .collect();
            Ok::<_, crate::error::Error>(tables_under_views(views))
        };
        self.views.get("", read).await
    }

    /// The tables foreign-key actions reach from each table of the server, by name
    /// (see `reached_by_actions`), read again every few seconds or after DDL.
    pub async fn actions(
        &self,
        pool: &mysql_async::Pool,
    ) -> Result<Arc<HashMap<String, Vec<String>>>> {
        let read = async {
            let mut conn = pool.get_conn().await?;
            let keys: Vec<(String, String)> = conn.query(ACTING_KEYS).await?;
            Ok::<_, crate::error::Error>(reached_by_actions(keys))
        };
        self.actions.get("", read).await
    }

    /// DDL ran through this proxy: forget every table, function, view and key.
    pub fn invalidate(&self) {
        self.lock().clear();
        self.functions.invalidate_all();
        self.views.invalidate_all();
        self.actions.invalidate_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn load(pool: &mysql_async::Pool, database: &str, table: &TableRef) -> Result<MysqlTable> {
    let mut conn = pool.get_conn().await?;
    let schema = table.schema.clone().unwrap_or_else(|| database.to_owned());
    let params = (schema, table.name.clone());
    let mut query = async |sql: &str| -> Result<Vec<CatalogRow>> {
        let rows: Vec<mysql_async::Row> = conn.exec(sql, params.clone()).await?;
        Ok(rows.into_iter().map(catalog_row).collect())
    };
    let table_rows = query(catalog::TABLE).await?;
    if table_rows.is_empty() {
        // The server would answer the write so (1146), not tandem's metadata.
        return Err(crate::error::Error::UnknownTable {
            table: format!("{}.{}", params.0, params.1),
        });
    }
    let found = Catalog {
        table: table_rows,
        columns: query(catalog::COLUMNS).await?,
        unique_keys: query(catalog::UNIQUE_KEYS).await?,
        triggers: query(catalog::TRIGGERS).await?,
        cascades: query(catalog::CASCADES).await?,
    };
    Ok(MysqlTable::from_catalog(table, &found)?)
}

/// A catalog row as text, as `MysqlTable::from_catalog` reads it.
fn catalog_row(row: mysql_async::Row) -> CatalogRow {
    row.unwrap()
        .into_iter()
        .map(|v| match v {
            Value::NULL => None,
            Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            Value::Int(i) => Some(i.to_string()),
            Value::UInt(u) => Some(u.to_string()),
            other => Some(other.as_sql(true)),
        })
        .collect()
}

/// Values bound to one weighing statement, at most.
const WEIGHED_PER_STATEMENT: usize = 1_000;

/// Replaces each key part that a collation compares, in every set of `keys` (rows of
/// its table), by what the server weighs it at ([`types::lock_key_part`]), so that the
/// global lock key of a row is the same whichever spelling names it: under
/// utf8mb4_general_ci a DELETE of `'Bob'` and a later INSERT of `'bob '` are the same
/// row, and must meet at the lockserver. Over one connection of `pool` (WEIGHT_STRING
/// is a function of the value and the collation alone), one statement per 1,000
/// values; none at all when no table's key has such a part.
pub async fn weigh_keys(
    pool: &mysql_async::Pool,
    sets: &mut [(&tandem_undo::TableMeta, &mut [KeyValues])],
) -> Result<()> {
    let mut conn: Option<mysql_async::Conn> = None;
    for (meta, keys) in sets.iter_mut() {
        let parts: Vec<(usize, &tandem_undo::Collation)> = meta
            .key_collations()
            .into_iter()
            .enumerate()
            .filter_map(|(at, collation)| collation.map(|c| (at, c)))
            .collect();
        if parts.is_empty() || keys.is_empty() {
            continue;
        }
        let conn = match &mut conn {
            Some(conn) => conn,
            None => {
                let mut fresh = pool.get_conn().await?;
                // The values are the column's own bytes: bound as binary strings,
                // nothing converts them on the way.
                fresh.query_drop("SET NAMES binary").await?;
                conn.insert(fresh)
            }
        };
        weigh_table_keys(conn, &parts, keys).await?;
    }
    Ok(())
}

/// [`weigh_keys`] for one table's keys, whose parts `parts` (position in the key,
/// collation) a collation compares.
async fn weigh_table_keys(
    conn: &mut mysql_async::Conn,
    parts: &[(usize, &tandem_undo::Collation)],
    keys: &mut [KeyValues],
) -> Result<()> {
    let collations: Vec<&tandem_undo::Collation> = parts.iter().map(|(_, c)| *c).collect();
    let unexpected = |what: String| crate::error::Error::Injected { message: what };
    for chunk in keys.chunks_mut((WEIGHED_PER_STATEMENT / parts.len()).max(1)) {
        let params: Vec<Value> = chunk
            .iter()
            .flat_map(|key| {
                parts.iter().map(|&(at, _)| match key.get(at) {
                    Some(Some(bytes)) => Value::Bytes(bytes.clone()),
                    _ => Value::NULL,
                })
            })
            .collect();
        let sql = types::weights_sql(&collations, params.len());
        let row: Option<mysql_async::Row> = conn.exec_first(sql, params).await?;
        let mut values = row
            .map(mysql_async::Row::unwrap)
            .unwrap_or_default()
            .into_iter()
            .map(|v| match v {
                Value::Bytes(bytes) => Ok(Some(bytes)),
                Value::NULL => Ok(None),
                other => Err(unexpected(format!("a key's weight came back as {other:?}"))),
            });
        let mut pads = Vec::with_capacity(parts.len());
        for _ in parts {
            let mut probe = || {
                values
                    .next()
                    .unwrap_or(Ok(None))
                    .map(Option::unwrap_or_default)
            };
            let (space, a_space, a) = (probe()?, probe()?, probe()?);
            pads.push(types::pad_weight(&space, &a_space, &a));
        }
        for key in chunk.iter_mut() {
            for (&(at, _), pad) in parts.iter().zip(&pads) {
                let weight = values
                    .next()
                    .ok_or_else(|| unexpected("fewer weights than keys".to_owned()))??;
                if let Some(part) = key.get_mut(at) {
                    *part = weight.map(|w| types::lock_key_part(w, pad.as_deref()));
                }
            }
        }
    }
    Ok(())
}

/// `` `database`.undo_log ``: the undo log of a resource, whatever database the client's
/// session uses at the moment.
pub fn undo_table(database: &str) -> String {
    format!("`{}`.undo_log", database.replace('`', "``"))
}

/// The database of a MySQL resource id (`mysql://upstream/database`).
pub fn database_of<'a>(resource: &'a str, upstream: &str) -> Option<&'a str> {
    resource
        .strip_prefix("mysql://")?
        .strip_prefix(upstream)?
        .strip_prefix('/')
}

/// A transaction of tandem's own that writes under READ COMMITTED, whose locking reads
/// lock no gap, where the server takes writes under it: not with the binary log on in
/// STATEMENT format, where InnoDB refuses every write under READ COMMITTED (1665) and
/// the server's own isolation stays.
async fn gapless_writes(
    conn: &mut mysql_async::Conn,
) -> std::result::Result<mysql_async::TxOpts, mysql_async::Error> {
    let logged: Option<(Option<i64>, Option<String>)> = conn
        .query_first("SELECT @@log_bin, @@binlog_format")
        .await?;
    let (log_bin, format) = logged.unwrap_or_default();
    let mut opts = mysql_async::TxOpts::default();
    if read_committed_takes_writes(log_bin == Some(1), format.as_deref()) {
        opts.with_isolation_level(mysql_async::IsolationLevel::ReadCommitted);
    }
    Ok(opts)
}

/// Whether InnoDB takes writes under READ COMMITTED with the binary log `log_bin` and
/// `binlog_format`.
fn read_committed_takes_writes(log_bin: bool, binlog_format: Option<&str>) -> bool {
    !(log_bin && binlog_format.is_some_and(|f| f.eq_ignore_ascii_case("STATEMENT")))
}

/// MySQL's undo rows, deleted in batches (`at::cleanup`) over the side pool: one
/// transaction, so one commit, per batch. The locking read names the rows the DELETE
/// then removes (MySQL's DELETE has no RETURNING); a row inserted by a local COMMIT
/// still on its way is waited for, or, not inserted yet, is found by a later delivery.
/// READ COMMITTED (`gapless_writes`), so that the read locks no gap a branch's undo
/// row would go into.
pub struct MysqlDelete(pub mysql_async::Pool);

impl super::cleanup::BatchDelete for MysqlDelete {
    fn delete<'a>(
        &'a self,
        database: &'a str,
        keys: &'a [super::cleanup::UndoKey],
    ) -> tandem_lockserver::client::BoxFuture<
        'a,
        std::result::Result<std::collections::HashSet<super::cleanup::UndoKey>, String>,
    > {
        Box::pin(async move {
            let tuples = vec!["(?, ?)"; keys.len()].join(", ");
            let params: Vec<Value> = keys
                .iter()
                .flat_map(|(xid, branch)| [Value::from(xid.as_str()), Value::from(*branch)])
                .collect();
            let undo_log = undo_table(database);
            let delete = async {
                let mut conn = self.0.get_conn().await?;
                let opts = gapless_writes(&mut conn).await?;
                let mut tx = conn.start_transaction(opts).await?;
                let found: Vec<(String, i64)> = tx
                    .exec(
                        format!(
                            "SELECT xid, branch_id FROM {undo_log} WHERE (xid, branch_id) IN ({tuples}) FOR UPDATE"
                        ),
                        params.clone(),
                    )
                    .await?;
                if !found.is_empty() {
                    tx.exec_drop(
                        format!("DELETE FROM {undo_log} WHERE (xid, branch_id) IN ({tuples})"),
                        params,
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok::<_, mysql_async::Error>(
                    found
                        .into_iter()
                        .map(|(xid, branch)| (xid, branch as u64))
                        .collect(),
                )
            };
            delete.await.map_err(|e| e.to_string())
        })
    }
}

/// Phase-2 rollback of an AT branch: its undo record replayed, newest row first.
pub async fn rollback(
    pool: &mysql_async::Pool,
    database: &str,
    work: &Phase2Work,
) -> BranchOutcome {
    super::phase2::look_for_undo(work, || replay_branch(pool, database, work)).await
}

/// MySQL's ER_DUP_ENTRY.
const DUPLICATE_KEY: u16 = 1062;
/// Errors a restore may meet only because of the order restores run in: a duplicate
/// key, a child row without its parent (ER_NO_REFERENCED_ROW_2), a parent row a child
/// still refers to (ER_ROW_IS_REFERENCED_2).
const ORDER_DEPENDENT: [u16; 3] = [DUPLICATE_KEY, 1451, 1452];

/// One attempt at the rollback of `work` (see `phase2::look_for_undo`).
async fn replay_branch(
    pool: &mysql_async::Pool,
    database: &str,
    work: &Phase2Work,
) -> std::result::Result<Option<BranchOutcome>, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    conn.query_drop(REPLAY_SESSION).await?;
    let undo_log = undo_table(database);
    let xid = work.xid.as_str();
    let branch = work.branch_id;
    // READ COMMITTED where the server allows it: a check that a row is absent, or the
    // look for an undo row that is not there, then locks no gap, so inserts by other
    // sessions (another branch's undo row, a new row of the table) do not wait for this
    // replay, or deadlock with it.
    let opts = gapless_writes(&mut conn).await?;
    let mut tx = conn.start_transaction(opts).await?;
    let row: Option<(Vec<u8>, i32)> = tx
        .exec_first(
            format!(
                "SELECT rollback_info, log_status FROM {undo_log} WHERE xid = ? AND branch_id = ? FOR UPDATE"
            ),
            (xid, branch),
        )
        .await?;
    let Some((info, status)) = row else {
        // Phase 1 never committed, or has not yet: the marker makes a late phase-1 commit
        // of this branch fail on the unique (xid, branch_id). Under READ COMMITTED the
        // locking read takes no gap lock, so phase 1 can insert its undo row between it
        // and the marker; the marker's INSERT then waits for that row and fails on the
        // key if it commits. It must fail (no INSERT IGNORE): the branch has data to undo.
        let marked = tx
            .exec_drop(
                format!(
                    "INSERT INTO {undo_log} (branch_id, xid, context, rollback_info, log_status) \
                     VALUES (?, ?, 'tandem', '', ?)"
                ),
                (branch, xid, LOG_GLOBAL_FINISHED),
            )
            .await;
        return match marked {
            Ok(()) => {
                tx.commit().await?;
                Ok(Some(BranchOutcome::Done))
            }
            Err(mysql_async::Error::Server(e)) if e.code == DUPLICATE_KEY => Ok(None),
            Err(e) => Err(e),
        };
    };
    if status != LOG_NORMAL {
        return Ok(Some(BranchOutcome::Done));
    }
    let record = match UndoRecord::decode(&info) {
        Ok(record) => record,
        Err(e) => {
            return Ok(Some(BranchOutcome::RollbackFailed {
                reason: e.to_string(),
            }));
        }
    };
    // Each row checked, then restored, in the plan's order; a restore that a foreign
    // key or a unique key refuses at that point (InnoDB undoes that statement alone) is
    // put off behind the others, checked again and retried, until a pass restores
    // nothing more (see phase2.rs, `Order::Workable`).
    let mut pending = replay::plan(&Mysql, &record);
    loop {
        let tried = pending.len();
        let mut put_off = Vec::new();
        // The steps a unique key refused (rows that hold one another's unique values
        // may be moved back: `moved_back`), and those a foreign key refused.
        let mut by_unique_key = Vec::new();
        let mut refusal = None;
        for step in pending {
            let params = match values(&step.check.params, &step.check.types) {
                Ok(params) => params,
                Err(reason) => return Ok(Some(BranchOutcome::RollbackFailed { reason })),
            };
            let rows: Vec<mysql_async::Row> = tx.exec(step.check.sql.as_str(), params).await?;
            let table = &record.tables[step.table];
            let difference = match (rows.as_slice(), &step.expect) {
                ([], None) => None,
                ([], Some(_)) => Some("the row is gone or a column differs".to_owned()),
                ([_], None) => Some("a row the branch deleted is back".to_owned()),
                ([row], Some(expect)) => {
                    let now = row.clone().unwrap();
                    now.iter()
                        .zip(expect)
                        .zip(&table.types)
                        .position(|((now, image), &type_code)| !same_value(now, image, type_code))
                        .map(|i| format!("column {} differs", table.columns[i]))
                }
                _ => Some("several rows share its primary key".to_owned()),
            };
            if let Some(difference) = difference {
                // A dirty write: the row changed after the branch. Leave everything as
                // it is (the transaction rolls back on drop) and keep the locks.
                tracing::warn!(check = %step.check.sql, %difference, "dirty write found: rollback stopped");
                return Ok(Some(BranchOutcome::RollbackFailed {
                    reason: format!(
                        "a row of {} changed after the branch wrote it: {difference}",
                        table.table
                    ),
                }));
            }
            let Some(apply) = &step.apply else {
                continue;
            };
            let params = match values(&apply.params, &apply.types) {
                Ok(params) => params,
                Err(reason) => return Ok(Some(BranchOutcome::RollbackFailed { reason })),
            };
            match tx.exec_drop(apply.sql.as_str(), params).await {
                Ok(()) => {}
                Err(mysql_async::Error::Server(e)) if ORDER_DEPENDENT.contains(&e.code) => {
                    let unique = e.code == DUPLICATE_KEY;
                    refusal.get_or_insert(mysql_async::Error::Server(e));
                    match unique {
                        true => by_unique_key.push(step),
                        false => put_off.push(step),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let Some(e) = refusal else { break };
        let refused = by_unique_key.len() + put_off.len();
        if refused < tried {
            // The other way round next (see phase2.rs, `run_steps`).
            put_off.extend(by_unique_key);
            put_off.reverse();
            pending = put_off;
            continue;
        }
        // No restore got through this pass: none ever will one at a time. Rows that
        // swapped unique values are moved back first (the foreign-key refusals may be
        // theirs); then rows that only refer to one another are restored together.
        let unique_refused = by_unique_key.len();
        if unique_refused > 0 {
            match moved_back(&mut tx, database, &record, by_unique_key).await? {
                Some(rest) if rest.len() < unique_refused => {
                    put_off.extend(rest);
                    pending = put_off;
                    continue;
                }
                _ => return Err(e),
            }
        }
        match restored_unchecked(&mut tx, database, &record, &put_off).await? {
            true => break,
            false => return Err(e),
        }
    }
    // Undone in the same local transaction as the replay: both happen, or neither.
    tx.exec_drop(
        format!("DELETE FROM {undo_log} WHERE xid = ? AND branch_id = ?"),
        (xid, branch),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(BranchOutcome::Done))
}

/// Restores the rows of `stuck` that were there both before and after the branch
/// (checked, and locked, by this pass), whose UPDATEs back a unique key refused, by
/// deleting each as the branch left it, then inserting each as it was: rows that
/// swapped a unique value refuse one another's UPDATEs in every order, and InnoDB
/// checks unique keys row by row. Foreign keys are not checked meanwhile (InnoDB would
/// refuse to delete a row others refer to, though it comes back at once), so the move
/// is made only where none can be left dangling (`references_kept`). Under a
/// savepoint: the steps left to restore (rows only inserted or only deleted by the
/// branch), or None if that failed too or was not tried.
async fn moved_back(
    tx: &mut mysql_async::Transaction<'_>,
    database: &str,
    record: &UndoRecord,
    stuck: Vec<replay::Step>,
) -> std::result::Result<Option<Vec<replay::Step>>, mysql_async::Error> {
    let mut moves = Vec::new();
    let mut moved = Vec::new();
    let mut rest = Vec::new();
    for step in stuck {
        match replay::moved_back(&Mysql, record, &step) {
            Some(statements) => {
                moves.push(statements);
                moved.push(step);
            }
            None => rest.push(step),
        }
    }
    if moves.is_empty() || !references_kept(tx, database, record, &moved).await? {
        return Ok(None);
    }
    tx.query_drop("SAVEPOINT tandem_restore").await?;
    let statements: Vec<&replay::Stmt> = moves
        .iter()
        .map(|(delete, _)| delete)
        .chain(moves.iter().map(|(_, insert)| insert))
        .collect();
    let restored = ran_with_keys_unchecked(tx, &statements).await?;
    end_restore(tx, restored).await?;
    Ok(restored.then_some(rest))
}

/// Runs `statements` with foreign keys unchecked (their restores would refuse one
/// another one at a time); whether each ran. After one that fails, none more.
async fn ran_with_keys_unchecked(
    tx: &mut mysql_async::Transaction<'_>,
    statements: &[&replay::Stmt],
) -> std::result::Result<bool, mysql_async::Error> {
    tx.query_drop("SET SESSION foreign_key_checks = 0").await?;
    let mut ran = true;
    for statement in statements {
        let params = match values(&statement.params, &statement.types) {
            Ok(params) => params,
            Err(reason) => {
                tracing::warn!(%reason, "a row image that cannot be bound");
                ran = false;
                break;
            }
        };
        if let Err(e) = tx.exec_drop(statement.sql.as_str(), params).await {
            tracing::debug!(error = %e, "rows that refuse one another's restores were not restored with foreign keys unchecked either");
            ran = false;
            break;
        }
    }
    tx.query_drop("SET SESSION foreign_key_checks = 1").await?;
    Ok(ran)
}

/// Ends the savepoint a restore with foreign keys unchecked ran under: kept if it
/// `restored` the rows, else undone.
async fn end_restore(
    tx: &mut mysql_async::Transaction<'_>,
    restored: bool,
) -> std::result::Result<(), mysql_async::Error> {
    match restored {
        true => tx.query_drop("RELEASE SAVEPOINT tandem_restore").await,
        false => tx.query_drop("ROLLBACK TO SAVEPOINT tandem_restore").await,
    }
}

/// Restores the rows of `stuck` (checked, and locked, by this pass) with foreign keys
/// unchecked: rows that refer to one another, which the branch inserted (an order and
/// its latest event) or deleted, refuse one another's restores in every order, since
/// InnoDB checks a foreign key at each row. Under a savepoint, kept only if then every
/// foreign key holds for what the restores touched (`references_hold`), and only on
/// tables as the branch captured them; whether that got through.
async fn restored_unchecked(
    tx: &mut mysql_async::Transaction<'_>,
    database: &str,
    record: &UndoRecord,
    stuck: &[replay::Step],
) -> std::result::Result<bool, mysql_async::Error> {
    let mut tables: Vec<usize> = stuck.iter().map(|s| s.table).collect();
    tables.sort_unstable();
    tables.dedup();
    let mut keys = Vec::new();
    let mut columns_now = Vec::new();
    for &t in &tables {
        let Some(table) = record.tables.get(t) else {
            return Ok(false);
        };
        let schema = table.schema.as_deref().unwrap_or(database);
        let Some(columns) = as_captured(tx, schema, table).await? else {
            return Ok(false);
        };
        for key in foreign_keys(tx, schema, &table.table).await? {
            // Values compared as the key compares them: integers and binary strings by
            // their bytes, other strings under the columns' collation.
            let comparable = key.columns(schema, &table.table).iter().all(|name| {
                columns
                    .iter()
                    .any(|c| c.name.eq_ignore_ascii_case(name) && c.comparison().is_some())
            });
            if !comparable {
                return Ok(false);
            }
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        columns_now.push((t, columns));
    }
    tx.query_drop("SAVEPOINT tandem_restore").await?;
    let applies: Vec<&replay::Stmt> = stuck.iter().filter_map(|s| s.apply.as_ref()).collect();
    let restored = ran_with_keys_unchecked(tx, &applies).await?
        && references_hold(tx, database, record, stuck, &keys, &columns_now).await?;
    end_restore(tx, restored).await?;
    Ok(restored)
}

/// A column of a table as information_schema describes it.
struct ColumnNow {
    name: String,
    data_type: String,
    charset: Option<String>,
    collation: Option<String>,
    /// A DECIMAL's precision and scale.
    precision: Option<u64>,
    scale: Option<u64>,
}

impl ColumnNow {
    /// How a parameter holding this column's image is compared with the column (or a
    /// column a foreign key pairs it with: of the same type, character set and
    /// collation): `?` for an integer or a binary string, whose bytes compare, and for
    /// a temporal value, bound as one (`image_value`, in the replay session's time
    /// zone, as its restore is); a string in its character set under its collation,
    /// which a binary parameter would not; a DECIMAL's digits as that DECIMAL, which a
    /// string compared with it would be read as a DOUBLE. None for the types whose
    /// comparison with a bound image is not the key's own.
    fn comparison(&self) -> Option<String> {
        match self.data_type.to_ascii_lowercase().as_str() {
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "binary" | "varbinary"
            | "year" | "date" | "datetime" | "timestamp" | "time" => Some("?".to_owned()),
            "decimal" => match (self.precision, self.scale) {
                (Some(precision), Some(scale)) if precision <= 65 && scale <= 38 => {
                    Some(format!("CAST(? AS DECIMAL({precision}, {scale}))"))
                }
                _ => None,
            },
            "char" | "varchar" => match (&self.charset, &self.collation) {
                (Some(charset), Some(collation)) if safe_name(charset) && safe_name(collation) => {
                    Some(format!("CONVERT(? USING {charset}) COLLATE {collation}"))
                }
                _ => None,
            },
            _ => None,
        }
    }
}

/// A character set's or collation's name, which SQL takes unquoted.
fn safe_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A row of information_schema.COLUMNS as `as_captured` reads it.
type ColumnRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<u64>,
    Option<u64>,
);

/// The columns of `table` now, if it still is as the branch captured it: the columns
/// the images have, and no trigger (DDL since could have added a column the images
/// lack, which an INSERT would give its default, or a trigger).
async fn as_captured(
    tx: &mut mysql_async::Transaction<'_>,
    schema: &str,
    table: &tandem_undo::TableUndo,
) -> std::result::Result<Option<Vec<ColumnNow>>, mysql_async::Error> {
    let columns: Vec<ColumnRow> = tx
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME, COLLATION_NAME, \
             NUMERIC_PRECISION, NUMERIC_SCALE \
             FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (schema, &table.table),
        )
        .await?;
    let triggers: Option<i64> = tx
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = ? AND EVENT_OBJECT_TABLE = ?",
            (schema, &table.table),
        )
        .await?;
    let same_columns = columns.len() == table.columns.len()
        && columns
            .iter()
            .zip(&table.columns)
            .all(|(now, then)| now.0.eq_ignore_ascii_case(then));
    if !same_columns || triggers.unwrap_or(1) > 0 {
        return Ok(None);
    }
    Ok(Some(
        columns
            .into_iter()
            .map(
                |(name, data_type, charset, collation, precision, scale)| ColumnNow {
                    name,
                    data_type,
                    charset,
                    collation,
                    precision,
                    scale,
                },
            )
            .collect(),
    ))
}

/// One foreign key: `columns` of the referring table refer to `referenced` of the
/// referenced one, each table as (schema, name).
#[derive(Debug, PartialEq, Eq)]
struct ForeignKey {
    referring: (String, String),
    columns: Vec<String>,
    referenced_table: (String, String),
    referenced: Vec<String>,
}

impl ForeignKey {
    /// The columns of the key that belong to `schema`.`table` (both sides for a table
    /// that refers to itself).
    fn columns(&self, schema: &str, table: &str) -> Vec<&str> {
        let mut columns = Vec::new();
        if self.referring == (schema.to_owned(), table.to_owned()) {
            columns.extend(self.columns.iter().map(String::as_str));
        }
        if self.referenced_table == (schema.to_owned(), table.to_owned()) {
            columns.extend(self.referenced.iter().map(String::as_str));
        }
        columns
    }
}

/// The foreign keys of `schema`.`table` and those that refer to it.
async fn foreign_keys(
    tx: &mut mysql_async::Transaction<'_>,
    schema: &str,
    table: &str,
) -> std::result::Result<Vec<ForeignKey>, mysql_async::Error> {
    let mut keys: Vec<(String, ForeignKey)> = Vec::new();
    for (constraint, schema_from, from, column, schema_to, to, referenced) in
        key_columns(tx, schema, table).await?
    {
        let referring = (schema_from, from);
        match keys.last_mut() {
            Some((name, key)) if *name == constraint && key.referring == referring => {
                key.columns.push(column);
                key.referenced.push(referenced);
            }
            _ => keys.push((
                constraint,
                ForeignKey {
                    referring,
                    columns: vec![column],
                    referenced_table: (schema_to, to),
                    referenced: vec![referenced],
                },
            )),
        }
    }
    Ok(keys.into_iter().map(|(_, key)| key).collect())
}

/// A column of a foreign key: the key's name, the referring table's schema and name and
/// its column, the referenced table's schema and name and its column.
type KeyColumn = (String, String, String, String, String, String, String);

/// The columns of the foreign keys of `schema`.`table` and of those that refer to it,
/// key by key, each key's in order.
async fn key_columns(
    tx: &mut mysql_async::Transaction<'_>,
    schema: &str,
    table: &str,
) -> std::result::Result<Vec<KeyColumn>, mysql_async::Error> {
    tx.exec(
        "SELECT CONSTRAINT_NAME, TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, \
         REFERENCED_TABLE_SCHEMA, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME \
         FROM information_schema.KEY_COLUMN_USAGE \
         WHERE REFERENCED_TABLE_NAME IS NOT NULL AND ((TABLE_SCHEMA = ? AND TABLE_NAME = ?) \
         OR (REFERENCED_TABLE_SCHEMA = ? AND REFERENCED_TABLE_NAME = ?)) \
         ORDER BY TABLE_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION",
        (schema, table, schema, table),
    )
    .await
}

/// The images of the rows of `steps` that belong to the record's table `t`.
fn rows_of<'a>(
    table: &'a tandem_undo::TableUndo,
    steps: &[replay::Step],
    t: usize,
) -> Vec<&'a tandem_undo::RowImages> {
    steps
        .iter()
        .filter(|s| s.table == t)
        .filter_map(|s| table.rows.get(s.row))
        .collect()
}

/// Where `table`'s images hold the column `name` (as MySQL compares names).
fn column_at(table: &tandem_undo::TableUndo, name: &str) -> Option<usize> {
    table
        .columns
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
}

/// Whether, after the restores of `restored`, every foreign key of `keys` holds for
/// what they touched, read by locking reads (so that a row they find stays): each row
/// put back refers to rows that are there, and no row refers to a value a restore
/// took away (a row deleted, or a referenced column changed) that no row holds now.
/// `columns`: each restored table's columns now, by its index in the record.
async fn references_hold(
    tx: &mut mysql_async::Transaction<'_>,
    database: &str,
    record: &UndoRecord,
    restored: &[replay::Step],
    keys: &[ForeignKey],
    columns: &[(usize, Vec<ColumnNow>)],
) -> std::result::Result<bool, mysql_async::Error> {
    for (t, columns_now) in columns {
        let t = *t;
        let Some(table) = record.tables.get(t) else {
            return Ok(false);
        };
        let here = (
            table.schema.as_deref().unwrap_or(database).to_owned(),
            table.table.clone(),
        );
        let rows = rows_of(table, restored, t);
        let at = |name: &str| column_at(table, name);
        for key in keys {
            if key.referring == here {
                // The rows put back (those with a before image), by their keys.
                let Some(positions) = key
                    .columns
                    .iter()
                    .map(|c| at(c))
                    .collect::<Option<Vec<_>>>()
                else {
                    return Ok(false);
                };
                let back: Vec<&tandem_undo::Row> = rows
                    .iter()
                    .filter_map(|r| r.before.as_ref())
                    .filter(|row| {
                        positions
                            .iter()
                            .all(|&i| row.get(i).is_some_and(Option::is_some))
                    })
                    .collect();
                if !back.is_empty() {
                    let mut images = Vec::new();
                    let mut types = Vec::new();
                    for row in &back {
                        for &i in &table.pk {
                            images.push(row.get(i).cloned().flatten());
                            types.push(table.types[i]);
                        }
                    }
                    let Ok(params) = values(&images, &types) else {
                        return Ok(false);
                    };
                    let one_key = format!("({})", vec!["?"; table.pk.len()].join(", "));
                    let key_columns: Vec<&str> = table
                        .pk
                        .iter()
                        .map(|&i| table.columns[i].as_str())
                        .collect();
                    let among = vec![one_key; back.len()].join(", ");
                    if refers_to_nothing(tx, key, &key_columns, &among, params).await? {
                        return Ok(false);
                    }
                }
            }
            if key.referenced_table == here {
                // Values a restore took away: a row deleted, or its referenced
                // columns changed (as bytes; the check below compares as the key does).
                let Some(positions) = key
                    .referenced
                    .iter()
                    .map(|c| at(c))
                    .collect::<Option<Vec<_>>>()
                else {
                    return Ok(false);
                };
                let value = |row: &tandem_undo::Row| -> Option<Vec<Option<Vec<u8>>>> {
                    positions.iter().map(|&i| row.get(i).cloned()).collect()
                };
                let mut gone: Vec<Vec<Option<Vec<u8>>>> = Vec::new();
                for r in &rows {
                    let Some(now) = r.after.as_ref().and_then(value) else {
                        continue;
                    };
                    let kept = r.before.as_ref().and_then(value).is_some_and(|b| b == now);
                    if !kept && now.iter().all(Option::is_some) && !gone.contains(&now) {
                        gone.push(now);
                    }
                }
                if gone.is_empty() {
                    continue;
                }
                let mut comparisons = Vec::new();
                for name in &key.referenced {
                    let Some(compared) = columns_now
                        .iter()
                        .find(|c| c.name.eq_ignore_ascii_case(name))
                        .and_then(ColumnNow::comparison)
                    else {
                        return Ok(false);
                    };
                    comparisons.push(compared);
                }
                let one_value = format!("({})", comparisons.join(", "));
                let mut images = Vec::new();
                let mut types = Vec::new();
                for value in &gone {
                    for (image, &i) in value.iter().zip(&positions) {
                        images.push(image.clone());
                        types.push(table.types[i]);
                    }
                }
                let Ok(params) = values(&images, &types) else {
                    return Ok(false);
                };
                let referring: Vec<&str> = key.columns.iter().map(String::as_str).collect();
                let among = vec![one_value; gone.len()].join(", ");
                if refers_to_nothing(tx, key, &referring, &among, params).await? {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

/// Whether a row of `key`'s referring table whose `columns` are among the tuples
/// `among` (bound by `params`) refers to no row of its referenced table, read by a
/// locking read (so that the rows it finds stay).
async fn refers_to_nothing(
    tx: &mut mysql_async::Transaction<'_>,
    key: &ForeignKey,
    columns: &[&str],
    among: &str,
    params: mysql_async::Params,
) -> std::result::Result<bool, mysql_async::Error> {
    let q = |name: &str| tandem_undo::Dialect::quote_ident(&Mysql, name);
    let qualified = |(schema, table): &(String, String)| format!("{}.{}", q(schema), q(table));
    let joined = key
        .columns
        .iter()
        .zip(&key.referenced)
        .map(|(c, r)| format!("p.{} = c.{}", q(r), q(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let columns: Vec<String> = columns.iter().map(|c| format!("c.{}", q(c))).collect();
    let dangling: Option<i32> = tx
        .exec_first(
            format!(
                "SELECT 1 FROM {} AS c LEFT JOIN {} AS p ON {joined} WHERE ({}) IN ({among}) AND p.{} IS NULL LIMIT 1 LOCK IN SHARE MODE",
                qualified(&key.referring),
                qualified(&key.referenced_table),
                columns.join(", "),
                q(&key.referenced[0]),
            ),
            params,
        )
        .await?;
    Ok(dangling.is_some())
}

/// Whether moving the rows of `moved` back (their before images for their after
/// images, with foreign keys unchecked) changes nothing else: their tables have the
/// columns the images have and no trigger, and every foreign key holds as now: a
/// column of theirs that refers to another row must not change, and the values a
/// column others refer to holds must be the same among the moved rows of its table
/// before and after (they only change places, as swapped unique values do).
async fn references_kept(
    tx: &mut mysql_async::Transaction<'_>,
    database: &str,
    record: &UndoRecord,
    moved: &[replay::Step],
) -> std::result::Result<bool, mysql_async::Error> {
    let mut tables: Vec<usize> = moved.iter().map(|s| s.table).collect();
    tables.sort_unstable();
    tables.dedup();
    for t in tables {
        let Some(table) = record.tables.get(t) else {
            return Ok(false);
        };
        let schema = table.schema.as_deref().unwrap_or(database);
        if as_captured(tx, schema, table).await?.is_none() {
            return Ok(false);
        }
        let keys = key_columns(tx, schema, &table.table).await?;
        let rows = rows_of(table, moved, t);
        let at = |name: &str| column_at(table, name);
        let image = |row: &Option<tandem_undo::Row>, at: usize| {
            row.as_ref().and_then(|r| r.get(at)).cloned()
        };
        for (constraint, schema_from, from, column_from, schema_to, to, column_to) in &keys {
            let is = |s: &str, name: &str| s == schema && name == table.table;
            // A column of the moved rows that refers to another row keeps its value.
            if is(schema_from, from) {
                let Some(at) = at(column_from) else {
                    return Ok(false);
                };
                if rows
                    .iter()
                    .any(|r| image(&r.before, at) != image(&r.after, at))
                {
                    return Ok(false);
                }
            }
            if !is(schema_to, to) {
                continue;
            }
            // A column others refer to: a value it holds now that no moved row gets back
            // must be referred to by no row.
            let Some(at) = at(column_to) else {
                return Ok(false);
            };
            let mut back: Vec<_> = rows.iter().map(|r| image(&r.before, at)).collect();
            let leaving: Vec<&&tandem_undo::RowImages> = rows
                .iter()
                .filter(|r| {
                    let now = image(&r.after, at);
                    match back.iter().position(|b| *b == now) {
                        Some(i) => {
                            back.swap_remove(i);
                            false
                        }
                        None => now.is_some(),
                    }
                })
                .collect();
            if leaving.is_empty() {
                continue;
            }
            let composite = keys
                .iter()
                .filter(|k| k.0 == *constraint && k.1 == *schema_from && k.2 == *from)
                .count()
                > 1;
            if composite {
                return Ok(false);
            }
            // Asked through the moved rows as they are now, by the key's own comparison.
            let q = |name: &str| tandem_undo::Dialect::quote_ident(&Mysql, name);
            let key_columns: Vec<String> = table
                .pk
                .iter()
                .map(|&i| format!("p.{}", q(&table.columns[i])))
                .collect();
            let one_key = format!("({})", vec!["?"; table.pk.len()].join(", "));
            let mut images = Vec::new();
            let mut types = Vec::new();
            for r in &leaving {
                for &i in &table.pk {
                    images.push(image(&r.after, i).flatten());
                    types.push(table.types[i]);
                }
            }
            let params = match values(&images, &types) {
                Ok(params) => params,
                Err(_) => return Ok(false),
            };
            let referred: Option<i32> = tx
                .exec_first(
                    format!(
                        "SELECT 1 FROM {}.{} AS c JOIN {}.{} AS p ON c.{} = p.{} WHERE ({}) IN ({}) LIMIT 1",
                        q(schema_from),
                        q(from),
                        q(schema_to),
                        q(to),
                        q(column_from),
                        q(column_to),
                        key_columns.join(", "),
                        vec![one_key; leaving.len()].join(", ")
                    ),
                    params,
                )
                .await?;
            if referred.is_some() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Each image as the parameter value whose type mysql_async sends is the one undo
/// asks for (see [`image_value`]).
fn values(
    images: &[Option<Vec<u8>>],
    types: &[u32],
) -> std::result::Result<mysql_async::Params, String> {
    images
        .iter()
        .zip(types)
        .map(|(image, &type_code)| image_value(image.as_deref(), type_code))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(mysql_async::Params::Positional)
}

/// An image (a binary-protocol value without its length prefix) as the mysql_async value
/// that binds it with parameter type `type_code` (`types::param_type`). Strings go as
/// VAR_STRING, which the replay session's `SET NAMES binary` makes binary strings, as
/// BLOB parameters are; INT24 and YEAR go as the integers they are, BIT as the integer
/// its bytes spell.
pub fn image_value(image: Option<&[u8]>, type_code: u32) -> std::result::Result<Value, String> {
    let Some(bytes) = image else {
        return Ok(Value::NULL);
    };
    let unsigned = type_code & types::UNSIGNED != 0;
    let bad = || {
        format!(
            "an undo image of {} bytes for type {type_code:#x}",
            bytes.len()
        )
    };
    let int = |width: usize| -> std::result::Result<Value, String> {
        if bytes.len() != width {
            return Err(bad());
        }
        let mut raw = [0u8; 8];
        raw[..width].copy_from_slice(bytes);
        let fill = if !unsigned && bytes[width - 1] & 0x80 != 0 {
            0xff
        } else {
            0
        };
        raw[width..].fill(fill);
        Ok(if unsigned {
            Value::UInt(u64::from_le_bytes(raw))
        } else {
            Value::Int(i64::from_le_bytes(raw))
        })
    };
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    match type_code & 0xff {
        types::TINY => int(1),
        types::SHORT | types::YEAR => int(2),
        types::LONG | types::INT24 => int(4),
        types::LONGLONG => int(8),
        types::BIT => crate::wire::mysql::messages::statement::bit_value(bytes)
            .map(|le| Value::UInt(u64::from_le_bytes(le)))
            .ok_or_else(bad),
        types::FLOAT => <[u8; 4]>::try_from(bytes)
            .map(|b| Value::Float(f32::from_le_bytes(b)))
            .map_err(|_| bad()),
        types::DOUBLE => <[u8; 8]>::try_from(bytes)
            .map(|b| Value::Double(f64::from_le_bytes(b)))
            .map_err(|_| bad()),
        types::DATE | types::DATETIME | types::TIMESTAMP => match bytes.len() {
            0 => Ok(Value::Date(0, 0, 0, 0, 0, 0, 0)),
            4 | 7 | 11 => {
                let time = |i: usize| bytes.get(i).copied().unwrap_or(0);
                let micros = if bytes.len() == 11 { u32_at(7) } else { 0 };
                Ok(Value::Date(
                    u16_at(0),
                    bytes[2],
                    bytes[3],
                    time(4),
                    time(5),
                    time(6),
                    micros,
                ))
            }
            _ => Err(bad()),
        },
        types::TIME => match bytes.len() {
            0 => Ok(Value::Time(false, 0, 0, 0, 0, 0)),
            8 | 12 => {
                let micros = if bytes.len() == 12 { u32_at(8) } else { 0 };
                Ok(Value::Time(
                    bytes[0] == 1,
                    u32_at(1),
                    bytes[5],
                    bytes[6],
                    bytes[7],
                    micros,
                ))
            }
            _ => Err(bad()),
        },
        _ => Ok(Value::Bytes(bytes.to_vec())),
    }
}

/// Whether a value the replay's check read equals the after image: the server already
/// compared them with `<=>`; this second, exact comparison catches what a collation or a
/// numeric conversion would call equal.
fn same_value(now: &Value, image: &Option<Vec<u8>>, type_code: u32) -> bool {
    let Ok(expected) = image_value(image.as_deref(), types::param_type(type_code)) else {
        return false;
    };
    match (now, &expected) {
        (Value::Int(a), Value::UInt(b)) | (Value::UInt(b), Value::Int(a)) => {
            i128::from(*a) == i128::from(*b)
        }
        // The check reads a BIT as its bytes; its image binds as the integer they spell.
        (Value::Bytes(bytes), Value::UInt(n)) if type_code & 0xff == types::BIT => {
            crate::wire::mysql::messages::statement::bit_value(bytes) == Some(n.to_le_bytes())
        }
        (Value::Float(a), Value::Float(b)) => a == b,
        (Value::Double(a), Value::Double(b)) => a == b,
        (Value::Date(..), Value::Date(..)) | (Value::Time(..), Value::Time(..)) => now == &expected,
        (now, expected) => now == expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_committed_is_kept_off_only_under_a_statement_binary_log() {
        assert!(read_committed_takes_writes(false, Some("STATEMENT")));
        assert!(read_committed_takes_writes(true, Some("ROW")));
        assert!(read_committed_takes_writes(true, Some("MIXED")));
        assert!(!read_committed_takes_writes(true, Some("STATEMENT")));
        assert!(!read_committed_takes_writes(true, Some("statement")));
    }

    #[test]
    fn images_bind_as_the_values_of_their_type() {
        assert_eq!(image_value(Some(&[0xff]), types::TINY), Ok(Value::Int(-1)));
        assert_eq!(
            image_value(Some(&[0xff]), types::TINY | types::UNSIGNED),
            Ok(Value::UInt(255))
        );
        assert_eq!(
            image_value(Some(&[0xfe, 0xff, 0xff, 0xff]), types::INT24),
            Ok(Value::Int(-2))
        );
        assert_eq!(
            image_value(
                Some(&u64::MAX.to_le_bytes()),
                types::LONGLONG | types::UNSIGNED
            ),
            Ok(Value::UInt(u64::MAX))
        );
        assert_eq!(
            image_value(Some(&(-0.0f32).to_le_bytes()), types::FLOAT),
            Ok(Value::Float(-0.0))
        );
        assert_eq!(
            image_value(
                Some(&[0xe8, 0x07, 2, 29, 23, 59, 58, 0x40, 0xe2, 0x01, 0]),
                types::DATETIME
            ),
            Ok(Value::Date(2024, 2, 29, 23, 59, 58, 123_456))
        );
        assert_eq!(
            image_value(Some(&[0xe8, 0x07, 2, 29]), types::DATE),
            Ok(Value::Date(2024, 2, 29, 0, 0, 0, 0))
        );
        assert_eq!(
            image_value(Some(&[1, 2, 0, 0, 0, 3, 4, 5]), types::TIME),
            Ok(Value::Time(true, 2, 3, 4, 5, 0))
        );
        assert_eq!(
            image_value(Some(b"12.50"), types::NEWDECIMAL),
            Ok(Value::Bytes(b"12.50".to_vec()))
        );
        assert_eq!(image_value(None, types::LONG), Ok(Value::NULL));
        assert!(image_value(Some(&[1, 2]), types::LONG).is_err());
    }

    #[test]
    fn the_exact_comparison_tells_what_the_server_would_call_equal() {
        let image = Some(vec![5, 0, 0, 0]);
        assert!(same_value(&Value::Int(5), &image, types::LONG));
        assert!(same_value(
            &Value::UInt(5),
            &image,
            types::LONG | types::UNSIGNED
        ));
        assert!(!same_value(&Value::Int(6), &image, types::LONG));
        let text = Some(b"n".to_vec());
        assert!(!same_value(
            &Value::Bytes(b"N".to_vec()),
            &text,
            types::VAR_STRING | types::CHARACTER
        ));
        assert!(same_value(&Value::NULL, &None, types::LONG));
    }

    #[test]
    fn resources_name_their_database() {
        assert_eq!(
            database_of("mysql://127.0.0.1:3306/shop", "127.0.0.1:3306"),
            Some("shop")
        );
        assert_eq!(
            database_of("postgres://127.0.0.1:3306/shop", "127.0.0.1:3306"),
            None
        );
        assert_eq!(undo_table("a`b"), "`a``b`.undo_log");
    }

    #[test]
    fn actions_reach_every_table_at_any_depth() {
        let keys = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "b")]
            .map(|(referenced, table)| (referenced.to_owned(), table.to_owned()));
        let reached = super::reached_by_actions(keys.to_vec());
        let sorted = |name: &str| {
            let mut tables = reached[name].clone();
            tables.sort();
            tables
        };
        assert_eq!(sorted("a"), ["a", "b", "c"]);
        assert_eq!(sorted("d"), ["a", "b", "c"]);
        assert!(!reached.contains_key("e"));
    }

    #[test]
    fn a_view_reaches_the_tables_under_the_views_it_reads() {
        let view = |schema: &str, name: &str, definition: &str| {
            (schema.to_owned(), name.to_owned(), definition.to_owned())
        };
        let views = vec![
            view("d", "top", "select * from `d`.`mid` join `d`.`t1`"),
            view(
                "d",
                "mid",
                "select * from `d`.`t2` where x in (select x from `e`.`top`)",
            ),
            view("d", "hidden", ""),
            // From review: a view named like the table another view reads.
            view("d", "v3a", "select * from `d`.`t3a`"),
            view("e", "t3a", "select * from `d`.`t3a`"),
        ];
        let under = super::tables_under_views(views);
        let sorted = |name: &str| {
            let mut tables = under[name].clone();
            tables.sort();
            tables
        };
        // By name, views kept among the tables: `e`.`top` is taken for the view `top`
        // too (and the loop ends).
        assert_eq!(sorted("top"), ["mid", "t1", "t2", "top"]);
        assert_eq!(sorted("mid"), ["mid", "t1", "t2", "top"]);
        assert_eq!(sorted("hidden"), ["*"]);
        assert_eq!(sorted("v3a"), ["t3a"]);
        assert_eq!(sorted("t3a"), ["t3a"]);
        assert_eq!(
            sorted(&crate::at::meta::qualified_key("d", "hidden")),
            ["*"]
        );
        assert!(!under.contains_key(&crate::at::meta::qualified_key("d", "t3a")));
    }
}
