//! How many of a key's (or, with `scope = "owner"`, an owner's) requests
//! may be in flight at once (`max_in_flight`). An admitted request holds
//! a [`Slot`] until it is dropped: the pipeline keeps it with the answer's
//! body, so a streamed answer holds it to its last byte.
//!
//! On this node a subject's slots are a count. Shared through Redis they
//! are members of one sorted set per subject, scored by when they expire
//! (Redis's own clock, so nodes' clocks never disagree): a node killed
//! with slots held frees them within `slot_ttl`, and a live node renews
//! what it holds well before then.

use crate::config::RedisErrorPolicy;
use crate::store::redis_conn::RedisHandle;
use crate::FastHash;
use dashmap::DashMap;
use prometheus::IntGauge;
use redis::Script;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

/// Redis's time in ms, inside a script (effects are replicated, so a
/// script may read the clock before it writes).
const NOW: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// KEYS: a subject's slots. ARGV: limit, slot ttl in ms, member.
/// Returns 1 when the member holds a slot, 0 when the subject has none free.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"#
    ))
});

/// KEYS: a subject's slots. ARGV: slot ttl in ms, then members still held.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r#"
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
"#
    ))
});

/// The Redis key of a subject's slots.
fn slots_key(subject: &str) -> String {
    format!("kg:if:{{{subject}}}")
}

/// What a request asks of the in-flight limit.
#[derive(Debug, Clone, Copy)]
pub struct SlotAsk<'a> {
    /// Whose slots: a key's id, or `o:<owner>`.
    pub subject: &'a str,
    pub limit: u32,
    /// How long a shared slot lives without renewal.
    pub ttl_ms: u64,
    /// When Redis cannot be asked.
    pub on_error: RedisErrorPolicy,
    /// Nodes sharing the limit: each counts `limit / nodes` alone.
    pub nodes: u32,
}

/// Every subject's slots this node holds.
pub struct InFlight {
    /// Counted on this node: one counter per subject, kept while idle (a
    /// sweep forgets idle ones), so a busy key allocates nothing per request.
    local: DashMap<Arc<str>, Arc<Counter>, FastHash>,
    redis: Option<Arc<RedisHandle>>,
    /// This node's prefix for slot names (random per process).
    node: String,
    next: AtomicU64,
    /// Slots held in Redis, by number, with their subject and ttl.
    held: DashMap<u64, (String, u64), FastHash>,
    last_renewed_ms: AtomicI64,
    gauge: IntGauge,
}

/// One subject's slots held on this node.
#[derive(Debug)]
struct Counter {
    held: AtomicU32,
    gauge: IntGauge,
}

/// A slot a request holds; dropped, it is free again.
#[derive(Debug)]
pub enum Slot {
    /// A count on this node (also the fallback when Redis cannot be asked).
    Local(LocalSlot),
    /// A member of the subject's set in Redis (boxed: rarer, and larger).
    Shared(Box<SharedSlot>),
}

/// A slot of a subject's count on this node.
#[derive(Debug)]
pub struct LocalSlot(Arc<Counter>);

impl Drop for LocalSlot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

/// A slot in Redis: its subject and number among this node's.
pub struct SharedSlot {
    owner: Arc<InFlight>,
    subject: String,
    number: u64,
}

impl std::fmt::Debug for SharedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSlot").field("subject", &self.subject).field("number", &self.number).finish()
    }
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        self.owner.release_shared(&self.subject, self.number);
    }
}

/// What asking for a slot came to.
#[derive(Debug)]
pub enum Admission {
    Held(Slot),
    /// The subject's slots are all taken.
    Full,
    /// Redis could not be asked and `on_redis_error = "allow"`: admitted
    /// without a slot.
    Unheld,
}

impl InFlight {
    /// Slots on this node alone (`redis: None`) or shared through Redis.
    pub fn new(redis: Option<Arc<RedisHandle>>, gauge: IntGauge) -> Arc<InFlight> {
        let node = format!("{:016x}", rand::random::<u64>());
        Arc::new(InFlight {
            local: DashMap::default(),
            redis,
            node,
            next: AtomicU64::new(0),
            held: DashMap::default(),
            last_renewed_ms: AtomicI64::new(0),
            gauge,
        })
    }

    /// Whether asking needs no waiting (slots counted on this node).
    pub fn is_local(&self) -> bool {
        self.redis.is_none()
    }

    /// A slot of this node's count, if one is free.
    pub fn acquire_local(&self, subject: &str, limit: u32) -> Admission {
        let counter = match self.local.get(subject) {
            Some(c) => Arc::clone(&c),
            None => {
                let fresh = || Arc::new(Counter { held: AtomicU32::new(0), gauge: self.gauge.clone() });
                Arc::clone(&self.local.entry(Arc::from(subject)).or_insert_with(fresh))
            }
        };
        let taken = counter.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1));
        if taken.is_err() {
            return Admission::Full;
        }
        self.gauge.inc();
        Admission::Held(Slot::Local(LocalSlot(counter)))
    }

    /// Forgets the counters of subjects with none held (run now and then).
    pub fn sweep(&self) {
        // A counter a request holds (or is taking) has more than the map's reference.
        self.local.retain(|_, c| c.held.load(Ordering::Acquire) > 0 || Arc::strong_count(c) > 1);
    }

    /// A slot shared with every node, from Redis; what `on_error` says
    /// when Redis cannot be asked.
    pub async fn acquire(self: &Arc<Self>, ask: SlotAsk<'_>) -> Admission {
        let Some(redis) = &self.redis else { return self.acquire_local(ask.subject, ask.limit) };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (key, member) = (slots_key(ask.subject), format!("{}:{n}", self.node));
        // Held before the call, so a renewal running meanwhile covers it.
        self.held.insert(n, (ask.subject.to_string(), ask.ttl_ms));
        let result = redis
            .run("inflight_acquire", |mut c| async move {
                ACQUIRE.key(key).arg(ask.limit).arg(ask.ttl_ms).arg(member).invoke_async::<i64>(&mut c).await
            })
            .await;
        match result {
            Ok(1) => {
                self.gauge.inc();
                let slot = SharedSlot { owner: Arc::clone(self), subject: ask.subject.to_string(), number: n };
                return Admission::Held(Slot::Shared(Box::new(slot)));
            }
            Ok(_) => {
                self.held.remove(&n);
                return Admission::Full;
            }
            Err(e) => {
                self.held.remove(&n);
                tracing::debug!(error = %e, "in-flight slots cannot be asked of redis; applying on_redis_error");
            }
        }
        match ask.on_error {
            RedisErrorPolicy::Local => self.acquire_local(ask.subject, (ask.limit / ask.nodes.max(1)).max(1)),
            RedisErrorPolicy::Allow => Admission::Unheld,
            RedisErrorPolicy::Deny => Admission::Full,
        }
    }

    fn release_shared(&self, subject: &str, n: u64) {
        self.gauge.dec();
        self.held.remove(&n);
        let (Some(redis), Ok(runtime)) = (self.redis.clone(), tokio::runtime::Handle::try_current()) else {
            return; // it expires within its ttl
        };
        let (key, member) = (slots_key(subject), format!("{}:{n}", self.node));
        runtime.spawn(async move {
            let result = redis
                .run("inflight_release", |mut c| async move {
                    redis::cmd("ZREM").arg(key).arg(member).query_async::<i64>(&mut c).await
                })
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "could not free an in-flight slot; it expires within slot_ttl");
            }
        });
    }

    /// Renews the shared slots this node holds, once a third of their
    /// lifetime has passed since the last renewal (run now and then).
    pub async fn renew(&self, now_ms: i64) {
        let Some(redis) = &self.redis else { return };
        let mut by_subject: std::collections::HashMap<String, (u64, Vec<String>)> = Default::default();
        for e in self.held.iter() {
            let (subject, ttl) = e.value();
            let entry = by_subject.entry(subject.clone()).or_insert_with(|| (*ttl, Vec::new()));
            entry.0 = entry.0.min(*ttl);
            entry.1.push(format!("{}:{}", self.node, e.key()));
        }
        let Some(shortest) = by_subject.values().map(|(ttl, _)| *ttl).min() else { return };
        let last = self.last_renewed_ms.load(Ordering::Relaxed);
        if now_ms - last < (shortest / 3) as i64 {
            return;
        }
        self.last_renewed_ms.store(now_ms, Ordering::Relaxed);
        for (subject, (ttl, members)) in by_subject {
            let key = slots_key(&subject);
            let result = redis
                .run("inflight_renew", |mut c| async move {
                    let mut call = RENEW.key(key);
                    call.arg(ttl);
                    for m in &members {
                        call.arg(m);
                    }
                    call.invoke_async::<i64>(&mut c).await
                })
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not renew in-flight slots; they expire within slot_ttl");
            }
        }
    }

    /// Slots held on this node now.
    pub fn held(&self) -> i64 {
        self.gauge.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_slots_are_counted_per_subject_and_freed_when_dropped() {
        let gauge = IntGauge::new("t", "t").unwrap();
        let f = InFlight::new(None, gauge);
        let held: Vec<Admission> = (0..3).map(|_| f.acquire_local("key_a", 3)).collect();
        assert!(held.iter().all(|a| matches!(a, Admission::Held(_))));
        assert!(matches!(f.acquire_local("key_a", 3), Admission::Full));
        assert!(matches!(f.acquire_local("key_b", 3), Admission::Held(_)), "another subject is apart");
        assert_eq!(f.held(), 3);
        drop(held);
        assert_eq!(f.held(), 0);
        assert!(matches!(f.acquire_local("key_a", 3), Admission::Held(_)));
        let kept = f.acquire_local("key_b", 1);
        f.sweep();
        assert_eq!(f.local.len(), 1, "only a subject with a slot held is kept");
        assert!(matches!(f.acquire_local("key_b", 1), Admission::Full));
        drop(kept);
        assert!(matches!(f.acquire_local("key_b", 1), Admission::Held(_)));
    }
}
