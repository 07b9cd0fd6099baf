//! A second, unrelated driver: psycopg 3 (libpq underneath), run as a real client
//! process against the proxy.

use tandem_tests::harness::{Tandem, TestDb};

#[tokio::test]
async fn psycopg_works_through_the_proxy() {
    let db = TestDb::create("psycopg").await;
    let tandem = Tandem::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/drivers/psycopg_check.py");
    let upstream = tandem_tests::env::pg_upstream();
    let (host, port) = upstream.rsplit_once(':').unwrap();
    let proxy_dsn = format!(
        "host={} port={} user=postgres dbname={} sslmode=disable",
        tandem.pg.ip(),
        tandem.pg.port(),
        db.name
    );
    let direct_dsn = format!(
        "host={host} port={port} user=postgres dbname={} sslmode=disable",
        db.name
    );
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&proxy_dsn)
        .arg(&direct_dsn)
        .output()
        .await
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'psycopg'"),
        "psycopg is not installed: run `pip install 'psycopg[binary]'` (tests/run.sh does)"
    );
    assert!(
        output.status.success(),
        "psycopg checks failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("all checks passed"));
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}
