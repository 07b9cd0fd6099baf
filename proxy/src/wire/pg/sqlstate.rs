//! The SQLSTATEs that tandem itself reports to PostgreSQL clients.
//!
//! This is the one place where proxy errors become SQLSTATEs: `proxy::Error::sqlstate`
//! calls into it, and nothing else writes a code literal.
//! Reference: PostgreSQL docs, Appendix A "PostgreSQL Error Codes".

/// A SQLSTATE that tandem may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlState {
    /// 08006 connection_failure: the database connection broke.
    ConnectionFailure,
    /// 08001 sqlclient_unable_to_establish_sqlconnection: the database could not be reached.
    UnableToConnect,
    /// 08007 transaction_resolution_unknown: a global decision was sent and no answer
    /// came; it may have been taken.
    TransactionResolutionUnknown,
    /// 08P01 protocol_violation: malformed or unexpected message.
    ProtocolViolation,
    /// 0A000 feature_not_supported.
    FeatureNotSupported,
    /// 40001 serialization_failure: retry the transaction.
    SerializationFailure,
    /// 40P01 deadlock_detected.
    DeadlockDetected,
    /// 55P03 lock_not_available.
    LockNotAvailable,
    /// 57P01 admin_shutdown: tandem is shutting down.
    AdminShutdown,
    /// 53300 too_many_connections.
    TooManyConnections,
    /// 54000 program_limit_exceeded: a message over the configured size cap.
    ProgramLimitExceeded,
    /// XX000 internal_error.
    InternalError,
    /// 55000 object_not_in_prerequisite_state: e.g. no global transaction bound.
    ObjectNotInPrerequisiteState,
    /// 22023 invalid_parameter_value: a control function called with bad arguments.
    InvalidParameterValue,
    /// 25001 active_sql_transaction: a local transaction is still open.
    ActiveSqlTransaction,
    /// 58000 system_error: a failure outside the database (the lockserver).
    SystemError,
    /// 42P01 undefined_table.
    UndefinedTable,
    /// 26000 invalid_sql_statement_name: a prepared statement that does not exist.
    InvalidSqlStatementName,
    /// 25P02 in_failed_sql_transaction.
    InFailedSqlTransaction,
    /// 25P01 no_active_sql_transaction.
    NoActiveSqlTransaction,
    /// 57014 query_canceled: a cancel or statement_timeout.
    QueryCanceled,
    /// 42601 syntax_error, and the others below: a client's statement that does not
    /// prepare when tandem describes it (see `of_unprepared_statement`).
    SyntaxError,
    /// 42702 ambiguous_column.
    AmbiguousColumn,
    /// 42703 undefined_column.
    UndefinedColumn,
    /// 42704 undefined_object.
    UndefinedObject,
    /// 42804 datatype_mismatch.
    DatatypeMismatch,
    /// 42883 undefined_function.
    UndefinedFunction,
    /// 42501 insufficient_privilege.
    InsufficientPrivilege,
    /// 42P08 ambiguous_parameter.
    AmbiguousParameter,
    /// 42P18 indeterminate_datatype.
    IndeterminateDatatype,
    /// 428C9 generated_always.
    GeneratedAlways,
    /// 42725 ambiguous_function.
    AmbiguousFunction,
    /// 42846 cannot_coerce.
    CannotCoerce,
    /// 42803 grouping_error.
    GroupingError,
    /// 42809 wrong_object_type.
    WrongObjectType,
}

impl SqlState {
    /// The SQLSTATEs a statement may meet because of what other sessions do, which a
    /// client retries (or, for a cancel, expects): tandem's own statements that fail so
    /// report them as they came.
    pub fn transient(code: &str) -> Option<SqlState> {
        Some(match code {
            "40001" => SqlState::SerializationFailure,
            "40P01" => SqlState::DeadlockDetected,
            "55P03" => SqlState::LockNotAvailable,
            "57014" => SqlState::QueryCanceled,
            _ => return None,
        })
    }

    /// The SQLSTATEs with which a client's statement fails to prepare, which tandem
    /// meets first when it describes the statement before running it: the client gets
    /// them as the server gave them, as it would without tandem.
    pub fn of_unprepared_statement(code: &str) -> Option<SqlState> {
        Some(match code {
            "42601" => SqlState::SyntaxError,
            "42702" => SqlState::AmbiguousColumn,
            "42703" => SqlState::UndefinedColumn,
            "42704" => SqlState::UndefinedObject,
            "42804" => SqlState::DatatypeMismatch,
            "42883" => SqlState::UndefinedFunction,
            "42501" => SqlState::InsufficientPrivilege,
            "42P08" => SqlState::AmbiguousParameter,
            "42P18" => SqlState::IndeterminateDatatype,
            "42P01" => SqlState::UndefinedTable,
            "428C9" => SqlState::GeneratedAlways,
            "42725" => SqlState::AmbiguousFunction,
            "42846" => SqlState::CannotCoerce,
            "42803" => SqlState::GroupingError,
            "42809" => SqlState::WrongObjectType,
            // Not the statement's fault, but the client's block's, as the server says.
            "25P02" => SqlState::InFailedSqlTransaction,
            _ => return None,
        })
    }

    pub fn code(self) -> &'static str {
        match self {
            SqlState::ConnectionFailure => "08006",
            SqlState::UnableToConnect => "08001",
            SqlState::TransactionResolutionUnknown => "08007",
            SqlState::ProtocolViolation => "08P01",
            SqlState::FeatureNotSupported => "0A000",
            SqlState::SerializationFailure => "40001",
            SqlState::DeadlockDetected => "40P01",
            SqlState::LockNotAvailable => "55P03",
            SqlState::AdminShutdown => "57P01",
            SqlState::TooManyConnections => "53300",
            SqlState::ProgramLimitExceeded => "54000",
            SqlState::InternalError => "XX000",
            SqlState::ObjectNotInPrerequisiteState => "55000",
            SqlState::InvalidParameterValue => "22023",
            SqlState::ActiveSqlTransaction => "25001",
            SqlState::SystemError => "58000",
            SqlState::UndefinedTable => "42P01",
            SqlState::InvalidSqlStatementName => "26000",
            SqlState::InFailedSqlTransaction => "25P02",
            SqlState::NoActiveSqlTransaction => "25P01",
            SqlState::QueryCanceled => "57014",
            SqlState::SyntaxError => "42601",
            SqlState::AmbiguousColumn => "42702",
            SqlState::UndefinedColumn => "42703",
            SqlState::UndefinedObject => "42704",
            SqlState::DatatypeMismatch => "42804",
            SqlState::UndefinedFunction => "42883",
            SqlState::InsufficientPrivilege => "42501",
            SqlState::AmbiguousParameter => "42P08",
            SqlState::IndeterminateDatatype => "42P18",
            SqlState::GeneratedAlways => "428C9",
            SqlState::AmbiguousFunction => "42725",
            SqlState::CannotCoerce => "42846",
            SqlState::GroupingError => "42803",
            SqlState::WrongObjectType => "42809",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SqlState::*;

    #[test]
    fn every_code_is_five_chars_and_distinct() {
        let all = [
            ConnectionFailure,
            UnableToConnect,
            ProtocolViolation,
            FeatureNotSupported,
            SerializationFailure,
            DeadlockDetected,
            LockNotAvailable,
            AdminShutdown,
            TooManyConnections,
            ProgramLimitExceeded,
            InternalError,
            ObjectNotInPrerequisiteState,
            InvalidParameterValue,
            ActiveSqlTransaction,
            SystemError,
            UndefinedTable,
            InvalidSqlStatementName,
            InFailedSqlTransaction,
            NoActiveSqlTransaction,
            QueryCanceled,
            SyntaxError,
            AmbiguousColumn,
            UndefinedColumn,
            UndefinedObject,
            DatatypeMismatch,
            UndefinedFunction,
            InsufficientPrivilege,
            AmbiguousParameter,
            IndeterminateDatatype,
            GeneratedAlways,
            AmbiguousFunction,
            CannotCoerce,
            GroupingError,
            WrongObjectType,
        ];
        let mut codes: Vec<_> = all.iter().map(|s| s.code()).collect();
        assert!(codes.iter().all(|c| c.len() == 5));
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
