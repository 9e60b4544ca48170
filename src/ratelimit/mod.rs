//! Per-key rate limits. `local` counts on this node; the Redis limiter
//! (shared by every node) will sit behind the same [`Decision`].

pub mod local;

use crate::config::Algorithm;
use http::{HeaderMap, HeaderValue};

/// Length of a rate-limit window.
pub const WINDOW_SECS: i64 = 60;

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
    /// Adds `X-RateLimit-*` and, when asked, the IETF draft's
    /// `RateLimit-Policy` and `RateLimit` headers.
    pub fn write_headers(&self, headers: &mut HeaderMap, now: i64, algorithm: Algorithm, ietf: bool) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset_at));
        if ietf {
            let reset_in = (self.reset_at - now).clamp(0, WINDOW_SECS);
            let name = match algorithm {
                Algorithm::FixedWindow => "fixed",
                Algorithm::SlidingWindow => "sliding",
            };
            if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";q={};w={WINDOW_SECS}", self.limit)) {
                headers.insert("ratelimit-policy", v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";r={};t={reset_in}", self.remaining)) {
                headers.insert("ratelimit", v);
            }
        }
    }
}
