//! Control functions and XA mode over MySQL: a MariaDB branch (XA START … XA PREPARE)
//! and a PostgreSQL branch in one global transaction, committed or rolled back
//! together; the client's own XA statements; a proxy killed between prepare and phase 2.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use tandem_tests::harness::{Tandem, eventually};
use tandem_tests::lockserver::{Kind, TestLockserver};
use tandem_tests::mysql::{self as my, MyTestDb};
use tandem_tests::process::ProxyProcess;

async fn text(conn: &mut Conn, sql: &str) -> Result<Option<String>, mysql_async::Error> {
    let row: Option<Row> = conn.query_first(sql).await?;
    Ok(row.and_then(|mut r| r.take::<Option<String>, _>(0).flatten()))
}

fn code(e: &mysql_async::Error) -> u16 {
    match e {
        mysql_async::Error::Server(s) => s.code,
        other => panic!("not a server error: {other}"),
    }
}

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

async fn start(lockserver: &TestLockserver) -> Tandem {
    let endpoint = format!("http://{}", lockserver.grpc);
    my::start_with(|c| c.lockserver.endpoint = endpoint).await
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
    let e = text(&mut conn, "SELECT tandem_join('x', 'y')")
        .await
        .unwrap_err();
    assert!(code(&e) > 0, "{e}");
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
    assert_eq!(
        text(&mut conn, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
    drop(conn);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_mariadb_xa_branch_and_a_postgres_branch_commit_or_roll_back_together() {
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
        // A write outside START TRANSACTION would commit outside the branch.
        let e = conn
            .query_drop("UPDATE accounts SET note = 'x' WHERE id = 2")
            .await
            .unwrap_err();
        assert_eq!(code(&e), 1235, "{e}");
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
async fn the_clients_own_xa_passes_through_unless_bound_and_at_mode_refuses_writes() {
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
    // AT mode is not built for MySQL: writes are refused, reads run.
    let e = conn
        .query_drop("UPDATE accounts SET balance = 2 WHERE id = 3")
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1235, "{e}");
    let n: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM accounts")
        .await
        .unwrap();
    assert_eq!(n, Some(3));
    assert_eq!(balances(&mut direct).await[2], (3, 1), "nothing ran");
    text(&mut conn, "SELECT tandem_rollback()").await.unwrap();
    drop(conn);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_mariadb_branch_prepared_by_a_killed_proxy_is_finished_after_the_decision() {
    let db = bank("xa_kill").await;
    let mut direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let ls = lockserver.client();
    let admin = my::admin_opts();
    let section = format!(
        "[[mysql]]\nlisten = \"127.0.0.1:{{port}}\"\nupstream = \"{}\"\nmode = \"xa\"\nxa_recovery_interval_ms = 60000\n[mysql.service]\nuser = \"{}\"\npassword = \"{}\"\n",
        my::upstream(),
        admin.user().unwrap_or("root"),
        admin.pass().unwrap_or(""),
    );
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
        proxy.kill();
    }
    lockserver.stop().await;
}
