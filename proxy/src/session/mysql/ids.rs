//! Connection ids: the id tandem shows each MySQL client (in its greeting, and so in
//! `mysql_thread_id()` and drivers' `id()`), and the backend thread behind it.
//!
//! Owns the id map. Never forwards anything itself: the session runs a
//! `KILL [QUERY] id` for one of tandem's ids as a kill of the backend thread, on the
//! client's own backend connection, so the server still checks that the user may kill
//! that thread; once the server has, the killed session's own waits end too
//! (`Backend::interrupt`). Invariant: an id is in the map exactly while its session's
//! registration guard lives.
//!
//! tandem's ids start at `FIRST_ID` (2^30), far above the thread ids servers hand out,
//! so that a `KILL n` with an id read from SHOW PROCESSLIST (a backend thread id) is
//! never mistaken for one of tandem's and passes through untouched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// The first id tandem hands out.
pub const FIRST_ID: u32 = 1 << 30;

/// The backend connection behind one of tandem's ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The upstream server (`host:port` or socket path).
    pub upstream: Arc<str>,
    /// The server's own id for the connection (its greeting's connection id).
    pub thread_id: u32,
    /// What ends the session's own waits for global locks when a KILL of it comes:
    /// while tandem waits, its backend thread is idle, and the server's kill of it
    /// stops nothing.
    pub interrupt: crate::cancel::Interrupt,
}

pub struct ConnectionIds {
    next: AtomicU32,
    // A std Mutex: held only to insert, look up or remove, never across an await.
    live: Mutex<HashMap<u32, Backend>>,
}

impl Default for ConnectionIds {
    fn default() -> Self {
        ConnectionIds {
            next: AtomicU32::new(FIRST_ID),
            live: Mutex::new(HashMap::new()),
        }
    }
}

impl ConnectionIds {
    /// A fresh id for a session, not yet bound to a backend.
    pub fn allocate(self: &Arc<Self>) -> Registration {
        let id = loop {
            let candidate = self.next.fetch_add(1, Ordering::Relaxed);
            // After 3 * 2^30 sessions the counter wraps; skip back above FIRST_ID.
            if candidate >= FIRST_ID {
                break candidate;
            }
            let _ = self.next.compare_exchange(
                candidate.wrapping_add(1),
                FIRST_ID,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        };
        Registration {
            id,
            ids: Arc::clone(self),
        }
    }

    pub fn lookup(&self, id: u32) -> Option<Backend> {
        self.lock().get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Backend>> {
        self.live
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A session's id; dropping it withdraws the id.
pub struct Registration {
    pub id: u32,
    ids: Arc<ConnectionIds>,
}

impl Registration {
    /// Binds the id to its backend connection, once the server's greeting named it.
    pub fn bind(&self, backend: Backend) {
        self.ids.lock().insert(self.id, backend);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.ids.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_live_exactly_as_long_as_their_registration() {
        let ids = Arc::new(ConnectionIds::default());
        let a = ids.allocate();
        let b = ids.allocate();
        assert!(a.id >= FIRST_ID && b.id > a.id);
        assert_eq!(ids.lookup(a.id), None, "not bound yet");
        let backend = Backend {
            upstream: "127.0.0.1:3306".into(),
            thread_id: 17,
            interrupt: crate::cancel::Interrupt::default(),
        };
        a.bind(backend.clone());
        assert_eq!(ids.lookup(a.id), Some(backend));
        let id = a.id;
        drop(a);
        assert_eq!(ids.lookup(id), None);
        drop(b);
        assert!(ids.is_empty());
    }
}
