//! The control functions over the simple query protocol, against a real lockserver.

use tandem_tests::harness::{Tandem, TestDb};
use tandem_tests::lockserver::{Kind, TestLockserver};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Runs a control statement; returns (column name, value).
async fn control(
    client: &Client,
    sql: &str,
) -> Result<(String, Option<String>), tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .expect("one row");
    Ok((
        row.columns()[0].name().to_owned(),
        row.get(0).map(str::to_owned),
    ))
}

async fn value(client: &Client, sql: &str) -> Option<String> {
    control(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .1
}

fn code(e: &tokio_postgres::Error) -> &SqlState {
    e.code().unwrap_or_else(|| panic!("no SQLSTATE in {e}"))
}

#[tokio::test]
async fn begin_join_commit_rollback_status_through_the_proxy() {
    let db = TestDb::create("control").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    let b = tandem.connect(&db.name).await;

    assert_eq!(
        control(&a, "SELECT tandem_xid()").await.unwrap(),
        ("xid".into(), None)
    );
    let (column, xid) = control(&a, "SELECT tandem_begin(30000)").await.unwrap();
    assert_eq!(column, "xid");
    let xid = xid.expect("an xid");
    // The lockserver knows it.
    let (status, body) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "Begin");
    assert_eq!(
        value(&a, "SELECT tandem_xid()").await.as_deref(),
        Some(xid.as_str())
    );
    assert_eq!(
        value(&a, "select tandem_status();").await.as_deref(),
        Some("Begin")
    );

    // Another service joins by xid; a second begin on a bound session is refused.
    assert_eq!(
        value(&b, &format!("SELECT tandem_join('{xid}')"))
            .await
            .as_deref(),
        Some(xid.as_str())
    );
    let err = control(&b, "SELECT tandem_begin()").await.unwrap_err();
    assert_eq!(code(&err), &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE);
    assert_eq!(
        value(&b, "SELECT tandem_leave()").await.as_deref(),
        Some(xid.as_str())
    );
    assert_eq!(value(&b, "SELECT tandem_xid()").await, None);

    // A local transaction with no captured work does not keep the decision waiting
    // (JDBC with autocommit off runs every call inside one); one with work does (the
    // AT and XA tests).
    a.batch_execute("BEGIN").await.unwrap();
    let (column, status) = control(&a, "SELECT tandem_commit()").await.unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        (column.as_str(), status.as_deref()),
        ("status", Some("Committed"))
    );
    assert_eq!(
        value(&a, "SELECT tandem_xid()").await,
        None,
        "commit unbinds"
    );
    assert_eq!(
        value(&a, &format!("SELECT tandem_status('{xid}')"))
            .await
            .as_deref(),
        Some("Committed")
    );
    // A finished transaction cannot be joined.
    let err = control(&b, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE);

    // Rollback.
    let xid2 = value(&a, "SELECT tandem_begin()").await.unwrap();
    assert_ne!(xid2, xid);
    assert_eq!(
        value(&a, "SELECT tandem_rollback()").await.as_deref(),
        Some("Rollbacked")
    );
    let (_, body) = lockserver.get(&format!("/v1/transactions/{xid2}")).await;
    assert_eq!(body["status"], "Rollbacked");

    // Bad calls and calls without a binding: a clear error, and the session goes on.
    let err = control(&a, "SELECT tandem_commit()").await.unwrap_err();
    assert_eq!(code(&err), &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE);
    let err = control(&a, "SELECT tandem_begin('soon')")
        .await
        .unwrap_err();
    assert_eq!(code(&err), &SqlState::INVALID_PARAMETER_VALUE);
    // An alias would reach the database as an unknown function; tandem says why.
    let err = control(&a, "SELECT tandem_begin() AS x").await.unwrap_err();
    assert_eq!(code(&err), &SqlState::INVALID_PARAMETER_VALUE);
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message.as_deref().is_some_and(|m| m.contains("named xid")),
        "{message:?}"
    );
    assert_eq!(
        value(&a, "SELECT tandem_xid()").await,
        None,
        "nothing begun"
    );
    let err = control(&a, "SELECT tandem_join('no-such-xid')")
        .await
        .unwrap_err();
    assert!(
        [
            SqlState::INVALID_PARAMETER_VALUE,
            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE
        ]
        .contains(code(&err)),
        "{err}"
    );
    let one: i32 = a.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop((a, b));
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A session that joined and never left stays bound after another service ends the
/// transaction; its next tandem_begin() or tandem_join() replaces the binding rather
/// than failing until one of its writes is refused.
#[tokio::test]
async fn a_session_whose_transaction_ended_elsewhere_may_begin_or_join_another() {
    let db = TestDb::create("control_ended").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    let b = tandem.connect(&db.name).await;
    for (end, next) in [("commit", "begin"), ("rollback", "join")] {
        let xid = value(&a, "SELECT tandem_begin(30000)").await.unwrap();
        value(&b, &format!("SELECT tandem_join('{xid}')")).await;
        // Live: b may not leave it by binding to another.
        let err = control(&b, "SELECT tandem_begin()").await.unwrap_err();
        assert_eq!(code(&err), &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE);
        value(&a, &format!("SELECT tandem_{end}()")).await;
        assert_eq!(
            value(&b, "SELECT tandem_xid()").await.as_deref(),
            Some(xid.as_str()),
            "{end}: b stays bound"
        );
        let other = value(&a, "SELECT tandem_begin(30000)").await.unwrap();
        let sql = if next == "begin" {
            "SELECT tandem_begin()".to_owned()
        } else {
            format!("SELECT tandem_join('{other}')")
        };
        let bound = value(&b, &sql).await.unwrap();
        assert_ne!(bound, xid, "{end}, then {next}");
        assert_eq!(value(&b, "SELECT tandem_xid()").await, Some(bound.clone()));
        value(&b, "SELECT tandem_rollback()").await;
        if bound != other {
            value(&a, "SELECT tandem_rollback()").await;
        } else {
            value(&a, "SELECT tandem_leave()").await;
        }
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn pool_resets_unbind_and_timeouts_roll_back() {
    let db = TestDb::create("reset").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let client = tandem.connect(&db.name).await;
    for reset in [
        "DISCARD ALL",
        "reset all;",
        "/* pool */ DISCARD ALL",
        // asyncpg's pool, as it hands a connection back.
        "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;",
    ] {
        value(&client, "SELECT tandem_begin()").await.unwrap();
        client.batch_execute(reset).await.unwrap();
        assert_eq!(
            value(&client, "SELECT tandem_xid()").await,
            None,
            "{reset} unbinds"
        );
    }
    // Over the extended protocol too.
    for reset in ["DISCARD ALL", "RESET ALL"] {
        value(&client, "SELECT tandem_begin()").await.unwrap();
        client.execute(reset, &[]).await.unwrap();
        assert_eq!(
            value(&client, "SELECT tandem_xid()").await,
            None,
            "{reset} (extended) unbinds"
        );
    }
    let xid = value(&client, "SELECT tandem_begin(100)").await.unwrap();
    tandem_tests::harness::eventually("the lockserver rolls back on timeout", || async {
        value(&client, &format!("SELECT tandem_status('{xid}')"))
            .await
            .as_deref()
            == Some("TimeoutRollbacked")
    })
    .await;
    let err = control(&client, "SELECT tandem_commit()")
        .await
        .unwrap_err();
    assert_eq!(
        code(&err),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        "{err:?}"
    );
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("TimeoutRollbacked"), "{message}");
    assert_eq!(
        value(&client, "SELECT tandem_xid()").await,
        None,
        "the ended transaction unbinds"
    );
    drop(client);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A pool reset unbinds once it has run and stayed: one the server refused, one an
/// earlier error kept from running, and one a rollback undid leave the session bound,
/// so the writes after it are still captured (unbound, they would commit for good
/// outside the global transaction the client still believes it is in).
#[tokio::test]
async fn a_pool_reset_that_never_ran_or_was_undone_keeps_the_binding() {
    let db = TestDb::create("reset_kept").await;
    db.migrate().await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
             INSERT INTO accounts VALUES (1, 100), (2, 200);",
        )
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let client = tandem.connect(&db.name).await;
    let xid = value(&client, "SELECT tandem_begin()").await;
    assert!(xid.is_some());
    for (batch, fails) in [
        // DISCARD ALL cannot run in a transaction block, nor in a multi-statement query.
        ("SELECT 1; DISCARD ALL", true),
        ("SELECT 1/0; RESET ALL", true),
        // Run in the query's implicit transaction, which the error rolls back.
        ("RESET ALL; SELECT 1/0", true),
    ] {
        let result = client.batch_execute(batch).await;
        assert_eq!(result.is_err(), fails, "{batch}: {result:?}");
        assert_eq!(
            value(&client, "SELECT tandem_xid()").await,
            xid,
            "{batch} leaves the session bound"
        );
    }
    // A reset in a block that rolls back, or back to a savepoint before it.
    for statements in [
        &["BEGIN", "RESET ALL", "ROLLBACK"][..],
        &[
            "BEGIN",
            "SAVEPOINT s",
            "RESET ALL",
            "ROLLBACK TO s",
            "COMMIT",
        ],
    ] {
        for sql in statements {
            client.batch_execute(sql).await.unwrap();
        }
        assert_eq!(
            value(&client, "SELECT tandem_xid()").await,
            xid,
            "{statements:?} leave the session bound"
        );
    }
    // A script (writes among the statements) that fails: tandem rolls its block back,
    // and the reset in it with it.
    for script in [
        "RESET ALL; UPDATE accounts SET balance = 1 WHERE id = 1; SELECT 1/0",
        "UPDATE accounts SET balance = 1 WHERE id = 1; RESET ALL; SELECT 1/0",
    ] {
        client.batch_execute(script).await.unwrap_err();
        assert_eq!(
            value(&client, "SELECT tandem_xid()").await,
            xid,
            "{script} leaves the session bound"
        );
    }
    // A reset in a query tandem answers itself (a bad control call ahead of it)
    // never reaches the server; the next query's RESET of one setting is not it.
    client
        .batch_execute("SELECT tandem_xid(x); RESET ALL")
        .await
        .unwrap_err();
    client.batch_execute("RESET search_path").await.unwrap();
    assert_eq!(value(&client, "SELECT tandem_xid()").await, xid);
    // Another batch's RESET, pipelined ahead of a reset that fails, is not it.
    let (reset_one, failed_reset) = tokio::join!(
        client.execute("RESET search_path", &[]),
        client.batch_execute("SELECT 1/0; RESET ALL")
    );
    reset_one.unwrap();
    failed_reset.unwrap_err();
    assert_eq!(value(&client, "SELECT tandem_xid()").await, xid);
    // The writes are still the transaction's.
    client
        .batch_execute("UPDATE accounts SET balance = 0")
        .await
        .unwrap();
    assert_eq!(
        value(&client, "SELECT tandem_rollback()").await.as_deref(),
        Some("Rollbacked")
    );
    assert_eq!(
        super::at_mode::rows_of(&direct, "accounts").await,
        ["(1,100)", "(2,200)"]
    );
    // One that ran and whose block committed unbinds.
    value(&client, "SELECT tandem_begin()").await.unwrap();
    client
        .batch_execute("BEGIN; RESET ALL; COMMIT")
        .await
        .unwrap();
    assert_eq!(value(&client, "SELECT tandem_xid()").await, None);
    // So does one pipelined behind another batch.
    value(&client, "SELECT tandem_begin()").await.unwrap();
    let (one, reset) = tokio::join!(
        client.execute("SELECT 1", &[]),
        client.execute("RESET ALL", &[])
    );
    one.unwrap();
    reset.unwrap();
    assert_eq!(value(&client, "SELECT tandem_xid()").await, None);
    // And one that ran, pipelined ahead of one that did not.
    value(&client, "SELECT tandem_begin()").await.unwrap();
    let (reset, failed) = tokio::join!(
        client.batch_execute("RESET ALL"),
        client.batch_execute("SELECT 1/0; RESET ALL")
    );
    reset.unwrap();
    failed.unwrap_err();
    assert_eq!(value(&client, "SELECT tandem_xid()").await, None);
    // After a COPY over the extended protocol, whose first Sync the backend ignores.
    let sink = client
        .copy_in::<_, bytes::Bytes>("COPY accounts FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    futures::SinkExt::send(&mut sink, bytes::Bytes::from_static(b"3\t300\n"))
        .await
        .unwrap();
    sink.finish().await.unwrap();
    value(&client, "SELECT tandem_begin()").await.unwrap();
    client.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(value(&client, "SELECT tandem_xid()").await, None);
    drop(client);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_lockserver_that_is_down_is_an_error_not_a_broken_session() {
    let db = TestDb::create("lsdown").await;
    // Nothing listens on port 1.
    let tandem = Tandem::start_with(|c| {
        c.lockserver.endpoint = "http://127.0.0.1:1".to_owned();
        c.lockserver.call_timeout_ms = 2_000;
    })
    .await;
    let client = tandem.connect(&db.name).await;
    let err = control(&client, "SELECT tandem_begin()").await.unwrap_err();
    assert_eq!(code(&err), &SqlState::SYSTEM_ERROR, "{err}");
    assert_eq!(value(&client, "SELECT tandem_xid()").await, None);
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(client);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}

/// A control function called inside another statement reaches the database, which has
/// no such function: the client's 42883 says tandem answers it only as a statement of
/// its own, and the session goes on. Functions merely named like them are left alone.
#[tokio::test]
async fn a_control_function_inside_another_statement_is_explained() {
    let db = TestDb::create("control_misplaced").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let client = tandem.connect(&db.name).await;
    for sql in [
        "SELECT tandem_xid(), 1",
        "SELECT 1; SELECT tandem_rollback()",
        "SELECT * FROM tandem_join('x')",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(code(&err), &SqlState::UNDEFINED_FUNCTION, "{sql}: {err}");
        let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
        assert!(
            message.contains("tandem answers tandem_") && message.contains("of its own"),
            "{sql}: {message}"
        );
    }
    let err = client
        .batch_execute("SELECT tandem_nothing(1), 1")
        .await
        .expect_err("no such function");
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert_eq!(message, "function tandem_nothing(integer) does not exist");
    assert_eq!(value(&client, "SELECT tandem_xid()").await, None);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A `tandem_commit()` whose answer never comes may have committed: the client hears
/// 08007 (transaction_resolution_unknown), not an error it would take for a failure
/// and retry its business operation on. It stays bound, and calling it again answers
/// the decision.
#[tokio::test]
async fn a_decision_whose_answer_is_lost_is_reported_unknown_and_asked_again() {
    let db = TestDb::create("decision_lost").await;
    db.migrate().await;
    db.one_row_table().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let relay = tandem_tests::relay::LossyRelay::start(lockserver.grpc).await;
    let tandem = Tandem::start_with(|c| relay.proxy_settings(c)).await;
    let client = tandem.connect(&db.name).await;
    let xid = value(&client, "SELECT tandem_begin(60000)")
        .await
        .expect("an xid");
    client
        .batch_execute("UPDATE t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    relay.lose_answers();
    let err = control(&client, "SELECT tandem_commit()")
        .await
        .unwrap_err();
    assert_eq!(
        code(&err),
        &SqlState::TRANSACTION_RESOLUTION_UNKNOWN,
        "{err}"
    );
    relay.heal();
    assert_eq!(value(&client, "SELECT tandem_xid()").await, Some(xid));
    // The proxy's lockserver connection broke with the lost answers: the first call
    // after it may find it closed.
    tandem_tests::harness::eventually("the decision is answered again", || async {
        matches!(
            control(&client, "SELECT tandem_commit()").await,
            Ok((_, Some(status))) if status == "Committed"
        )
    })
    .await;
    assert_eq!(db.v_of_row_1().await, 1);
    drop(client);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A session still bound to a transaction decided elsewhere asks the lockserver before
/// a new binding replaces it; while the lockserver cannot answer, the session hears
/// that (58000), not that it is "already bound", and stays usable.
#[tokio::test]
async fn a_rebinding_while_the_lockserver_is_down_says_so() {
    let db = TestDb::create("rebind_lsdown").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let endpoint = format!("http://{}", lockserver.grpc);
    let tandem = Tandem::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.lockserver.call_timeout_ms = 2_000;
    })
    .await;
    let a = tandem.connect(&db.name).await;
    let b = tandem.connect(&db.name).await;
    let xid = value(&a, "SELECT tandem_begin()").await.expect("an xid");
    value(&b, &format!("SELECT tandem_join('{xid}')")).await;
    assert_eq!(
        value(&a, "SELECT tandem_rollback()").await.as_deref(),
        Some("Rollbacked")
    );
    lockserver.stop().await;
    let err = control(&b, "SELECT tandem_begin()").await.unwrap_err();
    assert_eq!(code(&err), &SqlState::SYSTEM_ERROR, "{err}");
    assert_eq!(
        value(&b, "SELECT tandem_xid()").await.as_deref(),
        Some(&xid[..])
    );
    let one: i32 = b.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    tandem.shutdown().await;
}

#[tokio::test]
async fn a_control_statement_pipelined_behind_a_query_waits_for_it() {
    let db = TestDb::create("pipelined").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let mut raw = tandem_tests::raw_pg::RawPg::startup(tandem.pg, "postgres", &db.name).await;
    // Both queries in one write: tandem_begin must not run before the sleep is over.
    let mut both = tandem_tests::raw_pg::frame(b'Q', b"SELECT pg_sleep(0.3)\0");
    both.extend(tandem_tests::raw_pg::frame(
        b'Q',
        b"SELECT tandem_begin()\0",
    ));
    let started = std::time::Instant::now();
    raw.send(&both).await;
    raw.recv_until(b'Z').await;
    let msgs = raw.recv_until(b'Z').await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("the xid row");
    let xid = String::from_utf8_lossy(&row.body[6..]).into_owned();
    let (_, body) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
    let begun_at = body["begun_at"].as_u64().expect("begun_at");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let since_send_ms = started.elapsed().as_millis() as u64;
    assert!(
        begun_at + since_send_ms >= now_ms + 250,
        "tandem_begin ran before the query ahead of it finished"
    );
    drop(raw);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn control_functions_over_the_extended_protocol() {
    let db = TestDb::create("control_ext").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let client = tandem.connect(&db.name).await;
    // tokio-postgres prepares (Parse, Describe, Sync), then binds and executes.
    let row = client
        .query_one("SELECT tandem_begin(30000)", &[])
        .await
        .unwrap();
    assert_eq!(row.columns()[0].name(), "xid");
    let xid: String = row.get(0);
    let (status, body) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
    assert_eq!(status, 200, "{body}");
    // A prepared control statement, executed twice.
    let current = client.prepare("SELECT tandem_xid()").await.unwrap();
    for _ in 0..2 {
        let got: Option<String> = client.query_one(&current, &[]).await.unwrap().get(0);
        assert_eq!(got.as_deref(), Some(xid.as_str()));
    }
    let status: String = client
        .query_one("SELECT tandem_status()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "Begin");
    let status: String = client
        .query_one("SELECT tandem_commit()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "Committed");
    let got: Option<String> = client.query_one(&current, &[]).await.unwrap().get(0);
    assert_eq!(got, None, "commit unbinds");
    let err = client
        .query_one("SELECT tandem_commit()", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&err), &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE);
    // The session goes on normally.
    let n: i32 = client
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 42);
    drop(client);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn control_statements_in_a_failed_transaction_block_do_nothing() {
    let db = TestDb::create("control_failed").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let client = tandem.connect(&db.name).await;
    client.batch_execute("BEGIN").await.unwrap();
    assert!(client.batch_execute("SELECT 1/0").await.is_err());
    let err = control(&client, "SELECT tandem_begin()").await.unwrap_err();
    assert_eq!(code(&err), &SqlState::IN_FAILED_SQL_TRANSACTION);
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        value(&client, "SELECT tandem_xid()").await,
        None,
        "nothing was begun"
    );
    let (_, listing) = lockserver.get("/v1/transactions").await;
    assert_eq!(
        listing["transactions"].as_array().map(Vec::len),
        Some(0),
        "{listing}"
    );
    drop(client);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Parse body: name, SQL, no parameter types.
pub(crate) fn parse_body(name: &str, sql: &str) -> Vec<u8> {
    let mut b = format!("{name}\0{sql}\0").into_bytes();
    b.extend_from_slice(&0i16.to_be_bytes());
    b
}

/// Bind body of `statement` into the unnamed portal with one text parameter, text
/// results.
pub(crate) fn bind_body_with(statement: &str, value: &[u8]) -> Vec<u8> {
    let mut b = format!("\0{statement}\0").into_bytes();
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&(value.len() as i32).to_be_bytes());
    b.extend_from_slice(value);
    b.extend_from_slice(&0i16.to_be_bytes());
    b
}

/// Parse of `sql` as `statement`, then a Bind of it with one text parameter, Execute
/// and Sync: a Bind the backend refuses when `sql` takes no parameter (08P01).
pub(crate) fn batch_with_a_parameter(statement: &str, sql: &str) -> Vec<u8> {
    use tandem_tests::raw_pg::frame;
    let mut batch = frame(b'P', &parse_body(statement, sql));
    batch.extend(frame(b'B', &bind_body_with(statement, b"1")));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'S', b""));
    batch
}

/// Bind body of `statement` into the unnamed portal, no parameters, text results.
pub(crate) fn bind_body(statement: &str) -> Vec<u8> {
    let mut b = format!("\0{statement}\0").into_bytes();
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    b
}

/// Parse, Bind and Execute of each of `statements` (unnamed, no parameters, every
/// row), then one Sync: a pipelined batch, as pgJDBC sends a transaction's statements.
pub(crate) fn unnamed_batch(statements: &[&str]) -> Vec<u8> {
    use tandem_tests::raw_pg::frame;
    let mut batch = Vec::new();
    for sql in statements {
        batch.extend(frame(b'P', &parse_body("", sql)));
        batch.extend(frame(b'B', &bind_body("")));
        batch.extend(frame(b'E', b"\0\0\0\0\0"));
    }
    batch.extend(frame(b'S', b""));
    batch
}

#[tokio::test]
async fn a_control_statement_bound_mid_pipeline_is_refused_not_run_against_its_stand_in() {
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = TestDb::create("control_pipe").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    // Prepare the control statement on its own: it exists with the answer's shape.
    let mut batch = frame(b'P', &parse_body("ctl", "SELECT tandem_xid()"));
    batch.extend(frame(b'S', b""));
    raw.send(&batch).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(replies[0].tag, b'1', "{replies:?}");
    // Then bind it behind another statement in one pipelined batch.
    let mut batch = frame(b'P', &parse_body("", "SELECT 1"));
    batch.extend(frame(b'B', &bind_body("")));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'B', &bind_body("ctl")));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'S', b""));
    raw.send(&batch).await;
    let replies = raw.recv_until(b'Z').await;
    let error = replies
        .iter()
        .find(|m| m.tag == b'E')
        .expect("the control Bind is refused");
    assert_eq!(
        error.sqlstate().as_deref(),
        Some("0A000"),
        "{:?}",
        error.field(b'M')
    );
    // The first statement ran; no NULL answer from the stand-in was ever sent.
    let rows: Vec<_> = replies.iter().filter(|m| m.tag == b'D').collect();
    assert_eq!(rows.len(), 1);
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A control call whose Parse the backend refuses (its statement name is in use) fails
/// as that Parse would, before the call runs; the session goes on.
#[tokio::test]
async fn a_control_call_whose_parse_is_refused_fails_and_the_session_goes_on() {
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = TestDb::create("control_parse").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let mut batch = frame(b'P', &parse_body("ctl", "SELECT tandem_xid()"));
    batch.extend(frame(b'S', b""));
    raw.send(&batch).await;
    assert_eq!(raw.recv_until(b'Z').await[0].tag, b'1');
    // The same name again, with a call that would bind the session.
    let mut batch = frame(b'P', &parse_body("ctl", "SELECT tandem_begin()"));
    batch.extend(frame(b'B', &bind_body("ctl")));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'S', b""));
    raw.send(&batch).await;
    let replies = raw.recv_until(b'Z').await;
    let tags: String = replies.iter().map(|m| m.tag as char).collect();
    assert_eq!(tags, "EZ", "{replies:?}");
    assert_eq!(replies[0].sqlstate().as_deref(), Some("42P05"));
    raw.query("SELECT tandem_xid()").await;
    let replies = raw.recv_until(b'Z').await;
    let row = replies.iter().find(|m| m.tag == b'D').expect("a row");
    assert_eq!(
        &row.body[..],
        b"\0\x01\xff\xff\xff\xff",
        "the call did not run: not bound"
    );
    // A Bind with a parameter the statement does not take is a protocol violation, as
    // the backend answers it (not a bad argument); the session goes on.
    raw.send(&batch_with_a_parameter("", "SELECT tandem_begin()"))
        .await;
    let replies = raw.recv_until(b'Z').await;
    let error = replies.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(error.sqlstate().as_deref(), Some("08P01"), "{replies:?}");
    let replies = raw.simple("SELECT tandem_xid()").await;
    let row = replies.iter().find(|m| m.tag == b'D').expect("a row");
    assert_eq!(&row.body[..], b"\0\x01\xff\xff\xff\xff", "not bound");
    drop(raw);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Drivers pass the xid as a parameter (psycopg's `execute("SELECT tandem_join(%s)",
/// [xid])`, a JDBC `setString`, node-postgres' values): `$1`, bound in text or binary
/// format, declared or left to the server.
#[tokio::test]
async fn control_calls_take_their_argument_as_a_parameter() {
    use tokio_postgres::types::Type;
    let (orders, stock) = (
        super::at_mode::prepare("control_param_a").await,
        super::at_mode::prepare("control_param_b").await,
    );
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let (da, db) = (orders.direct().await, stock.direct().await);
    let (before_a, before_b) = (
        super::at_mode::dump(&da).await,
        super::at_mode::dump(&db).await,
    );
    let a = tandem.connect(&orders.name).await;
    let b = tandem.connect(&stock.name).await;

    // tokio-postgres prepares first: the backend describes the parameter as the call
    // reads it, and binds it in binary format.
    let begin = a.prepare("SELECT tandem_begin($1)").await.unwrap();
    assert_eq!(begin.params(), &[Type::INT8]);
    let join = b.prepare("SELECT tandem_join($1)").await.unwrap();
    assert_eq!(join.params(), &[Type::TEXT]);
    assert_eq!(join.columns()[0].name(), "xid");
    let xid: String = a.query_one(&begin, &[&30_000i64]).await.unwrap().get(0);
    let (status, body) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
    assert_eq!(status, 200, "{body}");
    let timeout = |body: &serde_json::Value| {
        body["deadline"].as_i64().unwrap_or(0) - body["begun_at"].as_i64().unwrap_or(0)
    };
    assert_eq!(timeout(&body), 30_000, "{body}");
    let joined: String = b.query_one(&join, &[&xid]).await.unwrap().get(0);
    assert_eq!(joined, xid);
    // A type the client declares (pgJDBC's setString declares varchar), in one batch.
    let status: String = b
        .query_typed("SELECT tandem_status($1)", &[(&xid, Type::VARCHAR)])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(status, "Begin");
    a.execute(
        "UPDATE accounts SET balance = balance - 7 WHERE id = 1",
        &[],
    )
    .await
    .unwrap();
    b.execute(
        "UPDATE accounts SET balance = balance + 7 WHERE id = 2",
        &[],
    )
    .await
    .unwrap();
    let status: String = a
        .query_one("SELECT tandem_rollback()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "Rollbacked");
    assert_eq!(super::at_mode::dump(&da).await, before_a);
    assert_eq!(super::at_mode::dump(&db).await, before_b);
    b.query_one("SELECT tandem_leave()", &[]).await.unwrap();

    // An int4 timeout, and a text-format xid, both declared.
    let xid: String = a
        .query_typed("SELECT tandem_begin($1)", &[(&5_000i32, Type::INT4)])
        .await
        .unwrap()[0]
        .get(0);
    let (_, body) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
    assert_eq!(timeout(&body), 5_000, "{body}");
    let mode: String = b
        .query_typed("SELECT tandem_mode($1)", &[(&"at", Type::TEXT)])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(mode, "at");
    b.query_one(&join, &[&xid]).await.unwrap();
    b.execute(
        "UPDATE accounts SET balance = balance + 1 WHERE id = 3",
        &[],
    )
    .await
    .unwrap();
    let status: String = a
        .query_one("SELECT tandem_commit()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "Committed");
    let balance: i64 = db
        .query_one("SELECT balance FROM accounts WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 1001);
    b.query_one("SELECT tandem_leave()", &[]).await.unwrap();

    // What cannot be a call's argument is refused, and the session goes on unbound.
    let err = b.query_one(&join, &[&None::<String>]).await.unwrap_err();
    assert_eq!(code(&err), &SqlState::INVALID_PARAMETER_VALUE, "{err}");
    let err = a.query_one(&begin, &[&0i64]).await.unwrap_err();
    assert_eq!(code(&err), &SqlState::INVALID_PARAMETER_VALUE, "{err}");
    let err = b
        .query_typed("SELECT tandem_join($1)", &[(&7.5f64, Type::FLOAT8)])
        .await
        .unwrap_err();
    assert_eq!(code(&err), &SqlState::INVALID_PARAMETER_VALUE, "{err}");
    let err = control(&b, "SELECT tandem_join($1)").await.unwrap_err();
    assert_eq!(code(&err), &SqlState::INVALID_PARAMETER_VALUE, "{err}");
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(message.contains("no parameter $1"), "{message}");
    let err = control(&b, "SELECT tandem_join($2)").await.unwrap_err();
    assert_eq!(code(&err), &SqlState::INVALID_PARAMETER_VALUE, "{err}");
    assert_eq!(value(&b, "SELECT tandem_xid()").await, None);
    assert_eq!(value(&a, "SELECT tandem_xid()").await, None);
    let n: i32 = b
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 42);
    drop((a, b));
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// pgJDBC, once a statement is server-prepared and its parameter's type is left to the
/// server (`stringtype=unspecified`), sends `Parse S_1 ([0]) / Describe S / Bind /
/// Execute / Sync` and reads the parameter's type from the Describe before binding.
/// tandem answers that batch too, in the backend's order.
#[tokio::test]
async fn a_control_call_described_before_its_bind_is_answered_in_order() {
    use tandem_tests::raw_pg::{RawPg, frame};
    let db = TestDb::create("control_describe_first").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    let xid = value(&a, "SELECT tandem_begin()").await.expect("an xid");
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    for name in ["S_1", "S_2"] {
        let mut parse = format!("{name}\0SELECT tandem_status($1)\0").into_bytes();
        parse.extend_from_slice(&1i16.to_be_bytes());
        parse.extend_from_slice(&0u32.to_be_bytes());
        let mut bind = format!("\0{name}\0").into_bytes();
        bind.extend_from_slice(&0i16.to_be_bytes()); // parameters in text
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&(xid.len() as i32).to_be_bytes());
        bind.extend_from_slice(xid.as_bytes());
        bind.extend_from_slice(&0i16.to_be_bytes()); // results in text
        let mut batch = frame(b'P', &parse);
        batch.extend(frame(b'D', format!("S{name}\0").as_bytes()));
        batch.extend(frame(b'B', &bind));
        batch.extend(frame(b'E', b"\0\0\0\0\0"));
        batch.extend(frame(b'S', b""));
        raw.send(&batch).await;
        let replies = raw.recv_until(b'Z').await;
        let tags: Vec<u8> = replies.iter().map(|m| m.tag).collect();
        assert_eq!(tags, b"1tT2DCZ", "{replies:?}");
        // One parameter, text as the server infers it.
        assert_eq!(&replies[1].body[..], &[0, 1, 0, 0, 0, 25][..]);
        assert_eq!(&replies[4].body[6..], b"Begin", "{:?}", replies[4]);
    }
    drop(raw);
    assert_eq!(
        value(&a, "SELECT tandem_rollback()").await.as_deref(),
        Some("Rollbacked")
    );
    drop(a);
    tandem.shutdown().await;
    lockserver.stop().await;
}
