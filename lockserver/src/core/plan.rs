//! The per-transaction rules: [`plan`] turns a command and the transaction's current
//! state into the records to write and the reply.
//!
//! Owns: every status transition of a global transaction and its branches. Never does
//! I/O, never reads a clock, never touches the lock table (the caller checks locks).
//! Invariant: on `Err` there are no records, so state stays unchanged; both stores
//! call this same function.

use super::clock::Millis;
use super::txn::{
    Branch, BranchKind, BranchStatus, Command, Global, GlobalStatus, Limits, Phase2Outcome, Record,
    Reply, Xid,
};
use crate::error::Error;

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
            // Late phase-2 answers for a forgotten transaction are harmless duplicates,
            // and a registration withdrawn from it can no longer arrive.
            Command::Phase2Result { .. }
            | Command::Timeout { .. }
            | Command::Forget { .. }
            | Command::Withdraw { .. } => Ok((vec![], Reply::Ok)),
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
            token,
            ..
        } => {
            if g.status != GlobalStatus::Begin {
                return Err(invalid(g, "register a branch"));
            }
            if now >= g.deadline {
                return Err(Error::Expired { xid: xid.clone() });
            }
            if let Some(b) = token.and_then(|t| g.branch_by_token(t)) {
                // The same registration again: the answer is the branch it made. A
                // withdrawn one (or one already past phase 1) is spent.
                let same = b.resource == *resource && b.kind == *kind && b.keys == *keys;
                if b.status != BranchStatus::Registered || !same {
                    return Err(Error::InvalidArgument {
                        what: "a registration under a token already withdrawn or used",
                    });
                }
                return Ok((
                    vec![],
                    Reply::Registered {
                        branch_id: b.branch_id,
                    },
                ));
            }
            if !resource_id_fits(resource) {
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
                token: *token,
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
            report(g, *branch_id, *st, now)
        }
        Command::Withdraw {
            resource,
            kind,
            token,
            ..
        } => {
            if let Some(b) = g.branch_by_token(*token) {
                // Past phase 1 already: phase 2 found nothing of it to finish.
                if b.status != BranchStatus::Registered {
                    return Ok((vec![], Reply::Ok));
                }
                return report(g, b.branch_id, BranchStatus::PhaseOneFailed, now);
            }
            // The registration has not arrived (it may never): a failed branch in its
            // name refuses it should it come. None can once the transaction is decided,
            // nor past the limits that would refuse it.
            let refused_anyway = g.status != GlobalStatus::Begin
                || g.branches.len() >= limits.max_branches
                || !resource_id_fits(resource);
            if refused_anyway {
                return Ok((vec![], Reply::Ok));
            }
            let branch = Branch {
                branch_id: g.branches.len() as u64 + 1,
                resource: resource.clone(),
                kind: *kind,
                keys: vec![],
                status: BranchStatus::PhaseOneFailed,
                token: Some(*token),
            };
            Ok((
                vec![Record::Branch {
                    xid: xid.clone(),
                    branch,
                }],
                Reply::Ok,
            ))
        }
        Command::Commit { .. } => {
            match g.status {
                GlobalStatus::Begin => {}
                // A retry (the first answer was lost): the decision stands, so answer it
                // again, as the first commit did and as Seata's TC does, writing nothing.
                GlobalStatus::AsyncCommitting | GlobalStatus::Committed => {
                    return Ok((vec![], Reply::Status(GlobalStatus::Committed)));
                }
                _ => return Err(invalid(g, "commit")),
            }
            if now >= g.deadline {
                return Err(Error::Expired { xid: xid.clone() });
            }
            // An XA branch registers at its start and reports once prepared: until then
            // its PREPARE may still fail, or never come (its client went away), and a
            // commit would leave the other branches committed without it.
            if let Some(b) = g
                .branches
                .iter()
                .find(|b| b.kind == BranchKind::XA && b.status == BranchStatus::Registered)
            {
                return Err(Error::PhaseOnePending {
                    xid: xid.clone(),
                    branch_id: b.branch_id,
                });
            }
            let next = if !g.commit_owed(None) {
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
            use GlobalStatus::*;
            let next = match g.status {
                Begin => Rollbacking,
                // An operator's retry after a dirty write: phase 2 runs again.
                RollbackFailed => RollbackRetrying,
                TimeoutRollbackFailed => TimeoutRollbackRetrying,
                // A retry (the first answer was lost) or a rollback of a transaction the
                // timeout is already rolling back: the decision stands, answer where it is.
                Rollbacking
                | RollbackRetrying
                | TimeoutRollbacking
                | TimeoutRollbackRetrying
                | Rollbacked
                | TimeoutRollbacked => return Ok((vec![], Reply::Status(g.status))),
                AsyncCommitting | Committed => return Err(invalid(g, "roll back")),
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

/// Whether a registration's resource id is of a length the lockserver takes: 1 to
/// 1024 bytes.
fn resource_id_fits(resource: &str) -> bool {
    (1..=1024).contains(&resource.len())
}

/// A branch's phase-1 result: `PhaseOneDone` or `PhaseOneFailed`.
fn report(
    g: &Global,
    branch_id: u64,
    st: BranchStatus,
    now: Millis,
) -> Result<(Vec<Record>, Reply), Error> {
    let xid = &g.xid;
    let b = g.branch(branch_id).ok_or(Error::UnknownBranch {
        xid: xid.clone(),
        branch_id,
    })?;
    if b.status == st {
        return Ok((vec![], Reply::Ok));
    }
    if b.status != BranchStatus::Registered {
        return Err(invalid(g, "report phase 1 of a branch already past it"));
    }
    let mut recs = vec![Record::BranchStatus {
        xid: xid.clone(),
        branch_id,
        status: st,
    }];
    // A failed branch owes no phase 2: it may have been the last one that did, of a
    // committing transaction or of one rolling back (a report or a withdrawal that
    // comes after the decision).
    if g.status.is_committing() && !st.owes_commit() && !g.commit_owed(Some(branch_id)) {
        recs.push(status(xid, GlobalStatus::Committed, now));
    }
    if g.status.is_rolling_back() && !st.owes_rollback() && !g.rollback_owed(Some(branch_id)) {
        recs.push(status(xid, rolled_back(g.status), now));
    }
    Ok((recs, Reply::Ok))
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
    let next = if g.rollback_owed(None) {
        next
    } else {
        rolled_back(next)
    };
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
    g.branch(branch_id).ok_or(Error::UnknownBranch {
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
    let mut owed = false;
    g.for_each_pending(|b, _| owed |= b.branch_id == branch_id);
    if !owed {
        return Ok(done);
    }
    let mut recs = Vec::new();
    if g.status.is_committing() {
        match outcome {
            Phase2Outcome::Committed => {
                recs.push(set(BranchStatus::PhaseTwoCommitted));
                if !g.commit_owed(Some(branch_id)) {
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
                if !g.rollback_owed(Some(branch_id)) {
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
    let mut after = g.clone();
    recs.iter().for_each(|r| after.apply(r));
    Ok((recs, Reply::Status(after.status)))
}
