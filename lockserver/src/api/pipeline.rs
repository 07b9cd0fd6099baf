//! The batch path of the pipelined gRPC stream (embedded store only).
//!
//! The begins, registrations, reports and commits of one received `Calls` message
//! are applied together: one hold of the store's state lock, one log append, one
//! wait for its fsync, one message of answers. Everything else (status, rollback,
//! lock queries, a registration that must wait for a lock or for a table to be
//! announced to the proxies, and every call when the store is Redis) runs as before,
//! one task per call through its unary twin.
//!
//! Owns: nothing beyond one received batch. Never decides anything (the store's
//! `core` does) and never answers a call differently from its unary twin.
//! Invariant: an answer whose records must be durable is sent only once they are.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::grpc::{GrpcApi, failure, register_command, register_result, report_command, xid};
use crate::core::txn::{Command, Reply};
use crate::error::Error;
use crate::proto as pb;
use crate::proto::answer::Result as A;
use crate::tables::Gate;

/// Answers travel in chunks: one per call on the per-call path, one per batch here.
pub(crate) type AnswerTx = mpsc::Sender<Vec<pb::Answer>>;

/// The operation a batched call runs, for its answer and its metric.
#[derive(Clone, Copy)]
enum Op {
    Begin,
    Register { wait_ms: u32 },
    Report,
    Commit,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Begin => "begin",
            Op::Register { .. } => "register",
            Op::Report => "report",
            Op::Commit => "commit",
        }
    }
}

/// A call sorted: applied in the batch, answered at once (it did not decode), or run
/// on its own.
enum Sorted {
    Batch(u64, Op, Command),
    Answer(pb::Answer),
    Alone(pb::Call),
}

fn answer(id: u64, result: A) -> pb::Answer {
    pb::Answer {
        id,
        result: Some(result),
    }
}

fn sort(api: &GrpcApi, call: pb::Call) -> Sorted {
    use pb::call::Op as C;
    let id = call.id;
    let decoded = match call.op {
        Some(C::Begin(r)) => {
            let timeout_ms = if r.timeout_ms > 0 {
                r.timeout_ms
            } else {
                api.coord.config.default_timeout_ms
            };
            let xid = api.coord.next_xid();
            Ok((Op::Begin, Command::Begin { xid, timeout_ms }))
        }
        Some(C::Register(r)) => {
            let wait_ms = r.wait_ms;
            register_command(r).map(|cmd| (Op::Register { wait_ms }, cmd))
        }
        Some(C::Report(r)) => report_command(r).map(|cmd| (Op::Report, cmd)),
        Some(C::Commit(r)) => xid(&r.xid).map(|x| (Op::Commit, Command::Commit { xid: x })),
        op => return Sorted::Alone(pb::Call { id, op }),
    };
    match decoded {
        Ok((op, cmd)) => Sorted::Batch(id, op, cmd),
        Err(s) => Sorted::Answer(answer(id, failure(s))),
    }
}

/// Runs one received batch of calls; answers go to `tx`. Returns false once the
/// stream is going away (stop reading).
pub(crate) async fn run(
    api: &GrpcApi,
    calls: Vec<pb::Call>,
    tx: &AnswerTx,
    limit: &Arc<Semaphore>,
    caller_gone: &CancellationToken,
) -> bool {
    let Some(store) = api.coord.embedded() else {
        for call in calls {
            if !alone(api, call, tx, limit, caller_gone).await {
                return false;
            }
        }
        return true;
    };
    let started = Instant::now();
    let coord = &api.coord;
    let (mut ops, mut cmds, mut now) = (Vec::new(), Vec::new(), Vec::new());
    for call in calls {
        match sort(api, call) {
            Sorted::Batch(id, op, cmd) => match coord.admit() {
                Ok(()) => {
                    ops.push((id, op));
                    cmds.push(cmd);
                }
                Err(e) => now.push(answer(id, failure(super::grpc::to_status(e)))),
            },
            Sorted::Answer(a) => now.push(a),
            Sorted::Alone(call) => {
                if !alone(api, call, tx, limit, caller_gone).await {
                    return false;
                }
            }
        }
    }
    let (applied, announce) = {
        let gate = coord.tables.gate(coord.now());
        let announce = take_unannounced(&gate, &mut ops, &mut cmds);
        // The gate is held until the locks are in the table.
        (coord.exec_now(store, &cmds), announce)
    };
    // Registrations on tables not announced yet wait for the proxies on their own.
    for (id, wait_ms, cmd) in announce {
        if !spawn_register(api, tx, limit, id, wait_ms, cmd, caller_gone).await {
            return false;
        }
    }
    let mut later = Vec::new();
    let mut released = 0;
    for (((id, op), cmd), (result, wait)) in ops.into_iter().zip(cmds).zip(applied.results) {
        let result = match (op, result, cmd) {
            // The lock is held by a transaction that may still end soon: wait for it
            // on the per-call path (it retries on every release).
            (
                Op::Register { wait_ms },
                Err(e @ Error::LockConflict { .. }),
                cmd @ Command::Register { .. },
            ) if wait_ms > 0 && e.is_retryable() => {
                if !spawn_register(api, tx, limit, id, wait_ms, cmd, caller_gone).await {
                    return false;
                }
                continue;
            }
            // An XA branch still preparing: wait for its report on the per-call path.
            (Op::Commit, Err(Error::PhaseOnePending { .. }), Command::Commit { xid }) => {
                if !spawn_commit(api, tx, limit, id, xid).await {
                    return false;
                }
                continue;
            }
            (op, result, cmd) => to_answer(api, op, result, &cmd),
        };
        if wait {
            later.push((id, op, result));
        } else {
            coord.metrics.observe(op.name(), started);
            now.push(answer(id, result));
            released += 1;
        }
    }
    coord.release(released);
    if !now.is_empty() && tx.send(now).await.is_err() {
        return false;
    }
    let Some(durable) = applied.durable.filter(|_| !later.is_empty()) else {
        return true;
    };
    let Ok(permit) = limit.clone().acquire_many_owned(later.len() as u32).await else {
        return false;
    };
    let (api, tx) = (api.clone(), tx.clone());
    tokio::spawn(async move {
        let coord = &api.coord;
        let failed = match coord.embedded() {
            Some(store) => store.durable(durable).await.err(),
            None => Some(Error::ShuttingDown),
        }
        .map(super::grpc::to_status);
        let n = later.len();
        let answers = later
            .into_iter()
            .map(|(id, op, result)| {
                coord.metrics.observe(op.name(), started);
                match &failed {
                    None => answer(id, result),
                    Some(s) => answer(id, failure(s.clone())),
                }
            })
            .collect();
        let _ = tx.send(answers).await;
        coord.release(n);
        drop(permit);
    });
    true
}

/// Takes the registrations out of a batch that would lock a table not ready for
/// locks yet (`tables`); allocates nothing when there is none (the usual case).
fn take_unannounced(
    gate: &Gate<'_>,
    ops: &mut Vec<(u64, Op)>,
    cmds: &mut Vec<Command>,
) -> Vec<(u64, u32, Command)> {
    let uncovered = |c: &Command| matches!(c, Command::Register { keys, .. } if !gate.covers(keys));
    if !cmds.iter().any(uncovered) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let (mut kept_ops, mut kept) = (Vec::with_capacity(ops.len()), Vec::new());
    for ((id, op), cmd) in ops.drain(..).zip(cmds.drain(..)) {
        match op {
            Op::Register { wait_ms } if uncovered(&cmd) => out.push((id, wait_ms, cmd)),
            _ => {
                kept_ops.push((id, op));
                kept.push(cmd);
            }
        }
    }
    *ops = kept_ops;
    *cmds = kept;
    out
}

/// Runs a registration on its own task through `Coordinator::register` (lock waits,
/// table announcements). Returns false once the stream is going away.
async fn spawn_register(
    api: &GrpcApi,
    tx: &AnswerTx,
    limit: &Arc<Semaphore>,
    id: u64,
    wait_ms: u32,
    cmd: Command,
    caller_gone: &CancellationToken,
) -> bool {
    if !matches!(cmd, Command::Register { .. }) {
        return true;
    }
    let caller_gone = caller_gone.clone();
    spawn_admitted(api, tx, limit, id, async move |api: GrpcApi| {
        let wait = Duration::from_millis(wait_ms.into());
        register_result(api.coord.register(cmd, wait, &caller_gone).await)
    })
    .await
}

/// Runs a commit on its own task through `Coordinator::commit`, which waits for XA
/// branches still preparing. Returns false once the stream is going away.
async fn spawn_commit(
    api: &GrpcApi,
    tx: &AnswerTx,
    limit: &Arc<Semaphore>,
    id: u64,
    xid: crate::core::txn::Xid,
) -> bool {
    spawn_admitted(api, tx, limit, id, async move |api: GrpcApi| {
        match api.coord.commit(xid).await {
            Ok(status) => A::Status(pb::StatusResponse {
                status: status.to_string(),
            }),
            Err(e) => failure(super::grpc::to_status(e)),
        }
    })
    .await
}

/// Runs one admitted call of a batch on its own task, with a permit of `limit`; its
/// admission is given back once it is answered. Returns false once the stream is
/// going away.
async fn spawn_admitted<F>(
    api: &GrpcApi,
    tx: &AnswerTx,
    limit: &Arc<Semaphore>,
    id: u64,
    call: impl FnOnce(GrpcApi) -> F + Send + 'static,
) -> bool
where
    F: std::future::Future<Output = A> + Send,
{
    let Ok(permit) = limit.clone().acquire_owned().await else {
        return false;
    };
    let (api, tx) = (api.clone(), tx.clone());
    tokio::spawn(async move {
        let result = call(api.clone()).await;
        let _ = tx.send(vec![answer(id, result)]).await;
        api.coord.release(1);
        drop(permit);
    });
    true
}

/// The answer its unary twin would give.
fn to_answer(
    api: &GrpcApi,
    op: Op,
    result: crate::Result<crate::store::Applied>,
    cmd: &Command,
) -> A {
    let reply = match result {
        Ok(a) => a.reply,
        Err(e) => {
            return match op {
                Op::Register { .. } => register_result(Err(e).inspect_err(|e| {
                    if matches!(e, Error::LockConflict { .. }) {
                        api.coord.metrics.conflicts.inc();
                    }
                })),
                _ => failure(super::grpc::to_status(e)),
            };
        }
    };
    match (op, reply, cmd) {
        (Op::Begin, Reply::Began { deadline }, Command::Begin { xid, .. }) => {
            A::Begin(pb::BeginResponse {
                xid: xid.to_string(),
                deadline_ms: deadline,
            })
        }
        (Op::Register { .. }, Reply::Registered { branch_id }, _) => register_result(Ok(branch_id)),
        (Op::Report, _, _) => A::Report(pb::ReportResponse {}),
        (Op::Commit, Reply::Status(s), _) => A::Status(pb::StatusResponse {
            status: s.to_string(),
        }),
        _ => failure(super::grpc::to_status(Error::Corrupt {
            what: "a command answered with the wrong reply",
        })),
    }
}

/// One call on its own task, through its unary twin.
async fn alone(
    api: &GrpcApi,
    call: pb::Call,
    tx: &AnswerTx,
    limit: &Arc<Semaphore>,
    caller_gone: &CancellationToken,
) -> bool {
    let Ok(permit) = limit.clone().acquire_owned().await else {
        return false;
    };
    let (api, tx, caller_gone) = (api.clone(), tx.clone(), caller_gone.clone());
    tokio::spawn(async move {
        let answer = api.one_call(call, &caller_gone).await;
        let _ = tx.send(vec![answer]).await;
        drop(permit);
    });
    true
}
