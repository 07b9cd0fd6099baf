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
