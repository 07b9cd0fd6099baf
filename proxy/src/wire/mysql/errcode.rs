//! The MySQL errors that tandem itself sends, with their error numbers and SQLSTATEs.
//!
//! This is the one place where MySQL codes are spelled: `proxy::Error::mysql_error`
//! picks a variant, and nothing else writes a code literal. Numbers and states are the
//! server's own (`include/mysqld_error.h`, MariaDB's `sql/share/errmsg-utf8.txt`), so
//! that drivers classify tandem's errors as they classify the server's.

/// An error tandem may send to a MySQL client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MyErr {
    /// 1040 ER_CON_COUNT_ERROR, 08004: too many connections.
    TooManyConnections,
    /// 1047 ER_UNKNOWN_COM_ERROR, 08S01: a command tandem does not relay.
    UnknownCommand,
    /// 1053 ER_SERVER_SHUTDOWN, 08S01: tandem is shutting down.
    ServerShutdown,
    /// 1105 ER_UNKNOWN_ERROR, HY000: an internal failure.
    Unknown,
    /// 1153 ER_NET_PACKET_TOO_LARGE, 08S01: over `max_message_bytes`.
    PacketTooLarge,
    /// 1156 ER_NET_PACKETS_OUT_OF_ORDER, 08S01: a wrong sequence id.
    PacketsOutOfOrder,
    /// 1158 ER_NET_READ_ERROR, 08S01: the connection to the database broke.
    NetReadError,
    /// 1197 ER_TRANS_CACHE_FULL, HY000: the transaction is too large for a server
    /// limit (a branch's undo row past max_allowed_packet).
    TransactionTooLarge,
    /// 1205 ER_LOCK_WAIT_TIMEOUT, HY000: retry the transaction.
    LockWaitTimeout,
    /// 1206 ER_LOCK_TABLE_FULL, HY000: more locks than a configured bound (a branch's
    /// lock keys past the lockserver's limits).
    LockTableFull,
    /// 1213 ER_LOCK_DEADLOCK, 40001: retry the transaction.
    Deadlock,
    /// 1235 ER_NOT_SUPPORTED_YET, 42000: a feature tandem does not relay.
    NotSupportedYet,
    /// 1053 ER_SERVER_SHUTDOWN, 08S01: the database could not be reached, so this
    /// server cannot serve the connection now. Not the client-range 2003
    /// (CR_CONN_HOST_ERROR), which drivers make themselves: MariaDB Connector/C (the
    /// mariadb client, Python's mysqlclient) takes a server's error with a
    /// client-range code for a malformed packet (2027).
    CantConnect,
    /// 1043 ER_HANDSHAKE_ERROR, 08S01: malformed packet or a bad handshake.
    HandshakeError,
    /// 1835 ER_MALFORMED_PACKET, HY000: a whole command packet that does not decode
    /// (the server answers so and keeps the connection).
    MalformedPacket,
    /// 1399 ER_XAER_RMFAIL, XAE07: the global transaction (the session's binding, or a
    /// prepared branch its connection holds) is not in the state the command needs.
    XaRmFail,
    /// 1402 ER_XA_RBROLLBACK, XA100: the branch was rolled back (its global transaction
    /// is over), and retrying it would fail the same way.
    XaRbRollback,
    /// 1568 ER_CANT_CHANGE_TX_CHARACTERISTICS, 25001: not while a transaction is open.
    TransactionInProgress,
    /// 1210 ER_WRONG_ARGUMENTS, HY000: a control function called with bad arguments.
    WrongArguments,
    /// 1146 ER_NO_SUCH_TABLE, 42S02: a write to a table that does not exist.
    NoSuchTable,
    /// 1243 ER_UNKNOWN_STMT_HANDLER, HY000: an execute of a statement id never
    /// prepared (or closed).
    UnknownStmtHandler,
    /// 1317 ER_QUERY_INTERRUPTED, 70100: the statement was killed while tandem waited.
    QueryInterrupted,
    /// 1969 ER_STATEMENT_TIMEOUT, 70100: the statement's max_statement_time ran out
    /// while tandem waited.
    StatementTimeout,
}

impl MyErr {
    /// The error number.
    pub fn code(self) -> u16 {
        match self {
            MyErr::TooManyConnections => 1040,
            MyErr::HandshakeError => 1043,
            MyErr::UnknownCommand => 1047,
            MyErr::ServerShutdown => 1053,
            MyErr::Unknown => 1105,
            MyErr::PacketTooLarge => 1153,
            MyErr::PacketsOutOfOrder => 1156,
            MyErr::NetReadError => 1158,
            MyErr::TransactionTooLarge => 1197,
            MyErr::LockWaitTimeout => 1205,
            MyErr::LockTableFull => 1206,
            MyErr::Deadlock => 1213,
            MyErr::NotSupportedYet => 1235,
            MyErr::CantConnect => 1053,
            MyErr::MalformedPacket => 1835,
            MyErr::XaRmFail => 1399,
            MyErr::XaRbRollback => 1402,
            MyErr::TransactionInProgress => 1568,
            MyErr::WrongArguments => 1210,
            MyErr::NoSuchTable => 1146,
            MyErr::UnknownStmtHandler => 1243,
            MyErr::QueryInterrupted => 1317,
            MyErr::StatementTimeout => 1969,
        }
    }

    /// The five-character SQLSTATE.
    pub fn sqlstate(self) -> &'static [u8; 5] {
        match self {
            MyErr::TooManyConnections => b"08004",
            MyErr::UnknownCommand
            | MyErr::ServerShutdown
            | MyErr::PacketTooLarge
            | MyErr::PacketsOutOfOrder
            | MyErr::NetReadError
            | MyErr::CantConnect
            | MyErr::HandshakeError => b"08S01",
            MyErr::Deadlock => b"40001",
            MyErr::NotSupportedYet => b"42000",
            MyErr::XaRmFail => b"XAE07",
            MyErr::XaRbRollback => b"XA100",
            MyErr::TransactionInProgress => b"25001",
            MyErr::NoSuchTable => b"42S02",
            MyErr::QueryInterrupted | MyErr::StatementTimeout => b"70100",
            MyErr::Unknown
            | MyErr::TransactionTooLarge
            | MyErr::LockTableFull
            | MyErr::LockWaitTimeout
            | MyErr::MalformedPacket
            | MyErr::UnknownStmtHandler
            | MyErr::WrongArguments => b"HY000",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codes_style_md_names() {
        assert_eq!(
            (
                MyErr::LockWaitTimeout.code(),
                MyErr::LockWaitTimeout.sqlstate()
            ),
            (1205, b"HY000")
        );
        assert_eq!(
            (MyErr::Deadlock.code(), MyErr::Deadlock.sqlstate()),
            (1213, b"40001")
        );
        assert_eq!(
            (
                MyErr::TooManyConnections.code(),
                MyErr::TooManyConnections.sqlstate()
            ),
            (1040, b"08004")
        );
        assert_eq!(
            (
                MyErr::ServerShutdown.code(),
                MyErr::ServerShutdown.sqlstate()
            ),
            (1053, b"08S01")
        );
    }
}
