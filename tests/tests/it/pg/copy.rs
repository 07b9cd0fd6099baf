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
