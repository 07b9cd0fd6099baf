//! Limits answer with the protocol's own errors.

use tandem_tests::harness::{Tandem, TestDb};

#[tokio::test]
async fn clients_over_the_limit_get_too_many_connections() {
    let db = TestDb::create("limit").await;
    let tandem = Tandem::start_with(|c| c.postgres[0].max_client_connections = 2).await;
    let a = tandem.connect(&db.name).await;
    let b = tandem.connect(&db.name).await;
    let err = tandem
        .config(&db.name)
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("the third client is refused");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS)
    );
    drop(a);
    tandem_tests::harness::eventually("a slot frees up", || async {
        tandem.metric("tandem_pg_clients_active").await < 2.0
    })
    .await;
    let c = tandem.connect(&db.name).await;
    let n: i32 = c.query_one("SELECT 3", &[]).await.unwrap().get(0);
    assert_eq!(n, 3);
    let n: i32 = b.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
    drop((b, c));
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}
