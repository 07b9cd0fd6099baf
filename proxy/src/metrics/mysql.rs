//! The MySQL front ends' instruments, under the `tandem_mysql_` prefix.
//!
//! Sessions update them once per batch of packets (a socket read), not once per packet.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type KindLabel = [(&'static str, &'static str); 1];

pub struct MysqlMetrics {
    pub(super) registry: Registry,
    pub client_connections: Counter,
    pub clients_active: Gauge,
    pub backends_active: Gauge,
    /// Commands relayed (COM_QUERY, COM_STMT_EXECUTE, ...), one per command packet.
    pub commands: Counter,
    pub bytes_from_clients: Counter,
    pub bytes_from_backends: Counter,
    /// Handshakes the server refused (wrong password, unknown database, ...).
    pub auth_refused: Counter,
    /// KILL statements whose id tandem mapped to a backend thread id.
    pub kills_mapped: Counter,
    /// Writes outside global transactions run unchecked: the lockserver was unreachable.
    pub outside_writes_unchecked: Counter,
    /// The undo sweep of the MySQL front ends.
    pub undo_sweep: super::UndoSweepMetrics,
    errors: Family<KindLabel, Counter>,
}

impl Default for MysqlMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl MysqlMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tandem_mysql");
        let m = MysqlMetrics {
            registry: Registry::default(),
            client_connections: Counter::default(),
            clients_active: Gauge::default(),
            backends_active: Gauge::default(),
            commands: Counter::default(),
            bytes_from_clients: Counter::default(),
            bytes_from_backends: Counter::default(),
            auth_refused: Counter::default(),
            kills_mapped: Counter::default(),
            outside_writes_unchecked: Counter::default(),
            undo_sweep: super::UndoSweepMetrics::default(),
            errors: Family::default(),
        };
        m.undo_sweep.register(&mut registry);
        registry.register(
            "client_connections",
            "Client connections accepted",
            m.client_connections.clone(),
        );
        registry.register(
            "clients_active",
            "Client sessions open now",
            m.clients_active.clone(),
        );
        registry.register(
            "backends_active",
            "Backend connections open now",
            m.backends_active.clone(),
        );
        registry.register("commands", "Commands relayed", m.commands.clone());
        registry.register(
            "client_bytes",
            "Bytes received from clients",
            m.bytes_from_clients.clone(),
        );
        registry.register(
            "backend_bytes",
            "Bytes received from backends",
            m.bytes_from_backends.clone(),
        );
        registry.register(
            "auth_refused",
            "Handshakes the server refused",
            m.auth_refused.clone(),
        );
        registry.register(
            "kills_mapped",
            "KILL statements mapped from a tandem connection id to a backend thread id",
            m.kills_mapped.clone(),
        );
        registry.register(
            "outside_writes_unchecked",
            "Writes outside global transactions run without the global-lock check because the lockserver was unreachable",
            m.outside_writes_unchecked.clone(),
        );
        registry.register(
            "errors",
            "Sessions ended by an error, by kind",
            m.errors.clone(),
        );
        MysqlMetrics { registry, ..m }
    }

    pub fn count_error(&self, kind: &'static str) {
        self.errors.get_or_create(&[("kind", kind)]).inc();
    }
}
