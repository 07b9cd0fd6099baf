//! Writes outside a global transaction (DESIGN.md, "Global row locks"): what the
//! PostgreSQL and MySQL sessions share. Each protocol's own half is `pg::guard` and
//! `mysql::relay::guard`.
//!
//! A write to a table the lockserver has not announced runs under an
//! [`UncheckedWrite`] guard until its statement is over; a write to an announced table
//! has its rows checked against the global locks first. While the lockserver does not
//! answer, writes run unchecked for `SKIP_CHECKS_AFTER_FAILURE` at a time (counted):
//! plain traffic does not stop with the coordinator.

use crate::at::branch::lock_name_part;
use crate::config::OutsideWrites;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tandem_lockserver::client::{HeldLock, LockClient, LockKey, TableLockView, UncheckedWrite};

/// How often a waiting write asks the lockserver again.
pub const RECHECK: Duration = Duration::from_millis(20);

/// How long a write waits for the view to show a table the lockserver let go for it
/// ([`LockClient::release_idle_tables`]), in either mode: the notice is on its way.
const NOTICE_WAIT: Duration = Duration::from_secs(1);

/// How often a write waiting for such a notice looks at the view again.
const NOTICE_POLL: Duration = Duration::from_millis(2);

/// After the lockserver failed to answer a check, writes run unchecked this long before
/// one asks again: a lockserver that is down must not cost every write a failed call.
const SKIP_CHECKS_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What the sessions of one front end share for their writes outside global
/// transactions.
pub struct OutsideWriteChecks {
    /// Which tables may hold global locks, as the lockserver announced them.
    pub tables: Arc<TableLockView>,
    /// `lockserver.outside_writes`.
    pub mode: OutsideWrites,
    /// Until when (ms since `started`) writes skip their check; 0: never skipped.
    skip_until_ms: AtomicU64,
    started: Instant,
}

impl OutsideWriteChecks {
    pub fn new(tables: Arc<TableLockView>, mode: OutsideWrites) -> Self {
        OutsideWriteChecks {
            tables,
            mode,
            skip_until_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// A write to a held row waits for it (rather than failing at once).
    pub fn waits(&self) -> bool {
        self.mode == OutsideWrites::Wait
    }

    /// The lockserver failed to answer a check less than `SKIP_CHECKS_AFTER_FAILURE`
    /// ago.
    pub fn failed_lately(&self) -> bool {
        let until = self.skip_until_ms.load(Ordering::Relaxed);
        until != 0 && (self.started.elapsed().as_millis() as u64) < until
    }

    fn skip_for_a_while(&self) {
        let until = self.started.elapsed() + SKIP_CHECKS_AFTER_FAILURE;
        self.skip_until_ms
            .fetch_max(until.as_millis() as u64, Ordering::Relaxed);
    }

    /// The first of `keys` an unfinished global transaction holds, if one does: its
    /// holder, and whether that is rolling back. `Err`: the lockserver did not answer,
    /// and writes skip their checks for a while (the caller lets this one run, and
    /// counts it).
    pub async fn held(
        &self,
        lock: &LockClient,
        keys: &[LockKey],
    ) -> Result<Option<HeldLock>, tandem_lockserver::Error> {
        for chunk in by_query_size(keys) {
            match lock.held_lock(chunk).await {
                Ok(None) => {}
                Ok(Some(held)) => return Ok(Some(held)),
                Err(e) => {
                    self.skip_for_a_while();
                    return Err(e);
                }
            }
        }
        Ok(None)
    }
}

/// Whether `first_word_says` holds for some statement of a (multi-statement) text:
/// the text itself, or what follows any of its semicolons (one in a literal or a
/// comment only costs a closer look). Cheap enough for every query.
pub fn some_statement(sql: &[u8], first_word_says: impl Fn(&[u8]) -> bool) -> bool {
    first_word_says(sql)
        || sql
            .iter()
            .enumerate()
            .any(|(at, &b)| b == b';' && first_word_says(&sql[at + 1..]))
}

/// What [`OutsideWriteChecks::guard_tables`] found.
#[derive(Debug)]
pub enum TablesGuarded {
    /// Every table is guarded until the sync point (or the lockserver tracks no tables,
    /// and none can be).
    Yes,
    /// The lockserver does not answer: outside a global transaction the write runs
    /// unchecked, and the rest of its batch with it (the caller counts it and lets the
    /// batch pass); an XA branch's write fails with this.
    LockserverDown(tandem_lockserver::Error),
    /// This table may still hold global locks.
    Locked(String),
    /// The client cancelled (a PostgreSQL CancelRequest, a MySQL KILL QUERY), or the
    /// statement's own time limit ran out, while the write waited: its error.
    Ended(crate::error::Error),
}

impl OutsideWriteChecks {
    /// Guards, held in `unchecked` until the sync point, on the tables named `names`
    /// (in any schema; [`tandem_undo::EVERY_TABLE`]: all of them) for a write that may
    /// change their rows unchecked. While one of them may hold global locks the write
    /// waits (up to `wait_until`, if given) until none does, holding nothing meanwhile: an
    /// announcement must not wait for it. The lockserver is asked to let go of the
    /// announced ones that hold no lock, in either mode, and their notices awaited;
    /// so is a view not current yet (a database first served). A cancel of the
    /// client's, or the statement's own time limit, ends the wait (`ends`).
    pub async fn guard_tables(
        &self,
        lock: &LockClient,
        resource: &str,
        names: &[String],
        wait_until: Option<Instant>,
        ends: &crate::cancel::WaitsEnd,
        unchecked: &mut UncheckedGuards,
    ) -> TablesGuarded {
        if self.tables.untracked(resource) {
            return TablesGuarded::Yes;
        }
        // When the lockserver was last asked to let idle tables go; until when a table
        // it let go may take to leave the view.
        let mut asked: Option<Instant> = None;
        let mut notice_until: Option<Instant> = None;
        loop {
            let mut guards = Vec::with_capacity(names.len());
            let mut blocked = Vec::new();
            for name in names {
                let guard = if name == tandem_undo::EVERY_TABLE {
                    self.tables.enter_unchecked(resource, None)
                } else {
                    self.tables
                        .enter_unchecked_by_name(resource, &lock_name_part(name))
                };
                match guard {
                    Some(guard) => guards.push(guard),
                    None => blocked.push(name),
                }
            }
            let Some(&name) = blocked.first() else {
                for guard in guards {
                    unchecked.hold_uncovering(guard);
                }
                return TablesGuarded::Yes;
            };
            drop(guards);
            let now = Instant::now();
            if asked.is_none_or(|at| now >= at + RECHECK) {
                asked = Some(now);
                // A table stays announced a while after its last lock: one holding
                // none now is let go at once, and its notice lets the write in.
                let mut announced: Vec<String> = blocked
                    .iter()
                    .flat_map(|name| {
                        let by_name =
                            (*name != tandem_undo::EVERY_TABLE).then(|| lock_name_part(name));
                        self.tables.announced(resource, by_name.as_deref())
                    })
                    .collect();
                announced.sort_unstable();
                announced.dedup();
                // Ok(true): the view should let the write in shortly.
                let answered = if announced.is_empty() {
                    // The view is not current (a stream for a database first served is
                    // on its way, say): a lockserver that does not answer lets the
                    // write run, as it lets every write; one that does sends the view.
                    let probe = LockKey::new(resource, name, ["tandem_probe"]);
                    self.held(lock, &[probe]).await.map(|_| true)
                } else {
                    let tables: Vec<&str> = announced.iter().map(String::as_str).collect();
                    lock.release_idle_tables(resource, &tables)
                        .await
                        .map(|in_use| in_use.is_empty())
                };
                match answered {
                    Err(e) => {
                        self.skip_for_a_while();
                        return TablesGuarded::LockserverDown(e);
                    }
                    Ok(true) => {
                        notice_until.get_or_insert(now + NOTICE_WAIT);
                    }
                    Ok(false) => notice_until = None,
                }
            }
            let until = wait_until.max(notice_until);
            if until.is_none_or(|until| Instant::now() + NOTICE_POLL > until) {
                return TablesGuarded::Locked(name.clone());
            }
            let pause = if notice_until.is_some() {
                NOTICE_POLL
            } else {
                RECHECK
            };
            if let Err(e) = ends.pause(pause).await {
                return TablesGuarded::Ended(e);
            }
        }
    }
}

/// The keys of one lock query at most: a write of a million rows must not make a
/// message the lockserver refuses (gRPC's 4 MiB), which would read as a lockserver
/// that is down and let every write skip its check for a while.
const LOCK_QUERY_BYTES: usize = 1 << 20;

/// `keys` in runs of at most `LOCK_QUERY_BYTES` (a longer key goes alone).
fn by_query_size(keys: &[LockKey]) -> impl Iterator<Item = &[LockKey]> {
    let mut rest = keys;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut take = 0;
        for key in rest {
            bytes += key.as_str().len();
            if take > 0 && bytes > LOCK_QUERY_BYTES {
                break;
            }
            take += 1;
        }
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        Some(chunk)
    })
}

/// The unchecked guards a session holds until its next sync point. While one is held,
/// the lockserver cannot finish announcing a table (this proxy's acknowledgement waits
/// for it), so what it covered when it was taken stays safe to write unchecked: every
/// table of the resource (taken while none was announced), or its own table. While
/// the lockserver is unreachable every write passes, and the batch it is in with it.
#[derive(Default)]
pub struct UncheckedGuards {
    guards: Vec<UncheckedWrite>,
    all_tables: bool,
    tables: Vec<String>,
}

impl UncheckedGuards {
    pub fn covers(&self, table: Option<&str>) -> bool {
        self.all_tables || table.is_some_and(|t| self.tables.iter().any(|held| held == t))
    }

    /// Unchecked without a guard until the sync point (the lockserver is unreachable).
    pub fn pass_all(&mut self) {
        self.all_tables = true;
    }

    pub fn hold(&mut self, guard: UncheckedWrite, table: Option<String>) {
        self.guards.push(guard);
        match table {
            Some(table) => self.tables.push(table),
            None => self.all_tables = true,
        }
    }

    /// A guard taken for a table whose schema is not known yet: it keeps the
    /// lockserver's announcements waiting, but says nothing of what a later write may
    /// skip.
    pub fn hold_uncovering(&mut self, guard: UncheckedWrite) {
        self.guards.push(guard);
    }

    pub fn holds_any(&self) -> bool {
        !self.guards.is_empty()
    }

    /// The session reached a sync point: every write it let through is over.
    pub fn release(&mut self) {
        self.guards.clear();
        self.tables.clear();
        self.all_tables = false;
    }

    /// The session ended: waits (up to `wait`) for `backend`, already told to end, to
    /// close its connection, then releases the guards. A write let through unchecked
    /// may still be running (and an autocommit one would still commit), so the
    /// lockserver's announcement of its table must wait until the backend has ended.
    pub async fn outlive(
        &mut self,
        backend: &mut (impl tokio::io::AsyncRead + Unpin),
        wait: Duration,
        span: &tracing::Span,
    ) {
        if !self.holds_any() {
            return;
        }
        let mut scratch = [0u8; 8192];
        let ended = async {
            use tokio::io::AsyncReadExt;
            while matches!(backend.read(&mut scratch).await, Ok(n) if n > 0) {}
        };
        if tokio::time::timeout(wait, ended).await.is_err() {
            tracing::warn!(parent: span, "backend still busy after the session ended; releasing its unchecked write");
        }
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::{LOCK_QUERY_BYTES, by_query_size};
    use tandem_lockserver::client::LockKey;

    fn keys(count: usize, pk_len: usize) -> Vec<LockKey> {
        (0..count)
            .map(|i| LockKey::new("db", "public.t", [format!("{i}").repeat(pk_len)]))
            .collect()
    }

    #[test]
    fn a_lock_query_stays_under_its_size_and_asks_every_key_once() {
        let many = keys(100_000, 8);
        let chunks: Vec<_> = by_query_size(&many).collect();
        assert!(chunks.len() > 1);
        for chunk in &chunks {
            let bytes: usize = chunk.iter().map(|k| k.as_str().len()).sum();
            assert!(bytes <= LOCK_QUERY_BYTES, "{bytes}");
        }
        let asked: Vec<_> = chunks.concat();
        assert_eq!(asked, many);
        assert_eq!(by_query_size(&keys(3, 5)).count(), 1);
        assert_eq!(by_query_size(&[]).count(), 0);
        // A key longer than a whole query still goes, alone.
        let huge = keys(2, LOCK_QUERY_BYTES + 1);
        assert_eq!(
            by_query_size(&huge).map(<[_]>::len).collect::<Vec<_>>(),
            [1, 1]
        );
    }
}
