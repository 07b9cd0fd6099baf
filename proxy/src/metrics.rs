//! Prometheus metrics of the proxy process.
//!
//! Owns the registry and the instruments. Sessions update instruments once per batch of
//! messages, not once per message, to keep the relay lean. Never blocks.

mod mysql;

pub use mysql::MysqlMetrics;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type KindLabel = [(&'static str, &'static str); 1];

/// undo_log housekeeping's instruments (`at::sweep`, `at::cleanup`), one set per engine.
#[derive(Clone, Default)]
pub struct UndoSweepMetrics {
    /// Phase-2 commits of a branch that found no undo row yet, answered Retry.
    pub rows_awaited: Counter,
    /// GlobalFinished markers deleted for their age.
    pub markers_swept: Counter,
    /// Normal undo rows older than the retention, left in place, per upstream (as
    /// of its last sweep).
    pub rows_past_retention: Family<[(&'static str, String); 1], Gauge>,
}

impl UndoSweepMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "undo_markers_swept",
            "GlobalFinished markers deleted from undo_log for being older than undo.marker_retention_ms",
            self.markers_swept.clone(),
        );
        registry.register(
            "undo_rows_awaited",
            "Phase-2 commits of a branch that found no undo row yet (its local COMMIT still on its way) and were retried",
            self.rows_awaited.clone(),
        );
        registry.register(
            "undo_rows_past_retention",
            "Normal undo rows older than undo.marker_retention_ms, left in undo_log for an operator (their transactions' decisions are no longer known)",
            self.rows_past_retention.clone(),
        );
    }
}

pub struct Metrics {
    registry: Registry,
    /// What belongs to neither protocol (prefix `tandem_proxy`).
    proxy_registry: Registry,
    /// 1 while every phase-2 stream of this proxy to the lockserver is established.
    pub lockserver_connected: Gauge,
    pub client_connections: Counter,
    pub clients_active: Gauge,
    pub backends_active: Gauge,
    pub queries: Counter,
    pub bytes_from_clients: Counter,
    pub bytes_from_backends: Counter,
    /// Writes outside global transactions that could not be checked against global
    /// locks (the lockserver unreachable).
    pub outside_writes_unchecked: Counter,
    errors: Family<KindLabel, Counter>,
    /// From a client's request to the backend's ReadyForQuery, in seconds.
    pub backend_latency: Histogram,
    /// The undo sweep of the PostgreSQL front ends.
    pub undo_sweep: UndoSweepMetrics,
    /// The MySQL front ends' instruments.
    pub mysql: MysqlMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tandem_pg");
        let client_connections = Counter::default();
        let clients_active = Gauge::default();
        let backends_active = Gauge::default();
        let queries = Counter::default();
        let bytes_from_clients = Counter::default();
        let bytes_from_backends = Counter::default();
        let outside_writes_unchecked = Counter::default();
        let errors = Family::<KindLabel, Counter>::default();
        let backend_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 20));
        registry.register(
            "client_connections",
            "Client connections accepted",
            client_connections.clone(),
        );
        registry.register(
            "clients_active",
            "Client sessions open now",
            clients_active.clone(),
        );
        registry.register(
            "backends_active",
            "Backend connections open now",
            backends_active.clone(),
        );
        registry.register(
            "queries",
            "Requests completed: one per ReadyForQuery relayed",
            queries.clone(),
        );
        registry.register(
            "client_bytes",
            "Bytes received from clients",
            bytes_from_clients.clone(),
        );
        registry.register(
            "backend_bytes",
            "Bytes received from backends",
            bytes_from_backends.clone(),
        );
        registry.register(
            "outside_writes_unchecked",
            "Writes outside global transactions run without the global-lock check because the lockserver was unreachable",
            outside_writes_unchecked.clone(),
        );
        registry.register(
            "errors",
            "Sessions ended by an error, by kind",
            errors.clone(),
        );
        registry.register(
            "backend_latency_seconds",
            "From a client request to the backend's ReadyForQuery",
            backend_latency.clone(),
        );
        let undo_sweep = UndoSweepMetrics::default();
        undo_sweep.register(&mut registry);
        let mut proxy_registry = Registry::with_prefix("tandem_proxy");
        let lockserver_connected = Gauge::default();
        proxy_registry.register(
            "lockserver_connected",
            "1 while the proxy's phase-2 streams to the lockserver are established (it reaches the lockserver), 0 otherwise: global transactions cannot begin or end, and writes outside them run unchecked",
            lockserver_connected.clone(),
        );
        Metrics {
            registry,
            proxy_registry,
            lockserver_connected,
            undo_sweep,
            client_connections,
            clients_active,
            backends_active,
            queries,
            bytes_from_clients,
            bytes_from_backends,
            outside_writes_unchecked,
            errors,
            backend_latency,
            mysql: MysqlMetrics::new(),
        }
    }

    pub fn count_error(&self, kind: &'static str) {
        self.errors.get_or_create(&[("kind", kind)]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &self.mysql.registry);
        let _ = encode_registry(&mut out, &self.proxy_registry);
        let _ = encode_eof(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_error_kinds() {
        let m = Metrics::new();
        m.queries.inc_by(3);
        m.count_error("upstream_lost");
        let text = m.render();
        assert!(text.contains("tandem_pg_queries_total 3"), "{text}");
        assert!(
            text.contains("tandem_pg_errors_total{kind=\"upstream_lost\"} 1"),
            "{text}"
        );
    }
}
