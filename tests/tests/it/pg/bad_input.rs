//! Bad input gets a clear error, the process and other sessions keep working, and no
//! connection leaks.

use tandem_tests::expect_msg;
use tandem_tests::harness::{Tandem, TestDb, eventually};
use tandem_tests::lockserver::{Kind, TestLockserver};
use tandem_tests::raw_pg::{RawPg, frame};
use tokio::io::AsyncWriteExt;

/// Asserts that the connection ends with a FATAL error carrying `sqlstate`.
async fn expect_fatal(client: &mut RawPg, sqlstate: &str) {
    let msgs = client.recv_to_close().await;
    let fatal = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("no ErrorResponse before close: {msgs:?}"));
    assert_eq!(
        fatal.sqlstate().as_deref(),
        Some(sqlstate),
        "{:?}",
        fatal.field(b'M')
    );
    assert_eq!(fatal.field(b'V').as_deref(), Some("FATAL"));
}

#[tokio::test]
async fn malformed_messages_close_only_their_own_session() {
    let db = TestDb::create("malformed").await;
    let tandem = Tandem::start().await;
    let bystander = tandem.connect(&db.name).await;

    // Extended-protocol messages whose bodies do not decode: as PostgreSQL does, an
    // error (08P01), the rest of the batch skipped, and the session goes on. Outside
    // a global transaction and inside one. tandem closed the session once.
    let mut short_bind = b"\0\0".to_vec();
    short_bind.extend_from_slice(&0i16.to_be_bytes());
    short_bind.extend_from_slice(&1i16.to_be_bytes());
    short_bind.extend_from_slice(&1_000i32.to_be_bytes());
    short_bind.extend_from_slice(b"short");
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let at = Tandem::start_for(&lockserver).await;
    for (port, begin) in [(tandem.pg, None), (at.pg, Some("SELECT tandem_begin()"))] {
        let mut client = RawPg::startup(port, "postgres", &db.name).await;
        if let Some(begin) = begin {
            client.run_each(&[begin]).await;
        }
        for (tag, body) in [
            (b'B', &short_bind[..]),
            (b'P', b"s\0SELECT 1\0"),
            (b'C', b"Xs\0"),
            (b'D', b"P"),
            (b'E', b"\0\0"),
        ] {
            let mut batch = frame(tag, body);
            batch.extend(frame(b'Q', b"SELECT 1\0"));
            batch.extend(frame(b'S', b""));
            batch.extend(frame(b'Q', b"SELECT 42\0"));
            client.send(&batch).await;
            let replies = client.recv_until(b'Z').await;
            let tags: String = replies.iter().map(|m| m.tag as char).collect();
            assert_eq!(tags, "EZ", "{}: {replies:?}", tag as char);
            assert_eq!(replies[0].sqlstate().as_deref(), Some("08P01"));
            assert_eq!(replies[0].field(b'V').as_deref(), Some("ERROR"));
            let replies = client.recv_until(b'Z').await;
            let row = replies.iter().find(|m| m.tag == b'D');
            assert!(
                row.is_some_and(|r| r.body.ends_with(b"42")),
                "{}: {replies:?}",
                tag as char
            );
        }
    }
    at.shutdown().await;
    lockserver.stop().await;

    // A length word under 4.
    let mut client = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    client.send(&[b'Q', 0, 0, 0, 2]).await;
    expect_fatal(&mut client, "08P01").await;

    // A message type that does not exist.
    let mut client = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    client.send(&frame(b'z', b"")).await;
    expect_fatal(&mut client, "08P01").await;

    // Not PostgreSQL at all.
    let mut client = RawPg::connect(tandem.pg).await;
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let msgs = client.recv_to_close().await;
    assert!(
        msgs.iter().any(|m| m.tag == b'E'),
        "HTTP request got no error: {msgs:?}"
    );

    let n: i32 = bystander
        .query_one("SELECT 41 + 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 42);
    drop(bystander);
    tandem.assert_no_sessions_left().await;
    eventually("backends gone", || async { db.backend_count().await == 0 }).await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn an_oversized_length_is_refused_before_it_is_buffered() {
    let db = TestDb::create("oversized").await;
    let tandem = Tandem::start_with(|c| c.postgres[0].max_message_bytes = 1 << 20).await;
    let mut client = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    // Declares 2 GiB - 1 and sends a few bytes of it.
    client
        .send(&[b'Q', 0x7f, 0xff, 0xff, 0xff, b'S', b'E'])
        .await;
    expect_fatal(&mut client, "54000").await;

    // Just over the configured cap, with the whole body sent: still refused.
    let mut client = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let mut sql = vec![b'x'; (1 << 20) + 10];
    sql.push(0);
    client.send(&frame(b'Q', &sql)).await;
    expect_fatal(&mut client, "54000").await;

    // Under the cap works.
    let mut client = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let sql = format!("SELECT length('{}')\0", "y".repeat(500_000));
    client.send(&frame(b'Q', sql.as_bytes())).await;
    let row = expect_msg!(client, b'T');
    drop(row);
    let row = expect_msg!(client, b'D');
    assert!(String::from_utf8_lossy(&row.body).ends_with("500000"));
    client.recv_until(b'Z').await;
    drop(client);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_query_leaves_no_backend_behind() {
    let db = TestDb::create("midquery").await;
    let tandem = Tandem::start().await;
    let mut client = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    client.query("SELECT pg_sleep(60)").await;
    eventually("the query runs", || async { db.backend_count().await == 1 }).await;
    client.stream.shutdown().await.unwrap();
    drop(client);
    // tandem cancels the running query and ends the backend instead of letting it sleep.
    eventually("the backend is gone", || async {
        db.backend_count().await == 0
    })
    .await;
    tandem.assert_no_sessions_left().await;

    // Half a message, then gone.
    let mut client = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    client.send(&frame(b'Q', b"SELECT 1\0")[..7]).await;
    drop(client);
    tandem.assert_no_sessions_left().await;
    eventually("the backend is gone", || async {
        db.backend_count().await == 0
    })
    .await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn a_terminated_backend_is_reported_to_its_client() {
    let db = TestDb::create("terminated").await;
    let tandem = Tandem::start().await;
    let bystander = tandem.connect(&db.name).await;
    let victim = tandem.connect(&db.name).await;
    let victim_pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let direct = db.direct().await;
    let killed: bool = direct
        .query_one("SELECT pg_terminate_backend($1)", &[&victim_pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let err = victim.simple_query("SELECT 1").await.unwrap_err();
    // PostgreSQL's own FATAL 57P01 is relayed; the driver may surface the closed
    // connection instead if it reads the close first.
    assert!(
        err.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN) || err.is_closed(),
        "unexpected error: {err}"
    );
    // A raw client idle at the time gets the FATAL message, never a hang.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.query("SELECT pg_backend_pid()").await;
    let msgs = raw.recv_until(b'Z').await;
    let row = msgs.iter().find(|m| m.tag == b'D').unwrap();
    let pid: i32 = String::from_utf8_lossy(&row.body[6..]).parse().unwrap();
    direct
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let msgs = raw.recv_to_close().await;
    let fatal = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .expect("an error before close");
    assert_eq!(fatal.sqlstate().as_deref(), Some("57P01"));

    let n: i32 = bystander.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);
    drop(bystander);
    drop(victim);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    let tandem = Tandem::start_with(|c| {
        // Nothing listens on port 1.
        c.postgres[0].upstream = "127.0.0.1:1".to_owned();
    })
    .await;
    let mut client = RawPg::connect(tandem.pg).await;
    client
        .send(&tandem_tests::raw_pg::startup_packet(&[(
            "user", "postgres",
        )]))
        .await;
    expect_fatal(&mut client, "08001").await;
    tandem.assert_no_sessions_left().await;
    let mut stream = tokio::net::TcpStream::connect(tandem.pg).await.unwrap();
    stream.write_all(b"\0\0\0\x08").await.unwrap();
    drop(stream);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}

/// A side connection's failure names the server's message and SQLSTATE (tokio-postgres
/// prints only "db error"): it is what a phase-2 retry reports to the lockserver, and
/// all an operator sees of why a rollback keeps retrying.
#[tokio::test]
async fn a_side_connection_error_names_the_servers_message() {
    let db = TestDb::create("side_error_text").await;
    let e = db
        .direct()
        .await
        .batch_execute("DELETE FROM no_such_table")
        .await
        .unwrap_err();
    let shown = tandem_proxy::error::Error::SideQuery(e).to_string();
    assert!(
        shown.contains("relation \"no_such_table\" does not exist")
            && shown.contains("SQLSTATE 42P01"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_statement_sent_in_the_middle_of_copy_from_stdin_gets_the_servers_error() {
    let db = TestDb::create("copy_interrupted").await;
    db.direct()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let tandem = Tandem::start().await;
    for interruption in [
        frame(b'Q', b"SELECT tandem_begin()\0"),
        [
            frame(b'P', b"\0UPDATE t SET id = 2\0\0\0"),
            frame(b'B', b"\0\0\0\0\0\0\0\0"),
            frame(b'S', b""),
        ]
        .concat(),
    ] {
        let mut client = RawPg::startup(tandem.pg, "postgres", &db.name).await;
        client.query("COPY t FROM STDIN").await;
        expect_msg!(client, b'G');
        client.send(&frame(b'd', b"1\n")).await;
        // tandem would act on these at a sync point, which never comes in copy-in
        // mode: the backend reports them instead, and ends the session.
        client.send(&interruption).await;
        let msgs = client.recv_to_close().await;
        let errors: Vec<_> = msgs
            .iter()
            .filter(|m| m.tag == b'E')
            .map(|m| (m.field(b'V'), m.sqlstate()))
            .collect();
        assert_eq!(
            errors.last(),
            Some(&(Some("FATAL".to_owned()), Some("08P01".to_owned()))),
            "{msgs:?}"
        );
    }
    tandem.assert_no_sessions_left().await;
    eventually("backends gone", || async { db.backend_count().await == 0 }).await;
    let n: i64 = db
        .direct()
        .await
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the COPY did not commit");
    tandem.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_never_sends_its_startup_message_is_closed() {
    let tandem = Tandem::start_with(|c| c.postgres[0].startup_timeout_ms = 200).await;
    let mut client = RawPg::connect(tandem.pg).await;
    // Half a length word, then nothing.
    client.send(&[0, 0]).await;
    let msgs = client.recv_to_close().await;
    assert!(msgs.is_empty(), "{msgs:?}");
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}
