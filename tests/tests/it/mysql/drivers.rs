//! Other clients than mysql_async: PyMySQL (pure Python, run as a real process) and the
//! `mariadb` command-line client.

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
