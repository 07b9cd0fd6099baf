//! Named bytes of the protocol: command bytes, the first byte of server replies, and the
//! capability and status flags tandem reads (from `mysql_common::constants`).
//!
//! Owns which capabilities a client may negotiate through tandem, and why. Nothing in
//! `session/` spells a protocol byte as a literal.

pub use mysql_common::constants::{CapabilityFlags, MariadbCapabilities, StatusFlags};

/// Command bytes: the first byte of every command packet ("Text Protocol", "Prepared
/// Statements", "Utility Commands").
pub mod command {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const CREATE_DB: u8 = 0x05;
    pub const DROP_DB: u8 = 0x06;
    pub const REFRESH: u8 = 0x07;
    pub const SHUTDOWN: u8 = 0x08;
    pub const STATISTICS: u8 = 0x09;
    pub const PROCESS_INFO: u8 = 0x0a;
    pub const PROCESS_KILL: u8 = 0x0c;
    pub const DEBUG: u8 = 0x0d;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const BINLOG_DUMP: u8 = 0x12;
    pub const TABLE_DUMP: u8 = 0x13;
    pub const REGISTER_SLAVE: u8 = 0x15;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const BINLOG_DUMP_GTID: u8 = 0x1e;
    pub const RESET_CONNECTION: u8 = 0x1f;
    /// MariaDB's bulk execute; its capability is withdrawn, so clients do not send it.
    pub const STMT_BULK_EXECUTE: u8 = 0xfa;
}

/// The first byte of a server reply.
pub mod reply {
    /// OK_Packet, and the prepare-OK of COM_STMT_PREPARE.
    pub const OK: u8 = 0x00;
    /// AuthMoreData during authentication.
    pub const MORE_DATA: u8 = 0x01;
    /// LOCAL INFILE request: the server asks the client for a file's contents.
    pub const LOCAL_INFILE: u8 = 0xfb;
    /// EOF_Packet, an OK_Packet that ends a result set under CLIENT_DEPRECATE_EOF, and
    /// AuthSwitchRequest during authentication.
    pub const EOF: u8 = 0xfe;
    /// ERR_Packet.
    pub const ERR: u8 = 0xff;
}

/// Protocol version 10, the only one servers since 3.21 send.
pub const PROTOCOL_VERSION: u8 = 10;

/// caching_sha2_password's AuthMoreData statuses.
pub mod caching_sha2 {
    pub const PLUGIN: &[u8] = b"caching_sha2_password";
    /// The client asks for the server's RSA public key.
    pub const REQUEST_PUBLIC_KEY: u8 = 0x02;
    /// The cached hash matched; an OK follows.
    pub const FAST_AUTH_SUCCESS: u8 = 0x03;
    /// The server needs the password itself: in clear over a secure channel, or
    /// RSA-encrypted over an insecure one.
    pub const PERFORM_FULL_AUTHENTICATION: u8 = 0x04;
}

/// Capabilities a client may negotiate through tandem. Everything else is withdrawn from
/// the server's greeting, each for a reason:
/// - CLIENT_COMPRESS, CLIENT_ZSTD_COMPRESSION_ALGORITHM: compressed framing would hide the
///   packet boundaries tandem tracks.
/// - CLIENT_SSL: TLS is between the client and tandem; tandem offers it only with a
///   configured certificate (the session sets it).
/// - CLIENT_OPTIONAL_RESULTSET_METADATA: result sets without column definitions change
///   where a reply ends.
/// - CLIENT_QUERY_ATTRIBUTES: a COM_QUERY would carry parameters before its SQL text.
/// - CLIENT_PROGRESS_OBSOLETE, CLIENT_SSL_VERIFY_SERVER_CERT, CLIENT_REMEMBER_OPTIONS:
///   client-side flags with no meaning on the wire.
pub fn relayed_capabilities() -> CapabilityFlags {
    CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_FOUND_ROWS
        | CapabilityFlags::CLIENT_LONG_FLAG
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB
        | CapabilityFlags::CLIENT_NO_SCHEMA
        | CapabilityFlags::CLIENT_ODBC
        | CapabilityFlags::CLIENT_LOCAL_FILES
        | CapabilityFlags::CLIENT_IGNORE_SPACE
        | CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_INTERACTIVE
        | CapabilityFlags::CLIENT_IGNORE_SIGPIPE
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_RESERVED
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_MULTI_STATEMENTS
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_CONNECT_ATTRS
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CapabilityFlags::CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS
        | CapabilityFlags::CLIENT_SESSION_TRACK
        | CapabilityFlags::CLIENT_DEPRECATE_EOF
}

/// MariaDB extended capabilities a client may negotiate through tandem. Withdrawn:
/// MARIADB_CLIENT_PROGRESS (progress reports are ERR-shaped packets in the middle of a
/// reply), MARIADB_CLIENT_STMT_BULK_OPERATIONS and MARIADB_CLIENT_BULK_UNIT_RESULTS
/// (COM_STMT_BULK_EXECUTE's reply shapes), MARIADB_CLIENT_CACHE_METADATA (an execute
/// reply may skip its column definitions).
pub fn relayed_mariadb_capabilities() -> MariadbCapabilities {
    MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA
}
