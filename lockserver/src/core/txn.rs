//! Global transactions and their branches: statuses, commands, replies and the
//! durable [`Record`]s. The rules that turn a command into records are in `core::plan`.
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

pub use super::plan::plan;

/// Longest xid accepted, in bytes.
pub const MAX_XID_BYTES: usize = 128;

/// A global transaction id: `<node>-<seq>`, where node is 16 random hex digits
/// chosen at process start, so ids are unique across restarts and processes.
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct Xid(Arc<str>);

impl std::hash::Hash for Xid {
    /// The text's hash, as a derived impl would give: equal text, equal hash.
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (*self.0).hash(h)
    }
}

impl PartialEq for Xid {
    /// Clones of one xid share their text: comparing the pointers first saves a
    /// memory load per hash-table probe on the hot path (same result as comparing text).
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

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
    pub(crate) fn is_committing(self) -> bool {
        self == GlobalStatus::AsyncCommitting
    }
    pub(crate) fn is_timeout(self) -> bool {
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

impl BranchStatus {
    /// Whether a committing transaction still owes this branch its phase-2 commit. A
    /// branch whose local transaction failed left nothing behind to clean up.
    pub fn owes_commit(self) -> bool {
        !matches!(
            self,
            BranchStatus::PhaseTwoCommitted | BranchStatus::PhaseOneFailed
        )
    }

    /// Whether a rolling-back transaction still owes this branch its phase-2 rollback.
    /// A branch whose local transaction failed committed nothing, nor ever will (its
    /// proxy reports the failure only once the local transaction is over): there is
    /// nothing to undo, and no late commit for a GlobalFinished marker to stop. Its
    /// database may not even take the marker (no undo_log there).
    pub fn owes_rollback(self) -> bool {
        !matches!(
            self,
            BranchStatus::PhaseTwoRollbacked | BranchStatus::PhaseOneFailed
        )
    }
}

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
    /// The caller's name for the registration that made it, when it gave one: what a
    /// caller that never heard the answer withdraws it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
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
        /// The caller's name for this registration (see [`Command::Withdraw`]).
        token: Option<u64>,
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
    /// A caller gives up on its registration named `token`, whose answer it never
    /// heard: the branch, registered or not, did no work and reports phase 1 failed. A
    /// registration under `token` arriving later is refused.
    Withdraw {
        /// Transaction.
        xid: Xid,
        /// Resource id of the registration.
        resource: String,
        /// AT or XA.
        kind: BranchKind,
        /// The registration's token.
        token: u64,
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
            | Command::Withdraw { xid, .. }
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
            max_finished: 10_000,
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
    /// The branch registered under `token`.
    pub fn branch_by_token(&self, token: u64) -> Option<&Branch> {
        self.branches.iter().find(|b| b.token == Some(token))
    }
    fn branch_mut(&mut self, id: u64) -> Option<&mut Branch> {
        self.branches.iter_mut().find(|b| b.branch_id == id)
    }

    /// Every lock key of every branch.
    pub fn keys(&self) -> impl Iterator<Item = &LockKey> {
        self.branches.iter().flat_map(|b| b.keys.iter())
    }

    /// Whether a branch, other than `except`, is still owed its phase-2 commit
    /// (`BranchStatus::owes_commit`).
    pub fn commit_owed(&self, except: Option<u64>) -> bool {
        self.branches
            .iter()
            .any(|b| Some(b.branch_id) != except && b.status.owes_commit())
    }

    /// Whether a branch, other than `except`, is still owed its phase-2 rollback
    /// (`BranchStatus::owes_rollback`).
    pub fn rollback_owed(&self, except: Option<u64>) -> bool {
        self.branches
            .iter()
            .any(|b| Some(b.branch_id) != except && b.status.owes_rollback())
    }

    /// The phase-2 work still owed. Commit goes to every branch at once; rollback
    /// goes one branch at a time in reverse registration order, and stops at a
    /// branch that failed (dirty write) until an operator rolls back again.
    pub fn pending_work(&self) -> Vec<Work> {
        let mut out = Vec::new();
        self.for_each_pending(|b, commit| {
            out.push(Work {
                xid: self.xid.clone(),
                branch_id: b.branch_id,
                resource: b.resource.clone(),
                kind: b.kind,
                commit,
            })
        });
        out
    }

    /// Calls `f` with each branch [`Global::pending_work`] would list, and whether
    /// it is a commit, without building the list (every command asks).
    pub fn for_each_pending(&self, mut f: impl FnMut(&Branch, bool)) {
        if self.status.is_committing() {
            // Nothing owed yet still committing: a state written before PhaseOneFailed
            // branches owed nothing. Their work (a cleanup that finds nothing) ends it.
            let legacy = !self.commit_owed(None);
            self.branches
                .iter()
                .filter(|b| {
                    b.status.owes_commit()
                        || (legacy && b.status != BranchStatus::PhaseTwoCommitted)
                })
                .for_each(|b| f(b, true));
        } else if self.status.is_rolling_back()
            && !matches!(
                self.status,
                GlobalStatus::RollbackFailed | GlobalStatus::TimeoutRollbackFailed
            )
            && let Some(b) = self
                .branches
                .iter()
                .rev()
                .find(|b| b.status.owes_rollback())
        {
            f(b, false);
        }
    }
}
