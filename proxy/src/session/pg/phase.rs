//! The protocol phase of a PostgreSQL session, as an explicit state machine.
//!
//! Owns only the phase: no I/O, no bookkeeping of statements. Every transition takes the
//! old phase by value and returns the new one. Invariant: `Ready` means a sync point —
//! the backend's last message was ReadyForQuery and the client has sent nothing since —
//! which is the only moment tandem may inject its own statements or close a session
//! cleanly (PostgreSQL docs, "Message Flow": ReadyForQuery).

use crate::wire::pg::messages::response::TxStatus;

/// Which way a COPY is flowing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyDirection {
    In,
    Out,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The startup packet went to the backend; authentication and the initial
    /// ParameterStatus/BackendKeyData run until the first ReadyForQuery.
    Authenticating,
    /// At a sync point, in the transaction state that ReadyForQuery reported.
    Ready(TxStatus),
    /// Requests are in flight.
    Busy {
        /// The transaction state at the last ReadyForQuery.
        tx: TxStatus,
        /// ReadyForQuery replies still to come: one per Sync, Query or FunctionCall sent.
        awaiting: u32,
        /// Extended-protocol messages were sent after the last Sync.
        unsynced: bool,
        /// A COPY sub-protocol is running.
        copy: Option<CopyDirection>,
    },
}

/// ReadyForQuery arrived when none was due.
#[derive(Debug, PartialEq, Eq)]
pub struct UnexpectedReady;

impl Phase {
    /// The client sent a request; `ends_with_ready` for Sync, Query and FunctionCall.
    pub fn on_request(self, ends_with_ready: bool) -> Phase {
        let (tx, awaiting, copy) = match self {
            Phase::Authenticating => return Phase::Authenticating,
            Phase::Ready(tx) => (tx, 0, None),
            Phase::Busy {
                tx, awaiting, copy, ..
            } => (tx, awaiting, copy),
        };
        Phase::Busy {
            tx,
            awaiting: awaiting + u32::from(ends_with_ready),
            unsynced: !ends_with_ready,
            copy,
        }
    }

    /// The backend started a COPY.
    pub fn on_copy(self, direction: CopyDirection) -> Phase {
        match self {
            Phase::Busy {
                tx,
                awaiting,
                unsynced,
                ..
            } => Phase::Busy {
                tx,
                awaiting,
                unsynced,
                copy: Some(direction),
            },
            other => other,
        }
    }

    /// `count` Syncs already counted will get no ReadyForQuery (sent during copy-in).
    pub fn on_syncs_ignored(mut self, count: u32) -> Phase {
        if let Phase::Busy { awaiting, .. } = &mut self {
            *awaiting = awaiting.saturating_sub(count);
        }
        self
    }

    /// An error in an extended-protocol batch: `count` Queries or FunctionCalls already
    /// counted get no ReadyForQuery, and without a Sync sent after them
    /// (`!sync_queued`) the batch is unsynced again.
    pub fn on_skipped_to_sync(self, count: u32, sync_queued: bool) -> Phase {
        let mut phase = self.on_syncs_ignored(count);
        if let Phase::Busy { unsynced, .. } = &mut phase {
            *unsynced |= !sync_queued;
        }
        phase
    }

    /// The backend sent ReadyForQuery with `status`.
    pub fn on_ready(self, status: TxStatus) -> Result<Phase, UnexpectedReady> {
        match self {
            Phase::Authenticating => Ok(Phase::Ready(status)),
            Phase::Ready(_) | Phase::Busy { awaiting: 0, .. } => Err(UnexpectedReady),
            Phase::Busy {
                awaiting: 1,
                unsynced: false,
                ..
            } => Ok(Phase::Ready(status)),
            Phase::Busy {
                awaiting, unsynced, ..
            } => Ok(Phase::Busy {
                tx: status,
                awaiting: awaiting - 1,
                unsynced,
                copy: None,
            }),
        }
    }

    pub fn at_sync_point(self) -> bool {
        matches!(self, Phase::Ready(_))
    }

    /// Extended-protocol messages were sent after the last Sync: no ReadyForQuery
    /// still to come brings the session to a sync point.
    pub fn unsynced(self) -> bool {
        matches!(self, Phase::Busy { unsynced: true, .. })
    }

    /// The transaction state at the last ReadyForQuery, if there was one.
    pub fn tx_status(self) -> Option<TxStatus> {
        match self {
            Phase::Authenticating => None,
            Phase::Ready(tx) | Phase::Busy { tx, .. } => Some(tx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TxStatus::*;

    #[test]
    fn simple_query_round_trip() {
        let p = Phase::Ready(Idle).on_request(true);
        assert!(!p.at_sync_point());
        assert_eq!(p.on_ready(InTransaction), Ok(Phase::Ready(InTransaction)));
    }

    #[test]
    fn pipelined_syncs_wait_for_the_last_ready() {
        let mut p = Phase::Ready(Idle);
        for _ in 0..3 {
            p = p.on_request(false).on_request(true);
        }
        p = p.on_ready(Idle).unwrap().on_ready(Failed).unwrap();
        assert!(!p.at_sync_point());
        assert_eq!(p.tx_status(), Some(Failed));
        assert_eq!(p.on_ready(Idle), Ok(Phase::Ready(Idle)));
    }

    #[test]
    fn messages_after_the_last_sync_keep_the_session_busy() {
        let p = Phase::Ready(Idle).on_request(true).on_request(false);
        let p = p.on_ready(Idle).unwrap();
        assert!(!p.at_sync_point());
        assert!(p.unsynced());
        assert_eq!(p.on_ready(Idle), Err(UnexpectedReady));
    }

    #[test]
    fn copy_ends_with_its_ready() {
        let p = Phase::Ready(Idle)
            .on_request(true)
            .on_copy(CopyDirection::In);
        assert!(matches!(
            p,
            Phase::Busy {
                copy: Some(CopyDirection::In),
                ..
            }
        ));
        assert_eq!(p.on_ready(Idle), Ok(Phase::Ready(Idle)));
    }

    #[test]
    fn unexpected_ready_is_an_error() {
        assert_eq!(Phase::Ready(Idle).on_ready(Idle), Err(UnexpectedReady));
        assert_eq!(Phase::Authenticating.on_ready(Idle), Ok(Phase::Ready(Idle)));
    }
}
