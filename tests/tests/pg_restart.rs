//! PostgreSQL restarted under load through the proxy. A test binary of its own, because
//! it takes the shared server down: cargo runs test binaries one after another.
//!
//! Needs `TANDEM_TEST_PG_RESTART` (a shell command that restarts the server), which
//! `tests/run.sh` sets for the local cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tandem_tests::harness::{Tandem, TestDb, eventually};
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load() {
    let restart = std::env::var("TANDEM_TEST_PG_RESTART").unwrap_or_else(|_| {
        panic!("TANDEM_TEST_PG_RESTART is not set: run `bash tests/run.sh`, which sets it")
    });
    let db = TestDb::create("restart").await;
    db.direct()
        .await
        .batch_execute("CREATE TABLE hits (id bigserial PRIMARY KEY, worker int NOT NULL)")
        .await
        .unwrap();
    let tandem = Arc::new(Tandem::start().await);
    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let mut workers = Vec::new();
    for worker in 0..4i32 {
        let (tandem, stop, errors, name) = (
            Arc::clone(&tandem),
            Arc::clone(&stop),
            Arc::clone(&errors),
            db.name.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut committed = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let attempt = tokio::time::timeout(Duration::from_secs(10), async {
                    let (client, conn) =
                        tandem.config(&name).connect(tokio_postgres::NoTls).await?;
                    tokio::spawn(conn);
                    for _ in 0..20 {
                        client
                            .execute("INSERT INTO hits (worker) VALUES ($1)", &[&worker])
                            .await?;
                        committed += 1;
                    }
                    Ok::<_, tokio_postgres::Error>(())
                })
                .await;
                match attempt {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let code = e.code().map(|c| c.code().to_owned());
                        let key = code.unwrap_or_else(|| format!("closed={}", e.is_closed()));
                        *errors.lock().await.entry(key).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => panic!("a request hung for 10 s during the restart"),
                }
            }
            committed
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&restart)
        .status()
        .await
        .expect("restart command runs");
    assert!(status.success(), "{restart} failed");
    // Load continues after the restart until some inserts succeed again.
    let before: i64 = count(&db).await;
    eventually("inserts succeed again after the restart", || async {
        count(&db).await > before + 40
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for w in workers {
        committed += w.await.expect("worker did not panic");
    }
    let errors = errors.lock().await.clone();
    assert!(
        !errors.is_empty(),
        "a restart under load produced no error at all"
    );
    for code in errors.keys() {
        // 57P01 admin_shutdown / 57P03 cannot_connect_now come from PostgreSQL itself;
        // 08xxx from tandem when the backend is gone or not reachable yet.
        assert!(
            code.starts_with("57P0") || code.starts_with("08") || code == "closed=true",
            "unexpected error during the restart: {code} (all: {errors:?})"
        );
    }
    // Every insert the client saw succeed is there.
    assert!(count(&db).await >= committed as i64);
    tandem.assert_no_sessions_left().await;
    match Arc::try_unwrap(tandem) {
        Ok(tandem) => tandem.shutdown().await,
        Err(_) => panic!("a worker still holds the proxy"),
    }
}

/// The rows in `hits`, read directly; -1 while PostgreSQL cannot answer (it may be
/// restarting). The bound is generous: the final count must not fail on a loaded
/// machine.
async fn count(db: &TestDb) -> i64 {
    match tokio::time::timeout(Duration::from_secs(10), async {
        let (client, conn) = {
            let mut config: tokio_postgres::Config = tandem_tests::env::pg_admin();
            config.dbname(&db.name);
            config.connect(tokio_postgres::NoTls).await.ok()?
        };
        tokio::spawn(conn);
        client
            .query_one("SELECT count(*) FROM hits", &[])
            .await
            .ok()
            .map(|r| r.get(0))
    })
    .await
    {
        Ok(Some(n)) => n,
        _ => -1,
    }
}
