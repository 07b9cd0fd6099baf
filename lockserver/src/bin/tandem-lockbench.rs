//! `tandem-lockbench`: load generator for the lockserver over its real gRPC API.
//!
//! Each worker loops: begin → register `--branches` branches of `--keys` fresh lock
//! keys each → commit (which releases every key), while a phase-2 worker on the same
//! connection answers the commit clean-up. Reports registrations/s, globals/s and
//! p50/p99 latencies. `bench/lockserver.sh` runs it against both stores.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

/// mimalloc instead of glibc malloc: the hot path allocates and frees many small
/// objects across threads (request messages, keys, oneshots), and glibc's arena
/// locking and consolidation took ~20% of the server's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tandem_lockserver::client::{
    BoxFuture, BranchHandler, BranchKind, BranchOutcome, ClientOptions, LockClient, LockKey,
    Phase2Work, Phase2Worker, WorkerOptions,
};

#[derive(Parser)]
#[command(about = "Load generator for the tandem lockserver (gRPC)")]
struct Args {
    /// Lockserver gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8091")]
    endpoint: String,
    /// Seconds to run (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent transactions in flight.
    #[arg(long, alias = "conc", default_value_t = 256)]
    concurrency: usize,
    /// gRPC connections (HTTP/2 channels) to spread them over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Branches registered per global transaction.
    #[arg(long, default_value_t = 1)]
    branches: usize,
    /// Lock keys per branch.
    #[arg(long, default_value_t = 10)]
    keys: usize,
    /// Runtime threads of the load generator over gRPC (1: a single-threaded
    /// runtime; 0: one per core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also print p50/p90/p99 and mean latency of each operation (begin, register,
    /// commit) on its own line: the per-call view, for low concurrency (`--conc 1`).
    #[arg(long)]
    report_ops: bool,
    /// Label printed with the results.
    #[arg(long, default_value = "lockserver")]
    label: String,
    /// Skip the network: drive an embedded store in this directory directly
    /// (`Store::apply`, same commands), to show the store's own ceiling.
    #[arg(long)]
    in_process: Option<std::path::PathBuf>,
}

const RESOURCE: &str = "bench://127.0.0.1/bench";

struct Ack;
impl BranchHandler for Ack {
    fn commit(&self, _: Phase2Work) -> BoxFuture<'_, BranchOutcome> {
        Box::pin(async { BranchOutcome::Done })
    }
    fn rollback(&self, _: Phase2Work) -> BoxFuture<'_, BranchOutcome> {
        Box::pin(async { BranchOutcome::Done })
    }
}

#[derive(Default)]
struct Lat {
    begin: Vec<u32>,
    register: Vec<u32>,
    commit: Vec<u32>,
    cycle: Vec<u32>,
}

fn pct(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

/// `op p50 … p90 … p99 … mean … ms (n)` for one operation's latencies (µs).
fn op_line(op: &str, v: &mut [u32]) -> String {
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64 / 1000.0;
    format!(
        "{op:<8} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  mean {:.3} ms  (n={})",
        pct(v, 0.5),
        pct(v, 0.9),
        pct(v, 0.99),
        mean,
        v.len()
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    // The load generator shares the machine with the server: by default it runs on
    // one thread (no work stealing, no cross-thread wake-ups), which costs about a
    // third less CPU per transaction than a multi-threaded runtime. The in-process
    // mode measures the store itself, so it keeps every core.
    let rt = if a.threads <= 1 && a.in_process.is_none() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if a.threads > 0 {
            b.worker_threads(a.threads);
        }
        b.enable_all().build()?
    };
    rt.block_on(run(a))
}

async fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = &a.in_process {
        return in_process(&a, dir).await;
    }
    let opts = ClientOptions {
        call_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let clients: Vec<LockClient> = (0..a.connections.max(1))
        .map(|_| LockClient::connect_lazy(&a.endpoint, opts.clone()))
        .collect::<Result<_, _>>()?;
    let workers: Vec<Phase2Worker> = clients
        .iter()
        .map(|c| {
            Phase2Worker::spawn(
                c,
                vec![RESOURCE.into()],
                Arc::new(Ack),
                WorkerOptions {
                    concurrency: 4096,
                    ..Default::default()
                },
            )
        })
        .collect();
    let run_id: u64 = rand::random::<u32>() as u64;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (regs, globals, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();
    for t in 0..a.concurrency {
        let c = clients[t % clients.len()].clone();
        let (measuring, stop, regs, globals, errors) = (
            measuring.clone(),
            stop.clone(),
            regs.clone(),
            globals.clone(),
            errors.clone(),
        );
        let (branches, nkeys) = (a.branches, a.keys);
        tasks.push(tokio::spawn(async move {
            let mut lat = Lat::default();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let xid = match c.begin(None).await {
                    Ok(x) => {
                        if measuring.load(Ordering::Relaxed) {
                            lat.begin.push(start.elapsed().as_micros() as u32);
                        }
                        x
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("begin failed: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let mut ok = true;
                for _ in 0..branches {
                    n += 1;
                    let keys: Vec<LockKey> = (0..nkeys)
                        .map(|k| LockKey::new(RESOURCE, "bench", [format!("{run_id}-{t}-{n}-{k}")]))
                        .collect();
                    let s = Instant::now();
                    if c.register_branch(&xid, RESOURCE, BranchKind::AT, &keys, Duration::ZERO)
                        .await
                        .is_err()
                    {
                        ok = false;
                        break;
                    }
                    if measuring.load(Ordering::Relaxed) {
                        lat.register.push(s.elapsed().as_micros() as u32);
                        regs.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let s = Instant::now();
                if let Err(e) = c.commit(&xid).await {
                    if errors.load(Ordering::Relaxed) < 3 {
                        eprintln!("commit failed: {e}");
                    }
                    ok = false;
                }
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                } else if measuring.load(Ordering::Relaxed) {
                    lat.commit.push(s.elapsed().as_micros() as u32);
                    lat.cycle.push(start.elapsed().as_micros() as u32);
                    globals.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all = Lat::default();
    for t in tasks {
        let l = t.await?;
        all.begin.extend(l.begin);
        all.register.extend(l.register);
        all.commit.extend(l.commit);
        all.cycle.extend(l.cycle);
    }
    for w in workers {
        w.shutdown().await;
    }
    let (r, g) = (
        regs.load(Ordering::Relaxed) as f64,
        globals.load(Ordering::Relaxed) as f64,
    );
    println!(
        "{}: {:.0} registrations/s ({} keys each, released at commit), {:.0} globals/s, errors {} | register p50 {:.2} ms p99 {:.2} ms | commit p50 {:.2} ms p99 {:.2} ms | cycle p50 {:.2} ms p99 {:.2} ms | concurrency {} connections {} branches/global {} bench threads {}",
        a.label,
        r / elapsed,
        a.keys,
        g / elapsed,
        errors.load(Ordering::Relaxed),
        pct(&mut all.register, 0.5),
        pct(&mut all.register, 0.99),
        pct(&mut all.commit, 0.5),
        pct(&mut all.commit, 0.99),
        pct(&mut all.cycle, 0.5),
        pct(&mut all.cycle, 0.99),
        a.concurrency,
        a.connections,
        a.branches,
        a.threads,
    );
    if a.report_ops {
        for (op, v) in [
            ("begin", &mut all.begin),
            ("register", &mut all.register),
            ("commit", &mut all.commit),
            ("cycle", &mut all.cycle),
        ] {
            println!("{}: {}", a.label, op_line(op, v));
        }
    }
    Ok(())
}

/// The same transaction loop against `EmbeddedStore::apply`, phase-2 answered inline.
async fn in_process(a: &Args, dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use tandem_lockserver::core::clock::{Clock, SystemClock};
    use tandem_lockserver::core::txn::{Command, Limits, Phase2Outcome, Xid};
    use tandem_lockserver::store::Store;
    use tandem_lockserver::store::embedded::EmbeddedStore;
    let store = Arc::new(EmbeddedStore::open(dir, Limits::default(), 64 << 20)?);
    let node = format!("{:08x}", rand::random::<u32>());
    let stop = Arc::new(AtomicBool::new(false));
    let regs = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..a.concurrency {
        let (store, stop, regs, node) = (store.clone(), stop.clone(), regs.clone(), node.clone());
        let (branches, nkeys) = (a.branches, a.keys);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let xid = Xid::new(&node, (t as u64) << 32 | n);
                let now = SystemClock.now();
                store
                    .apply(
                        Command::Begin {
                            xid: xid.clone(),
                            timeout_ms: 60_000,
                        },
                        now,
                    )
                    .await?;
                for b in 0..branches {
                    let keys = (0..nkeys)
                        .map(|k| LockKey::new(RESOURCE, "bench", [format!("{xid}-{b}-{k}")]))
                        .collect();
                    let s = Instant::now();
                    let cmd = Command::Register {
                        xid: xid.clone(),
                        resource: RESOURCE.into(),
                        kind: BranchKind::AT,
                        keys,
                        token: None,
                    };
                    store.apply(cmd, now).await?;
                    lat.push(s.elapsed().as_micros() as u32);
                    regs.fetch_add(1, Ordering::Relaxed);
                }
                store
                    .apply(Command::Commit { xid: xid.clone() }, now)
                    .await?;
                for b in 0..branches as u64 {
                    let cmd = Command::Phase2Result {
                        xid: xid.clone(),
                        branch_id: b + 1,
                        outcome: Phase2Outcome::Committed,
                    };
                    store.apply(cmd, now).await?;
                }
            }
            Ok::<_, tandem_lockserver::Error>(lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (r0, t0) = (regs.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let (r1, elapsed) = (regs.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    store.close().await?;
    println!(
        "{} (in-process embedded store, no network): {:.0} registrations/s ({} keys each, released at commit) | register p50 {:.2} ms p99 {:.2} ms | concurrency {} branches/global {}",
        a.label,
        (r1 - r0) as f64 / elapsed,
        a.keys,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        a.concurrency,
        a.branches
    );
    Ok(())
}
