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
