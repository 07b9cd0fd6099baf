//! AT mode across the ways a statement arrives: the extended protocol, XID hints,
//! autocommit, and local transactions that fail.

use super::at_mode::{balance, dump, one, prepare, rolled_back, rows_of, undo_rows};
use tandem_tests::harness::TestDb;

/// `uniq(id, v)` whose unique `v` is checked at COMMIT: a way to make a local COMMIT
/// fail after tandem registered the branch.
async fn with_deferred_unique(db: &TestDb) {
    db.direct()
        .await
        .batch_execute(
            "CREATE TABLE uniq (id int PRIMARY KEY, v int UNIQUE DEFERRABLE INITIALLY DEFERRED);
             INSERT INTO uniq VALUES (1, 1), (2, 2);",
        )
        .await
        .unwrap();
}
use tandem_tests::harness::Tandem;
use tandem_tests::lockserver::{Kind, TestLockserver};

/// Waits until the lockserver shows the first branch of `xid` as PhaseOneFailed.
pub(crate) async fn reported_phase_one_failed(lockserver: &TestLockserver, xid: &str) {
    let path = format!("/v1/transactions/{xid}");
    let path = &path;
    tandem_tests::harness::eventually("the branch is reported PhaseOneFailed", || async move {
        let (_, txn) = lockserver.get(path).await;
        txn["branches"][0]["status"] == "PhaseOneFailed"
    })
    .await;
}
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::error::SqlState;

#[tokio::test]
async fn extended_protocol_writes_are_captured_with_their_parameters() {
    let orders = prepare("at_ext").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
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
    // RETURNING, which tokio-postgres asks for in binary, reaches it in binary.
    let row = a
        .query_one(
            "UPDATE accounts SET balance = 0 WHERE id = $1 RETURNING balance, note",
            &[&5i32],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, &str>(1)), (0, "n5"));
    let row = a
        .query_one(
            "INSERT INTO accounts (id, balance, at) VALUES ($1, $2, now()) RETURNING *",
            &[&72i32, &9i64],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i64>(1)), (72, 9));
    assert_eq!(row.len(), 5, "the client's columns only");
    assert_eq!(
        undo_rows(&direct).await,
        5,
        "four autocommit branches and one explicit"
    );
    rolled_back(&a).await;
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

/// A branch whose local COMMIT failed committed nothing, nor can it later: the
/// rollback owes it nothing (no replay, no GlobalFinished marker), and ends.
#[tokio::test]
async fn a_branch_whose_local_commit_failed_owes_the_rollback_nothing() {
    let orders = prepare("at_marker").await;
    with_deferred_unique(&orders).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
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
    // The proxy reports the failed phase 1; operators see it on the branch.
    reported_phase_one_failed(&lockserver, &xid).await;
    rolled_back(&a).await;
    let direct = orders.direct().await;
    let marker: i64 = direct
        .query_one(
            "SELECT count(*) FROM undo_log WHERE xid = $1 AND log_status = 1",
            &[&xid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(marker, 0, "no marker: no late phase-1 commit can come");
    let v: i32 = direct
        .query_one("SELECT v FROM uniq WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Waits until a backend of `db` other than `direct`'s own waits on `event`
/// (pg_stat_activity's wait_event).
async fn a_backend_waits_on(direct: &tokio_postgres::Client, db: &str, event: &str) {
    tandem_tests::harness::eventually(&format!("a backend waits on {event}"), || async move {
        direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND wait_event = $2 AND pid <> pg_backend_pid()",
                &[&db, &event],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            > 0
    })
    .await;
}

#[tokio::test]
async fn rows_of_a_local_transaction_rolled_back_over_the_extended_protocol_are_forgotten() {
    let orders = prepare("at_ext_rollback").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    // Every statement over the extended protocol, ROLLBACK included.
    a.execute("BEGIN", &[]).await.unwrap();
    a.execute("UPDATE accounts SET balance = 7 WHERE id = 1", &[])
        .await
        .unwrap();
    a.execute("ROLLBACK", &[]).await.unwrap();
    // Row 1 is back and unlocked: someone else may change it.
    direct
        .execute("UPDATE accounts SET note = 'theirs' WHERE id = 1", &[])
        .await
        .unwrap();
    a.execute("UPDATE accounts SET balance = 8 WHERE id = 2", &[])
        .await
        .unwrap();
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(
        locks["locks"].as_array().map(Vec::len),
        Some(1),
        "only row 2 is held: {locks}"
    );
    rolled_back(&a).await;
    let mut expected = before;
    expected[0] = expected[0].replace(",n1,", ",theirs,");
    assert_eq!(
        dump(&direct).await,
        expected,
        "row 2 restored; row 1 keeps the other writer's change"
    );
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn rows_captured_after_a_savepoint_leave_the_branch_when_it_is_rolled_back_to() {
    let orders = prepare("at_savepoint").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let direct = orders.direct().await;
    // The rows given back must be free at once: another writer must not wait for them.
    direct
        .batch_execute("SET lock_timeout = '5s'")
        .await
        .unwrap();
    let before = dump(&direct).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute("BEGIN; UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    a.batch_execute(
        "SAVEPOINT s; UPDATE accounts SET balance = 2 WHERE id = 2; \
         INSERT INTO accounts VALUES (9, 9, 'nine', now(), 9)",
    )
    .await
    .unwrap();
    a.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    // Nested savepoints, one released into the other, over the extended protocol.
    a.execute("SAVEPOINT Sp_Outer", &[]).await.unwrap();
    a.execute("UPDATE accounts SET balance = 3 WHERE id = 3", &[])
        .await
        .unwrap();
    a.execute("SAVEPOINT sp_inner", &[]).await.unwrap();
    a.execute("UPDATE accounts SET balance = 4 WHERE id = 4", &[])
        .await
        .unwrap();
    a.execute("RELEASE SAVEPOINT SP_INNER", &[]).await.unwrap();
    a.execute("ROLLBACK TO sp_outer", &[]).await.unwrap();
    a.batch_execute("UPDATE accounts SET balance = 5 WHERE id = 5")
        .await
        .unwrap();
    // Rows 2, 3 and 4 are back as they were and unlocked; someone else changes them.
    direct
        .batch_execute(
            "UPDATE accounts SET note = 'theirs' WHERE id IN (2, 3, 4); \
             INSERT INTO accounts VALUES (9, 99, 'their nine', now(), 9)",
        )
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(
        locks["locks"].as_array().map(Vec::len),
        Some(2),
        "rows 1 and 5 only: {locks}"
    );
    rolled_back(&a).await;
    let mut expected = before;
    for (row, n) in expected.iter_mut().zip(1..) {
        if (2..=4).contains(&n) {
            *row = row.replace(&format!(",n{n},"), ",theirs,");
        }
    }
    let now = dump(&direct).await;
    assert_eq!(
        now[..5],
        expected[..],
        "rows 1 and 5 restored; 2 to 4 keep the other writer's change"
    );
    assert_eq!(now.len(), 6, "the other writer's row 9 stays: {now:?}");
    assert!(now[5].starts_with("(9,99,\"their nine\","), "{now:?}");
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_local_transaction_keeps_the_binding_it_began_under() {
    let orders = prepare("at_binding").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    let refused = async |sql: &str| {
        let err = one(&a, sql).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::ACTIVE_SQL_TRANSACTION),
            "{sql}: {err:?}"
        );
    };
    // A block that has run more than BEGIN (a read, here) may already hold locks.
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    refused("SELECT tandem_begin()").await;
    a.batch_execute("ROLLBACK").await.unwrap();
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    a.batch_execute("BEGIN; UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    refused("SELECT tandem_leave()").await;
    refused("SELECT tandem_commit()").await;
    refused("SELECT tandem_rollback()").await;
    // A rollback waits for every branch to be undone: not from inside a block whose
    // row locks could hold that up, even without captured writes.
    let c = tandem.connect(&orders.name).await;
    one(&c, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    c.batch_execute("BEGIN; SELECT * FROM accounts WHERE id = 2 FOR UPDATE")
        .await
        .unwrap();
    let err = one(&c, "SELECT tandem_rollback()").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::ACTIVE_SQL_TRANSACTION),
        "{err:?}"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    one(&c, "SELECT tandem_leave()").await.unwrap();
    refused("SELECT tandem_mode('xa')").await;
    refused(&format!("SELECT tandem_join('{xid}')")).await;
    // A pool's reset inside the transaction takes effect when it ends: the write
    // still commits as a branch of the global transaction.
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(
        one(&a, "SELECT tandem_xid()").await.unwrap(),
        Some(xid.clone())
    );
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(one(&a, "SELECT tandem_xid()").await.unwrap(), None);
    assert_eq!(undo_rows(&direct).await, 1, "the branch was registered");
    let b = tandem.connect(&orders.name).await;
    one(&b, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    rolled_back(&b).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// ORMs and drivers begin a transaction block ahead of its first statement, the control
/// call included (psycopg, SQLAlchemy, Django's `atomic()`): `tandem_begin` and
/// `tandem_join` in a block where only BEGIN and SAVEPOINT ran bind the session, and
/// the block's work is a branch like any other, over either protocol and in either
/// mode.
#[tokio::test]
async fn a_binding_made_in_a_block_that_ran_only_begin_captures_its_work() {
    let orders = prepare("at_bind_in_block").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    for mode in ["at", "xa"] {
        let mut a = tandem.connect(&orders.name).await;
        let b = tandem.connect(&orders.name).await;
        one(&a, &format!("SELECT tandem_mode('{mode}')"))
            .await
            .unwrap();
        one(&b, &format!("SELECT tandem_mode('{mode}')"))
            .await
            .unwrap();
        // The extended protocol, as tokio-postgres's transaction sends it.
        let tx = a.transaction().await.unwrap();
        let xid: String = tx
            .query_one("SELECT tandem_begin(30000)", &[])
            .await
            .unwrap()
            .get(0);
        tx.execute(
            "UPDATE accounts SET balance = $1 WHERE id = $2",
            &[&1i64, &1i32],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        // The simple protocol, behind a savepoint (pgJDBC's autosave sets one ahead
        // of every statement), with a write rolled back to a later one.
        b.batch_execute("BEGIN").await.unwrap();
        b.batch_execute("SAVEPOINT autosave").await.unwrap();
        one(&b, &format!("SELECT tandem_join('{xid}')"))
            .await
            .unwrap();
        b.batch_execute(
            "SAVEPOINT autosave;
             UPDATE accounts SET balance = 2 WHERE id = 2;
             ROLLBACK TO SAVEPOINT autosave;
             UPDATE accounts SET balance = 3 WHERE id = 3",
        )
        .await
        .unwrap();
        b.batch_execute("COMMIT").await.unwrap();
        let balances: Vec<i64> = direct
            .query(
                "SELECT balance FROM accounts WHERE id <= 3 ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let expected: Vec<i64> = match mode {
            // XA branches are prepared, not committed, until the decision.
            "xa" => vec![1000, 1000, 1000],
            _ => vec![1, 1000, 3],
        };
        assert_eq!(balances, expected, "{mode}");
        // The decision, from a block that ran only BEGIN as well.
        let tx = a.transaction().await.unwrap();
        let status: String = tx
            .query_one("SELECT tandem_rollback()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(status, "Rollbacked", "{mode}");
        tx.commit().await.unwrap();
        assert_eq!(dump(&direct).await, before, "{mode}");
        assert_eq!(undo_rows(&direct).await, 0, "{mode}");
        drop(b);
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A global rollback that runs while a branch's local COMMIT is in flight, after its
/// registration: whichever of the branch's undo row and the rollback's GlobalFinished
/// marker reaches the index first, nothing of the branch is left.
#[tokio::test]
async fn a_rollback_during_a_branch_commit_leaves_nothing_of_the_branch() {
    // `hold_commit` stops the branch's undo row for as long as the test holds advisory
    // lock 4242: before its INSERT (the marker wins), or at COMMIT after it (the branch
    // wins: the marker's INSERT waits for it).
    for (label, trigger) in [
        (
            "at_race_marker",
            "CREATE TRIGGER hold_commit BEFORE INSERT ON undo_log FOR EACH ROW",
        ),
        (
            "at_race_branch",
            "CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON undo_log \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW",
        ),
    ] {
        let orders = prepare(label).await;
        let direct = orders.direct().await;
        direct
            .batch_execute(&format!(
                "CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$;
                 {trigger} WHEN (NEW.log_status = 0) EXECUTE FUNCTION hold_commit();
                 SELECT pg_advisory_lock(4242);"
            ))
            .await
            .unwrap();
        let marker_wins = label == "at_race_marker";
        let before = dump(&direct).await;
        let lockserver = TestLockserver::start(Kind::Embedded).await;
        let tandem = Tandem::start_for(&lockserver).await;
        let a = tandem.connect(&orders.name).await;
        let xid = one(&a, "SELECT tandem_begin(30000)")
            .await
            .unwrap()
            .unwrap();
        a.batch_execute("BEGIN; UPDATE accounts SET balance = 1, note = 'raced' WHERE id = 3")
            .await
            .unwrap();
        let commit = tokio::spawn(async move { a.batch_execute("COMMIT").await });
        a_backend_waits_on(&direct, &orders.name, "advisory").await;
        // Another service rolls the global transaction back meanwhile: the replay finds
        // no committed undo row.
        let b = tandem.connect(&orders.name).await;
        one(&b, &format!("SELECT tandem_join('{xid}')"))
            .await
            .unwrap();
        let mut rollback = Some(tokio::spawn(async move {
            one(&b, "SELECT tandem_rollback()").await
        }));
        let mut rollback_answered = async || {
            let status = rollback.take().unwrap().await.unwrap().unwrap();
            assert_eq!(status.as_deref(), Some("Rollbacked"), "{label}");
        };
        if marker_wins {
            // The marker's INSERT meets nothing: the rollback ends on its own.
            rollback_answered().await;
        } else {
            // The marker's INSERT waits for the branch's uncommitted undo row.
            a_backend_waits_on(&direct, &orders.name, "transactionid").await;
        }
        direct
            .batch_execute("SELECT pg_advisory_unlock(4242)")
            .await
            .unwrap();
        let committed = commit.await.unwrap();
        if marker_wins {
            let err = committed.unwrap_err();
            let err = err.as_db_error().expect("an error from the proxy");
            assert_eq!(err.code(), &SqlState::T_R_SERIALIZATION_FAILURE, "{err:?}");
            assert!(
                err.message()
                    .contains("was rolled back while this branch committed"),
                "{err:?}"
            );
        } else {
            committed.expect("the local COMMIT went through");
            rollback_answered().await;
        }
        assert_eq!(
            dump(&direct).await,
            before,
            "{label}: nothing of the branch is left, byte for byte"
        );
        assert_eq!(undo_rows(&direct).await, 0, "{label}");
        let (_, locks) = lockserver.get("/v1/locks").await;
        assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
        tandem.shutdown().await;
        lockserver.stop().await;
    }
}

#[tokio::test]
async fn an_autocommit_write_whose_commit_fails_reports_the_error() {
    let orders = prepare("at_autofail").await;
    with_deferred_unique(&orders).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
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
    rolled_back(&a).await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn an_xid_hint_binds_one_statement_only() {
    let orders = prepare("at_hint").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
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
    // The extended protocol, with parameters: bound for that statement as well.
    let hinted = format!("/*+ XID('{xid}') */ UPDATE accounts SET balance = $1 WHERE id = $2");
    assert_eq!(worker.execute(&hinted, &[&7i64, &4i32]).await.unwrap(), 1);
    assert_eq!(
        one(&worker, "SELECT tandem_xid()").await.unwrap(),
        None,
        "the extended hint's binding ended too"
    );
    let err = worker
        .execute(
            "/*+ XID('no-such-xid') */ UPDATE accounts SET balance = $1 WHERE id = $2",
            &[&1i64, &3i32],
        )
        .await
        .unwrap_err();
    assert!(err.code().is_some(), "{err:?}");
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
    rolled_back(&tm).await;
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
    let row = direct
        .query_one("SELECT balance FROM accounts WHERE id = 4", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        1000,
        "the hinted extended-protocol write was rolled back"
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
    let tandem = Tandem::start_for(&lockserver).await;
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

#[tokio::test]
async fn a_savepoint_rolled_back_inside_a_branch_leaves_an_exact_undo() {
    let orders = prepare("at_savepoint").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let direct = orders.direct().await;
    let before = super::at_mode::dump(&direct).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    // The second UPDATE returned its row, then ROLLBACK TO undid it: the branch's after
    // image must be the row as it is at COMMIT, or the rollback sees a dirty write.
    a.batch_execute(
        "BEGIN;
         UPDATE accounts SET balance = 2 WHERE id = 1;
         INSERT INTO accounts (id, balance) VALUES (40, 1);
         SAVEPOINT s;
         UPDATE accounts SET balance = 3 WHERE id = 1;
         DELETE FROM accounts WHERE id = 40;
         ROLLBACK TO SAVEPOINT s;
         COMMIT",
    )
    .await
    .unwrap();
    let balance: i64 = direct
        .query_one("SELECT balance FROM accounts WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 2);
    rolled_back(&a).await;
    assert_eq!(
        super::at_mode::dump(&direct).await,
        before,
        "restored exactly"
    );
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_branch_commits_over_the_extended_protocol() {
    let orders = prepare("at_ext_commit").await;
    with_deferred_unique(&orders).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    // COMMIT as an unnamed statement (Parse Bind Describe Execute Sync), and prepared
    // once and bound again (Bind Execute Sync), as drivers that commit over the
    // extended protocol send it.
    let commit = a.prepare("COMMIT").await.unwrap();
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.execute("BEGIN", &[]).await.unwrap();
    a.execute(
        "UPDATE accounts SET balance = $1 WHERE id = $2",
        &[&11i64, &1i32],
    )
    .await
    .unwrap();
    assert_eq!(a.execute("COMMIT", &[]).await.unwrap(), 0);
    a.execute("BEGIN", &[]).await.unwrap();
    a.execute("DELETE FROM accounts WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    a.execute(&commit, &[]).await.unwrap();
    assert_eq!(
        undo_rows(&direct).await,
        2,
        "each COMMIT wrote its undo row"
    );
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(2), "{locks}");
    rolled_back(&a).await;
    assert_eq!(dump(&direct).await, before, "restored byte for byte");

    // Committed globally: the write stays and the undo row goes.
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.execute("BEGIN", &[]).await.unwrap();
    a.execute(
        "UPDATE accounts SET balance = $1 WHERE id = $2",
        &[&12i64, &3i32],
    )
    .await
    .unwrap();
    a.execute(&commit, &[]).await.unwrap();
    assert_eq!(
        one(&a, "SELECT tandem_commit()").await.unwrap().as_deref(),
        Some("Committed")
    );
    let balance: i64 = direct
        .query_one("SELECT balance FROM accounts WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 12);
    let direct_ref = &direct;
    tandem_tests::harness::eventually("the undo row is cleaned up", || async move {
        undo_rows(direct_ref).await == 0
    })
    .await;
    let settled = dump(&direct).await;

    // Another global transaction holds row 4: the COMMIT gets a retryable error, the
    // local transaction is rolled back, and the session goes on outside it.
    let holder = tandem.connect(&orders.name).await;
    one(&holder, "SELECT tandem_begin(30000)").await.unwrap();
    holder
        .batch_execute("UPDATE accounts SET balance = 0 WHERE id = 4")
        .await
        .unwrap();
    let held = dump(&direct).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.execute("BEGIN", &[]).await.unwrap();
    a.execute(
        "UPDATE accounts SET balance = $1 WHERE id = $2",
        &[&5i64, &4i32],
    )
    .await
    .unwrap();
    let err = a
        .execute(&commit, &[])
        .await
        .expect_err("the row is held past the wait bound");
    assert!(
        [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::LOCK_NOT_AVAILABLE
        ]
        .contains(err.code().unwrap()),
        "{err:?}"
    );
    assert_eq!(dump(&direct).await, held, "nothing of the refused branch");
    // One message (the simple protocol): its own transaction starts with it.
    assert_eq!(
        one(&a, "SELECT (now() = statement_timestamp())::text")
            .await
            .unwrap()
            .as_deref(),
        Some("true"),
        "no local transaction is left open"
    );
    assert_eq!(undo_rows(&direct).await, 1, "the holder's alone");
    rolled_back(&a).await;
    rolled_back(&holder).await;
    assert_eq!(undo_rows(&direct).await, 0);

    // The deferred constraint fails at the client's own COMMIT, after tandem registered
    // the branch and wrote its undo row: the client gets the backend's error, and the
    // branch is reported PhaseOneFailed.
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    a.execute("BEGIN", &[]).await.unwrap();
    a.execute("UPDATE uniq SET v = $1 WHERE id = $2", &[&1i32, &2i32])
        .await
        .unwrap();
    let err = a.execute(&commit, &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err:?}");
    reported_phase_one_failed(&lockserver, &xid).await;
    rolled_back(&a).await;
    assert_eq!(
        dump(&direct).await,
        settled,
        "only the committed write stays"
    );
    let v: i32 = direct
        .query_one("SELECT v FROM uniq WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2);
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_table_name_means_the_table_the_sessions_search_path_finds() {
    let orders = prepare("at_search_path").await;
    let direct = orders.direct().await;
    // The same table name in two schemas, as with a schema per tenant.
    direct
        .batch_execute(
            "CREATE SCHEMA tenant;
             CREATE TABLE tenant.accounts (LIKE public.accounts INCLUDING ALL);
             INSERT INTO tenant.accounts SELECT g, 500, 't' || g FROM generate_series(1, 5) g;",
        )
        .await
        .unwrap();
    let public_before = rows_of(&direct, "public.accounts").await;
    let tenant_before = rows_of(&direct, "tenant.accounts").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;

    // A session whose search_path finds tenant.accounts first: its writes, over both
    // protocols, are captured from and undone into that table.
    let a = tandem.connect(&orders.name).await;
    a.batch_execute("SET search_path = tenant, public")
        .await
        .unwrap();
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.execute(
        "UPDATE accounts SET balance = $1 WHERE id = $2",
        &[&1i64, &1i32],
    )
    .await
    .unwrap();
    a.batch_execute(
        "BEGIN; DELETE FROM accounts WHERE id = 2; INSERT INTO accounts (id, balance) VALUES (9, 9); COMMIT",
    )
    .await
    .unwrap();
    let (_, locks) = lockserver.get("/v1/locks").await;
    let keys = locks["locks"].to_string();
    assert!(
        keys.contains("tenant.accounts") && !keys.contains("public.accounts"),
        "the locks name tenant's table: {locks}"
    );
    assert_ne!(rows_of(&direct, "tenant.accounts").await, tenant_before);
    rolled_back(&a).await;
    assert_eq!(rows_of(&direct, "tenant.accounts").await, tenant_before);
    assert_eq!(rows_of(&direct, "public.accounts").await, public_before);

    // SET LOCAL lasts until the transaction ends: afterwards the name means the
    // session's own search_path again.
    let c = tandem.connect(&orders.name).await;
    one(&c, "SELECT tandem_begin(30000)").await.unwrap();
    c.batch_execute(
        "BEGIN; SET LOCAL search_path = tenant; UPDATE accounts SET balance = 4 WHERE id = 4; COMMIT",
    )
    .await
    .unwrap();
    c.batch_execute("UPDATE accounts SET balance = 5 WHERE id = 5")
        .await
        .expect("public.accounts, with the search_path restored");
    assert_ne!(rows_of(&direct, "public.accounts").await, public_before);
    assert_ne!(rows_of(&direct, "tenant.accounts").await, tenant_before);
    rolled_back(&c).await;
    assert_eq!(rows_of(&direct, "tenant.accounts").await, tenant_before);
    assert_eq!(rows_of(&direct, "public.accounts").await, public_before);

    // A session whose name changes meaning in a way tandem does not see (search_path
    // set inside a function; a set_config call in the statement's own text is seen):
    // the write that meets the other table does not stay, and its retry is captured
    // from the table it now names.
    direct
        .batch_execute(
            "CREATE FUNCTION switch_path() RETURNS text LANGUAGE sql STABLE AS
               $$ SELECT set_config('search_path', 'tenant, public', false) $$",
        )
        .await
        .unwrap();
    let b = tandem.connect(&orders.name).await;
    one(&b, "SELECT tandem_begin(30000)").await.unwrap();
    b.batch_execute("UPDATE accounts SET balance = 2 WHERE id = 3")
        .await
        .unwrap();
    b.batch_execute("SELECT switch_path()").await.unwrap();
    let err = b
        .batch_execute("UPDATE accounts SET balance = 3 WHERE id = 4")
        .await
        .expect_err("the name now means tenant.accounts");
    assert_eq!(
        err.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE),
        "{err}"
    );
    assert_eq!(
        rows_of(&direct, "tenant.accounts").await,
        tenant_before,
        "the write that met the other table was rolled back"
    );
    b.execute("UPDATE accounts SET balance = 3 WHERE id = 4", &[])
        .await
        .unwrap();
    assert_ne!(rows_of(&direct, "tenant.accounts").await, tenant_before);
    assert_ne!(rows_of(&direct, "public.accounts").await, public_before);
    rolled_back(&b).await;
    assert_eq!(rows_of(&direct, "tenant.accounts").await, tenant_before);
    assert_eq!(rows_of(&direct, "public.accounts").await, public_before);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// tandem's before image travels ahead of the write under one Sync: an error in either
/// is the client's reply, the write does not stay, and the session goes on, over both
/// protocols, in autocommit and inside a transaction block.
#[tokio::test]
async fn a_write_or_its_before_image_failing_answers_the_error_and_keeps_nothing() {
    let db = prepare("at_image_err").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let client = tandem.connect(&db.name).await;
    one(&client, "SELECT tandem_begin(30000)").await.unwrap();

    let failing = [
        // The predicate fails: the before image, which runs first, reports it.
        "UPDATE accounts SET balance = 1 WHERE id = 1 / (SELECT count(*) - 5 FROM accounts)",
        // The before image reads its row; the write itself fails.
        "UPDATE accounts SET balance = balance / (id - 1) WHERE id = 1",
        "DELETE FROM accounts WHERE id = 1 / (SELECT count(*) - 5 FROM accounts)",
    ];
    for sql in failing {
        // Autocommit, simple protocol: tandem's local transaction is rolled back.
        let e = client.simple_query(sql).await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::DIVISION_BY_ZERO), "{sql}: {e}");
        // Autocommit, extended protocol.
        let e = client.execute(sql, &[]).await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::DIVISION_BY_ZERO), "{sql}: {e}");
        assert_eq!(dump(&direct).await, before, "{sql}");
        assert_eq!(undo_rows(&direct).await, 0, "{sql}");
        // Inside a block, after a write that stays: the block is failed, as directly.
        client.batch_execute("BEGIN").await.unwrap();
        client
            .batch_execute("UPDATE accounts SET balance = 2 WHERE id = 2")
            .await
            .unwrap();
        let e = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::DIVISION_BY_ZERO), "{sql}: {e}");
        let e = client.batch_execute("SELECT 1").await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION), "{e}");
        client.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(dump(&direct).await, before, "{sql}");
    }
    // The session still captures: a write in autocommit and one in a block, undone.
    client
        .simple_query("UPDATE accounts SET balance = 3 WHERE id = 3")
        .await
        .unwrap();
    client
        .execute("DELETE FROM accounts WHERE id = $1", &[&4i32])
        .await
        .unwrap();
    assert_ne!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 2);
    rolled_back(&client).await;
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A temporary table's rows live only in the client's session: no other connection
/// could undo them, so a write to one inside a global transaction is refused (0A000)
/// and changes nothing, however the table is named; a locking read of one needs no
/// global lock and runs. Outside a global transaction the table is the client's own.
#[tokio::test]
async fn a_write_to_a_temporary_table_inside_a_global_transaction_is_refused() {
    let db = prepare("at_temp").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let client = tandem.connect(&db.name).await;
    client
        .batch_execute(
            "CREATE TEMP TABLE scratch (id int PRIMARY KEY, v int);
             INSERT INTO scratch VALUES (1, 1), (2, 2);
             UPDATE scratch SET v = 10 WHERE id = 1;",
        )
        .await
        .unwrap();
    one(&client, "SELECT tandem_begin(30000)").await.unwrap();
    let scratch = || async {
        client
            .query("SELECT id, v FROM scratch ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1)))
            .collect::<Vec<_>>()
    };
    for sql in [
        "UPDATE scratch SET v = 0 WHERE id = 1",
        "DELETE FROM scratch WHERE id = 2",
        "INSERT INTO scratch VALUES (3, 3)",
        "UPDATE pg_temp.scratch SET v = 0 WHERE id = 1",
    ] {
        let e = client.simple_query(sql).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {e}"
        );
        let message = e.as_db_error().map(|d| d.message()).unwrap_or_default();
        assert!(message.contains("temporary table"), "{sql}: {message}");
        let e = client.execute(sql, &[]).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {e}"
        );
        assert_eq!(scratch().await, [(1, 10), (2, 2)], "{sql}");
    }
    let locked = client
        .query("SELECT v FROM scratch WHERE id = 2 FOR UPDATE", &[])
        .await
        .unwrap();
    assert_eq!(locked[0].get::<_, i32>(0), 2);
    // A write to a real table beside it is captured and undone as usual.
    client
        .batch_execute("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    rolled_back(&client).await;
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    // Unbound, the temporary table is written as the client asks.
    client
        .batch_execute("UPDATE scratch SET v = 20 WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(scratch().await, [(1, 10), (2, 20)]);
    // A temporary table that hid `accounts` for one transaction is gone at its COMMIT:
    // the name means the real table again, and a write to it is captured.
    client
        .batch_execute(
            "BEGIN;
             CREATE TEMP TABLE accounts (id int PRIMARY KEY, balance bigint) ON COMMIT DROP;
             INSERT INTO accounts VALUES (1, 5);",
        )
        .await
        .unwrap();
    client
        .batch_execute("UPDATE accounts SET balance = 6 WHERE id = 1")
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    one(&client, "SELECT tandem_begin(30000)").await.unwrap();
    client
        .batch_execute("UPDATE accounts SET balance = 2 WHERE id = 1")
        .await
        .unwrap();
    assert_ne!(dump(&direct).await, before);
    rolled_back(&client).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A statement may end in a `--` comment: tandem's RETURNING columns, appended after
/// it, must still run, or the write's keys and images go unrecorded and a global
/// rollback leaves it in place.
#[tokio::test]
async fn writes_that_end_in_a_line_comment_are_captured() {
    let db = prepare("at_comment").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let client = tandem.connect(&db.name).await;
    one(&client, "SELECT tandem_begin(30000)").await.unwrap();
    client
        .simple_query("INSERT INTO accounts (id, balance) VALUES (10, 10) -- a new account")
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO accounts (id, balance) VALUES (11, 11) -- another",
            &[],
        )
        .await
        .unwrap();
    client
        .simple_query("UPDATE accounts SET balance = 0 WHERE id = 1 -- emptied")
        .await
        .unwrap();
    let returned: Vec<Vec<Option<String>>> = client
        .simple_query(
            "UPDATE accounts SET balance = 5 WHERE id = 2 RETURNING balance -- the new one",
        )
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    assert_eq!(
        returned,
        [[Some("5".to_owned())]],
        "only the client's own column"
    );
    client
        .execute("DELETE FROM accounts WHERE id = 3 -- gone", &[])
        .await
        .unwrap();
    // A semicolon and then a comment: RETURNING must go before them.
    client
        .execute("UPDATE accounts SET balance = 4 WHERE id = 4; -- done", &[])
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO accounts (id, balance) VALUES (12, 12); /* one; more */",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(undo_rows(&direct).await, 7);
    rolled_back(&client).await;
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// pgJDBC with autocommit off sends BEGIN in one batch with the transaction's first
/// statement. The write behind the BEGIN is captured (tandem runs the BEGIN ahead);
/// a BEGIN that fails takes the rest of its batch with it, as the backend would.
#[tokio::test]
async fn a_write_batched_behind_its_begin_is_captured_and_a_failed_begin_drops_the_batch() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("begin_ahead").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.query("SELECT tandem_begin()").await;
    raw.recv_until(b'Z').await;
    let batch = |begin: &str, write: &str| {
        let mut batch = Vec::new();
        for sql in [begin, write] {
            batch.extend(frame(b'P', &parse_body("", sql)));
            batch.extend(frame(b'B', &bind_body("")));
            // A row limit of 1, as pgJDBC asks when it wants no rows.
            batch.extend(frame(b'E', b"\0\0\0\0\x01"));
        }
        batch.extend(frame(b'S', b""));
        batch
    };

    raw.send(&batch(
        "BEGIN",
        "UPDATE accounts SET balance = 7 WHERE id = 1",
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12CZ", "{replies:?}");
    assert_eq!(replies[2].strings()[0], "BEGIN");
    assert_eq!(replies[5].strings()[0], "UPDATE 1");
    assert_eq!(replies[6].body[..], b"T"[..], "inside the block");
    raw.query("COMMIT").await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "CZ", "{replies:?}");
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(1), "{locks}");

    raw.send(&batch(
        "BEGIN ISOLATION LEVEL bogus",
        "UPDATE accounts SET balance = 8 WHERE id = 2",
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "EZ", "{replies:?}");
    assert_eq!(replies[0].sqlstate().as_deref(), Some("42601"));
    assert_eq!(replies[1].body[..], b"I"[..]);
    raw.query("SELECT tandem_rollback()").await;
    let replies = raw.recv_until(b'Z').await;
    let row = replies
        .iter()
        .find(|m| m.tag == b'D')
        .expect("the status row");
    assert!(
        String::from_utf8_lossy(&row.body).contains("Rollbacked"),
        "{replies:?}"
    );
    assert_eq!(
        dump(&direct).await,
        before,
        "row 1 restored, row 2 never written"
    );
    assert_eq!(undo_rows(&direct).await, 0);
    drop(raw);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// pgJDBC with autocommit off and `autosave` set sends BEGIN and a SAVEPOINT ahead of
/// a control call, the SAVEPOINT as a Query between them; a psql user may type the
/// three. The block they open holds nothing, so tandem_rollback() runs in it; a block
/// where anything else ran gets 25001.
#[tokio::test]
async fn a_rollback_call_behind_begin_and_an_autosave_savepoint_runs() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::{Msg, RawPg, frame};
    let db = prepare("autosave_control").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let begin_with_a_branch = async |raw: &mut RawPg| {
        raw.run_each(&[
            "SELECT tandem_begin(30000)",
            "UPDATE accounts SET balance = 7 WHERE id = 1",
        ])
        .await;
        assert_ne!(dump(&direct).await, before, "the branch committed");
    };
    let rolled_back_in_the_block = async |raw: &mut RawPg, replies: Vec<Msg>| {
        let status = replies.iter().find(|m| m.tag == b'D');
        assert!(
            status.is_some_and(|row| String::from_utf8_lossy(&row.body).contains("Rollbacked")),
            "{replies:?}"
        );
        assert_eq!(replies.last().map(|m| &m.body[..]), Some(&b"T"[..]));
        raw.query("ROLLBACK").await;
        raw.recv_until(b'Z').await;
        assert_eq!(dump(&direct).await, before, "row 1 restored");
    };

    begin_with_a_branch(&mut raw).await;
    for sql in ["BEGIN", "SAVEPOINT PGJDBC_AUTOSAVE"] {
        raw.query(sql).await;
        raw.recv_until(b'Z').await;
    }
    raw.query("SELECT tandem_rollback()").await;
    let replies = raw.recv_until(b'Z').await;
    rolled_back_in_the_block(&mut raw, replies).await;

    begin_with_a_branch(&mut raw).await;
    let mut batch = frame(b'P', &parse_body("begin", "BEGIN"));
    batch.extend(frame(b'B', &bind_body("begin")));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'Q', b"SAVEPOINT PGJDBC_AUTOSAVE\0"));
    batch.extend(frame(b'P', &parse_body("", "SELECT tandem_rollback()")));
    batch.extend(frame(b'B', &bind_body("")));
    batch.extend(frame(b'D', b"P\0"));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'S', b""));
    raw.send(&batch).await;
    let mut replies = raw.recv_until(b'Z').await;
    replies.extend(raw.recv_until(b'Z').await);
    rolled_back_in_the_block(&mut raw, replies).await;

    begin_with_a_branch(&mut raw).await;
    for sql in [
        "BEGIN",
        // PostgreSQL nests comments: this is a locking read, not a SAVEPOINT.
        "/* /* */ SAVEPOINT a */ SELECT * FROM accounts WHERE id = 2 FOR UPDATE",
        "SAVEPOINT PGJDBC_AUTOSAVE",
        "SELECT tandem_rollback()",
    ] {
        raw.query(sql).await;
        let replies = raw.recv_until(b'Z').await;
        if sql.contains("tandem_rollback") {
            assert_eq!(
                replies[0].sqlstate().as_deref(),
                Some("25001"),
                "{replies:?}"
            );
        } else {
            assert!(replies.iter().all(|m| m.tag != b'E'), "{sql}: {replies:?}");
        }
    }
    raw.query("ROLLBACK").await;
    raw.recv_until(b'Z').await;
    raw.query("SELECT tandem_rollback()").await;
    raw.recv_until(b'Z').await;
    assert_eq!(dump(&direct).await, before, "row 1 restored");
    assert_eq!(undo_rows(&direct).await, 0);
    drop(raw);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// After an error the backend skips what the client sends up to its Sync: tandem makes
/// no sync point of its own there (it would end the skipping early), so a write bound
/// behind a failed Describe does not run, as without tandem.
#[tokio::test]
async fn no_sync_point_is_made_behind_an_error_the_client_was_sent() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("settle_after_error").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.query("SELECT tandem_begin(30000)").await;
    raw.recv_until(b'Z').await;
    let mut prepare_write = frame(
        b'P',
        &parse_body("w", "UPDATE accounts SET balance = 1 WHERE id = 1"),
    );
    prepare_write.extend(frame(b'S', b""));
    raw.send(&prepare_write).await;
    raw.recv_until(b'Z').await;

    let mut describe = frame(b'D', b"Snosuch\0");
    describe.extend(frame(b'H', b""));
    raw.send(&describe).await;
    let replies = raw.recv_until(b'E').await;
    assert_eq!(
        replies[0].sqlstate().as_deref(),
        Some("26000"),
        "{replies:?}"
    );
    let mut run = frame(b'B', &bind_body("w"));
    run.extend(frame(b'E', b"\0\0\0\0\0"));
    run.extend(frame(b'S', b""));
    raw.send(&run).await;
    let replies = raw.recv_until(b'Z').await;
    assert!(
        replies.iter().all(|m| m.tag != b'C'),
        "the write was skipped: {replies:?}"
    );
    assert_eq!(dump(&direct).await, before, "row 1 untouched");

    raw.query("SELECT tandem_rollback()").await;
    raw.recv_until(b'Z').await;
    assert_eq!(dump(&direct).await, before);
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A simple Query that tandem must act on, sent behind a Bind and Execute with no Sync,
/// can get no sync point: tandem's own Sync would commit the executed work apart from
/// it, and none of the client's comes before the client reads the Query's reply. It is
/// refused (0A000), in place, instead of waiting for ever; the work before it is
/// answered and the session goes on.
#[tokio::test]
async fn a_query_behind_unsynced_execute_is_refused_not_held() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::{Msg, RawPg, frame};
    let db = prepare("query_behind_execute").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.query("SELECT tandem_begin(30000)").await;
    raw.recv_until(b'Z').await;
    let refused = |replies: &[Msg]| {
        let error = replies.iter().find(|m| m.tag == b'E').expect("an error");
        assert_eq!(error.sqlstate().as_deref(), Some("0A000"), "{replies:?}");
        assert!(
            error.field(b'M').unwrap_or_default().contains("no Sync"),
            "{replies:?}"
        );
    };

    // A write of the global transaction behind an Execute.
    let mut batch = frame(b'P', &parse_body("", "SELECT 1"));
    batch.extend(frame(b'B', &bind_body("")));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(
        b'Q',
        b"UPDATE accounts SET balance = 1 WHERE id = 1\0",
    ));
    raw.send(&batch).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12DCEZ", "{replies:?}");
    refused(&replies);
    raw.send(&frame(b'S', b"")).await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "Z");
    assert_eq!(dump(&direct).await, before, "the write never ran");

    // A control function behind an Execute that follows a Sync still unanswered.
    let mut batch = frame(b'P', &parse_body("", "SELECT 2"));
    batch.extend(frame(b'B', &bind_body("")));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'S', b""));
    batch.extend(frame(b'B', &bind_body("")));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'Q', b"SELECT tandem_rollback()\0"));
    raw.send(&batch).await;
    let mut replies = raw.recv_until(b'Z').await;
    replies.extend(raw.recv_until(b'Z').await);
    assert_eq!(tags(&replies), "12DCZ2DCEZ", "{replies:?}");
    refused(&replies);
    raw.send(&frame(b'S', b"")).await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "Z");

    // Behind a write that opened tandem's own block for the batch (autocommit, as
    // pgJDBC's executeBatch sends it), with the client's Sync right behind: the
    // refusal fails the block, which ends as the batch's implicit transaction would.
    let mut batch = frame(
        b'P',
        &parse_body("", "UPDATE accounts SET balance = 3 WHERE id = 3"),
    );
    batch.extend(frame(b'B', &bind_body("")));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'P', &parse_body("", "SELECT 3")));
    batch.extend(frame(b'B', &bind_body("")));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(
        b'Q',
        b"UPDATE accounts SET balance = 4 WHERE id = 4\0",
    ));
    batch.extend(frame(b'S', b""));
    raw.send(&batch).await;
    let mut replies = raw.recv_until(b'Z').await;
    replies.extend(raw.recv_until(b'Z').await);
    assert_eq!(tags(&replies), "12C12DCEZZ", "{replies:?}");
    refused(&replies);
    assert_eq!(dump(&direct).await, before, "neither write stays");

    // The session is still bound, and works.
    raw.query("UPDATE accounts SET balance = 2 WHERE id = 2")
        .await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "CZ");
    assert_ne!(dump(&direct).await, before);
    raw.query("SELECT tandem_rollback()").await;
    raw.recv_until(b'Z').await;
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// After an error in extended-protocol messages the backend discards everything up to
/// the client's Sync, a simple Query included: it gets no reply, through tandem as
/// without it, and the session goes on at the Sync (tandem awaited a ReadyForQuery for
/// the discarded Query, and held the next control call for ever).
#[tokio::test]
async fn a_query_the_backend_discards_after_an_error_is_not_awaited() {
    use super::control::parse_body;
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("query_after_error").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.query("SELECT tandem_begin(30000)").await;
    raw.recv_until(b'Z').await;

    for query in [
        "UPDATE accounts SET balance = 1 WHERE id = 1",
        "SELECT tandem_rollback()",
        "SELECT 1",
    ] {
        let mut batch = frame(b'P', &parse_body("", "SELECT * FROM no_such_table"));
        batch.extend(frame(b'H', b""));
        raw.send(&batch).await;
        let replies = raw.recv_until(b'E').await;
        assert_eq!(
            replies[0].sqlstate().as_deref(),
            Some("42P01"),
            "{replies:?}"
        );
        let mut query_message = query.as_bytes().to_vec();
        query_message.push(0);
        let mut batch = frame(b'Q', &query_message);
        batch.extend(frame(b'S', b""));
        raw.send(&batch).await;
        assert_eq!(tags(&raw.recv_until(b'Z').await), "Z", "{query}");
    }
    assert_eq!(dump(&direct).await, before, "the discarded write never ran");

    // At a sync point again: the session is still bound, and its calls are answered.
    raw.query("UPDATE accounts SET balance = 2 WHERE id = 2")
        .await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "CZ");
    raw.query("SELECT tandem_rollback()").await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "TDCZ", "{replies:?}");
    assert_eq!(dump(&direct).await, before);
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A write with RETURNING under an Execute row limit (asyncpg's fetchrow asks for 1):
/// the client gets at most that many rows, then PortalSuspended where more came, as
/// without tandem; every row the write changed is captured all the same.
#[tokio::test]
async fn a_returning_write_under_a_row_limit_passes_on_that_many_rows() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("returning_row_limit").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.query("SELECT tandem_begin(30000)").await;
    raw.recv_until(b'Z').await;
    let limited = |sql: &str, max_rows: i32| {
        let mut batch = frame(b'P', &parse_body("", sql));
        batch.extend(frame(b'B', &bind_body("")));
        let mut execute = vec![0u8];
        execute.extend_from_slice(&max_rows.to_be_bytes());
        batch.extend(frame(b'E', &execute));
        batch.extend(frame(b'S', b""));
        batch
    };

    raw.query("BEGIN").await;
    raw.recv_until(b'Z').await;
    raw.send(&limited(
        "UPDATE accounts SET balance = balance + 1 WHERE id IN (1, 2, 3) RETURNING id",
        1,
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12DsZ", "{replies:?}");
    raw.query("COMMIT").await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "CZ", "{replies:?}");
    // In a block the unnamed portal outlives the Sync: executing it again gives the
    // rows past the limit (tandem ran the write whole and kept them), then the
    // CommandComplete counting the rows of that Execute, as the backend would.
    raw.query("BEGIN").await;
    raw.recv_until(b'Z').await;
    raw.send(&limited(
        "UPDATE accounts SET balance = balance + 1 WHERE id IN (1, 2) RETURNING id",
        1,
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12DsZ", "{replies:?}");
    let mut again = frame(b'E', b"\0\0\0\0\0");
    again.extend(frame(b'S', b""));
    raw.send(&again).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "DCZ", "{replies:?}");
    assert_eq!(replies[1].strings()[0], "UPDATE 1");
    raw.query("ROLLBACK").await;
    raw.recv_until(b'Z').await;
    // Exactly as many rows as the limit: none withheld, so executing it again is
    // the server's to answer.
    raw.query("BEGIN").await;
    raw.recv_until(b'Z').await;
    raw.send(&limited(
        "UPDATE accounts SET balance = balance + 1 WHERE id = 1 RETURNING id",
        1,
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12DsZ", "{replies:?}");
    raw.send(&again).await;
    let replies = raw.recv_until(b'Z').await;
    assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");
    raw.query("ROLLBACK").await;
    raw.recv_until(b'Z').await;

    // Autocommit, fewer rows than the limit: all of them, and CommandComplete.
    raw.send(&limited(
        "UPDATE accounts SET balance = 0 WHERE id IN (4, 5) RETURNING balance",
        5,
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12DDCZ", "{replies:?}");
    assert_eq!(replies[4].strings()[0], "UPDATE 2");
    // As many rows as the limit (asyncpg's fetchrow of one row): suspended too, as
    // the backend does.
    raw.send(&limited(
        "UPDATE accounts SET note = 'one' WHERE id = 4 RETURNING note",
        1,
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12DsZ", "{replies:?}");
    assert_eq!(replies[2].body[..], b"\0\x01\0\0\0\x03one"[..]);
    // A named portal, in autocommit: its rows past the limit end with the implicit
    // transaction at the Sync.
    let mut named = frame(
        b'P',
        &parse_body(
            "",
            "UPDATE accounts SET note = 'x' WHERE id = 5 RETURNING id",
        ),
    );
    let mut bind = b"rest\0\0".to_vec();
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    named.extend(frame(b'B', &bind));
    named.extend(frame(b'E', b"rest\0\0\0\0\x01"));
    named.extend(frame(b'S', b""));
    raw.send(&named).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12DsZ", "{replies:?}");
    let changed = dump(&direct).await;
    assert_ne!(changed, before);

    raw.query("SELECT tandem_rollback()").await;
    raw.recv_until(b'Z').await;
    assert_eq!(dump(&direct).await, before, "all five rows restored");
    assert_eq!(undo_rows(&direct).await, 0);
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// pgJDBC with a fetch size inside a transaction (defaultRowFetchSize, getGeneratedKeys
/// included) binds a write with RETURNING to a named portal and fetches it an Execute
/// and a Sync at a time. tandem runs the write whole (it needs every row's image) and
/// answers the later Executes from the rows it kept: the client gets the very messages
/// the server gives without tandem. After a ROLLBACK TO SAVEPOINT, which may have
/// dropped the portal, an Execute of it is refused rather than answered with nothing.
#[tokio::test]
async fn a_returning_write_fetched_from_a_named_portal_gives_what_the_server_would() {
    use super::control::parse_body;
    use tandem_tests::raw_pg::{Msg, RawPg, frame};
    let db = prepare("returning_named_portal").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let upstream = tokio::net::lookup_host(tandem_tests::env::pg_upstream())
        .await
        .unwrap()
        .next()
        .unwrap();
    let write = "UPDATE accounts SET balance = balance + id, note = note || '+' WHERE id <= 5 RETURNING id, balance, note";
    let bound = |portal: &str| {
        let mut batch = frame(b'P', &parse_body("", write));
        let mut bind = format!("{portal}\0\0").into_bytes();
        bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        batch.extend(frame(b'B', &bind));
        batch.extend(frame(b'D', format!("P{portal}\0").as_bytes()));
        batch
    };
    let execute = |portal: &str, max_rows: i32| {
        let mut body = format!("{portal}\0").into_bytes();
        body.extend_from_slice(&max_rows.to_be_bytes());
        let mut out = frame(b'E', &body);
        out.extend(frame(b'S', b""));
        out
    };
    // Each reply as the client sees it, up to ReadyForQuery.
    async fn fetch(raw: &mut RawPg, messages: &[u8]) -> Vec<(u8, Vec<u8>)> {
        raw.send(messages).await;
        let replies: Vec<Msg> = raw.recv_until(b'Z').await;
        replies
            .into_iter()
            .map(|m| (m.tag, m.body.to_vec()))
            .collect()
    }
    // In a block: bind the write to C_1 and take two rows, then three more Executes.
    let mut fetched = Vec::new();
    for through_tandem in [false, true] {
        let addr = if through_tandem { tandem.pg } else { upstream };
        let mut raw = RawPg::startup(addr, "postgres", &db.name).await;
        if through_tandem {
            raw.run_each(&["SELECT tandem_begin(30000)"]).await;
        }
        raw.run_each(&["BEGIN"]).await;
        let mut all = vec![fetch(&mut raw, &[bound("C_1"), execute("C_1", 2)].concat()).await];
        for _ in 0..3 {
            all.push(fetch(&mut raw, &execute("C_1", 2)).await);
        }
        if through_tandem {
            raw.run_each(&["COMMIT"]).await;
        } else {
            raw.run_each(&["ROLLBACK"]).await;
            assert_eq!(dump(&direct).await, before);
        }
        fetched.push((raw, all));
    }
    let (mut raw, seen_through_tandem) = fetched.pop().unwrap();
    let (_, seen_directly) = fetched.pop().unwrap();
    let tags_of = |all: &[Vec<(u8, Vec<u8>)>]| -> Vec<String> {
        all.iter()
            .map(|replies| replies.iter().map(|(t, _)| *t as char).collect())
            .collect()
    };
    assert_eq!(
        tags_of(&seen_through_tandem),
        ["12TDDsZ", "DDsZ", "DCZ", "CZ"],
        "{seen_through_tandem:?}"
    );
    assert_eq!(tags_of(&seen_through_tandem), tags_of(&seen_directly));
    let sorted = |all: &[Vec<(u8, Vec<u8>)>]| {
        let mut rows: Vec<Vec<u8>> = all
            .iter()
            .flatten()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, b)| b.clone())
            .collect();
        rows.sort();
        let others: Vec<(u8, Vec<u8>)> = all
            .iter()
            .flatten()
            .filter(|(t, _)| *t != b'D')
            .cloned()
            .collect();
        (rows, others)
    };
    assert_eq!(
        sorted(&seen_through_tandem),
        sorted(&seen_directly),
        "the same rows, RowDescription, tags (UPDATE 1, then UPDATE 0) and statuses"
    );
    assert_ne!(dump(&direct).await, before);

    // A portal bound before a savepoint that is rolled back to: refused, not emptied.
    raw.run_each(&["BEGIN"]).await;
    let replies = fetch(&mut raw, &[bound("C_2"), execute("C_2", 1)].concat()).await;
    assert_eq!(
        tags_of(std::slice::from_ref(&replies)),
        ["12TDsZ"],
        "{replies:?}"
    );
    raw.run_each(&["SAVEPOINT s", "ROLLBACK TO SAVEPOINT s"])
        .await;
    // Whether the replies hold an ErrorResponse with SQLSTATE `code`.
    let failed_with = |replies: &[(u8, Vec<u8>)], code: &str| {
        let field = format!("C{code}\0");
        replies
            .iter()
            .any(|(t, b)| *t == b'E' && b.windows(field.len()).any(|w| w == field.as_bytes()))
    };
    let replies = fetch(&mut raw, &execute("C_2", 1)).await;
    assert!(failed_with(&replies, "0A000"), "{replies:?}");
    raw.run_each(&["ROLLBACK"]).await;
    // Closed, the portal is the backend's again: an Execute of it fails as without
    // tandem (34000, no such portal).
    raw.run_each(&["BEGIN"]).await;
    fetch(&mut raw, &[bound("C_3"), execute("C_3", 1)].concat()).await;
    let mut close = frame(b'C', b"PC_3\0");
    close.extend(frame(b'S', b""));
    fetch(&mut raw, &close).await;
    let replies = fetch(&mut raw, &execute("C_3", 1)).await;
    assert!(failed_with(&replies, "34000"), "{replies:?}");
    raw.run_each(&["ROLLBACK"]).await;

    raw.run_each(&["SELECT tandem_rollback()"]).await;
    assert_eq!(
        dump(&direct).await,
        before,
        "every row the write changed restored"
    );
    assert_eq!(undo_rows(&direct).await, 0);
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// pgJDBC's executeBatch inside a transaction block sends several writes before one
/// Sync: each is captured on its own, and after one fails nothing more of the batch
/// runs, as without tandem.
#[tokio::test]
async fn a_batch_of_writes_in_a_transaction_block_is_captured_write_by_write() {
    use tandem_tests::raw_pg::RawPg;
    let db = prepare("batched_writes").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.query("SELECT tandem_begin()").await;
    raw.recv_until(b'Z').await;

    raw.query("BEGIN").await;
    raw.recv_until(b'Z').await;
    raw.send(&jdbc_batch(&[
        "UPDATE accounts SET balance = 11 WHERE id = 1",
        "UPDATE accounts SET balance = 12 WHERE id = 2",
        "DELETE FROM accounts WHERE id = 3",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12C12CZ", "{replies:?}");
    assert_eq!(replies[9].body[..], b"T"[..]);
    raw.query("COMMIT").await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "CZ");
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(3), "{locks}");

    raw.query("BEGIN").await;
    raw.recv_until(b'Z').await;
    raw.send(&jdbc_batch(&[
        "UPDATE accounts SET balance = 14 WHERE id = 4",
        "UPDATE accounts SET balance = balance / 0 WHERE id = 5",
        "UPDATE accounts SET balance = 99 WHERE id = 1",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    let shape = tags(&replies);
    assert!(shape.starts_with("12C"), "{replies:?}");
    assert_eq!(shape.matches('E').count(), 1, "{replies:?}");
    assert!(
        shape.ends_with("EZ"),
        "nothing ran after the error: {replies:?}"
    );
    let error = replies.iter().find(|m| m.tag == b'E').expect("the error");
    assert_eq!(error.sqlstate().as_deref(), Some("22012"));
    assert_eq!(
        replies.last().map(|z| z.body[..].to_vec()),
        Some(b"E".to_vec())
    );
    raw.query("ROLLBACK").await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "CZ");

    // A refused write that ends the batch fails the block too, so that a COMMIT
    // cannot keep the write before it.
    raw.query("BEGIN").await;
    raw.recv_until(b'Z').await;
    raw.send(&jdbc_batch(&[
        "UPDATE accounts SET balance = 14 WHERE id = 4",
        "UPDATE nokey SET v = 1",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12CEZ", "{replies:?}");
    assert_eq!(replies[3].sqlstate().as_deref(), Some("0A000"));
    assert_eq!(replies[4].body[..], b"E"[..], "the block failed");
    raw.query("COMMIT").await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(replies[0].strings()[0], "ROLLBACK", "{replies:?}");

    // A write tandem refuses (a primary-key update) fails the block the same way.
    raw.query("BEGIN").await;
    raw.recv_until(b'Z').await;
    raw.send(&jdbc_batch(&[
        "UPDATE accounts SET balance = 14 WHERE id = 4",
        "UPDATE accounts SET id = 50 WHERE id = 5",
        "UPDATE accounts SET balance = 99 WHERE id = 1",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12CEZ", "{replies:?}");
    assert_eq!(replies[3].sqlstate().as_deref(), Some("0A000"));
    assert_eq!(replies[4].body[..], b"E"[..]);
    raw.query("SELECT 1").await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(
        replies[0].sqlstate().as_deref(),
        Some("25P02"),
        "{replies:?}"
    );
    raw.query("ROLLBACK").await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "CZ");

    raw.query("SELECT tandem_rollback()").await;
    let replies = raw.recv_until(b'Z').await;
    let row = replies
        .iter()
        .find(|m| m.tag == b'D')
        .expect("the status row");
    assert!(
        String::from_utf8_lossy(&row.body).contains("Rollbacked"),
        "{replies:?}"
    );
    assert_eq!(dump(&direct).await, before, "rolled back exactly");
    drop(raw);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A Terminate that the client sends while tandem drops the rest of a failed batch
/// still ends the session: it is not dropped with the batch, which would leave the
/// session open until the client closed its socket.
#[tokio::test]
async fn a_terminate_behind_a_failed_write_in_a_batch_ends_the_session() {
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("batch_terminate").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.query("SELECT tandem_begin()").await;
    let replies = raw.recv_until(b'Z').await;
    let xid = replies
        .iter()
        .find(|m| m.tag == b'D')
        .map(|row| String::from_utf8_lossy(&row.body[6..]).into_owned())
        .expect("the xid");
    raw.query("BEGIN").await;
    raw.recv_until(b'Z').await;
    let mut batch = statements_without_sync(&[
        "UPDATE accounts SET balance = 14 WHERE id = 4",
        "UPDATE accounts SET balance = balance / 0 WHERE id = 5",
        "UPDATE accounts SET balance = 99 WHERE id = 1",
    ]);
    batch.extend(frame(b'X', b""));
    raw.send(&batch).await;
    let replies = tokio::time::timeout(std::time::Duration::from_secs(10), raw.recv_to_close())
        .await
        .expect("the session ended at the Terminate");
    assert!(
        replies
            .iter()
            .any(|m| m.sqlstate().as_deref() == Some("22012")),
        "{replies:?}"
    );
    assert!(replies.iter().all(|m| m.tag != b'Z'), "{replies:?}");
    tandem.assert_no_sessions_left().await;
    let (status, _) = lockserver
        .post(&format!("/v1/transactions/{xid}/rollback"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(dump(&direct).await, before, "nothing of the block stayed");
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// pgJDBC's executeBatch with autocommit on sends several writes before one Sync,
/// outside a transaction block: one implicit transaction for the backend. tandem runs
/// it in a block of its own, each write captured, and ends the block at the client's
/// Sync: committed with its branch, or rolled back if a statement failed, with
/// ReadyForQuery 'I' either way.
#[tokio::test]
async fn a_batch_of_writes_outside_a_transaction_block_is_one_captured_transaction() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("implicit_batch").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let balances = || async {
        direct
            .query("SELECT balance FROM accounts ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect::<Vec<i64>>()
    };
    raw.query("SELECT tandem_begin()").await;
    raw.recv_until(b'Z').await;

    // Committed as one: every write captured, and the block tandem's, not the client's.
    raw.send(&jdbc_batch(&[
        "UPDATE accounts SET balance = 11 WHERE id = 1",
        "UPDATE accounts SET balance = 12 WHERE id = 2",
        "DELETE FROM accounts WHERE id = 3",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12C12CZ", "{replies:?}");
    assert_eq!(replies.last().unwrap().body[..], b"I"[..]);
    assert_eq!(balances().await, [11, 12, 1000, 1000]);
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(3), "{locks}");
    assert_eq!(undo_rows(&direct).await, 1, "one branch");

    // A batch that ends on a statement that is not a write commits the same way.
    raw.send(&jdbc_batch(&[
        "UPDATE accounts SET balance = 14 WHERE id = 4",
        "UPDATE accounts SET balance = 15 WHERE id = 5",
        "SELECT 2",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    // The SELECT's Execute asks for one row: it stops there (PortalSuspended).
    assert_eq!(tags(&replies), "12C12C12DsZ", "{replies:?}");
    assert_eq!(replies.last().unwrap().body[..], b"I"[..]);
    assert_eq!(balances().await, [11, 12, 14, 15]);

    // Requests pipelined behind the batch's Sync wait until tandem's block is over:
    // a ROLLBACK there finds no transaction, and the batch stays committed.
    let mut pipelined = jdbc_batch(&["UPDATE accounts SET balance = 16 WHERE id = 4", "SELECT 3"]);
    pipelined.extend(frame(b'Q', b"ROLLBACK\0"));
    raw.send(&pipelined).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12DsZ", "{replies:?}");
    assert_eq!(replies.last().unwrap().body[..], b"I"[..]);
    let replies = raw.recv_until(b'Z').await;
    assert!(tags(&replies).ends_with("CZ"), "{replies:?}");
    assert_eq!(replies.last().unwrap().body[..], b"I"[..]);
    assert_eq!(balances().await, [11, 12, 16, 15]);

    // A control function last in the batch ends tandem's block too.
    let mut with_call = Vec::new();
    for sql in [
        "UPDATE accounts SET balance = 17 WHERE id = 4",
        "SELECT tandem_xid()",
    ] {
        with_call.extend(frame(b'P', &parse_body("", sql)));
        with_call.extend(frame(b'B', &bind_body("")));
        with_call.extend(frame(b'E', b"\0\0\0\0\0"));
    }
    with_call.extend(frame(b'S', b""));
    raw.send(&with_call).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12DCZ", "{replies:?}");
    assert_eq!(replies.last().unwrap().body[..], b"I"[..]);
    assert_eq!(balances().await, [11, 12, 17, 15]);

    // A statement that fails at the backend: nothing of the batch stays.
    raw.send(&jdbc_batch(&[
        "UPDATE accounts SET balance = 21 WHERE id = 1",
        "UPDATE accounts SET balance = balance / 0 WHERE id = 2",
        "UPDATE accounts SET balance = 99 WHERE id = 4",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    let shape = tags(&replies);
    assert!(
        shape.starts_with("12C") && shape.ends_with("EZ"),
        "{replies:?}"
    );
    let error = replies.iter().find(|m| m.tag == b'E').expect("the error");
    assert_eq!(error.sqlstate().as_deref(), Some("22012"));
    assert_eq!(replies.last().unwrap().body[..], b"I"[..]);
    assert_eq!(
        balances().await,
        [11, 12, 17, 15],
        "the first write was rolled back"
    );

    // A write tandem refuses, last in the batch: the block rolls back too.
    raw.send(&jdbc_batch(&[
        "UPDATE accounts SET balance = 31 WHERE id = 1",
        "UPDATE accounts SET id = 50 WHERE id = 2",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12CEZ", "{replies:?}");
    assert_eq!(replies[3].sqlstate().as_deref(), Some("0A000"));
    assert_eq!(replies[4].body[..], b"I"[..]);
    assert_eq!(balances().await, [11, 12, 17, 15]);

    // The session is idle and goes on; the global rollback undoes both branches.
    raw.query("SELECT 41 + 1").await;
    let replies = raw.recv_until(b'Z').await;
    assert!(replies.iter().any(|m| m.tag == b'D'), "{replies:?}");
    raw.query("SELECT tandem_rollback()").await;
    let replies = raw.recv_until(b'Z').await;
    let row = replies
        .iter()
        .find(|m| m.tag == b'D')
        .expect("the status row");
    assert!(
        String::from_utf8_lossy(&row.body).contains("Rollbacked"),
        "{replies:?}"
    );
    tandem_tests::harness::eventually("the branches were undone", || async {
        dump(&direct).await == before
    })
    .await;
    drop(raw);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// The replies of a write in flight are read whole, however large: a row that tandem's
/// RETURNING image makes longer than one socket read still loses tandem's columns
/// before the client sees it, and an INSERT's key is captured, so the rollback
/// removes the row.
#[tokio::test]
async fn a_write_whose_returned_rows_span_many_reads_is_captured() {
    let db = prepare("big_rows").await;
    let direct = db.direct().await;
    direct
        .batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let c = tandem.connect(&db.name).await;
    one(&c, "SELECT tandem_begin()").await.unwrap();
    let inserted = c
        .simple_query("INSERT INTO big VALUES (1, repeat('x', 3000000))")
        .await
        .unwrap();
    assert!(
        matches!(
            inserted.as_slice(),
            [SimpleQueryMessage::CommandComplete(1)]
        ),
        "{inserted:?}"
    );
    let returned = c
        .simple_query("INSERT INTO big SELECT 2, repeat('y', 3000000) RETURNING id")
        .await
        .unwrap();
    let rows: Vec<_> = returned
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 1, "{returned:?}");
    assert_eq!(rows[0].len(), 1, "only the client's column");
    assert_eq!(rows[0].get(0), Some("2"));
    let updated = c
        .execute("UPDATE big SET v = repeat('z', 3000000) WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(updated, 1);
    // Replaying rows this large may outlast the call's wait.
    super::at_mode::rollback_begun(&c).await;
    tandem_tests::harness::eventually("both inserted rows were undone", || async {
        let count: i64 = direct
            .query_one("SELECT count(*) FROM big", &[])
            .await
            .unwrap()
            .get(0);
        count == 0
    })
    .await;
    drop(c);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Each statement as pgJDBC batches it: Parse, Bind, and an Execute asking for one
/// row; no Sync.
pub(crate) fn statements_without_sync(statements: &[&str]) -> Vec<u8> {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::frame;
    let mut batch = Vec::new();
    for sql in statements {
        batch.extend(frame(b'P', &parse_body("", sql)));
        batch.extend(frame(b'B', &bind_body("")));
        batch.extend(frame(b'E', b"\0\0\0\0\x01"));
    }
    batch
}

/// pgJDBC's executeBatch: `statements_without_sync`, then one Sync.
pub(crate) fn jdbc_batch(statements: &[&str]) -> Vec<u8> {
    let mut batch = statements_without_sync(statements);
    batch.extend(tandem_tests::raw_pg::frame(b'S', b""));
    batch
}

/// The tags of `replies`, a character each.
pub(crate) fn tags(replies: &[tandem_tests::raw_pg::Msg]) -> String {
    replies.iter().map(|m| m.tag as char).collect()
}

/// pgJDBC, once a statement is prepared on the server, asks for each result column in
/// its own format: a write's RETURNING keeps those formats through its capture, and
/// the rollback is exact.
#[tokio::test]
async fn returning_columns_keep_the_formats_the_client_asked_for() {
    use super::control::parse_body;
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("returning_formats").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.query("SELECT tandem_begin()").await;
    raw.recv_until(b'Z').await;
    let write = |sql: &str, formats: &[i16]| {
        let mut bind = b"\0\0".to_vec();
        bind.extend_from_slice(&[0, 0, 0, 0]);
        bind.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            bind.extend_from_slice(&f.to_be_bytes());
        }
        let mut batch = frame(b'P', &parse_body("", sql));
        batch.extend(frame(b'B', &bind));
        batch.extend(frame(b'D', b"P\0"));
        batch.extend(frame(b'E', b"\0\0\0\0\0"));
        batch.extend(frame(b'S', b""));
        batch
    };
    let values = |row: &tandem_tests::raw_pg::Msg| -> Vec<Vec<u8>> {
        let body = &row.body[..];
        let count = i16::from_be_bytes([body[0], body[1]]);
        let mut at = 2;
        (0..count)
            .map(|_| {
                let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
                at += 4 + len;
                body[at - len..at].to_vec()
            })
            .collect()
    };

    raw.send(&write(
        "UPDATE accounts SET balance = 42 WHERE id = 3 RETURNING balance, note",
        &[1, 0],
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12TDCZ", "{replies:?}");
    let formats = &replies[2].body[replies[2].body.len() - 2..];
    assert_eq!(formats, [0, 0], "the note's field says text");
    assert_eq!(
        values(&replies[3]),
        [42i64.to_be_bytes().to_vec(), b"n3".to_vec()],
        "the balance in binary, the note in text, nothing of tandem's"
    );
    assert_eq!(replies[4].strings()[0], "UPDATE 1");

    // Codes for a write that returns nothing name no column: PostgreSQL ignores them.
    raw.send(&write(
        "UPDATE accounts SET balance = 43 WHERE id = 2",
        &[1, 0],
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12nCZ", "{replies:?}");

    raw.send(&write(
        "INSERT INTO accounts (id, balance) VALUES (80, 8) RETURNING id",
        &[1],
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12TDCZ", "{replies:?}");
    assert_eq!(values(&replies[3]), [80i32.to_be_bytes().to_vec()]);

    raw.query("SELECT tandem_rollback()").await;
    let replies = raw.recv_until(b'Z').await;
    let status = replies.iter().find(|m| m.tag == b'D').expect("the status");
    assert!(
        String::from_utf8_lossy(&status.body).contains("Rollbacked"),
        "{replies:?}"
    );
    assert_eq!(dump(&direct).await, before, "restored byte for byte");
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn commit_and_chain_commits_a_branch_and_captures_the_next_transaction() {
    let orders = prepare("at_chain").await;
    with_deferred_unique(&orders).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    let a = tandem.connect(&orders.name).await;
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    a.batch_execute("BEGIN; UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    a.batch_execute("COMMIT AND CHAIN").await.unwrap();
    // The chained transaction is open, and its write is a branch of its own.
    a.batch_execute("UPDATE accounts SET balance = 2 WHERE id = 2; COMMIT")
        .await
        .unwrap();
    let (_, txn) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
    assert_eq!(txn["branches"].as_array().map(Vec::len), Some(2), "{txn}");
    for branch in [0, 1] {
        assert_eq!(
            txn["branches"][branch]["status"], "Registered",
            "no failure reported: {txn}"
        );
    }
    rolled_back(&a).await;
    assert_eq!(dump(&direct).await, before, "both branches undone exactly");
    assert_eq!(undo_rows(&direct).await, 0);

    // At the end of a multi-statement query tandem would commit the branch itself, and
    // the chained transaction would not open: refused, and nothing runs.
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    let err = a
        .batch_execute("BEGIN; UPDATE accounts SET balance = 3 WHERE id = 3; COMMIT AND CHAIN")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{err:?}"
    );
    assert_eq!(
        one(&a, "SELECT pg_current_xact_id_if_assigned()::text")
            .await
            .unwrap(),
        None,
        "no transaction left open"
    );
    rolled_back(&a).await;
    assert_eq!(dump(&direct).await, before);

    // A COMMIT AND CHAIN that fails on a deferred constraint, after tandem registered
    // the branch: reported PhaseOneFailed, so the global commit owes it nothing.
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    a.batch_execute("BEGIN; UPDATE uniq SET v = 1 WHERE id = 2")
        .await
        .unwrap();
    let err = a.batch_execute("COMMIT AND CHAIN").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err:?}");
    reported_phase_one_failed(&lockserver, &xid).await;
    assert_eq!(
        one(&a, "SELECT tandem_commit()").await.unwrap().as_deref(),
        Some("Committed")
    );
    let (_, txn) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
    assert_eq!(txn["status"], "Committed", "{txn}");
    let v: i32 = direct
        .query_one("SELECT v FROM uniq WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_hint_naming_another_transaction_or_inside_an_open_block_is_refused() {
    let orders = prepare("at_hint_refused").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let b = tandem.connect(&orders.name).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    let x = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    let y = one(&b, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    // Bound to X, a statement hinted for Y or an unknown xid is refused over the
    // extended protocol as over the simple one.
    for hinted in [y.as_str(), "no-such-xid"] {
        let sql = format!("/*+ XID('{hinted}') */ UPDATE accounts SET balance = $1 WHERE id = $2");
        let err = a.execute(&sql, &[&7i64, &1i32]).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE),
            "{hinted}: {err:?}"
        );
    }
    // Its own xid is fine.
    let own = format!("/*+ XID('{x}') */ UPDATE accounts SET balance = $1 WHERE id = $2");
    assert_eq!(a.execute(&own, &[&7i64, &2i32]).await.unwrap(), 1);
    // An unbound session's open block: the write before the hint would commit in the
    // branch without its image.
    let c = tandem.connect(&orders.name).await;
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("UPDATE accounts SET balance = 5 WHERE id = 3")
        .await
        .unwrap();
    let err = c
        .batch_execute(&format!(
            "/*+ XID('{y}') */ UPDATE accounts SET balance = 6 WHERE id = 4"
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::ACTIVE_SQL_TRANSACTION),
        "{err:?}"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("UPDATE accounts SET balance = 5 WHERE id = 3")
        .await
        .unwrap();
    let sql = format!("/*+ XID('{y}') */ UPDATE accounts SET balance = $1 WHERE id = $2");
    let err = c.execute(&sql, &[&6i64, &4i32]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::ACTIVE_SQL_TRANSACTION),
        "{err:?}"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    // A block that has run nothing but BEGIN (psycopg's default) takes a hint: the
    // binding lasts for the block, whose later writes are captured too.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!(
        "/*+ XID('{y}') */ UPDATE accounts SET balance = 6 WHERE id = 4"
    ))
    .await
    .unwrap();
    c.batch_execute("UPDATE accounts SET balance = 7 WHERE id = 5")
        .await
        .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(one(&c, "SELECT tandem_xid()").await.unwrap(), None);
    rolled_back(&a).await;
    rolled_back(&b).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A FunctionCall message: `oid` with text arguments, a text result.
fn function_call(oid: u32, args: &[&str]) -> Vec<u8> {
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(args.len() as i16).to_be_bytes());
    for arg in args {
        body.extend_from_slice(&(arg.len() as i32).to_be_bytes());
        body.extend_from_slice(arg.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    tandem_tests::raw_pg::frame(b'F', &body)
}

/// Sends `bytes` in two writes, apart long enough to arrive in two reads.
async fn send_split(client: &mut tandem_tests::raw_pg::RawPg, bytes: &[u8], at: usize) {
    client.send(&bytes[..at]).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    client.send(&bytes[at..]).await;
}

#[tokio::test]
async fn messages_split_across_reads_are_followed_and_a_function_call_in_a_branch_is_refused() {
    use tandem_tests::expect_msg;
    use tandem_tests::raw_pg::{RawPg, frame};
    let orders = prepare("at_split").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE FUNCTION zero_first() RETURNS int VOLATILE LANGUAGE sql
             AS $$ UPDATE accounts SET balance = 0 WHERE id = 1 RETURNING 1 $$",
        )
        .await
        .unwrap();
    let writer: u32 = direct
        .query_one("SELECT 'zero_first'::regproc::oid", &[])
        .await
        .unwrap()
        .get(0);
    let adder: u32 = direct
        .query_one("SELECT 'int4pl'::regproc::oid", &[])
        .await
        .unwrap()
        .get(0);
    let before = dump(&direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &orders.name).await;

    // A FunctionCall that arrives in two reads is answered as a whole one is.
    send_split(&mut raw, &function_call(adder, &["40", "2"]), 9).await;
    let answer = expect_msg!(raw, b'V');
    assert!(answer.body.ends_with(b"42"), "{answer:?}");
    expect_msg!(raw, b'Z');

    // Inside a global transaction a FunctionCall is refused: what the function
    // writes would not be captured.
    raw.query("SELECT tandem_begin(30000)").await;
    raw.recv_until(b'Z').await;
    raw.send(&function_call(writer, &[])).await;
    let refused = expect_msg!(raw, b'E');
    assert_eq!(refused.sqlstate().as_deref(), Some("0A000"), "{refused:?}");
    expect_msg!(raw, b'Z');
    // Large-object reads write nothing: they run (pgJDBC reads a LargeObject so).
    let large_object: u32 = direct
        .query_one("SELECT lo_from_bytea(0, 'stored')", &[])
        .await
        .unwrap()
        .get(0);
    raw.send(&function_call(3458, &[&large_object.to_string()]))
        .await;
    let read = expect_msg!(raw, b'V');
    assert!(read.body.ends_with(b"\\x73746f726564"), "{read:?}");
    expect_msg!(raw, b'Z');

    // An Execute split across reads, then a Query behind it with no Sync: the Query
    // is refused, and the Execute's rows reach the client in order.
    raw.query("BEGIN").await;
    raw.recv_until(b'Z').await;
    let mut batch = frame(b'P', b"\0SELECT id FROM accounts ORDER BY id\0\0\0");
    batch.extend_from_slice(&frame(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend_from_slice(&frame(b'S', b""));
    raw.send(&batch).await;
    raw.recv_until(b'Z').await;
    send_split(&mut raw, &frame(b'E', b"\0\0\0\0\0"), 6).await;
    raw.query("UPDATE accounts SET balance = 1 WHERE id = 2")
        .await;
    raw.send(&frame(b'S', b"")).await;
    let replies = raw.recv_until(b'Z').await;
    let tags: Vec<char> = replies.iter().map(|m| m.tag as char).collect();
    assert_eq!(
        tags,
        ['D', 'D', 'D', 'D', 'D', 'C', 'E', 'Z'],
        "{replies:?}"
    );
    assert_eq!(replies[6].sqlstate().as_deref(), Some("0A000"));
    let synced = raw.recv_until(b'Z').await;
    assert_eq!(synced.len(), 1, "{synced:?}");
    raw.query("ROLLBACK").await;
    raw.recv_until(b'Z').await;
    raw.query("SELECT tandem_rollback()").await;
    raw.recv_until(b'Z').await;
    assert_eq!(dump(&direct).await, before, "the function wrote nothing");
    drop(raw);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_session_whose_global_transaction_ended_elsewhere_fails_its_writes_until_it_begins_again()
{
    let orders = prepare("at_stale_binding").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let b = tandem.connect(&orders.name).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    one(&b, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    assert_eq!(
        one(&a, "SELECT tandem_commit()").await.unwrap().as_deref(),
        Some("Committed")
    );
    // B never left: its writes cannot join a committed transaction, and are undone;
    // it stays bound, so a client that carries on past the error commits nothing
    // outside the transaction it meant to write in.
    for _ in 0..2 {
        let err = b
            .batch_execute("UPDATE accounts SET balance = 1 WHERE id = 1")
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE),
            "{err:?}"
        );
    }
    assert_eq!(dump(&direct).await, before);
    assert_eq!(
        one(&b, "SELECT tandem_xid()").await.unwrap(),
        Some(xid.clone())
    );
    // A new global transaction replaces the binding of the one that is over.
    let next = one(&b, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(next, xid);
    b.batch_execute("UPDATE accounts SET balance = 2 WHERE id = 1")
        .await
        .unwrap();
    rolled_back(&b).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn an_autocommit_write_whose_branch_cannot_commit_gets_no_command_complete() {
    use tandem_tests::raw_pg::{RawPg, reply_tags};
    let orders = prepare("at_held_complete").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let before = dump(&orders.direct().await).await;
    let mut b = RawPg::startup(tandem.pg, "postgres", &orders.name).await;
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    b.simple(&format!("SELECT tandem_join('{xid}')")).await;
    one(&a, "SELECT tandem_commit()").await.unwrap();
    // Its branch cannot register in a committed transaction, so tandem's COMMIT of it
    // never happens: as from a backend whose implicit commit fails, the client hears
    // the error alone, not "UPDATE 1" first.
    let replies = b
        .simple("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await;
    let tags = reply_tags(&replies);
    assert_eq!(tags, ['E', 'Z'], "{replies:?}");
    assert_eq!(replies[0].sqlstate().as_deref(), Some("55000"));
    // A multi-statement query outside a block: the statements before the last keep
    // theirs, as the backend sends them before its commit.
    let replies = b.simple("UPDATE accounts SET balance = 1 WHERE id = 1; UPDATE accounts SET balance = 1 WHERE id = 2").await;
    let tags = reply_tags(&replies);
    assert_eq!(tags, ['C', 'E', 'Z'], "{replies:?}");
    // The setting the last statement changes is reported before ReadyForQuery: the
    // held CommandComplete stays held.
    let replies = b
        .simple("UPDATE accounts SET balance = 1 WHERE id = 1; SET application_name = 'held'")
        .await;
    let tags: Vec<char> = reply_tags(&replies)
        .into_iter()
        .filter(|&t| t != 'S')
        .collect();
    assert_eq!(tags, ['C', 'E', 'Z'], "{replies:?}");
    // In XA mode, the autocommit statement whose branch cannot prepare.
    b.simple("SELECT tandem_leave()").await;
    b.simple("SELECT tandem_mode('xa')").await;
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    b.simple(&format!("SELECT tandem_join('{xid}')")).await;
    one(&a, "SELECT tandem_rollback()").await.unwrap();
    let replies = b
        .simple("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await;
    let tags = reply_tags(&replies);
    assert_eq!(tags, ['E', 'Z'], "XA: {replies:?}");
    assert_eq!(dump(&orders.direct().await).await, before, "nothing stayed");
    // A write that commits still gets its CommandComplete.
    b.simple("SELECT tandem_leave()").await;
    let replies = b
        .simple("UPDATE accounts SET balance = 2 WHERE id = 1")
        .await;
    let tags = reply_tags(&replies);
    assert_eq!(tags, ['C', 'Z'], "{replies:?}");
    drop(b);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn large_object_writes_are_refused_in_at_mode_and_make_an_xa_block_the_branch() {
    use tandem_tests::expect_msg;
    use tandem_tests::raw_pg::RawPg;
    let orders = prepare("at_large_objects").await;
    let direct = orders.direct().await;
    let large_objects = || async {
        let n: i64 = orders
            .direct()
            .await
            .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
            .await
            .unwrap()
            .get(0);
        n
    };
    let stored: u32 = direct
        .query_one("SELECT lo_from_bytea(0, 'precious')", &[])
        .await
        .unwrap()
        .get(0);
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    // AT: pg_largeobject takes no image, so its writers are refused, however called.
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    for sql in [
        format!("SELECT lo_put({stored}, 0, 'XXXX')"),
        "SELECT lo_from_bytea(0, 'new')".to_owned(),
        format!("SELECT pg_catalog.lo_unlink({stored})"),
    ] {
        let err = a.simple_query(&sql).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {err:?}"
        );
    }
    rolled_back(&a).await;
    let content: Vec<u8> = direct
        .query_one(&format!("SELECT lo_get({stored})"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(content, b"precious");
    let before = large_objects().await;
    // XA: a block whose only work creates a large object is the branch, over SQL and
    // over FunctionCall (lo_creat), and the global rollback takes it back.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &orders.name).await;
    raw.run_each(&[
        "SELECT tandem_mode('xa')",
        "SELECT tandem_begin(30000)",
        "BEGIN",
        "SELECT lo_from_bytea(0, 'via sql')",
        "COMMIT",
        "BEGIN",
    ])
    .await;
    raw.send(&function_call(957, &["131072"])).await;
    expect_msg!(raw, b'V');
    expect_msg!(raw, b'Z');
    raw.query("COMMIT").await;
    raw.recv_until(b'Z').await;
    raw_rolled_back(&mut raw, "").await;
    assert_eq!(
        large_objects().await,
        before,
        "both large objects rolled back"
    );
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_flush_after_a_sync_leaves_the_session_at_its_sync_point() {
    use tandem_tests::raw_pg::{RawPg, frame};
    let orders = prepare("at_trailing_flush").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &orders.name).await;
    raw.query("SELECT tandem_begin(30000)").await;
    raw.recv_until(b'Z').await;
    // psycopg's executemany ends its batch with Sync, then Flush.
    for id in [1, 2] {
        let mut batch = frame(
            b'P',
            format!("\0UPDATE accounts SET balance = {id} WHERE id = {id}\0\0\0").as_bytes(),
        );
        batch.extend_from_slice(&frame(b'B', b"\0\0\0\0\0\0\0\0"));
        batch.extend_from_slice(&frame(b'D', b"P\0"));
        batch.extend_from_slice(&frame(b'E', b"\0\0\0\0\0"));
        batch.extend_from_slice(&frame(b'S', b""));
        batch.extend_from_slice(&frame(b'H', b""));
        raw.send(&batch).await;
        let replies = raw.recv_until(b'Z').await;
        assert!(replies.iter().all(|m| m.tag != b'E'), "{id}: {replies:?}");
    }
    raw.query("SELECT tandem_rollback()").await;
    raw.recv_until(b'Z').await;
    assert_eq!(dump(&direct).await, before);
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A branch's COMMIT that fails before it runs (its Bind carries a parameter COMMIT
/// does not take) leaves PostgreSQL's block open and failed; the branch is already
/// registered and its undo row inserted, so a ROLLBACK TO SAVEPOINT would keep the
/// writes and drop the undo row, and the next COMMIT commit them unseen. tandem ends
/// the block, as a failed COMMIT does: the client is idle, and the global rollback
/// leaves the rows as they were.
#[tokio::test]
async fn a_commit_whose_bind_fails_ends_the_block_it_leaves_open() {
    use tandem_tests::raw_pg::RawPg;
    let db = prepare("commit_bind_fails").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    for sql in [
        "SELECT tandem_begin(30000)",
        "BEGIN",
        "UPDATE accounts SET balance = 100 WHERE id = 1",
        "SAVEPOINT s",
    ] {
        raw.query(sql).await;
        raw.recv_until(b'Z').await;
    }
    raw.send(&super::control::batch_with_a_parameter("c", "COMMIT"))
        .await;
    let replies = raw.recv_until(b'Z').await;
    let error = replies.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(error.sqlstate().as_deref(), Some("08P01"), "{replies:?}");
    assert_eq!(
        replies.last().map(|m| m.body.to_vec()),
        Some(b"I".to_vec()),
        "the block is over: {replies:?}"
    );
    raw.query("ROLLBACK TO SAVEPOINT s").await;
    let replies = raw.recv_until(b'Z').await;
    assert!(replies.iter().any(|m| m.tag == b'E'), "{replies:?}");
    raw.query("COMMIT").await;
    raw.recv_until(b'Z').await;
    raw_rolled_back(&mut raw, "").await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// tandem's own statements share the session's namespace with the client's. A client
/// statement named as one of tandem's (`tandem_write`, `tandem_stmt`) stays the
/// client's: tandem's names cannot be spelled by a client by accident, so its capture
/// of a write never replaces the client's statement, nor runs again in its place.
#[tokio::test]
async fn a_client_statement_named_like_tandems_own_stays_the_clients() {
    use super::control::{bind_body, parse_body, unnamed_batch};
    use tandem_tests::raw_pg::{RawPg, frame, reply_tags};
    let db = prepare("names_clash").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let mut prepare_both = frame(b'P', &parse_body("tandem_write", "SELECT 42"));
    prepare_both.extend(frame(b'P', &parse_body("tandem_stmt", "SELECT 43")));
    prepare_both.extend(frame(b'S', b""));
    raw.send(&prepare_both).await;
    raw.recv_until(b'Z').await;
    raw.query("SELECT tandem_begin(30000)").await;
    raw.recv_until(b'Z').await;
    raw.send(&unnamed_batch(&[
        "UPDATE accounts SET balance = balance + 1 WHERE id = 1",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");
    for (statement, value) in [("tandem_write", "42"), ("tandem_stmt", "43")] {
        let mut run = frame(b'B', &bind_body(statement));
        run.extend(frame(b'E', b"\0\0\0\0\0"));
        run.extend(frame(b'S', b""));
        raw.send(&run).await;
        let replies = raw.recv_until(b'Z').await;
        let row = replies
            .iter()
            .find(|m| m.tag == b'D')
            .unwrap_or_else(|| panic!("{statement}: {replies:?}"));
        assert_eq!(&row.body[6..], value.as_bytes(), "{statement}");
    }
    // The statement tandem binds to fail a refused Bind cannot be the client's either:
    // a write behind a read in a pipeline flushed before its Sync is refused, and stays
    // refused.
    for (name, sql) in [
        (
            "tandem refused this statement",
            "UPDATE accounts SET balance = 777 WHERE id = 4",
        ),
        ("w", "UPDATE accounts SET balance = 1 WHERE id = 1"),
    ] {
        let mut prepare = frame(b'P', &parse_body(name, sql));
        prepare.extend(frame(b'S', b""));
        raw.send(&prepare).await;
        let replies = raw.recv_until(b'Z').await;
        assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");
    }
    raw.query("BEGIN").await;
    raw.recv_until(b'Z').await;
    let mut flushed = frame(b'B', &bind_body("tandem_write"));
    flushed.extend(frame(b'E', b"\0\0\0\0\0"));
    flushed.extend(frame(b'B', &bind_body("w")));
    flushed.extend(frame(b'E', b"\0\0\0\0\0"));
    flushed.extend(frame(b'H', b""));
    let flushed_refused = async |raw: &mut RawPg| {
        raw.send(&flushed).await;
        let replies = raw.recv_until(b'E').await;
        assert_eq!(
            reply_tags(&replies).iter().collect::<String>(),
            "2DCE",
            "{replies:?}"
        );
        let refusal = replies.last().and_then(|m| m.sqlstate());
        assert_eq!(refusal.as_deref(), Some("0A000"), "{replies:?}");
    };
    flushed_refused(&mut raw).await;
    raw.send(&frame(b'S', b"")).await;
    raw.recv_until(b'Z').await;
    raw.query("ROLLBACK").await;
    raw.recv_until(b'Z').await;
    // Nor one a client made with SQL-level PREPARE before its global transaction.
    let mut other = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    other
        .run_each(&[
        "PREPARE U&\"\\0001tandem refused this statement\" AS UPDATE accounts SET balance = 778 WHERE id = 5",
        "SELECT tandem_begin(30000)",
        ])
        .await;
    let mut prepare = frame(
        b'P',
        &parse_body("w", "UPDATE accounts SET balance = 1 WHERE id = 1"),
    );
    prepare.extend(frame(b'S', b""));
    other.send(&prepare).await;
    other.recv_until(b'Z').await;
    other.query("BEGIN").await;
    other.recv_until(b'Z').await;
    let mut prepare = frame(b'P', &parse_body("tandem_write", "SELECT 42"));
    prepare.extend(frame(b'S', b""));
    other.send(&prepare).await;
    other.recv_until(b'Z').await;
    flushed_refused(&mut other).await;
    other.send(&frame(b'S', b"")).await;
    other.recv_until(b'Z').await;
    for sql in ["ROLLBACK", "SELECT tandem_rollback()"] {
        other.query(sql).await;
        other.recv_until(b'Z').await;
    }
    // A client's name cannot start as tandem's do.
    let mut parse = frame(b'P', &parse_body("\u{1}mine", "SELECT 1"));
    parse.extend(frame(b'S', b""));
    raw.send(&parse).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(
        replies[0].sqlstate().as_deref(),
        Some("0A000"),
        "{replies:?}"
    );
    // Nor can it reach tandem's own statements, which stay prepared between uses: run
    // again by the client, the captured write would write uncaptured.
    let describe_own = [&b"S"[..], b"\x01tandem_stmt\0"].concat();
    let close_own = [&b"S"[..], b"\x01tandem_write\0"].concat();
    for (tag, body) in [
        (b'B', bind_body("\u{1}tandem_write")),
        (b'E', b"\x01tandem_portal\0\0\0\0\0".to_vec()),
        (b'D', describe_own),
        (b'C', close_own),
    ] {
        let mut batch = frame(tag, &body);
        if tag == b'B' {
            batch.extend(frame(b'E', b"\0\0\0\0\0"));
        }
        batch.extend(frame(b'S', b""));
        raw.send(&batch).await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(
            replies[0].sqlstate().as_deref(),
            Some("0A000"),
            "{}: {replies:?}",
            tag as char
        );
        assert_eq!(reply_tags(&replies), ['E', 'Z'], "{}", tag as char);
    }

    raw.query("SELECT tandem_rollback()").await;
    let replies = raw.recv_until(b'Z').await;
    assert!(
        replies
            .iter()
            .any(|m| m.tag == b'D' && String::from_utf8_lossy(&m.body).contains("Rollbacked")),
        "{replies:?}"
    );
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A write of a global transaction that does not prepare (a column that is not there,
/// a parameter used two ways) fails with the server's own SQLSTATE when tandem meets
/// it first, describing the statement before running it: not as tandem's own failure.
#[tokio::test]
async fn a_write_that_does_not_prepare_fails_with_the_servers_sqlstate() {
    use super::control::batch_with_a_parameter;
    use tandem_tests::raw_pg::RawPg;
    let db = prepare("unprepared_write").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.query("SELECT tandem_begin(30000)").await;
    raw.recv_until(b'Z').await;
    for (sql, sqlstate) in [
        (
            "UPDATE accounts SET no_such_column = $1 WHERE id = 1",
            "42703",
        ),
        (
            "UPDATE accounts SET note = $1 WHERE $1 IS NOT NULL AND id = $1",
            "42P08",
        ),
    ] {
        raw.send(&batch_with_a_parameter("", sql)).await;
        let replies = raw.recv_until(b'Z').await;
        let error = replies
            .iter()
            .find(|m| m.tag == b'E')
            .unwrap_or_else(|| panic!("{sql}: {replies:?}"));
        assert_eq!(
            error.sqlstate().as_deref(),
            Some(sqlstate),
            "{sql}: {replies:?}"
        );
    }
    // In a failed block any write fails as the block does (25P02).
    for sql in [
        "BEGIN",
        "UPDATE accounts SET note = 'x' WHERE id = 2",
        "SELECT 1/0",
    ] {
        raw.query(sql).await;
        raw.recv_until(b'Z').await;
    }
    raw.send(&batch_with_a_parameter(
        "",
        "UPDATE accounts SET note = $1 WHERE id = 1",
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(
        replies[0].sqlstate().as_deref(),
        Some("25P02"),
        "{replies:?}"
    );
    // A ROLLBACK TO a savepoint tandem never saw, which it refuses itself: its own
    // error, not the failed block's.
    raw.query("ROLLBACK TO nowhere").await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(
        replies[0].sqlstate().as_deref(),
        Some("0A000"),
        "{replies:?}"
    );
    raw.query("ROLLBACK").await;
    raw.recv_until(b'Z').await;
    raw.query("SELECT tandem_rollback()").await;
    raw.recv_until(b'Z').await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A simple Query drops the unnamed statement and portal (PostgreSQL docs, "Simple
/// Query"), so a Bind of the unnamed statement behind one, with no Parse, fails with
/// 26000. tandem runs statements of its own unnamed on the backend while it serves a
/// Query (a captured write is one of them): such a Bind is answered as PostgreSQL
/// answers it, and runs nothing of tandem's, in or out of a global transaction.
#[tokio::test]
async fn a_bind_of_the_unnamed_statement_behind_a_query_fails_as_on_postgresql() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("unnamed_after_query").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let run = async |raw: &mut RawPg, sql: &str| {
        let replies = raw.simple(sql).await;
        assert!(replies.iter().all(|m| m.tag != b'E'), "{sql}: {replies:?}");
    };
    // `request` fails with 26000 and runs or describes nothing.
    let gone = async |raw: &mut RawPg, request: &[u8], label: &str| {
        raw.send(request).await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(
            replies
                .iter()
                .find(|m| m.tag == b'E')
                .and_then(|m| m.sqlstate())
                .as_deref(),
            Some("26000"),
            "{label}: {replies:?}"
        );
        assert!(
            replies.iter().all(|m| !b"CDTt".contains(&m.tag)),
            "{label}: {replies:?}"
        );
    };
    let mut bind_unnamed = frame(b'B', &bind_body(""));
    bind_unnamed.extend(frame(b'E', b"\0\0\0\0\0"));
    bind_unnamed.extend(frame(b'S', b""));
    let global = ["SELECT tandem_begin(30000)"];
    let autocommit_write = ["UPDATE accounts SET balance = balance + 1 WHERE id = 1"];
    let committed_block = [
        "BEGIN",
        "UPDATE accounts SET balance = balance + 1 WHERE id = 2",
        "COMMIT",
    ];
    for (label, queries) in [
        (
            "an autocommit write",
            &[&global[..], &autocommit_write[..]].concat(),
        ),
        (
            "a branch's COMMIT",
            &[&global[..], &committed_block[..]].concat(),
        ),
        ("a plain query", &vec!["SELECT 1"]),
    ] {
        for sql in queries {
            run(&mut raw, sql).await;
        }
        gone(&mut raw, &bind_unnamed, &format!("behind {label}")).await;
        if queries[0] == global[0] {
            run(&mut raw, "SELECT tandem_rollback()").await;
            assert_eq!(dump(&direct).await, before, "rolled back, behind {label}");
        }
    }
    // A Describe of it too; and a Parse of it that the backend skips, behind an error,
    // leaves tandem's in place: a Bind after it still fails.
    run(&mut raw, global[0]).await;
    run(&mut raw, autocommit_write[0]).await;
    let mut describe = frame(b'D', b"S\0");
    describe.extend(frame(b'S', b""));
    gone(&mut raw, &describe, "a Describe").await;
    let mut skipped_parse = frame(b'B', &bind_body(""));
    skipped_parse.extend(frame(b'P', &parse_body("", "SELECT 7")));
    skipped_parse.extend(frame(b'B', &bind_body("")));
    skipped_parse.extend(frame(b'E', b"\0\0\0\0\0"));
    skipped_parse.extend(frame(b'S', b""));
    gone(&mut raw, &skipped_parse, "a Bind ahead of a Parse").await;
    gone(&mut raw, &bind_unnamed, "behind a skipped Parse").await;
    run(&mut raw, "SELECT tandem_rollback()").await;
    assert_eq!(
        dump(&direct).await,
        before,
        "rolled back behind a skipped Parse"
    );
    // The client's own unnamed statement is bound as ever.
    let mut prepare_unnamed = frame(b'P', &parse_body("", "SELECT 2"));
    prepare_unnamed.extend(frame(b'S', b""));
    raw.send(&prepare_unnamed).await;
    raw.recv_until(b'Z').await;
    raw.send(&bind_unnamed).await;
    let replies = raw.recv_until(b'Z').await;
    let row = replies.iter().find(|m| m.tag == b'D');
    assert_eq!(row.map(|m| &m.body[6..]), Some(&b"2"[..]), "{replies:?}");
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// After an error in an extended-protocol batch PostgreSQL discards everything up to
/// the client's Sync, a simple Query among it too: no reply at all comes for it. A
/// Query tandem acts on there (a write in a global transaction, a control function)
/// once waited for a reply that never came, the session hung with its locks; a Query
/// merely relayed there put tandem's count of replies out of step, and the next batch
/// closed the session with 08P01.
#[tokio::test]
async fn a_query_behind_a_failed_extended_message_is_skipped_as_postgresql_skips_it() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("skip_to_sync").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let query = |sql: &str| frame(b'Q', format!("{sql}\0").as_bytes());
    for (mode, begin) in [
        ("outside", &[][..]),
        ("at", &["SELECT tandem_begin()"][..]),
        (
            "xa",
            &["SELECT tandem_mode('xa')", "SELECT tandem_begin()"][..],
        ),
    ] {
        let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
        raw.run_each(begin).await;
        for skipped in [
            "UPDATE accounts SET balance = 7 WHERE id = 1",
            "SELECT tandem_xid()",
            "SELECT 1",
        ] {
            // A Bind of a statement that does not exist fails; the Query is skipped.
            // Inside a global transaction tandem refuses it itself: a statement made
            // by SQL-level PREPARE inside a function would be there unseen.
            let mut batch = frame(b'B', &bind_body("nosuch"));
            batch.extend(query(skipped));
            batch.extend(frame(b'S', b""));
            batch.extend(query("SELECT 'after'"));
            raw.send(&batch).await;
            let replies = raw.recv_until(b'Z').await;
            assert_eq!(tags(&replies), "EZ", "{mode}, {skipped}: {replies:?}");
            let refused_by = if mode == "outside" { "26000" } else { "0A000" };
            assert_eq!(replies[0].sqlstate().as_deref(), Some(refused_by));
            let replies = raw.recv_until(b'Z').await;
            assert_eq!(tags(&replies), "TDCZ", "{mode}, {skipped}: {replies:?}");
            // A Parse that fails, a Query behind it, then the next batch.
            let mut batch = frame(b'P', &parse_body("", "SELEC 1"));
            batch.extend(query(skipped));
            batch.extend(frame(b'S', b""));
            batch.extend(frame(b'P', &parse_body("", "SELECT 2")));
            batch.extend(frame(b'B', &bind_body("")));
            batch.extend(frame(b'E', b"\0\0\0\0\0"));
            batch.extend(frame(b'S', b""));
            raw.send(&batch).await;
            let replies = raw.recv_until(b'Z').await;
            assert_eq!(tags(&replies), "EZ", "{mode}, {skipped}: {replies:?}");
            // PostgreSQL judges a statement tandem cannot parse, in AT mode too.
            let refused = replies[0].sqlstate();
            assert_eq!(refused.as_deref(), Some("42601"), "{mode}, {skipped}");
            let replies = raw.recv_until(b'Z').await;
            assert_eq!(tags(&replies), "12DCZ", "{mode}, {skipped}: {replies:?}");
            // An Execute that fails, and a Describe of no portal: the backend skips
            // the Query behind either. tandem once waited for its reply for good.
            let mut failing_execute = frame(
                b'P',
                &parse_body("", "SELECT 1/(g-1) FROM generate_series(1,1) g"),
            );
            failing_execute.extend(frame(b'B', &bind_body("")));
            failing_execute.extend(frame(b'E', b"\0\0\0\0\0"));
            for (failing, replied, sqlstate) in [
                (failing_execute, "12EZ", "22012"),
                (frame(b'D', b"Pnosuch\0"), "EZ", "34000"),
            ] {
                let mut batch = failing;
                batch.extend(query(skipped));
                batch.extend(frame(b'S', b""));
                batch.extend(query("SELECT 'after'"));
                raw.send(&batch).await;
                let replies = raw.recv_until(b'Z').await;
                assert_eq!(tags(&replies), replied, "{mode}, {skipped}: {replies:?}");
                let error = replies.iter().find(|m| m.tag == b'E');
                assert_eq!(error.and_then(|e| e.sqlstate()).as_deref(), Some(sqlstate));
                let replies = raw.recv_until(b'Z').await;
                assert_eq!(tags(&replies), "TDCZ", "{mode}, {skipped}: {replies:?}");
            }
        }
        if !begin.is_empty() {
            raw.query("SELECT tandem_rollback()").await;
            let replies = raw.recv_until(b'Z').await;
            let row = replies
                .iter()
                .find(|m| m.tag == b'D')
                .unwrap_or_else(|| panic!("{mode}: {replies:?}"));
            assert!(
                String::from_utf8_lossy(&row.body).contains("Rollbacked"),
                "{mode}: {replies:?}"
            );
        }
        assert_eq!(dump(&direct).await, before, "{mode}: nothing ran");
    }
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A ROLLBACK, ROLLBACK AND CHAIN or ROLLBACK TO SAVEPOINT sent as a Query behind a
/// failing extended message is skipped by the backend: the branch must not have
/// followed it. It once did, and the block, revived by a later ROLLBACK TO SAVEPOINT,
/// committed with its write uncaptured (AT) or outside the branch (XA).
#[tokio::test]
async fn a_skipped_rollback_query_leaves_the_branch_as_it_was() {
    use super::control::bind_body;
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("skipped_rollback").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    for (mode, skipped, revive) in [
        ("at", "ROLLBACK AND CHAIN", "ROLLBACK TO SAVEPOINT s2"),
        ("at", "ROLLBACK TO SAVEPOINT s", "ROLLBACK TO SAVEPOINT s2"),
        ("xa", "ROLLBACK", "ROLLBACK TO SAVEPOINT s2"),
    ] {
        let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
        let mode_call = format!("SELECT tandem_mode('{mode}')");
        raw.run_each(&[
            &mode_call,
            "SELECT tandem_begin(30000)",
            "BEGIN",
            "SAVEPOINT s",
        ])
        .await;
        raw.run_each(&[
            "UPDATE accounts SET balance = 5 WHERE id = 2",
            "SAVEPOINT s2",
        ])
        .await;
        let mut batch = frame(b'B', &bind_body("nosuch"));
        batch.extend(frame(b'Q', format!("{skipped}\0").as_bytes()));
        batch.extend(frame(b'S', b""));
        raw.send(&batch).await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), "EZ", "{mode} {skipped}: {replies:?}");
        assert_eq!(
            replies[1].body[..],
            b"E"[..],
            "{mode} {skipped}: the block failed"
        );
        raw.run_each(&[revive, "COMMIT"]).await;
        raw_rolled_back(&mut raw, &format!("{mode} {skipped}")).await;
        tandem_tests::harness::eventually("the branch is undone", || async {
            dump(&direct).await == before
        })
        .await;
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// As [`a_skipped_rollback_query_leaves_the_branch_as_it_was`], with the rollback
/// sent over the extended protocol: bound and executed behind a Bind that fails, so
/// the backend skips it. The branch followed such a statement at its Bind once, and
/// the revived block committed outside it. Also a Parse of COMMIT in a failed block,
/// which runs nothing: the branch was dropped there once.
#[tokio::test]
async fn a_skipped_extended_rollback_leaves_the_branch_as_it_was() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("skipped_ext_rollback").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    for (mode, skipped, revive) in [
        ("at", "ROLLBACK AND CHAIN", "ROLLBACK TO SAVEPOINT s2"),
        ("at", "ROLLBACK TO SAVEPOINT s", "ROLLBACK TO SAVEPOINT s2"),
        ("at", "RELEASE SAVEPOINT s2", "ROLLBACK TO SAVEPOINT s2"),
        ("at", "COMMIT", "ROLLBACK TO SAVEPOINT s2"),
        ("xa", "ROLLBACK", "ROLLBACK TO SAVEPOINT s2"),
        ("xa", "ROLLBACK AND CHAIN", "ROLLBACK TO SAVEPOINT s2"),
        ("xa", "COMMIT", "ROLLBACK TO SAVEPOINT s2"),
    ] {
        let case = format!("{mode} {skipped}");
        let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
        let mode_call = format!("SELECT tandem_mode('{mode}')");
        raw.run_each(&[
            &mode_call,
            "SELECT tandem_begin(30000)",
            "BEGIN",
            "SAVEPOINT s",
        ])
        .await;
        raw.run_each(&[
            "UPDATE accounts SET balance = 5 WHERE id = 2",
            "SAVEPOINT s2",
        ])
        .await;
        // Prepared while the block is sound; bound and run behind a failing Bind.
        let mut prepare = frame(b'P', &parse_body("rb", skipped));
        prepare.extend(frame(b'S', b""));
        raw.send(&prepare).await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), "1Z", "{case}: {replies:?}");
        let mut batch = frame(b'B', &bind_body("nosuch"));
        batch.extend(frame(b'B', &bind_body("rb")));
        batch.extend(frame(b'E', b"\0\0\0\0\0"));
        batch.extend(frame(b'S', b""));
        raw.send(&batch).await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), "EZ", "{case}: {replies:?}");
        assert_eq!(replies[1].body[..], b"E"[..], "{case}: the block failed");
        // In the failed block a Parse of COMMIT runs nothing either.
        let mut prepare = frame(b'P', &parse_body("c", "COMMIT"));
        prepare.extend(frame(b'S', b""));
        raw.send(&prepare).await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), "1Z", "{case}: {replies:?}");
        raw.run_each(&[revive]).await;
        let mut commit = frame(b'B', &bind_body("c"));
        commit.extend(frame(b'E', b"\0\0\0\0\0"));
        commit.extend(frame(b'S', b""));
        raw.send(&commit).await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), "2CZ", "{case}: {replies:?}");
        raw_rolled_back(&mut raw, &case).await;
        tandem_tests::harness::eventually("the branch is undone", || async {
            dump(&direct).await == before
        })
        .await;
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// ROLLBACK TO, RELEASE and ROLLBACK AND CHAIN over the extended protocol are followed
/// once they ran, in the order they ran, also pipelined and several in one batch. The
/// undo stays exact throughout.
#[tokio::test]
async fn an_extended_rollback_to_release_or_chain_is_followed_once_it_ran() {
    use tandem_tests::raw_pg::RawPg;
    let db = prepare("followed_ext_rollback").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let balance = |id: i32| {
        let direct = &direct;
        async move {
            direct
                .query_opt("SELECT balance FROM accounts WHERE id = $1", &[&id])
                .await
                .unwrap()
                .map(|row| row.get::<_, i64>(0))
        }
    };
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.run_each(&[
        "SELECT tandem_begin(30000)",
        "BEGIN",
        "SAVEPOINT s",
        "UPDATE accounts SET balance = 2 WHERE id = 1",
        "SAVEPOINT s2",
        "UPDATE accounts SET balance = 3 WHERE id = 1",
        "INSERT INTO accounts (id, balance) VALUES (40, 1)",
    ])
    .await;
    // Three batches in one write: each waits for the one before it to be followed.
    let mut batches = super::control::unnamed_batch(&["ROLLBACK TO SAVEPOINT s2"]);
    batches.extend(super::control::unnamed_batch(&["RELEASE SAVEPOINT s2"]));
    batches.extend(super::control::unnamed_batch(&[
        "UPDATE accounts SET balance = 4 WHERE id = 2",
    ]));
    raw.send(&batches).await;
    for _ in 0..3 {
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), "12CZ", "{replies:?}");
    }
    // Several in one batch: followed in the order they ran.
    raw.send(&super::control::unnamed_batch(&[
        "ROLLBACK TO SAVEPOINT s",
        "SAVEPOINT t",
        "ROLLBACK TO SAVEPOINT t",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12C12CZ", "{replies:?}");
    raw.run_each(&["UPDATE accounts SET balance = 5 WHERE id = 3", "COMMIT"])
        .await;
    assert_eq!(
        (balance(1).await, balance(2).await, balance(3).await),
        (Some(1000), Some(1000), Some(5))
    );
    assert_eq!(balance(40).await, None);
    raw_rolled_back(&mut raw, "").await;
    assert_eq!(dump(&direct).await, before);

    // ROLLBACK AND CHAIN: the branch starts again in the next transaction.
    raw.run_each(&[
        "SELECT tandem_begin(30000)",
        "BEGIN",
        "UPDATE accounts SET balance = 6 WHERE id = 1",
    ])
    .await;
    raw.send(&super::control::unnamed_batch(&["ROLLBACK AND CHAIN"]))
        .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12CZ", "{replies:?}");
    raw.run_each(&["UPDATE accounts SET balance = 7 WHERE id = 2", "COMMIT"])
        .await;
    assert_eq!((balance(1).await, balance(2).await), (Some(1000), Some(7)));
    raw_rolled_back(&mut raw, "").await;
    assert_eq!(dump(&direct).await, before);
    drop(raw);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A statement the branch follows over the extended protocol is followed when, and only
/// when, it runs: executed in a later batch than its Bind, run before a later message
/// of its batch fails, or skipped with the Query behind it. A COMMIT of a failed block
/// is the rollback PostgreSQL makes of it, in either mode, as one batch or as a prepared
/// COMMIT AND CHAIN. (Each case here once lost the undo, committed outside the branch,
/// hung, or was refused.)
#[tokio::test]
async fn a_bound_statement_is_followed_when_and_only_if_it_runs() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::{Msg, RawPg, frame};
    let db = prepare("bound_follow_ups").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let execute = |portal: &str| frame(b'E', format!("{portal}\0\0\0\0\0").as_bytes());
    let sync = || frame(b'S', b"");
    async fn send(raw: &mut RawPg, messages: Vec<Vec<u8>>) {
        raw.send(&messages.concat()).await;
    }
    async fn expect(raw: &mut RawPg, case: &str, expected: &str) -> Vec<Msg> {
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), expected, "{case}: {replies:?}");
        replies
    }
    async fn begun(port: std::net::SocketAddr, db: &str, mode: &str) -> RawPg {
        let mut raw = RawPg::startup(port, "postgres", db).await;
        let mode_call = format!("SELECT tandem_mode('{mode}')");
        raw.run_each(&[&mode_call, "SELECT tandem_begin(30000)", "BEGIN"])
            .await;
        raw
    }
    let start = |mode: &'static str| begun(tandem.pg, &db.name, mode);

    // Bound in one batch, executed in the next: ROLLBACK TO, and ROLLBACK AND CHAIN.
    for (case, rollback) in [
        ("later ROLLBACK TO", "ROLLBACK TO SAVEPOINT s"),
        ("later ROLLBACK AND CHAIN", "ROLLBACK AND CHAIN"),
    ] {
        let mut raw = start("at").await;
        raw.run_each(&[
            "SAVEPOINT s",
            "UPDATE accounts SET balance = 2 WHERE id = 1",
        ])
        .await;
        send(
            &mut raw,
            vec![
                frame(b'P', &parse_body("rb", rollback)),
                named_bind("p", "rb"),
                sync(),
            ],
        )
        .await;
        expect(&mut raw, case, "12Z").await;
        send(&mut raw, vec![execute("p"), sync()]).await;
        expect(&mut raw, case, "CZ").await;
        raw.run_each(&["UPDATE accounts SET balance = 3 WHERE id = 2", "COMMIT"])
            .await;
        raw_rolled_back(&mut raw, case).await;
        assert_eq!(dump(&direct).await, before, "{case}");
    }

    // A RELEASE that ran before a later message of its batch failed. With the name
    // set twice, PostgreSQL's next ROLLBACK TO goes back to the first: the branch must
    // too, or its rollback writes over what others committed since.
    let case = "RELEASE, then an error";
    let mut raw = start("at").await;
    raw.run_each(&[
        "SAVEPOINT a",
        "UPDATE accounts SET balance = 2 WHERE id = 1",
        "SAVEPOINT a",
        "UPDATE accounts SET balance = 2 WHERE id = 2",
    ])
    .await;
    send(
        &mut raw,
        vec![
            frame(b'P', &parse_body("rl", "RELEASE SAVEPOINT a")),
            sync(),
        ],
    )
    .await;
    expect(&mut raw, case, "1Z").await;
    send(
        &mut raw,
        vec![
            frame(b'B', &bind_body("rl")),
            execute(""),
            frame(b'B', &bind_body("nosuch")),
            sync(),
        ],
    )
    .await;
    expect(&mut raw, case, "2CEZ").await;
    raw.run_each(&["ROLLBACK TO SAVEPOINT a"]).await;
    direct
        .execute("UPDATE accounts SET balance = 555 WHERE id = 1", &[])
        .await
        .unwrap();
    raw.run_each(&["UPDATE accounts SET balance = 3 WHERE id = 3", "COMMIT"])
        .await;
    raw_rolled_back(&mut raw, case).await;
    let others: i64 = direct
        .query_one("SELECT balance FROM accounts WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(others, 555, "{case}: another session's write survives");
    direct
        .execute("UPDATE accounts SET balance = 1000 WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(dump(&direct).await, before, "{case}");

    // Skipped, and the Query behind it with it: the session goes on.
    let case = "skipped behind a Query";
    let mut raw = start("at").await;
    raw.run_each(&[
        "SAVEPOINT s",
        "UPDATE accounts SET balance = 2 WHERE id = 1",
        "SAVEPOINT s2",
    ])
    .await;
    send(
        &mut raw,
        vec![
            frame(b'P', &parse_body("rb", "ROLLBACK TO SAVEPOINT s2")),
            frame(b'P', &parse_body("rl", "RELEASE SAVEPOINT s")),
            sync(),
        ],
    )
    .await;
    expect(&mut raw, case, "11Z").await;
    send(
        &mut raw,
        vec![
            frame(b'B', &bind_body("nosuch")),
            frame(b'B', &bind_body("rb")),
            execute(""),
            frame(b'Q', b"SELECT 1\0"),
            frame(b'B', &bind_body("rl")),
            execute(""),
            sync(),
        ],
    )
    .await;
    expect(&mut raw, case, "EZ").await;
    raw.run_each(&["ROLLBACK"]).await;
    raw_rolled_back(&mut raw, case).await;
    assert_eq!(dump(&direct).await, before, "{case}");

    // COMMIT of a failed block: one batch, and a prepared COMMIT AND CHAIN.
    for mode in ["at", "xa"] {
        let case = format!("{mode}: COMMIT of a failed block");
        let mut raw = start(mode).await;
        raw.run_each(&["UPDATE accounts SET balance = 2 WHERE id = 1"])
            .await;
        raw.query("SELECT 1/0").await;
        expect(&mut raw, &case, "EZ").await;
        send(&mut raw, unnamed_commit()).await;
        let replies = expect(&mut raw, &case, "12CZ").await;
        assert_eq!(replies[3].body[..], b"I"[..], "{case}");
        raw_rolled_back(&mut raw, &case).await;
        assert_eq!(dump(&direct).await, before, "{case}");
    }
    let case = "prepared COMMIT AND CHAIN of a failed block";
    let mut raw = start("at").await;
    raw.run_each(&["UPDATE accounts SET balance = 2 WHERE id = 1"])
        .await;
    send(
        &mut raw,
        vec![frame(b'P', &parse_body("cc", "COMMIT AND CHAIN")), sync()],
    )
    .await;
    expect(&mut raw, case, "1Z").await;
    raw.query("SELECT 1/0").await;
    expect(&mut raw, case, "EZ").await;
    send(
        &mut raw,
        vec![frame(b'B', &bind_body("cc")), execute(""), sync()],
    )
    .await;
    expect(&mut raw, case, "2CZ").await;
    raw.run_each(&["UPDATE accounts SET balance = 3 WHERE id = 2", "COMMIT"])
        .await;
    raw_rolled_back(&mut raw, case).await;
    assert_eq!(dump(&direct).await, before, "{case}");

    // A savepoint Query behind a bound one with no Sync between: runs, as on
    // PostgreSQL, and both are followed in the order they ran.
    let case = "savepoint Query behind a bound SAVEPOINT";
    let mut raw = start("at").await;
    raw.run_each(&[
        "SAVEPOINT a",
        "UPDATE accounts SET balance = 2 WHERE id = 1",
    ])
    .await;
    send(
        &mut raw,
        vec![
            frame(b'P', &parse_body("", "SAVEPOINT b")),
            frame(b'B', &bind_body("")),
            execute(""),
            frame(b'Q', b"RELEASE b\0"),
            sync(),
        ],
    )
    .await;
    expect(&mut raw, case, "12CCZ").await;
    expect(&mut raw, case, "Z").await;
    raw.run_each(&[
        "UPDATE accounts SET balance = 3 WHERE id = 2",
        "ROLLBACK TO SAVEPOINT a",
        "UPDATE accounts SET balance = 4 WHERE id = 3",
        "COMMIT",
    ])
    .await;
    raw_rolled_back(&mut raw, case).await;
    assert_eq!(dump(&direct).await, before, "{case}");

    // XA: autocommit work pipelined behind the ROLLBACK of the branch's block is a
    // branch of its own, not refused.
    let case = "xa: work pipelined behind ROLLBACK";
    let mut raw = start("xa").await;
    raw.run_each(&["UPDATE accounts SET balance = 2 WHERE id = 1"])
        .await;
    let mut batches = super::control::unnamed_batch(&["ROLLBACK"]);
    batches.extend(super::control::unnamed_batch(&[
        "UPDATE accounts SET balance = 7 WHERE id = 3",
    ]));
    raw.send(&batches).await;
    expect(&mut raw, case, "12CZ").await;
    expect(&mut raw, case, "12CZ").await;
    let prepared: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(prepared, 1, "{case}: prepared as a branch");
    raw_rolled_back(&mut raw, case).await;
    assert_eq!(dump(&direct).await, before, "{case}");
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Parse, Bind, Execute and Sync of an unnamed COMMIT.
fn unnamed_commit() -> Vec<Vec<u8>> {
    vec![super::control::unnamed_batch(&["COMMIT"])]
}

/// A RowDescription too wide for one read (asyncpg's `prepare()` of a wide SELECT:
/// Parse, Describe, Flush) still answers its Describe in the ledger: a Query that fails
/// behind it is the Query's own error. The session was once closed there.
#[tokio::test]
async fn a_describe_answered_by_a_wide_row_description_is_counted() {
    use super::control::parse_body;
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("wide_describe").await;
    let tandem = Tandem::start().await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let columns: Vec<String> = (0..400)
        .map(|i| format!("{i} AS c{i:04}_{}", "x".repeat(50)))
        .collect();
    let wide = format!("SELECT {}", columns.join(", "));
    let mut prepare = frame(b'P', &parse_body("w", &wide));
    prepare.extend(frame(b'D', b"Sw\0"));
    prepare.extend(frame(b'H', b""));
    raw.send(&prepare).await;
    let replies = raw.recv_until(b'T').await;
    assert_eq!(tags(&replies), "1tT", "{replies:?}");
    assert!(replies[2].body.len() > 16 * 1024, "wider than a read");
    raw.query("SELECT 1/0").await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "EZ", "{replies:?}");
    assert_eq!(replies[0].sqlstate().as_deref(), Some("22012"));
    let replies = raw.simple("SELECT 42").await;
    assert_eq!(tags(&replies), "TDCZ", "{replies:?}");
    drop(raw);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}

/// A COMMIT bound while the branch had no work, or a write bound before a hint bound
/// the session, and executed in a later batch: refused (0A000), not run as bound,
/// which committed outside the branch, or wrote uncaptured.
#[tokio::test]
async fn a_portal_bound_before_the_branch_had_work_is_refused_at_its_execute() {
    use super::control::parse_body;
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("late_execute").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut execute = frame(b'E', b"p\0\0\0\0\0");
    execute.extend(frame(b'S', b""));
    for mode in ["at", "xa"] {
        let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
        let mode_call = format!("SELECT tandem_mode('{mode}')");
        raw.run_each(&[&mode_call, "SELECT tandem_begin(30000)", "BEGIN"])
            .await;
        let mut bind = frame(b'P', &parse_body("cm", "COMMIT"));
        bind.extend(named_bind("p", "cm"));
        bind.extend(frame(b'S', b""));
        raw.send(&bind).await;
        assert_eq!(tags(&raw.recv_until(b'Z').await), "12Z", "{mode}");
        // An Execute of it skipped behind a failed one, and the block revived: it has
        // still never run.
        raw.run_each(&["SAVEPOINT s"]).await;
        let mut skipped = frame(
            b'P',
            &parse_body("", "SELECT 1/(g-1) FROM generate_series(1,1) g"),
        );
        skipped.extend(frame(b'B', &super::control::bind_body("")));
        skipped.extend(frame(b'E', b"\0\0\0\0\0"));
        skipped.extend(execute.clone());
        raw.send(&skipped).await;
        assert_eq!(tags(&raw.recv_until(b'Z').await), "12EZ", "{mode}");
        raw.run_each(&[
            "ROLLBACK TO SAVEPOINT s",
            "UPDATE accounts SET balance = 2 WHERE id = 1",
        ])
        .await;
        raw.send(&execute).await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), "EZ", "{mode}: {replies:?}");
        assert_eq!(replies[0].sqlstate().as_deref(), Some("0A000"), "{mode}");
        raw.run_each(&["ROLLBACK"]).await;
        raw.run_each(&["SELECT tandem_rollback()"]).await;
        assert_eq!(dump(&direct).await, before, "{mode}");
    }

    // A write bound before a hint bound the session to a global transaction.
    let mut owner = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let replies = owner.simple("SELECT tandem_begin(30000)").await;
    let xid = replies
        .iter()
        .find(|m| m.tag == b'D')
        .map(|m| String::from_utf8_lossy(&m.body[6..]).into_owned())
        .expect("an xid");
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.run_each(&["BEGIN"]).await;
    let mut bind = frame(
        b'P',
        &parse_body("w", "UPDATE accounts SET balance = 5 WHERE id = 1"),
    );
    bind.extend(named_bind("p", "w"));
    bind.extend(frame(b'S', b""));
    raw.send(&bind).await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "12Z");
    raw.run_each(&[&format!(
        "/*+ XID('{xid}') */ UPDATE accounts SET balance = 2 WHERE id = 2"
    )])
    .await;
    raw.send(&execute).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "EZ", "{replies:?}");
    assert_eq!(replies[0].sqlstate().as_deref(), Some("0A000"));
    raw.run_each(&["ROLLBACK"]).await;
    owner.run_each(&["SELECT tandem_rollback()"]).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Bind of `statement` into `portal`, no parameters, text results.
fn named_bind(portal: &str, statement: &str) -> Vec<u8> {
    let mut body = format!("{portal}\0{statement}\0").into_bytes();
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    tandem_tests::raw_pg::frame(b'B', &body)
}

/// `statement` bound into the unnamed portal, run whole, and synced.
fn bind_and_run(statement: &str) -> Vec<u8> {
    use tandem_tests::raw_pg::frame;
    let mut batch = named_bind("", statement);
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'S', b""));
    batch
}

/// Parses each (name, text) of `statements` in one batch; each must prepare.
async fn parsed(raw: &mut tandem_tests::raw_pg::RawPg, statements: &[(&str, &str)]) {
    use super::control::parse_body;
    use tandem_tests::raw_pg::frame;
    let mut batch = Vec::new();
    for (name, sql) in statements {
        batch.extend(frame(b'P', &parse_body(name, sql)));
    }
    batch.extend(frame(b'S', b""));
    raw.send(&batch).await;
    let replies = raw.recv_until(b'Z').await;
    assert!(
        replies.iter().all(|m| m.tag == b'1' || m.tag == b'Z'),
        "{replies:?}"
    );
}

/// tandem before `lockserver`, a write outside global transactions to a held row
/// waiting 300 ms for it.
async fn start_waiting_briefly(lockserver: &TestLockserver) -> Tandem {
    Tandem::start_with(|c| {
        c.lockserver.endpoint = format!("http://{}", lockserver.grpc);
        c.lockserver.lock_wait_ms = 300;
    })
    .await
}

/// Rolls `raw`'s global transaction back (`case` names it in a failure); every branch
/// must be undone.
async fn raw_rolled_back(raw: &mut tandem_tests::raw_pg::RawPg, case: &str) {
    let replies = raw.simple("SELECT tandem_rollback()").await;
    assert!(
        replies
            .iter()
            .any(|m| m.tag == b'D' && String::from_utf8_lossy(&m.body).contains("Rollbacked")),
        "{case}: {replies:?}"
    );
}

/// A SQL-level DEALLOCATE, a DO block or a CALL may replace a named statement where
/// no message tells which; tandem asks the backend once at the next Bind of each
/// statement it recorded, so that those still the ones it read run (captured) as ever.
#[tokio::test]
async fn statements_the_backend_still_holds_run_after_a_sql_level_deallocate() {
    use super::control::parse_body;
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("bind_confirmed").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let sync = frame(b'S', b"");
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let mut batch = frame(
        b'P',
        &parse_body("w", "UPDATE accounts SET balance = 0 WHERE id = 2"),
    );
    batch.extend(frame(
        b'P',
        &parse_body("r", "SELECT balance FROM accounts WHERE id = 2"),
    ));
    batch.extend(&sync);
    raw.send(&batch).await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "11Z");
    // How Rails' statement cache evicts, and what a migration's DO block looks like.
    raw.run_each(&[
        "PREPARE other AS SELECT 1",
        "DEALLOCATE other",
        "DO $$ BEGIN PERFORM 1; END $$",
        "SELECT tandem_begin()",
    ])
    .await;
    raw.send(&bind_and_run("w")).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "2CZ", "{replies:?}");
    raw.send(&bind_and_run("r")).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "2DCZ", "{replies:?}");
    assert_eq!(&replies[1].body[6..], b"0", "the UPDATE ran: {replies:?}");
    raw_rolled_back(&mut raw, "confirmed statements").await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Outside a global transaction, a named statement recorded before a DO block is
/// still read for what tandem acts on there: its XID hint binds the session, and its
/// write to a row a global transaction holds waits for it. Inside a failed block, a
/// prepared ROLLBACK ends the block as it would directly. And a bound session's batch
/// that binds such a statement after a BEGIN (pgJDBC's) runs, once asked about at the
/// batch's start.
#[tokio::test]
async fn statements_recorded_before_a_do_block_keep_their_meaning() {
    use super::control::parse_body;
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("bind_after_do").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start_waiting_briefly(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let sync = frame(b'S', b"");
    let prepared_then_do = async |raw: &mut RawPg, name: &str, sql: &str| {
        parsed(raw, &[(name, sql)]).await;
        raw.run_each(&["DO $$ BEGIN PERFORM 1; END $$"]).await;
    };

    // The XID hint binds the session: the write is captured, and rolled back.
    let holder = tandem.connect(&db.name).await;
    let xid = one(&holder, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .expect("an xid");
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let hinted = format!("/*+ XID('{xid}') */ UPDATE accounts SET balance = 5 WHERE id = 1");
    prepared_then_do(&mut raw, "hinted", &hinted).await;
    raw.send(&bind_and_run("hinted")).await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "2CZ");
    rolled_back(&holder).await;
    assert_eq!(dump(&direct).await, before, "the hinted write was captured");

    // A write to a held row waits for its global transaction, and gives up (55P03).
    one(&holder, "SELECT tandem_begin(30000)").await.unwrap();
    holder
        .batch_execute("UPDATE accounts SET balance = 6 WHERE id = 2")
        .await
        .unwrap();
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    prepared_then_do(
        &mut raw,
        "w",
        "UPDATE accounts SET balance = 7 WHERE id = 2",
    )
    .await;
    raw.send(&bind_and_run("w")).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(
        replies[0].sqlstate().as_deref(),
        Some("55P03"),
        "{replies:?}"
    );
    rolled_back(&holder).await;
    assert_eq!(dump(&direct).await, before, "the held row kept its value");

    // A prepared ROLLBACK in a failed block, in a global transaction.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    prepared_then_do(&mut raw, "rb", "ROLLBACK").await;
    raw.run_each(&["SELECT tandem_begin()", "BEGIN"]).await;
    let replies = raw.simple("SELECT 1 / 0").await;
    assert_eq!(tags(&replies), "EZ");
    raw.send(&bind_and_run("rb")).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "2CZ", "{replies:?}");
    assert_eq!(&replies[2].body[..], b"I", "the block ended");
    raw_rolled_back(&mut raw, "prepared rollback").await;

    // After a failed statement in a global transaction, pgJDBC's next block: BEGIN and
    // a named read in one batch, then a named write.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let mut batch = frame(
        b'P',
        &parse_body("r", "SELECT balance FROM accounts WHERE id = 3"),
    );
    batch.extend(frame(
        b'P',
        &parse_body("w", "UPDATE accounts SET balance = 8 WHERE id = 3"),
    ));
    batch.extend(&sync);
    raw.send(&batch).await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "11Z");
    raw.run_each(&["SELECT tandem_begin()"]).await;
    assert_eq!(tags(&raw.simple("SELECT 1 / 0").await), "EZ");
    let mut batch = frame(b'P', &parse_body("", "BEGIN"));
    batch.extend(named_bind("", ""));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(bind_and_run("r"));
    raw.send(&batch).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C2DCZ", "{replies:?}");
    raw.send(&bind_and_run("w")).await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "2CZ");
    raw.run_each(&["COMMIT"]).await;
    assert_ne!(dump(&direct).await, before, "the write ran");
    raw_rolled_back(&mut raw, "after a failed statement").await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// An ordinary error may have replaced named statements (a DO that fails keeps what it
/// prepared), so tandem asks after one; ordinary work goes on as directly: a
/// `SET TRANSACTION` first in a block (the question is asked before the BEGIN, not
/// after it), a session of another client_encoding, and names PostgreSQL cuts to 63
/// bytes, two of which are one statement there.
#[tokio::test]
async fn named_statements_keep_working_after_an_ordinary_error() {
    use super::control::parse_body;
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("bind_after_error").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start_waiting_briefly(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let sync = frame(b'S', b"");

    // SET TRANSACTION, prepared, first in a block after an error.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    parsed(
        &mut raw,
        &[
            ("iso", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            ("show", "SHOW transaction_isolation"),
        ],
    )
    .await;
    raw.run_each(&["SELECT tandem_begin()"]).await;
    assert_eq!(tags(&raw.simple("SELECT 1 / 0").await), "EZ");
    raw.run_each(&["BEGIN"]).await;
    let replies = {
        raw.send(&bind_and_run("iso")).await;
        raw.recv_until(b'Z').await
    };
    assert_eq!(tags(&replies), "2CZ", "{replies:?}");
    raw.send(&bind_and_run("show")).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "2DCZ", "{replies:?}");
    assert_eq!(&replies[1].body[6..], b"serializable");
    raw.run_each(&["COMMIT"]).await;
    raw_rolled_back(&mut raw, "set transaction").await;

    // A LATIN1 session: asked, its statements converted to it.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.run_each(&["SET client_encoding = LATIN1"]).await;
    parsed(
        &mut raw,
        &[("r", "SELECT balance FROM accounts WHERE id = 1")],
    )
    .await;
    raw.run_each(&["SELECT tandem_begin()"]).await;
    assert_eq!(tags(&raw.simple("SELECT 1 / 0").await), "EZ");
    raw.send(&bind_and_run("r")).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "2DCZ", "{replies:?}");
    raw_rolled_back(&mut raw, "latin1").await;

    // Two names alike in their first 63 bytes name one statement: closing the second
    // closes the first, and its Bind runs the write parsed since, captured.
    let long = |last: char| format!("{}{last}", "s".repeat(66));
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    parsed(
        &mut raw,
        &[(&long('a'), "SELECT balance FROM accounts WHERE id = 1")],
    )
    .await;
    raw.run_each(&["SELECT tandem_begin()"]).await;
    let mut batch = frame(b'C', format!("S{}\0", long('b')).as_bytes());
    batch.extend(frame(
        b'P',
        &parse_body(&long('b'), "UPDATE accounts SET balance = 3 WHERE id = 1"),
    ));
    batch.extend(&sync);
    raw.send(&batch).await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "31Z");
    raw.send(&bind_and_run(&long('a'))).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "2CZ", "{replies:?}");
    assert_eq!(&replies[1].body[..], b"UPDATE 1\0");
    assert_ne!(dump(&direct).await, before, "the write ran");
    raw_rolled_back(&mut raw, "long names").await;
    assert_eq!(dump(&direct).await, before, "and was captured");

    // After an error, outside a global transaction, a long-named write to a held row
    // is still checked.
    let holder = tandem.connect(&db.name).await;
    one(&holder, "SELECT tandem_begin(30000)").await.unwrap();
    holder
        .batch_execute("UPDATE accounts SET balance = 6 WHERE id = 2")
        .await
        .unwrap();
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    parsed(
        &mut raw,
        &[(&long('w'), "UPDATE accounts SET balance = 7 WHERE id = 2")],
    )
    .await;
    assert_eq!(tags(&raw.simple("SELECT 1 / 0").await), "EZ");
    raw.send(&bind_and_run(&long('w'))).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(
        replies[0].sqlstate().as_deref(),
        Some("55P03"),
        "{replies:?}"
    );
    rolled_back(&holder).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// PostgreSQL refuses a Parse of a statement name in use (42P05) and keeps the
/// statement: a Bind of that name sent behind the failed Parse's Sync runs the older
/// statement. tandem, reading ahead, must not take the Bind for the new text: an older
/// UPDATE so bound ran uncaptured (the global rollback answered Rollbacked and kept
/// it), and an older UPDATE in a block let the block pass for one that had run only
/// BEGIN, so that `tandem_begin()` took it into the branch.
#[tokio::test]
async fn a_bind_behind_a_failed_parse_of_its_name_is_read_as_the_statement_it_runs() {
    use super::control::parse_body;
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("bind_behind_failed_parse").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let sync = frame(b'S', b"");
    let execute = frame(b'E', b"\0\0\0\0\0");
    let prepared = async |raw: &mut RawPg| {
        let mut batch = frame(
            b'P',
            &parse_body("s", "UPDATE accounts SET balance = 0 WHERE id = 1"),
        );
        batch.extend(&sync);
        raw.send(&batch).await;
        assert_eq!(tags(&raw.recv_until(b'Z').await), "1Z");
    };

    // Bound: the older UPDATE is captured.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.run_each(&["SELECT tandem_begin()"]).await;
    prepared(&mut raw).await;
    let mut batch = frame(b'P', &parse_body("s", "SELECT 1"));
    batch.extend(&sync);
    batch.extend(named_bind("", "s"));
    batch.extend(&execute);
    batch.extend(&sync);
    raw.send(&batch).await;
    let mut replies = raw.recv_until(b'Z').await;
    replies.extend(raw.recv_until(b'Z').await);
    assert_eq!(tags(&replies), "EZ2CZ", "{replies:?}");
    assert_eq!(replies[0].sqlstate().as_deref(), Some("42P05"));
    raw_rolled_back(&mut raw, "bound").await;
    assert_eq!(dump(&direct).await, before, "the older UPDATE was undone");

    // Unbound, in a block: the older UPDATE is work, and the block may not be bound.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    prepared(&mut raw).await;
    let mut batch = frame(b'P', &parse_body("s", "SAVEPOINT a"));
    batch.extend(&sync);
    batch.extend(frame(b'Q', b"BEGIN\0"));
    batch.extend(named_bind("", "s"));
    batch.extend(&execute);
    batch.extend(&sync);
    batch.extend(frame(b'Q', b"SELECT tandem_begin()\0"));
    raw.send(&batch).await;
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.extend(raw.recv_until(b'Z').await);
    }
    assert_eq!(tags(&replies), "EZCZ2CZEZ", "{replies:?}");
    assert_eq!(
        replies[7].sqlstate().as_deref(),
        Some("25001"),
        "{replies:?}"
    );
    raw.run_each(&["ROLLBACK"]).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Statements a Bind may run that tandem cannot read from the protocol: one made by
/// SQL-level PREPARE (or replaced through DEALLOCATE and PREPARE), and the unnamed
/// statement left in place when its new Parse is skipped behind an error. Inside a
/// global transaction such a Bind is refused or waited for, never run uncaptured;
/// outside one, a deallocated statement is the backend's to refuse.
#[tokio::test]
async fn a_bind_of_a_statement_tandem_cannot_read_never_runs_uncaptured() {
    use super::control::parse_body;
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("bind_opaque").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let sync = frame(b'S', b"");
    let update = "UPDATE accounts SET balance = 0 WHERE id = 1";
    // The Bind is refused, and the global rollback leaves nothing of the branch.
    let refused_then_rolled_back = async |raw: &mut RawPg, statement: &str, case: &str| {
        raw.send(&bind_and_run(statement)).await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), "EZ", "{case}: {replies:?}");
        assert_eq!(replies[0].sqlstate().as_deref(), Some("0A000"), "{case}");
        raw_rolled_back(raw, case).await;
        assert_eq!(dump(&direct).await, before, "{case}");
    };

    // Prepared with SQL before the binding, then bound over the protocol.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.run_each(&[
        &format!("PREPARE by_sql AS {update}"),
        "SELECT tandem_begin()",
    ])
    .await;
    refused_then_rolled_back(&mut raw, "by_sql", "prepared with SQL").await;

    // Prepared with SQL inside a function, where no CommandComplete says so.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.run_each(&[
        &format!("DO $$ BEGIN EXECUTE 'PREPARE in_do AS {update}'; END $$"),
        "SELECT tandem_begin()",
    ])
    .await;
    refused_then_rolled_back(&mut raw, "in_do", "prepared in a function").await;

    // Prepared over the protocol as a read, replaced with SQL by a write.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    parsed(&mut raw, &[("s", "SELECT 1")]).await;
    raw.run_each(&[
        "DEALLOCATE s",
        &format!("PREPARE s AS {update}"),
        "SELECT tandem_begin()",
    ])
    .await;
    refused_then_rolled_back(&mut raw, "s", "replaced with SQL").await;

    // Prepared over the protocol as a read, replaced by a write inside a DO block,
    // whose tag names no statement.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    parsed(&mut raw, &[("s", "SELECT 1")]).await;
    raw.run_each(&[
        &format!("DO $$ BEGIN EXECUTE 'DEALLOCATE s'; EXECUTE 'PREPARE s AS {update}'; END $$"),
        "SELECT tandem_begin()",
    ])
    .await;
    refused_then_rolled_back(&mut raw, "s", "replaced in a DO block").await;

    // The same by a DO block that fails after it (PostgreSQL keeps what it prepared),
    // and by a procedure that commits it before it fails.
    direct
        .batch_execute(&format!(
            "CREATE PROCEDURE replace_s() LANGUAGE plpgsql AS $$ BEGIN \
             EXECUTE 'DEALLOCATE s'; EXECUTE 'PREPARE s AS {update}'; COMMIT; \
             PERFORM 1 / 0; END $$"
        ))
        .await
        .unwrap();
    for (replace, case) in [
        (
            format!(
                "DO $$ BEGIN EXECUTE 'DEALLOCATE s'; EXECUTE 'PREPARE s AS {update}'; \
                 RAISE EXCEPTION 'after the PREPARE'; END $$"
            ),
            "replaced in a DO block that failed",
        ),
        (
            "CALL replace_s()".to_string(),
            "replaced in a procedure that failed",
        ),
    ] {
        let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
        parsed(&mut raw, &[("s", "SELECT 1")]).await;
        let replies = raw.simple(&replace).await;
        assert_eq!(tags(&replies), "EZ", "{case}: {replies:?}");
        raw.run_each(&["SELECT tandem_begin()"]).await;
        refused_then_rolled_back(&mut raw, "s", case).await;
    }

    // The unnamed statement's new Parse skipped behind an error: the old UPDATE runs,
    // captured.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.run_each(&["SELECT tandem_begin()"]).await;
    let mut batch = frame(b'P', &parse_body("", update));
    batch.extend(&sync);
    raw.send(&batch).await;
    raw.recv_until(b'Z').await;
    let mut batch = named_bind("", "no_such_statement");
    batch.extend(frame(b'P', &parse_body("", "SELECT 1")));
    batch.extend(&sync);
    batch.extend(bind_and_run(""));
    raw.send(&batch).await;
    let mut replies = raw.recv_until(b'Z').await;
    replies.extend(raw.recv_until(b'Z').await);
    assert_eq!(tags(&replies), "EZ2CZ", "{replies:?}");
    raw_rolled_back(&mut raw, "unnamed kept").await;
    assert_eq!(dump(&direct).await, before);

    // A portal bound before the binding, from a statement closed and prepared anew as
    // a read since: PostgreSQL keeps the portal, and its late Execute would run the
    // UPDATE. (On a table of its
    // own: one that held global locks a moment ago has its batches checked.)
    direct
        .batch_execute("CREATE TABLE q (id int PRIMARY KEY, v int); INSERT INTO q VALUES (1, 0)")
        .await
        .unwrap();
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let mut batch = frame(b'P', &parse_body("s", "UPDATE q SET v = 1 WHERE id = 1"));
    batch.extend(&sync);
    raw.send(&batch).await;
    raw.recv_until(b'Z').await;
    raw.run_each(&["BEGIN"]).await;
    let mut batch = named_bind("p", "s");
    batch.extend(&sync);
    raw.send(&batch).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "2Z", "{replies:?}");
    raw.run_each(&["SELECT tandem_begin()"]).await;
    let mut batch = frame(b'C', b"Ss\0");
    batch.extend(frame(b'P', &parse_body("s", "SELECT 1")));
    batch.extend(&sync);
    raw.send(&batch).await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "31Z");
    let mut batch = frame(b'E', b"p\0\0\0\0\0");
    batch.extend(&sync);
    raw.send(&batch).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "EZ", "{replies:?}");
    assert_eq!(replies[0].sqlstate().as_deref(), Some("0A000"));
    raw.run_each(&["ROLLBACK"]).await;
    raw_rolled_back(&mut raw, "portal of a closed statement").await;
    let v: i32 = direct
        .query_one("SELECT v FROM q WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 0, "the portal's UPDATE never ran");

    // Outside a global transaction, on a table that holds global locks (so that writes
    // are checked), a deallocated statement is not run from tandem's record: the
    // backend answers 26000.
    let holder = tandem.connect(&db.name).await;
    one(&holder, "SELECT tandem_begin(30000)").await.unwrap();
    holder
        .batch_execute("UPDATE accounts SET balance = 5 WHERE id = 5")
        .await
        .unwrap();
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let mut batch = frame(b'P', &parse_body("gone", update));
    batch.extend(&sync);
    raw.send(&batch).await;
    raw.recv_until(b'Z').await;
    raw.run_each(&["DEALLOCATE gone"]).await;
    raw.send(&bind_and_run("gone")).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(
        replies[0].sqlstate().as_deref(),
        Some("26000"),
        "{replies:?}"
    );
    rolled_back(&holder).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A database with a table `c` to COPY into, a lockserver, a proxy of it, and a raw
/// session of that proxy.
async fn copy_session(
    label: &str,
) -> (TestDb, TestLockserver, Tandem, tandem_tests::raw_pg::RawPg) {
    let db = prepare(label).await;
    db.direct()
        .await
        .batch_execute("CREATE TABLE c (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let raw = tandem_tests::raw_pg::RawPg::startup(tandem.pg, "postgres", &db.name).await;
    (db, lockserver, tandem, raw)
}

/// A stray CopyDone ahead of the Execute that starts a COPY is ignored by the backend:
/// the COPY is ended by the CopyDone that follows its data, and the session goes on (a
/// control call, which waits for every reply, is answered).
#[tokio::test]
async fn a_copy_done_ahead_of_the_execute_that_starts_a_copy_ends_nothing() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::frame;
    let (db, lockserver, tandem, mut raw) = copy_session("stray_copy_done").await;
    raw.run_each(&["BEGIN"]).await;
    let bind_portal = |portal: &str, statement: &str| {
        let mut body = format!("{portal}\0").into_bytes();
        body.extend_from_slice(&bind_body(statement)[1..]);
        frame(b'B', &body)
    };
    let execute = |portal: &str| {
        let mut body = format!("{portal}\0").into_bytes();
        body.extend_from_slice(&0i32.to_be_bytes());
        frame(b'E', &body)
    };
    let mut batch = Vec::new();
    batch.extend(frame(b'P', &parse_body("", "SELECT 1")));
    batch.extend(bind_portal("p1", ""));
    batch.extend(frame(b'P', &parse_body("s2", "COPY c FROM STDIN")));
    batch.extend(bind_portal("p2", "s2"));
    batch.extend(frame(b'S', b""));
    batch.extend(execute("p1"));
    batch.extend(frame(b'c', b""));
    batch.extend(execute("p2"));
    batch.extend(frame(b'S', b""));
    batch.extend(frame(b'd', b"31\ta\n"));
    batch.extend(frame(b'c', b""));
    batch.extend(frame(b'S', b""));
    raw.send(&batch).await;
    let first = raw.recv_until(b'Z').await;
    assert!(first.iter().all(|m| m.tag != b'E'), "{first:?}");
    let second = raw.recv_until(b'Z').await;
    assert!(second.iter().all(|m| m.tag != b'E'), "{second:?}");
    assert!(
        second
            .iter()
            .any(|m| m.tag == b'C' && m.strings()[0] == "COPY 1"),
        "{second:?}"
    );
    raw.run_each(&["COMMIT"]).await;
    raw.run_each(&["SELECT tandem_begin()"]).await;
    raw.run_each(&["SELECT tandem_rollback()"]).await;
    let copied: i64 = db
        .direct()
        .await
        .query_one("SELECT count(*) FROM c WHERE id = 31", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(copied, 1);
    drop(raw);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// In a global transaction, a COPY behind a stray CopyDone is refused as any COPY
/// there is (0A000), not answered with an error about tandem's stand-in for it.
#[tokio::test]
async fn a_refusal_behind_a_stray_copy_done_is_tandems_own() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::frame;
    let (_db, lockserver, tandem, mut raw) = copy_session("stray_copy_refusal").await;
    raw.run_each(&["SELECT tandem_begin()"]).await;
    let mut batch = Vec::new();
    batch.extend(frame(b'P', &parse_body("", "SELECT 1")));
    batch.extend(frame(b'B', &bind_body("")));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'c', b""));
    batch.extend(frame(b'P', &parse_body("", "COPY c FROM STDIN")));
    batch.extend(frame(b'B', &bind_body("")));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'S', b""));
    raw.send(&batch).await;
    let replies = raw.recv_until(b'Z').await;
    let error = replies.iter().find(|m| m.tag == b'E').expect("a refusal");
    assert_eq!(error.sqlstate().as_deref(), Some("0A000"), "{replies:?}");
    raw.run_each(&["SELECT tandem_rollback()"]).await;
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A statement tandem cannot parse (`BETWEEN SYMMETRIC`) that the client prepared
/// before binding its session to a global transaction ran uncaptured when executed
/// inside it: the rollback left its write in place. It is refused when bound.
#[tokio::test]
async fn a_statement_tandem_cannot_parse_prepared_before_the_binding_is_refused_when_bound() {
    let db = prepare("at_unparsed_prepared").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let c = tandem.connect(&db.name).await;
    let update = c
        .prepare("UPDATE accounts SET balance = $1 WHERE id = 1 AND balance BETWEEN SYMMETRIC 100000 AND 0")
        .await
        .unwrap();
    assert_eq!(c.execute(&update, &[&50i64]).await.unwrap(), 1);
    let before = dump(&direct).await;
    for in_block in [false, true] {
        one(&c, "SELECT tandem_begin(30000)").await.unwrap();
        if in_block {
            c.batch_execute("BEGIN").await.unwrap();
        }
        c.execute("UPDATE accounts SET balance = 7 WHERE id = 2", &[])
            .await
            .unwrap();
        let err = c
            .execute(&update, &[&77i64])
            .await
            .expect_err("run uncaptured inside a global transaction");
        assert_eq!(
            err.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{err:?}"
        );
        if in_block {
            c.batch_execute("ROLLBACK").await.unwrap();
        }
        rolled_back(&c).await;
        assert_eq!(dump(&direct).await, before, "in a block: {in_block}");
    }
    lockserver.stop().await;
}

/// A statement tandem cannot parse, inside a global transaction, is judged by
/// PostgreSQL first: its errors are PostgreSQL's own (a syntax error's SQLSTATE,
/// message and position, an unknown table), over either protocol; only what
/// PostgreSQL accepts is refused (0A000). A block fails as the statement would have
/// failed it, and the global rollback restores what the block wrote before.
#[tokio::test]
async fn statements_tandem_cannot_parse_fail_as_postgresql_fails_them() {
    let db = prepare("at_unparsed").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let c = tandem.connect(&db.name).await;
    let fields = |e: &tokio_postgres::Error| {
        let db = e.as_db_error().expect("a server error");
        (
            db.code().clone(),
            db.message().to_owned(),
            format!("{:?}", db.position()),
        )
    };
    one(&c, "SELECT tandem_begin(30000)").await.unwrap();
    for sql in [
        "UPDATE accounts SET balance = WHERE id = 1",
        "UPDAT accounts SET balance = 1 WHERE id = 1",
        "UPDATE nosuch SET balance = 1 WHERE balance BETWEEN SYMMETRIC 1 AND 2",
        "UPDATE accounts SET balance = 1 WHERE id = 1; UPDATE accounts SET balance = WHERE id = 2",
    ] {
        let expected = direct.simple_query(sql).await.expect_err(sql);
        let got = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(fields(&got), fields(&expected), "simple: {sql}");
        if !sql.contains(';') {
            let expected = direct.prepare(sql).await.expect_err(sql);
            let got = c.prepare(sql).await.expect_err(sql);
            assert_eq!(fields(&got), fields(&expected), "extended: {sql}");
        }
    }
    // Accepted by PostgreSQL, not read by tandem: refused, alone or among others.
    for sql in [
        "UPDATE accounts SET balance = 1 WHERE balance BETWEEN SYMMETRIC 1 AND 2000",
        "UPDATE accounts SET balance = 2 WHERE id = 2; UPDATE accounts SET balance = 1 WHERE balance BETWEEN SYMMETRIC 1 AND 2000",
    ] {
        let err = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(
            err.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {err:?}"
        );
    }
    let statement = c
        .prepare("UPDATE accounts SET balance = $1 WHERE balance BETWEEN SYMMETRIC 1 AND 2000")
        .await
        .expect("PostgreSQL prepares it");
    let err = c.execute(&statement, &[&1i64]).await.expect_err("bound");
    assert_eq!(
        err.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{err:?}"
    );
    // In a block: the syntax error fails it, as it would directly.
    c.batch_execute("BEGIN; UPDATE accounts SET balance = 5 WHERE id = 5")
        .await
        .unwrap();
    let err = c
        .simple_query("UPDATE accounts SET balance = WHERE id = 1")
        .await
        .expect_err("syntax error");
    assert_eq!(err.code(), Some(&SqlState::SYNTAX_ERROR), "{err:?}");
    let err = c.simple_query("SELECT 1").await.expect_err("block failed");
    assert_eq!(
        err.code(),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "{err:?}"
    );
    // PostgreSQL parses before it looks at the block: a syntax error still.
    let err = c
        .simple_query("UPDATE accounts SET balance = WHERE id = 1")
        .await
        .expect_err("in the failed block");
    assert_eq!(err.code(), Some(&SqlState::SYNTAX_ERROR), "{err:?}");
    let err = c
        .simple_query("UPDATE accounts SET balance = 1 WHERE balance BETWEEN SYMMETRIC 1 AND 2000")
        .await
        .expect_err("in the failed block");
    assert_eq!(
        err.code(),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "{err:?}"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    // An autocommit write after all that is captured, and rolled back with the rest.
    c.batch_execute("UPDATE accounts SET balance = 3 WHERE id = 3")
        .await
        .unwrap();
    assert_eq!(balance(&direct, 3).await, 3);
    rolled_back(&c).await;
    assert_eq!(dump(&direct).await, before);
    lockserver.stop().await;
}

/// The client's own PREPARE TRANSACTION, prepared before the session was bound and
/// bound inside a global transaction's block: refused (0A000) in either mode, as when
/// prepared inside it. Run, it left the block's write prepared outside the branch.
#[tokio::test]
async fn the_clients_own_two_phase_commit_prepared_before_the_binding_is_refused_when_bound() {
    use super::control::parse_body;
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("late_two_phase").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let gid = format!("{}_gid", db.name);
    for mode in ["at", "xa"] {
        let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
        let mut parse = frame(
            b'P',
            &parse_body("tp", &format!("PREPARE TRANSACTION '{gid}'")),
        );
        parse.extend(frame(b'S', b""));
        raw.send(&parse).await;
        assert_eq!(tags(&raw.recv_until(b'Z').await), "1Z", "{mode}");
        let mode_call = format!("SELECT tandem_mode('{mode}')");
        raw.run_each(&[
            &mode_call,
            "SELECT tandem_begin(30000)",
            "BEGIN",
            "UPDATE accounts SET balance = 9 WHERE id = 1",
        ])
        .await;
        raw.send(&bind_and_run("tp")).await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), "EZ", "{mode}: {replies:?}");
        assert_eq!(replies[0].sqlstate().as_deref(), Some("0A000"), "{mode}");
        raw.run_each(&["ROLLBACK"]).await;
        raw.run_each(&["SELECT tandem_rollback()"]).await;
        let prepared = direct
            .query("SELECT gid FROM pg_prepared_xacts WHERE gid = $1", &[&gid])
            .await
            .unwrap();
        if !prepared.is_empty() {
            direct
                .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
                .await
                .unwrap();
        }
        assert!(prepared.is_empty(), "{mode}: prepared outside the branch");
        assert_eq!(dump(&direct).await, before, "{mode}");
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A portal bound in a block before the session was bound, and first executed once it
/// is: never judged, it ran as bound (a write uncaptured, a function's writes unseen,
/// in XA mode outside the branch) and survived the rollback. Refused (0A000), whatever
/// its statement, in either mode.
#[tokio::test]
async fn a_portal_bound_before_the_binding_is_refused_when_first_executed_inside() {
    use super::control::parse_body;
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = prepare("late_portal").await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "CREATE FUNCTION w(i int) RETURNS int LANGUAGE sql VOLATILE
               AS 'UPDATE accounts SET balance = balance + 1000 WHERE id = i RETURNING i'",
        )
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let before = dump(&direct).await;
    let mut execute = frame(b'E', b"p\0\0\0\0\0");
    execute.extend(frame(b'S', b""));
    for mode in ["at", "xa"] {
        for statement in [
            "SELECT w(1)",
            "UPDATE accounts SET balance = 7 WHERE id = 2",
            "UPDATE accounts SET balance = 7 WHERE id = 2 AND balance BETWEEN SYMMETRIC 0 AND 5000",
            "WITH x AS (UPDATE accounts SET balance = 7 WHERE id = 3 RETURNING id) SELECT id FROM x",
        ] {
            let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
            let mode_call = format!("SELECT tandem_mode('{mode}')");
            raw.run_each(&[&mode_call, "BEGIN"]).await;
            let mut bind = frame(b'P', &parse_body("s", statement));
            bind.extend(named_bind("p", "s"));
            bind.extend(frame(b'S', b""));
            raw.send(&bind).await;
            assert_eq!(
                tags(&raw.recv_until(b'Z').await),
                "12Z",
                "{mode}: {statement}"
            );
            raw.run_each(&[
                "SELECT tandem_begin(30000)",
                "UPDATE accounts SET balance = 5 WHERE id = 5",
            ])
            .await;
            raw.send(&execute).await;
            let replies = raw.recv_until(b'Z').await;
            assert_eq!(tags(&replies), "EZ", "{mode}: {statement}: {replies:?}");
            assert_eq!(
                replies[0].sqlstate().as_deref(),
                Some("0A000"),
                "{mode}: {statement}"
            );
            raw.run_each(&["ROLLBACK", "SELECT tandem_rollback()"])
                .await;
            assert_eq!(dump(&direct).await, before, "{mode}: {statement}");
        }
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// FETCH and MOVE without FROM or IN (which tandem's parser requires) are PostgreSQL
/// too: inside a global transaction they fetch as they would directly.
#[tokio::test]
async fn fetch_without_from_reads_inside_a_global_transaction() {
    let db = prepare("at_fetch").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let c = tandem.connect(&db.name).await;
    one(&c, "SELECT tandem_begin(30000)").await.unwrap();
    c.batch_execute("BEGIN; DECLARE c CURSOR FOR SELECT id FROM accounts ORDER BY id")
        .await
        .unwrap();
    let ids = |messages: Vec<SimpleQueryMessage>| -> Vec<String> {
        messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect()
    };
    assert_eq!(ids(c.simple_query("FETCH 2 c").await.unwrap()), ["1", "2"]);
    c.simple_query("MOVE 1 c").await.unwrap();
    assert_eq!(
        ids(c.simple_query("FETCH ALL c").await.unwrap()),
        ["4", "5"]
    );
    c.batch_execute("COMMIT").await.unwrap();
    rolled_back(&c).await;
    lockserver.stop().await;
}
