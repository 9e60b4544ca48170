//! Per-key limits: windows of a minute, an hour, a day and a month, and
//! the credits a key spends. `local` counts on this node; `redis` shares
//! the counts between every node with leases; `meter` puts a request's
//! windows together (all or nothing) and says which one refused it.

pub mod credits;
pub mod guard;
pub mod inflight;
pub mod local;
pub mod meter;
pub mod redis;

use crate::clock::Period;
use crate::config::{Algorithm, RedisErrorPolicy};
use crate::http1::Fields;
use crate::metrics::Metrics;

/// Length of a minute window.
pub const WINDOW_SECS: i64 = 60;
/// The same in milliseconds.
pub const WINDOW_MS: i64 = WINDOW_SECS * 1000;

/// One counter: whose (a key's id, an owner, or either with a route's
/// pattern), over which period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter<'a> {
    pub id: &'a str,
    pub period: Period,
}

/// Requests one node saw of a key in the current and the previous second:
/// what a lease is sized by.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RecentRate {
    second: i64,
    this_second: u32,
    last_second: u32,
    /// When the key was last seen (an idle lease goes back).
    pub(crate) last_used_ms: i64,
}

impl RecentRate {
    pub(crate) fn note(&mut self, now_ms: i64) {
        let second = now_ms.div_euclid(1000);
        if second != self.second {
            self.last_second = if second == self.second + 1 { self.this_second } else { 0 };
            self.this_second = 0;
            self.second = second;
        }
        self.this_second = self.this_second.saturating_add(1);
        self.last_used_ms = now_ms;
    }

    /// Takes back the last [`Self::note`] (a request noted twice).
    pub(crate) fn unnote(&mut self) {
        self.this_second = self.this_second.saturating_sub(1);
    }

    /// Requests per second lately.
    pub(crate) fn per_second(&self) -> u32 {
        self.last_second.max(self.this_second)
    }
}

/// The limiter a node runs: counters on this node, or shared through Redis.
pub enum Limiter {
    Local(local::LocalLimiter),
    Redis(redis::RedisLimiter),
}

impl Limiter {
    /// The limiter shared through the Redis `[rate_limit]` names.
    pub async fn connect_redis(
        target: &crate::config::RedisTarget,
        rl: &crate::config::RateLimitConfig,
        metrics: &Metrics,
    ) -> Result<Limiter, String> {
        let handle = crate::store::redis_conn::RedisHandle::connect(
            &target.url,
            target.cluster,
            rl.redis_timeout,
            metrics.redis_calls.clone(),
        )
        .await
        .map_err(|e| format!("rate-limit redis: {e}"))?;
        Ok(Limiter::Redis(redis::RedisLimiter::new(std::sync::Arc::new(handle), rl.nodes_hint.get())))
    }

    /// Counts `cost` units if they fit within `limit` in the counter's
    /// window. `on_error` applies when Redis cannot be asked.
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
        match self {
            Limiter::Local(l) => l.check(algorithm, counter, limit, cost, now_ms),
            Limiter::Redis(r) => match r.try_spend(counter, limit, cost, now_ms) {
                Some(decision) => decision,
                // Boxed so every request's future does not carry the state
                // of a Redis call (it is moved at each await).
                None => Box::pin(r.check(algorithm, counter, limit, cost, now_ms, on_error, metrics)).await,
            },
        }
    }

    /// A check that needs no waiting: on this node's counters, or from a
    /// Redis lease that has the units. `None`: ask [`Self::check`].
    pub fn check_now(&self, algorithm: Algorithm, counter: Counter<'_>, limit: u32, cost: u32, now_ms: i64) -> Option<Decision> {
        match self {
            Limiter::Local(l) => Some(l.check(algorithm, counter, limit, cost, now_ms)),
            Limiter::Redis(r) => r.try_spend(counter, limit, cost, now_ms),
        }
    }

    /// Gives back what a check took, for a request a later check refused.
    pub fn refund(&self, counter: Counter<'_>, cost: u32, now_ms: i64) {
        match self {
            Limiter::Local(l) => l.refund(counter, cost, now_ms),
            Limiter::Redis(r) => r.refund(counter, cost, now_ms),
        }
    }

    /// Settles a check with what the request really cost: `delta` units
    /// more (counted whatever the limit, so a window taken past it refuses
    /// the next request) or fewer (given back).
    pub async fn settle(&self, counter: Counter<'_>, delta: i64, now_ms: i64) {
        let units = u32::try_from(delta.unsigned_abs()).unwrap_or(u32::MAX);
        match self {
            _ if delta < 0 => self.refund(counter, units, now_ms),
            Limiter::Local(l) => l.debit(counter, units, now_ms),
            Limiter::Redis(r) => r.debit(counter, units, now_ms).await,
        }
    }

    /// What a check would say, without counting and without a network call.
    pub fn peek(&self, algorithm: Algorithm, counter: Counter<'_>, limit: u32, now_ms: i64) -> Decision {
        match self {
            Limiter::Local(l) => l.peek(algorithm, counter, limit, now_ms),
            Limiter::Redis(r) => r.peek(algorithm, counter, limit, now_ms),
        }
    }

    /// Units counted in the counter's current window (on Redis, by every
    /// node, less what this node holds unspent).
    pub async fn used(&self, counter: Counter<'_>, now_ms: i64) -> Result<u32, String> {
        match self {
            Limiter::Local(l) => Ok(l.used(counter, now_ms)),
            Limiter::Redis(r) => r.used(counter, now_ms).await.map_err(|e| e.to_string()),
        }
    }

    /// The Redis connection a shared limiter counts in (none for the local one).
    pub fn redis(&self) -> Option<std::sync::Arc<crate::store::redis_conn::RedisHandle>> {
        match self {
            Limiter::Local(_) => None,
            Limiter::Redis(r) => Some(r.handle()),
        }
    }

    /// Gives back what this node holds of shared limits (at shutdown).
    pub async fn release(&self, now_ms: i64) {
        if let Limiter::Redis(r) = self {
            r.release(now_ms).await;
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
    /// The window this decision is about.
    pub period: Period,
}

impl Decision {
    /// A refusal, with the time until a request could pass.
    pub fn refused(algorithm: Algorithm, period: Period, limit: u32, current: u32, previous: u32, now_ms: i64) -> Decision {
        let index = period.index(now_ms);
        let end_ms = period.end_ms(index);
        let retry_ms = match algorithm.for_period(period) {
            Algorithm::SlidingWindow => sliding_retry_ms(limit, current, previous, now_ms - period.start_ms(index)),
            _ => end_ms - now_ms,
        };
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset_at: end_ms.div_euclid(1000),
            retry_after: ((retry_ms + 999) / 1000).max(1) as u64,
            period,
        }
    }

    /// An admission with the whole limit left (nothing counted yet).
    pub fn fresh(period: Period, limit: u32, now_ms: i64) -> Decision {
        let reset_at = period.end_ms(period.index(now_ms)).div_euclid(1000);
        Decision { allowed: true, limit, remaining: limit, reset_at, retry_after: 0, period }
    }
}

/// The rate-limit headers a response carries: `X-RateLimit-*` for the
/// window with the least room and, when asked, the IETF draft's
/// `RateLimit-Policy` (every policy) and `RateLimit` (that window); for a
/// key that spends credits, `X-Credits-Remaining` and a `credits` policy.
/// A request the credits refused gets no `X-RateLimit-*` (they describe a
/// window, which had room) and `RateLimit` names the credits. Kept as
/// numbers until a protocol writer renders them: the HTTP/1.1 server
/// writes them as header lines, HTTP/2 puts them in the header map.
#[derive(Debug, Clone, Copy)]
pub struct RateHeaders {
    pub view: meter::RateView,
    /// Unix milliseconds when the response was made.
    pub now_ms: i64,
    pub ietf: bool,
    pub credits: Option<CreditFields>,
}

/// A key's credits as its answer tells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditFields {
    /// The balance after the request (before it, when refused).
    pub remaining: i64,
    /// The credits refused the request.
    pub refused: bool,
    /// The refill's amount and its window in seconds, when the key has one.
    pub refill: Option<(u64, i64)>,
    /// Seconds to the next refill.
    pub refill_in: Option<u64>,
}

impl CreditFields {
    /// What `decision` (the credits' answer to the request) and the key's
    /// `terms` tell.
    pub fn of(decision: &credits::CreditDecision, terms: &crate::keys::model::CreditTerms, now_ms: i64) -> CreditFields {
        let refill = terms.refill().map(|(amount, interval)| {
            let window = match interval {
                crate::keys::model::RefillInterval::Day => 86_400,
                crate::keys::model::RefillInterval::Month => {
                    let (_, start, end) = Period::Month.bounds(now_ms);
                    (end - start) / 1000
                }
            };
            (amount, window)
        });
        CreditFields { remaining: decision.remaining.max(0), refused: !decision.allowed, refill, refill_in: decision.refill_in }
    }
}

/// Flag bits of [`RateHeaders::fields`]' fifth number, besides the policy
/// (bits 8 to 15).
const IETF: i64 = 1;
const CREDITS_REFUSED: i64 = 2;
/// Where the refill's window sits in its number, above its amount (at
/// most `MAX_CREDITS`, under 2^40).
const REFILL_WINDOW_SHIFT: u32 = 42;
/// Where the seconds to wait sit in the credit layout's second number,
/// above the reset time (Unix seconds, under 2^40).
const RESET_IN_SHIFT: u32 = 40;

/// A key's credits in rendered numbers: the balance and the refill.
#[derive(Clone, Copy)]
struct CreditNumbers {
    balance: i64,
    refill: i64,
}

impl RateHeaders {
    /// The headers as fields, rendered straight from the numbers when the
    /// response is written: `X-RateLimit-*`, and with `ietf`
    /// `RateLimit-Policy: "minute";q=60;w=60, "day";q=500;w=86400` and
    /// `RateLimit: "day";r=499;t=3600`.
    pub fn fields(&self) -> Fields {
        match self.credits {
            None => Fields::new(self.numbers(), render_fields),
            Some(c) => self.credit_fields(c),
        }
    }

    /// `[limit, remaining, reset_at, reset_in, flags | policy << 8, minute
    /// | route << 32, hour | day << 32, month | month length << 32]`.
    fn numbers(&self) -> [i64; 8] {
        let d = &self.view.decision;
        let now = self.now_ms.div_euclid(1000);
        let q = |p: meter::Policy| i64::from(self.view.quotas[p as usize]);
        use meter::Policy::*;
        // Only a month quota needs the month's length (a calendar sum).
        let month_secs = if self.ietf && q(Month) > 0 {
            let (_, start, end) = Period::Month.bounds(self.now_ms);
            (end - start) / 1000
        } else {
            0
        };
        let reset_in = (d.reset_at - now).max(0);
        let flags = (i64::from(self.ietf) * IETF) | ((self.view.policy as i64) << 8);
        [
            d.limit.into(),
            d.remaining.into(),
            d.reset_at,
            reset_in,
            flags,
            q(Minute) | q(Route) << 32,
            q(Hour) | q(Day) << 32,
            q(Month) | month_secs << 32,
        ]
    }

    /// A key that spends credits: the plain numbers with the limit and
    /// remaining in one, and the reset and wait in one, to make room for
    /// the balance and refill (see [`unpack_credits`]).
    #[cold]
    fn credit_fields(&self, c: CreditFields) -> Fields {
        let mut n = self.numbers();
        if c.refused {
            n[4] |= CREDITS_REFUSED;
            // What `RateLimit` then says: when the credits come back.
            n[3] = c.refill_in.map_or(-1, |s| s.min(1 << 22) as i64);
        }
        let refill = c.refill.map_or(0, |(amount, window)| amount as i64 | window << REFILL_WINDOW_SHIFT);
        let packed = [n[0] | n[1] << 32, n[2] | (n[3] + 1) << RESET_IN_SHIFT, c.remaining, refill, n[4], n[5], n[6], n[7]];
        Fields::new(packed, render_credit_fields)
    }
}

/// [`RateHeaders::fields`] for a key that spends no credits.
fn render_fields(n: &[i64; 8], field: &mut dyn FnMut(&'static str, &[u8])) {
    render(n, None, field);
}

/// [`RateHeaders::credit_fields`]' layout, unpacked and rendered.
fn render_credit_fields(packed: &[i64; 8], field: &mut dyn FnMut(&'static str, &[u8])) {
    let n = [
        packed[0] & 0xffff_ffff,
        packed[0] >> 32,
        packed[1] & ((1 << RESET_IN_SHIFT) - 1),
        (packed[1] >> RESET_IN_SHIFT) - 1,
        packed[4],
        packed[5],
        packed[6],
        packed[7],
    ];
    render(&n, Some(CreditNumbers { balance: packed[2], refill: packed[3] }), field);
}

/// Inlined into each caller, so a key without credits runs the plain
/// rendering alone.
#[inline(always)]
fn render(n: &[i64; 8], credits: Option<CreditNumbers>, field: &mut dyn FnMut(&'static str, &[u8])) {
    let [limit, remaining, reset_at, reset_in, flags, ..] = *n;
    let mut digits = itoa::Buffer::new();
    let credits_refused = flags & CREDITS_REFUSED != 0;
    // Spelled as clients expect on HTTP/1.1 (HTTP/2 lowercases them).
    if !credits_refused {
        field("X-RateLimit-Limit", digits.format(limit).as_bytes());
        field("X-RateLimit-Remaining", digits.format(remaining).as_bytes());
        field("X-RateLimit-Reset", digits.format(reset_at).as_bytes());
    }
    if let Some(c) = credits {
        field("X-Credits-Remaining", digits.format(c.balance).as_bytes());
    }
    if flags & IETF == 0 {
        return;
    }
    match credits {
        // A key's policies are the same on every answer: the value is made
        // once per thread for each set of them, then copied.
        None => POLICIES.with(|cached| match cached.try_borrow_mut() {
            Ok(mut cached) => {
                let key = [n[5], n[6], n[7]];
                if cached.0 != key || cached.1.len == 0 {
                    *cached = (key, policy_value(n, None));
                }
                field("RateLimit-Policy", cached.1.as_bytes());
            }
            Err(_) => field("RateLimit-Policy", policy_value(n, None).as_bytes()),
        }),
        Some(_) => field("RateLimit-Policy", policy_value(n, credits).as_bytes()),
    }
    let mut value = Text::default();
    match credits {
        Some(c) if credits_refused => {
            value.put_all(&[b"\"credits\";r=", digits.format(c.balance).as_bytes()]);
            if reset_in >= 0 {
                value.put_all(&[b";t=", digits.format(reset_in).as_bytes()]);
            }
        }
        _ => {
            let tight = meter::Policy::ALL.get(((flags >> 8) & 0xff) as usize).copied().unwrap_or(meter::Policy::Minute);
            value.put_all(&[b"\"", tight.name().as_bytes(), b"\";r=", digits.format(remaining).as_bytes()]);
            value.put_all(&[b";t=", digits.format(reset_in).as_bytes()]);
        }
    }
    field("RateLimit", value.as_bytes());
}

thread_local! {
    /// The last `RateLimit-Policy` value made on this thread, by its numbers.
    static POLICIES: std::cell::RefCell<([i64; 3], Text)> = std::cell::RefCell::new(([0; 3], Text::default()));
}

/// `RateLimit-Policy`'s value: every policy with a quota, in order, then
/// the credits (their refill, or the balance when none comes).
fn policy_value(n: &[i64; 8], credits: Option<CreditNumbers>) -> Text {
    let half = |i: usize, high: bool| if high { n[i] >> 32 } else { n[i] & 0xffff_ffff };
    let month_secs = half(7, true);
    // (quota, window seconds) of each policy, in `Policy::ALL` order.
    let policies = [
        (half(5, false), 60),
        (half(5, true), 60),
        (half(6, false), 3600),
        (half(6, true), 86_400),
        (half(7, false), month_secs),
    ];
    let mut digits = itoa::Buffer::new();
    let mut value = Text::default();
    for (policy, (quota, window)) in meter::Policy::ALL.into_iter().zip(policies) {
        if quota == 0 {
            continue;
        }
        if value.len > 0 {
            value.put(b", ");
        }
        value.put_all(&[b"\"", policy.name().as_bytes(), b"\";q=", digits.format(quota).as_bytes()]);
        value.put_all(&[b";w=", digits.format(window).as_bytes()]);
    }
    if let Some(c) = credits {
        if value.len > 0 {
            value.put(b", ");
        }
        match c.refill {
            0 => value.put_all(&[b"\"credits\";q=", digits.format(c.balance).as_bytes()]),
            refill => {
                let amount = refill & ((1 << REFILL_WINDOW_SHIFT) - 1);
                value.put_all(&[b"\"credits\";q=", digits.format(amount).as_bytes()]);
                value.put_all(&[b";w=", digits.format(refill >> REFILL_WINDOW_SHIFT).as_bytes()]);
            }
        }
    }
    value
}

/// A header value built on the stack (five policies fit with room to spare).
struct Text {
    bytes: [u8; 256],
    len: usize,
}

impl Default for Text {
    fn default() -> Text {
        Text { bytes: [0; 256], len: 0 }
    }
}

impl Text {
    fn put(&mut self, b: &[u8]) {
        let end = (self.len + b.len()).min(self.bytes.len());
        self.bytes[self.len..end].copy_from_slice(&b[..end - self.len]);
        self.len = end;
    }

    fn put_all(&mut self, parts: &[&[u8]]) {
        for p in parts {
            self.put(p);
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
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
        let decision = Decision {
            allowed: true,
            limit: 100,
            remaining: 99,
            reset_at: 1_700_000_040,
            retry_after: 0,
            period: Period::Minute,
        };
        let view = meter::RateView { policy: meter::Policy::Minute, decision, quotas: [100, 0, 0, 0, 0] };
        let r = RateHeaders { view, now_ms: 1_700_000_000_000, ietf: true, credits: None };
        let mut lines = Vec::new();
        r.fields().write_lines(&mut lines);
        assert_eq!(
            String::from_utf8(lines).unwrap(),
            "X-RateLimit-Limit: 100\r\nX-RateLimit-Remaining: 99\r\nX-RateLimit-Reset: 1700000040\r\n\
             RateLimit-Policy: \"minute\";q=100;w=60\r\nRateLimit: \"minute\";r=99;t=40\r\n"
        );
        let mut map = http::HeaderMap::new();
        r.fields().insert_into(&mut map);
        assert_eq!(map.len(), 5);
        assert_eq!(map["ratelimit"], "\"minute\";r=99;t=40");
        assert_eq!(map["x-ratelimit-reset"], "1700000040");
        let mut plain = http::HeaderMap::new();
        RateHeaders { ietf: false, ..r }.fields().insert_into(&mut plain);
        assert_eq!(plain.len(), 3);
    }

    #[test]
    fn a_key_that_spends_credits_is_told_its_balance_and_a_credit_refusal_no_window() {
        let decision =
            Decision { allowed: true, limit: 60, remaining: 54, reset_at: 1_700_000_040, retry_after: 0, period: Period::Minute };
        let view = meter::RateView { policy: meter::Policy::Minute, decision, quotas: [60, 0, 0, 0, 0] };
        let spent = CreditFields { remaining: 12, refused: false, refill: Some((100, 86_400)), refill_in: Some(3600) };
        let fields = |credits, ietf| {
            let mut map = http::HeaderMap::new();
            RateHeaders { view, now_ms: 1_700_000_000_000, ietf, credits }.fields().insert_into(&mut map);
            map
        };
        let admitted = fields(Some(spent), true);
        assert_eq!(admitted["x-credits-remaining"], "12");
        assert_eq!(admitted["x-ratelimit-remaining"], "54");
        assert_eq!(admitted["ratelimit-policy"], "\"minute\";q=60;w=60, \"credits\";q=100;w=86400");
        assert_eq!(admitted["ratelimit"], "\"minute\";r=54;t=40");
        // Refused by the credits: no window's fields, which had room.
        let refused = fields(Some(CreditFields { remaining: 0, refused: true, ..spent }), true);
        assert!(refused.get("x-ratelimit-remaining").is_none() && refused.get("x-ratelimit-limit").is_none(), "{refused:?}");
        assert_eq!(refused["x-credits-remaining"], "0");
        assert_eq!(refused["ratelimit"], "\"credits\";r=0;t=3600");
        // No refill: the balance is the policy's quota, and no wait is named.
        let prepaid = CreditFields { remaining: 3, refused: true, refill: None, refill_in: None };
        let refused = fields(Some(prepaid), true);
        assert_eq!(refused["ratelimit-policy"], "\"minute\";q=60;w=60, \"credits\";q=3");
        assert_eq!(refused["ratelimit"], "\"credits\";r=3");
        let plain = fields(Some(spent), false);
        assert_eq!(plain.len(), 4, "{plain:?}");
        assert!(fields(None, true).get("x-credits-remaining").is_none());
    }

    #[test]
    fn every_policy_is_listed_and_the_tightest_described() {
        // 2026-02-10: a 28-day month.
        let now_ms = crate::clock::parse_rfc3339("2026-02-10T12:00:00Z").unwrap() * 1000;
        let reset_at = crate::clock::parse_rfc3339("2026-02-11T00:00:00Z").unwrap();
        let decision = Decision { allowed: true, limit: 500, remaining: 7, reset_at, retry_after: 0, period: Period::Day };
        let view = meter::RateView { policy: meter::Policy::Day, decision, quotas: [60, 5, 0, 500, 10_000] };
        let mut map = http::HeaderMap::new();
        RateHeaders { view, now_ms, ietf: true, credits: None }.fields().insert_into(&mut map);
        assert_eq!(
            map["ratelimit-policy"],
            "\"minute\";q=60;w=60, \"route\";q=5;w=60, \"day\";q=500;w=86400, \"month\";q=10000;w=2419200"
        );
        assert_eq!(map["ratelimit"], "\"day\";r=7;t=43200");
        assert_eq!(map["x-ratelimit-limit"], "500");
    }
}
