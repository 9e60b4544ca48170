//! Wall-clock time in the forms keygate stores and shows.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The time a request arrived, read once. Every step of the request (cache
/// freshness, expiry, the rate-limit window, the reset headers) uses it:
/// the clock was read a dozen times per request before, about 2% of the
/// gateway's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    /// For durations (monotonic).
    pub at: Instant,
    /// Unix milliseconds, for what is stored and shown.
    pub unix_ms: i64,
}

impl Moment {
    /// Reads both clocks.
    pub fn now() -> Moment {
        Moment { at: Instant::now(), unix_ms: now_ms() }
    }

    /// Unix seconds.
    pub fn unix(&self) -> i64 {
        self.unix_ms.div_euclid(1000)
    }

    /// The wall-clock time (to the millisecond), for spans.
    pub fn system(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_millis(self.unix_ms.max(0) as u64)
    }
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `2026-01-15T10:30:00Z` for Unix seconds (the JSON form of every time).
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// Parses an RFC 3339 time into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("2024-01-15T10:30:00Z"), Some(1_705_314_600));
        assert_eq!(parse_rfc3339(&rfc3339(1_705_314_600)), Some(1_705_314_600));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
