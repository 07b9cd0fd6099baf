//! Phase 2: cleanup after commit, rollback in reverse order, dirty writes keep the
//! locks (visible to operators), and retry with backoff while no proxy is connected.

use std::time::Duration;

use tandem_lockserver::client::{BranchKind, BranchOutcome, Phase2Worker, WorkerOptions};
use tandem_tests::lockserver::{Kind, TestLockserver, eventually};

use super::{RESOURCE, Recorder, both, key};

both!(
    commit_sends_cleanup_to_a_live_proxy,
    rollback_reverse_order_and_dirty_write,
    no_proxy_means_retry_until_one_connects,
    work_waiting_for_a_proxy_goes_as_soon_as_one_connects
);

async fn commit_sends_cleanup_to_a_live_proxy(kind: Kind) {
    let ls = TestLockserver::start(kind).await;
    let c = ls.client();
    let rec = Recorder::ok();
    let worker = Phase2Worker::spawn(
        &c,
        vec![RESOURCE.into()],
        rec.clone(),
        WorkerOptions::default(),
    );
    eventually(Duration::from_secs(5), "worker connected", || async {
        worker.is_connected().then_some(())
    })
    .await;
    let x = c.begin(None).await.unwrap();
    c.register_branch(&x, RESOURCE, BranchKind::AT, &[key(1)], Duration::ZERO)
        .await
        .unwrap();
    c.register_branch(&x, RESOURCE, BranchKind::XA, &[key(2)], Duration::ZERO)
        .await
        .unwrap();
    c.report(&x, 1, true).await.unwrap();
    c.report(&x, 2, true).await.unwrap();
    assert_eq!(c.commit(&x).await.unwrap().as_str(), "Committed");
    assert!(
        !c.locks_held(&[key(1), key(2)]).await.unwrap(),
        "released at the decision"
    );
    let path = format!("/v1/transactions/{x}");
    eventually(
        Duration::from_secs(10),
        "both branches cleaned up",
        || async {
            let (_, g) = ls.get(&path).await;
            (g["status"] == "Committed").then_some(())
        },
    )
    .await;
    let mut seen = rec.seen();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        vec![(true, x.to_string(), 1), (true, x.to_string(), 2)]
    );
    worker.shutdown().await;
    ls.stop().await;
}

async fn rollback_reverse_order_and_dirty_write(kind: Kind) {
    let ls = TestLockserver::start(kind).await;
    let c = ls.client();
    // Branch 1 hits a dirty write.
    let rec = Recorder::new(|commit, w| {
        if !commit && w.branch_id == 1 {
            BranchOutcome::RollbackFailed {
                reason: "row changed since".into(),
            }
        } else {
            BranchOutcome::Done
        }
    });
    let worker = Phase2Worker::spawn(
        &c,
        vec![RESOURCE.into()],
        rec.clone(),
        WorkerOptions::default(),
    );
    eventually(Duration::from_secs(5), "worker connected", || async {
        worker.is_connected().then_some(())
    })
    .await;
    let x = c.begin(None).await.unwrap();
    for i in 1..=3 {
        c.register_branch(&x, RESOURCE, BranchKind::AT, &[key(i)], Duration::ZERO)
            .await
            .unwrap();
    }
    assert_eq!(c.rollback(&x).await.unwrap().as_str(), "RollbackFailed");
    let order: Vec<u64> = rec.seen().iter().map(|s| s.2).collect();
    assert_eq!(order, vec![3, 2, 1], "reverse registration order");
    assert!(
        c.locks_held(&[key(1)]).await.unwrap() && c.locks_held(&[key(3)]).await.unwrap(),
        "a dirty write keeps the locks"
    );
    let (_, g) = ls.get(&format!("/v1/transactions/{x}")).await;
    assert_eq!(g["status"], "RollbackFailed");
    assert_eq!(
        g["branches"][0]["status"], "PhaseTwoRollbackFailed",
        "operators see the failed branch: {g}"
    );
    let (_, list) = ls.get("/v1/transactions").await;
    assert!(
        list["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["xid"] == x.as_str() && t["status"] == "RollbackFailed")
    );
    // The operator repaired the row and rolls back again.
    *rec.answer.lock().unwrap() = Box::new(|_, _| BranchOutcome::Done);
    let (code, body) = ls
        .post(&format!("/v1/transactions/{x}/rollback"), None)
        .await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("Rollbacked")),
        "{body}"
    );
    assert!(!c.locks_held(&[key(1), key(2), key(3)]).await.unwrap());
    worker.shutdown().await;
    ls.stop().await;
}

async fn no_proxy_means_retry_until_one_connects(kind: Kind) {
    let ls = TestLockserver::start(kind).await;
    let x = rollback_with_no_proxy(&ls).await;
    let (_, metrics) = tandem_tests::lockserver::http_raw(ls.http, "GET", "/metrics", None).await;
    let metrics = String::from_utf8(metrics).unwrap();
    let retries: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tandem_lockserver_phase2_retries_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("phase2 retries metric");
    assert!(retries >= 1.0, "retries counted: {metrics}");
    assert!(metrics.contains("tandem_lockserver_held_locks 1"));
    rolled_back_once_a_proxy_connects(&ls, &x).await;
    assert!(!ls.client().locks_held(&[key(1)]).await.unwrap());
    ls.stop().await;
}

/// Work that found no proxy of its resource does not sit out its backoff once one
/// connects: a proxy replaces its stream whenever it starts serving another database,
/// and a rollback dispatched in that moment used to wait up to `retry_max_ms`.
async fn work_waiting_for_a_proxy_goes_as_soon_as_one_connects(kind: Kind) {
    let (mut config, dir) = tandem_tests::lockserver::test_config(kind);
    // Longer than the wait below: only a connecting proxy can end it in time.
    config.phase2.retry_initial_ms = 60_000;
    config.phase2.retry_max_ms = 60_000;
    let ls = TestLockserver::start_with(config, dir).await;
    let x = rollback_with_no_proxy(&ls).await;
    rolled_back_once_a_proxy_connects(&ls, &x).await;
    ls.stop().await;
}

/// A global transaction with one branch of `RESOURCE`, rolled back while no proxy
/// serves it: the rollback is retried.
async fn rollback_with_no_proxy(ls: &TestLockserver) -> tandem_lockserver::client::Xid {
    let c = ls.client();
    let x = c.begin(None).await.unwrap();
    c.register_branch(&x, RESOURCE, BranchKind::AT, &[key(1)], Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(c.rollback(&x).await.unwrap().as_str(), "RollbackRetrying");
    x
}

/// Connects a proxy of `RESOURCE` and waits (10 s at most) until `x` is rolled back.
async fn rolled_back_once_a_proxy_connects(
    ls: &TestLockserver,
    x: &tandem_lockserver::client::Xid,
) {
    let worker = Phase2Worker::spawn(
        &ls.client(),
        vec![RESOURCE.into()],
        Recorder::ok(),
        WorkerOptions::default(),
    );
    let path = format!("/v1/transactions/{x}");
    eventually(
        Duration::from_secs(10),
        "Rollbacked once a proxy connects",
        || async { (ls.get(&path).await.1["status"] == "Rollbacked").then_some(()) },
    )
    .await;
    worker.shutdown().await;
}
