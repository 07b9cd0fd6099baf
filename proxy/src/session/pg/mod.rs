//! The PostgreSQL session: one client connection relayed to one backend connection.
//!
//! Owns the relay loop and the per-message handlers. Relays raw bytes; decodes only the
//! messages listed in `wire::pg::messages`. Never blocks the loop on anything but its
//! two sockets. Invariant: every byte from one side reaches the other in order, except
//! the few messages tandem rewrites during startup (SASL mechanisms, BackendKeyData).

mod at;
mod at_extended;
mod at_script;
mod begin_ahead;
mod client_side;
mod control_extended;
mod exchange;
mod follow_up;
mod guard;
mod held_rows;
mod intercept;
mod phase;
mod pool_reset;
mod server_side;
pub mod startup;
pub mod tracked;
mod xa;

use crate::at::branch as at_branch;
use crate::at::meta::MetaCache;
use crate::at::phase2::Phase2Registry;
use crate::binding::Binding;
use crate::cancel::{CancelRegistry, CancelTarget, Registration};
use crate::config::PgFrontend;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::shutdown::Signals;
use crate::tls::ClientStream;
use crate::upstream::{self, ServerStream, SidePools};
use crate::wire::pg::Frame;
use crate::wire::pg::codes::{backend, frontend};
use crate::wire::pg::messages::response::{
    AuthRequest, ErrorFields, Severity, TxStatus, decode_backend_key, decode_command_tag,
    decode_parameter_status, put_backend_key, put_error, put_sasl_mechanisms,
};
use bytes::{Buf, BytesMut};
pub use phase::{CopyDirection, Phase};
use startup::Opening;
use std::sync::Arc;
use std::time::Instant;
use tandem_lockserver::client::LockClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracked::{SyncKind, Tracked};

/// What every session of one PostgreSQL front end shares.
pub struct PgFrontendContext {
    pub config: PgFrontend,
    pub upstream: Arc<str>,
    /// The server as resource ids name it (`PgFrontend::server`).
    pub server: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub cancels: Arc<CancelRegistry>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub side: Arc<SidePools>,
    pub signals: Signals,
    pub lock: LockClient,
    /// `lockserver.lock_wait_ms`.
    pub lock_wait: std::time::Duration,
    pub meta: MetaCache,
    /// Functions a global transaction must not call (they may write uncaptured).
    pub writing_functions: crate::at::meta::CatalogNames,
    /// Each partition's root, by the partition's name: writes judged by the tables
    /// they name are judged by the roots, whose names global locks go by.
    pub partition_roots: crate::at::meta::CatalogReach,
    /// The tables writes through views (and tables with rules) reach.
    pub reached_through_rules: crate::at::meta::CatalogReach,
    /// The tables foreign-key actions reach from each table, for writes judged by the
    /// tables they name.
    pub reached_by_actions: crate::at::meta::CatalogReach,
    /// What each prepared text does, analysed once (a Bind analyses its statement).
    pub analyses: tandem_undo::AnalysisCache,
    pub phase2: Phase2Registry,
    /// Writes outside global transactions: the announced tables, and how to check.
    pub outside: crate::session::outside::OutsideWriteChecks,
}

/// Read buffers start empty and grow in steps of this many bytes, so that an idle
/// session holds no buffer memory it does not use.
const READ_CHUNK: usize = 8 * 1024;

/// Serves one accepted client connection to its end.
pub async fn serve(ctx: Arc<PgFrontendContext>, socket: TcpStream, session_id: u64) {
    // The span is passed to events explicitly rather than entered around the session
    // future: entering it on every poll costs the subscriber work twice per message.
    let span = tracing::info_span!("pg_session", session = session_id);
    ctx.metrics.client_connections.inc();
    ctx.metrics.clients_active.inc();
    let result = run(&ctx, socket, &span).await;
    ctx.metrics.clients_active.dec();
    match result {
        Ok(()) => tracing::debug!(parent: &span, "session closed"),
        Err(e) => {
            ctx.metrics.count_error(e.kind());
            if e.is_client_fault() || matches!(e, Error::ShuttingDown) {
                tracing::debug!(parent: &span, error = %e, "session ended");
            } else {
                tracing::warn!(parent: &span, error = %e, "session ended");
            }
        }
    }
}

async fn run(ctx: &PgFrontendContext, socket: TcpStream, span: &tracing::Span) -> Result<()> {
    let negotiated = startup::negotiate(ctx, socket);
    let Ok(opening) = tokio::time::timeout(ctx.config.startup_timeout(), negotiated).await else {
        tracing::debug!(parent: span, "no StartupMessage in time: closed");
        return Ok(());
    };
    let (mut client, startup_packet, params, leftover) = match opening {
        Ok(Opening::Session {
            client,
            startup_packet,
            params,
            leftover,
        }) => (client, startup_packet, params, leftover),
        Ok(Opening::Cancel(key)) => return startup::forward_cancel(ctx, key).await,
        Ok(Opening::Closed) => return Ok(()),
        Err(e) => return Err(e),
    };
    tracing::debug!(
        parent: span,
        user = params.get("user").unwrap_or(""),
        database = params.database().unwrap_or(""),
        "startup"
    );
    let mut server = match upstream::connect(&ctx.upstream, ctx.config.connect_timeout()).await {
        Ok(server) => server,
        Err(e) => {
            report_fatal(&mut client, &e).await;
            return Err(e);
        }
    };
    ctx.metrics.backends_active.inc();
    let result = async {
        server
            .write_all(&startup_packet)
            .await
            .map_err(Error::UpstreamIo)?;
        let database = params.database().unwrap_or("").to_owned();
        let mut relay = Relay::new(ctx, client, server, leftover, database, span.clone());
        let result = relay.run().await;
        if let Err(e) = &result {
            relay.report(e).await;
        }
        result
    }
    .await;
    ctx.metrics.backends_active.dec();
    result
}

/// Tells the client why its session ends, as a FATAL ErrorResponse. Best effort: the
/// client may already be gone.
async fn report_fatal(client: &mut ClientStream, error: &Error) {
    let mut out = BytesMut::new();
    put_error(
        &mut out,
        Severity::Fatal,
        error.sqlstate().code(),
        &error.to_string(),
    );
    let _ = client.write_all(&out).await;
    let _ = client.flush().await;
}

struct Relay<'a> {
    ctx: &'a PgFrontendContext,
    client: ClientStream,
    server: ServerStream,
    from_client: BytesMut,
    from_server: BytesMut,
    /// Replies for the client not yet written: sent together at the next flush
    /// (`flush_client`), so that a rewritten reply and the ReadyForQuery behind it
    /// reach the client in one write, and wake it once.
    to_client: BytesMut,
    /// Bytes of a large client message still to pass through without buffering it.
    client_streaming: usize,
    /// Bytes of a large backend message still to pass through without buffering it.
    server_streaming: usize,
    phase: Phase,
    tracked: Tracked,
    /// The texts of prepared statements the backend listed for an SQL-level EXECUTE
    /// outside a global transaction (`guard::prepared_texts`), good in the batch
    /// (`Tracked::batch_being_sent`) they were asked in while no message that may
    /// prepare or drop names followed (`Tracked::name_messages`).
    prepared_texts: ((u64, u64), std::collections::HashMap<String, String>),
    /// ParameterStatus values the backend reported, latest first wins.
    server_params: Vec<(String, String)>,
    /// standard_conforming_strings was reported off at some point: a statement parsed
    /// then (a prepared one) read `\'` as an escaped quote, so a bound session's text
    /// with a backslash is not trusted from then on (`text_misread`).
    escapes_seen: bool,
    cancel: Option<Registration>,
    /// The client's cancels, as tandem's own waits hear them, and where the request
    /// being handled began among them.
    interrupt: crate::cancel::Interrupt,
    cancels_seen: u64,
    request_started: Option<Instant>,
    /// The backend already told the client why it is closing (a FATAL ErrorResponse).
    backend_said_fatal: bool,
    /// That FATAL came among the replies to tandem's own statements before any of them
    /// completed: none of them ran (exchange.rs).
    fatal_before_tandems_replies: bool,
    /// The client connection failed; nothing more can be written to it.
    client_lost: bool,
    draining: bool,
    /// Reading from the client waits for the next sync point (a control statement is
    /// queued behind requests in flight).
    client_paused: bool,
    binding: Binding,
    /// The database this session is connected to.
    database: String,
    /// Its resource id at the lockserver.
    resource: String,
    /// Writes outside a global transaction let through unchecked and not yet over.
    unchecked: crate::session::outside::UncheckedGuards,
    /// A watch on the backend connection for waits while it is idle.
    backend_watch: crate::upstream::IdleWatch,
    /// The rows this session's current local transaction changed in its global one.
    branch: at_branch::Branch,
    /// The settings that change how the server prints a key (`at::KEY_SETTINGS`), as
    /// they were at the current branch's first write: a branch names its rows by
    /// printed keys, and binds them back at its COMMIT.
    branch_settings: Vec<(String, String)>,
    write_in_flight: Option<at::WriteInFlight>,
    /// The write in flight is the first statement of a longer batch (run under a Sync
    /// of tandem's): its ReadyForQuery is not the client's.
    batch_continues: bool,
    /// A statement of a batch run piecewise failed: the client's messages up to its
    /// Sync are dropped, as the backend would have skipped them, and its Sync gets a
    /// ReadyForQuery with this status.
    skip_to_client_sync: Option<TxStatus>,
    /// Since the session was last idle at a sync point, the client has run only BEGIN
    /// and SAVEPOINT (`holds_nothing`): an open block takes no row locks yet. pgJDBC
    /// with autocommit off runs a BEGIN, and with `autosave` a SAVEPOINT, ahead of
    /// every first statement of a block, a control call included.
    block_untouched: bool,
    /// The unnamed portal's statement is one that `block_untouched` lets run.
    unnamed_portal_holds_nothing: bool,
    /// The open transaction block is tandem's, begun for a batch of writes the client
    /// sent outside one (one implicit transaction for the backend); it ends at the
    /// client's Sync, committed with its branch unless it failed (at.rs,
    /// `end_implicit_batch`), and the client sees ReadyForQuery 'I'.
    implicit_batch: bool,
    /// An Execute was sent since the last Sync (or Query): the transaction state the
    /// last ReadyForQuery gave may have changed within the batch.
    executed_in_batch: bool,
    /// A Bind was sent since the last Sync (or Query or FunctionCall).
    bound_in_batch: bool,
    /// Something run since the last Sync (or Query) may have ended the transaction
    /// block: any Execute but one of the unnamed portal whose statement keeps it
    /// (`unnamed_portal_keeps_block`).
    block_may_have_ended: bool,
    /// The unnamed portal's statement cannot end a transaction block (`keeps_block`).
    unnamed_portal_keeps_block: bool,
    /// The backend reported an error since its last ReadyForQuery: it skips what the
    /// client sends up to the next Sync.
    error_since_ready: bool,
    /// Rows past the client's row limit of writes with RETURNING that tandem ran
    /// whole (see `on_write_command_complete`), for later Executes of their portals.
    held_rows: held_rows::HeldRows,
    /// Pool resets (RESET ALL, DISCARD ALL) the client sent, on their way to
    /// unbinding the session.
    pool_resets: pool_reset::PoolResets,
    /// The batch so far is Close messages only (pgJDBC closes the statements it
    /// dropped ahead of a transaction's BEGIN): a BEGIN may still run ahead.
    closes_only_in_batch: bool,
    /// The client's own COMMIT of a branch, relayed over the extended protocol after
    /// tandem registered the branch and wrote its undo row (at_extended.rs); whether
    /// the backend answered it with an error.
    commit_in_flight: Option<(at::UndoRow, bool)>,
    /// XA mode's branch in the current local transaction.
    xa: xa::XaBranch,
    /// What the branch does once the statement of the Bind or Query being relayed has
    /// run, as its interception decided (follow_up.rs); the message's ledger entry
    /// takes it.
    next_follow_up: Option<follow_up::FollowUp>,
    /// A multi-statement query of a bound AT session, sent one statement at a time.
    script: Option<at_script::Script>,
    /// The latest CommandComplete of a query whose transaction tandem opened and ends
    /// (`ends_implicit_transaction_itself`): held
    /// until that commit has gone through, since a backend whose implicit commit fails
    /// sends the error in its place. Relayed as soon as anything else follows it.
    held_complete: Option<BytesMut>,
    /// The ParameterDescription of tandem's last describe exchange.
    describe_reply: Option<Vec<u32>>,
    /// What this session's unqualified table names resolve to under its own
    /// search_path and role: schema-qualified name and OID. Emptied whenever the
    /// client may have changed either (at.rs, `forget_resolved_tables`).
    resolved_tables: std::collections::HashMap<String, (tandem_undo::TableRef, u32)>,
    /// A SET or RESET ran in the current transaction: its end forgets `resolved_tables`.
    resolutions_end_with_transaction: bool,
}

/// What to do with one backend message.
enum Relayed {
    AsIs,
    /// Send this instead of the message.
    Rewritten(BytesMut),
}

impl<'a> Relay<'a> {
    fn new(
        ctx: &'a PgFrontendContext,
        client: ClientStream,
        server: ServerStream,
        from_client: BytesMut,
        database: String,
        span: tracing::Span,
    ) -> Self {
        Relay {
            ctx,
            client,
            server,
            from_client,
            from_server: BytesMut::new(),
            to_client: BytesMut::new(),
            client_streaming: 0,
            server_streaming: 0,
            phase: Phase::Authenticating,
            tracked: Tracked::default(),
            prepared_texts: ((0, 0), std::collections::HashMap::new()),
            server_params: Vec::new(),
            escapes_seen: false,
            cancel: None,
            interrupt: crate::cancel::Interrupt::default(),
            cancels_seen: 0,
            request_started: None,
            backend_said_fatal: false,
            fatal_before_tandems_replies: false,
            client_lost: false,
            draining: false,
            client_paused: false,
            binding: Binding::new(span),
            resource: crate::at::resource_id(&ctx.server, &database),
            database,
            unchecked: crate::session::outside::UncheckedGuards::default(),
            backend_watch: crate::upstream::IdleWatch::default(),
            branch: at_branch::Branch::default(),
            branch_settings: Vec::new(),
            write_in_flight: None,
            batch_continues: false,
            skip_to_client_sync: None,
            block_untouched: true,
            unnamed_portal_holds_nothing: false,
            implicit_batch: false,
            executed_in_batch: false,
            bound_in_batch: false,
            block_may_have_ended: false,
            unnamed_portal_keeps_block: false,
            error_since_ready: false,
            held_rows: held_rows::HeldRows::default(),
            pool_resets: pool_reset::PoolResets::default(),
            closes_only_in_batch: true,
            commit_in_flight: None,
            xa: xa::XaBranch::None,
            next_follow_up: None,
            script: None,
            held_complete: None,
            describe_reply: None,
            resolved_tables: std::collections::HashMap::new(),
            resolutions_end_with_transaction: false,
        }
    }

    /// What ends a wait of tandem's own while the backend is idle (the statement waits
    /// for a global lock before it is sent): the client's cancel, or the backend's
    /// FATAL ErrorResponse as it closes the connection (`pg_terminate_backend`, a
    /// shutdown), which the relay then passes on.
    fn waits_end_while_idle(&self) -> crate::cancel::WaitsEnd {
        let last_word = Some(crate::wire::pg::codes::backend::ERROR_RESPONSE);
        crate::cancel::WaitsEnd::on_cancel(&self.interrupt, self.cancels_seen)
            .watching(self.backend_watch.of(&self.server, last_word))
    }

    /// A wait of tandem's ended by `e`. If the backend's closing ended it, the session
    /// ends here (the error): its FATAL goes on to the client, in the server's words,
    /// and nothing of tandem's follows it (the session's report then adds nothing).
    async fn on_wait_ended(&mut self, e: &Error) -> Result<()> {
        if !matches!(e, Error::UpstreamClosed) {
            return Ok(());
        }
        if self.backend_ended_unasked().await {
            // Passed on: it must not go again with what the session ends on.
            self.from_server.clear();
        }
        Err(Error::UpstreamClosed)
    }

    async fn run(&mut self) -> Result<()> {
        // The client may have pipelined messages behind its StartupMessage.
        if !self.from_client.is_empty() && self.relay_from_client_then_buffered().await? {
            return Ok(());
        }
        // Made once, not per iteration: each `cancelled()` future registers a waiter
        // under the token's lock, which would cost two lock round trips per message.
        let abort = self.ctx.signals.abort.clone().cancelled_owned();
        let drain = self.ctx.signals.drain.clone().cancelled_owned();
        tokio::pin!(abort, drain);
        loop {
            // Whatever is owed to the client goes before the session waits again.
            self.flush_client().await?;
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
                    if read.map_err(Error::UpstreamIo)? == 0 {
                        return Err(Error::UpstreamClosed);
                    }
                    self.relay_from_server().await?;
                    if self.draining && self.closes_for_drain() {
                        return Err(Error::ShuttingDown);
                    }
                    // A message held for a sync point while the backend went into
                    // copy-in mode is relayed (see relay_from_client).
                    // So is one held while an error made the backend skip to the
                    // client's Sync (a refusal held behind it got no reply).
                    // And one held until earlier batches were answered, when tandem may
                    // now settle the session (`may_settle`).
                    let resumes = self.phase.at_sync_point()
                        || self.tracked.copying_in()
                        || self.backend_skips_to_sync()
                        || self.may_settle();
                    if self.client_paused && resumes && self.relay_from_client_then_buffered().await? {
                        return Ok(());
                    }
                }
                // Cancel-safe: as above.
                read = self.client.read_buf(&mut self.from_client), if !self.client_paused => {
                    let read = read.map_err(|e| {
                        self.client_lost = true;
                        Error::ClientIo(e)
                    });
                    if read? == 0 {
                        self.client_lost = true;
                        self.on_client_gone().await;
                        return Ok(());
                    }
                    if self.relay_from_client_then_buffered().await? {
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

    /// Relays the client's messages, then any backend replies tandem already holds: a
    /// statement pipelined behind tandem's own may have answered in full while tandem
    /// read its own replies, and no socket read would ever wake the loop for it.
    async fn relay_from_client_then_buffered(&mut self) -> Result<bool> {
        if self.relay_from_client().await? {
            return Ok(true);
        }
        while !self.from_server.is_empty() {
            let held = self.from_server.len();
            self.relay_from_server().await?;
            if self.client_paused && self.phase.at_sync_point() {
                if self.relay_from_client().await? {
                    return Ok(true);
                }
            } else if self.from_server.len() == held {
                // An incomplete message: the next read completes it.
                break;
            }
        }
        Ok(false)
    }

    fn client_failed(&mut self, e: std::io::Error) -> Error {
        self.client_lost = true;
        Error::ClientIo(e)
    }

    /// Whether a draining session closes now: at a sync point outside a transaction
    /// block. One inside a block (a branch of a global transaction, perhaps) is given
    /// until the drain timeout to end it, as PgBouncer's safe shutdown gives it; cut
    /// there, its work would be lost and its global transaction left to its timeout.
    fn closes_for_drain(&self) -> bool {
        self.phase.at_sync_point() && self.phase.tx_status() == Some(TxStatus::Idle)
    }

    /// The client closed its connection without Terminate.
    async fn on_client_gone(&mut self) {
        self.end_backend().await;
        self.outlive_unchecked_writes().await;
    }

    /// Releases the session's unchecked-write guards once its backend has ended (see
    /// `UncheckedGuards::outlive`).
    async fn outlive_unchecked_writes(&mut self) {
        self.unchecked
            .outlive(&mut self.server, self.ctx.lock_wait, self.binding.span())
            .await;
    }

    /// Tells the client why the session ends, unless the backend already did or the
    /// client cannot hear it; then ends the backend connection cleanly where possible.
    async fn report(&mut self, error: &Error) {
        if !self.client_lost && !self.backend_said_fatal {
            // Replies already relayed come first; a failure here is reported below.
            let _ = self.flush_client().await;
            report_fatal(&mut self.client, error).await;
        }
        if !matches!(error, Error::UpstreamIo(_) | Error::UpstreamClosed) {
            self.end_backend().await;
            self.outlive_unchecked_writes().await;
        }
    }

    /// Ends a backend connection that is still alive. A request still running would keep
    /// the backend busy until it finishes on its own (a `pg_sleep(3600)`, a runaway
    /// query), so it is cancelled first; then the backend is told to terminate.
    async fn end_backend(&mut self) {
        if !self.phase.at_sync_point()
            && let Some(registration) = &self.cancel
            && let Some(target) = self.ctx.cancels.lookup(&registration.key)
        {
            let timeout = self.ctx.config.connect_timeout();
            if let Err(e) = upstream::send_cancel(&target.upstream, target.backend, timeout).await {
                tracing::debug!(parent: self.binding.span(), error = %e, "could not cancel the running request");
            }
        }
        let _ = self.server.write_all(&TERMINATE_MESSAGE).await;
    }
}

/// Terminate ('X' with an empty body).
const TERMINATE_MESSAGE: [u8; 5] = [frontend::TERMINATE, 0, 0, 0, 4];

fn out_of_order(e: tracked::OutOfOrder) -> Error {
    Error::UpstreamProtocol(e.0)
}

/// Consumes up to `available` bytes of a message being streamed through; returns how
/// many.
fn skip_streaming(streaming: &mut usize, available: usize) -> usize {
    let take = (*streaming).min(available);
    *streaming -= take;
    take
}

/// Client messages tandem must see whole: every one but CopyData, which belongs to the
/// request that started the COPY and streams through. Each other one moves the
/// session's state (`on_client_message`), so one split across reads is waited for:
/// relayed unseen, a FunctionCall's or Execute's reply would arrive unaccounted for.
fn client_message_is_read(tag: u8) -> bool {
    tag != frontend::COPY_DATA
}

/// Backend messages tandem decodes or counts (the ledger's replies), and so must buffer
/// whole.
fn server_message_is_read(tag: u8) -> bool {
    matches!(
        tag,
        backend::READY_FOR_QUERY
            | backend::PARSE_COMPLETE
            | backend::BIND_COMPLETE
            | backend::CLOSE_COMPLETE
            | backend::COMMAND_COMPLETE
            | backend::ROW_DESCRIPTION
            | backend::NO_DATA
            | backend::EMPTY_QUERY_RESPONSE
            | backend::PORTAL_SUSPENDED
            | backend::ERROR_RESPONSE
            | backend::PARAMETER_STATUS
            | backend::AUTHENTICATION
            | backend::BACKEND_KEY_DATA
    )
}

fn reserve_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}
