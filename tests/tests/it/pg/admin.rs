//! The admin endpoint: `/ready` checks the upstream through a side connection (the
//! deadpool pool with the service credentials), `/metrics` counts what the relay did.

use tandem_tests::harness::{Tandem, TestDb, http_get};

#[tokio::test]
async fn ready_uses_a_side_connection_and_metrics_count_the_traffic() {
    let db = TestDb::create("admin").await;
    let tandem = Tandem::start().await;
    let ready = http_get(tandem.admin, "/ready").await;
    assert!(ready.contains(" 200 "), "{ready}");
    let metrics = http_get(tandem.admin, "/metrics").await;
    assert!(
        metrics
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

    let before = tandem.metric("tandem_pg_queries_total").await;
    let client = tandem.connect(&db.name).await;
    for _ in 0..5 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    drop(client);
    tandem.assert_no_sessions_left().await;
    assert_eq!(tandem.metric("tandem_pg_queries_total").await - before, 5.0);
    assert!(tandem.metric("tandem_pg_client_connections_total").await >= 1.0);
    assert!(tandem.metric("tandem_pg_client_bytes_total").await > 0.0);
    assert!(
        tandem
            .metric("tandem_pg_backend_latency_seconds_count")
            .await
            >= 5.0
    );
    tandem.shutdown().await;

    // An upstream that is down makes /ready answer 503, naming it.
    let down = Tandem::start_with(|c| c.postgres[0].upstream = "127.0.0.1:1".to_owned()).await;
    let ready = http_get(down.admin, "/ready").await;
    assert!(ready.contains(" 503 "), "{ready}");
    assert!(ready.contains("127.0.0.1:1"), "{ready}");
    down.shutdown().await;
}

/// `tandem_proxy_lockserver_connected` and `/ready`'s body follow the proxy's phase-2
/// stream to the lockserver; `/ready` stays 200 without it (plain traffic goes on).
#[tokio::test]
async fn the_lockserver_connection_is_a_metric_and_reported_by_ready() {
    use tandem_tests::lockserver::{Kind, TestLockserver};
    let _db = TestDb::create("admin_lockserver").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let settled = async |connected: f64| {
        for _ in 0..100 {
            if tandem.metric("tandem_proxy_lockserver_connected").await == connected {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("tandem_proxy_lockserver_connected never became {connected}");
    };
    settled(1.0).await;
    let ready = http_get(tandem.admin, "/ready").await;
    assert!(ready.contains(" 200 "), "{ready}");
    assert!(ready.contains("lockserver: connected"), "{ready}");
    lockserver.stop().await;
    settled(0.0).await;
    let ready = http_get(tandem.admin, "/ready").await;
    assert!(ready.contains(" 200 "), "{ready}");
    assert!(ready.contains("lockserver: unreachable"), "{ready}");
    tandem.shutdown().await;
}
