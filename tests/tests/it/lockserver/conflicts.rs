//! Lock conflicts: named holder, reentrancy, bounded wait, fail fast on rollback.

use std::time::{Duration, Instant};

use tandem_lockserver::Error;
use tandem_lockserver::client::BranchKind;
use tandem_tests::lockserver::{Kind, TestLockserver};

use super::{RESOURCE, both, key};

both!(
    conflict_names_holder_and_reentrancy,
    bounded_wait_gets_the_lock_at_commit,
    waiters_fail_fast_while_holder_rolls_back
);

async fn conflict_names_holder_and_reentrancy(kind: Kind) {
    let ls = TestLockserver::start(kind).await;
    let c = ls.client();
    let (a, b) = (c.begin(None).await.unwrap(), c.begin(None).await.unwrap());
    assert_eq!(
        c.register_branch(
            &a,
            RESOURCE,
            BranchKind::AT,
            &[key(1), key(2)],
            Duration::ZERO
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        c.register_branch(
            &a,
            RESOURCE,
            BranchKind::AT,
            &[key(2), key(3)],
            Duration::ZERO
        )
        .await
        .unwrap(),
        2,
        "reentrant"
    );
    let e = c
        .register_branch(
            &b,
            RESOURCE,
            BranchKind::AT,
            &[key(4), key(3)],
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    match &e {
        Error::LockConflict {
            key: k,
            holder,
            holder_rolling_back: false,
        } => assert_eq!((k, holder), (&key(3), &a)),
        e => panic!("expected a conflict naming {a}, got {e:?}"),
    }
    assert!(e.is_retryable());
    assert!(
        !c.locks_held(&[key(4)]).await.unwrap(),
        "nothing of the refused request is held"
    );
    assert_eq!(
        c.lock_holder(&[key(9), key(2)]).await.unwrap(),
        Some((key(2), a.clone()))
    );
    let (code, locks) = ls.get("/v1/locks").await;
    assert_eq!(code, 200);
    let rows = locks["locks"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r["xid"] == a.as_str() && r["table"] == "public.accounts")
    );
    let (_, g) = ls.get(&format!("/v1/transactions/{b}")).await;
    assert_eq!(g["branches"].as_array().unwrap().len(), 0);
    ls.stop().await;
}

async fn bounded_wait_gets_the_lock_at_commit(kind: Kind) {
    let ls = TestLockserver::start(kind).await;
    let c = ls.client();
    let (a, b) = (c.begin(None).await.unwrap(), c.begin(None).await.unwrap());
    c.register_branch(&a, RESOURCE, BranchKind::AT, &[key(1)], Duration::ZERO)
        .await
        .unwrap();
    let started = Instant::now();
    let waiter = {
        let (c, b) = (c.clone(), b.clone());
        tokio::spawn(async move {
            c.register_branch(
                &b,
                RESOURCE,
                BranchKind::AT,
                &[key(1)],
                Duration::from_secs(5),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter waits while the holder is open"
    );
    c.commit(&a).await.unwrap();
    waiter.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "woken at the release, not at the end of the wait"
    );
    assert_eq!(c.lock_holder(&[key(1)]).await.unwrap(), Some((key(1), b)));
    // A bounded wait that runs out answers with the conflict.
    let d = c.begin(None).await.unwrap();
    let started = Instant::now();
    let e = c
        .register_branch(
            &d,
            RESOURCE,
            BranchKind::AT,
            &[key(1)],
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::LockConflict { .. }));
    assert!(started.elapsed() >= Duration::from_millis(300));
    ls.stop().await;
}

async fn waiters_fail_fast_while_holder_rolls_back(kind: Kind) {
    let ls = TestLockserver::start(kind).await;
    let c = ls.client();
    let (a, b) = (c.begin(None).await.unwrap(), c.begin(None).await.unwrap());
    c.register_branch(&a, RESOURCE, BranchKind::AT, &[key(1)], Duration::ZERO)
        .await
        .unwrap();
    // No proxy serves the resource: the rollback cannot finish and keeps the lock.
    let s = c.rollback(&a).await.unwrap();
    assert_eq!(s.as_str(), "RollbackRetrying");
    let started = Instant::now();
    let e = c
        .register_branch(
            &b,
            RESOURCE,
            BranchKind::AT,
            &[key(1)],
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LockConflict {
                holder_rolling_back: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails fast instead of waiting"
    );
    ls.stop().await;
}
