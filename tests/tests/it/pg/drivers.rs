//! Unrelated drivers, run as real client processes against the proxy: psycopg 3 (libpq
//! underneath), asyncpg and pgJDBC.

use tandem_tests::harness::{Tandem, TestDb};
use tandem_tests::lockserver::{Kind, TestLockserver};

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

/// A migrated database behind tandem with an embedded lockserver, whose checks of a
/// write to a held row wait 1 s before 55P03: what the driver checks run against.
async fn global_transactions(label: &str) -> (TestDb, TestLockserver, Tandem) {
    let db = TestDb::create(label).await;
    db.migrate().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let endpoint = format!("http://{}", lockserver.grpc);
    let tandem = Tandem::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.lockserver.lock_wait_ms = 1_000;
    })
    .await;
    (db, lockserver, tandem)
}

/// A driver check's process ended well and said so (`what` names the run).
fn assert_checks_passed(what: &str, output: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("all checks passed"),
        "{what} checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// No global lock and no session is left; then both stop.
async fn nothing_left(lockserver: TestLockserver, tandem: Tandem) {
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// asyncpg, as an asyncio service uses it: global transactions in AT and XA mode, and
/// a write outside them to a held row. asyncpg runs every statement with arguments as
/// Parse, Describe and Flush, then Bind, Execute and Sync.
#[tokio::test]
async fn asyncpg_works_through_the_proxy() {
    let (db, lockserver, tandem) = global_transactions("asyncpg").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/drivers/asyncpg_check.py");
    let upstream = tandem_tests::env::pg_upstream();
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(format!("postgresql://postgres@{}/{}", tandem.pg, db.name))
        .arg(format!("postgresql://postgres@{upstream}/{}", db.name))
        .output()
        .await
        .expect("python3 runs");
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("No module named 'asyncpg'"),
        "asyncpg is not installed: run `pip install asyncpg` (tests/setup-services.sh does)"
    );
    assert_checks_passed("asyncpg", &output);
    nothing_left(lockserver, tandem).await;
}

/// psycopg 3's pipelines (executemany with returning=True, `conn.pipeline()`): each
/// statement's Bind, Describe and Execute, a Flush, and the Sync only once the
/// replies are read; in global transactions with autocommit on and off, and outside
/// them to a table that holds global locks.
#[tokio::test]
async fn psycopg_pipelines_work_in_global_transactions() {
    let (db, lockserver, tandem) = global_transactions("psycopg_pipeline").await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/drivers/psycopg_pipeline_check.py"
    );
    let upstream = tandem_tests::env::pg_upstream();
    let (host, port) = upstream.rsplit_once(':').unwrap();
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(format!(
            "host={} port={} user=postgres dbname={} sslmode=disable",
            tandem.pg.ip(),
            tandem.pg.port(),
            db.name
        ))
        .arg(format!(
            "host={host} port={port} user=postgres dbname={} sslmode=disable",
            db.name
        ))
        .output()
        .await
        .expect("python3 runs");
    assert_checks_passed("psycopg pipeline", &output);
    nothing_left(lockserver, tandem).await;
}

/// pgJDBC (Debian's libpostgresql-jdbc-java), run as a Java service runs it: global
/// transactions in AT and XA mode around transactions with autocommit off, where the
/// driver sends BEGIN in one batch with the first statement, every Execute with a row
/// limit of 1, and COMMIT over the extended protocol; statements past its
/// prepareThreshold run server-side prepared. Then again with `autosave=always`, and
/// with `preferQueryMode=simple`.
#[tokio::test]
async fn pgjdbc_works_through_the_proxy() {
    let (db, lockserver, tandem) = global_transactions("pgjdbc").await;
    let program = concat!(env!("CARGO_MANIFEST_DIR"), "/drivers/PgJdbcCheck.java");
    let upstream = tandem_tests::env::pg_upstream();
    let url = |host: &str| {
        format!(
            "jdbc:postgresql://{host}/{}?user=postgres&sslmode=disable",
            db.name
        )
    };
    // `autosave` adds a SAVEPOINT, sent as a Query, ahead of every statement in a block;
    // `preferQueryMode=simple` writes parameters into the text of simple Queries.
    for options in ["", "&autosave=always", "&preferQueryMode=simple"] {
        let output = tokio::process::Command::new("java")
            .args(["-cp", "/usr/share/java/postgresql.jar", program])
            .arg(url(&tandem.pg.to_string()) + options)
            .arg(url(&upstream))
            .output()
            .await
            .expect("java runs (tests/setup-services.sh installs it)");
        assert_checks_passed(&format!("pgJDBC with options {options:?}"), &output);
    }
    nothing_left(lockserver, tandem).await;
}
