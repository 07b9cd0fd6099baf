//! The command phase: one task relays both sockets, packet by packet, and keeps the
//! `phase::Exchange` in step so that tandem always knows where a reply ends.
//!
//! Owns the read buffers, the relay loop and the end of a session. Whole runs of packets
//! are forwarded with one write per socket read; a packet larger than what has arrived
//! is streamed through once its first bytes are classified, so no packet is buffered
//! whole except the few tandem decodes. Invariant: outside the rewrites listed in
//! `session::mysql`, the bytes written to each side are the bytes read from the other.

mod at;
mod batch;
mod client_side;
mod control;
mod guard;
mod own;
mod server_side;

use super::MysqlFrontendContext;
use super::auth::AuthExchange;
use super::handshake::Opened;
use super::phase::{Exchange, ServerRules};
use crate::error::{Error, Result};
use crate::tls::ClientStream;
use crate::upstream::ServerStream;
use crate::wire::mysql::codes::{CapabilityFlags, command};
use crate::wire::mysql::packet::{MessageSize, put_message};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Read buffers grow in steps of this many bytes, so an idle session holds little.
const READ_CHUNK: usize = 8 * 1024;

/// The end of a transaction that tandem opened (around an autocommit write), or that
/// it ends for the client without the client's own words (an implied commit, a failed
/// branch): whatever the session's completion_type, it must not chain a new
/// transaction (the session's next autocommit statements would pile up in it, never
/// committed) or close the connection.
const OWN_COMMIT: &str = "COMMIT AND NO CHAIN NO RELEASE";
const OWN_ROLLBACK: &str = "ROLLBACK AND NO CHAIN NO RELEASE";

pub struct Relay<'a> {
    pub(super) ctx: &'a MysqlFrontendContext,
    pub(super) client: ClientStream,
    pub(super) server: ServerStream,
    pub(super) from_client: BytesMut,
    pub(super) from_server: BytesMut,
    /// Packets tandem itself writes (errors, rewritten commands, the change-user
    /// exchange), staged before one write.
    pub(super) to_client: BytesMut,
    pub(super) to_server: BytesMut,
    /// COM_STMT_CLOSEs of tandem's one-use statements: they have no reply, so they
    /// ride with the next bytes sent to the server instead of costing a write each.
    pub(super) pending_closes: BytesMut,
    /// Bytes of a large client packet still to pass through without buffering it.
    pub(super) client_streaming: usize,
    /// Bytes of a client packet tandem answered or replaced before all of it arrived,
    /// still to drop.
    pub(super) client_dropping: usize,
    /// Whether the command in progress is one tandem answered or replaced: its later
    /// packets are dropped too.
    pub(super) dropping_message: bool,
    /// tandem's answer to a command whose later packets are still arriving (16 MiB or
    /// more): it is numbered after the command's last packet, so it waits for it.
    pub(super) held_answer: BytesMut,
    /// The same for a large server packet.
    pub(super) server_streaming: usize,
    pub(super) client_message: MessageSize,
    pub(super) server_message: MessageSize,
    /// The sequence id the client's next packet must carry while a command spans several
    /// packets or a LOCAL INFILE upload runs (a new command always starts at 0).
    pub(super) client_seq: u8,
    /// The command whose packets are arriving, until its last one.
    pub(super) command_in_progress: Option<super::phase::CommandKind>,
    pub(super) exchange: Exchange,
    /// COM_CHANGE_USER's authentication exchange, while it runs.
    pub(super) change_user: Option<AuthExchange>,
    pub(super) capabilities: CapabilityFlags,
    /// Whether the server takes several statements in one COM_QUERY from this client:
    /// CLIENT_MULTI_STATEMENTS at connect, then as COM_SET_OPTION last set it (MySQL
    /// Connector/J turns it on around a rewritten batch).
    pub(super) multi_statements: bool,
    pub(super) nonce: Vec<u8>,
    pub(super) client_tls: bool,
    pub(super) thread_id: u32,
    /// A KILL QUERY of this session's, as tandem's own waits hear it, and where the
    /// command being handled began among them.
    pub(super) interrupt: crate::cancel::Interrupt,
    pub(super) cancels_seen: u64,
    /// When the command being handled must end by its own time limit (MariaDB's
    /// `SET STATEMENT max_statement_time = … FOR`), for tandem's own waits in it.
    pub(super) statement_deadline: Option<std::time::Instant>,
    /// Reading from the client waits for the next sync point (a command tandem answers
    /// itself, or COM_CHANGE_USER, arrived behind commands in flight).
    pub(super) client_paused: bool,
    /// The client connection failed or closed; nothing more can be written to it.
    pub(super) client_lost: bool,
    /// The backend said it is closing the connection and why: an unsolicited ERR, or a
    /// network error answering a command (1153, a packet over max_allowed_packet).
    pub(super) backend_said_fatal: bool,
    draining: bool,
    /// The sequence id of the last packet either side sent, for tandem's own ERR.
    pub(super) last_seq: u8,
    /// The session's binding to a global transaction.
    pub(super) binding: crate::binding::Binding,
    /// tandem's own statements kept prepared on the backend connection.
    pub(super) own_statements: own::OwnStatements,
    /// AT mode's branch in the current local transaction: the rows it changed.
    pub(super) at_branch: crate::at::branch::Branch,
    /// The server's max_allowed_packet for this connection (fixed at connect), read
    /// the first time a branch's undo row is large.
    pub(super) max_allowed_packet: Option<u64>,
    /// XA mode's branch in the current local transaction.
    pub(super) xa: Option<control::XaBranch>,
    /// The session's current database (the resource of its branches): the one named at
    /// connect, until a `USE` or COM_INIT_DB makes it `database_uncertain`.
    pub(super) database: String,
    /// AT sent the client's COM_STMT_EXECUTE on to the server while answering it.
    pub(super) execute_forwarded: bool,
    /// The rows the client's last command, a write AT captured, affected: the server's
    /// ROW_COUNT() now counts tandem's own statements after it, so the client's next
    /// command reads this instead (`row_count::with_row_count`).
    pub(super) row_count_after_write: Option<i64>,
    /// A `USE` or COM_INIT_DB passed since `database` was known: AT asks the server.
    pub(super) database_uncertain: bool,
    /// Whether a table (`database.table`) is one of this session's temporary tables, as
    /// the server answered; forgotten after a statement that may create or drop one.
    pub(super) temporary_tables: std::collections::HashMap<String, bool>,
    /// The texts of the session's SQL-level prepared statements by name (`PREPARE s
    /// FROM '…'`; None: one tandem could not read), which an `EXECUTE` outside a
    /// global transaction runs: a name not here may stand for any text.
    pub(super) sql_prepared: std::collections::HashMap<String, Option<String>>,
    /// The last command may have changed views or foreign keys (DDL, or a statement
    /// that may run some): the server's views and acting keys are read again at the
    /// next, once it has run.
    pub(super) catalog_may_have_changed: bool,
    /// The session's statements named table locks (`control::may_take_table_locks`)
    /// since the server last said it holds none: tandem asks before it opens a
    /// transaction of its own, which would release them.
    pub(super) may_hold_table_locks: bool,
    /// Counts what may have set the session's character set for statements (SET NAMES
    /// and the like, CALL, a reset): a prepared statement whose text the set may read
    /// otherwise than tandem, prepared under another count, was read under a set
    /// tandem can no longer ask.
    pub(super) charset_changes: u64,
    /// Column definitions tandem writes carry MariaDB's extended metadata.
    pub(super) extended_metadata: bool,
    pub(super) executes_last_prepared: bool,
    /// Phase 2 of branches this connection prepared arrives here (see `xa::mysql`).
    pub(super) phase2_tx: tokio::sync::mpsc::UnboundedSender<crate::xa::mysql::OwnedPhase2>,
    pub(super) phase2_rx: tokio::sync::mpsc::UnboundedReceiver<crate::xa::mysql::OwnedPhase2>,
    /// Requests waiting for a sync point.
    pub(super) phase2_queue: std::collections::VecDeque<crate::xa::mysql::OwnedPhase2>,
    /// The client's prepared statements, by id: what each does, for the rules of a
    /// bound session.
    pub(super) prepared: std::collections::HashMap<u32, control::Prepared>,
    /// COM_STMT_PREPAREs whose replies (with their ids) are still due.
    pub(super) pending_prepares: std::collections::VecDeque<control::Prepared>,
    /// Prepared branches attached to this connection.
    pub(super) owned: Vec<(tandem_lockserver::client::Xid, u64)>,
    /// A `SET autocommit` that turns autocommit on, answered while the connection held
    /// prepared branches (MariaDB refuses it beside them: it would commit), to run
    /// once the connection holds none.
    pub(super) deferred_autocommit: bool,
    /// Writes outside a global transaction let through unchecked and not yet over.
    pub(super) unchecked: crate::session::outside::UncheckedGuards,
    /// A watch on the backend connection for waits while it is idle.
    backend_watch: crate::upstream::IdleWatch,
}

impl<'a> Relay<'a> {
    pub fn new(ctx: &'a MysqlFrontendContext, opened: Opened, span: tracing::Span) -> Self {
        let mut exchange = Exchange::new(ServerRules {
            deprecate_eof: opened
                .capabilities
                .contains(CapabilityFlags::CLIENT_DEPRECATE_EOF),
            // Until asked (at the session's first AT statement), when no session has.
            timeout_ends_transaction: ctx
                .xa
                .known_timeout_rolls_back_transaction()
                .unwrap_or(false),
        });
        exchange.on_authenticated(opened.status);
        let (phase2_tx, phase2_rx) = tokio::sync::mpsc::unbounded_channel();
        Relay {
            ctx,
            client: opened.client,
            server: opened.server,
            from_client: opened.from_client,
            from_server: opened.from_server,
            to_client: BytesMut::new(),
            to_server: BytesMut::new(),
            pending_closes: BytesMut::new(),
            client_streaming: 0,
            client_dropping: 0,
            dropping_message: false,
            held_answer: BytesMut::new(),
            server_streaming: 0,
            client_message: MessageSize::default(),
            server_message: MessageSize::default(),
            client_seq: 0,
            command_in_progress: None,
            exchange,
            change_user: None,
            capabilities: opened.capabilities,
            multi_statements: opened
                .capabilities
                .contains(CapabilityFlags::CLIENT_MULTI_STATEMENTS),
            nonce: opened.nonce,
            client_tls: opened.client_tls,
            thread_id: opened.thread_id,
            interrupt: crate::cancel::Interrupt::default(),
            cancels_seen: 0,
            statement_deadline: None,
            client_paused: false,
            client_lost: false,
            backend_said_fatal: false,
            draining: false,
            last_seq: 0,
            binding: crate::binding::Binding::new(span),
            own_statements: own::OwnStatements::default(),
            at_branch: crate::at::branch::Branch::default(),
            max_allowed_packet: None,
            xa: None,
            database: opened.database.clone(),
            database_uncertain: false,
            temporary_tables: std::collections::HashMap::new(),
            sql_prepared: std::collections::HashMap::new(),
            catalog_may_have_changed: false,
            may_hold_table_locks: false,
            charset_changes: 0,
            execute_forwarded: false,
            row_count_after_write: None,
            extended_metadata: opened.extended_metadata,
            executes_last_prepared: opened.executes_last_prepared,
            phase2_tx,
            phase2_rx,
            phase2_queue: std::collections::VecDeque::new(),
            owned: Vec::new(),
            deferred_autocommit: false,
            prepared: std::collections::HashMap::new(),
            pending_prepares: std::collections::VecDeque::new(),
            unchecked: crate::session::outside::UncheckedGuards::default(),
            backend_watch: crate::upstream::IdleWatch::default(),
        }
    }

    /// Relays until the client quits or leaves, the backend closes, or shutdown.
    pub async fn run(&mut self) -> Result<()> {
        if !self.from_client.is_empty() && self.relay_from_client().await? {
            return Ok(());
        }
        // Made once, not per iteration: each `cancelled()` future registers a waiter
        // under the token's lock.
        let abort = self.ctx.signals.abort.clone().cancelled_owned();
        let drain = self.ctx.signals.drain.clone().cancelled_owned();
        tokio::pin!(abort, drain);
        loop {
            reserve_for_read(&mut self.from_client);
            reserve_for_read(&mut self.from_server);
            tokio::select! {
                biased;
                () = &mut abort => return Err(Error::ShuttingDown),
                () = &mut drain, if !self.draining => {
                    self.draining = true;
                    if self.closes_for_drain() {
                        return Err(Error::ShuttingDown);
                    }
                }
                // Cancel-safe: read_buf appends only what it has read, and a dropped
                // read has read nothing.
                read = self.server.read_buf(&mut self.from_server) => {
                    let n = read.map_err(Error::UpstreamIo)?;
                    if n == 0 {
                        return match self.exchange.phase {
                            super::Phase::Quitting => Ok(()),
                            _ => Err(Error::UpstreamClosed),
                        };
                    }
                    self.ctx.metrics.mysql.bytes_from_backends.inc_by(n as u64);
                    self.relay_from_server().await?;
                    if self.draining && self.closes_for_drain() {
                        return Err(Error::ShuttingDown);
                    }
                    if !self.phase2_queue.is_empty() && self.serve_owned_phase2().await? {
                        return Ok(());
                    }
                    if self.client_paused
                        && self.exchange.at_sync_point()
                        && self.relay_from_client().await?
                    {
                        return Ok(());
                    }
                }
                Some(request) = self.phase2_rx.recv() => {
                    self.phase2_queue.push_back(request);
                    if self.serve_owned_phase2().await? {
                        return Ok(());
                    }
                }
                // Cancel-safe: as above.
                read = self.client.read_buf(&mut self.from_client), if !self.client_paused => {
                    let n = read.map_err(|e| self.client_failed(e))?;
                    if n == 0 {
                        self.client_lost = true;
                        return Ok(());
                    }
                    self.ctx.metrics.mysql.bytes_from_clients.inc_by(n as u64);
                    if self.relay_from_client().await? {
                        return Ok(());
                    }
                    // tandem answered it itself (a bound session's COMMIT, a control
                    // call): no reply from the backend will bring the check.
                    if self.draining && self.closes_for_drain() {
                        return Err(Error::ShuttingDown);
                    }
                }
            }
        }
    }

    /// What ends the waits of tandem's own in the command being handled.
    pub(super) fn waits_end(&self) -> crate::cancel::WaitsEnd {
        crate::cancel::WaitsEnd {
            interrupt: self.interrupt.clone(),
            mark: self.cancels_seen,
            deadline: self.statement_deadline,
            backend: None,
        }
    }

    /// As [`Relay::waits_end`], for a wait while the backend is idle (nothing of the
    /// session's is in flight on it): anything the server sends then says why it is
    /// closing the connection (a KILL CONNECTION, a shutdown), which ends the wait.
    pub(super) fn waits_end_while_idle(&self) -> crate::cancel::WaitsEnd {
        self.waits_end()
            .watching(self.backend_watch.of(&self.server, None))
    }

    pub(super) fn client_failed(&mut self, e: std::io::Error) -> Error {
        self.client_lost = true;
        Error::ClientIo(e)
    }

    /// Tells the client why the session ends, unless the backend already did or the
    /// client cannot hear it.
    pub async fn report(&mut self, error: &Error) {
        if !self.client_lost && !self.backend_said_fatal {
            let seq = match error {
                // At a sync point nothing is due: an unsolicited ERR starts at 0, as the
                // server's own (ER_CLIENT_INTERACTION_TIMEOUT) does.
                Error::ShuttingDown | Error::UpstreamClosed | Error::UpstreamIo(_)
                    if self.exchange.at_sync_point() =>
                {
                    0
                }
                _ => self.last_seq.wrapping_add(1),
            };
            super::report(&mut self.client, seq, false, error).await;
        }
    }

    /// Ends the backend connection. A statement still running would keep its thread
    /// busy until it finishes on its own, so it is stopped first over a side connection;
    /// then COM_QUIT lets the server close without logging an aborted connection.
    pub async fn end_backend(&mut self) {
        let running = !matches!(
            self.exchange.phase,
            super::Phase::Ready { .. } | super::Phase::Quitting
        );
        if running {
            super::side::kill_query(&self.ctx.config, self.thread_id, self.binding.span()).await;
        }
        if !matches!(self.exchange.phase, super::Phase::Quitting) {
            let mut quit = BytesMut::with_capacity(5);
            put_message(&mut quit, 0, &[command::QUIT]);
            let _ = self.server.write_all(&quit).await;
        }
    }

    /// Releases the session's unchecked-write guards once its backend has ended (see
    /// `UncheckedGuards::outlive`).
    pub async fn outlive_unchecked_writes(&mut self) {
        self.unchecked
            .outlive(&mut self.server, self.ctx.lock_wait, self.binding.span())
            .await;
    }

    pub(super) async fn write_client(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() || self.client_lost {
            return Ok(());
        }
        let written = async {
            self.client.write_all(bytes).await?;
            // rustls may hold encrypted bytes until flushed; plain TCP has nothing to
            // flush.
            if matches!(self.client, ClientStream::Tls(_)) {
                self.client.flush().await?;
            }
            Ok(())
        }
        .await;
        written.map_err(|e| self.client_failed(e))
    }

    pub(super) async fn write_server(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        // The relay reads the server's replies in its own loop.
        own::write_after_closes(&mut self.server, &mut self.pending_closes, bytes, None).await
    }

    /// Writes and empties what tandem staged for each side.
    pub(super) async fn flush_staged(&mut self) -> Result<()> {
        let to_client = std::mem::take(&mut self.to_client);
        let result = self.write_client(&to_client).await;
        self.to_client = to_client;
        self.to_client.clear();
        result?;
        let to_server = std::mem::take(&mut self.to_server);
        let result = self.write_server(&to_server).await;
        self.to_server = to_server;
        self.to_server.clear();
        result
    }
}

/// Consumes up to `available` bytes of a packet being streamed through; returns how
/// many.
pub(super) fn skip_streaming(streaming: &mut usize, available: usize) -> usize {
    let take = (*streaming).min(available);
    *streaming -= take;
    take
}

/// Whether a session with `status` is inside a transaction (explicit, or with
/// autocommit off): a write there is not its own transaction.
impl Relay<'_> {
    /// Whether a draining session closes now: at a sync point with no transaction
    /// started (autocommit off alone starts none). One inside a transaction (a branch
    /// of a global transaction, perhaps) is given until the drain timeout to end it;
    /// cut there, its work would be lost and its global transaction left to its
    /// timeout.
    fn closes_for_drain(&self) -> bool {
        use crate::wire::mysql::codes::StatusFlags;
        self.exchange.at_sync_point()
            && !self
                .exchange
                .status()
                .is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_IN_TRANS))
    }
}

fn in_transaction(status: crate::wire::mysql::codes::StatusFlags) -> bool {
    use crate::wire::mysql::codes::StatusFlags;
    !status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT)
        || status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
}

fn reserve_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}
