//! AT mode and global locks: conflicts between global transactions, locking reads,
//! dirty writes, and transactions abandoned by their client.

use super::at_mode::{balance, dump, one, prepare, rollback_begun, rolled_back, undo_rows};
use tandem_tests::harness::{Tandem, TestDb, eventually};
use tandem_tests::lockserver::{Kind, TestLockserver};
use tandem_tests::raw_pg::{RawPg, reply_tags};
use tokio_postgres::error::SqlState;

/// A global lock held past the wait bound: the error a client retries (40001 or
/// 55P03).
fn assert_retryable_conflict(err: &tokio_postgres::Error) {
    assert!(
        [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::LOCK_NOT_AVAILABLE
        ]
        .contains(err.code().unwrap()),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_dirty_write_stops_the_rollback_and_keeps_the_locks() {
    let orders = prepare("at_dirty").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    a.batch_execute("UPDATE accounts SET balance = 1 WHERE id = 5")
        .await
        .unwrap();
    // Someone writes the row directly, bypassing tandem.
    let direct = orders.direct().await;
    direct
        .batch_execute("UPDATE accounts SET balance = 777 WHERE id = 5")
        .await
        .unwrap();
    let status = one(&a, "SELECT tandem_rollback()").await.unwrap();
    assert!(
        matches!(
            status.as_deref(),
            Some("RollbackFailed") | Some("RollbackRetrying")
        ),
        "{status:?}"
    );
    assert_eq!(
        balance(&direct, 5).await,
        777,
        "the dirty value is left alone"
    );
    assert_eq!(
        undo_rows(&direct).await,
        1,
        "the undo row stays for operators"
    );
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(1), "{locks}");
    let (_, txn) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
    assert!(
        txn["status"].as_str().unwrap_or("").starts_with("Rollback"),
        "{txn}"
    );
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// What README tells an operator to do with a RollbackFailed global transaction works:
/// put the row back as the branch left it and roll back again (the rollback then
/// restores the row as it was before), or keep the row as it now is by deleting the
/// branch's undo rows and rolling back again. Either way the transaction ends
/// Rollbacked and its locks go.
#[tokio::test]
async fn an_operator_ends_a_rollback_failed_transaction_either_way() {
    let orders = prepare("at_dirty_resolved").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    for keep_the_dirty_write in [false, true] {
        let xid = one(&a, "SELECT tandem_begin(30000)")
            .await
            .unwrap()
            .unwrap();
        a.batch_execute("UPDATE accounts SET balance = 1 WHERE id = 5")
            .await
            .unwrap();
        direct
            .batch_execute("UPDATE accounts SET balance = 777 WHERE id = 5")
            .await
            .unwrap();
        let status = one(&a, "SELECT tandem_rollback()").await.unwrap();
        assert_eq!(status.as_deref(), Some("RollbackFailed"));
        let expected = if keep_the_dirty_write {
            direct
                .execute("DELETE FROM undo_log WHERE xid = $1", &[&xid])
                .await
                .unwrap();
            dump(&direct).await
        } else {
            direct
                .batch_execute("UPDATE accounts SET balance = 1 WHERE id = 5")
                .await
                .unwrap();
            before.clone()
        };
        let (code, body) = lockserver
            .post(&format!("/v1/transactions/{xid}/rollback"), None)
            .await;
        assert_eq!(
            (code, body["status"].as_str()),
            (200, Some("Rollbacked")),
            "{body}"
        );
        assert_eq!(
            dump(&direct).await,
            expected,
            "kept: {keep_the_dirty_write}"
        );
        let (_, locks) = lockserver.get("/v1/locks").await;
        assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
        eventually("the undo rows are gone", || async {
            undo_rows(&direct).await == 0
        })
        .await;
    }
    assert_eq!(
        balance(&direct, 5).await,
        777,
        "the dirty write the operator kept"
    );
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_conflicting_global_transaction_waits_then_succeeds_or_gets_a_retryable_error() {
    let orders = prepare("at_conflict").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let first = tandem.connect(&orders.name).await;
    let second = tandem.connect(&orders.name).await;
    one(&first, "SELECT tandem_begin(30000)").await.unwrap();
    first
        .batch_execute("UPDATE accounts SET balance = balance + 1 WHERE id = 3")
        .await
        .unwrap();

    // The second global transaction writes the same row: its local commit waits for the
    // global lock, and succeeds once the first commits.
    one(&second, "SELECT tandem_begin(30000)").await.unwrap();
    let waiter = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let result = second
            .batch_execute("UPDATE accounts SET balance = balance + 10 WHERE id = 3")
            .await;
        (result, started.elapsed(), second)
    });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(
        !waiter.is_finished(),
        "the second writer did not wait for the lock"
    );
    assert_eq!(
        one(&first, "SELECT tandem_commit()")
            .await
            .unwrap()
            .as_deref(),
        Some("Committed")
    );
    let (result, waited, second) = waiter.await.unwrap();
    result.expect("the waiter succeeds once the lock is free");
    assert!(waited >= std::time::Duration::from_millis(300));
    assert_eq!(
        one(&second, "SELECT tandem_commit()")
            .await
            .unwrap()
            .as_deref(),
        Some("Committed")
    );
    assert_eq!(balance(&orders.direct().await, 3).await, 1011);

    // Held past the wait bound: a retryable error, and the row is as the holder left it.
    one(&first, "SELECT tandem_begin(30000)").await.unwrap();
    first
        .batch_execute("UPDATE accounts SET balance = 0 WHERE id = 4")
        .await
        .unwrap();
    one(&second, "SELECT tandem_begin(30000)").await.unwrap();
    let err = second
        .batch_execute("UPDATE accounts SET balance = 5 WHERE id = 4")
        .await
        .expect_err("the lock is held past the wait bound");
    assert_retryable_conflict(&err);
    rolled_back(&second).await;
    rolled_back(&first).await;
    assert_eq!(balance(&orders.direct().await, 4).await, 1000);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_is_rolled_back_by_the_timeout() {
    let orders = prepare("at_gone").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    let a = tandem.connect(&orders.name).await;
    let xid = one(&a, "SELECT tandem_begin(500)").await.unwrap().unwrap();
    a.batch_execute("UPDATE accounts SET balance = -1 WHERE id = 1")
        .await
        .unwrap();
    a.batch_execute("DELETE FROM accounts WHERE id = 2")
        .await
        .unwrap();
    drop(a);
    eventually(
        "the lockserver rolls the abandoned transaction back",
        || async {
            let (_, txn) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
            txn["status"] == "TimeoutRollbacked"
        },
    )
    .await;
    assert_eq!(dump(&direct).await, before, "restored after the timeout");
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn select_for_update_waits_for_another_global_transactions_lock() {
    let orders = prepare("at_sfu").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let holder = tandem.connect(&orders.name).await;
    let reader = tandem.connect(&orders.name).await;
    one(&holder, "SELECT tandem_begin(30000)").await.unwrap();
    holder
        .batch_execute("UPDATE accounts SET balance = 42 WHERE id = 5")
        .await
        .unwrap();
    // The holder's own locks do not stop it.
    let own = one(
        &holder,
        "SELECT balance FROM accounts WHERE id = 5 FOR UPDATE",
    )
    .await
    .unwrap();
    assert_eq!(own.as_deref(), Some("42"));

    one(&reader, "SELECT tandem_begin(30000)").await.unwrap();
    let waiting = tokio::spawn(async move {
        let got = one(
            &reader,
            "SELECT balance FROM accounts WHERE id = 5 FOR UPDATE",
        )
        .await;
        (got, reader)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the locking read did not wait for the global lock"
    );
    assert_eq!(
        one(&holder, "SELECT tandem_commit()")
            .await
            .unwrap()
            .as_deref(),
        Some("Committed")
    );
    let (got, reader) = waiting.await.unwrap();
    assert_eq!(
        got.unwrap().as_deref(),
        Some("42"),
        "it reads the committed value"
    );
    // Over the extended protocol, with a parameter: the same wait.
    one(&holder, "SELECT tandem_begin(30000)").await.unwrap();
    holder
        .batch_execute("UPDATE accounts SET balance = 43 WHERE id = 4")
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let got = reader
            .query_one(
                "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE",
                &[&4i32],
            )
            .await
            .map(|r| r.get::<_, i64>(0));
        (got, reader)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the extended locking read did not wait for the global lock"
    );
    assert_eq!(
        one(&holder, "SELECT tandem_commit()")
            .await
            .unwrap()
            .as_deref(),
        Some("Committed")
    );
    let (got, reader) = waiting.await.unwrap();
    assert_eq!(got.unwrap(), 43, "it reads the committed value");
    // Several tables at once cannot be checked row by row: refused.
    let err = reader
        .simple_query("SELECT * FROM accounts a JOIN moves_missing m ON m.id = a.id FOR UPDATE")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED));
    one(&reader, "SELECT tandem_rollback()").await.unwrap();
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_global_commit_that_overtakes_a_branchs_local_commit_still_deletes_its_undo_row() {
    let orders = prepare("at_overtaken").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE parents (id int PRIMARY KEY);
             INSERT INTO parents VALUES (1);
             CREATE TABLE kids (id int PRIMARY KEY,
                 parent int NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let b = tandem.connect(&orders.name).await;
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    one(&b, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    // The kid's deferred foreign-key check must wait at COMMIT for this lock: B's local
    // COMMIT stalls after its branch registered, with its undo row not yet visible.
    let holder = orders.direct().await;
    holder
        .batch_execute("BEGIN; SELECT * FROM parents WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    b.batch_execute("BEGIN; INSERT INTO kids VALUES (1, 1)")
        .await
        .unwrap();
    let committing = tokio::spawn(async move {
        let result = b.batch_execute("COMMIT").await;
        (result, b)
    });
    eventually("B's COMMIT waits for the parent row", || async {
        let waiting: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query = 'COMMIT'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        waiting == 1
    })
    .await;
    let (_, txn) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
    assert_eq!(txn["branches"].as_array().map(Vec::len), Some(1), "{txn}");

    // The global commit overtakes B's COMMIT: its phase 2 finds no undo row yet.
    assert_eq!(
        one(&a, "SELECT tandem_commit()").await.unwrap().as_deref(),
        Some("Committed")
    );
    eventually("phase 2 looks for the undo row, and is retried", || async {
        tandem.metric("tandem_pg_undo_rows_awaited_total").await >= 2.0
    })
    .await;
    let (_, txn) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
    assert_eq!(txn["status"], "AsyncCommitting", "{txn}");
    assert!(!committing.is_finished(), "B's COMMIT did not wait");
    holder.batch_execute("COMMIT").await.unwrap();
    let (result, _b) = committing.await.unwrap();
    result.expect("B's local COMMIT succeeds");
    eventually("the late undo row is deleted", || async {
        undo_rows(&direct).await == 0
    })
    .await;
    eventually("the global transaction is over", || async {
        let (_, txn) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
        txn["status"] == "Committed"
    })
    .await;
    let kids: i64 = direct
        .query_one("SELECT count(*) FROM kids WHERE id = 1 AND parent = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kids, 1, "the branch's write is committed");
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_key_too_long_for_a_lock_key_is_locked_by_its_hash() {
    let orders = prepare("at_long_key").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE longs (k text PRIMARY KEY, v int);
             INSERT INTO longs VALUES (repeat('k', 3000), 1), (repeat('k', 2999) || 'j', 1);",
        )
        .await
        .unwrap();
    let rows = async || -> Vec<String> {
        direct
            .query("SELECT t::text FROM longs t ORDER BY k", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let before = rows().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let b = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute("UPDATE longs SET v = 2 WHERE k = repeat('k', 3000)")
        .await
        .expect("a 3,000-byte key commits its branch");
    // The same key again conflicts; the key that differs in its last byte does not.
    one(&b, "SELECT tandem_begin(30000)").await.unwrap();
    b.batch_execute("UPDATE longs SET v = 3 WHERE k = repeat('k', 2999) || 'j'")
        .await
        .unwrap();
    let err = b
        .batch_execute("UPDATE longs SET v = 3 WHERE k = repeat('k', 3000)")
        .await
        .expect_err("the held row");
    assert_retryable_conflict(&err);
    rolled_back(&b).await;
    rolled_back(&a).await;
    assert_eq!(rows().await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A row of a partitioned table is one global lock whether a write names the table or
/// the partition that holds the row, for global transactions and for writes outside
/// them alike. Tables in an inheritance hierarchy, whose parents' writes change their
/// children's rows, are refused.
#[tokio::test]
async fn a_row_is_one_lock_through_its_partitioned_table_and_its_partition() {
    let orders = prepare("at_partitions").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE fp (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
             CREATE TABLE fp_1 PARTITION OF fp FOR VALUES FROM (1) TO (100);
             INSERT INTO fp SELECT g, 'v' || g FROM generate_series(1, 5) g;
             CREATE TABLE par (id int PRIMARY KEY, v text);
             CREATE TABLE chi () INHERITS (par);
             INSERT INTO par VALUES (1, 'p'); INSERT INTO chi VALUES (1, 'c');
             CREATE VIEW fv AS SELECT * FROM fp;",
        )
        .await
        .unwrap();
    let rows = |table: &'static str| {
        let direct = &direct;
        async move {
            direct
                .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };
    let before = (rows("fp").await, rows("par").await);
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let first = tandem.connect(&orders.name).await;
    let second = tandem.connect(&orders.name).await;
    let outside = tandem.connect(&orders.name).await;
    one(&first, "SELECT tandem_begin(30000)").await.unwrap();
    first
        .batch_execute("UPDATE fp SET v = 'first' WHERE id = 2")
        .await
        .unwrap();
    one(&second, "SELECT tandem_begin(30000)").await.unwrap();
    let err = second
        .batch_execute("UPDATE fp_1 SET v = 'second' WHERE id = 2")
        .await
        .expect_err("row 2 is held through its partitioned table");
    assert_retryable_conflict(&err);
    rolled_back(&second).await;
    let err = outside
        .batch_execute("UPDATE fp_1 SET v = 'outside' WHERE id = 2")
        .await
        .expect_err("row 2 is held for writes outside global transactions too");
    assert_retryable_conflict(&err);
    // Sent behind a busy statement, before the session can say which table the name
    // means: the partition's name shows no lock, its root's does.
    let (slow, pipelined) = tokio::join!(
        outside.simple_query("SELECT pg_sleep(0.3)"),
        outside.simple_query("UPDATE fp_1 SET v = 'pipelined' WHERE id = 2"),
    );
    slow.unwrap();
    assert_retryable_conflict(&pipelined.expect_err("row 2 is held, pipelined too"));
    // One branch writes a row through the root and through its partition: one pair
    // of images, which the rollback restores.
    one(&second, "SELECT tandem_begin(30000)").await.unwrap();
    second
        .batch_execute("BEGIN; UPDATE fp SET v = 'root' WHERE id = 3; UPDATE fp_1 SET v = 'leaf' WHERE id = 3; UPDATE fp SET v = 'root again' WHERE id = 3; COMMIT")
        .await
        .unwrap();
    rolled_back(&second).await;
    for sql in [
        "UPDATE par SET v = 'x' WHERE id = 1",
        "UPDATE chi SET v = 'x' WHERE id = 1",
        // No key names a view's rows: refused rather than answered with a bad lock key.
        "SELECT * FROM fv WHERE id = 2 FOR UPDATE",
    ] {
        let err = first.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            err.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {err}"
        );
    }
    rolled_back(&first).await;
    assert_eq!((rows("fp").await, rows("par").await), before);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A branch's lock keys travel in one registration: megabytes of them (long keys, many
/// rows) register like any other, while a branch past the lockserver's
/// `max_keys_per_branch` gets 54000 (a program limit, not a retry) and changes nothing.
/// Before, a registration over gRPC's 4 MiB default broke the pipeline stream, and every
/// session's call in flight with it.
#[tokio::test]
async fn megabytes_of_lock_keys_register_and_a_branch_past_the_key_limit_gets_54000() {
    let db = prepare("at_long_keys").await;
    let (mut config, dir) = tandem_tests::lockserver::test_config(Kind::Embedded);
    config.limits.max_keys_per_branch = 8_000;
    let lockserver = TestLockserver::start_with(config, dir).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    // 7,000 keys of five 60-character parts (a lock key holds each part in hex, up to
    // 64 bytes): 4.5 MB of lock keys.
    direct
        .batch_execute(
            "CREATE TABLE wide (a text, b text, c text, d text, e text, v int NOT NULL,
                                PRIMARY KEY (a, b, c, d, e));
             INSERT INTO wide SELECT p, p, p, p, p, g
               FROM generate_series(1, 7000) g, lpad(g::text, 60, 'k') p;",
        )
        .await
        .unwrap();
    let wide_sum = || async {
        let sum: i64 = direct
            .query_one("SELECT sum(v)::int8 FROM wide", &[])
            .await
            .unwrap()
            .get(0);
        sum
    };
    let wide_before = wide_sum().await;
    let a = tandem.connect(&db.name).await;
    let b = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute("BEGIN; UPDATE wide SET v = v + 1; COMMIT")
        .await
        .unwrap();
    // Another session's global transaction goes on meanwhile.
    one(&b, "SELECT tandem_begin()").await.unwrap();
    b.batch_execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        one(&b, "SELECT tandem_commit()").await.unwrap().as_deref(),
        Some("Committed")
    );
    rollback_begun(&a).await;
    eventually("the long-keyed rows restored", || async {
        wide_sum().await == wide_before && undo_rows(&direct).await == 0
    })
    .await;

    // 8,001 rows in one branch: one key past the limit.
    direct
        .batch_execute(
            "INSERT INTO wide SELECT p, p, p, p, p, g FROM generate_series(1, 1001) g, concat('s', g) p",
        )
        .await
        .unwrap();
    let before = dump(&direct).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute("BEGIN; UPDATE wide SET v = v + 1; UPDATE accounts SET balance = 0")
        .await
        .unwrap();
    let err = a.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::PROGRAM_LIMIT_EXCEEDED),
        "{err:?}"
    );
    assert_eq!(
        wide_sum().await,
        wide_before + 1001 * 1002 / 2,
        "nothing of the branch applied"
    );
    assert_eq!(dump(&direct).await, before);
    rolled_back(&a).await;
    drop((a, b));
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Two proxies reaching one server by different spellings (`127.0.0.1:5432`,
/// `localhost:5432`) named different resources, whose global locks never met: a second
/// transaction wrote a held row and the first one's rollback found a dirty write.
/// `name` makes them one server.
#[tokio::test]
async fn proxies_that_name_one_server_alike_share_its_global_locks() {
    let orders = prepare("at_named_server").await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let upstream = tandem_tests::env::pg_upstream();
    let other_spelling = tandem_tests::env::other_spelling(&upstream);
    let endpoint = format!("http://{}", lockserver.grpc);
    let a_proxy = Tandem::start_for(&lockserver).await;
    let b_proxy = Tandem::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.lockserver.lock_wait_ms = 300;
        c.postgres[0].upstream = other_spelling;
        c.postgres[0].name = Some(upstream.clone());
    })
    .await;
    let a = a_proxy.connect(&orders.name).await;
    let b = b_proxy.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    one(&b, "SELECT tandem_begin(30000)").await.unwrap();
    let err = b
        .batch_execute("UPDATE accounts SET balance = 2 WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE),
        "{err}"
    );
    rolled_back(&b).await;
    rolled_back(&a).await;
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    a_proxy.shutdown().await;
    b_proxy.shutdown().await;
    lockserver.stop().await;
}

/// How a locking read behaves in a global transaction beyond the plain FOR UPDATE: a
/// lock clause tandem would not check (nested, SKIP LOCKED) or a predicate it would
/// evaluate twice (nextval) is refused before anything runs; NOWAIT fails at once on a
/// row held locally or globally; FOR SHARE readers do not exclude each other; and a
/// check that fails a client's block reports its own error, not 25P02.
#[tokio::test]
async fn locking_reads_are_checked_as_they_lock_or_refused() {
    let orders = prepare("at_lock_forms").await;
    let direct = orders.direct().await;
    direct
        .batch_execute("CREATE SEQUENCE s MINVALUE 0 START 0")
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_with(|c| {
        c.lockserver.endpoint = format!("http://{}", lockserver.grpc);
        c.lockserver.lock_wait_ms = 5_000;
    })
    .await;
    let holder = tandem.connect(&orders.name).await;
    let reader = tandem.connect(&orders.name).await;
    one(&holder, "SELECT tandem_begin(60000)").await.unwrap();
    holder
        .batch_execute("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    one(&reader, "SELECT tandem_begin(60000)").await.unwrap();

    for refused in [
        "(SELECT balance FROM accounts WHERE id = 1 FOR UPDATE)",
        "SELECT * FROM (SELECT balance FROM accounts WHERE id = 1 FOR UPDATE) s",
        "WITH c AS (SELECT balance FROM accounts WHERE id = 1 FOR UPDATE) SELECT * FROM c",
        "SELECT balance FROM accounts WHERE id IN (SELECT id FROM accounts WHERE id = 1 FOR UPDATE)",
        "SELECT balance FROM accounts FOR UPDATE SKIP LOCKED",
        "DECLARE c CURSOR FOR SELECT balance FROM accounts WHERE id = 1 FOR UPDATE",
        "SELECT balance FROM accounts WHERE id = (SELECT nextval('s')) FOR UPDATE",
    ] {
        let err = reader.simple_query(refused).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{refused}: {err:?}"
        );
    }
    let next: i64 = direct
        .query_one("SELECT nextval('s')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, 0, "the refused read never ran");

    // NOWAIT: a row another global transaction holds fails the read at once.
    let started = std::time::Instant::now();
    let err = reader
        .simple_query("SELECT balance FROM accounts WHERE id = 1 FOR UPDATE NOWAIT")
        .await
        .unwrap_err();
    assert_retryable_conflict(&err);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // And one held by a local transaction elsewhere, inside the reader's block too.
    let local = orders.direct().await;
    local
        .batch_execute("BEGIN; SELECT * FROM accounts WHERE id = 2 FOR UPDATE")
        .await
        .unwrap();
    reader.batch_execute("BEGIN").await.unwrap();
    let err = reader
        .simple_query("SELECT balance FROM accounts WHERE id = 2 FOR UPDATE NOWAIT")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err:?}");
    reader.batch_execute("ROLLBACK").await.unwrap();
    // A lock timeout met by the check inside a block is the client's error, not 25P02.
    reader
        .batch_execute("BEGIN; SET LOCAL lock_timeout = '200ms'")
        .await
        .unwrap();
    let err = reader
        .simple_query("SELECT balance FROM accounts WHERE id = 2 FOR UPDATE")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err:?}");
    reader.batch_execute("ROLLBACK").await.unwrap();
    local.batch_execute("ROLLBACK").await.unwrap();

    // FOR SHARE: two global transactions' blocks read row 3 together.
    let other = tandem.connect(&orders.name).await;
    one(&other, "SELECT tandem_begin(60000)").await.unwrap();
    for client in [&reader, &other] {
        client
            .batch_execute("BEGIN; SET LOCAL lock_timeout = '2s'")
            .await
            .unwrap();
        let balance = one(
            client,
            "SELECT balance FROM accounts WHERE id = 3 FOR SHARE",
        )
        .await
        .unwrap();
        assert_eq!(balance.as_deref(), Some("1000"));
    }
    for client in [&reader, &other] {
        client.batch_execute("COMMIT").await.unwrap();
    }
    for client in [&holder, &reader, &other] {
        rolled_back(client).await;
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A backend terminated while its branch's COMMIT waits for a global lock: once the
/// lock is free, tandem finds the backend gone before it sends the COMMIT, so the
/// branch failed phase one, and says so. Its global commit then answers Committed at
/// once, not AsyncCommitting for the ten minutes phase 2 would look for its undo row;
/// the client hears the backend's own 57P01.
#[tokio::test]
async fn a_branch_whose_backend_ends_during_its_lock_wait_is_reported_failed() {
    let db = prepare("at_terminated_wait").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let holder = tandem.connect(&db.name).await;
    one(&holder, "SELECT tandem_begin(30000)").await.unwrap();
    holder
        .batch_execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        .await
        .unwrap();
    let (waiter, xid, pid) = begun_in_a_block(
        &tandem,
        &db,
        "UPDATE accounts SET balance = balance + 100 WHERE id = 2; UPDATE accounts SET balance = balance + 100 WHERE id = 1",
    )
    .await;
    let commit = tokio::spawn(async move { waiter.batch_execute("COMMIT").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    direct
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // Gone before the lock frees: on a busy machine the backend may take a while to
    // end, and the COMMIT then meets it ending instead.
    let direct_ref = &direct;
    eventually("the backend has ended", || async move {
        direct_ref
            .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .unwrap()
            .is_none()
    })
    .await;
    rolled_back(&holder).await;
    let err = commit.await.unwrap().expect_err("its backend is gone");
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err:?}");
    // Registered once the lock was free, the branch then finds its backend gone and
    // reports PhaseOneFailed. On a busy machine the holder may still be rolling back
    // when the waiter looks again: the waiter then gives up its registration (its own
    // row locks could hold up that rollback), and no branch is registered at all.
    // Either way nothing of it is owed a phase 2.
    let path = format!("/v1/transactions/{xid}");
    let (path, lockserver_ref) = (&path, &lockserver);
    eventually(
        "the branch is reported PhaseOneFailed, or never registered",
        || async move {
            let (_, txn) = lockserver_ref.get(path).await;
            txn["branches"]
                .as_array()
                .is_some_and(|b| b.iter().all(|b| b["status"] == "PhaseOneFailed"))
        },
    )
    .await;
    let other = tandem.connect(&db.name).await;
    one(&other, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    assert_eq!(
        one(&other, "SELECT tandem_commit()")
            .await
            .unwrap()
            .as_deref(),
        Some("Committed")
    );
    eventually("the global commit is over", || async move {
        let (_, txn) = lockserver_ref.get(path).await;
        txn["status"] == "Committed"
    })
    .await;
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A backend terminated while tandem's own statements run on it (its undo row and
/// COMMIT, held up by a deferred foreign key check waiting for a row lock): the client
/// hears the backend's FATAL 57P01, as it would without tandem, not only that the
/// connection closed (08006).
#[tokio::test]
async fn a_backend_terminated_during_tandems_commit_reports_its_own_error() {
    let db = prepare("at_terminated_commit").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let mut direct = db.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE parents (id int PRIMARY KEY);
             INSERT INTO parents VALUES (1);
             CREATE TABLE children (id int PRIMARY KEY, parent int REFERENCES parents
               DEFERRABLE INITIALLY DEFERRED);",
        )
        .await
        .unwrap();
    let before = dump(&direct).await;
    let (client, _, pid) =
        begun_in_a_block(&tandem, &db, "INSERT INTO children VALUES (1, 1)").await;
    // The check at COMMIT waits for this lock.
    let holder = direct.transaction().await.unwrap();
    holder
        .execute("SELECT 1 FROM parents WHERE id = 1 FOR UPDATE", &[])
        .await
        .unwrap();
    terminated_while_waiting(&db, client, pid, "the COMMIT waits for the parent row").await;
    holder.rollback().await.unwrap();
    assert_eq!(dump(&direct).await, before, "the COMMIT never ran");
    let children: i64 = direct
        .query_one("SELECT count(*) FROM children", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(children, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A backend terminated while tandem's undo row waits (its table locked by another
/// session), before any of tandem's commit statements completed: the COMMIT behind the
/// undo row never ran, so the branch is reported PhaseOneFailed, and the client hears
/// the backend's 57P01. (Seen only by the exchange when the termination reaches tandem
/// late: the lock-wait test above hit this path at random.)
#[tokio::test]
async fn a_backend_terminated_before_its_undo_row_is_written_is_reported_failed() {
    let db = prepare("at_terminated_undo").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let mut direct = db.direct().await;
    let before = dump(&direct).await;
    let (client, xid, pid) = begun_in_a_block(
        &tandem,
        &db,
        "UPDATE accounts SET balance = balance + 100 WHERE id = 2",
    )
    .await;
    let holder = direct.transaction().await.unwrap();
    holder
        .batch_execute("LOCK TABLE undo_log IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    terminated_while_waiting(&db, client, pid, "the undo row waits for its table").await;
    super::at_protocols::reported_phase_one_failed(&lockserver, &xid).await;
    holder.rollback().await.unwrap();
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Sends `client`'s COMMIT, terminates its backend `pid` once that waits for a lock
/// (`waiting` says which), and checks that the client hears the backend's 57P01.
async fn terminated_while_waiting(
    db: &tandem_tests::harness::TestDb,
    client: tokio_postgres::Client,
    pid: i32,
    waiting: &str,
) {
    let commit = tokio::spawn(async move { client.batch_execute("COMMIT").await });
    let watcher = db.direct().await;
    let watcher = &watcher;
    eventually(waiting, || async move {
        watcher
            .query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                &[&pid],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    watcher
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let err = commit.await.unwrap().expect_err("its backend is gone");
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err:?}");
}

/// A session through `tandem` in a global transaction of its own (60 s), inside a
/// transaction block that ran `writes`: the client, its xid and its backend's pid.
async fn begun_in_a_block(
    tandem: &Tandem,
    db: &tandem_tests::harness::TestDb,
    writes: &str,
) -> (tokio_postgres::Client, String, i32) {
    let client = tandem.connect(&db.name).await;
    let xid = one(&client, "SELECT tandem_begin(60000)")
        .await
        .unwrap()
        .unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!("BEGIN; {writes}"))
        .await
        .unwrap();
    (client, xid, pid)
}

/// A global transaction holding row 1 of `accounts` (its balance 7) through a tandem
/// whose waits for global locks last 20 s, with the rows as they were before.
struct HeldRow {
    orders: TestDb,
    direct: tokio_postgres::Client,
    before: Vec<String>,
    lockserver: TestLockserver,
    tandem: Tandem,
    holder: tokio_postgres::Client,
}

async fn row_one_held(label: &str) -> HeldRow {
    let orders = prepare(label).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_with(|c| {
        c.lockserver.endpoint = format!("http://{}", lockserver.grpc);
        c.lockserver.lock_wait_ms = 20_000;
    })
    .await;
    let holder = tandem.connect(&orders.name).await;
    one(&holder, "SELECT tandem_begin(60000)").await.unwrap();
    holder
        .batch_execute("UPDATE accounts SET balance = 7 WHERE id = 1")
        .await
        .unwrap();
    HeldRow {
        orders,
        direct,
        before,
        lockserver,
        tandem,
        holder,
    }
}

/// A session whose backend is terminated while it waits in tandem for a global lock
/// (the backend idle meanwhile) hears of it at once, in the server's words (57P01):
/// a locking read's check and a branch's registration at COMMIT in a global
/// transaction, and a write outside one, checked by its rows or judged by its table.
/// Before, each waited out `lock_wait_ms` first.
#[tokio::test]
async fn a_backend_terminated_during_tandems_wait_ends_the_wait() {
    let HeldRow {
        orders,
        direct,
        before,
        lockserver,
        tandem,
        holder,
    } = row_one_held("at_terminated_wait").await;
    let cases: [(&[&str], &str); 4] = [
        (&[], "UPDATE accounts SET balance = 8 WHERE id = 1"),
        (&[], "TRUNCATE accounts"),
        (
            &["SELECT tandem_begin(60000)", "BEGIN"],
            "SELECT * FROM accounts WHERE id = 1 FOR UPDATE",
        ),
        (
            &[
                "SELECT tandem_begin(60000)",
                "BEGIN",
                "UPDATE accounts SET balance = 9 WHERE id = 1",
            ],
            "COMMIT",
        ),
    ];
    for (setup, sql) in cases {
        // A raw client, to see every message tandem sends after the FATAL (none).
        let mut waiter = RawPg::startup(tandem.pg, "postgres", &orders.name).await;
        waiter.run_each(setup).await;
        let replies = waiter.simple("SELECT pg_backend_pid()").await;
        let pid: i32 = replies
            .iter()
            .find(|m| m.tag == b'D')
            .and_then(|row| std::str::from_utf8(&row.body[6..]).ok()?.parse().ok())
            .expect("the backend's pid");
        let started = std::time::Instant::now();
        waiter.query(sql).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        direct
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        let replies = waiter.recv_to_close().await;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{sql}: ended when its backend went, not after {:?}",
            started.elapsed()
        );
        // The server's FATAL, then the close: nothing of tandem's behind it (a
        // ReadyForQuery would keep the connection looking alive to a pool).
        assert_eq!(reply_tags(&replies), ['E'], "{sql}: {replies:?}");
        assert_eq!(replies[0].sqlstate().as_deref(), Some("57P01"), "{sql}");
    }
    rolled_back(&holder).await;
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A client's cancel (JDBC's query timeout, psycopg's `cancel()`) ends tandem's own
/// wait for a global lock, as it ends a wait for a row lock in PostgreSQL: 57014 at
/// once, not the lock error when `lock_wait_ms` runs out. While tandem waits the
/// backend is idle, so the cancel forwarded to it alone would end nothing. Four waits:
/// a locking read's check, a write outside a global transaction (checked by its rows,
/// or judged by its table), and a branch's registration at its COMMIT, whose
/// transaction is rolled back, leaving nothing held.
#[tokio::test]
async fn a_cancel_ends_a_wait_for_a_global_lock() {
    let HeldRow {
        orders,
        direct,
        before,
        lockserver,
        tandem,
        holder,
    } = row_one_held("at_cancel_wait").await;
    let waiter = tandem.connect(&orders.name).await;
    let token = waiter.cancel_token();
    let cancel_soon = || {
        let token = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        })
    };
    async fn cancelled(waiter: &tokio_postgres::Client, sql: &str) {
        let started = std::time::Instant::now();
        let err = waiter.batch_execute(sql).await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{sql}: {err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "{sql}: the wait ran on for {:?}",
            started.elapsed()
        );
    }

    // Outside a global transaction: an autocommit write of the held row.
    let cancel = cancel_soon();
    cancelled(&waiter, "UPDATE accounts SET balance = 8 WHERE id = 1").await;
    cancel.await.unwrap();
    // One judged by its table, which waits until the table holds no global lock.
    let cancel = cancel_soon();
    cancelled(&waiter, "TRUNCATE accounts").await;
    cancel.await.unwrap();
    // A locking read in a global transaction; its block fails, as after any error.
    one(&waiter, "SELECT tandem_begin(60000)").await.unwrap();
    waiter.batch_execute("BEGIN").await.unwrap();
    let cancel = cancel_soon();
    cancelled(&waiter, "SELECT * FROM accounts WHERE id = 1 FOR UPDATE").await;
    cancel.await.unwrap();
    let err = waiter.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    waiter.batch_execute("ROLLBACK").await.unwrap();
    // A branch's COMMIT waiting to register the held row.
    waiter.batch_execute("BEGIN").await.unwrap();
    waiter
        .batch_execute("UPDATE accounts SET balance = 9 WHERE id = 1")
        .await
        .unwrap();
    let cancel = cancel_soon();
    cancelled(&waiter, "COMMIT").await;
    cancel.await.unwrap();
    assert_eq!(
        balance(&direct, 1).await,
        7,
        "the waiter's write rolled back"
    );
    assert_eq!(undo_rows(&direct).await, 1, "the holder's undo row only");
    // The session goes on; its abandoned branch holds nothing and costs its global
    // transaction nothing but the branch's failure.
    let status = one(&waiter, "SELECT tandem_rollback()").await.unwrap();
    assert_eq!(status.as_deref(), Some("Rollbacked"));
    rolled_back(&holder).await;
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}
