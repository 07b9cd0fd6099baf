//! The store conformance suite: every case runs against the embedded store (in a
//! temp dir) and against a real Redis (`TANDEM_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`, a fresh key prefix per test so tests run in parallel).

use std::sync::Arc;

use super::embedded::EmbeddedStore;
use super::redis::RedisStore;
use super::{Applied, Store};
use crate::core::clock::Millis;
use crate::core::locks::LockKey;
use crate::core::txn::{
    BranchKind, BranchStatus, Command, GlobalStatus, Limits, Phase2Outcome, Reply, Xid,
};
use crate::error::Error;

const T0: Millis = 1_700_000_000_000;

fn x(s: &str) -> Xid {
    Xid::parse(s).unwrap()
}
fn k(i: u32) -> LockKey {
    LockKey::new("pg://h/db", "public.t", [i.to_string()])
}

async fn begin<S: Store>(s: &S, xid: &str, timeout: u64) {
    s.apply(
        Command::Begin {
            xid: x(xid),
            timeout_ms: timeout,
        },
        T0,
    )
    .await
    .unwrap();
}
async fn reg<S: Store>(s: &S, xid: &str, keys: &[u32], now: Millis) -> Result<u64, Error> {
    let cmd = Command::Register {
        xid: x(xid),
        resource: "pg://h/db".into(),
        kind: BranchKind::AT,
        keys: keys.iter().map(|i| k(*i)).collect(),
        token: None,
    };
    match s.apply(cmd, now).await?.reply {
        Reply::Registered { branch_id } => Ok(branch_id),
        r => panic!("unexpected {r:?}"),
    }
}
async fn status<S: Store>(s: &S, xid: &str) -> GlobalStatus {
    s.global(&x(xid)).await.unwrap().unwrap().status
}
async fn p2<S: Store>(s: &S, xid: &str, b: u64, o: Phase2Outcome) -> Applied {
    s.apply(
        Command::Phase2Result {
            xid: x(xid),
            branch_id: b,
            outcome: o,
        },
        T0 + 10,
    )
    .await
    .unwrap()
}
async fn holders<S: Store>(s: &S) -> Vec<(String, String)> {
    s.locks(1000)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, x)| (k.pk()[0].to_string(), x.to_string()))
        .collect()
}

async fn conflicts_and_reentrancy<S: Store>(s: S) {
    begin(&s, "a", 10_000).await;
    begin(&s, "b", 10_000).await;
    assert_eq!(reg(&s, "a", &[1, 2], T0).await.unwrap(), 1);
    assert_eq!(reg(&s, "a", &[2, 3], T0).await.unwrap(), 2);
    let e = reg(&s, "b", &[9, 3], T0).await.unwrap_err();
    assert!(
        matches!(&e, Error::LockConflict { holder, key, holder_rolling_back: false } if *holder == x("a") && *key == k(3)),
        "{e:?}"
    );
    assert_eq!(s.first_held(&[k(9)]).await.unwrap(), None, "all or nothing");
    assert_eq!(
        s.first_held(&[k(9), k(2)]).await.unwrap(),
        Some((k(2), x("a")))
    );
    assert_eq!(holders(&s).await.len(), 3);
    assert!(
        s.global(&x("b"))
            .await
            .unwrap()
            .unwrap()
            .branches
            .is_empty()
    );
    assert_eq!(s.counts().await.unwrap().locks, 3);
}

async fn commit_and_phase2<S: Store>(s: S) {
    begin(&s, "a", 10_000).await;
    reg(&s, "a", &[1], T0).await.unwrap();
    reg(&s, "a", &[2], T0).await.unwrap();
    let out = s
        .apply(Command::Commit { xid: x("a") }, T0 + 1)
        .await
        .unwrap();
    assert_eq!(out.reply, Reply::Status(GlobalStatus::Committed));
    assert!(holders(&s).await.is_empty(), "released at the decision");
    let work = s.claim_phase2(T0 + 1, 5_000, 10).await.unwrap();
    assert_eq!(work.len(), 2);
    assert!(
        s.claim_phase2(T0 + 2, 5_000, 10).await.unwrap().is_empty(),
        "claimed work is leased"
    );
    assert_eq!(
        s.claim_phase2(T0 + 5_001, 5_000, 10).await.unwrap().len(),
        2,
        "an unanswered lease expires"
    );
    let out = p2(&s, "a", 1, Phase2Outcome::Committed).await;
    assert!(out.effects.is_empty(), "no new work: {:?}", out.effects);
    p2(&s, "a", 1, Phase2Outcome::Committed).await;
    p2(&s, "a", 2, Phase2Outcome::Committed).await;
    assert_eq!(status(&s, "a").await, GlobalStatus::Committed);
    s.schedule_phase2(&x("a"), 0).await.unwrap();
    assert!(
        s.claim_phase2(T0 + 20_000, 5_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.counts().await.unwrap().active, 0);
}

async fn rollback_order_and_dirty_write<S: Store>(s: S) {
    begin(&s, "a", 10_000).await;
    begin(&s, "b", 10_000).await;
    for i in 1..=3 {
        reg(&s, "a", &[i], T0).await.unwrap();
    }
    s.apply(Command::Rollback { xid: x("a") }, T0)
        .await
        .unwrap();
    let e = reg(&s, "b", &[1], T0).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::LockConflict {
                holder_rolling_back: true,
                ..
            }
        ),
        "fail fast: {e:?}"
    );
    let w = s.claim_phase2(T0, 5_000, 10).await.unwrap();
    assert_eq!((w.len(), w[0].branch_id, w[0].commit), (1, 3, false));
    p2(&s, "a", 3, Phase2Outcome::Retry).await;
    assert_eq!(status(&s, "a").await, GlobalStatus::RollbackRetrying);
    p2(&s, "a", 3, Phase2Outcome::Rollbacked).await;
    let w = s.claim_phase2(T0 + 10, 5_000, 10).await.unwrap();
    assert_eq!(
        w.iter().map(|w| w.branch_id).collect::<Vec<_>>(),
        vec![2],
        "next branch due at once"
    );
    assert_eq!(
        holders(&s).await.len(),
        3,
        "locks kept until every branch is undone"
    );
    p2(&s, "a", 2, Phase2Outcome::RollbackFailed).await;
    assert_eq!(status(&s, "a").await, GlobalStatus::RollbackFailed);
    assert_eq!(holders(&s).await.len(), 3, "a dirty write keeps the locks");
    s.apply(Command::Rollback { xid: x("a") }, T0 + 2)
        .await
        .unwrap();
    p2(&s, "a", 2, Phase2Outcome::Rollbacked).await;
    p2(&s, "a", 1, Phase2Outcome::Rollbacked).await;
    assert_eq!(status(&s, "a").await, GlobalStatus::Rollbacked);
    assert!(holders(&s).await.is_empty());
    reg(&s, "b", &[1], T0).await.unwrap();
}

/// A retried commit or rollback (its first answer lost) answers the status and
/// changes nothing, phase-2 leases included; the other decision stays refused.
async fn repeated_decisions_answer_the_status<S: Store>(s: S) {
    use GlobalStatus::*;
    let decide = |xid: &str, commit: bool, now: Millis| {
        let xid = x(xid);
        let cmd = if commit {
            Command::Commit { xid }
        } else {
            Command::Rollback { xid }
        };
        s.apply(cmd, now)
    };
    let snapshot = || async { (s.global(&x("a")).await.unwrap(), holders(&s).await) };
    begin(&s, "a", 10_000).await;
    begin(&s, "b", 10_000).await;
    reg(&s, "a", &[1], T0).await.unwrap();
    reg(&s, "b", &[2], T0).await.unwrap();
    decide("a", true, T0 + 1).await.unwrap();
    assert_eq!(s.claim_phase2(T0 + 1, 5_000, 10).await.unwrap().len(), 1);
    let before = snapshot().await;
    let again = decide("a", true, T0 + 2).await.unwrap();
    assert_eq!(again.reply, Reply::Status(Committed));
    assert!(again.effects.is_empty(), "{:?}", again.effects);
    assert_eq!(snapshot().await, before);
    assert!(
        s.claim_phase2(T0 + 2, 5_000, 10).await.unwrap().is_empty(),
        "the lease stands"
    );
    let e = decide("a", false, T0 + 2).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidState {
                status: AsyncCommitting,
                ..
            }
        ),
        "{e:?}"
    );
    decide("b", false, T0 + 1).await.unwrap();
    let again = decide("b", false, T0 + 2).await.unwrap();
    assert_eq!(again.reply, Reply::Status(Rollbacking));
    assert!(again.effects.is_empty(), "{:?}", again.effects);
    assert_eq!(holders(&s).await.len(), 1, "b keeps its lock");
    let e = decide("b", true, T0 + 2).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidState {
                status: Rollbacking,
                ..
            }
        ),
        "{e:?}"
    );
    p2(&s, "b", 1, Phase2Outcome::Rollbacked).await;
    let again = decide("b", false, T0 + 20).await.unwrap();
    assert_eq!(again.reply, Reply::Status(Rollbacked));
    assert!(decide("b", true, T0 + 20).await.is_err());
}

async fn timeouts_and_forgetting<S: Store>(s: S) {
    begin(&s, "a", 100).await;
    begin(&s, "b", 100_000).await;
    reg(&s, "a", &[1], T0).await.unwrap();
    assert!(s.due(T0 + 99, 1_000, 10).await.unwrap().is_empty());
    let due = s.due(T0 + 100, 1_000, 10).await.unwrap();
    assert_eq!(due, vec![Command::Timeout { xid: x("a") }]);
    for _ in 0..2 {
        s.apply(due[0].clone(), T0 + 100).await.unwrap();
    }
    assert_eq!(status(&s, "a").await, GlobalStatus::TimeoutRollbacking);
    let e = s
        .apply(Command::Commit { xid: x("a") }, T0 + 101)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidState {
                status: GlobalStatus::TimeoutRollbacking,
                ..
            }
        ),
        "{e:?}"
    );
    p2(&s, "a", 1, Phase2Outcome::Rollbacked).await;
    assert_eq!(status(&s, "a").await, GlobalStatus::TimeoutRollbacked);
    assert!(holders(&s).await.is_empty());
    assert!(s.due(T0 + 10 + 999, 1_000, 10).await.unwrap().is_empty());
    let due = s.due(T0 + 10 + 1_000, 1_000, 10).await.unwrap();
    assert_eq!(due, vec![Command::Forget { xid: x("a") }]);
    s.apply(due[0].clone(), T0 + 2_000).await.unwrap();
    assert!(s.global(&x("a")).await.unwrap().is_none());
    assert_eq!(s.globals(10).await.unwrap().len(), 1);
}

async fn bad_input_leaves_state_unchanged<S: Store>(s: S) {
    begin(&s, "a", 10_000).await;
    reg(&s, "a", &[1], T0).await.unwrap();
    let before = format!(
        "{:?} {:?}",
        s.global(&x("a")).await.unwrap(),
        holders(&s).await
    );
    assert!(matches!(
        s.apply(
            Command::Begin {
                xid: x("a"),
                timeout_ms: 5
            },
            T0
        )
        .await,
        Err(Error::DuplicateXid { .. })
    ));
    assert!(matches!(
        s.apply(Command::Commit { xid: x("zz") }, T0).await,
        Err(Error::UnknownXid { .. })
    ));
    assert!(matches!(
        s.apply(Command::Forget { xid: x("a") }, T0).await,
        Err(Error::InvalidState { .. })
    ));
    assert_eq!(
        format!(
            "{:?} {:?}",
            s.global(&x("a")).await.unwrap(),
            holders(&s).await
        ),
        before
    );
    s.apply(Command::Commit { xid: x("a") }, T0).await.unwrap();
    assert!(matches!(
        reg(&s, "a", &[2], T0).await,
        Err(Error::InvalidState { .. })
    ));
    assert!(holders(&s).await.is_empty());
}

/// Many transactions race for overlapping key pairs; afterwards (and at every
/// observation in between) each transaction holds all of its keys or none.
async fn concurrent_all_or_nothing<S: Store>(s: S) {
    let s = Arc::new(s);
    let n = 16u32;
    for i in 0..n {
        begin(&*s, &format!("t{i}"), 60_000).await;
    }
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            reg(&*s, &format!("t{i}"), &[i, (i + 1) % n, 100 + i], T0)
                .await
                .is_ok()
        }));
    }
    let observer = {
        let s = s.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                let mut per: std::collections::HashMap<String, usize> = Default::default();
                for (_, x) in holders(&*s).await {
                    *per.entry(x).or_default() += 1;
                }
                assert!(
                    per.values().all(|c| *c == 3),
                    "partial lock visible: {per:?}"
                );
                tokio::task::yield_now().await;
            }
        })
    };
    let mut won = 0;
    for t in tasks {
        won += t.await.unwrap() as usize;
    }
    observer.await.unwrap();
    assert!(won >= 1);
    assert_eq!(holders(&*s).await.len(), won * 3);
}

/// A withdrawn registration (its answer was lost) and one withdrawn before it arrived.
async fn withdrawn_registrations<S: Store>(s: S) {
    begin(&s, "a", 10_000).await;
    let register = |token: u64| Command::Register {
        xid: x("a"),
        resource: "my://h/db".into(),
        kind: BranchKind::XA,
        keys: vec![],
        token: Some(token),
    };
    let withdraw = |token: u64| Command::Withdraw {
        xid: x("a"),
        resource: "my://h/db".into(),
        kind: BranchKind::XA,
        token,
    };
    let registered = s.apply(register(7), T0).await.unwrap().reply;
    assert_eq!(registered, Reply::Registered { branch_id: 1 });
    assert_eq!(
        s.apply(register(7), T0).await.unwrap().reply,
        registered,
        "delivered twice"
    );
    s.apply(withdraw(7), T0).await.unwrap();
    s.apply(withdraw(8), T0).await.unwrap();
    for token in [7, 8] {
        let e = s.apply(register(token), T0).await.unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{token}: {e:?}");
    }
    let g = s.global(&x("a")).await.unwrap().unwrap();
    let branches: Vec<_> = g
        .branches
        .iter()
        .map(|b| (b.branch_id, b.status, b.token))
        .collect();
    assert_eq!(
        branches,
        [
            (1, BranchStatus::PhaseOneFailed, Some(7)),
            (2, BranchStatus::PhaseOneFailed, Some(8))
        ]
    );
    let commit = s.apply(Command::Commit { xid: x("a") }, T0 + 1).await;
    assert_eq!(
        commit.unwrap().reply,
        Reply::Status(GlobalStatus::Committed)
    );
    assert_eq!(status(&s, "a").await, GlobalStatus::Committed);
}

async fn redis_store() -> RedisStore {
    let url =
        std::env::var("TANDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("tandem-test:{:016x}", rand::random::<u64>());
    RedisStore::open(&url, &prefix, Limits::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need Redis at {url} (set TANDEM_TEST_REDIS_URL; `apt-get install redis-server`): {e}"))
}

fn embedded_store() -> (EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (
        EmbeddedStore::open(dir.path(), Limits::default(), 1 << 20).unwrap(),
        dir,
    )
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded_store { $(
            #[tokio::test]
            async fn $case() {
                let (s, _dir) = super::embedded_store();
                super::$case(s).await;
            }
        )* }
        mod redis_store { $(
            #[tokio::test]
            async fn $case() {
                super::$case(super::redis_store().await).await;
            }
        )* }
    };
}

conformance!(
    conflicts_and_reentrancy,
    commit_and_phase2,
    rollback_order_and_dirty_write,
    timeouts_and_forgetting,
    bad_input_leaves_state_unchanged,
    concurrent_all_or_nothing,
    repeated_decisions_answer_the_status,
    withdrawn_registrations,
);

/// A repeated decision writes nothing but must not be answered before the record
/// of the first one is durable: in one batch, both wait for the batch's append.
#[tokio::test]
async fn embedded_repeated_decision_waits_for_the_first_to_be_durable() {
    let (s, _dir) = embedded_store();
    begin(&s, "a", 10_000).await;
    reg(&s, "a", &[1], T0).await.unwrap();
    let commit = Command::Commit { xid: x("a") };
    let out = s.apply_now(&[commit.clone(), commit.clone()], T0 + 1);
    let durable = out.durable.expect("the decision was appended");
    for (r, wait) in &out.results {
        assert_eq!(
            r.as_ref().unwrap().reply,
            Reply::Status(GlobalStatus::Committed)
        );
        assert!(*wait, "each answer waits for the append");
    }
    s.durable(durable).await.unwrap();
    let out = s.apply_now(&[commit], T0 + 2);
    let (r, wait) = &out.results[0];
    assert_eq!(
        r.as_ref().unwrap().reply,
        Reply::Status(GlobalStatus::Committed)
    );
    assert_eq!(
        *wait,
        out.durable.is_some(),
        "a wait always has something to wait for"
    );
}

/// A decision refused because of another still in its fsync (a rollback of a
/// transaction committing) is not answered before that one is durable either: a crash
/// could take the commit back and the rollback would then succeed.
#[tokio::test]
async fn embedded_refusal_that_rests_on_a_decision_waits_for_it() {
    let (s, _dir) = embedded_store();
    begin(&s, "a", 10_000).await;
    reg(&s, "a", &[1], T0).await.unwrap();
    let out = s.apply_now(
        &[
            Command::Commit { xid: x("a") },
            Command::Rollback { xid: x("a") },
        ],
        T0 + 1,
    );
    assert!(out.durable.is_some(), "the commit was appended");
    let (refused, wait) = &out.results[1];
    assert!(refused.is_err(), "{refused:?}");
    assert!(*wait, "the refusal waits for the commit's append");
}

#[tokio::test]
async fn embedded_recovers_state_after_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let state = async |s: &EmbeddedStore| {
        (
            format!("{:?}", s.globals(100).await.unwrap()),
            s.locks(100).await.unwrap(),
        )
    };
    let expected;
    {
        // A tiny compaction threshold: the log is compacted many times on the way.
        let s = EmbeddedStore::open(dir.path(), Limits::default(), 512).unwrap();
        for i in 0..30 {
            begin(&s, &format!("t{i}"), 60_000).await;
            reg(&s, &format!("t{i}"), &[i, 1000 + i], T0).await.unwrap();
        }
        for i in 0..10 {
            s.apply(
                Command::Commit {
                    xid: x(&format!("t{i}")),
                },
                T0 + 1,
            )
            .await
            .unwrap();
        }
        for i in 10..20 {
            s.apply(
                Command::Rollback {
                    xid: x(&format!("t{i}")),
                },
                T0 + 1,
            )
            .await
            .unwrap();
        }
        expected = state(&s).await;
        s.close().await.unwrap();
    }
    let s = EmbeddedStore::open(dir.path(), Limits::default(), 512).unwrap();
    assert_eq!(state(&s).await, expected);
    assert_eq!(
        s.locks(1000).await.unwrap().len(),
        40,
        "10 open and 10 rolling back, two keys each"
    );
    let work = s.claim_phase2(T0 + 2, 1000, 100).await.unwrap();
    assert_eq!(
        work.len(),
        10 + 10,
        "every owed phase-2 item is due after a restart"
    );
}

/// A second store on a directory in use is refused: it would delete the log the first
/// still appends to. Once the first is gone the directory opens again.
#[tokio::test]
async fn embedded_data_directory_opens_in_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedStore::open(dir.path(), Limits::default(), 1 << 20).unwrap();
    begin(&first, "kept", 60_000).await;
    match EmbeddedStore::open(dir.path(), Limits::default(), 1 << 20) {
        Err(Error::Io { op: "lock", .. }) => {}
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a second store opened the directory"),
    }
    assert_eq!(status(&first, "kept").await, GlobalStatus::Begin);
    first.close().await.unwrap();
    drop(first);
    let again = EmbeddedStore::open(dir.path(), Limits::default(), 1 << 20).unwrap();
    assert_eq!(status(&again, "kept").await, GlobalStatus::Begin);
}

/// A key released at one transaction's commit decision and taken by another stays
/// the taker's across restarts, although the committed one's branch (phase 2 still
/// owed) still lists it. Each reopen rewrites the log as a snapshot in hash order,
/// so with 20 pairs both orders occur.
#[tokio::test]
async fn embedded_reopen_keeps_keys_with_their_holder_not_a_committed_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let open = || EmbeddedStore::open(dir.path(), Limits::default(), 1 << 20).unwrap();
    let mut expected: Vec<(String, String)> =
        (0..20).map(|i| (i.to_string(), format!("u{i}"))).collect();
    expected.sort();
    {
        let s = open();
        for i in 0..20 {
            let (t, u) = (format!("t{i}"), format!("u{i}"));
            begin(&s, &t, 60_000).await;
            begin(&s, &u, 60_000).await;
            reg(&s, &t, &[i], T0).await.unwrap();
            s.apply(Command::Commit { xid: x(&t) }, T0 + 1)
                .await
                .unwrap();
            reg(&s, &u, &[i], T0 + 2).await.unwrap();
        }
        let mut h = holders(&s).await;
        h.sort();
        assert_eq!(h, expected);
        s.close().await.unwrap();
    }
    // The first reopen replays the log in order and rewrites it as a snapshot; the
    // second replays that snapshot.
    for _ in 0..2 {
        let s = open();
        let mut h = holders(&s).await;
        h.sort();
        assert_eq!(h, expected);
        s.close().await.unwrap();
    }
}

/// Appends racing with many compactions: after a reopen nothing acknowledged is
/// missing (regression: appends queued between a snapshot and its rotation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_concurrent_appends_survive_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(EmbeddedStore::open(dir.path(), Limits::default(), 300).unwrap());
    let mut tasks = Vec::new();
    for t in 0..32u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20u32 {
                let xid = format!("t{t}-{i}");
                begin(&*s, &xid, 60_000).await;
                reg(&*s, &xid, &[t * 1000 + i], T0).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let before = s.locks(10_000).await.unwrap();
    assert_eq!(before.len(), 640);
    s.close().await.unwrap();
    drop(s);
    let s = EmbeddedStore::open(dir.path(), Limits::default(), 300).unwrap();
    assert_eq!(s.locks(10_000).await.unwrap(), before);
    assert_eq!(s.globals(10_000).await.unwrap().len(), 640);
}
