//! Graceful shutdown with MySQL clients: an idle session is told (error 1053) and
//! closed; a busy one finishes its statement first.

use mysql_async::prelude::*;
use std::time::Duration;
use tandem_tests::mysql::{self as my, MyTestDb, err_code, raw_login};

#[tokio::test]
async fn idle_sessions_close_and_busy_ones_finish_first() {
    let db = MyTestDb::create("shutdown").await;
    let tandem = my::start().await;
    let (mut idle, _) = raw_login(my::addr(&tandem)).await;
    let mut busy = my::connect(&tandem, &db.name).await;
    let running = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = busy.query_first("SELECT SLEEP(1)").await;
        r
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tandem.shutdown().await;
    assert_eq!(
        running.await.unwrap().unwrap(),
        Some(0),
        "the statement finished"
    );
    let packets = idle.recv_to_close().await;
    assert_eq!(packets.len(), 1, "{packets:?}");
    assert_eq!(err_code(&packets[0].1), Some(1053));
}

/// A session inside a transaction is given the drain timeout to end it: its COMMIT
/// runs, then it is told (1053) and closed. One with autocommit off but no transaction
/// started closes at once, as an idle one does.
#[tokio::test]
async fn a_session_inside_a_transaction_may_end_it_before_it_closes() {
    let db = MyTestDb::create("drain_trx").await;
    let mut direct = db.direct().await;
    direct
        .query_drop("CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 0)")
        .await
        .unwrap();
    let tandem = my::start().await;
    let mut in_trx = my::connect(&tandem, &db.name).await;
    in_trx.query_drop("START TRANSACTION").await.unwrap();
    in_trx
        .query_drop("UPDATE t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    let mut autocommit_off = my::connect(&tandem, &db.name).await;
    autocommit_off
        .query_drop("SET autocommit = 0")
        .await
        .unwrap();
    let stopping = tokio::spawn(tandem.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = autocommit_off.query_drop("SELECT 1").await.unwrap_err();
    assert!(
        !matches!(e, mysql_async::Error::Server(_)) || e.to_string().contains("1053"),
        "{e}"
    );
    in_trx.query_drop("COMMIT").await.unwrap();
    let e = in_trx.query_drop("SELECT 1").await.unwrap_err();
    assert!(
        !matches!(e, mysql_async::Error::Server(_)) || e.to_string().contains("1053"),
        "{e}"
    );
    stopping.await.expect("shutdown finished in time");
    let v: Option<i32> = direct
        .query_first("SELECT v FROM t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(v, Some(1), "the transaction's work committed");
}
