//! XA branches on MySQL/MariaDB: phase 2 (`XA COMMIT` / `XA ROLLBACK` from a side
//! connection) and the recovery scan of `XA RECOVER`.
//!
//! A prepared XA transaction survives its connection on MySQL 5.7.7+ and MariaDB
//! 10.5.2+ (MDEV-742); older servers lose it on disconnect, so XA mode refuses them
//! (`supports_detached_xa`). MariaDB (10.11 tested) keeps a prepared branch attached to
//! the connection that prepared it while that connection lives: another connection
//! gets XAER_NOTA (1397) and the owner can start nothing new (XAER_RMFAIL, 1399) until
//! it finishes the branch itself. So phase 2 goes to the owning session while it lives
//! (`owners`), and to a side connection once it is gone. Both are idempotent: a branch
//! neither prepared nor listed by XA RECOVER is finished.

use super::{Decision, GID_PREFIX, decide_for};
use crate::config::MysqlFrontend;
use mysql_async::prelude::Queryable;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_lockserver::client::{
    BoxFuture, BranchHandler, BranchKind, BranchOutcome, LockClient, Phase2Work, Xid,
};

/// XAER_NOTA: "Unknown XID".
const XAER_NOTA: u16 = 1397;

/// The XA id of a branch: gtrid `tandem:<xid>` (at most 64 bytes) and bqual the branch
/// id, both as hex literals so that no character of an xid needs quoting.
pub fn xa_id(xid: &Xid, branch_id: u64) -> String {
    let gtrid = format!("{GID_PREFIX}{xid}");
    format!(
        "X'{}',X'{}'",
        hex(gtrid.as_bytes()),
        hex(branch_id.to_string().as_bytes())
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The xid and branch of one of tandem's XA ids from `XA RECOVER`'s columns.
pub fn parse_recovered(gtrid: &[u8], bqual: &[u8]) -> Option<(Xid, u64)> {
    let gtrid = std::str::from_utf8(gtrid).ok()?;
    let xid = gtrid.strip_prefix(GID_PREFIX)?;
    let branch = std::str::from_utf8(bqual).ok()?.parse().ok()?;
    Some((Xid::parse(xid).ok()?, branch))
}

/// A branch as XA RECOVER names it: gtrid and bqual.
type RecoveredId = (Vec<u8>, Vec<u8>);

/// Phase 2 and recovery for one MySQL front end's server.
pub struct MysqlXa {
    config: MysqlFrontend,
    lock: LockClient,
    pool: mysql_async::Pool,
    /// When recovery first saw each prepared branch it could not place (XA RECOVER
    /// gives no age).
    first_seen: Mutex<HashMap<RecoveredId, Instant>>,
    registry: crate::at::phase2::Phase2Registry,
    owners: Arc<Owners>,
    /// Whether the server keeps a prepared XA transaction after its connection ends.
    detached: tokio::sync::OnceCell<bool>,
    /// `innodb_rollback_on_timeout` of the server.
    rollback_on_timeout: tokio::sync::OnceCell<bool>,
}

struct Handler {
    pool: mysql_async::Pool,
    owners: Arc<Owners>,
    /// The server whose databases the resources name (`MysqlFrontend::server`).
    server: String,
    /// Deletes committed AT branches' undo rows in batches.
    cleanup: crate::at::cleanup::Cleanup,
}

/// Phase 2 of a branch, for the session whose connection prepared it.
pub struct OwnedPhase2 {
    pub xid: Xid,
    pub branch_id: u64,
    pub commit: bool,
    pub reply: tokio::sync::oneshot::Sender<BranchOutcome>,
}

/// The sessions that own prepared branches, by branch.
#[derive(Default)]
pub struct Owners(Mutex<HashMap<(Xid, u64), tokio::sync::mpsc::UnboundedSender<OwnedPhase2>>>);

impl Owners {
    /// `session` prepared the branch and must finish it while it lives.
    pub fn own(
        &self,
        xid: &Xid,
        branch_id: u64,
        session: tokio::sync::mpsc::UnboundedSender<OwnedPhase2>,
    ) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((xid.clone(), branch_id), session);
    }

    /// The branch is finished, or its session ended.
    pub fn release(&self, xid: &Xid, branch_id: u64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(xid.clone(), branch_id));
    }

    fn owner(
        &self,
        xid: &Xid,
        branch_id: u64,
    ) -> Option<tokio::sync::mpsc::UnboundedSender<OwnedPhase2>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(xid.clone(), branch_id))
            .cloned()
    }
}

impl MysqlXa {
    /// Whether this front end's phase-2 stream to the lockserver is established
    /// (`Phase2Registry::connected`).
    pub fn lockserver_connected(&self) -> Option<bool> {
        self.registry.connected()
    }

    /// `tables` is fed with the lockserver's table notices for this server's lock
    /// scope (writes outside global transactions are checked against it).
    pub fn new(
        config: &MysqlFrontend,
        lock: LockClient,
        tables: Arc<tandem_lockserver::client::TableLockView>,
        undo_rows_awaited: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        let pool = mysql_async::Pool::new(side_opts(config));
        let owners = Arc::new(Owners::default());
        let handler = Arc::new(Handler {
            pool: pool.clone(),
            owners: Arc::clone(&owners),
            server: config.server().to_owned(),
            cleanup: crate::at::cleanup::Cleanup::new(
                Arc::new(crate::at::mysql::MysqlDelete(pool.clone())),
                undo_rows_awaited,
            ),
        });
        MysqlXa {
            owners,
            config: config.clone(),
            registry: crate::at::phase2::Phase2Registry::new(lock.clone(), handler, Some(tables)),
            lock,
            pool,
            first_seen: Mutex::new(HashMap::new()),
            detached: tokio::sync::OnceCell::new(),
            rollback_on_timeout: tokio::sync::OnceCell::new(),
        }
    }

    /// Whether XA branches can be served on this server (asked once).
    pub async fn server_supports_xa(&self) -> Result<bool, mysql_async::Error> {
        self.detached
            .get_or_try_init(|| async {
                let mut conn = self.pool.get_conn().await?;
                let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
                Ok(supports_detached_xa(&version.unwrap_or_default()))
            })
            .await
            .copied()
    }

    /// Whether a lock wait timeout (1205) rolls back the whole transaction on this
    /// server (`innodb_rollback_on_timeout`, fixed at the server's start; asked once).
    pub async fn timeout_rolls_back_transaction(&self) -> Result<bool, mysql_async::Error> {
        self.rollback_on_timeout
            .get_or_try_init(|| async {
                let mut conn = self.pool.get_conn().await?;
                let on: Option<i64> = conn
                    .query_first("SELECT @@GLOBAL.innodb_rollback_on_timeout")
                    .await?;
                Ok(on == Some(1))
            })
            .await
            .copied()
    }

    /// [`Self::timeout_rolls_back_transaction`], if already asked.
    pub fn known_timeout_rolls_back_transaction(&self) -> Option<bool> {
        self.rollback_on_timeout.get().copied()
    }

    /// The sessions that own prepared branches.
    /// tandem's side connections to this front end's server (service credentials).
    pub fn pool(&self) -> &mysql_async::Pool {
        &self.pool
    }

    pub fn owners(&self) -> &Owners {
        &self.owners
    }

    /// The resource id of `database` on this front end's server.
    pub fn resource_id(&self, database: &str) -> String {
        format!("mysql://{}/{database}", self.config.server())
    }

    /// What AT's lock keys on this server are scoped by: the server, not a database
    /// (tables are named with their schema), so that sessions whose current
    /// databases differ still meet on the same rows.
    pub fn lock_scope(&self) -> String {
        format!("mysql://{}", self.config.server())
    }

    /// Makes sure phase-2 work for `resource` reaches this proxy.
    pub fn serve(&self, resource: &str) {
        self.registry.serve(resource);
    }

    /// Deletes old GlobalFinished markers from the undo_log of every database phase 2
    /// serves, every `every` (`at::sweep`).
    pub fn start_undo_sweep(
        self: &Arc<Self>,
        every: Duration,
        retention: Duration,
        metrics: crate::metrics::UndoSweepMetrics,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let me = Arc::clone(self);
        tokio::spawn(crate::at::sweep::run(
            Arc::new(crate::at::sweep::MysqlSweep(self.pool.clone())),
            self.config.upstream.clone(),
            move || {
                me.registry
                    .served()
                    .iter()
                    .filter_map(|r| crate::at::mysql::database_of(r, me.config.server()))
                    .map(str::to_owned)
                    .collect()
            },
            every,
            retention,
            metrics,
            stop,
        ));
    }

    /// Starts the phase-2 stream (with the table notices of the lock scope) and the
    /// recovery loop: at once, then every `xa_recovery_interval_ms`; each pass also
    /// serves phase 2 for the databases that have an undo_log.
    pub fn start_recovery(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        // AT's lock keys name the server, not a database: the table notices for them
        // come to the stream that serves the lock scope, from the start.
        self.serve(&self.lock_scope());
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let every = Duration::from_millis(me.config.xa_recovery_interval_ms.max(100));
            loop {
                if let Err(e) = me.serve_every_database().await {
                    tracing::debug!(upstream = %me.config.upstream, error = %e, "could not list the databases for phase 2");
                }
                match me.recover().await {
                    Ok((done, left)) if done > 0 => {
                        tracing::info!(upstream = %me.config.upstream, done, left, "MySQL XA recovery pass")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(upstream = %me.config.upstream, error = %e, "MySQL XA recovery pass failed")
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
            me.registry.shutdown().await;
            me.pool.clone().disconnect().await.ok();
        });
    }

    /// Serves phase 2 for every database of the server, and for sessions with none: its
    /// branches (AT ones in a database with an undo_log, XA ones anywhere) may have been
    /// written through another proxy, or before this one started, and their commit or
    /// rollback must not wait for a new branch there. (An XA branch that recovery
    /// finished is still owed to the lockserver: its phase 2 finds it gone, and says so.)
    async fn serve_every_database(&self) -> Result<(), mysql_async::Error> {
        let mut conn = self.pool.get_conn().await?;
        let names: Vec<String> = conn
            .query(
                "SELECT schema_name FROM information_schema.schemata WHERE schema_name \
                 NOT IN ('information_schema', 'performance_schema', 'mysql', 'sys')",
            )
            .await?;
        drop(conn);
        let no_database = std::iter::once(String::new());
        self.registry.serve_all(
            names
                .iter()
                .cloned()
                .chain(no_database)
                .map(|db| self.resource_id(&db)),
        );
        Ok(())
    }

    /// One pass over `XA RECOVER`: tandem's branches are finished as their global
    /// transactions decided. Returns (finished, left).
    pub async fn recover(&self) -> Result<(usize, usize), mysql_async::Error> {
        let mut conn = self.pool.get_conn().await?;
        let rows: Vec<(i64, usize, usize, Vec<u8>)> = conn.query("XA RECOVER").await?;
        drop(conn);
        let orphan_after = Duration::from_millis(self.config.xa_orphan_after_ms);
        let (mut done, mut left) = (0, 0);
        for (_format, gtrid_len, _bqual_len, data) in rows {
            let Some((gtrid, bqual)) = data.split_at_checked(gtrid_len) else {
                continue;
            };
            let Some((xid, branch)) = parse_recovered(gtrid, bqual) else {
                continue;
            };
            let key = (gtrid.to_vec(), bqual.to_vec());
            let age = {
                let mut seen = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.entry(key.clone())
                    .or_insert_with(Instant::now)
                    .elapsed()
            };
            let commit = match decide_for(&self.lock, &xid, age, orphan_after).await {
                Ok(Decision::Commit) => true,
                Ok(Decision::Rollback) => false,
                Ok(Decision::Leave) => {
                    left += 1;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%xid, error = %e, "MySQL XA recovery: lockserver unavailable");
                    left += 1;
                    continue;
                }
            };
            match finish(&self.pool, &xid, branch, commit).await {
                BranchOutcome::Done => {
                    done += 1;
                    self.first_seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                    tracing::info!(%xid, branch, commit, "MySQL XA recovery finished a branch");
                }
                other => {
                    tracing::warn!(%xid, branch, outcome = ?other, "MySQL XA recovery: not finished");
                    left += 1;
                }
            }
        }
        Ok((done, left))
    }
}

/// `XA COMMIT` or `XA ROLLBACK` of one branch on a side connection.
pub async fn finish(
    pool: &mysql_async::Pool,
    xid: &Xid,
    branch_id: u64,
    commit: bool,
) -> BranchOutcome {
    let verb = if commit { "COMMIT" } else { "ROLLBACK" };
    let sql = format!("XA {verb} {}", xa_id(xid, branch_id));
    let result = async {
        let mut conn = pool.get_conn().await?;
        conn.query_drop(&sql).await
    }
    .await;
    match result {
        Ok(()) => BranchOutcome::Done,
        Err(mysql_async::Error::Server(e)) if e.code == XAER_NOTA => {
            // Not prepared, or prepared but still attached to a live connection
            // (MariaDB): only the first is finished.
            match still_listed(pool, xid, branch_id).await {
                Ok(false) => BranchOutcome::Done,
                Ok(true) => BranchOutcome::Retry {
                    reason: "the prepared branch is still attached to its connection".into(),
                },
                Err(e) => BranchOutcome::Retry {
                    reason: e.to_string(),
                },
            }
        }
        Err(e) => BranchOutcome::Retry {
            reason: e.to_string(),
        },
    }
}

/// Whether XA RECOVER lists the branch.
async fn still_listed(
    pool: &mysql_async::Pool,
    xid: &Xid,
    branch_id: u64,
) -> Result<bool, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(i64, usize, usize, Vec<u8>)> = conn.query("XA RECOVER").await?;
    Ok(rows.iter().any(|(_, g, _, data)| {
        data.split_at_checked(*g)
            .and_then(|(gtrid, bqual)| parse_recovered(gtrid, bqual))
            .is_some_and(|(x, b)| x == *xid && b == branch_id)
    }))
}

impl BranchHandler for Handler {
    fn commit(&self, work: Phase2Work) -> BoxFuture<'_, BranchOutcome> {
        Box::pin(async move { self.phase2(work, true).await })
    }

    fn rollback(&self, work: Phase2Work) -> BoxFuture<'_, BranchOutcome> {
        Box::pin(async move { self.phase2(work, false).await })
    }
}

impl Handler {
    async fn phase2(&self, work: Phase2Work, commit: bool) -> BranchOutcome {
        if work.kind == BranchKind::AT {
            let Some(database) = crate::at::mysql::database_of(&work.resource_id, &self.server)
            else {
                return BranchOutcome::Retry {
                    reason: format!("resource {} is not served here", work.resource_id),
                };
            };
            return if commit {
                self.cleanup
                    .commit_branch(database, work.xid.as_str(), work.branch_id)
                    .await
            } else {
                crate::at::mysql::rollback(&self.pool, database, &work).await
            };
        }
        if let Some(session) = self.owners.owner(&work.xid, work.branch_id) {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let request = OwnedPhase2 {
                xid: work.xid.clone(),
                branch_id: work.branch_id,
                commit,
                reply,
            };
            if session.send(request).is_ok()
                && let Ok(outcome) = answer.await
            {
                return outcome;
            }
            // The session ended meanwhile: its connection let go of the branch.
            self.owners.release(&work.xid, work.branch_id);
        }
        finish(&self.pool, &work.xid, work.branch_id, commit).await
    }
}

/// Whether prepared XA transactions survive their connection on a server of this
/// version (`SELECT VERSION()`), so that phase 2 can run from another connection.
pub fn supports_detached_xa(version: &str) -> bool {
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    // MariaDB's handshake prefixes its version with "5.5.5-" for old clients.
    let version = if mariadb {
        version.strip_prefix("5.5.5-").unwrap_or(version)
    } else {
        version
    };
    let numbers: Vec<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect();
    let v = (
        numbers.first().copied().unwrap_or(0),
        numbers.get(1).copied().unwrap_or(0),
        numbers.get(2).copied().unwrap_or(0),
    );
    if mariadb {
        v >= (10, 5, 2)
    } else {
        v >= (5, 7, 7)
    }
}

/// How long an idle side connection stays open. mysql_async's default (0) closes every
/// connection beyond the pool's minimum as soon as it is returned: each batch of undo
/// deletions paid for a new connection (TCP, authentication, and a server thread).
const SIDE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

fn side_opts(config: &MysqlFrontend) -> mysql_async::Opts {
    crate::session::mysql::side::service_opts(config)
        .pool_opts(
            mysql_async::PoolOpts::default()
                .with_constraints(mysql_async::PoolConstraints::new(0, 4).unwrap_or_default())
                .with_inactive_connection_ttl(SIDE_IDLE),
        )
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xa_ids_are_hex_and_round_trip_through_xa_recover_columns() {
        let xid = Xid::parse("0123456789abcdef-42").unwrap();
        assert_eq!(
            xa_id(&xid, 7),
            format!("X'{}',X'37'", hex(b"tandem:0123456789abcdef-42"))
        );
        assert_eq!(
            parse_recovered(b"tandem:0123456789abcdef-42", b"7"),
            Some((xid, 7))
        );
        assert_eq!(parse_recovered(b"someone-else", b"7"), None);
        assert_eq!(parse_recovered(b"tandem:x", b"not a number"), None);
    }

    #[test]
    fn detached_xa_needs_mysql_5_7_7_or_mariadb_10_5_2() {
        assert!(supports_detached_xa("10.11.19-MariaDB-0+deb12u1"));
        assert!(supports_detached_xa("8.0.36"));
        assert!(supports_detached_xa("5.7.7-log"));
        assert!(!supports_detached_xa("5.7.6"));
        assert!(!supports_detached_xa("10.4.32-MariaDB"));
        assert!(!supports_detached_xa("5.5.5-10.4.32-MariaDB"));
        assert!(supports_detached_xa("5.5.5-10.11.2-MariaDB"));
    }
}
