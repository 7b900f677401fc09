//! Prometheus metrics, all prefixed `moltgate_`.
//!
//! One registry per gateway (not the global default), so tests can run
//! several gateways in one process and `/metrics` shows only ours. Every
//! label is bounded: routes and upstream nodes come from config, outcomes
//! and reasons are fixed strings, and policy rule ids come from policy files.
//! No label ever carries request content.

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The gateway's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route, platform and outcome.
    pub requests: IntCounterVec,
    /// End-to-end latency of handled messages.
    pub message_latency: HistogramVec,
    /// Requests refused for malformed, oversized, forged or unauthenticated input.
    pub rejections: IntCounterVec,
    /// 1 when an upstream node is healthy, 0 when not.
    pub node_healthy: IntGaugeVec,
    /// Calls attempted per node, by result.
    pub upstream_attempts: IntCounterVec,
    /// Failed calls per node, by reason.
    pub upstream_failures: IntCounterVec,
    /// Policy reloads by result.
    pub policy_reloads: IntCounterVec,
    /// Policy decisions by stage, decision and the rule that made it.
    pub policy_decisions: IntCounterVec,
    /// DLP findings by rule, action and direction.
    pub dlp_findings: IntCounterVec,
    /// Redeliveries recognised and not forwarded again, by platform.
    pub duplicates: IntCounterVec,
    /// Verified platform events that were acknowledged but not forwarded.
    pub ignored_events: IntCounterVec,
    /// Replies sent through platform APIs, by platform and result.
    pub writebacks: IntCounterVec,
    /// Conversations held in the context cache.
    pub context_entries: IntGauge,
    /// Context cache lookups by result (hit, miss) and evictions.
    pub context_events: IntCounterVec,
    /// Seconds an upstream call took until `accepted`.
    pub accept_latency: Histogram,
    /// Connections open on the public listener.
    pub connections_open: IntGauge,
    /// Connections refused at accept (over a connection cap), by limit.
    pub connections_refused: IntCounterVec,
    /// Connections cut for missing a deadline (TLS handshake, request header), by phase.
    pub connections_cut: IntCounterVec,
    /// Every metric family name registered (for dashboards' and alerts' tests).
    names: Arc<Vec<String>>,
    /// 1 while the shared tier (Redis) answers; 0 while its breaker is open.
    pub shared_up: IntGauge,
    /// Shared-tier operations by operation and result (ok, error, timeout, skipped).
    pub shared_ops: IntCounterVec,
    /// Seconds a shared-tier operation took, by operation.
    pub shared_seconds: HistogramVec,
    /// WebSocket connections by route, mode and result.
    pub websocket_connections: IntCounterVec,
    /// WebSocket text frames by route, direction and verdict.
    pub websocket_frames: IntCounterVec,
    /// Upgraded WebSocket connections open now.
    pub websocket_open: IntGauge,
    /// MQTT messages by listener and verdict (accepted, refused, retry).
    pub mqtt_messages: IntCounterVec,
    /// MQTT transport events by listener and event.
    pub mqtt_events: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registrar {
            registry: Registry::new(),
            names: Default::default(),
        };
        let [requests, rejections, upstream_attempts, upstream_failures, policy_reloads, policy_decisions, dlp_findings, duplicates, ignored_events, writebacks, context_events, connections_refused, connections_cut, shared_ops, websocket_connections, websocket_frames, mqtt_messages, mqtt_events] =
            COUNTERS.map(|(name, help, labels)| counter(&r, name, help, labels));
        let [context_entries, connections_open, shared_up, cpu_cores, websocket_open] =
            GAUGES.map(|(name, help)| gauge(&r, name, help));
        cpu_cores.set(available_cpus());
        register_process_metrics(&r);
        let message_latency = histogram(
            &r,
            "message_latency_seconds",
            "Time from request to answer for handled messages.",
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ],
            &["platform"],
        );
        let accept_latency = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "moltgate_upstream_accept_seconds",
                    "Time until an upstream node accepted a message.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ]),
            ),
        );
        let node_healthy = node_healthy(&r);
        let shared_seconds = histogram(
            &r,
            "shared_seconds",
            "Time a shared-tier (Redis) operation took.",
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
            ],
            &["op"],
        );
        Self {
            registry: r.registry,
            names: Arc::new(r.names.into_inner()),
            requests,
            message_latency,
            rejections,
            node_healthy,
            upstream_attempts,
            upstream_failures,
            policy_reloads,
            policy_decisions,
            dlp_findings,
            duplicates,
            ignored_events,
            writebacks,
            context_entries,
            context_events,
            accept_latency,
            connections_open,
            connections_refused,
            connections_cut,
            shared_up,
            shared_ops,
            shared_seconds,
            websocket_connections,
            websocket_frames,
            websocket_open,
            mqtt_messages,
            mqtt_events,
        }
    }

    /// The name of every metric family this gateway exports, whether or not
    /// it has a value yet (`moltgate_requests_total`, `process_cpu_seconds_total`, …).
    pub fn names(&self) -> Vec<String> {
        self.names.as_ref().clone()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Every counter: name (after `moltgate_`), help, labels; in the order
/// `Metrics::new` destructures them.
type CounterDef = (&'static str, &'static str, &'static [&'static str]);
const COUNTERS: [CounterDef; 18] = [
    (
        "requests_total",
        "Requests by route, platform and outcome.",
        &["route", "platform", "outcome"],
    ),
    (
        "rejections_total",
        "Requests refused as bad input, by route and reason.",
        &["route", "reason"],
    ),
    (
        "upstream_attempts_total",
        "Calls to upstream nodes, by result.",
        &["upstream", "node", "result"],
    ),
    (
        "upstream_failures_total",
        "Failed upstream calls, by reason.",
        &["upstream", "node", "reason"],
    ),
    (
        "policy_reload_total",
        "Policy reloads by result.",
        &["result"],
    ),
    (
        "policy_decisions_total",
        "Policy decisions by stage, decision and rule.",
        &["stage", "decision", "rule"],
    ),
    (
        "dlp_findings_total",
        "DLP findings by rule, action and direction.",
        &["rule", "action", "direction"],
    ),
    (
        "duplicate_messages_total",
        "Redeliveries recognised and not forwarded again.",
        &["platform"],
    ),
    (
        "ignored_events_total",
        "Verified events acknowledged but not forwarded.",
        &["platform", "reason"],
    ),
    (
        "writeback_total",
        "Replies sent through platform APIs, by result.",
        &["platform", "result"],
    ),
    (
        "context_events_total",
        "Context cache hits, misses and evictions.",
        &["event"],
    ),
    (
        "connections_refused_total",
        "Connections refused at accept for being over a connection cap, by limit.",
        &["limit"],
    ),
    (
        "connections_cut_total",
        "Connections closed for missing a deadline, by phase (handshake, header).",
        &["phase"],
    ),
    (
        "shared_ops_total",
        "Shared-tier (Redis) operations by operation and result.",
        &["op", "result"],
    ),
    (
        "websocket_connections_total",
        "WebSocket upgrades by route, mode and result (upgraded, upstream_refused, upstream_unreachable).",
        &["route", "mode", "result"],
    ),
    (
        "websocket_frames_total",
        "WebSocket text frames by route, direction (ingress, egress) and verdict (forwarded, masked, refused; held: a streamed text's tail held back, no finding).",
        &["route", "direction", "verdict"],
    ),
    (
        "mqtt_messages_total",
        "MQTT messages by listener and verdict (accepted: acknowledged after the AI cluster took it; refused: acknowledged, dropped by policy or as malformed; retry: kept at the broker, asked again).",
        &["listener", "verdict"],
    ),
    (
        "mqtt_events_total",
        "MQTT transport events by listener (connected, subscribed, disconnected, redelivered, refused, reply_dropped, stopped, subscribe_refused).",
        &["listener", "event"],
    ),
];

/// `moltgate_upstream_node_healthy{upstream,node}`.
fn node_healthy(r: &Registrar) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(
            Opts::new(
                "moltgate_upstream_node_healthy",
                "1 when the upstream node passes health checks.",
            ),
            &["upstream", "node"],
        ),
    )
}

/// Registers a metric whose definition is static: an error is a bug in this
/// file, caught by the first test that builds `Metrics`.
fn register<C>(registry: &Registrar, metric: prometheus::Result<C>) -> C
where
    C: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
    registry
        .names
        .borrow_mut()
        .extend(metric.desc().iter().map(|d| d.fq_name.clone()));
    registry
        .registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| unreachable!("registering a metric twice: {e}"));
    metric
}

/// The registry being filled, and the names registered in it (a registry
/// only lists families that have a value, so it cannot tell them itself).
struct Registrar {
    registry: Registry,
    names: std::cell::RefCell<Vec<String>>,
}

/// Every plain gauge: name (after `moltgate_`) and help, in the order
/// `Metrics::new` destructures them.
const GAUGES: [(&str, &str); 5] = [
    (
        "context_entries",
        "Conversations held in the context cache.",
    ),
    (
        "connections_open",
        "Connections open on the public listener.",
    ),
    (
        "shared_up",
        "1 while the shared tier (Redis) answers, 0 while it is skipped.",
    ),
    (
        "cpu_cores",
        "CPUs this process may use (cgroup quota aware): divides process_cpu_seconds_total into a utilisation.",
    ),
    (
        "websocket_connections_open",
        "Upgraded WebSocket connections open now.",
    ),
];

/// CPUs the process may use: the standard library reads the cgroup quota
/// and the affinity mask, so a container limited to 1.5 CPUs reports 1.
fn available_cpus() -> i64 {
    std::thread::available_parallelism().map_or(1, |n| i64::try_from(n.get()).unwrap_or(i64::MAX))
}

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds` … (the prometheus crate's process collector, Linux).
fn register_process_metrics(r: &Registrar) {
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    r.names
        .borrow_mut()
        .extend(collector.desc().iter().map(|d| d.fq_name.clone()));
    if let Err(e) = r.registry.register(Box::new(collector)) {
        tracing::warn!(error = %e, "process metrics unavailable");
    }
}

/// A `moltgate_<name>` gauge.
fn gauge(registry: &Registrar, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(format!("moltgate_{name}"), help))
}

/// A `moltgate_<name>` histogram with `buckets` and `labels`.
fn histogram(
    registry: &Registrar,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    register(
        registry,
        HistogramVec::new(
            HistogramOpts::new(format!("moltgate_{name}"), help).buckets(buckets.to_vec()),
            labels,
        ),
    )
}

/// A `moltgate_<name>` counter with `labels`.
fn counter(registry: &Registrar, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(format!("moltgate_{name}"), help), labels),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_names() {
        let m = Metrics::new();
        m.requests
            .with_label_values(&["/v1/messages", "generic", "answered"])
            .inc();
        m.message_latency
            .with_label_values(&["generic"])
            .observe(0.01);
        let text = m.render();
        assert!(text.contains("moltgate_requests_total{outcome=\"answered\",platform=\"generic\",route=\"/v1/messages\"} 1"), "{text}");
        assert!(
            text.contains("moltgate_message_latency_seconds_bucket"),
            "{text}"
        );
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(
                line.starts_with("moltgate_") || line.starts_with("process_"),
                "{line}"
            );
        }
    }

    #[test]
    fn names_cover_families_without_values_and_the_process() {
        let m = Metrics::new();
        let names = m.names();
        for name in [
            "moltgate_requests_total",
            "moltgate_shared_ops_total",
            "moltgate_shared_seconds",
            "moltgate_cpu_cores",
            "process_cpu_seconds_total",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
        }
        // A counter with no value yet is not in the exposition, but is named.
        assert!(!m.render().contains("moltgate_shared_ops_total"));
        let text = m.render();
        let cores = text
            .lines()
            .find_map(|l| l.strip_prefix("moltgate_cpu_cores "))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(cores.is_some_and(|c| c >= 1.0), "{text}");
        assert!(text.contains("process_cpu_seconds_total"), "{text}");
    }
}
