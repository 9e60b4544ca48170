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
use super::{Counter, Decision, RecentRate};
use crate::clock::Period;
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
/// The same for hour, day and month windows: their limits are far larger
/// than a second of traffic, so a longer lease costs no exactness (a
/// lease is never more than the limit leaves) and saves most of the calls.
pub const CALENDAR_LEASE_HORIZON_MS: i64 = 1_000;
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

/// KEYS: a window counter. ARGV: units, expiry in ms. Counts whatever
/// the limit: what the upstream said a request cost beyond its check.
static DEBIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
"#,
    )
});

/// KEYS: an address's failure counter for one minute. Returns the count.
static COUNT_FAILURE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], 120000) end
return n
"#,
    )
});

/// The Redis key of a counter's window: `kg:rl:{id}:<minute>` (as
/// before calendar windows existed) or `kg:rl:{id}:h|d|mo:<index>`.
fn counter_key(counter: Counter<'_>, window: i64) -> String {
    let id = counter.id;
    match counter.period {
        Period::Minute => format!("kg:rl:{{{id}}}:{window}"),
        Period::Hour => format!("kg:rl:{{{id}}}:h:{window}"),
        Period::Day => format!("kg:rl:{{{id}}}:d:{window}"),
        Period::Month => format!("kg:rl:{{{id}}}:mo:{window}"),
    }
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
    rate: RecentRate,
}

impl Lease {
    fn note_request(&mut self, now_ms: i64) {
        self.rate.note(now_ms);
    }

    /// How much to ask for: enough for the horizon at the recent rate.
    fn wanted(&self, period: Period, limit: u32, cost: u32, nodes: u32) -> u32 {
        let rate = i64::from(self.rate.per_second()) * i64::from(cost);
        let horizon = if period.is_calendar() { CALENDAR_LEASE_HORIZON_MS } else { LEASE_HORIZON_MS };
        let by_rate = (rate * horizon / 1000).min(i64::from(u32::MAX)) as u32;
        // Never hoard more than a share of the limit: others may need it.
        let share = (limit / nodes.max(1) / 4).max(1);
        by_rate.clamp(1, MAX_LEASE).min(share)
    }

    /// `cost` units from the lease, if it has them left in `window`.
    fn spend(&mut self, period: Period, limit: u32, cost: u32, window: i64, now_ms: i64) -> Option<Decision> {
        if self.window != window || self.left < cost {
            return None;
        }
        self.note_request(now_ms);
        Some(self.allowed(period, limit, cost, window))
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

    fn allowed(&mut self, period: Period, limit: u32, cost: u32, window: i64) -> Decision {
        self.left -= cost;
        Decision {
            allowed: true,
            limit,
            remaining: self.redis_left.saturating_add(self.left).min(limit),
            reset_at: period.end_ms(window) / 1000,
            retry_after: 0,
            period,
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
    /// Leases by period, then by counter id.
    leases: [DashMap<String, Arc<Slot>, FastHash>; 4],
    /// Used when Redis cannot be asked and the policy is `local`.
    fallback: LocalLimiter,
    nodes_hint: u32,
}

impl RedisLimiter {
    /// A limiter over a Redis connection.
    pub fn new(redis: Arc<RedisHandle>, nodes_hint: u32) -> RedisLimiter {
        RedisLimiter { redis, leases: Default::default(), fallback: LocalLimiter::default(), nodes_hint }
    }

    /// The connection it counts in.
    pub fn handle(&self) -> Arc<RedisHandle> {
        Arc::clone(&self.redis)
    }

    fn leases(&self, period: Period) -> &DashMap<String, Arc<Slot>, FastHash> {
        &self.leases[period as usize]
    }

    fn slot(&self, counter: Counter<'_>) -> Arc<Slot> {
        let leases = self.leases(counter.period);
        if let Some(l) = leases.get(counter.id) {
            return Arc::clone(&l);
        }
        Arc::clone(&leases.entry(counter.id.to_string()).or_default())
    }

    /// The common case, without waiting: the counter's lease for this
    /// window still has the units and nobody holds it. `None`: ask
    /// [`Self::check`].
    pub fn try_spend(&self, counter: Counter<'_>, limit: u32, cost: u32, now_ms: i64) -> Option<Decision> {
        let window = counter.period.index(now_ms);
        let slot = self.leases(counter.period).get(counter.id)?;
        // Bound first: the lease guard must drop before `slot` does.
        let spent = slot.lease().spend(counter.period, limit, cost, window, now_ms);
        spent
    }

    /// Puts units a check took back into this node's lease (a later
    /// check refused the request): they stay this node's to spend, and
    /// go back to Redis with the rest of an idle lease.
    pub fn refund(&self, counter: Counter<'_>, cost: u32, now_ms: i64) {
        let window = counter.period.index(now_ms);
        if let Some(slot) = self.leases(counter.period).get(counter.id) {
            let mut l = slot.lease();
            if l.window == window {
                if l.owed >= cost && !l.heard {
                    // Admitted by the fallback: it was never Redis's.
                    l.owed -= cost;
                    self.fallback.refund(counter, cost, now_ms);
                } else {
                    l.left += cost;
                }
            }
        }
    }

    /// Counts `units` more in the counter's current window, whatever its
    /// limit: from this node's lease first, the rest in Redis, so every
    /// node sees the window taken (and past its limit, refuses).
    pub async fn debit(&self, counter: Counter<'_>, units: u32, now_ms: i64) {
        let period = counter.period;
        let window = period.index(now_ms);
        let rest = match self.leases(period).get(counter.id) {
            Some(slot) => {
                let mut l = slot.lease();
                if l.window == window {
                    let from_lease = l.left.min(units);
                    l.left -= from_lease;
                    l.redis_left = l.redis_left.saturating_sub(units - from_lease);
                    units - from_lease
                } else {
                    units
                }
            }
            None => units,
        };
        if rest == 0 {
            return;
        }
        let key = counter_key(counter, window);
        let ttl = (period.end_ms(window) - period.start_ms(window)) * 2 + 5000;
        let result = self
            .redis
            .run("ratelimit_debit", |mut c| async move { DEBIT.key(key).arg(rest).arg(ttl).invoke_async::<i64>(&mut c).await })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, units = rest, "could not count a request's reported cost in redis");
        }
    }

    /// Counts `cost` units against the counter's limit across every node.
    #[allow(clippy::too_many_arguments)]
    pub async fn check(
        &self,
        algorithm: Algorithm,
        counter: Counter<'_>,
        limit: u32,
        cost: u32,
        now_ms: i64,
        on_error: RedisErrorPolicy,
        metrics: &Metrics,
    ) -> Decision {
        let period = counter.period;
        // Everything below (give-backs, rechecks, the script) follows the
        // window's own algorithm.
        let algorithm = algorithm.for_period(period);
        let window = period.index(now_ms);
        let slot = self.slot(counter);
        let _refilling = slot.refill.lock().await;
        let unused_before = {
            let mut l = slot.lease();
            let mut unused_before = None;
            if l.window != window {
                let (old_window, unused) = (l.window, l.left);
                *l = Lease { rate: l.rate, window, ..Lease::default() };
                if unused > 0 && old_window + 1 == window && algorithm == Algorithm::SlidingWindow {
                    unused_before = Some((old_window, unused));
                }
            }
            unused_before
        };
        if let Some((old_window, unused)) = unused_before {
            // Unused quota of the previous window still weighs on a sliding estimate.
            self.give_back(counter, old_window, unused).await;
        }
        let (want, owed) = {
            let mut l = slot.lease();
            if let Some(spent) = l.spend(period, limit, cost, window, now_ms) {
                return spent;
            }
            l.note_request(now_ms);
            if now_ms < l.full_until_ms {
                return Decision::refused(algorithm, period, limit, l.current, l.previous, now_ms);
            }
            (l.wanted(period, limit, cost, self.nodes_hint).max(cost - l.left.min(cost)), l.owed)
        };
        match self.take(algorithm, counter, limit, want, owed, now_ms).await {
            Ok((granted, redis_left, current, previous)) => {
                metrics.lease_size.observe(f64::from(granted));
                let mut l = slot.lease();
                l.owed -= owed.min(l.owed);
                l.heard = true;
                l.taken = l.taken.saturating_add(granted);
                l.redis_left = redis_left;
                l.current = current;
                l.previous = previous;
                l.left = l.left.saturating_add(granted);
                if l.left >= cost {
                    return l.allowed(period, limit, cost, window);
                }
                if granted == 0 && redis_left == 0 {
                    l.full_until_ms = match algorithm {
                        Algorithm::SlidingWindow => now_ms + SLIDING_RECHECK_MS,
                        Algorithm::FixedWindow => period.end_ms(window),
                    };
                }
                // What was granted stays in the lease for cheaper requests
                // and goes back with it when idle.
                Decision::refused(algorithm, period, limit, current, previous, now_ms)
            }
            Err(e) => {
                tracing::debug!(error = %e, "rate limiter cannot reach redis; applying on_redis_error");
                self.fallback(algorithm, &slot, counter, limit, cost, now_ms, on_error, metrics)
            }
        }
    }

    /// What a check would say, from this node's view, without a Redis call.
    pub fn peek(&self, algorithm: Algorithm, counter: Counter<'_>, limit: u32, now_ms: i64) -> Decision {
        let period = counter.period;
        let window = period.index(now_ms);
        let fresh = Decision::fresh(period, limit, now_ms);
        let Some(slot) = self.leases(period).get(counter.id).map(|l| Arc::clone(&l)) else { return fresh };
        let l = slot.lease();
        if l.window != window {
            return fresh;
        }
        if l.left == 0 && now_ms < l.full_until_ms {
            return Decision { retry_after: 0, ..Decision::refused(algorithm, period, limit, l.current, l.previous, now_ms) };
        }
        Decision { remaining: l.redis_left.saturating_add(l.left).min(limit), ..fresh }
    }

    /// Units of the counter's current window Redis has counted (leases
    /// other nodes hold included), without this node's unspent lease.
    pub async fn used(&self, counter: Counter<'_>, now_ms: i64) -> Result<u32, RedisFailure> {
        let window = counter.period.index(now_ms);
        let key = counter_key(counter, window);
        let counted: Option<u32> =
            self.redis.run("ratelimit_read", |mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await }).await?;
        let unspent = self
            .leases(counter.period)
            .get(counter.id)
            .map(|s| {
                let l = s.lease();
                if l.window == window {
                    l.left
                } else {
                    0
                }
            })
            .unwrap_or(0);
        Ok(counted.unwrap_or(0).saturating_sub(unspent))
    }

    #[allow(clippy::too_many_arguments)]
    fn fallback(
        &self,
        algorithm: Algorithm,
        slot: &Slot,
        counter: Counter<'_>,
        limit: u32,
        cost: u32,
        now_ms: i64,
        policy: RedisErrorPolicy,
        metrics: &Metrics,
    ) -> Decision {
        let period = counter.period;
        let reset_at = period.end_ms(period.index(now_ms)) / 1000;
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
                let decision = self.fallback.check(algorithm, counter, allowance, cost, now_ms);
                if decision.allowed {
                    l.owed += cost;
                }
                Decision { limit, ..decision }
            }
            RedisErrorPolicy::Allow => {
                metrics.ratelimit_fallbacks.with_label_values(&["allow"]).inc();
                Decision { allowed: true, limit, remaining: limit, reset_at, retry_after: 0, period }
            }
            RedisErrorPolicy::Deny => {
                metrics.ratelimit_fallbacks.with_label_values(&["deny"]).inc();
                Decision { allowed: false, limit, remaining: 0, reset_at, retry_after: 1, period }
            }
        }
    }

    async fn take(
        &self,
        algorithm: Algorithm,
        counter: Counter<'_>,
        limit: u32,
        want: u32,
        owed: u32,
        now_ms: i64,
    ) -> Result<(u32, u32, u32, u32), RedisFailure> {
        let period = counter.period;
        let window = period.index(now_ms);
        let (current_key, previous_key) = (counter_key(counter, window), counter_key(counter, window - 1));
        let sliding = if algorithm == Algorithm::SlidingWindow { "s" } else { "f" };
        let start = period.start_ms(window);
        let (elapsed, length) = (now_ms - start, period.end_ms(window) - start);
        self.redis
            .run("ratelimit_take", |mut c| async move {
                TAKE.key(current_key)
                    .key(previous_key)
                    .arg(limit)
                    .arg(want)
                    .arg(sliding)
                    .arg(elapsed)
                    .arg(length)
                    .arg(owed)
                    .invoke_async(&mut c)
                    .await
            })
            .await
    }

    /// Counts a failed credential from `address` in the minute of
    /// `now_ms`, exactly across every node; the minute's count so far.
    pub async fn count_failure(&self, address: &str, now_ms: i64) -> Result<u64, RedisFailure> {
        let key = format!("kg:fail:{{{address}}}:{}", now_ms.div_euclid(60_000));
        self.redis.run("guard_count", |mut c| async move { COUNT_FAILURE.key(key).invoke_async::<u64>(&mut c).await }).await
    }

    async fn give_back(&self, counter: Counter<'_>, window: i64, unused: u32) {
        let key = counter_key(counter, window);
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
        for period in Period::ALL {
            self.sweep_period(period, now_ms, LEASE_IDLE_MS).await;
        }
        self.fallback.sweep(now_ms);
    }

    /// Gives back every unspent lease (the node is stopping): what it took
    /// and did not spend goes back to the other nodes.
    pub async fn release(&self, now_ms: i64) {
        for period in Period::ALL {
            self.sweep_period(period, now_ms, -1).await;
        }
    }

    async fn sweep_period(&self, period: Period, now_ms: i64, idle_ms: i64) {
        let window = period.index(now_ms);
        let leases = self.leases(period);
        let ids: Vec<String> = leases.iter().map(|e| e.key().clone()).collect();
        for id in ids {
            let Some(slot) = leases.get(&id).map(|l| Arc::clone(&l)) else { continue };
            let Ok(_refilling) = slot.refill.try_lock() else { continue };
            let (idle_unused, old) = {
                let mut l = slot.lease();
                let idle = l.left > 0 && l.window == window && now_ms - l.rate.last_used_ms > idle_ms;
                let unused = if idle { std::mem::take(&mut l.left) } else { 0 };
                l.redis_left += unused;
                l.taken -= unused.min(l.taken);
                (unused, l.window + 1 < window)
            };
            if idle_unused > 0 {
                self.give_back(Counter { id: &id, period }, window, idle_unused).await;
            }
            if old {
                leases.remove_if(&id, |_, v| Arc::strong_count(v) <= 2);
            }
        }
    }
}
