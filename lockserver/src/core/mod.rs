//! The coordinator's pure core: `apply(cmd, now) -> (effects, reply)`.
//!
//! Owns: the in-memory state of every live transaction and the lock table, for the
//! embedded store. Never does I/O, never spawns, never reads a clock. Invariant: the
//! state equals the replay of every [`txn::Record`] returned so far, in order.

pub mod clock;
pub mod locks;
pub mod plan;
pub mod txn;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use crate::error::Error;
use clock::Millis;
use locks::{Conflict, LockKey, LockTable};
use txn::{Command, Global, GlobalStatus, Limits, Record, Reply, Work, Xid};

/// Something the async shell must do after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `xid`'s locks were released: wake waiters.
    LocksReleased {
        /// Transaction.
        xid: Xid,
    },
    /// `xid` owes phase-2 work ([`Global::pending_work`]): deliver it.
    Phase2Due {
        /// Transaction.
        xid: Xid,
    },
    /// `xid` reached a terminal status (or a failure that needs an operator).
    Ended {
        /// Transaction.
        xid: Xid,
        /// Its status.
        status: GlobalStatus,
    },
}

/// What one command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Records to make durable before the reply is released.
    pub records: Vec<Record>,
    /// Work for the shell.
    pub effects: Vec<Effect>,
    /// The answer.
    pub reply: Reply,
}

/// What `xid` was before a command: its status and the phase-2 work it owed.
#[derive(Debug, Clone, Default)]
pub struct Before {
    status: Option<GlobalStatus>,
    work: Vec<(u64, bool)>,
}

impl Before {
    /// Captures `g` before a command runs.
    pub fn of(g: Option<&Global>) -> Self {
        let mut work = Vec::new();
        if let Some(g) = g {
            g.for_each_pending(|b, commit| work.push((b.branch_id, commit)));
        }
        Before {
            status: g.map(|g| g.status),
            work,
        }
    }
}

/// The effects of a change of `xid` from `before` to `after`, given that `changed`
/// says whether any record was written. Shared by every store. `Phase2Due` is only
/// emitted for work that is new, so answers for one branch do not re-send the others.
pub fn effects_of(
    xid: &Xid,
    before: &Before,
    after: Option<&Global>,
    changed: bool,
) -> Vec<Effect> {
    let mut out = Vec::new();
    if !changed {
        return out;
    }
    let was = before;
    let before = before.status;
    let after_status = after.map(|g| g.status);
    if before.is_some_and(|s| s.holds_locks()) && !after_status.is_some_and(|s| s.holds_locks()) {
        out.push(Effect::LocksReleased { xid: xid.clone() });
    }
    if let Some(g) = after {
        let mut new_work = false;
        g.for_each_pending(|b, commit| new_work |= !was.work.contains(&(b.branch_id, commit)));
        if new_work {
            out.push(Effect::Phase2Due { xid: xid.clone() });
        }
        let ends = g.status.is_finished()
            || matches!(
                g.status,
                GlobalStatus::RollbackFailed | GlobalStatus::TimeoutRollbackFailed
            );
        if ends && before != Some(g.status) {
            out.push(Effect::Ended {
                xid: xid.clone(),
                status: g.status,
            });
        }
    }
    out
}

/// Live state: transactions, locks, and the indexes the timers need.
#[derive(Debug, Default)]
pub struct Core {
    globals: locks::FastMap<Xid, Global>,
    locks: LockTable,
    /// Deadlines of transactions still in `Begin`.
    deadlines: BTreeSet<(Millis, Xid)>,
    /// Finished transactions by the time they finished, for forgetting.
    finished: BTreeSet<(Millis, Xid)>,
    limits: Limits,
}

impl Core {
    /// An empty core with these limits.
    pub fn new(limits: Limits) -> Self {
        Core {
            limits,
            ..Default::default()
        }
    }

    /// Runs one command. On `Err` the state is unchanged.
    pub fn apply(&mut self, cmd: &Command, now: Millis) -> Result<Output, Error> {
        let xid = cmd.xid();
        let before = self.globals.get(xid);
        let before_state = Before::of(before);
        let (records, reply) = txn::plan(before, cmd, now, &self.limits)?;
        if let Command::Register { keys, .. } = cmd {
            self.locks
                .check(xid, keys)
                .map_err(|c| self.conflict_error(c))?;
        }
        for r in &records {
            self.replay(r);
        }
        let effects = effects_of(
            xid,
            &before_state,
            self.globals.get(xid),
            !records.is_empty(),
        );
        Ok(Output {
            records,
            effects,
            reply,
        })
    }

    fn conflict_error(&self, c: Conflict) -> Error {
        let holder_rolling_back = self
            .globals
            .get(&c.holder)
            .is_some_and(|g| g.status.is_rolling_back());
        Error::LockConflict {
            key: c.key,
            holder: c.holder,
            holder_rolling_back,
        }
    }

    /// Applies a record; used by [`Core::apply`] and by log recovery. A branch's
    /// keys are taken only while its transaction holds locks, and only where free:
    /// replay never moves a key from its holder (see [`Core::snapshot`]).
    pub fn replay(&mut self, rec: &Record) {
        let xid = rec.xid().clone();
        match rec {
            Record::Begin { at, deadline, .. } => {
                self.deadlines.insert((*deadline, xid.clone()));
                self.globals
                    .insert(xid.clone(), Global::begin(xid, *at, *deadline));
            }
            Record::Forget { .. } => {
                if let Some(g) = self.globals.remove(&xid) {
                    self.deadlines.remove(&(g.deadline, xid.clone()));
                    self.finished.remove(&(g.updated_at, xid.clone()));
                }
                self.locks.release_all(&xid);
            }
            _ => {
                let Some(g) = self.globals.get_mut(&xid) else {
                    return;
                };
                let (old_status, old_updated) = (g.status, g.updated_at);
                g.apply(rec);
                if let Record::Branch { branch, .. } = rec
                    && g.status.holds_locks()
                {
                    self.locks.take_free(&xid, &branch.keys);
                }
                if old_status != g.status {
                    if old_status == GlobalStatus::Begin {
                        self.deadlines.remove(&(g.deadline, xid.clone()));
                    }
                    if g.status == GlobalStatus::Begin {
                        self.deadlines.insert((g.deadline, xid.clone()));
                    }
                    if !g.status.holds_locks() {
                        self.locks.release_all(&xid);
                    } else if !old_status.holds_locks() {
                        let keys: Vec<LockKey> = g.keys().cloned().collect();
                        self.locks.take_free(&xid, &keys);
                    }
                    self.finished.remove(&(old_updated, xid.clone()));
                    if g.status.is_finished() {
                        self.finished.insert((g.updated_at, xid));
                    }
                }
            }
        }
    }

    /// Commands the timers owe at `now`: timeouts of expired `Begin` transactions and
    /// forgetting finished ones older than `retention_ms` (or past `max_finished`);
    /// at most `limit` of them.
    pub fn due(&self, now: Millis, retention_ms: u64, limit: usize) -> Vec<Command> {
        let expired = self
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, x)| Command::Timeout { xid: x.clone() });
        let cutoff = now.saturating_sub(retention_ms);
        let excess = self.finished.len().saturating_sub(self.limits.max_finished);
        let old = self
            .finished
            .iter()
            .enumerate()
            .take_while(|(i, (t, _))| *i < excess || *t <= cutoff)
            .map(|(_, (_, x))| Command::Forget { xid: x.clone() });
        expired.chain(old).take(limit).collect()
    }

    /// Records that recreate the current state, for compaction: per transaction its
    /// `Begin`, its `Status`, then its `Branch`es. The status goes first so that a
    /// transaction that no longer holds locks (committed, phase 2 owed: its branches
    /// still list their keys) never takes them on replay; transactions come in hash
    /// order, and another may hold those keys by now. Snapshots written before this
    /// order (branches first) still replay correctly, because replay never moves a
    /// held key ([`locks::LockTable::take_free`]).
    pub fn snapshot(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for g in self.globals.values() {
            out.push(Record::Begin {
                xid: g.xid.clone(),
                at: g.begun_at,
                deadline: g.deadline,
            });
            if g.status != GlobalStatus::Begin {
                out.push(Record::Status {
                    xid: g.xid.clone(),
                    status: g.status,
                    at: g.updated_at,
                });
            }
            for b in &g.branches {
                out.push(Record::Branch {
                    xid: g.xid.clone(),
                    branch: b.clone(),
                });
            }
        }
        out
    }

    /// A transaction that holds locks by its status, and one of its keys that it does
    /// not hold (free, or another's); `None` when the lock table agrees with every
    /// transaction's status, as it does after replaying any log that [`Core::apply`]
    /// wrote. Checked after recovery; O(keys).
    pub fn unheld_key(&self) -> Option<(&Xid, &LockKey)> {
        self.globals
            .values()
            .filter(|g| g.status.holds_locks())
            .find_map(|g| {
                g.keys()
                    .find(|k| self.locks.holder(k) != Some(&g.xid))
                    .map(|k| (&g.xid, k))
            })
    }

    /// The transaction `xid`.
    pub fn global(&self, xid: &Xid) -> Option<&Global> {
        self.globals.get(xid)
    }
    /// Every known transaction, in no particular order.
    pub fn globals(&self) -> impl Iterator<Item = &Global> {
        self.globals.values()
    }
    /// The lock table.
    pub fn locks(&self) -> &LockTable {
        &self.locks
    }
    /// Phase-2 work owed by every transaction (for recovery after a restart).
    pub fn all_pending(&self) -> Vec<Work> {
        self.globals
            .values()
            .flat_map(|g| g.pending_work())
            .collect()
    }
    /// Number of transactions not yet finished.
    pub fn active(&self) -> usize {
        self.globals.len() - self.finished.len()
    }
}
