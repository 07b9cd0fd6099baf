//! Graceful shutdown: idle sessions end at once with 57P01, busy ones finish their
//! request first.

use std::time::Duration;
use tandem_tests::expect_msg;
use tandem_tests::harness::{Tandem, TestDb};
use tandem_tests::raw_pg::RawPg;

/// The session is told it ends (57P01), then closed.
async fn told_why_and_closed(session: &mut RawPg) {
    let msgs = session.recv_to_close().await;
    let fatal = msgs.iter().find(|m| m.tag == b'E').expect("told why");
    assert_eq!(fatal.sqlstate().as_deref(), Some("57P01"));
}

#[tokio::test]
async fn sessions_close_at_their_next_sync_point() {
    let db = TestDb::create("shutdown").await;
    let tandem = Tandem::start().await;
    let addr = tandem.pg;
    let mut idle = RawPg::startup(addr, "postgres", &db.name).await;
    let mut busy = RawPg::startup(addr, "postgres", &db.name).await;
    busy.query("SELECT pg_sleep(1), 'done'").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(tandem.shutdown());

    told_why_and_closed(&mut idle).await;

    // The busy session gets its result, then the same message.
    expect_msg!(busy, b'T');
    let row = expect_msg!(busy, b'D');
    assert!(String::from_utf8_lossy(&row.body).ends_with("done"));
    expect_msg!(busy, b'C');
    expect_msg!(busy, b'Z');
    let fatal = expect_msg!(busy, b'E');
    assert_eq!(fatal.sqlstate().as_deref(), Some("57P01"));
    assert!(busy.recv().await.is_none());

    stopping.await.expect("shutdown finished in time");
    // New connections are refused once the listener is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_session_busy_past_the_drain_timeout_is_cut() {
    let db = TestDb::create("drain").await;
    let tandem = Tandem::start_with(|c| c.shutdown.drain_timeout_ms = 300).await;
    let mut busy = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    busy.query("SELECT pg_sleep(30)").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    tandem.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    told_why_and_closed(&mut busy).await;
    tandem_tests::harness::eventually("the backend is gone", || async {
        db.backend_count().await == 0
    })
    .await;
}

/// A session inside a transaction block (a branch of a global transaction, perhaps) is
/// given the drain timeout to end it, as PgBouncer's safe shutdown gives it: its COMMIT
/// runs, then it closes with 57P01. An idle one closes at once meanwhile.
#[tokio::test]
async fn a_session_inside_a_block_may_end_it_before_it_closes() {
    let db = TestDb::create("drain_block").await;
    db.one_row_table().await;
    let tandem = Tandem::start().await;
    let mut idle = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let mut block = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    block
        .run_each(&["BEGIN", "UPDATE t SET v = 1 WHERE id = 1"])
        .await;
    let stopping = tokio::spawn(tandem.shutdown());
    told_why_and_closed(&mut idle).await;

    let replies = block.simple("COMMIT").await;
    assert_eq!(
        tandem_tests::raw_pg::reply_tags(&replies),
        vec!['C', 'Z'],
        "{replies:?}"
    );
    let fatal = expect_msg!(block, b'E');
    assert_eq!(fatal.sqlstate().as_deref(), Some("57P01"));
    assert!(block.recv().await.is_none());
    stopping.await.expect("shutdown finished in time");
    assert_eq!(db.v_of_row_1().await, 1, "the block's work committed");
}

/// A session bound to a global transaction, inside a block, during the drain: its
/// COMMIT (which tandem answers itself, after the branch's undo row) runs, and the
/// session closes right after it: a statement sent next is not run.
#[tokio::test]
async fn a_bound_session_closes_once_its_branch_committed() {
    use tandem_tests::lockserver::{Kind, TestLockserver};
    let db = TestDb::create("drain_bound").await;
    db.migrate().await;
    db.one_row_table().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let mut bound = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    bound
        .run_each(&[
            "SELECT tandem_begin(30000)",
            "BEGIN",
            "UPDATE t SET v = 1 WHERE id = 1",
        ])
        .await;
    let stopping = tokio::spawn(tandem.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let replies = bound.simple("COMMIT").await;
    assert_eq!(
        tandem_tests::raw_pg::reply_tags(&replies),
        vec!['C', 'Z'],
        "{replies:?}"
    );
    bound.query("SELECT 'not run'").await;
    let msgs = bound.recv_to_close().await;
    assert_eq!(
        tandem_tests::raw_pg::reply_tags(&msgs),
        vec!['E'],
        "closed, the next statement not run: {msgs:?}"
    );
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("57P01"));
    stopping.await.expect("shutdown finished in time");
    assert_eq!(db.v_of_row_1().await, 1, "the branch committed");
    lockserver.stop().await;
}
