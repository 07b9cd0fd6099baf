//! CancelRequest goes to the backend that runs the client's query, through tandem's own
//! BackendKeyData.

use std::time::{Duration, Instant};
use tandem_tests::harness::{Tandem, TestDb};
use tandem_tests::raw_pg::{RawPg, frame};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn cancelling_pg_sleep_through_the_proxy() {
    let db = TestDb::create("cancel").await;
    let tandem = Tandem::start().await;
    let client = tandem.connect(&db.name).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move {
        let result = client.simple_query("SELECT pg_sleep(30)").await;
        (result, client)
    });
    // Cancel once the query is running at the backend.
    tandem_tests::harness::eventually("pg_sleep is running", || async {
        let direct = db.direct().await;
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel request accepted");
    let (result, client) = sleeper.await.unwrap();
    let err = result.expect_err("the query was cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // The session is still usable.
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(client);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn a_forged_cancel_key_cancels_nothing() {
    let db = TestDb::create("forged").await;
    let tandem = Tandem::start().await;
    let mut victim = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let (pid, secret) = victim.key.unwrap();
    victim.query("SELECT pg_sleep(1.5), 'finished'").await;
    let mut cancel = tokio::net::TcpStream::connect(tandem.pg).await.unwrap();
    let mut packet = 16i32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80_877_102i32.to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(&secret.wrapping_add(1).to_be_bytes());
    cancel.write_all(&packet).await.unwrap();
    let msgs = victim.recv_until(b'Z').await;
    assert!(
        msgs.iter().all(|m| m.tag != b'E'),
        "the query was cancelled by a forged key"
    );
    assert!(msgs.iter().any(|m| m.tag == b'D'));
    victim.send(&frame(b'X', &[])).await;
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}
