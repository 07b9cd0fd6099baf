//! The phase-2 worker: keeps a `Phase2` stream open for some resources, hands each
//! work item to a [`BranchHandler`] and sends back its outcome; with a
//! [`TableLockView`] it also feeds the view from the stream's table notices and
//! acknowledges them.
//!
//! Owns: the stream's reconnect loop and its handler tasks. Never retries an item by
//! itself (the lockserver redelivers). Invariant: a stream's table view is marked
//! down the moment the stream ends, whatever ends it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::tables::StreamTables;
use super::{BranchKind, LockClient, TableLockView, Xid};
use crate::proto::{self as pb, coordinator_client::CoordinatorClient};

/// One phase-2 item for a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase2Work {
    /// Global transaction.
    pub xid: Xid,
    /// Branch within it.
    pub branch_id: u64,
    /// The resource to act on.
    pub resource_id: String,
    /// AT (undo images) or XA (the database's 2PC).
    pub kind: BranchKind,
}

/// A handler's answer to one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchOutcome {
    /// Done: committed (undo rows deleted / XA committed) or rolled back.
    Done,
    /// Rollback refused: a row changed since the branch (dirty write). Locks stay held.
    RollbackFailed {
        /// What differed, for operators.
        reason: String,
    },
    /// Could not do it now (database down, ...); the lockserver retries with backoff.
    Retry {
        /// Why, for logs.
        reason: String,
    },
}

/// A boxed future, so [`BranchHandler`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a proxy does with phase-2 work. Both calls must be idempotent: delivery is
/// at least once.
pub trait BranchHandler: Send + Sync + 'static {
    /// Phase-2 commit of one branch.
    fn commit(&self, work: Phase2Work) -> BoxFuture<'_, BranchOutcome>;
    /// Phase-2 rollback of one branch.
    fn rollback(&self, work: Phase2Work) -> BoxFuture<'_, BranchOutcome>;
}

/// Phase-2 worker settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Name shown in the lockserver's logs.
    pub name: String,
    /// Items handled at once; more wait in the stream. Default 64.
    pub concurrency: usize,
    /// First reconnect delay. Default 100 ms.
    pub reconnect_initial: Duration,
    /// Reconnect delays double up to this. Default 5 s.
    pub reconnect_max: Duration,
    /// Feed this view from the stream's table notices (`Hello.table_locks`), and
    /// acknowledge each once the writes it let through unchecked have finished.
    /// One worker feeds a view at a time: when a worker replaces another (a new
    /// stream listing more resources), only the newest stream's snapshots make the
    /// view trusted. Default `None`: no notices (the lockserver does not wait for
    /// this proxy).
    pub table_view: Option<Arc<TableLockView>>,
    /// The items being handled. Give the workers that succeed one another for one
    /// handler the same. Default: a set of this worker's own.
    pub in_flight: InFlight,
}

/// The phase-2 items a handler is working on. The lockserver delivers an item again
/// when no outcome came within its `ack_timeout_ms`; a rollback that waits on a row
/// lock is still running then, and a second copy beside it would take another side
/// connection only to wait behind the first (and find its undo row gone after).
/// A delivery of an item in flight is dropped: the lockserver delivers it again if
/// the first copy's outcome never comes. An item done lately is answered with its
/// outcome again without being handled again: that outcome may have gone down with
/// the stream it was sent on (a reconnect, a worker replaced), and a rollback run
/// twice finds its undo row gone and leaves a GlobalFinished marker.
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<Mutex<Items>>);

#[derive(Debug, Default)]
struct Items {
    running: HashSet<(String, u64)>,
    /// Items done (not put off, not failed), with when.
    done: HashMap<(String, u64), (Instant, pb::Phase2Result)>,
}

/// How long, and how many, done items are remembered.
const DONE_KEPT_FOR: Duration = Duration::from_secs(300);
const DONE_KEPT: usize = 10_000;

impl InFlight {
    fn items(&self) -> std::sync::MutexGuard<'_, Items> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the item in flight until the claim is dropped; None if it already is.
    fn claim(&self, xid: &str, branch_id: u64) -> Option<Claim> {
        let key = (xid.to_owned(), branch_id);
        let fresh = self.items().running.insert(key.clone());
        fresh.then(|| Claim {
            set: self.clone(),
            key,
        })
    }

    /// The outcome of the item if it was done lately.
    fn done_lately(&self, xid: &str, branch_id: u64) -> Option<pb::Phase2Result> {
        let items = self.items();
        let (at, result) = items.done.get(&(xid.to_owned(), branch_id))?;
        (at.elapsed() < DONE_KEPT_FOR).then(|| result.clone())
    }

    fn remember_done(&self, result: &pb::Phase2Result) {
        let mut items = self.items();
        if items.done.len() >= DONE_KEPT {
            items.done.retain(|_, (at, _)| at.elapsed() < DONE_KEPT_FOR);
            if items.done.len() >= DONE_KEPT {
                items.done.clear();
            }
        }
        items.done.insert(
            (result.xid.clone(), result.branch_id),
            (Instant::now(), result.clone()),
        );
    }
}

/// An item's place in [`InFlight`], given up when the item's handling ends however it
/// ends.
struct Claim {
    set: InFlight,
    key: (String, u64),
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.set.items().running.remove(&self.key);
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            name: "tandem-proxy".into(),
            concurrency: 64,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            table_view: None,
            in_flight: InFlight::default(),
        }
    }
}

/// How long a stream may take to be established (the lockserver subscribes it, then
/// answers); others of its view wait for it meanwhile.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// Acknowledgements queued towards the lockserver (the acking task waits when full).
const ACKS_QUEUED: usize = 64;

/// Keeps a phase-2 stream open to the lockserver for some resources, hands each item
/// to a [`BranchHandler`] and sends back its outcome; reconnects with backoff.
pub struct Phase2Worker {
    cancel: CancellationToken,
    status: Arc<Status>,
    task: tokio::task::JoinHandle<()>,
}

/// How far a worker's stream got, for its owner.
struct Status {
    /// The stream is open (the lockserver accepted `Hello`).
    connected: AtomicBool,
    /// A stream delivered its first message (with a table view: its snapshot is in).
    delivered: tokio::sync::watch::Sender<bool>,
    /// A stream that ends is not replaced ([`Phase2Worker::retire`]).
    retired: AtomicBool,
}

impl Phase2Worker {
    /// Starts the worker on `client`'s connection.
    pub fn spawn(
        client: &LockClient,
        resources: Vec<String>,
        handler: Arc<dyn BranchHandler>,
        opts: WorkerOptions,
    ) -> Self {
        let cancel = CancellationToken::new();
        let status = Arc::new(Status {
            connected: AtomicBool::new(false),
            delivered: tokio::sync::watch::Sender::new(false),
            retired: AtomicBool::new(false),
        });
        let run = worker_loop(
            client.rpc.clone(),
            resources,
            handler,
            opts,
            cancel.clone(),
            status.clone(),
        );
        Phase2Worker {
            cancel,
            status,
            task: tokio::spawn(run),
        }
    }

    /// Whether the stream is currently open (the lockserver has accepted `Hello`).
    pub fn is_connected(&self) -> bool {
        self.status.connected.load(Ordering::Relaxed)
    }

    /// From now on this worker opens no stream, and one that ends is not replaced: a
    /// newer worker serves its resources, and this one is kept only until that one
    /// delivers. (A stream it opened now would be its view's newest, and stopping it
    /// would leave the view following a stream gone.)
    pub fn retire(&self) {
        self.status.retired.store(true, Ordering::SeqCst);
    }

    /// Waits until a stream of this worker delivered its first message: with a table
    /// view, the lockserver's snapshot of the worker's resources is in the view.
    pub fn delivered(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.status.delivered.subscribe();
        async move {
            let _ = rx.wait_for(|delivered| *delivered).await;
        }
    }

    /// Stops the worker; items being handled are abandoned (the lockserver redelivers).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn worker_loop(
    rpc: CoordinatorClient<Channel>,
    resources: Vec<String>,
    handler: Arc<dyn BranchHandler>,
    opts: WorkerOptions,
    cancel: CancellationToken,
    status: Arc<Status>,
) {
    let mut delay = opts.reconnect_initial;
    // An operator hears once that the lockserver cannot be reached (global
    // transactions cannot begin or end meanwhile), not at every retry, and not while
    // one started beside the proxy is still coming up.
    let mut unreachable_since: Option<std::time::Instant> = None;
    let mut said_unreachable = false;
    while !cancel.is_cancelled() && !status.retired.load(Ordering::SeqCst) {
        let had_work = tokio::select! {
            _ = cancel.cancelled() => break,
            r = one_stream(rpc.clone(), &resources, &handler, &opts, &status) => r,
        };
        status.connected.store(false, Ordering::Relaxed);
        if status.retired.load(Ordering::SeqCst) {
            break;
        }
        if had_work {
            delay = opts.reconnect_initial;
            unreachable_since = None;
            said_unreachable = false;
            tracing::warn!("phase-2 stream to the lockserver ended; reconnecting");
        } else if !said_unreachable
            && !cancel.is_cancelled()
            && unreachable_since
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                >= std::time::Duration::from_secs(1)
        {
            said_unreachable = true;
            tracing::warn!(
                "the lockserver cannot be reached (phase-2 stream not established); retrying: global transactions cannot begin or end meanwhile"
            );
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(opts.reconnect_max);
    }
    status.connected.store(false, Ordering::Relaxed);
}

/// Runs one stream until it ends; returns whether it was ever established.
async fn one_stream(
    mut rpc: CoordinatorClient<Channel>,
    resources: &[String],
    handler: &Arc<dyn BranchHandler>,
    opts: &WorkerOptions,
    status: &Status,
) -> bool {
    let (tx, rx) = mpsc::channel::<pb::Phase2Result>(opts.concurrency.max(1) * 2);
    let (ack_tx, ack_rx) = mpsc::channel::<u64>(ACKS_QUEUED);
    let hello = pb::Phase2Up {
        msg: Some(pb::phase2_up::Msg::Hello(pb::Hello {
            resource_ids: resources.to_vec(),
            worker_name: opts.name.clone(),
            table_locks: opts.table_view.is_some(),
            instance: opts
                .table_view
                .as_ref()
                .map(|v| v.instance().to_owned())
                .unwrap_or_default(),
        })),
    };
    let results = crate::api::grpc::batches(rx).map(|results| pb::Phase2Up {
        msg: Some(pb::phase2_up::Msg::Results(pb::Phase2Results { results })),
    });
    // Acks travel as their own messages, beside the batched results, one notice each:
    // notices are drained per resource, not in stream order.
    let acks = tokio_stream::wrappers::ReceiverStream::new(ack_rx).map(|seq| pb::Phase2Up {
        msg: Some(pb::phase2_up::Msg::TableAck(pb::TableAck {
            seq: 0,
            seqs: vec![seq],
        })),
    });
    let outbound =
        futures::stream::once(async move { hello }).chain(futures::stream::select(results, acks));
    // One stream of a view at a time from its request until it is up: see
    // `TableLockView::connecting`.
    let connecting = match &opts.table_view {
        Some(view) => Some(view.connecting.lock().await),
        None => None,
    };
    let mut inbound = match tokio::time::timeout(CONNECT_WAIT, rpc.phase2(outbound)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "phase-2 stream not established");
            return false;
        }
        Err(_) => {
            tracing::debug!("phase-2 stream not established in time");
            return false;
        }
    };
    if status.retired.load(Ordering::SeqCst) {
        // Retired while it connected: it must not become its view's newest stream
        // (its successor connects after it, under `connecting`).
        return false;
    }
    status.connected.store(true, Ordering::Relaxed);
    tracing::info!(resources = ?resources, "phase-2 stream established");
    // Dropped however this function ends (also when its future is dropped): the
    // stream's view goes down with it.
    let tables = opts
        .table_view
        .clone()
        .map(|v| StreamTables::start(v, ack_tx));
    drop(connecting);
    let limit = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut delivered = false;
    while let Ok(Some(msg)) = inbound.message().await {
        if let Some(t) = &tables
            && !t.on_message(msg.tables)
        {
            tracing::warn!("table notices pending acknowledgement overflowed; reconnecting");
            return true;
        }
        if !delivered {
            delivered = true;
            status.delivered.send_replace(true);
        }
        for w in msg.work {
            let Ok(xid) = Xid::parse(&w.xid) else {
                continue;
            };
            let kind = if w.branch_type == pb::BranchType::Xa as i32 {
                BranchKind::XA
            } else {
                BranchKind::AT
            };
            let Some(claim) = opts.in_flight.claim(&w.xid, w.branch_id) else {
                tracing::debug!(xid = %w.xid, branch = w.branch_id, "phase-2 item delivered again while still being handled");
                continue;
            };
            if let Some(result) = opts.in_flight.done_lately(&w.xid, w.branch_id) {
                tracing::debug!(xid = %w.xid, branch = w.branch_id, "phase-2 item delivered again after it was done");
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(result).await;
                    drop(claim);
                });
                continue;
            }
            let commit = w.action == pb::Action::Commit as i32;
            let work = Phase2Work {
                xid,
                branch_id: w.branch_id,
                resource_id: w.resource_id,
                kind,
            };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return true;
            };
            let (handler, tx, in_flight) = (handler.clone(), tx.clone(), opts.in_flight.clone());
            // The handler's events (a dirty write found, a retry) name the branch.
            let span =
                tracing::info_span!("phase2", xid = %work.xid, branch = work.branch_id, commit);
            let handled = async move {
                let (xid, branch_id) = (work.xid.to_string(), work.branch_id);
                let outcome = if commit {
                    handler.commit(work).await
                } else {
                    handler.rollback(work).await
                };
                let (o, detail) = match outcome {
                    BranchOutcome::Done if commit => (pb::Outcome::Committed, String::new()),
                    BranchOutcome::Done => (pb::Outcome::Rollbacked, String::new()),
                    BranchOutcome::RollbackFailed { reason } => {
                        (pb::Outcome::RollbackFailed, reason)
                    }
                    BranchOutcome::Retry { reason } => (pb::Outcome::Retry, reason),
                };
                let r = pb::Phase2Result {
                    xid,
                    branch_id,
                    outcome: o as i32,
                    detail,
                };
                if matches!(
                    r.outcome(),
                    pb::Outcome::Committed | pb::Outcome::Rollbacked
                ) {
                    in_flight.remember_done(&r);
                }
                let _ = tx.send(r).await;
                drop(claim);
                drop(permit);
            };
            tokio::spawn(tracing::Instrument::instrument(handled, span));
        }
    }
    true
}
