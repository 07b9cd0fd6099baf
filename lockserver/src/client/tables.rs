//! The proxy's view of which tables may hold global locks ([`TableLockView`]), fed
//! by the table notices of its phase-2 stream, and the acknowledgements it owes.
//!
//! Owns: per resource, the announced tables, whether the view is trusted, and the
//! count of writes let through unchecked. Never blocks a write: a write either
//! enters unchecked at once or is told to check its rows. Invariant: a notice that
//! announces a table is acknowledged only after every write that entered unchecked
//! before the notice was applied has dropped its [`UncheckedWrite`].
//!
//! Draining uses two counters per resource and an epoch: a write counts itself in
//! the counter of the epoch it saw (under the same lock as the flags it read), and a
//! drain moves the epoch on and waits for the old counter to reach zero. The old
//! counter only goes down, so a drain ends even while new writes keep arriving; a
//! single counter waited for "no write at all in flight", which a busy database
//! may never show. Drains of one resource take turns, so a counter is empty again
//! before its epoch comes back; after a drain cut short (its stream went) the next one
//! runs two rounds, since that drain's counter was not emptied.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use crate::proto as pb;

/// Which tables of each resource may hold global locks, as the lockserver announced
/// them. Shared by every session of a proxy and by its phase-2 worker (set
/// [`super::WorkerOptions::table_view`]); cheap to query.
pub struct TableLockView {
    /// Random; names this view to the lockserver across its streams.
    instance: String,
    lease: Duration,
    /// The lease in force, in ns: `lease`, or less when a lockserver's snapshot said
    /// its `table_lease_ms` is shorter (two thirds of that, leaving a margin for delay).
    lease_ns: AtomicU64,
    /// Origin of each stream's `heard`.
    origin: Instant,
    /// Generation of the newest stream that came up.
    newest: AtomicU64,
    /// What follows an older stream's snapshot is not trusted: the newest stream went
    /// down before a newer one came up (a stream replaced by a newer one is not).
    floor: AtomicU64,
    next_generation: AtomicU64,
    /// Held by a stream of this view from its request until it is up (the lockserver
    /// subscribes it, and takes its snapshot, before it answers): generations then
    /// follow the order in which the lockserver took the streams' snapshots.
    pub(super) connecting: tokio::sync::Mutex<()>,
    /// A std RwLock: never held across an `.await`; written only for a new resource.
    resources: RwLock<HashMap<String, Arc<ResourceView>>>,
}

impl std::fmt::Debug for TableLockView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableLockView")
            .field("lease", &self.lease)
            .field("newest", &self.newest.load(Ordering::Relaxed))
            .field("floor", &self.floor.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// One resource's part of the view.
pub(super) struct ResourceView {
    /// A std RwLock: never held across an `.await`.
    tables: RwLock<Tables>,
    /// Unchecked writes in flight, by epoch parity.
    in_flight: [AtomicUsize; 2],
    /// Drains waiting, so a finished write wakes nobody when nobody waits.
    draining: AtomicUsize,
    drained: Notify,
    /// One drain at a time per resource (see the module docs).
    drain_turn: tokio::sync::Mutex<()>,
    /// A drain began and did not end (its stream went, and its task with it): it moved
    /// the epoch on, so writes it waited for now count with the newer ones.
    drain_cut_short: std::sync::atomic::AtomicBool,
}

/// One phase-2 stream, as the view knows it.
pub(super) struct StreamClock {
    /// Grows with each stream up.
    generation: u64,
    /// When the stream last delivered anything, in ns since the view's `origin`; 0:
    /// never.
    heard: AtomicU64,
}

#[derive(Default)]
struct Tables {
    /// The stream whose snapshot this follows; none yet.
    source: Option<Arc<StreamClock>>,
    unknown: bool,
    locked: HashSet<String>,
    /// Writes entering now count in `in_flight[epoch % 2]`.
    epoch: u64,
}

/// A write let through unchecked; keep it until the write's statement has finished
/// on the database. Dropping it may let a pending acknowledgement go.
#[must_use = "the write counts as unchecked only while the guard lives"]
pub struct UncheckedWrite {
    resource: Arc<ResourceView>,
    parity: usize,
}

impl std::fmt::Debug for UncheckedWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UncheckedWrite").finish_non_exhaustive()
    }
}

impl Drop for UncheckedWrite {
    fn drop(&mut self) {
        let r = &self.resource;
        // SeqCst with `draining` (see `ResourceView::drain`): either the drain sees
        // this decrement, or this sees the drain and wakes it.
        if r.in_flight[self.parity].fetch_sub(1, Ordering::SeqCst) == 1
            && r.draining.load(Ordering::SeqCst) > 0
        {
            r.drained.notify_waiters();
        }
    }
}

/// Decrements `draining` however a drain ends (its task may be aborted).
struct Draining<'a>(&'a AtomicUsize);
impl Drop for Draining<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ResourceView {
    fn new() -> Self {
        ResourceView {
            tables: RwLock::default(),
            in_flight: [AtomicUsize::new(0), AtomicUsize::new(0)],
            draining: AtomicUsize::new(0),
            drained: Notify::new(),
            drain_turn: tokio::sync::Mutex::new(()),
            drain_cut_short: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until every write that entered unchecked before this call has finished.
    pub(super) async fn drain(&self) {
        let _turn = self.drain_turn.lock().await;
        // A drain cut short moved the epoch on without waiting: the writes it waited
        // for share their counter with the epoch after the current one, which one
        // round does not wait for. A second round does (each round waits only for
        // writes that entered before it began).
        let rounds = if self.drain_cut_short.swap(true, Ordering::SeqCst) {
            2
        } else {
            1
        };
        for _ in 0..rounds {
            self.drain_round().await;
        }
        self.drain_cut_short.store(false, Ordering::SeqCst);
    }

    /// Moves the epoch on and waits until the writes counted in the old one finished.
    async fn drain_round(&self) {
        let old = {
            let mut t = self.write();
            let old = (t.epoch % 2) as usize;
            t.epoch += 1;
            old
        };
        self.draining.fetch_add(1, Ordering::SeqCst);
        let _draining = Draining(&self.draining);
        loop {
            let woken = self.drained.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.in_flight[old].load(Ordering::SeqCst) == 0 {
                return;
            }
            woken.await;
        }
    }
}

impl TableLockView {
    /// An empty view (nothing trusted until a stream delivers a snapshot). `lease`:
    /// how long the view is trusted after the lockserver was last heard from; it
    /// must not exceed the lockserver's `table_lease_ms`, less a margin for message
    /// delay (e.g. one `table_heartbeat_ms`).
    pub fn new(lease: Duration) -> Arc<Self> {
        Arc::new(TableLockView {
            instance: format!("{:016x}", rand::random::<u64>()),
            lease,
            lease_ns: AtomicU64::new(lease.as_nanos() as u64),
            origin: Instant::now(),
            newest: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            next_generation: AtomicU64::new(1),
            connecting: tokio::sync::Mutex::new(()),
            resources: RwLock::default(),
        })
    }

    /// This view's identity across its streams (`Hello.instance`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn resource(&self, resource: &str) -> Option<Arc<ResourceView>> {
        self.resources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(resource)
            .cloned()
    }

    fn resource_or_insert(&self, resource: &str) -> Arc<ResourceView> {
        if let Some(r) = self.resource(resource) {
            return r;
        }
        self.resources
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(resource.to_owned())
            .or_insert_with(|| Arc::new(ResourceView::new()))
            .clone()
    }

    fn since_origin(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_nanos() as u64
    }

    /// Whether `t` may be believed now: the stream whose snapshot it follows was heard
    /// from within the lease, and the newest stream did not go down since.
    ///
    /// A stream replaced by a newer one (a database first served) stays believed until
    /// the newer one's snapshot arrives or its lease runs out: the lockserver waits out
    /// the lease of a stream that closed unless a newer stream of this view acked its
    /// snapshot, and every notice of the newer stream that adds tables is applied at
    /// once. Writes judged meanwhile would otherwise all be checked, or refused.
    fn trusted(&self, t: &Tables, now: Instant) -> bool {
        let Some(source) = &t.source else {
            return false;
        };
        let heard = source.heard.load(Ordering::SeqCst);
        source.generation >= self.floor.load(Ordering::SeqCst)
            && !t.unknown
            && heard != 0
            && self.since_origin(now).saturating_sub(heard) <= self.lease_ns.load(Ordering::SeqCst)
    }

    /// A write about to run unchecked on `resource` (`table: None` = table not known:
    /// allowed only while no table of the resource is announced). None: the table may
    /// hold global locks, or the view is not trusted now (no stream, no snapshot yet,
    /// unknown, or nothing heard within the lease) — the caller must check the write's
    /// rows instead. The guard must live until the write's statement has finished on
    /// the database.
    pub fn enter_unchecked(&self, resource: &str, table: Option<&str>) -> Option<UncheckedWrite> {
        self.enter_unchecked_if(resource, |locked| match table {
            None => locked.is_empty(),
            Some(table) => !locked.contains(table),
        })
    }

    /// As [`Self::enter_unchecked`], for a table known only by its name without the
    /// schema (which schema the client's search_path finds is not known yet): allowed
    /// while no announced table of `resource` has that name, in any schema. Names are
    /// compared without regard to case, so a doubt always means a check.
    pub fn enter_unchecked_by_name(&self, resource: &str, name: &str) -> Option<UncheckedWrite> {
        self.enter_unchecked_if(resource, |locked| {
            !locked.iter().any(|qualified| names(qualified, name))
        })
    }

    /// An unchecked write enters when `free` says so of the announced tables of
    /// `resource`, and the view is trusted.
    fn enter_unchecked_if(
        &self,
        resource: &str,
        free: impl FnOnce(&HashSet<String>) -> bool,
    ) -> Option<UncheckedWrite> {
        let now = Instant::now();
        let r = self.resource(resource)?;
        let t = r.read();
        if !free(&t.locked) || !self.trusted(&t, now) {
            return None;
        }
        // Counted under the lock the flags were read under: a notice that sets flags
        // (write lock) and then drains cannot miss this write (module docs).
        let parity = (t.epoch % 2) as usize;
        r.in_flight[parity].fetch_add(1, Ordering::SeqCst);
        drop(t);
        Some(UncheckedWrite {
            resource: r,
            parity,
        })
    }

    /// The announced tables of `resource` that keep a write to the table called `name`
    /// (in any schema, compared as [`Self::enter_unchecked_by_name`] does; None: to any
    /// table) from entering unchecked. Empty while the view is not trusted.
    pub fn announced(&self, resource: &str, name: Option<&str>) -> Vec<String> {
        let now = Instant::now();
        let Some(r) = self.resource(resource) else {
            return Vec::new();
        };
        let t = r.read();
        if !self.trusted(&t, now) {
            return Vec::new();
        }
        t.locked
            .iter()
            .filter(|qualified| name.is_none_or(|name| names(qualified, name)))
            .cloned()
            .collect()
    }

    /// Whether the lockserver said it does not know which tables of `resource` hold
    /// global locks (a Redis store): nothing can be told by a table alone.
    pub fn untracked(&self, resource: &str) -> bool {
        self.resource(resource).is_some_and(|r| r.read().unknown)
    }

    /// Whether `table` of `resource` may hold global locks (true when the view is not
    /// trusted).
    pub fn may_be_locked(&self, resource: &str, table: &str) -> bool {
        let now = Instant::now();
        let Some(r) = self.resource(resource) else {
            return true;
        };
        let t = r.read();
        !self.trusted(&t, now) || t.locked.contains(table)
    }

    /// A stream is up; it is the newest.
    pub(super) fn stream_up(&self) -> Arc<StreamClock> {
        let generation = self.next_generation.fetch_add(1, Ordering::SeqCst);
        self.newest.fetch_max(generation, Ordering::SeqCst);
        Arc::new(StreamClock {
            generation,
            heard: AtomicU64::new(0),
        })
    }

    /// `stream` ended: if it was the newest, nothing it or an older stream fed is
    /// trusted any more, and a newer stream's snapshot is needed. (Even stopped on
    /// purpose: the lockserver's lease of it lives in its memory only, and a restarted
    /// lockserver announces tables without waiting for it. A stream stopped once a
    /// newer one delivered is not the newest.)
    pub(super) fn stream_down(&self, stream: &StreamClock) {
        if self.newest.load(Ordering::SeqCst) == stream.generation {
            self.floor
                .fetch_max(stream.generation + 1, Ordering::SeqCst);
        }
    }

    /// `stream` delivered a message.
    pub(super) fn heard(&self, stream: &StreamClock) {
        let now = self.since_origin(Instant::now()).max(1);
        stream.heard.store(now, Ordering::SeqCst);
    }

    /// Applies a notice of `stream`; returns the resource to drain before
    /// acknowledging it, if it needs an acknowledgement.
    ///
    /// Only the stream whose snapshot the resource follows may remove tables or
    /// replace the set (an older stream's notice may be late); any stream may add
    /// tables, which is always safe.
    pub(super) fn apply(
        &self,
        stream: &Arc<StreamClock>,
        n: pb::TableNotice,
    ) -> Option<Arc<ResourceView>> {
        let r = self.resource_or_insert(&n.resource_id);
        let generation = stream.generation;
        let drain = {
            let mut t = r.write();
            let followed = t.source.as_ref().map_or(0, |s| s.generation);
            if n.unknown {
                if generation >= followed {
                    t.source = Some(Arc::clone(stream));
                    t.unknown = true;
                }
                false
            } else if n.snapshot {
                if n.lease_ms > 0 {
                    let theirs = Duration::from_millis(n.lease_ms) * 2 / 3;
                    let lease = self.lease.min(theirs).as_nanos() as u64;
                    self.lease_ns.store(lease, Ordering::SeqCst);
                }
                if generation >= followed {
                    t.source = Some(Arc::clone(stream));
                    t.unknown = false;
                    t.locked = n.locked.into_iter().collect();
                } else {
                    t.locked.extend(n.locked);
                }
                true
            } else {
                let drain = !n.locked.is_empty();
                t.locked.extend(n.locked);
                if generation == followed {
                    for u in &n.unlocked {
                        t.locked.remove(u);
                    }
                }
                drain
            }
        };
        drain.then_some(r)
    }
}

/// Notices waiting for their drain and acknowledgement, per stream. One that does not
/// fit ends the stream (the proxy reconnects and gets a fresh snapshot).
const PENDING_ACKS: usize = 1024;

/// The table-notice side of one phase-2 stream: applies notices to the shared view
/// and acknowledges each once its resource is drained, on its own task so that draining
/// never holds up phase-2 work. Dropping it marks the stream down.
pub(super) struct StreamTables {
    view: Arc<TableLockView>,
    stream: Arc<StreamClock>,
    pending: mpsc::Sender<(u64, Arc<ResourceView>)>,
    acker: tokio::task::JoinHandle<()>,
}

impl StreamTables {
    /// The stream is up; acknowledgements go to `acks` (seq numbers, each notice on its
    /// own).
    pub(super) fn start(view: Arc<TableLockView>, acks: mpsc::Sender<u64>) -> Self {
        let stream = view.stream_up();
        let (pending, mut rx) = mpsc::channel::<(u64, Arc<ResourceView>)>(PENDING_ACKS);
        let acker = tokio::spawn(async move {
            // Each notice is acknowledged on its own once its resource's writes are
            // drained: a write holding up one database's announcement must not hold
            // up another's. Drains of one resource take turns (`drain_turn`); each
            // starts after its notice was applied, which is all its order needs.
            // Dropped with this task (the stream ended), the drains are cut short.
            let mut drains = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    next = rx.recv() => {
                        let Some((seq, r)) = next else { break };
                        let acks = acks.clone();
                        drains.spawn(async move {
                            r.drain().await;
                            let _ = acks.send(seq).await;
                        });
                    }
                    Some(_) = drains.join_next(), if !drains.is_empty() => {}
                }
            }
            while drains.join_next().await.is_some() {}
        });
        StreamTables {
            view,
            stream,
            pending,
            acker,
        }
    }

    /// A message arrived with these notices (none: a heartbeat or work). False when
    /// the stream must end: too many acknowledgements are pending.
    pub(super) fn on_message(&self, notices: Vec<pb::TableNotice>) -> bool {
        self.view.heard(&self.stream);
        let mut ok = true;
        for n in notices {
            let seq = n.seq;
            if let Some(r) = self.view.apply(&self.stream, n) {
                ok &= self.pending.try_send((seq, r)).is_ok();
            }
        }
        ok
    }
}

impl Drop for StreamTables {
    fn drop(&mut self) {
        self.view.stream_down(&self.stream);
        self.acker.abort();
    }
}

/// Whether `qualified` (`schema.table`, as lock keys name tables) names a table
/// called `name`, in any case.
fn names(qualified: &str, name: &str) -> bool {
    let Some(at) = qualified.len().checked_sub(name.len() + 1) else {
        return false;
    };
    qualified
        .get(at..)
        .and_then(|tail| tail.strip_prefix('.'))
        .is_some_and(|table| table.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests;
