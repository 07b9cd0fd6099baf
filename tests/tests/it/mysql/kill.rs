//! KILL QUERY with the connection id a client sees (tandem's) reaches the backend thread
//! of that session; a backend thread id (from SHOW PROCESSLIST) still works; a client
//! that disconnects mid-query leaves no statement running.

use mysql_async::Conn;
use mysql_async::prelude::*;
use std::time::{Duration, Instant};
use tandem_tests::harness::eventually;
use tandem_tests::mysql::{self as my, MyTestDb};

/// Waits until MariaDB runs the test's `SELECT SLEEP(30)` in `db`: a KILL QUERY sent
/// before it starts would find an idle thread and stop nothing.
async fn sleep_running(db: &MyTestDb) {
    eventually("SLEEP(30) is running", || async {
        let running: Option<i64> = db
            .direct()
            .await
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE DB = ? AND INFO = 'SELECT SLEEP(30)'",
                (&db.name,),
            )
            .await
            .unwrap();
        running == Some(1)
    })
    .await;
}

#[tokio::test]
async fn kill_query_with_tandems_id_stops_the_right_statement() {
    let db = MyTestDb::create("kill").await;
    let tandem = my::start().await;
    let mut victim = my::connect(&tandem, &db.name).await;
    let mut bystander = my::connect(&tandem, &db.name).await;
    let mut killer = my::connect(&tandem, &db.name).await;
    let victim_id = victim.id();
    let bystander_backend: Option<u64> = bystander
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap();
    assert!(victim_id >= 1 << 30);

    let started = Instant::now();
    let sleeping = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = victim.query_first("SELECT SLEEP(30)").await;
        (victim, r)
    });
    sleep_running(&db).await;
    killer
        .query_drop(format!("KILL QUERY {victim_id}"))
        .await
        .expect("KILL QUERY with tandem's id");
    let (mut victim, result) = sleeping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the sleep was cut short"
    );
    // MariaDB ends an interrupted SLEEP() with 1 (or error 1317 while sending rows).
    match result {
        Ok(v) => assert_eq!(v, Some(1)),
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1317),
        Err(e) => panic!("unexpected: {e}"),
    }
    let still: Option<i32> = victim.query_first("SELECT 7").await.unwrap();
    assert_eq!(still, Some(7), "KILL QUERY leaves the connection open");
    // Spelled with a comment and the id in parentheses, as the server accepts it.
    let sleeping = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = victim.query_first("SELECT SLEEP(30)").await;
        (victim, r)
    });
    sleep_running(&db).await;
    killer
        .query_drop(format!("KILL /* runaway */ QUERY ({victim_id})"))
        .await
        .expect("KILL QUERY (id) with tandem's id");
    let (mut victim, result) = sleeping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the second sleep was cut short"
    );
    assert!(
        matches!(result, Ok(Some(1)))
            || matches!(&result, Err(mysql_async::Error::Server(e)) if e.code == 1317),
        "{result:?}"
    );
    // The bystander's own backend thread is untouched.
    let again: Option<u64> = bystander
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap();
    assert_eq!(again, bystander_backend);
    assert_eq!(tandem.metric("tandem_mysql_kills_mapped_total").await, 2.0);

    // KILL CONNECTION with tandem's id ends that session; its next query fails.
    let bystander_id = bystander.id();
    killer
        .query_drop(format!("KILL CONNECTION {bystander_id}"))
        .await
        .unwrap();
    assert!(bystander.query_drop("SELECT 1").await.is_err());

    // A backend thread id passes through untouched.
    let victim_backend: Option<u64> = victim.query_first("SELECT CONNECTION_ID()").await.unwrap();
    let sleeping = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = victim.query_first("SELECT SLEEP(30)").await;
        r
    });
    sleep_running(&db).await;
    killer
        .query_drop(format!("KILL QUERY {}", victim_backend.unwrap()))
        .await
        .unwrap();
    let r = sleeping.await.unwrap();
    assert!(matches!(r, Ok(Some(1))) || r.is_err());
    drop(bystander);
    killer.disconnect().await.unwrap();
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_query_leaves_no_statement_running() {
    let db = MyTestDb::create("leave").await;
    let tandem = my::start().await;
    let mut conn = my::connect(&tandem, &db.name).await;
    let running = tokio::spawn(async move {
        let _: Result<Option<i64>, _> = conn.query_first("SELECT SLEEP(60)").await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.abort();
    eventually(
        "the backend statement is stopped and its connection gone",
        || async { db.backend_count().await == 0 },
    )
    .await;
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}

/// A database whose accounts row 1 a global transaction holds, through a tandem whose
/// writes outside global transactions wait for it, up to 20 s.
struct Held {
    db: MyTestDb,
    direct: Conn,
    /// The accounts rows before the holder's write.
    before: Vec<String>,
    lockserver: tandem_tests::lockserver::TestLockserver,
    tandem: tandem_tests::harness::Tandem,
    /// The session of the global transaction that holds row 1.
    holder: Conn,
}

async fn row_one_held(label: &str) -> Held {
    use tandem_tests::lockserver::{Kind, TestLockserver};
    let db = super::at_mode::prepare(label).await;
    let mut direct = db.direct().await;
    let before = super::at_mode::dump(&mut direct, "accounts").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let endpoint = format!("http://{}", lockserver.grpc);
    let tandem = my::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.lockserver.outside_writes = tandem_proxy::config::OutsideWrites::Wait;
        c.lockserver.lock_wait_ms = 20_000;
    })
    .await;
    let mut holder = my::connect(&tandem, &db.name).await;
    super::at_mode::text(&mut holder, "SELECT tandem_begin(60000)")
        .await
        .unwrap();
    holder
        .query_drop("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    Held {
        db,
        direct,
        before,
        lockserver,
        tandem,
        holder,
    }
}

/// Sends `sql` on `victim` in the background, waits until it has waited a while (in
/// tandem: the server runs nothing meanwhile), then kills its query with tandem's id
/// from `killer`; the statement must fail with `expected` at once, not at its wait's
/// end.
async fn killed_while_waiting(
    victim: Conn,
    killer: &mut Conn,
    sql: &'static str,
    expected: u16,
) -> Conn {
    let victim_id = victim.id();
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let mut victim = victim;
        let result = victim.query_drop(sql).await;
        (victim, result)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "{sql}: waits for the global lock");
    killer
        .query_drop(format!("KILL QUERY {victim_id}"))
        .await
        .expect("KILL QUERY with tandem's id");
    let (victim, result) = waiting.await.unwrap();
    let e = result.expect_err(sql);
    assert!(
        matches!(&e, mysql_async::Error::Server(s) if s.code == expected
            && (expected != 1317 || s.message.starts_with("Query execution was interrupted"))),
        "{sql}: {e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{sql}: ended by the kill, after {:?}",
        started.elapsed()
    );
    victim
}

/// KILL QUERY (JDBC's setQueryTimeout sends one over another connection) ends the
/// waits tandem makes itself for another global transaction's row locks, where the
/// backend is idle and the server's kill stops nothing: a locking read's check and a
/// branch's registration at COMMIT in a global transaction, and a write outside one,
/// checked by its rows or judged by its table. Each ends with 1317 at once, as a
/// server lock wait does; the session goes on, nothing of the killed statement stays,
/// and the holder's rollback is exact. A user the server does not let kill the thread
/// gets the server's error, and the wait goes on.
#[tokio::test]
async fn kill_query_ends_tandems_own_waits_for_global_locks() {
    let Held {
        db,
        mut direct,
        before,
        lockserver,
        tandem,
        mut holder,
    } = row_one_held("kill_waits").await;
    let mut killer = my::connect(&tandem, &db.name).await;

    let mut victim = my::connect(&tandem, &db.name).await;
    super::at_mode::text(&mut victim, "SELECT tandem_begin(60000)")
        .await
        .unwrap();
    victim.query_drop("START TRANSACTION").await.unwrap();
    let mut victim = killed_while_waiting(
        victim,
        &mut killer,
        "SELECT * FROM accounts WHERE id = 1 FOR UPDATE",
        1317,
    )
    .await;
    victim
        .query_drop("UPDATE accounts SET balance = 7 WHERE id = 1")
        .await
        .unwrap();
    // The local transaction is rolled back with the registration: 1213 says so (after
    // 1317 a client would take its transaction to be still open).
    let mut victim = killed_while_waiting(victim, &mut killer, "COMMIT", 1213).await;
    let in_transaction: Option<i64> = victim.query_first("SELECT @@in_transaction").await.unwrap();
    assert_eq!(in_transaction, Some(0));
    super::at_mode::rolled_back(&mut victim).await;

    // Outside a global transaction: a write checked by its rows, and one judged by its
    // table.
    let victim = killed_while_waiting(
        victim,
        &mut killer,
        "UPDATE accounts SET balance = 8 WHERE id = 1",
        1317,
    )
    .await;
    let mut victim = killed_while_waiting(
        victim,
        &mut killer,
        "SELECT 1; UPDATE accounts SET balance = 9 WHERE id = 2",
        1317,
    )
    .await;
    let one: Option<i64> = victim.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1), "the session goes on");

    // A user who may not kill the victim's thread: the server's refusal, and the wait
    // goes on to the kill of one who may.
    let user = format!("{}_k", db.name);
    for host in ["%", "localhost", "127.0.0.1"] {
        direct
            .query_drop(format!(
                "CREATE USER '{user}'@'{host}'; GRANT ALL ON `{}`.* TO '{user}'@'{host}'",
                db.name
            ))
            .await
            .unwrap();
    }
    let mut unprivileged = Conn::new(
        my::opts(&tandem, &db.name)
            .user(Some(user.clone()))
            .pass(None::<String>),
    )
    .await
    .expect("the unprivileged user connects through tandem");
    let victim_id = victim.id();
    let waiting = tokio::spawn(async move {
        let result = victim
            .query_drop("UPDATE accounts SET balance = 10 WHERE id = 1")
            .await;
        (victim, result)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = unprivileged
        .query_drop(format!("KILL QUERY {victim_id}"))
        .await
        .expect_err("not the owner of the thread");
    // In the server's words, naming the thread by the id the client gave.
    assert!(
        matches!(&e, mysql_async::Error::Server(s) if s.code == 1095
            && s.message.ends_with(&format!("thread {victim_id}"))),
        "{e}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the refused kill ended nothing");
    killer
        .query_drop(format!("KILL QUERY {victim_id}"))
        .await
        .unwrap();
    let (victim, result) = waiting.await.unwrap();
    assert!(
        matches!(&result, Err(mysql_async::Error::Server(s)) if s.code == 1317),
        "{result:?}"
    );

    super::at_mode::rolled_back(&mut holder).await;
    assert_eq!(
        super::at_mode::dump(&mut direct, "accounts").await,
        before,
        "nothing of the killed statements stayed; the holder's write undone"
    );
    drop(unprivileged);
    for host in ["%", "localhost", "127.0.0.1"] {
        direct
            .query_drop(format!("DROP USER '{user}'@'{host}'"))
            .await
            .unwrap();
    }
    drop((victim, holder, killer));
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A new session of `held` runs `setup`, then sends `sql`, which waits for the held
/// row in tandem; meanwhile its backend connection is killed on the server directly
/// (an operator's KILL CONNECTION, a restart). The statement must fail at once, not
/// at its wait's end (20 s), and the session ends.
async fn backend_killed_while_waiting(held: &mut Held, setup: &[&str], sql: &'static str) {
    let mut victim = my::connect(&held.tandem, &held.db.name).await;
    for statement in setup {
        victim.query_drop(*statement).await.unwrap();
    }
    let backend: Option<u64> = victim.query_first("SELECT CONNECTION_ID()").await.unwrap();
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let result = victim.query_drop(sql).await;
        (victim, result)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "{sql}: waits for the global lock");
    held.direct
        .query_drop(format!("KILL CONNECTION {}", backend.unwrap()))
        .await
        .unwrap();
    let (mut victim, result) = waiting.await.unwrap();
    assert!(result.is_err(), "{sql}: {result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{sql}: ended when its backend went, not after {:?}",
        started.elapsed()
    );
    assert!(
        victim.query_drop("SELECT 1").await.is_err(),
        "{sql}: the session ended with its backend"
    );
}

/// A session whose backend connection is killed while it waits in tandem for a global
/// lock (the backend idle meanwhile) hears of it at once: a locking read's check in a
/// global transaction, and a write outside one, checked by its rows or judged by its
/// table. Before, each waited out `lock_wait_ms`, then got 1205 on a dead connection,
/// which invites a retry.
#[tokio::test]
async fn a_backend_killed_during_tandems_wait_ends_the_wait() {
    let mut held = row_one_held("kill_backend").await;
    backend_killed_while_waiting(
        &mut held,
        &["SELECT tandem_begin(60000)", "START TRANSACTION"],
        "SELECT * FROM accounts WHERE id = 1 FOR UPDATE",
    )
    .await;
    backend_killed_while_waiting(
        &mut held,
        &[],
        "UPDATE accounts SET balance = 8 WHERE id = 1",
    )
    .await;
    backend_killed_while_waiting(
        &mut held,
        &[],
        "SELECT 1; UPDATE accounts SET balance = 9 WHERE id = 2",
    )
    .await;
    let Held {
        mut direct,
        before,
        lockserver,
        tandem,
        mut holder,
        ..
    } = held;
    super::at_mode::rolled_back(&mut holder).await;
    assert_eq!(
        super::at_mode::dump(&mut direct, "accounts").await,
        before,
        "nothing of the killed statements stayed; the holder's write undone"
    );
    drop(holder);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// MariaDB's per-statement time limit (`SET STATEMENT max_statement_time = s FOR …`,
/// how Connector/J sends a query timeout to MariaDB) ends tandem's own waits for a
/// global lock as it ends the server's: 1969 after about `s`, not the lock error after
/// `lock_wait_ms`. Text and prepared, in a global transaction and outside one; the
/// session goes on and the holder's rollback is exact.
#[tokio::test]
async fn a_statements_own_time_limit_ends_tandems_waits() {
    let Held {
        db,
        mut direct,
        before,
        lockserver,
        tandem,
        mut holder,
    } = row_one_held("kill_time_limit").await;

    let mut conn = my::connect(&tandem, &db.name).await;
    let timed_out = |result: Result<(), mysql_async::Error>, what: &str, started: Instant| {
        let e = result.expect_err(what);
        assert!(
            matches!(&e, mysql_async::Error::Server(s) if s.code == 1969 && s.state == "70100"),
            "{what}: {e}"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(5),
            "{what}: ended after {took:?}"
        );
    };
    // Outside a global transaction, text and prepared.
    let started = Instant::now();
    let result = conn
        .query_drop("SET STATEMENT max_statement_time = 0.5 FOR UPDATE accounts SET balance = 8 WHERE id = 1")
        .await;
    timed_out(result, "outside, text", started);
    let started = Instant::now();
    let result = conn
        .exec_drop(
            "SET STATEMENT max_statement_time = 0.5 FOR UPDATE accounts SET balance = ? WHERE id = ?",
            (9, 1),
        )
        .await;
    timed_out(result, "outside, prepared", started);
    // A locking read in a global transaction.
    super::at_mode::text(&mut conn, "SELECT tandem_begin(60000)")
        .await
        .unwrap();
    conn.query_drop("START TRANSACTION").await.unwrap();
    let started = Instant::now();
    let result = conn
        .query_drop("SET STATEMENT max_statement_time = 0.5 FOR SELECT * FROM accounts WHERE id = 1 FOR UPDATE")
        .await;
    timed_out(result, "a locking read", started);
    // Without a limit, the next statement is not held to the last one's.
    conn.query_drop("SELECT SLEEP(0.6)").await.unwrap();
    conn.query_drop("ROLLBACK").await.unwrap();
    super::at_mode::rolled_back(&mut conn).await;

    super::at_mode::rolled_back(&mut holder).await;
    assert_eq!(super::at_mode::dump(&mut direct, "accounts").await, before);
    drop((conn, holder));
    tandem.shutdown().await;
    lockserver.stop().await;
}
