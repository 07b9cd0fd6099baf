//! Queries, multi-statements, prepared statements with every common type, LOCAL
//! INFILE, utility commands and the status flags, through tandem with mysql_async.

use mysql_async::prelude::*;
use mysql_async::{Row, Value};
use tandem_tests::mysql::{self as my, MyTestDb, packet, raw_login};

#[tokio::test]
async fn text_queries_and_multiple_result_sets() {
    let db = MyTestDb::create("relay").await;
    let tandem = my::start().await;
    let mut conn = my::connect(&tandem, &db.name).await;
    assert!(conn.id() >= 1 << 30, "clients see tandem's connection id");
    conn.query_drop("CREATE TABLE items (id INT PRIMARY KEY, note VARCHAR(64))")
        .await
        .unwrap();
    conn.query_drop("INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, NULL)")
        .await
        .unwrap();
    assert_eq!(conn.affected_rows(), 3);
    let rows: Vec<(i32, Option<String>)> = conn
        .query("SELECT id, note FROM items ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        rows,
        [(1, Some("one".into())), (2, Some("two".into())), (3, None)]
    );

    // Multi-statements: an update, two result sets, and a statement without rows.
    let mut result = conn
        .query_iter("UPDATE items SET note = 'uno' WHERE id = 1; SELECT COUNT(*) FROM items; SELECT note FROM items WHERE id = 1; DO 1")
        .await
        .unwrap();
    let mut sets: Vec<Vec<Row>> = Vec::new();
    while !result.is_empty() {
        sets.push(result.collect::<Row>().await.unwrap());
    }
    drop(result);
    let firsts: Vec<Option<Value>> = sets
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s[0].as_ref(0).cloned())
        .collect();
    assert_eq!(
        firsts,
        [
            Some(Value::Bytes(b"3".to_vec())),
            Some(Value::Bytes(b"uno".to_vec()))
        ]
    );

    // A procedure returns its result sets and a final OK (CLIENT_PS_MULTI_RESULTS).
    conn.query_drop("CREATE PROCEDURE two_sets() BEGIN SELECT 1 AS a; SELECT 2 AS b, 3 AS c; END")
        .await
        .unwrap();
    let mut result = conn.query_iter("CALL two_sets()").await.unwrap();
    let first: Vec<i64> = result.collect().await.unwrap();
    let second: Vec<(i64, i64)> = result.collect().await.unwrap();
    drop(result);
    assert_eq!((first, second), (vec![1], vec![(2, 3)]));

    // A large value (several packets' worth of bytes in one row).
    let big = "x".repeat(3 << 20);
    let echoed: Option<String> = conn.exec_first("SELECT ?", (big.as_str(),)).await.unwrap();
    assert_eq!(echoed.as_deref(), Some(big.as_str()));

    // Errors keep the session usable.
    let err = conn
        .query_drop("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert!(
        matches!(err, mysql_async::Error::Server(ref e) if e.code == 1146),
        "{err}"
    );
    let one: Option<i32> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));

    conn.ping().await.unwrap();
    conn.disconnect().await.unwrap();
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn prepared_statements_round_trip_every_common_type_byte_exact() {
    let db = MyTestDb::create("types").await;
    let tandem = my::start().await;
    let mut conn = my::connect(&tandem, &db.name).await;
    conn.query_drop(
        "CREATE TABLE t (id INT PRIMARY KEY, ti TINYINT, si SMALLINT, mi MEDIUMINT, bi BIGINT, \
         ub BIGINT UNSIGNED, f FLOAT, d DOUBLE, dec1 DECIMAL(30,10), ch CHAR(5), vc VARCHAR(100), \
         tx TEXT, bl MEDIUMBLOB, vb VARBINARY(20), dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL, \
         yr YEAR, bt BIT(10), js JSON, en ENUM('a','b'), st SET('x','y'), nul INT)",
    )
    .await
    .unwrap();
    let blob: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let insert = conn
        .prep("INSERT INTO t VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
        .await
        .unwrap();
    let params: Vec<Value> = vec![
        Value::Int(1),
        Value::Int(-128),
        Value::Int(-32768),
        Value::Int(8_388_607),
        Value::Int(i64::MIN),
        Value::UInt(u64::MAX),
        Value::Float(1.5),
        Value::Double(std::f64::consts::PI),
        Value::Bytes(b"-12345678901234567890.0123456789".to_vec()),
        Value::Bytes(b"abc".to_vec()),
        Value::Bytes("héllo ✓ \0 nul".as_bytes().to_vec()),
        Value::Bytes("t".repeat(1000).into_bytes()),
        Value::Bytes(blob.clone()),
        Value::Bytes(vec![0, 1, 0xfe, 0xff, 0xfb]),
        Value::Date(2024, 2, 29, 0, 0, 0, 0),
        Value::Time(true, 1, 2, 3, 4, 5),
        Value::Date(1999, 12, 31, 23, 59, 59, 999_999),
        Value::Date(2038, 1, 19, 3, 14, 7, 123_456),
        Value::Int(2155),
        Value::Bytes(vec![0x03, 0xff]),
        Value::Bytes(br#"{"k": [1, 2.5, "s"]}"#.to_vec()),
        Value::Bytes(b"b".to_vec()),
        Value::Bytes(b"x,y".to_vec()),
        Value::NULL,
    ];
    conn.exec_drop(&insert, params).await.unwrap();
    conn.close(insert).await.unwrap();

    // Binary protocol (prepared) and text protocol must agree on every column.
    let select = "SELECT id, ti, si, mi, bi, ub, f, d, dec1, ch, vc, tx, bl, vb, dt, tm, dtm, ts, yr, bt, js, en, st, nul FROM t WHERE id = ?";
    let binary: Row = conn.exec_first(select, (1,)).await.unwrap().unwrap();
    let text: Row = conn
        .query_first(select.replace('?', "1"))
        .await
        .unwrap()
        .unwrap();
    let b = binary.unwrap();
    assert_eq!(b[1], Value::Int(-128));
    assert_eq!(b[2], Value::Int(-32768));
    assert_eq!(b[3], Value::Int(8_388_607));
    assert_eq!(b[4], Value::Int(i64::MIN));
    assert_eq!(b[5], Value::UInt(u64::MAX));
    assert_eq!(b[6], Value::Float(1.5));
    assert_eq!(b[7], Value::Double(std::f64::consts::PI));
    assert_eq!(
        b[8],
        Value::Bytes(b"-12345678901234567890.0123456789".to_vec())
    );
    assert_eq!(b[9], Value::Bytes(b"abc".to_vec()));
    assert_eq!(b[10], Value::Bytes("héllo ✓ \0 nul".as_bytes().to_vec()));
    assert_eq!(b[12], Value::Bytes(blob));
    assert_eq!(b[13], Value::Bytes(vec![0, 1, 0xfe, 0xff, 0xfb]));
    assert_eq!(b[14], Value::Date(2024, 2, 29, 0, 0, 0, 0));
    assert_eq!(b[15], Value::Time(true, 1, 2, 3, 4, 5));
    assert_eq!(b[16], Value::Date(1999, 12, 31, 23, 59, 59, 999_999));
    assert_eq!(b[17], Value::Date(2038, 1, 19, 3, 14, 7, 123_456));
    assert_eq!(b[19], Value::Bytes(vec![0x03, 0xff]));
    assert_eq!(b[21], Value::Bytes(b"b".to_vec()));
    assert_eq!(b[22], Value::Bytes(b"x,y".to_vec()));
    assert_eq!(b[23], Value::NULL);
    let t = text.unwrap();
    assert_eq!(t[12], b[12]);
    assert_eq!(t[10], b[10]);
    assert_eq!(t[5], Value::Bytes(u64::MAX.to_string().into_bytes()));

    // The same statement re-executed many times; SEND_LONG_DATA for a large parameter
    // (mysql_async sends parameters over max_allowed_packet/8 as long data).
    let stmt = conn.prep("SELECT ? + ?, LENGTH(?)").await.unwrap();
    for i in 0..50i64 {
        let r: Option<(i64, i64)> = conn.exec_first(&stmt, (i, i, "abc")).await.unwrap();
        assert_eq!(r, Some((2 * i, 3)));
    }
    let long = vec![7u8; 4 << 20];
    let r: Option<(i64, i64)> = conn.exec_first(&stmt, (1, 1, long)).await.unwrap();
    assert_eq!(r, Some((2, 4 << 20)));
    conn.close(stmt).await.unwrap();
    conn.disconnect().await.unwrap();
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn load_data_local_infile() {
    let db = MyTestDb::create("infile").await;
    let tandem = my::start().await;
    let dir = std::env::temp_dir().join(format!("tandem-infile-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rows.csv");
    let mut csv = String::new();
    for i in 0..50_000 {
        csv.push_str(&format!("{i},row {i}\n"));
    }
    std::fs::write(&path, &csv).unwrap();
    let opts = my::opts(&tandem, &db.name)
        .local_infile_handler(Some(mysql_async::WhiteListFsHandler::new([&path])));
    let mut conn = mysql_async::Conn::new(opts).await.unwrap();
    conn.query_drop("CREATE TABLE rows_in (id INT PRIMARY KEY, note VARCHAR(32))")
        .await
        .unwrap();
    conn.query_drop(format!(
        "LOAD DATA LOCAL INFILE '{}' INTO TABLE rows_in FIELDS TERMINATED BY ','",
        path.display()
    ))
    .await
    .unwrap();
    assert_eq!(conn.affected_rows(), 50_000);
    let (count, last): (i64, String) = conn
        .query_first("SELECT COUNT(*), MAX(note) FROM rows_in")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((count, last.as_str()), (50_000, "row 9999"));
    let one: Option<i32> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    conn.disconnect().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}

/// The status flags of the OK packet that answers `sql` on a raw connection.
async fn ok_status(raw: &mut tandem_tests::mysql::RawMy, sql: &str) -> u16 {
    let mut payload = vec![0x03];
    payload.extend_from_slice(sql.as_bytes());
    raw.send(&packet(0, &payload)).await;
    let (seq, ok) = raw.recv().await.expect("reply");
    assert_eq!((seq, ok[0]), (1, 0), "{sql}: {ok:?}");
    // Header, affected rows and insert id are one byte each for these statements.
    u16::from_le_bytes([ok[3], ok[4]])
}

#[tokio::test]
async fn transaction_and_autocommit_flags_pass_through_in_every_ok() {
    let tandem = my::start().await;
    let (mut raw, greeting) = raw_login(my::addr(&tandem)).await;
    assert_eq!(greeting[0], 10);
    const IN_TRANS: u16 = 0x0001;
    const AUTOCOMMIT: u16 = 0x0002;
    let s = ok_status(&mut raw, "DO 1").await;
    assert_eq!(s & (IN_TRANS | AUTOCOMMIT), AUTOCOMMIT);
    let s = ok_status(&mut raw, "BEGIN").await;
    assert_eq!(s & (IN_TRANS | AUTOCOMMIT), IN_TRANS | AUTOCOMMIT);
    let s = ok_status(&mut raw, "COMMIT").await;
    assert_eq!(s & (IN_TRANS | AUTOCOMMIT), AUTOCOMMIT);
    let s = ok_status(&mut raw, "SET autocommit = 0").await;
    assert_eq!(s & AUTOCOMMIT, 0);
    let s = ok_status(&mut raw, "SET autocommit = 1").await;
    assert_eq!(s & AUTOCOMMIT, AUTOCOMMIT);
    // COM_PING, COM_INIT_DB and COM_FIELD_LIST-free utility commands answer too.
    raw.send(&packet(0, &[0x0e])).await;
    assert_eq!(raw.recv().await.unwrap(), (1, vec![0, 0, 0, 2, 0, 0, 0]));
    raw.send(&packet(0, b"\x02mysql")).await;
    assert_eq!(raw.recv().await.unwrap().1[0], 0);
    raw.send(&packet(0, b"\x04db\0")).await;
    let mut defs = 0;
    loop {
        let (_, p) = raw.recv().await.unwrap();
        if p[0] == 0xfe && p.len() < 0xff_ffff {
            break;
        }
        defs += 1;
    }
    assert!(defs >= 5, "COM_FIELD_LIST db: {defs} column definitions");
    raw.send(&packet(0, &[0x09])).await;
    let (_, stats) = raw.recv().await.unwrap();
    assert!(String::from_utf8_lossy(&stats).contains("Uptime"));
    raw.send(&packet(0, &[0x01])).await;
    assert!(raw.recv_to_close().await.is_empty());
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn send_long_data_reset_and_close_on_a_raw_connection() {
    let tandem = my::start().await;
    let (mut raw, _) = raw_login(my::addr(&tandem)).await;
    // COM_STMT_PREPARE: OK, one parameter definition, one column definition (the login
    // negotiated CLIENT_DEPRECATE_EOF, so no EOFs follow them).
    raw.send(&packet(0, b"\x16SELECT LENGTH(?)")).await;
    let (_, ok) = raw.recv().await.unwrap();
    assert_eq!(ok[0], 0);
    let stmt = [ok[1], ok[2], ok[3], ok[4]];
    assert_eq!((ok[5], ok[7]), (1, 1), "one column, one parameter");
    raw.recv().await.unwrap();
    raw.recv().await.unwrap();
    // Two chunks of long data for parameter 0; no reply is due.
    for chunk in [vec![b'a'; 100_000], vec![b'b'; 23]] {
        let mut p = vec![0x18];
        p.extend_from_slice(&stmt);
        p.extend_from_slice(&0u16.to_le_bytes());
        p.extend_from_slice(&chunk);
        raw.send(&packet(0, &p)).await;
    }
    let execute = |stmt: [u8; 4]| {
        let mut p = vec![0x17];
        p.extend_from_slice(&stmt);
        p.push(0);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(0); // NULL bitmap
        p.push(1); // types follow
        p.extend_from_slice(&[0xfc, 0x00]); // MYSQL_TYPE_BLOB, value sent as long data
        packet(0, &p)
    };
    raw.send(&execute(stmt)).await;
    let (_, columns) = raw.recv().await.unwrap();
    assert_eq!(columns, [1]);
    raw.recv().await.unwrap();
    let (_, row) = raw.recv().await.unwrap();
    assert_eq!(row[0], 0, "a binary row");
    // After the header and the NULL bitmap: the value, little-endian (LONG or
    // LONGLONG, as the server types LENGTH()).
    let value = row[2..]
        .iter()
        .rev()
        .fold(0u64, |acc, &b| acc << 8 | u64::from(b));
    assert_eq!(value, 100_023, "both chunks reached the server");
    let (_, end) = raw.recv().await.unwrap();
    assert_eq!(end[0], 0xfe);
    // COM_STMT_RESET answers OK; COM_STMT_CLOSE answers nothing; COM_PING still works.
    let mut reset = vec![0x1a];
    reset.extend_from_slice(&stmt);
    raw.send(&packet(0, &reset)).await;
    assert_eq!(raw.recv().await.unwrap().1[0], 0);
    let mut close = vec![0x19];
    close.extend_from_slice(&stmt);
    raw.send(&packet(0, &close)).await;
    raw.send(&packet(0, &[0x0e])).await;
    assert_eq!(raw.recv().await.unwrap(), (1, vec![0, 0, 0, 2, 0, 0, 0]));
    // COM_SET_OPTION (multi-statements off) answers one EOF or OK.
    raw.send(&packet(0, &[0x1b, 1, 0])).await;
    let (_, reply) = raw.recv().await.unwrap();
    assert!(matches!(reply[0], 0x00 | 0xfe), "{reply:?}");
    raw.send(&packet(0, &[0x0e])).await;
    assert_eq!(raw.recv().await.unwrap().1[0], 0);
    drop(raw);
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}
