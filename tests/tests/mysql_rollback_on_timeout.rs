//! AT mode on MariaDB servers started with options fixed at start, which the shared
//! server cannot have: `innodb_rollback_on_timeout = ON`, where a lock wait timeout
//! (1205) rolls back the whole transaction instead of the statement, and a binary log
//! in STATEMENT format. A test binary of its own because it starts private servers:
//! `mariadb-install-db` and `mariadbd` from the MariaDB that `tests/setup-services.sh`
//! installs.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tandem_proxy::config::MysqlFrontend;
use tandem_tests::harness::Tandem;
use tandem_tests::lockserver::{Kind, TestLockserver};

/// A MariaDB server of the test's own, in a temporary directory; stopped and removed
/// on drop.
struct PrivateMariadb {
    server: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for PrivateMariadb {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `name` on PATH, or in /usr/sbin (where Debian puts mariadbd).
fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} not found: install MariaDB (tests/setup-services.sh)"))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

impl PrivateMariadb {
    async fn start(options: &[&str]) -> PrivateMariadb {
        let dir =
            std::env::temp_dir().join(format!("tandem-mariadb-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let data = dir.join("data");
        let user: &[&str] = if running_as_root() {
            &["--user=root"]
        } else {
            &[]
        };
        let install = || {
            // A data directory left half made by a failed attempt is started afresh.
            let _ = std::fs::remove_dir_all(&data);
            Command::new(program("mariadb-install-db"))
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args(user)
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                .stdin(Stdio::null())
                .output()
                .expect("run mariadb-install-db")
        };
        // It failed once in CI, on a loaded machine, with its output thrown away: one
        // more try, and the output if that fails too.
        let mut installed = install();
        if !installed.status.success() {
            installed = install();
        }
        assert!(
            installed.status.success(),
            "mariadb-install-db failed: {}\n{}",
            String::from_utf8_lossy(&installed.stdout),
            String::from_utf8_lossy(&installed.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(dir.join("server.log")).expect("server log");
        let server = Command::new(program("mariadbd"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--port={port}"))
            .args(user)
            .args(["--bind-address=127.0.0.1", "--innodb-buffer-pool-size=16M"])
            .args(options)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mariadbd");
        let server = PrivateMariadb { server, dir, port };
        for _ in 0..100 {
            if let Ok(conn) = Conn::new(server.opts(None)).await {
                let _ = conn.disconnect().await;
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default();
        panic!("the private MariaDB did not start:\n{log}");
    }

    fn opts(&self, database: Option<&str>) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some("root"))
            .db_name(database)
            .prefer_socket(false)
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

async fn balances(conn: &mut Conn) -> Vec<(i32, i64)> {
    conn.query("SELECT id, balance FROM accounts ORDER BY id")
        .await
        .unwrap()
}

fn code(e: &mysql_async::Error) -> u16 {
    match e {
        mysql_async::Error::Server(s) => s.code,
        other => panic!("not a server error: {other}"),
    }
}

/// Under `innodb_rollback_on_timeout`, a write that times out on a row lock ends the
/// whole local transaction. tandem must see that: the session's next write is then an
/// autocommit write, which tandem wraps so that its undo row commits with it. Taking the
/// session as still inside its transaction would let that write autocommit with no
/// undo, and the global rollback would leave it applied.
/// The private server with `bank.accounts` and undo_log, a tandem in front of it, and
/// a client through tandem with a 1 s lock wait for both kinds of lock.
struct Setup {
    server: PrivateMariadb,
    lockserver: TestLockserver,
    tandem: Tandem,
    client: Conn,
    direct: Conn,
}

async fn setup() -> Setup {
    let server = PrivateMariadb::start(&["--innodb-rollback-on-timeout=1"]).await;
    let mut admin = Conn::new(server.opts(None)).await.unwrap();
    let on: Option<i64> = admin
        .query_first("SELECT @@GLOBAL.innodb_rollback_on_timeout")
        .await
        .unwrap();
    assert_eq!(on, Some(1), "server in {}", server.dir().display());
    setup_on(server).await
}

/// As [`setup`], on `server`.
async fn setup_on(server: PrivateMariadb) -> Setup {
    let mut admin = Conn::new(server.opts(None)).await.unwrap();
    admin
        .query_drop(
            "CREATE DATABASE bank;
             CREATE TABLE bank.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
             INSERT INTO bank.accounts VALUES (1, 100), (2, 200), (3, 300);
             CREATE TABLE bank.other (id INT PRIMARY KEY) ENGINE=InnoDB;",
        )
        .await
        .unwrap();
    tandem_proxy::migrate::apply(&format!("mysql://root@127.0.0.1:{}/bank", server.port))
        .await
        .expect("tandem migrate");
    let direct = Conn::new(server.opts(Some("bank"))).await.unwrap();
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let endpoint = format!("http://{}", lockserver.grpc);
    let upstream = format!("127.0.0.1:{}", server.port);
    let tandem = Tandem::start_with(|c| {
        c.lockserver.endpoint = endpoint;
        c.mysql = vec![MysqlFrontend {
            listen: "127.0.0.1:0".parse().expect("literal address"),
            upstream,
            ..MysqlFrontend::default()
        }];
        c.mysql[0].service.user = "root".to_owned();
    })
    .await;
    let addr = tandem_tests::mysql::addr(&tandem);
    let mut client = Conn::new(
        OptsBuilder::default()
            .ip_or_hostname(addr.ip().to_string())
            .tcp_port(addr.port())
            .user(Some("root"))
            .db_name(Some("bank"))
            .prefer_socket(false),
    )
    .await
    .unwrap();
    client
        .query_drop("SET SESSION innodb_lock_wait_timeout = 1, SESSION lock_wait_timeout = 1")
        .await
        .unwrap();
    let xid: Option<String> = client
        .query_first("SELECT tandem_begin(30000)")
        .await
        .unwrap();
    assert!(xid.is_some());
    Setup {
        server,
        lockserver,
        tandem,
        client,
        direct,
    }
}

async fn undo_rows(conn: &mut Conn) -> Option<i64> {
    conn.query_first("SELECT COUNT(*) FROM undo_log WHERE log_status = 0")
        .await
        .unwrap()
}

#[tokio::test]
async fn a_lock_wait_timeout_that_rolls_back_the_transaction_leaves_the_next_write_captured() {
    let Setup {
        server,
        lockserver,
        tandem,
        mut client,
        mut direct,
    } = setup().await;
    let before = balances(&mut direct).await;

    // Another transaction, outside tandem, holds row 2.
    let mut holder = Conn::new(server.opts(Some("bank"))).await.unwrap();
    holder
        .query_drop("START TRANSACTION; UPDATE accounts SET balance = 999 WHERE id = 2")
        .await
        .unwrap();

    client.query_drop("START TRANSACTION").await.unwrap();
    client
        .query_drop("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    let e = client
        .query_drop("UPDATE accounts SET balance = 2 WHERE id = 2")
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1205, "{e}");
    holder.query_drop("ROLLBACK").await.unwrap();
    // The server rolled the whole transaction back: row 1 is as it was.
    assert_eq!(balances(&mut direct).await, before);

    // No transaction is open now, so this write autocommits: tandem wraps it, and its
    // undo row commits with it.
    client
        .query_drop("UPDATE accounts SET balance = 3 WHERE id = 3")
        .await
        .unwrap();
    assert_eq!(balances(&mut direct).await, [(1, 100), (2, 200), (3, 3)]);
    assert_eq!(
        undo_rows(&mut direct).await,
        Some(1),
        "the autocommit write has its undo row"
    );

    let status: Option<String> = client
        .query_first("SELECT tandem_rollback()")
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("Rollbacked"));
    assert_eq!(balances(&mut direct).await, before);
    assert_eq!(undo_rows(&mut direct).await, Some(0));
    drop(client);
    tandem.shutdown().await;
    lockserver.stop().await;
    drop(server);
}

/// The same error number, 1205, comes from a wait for a metadata lock, which ends only
/// the statement even under `innodb_rollback_on_timeout`. tandem asks the server rather
/// than guess: the transaction and its captured write go on, and a global rollback
/// undoes both writes. Guessing "rolled back" would make tandem wrap the next write in
/// START TRANSACTION, which commits the first write without its undo.
#[tokio::test]
async fn a_metadata_lock_timeout_keeps_the_transaction_and_its_branch() {
    let Setup {
        server,
        lockserver,
        tandem,
        mut client,
        mut direct,
    } = setup().await;
    let before = balances(&mut direct).await;

    client.query_drop("START TRANSACTION").await.unwrap();
    client
        .query_drop("UPDATE accounts SET balance = 1 WHERE id = 1")
        .await
        .unwrap();
    // Another session holds `other` with LOCK TABLES: reading it waits on its
    // metadata lock, for lock_wait_timeout.
    let mut holder = Conn::new(server.opts(Some("bank"))).await.unwrap();
    holder.query_drop("LOCK TABLES other WRITE").await.unwrap();
    let e = client.query_drop("SELECT * FROM other").await.unwrap_err();
    assert_eq!(code(&e), 1205, "{e}");
    holder.query_drop("UNLOCK TABLES").await.unwrap();

    client
        .query_drop("UPDATE accounts SET balance = 3 WHERE id = 3")
        .await
        .unwrap();
    // Still one local transaction: nothing is committed yet.
    assert_eq!(balances(&mut direct).await, before);
    client.query_drop("COMMIT").await.unwrap();
    assert_eq!(balances(&mut direct).await, [(1, 1), (2, 200), (3, 3)]);
    assert_eq!(
        undo_rows(&mut direct).await,
        Some(1),
        "one branch, both rows"
    );

    let status: Option<String> = client
        .query_first("SELECT tandem_rollback()")
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("Rollbacked"));
    assert_eq!(balances(&mut direct).await, before);
    assert_eq!(undo_rows(&mut direct).await, Some(0));
    drop(client);
    tandem.shutdown().await;
    lockserver.stop().await;
    drop(server);
}

/// With the binary log on in STATEMENT format InnoDB refuses writes under READ
/// COMMITTED (1665): tandem's own transactions that write (a branch's rollback, the
/// deletion of committed branches' undo rows) keep the server's isolation there, and a
/// global rollback restores the row and a global commit clears its undo row.
#[tokio::test]
async fn a_statement_binary_log_takes_tandems_rollbacks_and_cleanups() {
    let server = PrivateMariadb::start(&["--log-bin=binlog", "--binlog-format=STATEMENT"]).await;
    let mut admin = Conn::new(server.opts(None)).await.unwrap();
    let logged: Option<(i64, String)> = admin
        .query_first("SELECT @@log_bin, @@binlog_format")
        .await
        .unwrap();
    assert_eq!(logged, Some((1, "STATEMENT".to_owned())));
    let Setup {
        server: _server,
        lockserver,
        tandem,
        mut client,
        mut direct,
    } = setup_on(server).await;
    client
        .query_drop("UPDATE accounts SET balance = 0 WHERE id = 1")
        .await
        .unwrap();
    let status: Option<String> = client
        .query_first("SELECT tandem_rollback()")
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("Rollbacked"));
    assert_eq!(balances(&mut direct).await, [(1, 100), (2, 200), (3, 300)]);
    let xid: Option<String> = client
        .query_first("SELECT tandem_begin(30000)")
        .await
        .unwrap();
    assert!(xid.is_some());
    client
        .query_drop("UPDATE accounts SET balance = 150 WHERE id = 1")
        .await
        .unwrap();
    let status: Option<String> = client.query_first("SELECT tandem_commit()").await.unwrap();
    assert_eq!(status.as_deref(), Some("Committed"));
    tandem_tests::harness::eventually("the committed branch's undo row is deleted", || {
        let opts = _server.opts(Some("bank"));
        async move {
            let mut conn = Conn::new(opts).await.unwrap();
            undo_rows(&mut conn).await == Some(0)
        }
    })
    .await;
    assert_eq!(balances(&mut direct).await, [(1, 150), (2, 200), (3, 300)]);
    drop(client);
    tandem.shutdown().await;
    lockserver.stop().await;
}
