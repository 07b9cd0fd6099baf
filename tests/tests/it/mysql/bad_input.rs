//! Bad input gets a MySQL error packet with the right code, the process and the other
//! sessions keep working, and nothing leaks; a backend that dies mid-session or never
//! greets is reported the same way.

use mysql_async::prelude::*;
use tandem_tests::harness::eventually;
use tandem_tests::lockserver::{Kind, TestLockserver};
use tandem_tests::mysql::{self as my, MyTestDb, Packet, RawMy, err_code, packet, raw_login};
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

    // An empty command packet is an unknown command, as the server answers it.
    let (mut raw, _) = raw_login(addr).await;
    raw.send(&packet(0, b"")).await;
    let (seq, reply) = raw.recv().await.unwrap();
    assert_eq!((seq, err_code(&reply)), (1, Some(1047)));
    raw.send(&packet(0, b"\x0e")).await;
    assert_eq!(raw.recv().await.unwrap().1[0], 0, "COM_PING after it");

    // A COM_STMT_EXECUTE too short to name a statement: the server's 1835, and the
    // session goes on (it used to wait for bytes that were never coming).
    raw.send(&packet(0, b"\x17\x01")).await;
    let (seq, reply) = raw.recv().await.unwrap();
    assert_eq!((seq, err_code(&reply)), (1, Some(1835)));
    raw.send(&packet(0, b"\x0e")).await;
    assert_eq!(raw.recv().await.unwrap().1[0], 0, "COM_PING after it");
    drop(raw);

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
    // A COM_CHANGE_USER that does not decode: the server's 1047, and the session goes
    // on under its user (tandem closed it once).
    raw.send(&packet(0, b"\x11\xff")).await;
    let (seq, reply) = raw.recv().await.unwrap();
    assert_eq!((seq, err_code(&reply)), (1, Some(1047)));
    let user = raw_query(&mut raw, "SELECT CURRENT_USER()").await;
    assert!(
        user.iter().any(|(_, p)| p.windows(4).any(|w| w == b"root")),
        "{user:?}"
    );
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

/// The packets of a COM_QUERY's reply, up to its OK, ERR or the OK that ends its rows
/// (the raw client asks for CLIENT_DEPRECATE_EOF).
async fn reply_of(raw: &mut RawMy) -> Vec<Packet> {
    let mut packets: Vec<Packet> = Vec::new();
    loop {
        let p = raw.recv().await.expect("a reply");
        let first = <[u8]>::first(&p.1).copied();
        let ends = match first {
            Some(0xff) => true,
            Some(0x00) => packets.is_empty(),
            Some(0xfe) => p.1.len() < 0xff_ffff && !packets.is_empty(),
            _ => false,
        };
        packets.push(p);
        if ends {
            return packets;
        }
    }
}

async fn raw_query(raw: &mut RawMy, sql: &str) -> Vec<Packet> {
    let mut payload = vec![0x03];
    payload.extend_from_slice(sql.as_bytes());
    raw.send(&packet(0, &payload)).await;
    reply_of(raw).await
}

#[tokio::test]
async fn a_bound_sessions_command_of_16_mib_or_a_short_execute_is_answered_and_the_session_goes_on()
{
    let db = super::at_mode::prepare("bound_big").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let endpoint = format!("http://{}", lockserver.grpc);
    let tandem = my::start_with(|c| c.lockserver.endpoint = endpoint).await;
    let addr = my::addr(&tandem);
    let mut direct = db.direct().await;
    let before = super::at_mode::dump(&mut direct, "accounts").await;

    let (mut raw, _) = raw_login(addr).await;
    let used = raw_query(&mut raw, &format!("USE {}", db.name)).await;
    assert_eq!(used[0].1[0], 0, "{used:?}");
    let begun = raw_query(&mut raw, "SELECT tandem_begin(30000)").await;
    assert!(err_code(&begun.last().unwrap().1).is_none(), "{begun:?}");
    let updated = raw_query(&mut raw, "UPDATE accounts SET balance = 1 WHERE id = 1").await;
    assert_eq!(updated[0].1[0], 0, "{updated:?}");

    // A COM_QUERY of more than 16 MiB, in two packets: refused before its second
    // packet arrives, which goes nowhere.
    let mut sql = b"\x03INSERT INTO accounts VALUES (9, 9, '".to_vec();
    sql.resize(0xff_ffff + 100, b'x');
    sql.extend_from_slice(b"')");
    let mut wire = packet(0, &sql[..0xff_ffff]);
    wire.extend_from_slice(&packet(1, &sql[0xff_ffff..]));
    raw.send(&wire).await;
    let refused = reply_of(&mut raw).await;
    // Numbered after the command's last packet, as the server numbers its replies.
    assert_eq!(
        (refused[0].0, err_code(&refused[0].1)),
        (2, Some(1235)),
        "{refused:?}"
    );
    // A COM_STMT_EXECUTE too short to name a statement gets the server's 1835.
    raw.send(&packet(0, b"\x17\x05\x00")).await;
    let (seq, reply) = raw.recv().await.unwrap();
    assert_eq!((seq, err_code(&reply)), (1, Some(1835)));
    // A COM_STMT_EXECUTE of a write that sends fewer values than it has parameters:
    // the server's 1210 (tandem, reading the values for the write's images, answered
    // 1835 once).
    let mut prepare = b"\x16UPDATE accounts SET balance = ? WHERE id = ?".to_vec();
    raw.send(&packet(0, &prepare)).await;
    let (_, prepared) = raw.recv().await.unwrap();
    assert_eq!(prepared[0], 0, "{prepared:?}");
    for _ in 0..2 {
        raw.recv().await.unwrap();
    }
    prepare.clear();
    prepare.push(0x17);
    prepare.extend_from_slice(&prepared[1..5]);
    prepare.extend_from_slice(&[0, 1, 0, 0, 0]);
    // No NULLs, types sent (two BIGINTs), and one value of two.
    prepare.extend_from_slice(&[0, 1, 8, 0, 8, 0]);
    prepare.extend_from_slice(&7i64.to_le_bytes());
    raw.send(&packet(0, &prepare)).await;
    let (seq, reply) = raw.recv().await.unwrap();
    assert_eq!((seq, err_code(&reply)), (1, Some(1210)), "{reply:?}");
    // The session goes on, still in its global transaction.
    let status = raw_query(&mut raw, "SELECT tandem_status()").await;
    assert!(
        status.iter().any(|(_, p)| p.ends_with(b"Begin")),
        "{status:?}"
    );
    let rolled = raw_query(&mut raw, "SELECT tandem_rollback()").await;
    assert!(
        rolled.iter().any(|(_, p)| p.ends_with(b"Rollbacked")),
        "{rolled:?}"
    );
    drop(raw);
    assert_eq!(super::at_mode::dump(&mut direct, "accounts").await, before);
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_command_over_the_servers_max_allowed_packet_gets_the_servers_error_alone() {
    let db = MyTestDb::create("over_max_packet").await;
    let tandem = my::start().await;
    let mut direct = db.direct().await;
    let max: Option<u64> = direct
        .query_first("SELECT @@global.max_allowed_packet")
        .await
        .unwrap();
    let max = usize::try_from(max.unwrap()).unwrap();
    assert!(
        max <= 64 << 20,
        "the test sends max_allowed_packet bytes: {max}"
    );

    let (mut raw, _) = raw_login(my::addr(&tandem)).await;
    let mut sql = b"\x03SELECT '".to_vec();
    sql.resize(max + 100, b'x');
    sql.extend_from_slice(b"'");
    let mut wire = vec![];
    let mut packets_sent = 0u8;
    for chunk in sql.chunks(0xff_ffff) {
        wire.extend_from_slice(&packet(packets_sent, chunk));
        packets_sent += 1;
    }
    // The server may close before it has read the rest, so a failed write is expected.
    let _ = raw.stream.write_all(&wire).await;
    let packets = raw.recv_to_close().await;
    // Its 1153 (08S01) said why it closes: nothing of tandem's follows, which a driver
    // would read as the reply to its next command.
    assert_eq!(packets.len(), 1, "{packets:?}");
    assert_eq!(
        (packets[0].0, err_code(&packets[0].1)),
        (packets_sent, Some(1153))
    );
    drop(raw);
    my::assert_no_sessions_left(&tandem).await;
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

    // Killed while idle: tandem's ERR saying so is unsolicited, sequence id 0, as the
    // server's own is (a driver takes any other id for a broken exchange).
    let (mut raw, _) = raw_login(my::addr(&tandem)).await;
    let used = raw_query(&mut raw, &format!("USE {}", db.name)).await;
    assert_eq!(used[0].1[0], 0, "{used:?}");
    // An error of SQLSTATE class 08 that leaves the connection open changes nothing.
    let signalled = raw_query(&mut raw, "SIGNAL SQLSTATE '08000' SET MESSAGE_TEXT = 'x'").await;
    assert_eq!(err_code(&signalled[0].1), Some(1644), "{signalled:?}");
    let thread: Option<u64> = admin
        .exec_first(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
            (&db.name,),
        )
        .await
        .unwrap();
    admin
        .query_drop(format!("KILL CONNECTION {}", thread.unwrap()))
        .await
        .unwrap();
    let packets = raw.recv_to_close().await;
    assert_eq!(packets.len(), 1, "{packets:?}");
    assert_eq!(packets[0].0, 0, "{packets:?}");
    assert_eq!(packets[0].1.get(..1), Some(&[0xff][..]), "{packets:?}");
    drop(raw);
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

    // Nothing listens at all: 1053 before the greeting, which the mariadb
    // client (Connector/C, which takes a client-range code such as 2003 from a server
    // for a malformed packet) shows as it is.
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = unused.local_addr().unwrap();
    drop(unused);
    let tandem = my::start_with(|c| c.mysql[0].upstream = dead.to_string()).await;
    let err = mysql_async::Conn::new(my::opts(&tandem, "test"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, mysql_async::Error::Server(ref e) if e.code == 1053),
        "{err}"
    );
    let cli = tokio::process::Command::new("mariadb")
        .args([
            "-h",
            "127.0.0.1",
            "-u",
            "root",
            "--skip-ssl",
            "-e",
            "SELECT 1",
        ])
        .arg(format!(
            "--port={}",
            tandem.mysql.expect("a MySQL front end").port()
        ))
        .output()
        .await
        .expect("the mariadb client runs");
    let said = String::from_utf8_lossy(&cli.stderr);
    assert!(
        said.contains("ERROR 1053") && said.contains("could not connect to the database"),
        "{said}"
    );
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}

/// A client that takes the greeting and never answers it is closed once
/// `handshake_timeout_ms` has passed, as the server closes one past its
/// connect_timeout: it does not hold a client slot (and a backend) for ever.
#[tokio::test]
async fn a_client_that_never_answers_the_greeting_is_closed() {
    let tandem = my::start_with(|c| c.mysql[0].handshake_timeout_ms = 500).await;
    let addr = my::addr(&tandem);
    let mut silent = RawMy::connect(addr).await;
    let (seq, greeting) = silent.recv().await.expect("the greeting");
    assert_eq!((seq, greeting[0]), (0, 10), "protocol 10");
    let started = std::time::Instant::now();
    let after = silent.recv_to_close().await;
    assert!(after.is_empty(), "closed without an answer: {after:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}
