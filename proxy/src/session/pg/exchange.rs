//! tandem's own statements on a client's backend connection, run at a sync point: the
//! before and after images, the undo_log row, BEGIN/COMMIT/ROLLBACK of an implicit
//! transaction.
//!
//! The ledger of this exchange is the whole reply up to its ReadyForQuery: at a sync
//! point nothing else is in flight, so every reply until then is tandem's and is
//! swallowed (PostgreSQL docs, "Extended Query": replies come in order, and after an
//! error everything up to Sync is skipped). Only messages the backend may send at any
//! time — NotificationResponse and ParameterStatus — are passed on to the client.
//! One exception: `exchange_many_then` sends a client's statement after tandem's, under
//! the client's Sync, and its ledger ends at the CloseComplete after tandem's last
//! CommandComplete (or at an error, which the backend then answers for the client's
//! statement too).
//! Invariant: called only when the session is at a sync point.

use super::Relay;
use crate::error::{Error, Result};
use crate::wire::pg::Frame;
use crate::wire::pg::codes::{backend, frontend, target};
use crate::wire::pg::messages::response::{ErrorFields, TxStatus};
use crate::wire::pg::messages::write::{put_cstr, put_msg};
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The statement and portal names tandem uses for its own statements. They share the
/// session's namespace with the client's: a control character ahead keeps a client's
/// names (`s1`, `__asyncpg_stmt_2__`, even `tandem_stmt`) from ever meeting them.
const STATEMENT: &[u8] = b"\x01tandem_stmt";
const PORTAL: &[u8] = b"\x01tandem_portal";

/// What one injected statement returned.
#[derive(Debug, Default)]
pub struct Exchanged {
    /// Data rows, each column in the format that was asked for.
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
    /// The transaction status after it.
    pub status: Option<TxStatus>,
    /// The backend's error, if it failed.
    pub error: Option<ErrorFields>,
    /// That error's ErrorResponse message, as the backend sent it.
    pub error_response: Option<Vec<u8>>,
}

/// A parameter of an injected statement.
pub struct Param<'a> {
    /// Type OID, 0 to let the server infer it.
    pub type_oid: u32,
    /// Binary value (format 1) or None for NULL; text values use `text`.
    pub value: Option<&'a [u8]>,
    /// Whether `value` is in text format.
    pub text: bool,
}

impl Relay<'_> {
    /// Runs `sql` with `params`, asking for `result_formats` (0 text, 1 binary, per column;
    /// one code for all, or none for text).
    pub(super) async fn exchange(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        result_formats: &[i16],
    ) -> Result<Exchanged> {
        let mut results = self.exchange_many(&[(sql, params, result_formats)]).await?;
        Ok(results.pop().unwrap_or_default())
    }

    /// Runs several statements in one round trip (one Sync); one result each. After an
    /// error the backend skips the rest, whose results stay empty.
    pub(super) async fn exchange_many(
        &mut self,
        statements: &[(&str, &[Param<'_>], &[i16])],
    ) -> Result<Vec<Exchanged>> {
        let mut out = BytesMut::with_capacity(128);
        for (sql, params, result_formats) in statements {
            put_statement(&mut out, sql, params, result_formats);
        }
        put_msg(&mut out, frontend::SYNC, &[]);
        self.server
            .write_all_reading(&out, &mut self.from_server)
            .await
            .map_err(Error::UpstreamIo)?;
        self.read_exchange_replies(statements.len()).await
    }

    /// Runs `statements` ahead of `then` (a client's statement, extended-protocol
    /// messages ending in its Sync) in one write and one Sync, the client's: the
    /// backend answers the whole flight with one flush. Returns once the statements'
    /// replies are read; the client's stay in the buffer for the relay. After an error
    /// in one of them the backend skips everything up to the Sync, the client's
    /// statement included, so that ErrorResponse is left in the buffer too: it is the
    /// reply the client gets (the result holds a copy).
    pub(super) async fn exchange_many_then(
        &mut self,
        statements: &[(&str, &[Param<'_>], &[i16])],
        then: &[u8],
    ) -> Result<Vec<Exchanged>> {
        let mut out = BytesMut::with_capacity(128 + then.len());
        for (sql, params, result_formats) in statements {
            put_statement(&mut out, sql, params, result_formats);
        }
        out.extend_from_slice(then);
        self.server
            .write_all_reading(&out, &mut self.from_server)
            .await
            .map_err(Error::UpstreamIo)?;
        self.read_replies(statements.len(), ReplyEnd::LastComplete)
            .await
    }

    /// The parameter types the server infers for `sql` (ParameterDescription), for
    /// binding a client's parameter values to tandem's own statements exactly.
    pub(super) async fn describe_params(
        &mut self,
        sql: &str,
        declared: &[u32],
    ) -> Result<Vec<u32>> {
        // As the client declared them: inference may need them (an overloaded call),
        // and a Parse that fails here would fail the client's transaction.
        let mut out = own_statement_parsed(sql, declared);
        let mut body = BytesMut::new();
        body.put_u8(target::STATEMENT);
        put_cstr(&mut body, STATEMENT);
        put_msg(&mut out, frontend::DESCRIBE, &body);
        put_msg(&mut out, frontend::SYNC, &[]);
        self.server
            .write_all(&out)
            .await
            .map_err(Error::UpstreamIo)?;
        self.describe_reply = None;
        let got = self
            .read_exchange_replies(1)
            .await?
            .pop()
            .unwrap_or_default();
        if let Some(e) = got.error {
            return Err(Error::describing(&e.code, e.message));
        }
        Ok(self.describe_reply.take().unwrap_or_default())
    }

    /// Whether the server prepares `sql`, one of the client's statements that tandem
    /// cannot parse: nothing runs (a Parse under tandem's statement name, then Sync).
    /// `Some`: its error, the reply it would have given the statement had it run, as
    /// sent, and the transaction status after it (a block fails as the statement would
    /// have failed it). `None`: it prepares, or it holds several statements (which only
    /// the simple protocol takes).
    pub(super) async fn server_rejects(
        &mut self,
        sql: &str,
    ) -> Result<Option<(Vec<u8>, TxStatus)>> {
        let mut out = own_statement_parsed(sql, &[]);
        put_msg(&mut out, frontend::SYNC, &[]);
        self.server
            .write_all(&out)
            .await
            .map_err(Error::UpstreamIo)?;
        let got = self
            .read_exchange_replies(1)
            .await?
            .pop()
            .unwrap_or_default();
        let (Some(error), Some(response)) = (got.error, got.error_response) else {
            return Ok(None);
        };
        if error.is_fatal() {
            return Err(Error::injected(&error.code, error.message));
        }
        // "cannot insert multiple commands into a prepared statement": each of them
        // parsed (a syntax error points at where it is).
        if error.code == "42601" && error.position.is_empty() {
            return Ok(None);
        }
        Ok(Some((response, got.status.unwrap_or(TxStatus::Failed))))
    }

    /// Runs one of tandem's own statements that must succeed (BEGIN, ROLLBACK…); the
    /// backend's error becomes `Error::Injected`.
    pub(super) async fn exchange_required(&mut self, sql: &str) -> Result<()> {
        match self.exchange_simple(sql).await?.error {
            Some(e) => Err(Error::injected(&e.code, e.message)),
            None => Ok(()),
        }
    }

    /// Rolls back the session's local transaction, the client's block or tandem's own.
    /// A ROLLBACK the client's statement_timeout cancels before it runs leaves the
    /// block failed, behind the ReadyForQuery 'I' tandem then answers, and the client's
    /// next statements (tandem_rollback() too) would meet 25P02: it is sent again until
    /// the block is over. Whatever a pool reset did in the block is undone with it, so
    /// the session stays bound.
    pub(super) async fn roll_back_local(&mut self) -> Result<()> {
        const ATTEMPTS: usize = 3;
        let mut error = None;
        for _ in 0..ATTEMPTS {
            let rolled_back = self.exchange_simple("ROLLBACK").await?;
            if rolled_back.status == Some(TxStatus::Idle) {
                self.binding.keep_after_rollback();
                return Ok(());
            }
            error = rolled_back.error;
        }
        Err(match error {
            Some(e) => Error::injected(&e.code, e.message),
            None => Error::UpstreamProtocol("a transaction still open after ROLLBACK"),
        })
    }

    /// Runs a statement without parameters and with no rows expected.
    pub(super) async fn exchange_simple(&mut self, sql: &str) -> Result<Exchanged> {
        self.exchange(sql, &[], &[]).await
    }

    pub(super) async fn read_exchange_replies(&mut self, count: usize) -> Result<Vec<Exchanged>> {
        self.read_replies(count, ReplyEnd::ReadyForQuery).await
    }

    async fn read_replies(&mut self, count: usize, end: ReplyEnd) -> Result<Vec<Exchanged>> {
        if count == 0 && end == ReplyEnd::LastComplete {
            return Ok(Vec::new());
        }
        let mut completed = 0;
        // LastComplete: the last statement's CommandComplete is in, its portal's
        // CloseComplete is tandem's reply too.
        let mut closing = false;
        let mut results: Vec<Exchanged> = (0..count.max(1)).map(|_| Exchanged::default()).collect();
        let mut current = 0;
        let last = results.len() - 1;
        let max = self.ctx.config.max_message_bytes;
        loop {
            while let Some(frame) = Frame::peek(&self.from_server, max)? {
                let body = frame.body(&self.from_server).to_vec();
                match frame.tag {
                    backend::DATA_ROW => results[current].rows.push(decode_data_row(&body)?),
                    backend::COMMAND_COMPLETE => {
                        current = (current + 1).min(last);
                        completed += 1;
                        closing = end == ReplyEnd::LastComplete && completed == count;
                    }
                    backend::CLOSE_COMPLETE if closing => {
                        self.from_server.advance(frame.wire_len);
                        return Ok(results);
                    }
                    backend::PARAMETER_DESCRIPTION => {
                        self.describe_reply = Some(decode_parameter_description(&body)?);
                    }
                    backend::ERROR_RESPONSE => {
                        let error = ErrorFields::decode(&body)
                            .map_err(|_| Error::UpstreamProtocol("bad ErrorResponse"))?;
                        let fatal = error.is_fatal();
                        if completed < results.len() {
                            results[current].error = Some(error);
                            results[current].error_response =
                                Some(self.from_server[..frame.wire_len].to_vec());
                        } else {
                            // Every statement had completed (a cancel that came late, at
                            // the Sync): none of them failed, a COMMIT among them committed.
                            // The status at ReadyForQuery says where the session stands.
                            tracing::debug!(parent: self.binding.span(), code = %error.code, "an error after every statement of tandem's completed");
                        }
                        if end == ReplyEnd::LastComplete {
                            // Left for the relay: the client's reply (see exchange_many_then).
                            return Ok(results);
                        }
                        if fatal {
                            // The backend is ending (pg_terminate_backend while tandem's
                            // statements ran): the client hears why, as the relay would
                            // have passed it, not only that the connection closed.
                            let whole = self.from_server[..frame.wire_len].to_vec();
                            self.pass_on_fatal(&whole).await;
                            self.fatal_before_tandems_replies = completed == 0;
                        }
                    }
                    backend::READY_FOR_QUERY => {
                        let status = TxStatus::decode(&body);
                        for r in &mut results {
                            r.status = status;
                        }
                        self.from_server.advance(frame.wire_len);
                        return Ok(results);
                    }
                    backend::NOTIFICATION_RESPONSE | backend::PARAMETER_STATUS => {
                        let whole = self.from_server[..frame.wire_len].to_vec();
                        if frame.tag == backend::PARAMETER_STATUS {
                            // A setting tandem's own COMMIT or ROLLBACK reverted (SET
                            // LOCAL, a SET in a rolled-back block): AT reads them.
                            self.note_parameter_status(&body)?;
                        }
                        self.write_client(&whole);
                    }
                    _ => {}
                }
                self.from_server.advance(frame.wire_len);
            }
            self.read_more_from_server().await?;
        }
    }

    /// Whether the backend ended the session while tandem was waiting elsewhere (on the
    /// lockserver, at a sync point): a FATAL it sent unasked (pg_terminate_backend, an
    /// idle timeout) or its closing, read without waiting. Nothing tandem sends next
    /// would run. The FATAL goes on to the client, as the relay would have passed it.
    pub(super) async fn backend_ended_unasked(&mut self) -> bool {
        use futures::FutureExt;
        if self.from_server.capacity() - self.from_server.len() < 1024 {
            self.from_server.reserve(8 * 1024);
        }
        if let Some(read) = self.server.read_buf(&mut self.from_server).now_or_never()
            && !matches!(read, Ok(n) if n > 0)
        {
            return true;
        }
        match self.buffered_fatal(false) {
            Some(fatal) => {
                self.pass_on_fatal(&fatal).await;
                true
            }
            None => false,
        }
    }

    /// After an exchange of tandem's failed on the connection (a write to a backend
    /// already gone fails before its replies are read): whether the backend's last
    /// words were a FATAL ahead of any CommandComplete, so that none of tandem's
    /// statements ran. Reads what is left, for a moment, and passes the FATAL on to the
    /// client as the relay would.
    pub(super) async fn backend_ended_before_replying(&mut self) -> bool {
        if self.fatal_before_tandems_replies {
            return true;
        }
        let drain = async { while self.read_more_from_server().await.is_ok() {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
        match self.buffered_fatal(true) {
            Some(fatal) => {
                if !self.backend_said_fatal {
                    self.pass_on_fatal(&fatal).await;
                }
                true
            }
            None => false,
        }
    }

    /// The first FATAL ErrorResponse among the backend's replies read so far, whole;
    /// with `before_any_complete`, only one ahead of every CommandComplete.
    fn buffered_fatal(&self, before_any_complete: bool) -> Option<Vec<u8>> {
        let max = self.ctx.config.max_message_bytes;
        let mut at = 0;
        while let Ok(Some(frame)) = Frame::peek(&self.from_server[at..], max) {
            match frame.tag {
                backend::COMMAND_COMPLETE if before_any_complete => return None,
                backend::ERROR_RESPONSE
                    if ErrorFields::decode(frame.body(&self.from_server[at..]))
                        .is_ok_and(|e| e.is_fatal()) =>
                {
                    return Some(self.from_server[at..at + frame.wire_len].to_vec());
                }
                _ => {}
            }
            at += frame.wire_len;
        }
        None
    }

    /// Passes the backend's FATAL ErrorResponse (`whole`) on to the client, as the
    /// relay would have: it ends the session, whose report then adds nothing.
    async fn pass_on_fatal(&mut self, whole: &[u8]) {
        self.write_client(whole);
        // A client already gone hears nothing either way.
        let _ = self.flush_client().await;
        self.backend_said_fatal = true;
    }

    /// Reads what the backend sent next into `from_server`, for a reader of tandem's
    /// own replies; the backend closing is an error there.
    pub(super) async fn read_more_from_server(&mut self) -> Result<()> {
        if self.from_server.capacity() - self.from_server.len() < 1024 {
            self.from_server.reserve(8 * 1024);
        }
        if self
            .server
            .read_buf(&mut self.from_server)
            .await
            .map_err(Error::UpstreamIo)?
            == 0
        {
            return Err(Error::UpstreamClosed);
        }
        Ok(())
    }
}

/// Where the replies to tandem's statements end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReplyEnd {
    /// At the ReadyForQuery of their own Sync.
    ReadyForQuery,
    /// At the CloseComplete of the last statement's portal, or at an ErrorResponse
    /// (left unread): the Sync is the client's, after its own messages.
    LastComplete,
}

/// A Close of tandem's own statement, then a Parse of `sql` into it with the
/// parameter types `declared`.
fn own_statement_parsed(sql: &str, declared: &[u32]) -> BytesMut {
    let mut out = BytesMut::with_capacity(64 + sql.len());
    put_close(&mut out, target::STATEMENT, STATEMENT);
    let mut body = BytesMut::new();
    put_cstr(&mut body, STATEMENT);
    put_cstr(&mut body, sql.as_bytes());
    body.put_u16(declared.len() as u16);
    for &oid in declared {
        body.put_u32(oid);
    }
    put_msg(&mut out, frontend::PARSE, &body);
    out
}

/// Parse, Bind, Describe (portal) and Execute of a client's simple-protocol statement,
/// unnamed, then Sync: the same replies as its Query, with ParseComplete and
/// BindComplete ahead (the caller swallows them), results in text.
pub(super) fn put_as_extended(out: &mut BytesMut, sql: &str) {
    let mut body = BytesMut::with_capacity(sql.len() + 8);
    put_cstr(&mut body, b"");
    put_cstr(&mut body, sql.as_bytes());
    body.put_i16(0);
    put_msg(out, frontend::PARSE, &body);
    // Unnamed portal and statement, no parameters, every result column in text.
    put_msg(out, frontend::BIND, &[0, 0, 0, 0, 0, 0, 0, 0]);
    put_msg(out, frontend::DESCRIBE, &[target::PORTAL, 0]);
    put_msg(out, frontend::EXECUTE, &[0, 0, 0, 0, 0]);
    put_msg(out, frontend::SYNC, &[]);
}

/// Close (both names), Parse, Bind and Execute of one tandem statement.
fn put_statement(out: &mut BytesMut, sql: &str, params: &[Param<'_>], result_formats: &[i16]) {
    // Close first: a previous exchange that failed half-way may have left them.
    put_close(out, target::STATEMENT, STATEMENT);
    put_close(out, target::PORTAL, PORTAL);
    let mut body = BytesMut::new();
    put_cstr(&mut body, STATEMENT);
    put_cstr(&mut body, sql.as_bytes());
    body.put_u16(params.len() as u16);
    for p in params {
        body.put_u32(p.type_oid);
    }
    put_msg(out, frontend::PARSE, &body);
    let mut body = BytesMut::new();
    put_cstr(&mut body, PORTAL);
    put_cstr(&mut body, STATEMENT);
    body.put_u16(params.len() as u16);
    for p in params {
        body.put_i16(if p.text { 0 } else { 1 });
    }
    body.put_u16(params.len() as u16);
    for p in params {
        match p.value {
            Some(v) => {
                body.put_i32(v.len() as i32);
                body.put_slice(v);
            }
            None => body.put_i32(-1),
        }
    }
    body.put_u16(result_formats.len() as u16);
    for f in result_formats {
        body.put_i16(*f);
    }
    put_msg(out, frontend::BIND, &body);
    let mut body = BytesMut::new();
    put_cstr(&mut body, PORTAL);
    body.put_i32(0);
    put_msg(out, frontend::EXECUTE, &body);
    // A portal lives until the end of the client's transaction: left open, it is
    // "prior transaction activity" to the client's COPY … FREEZE.
    put_close(out, target::PORTAL, PORTAL);
}

fn decode_parameter_description(body: &[u8]) -> Result<Vec<u32>> {
    let bad = || Error::UpstreamProtocol("bad ParameterDescription");
    let mut r = crate::wire::pg::reader::Reader::new(body);
    let n = r.count().map_err(|_| bad())?;
    (0..n)
        .map(|_| r.i32().map(|t| t as u32).map_err(|_| bad()))
        .collect()
}

fn decode_data_row(body: &[u8]) -> Result<Vec<Option<Vec<u8>>>> {
    let bad = || Error::UpstreamProtocol("bad DataRow");
    let mut r = crate::wire::pg::reader::Reader::new(body);
    let n = r.count().map_err(|_| bad())?;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.i32().map_err(|_| bad())?;
        row.push(match usize::try_from(len) {
            Ok(len) => Some(r.bytes(len).map_err(|_| bad())?.to_vec()),
            Err(_) => None,
        });
    }
    Ok(row)
}

fn put_close(buf: &mut BytesMut, what: u8, name: &[u8]) {
    let mut body = BytesMut::new();
    body.put_u8(what);
    put_cstr(&mut body, name);
    put_msg(buf, frontend::CLOSE, &body);
}
