//! Crash recovery with the real binary: kill -9 during load, restart, and find every
//! acknowledged transaction, branch and lock again (embedded store); and two
//! lockservers sharing one Redis, one killed mid-way, the other taking over.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_lockserver::client::{
    BoxFuture, BranchHandler, BranchKind, BranchOutcome, ClientOptions, GlobalStatus, LockClient,
    LockKey, Phase2Work, Phase2Worker, WorkerOptions, Xid,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const R: &str = "postgres://127.0.0.1:5432/crash";

fn key(i: u32) -> LockKey {
    LockKey::new(R, "public.t", [i.to_string()])
}

struct Proc {
    child: Child,
    client: LockClient,
    grpc: String,
}

/// Starts the binary with `config` and waits until it prints its addresses.
async fn spawn(dir: &Path, name: &str, config: &str) -> Proc {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-lockserver"))
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let grpc = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(a) = l.strip_prefix("grpc_listen=") {
                return a.to_string();
            }
        }
        panic!("lockserver exited before listening");
    })
    .await
    .expect("lockserver did not start");
    let client =
        LockClient::connect_lazy(&format!("http://{grpc}"), ClientOptions::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.lock_holder(&[key(0)]).await.is_err() {
        assert!(Instant::now() < deadline, "lockserver not ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Proc {
        child,
        client,
        grpc,
    }
}

impl Proc {
    async fn kill9(mut self) {
        self.child.start_kill().unwrap(); // SIGKILL
        self.child.wait().await.unwrap();
    }
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Answers every item; or never answers (a proxy that hangs) when `hang`.
struct Handler {
    hang: bool,
    seen: Mutex<Vec<(bool, String, u64)>>,
}
impl Handler {
    fn new(hang: bool) -> Arc<Self> {
        Arc::new(Handler {
            hang,
            seen: Mutex::new(vec![]),
        })
    }
    fn go(&self, commit: bool, w: Phase2Work) -> BoxFuture<'_, BranchOutcome> {
        self.seen
            .lock()
            .unwrap()
            .push((commit, w.xid.to_string(), w.branch_id));
        let hang = self.hang;
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            BranchOutcome::Done
        })
    }
}
impl BranchHandler for Handler {
    fn commit(&self, w: Phase2Work) -> BoxFuture<'_, BranchOutcome> {
        self.go(true, w)
    }
    fn rollback(&self, w: Phase2Work) -> BoxFuture<'_, BranchOutcome> {
        self.go(false, w)
    }
}

const FAST: &str = r#"
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
tick_interval_ms = 20
rollback_wait_ms = 100
[phase2]
retry_initial_ms = 20
retry_max_ms = 200
ack_timeout_ms = 500
poll_interval_ms = 10
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_kill9_loses_no_acknowledged_state() {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "{FAST}[store]\nkind = \"embedded\"\npath = {:?}\ncompact_bytes = 65536\n",
        tmp.path().join("data")
    );
    let s1 = spawn(tmp.path(), "s1", &config).await;
    let c = s1.client.clone();
    let mut xs = Vec::new();
    for i in 0..30u32 {
        let x = c.begin(Some(Duration::from_secs(120))).await.unwrap();
        c.register_branch(&x, R, BranchKind::AT, &[key(i * 2)], Duration::ZERO)
            .await
            .unwrap();
        let xa = c
            .register_branch(&x, R, BranchKind::XA, &[key(i * 2 + 1)], Duration::ZERO)
            .await
            .unwrap();
        // An XA branch reports its prepare before its transaction may commit.
        c.report(&x, xa, true).await.unwrap();
        xs.push(x);
    }
    for x in &xs[..10] {
        assert_eq!(c.commit(x).await.unwrap(), GlobalStatus::Committed);
    }
    for x in &xs[10..20] {
        // No proxy serves R: the rollback is owed. It reads Rollbacking until a
        // dispatch pass finds no stream for it, which a loaded machine may not run
        // within rollback_wait_ms.
        let status = c.rollback(x).await.unwrap();
        assert!(
            matches!(
                status,
                GlobalStatus::Rollbacking | GlobalStatus::RollbackRetrying
            ),
            "{status:?}"
        );
    }
    eventually("every rollback owed and retrying", async || {
        let mut retrying = true;
        for x in &xs[10..20] {
            retrying &= c.status(x).await.unwrap() == GlobalStatus::RollbackRetrying;
        }
        retrying
    })
    .await;
    // Load in flight at the moment of the kill: every acknowledged registration must survive.
    let acked: Arc<Mutex<Vec<(Xid, u32)>>> = Arc::default();
    let mut load = Vec::new();
    for t in 0..8u32 {
        let (c, acked) = (c.clone(), acked.clone());
        load.push(tokio::spawn(async move {
            for i in 0.. {
                let k = 100_000 + t * 100_000 + i;
                let Ok(x) = c.begin(Some(Duration::from_secs(120))).await else {
                    return;
                };
                if c.register_branch(&x, R, BranchKind::AT, &[key(k)], Duration::ZERO)
                    .await
                    .is_err()
                {
                    return;
                }
                acked.lock().unwrap().push((x, k));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    s1.kill9().await;
    for l in load {
        l.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "the load made progress before the kill ({})",
        acked.len()
    );

    let s2 = spawn(tmp.path(), "s2", &config).await;
    let c = s2.client.clone();
    for (i, x) in xs.iter().enumerate() {
        let want = match i {
            0..10 => GlobalStatus::AsyncCommitting,
            10..20 => GlobalStatus::RollbackRetrying,
            _ => GlobalStatus::Begin,
        };
        assert_eq!(c.status(x).await.unwrap(), want, "{x}");
        let holder = c
            .lock_holder(&[key(i as u32 * 2 + 1)])
            .await
            .unwrap()
            .map(|h| h.1);
        assert_eq!(holder, (i >= 10).then(|| x.clone()), "lock of {x}");
    }
    for (x, k) in &acked {
        assert_eq!(
            c.lock_holder(&[key(*k)])
                .await
                .unwrap()
                .map(|h| h.1)
                .as_ref(),
            Some(x),
            "acknowledged registration lost"
        );
    }
    let fresh = c.begin(None).await.unwrap();
    assert!(
        xs.iter()
            .chain(acked.iter().map(|a| &a.0))
            .all(|x| *x != fresh),
        "xids unique across restarts"
    );
    // Recovery work resumes: a proxy connects and every owed phase-2 item completes.
    let h = Handler::new(false);
    let w = Phase2Worker::spawn(&c, vec![R.into()], h.clone(), WorkerOptions::default());
    eventually("phase 2 finished after restart", async || {
        let mut done = true;
        for x in &xs[..20] {
            let s = c.status(x).await.unwrap();
            done &= s == GlobalStatus::Committed || s == GlobalStatus::Rollbacked;
        }
        done
    })
    .await;
    assert!(
        !c.locks_held(&[key(21), key(39)]).await.unwrap(),
        "rolled-back locks released"
    );
    w.shutdown().await;
    s2.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lockservers_on_one_redis_survive_one_kill() {
    let url =
        std::env::var("TANDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("tandem-crash:{:016x}", rand::random::<u64>());
    let tmp = tempfile::tempdir().unwrap();
    let config = format!("{FAST}[store]\nkind = \"redis\"\nurl = {url:?}\nprefix = {prefix:?}\n");
    let a = spawn(tmp.path(), "a", &config).await;
    let b = spawn(tmp.path(), "b", &config).await;
    let (ca, cb) = (a.client.clone(), b.client.clone());

    // Both serve the same transactions.
    let x = ca.begin(None).await.unwrap();
    cb.register_branch(&x, R, BranchKind::AT, &[key(1)], Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        ca.lock_holder(&[key(1)]).await.unwrap().map(|h| h.1),
        Some(x.clone())
    );
    let other = cb.begin(None).await.unwrap();
    assert!(
        ca.register_branch(&other, R, BranchKind::AT, &[key(1)], Duration::ZERO)
            .await
            .is_err(),
        "conflict seen across servers"
    );
    // A takes rollback work for z and hands it to a proxy that hangs; y will time out.
    let hung = Handler::new(true);
    let wa = Phase2Worker::spawn(&ca, vec![R.into()], hung.clone(), WorkerOptions::default());
    eventually("hung worker connected", async || wa.is_connected()).await;
    let z = ca.begin(None).await.unwrap();
    ca.register_branch(&z, R, BranchKind::AT, &[key(2)], Duration::ZERO)
        .await
        .unwrap();
    let y = ca.begin(Some(Duration::from_millis(1500))).await.unwrap();
    ca.register_branch(&y, R, BranchKind::AT, &[key(3)], Duration::ZERO)
        .await
        .unwrap();
    let _ = ca.rollback(&z).await.unwrap();
    eventually("A delivered z's rollback", async || {
        !hung.seen.lock().unwrap().is_empty()
    })
    .await;
    // A dies with z's rollback in flight and y's timeout ahead.
    a.kill9().await;
    wa.shutdown().await;

    let h = Handler::new(false);
    let wb = Phase2Worker::spawn(&cb, vec![R.into()], h.clone(), WorkerOptions::default());
    assert_eq!(cb.commit(&x).await.unwrap(), GlobalStatus::Committed);
    eventually(
        "B finishes A's rollback, times out y, cleans up x",
        async || {
            cb.status(&z).await.unwrap() == GlobalStatus::Rollbacked
                && cb.status(&y).await.unwrap() == GlobalStatus::TimeoutRollbacked
                && cb.status(&x).await.unwrap() == GlobalStatus::Committed
        },
    )
    .await;
    assert!(!cb.locks_held(&[key(1), key(2), key(3)]).await.unwrap());
    let seen = h.seen.lock().unwrap().clone();
    assert!(
        seen.contains(&(false, z.to_string(), 1))
            && seen.contains(&(false, y.to_string(), 1))
            && seen.contains(&(true, x.to_string(), 1))
    );
    wb.shutdown().await;
    b.kill9().await;
}

/// A TCP relay to `to`, standing in for the network between a lockserver and Redis.
struct Relay {
    addr: std::net::SocketAddr,
    accept: tokio::task::JoinHandle<()>,
    pipes: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(at: &str, to: String) -> Relay {
        let listener = tokio::net::TcpListener::bind(at).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pipes: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let kept = Arc::clone(&pipes);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = to.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                kept.lock().unwrap().push(pipe);
            }
        });
        Relay {
            addr,
            accept,
            pipes,
        }
    }

    /// Redis is gone: open connections drop, new ones are refused.
    fn cut(self) {
        self.accept.abort();
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }
}

/// The Redis connection's own response timeout does not cover the wait for its
/// reconnection: a lockserver whose Redis went away left calls unanswered for over a
/// minute. Each call now fails within the store's bound, and Redis is used again as
/// soon as it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockserver_that_loses_redis_fails_calls_promptly_and_recovers() {
    let url =
        std::env::var("TANDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let relay = Relay::start("127.0.0.1:0", redis.clone()).await;
    let addr = relay.addr;
    let prefix = format!("tandem-cut:{:016x}", rand::random::<u64>());
    let tmp = tempfile::tempdir().unwrap();
    let config =
        format!("{FAST}[store]\nkind = \"redis\"\nurl = \"redis://{addr}\"\nprefix = {prefix:?}\n");
    let s = spawn(tmp.path(), "cut", &config).await;
    let patient = LockClient::connect_lazy(
        &format!("http://{}", s.grpc),
        ClientOptions {
            call_timeout: Duration::from_secs(120),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    patient.begin(None).await.unwrap();

    relay.cut();
    for _ in 0..2 {
        let asked = Instant::now();
        assert!(patient.begin(None).await.is_err());
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "a call waited {:?} for a Redis that is gone",
            asked.elapsed()
        );
    }

    let _back = Relay::start(&addr.to_string(), redis).await;
    eventually("calls succeed once Redis is back", async || {
        patient.begin(None).await.is_ok()
    })
    .await;
    s.kill9().await;
}

/// SIGHUP (a PgBouncer operator's reload) neither ends the process nor loses anything:
/// it goes on answering, and SIGTERM still ends it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_ignored_and_sigterm_still_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "{FAST}[store]\nkind = \"embedded\"\npath = {:?}\n",
        tmp.path().join("data")
    );
    let mut s = spawn(tmp.path(), "hup", &config).await;
    let x = s.client.begin(None).await.unwrap();
    let signal = |name: &str, pid: u32| {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let pid = s.child.id().unwrap();
    signal("HUP", pid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the process"
    );
    assert_eq!(s.client.status(&x).await.unwrap(), GlobalStatus::Begin);
    signal("TERM", pid);
    let exit = tokio::time::timeout(Duration::from_secs(10), s.child.wait())
        .await
        .expect("SIGTERM did not stop it")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
