//! The async shell around the store: the operations both APIs offer, with lock
//! waits, rollback waits, timers, effects and metrics.
//!
//! Owns: xid generation, waiting, and carrying out [`Effect`]s. Never decides a
//! state transition (that is `core::txn::plan`, run by the store) and never speaks a
//! wire protocol (that is `api`). Invariant: every state change goes through
//! [`Store::apply`], and every returned effect is carried out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, SemaphorePermit, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::core::Effect;
use crate::core::clock::{Clock, Millis};
use crate::core::locks::LockKey;
use crate::core::txn::{Command, Global, GlobalStatus, Phase2Outcome, Reply, Xid};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::phase2::Phase2;
use crate::store::embedded::{AppliedNow, EmbeddedStore};
use crate::store::{AnyStore, Applied, Store};
use crate::tables::Tables;

/// How often a waiter re-checks state that another lockserver (sharing Redis) may
/// change without telling this one.
const POLL: Duration = Duration::from_millis(20);
/// How often a commit looks again for an XA branch's phase-1 report.
const PHASE_ONE_POLL: Duration = Duration::from_millis(20);

/// Timer commands taken from the store at a time.
pub const TICK_BATCH: usize = 1000;
/// Most batches in one timer pass; the rest waits for the next tick.
pub const TICK_PASSES: usize = 20;

/// A held lock as seen by a lock query: key, holder, and whether it is rolling back.
pub type HeldLock = (LockKey, Xid, bool);

/// The coordinator: one per lockserver process, shared by every API task.
pub struct Coordinator {
    pub(crate) store: AnyStore,
    clock: Arc<dyn Clock>,
    pub(crate) config: Config,
    node: String,
    seq: AtomicU64,
    /// Woken whenever some transaction's locks are released.
    released: Notify,
    /// Bumped whenever a transaction ends.
    ended: watch::Sender<u64>,
    pub(crate) phase2: Phase2,
    /// Which tables may hold locks, as told to the proxies.
    pub(crate) tables: Tables,
    /// Instruments.
    pub metrics: Metrics,
    permits: Semaphore,
}

/// The first `limit` of a listing asked for one more, and whether there were more.
fn cut_to<T>(mut listed: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let truncated = listed.len() > limit;
    listed.truncate(limit);
    (listed, truncated)
}

impl Coordinator {
    /// A coordinator over `store`. The node id (random per process) prefixes xids.
    pub fn new(store: AnyStore, config: Config, clock: Arc<dyn Clock>) -> Self {
        let node = format!("{:016x}", rand::random::<u64>());
        let tables = Tables::new(&config, matches!(store, AnyStore::Embedded(_)));
        if let AnyStore::Embedded(s) = &store {
            // Locks recovered from the log: their tables are announced from the start.
            tables.seed(&s.locked_tables());
        }
        Coordinator {
            tables,
            store,
            clock,
            node,
            seq: AtomicU64::new(1),
            released: Notify::new(),
            ended: watch::channel(0).0,
            phase2: Phase2::new(&config),
            metrics: Metrics::default(),
            permits: Semaphore::new(config.limits.max_in_flight),
            config,
        }
    }

    /// The current time.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Admission: one permit per request, refused (not queued) at the limit.
    pub fn permit(&self) -> Result<SemaphorePermit<'_>> {
        self.permits.try_acquire().map_err(|_| {
            self.metrics.overloaded.inc();
            Error::Overloaded
        })
    }

    /// Admission for a call whose permit is given back later with
    /// [`Coordinator::release`] (calls answered from a batch).
    pub(crate) fn admit(&self) -> Result<()> {
        self.permit().map(SemaphorePermit::forget)
    }

    /// Gives back `n` permits taken with [`Coordinator::admit`].
    pub(crate) fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// The embedded store, when it is the engine: it applies a batch of commands
    /// synchronously ([`Coordinator::exec_now`]).
    pub(crate) fn embedded(&self) -> Option<&EmbeddedStore> {
        match &self.store {
            AnyStore::Embedded(s) => Some(s),
            AnyStore::Redis(_) => None,
        }
    }

    /// A new xid.
    pub(crate) fn next_xid(&self) -> Xid {
        Xid::new(&self.node, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Applies `cmds` in order under one hold of the embedded store's lock and
    /// carries out their effects: the batch twin of [`Coordinator::exec`]. Results
    /// marked as waiting are released only once [`AppliedNow::durable`] resolves.
    pub(crate) fn exec_now(&self, store: &EmbeddedStore, cmds: &[Command]) -> AppliedNow {
        let out = store.apply_now(cmds, self.now());
        for (r, _) in &out.results {
            if let Ok(a) = r {
                self.carry_out(&a.effects);
            }
        }
        out
    }

    pub(crate) async fn exec(&self, cmd: Command) -> Result<Applied> {
        let applied = self.store.apply(cmd, self.now()).await?;
        self.carry_out(&applied.effects);
        Ok(applied)
    }

    fn carry_out(&self, effects: &[Effect]) {
        for e in effects {
            match e {
                Effect::LocksReleased { .. } => self.released.notify_waiters(),
                Effect::Phase2Due { .. } => self.phase2.wake(),
                Effect::Ended { xid, status } => {
                    tracing::debug!(%xid, %status, "global transaction ended");
                    self.metrics.ended(*status);
                    // Only rollbacks waiting for their end subscribe; waking nobody
                    // still took the channel's locks, once per finished transaction.
                    if self.ended.receiver_count() > 0 {
                        self.ended.send_modify(|n| *n += 1);
                    }
                }
            }
        }
    }

    /// Begins a global transaction; `None` takes the configured default timeout.
    pub async fn begin(&self, timeout_ms: Option<u64>) -> Result<(Xid, Millis)> {
        let started = Instant::now();
        let xid = self.next_xid();
        let timeout_ms = timeout_ms.unwrap_or(self.config.default_timeout_ms);
        let span = tracing::debug_span!("begin", %xid);
        let r = self
            .exec(Command::Begin {
                xid: xid.clone(),
                timeout_ms,
            })
            .instrument(span)
            .await?;
        self.metrics.observe("begin", started);
        match r.reply {
            Reply::Began { deadline } => Ok((xid, deadline)),
            _ => Err(Error::Corrupt {
                what: "begin answered with something else",
            }),
        }
    }

    /// Registers a branch, waiting up to `wait` (capped by `max_lock_wait_ms`) for
    /// conflicting locks. A holder that is rolling back fails the wait at once, and so
    /// does `caller_gone`: a registration granted once nobody can hear the answer
    /// would hold locks for a branch whose local transaction died with its proxy (a
    /// global commit would then answer Committed without it). `cmd` is a
    /// [`Command::Register`].
    pub async fn register(
        &self,
        cmd: Command,
        wait: Duration,
        caller_gone: &CancellationToken,
    ) -> Result<u64> {
        let started = Instant::now();
        let Command::Register {
            xid,
            resource,
            keys,
            ..
        } = &cmd
        else {
            return Err(Error::Corrupt {
                what: "register given another command",
            });
        };
        let span = tracing::debug_span!("register", %xid, %resource, keys = keys.len());
        let wait = wait.min(Duration::from_millis(self.config.max_lock_wait_ms));
        let deadline = started + wait;
        let mut cmd = Some(cmd);
        let r = async {
            loop {
                let released = self.released.notified();
                // Without a wait there is exactly one attempt: no copy of the keys.
                let attempt = if wait.is_zero() {
                    cmd.take()
                } else {
                    cmd.clone()
                };
                let Some(attempt) = attempt else {
                    return Err(Error::Corrupt {
                        what: "register retried without a wait",
                    });
                };
                match self.exec_register(attempt).await {
                    Err(e @ Error::LockConflict { .. }) => {
                        let now = Instant::now();
                        if !e.is_retryable() || now >= deadline || caller_gone.is_cancelled() {
                            self.metrics.conflicts.inc();
                            return Err(e);
                        }
                        tokio::select! {
                            _ = tokio::time::timeout(POLL.min(deadline - now), released) => {}
                            () = caller_gone.cancelled() => {
                                tracing::debug!("the caller went away while its registration waited");
                                self.metrics.conflicts.inc();
                                return Err(e);
                            }
                        }
                    }
                    Ok(Applied {
                        reply: Reply::Registered { branch_id },
                        ..
                    }) => {
                        tracing::debug!(branch = branch_id, "branch registered");
                        return Ok(branch_id);
                    }
                    Ok(_) => {
                        return Err(Error::Corrupt {
                            what: "register answered with something else",
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        .instrument(span)
        .await;
        self.metrics.observe("register", started);
        r
    }

    /// Applies a registration once every table of its keys may hold locks: first
    /// announces the ones that may not yet and waits (up to `table_ack_timeout_ms`)
    /// for the proxies' acknowledgements (`tables`). Redis: as [`Coordinator::exec`].
    async fn exec_register(&self, cmd: Command) -> Result<Applied> {
        let (Some(store), Command::Register { keys, .. }) = (self.embedded(), &cmd) else {
            return self.exec(cmd).await;
        };
        let mut announcing = None;
        loop {
            let out = {
                let gate = self.tables.gate(self.now());
                // The gate is held until the locks are in the table.
                gate.covers(keys)
                    .then(|| self.exec_now(store, std::slice::from_ref(&cmd)))
            };
            let Some(mut out) = out else {
                let started = *announcing.get_or_insert_with(tokio::time::Instant::now);
                self.tables.announce(keys, self.now(), started).await?;
                continue;
            };
            let (result, wait) = out.results.pop().ok_or(Error::Corrupt {
                what: "a command without a result",
            })?;
            if let (Ok(_), true, Some(d)) = (&result, wait, out.durable) {
                store.durable(d).await?;
            }
            return result;
        }
    }

    /// Unannounces tables that have held no lock for `unannounce_after_ms` (a timer
    /// pass; embedded store only).
    pub fn unannounce_idle(&self) {
        if let Some(store) = self.embedded() {
            self.tables
                .unannounce_idle(self.now(), |p| store.tables_in_use(p));
        }
    }

    /// Unannounces now the tables of `keys` that hold no lock ([`Tables::release_idle`]);
    /// returns the table prefixes that stay announced (with Redis, every one).
    pub fn release_idle_tables(&self, keys: &[LockKey]) -> Vec<String> {
        let mut prefixes: Vec<&str> = keys.iter().map(LockKey::table_prefix).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        match self.embedded() {
            Some(store) => self
                .tables
                .release_idle(&prefixes, self.now(), |p| store.tables_in_use(p)),
            None => prefixes.into_iter().map(str::to_owned).collect(),
        }
    }

    /// Records a branch's phase-1 result: `cmd` is a [`Command::Report`], or a
    /// [`Command::Withdraw`] of a registration whose answer its caller never heard.
    pub async fn report(&self, cmd: Command) -> Result<()> {
        let started = Instant::now();
        let span = match &cmd {
            Command::Report { xid, branch_id, .. } => {
                tracing::debug_span!("report", %xid, branch = branch_id)
            }
            Command::Withdraw { xid, token, .. } => {
                tracing::debug_span!("withdraw", %xid, token)
            }
            _ => {
                return Err(Error::Corrupt {
                    what: "report given another command",
                });
            }
        };
        self.exec(cmd).instrument(span).await?;
        self.metrics.observe("report", started);
        Ok(())
    }

    /// Commits: returns `Committed` once the decision is durable.
    /// An XA branch still preparing (`Error::PhaseOnePending`) is waited for, up to
    /// `rollback_wait_ms`, as a rollback waits for its branches.
    pub async fn commit(&self, xid: Xid) -> Result<GlobalStatus> {
        let started = Instant::now();
        let span = tracing::debug_span!("commit", %xid);
        let deadline = started + Duration::from_millis(self.config.rollback_wait_ms);
        let r = async {
            loop {
                match self.exec(Command::Commit { xid: xid.clone() }).await {
                    Err(Error::PhaseOnePending { .. }) if Instant::now() < deadline => {
                        tokio::time::sleep(PHASE_ONE_POLL).await;
                    }
                    other => return other,
                }
            }
        }
        .instrument(span)
        .await?;
        self.metrics.observe("commit", started);
        status_of(r.reply)
    }

    /// Rolls back and waits up to `rollback_wait_ms` for every branch to be undone;
    /// returns the status then (`Rollbacked`, or a `*Retrying`/`*Failed` status).
    pub async fn rollback(&self, xid: Xid) -> Result<GlobalStatus> {
        let started = Instant::now();
        let span = tracing::debug_span!("rollback", %xid);
        let r = async {
            let mut ended = self.ended.subscribe();
            let mut status = status_of(
                self.exec(Command::Rollback { xid: xid.clone() })
                    .await?
                    .reply,
            )?;
            let deadline = started + Duration::from_millis(self.config.rollback_wait_ms);
            while !settled(status) && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(
                    POLL.max(Duration::from_millis(50)).min(left),
                    ended.changed(),
                )
                .await;
                status = self
                    .store
                    .global(&xid)
                    .await?
                    .map(|g| g.status)
                    .unwrap_or(status);
            }
            Ok(status)
        }
        .instrument(span)
        .await;
        self.metrics.observe("rollback", started);
        r
    }

    /// The transaction with its branches, once what it shows is durable: XA recovery
    /// commits or rolls back prepared branches on the status it reads.
    pub async fn global(&self, xid: &Xid) -> Result<Global> {
        let global = self.store.global(xid).await?;
        self.store.settled().await?;
        global.ok_or_else(|| Error::UnknownXid { xid: xid.clone() })
    }

    /// Up to `max_list` transactions, live ones first, and whether more were left out.
    pub async fn globals(&self) -> Result<(Vec<Global>, bool)> {
        let limit = self.config.limits.max_list;
        let listed = self.store.globals(limit.saturating_add(1)).await?;
        Ok(cut_to(listed, limit))
    }

    /// Up to `max_list` held locks, and whether more were left out.
    pub async fn locks(&self) -> Result<(Vec<(LockKey, Xid)>, bool)> {
        let limit = self.config.limits.max_list;
        let listed = self.store.locks(limit.saturating_add(1)).await?;
        Ok(cut_to(listed, limit))
    }

    /// The first of `keys` held by an unfinished global transaction.
    pub async fn lock_query(&self, keys: &[LockKey]) -> Result<Option<HeldLock>> {
        let started = Instant::now();
        let held = self.store.first_held(keys).await?;
        let r = match held {
            None => None,
            Some((k, x)) => {
                let rb = self
                    .store
                    .global(&x)
                    .await?
                    .is_some_and(|g| g.status.is_rolling_back());
                Some((k, x, rb))
            }
        };
        self.metrics.observe("lock_query", started);
        Ok(r)
    }

    /// A proxy's answer to a phase-2 item.
    pub async fn phase2_result(
        &self,
        xid: Xid,
        branch_id: u64,
        outcome: Phase2Outcome,
    ) -> Result<()> {
        let span = tracing::debug_span!("phase2_result", %xid, branch = branch_id, %outcome);
        self.phase2.answered(&xid, branch_id, outcome);
        self.exec(Command::Phase2Result {
            xid: xid.clone(),
            branch_id,
            outcome,
        })
        .instrument(span)
        .await?;
        if outcome == Phase2Outcome::Retry {
            self.metrics.phase2_retries.inc();
            let at = self.now() + self.phase2.backoff(&xid);
            self.store.schedule_phase2(&xid, at).await?;
        } else {
            self.phase2.reset(&xid);
        }
        Ok(())
    }

    /// A batch of proxies' answers to phase-2 items, applied together under one hold
    /// of the embedded store's lock (their records are logged lazily, so nothing
    /// waits); a failed one is logged and left to redelivery, like the single path.
    /// Embedded store only: returns the answers untouched for any other engine.
    pub async fn phase2_results(
        &self,
        answers: Vec<(Xid, u64, Phase2Outcome)>,
    ) -> Vec<(Xid, u64, Phase2Outcome)> {
        let Some(store) = self.embedded() else {
            return answers;
        };
        let cmds: Vec<Command> = answers
            .iter()
            .map(|(xid, branch_id, outcome)| {
                self.phase2.answered(xid, *branch_id, *outcome);
                Command::Phase2Result {
                    xid: xid.clone(),
                    branch_id: *branch_id,
                    outcome: *outcome,
                }
            })
            .collect();
        let out = self.exec_now(store, &cmds);
        for ((xid, branch_id, outcome), (r, _)) in answers.into_iter().zip(out.results) {
            if let Err(e) = r {
                tracing::warn!(%xid, branch = branch_id, error = %e, "phase-2 answer not applied");
                continue;
            }
            if outcome == Phase2Outcome::Retry {
                self.metrics.phase2_retries.inc();
                let at = self.now() + self.phase2.backoff(&xid);
                if let Err(e) = store.schedule_phase2(&xid, at).await {
                    tracing::warn!(%xid, error = %e, "phase-2 retry not scheduled");
                }
            } else {
                self.phase2.reset(&xid);
            }
        }
        Vec::new()
    }

    /// One timer pass: roll back expired transactions, forget old finished ones.
    /// Takes up to [`TICK_BATCH`] commands at a time, and goes on while batches are
    /// full (at most [`TICK_PASSES`] of them): one batch per tick fell behind once
    /// transactions finished faster than 10,000/s, and `limits.max_finished` was
    /// overrun (bigger snapshots, more memory).
    pub async fn tick(&self) -> Result<usize> {
        let mut total = 0;
        for _ in 0..TICK_PASSES {
            let due = self
                .store
                .due(self.now(), self.config.finished_retention_ms, TICK_BATCH)
                .await?;
            let n = due.len();
            total += n;
            for cmd in due {
                let xid = cmd.xid().clone();
                if let Err(e) = self.exec(cmd).await {
                    // Another lockserver may have got there first; the next pass retries.
                    tracing::debug!(%xid, error = %e, "timer command not applied");
                }
            }
            if n < TICK_BATCH {
                break;
            }
        }
        Ok(total)
    }

    /// `/metrics` text.
    pub async fn metrics_text(&self) -> Result<String> {
        let counts = self.store.counts().await?;
        self.metrics.proxies.set(self.phase2.connected() as i64);
        Ok(self.metrics.render(counts))
    }
}

fn settled(s: GlobalStatus) -> bool {
    s.is_finished()
        || matches!(
            s,
            GlobalStatus::RollbackFailed | GlobalStatus::TimeoutRollbackFailed
        )
}

fn status_of(r: Reply) -> Result<GlobalStatus> {
    match r {
        Reply::Status(s) => Ok(s),
        _ => Err(Error::Corrupt {
            what: "expected a status reply",
        }),
    }
}
