//! Wall-clock time in the forms keygate stores and shows.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The time a request arrived, read once. Every step of the request (cache
/// freshness, expiry, the rate-limit window, the reset headers) uses it
/// (docs/decisions/005-one-clock-reading.md).
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

/// The latest time keygate takes or writes, 9999-12-31T23:59:59Z: past it
/// RFC 3339 has no four-digit year, and an export would hold a time that
/// no import reads back.
pub const LATEST: i64 = 253_402_300_799;

/// `2026-01-15T10:30:00Z` for Unix seconds (the JSON form of every time),
/// kept within 1970 and [`LATEST`] so that it always reads back.
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs.clamp(0, LATEST))
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// Parses an RFC 3339 time from 1970 to [`LATEST`] into Unix seconds; the
/// error says what is wrong with it.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("`{s}` is not an RFC 3339 time (like 2026-12-31T18:00:00Z)"))?
        .unix_timestamp();
    within_bounds(t).map_err(|m| format!("`{s}` {m}"))
}

/// `t` if it lies from 1970 to [`LATEST`].
pub fn within_bounds(t: i64) -> Result<i64, String> {
    match t {
        t if t > LATEST => Err("is after 9999-12-31T23:59:59Z, the latest time keygate takes".into()),
        t if t < 0 => Err("is before 1970-01-01T00:00:00Z".into()),
        t => Ok(t),
    }
}

/// The windows a limit is counted over. Minute windows are 60 s long
/// and counted by `rate_limit.algorithm`; hour, day and month windows are
/// calendar windows in UTC, counted fixed (a month resets at 00:00 UTC
/// on the 1st).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Minute,
    Hour,
    Day,
    Month,
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

impl Period {
    pub const ALL: [Period; 4] = [Period::Minute, Period::Hour, Period::Day, Period::Month];

    /// The name used in config, JSON and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether this is a calendar window (kept durably, `quota_exceeded`).
    pub fn is_calendar(self) -> bool {
        self != Period::Minute
    }

    /// The number of the window holding `ms` (Unix milliseconds): minutes,
    /// hours or days since the epoch, or months since year 0.
    pub fn index(self, ms: i64) -> i64 {
        match self {
            Period::Minute => ms.div_euclid(60_000),
            Period::Hour => ms.div_euclid(HOUR_MS),
            Period::Day => ms.div_euclid(DAY_MS),
            Period::Month => {
                let (y, m, _) = civil_from_days(ms.div_euclid(DAY_MS));
                y * 12 + (m - 1)
            }
        }
    }

    /// Unix milliseconds when window `index` starts.
    pub fn start_ms(self, index: i64) -> i64 {
        match self {
            Period::Minute => index * 60_000,
            Period::Hour => index * HOUR_MS,
            Period::Day => index * DAY_MS,
            Period::Month => days_from_civil(index.div_euclid(12), index.rem_euclid(12) + 1, 1) * DAY_MS,
        }
    }

    /// Unix milliseconds when window `index` ends (the next one starts).
    pub fn end_ms(self, index: i64) -> i64 {
        self.start_ms(index + 1)
    }

    /// (index, start, end) of the window holding `ms`, each computed once.
    pub fn bounds(self, ms: i64) -> (i64, i64, i64) {
        if self == Period::Month {
            return month_bounds(ms);
        }
        let index = self.index(ms);
        (index, self.start_ms(index), self.end_ms(index))
    }

    /// The window's length in seconds (a month's own length).
    pub fn length_secs(self, index: i64) -> i64 {
        (self.end_ms(index) - self.start_ms(index)) / 1000
    }
}

thread_local! {
    /// The month last asked for on this thread: nearly every request falls
    /// in the same one, so its calendar sums are done once a month.
    static MONTH: std::cell::Cell<(i64, i64, i64)> = const { std::cell::Cell::new((0, 0, 0)) };
}

/// [`Period::bounds`] of a month, remembered per thread.
fn month_bounds(ms: i64) -> (i64, i64, i64) {
    let last = MONTH.with(std::cell::Cell::get);
    if ms >= last.1 && ms < last.2 {
        return last;
    }
    let index = Period::Month.index(ms);
    let bounds = (index, Period::Month.start_ms(index), Period::Month.end_ms(index));
    MONTH.with(|m| m.set(bounds));
    bounds
}

/// (year, month 1-12, day 1-31) of a count of days since 1970-01-01, in
/// the proleptic Gregorian calendar (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a date (the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` of Unix seconds (UTC).
pub fn date(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Unix seconds of 00:00 UTC on a `YYYY-MM-DD` date.
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num =
        |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok().filter(|_| b.iter().all(|c| c.is_ascii_digit() || *c == b'-'));
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let days = days_from_civil(y, m, d);
    // Refuse dates that do not exist (2026-02-30).
    (civil_from_days(days) == (y, m, d)).then_some(days * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_taken_and_written_from_1970_to_year_9999_only() {
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59Z"), Ok(LATEST));
        // Within year 9999 as written, but year 10000 in UTC.
        let e = parse_rfc3339("9999-12-31T23:59:59-23:59").unwrap_err();
        assert!(e.contains("after 9999-12-31T23:59:59Z"), "{e}");
        assert!(parse_rfc3339("1969-12-31T23:59:59Z").unwrap_err().contains("before 1970"));
        assert!(parse_rfc3339("tomorrow").unwrap_err().contains("not an RFC 3339 time"));
        assert_eq!(rfc3339(LATEST), "9999-12-31T23:59:59Z");
        // Whatever a corrupt record holds, what is written reads back.
        for t in [LATEST + 86_400, i64::MAX, -1, i64::MIN] {
            assert!(parse_rfc3339(&rfc3339(t)).is_ok(), "{t}: {}", rfc3339(t));
        }
    }

    #[test]
    fn calendar_windows_follow_utc() {
        // 2026-01-31T23:59:59.999Z, then the first instant of February.
        let end_jan = parse_rfc3339("2026-01-31T23:59:59Z").unwrap() * 1000 + 999;
        let feb = end_jan + 1;
        assert_eq!(Period::Month.index(end_jan) + 1, Period::Month.index(feb));
        assert_eq!(Period::Month.start_ms(Period::Month.index(feb)), feb);
        assert_eq!(Period::Month.end_ms(Period::Month.index(end_jan)), feb);
        assert_eq!(Period::Month.length_secs(Period::Month.index(end_jan)), 31 * 86_400);
        // A leap February, and a December rolling into the next year.
        let feb_2028 = parse_rfc3339("2028-02-10T12:00:00Z").unwrap() * 1000;
        assert_eq!(Period::Month.length_secs(Period::Month.index(feb_2028)), 29 * 86_400);
        let dec = parse_rfc3339("2026-12-31T23:00:00Z").unwrap() * 1000;
        assert_eq!(Period::Month.end_ms(Period::Month.index(dec)), parse_rfc3339("2027-01-01T00:00:00Z").unwrap() * 1000);
        assert_eq!(Period::Day.end_ms(Period::Day.index(dec)), parse_rfc3339("2027-01-01T00:00:00Z").unwrap() * 1000);
        assert_eq!(Period::Hour.end_ms(Period::Hour.index(dec)), parse_rfc3339("2027-01-01T00:00:00Z").unwrap() * 1000);
        // The remembered month answers as the sums do, across a boundary too.
        for ms in [end_jan - 5, end_jan, feb, feb + 10, end_jan - 40 * 86_400_000, feb] {
            let i = Period::Month.index(ms);
            assert_eq!(Period::Month.bounds(ms), (i, Period::Month.start_ms(i), Period::Month.end_ms(i)));
        }
        // Every day of 1969..2101 agrees with the `time` crate.
        for day in -365..48_000 {
            let t = time::OffsetDateTime::from_unix_timestamp(day * 86_400).unwrap();
            assert_eq!(civil_from_days(day), (i64::from(t.year()), i64::from(u8::from(t.month())), i64::from(t.day())));
            assert_eq!(days_from_civil(i64::from(t.year()), i64::from(u8::from(t.month())), i64::from(t.day())), day);
        }
    }

    #[test]
    fn dates() {
        assert_eq!(date(parse_rfc3339("2026-03-05T10:00:00Z").unwrap()), "2026-03-05");
        assert_eq!(parse_date("2026-03-05"), parse_rfc3339("2026-03-05T00:00:00Z").ok());
        for bad in ["2026-02-30", "2026-3-05", "20260305", "2026-03-0x", "+026-03-05"] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("2024-01-15T10:30:00Z"), Ok(1_705_314_600));
        assert_eq!(parse_rfc3339(&rfc3339(1_705_314_600)), Ok(1_705_314_600));
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
