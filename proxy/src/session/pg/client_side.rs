//! The client's side of the relay: messages from the client, what tandem intercepts
//! among them (control statements, AT writes, refusals), and writes to the backend.
//!
//! Never writes to the client except to answer what it intercepted.

use super::at_extended::Extended;
use super::intercept::{Intercepted, put_failing_bind, put_failing_parse};
use super::*;
use crate::wire::pg::messages::response::TxStatus;

impl Relay<'_> {
    /// Relays every complete client message; returns true once Terminate was relayed.
    /// A control statement is carried out here and replaced by a query that makes the
    /// backend answer with its result, so that the answer keeps its place among the
    /// replies; one that arrives while earlier requests are in flight waits for them
    /// (reading from the client pauses until the next sync point).
    pub(super) async fn relay_from_client(&mut self) -> Result<bool> {
        let buf = std::mem::take(&mut self.from_client);
        let max = self.ctx.config.max_message_bytes;
        let mut pos = skip_streaming(&mut self.client_streaming, buf.len());
        let mut run_start = 0;
        let mut terminated = false;
        self.client_paused = false;
        if self.phase.at_sync_point() {
            // A new request: a cancel from now on is meant for it.
            self.cancels_seen = self.interrupt.mark();
        }
        while self.client_streaming == 0 {
            let Some(frame) = Frame::header(&buf[pos..], max)? else {
                break;
            };
            if is_small_client_message(frame.tag) && frame.wire_len > 5 + SMALL_MESSAGE_BYTES {
                // Buffered whole (see client_message_is_read): held to PostgreSQL's own
                // bound for these, not max_message_bytes.
                return Err(crate::wire::pg::FrameError::TooLarge {
                    tag: frame.tag,
                    declared: frame.wire_len - 1,
                    max: SMALL_MESSAGE_BYTES,
                }
                .into());
            }
            // Refused on its header, before its body is read into memory (which may be
            // up to max_message_bytes): as PostgreSQL refuses an unknown type, or a
            // message other than a password's, or one over its bound, during
            // authentication.
            if !is_frontend_message(frame.tag)
                || (self.phase == Phase::Authenticating
                    && !matches!(frame.tag, frontend::PASSWORD | frontend::TERMINATE))
            {
                return Err(Error::UnexpectedMessage {
                    tag: frame.tag,
                    context: if self.phase == Phase::Authenticating {
                        "during authentication"
                    } else {
                        "from the client"
                    },
                });
            }
            // PostgreSQL's bound counts the length word, not the type byte.
            if self.phase == Phase::Authenticating && frame.wire_len > 1 + AUTH_MESSAGE_BYTES {
                return Err(crate::wire::pg::FrameError::TooLarge {
                    tag: frame.tag,
                    declared: frame.wire_len - 1,
                    max: AUTH_MESSAGE_BYTES,
                }
                .into());
            }
            if let Some(status) = self.skip_to_client_sync
                && frame.tag != frontend::TERMINATE
            {
                // The rest of a batch whose statement failed: dropped, as the backend
                // would have skipped it (a Terminate still ends the session).
                if !frame.is_complete(&buf[pos..]) {
                    break;
                }
                self.write_server(&buf[run_start..pos]).await?;
                pos += frame.wire_len;
                run_start = pos;
                if frame.tag == frontend::SYNC {
                    self.skip_to_client_sync = None;
                    let mut ready = BytesMut::new();
                    self.put_batch_end(&mut ready, status).await?;
                    self.write_client(&ready);
                    self.flush_client().await?;
                }
                continue;
            }
            if !frame.is_complete(&buf[pos..]) {
                if !client_message_is_read(frame.tag) {
                    self.client_streaming = frame.wire_len - (buf.len() - pos);
                    pos = buf.len();
                }
                break;
            }
            let body = frame.body(&buf[pos..]);
            // Set for this message only, by its interception (follow_up.rs).
            self.next_follow_up = None;
            if self.tracked.copying_in()
                && matches!(
                    frame.tag,
                    frontend::QUERY
                        | frontend::PARSE
                        | frontend::BIND
                        | frontend::EXECUTE
                        | frontend::FUNCTION_CALL
                )
            {
                // Not COPY data: the backend answers it with a protocol error and ends
                // the session. Held for a sync point instead, it would leave both ends
                // waiting for each other.
                self.on_client_message(frame.tag, body)?;
                pos += frame.wire_len;
                continue;
            }
            if self.phase != Phase::Authenticating
                && let Some(what) = crate::wire::pg::messages::extended::malformed(frame.tag, body)
            {
                // Refused in the backend's place, with a Bind that fails: the client
                // hears 08P01, the backend skips to the Sync, and the session goes on,
                // as PostgreSQL does with such a message.
                let mut replacement = BytesMut::new();
                super::intercept::put_failing_bind_of(&mut replacement, b"");
                self.write_server(&buf[run_start..pos]).await?;
                self.write_server(&replacement).await?;
                self.on_client_message(frontend::BIND, &replacement[5..])?;
                self.tracked
                    .refuse_last(super::at_extended::refusal(Error::MalformedCommand {
                        what,
                    }));
                pos += frame.wire_len;
                run_start = pos;
                continue;
            }
            if self.phase.at_sync_point() && self.verifies_statements_first(frame.tag, body) {
                self.write_server(&buf[run_start..pos]).await?;
                run_start = pos;
                self.verify_statements().await?;
            }
            let control = match frame.tag {
                frontend::PARSE | frontend::BIND => self.control_in(frame.tag, body),
                _ => None,
            };
            let names_own = super::intercept::names_tandems_own(frame.tag, body);
            // A Describe of the unnamed statement where the backend's is tandem's.
            let describes_tandems = frame.tag == frontend::DESCRIBE
                && body.strip_prefix(b"S").is_some_and(|name| {
                    name.strip_suffix(b"\0")
                        .is_some_and(|name| self.tracked.meets_tandems_unnamed(name))
                });
            // Outside a global transaction, or in XA mode (whose writes are checked as
            // those outside are: guard.rs).
            let execute_outside = frame.tag == frontend::EXECUTE
                && (self.binding.xid().is_none() || self.branch_mode() == crate::binding::Mode::Xa);
            // An Execute of a portal whose rows past an earlier limit tandem holds.
            let execute_held = frame.tag == frontend::EXECUTE
                && crate::wire::pg::reader::Reader::new(body)
                    .cstr()
                    .is_ok_and(|portal| self.held_rows.holds(portal));
            if matches!(frame.tag, frontend::PARSE | frontend::BIND)
                && (self.after_leading_closes(TxStatus::Idle)
                    || (self.after_leading_closes(TxStatus::InTransaction)
                        && self.savepoint_may_run_ahead()))
            {
                // A BEGIN or SAVEPOINT here may run ahead (begin_ahead.rs), written by
                // tandem: the Closes before it go first.
                self.write_server(&buf[run_start..pos]).await?;
                run_start = pos;
            }
            let late_execute = match frame.tag {
                frontend::EXECUTE => self.late_execute_escapes(body),
                _ => None,
            };
            if control.is_some()
                || matches!(frame.tag, frontend::PARSE | frontend::BIND)
                || execute_outside
                || execute_held
                || names_own
                || describes_tandems
                || late_execute.is_some()
            {
                let handled = match control {
                    // tandem's own statement (its last rewritten write, its undo row's
                    // INSERT) stays prepared between uses: run by the client, it would
                    // write uncaptured.
                    _ if names_own => {
                        Extended::RefuseExecute(super::at_extended::refusal(Error::Unsupported {
                            what: "a statement or portal name starting with \\x01 (tandem's own statements are named so)",
                        }))
                    }
                    _ if describes_tandems => Extended::RefuseExecute(super::at_extended::refusal(
                        Error::UnnamedStatementGone,
                    )),
                    _ if let Some(e) = late_execute => {
                        Extended::RefuseExecute(super::at_extended::refusal(e))
                    }
                    Some(parsed) => {
                        self.intercept_control(&buf[pos..], frame.tag, body, parsed)
                            .await?
                    }
                    None if execute_held => {
                        self.execute_held(body, frame.wire_len, run_start == pos)
                            .await?
                    }
                    None if execute_outside => self.guard_execute(&buf[pos..], body).await?,
                    None => {
                        self.intercept_statement(&buf[pos..], frame.tag, body)
                            .await?
                    }
                };
                match handled {
                    Extended::ReplaceParse(replacement) => {
                        self.write_server(&buf[run_start..pos]).await?;
                        self.write_server(&replacement).await?;
                        self.on_client_message(frame.tag, body)?;
                        self.tracked
                            .stand_in_last(&replacement[5..])
                            .map_err(|_| Error::Malformed { what: "Parse" })?;
                        pos += frame.wire_len;
                        run_start = pos;
                        continue;
                    }
                    Extended::NotAWrite => {}
                    Extended::NeedMore => break,
                    Extended::SettleFirst => {
                        self.write_server(&buf[run_start..pos]).await?;
                        run_start = pos;
                        self.settle().await?;
                        // This message again, now at a sync point.
                        continue;
                    }
                    Extended::WaitForSyncPoint => {
                        self.client_paused = true;
                        break;
                    }
                    Extended::RefuseExecute(refusal) => {
                        // Bind and Execute begin with their portal's name.
                        let portal = match frame.tag {
                            frontend::BIND | frontend::EXECUTE => {
                                crate::wire::pg::reader::Reader::new(body)
                                    .cstr()
                                    .unwrap_or(b"")
                            }
                            _ => b"",
                        };
                        let mut replacement = BytesMut::new();
                        super::intercept::put_failing_bind_of(&mut replacement, portal);
                        self.write_server(&buf[run_start..pos]).await?;
                        self.write_server(&replacement).await?;
                        // The backend answers a Bind now, whose error is the client's.
                        self.on_client_message(frontend::BIND, &replacement[5..])?;
                        self.tracked.refuse_last(refusal);
                        pos += frame.wire_len;
                        run_start = pos;
                        continue;
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
            if matches!(frame.tag, frontend::QUERY | frontend::FUNCTION_CALL)
                && self.backend_skips_to_sync()
            {
                // The backend ignores it, as everything up to the client's Sync: it gets
                // no reply at all, so it is not sent, and no ReadyForQuery awaited.
                self.write_server(&buf[run_start..pos]).await?;
                pos += frame.wire_len;
                run_start = pos;
                continue;
            }
            if frame.tag == frontend::FUNCTION_CALL && self.function_call_escapes_branch(body) {
                // Refused as a failing Query, which the backend answers as it would the
                // call: an ErrorResponse, then ReadyForQuery.
                let replacement = self.refusal_query(Error::Unsupported {
                    what: "the protocol's FunctionCall (large-object calls among them) in a global transaction outside an XA branch's block (what the function writes is not captured)",
                });
                self.write_server(&buf[run_start..pos]).await?;
                self.write_server(&replacement).await?;
                run_start = pos + frame.wire_len;
            }
            if frame.tag == frontend::QUERY {
                // What came before goes first: tandem may send statements of its own.
                self.write_server(&buf[run_start..pos]).await?;
                run_start = pos;
                // tandem's block stands for the client's implicit transaction until its
                // Sync (a write behind a Flush ran in it): this Query's ReadyForQuery
                // would end it, committing what the client may still roll back, or
                // turning its BEGIN into a warning. Refused before tandem acts on it (a
                // COMMIT would commit the branch), the implicit transaction fails, as an
                // error in it would.
                let intercepted = if self.implicit_batch {
                    Intercepted::ReplaceAndHold(self.refusal_query(Error::Unsupported {
                        what: "a simple Query sent behind a pipelined write with no Sync yet (tandem runs that batch in a block of its own until the client's Sync)",
                    }))
                } else {
                    self.intercept_query(body).await?
                };
                let intercepted = match intercepted {
                    // Bound or executed work since the last Sync: tandem's own Sync would
                    // commit it apart from this Query, and without one no sync point
                    // ever comes (the client waits for this Query's reply). Refused, as
                    // a failing Query: the backend runs it in that work's transaction,
                    // which it then fails, as a Query that fails without tandem does.
                    // Held behind it, as a replaced Query is: its ReadyForQuery may end a
                    // block of tandem's, which needs a sync point.
                    Intercepted::WaitForSyncPoint if !self.may_settle() && self.phase.unsynced() => {
                        Intercepted::ReplaceAndHold(self.refusal_query(Error::Unsupported {
                            what: "a simple Query that tandem must act on (a control function, or a write in or beside a global transaction) sent behind extended-protocol messages with no Sync",
                        }))
                    }
                    intercepted => intercepted,
                };
                match intercepted {
                    Intercepted::Relay => {}
                    // No ReadyForQuery is due: one is made (asyncpg's prepare leaves Parse,
                    // Describe and Flush unsynced ahead of a simple Query).
                    Intercepted::WaitForSyncPoint if self.may_settle() => {
                        self.settle().await?;
                        continue;
                    }
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
                        // The server never sees this batch: a reset in it never ran.
                        self.pool_resets.forget(self.tracked.batch_being_sent());
                        self.write_server(&buf[run_start..pos]).await?;
                        self.write_client(&answer);
                        self.flush_client().await?;
                        pos += frame.wire_len;
                        run_start = pos;
                        continue;
                    }
                    Intercepted::SentAndHold => {
                        self.on_client_message(frame.tag, body)?;
                        pos += frame.wire_len;
                        run_start = pos;
                        self.client_paused = true;
                        break;
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
            if frame.tag == frontend::SYNC
                && (self.implicit_batch || self.xa == super::xa::XaBranch::Implicit)
            {
                // tandem ends its block when this Sync is answered, with statements of
                // its own: what the client sent behind it waits for that.
                self.client_paused = true;
                break;
            }
        }
        self.ctx.metrics.bytes_from_clients.inc_by(pos as u64);
        self.write_server(&buf[run_start..pos]).await?;
        self.from_client = buf;
        self.from_client.advance(pos);
        Ok(terminated)
    }

    /// Whether the backend is asked which unverified statements it still holds
    /// (`verify_statements`) before this message, the first of a batch: in a bound
    /// session before any request (its batch may Bind them further on, where nothing
    /// can be asked; a Query too, so that a BEGIN runs after the question, not
    /// before), otherwise before a Bind of one (outside a global transaction a
    /// statement's text decides only whether its write is checked, and whether its
    /// XID hint binds the session).
    fn verifies_statements_first(&self, tag: u8, body: &[u8]) -> bool {
        match tag {
            frontend::BIND if self.binding.xid().is_none() => {
                crate::wire::pg::messages::extended::Bind::statement_of(body)
                    .is_ok_and(|statement| self.tracked.statement_unverified(statement))
            }
            frontend::QUERY
            | frontend::PARSE
            | frontend::BIND
            | frontend::DESCRIBE
            | frontend::EXECUTE
            | frontend::CLOSE => self.binding.xid().is_some() && self.tracked.has_unverified(),
            _ => false,
        }
    }

    /// An Execute (`body`), in a bound session, of a portal bound in an earlier batch
    /// whose statement tandem acts on only at its Bind: a write in AT mode (captured
    /// there), or the COMMIT of a branch (registered, or prepared, there). Bound before
    /// the session was bound, or before the branch had work, it would run as bound:
    /// uncaptured, or committed outside the branch.
    fn late_execute_escapes(&self, body: &[u8]) -> Option<Error> {
        self.binding.xid()?;
        let portal = crate::wire::pg::reader::Reader::new(body).cstr().ok()?;
        if self.tracked.bound_in_this_batch(portal) {
            return None;
        }
        let bound = self.tracked.portal(portal)?;
        if bound.executed {
            // Run already (captured at its Bind, or committed): executed again, it
            // gives what rows its row limit left, or nothing.
            return None;
        }
        if !bound.judged {
            // Bound before the session was bound, it was never judged, and would run as
            // bound: a write uncaptured (or, in XA mode, outside the branch), a
            // function's writes unseen, whatever its statement.
            return Some(Error::Unsupported {
                what: "executing, inside a global transaction, a portal bound before the session was bound to it (bind it again)",
            });
        }
        // Its statement as it was at the Bind: closed or replaced since, the portal
        // still runs it.
        let Some(sql) = &bound.sql else {
            return Some(super::at_extended::OPAQUE_STATEMENT);
        };
        let sql = String::from_utf8_lossy(sql).into_owned();
        let analyses = self.ctx.analyses.analyze(&sql).ok()?;
        let escapes = match analyses.as_slice() {
            [tandem_undo::Analysis::Commit] => {
                !self.branch.is_empty() || self.xa != super::xa::XaBranch::None
            }
            [tandem_undo::Analysis::Write(_)] => self.branch_mode() == crate::binding::Mode::At,
            _ => false,
        };
        escapes.then_some(Error::Unsupported {
            what: "executing, in a later batch than its Bind, a portal that writes or commits inside a global transaction (bind and execute it in one batch)",
        })
    }

    /// Whether a FunctionCall (`body`) would write outside what the session's global
    /// transaction captures: in AT mode any function but the large-object reads (a
    /// function's writes are not seen), in XA mode any outside the branch's block. In
    /// XA mode one that may write makes its block the branch, as a write does.
    fn function_call_escapes_branch(&mut self, body: &[u8]) -> bool {
        if self.binding.xid().is_none() {
            return false;
        }
        let reads = body
            .first_chunk::<4>()
            .map(|oid| u32::from_be_bytes(*oid))
            .is_some_and(|oid| LARGE_OBJECT_READS.contains(&oid));
        if self.branch_mode() == crate::binding::Mode::Xa {
            let in_block = self.phase.tx_status() == Some(TxStatus::InTransaction);
            // tandem's own block of autocommit work (Implicit) stays tandem's.
            if in_block && !reads && self.xa == super::xa::XaBranch::None {
                self.xa = super::xa::XaBranch::Open;
            }
            return !in_block;
        }
        !reads
    }

    /// An error answered extended-protocol messages sent since the last sync point, and
    /// no Sync has followed them: the backend discards what it receives up to a Sync
    /// (every earlier Sync or Query has had its ReadyForQuery, so the error was theirs).
    pub(super) fn backend_skips_to_sync(&self) -> bool {
        self.error_since_ready
            && matches!(
                self.phase,
                Phase::Busy {
                    awaiting: 0,
                    unsynced: true,
                    ..
                }
            )
    }

    pub(super) async fn write_server(&mut self, bytes: &[u8]) -> Result<()> {
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
    pub(super) fn control_in(
        &self,
        tag: u8,
        body: &[u8],
    ) -> Option<std::result::Result<crate::control::Call, crate::control::BadCall>> {
        use crate::wire::pg::messages::extended::{Bind, Parse};
        let sql = match tag {
            frontend::PARSE => Parse::sql_of(body).ok()?,
            _ => {
                &self
                    .tracked
                    .statement_for_bind(Bind::decode(body).ok()?.statement)?
                    .sql[..]
            }
        };
        control_extended::maybe_control(sql)
    }

    pub(super) fn on_client_message(&mut self, tag: u8, body: &[u8]) -> Result<()> {
        self.track_untouched_block(tag, body);
        match tag {
            frontend::EXECUTE => {
                self.executed_in_batch = true;
                self.block_may_have_ended |=
                    body.first() != Some(&0) || !self.unnamed_portal_keeps_block;
            }
            frontend::BIND => {
                self.bound_in_batch = true;
                if let Ok(portal) = crate::wire::pg::reader::Reader::new(body).cstr() {
                    self.held_rows.on_bind(portal);
                }
            }
            frontend::CLOSE => {
                if let Some(portal) = body.strip_prefix(b"P")
                    && let Ok(portal) = crate::wire::pg::reader::Reader::new(portal).cstr()
                {
                    self.held_rows.on_close(portal);
                }
            }
            frontend::SYNC | frontend::QUERY | frontend::FUNCTION_CALL => {
                if tag == frontend::QUERY {
                    // A Query replaces the unnamed portal.
                    self.held_rows.on_query();
                }
                self.executed_in_batch = false;
                self.bound_in_batch = false;
                self.block_may_have_ended = false;
            }
            _ => {}
        }
        self.closes_only_in_batch = match tag {
            frontend::CLOSE => self.closes_only_in_batch,
            // Each ends a batch: the next message starts one.
            frontend::SYNC | frontend::QUERY | frontend::FUNCTION_CALL => true,
            _ => false,
        };
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
            frontend::QUERY => {
                let sent = self.tracked.on_sync_point_request(SyncKind::Query);
                if let Some(follow_up) = self.next_follow_up.take() {
                    self.tracked.follow_up_last_query(follow_up);
                }
                sent
            }
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
                let follow_up = self.next_follow_up.take();
                let judged = self.binding.xid().is_some();
                self.tracked
                    .on_bind(body, follow_up, judged)
                    .map_err(|_| Error::Malformed { what: "Bind" })?;
                false
            }
            frontend::CLOSE => {
                self.tracked
                    .on_close(body)
                    .map_err(|_| Error::Malformed { what: "Close" })?;
                false
            }
            frontend::DESCRIBE => {
                self.tracked.on_describe();
                false
            }
            frontend::EXECUTE => {
                self.tracked.on_execute(body);
                false
            }
            // It asks the backend to send what it has; it leaves nothing to sync (psycopg
            // sends one after its Sync, which must not leave the session mid-batch).
            frontend::FLUSH => return Ok(()),
            // COPY data belongs to the request that started the COPY.
            frontend::COPY_DATA => return Ok(()),
            frontend::COPY_DONE | frontend::COPY_FAIL => {
                // At a sync point no COPY runs or is about to (the one they end was
                // refused, or failed, before they came): the backend ignores them.
                if !self.phase.at_sync_point() {
                    self.tracked.on_copy_end();
                }
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
}

/// The built-in large-object functions that write nothing (their OIDs are fixed):
/// lo_open, lo_close, loread, lo_lseek, lo_tell, lo_lseek64, lo_tell64 and both
/// lo_get. pgJDBC's LargeObject reads call them over FunctionCall.
const LARGE_OBJECT_READS: [u32; 9] = [952, 953, 954, 956, 958, 3170, 3171, 3458, 3459];

/// The length PostgreSQL allows a client message that carries no statement or data
/// (PQ_SMALL_MESSAGE_LIMIT).
const SMALL_MESSAGE_BYTES: usize = 10_000;

/// The length PostgreSQL allows a password or SASL message (PG_MAX_AUTH_TOKEN_LENGTH).
const AUTH_MESSAGE_BYTES: usize = 65_535;

/// The message types a client may send once started.
fn is_frontend_message(tag: u8) -> bool {
    matches!(
        tag,
        frontend::BIND
            | frontend::CLOSE
            | frontend::COPY_DATA
            | frontend::COPY_DONE
            | frontend::COPY_FAIL
            | frontend::DESCRIBE
            | frontend::EXECUTE
            | frontend::FLUSH
            | frontend::FUNCTION_CALL
            | frontend::PARSE
            | frontend::PASSWORD
            | frontend::QUERY
            | frontend::SYNC
            | frontend::TERMINATE
    )
}

/// Close, Describe, Execute, Flush, Sync, Terminate, CopyDone and CopyFail: the
/// messages PostgreSQL holds to `SMALL_MESSAGE_BYTES`.
fn is_small_client_message(tag: u8) -> bool {
    matches!(
        tag,
        frontend::CLOSE
            | frontend::DESCRIBE
            | frontend::EXECUTE
            | frontend::FLUSH
            | frontend::SYNC
            | frontend::TERMINATE
            | frontend::COPY_DONE
            | frontend::COPY_FAIL
    )
}
