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

/// The id of a branch's undo row. tandem names it itself, from the branch, rather than
/// take the next value of the column's sequence or AUTO_INCREMENT on the client's
/// connection: that would change what the client's session reads from lastval() or
/// LAST_INSERT_ID() after its COMMIT. Always negative, so never a value the column's
/// own counter gives (rollback's GlobalFinished markers, written on tandem's side
/// connections, take those). Two branches share an id with odds of about 2^-63 per
/// pair; the second then fails its COMMIT on the primary key, and nothing is lost.
pub fn undo_row_id(xid: &str, branch_id: u64) -> i64 {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(branch_id.to_be_bytes());
    hash.update(xid.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.finalize()[..8]);
    // 63 bits of the hash, into -2^63 ..= -1.
    -1 - (u64::from_be_bytes(first) >> 1) as i64
}

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

/// How long a locking read waits for rows another global transaction holds: not at
/// all under NOWAIT, as for a local lock.
pub fn read_lock_wait(
    read: &tandem_undo::LockedRead,
    lock_wait: std::time::Duration,
) -> std::time::Duration {
    if read.nowait {
        std::time::Duration::ZERO
    } else {
        lock_wait
    }
}

/// A locking read's check in a global transaction: the rows it locks (`keys`) must not
/// be held by another unfinished global transaction. Waits up to `wait` for such a
/// lock, then fails (`GloballyLocked`); gives way at once to a holder that is rolling
/// back, whose undo needs the rows the read now holds locked locally. A cancel of the
/// client's, or the statement's own time limit, ends the wait (`ends`).
pub async fn wait_for_read_locks(
    lock: &tandem_lockserver::client::LockClient,
    keys: &[tandem_lockserver::client::LockKey],
    xid: &tandem_lockserver::client::Xid,
    wait: std::time::Duration,
    ends: &crate::cancel::WaitsEnd,
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
                ends.pause(std::time::Duration::from_millis(20)).await?;
            }
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::undo_row_id;

    #[test]
    fn undo_row_ids_are_negative_and_name_their_branch() {
        let id = undo_row_id("ed321ff1073e8ae4-1", 1);
        assert!(id < 0);
        assert_eq!(id, undo_row_id("ed321ff1073e8ae4-1", 1));
        assert_ne!(id, undo_row_id("ed321ff1073e8ae4-1", 2));
        assert_ne!(id, undo_row_id("ed321ff1073e8ae4-2", 1));
        assert!((0..10_000).all(|branch| undo_row_id("x", branch) < 0));
    }
}
