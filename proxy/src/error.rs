//! `proxy::Error`: every way a proxy session or process can fail, with the classifiers
//! callers branch on. SQLSTATEs and MySQL codes are assigned here and only here.

use crate::wire::mysql::PacketError as MysqlPacketError;
use crate::wire::mysql::errcode::MyErr;
use crate::wire::pg::FrameError;
use crate::wire::pg::sqlstate::SqlState;
use std::io;

/// What a write refused for a holder that is rolling back is told to do.
const ROLLING_BACK_HINT: &str = " and is rolling back, which needs the rows this transaction has locked: end the transaction, then retry";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Frame(#[from] FrameError),

    /// A MySQL packet over the size cap, or with the wrong sequence id.
    #[error("{0}")]
    MysqlPacket(#[from] MysqlPacketError),

    #[error("malformed {what} message")]
    Malformed { what: &'static str },

    /// A whole command that does not decode, answered as the server answers it: the
    /// stream is still at a message boundary, so the session goes on.
    #[error("malformed {what}")]
    MalformedCommand { what: &'static str },

    /// A COM_STMT_EXECUTE whose parameter values do not decode, answered as MariaDB
    /// answers it; the session goes on.
    #[error("Incorrect arguments to mysqld_stmt_execute")]
    ExecuteArguments,

    #[error("unexpected message type {tag:#04x} {context}")]
    UnexpectedMessage { tag: u8, context: &'static str },

    #[error("unsupported startup request code {0}")]
    UnsupportedStartup(i32),

    #[error("{what} is not supported through tandem")]
    Unsupported { what: &'static str },

    #[error("could not connect to the database at {addr}: {source}")]
    UpstreamConnect { addr: String, source: io::Error },

    #[error("connecting to the database at {addr} timed out")]
    UpstreamConnectTimeout { addr: String },

    #[error("lost the connection to the database: {0}")]
    UpstreamIo(io::Error),

    #[error("the database closed the connection")]
    UpstreamClosed,

    #[error("the database sent an invalid message: {0}")]
    UpstreamProtocol(&'static str),

    #[error("client connection: {0}")]
    ClientIo(io::Error),

    #[error("TLS handshake with the client failed: {0}")]
    TlsHandshake(io::Error),

    #[error("too many client connections (the limit is {limit})")]
    TooManyConnections { limit: usize },

    #[error("tandem is shutting down")]
    ShuttingDown,

    #[error("side connection: {0}")]
    SidePool(#[from] deadpool_postgres::PoolError),

    #[error("side connection: {}", side_query_detail(.0))]
    SideQuery(#[from] tokio_postgres::Error),

    #[error("{0}")]
    Lockserver(#[from] tandem_lockserver::Error),

    #[error(
        "no global transaction is bound to this session: call tandem_begin() or tandem_join() first"
    )]
    NotBound,

    #[error(
        "this session is already bound to global transaction {xid}: end it or call tandem_leave() first"
    )]
    AlreadyBound { xid: String },

    #[error("global transaction {xid} is {status}, not open for new work")]
    NotJoinable { xid: String, status: String },

    #[error("end the local transaction (COMMIT or ROLLBACK) before {what}")]
    LocalTransactionOpen { what: &'static str },

    #[error("{0}")]
    BadControlCall(String),

    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    InFailedTransaction,

    #[error("{0}")]
    Undo(#[from] tandem_undo::Error),

    #[error("table {table} does not exist")]
    UnknownTable { table: String },

    /// A PostgreSQL Bind of the unnamed statement where the client has none (a simple
    /// Query dropped it): the server's own error for it.
    #[error("unnamed prepared statement does not exist")]
    UnnamedStatementGone,

    /// A MySQL execute of a statement id the session never prepared (or closed): the
    /// server's own error for it.
    #[error("Unknown prepared statement handler ({id}) given to {given_to}")]
    UnknownStatement { id: u32, given_to: &'static str },

    #[error(
        "a row of {table} changed without a before image (it appeared after tandem read the rows); retry the transaction"
    )]
    Uncaptured { table: String },

    /// An INSERT (IGNORE, REPLACE, upsert) whose rows tandem could not read back by the
    /// keys it gave: the server stored a key otherwise than it was written, so retrying
    /// would fail the same way.
    #[error(
        "an INSERT into {table} whose rows tandem cannot find again by the keys it gives (the server stores a key otherwise than written: a BINARY key padded, a number rounded, a string converted), in a global transaction; the local transaction was rolled back. Write the keys as the server stores them"
    )]
    InsertedUnseen { table: String },

    /// A multi-row upsert or REPLACE whose row count does not add up to the rows tandem
    /// read before and after it: its rows met one another on a unique key (a secondary
    /// key given twice, keys equal under their collation), or a key was stored
    /// otherwise than written and met another row. Its before image locked every row
    /// and gap its keys name, so nothing else came between, and a retry would fail the
    /// same way.
    #[error(
        "an upsert or REPLACE into {table} whose rows tandem cannot account for (its VALUES rows meet one another on a unique key: one key given twice, or keys equal under their collation; or a key stored otherwise than written meets another row), in a global transaction; the local transaction was rolled back. Give each key once, as the server stores it"
    )]
    UpsertDoesNotAddUp { table: String },

    /// The write's table name resolved, where it ran, to another table than the one
    /// tandem read the metadata of (the client's search_path changed in a way tandem
    /// could not see, or the table was replaced), or the rows it returned have other
    /// columns than that metadata (DDL from elsewhere): the local transaction is rolled
    /// back.
    #[error(
        "{table} is no longer the table tandem read the definition of (the session's search_path changed, or the table was replaced or altered since); the write cannot stay (outside a transaction block it was rolled back; inside one, roll the block back): retry the transaction"
    )]
    TableChanged { table: String },

    /// tandem's read of a before image failed after the write it travelled with ran
    /// (both were in one flight); the local transaction is rolled back.
    #[error(
        "tandem could not read the before image of {table} ({cause}); the write ran without it, so the transaction was rolled back"
    )]
    ImageUnread { table: String, cause: String },

    #[error("a row is locked by unfinished global transaction {holder}; retry the transaction")]
    GloballyLocked { holder: String },

    /// The client cancelled its statement while tandem waited for a global lock.
    #[error("canceling statement due to user request (while waiting for a global lock)")]
    Cancelled,

    /// The statement's own time limit (MariaDB's `SET STATEMENT max_statement_time = …
    /// FOR`, how Connector/J sets a query timeout) ran out while tandem waited for a
    /// global lock.
    #[error(
        "Query execution was interrupted (max_statement_time exceeded while waiting for a global lock)"
    )]
    StatementTimeout,

    #[error(
        "could not change a row of {table}: unfinished global transaction {holder} holds it{}",
        if *rolling_back { ROLLING_BACK_HINT } else { "" }
    )]
    RowGloballyLocked {
        table: String,
        holder: String,
        /// The holder is rolling back, and its undo needs the rows the refused write's
        /// transaction has locked: retrying before that transaction ends is refused
        /// again.
        rolling_back: bool,
    },

    /// A write tandem cannot check row by row (TRUNCATE, MERGE, a write in a WITH
    /// clause, a multi-statement query) outside a global transaction, to a table that
    /// may hold global locks.
    #[error(
        "could not run a statement tandem cannot check row by row against global locks (such as TRUNCATE, a multi-statement query that updates or deletes, or an EXECUTE of a statement tandem did not see prepared): {} may hold locks of unfinished global transactions; send each UPDATE or DELETE as a statement of its own, or retry once those transactions have ended",
        named_table(table)
    )]
    UncheckedWriteLocked { table: String },

    /// A write outside a global transaction whose foreign-key actions would change
    /// rows of a table that may hold global locks (which tandem does not check row by
    /// row).
    #[error(
        "could not change rows of {table}: foreign-key actions (ON DELETE / ON UPDATE CASCADE, SET NULL, SET DEFAULT) would change rows of {reached}, which may hold locks of unfinished global transactions; retry once those transactions have ended"
    )]
    CascadeLocked { table: String, reached: String },

    /// A write outside a global transaction through a view (or a table with rewrite
    /// rules) that would change rows of a table that may hold global locks, which
    /// tandem does not check row by row.
    #[error(
        "could not write through {relation}: it changes rows of {}, which may hold locks of unfinished global transactions; retry once those transactions have ended",
        named_table(table)
    )]
    ReachedLocked { relation: String, table: String },

    #[error("tandem's own statement failed: {message}")]
    Injected { message: String },

    /// The branch's undo row met the GlobalFinished marker that a rollback of its global
    /// transaction left while the branch was committing: the local transaction is rolled
    /// back, and the global one is over.
    #[error(
        "global transaction {xid} was rolled back while this branch committed; the local transaction was rolled back"
    )]
    RolledBackDuringCommit { xid: String },

    /// A branch's COMMIT whose registration failed for a while (the lockserver timed
    /// out or could not be reached): its local transaction was rolled back, and may be
    /// run again.
    #[error("the transaction was rolled back at COMMIT: {cause}")]
    RolledBackAtCommit { cause: String },

    /// A statement on a MariaDB connection that holds a prepared XA branch, from a
    /// session bound to that branch's transaction: waiting for the decision could wait
    /// for this very session.
    #[error(
        "this connection holds the prepared XA branch of global transaction {xid}, and MariaDB runs nothing else on it until the transaction is decided: call tandem_commit() or tandem_rollback() first, or run the statement on another connection"
    )]
    BranchPrepared { xid: String },

    /// tandem's own statement on the client's connection met what the client's own
    /// statement could have met: a deadlock, a serialization failure, a lock or
    /// statement timeout. The client gets the backend's SQLSTATE, to retry as it would.
    #[error("{message}")]
    InjectedTransient { state: SqlState, message: String },

    /// The server's error for the client's own statement, which tandem met first (the
    /// statement did not prepare when tandem described it, or a script tandem would
    /// run otherwise than the server fails so): as it would have reached the client.
    #[error("{message}")]
    ServerError { state: SqlState, message: String },

    #[error("tandem's side connection to MySQL: {0}")]
    MysqlSide(#[from] mysql_async::Error),

    #[error("side pool for {database}: {reason}")]
    SidePoolBuild {
        database: String,
        reason: &'static str,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The backend's error (`code`, `message`) for one of tandem's own statements:
    /// `InjectedTransient` when the client would retry it, else `Injected`.
    pub fn injected(code: &str, message: String) -> Error {
        match SqlState::transient(code) {
            Some(state) => Error::InjectedTransient { state, message },
            // undefined_table: most likely undo_log, in a database never migrated.
            None if code == "42P01" => Error::Injected {
                message: format!("{message} (is undo_log created? run `tandem migrate`)"),
            },
            None => Error::Injected { message },
        }
    }

    /// The backend's error (`code`, `message`) for the describe of a client's
    /// statement: `ServerError` where the statement itself does not prepare, else as
    /// [`Error::injected`].
    pub fn describing(code: &str, message: String) -> Error {
        match SqlState::of_unprepared_statement(code) {
            Some(state) => Error::ServerError { state, message },
            None => Error::injected(code, message),
        }
    }

    /// The backend's error to one of tandem's own statements (`Error::injected`), the
    /// describe of a client's statement included.
    pub fn is_injected(&self) -> bool {
        matches!(
            self,
            Error::Injected { .. } | Error::InjectedTransient { .. } | Error::ServerError { .. }
        )
    }

    /// The SQLSTATE a PostgreSQL client sees for this error.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            Error::Cancelled | Error::StatementTimeout => SqlState::QueryCanceled,
            Error::Frame(FrameError::TooLarge { .. })
            | Error::MysqlPacket(MysqlPacketError::TooLarge { .. }) => {
                SqlState::ProgramLimitExceeded
            }
            Error::MysqlPacket(_) => SqlState::ProtocolViolation,
            Error::Frame(_)
            | Error::Malformed { .. }
            | Error::MalformedCommand { .. }
            | Error::ExecuteArguments
            | Error::UnexpectedMessage { .. }
            | Error::UnsupportedStartup(_)
            | Error::UpstreamProtocol(_) => SqlState::ProtocolViolation,
            Error::Unsupported { .. } => SqlState::FeatureNotSupported,
            Error::UpstreamConnect { .. } | Error::UpstreamConnectTimeout { .. } => {
                SqlState::UnableToConnect
            }
            Error::UpstreamIo(_) | Error::UpstreamClosed | Error::ClientIo(_) => {
                SqlState::ConnectionFailure
            }
            Error::TlsHandshake(_) => SqlState::ProtocolViolation,
            Error::TooManyConnections { .. } => SqlState::TooManyConnections,
            Error::ShuttingDown => SqlState::AdminShutdown,
            Error::SidePool(_)
            | Error::SideQuery(_)
            | Error::MysqlSide(_)
            | Error::SidePoolBuild { .. } => SqlState::InternalError,
            Error::Undo(_) | Error::InsertedUnseen { .. } | Error::UpsertDoesNotAddUp { .. } => {
                SqlState::FeatureNotSupported
            }
            Error::UnknownTable { .. } => SqlState::UndefinedTable,
            Error::UnknownStatement { .. } | Error::UnnamedStatementGone => {
                SqlState::InvalidSqlStatementName
            }
            Error::Uncaptured { .. }
            | Error::TableChanged { .. }
            | Error::ImageUnread { .. }
            | Error::GloballyLocked { .. } => SqlState::SerializationFailure,
            Error::RowGloballyLocked { .. }
            | Error::UncheckedWriteLocked { .. }
            | Error::CascadeLocked { .. }
            | Error::ReachedLocked { .. } => SqlState::LockNotAvailable,
            Error::Injected { .. } => SqlState::ObjectNotInPrerequisiteState,
            Error::InjectedTransient { state, .. } | Error::ServerError { state, .. } => *state,
            Error::RolledBackDuringCommit { .. } | Error::RolledBackAtCommit { .. } => {
                SqlState::SerializationFailure
            }
            Error::Lockserver(e) => match e {
                tandem_lockserver::Error::LockConflict { .. }
                | tandem_lockserver::Error::PhaseOnePending { .. }
                | tandem_lockserver::Error::Rpc {
                    code: tonic::Code::Aborted,
                    ..
                } => SqlState::SerializationFailure,
                tandem_lockserver::Error::InvalidState { .. }
                | tandem_lockserver::Error::Expired { .. }
                | tandem_lockserver::Error::Rpc {
                    code: tonic::Code::FailedPrecondition,
                    ..
                } => SqlState::ObjectNotInPrerequisiteState,
                // Forgotten since it ended (past the lockserver's retention): as over as
                // one decided, not a bad argument.
                e if e.transaction_is_over() => SqlState::ObjectNotInPrerequisiteState,
                tandem_lockserver::Error::OutcomeUnknown { .. } => {
                    SqlState::TransactionResolutionUnknown
                }
                e if e.is_limit() => SqlState::ProgramLimitExceeded,
                e if e.is_client_fault() => SqlState::InvalidParameterValue,
                _ => SqlState::SystemError,
            },
            Error::NotBound
            | Error::AlreadyBound { .. }
            | Error::NotJoinable { .. }
            | Error::BranchPrepared { .. } => SqlState::ObjectNotInPrerequisiteState,
            Error::LocalTransactionOpen { .. } => SqlState::ActiveSqlTransaction,
            Error::BadControlCall(_) => SqlState::InvalidParameterValue,
            Error::InFailedTransaction => SqlState::InFailedSqlTransaction,
        }
    }

    /// The message a MySQL client reads for this error: the server's own words where
    /// tandem answers as the server would (a killed wait), else the error's text.
    pub fn mysql_message(&self) -> String {
        match self {
            Error::Cancelled => {
                "Query execution was interrupted (while waiting for a global lock)".to_owned()
            }
            other => other.to_string(),
        }
    }

    /// The MySQL error a MySQL client sees for this error (`wire::mysql::errcode`).
    pub fn mysql_error(&self) -> MyErr {
        match self {
            Error::Cancelled => MyErr::QueryInterrupted,
            Error::StatementTimeout => MyErr::StatementTimeout,
            Error::MysqlPacket(MysqlPacketError::TooLarge { .. })
            | Error::Frame(FrameError::TooLarge { .. }) => MyErr::PacketTooLarge,
            Error::MysqlPacket(MysqlPacketError::OutOfOrder { .. }) => MyErr::PacketsOutOfOrder,
            Error::Frame(_)
            | Error::Malformed { .. }
            | Error::UnsupportedStartup(_)
            | Error::TlsHandshake(_) => MyErr::HandshakeError,
            Error::UnexpectedMessage { .. } => MyErr::UnknownCommand,
            Error::MalformedCommand { .. } => MyErr::MalformedPacket,
            // The global transaction cannot take the request any more (decided, timed
            // out, forgotten): not 1105, and not a code retries loop on.
            Error::Lockserver(e) if e.transaction_is_over() => MyErr::XaRmFail,
            Error::Lockserver(e) if e.is_limit() => MyErr::LockTableFull,
            // A call's argument the lockserver refuses (an xid, a timeout out of range).
            Error::Lockserver(
                tandem_lockserver::Error::InvalidArgument { .. }
                | tandem_lockserver::Error::BadLockKey(_)
                | tandem_lockserver::Error::Rpc {
                    code: tonic::Code::InvalidArgument | tonic::Code::OutOfRange,
                    ..
                },
            ) => MyErr::WrongArguments,
            // The session's binding is not in the state the call needs.
            Error::BranchPrepared { .. }
            | Error::NotBound
            | Error::AlreadyBound { .. }
            | Error::NotJoinable { .. } => MyErr::XaRmFail,
            Error::LocalTransactionOpen { .. } => MyErr::TransactionInProgress,
            Error::BadControlCall(_) | Error::ExecuteArguments => MyErr::WrongArguments,
            Error::Unsupported { .. }
            | Error::Undo(_)
            | Error::InsertedUnseen { .. }
            | Error::UpsertDoesNotAddUp { .. } => MyErr::NotSupportedYet,
            Error::UpstreamConnect { .. } | Error::UpstreamConnectTimeout { .. } => {
                MyErr::CantConnect
            }
            Error::UpstreamIo(_)
            | Error::UpstreamClosed
            | Error::UpstreamProtocol(_)
            | Error::ClientIo(_) => MyErr::NetReadError,
            Error::TooManyConnections { .. } => MyErr::TooManyConnections,
            Error::ShuttingDown => MyErr::ServerShutdown,
            // A conflict on the lockserver (a lock, or a commit waiting for an XA branch
            // still preparing): the wait ran out, retry.
            Error::GloballyLocked { .. }
            | Error::RowGloballyLocked { .. }
            | Error::UncheckedWriteLocked { .. }
            | Error::CascadeLocked { .. }
            | Error::ReachedLocked { .. }
            | Error::Lockserver(
                tandem_lockserver::Error::LockConflict { .. }
                | tandem_lockserver::Error::PhaseOnePending { .. }
                | tandem_lockserver::Error::Rpc {
                    code: tonic::Code::Aborted,
                    ..
                },
            ) => MyErr::LockWaitTimeout,
            // 1213 says what happened to the transaction: it was rolled back.
            Error::Uncaptured { .. }
            | Error::TableChanged { .. }
            | Error::ImageUnread { .. }
            | Error::RolledBackDuringCommit { .. }
            | Error::RolledBackAtCommit { .. } => MyErr::Deadlock,
            Error::SidePool(_)
            | Error::SideQuery(_)
            | Error::SidePoolBuild { .. }
            | Error::MysqlSide(_)
            | Error::Lockserver(_)
            | Error::InFailedTransaction
            | Error::Injected { .. }
            | Error::InjectedTransient { .. }
            | Error::ServerError { .. } => MyErr::Unknown,
            Error::UnknownTable { .. } => MyErr::NoSuchTable,
            Error::UnknownStatement { .. } | Error::UnnamedStatementGone => {
                MyErr::UnknownStmtHandler
            }
        }
    }

    /// Whether the session must end after reporting this error. Protocol-level faults
    /// leave the stream at an unknown message boundary, so nothing after them is safe.
    pub fn closes_connection(&self) -> bool {
        !matches!(
            self,
            Error::Unsupported { .. }
                | Error::MalformedCommand { .. }
                | Error::ExecuteArguments
                | Error::BranchPrepared { .. }
                | Error::SidePool(_)
                | Error::SideQuery(_)
                | Error::MysqlSide(_)
                | Error::Lockserver(_)
                | Error::NotBound
                | Error::AlreadyBound { .. }
                | Error::NotJoinable { .. }
                | Error::LocalTransactionOpen { .. }
                | Error::BadControlCall(_)
                | Error::InFailedTransaction
                | Error::Undo(_)
                | Error::UnknownTable { .. }
                | Error::UnknownStatement { .. }
                | Error::UnnamedStatementGone
                | Error::Uncaptured { .. }
                | Error::InsertedUnseen { .. }
                | Error::UpsertDoesNotAddUp { .. }
                | Error::TableChanged { .. }
                | Error::ImageUnread { .. }
                | Error::GloballyLocked { .. }
                | Error::RowGloballyLocked { .. }
                | Error::UncheckedWriteLocked { .. }
                | Error::CascadeLocked { .. }
                | Error::ReachedLocked { .. }
                | Error::Injected { .. }
                | Error::InjectedTransient { .. }
                | Error::ServerError { .. }
                | Error::RolledBackDuringCommit { .. }
                | Error::RolledBackAtCommit { .. }
        )
    }

    /// Whether the client caused it (logged at debug, not as an error).
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            Error::Frame(_)
                | Error::MysqlPacket(_)
                | Error::Malformed { .. }
                | Error::MalformedCommand { .. }
                | Error::ExecuteArguments
                | Error::UnexpectedMessage { .. }
                | Error::UnsupportedStartup(_)
                | Error::Unsupported { .. }
                | Error::ClientIo(_)
                | Error::TlsHandshake(_)
                | Error::NotBound
                | Error::AlreadyBound { .. }
                | Error::NotJoinable { .. }
                | Error::LocalTransactionOpen { .. }
                | Error::BranchPrepared { .. }
                | Error::BadControlCall(_)
                | Error::Cancelled
                | Error::StatementTimeout
                | Error::Undo(_)
                | Error::UnknownTable { .. }
                | Error::UnknownStatement { .. }
                | Error::UnnamedStatementGone
                | Error::ServerError { .. }
                | Error::InsertedUnseen { .. }
                | Error::UpsertDoesNotAddUp { .. }
        ) || matches!(self, Error::Lockserver(e) if e.is_client_fault())
    }

    /// Whether the same request may succeed if the client retries it.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::UpstreamConnect { .. }
                | Error::UpstreamConnectTimeout { .. }
                | Error::UpstreamIo(_)
                | Error::UpstreamClosed
                | Error::TooManyConnections { .. }
                | Error::ShuttingDown
                | Error::Uncaptured { .. }
                | Error::TableChanged { .. }
                | Error::GloballyLocked { .. }
                | Error::RowGloballyLocked { .. }
                | Error::UncheckedWriteLocked { .. }
                | Error::CascadeLocked { .. }
                | Error::ReachedLocked { .. }
                | Error::RolledBackAtCommit { .. }
        ) || matches!(self, Error::Lockserver(e) if e.is_retryable())
    }

    /// The metrics label of this error's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Cancelled | Error::StatementTimeout => "cancelled",
            Error::Frame(_)
            | Error::MysqlPacket(_)
            | Error::Malformed { .. }
            | Error::MalformedCommand { .. }
            | Error::ExecuteArguments
            | Error::UnexpectedMessage { .. }
            | Error::UnsupportedStartup(_) => "client_protocol",
            Error::Unsupported { .. } => "unsupported",
            Error::UpstreamConnect { .. } | Error::UpstreamConnectTimeout { .. } => {
                "upstream_connect"
            }
            Error::UpstreamIo(_) | Error::UpstreamClosed => "upstream_lost",
            Error::UpstreamProtocol(_) => "upstream_protocol",
            Error::ClientIo(_) => "client_io",
            Error::TlsHandshake(_) => "tls",
            Error::TooManyConnections { .. } => "too_many_connections",
            Error::ShuttingDown => "shutdown",
            Error::SidePool(_)
            | Error::SideQuery(_)
            | Error::MysqlSide(_)
            | Error::SidePoolBuild { .. } => "side",
            Error::Lockserver(_) => "lockserver",
            Error::Undo(_)
            | Error::UnknownTable { .. }
            | Error::UnknownStatement { .. }
            | Error::UnnamedStatementGone
            | Error::ServerError { .. }
            | Error::Uncaptured { .. }
            | Error::InsertedUnseen { .. }
            | Error::UpsertDoesNotAddUp { .. }
            | Error::TableChanged { .. }
            | Error::ImageUnread { .. }
            | Error::GloballyLocked { .. }
            | Error::RolledBackDuringCommit { .. }
            | Error::RolledBackAtCommit { .. } => "at_refused",
            Error::RowGloballyLocked { .. }
            | Error::UncheckedWriteLocked { .. }
            | Error::CascadeLocked { .. }
            | Error::ReachedLocked { .. } => "outside_write_locked",
            Error::Injected { .. } | Error::InjectedTransient { .. } => "at_injected",
            Error::NotBound
            | Error::AlreadyBound { .. }
            | Error::NotJoinable { .. }
            | Error::LocalTransactionOpen { .. }
            | Error::BranchPrepared { .. }
            | Error::BadControlCall(_)
            | Error::InFailedTransaction => "control",
        }
    }
}

/// A table as an error names it; `*` (`tandem_undo::EVERY_TABLE`) is a statement that
/// may change rows of any table.
fn named_table(table: &str) -> String {
    if table == tandem_undo::EVERY_TABLE {
        "a table it may change (it cascades, or tandem cannot parse it)".to_owned()
    } else {
        format!("table {table}")
    }
}

/// What a side connection's failure says, with the server's own message and SQLSTATE
/// where it sent one (tokio-postgres prints only "db error"): what an operator reads in
/// a phase-2 retry's reason.
fn side_query_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_variant() -> Vec<Error> {
        vec![
            Error::Frame(FrameError::BadLength {
                tag: b'Q',
                declared: 1,
            }),
            Error::Frame(FrameError::TooLarge {
                tag: b'Q',
                declared: 9,
                max: 1,
            }),
            Error::Malformed { what: "Bind" },
            Error::UnexpectedMessage {
                tag: b'?',
                context: "after startup",
            },
            Error::UnsupportedStartup(1234),
            Error::Unsupported {
                what: "replication",
            },
            Error::UpstreamConnect {
                addr: "a".into(),
                source: io::ErrorKind::ConnectionRefused.into(),
            },
            Error::UpstreamConnectTimeout { addr: "a".into() },
            Error::UpstreamIo(io::ErrorKind::BrokenPipe.into()),
            Error::UpstreamClosed,
            Error::UpstreamProtocol("bad ReadyForQuery"),
            Error::ClientIo(io::ErrorKind::BrokenPipe.into()),
            Error::TlsHandshake(io::ErrorKind::InvalidData.into()),
            Error::TooManyConnections { limit: 1 },
            Error::ShuttingDown,
            Error::SidePoolBuild {
                database: "d".into(),
                reason: "r",
            },
            Error::Lockserver(tandem_lockserver::Error::InvalidArgument { what: "w" }),
            Error::NotBound,
            Error::AlreadyBound { xid: "x".into() },
            Error::NotJoinable {
                xid: "x".into(),
                status: "Committed".into(),
            },
            Error::LocalTransactionOpen {
                what: "tandem_commit()",
            },
            Error::BadControlCall("bad".into()),
            Error::UnknownStatement {
                id: 7,
                given_to: "mysqld_stmt_execute",
            },
            Error::UnnamedStatementGone,
            Error::ExecuteArguments,
        ]
    }

    #[test]
    fn every_variant_maps_to_the_intended_sqlstate() {
        let expected = [
            "08P01", "54000", "08P01", "08P01", "08P01", "0A000", "08001", "08001", "08006",
            "08006", "08P01", "08006", "08P01", "53300", "57P01", "XX000", "22023", "55000",
            "55000", "55000", "25001", "22023", "26000", "26000", "08P01",
        ];
        let got: Vec<_> = every_variant()
            .iter()
            .map(|e| e.sqlstate().code())
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn every_variant_maps_to_the_intended_mysql_error() {
        let mut variants = every_variant();
        variants.push(Error::MysqlPacket(MysqlPacketError::TooLarge {
            declared: 2,
            max: 1,
        }));
        variants.push(Error::MysqlPacket(MysqlPacketError::OutOfOrder {
            expected: 0,
            got: 3,
        }));
        let expected = [
            1043, 1153, 1043, 1047, 1043, 1235, 1053, 1053, 1158, 1158, 1158, 1158, 1043, 1040,
            1053, 1105, 1210, 1399, 1399, 1399, 1568, 1210, 1243, 1243, 1210, 1153, 1156,
        ];
        let got: Vec<_> = variants.iter().map(|e| e.mysql_error().code()).collect();
        assert_eq!(got, expected);
        assert_eq!(
            Error::TooManyConnections { limit: 1 }
                .mysql_error()
                .sqlstate(),
            b"08004"
        );
    }

    #[test]
    fn a_failed_statement_of_tandems_keeps_a_sqlstate_the_client_retries() {
        let deadlock = Error::injected("40P01", "deadlock detected".into());
        assert_eq!(deadlock.sqlstate().code(), "40P01");
        assert_eq!(deadlock.to_string(), "deadlock detected");
        assert!(!deadlock.closes_connection());
        for code in ["40001", "55P03", "57014"] {
            assert_eq!(Error::injected(code, String::new()).sqlstate().code(), code);
        }
        let missing = Error::injected("42P01", "relation \"undo_log\" does not exist".into());
        assert_eq!(missing.sqlstate().code(), "55000");
        assert!(missing.to_string().contains("tandem migrate"), "{missing}");
        let denied = Error::injected("42501", "permission denied for table t".into());
        assert_eq!(
            denied.to_string(),
            "tandem's own statement failed: permission denied for table t"
        );
    }

    #[test]
    fn a_transaction_the_lockserver_forgot_is_over_not_a_bad_argument() {
        let forgotten = Error::Lockserver(tandem_lockserver::Error::Rpc {
            code: tonic::Code::NotFound,
            message: "unknown transaction ab-1".into(),
        });
        assert_eq!(forgotten.sqlstate().code(), "55000");
        assert_eq!(forgotten.mysql_error().code(), 1399);
        let bad = Error::Lockserver(tandem_lockserver::Error::InvalidArgument { what: "w" });
        assert_eq!(bad.sqlstate().code(), "22023");
        assert_eq!(bad.mysql_error().code(), 1210);
    }

    #[test]
    fn protocol_faults_close_and_unsupported_does_not() {
        assert!(Error::Malformed { what: "Bind" }.closes_connection());
        assert!(!Error::Unsupported { what: "x" }.closes_connection());
        assert!(Error::UpstreamClosed.is_retryable());
        assert!(!Error::Malformed { what: "Bind" }.is_retryable());
    }
}
