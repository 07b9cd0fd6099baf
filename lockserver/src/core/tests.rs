//! Core state machine tests: no runtime, time injected as a value.

use super::locks::LockKey;
use super::txn::*;
use super::*;

const T0: Millis = 1_000_000;

fn x(s: &str) -> Xid {
    Xid::parse(s).unwrap()
}
fn k(i: u32) -> LockKey {
    LockKey::new("pg://h/db", "public.t", [i.to_string()])
}
fn begin(c: &mut Core, xid: &str, timeout: u64) {
    c.apply(
        &Command::Begin {
            xid: x(xid),
            timeout_ms: timeout,
        },
        T0,
    )
    .unwrap();
}
fn reg(c: &mut Core, xid: &str, keys: &[u32], now: Millis) -> Result<u64, Error> {
    let cmd = Command::Register {
        xid: x(xid),
        resource: "pg://h/db".into(),
        kind: BranchKind::AT,
        keys: keys.iter().map(|i| k(*i)).collect(),
        token: None,
    };
    match c.apply(&cmd, now)?.reply {
        Reply::Registered { branch_id } => Ok(branch_id),
        r => panic!("unexpected {r:?}"),
    }
}
fn status(c: &Core, xid: &str) -> GlobalStatus {
    c.global(&x(xid)).unwrap().status
}
fn p2(c: &mut Core, xid: &str, b: u64, o: Phase2Outcome) -> Output {
    c.apply(
        &Command::Phase2Result {
            xid: x(xid),
            branch_id: b,
            outcome: o,
        },
        T0 + 10,
    )
    .unwrap()
}
/// Replaying every record returned so far yields the same state.
fn replayed(log: &[Record]) -> Core {
    let mut c = Core::new(Limits::default());
    log.iter().for_each(|r| c.replay(r));
    c
}

#[test]
fn conflict_names_holder_and_reentrancy_works() {
    let mut c = Core::default();
    begin(&mut c, "a", 1000);
    begin(&mut c, "b", 1000);
    assert_eq!(reg(&mut c, "a", &[1, 2], T0).unwrap(), 1);
    assert_eq!(
        reg(&mut c, "a", &[2, 3], T0).unwrap(),
        2,
        "reentrant for the same xid"
    );
    let e = reg(&mut c, "b", &[9, 3], T0).unwrap_err();
    assert!(
        matches!(&e, Error::LockConflict { holder, key, holder_rolling_back: false } if *holder == x("a") && *key == k(3)),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert_eq!(c.locks().holder(&k(9)), None, "all or nothing");
    assert!(
        c.global(&x("b")).unwrap().branches.is_empty(),
        "state unchanged"
    );
}

#[test]
fn commit_releases_locks_at_the_decision_then_cleans_up() {
    let mut c = Core::default();
    begin(&mut c, "a", 1000);
    reg(&mut c, "a", &[1], T0).unwrap();
    reg(&mut c, "a", &[2], T0).unwrap();
    let out = c.apply(&Command::Commit { xid: x("a") }, T0 + 1).unwrap();
    assert_eq!(out.reply, Reply::Status(GlobalStatus::Committed));
    assert!(out.effects.contains(&Effect::LocksReleased { xid: x("a") }));
    assert!(out.effects.contains(&Effect::Phase2Due { xid: x("a") }));
    assert_eq!(status(&c, "a"), GlobalStatus::AsyncCommitting);
    assert!(c.locks().is_empty());
    let work = c.global(&x("a")).unwrap().pending_work();
    assert_eq!(work.len(), 2);
    assert!(work.iter().all(|w| w.commit));
    p2(&mut c, "a", 1, Phase2Outcome::Committed);
    p2(&mut c, "a", 1, Phase2Outcome::Committed); // duplicate delivery is harmless
    assert_eq!(status(&c, "a"), GlobalStatus::AsyncCommitting);
    let out = p2(&mut c, "a", 2, Phase2Outcome::Committed);
    assert!(out.effects.contains(&Effect::Ended {
        xid: x("a"),
        status: GlobalStatus::Committed
    }));
    assert_eq!(c.active(), 0);
}

fn failed(c: &mut Core, xid: &str, b: u64) -> Output {
    c.apply(
        &Command::Report {
            xid: x(xid),
            branch_id: b,
            status: BranchStatus::PhaseOneFailed,
        },
        T0 + 5,
    )
    .unwrap()
}

#[test]
fn a_commit_owes_no_phase_two_to_a_branch_whose_local_commit_failed() {
    // Reported before the decision: only the other branch gets work.
    let mut c = Core::default();
    begin(&mut c, "a", 1000);
    reg(&mut c, "a", &[1], T0).unwrap();
    reg(&mut c, "a", &[2], T0).unwrap();
    failed(&mut c, "a", 1);
    c.apply(&Command::Commit { xid: x("a") }, T0 + 6).unwrap();
    let work = c.global(&x("a")).unwrap().pending_work();
    assert_eq!(work.iter().map(|w| w.branch_id).collect::<Vec<_>>(), [2]);
    p2(&mut c, "a", 2, Phase2Outcome::Committed);
    assert_eq!(c.active(), 0, "committed once branch 2 is clean");

    // Every branch failed: committed at the decision.
    begin(&mut c, "b", 1000);
    reg(&mut c, "b", &[3], T0).unwrap();
    failed(&mut c, "b", 1);
    let out = c.apply(&Command::Commit { xid: x("b") }, T0 + 6).unwrap();
    assert!(out.effects.contains(&Effect::Ended {
        xid: x("b"),
        status: GlobalStatus::Committed
    }));

    // Reported after the decision, by the last branch still owed: that ends it.
    begin(&mut c, "c", 1000);
    reg(&mut c, "c", &[4], T0).unwrap();
    reg(&mut c, "c", &[5], T0).unwrap();
    c.apply(&Command::Commit { xid: x("c") }, T0 + 6).unwrap();
    p2(&mut c, "c", 2, Phase2Outcome::Committed);
    assert_eq!(status(&c, "c"), GlobalStatus::AsyncCommitting);
    let out = failed(&mut c, "c", 1);
    assert!(out.effects.contains(&Effect::Ended {
        xid: x("c"),
        status: GlobalStatus::Committed
    }));
    assert_eq!(c.active(), 0);

    // A log written before: committing, with only a failed branch left. Its work is
    // still handed out, and its answer ends the transaction.
    let mut c = replayed(&[
        Record::Begin {
            xid: x("d"),
            at: T0,
            deadline: T0 + 1000,
        },
        Record::Branch {
            xid: x("d"),
            branch: Branch {
                branch_id: 1,
                resource: "pg://h/db".into(),
                kind: BranchKind::AT,
                keys: vec![k(6)],
                status: BranchStatus::Registered,
                token: None,
            },
        },
        Record::BranchStatus {
            xid: x("d"),
            branch_id: 1,
            status: BranchStatus::PhaseOneFailed,
        },
        Record::Status {
            xid: x("d"),
            status: GlobalStatus::AsyncCommitting,
            at: T0 + 6,
        },
    ]);
    let work = c.global(&x("d")).unwrap().pending_work();
    assert_eq!(work.iter().map(|w| w.branch_id).collect::<Vec<_>>(), [1]);
    p2(&mut c, "d", 1, Phase2Outcome::Committed);
    assert_eq!(c.active(), 0);
}

#[test]
fn a_rollback_owes_no_phase_two_to_a_branch_whose_local_commit_failed() {
    // The failed branch is passed over: only branch 1 is undone, and that ends it.
    let mut c = Core::default();
    begin(&mut c, "a", 1000);
    reg(&mut c, "a", &[1], T0).unwrap();
    reg(&mut c, "a", &[2], T0).unwrap();
    failed(&mut c, "a", 2);
    c.apply(&Command::Rollback { xid: x("a") }, T0 + 6).unwrap();
    let work = c.global(&x("a")).unwrap().pending_work();
    assert_eq!(work.iter().map(|w| w.branch_id).collect::<Vec<_>>(), [1]);
    let out = p2(&mut c, "a", 1, Phase2Outcome::Rollbacked);
    assert!(out.effects.contains(&Effect::Ended {
        xid: x("a"),
        status: GlobalStatus::Rollbacked
    }));

    // Every branch failed: rolled back at the decision, its locks released.
    begin(&mut c, "b", 1000);
    reg(&mut c, "b", &[3], T0).unwrap();
    failed(&mut c, "b", 1);
    let out = c.apply(&Command::Rollback { xid: x("b") }, T0 + 6).unwrap();
    assert!(out.effects.contains(&Effect::Ended {
        xid: x("b"),
        status: GlobalStatus::Rollbacked
    }));
    assert_eq!(c.active(), 0);
}

#[test]
fn rollback_goes_in_reverse_order_and_keeps_locks_until_all_undone() {
    let mut c = Core::default();
    begin(&mut c, "a", 1000);
    begin(&mut c, "b", 1000);
    for i in 1..=3 {
        reg(&mut c, "a", &[i], T0).unwrap();
    }
    let out = c.apply(&Command::Rollback { xid: x("a") }, T0).unwrap();
    assert_eq!(out.reply, Reply::Status(GlobalStatus::Rollbacking));
    let e = reg(&mut c, "b", &[1], T0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LockConflict {
                holder_rolling_back: true,
                ..
            }
        ),
        "waiters fail fast"
    );
    assert!(!e.is_retryable());
    for expect in [3, 2, 1] {
        let w = c.global(&x("a")).unwrap().pending_work();
        assert_eq!(
            w.iter().map(|w| w.branch_id).collect::<Vec<_>>(),
            vec![expect]
        );
        assert!(!w[0].commit);
        assert_eq!(
            c.locks().len(),
            3,
            "locks held until every branch is undone"
        );
        p2(&mut c, "a", expect, Phase2Outcome::Rollbacked);
    }
    assert_eq!(status(&c, "a"), GlobalStatus::Rollbacked);
    assert!(c.locks().is_empty());
    reg(&mut c, "b", &[1], T0).unwrap();
}

#[test]
fn retry_then_dirty_write_keeps_locks_and_operator_can_retry() {
    let mut c = Core::default();
    begin(&mut c, "a", 1000);
    reg(&mut c, "a", &[1], T0).unwrap();
    reg(&mut c, "a", &[2], T0).unwrap();
    c.apply(&Command::Rollback { xid: x("a") }, T0).unwrap();
    p2(&mut c, "a", 2, Phase2Outcome::Retry);
    assert_eq!(status(&c, "a"), GlobalStatus::RollbackRetrying);
    p2(&mut c, "a", 2, Phase2Outcome::Rollbacked);
    let out = p2(&mut c, "a", 1, Phase2Outcome::RollbackFailed);
    assert!(out.effects.contains(&Effect::Ended {
        xid: x("a"),
        status: GlobalStatus::RollbackFailed
    }));
    assert_eq!(status(&c, "a"), GlobalStatus::RollbackFailed);
    assert_eq!(c.locks().len(), 2, "a dirty write keeps the locks");
    assert!(c.global(&x("a")).unwrap().pending_work().is_empty());
    assert_eq!(
        c.global(&x("a")).unwrap().branch(1).unwrap().status,
        BranchStatus::PhaseTwoRollbackFailed
    );
    // An operator fixed the row and rolls back again.
    c.apply(&Command::Rollback { xid: x("a") }, T0).unwrap();
    assert_eq!(status(&c, "a"), GlobalStatus::RollbackRetrying);
    p2(&mut c, "a", 1, Phase2Outcome::Rollbacked);
    assert_eq!(status(&c, "a"), GlobalStatus::Rollbacked);
    assert!(c.locks().is_empty());
}

#[test]
fn timeout_rolls_back_and_commit_after_it_is_refused() {
    let mut c = Core::default();
    begin(&mut c, "a", 100);
    begin(&mut c, "b", 500);
    reg(&mut c, "a", &[1], T0).unwrap();
    assert!(c.due(T0 + 99, 60_000, 10).is_empty());
    assert!(matches!(
        reg(&mut c, "a", &[2], T0 + 100),
        Err(Error::Expired { .. })
    ));
    assert!(matches!(
        c.apply(&Command::Commit { xid: x("a") }, T0 + 100),
        Err(Error::Expired { .. })
    ));
    let due = c.due(T0 + 100, 60_000, 10);
    assert_eq!(due, vec![Command::Timeout { xid: x("a") }]);
    c.apply(&due[0], T0 + 100).unwrap();
    assert_eq!(status(&c, "a"), GlobalStatus::TimeoutRollbacking);
    assert_eq!(status(&c, "b"), GlobalStatus::Begin);
    let e = c
        .apply(&Command::Commit { xid: x("a") }, T0 + 101)
        .unwrap_err();
    assert!(matches!(
        e,
        Error::InvalidState {
            status: GlobalStatus::TimeoutRollbacking,
            ..
        }
    ));
    assert!(e.is_client_fault());
    p2(&mut c, "a", 1, Phase2Outcome::Rollbacked);
    assert_eq!(status(&c, "a"), GlobalStatus::TimeoutRollbacked);
    // A timeout of an empty transaction ends at once.
    c.apply(&Command::Timeout { xid: x("b") }, T0 + 500)
        .unwrap();
    assert_eq!(status(&c, "b"), GlobalStatus::TimeoutRollbacked);
}

#[test]
fn bad_input_leaves_state_unchanged() {
    let mut c = Core::default();
    begin(&mut c, "a", 1000);
    reg(&mut c, "a", &[1], T0).unwrap();
    let before = format!("{:?}", c.global(&x("a")));
    let bad = [
        Command::Begin {
            xid: x("a"),
            timeout_ms: 10,
        },
        Command::Begin {
            xid: x("z"),
            timeout_ms: 0,
        },
        Command::Commit { xid: x("nope") },
        Command::Report {
            xid: x("a"),
            branch_id: 9,
            status: BranchStatus::PhaseOneDone,
        },
        Command::Report {
            xid: x("a"),
            branch_id: 1,
            status: BranchStatus::PhaseTwoCommitted,
        },
        Command::Register {
            xid: x("a"),
            resource: String::new(),
            kind: BranchKind::AT,
            keys: vec![],
            token: None,
        },
        Command::Phase2Result {
            xid: x("a"),
            branch_id: 1,
            outcome: Phase2Outcome::Committed,
        },
        Command::Forget { xid: x("a") },
    ];
    for cmd in bad {
        let r = c.apply(&cmd, T0);
        assert!(
            r.as_ref().map(|o| o.records.is_empty()).unwrap_or(true),
            "{cmd:?} changed state: {r:?}"
        );
    }
    assert_eq!(format!("{:?}", c.global(&x("a"))), before);
    c.apply(&Command::Commit { xid: x("a") }, T0).unwrap();
    let late = reg(&mut c, "a", &[5], T0).unwrap_err();
    assert!(matches!(late, Error::InvalidState { .. }));
    assert!(matches!(
        c.apply(&Command::Rollback { xid: x("a") }, T0),
        Err(Error::InvalidState { .. })
    ));
}

/// Runs `cmd` expecting the current status back and nothing written or done.
fn answers_unchanged(c: &mut Core, cmd: Command, want: GlobalStatus) {
    let before = format!("{:?} {:?}", c.global(cmd.xid()), c.locks());
    let out = c.apply(&cmd, T0 + 20).unwrap();
    assert_eq!(out.reply, Reply::Status(want), "{cmd:?}");
    assert!(out.records.is_empty(), "{cmd:?} wrote {:?}", out.records);
    assert!(out.effects.is_empty(), "{cmd:?} did {:?}", out.effects);
    let after = format!("{:?} {:?}", c.global(cmd.xid()), c.locks());
    assert_eq!(after, before, "{cmd:?} changed state");
}

fn refused(c: &mut Core, cmd: Command, status: GlobalStatus) {
    let e = c.apply(&cmd, T0 + 20).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidState { status: s, .. } if *s == status),
        "{cmd:?}: {e:?}"
    );
    assert!(e.is_client_fault());
}

#[test]
fn a_repeated_decision_answers_the_status_and_the_other_decision_is_refused() {
    use GlobalStatus::*;
    let commit = |s: &str| Command::Commit { xid: x(s) };
    let rollback = |s: &str| Command::Rollback { xid: x(s) };
    let mut c = Core::default();
    // Commit: the retry answers what the first commit answered (Seata's TC too).
    begin(&mut c, "a", 1000);
    reg(&mut c, "a", &[1], T0).unwrap();
    let first = c.apply(&commit("a"), T0).unwrap();
    assert_eq!(first.reply, Reply::Status(Committed));
    assert_eq!(status(&c, "a"), AsyncCommitting);
    answers_unchanged(&mut c, commit("a"), Committed);
    refused(&mut c, rollback("a"), AsyncCommitting);
    p2(&mut c, "a", 1, Phase2Outcome::Committed);
    assert_eq!(status(&c, "a"), Committed);
    answers_unchanged(&mut c, commit("a"), Committed);
    refused(&mut c, rollback("a"), Committed);
    // Rollback: every retry answers where the rollback is, until it is done.
    begin(&mut c, "b", 1000);
    reg(&mut c, "b", &[2], T0).unwrap();
    reg(&mut c, "b", &[3], T0).unwrap();
    let first = c.apply(&rollback("b"), T0).unwrap();
    assert_eq!(first.reply, Reply::Status(Rollbacking));
    answers_unchanged(&mut c, rollback("b"), Rollbacking);
    refused(&mut c, commit("b"), Rollbacking);
    p2(&mut c, "b", 2, Phase2Outcome::Retry);
    answers_unchanged(&mut c, rollback("b"), RollbackRetrying);
    refused(&mut c, commit("b"), RollbackRetrying);
    p2(&mut c, "b", 2, Phase2Outcome::Rollbacked);
    p2(&mut c, "b", 1, Phase2Outcome::Rollbacked);
    assert_eq!(status(&c, "b"), Rollbacked);
    answers_unchanged(&mut c, rollback("b"), Rollbacked);
    refused(&mut c, commit("b"), Rollbacked);
    // A transaction the timeout rolls back: rollback answers, commit is refused.
    begin(&mut c, "t", 100);
    reg(&mut c, "t", &[4], T0).unwrap();
    c.apply(&Command::Timeout { xid: x("t") }, T0 + 100)
        .unwrap();
    answers_unchanged(&mut c, rollback("t"), TimeoutRollbacking);
    refused(&mut c, commit("t"), TimeoutRollbacking);
    p2(&mut c, "t", 1, Phase2Outcome::Retry);
    answers_unchanged(&mut c, rollback("t"), TimeoutRollbackRetrying);
    p2(&mut c, "t", 1, Phase2Outcome::Rollbacked);
    answers_unchanged(&mut c, rollback("t"), TimeoutRollbacked);
    refused(&mut c, commit("t"), TimeoutRollbacked);
    // After a dirty write, a rollback is an operator's retry: phase 2 runs again.
    begin(&mut c, "f", 1000);
    reg(&mut c, "f", &[5], T0).unwrap();
    c.apply(&rollback("f"), T0).unwrap();
    p2(&mut c, "f", 1, Phase2Outcome::RollbackFailed);
    refused(&mut c, commit("f"), RollbackFailed);
    let again = c.apply(&rollback("f"), T0 + 20).unwrap();
    assert_eq!(again.reply, Reply::Status(RollbackRetrying));
    assert!(!again.records.is_empty());
    assert_eq!(again.effects, vec![Effect::Phase2Due { xid: x("f") }]);
}

#[test]
fn limits_are_enforced() {
    let mut c = Core::new(Limits {
        max_branches: 2,
        max_keys_per_branch: 3,
        max_timeout_ms: 1000,
        ..Limits::default()
    });
    assert!(matches!(
        c.apply(
            &Command::Begin {
                xid: x("a"),
                timeout_ms: 1001
            },
            T0
        ),
        Err(Error::InvalidArgument { .. })
    ));
    begin(&mut c, "a", 1000);
    assert!(matches!(
        reg(&mut c, "a", &[1, 2, 3, 4], T0),
        Err(Error::LimitExceeded { .. })
    ));
    reg(&mut c, "a", &[1], T0).unwrap();
    reg(&mut c, "a", &[2], T0).unwrap();
    assert!(matches!(
        reg(&mut c, "a", &[3], T0),
        Err(Error::LimitExceeded { .. })
    ));
}

#[test]
fn replay_and_snapshot_reproduce_state() {
    let mut c = Core::default();
    let mut log = Vec::new();
    let mut run = |c: &mut Core, cmd: Command, now| log.extend(c.apply(&cmd, now).unwrap().records);
    run(
        &mut c,
        Command::Begin {
            xid: x("a"),
            timeout_ms: 1000,
        },
        T0,
    );
    run(
        &mut c,
        Command::Begin {
            xid: x("b"),
            timeout_ms: 1000,
        },
        T0,
    );
    run(
        &mut c,
        Command::Begin {
            xid: x("c"),
            timeout_ms: 10,
        },
        T0,
    );
    for (xid, key) in [("a", 1), ("a", 2), ("b", 3), ("c", 4)] {
        let cmd = Command::Register {
            xid: x(xid),
            resource: "r".into(),
            kind: BranchKind::XA,
            keys: vec![k(key)],
            token: None,
        };
        run(&mut c, cmd, T0);
    }
    run(&mut c, Command::Rollback { xid: x("a") }, T0 + 1);
    run(
        &mut c,
        Command::Phase2Result {
            xid: x("a"),
            branch_id: 2,
            outcome: Phase2Outcome::Rollbacked,
        },
        T0 + 2,
    );
    // An XA branch reports its prepare before its transaction may commit.
    run(
        &mut c,
        Command::Report {
            xid: x("b"),
            branch_id: 1,
            status: BranchStatus::PhaseOneDone,
        },
        T0 + 3,
    );
    run(&mut c, Command::Commit { xid: x("b") }, T0 + 3);
    run(&mut c, Command::Timeout { xid: x("c") }, T0 + 20);
    let state = |c: &Core| {
        let mut g: Vec<String> = c.globals().map(|g| format!("{g:?}")).collect();
        g.sort();
        let mut l: Vec<String> = c.locks().iter().map(|(k, x)| format!("{k}={x}")).collect();
        l.sort();
        (g, l, c.due(T0 + 10_000, 0, 100), c.all_pending().len())
    };
    assert_eq!(state(&replayed(&log)), state(&c));
    assert_eq!(state(&replayed(&c.snapshot())), state(&c));
    assert_eq!(
        c.locks().len(),
        3,
        "a's two keys held while rolling back, c's held while timing out"
    );
}

#[test]
fn forget_after_retention() {
    let mut c = Core::default();
    begin(&mut c, "a", 1000);
    c.apply(&Command::Commit { xid: x("a") }, T0 + 5).unwrap();
    assert_eq!(status(&c, "a"), GlobalStatus::Committed);
    assert!(c.due(T0 + 5 + 999, 1000, 10).is_empty());
    let due = c.due(T0 + 5 + 1000, 1000, 10);
    assert_eq!(due, vec![Command::Forget { xid: x("a") }]);
    c.apply(&due[0], T0 + 2000).unwrap();
    assert!(c.global(&x("a")).is_none());
    assert!(matches!(
        c.apply(&Command::Commit { xid: x("a") }, T0),
        Err(Error::UnknownXid { .. })
    ));
}

#[test]
fn status_names_round_trip() {
    for s in GlobalStatus::ALL {
        assert_eq!(GlobalStatus::from_name(s.as_str()), Some(*s));
    }
    for s in BranchStatus::ALL {
        assert_eq!(BranchStatus::from_name(s.as_str()), Some(*s));
    }
}

#[test]
fn finished_transactions_are_bounded_and_drop_their_keys() {
    let mut c = Core::new(Limits {
        max_finished: 2,
        ..Limits::default()
    });
    for i in 0..4 {
        let xid = format!("t{i}");
        begin(&mut c, &xid, 1000);
        reg(&mut c, &xid, &[i], T0).unwrap();
        c.apply(&Command::Rollback { xid: x(&xid) }, T0 + i as u64)
            .unwrap();
        p2(&mut c, &xid, 1, Phase2Outcome::Rollbacked);
        assert!(
            c.global(&x(&xid)).unwrap().branches[0].keys.is_empty(),
            "a finished branch keeps no keys"
        );
    }
    // Well within the retention time, but two over the count bound: the oldest go.
    let due = c.due(T0 + 20, 60_000, 10);
    assert_eq!(
        due,
        vec![
            Command::Forget { xid: x("t0") },
            Command::Forget { xid: x("t1") }
        ]
    );
}

/// T1 registers key 1 and commits (phase 2 still owed, so its branch still lists the
/// key); T2 then registers key 1 and is open, or rolling back and stuck on a dirty
/// write. Both need the key to stay T2's after any replay, whatever order a
/// snapshot lists the two in; snapshots written before the fix (each transaction's
/// Branch records before its Status) included.
#[test]
fn replay_never_moves_a_key_from_its_holder_to_a_committed_transaction() {
    for stuck in [false, true] {
        let mut c = Core::default();
        begin(&mut c, "t1", 1000);
        begin(&mut c, "t2", 1000);
        reg(&mut c, "t1", &[1], T0).unwrap();
        c.apply(&Command::Commit { xid: x("t1") }, T0 + 1).unwrap();
        reg(&mut c, "t2", &[1], T0 + 2).unwrap();
        if stuck {
            c.apply(&Command::Rollback { xid: x("t2") }, T0 + 3)
                .unwrap();
            p2(&mut c, "t2", 1, Phase2Outcome::RollbackFailed);
            assert_eq!(status(&c, "t2"), GlobalStatus::RollbackFailed);
        }
        assert_eq!(status(&c, "t1"), GlobalStatus::AsyncCommitting);
        assert_eq!(c.locks().holder(&k(1)), Some(&x("t2")));
        let snap = c.snapshot();
        let of = |recs: &[Record], xid: &str| -> Vec<Record> {
            recs.iter()
                .filter(|r| *r.xid() == x(xid))
                .cloned()
                .collect()
        };
        // The layout of snapshots written before the fix.
        let old_layout = |xid: &str| {
            let g = c.global(&x(xid)).unwrap();
            let mut out = vec![Record::Begin {
                xid: g.xid.clone(),
                at: g.begun_at,
                deadline: g.deadline,
            }];
            out.extend(g.branches.iter().map(|b| Record::Branch {
                xid: g.xid.clone(),
                branch: b.clone(),
            }));
            if g.status != GlobalStatus::Begin {
                out.push(Record::Status {
                    xid: g.xid.clone(),
                    status: g.status,
                    at: g.updated_at,
                });
            }
            out
        };
        for (first, second) in [("t1", "t2"), ("t2", "t1")] {
            let new = [of(&snap, first), of(&snap, second)].concat();
            let old = [old_layout(first), old_layout(second)].concat();
            for (layout, recs) in [("new", new), ("old", old)] {
                let r = replayed(&recs);
                let at = format!("stuck={stuck}, {layout} layout, {first} first");
                assert_eq!(r.locks().holder(&k(1)), Some(&x("t2")), "{at}");
                assert!(r.locks().held_by(&x("t1")).is_empty(), "{at}");
                assert_eq!(r.locks().held_by(&x("t2")), &[k(1)], "{at}");
                assert_eq!(r.unheld_key(), None, "{at}");
                let s = |c: &Core, xid: &str| format!("{:?}", c.global(&x(xid)));
                assert_eq!(s(&r, "t1"), s(&c, "t1"), "{at}");
                assert_eq!(s(&r, "t2"), s(&c, "t2"), "{at}");
            }
        }
    }
}

#[test]
fn unheld_key_reports_a_log_that_gave_two_open_transactions_one_key() {
    let b = |xid: &str| Record::Branch {
        xid: x(xid),
        branch: Branch {
            branch_id: 1,
            resource: "r".into(),
            kind: BranchKind::AT,
            keys: vec![k(1)],
            status: BranchStatus::Registered,
            token: None,
        },
    };
    let begin = |xid: &str| Record::Begin {
        xid: x(xid),
        at: T0,
        deadline: T0 + 1000,
    };
    let r = replayed(&[begin("a"), b("a"), begin("b"), b("b")]);
    assert_eq!(
        r.locks().holder(&k(1)),
        Some(&x("a")),
        "replay never moves a held key"
    );
    assert_eq!(r.unheld_key(), Some((&x("b"), &k(1))));
}

fn xa_reg(c: &mut Core, xid: &str, token: u64) -> Result<u64, Error> {
    let cmd = Command::Register {
        xid: x(xid),
        resource: "my://h/db".into(),
        kind: BranchKind::XA,
        keys: vec![],
        token: Some(token),
    };
    match c.apply(&cmd, T0)?.reply {
        Reply::Registered { branch_id } => Ok(branch_id),
        r => panic!("unexpected {r:?}"),
    }
}
fn withdraw(c: &mut Core, xid: &str, token: u64) -> Output {
    let cmd = Command::Withdraw {
        xid: x(xid),
        resource: "my://h/db".into(),
        kind: BranchKind::XA,
        token,
    };
    c.apply(&cmd, T0).unwrap()
}
fn commit(c: &mut Core, xid: &str) -> Result<Output, Error> {
    c.apply(&Command::Commit { xid: x(xid) }, T0 + 1)
}

#[test]
fn a_registration_delivered_twice_answers_the_branch_it_made() {
    let mut c = Core::default();
    begin(&mut c, "a", 1000);
    assert_eq!(xa_reg(&mut c, "a", 7).unwrap(), 1);
    let again = c
        .apply(
            &Command::Register {
                xid: x("a"),
                resource: "my://h/db".into(),
                kind: BranchKind::XA,
                keys: vec![],
                token: Some(7),
            },
            T0,
        )
        .unwrap();
    assert_eq!(again.reply, Reply::Registered { branch_id: 1 });
    assert!(again.records.is_empty(), "nothing written the second time");
    assert_eq!(
        xa_reg(&mut c, "a", 8).unwrap(),
        2,
        "another token, another branch"
    );
    assert_eq!(c.global(&x("a")).unwrap().branches.len(), 2);
}

#[test]
fn a_withdrawn_xa_registration_no_longer_holds_up_the_commit() {
    // Registered, answer lost, withdrawn: the branch did no work.
    let mut c = Core::default();
    begin(&mut c, "a", 1000);
    assert_eq!(xa_reg(&mut c, "a", 7).unwrap(), 1);
    assert!(matches!(
        commit(&mut c, "a"),
        Err(Error::PhaseOnePending { branch_id: 1, .. })
    ));
    let out = withdraw(&mut c, "a", 7);
    assert_eq!(out.reply, Reply::Ok);
    let b = c.global(&x("a")).unwrap().branch(1).unwrap().clone();
    assert_eq!(b.status, BranchStatus::PhaseOneFailed);
    assert!(
        withdraw(&mut c, "a", 7).records.is_empty(),
        "withdrawn twice"
    );
    assert!(
        matches!(xa_reg(&mut c, "a", 7), Err(Error::InvalidArgument { .. })),
        "the token is spent"
    );
    assert_eq!(
        commit(&mut c, "a").unwrap().reply,
        Reply::Status(GlobalStatus::Committed)
    );
    assert_eq!(
        status(&c, "a"),
        GlobalStatus::Committed,
        "no branch owes phase 2"
    );
}

#[test]
fn a_withdrawal_ahead_of_its_registration_refuses_the_registration() {
    let mut c = Core::default();
    begin(&mut c, "a", 1000);
    let out = withdraw(&mut c, "a", 7);
    let b = &c.global(&x("a")).unwrap().branches[0];
    assert_eq!(
        (b.branch_id, b.status, b.token, b.kind, b.resource.as_str()),
        (
            1,
            BranchStatus::PhaseOneFailed,
            Some(7),
            BranchKind::XA,
            "my://h/db"
        )
    );
    assert_eq!(out.records.len(), 1);
    assert!(matches!(
        xa_reg(&mut c, "a", 7),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(
        c.global(&x("a")).unwrap().branches.len(),
        1,
        "refused: nothing added"
    );
    assert_eq!(
        xa_reg(&mut c, "a", 9).unwrap(),
        2,
        "a new registration goes on"
    );
    // Replaying the log gives the same branches.
    let mut log = vec![Record::Begin {
        xid: x("a"),
        at: T0,
        deadline: T0 + 1000,
    }];
    log.extend(
        c.global(&x("a"))
            .unwrap()
            .branches
            .iter()
            .map(|b| Record::Branch {
                xid: x("a"),
                branch: b.clone(),
            }),
    );
    assert_eq!(
        replayed(&log).global(&x("a")).unwrap().branches,
        c.global(&x("a")).unwrap().branches
    );
}

#[test]
fn a_withdrawal_after_the_decision_or_the_transaction_writes_nothing() {
    let mut c = Core::default();
    let out = withdraw(&mut c, "gone", 7);
    assert_eq!(
        (out.reply, out.records.len()),
        (Reply::Ok, 0),
        "unknown xid"
    );
    begin(&mut c, "a", 1000);
    c.apply(&Command::Rollback { xid: x("a") }, T0).unwrap();
    let out = withdraw(&mut c, "a", 7);
    assert_eq!((out.reply, out.records.len()), (Reply::Ok, 0), "decided");
}

#[test]
fn a_withdrawal_after_the_rollback_began_lets_it_end() {
    // The rollback (the application's, or the timeout's) owed only the withdrawn branch.
    for timeout in [false, true] {
        let mut c = Core::default();
        begin(&mut c, "a", 1000);
        let cmd = Command::Register {
            xid: x("a"),
            resource: "pg://h/db".into(),
            kind: BranchKind::AT,
            keys: vec![k(1)],
            token: Some(7),
        };
        c.apply(&cmd, T0).unwrap();
        let (decide, now) = if timeout {
            (Command::Timeout { xid: x("a") }, T0 + 1000)
        } else {
            (Command::Rollback { xid: x("a") }, T0)
        };
        c.apply(&decide, now).unwrap();
        assert!(status(&c, "a").is_rolling_back());
        let withdrawn = Command::Withdraw {
            xid: x("a"),
            resource: "pg://h/db".into(),
            kind: BranchKind::AT,
            token: 7,
        };
        c.apply(&withdrawn, now).unwrap();
        let ended = if timeout {
            GlobalStatus::TimeoutRollbacked
        } else {
            GlobalStatus::Rollbacked
        };
        assert_eq!(status(&c, "a"), ended, "timeout: {timeout}");
        assert_eq!(c.locks().holder(&k(1)), None, "timeout: {timeout}");
        // Phase 2 answering after all, and the withdrawal again, change nothing.
        p2(&mut c, "a", 1, Phase2Outcome::Rollbacked);
        assert!(c.apply(&withdrawn, now).unwrap().records.is_empty());
        assert_eq!(status(&c, "a"), ended);
    }
}

#[test]
fn a_withdrawal_that_phase_two_overtook_answers_ok() {
    let mut c = Core::default();
    begin(&mut c, "a", 1000);
    begin(&mut c, "b", 1000);
    xa_reg(&mut c, "a", 8).unwrap();
    assert_eq!(xa_reg(&mut c, "a", 7).unwrap(), 2);
    c.apply(&Command::Rollback { xid: x("a") }, T0).unwrap();
    // Rollbacks run in reverse order: branch 2 first.
    p2(&mut c, "a", 2, Phase2Outcome::Rollbacked);
    let out = withdraw(&mut c, "a", 7);
    assert_eq!((out.reply, out.records.len()), (Reply::Ok, 0));
    assert_eq!(
        status(&c, "a"),
        GlobalStatus::Rollbacking,
        "branch 1 still owed"
    );
    // A second delivery of a registration under a token must match it to answer it.
    let other_keys = Command::Register {
        xid: x("b"),
        resource: "pg://h/db".into(),
        kind: BranchKind::AT,
        keys: vec![k(5)],
        token: Some(9),
    };
    c.apply(&other_keys, T0).unwrap();
    let mut changed = other_keys;
    if let Command::Register { keys, .. } = &mut changed {
        keys.push(k(6));
    }
    assert!(matches!(
        c.apply(&changed, T0),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(c.locks().holder(&k(6)), None);
}
