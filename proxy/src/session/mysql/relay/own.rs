//! tandem's own commands on the session's backend connection, run at a sync point and
//! read to the end of their replies before anything else moves: text statements (one OK
//! or ERR), and prepared SELECTs read over the binary protocol, which AT's images need
//! (the text protocol rounds FLOAT).
//!
//! Owns the reading of those replies. Never touches the client socket. Invariant: each
//! function leaves the connection at a sync point, with no statement of tandem's left
//! prepared but those it keeps (`OwnStatements`) and those whose COM_STMT_CLOSE is
//! pending (sent ahead of the next write to the server), or fails the session (an I/O
//! or protocol error).

use crate::error::{Error, Result};
use crate::upstream::ServerStream;
use crate::wire::mysql::Header;
use crate::wire::mysql::codes::{command, reply};
use crate::wire::mysql::messages::response::{ErrPacket, HeldResultSet, PrepareOk, is_terminator};
use crate::wire::mysql::messages::statement::{
    BinaryRow, OkPacket, Param, binary_row, column_type, put_close, put_execute, put_prepare,
};
use crate::wire::mysql::packet::put_message;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// At most this many of tandem's own statements stay prepared on a session's
/// connection (the server counts them against max_prepared_stmt_count).
const OWN_STATEMENTS_MAX: usize = 32;

/// ER_UNKNOWN_STMT_HANDLER.
const UNKNOWN_STATEMENT: u16 = 1243;

/// tandem's own statements prepared on a session's connection, by their SQL: an image
/// read costs one round trip instead of two. The server drops them all when the session
/// resets (COM_RESET_CONNECTION, COM_CHANGE_USER), and so must this.
#[derive(Debug, Default)]
pub(in crate::session::mysql) struct OwnStatements {
    by_sql: std::collections::HashMap<String, u32>,
    /// Oldest first, for eviction.
    order: std::collections::VecDeque<String>,
}

impl OwnStatements {
    pub fn clear(&mut self) {
        self.by_sql.clear();
        self.order.clear();
    }

    /// Whether `id` is one of tandem's statements.
    pub fn holds(&self, id: u32) -> bool {
        self.by_sql.values().any(|&own| own == id)
    }

    /// Forgets every statement; returns the COM_STMT_CLOSEs (no replies) that free them.
    pub fn drain_closes(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        for (_, id) in self.by_sql.drain() {
            put_close(&mut out, id);
        }
        self.order.clear();
        out
    }

    /// Keeps `sql` as statement `id`; the oldest kept statement is closed in `out`
    /// (COM_STMT_CLOSE has no reply) when there is no room.
    fn keep(&mut self, sql: &str, id: u32, out: &mut BytesMut) {
        if self.by_sql.contains_key(sql) {
            // Prepared twice in one flight (the same read before and after a write).
            put_close(out, id);
            return;
        }
        if self.order.len() >= OWN_STATEMENTS_MAX
            && let Some(oldest) = self.order.pop_front()
            && let Some(old_id) = self.by_sql.remove(&oldest)
        {
            put_close(out, old_id);
        }
        self.by_sql.insert(sql.to_owned(), id);
        self.order.push_back(sql.to_owned());
    }

    fn forget(&mut self, sql: &str) {
        self.by_sql.remove(sql);
        self.order.retain(|s| s != sql);
    }
}

/// The replies to a write and tandem's reads around it (`Own::around_write`).
pub(in crate::session::mysql) struct AroundWrite {
    pub before: Option<std::result::Result<Vec<BinaryRow>, OwnError>>,
    pub write: std::result::Result<OkPacket, OwnError>,
    /// The rows the write returned (RETURNING), held for the client; `write` then
    /// stands for them, with the rows counted as affected and the terminator's status.
    pub returned: Option<HeldResultSet>,
    pub after: Option<std::result::Result<Vec<BinaryRow>, OwnError>>,
    /// Whether the write reached the server (its error may be a read's, when not).
    pub write_sent: bool,
}

impl AroundWrite {
    /// A read could not be prepared, or failed before the write went: the write was
    /// not sent.
    fn refused(e: OwnError) -> Self {
        AroundWrite {
            before: Some(Err(e.clone())),
            write: Err(e),
            returned: None,
            after: None,
            write_sent: false,
        }
    }
}

/// The server's ERR to one of tandem's own statements.
#[derive(Clone, Debug)]
pub(in crate::session::mysql) struct OwnError {
    pub code: u16,
    pub sqlstate: [u8; 5],
    pub message: String,
}

impl OwnError {
    fn decode(payload: &[u8]) -> Result<OwnError> {
        let e = ErrPacket::decode(payload).ok_or(Error::UpstreamProtocol(
            "a malformed ERR to tandem's own statement",
        ))?;
        let mut sqlstate = *b"HY000";
        if let Some(s) = e.sqlstate
            && s.len() == 5
        {
            sqlstate.copy_from_slice(s);
        }
        Ok(OwnError {
            code: e.code,
            sqlstate,
            message: String::from_utf8_lossy(e.message).into_owned(),
        })
    }
}

/// The session's backend connection, borrowed for tandem's own commands.
pub(in crate::session::mysql) struct Own<'a> {
    pub server: &'a mut ServerStream,
    pub from_server: &'a mut BytesMut,
    /// COM_STMT_CLOSEs not yet sent: they go ahead of the next write to the server.
    pub pending_closes: &'a mut BytesMut,
    pub deprecate_eof: bool,
    /// Column definitions carry MariaDB's extended type information.
    pub extended_metadata: bool,
    /// MariaDB: a statement prepared in the same flight as its execute (id 0xFFFFFFFF,
    /// "the last one prepared") costs no round trip of its own.
    pub executes_last_prepared: bool,
}

/// COM_STMT_EXECUTE's statement id for "the statement this connection prepared last"
/// (MariaDB 10.2 and later). After a failed prepare the server has none, and the
/// execute fails with ER_UNKNOWN_STMT_HANDLER.
const LAST_PREPARED: u32 = u32::MAX;

/// How one of tandem's reads around a write reaches its statement.
#[derive(Clone, Copy)]
enum Staged {
    /// Kept prepared in `OwnStatements`.
    Kept(u32),
    /// Prepared for this write only: closed once read.
    Once(u32),
    /// Its COM_STMT_PREPARE travels in the same flight, just ahead of its execute.
    InFlight,
}

/// Writes `bytes` to the server, with the COM_STMT_CLOSEs still pending (which have
/// no replies) ahead of them in the same write. With `received`, what the server sends
/// meanwhile is read into it (`ServerStream::write_all_reading`): tandem's own
/// commands, whose replies are read from that buffer (a large before image read ahead
/// of a large write).
pub(in crate::session::mysql) async fn write_after_closes(
    server: &mut ServerStream,
    pending_closes: &mut BytesMut,
    bytes: &[u8],
    received: Option<&mut BytesMut>,
) -> Result<()> {
    if !pending_closes.is_empty() {
        pending_closes.extend_from_slice(bytes);
    }
    let out: &[u8] = if pending_closes.is_empty() {
        bytes
    } else {
        pending_closes
    };
    let written = match received {
        Some(received) => server.write_all_reading(out, received).await,
        None => server.write_all(out).await,
    };
    pending_closes.clear();
    written.map_err(Error::UpstreamIo)
}

/// COM_STMT_CLOSEs of the reads prepared for one write only.
fn close_once(out: &mut BytesMut, staged: &[Option<Staged>; 2]) {
    for s in staged.iter().flatten() {
        if let Staged::Once(id) = s {
            put_close(out, *id);
        }
    }
}

impl Own<'_> {
    /// Runs a text statement and reads its one reply, OK or ERR.
    pub async fn query(&mut self, sql: &str) -> Result<std::result::Result<OkPacket, OwnError>> {
        let mut payload = Vec::with_capacity(1 + sql.len());
        payload.push(command::QUERY);
        payload.extend_from_slice(sql.as_bytes());
        let mut packet = BytesMut::new();
        put_message(&mut packet, 0, &payload);
        self.write(&packet).await?;
        self.read_ok().await
    }

    /// Resets the client's prepared statement `id` (COM_STMT_RESET): its long data is
    /// dropped. Reads its one reply, OK or ERR.
    pub async fn reset_statement(
        &mut self,
        id: u32,
    ) -> Result<std::result::Result<OkPacket, OwnError>> {
        let mut payload = [0u8; 5];
        payload[0] = command::STMT_RESET;
        payload[1..].copy_from_slice(&id.to_le_bytes());
        let mut packet = BytesMut::new();
        put_message(&mut packet, 0, &payload);
        self.write(&packet).await?;
        self.read_ok().await
    }

    /// Reads a reply that must be one OK or ERR.
    async fn read_ok(&mut self) -> Result<std::result::Result<OkPacket, OwnError>> {
        let reply = self.read_payload().await?;
        match reply.first() {
            Some(&reply::OK) => OkPacket::decode(&reply)
                .map(Ok)
                .ok_or(Error::UpstreamProtocol(
                    "a malformed OK to tandem's own statement",
                )),
            Some(&reply::ERR) => OwnError::decode(&reply).map(Err),
            _ => Err(Error::UpstreamProtocol(
                "a reply to tandem's own statement that is not OK or ERR",
            )),
        }
    }

    /// Runs `sql` with `params` and reads its rows over the binary protocol. The
    /// statement stays prepared in `statements` for the next time.
    pub async fn select(
        &mut self,
        statements: &mut OwnStatements,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<std::result::Result<Vec<BinaryRow>, OwnError>> {
        let cached = statements.by_sql.contains_key(sql);
        match self.select_once(statements, sql, params).await? {
            // The server no longer had it (a reset tandem did not see): prepare anew.
            Err(e) if cached && e.code == UNKNOWN_STATEMENT => {
                self.select_once(statements, sql, params).await
            }
            result => Ok(result),
        }
    }

    async fn select_once(
        &mut self,
        statements: &mut OwnStatements,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<std::result::Result<Vec<BinaryRow>, OwnError>> {
        let mut out = BytesMut::new();
        let id = match self.statement_id(statements, sql, &mut out).await? {
            Ok(id) => id,
            Err(e) => return Ok(Err(e)),
        };
        if put_execute(&mut out, id, params).is_err() {
            return self.unbindable(&out).await;
        }
        self.write(&out).await?;
        self.read_rows(statements, sql).await
    }

    /// Runs several SELECTs in one round trip (their executes pipelined), each with its
    /// parameters; their results in order.
    pub async fn select_many(
        &mut self,
        statements: &mut OwnStatements,
        queries: &[(String, Vec<Param<'_>>)],
    ) -> Result<Vec<std::result::Result<Vec<BinaryRow>, OwnError>>> {
        let mut out = BytesMut::new();
        let mut ids = Vec::with_capacity(queries.len());
        for (sql, _) in queries {
            ids.push(self.statement_id(statements, sql, &mut out).await?);
        }
        let mut executes = BytesMut::new();
        for (id, (_, params)) in ids.iter().zip(queries) {
            if let Ok(id) = id
                && put_execute(&mut executes, *id, params).is_err()
            {
                return self.unbindable(&out).await;
            }
        }
        out.extend_from_slice(&executes);
        self.write(&out).await?;
        let mut results = Vec::with_capacity(queries.len());
        for (id, (sql, _)) in ids.into_iter().zip(queries) {
            results.push(match id {
                Err(e) => Err(e),
                Ok(_) => self.read_rows(statements, sql).await?,
            });
        }
        // A statement the server dropped behind tandem's back: prepared anew, alone.
        for (result, (sql, params)) in results.iter_mut().zip(queries) {
            if matches!(result, Err(e) if e.code == UNKNOWN_STATEMENT) {
                *result = self.select_once(statements, sql, params).await?;
            }
        }
        Ok(results)
    }

    /// Runs a write of the client's (`write`: its whole command packet) with tandem's
    /// reads around it in one round trip: `before` (the before image, locking) ahead of
    /// it and `after` behind it, pipelined. The server runs them in order, in the same
    /// transaction; each reply is read in turn. Reads that will not come again (`reuse`
    /// false: their text holds the client's literals) are closed once read, so that
    /// they do not push the statements that do come again out of `statements`.
    ///
    /// `before_alone`: the before image goes alone, and the write only once it was read
    /// without error. Needed while the session autocommits: a before image that meets
    /// a deadlock (or a lock wait timeout under innodb_rollback_on_timeout) ends the
    /// transaction, and a write already queued behind it would then run, and commit,
    /// on its own, with no image to undo it by.
    pub async fn around_write(
        &mut self,
        statements: &mut OwnStatements,
        before: Option<(&str, &[Param<'_>])>,
        write: &[u8],
        after: Option<(&str, &[Param<'_>])>,
        reuse: bool,
        before_alone: bool,
    ) -> Result<AroundWrite> {
        let mut out = BytesMut::new();
        let mut staged = [None, None];
        for (slot, read) in staged.iter_mut().zip([before, after]) {
            let Some((sql, _)) = read else { continue };
            let prepared = if let Some(&id) = statements.by_sql.get(sql) {
                Staged::Kept(id)
            } else if self.executes_last_prepared {
                Staged::InFlight
            } else if reuse {
                match self.statement_id(statements, sql, &mut out).await? {
                    Ok(id) => Staged::Kept(id),
                    // Nothing of the write has been sent: it does not run.
                    Err(e) => return self.refused(&mut out, &staged, e).await,
                }
            } else {
                match self.prepare(sql).await? {
                    Ok(id) => Staged::Once(id),
                    Err(e) => return self.refused(&mut out, &staged, e).await,
                }
            };
            *slot = Some(prepared);
        }
        let mut reads = [BytesMut::new(), BytesMut::new()];
        for ((staged_read, read), buf) in staged.iter().zip([before, after]).zip(&mut reads) {
            let (Some(staged_read), Some((sql, params))) = (staged_read, read) else {
                continue;
            };
            let id = match staged_read {
                Staged::Kept(id) | Staged::Once(id) => *id,
                Staged::InFlight => {
                    put_prepare(buf, sql);
                    LAST_PREPARED
                }
            };
            if put_execute(buf, id, params).is_err() {
                close_once(&mut out, &staged);
                return self.unbindable(&out).await;
            }
        }
        let [before_read, after_read] = reads;
        // Closes (no replies) of what is not kept, sent once every reply is read.
        let mut closes = BytesMut::new();
        close_once(&mut closes, &staged);
        out.extend_from_slice(&before_read);
        let mut before_result = None;
        if before_alone && let (Some((sql, _)), Some(staged_before)) = (before, staged[0]) {
            self.write(&out).await?;
            out.clear();
            let read = self
                .read_staged(statements, sql, staged_before, reuse, &mut closes)
                .await?;
            if let Err(e) = &read {
                // The write is not sent; neither is the after read (prepared or not,
                // what was staged is closed).
                if !closes.is_empty() {
                    self.write(&closes).await?;
                }
                return Ok(AroundWrite::refused(e.clone()));
            }
            before_result = Some(read);
        }
        out.extend_from_slice(write);
        out.extend_from_slice(&after_read);
        self.write(&out).await?;
        // A read whose prepare failed in flight fails with it; the write still ran, as
        // when the read itself fails (the caller rolls the local transaction back).
        let before = match (before_result, before, staged[0]) {
            (Some(read), ..) => Some(read),
            (None, Some((sql, _)), Some(staged)) => Some(
                self.read_staged(statements, sql, staged, reuse, &mut closes)
                    .await?,
            ),
            _ => None,
        };
        let (write, returned) = self.read_write_reply().await?;
        let after = match (after, staged[1]) {
            (Some((sql, _)), Some(staged)) => Some(
                self.read_staged(statements, sql, staged, reuse, &mut closes)
                    .await?,
            ),
            _ => None,
        };
        // No reply to wait for: they go with the next command.
        self.pending_closes.extend_from_slice(&closes);
        Ok(AroundWrite {
            before,
            write,
            returned,
            after,
            write_sent: true,
        })
    }

    /// Reads the reply to the client's write: OK or ERR, or the rows its RETURNING
    /// gives, read whole and held (an OK stands for them: the rows counted as
    /// affected, the terminator's status and warnings). An ERR in the middle of the
    /// rows is the write's error. Not for an execute that opens a cursor, whose rows
    /// do not follow.
    async fn read_write_reply(
        &mut self,
    ) -> Result<(
        std::result::Result<OkPacket, OwnError>,
        Option<HeldResultSet>,
    )> {
        let head = self.read_payload().await?;
        match head.first() {
            Some(&reply::OK) => {
                let ok = OkPacket::decode(&head).ok_or(Error::UpstreamProtocol(
                    "a malformed OK to a write tandem ran",
                ))?;
                return Ok((Ok(ok), None));
            }
            Some(&reply::ERR) => return Ok((Err(OwnError::decode(&head)?), None)),
            _ => {}
        }
        let columns = crate::wire::mysql::messages::response::column_count(&head).ok_or(
            Error::UpstreamProtocol("a malformed result to a write tandem ran"),
        )?;
        let mut held = HeldResultSet {
            payloads: vec![head],
            rows: 0,
            deprecate_eof: self.deprecate_eof,
        };
        for _ in 0..columns {
            held.payloads.push(self.read_payload().await?);
        }
        if !self.deprecate_eof {
            held.payloads.push(self.read_payload().await?);
        }
        loop {
            let payload = self.read_payload().await?;
            let first = payload.first().copied().unwrap_or(0);
            if first == reply::ERR {
                return Ok((Err(OwnError::decode(&payload)?), None));
            }
            let ends = is_terminator(first, payload.len(), self.deprecate_eof);
            held.payloads.push(payload);
            if ends {
                break;
            }
            held.rows += 1;
        }
        let (status, warnings) = held.terminator().ok_or(Error::UpstreamProtocol(
            "a malformed end of rows to a write tandem ran",
        ))?;
        let ok = OkPacket {
            affected_rows: held.rows,
            last_insert_id: 0,
            status,
            warnings,
            rest: Vec::new(),
        };
        Ok((Ok(ok), Some(held)))
    }

    /// A read could not be prepared: the write is not sent, and what was staged for
    /// the server (closes) goes with the reads already prepared for this write closed.
    async fn refused(
        &mut self,
        out: &mut BytesMut,
        staged: &[Option<Staged>; 2],
        e: OwnError,
    ) -> Result<AroundWrite> {
        close_once(out, staged);
        if !out.is_empty() {
            self.write(out).await?;
        }
        Ok(AroundWrite::refused(e))
    }

    /// The replies to one read staged by `around_write`: its prepare's, when it was
    /// prepared in flight (then kept, or closed in `closes`), and its execute's.
    async fn read_staged(
        &mut self,
        statements: &mut OwnStatements,
        sql: &str,
        staged: Staged,
        reuse: bool,
        closes: &mut BytesMut,
    ) -> Result<std::result::Result<Vec<BinaryRow>, OwnError>> {
        if let Staged::InFlight = staged {
            match self.read_prepare_reply().await? {
                Ok(id) if reuse => statements.keep(sql, id, closes),
                Ok(id) => put_close(closes, id),
                Err(e) => {
                    // Its execute found no statement to run: that ERR is read and dropped.
                    self.read_rows(statements, sql).await?.ok();
                    return Ok(Err(e));
                }
            }
        }
        self.read_rows(statements, sql).await
    }

    /// An image that cannot be bound fails tandem's statement before any execute is
    /// sent; what `staged` holds (closes, which have no reply) still goes, so that the
    /// connection stays in step with `statements`.
    async fn unbindable<T>(&mut self, staged: &[u8]) -> Result<T> {
        self.write(staged).await?;
        Err(Error::Injected {
            message: "an image does not fit its column type".to_owned(),
        })
    }

    /// The server's id of `sql`, prepared now if it is not yet; a statement evicted to
    /// make room is closed in `out` (COM_STMT_CLOSE has no reply).
    async fn statement_id(
        &mut self,
        statements: &mut OwnStatements,
        sql: &str,
        out: &mut BytesMut,
    ) -> Result<std::result::Result<u32, OwnError>> {
        if let Some(&id) = statements.by_sql.get(sql) {
            return Ok(Ok(id));
        }
        let id = match self.prepare(sql).await? {
            Ok(id) => id,
            Err(e) => return Ok(Err(e)),
        };
        statements.keep(sql, id, out);
        Ok(Ok(id))
    }

    /// Reads the reply to one execute of `sql`: its rows, or the server's ERR.
    async fn read_rows(
        &mut self,
        statements: &mut OwnStatements,
        sql: &str,
    ) -> Result<std::result::Result<Vec<BinaryRow>, OwnError>> {
        let head = self.read_payload().await?;
        match head.first() {
            Some(&reply::ERR) => {
                let e = OwnError::decode(&head)?;
                if e.code == UNKNOWN_STATEMENT {
                    statements.forget(sql);
                }
                return Ok(Err(e));
            }
            Some(&reply::OK) => return Ok(Ok(Vec::new())),
            _ => {}
        }
        let columns = crate::wire::mysql::messages::response::column_count(&head).ok_or(
            Error::UpstreamProtocol("a malformed result to tandem's own statement"),
        )?;
        let mut types = Vec::new();
        for _ in 0..columns {
            let definition = self.read_payload().await?;
            types.push(column_type(&definition, self.extended_metadata).ok_or(
                Error::UpstreamProtocol("a malformed column definition in tandem's own result"),
            )?);
        }
        if !self.deprecate_eof {
            self.read_payload().await?;
        }
        let mut rows = Vec::new();
        loop {
            let payload = self.read_payload().await?;
            let first = payload.first().copied().unwrap_or(0);
            if first == reply::ERR {
                return OwnError::decode(&payload).map(Err);
            }
            if is_terminator(first, payload.len(), self.deprecate_eof) {
                return Ok(Ok(rows));
            }
            rows.push(binary_row(&payload, &types).map_err(|_| {
                Error::UpstreamProtocol("a malformed binary row in tandem's own result")
            })?);
        }
    }

    /// A COM_STMT_PREPARE of one of the client's statements, so that the server judges
    /// it without running it; closed again at once. The server's error, if it rejects
    /// it.
    pub async fn rejected_at_prepare(&mut self, sql: &str) -> Result<Option<OwnError>> {
        Ok(match self.prepare(sql).await? {
            Ok(id) => {
                put_close(self.pending_closes, id);
                None
            }
            Err(e) => Some(e),
        })
    }

    /// COM_STMT_PREPARE of `sql`: its statement id, its definitions read and dropped.
    async fn prepare(&mut self, sql: &str) -> Result<std::result::Result<u32, OwnError>> {
        let mut out = BytesMut::new();
        put_prepare(&mut out, sql);
        self.write(&out).await?;
        self.read_prepare_reply().await
    }

    /// The reply to a COM_STMT_PREPARE: its statement id, its definitions read and dropped.
    async fn read_prepare_reply(&mut self) -> Result<std::result::Result<u32, OwnError>> {
        let first = self.read_payload().await?;
        if first.first() == Some(&reply::ERR) {
            return OwnError::decode(&first).map(Err);
        }
        let prepared = PrepareOk::decode(&first).ok_or(Error::UpstreamProtocol(
            "a malformed prepare-OK to tandem's own statement",
        ))?;
        for count in [prepared.params, prepared.columns] {
            self.skip_definitions(u64::from(count)).await?;
        }
        Ok(Ok(prepared.statement_id))
    }

    /// Reads `count` definitions and, when there are any and the session did not
    /// negotiate CLIENT_DEPRECATE_EOF, the EOF after them.
    async fn skip_definitions(&mut self, count: u64) -> Result<()> {
        for _ in 0..count {
            self.read_payload().await?;
        }
        if count > 0 && !self.deprecate_eof {
            self.read_payload().await?;
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        write_after_closes(
            self.server,
            self.pending_closes,
            bytes,
            Some(self.from_server),
        )
        .await
    }

    /// The payload of the server's next packet. tandem's own results stay under 16 MiB
    /// a packet; a longer one fails the session rather than be misread.
    /// The payload of the server's next message, put together from its packets: a row
    /// (an image, or one the client's RETURNING gives) may be of 16 MiB or more.
    async fn read_payload(&mut self) -> Result<Vec<u8>> {
        let mut message = Vec::new();
        loop {
            if let Some(h) = Header::peek(self.from_server)
                && self.from_server.len() >= h.wire_len()
            {
                message.extend_from_slice(h.payload(self.from_server));
                self.from_server.advance(h.wire_len());
                if h.is_continued() {
                    continue;
                }
                return Ok(message);
            }
            if self
                .server
                .read_buf(self.from_server)
                .await
                .map_err(Error::UpstreamIo)?
                == 0
            {
                return Err(Error::UpstreamClosed);
            }
        }
    }
}
