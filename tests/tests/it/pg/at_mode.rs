//! AT mode on PostgreSQL: two databases behind one proxy, one lockserver; global commit
//! and rollback, byte for byte.

use tandem_tests::harness::{Tandem, TestDb, eventually};
use tandem_tests::lockserver::{Kind, TestLockserver};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

async fn one(client: &Client, sql: &str) -> Result<Option<String>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })
        .flatten())
}

/// Every row of `accounts` as text, in key order: what "byte for byte" compares.
async fn dump(client: &Client) -> Vec<String> {
    client
        .query("SELECT t::text FROM accounts t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn undo_rows(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM undo_log WHERE log_status = 0", &[])
        .await
        .unwrap()
        .get(0)
}

async fn prepare(label: &str) -> TestDb {
    let db = TestDb::create(label).await;
    let upstream = tandem_tests::env::pg_upstream();
    tandem_proxy::migrate::apply(&format!(
        "postgres://postgres@{upstream}/{}?sslmode=disable",
        db.name
    ))
    .await
    .unwrap();
    db.direct()
        .await
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text, at timestamptz, f float8);
             INSERT INTO accounts SELECT g, 1000, 'n' || g, '2024-02-29 12:00:00.123456+00', 0.1 * g FROM generate_series(1, 5) g;
             CREATE TABLE nokey (v int);",
        )
        .await
        .unwrap();
    db
}

#[tokio::test]
async fn a_global_transaction_across_two_databases_rolls_back_exactly_and_commits() {
    let (orders, stock) = (prepare("at_a").await, prepare("at_b").await);
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let grpc = lockserver.grpc;
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = format!("http://{grpc}")).await;
    let (da, db) = (orders.direct().await, stock.direct().await);
    let (before_a, before_b) = (dump(&da).await, dump(&db).await);

    for decision in ["rollback", "commit"] {
        let a = tandem.connect(&orders.name).await;
        let b = tandem.connect(&stock.name).await;
        // Session settings that would change text renderings must not matter.
        a.batch_execute("SET DateStyle = 'German'; SET TimeZone = 'Pacific/Chatham'; SET extra_float_digits = -3")
            .await
            .unwrap();
        let xid = one(&a, "SELECT tandem_begin(30000)")
            .await
            .unwrap()
            .unwrap();
        // Service A: an explicit local transaction.
        a.batch_execute("BEGIN").await.unwrap();
        a.batch_execute("UPDATE accounts SET balance = balance - 10, at = now() WHERE id = 1")
            .await
            .unwrap();
        let returned = one(
            &a,
            "UPDATE accounts SET note = 'moved' WHERE id = 2 RETURNING note",
        )
        .await
        .unwrap();
        assert_eq!(
            returned.as_deref(),
            Some("moved"),
            "the client's own RETURNING is intact"
        );
        a.batch_execute("COMMIT").await.unwrap();
        // Service B joins; autocommit writes, each its own branch.
        one(&b, &format!("SELECT tandem_join('{xid}')"))
            .await
            .unwrap();
        b.batch_execute("UPDATE accounts SET balance = balance + 10 WHERE id = 1")
            .await
            .unwrap();
        let inserted = b
            .simple_query("INSERT INTO accounts VALUES (99, 5, 'new', now(), 'NaN')")
            .await
            .unwrap();
        assert!(
            inserted
                .iter()
                .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(1)))
        );
        b.batch_execute("DELETE FROM accounts WHERE id IN (3, 4)")
            .await
            .unwrap();
        // The branches are committed locally; their undo rows are there.
        assert_eq!(undo_rows(&da).await, 1);
        assert_eq!(undo_rows(&db).await, 3);
        assert_ne!(dump(&db).await, before_b);

        let status = one(&a, &format!("SELECT tandem_{decision}()"))
            .await
            .unwrap();
        if decision == "rollback" {
            assert_eq!(status.as_deref(), Some("Rollbacked"));
            assert_eq!(dump(&da).await, before_a, "orders restored byte for byte");
            assert_eq!(dump(&db).await, before_b, "stock restored byte for byte");
        } else {
            assert_eq!(status.as_deref(), Some("Committed"));
            let rows = dump(&db).await;
            assert!(rows.iter().any(|r| r.starts_with("(99,5,new,")), "{rows:?}");
            assert_eq!(rows.len(), 4);
        }
        eventually("undo rows are cleaned up", || async {
            undo_rows(&da).await == 0 && undo_rows(&db).await == 0
        })
        .await;
        let (_, locks) = lockserver.get("/v1/locks").await;
        assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_dirty_write_stops_the_rollback_and_keeps_the_locks() {
    let orders = prepare("at_dirty").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let grpc = lockserver.grpc;
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = format!("http://{grpc}")).await;
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
    let balance: i64 = direct
        .query_one("SELECT balance FROM accounts WHERE id = 5", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 777, "the dirty value is left alone");
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

#[tokio::test]
async fn writes_that_cannot_be_captured_are_refused() {
    let orders = prepare("at_refuse").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let grpc = lockserver.grpc;
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = format!("http://{grpc}")).await;
    let a = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    let before = dump(&orders.direct().await).await;
    for (sql, state) in [
        (
            "INSERT INTO nokey VALUES (1)",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "UPDATE accounts SET id = 50 WHERE id = 1",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        ("TRUNCATE accounts", SqlState::FEATURE_NOT_SUPPORTED),
        (
            "ALTER TABLE accounts ADD COLUMN x int",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "UPDATE accounts SET balance = 0; DELETE FROM accounts",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "WITH d AS (DELETE FROM accounts RETURNING *) SELECT count(*) FROM d",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        ("UPDATE missing_table SET v = 1", SqlState::UNDEFINED_TABLE),
    ] {
        let err = a.simple_query(sql).await.expect_err(sql);
        assert_eq!(err.code(), Some(&state), "{sql}: {err:?}");
    }
    assert_eq!(dump(&orders.direct().await).await, before, "nothing ran");
    let n: i64 = orders
        .direct()
        .await
        .query_one("SELECT count(*) FROM nokey", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // Outside a global transaction the same statements pass through untouched.
    one(&a, "SELECT tandem_leave()").await.unwrap();
    a.batch_execute("INSERT INTO nokey VALUES (1)")
        .await
        .unwrap();
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn extended_protocol_writes_are_captured_with_their_parameters() {
    let orders = prepare("at_ext").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let grpc = lockserver.grpc;
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = format!("http://{grpc}")).await;
    let mut a = tandem.connect(&orders.name).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    // Control functions over the extended protocol too.
    let xid: String = a
        .query_one("SELECT tandem_begin(30000)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!xid.is_empty());
    // Autocommit writes with parameters, binary and text.
    assert_eq!(
        a.execute(
            "UPDATE accounts SET balance = $1 WHERE id = $2",
            &[&5i64, &1i32]
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        a.execute(
            "INSERT INTO accounts (id, balance, note) VALUES ($1, $2, $3), ($4, $2, $3)",
            &[&70i32, &7i64, &"seventy", &71i32]
        )
        .await
        .unwrap(),
        2
    );
    // A prepared statement reused, inside an explicit local transaction.
    let note = a
        .prepare("UPDATE accounts SET note = $1 WHERE id = $2")
        .await
        .unwrap();
    let tx = a.transaction().await.unwrap();
    for id in [2i32, 3] {
        assert_eq!(tx.execute(&note, &[&"prepared", &id]).await.unwrap(), 1);
    }
    assert_eq!(
        tx.execute("DELETE FROM accounts WHERE id = $1", &[&4i32])
            .await
            .unwrap(),
        1
    );
    tx.commit().await.unwrap();
    // Reads over the extended protocol are untouched.
    let n: i64 = a
        .query_one("SELECT count(*) FROM accounts WHERE id > $1", &[&0i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 6);
    // RETURNING asked for in binary is refused, not run.
    let err = a
        .query(
            "UPDATE accounts SET balance = 0 WHERE id = $1 RETURNING balance",
            &[&5i32],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{err:?}"
    );
    assert_eq!(
        undo_rows(&direct).await,
        3,
        "two autocommit branches and one explicit"
    );
    assert_eq!(
        one(&a, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
    assert_eq!(dump(&direct).await, before, "restored byte for byte");
    // Outside a global transaction, writes pass through untouched.
    assert_eq!(
        a.execute("UPDATE accounts SET balance = $1 WHERE id = 1", &[&5i64])
            .await
            .unwrap(),
        1
    );
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_conflicting_global_transaction_waits_then_succeeds_or_gets_a_retryable_error() {
    let orders = prepare("at_conflict").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let grpc = lockserver.grpc;
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = format!("http://{grpc}")).await;
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
    let balance: i64 = orders
        .direct()
        .await
        .query_one("SELECT balance FROM accounts WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 1011);

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
    assert!(
        [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::LOCK_NOT_AVAILABLE
        ]
        .contains(err.code().unwrap()),
        "{err:?}"
    );
    assert_eq!(
        one(&second, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
    assert_eq!(
        one(&first, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
    let balance: i64 = orders
        .direct()
        .await
        .query_one("SELECT balance FROM accounts WHERE id = 4", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 1000);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_is_rolled_back_by_the_timeout() {
    let orders = prepare("at_gone").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let grpc = lockserver.grpc;
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = format!("http://{grpc}")).await;
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
async fn triggers_and_cascading_foreign_keys_are_refused() {
    let orders = prepare("at_trig").await;
    orders
        .direct()
        .await
        .batch_execute(
            "CREATE TABLE audited (id int PRIMARY KEY, v int);
             CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
             CREATE TRIGGER audit BEFORE UPDATE ON audited FOR EACH ROW EXECUTE FUNCTION noop();
             INSERT INTO audited VALUES (1, 1);
             CREATE TABLE parent (id int PRIMARY KEY);
             CREATE TABLE child (id int PRIMARY KEY, parent int REFERENCES parent ON DELETE CASCADE);
             INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);",
        )
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let grpc = lockserver.grpc;
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = format!("http://{grpc}")).await;
    let a = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    for sql in [
        "UPDATE audited SET v = 2 WHERE id = 1",
        "DELETE FROM parent WHERE id = 1",
    ] {
        let err = a.simple_query(sql).await.expect_err(sql);
        assert_eq!(
            err.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {err:?}"
        );
    }
    let direct = orders.direct().await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM child", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the cascade never ran");
    let v: i32 = direct
        .query_one("SELECT v FROM audited", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 1);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_branch_whose_local_commit_failed_is_marked_finished_by_the_rollback() {
    let orders = prepare("at_marker").await;
    orders
        .direct()
        .await
        .batch_execute("CREATE TABLE uniq (id int PRIMARY KEY, v int UNIQUE DEFERRABLE INITIALLY DEFERRED); INSERT INTO uniq VALUES (1, 1), (2, 2);")
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let grpc = lockserver.grpc;
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = format!("http://{grpc}")).await;
    let a = tandem.connect(&orders.name).await;
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("UPDATE uniq SET v = 1 WHERE id = 2")
        .await
        .unwrap();
    // The deferred constraint fails at COMMIT, after the branch was registered: the
    // local transaction, its undo row included, is gone.
    let err = a.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err:?}");
    assert_eq!(
        one(&a, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
    let direct = orders.direct().await;
    let marker: i64 = direct
        .query_one(
            "SELECT count(*) FROM undo_log WHERE xid = $1 AND log_status = 1",
            &[&xid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        marker, 1,
        "the GlobalFinished marker blocks a late phase-1 commit"
    );
    let v: i32 = direct
        .query_one("SELECT v FROM uniq WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn update_from_delete_using_and_insert_on_conflict_do_nothing_roll_back_exactly() {
    let orders = prepare("at_joins").await;
    let direct = orders.direct().await;
    direct
        .batch_execute("CREATE TABLE moves (id int PRIMARY KEY, account int, amount bigint); INSERT INTO moves VALUES (1, 1, 5), (2, 1, 7), (3, 2, 9);")
        .await
        .unwrap();
    let before = dump(&direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let grpc = lockserver.grpc;
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = format!("http://{grpc}")).await;
    let a = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    // A join that matches account 1 twice: one before image, one change per row.
    a.batch_execute(
        "UPDATE accounts a SET balance = a.balance - m.amount FROM moves m WHERE m.account = a.id",
    )
    .await
    .unwrap();
    a.batch_execute(
        "DELETE FROM accounts AS x USING moves m WHERE m.account = x.id AND m.amount = 9",
    )
    .await
    .unwrap();
    let inserted = a
        .simple_query(
            "INSERT INTO accounts (id, balance) VALUES (1, 0), (60, 60) ON CONFLICT DO NOTHING",
        )
        .await
        .unwrap();
    assert!(
        inserted
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(1)))
    );
    let err = a
        .simple_query("INSERT INTO accounts (id, balance) VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET balance = 0")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED));
    assert_ne!(dump(&direct).await, before);
    assert_eq!(
        one(&a, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn select_for_update_waits_for_another_global_transactions_lock() {
    let orders = prepare("at_sfu").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let grpc = lockserver.grpc;
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = format!("http://{grpc}")).await;
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
async fn an_autocommit_write_whose_commit_fails_reports_the_error() {
    let orders = prepare("at_autofail").await;
    orders
        .direct()
        .await
        .batch_execute("CREATE TABLE uniq (id int PRIMARY KEY, v int UNIQUE DEFERRABLE INITIALLY DEFERRED); INSERT INTO uniq VALUES (1, 1), (2, 2);")
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let grpc = lockserver.grpc;
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = format!("http://{grpc}")).await;
    let a = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    // Autocommit: tandem's own COMMIT is where the deferred constraint fails.
    let err = a
        .batch_execute("UPDATE uniq SET v = 1 WHERE id = 2")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err:?}");
    let v: i32 = orders
        .direct()
        .await
        .query_one("SELECT v FROM uniq WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2, "nothing was committed");
    // The session is usable and idle.
    assert_eq!(
        one(&a, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn an_xid_hint_binds_one_statement_only() {
    let orders = prepare("at_hint").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let grpc = lockserver.grpc;
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = format!("http://{grpc}")).await;
    let tm = tandem.connect(&orders.name).await;
    let worker = tandem.connect(&orders.name).await;
    let xid = one(&tm, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    worker
        .batch_execute(&format!(
            "/*+ XID('{xid}') */ UPDATE accounts SET balance = 0 WHERE id = 1"
        ))
        .await
        .unwrap();
    assert_eq!(
        one(&worker, "SELECT tandem_xid()").await.unwrap(),
        None,
        "the hint's binding ended"
    );
    // Not hinted: an ordinary write, outside the global transaction.
    worker
        .batch_execute("UPDATE accounts SET note = 'plain' WHERE id = 2")
        .await
        .unwrap();
    let err = worker
        .simple_query("/*+ XID('no-such-xid') */ UPDATE accounts SET balance = 1 WHERE id = 3")
        .await
        .unwrap_err();
    assert!(err.code().is_some(), "{err:?}");
    assert_eq!(
        one(&tm, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
    let direct = orders.direct().await;
    let row = direct
        .query_one("SELECT balance FROM accounts WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        1000,
        "the hinted write was rolled back"
    );
    let note: String = direct
        .query_one("SELECT note FROM accounts WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, "plain", "the unhinted write stays");
    let balance: i64 = direct
        .query_one("SELECT balance FROM accounts WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 1000, "a hint naming an unknown xid runs nothing");
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn commit_of_a_failed_local_transaction_rolls_back_and_registers_nothing() {
    let orders = prepare("at_failed").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let grpc = lockserver.grpc;
    let tandem = Tandem::start_with(|c| c.lockserver.endpoint = format!("http://{grpc}")).await;
    let a = tandem.connect(&orders.name).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    assert!(a.batch_execute("SELECT 1/0").await.is_err());
    let done = a.simple_query("COMMIT").await.unwrap();
    assert!(
        done.iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))),
        "PostgreSQL's own answer (ROLLBACK) is relayed"
    );
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
    assert_eq!(
        one(&a, "SELECT tandem_commit()").await.unwrap().as_deref(),
        Some("Committed")
    );
    tandem.shutdown().await;
    lockserver.stop().await;
}
