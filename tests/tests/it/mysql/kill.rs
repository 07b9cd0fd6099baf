//! KILL QUERY with the connection id a client sees (tandem's) reaches the backend thread
//! of that session; a backend thread id (from SHOW PROCESSLIST) still works; a client
//! that disconnects mid-query leaves no statement running.

use mysql_async::prelude::*;
use std::time::{Duration, Instant};
use tandem_tests::harness::eventually;
use tandem_tests::mysql::{self as my, MyTestDb};

/// Waits until MariaDB runs the test's `SELECT SLEEP(30)` in `db`: a KILL QUERY sent
/// before it starts would find an idle thread and stop nothing.
async fn sleep_running(db: &MyTestDb) {
    eventually("SLEEP(30) is running", || async {
        let running: Option<i64> = db
            .direct()
            .await
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE DB = ? AND INFO = 'SELECT SLEEP(30)'",
                (&db.name,),
            )
            .await
            .unwrap();
        running == Some(1)
    })
    .await;
}

#[tokio::test]
async fn kill_query_with_tandems_id_stops_the_right_statement() {
    let db = MyTestDb::create("kill").await;
    let tandem = my::start().await;
    let mut victim = my::connect(&tandem, &db.name).await;
    let mut bystander = my::connect(&tandem, &db.name).await;
    let mut killer = my::connect(&tandem, &db.name).await;
    let victim_id = victim.id();
    let bystander_backend: Option<u64> = bystander
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap();
    assert!(victim_id >= 1 << 30);

    let started = Instant::now();
    let sleeping = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = victim.query_first("SELECT SLEEP(30)").await;
        (victim, r)
    });
    sleep_running(&db).await;
    killer
        .query_drop(format!("KILL QUERY {victim_id}"))
        .await
        .expect("KILL QUERY with tandem's id");
    let (mut victim, result) = sleeping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the sleep was cut short"
    );
    // MariaDB ends an interrupted SLEEP() with 1 (or error 1317 while sending rows).
    match result {
        Ok(v) => assert_eq!(v, Some(1)),
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1317),
        Err(e) => panic!("unexpected: {e}"),
    }
    let still: Option<i32> = victim.query_first("SELECT 7").await.unwrap();
    assert_eq!(still, Some(7), "KILL QUERY leaves the connection open");
    // Spelled with a comment and the id in parentheses, as the server accepts it.
    let sleeping = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = victim.query_first("SELECT SLEEP(30)").await;
        (victim, r)
    });
    sleep_running(&db).await;
    killer
        .query_drop(format!("KILL /* runaway */ QUERY ({victim_id})"))
        .await
        .expect("KILL QUERY (id) with tandem's id");
    let (mut victim, result) = sleeping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the second sleep was cut short"
    );
    assert!(
        matches!(result, Ok(Some(1)))
            || matches!(&result, Err(mysql_async::Error::Server(e)) if e.code == 1317),
        "{result:?}"
    );
    // The bystander's own backend thread is untouched.
    let again: Option<u64> = bystander
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap();
    assert_eq!(again, bystander_backend);
    assert_eq!(tandem.metric("tandem_mysql_kills_mapped_total").await, 2.0);

    // KILL CONNECTION with tandem's id ends that session; its next query fails.
    let bystander_id = bystander.id();
    killer
        .query_drop(format!("KILL CONNECTION {bystander_id}"))
        .await
        .unwrap();
    assert!(bystander.query_drop("SELECT 1").await.is_err());

    // A backend thread id passes through untouched.
    let victim_backend: Option<u64> = victim.query_first("SELECT CONNECTION_ID()").await.unwrap();
    let sleeping = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = victim.query_first("SELECT SLEEP(30)").await;
        r
    });
    sleep_running(&db).await;
    killer
        .query_drop(format!("KILL QUERY {}", victim_backend.unwrap()))
        .await
        .unwrap();
    let r = sleeping.await.unwrap();
    assert!(matches!(r, Ok(Some(1))) || r.is_err());
    drop(bystander);
    killer.disconnect().await.unwrap();
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_query_leaves_no_statement_running() {
    let db = MyTestDb::create("leave").await;
    let tandem = my::start().await;
    let mut conn = my::connect(&tandem, &db.name).await;
    let running = tokio::spawn(async move {
        let _: Result<Option<i64>, _> = conn.query_first("SELECT SLEEP(60)").await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.abort();
    eventually(
        "the backend statement is stopped and its connection gone",
        || async { db.backend_count().await == 0 },
    )
    .await;
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}
