//! One Redis connection handle shared by the Redis store and the Redis rate
//! limiter: standalone (redis-rs's connection manager, which reconnects by
//! itself) or Redis Cluster, multiplexed either way, never a connection per
//! request. Every call has a tight timeout and goes through a circuit
//! breaker, so a dead or slow Redis costs a request microseconds, not seconds.

use prometheus::IntCounterVec;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

/// Consecutive failures that open the breaker.
pub const BREAKER_THRESHOLD: u32 = 3;
/// How long an open breaker fails calls at once before letting one through.
pub const BREAKER_COOLDOWN: Duration = Duration::from_millis(500);

/// Error code with which keygate's Lua scripts refuse an operation
/// (`redis.error_reply("KG conflict ...")`): an answer, not a fault.
pub const REFUSAL_CODE: &str = "KG";

/// Either kind of connection; both multiplex many requests on few sockets.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Why a Redis call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisFailure {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis circuit breaker is open after repeated failures")]
    BreakerOpen,
    #[error("redis: {0}")]
    Redis(String),
    /// A script refused the operation (conflict, not found, ...): Redis itself is fine.
    #[error("{0}")]
    Refused(String),
}

/// Fails fast after repeated errors; lets one call through after a cooldown.
#[derive(Default)]
pub struct Breaker {
    failures: AtomicU32,
    open_until_ms: AtomicI64,
}

impl Breaker {
    fn allow(&self) -> bool {
        crate::clock::now_ms() >= self.open_until_ms.load(Ordering::Relaxed)
    }

    fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    fn failed(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= BREAKER_THRESHOLD {
            self.open_until_ms.store(crate::clock::now_ms() + BREAKER_COOLDOWN.as_millis() as i64, Ordering::Relaxed);
        }
    }
}

/// The connection plus its timeout, breaker and call counter.
pub struct RedisHandle {
    conn: Conn,
    /// A client for dedicated pub/sub connections (one of the seeds for a cluster).
    pub pubsub_client: redis::Client,
    timeout: Duration,
    breaker: Breaker,
    calls: IntCounterVec,
}

/// One PING through the connection manager at start. The manager connects
/// lazily, so that a Redis down at start does not keep keygate from
/// starting, and its later failures only say that Redis did not answer;
/// this first call opens the connection the manager keeps (no request
/// pays for it) and, when it fails, the log (and a CLI command's output)
/// says at once why: refused, a certificate not trusted, a password refused.
async fn warm_up(manager: &ConnectionManager, within: Duration) {
    let mut conn = manager.clone();
    let ping = redis::cmd("PING");
    let why = match tokio::time::timeout(within, ping.query_async::<()>(&mut conn)).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {within:?}"),
    };
    tracing::warn!(error = %why, "cannot connect to redis; what needs it fails closed until it answers");
}

impl RedisHandle {
    /// Connects to a standalone Redis, or to a cluster when `cluster` is set
    /// (then `url` may list several seeds separated by commas).
    /// `calls` counts calls by operation and result.
    pub async fn connect(url: &str, cluster: bool, timeout: Duration, calls: IntCounterVec) -> Result<RedisHandle, RedisFailure> {
        // redis-rs builds its TLS settings (for rediss:// URLs) with rustls's
        // process-wide provider: the one keygate's own TLS names.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let seeds = crate::config::redis_seeds(url);
        let first = seeds.first().ok_or_else(|| RedisFailure::Redis("no redis URL given".into()))?;
        let pubsub_client = redis::Client::open(first.as_str()).map_err(|e| RedisFailure::Redis(e.to_string()))?;
        let connect_timeout = timeout.max(Duration::from_secs(1));
        let conn = if cluster {
            let client = redis::cluster::ClusterClient::builder(seeds.clone())
                .connection_timeout(connect_timeout)
                .response_timeout(timeout)
                .retries(1)
                .build()
                .map_err(|e| RedisFailure::Redis(e.to_string()))?;
            let c = tokio::time::timeout(connect_timeout * 3, client.get_async_connection())
                .await
                .map_err(|_| RedisFailure::Timeout(connect_timeout * 3))?
                .map_err(|e| RedisFailure::Redis(e.to_string()))?;
            Conn::Cluster(c)
        } else {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            let c = ConnectionManager::new_lazy_with_config(pubsub_client.clone(), config)
                .map_err(|e| RedisFailure::Redis(e.to_string()))?;
            warm_up(&c, connect_timeout).await;
            Conn::Single(c)
        };
        Ok(RedisHandle { conn, pubsub_client, timeout, breaker: Breaker::default(), calls })
    }

    /// Runs one operation with the timeout and breaker; `op` names it in metrics.
    pub async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, RedisFailure>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allow() {
            self.calls.with_label_values(&[op, "breaker_open"]).inc();
            return Err(RedisFailure::BreakerOpen);
        }
        let result = tokio::time::timeout(self.timeout, f(self.conn.clone())).await;
        match result {
            Ok(Ok(v)) => {
                self.breaker.succeeded();
                self.calls.with_label_values(&[op, "ok"]).inc();
                Ok(v)
            }
            Ok(Err(e)) if e.code() == Some(REFUSAL_CODE) => {
                self.breaker.succeeded();
                self.calls.with_label_values(&[op, "refused"]).inc();
                Err(RedisFailure::Refused(e.detail().unwrap_or("refused").to_string()))
            }
            Ok(Err(e)) => {
                self.breaker.failed();
                self.calls.with_label_values(&[op, "error"]).inc();
                Err(RedisFailure::Redis(e.to_string()))
            }
            Err(_) => {
                self.breaker.failed();
                self.calls.with_label_values(&[op, "timeout"]).inc();
                Err(RedisFailure::Timeout(self.timeout))
            }
        }
    }
}
