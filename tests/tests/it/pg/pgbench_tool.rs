//! psql and pgbench, real clients nobody on the team wrote, through the proxy: the same
//! results as direct in every query mode.

use tandem_tests::harness::{Tandem, TestDb};

async fn run(program: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new(program)
        .args(args)
        .env("PGSSLMODE", "disable")
        .env("PGUSER", "postgres")
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program} runs (postgresql-client installed?): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// What TPC-B's invariant compares: every delta in history is in each balance once.
struct TpcbSums {
    history: i64,
    accounts: i64,
    branches: i64,
    tellers: i64,
    count: i64,
}

async fn tpcb_sums(direct: &tokio_postgres::Client) -> TpcbSums {
    let row = direct
        .query_one(
            "SELECT (SELECT sum(delta) FROM pgbench_history)::bigint,
                    (SELECT sum(abalance) FROM pgbench_accounts)::bigint,
                    (SELECT sum(bbalance) FROM pgbench_branches)::bigint,
                    (SELECT sum(tbalance) FROM pgbench_tellers)::bigint,
                    (SELECT count(*) FROM pgbench_history)",
            &[],
        )
        .await
        .unwrap();
    TpcbSums {
        history: row.get(0),
        accounts: row.get(1),
        branches: row.get(2),
        tellers: row.get(3),
        count: row.get(4),
    }
}

#[tokio::test]
async fn pgbench_tpcb_keeps_its_invariants_in_every_mode() {
    let db = TestDb::create("pgbench").await;
    let tandem = Tandem::start().await;
    let host = tandem.pg.ip().to_string();
    let port = tandem.pg.port().to_string();
    let conn = ["-h", &host, "-p", &port];
    run(
        "pgbench",
        &[&conn[..], &["-i", "-s", "1", "-q", &db.name]].concat(),
    )
    .await;
    for mode in ["simple", "extended", "prepared"] {
        for script in [&["-S"][..], &[][..]] {
            let out = run(
                "pgbench",
                &[
                    &conn[..],
                    script,
                    &[
                        "-M", mode, "-c", "4", "-j", "2", "-t", "200", "-n", &db.name,
                    ],
                ]
                .concat(),
            )
            .await;
            assert!(
                out.contains("number of transactions actually processed: 800/800"),
                "{mode} {script:?}: {out}"
            );
            assert!(out.contains("number of failed transactions: 0"), "{out}");
        }
    }
    // TPC-B's own invariant: every delta in history is in the balances, exactly once.
    let direct = db.direct().await;
    let TpcbSums {
        history,
        accounts,
        branches,
        tellers,
        count,
    } = tpcb_sums(&direct).await;
    assert_eq!(count, 3 * 800);
    assert_eq!(accounts, history);
    assert_eq!(branches, history);
    assert_eq!(tellers, history);

    // psql: the same output through the proxy as direct.
    let upstream = tandem_tests::env::pg_upstream();
    let (dhost, dport) = upstream.rsplit_once(':').unwrap();
    let select =
        "SELECT aid, abalance, filler FROM pgbench_accounts WHERE aid % 997 = 0 ORDER BY aid";
    let copy = "\\copy (SELECT * FROM pgbench_tellers ORDER BY tid) TO STDOUT";
    let psql = |h: &str, p: &str| {
        [
            "-X", "-h", h, "-p", p, "-d", &db.name, "-c", select, "-c", copy,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let args = psql(&host, &port);
    let through = run("psql", &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let args = psql(dhost, dport);
    let direct_out = run("psql", &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(through, direct_out);
    assert!(through.contains("rows)"));
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}

/// pgbench's TPC-B as global transactions, as `bench/at.sh` runs it, in each query mode:
/// over the extended protocol the control functions, BEGIN and the branch's COMMIT
/// (END) all go as libpq's unnamed `Parse Bind Describe Execute Sync`, or as prepared
/// statements. Every transaction that commits is applied once, every one that rolls
/// back leaves nothing, and neither undo rows nor locks are left.
#[tokio::test]
async fn pgbench_tpcb_as_global_transactions_in_every_mode() {
    use tandem_tests::lockserver::{Kind, TestLockserver};
    let db = TestDb::create("pgbench_at").await;
    db.migrate().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let host = tandem.pg.ip().to_string();
    let port = tandem.pg.port().to_string();
    let conn = ["-h", &host, "-p", &port];
    run(
        "pgbench",
        &[&conn[..], &["-i", "-s", "1", "-q", &db.name]].concat(),
    )
    .await;
    let direct = db.direct().await;
    direct
        .batch_execute("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")
        .await
        .unwrap();
    let folder = std::env::temp_dir().join(&db.name);
    std::fs::create_dir_all(&folder).unwrap();
    let script = |end: &str| {
        format!(
            "\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
SELECT tandem_leave();
SELECT tandem_begin() \\gset
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
SELECT {end}();
"
        )
    };
    let commit = folder.join("commit.sql");
    let rollback = folder.join("rollback.sql");
    std::fs::write(&commit, script("tandem_commit")).unwrap();
    std::fs::write(&rollback, script("tandem_rollback")).unwrap();
    let before: i64 = direct
        .query_one("SELECT sum(abalance)::bigint FROM pgbench_accounts", &[])
        .await
        .unwrap()
        .get(0);
    for mode in ["simple", "extended", "prepared"] {
        for (file, per_client) in [(&commit, 40), (&rollback, 20)] {
            let out = run(
                "pgbench",
                &[
                    &conn[..],
                    &[
                        "-M",
                        mode,
                        "-c",
                        "3",
                        "-j",
                        "1",
                        "-t",
                        &per_client.to_string(),
                        "--max-tries=100",
                        "-n",
                        "-f",
                        file.to_str().unwrap(),
                        &db.name,
                    ],
                ]
                .concat(),
            )
            .await;
            assert!(
                out.contains(&format!(
                    "number of transactions actually processed: {total}/{total}",
                    total = 3 * per_client
                )),
                "{mode} {file:?}: {out}"
            );
            assert!(out.contains("number of failed transactions: 0"), "{out}");
        }
    }
    let TpcbSums {
        history,
        accounts,
        branches,
        tellers,
        count,
    } = tpcb_sums(&direct).await;
    assert_eq!(count, 3 * 120, "the committed transactions, once each");
    assert_eq!(accounts - before, history);
    assert_eq!(branches, history);
    assert_eq!(tellers, history);
    // A retried transaction leaves its global one behind (the script's tandem_leave()),
    // which its 60 s timeout rolls back; phase 2 retries within 5 s.
    let mut left = Vec::new();
    for _ in 0..(70 * 40) {
        // GlobalFinished markers (log_status 1) stay by design: a rollback that found
        // no undo row of a registered branch (its local COMMIT failed) leaves one.
        left = direct
            .query(
                "SELECT xid, branch_id, log_status FROM undo_log WHERE log_status = 0",
                &[],
            )
            .await
            .unwrap();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    if let Some(row) = left.first() {
        let xid: String = row.get(0);
        let (_, txn) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
        panic!("{} undo rows are left, among them {xid}: {txn}", left.len());
    }
    let lockserver_ref = &lockserver;
    tandem_tests::harness::eventually("no locks are left", || async move {
        let (_, locks) = lockserver_ref.get("/v1/locks").await;
        locks["locks"].as_array().map(Vec::len) == Some(0)
    })
    .await;
    let _ = std::fs::remove_dir_all(&folder);
    tandem.shutdown().await;
    lockserver.stop().await;
}
