//! XA mode on PostgreSQL: the client's COMMIT becomes PREPARE TRANSACTION under
//! tandem's branch id, the lockserver's decision runs COMMIT/ROLLBACK PREPARED, and a
//! proxy that dies in between leaves a branch that recovery finishes.

use super::at_mode::{balance, dump, one, prepare, rolled_back, undo_rows};
use super::at_protocols::tags;
use std::time::Duration;
use tandem_tests::harness::{Tandem, TestDb, eventually};
use tandem_tests::lockserver::{Kind, TestLockserver};
use tandem_tests::process::ProxyProcess;
use tandem_tests::relay::LossyRelay;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// tandem's prepared branches in the database `client` is connected to.
async fn tandem_prepared(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE 'tandem:%' ORDER BY gid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn xa_branches_are_prepared_at_commit_and_follow_the_global_decision() {
    let (orders, stock) = (prepare("xa_a").await, prepare("xa_b").await);
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let (da, db) = (orders.direct().await, stock.direct().await);
    let (before_a, before_b) = (dump(&da).await, dump(&db).await);

    for decision in ["rollback", "commit"] {
        let a = tandem.connect(&orders.name).await;
        let b = tandem.connect(&stock.name).await;
        assert_eq!(
            one(&a, "SELECT tandem_mode('xa')")
                .await
                .unwrap()
                .as_deref(),
            Some("xa")
        );
        let xid = one(&a, "SELECT tandem_begin(30000)")
            .await
            .unwrap()
            .unwrap();
        // Service A: an explicit transaction block; its COMMIT is the prepare.
        a.batch_execute("BEGIN").await.unwrap();
        a.batch_execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
            .await
            .unwrap();
        let inserted = a
            .execute(
                "INSERT INTO accounts (id, balance) VALUES ($1, $2)",
                &[&50i32, &7i64],
            )
            .await
            .unwrap();
        assert_eq!(inserted, 1, "extended-protocol writes join the open branch");
        a.batch_execute("COMMIT").await.unwrap();
        let prepared_a = tandem_prepared(&da).await;
        assert_eq!(prepared_a.len(), 1, "{prepared_a:?}");
        assert!(prepared_a[0].starts_with(&format!("tandem:{xid}:")));
        assert_eq!(
            balance(&da, 1).await,
            1000,
            "a prepared branch is not visible"
        );

        // Service B joins in XA mode; two autocommit writes, two branches.
        one(&b, "SELECT tandem_mode('xa')").await.unwrap();
        one(&b, &format!("SELECT tandem_join('{xid}')"))
            .await
            .unwrap();
        b.batch_execute("UPDATE accounts SET balance = balance + 10 WHERE id = 1")
            .await
            .unwrap();
        b.batch_execute("DELETE FROM accounts WHERE id = 3")
            .await
            .unwrap();
        assert_eq!(tandem_prepared(&db).await.len(), 2);
        // A read-only transaction block is no branch.
        b.batch_execute("BEGIN").await.unwrap();
        b.batch_execute("SELECT count(*) FROM accounts")
            .await
            .unwrap();
        b.batch_execute("COMMIT").await.unwrap();
        assert_eq!(tandem_prepared(&db).await.len(), 2);
        assert_eq!(
            undo_rows(&da).await + undo_rows(&db).await,
            0,
            "XA writes no undo"
        );

        let status = one(&a, &format!("SELECT tandem_{decision}()"))
            .await
            .unwrap();
        let want = if decision == "rollback" {
            "Rollbacked"
        } else {
            "Committed"
        };
        assert_eq!(status.as_deref(), Some(want));
        eventually("every prepared branch finished", || async {
            tandem_prepared(&da).await.is_empty() && tandem_prepared(&db).await.is_empty()
        })
        .await;
        if decision == "rollback" {
            assert_eq!(dump(&da).await, before_a);
            assert_eq!(dump(&db).await, before_b);
        } else {
            assert_eq!(balance(&da, 1).await, 990);
            assert_eq!(balance(&da, 50).await, 7);
            assert_eq!(balance(&db, 1).await, 1010);
            let gone: i64 = db
                .query_one("SELECT count(*) FROM accounts WHERE id = 3", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(gone, 0);
        }
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A pool reset ends the mode a session chose with `tandem_mode`, bound or not: the
/// next user of the connection gets the front end's mode (AT here), as on a new
/// connection, and as COM_RESET_CONNECTION does on MySQL.
#[tokio::test]
async fn a_pool_reset_ends_the_mode_the_session_chose() {
    let orders = prepare("xa_mode_reset").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    for reset in [
        "DISCARD ALL",
        "/* pool */ DISCARD ALL",
        "RESET ALL",
        "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;",
    ] {
        let a = tandem.connect(&orders.name).await;
        one(&a, "SELECT tandem_mode('xa')").await.unwrap();
        a.batch_execute(reset).await.unwrap();
        one(&a, "SELECT tandem_begin(30000)").await.unwrap();
        a.batch_execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
            .await
            .unwrap();
        assert_eq!(
            tandem_prepared(&direct).await,
            Vec::<String>::new(),
            "{reset}"
        );
        assert_eq!(undo_rows(&direct).await, 1, "{reset}: an AT branch");
        rolled_back(&a).await;
        assert_eq!(dump(&direct).await, before);
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A branch whose PREPARE TRANSACTION fails (a deferred unique key, checked then)
/// answers its COMMIT with the server's error whole, as the COMMIT itself would have:
/// SQLSTATE, DETAIL and the constraint's name, which ORMs map errors by. Nothing is
/// prepared, and the global transaction rolls back.
#[tokio::test]
async fn a_failed_prepare_answers_with_the_servers_whole_error() {
    let orders = prepare("xa_prepare_fails").await;
    let direct = orders.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE deferred_u (id int PRIMARY KEY, u int, \
             CONSTRAINT deferred_u_key UNIQUE (u) DEFERRABLE INITIALLY DEFERRED)",
        )
        .await
        .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_mode('xa')").await.unwrap();
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("INSERT INTO deferred_u VALUES (1, 2), (2, 2)")
        .await
        .unwrap();
    let err = a.batch_execute("COMMIT").await.unwrap_err();
    let db_error = err.as_db_error().expect("the server's error");
    assert_eq!(db_error.code(), &SqlState::UNIQUE_VIOLATION, "{err}");
    assert_eq!(db_error.constraint(), Some("deferred_u_key"));
    assert_eq!(db_error.table(), Some("deferred_u"));
    assert!(
        db_error.detail().is_some_and(|d| d.contains("(u)=(2)")),
        "{:?}",
        db_error.detail()
    );
    assert_eq!(tandem_prepared(&direct).await, Vec::<String>::new());
    rolled_back(&a).await;
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM deferred_u", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn a_global_transaction_can_mix_at_and_xa_branches() {
    let (at_db, xa_db) = (prepare("mix_at").await, prepare("mix_xa").await);
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    // The XA database's resource is XA by configuration; the session does not choose.
    let endpoint = format!("http://{}", lockserver.grpc);
    let xa_proxy = Tandem::start_with(|c| {
        c.lockserver.endpoint = endpoint.clone();
        c.postgres[0].mode = tandem_proxy::config::BranchMode::Xa;
    })
    .await;
    let at_proxy = Tandem::start_for(&lockserver).await;
    let (d_at, d_xa) = (at_db.direct().await, xa_db.direct().await);
    let (before_at, before_xa) = (dump(&d_at).await, dump(&d_xa).await);

    for decision in ["rollback", "commit"] {
        let a = at_proxy.connect(&at_db.name).await;
        let x = xa_proxy.connect(&xa_db.name).await;
        let xid = one(&a, "SELECT tandem_begin(30000)")
            .await
            .unwrap()
            .unwrap();
        a.batch_execute("UPDATE accounts SET balance = balance - 5 WHERE id = 2")
            .await
            .unwrap();
        one(&x, &format!("SELECT tandem_join('{xid}')"))
            .await
            .unwrap();
        x.batch_execute("UPDATE accounts SET balance = balance + 5 WHERE id = 2")
            .await
            .unwrap();
        assert_eq!(undo_rows(&d_at).await, 1, "the AT branch keeps an undo row");
        assert_eq!(
            tandem_prepared(&d_xa).await.len(),
            1,
            "the XA branch is prepared"
        );

        one(&a, &format!("SELECT tandem_{decision}()"))
            .await
            .unwrap();
        eventually("both branches finished", || async {
            undo_rows(&d_at).await == 0 && tandem_prepared(&d_xa).await.is_empty()
        })
        .await;
        if decision == "rollback" {
            assert_eq!(dump(&d_at).await, before_at);
            assert_eq!(dump(&d_xa).await, before_xa);
        } else {
            assert_eq!(balance(&d_at, 2).await, 995);
            assert_eq!(balance(&d_xa, 2).await, 1005);
        }
    }
    at_proxy.shutdown().await;
    xa_proxy.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn the_clients_own_two_phase_commit_passes_through_unless_bound() {
    let db = prepare("xa_own").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let client = tandem.connect(&db.name).await;
    let gid = format!("app-{}", db.name);

    // Unbound: PREPARE TRANSACTION and COMMIT PREPARED are the client's business.
    client
        .batch_execute("BEGIN; UPDATE accounts SET balance = 1 WHERE id = 5")
        .await
        .unwrap();
    client
        .batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
        .await
        .unwrap();
    let theirs: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1",
            &[&gid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(theirs, 1);
    client
        .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
        .await
        .unwrap();
    assert_eq!(balance(&direct, 5).await, 1);

    // Bound, in either mode: it would take the local transaction away from its branch.
    for mode in ["at", "xa"] {
        one(&client, &format!("SELECT tandem_mode('{mode}')"))
            .await
            .unwrap();
        one(&client, "SELECT tandem_begin()").await.unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        let e = client
            .batch_execute(&format!("PREPARE TRANSACTION '{gid}-2'"))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{mode}: {e}"
        );
        client.batch_execute("ROLLBACK").await.unwrap();
        let e = client
            .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{mode}: {e}"
        );
        one(&client, "SELECT tandem_rollback()").await.unwrap();
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A `[[postgres]]` front end in XA mode with fast recovery, for a proxy process.
fn pg_section(recovery_interval_ms: u64, orphan_after_ms: u64, database: &str) -> String {
    let admin = tandem_tests::env::pg_admin();
    format!(
        r#"[[postgres]]
listen = "127.0.0.1:{{port}}"
upstream = "{upstream}"
mode = "xa"
xa_recovery_interval_ms = {recovery_interval_ms}
xa_orphan_after_ms = {orphan_after_ms}
xa_recovery_databases = ["{database}"]
[postgres.service]
user = "{user}"
password = "{password}"
"#,
        upstream = tandem_tests::env::pg_upstream(),
        user = admin.get_user().unwrap_or("postgres"),
        password = admin
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
    )
}

/// Prepares one XA branch through `proxy` and returns the xid; the global transaction
/// is still open.
async fn prepared_branch(proxy: &ProxyProcess, db: &TestDb, delta: i64) -> String {
    let client = proxy.connect_pg(&db.name).await;
    let xid = one(&client, "SELECT tandem_begin(60000)")
        .await
        .unwrap()
        .unwrap();
    client
        .batch_execute(&format!(
            "UPDATE accounts SET balance = balance + {delta} WHERE id = 4"
        ))
        .await
        .unwrap();
    xid
}

#[tokio::test]
async fn a_branch_prepared_by_a_killed_proxy_is_finished_after_the_decision() {
    let db = prepare("xa_kill").await;
    let direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let ls = lockserver.client();

    for commit in [true, false] {
        let before = balance(&direct, 4).await;
        let proxy = ProxyProcess::start(
            env!("CARGO_BIN_EXE_tandem-under-test"),
            &pg_section(60_000, 600_000, &db.name),
            &lockserver,
        )
        .await;
        let xid = prepared_branch(&proxy, &db, 100).await;
        assert_eq!(tandem_prepared(&direct).await.len(), 1);
        proxy.kill();

        // The decision is taken while no proxy serves the resource.
        let xid = tandem_lockserver::client::Xid::parse(&xid).unwrap();
        if commit {
            ls.commit(&xid).await.unwrap();
        } else {
            // Rollback waits for its branches; with no proxy it says it is retrying.
            let _ = ls.rollback(&xid).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            tandem_prepared(&direct).await.len(),
            1,
            "nothing can finish the branch while no proxy runs"
        );

        // Another proxy process takes the branch over.
        let proxy = ProxyProcess::start(
            env!("CARGO_BIN_EXE_tandem-under-test"),
            &pg_section(60_000, 600_000, &db.name),
            &lockserver,
        )
        .await;
        eventually("the prepared branch is finished", || async {
            tandem_prepared(&direct).await.is_empty()
        })
        .await;
        let want = if commit { before + 100 } else { before };
        assert_eq!(balance(&direct, 4).await, want, "commit={commit}");
        proxy.kill();
    }
    lockserver.stop().await;
}

#[tokio::test]
async fn recovery_finds_orphans_and_never_touches_other_prepared_transactions() {
    let db = prepare("xa_orphan").await;
    let direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    // A branch id of tandem's whose global transaction no lockserver knows, and a
    // prepared transaction of someone else.
    let orphan = format!("tandem:00000000deadbeef-{}:1", rand::random::<u32>());
    let theirs = format!("not-tandem-{}", db.name);
    for (gid, id) in [(&orphan, 1), (&theirs, 2)] {
        direct
            .batch_execute(&format!(
                "BEGIN; UPDATE accounts SET balance = 0 WHERE id = {id}; PREPARE TRANSACTION '{gid}'"
            ))
            .await
            .unwrap();
    }
    // Recovery every 100 ms; an unknown transaction is an orphan after 1 s.
    let proxy = ProxyProcess::start(
        env!("CARGO_BIN_EXE_tandem-under-test"),
        &pg_section(100, 1_000, &db.name),
        &lockserver,
    )
    .await;
    eventually("the orphan is rolled back", || async {
        tandem_prepared(&direct).await.is_empty()
    })
    .await;
    assert_eq!(
        balance(&direct, 1).await,
        1000,
        "the orphan was rolled back"
    );
    let still: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1",
            &[&theirs],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        still, 1,
        "someone else's prepared transaction is left alone"
    );
    direct
        .batch_execute(&format!("ROLLBACK PREPARED '{theirs}'"))
        .await
        .unwrap();
    proxy.kill();
    lockserver.stop().await;
}

#[tokio::test]
async fn a_lockserver_restart_between_prepare_and_decision_loses_nothing() {
    let db = prepare("xa_ls_restart").await;
    let direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let client = tandem.connect(&db.name).await;
    one(&client, "SELECT tandem_mode('xa')").await.unwrap();
    let before = balance(&direct, 5).await;
    one(&client, "SELECT tandem_begin(60000)").await.unwrap();
    client
        .batch_execute("UPDATE accounts SET balance = balance + 1 WHERE id = 5")
        .await
        .unwrap();
    assert_eq!(tandem_prepared(&direct).await.len(), 1);

    let lockserver = lockserver.restart().await;
    // The session's next call reconnects; the decision reaches the branch.
    let status = eventually_ok(|| one(&client, "SELECT tandem_commit()")).await;
    assert_eq!(status.as_deref(), Some("Committed"));
    eventually("the branch is committed", || async {
        tandem_prepared(&direct).await.is_empty()
    })
    .await;
    assert_eq!(balance(&direct, 5).await, before + 1);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// An XA branch's write while the lockserver is down is refused, in the client's block
/// and in autocommit alike, rather than run unchecked as a write outside any global
/// transaction is: it would overwrite a row an AT branch holds, and that branch's
/// rollback would stop at the dirty write, its global transaction half undone.
#[tokio::test]
async fn an_xa_branchs_write_while_the_lockserver_is_down_is_refused() {
    let db = prepare("xa_ls_down").await;
    let direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let before = dump(&direct).await;
    let at = tandem.connect(&db.name).await;
    one(&at, "SELECT tandem_begin(60000)").await.unwrap();
    at.batch_execute("UPDATE accounts SET balance = 1 WHERE id = 5")
        .await
        .unwrap();
    let held = dump(&direct).await;
    let xa = tandem.connect(&db.name).await;
    one(&xa, "SELECT tandem_mode('xa')").await.unwrap();
    one(&xa, "SELECT tandem_begin(60000)").await.unwrap();

    let stopped = lockserver.stop_for_restart().await;
    for (how, in_block) in [("in a block", true), ("in autocommit", false)] {
        if in_block {
            xa.batch_execute("BEGIN").await.unwrap();
        }
        let err = xa
            .batch_execute("UPDATE accounts SET balance = balance + 1 WHERE id = 5")
            .await
            .expect_err(how);
        assert_eq!(err.code(), Some(&SqlState::SYSTEM_ERROR), "{how}: {err:?}");
        xa.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(dump(&direct).await, held, "{how}: nothing written");
    }
    let lockserver = stopped.start().await;
    let status = eventually_ok(|| one(&at, "SELECT tandem_rollback()")).await;
    assert_eq!(status.as_deref(), Some("Rollbacked"));
    assert_eq!(dump(&direct).await, before, "the AT branch undone exactly");
    let status = eventually_ok(|| one(&xa, "SELECT tandem_rollback()")).await;
    assert_eq!(status.as_deref(), Some("Rollbacked"));
    assert!(tandem_prepared(&direct).await.is_empty());
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Retries `f` while it fails (a connection being re-made), for up to 10 s.
async fn eventually_ok<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still failing: {e}"),
        }
    }
}

/// pgx, pgJDBC and other drivers send BEGIN and COMMIT over the extended protocol: the
/// branch's COMMIT is its prepare there too, whether the statement was prepared apart
/// (tokio-postgres' `execute`) or comes in one batch with its Parse (`query_typed`).
#[tokio::test]
async fn a_branchs_commit_over_the_extended_protocol_prepares_it() {
    let orders = prepare("xa_extended_commit").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let da = orders.direct().await;

    for (decision, one_batch, want) in [
        ("rollback", false, 1000),
        ("commit", true, 990),
        ("commit", false, 980),
    ] {
        let a = tandem.connect(&orders.name).await;
        one(&a, "SELECT tandem_mode('xa')").await.unwrap();
        let xid = one(&a, "SELECT tandem_begin(30000)")
            .await
            .unwrap()
            .unwrap();
        a.execute("BEGIN", &[]).await.unwrap();
        let updated = a
            .execute(
                "UPDATE accounts SET balance = balance - $1 WHERE id = 1",
                &[&10i64],
            )
            .await
            .unwrap();
        assert_eq!(updated, 1);
        if one_batch {
            let rows = a.query_typed("COMMIT", &[]).await.unwrap();
            assert!(rows.is_empty());
        } else {
            assert_eq!(a.execute("COMMIT", &[]).await.unwrap(), 0);
        }
        let prepared = tandem_prepared(&da).await;
        assert_eq!(
            prepared.len(),
            1,
            "{decision}, one batch {one_batch}: {prepared:?}"
        );
        assert!(prepared[0].starts_with(&format!("tandem:{xid}:")));
        assert_eq!(
            balance(&da, 1).await,
            want + if decision == "commit" { 10 } else { 0 },
            "a prepared branch is not visible"
        );
        // The session is idle and goes on.
        let n: i64 = a
            .query_one("SELECT 41 + 1::bigint", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 42);

        let status = one(&a, &format!("SELECT tandem_{decision}()"))
            .await
            .unwrap();
        let expected = if decision == "rollback" {
            "Rollbacked"
        } else {
            "Committed"
        };
        assert_eq!(status.as_deref(), Some(expected));
        eventually("the prepared branch finished", || async {
            tandem_prepared(&da).await.is_empty()
        })
        .await;
        assert_eq!(balance(&da, 1).await, want, "{decision}");
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A raw connection to `tandem`, in XA mode and bound to a new global transaction.
async fn raw_in_xa(tandem: &Tandem, database: &str) -> tandem_tests::raw_pg::RawPg {
    let mut raw = tandem_tests::raw_pg::RawPg::startup(tandem.pg, "postgres", database).await;
    for sql in ["SELECT tandem_mode('xa')", "SELECT tandem_begin(30000)"] {
        raw.query(sql).await;
        raw.recv_until(b'Z').await;
    }
    raw
}

/// After `raw`'s COMMIT: its block was prepared as a branch, which row 1's new value
/// waits in; the global rollback finishes it, and row 1 is as before.
async fn branch_prepared_then_rolled_back(raw: &mut tandem_tests::raw_pg::RawPg, da: &Client) {
    assert_eq!(tandem_prepared(da).await.len(), 1, "the write was a branch");
    assert_eq!(
        balance(da, 1).await,
        1000,
        "not visible before the decision"
    );
    raw.query("SELECT tandem_rollback()").await;
    raw.recv_until(b'Z').await;
    eventually("the prepared branch finished", || async {
        tandem_prepared(da).await.is_empty()
    })
    .await;
    assert_eq!(balance(da, 1).await, 1000);
}

/// pgJDBC runs a statement for the first time as Parse, Bind, Execute in one batch:
/// inside an open block in XA mode, that write joins the block's branch (the Parse
/// ahead of its Bind runs nothing).
#[tokio::test]
async fn a_write_parsed_and_bound_in_one_batch_joins_the_xa_branch() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::frame;
    let orders = prepare("xa_parse_bind").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let da = orders.direct().await;
    let mut raw = raw_in_xa(&tandem, &orders.name).await;
    raw.query("BEGIN").await;
    raw.recv_until(b'Z').await;
    let mut batch = frame(
        b'P',
        &parse_body("", "UPDATE accounts SET balance = 5 WHERE id = 1"),
    );
    batch.extend(frame(b'B', &bind_body("")));
    batch.extend(frame(b'E', b"\0\0\0\0\x01"));
    batch.extend(frame(b'S', b""));
    raw.send(&batch).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12CZ", "{replies:?}");
    raw.query("COMMIT").await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(replies[0].strings()[0], "COMMIT", "{replies:?}");
    branch_prepared_then_rolled_back(&mut raw, &da).await;
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// pgJDBC's autosave sends BEGIN, SAVEPOINT and a transaction's first statement in one
/// batch: the BEGIN and the SAVEPOINT run ahead, so the write starts at a sync point
/// inside the block and joins its branch.
#[tokio::test]
async fn a_write_behind_begin_and_an_autosave_savepoint_joins_the_xa_branch() {
    use super::control::unnamed_batch;
    let orders = prepare("xa_autosave").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let da = orders.direct().await;
    let mut raw = raw_in_xa(&tandem, &orders.name).await;
    raw.send(&unnamed_batch(&[
        "BEGIN",
        "SAVEPOINT PGJDBC_AUTOSAVE",
        "UPDATE accounts SET balance = 5 WHERE id = 1",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12C12CZ", "{replies:?}");
    raw.query("COMMIT").await;
    raw.recv_until(b'Z').await;
    branch_prepared_then_rolled_back(&mut raw, &da).await;
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// pgJDBC's autosave, once its BEGIN is a prepared statement, sends the SAVEPOINT as a
/// Query between the BEGIN and the first statement: the write waits for the Query's
/// ReadyForQuery, which shows the open block, and joins its branch.
#[tokio::test]
async fn a_write_behind_a_savepoint_query_joins_the_xa_branch() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::frame;
    let orders = prepare("xa_autosave_query").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let da = orders.direct().await;
    let mut raw = raw_in_xa(&tandem, &orders.name).await;
    let mut batch = frame(b'P', &parse_body("begin", "BEGIN"));
    batch.extend(frame(b'B', &bind_body("begin")));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'Q', b"SAVEPOINT PGJDBC_AUTOSAVE\0"));
    batch.extend(frame(
        b'P',
        &parse_body("", "UPDATE accounts SET balance = 5 WHERE id = 1"),
    ));
    batch.extend(frame(b'B', &bind_body("")));
    batch.extend(frame(b'D', b"P\0"));
    batch.extend(frame(b'E', b"\0\0\0\0\x01"));
    batch.extend(frame(b'S', b""));
    raw.send(&batch).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12CCZ", "{replies:?}");
    assert_eq!(&replies[4].body[..], b"T", "the SAVEPOINT ran in the block");
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12nCZ", "{replies:?}");
    raw.query("COMMIT").await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(replies[0].strings()[0], "COMMIT", "{replies:?}");
    branch_prepared_then_rolled_back(&mut raw, &da).await;
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Behind a SELECT in the same batch (pgJDBC's composite query with `autosave`: the
/// SAVEPOINT as a Query, then each statement), a write still joins the open block's
/// branch; behind a COMMIT, which ended the block, it is refused.
#[tokio::test]
async fn a_write_behind_a_read_in_its_batch_joins_the_xa_branch() {
    use super::control::{bind_body, parse_body, unnamed_batch};
    use tandem_tests::raw_pg::frame;
    let orders = prepare("xa_read_then_write").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let da = orders.direct().await;
    let mut raw = raw_in_xa(&tandem, &orders.name).await;
    raw.query("BEGIN").await;
    raw.recv_until(b'Z').await;
    let mut batch = frame(b'Q', b"SAVEPOINT PGJDBC_AUTOSAVE\0");
    for sql in [
        "SELECT balance FROM accounts WHERE id = 1",
        "UPDATE accounts SET balance = 5 WHERE id = 1",
    ] {
        batch.extend(frame(b'P', &parse_body("", sql)));
        batch.extend(frame(b'B', &bind_body("")));
        batch.extend(frame(b'E', b"\0\0\0\0\0"));
    }
    batch.extend(frame(b'S', b""));
    raw.send(&batch).await;
    let mut replies = raw.recv_until(b'Z').await;
    replies.extend(raw.recv_until(b'Z').await);
    assert_eq!(tags(&replies), "CZ12DC12CZ", "{replies:?}");
    raw.query("COMMIT").await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(replies[0].strings()[0], "COMMIT", "{replies:?}");
    branch_prepared_then_rolled_back(&mut raw, &da).await;

    for sql in ["SELECT tandem_begin(30000)", "BEGIN"] {
        raw.query(sql).await;
        raw.recv_until(b'Z').await;
    }
    raw.send(&unnamed_batch(&[
        "COMMIT",
        "UPDATE accounts SET balance = 6 WHERE id = 1",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert!(
        replies
            .iter()
            .any(|m| m.sqlstate().as_deref() == Some("0A000")),
        "{replies:?}"
    );
    assert_eq!(
        balance(&da, 1).await,
        1000,
        "nothing ran outside the branch"
    );
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// XA COMMIT over the extended protocol creates the client's named statement before it
/// prepares anything: a Parse the backend refuses (the name is taken) fails the block,
/// as it would without tandem, nothing is prepared, and the session goes on.
#[tokio::test]
async fn an_xa_commit_whose_parse_is_refused_prepares_nothing() {
    use super::control::{bind_body, parse_body};
    use tandem_tests::raw_pg::{RawPg, frame};
    let orders = prepare("xa_commit_refused_parse").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let da = orders.direct().await;
    let mut raw = RawPg::startup(tandem.pg, "postgres", &orders.name).await;
    raw.run_each(&[
        "SELECT tandem_mode('xa')",
        "SELECT tandem_begin(30000)",
        "BEGIN",
        "UPDATE accounts SET balance = 5 WHERE id = 1",
    ])
    .await;
    let mut taken = frame(b'P', &parse_body("taken", "SELECT 1"));
    taken.extend(frame(b'S', b""));
    raw.send(&taken).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "1Z", "{replies:?}");

    let mut commit = frame(b'P', &parse_body("taken", "COMMIT"));
    commit.extend(frame(b'B', &bind_body("taken")));
    commit.extend(frame(b'E', b"\0\0\0\0\0"));
    commit.extend(frame(b'S', b""));
    raw.send(&commit).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "EZ", "{replies:?}");
    assert_eq!(
        replies[0].sqlstate().as_deref(),
        Some(SqlState::DUPLICATE_PSTATEMENT.code())
    );
    assert_eq!(&replies[1].body[..], b"E", "the block failed");
    assert!(
        tandem_prepared(&da).await.is_empty(),
        "nothing was prepared"
    );

    raw.query("ROLLBACK").await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(replies[0].strings()[0], "ROLLBACK", "{replies:?}");
    raw.query("SELECT 41 + 1").await;
    let replies = raw.recv_until(b'Z').await;
    assert!(replies.iter().any(|m| m.tag == b'D'), "{replies:?}");
    raw.query("SELECT tandem_rollback()").await;
    raw.recv_until(b'Z').await;
    assert_eq!(balance(&da, 1).await, 1000, "the write was rolled back");
    assert!(tandem_prepared(&da).await.is_empty());
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// An autocommit write over the extended protocol in XA mode (tokio-postgres'
/// `execute` outside BEGIN, pgJDBC with autocommit on) runs in a block tandem begins
/// ahead of it, prepared at the client's Sync as a branch of its own, as over the
/// simple protocol. A batch of them is one branch, and a request pipelined behind its
/// Sync waits for the prepare. A Parse alone begins nothing.
#[tokio::test]
async fn autocommit_writes_over_the_extended_protocol_are_prepared_as_branches() {
    use super::at_protocols::jdbc_batch;
    use super::control::parse_body;
    use tandem_tests::raw_pg::{RawPg, frame};
    let orders = prepare("xa_autocommit_extended").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let da = orders.direct().await;
    let a = tandem.connect(&orders.name).await;
    one(&a, "SELECT tandem_mode('xa')").await.unwrap();
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    let updated = a
        .execute(
            "UPDATE accounts SET balance = balance - $1 WHERE id = 1",
            &[&10i64],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
    assert_eq!(tandem_prepared(&da).await.len(), 1, "a branch of its own");
    assert_eq!(
        balance(&da, 1).await,
        1000,
        "not visible before the decision"
    );

    let mut raw = RawPg::startup(tandem.pg, "postgres", &orders.name).await;
    raw.query("SELECT tandem_mode('xa')").await;
    raw.recv_until(b'Z').await;
    raw.query(&format!("SELECT tandem_join('{xid}')")).await;
    raw.recv_until(b'Z').await;
    let mut batch = jdbc_batch(&[
        "UPDATE accounts SET balance = 7 WHERE id = 2",
        "UPDATE accounts SET balance = 8 WHERE id = 3",
    ]);
    batch.extend(frame(b'Q', b"SELECT 41 + 1\0"));
    raw.send(&batch).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12CZ", "{replies:?}");
    assert_eq!(&replies[6].body[..], b"I");
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "TDCZ", "{replies:?}");
    assert_eq!(&replies[3].body[..], b"I");
    assert_eq!(
        tandem_prepared(&da).await.len(),
        2,
        "the batch is one branch"
    );

    let mut parse_only = frame(
        b'P',
        &parse_body("later", "UPDATE accounts SET balance = 0 WHERE id = 4"),
    );
    parse_only.extend(frame(b'S', b""));
    raw.send(&parse_only).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "1Z", "{replies:?}");
    assert_eq!(&replies[1].body[..], b"I");
    assert_eq!(
        tandem_prepared(&da).await.len(),
        2,
        "a Parse alone begins nothing"
    );

    // A ROLLBACK inside such a batch is refused, and the batch's work with it.
    raw.send(&jdbc_batch(&[
        "UPDATE accounts SET balance = 9 WHERE id = 5",
        "ROLLBACK",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C1EZ", "{replies:?}");
    assert_eq!(replies[4].sqlstate().as_deref(), Some("0A000"));
    assert_eq!(&replies[5].body[..], b"I");
    // So is a simple Query between its messages (a COMMIT there would commit the
    // work outside the branch); the client's Sync then finds the session idle.
    let mut flushed = super::at_protocols::statements_without_sync(&[
        "UPDATE accounts SET balance = 9 WHERE id = 5",
    ]);
    flushed.extend(frame(b'H', b""));
    flushed.extend(frame(b'Q', b"COMMIT\0"));
    raw.send(&flushed).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12CEZ", "{replies:?}");
    assert_eq!(replies[3].sqlstate().as_deref(), Some("0A000"));
    assert_eq!(&replies[4].body[..], b"I");
    raw.send(&frame(b'S', b"")).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "Z", "{replies:?}");
    assert_eq!(
        tandem_prepared(&da).await.len(),
        2,
        "neither became a branch"
    );
    assert_eq!(balance(&da, 5).await, 1000, "nor committed");
    // COPY, which tandem cannot read, is refused as before rather than left waiting
    // (on a connection of its own: tokio-postgres does not recover from a COPY that
    // fails before it starts).
    let c = tandem.connect(&orders.name).await;
    one(&c, "SELECT tandem_mode('xa')").await.unwrap();
    one(&c, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    let copy = tokio::time::timeout(
        Duration::from_secs(10),
        c.copy_in::<_, bytes::Bytes>("COPY accounts FROM STDIN"),
    )
    .await
    .expect("COPY is answered");
    assert_eq!(
        copy.err().and_then(|e| e.code().cloned()),
        Some(SqlState::FEATURE_NOT_SUPPORTED)
    );
    drop(c);
    // As a simple Query (psql's \copy), which waited for ever for CopyData the
    // client sent behind it; the session goes on.
    let mut copier = raw_in_xa(&tandem, &orders.name).await;
    copier.query("COPY accounts FROM STDIN").await;
    let replies = tokio::time::timeout(Duration::from_secs(10), copier.recv_until(b'Z'))
        .await
        .expect("COPY is answered");
    assert_eq!(tags(&replies), "EZ", "{replies:?}");
    assert_eq!(replies[0].sqlstate().as_deref(), Some("0A000"));
    copier.query("SELECT 1").await;
    assert_eq!(tags(&copier.recv_until(b'Z').await), "TDCZ");

    assert_eq!(
        one(&a, "SELECT tandem_commit()").await.unwrap().as_deref(),
        Some("Committed")
    );
    eventually("the prepared branches finished", || async {
        tandem_prepared(&da).await.is_empty()
    })
    .await;
    assert_eq!(
        (
            balance(&da, 1).await,
            balance(&da, 2).await,
            balance(&da, 3).await,
            balance(&da, 4).await
        ),
        (990, 7, 8, 1000)
    );
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A branch registers before its PREPARE. A global commit decided while that PREPARE
/// is still running (here: a deferred trigger makes it take 2 s) reaches the branch
/// first; it must wait for the prepare and commit it, not take "not prepared" as done
/// (the branch would stay prepared until recovery, which rolls back an orphan whose
/// global transaction was forgotten).
#[tokio::test]
async fn a_global_commit_that_overtakes_a_branchs_prepare_commits_it() {
    let (orders, stock) = (
        prepare("xa_overtake_a").await,
        prepare("xa_overtake_b").await,
    );
    let (da, db) = (orders.direct().await, stock.direct().await);
    db.batch_execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(2); RETURN NULL; END$$;
         CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON accounts DEFERRABLE INITIALLY DEFERRED
           FOR EACH ROW EXECUTE FUNCTION slow();",
    )
    .await
    .unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let endpoint = format!("http://{}", lockserver.grpc);
    // Recovery, which would also commit the branch while its decision is known, stays
    // out of the way.
    let tandem = Tandem::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.postgres[0].xa_recovery_interval_ms = 600_000;
    })
    .await;
    let a = tandem.connect(&orders.name).await;
    let b = tandem.connect(&stock.name).await;
    for client in [&a, &b] {
        one(client, "SELECT tandem_mode('xa')").await.unwrap();
    }
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    a.batch_execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
        .await
        .unwrap();
    one(&b, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("INSERT INTO accounts (id, balance) VALUES (60, 10)")
        .await
        .unwrap();
    let prepare = tokio::spawn(async move { b.batch_execute("COMMIT").await.map(|_| b) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        one(&a, "SELECT tandem_commit()").await.unwrap().as_deref(),
        Some("Committed")
    );
    let _b = prepare
        .await
        .unwrap()
        .expect("the branch's COMMIT prepares it");
    eventually("the overtaken branch committed", || {
        let db = &db;
        async move {
            tandem_prepared(db).await.is_empty()
                && db
                    .query_opt("SELECT 1 FROM accounts WHERE id = 60", &[])
                    .await
                    .unwrap()
                    .is_some()
        }
    })
    .await;
    assert_eq!(balance(&da, 1).await, 990);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A function may write: tandem captures none of its writes, so AT mode refuses a call
/// of one that may (VOLATILE, in SQL or a procedural language), over either protocol,
/// and XA mode makes the statement that calls it work of the branch. Either way the
/// global rollback leaves the rows as they were. A STABLE function runs.
#[tokio::test]
async fn writes_made_by_functions_never_escape_the_global_transaction() {
    let (orders, stock) = (prepare("fn_at").await, prepare("fn_xa").await);
    let (da, db) = (orders.direct().await, stock.direct().await);
    for direct in [&da, &db] {
        direct
            .batch_execute(
                "CREATE FUNCTION bump(k int) RETURNS int LANGUAGE sql AS
                   'UPDATE accounts SET balance = balance + 1 WHERE id = k RETURNING balance';
                 CREATE FUNCTION peek(k int) RETURNS bigint LANGUAGE sql STABLE AS
                   'SELECT balance FROM accounts WHERE id = k';",
            )
            .await
            .unwrap();
    }
    let (before_a, before_b) = (dump(&da).await, dump(&db).await);
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let b = tandem.connect(&stock.name).await;
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    let refused = a.simple_query("SELECT bump(1)").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{refused}"
    );
    let refused = a.query("SELECT \"bump\"($1)", &[&2i32]).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{refused}"
    );
    let refused = a
        .batch_execute("UPDATE accounts SET note = 'x' WHERE id = bump(3)")
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{refused}"
    );
    let peeked: i64 = a
        .query_one("SELECT peek($1)", &[&1i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(peeked, 1000);
    a.batch_execute("UPDATE accounts SET balance = 1 WHERE id = 4")
        .await
        .unwrap();
    // XA mode: each call is a branch of its own, prepared, then rolled back.
    one(&b, "SELECT tandem_mode('xa')").await.unwrap();
    one(&b, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    b.simple_query("SELECT bump(1)").await.unwrap();
    b.query("SELECT bump($1)", &[&2i32]).await.unwrap();
    assert_eq!(tandem_prepared(&db).await.len(), 2);
    assert_eq!(
        one(&a, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
    eventually("the XA branches finished", || async {
        tandem_prepared(&db).await.is_empty()
    })
    .await;
    assert_eq!((dump(&da).await, dump(&db).await), (before_a, before_b));
    assert_eq!(undo_rows(&da).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Whether the database `client` is connected to has a table `name` in its search_path.
async fn table_exists(client: &Client, name: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_select_into_a_new_table_never_escapes_the_global_transaction() {
    let (orders, stock) = (prepare("into_at").await, prepare("into_xa").await);
    let (da, db) = (orders.direct().await, stock.direct().await);
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&orders.name).await;
    let b = tandem.connect(&stock.name).await;
    let xid = one(&a, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    // AT mode: it is DDL (CREATE TABLE … AS), refused however it is sent.
    let refused = a
        .simple_query("SELECT * INTO copied FROM accounts")
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{refused}"
    );
    let refused = a
        .query("SELECT * INTO copied FROM accounts WHERE id = $1", &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{refused}"
    );
    assert!(!table_exists(&da, "copied").await);
    // XA mode: it is work of a branch, prepared, then rolled back with the rest.
    one(&b, "SELECT tandem_mode('xa')").await.unwrap();
    one(&b, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    b.simple_query("SELECT * INTO copied FROM accounts")
        .await
        .unwrap();
    // Around statements tandem cannot analyse, a BEGIN and COMMIT in the same query
    // are still seen (the COMMIT would commit them outside the branch): refused.
    for batch in [
        "BEGIN; SELECT * INTO also_copied FROM accounts; COMMIT",
        "BEGIN; CREATE TABLE also_copied (a int); COMMIT",
        // The client's own 2PC behind another statement ends the transaction too.
        "SELECT * INTO also_copied FROM accounts; PREPARE TRANSACTION 'mine'",
        "SELECT 1; PREPARE TRANSACTION 'mine'",
    ] {
        let refused = b.batch_execute(batch).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{batch}: {refused}"
        );
    }
    b.batch_execute(
        "SELECT 1 AS a INTO unioned UNION SELECT 2; SELECT * INTO also_copied FROM accounts",
    )
    .await
    .unwrap();
    assert_eq!(tandem_prepared(&db).await.len(), 2);
    // Over the extended protocol outside a block it would commit on its own: refused.
    let refused = b
        .query(
            "SELECT * INTO copied_too FROM accounts WHERE id = $1",
            &[&1i32],
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{refused}"
    );
    b.batch_execute("BEGIN").await.unwrap();
    b.query(
        "SELECT * INTO copied_too FROM accounts WHERE id = $1",
        &[&1i32],
    )
    .await
    .unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    assert_eq!(tandem_prepared(&db).await.len(), 3);
    assert_eq!(
        one(&a, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("Rollbacked")
    );
    eventually("the XA branches finished", || async {
        tandem_prepared(&db).await.is_empty()
    })
    .await;
    for name in ["copied", "unioned", "also_copied", "copied_too"] {
        assert!(
            !table_exists(&db, name).await,
            "{name} outlived the rollback"
        );
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}

#[tokio::test]
async fn an_autocommit_batch_ended_by_flush_gets_its_command_complete_before_the_sync() {
    use tandem_tests::raw_pg::frame;
    let orders = prepare("xa_flushed_batch").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = orders.direct().await;
    let before = dump(&direct).await;
    let mut raw = raw_in_xa(&tandem, &orders.name).await;
    // libpq's pipeline mode (PQsendFlushRequest), psycopg's pipeline fetch: the client
    // waits for the CommandComplete before it sends its Sync.
    let mut flushed = super::at_protocols::statements_without_sync(&[
        "UPDATE accounts SET balance = 9 WHERE id = 5",
    ]);
    flushed.extend(frame(b'H', b""));
    raw.send(&flushed).await;
    let replies = raw.recv_until(b'C').await;
    assert!(
        replies.iter().all(|m| m.tag != b'E'),
        "{}",
        super::at_protocols::tags(&replies)
    );
    raw.send(&frame(b'S', b"")).await;
    raw.recv_until(b'Z').await;
    raw.query("SELECT tandem_rollback()").await;
    raw.recv_until(b'Z').await;
    eventually("the branch is rolled back", || async {
        dump(&orders.direct().await).await == before
    })
    .await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// `COMMIT AND CHAIN` would prepare the branch and then open a transaction outside it,
/// whose writes the client believes it may still roll back, while tandem makes each of
/// them a branch of its own. Refused over either protocol: nothing is prepared, and the
/// session goes on.
#[tokio::test]
async fn commit_and_chain_of_a_branch_is_refused_and_prepares_nothing() {
    let orders = prepare("xa_commit_and_chain").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let da = orders.direct().await;
    let before = dump(&da).await;

    for extended in [false, true] {
        let a = tandem.connect(&orders.name).await;
        one(&a, "SELECT tandem_mode('xa')").await.unwrap();
        one(&a, "SELECT tandem_begin(30000)").await.unwrap();
        a.batch_execute("BEGIN").await.unwrap();
        a.batch_execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
            .await
            .unwrap();
        let refused = if extended {
            a.execute("COMMIT AND CHAIN", &[]).await.map(|_| ())
        } else {
            a.batch_execute("commit and chain").await
        }
        .expect_err("COMMIT AND CHAIN of an XA branch");
        assert_eq!(
            refused.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "extended {extended}: {refused:?}"
        );
        assert!(tandem_prepared(&da).await.is_empty(), "extended {extended}");
        a.batch_execute("ROLLBACK").await.unwrap();
        a.batch_execute("UPDATE accounts SET balance = balance + 5 WHERE id = 2")
            .await
            .unwrap();
        rolled_back(&a).await;
        eventually("the prepared branch finished", || async {
            tandem_prepared(&da).await.is_empty()
        })
        .await;
        assert_eq!(dump(&da).await, before, "extended {extended}");

        // A plain COMMIT still prepares the branch, which the global commit commits.
        one(&a, "SELECT tandem_begin(30000)").await.unwrap();
        a.batch_execute(
            "BEGIN; UPDATE accounts SET balance = balance - 10 WHERE id = 1; COMMIT AND NO CHAIN",
        )
        .await
        .expect_err("a multi-statement query that ends a transaction");
        a.batch_execute("BEGIN").await.unwrap();
        a.batch_execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
            .await
            .unwrap();
        a.batch_execute("COMMIT AND NO CHAIN").await.unwrap();
        assert_eq!(tandem_prepared(&da).await.len(), 1, "extended {extended}");
        assert_eq!(
            one(&a, "SELECT tandem_commit()").await.unwrap().as_deref(),
            Some("Committed")
        );
        eventually("the prepared branch committed", || async {
            tandem_prepared(&da).await.is_empty()
        })
        .await;
        a.batch_execute("UPDATE accounts SET balance = balance + 10 WHERE id = 1")
            .await
            .unwrap();
    }
    assert_eq!(dump(&da).await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// An XA-mode write is checked against the global locks AT-mode transactions hold, as a
/// write outside a global transaction is: a row an AT branch holds (its own global
/// transaction's too) makes it wait, then fail with 55P03, in the client's block and as
/// autocommit work, over the simple and the extended protocol, so that the AT
/// transaction's rollback finds its rows as it left them. Other rows it writes, and its
/// branches are prepared and committed.
#[tokio::test]
async fn an_xa_write_meets_the_global_locks_of_at_transactions() {
    use super::control::{batch_with_a_parameter, bind_body_with, unnamed_batch};
    use tandem_tests::raw_pg::frame;
    let db = prepare("xa_meets_at_locks").await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let endpoint = format!("http://{}", lockserver.grpc);
    let tandem = Tandem::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.lockserver.lock_wait_ms = 300;
    })
    .await;
    let at = tandem.connect(&db.name).await;
    one(&at, "SELECT tandem_begin(30000)").await.unwrap();
    at.batch_execute(
        "UPDATE accounts SET balance = balance + 1 WHERE id = 1; DELETE FROM accounts WHERE id = 3",
    )
    .await
    .unwrap();
    let xa = tandem.connect(&db.name).await;
    one(&xa, "SELECT tandem_mode('xa')").await.unwrap();
    let xid = one(&xa, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    let locked = |e: tokio_postgres::Error| {
        assert_eq!(e.code(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{e:?}");
    };
    // Autocommit work, simple and extended: an UPDATE of a held row, an INSERT of a
    // key a held DELETE took.
    locked(
        xa.batch_execute("UPDATE accounts SET balance = balance + 100 WHERE id = 1")
            .await
            .unwrap_err(),
    );
    locked(
        xa.execute(
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
            &[&100i64, &1i32],
        )
        .await
        .unwrap_err(),
    );
    locked(
        xa.batch_execute("INSERT INTO accounts (id, balance) VALUES (3, 7)")
            .await
            .unwrap_err(),
    );
    locked(
        xa.execute(
            "INSERT INTO accounts (id, balance) VALUES ($1, $2)",
            &[&3i32, &7i64],
        )
        .await
        .unwrap_err(),
    );
    assert!(
        tandem_prepared(&direct).await.is_empty(),
        "refused autocommit work prepares nothing"
    );
    // In the client's block, simple and extended.
    xa.batch_execute("BEGIN").await.unwrap();
    locked(
        xa.batch_execute("UPDATE accounts SET balance = balance + 100 WHERE id = 1")
            .await
            .unwrap_err(),
    );
    xa.batch_execute("ROLLBACK").await.unwrap();
    xa.batch_execute("BEGIN").await.unwrap();
    locked(
        xa.execute("DELETE FROM accounts WHERE id = $1", &[&1i32])
            .await
            .unwrap_err(),
    );
    xa.batch_execute("ROLLBACK").await.unwrap();
    // pgJDBC's first run of a statement: Parse, Bind, Execute in one batch, as
    // autocommit work and in the client's block.
    let mut raw = raw_in_xa(&tandem, &db.name).await;
    for (block, status) in [(false, "I"), (true, "E")] {
        if block {
            raw.simple("BEGIN").await;
        }
        raw.send(&unnamed_batch(&[
            "UPDATE accounts SET balance = 5 WHERE id = 1",
        ]))
        .await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), "1EZ", "{replies:?}");
        assert_eq!(replies[1].sqlstate().as_deref(), Some("55P03"));
        assert_eq!(replies[2].strings()[0], status, "{replies:?}");
    }
    raw.simple("ROLLBACK").await;
    // The statement a refused batch prepared exists afterwards, as without tandem:
    // psycopg binds it again.
    raw.simple("BEGIN").await;
    raw.send(&batch_with_a_parameter(
        "by_id",
        "UPDATE accounts SET balance = balance WHERE id = $1",
    ))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "1EZ", "{replies:?}");
    assert_eq!(replies[1].sqlstate().as_deref(), Some("55P03"));
    raw.simple("ROLLBACK").await;
    raw.simple("BEGIN").await;
    let mut again = frame(b'B', &bind_body_with("by_id", b"4"));
    again.extend(frame(b'E', b"\0\0\0\0\0"));
    again.extend(frame(b'S', b""));
    raw.send(&again).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "2CZ", "{replies:?}");
    raw.simple("ROLLBACK").await;
    // pgJDBC's executeBatch: several statements, one Sync. Each runs on its own, checked;
    // one on a held row fails the batch, and nothing of it stays.
    let batch = [
        "INSERT INTO accounts (id, balance) VALUES (8, 80)",
        "UPDATE accounts SET balance = balance + 1 WHERE id = 8",
    ];
    for (block, status) in [(false, "I"), (true, "E")] {
        if block {
            raw.simple("BEGIN").await;
        }
        raw.send(&unnamed_batch(&[
            batch[0],
            "UPDATE accounts SET balance = 5 WHERE id = 1",
        ]))
        .await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), "12C1EZ", "{replies:?}");
        assert_eq!(replies[4].sqlstate().as_deref(), Some("55P03"));
        assert_eq!(replies[5].strings()[0], status, "{replies:?}");
    }
    raw.simple("ROLLBACK").await;
    // Behind a statement that needs no check (a table that cannot hold global locks,
    // a read), a write is still checked: what goes before it runs ahead.
    for (block, status) in [(false, "I"), (true, "E")] {
        if block {
            raw.simple("BEGIN").await;
        }
        raw.send(&unnamed_batch(&[
            "INSERT INTO nokey VALUES (1)",
            "SELECT 1",
            "INSERT INTO accounts (id, balance) VALUES (3, 7)",
        ]))
        .await;
        let replies = raw.recv_until(b'Z').await;
        assert_eq!(tags(&replies), "12C12DC1EZ", "{replies:?}");
        assert_eq!(replies[8].sqlstate().as_deref(), Some("55P03"));
        assert_eq!(replies[9].strings()[0], status, "{replies:?}");
    }
    raw.simple("ROLLBACK").await;
    assert!(tandem_prepared(&direct).await.is_empty());
    let nokey: i64 = direct
        .query_one("SELECT count(*) FROM nokey", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(nokey, 0, "nothing of the refused batches stayed");
    // Autocommit work behind a read in its batch: the read opens tandem's block and
    // runs ahead, and the write is checked.
    raw.send(&unnamed_batch(&[
        "SELECT 1",
        "INSERT INTO accounts (id, balance) VALUES (3, 7)",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12DC1EZ", "{replies:?}");
    assert_eq!(replies[5].sqlstate().as_deref(), Some("55P03"));
    assert_eq!(replies[6].strings()[0], "I", "{replies:?}");
    assert!(tandem_prepared(&direct).await.is_empty());
    // Behind a statement that cannot run ahead (a SET), the write would come between
    // sync points, where it cannot be checked: refused, as before, not run unchecked.
    raw.send(&unnamed_batch(&[
        "SET application_name = 'batch'",
        "INSERT INTO accounts (id, balance) VALUES (3, 7)",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C1EZ", "{replies:?}");
    assert_eq!(replies[4].sqlstate().as_deref(), Some("0A000"));
    assert!(tandem_prepared(&direct).await.is_empty());
    // A statement run ahead that fails ends tandem's block around the batch: the
    // next autocommit write is a branch of its own again.
    raw.send(&unnamed_batch(&[
        "INSERT INTO nokey VALUES (2)",
        "SELECT 1/0",
        "UPDATE accounts SET balance = balance WHERE id = 4",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C1EZ", "{replies:?}");
    assert_eq!(replies[4].sqlstate().as_deref(), Some("22012"));
    assert_eq!(replies[5].strings()[0], "I", "{replies:?}");
    // And on rows nobody holds, as autocommit work: one branch.
    raw.send(&unnamed_batch(&batch)).await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12C12CZ", "{replies:?}");
    assert_eq!(replies[6].strings()[0], "I", "{replies:?}");
    assert_eq!(tandem_prepared(&direct).await.len(), 1);
    raw.simple("SELECT tandem_commit()").await;
    drop(raw);
    eventually("the batch's branch is committed", || async {
        tandem_prepared(&direct).await.is_empty()
    })
    .await;
    // A row the same global transaction's AT branch holds.
    let joined = tandem.connect(&db.name).await;
    one(&joined, &format!("SELECT tandem_join('{xid}')"))
        .await
        .unwrap();
    joined
        .batch_execute("UPDATE accounts SET balance = balance + 5 WHERE id = 2")
        .await
        .unwrap();
    xa.batch_execute("BEGIN").await.unwrap();
    locked(
        xa.batch_execute("UPDATE accounts SET balance = balance + 50 WHERE id = 2")
            .await
            .unwrap_err(),
    );
    xa.batch_execute("ROLLBACK").await.unwrap();
    // Rows nobody holds: a block's branch and an autocommit one, each protocol.
    xa.batch_execute("BEGIN").await.unwrap();
    xa.batch_execute("UPDATE accounts SET balance = balance - 40 WHERE id = 4")
        .await
        .unwrap();
    xa.execute(
        "INSERT INTO accounts (id, balance) VALUES ($1, $2)",
        &[&6i32, &60i64],
    )
    .await
    .unwrap();
    xa.batch_execute("COMMIT").await.unwrap();
    xa.batch_execute("INSERT INTO accounts (id, balance) VALUES (7, 70)")
        .await
        .unwrap();
    xa.execute(
        "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
        &[&40i64, &5i32],
    )
    .await
    .unwrap();
    assert_eq!(tandem_prepared(&direct).await.len(), 3);
    assert_eq!(
        one(&xa, "SELECT tandem_commit()").await.unwrap().as_deref(),
        Some("Committed")
    );
    rolled_back(&at).await;
    eventually("the XA branches are committed", || async {
        tandem_prepared(&direct).await.is_empty()
    })
    .await;
    let after = direct
        .query("SELECT id, balance FROM accounts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    assert_eq!(
        after,
        [
            (1, 1000),
            (2, 1005),
            (3, 1000),
            (4, 960),
            (5, 1040),
            (6, 60),
            (7, 70),
            (8, 81)
        ]
    );
    let untouched = |row: &String| ["(1,", "(3,"].iter().any(|id| row.starts_with(id));
    let kept: Vec<_> = dump(&direct).await.into_iter().filter(untouched).collect();
    let want: Vec<_> = before.into_iter().filter(untouched).collect();
    assert_eq!(
        kept, want,
        "the AT rollback restored its rows byte for byte"
    );
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// An XA autocommit write that waits for a row an AT transaction holds lets the row go
/// while it waits, as an autocommit write outside a global transaction does: that
/// transaction's rollback, which needs the row, goes through, and the write then runs
/// on the restored row (over the simple and the extended protocol).
#[tokio::test]
async fn an_xa_autocommit_write_waiting_for_a_row_lets_its_holder_roll_back() {
    let db = prepare("xa_waits_for_rollback").await;
    let direct = db.direct().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let endpoint = format!("http://{}", lockserver.grpc);
    let tandem = Tandem::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.lockserver.lock_wait_ms = 20_000;
    })
    .await;
    for extended in [false, true] {
        let at = tandem.connect(&db.name).await;
        one(&at, "SELECT tandem_begin(60000)").await.unwrap();
        at.batch_execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
            .await
            .unwrap();
        let xa = tandem.connect(&db.name).await;
        one(&xa, "SELECT tandem_mode('xa')").await.unwrap();
        one(&xa, "SELECT tandem_begin(60000)").await.unwrap();
        let write = tokio::spawn(async move {
            let written = if extended {
                xa.execute(
                    "UPDATE accounts SET balance = balance + $1 WHERE id = 1",
                    &[&1000i64],
                )
                .await
                .map(drop)
            } else {
                xa.batch_execute("UPDATE accounts SET balance = balance + 1000 WHERE id = 1")
                    .await
            };
            written.map(|()| xa)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        rolled_back(&at).await;
        let xa = write
            .await
            .unwrap()
            .expect("the XA write runs once the row is free");
        assert_eq!(
            one(&xa, "SELECT tandem_commit()").await.unwrap().as_deref(),
            Some("Committed")
        );
        eventually("the XA branch is committed", || async {
            tandem_prepared(&direct).await.is_empty()
        })
        .await;
    }
    assert_eq!(
        balance(&direct, 1).await,
        3000,
        "both writes, on restored rows"
    );
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// An autocommit batch whose write comes behind a read is one implicit transaction:
/// in XA mode the read opens tandem's block, and the batch is prepared as one branch
/// (it was refused with 0A000, the write coming between sync points outside a block).
#[tokio::test]
async fn an_autocommit_batch_with_a_read_ahead_of_its_write_is_one_xa_branch() {
    use super::control::unnamed_batch;
    let orders = prepare("xa_read_then_write").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let da = orders.direct().await;
    let mut raw = raw_in_xa(&tandem, &orders.name).await;
    raw.send(&unnamed_batch(&[
        "SELECT 1",
        "UPDATE accounts SET balance = 5 WHERE id = 1",
    ]))
    .await;
    let replies = raw.recv_until(b'Z').await;
    assert_eq!(tags(&replies), "12DC12CZ", "{replies:?}");
    assert_eq!(replies[7].strings()[0], "I", "{replies:?}");
    branch_prepared_then_rolled_back(&mut raw, &da).await;
    drop(raw);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// The lockserver registers the branch at COMMIT, but its answer is lost: the client's
/// COMMIT fails and nothing is prepared. The branch tandem never heard of must not hold
/// up the global commit once the client's retry has prepared its work.
#[tokio::test]
async fn an_xa_registration_whose_answer_was_lost_does_not_hold_up_the_commit() {
    let db = prepare("xa_lost_register").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let relay = LossyRelay::start(lockserver.grpc).await;
    let tandem = Tandem::start_with(|c| relay.proxy_settings(c)).await;
    let client = tandem.connect(&db.name).await;
    one(&client, "SELECT tandem_mode('xa')").await.unwrap();
    let xid = one(&client, "SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    let work = async || {
        client.batch_execute("BEGIN").await.unwrap();
        let update = "UPDATE accounts SET balance = balance - 10 WHERE id = 1";
        client.batch_execute(update).await.unwrap();
    };
    work().await;
    relay.lose_answers();
    client
        .batch_execute("COMMIT")
        .await
        .expect_err("the registration timed out");
    relay.heal();
    // The proxy's lockserver connection broke with the lost answers: the first call
    // after it may find it closed.
    eventually("the lockserver answers again", || async {
        one(
            &tandem.connect(&db.name).await,
            &format!("SELECT tandem_status('{xid}')"),
        )
        .await
        .is_ok()
    })
    .await;
    assert_eq!(
        balance(&db.direct().await, 1).await,
        1000,
        "nothing prepared"
    );
    work().await;
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        one(&client, "SELECT tandem_commit()")
            .await
            .unwrap()
            .as_deref(),
        Some("Committed")
    );
    lockserver
        .assert_first_of_two_branches_withdrawn(&xid)
        .await;
    eventually("the branch committed", || async {
        balance(&db.direct().await, 1).await == 990
    })
    .await;
    assert!(tandem_prepared(&db.direct().await).await.is_empty());
    drop(client);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// A ROLLBACK TO SAVEPOINT at the head of a Query revives a failed block, and what
/// follows it runs there: in XA mode that block is the branch, which its COMMIT
/// prepares. (It once committed outside the global transaction when the block had done
/// nothing before it failed.)
#[tokio::test]
async fn a_failed_block_revived_by_its_query_is_the_xa_branch() {
    let db = prepare("xa_revived_block").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let direct = db.direct().await;
    let before = dump(&direct).await;
    let client = tandem.connect(&db.name).await;
    one(&client, "SELECT tandem_mode('xa')").await.unwrap();
    // An empty statement first, too: PostgreSQL runs what follows it.
    for revive in ["ROLLBACK TO SAVEPOINT s", "; ROLLBACK TO SAVEPOINT s"] {
        one(&client, "SELECT tandem_begin(30000)").await.unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        client.batch_execute("SAVEPOINT s").await.unwrap();
        client.batch_execute("SELECT 1/0").await.unwrap_err();
        let query = format!("{revive}; UPDATE accounts SET balance = 7 WHERE id = 3");
        client.batch_execute(&query).await.unwrap();
        client.batch_execute("COMMIT").await.unwrap();
        let prepared = tandem_prepared(&direct).await.len();
        assert_eq!(prepared, 1, "{revive}: prepared, not committed");
        rolled_back(&client).await;
        eventually("the branch rolled back", || async {
            tandem_prepared(&direct).await.is_empty()
        })
        .await;
        assert_eq!(dump(&direct).await, before, "{revive}");
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}
