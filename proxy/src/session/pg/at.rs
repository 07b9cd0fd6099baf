//! AT mode in a PostgreSQL session (simple query protocol): before images ahead of each
//! write, the write's own keys from an appended RETURNING, and at the local COMMIT the
//! after images, the branch registration with its lock keys, and the undo_log row in
//! the same local transaction.
//!
//! Owns the per-statement reply rewriting (the appended key columns never reach the
//! client) and the implicit transaction around an autocommit write. Invariant: no write
//! of a bound session reaches the backend without its before image taken, and no local
//! COMMIT of a branch reaches it before the lockserver granted the branch's locks and
//! the undo row is written.

use super::Relay;
use super::exchange::Param;
use super::follow_up::FollowUp;
use super::intercept::Intercepted;
use crate::at::branch::{Branch, TextKey};
use crate::at::phase2::LOG_NORMAL;
use crate::error::{Error, Result};
use crate::wire::pg::codes::backend;
use crate::wire::pg::messages::response::{
    Severity, TxStatus, put_command_complete, put_error, put_ready_for_query,
};
use crate::wire::pg::messages::simple::put_query;
use crate::wire::pg::messages::write::put_empty;
use crate::wire::pg::reader::Reader;
use bytes::{BufMut, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;
use tandem_lockserver::client::BranchKind;
use tandem_undo::{Analysis, Dialect, Postgres, TableMeta, Write, WriteKind, analyze};

/// What a table name resolves to in the session that runs it: `to_regclass` follows
/// the session's search_path (temporary schema first) and role.
/// The settings ParameterStatus reports that change how the server prints a key
/// (a date, timestamp with time zone, interval or text one), and so which rows a
/// printed key names when it is read back.
pub(super) const KEY_SETTINGS: &[&str] =
    &["DateStyle", "TimeZone", "IntervalStyle", "client_encoding"];

const RESOLVE_TABLE: &str = "SELECT n.nspname, c.relname, c.oid FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.oid = pg_catalog.to_regclass($1)";

/// The write whose replies are in flight, and what to do with them.
/// What to do with the RowDescription that comes back for a write in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RowDescriptionRule {
    /// Simple protocol, no RETURNING of the client's: it is tandem's alone.
    Swallow,
    /// The client's columns, then tandem's key columns: drop the latter.
    Strip,
    /// The description of the client's own statement (Describe of a statement).
    Relay,
    /// Describe of the portal of a write without RETURNING: the client expects NoData.
    ToNoData,
}

/// The built-in functions that write large objects (pg_largeobject, which no image
/// captures): the catalog's list of functions that may write leaves pg_catalog out.
const LARGE_OBJECT_WRITES: [&str; 9] = [
    "lo_put",
    "lo_from_bytea",
    "lowrite",
    "lo_unlink",
    "lo_truncate",
    "lo_truncate64",
    "lo_creat",
    "lo_create",
    "lo_import",
];

pub(super) struct WriteInFlight {
    pub(super) meta: Arc<TableMeta>,
    row_description: RowDescriptionRule,
    /// Replies to tandem's own messages at the head of the batch, swallowed in order.
    pub(super) swallow: VecDeque<u8>,
    kind: WriteKind,
    /// Columns appended to the statement's RETURNING: the image, the key, the flag.
    appended: usize,
    client_returning: bool,
    /// Of the client's RETURNING rows, how many more its Execute's row limit lets
    /// through (None: no limit). tandem's own Execute asks for every row: it needs
    /// each one's key. At Some(0) the limit was reached.
    rows_left_for_client: Option<u32>,
    /// The portal the client's Execute named, and the rows past its limit, held for
    /// its later Executes (held_rows.rs).
    portal: Vec<u8>,
    held_for_client: VecDeque<BytesMut>,
    keys: Vec<TextKey>,
    /// The statement returns each row's after image first among tandem's columns.
    image: bool,
    /// Per returned row, its after image (None: it could not be read).
    pub(super) images: Vec<Option<tandem_undo::Row>>,
    /// An upsert: each returned row also says whether it was inserted.
    upsert: bool,
    inserted: Vec<bool>,
    /// tandem opened the local transaction (an autocommit write) and ends it.
    pub(super) implicit: bool,
    pub(super) failed: bool,
    /// A write outside a global transaction, checked against global locks (guard.rs):
    /// nothing is captured; the rows it returned are checked again before it may stay.
    pub(super) guard_only: bool,
    /// A row came back from another table than the metadata describes: the name
    /// resolved differently where the write ran.
    pub(super) table_changed: bool,
    /// A plain INSERT outside a global transaction: the keys its VALUES gave, checked
    /// again when it is over (it returns no rows of tandem's).
    pub(super) inserted_keys: Vec<tandem_lockserver::client::LockKey>,
}

impl WriteInFlight {
    /// The write of `write`, sent as `TableMeta::with_returning_key` rewrote it.
    pub(super) fn new(
        meta: Arc<TableMeta>,
        write: &Write,
        implicit: bool,
        row_description: RowDescriptionRule,
        swallow: VecDeque<u8>,
    ) -> Self {
        let upsert = write.upsert.is_some();
        let image = TableMeta::returns_image(&Postgres);
        WriteInFlight {
            appended: appended_columns(&meta, write),
            upsert,
            inserted: Vec::new(),
            meta,
            row_description,
            swallow,
            kind: write.kind,
            client_returning: write.has_returning,
            rows_left_for_client: None,
            portal: Vec::new(),
            held_for_client: VecDeque::new(),
            keys: Vec::new(),
            image,
            images: Vec::new(),
            implicit,
            failed: false,
            guard_only: false,
            table_changed: false,
            inserted_keys: Vec::new(),
        }
    }

    /// The client's Execute of `portal` asked for at most `max_rows` rows (0: all).
    pub(super) fn pass_on_at_most(&mut self, portal: &[u8], max_rows: u32) {
        self.rows_left_for_client = (max_rows != 0).then_some(max_rows);
        self.portal = portal.to_vec();
    }

    /// An autocommit write outside a global transaction that tandem runs in its own
    /// transaction (see guard.rs): replies pass unchanged, the end commits.
    pub(super) fn guarded() -> Self {
        WriteInFlight {
            appended: 0,
            upsert: false,
            inserted: Vec::new(),
            meta: Arc::new(TableMeta::default()),
            row_description: RowDescriptionRule::Relay,
            swallow: VecDeque::new(),
            kind: WriteKind::Update,
            client_returning: true,
            rows_left_for_client: None,
            portal: Vec::new(),
            held_for_client: VecDeque::new(),
            keys: Vec::new(),
            image: false,
            images: Vec::new(),
            implicit: true,
            failed: false,
            guard_only: true,
            table_changed: false,
            inserted_keys: Vec::new(),
        }
    }

    /// A plain INSERT outside a global transaction, sent as the client sent it, with
    /// the keys `inserted_keys` gave (see guard.rs).
    pub(super) fn inserted(
        meta: Arc<TableMeta>,
        implicit: bool,
        inserted_keys: Vec<tandem_lockserver::client::LockKey>,
    ) -> Self {
        WriteInFlight {
            meta,
            implicit,
            inserted_keys,
            ..Self::guarded()
        }
    }

    /// A write outside a global transaction sent with `record_send` of each row it
    /// changes appended to its RETURNING (guard.rs checks those rows' keys): over the
    /// simple protocol (`extended`: None), or as `put_rewritten_batch` sent it.
    pub(super) fn checked(
        meta: Arc<TableMeta>,
        write: &Write,
        implicit: bool,
        extended: Option<RowDescriptionRule>,
    ) -> Self {
        let (row_description, swallow) = match extended {
            Some(rule) => (
                rule,
                VecDeque::from([backend::CLOSE_COMPLETE, backend::PARSE_COMPLETE]),
            ),
            None if write.has_returning => (RowDescriptionRule::Strip, VecDeque::new()),
            None => (RowDescriptionRule::Swallow, VecDeque::new()),
        };
        WriteInFlight {
            swallow,
            appended: 1,
            image: true,
            client_returning: write.has_returning,
            kind: write.kind,
            row_description,
            implicit,
            meta,
            ..Self::guarded()
        }
    }
}

impl Relay<'_> {
    /// A simple Query of a bound session: capture, refuse, or relay.
    pub(super) async fn intercept_at(&mut self, sql_bytes: &[u8]) -> Result<Intercepted> {
        let sql = String::from_utf8_lossy(sql_bytes).into_owned();
        let analyses = match analyze(&Postgres, &sql) {
            Ok(a) => a,
            Err(e @ tandem_undo::Error::Parse { .. }) => {
                return self.refuse_unparsed(&sql, e).await;
            }
            Err(e) => return Ok(self.refuse(Error::Undo(e))),
        };
        let ends_failed_block = matches!(
            analyses.first(),
            Some(
                Analysis::Commit
                    | Analysis::Rollback
                    | Analysis::Savepoint(tandem_undo::SavepointOp::RollbackTo(_))
            )
        );
        if self.phase == super::Phase::Ready(TxStatus::Failed) && !ends_failed_block {
            // In a failed block the backend refuses this (25P02), and the rest of the
            // Query with it: nothing runs, so nothing is captured, and nothing of
            // tandem's is sent into the block. Only at a sync point: a ROLLBACK TO
            // SAVEPOINT still in flight may revive the block.
            return Ok(Intercepted::Relay);
        }
        if let Some(e) = self.refusal_before_analysis(&sql).await {
            return Ok(self.refuse(e));
        }
        if analyses.len() > 1 {
            // Savepoints among them run one at a time too: the branch follows each only
            // once the one before it ran (a failure stops the rest).
            if analyses
                .iter()
                .any(|a| !matches!(a, Analysis::Read | Analysis::Other))
            {
                return self.start_script(&sql, analyses).await;
            }
        }
        match analyses.into_iter().next() {
            Some(Analysis::Write(write)) => {
                if !self.phase.at_sync_point() {
                    return Ok(Intercepted::WaitForSyncPoint);
                }
                self.begin_write(&sql, write).await
            }
            Some(Analysis::Commit) if !self.branch.is_empty() => {
                if !self.phase.at_sync_point() {
                    return Ok(Intercepted::WaitForSyncPoint);
                }
                if self.phase.tx_status() == Some(TxStatus::Failed) {
                    // PostgreSQL answers COMMIT of a failed transaction with ROLLBACK:
                    // nothing of the branch survives, so there is nothing to register.
                    self.branch = Branch::default();
                    return Ok(Intercepted::Relay);
                }
                if chains(&sql) {
                    // COMMIT AND CHAIN opens the next transaction: the backend must run it.
                    // Relayed as the extended protocol's COMMIT is, so that a failure
                    // reaches the lockserver as PhaseOneFailed.
                    return match self.prepare_commit().await {
                        Ok(undo) => match self.write_undo_row(&undo).await {
                            Ok(()) => {
                                self.commit_in_flight = undo.map(|undo| (undo, false));
                                Ok(Intercepted::Relay)
                            }
                            Err(e) => {
                                self.report_phase_one_failed(undo.as_ref());
                                self.roll_back_local().await?;
                                Ok(self.refuse(e))
                            }
                        },
                        Err(e) => {
                            self.roll_back_local().await?;
                            Ok(self.refuse(rolled_back_at_commit(e)))
                        }
                    };
                }
                // The undo row and the COMMIT go in one round trip; tandem answers.
                let failed = self.commit_branch().await?;
                let mut out = BytesMut::new();
                match failed {
                    None => put_command_complete(&mut out, "COMMIT"),
                    Some((code, message)) => put_error(&mut out, Severity::Error, &code, &message),
                }
                put_ready_for_query(&mut out, TxStatus::Idle);
                self.phase = super::Phase::Ready(TxStatus::Idle);
                self.binding.on_local_transaction_end();
                self.forget_resolutions_of_ended_transaction();
                Ok(Intercepted::Answer(out))
            }
            Some(Analysis::LockingRead(Some(read))) => {
                if !self.phase.at_sync_point() {
                    return Ok(Intercepted::WaitForSyncPoint);
                }
                match self.check_read_locks(&read, &[]).await {
                    Ok(()) => Ok(Intercepted::Relay),
                    Err(e) => Ok(self.refuse_or_answer(e)),
                }
            }
            Some(Analysis::LockingRead(None)) => Ok(self.refuse(Error::Unsupported {
                what: "SELECT … FOR UPDATE over a join or a derived table inside a global transaction (lock the rows of one table, choosing them with a subquery: WHERE id IN (SELECT …))",
            })),
            Some(Analysis::Other) => {
                self.branch.forget_all_after();
                Ok(Intercepted::Relay)
            }
            // Followed once it ran, at its CommandComplete (follow_up.rs): behind
            // extended messages with no Sync, an error among them makes the backend skip
            // it, and statements bound ahead of it are followed first.
            Some(Analysis::Savepoint(op)) => match self.check_savepoint_statement(&op) {
                Ok(()) => {
                    self.next_follow_up = Some(FollowUp::Savepoint(op));
                    Ok(Intercepted::Relay)
                }
                // In a failed block (where only ROLLBACK TO runs) tandem answers.
                Err(e) => Ok(self.refuse_or_answer(e)),
            },
            Some(Analysis::Rollback) if chains(&sql) => {
                self.next_follow_up = Some(FollowUp::RolledBack);
                Ok(Intercepted::Relay)
            }
            _ => Ok(Intercepted::Relay),
        }
    }

    /// A savepoint statement about to run in the branch's transaction: the branch
    /// follows it as the server will run it. In a failed block SAVEPOINT and RELEASE
    /// fail, so they change nothing; ROLLBACK TO runs there too. A ROLLBACK TO a
    /// savepoint the branch never saw set (a name it read otherwise than the server,
    /// or one set before a hint bound the session) cannot say which captured rows it
    /// undoes: refused while the branch holds any, rather than dropping rows that stay
    /// changed, or keeping images of rows that do not.
    pub(super) fn on_savepoint_statement(&mut self, op: &tandem_undo::SavepointOp) -> Result<()> {
        use tandem_undo::SavepointOp;
        self.check_savepoint_statement(op)?;
        match op {
            SavepointOp::Set(_) | SavepointOp::Release(_)
                if self.phase.tx_status() == Some(TxStatus::Failed) => {}
            _ => self.branch.on_savepoint(op, true),
        }
        Ok(())
    }

    /// Refuses a savepoint statement the branch could not follow (see
    /// [`Self::on_savepoint_statement`]).
    pub(super) fn check_savepoint_statement(&self, op: &tandem_undo::SavepointOp) -> Result<()> {
        match op {
            tandem_undo::SavepointOp::RollbackTo(name)
                if !self.branch.is_empty()
                    && !self.branch.has_savepoint(name)
                    && !self.tracked.savepoint_set_in_flight(name) =>
            {
                Err(Error::Unsupported {
                    what: "ROLLBACK TO a savepoint tandem did not see set, while the branch holds captured rows (ROLLBACK the transaction instead)",
                })
            }
            _ => Ok(()),
        }
    }

    /// A statement bound over the extended protocol completed with CommandComplete
    /// `tag` (follow_up.rs).
    pub(super) fn follow_bound_statement(&mut self, follow_up: FollowUp, tag: &[u8]) {
        if !follow_up.completes_with(tag) {
            tracing::warn!(parent: self.binding.span(), ?follow_up, tag = %String::from_utf8_lossy(tag), "a bound statement completed with another statement's tag: not followed");
            return;
        }
        tracing::debug!(parent: self.binding.span(), ?follow_up, "bound statement ran");
        match follow_up {
            FollowUp::Savepoint(op) => self.branch.on_savepoint(&op, true),
            // The transaction's writes are undone; with AND CHAIN the next one begins
            // at once, with no idle ReadyForQuery to end the branch.
            FollowUp::RolledBack => self.branch = Branch::default(),
            FollowUp::XaRolledBack => self.xa = super::xa::XaBranch::None,
        }
    }

    /// The transaction block failed, and nothing sent since its ReadyForQuery may have
    /// revived it (only Parse, Bind and the like, no Execute): a statement sent now
    /// meets it failed.
    pub(super) fn block_stays_failed(&self) -> bool {
        let failed_at_last_ready = matches!(
            self.phase,
            super::Phase::Ready(TxStatus::Failed)
                | super::Phase::Busy {
                    tx: TxStatus::Failed,
                    awaiting: 0,
                    ..
                }
        );
        failed_at_last_ready && !self.executed_in_batch
    }

    /// A Query tandem cannot parse (`e`): the server judges it first, without running
    /// it. What it rejects fails as it would directly: a syntax error (42601, at its
    /// position), an unknown table, 25P02 in a failed block. What it accepts is refused.
    async fn refuse_unparsed(&mut self, sql: &str, e: tandem_undo::Error) -> Result<Intercepted> {
        if !self.phase.at_sync_point() {
            return Ok(Intercepted::WaitForSyncPoint);
        }
        let Some((response, status)) = self.server_rejects(sql).await? else {
            return Ok(self.refuse(Error::Undo(e)));
        };
        tracing::debug!(parent: self.binding.span(), error = %e, "statement tandem cannot parse, rejected by the server");
        self.phase = super::Phase::Ready(status);
        let mut out = BytesMut::from(&response[..]);
        self.put_batch_end(&mut out, status).await?;
        Ok(Intercepted::Answer(out))
    }

    pub(super) fn refuse(&self, e: Error) -> Intercepted {
        Intercepted::Replace(self.refusal_query(e))
    }

    /// As [`Self::refuse`], but where the block has failed already (no statement runs
    /// there), tandem answers `e` itself.
    pub(super) fn refuse_or_answer(&self, e: Error) -> Intercepted {
        if self.phase.tx_status() != Some(TxStatus::Failed) {
            return self.refuse(e);
        }
        tracing::debug!(parent: self.binding.span(), error = %e, "statement refused in a failed block");
        let mut out = BytesMut::new();
        super::control_extended::put_refusal(&mut out, &e, TxStatus::Failed);
        Intercepted::Answer(out)
    }

    /// The Query that fails on the backend as `e`, sent in place of a refused one.
    pub(super) fn refusal_query(&self, e: Error) -> BytesMut {
        tracing::debug!(parent: self.binding.span(), error = %e, "statement refused in a global transaction");
        let mut replacement = BytesMut::new();
        put_query(
            &mut replacement,
            &super::intercept::error_sql(e.sqlstate().code(), &e.to_string()),
        );
        replacement
    }

    /// A setting as ParameterStatus last reported it ("" if never).
    pub(super) fn server_param(&self, name: &str) -> &str {
        self.server_params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }

    /// The session settings under which the server prints a key's text, as
    /// ParameterStatus last reported them.
    fn key_settings(&self) -> Vec<(String, String)> {
        KEY_SETTINGS
            .iter()
            .map(|name| ((*name).to_owned(), self.server_param(name).to_owned()))
            .collect()
    }

    /// Whether the session's client_encoding has multibyte characters whose later
    /// bytes may be ASCII's (a quote, a backslash).
    fn encoding_hides_ascii(&self) -> bool {
        const ASCII_TRAILING: [&str; 7] = [
            "SJIS",
            "SHIFT_JIS_2004",
            "BIG5",
            "GBK",
            "UHC",
            "GB18030",
            "JOHAB",
        ];
        let client = self.server_param("client_encoding");
        ASCII_TRAILING
            .iter()
            .any(|name| client.eq_ignore_ascii_case(name))
    }

    /// Whether the session's text and values come as UTF8: its client_encoding is
    /// UTF8, or SQL_ASCII (no conversion) on a UTF8 database.
    pub(super) fn reads_utf8(&self) -> bool {
        let utf8 = |e: &str| e.eq_ignore_ascii_case("UTF8") || e.eq_ignore_ascii_case("UNICODE");
        let client = self.server_param("client_encoding");
        utf8(client)
            || (client.eq_ignore_ascii_case("SQL_ASCII")
                && utf8(self.server_param("server_encoding")))
    }

    /// Refuses a write whose images or keys the session would print so that tandem's
    /// phase 2 reads them otherwise:
    /// - images are the row's binary form in the session's client_encoding, and phase 2
    ///   replays them over a UTF8 connection: other encodings would write other text;
    /// - keys of real, double precision or money (or a type built on one) print
    ///   inexactly under some extra_float_digits or lc_monetary, which
    ///   ParameterStatus does not report;
    /// - the branch's keys, printed under the settings of its first write, are bound
    ///   back at its COMMIT: a later write under other ones would name other rows.
    ///
    /// Notes the settings at a branch's first write.
    pub(super) fn check_session_for_images(&mut self, meta: &TableMeta) -> Result<()> {
        if !self.reads_utf8() {
            return Err(Error::Unsupported {
                what: "a write in a global transaction from a session whose client_encoding is not UTF8 (tandem's images are read in it, and phase 2 replays them as UTF8)",
            });
        }
        if meta.inexact_key {
            return Err(Error::Unsupported {
                what: "a write to a table whose primary key is real, double precision or money, or a type built on one (their keys do not print exactly under every extra_float_digits or lc_monetary)",
            });
        }
        let settings = self.key_settings();
        if self.branch.is_empty() {
            self.branch_settings = settings;
        } else if settings != self.branch_settings {
            return Err(Error::Unsupported {
                what: "a write after the session changed DateStyle, TimeZone, IntervalStyle or client_encoding since its branch's first write (tandem names the branch's rows by their keys as the server printed them then)",
            });
        }
        Ok(())
    }

    /// A function `sql` calls that may write (`at::meta::WRITING_FUNCTIONS`): tandem
    /// would capture none of its writes. A statement with no parenthesis (COMMIT, say)
    /// asks nothing, and one is only tokenized when the database has such functions;
    /// the list is read at most every few seconds, and one that cannot be read (never
    /// read before) names the failure instead.
    pub(super) async fn writing_function_in(&mut self, sql: &str) -> Result<Option<String>> {
        if !sql.contains('(') {
            return Ok(None);
        }
        let names = self
            .ctx
            .writing_functions
            .get(&self.ctx.side, &self.database)
            .await?;
        let writes_large_objects = crate::control::contains_ignore_case(sql.as_bytes(), b"lo_")
            || crate::control::contains_ignore_case(sql.as_bytes(), b"lowrite");
        if names.is_empty() && !writes_large_objects {
            return Ok(None);
        }
        Ok(tandem_undo::called_functions(&Postgres, sql)
            .into_iter()
            .find(|name| names.contains(name) || LARGE_OBJECT_WRITES.contains(&name.as_str())))
    }

    /// Refuses a bound session's statement whose text tandem's parser would read
    /// otherwise than the server, where a COMMIT or a write could hide in what tandem
    /// takes for a literal:
    /// - with standard_conforming_strings off, `\'` inside '…' escapes the quote. Text
    ///   without a backslash reads the same either way; with one, the setting the
    ///   server parsed it under must be known (callers check at a sync point). A
    ///   statement prepared while it was off may be bound once it is on again, so a
    ///   session that ever reported it off is not trusted (`escapes_seen`, which the
    ///   setting's being off now implies);
    /// - a dollar-quote tag may hold any non-ASCII character for the server, only
    ///   letters and digits for tandem's parser (`$€$ … $€$`);
    /// - the server reads text converted from the client_encoding, where a later
    ///   byte of a multibyte character (SJIS's, GBK's, BIG5's) may be a quote or a
    ///   backslash to tandem, which reads the bytes as they came (ASCII text reads
    ///   the same in every encoding, and so does any text in the others);
    /// - tandem's tokenizer reads an operator on through `--` or `/*`, where the
    ///   server ends it and reads a comment (`SELECT 2 #-- '…`).
    pub(super) fn text_misread(&self, sql: &[u8]) -> Option<Error> {
        if sql.contains(&b'\\') && self.escapes_seen {
            return Some(Error::Unsupported {
                what: "a statement with a backslash in its text inside a global transaction from a session that turned standard_conforming_strings off (tandem reads string literals as the SQL standard does)",
            });
        }
        if !sql.is_ascii() && self.encoding_hides_ascii() {
            return Some(Error::Unsupported {
                what: "a statement with a character other than ASCII's from a session whose client_encoding (SJIS, BIG5, GBK, UHC, GB18030, JOHAB) lets a quote or a backslash end a character (tandem reads the bytes as they came, the server converted)",
            });
        }
        if tandem_undo::operator_swallows_comment(&String::from_utf8_lossy(sql)) {
            return Some(Error::Unsupported {
                what: "an operator written against `--` or `/*` (the server ends the operator there and reads a comment; tandem's parser reads the operator on): put a space between them",
            });
        }
        dollar_tag_misread(sql).then_some(Error::Unsupported {
            what: "a dollar-quote tag with a character other than a letter, a digit or _ inside a global transaction",
        })
    }

    /// Why AT mode refuses `sql` whatever it is, over either protocol:
    /// - it calls a function that may write (`writing_function_in`), or the database's
    ///   list of them cannot be read;
    /// - it names `bytea_output` while the branch holds rows: the server prints a bytea
    ///   key by it, and does not report it (ParameterStatus), so the rows the branch
    ///   names by their printed keys would be named anew (one row twice).
    pub(super) async fn refusal_before_analysis(&mut self, sql: &str) -> Option<Error> {
        match self.writing_function_in(sql).await {
            Ok(None) => {}
            Ok(Some(function)) => {
                return Some(Error::Undo(tandem_undo::Error::Unsupported {
                    what: format!(
                        "a call of function {function}, which may write (VOLATILE, in SQL or a procedural language; tandem captures no write a function makes: declare it STABLE if it only reads),"
                    ),
                }));
            }
            Err(e) => return Some(e),
        }
        let names_bytea_output =
            crate::control::contains_ignore_case(sql.as_bytes(), b"bytea_output");
        (names_bytea_output && !self.branch.is_empty()).then_some(Error::Unsupported {
            what: "a statement naming bytea_output while the branch holds rows (tandem names them by their keys as printed under the setting of their first write)",
        })
    }

    /// The catalog's description of `table` as this session names it. An unqualified
    /// name is resolved on the client's own connection, under its search_path and
    /// role: the side connection that reads the catalog may see another table by that
    /// name, and the undo images would then be replayed into it.
    pub(super) async fn table_meta(
        &mut self,
        table: &tandem_undo::TableRef,
    ) -> Result<Arc<TableMeta>> {
        let name = Postgres.qualified(table);
        let cached = self.resolved_tables.contains_key(&name);
        let got = self.table_meta_once(table).await;
        // A remembered resolution may name a table gone since (a temporary table
        // dropped at COMMIT, a table dropped by another session): before the write is
        // refused for it, the name is resolved afresh.
        let doubtful = got.as_ref().map_or(true, |meta| is_temporary(&meta.table));
        if cached && doubtful && self.phase.at_sync_point() {
            self.resolved_tables.remove(&name);
            return self.table_meta_once(table).await;
        }
        got
    }

    /// Whether only the session's own connection can say which table `table` means
    /// (see `resolves_here`).
    pub(super) fn resolves_in_session(&self, table: &tandem_undo::TableRef) -> bool {
        resolves_here(table)
    }

    async fn table_meta_once(&mut self, table: &tandem_undo::TableRef) -> Result<Arc<TableMeta>> {
        let resolve_here = resolves_here(table);
        let name = Postgres.qualified(table);
        let (qualified, oid) = match (resolve_here, self.resolved_tables.get(&name)) {
            (false, _) => (table.clone(), None),
            (true, Some((qualified, oid))) => (qualified.clone(), Some(*oid)),
            // Between sync points nothing can be asked of the backend. Only a write
            // outside a global transaction gets here (guard.rs): the side connection's
            // view decides whether it needs a check, which then waits for the sync
            // point and resolves the name there.
            (true, None) if !self.phase.at_sync_point() => (table.clone(), None),
            (true, None) => {
                let (qualified, oid) = self.resolve_table(table).await?;
                self.resolved_tables.insert(name, (qualified.clone(), oid));
                (qualified, Some(oid))
            }
        };
        let meta = self
            .ctx
            .meta
            .get(&self.ctx.side, &self.database, &qualified)
            .await?;
        if oid.is_some_and(|oid| oid != meta.oid) {
            // The table was dropped and created again since the cache read it.
            self.ctx.meta.forget(&self.database, &qualified);
            let meta = self
                .ctx
                .meta
                .get(&self.ctx.side, &self.database, &qualified)
                .await?;
            if oid != Some(meta.oid) {
                // The remembered resolution is the stale one: asked again next time
                // (the write's own OID check stands guard meanwhile).
                self.resolved_tables.remove(&Postgres.qualified(table));
            }
            return Ok(meta);
        }
        Ok(meta)
    }

    /// The schema-qualified name and OID an unqualified name has in this session.
    async fn resolve_table(
        &mut self,
        table: &tandem_undo::TableRef,
    ) -> Result<(tandem_undo::TableRef, u32)> {
        let name = Postgres.qualified(table);
        let got = self
            .exchange(
                RESOLVE_TABLE,
                &[Param {
                    type_oid: 0,
                    value: Some(name.as_bytes()),
                    text: true,
                }],
                &[],
            )
            .await?;
        if let Some(e) = got.error {
            return Err(Error::injected(&e.code, e.message));
        }
        match got.rows.first().map(|row| row.as_slice()) {
            Some([Some(schema), Some(relname), Some(oid)]) => {
                let oid = std::str::from_utf8(oid)
                    .ok()
                    .and_then(|o| o.parse().ok())
                    .ok_or(Error::UpstreamProtocol("bad OID from the table resolution"))?;
                Ok((
                    tandem_undo::TableRef {
                        schema: Some(String::from_utf8_lossy(schema).into_owned()),
                        name: String::from_utf8_lossy(relname).into_owned(),
                    },
                    oid,
                ))
            }
            _ => Err(Error::UnknownTable { table: name }),
        }
    }

    /// The metadata of a table a global transaction writes: a temporary table is
    /// refused, since its rows can be undone only by the session that owns them.
    pub(super) async fn captured_table_meta(
        &mut self,
        table: &tandem_undo::TableRef,
    ) -> Result<Arc<TableMeta>> {
        let meta = self.table_meta(table).await?;
        if is_temporary(&meta.table) {
            return Err(Error::Unsupported {
                what: "a write to a temporary table inside a global transaction (no other connection can undo its rows)",
            });
        }
        Ok(meta)
    }

    /// The local transaction ended (every path that reaches Idle comes here through
    /// `binding.on_local_transaction_end`'s callers): what a SET LOCAL changed is over.
    pub(super) fn forget_resolutions_of_ended_transaction(&mut self) {
        if std::mem::take(&mut self.resolutions_end_with_transaction) {
            self.forget_resolved_tables();
        }
    }

    /// A statement that calls `set_config` may change the search_path as SET does, with
    /// no SET tag to show for it: names are resolved again at the next write (one
    /// `set_config(…, true)` sets lasts until the transaction ends). A call inside a
    /// function goes unseen: a global transaction's write still catches it by its
    /// table's OID, a write outside one does not.
    pub(super) fn note_set_config(&mut self, sql: &[u8]) {
        if crate::control::contains_ignore_case(sql, b"set_config") {
            self.forget_resolved_tables();
            self.resolutions_end_with_transaction = true;
        }
    }

    /// The client may have changed its search_path or role, or what a name resolves
    /// to: its names are resolved again at their next write.
    pub(super) fn forget_resolved_tables(&mut self) {
        self.resolved_tables.clear();
    }

    pub(super) async fn begin_write(&mut self, sql: &str, write: Write) -> Result<Intercepted> {
        let meta = match self.captured_table_meta(&write.table).await {
            Ok(meta) => meta,
            Err(e) => return Ok(self.refuse(e)),
        };
        if let Err(e) = meta.check_capturable(&Postgres, &write) {
            return Ok(self.refuse(Error::Undo(e)));
        }
        if let Err(e) = self.check_session_for_images(&meta) {
            return Ok(self.refuse(e));
        }
        let implicit = self.phase.tx_status() == Some(TxStatus::Idle);
        let before = match before_image_query(&meta, &write) {
            Ok(before) => before,
            Err(e) => return Ok(self.refuse(Error::Undo(e))),
        };
        let rewritten = with_returning_key_and_table(&meta, sql, &write);
        // BEGIN (for an autocommit write), the before image and the write itself go in
        // one round trip and one Sync: the image is read before the write's replies,
        // which follow it, and the backend flushes once. With tandem's statements ahead,
        // the write goes as Parse/Bind/Describe/Execute (the same replies as its Query,
        // once ParseComplete and BindComplete are swallowed), so that an error in the
        // image skips the write and is the reply the client gets.
        let formats = image_formats(&meta);
        let mut statements: Vec<(&str, &[Param<'_>], &[i16])> = Vec::with_capacity(2);
        if implicit {
            statements.push(("BEGIN", &[], &[]));
        }
        if let Some(before) = &before {
            statements.push((before.as_str(), &[], &formats));
        }
        let mut swallow = VecDeque::new();
        if statements.is_empty() {
            let mut query = BytesMut::new();
            put_query(&mut query, &rewritten);
            self.write_server(&query).await?;
        } else {
            let mut then = BytesMut::new();
            super::exchange::put_as_extended(&mut then, &rewritten);
            self.tracked.tandem_parsed_unnamed();
            swallow.extend([backend::PARSE_COMPLETE, backend::BIND_COMPLETE]);
            let mut results = self.exchange_many_then(&statements, &then).await?;
            if let Some(e) = results.iter().find_map(|r| r.error.as_ref()) {
                tracing::debug!(parent: self.binding.span(), error = %e.message, "before image failed");
            } else if before.is_some()
                && let Some(got) = results.pop()
            {
                let rows = split_rows(got.rows, meta.columns.len());
                self.branch.record_before(&meta, rows);
            }
        }
        let rule = if write.has_returning {
            RowDescriptionRule::Strip
        } else {
            RowDescriptionRule::Swallow
        };
        self.write_in_flight = Some(WriteInFlight::new(meta, &write, implicit, rule, swallow));
        Ok(Intercepted::SentAndHold)
    }

    /// RowDescription of the write in flight: the appended key columns are tandem's.
    pub(super) fn on_write_row_description(&mut self, body: &[u8]) -> Result<Option<BytesMut>> {
        let Some(w) = &self.write_in_flight else {
            return Ok(None);
        };
        match w.row_description {
            RowDescriptionRule::Swallow => return Ok(Some(BytesMut::new())),
            RowDescriptionRule::Relay => return Ok(None),
            RowDescriptionRule::ToNoData => {
                let mut out = BytesMut::new();
                put_empty(&mut out, backend::NO_DATA);
                return Ok(Some(out));
            }
            RowDescriptionRule::Strip => {}
        }
        let fields = split_row_description(body)?;
        let keep = fields.len().saturating_sub(w.appended);
        let mut out = BytesMut::new();
        out.put_u8(b'T');
        let kept: Vec<&[u8]> = fields[..keep].to_vec();
        let len: usize = 4 + 2 + kept.iter().map(|f| f.len()).sum::<usize>();
        out.put_i32(len as i32);
        out.put_u16(keep as u16);
        for f in kept {
            out.put_slice(f);
        }
        Ok(Some(out))
    }

    /// DataRow of the write in flight: take the key, pass the client's columns on.
    pub(super) fn on_write_data_row(&mut self, body: &[u8]) -> Result<Option<BytesMut>> {
        let Some(w) = &mut self.write_in_flight else {
            return Ok(None);
        };
        if w.guard_only && !w.image {
            return Ok(None);
        }
        let values = split_data_row(body)?;
        let keep = values.len().saturating_sub(w.appended);
        let mut ours = &values[keep..];
        if w.image
            && let Some((image, rest)) = ours.split_first()
        {
            let image = image.and_then(tandem_undo::row_from_returned_image);
            if let Some((_, types)) = &image
                && !w.meta.has_column_types(types)
            {
                // DDL from elsewhere (another connection, a function) changed the
                // table after tandem read its metadata: the images would miss or
                // misread a column.
                w.table_changed = true;
            }
            w.images.push(image.map(|(row, _)| row));
            ours = rest;
        }
        if let Some((table, rest)) = ours.split_last() {
            let oid = table
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|t| t.parse::<u32>().ok());
            if oid != Some(w.meta.oid) {
                w.table_changed = true;
            }
            ours = rest;
        }
        let mut appended: TextKey = ours
            .iter()
            .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
            .collect();
        if w.upsert {
            let flag = appended.pop().flatten();
            w.inserted.push(flag.as_deref() == Some("t"));
        }
        w.keys.push(appended);
        if !w.client_returning {
            return Ok(Some(BytesMut::new()));
        }
        let mut out = BytesMut::new();
        out.put_u8(b'D');
        let len: usize = 4
            + 2
            + values[..keep]
                .iter()
                .map(|v| 4 + v.map_or(0, <[u8]>::len))
                .sum::<usize>();
        out.put_i32(len as i32);
        out.put_u16(keep as u16);
        for v in &values[..keep] {
            match v {
                Some(b) => {
                    out.put_i32(b.len() as i32);
                    out.put_slice(b);
                }
                None => out.put_i32(-1),
            }
        }
        if let Some(left) = w.rows_left_for_client.as_mut() {
            if *left == 0 {
                // Past the client's limit: a later Execute of the portal takes it.
                w.held_for_client.push_back(out);
                return Ok(Some(BytesMut::new()));
            }
            *left -= 1;
        }
        Ok(Some(out))
    }

    /// CommandComplete (`body`) of the write in flight: PortalSuspended instead when
    /// the client's row limit was reached, even by the last row (the backend did not
    /// look for more, so it suspends the portal, as without tandem). The backend runs a
    /// write with RETURNING whole under a row limit too, and keeps the rest for a later
    /// Execute of the portal; tandem's Execute took them all, so tandem keeps them.
    pub(super) fn on_write_command_complete(&mut self, body: &[u8]) -> Option<BytesMut> {
        let w = self.write_in_flight.as_mut()?;
        if w.rows_left_for_client != Some(0) {
            return None;
        }
        let tag = body.strip_suffix(b"\0").unwrap_or(body);
        let rows = std::mem::take(&mut w.held_for_client);
        self.held_rows.hold(&w.portal, rows, tag);
        let mut out = BytesMut::new();
        put_empty(&mut out, backend::PORTAL_SUSPENDED);
        Some(out)
    }

    /// ErrorResponse of the write in flight (or of its before image, which the backend
    /// answered in its place): the write did not happen.
    pub(super) fn on_write_error(&mut self) {
        if let Some(w) = self.write_in_flight.as_mut() {
            w.failed = true;
            // After an error the backend skips to Sync: tandem's replies will not come.
            w.swallow.clear();
        }
    }

    /// ReadyForQuery ending the write in flight: record its rows, and end an implicit
    /// transaction (commit protocol, then COMMIT). Returns the status the client sees.
    pub(super) async fn finish_write(
        &mut self,
        status: TxStatus,
    ) -> Result<(TxStatus, Option<(String, String)>)> {
        let Some(w) = self.write_in_flight.take() else {
            return Ok((status, None));
        };
        if w.guard_only {
            return self.finish_outside_write(w, status).await;
        }
        if w.failed || status == TxStatus::Failed {
            if w.implicit {
                self.roll_back_local().await?;
                self.branch = Branch::default();
                return Ok((TxStatus::Idle, None));
            }
            return Ok((status, None));
        }
        let captured = match w.kind {
            _ if w.table_changed => {
                // Neither the images nor the undo row would name the table it changed.
                self.ctx.meta.forget(&self.database, &w.meta.table);
                self.forget_resolved_tables();
                Err(Error::TableChanged {
                    table: Postgres.qualified(&w.meta.table),
                })
            }
            WriteKind::Insert if w.upsert => {
                let mut result = Ok(());
                for (key, inserted) in w.keys.iter().zip(&w.inserted) {
                    if *inserted {
                        self.branch.record_inserted(&w.meta, vec![key.clone()]);
                    } else if let Err(u) = self
                        .branch
                        .check_captured(&w.meta, std::slice::from_ref(key))
                    {
                        result = Err(Error::Uncaptured { table: u.table });
                    }
                }
                result
            }
            WriteKind::Insert => {
                self.branch.record_inserted(&w.meta, w.keys.clone());
                Ok(())
            }
            WriteKind::Update | WriteKind::Delete => self
                .branch
                .check_captured(&w.meta, &w.keys)
                .map_err(|u| Error::Uncaptured { table: u.table }),
        };
        if captured.is_ok() {
            self.record_returned_after(&w);
        }
        match captured {
            // A COMMIT that failed (a deferred constraint, say) undid the write: the
            // client, which already has its CommandComplete, must hear it.
            Ok(()) if w.implicit => Ok((TxStatus::Idle, self.commit_branch().await?)),
            Ok(()) => Ok((status, None)),
            Err(e) if w.implicit => {
                // The write cannot stay: roll tandem's transaction back and say why.
                self.roll_back_local().await?;
                self.branch = Branch::default();
                Ok((
                    TxStatus::Idle,
                    Some((e.sqlstate().code().to_owned(), e.to_string())),
                ))
            }
            Err(e) => {
                // Inside the client's block the block fails, as at any error: what the
                // client sends next must not run outside the transaction it believes
                // open. Its ROLLBACK (or ROLLBACK TO a savepoint taken before the
                // write, which gives back the rows captured since) undoes the write.
                let refused = (e.sqlstate().code().to_owned(), e.to_string());
                let sql = super::intercept::error_sql(&refused.0, &refused.1);
                self.exchange_simple(&sql).await?;
                Ok((TxStatus::Failed, Some(refused)))
            }
        }
    }

    /// What the write returned of its rows becomes their after image, so COMMIT need
    /// not read them again: a DELETE's rows are gone; a row whose image could not be
    /// read is read at COMMIT.
    fn record_returned_after(&mut self, w: &WriteInFlight) {
        if w.kind == WriteKind::Delete {
            let gone = w.keys.iter().map(|k| (k.clone(), None));
            self.branch.record_returned_after(&w.meta, gone);
            return;
        }
        if !w.image || w.images.len() != w.keys.len() {
            self.branch.forget_after(&w.meta, &w.keys);
            return;
        }
        let mut unread = Vec::new();
        let mut returned = Vec::with_capacity(w.keys.len());
        for (key, image) in w.keys.iter().zip(&w.images) {
            match image {
                Some(row) => returned.push((key.clone(), Some(row.clone()))),
                None => unread.push(key.clone()),
            }
        }
        self.branch.record_returned_after(&w.meta, returned);
        self.branch.forget_after(&w.meta, &unread);
    }

    /// SELECT … FOR UPDATE in a global transaction: the rows it locks must not be held
    /// by another unfinished global transaction (Seata's read-committed-for-update).
    /// Waits for such a lock up to the wait bound, then refuses with 40001.
    pub(super) async fn check_read_locks(
        &mut self,
        read: &tandem_undo::LockedRead,
        params: &[Param<'_>],
    ) -> Result<()> {
        let xid = self.binding.xid().cloned().ok_or(Error::NotBound)?;
        let meta = self.table_meta(&read.table).await?;
        if is_temporary(&meta.table) {
            // No other session sees its rows, so no global transaction can hold them.
            return Ok(());
        }
        if meta.pk.is_empty() {
            // A view, say: which rows of which tables it locks has no key to name them.
            return Err(Error::Unsupported {
                what: "SELECT … FOR UPDATE of a view or a table without a primary key inside a global transaction",
            });
        }
        let sql = meta.locked_keys_sql(&Postgres, read)?;
        let got = self.exchange(&sql, params, &[1]).await?;
        if let Some(e) = got.error {
            tracing::debug!(parent: self.binding.span(), error = %e.message, "locking read check failed");
            if got.status == Some(TxStatus::Failed) {
                // In a block, the check's failure (a deadlock, a lock or statement
                // timeout) failed it: the read would only get 25P02. The client hears
                // the check's own error, as the read's.
                self.phase = super::Phase::Ready(TxStatus::Failed);
                return Err(Error::injected(&e.code, e.message));
            }
            // Outside one, the read itself fails the same way: the client sees the real
            // error.
            return Ok(());
        }
        let resource = self.resource.clone();
        let keys: Vec<_> = got
            .rows
            .iter()
            .map(|key| crate::at::branch::lock_key(&resource, &meta, key))
            .collect();
        let wait = crate::at::read_lock_wait(read, self.ctx.lock_wait);
        let ends = self.waits_end_while_idle();
        let waited = crate::at::wait_for_read_locks(&self.ctx.lock, &keys, &xid, wait, &ends).await;
        if let Err(e) = &waited {
            self.on_wait_ended(e).await?;
        }
        waited
    }

    /// ReadyForQuery after a branch's COMMIT failed but left its block open (an error
    /// before the COMMIT ran: its Bind refused, say). The branch was taken and
    /// registered and its undo row inserted: a ROLLBACK TO SAVEPOINT could keep the
    /// writes and drop the undo row, and the next COMMIT commit them unseen. tandem
    /// ends the block, as a failed COMMIT does, and only then reports the branch failed.
    pub(super) async fn on_failed_commit_ready(&mut self, body: &[u8]) -> Result<BytesMut> {
        let undo = self.commit_in_flight.take();
        let _ = self.on_server_message(crate::wire::pg::codes::backend::READY_FOR_QUERY, body)?;
        self.roll_back_local().await?;
        if let Some((undo, _)) = undo {
            self.report_phase_one_failed(Some(&undo));
        }
        self.phase = super::Phase::Ready(TxStatus::Idle);
        self.branch = Branch::default();
        self.binding.on_local_transaction_end();
        self.forget_resolutions_of_ended_transaction();
        let mut out = BytesMut::new();
        put_ready_for_query(&mut out, TxStatus::Idle);
        Ok(out)
    }

    /// ReadyForQuery of the write in flight: the relay reaches its sync point, tandem
    /// finishes the write, and the client gets the status (and error) it should see.
    pub(super) async fn on_write_ready(&mut self, body: &[u8]) -> Result<BytesMut> {
        let status = TxStatus::decode(body).ok_or(Error::UpstreamProtocol("bad ReadyForQuery"))?;
        let _ = self.on_server_message(crate::wire::pg::codes::backend::READY_FOR_QUERY, body)?;
        let held_complete = self.held_complete.take();
        let (status, error) = self.finish_write(status).await?;
        if self.xa == super::xa::XaBranch::Implicit && !self.batch_continues {
            // A checked write of XA autocommit work (guard.rs): its branch now.
            return self.end_xa_implicit(status, held_complete, error).await;
        }
        self.phase = super::Phase::Ready(status);
        if status == TxStatus::Idle {
            self.binding.on_local_transaction_end();
            self.forget_resolutions_of_ended_transaction();
        }
        let mut out = BytesMut::new();
        let failed = error.is_some();
        if let (Some(complete), false) = (held_complete, failed) {
            out.extend_from_slice(&complete);
        }
        if let Some((code, message)) = error {
            crate::wire::pg::messages::response::put_error(
                &mut out,
                crate::wire::pg::messages::response::Severity::Error,
                &code,
                &message,
            );
        }
        if std::mem::take(&mut self.batch_continues) {
            // The ReadyForQuery of tandem's own Sync: the client's batch goes on, unless
            // the statement failed or its transaction ended, when the backend would
            // have skipped the rest up to the client's Sync.
            if failed || status != TxStatus::InTransaction {
                self.skip_to_client_sync = Some(status);
            }
            return Ok(out);
        }
        self.put_batch_end(&mut out, status).await?;
        Ok(out)
    }

    /// Opens tandem's transaction block for a batch of writes the client sent outside
    /// one (pgJDBC's executeBatch with autocommit on, psycopg's pipeline), before its
    /// first write runs: a global transaction's, or writes checked outside one.
    pub(super) async fn begin_implicit_batch(&mut self) -> Result<()> {
        self.exchange_required("BEGIN").await?;
        self.phase = super::Phase::Ready(TxStatus::InTransaction);
        self.implicit_batch = true;
        tracing::debug!(parent: self.binding.span(), "batch outside a transaction block run in tandem's");
        Ok(())
    }

    /// The client's Sync of a batch run in tandem's block (`begin_implicit_batch`), the
    /// block in `status`: committed with its branch, or rolled back if it failed, as the
    /// backend ends an implicit transaction. Returns what the client gets: an error if
    /// the commit failed, then ReadyForQuery 'I'.
    pub(super) async fn end_implicit_batch(&mut self, status: TxStatus) -> Result<BytesMut> {
        self.implicit_batch = false;
        let failed = match status {
            // Writes outside a global transaction, checked (guard.rs): a plain COMMIT.
            TxStatus::InTransaction if self.binding.xid().is_none() => {
                let committed = self.exchange_simple("COMMIT").await?;
                committed.error.map(|e| (e.code, e.message))
            }
            TxStatus::InTransaction => self.commit_branch().await?,
            TxStatus::Failed => {
                self.roll_back_local().await?;
                self.branch = Branch::default();
                None
            }
            TxStatus::Idle => None,
        };
        self.phase = super::Phase::Ready(TxStatus::Idle);
        self.binding.on_local_transaction_end();
        self.forget_resolutions_of_ended_transaction();
        let mut out = BytesMut::new();
        if let Some((code, message)) = failed {
            put_error(&mut out, Severity::Error, &code, &message);
        }
        put_ready_for_query(&mut out, TxStatus::Idle);
        Ok(out)
    }

    /// The ReadyForQuery that ends a client's batch, the session in `status`, put in
    /// `out`; if the batch ran in tandem's block (`begin_implicit_batch`, or around XA
    /// autocommit work), that block ends first and the client sees the session idle.
    pub(super) async fn put_batch_end(
        &mut self,
        out: &mut BytesMut,
        status: TxStatus,
    ) -> Result<()> {
        if self.implicit_batch {
            out.extend_from_slice(&self.end_implicit_batch(status).await?);
        } else if self.xa == super::xa::XaBranch::Implicit {
            out.extend_from_slice(&self.end_xa_implicit(status, None, None).await?);
        } else {
            put_ready_for_query(out, status);
        }
        Ok(())
    }

    /// A ReadyForQuery relayed while tandem's block of an implicit batch is open: the
    /// client's Sync, behind a statement that was not a write.
    pub(super) async fn on_implicit_batch_ready(&mut self, body: &[u8]) -> Result<BytesMut> {
        let status = self.on_block_ending_ready(body)?;
        self.end_implicit_batch(status).await
    }

    /// The local COMMIT of a branch: after images, locks at the lockserver, the undo row.
    /// Leaves the local transaction open for the COMMIT itself.
    pub(super) async fn prepare_commit(&mut self) -> Result<Option<UndoRow>> {
        let xid = self.binding.xid().cloned().ok_or(Error::NotBound)?;
        if self.branch.is_empty() {
            // The writes matched no row: there is nothing to undo and nothing to lock.
            return Ok(None);
        }
        if self.key_settings() != self.branch_settings {
            return Err(Error::Unsupported {
                what: "a COMMIT after the session changed DateStyle, TimeZone, IntervalStyle or client_encoding since the branch's first write (tandem names the branch's rows by their keys as the server printed them then, and would now read other rows); the local transaction was rolled back, and",
            });
        }
        // Every table's after images in one round trip: the local row locks are held
        // until the COMMIT, so every round trip here is time other writers wait.
        let tables = self.branch.keys();
        let mut queries = Vec::new();
        for (meta, keys) in &tables {
            for chunk in keys.chunks(500) {
                let sql =
                    with_text_keys(&meta.select_by_keys_sql(&Postgres, chunk.len()), meta, None);
                let values: Vec<Option<Vec<u8>>> = chunk
                    .iter()
                    .flat_map(|k| k.iter().map(|v| v.as_ref().map(|s| s.as_bytes().to_vec())))
                    .collect();
                let formats = image_formats(meta);
                queries.push((Arc::clone(meta), sql, values, formats));
            }
        }
        let params: Vec<Vec<Param<'_>>> = queries
            .iter()
            .map(|(_, _, values, _)| {
                values
                    .iter()
                    .map(|v| Param {
                        type_oid: 0,
                        value: v.as_deref(),
                        text: true,
                    })
                    .collect()
            })
            .collect();
        let statements: Vec<(&str, &[Param<'_>], &[i16])> = queries
            .iter()
            .zip(&params)
            .map(|((_, sql, _, formats), params)| {
                (sql.as_str(), params.as_slice(), formats.as_slice())
            })
            .collect();
        // Every write returned its rows' after images (the usual case): nothing to read,
        // and no round trip.
        let results = if statements.is_empty() {
            Vec::new()
        } else {
            self.exchange_many(&statements).await?
        };
        drop(statements);
        for ((meta, ..), got) in queries.iter().zip(results) {
            if let Some(e) = got.error {
                return Err(Error::injected(&e.code, e.message));
            }
            let rows = split_rows(got.rows, meta.columns.len());
            self.branch.record_after(meta, rows);
        }
        let resource = self.resource.clone();
        let (record, keys) = std::mem::take(&mut self.branch).finish(&resource);
        self.ctx.phase2.serve(&resource);
        // A cancel, or the backend's closing (it is idle meanwhile), withdraws the
        // registration.
        let ends = self.waits_end_while_idle();
        let registered = self
            .ctx
            .lock
            .register_branch_unless(
                &xid,
                &resource,
                BranchKind::AT,
                &keys,
                self.ctx.lock_wait,
                ends.ended(),
            )
            .await;
        let Some(branch_id) =
            registered.inspect_err(|e| self.binding.on_registration_refused(e))?
        else {
            let e = ends.why();
            self.on_wait_ended(&e).await?;
            return Err(e);
        };
        tracing::debug!(parent: &self.binding.branch_span(&xid, branch_id), "branch registered");
        Ok(Some(UndoRow {
            id: crate::at::undo_row_id(xid.as_str(), branch_id).to_be_bytes(),
            branch: (branch_id as i64).to_be_bytes(),
            xid: xid.as_str().to_owned(),
            info: record.encode(),
        }))
    }

    /// The INSERT of an undo row, into the undo_log that phase 2 reads: the one the
    /// side connection's search_path finds, named with its schema, since the client's
    /// search_path (a tenant's schema alone, say) may not find it. None that phase 2
    /// would find: the branch cannot commit (an undo_log the client's search_path
    /// finds instead would hold a row no rollback reads).
    async fn insert_undo_sql(&self) -> Result<String> {
        let undo_log = tandem_undo::TableRef {
            schema: None,
            name: "undo_log".to_owned(),
        };
        match self
            .ctx
            .meta
            .get(&self.ctx.side, &self.database, &undo_log)
            .await
        {
            Ok(meta) => Ok(INSERT_UNDO.replacen("undo_log", &Postgres.qualified(&meta.table), 1)),
            Err(Error::UnknownTable { .. }) => Err(Error::injected(
                "42P01",
                format!(
                    "relation \"undo_log\" does not exist for tandem's own connection to database {}",
                    self.database
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// Inserts the branch's undo row into the open local transaction.
    pub(super) async fn write_undo_row(&mut self, undo: &Option<UndoRow>) -> Result<()> {
        let Some(undo) = undo else {
            return Ok(());
        };
        let insert = self.insert_undo_sql().await?;
        let got = self.exchange(&insert, &undo.params(), &[]).await?;
        match got.error {
            Some(e) => Err(undo.refused(&e.code, e.message)),
            None => Ok(()),
        }
    }

    /// The local COMMIT of a branch: after images and registration (`prepare_commit`),
    /// then the undo row and COMMIT in one round trip. `Some(error)`: the local
    /// transaction is over, rolled back, and the client gets this error (SQLSTATE and
    /// message) for its COMMIT.
    pub(super) async fn commit_branch(&mut self) -> Result<Option<(String, String)>> {
        let undo = match self.prepare_commit().await {
            Ok(undo) => undo,
            Err(e) => {
                self.branch = Branch::default();
                self.roll_back_local().await?;
                let e = rolled_back_at_commit(e);
                return Ok(Some((e.sqlstate().code().to_owned(), e.to_string())));
            }
        };
        let params = undo.as_ref().map(UndoRow::params);
        let insert = match &undo {
            Some(_) => match self.insert_undo_sql().await {
                Ok(insert) => insert,
                Err(e) => {
                    self.branch = Branch::default();
                    self.roll_back_local().await?;
                    self.report_phase_one_failed(undo.as_ref());
                    return Ok(Some((e.sqlstate().code().to_owned(), e.to_string())));
                }
            },
            None => String::new(),
        };
        if self.backend_ended_unasked().await {
            // While the branch waited for its locks: its COMMIT can never run.
            self.branch = Branch::default();
            self.report_phase_one_failed(undo.as_ref());
            return Err(Error::UpstreamClosed);
        }
        let mut statements: Vec<(&str, &[Param<'_>], &[i16])> = Vec::with_capacity(2);
        if let Some(params) = &params {
            statements.push((insert.as_str(), params.as_slice(), &[]));
        }
        statements.push(("COMMIT", &[], &[]));
        let results = match self.exchange_many(&statements).await {
            Ok(results) => results,
            Err(e) => {
                if undo.is_some() && self.backend_ended_before_replying().await {
                    // The backend ended (terminated while the branch waited for its
                    // locks, seen only now) before its undo row's INSERT completed:
                    // the COMMIT behind it never ran.
                    self.branch = Branch::default();
                    self.report_phase_one_failed(undo.as_ref());
                }
                return Err(e);
            }
        };
        if let Some(row) = &undo
            && let Some(e) = results.first().and_then(|r| r.error.as_ref())
        {
            // The backend skipped the COMMIT; the block is failed: end it.
            let e = row.refused(&e.code, e.message.clone());
            self.roll_back_local().await?;
            self.report_phase_one_failed(undo.as_ref());
            return Ok(Some((e.sqlstate().code().to_owned(), e.to_string())));
        }
        let last = results.last();
        let failed = last
            .and_then(|r| r.error.as_ref())
            .map(|e| (e.code.clone(), e.message.clone()));
        if failed.is_some() {
            if last.and_then(|r| r.status) != Some(TxStatus::Idle) {
                // Cancelled before it ran (the client's statement_timeout): the block
                // is failed, not over.
                self.roll_back_local().await?;
            }
            self.report_phase_one_failed(undo.as_ref());
        }
        Ok(failed)
    }

    /// A registered branch whose local COMMIT failed: nothing of it exists, and the
    /// lockserver shows it as PhaseOneFailed (its rollback then finds no undo row and
    /// writes the GlobalFinished marker). In the background: the client's answer does
    /// not wait for it. A lost report costs a global commit up to ten minutes of phase-2
    /// retries that look for the undo row (`at::cleanup`).
    pub(super) fn report_phase_one_failed(&self, undo: Option<&UndoRow>) {
        let Some(undo) = undo else {
            return;
        };
        let Ok(xid) = tandem_lockserver::client::Xid::parse(&undo.xid) else {
            return;
        };
        let branch_id = u64::from_be_bytes(undo.branch);
        let lock = self.ctx.lock.clone();
        let span = self.binding.branch_span(&xid, branch_id);
        tokio::spawn(async move {
            if let Err(e) = lock.report(&xid, branch_id, false).await {
                tracing::debug!(parent: &span, error = %e, "phase-1 failure not reported");
            }
        });
    }
}

/// The error a branch's COMMIT answers when preparing it failed and its local
/// transaction was rolled back: one the lockserver gave because it timed out or could not
/// be reached says the work may be run again (40001, as MySQL's front end answers 1213).
pub(super) fn rolled_back_at_commit(e: Error) -> Error {
    match e {
        Error::Lockserver(l) if l.is_retryable() => Error::RolledBackAtCommit {
            cause: Error::Lockserver(l).to_string(),
        },
        e => e,
    }
}

/// Whether a COMMIT (or END) statement opens the next transaction: `AND CHAIN`, not
/// `AND NO CHAIN`.
/// Read by its tokens, so that comments never count; text that does not tokenize is
/// taken to chain (the refusal is the safe side).
pub(super) fn chains(commit: &str) -> bool {
    tandem_undo::try_words(&Postgres, commit)
        .is_none_or(|words| words.iter().any(|w| w == "chain") && !words.iter().any(|w| w == "no"))
}

const INSERT_UNDO: &str = "INSERT INTO undo_log (id, branch_id, xid, context, rollback_info, log_status) VALUES ($1, $2, $3, $4, $5, $6)";

/// A branch's undo_log row, ready to insert.
pub(super) struct UndoRow {
    /// `crate::at::undo_row_id`, binary.
    id: [u8; 8],
    branch: [u8; 8],
    xid: String,
    info: Vec<u8>,
}

impl UndoRow {
    /// The error for the backend's refusal (`code`, `message`) of this row's INSERT. A
    /// unique violation on (xid, branch_id) is the GlobalFinished marker of a rollback
    /// that ran while the branch was committing.
    fn refused(&self, code: &str, message: String) -> Error {
        if code == tokio_postgres::error::SqlState::UNIQUE_VIOLATION.code() {
            Error::RolledBackDuringCommit {
                xid: self.xid.clone(),
            }
        } else {
            Error::injected(code, message)
        }
    }

    fn params(&self) -> Vec<Param<'_>> {
        const STATUS: [u8; 4] = LOG_NORMAL.to_be_bytes();
        vec![
            Param {
                type_oid: 20,
                value: Some(&self.id),
                text: false,
            },
            Param {
                type_oid: 20,
                value: Some(&self.branch),
                text: false,
            },
            Param {
                type_oid: 25,
                value: Some(self.xid.as_bytes()),
                text: false,
            },
            Param {
                type_oid: 25,
                value: Some(b"tandem"),
                text: false,
            },
            Param {
                type_oid: 17,
                value: Some(&self.info),
                text: false,
            },
            Param {
                type_oid: 23,
                value: Some(&STATUS),
                text: false,
            },
        ]
    }
}

/// A table in a session's temporary schema (PostgreSQL names them `pg_temp_<n>`).
fn is_temporary(table: &tandem_undo::TableRef) -> bool {
    table
        .schema
        .as_deref()
        .is_some_and(|s| s.starts_with("pg_temp_"))
}

/// The write with tandem's columns appended to its RETURNING (the image, the key; see
/// `TableMeta::with_returning_key`), and last the OID its table name resolves to
/// where it runs. A name can change meaning after tandem resolved it (a search_path
/// set inside a function, a table created in an earlier schema): finish_write then
/// finds another OID than the metadata's and the write does not stay.
/// How many columns `with_returning_key_and_table` appends to what `write` returns:
/// the image, the key, the upsert's flag, the table's OID.
pub(super) fn appended_columns(meta: &TableMeta, write: &Write) -> usize {
    let image = TableMeta::returns_image(&Postgres);
    usize::from(image) + meta.pk.len() + usize::from(write.upsert.is_some()) + 1
}

pub(super) fn with_returning_key_and_table(meta: &TableMeta, sql: &str, write: &Write) -> String {
    let name = Postgres.qualified(&write.table).replace('\'', "''");
    let oid = Postgres.as_output_text(&format!("'{name}'::pg_catalog.regclass::pg_catalog.oid"));
    format!(
        "{}, {oid} AS \"tandem_table\"",
        meta.with_returning_key(&Postgres, sql, write)
    )
}

/// `SELECT cols FROM …` with the key columns appended again (asked for as text),
/// qualified as the statement names its table (`qualifier`) when it joins others.
pub(super) fn with_text_keys(select: &str, meta: &TableMeta, qualifier: Option<&str>) -> String {
    let prefix = qualifier
        .map(|q| format!("\"{}\".", q.replace('"', "\"\"")))
        .unwrap_or_default();
    let keys: Vec<String> = meta
        .pk
        .iter()
        .map(|&i| format!("{prefix}\"{}\"", meta.columns[i].name.replace('"', "\"\"")))
        .collect();
    let (head, tail) = select.split_once(" FROM ").unwrap_or((select, ""));
    format!("{head}, {} FROM {tail}", keys.join(", "))
}

/// The before-image query of a write, the key appended as text (how the write's
/// RETURNING names the same rows); None for a plain INSERT, which has none.
pub(super) fn before_image_query(
    meta: &TableMeta,
    write: &tandem_undo::Write,
) -> std::result::Result<Option<String>, tandem_undo::Error> {
    if write.upsert.is_some() {
        let sql = meta.upsert_before_image_sql(&Postgres, write)?;
        return Ok(Some(with_text_keys(&sql, meta, None)));
    }
    if write.kind == WriteKind::Insert {
        return Ok(None);
    }
    let qualifier = write.alias.as_deref().unwrap_or(&write.table.name);
    let sql = meta.before_image_sql(&Postgres, write);
    Ok(Some(with_text_keys(&sql, meta, Some(qualifier))))
}

/// Whether the session's own connection must say which table `table` means: an
/// unqualified name follows its search_path, and `pg_temp` names its own temporary
/// schema, whatever that schema's real name.
fn resolves_here(table: &tandem_undo::TableRef) -> bool {
    table
        .schema
        .as_deref()
        .is_none_or(|s| s.eq_ignore_ascii_case("pg_temp"))
}

/// Result formats of an image query: every column binary, then the key again as text.
pub(super) fn image_formats(meta: &TableMeta) -> Vec<i16> {
    let mut formats = vec![1i16; meta.columns.len()];
    formats.extend(std::iter::repeat_n(0i16, meta.pk.len()));
    formats
}

/// Splits each exchanged row into the binary image and the text key after it.
pub(super) fn split_rows(
    rows: Vec<Vec<Option<Vec<u8>>>>,
    width: usize,
) -> Vec<(Vec<Option<Vec<u8>>>, TextKey)> {
    rows.into_iter()
        .map(|mut row| {
            let key = row
                .split_off(width.min(row.len()))
                .into_iter()
                .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                .collect();
            (row, key)
        })
        .collect()
}

fn split_row_description(body: &[u8]) -> Result<Vec<&[u8]>> {
    let bad = || Error::UpstreamProtocol("bad RowDescription");
    let mut r = Reader::new(body);
    let n = r.count().map_err(|_| bad())?;
    let mut fields = Vec::new();
    for _ in 0..n {
        let start = r.remaining();
        let name = r.cstr().map_err(|_| bad())?;
        r.bytes(18).map_err(|_| bad())?;
        fields.push(&start[..name.len() + 1 + 18]);
    }
    Ok(fields)
}

fn split_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>> {
    let bad = || Error::UpstreamProtocol("bad DataRow");
    let mut r = Reader::new(body);
    let n = r.count().map_err(|_| bad())?;
    let mut values = Vec::new();
    for _ in 0..n {
        let len = r.i32().map_err(|_| bad())?;
        values.push(match usize::try_from(len) {
            Ok(len) => Some(r.bytes(len).map_err(|_| bad())?),
            Err(_) => None,
        });
    }
    Ok(values)
}

/// Whether a `$` starts what PostgreSQL reads as a dollar-quote tag or a name (letters,
/// digits, `_`, any non-ASCII character) holding a non-ASCII character that is no
/// letter or digit, which tandem's parser does not take for part of one.
fn dollar_tag_misread(sql: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(sql) else {
        return false;
    };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            continue;
        }
        while let Some(&next) = chars.peek() {
            if next.is_alphanumeric() || next == '_' {
                chars.next();
            } else if !next.is_ascii() {
                return true;
            } else {
                break;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::{chains, dollar_tag_misread};

    #[test]
    fn dollar_tags_tandem_reads_otherwise_are_found() {
        for misread in [
            "SELECT $€$ ' $€$; COMMIT; --'",
            "SELECT $a€$x$a€$",
            "SELECT $\u{2028}$",
        ] {
            assert!(dollar_tag_misread(misread.as_bytes()), "{misread}");
        }
        for read_alike in [
            "SELECT $$a$$",
            "SELECT $tag_1$x$tag_1$",
            "SELECT $é$x$é$",
            "SELECT $1, '€'",
            "SELECT 'a $ €'",
        ] {
            assert!(!dollar_tag_misread(read_alike.as_bytes()), "{read_alike}");
        }
    }

    #[test]
    fn only_and_chain_chains() {
        assert!(chains("COMMIT AND CHAIN"));
        assert!(chains("end and\n chain"));
        assert!(!chains("COMMIT AND NO CHAIN"));
        assert!(!chains("COMMIT"));
        assert!(!chains("COMMIT /* chained */"));
        assert!(!chains("COMMIT /* chain */"));
        assert!(chains("COMMIT AND CHAIN /* no */"));
        assert!(chains("COMMIT AND CHAIN -- no\n"));
    }
}
