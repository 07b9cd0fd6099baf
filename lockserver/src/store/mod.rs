//! Durable coordinator state behind one contract, [`Store`], with two engines:
//! [`embedded::EmbeddedStore`] (a checksummed log with group commit; the default) and
//! [`redis::RedisStore`] (shared by several lockserver processes).
//!
//! Owns: durability, atomicity and the phase-2 schedule. Never talks to proxies or
//! clients. Invariant: both engines give the same answers to the same commands; the
//! conformance suite (`store::conformance`, run against both) is the arbiter.
//!
//! # The contract
//! - **Atomicity**: [`Store::apply`] runs one command against the current state as a
//!   unit. For `Register`, the lock check and the acquisition of every key are one
//!   step: no other caller ever sees some keys of a request held and others not.
//! - **Durability**: when `apply` of `Register`, `Report`, `Commit` or `Rollback`
//!   returns `Ok`, its records survive a crash of the process (embedded: after
//!   `fdatasync` of the log; Redis: as durable as the server's `appendfsync`, which
//!   must be `always` for the same guarantee). `Begin`, `Timeout`, `Phase2Result`
//!   and `Forget` may be answered before that: losing one in a crash is harmless (an
//!   unknown xid fails its first registration; a timeout is re-decided by the next
//!   tick; a phase-2 answer is re-delivered; a forget is redone). Records stay in
//!   order, so a durable record implies every earlier one. On `Err`, nothing was written.
//!   One of those four that writes nothing (a repeated commit, rollback or report,
//!   answered with the current status) returns only once the state it answers from
//!   is durable: a retry never confirms a decision that a crash could still take back.
//! - **Ordering**: commands on one xid take effect in the order their `apply` calls
//!   returned; a reader that sees a record's effect also sees all earlier ones.
//! - **Phase-2 schedule**: not durable by itself; it is derived from durable state,
//!   so after a restart every transaction that owes work is due at once.

pub mod embedded;
pub mod log;
pub mod redis;

#[cfg(test)]
mod conformance;

use std::future::Future;

use crate::core::clock::Millis;
use crate::core::locks::LockKey;
use crate::core::txn::{Command, Global, Reply, Work, Xid};
use crate::core::{Effect, Output};
use crate::error::Result;

/// The result of one applied command: the reply and what the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The answer.
    pub reply: Reply,
    /// Effects for the shell (wake waiters, deliver phase 2, ...).
    pub effects: Vec<Effect>,
}

impl From<Output> for Applied {
    fn from(o: Output) -> Self {
        Applied {
            reply: o.reply,
            effects: o.effects,
        }
    }
}

/// Gauges for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Transactions not yet finished.
    pub active: u64,
    /// Lock keys held.
    pub locks: u64,
}

/// Durable coordinator state. See the module docs for the contract.
pub trait Store: Send + Sync + 'static {
    /// Runs `cmd` atomically at time `now`; durable when it returns `Ok`.
    fn apply(&self, cmd: Command, now: Millis) -> impl Future<Output = Result<Applied>> + Send;
    /// One transaction with its branches, as applied so far (see [`Store::settled`]).
    fn global(&self, xid: &Xid) -> impl Future<Output = Result<Option<Global>>> + Send;
    /// Resolves once everything applied so far is durable: a state read before it can
    /// no longer be taken back by a crash.
    fn settled(&self) -> impl Future<Output = Result<()>> + Send;
    /// Up to `limit` known transactions, live ones first (then recently finished ones),
    /// each group by begin time.
    fn globals(&self, limit: usize) -> impl Future<Output = Result<Vec<Global>>> + Send;
    /// Up to `limit` held lock keys with their holders.
    fn locks(&self, limit: usize) -> impl Future<Output = Result<Vec<(LockKey, Xid)>>> + Send;
    /// The first of `keys` held by anyone, with its holder.
    fn first_held(
        &self,
        keys: &[LockKey],
    ) -> impl Future<Output = Result<Option<(LockKey, Xid)>>> + Send;
    /// Commands the timers owe at `now` (timeouts, forgetting finished transactions
    /// older than `retention_ms`), at most `limit`. Running them twice is harmless.
    fn due(
        &self,
        now: Millis,
        retention_ms: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Command>>> + Send;
    /// Claims up to `limit` transactions whose phase-2 work is due, returning that
    /// work; they are not due again before `now + lease_ms` unless rescheduled.
    /// With several lockservers, an unanswered claim expires and another takes it.
    fn claim_phase2(
        &self,
        now: Millis,
        lease_ms: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Work>>> + Send;
    /// Makes `xid`'s phase-2 work due at `at` (retry with backoff, or now).
    fn schedule_phase2(&self, xid: &Xid, at: Millis) -> impl Future<Output = Result<()>> + Send;
    /// Gauges.
    fn counts(&self) -> impl Future<Output = Result<Counts>> + Send;
    /// Makes everything durable and stops background work (shutdown).
    fn close(&self) -> impl Future<Output = Result<()>> + Send;
}

/// The configured engine.
pub enum AnyStore {
    /// The embedded log.
    Embedded(Box<embedded::EmbeddedStore>),
    /// Redis.
    Redis(redis::RedisStore),
}

impl AnyStore {
    /// Whether other lockservers share this state (and its phase-2 schedule).
    pub fn is_shared(&self) -> bool {
        matches!(self, AnyStore::Redis(_))
    }
}

macro_rules! each {
    ($s:expr, $v:ident => $e:expr) => {
        match $s {
            AnyStore::Embedded($v) => $e,
            AnyStore::Redis($v) => $e,
        }
    };
}

impl Store for AnyStore {
    async fn apply(&self, cmd: Command, now: Millis) -> Result<Applied> {
        each!(self, s => s.apply(cmd, now).await)
    }
    async fn global(&self, xid: &Xid) -> Result<Option<Global>> {
        each!(self, s => s.global(xid).await)
    }
    async fn settled(&self) -> Result<()> {
        each!(self, s => s.settled().await)
    }
    async fn globals(&self, limit: usize) -> Result<Vec<Global>> {
        each!(self, s => s.globals(limit).await)
    }
    async fn locks(&self, limit: usize) -> Result<Vec<(LockKey, Xid)>> {
        each!(self, s => s.locks(limit).await)
    }
    async fn first_held(&self, keys: &[LockKey]) -> Result<Option<(LockKey, Xid)>> {
        each!(self, s => s.first_held(keys).await)
    }
    async fn due(&self, now: Millis, retention_ms: u64, limit: usize) -> Result<Vec<Command>> {
        each!(self, s => s.due(now, retention_ms, limit).await)
    }
    async fn claim_phase2(&self, now: Millis, lease_ms: u64, limit: usize) -> Result<Vec<Work>> {
        each!(self, s => s.claim_phase2(now, lease_ms, limit).await)
    }
    async fn schedule_phase2(&self, xid: &Xid, at: Millis) -> Result<()> {
        each!(self, s => s.schedule_phase2(xid, at).await)
    }
    async fn counts(&self) -> Result<Counts> {
        each!(self, s => s.counts().await)
    }
    async fn close(&self) -> Result<()> {
        each!(self, s => s.close().await)
    }
}
