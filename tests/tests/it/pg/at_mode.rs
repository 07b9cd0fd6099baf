//! AT mode on PostgreSQL: two databases behind one proxy, one lockserver; global commit
//! and rollback, byte for byte.

use tandem_tests::harness::{Tandem, TestDb, eventually};
use tandem_tests::lockserver::{Kind, TestLockserver};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

pub(crate) async fn one(
    client: &Client,
    sql: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
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
pub(crate) async fn dump(client: &Client) -> Vec<String> {
    client
        .query("SELECT t::text FROM accounts t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Rolls the session's global transaction back; every branch must be undone.
pub(crate) async fn rolled_back(client: &Client) {
    assert_eq!(
        one(client, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
}

/// Rolls the session's global transaction back when the rollback may outlast the
/// call's answer (large images): it is done, or under way (check the rows after).
pub(crate) async fn rollback_begun(client: &Client) {
    let status = one(client, "SELECT tandem_rollback()").await.unwrap();
    assert!(
        matches!(status.as_deref(), Some("Rollbacked" | "Rollbacking")),
        "{status:?}"
    );
}

pub(crate) async fn undo_rows(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM undo_log WHERE log_status = 0", &[])
        .await
        .unwrap()
        .get(0)
}

pub(crate) async fn prepare(label: &str) -> TestDb {
    let db = TestDb::create(label).await;
    db.migrate().await;
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
    let tandem = Tandem::start_for(&lockserver).await;
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
async fn writes_that_cannot_be_captured_are_refused() {
    let orders = prepare("at_refuse").await;
    orders
        .direct()
        .await
        .batch_execute("CREATE SEQUENCE picks")
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
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
            "UPDATE accounts SET balance = 0; ROLLBACK",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "WITH d AS (DELETE FROM accounts RETURNING *) SELECT count(*) FROM d",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        // In parentheses it is the same statement.
        (
            "(WITH d AS (UPDATE accounts SET balance = 0 RETURNING *) SELECT count(*) FROM d)",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        ("UPDATE missing_table SET v = 1", SqlState::UNDEFINED_TABLE),
        // SQL-level prepared statements run by name where tandem cannot see them.
        (
            "PREPARE wipe AS DELETE FROM accounts",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        ("EXECUTE wipe", SqlState::FEATURE_NOT_SUPPORTED),
        (
            "EXPLAIN ANALYZE UPDATE accounts SET balance = 0",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        // The British spelling runs it too.
        (
            "EXPLAIN (VERBOSE, ANALYSE TRUE) DELETE FROM accounts WHERE id = 1",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        // The before image and the write would each pick their own rows.
        (
            "UPDATE accounts SET balance = 0 WHERE id = nextval('picks')",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "DELETE FROM accounts WHERE random() < 0.5",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        // A quoted name calls the same function.
        (
            "DELETE FROM accounts WHERE \"random\"() < 0.5",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "DELETE FROM accounts WHERE pg_catalog.\"random\" () < 0.5",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
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
    let picked: bool = orders
        .direct()
        .await
        .query_one("SELECT is_called FROM picks", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!picked, "the sequence never moved");
    // Outside a global transaction the same statements pass through untouched.
    one(&a, "SELECT tandem_leave()").await.unwrap();
    a.batch_execute("INSERT INTO nokey VALUES (1)")
        .await
        .unwrap();
    // A write prepared before the binding cannot be run inside it either.
    a.batch_execute("PREPARE bump AS UPDATE accounts SET balance = balance + 1")
        .await
        .unwrap();
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    let err = a.batch_execute("EXECUTE bump").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{err:?}"
    );
    one(&a, "SELECT tandem_rollback()").await.unwrap();
    assert_eq!(
        dump(&orders.direct().await).await,
        before,
        "EXECUTE did not run"
    );
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A composite key is bound back at replay with its type declared: left to the server,
/// `"id" = $1` took the parameter for an anonymous record, which has no binary input,
/// and the rollback was retried forever with the rows changed and locked.
#[tokio::test]
async fn rows_keyed_by_composite_types_roll_back() {
    let orders = prepare("at_composite_key").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TYPE pair AS (a int, b text);
             CREATE DOMAIN checked_pair AS pair CHECK ((VALUE).a > 0);
             CREATE TABLE pairs (k pair PRIMARY KEY, v int);
             CREATE TABLE checked (k checked_pair PRIMARY KEY, v int);
             INSERT INTO pairs VALUES (ROW(1, 'x'), 1), (ROW(2, 'y ,\"'), 2);
             INSERT INTO checked VALUES (ROW(1, 'x'), 1), (ROW(2, NULL), 2);",
        )
        .await
        .unwrap();
    let rows = |table: &'static str| {
        let direct = &direct;
        async move {
            direct
                .query(
                    &format!("SELECT t::text, md5(record_send(t)::text) FROM {table} t ORDER BY k"),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect::<Vec<_>>()
        }
    };
    let before = (rows("pairs").await, rows("checked").await);
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute(
        "UPDATE pairs SET v = 10 WHERE (k).a = 1;
         DELETE FROM pairs WHERE (k).a = 2;
         INSERT INTO pairs VALUES (ROW(3, 'z'), 3);
         UPDATE checked SET v = 10;
         DELETE FROM checked WHERE (k).b IS NULL;",
    )
    .await
    .unwrap();
    a.query(
        "INSERT INTO checked VALUES (ROW($1::int, $2::text), 3)",
        &[&3i32, &"w"],
    )
    .await
    .unwrap();
    rolled_back(&a).await;
    assert_eq!((rows("pairs").await, rows("checked").await), before);
    assert_eq!(undo_rows(&direct).await, 0);
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// The replay declares its parameters' types by the OIDs the images were read with; a
/// type dropped and created again before the rollback has another, and its parameter is
/// left to the server to infer (the declared OID failed every retry: "cache lookup
/// failed for type").
#[tokio::test]
async fn a_type_created_again_before_the_rollback_is_bound_as_the_new_one() {
    let orders = prepare("at_type_again").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('sad', 'ok');
             CREATE TABLE moods (id int PRIMARY KEY, m mood);
             INSERT INTO moods VALUES (1, 'sad'), (2, 'ok');",
        )
        .await
        .unwrap();
    let rows = || async {
        direct
            .query("SELECT id, m::text FROM moods ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
    };
    let before = rows().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute("UPDATE moods SET m = 'ok' WHERE id = 1; DELETE FROM moods WHERE id = 2")
        .await
        .unwrap();
    direct
        .batch_execute(
            "ALTER TABLE moods ALTER m TYPE text;
             DROP TYPE mood;
             CREATE TYPE mood AS ENUM ('sad', 'ok');
             ALTER TABLE moods ALTER m TYPE mood USING m::mood;",
        )
        .await
        .unwrap();
    rolled_back(&a).await;
    assert_eq!(rows().await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// With standard_conforming_strings off, `\'` escapes a quote: where tandem (reading
/// literals as the standard does) saw `'a\'` and a comment, the server ran the UPDATE or
/// COMMIT between them, uncaptured. A bound session's text with a backslash is refused
/// then, over either protocol and in either mode.
#[tokio::test]
async fn backslashes_are_refused_while_standard_conforming_strings_is_off() {
    let orders = prepare("at_scs_off").await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let b = tandem.connect(&orders.name).await;
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    one(&b, "SELECT tandem_mode('xa')").await.unwrap();
    one(&b, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    for session in [&a, &b] {
        session
            .batch_execute("SET standard_conforming_strings = off")
            .await
            .unwrap();
    }
    let hidden_write = "SELECT 'a\\'; UPDATE accounts SET balance = 0 WHERE id = 1; SELECT 1 --'";
    let err = a.batch_execute(hidden_write).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{err}");
    let err = a
        .query("SELECT $1::text || 'x\\\\'", &[&"y"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{err}");
    b.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("UPDATE accounts SET balance = 7 WHERE id = 2")
        .await
        .unwrap();
    let err = b
        .batch_execute("SELECT 'a\\'; COMMIT; SELECT 1 --'")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{err}");
    b.batch_execute("ROLLBACK").await.unwrap();
    // Text without a backslash reads the same either way.
    a.batch_execute("UPDATE accounts SET balance = 5 WHERE id = 3")
        .await
        .unwrap();
    // A tag the server reads as a dollar quote and tandem's parser does not.
    b.batch_execute("RESET standard_conforming_strings")
        .await
        .unwrap();
    let err = b
        .batch_execute(
            "SELECT $€$ ' $€$; UPDATE accounts SET balance = 0 WHERE id = 1; SELECT 1 --'",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{err}");
    // The setting changed by a statement still in flight (pipelined in one write),
    // and a statement prepared while it was off and bound once it is on again.
    {
        use tandem_tests::raw_pg::{RawPg, frame};
        let mut raw = RawPg::startup(tandem.pg, "postgres", &orders.name).await;
        raw.simple(&format!("SELECT tandem_join('{xid}')")).await;
        let mut both = frame(b'Q', b"SET standard_conforming_strings = off\0");
        both.extend(frame(
            b'Q',
            b"SELECT 'a\\''; UPDATE accounts SET balance = 0 WHERE id = 1; SELECT 1 --'\0",
        ));
        raw.send(&both).await;
        raw.recv_until(b'Z').await;
        let replies = raw.recv_until(b'Z').await;
        let error = replies.iter().find(|m| m.tag == b'E').expect("refused");
        assert_eq!(error.sqlstate().as_deref(), Some("0A000"), "{replies:?}");
        let mut parse = b"escaped\0SELECT 'a\\\\b'\0".to_vec();
        parse.extend_from_slice(&0i16.to_be_bytes());
        let mut prepared = frame(b'P', &parse);
        prepared.extend(frame(b'S', b""));
        raw.send(&prepared).await;
        raw.recv_until(b'Z').await;
        raw.simple("SET standard_conforming_strings = on").await;
        let mut run = frame(b'B', b"\0escaped\0\0\0\0\0\0\0");
        run.extend(frame(b'E', b"\0\0\0\0\0"));
        run.extend(frame(b'S', b""));
        raw.send(&run).await;
        let replies = raw.recv_until(b'Z').await;
        let error = replies.iter().find(|m| m.tag == b'E').expect("refused");
        assert_eq!(error.sqlstate().as_deref(), Some("0A000"), "{replies:?}");
    }
    rolled_back(&a).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A branch's images are read in the session's client_encoding and replayed as UTF8,
/// and its rows are named by their keys as the server prints them, bound back at its
/// COMMIT: a session whose settings would make either read back differently is
/// refused (a LATIN1 session's rollback wrote 'é' where 'Ã©' had been; a COMMIT after
/// SET DateStyle read the after image of another day's row).
#[tokio::test]
async fn sessions_whose_settings_would_misread_images_or_keys_are_refused() {
    let orders = prepare("at_settings").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE days (d date PRIMARY KEY, v int);
             INSERT INTO days VALUES ('2024-01-02', 1), ('2024-02-01', 2);
             CREATE TABLE floats (f float8 PRIMARY KEY, v int);
             INSERT INTO floats VALUES (0.5, 1);
             CREATE DOMAIN f8 AS float8;
             CREATE TABLE f8s (f f8 PRIMARY KEY, v int);
             CREATE TABLE float_arrays (f float8[] PRIMARY KEY, v int);
             CREATE TYPE float_range AS RANGE (subtype = float8);
             CREATE TABLE float_ranges (f float_range PRIMARY KEY, v int);
             CREATE TYPE with_money AS (id int, m money);
             CREATE TABLE composites (k with_money PRIMARY KEY, v int);
             CREATE EXTENSION cube;
             CREATE DOMAIN cube_key AS cube;
             CREATE TABLE cubes (k cube_key PRIMARY KEY, v int);
             INSERT INTO cubes VALUES ('(0.3)', 1), (cube(0.1::float8 + 0.2::float8), 2);
             INSERT INTO f8s VALUES (0.3, 1), (0.1::float8 + 0.2::float8, 2);",
        )
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let before = dump(&direct).await;
    let refused = |e: tokio_postgres::Error, what: &str| {
        assert_eq!(
            e.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{what}: {e:?}"
        );
    };

    let a = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute("SET client_encoding = 'LATIN1'")
        .await
        .unwrap();
    refused(
        a.batch_execute("UPDATE accounts SET note = 'x' WHERE id = 1")
            .await
            .unwrap_err(),
        "LATIN1",
    );
    a.batch_execute("SET client_encoding = 'UTF8'")
        .await
        .unwrap();
    refused(
        a.batch_execute("UPDATE floats SET v = 2 WHERE f = 0.5")
            .await
            .unwrap_err(),
        "float key",
    );
    // Built on a float or money, keys print alike under extra_float_digits = 0
    // (0.3 and 0.30000000000000004 both as 0.3): a rollback lost one of two rows.
    a.batch_execute("SET extra_float_digits = 0").await.unwrap();
    for write in [
        "DELETE FROM f8s",
        "UPDATE float_arrays SET v = 2",
        "INSERT INTO float_ranges VALUES ('[0.1,0.3)', 1)",
        "INSERT INTO composites VALUES (ROW(1, 2), 1)",
        "DELETE FROM cubes",
    ] {
        refused(a.batch_execute(write).await.unwrap_err(), write);
    }
    a.batch_execute("RESET extra_float_digits").await.unwrap();
    let kept: i64 = direct
        .query_one("SELECT count(*) FROM f8s", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 2);

    // DateStyle changed between a branch's write and its COMMIT.
    a.batch_execute("SET DateStyle = 'SQL, MDY'").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("UPDATE days SET v = 10 WHERE d = '01/02/2024'")
        .await
        .unwrap();
    a.batch_execute("SET DateStyle = 'SQL, DMY'").await.unwrap();
    refused(a.batch_execute("COMMIT").await.unwrap_err(), "COMMIT");
    // And between two writes of one branch.
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("UPDATE days SET v = 11 WHERE d = '02/01/2024'")
        .await
        .unwrap();
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    refused(
        a.batch_execute("UPDATE accounts SET balance = 0 WHERE id = 2")
            .await
            .unwrap_err(),
        "second write",
    );
    a.batch_execute("ROLLBACK").await.unwrap();

    // A SET LOCAL that tandem's own COMMIT ends: the setting it reverts to counts.
    a.batch_execute("SET DateStyle = 'ISO, MDY'").await.unwrap();
    a.batch_execute(
        "BEGIN; SET LOCAL DateStyle = 'SQL, DMY'; UPDATE days SET v = 12 WHERE d = '02/01/2024'",
    )
    .await
    .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    a.batch_execute("BEGIN; UPDATE days SET v = 13 WHERE d = '2024-01-02'")
        .await
        .unwrap();
    a.batch_execute("SET DateStyle = 'SQL, DMY'").await.unwrap();
    refused(
        a.batch_execute("COMMIT").await.unwrap_err(),
        "COMMIT after SET LOCAL",
    );

    one(&a, "SELECT tandem_rollback()").await.unwrap();
    assert_eq!(dump(&direct).await, before, "nothing of it stays");
    let rows: Vec<(String, i32)> = direct
        .query("SELECT d::text, v FROM days ORDER BY d", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![("2024-01-02".to_owned(), 1), ("2024-02-01".to_owned(), 2)]
    );
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A branch keeps one before image per row, so no fixed order restores every branch:
/// one that pointed a child at a parent it inserted, then deleted the old parent, needs
/// the old parent back, then the child, then the new parent gone. The rollback puts off
/// what a foreign key refuses and finishes (it retried for ever, its locks held).
#[tokio::test]
async fn a_rollback_restores_rows_whose_foreign_keys_need_another_order() {
    let orders = prepare("at_fk_order").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE parent (id int PRIMARY KEY, name text);
             CREATE TABLE child (id int PRIMARY KEY, parent int NOT NULL REFERENCES parent, v int);
             INSERT INTO parent VALUES (1, 'old');
             INSERT INTO child VALUES (1, 1, 0);",
        )
        .await
        .unwrap();
    async fn tables(c: &tokio_postgres::Client) -> Vec<String> {
        c.query(
            "SELECT 'parent ' || p::text FROM parent p UNION ALL SELECT 'child ' || c::text FROM child c ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }
    let before = tables(&direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute(
        "BEGIN;
         UPDATE child SET v = 1 WHERE id = 1;
         INSERT INTO parent VALUES (2, 'new');
         UPDATE child SET parent = 2 WHERE id = 1;
         DELETE FROM parent WHERE id = 1;
         COMMIT;",
    )
    .await
    .unwrap();
    assert_ne!(tables(&direct).await, before);
    let status = one(&a, "SELECT tandem_rollback()").await.unwrap();
    assert_eq!(status.as_deref(), Some("Rollbacked"));
    assert_eq!(tables(&direct).await, before, "restored byte for byte");
    assert_eq!(undo_rows(&direct).await, 0);
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
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
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    for sql in [
        "UPDATE audited SET v = 2 WHERE id = 1",
        "DELETE FROM parent WHERE id = 1",
        // Its rollback's DELETE would cascade to children added since.
        "INSERT INTO parent VALUES (2)",
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
    let parents: i64 = direct
        .query_one("SELECT count(*) FROM parent", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(parents, 1, "the insert never ran");
    let v: i32 = direct
        .query_one("SELECT v FROM audited", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 1);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A trigger created through the proxy by DDL that no command tag shows (EXECUTE in a
/// DO block or a procedure) is seen at the session's next write, as after a CREATE
/// TRIGGER: the write is refused. Unseen, it ran the trigger's write uncaptured, which
/// the rollback left in place.
#[tokio::test]
async fn a_trigger_created_inside_do_or_call_is_seen_at_the_next_write() {
    let orders = prepare("at_trig_do").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE audit_log (id serial PRIMARY KEY, note text);
             CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN INSERT INTO audit_log (note) VALUES ('row ' || NEW.id); RETURN NEW; END $$;
             CREATE PROCEDURE add_trigger() LANGUAGE plpgsql AS $$
               BEGIN EXECUTE 'CREATE TRIGGER by_call AFTER UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION log_it()'; END $$;",
        )
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    for (creates, drops) in [
        (
            "DO $$ BEGIN EXECUTE 'CREATE TRIGGER by_do AFTER UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION log_it()'; END $$",
            "DROP TRIGGER by_do ON accounts",
        ),
        ("CALL add_trigger()", "DROP TRIGGER by_call ON accounts"),
    ] {
        // The table described (and the description cached) by a captured write.
        one(&a, "SELECT tandem_begin(30000)").await.unwrap();
        a.batch_execute("UPDATE accounts SET balance = 1 WHERE id = 1")
            .await
            .unwrap();
        rolled_back(&a).await;
        a.batch_execute(creates).await.unwrap();
        let before = dump(&direct).await;
        one(&a, "SELECT tandem_begin(30000)").await.unwrap();
        let err = a
            .batch_execute("UPDATE accounts SET balance = 2 WHERE id = 2")
            .await
            .expect_err("a write that fires a trigger");
        assert_eq!(
            err.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{creates}: {err:?}"
        );
        rolled_back(&a).await;
        assert_eq!(dump(&direct).await, before, "{creates}");
        let logged: i64 = direct
            .query_one("SELECT count(*) FROM audit_log", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(logged, 0, "{creates}: the trigger wrote");
        // Through the proxy: its DDL is seen at once.
        a.batch_execute(drops).await.unwrap();
    }
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
    let tandem = Tandem::start_for(&lockserver).await;
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
    // An upsert on the primary key: one row updated, one inserted.
    let upserted = a
        .simple_query(
            "INSERT INTO accounts (id, balance, note) VALUES (1, 0, 'upserted'), (61, 61, 'new') \
             ON CONFLICT (id) DO UPDATE SET balance = excluded.balance, note = excluded.note",
        )
        .await
        .unwrap();
    assert!(
        upserted
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(2)))
    );
    // Without a column list: VALUES gives the table's columns in order.
    a.batch_execute(
        "INSERT INTO accounts VALUES (3, 0, 'no list'), (62, 62, 'new') ON CONFLICT (id) DO UPDATE SET note = excluded.note",
    )
    .await
    .unwrap();
    // With parameters, over the extended protocol.
    let n = a
        .execute(
            "INSERT INTO accounts (id, balance) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET balance = excluded.balance",
            &[&5i32, &555i64],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // No unique key on note: the server's own error.
    let err = a
        .simple_query("INSERT INTO accounts (id, note) VALUES (7, 'x') ON CONFLICT (note) DO UPDATE SET balance = 0")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_COLUMN_REFERENCE),
        "{err:?}"
    );
    assert_ne!(dump(&direct).await, before);
    rolled_back(&a).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// An upsert whose conflict target is another unique key than the primary key
/// (Django's `bulk_create(update_conflicts=True, unique_fields=…)`, SQLAlchemy's
/// `on_conflict_do_update(index_elements=…)`) is captured: the rows equal to its VALUES
/// (or its query's rows) in the target's columns are its before image. Over either
/// protocol, in autocommit and in a block; rolled back exactly, or committed. A row it
/// updates that its before image did not read (NULLS NOT DISTINCT: NULL is not equal to
/// NULL in the read) fails it as uncaptured, with nothing changed.
#[tokio::test]
async fn an_upsert_on_another_unique_key_is_captured_and_rolled_back() {
    let db = prepare("at_upsert_unique").await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, name text, visits int NOT NULL);
             INSERT INTO users VALUES (1, 'a@x', 'A', 0), (2, 'b@x', 'B', 0);
             CREATE TABLE tags (id int PRIMARY KEY, nick text UNIQUE NULLS NOT DISTINCT, v int);
             INSERT INTO tags VALUES (1, NULL, 0);
             CREATE TABLE codes (id int PRIMARY KEY, code bigint UNIQUE, v int);
             INSERT INTO codes VALUES (1, 1, 0), (2, 2, 0);
             CREATE SEQUENCE code_seq;",
        )
        .await
        .unwrap();
    let before = rows_of(&direct, "users").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute(
        "INSERT INTO users (id, email, name, visits) VALUES (10, 'a@x', 'A2', 1), (11, 'c@x', 'C', 1)
         ON CONFLICT (email) DO UPDATE SET name = excluded.name, visits = users.visits + 1",
    )
    .await
    .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let returned: Vec<(i32, i32)> = a
        .query(
            "INSERT INTO users (id, email, name, visits) VALUES ($1, $2, $3, 1)
             ON CONFLICT (email) DO UPDATE SET visits = users.visits + 10 RETURNING id, visits",
            &[&12i32, &"b@x", &"B2"],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(returned, [(2, 10)], "the client's own RETURNING");
    // Django 5.2's multi-row form, by a query.
    a.execute(
        "INSERT INTO users (id, email, name, visits)
         SELECT * FROM UNNEST($1::int[], $2::text[], $3::text[], $4::int[])
         ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name",
        &[
            &vec![20i32, 21],
            &vec!["c@x", "d@x"],
            &vec!["C3", "D"],
            &vec![5i32, 5],
        ],
    )
    .await
    .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    // In the order of their text, as rows_of reads them.
    let written = vec![
        "(1,a@x,A2,1)".to_owned(),
        "(11,c@x,C3,1)".to_owned(),
        "(2,b@x,B,10)".to_owned(),
        "(21,d@x,D,5)".to_owned(),
    ];
    assert_eq!(rows_of(&direct, "users").await, written);
    // Moving the row it meets to another key is a primary-key update.
    let err = a
        .batch_execute(
            "INSERT INTO users (id, email, visits) VALUES (30, 'a@x', 0) ON CONFLICT (email) DO UPDATE SET id = excluded.id",
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{err:?}"
    );
    // NULL meets NULL here, but not in the before image's read.
    let err = a
        .batch_execute(
            "INSERT INTO tags VALUES (2, NULL, 0) ON CONFLICT (nick) DO UPDATE SET v = 99",
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE),
        "{err:?}"
    );
    assert_eq!(
        rows_of(&direct, "users").await,
        written,
        "nothing changed by the refusals"
    );
    let tags: i64 = direct
        .query_one("SELECT sum(v) FROM tags", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tags, 0, "the uncaptured upsert was rolled back");
    // A key nextval() gives is looked up by nothing but the write, which takes the
    // sequence's next value once, as directly; the row it met had no before image.
    let err = a
        .batch_execute(
            "INSERT INTO codes VALUES (5, nextval('code_seq'), 5) ON CONFLICT (code) DO UPDATE SET v = 9",
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE),
        "{err:?}"
    );
    let (last, changed): (i64, i64) = {
        let row = direct
            .query_one(
                "SELECT (SELECT last_value FROM code_seq), (SELECT count(*) FROM codes WHERE v <> 0)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (last, changed),
        (1, 0),
        "nextval() ran once, nothing changed"
    );
    rolled_back(&a).await;
    assert_eq!(rows_of(&direct, "users").await, before);
    assert_eq!(undo_rows(&direct).await, 0);

    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute(
        "INSERT INTO users (id, email, name, visits) VALUES (40, 'b@x', 'kept', 0), (41, 'f@x', 'F', 0)
         ON CONFLICT (email) DO UPDATE SET name = excluded.name",
    )
    .await
    .unwrap();
    assert_eq!(
        one(&a, "SELECT tandem_commit()").await.unwrap().as_deref(),
        Some("Committed")
    );
    assert_eq!(
        rows_of(&direct, "users").await,
        ["(1,a@x,A,0)", "(2,b@x,kept,0)", "(41,f@x,F,0)"]
    );
    eventually("undo rows gone", || {
        let direct = &direct;
        async move { undo_rows(direct).await == 0 }
    })
    .await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Django 5.2 sends a multi-row `bulk_create(update_conflicts=True)` as `INSERT … SELECT
/// * FROM UNNEST(…) ON CONFLICT (id) DO UPDATE`: the rows the query names are read
/// before it (the query runs twice), in autocommit and in a block, over either
/// protocol; the global rollback restores them and removes the inserted ones.
#[tokio::test]
async fn an_upsert_from_a_query_is_captured_and_rolled_back() {
    let orders = prepare("at_upsert_select").await;
    let direct = orders.direct().await;
    direct
        .batch_execute("CREATE SEQUENCE ids START 1")
        .await
        .unwrap();
    let before = dump(&direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    let upsert = "INSERT INTO accounts (id, balance, note) \
                  SELECT * FROM UNNEST($1::int[], $2::int8[], $3::text[]) \
                  ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance, note = EXCLUDED.note";
    let n = a
        .execute(
            upsert,
            &[
                &vec![2i32, 3, 70],
                &vec![20i64, 30, 70],
                &vec!["u2", "u3", "n70"],
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    a.batch_execute("BEGIN").await.unwrap();
    let returned: Vec<i32> = a
        .query(
            "INSERT INTO accounts (id, balance, note) \
             SELECT * FROM UNNEST('{4,71}'::int[], '{40,71}'::int8[], '{u4,n71}'::text[]) \
             ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(returned, vec![4, 71], "the client's own RETURNING");
    a.batch_execute("COMMIT").await.unwrap();
    let rows: Vec<(i32, i64, String)> = direct
        .query(
            "SELECT id, balance, note FROM accounts WHERE id IN (2, 3, 4, 70, 71) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (2, 20, "u2".to_owned()),
            (3, 30, "u3".to_owned()),
            (4, 40, "n4".to_owned()),
            (70, 70, "n70".to_owned()),
            (71, 71, "n71".to_owned()),
        ]
    );
    // A query that gives other keys each time it runs cannot be read in advance.
    let err = a
        .batch_execute(
            "INSERT INTO accounts (id, balance) SELECT nextval('ids'), b FROM UNNEST('{1}'::int8[]) AS u(b) \
             ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance",
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{err:?}"
    );
    let (next,): (i64,) = {
        let row = direct
            .query_one("SELECT nextval('ids')", &[])
            .await
            .unwrap();
        (row.get(0),)
    };
    assert_eq!(next, 1, "the refused query never ran");
    rolled_back(&a).await;
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_write_whose_before_image_fails_never_runs_without_it() {
    // Column privileges that let the UPDATE run but not the before image (which reads
    // every column): the write must fail with the image's error, not run uncaptured.
    let orders = prepare("at_privs").await;
    let role = format!("{}_limited", orders.name);
    let direct = orders.direct().await;
    direct
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} NOLOGIN;
             GRANT SELECT (id, balance), UPDATE (balance) ON accounts TO {role};"
        ))
        .await
        .unwrap();
    let before = dump(&direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    a.batch_execute(&format!("SET ROLE {role}")).await.unwrap();
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    // Autocommit, then inside a block (where the error replaces "transaction aborted").
    let e = a
        .batch_execute("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    a.batch_execute("BEGIN").await.unwrap();
    let e = a
        .batch_execute("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    a.batch_execute("ROLLBACK").await.unwrap();
    // The same over the extended protocol, where the image travels with the batch.
    let update = "UPDATE accounts SET balance = $1 WHERE id = $2";
    let e = a.execute(update, &[&1i64, &1i32]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    a.batch_execute("BEGIN").await.unwrap();
    let e = a.execute(update, &[&1i64, &1i32]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    let e = a.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "the block failed with it: {e}"
    );
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(dump(&direct).await, before, "the write did not run");
    one(&a, "SELECT tandem_rollback()").await.unwrap();
    a.batch_execute("RESET ROLE").await.unwrap();
    drop(a);
    tandem.shutdown().await;
    lockserver.stop().await;
    direct
        .batch_execute(&format!(
            "REVOKE ALL ON accounts FROM {role}; DROP ROLE {role}"
        ))
        .await
        .unwrap();
}

/// The undo sweep deletes GlobalFinished markers past the retention, keeps younger
/// ones, and never deletes a normal undo row: an old one is counted for an operator.
#[tokio::test]
async fn the_undo_sweep_deletes_old_markers_and_keeps_undo_rows() {
    let db = prepare("undo_sweep").await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "INSERT INTO undo_log (branch_id, xid, context, rollback_info, log_status, log_created) VALUES
               (1, 'old-marker-1', 'tandem', '\\x', 1, now() - interval '8 days'),
               (2, 'old-marker-2', 'tandem', '\\x', 1, now() - interval '30 days'),
               (3, 'young-marker', 'tandem', '\\x', 1, now() - interval '6 days'),
               (4, 'old-undo-row', 'tandem', '\\x01', 0, now() - interval '9 days'),
               (5, 'young-undo-row', 'tandem', '\\x01', 0, now())",
        )
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let endpoint = format!("http://{}", lockserver.grpc);
    let tandem = Tandem::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.undo.sweep_interval_ms = 200;
    })
    .await;
    // A session makes phase 2 serve the database (as start-up does for every one).
    let client = tandem.connect(&db.name).await;
    client.execute("SELECT 1", &[]).await.unwrap();
    let left = || async {
        let rows = direct
            .query("SELECT xid FROM undo_log ORDER BY branch_id", &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect::<Vec<String>>()
    };
    eventually("the old markers were swept", || async {
        left().await.len() == 3
    })
    .await;
    assert_eq!(
        left().await,
        ["young-marker", "old-undo-row", "young-undo-row"]
    );
    // The count follows the DELETE's reply, so it can trail what a direct read sees.
    eventually("both deletions are counted", || async {
        tandem.metric("tandem_pg_undo_markers_swept_total").await == 2.0
    })
    .await;
    eventually("the old undo row is counted", || async {
        tandem
            .metric(&format!(
                "tandem_pg_undo_rows_past_retention{{upstream=\"{}\"}}",
                tandem_tests::env::pg_upstream()
            ))
            .await
            == 1.0
    })
    .await;
    drop(client);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// The undo row tandem inserts at a branch's COMMIT does not take a value of its
/// sequence: lastval() after the COMMIT (or after an autocommit INSERT, which tandem
/// commits with its undo row) is still the client's own insert's key, as drivers that
/// ask for the last insert id read it (PDO, Doctrine).
#[tokio::test]
async fn lastval_after_a_branch_commit_is_the_clients_own() {
    let db = prepare("at_lastval").await;
    let direct = db.direct().await;
    direct
        // Keys far from undo_log's own sequence, which also starts at 1.
        .batch_execute(
            "CREATE TABLE serials (id serial PRIMARY KEY, v text);
             ALTER SEQUENCE serials_id_seq RESTART WITH 1000",
        )
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let client = tandem.connect(&db.name).await;
    client.batch_execute("SELECT tandem_begin()").await.unwrap();
    let lastval = async || -> i64 {
        client
            .query_one("SELECT lastval()", &[])
            .await
            .unwrap()
            .get(0)
    };

    let id: i32 = client
        .query_one(
            "INSERT INTO serials (v) VALUES ('autocommit') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(lastval().await, i64::from(id));

    client.batch_execute("BEGIN").await.unwrap();
    let id: i32 = client
        .query_one(
            "INSERT INTO serials (v) VALUES ('in a block') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(lastval().await, i64::from(id));
    assert_eq!(undo_rows(&direct).await, 2, "both branches kept undo rows");

    rolled_back(&client).await;
    let left: i64 = direct
        .query_one("SELECT count(*) FROM serials", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Tables whose writes do more or other than the statement says (rewrite rules; row
/// security, whose SELECT policies tandem's RETURNING would apply) are refused; an
/// upsert whose key is DEFAULT is captured; naming bytea_output while the branch holds
/// rows (keys print by it, unreported) is refused. The rollback leaves every row as
/// it was.
#[tokio::test]
async fn writes_that_rules_or_row_security_would_change_are_refused() {
    let orders = prepare("at_rules").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE r1 (id int PRIMARY KEY, v text); INSERT INTO r1 VALUES (1, 'a');
             CREATE TABLE r1log (id int PRIMARY KEY); INSERT INTO r1log VALUES (1);
             CREATE RULE r1_del AS ON UPDATE TO r1 DO ALSO DELETE FROM r1log WHERE id = old.id;
             CREATE TABLE rls1 (id int PRIMARY KEY, owner text, v text);
             INSERT INTO rls1 VALUES (1, 'me', 'a'), (2, 'you', 'b');
             ALTER TABLE rls1 ENABLE ROW LEVEL SECURITY;
             CREATE TABLE u1 (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text);
             CREATE TABLE b1 (id bytea PRIMARY KEY, v int); INSERT INTO b1 VALUES ('\\x01', 1);",
        )
        .await
        .unwrap();
    let tables = ["r1", "r1log", "rls1", "u1", "b1"];
    let before = rows_of_each(&direct, &tables).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    for sql in [
        "UPDATE r1 SET v = 'z' WHERE id = 1",
        "UPDATE rls1 SET v = 'x'",
    ] {
        let err = a.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            err.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {err}"
        );
    }
    a.batch_execute(
        "INSERT INTO u1 (id, v) VALUES (DEFAULT, 'd') ON CONFLICT (id) DO UPDATE SET v = excluded.v",
    )
    .await
    .expect("a DEFAULT key is the server's: captured");
    a.batch_execute("BEGIN; UPDATE b1 SET v = v + 10 WHERE id = '\\x01'")
        .await
        .unwrap();
    let err = a
        .batch_execute("SET bytea_output = escape")
        .await
        .expect_err("bytea keys would print otherwise");
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{err}");
    a.batch_execute("ROLLBACK").await.unwrap();
    rolled_back(&a).await;
    let after = rows_of_each(&direct, &tables).await;
    assert_eq!(after, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A large value written over a large value: tandem sends the before image's read and
/// the write in one flight, and PostgreSQL answers the read (the large row) before it
/// reads the write. tandem must read while it writes, or both wait for ever, the row
/// locked (8 MB each way is past any socket buffer on this machine).
#[tokio::test]
async fn a_large_value_written_over_a_large_value_neither_hangs_nor_loses_its_image() {
    let db = prepare("at_large_value").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let old = "o".repeat(8 << 20);
    direct
        .execute("UPDATE accounts SET note = $1 WHERE id IN (1, 2)", &[&old])
        .await
        .unwrap();
    let before = dump(&direct).await;
    let a = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    let new = "n".repeat(8 << 20);
    let patience = std::time::Duration::from_secs(60);
    // Over the extended protocol, then as a simple Query with the value in its text.
    let updated = tokio::time::timeout(
        patience,
        a.execute("UPDATE accounts SET note = $1 WHERE id = 1", &[&new]),
    )
    .await
    .expect("the extended write hung")
    .unwrap();
    assert_eq!(updated, 1);
    tokio::time::timeout(
        patience,
        a.batch_execute(&format!("UPDATE accounts SET note = '{new}' WHERE id = 2")),
    )
    .await
    .expect("the simple write hung")
    .unwrap();
    let written: String = a
        .query_one("SELECT note FROM accounts WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert!(written == new, "the write took effect");
    // Replaying 16 MB of images may outlast the call's answer (5 s).
    rollback_begun(&a).await;
    tandem_tests::harness::eventually_within("both rows restored", patience, || async {
        dump(&direct).await == before && undo_rows(&direct).await == 0
    })
    .await;
    drop(a);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A global rollback under way, its replay waiting on row 3 of `db`'s accounts, which
/// the returned `holder` (a direct connection) keeps locked: session `a`, its xid, the
/// holder, and the lockserver's phase-2 deliveries when the rollback began.
async fn a_replay_waiting_on_row_3(
    db: &TestDb,
    tandem: &Tandem,
    lockserver: &TestLockserver,
) -> (Client, String, Client, f64) {
    let a = tandem.connect(&db.name).await;
    let xid = one(&a, "SELECT tandem_begin(60000)")
        .await
        .unwrap()
        .unwrap();
    a.batch_execute("UPDATE accounts SET balance = balance - 1 WHERE id = 3")
        .await
        .unwrap();
    let holder = db.direct().await;
    holder
        .batch_execute("BEGIN; SELECT * FROM accounts WHERE id = 3 FOR UPDATE")
        .await
        .unwrap();
    let sent = lockserver
        .metric("tandem_lockserver_phase2_sent_total")
        .await
        .max(0.0);
    assert_eq!(
        one(&a, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacking")
    );
    (a, xid, holder, sent)
}

/// `holder` lets row 3 go: the branch rolls back to `before`, leaving no
/// GlobalFinished marker (which only a second replay would write).
async fn rolled_back_once_released(a: &Client, xid: &str, holder: &Client, before: &[String]) {
    holder.batch_execute("ROLLBACK").await.unwrap();
    eventually("the branch rolled back", || async {
        one(a, &format!("SELECT tandem_status('{xid}')"))
            .await
            .unwrap()
            .as_deref()
            == Some("Rollbacked")
    })
    .await;
    assert_eq!(dump(holder).await, before);
    let markers: i64 = holder
        .query_one("SELECT count(*) FROM undo_log WHERE xid = $1", &[&xid])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        markers, 0,
        "no GlobalFinished marker for a branch that rolled back"
    );
}

/// A rollback whose replay waits on a row another transaction holds is delivered again
/// each `ack_timeout_ms`: the copies must not pile up beside it, each on a side
/// connection of its own and waiting behind it, and then find its undo row gone and
/// leave a GlobalFinished marker for a branch that did roll back.
#[tokio::test]
async fn a_replay_waiting_on_a_row_lock_runs_once_however_often_it_is_delivered() {
    let db = prepare("replay_once").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let (a, xid, holder, sent) = a_replay_waiting_on_row_3(&db, &tandem, &lockserver).await;
    // Delivered three times more (the test lockserver's ack_timeout_ms is 2 s).
    tandem_tests::harness::eventually_within(
        "the branch delivered again",
        std::time::Duration::from_secs(30),
        || async {
            lockserver
                .metric("tandem_lockserver_phase2_sent_total")
                .await
                .max(0.0)
                >= sent + 4.0
        },
    )
    .await;
    let waiting: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(waiting, 1, "one replay waits, and nothing beside it");
    rolled_back_once_released(&a, &xid, &holder, &before).await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// `rows_of` each of `tables`, in order.
async fn rows_of_each(client: &Client, tables: &[&str]) -> Vec<Vec<String>> {
    let mut all = Vec::with_capacity(tables.len());
    for table in tables {
        all.push(rows_of(client, table).await);
    }
    all
}

/// Every row of `table` (schema-qualified or not) as text, in text order.
/// The balance of account `id`.
pub(crate) async fn balance(client: &Client, id: i32) -> i64 {
    client
        .query_one("SELECT balance FROM accounts WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

pub(crate) async fn rows_of(client: &Client, table: &str) -> Vec<String> {
    client
        .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// What a write through a partitioned table does happens in its partitions: their
/// triggers fire and foreign keys to them cascade. And tables whose keys a branch
/// cannot keep apart (a DEFERRABLE key; a partition of a root without a key), an upsert
/// PostgreSQL does not say the inserted rows of, and an update of a generated key are
/// refused with 0A000, changing nothing.
#[tokio::test]
async fn writes_partitions_or_keys_would_make_inexact_are_refused() {
    let db = prepare("at_partitions").await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE tp (id int PRIMARY KEY, v text) PARTITION BY LIST (id);
             CREATE TABLE tp1 PARTITION OF tp FOR VALUES IN (1, 2, 3);
             CREATE TABLE tp2 PARTITION OF tp FOR VALUES IN (10, 20, 30);
             INSERT INTO tp VALUES (1, 'a'), (10, 'b');
             CREATE TABLE fired (note text);
             CREATE FUNCTION note_it() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO fired VALUES ('fired'); NEW.v := NEW.v || '+trg'; RETURN NEW; END $$;
             CREATE TRIGGER on_tp2 BEFORE UPDATE OR INSERT ON tp2 FOR EACH ROW EXECUTE FUNCTION note_it();
             CREATE TABLE kid (id int PRIMARY KEY, pid int REFERENCES tp1 (id) ON DELETE CASCADE);
             INSERT INTO kid VALUES (100, 1);
             CREATE TABLE gp (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
             CREATE TABLE gp1 PARTITION OF gp FOR VALUES FROM (0) TO (100);
             INSERT INTO gp VALUES (9, 'g');
             CREATE TABLE np (id int, v text) PARTITION BY LIST (id);
             CREATE TABLE np1 PARTITION OF np (PRIMARY KEY (id)) FOR VALUES IN (1, 2);
             INSERT INTO np VALUES (1, 'n');
             CREATE TABLE dpk (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v text);
             INSERT INTO dpk VALUES (1, 'old');
             CREATE TABLE gk (a int, b int, k int GENERATED ALWAYS AS (a + b) STORED PRIMARY KEY, v text);
             INSERT INTO gk (a, b, v) VALUES (1, 1, 'two');",
        )
        .await
        .unwrap();
    let tables = ["tp", "fired", "kid", "gp", "np", "dpk", "gk"];
    let before = rows_of_each(&direct, &tables).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    for sql in [
        "UPDATE tp SET v = 'via parent' WHERE id = 10",
        "INSERT INTO tp VALUES (20, 'new')",
        "DELETE FROM tp WHERE id = 1",
        "INSERT INTO gp VALUES (9, 'x') ON CONFLICT (id) DO UPDATE SET v = excluded.v",
        "UPDATE np1 SET v = 'x' WHERE id = 1",
        "INSERT INTO dpk VALUES (1, 'new')",
        "DELETE FROM dpk WHERE v = 'old'",
        "UPDATE gk SET a = 2 WHERE k = 2",
    ] {
        let err = a.simple_query(sql).await.expect_err(sql);
        assert_eq!(
            err.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {err:?}"
        );
    }
    // Still captured: the upsert into the partition, and a delete from the table with a
    // generated key.
    a.batch_execute(
        "INSERT INTO gp1 VALUES (9, 'y') ON CONFLICT (id) DO UPDATE SET v = excluded.v;
         DELETE FROM gk WHERE k = 2",
    )
    .await
    .unwrap();
    rolled_back(&a).await;
    let after = rows_of_each(&direct, &tables).await;
    assert_eq!(after, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// DDL run on another connection after tandem read a table's metadata: a column added
/// would be missing from the before image, and the rollback would lose its values. The
/// write that returns rows of the changed table is undone with 40001; its retry is
/// captured whole.
#[tokio::test]
async fn a_column_added_elsewhere_is_never_missing_from_an_image() {
    let db = prepare("at_ddl_elsewhere").await;
    let direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    // The metadata is read and cached.
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    rolled_back(&a).await;
    for (label, write) in [
        ("delete", "DELETE FROM accounts WHERE id = 2"),
        ("update", "UPDATE accounts SET balance = 7 WHERE id = 3"),
        ("insert", "INSERT INTO accounts (id, balance) VALUES (9, 9)"),
    ] {
        direct
            .batch_execute(&format!(
                "DO $$ BEGIN EXECUTE 'ALTER TABLE accounts ADD COLUMN w_{label} text'; END $$;
                 UPDATE accounts SET w_{label} = 'precious ' || id"
            ))
            .await
            .unwrap();
        let before = rows_of(&direct, "accounts").await;
        one(&a, "SELECT tandem_begin(30000)").await.unwrap();
        let err = a.simple_query(write).await.expect_err(label);
        assert_eq!(
            err.code(),
            Some(&SqlState::T_R_SERIALIZATION_FAILURE),
            "{label}: {err:?}"
        );
        assert_eq!(rows_of(&direct, "accounts").await, before, "{label}");
        a.batch_execute(write).await.unwrap();
        rolled_back(&a).await;
        assert_eq!(rows_of(&direct, "accounts").await, before, "{label}");
    }
    // Inside the client's block, the block fails as at any error: nothing the client
    // sends after it runs outside the transaction, and its ROLLBACK undoes it all.
    direct
        .batch_execute("ALTER TABLE accounts ALTER COLUMN balance TYPE numeric")
        .await
        .unwrap();
    let before = rows_of(&direct, "accounts").await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let err = a
        .simple_query("UPDATE accounts SET balance = 7 WHERE id = 3")
        .await
        .expect_err("a table changed elsewhere");
    assert_eq!(
        err.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE),
        "{err:?}"
    );
    let err = a
        .simple_query("UPDATE accounts SET balance = 8 WHERE id = 4")
        .await
        .expect_err("a failed block");
    assert_eq!(
        err.code(),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "{err:?}"
    );
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        one(&a, "SELECT tandem_commit()").await.unwrap().as_deref(),
        Some("Committed")
    );
    assert_eq!(rows_of(&direct, "accounts").await, before);

    // A multi-statement query sent outside a block runs in a block of tandem's, which
    // ends with it, as PostgreSQL ends a failed query: the session is idle after.
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute("UPDATE accounts SET balance = 7 WHERE id = 3")
        .await
        .unwrap();
    rolled_back(&a).await;
    direct
        .batch_execute("ALTER TABLE accounts ALTER COLUMN balance TYPE bigint")
        .await
        .unwrap();
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    let err = a
        .simple_query("UPDATE accounts SET balance = 7 WHERE id = 3; SELECT 1")
        .await
        .expect_err("a table changed elsewhere");
    assert_eq!(
        err.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE),
        "{err:?}"
    );
    assert!(
        a.is_closed() || a.simple_query("SELECT 1").await.is_ok(),
        "the session is idle"
    );
    rolled_back(&a).await;
    assert_eq!(rows_of(&direct, "accounts").await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// An upsert's key is read as the INSERT stores it (`2.4` is 2 in an int key), so the
/// row it updates has its before image and the rollback restores it; an upsert whose
/// DO UPDATE would change the key is refused like any key update, and a TABLESAMPLE
/// choosing rows like random().
#[tokio::test]
async fn upserts_are_read_by_the_keys_they_store_and_may_not_change_them() {
    let db = prepare("at_upsert_cast").await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute(
        "INSERT INTO accounts (id, balance) VALUES (2.4, 1) ON CONFLICT (id) DO UPDATE SET balance = 77",
    )
    .await
    .unwrap();
    a.execute(
        // 2.6 as a float8 parameter: stored in the int key as 3.
        "INSERT INTO accounts (id, balance) VALUES ($1::float8, 1) ON CONFLICT (id) DO UPDATE SET balance = 78",
        &[&2.6f64],
    )
    .await
    .unwrap();
    // Setting the key to itself, as ORMs write every column, changes no key.
    a.batch_execute(
        "INSERT INTO accounts AS t (id, balance) VALUES (4, 1) ON CONFLICT (id) DO UPDATE SET id = excluded.id, balance = 79, note = t.note",
    )
    .await
    .unwrap();
    for refused in [
        "INSERT INTO accounts (id, balance) VALUES (3, 1) ON CONFLICT (id) DO UPDATE SET id = 100",
        "INSERT INTO accounts (id, balance) VALUES (3, 1) ON CONFLICT (id) DO UPDATE SET id = excluded.id + 100",
        "UPDATE accounts SET balance = 0 WHERE id IN (SELECT id FROM accounts TABLESAMPLE BERNOULLI (50))",
    ] {
        let err = a.simple_query(refused).await.expect_err(refused);
        assert_eq!(
            err.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{refused}: {err:?}"
        );
    }
    let balances: Vec<i64> = direct
        .query(
            "SELECT balance FROM accounts WHERE id IN (2, 3, 4) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(balances, [77, 78, 79]);
    rolled_back(&a).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A database without undo_log: a branch's commit fails (the client hears to run
/// `tandem migrate`), and its global rollback, finding no undo_log, is done at once
/// with the locks released rather than retried for ever.
#[tokio::test]
async fn a_branch_in_a_database_without_undo_log_rolls_back_at_once() {
    let db = TestDb::create("at_no_undo_log").await;
    let direct = db.direct().await;
    direct
        .batch_execute("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint); INSERT INTO accounts VALUES (1, 10)")
        .await
        .unwrap();
    let before = dump(&direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    let err = a
        .simple_query("UPDATE accounts SET balance = 0 WHERE id = 1")
        .await
        .expect_err("no undo_log");
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("tandem migrate")),
        "{err:?}"
    );
    rolled_back(&a).await;
    assert_eq!(dump(&direct).await, before);
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");

    // An undo_log only the client's search_path finds holds rows no rollback would
    // read (phase 2 looks with tandem's own connection): the branch cannot commit.
    db.migrate().await;
    direct
        .batch_execute("CREATE SCHEMA tenant; ALTER TABLE public.undo_log SET SCHEMA tenant")
        .await
        .unwrap();
    a.batch_execute("SET search_path = tenant, public")
        .await
        .unwrap();
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    let err = a
        .simple_query("UPDATE accounts SET balance = 0 WHERE id = 1")
        .await
        .expect_err("no undo_log for tandem's own connection");
    assert_eq!(
        err.code(),
        Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE),
        "{err:?}"
    );
    rolled_back(&a).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Keys their type calls equal though their bytes differ take one global lock: numeric
/// `1.0` and `1.00`, interval `1 day` and `24 hours`. Otherwise a second global
/// transaction could insert the key a first one deleted, and the first one's rollback
/// would stop at it. A key a nondeterministic collation compares cannot be named by its
/// bytes at all: refused.
#[tokio::test]
async fn keys_their_type_calls_equal_take_one_global_lock() {
    let db = prepare("at_equal_keys").await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE nk (k numeric PRIMARY KEY, n int); INSERT INTO nk VALUES (1.0, 1), (2, 2);
             CREATE TABLE ik (k interval PRIMARY KEY, n int); INSERT INTO ik VALUES ('1 day', 1);
             CREATE COLLATION IF NOT EXISTS loose (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             CREATE TABLE ck (k text COLLATE loose PRIMARY KEY, n int); INSERT INTO ck VALUES ('abc', 1);
             CREATE DOMAIN plain_number AS numeric;
             CREATE TABLE dk (k plain_number PRIMARY KEY, n int); INSERT INTO dk VALUES (1.0, 1);
             CREATE TABLE ak (k numeric[] PRIMARY KEY, n int); INSERT INTO ak VALUES ('{1.0}', 1);
             CREATE TABLE jk (k jsonb PRIMARY KEY, n int); INSERT INTO jk VALUES ('{\"a\": 1.0}', 1);
             CREATE TABLE bk (k bpchar PRIMARY KEY, n int); INSERT INTO bk VALUES ('a', 1);
             CREATE TABLE fk (k char(3) PRIMARY KEY, n int); INSERT INTO fk VALUES ('a', 1);
             CREATE TABLE vk (id int PRIMARY KEY, v int2vector); INSERT INTO vk VALUES (1, '');
             CREATE TABLE xk (id int PRIMARY KEY, doc xml, n int);
             INSERT INTO xk VALUES (1, '<?xml version=\"1.0\" encoding=\"UTF-8\"?><a>x</a>', 1);
             CREATE DOMAIN country AS char(2);
             CREATE TABLE dck (k country PRIMARY KEY, n int); INSERT INTO dck VALUES ('a', 1);
             CREATE TABLE ack (k char(2)[] PRIMARY KEY, n int); INSERT INTO ack VALUES ('{a}', 1);
             CREATE DOMAIN loose_country AS bpchar;
             CREATE TABLE lck (k loose_country PRIMARY KEY, n int); INSERT INTO lck VALUES ('a', 1);",
        )
        .await
        .unwrap();
    let tables = [
        "nk", "ik", "ck", "dk", "ak", "jk", "bk", "fk", "vk", "xk", "dck", "ack", "lck",
    ];
    let before = rows_of_each(&direct, &tables).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute("DELETE FROM nk WHERE k = 1; DELETE FROM ik WHERE k = '1 day'")
        .await
        .unwrap();
    let b = tandem.connect(&db.name).await;
    one(&b, "SELECT tandem_begin(60000)").await.unwrap();
    for insert in [
        "INSERT INTO nk VALUES (1.00, 5)",
        "INSERT INTO ik VALUES ('24 hours', 5)",
    ] {
        let err = b.simple_query(insert).await.expect_err(insert);
        assert!(
            [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::LOCK_NOT_AVAILABLE
            ]
            .contains(err.code().unwrap_or(&SqlState::INTERNAL_ERROR)),
            "{insert}: {err:?}"
        );
    }
    // Compared loosely, or numeric inside a domain or an array (not seen into); jsonb,
    // whose numbers compare by value; character without a length, which compares
    // without the trailing spaces it keeps. And a column whose binary form does not
    // come back (an empty int2vector's), where images are kept.
    for loose in [
        "UPDATE ck SET n = 2 WHERE k = 'ABC'",
        "UPDATE dk SET n = 2 WHERE k = 1",
        "UPDATE ak SET n = 2 WHERE k = '{1}'",
        "UPDATE jk SET n = 2",
        "UPDATE bk SET n = 2",
        "UPDATE vk SET v = '1 2' WHERE id = 1",
        "UPDATE xk SET n = 2 WHERE id = 1",
        "UPDATE lck SET n = 2",
    ] {
        let err = b.simple_query(loose).await.expect_err(loose);
        assert_eq!(
            err.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{loose}: {err:?}"
        );
    }
    // A character key with a length (its own, its domain's, its array's) is padded to
    // it: its bytes are its identity.
    b.batch_execute(
        "UPDATE fk SET n = 2 WHERE k = 'a  '; UPDATE dck SET n = 2 WHERE k = 'a';
         UPDATE ack SET n = 2 WHERE k = '{a}'",
    )
    .await
    .unwrap();
    rolled_back(&a).await;
    rolled_back(&b).await;
    let after = rows_of_each(&direct, &tables).await;
    assert_eq!(after, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A replay waiting on a row lock while the proxy's phase-2 stream is replaced (a
/// database used for the first time adds its resource): its outcome, which the old
/// stream can no longer carry, answers the next delivery, rather than a second replay
/// that would find the undo row gone and leave a GlobalFinished marker.
#[tokio::test]
async fn a_replay_outcome_outlives_the_stream_it_was_delivered_on() {
    let db = prepare("replay_stream_swap").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let before = dump(&db.direct().await).await;
    let (a, xid, holder, sent) = a_replay_waiting_on_row_3(&db, &tandem, &lockserver).await;
    // A database first used now: its branch adds a resource, and a new stream.
    let other = prepare("replay_stream_swap_other").await;
    let b = tandem.connect(&other.name).await;
    one(&b, "SELECT tandem_begin(60000)").await.unwrap();
    b.batch_execute("UPDATE accounts SET balance = 0 WHERE id = 1")
        .await
        .unwrap();
    rolled_back(&b).await;
    // The branch delivered again, on the new stream, while the replay still waits.
    tandem_tests::harness::eventually_within(
        "the branch delivered again",
        std::time::Duration::from_secs(30),
        || async {
            lockserver
                .metric("tandem_lockserver_phase2_sent_total")
                .await
                .max(0.0)
                >= sent + 4.0
        },
    )
    .await;
    rolled_back_once_released(&a, &xid, &holder, &before).await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// The branch follows savepoints as the server runs them: a RELEASE that fails in a
/// failed block releases nothing, a savepoint statement behind a failing one in the
/// same query never runs, a name PostgreSQL cuts to 63 bytes is one savepoint, and
/// `ROLLBACK AND CHAIN` leaves no captured row behind. Each transaction is then rolled
/// back globally, exactly.
#[tokio::test]
async fn savepoints_are_followed_as_the_server_runs_them() {
    let db = prepare("at_savepoints_followed").await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    let long = "s".repeat(63);
    let scripts: Vec<Vec<String>> = vec![
        vec![
            "BEGIN".into(),
            "UPDATE accounts SET balance = 1 WHERE id = 1".into(),
            "SAVEPOINT a".into(),
            "UPDATE accounts SET balance = 2 WHERE id = 2".into(),
            "!SELECT 1/0".into(),
            "!RELEASE a".into(),
            "ROLLBACK TO a".into(),
            "UPDATE accounts SET balance = 3 WHERE id = 3".into(),
            "COMMIT".into(),
        ],
        vec![
            "BEGIN".into(),
            "UPDATE accounts SET balance = 1 WHERE id = 1".into(),
            "SAVEPOINT a".into(),
            "UPDATE accounts SET balance = 2 WHERE id = 2".into(),
            "SAVEPOINT c".into(),
            "UPDATE accounts SET balance = 3 WHERE id = 3".into(),
            "!SELECT 1/0; ROLLBACK TO a".into(),
            "ROLLBACK TO c".into(),
            "COMMIT".into(),
        ],
        vec![
            "BEGIN".into(),
            "UPDATE accounts SET balance = 1 WHERE id = 1".into(),
            format!("SAVEPOINT {long}_one"),
            "UPDATE accounts SET balance = 2 WHERE id = 2".into(),
            format!("ROLLBACK TO {long}_two"),
            "COMMIT".into(),
        ],
        vec![
            "BEGIN".into(),
            "UPDATE accounts SET balance = 1 WHERE id = 1".into(),
            "ROLLBACK AND CHAIN".into(),
            "UPDATE accounts SET balance = 2 WHERE id = 2".into(),
            "COMMIT".into(),
        ],
    ];
    for script in &scripts {
        one(&a, "SELECT tandem_begin(30000)").await.unwrap();
        for sql in script {
            match sql.strip_prefix('!') {
                Some(failing) => {
                    a.batch_execute(failing).await.expect_err(failing);
                }
                None => a
                    .batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e:?}")),
            }
        }
        assert_ne!(
            dump(&direct).await,
            before,
            "{script:?} committed something"
        );
        rolled_back(&a).await;
        assert_eq!(dump(&direct).await, before, "{script:?}");
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A primary key of 32 text columns, each value 64 bytes (hex in the lock key, short
/// of the hashed length): its lock key would pass the lockserver's bound, and is named
/// by one hash instead. Writes are captured and roll back exactly; the same row
/// conflicts, another does not.
#[tokio::test]
async fn rows_of_a_key_of_many_wide_columns_lock_and_roll_back() {
    let db = prepare("at_wide_key").await;
    let direct = db.direct().await;
    let columns: Vec<String> = (0..32).map(|i| format!("c{i}")).collect();
    direct
        .batch_execute(&format!(
            "CREATE TABLE wide ({} text, v text, PRIMARY KEY ({}));
             INSERT INTO wide SELECT {}, 'a';
             INSERT INTO wide SELECT {}, 'b';",
            columns.join(" text, "),
            columns.join(", "),
            vec!["repeat('a', 64)"; 32].join(", "),
            [vec!["repeat('a', 64)"; 31], vec!["repeat('b', 64)"]]
                .concat()
                .join(", "),
        ))
        .await
        .unwrap();
    let before = rows_of(&direct, "wide").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_with(|c| {
        c.lockserver.endpoint = format!("http://{}", lockserver.grpc);
        c.lockserver.lock_wait_ms = 300;
    })
    .await;
    let a = tandem.connect(&db.name).await;
    let b = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute("UPDATE wide SET v = 'x' WHERE c31 LIKE 'a%'")
        .await
        .unwrap();
    one(&b, "SELECT tandem_begin(30000)").await.unwrap();
    let err = b
        .batch_execute("UPDATE wide SET v = 'y' WHERE c31 LIKE 'a%'")
        .await
        .expect_err("the same row is held");
    assert!(
        matches!(
            err.code(),
            Some(&SqlState::T_R_SERIALIZATION_FAILURE | &SqlState::LOCK_NOT_AVAILABLE)
        ),
        "{err}"
    );
    b.batch_execute("UPDATE wide SET v = 'y' WHERE c31 LIKE 'b%'")
        .await
        .expect("another row is free");
    rolled_back(&b).await;
    rolled_back(&a).await;
    assert_eq!(rows_of(&direct, "wide").await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A second undo_log on the search_path of tandem's own connections, ahead of the one a
/// branch wrote its row into (a user's table of that name in a schema named after the
/// role), does not make a rollback find no row, mark the branch done and leave its
/// change in place: the row is looked for in each, and undone from where it is.
#[tokio::test]
async fn a_rollback_finds_its_undo_row_behind_another_undo_log() {
    let db = prepare("two_undo_logs").await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute("UPDATE accounts SET balance = balance + 100 WHERE id = 1")
        .await
        .unwrap();
    direct
        .batch_execute(
            "CREATE SCHEMA postgres; CREATE TABLE postgres.undo_log (LIKE public.undo_log INCLUDING ALL)",
        )
        .await
        .unwrap();
    rolled_back(&a).await;
    assert_eq!(dump(&direct).await, before, "the change is undone");
    for table in ["postgres.undo_log", "public.undo_log"] {
        let rows: i64 = direct
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            rows, 0,
            "{table}: the undo row is gone, and no marker written"
        );
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A branch's COMMIT whose registration cannot reach the lockserver rolls its local
/// transaction back and says so with 40001, which invites running the transaction again
/// (as MySQL's front end answers 1213), not 58000: over the simple protocol, as COMMIT
/// AND CHAIN, and over the extended protocol (pgJDBC's commit()).
#[tokio::test]
async fn a_commit_whose_registration_cannot_reach_the_lockserver_is_rolled_back_with_40001() {
    let db = prepare("register_unreachable").await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    for commit in ["COMMIT", "COMMIT AND CHAIN", "extended COMMIT"] {
        let lockserver = TestLockserver::start(Kind::Embedded).await;
        let tandem = Tandem::start_for(&lockserver).await;
        let client = tandem.connect(&db.name).await;
        client
            .simple_query("SELECT tandem_begin(30000)")
            .await
            .unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        client
            .batch_execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
            .await
            .unwrap();
        lockserver.stop().await;
        let answered = async {
            match commit {
                "extended COMMIT" => client.execute("COMMIT", &[]).await.map(drop),
                sql => client.batch_execute(sql).await,
            }
        };
        let e = tokio::time::timeout(std::time::Duration::from_secs(30), answered)
            .await
            .expect("answered")
            .unwrap_err();
        let db_error = e.as_db_error().expect("a server error");
        assert_eq!(db_error.code().code(), "40001", "{commit}: {db_error:?}");
        assert!(
            db_error.message().contains("rolled back at COMMIT"),
            "{commit}: {db_error:?}"
        );
        assert_eq!(dump(&direct).await, before, "{commit}: rolled back");
        client.batch_execute("ROLLBACK").await.unwrap();
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1, "{commit}: the session goes on");
        drop(client);
        tandem.shutdown().await;
    }
}

/// The statement the backend `pid` received last.
async fn last_statement(direct: &Client, pid: i32) -> String {
    direct
        .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .get(0)
}

/// In a failed transaction block PostgreSQL refuses every statement but one that ends
/// the block or rolls back to a savepoint (25P02), and nothing runs: tandem captures
/// nothing there, refuses nothing of its own, and sends nothing of its own into the
/// block (a catalog lookup there once met a PostgreSQL crash). A ROLLBACK TO SAVEPOINT
/// at the head of a Query revives the block, and the write behind it is captured (it
/// once ran uncaptured, and stayed after the global rollback).
#[tokio::test]
async fn writes_in_a_failed_block_get_postgresqls_own_refusal() {
    let db = prepare("at_failed_block").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let client = tandem.connect(&db.name).await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    one(&client, "SELECT tandem_begin(30000)").await.unwrap();
    client
        .batch_execute("BEGIN; UPDATE accounts SET balance = 0 WHERE id = 2; SAVEPOINT s")
        .await
        .unwrap();
    client.batch_execute("SELECT 1/0").await.unwrap_err();
    for write in [
        "UPDATE nokey SET v = 1",
        "DELETE FROM accounts WHERE id = 1 RETURNING *",
        "INSERT INTO accounts (id, balance) VALUES (99, 1); UPDATE accounts SET balance = 1",
    ] {
        let e = client.batch_execute(write).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
            "{write}: {e:?}"
        );
        let last = last_statement(&direct, pid).await;
        assert_eq!(
            last, write,
            "the backend got the client's statement, and last"
        );
    }
    // Over the extended protocol too: Parse, Bind, Execute and Sync in one batch.
    {
        use super::control::{bind_body, parse_body};
        use tandem_tests::raw_pg::{RawPg, frame};
        let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
        let replies = raw.simple("SELECT pg_backend_pid()").await;
        let row = replies.iter().find(|m| m.tag == b'D').expect("a pid");
        let raw_pid: i32 = String::from_utf8_lossy(&row.body[6..]).parse().unwrap();
        raw.run_each(&["SELECT tandem_begin(30000)", "BEGIN"]).await;
        raw.simple("SELECT 1/0").await;
        let write = "UPDATE accounts SET balance = 5 WHERE id = 4";
        let mut batch = frame(b'P', &parse_body("", write));
        batch.extend(frame(b'B', &bind_body("")));
        batch.extend(frame(b'E', b"\0\0\0\0\0"));
        batch.extend(frame(b'S', b""));
        raw.send(&batch).await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(
            replies[0].sqlstate().as_deref(),
            Some("25P02"),
            "{replies:?}"
        );
        let last = last_statement(&direct, raw_pid).await;
        assert_eq!(
            last, write,
            "extended: the backend got the client's statement, and last"
        );
        raw.run_each(&["ROLLBACK"]).await;
        raw.simple("SELECT tandem_rollback()").await;
    }
    // The block comes back to life: captured as before.
    client
        .batch_execute("ROLLBACK TO SAVEPOINT s; UPDATE accounts SET balance = 7 WHERE id = 3")
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    let balances: Vec<i64> = direct
        .query(
            "SELECT balance FROM accounts WHERE id IN (1, 2, 3, 99) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(balances, [1000, 0, 7]);
    rolled_back(&client).await;
    assert_eq!(dump(&direct).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}
