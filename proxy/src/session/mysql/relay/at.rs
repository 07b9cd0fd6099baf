//! AT mode in a MySQL session: each write of a session bound to a global transaction
//! runs as tandem's own statement between the reads of its images, and the local COMMIT
//! becomes after images, the branch's registration with its lock keys, the undo_log row
//! and COMMIT.
//!
//! Owns the branch of the session's current local transaction. Every statement here
//! runs at a sync point, on the session's own connection, in the client's transaction
//! (tandem's own START TRANSACTION for an autocommit write). Invariant: no row changes
//! without a before image, and a write that changed a row tandem did not read is
//! rolled back with its whole local transaction.

use super::Relay;
use super::client_side::Handled;
use super::own::{Own, OwnError};
use crate::at::branch::{Branch, TextKey, lock_key};
use crate::at::mysql::{AtTable, undo_table};
use crate::error::{Error, Result};
use crate::wire::mysql::codes::StatusFlags;
use crate::wire::mysql::messages::response::put_err;
use crate::wire::mysql::messages::statement::{BinaryRow, OkPacket, Param};
use std::sync::Arc;
use std::time::Duration;
use tandem_lockserver::client::BranchKind;
use tandem_undo::mysql::types;
use tandem_undo::{Analysis, Dialect, LockedRead, Mysql, OnDuplicate, Row, Write, WriteKind};

/// ER_NO_SUCH_TABLE.
const NO_SUCH_TABLE: u16 = 1146;

/// After images are read at most this many rows a statement.
const KEYS_PER_READ: usize = 500;

/// Why a statement in AT mode did not succeed, and what it leaves behind.
enum AtFailure {
    /// tandem refused it: it did not run, and the transaction goes on.
    Refused(Error),
    /// The server's ERR to it (to a write, or to one of tandem's statements around it).
    Server(OwnError),
    /// The write ran but changed rows tandem has no before image of: its whole local
    /// transaction must be rolled back.
    Uncaptured(Error),
}

type Outcome<T> = std::result::Result<T, AtFailure>;

impl From<tandem_undo::Error> for AtFailure {
    fn from(e: tandem_undo::Error) -> Self {
        AtFailure::Refused(e.into())
    }
}

impl Relay<'_> {
    fn own(&mut self) -> Own<'_> {
        Own {
            server: &mut self.server,
            from_server: &mut self.from_server,
            deprecate_eof: self.exchange.deprecate_eof,
        }
    }

    /// A whole COM_QUERY of a session bound in AT mode.
    pub(super) async fn at_query(&mut self, sql: &[u8]) -> Result<Handled> {
        if !self.exchange.at_sync_point() {
            return Ok(Handled::Pause);
        }
        let Ok(text) = std::str::from_utf8(sql) else {
            return self.refuse(Error::Unsupported {
                what: "a statement that is not UTF-8, in AT mode",
            });
        };
        let analyses = match tandem_undo::analyze(&Mysql, text) {
            Ok(analyses) => analyses,
            Err(e) => return self.refuse(e.into()),
        };
        if analyses.len() > 1 {
            if analyses
                .iter()
                .all(|a| matches!(a, Analysis::Read | Analysis::Other))
            {
                self.at_branch.forget_all_after();
                return Ok(Handled::Relay);
            }
            return self.refuse(Error::Unsupported {
                what: "a multi-statement query that writes or ends a transaction, in AT mode on MySQL (send its statements one at a time)",
            });
        }
        let Some(analysis) = analyses.into_iter().next() else {
            return Ok(Handled::Relay);
        };
        match analysis {
            Analysis::Read => Ok(Handled::Relay),
            Analysis::Other => {
                // SAVEPOINT, ROLLBACK TO SAVEPOINT, SET …: rows may now differ from
                // what the writes saw.
                self.at_branch.forget_all_after();
                Ok(Handled::Relay)
            }
            Analysis::Begin if !self.at_branch.is_empty() => self.refuse(Error::Unsupported {
                what: "START TRANSACTION while the branch has uncommitted writes (MySQL would commit them without their undo log): COMMIT or ROLLBACK first",
            }),
            Analysis::Begin => Ok(Handled::Relay),
            Analysis::Rollback => {
                self.at_branch = Branch::default();
                Ok(Handled::Relay)
            }
            Analysis::Commit if self.at_branch.is_empty() => Ok(Handled::Relay),
            Analysis::Commit => self.at_commit(text).await,
            Analysis::LockingRead(None) => self.refuse(Error::Unsupported {
                what: "SELECT … FOR UPDATE or LOCK IN SHARE MODE over several tables in a global transaction",
            }),
            Analysis::LockingRead(Some(read)) => self.at_locking_read(&read).await,
            Analysis::Write(write) => self.at_write(&write, text).await,
        }
    }

    /// The client's COMMIT (or `SET autocommit = 1`, which commits) of a local
    /// transaction with captured rows.
    async fn at_commit(&mut self, sql: &str) -> Result<Handled> {
        let committed = self.commit_branch().await?;
        match committed {
            Ok(status) => {
                self.exchange.on_authenticated(status);
                if !is_commit(sql) {
                    // `SET autocommit = 1`: committed; the SET itself still runs.
                    return Ok(Handled::Relay);
                }
                crate::wire::mysql::messages::response::put_ok(&mut self.to_client, 1, status);
            }
            Err(failure) => self.put_failure(&failure),
        }
        Ok(Handled::Answer)
    }

    /// An INSERT, UPDATE, DELETE or REPLACE in a global transaction, with its images.
    async fn at_write(&mut self, write: &Write, sql: &str) -> Result<Handled> {
        if write.has_returning {
            return self.refuse(Error::Unsupported {
                what: "a write with RETURNING, in AT mode on MySQL",
            });
        }
        let table = match self
            .ctx
            .at_meta
            .get(self.ctx.xa.pool(), &self.database, &write.table)
            .await
        {
            Ok(table) => table,
            Err(e) => return self.refuse(e),
        };
        let status = self.exchange.status().unwrap_or(StatusFlags::empty());
        // An autocommit write is its own branch: tandem opens the local transaction
        // that holds its images and undo row.
        let wrapped = !status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
            && status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
        if wrapped && let Err(e) = self.own().query("START TRANSACTION").await? {
            self.put_failure(&AtFailure::Server(e));
            return Ok(Handled::Answer);
        }
        let mut outcome = self.capture_write(&table, write, sql).await?;
        if wrapped && let Ok(ok) = &mut outcome {
            match self.commit_branch().await? {
                Ok(status) => ok.status = status,
                Err(failure) => outcome = Err(failure),
            }
        }
        match outcome {
            Ok(ok) => {
                self.exchange.on_authenticated(ok.status);
                ok.put(&mut self.to_client, 1);
            }
            Err(failure) => {
                let whole_transaction = match &failure {
                    AtFailure::Uncaptured(_) => true,
                    // A deadlock rolls back the whole transaction.
                    AtFailure::Server(e) => e.code == 1213,
                    AtFailure::Refused(_) => false,
                };
                if wrapped || whole_transaction {
                    self.at_branch = Branch::default();
                    if let Ok(ok) = self.own().query("ROLLBACK").await? {
                        self.exchange.on_authenticated(ok.status);
                    }
                }
                self.put_failure(&failure);
            }
        }
        Ok(Handled::Answer)
    }

    /// Reads the before images, runs the write, and learns the rows it inserted.
    async fn capture_write(
        &mut self,
        table: &AtTable,
        write: &Write,
        sql: &str,
    ) -> Result<Outcome<OkPacket>> {
        let meta = &table.meta;
        if write.kind != WriteKind::Insert {
            let capture = match table.mysql.before_image(write) {
                Ok(capture) => capture,
                Err(e) => return Ok(Err(e.into())),
            };
            let rows = match self.own().select(&capture.sql, &[]).await? {
                Ok(rows) => keyed(meta, rows),
                Err(e) => return Ok(Err(AtFailure::Server(e))),
            };
            let keys: Vec<TextKey> = rows.iter().map(|(_, k)| k.clone()).collect();
            self.at_branch.record_before(meta, rows);
            let ok = match self.own().query(sql).await? {
                Ok(ok) => ok,
                Err(e) => return Ok(Err(AtFailure::Server(e))),
            };
            let changed = match write.kind {
                WriteKind::Update => ok.rows_matched().unwrap_or(ok.affected_rows),
                _ => ok.affected_rows,
            };
            if changed > keys.len() as u64 {
                // A row the before image did not see (a phantom under READ COMMITTED).
                return Ok(Err(AtFailure::Uncaptured(Error::Uncaptured {
                    table: meta.table.name.clone(),
                })));
            }
            self.at_branch.forget_after(meta, &keys);
            return Ok(Ok(ok));
        }
        let plan = match table.mysql.insert_plan(write) {
            Ok(plan) => plan,
            Err(e) => return Ok(Err(e.into())),
        };
        let mut before_keys = Vec::new();
        if let Some(before) = &plan.before {
            let rows = match self.own().select(&before.sql, &[]).await? {
                Ok(rows) => keyed(meta, rows),
                Err(e) => return Ok(Err(AtFailure::Server(e))),
            };
            before_keys = rows.iter().map(|(_, k)| k.clone()).collect();
            self.at_branch.record_before(meta, rows);
        }
        let ok = match self.own().query(sql).await? {
            Ok(ok) => ok,
            Err(e) => return Ok(Err(AtFailure::Server(e))),
        };
        let found = if let Some(after) = &plan.after {
            self.own().select(&after.sql, &[]).await?
        } else if plan.generated > 0 && ok.affected_rows > 0 {
            self.generated_rows(table, ok.last_insert_id, plan.generated)
                .await?
        } else {
            Ok(Vec::new())
        };
        let found = match found {
            Ok(rows) => keyed(meta, rows),
            Err(e) => return Ok(Err(AtFailure::Server(e))),
        };
        let inserted: Vec<TextKey> = found
            .iter()
            .map(|(_, k)| k)
            .filter(|k| !before_keys.contains(k))
            .cloned()
            .collect();
        let expected = match write.on_duplicate {
            OnDuplicate::Error | OnDuplicate::Ignore => Some(ok.affected_rows),
            // An upsert counts 2 for a row it updated, REPLACE 2 for a row it replaced.
            OnDuplicate::Update | OnDuplicate::Replace => None,
        };
        if expected.is_some_and(|n| n != inserted.len() as u64) {
            return Ok(Err(AtFailure::Uncaptured(Error::Uncaptured {
                table: meta.table.name.clone(),
            })));
        }
        self.at_branch.forget_after(meta, &before_keys);
        self.at_branch.record_inserted(meta, inserted);
        self.at_branch
            .record_returned_after(meta, found.into_iter().map(|(row, key)| (key, Some(row))));
        Ok(Ok(ok))
    }

    /// The rows an INSERT gave AUTO_INCREMENT keys: the k-th has
    /// `last_insert_id + k × @@auto_increment_increment`.
    async fn generated_rows(
        &mut self,
        table: &AtTable,
        first: u64,
        count: usize,
    ) -> Result<std::result::Result<Vec<BinaryRow>, OwnError>> {
        let step = if count > 1 {
            match self
                .own()
                .select("SELECT @@auto_increment_increment", &[])
                .await?
            {
                Ok(rows) => rows
                    .first()
                    .and_then(|r| r.first().cloned().flatten())
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map(u64::from_le_bytes)
                    .unwrap_or(1),
                Err(e) => return Ok(Err(e)),
            }
        } else {
            1
        };
        let keys: Vec<[u8; 8]> = (0..count as u64)
            .map(|k| first.wrapping_add(k.wrapping_mul(step)).to_le_bytes())
            .collect();
        let params: Vec<Param<'_>> = keys
            .iter()
            .map(|k| Param {
                type_code: types::LONGLONG | types::UNSIGNED,
                value: Some(k),
            })
            .collect();
        let sql = table.mysql.select_by_keys(count);
        self.own().select(&sql, &params).await
    }

    /// After images, registration with the branch's lock keys, the undo row, COMMIT.
    /// On failure the local transaction is over (rolled back).
    async fn commit_branch(&mut self) -> Result<Outcome<StatusFlags>> {
        let xid = self.binding.xid().cloned().ok_or(Error::NotBound)?;
        for (meta, keys) in self.at_branch.keys() {
            for chunk in keys.chunks(KEYS_PER_READ) {
                let values: Vec<Option<Vec<u8>>> = chunk
                    .iter()
                    .flatten()
                    .map(|v| unhex(v.as_deref()))
                    .collect();
                let key_types = meta
                    .pk
                    .iter()
                    .map(|&i| Mysql.param_type(meta.columns[i].type_oid));
                let params: Vec<Param<'_>> = values
                    .iter()
                    .zip(key_types.cycle())
                    .map(|(v, type_code)| Param {
                        type_code,
                        value: v.as_deref(),
                    })
                    .collect();
                let sql = meta.select_by_keys_sql(&Mysql, chunk.len());
                match self.own().select(&sql, &params).await? {
                    Ok(rows) => self.at_branch.record_after(&meta, keyed(&meta, rows)),
                    Err(e) => return self.abandon(AtFailure::Server(e)).await,
                }
            }
        }
        let resource = self.ctx.xa.resource_id(&self.database);
        let (record, keys) = std::mem::take(&mut self.at_branch).finish(&resource);
        if record.tables.is_empty() {
            // Rows inserted and deleted again: nothing to undo, nothing to lock.
            return Ok(match self.own().query("COMMIT").await? {
                Ok(ok) => Ok(ok.status),
                Err(e) => Err(AtFailure::Server(e)),
            });
        }
        self.ctx.xa.serve(&resource);
        let branch_id = match self
            .ctx
            .lock
            .register_branch(&xid, &resource, BranchKind::AT, &keys, self.ctx.lock_wait)
            .await
        {
            Ok(id) => id,
            Err(e) => return self.abandon(AtFailure::Refused(e.into())).await,
        };
        tracing::debug!(parent: &self.span, %xid, branch = branch_id, "branch registered");
        let insert = format!(
            "INSERT INTO {} (branch_id, xid, context, rollback_info, log_status) VALUES ({branch_id}, X'{}', 'tandem', X'{}', {})",
            undo_table(&self.database),
            hex(xid.as_str().as_bytes()),
            hex(&record.encode()),
            crate::at::phase2::LOG_NORMAL,
        );
        // Not pipelined with the COMMIT: a failed INSERT does not fail MySQL's
        // transaction, and the COMMIT would then commit the rows without their undo.
        if let Err(mut e) = self.own().query(&insert).await? {
            if e.code == NO_SUCH_TABLE {
                e.message = format!(
                    "{} (tandem's undo_log: run `tandem migrate` on database {})",
                    e.message, self.database
                );
            }
            self.report_phase_one_failed(&xid, branch_id);
            return self.abandon(AtFailure::Server(e)).await;
        }
        match self.own().query("COMMIT").await? {
            Ok(ok) => Ok(Ok(ok.status)),
            Err(e) => {
                self.report_phase_one_failed(&xid, branch_id);
                self.abandon(AtFailure::Server(e)).await
            }
        }
    }

    /// Ends the local transaction after a failed COMMIT of a branch.
    async fn abandon<T>(&mut self, failure: AtFailure) -> Result<Outcome<T>> {
        self.at_branch = Branch::default();
        if let Ok(ok) = self.own().query("ROLLBACK").await? {
            self.exchange.on_authenticated(ok.status);
        }
        Ok(Err(failure))
    }

    /// A registered branch whose local COMMIT failed: the lockserver shows it as
    /// PhaseOneFailed. In the background: the client's answer does not wait for it.
    fn report_phase_one_failed(&self, xid: &tandem_lockserver::client::Xid, branch_id: u64) {
        let lock = self.ctx.lock.clone();
        let xid = xid.clone();
        let span = self.span.clone();
        tokio::spawn(async move {
            if let Err(e) = lock.report(&xid, branch_id, false).await {
                tracing::debug!(parent: &span, error = %e, branch = branch_id, "phase-1 failure not reported");
            }
        });
    }

    /// SELECT … FOR UPDATE / LOCK IN SHARE MODE in a global transaction: the rows it
    /// locks must not be held by another unfinished global transaction. Waits up to the
    /// wait bound, then refuses; the statement itself then runs as sent.
    async fn at_locking_read(&mut self, read: &LockedRead) -> Result<Handled> {
        let Some(xid) = self.binding.xid().cloned() else {
            return Ok(Handled::Relay);
        };
        let table = match self
            .ctx
            .at_meta
            .get(self.ctx.xa.pool(), &self.database, &read.table)
            .await
        {
            Ok(table) => table,
            Err(e) => return self.refuse(e),
        };
        let capture = match table.meta.locked_keys(&Mysql, read) {
            Ok(capture) => capture,
            Err(e) => return self.refuse(e.into()),
        };
        let rows = match self.own().select(&capture.sql, &[]).await? {
            Ok(rows) => rows,
            // The read itself fails the same way: let the client see the real error.
            Err(_) => return Ok(Handled::Relay),
        };
        let resource = self.ctx.xa.resource_id(&self.database);
        let keys: Vec<_> = rows
            .iter()
            .map(|key| lock_key(&resource, &table.meta, key))
            .collect();
        if keys.is_empty() {
            return Ok(Handled::Relay);
        }
        let deadline = std::time::Instant::now() + self.ctx.lock_wait;
        loop {
            match self.ctx.lock.lock_holder(&keys).await {
                Ok(Some((_, holder))) if holder != xid => {
                    if std::time::Instant::now() >= deadline {
                        return self.refuse(Error::GloballyLocked {
                            holder: holder.to_string(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(_) => return Ok(Handled::Relay),
                Err(e) => return self.refuse(e.into()),
            }
        }
    }

    fn put_failure(&mut self, failure: &AtFailure) {
        match failure {
            AtFailure::Refused(e) | AtFailure::Uncaptured(e) => {
                tracing::debug!(parent: &self.span, error = %e, "AT statement failed");
                let code = e.mysql_error();
                put_err(
                    &mut self.to_client,
                    1,
                    code.code(),
                    code.sqlstate(),
                    &e.to_string(),
                );
            }
            AtFailure::Server(e) => {
                put_err(&mut self.to_client, 1, e.code, &e.sqlstate, &e.message)
            }
        }
    }
}

/// Each image row with its key, as the branch names rows (the key's binary values in
/// hex), once per key: a multi-table write's before image repeats a row per match.
fn keyed(meta: &Arc<tandem_undo::TableMeta>, rows: Vec<BinaryRow>) -> Vec<(Row, TextKey)> {
    let mut out: Vec<(Row, TextKey)> = Vec::with_capacity(rows.len());
    for row in rows {
        let key: TextKey = meta
            .key_of(&row)
            .into_iter()
            .map(|v| v.map(|b| hex(&b)))
            .collect();
        if !out.iter().any(|(_, k)| *k == key) {
            out.push((row, key));
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: Option<&str>) -> Option<Vec<u8>> {
    let text = text?;
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether a statement analysed as a commit is COMMIT itself (not `SET autocommit = 1`).
fn is_commit(sql: &str) -> bool {
    crate::control::leading_words(sql.as_bytes(), true)
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(b"COMMIT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_hex_and_commit_is_told_from_set_autocommit() {
        assert_eq!(
            unhex(Some(&hex(&[0, 0xff, 0x10]))),
            Some(vec![0, 0xff, 0x10])
        );
        assert_eq!(unhex(None), None);
        assert!(is_commit("/* c */ commit work"));
        assert!(!is_commit("SET autocommit = 1"));
    }
}
