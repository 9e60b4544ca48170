//! Per-key rate limits. `local` counts on this node; the Redis limiter
//! (shared by every node) will sit behind the same [`Decision`].

pub mod local;
pub mod redis;

use crate::config::{Algorithm, RedisErrorPolicy};
use crate::metrics::Metrics;
use http::{HeaderMap, HeaderName, HeaderValue};

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Length of a rate-limit window.
pub const WINDOW_SECS: i64 = 60;
/// The same in milliseconds.
pub const WINDOW_MS: i64 = WINDOW_SECS * 1000;

/// The limiter a node runs: counters on this node, or shared through Redis.
pub enum Limiter {
    Local(local::LocalLimiter),
    Redis(redis::RedisLimiter),
}

impl Limiter {
    /// Counts one request if it fits within `limit` requests per minute.
    /// `on_error` applies when Redis cannot be asked.
    pub async fn check(
        &self,
        algorithm: Algorithm,
        key_id: &str,
        limit: u32,
        now_ms: i64,
        on_error: RedisErrorPolicy,
        metrics: &Metrics,
    ) -> Decision {
        match self {
            Limiter::Local(l) => l.check(algorithm, key_id, limit, now_ms),
            Limiter::Redis(r) => r.check(algorithm, key_id, limit, now_ms, on_error, metrics).await,
        }
    }

    /// What a check would say, without counting and without a network call.
    pub fn peek(&self, algorithm: Algorithm, key_id: &str, limit: u32, now_ms: i64) -> Decision {
        match self {
            Limiter::Local(l) => l.peek(algorithm, key_id, limit, now_ms),
            Limiter::Redis(r) => r.peek(algorithm, key_id, limit, now_ms),
        }
    }

    /// Housekeeping: forget old windows, give back idle leases.
    pub async fn sweep(&self, now_ms: i64) {
        match self {
            Limiter::Local(l) => l.sweep(now_ms),
            Limiter::Redis(r) => r.sweep(now_ms).await,
        }
    }
}

/// The outcome of one check, and what the `X-RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Unix seconds when the current window ends.
    pub reset_at: i64,
    /// Seconds until a refused request could succeed (0 when allowed).
    pub retry_after: u64,
}

impl Decision {
    /// A refusal, with the time until a request could pass.
    pub fn refused(algorithm: Algorithm, limit: u32, current: u32, previous: u32, now_ms: i64) -> Decision {
        let index = now_ms.div_euclid(WINDOW_MS);
        let elapsed = now_ms - index * WINDOW_MS;
        let retry_ms = match algorithm {
            Algorithm::FixedWindow => WINDOW_MS - elapsed,
            Algorithm::SlidingWindow => sliding_retry_ms(limit, current, previous, elapsed),
        };
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset_at: ((index + 1) * WINDOW_MS).div_euclid(1000),
            retry_after: ((retry_ms + 999) / 1000).max(1) as u64,
        }
    }

    /// Adds `X-RateLimit-*` and, when asked, the IETF draft's
    /// `RateLimit-Policy` and `RateLimit` headers. The values are written
    /// into one buffer and sliced from it: one allocation for all five.
    pub fn write_headers(&self, headers: &mut HeaderMap, now: i64, algorithm: Algorithm, ietf: bool) {
        const NAMES: [HeaderName; 5] = [X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET, RATELIMIT_POLICY, RATELIMIT];
        let mut text = Vec::with_capacity(96);
        let mut ends = [0usize; 5];
        let mut digits = itoa::Buffer::new();
        for (at, n) in [self.limit as i64, self.remaining as i64, self.reset_at].into_iter().enumerate() {
            text.extend_from_slice(digits.format(n).as_bytes());
            ends[at] = text.len();
        }
        let count = if ietf {
            let name = match algorithm {
                Algorithm::FixedWindow => "fixed",
                Algorithm::SlidingWindow => "sliding",
            };
            let reset_in = (self.reset_at - now).clamp(0, WINDOW_SECS);
            ietf_value(&mut text, name, ("q", self.limit.into()), ("w", WINDOW_SECS));
            ends[3] = text.len();
            ietf_value(&mut text, name, ("r", self.remaining.into()), ("t", reset_in));
            ends[4] = text.len();
            5
        } else {
            3
        };
        let all = bytes::Bytes::from(text);
        headers.reserve(count);
        let mut start = 0;
        for (name, end) in NAMES.into_iter().zip(ends).take(count) {
            if let Ok(value) = HeaderValue::from_maybe_shared(all.slice(start..end)) {
                headers.insert(name, value);
            }
            start = end;
        }
    }
}

/// Appends `"name";a=1;b=2`, the shape of both IETF headers, without the
/// formatting machinery (it is on every response).
fn ietf_value(out: &mut Vec<u8>, name: &str, first: (&str, i64), second: (&str, i64)) {
    let mut numbers = itoa::Buffer::new();
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.push(b'"');
    for (param, value) in [first, second] {
        out.push(b';');
        out.extend_from_slice(param.as_bytes());
        out.push(b'=');
        out.extend_from_slice(numbers.format(value).as_bytes());
    }
}

/// Milliseconds until the sliding estimate drops below `limit`.
fn sliding_retry_ms(limit: u32, current: u32, previous: u32, elapsed: i64) -> i64 {
    let (limit, current, previous) = (limit as i64, current as i64, previous as i64);
    if current < limit && previous > 0 {
        // previous * (W - t) / W < limit - current  =>  t > W - W * (limit - current) / previous
        let t = WINDOW_MS - WINDOW_MS * (limit - current) / previous;
        return (t - elapsed + 1).max(1);
    }
    // The current window alone is full: wait for it to end, then for its
    // weight to fall below the limit in the next one.
    let into_next = if current > 0 { WINDOW_MS - WINDOW_MS * limit / current } else { 0 };
    (WINDOW_MS - elapsed) + into_next.max(0) + 1
}
