//! A multi-statement query of writes, as a driver's batch rewriting sends it
//! (`UPDATE …; UPDATE …`): in a global transaction each statement is captured in turn,
//! and the client reads the same results, one per statement, as directly; a failed
//! statement ends the query as the server ends it, and the global rollback restores
//! every row.

use super::at_mode::{code, dump, prepare, raw_reply, raw_session, rolled_back, text, undo_rows};
use mysql_async::prelude::Queryable;
use tandem_tests::harness::Tandem;
use tandem_tests::lockserver::{Kind, TestLockserver};
use tandem_tests::mysql::{self as my, Packet, RawMy};

/// SERVER_MORE_RESULTS_EXISTS.
const MORE_RESULTS: u16 = 0x0008;

/// Where the status flags of an OK packet sit, or of a result set's terminator (an OK
/// with header 0xFE: the raw client asks for CLIENT_DEPRECATE_EOF).
fn ok_status_at(payload: &[u8]) -> Option<usize> {
    if !matches!(payload.first(), Some(0x00 | 0xfe)) {
        return None;
    }
    let mut at = 1;
    for _ in 0..2 {
        at += match *payload.get(at)? {
            0xfc => 3,
            0xfd => 4,
            0xfe => 9,
            _ => 1,
        };
    }
    (payload.len() >= at + 2).then_some(at)
}

pub(crate) fn ok_status(payload: &[u8]) -> Option<u16> {
    let at = ok_status_at(payload)?;
    Some(u16::from_le_bytes([payload[at], payload[at + 1]]))
}

/// `packets` with SERVER_STATUS_IN_TRANS cleared in each OK: a statement run in
/// autocommit is its own transaction, one run directly in an open transaction says so.
fn outside_transactions(mut packets: Vec<Packet>) -> Vec<Packet> {
    for (_, payload) in &mut packets {
        if let Some(at) = ok_status_at(payload) {
            payload[at] &= !0x01;
        }
    }
    packets
}

/// A COM_QUERY of the multi-statement `sql`, and every packet of its reply: each
/// statement's result in turn, to the first without SERVER_MORE_RESULTS_EXISTS or the
/// first ERR.
pub(crate) async fn multi_query(raw: &mut RawMy, sql: &str) -> Vec<Packet> {
    raw.send(&my::packet(0, &[b"\x03", sql.as_bytes()].concat()))
        .await;
    let mut packets = Vec::new();
    loop {
        let result = raw_reply(raw).await;
        let last = result
            .last()
            .map(|(_, payload)| payload.clone())
            .unwrap_or_default();
        packets.extend(result);
        let more = last.first() != Some(&0xff)
            && ok_status(&last).is_some_and(|status| status & MORE_RESULTS != 0);
        if !more {
            return packets;
        }
    }
}

/// The ERR packets among `packets`, by code.
fn errors(packets: &[Packet]) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|(_, p)| my::err_code(p))
        .collect()
}

/// A raw client connected straight to the server, in `database`.
async fn raw_direct(database: &str) -> RawMy {
    let addr = my::upstream().parse().expect("the server's address");
    let (mut raw, _) = my::raw_login(addr).await;
    let mut init_db = vec![0x02];
    init_db.extend_from_slice(database.as_bytes());
    raw.send(&my::packet(0, &init_db)).await;
    assert_eq!(raw_reply(&mut raw).await[0].1[0], 0x00, "COM_INIT_DB");
    raw
}

/// One statement through the raw client, which must succeed.
async fn raw_ok(raw: &mut RawMy, sql: &str) {
    let reply = multi_query(raw, sql).await;
    assert_eq!(errors(&reply), Vec::<u16>::new(), "{sql}");
}

async fn start(lockserver: &TestLockserver) -> Tandem {
    let endpoint = format!("http://{}", lockserver.grpc);
    my::start_with(|c| c.lockserver.endpoint = endpoint).await
}

/// Every row of the two tables the batches write, accounts and items.
async fn tables(direct: &mut mysql_async::Conn) -> (Vec<String>, Vec<String>) {
    (dump(direct, "accounts").await, dump(direct, "items").await)
}

/// The rows of accounts and items after `batch`, run directly in a transaction then
/// rolled back (a failed statement ends it, as through tandem).
async fn rows_after(direct: &mut mysql_async::Conn, batch: &str) -> (Vec<String>, Vec<String>) {
    direct.query_drop("START TRANSACTION").await.unwrap();
    let _ = direct.query_drop(batch).await;
    let rows = tables(direct).await;
    direct.query_drop("ROLLBACK").await.unwrap();
    rows
}

/// Rolls back the raw session's global transaction.
async fn raw_rolled_back(raw: &mut RawMy) {
    let reply = multi_query(raw, "SELECT tandem_rollback()").await;
    assert!(
        reply.iter().any(|(_, p)| p.ends_with(b"Rollbacked")),
        "{reply:?}"
    );
}

/// The same multi-statement query directly (in a transaction rolled back) and through
/// tandem in a global transaction: in autocommit, where each statement is its own
/// transaction, and in the client's transaction. The client reads the same packets,
/// byte for byte (one result per statement, numbered on, each but the last flagged
/// SERVER_MORE_RESULTS_EXISTS), and the same rows are left; the global rollback
/// restores them byte for byte.
#[tokio::test]
async fn a_batch_of_writes_is_captured_statement_by_statement_and_answers_as_directly() {
    let db = prepare("my_batch_writes").await;
    let mut direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let before = tables(&mut direct).await;
    let batch = "UPDATE accounts SET balance = balance - 10 WHERE id = 1;\n\
                 UPDATE accounts SET note = 'z' WHERE id IN (2, 3); \
                 DELETE FROM items WHERE id = 1; INSERT INTO items VALUES (7, 'seventh') ; \
                 UPDATE accounts SET note = 'z' WHERE id = 2 /* matched, not changed */ ;";

    for (opening, closing) in [(None, None), (Some("START TRANSACTION"), Some("COMMIT"))] {
        let mut raw_straight = raw_direct(&db.name).await;
        raw_ok(&mut raw_straight, "START TRANSACTION").await;
        let expected = multi_query(&mut raw_straight, batch).await;
        raw_ok(&mut raw_straight, "ROLLBACK").await;
        let expected_rows = rows_after(&mut direct, batch).await;
        assert_eq!(errors(&expected), Vec::<u16>::new());
        assert_eq!(expected.len(), 5, "one OK per statement: {expected:?}");

        let mut raw = raw_session(&tandem, &db.name).await;
        raw_ok(&mut raw, "SELECT tandem_begin(30000)").await;
        if let Some(opening) = opening {
            raw_ok(&mut raw, opening).await;
        }
        let got = multi_query(&mut raw, batch).await;
        if opening.is_some() {
            assert_eq!(got, expected);
        } else {
            // Directly, it ran in a transaction (to be rolled back), and said so.
            assert_eq!(got, outside_transactions(expected.clone()), "in autocommit");
        }
        if let Some(closing) = closing {
            raw_ok(&mut raw, closing).await;
        }
        // The session goes on in step: the next query reads its own result.
        let one = multi_query(&mut raw, "SELECT 1").await;
        assert_eq!(
            one.iter().filter(|(_, p)| p == b"\x011").count(),
            1,
            "{one:?}"
        );
        let now = tables(&mut direct).await;
        assert_eq!(now, expected_rows, "{opening:?}");
        raw_rolled_back(&mut raw).await;
        let after = tables(&mut direct).await;
        assert_eq!(after, before, "{opening:?}: restored byte for byte");
        assert_eq!(undo_rows(&mut direct).await, 0);
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A statement that fails ends the query where the server ends it: the statements
/// before it ran (and stay in the transaction), those after it never run, and the
/// client reads the same packets as directly. The global rollback undoes what ran.
#[tokio::test]
async fn a_failed_statement_ends_the_batch_as_the_server_ends_it() {
    let db = prepare("my_batch_failed").await;
    let mut direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let before = tables(&mut direct).await;
    // A duplicate key (the server's error, after the write ran), and a table that does
    // not exist.
    for failing in [
        "INSERT INTO items VALUES (9, 'first')",
        "UPDATE no_such_table SET v = 1 WHERE id = 1",
    ] {
        let batch = format!(
            "UPDATE accounts SET balance = 1 WHERE id = 1; {failing}; \
             UPDATE accounts SET balance = 3 WHERE id = 3"
        );
        let mut raw_straight = raw_direct(&db.name).await;
        raw_ok(&mut raw_straight, "START TRANSACTION").await;
        let expected = multi_query(&mut raw_straight, &batch).await;
        raw_ok(&mut raw_straight, "ROLLBACK").await;
        let expected_rows = rows_after(&mut direct, &batch).await.0;
        assert_eq!(expected.len(), 2, "an OK, then the ERR: {expected:?}");
        assert_eq!(errors(&expected).len(), 1, "{failing}");

        for opening in [None, Some("START TRANSACTION")] {
            let mut raw = raw_session(&tandem, &db.name).await;
            raw_ok(&mut raw, "SELECT tandem_begin(30000)").await;
            if let Some(opening) = opening {
                raw_ok(&mut raw, opening).await;
            }
            let got = multi_query(&mut raw, &batch).await;
            assert_eq!(got.len(), 2, "{failing}, {opening:?}: {got:?}");
            // After the failed statement, as after the server's own error (from
            // review: tandem's answer left the first statement's count).
            let count = multi_query(&mut raw, "SELECT ROW_COUNT()").await;
            assert!(
                count.iter().any(|(_, p)| p == b"\x02-1"),
                "{failing}, {opening:?}: ROW_COUNT() {count:?}"
            );
            // The same ERR: its number, code and SQLSTATE (tandem says in its own
            // words that a table does not exist).
            let head = |(seq, payload): &Packet| (*seq, payload[..9].to_vec());
            assert_eq!(
                head(&got[1]),
                head(&expected[1]),
                "{failing}, {opening:?}: the same ERR"
            );
            if opening.is_some() {
                assert_eq!(got[0], expected[0], "{failing}: the same OK");
                raw_ok(&mut raw, "COMMIT").await;
            } else {
                assert_eq!(
                    outside_transactions(got[..1].to_vec()),
                    outside_transactions(expected[..1].to_vec()),
                    "{failing}: the same OK"
                );
            }
            assert_eq!(
                dump(&mut direct, "accounts").await,
                expected_rows,
                "{failing}, {opening:?}: the first ran, the last did not"
            );
            raw_rolled_back(&mut raw).await;
            let after = tables(&mut direct).await;
            assert_eq!(after, before, "{failing}, {opening:?}: restored");
            assert_eq!(undo_rows(&mut direct).await, 0);
        }
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// What is not writes alone stays refused whole, before anything of it runs: a batch
/// with an empty statement or a trailing comment, one that mixes writes with a SET or
/// a read, one that holds DDL, and one that commits.
#[tokio::test]
async fn a_batch_of_writes_with_other_statements_is_refused_whole() {
    let db = prepare("my_batch_mixed").await;
    let mut direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let before = dump(&mut direct, "accounts").await;
    let mut conn = my::connect(&tandem, &db.name).await;
    text(&mut conn, "SELECT tandem_begin(30000)").await.unwrap();
    for batch in [
        // An empty statement, where the server stops with 1064, and a comment after the
        // last, which the server answers as a statement of its own (from review).
        "UPDATE accounts SET balance = 1 WHERE id = 1;; UPDATE accounts SET balance = 2 WHERE id = 2",
        "UPDATE accounts SET balance = 1 WHERE id = 1; UPDATE accounts SET balance = 2 WHERE id = 2; -- done",
        "UPDATE accounts SET balance = 1 WHERE id = 1; SET @a = 1",
        "UPDATE accounts SET balance = 1 WHERE id = 1; SELECT 1",
        "UPDATE accounts SET balance = 1 WHERE id = 1; CREATE TABLE t_batch (id INT PRIMARY KEY)",
        "UPDATE accounts SET balance = 1 WHERE id = 1; COMMIT",
    ] {
        let e = conn.query_drop(batch).await.expect_err(batch);
        assert_eq!(code(&e), 1235, "{batch}: {e}");
        assert_eq!(dump(&mut direct, "accounts").await, before, "{batch}");
    }
    let a: Option<Option<i64>> = conn.query_first("SELECT @a").await.unwrap();
    assert_eq!(a, Some(None), "nothing of the refused query ran");
    rolled_back(&mut conn).await;
    assert_eq!(dump(&mut direct, "accounts").await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A client that did not ask for CLIENT_MULTI_STATEMENTS at connect and turns it on
/// with COM_SET_OPTION, as MySQL Connector/J does around a rewritten batch: tandem
/// follows the option (its batch was refused), and refuses again once it is off.
#[tokio::test]
async fn multi_statements_follow_com_set_option() {
    let db = prepare("my_batch_set_option").await;
    let mut direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let before = dump(&mut direct, "accounts").await;
    let mut raw = RawMy::connect(my::addr(&tandem)).await;
    raw.recv().await.expect("greeting");
    let user = my::admin_opts().user().unwrap_or("root").to_owned();
    raw.send(&my::login_packet_with(&user, 0)).await;
    let (_, ok) = raw.recv().await.expect("login reply");
    assert_eq!(ok.first(), Some(&0), "login: {ok:?}");
    let mut init_db = vec![0x02];
    init_db.extend_from_slice(db.name.as_bytes());
    raw.send(&my::packet(0, &init_db)).await;
    assert_eq!(raw_reply(&mut raw).await[0].1[0], 0x00, "COM_INIT_DB");
    raw_ok(&mut raw, "SELECT tandem_begin(30000)").await;
    let batch = "UPDATE accounts SET balance = 1 WHERE id = 1; UPDATE accounts SET balance = 2 WHERE id = 2";
    let set_option = |on: bool| my::packet(0, &[0x1b, u8::from(!on), 0]);

    assert_eq!(errors(&multi_query(&mut raw, batch).await), [1235], "off");
    raw.send(&set_option(true)).await;
    let (_, reply) = raw.recv().await.expect("COM_SET_OPTION's reply");
    assert_ne!(reply.first(), Some(&0xff), "{reply:?}");
    let reply = multi_query(&mut raw, batch).await;
    assert_eq!(reply.len(), 2, "one OK per statement: {reply:?}");
    assert_eq!(errors(&reply), Vec::<u16>::new());
    assert_ne!(dump(&mut direct, "accounts").await, before);
    raw.send(&set_option(false)).await;
    raw.recv().await.expect("COM_SET_OPTION's reply");
    assert_eq!(
        errors(&multi_query(&mut raw, batch).await),
        [1235],
        "off again"
    );

    raw_rolled_back(&mut raw).await;
    assert_eq!(dump(&mut direct, "accounts").await, before);
    assert_eq!(undo_rows(&mut direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}
