//! The MySQL side of the harness: a tandem with a MySQL front end in front of the test
//! MariaDB/MySQL, a fresh database per test, client options, and a raw packet client for
//! malformed-input tests.
//!
//! Builds on `harness::Tandem` (same process, same shutdown). Never uses fixed ports.

use crate::env;
use crate::harness::{Tandem, eventually};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use std::net::SocketAddr;
use tandem_proxy::config::{Config, MysqlFrontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The test server's options, from `TANDEM_TEST_MYSQL_URL`.
pub fn admin_opts() -> Opts {
    let url = env::mysql_url();
    Opts::from_url(&url)
        .unwrap_or_else(|e| panic!("{}={url} is not a valid URL: {e}", env::MYSQL_URL))
}

/// `host:port` of the test server, for the proxy's upstream.
pub fn upstream() -> String {
    let opts = admin_opts();
    format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port())
}

/// A tandem with one MySQL front end (and its usual PostgreSQL one).
pub async fn start() -> Tandem {
    start_with(|_| {}).await
}

/// As `start`, with `edit` applied to the configuration after the test defaults.
pub async fn start_with(edit: impl FnOnce(&mut Config)) -> Tandem {
    Tandem::start_with(|c| {
        c.mysql = vec![MysqlFrontend {
            listen: "127.0.0.1:0".parse().expect("literal address"),
            upstream: upstream(),
            ..MysqlFrontend::default()
        }];
        let admin = admin_opts();
        c.mysql[0].service.user = admin.user().unwrap_or("root").to_owned();
        c.mysql[0].service.password = admin.pass().unwrap_or("").to_owned();
        edit(c);
    })
    .await
}

/// Client options for `addr` as the admin user, on `database` if given. TCP only.
pub fn opts_at(addr: SocketAddr, database: Option<&str>) -> OptsBuilder {
    let admin = admin_opts();
    OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(admin.user().map(str::to_owned).or(Some("root".to_owned())))
        .pass(admin.pass().map(str::to_owned))
        .db_name(database.map(str::to_owned))
        .prefer_socket(false)
}

/// The MySQL front end's address.
pub fn addr(tandem: &Tandem) -> SocketAddr {
    tandem.mysql.expect("the test started a MySQL front end")
}

/// Client options through `tandem` for `database`.
pub fn opts(tandem: &Tandem, database: &str) -> OptsBuilder {
    opts_at(addr(tandem), Some(database))
}

/// A connection through `tandem` to `database`.
pub async fn connect(tandem: &Tandem, database: &str) -> Conn {
    Conn::new(opts(tandem, database))
        .await
        .expect("connect through tandem")
}

/// Runs `sql` with the `mariadb` command-line client (libmariadb) against `addr`, on
/// `database`, as the admin user, over TCP without TLS, in batch mode; its standard
/// output, once it exited successfully (a failure panics with both outputs).
pub async fn mariadb_cli(addr: SocketAddr, database: &str, sql: &str) -> String {
    let output = tokio::process::Command::new("mariadb")
        .args([
            "--protocol=TCP",
            "--batch",
            "--skip-column-names",
            "--skip-ssl",
        ])
        .arg(format!("--host={}", addr.ip()))
        .arg(format!("--port={}", addr.port()))
        .arg(format!("--user={}", admin_opts().user().unwrap_or("root")))
        .arg(database)
        .arg("-e")
        .arg(sql)
        .output()
        .await
        .expect("the mariadb client is installed");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Waits until the proxy has no MySQL client session and no backend connection open.
pub async fn assert_no_sessions_left(tandem: &Tandem) {
    eventually("MySQL sessions and backends back to zero", || async {
        tandem.metric("tandem_mysql_clients_active").await == 0.0
            && tandem.metric("tandem_mysql_backends_active").await == 0.0
    })
    .await;
}

/// A direct connection to the test server as the admin user, on no database.
pub async fn connect_direct_admin() -> Conn {
    Conn::new(admin_opts())
        .await
        .expect("connect to the test server")
}

/// A database of its own for one test, dropped afterwards.
pub struct MyTestDb {
    pub name: String,
}

impl MyTestDb {
    pub async fn create(label: &str) -> MyTestDb {
        let name = format!("tandem_t_{label}_{:08x}", rand::random::<u32>());
        let mut admin = Conn::new(admin_opts())
            .await
            .expect("connect to the test server");
        admin
            .query_drop(format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let _ = admin.disconnect().await;
        MyTestDb { name }
    }

    /// Creates tandem's tables (undo_log) in this database, as `tandem migrate` does.
    pub async fn migrate(&self) {
        let admin = admin_opts();
        let password = admin.pass().map(|p| format!(":{p}")).unwrap_or_default();
        let url = format!(
            "mysql://{}{password}@{}/{}",
            admin.user().unwrap_or("root"),
            upstream(),
            self.name
        );
        tandem_proxy::migrate::apply(&url)
            .await
            .expect("tandem migrate");
    }

    /// A direct connection (no proxy) to this database.
    pub async fn direct(&self) -> Conn {
        let opts = OptsBuilder::from_opts(admin_opts()).db_name(Some(self.name.clone()));
        Conn::new(opts).await.expect("connect directly")
    }

    /// How many connections of the test server are on this database (tandem's side
    /// connections included), other than the asking one.
    pub async fn backend_count(&self) -> usize {
        let mut admin = Conn::new(admin_opts())
            .await
            .expect("connect to the test server");
        let n: Option<usize> = admin
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
                (self.name.as_str(),),
            )
            .await
            .expect("count connections");
        let _ = admin.disconnect().await;
        n.unwrap_or(0)
    }

    /// The InnoDB transactions of the sessions on this database, as InnoDB sees them
    /// now.
    ///
    /// Read from SHOW ENGINE INNODB STATUS, not information_schema.innodb_trx: InnoDB
    /// refreshes that table only once nobody has read it for 0.1 s, so tests polling it
    /// at the same time keep it from ever changing.
    pub async fn innodb_transactions(&self, conn: &mut Conn) -> Vec<InnodbTransaction> {
        let sessions: Vec<u64> = conn
            .exec(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ?",
                (self.name.as_str(),),
            )
            .await
            .expect("list the database's sessions");
        let status: Option<(String, String, String)> = conn
            .query_first("SHOW ENGINE INNODB STATUS")
            .await
            .expect("SHOW ENGINE INNODB STATUS");
        let (_, _, status) = status.expect("InnoDB reports its status");
        status
            .split("\n---TRANSACTION ")
            .skip(1)
            .filter_map(InnodbTransaction::parse)
            .filter(|t| sessions.contains(&t.thread_id))
            .collect()
    }
}

/// One transaction of SHOW ENGINE INNODB STATUS.
#[derive(Debug)]
pub struct InnodbTransaction {
    pub thread_id: u64,
    /// Waits for a lock.
    pub waiting: bool,
    pub row_locks: u64,
}

impl InnodbTransaction {
    /// Parses the transaction's paragraph; None for one of no session (a purge or a
    /// recovered transaction).
    fn parse(paragraph: &str) -> Option<InnodbTransaction> {
        let number_after = |marker: &str| -> Option<u64> {
            let at = paragraph.find(marker)? + marker.len();
            let digits: String = paragraph[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        };
        let thread_id =
            number_after("MariaDB thread id ").or_else(|| number_after("MySQL thread id "))?;
        let row_locks = paragraph
            .lines()
            .flat_map(|line| line.split(", "))
            .find_map(|part| part.strip_suffix(" row lock(s)"))
            .and_then(|n| n.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0);
        Some(InnodbTransaction {
            thread_id,
            waiting: paragraph.lines().any(|line| line.starts_with("LOCK WAIT")),
            row_locks,
        })
    }
}

impl Drop for MyTestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await; a thread with its own runtime removes the database.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut admin) = Conn::new(admin_opts()).await {
                        // A test that failed may leave a transaction open on a table of
                        // the database, in a proxy whose runtime waits for this drop:
                        // the metadata lock must not be waited for forever (the
                        // database is then left behind).
                        let _ = admin.query_drop("SET SESSION lock_wait_timeout = 5").await;
                        let _ = admin
                            .query_drop(format!("DROP DATABASE IF EXISTS {name}"))
                            .await;
                        let _ = admin.disconnect().await;
                    }
                });
            }
        })
        .join();
    }
}

/// A byte-level MySQL client for malformed-input tests.
pub struct RawMy {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// One packet: (sequence id, payload).
pub type Packet = (u8, Vec<u8>);

impl RawMy {
    pub async fn connect(addr: SocketAddr) -> RawMy {
        RawMy {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// The next packet, or `None` once the connection closed.
    pub async fn recv(&mut self) -> Option<Packet> {
        loop {
            if self.buf.len() >= 4 {
                let len = usize::from(self.buf[0])
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]) << 16;
                if self.buf.len() >= 4 + len {
                    let seq = self.buf[3];
                    let payload = self.buf[4..4 + len].to_vec();
                    self.buf.drain(..4 + len);
                    return Some((seq, payload));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                self.stream.read(&mut chunk),
            )
            .await
            .expect("the proxy answers within 10 s")
            .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Every packet until the connection closes.
    pub async fn recv_to_close(&mut self) -> Vec<Packet> {
        let mut packets = vec![];
        while let Some(p) = self.recv().await {
            packets.push(p);
        }
        packets
    }
}

/// A packet with `seq` around `payload`.
pub fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut p = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
    p.extend_from_slice(payload);
    p
}

/// The error code of an ERR packet's payload.
pub fn err_code(payload: &[u8]) -> Option<u16> {
    (payload.first() == Some(&0xff) && payload.len() >= 3)
        .then(|| u16::from_le_bytes([payload[1], payload[2]]))
}

/// A minimal HandshakeResponse41 for `user` with an empty password
/// (mysql_native_password), as the raw client's login.
pub fn login_packet(user: &str) -> Vec<u8> {
    login_packet_with(user, CLIENT_MULTI_STATEMENTS)
}

/// CLIENT_MULTI_STATEMENTS, which [`login_packet`] asks for.
pub const CLIENT_MULTI_STATEMENTS: u32 = 0x0001_0000;

/// As [`login_packet`], asking for the capabilities `extra` beside protocol 4.1,
/// secure connection, plugin auth, DEPRECATE_EOF and multi-results.
pub fn login_packet_with(user: &str, extra: u32) -> Vec<u8> {
    let caps: u32 = 0x0000_0200 | 0x0000_8000 | 0x0008_0000 | 0x0100_0000 | 0x0002_0000 | extra;
    let mut p = caps.to_le_bytes().to_vec();
    p.extend_from_slice(&(16u32 << 20).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    p.push(0);
    p.extend_from_slice(b"mysql_native_password\0");
    packet(1, &p)
}

/// A raw client logged in as the admin user (who must have no password), with the
/// greeting it got.
pub async fn raw_login(addr: SocketAddr) -> (RawMy, Vec<u8>) {
    let mut raw = RawMy::connect(addr).await;
    let (_, greeting) = raw.recv().await.expect("greeting");
    let user = admin_opts().user().unwrap_or("root").to_owned();
    raw.send(&login_packet(&user)).await;
    let (seq, ok) = raw.recv().await.expect("login reply");
    assert_eq!((seq, ok.first()), (2, Some(&0)), "login failed: {ok:?}");
    (raw, greeting)
}
