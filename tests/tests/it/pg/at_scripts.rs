//! Multi-statement simple queries inside a global transaction: each statement is
//! captured, the client sees the replies of the whole query, and the query's
//! statements commit or roll back together, locally and globally.

use super::at_mode::{dump, one, prepare, rolled_back, undo_rows};
use tandem_tests::harness::{Tandem, eventually};
use tandem_tests::lockserver::{Kind, TestLockserver};
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::error::SqlState;

fn counts(messages: &[SimpleQueryMessage]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_multi_statement_query_is_captured_statement_by_statement() {
    let db = prepare("at_script").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let client = tandem.connect(&db.name).await;
    client
        .batch_execute("SET DateStyle = 'SQL, DMY'")
        .await
        .unwrap();

    let scripts = [
        // Autocommit: the query's own implicit transaction.
        "UPDATE accounts SET balance = balance - 1 WHERE id = 1; \
         INSERT INTO accounts VALUES (60, 1, 'x;y', now(), 1); \
         SELECT balance FROM accounts WHERE id = 1; \
         DELETE FROM accounts WHERE id = 5 RETURNING id, note",
        // A whole transaction block in one query.
        "BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = 1; \
         INSERT INTO accounts VALUES (60, 1, 'x;y', now(), 1); \
         SELECT balance FROM accounts WHERE id = 1; \
         DELETE FROM accounts WHERE id = 5 RETURNING id, note; COMMIT",
    ];
    for (i, script) in scripts.iter().enumerate() {
        for decision in ["rollback", "commit"] {
            one(&client, "SELECT tandem_begin(30000)").await.unwrap();
            let messages = client.simple_query(script).await.unwrap();
            let mut want = vec![1, 1, 1, 1];
            if i == 1 {
                want = vec![0, 1, 1, 1, 1, 0];
            }
            assert_eq!(counts(&messages), want, "{script}");
            let rows: Vec<(String, String)> = messages
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some((
                        r.get(0).unwrap_or_default().to_owned(),
                        r.get(r.len() - 1).unwrap_or_default().to_owned(),
                    )),
                    _ => None,
                })
                .collect();
            assert_eq!(
                rows,
                vec![("999".into(), "999".into()), ("5".into(), "n5".into())],
                "the client's own rows, without tandem's key columns"
            );
            assert_eq!(
                undo_rows(&direct).await,
                1,
                "one branch for the whole query"
            );
            let status = one(&client, &format!("SELECT tandem_{decision}()"))
                .await
                .unwrap();
            if decision == "rollback" {
                assert_eq!(status.as_deref(), Some("Rollbacked"));
                assert_eq!(dump(&direct).await, before, "{script}");
            } else {
                assert_eq!(status.as_deref(), Some("Committed"));
                eventually("undo row cleaned", || async {
                    undo_rows(&direct).await == 0
                })
                .await;
                let n: i64 = direct
                    .query_one(
                        "SELECT count(*) FROM accounts WHERE id = 60 OR (id = 1 AND balance = 999)",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(n, 2);
                // Put the table back for the next script.
                direct
                    .batch_execute(
                        "DELETE FROM accounts WHERE id = 60; UPDATE accounts SET balance = 1000 WHERE id = 1; \
                         INSERT INTO accounts VALUES (5, 1000, 'n5', '2024-02-29 12:00:00.123456+00', 0.5)",
                    )
                    .await
                    .unwrap();
                assert_eq!(dump(&direct).await, before);
            }
        }
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn an_error_in_a_multi_statement_query_undoes_all_of_it() {
    let db = prepare("at_script_err").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let client = tandem.connect(&db.name).await;
    one(&client, "SELECT tandem_begin(30000)").await.unwrap();

    let e = client
        .simple_query(
            "UPDATE accounts SET balance = 0 WHERE id = 2; SELECT 1 / 0; UPDATE accounts SET balance = 0 WHERE id = 3",
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::DIVISION_BY_ZERO), "{e}");
    assert_eq!(
        dump(&direct).await,
        before,
        "the implicit transaction rolled back"
    );
    assert_eq!(undo_rows(&direct).await, 0);
    // The session is idle and usable, inside an open block too.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("UPDATE accounts SET balance = 7 WHERE id = 2; UPDATE accounts SET balance = 7 WHERE id = 3")
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(undo_rows(&direct).await, 1);
    rolled_back(&client).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Outside a transaction block PostgreSQL runs a multi-statement query in an implicit
/// transaction, where SAVEPOINT, RELEASE and ROLLBACK TO fail (25P01) and take the
/// whole query with them. tandem runs such a script in a block of its own, where they
/// would run: it answers as the server would instead, and nothing of the query stays.
#[tokio::test]
async fn a_savepoint_in_a_query_outside_a_block_fails_it_whole_as_without_tandem() {
    let db = prepare("script_savepoint").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let client = tandem.connect(&db.name).await;
    one(&client, "SELECT tandem_begin()").await.unwrap();
    for script in [
        "UPDATE accounts SET balance = 7 WHERE id = 1; SAVEPOINT s; UPDATE accounts SET balance = 8 WHERE id = 2",
        "RELEASE SAVEPOINT s; SELECT 1",
        "ROLLBACK TO s; UPDATE accounts SET balance = 9 WHERE id = 3",
    ] {
        let err = client.batch_execute(script).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::NO_ACTIVE_SQL_TRANSACTION),
            "{script}: {err:?}"
        );
        assert_eq!(dump(&direct).await, before, "{script}");
    }
    rolled_back(&client).await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// tandem runs a script's statements one at a time, so a setting one of them changes
/// is reported (ParameterStatus) after it, and again when tandem's COMMIT reverts it
/// (SET LOCAL). The client must hear them in that order: a driver keeps the last value
/// it heard (psycopg parses dates by DateStyle), and the server's is the reverted one.
#[tokio::test]
async fn settings_a_script_changes_and_reverts_are_reported_in_the_order_they_happened() {
    use tandem_tests::raw_pg::RawPg;
    let db = prepare("script_settings").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.query("SELECT tandem_begin()").await;
    raw.recv_until(b'Z').await;
    for (script, name) in [
        (
            "BEGIN; SET LOCAL DateStyle = 'SQL, DMY'; COMMIT",
            "DateStyle",
        ),
        (
            "BEGIN; UPDATE accounts SET balance = 7 WHERE id = 1; SET LOCAL application_name = 'y'; COMMIT",
            "application_name",
        ),
        (
            "SET LOCAL application_name = 'z'; UPDATE accounts SET balance = 8 WHERE id = 2",
            "application_name",
        ),
    ] {
        raw.query(script).await;
        let replies = raw.recv_until(b'Z').await;
        assert!(
            replies.iter().all(|m| m.tag != b'E'),
            "{script}: {replies:?}"
        );
        let last_heard = replies
            .iter()
            .rfind(|m| m.tag == b'S' && m.strings()[0] == name)
            .map(|m| m.strings()[1].clone());
        raw.query(&format!("SHOW {name}")).await;
        let shown = raw.recv_until(b'Z').await;
        let server_has = shown
            .iter()
            .find(|m| m.tag == b'D')
            .map(|m| String::from_utf8_lossy(&m.body[6..]).into_owned())
            .expect("a row");
        if let Some(heard) = last_heard {
            assert_eq!(heard, server_has, "{script}: {replies:?}");
        }
    }
    raw.query("SELECT tandem_rollback()").await;
    raw.recv_until(b'Z').await;
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// tandem refuses a statement by having the backend raise its error (so the block fails
/// in order with every other reply), from a DO block; the client gets the code and the
/// message alone, as from any refusal, not the DO block's PL/pgSQL context. A client's
/// own DO block keeps its context.
#[tokio::test]
async fn a_refusal_carries_no_context_of_the_do_block_that_raised_it() {
    use tandem_tests::raw_pg::RawPg;
    let db = prepare("refusal_fields").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.query("SELECT tandem_begin()").await;
    raw.recv_until(b'Z').await;
    raw.query("TRUNCATE accounts").await;
    let replies = raw.recv_until(b'Z').await;
    let refusal = replies.iter().find(|m| m.tag == b'E').expect("a refusal");
    assert_eq!(refusal.sqlstate().as_deref(), Some("0A000"), "{refusal:?}");
    for field in [b'W', b'F', b'L', b'R', b's'] {
        assert_eq!(
            refusal.field(field),
            None,
            "field {}: {refusal:?}",
            field as char
        );
    }
    raw.query("SELECT tandem_rollback()").await;
    raw.recv_until(b'Z').await;
    raw.query("DO $$ BEGIN RAISE EXCEPTION 'mine'; END $$")
        .await;
    let replies = raw.recv_until(b'Z').await;
    let own = replies
        .iter()
        .find(|m| m.tag == b'E')
        .expect("the client's error");
    assert!(
        own.field(b'W').is_some_and(|w| w.contains("PL/pgSQL")),
        "{own:?}"
    );
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// `ROLLBACK; BEGIN; …` in one query (a framework starting over after an error) ends
/// the block, a failed one too, and runs the rest in a new one, captured: as sent
/// directly, not 25P02. A ROLLBACK followed by anything but BEGIN is refused with
/// tandem's own error, also in a failed block.
#[tokio::test]
async fn rollback_then_begin_in_one_query_starts_over_in_a_new_block() {
    let db = prepare("script_rollback_begin").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let client = tandem.connect(&db.name).await;
    one(&client, "SELECT tandem_begin(30000)").await.unwrap();
    // From a block holding a captured write, then from a failed one.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    client
        .batch_execute("ROLLBACK; BEGIN; UPDATE accounts SET balance = 2 WHERE id = 2")
        .await
        .unwrap();
    client.batch_execute("SELECT 1/0").await.unwrap_err();
    let replies = client
        .simple_query("ROLLBACK; BEGIN; UPDATE accounts SET balance = 3 WHERE id = 3")
        .await
        .unwrap();
    assert_eq!(counts(&replies), [0, 0, 1]);
    client.batch_execute("COMMIT").await.unwrap();
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
    assert_eq!(balances, [1000, 1000, 3], "only the last block's write");
    assert_eq!(undo_rows(&direct).await, 1);

    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute("SELECT 1/0").await.unwrap_err();
    let err = client
        .batch_execute("ROLLBACK; UPDATE accounts SET balance = 4 WHERE id = 4")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();

    rolled_back(&client).await;
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    drop(client);
    tandem.shutdown().await;
    lockserver.stop().await;
}
