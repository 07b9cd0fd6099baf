//! AT mode in a MySQL session: each write of a session bound to a global transaction
//! runs as tandem's own statement between the reads of its images, and the local COMMIT
//! becomes after images, the branch's registration with its lock keys, the undo_log row
//! and COMMIT.
//!
//! Owns the branch of the session's current local transaction. Every statement here
//! runs at a sync point, on the session's own connection, in the client's transaction
//! (tandem's own START TRANSACTION for an autocommit write). Invariant: no row changes
//! without a before image, and a write that changed a row tandem did not read is
//! rolled back with its whole local transaction.

use super::Relay;
use super::client_side::Handled;
use super::own::{AroundWrite, Own, OwnError, OwnStatements};
use crate::at::branch::{Branch, KeyValues, TextKey, hex, lock_key, unhex};
use crate::at::mysql::{AtTable, undo_table, weigh_keys};
use crate::error::{Error, Result};
use crate::wire::mysql::codes::{CapabilityFlags, StatusFlags, command};
use crate::wire::mysql::errcode::MyErr;
use crate::wire::mysql::messages::response::HeldResultSet;
use crate::wire::mysql::messages::response::put_err;
use crate::wire::mysql::messages::statement::{BinaryRow, OkPacket, Param};
use std::sync::Arc;
use tandem_lockserver::client::{BranchKind, LockKey};
use tandem_undo::mysql::reading::{QuotedReading, Quoting, quoted_reading};
use tandem_undo::mysql::types;
use tandem_undo::{
    Analysis, Dialect, LockedRead, Mysql, OnDuplicate, Row, SavepointOp, Write, WriteKind,
};

/// ER_NO_SUCH_TABLE.
const NO_SUCH_TABLE: u16 = 1146;

/// After images are read at most this many rows a statement.
const KEYS_PER_READ: usize = 500;

/// Why a statement in AT mode did not succeed, and what it leaves behind.
pub(super) enum AtFailure {
    /// tandem refused it: it did not run, and the transaction goes on.
    Refused(Error),
    /// The server's ERR to it (to a write, or to one of tandem's statements around it).
    Server(OwnError),
    /// The write ran but changed rows tandem has no before image of: its whole local
    /// transaction must be rolled back.
    Uncaptured(Error),
}

pub(super) type Outcome<T> = std::result::Result<T, AtFailure>;

/// A captured write's reply: its OK, or the rows its RETURNING gave, held for the
/// client until tandem's own statements after it are done (`ok` then stands for them:
/// the rows counted as affected, the terminator's status).
pub(super) struct Written {
    ok: OkPacket,
    returned: Option<HeldResultSet>,
}

/// Why a write with RETURNING cannot be captured, if it cannot. A capture checks
/// what it read against the server's count of changed rows, and rows end such a
/// reply instead of an OK with the count: they count the rows deleted or inserted,
/// but not what an upsert did to each row or the rows a REPLACE deleted.
fn returning_uncapturable(write: &Write, source: &Source<'_>) -> Option<&'static str> {
    if source.opens_cursor() {
        return Some(
            "an execute with RETURNING that opens a cursor, in AT mode (its rows would come after tandem's statements)",
        );
    }
    match (write.kind, write.on_duplicate) {
        (WriteKind::Update, _) => Some("UPDATE … RETURNING (MariaDB has no such statement)"),
        (WriteKind::Insert, OnDuplicate::Update | OnDuplicate::Replace) => Some(
            "an upsert or REPLACE with RETURNING, in AT mode (its rows do not say what it did to each row)",
        ),
        _ => None,
    }
}

/// Where a statement comes from: a COM_QUERY's text, or the client's COM_STMT_EXECUTE
/// (its whole packet) with its parameter values and types.
pub(super) enum Source<'a> {
    Query(&'a str),
    Execute {
        packet: &'a [u8],
        values: Vec<Option<Vec<u8>>>,
        types: Vec<u16>,
    },
}

impl Source<'_> {
    /// Whether it is an execute that opens a cursor (its rows come with later
    /// COM_STMT_FETCHes).
    pub(super) fn opens_cursor(&self) -> bool {
        match self {
            Source::Query(_) => false,
            // Header, command, statement id, then the cursor flags.
            Source::Execute { packet, .. } => {
                packet.get(4 + 1 + 4).is_some_and(|&flags| flags != 0)
            }
        }
    }

    /// The parameters a capture binds: the statement's own, by index.
    pub(super) fn bind(&self, indexes: &[usize]) -> std::result::Result<Vec<Param<'_>>, AtFailure> {
        match self {
            Source::Query(_) if indexes.is_empty() => Ok(Vec::new()),
            Source::Query(_) => Err(AtFailure::Refused(Error::Unsupported {
                what: "placeholders in a text query",
            })),
            Source::Execute { values, types, .. } => indexes
                .iter()
                .map(|&i| match (values.get(i), types.get(i)) {
                    (Some(value), Some(&t)) => Ok(Param {
                        type_code: u32::from(t),
                        value: value.as_deref(),
                    }),
                    _ => Err(AtFailure::Refused(Error::Unsupported {
                        what: "a capture naming a parameter the statement does not have",
                    })),
                })
                .collect(),
        }
    }
}

impl From<tandem_undo::Error> for AtFailure {
    fn from(e: tandem_undo::Error) -> Self {
        AtFailure::Refused(e.into())
    }
}

/// The errors a COM_STMT_PREPARE of a statement gives as its COM_QUERY would, before
/// anything runs: its syntax (ER_PARSE_ERROR, ER_SYNTAX_ERROR) and the names it uses
/// (no such table, column, database or function; none selected; ambiguous; not
/// granted). Others (ER_UNSUPPORTED_PS, too many prepared statements…) say nothing of
/// the statement itself.
const JUDGED_AT_PREPARE: [u16; 10] = [1064, 1149, 1146, 1054, 1049, 1046, 1305, 1052, 1142, 1143];

impl Relay<'_> {
    pub(super) fn own(&mut self) -> Own<'_> {
        self.backend().0
    }

    /// The session's backend connection for tandem's own commands, with the statements
    /// tandem keeps prepared on it.
    fn backend(&mut self) -> (Own<'_>, &mut OwnStatements) {
        let own = Own {
            server: &mut self.server,
            from_server: &mut self.from_server,
            pending_closes: &mut self.pending_closes,
            deprecate_eof: self.exchange.server.deprecate_eof,
            extended_metadata: self.extended_metadata,
            executes_last_prepared: self.executes_last_prepared,
        };
        (own, &mut self.own_statements)
    }

    /// A COM_QUERY tandem cannot parse (`e`): the server judges it first, without
    /// running it (a COM_STMT_PREPARE of its text). A syntax error, or a name that
    /// does not resolve, comes back as the server gives it (1064, 1146 …); what the
    /// server prepares is refused (1235), and so is a query of several statements (the
    /// server prepares one statement only, and would call the rest a syntax error).
    async fn refuse_unparsed(&mut self, text: &str, e: tandem_undo::Error) -> Result<Handled> {
        let one_statement =
            tandem_undo::split_mysql_statements(text).is_ok_and(|pieces| pieces.len() == 1);
        if one_statement
            && let Some(rejected) = self.own().rejected_at_prepare(text).await?
            && JUDGED_AT_PREPARE.contains(&rejected.code)
        {
            tracing::debug!(parent: self.binding.span(), error = %e, "statement tandem cannot parse, rejected by the server");
            put_err(
                &mut self.to_client,
                1,
                rejected.code,
                &rejected.sqlstate,
                &rejected.message,
            );
            return Ok(Handled::Answer);
        }
        self.refuse(e.into())
    }

    /// A whole COM_QUERY of a session bound in AT mode.
    pub(super) async fn at_query(&mut self, sql: &[u8]) -> Result<Handled> {
        if !self.exchange.at_sync_point() {
            return Ok(Handled::Pause);
        }
        self.reconcile_branch().await?;
        if let Some(TextReading::Otherwise(what)) = self.text_reading(sql).await? {
            // A statement tandem reads as part of a literal or a comment could run
            // without its undo.
            return self.refuse(Error::Unsupported { what });
        }
        let hex_text;
        let text = match std::str::from_utf8(sql) {
            Ok(text) => text,
            Err(_) => match self.binary_literals_as_hex(sql).await? {
                Ok(Some(text)) => {
                    hex_text = text;
                    &hex_text
                }
                Ok(None) => {
                    return self.refuse(Error::Unsupported {
                        what: "a statement that is not UTF-8 outside its _binary'…' literals, in AT mode",
                    });
                }
                Err(e) => {
                    self.put_failure(&AtFailure::Server(e));
                    return Ok(Handled::Answer);
                }
            },
        };
        if let Some(refusal) = self.refusal_before_analysis(text).await {
            return self.refuse(refusal);
        }
        if let Some(refused) = self.refused_for_charset(text).await? {
            return Ok(refused);
        }
        let analyses = match tandem_undo::analyze(&Mysql, text) {
            Ok(analyses) => analyses,
            Err(e @ tandem_undo::Error::Parse { .. }) => {
                return self.refuse_unparsed(text, e).await;
            }
            Err(e) => return self.refuse(e.into()),
        };
        if analyses.len() > 1 {
            // While the branch holds rows, a statement tandem does not capture may
            // commit implicitly; only reads, and statements that cannot end the
            // transaction (SET of a variable, SHOW …), may come in a batch then.
            let texts = tandem_undo::split_mysql_statements(text)
                .ok()
                .filter(|texts| texts.len() == analyses.len());
            let relayable = |(i, a): (usize, &Analysis)| match a {
                Analysis::Read => true,
                Analysis::Other => {
                    self.at_branch.is_empty()
                        || texts
                            .as_ref()
                            .is_some_and(|texts| harmless_in_transaction(texts[i]))
                }
                Analysis::Savepoint(_) => self.at_branch.is_empty(),
                _ => false,
            };
            if analyses.iter().enumerate().all(relayable) {
                for analysis in &analyses {
                    if let Analysis::Savepoint(op) = analysis {
                        self.at_branch.on_savepoint(op, false);
                    }
                }
                if self.at_branch.is_empty()
                    && analyses.iter().any(|a| matches!(a, Analysis::Other))
                {
                    // One of them may end the transaction, and its savepoints with it:
                    // forgetting a savepoint that lives on costs the branch nothing (a
                    // ROLLBACK TO it then keeps every row's image), keeping one that is
                    // gone drops rows.
                    self.at_branch = Branch::default();
                }
                self.at_branch.forget_all_after();
                return Ok(Handled::Relay);
            }
            // Without multi-statements the server fails such a query whole, and so
            // must tandem.
            if self.multi_statements
                && let Some(writes) = super::batch::writes_alone(text, analyses)
            {
                return self
                    .writes_in_turn(super::batch::Statementwise::Captured, writes)
                    .await;
            }
            return self.refuse(Error::Unsupported {
                what: "a multi-statement query that writes beside statements other than writes, or may end a transaction, in AT mode on MySQL (send its statements one at a time)",
            });
        }
        let Some(analysis) = analyses.into_iter().next() else {
            return Ok(Handled::Relay);
        };
        self.at_statement(analysis, text, &Source::Query(text))
            .await
    }

    /// A whole COM_STMT_EXECUTE of a session bound in AT mode, of a statement that may
    /// write or end a transaction.
    pub(super) async fn at_execute(
        &mut self,
        header: crate::wire::mysql::Header,
        packet: &[u8],
    ) -> Result<Handled> {
        if !self.exchange.at_sync_point() {
            return Ok(Handled::Pause);
        }
        self.reconcile_branch().await?;
        let payload = header.payload(packet);
        if header.is_continued() {
            return self.refuse(Error::Unsupported {
                what: "a COM_STMT_EXECUTE of 16 MiB or more, in AT mode",
            });
        }
        if payload.len() < header.payload_len {
            return Ok(Handled::NeedMore);
        }
        let id = super::client_side::statement_id(payload);
        let Some(prepared) = id.and_then(|id| self.prepared.get(&id)).cloned() else {
            return self.refuse(match id {
                // MariaDB's "the statement prepared last", in one round trip with it:
                // what it runs is not known.
                Some(u32::MAX) | None => Error::Unsupported {
                    what: "executing a statement id tandem did not see prepared, in AT mode",
                },
                // Never prepared, or closed: the server does not know it either.
                Some(id) => Error::UnknownStatement {
                    id,
                    given_to: "mysqld_stmt_execute",
                },
            });
        };
        let Some(sql) = prepared.sql.clone() else {
            return self.refuse(Error::Unsupported {
                what: "a prepared statement too long for tandem to have read, in AT mode",
            });
        };
        if prepared.long_data {
            // The server holds the long data for the execute that never comes: the
            // next one would meet it (1210), where directly this one used it up.
            if let Some(id) = id
                && self.own().reset_statement(id).await?.is_ok()
                && let Some(prepared) = self.prepared.get_mut(&id)
            {
                prepared.long_data = false;
            }
            return self.refuse(Error::Unsupported {
                what: "COM_STMT_SEND_LONG_DATA parameters, in AT mode",
            });
        }
        let parameters = match execute_parameters(payload, &prepared) {
            Ok(parameters) => parameters,
            Err(e) => return self.refuse(e),
        };
        let Some((values, types)) = parameters else {
            return self.refuse(Error::Unsupported {
                what: "an execute that binds no parameter types before any execute that did, in AT mode",
            });
        };
        if self.prepared_under_another_charset(&prepared, &sql) {
            return self.refuse(CHARSET_MISREAD);
        }
        // A write, or a locking read (its rows are checked against global locks).
        let reads_rows = prepared.kind == super::control::Kind::Work
            || matches!(
                self.ctx.analyses.analyze(&sql).as_deref(),
                Ok([tandem_undo::Analysis::LockingRead(_)])
            );
        if reads_rows && !self.prepared_here(&prepared).await? {
            return self.refuse(PREPARED_ELSEWHERE);
        }
        let source = Source::Execute {
            // This command alone: what the client sent after it is relayed in turn.
            packet: &packet[..header.wire_len()],
            values,
            types,
        };
        self.at_prepared(&sql, source, payload).await
    }

    async fn at_prepared(
        &mut self,
        sql: &str,
        source: Source<'_>,
        payload: &[u8],
    ) -> Result<Handled> {
        if let Some(refusal) = self.refusal_before_analysis(sql).await {
            return self.refuse(refusal);
        }
        if let Some(refused) = self.refused_for_charset(sql).await? {
            return Ok(refused);
        }
        let analysis = match self.ctx.analyses.analyze(sql) {
            Ok(analyses) => analyses.into_iter().next(),
            Err(e) => return self.refuse(e.into()),
        };
        let Some(analysis) = analysis else {
            return Ok(Handled::Relay);
        };
        self.execute_forwarded = false;
        let handled = self.at_statement(analysis, sql, &source).await?;
        if matches!(handled, Handled::Answer) && self.execute_forwarded {
            // Answered by tandem after the server ran the execute: the relay's own
            // bookkeeping of it (the types it bound) is done here. An execute the
            // server never saw leaves the types as the server knows them.
            self.on_execute(payload);
        }
        Ok(handled)
    }

    async fn at_statement(
        &mut self,
        analysis: Analysis,
        text: &str,
        source: &Source<'_>,
    ) -> Result<Handled> {
        let no_backslash_escapes = self
            .exchange
            .status()
            .is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_NO_BACKSLASH_ESCAPES));
        if no_backslash_escapes
            && text.contains('\\')
            && matches!(analysis, Analysis::Write(_) | Analysis::LockingRead(_))
        {
            // tandem reads literals with MySQL's default escapes; under
            // NO_BACKSLASH_ESCAPES a backslash would end a literal elsewhere.
            return self.refuse(Error::Unsupported {
                what: "a write with a backslash in its text under sql_mode NO_BACKSLASH_ESCAPES, in AT mode",
            });
        }
        match analysis {
            Analysis::Read => Ok(Handled::Relay),
            Analysis::Other if !self.at_branch.is_empty() && !harmless_in_transaction(text) => {
                self.refuse(Error::Unsupported {
                    what: "a statement that may end the transaction implicitly, while the branch has uncommitted writes (MySQL would commit them without their undo log): COMMIT or ROLLBACK first",
                })
            }
            Analysis::Other if !harmless_in_transaction(text) => {
                // It may end the transaction (the branch is empty), and its savepoints
                // with it: the branch's record of them must not outlive them.
                self.at_branch = Branch::default();
                Ok(Handled::Relay)
            }
            Analysis::Other => {
                // SET and the like: rows may now differ from what the writes saw.
                self.at_branch.forget_all_after();
                Ok(Handled::Relay)
            }
            // MariaDB compares savepoint names by a collation (`é` is `e`): tandem,
            // which follows them by their letters, could take one for another.
            Analysis::Savepoint(
                SavepointOp::Set(name) | SavepointOp::Release(name) | SavepointOp::RollbackTo(name),
            ) if !name.is_ascii() => self.refuse(Error::Unsupported {
                what: "a savepoint whose name is not ASCII, in AT mode on MySQL (the server compares such names by a collation tandem does not follow)",
            }),
            // MySQL moves a savepoint set again to the top, keeping those set since;
            // the branch's record (a stack, as PostgreSQL keeps them) cannot follow.
            Analysis::Savepoint(SavepointOp::Set(name)) if self.at_branch.has_savepoint(&name) => {
                self.refuse(Error::Unsupported {
                    what: "SAVEPOINT with the name of a savepoint still set, in AT mode on MySQL (release it or roll back to it first)",
                })
            }
            Analysis::Savepoint(op) => {
                self.at_branch.on_savepoint(&op, false);
                Ok(Handled::Relay)
            }
            Analysis::Begin if !self.at_branch.is_empty() => self.refuse(Error::Unsupported {
                what: "START TRANSACTION while the branch has uncommitted writes (MySQL would commit them without their undo log): COMMIT or ROLLBACK first",
            }),
            // The transaction it ends takes its savepoints along, recorded or not.
            Analysis::Begin => {
                self.at_branch = Branch::default();
                Ok(Handled::Relay)
            }
            Analysis::Rollback => {
                self.at_branch = Branch::default();
                Ok(Handled::Relay)
            }
            Analysis::Commit if self.at_branch.is_empty() => {
                self.at_branch = Branch::default();
                Ok(Handled::Relay)
            }
            Analysis::Commit => self.at_commit(text).await,
            Analysis::LockingRead(None) => self.refuse(Error::Unsupported {
                what: "SELECT … FOR UPDATE or LOCK IN SHARE MODE over a join or a derived table in a global transaction (lock the rows of one table, choosing them with a subquery: WHERE id IN (SELECT …))",
            }),
            Analysis::LockingRead(Some(read)) => self.at_locking_read(&read, source).await,
            Analysis::Write(write) => self.at_write(&write, source).await,
        }
    }

    /// A COM_QUERY right after a write AT captured, that calls ROW_COUNT(): run with
    /// the write's count in place of each call, as the command the session follows.
    /// None: it calls none, and goes on as sent.
    pub(super) async fn with_row_count(
        &mut self,
        header: crate::wire::mysql::Header,
        packet: &[u8],
        row_count: i64,
    ) -> Result<Option<Handled>> {
        let payload = header.payload(packet);
        if payload.first() != Some(&command::QUERY)
            || header.is_continued()
            || payload.len() < header.payload_len
        {
            return Ok(None);
        }
        let Ok(sql) = std::str::from_utf8(&payload[1..]) else {
            return Ok(None);
        };
        let no_backslash_escapes = self
            .exchange
            .status()
            .is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_NO_BACKSLASH_ESCAPES));
        if no_backslash_escapes && sql.contains('\\') {
            // tandem would read where a literal ends otherwise than the server.
            return Ok(None);
        }
        let Some(rewritten) = tandem_undo::with_row_count(sql, row_count) else {
            return Ok(None);
        };
        let mut replacement = Vec::with_capacity(1 + rewritten.len());
        replacement.push(command::QUERY);
        replacement.extend_from_slice(rewritten.as_bytes());
        let mut framed = bytes::BytesMut::new();
        crate::wire::mysql::packet::put_message(&mut framed, 0, &replacement);
        let Some(replaced) = crate::wire::mysql::Header::peek(&framed) else {
            return Ok(None);
        };
        let handled = match Box::pin(self.intercept_query(replaced, &framed)).await? {
            // The replacement is the command the state machine follows.
            None | Some(Handled::Relay) => match self.on_command(replaced, &framed)? {
                Handled::Relay => {
                    self.to_server.extend_from_slice(&framed);
                    Handled::Replace
                }
                handled => handled,
            },
            Some(handled) => handled,
        };
        if matches!(handled, Handled::Pause | Handled::NeedMore) {
            // Read again at the next sync point, and rewritten again then.
            self.row_count_after_write = Some(row_count);
        }
        Ok(Some(handled))
    }

    /// Why AT mode refuses `sql` whatever it is, text or prepared: an executable
    /// comment, or a call of a stored function.
    async fn refusal_before_analysis(&self, sql: &str) -> Option<Error> {
        if tandem_undo::has_executable_comment(sql) {
            return Some(EXECUTABLE_COMMENT);
        }
        self.stored_function_refusal(sql).await
    }

    /// Why `sql` must not run in AT mode if it calls a stored function (tandem captures
    /// no write one makes), or if the server's functions cannot be read.
    pub(super) async fn stored_function_refusal(&self, sql: &str) -> Option<Error> {
        if !sql.contains('(') {
            return None;
        }
        let names = match self.ctx.at_meta.stored_functions(self.ctx.xa.pool()).await {
            Ok(names) => names,
            Err(e) => return Some(e),
        };
        if names.is_empty() {
            return None;
        }
        let function = tandem_undo::called_functions(&Mysql, sql)
            .into_iter()
            .find(|name| names.contains(name))?;
        Some(Error::Undo(tandem_undo::Error::Unsupported {
            what: format!(
                "a call of stored function {function} (tandem captures no write a function makes), in AT mode on MySQL,"
            ),
        }))
    }

    /// The metadata of a table the client names, in the session's current database
    /// when it names none.
    pub(super) async fn table_of(
        &mut self,
        table: &tandem_undo::TableRef,
    ) -> Result<Outcome<Arc<AtTable>>> {
        if let Err(failure) = self.settle_database().await? {
            return Ok(Err(failure));
        }
        Ok(self
            .ctx
            .at_meta
            .get(self.ctx.xa.pool(), &self.database, table)
            .await
            .map_err(AtFailure::Refused))
    }

    /// Whether `table` names one of this session's temporary tables, which may hide a
    /// real table of the same name: only the client's own connection can tell (neither
    /// MariaDB 10.x nor MySQL 8 lists them by name in information_schema).
    pub(super) async fn is_temporary(
        &mut self,
        table: &tandem_undo::TableRef,
    ) -> Result<Outcome<bool>> {
        if let Err(failure) = self.settle_database().await? {
            return Ok(Err(failure));
        }
        let schema = table.schema.as_deref().unwrap_or(&self.database);
        let name = Mysql.qualified(&tandem_undo::TableRef {
            schema: Some(schema.to_owned()),
            name: table.name.clone(),
        });
        if let Some(&temporary) = self.temporary_tables.get(&name) {
            return Ok(Ok(temporary));
        }
        let rows = match self
            .own_select(&format!("SHOW CREATE TABLE {name}"), &[])
            .await?
        {
            Ok(rows) => rows,
            // No such table: the metadata lookup says so in its own words.
            Err(_) => return Ok(Ok(false)),
        };
        let definition = rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().nth(1).flatten())
            .unwrap_or_default();
        let temporary = definition
            .get(..22)
            .is_some_and(|head| head.eq_ignore_ascii_case(b"CREATE TEMPORARY TABLE"));
        self.temporary_tables.insert(name, temporary);
        Ok(Ok(temporary))
    }

    /// The session's current database, asked of the server after a `USE` or
    /// COM_INIT_DB may have changed it: tables the client names without a schema are
    /// there, and so are the branch's resource and undo_log. tandem's own statements
    /// prepared under another database are closed (they resolved their tables there).
    pub(super) async fn settle_database(&mut self) -> Result<Outcome<()>> {
        if !self.database_uncertain {
            return Ok(Ok(()));
        }
        let rows = match self.own_select("SELECT DATABASE()", &[]).await? {
            Ok(rows) => rows,
            Err(e) => return Ok(Err(AtFailure::Server(e))),
        };
        self.database_uncertain = false;
        let current = first_value(rows)
            .map(|name| String::from_utf8_lossy(&name).into_owned())
            .unwrap_or_default();
        if current != self.database {
            tracing::debug!(parent: self.binding.span(), database = %current, "current database changed");
            self.database = current;
            let closes = self.own_statements.drain_closes();
            self.write_server(&closes).await?;
        }
        if self.database.is_empty() {
            return Ok(Err(AtFailure::Refused(Error::Unsupported {
                what: "a write in AT mode with no database selected",
            })));
        }
        Ok(Ok(()))
    }

    /// Whether `prepared` runs in the session's current database: the one it was
    /// prepared in (a USE since leaves its unqualified tables where they were, while
    /// tandem would read and lock rows of the new one's).
    pub(super) async fn prepared_here(
        &mut self,
        prepared: &super::control::Prepared,
    ) -> Result<bool> {
        // No database selected is a current database too.
        let _ = self.settle_database().await?;
        Ok(
            !self.database_uncertain
                && prepared.database.as_deref() == Some(self.database.as_str()),
        )
    }

    /// The branch's local transaction ended without tandem (MariaDB rolls the whole
    /// transaction back on a deadlock, and on a lock wait timeout under
    /// innodb_rollback_on_timeout): its rows are as they were, so there is nothing to
    /// undo. Nothing that commits is relayed while the branch holds rows, so an ended
    /// transaction was rolled back.
    pub(super) async fn reconcile_branch(&mut self) -> Result<()> {
        if self.exchange.status_uncertain {
            self.ask_transaction_status().await?;
        }
        let in_transaction = self
            .exchange
            .status()
            .is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_IN_TRANS));
        if !in_transaction {
            if !self.at_branch.is_empty() {
                tracing::debug!(parent: self.binding.span(), "the branch's local transaction was rolled back by the server");
            }
            // Its savepoints went with it, even where the branch held no rows.
            self.at_branch = Branch::default();
        }
        Ok(())
    }

    /// After an error that may have rolled the transaction back (see
    /// `ServerRules::may_end_transaction`), asks the server: `DO 0` changes nothing,
    /// and its OK carries the session's real status flags. Returns whether a
    /// transaction is still open (None if the server refused even that).
    async fn ask_transaction_status(&mut self) -> Result<Option<bool>> {
        match self.own().query("DO 0").await? {
            Ok(ok) => {
                self.exchange.on_authenticated(ok.status);
                self.exchange.status_uncertain = false;
                Ok(Some(
                    ok.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS),
                ))
            }
            Err(e) => {
                tracing::debug!(parent: self.binding.span(), error = %e.message, "transaction status unread");
                Ok(None)
            }
        }
    }

    /// The client's COMMIT (or `SET autocommit = 1`, which commits) of a local
    /// transaction with captured rows.
    async fn at_commit(&mut self, sql: &str) -> Result<Handled> {
        // The client's own COMMIT keeps its words (AND CHAIN, RELEASE) and its
        // completion_type; the commit `SET autocommit = 1` implies never chains.
        let ending = if is_commit(sql) {
            sql
        } else {
            super::OWN_COMMIT
        };
        let committed = self.commit_branch(ending).await?;
        match committed {
            Ok(status) => {
                self.exchange.on_authenticated(status);
                if !is_commit(sql) {
                    // `SET autocommit = 1`: committed; the SET itself still runs.
                    return Ok(Handled::Relay);
                }
                crate::wire::mysql::messages::response::put_ok(&mut self.to_client, 1, status);
            }
            Err(failure) => self.put_commit_failure(&failure),
        }
        Ok(Handled::Answer)
    }

    /// An INSERT, UPDATE, DELETE or REPLACE in a global transaction, with its images.
    pub(super) async fn at_write(&mut self, write: &Write, source: &Source<'_>) -> Result<Handled> {
        self.learn_lock_timeout_rule().await;
        if write.has_returning
            && let Some(what) = returning_uncapturable(write, source)
        {
            return self.refuse(Error::Unsupported { what });
        }
        let temporary = self.is_temporary(&write.table).await?;
        if matches!(temporary, Ok(true)) {
            return self.refuse(Error::Unsupported {
                what: "a write to a temporary table inside a global transaction (no other connection can undo its rows)",
            });
        }
        let table = match temporary.and(self.table_of(&write.table).await?) {
            Ok(table) => table,
            Err(failure) => {
                self.put_failure(&failure);
                return Ok(Handled::Answer);
            }
        };
        let status = self.exchange.status().unwrap_or(StatusFlags::empty());
        // An autocommit write is its own branch: tandem opens the local transaction
        // that holds its images and undo row.
        let wrapped = !super::in_transaction(status);
        if wrapped && let Some(refusal) = self.own_transaction_refused(&write.table).await? {
            return self.refuse(refusal);
        }
        if wrapped && let Err(e) = self.own().query("START TRANSACTION").await? {
            self.put_failure(&AtFailure::Server(e));
            return Ok(Handled::Answer);
        }
        let mut outcome = self.capture_write(&table, write, source).await?;
        if wrapped && let Ok(written) = &mut outcome {
            match self.commit_branch(super::OWN_COMMIT).await? {
                Ok(status) => written.ok.take_status_of(status),
                Err(failure) => outcome = Err(failure),
            }
        }
        match outcome {
            Ok(written) => {
                self.exchange.on_authenticated(written.ok.status);
                self.answer_write(&written.ok, written.returned);
            }
            Err(failure) => {
                let whole_transaction = match &failure {
                    AtFailure::Uncaptured(_) => true,
                    // A deadlock in InnoDB rolls back the whole transaction, one on a
                    // metadata lock only the statement: the server says which.
                    AtFailure::Server(e) if self.exchange.server.may_end_transaction(e.code) => {
                        self.ask_transaction_status().await? == Some(false)
                    }
                    AtFailure::Server(_) | AtFailure::Refused(_) => false,
                };
                if wrapped || whole_transaction {
                    self.roll_back_local_transaction().await?;
                }
                self.put_failure(&failure);
            }
        }
        Ok(Handled::Answer)
    }

    /// Reads the before images, runs the write, and learns the rows it inserted.
    async fn capture_write(
        &mut self,
        table: &AtTable,
        write: &Write,
        source: &Source<'_>,
    ) -> Result<Outcome<Written>> {
        let meta = &table.meta;
        if write.rows.as_ref().is_some_and(|r| r.double_quoted) {
            match self.ansi_quotes().await? {
                Ok(false) => {}
                Ok(true) => {
                    return Ok(Err(AtFailure::Refused(Error::Unsupported {
                        what: "an INSERT with a double-quoted value under sql_mode ANSI_QUOTES (the server reads it as a column, tandem as a string)",
                    })));
                }
                Err(e) => return Ok(Err(AtFailure::Server(e))),
            }
        }
        if write.kind != WriteKind::Insert {
            let capture = match table.mysql.before_image(write) {
                Ok(capture) => capture,
                Err(e) => return Ok(Err(e.into())),
            };
            if write.limit.is_some()
                && let Err(failure) = self.require_gap_locks().await?
            {
                return Ok(Err(failure));
            }
            let params = match source.bind(&capture.params) {
                Ok(params) => params,
                Err(failure) => return Ok(Err(failure)),
            };
            let around = self
                .around_write(Some((&capture.sql, &params)), source, None)
                .await?;
            let keys = match self.record_before(meta, around.before, around.write.is_ok()) {
                Ok(keys) => keys,
                Err(failure) => return Ok(Err(failure)),
            };
            let ok = match around.write {
                Ok(ok) => ok,
                Err(e) => return Ok(Err(AtFailure::Server(e))),
            };
            let changed = match write.kind {
                WriteKind::Update => ok.rows_matched().unwrap_or(ok.affected_rows),
                _ => ok.affected_rows,
            };
            if changed > keys.len() as u64 {
                // A row the before image did not see (a phantom under READ COMMITTED).
                return Ok(Err(uncaptured(meta)));
            }
            self.at_branch.forget_after(meta, &keys);
            return Ok(Ok(Written {
                ok,
                returned: around.returned,
            }));
        }
        let plan = match table.mysql.insert_plan(write) {
            Ok(plan) => plan,
            Err(e) => return Ok(Err(e.into())),
        };
        let before_params = match plan.before.as_ref().map(|b| source.bind(&b.params)) {
            Some(Err(failure)) => return Ok(Err(failure)),
            Some(Ok(params)) => params,
            None => Vec::new(),
        };
        let after_params = match plan.after.as_ref().map(|a| source.bind(&a.params)) {
            Some(Err(failure)) => return Ok(Err(failure)),
            Some(Ok(params)) => params,
            None => Vec::new(),
        };
        let around = self
            .around_write(
                plan.before
                    .as_ref()
                    .map(|b| (b.sql.as_str(), &before_params[..])),
                source,
                plan.after
                    .as_ref()
                    .map(|a| (a.sql.as_str(), &after_params[..])),
            )
            .await?;
        let before = match read_before(meta, around.before, around.write.is_ok()) {
            Ok(rows) => rows,
            Err(failure) => return Ok(Err(failure)),
        };
        let before_keys: Vec<TextKey> = before.iter().map(|(_, key)| key.clone()).collect();
        // A plain INSERT changes none of the rows read before it (see
        // `InsertPlan::before`): they are no before images.
        if write.on_duplicate != OnDuplicate::Error {
            self.at_branch.record_before(meta, before.clone());
        }
        let ok = match around.write {
            Ok(ok) => ok,
            Err(e) => return Ok(Err(AtFailure::Server(e))),
        };
        // A generated key's row is inserted unless an IGNORE or upsert found the row it
        // collides with (the OK's last insert id then says nothing of it).
        let inserts_generated = plan.generated > 0
            && ok.affected_rows > 0
            && match write.on_duplicate {
                OnDuplicate::Error | OnDuplicate::Replace => true,
                OnDuplicate::Ignore | OnDuplicate::Update => before_keys.is_empty(),
            };
        let found = if let Some(after) = around.after {
            // Without the rows it inserted, the write cannot be undone.
            after.map_err(|_| uncaptured(meta))
        } else if inserts_generated {
            let first = match &around.returned {
                None => Ok(ok.last_insert_id),
                // Rows end the reply, not an OK with the id: the server still has it.
                Some(_) => self.last_insert_id().await?,
            };
            match first {
                Ok(first) => self
                    .generated_rows(table, first, plan.generated)
                    .await?
                    .map_err(AtFailure::Server),
                Err(e) => Err(AtFailure::Server(e)),
            }
        } else {
            Ok(Vec::new())
        };
        let found = match found {
            Ok(rows) => keyed(meta, rows),
            Err(failure) => return Ok(Err(failure)),
        };
        // A plain INSERT's `before` is a snapshot: a row another transaction deleted
        // since may show there and then be inserted again by this one, which `after`
        // shows as it is now.
        let existed = |(row, key): &(Row, TextKey)| match write.on_duplicate {
            OnDuplicate::Error => before.iter().any(|(r, k)| k == key && r == row),
            _ => before_keys.contains(key),
        };
        let inserted: Vec<TextKey> = found
            .iter()
            .filter(|found| !existed(found))
            .map(|(_, k)| k.clone())
            .collect();
        let inserted_count = inserted.len() as u64;
        let consistent = match write.on_duplicate {
            OnDuplicate::Error | OnDuplicate::Ignore => ok.affected_rows == inserted_count,
            // An upsert counts 2 for a row it updated (0 if unchanged): with generated
            // keys, a row it updated must be one `before` read.
            OnDuplicate::Update if plan.generated > 0 => {
                if before_keys.is_empty() {
                    ok.affected_rows == inserted_count
                } else {
                    inserted_count == 0 && ok.affected_rows <= 2
                }
            }
            // Each row it inserted counts 1, each it changed 2, each it left as it was
            // 0 (1 for a client that asked for CLIENT_FOUND_ROWS). `after` read every
            // row `before` did again: the count must add up exactly, or the server
            // collided with a row tandem's comparison of the values missed.
            OnDuplicate::Update => {
                let changed = before
                    .iter()
                    .filter(|(image, key)| !found.iter().any(|(r, k)| k == key && r == image))
                    .count() as u64;
                let unchanged = before.len() as u64 - changed;
                let counted_unchanged = if self
                    .capabilities
                    .contains(CapabilityFlags::CLIENT_FOUND_ROWS)
                {
                    unchanged
                } else {
                    0
                };
                ok.affected_rows == inserted_count + 2 * changed + counted_unchanged
            }
            // REPLACE counts each row it deleted, plus each it inserted.
            OnDuplicate::Replace => {
                ok.affected_rows <= (found.len() + before_keys.len()) as u64
                    && (plan.generated == 0 || inserted_count == 1)
            }
        };
        // Fewer rows found by the keys the statement gives than it inserted (or none at
        // all where an upsert's count cannot say): the server stored a key otherwise
        // than written, and always will. Any other mismatch may be a race.
        let stored_otherwise = plan.generated == 0
            && match write.on_duplicate {
                OnDuplicate::Error | OnDuplicate::Ignore => (found.len() as u64) < ok.affected_rows,
                OnDuplicate::Update | OnDuplicate::Replace => {
                    found.is_empty() && before_keys.is_empty() && ok.affected_rows > 0
                }
            };
        if !consistent && stored_otherwise {
            return Ok(Err(AtFailure::Uncaptured(Error::InsertedUnseen {
                table: meta.table.name.clone(),
            })));
        }
        // Several rows of an upsert or REPLACE: where the before image locked every row
        // and gap their keys name, a count that does not add up is its rows meeting one
        // another (or a key stored otherwise meeting a row), which they will on every
        // retry. Without gap locks it may be a race.
        let several_rows = write.rows.as_ref().is_some_and(|r| r.rows.len() > 1);
        if !consistent
            && several_rows
            && matches!(
                write.on_duplicate,
                OnDuplicate::Update | OnDuplicate::Replace
            )
            && matches!(self.takes_gap_locks().await?, Ok(true))
        {
            return Ok(Err(AtFailure::Uncaptured(Error::UpsertDoesNotAddUp {
                table: meta.table.name.clone(),
            })));
        }
        if !consistent {
            return Ok(Err(uncaptured(meta)));
        }
        self.at_branch.forget_after(meta, &before_keys);
        self.at_branch.record_inserted(meta, inserted);
        self.at_branch
            .record_returned_after(meta, found.into_iter().map(|(row, key)| (key, Some(row))));
        Ok(Ok(Written {
            ok,
            returned: around.returned,
        }))
    }

    /// The first AUTO_INCREMENT key the session's last INSERT generated.
    async fn last_insert_id(&mut self) -> Result<std::result::Result<u64, OwnError>> {
        Ok(self
            .own_select("SELECT LAST_INSERT_ID()", &[])
            .await?
            .map(|rows| first_u64(rows).unwrap_or(0)))
    }

    /// Records the rows a write's before read found (none without a read); returns their
    /// keys.
    fn record_before(
        &mut self,
        meta: &Arc<tandem_undo::TableMeta>,
        read: Option<std::result::Result<Vec<BinaryRow>, OwnError>>,
        write_ran: bool,
    ) -> Outcome<Vec<TextKey>> {
        let rows = read_before(meta, read, write_ran)?;
        let keys = rows.iter().map(|(_, k)| k.clone()).collect();
        self.at_branch.record_before(meta, rows);
        Ok(keys)
    }

    /// Whether the session's sql_mode has ANSI_QUOTES: asked only of a statement with
    /// a double-quoted VALUES entry, which tandem reads as a string and the server
    /// then as a column.
    pub(super) async fn ansi_quotes(&mut self) -> Result<std::result::Result<bool, OwnError>> {
        Ok(self
            .sql_mode_has(&[b"ANSI_QUOTES"])
            .await?
            .map(|has| has[0]))
    }

    /// Which of `modes` the session's sql_mode holds, in their order.
    async fn sql_mode_has(
        &mut self,
        modes: &[&[u8]],
    ) -> Result<std::result::Result<Vec<bool>, OwnError>> {
        Ok(self
            .own_select("SELECT @@SESSION.sql_mode", &[])
            .await?
            .map(|rows| {
                let mode = first_value(rows).unwrap_or_default();
                modes
                    .iter()
                    .map(|wanted| {
                        mode.split(|&b| b == b',')
                            .any(|m| m.eq_ignore_ascii_case(wanted))
                    })
                    .collect()
            }))
    }

    /// How the server reads `sql` beside tandem's tokenizer: a sql_mode set midway,
    /// its comments (`comments_read_otherwise`), then its literals under the
    /// session's sql_mode (`quoted_reading`). None: sql_mode must be asked, and this
    /// is no sync point.
    pub(super) async fn text_reading(&mut self, sql: &[u8]) -> Result<Option<TextReading>> {
        if lexing_may_change_midway(sql) {
            return Ok(Some(TextReading::Otherwise(
                "a multi-statement query that sets sql_mode ahead of a backslash or a double quote, in AT mode (where a literal ends depends on it: send its statements one at a time)",
            )));
        }
        if tandem_undo::mysql::reading::comments_read_otherwise(sql) {
            return Ok(Some(TextReading::Otherwise(
                "a comment the server reads otherwise than tandem (`--` before a character other than ASCII's or a control character, or an executable comment), in AT mode",
            )));
        }
        Ok(self.quoted_reading(sql).await?.map(|reading| match reading {
            QuotedReading::Same => TextReading::Same,
            QuotedReading::ValuesDiffer => TextReading::ValuesDiffer,
            QuotedReading::BoundariesDiffer => TextReading::Otherwise(
                "a backslash that ends a literal or a double-quoted name under the session's sql_mode (NO_BACKSLASH_ESCAPES, ANSI_QUOTES) where tandem reads it as an escape, in AT mode",
            ),
        }))
    }

    /// How the server reads the quoted runs of `sql` under the session's sql_mode,
    /// beside tandem's reading (`tandem_undo::mysql::reading`). sql_mode is asked only
    /// where ANSI_QUOTES would change something, and only at a sync point: None, ask
    /// again there. An error asking counts as `BoundariesDiffer`.
    async fn quoted_reading(&mut self, sql: &[u8]) -> Result<Option<QuotedReading>> {
        let mut quoting = Quoting {
            no_backslash_escapes: self
                .exchange
                .status()
                .is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_NO_BACKSLASH_ESCAPES)),
            ansi_quotes: true,
            brackets: true,
        };
        if quoted_reading(sql, quoting) == QuotedReading::Same {
            return Ok(Some(QuotedReading::Same));
        }
        if !self.exchange.at_sync_point() {
            return Ok(None);
        }
        (quoting.ansi_quotes, quoting.brackets) =
            match self.sql_mode_has(&[b"ANSI_QUOTES", b"MSSQL"]).await? {
                Ok(has) => (has[0], has[1]),
                Err(_) => return Ok(Some(QuotedReading::BoundariesDiffer)),
            };
        Ok(Some(quoted_reading(sql, quoting)))
    }

    /// Text that is not UTF-8, for judging by its tables only (the text the server
    /// runs stays the client's bytes): as the session reads it if its character set
    /// for statements is latin1 (MariaDB's latin1 is cp1252, whose 0xA0 is a space);
    /// in another set whose characters hold no ASCII byte, with the bytes other than
    /// ASCII's inside literals blanked, if there are none elsewhere (in a name they
    /// would be misread). None otherwise, or where a statement ahead may set the set.
    pub(super) async fn readable_text(&mut self, sql: &[u8]) -> Result<Option<String>> {
        if may_change_the_charset(sql) {
            return Ok(None);
        }
        let Ok(Some(charset)) = self.client_charset().await? else {
            return Ok(None);
        };
        if charset.eq_ignore_ascii_case(b"latin1") {
            // A space to latin1, a letter to sqlparser's MySQL tokenizer. (In a
            // quoted name it is the name's own: such a name is misread.)
            return Ok(Some(
                tandem_undo::mysql::reading::decode_cp1252(sql).replace('\u{a0}', " "),
            ));
        }
        if hides_ascii(&charset) {
            return Ok(None);
        }
        Ok(tandem_undo::mysql::reading::literals_blanked(sql))
    }

    /// Whether the session's character set for statements reads `sql` otherwise than
    /// tandem does: asked only of a statement where it may (`may_swallow_a_quote`).
    pub(super) async fn charset_misreads(
        &mut self,
        sql: &str,
    ) -> Result<std::result::Result<bool, OwnError>> {
        if !may_swallow_a_quote(sql.as_bytes()) {
            return Ok(Ok(false));
        }
        if holds_several_statements(sql) && may_change_the_charset(sql.as_bytes()) {
            // A statement ahead of the others in the text may set it (SET NAMES gbk;
            // …): what the session says now is not what reads them.
            return Ok(Ok(true));
        }
        Ok(self
            .client_charset()
            .await?
            .map(|charset| charset.is_some_and(|name| hides_ascii(&name))))
    }

    /// The session's character set for statements (character_set_client).
    async fn client_charset(&mut self) -> Result<std::result::Result<Option<Vec<u8>>, OwnError>> {
        Ok(self
            .own_select("SELECT @@SESSION.character_set_client", &[])
            .await?
            .map(first_value))
    }

    /// `sql`, not UTF-8, with its `_binary'…'` literals written in hexadecimal
    /// (`tandem_undo::mysql::binary_literals`): the same statement, as UTF-8, which
    /// tandem then analyses and runs. None where other bytes are not UTF-8, or the
    /// session's character set may read a backslash or a backtick as part of a
    /// character (as `charset_misreads`).
    pub(super) async fn binary_literals_as_hex(
        &mut self,
        sql: &[u8],
    ) -> Result<std::result::Result<Option<String>, OwnError>> {
        let backslash_escapes = !self
            .exchange
            .status()
            .is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_NO_BACKSLASH_ESCAPES));
        let Some(text) =
            tandem_undo::mysql::binary_literals::binary_literals_as_hex(sql, backslash_escapes)
        else {
            return Ok(Ok(None));
        };
        if !may_swallow_a_quote(sql) {
            // No character of any set reads otherwise: no need to ask the session (a
            // statement of tandem's there would reset FOUND_ROWS() and ROW_COUNT()).
            return Ok(Ok(Some(text)));
        }
        if may_change_the_charset(sql) {
            // A statement ahead in the text may set what reads the rest.
            return Ok(Ok(None));
        }
        Ok(self.client_charset().await?.map(|charset| {
            let hides_quotes = charset.as_deref().is_none_or(hides_ascii);
            (!hides_quotes).then_some(text)
        }))
    }

    /// Whether `prepared` (its text `sql`) was read by the server under a character set
    /// the session may have changed since, and which may read it otherwise than
    /// tandem: asking the session now would not tell.
    pub(super) fn prepared_under_another_charset(
        &self,
        prepared: &super::control::Prepared,
        sql: &str,
    ) -> bool {
        prepared.charset_changes != self.charset_changes && may_swallow_a_quote(sql.as_bytes())
    }

    /// Refuses `sql`, before any of it runs, where the session's character set reads it
    /// otherwise than tandem does. None: it may go on.
    async fn refused_for_charset(&mut self, sql: &str) -> Result<Option<Handled>> {
        match self.charset_misreads(sql).await? {
            Ok(false) => Ok(None),
            Ok(true) => self.refuse(CHARSET_MISREAD).map(Some),
            Err(e) => {
                self.put_failure(&AtFailure::Server(e));
                Ok(Some(Handled::Answer))
            }
        }
    }

    /// A write with LIMIT takes the first rows its ORDER BY finds: only next-key locks
    /// (REPEATABLE READ or SERIALIZABLE) keep a row from being inserted ahead of them
    /// between the before image and the write, which would then change that row
    /// instead, unseen by the count of rows.
    async fn require_gap_locks(&mut self) -> Result<Outcome<()>> {
        Ok(match self.takes_gap_locks().await? {
            Ok(true) => Ok(()),
            Ok(false) => Err(AtFailure::Refused(Error::Unsupported {
                what: "UPDATE or DELETE … LIMIT under READ COMMITTED or READ UNCOMMITTED (without gap locks another row may take the place of the ones tandem read)",
            })),
            Err(failure) => Err(failure),
        })
    }

    /// Whether the session's locking reads take gap locks (its isolation is REPEATABLE
    /// READ or SERIALIZABLE): then no other transaction's row can come where they read.
    async fn takes_gap_locks(&mut self) -> Result<Outcome<bool>> {
        // MariaDB (and MySQL before 8.0) name it tx_isolation.
        let mut level = self.own_select("SELECT @@tx_isolation", &[]).await?;
        if level.is_err() {
            level = self
                .own_select("SELECT @@transaction_isolation", &[])
                .await?;
        }
        Ok(match level {
            Ok(rows) => Ok(!first_value(rows).unwrap_or_default().starts_with(b"READ-")),
            Err(e) => Err(AtFailure::Server(e)),
        })
    }

    /// Runs a capture with the statement's parameters, over the binary protocol.
    async fn select(
        &mut self,
        capture: &tandem_undo::Capture,
        source: &Source<'_>,
    ) -> Result<Outcome<Vec<BinaryRow>>> {
        let params = match source.bind(&capture.params) {
            Ok(params) => params,
            Err(failure) => return Ok(Err(failure)),
        };
        Ok(self
            .own_select(&capture.sql, &params)
            .await?
            .map_err(AtFailure::Server))
    }

    /// Runs one of tandem's SELECTs over the binary protocol, kept prepared.
    pub(super) async fn own_select(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<std::result::Result<Vec<BinaryRow>, OwnError>> {
        let (mut own, statements) = self.backend();
        own.select(statements, sql, params).await
    }

    /// Runs the client's write itself (its text, or its own COM_STMT_EXECUTE) with
    /// tandem's reads pipelined around it.
    pub(super) async fn around_write(
        &mut self,
        before: Option<(&str, &[Param<'_>])>,
        source: &Source<'_>,
        after: Option<(&str, &[Param<'_>])>,
    ) -> Result<AroundWrite> {
        let query;
        let packet = match source {
            Source::Query(sql) => {
                let mut payload = Vec::with_capacity(1 + sql.len());
                payload.push(crate::wire::mysql::codes::command::QUERY);
                payload.extend_from_slice(sql.as_bytes());
                let mut out = bytes::BytesMut::new();
                crate::wire::mysql::packet::put_message(&mut out, 0, &payload);
                query = out;
                &query[..]
            }
            Source::Execute { packet, .. } => packet,
        };
        // A text write's reads carry its literals: they will not come again.
        let reuse = matches!(source, Source::Execute { .. });
        let autocommits = self
            .exchange
            .status()
            .is_none_or(|s| s.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT));
        let (mut own, statements) = self.backend();
        let around = own
            .around_write(statements, before, packet, after, reuse, autocommits)
            .await?;
        self.execute_forwarded = reuse && around.write_sent;
        Ok(around)
    }

    /// The rows an INSERT gave AUTO_INCREMENT keys: the k-th has
    /// `last_insert_id + k × @@auto_increment_increment`.
    async fn generated_rows(
        &mut self,
        table: &AtTable,
        first: u64,
        count: usize,
    ) -> Result<std::result::Result<Vec<BinaryRow>, OwnError>> {
        let step = if count > 1 {
            match self
                .own_select("SELECT @@auto_increment_increment", &[])
                .await?
            {
                Ok(rows) => first_u64(rows).unwrap_or(1),
                Err(e) => return Ok(Err(e)),
            }
        } else {
            1
        };
        let keys: Vec<[u8; 8]> = (0..count as u64)
            .map(|k| first.wrapping_add(k.wrapping_mul(step)).to_le_bytes())
            .collect();
        let params: Vec<Param<'_>> = keys
            .iter()
            .map(|k| Param {
                type_code: types::LONGLONG | types::UNSIGNED,
                value: Some(k),
            })
            .collect();
        let sql = table.mysql.select_by_keys(count);
        self.own_select(&sql, &params).await
    }

    /// After images, registration with the branch's lock keys, the undo row, then
    /// `commit`, the statement that ends the local transaction. On failure the local
    /// transaction is over (rolled back).
    async fn commit_branch(&mut self, commit: &str) -> Result<Outcome<StatusFlags>> {
        if let Err(failure) = self.settle_database().await? {
            return self.abandon(failure).await;
        }
        let xid = self.binding.xid().cloned().ok_or(Error::NotBound)?;
        if self.at_branch.is_empty() {
            // A write that changed no row: nothing to undo, nothing to lock.
            return Ok(match self.own().query(commit).await? {
                Ok(ok) => Ok(ok.status),
                Err(e) => Err(AtFailure::Server(e)),
            });
        }
        // Every table's after images in one round trip: the local row locks are held
        // until the COMMIT, so every round trip here is time other writers wait.
        let tables = self.at_branch.keys();
        let mut reads = Vec::new();
        for (meta, keys) in &tables {
            for chunk in keys.chunks(KEYS_PER_READ) {
                let values: Vec<Option<Vec<u8>>> = chunk
                    .iter()
                    .flatten()
                    .map(|v| unhex(v.as_deref()))
                    .collect();
                reads.push((Arc::clone(meta), chunk.len(), values));
            }
        }
        let queries: Vec<(String, Vec<Param<'_>>)> = reads
            .iter()
            .map(|(meta, rows, values)| {
                let key_types = meta
                    .pk
                    .iter()
                    .map(|&i| Mysql.param_type(meta.columns[i].type_oid));
                let params = values
                    .iter()
                    .zip(key_types.cycle())
                    .map(|(v, type_code)| Param {
                        type_code,
                        value: v.as_deref(),
                    })
                    .collect();
                (meta.select_by_keys_sql(&Mysql, *rows), params)
            })
            .collect();
        let ctx = self.ctx;
        let resource = ctx.xa.resource_id(&self.database);
        // The branch registers (its lock keys are known: every row it touched) while
        // the after images are read: two round trips at once, to the lockserver and to
        // the server, while the local row locks are held.
        let mut touched = self.at_branch.touched_keys();
        let mut sets: Vec<(&tandem_undo::TableMeta, &mut [KeyValues])> = touched
            .iter_mut()
            .map(|(meta, keys)| (&**meta, keys.as_mut_slice()))
            .collect();
        // Before the two round trips below: a key its collation compares is locked by
        // its weight, which the server tells (none for other keys).
        if let Err(e) = weigh_keys(ctx.xa.pool(), &mut sets).await {
            return self.abandon(AtFailure::Refused(e)).await;
        }
        let scope = ctx.xa.lock_scope();
        let keys: Vec<LockKey> = touched
            .iter()
            .flat_map(|(meta, keys)| keys.iter().map(|key| lock_key(&scope, meta, key)))
            .collect();
        ctx.xa.serve(&resource);
        // A KILL QUERY of the session's (or the statement's own time limit) ends the
        // wait for other branches' row locks; a registration granted late is
        // withdrawn, holding nothing.
        let ends = self.waits_end();
        let register = ctx.lock.register_branch_unless(
            &xid,
            &resource,
            BranchKind::AT,
            &keys,
            ctx.lock_wait,
            ends.ended(),
        );
        let (mut own, statements) = self.backend();
        let (results, registered) = tokio::join!(own.select_many(statements, &queries), register);
        let results = match results {
            Ok(results) => results,
            Err(e) => {
                if let Ok(Some(branch_id)) = registered {
                    self.report_phase_one_failed(&xid, branch_id);
                }
                return Err(e);
            }
        };
        drop(queries);
        let branch_id = match registered {
            Ok(Some(id)) => id,
            Ok(None) => return self.abandon(AtFailure::Refused(ends.why())).await,
            Err(e) => {
                self.binding.on_registration_refused(&e);
                return self.abandon(AtFailure::Refused(e.into())).await;
            }
        };
        tracing::debug!(parent: &self.binding.branch_span(&xid, branch_id), "branch registered");
        for ((meta, ..), result) in reads.iter().zip(results) {
            match result {
                Ok(rows) => self.at_branch.record_after(meta, keyed(meta, rows)),
                Err(e) => {
                    self.report_phase_one_failed(&xid, branch_id);
                    return self.abandon(AtFailure::Server(e)).await;
                }
            }
        }
        let record = std::mem::take(&mut self.at_branch).into_record();
        // A prepared INSERT (kept, like the image reads) with the record as a binary
        // parameter: nothing to escape, nothing for the server to parse again.
        let insert = format!(
            "INSERT INTO {} (id, branch_id, xid, context, rollback_info, log_status) VALUES (?, ?, ?, 'tandem', ?, ?)",
            undo_table(&self.database),
        );
        let id = crate::at::undo_row_id(xid.as_str(), branch_id).to_le_bytes();
        let branch = branch_id.to_le_bytes();
        let info = record.encode();
        let status = crate::at::phase2::LOG_NORMAL.to_le_bytes();
        let params = [
            Param {
                type_code: types::LONGLONG,
                value: Some(&id),
            },
            Param {
                type_code: types::LONGLONG | types::UNSIGNED,
                value: Some(&branch),
            },
            Param {
                type_code: types::BLOB,
                value: Some(xid.as_str().as_bytes()),
            },
            Param {
                type_code: types::BLOB,
                value: Some(&info),
            },
            Param {
                type_code: types::LONG,
                value: Some(&status),
            },
        ];
        // A packet past max_allowed_packet, the server answers by closing the
        // connection: refused here instead, the session kept.
        let packet = info.len() + xid.as_str().len() + 64;
        // The connection gone here or at the INSERT, no COMMIT was sent: nothing of the
        // branch was committed, and its locks need not wait for the timeout.
        let limit = self
            .packet_limit_for(packet)
            .await
            .inspect_err(|_| self.report_phase_one_failed(&xid, branch_id))?;
        if let Some(limit) = limit
            && packet as u64 > limit
        {
            self.report_phase_one_failed(&xid, branch_id);
            let code = MyErr::TransactionTooLarge;
            return self
                .abandon(AtFailure::Server(OwnError {
                    code: code.code(),
                    sqlstate: *code.sqlstate(),
                    message: format!(
                        "the branch's undo row ({packet} bytes: its rows' before and after images) is larger than the server's max_allowed_packet ({limit}); write fewer or smaller rows per local transaction, or raise max_allowed_packet"
                    ),
                }))
                .await;
        }
        // Not pipelined with the COMMIT: a failed INSERT does not fail MySQL's
        // transaction, and the COMMIT would then commit the rows without their undo.
        let inserted = self
            .own_select(&insert, &params)
            .await
            .inspect_err(|_| self.report_phase_one_failed(&xid, branch_id))?;
        if let Err(mut e) = inserted {
            if e.code == NO_SUCH_TABLE {
                e.message = format!(
                    "{} (tandem's undo_log: run `tandem migrate` on database {})",
                    e.message, self.database
                );
            }
            self.report_phase_one_failed(&xid, branch_id);
            return self.abandon(AtFailure::Server(e)).await;
        }
        match self.own().query(commit).await? {
            Ok(ok) => Ok(Ok(ok.status)),
            Err(e) => {
                self.report_phase_one_failed(&xid, branch_id);
                self.abandon(AtFailure::Server(e)).await
            }
        }
    }

    /// The server's max_allowed_packet, when a packet of `bytes` might exceed it (read
    /// once per connection). None: unknown, the server decides. Packets under 64 KiB
    /// never ask: a server set below that closes the connection, and the branch is
    /// reported failed then.
    async fn packet_limit_for(&mut self, bytes: usize) -> Result<Option<u64>> {
        const NEVER_TOO_LARGE: usize = 64 << 10;
        if bytes < NEVER_TOO_LARGE {
            return Ok(None);
        }
        if self.max_allowed_packet.is_none()
            && let Ok(rows) = self.own_select("SELECT @@max_allowed_packet", &[]).await?
        {
            self.max_allowed_packet = rows
                .first()
                .and_then(|row| row.first())
                .and_then(|value| value.as_deref())
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map(u64::from_le_bytes);
        }
        Ok(self.max_allowed_packet)
    }

    /// Ends the local transaction after a failed COMMIT of a branch.
    async fn abandon<T>(&mut self, failure: AtFailure) -> Result<Outcome<T>> {
        self.roll_back_local_transaction().await?;
        Ok(Err(failure))
    }

    /// Rolls the local transaction back, and with it everything the branch holds.
    async fn roll_back_local_transaction(&mut self) -> Result<()> {
        self.at_branch = Branch::default();
        if let Ok(ok) = self.own().query(super::OWN_ROLLBACK).await? {
            self.exchange.on_authenticated(ok.status);
        }
        Ok(())
    }

    /// A registered branch whose local COMMIT failed: the lockserver shows it as
    /// PhaseOneFailed. In the background: the client's answer does not wait for it.
    fn report_phase_one_failed(&self, xid: &tandem_lockserver::client::Xid, branch_id: u64) {
        let lock = self.ctx.lock.clone();
        let xid = xid.clone();
        let span = self.binding.branch_span(&xid, branch_id);
        tokio::spawn(async move {
            if let Err(e) = lock.report(&xid, branch_id, false).await {
                tracing::debug!(parent: &span, error = %e, "phase-1 failure not reported");
            }
        });
    }

    /// SELECT … FOR UPDATE / LOCK IN SHARE MODE in a global transaction: the rows it
    /// locks must not be held by another unfinished global transaction. Waits up to the
    /// wait bound, then refuses; the statement itself then runs as sent.
    async fn at_locking_read(&mut self, read: &LockedRead, source: &Source<'_>) -> Result<Handled> {
        let Some(xid) = self.binding.xid().cloned() else {
            return Ok(Handled::Relay);
        };
        self.learn_lock_timeout_rule().await;
        let temporary = self.is_temporary(&read.table).await?;
        if matches!(temporary, Ok(true)) {
            // No other session sees its rows, so no global transaction can hold them.
            return Ok(Handled::Relay);
        }
        let table = match temporary.and(self.table_of(&read.table).await?) {
            Ok(table) => table,
            Err(failure) => {
                self.put_failure(&failure);
                return Ok(Handled::Answer);
            }
        };
        let capture = match table.meta.locked_keys(&Mysql, read) {
            Ok(capture) => capture,
            Err(e) => return self.refuse(e.into()),
        };
        let rows = match self.select(&capture, source).await? {
            Ok(rows) => rows,
            // The read would fail the same way (and after a deadlock, the transaction
            // is gone: running the read would start afresh in autocommit).
            Err(failure) => {
                self.put_failure(&failure);
                return Ok(Handled::Answer);
            }
        };
        let keys = match self.lock_keys(&table.meta, rows).await {
            Ok(keys) => keys,
            Err(e) => return self.refuse(e),
        };
        let wait = crate::at::read_lock_wait(read, self.ctx.lock_wait);
        let ends = self.waits_end_while_idle();
        match crate::at::wait_for_read_locks(&self.ctx.lock, &keys, &xid, wait, &ends).await {
            Ok(()) => Ok(Handled::Relay),
            Err(e) => self.refuse(e),
        }
    }

    /// The global lock keys of rows of `meta` (their key values as images read them),
    /// key parts a collation compares named by their weights (`weigh_keys`).
    pub(super) async fn lock_keys(
        &self,
        meta: &tandem_undo::TableMeta,
        mut keys: Vec<KeyValues>,
    ) -> Result<Vec<LockKey>> {
        weigh_keys(self.ctx.xa.pool(), &mut [(meta, keys.as_mut_slice())]).await?;
        let scope = self.ctx.xa.lock_scope();
        Ok(keys.iter().map(|key| lock_key(&scope, meta, key)).collect())
    }

    pub(super) fn put_failure(&mut self, failure: &AtFailure) {
        match failure {
            AtFailure::Refused(e) | AtFailure::Uncaptured(e) => {
                tracing::debug!(parent: self.binding.span(), error = %e, "AT statement failed");
                self.put_error(e);
            }
            AtFailure::Server(e) => {
                if self.exchange.server.may_end_transaction(e.code) {
                    // Asked before the session's next AT decision (reconcile_branch).
                    self.exchange.status_uncertain = true;
                }
                put_err(&mut self.to_client, 1, e.code, &e.sqlstate, &e.message);
                // tandem's statements after the failed one (a ROLLBACK, a savepoint's
                // release) set ROW_COUNT() anew: after a failed statement it is -1.
                self.row_count_after_write = Some(-1);
            }
        }
    }

    /// Learns, once per server, whether a lock wait timeout rolls back the whole
    /// transaction there: before a statement that may wait for a row lock, since the
    /// session's idea of being in a transaction (what decides whether tandem wraps a
    /// write) must follow such a rollback.
    async fn learn_lock_timeout_rule(&mut self) {
        if let Some(on) = self.ctx.xa.known_timeout_rolls_back_transaction() {
            self.exchange.server.timeout_ends_transaction = on;
            return;
        }
        match self.ctx.xa.timeout_rolls_back_transaction().await {
            Ok(on) => self.exchange.server.timeout_ends_transaction = on,
            // The metadata read over the same pool fails next and says why.
            Err(e) => {
                tracing::debug!(parent: self.binding.span(), error = %e, "innodb_rollback_on_timeout unread")
            }
        }
    }

    /// The client's COMMIT failed and tandem rolled the local transaction back: it is
    /// told so with ER_LOCK_DEADLOCK (40001), the code that means "your transaction is
    /// gone, run it again". A statement-level code such as 1205 would invite a second
    /// COMMIT, which would then commit an empty transaction and answer OK. When the
    /// global transaction is over, 1402 (XA_RBROLLBACK) says so instead: it was rolled
    /// back all the same.
    fn put_commit_failure(&mut self, failure: &AtFailure) {
        let cause = match failure {
            AtFailure::Refused(e) | AtFailure::Uncaptured(e) => e.mysql_message(),
            AtFailure::Server(e) => format!("{} ({})", e.message, e.code),
        };
        tracing::debug!(parent: self.binding.span(), %cause, "COMMIT of a branch failed");
        // Unless the global transaction is over: running it again would fail again
        // (until the session leaves it), and 1213 is what deadlock retries loop on.
        let code = match failure {
            AtFailure::Refused(Error::Lockserver(e)) if e.transaction_is_over() => {
                MyErr::XaRbRollback
            }
            // Past a limit: it would fail the same way again.
            AtFailure::Refused(Error::Lockserver(e)) if e.is_limit() => MyErr::LockTableFull,
            AtFailure::Server(e) if e.code == MyErr::TransactionTooLarge.code() => {
                MyErr::TransactionTooLarge
            }
            // The undo_log missing, or not of tandem's shape: running it again would
            // fail again. Rolled back all the same, and not a code retries loop on.
            AtFailure::Server(e) if UNDO_LOG_UNFIT.contains(&e.code) => MyErr::XaRbRollback,
            _ => MyErr::Deadlock,
        };
        put_err(
            &mut self.to_client,
            1,
            code.code(),
            code.sqlstate(),
            &format!("the transaction was rolled back at COMMIT: {cause}"),
        );
    }
}

/// What the server answers tandem's undo row INSERT when the database's undo_log is
/// missing or of another shape than `tandem migrate` makes: no such table (1146), no such
/// column (1054), no privilege (1142, 1143), a column without default (1364), too long
/// or truncated data (1406, 1265), NULL, a bad or out-of-range value (1048, 1366, 1264).
const UNDO_LOG_UNFIT: [u16; 10] = [1146, 1054, 1142, 1143, 1364, 1406, 1265, 1048, 1366, 1264];

/// An execute's parameter values (None: NULL) and their types (`type | flags << 8`).
pub(super) type ExecuteParameters = (Vec<Option<Vec<u8>>>, Vec<u16>);

/// The parameter values and types a COM_STMT_EXECUTE of `prepared` binds: its own
/// types, or those an earlier execute bound. None when neither bound any.
pub(super) fn execute_parameters(
    payload: &[u8],
    prepared: &super::control::Prepared,
) -> Result<Option<ExecuteParameters>> {
    use crate::wire::mysql::messages::statement::{execute_head, execute_values};
    let malformed = |_| Error::ExecuteArguments;
    let head = execute_head(payload, prepared.params).map_err(malformed)?;
    match head.new_types.or_else(|| prepared.types.clone()) {
        Some(types) => {
            let values = execute_values(payload, &types).map_err(malformed)?;
            Ok(Some((values, types)))
        }
        None if prepared.params > 0 => Ok(None),
        None => Ok(Some((Vec::new(), Vec::new()))),
    }
}

/// Client character sets whose characters' second byte may be an ASCII one: a
/// backslash there no longer escapes, nor a backtick quote, as tandem (reading the
/// statement as UTF-8) takes them to.
const ASCII_SECOND_BYTE_CHARSETS: [&[u8]; 5] = [b"big5", b"cp932", b"gbk", b"sjis", b"gb18030"];

/// Whether character set `name` is one of `ASCII_SECOND_BYTE_CHARSETS`.
fn hides_ascii(name: &[u8]) -> bool {
    ASCII_SECOND_BYTE_CHARSETS
        .iter()
        .any(|set| name.eq_ignore_ascii_case(set))
}

/// Whether `sql` has a non-ASCII byte right before a backslash or a backtick, which one
/// of [`ASCII_SECOND_BYTE_CHARSETS`] may read as one character with it.
fn may_swallow_a_quote(sql: &[u8]) -> bool {
    sql.windows(2)
        .any(|pair| !pair[0].is_ascii() && matches!(pair[1], b'\\' | b'`'))
}

/// How the server reads a statement's text beside tandem's tokenizer
/// (`Relay::text_reading`).
pub(super) enum TextReading {
    /// Token for token the same.
    Same,
    /// Every literal ends where tandem reads it end, but holds another value: the
    /// statement's tables are those tandem reads, its rows need not be.
    ValuesDiffer,
    /// A literal, a comment or a statement ends elsewhere (why, for a refusal): a
    /// statement tandem does not see may run.
    Otherwise(&'static str),
}

/// Whether a statement of the multi-statement `sql` may set sql_mode for those after
/// it (NO_BACKSLASH_ESCAPES, ANSI_QUOTES), where a backslash or a double quote then
/// ends a literal elsewhere than tandem, reading the text with the session's mode of
/// now, takes it to.
fn lexing_may_change_midway(sql: &[u8]) -> bool {
    // Only what follows the change may read otherwise.
    let Some(from) = tandem_undo::mysql::reading::quoting_sql_mode_set_at(sql) else {
        return false;
    };
    let after = &sql[from..];
    [(true, false), (false, true), (true, true)]
        .into_iter()
        .any(|(no_backslash_escapes, ansi_quotes)| {
            let quoting = Quoting {
                no_backslash_escapes,
                ansi_quotes,
                brackets: ansi_quotes,
            };
            quoted_reading(after, quoting) == QuotedReading::BoundariesDiffer
        })
        && holds_several_statements(&String::from_utf8_lossy(sql))
}

/// Whether `sql` may set the session's character set for statements (SET NAMES, SET
/// CHARACTER SET or CHARSET, character_set_client), ASCII case ignored.
pub(super) fn may_change_the_charset(sql: &[u8]) -> bool {
    [&b"names"[..], b"charset", b"character"]
        .iter()
        .any(|word| tandem_undo::contains_ignore_case(sql, word))
}

/// Whether `sql` holds more than one statement, by MySQL's tokens (a semicolon in a
/// literal separates none); text that does not tokenize may.
fn holds_several_statements(sql: &str) -> bool {
    tandem_undo::count_mysql_statements(sql).map_or(true, |count| count > 1)
}

/// A statement the session's character set reads otherwise than tandem does.
/// An execute of a write prepared under another current database than the session's.
pub(super) const PREPARED_ELSEWHERE: Error = Error::Unsupported {
    what: "executing a write prepared before the current database changed (USE), whose rows tandem must read (its unqualified tables are the old database's: prepare it again)",
};

const CHARSET_MISREAD: Error = Error::Unsupported {
    what: "a statement with a non-ASCII character before a backslash or a backtick from a session whose character_set_client is big5, cp932, gbk, sjis or gb18030 (the server may read them as one character, tandem reads the statement as UTF-8), in AT mode on MySQL",
};

/// tandem's parser reads `/*!…*/` always and `/*M!…*/` never; the server, by its
/// version: a write's before image could read other rows than it changes, and a read
/// could hold a write.
const EXECUTABLE_COMMENT: Error = Error::Unsupported {
    what: "a statement with an executable comment (/*! … */ or /*M! … */), in AT mode on MySQL",
};

/// The rows a write's before read found (none without a read). A read that failed
/// while the write ran leaves the write without its before image: its transaction must
/// go.
fn read_before(
    meta: &Arc<tandem_undo::TableMeta>,
    read: Option<std::result::Result<Vec<BinaryRow>, OwnError>>,
    write_ran: bool,
) -> Outcome<Vec<(Row, TextKey)>> {
    match read {
        Some(Ok(rows)) => Ok(keyed(meta, rows)),
        Some(Err(e)) if write_ran => Err(AtFailure::Uncaptured(Error::ImageUnread {
            table: meta.table.name.clone(),
            cause: format!("{} {}", e.code, e.message),
        })),
        Some(Err(e)) => Err(AtFailure::Server(e)),
        None => Ok(Vec::new()),
    }
}

pub(super) fn uncaptured(meta: &tandem_undo::TableMeta) -> AtFailure {
    AtFailure::Uncaptured(Error::Uncaptured {
        table: meta.table.name.clone(),
    })
}

/// Each image row with its key, as the branch names rows (the key's binary values in
/// hex), once per key: a multi-table write's before image repeats a row per match.
fn keyed(meta: &Arc<tandem_undo::TableMeta>, rows: Vec<BinaryRow>) -> Vec<(Row, TextKey)> {
    let mut out: Vec<(Row, TextKey)> = Vec::with_capacity(rows.len());
    for row in rows {
        let key: TextKey = meta
            .key_of(&row)
            .into_iter()
            .map(|v| v.map(|b| hex(&b)))
            .collect();
        if !out.iter().any(|(_, k)| *k == key) {
            out.push((row, key));
        }
    }
    out
}

/// The first column of the first row of one of tandem's one-value SELECTs.
fn first_value(rows: Vec<BinaryRow>) -> Option<Vec<u8>> {
    rows.into_iter().next()?.into_iter().next().flatten()
}

/// The first value of the first row as the BIGINT (UNSIGNED) the binary protocol sends.
fn first_u64(rows: Vec<BinaryRow>) -> Option<u64> {
    first_value(rows)
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_le_bytes)
}

/// Statements that never end a transaction implicitly, by their first word: what may
/// run while the branch holds uncommitted rows. Anything else tandem does not capture
/// (FLUSH, ANALYZE TABLE, SET PASSWORD, GRANT …) may commit.
fn harmless_in_transaction(sql: &str) -> bool {
    let (first, second) = super::control::first_two_words(sql.as_bytes());
    match first.as_slice() {
        b"SAVEPOINT" | b"RELEASE" | b"SHOW" | b"DESCRIBE" | b"DESC" | b"EXPLAIN" | b"HELP"
        | b"DO" | b"SELECT" | b"VALUES" | b"TABLE" | b"WITH" | b"USE" => true,
        b"ROLLBACK" => second == b"TO",
        // SET PASSWORD commits; SET TRANSACTION inside a transaction fails anyway;
        // SET STATEMENT … FOR runs the statement after FOR.
        b"SET" => !matches!(
            second.as_slice(),
            b"PASSWORD" | b"TRANSACTION" | b"GLOBAL" | b"STATEMENT"
        ),
        _ => false,
    }
}

/// Whether a statement analysed as a commit is COMMIT itself (not `SET autocommit = 1`).
fn is_commit(sql: &str) -> bool {
    crate::control::leading_words(sql.as_bytes(), true)
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(b"COMMIT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_non_ascii_byte_before_a_backslash_or_backtick_may_be_misread() {
        assert!(may_swallow_a_quote("SET s = '中\\'".as_bytes()));
        assert!(may_swallow_a_quote("SELECT `用户` FROM t".as_bytes()));
        assert!(!may_swallow_a_quote("SET s = '中', t = 'a\\'".as_bytes()));
        assert!(!may_swallow_a_quote(b"SET s = 'a\\', t = `b`"));
        assert!(may_change_the_charset(b"set Names gbk; SELECT 1"));
        assert!(may_change_the_charset(b"SET @@character_set_client = sjis"));
        assert!(!may_change_the_charset(b"UPDATE t SET v = 1"));
        assert!(holds_several_statements("SET NAMES gbk; SELECT 1"));
        assert!(!holds_several_statements("UPDATE `名` SET names = 1;  "));
        assert!(!holds_several_statements("UPDATE `名` SET names = 'a;b'"));
    }

    #[test]
    fn keys_round_trip_through_hex_and_commit_is_told_from_set_autocommit() {
        assert_eq!(
            unhex(Some(&hex(&[0, 0xff, 0x10]))),
            Some(vec![0, 0xff, 0x10])
        );
        assert_eq!(unhex(None), None);
        assert!(is_commit("/* c */ commit work"));
        assert!(!is_commit("SET autocommit = 1"));
    }
}
