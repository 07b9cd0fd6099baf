//! The embedded store: the [`Core`] in memory, every record appended to a local log
//! with group commit, and snapshots that compact the log. See `store/README.md`.
//!
//! Owns: the log directory. Never replies before the records of a command are on
//! disk. Invariant: the in-memory core equals the replay of the log's clean prefix
//! plus records whose fsync is still in flight (those replies are still waiting).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::log::{self, Writer};
use super::{Applied, Counts, Store};
use crate::core::clock::Millis;
use crate::core::locks::{FastMap, LockKey};
use crate::core::txn::{Command, Global, Limits, Record, Work, Xid};
use crate::core::{Core, Effect};
use crate::error::{Error, Result};

/// In-memory state, behind a std `Mutex`: it is held only for in-memory work and
/// queueing bytes to the writer, never across an `.await`.
struct State {
    core: Core,
    /// Phase-2 schedule: when each transaction's work is next due.
    p2: BTreeSet<(Millis, Xid)>,
    p2_at: FastMap<Xid, Millis>,
}

impl State {
    fn schedule(&mut self, xid: &Xid, at: Millis) {
        if let Some(old) = self.p2_at.insert(xid.clone(), at) {
            self.p2.remove(&(old, xid.clone()));
        }
        self.p2.insert((at, xid.clone()));
    }
    fn unschedule(&mut self, xid: &Xid) {
        if let Some(old) = self.p2_at.remove(xid) {
            self.p2.remove(&(old, xid.clone()));
        }
    }
}

/// The default store: a local, fsynced, checksummed log.
pub struct EmbeddedStore {
    state: Mutex<State>,
    writer: Writer,
    dir: PathBuf,
    compact_bytes: u64,
    /// Held for the store's life (see [`lock_dir`]); the OS lets go when it closes.
    _dir_lock: fs::File,
}

/// Takes the data directory for this process alone: a second lockserver on it would
/// recover, start a new log generation and delete the one the first still appends
/// to, so a decision the first acknowledged would be lost at the next restart.
fn lock_dir(dir: &Path) -> Result<fs::File> {
    let path = dir.join("LOCK");
    let file = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(Error::io("open", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Io {
            op: "lock",
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "another lockserver process holds this data directory",
            ),
        }),
        Err(fs::TryLockError::Error(e)) => Err(Error::io("lock", path)(e)),
    }
}

/// The first `limit` of `items` by `order`, in order: a partial selection, not a sort
/// of them all, since it runs under the store's lock.
fn first_by<T>(
    mut items: Vec<T>,
    limit: usize,
    order: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> Vec<T> {
    if limit == 0 {
        return Vec::new();
    }
    if items.len() > limit {
        items.select_nth_unstable_by(limit - 1, &order);
        items.truncate(limit);
    }
    items.sort_by(order);
    items
}

/// Whether `cmd`'s reply must wait for its records' fsync (see the `Store` contract).
/// The others are harmless to lose and still ordered before every later record, so
/// they are queued lazily: written with the next append that waits, or within
/// `log::LAZY_FLUSH`, never costing an fsync of their own under load.
fn must_wait(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Register { .. }
            | Command::Report { .. }
            | Command::Withdraw { .. }
            | Command::Commit { .. }
            | Command::Rollback { .. }
    )
}

/// Resolves once the appends a [`Durable`] stands for are on disk.
async fn durable_result(durable: log::Durable, dir: &Path) -> Result<()> {
    match durable.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Io {
            op: "append to log",
            path: dir.to_path_buf(),
            source: std::io::Error::new(e.kind(), e.to_string()),
        }),
        Err(_) => Err(Error::ShuttingDown),
    }
}

/// The outcome of [`EmbeddedStore::apply_now`]: every command's result, and what
/// the ones whose reply must wait for the disk wait on.
pub struct AppliedNow {
    /// One result per command, in order; with whether that reply must wait for
    /// [`AppliedNow::durable`] before it is released.
    pub results: Vec<(Result<Applied>, bool)>,
    /// Resolves once every record of the batch is durable (`None`: nothing to wait for).
    pub durable: Option<log::Durable>,
}

fn encode(records: &[Record], buf: &mut Vec<u8>) -> Result<()> {
    for r in records {
        log::frame_in_place(buf, |b| serde_json::to_writer(b, r)).map_err(|e| match e {
            Some(_) => Error::Corrupt {
                what: "record does not serialize",
            },
            None => Error::LimitExceeded {
                what: "bytes per log record",
                limit: log::MAX_RECORD_BYTES,
            },
        })?;
    }
    Ok(())
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, recovering the newest log generation
    /// to its clean prefix. Compacts once the log passes `compact_bytes`.
    pub fn open(dir: &Path, limits: Limits, compact_bytes: u64) -> Result<Self> {
        fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        let dir_lock = lock_dir(dir)?;
        let mut core = Core::new(limits);
        let (generation, size) = match log::newest_generation(dir)? {
            None => (1, 0),
            Some(g) => {
                let payloads = log::recover_file(&log::log_path(dir, g))?;
                let size = payloads.iter().map(|p| p.len() as u64 + 8).sum();
                for p in payloads {
                    let rec: Record = serde_json::from_slice(&p).map_err(|_| Error::Corrupt {
                        what: "log record with a valid checksum does not decode",
                    })?;
                    core.replay(&rec);
                }
                (g, size)
            }
        };
        // Replay never moves a held key, so this only fires on a log that is itself
        // inconsistent: a transaction that must keep its locks would be unprotected.
        let unheld = core.unheld_key();
        if let Some((xid, key)) = unheld {
            tracing::error!(%xid, %key, holder = ?core.locks().holder(key), "recovered log: a transaction that holds locks lacks one of its keys");
        }
        debug_assert!(unheld.is_none(), "recovered log lost a lock: {unheld:?}");
        // A fresh generation holding the recovered state: drops leftovers of an
        // interrupted compaction and starts appends from a clean file.
        let mut snap = Vec::new();
        encode(&core.snapshot(), &mut snap)?;
        let file = log::write_generation(dir, generation + 1, &snap)?;
        for e in fs::read_dir(dir).map_err(Error::io("list", dir))?.flatten() {
            let p = e.path();
            if p != log::log_path(dir, generation + 1)
                && e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("log."))
            {
                let _ = fs::remove_file(&p);
            }
        }
        let mut state = State {
            core,
            p2: BTreeSet::new(),
            p2_at: FastMap::default(),
        };
        let due: Vec<Xid> = state
            .core
            .all_pending()
            .into_iter()
            .map(|w| w.xid)
            .collect();
        for x in due {
            state.schedule(&x, 0);
        }
        tracing::info!(dir = %dir.display(), recovered_bytes = size, active = state.core.active(), locks = state.core.locks().len(), "embedded store opened");
        let writer = Writer::start(dir.to_path_buf(), generation + 1, file, snap.len() as u64);
        Ok(EmbeddedStore {
            state: Mutex::new(state),
            writer,
            dir: dir.to_path_buf(),
            compact_bytes,
            _dir_lock: dir_lock,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn compaction_due(&self) -> bool {
        let (appended, snapshot, pending) = self.writer.size();
        !pending && appended >= self.compact_bytes.max(snapshot.saturating_mul(2))
    }

    fn maybe_compact(&self) -> Result<()> {
        if !self.compaction_due() {
            return Ok(());
        }
        let st = self.state();
        // Checked again under the state lock: commands that saw the log too big at
        // once would otherwise each queue the same snapshot (and each write it).
        if !self.compaction_due() {
            return Ok(());
        }
        let mut snap = Vec::new();
        encode(&st.core.snapshot(), &mut snap)?;
        // Queued under the state lock, so the snapshot sits exactly after every
        // record appended so far and before every later one.
        self.writer.rotate(snap);
        Ok(())
    }
}

impl EmbeddedStore {
    /// Applies `cmds` in order under one hold of the state lock, queueing all their
    /// records as one append: the synchronous half of [`Store::apply`], for callers
    /// that apply many commands at once (a received batch of calls). A reply marked
    /// as waiting must not be released before [`AppliedNow::durable`] resolves Ok
    /// (then [`EmbeddedStore::durable`] maps its error); the others may go at once.
    pub fn apply_now(&self, cmds: &[Command], now: Millis) -> AppliedNow {
        let mut results = Vec::new();
        let mut buf = Vec::new();
        let mut urgent = false;
        let durable = {
            let mut st = self.state();
            for cmd in cmds {
                let r = self.apply_locked(&mut st, cmd, now, &mut buf);
                // Such a command waits even when it wrote nothing (a repeated commit,
                // rollback or report) or a decision failed (a rollback of a transaction
                // already committing): its answer rests on state whose records may
                // still be in flight, so it waits for everything queued before it. A
                // refused registration (a lock conflict) promises nothing.
                let wait =
                    must_wait(cmd) && (r.is_ok() || !matches!(cmd, Command::Register { .. }));
                urgent |= wait;
                results.push((r, wait));
            }
            let queued = match (buf.is_empty(), urgent) {
                (true, false) => Ok(None),
                // Free when nothing is queued: the answers are durable already.
                (true, true) => self.writer.barrier(),
                (false, true) => self.writer.append(&buf).map(Some),
                (false, false) => self.writer.append_lazy(&buf).map(|()| None),
            };
            let op = if buf.is_empty() {
                "read barrier"
            } else {
                "append to log"
            };
            match queued {
                Ok(d) => d,
                Err(e) => {
                    // Nothing of this batch reached the queue: fail every command that
                    // must wait (the log refuses all appends from now on).
                    let msg = e.to_string();
                    for (r, wait) in &mut results {
                        if r.is_ok() && *wait {
                            *r = Err(Error::Io {
                                op,
                                path: self.dir.clone(),
                                source: std::io::Error::other(msg.clone()),
                            });
                        }
                    }
                    None
                }
            }
        };
        // Nothing to wait for (a barrier with nothing queued): every answer may go now.
        if durable.is_none() {
            results.iter_mut().for_each(|(_, wait)| *wait = false);
        }
        if let Err(e) = self.maybe_compact() {
            tracing::warn!(error = %e, "log compaction not queued");
        }
        AppliedNow { results, durable }
    }

    /// Claims due phase-2 work under the state lock, with a read barrier covering it.
    fn claim_locked(
        &self,
        now: Millis,
        lease_ms: u64,
        limit: usize,
    ) -> Result<(Vec<Work>, Option<log::Durable>)> {
        let mut st = self.state();
        let due: Vec<Xid> = st
            .p2
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|(_, x)| x.clone())
            .collect();
        let mut out = Vec::new();
        for x in due {
            let work = st
                .core
                .global(&x)
                .map(Global::pending_work)
                .unwrap_or_default();
            if work.is_empty() {
                st.unschedule(&x);
            } else {
                st.schedule(&x, now.saturating_add(lease_ms));
                out.extend(work);
            }
        }
        // Taken under the state lock: it covers every record of the claimed work.
        let barrier = if out.is_empty() {
            None
        } else {
            self.writer.barrier()?
        };
        Ok((out, barrier))
    }

    /// Whether each table named by `prefixes` ([`LockKey::table_prefix`]) holds a
    /// lock now (in memory: a registration whose fsync is still in flight counts).
    pub fn tables_in_use(&self, prefixes: &[&str]) -> Vec<bool> {
        let st = self.state();
        prefixes
            .iter()
            .map(|p| st.core.locks().held_in_table(p) > 0)
            .collect()
    }

    /// The [`LockKey::table_prefix`] of every table holding a lock now.
    pub fn locked_tables(&self) -> Vec<String> {
        self.state()
            .core
            .locks()
            .tables()
            .map(str::to_owned)
            .collect()
    }

    /// Waits for what [`AppliedNow::durable`] stands for.
    pub async fn durable(&self, d: log::Durable) -> Result<()> {
        durable_result(d, &self.dir).await
    }

    /// One command under the state lock; its records are framed onto `buf`.
    fn apply_locked(
        &self,
        st: &mut State,
        cmd: &Command,
        now: Millis,
        buf: &mut Vec<u8>,
    ) -> Result<Applied> {
        let out = st.core.apply(cmd, now)?;
        // A forget is not logged: replay may bring a finished transaction back, and
        // the timers forget it again (it holds no locks and owes no work).
        if out.records.is_empty() || matches!(cmd, Command::Forget { .. }) {
            return Ok(out.into());
        }
        // The core has applied the records already: a record that does not encode
        // would leave memory ahead of the log, so it is a corruption either way.
        encode(&out.records, buf)?;
        for e in &out.effects {
            if let Effect::Phase2Due { xid } = e {
                st.schedule(xid, now);
            }
        }
        Ok(out.into())
    }
}

impl Store for EmbeddedStore {
    async fn apply(&self, cmd: Command, now: Millis) -> Result<Applied> {
        let mut now_out = self.apply_now(std::slice::from_ref(&cmd), now);
        let (result, wait) = now_out.results.pop().ok_or(Error::Corrupt {
            what: "a command without a result",
        })?;
        if let (true, Some(d)) = (wait, now_out.durable) {
            self.durable(d).await?;
        }
        result
    }

    async fn global(&self, xid: &Xid) -> Result<Option<Global>> {
        Ok(self.state().core.global(xid).cloned())
    }

    async fn settled(&self) -> Result<()> {
        if let Some(rx) = self.writer.barrier()? {
            durable_result(rx, &self.dir).await?;
        }
        Ok(())
    }

    async fn globals(&self, limit: usize) -> Result<Vec<Global>> {
        let st = self.state();
        let order = |a: &&Global, b: &&Global| {
            (a.status.is_finished(), a.begun_at, &a.xid).cmp(&(
                b.status.is_finished(),
                b.begun_at,
                &b.xid,
            ))
        };
        Ok(first_by(st.core.globals().collect(), limit, order)
            .into_iter()
            .cloned()
            .collect())
    }

    async fn locks(&self, limit: usize) -> Result<Vec<(LockKey, Xid)>> {
        let st = self.state();
        Ok(first_by(st.core.locks().iter().collect(), limit, Ord::cmp)
            .into_iter()
            .map(|(k, x)| (k.clone(), x.clone()))
            .collect())
    }

    async fn first_held(&self, keys: &[LockKey]) -> Result<Option<(LockKey, Xid)>> {
        let held = {
            let st = self.state();
            keys.iter()
                .find_map(|k| st.core.locks().holder(k).map(|x| (k.clone(), x.clone())))
        };
        if held.is_none() {
            // "Free" must not rest on a release that is not durable yet (a commit
            // decision still in its fsync): a crash could bring the lock back after
            // a proxy had written the row outside any global transaction.
            if let Some(rx) = self.writer.barrier()? {
                durable_result(rx, &self.dir).await?;
            }
        }
        Ok(held)
    }

    async fn due(&self, now: Millis, retention_ms: u64, limit: usize) -> Result<Vec<Command>> {
        Ok(self.state().core.due(now, retention_ms, limit))
    }

    async fn claim_phase2(&self, now: Millis, lease_ms: u64, limit: usize) -> Result<Vec<Work>> {
        let (out, barrier) = self.claim_locked(now, lease_ms, limit)?;
        // Work goes out only once the decision that made it due is durable: a proxy
        // must not delete undo rows (or undo a branch) on the strength of a commit
        // (or rollback) that a crash could still take back.
        if let Some(rx) = barrier {
            durable_result(rx, &self.dir).await?;
        }
        Ok(out)
    }

    async fn schedule_phase2(&self, xid: &Xid, at: Millis) -> Result<()> {
        let mut st = self.state();
        if st
            .core
            .global(xid)
            .is_some_and(|g| !g.pending_work().is_empty())
        {
            st.schedule(xid, at);
        }
        Ok(())
    }

    async fn counts(&self) -> Result<Counts> {
        let st = self.state();
        Ok(Counts {
            active: st.core.active() as u64,
            locks: st.core.locks().len() as u64,
        })
    }

    async fn close(&self) -> Result<()> {
        self.writer.close();
        Ok(())
    }
}
