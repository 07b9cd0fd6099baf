//! The backend's side of the relay: messages from the backend, the bookkeeping they
//! drive (ReadyForQuery, ParseComplete…), the replies tandem rewrites (startup, AT
//! writes in flight, refusals), and writes to the client.

use super::*;

impl Relay<'_> {
    /// Relays every complete backend message, rewriting the few tandem must.
    pub(super) async fn relay_from_server(&mut self) -> Result<()> {
        // tandem's own exchanges, run while relaying, may read replies that belong to
        // a statement sent behind them: relay those too.
        while self.relay_from_server_once().await? {}
        Ok(())
    }

    /// One pass over the buffered backend bytes; true when more arrived meanwhile.
    async fn relay_from_server_once(&mut self) -> Result<bool> {
        let buf = std::mem::take(&mut self.from_server);
        let max = self.ctx.config.max_message_bytes;
        let mut pos = skip_streaming(&mut self.server_streaming, buf.len());
        let mut run_start = 0;
        while self.server_streaming == 0 {
            let Some(frame) = Frame::header(&buf[pos..], max)? else {
                break;
            };
            if !frame.is_complete(&buf[pos..]) {
                // The replies of a write in flight are all read whole: its rows carry
                // tandem's key and image columns, which must come off.
                if !server_message_is_read(frame.tag) && self.write_in_flight.is_none() {
                    self.server_streaming = frame.wire_len - (buf.len() - pos);
                    pos = buf.len();
                }
                break;
            }
            if !matches!(
                frame.tag,
                backend::READY_FOR_QUERY
                    | backend::PARAMETER_STATUS
                    | backend::NOTICE_RESPONSE
                    | backend::NOTIFICATION_RESPONSE
            ) && let Some(held) = self.held_complete.take()
            {
                // Another statement's reply follows: the held one was not the last.
                // (Asynchronous messages may come anywhere, and pass it: PostgreSQL
                // reports changed settings just before ReadyForQuery.)
                self.write_client(&buf[run_start..pos]);
                self.write_client(&held);
                run_start = pos;
            }
            if frame.tag == backend::READY_FOR_QUERY {
                // What tandem does at a ReadyForQuery may run statements of its own
                // (its COMMIT), whose ParameterStatus and notifications reach the
                // client as they come: the replies before it must be ahead of them, or
                // a setting a script changed and tandem's COMMIT reverted would be
                // heard in the wrong order, the stale value last.
                self.write_client(&buf[run_start..pos]);
                run_start = pos;
            }
            if frame.tag == backend::ERROR_RESPONSE
                && let Some(refusal) = self.tracked.take_refusal()
            {
                let skipped = self.tracked.on_refusal_error();
                self.on_skipped_to_sync(skipped);
                self.error_since_ready = true;
                let mut replacement = BytesMut::new();
                put_error(
                    &mut replacement,
                    Severity::Error,
                    refusal.sqlstate,
                    &refusal.message,
                );
                self.write_client(&buf[run_start..pos]);
                self.write_client(&replacement);
                pos += frame.wire_len;
                run_start = pos;
                continue;
            }
            if let Some(w) = &mut self.write_in_flight
                && w.swallow.front() == Some(&frame.tag)
            {
                w.swallow.pop_front();
                self.write_client(&buf[run_start..pos]);
                pos += frame.wire_len;
                run_start = pos;
                continue;
            }
            if frame.tag == backend::READY_FOR_QUERY
                && matches!(self.commit_in_flight, Some((_, true)))
                && TxStatus::decode(frame.body(&buf[pos..])) != Some(TxStatus::Idle)
            {
                let replacement = self.on_failed_commit_ready(frame.body(&buf[pos..])).await?;
                self.write_client(&buf[run_start..pos]);
                self.write_client(&replacement);
                pos += frame.wire_len;
                run_start = pos;
                continue;
            }
            if self.script.is_some() && frame.tag == backend::READY_FOR_QUERY {
                let replacement = self.on_script_ready(frame.body(&buf[pos..])).await?;
                self.write_client(&buf[run_start..pos]);
                self.write_client(&replacement);
                pos += frame.wire_len;
                run_start = pos;
                continue;
            }
            if self.implicit_batch
                && self.write_in_flight.is_none()
                && frame.tag == backend::READY_FOR_QUERY
            {
                let replacement = self
                    .on_implicit_batch_ready(frame.body(&buf[pos..]))
                    .await?;
                self.write_client(&buf[run_start..pos]);
                self.write_client(&replacement);
                pos += frame.wire_len;
                run_start = pos;
                continue;
            }
            if self.xa == xa::XaBranch::Implicit
                && self.write_in_flight.is_none()
                && frame.tag == backend::READY_FOR_QUERY
            {
                let replacement = self.on_xa_implicit_ready(frame.body(&buf[pos..])).await?;
                self.write_client(&buf[run_start..pos]);
                self.write_client(&replacement);
                pos += frame.wire_len;
                run_start = pos;
                continue;
            }
            if self.write_in_flight.is_some() {
                let body = frame.body(&buf[pos..]);
                let rewritten = match frame.tag {
                    backend::ROW_DESCRIPTION => self
                        .on_write_row_description(body)?
                        .inspect(|_| self.tracked.on_describe_done()),
                    backend::DATA_ROW => self.on_write_data_row(body)?,
                    backend::COMMAND_COMPLETE => {
                        self.on_write_command_complete(body).inspect(|_| {
                            // A write's portal carries no follow-up.
                            let _ = self.tracked.on_execute_done();
                        })
                    }
                    backend::ERROR_RESPONSE => {
                        self.on_write_error();
                        // The backend's own bookkeeping of the error still applies.
                        let _ = self.on_server_message(frame.tag, body)?;
                        Some(BytesMut::from(&buf[pos..pos + frame.wire_len]))
                    }
                    backend::READY_FOR_QUERY => Some(self.on_write_ready(body).await?),
                    _ => None,
                };
                if let Some(replacement) = rewritten {
                    self.write_client(&buf[run_start..pos]);
                    self.write_client(&replacement);
                    pos += frame.wire_len;
                    run_start = pos;
                    continue;
                }
            }
            let relayed = self.on_server_message(frame.tag, frame.body(&buf[pos..]))?;
            if frame.tag == backend::COMMAND_COMPLETE
                && matches!(relayed, Relayed::AsIs)
                && self.ends_implicit_transaction_itself()
            {
                self.write_client(&buf[run_start..pos]);
                self.held_complete = Some(BytesMut::from(&buf[pos..pos + frame.wire_len]));
                pos += frame.wire_len;
                run_start = pos;
                continue;
            }
            match relayed {
                Relayed::AsIs => {}
                Relayed::Rewritten(replacement) => {
                    self.write_client(&buf[run_start..pos]);
                    self.write_client(&replacement);
                    run_start = pos + frame.wire_len;
                }
            }
            pos += frame.wire_len;
        }
        self.ctx.metrics.bytes_from_backends.inc_by(pos as u64);
        self.flush_client_with(&buf[run_start..pos]).await?;
        let arrived = std::mem::replace(&mut self.from_server, buf);
        self.from_server.advance(pos);
        if arrived.is_empty() {
            return Ok(false);
        }
        self.from_server.extend_from_slice(&arrived);
        Ok(true)
    }

    /// The client sent a pool reset (RESET ALL, DISCARD ALL) in the batch it is
    /// sending: it unbinds the session once it has run (pool_reset.rs).
    pub(super) fn on_pool_reset_sent(&mut self) {
        self.pool_resets.sent(self.tracked.batch_being_sent());
    }

    /// Records a ParameterStatus (its body), whoever's statement it followed.
    pub(super) fn note_parameter_status(&mut self, body: &[u8]) -> Result<()> {
        let (name, value) = decode_parameter_status(body)
            .map_err(|_| Error::UpstreamProtocol("bad ParameterStatus"))?;
        if name.eq_ignore_ascii_case("standard_conforming_strings")
            && value.eq_ignore_ascii_case("off")
        {
            self.escapes_seen = true;
        }
        self.server_params.retain(|(n, _)| *n != name);
        self.server_params.push((name, value));
        Ok(())
    }

    /// An error made the backend skip Queries or FunctionCalls up to the client's
    /// Sync: their ReadyForQuery is no longer awaited.
    fn on_skipped_to_sync(&mut self, skipped: tracked::SkippedToSync) {
        if skipped.sync_points > 0 {
            self.phase = self
                .phase
                .on_skipped_to_sync(skipped.sync_points, skipped.sync_queued);
        }
    }

    pub(super) fn on_server_message(&mut self, tag: u8, body: &[u8]) -> Result<Relayed> {
        match tag {
            backend::READY_FOR_QUERY => {
                self.error_since_ready = false;
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
                if let Some((undo, failed)) = self.commit_in_flight.take()
                    && failed
                {
                    self.report_phase_one_failed(Some(&undo));
                }
                // A script sends its statements one at a time, each a batch of its own:
                // its reset may be ahead still.
                let next_of_script = self
                    .script
                    .is_some()
                    .then(|| self.tracked.batch_being_sent());
                let verdict = self.pool_resets.on_ready(
                    self.tracked.last_batch_answered(),
                    status != TxStatus::Idle,
                    next_of_script,
                );
                match verdict {
                    pool_reset::Verdict::Keep => {}
                    pool_reset::Verdict::Unbind => {
                        tracing::debug!(parent: self.binding.span(), "pool reset: unbound");
                        self.binding.unbind();
                    }
                    pool_reset::Verdict::UnbindAtTransactionEnd => {
                        self.binding.unbind_at_transaction_end();
                    }
                }
                if self.phase == Phase::Ready(TxStatus::Idle) {
                    // A branch never outlives its local transaction: every COMMIT path
                    // has taken it by now, and after a ROLLBACK (over either protocol)
                    // the rows it captured are undone and their row locks gone, as are
                    // the transaction's savepoints.
                    self.branch = at_branch::Branch::default();
                    // Portals end with their transaction.
                    self.held_rows.on_transaction_end();
                    self.binding.on_local_transaction_end();
                    self.forget_resolutions_of_ended_transaction();
                    if self.xa == xa::XaBranch::Open {
                        self.xa = xa::XaBranch::None;
                    }
                }
                if was_startup && self.phase.at_sync_point() {
                    // Authenticated: table notices for this database reach the proxy
                    // (writes outside global transactions are checked against them)
                    // once phase 2 serves it.
                    self.ctx.phase2.serve(&self.resource);
                }
                if self.phase.at_sync_point() && !was_startup {
                    // Every write let through unchecked is over.
                    self.unchecked.release();
                    self.ctx.metrics.queries.inc();
                    if let Some(started) = self.request_started.take() {
                        self.ctx
                            .metrics
                            .backend_latency
                            .observe(started.elapsed().as_secs_f64());
                    }
                }
            }
            backend::EMPTY_QUERY_RESPONSE | backend::PORTAL_SUSPENDED => {
                // Not a statement that completed: nothing to follow.
                let _ = self.tracked.on_execute_done();
            }
            backend::ROW_DESCRIPTION | backend::NO_DATA => self.tracked.on_describe_done(),
            backend::PARSE_COMPLETE => self.tracked.on_parse_complete().map_err(out_of_order)?,
            backend::BIND_COMPLETE => self.tracked.on_bind_complete().map_err(out_of_order)?,
            backend::CLOSE_COMPLETE => self.tracked.on_close_complete().map_err(out_of_order)?,
            backend::COMMAND_COMPLETE => {
                let tag = decode_command_tag(body)
                    .map_err(|_| Error::UpstreamProtocol("bad CommandComplete"))?;
                if let Some(follow_up) = self.tracked.on_command_complete() {
                    self.follow_bound_statement(follow_up, tag);
                }
                if tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL" {
                    self.tracked.forget_all_statements();
                } else if matches!(tag, b"PREPARE" | b"DEALLOCATE" | b"DO" | b"CALL") {
                    self.tracked.on_names_may_have_changed();
                }
                if !self.pool_resets.is_empty() {
                    self.pool_resets
                        .on_command_complete(tag, self.tracked.batch_being_answered());
                }
                if tag == b"ROLLBACK" {
                    // It may undo a reset that ran in the transaction (or after the
                    // savepoint): the session stays bound. And a rollback to a
                    // savepoint drops the portals made since.
                    self.binding.keep_after_rollback();
                    self.held_rows.on_portals_may_be_gone();
                }
                if tag.starts_with(b"CLOSE CURSOR") {
                    // SQL's CLOSE names portals too (CLOSE ALL closes every one).
                    self.held_rows.on_portals_may_be_gone();
                } else if tag == b"COMMIT" {
                    // COMMIT AND CHAIN ends the transaction, its portals with it,
                    // though the session stays in a block.
                    self.held_rows.on_transaction_end();
                }
                if tag == b"DISCARD ALL"
                    && (self.binding.xid().is_some() || self.binding.mode().is_some())
                {
                    // A pool's reset, however it was sent (the extended protocol, a
                    // comment before it): the next user of the connection must not
                    // write inside this global transaction, nor in the mode this user
                    // chose. It never runs inside a transaction block, so nothing of
                    // the branch is left open.
                    tracing::debug!(parent: self.binding.span(), "DISCARD ALL: unbound");
                    self.binding.unbind();
                }
                // DO and CALL may have run DDL of their own (EXECUTE 'CREATE TRIGGER …'),
                // which no tag shows.
                if [&b"CREATE"[..], b"ALTER", b"DROP"]
                    .iter()
                    .any(|ddl| tag.starts_with(ddl))
                    || matches!(tag, b"DO" | b"CALL")
                {
                    self.ctx.meta.invalidate(&self.database);
                    self.ctx.writing_functions.invalidate(&self.database);
                    self.ctx.partition_roots.invalidate(&self.database);
                    self.ctx.reached_through_rules.invalidate(&self.database);
                    self.ctx.reached_by_actions.invalidate(&self.database);
                    self.forget_resolved_tables();
                }
                // What may have changed the session's search_path or role: SET and
                // RESET (of them, or of all), DISCARD ALL, and a ROLLBACK that undid a
                // SET. A change tandem cannot see (set_config in a function) is caught
                // by the write itself (at.rs, `with_returning_key_and_table`).
                if [&b"SET"[..], b"RESET", b"DISCARD", b"ROLLBACK"]
                    .iter()
                    .any(|tag_start| tag.starts_with(tag_start))
                {
                    self.forget_resolved_tables();
                    // A SET LOCAL lasts until the transaction ends, and so may what
                    // was resolved under it.
                    self.resolutions_end_with_transaction = true;
                }
            }
            backend::ERROR_RESPONSE => {
                self.error_since_ready = true;
                self.tracked.on_names_may_have_changed();
                if !self.pool_resets.is_empty() {
                    self.pool_resets
                        .on_error(self.tracked.batch_being_answered());
                }
                let fields = ErrorFields::decode(body)
                    .map_err(|_| Error::UpstreamProtocol("bad ErrorResponse"))?;
                if fields.is_fatal() || self.phase == Phase::Authenticating {
                    self.backend_said_fatal = true;
                }
                let skipped = self.tracked.on_error_response();
                self.on_skipped_to_sync(skipped);
                if let Some((_, failed)) = &mut self.commit_in_flight {
                    *failed = true;
                }
                if let Some(refusal) = super::intercept::own_refusal(&fields)
                    .or_else(|| super::intercept::control_call_misplaced(&fields))
                {
                    return Ok(Relayed::Rewritten(refusal));
                }
            }
            backend::PARAMETER_STATUS => self.note_parameter_status(body)?,
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
    pub(super) fn on_authentication(&mut self, body: &[u8]) -> Result<Relayed> {
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
    pub(super) fn on_backend_key(&mut self, body: &[u8]) -> Result<Relayed> {
        let backend =
            decode_backend_key(body).map_err(|_| Error::UpstreamProtocol("bad BackendKeyData"))?;
        let registration = self.ctx.cancels.register(CancelTarget {
            upstream: Arc::clone(&self.ctx.upstream),
            backend,
            interrupt: self.interrupt.clone(),
        });
        let mut out = BytesMut::new();
        put_backend_key(&mut out, registration.key);
        self.cancel = Some(registration);
        tracing::debug!(parent: self.binding.span(), backend_pid = backend.pid, "backend key");
        Ok(Relayed::Rewritten(out))
    }

    /// The backend's ReadyForQuery (`body`) that ends a block of tandem's (an implicit
    /// batch, or XA autocommit work), after the bookkeeping every ReadyForQuery gets:
    /// the block's status. tandem then ends the block with statements of its own, which
    /// must not meet a client request still in flight: the client's messages pause at
    /// the Sync that ends such a block (client_side.rs), and this is the check.
    pub(super) fn on_block_ending_ready(&mut self, body: &[u8]) -> Result<TxStatus> {
        let status = TxStatus::decode(body).ok_or(Error::UpstreamProtocol("bad ReadyForQuery"))?;
        let _ = self.on_server_message(backend::READY_FOR_QUERY, body)?;
        if !self.phase.at_sync_point() {
            return Err(Error::UpstreamProtocol(
                "a ReadyForQuery ending tandem's own block with requests still in flight",
            ));
        }
        Ok(status)
    }

    /// Queues `bytes` for the client; they go at the next `flush_client`, in order.
    pub(super) fn write_client(&mut self, bytes: &[u8]) {
        self.to_client.extend_from_slice(bytes);
    }

    /// Writes everything queued for the client and flushes it.
    pub(super) async fn flush_client(&mut self) -> Result<()> {
        self.flush_client_with(&[]).await
    }

    /// Writes everything queued for the client, then `last`, in one write where the
    /// queue is empty (a relayed run of backend bytes is then not copied), and flushes.
    pub(super) async fn flush_client_with(&mut self, last: &[u8]) -> Result<()> {
        let result = if self.to_client.is_empty() {
            if last.is_empty() {
                return Ok(());
            }
            self.client.write_all(last).await
        } else {
            self.to_client.extend_from_slice(last);
            let result = self.client.write_all(&self.to_client).await;
            self.to_client.clear();
            result
        };
        match result {
            Ok(()) => self.client.flush().await,
            Err(e) => Err(e),
        }
        .map_err(|e| self.client_failed(e))
    }
}
