//! Other clients than mysql_async: PyMySQL (pure Python) and MariaDB Connector/J, run
//! as real processes, and the `mariadb` command-line client.

use tandem_tests::lockserver::{Kind, TestLockserver};
use tandem_tests::mysql::{self as my, MyTestDb};

#[tokio::test]
async fn pymysql_works_through_the_proxy() {
    let db = MyTestDb::create("pymysql").await;
    let tandem = my::start().await;
    let addr = my::addr(&tandem);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/drivers/pymysql_check.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(&db.name)
        .output()
        .await
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'pymysql'"),
        "PyMySQL is not installed: run `pip install pymysql` (tests/setup-services.sh does)"
    );
    assert!(
        output.status.success(),
        "PyMySQL checks failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("all checks passed"));
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn the_mariadb_command_line_client_works_through_the_proxy() {
    let db = MyTestDb::create("cli").await;
    let tandem = my::start().await;
    let addr = my::addr(&tandem);
    let sql = "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)); \
               INSERT INTO t VALUES (1, 'a'), (2, 'b'); \
               SELECT id, v FROM t ORDER BY id; \
               SELECT CONCAT('sum=', SUM(id)) FROM t;";
    let stdout = my::mariadb_cli(addr, &db.name, sql).await;
    assert_eq!(stdout, "1\ta\n2\tb\nsum=3\n");
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}

/// MariaDB Connector/J (Debian's libmariadb-java), run as a Java service runs it:
/// global transactions in AT and XA mode around transactions with autocommit off, with
/// client-side and with server-side prepared statements.
#[tokio::test]
async fn mariadb_connector_j_works_through_the_proxy() {
    let db = MyTestDb::create("connector_j").await;
    db.migrate().await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let endpoint = format!("http://{}", lockserver.grpc);
    let tandem = my::start_with(|c| c.lockserver.endpoint = endpoint).await;
    let program = concat!(env!("CARGO_MANIFEST_DIR"), "/drivers/MyJdbcCheck.java");
    let upstream = my::upstream();
    for server_side in ["false", "true"] {
        let url = |host: &str| {
            format!(
                "jdbc:mariadb://{host}/{}?user=root&useServerPrepStmts={server_side}",
                db.name
            )
        };
        let output = tokio::process::Command::new("java")
            .args(["-cp", "/usr/share/java/mariadb-java-client.jar", program])
            .arg(url(&my::addr(&tandem).to_string()))
            .arg(url(&upstream))
            .output()
            .await
            .expect("java runs (tests/setup-services.sh installs it)");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "Connector/J checks failed (useServerPrepStmts={server_side}):\n{}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("all checks passed"));
    }
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
    lockserver.stop().await;
}
