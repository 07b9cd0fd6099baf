//! Phase-2 delivery: which proxies are connected for which resource, and the
//! dispatcher that hands due work to them, with retry and backoff.
//!
//! Owns: the registry of phase-2 streams, the in-flight table and retry counts.
//! Never changes transaction state itself (answers go through the coordinator).
//! Invariant: delivery is at least once — an item leaves the store's schedule only
//! when its transaction no longer owes it; until then it is re-sent after
//! `ack_timeout_ms`, or retried with backoff when no proxy of its resource is here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Phase2Config};
use crate::coordinator::Coordinator;
use crate::core::clock::Millis;
use crate::core::locks::FastMap;
use crate::core::txn::{Command, Phase2Outcome, Work, Xid};
use crate::error::{Error, Result};
use crate::store::Store;

/// Retry counts kept at most; past it they all restart from the initial delay.
const MAX_TRACKED: usize = 100_000;

struct Worker {
    id: u64,
    tx: mpsc::Sender<Work>,
}

/// Least time between two scans of the in-flight table, in ms.
const PRUNE_EVERY_MS: u64 = 100;

/// Connected proxies and delivery bookkeeping. The std `Mutex`es are never held
/// across an `.await`.
pub struct Phase2 {
    cfg: Phase2Config,
    queue: usize,
    max_streams: usize,
    workers: Mutex<HashMap<String, Vec<Worker>>>,
    next_id: AtomicU64,
    rr: AtomicUsize,
    connected: AtomicUsize,
    /// (xid, branch) delivered and not answered yet → redelivery time.
    in_flight: Mutex<FastMap<(Xid, u64), Millis>>,
    /// (xid, branch) offered and not done yet → where among its resource's streams its
    /// next offer starts: the one after the last it went to. A branch that only one
    /// proxy can answer at once (the one that saw its undo row go) reaches it within a
    /// round of the proxies; started from `rr` alone, whose step per retry round is the
    /// transaction's branch count, it could meet the same wrong proxy every round.
    next_stream: Mutex<FastMap<(Xid, u64), usize>>,
    attempts: Mutex<FastMap<Xid, u32>>,
    /// Transactions whose work found no stream of its resource, by resource: sitting
    /// out their backoff in the store's schedule.
    undelivered: Mutex<HashMap<String, HashSet<Xid>>>,
    /// Transactions a stream of their resource has connected for since: due at once.
    due_now: Mutex<Vec<Xid>>,
    /// When `prune` last scanned `in_flight`.
    pruned_at: AtomicU64,
    wake: Notify,
}

impl Phase2 {
    /// Empty registry.
    pub fn new(c: &Config) -> Self {
        Phase2 {
            cfg: c.phase2.clone(),
            queue: c.limits.phase2_queue,
            max_streams: c.limits.max_phase2_streams,
            workers: Mutex::default(),
            next_id: AtomicU64::new(1),
            rr: AtomicUsize::new(0),
            connected: AtomicUsize::new(0),
            in_flight: Mutex::default(),
            next_stream: Mutex::default(),
            attempts: Mutex::default(),
            undelivered: Mutex::default(),
            due_now: Mutex::default(),
            pruned_at: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    /// Registers a stream serving `resources`; work for them arrives on the receiver.
    /// Call [`Phase2::disconnect`] with the returned id when the stream ends.
    pub fn connect(&self, resources: &[String]) -> Result<(u64, mpsc::Receiver<Work>)> {
        if resources.is_empty() || resources.iter().any(|r| r.is_empty() || r.len() > 1024) {
            return Err(Error::InvalidArgument {
                what: "a phase-2 stream must name 1 or more resource ids of 1 to 1024 bytes",
            });
        }
        if self.connected.fetch_add(1, Ordering::Relaxed) >= self.max_streams {
            self.connected.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::LimitExceeded {
                what: "phase-2 streams",
                limit: self.max_streams,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue);
        let mut w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        for r in resources {
            w.entry(r.clone())
                .or_default()
                .push(Worker { id, tx: tx.clone() });
        }
        // Work that was waiting for this resource need not sit out its backoff (a
        // proxy replaces its stream when it starts serving another database, and
        // work dispatched in between would otherwise wait up to retry_max_ms). Taken
        // while `workers` is held, as `undeliverable` adds to it: none is missed.
        let waiting: Vec<Xid> = {
            let mut undelivered = self.undelivered.lock().unwrap_or_else(|p| p.into_inner());
            resources
                .iter()
                .filter_map(|r| undelivered.remove(r))
                .flatten()
                .collect()
        };
        drop(w);
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.make_due_now(waiting);
        self.wake();
        Ok((id, rx))
    }

    /// Unregisters stream `id`; its queue closes once no sender is left.
    pub fn disconnect(&self, id: u64) {
        let mut w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        for list in w.values_mut() {
            list.retain(|x| x.id != id);
        }
        w.retain(|_, l| !l.is_empty());
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connected streams.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Makes the dispatcher look for due work now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// An answer arrived for (xid, branch).
    pub fn answered(&self, xid: &Xid, branch_id: u64, outcome: Phase2Outcome) {
        let key = (xid.clone(), branch_id);
        if outcome != Phase2Outcome::Retry {
            self.next_stream
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    /// The next retry delay for `xid` (doubling from `retry_initial_ms` up to
    /// `retry_max_ms`), counting this attempt.
    pub fn backoff(&self, xid: &Xid) -> u64 {
        let mut a = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let n = a.entry(xid.clone()).or_default();
        let d = self
            .cfg
            .retry_initial_ms
            .saturating_mul(1u64 << (*n).min(20))
            .min(self.cfg.retry_max_ms);
        *n += 1;
        d
    }

    /// `xid` made progress: its next retry starts from the initial delay.
    pub fn reset(&self, xid: &Xid) {
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(xid);
    }

    /// Hands `w` to a live stream of its resource: round robin, and each offer of the
    /// same branch again to the stream after the one it last went to.
    fn offer(&self, w: &Work) -> Offered {
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = workers.get(&w.resource) else {
            return Offered::NoStream;
        };
        let key = (w.xid.clone(), w.branch_id);
        let mut next_stream = self.next_stream.lock().unwrap_or_else(|p| p.into_inner());
        let start = match next_stream.get(&key) {
            Some(&next) => next,
            None => self.rr.fetch_add(1, Ordering::Relaxed),
        };
        let sent = (0..list.len())
            .map(|i| (start + i) % list.len())
            .find(|&at| list[at].tx.try_send(w.clone()).is_ok());
        match sent {
            Some(at) => {
                next_stream.insert(key, at + 1);
                Offered::Sent
            }
            None => Offered::QueuesFull,
        }
    }

    fn mark_sent(&self, w: &Work, now: Millis) -> bool {
        let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let key = (w.xid.clone(), w.branch_id);
        match f.get(&key) {
            Some(until) if *until > now => false,
            _ => {
                f.insert(key, now + self.cfg.ack_timeout_ms);
                true
            }
        }
    }

    /// Drops bookkeeping for items whose answer never came (their proxy went away;
    /// the store's lease brings them back) and bounds the retry-count table.
    fn prune(&self, now: Millis) {
        // A full scan of the table; at most every PRUNE_EVERY_MS rather than on every
        // dispatch pass (one per commit under load). Expired entries left meanwhile
        // are harmless: `mark_sent` treats them as absent.
        let last = self.pruned_at.load(Ordering::Relaxed);
        if now < last.saturating_add(PRUNE_EVERY_MS) {
            return;
        }
        self.pruned_at.store(now, Ordering::Relaxed);
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now);
        let mut a = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        if a.len() > MAX_TRACKED {
            a.clear();
        }
        drop(a);
        // Branches whose transaction ended unanswered (its records forgotten): a
        // cleared one starts its next offer from `rr` again.
        let mut next_stream = self.next_stream.lock().unwrap_or_else(|p| p.into_inner());
        if next_stream.len() > MAX_TRACKED {
            next_stream.clear();
        }
    }

    /// `xid`'s work for `resource` found no stream: remembered until one connects.
    fn undeliverable(&self, resource: &str, xid: &Xid) {
        // Locked in `connect`'s order (workers, then undelivered).
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if workers.contains_key(resource) {
            // A stream connected since the offer failed.
            drop(workers);
            self.make_due_now([xid.clone()]);
            return;
        }
        let mut undelivered = self.undelivered.lock().unwrap_or_else(|p| p.into_inner());
        if undelivered.values().map(HashSet::len).sum::<usize>() >= MAX_TRACKED {
            // Forgotten ones sit out their backoff, as before a stream connects.
            undelivered.clear();
        }
        undelivered
            .entry(resource.to_owned())
            .or_default()
            .insert(xid.clone());
    }

    /// The transactions to make due now, taken once.
    fn take_due_now(&self) -> Vec<Xid> {
        std::mem::take(&mut *self.due_now.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn make_due_now(&self, xids: impl IntoIterator<Item = Xid>) {
        self.due_now
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(xids);
    }

    fn unmark(&self, w: &Work) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(w.xid.clone(), w.branch_id));
    }
}

/// What became of work offered to the streams of its resource.
enum Offered {
    Sent,
    /// No stream serves its resource: it waits for one (see `undeliverable`).
    NoStream,
    /// Every stream's queue is full: it backs off.
    QueuesFull,
}

/// The dispatcher: claims due work from the store and offers it to proxies, until
/// `cancel`. Runs in every lockserver; with a shared Redis the claim lease keeps
/// two of them from sending the same item at once.
pub async fn dispatch(coord: Arc<Coordinator>, cancel: CancellationToken) {
    let p2 = &coord.phase2;
    let poll = Duration::from_millis(p2.cfg.poll_interval_ms);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = p2.wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
        if let Err(e) = dispatch_once(&coord).await {
            tracing::warn!(error = %e, "phase-2 dispatch pass failed");
        }
    }
}

/// How soon work that found no stream here is offered again when other lockservers
/// share the store (one of them may hold the stream).
const NO_STREAM_RETRY_MS: u64 = 1_000;

async fn dispatch_once(coord: &Coordinator) -> Result<()> {
    let p2 = &coord.phase2;
    let now = coord.now();
    p2.prune(now);
    let mut due_now = p2.take_due_now().into_iter();
    while let Some(xid) = due_now.next() {
        if let Err(e) = coord.store.schedule_phase2(&xid, now).await {
            // The rest are due at the next pass still (this one keeps their backoff).
            p2.make_due_now(std::iter::once(xid).chain(due_now));
            return Err(e);
        }
    }
    let work = coord
        .store
        .claim_phase2(now, p2.cfg.ack_timeout_ms, p2.cfg.batch)
        .await?;
    // Per transaction: a branch to answer Retry for, and whether every offer found no
    // stream here (where another lockserver may hold the proxy's).
    let mut retry: HashMap<Xid, (u64, bool)> = HashMap::new();
    for w in work {
        if !p2.mark_sent(&w, now) {
            continue; // delivered recently, answer pending
        }
        match p2.offer(&w) {
            Offered::Sent => {
                coord.metrics.phase2_sent.inc();
                tracing::debug!(xid = %w.xid, branch = w.branch_id, resource = %w.resource, commit = w.commit, "phase-2 work sent");
            }
            offered => {
                p2.unmark(&w);
                let no_stream = matches!(offered, Offered::NoStream);
                if no_stream {
                    p2.undeliverable(&w.resource, &w.xid);
                }
                let entry = retry.entry(w.xid.clone()).or_insert((w.branch_id, true));
                entry.1 &= no_stream;
            }
        }
    }
    for (xid, (branch_id, no_stream)) in retry {
        coord.metrics.phase2_retries.inc();
        // Undeliverable counts as a retryable failure: a rollback shows *Retrying.
        coord
            .exec(Command::Phase2Result {
                xid: xid.clone(),
                branch_id,
                outcome: Phase2Outcome::Retry,
            })
            .await?;
        // With a shared store the proxy's stream may be another lockserver's: its
        // polls must get the work soon, not after this one's growing backoff (5 s
        // apart, each lost race doubling it; branches waited 20 s).
        let cap = if no_stream && coord.store.is_shared() {
            NO_STREAM_RETRY_MS
        } else {
            u64::MAX
        };
        let at = now + p2.backoff(&xid).min(cap);
        coord.store.schedule_phase2(&xid, at).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::txn::BranchKind;

    fn work(xid: &Xid, branch_id: u64) -> Work {
        Work {
            xid: xid.clone(),
            branch_id,
            resource: "db".into(),
            kind: BranchKind::AT,
            commit: true,
        }
    }

    /// Two branches of one transaction retried round after round over two proxies:
    /// each reaches both, whatever the other's offers do to the shared round robin.
    #[test]
    fn a_branch_offered_again_goes_to_the_next_stream() {
        let phase2 = Phase2::new(&Config::default());
        let (_, mut first) = phase2.connect(&["db".into()]).unwrap();
        let (_, mut second) = phase2.connect(&["db".into()]).unwrap();
        let xid = Xid::new("n", 1);
        let mut reached = HashMap::<u64, Vec<usize>>::new();
        for _ in 0..4 {
            for branch in [1, 2] {
                assert!(matches!(phase2.offer(&work(&xid, branch)), Offered::Sent));
                phase2.answered(&xid, branch, Phase2Outcome::Retry);
                let to = if first.try_recv().is_ok() {
                    0
                } else {
                    second.try_recv().map(|_| 1).unwrap()
                };
                reached.entry(branch).or_default().push(to);
            }
        }
        assert_eq!(
            reached[&1],
            [
                reached[&1][0],
                1 - reached[&1][0],
                reached[&1][0],
                1 - reached[&1][0]
            ]
        );
        assert_eq!(
            reached[&2],
            [
                reached[&2][0],
                1 - reached[&2][0],
                reached[&2][0],
                1 - reached[&2][0]
            ]
        );
        // Done: its next transaction's offers start from the round robin again.
        phase2.answered(&xid, 1, Phase2Outcome::Committed);
        assert!(!phase2.next_stream.lock().unwrap().contains_key(&(xid, 1)));
    }
}
