//! COPY FROM STDIN and COPY TO STDOUT pass through whole.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tandem_tests::harness::{Tandem, TestDb};

#[tokio::test]
async fn copy_in_then_copy_out_returns_the_same_bytes() {
    let db = TestDb::create("copy").await;
    let tandem = Tandem::start().await;
    let client = tandem.connect(&db.name).await;
    client
        .batch_execute("CREATE TABLE c (id int PRIMARY KEY, note text)")
        .await
        .unwrap();

    let mut data = String::new();
    for i in 0..50_000 {
        data.push_str(&format!("{i}\tnote with tab\\tand newline\\n {i}\n"));
    }
    let sink = client
        .copy_in("COPY c (id, note) FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    // Many small chunks, as a streaming client would send them.
    for chunk in data.as_bytes().chunks(7_919) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, 50_000);

    let stream = client
        .copy_out("COPY (SELECT id, note FROM c ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert!(
        out == data.as_bytes(),
        "COPY OUT differs from what COPY IN sent"
    );

    // A failed COPY IN (bad data) is reported with its SQLSTATE and leaves nothing behind.
    let sink = client
        .copy_in("COPY c (id, note) FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"not-a-number\tx\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION)
    );
    let n: i64 = client
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 50_000);
    drop(client);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}

/// Inside a global transaction COPY out to the client is a read, and passes whole (a
/// report or an export in the middle of a transaction): the same bytes as directly.
/// COPY into a table, or out of a write's RETURNING, writes, and is refused before it
/// runs.
#[tokio::test]
async fn copy_out_reads_inside_a_global_transaction_and_copy_that_writes_is_refused() {
    use super::at_mode::{dump, one, prepare, rolled_back};
    use tandem_tests::lockserver::{Kind, TestLockserver};
    let db = prepare("copy_global").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    async fn copied(client: &tokio_postgres::Client, sql: &str) -> Vec<u8> {
        let stream = client.copy_out(sql).await.unwrap();
        futures::pin_mut!(stream);
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }
    let client = tandem.connect(&db.name).await;
    one(&client, "SELECT tandem_begin(30000)").await.unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    let copies = [
        "COPY accounts TO STDOUT",
        "COPY (SELECT id, note FROM accounts ORDER BY id) TO STDOUT WITH (FORMAT csv)",
    ];
    for sql in copies {
        assert_eq!(
            copied(&client, sql).await,
            copied(&direct, sql).await,
            "{sql}"
        );
    }
    // It reads inside the client's transaction, as any read there.
    client
        .batch_execute("UPDATE accounts SET note = 'in the transaction' WHERE id = 2")
        .await
        .unwrap();
    for sql in copies {
        let through_tandem = String::from_utf8(copied(&client, sql).await).unwrap();
        assert!(through_tandem.contains("in the transaction"), "{sql}");
    }
    for sql in [
        "COPY (UPDATE accounts SET balance = 0 WHERE id = 3 RETURNING id) TO STDOUT",
        "COPY accounts FROM STDIN",
    ] {
        let err = client.simple_query(sql).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {err}"
        );
        client.batch_execute("ROLLBACK").await.unwrap();
        client.batch_execute("BEGIN").await.unwrap();
    }
    client.batch_execute("COMMIT").await.unwrap();
    rolled_back(&client).await;
    assert_eq!(dump(&direct).await, before);
    drop(client);
    tandem.shutdown().await;
    lockserver.stop().await;
}
