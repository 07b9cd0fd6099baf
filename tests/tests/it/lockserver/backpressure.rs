//! Backpressure: past `max_in_flight` the lockserver refuses at once, with
//! RESOURCE_EXHAUSTED over gRPC and 503 over HTTP, and serves again afterwards.

use std::time::Duration;

use tandem_lockserver::Error;
use tandem_lockserver::client::BranchKind;
use tandem_tests::lockserver::{Kind, TestLockserver, test_config};
use tonic::Code;

use super::{RESOURCE, both, key};

both!(over_the_limit_is_refused_not_queued);

async fn over_the_limit_is_refused_not_queued(kind: Kind) {
    let (mut config, dir) = test_config(kind);
    config.limits.max_in_flight = 1;
    config.rollback_wait_ms = 2_000;
    let ls = TestLockserver::start_with(config, dir).await;
    let c = ls.client();
    let x = c.begin(None).await.unwrap();
    c.register_branch(&x, RESOURCE, BranchKind::AT, &[key(1)], Duration::ZERO)
        .await
        .unwrap();
    // No proxy serves the resource: this rollback holds the only permit while it waits.
    let slow = {
        let (c, x) = (c.clone(), x.clone());
        tokio::spawn(async move {
            // The begins below compete for the same single permit: a rollback refused
            // while one of them holds it tries again.
            loop {
                match c.rollback(&x).await {
                    Err(Error::Rpc {
                        code: Code::ResourceExhausted,
                        ..
                    }) => tokio::time::sleep(Duration::from_millis(2)).await,
                    other => return other,
                }
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match c.begin(None).await {
            Err(Error::Rpc {
                code: Code::ResourceExhausted,
                ..
            }) => break,
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "never refused"),
            Err(e) => panic!("unexpected {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (code, body) = ls.post("/v1/transactions", None).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        Error::Rpc {
            code: Code::ResourceExhausted,
            message: String::new()
        }
        .is_retryable()
    );
    slow.await.unwrap().unwrap();
    c.begin(None)
        .await
        .expect("served again once the permit is back");
    ls.stop().await;
}
