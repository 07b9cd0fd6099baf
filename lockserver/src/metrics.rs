//! Prometheus metrics (`GET /metrics`).
//!
//! Owns: the registry and its instruments. Never blocks a request on encoding.
//! Invariant: names are `tandem_lockserver_*`; gauges of state (active globals,
//! held locks) are read from the store at scrape time, so they cannot drift.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::txn::GlobalStatus;

/// The Content-Type of what the registries render (OpenMetrics text, `# EOF` and all):
/// served as `text/plain`, Prometheus would read it with its older parser.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
use crate::store::Counts;

type Labels = [(&'static str, &'static str); 1];

fn latency() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The lockserver's instruments.
pub struct Metrics {
    registry: Registry,
    active: Gauge,
    locks: Gauge,
    /// Phase-2 streams connected.
    pub proxies: Gauge,
    /// Lock conflicts answered.
    pub conflicts: Counter,
    /// Phase-2 items retried (proxy said Retry, none connected, or no answer).
    pub phase2_retries: Counter,
    /// Phase-2 items delivered.
    pub phase2_sent: Counter,
    /// Transactions ended, by final status.
    pub ended: Family<Labels, Counter>,
    /// Request latency in seconds, by operation.
    pub latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// Requests refused because `max_in_flight` was reached.
    pub overloaded: Counter,
    /// `latency`'s histogram of each operation in [`OPS`], resolved once: the
    /// family's lookup (a lock and a hash of the label) ran on every request.
    by_op: Vec<Histogram>,
    /// `ended`'s counter of each status a transaction can end in, resolved once.
    ended_by: Vec<(GlobalStatus, Counter)>,
}

/// Operations whose latency histogram is resolved up front.
const OPS: [&str; 7] = [
    "begin",
    "register",
    "report",
    "commit",
    "rollback",
    "lock_query",
    "status",
];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tandem_lockserver");
        let m = Metrics {
            active: Gauge::default(),
            locks: Gauge::default(),
            proxies: Gauge::default(),
            conflicts: Counter::default(),
            phase2_retries: Counter::default(),
            phase2_sent: Counter::default(),
            ended: Family::default(),
            latency: Family::new_with_constructor(latency as fn() -> Histogram),
            overloaded: Counter::default(),
            registry: Registry::default(),
            by_op: Vec::new(),
            ended_by: Vec::new(),
        };
        registry.register(
            "active_globals",
            "Global transactions not yet finished",
            m.active.clone(),
        );
        registry.register("held_locks", "Global row locks held", m.locks.clone());
        registry.register(
            "phase2_streams",
            "Connected proxy phase-2 streams",
            m.proxies.clone(),
        );
        registry.register(
            "lock_conflicts",
            "Branch registrations refused for a lock conflict",
            m.conflicts.clone(),
        );
        registry.register(
            "phase2_retries",
            "Phase-2 work items retried",
            m.phase2_retries.clone(),
        );
        registry.register(
            "phase2_sent",
            "Phase-2 work items delivered to proxies",
            m.phase2_sent.clone(),
        );
        registry.register(
            "globals_ended",
            "Global transactions ended, by status",
            m.ended.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency by operation",
            m.latency.clone(),
        );
        registry.register(
            "overloaded",
            "Requests refused at max_in_flight",
            m.overloaded.clone(),
        );
        let by_op = OPS
            .iter()
            .map(|op| m.latency.get_or_create(&[("op", op)]).clone())
            .collect();
        let ended_by = GlobalStatus::ALL
            .iter()
            .filter(|s| {
                s.is_finished()
                    || matches!(
                        s,
                        GlobalStatus::RollbackFailed | GlobalStatus::TimeoutRollbackFailed
                    )
            })
            .map(|s| (*s, m.ended.get_or_create(&[("status", s.as_str())]).clone()))
            .collect();
        Metrics {
            registry,
            by_op,
            ended_by,
            ..m
        }
    }
}

impl Metrics {
    /// Records one request's latency.
    pub fn observe(&self, op: &'static str, started: std::time::Instant) {
        let secs = started.elapsed().as_secs_f64();
        match OPS.iter().position(|o| *o == op) {
            Some(i) => self.by_op[i].observe(secs),
            None => self.latency.get_or_create(&[("op", op)]).observe(secs),
        }
    }

    /// Counts a transaction that ended with `status`.
    pub fn ended(&self, status: GlobalStatus) {
        match self.ended_by.iter().find(|(s, _)| *s == status) {
            Some((_, c)) => c.inc(),
            None => self
                .ended
                .get_or_create(&[("status", status.as_str())])
                .inc(),
        };
    }

    /// The text exposition, with the state gauges set from `counts`.
    pub fn render(&self, counts: Counts) -> String {
        self.active.set(counts.active as i64);
        self.locks.set(counts.locks as i64);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
