//! The crate's one error type, with the classifiers callers branch on.
//!
//! Owns: every failure the lockserver and its client can report. Never maps itself to
//! a wire status (that is `api::grpc::to_status` and `api::http`'s `IntoResponse`,
//! one place each). Invariant: client mistakes leave state unchanged.

use std::path::PathBuf;

use crate::core::locks::{KeyError, LockKey};
use crate::core::txn::{GlobalStatus, Xid};

/// Everything that can go wrong in the lockserver or its client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed or out of range.
    #[error("invalid request: {what}")]
    InvalidArgument {
        /// Which rule the request broke.
        what: &'static str,
    },
    /// A lock key is not in the canonical encoding.
    #[error("invalid lock key: {0}")]
    BadLockKey(#[from] KeyError),
    /// No such transaction (never existed, or finished and forgotten).
    #[error("unknown transaction {xid}")]
    UnknownXid {
        /// The xid asked for.
        xid: Xid,
    },
    /// No such branch in the transaction.
    #[error("transaction {xid} has no branch {branch_id}")]
    UnknownBranch {
        /// Transaction.
        xid: Xid,
        /// Branch asked for.
        branch_id: u64,
    },
    /// An xid was begun twice.
    #[error("transaction {xid} already exists")]
    DuplicateXid {
        /// Transaction.
        xid: Xid,
    },
    /// The operation is not allowed in the transaction's current status
    /// (duplicate commit, commit after a timeout rollback, registration after the end...).
    #[error("cannot {op}: transaction {xid} is {status}")]
    InvalidState {
        /// Transaction.
        xid: Xid,
        /// Its status, unchanged.
        status: GlobalStatus,
        /// What was attempted.
        op: &'static str,
    },
    /// The transaction is past its timeout; the lockserver is rolling it back.
    /// A commit while an XA branch has not reported its prepare: committing then would
    /// leave that branch to a PREPARE that may never come.
    #[error("cannot commit yet: XA branch {branch_id} of {xid} has not reported its prepare")]
    PhaseOnePending {
        /// The transaction.
        xid: Xid,
        /// The branch still in phase 1.
        branch_id: u64,
    },
    #[error("transaction {xid} has timed out and is being rolled back")]
    Expired {
        /// Transaction.
        xid: Xid,
    },
    /// A lock key is held by another global transaction.
    #[error("lock {key} is held by {holder}{}", if *holder_rolling_back { " (rolling back)" } else { "" })]
    LockConflict {
        /// The contested key.
        key: LockKey,
        /// Who holds it.
        holder: Xid,
        /// The holder is rolling back: waiting is pointless, fail fast.
        holder_rolling_back: bool,
    },
    /// A configured bound was hit.
    #[error("limit exceeded: {what} (at most {limit})")]
    LimitExceeded {
        /// Which bound.
        what: &'static str,
        /// Its value.
        limit: usize,
    },
    /// A registration would lock a table not yet announced to every proxy of its
    /// resource, and some did not acknowledge the announcement within
    /// `table_ack_timeout_ms`. Nothing was registered or locked; retrying may succeed.
    /// Reaches a client as `Rpc { code: Aborted, .. }`, as a conflict does.
    #[error(
        "table {table} of {resource} may not be locked yet: not every proxy acknowledged its announcement within {waited_ms} ms (waited for {waiting_for}; nothing registered; retry)"
    )]
    Unacknowledged {
        /// The resource.
        resource: String,
        /// The table still waiting for acknowledgements.
        table: String,
        /// How long the registration waited.
        waited_ms: u64,
        /// What it waited for: which proxy's acknowledgement (its worker name and
        /// address), or the lease of which closed stream.
        waiting_for: String,
    },
    /// Too many requests in flight; try again.
    #[error("lockserver overloaded")]
    Overloaded,
    /// The server is shutting down.
    #[error("lockserver shutting down")]
    ShuttingDown,
    /// An operation took longer than its bound.
    #[error("timed out: {op}")]
    Timeout {
        /// What timed out.
        op: &'static str,
    },
    /// A decision (commit or rollback) was sent, and its answer never came or said the
    /// lockserver itself could not tell whether it landed: it may have been taken.
    /// Asking again is safe (a decision taken answers again, writing nothing).
    #[error(
        "the outcome of {op} is unknown ({cause}): call it again, or ask the transaction's status"
    )]
    OutcomeUnknown {
        /// The decision sent.
        op: &'static str,
        /// Why no answer came.
        cause: String,
    },
    /// Concurrent updates to one transaction kept colliding (Redis store).
    #[error("too much contention on transaction {xid}")]
    Contention {
        /// Transaction.
        xid: Xid,
    },
    /// Disk I/O failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A stored record could not be decoded.
    #[error("corrupt store data: {what}")]
    Corrupt {
        /// What was corrupt.
        what: &'static str,
    },
    /// The embedded store's log is damaged where no crash could have torn it (before
    /// the end of its snapshot, or of a batch written after the damage): truncating it
    /// there, as after a torn append, would lose acknowledged decisions.
    #[error(
        "{path} is damaged at byte {damaged_at}, before records written whole (their end frame is at byte {proof_at}): refusing to start rather than drop acknowledged decisions (restore the file; to accept losing everything from the damage on, truncate it: truncate -s {damaged_at} {path})",
        path = path.display()
    )]
    DamagedLog {
        /// The log file.
        path: PathBuf,
        /// Where its first damaged frame begins.
        damaged_at: u64,
        /// Where the end frame of a snapshot or a later batch, written whole, lies.
        proof_at: u64,
    },
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The configuration is invalid; every problem found.
    #[error("invalid configuration: {}", problems.join("; "))]
    Config {
        /// One line per problem.
        problems: Vec<String>,
    },
    /// The client could not reach the lockserver.
    #[error("lockserver unreachable: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The lockserver answered with an error status (client side).
    #[error("lockserver: {code:?}: {message}")]
    Rpc {
        /// gRPC code.
        code: tonic::Code,
        /// Server's message.
        message: String,
    },
}

impl Error {
    /// Trying the same request again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::LockConflict {
                holder_rolling_back,
                ..
            } => !holder_rolling_back,
            Error::Overloaded
            | Error::PhaseOnePending { .. }
            | Error::Unacknowledged { .. }
            | Error::Timeout { .. }
            | Error::OutcomeUnknown { .. }
            | Error::Contention { .. }
            | Error::Transport(_)
            | Error::Redis(_) => true,
            Error::Rpc { code, .. } => {
                matches!(
                    code,
                    tonic::Code::Unavailable
                        | tonic::Code::ResourceExhausted
                        | tonic::Code::Aborted
                        | tonic::Code::DeadlineExceeded
                )
            }
            _ => false,
        }
    }

    /// The global transaction is decided, timed out or forgotten (or never was):
    /// nothing can register in it any more, so a session bound to it is bound to nothing.
    pub fn transaction_is_over(&self) -> bool {
        match self {
            Error::UnknownXid { .. } | Error::InvalidState { .. } | Error::Expired { .. } => true,
            Error::Rpc { code, .. } => {
                matches!(
                    code,
                    tonic::Code::NotFound | tonic::Code::FailedPrecondition
                )
            }
            _ => false,
        }
    }

    /// The lockserver refused the request as it stands (malformed, or moot in the
    /// transaction's state): sending it again changes nothing.
    pub fn is_refusal(&self) -> bool {
        self.transaction_is_over()
            || self.is_limit()
            || match self {
                Error::InvalidArgument { .. }
                | Error::BadLockKey(_)
                | Error::UnknownBranch { .. } => true,
                Error::Rpc { code, .. } => matches!(
                    code,
                    tonic::Code::InvalidArgument
                        | tonic::Code::Unimplemented
                        | tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                ),
                _ => false,
            }
    }

    /// A configured bound refused the request (here or, over gRPC, on the lockserver):
    /// the same request will never pass.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            Error::LimitExceeded { .. }
                | Error::Rpc {
                    code: tonic::Code::OutOfRange,
                    ..
                }
        )
    }

    /// The caller sent something wrong; not the server's fault, not logged as an error.
    pub fn is_client_fault(&self) -> bool {
        match self {
            Error::InvalidArgument { .. }
            | Error::BadLockKey(_)
            | Error::UnknownXid { .. }
            | Error::UnknownBranch { .. }
            | Error::DuplicateXid { .. }
            | Error::InvalidState { .. }
            | Error::Expired { .. }
            | Error::LockConflict { .. }
            | Error::LimitExceeded { .. }
            | Error::Config { .. } => true,
            Error::Rpc { code, .. } => matches!(
                code,
                tonic::Code::InvalidArgument
                    | tonic::Code::OutOfRange
                    | tonic::Code::NotFound
                    | tonic::Code::AlreadyExists
                    | tonic::Code::FailedPrecondition
            ),
            _ => false,
        }
    }

    /// The connection this happened on should be dropped and made again.
    pub fn closes_connection(&self) -> bool {
        matches!(self, Error::ShuttingDown | Error::Transport(_))
            || matches!(
                self,
                Error::Rpc {
                    code: tonic::Code::Unavailable,
                    ..
                }
            )
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a command ends: success, or its error printed as one line (`program: what:
/// cause`) and exit status 1.
pub fn exit_code(
    program: &str,
    result: std::result::Result<(), Box<dyn std::error::Error>>,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {}", chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes as one line (`outer: cause: root cause`), each cause left
/// out when the text before it already says it: what a command prints when it fails.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}
