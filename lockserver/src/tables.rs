//! Which tables may hold global locks: the announced tables, pushed to the proxies
//! that asked for them (`Hello.table_locks`) as table notices on their phase-2 streams.
//!
//! A proxy lets a write outside any global transaction through unchecked only while
//! its table is not announced. So a table is announced, and every subscriber of its
//! resource has acknowledged that (or its stream closed at least `table_lease_ms`
//! ago), before the first lock on it is granted; it is unannounced once it has held
//! no lock for `unannounce_after_ms`.
//!
//! Owns: the announced set, the table-notice subscribers with their sequence numbers
//! and acknowledgements, and recently closed subscribers. Never changes transaction
//! state, never reads the store by itself and never speaks protobuf (`api::grpc`
//! maps [`Down`]). Invariant: a registration holds [`Tables::gate`] from its check
//! ([`Gate::covers`]) to its apply, and a table is only removed under the write side
//! of that same lock, after seeing it hold no lock: no lock is ever taken on a table
//! the proxies may believe unannounced. With Redis (several lockservers, none
//! knowing what the others granted) nothing is tracked: every subscriber is told
//! `unknown` and checks every write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::clock::Millis;
use crate::core::locks::{FastMap, LockKey, split_table_prefix};
use crate::error::{Error, Result};

/// Messages queued towards one subscriber. A notice that does not fit disconnects
/// the subscriber (its proxy stops trusting its view, and the announcement waits out
/// its lease): a notice must never be lost. A heartbeat that does not fit is skipped.
pub const NOTICE_QUEUE: usize = 256;

/// What goes down a subscriber's stream besides phase-2 work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Down {
    /// Table notices, in sequence order.
    Notices(Vec<Notice>),
    /// Nothing new: the lockserver is still there.
    Heartbeat,
}

/// One table notice for one resource (`TableNotice` in the protocol).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Notice {
    /// The resource.
    pub resource: String,
    /// Per stream, from 1, increasing.
    pub seq: u64,
    /// Tables that may hold global locks from now on (with `snapshot`: all of them).
    pub locked: Vec<String>,
    /// Tables that hold none any more.
    pub unlocked: Vec<String>,
    /// `locked` replaces the proxy's view of the resource.
    pub snapshot: bool,
    /// This lockserver keeps no view: every table may hold locks.
    pub unknown: bool,
    /// With `snapshot`: `table_lease_ms`, which bounds how long the proxy trusts it.
    pub lease_ms: u64,
}

/// What must happen before a newly announced table is ready.
#[derive(Debug)]
struct Need {
    /// (subscriber, seq): each must ack that seq, or close and wait out its lease.
    acks: Vec<(u64, u64)>,
    /// Subscribers of the resource closed less than a lease before the announcement:
    /// each must wait out its lease, unless superseded.
    closed: Vec<u64>,
}

#[derive(Debug)]
struct Table {
    resource: String,
    table: String,
    /// `None`: ready, locks may be taken.
    need: Option<Need>,
    /// When the table was first seen holding no lock (ms); 0 while it holds some.
    idle_since: AtomicU64,
    /// When a registration last found the table ready (ms).
    last_used: AtomicU64,
}

struct Sub {
    resources: Vec<String>,
    /// Which proxy this is, for operators (its worker name and address).
    name: String,
    /// The proxy's view (Hello.instance), across its streams; may be empty.
    instance: String,
    /// The seq of the last snapshot notice: acked, the view is fed by this stream.
    snapshot_seq: u64,
    tx: mpsc::Sender<Down>,
    kill: CancellationToken,
    /// Last seq sent, and the highest up to which every one is acknowledged.
    sent: u64,
    acked: u64,
    /// Acknowledged one by one, above `acked`.
    acked_apart: std::collections::BTreeSet<u64>,
}

impl Sub {
    fn has_acked(&self, seq: u64) -> bool {
        seq <= self.acked || self.acked_apart.contains(&seq)
    }
}

struct Closed {
    resources: Vec<String>,
    name: String,
    instance: String,
    at: Instant,
}

/// Notices per subscriber, to be sent.
type Outbox = Vec<(u64, Vec<Notice>)>;

#[derive(Default)]
struct Subs {
    live: FastMap<u64, Sub>,
    closed: FastMap<u64, Closed>,
}

impl Subs {
    /// Ends subscriber `id`'s notices (and, with `kill`, its stream) as of `now`.
    fn close(&mut self, id: u64, now: Instant, kill: bool) -> bool {
        let Some(s) = self.live.remove(&id) else {
            return false;
        };
        if kill {
            s.kill.cancel();
        }
        self.closed.insert(
            id,
            Closed {
                resources: s.resources,
                name: s.name,
                instance: s.instance,
                at: now,
            },
        );
        true
    }

    /// Queues `notices` for each subscriber; one that cannot take them is closed.
    fn send(&mut self, per_sub: Outbox, now: Instant) {
        for (id, notices) in per_sub {
            let full = self
                .live
                .get(&id)
                .is_some_and(|s| s.tx.try_send(Down::Notices(notices)).is_err());
            if full && self.close(id, now, true) {
                tracing::warn!(
                    subscriber = id,
                    "table-notice stream fell behind; disconnected"
                );
            }
        }
    }

    /// One notice per resource of `tables` (resource → tables) for each subscriber of
    /// it, as `locked` or `unlocked`; returns what to send and the (subscriber, seq)
    /// pairs per resource.
    fn notices(
        &mut self,
        tables: &BTreeMap<String, Vec<String>>,
        locked: bool,
    ) -> (Outbox, BTreeMap<String, Vec<(u64, u64)>>) {
        let mut out = Vec::new();
        let mut acks: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for (id, s) in &mut self.live {
            let mut mine = Vec::new();
            for (r, ts) in tables {
                if !s.resources.contains(r) {
                    continue;
                }
                s.sent += 1;
                acks.entry(r.clone()).or_default().push((*id, s.sent));
                let (locked, unlocked) = if locked {
                    (ts.clone(), Vec::new())
                } else {
                    (Vec::new(), ts.clone())
                };
                mine.push(Notice {
                    resource: r.clone(),
                    seq: s.sent,
                    locked,
                    unlocked,
                    ..Notice::default()
                });
            }
            if !mine.is_empty() {
                out.push((*id, mine));
            }
        }
        (out, acks)
    }

    /// `None` when `need` is met at `now`; else when it may be met by time alone
    /// (`Some(None)`: only an ack can meet it).
    fn wait_for(
        &self,
        need: &Need,
        resource: &str,
        now: Instant,
        lease: Duration,
    ) -> Option<(Option<Instant>, String)> {
        let mut wake: Option<Instant> = None;
        let mut unacked = None;
        let mut lease_of = None;
        let closed = need.closed.iter();
        for id in need.acks.iter().map(|(id, _)| id).chain(closed) {
            if let Some(s) = self.live.get(id) {
                if let Some((_, seq)) = need.acks.iter().find(|(a, _)| a == id)
                    && !s.has_acked(*seq)
                {
                    unacked.get_or_insert(&s.name);
                }
            } else if let Some(c) = self.closed.get(id) {
                let end = c.at + lease;
                if end > now && !self.superseded(*id, c, resource) {
                    wake = Some(wake.map_or(end, |w| w.max(end)));
                    lease_of.get_or_insert(&c.name);
                }
            } // forgotten: closed more than a lease ago
        }
        match (unacked, lease_of) {
            (Some(name), _) => Some((None, format!("the acknowledgement of {name}"))),
            (None, Some(name)) => Some((wake, format!("the lease of {name}, whose stream closed"))),
            (None, None) => None,
        }
    }
}

impl Subs {
    /// A live stream of the same view, newer than the closed one (`closed_id`), covers
    /// `resource` and acked its snapshot: the view follows that snapshot, taken after
    /// anything the closed stream fed it, and its acks wait for every write the closed
    /// stream let through. (A proxy brings its streams up one at a time, so ids follow
    /// the order of its snapshots. An older stream's snapshot may be replaced in the
    /// view by the closed one's, which missed what was announced since.)
    fn superseded(&self, closed_id: u64, closed: &Closed, resource: &str) -> bool {
        !closed.instance.is_empty()
            && self.live.iter().any(|(id, s)| {
                *id > closed_id
                    && s.instance == closed.instance
                    && s.acked >= s.snapshot_seq
                    && s.resources.iter().any(|r| r == resource)
            })
    }
}

type Announced = FastMap<Box<str>, Table>;

/// Announced tables and their subscribers; one per lockserver.
pub struct Tables {
    /// False with Redis: nothing tracked, every subscriber told `unknown`.
    tracked: bool,
    lease: Duration,
    ack_timeout: Duration,
    unannounce_after_ms: u64,
    release_after_idle_ms: u64,
    /// By [`LockKey::table_prefix`]. Also the gate between a registration's check and
    /// its apply (read) and unannouncing (write). Lock order: this, then `subs`.
    /// A std lock: never held across an `.await`.
    announced: RwLock<Announced>,
    /// A std Mutex: never held across an `.await`.
    subs: Mutex<Subs>,
    /// Woken on every ack and every closed subscriber.
    changed: Notify,
}

/// Held from a registration's check to its apply: while it is held no table is
/// unannounced. Holds nothing when tables are not tracked. With the time it was taken.
pub struct Gate<'a>(Option<RwLockReadGuard<'a, Announced>>, Millis);

impl Gate<'_> {
    /// Whether locks on every table of `keys` may be granted now. The hot path: one
    /// hash lookup per run of keys on the same table, no allocation.
    /// Each table found ready counts as used now ([`Tables::release_idle`]).
    pub fn covers(&self, keys: &[LockKey]) -> bool {
        let Some(map) = &self.0 else {
            return true;
        };
        let mut last = None;
        for k in keys {
            if last.is_some_and(|p| k.in_table(p)) {
                continue;
            }
            let p = k.table_prefix();
            match map.get(p) {
                Some(t) if t.need.is_none() => t.last_used.store(self.1, Ordering::Relaxed),
                _ => return false,
            }
            last = Some(p);
        }
        true
    }
}

enum Progress {
    Ready,
    /// A table was unannounced meanwhile: announce it again.
    Missing,
    /// (resource, table) not ready yet; when time alone may make it so; what it
    /// waits for, for operators.
    Waiting(String, String, Option<Instant>, String),
}

impl Tables {
    /// Nothing announced, no subscriber. `tracked`: the embedded store (this
    /// lockserver sees every lock).
    pub fn new(c: &Config, tracked: bool) -> Self {
        Tables {
            tracked,
            lease: Duration::from_millis(c.table_lease_ms),
            ack_timeout: Duration::from_millis(c.table_ack_timeout_ms),
            unannounce_after_ms: c.unannounce_after_ms,
            release_after_idle_ms: c.release_after_idle_ms,
            announced: RwLock::default(),
            subs: Mutex::default(),
            changed: Notify::new(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Announced> {
        self.announced.write().unwrap_or_else(|p| p.into_inner())
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, Subs> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Announces (ready at once: nobody is subscribed yet) the tables that hold locks
    /// when the lockserver starts, by [`LockKey::table_prefix`].
    pub fn seed(&self, prefixes: &[String]) {
        if !self.tracked {
            return;
        }
        let mut map = self.write();
        for p in prefixes {
            let Some((r, t)) = split_table_prefix(p) else {
                continue;
            };
            map.insert(
                p.as_str().into(),
                Table {
                    resource: r.to_owned(),
                    table: t.to_owned(),
                    need: None,
                    idle_since: AtomicU64::new(0),
                    last_used: AtomicU64::new(0),
                },
            );
        }
    }

    /// The gate a registration holds from [`Gate::covers`] to its apply; `now` for
    /// the tables it covers.
    pub fn gate(&self, now: Millis) -> Gate<'_> {
        Gate(
            self.tracked
                .then(|| self.announced.read().unwrap_or_else(|p| p.into_inner())),
            now,
        )
    }

    /// How long a registration waits for acknowledgements.
    pub fn ack_timeout(&self) -> Duration {
        self.ack_timeout
    }

    /// Registers subscriber `id` (a phase-2 stream) for `resources`. The first
    /// message on the returned queue holds one snapshot (or, untracked, `unknown`)
    /// notice per resource; the token fires when the subscriber must be disconnected.
    pub fn subscribe(
        &self,
        id: u64,
        resources: &[String],
        instance: &str,
        name: &str,
    ) -> (mpsc::Receiver<Down>, CancellationToken) {
        let mut resources = resources.to_vec();
        resources.sort();
        resources.dedup();
        // The read lock keeps announcements out until the subscriber is in `live`:
        // each later one reaches it as a notice, each earlier one is in the snapshot.
        let map = self.announced.read().unwrap_or_else(|p| p.into_inner());
        let notices: Vec<Notice> = resources
            .iter()
            .zip(1..)
            .map(|(r, seq)| {
                let locked = map
                    .values()
                    .filter(|t| self.tracked && t.resource == *r)
                    .map(|t| t.table.clone())
                    .collect();
                Notice {
                    resource: r.clone(),
                    seq,
                    locked,
                    snapshot: self.tracked,
                    unknown: !self.tracked,
                    lease_ms: self.lease.as_millis() as u64,
                    ..Notice::default()
                }
            })
            .collect();
        let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
        let sent = notices.len() as u64;
        // A fresh queue: the first message always fits.
        let _ = tx.try_send(Down::Notices(notices));
        let kill = CancellationToken::new();
        self.subs().live.insert(
            id,
            Sub {
                resources,
                instance: instance.to_owned(),
                name: name.to_owned(),
                snapshot_seq: sent,
                tx,
                kill: kill.clone(),
                sent,
                acked: 0,
                acked_apart: Default::default(),
            },
        );
        drop(map);
        (rx, kill)
    }

    /// Subscriber `id`'s stream ended. Its resources' announcements wait out its
    /// lease (its proxy may trust its view until then).
    pub fn unsubscribe(&self, id: u64) {
        if self.subs().close(id, Instant::now(), false) {
            self.changed.notify_waiters();
        }
    }

    /// Subscriber `id` acknowledged every notice up to `seq`, and those of `apart`.
    pub fn ack(&self, id: u64, seq: u64, apart: &[u64]) {
        if let Some(s) = self.subs().live.get_mut(&id) {
            // Acks of notices never sent count for nothing.
            s.acked = s.acked.max(seq.min(s.sent));
            s.acked_apart
                .extend(apart.iter().filter(|q| **q > s.acked && **q <= s.sent));
            while s.acked_apart.remove(&(s.acked + 1)) {
                s.acked += 1;
            }
            let acked = s.acked;
            s.acked_apart.retain(|q| *q > acked);
        }
        self.changed.notify_waiters();
    }

    /// Sends every subscriber a heartbeat; forgets subscribers closed a lease ago.
    pub fn heartbeat(&self) {
        let now = Instant::now();
        let mut subs = self.subs();
        for s in subs.live.values() {
            // Full: the stream is behind anyway, and a notice would close it.
            let _ = s.tx.try_send(Down::Heartbeat);
        }
        let lease = self.lease;
        subs.closed.retain(|_, c| c.at + lease > now);
    }

    /// Makes every table of `keys` ready for locks: announces the ones not announced
    /// yet and waits for their acknowledgements, up to `deadline`. Past it the
    /// tables stay announced (announcing is always safe) and this fails with
    /// [`Error::Unacknowledged`].
    pub async fn announce(&self, keys: &[LockKey], now: Millis, started: Instant) -> Result<()> {
        let deadline = started + self.ack_timeout;
        loop {
            self.add(keys, now)?;
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let (resource, table, wake, waiting_for) = match self.progress(keys) {
                    Progress::Ready => return Ok(()),
                    Progress::Missing => break,
                    Progress::Waiting(r, t, w, on) => (r, t, w, on),
                };
                let at = Instant::now();
                if at >= deadline {
                    tracing::warn!(%resource, %table, %waiting_for, "a table announcement was not acknowledged in time: its registration fails");
                    return Err(Error::Unacknowledged {
                        resource,
                        table,
                        waited_ms: at.saturating_duration_since(started).as_millis() as u64,
                        waiting_for,
                    });
                }
                let until = wake.map_or(deadline, |w| w.min(deadline));
                let _ = tokio::time::timeout_at(until, changed).await;
            }
            if Instant::now() >= deadline {
                // Unannounced again and again: give up like a missing ack would.
                let k = keys.first().map(|k| k.table_prefix()).unwrap_or_default();
                let (r, t) = split_table_prefix(k).unwrap_or_default();
                return Err(Error::Unacknowledged {
                    resource: r.to_owned(),
                    table: t.to_owned(),
                    waited_ms: self.ack_timeout.as_millis() as u64,
                    waiting_for: "an announcement that was let go again and again".to_owned(),
                });
            }
        }
    }

    /// Announces the tables of `keys` not announced yet: notices to their
    /// subscribers, and what each table must wait for.
    fn add(&self, keys: &[LockKey], now: Millis) -> Result<()> {
        let mut map = self.write();
        let mut fresh: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut prefixes: Vec<&str> = Vec::new();
        for k in keys {
            let p = k.table_prefix();
            if map.contains_key(p) || prefixes.contains(&p) {
                continue;
            }
            let (r, t) = split_table_prefix(p).ok_or(Error::Corrupt {
                what: "a lock key without resource and table",
            })?;
            fresh.entry(r.to_owned()).or_default().push(t.to_owned());
            prefixes.push(p);
        }
        if prefixes.is_empty() {
            return Ok(());
        }
        let at = Instant::now();
        let mut subs = self.subs();
        let (send, acks) = subs.notices(&fresh, true);
        let lease = self.lease;
        for p in prefixes {
            let Some((r, t)) = split_table_prefix(p) else {
                continue;
            };
            // Closed subscribers of the resource still inside their lease.
            let closed = subs
                .closed
                .iter()
                .filter(|(_, c)| c.at + lease > at && c.resources.iter().any(|x| x == r))
                .map(|(id, _)| *id)
                .collect();
            let need = Need {
                acks: acks.get(r).cloned().unwrap_or_default(),
                closed,
            };
            tracing::debug!(
                resource = r,
                table = t,
                acks = need.acks.len(),
                "table announced"
            );
            map.insert(
                p.into(),
                Table {
                    resource: r.to_owned(),
                    table: t.to_owned(),
                    need: Some(need),
                    idle_since: AtomicU64::new(now.max(1)),
                    last_used: AtomicU64::new(now),
                },
            );
        }
        // Under the announced lock: notices about one table leave in the order the
        // set changed.
        subs.send(send, at);
        Ok(())
    }

    /// Marks the tables of `keys` whose acknowledgements are in as ready; reports the
    /// first one that is not.
    fn progress(&self, keys: &[LockKey]) -> Progress {
        let now = Instant::now();
        let mut map = self.write();
        let subs = self.subs();
        let mut waiting: Option<Progress> = None;
        for k in keys {
            let Some(t) = map.get_mut(k.table_prefix()) else {
                return Progress::Missing;
            };
            let Some(need) = &t.need else {
                continue;
            };
            match subs.wait_for(need, &t.resource, now, self.lease) {
                None => t.need = None,
                Some((wake, on)) => {
                    if waiting.is_none() {
                        waiting = Some(Progress::Waiting(
                            t.resource.clone(),
                            t.table.clone(),
                            wake,
                            on,
                        ));
                    }
                }
            }
        }
        waiting.unwrap_or(Progress::Ready)
    }

    /// One timer pass: unannounces tables seen holding no lock for
    /// `unannounce_after_ms`. `in_use` tells, for table prefixes, whether each
    /// holds a lock now (the store's view; called under the gate's write side).
    pub fn unannounce_idle(&self, now: Millis, in_use: impl Fn(&[&str]) -> Vec<bool>) {
        if !self.tracked {
            return;
        }
        let candidates: Vec<String> = {
            let map = self.announced.read().unwrap_or_else(|p| p.into_inner());
            if map.is_empty() {
                return;
            }
            let prefixes: Vec<&str> = map.keys().map(|p| &**p).collect();
            let used = in_use(&prefixes);
            prefixes
                .into_iter()
                .zip(used)
                .filter(|(p, used)| {
                    let Some(t) = map.get(*p) else {
                        return false;
                    };
                    // Being announced: its registration waits for it, and would only
                    // announce it again.
                    if t.need.is_some() {
                        return false;
                    }
                    if *used {
                        t.idle_since.store(0, Ordering::Relaxed);
                        return false;
                    }
                    let since = t.idle_since.load(Ordering::Relaxed);
                    if since == 0 {
                        t.idle_since.store(now.max(1), Ordering::Relaxed);
                        return false;
                    }
                    now.saturating_sub(since) >= self.unannounce_after_ms
                })
                .map(|(p, _)| p.to_owned())
                .collect()
        };
        if candidates.is_empty() {
            return;
        }
        let refs: Vec<&str> = candidates.iter().map(String::as_str).collect();
        self.remove_unused(self.write(), &refs, in_use);
    }

    /// Unannounces at once the tables of `prefixes` that are announced, ready, unused
    /// by registrations for `release_after_idle_ms` and hold no lock (`in_use`, as for
    /// [`Self::unannounce_idle`]): a proxy asks before a write it can judge only by its
    /// tables, which would otherwise be refused (or wait) until the timer got to them.
    /// Returns the prefixes that stay announced: tables holding locks, being announced
    /// or used lately (a busy table's global transactions are not made to announce it
    /// again between one another); untracked, every one.
    ///
    /// A table being announced stays: its registration takes its locks under the
    /// gate as soon as it is ready. One let go between its readiness and that
    /// (another registration of the same announcement still on its way) is announced
    /// again, as after the timer.
    pub fn release_idle(
        &self,
        prefixes: &[&str],
        now: Millis,
        in_use: impl Fn(&[&str]) -> Vec<bool>,
    ) -> Vec<String> {
        if !self.tracked {
            return prefixes.iter().map(|p| (*p).to_owned()).collect();
        }
        let map = self.write();
        let mut staying = Vec::new();
        let mut candidates = Vec::new();
        for p in prefixes {
            match map.get(*p) {
                None => {}
                Some(t)
                    if t.need.is_some()
                        || now.saturating_sub(t.last_used.load(Ordering::Relaxed))
                            < self.release_after_idle_ms =>
                {
                    staying.push((*p).to_owned());
                }
                Some(_) => candidates.push(*p),
            }
        }
        staying.extend(self.remove_unused(map, &candidates, in_use));
        staying
    }

    /// Unannounces those of `candidates` that `in_use` says hold no lock, under the
    /// write side `map` of the gate; returns the others.
    fn remove_unused(
        &self,
        mut map: std::sync::RwLockWriteGuard<'_, Announced>,
        candidates: &[&str],
        in_use: impl Fn(&[&str]) -> Vec<bool>,
    ) -> Vec<String> {
        if candidates.is_empty() {
            return Vec::new();
        }
        // Asked under the write side: no registration is between its check and its
        // apply now, and a later one finds the table unannounced and announces it
        // again, in a notice queued after this one.
        let used = in_use(candidates);
        let mut gone: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut staying = Vec::new();
        for (p, used) in candidates.iter().zip(used) {
            if used {
                staying.push((*p).to_owned());
                continue;
            }
            if let Some(t) = map.remove(*p) {
                tracing::debug!(resource = %t.resource, table = %t.table, "table unannounced");
                gone.entry(t.resource).or_default().push(t.table);
            }
        }
        if !gone.is_empty() {
            let mut subs = self.subs();
            let (send, _) = subs.notices(&gone, false);
            subs.send(send, Instant::now());
        }
        staying
    }
}
