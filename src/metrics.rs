//! Prometheus metrics. Labels never carry a token or a key id: routes are
//! the configured patterns, so every label set is bounded.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric keygate exports.
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub gateway_latency: Histogram,
    pub upstream_latency: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_ejections: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_invalidations: IntCounterVec,
    pub store_errors: IntCounterVec,
    pub ratelimit_decisions: IntCounterVec,
    /// The two children of `ratelimit_decisions`, resolved once.
    pub ratelimit_allowed: IntCounter,
    pub ratelimit_denied: IntCounter,
    pub config_reloads: IntCounterVec,
    pub revocation_lag: Histogram,
    pub open_connections: IntGauge,
    pub usage_flushes: IntCounterVec,
    pub redis_calls: IntCounterVec,
    pub ratelimit_fallbacks: IntCounterVec,
    pub lease_size: Histogram,
    pub subscription_losses: IntCounter,
    pub webhook_deliveries: IntCounterVec,
    pub webhook_backlog: IntGauge,
    pub shadow_refusals: IntCounterVec,
    pub blocked_addresses: IntGauge,
    pub blocks: IntCounter,
    pub reported_costs: IntCounterVec,
    pub in_flight: IntGauge,
    pub realtime_connections: IntGaugeVec,
    pub realtime_closed: IntCounterVec,
}

/// Label values each counter can take, created at zero at start so that
/// `increase()` and absence alerts see a series before the first event.
const STORE_OPERATIONS: [&str; 3] = ["key_by_hash", "changes_since", "list_roles"];
const FALLBACK_POLICIES: [&str; 3] = ["allow", "deny", "local"];
const INVALIDATION_KINDS: [&str; 3] = ["key", "role", "flush"];
const RESULTS: [&str; 2] = ["ok", "error"];
/// What a webhook delivery's try came to.
pub const DELIVERY_RESULTS: [&str; 3] = ["delivered", "failed", "dead"];
/// The Redis calls of the data plane, and their results.
const REDIS_OPERATIONS: [&str; 4] = ["key_by_hash", "changes_since", "ratelimit_take", "ratelimit_return"];
const REDIS_RESULTS: [&str; 5] = ["ok", "refused", "error", "timeout", "breaker_open"];

const LATENCY_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("keygate_requests_total", "Requests by route pattern, status, outcome and refusal code (none when served)"),
            &["route", "status", "outcome", "code"],
        )?;
        let gateway_latency = Histogram::with_opts(
            HistogramOpts::new("keygate_gateway_latency_seconds", "Time keygate adds to a request (everything but the upstream)")
                .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new("keygate_upstream_latency_seconds", "Time from forwarding to the upstream's response head")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        )?;
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "keygate_upstream_requests_total",
                "Exchanges with upstream targets by result (ok, failed_status, connect_error, error, timeout)",
            ),
            &["upstream", "target", "result"],
        )?;
        let upstream_ejections = IntCounterVec::new(
            Opts::new("keygate_upstream_ejections_total", "Upstream targets taken out of rotation by passive health checks"),
            &["upstream", "target"],
        )?;
        let cache_hits = IntCounter::new("keygate_cache_hits_total", "Key lookups answered by the local cache")?;
        let cache_misses = IntCounter::new("keygate_cache_misses_total", "Key lookups that went to the store")?;
        let cache_invalidations = IntCounterVec::new(
            Opts::new("keygate_cache_invalidations_total", "Cache entries dropped after a change"),
            &["kind"],
        )?;
        let store_errors = IntCounterVec::new(Opts::new("keygate_store_errors_total", "Failed store calls"), &["operation"])?;
        let ratelimit_decisions =
            IntCounterVec::new(Opts::new("keygate_ratelimit_decisions_total", "Rate-limit decisions"), &["decision"])?;
        let config_reloads = IntCounterVec::new(Opts::new("keygate_config_reloads_total", "Config reloads"), &["result"])?;
        let revocation_lag = Histogram::with_opts(
            HistogramOpts::new(
                "keygate_revocation_lag_seconds",
                "Time from a key or role change in the store to this node's cache dropping it",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )?;
        let open_connections = IntGauge::new("keygate_open_connections", "Client connections open on the data listener")?;
        let usage_flushes = IntCounterVec::new(Opts::new("keygate_usage_flushes_total", "Batched usage writes"), &["result"])?;
        let redis_calls = IntCounterVec::new(
            Opts::new(
                "keygate_redis_calls_total",
                "Redis calls by operation and result (ok, refused, error, timeout, breaker_open)",
            ),
            &["op", "result"],
        )?;
        let ratelimit_fallbacks = IntCounterVec::new(
            Opts::new("keygate_ratelimit_fallback_total", "Rate-limit decisions made by the on_redis_error policy"),
            &["policy"],
        )?;
        let lease_size = Histogram::with_opts(
            HistogramOpts::new("keygate_ratelimit_lease_size", "Requests granted per Redis lease")
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0]),
        )?;
        let subscription_losses = IntCounter::new(
            "keygate_change_subscription_losses_total",
            "Lost change-feed subscriptions (each flushes the caches)",
        )?;
        let webhook_deliveries = IntCounterVec::new(
            Opts::new("keygate_webhook_deliveries_total", "Tries of webhook deliveries by result (delivered, failed, dead)"),
            &["result"],
        )?;
        let webhook_backlog = IntGauge::new(
            "keygate_webhook_backlog",
            "Webhook deliveries not yet delivered (on the node delivering; 0 elsewhere)",
        )?;
        for result in DELIVERY_RESULTS {
            webhook_deliveries.with_label_values(&[result]);
        }
        let shadow_refusals = IntCounterVec::new(
            Opts::new("keygate_shadow_refusals_total", "Requests a rule in shadow mode would have refused, forwarded instead"),
            &["code", "route"],
        )?;
        registry.register(Box::new(shadow_refusals.clone()))?;
        let blocked_addresses =
            IntGauge::new("keygate_blocked_addresses", "Client addresses blocked now for failed credentials (this node)")?;
        let blocks = IntCounter::new("keygate_blocks_total", "Client addresses blocked for failed credentials")?;
        registry.register(Box::new(blocked_addresses.clone()))?;
        registry.register(Box::new(blocks.clone()))?;
        let reported_costs = IntCounterVec::new(
            Opts::new("keygate_reported_costs_total", "Costs upstreams reported in a route's cost_header, by result"),
            &["result"],
        )?;
        for result in ["settled", "malformed"] {
            reported_costs.with_label_values(&[result]);
        }
        registry.register(Box::new(reported_costs.clone()))?;
        let in_flight = IntGauge::new("keygate_in_flight", "Requests holding an in-flight slot (max_in_flight) on this node")?;
        registry.register(Box::new(in_flight.clone()))?;
        let realtime_connections = IntGaugeVec::new(
            Opts::new("keygate_realtime_connections", "Live connections open on this node (event streams, WebSockets), by kind"),
            &["kind"],
        )?;
        for kind in ["event_stream", "websocket"] {
            realtime_connections.with_label_values(&[kind]);
        }
        registry.register(Box::new(realtime_connections.clone()))?;
        let realtime_closed = IntCounterVec::new(
            Opts::new("keygate_realtime_closed_total", "Live connections keygate closed, by reason"),
            &["reason"],
        )?;
        for reason in ["revoked", "forbidden"] {
            realtime_closed.with_label_values(&[reason]);
        }
        registry.register(Box::new(realtime_closed.clone()))?;
        registry.register(Box::new(webhook_deliveries.clone()))?;
        registry.register(Box::new(webhook_backlog.clone()))?;
        let build_info =
            IntGaugeVec::new(Opts::new("keygate_build_info", "Always 1; the labels say which keygate this is"), &["version"])?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        for op in STORE_OPERATIONS {
            store_errors.with_label_values(&[op]);
        }
        for policy in FALLBACK_POLICIES {
            ratelimit_fallbacks.with_label_values(&[policy]);
        }
        for kind in INVALIDATION_KINDS {
            cache_invalidations.with_label_values(&[kind]);
        }
        for result in RESULTS {
            config_reloads.with_label_values(&[result]);
            usage_flushes.with_label_values(&[result]);
        }
        registry.register(Box::new(redis_calls.clone()))?;
        registry.register(Box::new(ratelimit_fallbacks.clone()))?;
        registry.register(Box::new(lease_size.clone()))?;
        registry.register(Box::new(subscription_losses.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(gateway_latency.clone()))?;
        registry.register(Box::new(upstream_latency.clone()))?;
        registry.register(Box::new(upstream_requests.clone()))?;
        registry.register(Box::new(upstream_ejections.clone()))?;
        registry.register(Box::new(cache_hits.clone()))?;
        registry.register(Box::new(cache_misses.clone()))?;
        registry.register(Box::new(cache_invalidations.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        registry.register(Box::new(ratelimit_decisions.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(revocation_lag.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(usage_flushes.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            gateway_latency,
            upstream_latency,
            upstream_requests,
            upstream_ejections,
            cache_hits,
            cache_misses,
            cache_invalidations,
            store_errors,
            ratelimit_allowed: ratelimit_decisions.with_label_values(&["allowed"]),
            ratelimit_denied: ratelimit_decisions.with_label_values(&["denied"]),
            ratelimit_decisions,
            config_reloads,
            revocation_lag,
            open_connections,
            usage_flushes,
            redis_calls,
            ratelimit_fallbacks,
            lease_size,
            subscription_losses,
            webhook_deliveries,
            webhook_backlog,
            shadow_refusals,
            blocked_addresses,
            blocks,
            reported_costs,
            in_flight,
            realtime_connections,
            realtime_closed,
        })
    }

    /// Creates the Redis call series at zero, for a node that uses Redis.
    pub fn expect_redis(&self) {
        for op in REDIS_OPERATIONS {
            for result in REDIS_RESULTS {
                self.redis_calls.with_label_values(&[op, result]);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
