//! The client proxies link: [`LockClient`] for the unary calls and
//! [`Phase2Worker`] for receiving phase-2 work. The lockserver protocol lives here
//! and in `api::grpc`, nowhere else.
//!
//! Owns: one long-lived gRPC channel per client (cloning shares it), per-call
//! timeouts, and the phase-2 stream's reconnect loop. Never retries a call by itself
//! (callers decide with [`Error::is_retryable`]). Invariant: every call is bounded by
//! its timeout, and a lock conflict comes back as [`Error::LockConflict`] naming the holder.
#![deny(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub use crate::core::locks::LockKey;
pub use crate::core::txn::{BranchKind, GlobalStatus, Xid};
use crate::error::{Error, Result};
use crate::proto::{self as pb, coordinator_client::CoordinatorClient};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Bound on each call (a registration's lock wait is added to it). Default 5 s.
    pub call_timeout: Duration,
    /// Bound on establishing the connection. Default 2 s.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// A cheap-to-clone handle to one lockserver over one long-lived HTTP/2 connection.
#[derive(Clone)]
pub struct LockClient {
    rpc: CoordinatorClient<Channel>,
    opts: ClientOptions,
}

fn from_status(s: tonic::Status) -> Error {
    Error::Rpc {
        code: s.code(),
        message: s.message().to_string(),
    }
}

fn parse_status(s: &str) -> Result<GlobalStatus> {
    GlobalStatus::from_name(s).ok_or(Error::Corrupt {
        what: "unknown status name from the lockserver",
    })
}

impl LockClient {
    /// A client for `endpoint` (e.g. `http://127.0.0.1:8091`). Connects on first
    /// use and reconnects by itself after a failure.
    pub fn connect_lazy(endpoint: &str, opts: ClientOptions) -> Result<Self> {
        let ch = Endpoint::from_shared(endpoint.to_string())
            .map_err(|_| Error::InvalidArgument {
                what: "lockserver endpoint must be a URI like http://127.0.0.1:8091",
            })?
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(LockClient {
            rpc: CoordinatorClient::new(ch),
            opts,
        })
    }

    async fn call<T, F>(&self, op: &'static str, extra: Duration, f: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.opts.call_timeout + extra, f).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(from_status(s)),
            Err(_) => Err(Error::Timeout { op }),
        }
    }

    /// Begins a global transaction; `None` takes the server's default timeout.
    pub async fn begin(&self, timeout: Option<Duration>) -> Result<Xid> {
        let timeout_ms = timeout.map(|t| (t.as_millis() as u64).max(1)).unwrap_or(0);
        let r = self
            .call(
                "begin",
                Duration::ZERO,
                self.rpc.clone().begin(pb::BeginRequest { timeout_ms }),
            )
            .await?;
        Xid::parse(&r.xid)
    }

    /// Commits; `Committed` once the decision is durable.
    pub async fn commit(&self, xid: &Xid) -> Result<GlobalStatus> {
        let r = self
            .call(
                "commit",
                Duration::ZERO,
                self.rpc.clone().commit(pb::XidRequest {
                    xid: xid.to_string(),
                }),
            )
            .await?;
        parse_status(&r.status)
    }

    /// Rolls back; `Rollbacked` once every branch is undone, or a `*Retrying` /
    /// `*Failed` status if that did not happen within the server's rollback wait.
    pub async fn rollback(&self, xid: &Xid) -> Result<GlobalStatus> {
        let r = self
            .call(
                "rollback",
                Duration::from_secs(10),
                self.rpc.clone().rollback(pb::XidRequest {
                    xid: xid.to_string(),
                }),
            )
            .await?;
        parse_status(&r.status)
    }

    /// The transaction's status.
    pub async fn status(&self, xid: &Xid) -> Result<GlobalStatus> {
        let r = self
            .call(
                "status",
                Duration::ZERO,
                self.rpc.clone().status(pb::XidRequest {
                    xid: xid.to_string(),
                }),
            )
            .await?;
        parse_status(&r.status)
    }

    /// Registers a branch with its lock keys, all or nothing, waiting up to `wait`
    /// for conflicting locks. Returns the branch id (unique within the xid), or
    /// [`Error::LockConflict`] naming the holder.
    pub async fn register_branch(
        &self,
        xid: &Xid,
        resource_id: &str,
        kind: BranchKind,
        keys: &[LockKey],
        wait: Duration,
    ) -> Result<u64> {
        let req = pb::RegisterRequest {
            xid: xid.to_string(),
            resource_id: resource_id.to_string(),
            branch_type: if kind == BranchKind::AT {
                pb::BranchType::At
            } else {
                pb::BranchType::Xa
            } as i32,
            lock_keys: keys.iter().map(|k| k.as_str().to_string()).collect(),
            wait_ms: wait.as_millis().min(u32::MAX as u128) as u32,
        };
        let r = self
            .call(
                "register_branch",
                wait,
                self.rpc.clone().register_branch(req),
            )
            .await?;
        use pb::register_response::Result as R;
        match r.result {
            Some(R::BranchId(id)) => Ok(id),
            Some(R::Conflict(c)) => Err(Error::LockConflict {
                key: LockKey::parse(&c.key)?,
                holder: Xid::parse(&c.holder_xid)?,
                holder_rolling_back: c.holder_rolling_back,
            }),
            None => Err(Error::Corrupt {
                what: "empty register response",
            }),
        }
    }

    /// Reports a branch's phase-1 result (`true`: the local transaction committed).
    pub async fn report(&self, xid: &Xid, branch_id: u64, success: bool) -> Result<()> {
        let req = pb::ReportRequest {
            xid: xid.to_string(),
            branch_id,
            success,
        };
        self.call(
            "report",
            Duration::ZERO,
            self.rpc.clone().report_branch(req),
        )
        .await
        .map(|_| ())
    }

    /// The first of `keys` held by an unfinished global transaction, with its holder.
    pub async fn lock_holder(&self, keys: &[LockKey]) -> Result<Option<(LockKey, Xid)>> {
        let req = pb::LockQueryRequest {
            lock_keys: keys.iter().map(|k| k.as_str().to_string()).collect(),
        };
        let r = self
            .call(
                "lock_query",
                Duration::ZERO,
                self.rpc.clone().lock_query(req),
            )
            .await?;
        match r.held {
            Some(c) => Ok(Some((LockKey::parse(&c.key)?, Xid::parse(&c.holder_xid)?))),
            None => Ok(None),
        }
    }

    /// Whether any of `keys` is held (for writes outside a global transaction).
    pub async fn locks_held(&self, keys: &[LockKey]) -> Result<bool> {
        Ok(self.lock_holder(keys).await?.is_some())
    }
}

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
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            name: "tandem-proxy".into(),
            concurrency: 64,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// Keeps a phase-2 stream open to the lockserver for some resources, hands each item
/// to a [`BranchHandler`] and sends back its outcome; reconnects with backoff.
pub struct Phase2Worker {
    cancel: CancellationToken,
    connected: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
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
        let connected = Arc::new(AtomicBool::new(false));
        let run = worker_loop(
            client.rpc.clone(),
            resources,
            handler,
            opts,
            cancel.clone(),
            connected.clone(),
        );
        Phase2Worker {
            cancel,
            connected,
            task: tokio::spawn(run),
        }
    }

    /// Whether the stream is currently open (the lockserver has accepted `Hello`).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
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
    connected: Arc<AtomicBool>,
) {
    let mut delay = opts.reconnect_initial;
    while !cancel.is_cancelled() {
        let had_work = tokio::select! {
            _ = cancel.cancelled() => break,
            r = one_stream(rpc.clone(), &resources, &handler, &opts, &connected) => r,
        };
        connected.store(false, Ordering::Relaxed);
        if had_work {
            delay = opts.reconnect_initial;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(opts.reconnect_max);
    }
    connected.store(false, Ordering::Relaxed);
}

/// Runs one stream until it ends; returns whether it was ever established.
async fn one_stream(
    mut rpc: CoordinatorClient<Channel>,
    resources: &[String],
    handler: &Arc<dyn BranchHandler>,
    opts: &WorkerOptions,
    connected: &AtomicBool,
) -> bool {
    let (tx, rx) = mpsc::channel(opts.concurrency.max(1) * 2);
    let hello = pb::Phase2Up {
        msg: Some(pb::phase2_up::Msg::Hello(pb::Hello {
            resource_ids: resources.to_vec(),
            worker_name: opts.name.clone(),
        })),
    };
    if tx.send(hello).await.is_err() {
        return false;
    }
    let mut inbound = match rpc.phase2(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            tracing::debug!(error = %e, "phase-2 stream not established");
            return false;
        }
    };
    connected.store(true, Ordering::Relaxed);
    tracing::info!(resources = ?resources, "phase-2 stream established");
    let limit = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    while let Ok(Some(msg)) = inbound.message().await {
        let Some(w) = msg.work else { continue };
        let Ok(xid) = Xid::parse(&w.xid) else {
            continue;
        };
        let kind = if w.branch_type == pb::BranchType::Xa as i32 {
            BranchKind::XA
        } else {
            BranchKind::AT
        };
        let commit = w.action == pb::Action::Commit as i32;
        let work = Phase2Work {
            xid,
            branch_id: w.branch_id,
            resource_id: w.resource_id,
            kind,
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let (handler, tx) = (handler.clone(), tx.clone());
        tokio::spawn(async move {
            let (xid, branch_id) = (work.xid.to_string(), work.branch_id);
            let outcome = if commit {
                handler.commit(work).await
            } else {
                handler.rollback(work).await
            };
            let (o, detail) = match outcome {
                BranchOutcome::Done if commit => (pb::Outcome::Committed, String::new()),
                BranchOutcome::Done => (pb::Outcome::Rollbacked, String::new()),
                BranchOutcome::RollbackFailed { reason } => (pb::Outcome::RollbackFailed, reason),
                BranchOutcome::Retry { reason } => (pb::Outcome::Retry, reason),
            };
            let r = pb::Phase2Result {
                xid,
                branch_id,
                outcome: o as i32,
                detail,
            };
            let _ = tx
                .send(pb::Phase2Up {
                    msg: Some(pb::phase2_up::Msg::Result(r)),
                })
                .await;
            drop(permit);
        });
    }
    true
}
