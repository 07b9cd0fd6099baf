//! Whatever a client sends arrives as if it had talked to PostgreSQL directly.

use tandem_tests::harness::{Tandem, TestDb};
use tandem_tests::raw_pg::RawPg;

#[tokio::test]
async fn simple_and_extended_queries_return_what_direct_returns() {
    let db = TestDb::create("relay").await;
    let tandem = Tandem::start().await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, name text, amount numeric(12,3), at timestamptz);
             INSERT INTO t SELECT g, 'name ' || g, g * 1.5, '2024-01-01'::timestamptz + g * interval '1 hour'
             FROM generate_series(1, 500) g;",
        )
        .await
        .unwrap();
    let proxied = tandem.connect(&db.name).await;

    let sql = "SELECT id, name, amount::text, at::text FROM t ORDER BY id";
    let want: Vec<(i32, String, String, String)> = direct
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    // Extended protocol, binary results.
    let got: Vec<(i32, String, String, String)> = proxied
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.len(), 500);

    // Simple protocol, text results, several statements in one Query.
    let messages = proxied
        .simple_query("SELECT count(*) FROM t; SELECT name FROM t WHERE id = 7")
        .await
        .unwrap();
    let rows: Vec<String> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec!["500".to_owned(), "name 7".to_owned()]);
    drop(proxied);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn binary_parameters_and_results_round_trip_exactly() {
    let db = TestDb::create("binary").await;
    let tandem = Tandem::start().await;
    let client = tandem.connect(&db.name).await;
    client
        .batch_execute(
            "CREATE TABLE b (id int PRIMARY KEY, f8 float8, bytes bytea, js jsonb, arr int4[])",
        )
        .await
        .unwrap();
    let blob: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let js = serde_json::json!({"a": [1, 2, {"b": "ü\u{1F600}"}]});
    let arr: Vec<i32> = vec![i32::MIN, -1, 0, 1, i32::MAX];
    let insert = client
        .prepare("INSERT INTO b VALUES ($1, $2, $3, $4, $5)")
        .await
        .unwrap();
    for (id, f) in [(1, f64::NAN), (2, -0.0), (3, f64::INFINITY), (4, 1.0e-300)] {
        client
            .execute(&insert, &[&id, &f, &blob, &js, &arr])
            .await
            .unwrap();
    }
    let rows = client
        .query("SELECT id, f8, bytes, js, arr FROM b ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    let f: Vec<u64> = rows.iter().map(|r| r.get::<_, f64>(1).to_bits()).collect();
    assert_eq!(
        f,
        vec![
            f64::NAN.to_bits(),
            (-0.0f64).to_bits(),
            f64::INFINITY.to_bits(),
            1.0e-300f64.to_bits()
        ]
    );
    for row in &rows {
        assert_eq!(row.get::<_, Vec<u8>>(2), blob);
        assert_eq!(row.get::<_, serde_json::Value>(3), js);
        assert_eq!(row.get::<_, Vec<i32>>(4), arr);
    }
    drop(client);
    tandem.shutdown().await;
}

#[tokio::test]
async fn a_ten_megabyte_value_passes_both_ways() {
    let db = TestDb::create("big").await;
    let tandem = Tandem::start().await;
    let client = tandem.connect(&db.name).await;
    client
        .batch_execute("CREATE TABLE big (id int PRIMARY KEY, payload bytea)")
        .await
        .unwrap();
    let payload: Vec<u8> = (0..12 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    client
        .execute("INSERT INTO big VALUES (1, $1)", &[&payload])
        .await
        .unwrap();
    let row = client
        .query_one("SELECT payload, length(payload) FROM big WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(1) as usize, payload.len());
    assert!(row.get::<_, Vec<u8>>(0) == payload, "payload differs");
    // And the same value as text (hex), through the simple protocol.
    let text = client
        .simple_query("SELECT md5(payload) FROM big")
        .await
        .unwrap();
    let direct = db.direct().await;
    let want: String = direct
        .query_one("SELECT md5(payload) FROM big", &[])
        .await
        .unwrap()
        .get(0);
    match &text[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => assert_eq!(r.get(0), Some(want.as_str())),
        other => panic!("expected a row, got {other:?}"),
    }
    drop(client);
    tandem.shutdown().await;
}

#[tokio::test]
async fn prepared_statements_are_reused_across_transactions() {
    let db = TestDb::create("prepared").await;
    let tandem = Tandem::start().await;
    let mut client = tandem.connect(&db.name).await;
    client
        .batch_execute("CREATE TABLE c (id int PRIMARY KEY, n int NOT NULL)")
        .await
        .unwrap();
    let insert = client
        .prepare("INSERT INTO c VALUES ($1, $2)")
        .await
        .unwrap();
    let bump = client
        .prepare("UPDATE c SET n = n + $2 WHERE id = $1")
        .await
        .unwrap();
    for round in 0..20 {
        let tx = client.transaction().await.unwrap();
        if round == 0 {
            for id in 0..10 {
                tx.execute(&insert, &[&id, &0]).await.unwrap();
            }
        }
        for id in 0..10 {
            tx.execute(&bump, &[&id, &(round + 1)]).await.unwrap();
        }
        if round % 5 == 4 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
        }
    }
    // Rounds 5, 10, 15 and 20 (values 5, 10, 15, 20) were rolled back.
    let expected: i32 = (1..=20).filter(|r| r % 5 != 0).sum();
    let direct = db.direct().await;
    let rows = direct
        .query("SELECT n FROM c ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 10);
    for row in rows {
        assert_eq!(row.get::<_, i32>(0), expected);
    }
    drop(client);
    tandem.shutdown().await;
}

#[tokio::test]
async fn portal_suspension_returns_rows_in_chunks() {
    let db = TestDb::create("portal").await;
    let tandem = Tandem::start().await;
    let mut client = tandem.connect(&db.name).await;
    let tx = client.transaction().await.unwrap();
    let stmt = tx
        .prepare("SELECT g FROM generate_series(1, 25) g")
        .await
        .unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let mut seen = Vec::new();
    let mut chunks = 0;
    loop {
        let rows = tx.query_portal(&portal, 10).await.unwrap();
        if rows.is_empty() {
            break;
        }
        chunks += 1;
        seen.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    tx.commit().await.unwrap();
    assert_eq!(chunks, 3);
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    drop(client);
    tandem.shutdown().await;
}

#[tokio::test]
async fn errors_keep_their_sqlstate_and_the_session_recovers() {
    let db = TestDb::create("errors").await;
    let tandem = Tandem::start().await;
    let client = tandem.connect(&db.name).await;
    client
        .batch_execute("CREATE TABLE u (id int PRIMARY KEY)")
        .await
        .unwrap();
    client
        .execute("INSERT INTO u VALUES (1)", &[])
        .await
        .unwrap();
    let err = client
        .execute("INSERT INTO u VALUES (1)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    let err = client.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::SYNTAX_ERROR)
    );
    let err = client.prepare("SELECT * FROM missing").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
    );
    // Inside a transaction: the failed state is relayed, then ROLLBACK recovers.
    client.batch_execute("BEGIN").await.unwrap();
    assert!(client.batch_execute("SELECT 1/0").await.is_err());
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM u", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    drop(client);
    tandem.shutdown().await;
}

#[tokio::test]
async fn parameter_status_and_backend_key_reach_the_client() {
    let db = TestDb::create("params").await;
    let tandem = Tandem::start().await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let names: Vec<&str> = raw.params.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "server_version",
        "client_encoding",
        "DateStyle",
        "TimeZone",
        "integer_datetimes",
    ] {
        assert!(names.contains(&expected), "missing {expected} in {names:?}");
    }
    // The key is tandem's own, not the backend's pid.
    let (pid, _) = raw.key.expect("BackendKeyData");
    raw.query("SELECT pg_backend_pid()").await;
    let msgs = raw.recv_until(b'Z').await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    let backend_pid: i32 = String::from_utf8_lossy(&row.body[6..]).parse().unwrap();
    assert_ne!(pid, backend_pid);
    // A later SET is reported as ParameterStatus, relayed as is.
    raw.query("SET application_name = 'tandem-test'").await;
    let msgs = raw.recv_until(b'Z').await;
    let status = msgs
        .iter()
        .find(|m| m.tag == b'S')
        .expect("ParameterStatus");
    assert_eq!(
        status.strings()[..2],
        ["application_name".to_owned(), "tandem-test".to_owned()]
    );
    raw.send_msg(b'X', &[]).await;
    assert!(
        raw.recv().await.is_none(),
        "Terminate closes the connection"
    );
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn a_unix_socket_upstream_relays_the_same() {
    let socket = std::env::var("TANDEM_TEST_PG_SOCKET").unwrap_or_else(|_| {
        panic!(
            "TANDEM_TEST_PG_SOCKET is not set: run `bash tests/run.sh`, or export it as the \
             server's socket path, e.g. /var/run/postgresql/.s.PGSQL.5432"
        )
    });
    let db = TestDb::create("unix").await;
    let tandem = Tandem::start_with(|c| c.postgres[0].upstream = socket).await;
    let client = tandem.connect(&db.name).await;
    let row = client
        .query_one(
            "SELECT $1::text, inet_server_addr() IS NULL",
            &[&"via unix"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "via unix");
    assert!(
        row.get::<_, bool>(1),
        "the backend connection is not a unix socket"
    );
    drop(client);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}

/// PostgreSQL ignores CopyDone and CopyFail outside copy-in mode, stray in the middle
/// of an extended-protocol batch too: the batch runs, and the session goes on.
#[tokio::test]
async fn a_stray_copy_done_or_copy_fail_in_a_batch_is_ignored_as_directly() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::{frame, reply_tags};
    let db = TestDb::create("stray_copy_end").await;
    let tandem = Tandem::start().await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    for stray in [frame(b'c', b""), frame(b'f', b"gone\0")] {
        for at in 0..3 {
            let mut batch = Vec::new();
            for (i, message) in [
                frame(b'P', &parse_body("", "SELECT 1")),
                frame(b'B', &bind_body("")),
                frame(b'E', b"\0\0\0\0\0"),
            ]
            .into_iter()
            .enumerate()
            {
                batch.extend(message);
                if i == at {
                    batch.extend(&stray);
                }
            }
            batch.extend(frame(b'B', &bind_body("")));
            batch.extend(frame(b'E', b"\0\0\0\0\0"));
            batch.extend(frame(b'S', b""));
            raw.send(&batch).await;
            let replies = raw.recv_until(b'Z').await;
            assert_eq!(
                reply_tags(&replies).into_iter().collect::<String>(),
                "12DC2DCZ",
                "stray {:?} after message {at}: {replies:?}",
                stray[0] as char
            );
        }
    }
    raw.query("SELECT 2").await;
    assert_eq!(
        reply_tags(&raw.recv_until(b'Z').await)
            .into_iter()
            .collect::<String>(),
        "TDCZ"
    );
    drop(raw);
    tandem.shutdown().await;
}
