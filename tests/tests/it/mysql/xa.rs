//! Control functions and XA mode over MySQL: a MariaDB branch (XA START … XA PREPARE)
//! and a PostgreSQL branch in one global transaction, committed or rolled back
//! together; the client's own XA statements; a proxy killed between prepare and phase 2.

use super::at_mode::{code, raw_query, raw_reply, raw_session, rolled_back, text};
use futures::FutureExt;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tandem_tests::harness::{Tandem, eventually};
use tandem_tests::lockserver::{Kind, TestLockserver};
use tandem_tests::mysql::{self as my, MyTestDb};
use tandem_tests::process::ProxyProcess;
use tandem_tests::relay::LossyRelay;

/// XA RECOVER is server-wide: the tests that leave prepared branches behind for a
/// while, and the one whose recovery rolls back orphans after a second, take turns.
static XA_SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn bank(label: &str) -> MyTestDb {
    let db = MyTestDb::create(label).await;
    let mut direct = db.direct().await;
    direct
        .query_drop(
            "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL, note VARCHAR(20)) ENGINE=InnoDB;
             INSERT INTO accounts VALUES (1, 1000, 'a'), (2, 1000, 'b'), (3, 1000, 'c')",
        )
        .await
        .unwrap();
    db
}

async fn balances(conn: &mut Conn) -> Vec<(i32, i64)> {
    conn.query("SELECT id, balance FROM accounts ORDER BY id")
        .await
        .unwrap()
}

/// tandem's prepared XA branches on the server (XA RECOVER sees every database's).
async fn tandem_prepared(conn: &mut Conn, xid: &str) -> usize {
    let rows: Vec<(i64, usize, usize, Vec<u8>)> = conn.query("XA RECOVER").await.unwrap();
    let ours = format!("tandem:{xid}");
    rows.iter()
        .filter(|(_, g, _, data)| data.get(..*g) == Some(ours.as_bytes()))
        .count()
}

/// A `[[mysql]]` front end in XA mode, for a proxy process.
fn mysql_section(recovery_interval_ms: u64, orphan_after_ms: u64) -> String {
    let admin = my::admin_opts();
    format!(
        "[[mysql]]\nlisten = \"127.0.0.1:{{port}}\"\nupstream = \"{}\"\nmode = \"xa\"\nxa_recovery_interval_ms = {recovery_interval_ms}\nxa_orphan_after_ms = {orphan_after_ms}\n[mysql.service]\nuser = \"{}\"\npassword = \"{}\"\n",
        my::upstream(),
        admin.user().unwrap_or("root"),
        admin.pass().unwrap_or(""),
    )
}

/// Runs the control statement `sql` until the lockserver it needs answers again (for
/// up to 10 s): its value.
async fn once_the_lockserver_is_back(conn: &mut Conn, sql: &str) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match text(conn, sql).await {
            Ok(value) => return value,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "lockserver not back yet");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{sql} after the restart: {e}"),
        }
    }
}

async fn start(lockserver: &TestLockserver) -> Tandem {
    let endpoint = format!("http://{}", lockserver.grpc);
    my::start_with(|c| c.lockserver.endpoint = endpoint).await
}

/// `conn`, in XA mode, begins a global transaction and prepares a branch of it that
/// takes 10 from account 1 (MariaDB keeps it attached to the connection); its xid.
async fn begin_and_prepare(conn: &mut Conn) -> String {
    text(conn, "SELECT tandem_mode('xa')").await.unwrap();
    let xid = text(conn, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    for sql in [
        "START TRANSACTION",
        "UPDATE accounts SET balance = balance - 10 WHERE id = 1",
        "COMMIT",
    ] {
        conn.query_drop(sql).await.unwrap();
    }
    xid
}

#[tokio::test]
async fn control_functions_answer_over_mysql_and_a_reset_unbinds() {
    let db = bank("ctl").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut conn = my::connect(&tandem, &db.name).await;

    assert_eq!(text(&mut conn, "SELECT tandem_xid()").await.unwrap(), None);
    let xid = text(&mut conn, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        text(&mut conn, "select TANDEM_XID()")
            .await
            .unwrap()
            .as_deref(),
        Some(xid.as_str())
    );
    assert_eq!(
        text(&mut conn, "SELECT tandem_status()")
            .await
            .unwrap()
            .as_deref(),
        Some("Begin")
    );
    // Refusals carry the server's codes for what they mean.
    let e = text(&mut conn, "SELECT tandem_join('x', 'y')")
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1210, "bad arguments: {e}");
    // Arguments only the lockserver can judge are bad arguments too.
    let mut unbound = my::connect(&tandem, &db.name).await;
    for call in ["SELECT tandem_join('')", "SELECT tandem_begin(99999999999)"] {
        let e = text(&mut unbound, call).await.unwrap_err();
        assert_eq!(code(&e), 1210, "{call}: {e}");
    }
    drop(unbound);
    let e = text(&mut conn, "SELECT tandem_begin()").await.unwrap_err();
    assert_eq!(code(&e), 1399, "already bound: {e}");
    let mut other = my::connect(&tandem, &db.name).await;
    other.query_drop("START TRANSACTION").await.unwrap();
    let e = text(&mut other, "SELECT tandem_begin()").await.unwrap_err();
    assert_eq!(code(&e), 1568, "inside a transaction: {e}");
    other.query_drop("ROLLBACK").await.unwrap();
    let e = text(&mut other, "SELECT tandem_commit()")
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1399, "not bound: {e}");
    // The server knows no such function: over COM_STMT_PREPARE tandem says so.
    let e = other
        .exec_drop("SELECT tandem_xid()", ())
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1235, "prepared: {e}");
    drop(other);
    // COM_RESET_CONNECTION unbinds, as a pool's reset does.
    conn.reset().await.unwrap();
    assert_eq!(text(&mut conn, "SELECT tandem_xid()").await.unwrap(), None);
    assert_eq!(
        text(&mut conn, &format!("SELECT tandem_join('{xid}')"))
            .await
            .unwrap()
            .as_deref(),
        Some(xid.as_str())
    );
    rolled_back(&mut conn).await;
    drop(conn);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_mariadb_xa_branch_and_a_postgres_branch_commit_or_roll_back_together() {
    let _server = XA_SERVER.lock().await;
    let my_db = bank("xa_mix").await;
    let pg_db = crate::pg::at_mode_prepare("xa_mix_pg").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut direct = my_db.direct().await;
    let pg_direct = pg_db.direct().await;
    let before_my = balances(&mut direct).await;
    let before_pg = crate::pg::at_mode_dump(&pg_direct).await;

    for decision in ["rollback", "commit"] {
        let pg = tandem.connect(&pg_db.name).await;
        let mut conn = my::connect(&tandem, &my_db.name).await;
        let xid = crate::pg::at_mode_one(&pg, "SELECT tandem_begin(30000)")
            .await
            .unwrap()
            .unwrap();
        pg.batch_execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
            .await
            .unwrap();

        assert_eq!(
            text(&mut conn, "SELECT tandem_mode('xa')")
                .await
                .unwrap()
                .as_deref(),
            Some("xa")
        );
        text(&mut conn, &format!("SELECT tandem_join('{xid}')"))
            .await
            .unwrap();
        // A write outside START TRANSACTION would commit outside the branch, MariaDB's
        // SET STATEMENT … FOR one too.
        for write in [
            "UPDATE accounts SET note = 'x' WHERE id = 2",
            "SET STATEMENT max_statement_time = 10 FOR UPDATE accounts SET note = 'x' WHERE id = 2",
            "SET /*!*/ STATEMENT max_statement_time = 10 FOR UPDATE accounts SET note = 'x' WHERE id = 2",
        ] {
            let e = conn.query_drop(write).await.unwrap_err();
            assert_eq!(code(&e), 1235, "{write}: {e}");
        }
        // A read with a timeout of its own is no write.
        conn.query_drop("SET STATEMENT max_statement_time = 10 FOR SELECT * FROM accounts")
            .await
            .unwrap();
        conn.query_drop("START TRANSACTION").await.unwrap();
        conn.query_drop("UPDATE accounts SET balance = balance + 10 WHERE id = 1")
            .await
            .unwrap();
        conn.query_drop("INSERT INTO accounts VALUES (9, 5, 'new')")
            .await
            .unwrap();
        conn.query_drop("COMMIT").await.unwrap();
        assert_eq!(
            tandem_prepared(&mut direct, &xid).await,
            1,
            "the branch is prepared"
        );
        assert_eq!(
            balances(&mut direct).await,
            before_my,
            "and not visible yet"
        );

        let status = crate::pg::at_mode_one(&pg, &format!("SELECT tandem_{decision}()"))
            .await
            .unwrap();
        let want = if decision == "rollback" {
            "Rollbacked"
        } else {
            "Committed"
        };
        assert_eq!(status.as_deref(), Some(want));
        eventually("the XA branch is finished", || async {
            let mut d = my_db.direct().await;
            tandem_prepared(&mut d, &xid).await == 0
        })
        .await;
        // The connection that prepared the branch serves again once it is finished.
        let n: Option<i64> = conn
            .query_first("SELECT COUNT(*) FROM accounts")
            .await
            .unwrap();
        assert!(n.is_some());
        if decision == "rollback" {
            assert_eq!(balances(&mut direct).await, before_my);
            assert_eq!(crate::pg::at_mode_dump(&pg_direct).await, before_pg);
        } else {
            let mut want = before_my.clone();
            want[0].1 += 10;
            want.push((9, 5));
            assert_eq!(balances(&mut direct).await, want);
        }
        drop(conn);
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn the_clients_own_xa_passes_through_unless_bound_and_at_mode_needs_its_undo_log() {
    let db = bank("xa_own").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut conn = my::connect(&tandem, &db.name).await;
    let gid = format!("app-{}", db.name);

    for sql in [
        format!("XA START '{gid}'"),
        "UPDATE accounts SET balance = 1 WHERE id = 3".to_owned(),
        format!("XA END '{gid}'"),
        format!("XA PREPARE '{gid}'"),
        format!("XA COMMIT '{gid}'"),
    ] {
        conn.query_drop(&sql).await.unwrap();
    }
    let mut direct = db.direct().await;
    assert_eq!(balances(&mut direct).await[2], (3, 1));

    text(&mut conn, "SELECT tandem_begin()").await.unwrap();
    let e = conn
        .query_drop(format!("XA START '{gid}-2'"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1235, "{e}");
    // This database has no undo_log (no `tandem migrate`): an AT write fails with the
    // server's error and a hint, and changes nothing; reads run.
    let e = conn
        .query_drop("UPDATE accounts SET balance = 2 WHERE id = 3")
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1146, "{e}");
    assert!(e.to_string().contains("tandem migrate"), "{e}");
    assert_eq!(balances(&mut direct).await[2], (3, 1));
    let n: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM accounts")
        .await
        .unwrap();
    assert_eq!(n, Some(3));
    // The same over server-side prepared statements (COM_STMT_EXECUTE).
    let e = conn
        .exec_drop("UPDATE accounts SET balance = ? WHERE id = 3", (2,))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1146, "{e}");
    let n: Option<i64> = conn
        .exec_first("SELECT COUNT(*) FROM accounts WHERE id > ?", (0,))
        .await
        .unwrap();
    assert_eq!(n, Some(3));
    assert_eq!(balances(&mut direct).await[2], (3, 1), "nothing ran");
    // In XA mode a prepared write runs inside the branch, and only there. (Row 2: the
    // failed AT branches above keep their global locks on row 3 until the global
    // transaction ends, and a write inside the XA branch meets them.)
    text(&mut conn, "SELECT tandem_mode('xa')").await.unwrap();
    let e = conn
        .exec_drop("UPDATE accounts SET balance = ? WHERE id = 2", (2,))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1235, "{e}");
    conn.query_drop("START TRANSACTION").await.unwrap();
    conn.exec_drop("UPDATE accounts SET balance = ? WHERE id = 2", (2,))
        .await
        .unwrap();
    conn.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(balances(&mut direct).await[1], (2, 1000), "rolled back");
    assert_eq!(balances(&mut direct).await[2], (3, 1), "nothing ran");
    text(&mut conn, "SELECT tandem_rollback()").await.unwrap();
    drop(conn);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Inside an XA-mode branch the client's own XA statements, and the transaction's
/// start and end, are refused over server-side prepared statements as they are
/// rewritten or refused over COM_QUERY: run as they are, beside the branch, an XA
/// COMMIT … ONE PHASE committed what the global rollback then could not undo.
#[tokio::test]
async fn prepared_xa_and_transaction_statements_never_end_the_branch_beside_tandem() {
    let db = bank("xa_prepared_own").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut direct = db.direct().await;
    let before = balances(&mut direct).await;
    let mut conn = my::connect(&tandem, &db.name).await;
    text(&mut conn, "SELECT tandem_mode('xa')").await.unwrap();
    let xid = text(&mut conn, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    conn.query_drop("START TRANSACTION").await.unwrap();
    conn.query_drop("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    for sql in [
        format!("XA END 'tandem:{xid}'"),
        format!("XA COMMIT 'tandem:{xid}' ONE PHASE"),
        "COMMIT".to_owned(),
        "ROLLBACK".to_owned(),
        "START TRANSACTION".to_owned(),
    ] {
        let e = conn.exec_drop(&sql, ()).await.unwrap_err();
        assert_eq!(code(&e), 1235, "{sql}: {e}");
    }
    // Nor through SQL-level PREPARE and EXECUTE, or a comment the server runs.
    for sql in [
        format!("EXECUTE IMMEDIATE \"XA END 'tandem:{xid}'\""),
        format!("PREPARE s FROM \"XA END 'tandem:{xid}'\""),
        format!("/*!50000 XA END 'tandem:{xid}' */"),
        format!("/*M! XA END 'tandem:{xid}' */"),
        format!("SELECT 1; XA END 'tandem:{xid}'"),
        format!("/*!EXECUTE IMMEDIATE \"XA END 'tandem:{xid}'\" */"),
    ] {
        let e = conn.query_drop(&sql).await.unwrap_err();
        assert_eq!(code(&e), 1235, "{sql}: {e}");
    }
    // The branch goes on, and ends as the global transaction decides.
    conn.query_drop("UPDATE accounts SET balance = 2 WHERE id = 2")
        .await
        .unwrap();
    conn.query_drop("COMMIT").await.unwrap();
    let status = text(&mut conn, "SELECT tandem_rollback()").await.unwrap();
    assert_eq!(status.as_deref(), Some("Rollbacked"));
    assert_eq!(
        balances(&mut direct).await,
        before,
        "nothing of the branch stays"
    );
    drop(conn);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// XA START takes no access mode: START TRANSACTION READ ONLY still starts a branch
/// that refuses writes, as MariaDB refuses them directly (1792).
#[tokio::test]
async fn start_transaction_read_only_stays_read_only_in_xa_mode() {
    let db = bank("xa_read_only").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut direct = db.direct().await;
    let before = balances(&mut direct).await;
    let mut conn = my::connect(&tandem, &db.name).await;
    text(&mut conn, "SELECT tandem_mode('xa')").await.unwrap();
    text(&mut conn, "SELECT tandem_begin(30000)").await.unwrap();
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .unwrap();
    let e = conn
        .query_drop("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1792, "{e}");
    assert_eq!(balances(&mut conn).await, before, "it reads");
    conn.query_drop("COMMIT").await.unwrap();
    let status = text(&mut conn, "SELECT tandem_commit()").await.unwrap();
    assert_eq!(status.as_deref(), Some("Committed"));
    // The next branch is read-write again.
    text(&mut conn, "SELECT tandem_begin(30000)").await.unwrap();
    conn.query_drop("START TRANSACTION").await.unwrap();
    conn.query_drop("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    conn.query_drop("COMMIT").await.unwrap();
    let status = text(&mut conn, "SELECT tandem_commit()").await.unwrap();
    assert_eq!(status.as_deref(), Some("Committed"));
    // Phase 2 (XA COMMIT) runs after the decision.
    eventually("the branch's write committed", || async {
        let mut d = db.direct().await;
        balances(&mut d).await[0] == (1, 1)
    })
    .await;
    drop(conn);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_mariadb_branch_prepared_by_a_killed_proxy_is_finished_after_the_decision() {
    let _server = XA_SERVER.lock().await;
    let db = bank("xa_kill").await;
    let mut direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let ls = lockserver.client();
    let section = mysql_section(60_000, 600_000);
    let binary = env!("CARGO_BIN_EXE_tandem-under-test");

    for commit in [true, false] {
        let before = balances(&mut direct).await;
        let proxy = ProxyProcess::start(binary, &section, &lockserver).await;
        let mut conn = proxy.connect_mysql(&db.name).await;
        let xid = text(&mut conn, "SELECT tandem_begin(60000)")
            .await
            .unwrap()
            .unwrap();
        conn.query_drop("START TRANSACTION").await.unwrap();
        conn.query_drop("UPDATE accounts SET balance = balance + 100 WHERE id = 2")
            .await
            .unwrap();
        conn.query_drop("COMMIT").await.unwrap();
        assert_eq!(tandem_prepared(&mut direct, &xid).await, 1);
        drop(conn);
        proxy.kill();

        let parsed = tandem_lockserver::client::Xid::parse(&xid).unwrap();
        if commit {
            ls.commit(&parsed).await.unwrap();
        } else {
            let _ = ls.rollback(&parsed).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(
            tandem_prepared(&mut direct, &xid).await,
            1,
            "nothing finishes the branch while no proxy runs"
        );
        let proxy = ProxyProcess::start(binary, &section, &lockserver).await;
        eventually("the prepared branch is finished", || async {
            let mut d = db.direct().await;
            tandem_prepared(&mut d, &xid).await == 0
        })
        .await;
        let mut want = before.clone();
        if commit {
            want[1].1 += 100;
        }
        assert_eq!(balances(&mut direct).await, want, "commit={commit}");
        // The database has no undo_log (XA mode needs none): its phase 2 still reaches
        // the restarted proxy, which finds the branch finished and says so.
        let over = if commit { "Committed" } else { "Rollbacked" };
        eventually("the lockserver hears the branch is finished", || async {
            let (_, txn) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
            txn["status"] == over
        })
        .await;
        proxy.kill();
    }
    lockserver.stop().await;
}

#[tokio::test]
async fn a_lockserver_restart_between_xa_prepare_and_decision_loses_nothing() {
    let _server = XA_SERVER.lock().await;
    let db = bank("xa_ls_restart").await;
    let mut direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut conn = my::connect(&tandem, &db.name).await;
    text(&mut conn, "SELECT tandem_mode('xa')").await.unwrap();
    let xid = text(&mut conn, "SELECT tandem_begin(60000)")
        .await
        .unwrap()
        .unwrap();
    conn.query_drop("START TRANSACTION").await.unwrap();
    conn.query_drop("UPDATE accounts SET balance = balance + 1 WHERE id = 3")
        .await
        .unwrap();
    conn.query_drop("COMMIT").await.unwrap();
    assert_eq!(tandem_prepared(&mut direct, &xid).await, 1);

    let lockserver = lockserver.restart().await;
    // The same connection commits the global transaction once the lockserver is back.
    let status = once_the_lockserver_is_back(&mut conn, "SELECT tandem_commit()").await;
    assert_eq!(status.as_deref(), Some("Committed"));
    eventually("the branch is committed", || async {
        let mut d = db.direct().await;
        tandem_prepared(&mut d, &xid).await == 0
    })
    .await;
    assert_eq!(balances(&mut direct).await[2], (3, 1001));
    drop(conn);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// An XA branch's write while the lockserver is down is refused (XA mode on MySQL
/// takes writes in the client's transaction only), rather than run unchecked as a
/// write outside any global transaction is: it would overwrite a row an AT branch holds, and that
/// branch's rollback would stop at the dirty write, its global transaction half undone.
#[tokio::test]
async fn an_xa_branchs_write_while_the_lockserver_is_down_is_refused() {
    let _server = XA_SERVER.lock().await;
    let db = bank("xa_ls_down").await;
    db.migrate().await;
    let mut direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let before = balances(&mut direct).await;
    let mut at = my::connect(&tandem, &db.name).await;
    text(&mut at, "SELECT tandem_begin(60000)").await.unwrap();
    at.query_drop("UPDATE accounts SET balance = 1 WHERE id = 3")
        .await
        .unwrap();
    let held = balances(&mut direct).await;
    let mut xa = my::connect(&tandem, &db.name).await;
    text(&mut xa, "SELECT tandem_mode('xa')").await.unwrap();
    text(&mut xa, "SELECT tandem_begin(60000)").await.unwrap();

    // The branch's transaction begins while the lockserver is up (XA START needs it).
    xa.query_drop("START TRANSACTION").await.unwrap();
    let stopped = lockserver.stop_for_restart().await;
    let err = xa
        .query_drop("UPDATE accounts SET balance = balance + 1 WHERE id = 3")
        .await
        .expect_err("the lockserver is down");
    assert_eq!(code(&err), 1105, "{err}");
    xa.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(balances(&mut direct).await, held, "nothing written");
    let lockserver = stopped.start().await;
    let status = once_the_lockserver_is_back(&mut at, "SELECT tandem_rollback()").await;
    assert_eq!(status.as_deref(), Some("Rollbacked"));
    assert_eq!(
        balances(&mut direct).await,
        before,
        "the AT branch undone exactly"
    );
    drop((at, xa));
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// The bank-transfer test across engines: each transfer debits a PostgreSQL account
/// (AT branch) and credits a MariaDB account (XA branch); a fifth are rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_is_conserved_across_postgres_and_mariadb() {
    let _server = XA_SERVER.lock().await;
    const WORKERS: usize = 8;
    const TRANSFERS: usize = 150;
    const ACCOUNTS: i32 = 40;
    const OPENING: i64 = 10_000;
    let pg_db = tandem_tests::harness::TestDb::create("bank_mix_pg").await;
    pg_db.migrate().await;
    pg_db
        .direct()
        .await
        .batch_execute(&format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO accounts SELECT g, {OPENING} FROM generate_series(1, {ACCOUNTS}) g;"
        ))
        .await
        .unwrap();
    let my_db = MyTestDb::create("bank_mix_my").await;
    my_db
        .direct()
        .await
        .query_drop(format!(
            "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
             INSERT INTO accounts SELECT seq, {OPENING} FROM seq_1_to_{ACCOUNTS}"
        ))
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = std::sync::Arc::new(start(&lockserver).await);
    // This lockserver's xids share a prefix: the server's XA branches of other
    // lockservers (other tests, other tandems) are not this test's to wait for.
    let ours = {
        let probe = tandem.connect(&pg_db.name).await;
        let xid = crate::pg::at_mode_one(&probe, "SELECT tandem_begin()")
            .await
            .unwrap()
            .unwrap_or_default();
        crate::pg::at_mode_one(&probe, "SELECT tandem_rollback()")
            .await
            .unwrap();
        let prefix = xid.rsplit_once('-').map_or(&xid[..], |(prefix, _)| prefix);
        format!("tandem:{prefix}-").into_bytes()
    };
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (tandem, pg_name, my_name) = (
            std::sync::Arc::clone(&tandem),
            pg_db.name.clone(),
            my_db.name.clone(),
        );
        workers.push(tokio::spawn(async move {
            let a = tandem.connect(&pg_name).await;
            let mut b = my::connect(&tandem, &my_name).await;
            text(&mut b, "SELECT tandem_mode('xa')").await.unwrap();
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (worker as u64 * 0x2545_f491);
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let mut committed = Vec::new();
            for i in 0..TRANSFERS {
                let from = (next() % ACCOUNTS as u64) as i32 + 1;
                let to = (next() % ACCOUNTS as u64) as i32 + 1;
                let amount = (next() % 100) as i64 + 1;
                let roll_back = (i + worker) % 5 == 0;
                let attempt: Result<Option<String>, String> = async {
                    let xid = crate::pg::at_mode_one(&a, "SELECT tandem_begin(20000)")
                        .await
                        .map_err(|e| e.to_string())?
                        .unwrap_or_default();
                    a.batch_execute(&format!(
                        "UPDATE accounts SET balance = balance - {amount} WHERE id = {from}"
                    ))
                    .await
                    .map_err(|e| e.to_string())?;
                    text(&mut b, &format!("SELECT tandem_join('{xid}')"))
                        .await
                        .map_err(|e| e.to_string())?;
                    let credited = async {
                        b.query_drop("START TRANSACTION").await?;
                        b.query_drop(format!(
                            "UPDATE accounts SET balance = balance + {amount} WHERE id = {to}"
                        ))
                        .await?;
                        b.query_drop("COMMIT").await
                    }
                    .await;
                    if credited.is_err() {
                        let _ = b.query_drop("ROLLBACK").await;
                    }
                    let _ = text(&mut b, "SELECT tandem_leave()").await;
                    credited.map_err(|e| e.to_string())?;
                    let decision = if roll_back {
                        "tandem_rollback"
                    } else {
                        "tandem_commit"
                    };
                    crate::pg::at_mode_one(&a, &format!("SELECT {decision}()"))
                        .await
                        .map_err(|e| e.to_string())
                }
                .await;
                match attempt {
                    Ok(Some(s)) if s == "Committed" => committed.push((from, to, amount)),
                    Ok(Some(s)) if s == "Rollbacked" => {}
                    Ok(other) => panic!("unexpected status {other:?}"),
                    Err(e) => {
                        let status = crate::pg::at_mode_one(&a, "SELECT tandem_rollback()")
                            .await
                            .expect("rollback after an error");
                        assert_eq!(status.as_deref(), Some("Rollbacked"), "after {e}");
                    }
                }
            }
            drop(b);
            committed
        }));
    }
    let mut committed = Vec::new();
    for w in workers {
        committed.extend(w.await.expect("worker"));
    }
    let total = WORKERS * TRANSFERS;
    assert!(
        committed.len() >= total / 2,
        "only {} of {total} committed",
        committed.len()
    );
    assert!(committed.len() <= total * 4 / 5, "rollbacks did not happen");
    eventually("every XA branch finished", || async {
        let mut d = my_db.direct().await;
        let rows: Vec<(i64, usize, usize, Vec<u8>)> = d.query("XA RECOVER").await.unwrap();
        !rows.iter().any(|(_, _, _, data)| data.starts_with(&ours))
    })
    .await;
    let mut want_pg = vec![OPENING; ACCOUNTS as usize];
    let mut want_my = vec![OPENING; ACCOUNTS as usize];
    for &(from, to, amount) in &committed {
        want_pg[from as usize - 1] -= amount;
        want_my[to as usize - 1] += amount;
    }
    let pg_direct = pg_db.direct().await;
    let got_pg: Vec<i64> = pg_direct
        .query("SELECT balance FROM accounts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let got_my: Vec<i64> = balances(&mut my_db.direct().await)
        .await
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(
        got_pg, want_pg,
        "PostgreSQL: each committed debit exactly once"
    );
    assert_eq!(
        got_my, want_my,
        "MariaDB: each committed credit exactly once"
    );
    assert_eq!(
        got_pg.iter().sum::<i64>() + got_my.iter().sum::<i64>(),
        2 * ACCOUNTS as i64 * OPENING,
        "money is conserved"
    );
    eventually("no undo rows left", || async {
        crate::pg::at_mode_undo_rows(&pg_direct).await == 0
    })
    .await;
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
    match std::sync::Arc::try_unwrap(tandem) {
        Ok(tandem) => tandem.shutdown().await,
        Err(_) => panic!("a worker still holds the proxy"),
    }
    lockserver.stop().await;
}

#[tokio::test]
async fn mysql_recovery_rolls_back_orphans_and_leaves_other_xa_branches_alone() {
    let _server = XA_SERVER.lock().await;
    let db = bank("xa_orphan").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    // One of tandem's branch ids whose global transaction no lockserver knows, and
    // someone else's branch; both prepared, then left by their connection (MariaDB
    // keeps them, detached).
    let orphan = format!("tandem:00000000deadbeef-{}", rand::random::<u32>());
    let theirs = format!("not-tandem-{}", db.name);
    for (gtrid, bqual, id) in [(orphan.as_str(), "1", 1), (theirs.as_str(), "x", 2)] {
        let mut c = db.direct().await;
        for sql in [
            format!("XA START '{gtrid}','{bqual}'"),
            format!("UPDATE accounts SET balance = 0 WHERE id = {id}"),
            format!("XA END '{gtrid}','{bqual}'"),
            format!("XA PREPARE '{gtrid}','{bqual}'"),
        ] {
            c.query_drop(&sql).await.unwrap();
        }
        c.disconnect().await.unwrap();
    }
    let listed = |gtrid: String| async move {
        let mut d = my::connect_direct_admin().await;
        let rows: Vec<(i64, usize, usize, Vec<u8>)> = d.query("XA RECOVER").await.unwrap();
        rows.iter()
            .any(|(_, g, _, data)| data.get(..*g) == Some(gtrid.as_bytes()))
    };
    assert!(listed(orphan.clone()).await);
    let section = mysql_section(100, 1_000);
    let proxy = ProxyProcess::start(
        env!("CARGO_BIN_EXE_tandem-under-test"),
        &section,
        &lockserver,
    )
    .await;
    eventually("the orphan is rolled back", || {
        listed(orphan.clone()).map(|l| !l)
    })
    .await;
    let mut direct = db.direct().await;
    assert_eq!(
        balances(&mut direct).await[0],
        (1, 1000),
        "the orphan's write is undone"
    );
    assert!(
        listed(theirs.clone()).await,
        "someone else's prepared branch is left alone"
    );
    direct
        .query_drop(format!("XA ROLLBACK '{theirs}','x'"))
        .await
        .unwrap();
    proxy.kill();
    lockserver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlocked_xa_branch_rolls_back_on_the_clients_rollback() {
    let db = bank("xa_deadlock").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut a = my::connect(&tandem, &db.name).await;
    let mut b = my::connect(&tandem, &db.name).await;
    for conn in [&mut a, &mut b] {
        text(conn, "SELECT tandem_begin()").await.unwrap();
        text(conn, "SELECT tandem_mode('xa')").await.unwrap();
        conn.query_drop("START TRANSACTION").await.unwrap();
    }
    a.query_drop("UPDATE accounts SET balance = balance - 1 WHERE id = 1")
        .await
        .unwrap();
    b.query_drop("UPDATE accounts SET balance = balance - 1 WHERE id = 2")
        .await
        .unwrap();
    // a waits for b's row; b then asks for a's: one of them is the deadlock victim.
    let waiting = tokio::spawn(async move {
        let r = a
            .query_drop("UPDATE accounts SET balance = balance + 1 WHERE id = 2")
            .await;
        (a, r)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let rb = b
        .query_drop("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        .await;
    let (a, ra) = waiting.await.unwrap();
    let (mut victim, mut survivor) = match (&ra, &rb) {
        (_, Err(e)) => {
            assert_eq!(code(e), 1213, "{e}");
            (b, a)
        }
        (Err(e), _) => {
            assert_eq!(code(e), 1213, "{e}");
            (a, b)
        }
        _ => panic!("no deadlock"),
    };
    // The victim's branch is rollback-only: the client's ROLLBACK ends it.
    victim.query_drop("ROLLBACK").await.unwrap();
    rolled_back(&mut victim).await;
    survivor.query_drop("ROLLBACK").await.unwrap();
    text(&mut survivor, "SELECT tandem_rollback()")
        .await
        .unwrap();
    let mut direct = db.direct().await;
    assert_eq!(
        balances(&mut direct).await,
        vec![(1, 1000), (2, 1000), (3, 1000)]
    );
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// With autocommit off (what JDBC's `setAutoCommit(false)` sends) no START TRANSACTION
/// comes: the statement that opens the transaction, a read (a SET or EXPLAIN that reads
/// a table too) or a write, text or prepared, opens the XA branch first, and COMMIT
/// prepares it.
#[tokio::test]
async fn with_autocommit_off_the_first_statement_opens_the_xa_branch() {
    let _server = XA_SERVER.lock().await;
    let db = bank("xa_autocommit_off").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut direct = db.direct().await;
    let before = balances(&mut direct).await;
    for (decision, opener) in [
        (
            "rollback",
            Some("SELECT balance FROM accounts WHERE id = 1 FOR UPDATE"),
        ),
        (
            "rollback",
            Some("SET @b = (SELECT balance FROM accounts WHERE id = 3)"),
        ),
        ("rollback", Some("EXPLAIN SELECT * FROM accounts")),
        ("commit", None),
    ] {
        let mut conn = my::connect(&tandem, &db.name).await;
        assert_eq!(
            text(&mut conn, "SELECT tandem_mode('xa')")
                .await
                .unwrap()
                .as_deref(),
            Some("xa")
        );
        let xid = text(&mut conn, "SELECT tandem_begin(30000)")
            .await
            .unwrap()
            .unwrap();
        conn.query_drop("SET autocommit = 0").await.unwrap();
        if let Some(opener) = opener {
            conn.query_drop(opener).await.unwrap();
        }
        conn.query_drop("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
            .await
            .unwrap();
        conn.exec_drop(
            "UPDATE accounts SET balance = balance + ? WHERE id = ?",
            (10i64, 2i32),
        )
        .await
        .unwrap();
        conn.query_drop("COMMIT").await.unwrap();
        assert_eq!(tandem_prepared(&mut direct, &xid).await, 1, "{opener:?}");
        assert_eq!(
            balances(&mut direct).await,
            before,
            "a prepared branch is not visible"
        );
        let status = text(&mut conn, &format!("SELECT tandem_{decision}()"))
            .await
            .unwrap();
        let want = if decision == "commit" {
            "Committed"
        } else {
            "Rollbacked"
        };
        assert_eq!(status.as_deref(), Some(want));
        let mut waited = 0;
        while tandem_prepared(&mut direct, &xid).await > 0 {
            waited += 1;
            assert!(waited < 200, "the prepared branch never finished");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        drop(conn);
    }
    assert_eq!(
        balances(&mut direct).await,
        [(1, 990), (2, 1010), (3, 1000)],
        "the rollback left nothing, the commit applied once"
    );
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A multi-statement query whose first statement writes nothing may still write
/// (`SET @a = 1; UPDATE …`): in XA mode with autocommit on and no transaction open, it
/// is refused like any write there, not run outside the branch.
#[tokio::test]
async fn a_write_behind_a_passive_statement_does_not_escape_the_xa_branch() {
    let _server = XA_SERVER.lock().await;
    let db = bank("xa_several").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut direct = db.direct().await;
    let before = balances(&mut direct).await;
    let mut conn = my::connect(&tandem, &db.name).await;
    text(&mut conn, "SELECT tandem_mode('xa')").await.unwrap();
    text(&mut conn, "SELECT tandem_begin(30000)").await.unwrap();
    let refused = conn
        .query_drop("SET @a = 1; UPDATE accounts SET balance = 5 WHERE id = 1")
        .await
        .expect_err("a write outside the branch");
    assert_eq!(code(&refused), 1235, "{refused}");
    assert_eq!(balances(&mut direct).await, before, "nothing written");
    // Inside the branch the same query runs, and the decision undoes it.
    conn.query_drop("START TRANSACTION").await.unwrap();
    conn.query_drop("SET @a = 1; UPDATE accounts SET balance = 5 WHERE id = 1")
        .await
        .unwrap();
    conn.query_drop("COMMIT").await.unwrap();
    assert_eq!(
        text(&mut conn, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
    let mut waited = 0;
    while balances(&mut direct).await != before {
        waited += 1;
        assert!(waited < 200, "the prepared branch never rolled back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A MariaDB XA branch registers at XA START and reports once prepared. A global commit
/// while one has not reported would commit the others without it (here its client went
/// away unprepared, and the server rolled it back): the commit is refused, retryably,
/// after waiting for the report, and the transaction then rolls back whole.
#[tokio::test]
async fn a_global_commit_waits_for_xa_branches_still_preparing_and_never_splits() {
    let (one, two) = (bank("xa_unprepared_a").await, bank("xa_unprepared_b").await);
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    // The lockserver waits its rollback_wait_ms (3 s here) for the branch to prepare,
    // longer than a call's timeout: the commit still hears its answer.
    let endpoint = format!("http://{}", lockserver.grpc);
    let tandem = my::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.lockserver.call_timeout_ms = 1_500;
    })
    .await;
    let mut a = my::connect(&tandem, &one.name).await;
    let mut b = my::connect(&tandem, &two.name).await;
    text(&mut b, "SELECT tandem_mode('xa')").await.unwrap();
    let xid = begin_and_prepare(&mut a).await;
    text(&mut b, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    b.query_drop("START TRANSACTION").await.unwrap();
    b.query_drop("UPDATE accounts SET balance = balance + 10 WHERE id = 1")
        .await
        .unwrap();
    // Gone before its COMMIT: the server rolls its branch back, unprepared.
    drop(b);
    let e = text(&mut a, "SELECT tandem_commit()")
        .await
        .expect_err("a branch never prepared: no commit");
    assert_eq!(code(&e), 1205, "{e}");
    rolled_back(&mut a).await;
    let mut direct = one.direct().await;
    assert_eq!(
        balances(&mut direct).await,
        [(1, 1000), (2, 1000), (3, 1000)]
    );
    assert_eq!(
        balances(&mut two.direct().await).await,
        [(1, 1000), (2, 1000), (3, 1000)]
    );
    assert_eq!(tandem_prepared(&mut direct, &xid).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_reset_of_a_connection_holding_a_prepared_branch_waits_for_the_decision() {
    let _server = XA_SERVER.lock().await;
    let db = bank("xa_reset_prepared").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut direct = db.direct().await;
    let mut want = balances(&mut direct).await;
    for how in ["COM_RESET_CONNECTION", "COM_CHANGE_USER"] {
        let mut a = my::connect(&tandem, &db.name).await;
        let xid = begin_and_prepare(&mut a).await;
        assert_eq!(tandem_prepared(&mut direct, &xid).await, 1, "{how}");
        // From the session still bound to the transaction, which may be the one to
        // decide it, the reset is refused at once rather than left waiting for itself.
        let refused = match how {
            "COM_RESET_CONNECTION" => a.reset().await.map(|_| ()),
            _ => a.change_user(Default::default()).await,
        };
        assert_eq!(code(&refused.unwrap_err()), 1399, "{how}");
        text(&mut a, "SELECT tandem_leave()").await.unwrap();
        // MariaDB answers a reset of this connection with OK and drops the prepared
        // branch; an XA COMMIT of it afterwards answers OK and commits nothing.
        let reset = tokio::spawn(async move {
            match how {
                "COM_RESET_CONNECTION" => a.reset().await.map(|_| ()),
                _ => a.change_user(Default::default()).await,
            }
            .map(|()| a)
        });
        // The reset reaches tandem before the decision is made, and waits for it.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !reset.is_finished(),
            "{how}: the reset waits for the decision"
        );
        let mut b = my::connect(&tandem, &db.name).await;
        text(&mut b, &format!("SELECT tandem_join('{xid}')"))
            .await
            .unwrap();
        assert_eq!(
            text(&mut b, "SELECT tandem_commit()")
                .await
                .unwrap()
                .as_deref(),
            Some("Committed"),
            "{how}"
        );
        let mut a = reset.await.unwrap().unwrap();
        want[0].1 -= 10;
        assert_eq!(balances(&mut direct).await, want, "{how}: committed");
        assert_eq!(tandem_prepared(&mut direct, &xid).await, 0, "{how}");
        assert_eq!(text(&mut a, "SELECT tandem_xid()").await.unwrap(), None);
        drop((a, b));
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn after_a_reset_in_the_middle_of_an_xa_branch_the_session_begins_again() {
    let _server = XA_SERVER.lock().await;
    let db = bank("xa_reset_open").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut direct = db.direct().await;
    let mut conn = my::connect(&tandem, &db.name).await;
    text(&mut conn, "SELECT tandem_mode('xa')").await.unwrap();
    let abandoned = text(&mut conn, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    conn.query_drop("START TRANSACTION").await.unwrap();
    conn.query_drop("UPDATE accounts SET balance = 0 WHERE id = 1")
        .await
        .unwrap();
    // The server rolls the open branch back with the session.
    conn.reset().await.unwrap();
    text(&mut conn, "SELECT tandem_mode('xa')").await.unwrap();
    let xid = text(&mut conn, "SELECT tandem_begin(30000)")
        .await
        .expect("the session begins again")
        .unwrap();
    assert_ne!(xid, abandoned);
    for sql in [
        "START TRANSACTION",
        "UPDATE accounts SET balance = balance + 5 WHERE id = 2",
        "COMMIT",
    ] {
        conn.query_drop(sql).await.unwrap();
    }
    assert_eq!(
        text(&mut conn, "SELECT tandem_commit()")
            .await
            .unwrap()
            .as_deref(),
        Some("Committed")
    );
    eventually("the XA branch is finished", || async {
        let mut d = db.direct().await;
        tandem_prepared(&mut d, &xid).await == 0
    })
    .await;
    assert_eq!(
        balances(&mut direct).await,
        [(1, 1000), (2, 1005), (3, 1000)]
    );
    // The abandoned transaction cannot commit without its branch.
    text(&mut conn, &format!("SELECT tandem_join('{abandoned}')"))
        .await
        .unwrap();
    let e = text(&mut conn, "SELECT tandem_commit()")
        .await
        .expect_err("a branch never prepared: no commit");
    assert_eq!(code(&e), 1205, "{e}");
    rolled_back(&mut conn).await;
    assert_eq!(
        balances(&mut direct).await,
        [(1, 1000), (2, 1005), (3, 1000)]
    );
    drop(conn);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn an_xa_commit_after_the_global_rollback_rolls_the_branch_back_and_the_session_goes_on() {
    let _server = XA_SERVER.lock().await;
    let db = bank("xa_late_commit").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut direct = db.direct().await;
    let before = balances(&mut direct).await;
    let mut a = my::connect(&tandem, &db.name).await;
    let mut b = my::connect(&tandem, &db.name).await;
    let xid = text(&mut a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    text(&mut b, "SELECT tandem_mode('xa')").await.unwrap();
    text(&mut b, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    b.query_drop("START TRANSACTION").await.unwrap();
    b.query_drop("UPDATE accounts SET balance = 0 WHERE id = 1")
        .await
        .unwrap();
    // Decided while the branch is still open: its COMMIT comes too late.
    assert_eq!(
        text(&mut a, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
    let e = b.query_drop("COMMIT").await.unwrap_err();
    assert_eq!(code(&e), 1213, "{e}");
    // Nothing of the branch stays prepared, holding its row locks, and the session
    // is not left waiting for a phase 2 that will never come.
    let n: Option<i64> = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        b.query_first("SELECT COUNT(*) FROM accounts"),
    )
    .await
    .expect("the session answers")
    .unwrap();
    assert_eq!(n, Some(3));
    assert_eq!(tandem_prepared(&mut direct, &xid).await, 0);
    direct
        .query_drop("UPDATE accounts SET note = 'free' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(balances(&mut direct).await, before);
    drop((a, b));
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_statement_after_its_own_xa_commit_is_refused_at_once_not_left_waiting_for_itself() {
    let _server = XA_SERVER.lock().await;
    let db = bank("xa_self_wait").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut direct = db.direct().await;
    let mut conn = my::connect(&tandem, &db.name).await;
    begin_and_prepare(&mut conn).await;
    // MariaDB runs nothing beside the prepared branch until the decision, which this
    // session has yet to make: waiting would last until the transaction timed out.
    let e = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.query_drop("SELECT COUNT(*) FROM accounts"),
    )
    .await
    .expect("answered at once")
    .unwrap_err();
    assert_eq!(code(&e), 1399, "{e}");
    let e = conn
        .exec_drop("SELECT balance FROM accounts WHERE id = ?", (1,))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1399, "{e}");
    assert_eq!(
        text(&mut conn, "SELECT tandem_commit()")
            .await
            .unwrap()
            .as_deref(),
        Some("Committed")
    );
    let n: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM accounts")
        .await
        .unwrap();
    assert_eq!(n, Some(3));
    assert_eq!(
        balances(&mut direct).await,
        [(1, 990), (2, 1000), (3, 1000)]
    );
    drop(conn);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// What frameworks send right after a COMMIT that prepared the branch (Django's
/// `atomic()` restores autocommit, pools roll back on release) is answered as the
/// server answers it once the branch is finished, not refused: the client would take
/// its committed work for failed, and do it again. `SET autocommit` takes effect on the
/// server once the connection holds no branch; other statements are still refused.
#[tokio::test]
async fn autocommit_and_an_empty_rollback_after_an_xa_commit_are_answered_ok() {
    let _server = XA_SERVER.lock().await;
    let db = bank("xa_after_commit").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut direct = db.direct().await;
    // SET autocommit = 1 turns autocommit on, which MariaDB refuses beside the branch
    // (it would commit): answered, it runs once the branch is finished. One that
    // leaves it off runs at once, and cancels it.
    let rounds: [(&str, &[&str], i64); 2] = [
        (
            "SELECT tandem_commit()",
            &[
                "SET AUTOCOMMIT = 1",
                "ROLLBACK",
                "COMMIT",
                "set @@session.autocommit=on;",
            ],
            1,
        ),
        (
            "SELECT tandem_rollback()",
            &[
                "SET AUTOCOMMIT = 1",
                "PING",
                "SET autocommit = 0",
                "ROLLBACK",
            ],
            0,
        ),
    ];
    for (decision, statements, autocommit_after) in rounds {
        let mut conn = my::connect(&tandem, &db.name).await;
        conn.query_drop("SET AUTOCOMMIT = 0").await.unwrap();
        begin_and_prepare(&mut conn).await;
        for &sql in statements {
            let answered = if sql == "PING" {
                tokio::time::timeout(std::time::Duration::from_secs(10), conn.ping()).await
            } else {
                tokio::time::timeout(std::time::Duration::from_secs(10), conn.query_drop(sql)).await
            };
            answered
                .expect("answered at once")
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let e = conn
            .query_drop("SET AUTOCOMMIT = 1, sql_mode = ''")
            .await
            .unwrap_err();
        assert_eq!(code(&e), 1399, "{e}");
        let e = conn.query_drop("ROLLBACK AND CHAIN").await.unwrap_err();
        assert_eq!(code(&e), 1399, "{e}");
        let decided = text(&mut conn, decision).await.unwrap();
        assert!(
            matches!(decided.as_deref(), Some("Committed" | "Rollbacked")),
            "{decided:?}"
        );
        let autocommit: Option<i64> = conn.query_first("SELECT @@autocommit").await.unwrap();
        assert_eq!(autocommit, Some(autocommit_after), "after {decision}");
        // The decision unbound the session: a plain UPDATE commits on its own in
        // autocommit, and inside a transaction otherwise.
        conn.query_drop("UPDATE accounts SET note = 'after' WHERE id = 3")
            .await
            .unwrap();
        let note: Option<String> = direct
            .query_first("SELECT note FROM accounts WHERE id = 3")
            .await
            .unwrap();
        let expected = if autocommit_after == 1 { "after" } else { "c" };
        assert_eq!(note.as_deref(), Some(expected), "after {decision}");
        conn.query_drop("ROLLBACK").await.unwrap();
        direct
            .query_drop("UPDATE accounts SET note = 'c' WHERE id = 3")
            .await
            .unwrap();
        // The commit applied the branch's UPDATE; the rollback undid its own.
        assert_eq!(
            balances(&mut direct).await,
            [(1, 990), (2, 1000), (3, 1000)],
            "after {decision}"
        );
        drop(conn);
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// In XA mode an autocommit write of a session still bound to a global transaction
/// that ended elsewhere gets 1399, as its START TRANSACTION would, naming the
/// transaction's end; while the transaction is open it gets 1235, which says to start a
/// transaction. Neither runs.
#[tokio::test]
async fn an_autocommit_write_of_a_session_bound_to_an_ended_transaction_says_so() {
    let _server = XA_SERVER.lock().await;
    let db = bank("xa_bound_ended").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut direct = db.direct().await;
    let mut a = my::connect(&tandem, &db.name).await;
    let mut b = my::connect(&tandem, &db.name).await;
    let xid = text(&mut a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    text(&mut b, "SELECT tandem_mode('xa')").await.unwrap();
    text(&mut b, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    let write = "UPDATE accounts SET balance = 1 WHERE id = 1";
    let e = b.query_drop(write).await.unwrap_err();
    assert_eq!(code(&e), 1235, "{e}");
    rolled_back(&mut a).await;
    let e = b.query_drop(write).await.unwrap_err();
    assert_eq!(code(&e), 1399, "{e}");
    assert!(e.to_string().contains("Rollbacked"), "{e}");
    assert_eq!(
        balances(&mut direct).await,
        [(1, 1000), (2, 1000), (3, 1000)]
    );
    drop((a, b));
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// `SET autocommit = 1` inside an open XA branch with autocommit off (JDBC's
/// `setAutoCommit(true)` in the middle of a transaction) commits the transaction, as
/// on the server: the branch is prepared, autocommit is on once the branch is finished,
/// and the global decision applies or undoes its work. MariaDB refuses the SET inside
/// the branch itself (1399).
#[tokio::test]
async fn turning_autocommit_on_inside_an_xa_branch_commits_it() {
    let _server = XA_SERVER.lock().await;
    let db = bank("xa_autocommit_on").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    let mut direct = db.direct().await;
    for (decision, balance_after) in [
        ("SELECT tandem_rollback()", 1000),
        ("SELECT tandem_commit()", 990),
    ] {
        let mut conn = my::connect(&tandem, &db.name).await;
        text(&mut conn, "SELECT tandem_mode('xa')").await.unwrap();
        text(&mut conn, "SELECT tandem_begin(30000)").await.unwrap();
        for sql in [
            "SET autocommit = 0",
            "UPDATE accounts SET balance = balance - 10 WHERE id = 1",
            "SET autocommit = 1",
        ] {
            conn.query_drop(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let decided = text(&mut conn, decision).await.unwrap();
        assert!(
            matches!(decided.as_deref(), Some("Committed" | "Rollbacked")),
            "{decided:?}"
        );
        let autocommit: Option<i64> = conn.query_first("SELECT @@autocommit").await.unwrap();
        assert_eq!(autocommit, Some(1), "after {decision}");
        assert_eq!(
            balances(&mut direct).await,
            [(1, balance_after), (2, 1000), (3, 1000)],
            "after {decision}"
        );
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// An XA-mode write inside its branch is checked against the global locks AT-mode
/// transactions hold, as a write outside a global transaction is: a row an AT branch
/// holds makes it wait, then fail with 1205 (over COM_QUERY and COM_STMT_EXECUTE), so
/// that transaction's rollback finds its row as it left it. Its own transaction's AT
/// branch is a holder too: that rollback replays the newest branch first, and would
/// wait on the XA branch's row lock. Other rows it writes.
#[tokio::test]
async fn an_xa_write_meets_the_global_locks_of_at_transactions() {
    let db = bank("xa_meets_at_locks").await;
    db.migrate().await;
    let mut direct = db.direct().await;
    let before = balances(&mut direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let endpoint = format!("http://{}", lockserver.grpc);
    let tandem = my::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.lockserver.lock_wait_ms = 300;
    })
    .await;
    let mut at = my::connect(&tandem, &db.name).await;
    text(&mut at, "SELECT tandem_begin(30000)").await.unwrap();
    at.query_drop("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        .await
        .unwrap();
    let mut xa = my::connect(&tandem, &db.name).await;
    text(&mut xa, "SELECT tandem_mode('xa')").await.unwrap();
    let xid = text(&mut xa, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    xa.query_drop("START TRANSACTION").await.unwrap();
    let e = xa
        .query_drop("UPDATE accounts SET balance = balance + 100 WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1205, "{e}");
    let e = xa
        .exec_drop(
            "UPDATE accounts SET balance = balance + ? WHERE id = ?",
            (100, 1),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1205, "{e}");
    // A row the same global transaction's AT branch holds, and one nobody holds.
    let mut joined = my::connect(&tandem, &db.name).await;
    text(&mut joined, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    joined
        .query_drop("UPDATE accounts SET balance = balance + 5 WHERE id = 2")
        .await
        .unwrap();
    let e = xa
        .query_drop("UPDATE accounts SET balance = balance + 50 WHERE id = 2")
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1205, "{e}");
    xa.query_drop("INSERT INTO accounts VALUES (4, 50, 'd')")
        .await
        .unwrap();
    xa.query_drop("COMMIT").await.unwrap();
    // The refused writes' check locked row 1 in the XA branch, as a checked write's
    // does in the client's transaction: the AT rollback's replay of it waits for the
    // branch to end.
    assert_eq!(
        text(&mut xa, "SELECT tandem_commit()")
            .await
            .unwrap()
            .as_deref(),
        Some("Committed")
    );
    rolled_back(&mut at).await;
    let mut want = before.clone();
    want[1].1 += 5;
    want.push((4, 50));
    eventually("the XA branch is committed", || {
        let db = &db;
        let want = &want;
        async move { balances(&mut db.direct().await).await == *want }
    })
    .await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// The lockserver registers an XA branch at START TRANSACTION, but its answer is lost:
/// the client gets an error and no XA START runs. The branch tandem never heard of must
/// not hold up the global commit once the client's retry has prepared its work.
#[tokio::test]
async fn an_xa_registration_whose_answer_was_lost_does_not_hold_up_the_commit() {
    let db = bank("xa_lost_register").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let relay = LossyRelay::start(lockserver.grpc).await;
    let tandem = my::start_with(|c| relay.proxy_settings(c)).await;
    let mut conn = my::connect(&tandem, &db.name).await;
    text(&mut conn, "SELECT tandem_mode('xa')").await.unwrap();
    let xid = text(&mut conn, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    relay.lose_answers();
    conn.query_drop("START TRANSACTION")
        .await
        .expect_err("the registration timed out");
    relay.heal();
    // The proxy's lockserver connection broke with the lost answers: the first call
    // after it may find it closed.
    eventually("the lockserver answers again", || async {
        text(
            &mut my::connect(&tandem, &db.name).await,
            &format!("SELECT tandem_status('{xid}')"),
        )
        .await
        .is_ok()
    })
    .await;
    for sql in [
        "START TRANSACTION",
        "UPDATE accounts SET balance = balance - 10 WHERE id = 1",
        "COMMIT",
    ] {
        conn.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(
        text(&mut conn, "SELECT tandem_commit()")
            .await
            .unwrap()
            .as_deref(),
        Some("Committed")
    );
    lockserver
        .assert_first_of_two_branches_withdrawn(&xid)
        .await;
    eventually("the branch committed", || async {
        let mut direct = db.direct().await;
        balances(&mut direct).await == [(1, 990), (2, 1000), (3, 1000)]
    })
    .await;
    drop(conn);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// The status flags of the OK packet `payload` (affected rows and insert id under 251).
fn ok_flags(payload: &[u8]) -> u16 {
    assert!(
        matches!(payload.first(), Some(0x00 | 0xfe)),
        "an OK: {payload:?}"
    );
    u16::from_le_bytes([payload[3], payload[4]])
}

/// After the COMMIT that prepared the branch, MariaDB reports IN_TRANS on the
/// connection holding it; the client's transaction is over all the same. A pool's
/// COM_PING must neither say otherwise nor make tandem take the session for inside a
/// transaction, which refused the global decision with 1568.
#[tokio::test]
async fn a_ping_beside_a_prepared_branch_reports_no_transaction_and_the_decision_goes_on() {
    const IN_TRANS: u16 = 0x0001;
    let db = bank("xa_ping_prepared").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = start(&lockserver).await;
    for decision in ["tandem_rollback", "tandem_commit"] {
        let mut raw = raw_session(&tandem, &db.name).await;
        for sql in [
            "SELECT tandem_mode('xa')",
            "SELECT tandem_begin(30000)",
            "START TRANSACTION",
            "UPDATE accounts SET balance = balance - 10 WHERE id = 1",
        ] {
            let reply = raw_query(&mut raw, sql).await;
            assert_ne!(reply[0].1[0], 0xff, "{sql}: {reply:?}");
        }
        let commit = raw_query(&mut raw, "COMMIT").await;
        assert_eq!(ok_flags(&commit[0].1) & IN_TRANS, 0, "COMMIT");
        raw.send(&my::packet(0, &[0x0e])).await;
        let ping = raw_reply(&mut raw).await;
        assert_eq!(ok_flags(&ping[0].1) & IN_TRANS, 0, "{decision}: COM_PING");
        let reply = raw_query(&mut raw, &format!("SELECT {decision}()")).await;
        let answered = reply.iter().any(|(_, p)| {
            p.windows(10).any(|w| w == b"Rollbacked") || p.windows(9).any(|w| w == b"Committed")
        });
        assert!(answered, "{decision}: {reply:?}");
        let expected = match decision {
            "tandem_rollback" => 1000,
            _ => 990,
        };
        eventually("the branch is finished", || async {
            balances(&mut db.direct().await).await[0] == (1, expected)
        })
        .await;
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}
