//! The client's side of the relay: commands (with the KILLs of tandem's ids, and the
//! commands tandem refuses), packets of a LOCAL INFILE upload, and the client half of
//! COM_CHANGE_USER.
//!
//! Never writes to the client except to answer what it refused or ran itself.

use super::{Relay, skip_streaming};
use crate::error::{Error, Result};
use crate::session::mysql::auth::AuthExchange;
use crate::session::mysql::handshake::{MAX_HANDSHAKE_PACKET, upstream_is_secure};
use crate::session::mysql::phase::{CommandKind, Phase, command_kind};
use crate::wire::mysql::codes::{StatusFlags, command};
use crate::wire::mysql::messages::command::{Kill, process_kill_id};
use crate::wire::mysql::messages::handshake::ChangeUser;
use crate::wire::mysql::messages::response::put_err;
use crate::wire::mysql::packet::{HEADER_LEN, renumber};
use crate::wire::mysql::{Header, PacketError};
use bytes::Buf;

/// A COM_QUERY up to this long is read whole to recognise a KILL; a longer one cannot be
/// a plain `KILL QUERY id` and streams through.
const KILL_SQL_MAX: usize = 256;

/// What to do with the client packet at the front of the buffer.
pub(super) enum Handled {
    /// Forward it as it is (in the current run of raw bytes).
    Relay,
    /// Forward `to_server` (staged) instead of it.
    Replace,
    /// Drop it; `to_client` holds tandem's answer.
    Answer,
    /// Wait for more bytes.
    NeedMore,
    /// Wait for the next sync point.
    Pause,
}

impl Relay<'_> {
    /// Relays every complete client packet; returns true once COM_QUIT was relayed.
    pub(super) async fn relay_from_client(&mut self) -> Result<bool> {
        let buf = std::mem::take(&mut self.from_client);
        let result = self.relay_client_packets(&buf).await;
        let (pos, quit) = match result {
            Ok(done) => done,
            Err(e) => {
                self.from_client = buf;
                return Err(e);
            }
        };
        self.from_client = buf;
        self.from_client.advance(pos);
        Ok(quit)
    }

    async fn relay_client_packets(&mut self, buf: &[u8]) -> Result<(usize, bool)> {
        let max = self.ctx.config.max_message_bytes;
        let mut pos = skip_streaming(&mut self.client_streaming, buf.len());
        let mut run_start = 0;
        if self.client_dropping > 0 {
            // Streaming and dropping never overlap: a packet is relayed or dropped whole.
            pos += skip_streaming(&mut self.client_dropping, buf.len() - pos);
            run_start = pos;
        }
        self.client_paused = false;
        while self.client_streaming == 0 && self.client_dropping == 0 {
            let Some(header) = Header::peek(&buf[pos..]) else {
                break;
            };
            let packet = &buf[pos..];
            let staged = self.to_client.len();
            let handled = if self.dropping_message {
                // A later packet of a command tandem refused or replaced.
                Handled::Answer
            } else {
                let tandems = match self.exchange.phase {
                    Phase::ChangingUser { .. } | Phase::InfileUpload { .. } => None,
                    _ if self.client_message.in_message() => None,
                    _ => self.intercept_query(header, packet).await?,
                };
                match (tandems, self.exchange.phase) {
                    (Some(Handled::Answer), _) => {
                        // A command tandem answered itself (a control call, a write it
                        // captured or checked, a refusal) is a command all the same.
                        self.ctx.metrics.mysql.commands.inc();
                        Handled::Answer
                    }
                    (Some(handled), _) => handled,
                    (None, Phase::ChangingUser { .. }) => {
                        self.on_change_user_packet(header, packet)?
                    }
                    (None, Phase::InfileUpload { .. }) => self.on_infile_packet(header)?,
                    _ if self.client_message.in_message() => self.on_continuation(header)?,
                    _ => self.on_command(header, packet)?,
                }
            };
            match handled {
                Handled::NeedMore => {
                    if packet.len() >= header.wire_len() {
                        // Waiting for bytes that are here would buffer the client's
                        // stream without bound.
                        return Err(Error::Malformed {
                            what: "command (tandem could not read it whole)",
                        });
                    }
                    break;
                }
                Handled::Pause => {
                    self.client_paused = true;
                    break;
                }
                Handled::Relay => {}
                Handled::Replace | Handled::Answer => {
                    self.write_server(&buf[run_start..pos]).await?;
                    if matches!(handled, Handled::Answer) {
                        self.hold_answer_to_the_last_packet(header, staged);
                    }
                    self.flush_staged().await?;
                    if matches!(handled, Handled::Answer) && self.exchange.at_sync_point() {
                        // Nothing of the session's runs on the server: each write let
                        // through unchecked is over (one tandem ran itself, or ahead of
                        // an answer, gets no reply that would say so).
                        self.unchecked.release();
                    }
                    self.client_message.on_packet(header, max)?;
                    self.last_seq = header.seq;
                    // What has not arrived of the packet, and the command's later
                    // packets (16 MiB or more), go nowhere either.
                    self.dropping_message = self.client_message.in_message();
                    let arrived = buf.len() - pos;
                    if arrived >= header.wire_len() {
                        pos += header.wire_len();
                    } else {
                        self.client_dropping = header.wire_len() - arrived;
                        pos = buf.len();
                    }
                    run_start = pos;
                    continue;
                }
            }
            self.client_message.on_packet(header, max)?;
            self.last_seq = header.seq;
            let arrived = buf.len() - pos;
            if arrived >= header.wire_len() {
                pos += header.wire_len();
            } else {
                self.client_streaming = header.wire_len() - arrived;
                pos = buf.len();
            }
            if matches!(self.exchange.phase, Phase::Quitting) {
                self.write_server(&buf[run_start..pos]).await?;
                return Ok((pos, true));
            }
        }
        self.write_server(&buf[run_start..pos]).await?;
        Ok((pos, false))
    }

    /// The first packet of a command.
    pub(super) fn on_command(&mut self, header: Header, packet: &[u8]) -> Result<Handled> {
        let payload = header.payload(packet);
        let Some(&byte) = payload.first() else {
            if header.payload_len == 0 {
                // As the server answers it: an unknown command, and the session goes on.
                if !self.exchange.at_sync_point() {
                    return Ok(Handled::Pause);
                }
                return Ok(self.answer_error(&Error::UnexpectedMessage {
                    tag: 0,
                    context: "(an empty command packet)",
                }));
            }
            return Ok(Handled::NeedMore);
        };
        if header.seq != 0 {
            return Err(PacketError::OutOfOrder {
                expected: 0,
                got: header.seq,
            }
            .into());
        }
        let kind = command_kind(byte);
        let whole = payload.len() == header.payload_len;
        let needs_whole = match (kind, byte) {
            (CommandKind::ChangeUser | CommandKind::Refused, _) => true,
            // What a prepared statement does decides whether a bound session may run it.
            (_, command::STMT_PREPARE) => header.payload_len <= MAX_HANDSHAKE_PACKET,
            (_, command::QUERY) => header.payload_len <= KILL_SQL_MAX,
            (_, command::PROCESS_KILL) => true,
            _ => false,
        };
        if needs_whole && !whole {
            if header.payload_len > MAX_HANDSHAKE_PACKET {
                return Err(PacketError::TooLarge {
                    declared: header.payload_len,
                    max: MAX_HANDSHAKE_PACKET,
                }
                .into());
            }
            return Ok(Handled::NeedMore);
        }
        if matches!(kind, CommandKind::ChangeUser | CommandKind::Refused)
            && !self.exchange.at_sync_point()
        {
            // tandem's answer, or the new authentication, must come after the replies
            // still due.
            return Ok(Handled::Pause);
        }
        if byte == command::PING && self.deferred_autocommit && !self.owned.is_empty() {
            // The server would answer with autocommit off, which the client set on
            // (pymysql sets it again only where the status says otherwise).
            if !self.exchange.at_sync_point() {
                return Ok(Handled::Pause);
            }
            self.client_seq = header.seq.wrapping_add(1);
            let status = self.exchange.status().unwrap_or(StatusFlags::empty());
            return self.answer_ok(status);
        }
        if matches!(byte, command::RESET_CONNECTION | command::CHANGE_USER)
            && let Some(held) = self.held_by_owned_branches()?
        {
            // MariaDB answers OK, then drops the prepared branch this connection holds,
            // and a later XA COMMIT of it answers OK having committed nothing: the reset
            // waits for the global decision, which finishes the branch first (or, from
            // the session bound to that transaction, is refused).
            return Ok(held);
        }
        self.ctx.metrics.mysql.commands.inc();
        self.client_seq = header.seq.wrapping_add(1);
        match kind {
            CommandKind::Refused => return Ok(self.refuse_command(byte)),
            CommandKind::ChangeUser => return self.start_change_user(header, payload),
            CommandKind::Quit => self.exchange.on_quit(),
            CommandKind::NoReply | CommandKind::Replied(_) => {}
        }
        if byte == command::RESET_CONNECTION {
            self.on_session_reset("COM_RESET_CONNECTION");
            self.prepared.clear();
        }
        if byte == command::INIT_DB {
            self.database_uncertain = true;
        }
        // What reaches this point runs as the client sent it (tandem's refusals and
        // answers never do), so an UNLOCK TABLES here is one the server runs.
        // Read once: a prepared statement keeps the answer for its executes.
        let sets_charset = matches!(byte, command::QUERY | command::STMT_PREPARE)
            && (!whole || may_set_the_charset(payload.get(1..).unwrap_or(&[])));
        if sets_charset {
            self.charset_changes += 1;
        }
        if matches!(byte, command::QUERY | command::STMT_PREPARE) {
            let sql = payload.get(1..).unwrap_or(&[]);
            if super::control::may_take_table_locks(sql, whole) {
                self.may_hold_table_locks = true;
            } else if byte == command::QUERY && whole && super::control::ends_table_locks(sql) {
                self.may_hold_table_locks = false;
            }
        }
        match byte {
            command::STMT_PREPARE => {
                let sql = payload.get(1..).unwrap_or(&[]);
                let mut prepared = super::control::Prepared::new(whole.then_some(sql));
                prepared.charset_changes = self.charset_changes;
                prepared.sets_charset = sets_charset;
                prepared.database = (!self.database_uncertain).then(|| self.database.clone());
                self.pending_prepares.push_back(prepared);
            }
            command::STMT_CLOSE => {
                if let Some(id) = statement_id(payload) {
                    self.prepared.remove(&id);
                }
            }
            command::STMT_EXECUTE => self.on_execute(payload),
            // MYSQL_OPTION_MULTI_STATEMENTS_ON (0) or _OFF (1); the server takes either.
            command::SET_OPTION => match payload.get(1..3) {
                Some([0, 0]) => self.multi_statements = true,
                Some([1, 0]) => self.multi_statements = false,
                _ => {}
            },
            command::STMT_SEND_LONG_DATA | command::STMT_RESET => {
                if let Some(prepared) =
                    statement_id(payload).and_then(|id| self.prepared.get_mut(&id))
                {
                    prepared.long_data = byte == command::STMT_SEND_LONG_DATA;
                }
            }
            _ => {}
        }
        self.command_in_progress = Some(kind);
        if !header.is_continued() {
            self.on_command_complete(header.seq);
        }
        Ok(Handled::Relay)
    }

    /// A command of several packets that tandem answers at its first: the client reads
    /// the answer as the packets after its last (the server would answer a refused one
    /// so, 1153 too), so the answer tandem staged from `staged` on is held until then.
    fn hold_answer_to_the_last_packet(&mut self, header: Header, staged: usize) {
        if !self.dropping_message && header.is_continued() {
            self.held_answer = self.to_client.split_off(staged);
        } else if self.dropping_message && !header.is_continued() {
            let mut held = std::mem::take(&mut self.held_answer);
            renumber(&mut held, header.seq.wrapping_add(1));
            self.to_client.unsplit(held);
        }
    }

    /// A later packet of a command longer than one packet (16 MiB or more).
    fn on_continuation(&mut self, header: Header) -> Result<Handled> {
        self.expect_client_seq(header.seq)?;
        if !header.is_continued() {
            self.on_command_complete(header.seq);
        }
        Ok(Handled::Relay)
    }

    /// The command's last packet has sequence id `last_seq`: its reply starts after.
    fn on_command_complete(&mut self, last_seq: u8) {
        if let Some(CommandKind::Replied(expect)) = self.command_in_progress.take() {
            self.exchange.on_command(expect, last_seq.wrapping_add(1));
        }
    }

    /// A packet of a LOCAL INFILE upload; the empty one ends it.
    fn on_infile_packet(&mut self, header: Header) -> Result<Handled> {
        self.expect_client_seq(header.seq)?;
        if header.payload_len == 0 {
            self.exchange.on_infile_end(header.seq);
        }
        Ok(Handled::Relay)
    }

    fn expect_client_seq(&mut self, seq: u8) -> Result<()> {
        if seq != self.client_seq {
            return Err(PacketError::OutOfOrder {
                expected: self.client_seq,
                got: seq,
            }
            .into());
        }
        self.client_seq = seq.wrapping_add(1);
        Ok(())
    }

    /// `KILL [QUERY] id` and COM_PROCESS_KILL with one of tandem's connection ids run
    /// as a kill of the backend thread behind it, on this client's own connection, so
    /// that the server decides whether this user may kill that thread. Once it has
    /// allowed it, the killed session's own waits for global locks end too: while
    /// tandem waits its backend is idle, and the server's kill stops nothing. Other
    /// ids pass through (a thread id from SHOW PROCESSLIST reaches its thread as
    /// before). None: not such a kill.
    pub(super) async fn kill_of_tandem_id(
        &mut self,
        header: Header,
        payload: &[u8],
    ) -> Result<Option<Handled>> {
        if header.seq != 0 || payload.len() != header.payload_len {
            return Ok(None);
        }
        let rest = payload.get(1..).unwrap_or(&[]);
        let kill = match payload.first() {
            Some(&command::QUERY) if header.payload_len <= KILL_SQL_MAX => Kill::parse(rest)
                .and_then(|kill| {
                    let id = u32::try_from(kill.id).ok()?;
                    let target = self.backend_of(id)?;
                    Some((kill.to_sql(target.thread_id), id, target))
                }),
            Some(&command::PROCESS_KILL) => process_kill_id(rest).and_then(|id| {
                let target = self.backend_of(id)?;
                Some((format!("KILL CONNECTION {}", target.thread_id), id, target))
            }),
            _ => None,
        };
        let Some((sql, id, target)) = kill else {
            return Ok(None);
        };
        if !self.exchange.at_sync_point() {
            return Ok(Some(Handled::Pause));
        }
        self.ctx.metrics.mysql.kills_mapped.inc();
        match self.own().query(&sql).await? {
            Ok(ok) => {
                target.interrupt.interrupt();
                self.exchange.on_authenticated(ok.status);
                ok.put(&mut self.to_client, 1);
            }
            Err(e) => {
                // "You are not owner of thread …" names the thread the client named.
                let message = e
                    .message
                    .replace(&target.thread_id.to_string(), &id.to_string());
                put_err(&mut self.to_client, 1, e.code, &e.sqlstate, &message);
            }
        }
        Ok(Some(Handled::Answer))
    }

    /// The backend connection behind tandem connection id `id`, if it is on this
    /// front end's server.
    fn backend_of(&self, id: u32) -> Option<crate::session::mysql::ids::Backend> {
        self.ctx
            .ids
            .lookup(id)
            .filter(|backend| backend.upstream == self.ctx.upstream)
    }

    /// Answers a command tandem does not relay with ERR 1235 or 1047 (at a sync point).
    fn refuse_command(&mut self, byte: u8) -> Handled {
        let e = match byte {
            command::BINLOG_DUMP
            | command::BINLOG_DUMP_GTID
            | command::REGISTER_SLAVE
            | command::TABLE_DUMP => Error::Unsupported {
                what: "replication",
            },
            _ => Error::UnexpectedMessage {
                tag: byte,
                context: "(unknown command)",
            },
        };
        self.answer_error(&e)
    }

    /// Answers the command with `e` (at a sync point).
    fn answer_error(&mut self, e: &Error) -> Handled {
        self.put_error(e);
        Handled::Answer
    }

    /// COM_CHANGE_USER, at a sync point: a new authentication exchange.
    fn start_change_user(&mut self, header: Header, payload: &[u8]) -> Result<Handled> {
        let Ok(change) = ChangeUser::decode(payload, self.capabilities) else {
            // As the server answers it: the session goes on under its user.
            return Ok(self.answer_error(&Error::UnexpectedMessage {
                tag: command::CHANGE_USER,
                context: "(a COM_CHANGE_USER whose payload does not decode)",
            }));
        };
        self.on_session_reset("COM_CHANGE_USER");
        self.database_uncertain = true;
        self.prepared.clear();
        tracing::debug!(parent: self.binding.span(), user = %String::from_utf8_lossy(&change.user), "change user");
        let mut exchange = AuthExchange::new(
            0,
            0,
            change.plugin.unwrap_or_default(),
            self.nonce.clone(),
            self.client_tls && !upstream_is_secure(&self.ctx.upstream),
        );
        exchange.on_client_packet(header.seq, payload, &mut self.to_server)?;
        self.change_user = Some(exchange);
        self.exchange.on_change_user();
        Ok(Handled::Replace)
    }

    /// A client packet of the change-user exchange (whole packets only).
    fn on_change_user_packet(&mut self, header: Header, packet: &[u8]) -> Result<Handled> {
        if header.payload_len > MAX_HANDSHAKE_PACKET {
            return Err(PacketError::TooLarge {
                declared: header.payload_len,
                max: MAX_HANDSHAKE_PACKET,
            }
            .into());
        }
        if packet.len() < header.wire_len() {
            return Ok(Handled::NeedMore);
        }
        let Some(exchange) = self.change_user.as_mut() else {
            return Ok(Handled::Relay);
        };
        exchange.on_client_packet(
            header.seq,
            &packet[HEADER_LEN..header.wire_len()],
            &mut self.to_server,
        )?;
        Ok(Handled::Replace)
    }

    /// COM_STMT_EXECUTE: the parameter types it binds stay in force for the next ones
    /// (AT needs them to read a later execute's values), and its long data is used up.
    /// One that may create or drop a temporary table makes AT ask about tables again.
    pub(super) fn on_execute(&mut self, payload: &[u8]) {
        let Some(prepared) = statement_id(payload).and_then(|id| self.prepared.get_mut(&id)) else {
            // A statement tandem does not know (MariaDB's direct execute, id 0xffffffff,
            // runs the one just prepared): it may have created a temporary table, or
            // be a USE.
            self.temporary_tables.clear();
            self.database_uncertain = true;
            return;
        };
        let text = prepared.sql.as_deref().map(str::as_bytes);
        if text.is_none_or(super::control::may_change_temporary_tables) {
            self.temporary_tables.clear();
        }
        if text.is_none_or(super::control::may_change_catalog) {
            // Prepared DDL (or a CALL) may define views or foreign keys: the catalog
            // is read again now, and once it has run.
            self.ctx.at_meta.invalidate();
            self.catalog_may_have_changed = true;
        }
        // A prepared CALL (or one tandem cannot read) may prepare or drop SQL-level
        // statements. Asked only while some name is known: every execute of every
        // session comes here.
        if !self.sql_prepared.is_empty()
            && prepared
                .sql
                .as_deref()
                .is_none_or(tandem_undo::runs_stored_code)
        {
            self.sql_prepared.clear();
        }
        // A prepared USE changes the current database at each execute.
        if text.is_none_or(super::control::may_change_database) {
            self.database_uncertain = true;
        }
        // A prepared SET NAMES sets it at each execute.
        if prepared.sets_charset {
            self.charset_changes += 1;
        }
        // A prepared LOCK TABLES takes its locks at each execute.
        if text.is_none_or(|sql| super::control::may_take_table_locks(sql, true)) {
            self.may_hold_table_locks = true;
        }
        if let Ok(head) =
            crate::wire::mysql::messages::statement::execute_head(payload, prepared.params)
            && let Some(types) = head.new_types
        {
            prepared.types = Some(types);
        }
        prepared.long_data = false;
    }

    /// A connection-pool reset (COM_RESET_CONNECTION, COM_CHANGE_USER): the session
    /// leaves its global transaction, as DESIGN.md's "Connection-pool resets unbind"
    /// asks, and forgets what the server forgot with it.
    fn on_session_reset(&mut self, what: &'static str) {
        tracing::debug!(parent: self.binding.span(), what, "session reset: unbound");
        self.charset_changes += 1;
        self.binding.unbind();
        // The server rolls back an open XA branch with the session. It stays registered,
        // never prepared: a global commit waits for it, then fails, as when its
        // connection is lost (reported failed, the commit would go on without it).
        if self.xa.take().is_some() {
            tracing::debug!(parent: self.binding.span(), "the open XA branch ended with the reset");
        }
        // The server ends the local transaction with the session: nothing of it stays,
        // and it drops every prepared statement, tandem's too.
        self.at_branch = crate::at::branch::Branch::default();
        self.own_statements.clear();
        // The reset session takes the server's max_allowed_packet anew.
        self.max_allowed_packet = None;
        // And its temporary tables, and its SQL-level prepared statements.
        self.temporary_tables.clear();
        self.sql_prepared.clear();
        // And its table locks.
        self.may_hold_table_locks = false;
    }
}

/// The statement id of a COM_STMT_* command.
pub(super) fn statement_id(payload: &[u8]) -> Option<u32> {
    let id = payload.get(1..5)?;
    Some(u32::from_le_bytes([id[0], id[1], id[2], id[3]]))
}

/// Whether `sql` (a COM_QUERY's or a prepared statement's text) may set the session's
/// character set for statements: a SET of it (behind an executable comment too, of
/// which `leading_words` reads nothing), alone or among other statements; a procedure;
/// an SQL-level EXECUTE of a statement that may.
fn may_set_the_charset(sql: &[u8]) -> bool {
    let first = crate::control::leading_words(sql, true).next();
    let first_is = |word: &[u8]| first.is_some_and(|w| w.eq_ignore_ascii_case(word));
    let names_one = super::at::may_change_the_charset(sql)
        && (first.is_none() || first_is(b"SET") || sql.contains(&b';'));
    names_one || first_is(b"CALL") || first_is(b"EXECUTE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_may_set_the_charset() {
        for sql in [
            "SET NAMES gbk",
            "/*!40101 SET NAMES utf8mb4 */",
            "SELECT 1; SET character_set_client = gbk",
            "EXECUTE s",
            "CALL p()",
        ] {
            assert!(may_set_the_charset(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT character_name FROM t",
            "UPDATE t SET character_name = 'x' WHERE id = 1",
        ] {
            assert!(!may_set_the_charset(sql.as_bytes()), "{sql}");
        }
    }
}
