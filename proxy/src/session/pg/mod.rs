//! The PostgreSQL session: one client connection relayed to one backend connection.
//!
//! Owns the relay loop and the per-message handlers. Relays raw bytes; decodes only the
//! messages listed in `wire::pg::messages`. Never blocks the loop on anything but its
//! two sockets. Invariant: every byte from one side reaches the other in order, except
//! the few messages tandem rewrites during startup (SASL mechanisms, BackendKeyData).

mod at;
mod at_extended;
mod control_extended;
mod exchange;
mod intercept;
mod phase;
pub mod startup;
pub mod tracked;

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
use at_extended::Extended;
use bytes::{Buf, BytesMut};
use intercept::{Intercepted, put_failing_bind, put_failing_parse};
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
    pub metrics: Arc<Metrics>,
    pub cancels: Arc<CancelRegistry>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub side: Arc<SidePools>,
    pub signals: Signals,
    pub lock: LockClient,
    pub meta: MetaCache,
    pub phase2: Phase2Registry,
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
    let (mut client, startup_packet, params, leftover) = match startup::negotiate(ctx, socket).await
    {
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
    /// Bytes of a large client message still to pass through without buffering it.
    client_streaming: usize,
    /// Bytes of a large backend message still to pass through without buffering it.
    server_streaming: usize,
    phase: Phase,
    tracked: Tracked,
    /// ParameterStatus values the backend reported, latest first wins.
    server_params: Vec<(String, String)>,
    cancel: Option<Registration>,
    request_started: Option<Instant>,
    /// The backend already told the client why it is closing (a FATAL ErrorResponse).
    backend_said_fatal: bool,
    /// The client connection failed; nothing more can be written to it.
    client_lost: bool,
    draining: bool,
    /// Reading from the client waits for the next sync point (a control statement is
    /// queued behind requests in flight).
    client_paused: bool,
    binding: Binding,
    /// The database this session is connected to.
    database: String,
    /// The rows this session's current local transaction changed in its global one.
    branch: at_branch::Branch,
    write_in_flight: Option<at::WriteInFlight>,
    /// The ParameterDescription of tandem's last describe exchange.
    describe_reply: Option<Vec<u32>>,
    span: tracing::Span,
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
            client_streaming: 0,
            server_streaming: 0,
            phase: Phase::Authenticating,
            tracked: Tracked::default(),
            server_params: Vec::new(),
            cancel: None,
            request_started: None,
            backend_said_fatal: false,
            client_lost: false,
            draining: false,
            client_paused: false,
            binding: Binding::default(),
            database,
            branch: at_branch::Branch::default(),
            write_in_flight: None,
            describe_reply: None,
            span,
        }
    }

    async fn run(&mut self) -> Result<()> {
        // The client may have pipelined messages behind its StartupMessage.
        if !self.from_client.is_empty() && self.relay_from_client().await? {
            return Ok(());
        }
        // Made once, not per iteration: each `cancelled()` future registers a waiter
        // under the token's lock, which would cost two lock round trips per message.
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
                    if self.phase.at_sync_point() {
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
                    if self.draining && self.phase.at_sync_point() {
                        return Err(Error::ShuttingDown);
                    }
                    if self.client_paused && self.phase.at_sync_point() && self.relay_from_client().await? {
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
                    if self.relay_from_client().await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Relays every complete client message; returns true once Terminate was relayed.
    /// A control statement is carried out here and replaced by a query that makes the
    /// backend answer with its result, so that the answer keeps its place among the
    /// replies; one that arrives while earlier requests are in flight waits for them
    /// (reading from the client pauses until the next sync point).
    async fn relay_from_client(&mut self) -> Result<bool> {
        let buf = std::mem::take(&mut self.from_client);
        let max = self.ctx.config.max_message_bytes;
        let mut pos = skip_streaming(&mut self.client_streaming, buf.len());
        let mut run_start = 0;
        let mut terminated = false;
        self.client_paused = false;
        while self.client_streaming == 0 {
            let Some(frame) = Frame::header(&buf[pos..], max)? else {
                break;
            };
            if !frame.is_complete(&buf[pos..]) {
                if !client_message_is_read(frame.tag) {
                    self.client_streaming = frame.wire_len - (buf.len() - pos);
                    pos = buf.len();
                }
                break;
            }
            let body = frame.body(&buf[pos..]);
            let control = match frame.tag {
                frontend::PARSE | frontend::BIND => self.control_in(frame.tag, body),
                _ => None,
            };
            if control.is_some()
                || (self.binding.xid().is_some()
                    && matches!(frame.tag, frontend::PARSE | frontend::BIND))
            {
                let handled = match control {
                    Some(parsed) => {
                        self.intercept_control(&buf[pos..], frame.tag, body, parsed)
                            .await?
                    }
                    None => {
                        self.intercept_extended(&buf[pos..], frame.tag, body)
                            .await?
                    }
                };
                match handled {
                    Extended::ReplaceParse(replacement) => {
                        self.write_server(&buf[run_start..pos]).await?;
                        self.write_server(&replacement).await?;
                        self.on_client_message(frame.tag, body)?;
                        pos += frame.wire_len;
                        run_start = pos;
                        continue;
                    }
                    Extended::NotAWrite => {}
                    Extended::NeedMore => break,
                    Extended::WaitForSyncPoint => {
                        self.client_paused = true;
                        break;
                    }
                    Extended::RefuseBind(refusal) => {
                        let mut replacement = BytesMut::new();
                        put_failing_bind(&mut replacement, body);
                        self.write_server(&buf[run_start..pos]).await?;
                        self.write_server(&replacement).await?;
                        self.on_client_message(frame.tag, body)?;
                        self.tracked.refuse_last(refusal);
                        pos += frame.wire_len;
                        run_start = pos;
                        continue;
                    }
                    Extended::Handled {
                        consumed,
                        to_backend,
                    } => {
                        self.write_server(&buf[run_start..pos]).await?;
                        pos += consumed;
                        run_start = pos;
                        if let Some(batch) = to_backend {
                            self.write_server(&batch).await?;
                            // Its ReadyForQuery finishes the write; nothing more until then.
                            self.client_paused = true;
                            break;
                        }
                        continue;
                    }
                }
            }
            if frame.tag == frontend::PARSE
                && let Some(refusal) = self.refusal_for_parse(body)
            {
                let mut replacement = BytesMut::new();
                put_failing_parse(&mut replacement, body);
                self.write_server(&buf[run_start..pos]).await?;
                self.write_server(&replacement).await?;
                self.on_client_message(frame.tag, body)?;
                self.tracked.refuse_last(refusal);
                pos += frame.wire_len;
                run_start = pos;
                continue;
            }
            if frame.tag == frontend::QUERY {
                match self.intercept_query(body).await? {
                    Intercepted::Relay => {}
                    Intercepted::WaitForSyncPoint => {
                        self.client_paused = true;
                        break;
                    }
                    Intercepted::Replace(replacement) => {
                        self.write_server(&buf[run_start..pos]).await?;
                        self.write_server(&replacement).await?;
                        run_start = pos + frame.wire_len;
                    }
                    Intercepted::Answer(answer) => {
                        self.write_server(&buf[run_start..pos]).await?;
                        self.write_client(&answer).await?;
                        tokio::io::AsyncWriteExt::flush(&mut self.client)
                            .await
                            .map_err(|e| self.client_failed(e))?;
                        pos += frame.wire_len;
                        run_start = pos;
                        continue;
                    }
                    Intercepted::ReplaceAndHold(replacement) => {
                        self.write_server(&buf[run_start..pos]).await?;
                        self.write_server(&replacement).await?;
                        self.on_client_message(frame.tag, body)?;
                        pos += frame.wire_len;
                        run_start = pos;
                        self.client_paused = true;
                        break;
                    }
                }
            }
            self.on_client_message(frame.tag, body)?;
            pos += frame.wire_len;
            if frame.tag == frontend::TERMINATE {
                terminated = true;
                break;
            }
        }
        self.ctx.metrics.bytes_from_clients.inc_by(pos as u64);
        self.write_server(&buf[run_start..pos]).await?;
        self.from_client = buf;
        self.from_client.advance(pos);
        Ok(terminated)
    }

    async fn write_server(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.server
            .write_all(bytes)
            .await
            .map_err(Error::UpstreamIo)
    }

    /// The control statement a Parse or Bind runs, if any (a cheap test first: this runs
    /// on every Parse and Bind).
    fn control_in(
        &self,
        tag: u8,
        body: &[u8],
    ) -> Option<std::result::Result<crate::control::Control, crate::control::BadCall>> {
        use crate::wire::pg::messages::extended::{Bind, Parse};
        let sql = match tag {
            frontend::PARSE => Parse::decode(body).ok()?.sql,
            _ => {
                &self
                    .tracked
                    .statement(Bind::decode(body).ok()?.statement)?
                    .sql[..]
            }
        };
        control_extended::maybe_control(sql)
    }

    fn on_client_message(&mut self, tag: u8, body: &[u8]) -> Result<()> {
        if self.phase == Phase::Authenticating {
            return match tag {
                frontend::PASSWORD | frontend::TERMINATE => Ok(()),
                _ => Err(Error::UnexpectedMessage {
                    tag,
                    context: "during authentication",
                }),
            };
        }
        let ends_with_ready = match tag {
            frontend::QUERY => self.tracked.on_sync_point_request(SyncKind::Query),
            frontend::FUNCTION_CALL => self.tracked.on_sync_point_request(SyncKind::FunctionCall),
            frontend::SYNC => {
                if !self.tracked.on_sync_point_request(SyncKind::Sync) {
                    // The backend ignores it (copy-in mode): it changes nothing.
                    return Ok(());
                }
                true
            }
            frontend::PARSE => {
                self.tracked
                    .on_parse(body)
                    .map_err(|_| Error::Malformed { what: "Parse" })?;
                false
            }
            frontend::BIND => {
                self.tracked
                    .on_bind(body)
                    .map_err(|_| Error::Malformed { what: "Bind" })?;
                false
            }
            frontend::CLOSE => {
                self.tracked
                    .on_close(body)
                    .map_err(|_| Error::Malformed { what: "Close" })?;
                false
            }
            frontend::DESCRIBE | frontend::EXECUTE | frontend::FLUSH => false,
            // COPY data belongs to the request that started the COPY.
            frontend::COPY_DATA => return Ok(()),
            frontend::COPY_DONE | frontend::COPY_FAIL => {
                self.tracked.on_copy_end();
                return Ok(());
            }
            frontend::TERMINATE => return Ok(()),
            _ => {
                return Err(Error::UnexpectedMessage {
                    tag,
                    context: "from the client",
                });
            }
        };
        if self.phase.at_sync_point() {
            self.request_started = Some(Instant::now());
        }
        self.phase = self.phase.on_request(ends_with_ready);
        Ok(())
    }

    /// Relays every complete backend message, rewriting the few tandem must.
    async fn relay_from_server(&mut self) -> Result<()> {
        let buf = std::mem::take(&mut self.from_server);
        let max = self.ctx.config.max_message_bytes;
        let mut pos = skip_streaming(&mut self.server_streaming, buf.len());
        let mut run_start = 0;
        while self.server_streaming == 0 {
            let Some(frame) = Frame::header(&buf[pos..], max)? else {
                break;
            };
            if !frame.is_complete(&buf[pos..]) {
                if !server_message_is_read(frame.tag) {
                    self.server_streaming = frame.wire_len - (buf.len() - pos);
                    pos = buf.len();
                }
                break;
            }
            if frame.tag == backend::ERROR_RESPONSE
                && let Some(refusal) = self.tracked.take_refusal()
            {
                self.tracked.on_error_response();
                let mut replacement = BytesMut::new();
                put_error(
                    &mut replacement,
                    Severity::Error,
                    refusal.sqlstate,
                    &refusal.message,
                );
                self.write_client(&buf[run_start..pos]).await?;
                self.write_client(&replacement).await?;
                pos += frame.wire_len;
                run_start = pos;
                continue;
            }
            if let Some(w) = &mut self.write_in_flight
                && w.swallow.front() == Some(&frame.tag)
            {
                w.swallow.pop_front();
                self.write_client(&buf[run_start..pos]).await?;
                pos += frame.wire_len;
                run_start = pos;
                continue;
            }
            if self.write_in_flight.is_some() {
                let body = frame.body(&buf[pos..]);
                let rewritten = match frame.tag {
                    backend::ROW_DESCRIPTION => self.on_write_row_description(body)?,
                    backend::DATA_ROW => self.on_write_data_row(body)?,
                    backend::ERROR_RESPONSE => {
                        self.on_write_error();
                        None
                    }
                    backend::READY_FOR_QUERY => Some(self.on_write_ready(body).await?),
                    _ => None,
                };
                if let Some(replacement) = rewritten {
                    self.write_client(&buf[run_start..pos]).await?;
                    self.write_client(&replacement).await?;
                    pos += frame.wire_len;
                    run_start = pos;
                    continue;
                }
            }
            match self.on_server_message(frame.tag, frame.body(&buf[pos..]))? {
                Relayed::AsIs => {}
                Relayed::Rewritten(replacement) => {
                    self.write_client(&buf[run_start..pos]).await?;
                    self.write_client(&replacement).await?;
                    run_start = pos + frame.wire_len;
                }
            }
            pos += frame.wire_len;
        }
        self.ctx.metrics.bytes_from_backends.inc_by(pos as u64);
        self.write_client(&buf[run_start..pos]).await?;
        self.client
            .flush()
            .await
            .map_err(|e| self.client_failed(e))?;
        self.from_server = buf;
        self.from_server.advance(pos);
        Ok(())
    }

    fn on_server_message(&mut self, tag: u8, body: &[u8]) -> Result<Relayed> {
        match tag {
            backend::READY_FOR_QUERY => {
                let status =
                    TxStatus::decode(body).ok_or(Error::UpstreamProtocol("bad ReadyForQuery"))?;
                if self.phase != Phase::Authenticating {
                    self.tracked
                        .on_ready_for_query(status == TxStatus::Idle)
                        .map_err(|e| Error::UpstreamProtocol(e.0))?;
                }
                let was_startup = self.phase == Phase::Authenticating;
                self.phase = self
                    .phase
                    .on_ready(status)
                    .map_err(|_| Error::UpstreamProtocol("ReadyForQuery when none was due"))?;
                if self.phase == Phase::Ready(TxStatus::Idle) {
                    self.binding.on_local_transaction_end();
                }
                if self.phase.at_sync_point() && !was_startup {
                    self.ctx.metrics.queries.inc();
                    if let Some(started) = self.request_started.take() {
                        self.ctx
                            .metrics
                            .backend_latency
                            .observe(started.elapsed().as_secs_f64());
                    }
                }
            }
            backend::PARSE_COMPLETE => self.tracked.on_parse_complete().map_err(out_of_order)?,
            backend::BIND_COMPLETE => self.tracked.on_bind_complete().map_err(out_of_order)?,
            backend::CLOSE_COMPLETE => self.tracked.on_close_complete().map_err(out_of_order)?,
            backend::COMMAND_COMPLETE => {
                let tag = decode_command_tag(body)
                    .map_err(|_| Error::UpstreamProtocol("bad CommandComplete"))?;
                if tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL" {
                    self.tracked.forget_all_statements();
                }
                if [&b"CREATE"[..], b"ALTER", b"DROP"]
                    .iter()
                    .any(|ddl| tag.starts_with(ddl))
                {
                    self.ctx.meta.invalidate(&self.database);
                }
            }
            backend::ERROR_RESPONSE => {
                let fields = ErrorFields::decode(body)
                    .map_err(|_| Error::UpstreamProtocol("bad ErrorResponse"))?;
                if fields.is_fatal() || self.phase == Phase::Authenticating {
                    self.backend_said_fatal = true;
                }
                self.tracked.on_error_response();
            }
            backend::PARAMETER_STATUS => {
                let (name, value) = decode_parameter_status(body)
                    .map_err(|_| Error::UpstreamProtocol("bad ParameterStatus"))?;
                self.server_params.retain(|(n, _)| *n != name);
                self.server_params.push((name, value));
            }
            backend::COPY_IN_RESPONSE => {
                let ignored = self.tracked.on_copy_in_response();
                self.phase = self
                    .phase
                    .on_copy(CopyDirection::In)
                    .on_syncs_ignored(ignored);
            }
            backend::COPY_OUT_RESPONSE => self.phase = self.phase.on_copy(CopyDirection::Out),
            backend::COPY_BOTH_RESPONSE => self.phase = self.phase.on_copy(CopyDirection::Both),
            backend::AUTHENTICATION if self.phase == Phase::Authenticating => {
                return self.on_authentication(body);
            }
            backend::BACKEND_KEY_DATA if self.phase == Phase::Authenticating => {
                return self.on_backend_key(body);
            }
            _ => {}
        }
        Ok(Relayed::AsIs)
    }

    /// SCRAM's channel binding (`-PLUS`) ties the exchange to the TLS channel the backend
    /// sees, which is tandem's, not the client's; offering it would make the client bind
    /// to the wrong channel. So only the unbound mechanisms are offered.
    fn on_authentication(&mut self, body: &[u8]) -> Result<Relayed> {
        let request =
            AuthRequest::decode(body).map_err(|_| Error::UpstreamProtocol("bad Authentication"))?;
        let AuthRequest::Sasl(mechanisms) = request else {
            return Ok(Relayed::AsIs);
        };
        if !mechanisms.iter().any(|m| m.ends_with("-PLUS")) {
            return Ok(Relayed::AsIs);
        }
        let unbound: Vec<String> = mechanisms
            .into_iter()
            .filter(|m| !m.ends_with("-PLUS"))
            .collect();
        let mut out = BytesMut::new();
        put_sasl_mechanisms(&mut out, unbound);
        Ok(Relayed::Rewritten(out))
    }

    /// The client gets a key of tandem's own, so that its CancelRequest comes to tandem,
    /// which knows the backend behind it.
    fn on_backend_key(&mut self, body: &[u8]) -> Result<Relayed> {
        let backend =
            decode_backend_key(body).map_err(|_| Error::UpstreamProtocol("bad BackendKeyData"))?;
        let registration = self.ctx.cancels.register(CancelTarget {
            upstream: Arc::clone(&self.ctx.upstream),
            backend,
        });
        let mut out = BytesMut::new();
        put_backend_key(&mut out, registration.key);
        self.cancel = Some(registration);
        tracing::debug!(parent: &self.span, backend_pid = backend.pid, "backend key");
        Ok(Relayed::Rewritten(out))
    }

    async fn write_client(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.client
            .write_all(bytes)
            .await
            .map_err(|e| self.client_failed(e))
    }

    fn client_failed(&mut self, e: std::io::Error) -> Error {
        self.client_lost = true;
        Error::ClientIo(e)
    }

    /// The client closed its connection without Terminate.
    async fn on_client_gone(&mut self) {
        self.end_backend().await;
    }

    /// Tells the client why the session ends, unless the backend already did or the
    /// client cannot hear it; then ends the backend connection cleanly where possible.
    async fn report(&mut self, error: &Error) {
        if !self.client_lost && !self.backend_said_fatal {
            report_fatal(&mut self.client, error).await;
        }
        if !matches!(error, Error::UpstreamIo(_) | Error::UpstreamClosed) {
            self.end_backend().await;
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
                tracing::debug!(parent: &self.span, error = %e, "could not cancel the running request");
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

/// Client messages tandem decodes, and so must buffer whole.
fn client_message_is_read(tag: u8) -> bool {
    matches!(
        tag,
        frontend::QUERY | frontend::PARSE | frontend::BIND | frontend::CLOSE | frontend::TERMINATE
    )
}

/// Backend messages tandem decodes, and so must buffer whole.
fn server_message_is_read(tag: u8) -> bool {
    matches!(
        tag,
        backend::READY_FOR_QUERY
            | backend::PARSE_COMPLETE
            | backend::BIND_COMPLETE
            | backend::CLOSE_COMPLETE
            | backend::COMMAND_COMPLETE
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
