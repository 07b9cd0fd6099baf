//! The gRPC API for proxies (`proto/lockserver.proto`).
//!
//! Owns: decoding protobuf requests and the one mapping from [`Error`] to gRPC
//! status ([`to_status`]). Never holds state and never decides anything. Invariant:
//! internal errors are logged here once and reach the client only as `INTERNAL`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::coordinator::Coordinator;
use crate::core::locks::{LockKey, split_table_prefix};
use crate::core::txn::{BranchKind, BranchStatus, Command, Phase2Outcome, Work, Xid};
use crate::error::Error;
use crate::proto::{self as pb, coordinator_server::CoordinatorServer};
use crate::tables::Down;

/// How long a new phase-2 stream has to send its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers processed at once per phase-2 stream; more wait (backpressure).
const ANSWERS_IN_FLIGHT: usize = 256;
/// Calls processed at once per pipeline stream; more wait in the stream (backpressure).
const CALLS_IN_FLIGHT: usize = 4096;

/// Maps an error to its gRPC status. The only place that does.
pub fn to_status(e: Error) -> Status {
    use tonic::Code;
    let code = match &e {
        Error::InvalidArgument { .. } | Error::BadLockKey(_) => Code::InvalidArgument,
        // Not INVALID_ARGUMENT: the request is well formed, but past a configured bound,
        // which the proxies report as such (54000, ER_LOCK_TABLE_FULL).
        Error::LimitExceeded { .. } => Code::OutOfRange,
        Error::UnknownXid { .. } | Error::UnknownBranch { .. } => Code::NotFound,
        Error::DuplicateXid { .. } => Code::AlreadyExists,
        Error::InvalidState { .. } | Error::Expired { .. } => Code::FailedPrecondition,
        // An announcement not acknowledged in time is a conflict too: a proxy's write
        // to the table, unchecked while the table held no locks, was still running,
        // most often waiting for a row lock of the very transaction registering. The
        // proxies tell their clients to retry the transaction (40001, 1205), as for a
        // lock held.
        Error::LockConflict { .. }
        | Error::Contention { .. }
        | Error::PhaseOnePending { .. }
        | Error::Unacknowledged { .. } => Code::Aborted,
        Error::Overloaded => Code::ResourceExhausted,
        // Not applied, safe to retry: gRPC's UNAVAILABLE, not ABORTED (no transaction
        // conflict) nor DEADLINE_EXCEEDED (which leaves open whether it was applied).
        Error::ShuttingDown => Code::Unavailable,
        Error::Timeout { .. } | Error::OutcomeUnknown { .. } => Code::DeadlineExceeded,
        Error::Rpc { code, .. } => *code,
        Error::Io { .. }
        | Error::Corrupt { .. }
        | Error::DamagedLog { .. }
        | Error::Redis(_)
        | Error::Config { .. }
        | Error::Transport(_) => {
            tracing::error!(error = %e, "internal error");
            return Status::internal("internal error (logged by the lockserver)");
        }
    };
    Status::new(code, e.to_string())
}

pub(super) fn xid(s: &str) -> Result<Xid, Status> {
    Xid::parse(s).map_err(to_status)
}

pub(super) fn keys(v: &[String]) -> Result<Vec<LockKey>, Status> {
    v.iter()
        .map(|k| LockKey::parse(k).map_err(|e| to_status(e.into())))
        .collect()
}

pub(super) fn kind(t: i32) -> Result<BranchKind, Status> {
    match pb::BranchType::try_from(t) {
        Ok(pb::BranchType::At) => Ok(BranchKind::AT),
        Ok(pb::BranchType::Xa) => Ok(BranchKind::XA),
        _ => Err(to_status(Error::InvalidArgument {
            what: "branch_type must be AT or XA",
        })),
    }
}

/// A branch registration.
pub(super) fn register_command(r: pb::RegisterRequest) -> Result<Command, Status> {
    Ok(Command::Register {
        xid: xid(&r.xid)?,
        kind: kind(r.branch_type)?,
        keys: keys(&r.lock_keys)?,
        resource: r.resource_id,
        token: (r.token != 0).then_some(r.token),
    })
}

/// A phase-1 report of the branch named by its id, or the withdrawal of the
/// registration named by its token.
pub(super) fn report_command(r: pb::ReportRequest) -> Result<Command, Status> {
    let xid = xid(&r.xid)?;
    if r.branch_id != 0 || r.token == 0 {
        let status = if r.success {
            BranchStatus::PhaseOneDone
        } else {
            BranchStatus::PhaseOneFailed
        };
        return Ok(Command::Report {
            xid,
            branch_id: r.branch_id,
            status,
        });
    }
    if r.success {
        return Err(to_status(Error::InvalidArgument {
            what: "a registration named by its token can only be withdrawn (success false)",
        }));
    }
    Ok(Command::Withdraw {
        xid,
        resource: r.resource_id,
        kind: kind(r.branch_type)?,
        token: r.token,
    })
}

fn outcome(o: i32) -> Option<Phase2Outcome> {
    match pb::Outcome::try_from(o).ok()? {
        pb::Outcome::Committed => Some(Phase2Outcome::Committed),
        pb::Outcome::Rollbacked => Some(Phase2Outcome::Rollbacked),
        pb::Outcome::RollbackFailed => Some(Phase2Outcome::RollbackFailed),
        pb::Outcome::Retry => Some(Phase2Outcome::Retry),
        pb::Outcome::Unspecified => None,
    }
}

fn work(w: Work) -> pb::BranchWork {
    let branch_type = if w.kind == BranchKind::AT {
        pb::BranchType::At
    } else {
        pb::BranchType::Xa
    };
    let action = if w.commit {
        pb::Action::Commit
    } else {
        pb::Action::Rollback
    };
    pb::BranchWork {
        xid: w.xid.to_string(),
        branch_id: w.branch_id,
        resource_id: w.resource,
        branch_type: branch_type as i32,
        action: action as i32,
    }
}

fn conflict(key: LockKey, holder: Xid, holder_rolling_back: bool) -> pb::LockConflict {
    pb::LockConflict {
        key: key.to_string(),
        holder_xid: holder.to_string(),
        holder_rolling_back,
    }
}

/// A failed pipelined call: the status its unary twin would have returned.
pub(super) fn failure(s: Status) -> pb::answer::Result {
    pb::answer::Result::Failure(pb::Failure {
        code: s.code() as i32,
        message: s.message().to_string(),
    })
}

/// A registration's response: its branch id, or the conflict naming the holder; any
/// other error stays one.
fn register_response(r: crate::Result<u64>) -> crate::Result<pb::RegisterResponse> {
    use pb::register_response::Result as R;
    let result = match r {
        Ok(id) => R::BranchId(id),
        Err(Error::LockConflict {
            key,
            holder,
            holder_rolling_back,
        }) => R::Conflict(conflict(key, holder, holder_rolling_back)),
        Err(e) => return Err(e),
    };
    Ok(pb::RegisterResponse {
        result: Some(result),
    })
}

/// A registration's answer on the pipeline (see `register_response`).
pub(super) fn register_result(r: crate::Result<u64>) -> pb::answer::Result {
    match register_response(r) {
        Ok(response) => pb::answer::Result::Register(response),
        Err(e) => failure(to_status(e)),
    }
}

/// Most answers (or calls) sent in one pipeline message.
pub(crate) const MAX_BATCH: usize = 512;

/// A stream of batches: waits for one item, then takes whatever else is queued.
pub(crate) fn batches<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = Vec<T>> + Send {
    batches_within(rx, usize::MAX, |_| 0)
}

/// As [`batches`], each batch holding at most `budget` bytes by `size` (an item
/// larger than that goes alone): what is queued behind a large item waits for the
/// next batch rather than make one message past the peer's limit.
pub(crate) fn batches_within<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
    budget: usize,
    size: fn(&T) -> usize,
) -> impl Stream<Item = Vec<T>> + Send {
    futures::stream::unfold((rx, None), move |(mut rx, carried)| async move {
        let first = match carried {
            Some(item) => item,
            None => rx.recv().await?,
        };
        let mut bytes = size(&first);
        let mut v = Vec::with_capacity(16);
        v.push(first);
        let mut next = None;
        while v.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(x) if bytes.saturating_add(size(&x)) > budget => {
                    next = Some(x);
                    break;
                }
                Ok(x) => {
                    bytes += size(&x);
                    v.push(x);
                }
                Err(_) => break,
            }
        }
        Some((v, (rx, next)))
    })
}

/// The gRPC service.
#[derive(Clone)]
pub struct GrpcApi {
    pub(super) coord: Arc<Coordinator>,
    cancel: CancellationToken,
}

/// The tonic service, for `Server::add_service` (and in-process tests). Phase-2
/// streams end when `cancel` fires, so graceful shutdown does not wait on them.
pub fn grpc_service(
    coord: Arc<Coordinator>,
    cancel: CancellationToken,
) -> CoordinatorServer<GrpcApi> {
    CoordinatorServer::new(GrpcApi { coord, cancel })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The largest gRPC message either side takes (tonic's default is 4 MiB, less than a
/// registration of 10,000 long keys). The client keeps each call below it and its
/// batches well below it: a message past the receiver's limit ends the whole stream,
/// failing every call in flight.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Unregisters a phase-2 stream (and its table notices) when its reader task ends.
struct Connected(Arc<Coordinator>, u64);
impl Drop for Connected {
    fn drop(&mut self) {
        self.0.phase2.disconnect(self.1);
        self.0.tables.unsubscribe(self.1);
    }
}

/// Table notices (or a heartbeat: nothing) on their way down a phase-2 stream.
fn down(d: Down) -> pb::Phase2Down {
    let notices = match d {
        Down::Heartbeat => Vec::new(),
        Down::Notices(v) => v
            .into_iter()
            .map(|n| pb::TableNotice {
                resource_id: n.resource,
                seq: n.seq,
                locked: n.locked,
                unlocked: n.unlocked,
                snapshot: n.snapshot,
                unknown: n.unknown,
                lease_ms: n.lease_ms,
            })
            .collect(),
    };
    pb::Phase2Down {
        work: Vec::new(),
        tables: notices,
    }
}

impl GrpcApi {
    /// A registration, waiting for conflicting locks until `caller_gone` (see
    /// `Coordinator::register`).
    async fn register_unless_gone(
        &self,
        r: pb::RegisterRequest,
        caller_gone: &CancellationToken,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let _p = self.coord.permit().map_err(to_status)?;
        let wait = Duration::from_millis(r.wait_ms.into());
        let cmd = register_command(r)?;
        register_response(self.coord.register(cmd, wait, caller_gone).await)
            .map(Response::new)
            .map_err(to_status)
    }

    /// One pipelined call, answered exactly as its unary twin would be. A registration
    /// stops waiting once `caller_gone` fires: the stream it came on has ended.
    pub(super) async fn one_call(
        &self,
        call: pb::Call,
        caller_gone: &CancellationToken,
    ) -> pb::Answer {
        use pb::answer::Result as A;
        use pb::call::Op;
        use pb::coordinator_server::Coordinator as _;
        fn done<T>(r: Result<Response<T>, Status>, f: impl FnOnce(T) -> A) -> A {
            match r {
                Ok(r) => f(r.into_inner()),
                Err(s) => failure(s),
            }
        }
        let result = match call.op {
            Some(Op::Begin(r)) => done(self.begin(Request::new(r)).await, A::Begin),
            Some(Op::Commit(r)) => done(self.commit(Request::new(r)).await, A::Status),
            Some(Op::Rollback(r)) => done(self.rollback(Request::new(r)).await, A::Status),
            Some(Op::Status(r)) => done(self.status(Request::new(r)).await, A::Status),
            Some(Op::Register(r)) => {
                done(self.register_unless_gone(r, caller_gone).await, A::Register)
            }
            Some(Op::Report(r)) => done(self.report_branch(Request::new(r)).await, A::Report),
            Some(Op::LockQuery(r)) => done(self.lock_query(Request::new(r)).await, A::LockQuery),
            None => A::Failure(pb::Failure {
                code: tonic::Code::InvalidArgument as i32,
                message: "empty call".into(),
            }),
        };
        pb::Answer {
            id: call.id,
            result: Some(result),
        }
    }
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for GrpcApi {
    async fn begin(
        &self,
        req: Request<pb::BeginRequest>,
    ) -> Result<Response<pb::BeginResponse>, Status> {
        let _p = self.coord.permit().map_err(to_status)?;
        let t = req.into_inner().timeout_ms;
        let (xid, deadline_ms) = self
            .coord
            .begin((t > 0).then_some(t))
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::BeginResponse {
            xid: xid.to_string(),
            deadline_ms,
        }))
    }

    async fn commit(
        &self,
        req: Request<pb::XidRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let _p = self.coord.permit().map_err(to_status)?;
        let s = self
            .coord
            .commit(xid(&req.get_ref().xid)?)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::StatusResponse {
            status: s.to_string(),
        }))
    }

    async fn rollback(
        &self,
        req: Request<pb::XidRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let _p = self.coord.permit().map_err(to_status)?;
        let s = self
            .coord
            .rollback(xid(&req.get_ref().xid)?)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::StatusResponse {
            status: s.to_string(),
        }))
    }

    async fn status(
        &self,
        req: Request<pb::XidRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let _p = self.coord.permit().map_err(to_status)?;
        let g = self
            .coord
            .global(&xid(&req.get_ref().xid)?)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::StatusResponse {
            status: g.status.to_string(),
        }))
    }

    async fn register_branch(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        // A unary call's handler is dropped, its wait with it, when its caller goes.
        self.register_unless_gone(req.into_inner(), &CancellationToken::new())
            .await
    }

    async fn report_branch(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let _p = self.coord.permit().map_err(to_status)?;
        let cmd = report_command(req.into_inner())?;
        self.coord.report(cmd).await.map_err(to_status)?;
        Ok(Response::new(pb::ReportResponse {}))
    }

    async fn lock_query(
        &self,
        req: Request<pb::LockQueryRequest>,
    ) -> Result<Response<pb::LockQueryResponse>, Status> {
        let _p = self.coord.permit().map_err(to_status)?;
        let keys = keys(&req.get_ref().lock_keys)?;
        let held = self.coord.lock_query(&keys).await.map_err(to_status)?;
        let tables_in_use = if req.get_ref().release_idle_tables {
            let staying = self.coord.release_idle_tables(&keys);
            staying
                .iter()
                .filter_map(|p| split_table_prefix(p).map(|(_, table)| table.to_owned()))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::LockQueryResponse {
            held: held.map(|(k, x, rb)| conflict(k, x, rb)),
            tables_in_use,
        }))
    }

    type PipelineStream = Pin<Box<dyn Stream<Item = Result<pb::Answers, Status>> + Send>>;

    async fn pipeline(
        &self,
        req: Request<Streaming<pb::Calls>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(CALLS_IN_FLIGHT);
        let (api, cancel) = (self.clone(), self.cancel.clone());
        // Fires when the answer stream is dropped: the caller is gone (its connection
        // closed), and registrations still waiting for a lock give up.
        let caller_gone = CancellationToken::new();
        let gone_with_the_stream = caller_gone.clone().drop_guard();
        tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
            // Stops reading at shutdown, so the connection can close.
            while let Some(Ok(Some(batch))) = cancel.run_until_cancelled(inbound.message()).await {
                if !super::pipeline::run(&api, batch.calls, &tx, &limit, &caller_gone).await {
                    return;
                }
            }
        });
        let out = batches(rx).map(move |chunks: Vec<Vec<pb::Answer>>| {
            let _held_until_the_stream_is_dropped = &gone_with_the_stream;
            Ok(pb::Answers {
                answers: chunks.into_iter().flatten().collect(),
            })
        });
        Ok(Response::new(Box::pin(
            out.take_until(self.cancel.clone().cancelled_owned()),
        )))
    }

    type Phase2Stream = Pin<Box<dyn Stream<Item = Result<pb::Phase2Down, Status>> + Send>>;

    async fn phase2(
        &self,
        req: Request<Streaming<pb::Phase2Up>>,
    ) -> Result<Response<Self::Phase2Stream>, Status> {
        let peer = req
            .remote_addr()
            .map_or_else(|| "an unknown address".to_owned(), |a| a.to_string());
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::Phase2Up {
                msg: Some(pb::phase2_up::Msg::Hello(h)),
            }))) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a Phase2 stream must start with Hello",
                ));
            }
        };
        let (id, rx) = self
            .coord
            .phase2
            .connect(&hello.resource_ids)
            .map_err(to_status)?;
        let guard = Connected(self.coord.clone(), id);
        let notices = hello.table_locks.then(|| {
            self.coord.tables.subscribe(
                id,
                &hello.resource_ids,
                &hello.instance,
                &format!("proxy {:?} at {peer}", hello.worker_name),
            )
        });
        tracing::info!(worker = %hello.worker_name, resources = ?hello.resource_ids, table_locks = hello.table_locks, "phase-2 stream connected");
        let (coord, cancel) = (self.coord.clone(), self.cancel.clone());
        tokio::spawn(async move {
            let _guard = guard;
            let limit = Arc::new(Semaphore::new(ANSWERS_IN_FLIGHT));
            while let Some(Ok(Some(msg))) = cancel.run_until_cancelled(inbound.message()).await {
                let results = match msg.msg {
                    Some(pb::phase2_up::Msg::Result(r)) => vec![r],
                    Some(pb::phase2_up::Msg::Results(rs)) => rs.results,
                    Some(pb::phase2_up::Msg::TableAck(a)) => {
                        coord.tables.ack(id, a.seq, &a.seqs);
                        continue;
                    }
                    _ => continue,
                };
                let mut answers = Vec::with_capacity(results.len());
                for r in results {
                    let (Ok(x), Some(o)) = (Xid::parse(&r.xid), outcome(r.outcome)) else {
                        tracing::warn!(xid = %r.xid, "malformed phase-2 answer ignored");
                        continue;
                    };
                    if !r.detail.is_empty() {
                        tracing::info!(xid = %x, branch = r.branch_id, outcome = %o, detail = %r.detail, "phase-2 answer");
                    }
                    answers.push((x, r.branch_id, o));
                }
                // The embedded store takes the whole message at once; the rest
                // (Redis) come back and run one task per answer.
                for (x, branch_id, o) in coord.phase2_results(answers).await {
                    let Ok(permit) = limit.clone().acquire_owned().await else {
                        return;
                    };
                    let coord = coord.clone();
                    tokio::spawn(async move {
                        if let Err(e) = coord.phase2_result(x.clone(), branch_id, o).await {
                            tracing::warn!(xid = %x, branch = branch_id, error = %e, "phase-2 answer not applied");
                        }
                        drop(permit);
                    });
                }
            }
            tracing::info!(worker = %hello.worker_name, "phase-2 stream closed");
        });
        let work = batches(rx).map(|ws| {
            Ok(pb::Phase2Down {
                work: ws.into_iter().map(work).collect(),
                tables: Vec::new(),
            })
        });
        let stop = self.cancel.clone().cancelled_owned();
        let Some((notices, kill)) = notices else {
            return Ok(Response::new(Box::pin(work.take_until(stop))));
        };
        // A subscriber that falls behind on notices is cut off (`kill`): its proxy
        // then stops trusting its table view.
        let notices = tokio_stream::wrappers::ReceiverStream::new(notices).map(|d| Ok(down(d)));
        let out = futures::stream::select(work, notices)
            .take_until(kill.cancelled_owned())
            .take_until(stop);
        Ok(Response::new(Box::pin(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_keep_within_their_byte_budget_and_a_large_item_goes_alone() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        for size in [3usize, 4, 2, 9, 1, 1] {
            tx.send(size).await.unwrap();
        }
        drop(tx);
        let got: Vec<Vec<usize>> = batches_within(rx, 8, |&n| n).collect().await;
        assert_eq!(got, [vec![3, 4], vec![2], vec![9], vec![1, 1]]);
    }
}
