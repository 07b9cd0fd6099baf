//! The client proxies link: [`LockClient`] for the unary calls,
//! [`Phase2Worker`] for receiving phase-2 work (`worker`), and [`TableLockView`] for
//! which tables may hold global locks (`tables`). The lockserver protocol lives
//! here and in `api::grpc`, nowhere else.
//!
//! Owns: one long-lived gRPC channel per client (cloning shares it), per-call
//! timeouts, and the phase-2 stream's reconnect loop. Never retries a call by itself
//! (callers decide with [`Error::is_retryable`]), but for one: it withdraws a branch
//! registration whose answer never came, since its caller cannot name that branch.
//! Invariant: every call is bounded by its timeout, and a lock conflict comes back as
//! [`Error::LockConflict`] naming the holder.
#![deny(missing_docs)]

mod tables;
mod worker;

pub use tables::{TableLockView, UncheckedWrite};
pub use worker::{
    BoxFuture, BranchHandler, BranchOutcome, InFlight, Phase2Work, Phase2Worker, WorkerOptions,
};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

use crate::api::grpc::{MAX_MESSAGE_BYTES, batches_within};
pub use crate::core::locks::{LockKey, MAX_LOCK_KEY_BYTES};
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

/// Calls queued towards the lockserver on one pipeline stream; callers beyond it wait.
const PIPE_QUEUE: usize = 4096;

/// The most bytes of calls in one pipeline message, below [`MAX_MESSAGE_BYTES`] with
/// room for one more call as large as [`MAX_CALL_BYTES`] allows.
const MAX_BATCH_BYTES: usize = MAX_MESSAGE_BYTES / 2;

/// The largest call the client sends (a branch's lock keys): larger ones are refused
/// as a limit before they reach the stream, which they would break for every caller.
const MAX_CALL_BYTES: usize = MAX_BATCH_BYTES;

/// HTTP/2 flow-control window of each stream, in bytes, on both sides (the default
/// 64 KiB throttled a pipeline stream to about 90 registrations in flight). It bounds
/// what a peer may send before the receiver reads it.
pub const H2_STREAM_WINDOW: u32 = 4 << 20;
/// HTTP/2 flow-control window of each connection, in bytes, on both sides.
pub const H2_CONNECTION_WINDOW: u32 = 8 << 20;

/// How long a registration whose answer never came is withdrawn for, at most: the
/// lockserver's default `max_timeout_ms`. Once the transaction is over nothing is left
/// to withdraw.
const WITHDRAW_FOR: Duration = Duration::from_secs(3600);

/// Withdrawals pending at most, in the process: beyond, a lockserver that stays away
/// while registrations keep failing would pile up tasks without bound.
const MAX_WITHDRAWING: usize = 10_000;
static WITHDRAWING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One pending withdrawal, counted in [`WITHDRAWING`] while it lives (also when its
/// task is dropped with its runtime).
struct Withdrawing;

impl Withdrawing {
    fn enter() -> Option<Withdrawing> {
        if WITHDRAWING.fetch_add(1, Ordering::Relaxed) >= MAX_WITHDRAWING {
            WITHDRAWING.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Withdrawing)
    }
}

impl Drop for Withdrawing {
    fn drop(&mut self) {
        WITHDRAWING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A lock that a lock query found held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLock {
    /// The first held key of those asked about.
    pub key: LockKey,
    /// The transaction that holds it.
    pub holder: Xid,
    /// Whether the holder is rolling back.
    pub holder_rolling_back: bool,
}

/// A cheap-to-clone handle to one lockserver over one long-lived HTTP/2 connection.
/// Calls are pipelined on one stream (many in flight, answered by id); a broken
/// stream fails the calls in flight as retryable and the next call opens a new one.
#[derive(Clone)]
pub struct LockClient {
    rpc: CoordinatorClient<Channel>,
    opts: ClientOptions,
    /// Serializes opening a new stream (held across the open's await).
    pipe: Arc<tokio::sync::Mutex<Option<Arc<Pipe>>>>,
    /// The open stream, for the per-call fast path. A std Mutex: held only to clone.
    current: Arc<Mutex<Option<Arc<Pipe>>>>,
}

type Waiter = oneshot::Sender<pb::answer::Result>;

/// One open pipeline stream.
struct Pipe {
    /// Taken (closing the request stream) once the answer stream ends.
    tx: Mutex<Option<mpsc::Sender<pb::Call>>>,
    /// Calls awaiting their answer. A std Mutex: never held across an await.
    pending: Mutex<HashMap<u64, Waiter>>,
    next: AtomicU64,
    alive: AtomicBool,
}

/// Forgets a call's waiter when the caller gives up (timeout or cancellation).
struct Forget<'a>(&'a Pipe, u64);
impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

fn closed() -> Error {
    Error::Rpc {
        code: tonic::Code::Unavailable,
        message: "lockserver stream closed".into(),
    }
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

fn branch_type(kind: BranchKind) -> i32 {
    match kind {
        BranchKind::AT => pb::BranchType::At as i32,
        BranchKind::XA => pb::BranchType::Xa as i32,
    }
}

/// The lockserver answered that it cannot tell what became of the request: its
/// store's write timed out or failed after it may have landed (Redis).
fn indeterminate<T, E: std::borrow::Borrow<Error>>(answer: &std::result::Result<T, E>) -> bool {
    matches!(
        answer.as_ref().map_err(|e| e.borrow()),
        Err(Error::Rpc {
            code: tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DeadlineExceeded,
            ..
        })
    )
}

fn unexpected() -> Error {
    Error::Corrupt {
        what: "lockserver answered with the wrong message type",
    }
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
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(LockClient {
            rpc: CoordinatorClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            opts,
            pipe: Arc::default(),
            current: Arc::default(),
        })
    }

    async fn open_pipe(&self) -> Result<Arc<Pipe>> {
        if let Some(p) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|p| p.alive.load(Ordering::SeqCst))
        {
            return Ok(p.clone());
        }
        let mut slot = self.pipe.lock().await;
        if let Some(p) = slot.as_ref().filter(|p| p.alive.load(Ordering::SeqCst)) {
            return Ok(p.clone());
        }
        let (tx, rx) = mpsc::channel(PIPE_QUEUE);
        let mut inbound = self
            .rpc
            .clone()
            .pipeline(
                batches_within(rx, MAX_BATCH_BYTES, |c: &pb::Call| {
                    prost::Message::encoded_len(c) + 16
                })
                .map(|calls| pb::Calls { calls }),
            )
            .await
            .map_err(from_status)?
            .into_inner();
        let pipe = Arc::new(Pipe {
            tx: Mutex::new(Some(tx)),
            pending: Mutex::default(),
            next: AtomicU64::new(1),
            alive: AtomicBool::new(true),
        });
        let reader = pipe.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                let mut pending = reader.pending.lock().unwrap_or_else(|p| p.into_inner());
                let ready: Vec<_> = batch
                    .answers
                    .into_iter()
                    .filter_map(|a| Some((pending.remove(&a.id)?, a.result?)))
                    .collect();
                drop(pending);
                for (w, r) in ready {
                    let _ = w.send(r);
                }
            }
            // Order matters: callers check `alive` after registering their waiter.
            reader.alive.store(false, Ordering::SeqCst);
            reader.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
            reader
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        });
        *slot = Some(pipe.clone());
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(pipe.clone());
        Ok(pipe)
    }

    async fn call(
        &self,
        op: &'static str,
        extra: Duration,
        call: pb::call::Op,
    ) -> Result<pb::answer::Result> {
        self.call_unheard(op, extra, call).await.0
    }

    /// As [`LockClient::call`], and whether the call failed after it was sent without
    /// an answer: the lockserver may have carried it out.
    async fn call_unheard(
        &self,
        op: &'static str,
        extra: Duration,
        call: pb::call::Op,
    ) -> (Result<pb::answer::Result>, bool) {
        let mut sent = false;
        let mut answered = false;
        let result = self
            .call_noting(op, extra, call, &mut sent, &mut answered)
            .await;
        let unheard = result.is_err() && sent && !answered;
        (result, unheard)
    }

    async fn call_noting(
        &self,
        op: &'static str,
        extra: Duration,
        call: pb::call::Op,
        sent_flag: &mut bool,
        answered: &mut bool,
    ) -> Result<pb::answer::Result> {
        let call = pb::Call {
            id: 0,
            op: Some(call),
        };
        if prost::Message::encoded_len(&call) > MAX_CALL_BYTES {
            return Err(Error::LimitExceeded {
                what: "bytes in one call to the lockserver (a branch's lock keys)",
                limit: MAX_CALL_BYTES,
            });
        }
        let fut = async {
            let pipe = self.open_pipe().await?;
            let id = pipe.next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            pipe.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, tx);
            let _forget = Forget(&pipe, id);
            let sender = pipe.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let sent = match sender {
                Some(tx) if pipe.alive.load(Ordering::SeqCst) => {
                    tx.send(pb::Call { id, ..call }).await.is_ok()
                }
                _ => false,
            };
            if !sent {
                pipe.alive.store(false, Ordering::SeqCst);
                return Err(closed());
            }
            *sent_flag = true;
            let answer = rx.await.map_err(|_| closed())?;
            *answered = true;
            match answer {
                pb::answer::Result::Failure(f) => Err(Error::Rpc {
                    code: tonic::Code::from(f.code),
                    message: f.message,
                }),
                r => Ok(r),
            }
        };
        match tokio::time::timeout(self.opts.call_timeout + extra, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout { op }),
        }
    }

    async fn status_call(
        &self,
        op: &'static str,
        extra: Duration,
        call: pb::call::Op,
    ) -> Result<GlobalStatus> {
        match self.call(op, extra, call).await? {
            pb::answer::Result::Status(s) => parse_status(&s.status),
            _ => Err(unexpected()),
        }
    }

    /// Begins a global transaction; `None` takes the server's default timeout.
    pub async fn begin(&self, timeout: Option<Duration>) -> Result<Xid> {
        let timeout_ms = timeout.map(|t| (t.as_millis() as u64).max(1)).unwrap_or(0);
        match self
            .call(
                "begin",
                Duration::ZERO,
                pb::call::Op::Begin(pb::BeginRequest { timeout_ms }),
            )
            .await?
        {
            pb::answer::Result::Begin(r) => Xid::parse(&r.xid),
            _ => Err(unexpected()),
        }
    }

    /// Commits; `Committed` once the decision is durable. The server may first wait up
    /// to its rollback wait for XA branches still preparing (then PhaseOnePending): the
    /// call waits as long as a rollback's, so that it hears that answer rather than
    /// timing out first. [`Error::OutcomeUnknown`] when it was sent and no answer came.
    pub async fn commit(&self, xid: &Xid) -> Result<GlobalStatus> {
        let op = pb::call::Op::Commit(pb::XidRequest {
            xid: xid.to_string(),
        });
        self.decision_call("commit", op).await
    }

    /// Rolls back; `Rollbacked` once every branch is undone, or else the status the
    /// transaction is in when the server's rollback wait ends (`Rollbacking` while
    /// branches are still being undone, a `*Retrying` or `*Failed` one after a failure).
    /// [`Error::OutcomeUnknown`] when it was sent and no answer came.
    pub async fn rollback(&self, xid: &Xid) -> Result<GlobalStatus> {
        let op = pb::call::Op::Rollback(pb::XidRequest {
            xid: xid.to_string(),
        });
        self.decision_call("rollback", op).await
    }

    /// A commit or rollback: as `status_call`, telling a decision that may have been
    /// taken (sent, never answered) from one that was not.
    async fn decision_call(&self, op: &'static str, call: pb::call::Op) -> Result<GlobalStatus> {
        let (answer, unheard) = self.call_unheard(op, Duration::from_secs(10), call).await;
        match answer {
            Ok(pb::answer::Result::Status(s)) => parse_status(&s.status),
            Ok(_) => Err(unexpected()),
            Err(e) if unheard || indeterminate(&Err::<(), _>(&e)) => Err(Error::OutcomeUnknown {
                op,
                cause: e.to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    /// The transaction's status.
    pub async fn status(&self, xid: &Xid) -> Result<GlobalStatus> {
        self.status_call(
            "status",
            Duration::ZERO,
            pb::call::Op::Status(pb::XidRequest {
                xid: xid.to_string(),
            }),
        )
        .await
    }

    /// Registers a branch with its lock keys, all or nothing, waiting up to `wait`
    /// for conflicting locks. Returns the branch id (unique within the xid), or
    /// [`Error::LockConflict`] naming the holder. When a key's table was not yet
    /// announced to every proxy of its resource (see [`TableLockView`]) and one of
    /// them did not acknowledge within the lockserver's `table_ack_timeout_ms`, it
    /// fails with `Error::Rpc { code: Unavailable, .. }`: nothing was registered or
    /// locked, and [`Error::is_retryable`] is true.
    pub async fn register_branch(
        &self,
        xid: &Xid,
        resource_id: &str,
        kind: BranchKind,
        keys: &[LockKey],
        wait: Duration,
    ) -> Result<u64> {
        let token = rand::random::<u64>().max(1);
        self.register_with_token(xid, resource_id, kind, keys, wait, token)
            .await
    }

    /// [`LockClient::register_branch`], given up once `stop` resolves (the client
    /// cancelled its statement): `Ok(None)` then, and the registration is withdrawn, so
    /// that it holds nothing should the lockserver grant it after all.
    pub async fn register_branch_unless(
        &self,
        xid: &Xid,
        resource_id: &str,
        kind: BranchKind,
        keys: &[LockKey],
        wait: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Option<u64>> {
        let token = rand::random::<u64>().max(1);
        tokio::select! {
            registered = self.register_with_token(xid, resource_id, kind, keys, wait, token) => {
                registered.map(Some)
            }
            () = stop => {
                self.withdraw_in_background(xid, resource_id, kind, token);
                Ok(None)
            }
        }
    }

    async fn register_with_token(
        &self,
        xid: &Xid,
        resource_id: &str,
        kind: BranchKind,
        keys: &[LockKey],
        wait: Duration,
        token: u64,
    ) -> Result<u64> {
        let req = pb::RegisterRequest {
            xid: xid.to_string(),
            resource_id: resource_id.to_string(),
            branch_type: branch_type(kind),
            lock_keys: keys.iter().map(|k| k.as_str().to_string()).collect(),
            wait_ms: wait.as_millis().min(u32::MAX as u128) as u32,
            token,
        };
        let (answer, unheard) = self
            .call_unheard("register_branch", wait, pb::call::Op::Register(req))
            .await;
        if unheard || indeterminate(&answer) {
            self.withdraw_in_background(xid, resource_id, kind, token);
        }
        let r = match answer? {
            pb::answer::Result::Register(r) => r,
            _ => return Err(unexpected()),
        };
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
            ..Default::default()
        };
        match self
            .call("report", Duration::ZERO, pb::call::Op::Report(req))
            .await?
        {
            pb::answer::Result::Report(_) => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// Withdraws the registration named `token`, whose answer never came: the
    /// lockserver may have registered the branch, which would then hold up the global
    /// commit (an XA branch that never reports) for good. Retried on its own task
    /// until the lockserver answers, for at most [`WITHDRAW_FOR`]. A process that stops
    /// meanwhile drops it: the transaction then commits only by its timeout's rollback.
    fn withdraw_in_background(&self, xid: &Xid, resource_id: &str, kind: BranchKind, token: u64) {
        let Some(pending) = Withdrawing::enter() else {
            tracing::warn!(%xid, resource = resource_id, "a registration whose answer was lost is not withdrawn: too many withdrawals pending; its transaction cannot commit");
            return;
        };
        let client = self.clone();
        let req = pb::ReportRequest {
            xid: xid.to_string(),
            branch_id: 0,
            success: false,
            token,
            resource_id: resource_id.to_string(),
            branch_type: branch_type(kind),
        };
        tokio::spawn(async move {
            let _pending = pending;
            let give_up = tokio::time::Instant::now() + WITHDRAW_FOR;
            let mut pause = Duration::from_millis(100);
            loop {
                let op = pb::call::Op::Report(req.clone());
                // A withdrawal may be repeated: only a refusal of it ends the retries.
                match client.call("withdraw", Duration::ZERO, op).await {
                    Ok(_) => break,
                    Err(e) if e.is_refusal() || tokio::time::Instant::now() >= give_up => {
                        tracing::warn!(xid = %req.xid, error = %e, "could not withdraw a registration whose answer was lost");
                        break;
                    }
                    Err(_) => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }

    /// The first of `keys` held by an unfinished global transaction, with its holder.
    pub async fn lock_holder(&self, keys: &[LockKey]) -> Result<Option<(LockKey, Xid)>> {
        Ok(self.held_lock(keys).await?.map(|h| (h.key, h.holder)))
    }

    /// The first of `keys` held by an unfinished global transaction, with its holder
    /// and whether that holder is rolling back (its undo will need the rows: a waiter
    /// holding their local locks should give up at once).
    pub async fn held_lock(&self, keys: &[LockKey]) -> Result<Option<HeldLock>> {
        let req = pb::LockQueryRequest {
            lock_keys: keys.iter().map(|k| k.as_str().to_string()).collect(),
            release_idle_tables: false,
        };
        let r = match self
            .call("lock_query", Duration::ZERO, pb::call::Op::LockQuery(req))
            .await?
        {
            pb::answer::Result::LockQuery(r) => r,
            _ => return Err(unexpected()),
        };
        match r.held {
            Some(c) => Ok(Some(HeldLock {
                key: LockKey::parse(&c.key)?,
                holder: Xid::parse(&c.holder_xid)?,
                holder_rolling_back: c.holder_rolling_back,
            })),
            None => Ok(None),
        }
    }

    /// Asks the lockserver to unannounce the tables `tables` of `resource` that hold no
    /// global lock now, rather than after its `unannounce_after_ms` (the table view
    /// hears of it by its notices, as of any unannouncement). Returns the ones that
    /// stay announced: they hold locks, or are being announced (with Redis, all).
    pub async fn release_idle_tables(
        &self,
        resource: &str,
        tables: &[&str],
    ) -> Result<Vec<String>> {
        let req = pb::LockQueryRequest {
            lock_keys: tables
                .iter()
                .map(|t| {
                    LockKey::new(resource, t, ["tandem_release"])
                        .as_str()
                        .to_string()
                })
                .collect(),
            release_idle_tables: true,
        };
        match self
            .call("lock_query", Duration::ZERO, pb::call::Op::LockQuery(req))
            .await?
        {
            pb::answer::Result::LockQuery(r) => Ok(r.tables_in_use),
            _ => Err(unexpected()),
        }
    }

    /// Whether any of `keys` is held (for writes outside a global transaction).
    pub async fn locks_held(&self, keys: &[LockKey]) -> Result<bool> {
        Ok(self.lock_holder(keys).await?.is_some())
    }
}
