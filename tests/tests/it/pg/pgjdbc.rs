//! The message shapes pgJDBC sends, byte for byte as its wire traces show them, through
//! tandem in and out of global transactions: a statement described before its Bind,
//! Closes of dropped statements ahead of the next batch, and control calls behind the
//! BEGIN of autocommit off.

use super::at_mode::{dump, prepare, undo_rows};
use super::at_protocols::tags;
use tandem_tests::harness::Tandem;
use tandem_tests::lockserver::{Kind, TestLockserver};
use tandem_tests::raw_pg::{Msg, RawPg, frame};

/// Parse of `sql` as `statement`, its parameters' types left to the server.
fn parse(statement: &str, sql: &str, params: usize) -> Vec<u8> {
    let mut body = format!("{statement}\0{sql}\0").into_bytes();
    body.extend_from_slice(&(params as i16).to_be_bytes());
    for _ in 0..params {
        body.extend_from_slice(&0u32.to_be_bytes());
    }
    frame(b'P', &body)
}

/// Bind of `statement` into `portal` with text parameters, text results.
fn bind(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = format!("{portal}\0{statement}\0").into_bytes();
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    frame(b'B', &body)
}

/// Describe (`kind` S or P) or Close of `name`.
fn named(tag: u8, kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    frame(tag, &body)
}

fn execute(portal: &str, rows: i32) -> Vec<u8> {
    let mut body = format!("{portal}\0").into_bytes();
    body.extend_from_slice(&rows.to_be_bytes());
    frame(b'E', &body)
}

fn sync() -> Vec<u8> {
    frame(b'S', b"")
}

/// The one value of the DataRow among `replies`.
fn value(replies: &[Msg]) -> String {
    let row = replies.iter().find(|m| m.tag == b'D').expect("a row");
    let len = i32::from_be_bytes([row.body[2], row.body[3], row.body[4], row.body[5]]);
    String::from_utf8_lossy(&row.body[6..6 + len as usize]).into_owned()
}

async fn simple_value(raw: &mut RawPg, sql: &str) -> String {
    raw.query(sql).await;
    let replies = raw.recv_until(b'Z').await;
    value(&replies)
}

/// On its fifth execution pgJDBC prepares a statement on the server, and where a
/// parameter's type is left to the server (`setTimestamp`, `setObject` without a type)
/// it describes the statement between its Parse and its Bind: captured inside a global
/// transaction, and let through (checked) outside one while the table holds global
/// locks. (Both were refused with 0A000.)
#[tokio::test]
async fn a_write_whose_statement_is_described_before_its_bind_runs() {
    let db = prepare("jdbc_describe_first").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut bound = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let mut outside = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    simple_value(&mut bound, "SELECT tandem_begin(30000)").await;
    let sql = "UPDATE accounts SET at = $1 WHERE id = $2";
    let described = |statement: &str, id: &str| {
        let mut batch = parse(statement, sql, 2);
        batch.extend(named(b'D', b'S', statement));
        batch.extend(bind("", statement, &["2001-02-03 04:05:06+00", id]));
        batch.extend(execute("", 1));
        batch.extend(sync());
        batch
    };
    bound.send(&described("S_1", "1")).await;
    let replies = bound.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "1tn2CZ", "{replies:?}");
    assert_eq!(replies[4].strings()[0], "UPDATE 1");
    // Bound again, as pgJDBC runs it from then on.
    let mut again = bind("", "S_1", &["2001-02-03 04:05:06+00", "2"]);
    again.extend(execute("", 1));
    again.extend(sync());
    bound.send(&again).await;
    let replies = bound.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "2CZ", "{replies:?}");

    // Outside the global transaction, on the table whose rows 1 and 2 it holds.
    outside.send(&described("S_1", "3")).await;
    let replies = outside.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "1tn2CZ", "{replies:?}");
    assert_eq!(replies[4].strings()[0], "UPDATE 1");
    let written: Vec<String> = direct
        .query(
            "SELECT at::text FROM accounts WHERE id IN (1, 2, 3) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(written, ["2001-02-03 04:05:06+00"; 3]);

    assert_eq!(
        simple_value(&mut bound, "SELECT tandem_rollback()").await,
        "Rollbacked"
    );
    let mut expected = before.clone();
    expected[2] = dump(&direct).await[2].clone();
    assert_ne!(expected, before);
    assert_eq!(
        dump(&direct).await,
        expected,
        "rows 1 and 2 restored, 3 kept"
    );
    assert_eq!(undo_rows(&direct).await, 0);
    drop((bound, outside));
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// pgJDBC closes a statement it dropped (from its cache, or after an error) and a
/// cursor it read to the end at the head of its next batch, and postgres.js the
/// statement it prepares again: a control call or a write behind those Closes is
/// answered or captured as one without them. (All were refused as in the middle of a
/// pipelined batch, the local transaction failed.)
#[tokio::test]
async fn closes_ahead_of_a_batch_leave_its_control_call_and_write_at_a_sync_point() {
    let db = prepare("jdbc_closes_first").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    simple_value(&mut raw, "SELECT tandem_begin(30000)").await;
    let mut write = parse(
        "S_1",
        "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
        1,
    );
    write.extend(bind("", "S_1", &["1"]));
    write.extend(execute("", 1));
    write.extend(sync());
    raw.send(&write).await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "12CZ");

    // A cursor read to its end inside the block, then a write behind its Close.
    raw.query("BEGIN").await;
    raw.recv_until(b'Z').await;
    let mut cursor = parse("S_2", "SELECT id FROM accounts ORDER BY id", 0);
    cursor.extend(bind("C_1", "S_2", &[]));
    cursor.extend(execute("C_1", 3));
    cursor.extend(sync());
    raw.send(&cursor).await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "12DDDsZ");
    let mut rest = named(b'C', b'P', "C_1");
    rest.extend(bind("", "S_1", &["4"]));
    rest.extend(execute("", 1));
    rest.extend(sync());
    raw.send(&rest).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "32CZ", "{replies:?}");
    assert_eq!(replies[2].strings()[0], "UPDATE 1");
    assert_eq!(replies[3].body[..], b"T"[..]);
    raw.query("COMMIT").await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "CZ");
    assert_eq!(undo_rows(&direct).await, 2);

    // postgres.js prepares a statement again behind its Close, described first.
    let mut again = named(b'C', b'S', "S_1");
    again.extend(parse(
        "S_1",
        "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
        1,
    ));
    again.extend(named(b'D', b'S', "S_1"));
    again.extend(bind("", "S_1", &["5"]));
    again.extend(execute("", 0));
    again.extend(sync());
    raw.send(&again).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "31tn2CZ", "{replies:?}");
    assert_eq!(undo_rows(&direct).await, 3);

    // The same pipelined behind a batch still being answered, as postgres.js sends
    // concurrent queries on one connection (it was refused mid-batch).
    let mut pipelined = parse("", "SELECT 1", 0);
    pipelined.extend(bind("", "", &[]));
    pipelined.extend(execute("", 0));
    pipelined.extend(sync());
    pipelined.extend(named(b'C', b'S', "S_1"));
    pipelined.extend(parse(
        "S_1",
        "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
        1,
    ));
    pipelined.extend(named(b'D', b'S', "S_1"));
    pipelined.extend(bind("", "S_1", &["3"]));
    pipelined.extend(execute("", 0));
    pipelined.extend(sync());
    raw.send(&pipelined).await;
    assert_eq!(tags(&raw.recv_until(b'Z').await), "12DCZ");
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "31tn2CZ", "{replies:?}");
    assert_eq!(undo_rows(&direct).await, 4);

    // The rollback call behind the Close of a dropped statement.
    let mut call = named(b'C', b'S', "S_1");
    call.extend(parse("", "select tandem_rollback()", 0));
    call.extend(bind("", "", &[]));
    call.extend(named(b'D', b'P', ""));
    call.extend(execute("", 0));
    call.extend(sync());
    raw.send(&call).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "312TDCZ", "{replies:?}");
    assert_eq!(value(&replies), "Rollbacked");
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    drop(raw);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// pgJDBC with autocommit off (Spring's `@Transactional`) sends BEGIN in one batch
/// with the transaction's first statement, here `tandem_begin()` and
/// `tandem_join(?)`: each is answered in the block the BEGIN opened, which holds
/// nothing yet, and the work after it is the branch's. (Refused as in the middle of a
/// pipelined batch, and the block failed.)
#[tokio::test]
async fn a_control_call_batched_behind_its_begin_binds_the_block() {
    let db = prepare("jdbc_begin_then_call").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut a = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let mut b = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    let behind_begin = |sql: &str, params: &[&str]| {
        let mut batch = parse("", "BEGIN", 0);
        batch.extend(bind("", "", &[]));
        batch.extend(execute("", 0));
        batch.extend(parse("", sql, params.len()));
        batch.extend(bind("", "", params));
        batch.extend(named(b'D', b'P', ""));
        batch.extend(execute("", 0));
        batch.extend(sync());
        batch
    };
    a.send(&behind_begin("select tandem_begin(30000)", &[]))
        .await;
    let replies = a.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12TDCZ", "{replies:?}");
    assert_eq!(replies.last().unwrap().body[..], b"T"[..]);
    let xid = value(&replies);
    assert!(xid.contains('-'), "{xid}");
    a.run_each(&["UPDATE accounts SET balance = 1 WHERE id = 1", "COMMIT"])
        .await;

    b.send(&behind_begin("select tandem_join($1)", &[&xid]))
        .await;
    let replies = b.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12TDCZ", "{replies:?}");
    b.run_each(&["DELETE FROM accounts WHERE id = 2", "COMMIT"])
        .await;
    assert_eq!(undo_rows(&direct).await, 2, "both blocks are branches");

    assert_eq!(
        simple_value(&mut a, "SELECT tandem_rollback()").await,
        "Rollbacked"
    );
    assert_eq!(dump(&direct).await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    drop((a, b));
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A branch's COMMIT that tandem refuses for the batch it comes in (here followed by
/// another statement before the Sync) ends the block as a failed COMMIT does, in AT
/// and in XA mode: the branch's work is rolled back and the session is idle. It stayed
/// failed ('E'), and postgres.js 3, which keeps a connection that is not idle, never
/// gave it back.
#[tokio::test]
async fn a_commit_refused_for_its_batch_ends_the_block() {
    for mode in ["at", "xa"] {
        commit_refused_for_its_batch(mode).await;
    }
}

async fn commit_refused_for_its_batch(mode: &str) {
    let db = prepare("jdbc_commit_refused").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    simple_value(&mut raw, &format!("SELECT tandem_mode('{mode}')")).await;
    simple_value(&mut raw, "SELECT tandem_begin(30000)").await;
    raw.run_each(&["BEGIN", "UPDATE accounts SET balance = 5 WHERE id = 1"])
        .await;
    let mut batch = parse("", "COMMIT", 0);
    batch.extend(bind("", "", &[]));
    batch.extend(execute("", 0));
    batch.extend(parse("", "SELECT 1", 0));
    batch.extend(bind("", "", &[]));
    batch.extend(execute("", 0));
    batch.extend(sync());
    raw.send(&batch).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "EZ", "{mode}: {replies:?}");
    assert_eq!(replies[0].sqlstate().as_deref(), Some("0A000"));
    assert_eq!(replies[1].body[..], b"I"[..], "{mode}: the block ended");
    assert_eq!(
        dump(&direct).await,
        before,
        "nothing of the branch committed"
    );
    assert_eq!(undo_rows(&direct).await, 0);
    assert_eq!(simple_value(&mut raw, "SELECT 2").await, "2");
    assert_eq!(
        simple_value(&mut raw, "SELECT tandem_rollback()").await,
        "Rollbacked"
    );
    assert_eq!(dump(&direct).await, before);
    drop(raw);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}
