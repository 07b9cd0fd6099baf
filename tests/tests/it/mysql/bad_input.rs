//! Bad input gets a MySQL error packet with the right code, the process and the other
//! sessions keep working, and nothing leaks; a backend that dies mid-session or never
//! greets is reported the same way.

use mysql_async::prelude::*;
use tandem_tests::harness::eventually;
use tandem_tests::mysql::{self as my, MyTestDb, RawMy, err_code, packet, raw_login};
use tokio::io::AsyncWriteExt;

/// Asserts that the connection's last packet before it closed is an ERR with `code`.
async fn expect_error_then_close(raw: &mut RawMy, code: u16) {
    let packets = raw.recv_to_close().await;
    let last = packets
        .last()
        .unwrap_or_else(|| panic!("no packet before close"));
    assert_eq!(
        err_code(&last.1),
        Some(code),
        "{}",
        String::from_utf8_lossy(&last.1)
    );
}

#[tokio::test]
async fn malformed_packets_close_only_their_own_session() {
    let db = MyTestDb::create("malformed").await;
    let tandem = my::start_with(|c| c.mysql[0].max_message_bytes = 1 << 20).await;
    let addr = my::addr(&tandem);
    let mut bystander = my::connect(&tandem, &db.name).await;

    // A command with the wrong sequence id.
    let (mut raw, _) = raw_login(addr).await;
    raw.send(&packet(5, b"\x03SELECT 1")).await;
    expect_error_then_close(&mut raw, 1156).await;

    // A packet declaring more than max_message_bytes, refused before it is buffered.
    let (mut raw, _) = raw_login(addr).await;
    raw.send(&[0xff, 0xff, 0x7f, 0, 0x03, b'S']).await;
    expect_error_then_close(&mut raw, 1153).await;

    // An empty command packet.
    let (mut raw, _) = raw_login(addr).await;
    raw.send(&packet(0, b"")).await;
    expect_error_then_close(&mut raw, 1043).await;

    // An unknown command is answered, and the session goes on.
    let (mut raw, _) = raw_login(addr).await;
    raw.send(&packet(0, b"\xee")).await;
    let (seq, reply) = raw.recv().await.unwrap();
    assert_eq!((seq, err_code(&reply)), (1, Some(1047)));
    raw.send(&packet(0, b"\x0e")).await;
    assert_eq!(
        raw.recv().await.unwrap().1[0],
        0,
        "COM_PING after the refusal"
    );
    // Replication is refused the same way.
    raw.send(&packet(0, b"\x12\x04\0\0\0\0\0\x01\0\0\0")).await;
    assert_eq!(err_code(&raw.recv().await.unwrap().1), Some(1235));
    drop(raw);

    // Not MySQL at all: an HTTP request instead of a HandshakeResponse.
    let mut raw = RawMy::connect(addr).await;
    raw.recv().await.unwrap();
    raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let packets = raw.recv_to_close().await;
    assert!(
        packets.iter().any(|(_, p)| err_code(p).is_some()),
        "an HTTP request got no error: {packets:?}"
    );

    // A HandshakeResponse cut short.
    let mut raw = RawMy::connect(addr).await;
    raw.recv().await.unwrap();
    raw.send(&packet(1, &[0x00, 0x02, 0x08, 0x00, 1, 2])).await;
    expect_error_then_close(&mut raw, 1043).await;

    // A client that closes halfway through a packet.
    let (mut raw, _) = raw_login(addr).await;
    raw.send(&[0x20, 0, 0, 0, 0x03, b'S']).await;
    raw.stream.shutdown().await.unwrap();
    drop(raw);

    let n: Option<i64> = bystander.query_first("SELECT 41 + 1").await.unwrap();
    assert_eq!(n, Some(42));
    bystander.disconnect().await.unwrap();
    my::assert_no_sessions_left(&tandem).await;
    eventually("backends gone", || async { db.backend_count().await == 0 }).await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_dies_is_reported_with_an_error() {
    let db = MyTestDb::create("backend_dies").await;
    let tandem = my::start().await;
    let mut conn = my::connect(&tandem, &db.name).await;
    let thread: Option<u64> = conn.query_first("SELECT CONNECTION_ID()").await.unwrap();
    let mut admin = db.direct().await;
    admin
        .query_drop(format!("KILL CONNECTION {}", thread.unwrap()))
        .await
        .unwrap();
    let err = conn.query_drop("SELECT 1").await.unwrap_err();
    assert!(
        matches!(
            err,
            mysql_async::Error::Server(_)
                | mysql_async::Error::Io(_)
                | mysql_async::Error::Driver(_)
        ),
        "{err}"
    );
    drop(conn);
    admin.disconnect().await.unwrap();
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_never_greets_or_is_down_gives_a_clear_error() {
    // A listener that accepts and closes at once stands in for a database that dies
    // during the handshake.
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let closer = tokio::spawn(async move {
        while let Ok((socket, _)) = fake.accept().await {
            drop(socket);
        }
    });
    let tandem = my::start_with(|c| c.mysql[0].upstream = fake_addr.to_string()).await;
    let mut raw = RawMy::connect(my::addr(&tandem)).await;
    let packets = raw.recv_to_close().await;
    assert_eq!(packets.len(), 1, "{packets:?}");
    assert_eq!((packets[0].0, err_code(&packets[0].1)), (0, Some(1158)));
    closer.abort();
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;

    // Nothing listens at all: error 2003, as a driver reports an unreachable server.
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = unused.local_addr().unwrap();
    drop(unused);
    let tandem = my::start_with(|c| c.mysql[0].upstream = dead.to_string()).await;
    let err = mysql_async::Conn::new(my::opts(&tandem, "test"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, mysql_async::Error::Server(ref e) if e.code == 2003),
        "{err}"
    );
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}
