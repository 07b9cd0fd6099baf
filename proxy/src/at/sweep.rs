//! Old GlobalFinished markers leave the undo_log, as Seata's undo-log deletion removes
//! undo logs older than `logSaveDays`.
//!
//! A marker (log_status 1) is what a rollback leaves when it finds no undo row: it makes
//! the branch's local commit, should it still come, fail on the unique (xid, branch_id)
//! instead of keeping writes that nothing would undo. That commit follows the branch's
//! registration within one round trip, so a marker days old guards nothing, yet
//! nothing else ever deletes it. Normal rows (log_status 0) are never swept: one past
//! the retention belongs to a transaction whose decision tandem cannot read any more (a
//! committed branch whose cleanup was lost in a database crash, since phase 2 deletes
//! with synchronous_commit off; or a lockserver that lost its log), and deleting it
//! would remove the only way to undo the branch. Such rows are counted
//! (`tandem_undo_rows_past_retention`) and logged for an operator.
//!
//! Runs on side connections, every `undo.sweep_interval_ms`, over the databases phase 2
//! serves.

use crate::metrics::UndoSweepMetrics;
use std::sync::Arc;
use std::time::Duration;
use tandem_lockserver::client::BoxFuture;
use tokio_util::sync::CancellationToken;

/// What one database's sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub markers_deleted: u64,
    /// Normal undo rows older than the retention, left in place.
    pub rows_past_retention: u64,
}

/// One engine's statements: delete the markers older than `retention`, count the
/// normal rows older than it. A database without undo_log sweeps to nothing.
pub trait SweepUndo: Send + Sync + 'static {
    fn sweep<'a>(
        &'a self,
        database: &'a str,
        retention: Duration,
    ) -> BoxFuture<'a, Result<Swept, String>>;
}

/// Sweeps every database `databases` names on `upstream`, every `every`, until `stop`.
pub async fn run(
    engine: Arc<dyn SweepUndo>,
    upstream: String,
    databases: impl Fn() -> Vec<String>,
    every: Duration,
    retention: Duration,
    metrics: UndoSweepMetrics,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let mut past_retention = 0;
        for database in databases() {
            match engine.sweep(&database, retention).await {
                Ok(swept) => {
                    metrics.markers_swept.inc_by(swept.markers_deleted);
                    past_retention += swept.rows_past_retention;
                    if swept.rows_past_retention > 0 {
                        tracing::warn!(
                            %upstream,
                            %database,
                            rows = swept.rows_past_retention,
                            retention_ms = retention.as_millis() as u64,
                            "undo rows older than the retention are left in undo_log: their global transactions' decisions are no longer known (see the README)"
                        );
                    }
                }
                Err(e) => tracing::debug!(%upstream, %database, error = %e, "undo sweep failed"),
            }
        }
        metrics
            .rows_past_retention
            .get_or_create(&[("upstream", upstream.clone())])
            .set(i64::try_from(past_retention).unwrap_or(i64::MAX));
    }
}

/// PostgreSQL, over the side pools.
pub struct PostgresSweep(pub Arc<crate::upstream::SidePools>);

/// undefined_table: a database without undo_log sweeps to nothing.
const UNDEFINED_TABLE: &str = "42P01";

impl SweepUndo for PostgresSweep {
    fn sweep<'a>(
        &'a self,
        database: &'a str,
        retention: Duration,
    ) -> BoxFuture<'a, Result<Swept, String>> {
        Box::pin(async move {
            let client = self.0.get(database).await.map_err(|e| e.to_string())?;
            let ms = retention.as_millis() as f64;
            let swept = async {
                let markers_deleted = client
                    .execute(
                        "DELETE FROM undo_log WHERE log_status = 1 \
                         AND log_created < now() - $1::float8 * interval '1 millisecond'",
                        &[&ms],
                    )
                    .await?;
                let row = client
                    .query_one(
                        "SELECT count(*) FROM undo_log WHERE log_status = 0 \
                         AND log_created < now() - $1::float8 * interval '1 millisecond'",
                        &[&ms],
                    )
                    .await?;
                Ok::<_, tokio_postgres::Error>(Swept {
                    markers_deleted,
                    rows_past_retention: row.get::<_, i64>(0) as u64,
                })
            }
            .await;
            match swept {
                Err(e) if e.code().map(|c| c.code()) == Some(UNDEFINED_TABLE) => {
                    Ok(Swept::default())
                }
                other => other.map_err(|e| e.to_string()),
            }
        })
    }
}

/// MySQL/MariaDB, over the side pool. log_created is a DATETIME in the time zone of
/// the session that wrote the row; against a retention of days the difference of time
/// zones does not matter.
pub struct MysqlSweep(pub mysql_async::Pool);

/// ER_NO_SUCH_TABLE.
const NO_SUCH_TABLE: u16 = 1146;

impl SweepUndo for MysqlSweep {
    fn sweep<'a>(
        &'a self,
        database: &'a str,
        retention: Duration,
    ) -> BoxFuture<'a, Result<Swept, String>> {
        use mysql_async::prelude::Queryable;
        Box::pin(async move {
            let table = super::mysql::undo_table(database);
            let micros = retention.as_micros() as u64;
            let swept = async {
                let mut conn = self.0.get_conn().await?;
                conn.exec_drop(
                    format!(
                        "DELETE FROM {table} WHERE log_status = 1 \
                         AND log_created < TIMESTAMPADD(MICROSECOND, -?, NOW(6))"
                    ),
                    (micros,),
                )
                .await?;
                let markers_deleted = conn.affected_rows();
                let rows: Option<u64> = conn
                    .exec_first(
                        format!(
                            "SELECT COUNT(*) FROM {table} WHERE log_status = 0 \
                             AND log_created < TIMESTAMPADD(MICROSECOND, -?, NOW(6))"
                        ),
                        (micros,),
                    )
                    .await?;
                Ok::<_, mysql_async::Error>(Swept {
                    markers_deleted,
                    rows_past_retention: rows.unwrap_or(0),
                })
            }
            .await;
            match swept {
                Err(mysql_async::Error::Server(e)) if e.code == NO_SUCH_TABLE => {
                    Ok(Swept::default())
                }
                other => other.map_err(|e| e.to_string()),
            }
        })
    }
}
