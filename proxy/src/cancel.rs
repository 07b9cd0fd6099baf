//! Query cancellation: the map from the BackendKeyData tandem handed to a client to the
//! backend that client's session is relayed to.
//!
//! Owns the key map. Never forwards a CancelRequest whose key it did not hand out, so
//! a client can only cancel its own sessions' queries. Invariant: a key is in the map
//! exactly while its session's registration guard lives.

use crate::wire::pg::messages::startup::CancelKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelTarget {
    /// The upstream server, as `host:port`.
    pub upstream: Arc<str>,
    /// The key the backend itself sent.
    pub backend: CancelKey,
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
}
