//! Table notices end to end: an in-process lockserver on 127.0.0.1:0, proxies'
//! phase-2 workers with a `TableLockView` (or raw `Phase2` streams where a test needs
//! a proxy that misbehaves), and registrations through `LockClient`.
//!
//! Also over the same harness: a caller whose pipelined registration waits for a lock
//! and who goes away meanwhile (a proxy killed mid-wait).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_lockserver::client::{
    BoxFuture, BranchHandler, BranchKind, BranchOutcome, ClientOptions, GlobalStatus, LockClient,
    LockKey, Phase2Work, Phase2Worker, TableLockView, WorkerOptions,
};
use tandem_lockserver::config::{Config, StoreConfig};
use tandem_lockserver::proto as pb;
use tokio::sync::{mpsc, oneshot};

const R: &str = "postgres://127.0.0.1:5432/tables";

fn key(table: &str, i: u32) -> LockKey {
    LockKey::new(R, table, [i.to_string()])
}

struct Server {
    addr: SocketAddr,
    client: LockClient,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<tandem_lockserver::Result<()>>,
    _dir: tempfile::TempDir,
}

/// Fast timers; `tune` adjusts the rest. The embedded store unless `tune` says otherwise.
async fn start(tune: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    start_in(dir, tune).await
}

async fn start_in(dir: tempfile::TempDir, tune: impl FnOnce(&mut Config)) -> Server {
    let mut c = Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        store: StoreConfig::Embedded {
            path: dir.path().join("data"),
            compact_bytes: 1 << 20,
        },
        tick_interval_ms: 20,
        table_heartbeat_ms: 100,
        table_lease_ms: 1_000,
        table_ack_timeout_ms: 5_000,
        ..Config::default()
    };
    c.phase2.poll_interval_ms = 10;
    c.phase2.retry_initial_ms = 20;
    tune(&mut c);
    let grpc = tokio::net::TcpListener::bind(c.grpc_listen).await.unwrap();
    let http = tokio::net::TcpListener::bind(c.http_listen).await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(tandem_lockserver::server::run(grpc, http, c, async move {
        let _ = stopped.await;
    }));
    let client =
        LockClient::connect_lazy(&format!("http://{addr}"), ClientOptions::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.lock_holder(&[key("t", 0)]).await.is_err() {
        assert!(Instant::now() < deadline, "lockserver not ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Server {
        addr,
        client,
        stop,
        task,
        _dir: dir,
    }
}

impl Server {
    /// Stops the lockserver; returns its data directory.
    async fn shutdown(self) -> tempfile::TempDir {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("lockserver did not stop")
            .unwrap()
            .unwrap();
        self._dir
    }

    async fn register(&self, table: &str, keys: &[u32]) -> tandem_lockserver::Result<u64> {
        let x = self.client.begin(None).await.unwrap();
        let keys: Vec<LockKey> = keys.iter().map(|i| key(table, *i)).collect();
        self.client
            .register_branch(&x, R, BranchKind::AT, &keys, Duration::ZERO)
            .await
    }
}

/// A registration of row `i` of `table` in a global transaction of its own, on its own
/// task.
fn spawn_registration(
    s: &Server,
    table: &'static str,
    i: u32,
) -> tokio::task::JoinHandle<tandem_lockserver::Result<u64>> {
    let client = s.client.clone();
    tokio::spawn(async move {
        let x = client.begin(None).await.unwrap();
        client
            .register_branch(&x, R, BranchKind::AT, &[key(table, i)], Duration::ZERO)
            .await
    })
}

struct Done;
impl BranchHandler for Done {
    fn commit(&self, _: Phase2Work) -> BoxFuture<'_, BranchOutcome> {
        Box::pin(async { BranchOutcome::Done })
    }
    fn rollback(&self, _: Phase2Work) -> BoxFuture<'_, BranchOutcome> {
        Box::pin(async { BranchOutcome::Done })
    }
}

/// A proxy's worker feeding `view`; returns once the view is trusted.
async fn proxy(s: &Server, view: Option<Arc<TableLockView>>) -> Phase2Worker {
    let opts = WorkerOptions {
        table_view: view.clone(),
        ..WorkerOptions::default()
    };
    let w = Phase2Worker::spawn(&s.client, vec![R.into()], Arc::new(Done), opts);
    eventually("the worker's view is trusted", || match &view {
        Some(v) => v.enter_unchecked(R, Some("nothing")).is_some(),
        None => w.is_connected(),
    })
    .await;
    w
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw table_locks subscriber: it acks only when told to.
struct RawSub {
    up: mpsc::Sender<pb::Phase2Up>,
    down: tonic::Streaming<pb::Phase2Down>,
}

async fn raw_sub(addr: SocketAddr, resources: &[&str]) -> RawSub {
    raw_sub_of(addr, resources, "").await
}

/// A raw subscriber that names its view `instance`.
async fn raw_sub_of(addr: SocketAddr, resources: &[&str], instance: &str) -> RawSub {
    let mut rpc = pb::coordinator_client::CoordinatorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (up, rx) = mpsc::channel(16);
    up.send(pb::Phase2Up {
        msg: Some(pb::phase2_up::Msg::Hello(pb::Hello {
            resource_ids: resources.iter().map(|r| r.to_string()).collect(),
            worker_name: "raw".into(),
            table_locks: true,
            instance: instance.into(),
        })),
    })
    .await
    .unwrap();
    let down = rpc
        .phase2(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    RawSub { up, down }
}

impl RawSub {
    /// The next table notices, skipping heartbeats.
    async fn notices(&mut self) -> Vec<pb::TableNotice> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), self.down.message())
                .await
                .expect("no table notice")
                .unwrap()
                .expect("stream ended");
            if !m.tables.is_empty() {
                return m.tables;
            }
        }
    }

    async fn ack(&self, seq: u64) {
        let msg = pb::phase2_up::Msg::TableAck(pb::TableAck {
            seq,
            seqs: Vec::new(),
        });
        self.up.send(pb::Phase2Up { msg: Some(msg) }).await.unwrap();
    }
}

/// A registration refused because an announcement went unacknowledged: a conflict
/// (Aborted), which the caller may retry.
fn unacknowledged(r: &tandem_lockserver::Result<u64>) -> bool {
    matches!(
        r,
        Err(e @ tandem_lockserver::Error::Rpc { code: tonic::Code::Aborted, message })
            if e.is_retryable() && message.contains("acknowledged")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_table_waits_for_the_proxy_and_its_unchecked_writes() {
    let s = start(|_| {}).await;
    let view = TableLockView::new(Duration::from_millis(800));
    let w = proxy(&s, Some(view.clone())).await;
    assert!(
        !view.may_be_locked(R, "public.t"),
        "snapshot: nothing locked"
    );

    // A write on the resource is running unchecked when the table is announced.
    let write = view
        .enter_unchecked(R, Some("public.t"))
        .expect("unchecked");
    let s = Arc::new(s);
    let reg = tokio::spawn({
        let s = s.clone();
        async move { s.register("public.t", &[1, 2]).await }
    });
    eventually("the notice reached the view", || {
        view.may_be_locked(R, "public.t")
    })
    .await;
    assert!(view.enter_unchecked(R, Some("public.t")).is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!reg.is_finished(), "answered before the proxy acked");
    assert_eq!(
        s.client.lock_holder(&[key("public.t", 1)]).await.unwrap(),
        None,
        "no lock before the ack"
    );
    let released = Instant::now();
    drop(write);
    reg.await.unwrap().expect("registered once acked");
    assert!(released.elapsed() < Duration::from_secs(2));
    assert!(s.client.locks_held(&[key("public.t", 2)]).await.unwrap());
    w.shutdown().await;
    Arc::into_inner(s).unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_table_does_not_wait_and_old_proxies_are_not_waited_for() {
    let s = start(|_| {}).await;
    // A proxy without a view (table_locks = false) is never waited for.
    let old = proxy(&s, None).await;
    let started = Instant::now();
    s.register("public.a", &[1]).await.unwrap();
    // Under table_ack_timeout_ms (2 s): a wait would have ended in an error anyway.
    assert!(started.elapsed() < Duration::from_millis(1_500));

    let view = TableLockView::new(Duration::from_millis(800));
    let w = proxy(&s, Some(view.clone())).await;
    assert!(view.may_be_locked(R, "public.a"), "in the snapshot");
    s.register("public.t", &[1]).await.unwrap();
    assert!(view.may_be_locked(R, "public.t"));
    // A write in flight on another table would hold up an announcement; it must
    // not hold up a registration on a table already announced.
    let _write = view
        .enter_unchecked(R, Some("public.u"))
        .expect("unchecked");
    let started = Instant::now();
    s.register("public.t", &[2, 3]).await.unwrap();
    s.register("public.a", &[2]).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "waited {:?}",
        started.elapsed()
    );
    w.shutdown().await;
    old.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_never_acks_fails_the_registration_without_locking() {
    // The idle timer, faster than the wait, leaves a table being announced alone.
    let s = start(|c| {
        c.table_ack_timeout_ms = 400;
        c.unannounce_after_ms = 100;
    })
    .await;
    let mut sub = raw_sub(s.addr, &[R]).await;
    let snap = sub.notices().await;
    assert_eq!(snap.len(), 1);
    assert!(snap[0].snapshot && snap[0].locked.is_empty() && snap[0].seq == 1);

    let started = Instant::now();
    let r = s.register("public.t", &[1]).await;
    assert!(unacknowledged(&r), "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(350));
    // The error names the proxy it waited for, for operators.
    let said = format!("{}", r.unwrap_err());
    assert!(
        said.contains("the acknowledgement of proxy \"raw\" at 127.0.0.1:"),
        "{said}"
    );
    assert_eq!(
        s.client.lock_holder(&[key("public.t", 1)]).await.unwrap(),
        None
    );

    let n = sub.notices().await;
    assert_eq!(n.len(), 1);
    assert_eq!(
        (n[0].seq, n[0].locked.clone()),
        (2, vec!["public.t".to_string()])
    );
    // Still not acked: the table stays announced, and a retry waits again.
    assert!(unacknowledged(&s.register("public.t", &[1]).await));
    sub.ack(n[0].seq).await;
    // Granted, not failed: it did not wait out table_ack_timeout_ms.
    s.register("public.t", &[1])
        .await
        .expect("taken once acked");
    assert!(s.client.locks_held(&[key("public.t", 1)]).await.unwrap());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_table_is_unannounced() {
    let unannounce_after = Duration::from_millis(1_000);
    let s = start(|c| c.unannounce_after_ms = unannounce_after.as_millis() as u64).await;
    let view = TableLockView::new(Duration::from_millis(800));
    let w = proxy(&s, Some(view.clone())).await;
    let x = s.client.begin(None).await.unwrap();
    s.client
        .register_branch(&x, R, BranchKind::AT, &[key("public.t", 1)], Duration::ZERO)
        .await
        .unwrap();
    // Held longer than unannounce_after_ms: still announced.
    tokio::time::sleep(unannounce_after + Duration::from_millis(300)).await;
    assert!(view.may_be_locked(R, "public.t"));
    let locks_may_go_from = Instant::now();
    s.client.commit(&x).await.unwrap();
    let announced = view.may_be_locked(R, "public.t");
    // On a loaded machine the commit itself may outlast the window; only a check
    // made inside it can tell an early unannouncement from a late one.
    if locks_may_go_from.elapsed() < unannounce_after {
        assert!(announced, "not unannounced the moment its locks go");
    }
    eventually("the table is unannounced", || {
        !view.may_be_locked(R, "public.t")
    })
    .await;
    assert!(view.enter_unchecked(R, None).is_some(), "nothing announced");
    // Announced again on the next registration.
    s.register("public.t", &[2]).await.unwrap();
    assert!(view.may_be_locked(R, "public.t"));
    w.shutdown().await;
    s.shutdown().await;
}

/// A proxy about to run a write it can judge only by its tables asks the lockserver
/// to let go of those holding no lock, rather than wait out `unannounce_after_ms`:
/// only they are unannounced, and an unchecked write then holds up the next
/// announcement as on any table never announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_holding_no_lock_is_let_go_when_a_proxy_asks() {
    let s = start(|c| {
        c.unannounce_after_ms = 600_000;
        c.release_after_idle_ms = 1_500;
    })
    .await;
    let view = TableLockView::new(Duration::from_millis(800));
    let w = proxy(&s, Some(view.clone())).await;
    let x = s.client.begin(None).await.unwrap();
    s.client
        .register_branch(&x, R, BranchKind::AT, &[key("public.t", 1)], Duration::ZERO)
        .await
        .unwrap();
    s.register("public.u", &[1]).await.unwrap();
    assert_eq!(view.announced(R, None).len(), 2);
    assert_eq!(view.announced(R, Some("T")), vec!["public.t".to_owned()]);
    let in_use = s
        .client
        .release_idle_tables(R, &["public.t", "public.u"])
        .await
        .unwrap();
    assert_eq!(in_use, ["public.t", "public.u"], "both hold a lock");

    s.client.commit(&x).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.client.locks_held(&[key("public.t", 1)]).await.unwrap() {
        assert!(Instant::now() < deadline, "the commit's locks stay");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(view.may_be_locked(R, "public.t"), "still announced");
    let in_use = s
        .client
        .release_idle_tables(R, &["public.t"])
        .await
        .unwrap();
    assert_eq!(
        in_use,
        ["public.t"],
        "used lately: stays for its next registration"
    );
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let in_use = s
        .client
        .release_idle_tables(R, &["public.t", "public.u", "public.never"])
        .await
        .unwrap();
    assert_eq!(in_use, ["public.u"], "only the table holding a lock stays");
    eventually("the view lets public.t go", || {
        !view.may_be_locked(R, "public.t")
    })
    .await;
    assert!(view.may_be_locked(R, "public.u"));

    // A write let through unchecked now holds up public.t's next announcement, which
    // is not let go while it waits for the acknowledgement.
    let unchecked = view.enter_unchecked(R, Some("public.t")).unwrap();
    let registering = spawn_registration(&s, "public.t", 2);
    eventually("public.t is announced again", || {
        view.may_be_locked(R, "public.t")
    })
    .await;
    let in_use = s
        .client
        .release_idle_tables(R, &["public.t"])
        .await
        .unwrap();
    assert_eq!(in_use, ["public.t"], "being announced");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!registering.is_finished(), "waits for the unchecked write");
    drop(unchecked);
    registering.await.unwrap().unwrap();
    assert!(s.client.locks_held(&[key("public.t", 2)]).await.unwrap());
    w.shutdown().await;
    s.shutdown().await;
}

/// A stream replaced while its acknowledgement waits for an unchecked write (the proxy
/// serves one more database, say, and restarts its stream): the new stream's snapshot
/// is not acknowledged before that write ends either, so the table's first lock still
/// waits for it. The aborted drain had moved its epoch on without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_replaced_while_its_ack_waits_still_waits_for_the_unchecked_write() {
    let s = start(|_| {}).await;
    let view = TableLockView::new(Duration::from_millis(800));
    let first = proxy(&s, Some(view.clone())).await;
    let unchecked = view.enter_unchecked(R, Some("public.t")).unwrap();
    let registering = spawn_registration(&s, "public.t", 1);
    eventually("public.t is announced", || {
        view.may_be_locked(R, "public.t")
    })
    .await;
    let opts = WorkerOptions {
        table_view: Some(view.clone()),
        ..WorkerOptions::default()
    };
    let second = Phase2Worker::spawn(&s.client, vec![R.into()], Arc::new(Done), opts);
    first.shutdown().await;
    eventually("the second stream is up", || second.is_connected()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !registering.is_finished(),
        "granted while the unchecked write ran: {registering:?}"
    );
    drop(unchecked);
    registering.await.unwrap().unwrap();
    assert!(s.client.locks_held(&[key("public.t", 1)]).await.unwrap());
    second.shutdown().await;
    s.shutdown().await;
}

/// A proxy serving two databases: an unchecked write in one holds up the
/// acknowledgement of a table announced there, not that of a table of the other,
/// whose first lock is granted at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_holding_up_one_databases_announcement_does_not_hold_up_anothers() {
    const OTHER: &str = "postgres://127.0.0.1:5432/other_tables";
    let s = start(|_| {}).await;
    let view = TableLockView::new(Duration::from_millis(800));
    let opts = WorkerOptions {
        table_view: Some(view.clone()),
        ..WorkerOptions::default()
    };
    let w = Phase2Worker::spawn(
        &s.client,
        vec![R.into(), OTHER.into()],
        Arc::new(Done),
        opts,
    );
    eventually("the view is trusted", || {
        view.enter_unchecked(R, Some("nothing")).is_some()
            && view.enter_unchecked(OTHER, Some("nothing")).is_some()
    })
    .await;
    let unchecked = view.enter_unchecked(R, Some("public.t")).unwrap();
    let held_up = spawn_registration(&s, "public.t", 1);
    eventually("public.t is announced", || {
        view.may_be_locked(R, "public.t")
    })
    .await;
    let started = Instant::now();
    let x = s.client.begin(None).await.unwrap();
    let other = [LockKey::new(OTHER, "public.u", ["1"])];
    s.client
        .register_branch(&x, OTHER, BranchKind::AT, &other, Duration::ZERO)
        .await
        .expect("the other database's table is not held up");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!held_up.is_finished(), "waits for the unchecked write");
    drop(unchecked);
    held_up.await.unwrap().unwrap();
    w.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_recovered_at_start_are_announced() {
    let s = start(|_| {}).await;
    s.register("public.held", &[1]).await.unwrap();
    let x = s.client.begin(None).await.unwrap();
    s.client
        .register_branch(
            &x,
            R,
            BranchKind::AT,
            &[key("public.done", 1)],
            Duration::ZERO,
        )
        .await
        .unwrap();
    s.client.commit(&x).await.unwrap();
    let dir = s.shutdown().await;
    let s = start_in(dir, |_| {}).await;
    let mut sub = raw_sub(s.addr, &[R]).await;
    let snap = sub.notices().await;
    assert!(snap[0].snapshot);
    assert_eq!(
        snap[0].locked,
        vec!["public.held".to_string()],
        "only tables holding locks"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_proxy_delays_announcements_until_its_lease_passes() {
    let s = start(|c| {
        c.table_lease_ms = 1_000;
        c.table_heartbeat_ms = 100;
    })
    .await;
    let mut sub = raw_sub(s.addr, &[R]).await;
    sub.notices().await;
    let closed = Instant::now();
    drop(sub);
    // Another resource has no closed subscriber: no wait there.
    let x = s.client.begin(None).await.unwrap();
    let other = LockKey::new("postgres://127.0.0.1:5432/other", "public.t", ["1"]);
    s.client
        .register_branch(
            &x,
            "postgres://127.0.0.1:5432/other",
            BranchKind::AT,
            &[other],
            Duration::ZERO,
        )
        .await
        .unwrap();
    // Bounded by the lease itself, not a guess at how fast a loaded machine is.
    assert!(closed.elapsed() < Duration::from_millis(1_000));
    s.register("public.t", &[1]).await.unwrap();
    let waited = closed.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_millis(3_000), "waited {waited:?}");
    // Past the lease: a new table is announced at once.
    let started = Instant::now();
    s.register("public.u", &[1]).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(1_000));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_replaced_by_its_own_view_does_not_delay_announcements() {
    let s = start(|c| {
        c.table_lease_ms = 3_000;
        c.table_heartbeat_ms = 100;
    })
    .await;
    // The proxy replaces its stream (a new resource to serve): same view instance.
    let mut old = raw_sub_of(s.addr, &[R], "view-a").await;
    old.notices().await;
    old.ack(1).await;
    let mut new = raw_sub_of(s.addr, &[R, "other"], "view-a").await;
    drop(old);
    // A closed stream of another view still delays, until the new stream of view-a
    // acked its snapshot it is not superseded either.
    let started = Instant::now();
    let register = tokio::spawn({
        let client = s.client.clone();
        async move {
            let x = client.begin(None).await.unwrap();
            let key = LockKey::new(R, "public.t", ["1"]);
            client
                .register_branch(&x, R, BranchKind::AT, &[key], Duration::ZERO)
                .await
        }
    });
    let snapshot = new.notices().await;
    assert_eq!(snapshot.len(), 2, "{snapshot:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !register.is_finished(),
        "granted before the new stream acked"
    );
    new.ack(2).await;
    // The announcement of public.t reaches the new stream; its ack releases it.
    let notice = new.notices().await;
    assert_eq!(notice[0].locked, vec!["public.t".to_owned()], "{notice:?}");
    new.ack(notice[0].seq).await;
    register
        .await
        .unwrap()
        .expect("granted without waiting out the lease");
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "waited {:?}",
        started.elapsed()
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_every_table_is_unknown_and_nothing_waits() {
    let url =
        std::env::var("TANDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("tandem-tables:{:016x}", rand::random::<u64>());
    let s = start(|c| {
        c.store = StoreConfig::Redis { url, prefix };
        c.table_ack_timeout_ms = 5_000;
    })
    .await;
    let mut sub = raw_sub(s.addr, &[R, "other"]).await;
    let n = sub.notices().await;
    assert_eq!(n.len(), 2, "{n:?}");
    assert!(
        n.iter()
            .all(|n| n.unknown && !n.snapshot && n.locked.is_empty())
    );
    let view = TableLockView::new(Duration::from_millis(800));
    let opts = WorkerOptions {
        table_view: Some(view.clone()),
        ..WorkerOptions::default()
    };
    let w = Phase2Worker::spawn(&s.client, vec![R.into()], Arc::new(Done), opts);
    eventually("the worker connected", || w.is_connected()).await;
    // The raw subscriber never acks; registrations do not wait for it.
    let started = Instant::now();
    s.register("public.t", &[1]).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(1_000));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        view.enter_unchecked(R, Some("public.u")).is_none(),
        "unknown: check everything"
    );
    assert!(view.may_be_locked(R, "public.u"));
    w.shutdown().await;
    s.shutdown().await;
}

/// A proxy killed while its branch's registration waits for a lock: the registration
/// must not be granted once the holder lets go, or the branch (whose local
/// transaction died with the proxy) would hold locks, and a global commit answer
/// Committed without it. Over the embedded store's batch path and Redis's per-call one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_caller_went_away_is_not_granted() {
    for redis in [false, true] {
        let s = start(|c| {
            if redis {
                let url = std::env::var("TANDEM_TEST_REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
                let prefix = format!("tandem-gone:{:016x}", rand::random::<u64>());
                c.store = StoreConfig::Redis { url, prefix };
            }
        })
        .await;
        let held = key("public.t", 8);
        let holder = s.client.begin(None).await.unwrap();
        s.client
            .register_branch(
                &holder,
                R,
                BranchKind::AT,
                std::slice::from_ref(&held),
                Duration::ZERO,
            )
            .await
            .unwrap();
        let waiter = s.client.begin(None).await.unwrap();
        let mut rpc =
            pb::coordinator_client::CoordinatorClient::connect(format!("http://{}", s.addr))
                .await
                .unwrap();
        let (calls, rx) = mpsc::channel(4);
        calls
            .send(pb::Calls {
                calls: vec![pb::Call {
                    id: 1,
                    op: Some(pb::call::Op::Register(pb::RegisterRequest {
                        xid: waiter.to_string(),
                        resource_id: R.into(),
                        branch_type: pb::BranchType::At as i32,
                        lock_keys: vec![held.as_str().to_owned()],
                        wait_ms: 10_000,
                        token: 7,
                    })),
                }],
            })
            .await
            .unwrap();
        let answers = rpc
            .pipeline(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        // The registration is waiting; then the caller's connection closes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop((answers, calls, rpc));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            s.client.commit(&holder).await.unwrap(),
            GlobalStatus::Committed,
            "redis: {redis}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            s.client
                .lock_holder(std::slice::from_ref(&held))
                .await
                .unwrap(),
            None,
            "redis: {redis}: granted to a caller that went away"
        );
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stream_is_superseded_only_by_a_newer_one_of_its_view() {
    let s = start(|c| {
        c.table_lease_ms = 1_000;
        c.table_heartbeat_ms = 100;
    })
    .await;
    // An older stream of view-a, live and caught up, and a newer one that closes.
    let mut older = raw_sub_of(s.addr, &[R], "view-a").await;
    older.notices().await;
    older.ack(1).await;
    let mut newer = raw_sub_of(s.addr, &[R, "other"], "view-a").await;
    newer.notices().await;
    newer.ack(2).await;
    let closed = Instant::now();
    drop(newer);
    // The view may follow the newer stream's snapshot, which the older stream's acks
    // say nothing of: its lease is waited out.
    let register = spawn_registration(&s, "t", 1);
    let notice = older.notices().await;
    older.ack(notice[0].seq).await;
    register.await.unwrap().expect("granted after the lease");
    let waited = closed.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "waited only {waited:?}"
    );
    s.shutdown().await;
}
