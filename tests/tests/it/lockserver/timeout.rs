//! Timeouts: the lockserver rolls back a transaction past its timeout by itself, so
//! a proxy that disappears mid-transaction does not leave its locks behind.

use std::time::Duration;

use tandem_lockserver::client::{BranchKind, Phase2Worker, WorkerOptions};
use tandem_tests::lockserver::{Kind, TestLockserver, eventually};

use super::{RESOURCE, Recorder, both, key};

both!(
    timeout_rolls_back_and_releases_locks,
    vanished_proxy_does_not_keep_locks_forever
);

async fn timeout_rolls_back_and_releases_locks(kind: Kind) {
    let ls = TestLockserver::start(kind).await;
    let c = ls.client();
    let rec = Recorder::ok();
    let worker = Phase2Worker::spawn(
        &c,
        vec![RESOURCE.into()],
        rec.clone(),
        WorkerOptions::default(),
    );
    let x = c.begin(Some(Duration::from_millis(300))).await.unwrap();
    c.register_branch(
        &x,
        RESOURCE,
        BranchKind::AT,
        &[key(1), key(2)],
        Duration::ZERO,
    )
    .await
    .unwrap();
    let path = format!("/v1/transactions/{x}");
    eventually(Duration::from_secs(10), "TimeoutRollbacked", || async {
        (ls.get(&path).await.1["status"] == "TimeoutRollbacked").then_some(())
    })
    .await;
    assert_eq!(
        rec.seen(),
        vec![(false, x.to_string(), 1)],
        "the branch was told to roll back"
    );
    assert!(
        !c.locks_held(&[key(1), key(2)]).await.unwrap(),
        "locks released after the undo"
    );
    let (code, body) = ls.post(&format!("{path}/commit"), None).await;
    assert_eq!(code, 409, "commit after the timeout rollback: {body}");
    assert_eq!(body["status"], "TimeoutRollbacked");
    assert_eq!(
        ls.get(&path).await.1["status"],
        "TimeoutRollbacked",
        "state unchanged"
    );
    worker.shutdown().await;
    ls.stop().await;
}

async fn vanished_proxy_does_not_keep_locks_forever(kind: Kind) {
    let ls = TestLockserver::start(kind).await;
    let x = {
        // This "proxy" registers a branch and disappears without a word.
        let c = ls.client();
        let x = c.begin(Some(Duration::from_millis(200))).await.unwrap();
        c.register_branch(&x, RESOURCE, BranchKind::AT, &[key(7)], Duration::ZERO)
            .await
            .unwrap();
        x
    };
    let c = ls.client();
    let path = format!("/v1/transactions/{x}");
    eventually(
        Duration::from_secs(10),
        "the timeout rollback to start",
        || async {
            let s = ls.get(&path).await.1["status"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            s.starts_with("TimeoutRollback").then_some(())
        },
    )
    .await;
    // Another proxy of the same resource comes up and finishes the undo.
    let worker = Phase2Worker::spawn(
        &c,
        vec![RESOURCE.into()],
        Recorder::ok(),
        WorkerOptions::default(),
    );
    eventually(Duration::from_secs(10), "TimeoutRollbacked", || async {
        (ls.get(&path).await.1["status"] == "TimeoutRollbacked").then_some(())
    })
    .await;
    let other = c.begin(None).await.unwrap();
    c.register_branch(&other, RESOURCE, BranchKind::AT, &[key(7)], Duration::ZERO)
        .await
        .unwrap();
    worker.shutdown().await;
    ls.stop().await;
}
