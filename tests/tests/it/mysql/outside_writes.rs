//! Writes outside a global transaction on MariaDB, through a second proxy of the same
//! server: a row an unfinished global transaction holds is never overwritten (the
//! write waits for the global transaction, or fails with 1205), whether it comes as
//! text or as a prepared statement, in autocommit or in the client's own transaction;
//! rows nobody holds are written at once.

use super::at_mode::{code, dump, prepare, rolled_back, text};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use std::time::{Duration, Instant};
use tandem_proxy::config::OutsideWrites;
use tandem_tests::harness::{Tandem, eventually};
use tandem_tests::lockserver::{Kind, RELEASE_AFTER_IDLE, TestLockserver};
use tandem_tests::mysql::{self as my, MyTestDb};

/// ER_LOCK_WAIT_TIMEOUT.
const LOCK_WAIT_TIMEOUT: u16 = 1205;

/// A statement refused as a write that may change a held row is: with 1205 (`what`
/// says which). Returns the error.
#[track_caller]
fn assert_lock_wait_timeout<T: std::fmt::Debug>(
    result: Result<T, mysql_async::Error>,
    what: &str,
) -> mysql_async::Error {
    let err = result.expect_err(what);
    assert_eq!(code(&err), LOCK_WAIT_TIMEOUT, "{what}: {err}");
    err
}

async fn balance(conn: &mut Conn, id: i32) -> Option<i64> {
    conn.exec_first("SELECT balance FROM accounts WHERE id = ?", (id,))
        .await
        .unwrap()
}

async fn global_proxy(lockserver: &TestLockserver) -> Tandem {
    let endpoint = format!("http://{}", lockserver.grpc);
    my::start_with(|c| c.lockserver.endpoint = endpoint).await
}

/// An embedded lockserver, a proxy of it for global transactions, and a second one for
/// the writes outside them (`mode`).
async fn proxies(mode: OutsideWrites) -> (TestLockserver, Tandem, Tandem) {
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let global = global_proxy(&lockserver).await;
    let outside = outside_proxy(&lockserver, mode).await;
    (lockserver, global, outside)
}

/// A second proxy of the same lockserver, for the writes outside global transactions.
async fn outside_proxy(lockserver: &TestLockserver, mode: OutsideWrites) -> Tandem {
    let endpoint = format!("http://{}", lockserver.grpc);
    my::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.lockserver.outside_writes = mode;
        c.lockserver.lock_wait_ms = 10_000;
    })
    .await
}

/// A session of `tandem` holding row `id` in an unfinished global transaction (its
/// local transaction committed, as AT does at once for an autocommit write).
async fn hold_row(tandem: &Tandem, db: &MyTestDb, id: i32) -> Conn {
    in_global_transaction(
        tandem,
        db,
        &format!("UPDATE accounts SET balance = 1 WHERE id = {id}"),
    )
    .await
}

/// A session of `tandem` that deleted row `id` in an unfinished global transaction:
/// the row is gone, and its key held until that transaction ends.
async fn delete_held_row(tandem: &Tandem, db: &MyTestDb, id: i32) -> Conn {
    in_global_transaction(tandem, db, &format!("DELETE FROM accounts WHERE id = {id}")).await
}

/// A session of `tandem` that ran `write` (autocommit) in a global transaction it
/// leaves unfinished.
async fn in_global_transaction(tandem: &Tandem, db: &MyTestDb, write: &str) -> Conn {
    let mut a = my::connect(tandem, &db.name).await;
    text(&mut a, "SELECT tandem_begin(60000)").await.unwrap();
    a.query_drop(write).await.unwrap();
    a
}

/// Once no global lock is left and the tables have gone unused for
/// release_after_idle_ms: a write judged by its tables then runs.
async fn no_table_held(lockserver: &TestLockserver) {
    eventually("no global lock is left", || async {
        let (_, locks) = lockserver.get("/v1/locks").await;
        locks["locks"].as_array().map(Vec::len) == Some(0)
    })
    .await;
    tokio::time::sleep(RELEASE_AFTER_IDLE + Duration::from_millis(100)).await;
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

#[tokio::test]
async fn an_outside_write_to_a_held_row_waits_for_the_rollback_then_applies_over_the_restored_row()
{
    let db = prepare("my_outside_wait").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Wait).await;
    let mut direct = db.direct().await;
    let mut a = hold_row(&global, &db, 2).await;

    // Text protocol, autocommit.
    let mut b = my::connect(&outside, &db.name).await;
    let text_write = tokio::spawn(async move {
        let r = b
            .query_drop("UPDATE accounts SET balance = balance + 5 WHERE id = 2")
            .await;
        (r, b)
    });
    // A prepared statement, autocommit, with parameters.
    let mut c = my::connect(&outside, &db.name).await;
    let prepared_write = tokio::spawn(async move {
        let r = c
            .exec_drop(
                "UPDATE accounts SET balance = balance + ? WHERE id = ?",
                (100i64, 2i32),
            )
            .await;
        (r, c)
    });
    // A row nobody holds, in the same table: written at once.
    let mut e = my::connect(&outside, &db.name).await;
    let started = Instant::now();
    e.query_drop("UPDATE accounts SET balance = balance + 7 WHERE id = 1")
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(balance(&mut direct, 1).await, Some(1007));

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!text_write.is_finished(), "the text write did not wait");
    assert!(
        !prepared_write.is_finished(),
        "the prepared write did not wait"
    );
    assert_eq!(
        balance(&mut direct, 2).await,
        Some(1),
        "the held row is as the global transaction left it"
    );

    assert_eq!(
        text(&mut a, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked"),
        "the rollback met no dirty write"
    );
    let (r, _b) = text_write.await.unwrap();
    r.expect("the text write runs once the row is free");
    let (r, _c) = prepared_write.await.unwrap();
    r.expect("the prepared write runs once the row is free");
    assert_eq!(
        balance(&mut direct, 2).await,
        Some(1105),
        "both writes applied to the restored row"
    );

    // Inside the client's own transaction, over several rows: the write waits with
    // the rows locked in that transaction, and runs once the holder commits (a
    // global commit needs no row back).
    let mut a = hold_row(&global, &db, 3).await;
    let mut d = my::connect(&outside, &db.name).await;
    let in_transaction = tokio::spawn(async move {
        let r = async {
            d.query_drop("START TRANSACTION").await?;
            d.query_drop("UPDATE accounts SET note = 'x' WHERE id IN (2, 3)")
                .await?;
            d.query_drop("COMMIT").await
        }
        .await;
        (r, d)
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !in_transaction.is_finished(),
        "the write in a transaction did not wait"
    );
    assert_eq!(
        text(&mut a, "SELECT tandem_commit()")
            .await
            .unwrap()
            .as_deref(),
        Some("Committed")
    );
    let (r, _d) = in_transaction.await.unwrap();
    r.expect("the transaction's write runs once the row is free");
    let rows: Vec<(i32, i64, String)> = direct
        .query("SELECT id, balance, note FROM accounts ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        rows,
        [
            (1, 1007, "a".to_owned()),
            (2, 1105, "x".to_owned()),
            (3, 1, "x".to_owned())
        ]
    );
    finish(lockserver, [outside, global]).await;
}

#[tokio::test]
async fn an_outside_write_to_a_held_row_fails_with_1205_when_configured_to_fail() {
    let db = prepare("my_outside_fail").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    let mut a = hold_row(&global, &db, 2).await;
    let before = super::at_mode::dump(&mut direct, "accounts").await;

    let mut b = my::connect(&outside, &db.name).await;
    let started = Instant::now();
    let refused = [
        "UPDATE accounts SET balance = 99 WHERE id = 2",
        "DELETE FROM accounts WHERE id = 2",
        "REPLACE INTO accounts VALUES (2, 99, 'r')",
        "INSERT INTO accounts VALUES (2, 99, 'u') ON DUPLICATE KEY UPDATE balance = 99",
        "UPDATE accounts SET balance = 99 ORDER BY id LIMIT 5",
        // The server runs an executable comment's text.
        "/*!50000 UPDATE accounts SET balance = 99 WHERE id = 2 */",
    ];
    for sql in refused {
        let e = b.query_drop(sql).await.expect_err(sql);
        assert_eq!(code(&e), LOCK_WAIT_TIMEOUT, "{sql}: {e}");
    }
    let e = b
        .exec_drop("DELETE FROM accounts WHERE id = ?", (2i32,))
        .await
        .expect_err("a held row is not deleted");
    assert_eq!(code(&e), LOCK_WAIT_TIMEOUT, "{e}");
    // Text that is not UTF-8: in a binary literal (a driver's interpolated byte
    // array), read; elsewhere, judged by its table. (Both ran unchecked.)
    for sql in [
        &b"DELETE FROM accounts WHERE id = 2 AND LENGTH(_binary'\xff') = 1"[..],
        &b"UPDATE accounts SET balance = 99 WHERE id = 2 AND LENGTH('\xff') > 0"[..],
        // A statement that sets sql_mode for the rest of the text, which then reads
        // `'a\'` otherwise: judged as naming every table (it ran unchecked).
        &b"SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'; SELECT 'a\\'; UPDATE accounts SET balance = 99 WHERE id = 2; -- '"[..],
    ] {
        let e = b
            .query_drop(sql)
            .await
            .expect_err("a held row is not written");
        assert_eq!(code(&e), LOCK_WAIT_TIMEOUT, "{e}");
    }
    // Ordered by a column whose values may tie, the check's read and the write may
    // take different rows: refused, whichever row it would take.
    for sql in [
        "UPDATE accounts SET balance = 99 ORDER BY balance LIMIT 1",
        "DELETE FROM accounts ORDER BY note IS NULL LIMIT 1",
    ] {
        let e = b.query_drop(sql).await.expect_err(sql);
        assert_eq!(code(&e), 1235, "{sql}: {e}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "each failed at once"
    );
    assert_eq!(
        super::at_mode::dump(&mut direct, "accounts").await,
        before,
        "nothing changed"
    );
    // The session goes on: rows nobody holds are written, and new rows inserted.
    b.query_drop("UPDATE accounts SET balance = 50 WHERE id = 3")
        .await
        .unwrap();
    b.query_drop("INSERT INTO accounts VALUES (4, 40, 'd')")
        .await
        .unwrap();

    // Inside the client's own transaction the statement fails, as a lock wait timeout
    // does, and the transaction goes on.
    b.query_drop("START TRANSACTION").await.unwrap();
    b.query_drop("UPDATE accounts SET balance = 51 WHERE id = 3")
        .await
        .unwrap();
    let e = b
        .query_drop("UPDATE accounts SET balance = 99 WHERE id = 2")
        .await
        .expect_err("a held row is not written");
    assert_eq!(code(&e), LOCK_WAIT_TIMEOUT, "{e}");
    b.query_drop("COMMIT").await.unwrap();
    assert_eq!(balance(&mut direct, 3).await, Some(51));
    assert_eq!(balance(&mut direct, 2).await, Some(1));

    rolled_back(&mut a).await;
    assert_eq!(
        balance(&mut direct, 2).await,
        Some(1000),
        "rolled back exactly"
    );
    // Once the lock is gone the same write goes through.
    let b = &mut b;
    let mut tries = 0;
    while b
        .query_drop("UPDATE accounts SET balance = 99 WHERE id = 2")
        .await
        .is_err()
    {
        tries += 1;
        assert!(tries < 100, "the write never went through");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(balance(&mut direct, 2).await, Some(99));
    finish(lockserver, [outside, global]).await;
}

/// tandem checks an autocommit write to a table that holds global locks in a
/// transaction of its own; under the session's LOCK TABLES its START TRANSACTION would
/// release them. The write is refused instead (1235), and the table stays locked.
#[tokio::test]
async fn a_checked_write_under_lock_tables_is_refused_and_the_tables_stay_locked() {
    let db = prepare("my_outside_lock_tables").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    let mut a = hold_row(&global, &db, 2).await;
    let before = super::at_mode::dump(&mut direct, "accounts").await;

    let mut b = my::connect(&outside, &db.name).await;
    b.query_drop("LOCK TABLES accounts WRITE").await.unwrap();
    for sql in [
        "UPDATE accounts SET balance = 50 WHERE id = 3",
        "INSERT INTO accounts VALUES (4, 40, 'd')",
    ] {
        let e = b.query_drop(sql).await.expect_err(sql);
        assert_eq!(code(&e), 1235, "{sql}: {e}");
        assert!(e.to_string().contains("LOCK TABLES"), "{e}");
    }
    super::at_mode::table_stays_locked(&db, "accounts").await;
    b.query_drop("UNLOCK TABLES;").await.unwrap();
    assert_eq!(
        super::at_mode::dump(&mut direct, "accounts").await,
        before,
        "nothing changed"
    );
    b.query_drop("UPDATE accounts SET balance = 50 WHERE id = 3")
        .await
        .unwrap();
    assert_eq!(balance(&mut direct, 3).await, Some(50));

    rolled_back(&mut a).await;
    assert_eq!(balance(&mut direct, 2).await, Some(1000));
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn without_a_reachable_lockserver_outside_writes_run_and_are_counted() {
    let db = prepare("my_outside_down").await;
    // Nothing listens on the lockserver endpoint.
    let tandem = my::start_with(|c| c.lockserver.endpoint = "http://127.0.0.1:9".into()).await;
    let mut b = my::connect(&tandem, &db.name).await;
    // A statement tandem cannot check row by row runs too (it is not refused as where
    // a table may hold global locks).
    b.query_drop("SELECT 1; UPDATE accounts SET balance = 3 WHERE id = 3")
        .await
        .unwrap();
    b.query_drop("UPDATE accounts SET balance = 5 WHERE id = 1")
        .await
        .unwrap();
    b.exec_drop("DELETE FROM accounts WHERE id = ?", (2i32,))
        .await
        .unwrap();
    let mut direct = db.direct().await;
    assert_eq!(balance(&mut direct, 1).await, Some(5));
    assert_eq!(balance(&mut direct, 2).await, None);
    assert_eq!(balance(&mut direct, 3).await, Some(3));
    let proxy = &tandem;
    eventually("every write is counted as unchecked", || async move {
        proxy
            .metric("tandem_mysql_outside_writes_unchecked_total")
            .await
            == 3.0
    })
    .await;
    tandem.shutdown().await;
}

/// A plain INSERT that would recreate a row a global transaction deleted is refused
/// (otherwise the rollback meets the new row as a dirty write and stops), as text or
/// prepared, in autocommit or inside the client's transaction, where only the INSERT
/// is undone; rows nobody holds go in, with their insert ids.
#[tokio::test]
async fn an_outside_insert_that_recreates_a_held_row_fails_and_the_rollback_is_exact() {
    let db = prepare("my_outside_insert_fail").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    let before = super::at_mode::dump(&mut direct, "accounts").await;
    let mut a = delete_held_row(&global, &db, 2).await;
    let mut holder_of_1 = hold_row(&global, &db, 1).await;

    let mut b = my::connect(&outside, &db.name).await;
    for sql in [
        "INSERT INTO accounts VALUES (2, 99, 'i')",
        "INSERT INTO accounts (id, balance) VALUES (9, 9), (2, 99)",
        "INSERT IGNORE INTO accounts VALUES (2, 99, 'i')",
        // An upsert and a REPLACE recreate it as well (they met no row to check).
        "INSERT INTO accounts VALUES (2, 99, 'u') ON DUPLICATE KEY UPDATE balance = 99",
        "REPLACE INTO accounts VALUES (2, 99, 'r')",
    ] {
        let e = b.query_drop(sql).await.expect_err(sql);
        assert_eq!(code(&e), LOCK_WAIT_TIMEOUT, "{sql}: {e}");
    }
    let e = b
        .exec_drop(
            "INSERT INTO accounts (id, balance, note) VALUES (?, ?, ?)",
            (2i32, 99i64, "p"),
        )
        .await
        .expect_err("a held row is not recreated by a prepared INSERT");
    assert_eq!(code(&e), LOCK_WAIT_TIMEOUT, "{e}");
    // A key the column converts (2.4 stored as 2 in an INT) is not found by the value
    // given: such a write cannot be checked, and is undone and refused.
    for sql in [
        "INSERT INTO accounts VALUES (2.4, 99, 'f')",
        "INSERT IGNORE INTO accounts VALUES (2.4, 99, 'f')",
        "INSERT INTO accounts VALUES (1.4, 99, 'f') ON DUPLICATE KEY UPDATE balance = 99",
        "REPLACE INTO accounts VALUES (1.4, 99, 'f')",
    ] {
        let e = b.query_drop(sql).await.expect_err(sql);
        assert_eq!(code(&e), 1235, "{sql}: {e}");
    }
    let e = b
        .exec_drop(
            "INSERT INTO accounts VALUES (?, ?, ?)",
            (2.4f64, 99i64, "f"),
        )
        .await
        .expect_err("a converted key, prepared");
    assert_eq!(code(&e), 1235, "{e}");
    assert_eq!(balance(&mut direct, 2).await, None, "still deleted");

    // Inside the client's transaction only the INSERT is undone.
    b.query_drop("START TRANSACTION").await.unwrap();
    b.query_drop("UPDATE accounts SET balance = 31 WHERE id = 3")
        .await
        .unwrap();
    let e = b
        .query_drop("INSERT INTO accounts VALUES (2, 99, 't')")
        .await
        .expect_err("a held row is not recreated in a transaction");
    assert_eq!(code(&e), LOCK_WAIT_TIMEOUT, "{e}");
    b.exec_drop("INSERT INTO accounts VALUES (?, ?, ?)", (8i32, 8i64, "t"))
        .await
        .unwrap();
    b.query_drop("COMMIT").await.unwrap();
    assert_eq!(balance(&mut direct, 3).await, Some(31));
    assert_eq!(balance(&mut direct, 8).await, Some(8));
    assert_eq!(balance(&mut direct, 2).await, None, "still deleted");

    // A statement that commits implicitly and then fails leaves tandem a stale status
    // (an ERR carries none): the INSERT after it is still undone when refused.
    b.query_drop("START TRANSACTION").await.unwrap();
    b.query_drop("DROP TABLE no_such_table")
        .await
        .expect_err("no such table");
    let e = b
        .query_drop("INSERT INTO accounts VALUES (2, 99, 's')")
        .await
        .expect_err("a held row is not recreated after a stale status");
    assert_eq!(code(&e), LOCK_WAIT_TIMEOUT, "{e}");
    assert_eq!(balance(&mut direct, 2).await, None, "nothing committed");

    // An INSERT IGNORE that leaves a held row alone changes nothing: it goes through.
    b.query_drop("INSERT IGNORE INTO accounts VALUES (1, 5, 'x')")
        .await
        .unwrap();
    assert_eq!(b.affected_rows(), 0);
    // Only the rows it inserts are its own: the held one it skips is no reason to
    // refuse the rest.
    b.query_drop("INSERT IGNORE INTO accounts VALUES (1, 5, 'x'), (9, 9, 'n')")
        .await
        .unwrap();
    assert_eq!(b.affected_rows(), 1);
    assert_eq!(balance(&mut direct, 9).await, Some(9));
    b.query_drop("DELETE FROM accounts WHERE id = 9")
        .await
        .unwrap();

    // tandem's own COMMIT does not chain a transaction that would swallow the
    // session's next autocommit statements.
    b.query_drop("SET completion_type = 1").await.unwrap();
    b.query_drop("INSERT INTO accounts VALUES (6, 6, 'c')")
        .await
        .unwrap();
    b.query_drop("INSERT INTO accounts VALUES (5, 5, 'c')")
        .await
        .unwrap();
    assert_eq!(balance(&mut direct, 5).await, Some(5), "committed at once");
    b.query_drop("SET completion_type = 0").await.unwrap();
    b.query_drop("DELETE FROM accounts WHERE id IN (5, 6)")
        .await
        .unwrap();

    // Rows nobody holds go in at once; generated keys come back as without tandem.
    b.query_drop("INSERT INTO accounts VALUES (7, 7, 'n')")
        .await
        .unwrap();
    assert_eq!(b.affected_rows(), 1);
    b.query_drop("INSERT INTO items (name) VALUES ('second')")
        .await
        .unwrap();
    assert_eq!(b.last_insert_id(), Some(2));
    b.query_drop("DELETE FROM accounts WHERE id IN (7, 8)")
        .await
        .unwrap();
    b.query_drop("UPDATE accounts SET balance = 1000 WHERE id = 3")
        .await
        .unwrap();

    rolled_back(&mut a).await;
    rolled_back(&mut holder_of_1).await;
    assert_eq!(
        super::at_mode::dump(&mut direct, "accounts").await,
        before,
        "rolled back exactly"
    );
    finish(lockserver, [outside, global]).await;
}

/// In wait mode the INSERT is undone while it waits (the holder's rollback may need
/// the key), and goes in once the global transaction that deleted the row commits.
#[tokio::test]
async fn an_outside_insert_of_a_held_key_waits_for_the_commit_then_goes_in() {
    let db = prepare("my_outside_insert_wait").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Wait).await;
    let mut direct = db.direct().await;
    let mut a = delete_held_row(&global, &db, 2).await;
    let mut b = my::connect(&outside, &db.name).await;
    let insert = tokio::spawn(async move {
        let r = b
            .exec_drop("INSERT INTO accounts VALUES (?, ?, ?)", (2i32, 7i64, "w"))
            .await;
        (r, b)
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!insert.is_finished(), "the insert waits for the holder");
    assert_eq!(
        balance(&mut direct, 2).await,
        None,
        "nothing while it waits"
    );
    assert_eq!(
        text(&mut a, "SELECT tandem_commit()")
            .await
            .unwrap()
            .as_deref(),
        Some("Committed")
    );
    let (r, _b) = insert.await.unwrap();
    r.expect("the insert goes in");
    assert_eq!(balance(&mut direct, 2).await, Some(7));
    finish(lockserver, [outside, global]).await;
}

/// A role that may INSERT into a table but not read it still inserts into it while it
/// holds global locks: tandem cannot read the keys back, so the INSERT runs unchecked
/// (and counted), as it would without tandem, rather than be refused.
#[tokio::test]
async fn an_insert_only_role_still_inserts_into_a_table_that_holds_global_locks() {
    let db = prepare("my_outside_insert_only").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut a = hold_row(&global, &db, 1).await;
    let user = format!("tandem_ins_{:06x}", rand::random::<u32>() & 0xff_ffff);
    super::auth::create_user(&user, "pw", &db.name).await;
    let mut admin = Conn::new(tandem_tests::mysql::admin_opts()).await.unwrap();
    for host in ["%", "localhost", "127.0.0.1"] {
        admin
            .query_drop(format!(
                "REVOKE ALL ON {0}.* FROM '{user}'@'{host}'; GRANT INSERT ON {0}.accounts TO '{user}'@'{host}'",
                db.name
            ))
            .await
            .unwrap();
    }
    let opts = my::opts(&outside, &db.name)
        .user(Some(user.clone()))
        .pass(Some("pw"));
    let mut inserter = Conn::new(opts).await.unwrap();
    inserter
        .query_drop("INSERT INTO accounts VALUES (5, 5, 'o')")
        .await
        .expect("an INSERT-only role inserts");
    let mut direct = db.direct().await;
    assert_eq!(balance(&mut direct, 5).await, Some(5));
    assert_eq!(
        outside
            .metric("tandem_mysql_outside_writes_unchecked_total")
            .await,
        1.0
    );
    inserter.disconnect().await.unwrap();
    admin
        .query_drop(format!(
            "DROP USER '{user}'@'%', '{user}'@'localhost', '{user}'@'127.0.0.1'"
        ))
        .await
        .unwrap();
    rolled_back(&mut a).await;
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
}

/// A key its collation compares (utf8mb4_general_ci: case-insensitive, trailing spaces
/// ignored) names one row however it is spelled: a global transaction that deleted
/// `'Bob@x.com'` holds `'bOB@X.com  '` too, against another global transaction and
/// against a write outside one. Otherwise that INSERT would go in, and the holder's
/// rollback would meet it as a duplicate key.
#[tokio::test]
async fn a_held_key_holds_every_spelling_its_collation_calls_equal() {
    let db = prepare("my_collated_keys").await;
    let mut direct = db.direct().await;
    direct
        .query_drop(
            "CREATE TABLE users (email VARCHAR(40) PRIMARY KEY, note VARCHAR(20)) ENGINE=InnoDB \
             DEFAULT CHARSET utf8mb4 COLLATE utf8mb4_general_ci;
             INSERT INTO users VALUES ('Bob@x.com', 'a'), ('Ann@x.com', 'b');
             CREATE TABLE names (name VARCHAR(20) PRIMARY KEY) ENGINE=InnoDB \
             DEFAULT CHARSET utf8mb4 COLLATE utf8mb4_unicode_ci;
             INSERT INTO names VALUES ('alice');
             CREATE TABLE latin (name VARCHAR(20) PRIMARY KEY) ENGINE=InnoDB \
             DEFAULT CHARSET latin1 COLLATE latin1_swedish_ci;
             INSERT INTO latin VALUES ('Émile');
             CREATE TABLE longs (k VARCHAR(400) PRIMARY KEY, v INT) ENGINE=InnoDB \
             DEFAULT CHARSET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
             INSERT INTO longs VALUES (REPEAT('k', 350), 1);",
        )
        .await
        .unwrap();
    let tables = ["users", "names", "latin", "longs"];
    let mut before = Vec::new();
    for table in tables {
        before.push(super::at_mode::dump(&mut direct, table).await);
    }
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let endpoint = format!("http://{}", lockserver.grpc);
    let global = my::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.lockserver.lock_wait_ms = 300;
    })
    .await;
    let outside = outside_proxy(&lockserver, OutsideWrites::Fail).await;
    let mut a =
        in_global_transaction(&global, &db, "DELETE FROM users WHERE email = 'Bob@x.com'").await;
    for sql in [
        "DELETE FROM names WHERE name = 'alice'",
        "DELETE FROM latin WHERE name = 'Émile'",
        // Its weight (six bytes a character) is hashed into a lock key of usual size.
        "UPDATE longs SET v = 2 WHERE k = REPEAT('k', 350)",
    ] {
        a.query_drop(sql).await.expect(sql);
    }

    let mut b = my::connect(&global, &db.name).await;
    text(&mut b, "SELECT tandem_begin(60000)").await.unwrap();
    let e = b
        .query_drop("INSERT INTO users VALUES ('bOB@X.com  ', 'c')")
        .await
        .expect_err("another spelling of the held key waits, then fails");
    assert_eq!(code(&e), LOCK_WAIT_TIMEOUT, "{e}");
    rolled_back(&mut b).await;

    let mut c = my::connect(&outside, &db.name).await;
    for sql in [
        "INSERT INTO users VALUES ('BOB@X.COM', 'd')",
        "INSERT INTO users VALUES ('bob@x.com ', 'd')",
        // A no-break space weighs as a space under unicode_ci: the same row.
        "INSERT INTO names VALUES ('alice\u{a0}')",
        "INSERT INTO latin VALUES ('emile')",
        "UPDATE longs SET v = 3 WHERE k = REPEAT('k', 350)",
    ] {
        let e = c.query_drop(sql).await.expect_err(sql);
        assert_eq!(code(&e), LOCK_WAIT_TIMEOUT, "{sql}: {e}");
    }
    // Another key is not held, however it is spelled.
    c.query_drop("UPDATE users SET note = 'n' WHERE email = 'ANN@X.COM'")
        .await
        .unwrap();
    assert_eq!(c.affected_rows(), 1);
    c.query_drop("UPDATE users SET note = 'b' WHERE email = 'ann@x.com'")
        .await
        .unwrap();

    rolled_back(&mut a).await;
    for (table, before) in tables.iter().zip(&before) {
        assert_eq!(
            &super::at_mode::dump(&mut direct, table).await,
            before,
            "{table} rolled back exactly"
        );
    }
    finish(lockserver, [outside, global]).await;
}

/// A double-quoted VALUES key is a string to tandem and, under ANSI_QUOTES, a column to
/// the server: such an INSERT is never checked by the wrong key, but judged by its
/// table (1205 while it holds global locks; it ran unchecked). Without ANSI_QUOTES it
/// is checked as any INSERT.
#[tokio::test]
async fn a_double_quoted_key_is_checked_unless_ansi_quotes_makes_it_a_column() {
    let db = prepare("my_outside_ansi_quotes").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    let mut a = delete_held_row(&global, &db, 2).await;
    let mut b = my::connect(&outside, &db.name).await;
    let e = b
        .query_drop(r#"INSERT INTO accounts VALUES ("2", 5, 'o')"#)
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1205, "{e}");
    b.query_drop("SET sql_mode = 'ANSI_QUOTES'").await.unwrap();
    // `"note"` is the column itself here (NULL in a new row).
    let column_valued = r#"INSERT INTO accounts (id, balance, note) VALUES (7, 7, "note")"#;
    assert_lock_wait_timeout(b.query_drop(column_valued).await, column_valued);
    assert_eq!(balance(&mut direct, 7).await, None);
    // Another table goes on.
    b.query_drop(r#"INSERT INTO items (name) VALUES ("name")"#)
        .await
        .unwrap();
    assert_eq!(
        outside
            .metric("tandem_mysql_outside_writes_unchecked_total")
            .await,
        0.0
    );
    rolled_back(&mut a).await;
    no_table_held(&lockserver).await;
    b.query_drop(column_valued).await.unwrap();
    let note: Option<Option<String>> = direct
        .query_first("SELECT note FROM accounts WHERE id = 7")
        .await
        .unwrap();
    assert_eq!(note, Some(None));
    outside.shutdown().await;
    global.shutdown().await;
    lockserver.stop().await;
}

/// `sql_select_limit` caps a SELECT that has no LIMIT of its own, tandem's reads on the
/// session included: capped, a before image missed rows the write then changed (a
/// global transaction's write failed as uncaptured), and the check of a write in the
/// client's own transaction locked fewer rows than the write took, so it went past a
/// held row.
#[tokio::test]
async fn a_session_select_limit_caps_none_of_tandems_reads() {
    let db = prepare("my_select_limit").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    let before = super::at_mode::dump(&mut direct, "accounts").await;

    // In a global transaction: every write's rows are captured, and all come back.
    let mut a = my::connect(&global, &db.name).await;
    text(&mut a, "SELECT tandem_begin(60000)").await.unwrap();
    for write in [
        "SET SESSION sql_select_limit = 1",
        "UPDATE accounts SET balance = balance + 1",
        "INSERT INTO accounts VALUES (4, 4, 'd'), (5, 5, 'e')",
        "INSERT INTO accounts VALUES (1, 0, 'x'), (2, 0, 'y') \
         ON DUPLICATE KEY UPDATE note = VALUES(note)",
        "DELETE FROM accounts WHERE id > 3",
        "START TRANSACTION",
        "UPDATE accounts SET note = 'in a block' WHERE id IN (2, 3)",
        "COMMIT",
    ] {
        a.query_drop(write)
            .await
            .unwrap_or_else(|e| panic!("{write}: {e}"));
    }
    assert_eq!(
        text(&mut a, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
    assert_eq!(super::at_mode::dump(&mut direct, "accounts").await, before);

    // Outside one, in the client's own transaction: the check locks both rows the
    // write takes, and so meets the held one.
    let mut holder = hold_row(&global, &db, 3).await;
    let mut b = my::connect(&outside, &db.name).await;
    b.query_drop("SET SESSION sql_select_limit = 1")
        .await
        .unwrap();
    b.query_drop("START TRANSACTION").await.unwrap();
    let e = b
        .query_drop("UPDATE accounts SET note = 'outside' WHERE id IN (1, 3)")
        .await
        .expect_err("row 3 is held");
    assert_eq!(code(&e), LOCK_WAIT_TIMEOUT, "{e}");
    b.query_drop("ROLLBACK").await.unwrap();
    rolled_back(&mut holder).await;
    assert_eq!(super::at_mode::dump(&mut direct, "accounts").await, before);
    finish(lockserver, [outside, global]).await;
}

/// A checked write inside the client's transaction holds its rows locked while it
/// waits for their global lock. When the holder starts rolling back (its undo needs
/// those rows), the write gives up at once with 1205 rather than waiting out
/// `lock_wait_ms` with the rollback stuck behind it: once the client ends its
/// transaction, the rollback goes through.
#[tokio::test]
async fn a_waiting_write_in_a_transaction_gives_way_to_a_rollback() {
    let db = prepare("my_outside_gives_way").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Wait).await;
    let mut direct = db.direct().await;
    let before = balance(&mut direct, 2).await;
    let mut a = hold_row(&global, &db, 2).await;
    let mut writer = my::connect(&outside, &db.name).await;
    let write = tokio::spawn(async move {
        writer.query_drop("START TRANSACTION").await.unwrap();
        let refused = writer
            .query_drop("UPDATE accounts SET balance = balance + 1 WHERE id = 2")
            .await
            .unwrap_err();
        writer.query_drop("ROLLBACK").await.unwrap();
        refused
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    rolled_back(&mut a).await;
    let refused = write.await.unwrap();
    assert_eq!(code(&refused), LOCK_WAIT_TIMEOUT, "{refused}");
    assert!(refused.to_string().contains("is rolling back"), "{refused}");
    assert_eq!(
        balance(&mut direct, 2).await,
        before,
        "restored, and not written"
    );
    finish(lockserver, [outside, global]).await;
}

/// A checked write runs between statements of tandem's (its COMMIT, the read back of an
/// INSERT's keys, a savepoint's release), each of which sets ROW_COUNT() anew: the
/// client's next ROW_COUNT() still counts its own write, as it does directly.
#[tokio::test]
async fn row_count_after_a_checked_write_counts_the_write() {
    let db = prepare("my_outside_row_count").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    // Row 1 held: the table holds global locks, and every write to it is checked.
    let mut a = hold_row(&global, &db, 1).await;
    let mut b = my::connect(&outside, &db.name).await;
    let commands_before = outside.metric("tandem_mysql_commands_total").await;
    for in_transaction in [false, true] {
        if in_transaction {
            b.query_drop("BEGIN").await.unwrap();
        }
        for (write, expected) in [
            ("INSERT INTO accounts VALUES (70, 1, 'r'), (71, 1, 'r')", 2),
            (
                "INSERT IGNORE INTO accounts VALUES (70, 1, 'r'), (72, 1, 'r')",
                1,
            ),
            ("REPLACE INTO accounts VALUES (70, 5, 'r')", 2),
            (
                "UPDATE accounts SET balance = balance + 1 WHERE id IN (70, 71)",
                2,
            ),
            ("DELETE FROM accounts WHERE id IN (70, 71, 72)", 3),
        ] {
            b.query_drop(write).await.unwrap();
            assert_eq!(b.affected_rows(), expected, "{write}");
            assert_eq!(
                b.query_first::<i64, _>("SELECT ROW_COUNT()").await.unwrap(),
                Some(expected as i64),
                "{write} (in a transaction: {in_transaction})"
            );
        }
        if in_transaction {
            b.query_drop("COMMIT").await.unwrap();
        }
    }
    // A prepared write, its statement closed before the count is asked: the close runs
    // no statement, and ROW_COUNT() is still the write's.
    b.query_drop("INSERT INTO accounts VALUES (80, 1, 'p'), (81, 1, 'p')")
        .await
        .unwrap();
    let statement = b
        .prep("UPDATE accounts SET balance = balance + 1 WHERE id >= 80")
        .await
        .unwrap();
    b.exec_drop(&statement, ()).await.unwrap();
    b.close(statement).await.unwrap();
    assert_eq!(
        b.query_first::<i64, _>("SELECT ROW_COUNT()").await.unwrap(),
        Some(2),
        "after COM_STMT_CLOSE"
    );
    b.query_drop("DELETE FROM accounts WHERE id >= 80")
        .await
        .unwrap();
    // After a checked write that failed, ROW_COUNT() is -1, as after any failed
    // statement (tandem's ROLLBACK or savepoint release after it would say 0).
    for in_transaction in [false, true] {
        if in_transaction {
            b.query_drop("BEGIN").await.unwrap();
        }
        let e = b
            .query_drop("UPDATE accounts SET id = 2 WHERE id = 3")
            .await
            .unwrap_err();
        assert_eq!(code(&e), 1062, "{e}");
        assert_eq!(
            b.query_first::<i64, _>("SELECT ROW_COUNT()").await.unwrap(),
            Some(-1),
            "after a failed write (in a transaction: {in_transaction})"
        );
        if in_transaction {
            b.query_drop("ROLLBACK").await.unwrap();
        }
    }
    // tandem's savepoint around a checked write in a transaction leaves the client's
    // own alone, whatever its name.
    b.query_drop("BEGIN").await.unwrap();
    b.query_drop("SAVEPOINT tandem_guard").await.unwrap();
    b.query_drop("UPDATE accounts SET balance = 77 WHERE id = 2")
        .await
        .unwrap();
    b.query_drop("ROLLBACK TO tandem_guard").await.unwrap();
    b.query_drop("COMMIT").await.unwrap();
    assert_eq!(balance(&mut b, 2).await, Some(1000), "the update undone");
    // Each write tandem ran itself (checked) is counted as a command, as relayed ones
    // are: 2 × 5 writes and their 10 ROW_COUNT()s, BEGIN and COMMIT, the rest above.
    let commands = outside.metric("tandem_mysql_commands_total").await - commands_before;
    assert!(commands >= 24.0, "{commands} commands counted");
    rolled_back(&mut a).await;
    drop(b);
    finish(lockserver, [outside, global]).await;
}

/// Under READ COMMITTED a locking read takes no gap locks: a row that begins to match
/// behind the check's scan (here a global transaction's new row, inserted while the
/// check waited on another row's lock) is not checked, and the write that follows
/// would change it. Inside the client's transaction, as in autocommit, a write that
/// changed more rows than were checked is undone and checked again: the held row is
/// met (1205), and the holder's rollback is exact.
#[tokio::test]
async fn a_row_that_begins_to_match_after_the_check_is_checked_inside_a_transaction_too() {
    let db = prepare("my_outside_phantom").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    direct
        .query_drop("INSERT INTO accounts VALUES (10, 1000, 'x'), (20, 1000, 'y'), (30, 1000, 'z')")
        .await
        .unwrap();
    let before = super::at_mode::dump(&mut direct, "accounts").await;
    // Row 1 held (and out of the write's predicate): the table holds global locks.
    let mut a = in_global_transaction(
        &global,
        &db,
        "UPDATE accounts SET balance = 10 WHERE id = 1",
    )
    .await;
    // Row 30 locked by a local transaction: the check's scan stops there and waits.
    let mut blocker = db.direct().await;
    blocker.query_drop("BEGIN").await.unwrap();
    blocker
        .query_drop("SELECT * FROM accounts WHERE id = 30 FOR UPDATE")
        .await
        .unwrap();
    let mut b = my::connect(&outside, &db.name).await;
    b.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await
        .unwrap();
    b.query_drop("BEGIN").await.unwrap();
    let write = tokio::spawn(async move {
        let r = b
            .query_drop("UPDATE accounts SET balance = balance + 1 WHERE balance >= 1000")
            .await;
        (r, b)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!write.is_finished(), "the check waits for row 30");
    // Behind the check's scan, the global transaction inserts a row that matches.
    a.query_drop("INSERT INTO accounts VALUES (15, 2000, 'new')")
        .await
        .unwrap();
    blocker.query_drop("COMMIT").await.unwrap();
    let (r, mut b) = write.await.unwrap();
    let e = r.expect_err("row 15 is held by the global transaction");
    assert_eq!(code(&e), LOCK_WAIT_TIMEOUT, "{e}");
    b.query_drop("COMMIT").await.unwrap();
    assert_eq!(
        direct
            .query_first::<i64, _>("SELECT balance FROM accounts WHERE id = 15")
            .await
            .unwrap(),
        Some(2000),
        "the held row is as the global transaction left it"
    );
    rolled_back(&mut a).await;
    assert_eq!(super::at_mode::dump(&mut direct, "accounts").await, before);
    drop(b);
    finish(lockserver, [outside, global]).await;
}

/// A checked write in the client's transaction runs between statements of tandem's; the
/// client still gets the write's own OK, status flags included (no index used, here).
#[tokio::test]
async fn a_checked_write_in_a_transaction_answers_with_its_own_status_flags() {
    use super::at_mode::{raw_reply, raw_session};
    const NO_INDEX_USED: u16 = 0x20;
    let db = prepare("my_outside_status").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut a = hold_row(&global, &db, 1).await;
    let status_of = |reply: &[my::Packet]| {
        let ok = &reply[0].1;
        assert_eq!(ok[0], 0x00, "{reply:?}");
        // Affected rows and insert id are one byte each here.
        u16::from_le_bytes([ok[3], ok[4]])
    };
    // The server sets the flag on an UPDATE that scans without an index.
    let mut raw = raw_session(&outside, &db.name).await;
    raw.send(&my::packet(0, b"\x03BEGIN")).await;
    raw_reply(&mut raw).await;
    raw.send(&my::packet(
        0,
        b"\x03UPDATE accounts SET note = 'n' WHERE balance = 1000",
    ))
    .await;
    let status = status_of(&raw_reply(&mut raw).await);
    assert_eq!(status & NO_INDEX_USED, NO_INDEX_USED, "{status:#x}");
    raw.send(&my::packet(0, b"\x03ROLLBACK")).await;
    raw_reply(&mut raw).await;
    rolled_back(&mut a).await;
    finish(lockserver, [outside, global]).await;
}

/// Statements tandem cannot check row by row (TRUNCATE, a multi-statement query that
/// updates or deletes beside other statements) fail with 1205 while a table they may change holds global locks
/// (`outside_writes = "fail"`), and change nothing; what only reads or inserts still
/// runs in the same shape. With `"wait"` such a statement waits until its table holds
/// none, then runs over the restored row.
#[tokio::test]
async fn statements_tandem_cannot_check_wait_or_fail_while_their_table_holds_global_locks() {
    let db = prepare("my_outside_unanalysed").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    let mut a = hold_row(&global, &db, 2).await;
    let held = dump(&mut direct, "accounts").await;
    let items = dump(&mut direct, "items").await;

    let mut b = my::connect(&outside, &db.name).await;
    for sql in [
        "TRUNCATE TABLE accounts",
        "SELECT 1; UPDATE accounts SET balance = 99 WHERE id = 2",
        // Not writes alone: judged whole, so its INSERT never runs either.
        "SELECT 1; INSERT INTO items (name) VALUES ('x'); DELETE FROM accounts WHERE id = 2",
        // Writes alone: checked one by one, the first meets the held row.
        "UPDATE accounts SET balance = 99 WHERE id = 2; UPDATE accounts SET balance = 98 WHERE id = 3",
    ] {
        assert_lock_wait_timeout(b.query_drop(sql).await, sql);
        // The session goes on.
        b.query_drop("DO 1").await.unwrap();
    }
    // In the client's transaction the statement fails; the transaction goes on.
    b.query_drop("START TRANSACTION").await.unwrap();
    assert_lock_wait_timeout(
        b.query_drop("SELECT 1; DELETE FROM accounts WHERE id = 2")
            .await,
        "in a transaction",
    );
    b.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(dump(&mut direct, "accounts").await, held, "nothing changed");
    assert_eq!(
        dump(&mut direct, "items").await,
        items,
        "nothing ran before it"
    );

    // A plain INSERT beside a read is judged by its table too: it could recreate a row
    // a global transaction deleted (from review).
    assert_lock_wait_timeout(
        b.query_drop("SELECT 1; INSERT INTO accounts VALUES (100, 7, 'n')")
            .await,
        "an INSERT into a table holding global locks",
    );
    assert_eq!(balance(&mut direct, 100).await, None);
    // Reads and writes to tables that hold no global lock still run.
    b.query_drop("SELECT 1; INSERT INTO items (name) VALUES ('third'); UPDATE items SET name = 'second' WHERE id = 1")
        .await
        .unwrap();
    direct
        .query_drop(
            "DELETE FROM items WHERE name = 'third'; UPDATE items SET name = 'first' WHERE id = 1",
        )
        .await
        .unwrap();

    // Waiting, it runs once its table holds no global locks, after the rollback.
    let patient = {
        let endpoint = format!("http://{}", lockserver.grpc);
        my::start_with(|c| {
            c.lockserver.endpoint = endpoint;
            c.lockserver.outside_writes = OutsideWrites::Wait;
            c.lockserver.lock_wait_ms = 60_000;
        })
        .await
    };
    let mut c = my::connect(&patient, &db.name).await;
    let waiting = tokio::spawn(async move {
        c.query_drop("SELECT 1; UPDATE accounts SET balance = balance + 1 WHERE id = 2")
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "it waits for the global transaction"
    );
    assert_eq!(dump(&mut direct, "accounts").await, held);
    rolled_back(&mut a).await;
    waiting.await.unwrap().unwrap();
    assert_eq!(
        balance(&mut direct, 2).await,
        Some(1001),
        "applied over the restored row"
    );
    // Now nothing holds the table: TRUNCATE runs at once, also where writes fail.
    b.query_drop("TRUNCATE TABLE accounts").await.unwrap();
    assert!(dump(&mut direct, "accounts").await.is_empty());
    patient.shutdown().await;
    finish(lockserver, [global, outside]).await;
}

/// A multi-statement query of writes alone (a driver's rewritten batch) is checked
/// statement by statement while its table holds global locks: rows no global
/// transaction holds are written at once, each statement in autocommit its own
/// transaction as directly; the first statement that meets a held row fails with 1205
/// and ends the query, and what came before it stays. Inside the client's transaction
/// the failure leaves the transaction to the client. The global rollback then restores
/// the held row exactly.
#[tokio::test]
async fn a_batch_of_writes_is_checked_statement_by_statement() {
    let db = prepare("my_outside_batch").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    let held_before = balance(&mut direct, 2).await;
    let mut a = hold_row(&global, &db, 2).await;
    let mut b = my::connect(&outside, &db.name).await;

    let mut raw = super::at_mode::raw_session(&outside, &db.name).await;
    let reply = super::batches::multi_query(
        &mut raw,
        "UPDATE accounts SET balance = 5 WHERE id = 1; UPDATE accounts SET balance = 6 WHERE id = 3",
    )
    .await;
    let oks: Vec<(u8, Option<u16>)> = reply
        .iter()
        .map(|(seq, payload)| (*seq, super::batches::ok_status(payload)))
        .collect();
    // Numbered on; the first says more results follow, the last that none do.
    assert_eq!(
        oks,
        [(1, Some(0x0002 | 0x0008)), (2, Some(0x0002))],
        "one OK per statement, in autocommit: {reply:?}"
    );
    assert_eq!(
        (balance(&mut direct, 1).await, balance(&mut direct, 3).await),
        (Some(5), Some(6))
    );

    let failed = b
        .query_drop(
            "UPDATE accounts SET balance = 7 WHERE id = 1; UPDATE accounts SET balance = 8 WHERE id = 2; UPDATE accounts SET balance = 9 WHERE id = 3",
        )
        .await;
    assert_lock_wait_timeout(failed, "the held row");
    assert_eq!(
        (
            balance(&mut direct, 1).await,
            balance(&mut direct, 2).await,
            balance(&mut direct, 3).await
        ),
        (Some(7), Some(1), Some(6)),
        "the first committed, the held row kept, the last never ran"
    );
    // The session goes on in step.
    let one: Option<i64> = b.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));

    // A batch of INSERTs that would recreate a row a global transaction deleted: the
    // INSERT of that key fails as it does sent alone (from review: it ran unchecked,
    // and the deleting transaction's rollback then failed).
    let mut c = delete_held_row(&global, &db, 3).await;
    assert_lock_wait_timeout(
        b.query_drop("INSERT INTO accounts VALUES (50, 50, 'n'); INSERT INTO accounts VALUES (3, 3, 'again')")
            .await,
        "recreating the deleted row",
    );
    assert_eq!(balance(&mut direct, 3).await, None, "still deleted");
    assert_eq!(balance(&mut direct, 50).await, Some(50), "the first ran");
    rolled_back(&mut c).await;
    assert_eq!(
        balance(&mut direct, 3).await,
        Some(6),
        "the deleted row back"
    );
    direct
        .query_drop("DELETE FROM accounts WHERE id = 50")
        .await
        .unwrap();

    b.query_drop("START TRANSACTION").await.unwrap();
    assert_lock_wait_timeout(
        b.query_drop(
            "UPDATE accounts SET balance = 10 WHERE id = 1; DELETE FROM accounts WHERE id = 2",
        )
        .await,
        "in a transaction",
    );
    assert_eq!(
        balance(&mut b, 1).await,
        Some(10),
        "the first ran in the transaction"
    );
    b.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(balance(&mut direct, 1).await, Some(7));

    rolled_back(&mut a).await;
    assert_eq!(
        balance(&mut direct, 2).await,
        held_before,
        "restored exactly"
    );
    finish(lockserver, [outside, global]).await;
}

/// Text the server reads otherwise than tandem's tokenizer: an executable comment
/// holding a nested comment, one MariaDB runs and tandem took for a comment (`/*M!`),
/// one whose version MariaDB skips; a backslash that the session's sql_mode
/// (ANSI_QUOTES, NO_BACKSLASH_ESCAPES) makes end a literal. Each hid a write on a held
/// row, or took other rows than tandem checked, and ran unchecked; each is now judged
/// as a write to every table (1205 while any holds global locks) and runs once none
/// does.
#[tokio::test]
async fn text_the_server_reads_otherwise_is_judged_by_every_table() {
    let db = prepare("my_outside_read_otherwise").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    let mut a = hold_row(&global, &db, 2).await;
    let held = dump(&mut direct, "accounts").await;
    let mut b = my::connect(&outside, &db.name).await;
    let by_comments = [
        "/*!99999 /* x */ */ UPDATE accounts SET balance = 99 WHERE id = 2",
        "/*M!999999 /* x */ */ UPDATE accounts SET balance = 99 WHERE id = 2",
        "/*!99999 SELECT */ UPDATE accounts SET balance = 99 WHERE id = 2",
        "UPDATE accounts SET balance = 99 WHERE id = 3 /*M!100000 OR id = 2 */",
        // A space to the server that tandem's first words did not skip, and `--`
        // before a space that is not ASCII's: a comment to tandem's tokenizer only.
        "\x0bUPDATE accounts SET balance = 99 WHERE id = 2",
        "SELECT 1;\x0bDELETE FROM accounts WHERE id = 2",
        "SELECT 1 --\u{a0} FROM (SELECT 2 AS `\u{a0}`) d; UPDATE accounts SET balance = 99 WHERE id = 2",
        // `--` before a control character: a comment to the server only.
        "SELECT 1 --\x01 '\n; UPDATE accounts SET balance = 99 WHERE id = 2; -- '",
        // A `#` comment runs to the newline, past a carriage return.
        "# x\rSELECT 1\nUPDATE accounts SET balance = 99 WHERE id = 2",
        // Compound statements, whose statements tandem split apart.
        "BEGIN NOT ATOMIC UPDATE accounts SET balance = 99 WHERE id = 2; END",
        "IF 1 THEN UPDATE accounts SET balance = 99 WHERE id = 2; END IF",
    ];
    for sql in by_comments {
        assert_lock_wait_timeout(b.query_drop(sql).await, sql);
    }
    // A sql_mode spelled with an escape, set ahead in the same text.
    let escaped_mode = r#"SET sql_mode = 'AN\SI_QUOTES'; SELECT 1 AS "a\"; UPDATE accounts SET balance = 99 WHERE id = 2; -- ""#;
    assert_lock_wait_timeout(b.query_drop(escaped_mode).await, escaped_mode);
    b.query_drop("SET sql_mode = DEFAULT").await.unwrap();
    // sql_mode MSSQL's `[…]` names.
    b.query_drop("SET sql_mode = 'MSSQL'").await.unwrap();
    let bracketed =
        "SELECT 1 AS [']; UPDATE accounts SET balance = 99 WHERE id = 2; SELECT 1 AS [']";
    assert_lock_wait_timeout(b.query_drop(bracketed).await, bracketed);
    b.query_drop("SET sql_mode = DEFAULT").await.unwrap();
    // In cp866, 0xFF is a space; in macroman, 0xCB after `--` opens a comment.
    b.query_drop("SET NAMES cp866").await.unwrap();
    let cp866 = &b"\xffUPDATE accounts SET balance = 99 WHERE id = 2"[..];
    assert_lock_wait_timeout(b.query_drop(cp866).await, "cp866");
    b.query_drop("SET NAMES macroman").await.unwrap();
    let macroman = "SELECT 1 --\u{2c6} '\n; UPDATE accounts SET balance = 99 WHERE id = 2; -- '";
    assert_lock_wait_timeout(b.query_drop(macroman).await, "macroman");
    // In latin1, 0xA0 is a space too.
    b.query_drop("SET NAMES latin1").await.unwrap();
    let latin1 = &b"\xa0UPDATE accounts SET balance = 99 WHERE id = 2"[..];
    assert_lock_wait_timeout(b.query_drop(latin1).await, "latin1");
    let prepared = b.prep(latin1).await.unwrap();
    assert_lock_wait_timeout(b.exec_drop(&prepared, ()).await, "latin1, prepared");
    // Judged by its tables, read as latin1: another table's write runs.
    b.query_drop(&b"UPDATE items SET name = 'caf\xe9' WHERE id = 1"[..])
        .await
        .unwrap();
    // In cp1250, judged by its tables too: its bytes other than ASCII's are in a
    // literal.
    b.query_drop("SET NAMES cp1250").await.unwrap();
    b.query_drop(&b"UPDATE items SET name = '\xe8' WHERE id = 1"[..])
        .await
        .unwrap();
    // A quote in a backtick name opens no literal: the 0xA0 (a space) is in code.
    let spaced =
        &b"SELECT 1 AS `'`; UPDATE accounts\xa0zz SET balance = 99 WHERE id = 2; SELECT 1 AS `'`"[..];
    assert_lock_wait_timeout(b.query_drop(spaced).await, "cp1250 space");
    b.query_drop("SET NAMES utf8mb4").await.unwrap();
    // Read alike, or only values read otherwise: judged by their own tables, they run.
    for sql in [
        "UPDATE items SET name = 'prix --\u{a0}10' WHERE id = 1",
        "UPDATE items SET name = '/*M!100616 x */' WHERE id = 1",
        // A sql_mode that moves no literal's end, ahead of a backslash.
        r"SET SQL_MODE='NO_AUTO_VALUE_ON_ZERO'; UPDATE items SET name = 'It\'s' WHERE id = 1; SET SQL_MODE = DEFAULT",
        "/*M!999999\\- enable the sandbox mode */\nUPDATE items SET name = 'sandboxed' WHERE id = 1",
        r#"/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE */; UPDATE items SET name = '{"a":"x\"y"}' WHERE id = 1"#,
    ] {
        b.query_drop(sql).await.unwrap();
    }
    b.query_drop("SET sql_mode = 'NO_BACKSLASH_ESCAPES'")
        .await
        .unwrap();
    b.query_drop(r"UPDATE items SET name = 'C:\Users\x' WHERE id = 1")
        .await
        .unwrap();
    b.query_drop("SET sql_mode = DEFAULT").await.unwrap();
    let name: Option<String> = direct
        .query_first("SELECT name FROM items WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(name.as_deref(), Some(r"C:\Users\x"));
    let by_sql_mode = [
        (
            "ANSI_QUOTES",
            r#"SELECT 1 AS "a\"; UPDATE accounts SET balance = 99 WHERE id = 2; -- ""#,
        ),
        (
            "NO_BACKSLASH_ESCAPES",
            r"SELECT 'a\'; UPDATE accounts SET balance = 99 WHERE id = 2; -- '",
        ),
        (
            "NO_BACKSLASH_ESCAPES",
            r"UPDATE accounts SET balance = 99 WHERE note = '\' OR id = 2 -- '",
        ),
    ];
    for (mode, sql) in by_sql_mode {
        b.query_drop(format!("SET sql_mode = '{mode}'"))
            .await
            .unwrap();
        assert_lock_wait_timeout(b.query_drop(sql).await, sql);
        // Prepared, the same.
        let prepared = b.prep(sql).await;
        if let Ok(statement) = prepared {
            assert_lock_wait_timeout(b.exec_drop(&statement, ()).await, sql);
        }
    }
    b.query_drop("SET sql_mode = DEFAULT").await.unwrap();
    assert_eq!(dump(&mut direct, "accounts").await, held, "nothing changed");
    // The rest of the session goes on, reads and checked writes alike.
    b.query_drop("UPDATE accounts SET balance = 33 WHERE id = 3")
        .await
        .unwrap();
    rolled_back(&mut a).await;
    no_table_held(&lockserver).await;
    // Nothing holds a table now: they run, as the server reads them.
    b.query_drop("SET sql_mode = 'ANSI_QUOTES'").await.unwrap();
    b.query_drop(by_sql_mode[0].1).await.unwrap();
    b.query_drop("SET sql_mode = DEFAULT").await.unwrap();
    b.query_drop(by_comments[0]).await.unwrap();
    assert_eq!(balance(&mut direct, 2).await, Some(99));
    finish(lockserver, [global, outside]).await;
}

/// A write to a table no global transaction has locked yet holds that table's guard
/// while it runs. In a batch whose next statement tandem checks, tandem runs it itself
/// and answers the whole query, so no reply of the server's ends it: the guard ends
/// with the answer, and a global transaction's first lock on that table is not kept
/// waiting by the idle session.
#[tokio::test]
async fn a_write_tandem_answered_holds_no_table_guard_past_its_answer() {
    let db = prepare("my_outside_guard_ends").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    let items_before = dump(&mut direct, "items").await;
    let mut a = hold_row(&global, &db, 2).await;
    let mut b = my::connect(&outside, &db.name).await;
    b.query_drop(
        "UPDATE items SET name = 'by b' WHERE id = 1; UPDATE accounts SET balance = 5 WHERE id = 1",
    )
    .await
    .unwrap();
    let started = Instant::now();
    a.query_drop("UPDATE items SET name = 'by a' WHERE id = 1")
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the first global lock on items waited {:?} for the idle session",
        started.elapsed()
    );
    rolled_back(&mut a).await;
    assert_eq!(
        dump(&mut direct, "items").await,
        ["[Int(1), Bytes(\"by b\")]"],
        "the global write undone to b's"
    );
    assert_ne!(dump(&mut direct, "items").await, items_before);
    drop(b);
    finish(lockserver, [global, outside]).await;
}

/// A DELETE or REPLACE whose foreign-key actions reach a table that holds global locks
/// fails with 1205 and changes nothing, text or prepared; an UPDATE that sets no
/// referenced column runs; the rollback then restores the held row exactly.
#[tokio::test]
async fn writes_reaching_held_tables_through_foreign_keys_fail() {
    let db = prepare("my_outside_reaching").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    direct
        .query_drop(
            "CREATE TABLE parent (id INT PRIMARY KEY, n INT) ENGINE=InnoDB;
             INSERT INTO parent VALUES (1, 0), (2, 0);
             CREATE TABLE child (id INT PRIMARY KEY, p INT, v INT,
                 FOREIGN KEY (p) REFERENCES parent (id) ON DELETE CASCADE) ENGINE=InnoDB;
             INSERT INTO child VALUES (1, 1, 1);
             CREATE TABLE parent2 (id INT PRIMARY KEY) ENGINE=InnoDB;
             INSERT INTO parent2 VALUES (1), (2), (3);
             CREATE TABLE child2 (id INT PRIMARY KEY, p INT, v INT) ENGINE=InnoDB;
             INSERT INTO child2 VALUES (1, 1, 1), (2, 2, 2);",
        )
        .await
        .unwrap();
    let mut a = in_global_transaction(&global, &db, "UPDATE child SET v = 100 WHERE id = 1").await;
    a.query_drop("UPDATE child2 SET v = 100 WHERE id = 1")
        .await
        .unwrap();
    let held = (
        dump(&mut direct, "parent").await,
        dump(&mut direct, "child").await,
    );

    let mut b = my::connect(&outside, &db.name).await;
    for sql in [
        "DELETE FROM parent WHERE id = 1",
        "REPLACE INTO parent VALUES (1, 5)",
        // Judged by the tables they name, and by what those tables' actions reach.
        "SELECT 1; DELETE FROM parent WHERE id = 1",
        "EXECUTE IMMEDIATE 'DELETE FROM parent WHERE id = 1'",
    ] {
        assert_lock_wait_timeout(b.query_drop(sql).await, sql);
    }
    assert_lock_wait_timeout(
        b.exec_drop("DELETE FROM parent WHERE id = ?", (2i32,))
            .await,
        "prepared DELETE reaching a held table",
    );
    assert_eq!(
        (
            dump(&mut direct, "parent").await,
            dump(&mut direct, "child").await
        ),
        held,
        "nothing refused changed a row"
    );
    // Its foreign key does not act on this UPDATE: it runs.
    b.query_drop("UPDATE parent SET n = 1 WHERE id = 2")
        .await
        .unwrap();
    // From review: a foreign key this session adds (over the binary protocol, by
    // EXECUTE IMMEDIATE, ahead of the write in one query) is followed at once.
    let child2 = dump(&mut direct, "child2").await;
    b.query_drop(
        "ALTER TABLE child2 ADD CONSTRAINT ahead FOREIGN KEY (p) REFERENCES parent2 (id) ON DELETE CASCADE; DELETE FROM parent2 WHERE id = 1",
    )
    .await
    .expect_err("DDL ahead of the write in one query");
    // The table's metadata read once more, with no foreign key.
    b.query_drop("DELETE FROM parent2 WHERE id = 3")
        .await
        .unwrap();
    b.exec_drop(
        "ALTER TABLE child2 ADD CONSTRAINT prepared FOREIGN KEY (p) REFERENCES parent2 (id) ON DELETE CASCADE",
        (),
    )
    .await
    .unwrap();
    assert_lock_wait_timeout(
        b.query_drop("DELETE FROM parent2 WHERE id = 1").await,
        "reaches the held child2 row",
    );
    b.query_drop("ALTER TABLE child2 DROP FOREIGN KEY prepared")
        .await
        .unwrap();
    b.query_drop("DELETE FROM parent2 WHERE id = 99")
        .await
        .unwrap();
    b.query_drop(
        "EXECUTE IMMEDIATE 'ALTER TABLE child2 ADD CONSTRAINT immediate FOREIGN KEY (p) REFERENCES parent2 (id) ON DELETE CASCADE'",
    )
    .await
    .unwrap();
    assert_lock_wait_timeout(
        b.query_drop("DELETE FROM parent2 WHERE id = 1").await,
        "reaches the held child2 row",
    );
    assert_eq!(dump(&mut direct, "child2").await, child2);

    rolled_back(&mut a).await;
    let v: Option<i32> = direct
        .query_first("SELECT v FROM child WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(v, Some(1), "rolled back exactly");
    finish(lockserver, [global, outside]).await;
}

/// A write through a view changes rows of the tables under it, which no key of the
/// view names: while one of them holds global locks it fails with 1205 and changes
/// nothing, text or prepared, through nested views and in multi-statement queries;
/// through a view of a table holding none it runs. The rollback then restores the
/// held row exactly.
#[tokio::test]
async fn writes_through_views_fail_while_the_tables_under_them_hold_global_locks() {
    let db = prepare("my_outside_views").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    direct
        .query_drop(
            "CREATE VIEW acc_view AS SELECT * FROM accounts;
             CREATE VIEW acc_view2 AS SELECT a.* FROM acc_view a WHERE a.balance >= 0;
             CREATE VIEW items_view AS SELECT * FROM items;",
        )
        .await
        .unwrap();
    let original = dump(&mut direct, "accounts").await;
    let mut a = hold_row(&global, &db, 2).await;
    let held = dump(&mut direct, "accounts").await;

    let mut b = my::connect(&outside, &db.name).await;
    for sql in [
        "UPDATE acc_view SET balance = 5 WHERE id = 2",
        "DELETE FROM acc_view2 WHERE id = 2",
        "SELECT 1; UPDATE acc_view2 SET balance = 6 WHERE id = 2",
    ] {
        let err = assert_lock_wait_timeout(b.query_drop(sql).await, sql);
        assert!(err.to_string().contains("table accounts"), "{sql}: {err}");
    }
    assert_lock_wait_timeout(
        b.exec_drop("UPDATE acc_view2 SET balance = ? WHERE id = 2", (7,))
            .await,
        "prepared UPDATE through a view",
    );
    assert_eq!(dump(&mut direct, "accounts").await, held, "nothing changed");
    // From review: a view of another database named like the table a view reads; a
    // view redefined by this session a moment ago.
    let other = format!("{}_other", db.name);
    direct
        .query_drop(format!(
            "DROP DATABASE IF EXISTS `{other}`; CREATE DATABASE `{other}`;
             CREATE VIEW `{other}`.accounts AS SELECT * FROM `{}`.accounts",
            db.name
        ))
        .await
        .unwrap();
    b.query_drop("CREATE OR REPLACE VIEW items_view AS SELECT * FROM accounts")
        .await
        .unwrap();
    for sql in [
        "UPDATE acc_view SET balance = 8 WHERE id = 2",
        "UPDATE items_view SET balance = 8 WHERE id = 2",
    ] {
        assert_lock_wait_timeout(b.query_drop(sql).await, sql);
    }
    assert_eq!(dump(&mut direct, "accounts").await, held, "nothing changed");
    b.query_drop("CREATE OR REPLACE VIEW items_view AS SELECT * FROM items")
        .await
        .unwrap();
    // Through a view of a table that holds no global lock: it runs.
    b.exec_drop("UPDATE items_view SET name = ? WHERE id = 1", ("renamed",))
        .await
        .unwrap();
    let name: Option<String> = direct
        .query_first("SELECT name FROM items WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(name.as_deref(), Some("renamed"));

    rolled_back(&mut a).await;
    assert_eq!(
        dump(&mut direct, "accounts").await,
        original,
        "rolled back exactly"
    );
    direct
        .query_drop(format!("DROP DATABASE `{other}`"))
        .await
        .unwrap();
    finish(lockserver, [global, outside]).await;
}

/// MariaDB's INSERT, REPLACE and DELETE … RETURNING are checked as the same writes
/// without it, in autocommit and in the client's transaction, text and prepared: a held
/// row (or a held key an INSERT would recreate) fails with 1205 and nothing changes;
/// other rows are written and the client gets the rows its RETURNING gives, with the
/// status and ROW_COUNT() it would get from the server.
#[tokio::test]
async fn writes_with_returning_are_checked_and_answer_their_rows() {
    let db = prepare("my_outside_returning").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    let original = dump(&mut direct, "accounts").await;
    let mut a = hold_row(&global, &db, 2).await;
    a.query_drop("DELETE FROM accounts WHERE id = 3")
        .await
        .unwrap();
    let held = dump(&mut direct, "accounts").await;

    let mut b = my::connect(&outside, &db.name).await;
    for sql in [
        "DELETE FROM accounts WHERE id = 2 RETURNING id",
        "DELETE FROM accounts WHERE id >= 2 RETURNING id, note",
        "REPLACE INTO accounts VALUES (2, 5, 'r') RETURNING id",
        "INSERT INTO accounts VALUES (3, 5, 'i') RETURNING id",
    ] {
        assert_lock_wait_timeout(b.query_drop(sql).await, sql);
    }
    assert_lock_wait_timeout(
        b.exec_drop(
            "DELETE FROM accounts WHERE id = ? RETURNING id, balance",
            (2,),
        )
        .await,
        "prepared DELETE … RETURNING of a held row",
    );
    b.query_drop("START TRANSACTION").await.unwrap();
    assert_lock_wait_timeout(
        b.query_drop("DELETE FROM accounts WHERE id = 2 RETURNING id")
            .await,
        "in a transaction",
    );
    b.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(dump(&mut direct, "accounts").await, held, "nothing changed");

    // Rows nobody holds: written, and their rows returned as the server gives them.
    let deleted: Vec<(i32, String)> = b
        .query("DELETE FROM accounts WHERE id = 1 RETURNING id, note")
        .await
        .unwrap();
    assert_eq!(deleted, [(1, "a".to_owned())]);
    let after: Vec<(i64, i64)> = b
        .query("SELECT ROW_COUNT(), @@in_transaction")
        .await
        .unwrap();
    assert_eq!(after, [(-1, 0)], "as after the DELETE, in autocommit");
    let inserted: Vec<(i32, i64)> = b
        .exec(
            "INSERT INTO accounts VALUES (?, 7, 'p'), (41, 8, 'q') RETURNING id, balance",
            (40,),
        )
        .await
        .unwrap();
    assert_eq!(inserted, [(40, 7), (41, 8)]);
    b.query_drop("START TRANSACTION").await.unwrap();
    let replaced: Vec<(i32, String)> = b
        .query("REPLACE INTO accounts VALUES (40, 9, 'x') RETURNING id, note")
        .await
        .unwrap();
    assert_eq!(replaced, [(40, "x".to_owned())]);
    let in_transaction: Option<i64> = b.query_first("SELECT @@in_transaction").await.unwrap();
    assert_eq!(in_transaction, Some(1));
    b.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(balance(&mut direct, 1).await, None);
    assert_eq!(
        balance(&mut direct, 40).await,
        Some(7),
        "the REPLACE rolled back"
    );
    direct
        .query_drop(
            "DELETE FROM accounts WHERE id IN (40, 41); INSERT INTO accounts VALUES (1, 1000, 'a')",
        )
        .await
        .unwrap();

    // From review: a returned row of 16 MiB or more comes whole, and the session goes
    // on (its packets were refused as tandem's own reply's, and the session ended).
    direct
        .query_drop(
            "CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB) ENGINE=InnoDB;
             INSERT INTO big VALUES (1, REPEAT('x', 16777200)), (2, 'small');",
        )
        .await
        .unwrap();
    a.query_drop("UPDATE big SET b = 'held' WHERE id = 2")
        .await
        .unwrap();
    let mut large =
        mysql_async::Conn::new(my::opts(&outside, &db.name).max_allowed_packet(Some(64 << 20)))
            .await
            .unwrap();
    let returned: Vec<(i32, Vec<u8>, String)> = large
        .query("DELETE FROM big WHERE id = 1 RETURNING id, b, 'padpadpadpad'")
        .await
        .unwrap();
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0].1.len(), 16_777_200);
    assert!(returned[0].1.iter().all(|&c| c == b'x'));
    let count: Option<i64> = large.query_first("SELECT COUNT(*) FROM big").await.unwrap();
    assert_eq!(count, Some(1));
    // From review: a checked write whose row tandem reads is as large (it ended the
    // session).
    direct
        .query_drop("INSERT INTO big VALUES (3, REPEAT('z', 16777209))")
        .await
        .unwrap();
    large
        .query_drop("UPDATE big SET b = 'q' WHERE id = 3")
        .await
        .unwrap();
    large
        .query_drop("DELETE FROM big WHERE id = 3")
        .await
        .unwrap();

    rolled_back(&mut a).await;
    assert_eq!(
        dump(&mut direct, "accounts").await,
        original,
        "rolled back exactly"
    );
    finish(lockserver, [global, outside]).await;
}

/// What runs another statement's text is judged by that text's tables: an EXECUTE of a
/// statement the session prepared from a literal, EXECUTE IMMEDIATE, MariaDB's ANALYZE
/// of a write. While a table it may change holds global locks it fails with 1205 and
/// changes nothing; a prepared read runs; a statement prepared from a variable may
/// change any table.
#[tokio::test]
async fn sql_level_execute_and_analyze_are_judged_by_the_statement_they_run() {
    let db = prepare("my_outside_execute").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    let original = dump(&mut direct, "accounts").await;
    let mut a = hold_row(&global, &db, 2).await;
    let held = dump(&mut direct, "accounts").await;

    let mut b = my::connect(&outside, &db.name).await;
    b.query_drop("PREPARE upd FROM 'UPDATE accounts SET balance = 5 WHERE id = 2'")
        .await
        .unwrap();
    b.query_drop("SET @q = 'SELECT 1'; PREPARE dyn FROM @q")
        .await
        .unwrap();
    for sql in [
        "EXECUTE upd",
        "SELECT 1; EXECUTE upd",
        "EXECUTE dyn",
        "EXECUTE IMMEDIATE 'DELETE FROM accounts WHERE id = 2'",
        "ANALYZE UPDATE accounts SET balance = 7 WHERE id = 2",
        "ANALYZE FORMAT=JSON DELETE FROM accounts WHERE id = 2",
        "SET STATEMENT max_statement_time = 100 FOR EXECUTE upd",
        "SET STATEMENT max_statement_time = 100 FOR ANALYZE UPDATE accounts SET balance = 7 WHERE id = 2",
    ] {
        assert_lock_wait_timeout(b.query_drop(sql).await, sql);
    }
    assert_lock_wait_timeout(
        b.exec_drop("ANALYZE UPDATE accounts SET balance = ? WHERE id = 2", (7,))
            .await,
        "a prepared ANALYZE of a write",
    );
    // From review: a PREPARE behind a failed statement did not run, and a procedure
    // run by EXECUTE IMMEDIATE may prepare names.
    b.query_drop("PREPARE upd FROM 'UPDATE accounts SET balance = 5 WHERE id = 2'")
        .await
        .unwrap();
    b.query_drop("SELECT * FROM no_such_table; PREPARE upd FROM 'SELECT 1'")
        .await
        .expect_err("the first statement fails");
    assert_lock_wait_timeout(b.query_drop("EXECUTE upd").await, "still the UPDATE");
    direct
        .query_drop(
            "CREATE PROCEDURE prepares() PREPARE later FROM 'UPDATE accounts SET balance = 9 WHERE id = 2'",
        )
        .await
        .unwrap();
    b.query_drop("PREPARE later FROM 'SELECT 1'").await.unwrap();
    b.query_drop("EXECUTE IMMEDIATE 'CALL prepares()'")
        .await
        .unwrap();
    assert_lock_wait_timeout(b.query_drop("EXECUTE later").await, "the UPDATE");
    assert_eq!(dump(&mut direct, "accounts").await, held, "nothing changed");

    // A prepared read runs, and so does a name prepared anew as one.
    b.query_drop("PREPARE sel FROM 'SELECT balance FROM accounts WHERE id = ?'")
        .await
        .unwrap();
    b.query_drop("SET @i = 3").await.unwrap();
    let read: Vec<i64> = b.query("EXECUTE sel USING @i").await.unwrap();
    assert_eq!(read, [1000]);
    b.query_drop("PREPARE upd FROM 'SELECT 2'").await.unwrap();
    let read: Vec<i64> = b.query("EXECUTE upd").await.unwrap();
    assert_eq!(read, [2]);
    // Writes to a table that holds no global lock run.
    b.query_drop("ANALYZE UPDATE items SET name = 'z' WHERE id = 1")
        .await
        .unwrap();
    let name: Option<String> = direct
        .query_first("SELECT name FROM items WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(name.as_deref(), Some("z"));

    rolled_back(&mut a).await;
    assert_eq!(
        dump(&mut direct, "accounts").await,
        original,
        "rolled back exactly"
    );
    finish(lockserver, [global, outside]).await;
}

/// A table stays announced for `unannounce_after_ms` (10 s) after its last global
/// lock. A write judged by its tables does not wait that out, in either mode: the
/// lockserver lets go of a table holding no lock, unused for `release_after_idle_ms`,
/// when the write asks. The next global
/// transaction announces it again, and the write fails again while its row is held.
#[tokio::test]
async fn a_write_judged_by_its_tables_runs_once_they_hold_no_global_lock() {
    let db = prepare("my_outside_let_go").await;
    let (lockserver, global, outside) = proxies(OutsideWrites::Fail).await;
    let mut direct = db.direct().await;
    let mut b = my::connect(&outside, &db.name).await;
    let judged =
        |id: i32| format!("SELECT 1; UPDATE accounts SET balance = balance + 1 WHERE id = {id}");
    for (round, end) in ["SELECT tandem_rollback()", "SELECT tandem_commit()"]
        .into_iter()
        .enumerate()
    {
        let mut a = hold_row(&global, &db, 2).await;
        let held = dump(&mut direct, "accounts").await;
        assert_lock_wait_timeout(b.query_drop(judged(2)).await, end);
        assert_eq!(dump(&mut direct, "accounts").await, held, "{end}");
        text(&mut a, end).await.unwrap();
        no_table_held(&lockserver).await;
        b.query_drop(judged(2)).await.unwrap();
        let expected = [1001, 2][round];
        assert_eq!(balance(&mut direct, 2).await, Some(expected), "after {end}");
    }
    // The table is announced again for the next global transaction, whose rollback
    // is exact.
    let before = dump(&mut direct, "accounts").await;
    let mut a = hold_row(&global, &db, 3).await;
    assert_lock_wait_timeout(b.query_drop(judged(3)).await, "held by the next");
    rolled_back(&mut a).await;
    assert_eq!(dump(&mut direct, "accounts").await, before);
    drop((a, b));
    finish(lockserver, [global, outside]).await;
}
