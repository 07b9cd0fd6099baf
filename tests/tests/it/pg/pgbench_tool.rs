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
    let (history, accounts, branches, tellers, count): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
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
