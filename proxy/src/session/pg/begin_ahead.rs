//! A transaction block that begins in the same batch as its first statement, as pgJDBC
//! sends it with autocommit off: `BEGIN` as Parse, Bind, Execute, then the statement's
//! messages, then one Sync. In a bound session tandem handles that statement at a sync
//! point (AT captures it; XA joins it to the block's branch), and so does the check of
//! a write outside a global transaction to a table that may hold global locks
//! (guard.rs); in the middle of a batch there is none. So the BEGIN runs ahead, under a
//! Sync of tandem's whose ReadyForQuery the client never sees, and the rest of the batch
//! then starts at a sync point inside the block. Outside a global transaction this
//! happens only while some table of the database may hold global locks and a
//! statement after the BEGIN may write: it costs a round trip. The same goes for any
//! statement of a block that tandem lets through unchecked, ahead of a later write
//! of its batch (`run_ahead_of_a_write`).
//!
//! A SAVEPOINT sent the same way, in one batch with a later statement of the block,
//! runs ahead likewise outside a global transaction, under the same conditions.
//! (pgJDBC 42.5's `autosave` sends its SAVEPOINT as a Query within the batch instead:
//! a sync point of its own, which the statement behind it waits for.)
//!
//! asyncpg sends Parse, Describe and Flush, reads the replies, then sends Bind,
//! Execute and Sync: its Bind comes between sync points, where tandem cannot run its
//! own statements either. Nothing has run before it, so tandem ends that stretch with
//! a Sync of its own first (`settle`).
//!
//! Every message and reply goes through the session's tracking as if relayed. Invariant:
//! nothing after the BEGIN reaches the backend before the BEGIN's replies are read; if
//! the BEGIN fails, the rest of the client's batch is dropped, as the backend would
//! have skipped it up to the client's Sync.

use super::at_extended::Extended;
use super::{Phase, Relay, Relayed};
use crate::error::{Error, Result};
use crate::wire::pg::Frame;
use crate::wire::pg::codes::{backend, frontend};
use crate::wire::pg::messages::extended::Bind;
use crate::wire::pg::messages::response::TxStatus;
use crate::wire::pg::messages::write::put_msg;
use bytes::{Buf, BytesMut};

impl Relay<'_> {
    /// Whether `sql`, a Parse's or Bind's statement, may open a transaction block that
    /// more of its batch then runs in: BEGIN or START TRANSACTION in an idle session, at
    /// a sync point (`begin_ahead` tells whether what follows it calls for that).
    pub(super) fn begins_a_block_ahead(&self, sql: &[u8]) -> bool {
        if self.phase != Phase::Ready(TxStatus::Idle) && !self.after_leading_closes(TxStatus::Idle)
        {
            return false;
        }
        is_begin(sql)
    }

    /// Whether `sql`, a Parse's or Bind's statement, is a SAVEPOINT that may run ahead
    /// of more of its batch (pgJDBC's `autosave`): in an open block at a sync point;
    /// outside a global transaction while a write may need a check; in XA mode before
    /// the block's first work, which joins the branch at a sync point (xa.rs), and
    /// after it while a write may need a check (XA-mode writes are checked as those
    /// outside are). Not in AT mode, where a savepoint goes through the branch's
    /// savepoint tracking.
    pub(super) fn sets_a_savepoint_ahead(&self, sql: &[u8]) -> bool {
        // In tandem's block standing for an implicit transaction, its Bind is refused.
        !self.implicit_batch
            && (self.phase == Phase::Ready(TxStatus::InTransaction)
                || self.after_leading_closes(TxStatus::InTransaction))
            && self.savepoint_may_run_ahead()
            && is_savepoint(sql)
    }

    /// Whether a SAVEPOINT in this session's open block would run ahead of its batch
    /// (`sets_a_savepoint_ahead`), whatever the statement.
    pub(super) fn savepoint_may_run_ahead(&self) -> bool {
        match self.binding.xid() {
            None => self.writes_may_need_a_check(),
            Some(_) => {
                use super::xa::XaBranch;
                // Not in tandem's block around autocommit work, where the backend
                // would refuse a SAVEPOINT (no block of the client's is open).
                self.branch_mode() == crate::binding::Mode::Xa
                    && match self.xa {
                        XaBranch::None => true,
                        XaBranch::Open => self.writes_may_need_a_check(),
                        XaBranch::Implicit => false,
                    }
            }
        }
    }

    /// Whether a BEGIN or SAVEPOINT runs ahead only so that a write behind it can be
    /// checked against global locks: outside a global transaction, or inside an XA
    /// branch's block once it holds work. Then it need not if nothing behind it writes.
    fn runs_ahead_for_the_check_only(&self) -> bool {
        self.binding.xid().is_none() || self.xa != super::xa::XaBranch::None
    }

    /// `rest` starts with the Parse or Bind of a BEGIN (`begins_a_block_ahead`), or of a
    /// SAVEPOINT (`sets_a_savepoint_ahead`, `opens_block` false). Runs its `[Parse] Bind
    /// [Describe] Execute` ahead when more of the batch follows it; one alone in its
    /// batch, or in another shape, is relayed as usual.
    pub(super) async fn begin_ahead(&mut self, rest: &[u8], opens_block: bool) -> Result<Extended> {
        // Unbound, or in an XA branch's block that holds work: for the check, when
        // some later statement may write (a read between them runs ahead in turn), and
        // for a control call behind it, which tandem answers at a sync point (pgJDBC
        // with autocommit off sends `SELECT tandem_join(?)` behind its BEGIN).
        let behind = match self.runs_ahead_for_the_check_only() {
            false => Behind::Anything,
            true if self.writes_may_need_a_check() => Behind::SomeWriteOrControlCall,
            true => Behind::SomeControlCall,
        };
        self.run_ahead(rest, behind, opens_block, false).await
    }

    /// Whether a statement (`sql`, a Parse's or Bind's at a sync point, that its
    /// interception let through) may run ahead of a later write in its batch, so that
    /// the write starts at a sync point: between sync points a write cannot be checked
    /// or captured (a plain INSERT there would run unchecked, any other write be
    /// refused). Inside a transaction block whose writes are checked against global
    /// locks (outside a global transaction, or in XA mode) while some table may hold
    /// them, a statement that cannot end the block. In an AT branch, a plain read. Out
    /// of a block, a plain read or DML, outside a global transaction while a write
    /// may need a check, or in an AT branch: the batch then runs in a block of
    /// tandem's (`begin_implicit_batch`), as one whose write leads it does.
    pub(super) fn may_run_ahead_of_a_write(&self, sql: &[u8]) -> bool {
        let in_at_branch =
            self.binding.xid().is_some() && self.branch_mode() == crate::binding::Mode::At;
        match self.phase {
            Phase::Ready(TxStatus::InTransaction | TxStatus::Idle) if in_at_branch => {
                is_plain_read(sql)
            }
            Phase::Ready(TxStatus::InTransaction)
                if self.binding.xid().is_none()
                    || self.branch_mode() == crate::binding::Mode::Xa =>
            {
                (keeps_block(sql) || super::guard::may_write(sql)) && self.writes_may_need_a_check()
            }
            Phase::Ready(TxStatus::Idle) if self.binding.xid().is_none() => {
                (is_plain_read(sql) || is_dml(sql)) && self.writes_may_need_a_check()
            }
            _ => false,
        }
    }

    /// `rest` starts with the Parse or Bind of a statement `may_run_ahead_of_a_write`
    /// lets run ahead: it does when a later statement of its batch may write, so that
    /// one starts at a sync point. In XA mode what runs ahead is the branch's work.
    /// A Parse runs ahead alone: its Bind then comes at a sync point of its own, where
    /// it meets every check a Bind meets (a function that may write, a locking read
    /// over several tables …) before it runs ahead in turn.
    pub(super) async fn run_ahead_of_a_write(&mut self, rest: &[u8]) -> Result<Extended> {
        let parse_alone = rest.first() == Some(&frontend::PARSE);
        let ran = self
            .run_ahead(rest, Behind::SomeWrite, false, parse_alone)
            .await?;
        // Only if it ran and the block goes on: one that failed ended tandem's block
        // around autocommit work, or failed the client's, and nothing is the branch's.
        if self.binding.xid().is_some()
            && !parse_alone
            && self.branch_mode() == crate::binding::Mode::Xa
            && self.xa == super::xa::XaBranch::None
            && matches!(ran, Extended::Handled { .. })
            && self.phase == Phase::Ready(TxStatus::InTransaction)
        {
            self.xa = super::xa::XaBranch::Open;
        }
        Ok(ran)
    }

    /// Runs the `[Parse] Bind [Describe] Execute` at the head of `rest` (and the Closes
    /// behind it), or its Parse alone (`parse_alone`), ahead of the rest of its batch,
    /// under a Sync of tandem's, when what is `behind` it calls for that; one alone in
    /// its batch, or in another shape, is relayed as usual.
    async fn run_ahead(
        &mut self,
        rest: &[u8],
        behind: Behind,
        opens_block: bool,
        parse_alone: bool,
    ) -> Result<Extended> {
        let max = self.ctx.config.max_message_bytes;
        // The whole batch must be here: if the statement fails, the rest is dropped.
        let (begin_len, batch_len) = match head_of_batch(rest, max)? {
            Head::Incomplete => return Ok(Extended::NeedMore),
            Head::Unsplittable => return Ok(Extended::NotAWrite),
            Head::Split { head, batch } => (head, batch),
        };
        let after = &rest[begin_len..batch_len];
        let calls = |sql: &[u8]| super::control_extended::maybe_control(sql).is_some();
        let wanted = match behind {
            Behind::Anything => true,
            Behind::SomeWrite => self.some_may_write(after)?,
            Behind::SomeControlCall => self.some_statement(after, calls)?,
            Behind::SomeWriteOrControlCall => {
                self.some_may_write(after)? || self.some_statement(after, calls)?
            }
        };
        if !wanted {
            return Ok(Extended::NotAWrite);
        }
        if self.phase == Phase::Ready(TxStatus::Idle) && !opens_block {
            if self.batch_changes_the_block(rest)? {
                // Its write comes between sync points, where it is refused.
                return Ok(Extended::NotAWrite);
            }
            // Out of a block the batch is one implicit transaction: piecewise, it stays
            // one in a block of tandem's, ended at the client's Sync.
            self.begin_implicit_batch().await?;
        }
        let begin_len = match Frame::peek(rest, max)? {
            Some(parse) if parse_alone => parse.wire_len,
            _ => begin_len,
        };
        let begin = &rest[..begin_len];
        let mut out = BytesMut::with_capacity(begin_len + SYNC_LEN);
        out.extend_from_slice(begin);
        put_msg(&mut out, frontend::SYNC, &[]);
        self.write_server(&out).await?;
        let mut at = 0;
        while let Some(frame) = Frame::peek(&begin[at..], max)? {
            self.on_client_message(frame.tag, frame.body(&begin[at..]))?;
            at += frame.wire_len;
        }
        self.on_client_message(frontend::SYNC, &[])?;
        let (to_client, failed, status) = self.read_to_ready().await?;
        self.write_client(&to_client);
        if !failed {
            tracing::debug!(parent: self.binding.span(), opens_block, "statement run ahead of its batch");
            return Ok(Extended::Handled {
                consumed: begin_len,
                to_backend: None,
            });
        }
        // The backend would have skipped the rest up to the client's Sync (and
        // tandem's block around XA autocommit work ends there).
        let mut ready = BytesMut::new();
        self.put_batch_end(&mut ready, status).await?;
        self.answered(&ready, batch_len).await
    }

    /// In a session whose status was `status`, the batch so far is Close messages only
    /// (sent on already, see client_side.rs): nothing has run, so a BEGIN still starts
    /// it, or a SAVEPOINT.
    pub(super) fn after_leading_closes(&self, status: TxStatus) -> bool {
        self.closes_only_in_batch
            && matches!(
                self.phase,
                Phase::Busy {
                    tx,
                    awaiting: 0,
                    unsynced: true,
                    copy: None,
                } if tx == status
            )
    }

    /// Outside a global transaction: whether some table of the database may hold global
    /// locks (so a write in the block may need its check at a sync point).
    pub(super) fn writes_may_need_a_check(&self) -> bool {
        !self.skips_checks()
            && self
                .ctx
                .outside
                .tables
                .enter_unchecked(&self.resource, None)
                .is_none()
    }

    /// Whether the read `sql` leads XA autocommit work in its batch (`rest` starts
    /// with its messages): a later statement is work of a branch (`is_work`), and
    /// where writes may need a check the read can run ahead of it, so that the write
    /// starts at a sync point (a SET cannot: the write behind it would come between
    /// sync points inside tandem's block). None: the batch is not all here yet.
    pub(super) fn read_leads_xa_work(
        &self,
        sql: &[u8],
        rest: &[u8],
        is_work: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<bool>> {
        if !keeps_block(sql) && self.writes_may_need_a_check() {
            return Ok(Some(false));
        }
        Ok(
            match head_of_batch(rest, self.ctx.config.max_message_bytes)? {
                Head::Incomplete => None,
                // As before, its writes come between sync points.
                Head::Unsplittable => Some(false),
                Head::Split { head, batch } => {
                    Some(self.some_statement(&rest[head..batch], is_work)?)
                }
            },
        )
    }

    /// Whether a statement of the batch at the head of `rest` (up to its Sync) begins,
    /// ends or prepares a transaction block: in tandem's block standing for the
    /// implicit transaction it would act on tandem's block instead (a BEGIN would only
    /// warn, and the client's ROLLBACK behind the batch undo nothing), so such a batch
    /// is not run in one.
    pub(super) fn batch_changes_the_block(&self, rest: &[u8]) -> Result<bool> {
        self.some_statement(rest, changes_the_block)
    }

    /// Whether any statement of the batch `after` (up to its Sync) may write.
    fn some_may_write(&self, after: &[u8]) -> Result<bool> {
        self.some_statement(after, super::guard::may_write)
    }

    /// Whether any statement of the batch `after` (up to its Sync) is one `wanted` says.
    fn some_statement(&self, after: &[u8], wanted: impl Fn(&[u8]) -> bool) -> Result<bool> {
        let max = self.ctx.config.max_message_bytes;
        let mut at = 0;
        while let Some(frame) = Frame::peek(&after[at..], max)?
            && frame.tag != frontend::SYNC
        {
            if matches!(frame.tag, frontend::PARSE | frontend::BIND)
                && self
                    .statement_sql(frame.tag, frame.body(&after[at..]))
                    .is_some_and(|sql| wanted(&sql))
            {
                return Ok(true);
            }
            at += frame.wire_len;
        }
        Ok(false)
    }

    /// The replies to what went ahead under a Sync of tandem's, up to its ReadyForQuery
    /// (not passed on): what the client gets, whether one was an error, and the status.
    async fn read_to_ready(&mut self) -> Result<(BytesMut, bool, TxStatus)> {
        let max = self.ctx.config.max_message_bytes;
        let mut to_client = BytesMut::new();
        let mut failed = false;
        loop {
            while let Some(frame) = Frame::peek(&self.from_server, max)? {
                let whole = self.from_server[..frame.wire_len].to_vec();
                let body = &whole[5..];
                let relayed = self.on_server_message(frame.tag, body)?;
                self.from_server.advance(frame.wire_len);
                if frame.tag == backend::READY_FOR_QUERY {
                    let status = TxStatus::decode(body)
                        .ok_or(Error::UpstreamProtocol("bad ReadyForQuery"))?;
                    return Ok((to_client, failed, status));
                }
                failed |= frame.tag == backend::ERROR_RESPONSE;
                match relayed {
                    Relayed::AsIs => to_client.extend_from_slice(&whole),
                    Relayed::Rewritten(instead) => to_client.extend_from_slice(&instead),
                }
            }
            self.read_more_from_server().await?;
        }
    }
}

impl Relay<'_> {
    /// Whether the session may be brought to a sync point by a Sync of tandem's
    /// (`settle`) though the client sent none: since the last ReadyForQuery it has only
    /// prepared, described and closed statements and portals, and no reply it was sent
    /// was an error (after one the backend skips the client's messages up to its Sync,
    /// which tandem's would end early; one among the replies still to come is read
    /// before tandem goes on, and tandem skips likewise). asyncpg prepares, describes
    /// and flushes ahead of every Bind, and its `prepare()` ahead of whatever comes
    /// next; pgJDBC puts the Closes of statements it dropped ahead of its next batch.
    /// Nothing has run, so the Sync changes nothing the client can see: its statements
    /// outlive it, and it bound no portal.
    pub(super) fn may_settle(&self) -> bool {
        matches!(self.phase, Phase::Busy { awaiting: 0, .. }) && self.may_settle_once_answered()
    }

    /// Whether the session may be settled (`may_settle`) once the batches before the
    /// current one are answered.
    pub(super) fn may_settle_once_answered(&self) -> bool {
        matches!(
            self.phase,
            Phase::Busy {
                unsynced: true,
                copy: None,
                ..
            }
        ) && !self.executed_in_batch
            && !self.bound_in_batch
            && !self.error_since_ready
            && self.server_streaming == 0
    }

    /// Brings the session to a sync point with a Sync of tandem's (`may_settle`). What
    /// the backend still had to say goes to the client, its ReadyForQuery does not.
    /// An error among it (a Describe of an unknown statement) means the backend was
    /// skipping the client's batch: so does tandem, up to the client's Sync.
    pub(super) async fn settle(&mut self) -> Result<()> {
        let mut sync = BytesMut::with_capacity(SYNC_LEN);
        put_msg(&mut sync, frontend::SYNC, &[]);
        self.write_server(&sync).await?;
        self.on_client_message(frontend::SYNC, &[])?;
        let (to_client, failed, status) = self.read_to_ready().await?;
        self.write_client(&to_client);
        if failed {
            self.skip_to_client_sync = Some(status);
        }
        tracing::debug!(parent: self.binding.span(), ?status, "unsynced stretch settled by tandem's Sync");
        Ok(())
    }

    /// Whether the session is in a transaction block that has run more than BEGIN and
    /// SAVEPOINT (or has failed): one a binding must not start in, since its earlier
    /// work was not captured.
    pub(super) fn block_holds_work(&self) -> bool {
        match self.phase.tx_status() {
            Some(TxStatus::Idle) | None => false,
            Some(TxStatus::InTransaction) => !self.block_untouched,
            Some(TxStatus::Failed) => true,
        }
    }

    /// Keeps `block_untouched` as the client's message `tag`/`body` goes to the backend.
    pub(super) fn track_untouched_block(&mut self, tag: u8, body: &[u8]) {
        if self.phase == Phase::Ready(TxStatus::Idle) {
            self.block_untouched = true;
        }
        match tag {
            frontend::QUERY => {
                let sql = body.strip_suffix(&[0]).unwrap_or(body);
                self.block_untouched &= holds_nothing(sql);
            }
            frontend::BIND => {
                // A statement that may turn out another one holds anything.
                let unnamed = Bind::decode(body)
                    .ok()
                    .filter(|bind| bind.portal.is_empty())
                    .filter(|bind| !self.tracked.bind_statement_uncertain(bind.statement))
                    .and_then(|bind| self.tracked.statement_for_bind(bind.statement));
                self.unnamed_portal_holds_nothing =
                    unnamed.is_some_and(|statement| holds_nothing(&statement.sql));
                self.unnamed_portal_keeps_block =
                    unnamed.is_some_and(|statement| keeps_block(&statement.sql));
            }
            // A named portal's statement is not kept track of: it may hold anything.
            frontend::EXECUTE => {
                self.block_untouched &=
                    body.first() == Some(&0) && self.unnamed_portal_holds_nothing;
            }
            frontend::FUNCTION_CALL => self.block_untouched = false,
            _ => {}
        }
    }
}

/// Whether `sql` is one BEGIN, START TRANSACTION or SAVEPOINT: a statement that takes
/// no lock a global rollback's undo could wait for.
fn holds_nothing(sql: &[u8]) -> bool {
    let one_statement = sql
        .trim_ascii_end()
        .strip_suffix(b";")
        .unwrap_or(sql)
        .iter()
        .all(|&b| b != b';');
    one_statement && (is_begin(sql) || is_savepoint(sql))
}

/// Whether `sql`, a Parse's statement (one statement), cannot end a transaction block:
/// a read, or a savepoint's. A function cannot commit; a procedure (CALL) can.
fn keeps_block(sql: &[u8]) -> bool {
    let mut words = crate::control::leading_words(sql, false);
    match words.next() {
        Some(w) if w.eq_ignore_ascii_case(b"rollback") => {
            words.next().is_some_and(|w| w.eq_ignore_ascii_case(b"to"))
        }
        Some(w) => [
            &b"select"[..],
            b"savepoint",
            b"release",
            b"show",
            b"values",
            b"table",
        ]
        .iter()
        .any(|keeps| w.eq_ignore_ascii_case(keeps)),
        None => false,
    }
}

/// Whether `sql` begins, ends or prepares a transaction block (not ROLLBACK TO, nor a
/// SQL-level PREPARE of a statement).
fn changes_the_block(sql: &[u8]) -> bool {
    let mut words = crate::control::leading_words(sql, false);
    let Some(first) = words.next() else {
        return false;
    };
    let second = words.next().unwrap_or_default();
    match first.to_ascii_lowercase().as_slice() {
        b"rollback" => !second.eq_ignore_ascii_case(b"to"),
        b"prepare" => second.eq_ignore_ascii_case(b"transaction"),
        b"begin" | b"start" | b"commit" | b"end" | b"abort" => true,
        _ => false,
    }
}

/// Whether `sql` is a plain read: SELECT, SHOW, VALUES or TABLE.
fn is_plain_read(sql: &[u8]) -> bool {
    first_word_is(sql, &[b"select", b"show", b"values", b"table"])
}

/// Whether `sql` is an INSERT, UPDATE or DELETE: what runs the same in a transaction
/// block as in the implicit one of its batch.
fn is_dml(sql: &[u8]) -> bool {
    first_word_is(sql, &[b"insert", b"update", b"delete"])
}

/// What `sql` is, as PostgreSQL names it refusing it outside a transaction block (in the
/// implicit one of a pipelined batch too): a statement that only a block gives meaning.
pub(super) fn needs_a_block(sql: &[u8]) -> Option<&'static str> {
    let mut words = crate::control::leading_words(sql, false);
    let first = words.next()?;
    let is = |word: &[u8]| first.eq_ignore_ascii_case(word);
    if is(b"savepoint") {
        Some("SAVEPOINT")
    } else if is(b"release") {
        Some("RELEASE SAVEPOINT")
    } else if is(b"rollback") && words.next().is_some_and(|w| w.eq_ignore_ascii_case(b"to")) {
        Some("ROLLBACK TO SAVEPOINT")
    } else if is(b"lock") {
        Some("LOCK TABLE")
    } else if is(b"declare") && !declares_with_hold(sql) {
        Some("DECLARE CURSOR")
    } else {
        None
    }
}

/// Whether the DECLARE `sql` may make its cursor WITH HOLD (it outlives its
/// transaction): false only where its words up to FOR say WITHOUT HOLD, or nothing.
fn declares_with_hold(sql: &[u8]) -> bool {
    let mut previous: &[u8] = b"";
    for word in crate::control::leading_words(sql, false) {
        if word.eq_ignore_ascii_case(b"for") {
            return false;
        }
        if word.eq_ignore_ascii_case(b"hold") {
            return previous.eq_ignore_ascii_case(b"with");
        }
        previous = word;
    }
    // Words it cannot read (a quoted name): left to the backend, as before.
    true
}

fn first_word_is(sql: &[u8], words: &[&[u8]]) -> bool {
    crate::control::leading_words(sql, false)
        .next()
        .is_some_and(|w| words.iter().any(|word| w.eq_ignore_ascii_case(word)))
}

fn is_begin(sql: &[u8]) -> bool {
    let mut words = crate::control::leading_words(sql, false);
    match words.next() {
        Some(w) if w.eq_ignore_ascii_case(b"begin") => true,
        Some(w) if w.eq_ignore_ascii_case(b"start") => words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case(b"transaction")),
        _ => false,
    }
}

fn is_savepoint(sql: &[u8]) -> bool {
    crate::control::leading_words(sql, false)
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(b"savepoint"))
}

const SYNC_LEN: usize = 5;

/// What must follow a statement in its batch for it to run ahead.
#[derive(Clone, Copy)]
enum Behind {
    Anything,
    /// Some later statement may write.
    SomeWrite,
    /// Some later statement is a control call.
    SomeControlCall,
    SomeWriteOrControlCall,
}

/// The BEGIN's own messages at the head of a batch.
#[derive(Debug, PartialEq, Eq)]
enum BeginShape {
    /// `[Parse] Bind [Describe] Execute`, this many bytes.
    Messages(usize),
    /// Not all here yet.
    NotYet,
    /// Another shape.
    Other,
}

fn begin_messages(rest: &[u8], max: usize) -> Result<BeginShape> {
    let mut at = 0;
    let mut last = None;
    while let Some(frame) = Frame::peek(&rest[at..], max)? {
        let fits = matches!(
            (last, frame.tag),
            (None, frontend::PARSE | frontend::BIND)
                | (Some(frontend::PARSE), frontend::BIND)
                | (Some(frontend::BIND), frontend::DESCRIBE | frontend::EXECUTE)
                | (Some(frontend::DESCRIBE), frontend::EXECUTE)
        );
        if !fits {
            return Ok(BeginShape::Other);
        }
        at += frame.wire_len;
        if frame.tag == frontend::EXECUTE {
            return Ok(BeginShape::Messages(at));
        }
        last = Some(frame.tag);
    }
    Ok(BeginShape::NotYet)
}

/// The statement at the head of a batch, and the batch.
enum Head {
    /// Not all here yet.
    Incomplete,
    /// The head is not `[Parse] Bind [Describe] Execute`, or it is alone in its batch
    /// but for the Sync, or the batch is too long to wait for, or the client reads
    /// replies before its Sync.
    Unsplittable,
    /// The head's messages (with the Closes right behind them) end `head` bytes in,
    /// the batch at its Sync, `batch` bytes in.
    Split { head: usize, batch: usize },
}

/// Where the statement at the head of `rest` ends, and its batch.
fn head_of_batch(rest: &[u8], max: usize) -> Result<Head> {
    let mut head = match begin_messages(rest, max)? {
        BeginShape::Messages(len) => len,
        BeginShape::NotYet => return Ok(Head::Incomplete),
        BeginShape::Other => return Ok(Head::Unsplittable),
    };
    // Closes right behind it (pgJDBC's of statements it dropped) go with it: the
    // statement after them must still start at a sync point.
    while let Some(frame) = Frame::peek(&rest[head..], max)?
        && frame.tag == frontend::CLOSE
    {
        head += frame.wire_len;
    }
    Ok(match batch_len(rest, max)? {
        BatchLen::Sync(batch) if batch == head + SYNC_LEN => Head::Unsplittable,
        BatchLen::Sync(batch) => Head::Split { head, batch },
        BatchLen::NotYet if rest.len() <= max => Head::Incomplete,
        BatchLen::NotYet | BatchLen::Flushed => Head::Unsplittable,
    })
}

enum BatchLen {
    Sync(usize),
    /// A Flush, Query or FunctionCall before any Sync: the client waits for replies.
    Flushed,
    NotYet,
}

/// Where the batch at the head of `rest` ends: at its Sync (this many bytes in), or
/// at a Flush (the client waits for replies there).
fn batch_len(rest: &[u8], max: usize) -> Result<BatchLen> {
    let mut at = 0;
    while let Some(frame) = Frame::peek(&rest[at..], max)? {
        at += frame.wire_len;
        match frame.tag {
            frontend::SYNC => return Ok(BatchLen::Sync(at)),
            // A Query or FunctionCall ends the batch without a Sync, and the client
            // waits for its reply: no Sync may come.
            frontend::FLUSH | frontend::QUERY | frontend::FUNCTION_CALL => {
                return Ok(BatchLen::Flushed);
            }
            _ => {}
        }
    }
    Ok(BatchLen::NotYet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_msg(&mut out, tag, body);
        out.to_vec()
    }

    #[test]
    fn reads_and_savepoints_keep_the_block() {
        for sql in [
            "SELECT 1",
            "/* c */ savepoint a",
            "ROLLBACK TO SAVEPOINT a",
            "SHOW x",
        ] {
            assert!(keeps_block(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "COMMIT",
            "END",
            "ROLLBACK",
            "ABORT",
            "CALL p()",
            "UPDATE t SET v = 1",
            "",
        ] {
            assert!(!keeps_block(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn only_one_begin_or_savepoint_holds_nothing() {
        for sql in [
            "BEGIN",
            "begin isolation level serializable;",
            "/* pgJDBC */ START TRANSACTION READ WRITE",
            "SAVEPOINT PGJDBC_AUTOSAVE ; ",
        ] {
            assert!(holds_nothing(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "BEGIN; SELECT * FROM t FOR UPDATE",
            "SAVEPOINT a; UPDATE t SET v = 1",
            "START",
            "ROLLBACK TO SAVEPOINT a",
            "SELECT 1",
            "",
        ] {
            assert!(!holds_nothing(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn statements_only_a_block_gives_meaning_are_named_as_postgresql_names_them() {
        for (sql, what) in [
            ("SAVEPOINT a", Some("SAVEPOINT")),
            ("release a", Some("RELEASE SAVEPOINT")),
            ("ROLLBACK TO a", Some("ROLLBACK TO SAVEPOINT")),
            ("/* x */ LOCK TABLE t IN SHARE MODE", Some("LOCK TABLE")),
            ("DECLARE c CURSOR FOR SELECT 1", Some("DECLARE CURSOR")),
            (
                "DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1",
                Some("DECLARE CURSOR"),
            ),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", None),
            ("DECLARE \"c\" CURSOR FOR SELECT 1", None),
            ("ROLLBACK", None),
            ("SELECT 1", None),
        ] {
            assert_eq!(needs_a_block(sql.as_bytes()), what, "{sql}");
        }
    }

    #[test]
    fn statements_that_begin_end_or_prepare_a_block_are_told_apart() {
        for sql in [
            "BEGIN",
            "start transaction",
            "/* x */ COMMIT AND CHAIN",
            "end",
            "ABORT",
            "ROLLBACK",
            "rollback prepared 'x'",
            "PREPARE TRANSACTION 'x'",
        ] {
            assert!(changes_the_block(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "ROLLBACK TO SAVEPOINT a",
            "PREPARE s AS SELECT 1",
            "SELECT 'BEGIN'",
            "",
        ] {
            assert!(!changes_the_block(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn the_begin_ends_at_its_execute_and_the_batch_at_its_sync() {
        let parse = msg(frontend::PARSE, b"\0BEGIN\0\0\0");
        let bind = msg(frontend::BIND, b"\0\0\0\0\0\0\0\0");
        let execute = msg(frontend::EXECUTE, b"\0\0\0\0\0");
        let sync = msg(frontend::SYNC, b"");
        let begin: Vec<u8> = [&parse[..], &bind, &execute].concat();
        let batch: Vec<u8> = [&begin[..], &parse, &bind, &execute, &sync].concat();
        assert_eq!(
            begin_messages(&batch, 1 << 20).unwrap(),
            BeginShape::Messages(begin.len())
        );
        assert!(
            matches!(batch_len(&batch, 1 << 20).unwrap(), BatchLen::Sync(n) if n == batch.len())
        );
        // Without its Execute there is no BEGIN to run yet.
        let unfinished = [&parse[..], &bind].concat();
        assert_eq!(
            begin_messages(&unfinished, 1 << 20).unwrap(),
            BeginShape::NotYet
        );
        let other = [&parse[..], &sync].concat();
        assert_eq!(begin_messages(&other, 1 << 20).unwrap(), BeginShape::Other);
        // A Flush before the Sync: the client reads replies mid-batch.
        let flushed = [&begin[..], &msg(frontend::FLUSH, b"")].concat();
        assert!(matches!(
            batch_len(&flushed, 1 << 20).unwrap(),
            BatchLen::Flushed
        ));
        assert!(matches!(
            batch_len(&begin, 1 << 20).unwrap(),
            BatchLen::NotYet
        ));
    }
}
