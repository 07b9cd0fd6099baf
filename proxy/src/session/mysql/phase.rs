//! Where a MySQL session is in its command/response exchanges, as an explicit state
//! machine, so that tandem always knows where a reply ends.
//!
//! Owns only the phase and the shape of the replies still due: no I/O. Every transition
//! takes the old state by value and returns the new one. Invariant: `Phase::Ready` means
//! a sync point — every command the client sent has its complete reply (an OK or ERR, or
//! a final result without SERVER_MORE_RESULTS_EXISTS) — which is the only moment tandem
//! may inject statements or close a session cleanly ("Command Phase" in the protocol
//! docs).

use crate::wire::mysql::codes::{StatusFlags, command, reply};
use crate::wire::mysql::errcode::MyErr;
use crate::wire::mysql::messages::response::{
    PrepareOk, column_count, is_terminator, ok_status, terminator_status,
};
use std::collections::VecDeque;

/// The shape of the reply a command gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// One OK, EOF or ERR packet (COM_PING, COM_INIT_DB, COM_RESET_CONNECTION, ...).
    Status,
    /// One packet of any shape (COM_STATISTICS answers with a bare string).
    AnyPacket,
    /// OK, ERR, a LOCAL INFILE request, or a result set; another follows while
    /// SERVER_MORE_RESULTS_EXISTS is set (COM_QUERY, COM_STMT_EXECUTE).
    Results,
    /// Rows up to a terminator, or ERR (COM_STMT_FETCH).
    Rows,
    /// The prepare-OK and its parameter and column definitions, or ERR.
    Prepare,
    /// Column definitions up to a terminator, or ERR (COM_FIELD_LIST).
    Definitions,
}

/// What the client's command asks of the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// Relayed; the server answers with this shape.
    Replied(Expect),
    /// Relayed; the server sends nothing back (COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA).
    NoReply,
    /// COM_CHANGE_USER: a new authentication exchange.
    ChangeUser,
    /// COM_QUIT: the server closes the connection.
    Quit,
    /// Not relayed: replication, and commands tandem does not know.
    Refused,
}

/// Classifies a command by its first byte.
pub fn command_kind(byte: u8) -> CommandKind {
    use CommandKind::*;
    match byte {
        command::QUERY | command::STMT_EXECUTE | command::PROCESS_INFO => Replied(Expect::Results),
        command::STMT_PREPARE => Replied(Expect::Prepare),
        command::STMT_FETCH => Replied(Expect::Rows),
        command::FIELD_LIST => Replied(Expect::Definitions),
        command::STATISTICS => Replied(Expect::AnyPacket),
        command::INIT_DB
        | command::PING
        | command::RESET_CONNECTION
        | command::STMT_RESET
        | command::SET_OPTION
        | command::PROCESS_KILL
        | command::REFRESH
        | command::DEBUG
        | command::CREATE_DB
        | command::DROP_DB
        | command::SHUTDOWN => Replied(Expect::Status),
        command::STMT_CLOSE | command::STMT_SEND_LONG_DATA => NoReply,
        command::CHANGE_USER => ChangeUser,
        command::QUIT => Quit,
        _ => Refused,
    }
}

/// How far the reply to the oldest command in flight has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Its first packet has not arrived.
    First(Expect),
    /// Column definitions still to come, then (without CLIENT_DEPRECATE_EOF) an EOF.
    Columns {
        left: u64,
    },
    /// The EOF after column definitions.
    ColumnsEof,
    /// Rows until a terminator or ERR.
    Rows,
    PrepareParams {
        left: u16,
        columns: u16,
    },
    PrepareParamsEof {
        columns: u16,
    },
    PrepareColumns {
        left: u16,
    },
    PrepareColumnsEof,
    /// Column definitions until a terminator (COM_FIELD_LIST).
    Definitions,
}

/// The session's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Handshake and authentication, until the server's first OK.
    Authenticating,
    /// A sync point, with the status flags of the last OK or EOF.
    Ready { status: StatusFlags },
    /// A reply is coming; `reply` is how far the oldest one has come.
    Busy { status: StatusFlags, reply: Reply },
    /// LOAD DATA LOCAL INFILE: the client sends the file, then an empty packet.
    InfileUpload { status: StatusFlags },
    /// COM_CHANGE_USER: an authentication exchange runs inside the command phase.
    ChangingUser { status: StatusFlags },
    /// COM_QUIT was relayed; the server closes the connection.
    Quitting,
}

/// A server packet where none was due, or of a shape the reply cannot take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unexpected(pub &'static str);

/// The first packet of one logical server message, as far as classifying it needs.
#[derive(Clone, Copy, Debug)]
pub struct ServerPacket<'a> {
    /// The start of the payload (up to `CLASSIFY_BYTES`; empty payloads are empty).
    pub prefix: &'a [u8],
    pub payload_len: usize,
}

impl ServerPacket<'_> {
    fn first(&self) -> Option<u8> {
        self.prefix.first().copied()
    }
}

/// The result of one server packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    More(Reply),
    /// The reply is complete; the status flags when it carried any.
    Done(Option<StatusFlags>),
    /// The reply is an error that may have rolled the whole transaction back (a
    /// deadlock, or a lock wait timeout under `innodb_rollback_on_timeout`); an ERR
    /// carries no status flags, and a metadata-lock wait ends only the statement.
    DoneTransactionUncertain,
    /// The server asked for a LOCAL INFILE upload.
    Infile,
}

impl Reply {
    /// Advances this reply by one server packet.
    fn step(self, p: ServerPacket<'_>, server: ServerRules) -> Result<Step, Unexpected> {
        let deprecate_eof = server.deprecate_eof;
        use Step::*;
        let first = p.first().ok_or(Unexpected("an empty reply packet"))?;
        let terminator = is_terminator(first, p.payload_len, deprecate_eof);
        // A classic EOF is always short, also under CLIENT_DEPRECATE_EOF where the
        // server still sends one (after prepare definitions, COM_SET_OPTION).
        let eof = is_terminator(first, p.payload_len, false);
        Ok(match self {
            Reply::First(Expect::AnyPacket) => Done(None),
            _ if first == reply::ERR => match p.prefix.get(1..3) {
                // InnoDB rolled the whole transaction back; the ERR has no flags to say so.
                Some(&[low, high])
                    if server.may_end_transaction(u16::from_le_bytes([low, high])) =>
                {
                    DoneTransactionUncertain
                }
                _ => Done(None),
            },
            Reply::First(Expect::Status) => match first {
                reply::OK => Done(ok_status(p.prefix)),
                reply::EOF => Done(terminator_status(p.prefix, deprecate_eof && !eof)),
                _ => return Err(Unexpected("a status reply that is not OK, EOF or ERR")),
            },
            Reply::First(Expect::Results) => match first {
                reply::OK => after_result(ok_status(p.prefix)),
                reply::LOCAL_INFILE => Infile,
                _ => match column_count(p.prefix) {
                    Some(n) if n > 0 => More(Reply::Columns { left: n }),
                    _ => return Err(Unexpected("a result set without columns")),
                },
            },
            Reply::Columns { left } if left > 1 => More(Reply::Columns { left: left - 1 }),
            Reply::Columns { .. } if deprecate_eof => More(Reply::Rows),
            Reply::Columns { .. } => More(Reply::ColumnsEof),
            Reply::ColumnsEof if eof => {
                let status = terminator_status(p.prefix, false);
                // A cursor was opened (COM_STMT_EXECUTE with a cursor type): rows come
                // later, through COM_STMT_FETCH.
                if status.is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_CURSOR_EXISTS)) {
                    Done(status)
                } else {
                    More(Reply::Rows)
                }
            }
            Reply::ColumnsEof => return Err(Unexpected("no EOF after column definitions")),
            Reply::Rows | Reply::First(Expect::Rows) if terminator => {
                after_result(terminator_status(p.prefix, deprecate_eof))
            }
            Reply::Rows | Reply::First(Expect::Rows) => More(Reply::Rows),
            Reply::First(Expect::Prepare) => {
                let ok = PrepareOk::decode(p.prefix).ok_or(Unexpected("a malformed prepare-OK"))?;
                prepare_next(ok.params, ok.columns)
            }
            Reply::PrepareParams { left, columns } if left > 1 => More(Reply::PrepareParams {
                left: left - 1,
                columns,
            }),
            Reply::PrepareParams { columns, .. } if deprecate_eof => prepare_next(0, columns),
            Reply::PrepareParams { columns, .. } => More(Reply::PrepareParamsEof { columns }),
            Reply::PrepareParamsEof { columns } if eof => prepare_next(0, columns),
            Reply::PrepareColumns { left } if left > 1 => {
                More(Reply::PrepareColumns { left: left - 1 })
            }
            Reply::PrepareColumns { .. } if deprecate_eof => Done(None),
            Reply::PrepareColumns { .. } => More(Reply::PrepareColumnsEof),
            Reply::PrepareColumnsEof if eof => Done(None),
            Reply::PrepareParamsEof { .. } | Reply::PrepareColumnsEof => {
                return Err(Unexpected("no EOF after prepare definitions"));
            }
            Reply::Definitions | Reply::First(Expect::Definitions) if terminator => {
                Done(terminator_status(p.prefix, deprecate_eof))
            }
            Reply::Definitions | Reply::First(Expect::Definitions) => More(Reply::Definitions),
        })
    }
}

fn after_result(status: Option<StatusFlags>) -> Step {
    match status {
        Some(s) if s.contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS) => {
            Step::More(Reply::First(Expect::Results))
        }
        status => Step::Done(status),
    }
}

fn prepare_next(params: u16, columns: u16) -> Step {
    if params > 0 {
        Step::More(Reply::PrepareParams {
            left: params,
            columns,
        })
    } else if columns > 0 {
        Step::More(Reply::PrepareColumns { left: columns })
    } else {
        Step::Done(None)
    }
}

/// What the server's settings say about its replies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerRules {
    /// CLIENT_DEPRECATE_EOF was agreed: an OK packet ends result sets.
    pub deprecate_eof: bool,
    /// `innodb_rollback_on_timeout` is on: a lock wait timeout (1205) rolls back the
    /// whole transaction, not just the statement.
    pub timeout_ends_transaction: bool,
}

impl ServerRules {
    /// Whether an ERR with `code` may mean InnoDB rolled the whole transaction back
    /// (the same codes also come from metadata-lock waits, which end only the
    /// statement: the session's state is then asked of the server).
    pub fn may_end_transaction(self, code: u16) -> bool {
        code == MyErr::Deadlock.code()
            || (self.timeout_ends_transaction && code == MyErr::LockWaitTimeout.code())
    }
}

/// The phase plus the replies queued behind the one in progress (clients may pipeline:
/// MariaDB Connector/C sends PREPARE, EXECUTE and CLOSE at once).
#[derive(Debug)]
pub struct Exchange {
    pub phase: Phase,
    /// Replies due after the current one, oldest first, each with the sequence id of
    /// its first packet (one past its command's last packet).
    queued: VecDeque<(Expect, u8)>,
    /// The sequence id of the server's next packet in the current reply.
    server_seq: u8,
    pub server: ServerRules,
    /// An error that may have ended the transaction came since the last status flags:
    /// IN_TRANS is to be asked of the server before it decides anything.
    pub status_uncertain: bool,
    /// The status flags the last server packet carried, when it ended a reply.
    pub status_read: Option<StatusFlags>,
}

/// What one server packet did to the exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The reply goes on, or one reply ended and the next queued one began.
    Continues,
    /// The last reply in flight ended: a sync point.
    SyncPoint,
    /// The server asked for a LOCAL INFILE upload.
    InfileRequested,
}

impl Exchange {
    pub fn new(server: ServerRules) -> Self {
        Exchange {
            phase: Phase::Authenticating,
            queued: VecDeque::new(),
            server_seq: 0,
            server,
            status_uncertain: false,
            status_read: None,
        }
    }

    pub fn at_sync_point(&self) -> bool {
        matches!(self.phase, Phase::Ready { .. })
    }

    /// The status flags of the last OK or EOF, once authenticated.
    pub fn status(&self) -> Option<StatusFlags> {
        match self.phase {
            Phase::Ready { status }
            | Phase::Busy { status, .. }
            | Phase::InfileUpload { status }
            | Phase::ChangingUser { status } => Some(status),
            Phase::Authenticating | Phase::Quitting => None,
        }
    }

    /// Takes `flags` out of the status flags kept: the server's, which say what they
    /// do not mean for this client.
    pub fn clear_status(&mut self, flags: StatusFlags) {
        match &mut self.phase {
            Phase::Ready { status }
            | Phase::Busy { status, .. }
            | Phase::InfileUpload { status }
            | Phase::ChangingUser { status } => status.remove(flags),
            Phase::Authenticating | Phase::Quitting => {}
        }
    }

    /// Authentication (or a change of user) ended with an OK carrying `status`.
    pub fn on_authenticated(&mut self, status: StatusFlags) {
        self.phase = Phase::Ready { status };
    }

    /// The client sent a command whose reply has shape `expect` and starts with
    /// sequence id `reply_seq`.
    pub fn on_command(&mut self, expect: Expect, reply_seq: u8) {
        self.phase = match self.phase {
            Phase::Ready { status } => {
                self.server_seq = reply_seq;
                Phase::Busy {
                    status,
                    reply: Reply::First(expect),
                }
            }
            busy => {
                self.queued.push_back((expect, reply_seq));
                busy
            }
        };
    }

    /// Checks the sequence id of every server packet of a reply (continuations too).
    pub fn on_server_seq(&mut self, seq: u8) -> Result<(), Unexpected> {
        if seq != self.server_seq {
            return Err(Unexpected("a reply packet out of order"));
        }
        self.server_seq = seq.wrapping_add(1);
        Ok(())
    }

    /// The sequence id the client's next LOCAL INFILE packet must carry.
    pub fn infile_seq(&self) -> u8 {
        self.server_seq
    }

    /// The client sent COM_CHANGE_USER (only at a sync point: the session holds it back
    /// until then).
    pub fn on_change_user(&mut self) {
        if let Phase::Ready { status } = self.phase {
            self.phase = Phase::ChangingUser { status };
        }
    }

    pub fn on_quit(&mut self) {
        self.phase = Phase::Quitting;
    }

    /// The client's empty packet (sequence id `last_seq`) ended a LOCAL INFILE upload;
    /// the server's OK or ERR is next (and, with multi-statements, more results).
    pub fn on_infile_end(&mut self, last_seq: u8) {
        if let Phase::InfileUpload { status } = self.phase {
            self.server_seq = last_seq.wrapping_add(1);
            self.phase = Phase::Busy {
                status,
                reply: Reply::First(Expect::Results),
            };
        }
    }

    /// Advances by the first packet of one server message.
    pub fn on_server_packet(&mut self, packet: ServerPacket<'_>) -> Result<Progress, Unexpected> {
        self.status_read = None;
        let Phase::Busy { status, reply } = self.phase else {
            return Err(Unexpected("a server packet while no reply is due"));
        };
        match reply.step(packet, self.server)? {
            Step::More(reply) => {
                self.phase = Phase::Busy { status, reply };
                Ok(Progress::Continues)
            }
            Step::Infile => {
                self.phase = Phase::InfileUpload { status };
                Ok(Progress::InfileRequested)
            }
            step @ (Step::Done(_) | Step::DoneTransactionUncertain) => {
                let status = match step {
                    Step::Done(Some(new_status)) => {
                        self.status_uncertain = false;
                        self.status_read = Some(new_status);
                        new_status
                    }
                    Step::Done(None) => status,
                    _ => {
                        self.status_uncertain = true;
                        status
                    }
                };
                Ok(match self.queued.pop_front() {
                    Some((next, seq)) => {
                        self.server_seq = seq;
                        self.phase = Phase::Busy {
                            status,
                            reply: Reply::First(next),
                        };
                        Progress::Continues
                    }
                    None => {
                        self.phase = Phase::Ready { status };
                        Progress::SyncPoint
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
