//! Prometheus metrics, all named `gateway_*`. Labels are route and upstream names from the
//! config, methods from a fixed list and status codes, never raw paths, so the number of
//! series stays bounded whatever the traffic.

use pingora_prometheus::prometheus::{
    self, register_gauge, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Encoder, Gauge, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, TextEncoder,
};
use std::sync::LazyLock;

pub struct Metrics {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub target_healthy: IntGaugeVec,
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub retries: IntCounterVec,
    pub reloads: IntCounterVec,
    pub last_reload_success: Gauge,
    pub config_generation: IntGauge,
    pub config_source_revision: IntGauge,
    pub config_source_errors: IntCounter,
    pub access_log_dropped: IntGauge,
    pub mirror_requests: IntCounterVec,
    pub discovery_refreshes: IntCounterVec,
    pub discovery_index: IntGaugeVec,
    pub aggregate_backends: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub rate_limit_store_errors: IntCounterVec,
    pub auto_bans: IntCounterVec,
    pub jwks_fetches: IntCounterVec,
    pub introspections: IntCounterVec,
    pub introspection_duration: HistogramVec,
    pub introspection_cache_hits: IntCounterVec,
    pub banned_addresses: IntGaugeVec,
    pub client_timeouts: IntCounterVec,
    pub upstream_ejections: IntCounterVec,
    pub invalid_requests: IntCounterVec,
    pub client_disconnects: IntCounter,
    pub trace_spans_dropped: IntCounterVec,
    pub trace_spans_exported: IntCounter,
    pub trace_exports: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

// Registration only fails on a duplicate name, which would be a bug caught by any test run.
#[allow(clippy::expect_used)]
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    Metrics {
    requests: register_int_counter_vec!(
        "gateway_requests_total",
        "Requests answered, by route, method and status",
        &["route", "method", "status"]
    )
    .expect("register gateway_requests_total"),
    request_duration: register_histogram_vec!(
        "gateway_request_duration_seconds",
        "Time from the request head to the end of the response, by route",
        &["route"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("register gateway_request_duration_seconds"),
    upstream_duration: register_histogram_vec!(
        "gateway_upstream_duration_seconds",
        "Time from choosing a target to its response head, per try, by upstream",
        &["upstream"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("register gateway_upstream_duration_seconds"),
    target_healthy: register_int_gauge_vec!(
        "gateway_upstream_target_healthy",
        "1 when the target passes its health checks, 0 when it is taken out",
        &["upstream", "target"]
    )
    .expect("register gateway_upstream_target_healthy"),
    breaker_state: register_int_gauge_vec!(
        "gateway_circuit_breaker_state",
        "Circuit breaker state by upstream: 0 closed, 1 open, 2 half-open",
        &["upstream"]
    )
    .expect("register gateway_circuit_breaker_state"),
    breaker_transitions: register_int_counter_vec!(
        "gateway_circuit_breaker_transitions_total",
        "Circuit breaker state changes, by upstream and the state entered",
        &["upstream", "to"]
    )
    .expect("register gateway_circuit_breaker_transitions_total"),
    retries: register_int_counter_vec!(
        "gateway_upstream_retries_total",
        "Retries sent to an upstream",
        &["upstream"]
    )
    .expect("register gateway_upstream_retries_total"),
    reloads: register_int_counter_vec!(
        "gateway_config_reloads_total",
        "Config reloads by result (ok, error, unchanged)",
        &["result"]
    )
    .expect("register gateway_config_reloads_total"),
    last_reload_success: register_gauge!(
        "gateway_config_last_reload_success_timestamp_seconds",
        "Unix time of the last config that was loaded and is serving"
    )
    .expect("register gateway_config_last_reload_success_timestamp_seconds"),
    config_generation: register_int_gauge!(
        "gateway_config_generation",
        "Generation of the config serving requests; 1 at start, +1 per applied reload"
    )
    .expect("register gateway_config_generation"),
    config_source_revision: register_int_gauge!(
        "gateway_config_source_revision",
        "With the config in etcd: the revision of the config serving"
    )
    .expect("register gateway_config_source_revision"),
    config_source_errors: register_int_counter!(
        "gateway_config_source_errors_total",
        "With the config in etcd: reads and watches of the key that failed (the running config stays)"
    )
    .expect("register gateway_config_source_errors_total"),
    mirror_requests: register_int_counter_vec!(
        "gateway_mirror_requests_total",
        "Copies sent to a route's shadow upstream, by result (ok, error, timeout, dropped, too_large)",
        &["route", "result"]
    )
    .expect("register gateway_mirror_requests_total"),
    discovery_refreshes: register_int_counter_vec!(
        "gateway_discovery_refreshes_total",
        "Discovery answers by upstream and result: DNS lookups, etcd and Consul answers (ok, error: the last good targets stay)",
        &["upstream", "result"]
    )
    .expect("register gateway_discovery_refreshes_total"),
    discovery_index: register_int_gauge_vec!(
        "gateway_discovery_index",
        "The etcd revision or Consul index of the targets an upstream uses, by upstream",
        &["upstream"]
    )
    .expect("register gateway_discovery_index"),
    aggregate_backends: register_int_counter_vec!(
        "gateway_aggregate_backend_calls_total",
        "Fan-out backend calls by aggregate, backend and result (ok, error, timeout)",
        &["aggregate", "backend", "result"]
    )
    .expect("register gateway_aggregate_backend_calls_total"),
    rate_limited: register_int_counter_vec!(
        "gateway_rate_limited_total",
        "Requests refused with 429 by a rate limit, by route",
        &["route"]
    )
    .expect("register gateway_rate_limited_total"),
    rate_limit_store_errors: register_int_counter_vec!(
        "gateway_rate_limit_store_errors_total",
        "Shared rate limit checks Redis did not answer in time; on_store_error decided, by route",
        &["route"]
    )
    .expect("register gateway_rate_limit_store_errors_total"),
    auto_bans: register_int_counter_vec!(
        "gateway_auto_bans_total",
        "Addresses banned for repeated refusals, by scope (server, or the route's name)",
        &["scope"]
    )
    .expect("register gateway_auto_bans_total"),
    jwks_fetches: register_int_counter_vec!(
        "gateway_jwks_fetches_total",
        "JWKS fetches from a route's jwks_url, by route and result (ok, error: the previous keys stay)",
        &["route", "result"]
    )
    .expect("register gateway_jwks_fetches_total"),
    introspections: register_int_counter_vec!(
        "gateway_oauth2_introspections_total",
        "Token introspection calls by route and result (active, inactive, error, busy: over max_calls_per_sec)",
        &["route", "result"]
    )
    .expect("register gateway_oauth2_introspections_total"),
    introspection_duration: register_histogram_vec!(
        "gateway_oauth2_introspection_duration_seconds",
        "Time of one introspection call, by route",
        &["route"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("register gateway_oauth2_introspection_duration_seconds"),
    introspection_cache_hits: register_int_counter_vec!(
        "gateway_oauth2_cache_hits_total",
        "Bearer tokens answered from the introspection cache, by route",
        &["route"]
    )
    .expect("register gateway_oauth2_cache_hits_total"),
    banned_addresses: register_int_gauge_vec!(
        "gateway_auto_banned_addresses",
        "Addresses under a ban now, by scope",
        &["scope"]
    )
    .expect("register gateway_auto_banned_addresses"),
    client_disconnects: register_int_counter!(
        "gateway_client_disconnects_total",
        "Requests the client abandoned (closed or reset its connection before the answer was sent)"
    )
    .expect("register gateway_client_disconnects_total"),
    trace_spans_dropped: register_int_counter_vec!(
        "gateway_trace_spans_dropped_total",
        "Spans not exported, by reason: queue_full (the export queue was full), export_failed (the collector refused, failed or timed out), tracing_off",
        &["reason"]
    )
    .expect("register gateway_trace_spans_dropped_total"),
    trace_spans_exported: register_int_counter!(
        "gateway_trace_spans_exported_total",
        "Spans the collector accepted"
    )
    .expect("register gateway_trace_spans_exported_total"),
    trace_exports: register_int_counter_vec!(
        "gateway_trace_exports_total",
        "Export requests to the trace collector, by result (ok, error, timeout)",
        &["result"]
    )
    .expect("register gateway_trace_exports_total"),
    invalid_requests: register_int_counter_vec!(
        "gateway_invalid_requests_total",
        "Request heads the HTTP parser refused before routing, by status (400, 431)",
        &["status"]
    )
    .expect("register gateway_invalid_requests_total"),
    upstream_ejections: register_int_counter_vec!(
        "gateway_upstream_ejections_total",
        "Targets ejected by outlier detection (consecutive failed tries), by upstream",
        &["upstream"]
    )
    .expect("register gateway_upstream_ejections_total"),
    client_timeouts: register_int_counter_vec!(
        "gateway_client_timeouts_total",
        "Client connections cut for slowness, by phase: header (client_header_timeout_ms), body (client_body_timeout_ms, answered 408)",
        &["phase"]
    )
    .expect("register gateway_client_timeouts_total"),
    access_log_dropped: register_int_gauge!(
        "gateway_access_log_dropped_lines",
        "Access log lines dropped because the writer could not keep up"
    )
    .expect("register gateway_access_log_dropped_lines"),
}
});

const METHOD_LABELS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "OTHER",
];

fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::PATCH => 4,
        http::Method::HEAD => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

/// Statuses whose `gateway_requests_total` series a route keeps at hand.
const COMMON_STATUSES: [u16; 20] = [
    200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405, 408, 413, 429, 431, 500, 502, 503,
    504,
];

/// A route's `gateway_requests_total` series, looked up once each instead of per request
/// (a label lookup hashes three strings under a lock). Allocated on the route's first request.
pub struct RequestCounters {
    route: String,
    cells: std::sync::OnceLock<Box<[std::sync::OnceLock<IntCounter>]>>,
}

impl RequestCounters {
    pub fn new(route: &str) -> Self {
        RequestCounters {
            route: route.to_string(),
            cells: std::sync::OnceLock::new(),
        }
    }

    pub fn count(&self, method: &http::Method, status: u16) {
        let m = method_index(method);
        let Some(s) = COMMON_STATUSES.iter().position(|c| *c == status) else {
            let mut code = itoa::Buffer::new();
            METRICS
                .requests
                .with_label_values(&[self.route.as_str(), METHOD_LABELS[m], code.format(status)])
                .inc();
            return;
        };
        let cells = self.cells.get_or_init(|| {
            (0..METHOD_LABELS.len() * COMMON_STATUSES.len())
                .map(|_| std::sync::OnceLock::new())
                .collect()
        });
        cells[m * COMMON_STATUSES.len() + s]
            .get_or_init(|| {
                let mut code = itoa::Buffer::new();
                METRICS.requests.with_label_values(&[
                    self.route.as_str(),
                    METHOD_LABELS[m],
                    code.format(status),
                ])
            })
            .inc();
    }
}

/// The series of requests that matched no route.
pub static NO_ROUTE: LazyLock<RequestCounters> = LazyLock::new(|| RequestCounters::new("-"));

/// Render every metric as Prometheus text (the caller refreshes the gauges that mirror live
/// state first; see `admin`).
pub fn render() -> (Vec<u8>, String) {
    let encoder = TextEncoder::new();
    let mut buf = Vec::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut buf) {
        log::error!("cannot encode metrics: {e}");
    }
    (buf, encoder.format_type().to_string())
}
