//! The limiter shared by every node through Redis, exact however many nodes
//! there are: Redis grants quota atomically (a Lua script) and never more
//! than the limit per window, so no window admits more than the limit.
//!
//! Busy keys do not cost a round trip per request: a node takes quota in
//! batches (leases) sized to the key's recent rate on that node, spends
//! them locally, and gives back what it did not use when the key goes idle
//! or the window ends. A key seen once a second costs one call per request;
//! one seen 10,000 times a second costs about one call per 100 ms.

use super::local::LocalLimiter;
use super::{Decision, WINDOW_MS};
use crate::config::{Algorithm, RedisErrorPolicy};
use crate::metrics::Metrics;
use crate::store::redis_conn::{RedisFailure, RedisHandle};
use crate::FastHash;
use dashmap::DashMap;
use redis::Script;
use std::sync::{Arc, LazyLock};
use tokio::sync::Mutex;

/// A lease aims to last this long at the key's recent rate.
pub const LEASE_HORIZON_MS: i64 = 100;
/// The largest lease ever taken.
pub const MAX_LEASE: u32 = 5_000;
/// A lease unused for this long is given back.
pub const LEASE_IDLE_MS: i64 = 1_000;
/// After Redis says a sliding window is full, ask again no sooner than this.
const SLIDING_RECHECK_MS: i64 = 250;

/// KEYS: current window counter, previous window counter.
/// ARGV: limit, wanted, "s" for sliding, ms elapsed in the window, window ms,
/// requests admitted without Redis this window (counted first, whatever the
/// limit: they were served).
/// Returns {granted, remaining after the grant, current count, previous count}.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local limit, want, sliding, elapsed, w = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == 's', tonumber(ARGV[4]), tonumber(ARGV[5])
local owed = tonumber(ARGV[6])
if owed > 0 then
  redis.call('INCRBY', KEYS[1], owed)
  redis.call('PEXPIRE', KEYS[1], w * 2 + 5000)
end
local curr = tonumber(redis.call('GET', KEYS[1]) or '0')
local prev = 0
local carried = 0
if sliding then
  prev = tonumber(redis.call('GET', KEYS[2]) or '0')
  carried = math.ceil(prev * (w - elapsed) / w)
end
local avail = limit - carried - curr
if avail < 0 then avail = 0 end
local grant = math.min(want, avail)
if grant > 0 then
  curr = redis.call('INCRBY', KEYS[1], grant)
  redis.call('PEXPIRE', KEYS[1], w * 2 + 5000)
end
return {grant, avail - grant, curr, prev}
"#,
    )
});

/// KEYS: a window counter. ARGV: unused quota to give back.
static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = tonumber(ARGV[1])
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v >= n and n > 0 then return redis.call('DECRBY', KEYS[1], n) end
return v
"#,
    )
});

fn counter_key(key_id: &str, window: i64) -> String {
    format!("kg:rl:{{{key_id}}}:{window}")
}

/// What this node holds for one key.
#[derive(Default)]
struct Lease {
    window: i64,
    /// Quota taken from Redis and not yet spent.
    left: u32,
    /// Redis's count of what is still free in the window (at the last call).
    redis_left: u32,
    /// Whether Redis answered in this window (`redis_left` is its word).
    heard: bool,
    /// Quota Redis granted this node in this window.
    taken: u32,
    /// Requests the `local` fallback admitted in this window that Redis
    /// has not been told of yet.
    owed: u32,
    /// Redis's counts at the last call, for `Retry-After`.
    current: u32,
    previous: u32,
    /// Redis said the window is full: refuse locally until then.
    full_until_ms: i64,
    /// Requests this node saw in the current and the previous second.
    second: i64,
    this_second: u32,
    last_second: u32,
    last_used_ms: i64,
}

impl Lease {
    fn note_request(&mut self, now_ms: i64) {
        let second = now_ms / 1000;
        if second != self.second {
            self.last_second = if second == self.second + 1 { self.this_second } else { 0 };
            self.this_second = 0;
            self.second = second;
        }
        self.this_second += 1;
        self.last_used_ms = now_ms;
    }

    /// How much to ask for: enough for the horizon at the recent rate.
    fn wanted(&self, limit: u32, nodes: u32) -> u32 {
        let rate = self.last_second.max(self.this_second) as i64;
        let by_rate = (rate * LEASE_HORIZON_MS / 1000) as u32;
        // Never hoard more than a share of the limit: others may need it.
        let share = (limit / nodes.max(1) / 4).max(1);
        by_rate.clamp(1, MAX_LEASE).min(share)
    }

    /// One request from the lease, if it has quota left in `window`.
    fn spend(&mut self, limit: u32, window: i64, now_ms: i64) -> Option<Decision> {
        if self.window != window || self.left == 0 {
            return None;
        }
        self.note_request(now_ms);
        Some(self.allowed(limit, window))
    }

    /// How many requests the `local` fallback may still admit in this
    /// window: what is left of the node's share once what Redis granted it
    /// is counted, and never more than Redis last said was free.
    fn alone_allowance(&self, share: u32) -> u32 {
        let room = share.saturating_sub(self.taken);
        if self.heard {
            room.min(self.redis_left)
        } else {
            room
        }
    }

    fn allowed(&mut self, limit: u32, window: i64) -> Decision {
        self.left -= 1;
        Decision {
            allowed: true,
            limit,
            remaining: self.redis_left.saturating_add(self.left).min(limit),
            reset_at: ((window + 1) * WINDOW_MS) / 1000,
            retry_after: 0,
        }
    }
}

/// A key's lease on this node, and the gate that lets one request at a
/// time refill it from Redis. The lease itself sits behind a plain mutex,
/// held for a few instructions and never across a wait: every worker
/// spends from it without yielding (an asynchronous lock there made two
/// workers on one key queue behind each other, a task switch each time).
#[derive(Default)]
struct Slot {
    lease: std::sync::Mutex<Lease>,
    refill: Mutex<()>,
}

impl Slot {
    fn lease(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The distributed limiter.
pub struct RedisLimiter {
    redis: Arc<RedisHandle>,
    leases: DashMap<String, Arc<Slot>, FastHash>,
    /// Used when Redis cannot be asked and the policy is `local`.
    fallback: LocalLimiter,
    nodes_hint: u32,
}

impl RedisLimiter {
    /// A limiter over a Redis connection.
    pub fn new(redis: Arc<RedisHandle>, nodes_hint: u32) -> RedisLimiter {
        RedisLimiter { redis, leases: DashMap::default(), fallback: LocalLimiter::default(), nodes_hint }
    }

    fn slot(&self, key_id: &str) -> Arc<Slot> {
        if let Some(l) = self.leases.get(key_id) {
            return Arc::clone(&l);
        }
        Arc::clone(&self.leases.entry(key_id.to_string()).or_default())
    }

    /// The common case, without waiting: the key's lease for this window
    /// still has quota and nobody holds it. `None`: ask [`Self::check`].
    pub fn try_spend(&self, key_id: &str, limit: u32, now_ms: i64) -> Option<Decision> {
        let window = now_ms.div_euclid(WINDOW_MS);
        let slot = self.leases.get(key_id)?;
        // Bound first: the lease guard must drop before `slot` does.
        let spent = slot.lease().spend(limit, window, now_ms);
        spent
    }

    /// Counts one request against the key's limit across every node.
    pub async fn check(
        &self,
        algorithm: Algorithm,
        key_id: &str,
        limit: u32,
        now_ms: i64,
        on_error: RedisErrorPolicy,
        metrics: &Metrics,
    ) -> Decision {
        let window = now_ms.div_euclid(WINDOW_MS);
        let slot = self.slot(key_id);
        let _refilling = slot.refill.lock().await;
        let unused_before = {
            let mut l = slot.lease();
            let mut unused_before = None;
            if l.window != window {
                let (old_window, unused) = (l.window, l.left);
                *l = Lease {
                    second: l.second,
                    this_second: l.this_second,
                    last_second: l.last_second,
                    window,
                    ..Lease::default()
                };
                if unused > 0 && old_window + 1 == window && algorithm == Algorithm::SlidingWindow {
                    unused_before = Some((old_window, unused));
                }
            }
            unused_before
        };
        if let Some((old_window, unused)) = unused_before {
            // Unused quota of the previous window still weighs on a sliding estimate.
            self.give_back(key_id, old_window, unused).await;
        }
        let (want, owed) = {
            let mut l = slot.lease();
            if let Some(spent) = l.spend(limit, window, now_ms) {
                return spent;
            }
            l.note_request(now_ms);
            if now_ms < l.full_until_ms {
                return Decision::refused(algorithm, limit, l.current, l.previous, now_ms);
            }
            (l.wanted(limit, self.nodes_hint), l.owed)
        };
        match self.take(algorithm, key_id, limit, want, owed, now_ms).await {
            Ok((granted, redis_left, current, previous)) => {
                metrics.lease_size.observe(f64::from(granted));
                let mut l = slot.lease();
                l.owed -= owed.min(l.owed);
                l.heard = true;
                l.taken = l.taken.saturating_add(granted);
                l.redis_left = redis_left;
                l.current = current;
                l.previous = previous;
                if granted == 0 {
                    l.full_until_ms = match algorithm {
                        Algorithm::FixedWindow => (window + 1) * WINDOW_MS,
                        Algorithm::SlidingWindow => now_ms + SLIDING_RECHECK_MS,
                    };
                    return Decision::refused(algorithm, limit, current, previous, now_ms);
                }
                l.left = granted;
                l.allowed(limit, window)
            }
            Err(e) => {
                tracing::debug!(error = %e, "rate limiter cannot reach redis; applying on_redis_error");
                self.fallback(algorithm, &slot, key_id, limit, now_ms, on_error, metrics)
            }
        }
    }

    /// What a check would say, from this node's view, without a Redis call.
    pub fn peek(&self, algorithm: Algorithm, key_id: &str, limit: u32, now_ms: i64) -> Decision {
        let window = now_ms.div_euclid(WINDOW_MS);
        let reset_at = ((window + 1) * WINDOW_MS) / 1000;
        let fresh = Decision { allowed: true, limit, remaining: limit, reset_at, retry_after: 0 };
        let Some(slot) = self.leases.get(key_id).map(|l| Arc::clone(&l)) else { return fresh };
        let l = slot.lease();
        if l.window != window {
            return fresh;
        }
        if l.left == 0 && now_ms < l.full_until_ms {
            return Decision { retry_after: 0, ..Decision::refused(algorithm, limit, l.current, l.previous, now_ms) };
        }
        Decision { remaining: l.redis_left.saturating_add(l.left).min(limit), ..fresh }
    }

    #[allow(clippy::too_many_arguments)]
    fn fallback(
        &self,
        algorithm: Algorithm,
        slot: &Slot,
        key_id: &str,
        limit: u32,
        now_ms: i64,
        policy: RedisErrorPolicy,
        metrics: &Metrics,
    ) -> Decision {
        let reset_at = ((now_ms.div_euclid(WINDOW_MS) + 1) * WINDOW_MS) / 1000;
        match policy {
            RedisErrorPolicy::Local => {
                metrics.ratelimit_fallbacks.with_label_values(&["local"]).inc();
                // Counting from what this node already took this window,
                // not from zero: a short stall then admits no more than the
                // node's share would have (what the other nodes took is
                // theirs). The local counter keeps the algorithm's shape
                // across windows; the lease says what is left of this one.
                let share = (limit / self.nodes_hint.max(1)).max(1);
                let mut l = slot.lease();
                let allowance = l.alone_allowance(share);
                let decision = self.fallback.check(algorithm, key_id, allowance, now_ms);
                if decision.allowed {
                    l.owed += 1;
                }
                Decision { limit, ..decision }
            }
            RedisErrorPolicy::Allow => {
                metrics.ratelimit_fallbacks.with_label_values(&["allow"]).inc();
                Decision { allowed: true, limit, remaining: limit, reset_at, retry_after: 0 }
            }
            RedisErrorPolicy::Deny => {
                metrics.ratelimit_fallbacks.with_label_values(&["deny"]).inc();
                Decision { allowed: false, limit, remaining: 0, reset_at, retry_after: 1 }
            }
        }
    }

    async fn take(
        &self,
        algorithm: Algorithm,
        key_id: &str,
        limit: u32,
        want: u32,
        owed: u32,
        now_ms: i64,
    ) -> Result<(u32, u32, u32, u32), RedisFailure> {
        let window = now_ms.div_euclid(WINDOW_MS);
        let (current_key, previous_key) = (counter_key(key_id, window), counter_key(key_id, window - 1));
        let sliding = if algorithm == Algorithm::SlidingWindow { "s" } else { "f" };
        let elapsed = now_ms - window * WINDOW_MS;
        self.redis
            .run("ratelimit_take", |mut c| async move {
                TAKE.key(current_key)
                    .key(previous_key)
                    .arg(limit)
                    .arg(want)
                    .arg(sliding)
                    .arg(elapsed)
                    .arg(WINDOW_MS)
                    .arg(owed)
                    .invoke_async(&mut c)
                    .await
            })
            .await
    }

    async fn give_back(&self, key_id: &str, window: i64, unused: u32) {
        let key = counter_key(key_id, window);
        let result = self
            .redis
            .run("ratelimit_return", |mut c| async move { GIVE_BACK.key(key).arg(unused).invoke_async::<i64>(&mut c).await })
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "could not give back unused quota; it expires with its window");
        }
    }

    /// Gives back the quota of leases idle for a while and forgets old ones.
    pub async fn sweep(&self, now_ms: i64) {
        let window = now_ms.div_euclid(WINDOW_MS);
        let ids: Vec<String> = self.leases.iter().map(|e| e.key().clone()).collect();
        for id in ids {
            let Some(slot) = self.leases.get(&id).map(|l| Arc::clone(&l)) else { continue };
            let Ok(_refilling) = slot.refill.try_lock() else { continue };
            let (idle_unused, old) = {
                let mut l = slot.lease();
                let idle = l.left > 0 && l.window == window && now_ms - l.last_used_ms > LEASE_IDLE_MS;
                let unused = if idle { std::mem::take(&mut l.left) } else { 0 };
                l.redis_left += unused;
                l.taken -= unused.min(l.taken);
                (unused, l.window + 1 < window)
            };
            if idle_unused > 0 {
                self.give_back(&id, window, idle_unused).await;
            }
            if old {
                self.leases.remove_if(&id, |_, v| Arc::strong_count(v) <= 2);
            }
        }
        self.fallback.sweep(now_ms);
    }
}
