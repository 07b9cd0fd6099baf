//! AT mode: what a session captures around its writes, the metadata it needs, and the
//! phase-2 work (cleanup and undo replay) a proxy does for the lockserver.
//!
//! Owns the protocol-independent half of AT. Never reads or writes a client socket.

pub mod branch;
pub mod cleanup;
pub mod meta;
pub mod mysql;
pub mod phase2;
pub mod raw;
pub mod sweep;

/// The resource id of `database` behind `upstream` (DESIGN.md, "Resources").
pub fn resource_id(upstream: &str, database: &str) -> String {
    format!("postgres://{upstream}/{database}")
}

/// The database of a PostgreSQL resource id behind `upstream` (see `resource_id`).
pub fn database_of<'a>(resource: &'a str, upstream: &str) -> Option<&'a str> {
    resource
        .strip_prefix("postgres://")?
        .strip_prefix(upstream)?
        .strip_prefix('/')
}

/// A locking read's check in a global transaction: the rows it locks (`keys`) must not
/// be held by another unfinished global transaction. Waits up to `wait` for such a
/// lock, then fails (`GloballyLocked`); gives way at once to a holder that is rolling
/// back, whose undo needs the rows the read now holds locked locally.
pub async fn wait_for_read_locks(
    lock: &tandem_lockserver::client::LockClient,
    keys: &[tandem_lockserver::client::LockKey],
    xid: &tandem_lockserver::client::Xid,
    wait: std::time::Duration,
) -> crate::error::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + wait;
    loop {
        match lock.held_lock(keys).await? {
            Some(held) if held.holder != *xid => {
                if held.holder_rolling_back || std::time::Instant::now() >= deadline {
                    return Err(crate::error::Error::GloballyLocked {
                        holder: held.holder.to_string(),
                    });
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            _ => return Ok(()),
        }
    }
}
