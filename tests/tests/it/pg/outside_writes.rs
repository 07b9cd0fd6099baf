//! Writes outside a global transaction, through a second proxy of the same database:
//! a row an unfinished global transaction holds is never overwritten (the write waits
//! for the global transaction, or fails with 55P03), and rows nobody holds are written
//! at once.

use super::at_mode::{balance, one, prepare, rolled_back, rows_of};
use super::at_protocols::tags;
use std::time::{Duration, Instant};
use tandem_proxy::config::OutsideWrites;
use tandem_tests::harness::{Tandem, eventually};
use tandem_tests::lockserver::{Kind, RELEASE_AFTER_IDLE, TestLockserver};
use tandem_tests::raw_pg::{Msg, RawPg};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// A statement refused as a write that may change a held row is: with 55P03 (`what`
/// says which). Returns the error.
#[track_caller]
fn assert_lock_not_available<T: std::fmt::Debug>(
    result: Result<T, tokio_postgres::Error>,
    what: &str,
) -> tokio_postgres::Error {
    let err = result.expect_err(what);
    assert_eq!(
        err.code(),
        Some(&SqlState::LOCK_NOT_AVAILABLE),
        "{what}: {err:?}"
    );
    err
}

/// A batch's replies, `tags` in all, the one at `failed` an error of `sqlstate`, and
/// its ReadyForQuery of `status`.
fn batch_failed(replies: &[Msg], tags_expected: &str, failed: usize, sqlstate: &str, status: u8) {
    assert_eq!(tags(replies), tags_expected, "{replies:?}");
    assert_eq!(
        replies[failed].sqlstate().as_deref(),
        Some(sqlstate),
        "{replies:?}"
    );
    assert_eq!(replies.last().map(|m| m.body.to_vec()), Some(vec![status]));
}

/// An embedded lockserver, a proxy of it for global transactions, and a second one for
/// the writes outside them (`mode`).
async fn proxies(mode: OutsideWrites) -> (TestLockserver, Tandem, Tandem) {
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let global = Tandem::start_for(&lockserver).await;
    let outside = outside_proxy(&lockserver, mode).await;
    (lockserver, global, outside)
}

/// A second proxy of the same lockserver, for the writes outside global transactions.
async fn outside_proxy(lockserver: &TestLockserver, mode: OutsideWrites) -> Tandem {
    let endpoint = format!("http://{}", lockserver.grpc);
    Tandem::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.lockserver.outside_writes = mode;
        c.lockserver.lock_wait_ms = 10_000;
    })
    .await
}

/// No global lock is left; the proxies and the lockserver stop.
async fn finish(lockserver: TestLockserver, proxies: [Tandem; 2]) {
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
    for proxy in proxies {
        proxy.shutdown().await;
    }
    lockserver.stop().await;
}

/// Session `a` of `tandem` holds row `id` in an unfinished global transaction (its
/// local transaction committed, as AT does at once for an autocommit write).
async fn hold_row(tandem: &Tandem, database: &str, id: i32) -> Client {
    let a = tandem.connect(database).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute(&format!("UPDATE accounts SET balance = 1 WHERE id = {id}"))
        .await
        .unwrap();
    a
}

#[tokio::test]
async fn an_outside_write_to_a_held_row_waits_for_the_rollback_then_applies_over_the_restored_row()
{
    let orders = prepare("outside_wait").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Wait).await;
    let direct = orders.direct().await;
    let a = hold_row(&global, &orders.name, 2).await;

    // Simple protocol, autocommit.
    let b = outside.connect(&orders.name).await;
    let simple = tokio::spawn(async move {
        let r = b
            .batch_execute("UPDATE accounts SET balance = balance + 5 WHERE id = 2")
            .await;
        (r, b)
    });
    // Extended protocol, autocommit, with parameters.
    let c = outside.connect(&orders.name).await;
    let extended = tokio::spawn(async move {
        let r = c
            .execute(
                "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                &[&100i64, &2i32],
            )
            .await;
        (r, c)
    });
    // A row nobody holds, in the same table: written at once.
    let d = outside.connect(&orders.name).await;
    let started = Instant::now();
    d.batch_execute("UPDATE accounts SET balance = balance + 7 WHERE id = 3")
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(balance(&direct, 3).await, 1007);

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !simple.is_finished(),
        "the simple-protocol write did not wait"
    );
    assert!(
        !extended.is_finished(),
        "the extended-protocol write did not wait"
    );
    assert_eq!(
        balance(&direct, 2).await,
        1,
        "the held row is as the global transaction left it"
    );

    // The rollback meets no dirty write.
    rolled_back(&a).await;
    let (r, _b) = simple.await.unwrap();
    r.expect("the simple write runs once the row is free");
    let (r, _c) = extended.await.unwrap();
    assert_eq!(r.expect("the extended write runs once the row is free"), 1);
    assert_eq!(
        balance(&direct, 2).await,
        1105,
        "both writes applied to the restored row"
    );
    finish(lockserver, [outside, global]).await;
}

#[tokio::test]
async fn an_outside_write_to_a_held_row_fails_with_55p03_when_configured_to_fail() {
    let orders = prepare("outside_fail").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    let a = hold_row(&global, &orders.name, 4).await;

    let b = outside.connect(&orders.name).await;
    let started = Instant::now();
    assert_lock_not_available(
        b.batch_execute("UPDATE accounts SET balance = 99 WHERE id = 4")
            .await,
        "a held row is not written",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it failed at once"
    );
    assert_lock_not_available(
        b.execute("DELETE FROM accounts WHERE id = $1", &[&4i32])
            .await,
        "a held row is not deleted",
    );
    // An upsert without a column list names its key by the table's column order.
    assert_lock_not_available(b
        .batch_execute(
            "INSERT INTO accounts VALUES (4, 99, 'x') ON CONFLICT (id) DO UPDATE SET balance = excluded.balance",
        )
        .await, "a held row is not upserted");
    // An upsert from a query (Django's multi-row one) names its keys by that query.
    assert_lock_not_available(
        b.execute(
            "INSERT INTO accounts (id, balance) SELECT * FROM UNNEST($1::int[], $2::int8[]) \
             ON CONFLICT (id) DO UPDATE SET balance = excluded.balance",
            &[&vec![5i32, 4], &vec![98i64, 99]],
        )
        .await,
        "a held row is not upserted from a query",
    );
    // The session goes on; autocommit writes elsewhere work.
    b.batch_execute("UPDATE accounts SET balance = 50 WHERE id = 5")
        .await
        .unwrap();

    // Inside the client's own transaction the refusal fails that transaction, as a
    // database error would.
    b.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("UPDATE accounts SET balance = 51 WHERE id = 5")
        .await
        .unwrap();
    assert_lock_not_available(
        b.batch_execute("UPDATE accounts SET balance = 99 WHERE id = 4")
            .await,
        "a held row is not written",
    );
    let err = b
        .batch_execute("SELECT 1")
        .await
        .expect_err("the transaction is failed");
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    b.batch_execute("ROLLBACK").await.unwrap();

    assert_eq!(balance(&direct, 4).await, 1);
    assert_eq!(
        balance(&direct, 5).await,
        50,
        "the failed transaction left nothing"
    );
    rolled_back(&a).await;
    assert_eq!(balance(&direct, 4).await, 1000, "rolled back exactly");
    // Once the lock is gone the same write goes through.
    let b = &b;
    eventually(
        "the outside write succeeds after the rollback",
        || async move {
            b.batch_execute("UPDATE accounts SET balance = 99 WHERE id = 4")
                .await
                .is_ok()
        },
    )
    .await;
    assert_eq!(balance(&direct, 4).await, 99);
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn without_a_reachable_lockserver_outside_writes_run_and_are_counted() {
    let orders = prepare("outside_down").await;
    // Nothing listens on the lockserver endpoint.
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = "http://127.0.0.1:9".into()).await;
    let b = tandem.connect(&orders.name).await;
    // A write tandem cannot check row by row runs too (it is not refused as where a
    // table may hold global locks).
    b.batch_execute("SELECT 1; UPDATE accounts SET balance = 3 WHERE id = 3")
        .await
        .unwrap();
    b.batch_execute("UPDATE accounts SET balance = 5 WHERE id = 1")
        .await
        .unwrap();
    b.execute("DELETE FROM accounts WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    let direct = orders.direct().await;
    assert_eq!(balance(&direct, 1).await, 5);
    assert_eq!(balance(&direct, 3).await, 3);
    let left: i64 = direct
        .query_one("SELECT count(*) FROM accounts WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert_eq!(
        tandem
            .metric("tandem_pg_outside_writes_unchecked_total")
            .await,
        3.0
    );
    tandem.shutdown().await;
}

/// A global transaction inserts row 50 and commits locally while an outside upsert of
/// the same key waits on that row in the database: the upsert's check by its own
/// predicate saw nothing, so only the check of the rows it returned catches it.
async fn upsert_meets_a_row_inserted_by_a_global_transaction(
    mode: OutsideWrites,
    decision: &str,
    extended: bool,
) -> (
    Result<(), tokio_postgres::Error>,
    Option<i64>,
    Option<String>,
) {
    let orders = prepare(&format!("outside_upsert_{decision}_{extended}")).await;
    let (lockserver, global, outside) = proxies(mode).await;
    // Another row held: the table is announced, so outside writes to it are checked.
    let _holder = hold_row(&global, &orders.name, 5).await;
    let g = global.connect(&orders.name).await;
    one(&g, "SELECT tandem_begin(60000)").await.unwrap();
    g.batch_execute("BEGIN; INSERT INTO accounts (id, balance) VALUES (50, 100)")
        .await
        .unwrap();
    let w = outside.connect(&orders.name).await;
    let upsert = tokio::spawn(async move {
        let sql = "INSERT INTO accounts (id, balance) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + EXCLUDED.balance";
        if extended {
            w.execute(sql, &[&50i32, &5i64]).await.map(|_| ())
        } else {
            let literal = sql.replace("$1", "50").replace("$2", "5");
            w.batch_execute(&literal).await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !upsert.is_finished(),
        "the upsert waits on the uncommitted row"
    );
    g.batch_execute("COMMIT").await.unwrap();
    let status = if decision == "commit" {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !upsert.is_finished(),
            "the upsert must wait for the global transaction holding row 50"
        );
        one(&g, "SELECT tandem_commit()").await.unwrap()
    } else {
        None
    };
    let result = upsert.await.unwrap();
    let status = match status {
        Some(s) => Some(s),
        None => one(&g, "SELECT tandem_rollback()").await.unwrap(),
    };
    let direct = orders.direct().await;
    let row = direct
        .query_opt("SELECT balance FROM accounts WHERE id = 50", &[])
        .await
        .unwrap()
        .map(|r| r.get::<_, i64>(0));
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
    (result, row, status)
}

#[tokio::test]
async fn an_outside_upsert_waits_for_the_global_transaction_that_inserted_its_row() {
    for extended in [false, true] {
        let (result, row, status) = upsert_meets_a_row_inserted_by_a_global_transaction(
            OutsideWrites::Wait,
            "commit",
            extended,
        )
        .await;
        result.expect("the upsert goes through once the global transaction committed");
        assert_eq!(status.as_deref(), Some("Committed"), "extended: {extended}");
        assert_eq!(
            row,
            Some(105),
            "the upsert applied over the committed row (extended: {extended})"
        );
    }
}

#[tokio::test]
async fn an_outside_upsert_over_a_held_row_fails_and_the_rollback_is_exact() {
    let (result, row, status) =
        upsert_meets_a_row_inserted_by_a_global_transaction(OutsideWrites::Fail, "rollback", true)
            .await;
    let err = result.expect_err("the upsert must not change a held row");
    assert_eq!(err.code(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err:?}");
    assert_eq!(status.as_deref(), Some("Rollbacked"), "no dirty write");
    assert_eq!(row, None, "the global transaction's insert is undone");
}

#[tokio::test]
async fn a_portal_from_an_earlier_batch_executed_behind_other_requests_is_refused_too() {
    use tandem_tests::expect_msg;
    use tandem_tests::raw_pg::{RawPg, frame};
    let orders = prepare("outside_portal_piped").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    // Two sessions bind a portal each while the table holds no global lock (nothing
    // to check yet); then global transactions take both rows.
    let mut sessions = Vec::new();
    for id in [4, 5] {
        let mut b = RawPg::startup(outside.pg, "postgres", &orders.name).await;
        b.query("BEGIN").await;
        b.recv_until(b'Z').await;
        let update = format!("w\0UPDATE accounts SET balance = 9 WHERE id = {id}\0\0\0");
        let mut parse = frame(b'P', update.as_bytes());
        parse.extend_from_slice(&frame(b'S', b""));
        b.send(&parse).await;
        b.recv_until(b'Z').await;
        let mut bind = frame(b'B', b"p\0w\0\0\0\0\0\0\0");
        bind.extend_from_slice(&frame(b'S', b""));
        b.send(&bind).await;
        let bound = b.recv_until(b'Z').await;
        assert_eq!(bound.len(), 2, "{bound:?}");
        sessions.push((id, b));
    }
    let mut holders = Vec::new();
    for id in [4, 5] {
        holders.push(hold_row(&global, &orders.name, id).await);
    }
    // The portal runs in a later batch: behind a Query still in flight, and behind
    // extended messages not yet synced.
    let aheads = [
        (frame(b'Q', b"SELECT 1\0"), &[b'T', b'D', b'C', b'Z'][..]),
        (
            [
                frame(b'P', b"\0SELECT 2\0\0\0"),
                frame(b'B', b"\0\0\0\0\0\0\0\0"),
                frame(b'E', b"\0\0\0\0\0"),
            ]
            .concat(),
            &[b'1', b'2', b'D', b'C'][..],
        ),
    ];
    for ((id, mut b), (ahead, answered)) in sessions.into_iter().zip(aheads) {
        let mut later = ahead;
        later.extend_from_slice(&frame(b'E', b"p\0\0\0\0\0"));
        later.extend_from_slice(&frame(b'S', b""));
        b.send(&later).await;
        for &tag in answered {
            expect_msg!(b, tag);
        }
        let refused = expect_msg!(b, b'E');
        assert_eq!(refused.sqlstate().as_deref(), Some("0A000"), "{refused:?}");
        expect_msg!(b, b'Z');
        b.query("ROLLBACK").await;
        b.recv_until(b'Z').await;
        assert_eq!(
            balance(&direct, id).await,
            1,
            "as the global transaction left it"
        );
    }
    for a in holders {
        // No dirty write: the rollback completes.
        rolled_back(&a).await;
    }
    assert_eq!(balance(&direct, 4).await, 1000);
    assert_eq!(balance(&direct, 5).await, 1000);
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_portal_whose_statement_was_replaced_by_a_read_still_counts_as_the_write_it_binds() {
    use tandem_tests::expect_msg;
    use tandem_tests::raw_pg::{RawPg, frame};
    let orders = prepare("outside_portal_replaced").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    let mut b = RawPg::startup(outside.pg, "postgres", &orders.name).await;
    b.query("BEGIN").await;
    b.recv_until(b'Z').await;
    // Bound while the table holds no global lock; then its statement is closed and
    // prepared anew, under the same name, as a read. The portal still runs the UPDATE.
    let bound = [
        frame(
            b'P',
            b"w\0UPDATE accounts SET balance = 9 WHERE id = 3\0\0\0",
        ),
        frame(b'B', b"p\0w\0\0\0\0\0\0\0"),
        frame(b'C', b"Sw\0"),
        frame(b'P', b"w\0SELECT 1\0\0\0"),
        frame(b'S', b""),
    ]
    .concat();
    b.send(&bound).await;
    for tag in [b'1', b'2', b'3', b'1', b'Z'] {
        expect_msg!(b, tag);
    }
    let holder = hold_row(&global, &orders.name, 3).await;
    let mut execute = frame(b'E', b"p\0\0\0\0\0");
    execute.extend_from_slice(&frame(b'S', b""));
    b.send(&execute).await;
    let refused = expect_msg!(b, b'E');
    assert_eq!(refused.sqlstate().as_deref(), Some("0A000"), "{refused:?}");
    expect_msg!(b, b'Z');
    b.query("ROLLBACK").await;
    b.recv_until(b'Z').await;
    assert_eq!(
        balance(&direct, 3).await,
        1,
        "as the global transaction left it"
    );
    // No dirty write: the rollback completes, and restores the row.
    rolled_back(&holder).await;
    assert_eq!(balance(&direct, 3).await, 1000);
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_portal_bound_before_its_table_held_locks_is_not_executed_over_a_held_row() {
    let orders = prepare("outside_portal").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut b = outside.connect(&orders.name).await;
    let tx = b.transaction().await.unwrap();
    let update = tx
        .prepare("UPDATE accounts SET balance = 9 WHERE id = $1 RETURNING id")
        .await
        .unwrap();
    // Bound while no table holds global locks: nothing to check yet.
    let portal = tx.bind(&update, &[&4i32]).await.unwrap();
    // Then a global transaction takes row 4 (its table is announced).
    let a = hold_row(&global, &orders.name, 4).await;
    let err = tx
        .query_portal(&portal, 0)
        .await
        .expect_err("the portal must not write a held row unchecked");
    assert_eq!(
        err.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{err:?}"
    );
    drop(tx);
    let direct = orders.direct().await;
    assert_eq!(
        balance(&direct, 4).await,
        1,
        "as the global transaction left it"
    );
    // No dirty write: the rollback completes.
    rolled_back(&a).await;
    assert_eq!(balance(&direct, 4).await, 1000);
    drop(b);
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
}

/// Between sync points the backend cannot say which schema's table an unqualified
/// name means: a write sent behind a busy statement, whose name only the tenant's
/// search_path finds, must still be checked against the tenant table's global locks
/// (the side connection's search_path finds public.accounts, which holds none).
#[tokio::test]
async fn a_pipelined_write_is_checked_against_the_table_its_search_path_finds() {
    let orders = prepare("outside_tenant").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE SCHEMA tenant;
             CREATE TABLE tenant.accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO tenant.accounts VALUES (1, 500), (2, 500);",
        )
        .await
        .unwrap();
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let a = global.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute("UPDATE tenant.accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    let public_before = super::at_mode::dump(&direct).await;

    let b = outside.connect(&orders.name).await;
    b.batch_execute("SET search_path = tenant").await.unwrap();
    // Both queries leave before either is answered.
    let (slow, write) = tokio::join!(
        b.simple_query("SELECT pg_sleep(0.3)"),
        b.simple_query("UPDATE accounts SET balance = 99 WHERE id = 1"),
    );
    slow.unwrap();
    let err = write.expect_err("a held row of tenant.accounts is not written");
    assert_eq!(err.code(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err:?}");
    // A row of the same table nobody holds is written, pipelined too.
    let (slow, write) = tokio::join!(
        b.simple_query("SELECT pg_sleep(0.3)"),
        b.simple_query("UPDATE accounts SET balance = 98 WHERE id = 2"),
    );
    slow.unwrap();
    write.unwrap();
    // A name the session resolved earlier (to public.accounts), then a SET and the
    // write pipelined behind it: the remembered answer is no longer the session's.
    let c = outside.connect(&orders.name).await;
    c.batch_execute("UPDATE accounts SET balance = balance WHERE id = 1")
        .await
        .unwrap();
    let (set, write) = tokio::join!(
        c.simple_query("SET search_path = tenant"),
        c.simple_query("UPDATE accounts SET balance = 97 WHERE id = 1"),
    );
    set.unwrap();
    let err = write.expect_err("a held row of tenant.accounts is not written");
    assert_eq!(err.code(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err:?}");
    let tenant = |id: i32| {
        let direct = &direct;
        async move {
            direct
                .query_one("SELECT balance FROM tenant.accounts WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!((tenant(1).await, tenant(2).await), (1, 98));
    assert_eq!(super::at_mode::dump(&direct).await, public_before);

    rolled_back(&a).await;
    assert_eq!(tenant(1).await, 500, "rolled back exactly");
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
}

/// tandem's own statements in a client's transaction leave no portal open behind
/// them: a COPY … FREEZE, which PostgreSQL refuses after "prior transaction activity",
/// still works after a checked write in the same transaction.
#[tokio::test]
async fn copy_freeze_works_after_a_checked_write_in_the_same_transaction() {
    use futures::SinkExt;
    let orders = prepare("outside_copy_freeze").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    // Another row held: the table is announced, so the write below is checked.
    let _holder = hold_row(&global, &orders.name, 5).await;
    let b = outside.connect(&orders.name).await;
    b.batch_execute("BEGIN; CREATE TABLE bulk (v int)")
        .await
        .unwrap();
    b.batch_execute("UPDATE accounts SET balance = 3 WHERE id = 1")
        .await
        .unwrap();
    let sink = b
        .copy_in("COPY bulk FROM STDIN WITH (FREEZE)")
        .await
        .unwrap();
    let mut sink = std::pin::pin!(sink);
    sink.send(bytes::Bytes::from_static(b"1\n2\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.expect("COPY FREEZE runs"), 2);
    b.batch_execute("COMMIT").await.unwrap();
    let direct = orders.direct().await;
    assert_eq!(balance(&direct, 1).await, 3);
    let copied: i64 = direct
        .query_one("SELECT count(*) FROM bulk", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(copied, 2);
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
}

/// Session `a` of `tandem` deletes row `id` in an unfinished global transaction,
/// which holds its key: an INSERT of that key outside would leave the rollback a row
/// in the way.
async fn delete_held_row(tandem: &Tandem, database: &str, id: i32) -> Client {
    let a = tandem.connect(database).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute(&format!("DELETE FROM accounts WHERE id = {id}"))
        .await
        .unwrap();
    a
}

async fn present(client: &Client, id: i32) -> bool {
    client
        .query_opt("SELECT 1 FROM accounts WHERE id = $1", &[&id])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn an_outside_insert_of_a_key_a_global_transaction_deleted_fails_and_the_rollback_is_exact() {
    let orders = prepare("outside_insert_fail").await;
    let role = format!("{}_insert_only", orders.name);
    let direct = orders.direct().await;
    direct
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} NOLOGIN;
             GRANT INSERT ON accounts TO {role};"
        ))
        .await
        .unwrap();
    let before = super::at_mode::dump(&direct).await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let a = delete_held_row(&global, &orders.name, 2).await;
    let b = outside.connect(&orders.name).await;

    assert_lock_not_available(
        b.batch_execute("INSERT INTO accounts VALUES (2, 7, 'x')")
            .await
            .map(|()| 0),
        "simple",
    );
    assert_lock_not_available(
        b.execute(
            "INSERT INTO accounts (balance, id) VALUES ($1, $2)",
            &[&7i64, &2i32],
        )
        .await,
        "extended",
    );
    assert_lock_not_available(
        b.execute(
            "INSERT INTO accounts (id, balance) VALUES (50, 1), ('2'::int8, 1)",
            &[],
        )
        .await,
        "multi-row with a cast literal",
    );
    assert_lock_not_available(
        b.execute(
            "INSERT INTO accounts (id, balance) VALUES ($1, 1) ON CONFLICT DO NOTHING",
            &[&2i32],
        )
        .await,
        "ON CONFLICT DO NOTHING",
    );
    assert!(
        !present(&direct, 50).await,
        "a refused INSERT leaves no row"
    );

    // Inside the client's transaction the refusal fails it.
    b.batch_execute("BEGIN; INSERT INTO accounts (id, balance) VALUES (51, 1)")
        .await
        .unwrap();
    assert_lock_not_available(
        b.batch_execute("INSERT INTO accounts (id, balance) VALUES (2, 1)")
            .await
            .map(|()| 0),
        "in a transaction",
    );
    let e = b.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    b.batch_execute("ROLLBACK").await.unwrap();
    assert!(!present(&direct, 51).await);

    // A role that may only INSERT: free keys go in, the held one is refused.
    b.batch_execute(&format!("SET ROLE {role}")).await.unwrap();
    b.batch_execute("INSERT INTO accounts (id, balance) VALUES (60, 6)")
        .await
        .expect("a free key goes in without SELECT on the table");
    assert_lock_not_available(
        b.execute(
            "INSERT INTO accounts (id, balance) VALUES ($1, 1)",
            &[&2i32],
        )
        .await,
        "insert-only role",
    );
    b.batch_execute("RESET ROLE").await.unwrap();

    // A key of a type the session's search_path does not see: the check names the type
    // with its schema.
    direct
        .batch_execute(
            "CREATE DOMAIN code AS text; CREATE TABLE tags (code code PRIMARY KEY, n int);
             INSERT INTO tags VALUES ('a', 1);",
        )
        .await
        .unwrap();
    let tagger = global.connect(&orders.name).await;
    one(&tagger, "SELECT tandem_begin(60000)").await.unwrap();
    tagger
        .batch_execute("DELETE FROM tags WHERE code = 'a'")
        .await
        .unwrap();
    b.batch_execute("SET search_path = pg_catalog")
        .await
        .unwrap();
    assert_lock_not_available(
        b.batch_execute("INSERT INTO public.tags VALUES ('a', 2)")
            .await
            .map(|()| 0),
        "a domain key",
    );
    b.batch_execute("INSERT INTO public.tags VALUES ('b', 2)")
        .await
        .expect("a free key of the domain goes in");
    b.batch_execute("RESET search_path").await.unwrap();
    // A key of a type in a schema the role may not use: the check cannot name the
    // type, so the INSERT runs unchecked, as without tandem, and never fails the
    // client's transaction.
    direct
        .batch_execute(&format!(
            "CREATE SCHEMA kinds; CREATE DOMAIN kinds.label AS text;
             CREATE TABLE labels (label kinds.label PRIMARY KEY, n int);
             INSERT INTO labels VALUES ('held');
             GRANT INSERT ON labels TO {role};"
        ))
        .await
        .unwrap();
    tagger
        .batch_execute("UPDATE labels SET n = 1 WHERE label = 'held'")
        .await
        .unwrap();
    b.batch_execute(&format!("SET ROLE {role}")).await.unwrap();
    b.batch_execute("INSERT INTO labels (label) VALUES ('x')")
        .await
        .expect("runs unchecked");
    b.batch_execute("BEGIN; INSERT INTO accounts (id, balance) VALUES (62, 1)")
        .await
        .unwrap();
    b.execute("INSERT INTO labels (label) VALUES ($1::text)", &[&"y"])
        .await
        .expect("runs unchecked inside a transaction");
    b.batch_execute("COMMIT; RESET ROLE").await.unwrap();
    let labels: Vec<String> = direct
        .query("SELECT label::text FROM labels ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(labels, ["held", "x", "y"]);
    assert!(present(&direct, 62).await, "the transaction committed");
    rolled_back(&tagger).await;
    let tags: Vec<(String, i32)> = direct
        .query("SELECT code::text, n FROM tags ORDER BY code", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(tags, [("a".to_owned(), 1), ("b".to_owned(), 2)]);

    // A key the server generates or computes is new or unknown: not checked.
    b.batch_execute("INSERT INTO accounts (id, balance) VALUES (60 + 1, 6)")
        .await
        .unwrap();
    assert!(present(&direct, 60).await && present(&direct, 61).await);
    assert!(!present(&direct, 2).await, "the held key stays deleted");

    rolled_back(&a).await;
    direct
        .batch_execute("DELETE FROM accounts WHERE id IN (60, 61, 62)")
        .await
        .unwrap();
    assert_eq!(
        super::at_mode::dump(&direct).await,
        before,
        "rolled back exactly"
    );
    finish(lockserver, [outside, global]).await;
}

/// In wait mode an INSERT of a held key waits, holding nothing: after a commit it goes
/// in; after a rollback the restored row is there, and the INSERT meets it as a
/// duplicate, as it would have without the global transaction.
#[tokio::test]
async fn an_outside_insert_of_a_held_key_waits_for_the_global_transaction() {
    let orders = prepare("outside_insert_wait").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Wait).await;
    let direct = orders.direct().await;
    let before = super::at_mode::dump(&direct).await;

    for decision in ["tandem_rollback", "tandem_commit"] {
        let a = delete_held_row(&global, &orders.name, 3).await;
        let b = outside.connect(&orders.name).await;
        // The wait keeps no transaction of tandem's open, which this would end.
        b.batch_execute("SET idle_in_transaction_session_timeout = 300")
            .await
            .unwrap();
        let insert = tokio::spawn(async move {
            b.execute(
                "INSERT INTO accounts (id, balance, note) VALUES ($1, 7, 'new')",
                &[&3i32],
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!insert.is_finished(), "{decision}: the INSERT waits");
        assert!(
            !present(&direct, 3).await,
            "{decision}: nothing while it waits"
        );
        let status = one(&a, &format!("SELECT {decision}()")).await.unwrap();
        let result = insert.await.unwrap();
        if decision == "tandem_commit" {
            assert_eq!(status.as_deref(), Some("Committed"));
            assert_eq!(result.expect("goes in after the commit"), 1);
            assert_eq!(balance(&direct, 3).await, 7);
        } else {
            assert_eq!(status.as_deref(), Some("Rollbacked"), "no dirty write");
            let e = result.expect_err("the restored row is in the way");
            assert_eq!(e.code(), Some(&SqlState::UNIQUE_VIOLATION), "{e:?}");
            assert_eq!(super::at_mode::dump(&direct).await, before, "exact");
        }
    }
    finish(lockserver, [outside, global]).await;
}

/// A write in a failed transaction block runs nothing, so it is not checked; the
/// client gets PostgreSQL's 25P02 and its session goes on, even when tandem would
/// have had to describe the statement's parameters first.
#[tokio::test]
async fn writes_in_a_failed_transaction_get_25p02_and_the_session_goes_on() {
    let orders = prepare("outside_failed_block").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let a = hold_row(&global, &orders.name, 5).await;
    let b = outside.connect(&orders.name).await;
    // Prepared before the block: their first Bind is where tandem would describe them.
    let insert = b
        .prepare("INSERT INTO accounts (id, balance) VALUES ($1, $2)")
        .await
        .unwrap();
    let update = b
        .prepare("UPDATE accounts SET balance = $1 WHERE id = $2")
        .await
        .unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("SELECT 1 / 0").await.unwrap_err();
    for (statement, params) in [
        (
            &insert,
            [&70i32 as &(dyn tokio_postgres::types::ToSql + Sync), &1i64],
        ),
        (&update, [&1i64, &1i32]),
    ] {
        let e = b.execute(statement, &params).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
            "{e:?}"
        );
    }
    b.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(b.execute(&insert, &[&70i32, &1i64]).await.unwrap(), 1);

    // A ROLLBACK TO SAVEPOINT pipelined ahead of the write revives the block: the
    // write is checked as ever, and row 5 is held.
    let revive = b.prepare("ROLLBACK TO SAVEPOINT s").await.unwrap();
    b.batch_execute("BEGIN; SAVEPOINT s").await.unwrap();
    b.batch_execute("SELECT 1 / 0").await.unwrap_err();
    let (revived, updated) = tokio::join!(
        b.execute(&revive, &[]),
        b.execute(&update, &[&99i64, &5i32])
    );
    revived.unwrap();
    let e = updated.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{e:?}");
    b.batch_execute("ROLLBACK").await.unwrap();
    let direct = orders.direct().await;
    assert_eq!(balance(&direct, 5).await, 1, "the held row is untouched");
    rolled_back(&a).await;
    finish(lockserver, [outside, global]).await;
}

/// pgJDBC closes the statements it dropped ahead of a transaction's BEGIN, and between
/// the BEGIN and the first statement, all in one batch: the BEGIN still runs ahead, so
/// the write after it is checked (at a sync point), not refused.
#[tokio::test]
async fn a_begin_behind_closes_in_one_batch_still_lets_the_write_be_checked() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::{RawPg, frame};
    let orders = prepare("outside_closes_begin").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    let a = hold_row(&global, &orders.name, 5).await;
    let mut raw = RawPg::startup(outside.pg, "postgres", &orders.name).await;
    let batch = |update: &str| {
        let mut batch = Vec::new();
        batch.extend(frame(b'C', b"Sgone_1\0"));
        for sql in ["BEGIN", update] {
            batch.extend(frame(b'P', &parse_body("", sql)));
            batch.extend(frame(b'B', &bind_body("")));
            batch.extend(frame(b'E', b"\0\0\0\0\0"));
            if sql == "BEGIN" {
                batch.extend(frame(b'C', b"Sgone_2\0"));
            }
        }
        batch.extend(frame(b'S', b""));
        batch
    };

    raw.send(&batch(
        "UPDATE accounts SET balance = balance + 10 WHERE id = 1",
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "312C312CZ", "{replies:?}");
    assert_eq!(replies.last().map(|m| m.body.to_vec()), Some(b"T".to_vec()));
    raw.query("COMMIT").await;
    raw.recv_until(b'Z').await;
    assert_eq!(balance(&direct, 1).await, 1010, "the write committed");

    // The held row: checked, and refused.
    raw.send(&batch("UPDATE accounts SET balance = 99 WHERE id = 5"))
        .await;
    let replies = raw.recv_until(b'Z').await;
    let error = replies.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(error.sqlstate().as_deref(), Some("55P03"), "{replies:?}");
    raw.query("ROLLBACK").await;
    raw.recv_until(b'Z').await;
    assert_eq!(balance(&direct, 5).await, 1, "the held row is untouched");
    rolled_back(&a).await;
    finish(lockserver, [outside, global]).await;
}

/// pgJDBC with `autosave` sends a SAVEPOINT in one batch with each later statement of a
/// transaction (behind the Closes of statements it dropped, at times): it runs ahead as
/// a BEGIN does, so the write after it is checked, not refused.
#[tokio::test]
async fn a_savepoint_batched_with_a_write_runs_ahead_and_the_write_is_checked() {
    use super::control::unnamed_batch;
    use tandem_tests::raw_pg::{RawPg, frame};
    let orders = prepare("outside_autosave").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    let a = hold_row(&global, &orders.name, 5).await;
    let mut raw = RawPg::startup(outside.pg, "postgres", &orders.name).await;
    let batch = |savepoint: &str, update: &str| {
        let mut batch = frame(b'C', b"Sgone\0");
        batch.extend(unnamed_batch(&[savepoint, update]));
        batch
    };
    let begin = async |raw: &mut RawPg| {
        raw.query("BEGIN").await;
        raw.recv_until(b'Z').await;
    };

    begin(&mut raw).await;
    raw.send(&batch(
        "SAVEPOINT PGJDBC_AUTOSAVE",
        "UPDATE accounts SET balance = balance + 10 WHERE id = 1",
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "312C12CZ", "{replies:?}");
    assert_eq!(replies.last().map(|m| m.body.to_vec()), Some(b"T".to_vec()));
    raw.query("COMMIT").await;
    raw.recv_until(b'Z').await;
    assert_eq!(balance(&direct, 1).await, 1010, "the write committed");

    // The held row: checked, and refused.
    begin(&mut raw).await;
    raw.send(&batch(
        "SAVEPOINT PGJDBC_AUTOSAVE",
        "UPDATE accounts SET balance = 99 WHERE id = 5",
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    let error = replies.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(error.sqlstate().as_deref(), Some("55P03"), "{replies:?}");
    raw.query("ROLLBACK").await;
    raw.recv_until(b'Z').await;
    assert_eq!(balance(&direct, 5).await, 1, "the held row is untouched");

    // A transaction's first statement comes behind its BEGIN and the SAVEPOINT: both
    // run ahead, in turn.
    raw.send(&unnamed_batch(&[
        "BEGIN",
        "SAVEPOINT PGJDBC_AUTOSAVE",
        "UPDATE accounts SET balance = balance + 10 WHERE id = 2",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12C12CZ", "{replies:?}");
    raw.query("COMMIT").await;
    raw.recv_until(b'Z').await;
    assert_eq!(balance(&direct, 2).await, 1010, "the write committed");

    // A SAVEPOINT that fails when run ahead: the client gets what the backend gives
    // for the batch, the error and the rest skipped to its Sync, and the block is
    // failed.
    begin(&mut raw).await;
    raw.send(&batch(
        "SAVEPOINT 1bad",
        "UPDATE accounts SET balance = balance + 10 WHERE id = 3",
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "3EZ", "{replies:?}");
    assert_eq!(
        replies[1].sqlstate().as_deref(),
        Some("42601"),
        "{replies:?}"
    );
    assert_eq!(replies.last().map(|m| m.body.to_vec()), Some(b"E".to_vec()));
    raw.query("ROLLBACK").await;
    raw.recv_until(b'Z').await;
    assert_eq!(balance(&direct, 3).await, 1000);
    rolled_back(&a).await;
    finish(lockserver, [outside, global]).await;
}

/// A search_path set by `set_config` (no SET tag to show for it) changes which table an
/// unqualified name means: the next write resolves it again, so a write to a row a
/// global transaction holds is caught.
#[tokio::test]
async fn a_search_path_set_by_set_config_is_followed_by_outside_writes() {
    let orders = prepare("outside_set_config").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE SCHEMA s2; CREATE TABLE s2.t5 (id int PRIMARY KEY, v text);
             CREATE TABLE public.t5 (id int PRIMARY KEY, v text);
             INSERT INTO s2.t5 VALUES (1, 's2'); INSERT INTO public.t5 VALUES (1, 'public');",
        )
        .await
        .unwrap();
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let g = global.connect(&orders.name).await;
    one(&g, "SELECT tandem_begin(60000)").await.unwrap();
    g.batch_execute("UPDATE s2.t5 SET v = 'global' WHERE id = 1")
        .await
        .unwrap();
    let b = outside.connect(&orders.name).await;
    for set in [
        "SELECT set_config('search_path', 's2', false)",
        "SELECT pg_catalog.SET_CONFIG('search_path', 's2', true)",
    ] {
        // Resolved to public.t5, and remembered.
        b.batch_execute("UPDATE t5 SET v = 'public!' WHERE id = 1")
            .await
            .unwrap();
        b.batch_execute("BEGIN").await.unwrap();
        b.batch_execute(set).await.unwrap();
        assert_lock_not_available(
            b.batch_execute("UPDATE t5 SET v = 'outside' WHERE id = 1")
                .await,
            "s2.t5's row 1 is held",
        );
        b.batch_execute("ROLLBACK").await.unwrap();
    }
    let v: String = direct
        .query_one("SELECT v FROM s2.t5 WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "global");
    rolled_back(&g).await;
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
}

/// An upsert whose target is another unique key than the primary key: its rows cannot
/// be read before it runs, so the rows it returns are checked after. One over a held
/// row fails (55P03) and changes nothing; one over a free row is written at once.
#[tokio::test]
async fn an_outside_upsert_on_another_unique_key_is_checked_by_the_rows_it_changed() {
    let orders = prepare("outside_natural_key").await;
    let direct = orders.direct().await;
    direct
        .batch_execute("CREATE UNIQUE INDEX accounts_note ON accounts (note)")
        .await
        .unwrap();
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let a = hold_row(&global, &orders.name, 4).await;
    let b = outside.connect(&orders.name).await;
    let upsert = |note: &str| {
        format!(
            "INSERT INTO accounts (id, balance, note) VALUES (40, 7, '{note}') ON CONFLICT (note) DO UPDATE SET balance = 99"
        )
    };
    for in_block in [false, true] {
        if in_block {
            b.batch_execute("BEGIN").await.unwrap();
        }
        assert_lock_not_available(
            b.batch_execute(&upsert("n4")).await,
            "a held row is not upserted",
        );
        if in_block {
            b.batch_execute("ROLLBACK").await.unwrap();
        }
        assert_eq!(balance(&direct, 4).await, 1, "in a block: {in_block}");
    }
    // A free row, and a new one.
    b.batch_execute(&upsert("n5")).await.unwrap();
    assert_eq!(balance(&direct, 5).await, 99);
    b.batch_execute(&upsert("n40")).await.unwrap();
    assert_eq!(balance(&direct, 40).await, 7);
    rolled_back(&a).await;
    assert_eq!(balance(&direct, 4).await, 1000, "rolled back exactly");
    finish(lockserver, [global, outside]).await;
}

/// The protocol's counts of parameters run to 65535. Read as signed, a statement with
/// more than 32767 went unseen: outside a global transaction its INSERT was not
/// checked (it recreated a row a global transaction had deleted, whose rollback then
/// failed), and inside one it was refused with 08P01 naming tandem's statement.
#[tokio::test]
async fn a_statement_of_more_than_32767_parameters_is_read_whole() {
    let db = prepare("outside_many_params").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL, w text, x text, y text)",
        )
        .await
        .unwrap();
    // 33,000 parameters in 6,600 rows (a branch locks at most 10,000 keys).
    const ROWS: i32 = 6_600;
    let sql = format!(
        "INSERT INTO big (id, v, w, x, y) VALUES {}",
        (0..ROWS)
            .map(|r| {
                let p = 5 * r;
                format!(
                    "(${}, ${}, ${}, ${}, ${})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ids: Vec<i32> = (1..=ROWS).collect();
    let texts: Vec<String> = ids.iter().map(|id| format!("v{id}")).collect();
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = ids
        .iter()
        .zip(&texts)
        .flat_map(|(id, v)| [id as _, v as _, v as _, v as _, v as _])
        .collect();
    let count = || async {
        let n: i64 = direct
            .query_one("SELECT count(*) FROM big", &[])
            .await
            .unwrap()
            .get(0);
        n
    };

    // In a global transaction: captured, and rolled back.
    let a = global.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    assert_eq!(a.execute(&sql, &params).await.unwrap(), ROWS as u64);
    // Undoing 6,600 rows may outlast the rollback's wait: it goes on in phase 2.
    let status = one(&a, "SELECT tandem_rollback()").await.unwrap();
    assert!(
        matches!(status.as_deref(), Some("Rollbacked" | "Rollbacking")),
        "{status:?}"
    );
    tandem_tests::harness::eventually_within(
        "the rows are undone",
        Duration::from_secs(60),
        || async { count().await == 0 },
    )
    .await;

    // Outside one: a key a global transaction deleted is held.
    direct
        .batch_execute("INSERT INTO big (id, v) VALUES (5, 'kept')")
        .await
        .unwrap();
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute("DELETE FROM big WHERE id = 5")
        .await
        .unwrap();
    let b = outside.connect(&db.name).await;
    let err = b.execute(&sql, &params).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err:?}");
    rolled_back(&a).await;
    assert_eq!(rows_of(&direct, "big").await, ["(5,kept,,,)"]);
    finish(lockserver, [global, outside]).await;
}

/// A global transaction's COMMIT announces its first lock on a table while a write
/// outside it, let through unchecked while the table held no locks, waits for that
/// transaction's own row lock: the announcement is not acknowledged in time, nothing
/// is registered, and the COMMIT fails with the 40001 that clients retry (not
/// 58000); the outside write then runs, and the retry commits.
#[tokio::test]
async fn an_announcement_an_outside_write_holds_up_is_a_retryable_conflict() {
    let db = prepare("announce_conflict").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let global = tandem.connect(&db.name).await;
    one(&global, "SELECT tandem_begin(30000)").await.unwrap();
    global
        .batch_execute("BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        .await
        .unwrap();
    let outside = tandem.connect(&db.name).await;
    let blocked = tokio::spawn(async move {
        outside
            .batch_execute("UPDATE accounts SET balance = balance + 100 WHERE id = 1")
            .await
            .map(|()| outside)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = global
        .batch_execute("COMMIT")
        .await
        .expect_err("the announcement waits for the outside write");
    assert_eq!(
        err.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE),
        "{err:?}"
    );
    let outside = blocked.await.unwrap().expect("the outside write runs");
    assert_eq!(balance(&outside, 1).await, 1100);
    global
        .batch_execute("BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = 1; COMMIT")
        .await
        .unwrap();
    rolled_back(&global).await;
    assert_eq!(balance(&outside, 1).await, 1100);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// pgJDBC's executeBatch with autocommit off: several statements and one Sync inside
/// the client's block. Each write runs on its own, checked, under a Sync of tandem's
/// the client never sees; one on a held row fails the block and the rest of the batch.
#[tokio::test]
async fn a_batch_of_writes_in_a_block_is_checked_statement_by_statement() {
    use super::control::unnamed_batch;
    use tandem_tests::raw_pg::RawPg;
    let orders = prepare("outside_batch").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    let a = hold_row(&global, &orders.name, 5).await;
    let mut raw = RawPg::startup(outside.pg, "postgres", &orders.name).await;

    raw.simple("BEGIN").await;
    raw.send(&unnamed_batch(&[
        "UPDATE accounts SET balance = balance + 10 WHERE id = 1",
        "INSERT INTO accounts (id, balance) VALUES (9, 9)",
        "UPDATE accounts SET balance = balance + 10 WHERE id = 2",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12C12CZ", "{replies:?}");
    assert_eq!(replies.last().map(|m| m.body.to_vec()), Some(b"T".to_vec()));
    raw.simple("COMMIT").await;
    assert_eq!(balance(&direct, 1).await, 1010, "the writes committed");
    assert_eq!(balance(&direct, 2).await, 1010, "the writes committed");
    assert_eq!(balance(&direct, 9).await, 9, "the writes committed");

    // The held row, second of three: refused, the rest skipped, the block failed.
    raw.simple("BEGIN").await;
    raw.send(&unnamed_batch(&[
        "UPDATE accounts SET balance = balance + 10 WHERE id = 1",
        "UPDATE accounts SET balance = 99 WHERE id = 5",
        "UPDATE accounts SET balance = balance + 10 WHERE id = 2",
    ]))
    .await;
    batch_failed(&raw.recv_until(b'Z').await, "12C1EZ", 4, "55P03", b'E');
    raw.simple("ROLLBACK").await;
    assert_eq!(balance(&direct, 5).await, 1, "the held row is untouched");
    assert_eq!(
        balance(&direct, 1).await,
        1010,
        "the failed block left nothing"
    );

    // A BEGIN, a read, then a write, in one batch: the BEGIN and the read run ahead.
    raw.send(&unnamed_batch(&[
        "BEGIN",
        "SELECT 1",
        "UPDATE accounts SET balance = balance + 10 WHERE id = 3",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12DC12CZ", "{replies:?}");
    raw.simple("COMMIT").await;
    assert_eq!(balance(&direct, 3).await, 1010, "the write committed");

    // Behind a read, an INSERT of the held row's key: the read runs ahead, so the
    // INSERT is checked at a sync point of its own.
    raw.simple("BEGIN").await;
    raw.send(&unnamed_batch(&[
        "SELECT 1",
        "INSERT INTO accounts (id, balance) VALUES (5, 5) ON CONFLICT DO NOTHING",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12DC1EZ", "{replies:?}");
    assert_eq!(
        replies[5].sqlstate().as_deref(),
        Some("55P03"),
        "{replies:?}"
    );
    raw.simple("ROLLBACK").await;
    assert_eq!(balance(&direct, 5).await, 1, "the held row is untouched");

    // Outside a block (executeBatch with autocommit on) the batch is one implicit
    // transaction, run in a block of tandem's: committed at the Sync, or, once a write
    // on the held row is refused, not at all.
    raw.send(&unnamed_batch(&[
        "UPDATE accounts SET balance = balance + 10 WHERE id = 1",
        "UPDATE accounts SET balance = balance + 10 WHERE id = 2",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12CZ", "{replies:?}");
    assert_eq!(replies.last().map(|m| m.body.to_vec()), Some(b"I".to_vec()));
    assert_eq!(balance(&direct, 1).await, 1020, "committed at the Sync");
    assert_eq!(balance(&direct, 2).await, 1020, "committed at the Sync");
    raw.send(&unnamed_batch(&[
        "UPDATE accounts SET balance = balance + 10 WHERE id = 1",
        "UPDATE accounts SET balance = 99 WHERE id = 5",
    ]))
    .await;
    batch_failed(&raw.recv_until(b'Z').await, "12C1EZ", 4, "55P03", b'I');
    assert_eq!(balance(&direct, 1).await, 1020, "the batch left nothing");
    assert_eq!(balance(&direct, 5).await, 1, "the held row is untouched");
    let idle = raw.simple("SELECT 1").await;
    assert_eq!(tags(&idle), "TDCZ", "no block left open: {idle:?}");
    assert_eq!(idle.last().map(|m| m.body.to_vec()), Some(b"I".to_vec()));
    rolled_back(&a).await;
    finish(lockserver, [outside, global]).await;
}

/// A batch outside a transaction block whose write comes behind a read (a pipeline of
/// psycopg's, or of libpq's, with autocommit on): the read runs ahead in a block of
/// tandem's standing for the implicit transaction, so that the write starts where it
/// can be checked (outside a global transaction) or captured (inside one); committed at
/// the Sync, or, once any of it fails, not at all.
#[tokio::test]
async fn a_write_behind_a_read_in_one_implicit_transaction_is_checked_or_captured() {
    use super::control::unnamed_batch;
    use tandem_tests::raw_pg::RawPg;
    let orders = prepare("outside_read_ahead").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    let a = hold_row(&global, &orders.name, 5).await;
    for (tandem, bound) in [(&outside, false), (&global, true)] {
        let mut raw = RawPg::startup(tandem.pg, "postgres", &orders.name).await;
        if bound {
            raw.run_each(&["SELECT tandem_begin()"]).await;
        }
        let start = (balance(&direct, 1).await, balance(&direct, 2).await);
        raw.send(&unnamed_batch(&[
            "SELECT balance FROM accounts WHERE id = 1",
            "UPDATE accounts SET balance = balance + 10 WHERE id = 1",
            "SELECT 2",
            "UPDATE accounts SET balance = balance + 10 WHERE id = 2",
        ]))
        .await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(
            tags(&replies),
            "12DC12C12DC12CZ",
            "bound {bound}: {replies:?}"
        );
        assert_eq!(replies.last().map(|m| m.body.to_vec()), Some(b"I".to_vec()));
        let written = (start.0 + 10, start.1 + 10);
        assert_eq!(
            balance(&direct, 1).await,
            written.0,
            "bound {bound}: committed"
        );
        assert_eq!(
            balance(&direct, 2).await,
            written.1,
            "bound {bound}: committed"
        );

        // A read that fails: the rest of the batch is skipped, nothing is left open.
        raw.send(&unnamed_batch(&[
            "SELECT 1 / 0",
            "UPDATE accounts SET balance = 0 WHERE id = 1",
        ]))
        .await;
        batch_failed(&raw.recv_until(b'Z').await, "1EZ", 1, "22012", b'I');
        // A write that fails behind a read and a write: the first write goes too.
        raw.send(&unnamed_batch(&[
            "SELECT 1",
            "UPDATE accounts SET balance = 0 WHERE id = 1",
            "UPDATE accounts SET balance = balance / (id - 3) WHERE id = 3",
        ]))
        .await;
        batch_failed(&raw.recv_until(b'Z').await, "12DC12C12EZ", 9, "22012", b'I');
        assert_eq!(
            balance(&direct, 1).await,
            written.0,
            "bound {bound}: undone"
        );
        if !bound {
            // The held row, behind a read: refused, and the batch undone.
            raw.send(&unnamed_batch(&[
                "SELECT 1",
                "UPDATE accounts SET balance = 0 WHERE id = 1",
                "UPDATE accounts SET balance = 99 WHERE id = 5",
            ]))
            .await;
            batch_failed(&raw.recv_until(b'Z').await, "12DC12C1EZ", 8, "55P03", b'I');
            assert_eq!(
                balance(&direct, 1).await,
                written.0,
                "the batch left nothing"
            );
            assert_eq!(balance(&direct, 5).await, 1, "the held row is untouched");
        }
        let idle = raw.simple("SELECT 1").await;
        assert_eq!(tags(&idle), "TDCZ", "no block left open: {idle:?}");
        assert_eq!(idle.last().map(|m| m.body.to_vec()), Some(b"I".to_vec()));
        if bound {
            // The global transaction took the batch's writes: its rollback undoes them.
            let status = raw.simple("SELECT tandem_rollback()").await;
            assert!(format!("{status:?}").contains("Rollbacked"), "{status:?}");
            eventually("the batch's writes undone", || async {
                (balance(&direct, 1).await, balance(&direct, 2).await) == start
            })
            .await;
        }
    }
    rolled_back(&a).await;
    finish(lockserver, [outside, global]).await;
}

/// A statement that runs ahead of a write in its batch meets every check its Bind
/// meets alone: a function that may write is refused in a global transaction, as is
/// a locking read over several tables; and a statement only a transaction block gives
/// meaning fails in the block tandem runs the implicit transaction in, as the backend
/// fails it there (25P01). The batch leaves nothing.
#[tokio::test]
async fn what_runs_ahead_of_a_write_is_checked_as_its_bind_is() {
    use super::control::unnamed_batch;
    use tandem_tests::raw_pg::RawPg;
    let orders = prepare("read_ahead_checks").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE log (n serial PRIMARY KEY, what text);
             CREATE FUNCTION note(w text) RETURNS int LANGUAGE sql
                 AS $$ INSERT INTO log (what) VALUES (w) RETURNING n $$;",
        )
        .await
        .unwrap();
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut raw = RawPg::startup(global.pg, "postgres", &orders.name).await;
    raw.run_each(&["SELECT tandem_begin()"]).await;
    for (lead, sqlstate) in [
        ("SELECT note('ahead')", "0A000"),
        (
            "SELECT a.balance FROM accounts a, nokey WHERE a.id = 2 FOR UPDATE",
            "0A000",
        ),
    ] {
        raw.send(&unnamed_batch(&[
            lead,
            "UPDATE accounts SET balance = 0 WHERE id = 1",
        ]))
        .await;
        batch_failed(&raw.recv_until(b'Z').await, "1EZ", 1, sqlstate, b'I');
    }
    for (tandem, bound) in [(&global, true), (&outside, false)] {
        let mut raw = RawPg::startup(tandem.pg, "postgres", &orders.name).await;
        if bound {
            raw.run_each(&["SELECT tandem_begin()"]).await;
        }
        // Outside a global transaction the write is checked only while the table may
        // hold global locks.
        let holder = hold_row(&global, &orders.name, 5).await;
        raw.send(&unnamed_batch(&[
            "SELECT 1",
            "UPDATE accounts SET balance = 0 WHERE id = 1",
            "SAVEPOINT a",
            "SELECT 2",
        ]))
        .await;
        batch_failed(&raw.recv_until(b'Z').await, "12DC12C1EZ", 8, "25P01", b'I');
        // A batch that begins, ends or prepares a block is not run in tandem's (its
        // BEGIN would only warn, its PREPARE TRANSACTION prepare tandem's block): the
        // write in it is refused, and nothing stays.
        for (batch, replies) in [
            (
                [
                    "SELECT 1",
                    "UPDATE accounts SET balance = 0 WHERE id = 1",
                    "BEGIN",
                ],
                "12DC1EZ",
            ),
            (
                [
                    "UPDATE accounts SET balance = 0 WHERE id = 1",
                    "SELECT 1",
                    "PREPARE TRANSACTION 'read_ahead_checks'",
                ],
                "EZ",
            ),
        ] {
            raw.send(&unnamed_batch(&batch)).await;
            let got = raw.recv_until(b'Z').await;
            batch_failed(&got, replies, replies.len() - 2, "0A000", b'I');
        }
        rolled_back(&holder).await;
        if bound {
            let status = raw.simple("SELECT tandem_rollback()").await;
            assert!(format!("{status:?}").contains("Rollbacked"), "{status:?}");
        }
    }
    let logged: i64 = direct
        .query_one("SELECT count(*) FROM log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 0, "the function never ran");
    assert_eq!(balance(&direct, 1).await, 1000, "the write never stayed");
    let prepared: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'read_ahead_checks'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(prepared, 0, "nothing prepared");
    finish(lockserver, [outside, global]).await;
}

/// A write behind a Flush runs at once in a block of tandem's standing for the client's
/// implicit transaction, until its Sync. A simple Query sent before that Sync would end
/// that block at its ReadyForQuery (a BEGIN there would only warn, and a later ROLLBACK
/// undo nothing): it is refused, and the implicit transaction fails, the write with it.
/// Outside a global transaction (a table that holds global locks) and inside one.
#[tokio::test]
async fn a_query_behind_a_flushed_write_is_refused_and_the_write_rolled_back() {
    use super::control::unnamed_batch;
    use tandem_tests::raw_pg::{RawPg, frame};
    let orders = prepare("outside_flush_query").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    let a = hold_row(&global, &orders.name, 5).await;
    let mut flushed = unnamed_batch(&["UPDATE accounts SET balance = 7 WHERE id = 1"]);
    flushed.truncate(flushed.len() - 5);
    flushed.extend(frame(b'H', b""));
    for (tandem, bound) in [(&outside, false), (&global, true)] {
        let mut raw = RawPg::startup(tandem.pg, "postgres", &orders.name).await;
        if bound {
            raw.run_each(&["SELECT tandem_begin()"]).await;
        }
        raw.send(&flushed).await;
        let replies = raw.recv_until(b'C').await;
        assert_eq!(tags(&replies), "12C", "bound {bound}: {replies:?}");
        assert_eq!(balance(&direct, 1).await, 1000, "not committed yet");
        let replies = raw.simple("BEGIN").await;
        batch_failed(&replies, "EZ", 0, "0A000", b'I');
        assert_eq!(
            balance(&direct, 1).await,
            1000,
            "bound {bound}: rolled back"
        );
        raw.send(&frame(b'S', b"")).await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), "Z", "bound {bound}: {replies:?}");
        if bound {
            // A COMMIT as that Query is refused before tandem acts on it: the branch
            // is not committed, and the write goes with the failed implicit transaction.
            let mut behind = unnamed_batch(&["UPDATE accounts SET balance = 7 WHERE id = 1"]);
            behind.truncate(behind.len() - 5);
            behind.extend(frame(b'Q', b"COMMIT\0"));
            raw.send(&behind).await;
            let replies = raw.recv_until(b'Z').await;
            batch_failed(&replies, "12CEZ", 3, "0A000", b'I');
            let status = raw.simple("SELECT tandem_commit()").await;
            assert!(format!("{status:?}").contains("Committed"), "{status:?}");
            assert_eq!(balance(&direct, 1).await, 1000, "nothing committed");
        }
    }
    rolled_back(&a).await;
    finish(lockserver, [outside, global]).await;
}

/// A checked write inside the client's block holds its rows locked while it waits for
/// their global lock. When the holder starts rolling back (its undo needs those rows),
/// the write gives up at once with 55P03 rather than waiting out `lock_wait_ms` with
/// the rollback stuck behind it: once the client ends its block, the rollback goes
/// through.
#[tokio::test]
async fn a_waiting_write_in_a_block_gives_way_to_a_rollback() {
    let orders = prepare("outside_gives_way").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Wait).await;
    let direct = orders.direct().await;
    let a = hold_row(&global, &orders.name, 5).await;
    let writer = outside.connect(&orders.name).await;
    let write = tokio::spawn(async move {
        writer.batch_execute("BEGIN").await.unwrap();
        let refused = writer
            .batch_execute("UPDATE accounts SET balance = balance + 1 WHERE id = 5")
            .await
            .unwrap_err();
        writer.batch_execute("ROLLBACK").await.unwrap();
        refused
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    rolled_back(&a).await;
    let refused = write.await.unwrap();
    assert_eq!(
        refused.code(),
        Some(&SqlState::LOCK_NOT_AVAILABLE),
        "{refused:?}"
    );
    let message = refused.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message.as_deref().is_some_and(
            |m| m.contains("is rolling back") && m.contains("end the transaction, then retry")
        ),
        "{message:?}"
    );
    assert_eq!(balance(&direct, 5).await, 1000, "restored, and not written");
    finish(lockserver, [outside, global]).await;
}

/// An upsert on another unique key than the primary key cannot have its rows read in
/// advance, and is checked by the rows it returns; one whose DO UPDATE sets the
/// primary key would return only the key it moved a row to, not the held one it moved
/// it from: refused (0A000) while the table holds global locks, and the holder's
/// rollback is exact.
#[tokio::test]
async fn an_upsert_that_may_move_a_held_row_to_another_key_is_refused() {
    let db = prepare("outside_upsert_moves_key").await;
    let direct = db.direct().await;
    direct
        .batch_execute("CREATE TABLE u (id int PRIMARY KEY, u int UNIQUE, v text); INSERT INTO u VALUES (1, 1, 'a'), (2, 2, 'b')")
        .await
        .unwrap();
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let a = global.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute("UPDATE u SET v = 'held' WHERE id = 1")
        .await
        .unwrap();
    let b = outside.connect(&db.name).await;
    let e = b
        .batch_execute(
            "INSERT INTO u VALUES (7, 1, 'o') ON CONFLICT (u) DO UPDATE SET id = u.id + 1000",
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{e:?}");
    // One that keeps the key is checked as ever: the held row is met.
    let e = b
        .batch_execute("INSERT INTO u VALUES (7, 1, 'o') ON CONFLICT (u) DO UPDATE SET v = 'o'")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{e:?}");
    rolled_back(&a).await;
    let rows: Vec<(i32, String)> = direct
        .query("SELECT id, v FROM u ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [(1, "a".to_owned()), (2, "b".to_owned())]);
    drop((a, b));
    finish(lockserver, [global, outside]).await;
}

/// Writes tandem cannot check row by row (TRUNCATE, MERGE, a write in a WITH clause, a
/// multi-statement query that updates or deletes) fail with 55P03 while a table they
/// may change holds global locks (`outside_writes = "fail"`), and change nothing; what
/// only reads or inserts still runs, in the same shapes. With `"wait"` such a write
/// waits until its table holds none, then runs over the restored row.
#[tokio::test]
async fn writes_tandem_cannot_check_wait_or_fail_while_their_table_holds_global_locks() {
    let orders = prepare("outside_unanalysed").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE other (id int PRIMARY KEY, v int); INSERT INTO other VALUES (1, 1)",
        )
        .await
        .unwrap();
    let a = hold_row(&global, &orders.name, 4).await;
    let held = rows_of(&direct, "accounts").await;

    let b = outside.connect(&orders.name).await;
    let refused = [
        "TRUNCATE accounts",
        "SELECT 1; UPDATE accounts SET balance = 99 WHERE id = 4",
        "UPDATE other SET v = 2; DELETE FROM accounts WHERE id = 4",
        "WITH gone AS (DELETE FROM accounts WHERE id = 4 RETURNING id) SELECT count(*) FROM gone",
        "MERGE INTO accounts t USING (VALUES (4)) s(id) ON t.id = s.id WHEN MATCHED THEN UPDATE SET balance = 99",
        "BEGIN; UPDATE accounts SET balance = 99 WHERE id = 4; COMMIT",
        "INSERT INTO other VALUES (2, 2); TRUNCATE public.\"accounts\"",
    ];
    for sql in refused {
        assert_lock_not_available(b.batch_execute(sql).await, sql);
        // The session goes on, outside any transaction block.
        b.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
    }
    // Over the extended protocol: preparing runs nothing, executing is refused.
    let truncate = b.prepare("TRUNCATE accounts").await.unwrap();
    assert_lock_not_available(b.execute(&truncate, &[]).await, "extended TRUNCATE");
    assert_lock_not_available(b
        .execute(
            "WITH gone AS (DELETE FROM accounts WHERE id = $1 RETURNING id) SELECT count(*) FROM gone",
            &[&4i32],
        )
        .await, "extended WITH … DELETE");
    // In the client's transaction block, the refusal fails the block.
    b.batch_execute("BEGIN; UPDATE other SET v = 3")
        .await
        .unwrap();
    assert_lock_not_available(b.batch_execute("TRUNCATE accounts").await, "in a block");
    let err = b
        .batch_execute("SELECT 1")
        .await
        .expect_err("the block failed");
    assert_eq!(
        err.code(),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "{err:?}"
    );
    b.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        rows_of(&direct, "accounts").await,
        held,
        "nothing refused changed a row"
    );
    let other: i32 = direct
        .query_one("SELECT v FROM other WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(other, 1, "the refused statements' other writes never ran");

    // Reads and plain INSERTs still run, with writes to other tables, in one query.
    b.batch_execute(
        "SELECT 1; INSERT INTO accounts (id, balance) VALUES (100, 7); UPDATE other SET v = 5",
    )
    .await
    .unwrap();
    assert_eq!(balance(&direct, 100).await, 7);
    direct
        .batch_execute("DELETE FROM accounts WHERE id = 100")
        .await
        .unwrap();

    // Waiting, it runs once its table holds no global locks, after the rollback.
    let endpoint = format!("http://{}", lockserver.grpc);
    let patient = Tandem::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.lockserver.outside_writes = OutsideWrites::Wait;
        c.lockserver.lock_wait_ms = 60_000;
    })
    .await;
    let c = patient.connect(&orders.name).await;
    let waiting = tokio::spawn(async move {
        c.batch_execute("SELECT 1; UPDATE accounts SET balance = balance + 1 WHERE id = 4")
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "it waits for the global transaction"
    );
    assert_eq!(rows_of(&direct, "accounts").await, held);
    rolled_back(&a).await;
    waiting.await.unwrap().unwrap();
    assert_eq!(
        balance(&direct, 4).await,
        1001,
        "applied over the restored row"
    );
    // And now nothing holds the table: TRUNCATE runs at once, also where writes fail.
    b.batch_execute("TRUNCATE accounts").await.unwrap();
    assert!(rows_of(&direct, "accounts").await.is_empty());
    patient.shutdown().await;
    finish(lockserver, [global, outside]).await;
}

/// What a statement changes beyond its own table is judged too: a DELETE whose
/// foreign-key actions reach a table that holds global locks, `TRUNCATE … CASCADE`,
/// a write in COPY's query, and a script with a statement tandem cannot parse fail
/// with 55P03 and change nothing, while an UPDATE that sets no referenced column, a
/// DELETE whose actions reach only a partitioned table holding no lock, and an
/// unparsed write to a table holding none run.
#[tokio::test]
async fn writes_reaching_held_tables_through_foreign_keys_or_unparsed_text_fail() {
    let orders = prepare("outside_reaching").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE parent (id int PRIMARY KEY, n int);
             INSERT INTO parent VALUES (1, 0), (2, 0);
             CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent ON DELETE CASCADE, v int);
             INSERT INTO child VALUES (1, 1, 1);
             CREATE TABLE other_parent (id int PRIMARY KEY);
             INSERT INTO other_parent VALUES (1);
             CREATE TABLE parted (id int, p int REFERENCES other_parent ON DELETE CASCADE,
                 PRIMARY KEY (id)) PARTITION BY RANGE (id);
             CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
             INSERT INTO parted VALUES (1, 1);
             CREATE TABLE arrays (id int PRIMARY KEY, a int[]);
             INSERT INTO arrays VALUES (1, '{1,2}');",
        )
        .await
        .unwrap();
    let a = global.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute(
        "UPDATE child SET v = 100 WHERE id = 1; UPDATE accounts SET balance = 1 WHERE id = 4",
    )
    .await
    .unwrap();
    let rows = |table: &'static str| rows_of(&direct, table);
    let held = (
        rows("parent").await,
        rows("child").await,
        rows_of(&direct, "accounts").await,
    );

    let b = outside.connect(&orders.name).await;
    for sql in [
        "DELETE FROM parent WHERE id = 1",
        // Judged by the tables they name, and by what those tables' actions reach.
        "SELECT 1; DELETE FROM parent WHERE id = 1",
        "WITH d AS (DELETE FROM parent WHERE id = 1 RETURNING id) SELECT * FROM d",
        "MERGE INTO parent p USING (VALUES (1)) v(id) ON p.id = v.id WHEN MATCHED THEN DELETE",
        "TRUNCATE parent CASCADE",
        "COPY (UPDATE accounts SET balance = 5 WHERE id = 4 RETURNING id) TO STDOUT",
        "UPDATE accounts SET balance = 5 WHERE id = 4; CHECKPOINT",
    ] {
        assert_lock_not_available(b.batch_execute(sql).await, sql);
    }
    assert_lock_not_available(
        b.execute("DELETE FROM parent WHERE id = $1", &[&2i32])
            .await,
        "extended DELETE reaching a held table",
    );
    assert_eq!(
        (
            rows("parent").await,
            rows("child").await,
            rows_of(&direct, "accounts").await
        ),
        held,
        "nothing refused changed a row"
    );
    // Its foreign key does not act on this UPDATE: it runs.
    b.batch_execute("UPDATE parent SET n = 1 WHERE id = 2")
        .await
        .unwrap();
    // Actions that reach a partitioned table holding no lock run (its partitions' locks
    // go by its name), and so does a write tandem cannot parse to a table holding none.
    b.batch_execute("DELETE FROM other_parent WHERE id = 1")
        .await
        .unwrap();
    assert!(rows_of(&direct, "parted").await.is_empty());
    b.batch_execute("UPDATE arrays SET a[1] = 5 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(rows_of(&direct, "arrays").await, ["(1,\"{5,2}\")"]);

    rolled_back(&a).await;
    let child: i32 = direct
        .query_one("SELECT v FROM child WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(child, 1, "rolled back exactly");
    finish(lockserver, [global, outside]).await;
}

/// A write through a view, or to a table whose rewrite rule writes elsewhere, changes
/// rows of the tables under it, which no key of its own names: while one of them holds
/// global locks it fails (55P03) and changes nothing, over either protocol, nested
/// views and multi-statement queries included; through a view of tables holding none
/// it runs. The rollback then restores the held row exactly.
#[tokio::test]
async fn writes_through_views_and_rules_fail_while_the_tables_under_them_hold_global_locks() {
    let orders = prepare("outside_views").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE VIEW acc_view AS SELECT * FROM accounts;
             CREATE VIEW acc_view2 AS SELECT * FROM acc_view WHERE balance >= 0;
             CREATE TABLE notes (id int PRIMARY KEY, n int);
             INSERT INTO notes VALUES (1, 0);
             CREATE VIEW notes_view AS SELECT * FROM notes;
             CREATE TABLE ruled (id int PRIMARY KEY, v int);
             INSERT INTO ruled VALUES (1, 0);
             CREATE RULE ruled_touch AS ON UPDATE TO ruled
                 DO ALSO UPDATE accounts SET balance = balance + 1 WHERE id = 4;
             CREATE SCHEMA other;
             CREATE VIEW other.notes AS SELECT * FROM accounts;",
        )
        .await
        .unwrap();
    let original = rows_of(&direct, "accounts").await;
    let a = global.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute("UPDATE accounts SET balance = 1 WHERE id = 4")
        .await
        .unwrap();
    let held = (
        rows_of(&direct, "accounts").await,
        rows_of(&direct, "ruled").await,
    );

    let b = outside.connect(&orders.name).await;
    for sql in [
        "UPDATE acc_view SET balance = 5 WHERE id = 4",
        "DELETE FROM acc_view2 WHERE id = 4",
        "UPDATE ruled SET v = 2 WHERE id = 1",
        "SELECT 1; UPDATE acc_view SET balance = 6 WHERE id = 4",
    ] {
        assert_lock_not_available(b.batch_execute(sql).await, sql);
    }
    let err = assert_lock_not_available(
        b.execute("UPDATE acc_view2 SET balance = $1 WHERE id = 4", &[&7i64])
            .await,
        "extended UPDATE through a view",
    );
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message.as_deref().is_some_and(|m| m.contains("acc_view2")),
        "{message:?}"
    );
    assert_eq!(
        (
            rows_of(&direct, "accounts").await,
            rows_of(&direct, "ruled").await
        ),
        held,
        "nothing refused changed a row"
    );
    // Through a view of a table that holds no global lock: it runs.
    b.execute("UPDATE notes_view SET n = $1 WHERE id = 1", &[&3i32])
        .await
        .unwrap();
    assert_eq!(rows_of(&direct, "notes").await, ["(1,3)"]);
    // From review: a table named like a view of another schema is judged as itself.
    b.batch_execute("UPDATE public.notes SET n = 4 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(rows_of(&direct, "notes").await, ["(1,4)"]);

    rolled_back(&a).await;
    assert_eq!(
        rows_of(&direct, "accounts").await,
        original,
        "rolled back exactly"
    );
    finish(lockserver, [global, outside]).await;
}

/// An SQL-level EXECUTE is judged by the text of the statement it runs, as the backend
/// lists it (made by PREPARE or over the protocol): while a table it may change holds
/// global locks it fails with 55P03 and changes nothing, over either protocol and in a
/// block; a prepared read runs, and so does a name prepared anew as one.
#[tokio::test]
async fn sql_level_execute_is_judged_by_the_statement_it_runs() {
    use tandem_tests::raw_pg::{RawPg, frame};
    let orders = prepare("outside_execute").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    let original = rows_of(&direct, "accounts").await;
    let a = hold_row(&global, &orders.name, 4).await;
    let held = rows_of(&direct, "accounts").await;

    let b = outside.connect(&orders.name).await;
    b.batch_execute(
        "PREPARE upd AS UPDATE accounts SET balance = 5 WHERE id = 4;
         PREPARE sel AS SELECT balance FROM accounts WHERE id = $1",
    )
    .await
    .unwrap();
    for sql in ["EXECUTE upd", "SELECT 1; EXECUTE upd"] {
        assert_lock_not_available(b.batch_execute(sql).await, sql);
    }
    // A statement prepared over the protocol, run by SQL-level EXECUTE.
    let mut raw = RawPg::startup(outside.pg, "postgres", &orders.name).await;
    let mut parse = b"prot\0DELETE FROM accounts WHERE id = 4\0".to_vec();
    parse.extend_from_slice(&0i16.to_be_bytes());
    raw.send(&[frame(b'P', &parse), frame(b'S', &[])].concat())
        .await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "1Z");
    let replies = raw.simple("EXECUTE prot").await;
    assert_eq!(
        replies[0].sqlstate().as_deref(),
        Some("55P03"),
        "{replies:?}"
    );
    // From review: a name prepared in the same query, and one made anew over the
    // protocol after the names were dropped, are the statements judged.
    assert_eq!(tags(&raw.simple("PREPARE same AS SELECT 1").await), "CZ");
    let replies = raw
        .simple(
            "DEALLOCATE same; PREPARE same AS UPDATE accounts SET balance = 99 WHERE id = 4; EXECUTE same",
        )
        .await;
    assert_eq!(
        replies[0].sqlstate().as_deref(),
        Some("55P03"),
        "{replies:?}"
    );
    assert_eq!(tags(&raw.simple("PREPARE q AS SELECT 1").await), "CZ");
    assert_eq!(tags(&raw.simple("EXECUTE q").await), "TDCZ");
    assert_eq!(tags(&raw.simple("DEALLOCATE ALL").await), "CZ");
    let mut parse = b"q\0UPDATE accounts SET balance = 94 WHERE id = 4\0".to_vec();
    parse.extend_from_slice(&0i16.to_be_bytes());
    raw.send(&[frame(b'P', &parse), frame(b'S', &[])].concat())
        .await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "1Z");
    let replies = raw.simple("EXECUTE q").await;
    assert_eq!(
        replies[0].sqlstate().as_deref(),
        Some("55P03"),
        "{replies:?}"
    );
    // From re-review: a name redefined behind its first EXECUTE in one pipelined batch.
    assert_eq!(tags(&raw.simple("PREPARE piped AS SELECT 1").await), "CZ");
    raw.send(&super::control::unnamed_batch(&[
        "EXECUTE piped",
        "DEALLOCATE piped",
        "PREPARE piped AS UPDATE accounts SET balance = 16 WHERE id = 4",
        "EXECUTE piped",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert!(
        replies.iter().any(|m| m.sqlstate().is_some()),
        "{replies:?}"
    );
    assert_lock_not_available(b.execute("EXECUTE upd", &[]).await, "extended EXECUTE");
    b.batch_execute("BEGIN").await.unwrap();
    assert_lock_not_available(b.batch_execute("EXECUTE upd").await, "in a block");
    b.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(rows_of(&direct, "accounts").await, held, "nothing changed");

    // Reads run, over either protocol, and so does a name prepared anew as one.
    let read = b.query("EXECUTE sel(3)", &[]).await.unwrap();
    assert_eq!(read[0].get::<_, i64>(0), 1000);
    b.batch_execute("DEALLOCATE upd; PREPARE upd AS SELECT 2")
        .await
        .unwrap();
    let read: Vec<String> = b
        .simple_query("EXECUTE upd")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(read, ["2"]);

    rolled_back(&a).await;
    assert_eq!(
        rows_of(&direct, "accounts").await,
        original,
        "rolled back exactly"
    );
    finish(lockserver, [global, outside]).await;
}

/// From re-review: PostgreSQL folds only ASCII letters of an unquoted name, so `Ś1`
/// names the table `Ś1`. A global transaction writes it (tandem read `ś1`: 42P01),
/// and a write outside one to its held row is refused.
#[tokio::test]
async fn a_table_named_with_a_non_ascii_capital_is_held_and_checked() {
    let orders = prepare("outside_non_ascii").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE Ś1 (id int PRIMARY KEY, v int); INSERT INTO Ś1 VALUES (1, 1), (2, 2);",
        )
        .await
        .unwrap();
    let original = rows_of(&direct, "\"Ś1\"").await;
    let a = global.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute("UPDATE Ś1 SET v = 100 WHERE id = 1")
        .await
        .unwrap();
    let b = outside.connect(&orders.name).await;
    assert_lock_not_available(
        b.batch_execute("UPDATE Ś1 SET v = 50 WHERE id = 1").await,
        "a held row",
    );
    rolled_back(&a).await;
    assert_eq!(
        rows_of(&direct, "\"Ś1\"").await,
        original,
        "rolled back exactly"
    );
    finish(lockserver, [global, outside]).await;
}

/// No global lock is held any more (a commit's phase 2 has run), and no registration
/// used a table for `release_after_idle_ms`.
async fn no_global_lock_left(lockserver: &TestLockserver) {
    eventually("no global lock is left", || async {
        let (_, locks) = lockserver.get("/v1/locks").await;
        locks["locks"].as_array().map(Vec::len) == Some(0)
    })
    .await;
    tokio::time::sleep(RELEASE_AFTER_IDLE + Duration::from_millis(100)).await;
}

/// A table stays announced for `unannounce_after_ms` (10 s) after its last global
/// lock. A write judged by its tables does not wait that out, in either mode: the
/// lockserver lets go of a table holding no lock, unused for `release_after_idle_ms`,
/// when the write asks. The next global
/// transaction announces it again, and the write is refused again while its row is
/// held.
#[tokio::test]
async fn a_write_judged_by_its_tables_runs_once_they_hold_no_global_lock() {
    let orders = prepare("outside_let_go").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    let b = outside.connect(&orders.name).await;
    let judged =
        |id: i32| format!("SELECT 1; UPDATE accounts SET balance = balance + 1 WHERE id = {id}");
    for (round, end) in ["SELECT tandem_rollback()", "SELECT tandem_commit()"]
        .into_iter()
        .enumerate()
    {
        let a = hold_row(&global, &orders.name, 4).await;
        let held = rows_of(&direct, "accounts").await;
        assert_lock_not_available(b.batch_execute(&judged(4)).await, end);
        assert_eq!(rows_of(&direct, "accounts").await, held, "{end}");
        one(&a, end).await.unwrap();
        no_global_lock_left(&lockserver).await;
        b.batch_execute(&judged(4)).await.unwrap();
        let expected = [1001, 2][round];
        assert_eq!(balance(&direct, 4).await, expected, "applied after {end}");
    }
    // The table is announced again for the next global transaction, whose rollback
    // is exact.
    let before = rows_of(&direct, "accounts").await;
    let a = hold_row(&global, &orders.name, 5).await;
    assert_lock_not_available(b.batch_execute(&judged(5)).await, "held by the next");
    rolled_back(&a).await;
    assert_eq!(rows_of(&direct, "accounts").await, before);
    drop((a, b));
    finish(lockserver, [global, outside]).await;
}

/// A write judged by its tables that names a partition is judged by its partition
/// tree's root, whose name the tree's global locks go by: it runs while only other
/// tables hold global locks, and fails while a row of the tree is held.
#[tokio::test]
async fn a_write_judged_by_its_tables_that_names_a_partition_is_judged_by_its_root() {
    let orders = prepare("outside_partition").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE events (id int PRIMARY KEY, v int) PARTITION BY RANGE (id);
             CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (0) TO (100);
             CREATE TABLE events_2 PARTITION OF events FOR VALUES FROM (100) TO (200);
             INSERT INTO events VALUES (1, 1), (2, 1), (150, 1)",
        )
        .await
        .unwrap();
    // Only accounts holds a global lock.
    let a = hold_row(&global, &orders.name, 4).await;
    let b = outside.connect(&orders.name).await;
    b.batch_execute("SELECT 1; UPDATE events_1 SET v = v + 1 WHERE id = 1")
        .await
        .unwrap();
    b.batch_execute("TRUNCATE events_2").await.unwrap();
    let free = vec!["(1,2)".to_owned(), "(2,1)".to_owned()];
    assert_eq!(rows_of(&direct, "events").await, free);
    rolled_back(&a).await;

    // A row of the tree is held, written through a partition's name.
    let c = global.connect(&orders.name).await;
    one(&c, "SELECT tandem_begin(60000)").await.unwrap();
    c.batch_execute("UPDATE events_1 SET v = 7 WHERE id = 2")
        .await
        .unwrap();
    let held = rows_of(&direct, "events").await;
    for sql in [
        "SELECT 1; UPDATE events_1 SET v = 9 WHERE id = 2",
        "TRUNCATE events_1",
        "SELECT 1; DELETE FROM events WHERE id = 2",
    ] {
        assert_lock_not_available(b.batch_execute(sql).await, sql);
    }
    assert_eq!(
        rows_of(&direct, "events").await,
        held,
        "nothing refused ran"
    );
    rolled_back(&c).await;
    assert_eq!(rows_of(&direct, "events").await, free);
    drop(b);
    finish(lockserver, [global, outside]).await;
}

/// In a transaction, row `id` of `client`'s accounts is set to `balance` by a portal
/// bound in one batch and executed in the next (tokio-postgres's `bind` and
/// `query_portal`): a write tandem lets through only while it believes its view of the
/// announced tables (otherwise 0A000, "batched with other messages").
async fn portal_write(client: &mut Client, id: i32, balance: i64) -> Result<(), String> {
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    let update = tx
        .prepare("UPDATE accounts SET balance = $2 WHERE id = $1 RETURNING id")
        .await
        .map_err(|e| e.to_string())?;
    let rows = match tx.bind(&update, &[&id, &balance]).await {
        Ok(portal) => tx.query_portal(&portal, 0).await,
        Err(e) => Err(e),
    };
    match rows {
        Ok(rows) if rows.len() == 1 => {}
        Ok(rows) => return Err(format!("{} rows written", rows.len())),
        Err(e) => return Err(format!("{e:?}")),
    }
    tx.commit().await.map_err(|e| e.to_string())
}

/// Serving one more database replaces the proxy's phase-2 stream. Until the new
/// stream's snapshot arrives, the old one's view of the other databases still stands:
/// a portal bound meanwhile in a transaction on one of them is written as before (it
/// met 0A000, "batched with other messages", while nothing was believed).
#[tokio::test]
async fn serving_one_more_database_leaves_writes_to_the_others_as_they_were() {
    let orders = prepare("outside_served").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    // Served, and its view current, before the writers start.
    let mut first = outside.connect(&orders.name).await;
    portal_write(&mut first, 5, 0).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for id in 1..=4i32 {
        let mut c = outside.connect(&orders.name).await;
        let stop = stop.clone();
        writers.spawn(async move {
            let mut written = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                portal_write(&mut c, id, written + 1)
                    .await
                    .map_err(|e| format!("write {} of row {id}: {e}", written + 1))?;
                written += 1;
            }
            Ok::<_, String>((id, written))
        });
    }
    let mut served = Vec::new();
    for i in 0..10 {
        let db = tandem_tests::harness::TestDb::create(&format!("outside_served_{i}")).await;
        let c = outside.connect(&db.name).await;
        one(&c, "SELECT 1").await.unwrap();
        served.push((db, c));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let direct = orders.direct().await;
    while let Some(done) = writers.join_next().await {
        let (id, written) = done.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert!(written > 0, "row {id} was never written");
        assert_eq!(balance(&direct, id).await, written, "row {id}");
    }
    drop(served);
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
}

/// Databases first served all at once each replace the proxy's phase-2 stream while
/// the one before is still coming up. Once the replaced streams are gone, the view is
/// believed again. (A replaced stream that came up after its successor was the view's
/// newest; stopping it left every database's view untrusted until some later stream.)
#[tokio::test]
async fn databases_first_served_at_once_leave_the_view_believed() {
    let orders = prepare("outside_burst").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut c = outside.connect(&orders.name).await;
    let mut databases = Vec::new();
    for round in 0..6 {
        let created = futures::future::join_all((0..6).map(|i| async move {
            tandem_tests::harness::TestDb::create(&format!("outside_burst_{round}_{i}")).await
        }))
        .await;
        let connected =
            futures::future::join_all(created.iter().map(|db| outside.connect(&db.name))).await;
        // One stream per proxy again: the replaced ones are gone.
        tandem_tests::harness::eventually_within(
            "replaced streams gone",
            Duration::from_secs(30),
            || async { lockserver.metric("tandem_lockserver_phase2_streams").await == 2.0 },
        )
        .await;
        portal_write(&mut c, 1, round)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        databases.push((created, connected));
    }
    assert_eq!(balance(&orders.direct().await, 1).await, 5);
    drop(databases);
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
}

/// A replaced stream kept while its successor cannot come up (the lockserver's
/// `max_phase2_streams` reached) is stopped after 10 s; the view must not go on
/// believing it. The lockserver's lease of that stream lives in its memory only: one
/// restarted in that moment announces a table at once, and a write through the proxy
/// landed unchecked on the row a global transaction then held (RollbackFailed).
#[tokio::test]
async fn a_replaced_stream_stopped_before_its_successor_came_up_is_not_believed_after() {
    let orders = prepare("outside_kept").await;
    let (mut config, dir) =
        tandem_tests::lockserver::test_config(tandem_tests::lockserver::Kind::Embedded);
    config.limits.max_phase2_streams = 2;
    let lockserver = TestLockserver::start_with(config, dir).await;
    let global = Tandem::start_for(&lockserver).await;
    let outside = outside_proxy(&lockserver, OutsideWrites::Fail).await;
    let c = global.connect(&orders.name).await;
    one(&c, "SELECT 1").await.unwrap();
    let mut o = outside.connect(&orders.name).await;
    // Until the proxy's view of a database it serves for the first time arrives, a
    // write batched as this one is may hold global locks, and is refused (0A000): a CI
    // run under load met that.
    let first_write_by = Instant::now() + Duration::from_secs(10);
    while let Err(e) = portal_write(&mut o, 5, 0).await {
        assert!(Instant::now() < first_write_by, "{e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let direct = orders.direct().await;
    let before = super::at_mode::dump(&direct).await;
    // First served now: its stream is refused (two streams already), the old one kept.
    let other = tandem_tests::harness::TestDb::create("outside_kept_other").await;
    let _served = outside.connect(&other.name).await;
    tandem_tests::harness::eventually_within(
        "the kept stream stopped",
        Duration::from_secs(20),
        || async { lockserver.metric("tandem_lockserver_phase2_streams").await < 2.0 },
    )
    .await;
    let lockserver = lockserver.restart().await;
    one(&c, "SELECT tandem_begin(60000)").await.unwrap();
    c.batch_execute("UPDATE accounts SET balance = -1 WHERE id = 1")
        .await
        .unwrap();
    assert_lock_not_available(
        o.execute(
            "UPDATE accounts SET balance = balance + 1 WHERE id = 1",
            &[],
        )
        .await,
        "an outside write to the held row",
    );
    rolled_back(&c).await;
    assert_eq!(super::at_mode::dump(&direct).await, before);
    drop((o, c));
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
}

/// Text PostgreSQL reads otherwise than tandem's tokenizer: a `--` comment ended by a
/// carriage return, an operator written against `--` or `/*` (the server ends the
/// operator there), `U&'…' UESCAPE` that tandem's tokenizer cannot read, a backslash
/// under standard_conforming_strings off, bytes of SJIS characters. Each hid a write
/// on a held row, which ran unchecked; each is now judged as a write to every table
/// (55P03 while one holds global locks). Inside a global transaction the same texts
/// are refused (0A000; two of them ran a write uncaptured), and the rollback is exact.
#[tokio::test]
async fn text_the_server_reads_otherwise_is_judged_by_every_table() {
    let orders = prepare("outside_read_otherwise").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let direct = orders.direct().await;
    let a = hold_row(&global, &orders.name, 2).await;
    let held = rows_of(&direct, "accounts").await;
    let b = outside.connect(&orders.name).await;
    let hidden = [
        "-- c\rUPDATE accounts SET balance = 99 WHERE id = 2",
        "SELECT 2 #-- '\n 3; UPDATE accounts SET balance = 99 WHERE id = 2; --'",
        "SELECT 2 </* '*/ 3; UPDATE accounts SET balance = 99 WHERE id = 2; -- '",
        "SELECT '{}'::jsonb ?-- '\n''; UPDATE accounts SET balance = 99 WHERE id = 2 -- '",
        r"UPDATE accounts SET balance = 99 WHERE id = 2 AND U&'\' UESCAPE '!' = '\'",
    ];
    for sql in hidden {
        assert_lock_not_available(b.batch_execute(sql).await, sql);
    }
    b.batch_execute("SET standard_conforming_strings = off")
        .await
        .unwrap();
    let escaped = r"SELECT 'a\''; UPDATE accounts SET balance = 99 WHERE id = 2; --'";
    assert_lock_not_available(b.batch_execute(escaped).await, escaped);
    // Bytes no UTF-8 client can send: a raw session in SJIS, where 0x95 0x5C is one
    // character (not a backslash) and the literal ends after it.
    let sjis = &b"SELECT E'\x95\x5c'; UPDATE accounts SET balance = 99 WHERE id = 2; --'"[..];
    let mut raw = RawPg::startup(outside.pg, "postgres", &orders.name).await;
    raw.simple("SET client_encoding = 'SJIS'").await;
    raw.send_msg(b'Q', &[sjis, b"\0"].concat()).await;
    let replies = raw.recv_until(b'Z').await;
    assert!(
        replies
            .iter()
            .any(|m| m.sqlstate().as_deref() == Some("55P03")),
        "{replies:?}"
    );
    assert_eq!(rows_of(&direct, "accounts").await, held, "nothing changed");
    // LATIN1 has no multibyte characters to hide a quote in: checked row by row, a
    // write to a row nobody holds runs.
    let mut latin1 = RawPg::startup(outside.pg, "postgres", &orders.name).await;
    latin1.simple("SET client_encoding = 'LATIN1'").await;
    latin1
        .send_msg(b'Q', b"UPDATE accounts SET note = 'caf\xe9' WHERE id = 3\0")
        .await;
    let replies = latin1.recv_until(b'Z').await;
    assert!(
        replies.iter().all(|m| m.sqlstate().is_none()),
        "{replies:?}"
    );

    // Inside a global transaction: refused, the rollback exact.
    rolled_back(&a).await;
    let restored = rows_of(&direct, "accounts").await;
    let c = global.connect(&orders.name).await;
    one(&c, "SELECT tandem_begin(60000)").await.unwrap();
    c.batch_execute("UPDATE accounts SET balance = balance - 1 WHERE id = 1")
        .await
        .unwrap();
    for sql in &hidden[1..4] {
        let e = c.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            e.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {e:?}"
        );
    }
    rolled_back(&c).await;
    assert_eq!(
        rows_of(&direct, "accounts").await,
        restored,
        "restored exactly"
    );
    finish(lockserver, [global, outside]).await;
}
