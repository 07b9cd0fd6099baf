//! Rows of a write's portal that tandem ran whole although the client's Execute asked
//! for fewer, kept for the client's later Executes of that portal.
//!
//! Inside a global transaction tandem needs every row a write returns (each one's key
//! and after image), so its Execute of a write with RETURNING asks for all of them. The
//! client asked for at most n (pgJDBC does so with a fetch size inside a transaction,
//! getGeneratedKeys included): it gets n, then PortalSuspended, and the rest stay here.
//! The backend's portal has nothing left to give, so a later Execute of the portal is
//! answered from here, as PostgreSQL answers one of a portal whose rows it stored: at
//! most n rows then PortalSuspended, or the rest then the CommandComplete, whose count
//! is the rows that Execute returned ("UPDATE 1" for the last one of five fetched two
//! at a time). Once complete, the portal is forgotten: the backend answers a further
//! Execute as PostgreSQL would ("UPDATE 0").
//!
//! Invariant: an entry exists only while the backend's portal does, or is marked lost.
//! Whatever may have dropped or closed the portal without tandem knowing which one (a
//! ROLLBACK, to a savepoint too; SQL's CLOSE) marks every entry lost, and an Execute of
//! a lost one is refused rather than relayed (it would return no rows, silently).

use super::at_extended::{Extended, refusal};
use super::{Phase, Relay};
use crate::error::{Error, Result};
use crate::wire::pg::codes::backend;
use crate::wire::pg::messages::response::TxStatus;
use crate::wire::pg::messages::write::put_msg;
use crate::wire::pg::reader::Reader;
use bytes::BytesMut;
use std::collections::{HashMap, VecDeque};

/// What is left of one portal.
#[derive(Debug)]
enum Rest {
    /// DataRow messages (each whole, in the client's columns) not yet sent, and the
    /// CommandComplete tag's words ahead of its count ("UPDATE", "INSERT 0").
    Rows {
        rows: VecDeque<BytesMut>,
        verb: Vec<u8>,
    },
    /// Dropped or closed perhaps, perhaps not: its rows cannot be given truly.
    Lost,
}

/// The answer to an Execute of a held portal.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeldExecute {
    /// The replies the backend would have sent: rows, then PortalSuspended or
    /// CommandComplete.
    Answer(BytesMut),
    /// The portal's rows cannot be given truly: refuse the Execute.
    Lost,
}

/// The held portals of one session, by portal name (empty: the unnamed portal).
#[derive(Debug, Default)]
pub(super) struct HeldRows {
    portals: HashMap<Vec<u8>, Rest>,
}

impl HeldRows {
    /// The rest of `portal`'s rows, after the client got what its Execute asked for;
    /// `complete_tag` is the write's CommandComplete tag ("UPDATE 5"), without its NUL.
    pub(super) fn hold(&mut self, portal: &[u8], rows: VecDeque<BytesMut>, complete_tag: &[u8]) {
        let verb = match complete_tag.iter().rposition(|&b| b == b' ') {
            Some(space) => complete_tag[..space].to_vec(),
            None => complete_tag.to_vec(),
        };
        self.portals
            .insert(portal.to_vec(), Rest::Rows { rows, verb });
    }

    /// Whether an Execute of `portal` is tandem's to answer (or refuse).
    pub(super) fn holds(&self, portal: &[u8]) -> bool {
        self.portals.contains_key(portal)
    }

    /// Answers an Execute of `portal` asking for at most `max_rows` rows (0: all).
    /// None: the portal is not held.
    pub(super) fn execute(&mut self, portal: &[u8], max_rows: u32) -> Option<HeldExecute> {
        let Rest::Rows { rows, verb } = self.portals.get_mut(portal)? else {
            return Some(HeldExecute::Lost);
        };
        let mut out = BytesMut::new();
        let limit = usize::try_from(max_rows).unwrap_or(usize::MAX);
        let mut sent = 0usize;
        while limit == 0 || sent < limit {
            let Some(row) = rows.pop_front() else { break };
            out.extend_from_slice(&row);
            sent += 1;
        }
        // PostgreSQL suspends a portal that filled the limit, whether or not rows are
        // left: only an Execute that comes up short completes it.
        if limit != 0 && sent == limit {
            put_msg(&mut out, backend::PORTAL_SUSPENDED, &[]);
            return Some(HeldExecute::Answer(out));
        }
        let mut tag = verb.clone();
        tag.extend_from_slice(format!(" {sent}").as_bytes());
        tag.push(0);
        put_msg(&mut out, backend::COMMAND_COMPLETE, &tag);
        self.portals.remove(portal);
        Some(HeldExecute::Answer(out))
    }

    /// A Bind of `portal`: the unnamed portal is replaced (a named one cannot be, and
    /// its Bind fails).
    pub(super) fn on_bind(&mut self, portal: &[u8]) {
        if portal.is_empty() {
            self.portals.remove(portal);
        }
    }

    /// A Close of `portal` (the protocol's, by name).
    pub(super) fn on_close(&mut self, portal: &[u8]) {
        self.portals.remove(portal);
    }

    /// A simple Query: it replaces the unnamed portal.
    pub(super) fn on_query(&mut self) {
        self.portals.remove(&b""[..]);
    }

    /// The transaction ended (ReadyForQuery Idle, or a COMMIT that chained a new
    /// one): its portals are gone, and the backend says so to an Execute of them.
    pub(super) fn on_transaction_end(&mut self) {
        self.portals.clear();
    }

    /// A statement that may have dropped or closed some portals, tandem cannot tell
    /// which (ROLLBACK TO SAVEPOINT drops those made since; SQL's CLOSE).
    pub(super) fn on_portals_may_be_gone(&mut self) {
        self.portals.values_mut().for_each(|r| *r = Rest::Lost);
    }
}

impl Relay<'_> {
    /// An Execute (`body`, `len` bytes on the wire) of a held portal. Answered from
    /// what is held at a sync point inside the block, with nothing of the client's
    /// unsent ahead of it (`nothing_ahead`): pgJDBC fetches each batch of a portal
    /// with an Execute and a Sync of their own. In a failed block it goes to the
    /// backend, which refuses it as it refuses anything there.
    pub(super) async fn execute_held(
        &mut self,
        body: &[u8],
        len: usize,
        nothing_ahead: bool,
    ) -> Result<Extended> {
        let mut reader = Reader::new(body);
        let (Ok(portal), Ok(max_rows)) = (reader.cstr(), reader.i32()) else {
            return Err(Error::Malformed { what: "Execute" });
        };
        if self.phase == Phase::Ready(TxStatus::Failed) {
            return Ok(Extended::NotAWrite);
        }
        if self.phase != Phase::Ready(TxStatus::InTransaction) || !nothing_ahead {
            return Ok(Extended::RefuseExecute(refusal(Error::Unsupported {
                what: "executing again, behind other unanswered messages, the portal of a write with RETURNING that ran under a row limit inside a global transaction (send its Execute with a Sync of its own)",
            })));
        }
        // A negative limit is PostgreSQL's "all" too.
        let max_rows = u32::try_from(max_rows).unwrap_or(0);
        match self.held_rows.execute(portal, max_rows) {
            Some(HeldExecute::Answer(out)) => {
                self.write_client(&out);
                self.flush_client().await?;
                Ok(Extended::Handled {
                    consumed: len,
                    to_backend: None,
                })
            }
            Some(HeldExecute::Lost) => Ok(Extended::RefuseExecute(refusal(Error::Unsupported {
                what: "executing again, after a ROLLBACK or CLOSE that may have dropped it, the portal of a write with RETURNING that ran under a row limit inside a global transaction",
            }))),
            None => Ok(Extended::NotAWrite),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        let mut body = vec![0, 1];
        body.extend_from_slice(&(v.len() as i32).to_be_bytes());
        body.extend_from_slice(v);
        put_msg(&mut out, b'D', &body);
        out
    }

    fn held(values: &[&[u8]]) -> HeldRows {
        let mut h = HeldRows::default();
        h.hold(b"c1", values.iter().map(|v| row(v)).collect(), b"UPDATE 5");
        h
    }

    fn answer(h: &mut HeldRows, max_rows: u32) -> BytesMut {
        match h.execute(b"c1", max_rows) {
            Some(HeldExecute::Answer(out)) => out,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn messages(mut out: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut all = Vec::new();
        while !out.is_empty() {
            let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
            all.push((out[0], out[5..1 + len].to_vec()));
            out = &out[1 + len..];
        }
        all
    }

    #[test]
    fn executes_take_the_rest_as_the_backend_would_give_it() {
        // Five rows fetched two at a time: the client got two, three are held.
        let mut h = held(&[b"3", b"4", b"5"]);
        let first = messages(&answer(&mut h, 2));
        assert_eq!(first.len(), 3);
        assert_eq!(first[0], (b'D', row(b"3")[5..].to_vec()));
        assert_eq!(first[2], (backend::PORTAL_SUSPENDED, vec![]));
        let last = messages(&answer(&mut h, 2));
        assert_eq!(last[0], (b'D', row(b"5")[5..].to_vec()));
        assert_eq!(last[1], (backend::COMMAND_COMPLETE, b"UPDATE 1\0".to_vec()));
        assert!(!h.holds(b"c1"), "complete: the backend answers from now on");
    }

    #[test]
    fn a_limit_met_exactly_suspends_and_the_next_execute_completes_empty() {
        let mut h = held(&[b"3", b"4"]);
        let out = messages(&answer(&mut h, 2));
        assert_eq!(out[2], (backend::PORTAL_SUSPENDED, vec![]));
        let out = messages(&answer(&mut h, 2));
        assert_eq!(
            out,
            vec![(backend::COMMAND_COMPLETE, b"UPDATE 0\0".to_vec())]
        );
    }

    #[test]
    fn no_limit_takes_every_row_and_an_insert_keeps_its_oid_word() {
        let mut h = HeldRows::default();
        h.hold(b"", [row(b"7"), row(b"8")].into(), b"INSERT 0 3");
        let out = match h.execute(b"", 0) {
            Some(HeldExecute::Answer(out)) => messages(&out),
            other => panic!("{other:?}"),
        };
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[2],
            (backend::COMMAND_COMPLETE, b"INSERT 0 2\0".to_vec())
        );
    }

    #[test]
    fn what_may_drop_portals_makes_them_lost_and_what_does_drop_them_forgets() {
        let mut h = held(&[b"3"]);
        h.on_bind(b"c1");
        assert!(h.holds(b"c1"), "a named portal is not replaced by a Bind");
        h.on_portals_may_be_gone();
        assert_eq!(h.execute(b"c1", 2), Some(HeldExecute::Lost));
        h.on_close(b"c1");
        assert_eq!(h.execute(b"c1", 2), None);

        let mut h = HeldRows::default();
        h.hold(b"", [row(b"1")].into(), b"DELETE 2");
        h.on_query();
        assert!(!h.holds(b""));
        h.hold(b"", [row(b"1")].into(), b"DELETE 2");
        h.on_bind(b"");
        assert!(!h.holds(b""));
        h.hold(b"x", [row(b"1")].into(), b"DELETE 2");
        h.on_transaction_end();
        assert!(!h.holds(b"x"));
    }
}
