//! The server-side objects a PostgreSQL session has created through the extended
//! protocol: prepared statements by name, portals with their Bind parameters, and the
//! queue of requests whose completion is still outstanding.
//!
//! Owns that bookkeeping only: never touches a socket, never decides what to relay.
//! Invariant: a statement or portal is recorded only once the server confirmed it
//! (ParseComplete / BindComplete), and forgotten once CloseComplete or the end of the
//! transaction destroyed it, so the map equals the server's view at every sync point.
//!
//! Protocol rules (PostgreSQL docs, "Extended Query"): replies come in request order;
//! after an error the server discards messages until Sync, so requests still queued
//! when ReadyForQuery arrives were never executed. ("COPY Operations"): the backend
//! ignores Sync and Flush while in copy-in mode, so a Sync the client sent between the
//! request that started COPY FROM STDIN and its CopyDone/CopyFail gets no
//! ReadyForQuery.

use super::follow_up::FollowUp;
use crate::wire::pg::messages::extended::{Bind, Close, Parse, Target};
use crate::wire::pg::reader::Truncated;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};

/// A prepared statement as the client parsed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub sql: Bytes,
    pub param_types: Vec<u32>,
    /// The parameter types the server inferred for it, once tandem asked (AT binds
    /// the parameters of its before image with them); a statement keeps its types
    /// until it is parsed again or closed.
    pub inferred: Option<Vec<u32>>,
    /// The `Tracked::names_epoch` in which tandem last knew the backend's statement of
    /// this name to be this one: from its ParseComplete, or from the backend's own list
    /// (`confirm_statement`).
    pub known_in_epoch: u64,
    /// The text the backend holds under this name where tandem prepared a stand-in in
    /// the client's stead (a control function's, which tandem answers itself).
    pub stand_in: Option<Bytes>,
}

/// A portal: the statement it was bound from and the Bind body, kept whole so that the
/// parameters can be decoded in either format when they are needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Portal {
    pub statement: Bytes,
    /// The text of the statement it binds, as tandem could tell it at the Bind: the
    /// statement may be closed or replaced since, the portal lives on. None: tandem
    /// could not tell (`Tracked::statement_opaque`, `bind_statement_uncertain`).
    pub sql: Option<Bytes>,
    bind: Bytes,
    /// The batch its Bind was sent in (see `Tracked::sync_points_sent`).
    batch: u64,
    /// What the branch does once an Execute of it completes (follow_up.rs); taken
    /// then, so that it is followed once.
    follow_up: Option<FollowUp>,
    /// An Execute of it completed (not one the backend skipped): its statement ran.
    pub executed: bool,
    /// Bound while the session was bound to a global transaction: tandem judged its
    /// statement at the Bind.
    pub judged: bool,
}

impl Portal {
    /// The Bind message this portal came from.
    pub fn bind(&self) -> Result<Bind<'_>, Truncated> {
        Bind::decode(&self.bind)
    }
}

/// A request whose reply is still outstanding.
#[derive(Debug)]
enum Outstanding {
    Parse {
        name: Bytes,
        statement: Statement,
        /// tandem replaced it with SQL that fails, to answer with this error instead.
        refused: Option<Refusal>,
    },
    Bind {
        name: Bytes,
        portal: Portal,
        /// tandem replaced it with a Bind that fails, to answer with this error instead.
        refused: Option<Refusal>,
    },
    Close {
        target: Target,
        name: Bytes,
    },
    /// Done at CommandComplete, EmptyQueryResponse or PortalSuspended (a COPY's after
    /// its data). `follow_up`: its portal's when it was sent (the portal keeps the one
    /// that is taken, so that it is followed once).
    Execute {
        portal: Bytes,
        follow_up: Option<FollowUp>,
    },
    /// Done at RowDescription or NoData.
    Describe,
    /// Sync, Query or FunctionCall: each ends with ReadyForQuery. `batch`: its number
    /// (see `Tracked::batch_being_sent`).
    SyncPoint {
        kind: SyncKind,
        batch: u64,
        /// A Query's: what the branch does once its statement completed.
        follow_up: Option<FollowUp>,
    },
    /// The client ended a COPY IN (CopyDone or CopyFail) before the backend said
    /// it had started one.
    CopyEnd,
}

/// The request behind a sync point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    Sync,
    Query,
    FunctionCall,
}

/// What an error in an extended-protocol batch made the backend skip
/// (`Tracked::on_error_response`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkippedToSync {
    /// Queries and FunctionCalls sent before the client's next Sync: no ReadyForQuery
    /// comes for them.
    pub sync_points: u32,
    /// That Sync is sent already.
    pub sync_queued: bool,
}

/// The error tandem answers a refused Parse with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub sqlstate: &'static str,
    pub message: String,
}

/// Takes sync point `batch` off `queued`: from the front, as replies come, or from
/// where it stands when an error or a COPY means it gets no reply.
fn forget_sync_point(queued: &mut VecDeque<u64>, batch: u64) {
    if queued.front() == Some(&batch) {
        queued.pop_front();
    } else if let Some(at) = queued.iter().position(|&b| b == batch) {
        queued.remove(at);
    }
}

/// A reply did not match the request at the head of the queue.
#[derive(Debug, PartialEq, Eq)]
pub struct OutOfOrder(pub &'static str);

/// The name PostgreSQL keeps for a statement or portal named `name`: the first
/// NAMEDATALEN - 1 bytes (its hash tables of statements and portals compare no
/// more), so that two longer names alike there are one.
pub fn backend_name(name: &[u8]) -> &[u8] {
    const NAME_BYTES: usize = 63;
    &name[..name.len().min(NAME_BYTES)]
}

/// The Parses of one name in flight.
#[derive(Debug)]
struct ParsesInFlight {
    count: usize,
    /// The latest one's statement (they leave the queue in order, the latest last).
    latest: Statement,
    /// `sync_points_sent` when the latest was sent: it belongs to the next batch.
    latest_after_batch: u64,
}

#[derive(Debug, Default)]
pub struct Tracked {
    statements: HashMap<Bytes, Statement>,
    portals: HashMap<Bytes, Portal>,
    outstanding: VecDeque<Outstanding>,
    /// The Parses in `outstanding`, by name: what a Bind sent now binds, found without
    /// walking the queue (a pipeline of thousands of Binds behind one Parse walked it
    /// for each). Kept by `push_parse` and `forget`.
    parses_in_flight: HashMap<Bytes, ParsesInFlight>,
    /// The batch numbers of the SyncPoints in `outstanding` (kept by
    /// `on_sync_point_request` and `forget`).
    /// In the order they were sent (a queue, not a set: every Query adds one and its
    /// ReadyForQuery takes it off the front, with no allocation in between).
    sync_points_queued: VecDeque<u64>,
    /// The backend is in copy-in mode and the client has not ended it yet.
    copy_in: bool,
    /// Sync, Query and FunctionCall messages sent: the number of the batch under way.
    sync_points_sent: u64,
    /// The number of the last batch a ReadyForQuery answered (a Sync the backend
    /// ignored in copy-in mode gets none, and leaves a gap).
    last_batch_answered: u64,
    /// The backend's unnamed statement is tandem's (a client's write sent as a Query,
    /// which tandem ran as Parse/Bind/Execute) until a client's Parse of it completes.
    unnamed_is_tandems: bool,
    /// Counts the statements that may have made, dropped or replaced named statements
    /// where no message tells which: SQL-level `PREPARE` and `DEALLOCATE`, `DO` and
    /// `CALL` (whose code may run either), and any statement that failed (a `DO` that
    /// fails half-way keeps what it prepared). A named statement known in an earlier
    /// epoch is unverified (`statement_unverified`).
    names_epoch: u64,
    /// Counts the Parse, Close, Query and FunctionCall messages sent: any of them may
    /// make, drop or replace named statements.
    name_messages: u64,
}

impl Tracked {
    pub fn statement(&self, name: &[u8]) -> Option<&Statement> {
        let name = backend_name(name);
        self.statements.get(name)
    }

    /// The statement a Bind sent now binds: the latest Parse of that name still in
    /// flight (the backend runs messages in order), or else the recorded one.
    pub fn statement_for_bind(&self, name: &[u8]) -> Option<&Statement> {
        let name = backend_name(name);
        self.parses_in_flight
            .get(name)
            .map(|parses| &parses.latest)
            .or_else(|| self.statements.get(name))
    }

    /// Whether a Bind of `name` sent now may run another statement than
    /// `statement_for_bind` names: the latest Parse of that name in flight is in an
    /// earlier batch, and an older definition of the name exists for the Bind to run
    /// should that Parse not take effect (PostgreSQL refuses a Parse of a name in use,
    /// 42P05, and skips what follows an error up to the batch's Sync: a skipped Parse
    /// of the unnamed statement leaves the old one). Within one batch the latest Parse
    /// is right: if it does not take effect, the Bind is skipped with it.
    pub fn bind_statement_uncertain(&self, name: &[u8]) -> bool {
        let name = backend_name(name);
        let Some(parses) = self.parses_in_flight.get(name) else {
            return false;
        };
        let definitions = usize::from(self.statements.contains_key(name)) + parses.count;
        let sync_point_after_it = self
            .sync_points_queued
            .back()
            .is_some_and(|&batch| batch > parses.latest_after_batch);
        sync_point_after_it && definitions > 1
    }

    /// Remembers the types the server inferred for the recorded statement `name` (not
    /// for one still in flight, which is a different statement until it completes).
    pub fn remember_inferred(&mut self, name: &[u8], types: &[u32]) {
        let name = backend_name(name);
        if self.parse_in_flight(name) {
            return;
        }
        if let Some(statement) = self.statements.get_mut(name) {
            statement.inferred = Some(types.to_vec());
        }
    }

    pub fn portal(&self, name: &[u8]) -> Option<&Portal> {
        let name = backend_name(name);
        self.portals.get(name)
    }

    /// The text the recorded portal `name` runs: its statement's as it was at the Bind
    /// (closed or replaced since, the portal still runs that). None: no such portal, or
    /// tandem could not tell what it binds.
    pub fn portal_sql(&self, name: &[u8]) -> Option<&Bytes> {
        self.portal(name)?.sql.as_ref()
    }

    pub fn portal_count(&self) -> usize {
        self.portals.len()
    }

    /// Whether any request still awaits its reply.
    pub fn has_outstanding(&self) -> bool {
        !self.outstanding.is_empty()
    }

    /// What `name_messages` counts: what tandem learned of named statements holds
    /// while it stays the same.
    pub fn name_messages(&self) -> u64 {
        self.name_messages
    }

    pub fn on_parse(&mut self, body: &[u8]) -> Result<(), Truncated> {
        self.name_messages += 1;
        let parse = Parse::decode(body)?;
        let name = Bytes::copy_from_slice(backend_name(parse.name));
        let statement = Statement {
            sql: Bytes::copy_from_slice(parse.sql),
            param_types: parse.param_types,
            inferred: None,
            known_in_epoch: 0,
            stand_in: None,
        };
        let after_batch = self.sync_points_sent;
        self.parses_in_flight
            .entry(name.clone())
            .and_modify(|parses| {
                parses.count += 1;
                parses.latest = statement.clone();
                parses.latest_after_batch = after_batch;
            })
            .or_insert_with(|| ParsesInFlight {
                count: 1,
                latest: statement.clone(),
                latest_after_batch: after_batch,
            });
        self.outstanding.push_back(Outstanding::Parse {
            name,
            statement,
            refused: None,
        });
        Ok(())
    }

    /// Takes the request at the head of the queue.
    fn pop_front(&mut self) -> Option<Outstanding> {
        let popped = self.outstanding.pop_front()?;
        self.forget(&popped);
        Some(popped)
    }

    /// Keeps `parses_in_flight` and `sync_points_queued` in step with a request that
    /// left the queue.
    fn forget(&mut self, left: &Outstanding) {
        match left {
            Outstanding::Parse { name, .. } => {
                if let Some(parses) = self.parses_in_flight.get_mut(name) {
                    parses.count -= 1;
                    if parses.count == 0 {
                        self.parses_in_flight.remove(name);
                    }
                }
            }
            Outstanding::SyncPoint { batch, .. } => {
                forget_sync_point(&mut self.sync_points_queued, *batch);
            }
            _ => {}
        }
    }

    /// A statement tandem created on the backend itself for the client (the client's
    /// Parse, `body`, was answered by tandem, not relayed), as `stand_in`.
    pub fn record_statement(&mut self, body: &[u8], stand_in: &[u8]) -> Result<(), Truncated> {
        let parse = Parse::decode(body)?;
        let stand_in = Bytes::copy_from_slice(Parse::decode(stand_in)?.sql);
        self.unnamed_is_tandems &= !parse.name.is_empty();
        self.statements.insert(
            Bytes::copy_from_slice(backend_name(parse.name)),
            Statement {
                sql: Bytes::copy_from_slice(parse.sql),
                param_types: parse.param_types,
                inferred: None,
                known_in_epoch: self.names_epoch,
                stand_in: Some(stand_in),
            },
        );
        Ok(())
    }

    /// `follow_up`: what the branch does once the portal has run; `judged`: the session
    /// is bound (tandem judged the statement at this Bind).
    pub fn on_bind(
        &mut self,
        body: &[u8],
        follow_up: Option<FollowUp>,
        judged: bool,
    ) -> Result<(), Truncated> {
        let bind = Bind::decode(body)?;
        let name = Bytes::copy_from_slice(backend_name(bind.portal));
        let statement = Bytes::copy_from_slice(backend_name(bind.statement));
        let sql = if self.statement_opaque(bind.statement)
            || self.statement_unverified(bind.statement)
            || self.bind_statement_uncertain(bind.statement)
        {
            None
        } else {
            self.statement_for_bind(bind.statement)
                .map(|s| s.sql.clone())
        };
        self.outstanding.push_back(Outstanding::Bind {
            name,
            portal: Portal {
                statement,
                sql,
                bind: Bytes::copy_from_slice(body),
                batch: self.sync_points_sent,
                follow_up,
                executed: false,
                judged,
            },
            refused: None,
        });
        Ok(())
    }

    pub fn on_close(&mut self, body: &[u8]) -> Result<(), Truncated> {
        self.name_messages += 1;
        if let Some(close) = Close::decode(body)? {
            self.outstanding.push_back(Outstanding::Close {
                target: close.target,
                name: Bytes::copy_from_slice(backend_name(close.name)),
            });
        }
        Ok(())
    }

    pub fn on_execute(&mut self, body: &[u8]) {
        let portal = backend_name(
            crate::wire::pg::reader::Reader::new(body)
                .cstr()
                .unwrap_or(b""),
        );
        let follow_up = self
            .portal_as_sent(portal)
            .and_then(|p| p.follow_up.clone());
        self.outstanding.push_back(Outstanding::Execute {
            portal: Bytes::copy_from_slice(portal),
            follow_up,
        });
    }

    /// The portal `name` as the requests sent so far leave it: the latest Bind of it
    /// still in flight, or else the recorded one.
    fn portal_as_sent(&self, name: &[u8]) -> Option<&Portal> {
        let name = backend_name(name);
        let in_flight = self.outstanding.iter().rev().find_map(|o| match o {
            Outstanding::Bind {
                name: n, portal, ..
            } if n[..] == *name => Some(portal),
            _ => None,
        });
        in_flight.or_else(|| self.portals.get(name))
    }

    /// Whether an Execute of a portal with a follow-up is in flight: until it completes
    /// the branch may not be as it will be.
    pub fn follow_up_in_flight(&self) -> bool {
        self.follow_ups_in_flight().next().is_some()
    }

    /// Whether a SAVEPOINT of this name is in flight (its Execute sent, not complete).
    pub fn savepoint_set_in_flight(&self, name: &str) -> bool {
        self.follow_ups_in_flight().any(
            |f| matches!(f, FollowUp::Savepoint(tandem_undo::SavepointOp::Set(set)) if set == name),
        )
    }

    fn follow_ups_in_flight(&self) -> impl Iterator<Item = &FollowUp> {
        self.outstanding.iter().filter_map(|o| match o {
            Outstanding::Execute {
                follow_up: Some(f), ..
            }
            | Outstanding::SyncPoint {
                follow_up: Some(f), ..
            } => Some(f),
            _ => None,
        })
    }

    /// A CommandComplete arrived: an Execute's (`on_execute_done`), or else the
    /// statement of the Query in line. Returns the follow-up now due, once.
    pub fn on_command_complete(&mut self) -> Option<FollowUp> {
        if let Some(popped) = self.pop_done(|o| matches!(o, Outstanding::Execute { .. })) {
            return self.follow_up_of_executed(popped);
        }
        match self.outstanding.front_mut() {
            Some(Outstanding::SyncPoint {
                kind: SyncKind::Query,
                follow_up,
                ..
            }) => follow_up.take(),
            _ => None,
        }
    }

    pub fn on_describe(&mut self) {
        self.outstanding.push_back(Outstanding::Describe);
    }

    /// An Execute's portal completed (CommandComplete, EmptyQueryResponse or
    /// PortalSuspended). With no Execute in line the reply is a Query's. Returns the
    /// portal's follow-up, now due if the reply is a CommandComplete.
    pub fn on_execute_done(&mut self) -> Option<FollowUp> {
        let popped = self.pop_done(|o| matches!(o, Outstanding::Execute { .. }))?;
        self.follow_up_of_executed(popped)
    }

    fn follow_up_of_executed(&mut self, executed: Outstanding) -> Option<FollowUp> {
        let Outstanding::Execute { portal, follow_up } = executed else {
            return None;
        };
        let portal = self.portals.get_mut(&portal)?;
        portal.executed = true;
        follow_up.and(portal.follow_up.take())
    }

    /// A Describe was answered (RowDescription or NoData). With no Describe in line the
    /// reply is a Query's.
    pub fn on_describe_done(&mut self) {
        self.pop_done(|o| matches!(o, Outstanding::Describe));
    }

    /// Takes the first request that `done` matches off the queue, and the Executes and
    /// Describes ahead of it, whose replies came before (replies come in request
    /// order), and the CopyDone/CopyFail ahead of it (see `drop_answered_ahead`).
    /// Nothing if another request is ahead.
    fn pop_done(&mut self, done: impl Fn(&Outstanding) -> bool) -> Option<Outstanding> {
        let at = self.outstanding.iter().position(|o| {
            done(o)
                || !matches!(
                    o,
                    Outstanding::Execute { .. } | Outstanding::Describe | Outstanding::CopyEnd
                )
        })?;
        if !done(&self.outstanding[at]) {
            return None;
        }
        let mut last = None;
        for _ in 0..=at {
            last = self.pop_front();
        }
        last
    }

    /// A reply to a request arrived, and CopyDone/CopyFail are at the head of the
    /// queue: no CopyInResponse took them off it, so no request before them started a
    /// COPY, and the backend ignored them (as it does outside copy-in mode).
    fn drop_stray_copy_ends(&mut self) {
        while matches!(self.outstanding.front(), Some(Outstanding::CopyEnd)) {
            self.pop_front();
        }
    }

    /// The reply of a Parse, Bind or Close arrived: Executes and Describes ahead of it
    /// in line are over. So is a CopyDone or CopyFail ahead of it: no CopyInResponse
    /// took it off the queue, so no request before it started a COPY, and the backend
    /// ignored it (as it does one sent outside copy-in mode, stray in a batch).
    fn drop_answered_ahead(&mut self) {
        while matches!(
            self.outstanding.front(),
            Some(Outstanding::Execute { .. } | Outstanding::Describe | Outstanding::CopyEnd)
        ) {
            self.pop_front();
        }
    }

    /// Sync, Query or FunctionCall was sent. Returns false for a Sync the backend will
    /// ignore because it arrives during copy-in mode.
    pub fn on_sync_point_request(&mut self, kind: SyncKind) -> bool {
        if kind != SyncKind::Sync {
            self.name_messages += 1;
        }
        if self.copy_in && kind == SyncKind::Sync {
            return false;
        }
        self.sync_points_sent += 1;
        self.sync_points_queued.push_back(self.sync_points_sent);
        self.outstanding.push_back(Outstanding::SyncPoint {
            kind,
            batch: self.sync_points_sent,
            follow_up: None,
        });
        true
    }

    /// The Query just sent is followed so once its statement completed.
    pub fn follow_up_last_query(&mut self, follow_up: FollowUp) {
        if let Some(Outstanding::SyncPoint {
            kind: SyncKind::Query,
            follow_up: slot,
            ..
        }) = self.outstanding.back_mut()
        {
            *slot = Some(follow_up);
        }
    }

    /// The number of the batch the client is sending now: its sync point, not sent
    /// yet, will be the next one.
    pub fn batch_being_sent(&self) -> u64 {
        self.sync_points_sent + 1
    }

    /// The number of the batch the backend is answering now: the first sync point
    /// still waiting for its ReadyForQuery (or the next one to be sent).
    pub fn batch_being_answered(&self) -> u64 {
        self.outstanding
            .iter()
            .find_map(|o| match o {
                Outstanding::SyncPoint { batch, .. } => Some(*batch),
                _ => None,
            })
            .unwrap_or(self.sync_points_sent + 1)
    }

    /// The number of the batch the last ReadyForQuery answered.
    pub fn last_batch_answered(&self) -> u64 {
        self.last_batch_answered
    }

    /// Whether the portal an Execute sent now runs was bound in the same batch (since
    /// the last Sync, Query or FunctionCall), its Bind still in flight or not.
    pub fn bound_in_this_batch(&self, name: &[u8]) -> bool {
        self.portal_as_sent(name)
            .is_some_and(|portal| portal.batch == self.sync_points_sent)
    }

    /// The client sent CopyDone or CopyFail.
    pub fn on_copy_end(&mut self) {
        if self.copy_in {
            self.copy_in = false;
        } else {
            self.outstanding.push_back(Outstanding::CopyEnd);
        }
    }

    /// The backend sent CopyInResponse. Returns how many Syncs already sent it will
    /// ignore: those queued before the client's CopyDone/CopyFail. Every sync point
    /// queued now was sent after the request that started the COPY, because the
    /// replies to earlier ones precede CopyInResponse on the wire.
    pub fn on_copy_in_response(&mut self) -> u32 {
        // It answers the request at the head of the queue: a CopyDone or CopyFail
        // ahead of that request came before any COPY, and the backend ignored it.
        self.drop_stray_copy_ends();
        let mut ignored = 0;
        let mut ended = false;
        let queued = &mut self.sync_points_queued;
        self.outstanding.retain(|o| {
            if ended {
                return true;
            }
            match o {
                Outstanding::SyncPoint {
                    kind: SyncKind::Sync,
                    batch,
                    ..
                } => {
                    forget_sync_point(queued, *batch);
                    ignored += 1;
                    false
                }
                Outstanding::CopyEnd => {
                    ended = true;
                    false
                }
                _ => true,
            }
        });
        self.copy_in = !ended;
        ignored
    }

    /// The Parse just queued (the client's) went to the backend as `stand_in` (a
    /// Parse body) in its stead.
    pub fn stand_in_last(&mut self, stand_in: &[u8]) -> Result<(), Truncated> {
        let stand_in = Bytes::copy_from_slice(Parse::decode(stand_in)?.sql);
        if let Some(Outstanding::Parse {
            name, statement, ..
        }) = self.outstanding.back_mut()
        {
            // The latest Parse of its name: what a Bind of it now finds.
            if let Some(parses) = self.parses_in_flight.get_mut(name) {
                parses.latest.stand_in = Some(stand_in.clone());
            }
            statement.stand_in = Some(stand_in);
        }
        Ok(())
    }

    /// Marks the Parse or Bind just queued as refused by tandem.
    pub fn refuse_last(&mut self, refusal: Refusal) {
        match self.outstanding.back_mut() {
            Some(Outstanding::Parse { refused, .. }) | Some(Outstanding::Bind { refused, .. }) => {
                *refused = Some(refusal);
            }
            _ => {}
        }
    }

    /// An ErrorResponse arrived: if it answers a Parse tandem refused, that Parse is
    /// done and the client gets tandem's error in its place.
    pub fn take_refusal(&mut self) -> Option<Refusal> {
        self.drop_stray_copy_ends();
        match self.outstanding.front() {
            Some(Outstanding::Parse {
                refused: Some(_), ..
            })
            | Some(Outstanding::Bind {
                refused: Some(_), ..
            }) => match self.pop_front() {
                Some(Outstanding::Parse { refused, .. })
                | Some(Outstanding::Bind { refused, .. }) => refused,
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the backend is in copy-in mode and the client has not ended it: what
    /// the client sends now is COPY data, or a protocol error the backend reports.
    pub fn copying_in(&self) -> bool {
        self.copy_in
    }

    /// The backend sent ErrorResponse: an error ends copy-in mode on its side. When it
    /// answers an extended-protocol message (the first request still awaiting its
    /// reply is a Parse, Bind, Close, Execute or Describe), the backend discards
    /// everything up to the client's next Sync: the Queries and FunctionCalls queued
    /// before that Sync get no reply at all, and are forgotten here. (With a Query
    /// first in line the error is the Query's own: nothing is forgotten then.)
    pub fn on_error_response(&mut self) -> SkippedToSync {
        self.copy_in = false;
        self.drop_stray_copy_ends();
        let extended = matches!(
            self.outstanding.front(),
            Some(
                Outstanding::Parse { .. }
                    | Outstanding::Bind { .. }
                    | Outstanding::Close { .. }
                    | Outstanding::Execute { .. }
                    | Outstanding::Describe
            )
        );
        if !extended {
            return SkippedToSync::default();
        }
        self.skip_to_sync()
    }

    /// The error of a Parse or Bind tandem refused (`take_refusal` took it): as
    /// `on_error_response` for any extended-protocol message.
    pub fn on_refusal_error(&mut self) -> SkippedToSync {
        self.copy_in = false;
        self.skip_to_sync()
    }

    fn skip_to_sync(&mut self) -> SkippedToSync {
        let mut skipped = SkippedToSync::default();
        let queued = &mut self.sync_points_queued;
        self.outstanding.retain(|o| match o {
            _ if skipped.sync_queued => true,
            Outstanding::SyncPoint {
                kind: SyncKind::Sync,
                ..
            } => {
                skipped.sync_queued = true;
                true
            }
            Outstanding::SyncPoint { batch, .. } => {
                forget_sync_point(queued, *batch);
                skipped.sync_points += 1;
                false
            }
            // The failed request's own reply was this error; the rest get none.
            Outstanding::Execute { .. } | Outstanding::Describe => false,
            _ => true,
        });
        skipped
    }

    pub fn on_parse_complete(&mut self) -> Result<(), OutOfOrder> {
        self.drop_answered_ahead();
        match self.pop_front() {
            Some(Outstanding::Parse {
                name,
                mut statement,
                ..
            }) => {
                self.unnamed_is_tandems &= !name.is_empty();
                // What ran before this Parse cannot have replaced it.
                statement.known_in_epoch = self.names_epoch;
                self.statements.insert(name, statement);
                Ok(())
            }
            _ => Err(OutOfOrder("ParseComplete without an outstanding Parse")),
        }
    }

    pub fn on_bind_complete(&mut self) -> Result<(), OutOfOrder> {
        self.drop_answered_ahead();
        match self.pop_front() {
            Some(Outstanding::Bind { name, portal, .. }) => {
                self.portals.insert(name, portal);
                Ok(())
            }
            _ => Err(OutOfOrder("BindComplete without an outstanding Bind")),
        }
    }

    pub fn on_close_complete(&mut self) -> Result<(), OutOfOrder> {
        self.drop_answered_ahead();
        match self.pop_front() {
            Some(Outstanding::Close { target, name }) => {
                match target {
                    Target::Statement => {
                        self.statements.remove(&name);
                    }
                    Target::Portal => {
                        self.portals.remove(&name);
                    }
                }
                Ok(())
            }
            _ => Err(OutOfOrder("CloseComplete without an outstanding Close")),
        }
    }

    /// ReadyForQuery arrived: requests queued before the sync point that were never
    /// answered were skipped after an error. Portals do not outlive their transaction.
    pub fn on_ready_for_query(&mut self, transaction_ended: bool) -> Result<(), OutOfOrder> {
        let answered = loop {
            match self.pop_front() {
                Some(Outstanding::SyncPoint { kind, batch, .. }) => {
                    self.last_batch_answered = batch;
                    break kind;
                }
                Some(_) => continue,
                None => return Err(OutOfOrder("ReadyForQuery without a Sync or Query")),
            }
        };
        // The end of a COPY the client sent right behind a Query that was to start it:
        // the Query is over and no COPY started (it failed, or tandem refused it), and
        // the backend ignores CopyDone and CopyFail outside copy-in mode. (Behind a
        // Sync, an Execute still to come may start one.)
        while answered == SyncKind::Query
            && matches!(self.outstanding.front(), Some(Outstanding::CopyEnd))
        {
            self.pop_front();
        }
        if answered == SyncKind::Query {
            // PostgreSQL runs a simple Query as if in the unnamed statement and portal,
            // dropping the client's (docs, "Simple Query").
            self.statements.remove(&b""[..]);
            self.portals.remove(&b""[..]);
        }
        if transaction_ended {
            self.portals.clear();
        }
        Ok(())
    }

    /// tandem parsed the unnamed statement on the backend itself.
    pub fn tandem_parsed_unnamed(&mut self) {
        self.unnamed_is_tandems = true;
    }

    /// Whether a client's Bind or Describe of `statement` would meet tandem's unnamed
    /// statement where PostgreSQL has none of the client's (a Query dropped it, or there
    /// never was one): PostgreSQL answers 26000 there.
    pub fn meets_tandems_unnamed(&self, statement: &[u8]) -> bool {
        statement.is_empty() && self.unnamed_is_tandems && self.statement_for_bind(b"").is_none()
    }

    /// `DISCARD ALL` or `DEALLOCATE ALL` completed.
    pub fn forget_all_statements(&mut self) {
        self.statements.clear();
    }

    /// A statement that may have made, dropped or replaced named statements completed
    /// (`names_epoch`): its tag names none.
    pub fn on_names_may_have_changed(&mut self) {
        self.names_epoch += 1;
    }

    /// Whether tandem cannot tell what the named statement `name` is: it never saw it
    /// prepared over the protocol (SQL-level `PREPARE` makes statements a Bind may
    /// name, run by the client or inside a function, where no CommandComplete tells),
    /// or it forgot it once the backend's list showed it replaced (`confirm_statement`).
    pub fn statement_opaque(&self, name: &[u8]) -> bool {
        !name.is_empty() && self.statement_for_bind(name).is_none()
    }

    /// The names of the recorded statements that are unverified (`statement_unverified`).
    pub fn unverified_names(&self) -> Vec<Bytes> {
        self.unverified().map(|(name, _)| name.clone()).collect()
    }

    pub fn has_unverified(&self) -> bool {
        self.unverified().next().is_some()
    }

    fn unverified(&self) -> impl Iterator<Item = (&Bytes, &Statement)> {
        self.statements
            .iter()
            .filter(|(name, s)| !name.is_empty() && self.known_before_last_change(s))
    }

    /// Whether a statement that may replace named ones ran since tandem last knew `s`.
    fn known_before_last_change(&self, s: &Statement) -> bool {
        s.known_in_epoch < self.names_epoch
    }

    /// Whether a Parse of `name` (as the backend keeps it) awaits its reply.
    fn parse_in_flight(&self, name: &[u8]) -> bool {
        self.parses_in_flight.contains_key(name)
    }

    /// Whether the recorded statement `name` (none of that name in flight) may have
    /// been replaced since tandem knew it: a statement that may replace named ones ran
    /// since (`names_epoch`). The backend's list tells (`confirm_statement`).
    pub fn statement_unverified(&self, name: &[u8]) -> bool {
        let name = backend_name(name);
        !name.is_empty()
            && !self.parse_in_flight(name)
            && self
                .statements
                .get(name)
                .is_some_and(|s| self.known_before_last_change(s))
    }

    /// The backend's text of its statement `name` as made over the protocol, None for
    /// none (dropped, or made by SQL-level PREPARE): the recorded statement is known
    /// again if that is its text (or its stand-in's), and forgotten (opaque) otherwise.
    pub fn confirm_statement(&mut self, name: &[u8], backend_sql: Option<&[u8]>) {
        let name = backend_name(name);
        match self.statements.get_mut(name) {
            Some(s) if backend_sql == Some(s.stand_in.as_ref().unwrap_or(&s.sql)) => {
                s.known_in_epoch = self.names_epoch
            }
            Some(_) => {
                self.statements.remove(name);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_body(name: &str, sql: &str) -> Vec<u8> {
        let mut b = format!("{name}\0{sql}\0").into_bytes();
        b.extend_from_slice(&0i16.to_be_bytes());
        b
    }

    fn bind_body(portal: &str, stmt: &str, value: &[u8]) -> Vec<u8> {
        let mut b = format!("{portal}\0{stmt}\0").into_bytes();
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&(value.len() as i32).to_be_bytes());
        b.extend_from_slice(value);
        b.extend_from_slice(&0i16.to_be_bytes());
        b
    }

    #[test]
    fn a_statement_known_before_a_names_changing_statement_is_unverified_until_confirmed() {
        let mut t = Tracked::default();
        t.on_parse(&parse_body("s", "select 1")).unwrap();
        t.on_parse(&parse_body("w", "update t set v = 1")).unwrap();
        t.on_sync_point_request(SyncKind::Sync);
        t.on_parse_complete().unwrap();
        t.on_parse_complete().unwrap();
        t.on_ready_for_query(false).unwrap();
        assert!(!t.statement_opaque(b"s"));
        assert!(!t.has_unverified());
        t.on_names_may_have_changed();
        assert!(t.statement_unverified(b"s") && !t.statement_opaque(b"s"));
        let mut unverified = t.unverified_names();
        unverified.sort();
        assert_eq!(unverified, [&b"s"[..], &b"w"[..]]);
        // Parsed again after it: the Parse ran later, and tells.
        t.on_parse(&parse_body("w", "update t set v = 2")).unwrap();
        assert!(!t.statement_unverified(b"w") && !t.statement_opaque(b"w"));
        t.on_sync_point_request(SyncKind::Sync);
        t.on_parse_complete().unwrap();
        t.on_ready_for_query(false).unwrap();
        assert!(!t.statement_unverified(b"w"));
        assert_eq!(t.unverified_names(), [&b"s"[..]]);
        // The backend holds another text (a DO block replaced it): forgotten for good.
        t.confirm_statement(b"s", Some(b"PREPARE s AS update t set v = 3"));
        assert!(!t.statement_unverified(b"s") && t.statement_opaque(b"s"));
        assert!(t.statement(b"s").is_none());
        // Confirmed, it is known again, until the next such statement.
        t.on_parse(&parse_body("r", "select 2")).unwrap();
        t.on_sync_point_request(SyncKind::Sync);
        t.on_parse_complete().unwrap();
        t.on_ready_for_query(false).unwrap();
        t.on_names_may_have_changed();
        t.confirm_statement(b"r", Some(b"select 2"));
        assert!(!t.statement_unverified(b"r"));
        t.on_names_may_have_changed();
        assert!(t.statement_unverified(b"r"));
        t.confirm_statement(b"r", None);
        assert!(t.statement_opaque(b"r") && t.statement(b"r").is_none());
        // A control function's stand-in is what the backend holds under its name.
        t.on_parse(&parse_body("c", "select tandem_begin()"))
            .unwrap();
        t.stand_in_last(&parse_body("c", "SELECT NULL::text AS \"xid\""))
            .unwrap();
        t.record_statement(
            &parse_body("d", "select tandem_commit()"),
            &parse_body("d", "SELECT NULL::text AS \"status\""),
        )
        .unwrap();
        t.on_sync_point_request(SyncKind::Sync);
        t.on_parse_complete().unwrap();
        t.on_ready_for_query(false).unwrap();
        t.on_names_may_have_changed();
        t.confirm_statement(b"c", Some(b"SELECT NULL::text AS \"xid\""));
        t.confirm_statement(b"d", Some(b"select tandem_commit()"));
        assert!(!t.statement_opaque(b"c") && !t.statement_unverified(b"c"));
        assert!(t.statement_opaque(b"d"), "not what the backend holds");
    }

    #[test]
    fn an_error_of_an_execute_or_describe_skips_the_queries_behind_it() {
        let mut t = Tracked::default();
        t.on_parse(&parse_body("", "select 1/0")).unwrap();
        t.on_bind(&bind_body("", "", b"x"), None, true).unwrap();
        t.on_execute(b"\0\0\0\0\0");
        t.on_sync_point_request(SyncKind::Query);
        t.on_sync_point_request(SyncKind::Sync);
        t.on_parse_complete().unwrap();
        t.on_bind_complete().unwrap();
        let skipped = t.on_error_response();
        assert_eq!(
            skipped,
            SkippedToSync {
                sync_points: 1,
                sync_queued: true
            }
        );
        let mut t = Tracked::default();
        t.on_describe();
        t.on_sync_point_request(SyncKind::Query);
        t.on_sync_point_request(SyncKind::Sync);
        assert_eq!(t.on_error_response().sync_points, 1);
    }

    #[test]
    fn an_error_after_the_executes_completed_is_the_querys_own() {
        let mut t = Tracked::default();
        t.on_describe();
        t.on_execute(b"\0\0\0\0\0");
        t.on_sync_point_request(SyncKind::Query);
        t.on_describe_done();
        t.on_execute_done();
        // The Query's own replies: nothing extended is in line for them.
        t.on_describe_done();
        t.on_execute_done();
        assert_eq!(t.on_error_response(), SkippedToSync::default());
        t.on_ready_for_query(false).unwrap();
        assert!(!t.has_outstanding());
    }

    #[test]
    fn a_later_reply_ends_the_executes_and_describes_ahead_of_it() {
        let mut t = Tracked::default();
        t.on_describe();
        t.on_execute(b"\0\0\0\0\0");
        t.on_close(b"Sx\0").unwrap();
        t.on_sync_point_request(SyncKind::Sync);
        // Replies tandem rewrote never reached the ledger: CloseComplete ends them.
        t.on_close_complete().unwrap();
        assert_eq!(t.on_error_response(), SkippedToSync::default());
        let mut t = Tracked::default();
        t.on_describe();
        t.on_execute(b"\0\0\0\0\0");
        t.on_execute_done();
        t.on_sync_point_request(SyncKind::Sync);
        t.on_ready_for_query(false).unwrap();
        assert!(!t.has_outstanding());
    }

    #[test]
    fn a_portals_follow_up_is_due_once_at_its_executes_completion() {
        use tandem_undo::SavepointOp;
        let rollback_to = FollowUp::Savepoint(SavepointOp::RollbackTo("s".into()));
        let mut t = Tracked::default();
        t.on_bind(&bind_body("p", "rb", b""), Some(rollback_to.clone()), true)
            .unwrap();
        t.on_sync_point_request(SyncKind::Sync);
        t.on_bind_complete().unwrap();
        t.on_ready_for_query(false).unwrap();
        assert!(!t.follow_up_in_flight(), "bound, not executed");
        // Executed in a later batch, twice.
        t.on_execute(b"p\0\0\0\0\0");
        t.on_execute(b"p\0\0\0\0\0");
        t.on_sync_point_request(SyncKind::Sync);
        assert!(t.follow_up_in_flight());
        assert_eq!(t.on_execute_done(), Some(rollback_to));
        assert_eq!(t.on_execute_done(), None, "followed once");
        assert!(!t.follow_up_in_flight());
    }

    #[test]
    fn a_skipped_execute_leaves_its_follow_up_with_the_portal() {
        let mut t = Tracked::default();
        t.on_bind(&bind_body("p", "rb", b""), Some(FollowUp::RolledBack), true)
            .unwrap();
        t.on_sync_point_request(SyncKind::Sync);
        t.on_bind_complete().unwrap();
        t.on_ready_for_query(false).unwrap();
        t.on_bind(&bind_body("", "nosuch", b""), None, true)
            .unwrap();
        t.on_execute(b"p\0\0\0\0\0");
        t.on_sync_point_request(SyncKind::Sync);
        t.on_error_response();
        assert!(
            !t.follow_up_in_flight(),
            "skipped with the rest of its batch"
        );
        t.on_ready_for_query(false).unwrap();
        t.on_execute(b"p\0\0\0\0\0");
        t.on_sync_point_request(SyncKind::Sync);
        assert_eq!(t.on_execute_done(), Some(FollowUp::RolledBack));
    }

    #[test]
    fn statement_is_recorded_on_parse_complete_only() {
        let mut t = Tracked::default();
        t.on_parse(&parse_body("s1", "select $1")).unwrap();
        assert!(t.statement(b"s1").is_none());
        t.on_sync_point_request(SyncKind::Sync);
        t.on_parse_complete().unwrap();
        assert_eq!(&t.statement(b"s1").unwrap().sql[..], b"select $1");
        t.on_ready_for_query(true).unwrap();
        assert!(!t.has_outstanding());
    }

    #[test]
    fn inferred_types_last_until_the_statement_is_parsed_again() {
        let mut t = Tracked::default();
        t.on_parse(&parse_body("s1", "update a set x = $1"))
            .unwrap();
        // Still in flight: not the statement the types were asked for.
        t.remember_inferred(b"s1", &[23]);
        t.on_sync_point_request(SyncKind::Sync);
        t.on_parse_complete().unwrap();
        t.on_ready_for_query(true).unwrap();
        assert_eq!(t.statement(b"s1").unwrap().inferred, None);
        t.remember_inferred(b"s1", &[23]);
        assert_eq!(
            t.statement(b"s1").unwrap().inferred.as_deref(),
            Some(&[23][..])
        );
        t.on_parse(&parse_body("s1", "update a set y = $1"))
            .unwrap();
        t.on_sync_point_request(SyncKind::Sync);
        t.on_parse_complete().unwrap();
        t.on_ready_for_query(true).unwrap();
        assert_eq!(t.statement(b"s1").unwrap().inferred, None);
    }

    #[test]
    fn a_copy_end_behind_a_query_that_started_no_copy_expects_nothing() {
        let mut t = Tracked::default();
        // asyncpg: Query(COPY … FROM STDIN), its data and CopyDone, in one write.
        t.on_sync_point_request(SyncKind::Query);
        t.on_copy_end();
        // The COPY failed: ErrorResponse, then ReadyForQuery.
        t.on_error_response();
        t.on_ready_for_query(true).unwrap();
        assert!(!t.has_outstanding());
        t.on_parse(&parse_body("s", "select 1")).unwrap();
        t.on_parse_complete().unwrap();
        // One that started: CopyInResponse takes the CopyDone as its end.
        t.on_sync_point_request(SyncKind::Query);
        t.on_copy_end();
        assert_eq!(t.on_copy_in_response(), 0);
        t.on_ready_for_query(true).unwrap();
        assert!(!t.has_outstanding());
        // Behind a Sync, an Execute may still start the COPY it ends.
        t.on_sync_point_request(SyncKind::Sync);
        t.on_execute(b"\0\0\0\0\0");
        t.on_copy_end();
        t.on_sync_point_request(SyncKind::Sync);
        t.on_ready_for_query(false).unwrap();
        assert_eq!(t.on_copy_in_response(), 0, "its own Sync is not ignored");
        t.on_execute_done();
        t.on_ready_for_query(false).unwrap();
        assert!(!t.has_outstanding());
        // Ahead of the request that starts a COPY, a CopyDone ends nothing: the
        // backend ignored it, and the COPY's Sync is ignored in copy-in mode.
        t.on_copy_end();
        t.on_execute(b"\0\0\0\0\0");
        t.on_sync_point_request(SyncKind::Sync);
        assert_eq!(t.on_copy_in_response(), 1, "the Sync sent in copy-in mode");
        assert!(t.copying_in());
    }

    #[test]
    fn an_extended_error_skips_the_queries_up_to_the_next_sync() {
        let mut t = Tracked::default();
        t.on_bind(&bind_body("", "nosuch", b""), None, true)
            .unwrap();
        t.on_sync_point_request(SyncKind::Query);
        t.on_sync_point_request(SyncKind::FunctionCall);
        t.on_sync_point_request(SyncKind::Sync);
        t.on_sync_point_request(SyncKind::Query);
        let skipped = t.on_error_response();
        assert_eq!(
            skipped,
            SkippedToSync {
                sync_points: 2,
                sync_queued: true
            }
        );
        // The Sync's ReadyForQuery, then the Query's after it.
        t.on_ready_for_query(false).unwrap();
        assert_eq!(t.last_batch_answered(), 3);
        t.on_ready_for_query(false).unwrap();
        assert!(!t.has_outstanding());
        // An error with a Query first in line is the Query's own: nothing is skipped.
        t.on_sync_point_request(SyncKind::Query);
        t.on_sync_point_request(SyncKind::Query);
        assert_eq!(t.on_error_response(), SkippedToSync::default());
        // No Sync sent yet: the batch is unsynced again.
        t.on_ready_for_query(false).unwrap();
        t.on_ready_for_query(false).unwrap();
        t.on_parse(&parse_body("", "selec")).unwrap();
        t.on_sync_point_request(SyncKind::Query);
        assert_eq!(
            t.on_error_response(),
            SkippedToSync {
                sync_points: 1,
                sync_queued: false
            }
        );
    }

    #[test]
    fn a_query_drops_the_unnamed_statement_and_portal_and_no_other() {
        let mut t = Tracked::default();
        for name in ["", "s1"] {
            t.on_parse(&parse_body(name, "select 1")).unwrap();
            t.on_bind(&bind_body(name, name, b""), None, true).unwrap();
        }
        t.on_sync_point_request(SyncKind::Sync);
        for _ in 0..2 {
            t.on_parse_complete().unwrap();
            t.on_bind_complete().unwrap();
        }
        t.on_ready_for_query(false).unwrap();
        // A Query, and behind it (not yet run) a Parse of the unnamed statement.
        t.on_sync_point_request(SyncKind::Query);
        t.on_parse(&parse_body("", "select 2")).unwrap();
        t.on_ready_for_query(false).unwrap();
        assert!(t.statement(b"").is_none() && t.portal(b"").is_none());
        assert!(t.statement(b"s1").is_some() && t.portal(b"s1").is_some());
        t.on_parse_complete().unwrap();
        assert_eq!(&t.statement(b"").unwrap().sql[..], b"select 2");
    }

    #[test]
    fn a_bind_binds_the_parse_still_in_flight() {
        let mut t = Tracked::default();
        t.on_parse(&parse_body("", "update a set x = 1")).unwrap();
        t.on_sync_point_request(SyncKind::Sync);
        t.on_parse_complete().unwrap();
        t.on_ready_for_query(true).unwrap();
        // The next batch re-parses the unnamed statement; its Bind follows at once.
        t.on_parse(&parse_body("", "insert into h values ($1)"))
            .unwrap();
        assert_eq!(&t.statement(b"").unwrap().sql[..], b"update a set x = 1");
        assert_eq!(
            &t.statement_for_bind(b"").unwrap().sql[..],
            b"insert into h values ($1)"
        );
        assert!(t.statement_for_bind(b"other").is_none());
    }

    /// What `statement_for_bind` and `bind_statement_uncertain` answer, worked out by
    /// walking the whole queue as they once did.
    fn walked(t: &Tracked, name: &[u8]) -> (Option<Bytes>, bool) {
        let in_flight = t.outstanding.iter().rev().find_map(|o| match o {
            Outstanding::Parse {
                name: parsed,
                statement,
                ..
            } if parsed.as_ref() == name => Some(statement),
            _ => None,
        });
        let statement = in_flight
            .or_else(|| t.statements.get(name))
            .map(|s| s.sql.clone());
        let mut definitions = usize::from(t.statements.contains_key(name));
        let mut parse_in_an_earlier_batch = false;
        for o in &t.outstanding {
            match o {
                Outstanding::Parse { name: parsed, .. } if parsed.as_ref() == name => {
                    definitions += 1;
                    parse_in_an_earlier_batch = false;
                }
                Outstanding::SyncPoint { .. } => parse_in_an_earlier_batch = definitions > 0,
                _ => {}
            }
        }
        (statement, parse_in_an_earlier_batch && definitions > 1)
    }

    /// Requests and replies in a random interleaving (replies in request order, some
    /// Parses failing): the indexed answers always equal the walked ones.
    #[test]
    fn binds_find_their_statement_as_a_walk_of_the_queue_would() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let names = ["", "a", "b"];
        for _ in 0..200 {
            let mut t = Tracked::default();
            let mut failed = false;
            for step in 0..300 {
                let name = names[next(3) as usize];
                match next(10) {
                    0..=1 => t
                        .on_parse(&parse_body(name, &format!("select {step}")))
                        .unwrap(),
                    2..=3 => t.on_bind(&bind_body("", name, b"1"), None, true).unwrap(),
                    4 => t.on_execute(b"\0\0\0\0\0"),
                    5 => {
                        t.on_sync_point_request(if next(4) == 0 {
                            SyncKind::Query
                        } else {
                            SyncKind::Sync
                        });
                    }
                    _ => match t.outstanding.front() {
                        Some(Outstanding::Parse { .. }) if !failed && next(8) == 0 => {
                            t.on_error_response();
                            failed = true;
                        }
                        Some(Outstanding::Parse { .. }) if !failed => {
                            t.on_parse_complete().unwrap()
                        }
                        Some(Outstanding::Bind { .. }) if !failed => t.on_bind_complete().unwrap(),
                        Some(Outstanding::Execute { .. }) if !failed => {
                            t.on_execute_done();
                        }
                        Some(Outstanding::SyncPoint { .. }) => {
                            t.on_ready_for_query(next(2) == 0).unwrap();
                            failed = false;
                        }
                        Some(_)
                            if failed
                                && t.outstanding
                                    .iter()
                                    .any(|o| matches!(o, Outstanding::SyncPoint { .. })) =>
                        {
                            // Skipped up to the Sync: its ReadyForQuery comes next.
                            t.on_ready_for_query(false).unwrap();
                            failed = false;
                        }
                        _ => {}
                    },
                }
                for name in names {
                    let indexed = (
                        t.statement_for_bind(name.as_bytes()).map(|s| s.sql.clone()),
                        t.bind_statement_uncertain(name.as_bytes()),
                    );
                    assert_eq!(
                        indexed,
                        walked(&t, name.as_bytes()),
                        "step {step}, {name:?}"
                    );
                    assert_eq!(
                        t.parse_in_flight(name.as_bytes()),
                        t.outstanding.iter().any(|o| matches!(o, Outstanding::Parse { name: n, .. } if n.as_ref() == name.as_bytes()))
                    );
                }
            }
        }
    }

    #[test]
    fn requests_skipped_after_an_error_leave_no_trace() {
        let mut t = Tracked::default();
        t.on_parse(&parse_body("bad", "selec")).unwrap();
        t.on_bind(&bind_body("", "bad", b"1"), None, true).unwrap();
        t.on_sync_point_request(SyncKind::Sync);
        // ErrorResponse, then ReadyForQuery: neither Parse nor Bind completed.
        t.on_ready_for_query(true).unwrap();
        assert!(t.statement(b"bad").is_none());
        assert_eq!(t.portal_count(), 0);
        assert!(!t.has_outstanding());
    }

    #[test]
    fn portals_keep_their_parameters_until_the_transaction_ends() {
        let mut t = Tracked::default();
        t.on_parse(&parse_body("s", "update t set v = $1")).unwrap();
        t.on_bind(&bind_body("p", "s", b"42"), None, true).unwrap();
        t.on_sync_point_request(SyncKind::Sync);
        t.on_parse_complete().unwrap();
        t.on_bind_complete().unwrap();
        t.on_ready_for_query(false).unwrap();
        let portal = t.portal(b"p").unwrap();
        assert_eq!(&portal.statement[..], b"s");
        assert_eq!(portal.bind().unwrap().params, vec![Some(&b"42"[..])]);
        t.on_sync_point_request(SyncKind::Sync);
        t.on_ready_for_query(true).unwrap();
        assert!(t.portal(b"p").is_none());
        assert!(t.statement(b"s").is_some());
    }

    #[test]
    fn close_removes_after_close_complete() {
        let mut t = Tracked::default();
        t.on_parse(&parse_body("s", "select 1")).unwrap();
        t.on_sync_point_request(SyncKind::Sync);
        t.on_parse_complete().unwrap();
        t.on_ready_for_query(true).unwrap();
        t.on_close(b"Ss\0").unwrap();
        t.on_sync_point_request(SyncKind::Sync);
        assert!(t.statement(b"s").is_some());
        t.on_close_complete().unwrap();
        assert!(t.statement(b"s").is_none());
        t.on_ready_for_query(true).unwrap();
    }

    #[test]
    fn syncs_sent_during_copy_in_get_no_ready_for_query() {
        // tokio-postgres: Bind, Execute, Sync, CopyData..., CopyDone, Sync.
        let mut t = Tracked::default();
        t.on_bind(&bind_body("", "s", b""), None, true).unwrap();
        assert!(t.on_sync_point_request(SyncKind::Sync));
        t.on_bind_complete().unwrap();
        assert_eq!(t.on_copy_in_response(), 1);
        assert!(
            !t.on_sync_point_request(SyncKind::Sync),
            "ignored while copying"
        );
        t.on_copy_end();
        assert!(t.on_sync_point_request(SyncKind::Sync));
        t.on_ready_for_query(true).unwrap();
        assert!(!t.has_outstanding());

        // CopyDone already sent when CopyInResponse arrives.
        let mut t = Tracked::default();
        assert!(t.on_sync_point_request(SyncKind::Query));
        t.on_copy_end();
        assert!(t.on_sync_point_request(SyncKind::Sync));
        assert_eq!(t.on_copy_in_response(), 0);
        t.on_ready_for_query(true).unwrap();
        t.on_ready_for_query(true).unwrap();
        assert!(!t.has_outstanding());
    }

    #[test]
    fn a_refused_parse_answers_the_error_in_its_place() {
        let mut t = Tracked::default();
        t.on_parse(&parse_body("ok", "select 1")).unwrap();
        t.on_parse(&parse_body("w", "update t set v = 1")).unwrap();
        t.refuse_last(Refusal {
            sqlstate: "0A000",
            message: "no".into(),
        });
        t.on_sync_point_request(SyncKind::Sync);
        assert_eq!(t.take_refusal(), None, "the head is the first Parse");
        t.on_parse_complete().unwrap();
        assert_eq!(t.take_refusal().map(|r| r.sqlstate), Some("0A000"));
        t.on_ready_for_query(true).unwrap();
        assert!(t.statement(b"w").is_none());
        assert!(!t.has_outstanding());
    }

    #[test]
    fn a_reply_out_of_order_is_reported() {
        let mut t = Tracked::default();
        t.on_sync_point_request(SyncKind::Sync);
        assert!(t.on_parse_complete().is_err());
        let mut t = Tracked::default();
        assert!(t.on_ready_for_query(true).is_err());
    }
}
