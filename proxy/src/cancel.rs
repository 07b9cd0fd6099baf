//! Query cancellation: the map from the BackendKeyData tandem handed to a client to the
//! backend that client's session is relayed to.
//!
//! Owns the key map. Never forwards a CancelRequest whose key it did not hand out, so
//! a client can only cancel its own sessions' queries. Invariant: a key is in the map
//! exactly while its session's registration guard lives.

use crate::upstream::BackendWatch;
use crate::wire::pg::messages::startup::CancelKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelTarget {
    /// The upstream server, as `host:port`.
    pub upstream: Arc<str>,
    /// The key the backend itself sent.
    pub backend: CancelKey,
    /// The session's own waits, which a cancel ends too.
    pub interrupt: Interrupt,
}

/// A client's cancel, as it reaches the waits tandem itself makes for a statement (for
/// a global lock, before or after the statement ran): while tandem waits, the backend
/// is idle and ignores the cancel, so the session must hear it itself.
///
/// Like PostgreSQL's, a cancel ends what is waiting when it comes, and nothing later:
/// a wait hears only the cancels sent since its statement's `mark`.
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<InterruptInner>);

#[derive(Debug, Default)]
struct InterruptInner {
    cancels: AtomicU64,
    notify: Notify,
}

impl PartialEq for Interrupt {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Interrupt {}

impl Interrupt {
    /// The client cancelled.
    pub fn interrupt(&self) {
        self.0.cancels.fetch_add(1, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Where a wait starts: later cancels end it.
    pub fn mark(&self) -> u64 {
        self.0.cancels.load(Ordering::SeqCst)
    }

    /// Resolves once the client cancels after `mark` (at once if it already has).
    pub async fn cancelled_since(&self, mark: u64) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            // Registered before the check: a cancel between the two still wakes it.
            notified.as_mut().enable();
            if self.0.cancels.load(Ordering::SeqCst) != mark {
                return;
            }
            notified.await;
        }
    }

    /// Sleeps for `pause`; false if the client cancelled after `mark` (at once, then).
    pub async fn pause(&self, mark: u64, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => self.mark() == mark,
            () = self.cancelled_since(mark) => false,
        }
    }
}

/// What ends a statement's waits of tandem's own for a global lock before their own
/// bound: the client's cancel since the statement began (`mark`), and the statement's
/// own time limit (MariaDB's `SET STATEMENT max_statement_time = … FOR`), both of which
/// end a wait in the server too; and, while the backend is idle, its closing the
/// connection (`backend`), after which the statement could never run.
#[derive(Clone)]
pub struct WaitsEnd {
    pub interrupt: Interrupt,
    pub mark: u64,
    pub deadline: Option<std::time::Instant>,
    pub backend: Option<Arc<BackendWatch>>,
}

impl WaitsEnd {
    /// A wait only a cancel ends.
    pub fn on_cancel(interrupt: &Interrupt, mark: u64) -> Self {
        WaitsEnd {
            interrupt: interrupt.clone(),
            mark,
            deadline: None,
            backend: None,
        }
    }

    /// The same, ended also when the idle backend closes the connection.
    pub fn watching(self, backend: Option<Arc<BackendWatch>>) -> Self {
        WaitsEnd { backend, ..self }
    }

    /// Sleeps for `pause`, or less if the deadline comes first; the statement's error
    /// once the client has cancelled or its time is up.
    pub async fn pause(&self, pause: Duration) -> Result<(), crate::error::Error> {
        let pause = match self.deadline {
            Some(deadline) => {
                pause.min(deadline.saturating_duration_since(std::time::Instant::now()))
            }
            None => pause,
        };
        let paused = tokio::select! {
            paused = self.interrupt.pause(self.mark, pause) => paused,
            () = backend_closing(self.backend.as_deref()) => {
                return Err(crate::error::Error::UpstreamClosed);
            }
        };
        if !paused {
            return Err(crate::error::Error::Cancelled);
        }
        if self.out_of_time() {
            return Err(crate::error::Error::StatementTimeout);
        }
        Ok(())
    }

    /// The statement's own time limit has run out.
    fn out_of_time(&self) -> bool {
        self.deadline
            .is_some_and(|deadline| std::time::Instant::now() >= deadline)
    }

    /// Resolves once the wait must end (see [`WaitsEnd::why`]).
    pub async fn ended(&self) {
        let deadline = async {
            match self.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.interrupt.cancelled_since(self.mark) => {}
            () = deadline => {}
            () = backend_closing(self.backend.as_deref()) => {}
        }
    }

    /// Why a wait that [`WaitsEnd::ended`] stopped ended.
    pub fn why(&self) -> crate::error::Error {
        if self.backend.as_ref().is_some_and(|b| b.closed()) {
            crate::error::Error::UpstreamClosed
        } else if self.out_of_time() {
            crate::error::Error::StatementTimeout
        } else {
            crate::error::Error::Cancelled
        }
    }
}

/// Resolves once `backend` is closing; never without one.
async fn backend_closing(backend: Option<&BackendWatch>) {
    match backend {
        Some(backend) => backend.closing().await,
        None => std::future::pending().await,
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    // A std Mutex: no lock is held across an await.
    keys: Mutex<HashMap<CancelKey, CancelTarget>>,
}

impl CancelRegistry {
    /// Hands out a fresh proxy key for `target`; the key is withdrawn when the returned
    /// registration is dropped.
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> Registration {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let key = loop {
            let candidate = CancelKey {
                // Positive like real pids, so that tools that print them are not confused.
                pid: rand::random::<i32>() & i32::MAX,
                secret: rand::random(),
            };
            if !keys.contains_key(&candidate) {
                break candidate;
            }
        };
        keys.insert(key, target);
        Registration {
            key,
            registry: Arc::clone(self),
        }
    }

    pub fn lookup(&self, key: &CancelKey) -> Option<CancelTarget> {
        let keys = self
            .keys
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        keys.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A live cancel key; dropping it withdraws the key.
pub struct Registration {
    pub key: CancelKey,
    registry: Arc<CancelRegistry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut keys = self
            .registry
            .keys
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        keys.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_exactly_as_long_as_their_registration() {
        let registry = Arc::new(CancelRegistry::default());
        let target = CancelTarget {
            upstream: "127.0.0.1:5432".into(),
            backend: CancelKey { pid: 1, secret: 2 },
            interrupt: Interrupt::default(),
        };
        let reg = registry.register(target.clone());
        assert_eq!(registry.lookup(&reg.key), Some(target));
        let forged = CancelKey {
            pid: reg.key.pid,
            secret: reg.key.secret.wrapping_add(1),
        };
        assert_eq!(registry.lookup(&forged), None);
        let key = reg.key;
        drop(reg);
        assert_eq!(registry.lookup(&key), None);
        assert!(registry.is_empty());
    }

    #[tokio::test]
    async fn a_wait_hears_the_cancels_sent_since_its_mark_only() {
        let interrupt = Interrupt::default();
        interrupt.interrupt();
        let mark = interrupt.mark();
        // The cancel before the mark is not this wait's.
        assert!(interrupt.pause(mark, Duration::from_millis(5)).await);
        let waiting = {
            let interrupt = interrupt.clone();
            tokio::spawn(async move { interrupt.pause(mark, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        interrupt.interrupt();
        let finished = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the cancel ends the wait")
            .unwrap();
        assert!(!finished);
        // Sent before a wait began but after its mark: it ends that wait at once.
        assert!(!interrupt.pause(mark, Duration::from_secs(30)).await);
    }
}
