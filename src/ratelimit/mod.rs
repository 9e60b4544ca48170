//! Per-key rate limits. `local` counts on this node; the Redis limiter
//! (shared by every node) will sit behind the same [`Decision`].

pub mod local;
pub mod redis;

use crate::config::{Algorithm, RedisErrorPolicy};
use crate::http1::Fields;
use crate::metrics::Metrics;

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
            Limiter::Redis(r) => match r.try_spend(key_id, limit, now_ms) {
                Some(decision) => decision,
                // Boxed so every request's future does not carry the state
                // of a Redis call (it is moved at each await).
                None => Box::pin(r.check(algorithm, key_id, limit, now_ms, on_error, metrics)).await,
            },
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
}

/// The rate-limit headers a response carries: `X-RateLimit-*` and, when
/// asked, the IETF draft's `RateLimit-Policy` and `RateLimit`. Kept as
/// numbers until a protocol writer renders them: the HTTP/1.1 server
/// writes them as header lines, HTTP/2 puts them in the header map.
#[derive(Debug, Clone, Copy)]
pub struct RateHeaders {
    pub decision: Decision,
    /// Unix seconds when the response was made.
    pub now: i64,
    pub algorithm: Algorithm,
    pub ietf: bool,
}

impl RateHeaders {
    /// The headers as fields, rendered straight from the numbers when the
    /// response is written: `X-RateLimit-*`, and with `ietf` the IETF
    /// draft's `RateLimit-Policy` and `RateLimit` (`"fixed";q=100;w=60` and
    /// `"fixed";r=99;t=42`).
    pub fn fields(&self) -> Fields {
        let d = &self.decision;
        let reset_in = (d.reset_at - self.now).clamp(0, WINDOW_SECS);
        let kind = match (self.ietf, self.algorithm) {
            (false, _) => 0,
            (true, Algorithm::FixedWindow) => 1,
            (true, Algorithm::SlidingWindow) => 2,
        };
        Fields::new([d.limit.into(), d.remaining.into(), d.reset_at, reset_in, kind, 0], render_fields)
    }
}

/// [`RateHeaders::fields`]: `[limit, remaining, reset_at, reset_in, kind, _]`,
/// kind 0 without the IETF fields, 1 fixed, 2 sliding.
fn render_fields(n: &[i64; 6], field: &mut dyn FnMut(&'static str, &[u8])) {
    let [limit, remaining, reset_at, reset_in, kind, _] = *n;
    let mut digits = itoa::Buffer::new();
    // Spelled as clients expect on HTTP/1.1 (HTTP/2 lowercases them).
    field("X-RateLimit-Limit", digits.format(limit).as_bytes());
    field("X-RateLimit-Remaining", digits.format(remaining).as_bytes());
    field("X-RateLimit-Reset", digits.format(reset_at).as_bytes());
    let name: &[u8] = match kind {
        1 => b"\"fixed\"",
        2 => b"\"sliding\"",
        _ => return,
    };
    // A header's name, then its `;key=value` parameters.
    let mut value = [0u8; 64];
    for (header, params) in
        [("RateLimit-Policy", [(b";q=", limit), (b";w=", WINDOW_SECS)]), ("RateLimit", [(b";r=", remaining), (b";t=", reset_in)])]
    {
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            value[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(name);
        for (key, number) in params {
            put(key);
            put(digits.format(number).as_bytes());
        }
        field(header, &value[..at]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_renderings_of_the_rate_limit_headers_agree() {
        let decision = Decision { allowed: true, limit: 100, remaining: 99, reset_at: 1_700_000_040, retry_after: 0 };
        let r = RateHeaders { decision, now: 1_700_000_000, algorithm: Algorithm::SlidingWindow, ietf: true };
        let mut lines = Vec::new();
        r.fields().write_lines(&mut lines);
        assert_eq!(
            String::from_utf8(lines).unwrap(),
            "X-RateLimit-Limit: 100\r\nX-RateLimit-Remaining: 99\r\nX-RateLimit-Reset: 1700000040\r\n\
             RateLimit-Policy: \"sliding\";q=100;w=60\r\nRateLimit: \"sliding\";r=99;t=40\r\n"
        );
        let mut map = http::HeaderMap::new();
        r.fields().insert_into(&mut map);
        assert_eq!(map.len(), 5);
        assert_eq!(map["ratelimit"], "\"sliding\";r=99;t=40");
        assert_eq!(map["x-ratelimit-reset"], "1700000040");
        let mut plain = http::HeaderMap::new();
        RateHeaders { ietf: false, ..r }.fields().insert_into(&mut plain);
        assert_eq!(plain.len(), 3);
    }
}
