//! Global transactions and their branches: statuses, the durable [`Record`]s, and the
//! pure per-transaction rules ([`plan`]) that turn a command into records and a reply.
//!
//! Owns: every status transition of a global transaction and its branches. Never does
//! I/O, never reads a clock, never touches the lock table (the caller checks locks).
//! Invariant: state changes only through [`Global::apply`] of a [`Record`], so live
//! operation and log replay go through the same code and cannot disagree.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::clock::Millis;
use super::locks::LockKey;
use crate::error::Error;

/// Longest xid accepted, in bytes.
pub const MAX_XID_BYTES: usize = 128;

/// A global transaction id: `<node>-<seq>`, where node is 16 random hex digits
/// chosen at process start, so ids are unique across restarts and processes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Xid(Arc<str>);

impl Xid {
    /// The xid numbered `seq` by the process whose random id is `node`.
    pub fn new(node: &str, seq: u64) -> Self {
        Self(format!("{node}-{seq}").into())
    }
    /// Validates an xid received from a client: 1..=128 printable ASCII bytes.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.is_empty() || s.len() > MAX_XID_BYTES || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidArgument {
                what: "xid must be 1 to 128 printable ASCII characters",
            });
        }
        Ok(Self(s.into()))
    }
    /// The xid's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Xid({})", &*self.0)
    }
}
impl Serialize for Xid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
impl<'de> Deserialize<'de> for Xid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self(String::deserialize(d)?.into()))
    }
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($(#[$vm])* $v),* }
        impl $name {
            /// Every value, for exhaustive tests and parsing.
            pub const ALL: &'static [$name] = &[$($name::$v),*];
            /// The name used on every API and in logs.
            pub fn as_str(self) -> &'static str { match self { $($name::$v => stringify!($v)),* } }
            /// Parses [`Self::as_str`]'s output.
            pub fn from_name(s: &str) -> Option<Self> { Self::ALL.iter().copied().find(|v| v.as_str() == s) }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

named_enum!(
    /// Seata's GlobalStatus (the subset tandem reaches).
    GlobalStatus {
        /// Open: branches may register.
        Begin,
        /// Commit decided; branches are being told to clean up.
        AsyncCommitting,
        /// Every branch cleaned up. Terminal.
        Committed,
        /// Rolling back on the application's request.
        Rollbacking,
        /// Rolling back, and some branch asked to be retried or was unreachable.
        RollbackRetrying,
        /// Rolling back because the timeout passed.
        TimeoutRollbacking,
        /// Timeout rollback, retrying.
        TimeoutRollbackRetrying,
        /// Every branch undone. Terminal.
        Rollbacked,
        /// Every branch undone after a timeout. Terminal.
        TimeoutRollbacked,
        /// A branch found a dirty write; its locks stay held until an operator acts.
        RollbackFailed,
        /// Like `RollbackFailed`, for a timeout rollback.
        TimeoutRollbackFailed,
    }
);

impl GlobalStatus {
    /// While true, the transaction's lock keys stay held. Locks go at the commit
    /// decision, and on rollback only once every branch is undone.
    pub fn holds_locks(self) -> bool {
        use GlobalStatus::*;
        matches!(
            self,
            Begin
                | Rollbacking
                | RollbackRetrying
                | TimeoutRollbacking
                | TimeoutRollbackRetrying
                | RollbackFailed
                | TimeoutRollbackFailed
        )
    }
    /// Terminal: nothing more will happen; kept for status queries, then forgotten.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            GlobalStatus::Committed | GlobalStatus::Rollbacked | GlobalStatus::TimeoutRollbacked
        )
    }
    /// Phase-2 rollback in progress (waiters on its locks fail fast).
    pub fn is_rolling_back(self) -> bool {
        use GlobalStatus::*;
        matches!(
            self,
            Rollbacking
                | RollbackRetrying
                | TimeoutRollbacking
                | TimeoutRollbackRetrying
                | RollbackFailed
                | TimeoutRollbackFailed
        )
    }
    fn is_committing(self) -> bool {
        self == GlobalStatus::AsyncCommitting
    }
    fn is_timeout(self) -> bool {
        use GlobalStatus::*;
        matches!(
            self,
            TimeoutRollbacking
                | TimeoutRollbackRetrying
                | TimeoutRollbacked
                | TimeoutRollbackFailed
        )
    }
}

named_enum!(
    /// Seata's BranchStatus (the subset tandem reaches).
    BranchStatus {
        /// Registered, locks taken; phase 1 not reported yet.
        Registered,
        /// The local transaction committed.
        PhaseOneDone,
        /// The local transaction failed (nothing to undo, but rollback is still sent).
        PhaseOneFailed,
        /// Phase-2 commit done (undo rows deleted).
        PhaseTwoCommitted,
        /// Phase-2 rollback done.
        PhaseTwoRollbacked,
        /// Phase-2 rollback found a dirty write and stopped.
        PhaseTwoRollbackFailed,
    }
);

named_enum!(
    /// How a branch runs phase 2.
    BranchKind {
        /// Undo images (Seata AT).
        AT,
        /// The database's own two-phase commit.
        XA,
    }
);

named_enum!(
    /// What a resource's proxy answered to one phase-2 work item.
    Phase2Outcome {
        /// Commit done.
        Committed,
        /// Rollback done.
        Rollbacked,
        /// Rollback refused: a row changed since (dirty write). Locks stay held.
        RollbackFailed,
        /// Could not do it now; try again later.
        Retry,
    }
);

/// One branch of a global transaction: one local transaction on one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    /// Position in registration order, from 1; unique within the xid.
    pub branch_id: u64,
    /// The resource (database) id.
    pub resource: String,
    /// AT or XA.
    pub kind: BranchKind,
    /// Lock keys taken at registration.
    pub keys: Vec<LockKey>,
    /// Phase-1/phase-2 status.
    pub status: BranchStatus,
}

/// A global transaction with its branches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Global {
    /// The id.
    pub xid: Xid,
    /// Current status.
    pub status: GlobalStatus,
    /// When it began.
    pub begun_at: Millis,
    /// When the lockserver rolls it back if still `Begin`.
    pub deadline: Millis,
    /// When the status last changed.
    pub updated_at: Millis,
    /// Branches in registration order.
    pub branches: Vec<Branch>,
}

/// One durable state change. The embedded log stores these; Redis stores the
/// resulting [`Global`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum Record {
    /// A global transaction began.
    Begin {
        /// Its id.
        xid: Xid,
        /// Begin time.
        at: Millis,
        /// Timeout deadline.
        deadline: Millis,
    },
    /// A branch registered (its keys are now held).
    Branch {
        /// Owning transaction.
        xid: Xid,
        /// The branch.
        branch: Branch,
    },
    /// The global status changed.
    Status {
        /// Transaction.
        xid: Xid,
        /// New status.
        status: GlobalStatus,
        /// When.
        at: Millis,
    },
    /// A branch status changed.
    BranchStatus {
        /// Transaction.
        xid: Xid,
        /// Branch.
        branch_id: u64,
        /// New status.
        status: BranchStatus,
    },
    /// A finished transaction was dropped after its retention period.
    Forget {
        /// Transaction.
        xid: Xid,
    },
}

impl Record {
    /// The transaction the record is about.
    pub fn xid(&self) -> &Xid {
        match self {
            Record::Begin { xid, .. }
            | Record::Branch { xid, .. }
            | Record::Status { xid, .. }
            | Record::BranchStatus { xid, .. }
            | Record::Forget { xid } => xid,
        }
    }
}

/// A request to change state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Begin `xid` (chosen by the shell) with a timeout.
    Begin {
        /// The new id.
        xid: Xid,
        /// Timeout in milliseconds.
        timeout_ms: u64,
    },
    /// Register a branch and take its lock keys, all or nothing.
    Register {
        /// Transaction.
        xid: Xid,
        /// Resource id.
        resource: String,
        /// AT or XA.
        kind: BranchKind,
        /// Lock keys.
        keys: Vec<LockKey>,
    },
    /// Report a branch's phase-1 result.
    Report {
        /// Transaction.
        xid: Xid,
        /// Branch.
        branch_id: u64,
        /// `PhaseOneDone` or `PhaseOneFailed`.
        status: BranchStatus,
    },
    /// The application commits.
    Commit {
        /// Transaction.
        xid: Xid,
    },
    /// The application (or an operator, after a `RollbackFailed`) rolls back.
    Rollback {
        /// Transaction.
        xid: Xid,
    },
    /// Roll back if past the deadline (sent by the timeout scan).
    Timeout {
        /// Transaction.
        xid: Xid,
    },
    /// A proxy's answer to a phase-2 work item.
    Phase2Result {
        /// Transaction.
        xid: Xid,
        /// Branch.
        branch_id: u64,
        /// The answer.
        outcome: Phase2Outcome,
    },
    /// Drop a finished transaction.
    Forget {
        /// Transaction.
        xid: Xid,
    },
}

impl Command {
    /// The transaction the command is about.
    pub fn xid(&self) -> &Xid {
        match self {
            Command::Begin { xid, .. }
            | Command::Register { xid, .. }
            | Command::Report { xid, .. }
            | Command::Commit { xid }
            | Command::Rollback { xid }
            | Command::Timeout { xid }
            | Command::Phase2Result { xid, .. }
            | Command::Forget { xid } => xid,
        }
    }
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Began; the deadline.
    Began {
        /// Timeout deadline.
        deadline: Millis,
    },
    /// Registered with this branch id.
    Registered {
        /// The new branch's id.
        branch_id: u64,
    },
    /// The transaction's status after the command.
    Status(GlobalStatus),
    /// Done, nothing to say.
    Ok,
}

/// Bounds on what one transaction may hold. Exceeding one is a client error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Branches per global transaction.
    pub max_branches: usize,
    /// Lock keys per branch.
    pub max_keys_per_branch: usize,
    /// Longest timeout a client may ask for, in ms.
    pub max_timeout_ms: u64,
    /// Finished transactions kept for status queries; past it the oldest are forgotten.
    pub max_finished: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_branches: 1000,
            max_keys_per_branch: 10_000,
            max_timeout_ms: 3_600_000,
            max_finished: 100_000,
        }
    }
}

/// One phase-2 item to deliver to a proxy of `resource`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Work {
    /// Transaction.
    pub xid: Xid,
    /// Branch.
    pub branch_id: u64,
    /// Resource whose proxy must do it.
    pub resource: String,
    /// AT or XA.
    pub kind: BranchKind,
    /// True for commit, false for rollback.
    pub commit: bool,
}

impl Global {
    /// A new transaction from its `Begin` record.
    pub fn begin(xid: Xid, at: Millis, deadline: Millis) -> Self {
        Global {
            xid,
            status: GlobalStatus::Begin,
            begun_at: at,
            deadline,
            updated_at: at,
            branches: Vec::new(),
        }
    }

    /// Applies one record. Records for another xid, or `Begin`/`Forget`, are the
    /// caller's business and are ignored here.
    pub fn apply(&mut self, rec: &Record) {
        match rec {
            Record::Branch { branch, .. } => self.branches.push(branch.clone()),
            Record::Status { status, at, .. } => {
                self.status = *status;
                self.updated_at = *at;
                if status.is_finished() {
                    // Its locks are gone; keeping the keys would only bloat snapshots.
                    self.branches.iter_mut().for_each(|b| b.keys = Vec::new());
                }
            }
            Record::BranchStatus {
                branch_id, status, ..
            } => {
                if let Some(b) = self.branch_mut(*branch_id) {
                    b.status = *status;
                }
            }
            Record::Begin { .. } | Record::Forget { .. } => {}
        }
    }

    /// The branch with this id.
    pub fn branch(&self, id: u64) -> Option<&Branch> {
        self.branches.iter().find(|b| b.branch_id == id)
    }
    fn branch_mut(&mut self, id: u64) -> Option<&mut Branch> {
        self.branches.iter_mut().find(|b| b.branch_id == id)
    }

    /// Every lock key of every branch.
    pub fn keys(&self) -> impl Iterator<Item = &LockKey> {
        self.branches.iter().flat_map(|b| b.keys.iter())
    }

    /// The phase-2 work still owed. Commit goes to every branch at once; rollback
    /// goes one branch at a time in reverse registration order, and stops at a
    /// branch that failed (dirty write) until an operator rolls back again.
    pub fn pending_work(&self) -> Vec<Work> {
        let work = |b: &Branch, commit| Work {
            xid: self.xid.clone(),
            branch_id: b.branch_id,
            resource: b.resource.clone(),
            kind: b.kind,
            commit,
        };
        if self.status.is_committing() {
            return self
                .branches
                .iter()
                .filter(|b| b.status != BranchStatus::PhaseTwoCommitted)
                .map(|b| work(b, true))
                .collect();
        }
        if self.status.is_rolling_back()
            && !matches!(
                self.status,
                GlobalStatus::RollbackFailed | GlobalStatus::TimeoutRollbackFailed
            )
        {
            return self
                .branches
                .iter()
                .rev()
                .find(|b| b.status != BranchStatus::PhaseTwoRollbacked)
                .map(|b| vec![work(b, false)])
                .unwrap_or_default();
        }
        Vec::new()
    }
}

fn status(xid: &Xid, status: GlobalStatus, at: Millis) -> Record {
    Record::Status {
        xid: xid.clone(),
        status,
        at,
    }
}

fn invalid(g: &Global, op: &'static str) -> Error {
    Error::InvalidState {
        xid: g.xid.clone(),
        status: g.status,
        op,
    }
}

/// The records and reply for `cmd` on the existing transaction `g` (`None` when the
/// xid is unknown). Lock availability for `Register` is checked by the caller.
/// On `Err`, nothing may be written: state stays unchanged.
pub fn plan(
    g: Option<&Global>,
    cmd: &Command,
    now: Millis,
    limits: &Limits,
) -> Result<(Vec<Record>, Reply), Error> {
    let Some(g) = g else {
        return match cmd {
            Command::Begin { xid, timeout_ms } => {
                if *timeout_ms == 0 || *timeout_ms > limits.max_timeout_ms {
                    return Err(Error::InvalidArgument {
                        what: "timeout_ms must be between 1 and the configured max_timeout_ms",
                    });
                }
                let deadline = now.saturating_add(*timeout_ms);
                Ok((
                    vec![Record::Begin {
                        xid: xid.clone(),
                        at: now,
                        deadline,
                    }],
                    Reply::Began { deadline },
                ))
            }
            // Late phase-2 answers for a forgotten transaction are harmless duplicates.
            Command::Phase2Result { .. } | Command::Timeout { .. } | Command::Forget { .. } => {
                Ok((vec![], Reply::Ok))
            }
            _ => Err(Error::UnknownXid {
                xid: cmd.xid().clone(),
            }),
        };
    };
    let xid = &g.xid;
    match cmd {
        Command::Begin { .. } => Err(Error::DuplicateXid { xid: xid.clone() }),
        Command::Register {
            resource,
            kind,
            keys,
            ..
        } => {
            if g.status != GlobalStatus::Begin {
                return Err(invalid(g, "register a branch"));
            }
            if now >= g.deadline {
                return Err(Error::Expired { xid: xid.clone() });
            }
            if resource.is_empty() || resource.len() > 1024 {
                return Err(Error::InvalidArgument {
                    what: "resource id must be 1 to 1024 bytes",
                });
            }
            if keys.len() > limits.max_keys_per_branch {
                return Err(Error::LimitExceeded {
                    what: "lock keys per branch",
                    limit: limits.max_keys_per_branch,
                });
            }
            if g.branches.len() >= limits.max_branches {
                return Err(Error::LimitExceeded {
                    what: "branches per transaction",
                    limit: limits.max_branches,
                });
            }
            let branch_id = g.branches.len() as u64 + 1;
            let branch = Branch {
                branch_id,
                resource: resource.clone(),
                kind: *kind,
                keys: keys.clone(),
                status: BranchStatus::Registered,
            };
            Ok((
                vec![Record::Branch {
                    xid: xid.clone(),
                    branch,
                }],
                Reply::Registered { branch_id },
            ))
        }
        Command::Report {
            branch_id,
            status: st,
            ..
        } => {
            if !matches!(
                st,
                BranchStatus::PhaseOneDone | BranchStatus::PhaseOneFailed
            ) {
                return Err(Error::InvalidArgument {
                    what: "a phase-1 report is PhaseOneDone or PhaseOneFailed",
                });
            }
            let b = g.branch(*branch_id).ok_or(Error::UnknownBranch {
                xid: xid.clone(),
                branch_id: *branch_id,
            })?;
            if b.status == *st {
                return Ok((vec![], Reply::Ok));
            }
            if b.status != BranchStatus::Registered {
                return Err(invalid(g, "report phase 1 of a branch already past it"));
            }
            Ok((
                vec![Record::BranchStatus {
                    xid: xid.clone(),
                    branch_id: *branch_id,
                    status: *st,
                }],
                Reply::Ok,
            ))
        }
        Command::Commit { .. } => {
            if g.status != GlobalStatus::Begin {
                return Err(invalid(g, "commit"));
            }
            if now >= g.deadline {
                return Err(Error::Expired { xid: xid.clone() });
            }
            let next = if g.branches.is_empty() {
                GlobalStatus::Committed
            } else {
                GlobalStatus::AsyncCommitting
            };
            // Seata answers Committed once the decision is durable; cleanup is asynchronous.
            Ok((
                vec![status(xid, next, now)],
                Reply::Status(GlobalStatus::Committed),
            ))
        }
        Command::Rollback { .. } => {
            let next = match g.status {
                GlobalStatus::Begin => GlobalStatus::Rollbacking,
                GlobalStatus::RollbackFailed => GlobalStatus::RollbackRetrying,
                GlobalStatus::TimeoutRollbackFailed => GlobalStatus::TimeoutRollbackRetrying,
                _ => return Err(invalid(g, "roll back")),
            };
            Ok(start_rollback(g, next, now))
        }
        Command::Timeout { .. } => {
            if g.status != GlobalStatus::Begin || now < g.deadline {
                return Ok((vec![], Reply::Status(g.status)));
            }
            Ok(start_rollback(g, GlobalStatus::TimeoutRollbacking, now))
        }
        Command::Phase2Result {
            branch_id, outcome, ..
        } => phase2_result(g, *branch_id, *outcome, now),
        Command::Forget { .. } => {
            if !g.status.is_finished() {
                return Err(invalid(g, "forget"));
            }
            Ok((vec![Record::Forget { xid: xid.clone() }], Reply::Ok))
        }
    }
}

/// Enters a rollback status. Failed branches get another go; with nothing left
/// to undo the transaction ends at once.
fn start_rollback(g: &Global, next: GlobalStatus, now: Millis) -> (Vec<Record>, Reply) {
    let xid = &g.xid;
    let mut recs: Vec<Record> = g
        .branches
        .iter()
        .filter(|b| b.status == BranchStatus::PhaseTwoRollbackFailed)
        .map(|b| Record::BranchStatus {
            xid: xid.clone(),
            branch_id: b.branch_id,
            status: BranchStatus::Registered,
        })
        .collect();
    let all_undone = g
        .branches
        .iter()
        .all(|b| b.status == BranchStatus::PhaseTwoRollbacked);
    let next = if all_undone { rolled_back(next) } else { next };
    recs.push(status(xid, next, now));
    (recs, Reply::Status(next))
}

fn rolled_back(s: GlobalStatus) -> GlobalStatus {
    if s.is_timeout() {
        GlobalStatus::TimeoutRollbacked
    } else {
        GlobalStatus::Rollbacked
    }
}

fn phase2_result(
    g: &Global,
    branch_id: u64,
    outcome: Phase2Outcome,
    now: Millis,
) -> Result<(Vec<Record>, Reply), Error> {
    let xid = &g.xid;
    let b = g.branch(branch_id).ok_or(Error::UnknownBranch {
        xid: xid.clone(),
        branch_id,
    })?;
    let set = |st| Record::BranchStatus {
        xid: xid.clone(),
        branch_id,
        status: st,
    };
    let done = (vec![], Reply::Status(g.status));
    // At-least-once delivery: answers for work no longer owed are dropped.
    if !g.pending_work().iter().any(|w| w.branch_id == branch_id) {
        return Ok(done);
    }
    let mut recs = Vec::new();
    if g.status.is_committing() {
        match outcome {
            Phase2Outcome::Committed => {
                recs.push(set(BranchStatus::PhaseTwoCommitted));
                let rest = g
                    .branches
                    .iter()
                    .filter(|o| o.branch_id != branch_id)
                    .all(|o| o.status == BranchStatus::PhaseTwoCommitted);
                if rest {
                    recs.push(status(xid, GlobalStatus::Committed, now));
                }
            }
            Phase2Outcome::Retry => {}
            Phase2Outcome::Rollbacked | Phase2Outcome::RollbackFailed => {
                return Err(Error::InvalidArgument {
                    what: "a commit work item was answered with a rollback outcome",
                });
            }
        }
    } else {
        let timeout = g.status.is_timeout();
        match outcome {
            Phase2Outcome::Rollbacked => {
                recs.push(set(BranchStatus::PhaseTwoRollbacked));
                let rest = g
                    .branches
                    .iter()
                    .filter(|o| o.branch_id != branch_id)
                    .all(|o| o.status == BranchStatus::PhaseTwoRollbacked);
                if rest {
                    recs.push(status(xid, rolled_back(g.status), now));
                }
            }
            Phase2Outcome::RollbackFailed => {
                recs.push(set(BranchStatus::PhaseTwoRollbackFailed));
                let failed = if timeout {
                    GlobalStatus::TimeoutRollbackFailed
                } else {
                    GlobalStatus::RollbackFailed
                };
                recs.push(status(xid, failed, now));
            }
            Phase2Outcome::Retry => {
                let retrying = if timeout {
                    GlobalStatus::TimeoutRollbackRetrying
                } else {
                    GlobalStatus::RollbackRetrying
                };
                if g.status != retrying {
                    recs.push(status(xid, retrying, now));
                }
            }
            Phase2Outcome::Committed => {
                return Err(Error::InvalidArgument {
                    what: "a rollback work item was answered with Committed",
                });
            }
        }
    }
    let _ = b;
    let mut after = g.clone();
    recs.iter().for_each(|r| after.apply(r));
    Ok((recs, Reply::Status(after.status)))
}
