//! The running gateway's state. What comes from the config file lives in
//! one [`Runtime`] snapshot behind an `ArcSwap`: a reload swaps it whole, and
//! a bad file keeps the old one. What must outlive a reload (store, caches,
//! rate-limit counters, metrics) lives beside it in [`App`]; the tasks that
//! keep it current are [`crate::background`].

use crate::cache::{KeyCache, RoleSet, UsageRecorder};
use crate::config::LimiterBackend;
use crate::config::{Config, ConfigError, RoleSeed};
use crate::keys::model::Role;
use crate::metrics::Metrics;
use crate::proxy::Forwarder;
use crate::ratelimit::credits::Credits;
use crate::ratelimit::{local::LocalLimiter, Limiter};
use crate::store::{self, SharedStore, Store, StoreError};
use crate::FastHash;
use arc_swap::ArcSwap;
use dashmap::DashMap;
use prometheus::{Histogram, IntCounter};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Everything derived from one config file.
pub struct Runtime {
    pub config: Config,
    pub forwarder: Forwarder,
    /// `keygate_requests_total` children by (route index, status, outcome,
    /// code), so the hot path does not hash label strings under the
    /// registry's lock.
    /// Keyed by the label texts' addresses: hashing the texts themselves
    /// cost more than the rest of the lookup.
    request_counters: DashMap<(usize, u16, usize, usize), IntCounter, FastHash>,
    /// Upstream latency histograms by upstream index.
    upstream_histograms: Vec<Histogram>,
    /// GitHub's signing keys, with `[leaks.github]`.
    pub github: Option<crate::scanning::GithubKeys>,
}

impl Runtime {
    /// Builds the runtime for a validated config.
    pub fn new(config: Config, metrics: &Metrics) -> Runtime {
        let forwarder = Forwarder::new(&config.upstreams, config.server.workers, config.realtime.idle_timeout, metrics);
        let upstream_histograms =
            config.upstreams.iter().map(|u| metrics.upstream_latency.with_label_values(&[u.name.as_str()])).collect();
        let github = config.leaks.github.as_ref().map(crate::scanning::GithubKeys::new);
        Runtime { config, forwarder, request_counters: DashMap::default(), upstream_histograms, github }
    }

    /// Counts one request; `route` is the label for a key seen the first time.
    pub fn count_request(&self, metrics: &Metrics, key: (usize, u16, &'static str, &'static str), route: &str) {
        let (index, status, outcome, code) = key;
        let at = (index, status, outcome.as_ptr() as usize, code.as_ptr() as usize);
        if let Some(c) = self.request_counters.get(&at) {
            c.inc();
            return;
        }
        let status = status.to_string();
        let counter = metrics.requests.with_label_values(&[route, status.as_str(), outcome, code]);
        counter.inc();
        self.request_counters.insert(at, counter);
    }

    /// Records how long upstream `index` took to answer.
    pub fn observe_upstream(&self, index: usize, took: Duration) {
        if let Some(h) = self.upstream_histograms.get(index) {
            h.observe(took.as_secs_f64());
        }
    }
}

/// The gateway: current config snapshot plus long-lived state.
pub struct App {
    pub runtime: ArcSwap<Runtime>,
    pub config_path: PathBuf,
    pub store: SharedStore,
    pub cache: KeyCache,
    pub roles: RoleSet,
    pub limiter: Limiter,
    /// Every key's credits this node spends from.
    pub credits: Credits,
    pub usage: UsageRecorder,
    pub metrics: Metrics,
    /// The change-feed position read before the first request, so no change
    /// made after the cache started filling can be missed.
    start_cursor: store::FeedCursor,
    /// Set at the shutdown signal: `/readyz` answers 503 from then on.
    draining: std::sync::atomic::AtomicBool,
    /// Span export, with `[tracing]` (set at start; a reload keeps it).
    pub telemetry: Option<crate::telemetry::Telemetry>,
    /// Events the request path notices, and (until the writer takes it)
    /// their queue's other end.
    pub notices: crate::events::Notices,
    /// Failed credentials and blocks by client address (`[abuse]`).
    pub guard: crate::ratelimit::guard::FailureGuard,
    /// Requests in flight per key or owner (`max_in_flight`): counted here,
    /// or shared through the limiter's Redis.
    pub in_flight: Arc<crate::ratelimit::inflight::InFlight>,
    /// Live connections (event streams) by key, closed when it is revoked.
    pub streams: Arc<crate::realtime::Streams>,
    pub noticed: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<crate::events::NewEvent>>>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("tracing: {0}")]
    Telemetry(String),
}

/// Creates the config's `[[roles]]` that the store does not have yet.
pub async fn seed_roles(store: &dyn Store, seeds: &[RoleSeed]) -> Result<(), StoreError> {
    for seed in seeds {
        let role = Role {
            id: seed.id.clone(),
            name: seed.name.clone(),
            description: seed.description.clone(),
            permissions: seed.permissions.clone(),
            version: crate::keys::model::first_version(),
        };
        if store.insert_role_if_absent(&role).await? {
            tracing::info!(role = %role.id, "created role from config");
        }
    }
    Ok(())
}

/// Starts the cursor of each `[[webhooks]]` endpoint the store does not
/// know yet, so that events written from now on reach it.
pub async fn register_webhooks(store: &dyn Store, hooks: &[crate::config::Webhook]) -> Result<(), StoreError> {
    for hook in hooks {
        store.register_webhook(&hook.name).await?;
    }
    Ok(())
}

impl App {
    /// Opens the store, seeds roles and loads them.
    pub async fn new(config: Config, config_path: PathBuf) -> Result<Arc<App>, StartError> {
        let metrics = Metrics::new()?;
        if matches!(config.store.backend, crate::config::StoreBackend::Redis(_))
            || matches!(config.rate_limit.backend, LimiterBackend::Redis(_))
        {
            metrics.expect_redis();
        }
        let store = store::open(&config.store, &metrics).await?;
        seed_roles(store.as_ref(), &config.roles).await?;
        register_webhooks(store.as_ref(), &config.webhooks).await?;
        let start_cursor = store.change_cursor().await?;
        let roles = RoleSet::load(store.as_ref()).await?;
        let limiter = match &config.rate_limit.backend {
            LimiterBackend::Local => {
                // Counted on this node alone: start from what the store
                // kept of the current hour, day and month.
                let local = LocalLimiter::default();
                for w in store.meter_windows(crate::clock::now_ms()).await? {
                    local.restore(w.period, &w.id, w.index, u32::try_from(w.delta).unwrap_or(u32::MAX));
                }
                Limiter::Local(local)
            }
            LimiterBackend::Redis(target) => {
                Limiter::connect_redis(target, &config.rate_limit, &metrics).await.map_err(StoreError::Unavailable)?
            }
        };
        // A balance in a store other nodes reach is spent from leases of
        // the store's balance, whatever limiter counts the windows: copies
        // per node would each spend it whole.
        let credits = match (&config.store.backend, &limiter) {
            (crate::config::StoreBackend::Redis(_), _) | (_, Limiter::Redis(_)) => {
                Credits::shared(config.rate_limit.nodes_hint.get())
            }
            _ => Credits::default(),
        };
        let cache = KeyCache::new(config.keys.cache_ttl, config.keys.negative_cache_ttl, config.store.timeout);
        let telemetry = match &config.tracing {
            None => None,
            Some(t) => {
                Some(crate::telemetry::Telemetry::start(t, tokio::runtime::Handle::current()).map_err(StartError::Telemetry)?)
            }
        };
        let (notices, noticed) = crate::events::Notices::channel();
        let in_flight = crate::ratelimit::inflight::InFlight::new(limiter.redis(), metrics.in_flight.clone());
        let streams = crate::realtime::Streams::new(&metrics.realtime_connections, metrics.realtime_closed.clone());
        Ok(Arc::new(App {
            runtime: ArcSwap::from_pointee(Runtime::new(config, &metrics)),
            config_path,
            store,
            cache,
            roles,
            limiter,
            credits,
            usage: UsageRecorder::default(),
            metrics,
            start_cursor,
            draining: std::sync::atomic::AtomicBool::new(false),
            telemetry,
            notices,
            noticed: std::sync::Mutex::new(Some(noticed)),
            guard: Default::default(),
            in_flight,
            streams,
        }))
    }

    /// Re-reads the config file; on any problem the running config stays.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        let result = Config::load(&self.config_path);
        let config = match result {
            Ok(c) => c,
            Err(e) => {
                self.metrics.config_reloads.with_label_values(&["error"]).inc();
                return Err(e);
            }
        };
        let old = self.runtime.load();
        if config.server.listen != old.config.server.listen || config.admin.listen != old.config.admin.listen {
            tracing::warn!("listen addresses changed in the config: they take effect at the next restart");
        }
        if config.tracing.as_ref().map(|t| &t.collector.uri) != old.config.tracing.as_ref().map(|t| &t.collector.uri) {
            tracing::warn!("[tracing] changed in the config: it takes effect at the next restart");
        }
        if config.log_format != old.config.log_format {
            tracing::warn!("[log] format changed in the config: it takes effect at the next restart");
        }
        if config.server.tls.is_some() != old.config.server.tls.is_some() {
            tracing::warn!("[server.tls] added or removed: the listener changes to or from TLS at the next restart");
        } else if config.server.tls.is_some() {
            tracing::info!("TLS certificate and key read again: new connections get them");
        }
        if let Err(e) = seed_roles(self.store.as_ref(), &config.roles).await {
            tracing::warn!(error = %e, "could not seed roles after reload");
        }
        if let Err(e) = register_webhooks(self.store.as_ref(), &config.webhooks).await {
            tracing::warn!(error = %e, "could not register webhooks after reload: each starts at its first delivery pass");
        }
        self.runtime.store(Arc::new(Runtime::new(config, &self.metrics)));
        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
        Ok(())
    }

    /// Marks the node as shutting down (see [`App::draining`]).
    pub fn start_draining(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether shutdown has begun: load balancers should stop sending.
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The change-feed position read before the first request: where the
    /// node's follower starts.
    pub fn start_cursor(&self) -> &store::FeedCursor {
        &self.start_cursor
    }

    /// Counts a failed credential from `client`: exactly across nodes on the
    /// Redis limiter, on this node otherwise. The failure that passes the
    /// limit blocks the address here at once and, through the store, on
    /// every node (at their next sweep).
    pub async fn note_failed_credential(&self, client: std::net::IpAddr, policy: crate::config::GuardPolicy, now_ms: i64) {
        use crate::ratelimit::Limiter;
        let until = now_ms.saturating_add(policy.block_for_ms);
        // This node's guard counts (and blocks) unless Redis counts for every node.
        let passed = match &self.limiter {
            Limiter::Redis(redis) => match redis.count_failure(&client.to_string(), now_ms).await {
                Ok(n) if n == u64::from(policy.per_minute) + 1 => {
                    self.guard.block(client, now_ms, until);
                    true
                }
                Ok(_) => false,
                // Redis cannot count: this node's own count stands in.
                Err(_) => self.guard.note_failure(client, policy, now_ms),
            },
            Limiter::Local(_) => self.guard.note_failure(client, policy, now_ms),
        };
        if !passed {
            return;
        }
        self.metrics.blocks.inc();
        tracing::warn!(client = %client, "too many failed credentials: address blocked");
        if let Err(e) = self.store.put_block(&client.to_string(), until).await {
            self.note_store_error("put_block", &e);
        }
    }

    /// Counts and logs a failed store call.
    pub fn note_store_error(&self, operation: &str, e: &StoreError) {
        self.metrics.store_errors.with_label_values(&[operation]).inc();
        tracing::warn!(operation, error = %e, "store call failed");
    }
}
