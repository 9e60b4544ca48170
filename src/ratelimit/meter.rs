//! A request's charge: every window that applies to its key and route, and
//! its credits, taken together or not at all. Each window is checked in
//! turn (minute, route, hour, day, month, then credits, last, so credits
//! are never taken only to be given back); when one refuses,
//! what the earlier ones took is given back, so a refused request takes
//! from none. On Redis the units go back into this node's lease, so the
//! refusal costs no extra call.

use super::credits::{CreditDecision, Credits};
use super::{Counter, Decision, Limiter};
use crate::clock::Period;
use crate::config::{Algorithm, LimitScope, Limits, RedisErrorPolicy};
use crate::keys::model::{ApiKey, CreditTerms};
use crate::metrics::Metrics;
use crate::store::{CreditLedger, StoreError};
use std::borrow::Cow;

/// The limits a request may be counted against, in the order they are
/// checked and listed in `RateLimit-Policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Minute,
    /// A route's own `rate_limit = { per_minute }`.
    Route,
    Hour,
    Day,
    Month,
}

impl Policy {
    pub const ALL: [Policy; 5] = [Policy::Minute, Policy::Route, Policy::Hour, Policy::Day, Policy::Month];

    /// The policy's name in headers and bodies.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Minute => "minute",
            Policy::Route => "route",
            Policy::Hour => "hour",
            Policy::Day => "day",
            Policy::Month => "month",
        }
    }

    pub fn period(self) -> Period {
        match self {
            Policy::Minute | Policy::Route => Period::Minute,
            Policy::Hour => Period::Hour,
            Policy::Day => Period::Day,
            Policy::Month => Period::Month,
        }
    }

    /// Whether a refusal by it is `quota_exceeded` (else `rate_limited`).
    pub fn is_quota(self) -> bool {
        self.period().is_calendar()
    }
}

/// Whose counters a key's requests count in: its own id, or with
/// `scope = "owner"` its owner's (`o:` keeps owners apart from key ids).
pub fn subject_of(scope: LimitScope, key: &ApiKey) -> Cow<'_, str> {
    match scope {
        LimitScope::Owner if !key.owner.is_empty() => Cow::Owned(format!("o:{}", key.owner)),
        _ => Cow::Borrowed(&key.key_id),
    }
}

/// The counter of a route's own limit for a subject.
pub fn route_counter_id(subject: &str, route_pattern: &str) -> String {
    // Owners and patterns carry no control characters: the separator is unambiguous.
    format!("{subject}\u{1f}{route_pattern}")
}

/// What one request is charged against.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    pub key_id: &'a str,
    pub subject: &'a str,
    /// The route's counter, with the route's limit.
    pub route: Option<(&'a str, u32)>,
    pub limits: Limits,
    pub credits: Option<&'a CreditTerms>,
    pub cost: u32,
    pub algorithm: Algorithm,
}

impl Charge<'_> {
    /// The windows that apply, in order: (policy, counter, limit), made
    /// one at a time (no array of them per request).
    fn windows(&self) -> impl Iterator<Item = (Policy, Counter<'_>, u32)> {
        Policy::ALL.into_iter().filter_map(move |p| self.window(p))
    }

    /// One policy's window, if it applies.
    fn window(&self, policy: Policy) -> Option<(Policy, Counter<'_>, u32)> {
        let q = self.limits.quota;
        let (id, limit) = match policy {
            Policy::Minute => (self.subject, self.limits.per_minute),
            Policy::Route => self.route?,
            Policy::Hour => (self.subject, q.per_hour?),
            Policy::Day => (self.subject, q.per_day?),
            Policy::Month => (self.subject, q.per_month?),
        };
        Some((policy, Counter { id, period: policy.period() }, limit))
    }
}

/// What refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Window(Policy),
    Credits,
}

/// A charge's outcome: each window's decision and the credits'.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metered {
    /// By `Policy as usize`.
    pub windows: [Option<Decision>; 5],
    pub credits: Option<CreditDecision>,
    pub refused: Option<Refused>,
}

impl Metered {
    /// The headers' view: the window with the least room (the refusing
    /// one when a window refused), and every policy's quota.
    pub fn view(&self) -> Option<RateView> {
        let mut tight: Option<(Policy, Decision)> = match self.refused {
            Some(Refused::Window(p)) => self.windows[p as usize].map(|d| (p, d)),
            _ => None,
        };
        let mut quotas = [0; 5];
        for p in Policy::ALL {
            let Some(d) = self.windows[p as usize] else { continue };
            quotas[p as usize] = d.limit;
            if matches!(self.refused, Some(Refused::Window(_))) {
                continue;
            }
            // The least room; on a tie, the window that resets last: it is the one to wait for.
            let tighter = tight.is_none_or(|(_, t)| (d.remaining, t.reset_at) < (t.remaining, d.reset_at));
            if tighter {
                tight = Some((p, d));
            }
        }
        let (policy, decision) = tight?;
        Some(RateView { policy, decision, quotas })
    }

    /// Records a window's decision; says whether it refused the request.
    fn record(&mut self, policy: Policy, d: Decision) -> bool {
        self.windows[policy as usize] = Some(d);
        if !d.allowed {
            self.refused = Some(Refused::Window(policy));
        }
        !d.allowed
    }

    /// The windows are done: the credits are what is left, if any.
    fn windows_done(self, charge: &Charge<'_>) -> Progress {
        match charge.credits {
            None => Progress::Done(self),
            Some(_) => Progress::Wait(self, usize::MAX),
        }
    }

    /// Seconds until the refused request could pass (`None`: credits with
    /// no refill coming).
    pub fn retry_after(&self) -> Option<u64> {
        match self.refused? {
            Refused::Window(p) => self.windows[p as usize].map(|d| d.retry_after),
            Refused::Credits => self.credits?.refill_in,
        }
    }
}

/// A quota window whose use an admitted charge took to a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    pub policy: Policy,
    /// The threshold, in percent of the window's limit.
    pub percent: u8,
    pub used: u32,
    pub limit: u32,
    /// Unix seconds when the window ends.
    pub reset_at: i64,
}

/// What an admitted charge did to a key's credits worth telling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditNotice {
    /// The balance went below the low mark.
    Low { remaining: i64, below: i64 },
    /// The balance can no longer pay for a request of this cost.
    Exhausted { remaining: i64 },
}

impl Metered {
    /// Whether this charge may have crossed a mark: the credits answered,
    /// or a quota window is used to `lowest` percent or more. Most charges
    /// are neither, and pay only this look.
    #[inline]
    pub fn may_cross(&self, lowest: u8) -> bool {
        self.credits.is_some()
            || [Policy::Hour, Policy::Day, Policy::Month].iter().any(|p| {
                self.windows[*p as usize].is_some_and(|d| {
                    u64::from(d.limit - d.remaining.min(d.limit)) * 100 >= u64::from(d.limit) * u64::from(lowest)
                })
            })
    }

    /// The thresholds (percent, ascending) of each quota window this
    /// admitted charge of `cost` took the use to or past.
    pub fn crossings(&self, cost: u32, percents: &[u8], mut each: impl FnMut(Crossing)) {
        if self.refused.is_some() {
            return;
        }
        for policy in [Policy::Hour, Policy::Day, Policy::Month] {
            let Some(d) = self.windows[policy as usize] else { continue };
            let used = d.limit.saturating_sub(d.remaining);
            let before = used.saturating_sub(cost);
            for &percent in percents {
                // The least use that is `percent` of the limit, rounded up.
                let mark = (u64::from(d.limit) * u64::from(percent)).div_ceil(100);
                if u64::from(before) < mark && u64::from(used) >= mark {
                    each(Crossing { policy, percent, used, limit: d.limit, reset_at: d.reset_at });
                }
            }
        }
    }

    /// What this admitted charge of `cost` did to the credits: below the
    /// `low` mark, or left too few for another such request.
    pub fn credit_notice(&self, cost: u32, low: Option<i64>) -> Option<CreditNotice> {
        let c = self.credits.filter(|c| c.allowed && self.refused.is_none())?;
        let before = c.remaining.saturating_add(i64::from(cost));
        if c.remaining < i64::from(cost) {
            return Some(CreditNotice::Exhausted { remaining: c.remaining });
        }
        let below = low?;
        (before >= below && c.remaining < below).then_some(CreditNotice::Low { remaining: c.remaining, below })
    }
}

/// What the rate-limit headers describe: the tightest window, and the
/// quota of every policy that applies (0 for none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateView {
    pub policy: Policy,
    pub decision: Decision,
    pub quotas: [u32; 5],
}

/// How far [`charge_ready`] got.
#[derive(Debug)]
pub enum Progress {
    /// Every window answered (and the key spends no credits).
    Done(Metered),
    /// The windows before this one answered; the rest needs waiting
    /// (a Redis call, or the credits).
    Wait(Metered, usize),
}

/// The part of a charge that needs no waiting: the windows this node can
/// answer at once, in order. Most requests end here, and make no future.
pub fn charge_ready(limiter: &Limiter, charge: &Charge<'_>, now_ms: i64) -> Progress {
    let mut out = Metered::default();
    for (i, (policy, counter, limit)) in charge.windows().enumerate() {
        if let (true, Limiter::Local(local)) = (policy.is_quota(), limiter) {
            // This node's hour, day and month counts sit together: one lookup.
            return local_calendar(local, limiter, charge, out, now_ms);
        }
        let Some(d) = limiter.check_now(charge.algorithm, counter, limit, charge.cost, now_ms) else {
            return Progress::Wait(out, i);
        };
        if out.record(policy, d) {
            give_back(limiter, charge, Some(policy), now_ms);
            return Progress::Done(out);
        }
    }
    out.windows_done(charge)
}

/// [`charge_ready`]'s hour, day and month windows on the local limiter.
fn local_calendar(
    local: &super::local::LocalLimiter,
    limiter: &Limiter,
    charge: &Charge<'_>,
    mut out: Metered,
    now_ms: i64,
) -> Progress {
    let q = charge.limits.quota;
    let decisions = local.check_calendar(charge.subject, [q.per_hour, q.per_day, q.per_month], charge.cost, now_ms);
    for (policy, d) in [Policy::Hour, Policy::Day, Policy::Month].into_iter().zip(decisions) {
        if d.is_some_and(|d| out.record(policy, d)) {
            // The calendar took nothing; the minute and route windows did.
            give_back(limiter, charge, Some(Policy::Hour), now_ms);
            return Progress::Done(out);
        }
    }
    out.windows_done(charge)
}

/// The rest of a charge [`charge_ready`] could not finish: from window
/// `from` on (`usize::MAX`: the windows are done), then the credits.
pub async fn charge_rest(
    limiter: &Limiter,
    (credits, store): (&Credits, &dyn CreditLedger),
    charge: &Charge<'_>,
    (mut out, from): (Metered, usize),
    now_ms: i64,
    on_error: RedisErrorPolicy,
    metrics: &Metrics,
) -> Result<Metered, StoreError> {
    for (policy, counter, limit) in charge.windows().skip(from) {
        let d = limiter.check(charge.algorithm, counter, limit, charge.cost, now_ms, on_error, metrics).await;
        if out.record(policy, d) {
            give_back(limiter, charge, Some(policy), now_ms);
            return Ok(out);
        }
    }
    if let Some(terms) = charge.credits {
        let spent = match credits.spend(store, charge.key_id, terms, charge.cost, now_ms).await {
            Ok(spent) => spent,
            Err(e) => {
                give_back(limiter, charge, None, now_ms);
                return Err(e);
            }
        };
        out.credits = Some(spent);
        if !spent.allowed {
            out.refused = Some(Refused::Credits);
            give_back(limiter, charge, None, now_ms);
        }
    }
    Ok(out)
}

/// Settles an admitted charge with what the request really cost: `delta`
/// units more or fewer, in every window it took from and its credits.
pub async fn settle(
    limiter: &Limiter,
    (credits, store): (&Credits, &dyn CreditLedger),
    charge: &Charge<'_>,
    delta: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    for (_, counter, _) in charge.windows() {
        limiter.settle(counter, delta, now_ms).await;
    }
    match charge.credits {
        Some(terms) => credits.settle(store, charge.key_id, terms, delta, now_ms).await,
        None => Ok(()),
    }
}

/// Gives back what the windows before `refused` took (all of them for `None`).
fn give_back(limiter: &Limiter, charge: &Charge<'_>, refused: Option<Policy>, now_ms: i64) {
    for (policy, counter, _) in charge.windows() {
        if refused.is_some_and(|r| policy as usize >= r as usize) {
            return;
        }
        limiter.refund(counter, charge.cost, now_ms);
    }
}

/// The verdict a request of `charge` would get now, taking nothing: the
/// first window without room refuses it, then the credits, given as the
/// balance this node sees and the seconds to its next refill.
pub fn verdict_now(limiter: &Limiter, charge: &Charge<'_>, now_ms: i64, credits: Option<(i64, Option<u64>)>) -> Metered {
    let mut out = Metered::default();
    for (policy, counter, limit) in charge.windows() {
        let d = limiter.peek(charge.algorithm, counter, limit, now_ms);
        if out.refused.is_none() {
            out.record(policy, d);
        } else {
            out.windows[policy as usize] = Some(d);
        }
    }
    if let (None, Some((remaining, refill_in))) = (out.refused, credits) {
        let allowed = remaining >= i64::from(charge.cost);
        out.credits = Some(CreditDecision { allowed, remaining, refill_in });
        if !allowed {
            out.refused = Some(Refused::Credits);
        }
    }
    out
}

/// What a charge would say of every window, counting nothing (for
/// requests refused before the limits, and `/whoami`).
pub fn peek(limiter: &Limiter, charge: &Charge<'_>, now_ms: i64) -> Metered {
    let mut out = Metered::default();
    for (policy, counter, limit) in charge.windows() {
        out.windows[policy as usize] = Some(limiter.peek(charge.algorithm, counter, limit, now_ms));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::model::Quota;

    /// A charge's outcome with one day window and, maybe, credits.
    fn metered(limit: u32, remaining: u32, credits: Option<i64>) -> Metered {
        let mut m = Metered::default();
        let d = Decision { allowed: true, limit, remaining, reset_at: 86_400, retry_after: 0, period: Period::Day };
        m.windows[Policy::Day as usize] = Some(d);
        m.credits = credits.map(|remaining| CreditDecision { allowed: true, remaining, refill_in: None });
        m
    }

    fn crossed(m: &Metered, cost: u32) -> Vec<(u8, u32)> {
        let mut out = Vec::new();
        m.crossings(cost, &[80, 100], |c| out.push((c.percent, c.used)));
        out
    }

    #[test]
    fn a_threshold_is_crossed_once_by_the_charge_that_reaches_it() {
        // 10 a day: 80% is the 8th request, 100% the 10th.
        assert_eq!(crossed(&metered(10, 3, None), 1), vec![]);
        assert_eq!(crossed(&metered(10, 2, None), 1), vec![(80, 8)]);
        assert_eq!(crossed(&metered(10, 1, None), 1), vec![]);
        assert_eq!(crossed(&metered(10, 0, None), 1), vec![(100, 10)]);
        // One charge of 5 from 6 to... 11 is refused; from 5 to 10 it crosses both.
        assert_eq!(crossed(&metered(10, 0, None), 5), vec![(80, 10), (100, 10)]);
        // Rounded up: 80% of 7 is 5.6, so the 6th request.
        assert_eq!(crossed(&metered(7, 1, None), 1), vec![(80, 6)]);
        assert_eq!(crossed(&metered(7, 2, None), 1), vec![]);
        // A refused charge took nothing: it crosses nothing.
        let mut refused = metered(10, 0, None);
        refused.refused = Some(Refused::Window(Policy::Day));
        assert_eq!(crossed(&refused, 1), vec![]);
        // Minute windows are rate limits, not quotas.
        let mut minute = Metered::default();
        minute.windows[Policy::Minute as usize] = metered(10, 0, None).windows[Policy::Day as usize];
        assert!(!minute.may_cross(80));
        assert_eq!(crossed(&minute, 1), vec![]);
        // Below the lowest threshold, nothing to look at.
        assert!(!metered(10, 3, None).may_cross(80));
        assert!(metered(10, 2, None).may_cross(80));
        assert!(metered(10, 9, Some(5)).may_cross(80), "credits: always looked at");
    }

    #[test]
    fn credits_are_low_once_and_exhausted_when_they_cannot_pay_again() {
        let m = |remaining| metered(100, 50, Some(remaining));
        assert_eq!(m(10).credit_notice(1, Some(10)), None);
        assert_eq!(m(9).credit_notice(1, Some(10)), Some(CreditNotice::Low { remaining: 9, below: 10 }));
        assert_eq!(m(8).credit_notice(1, Some(10)), None, "already below before this charge");
        assert_eq!(m(0).credit_notice(1, Some(10)), Some(CreditNotice::Exhausted { remaining: 0 }));
        assert_eq!(m(3).credit_notice(5, None), Some(CreditNotice::Exhausted { remaining: 3 }));
        assert_eq!(m(5).credit_notice(5, None), None);
        let mut refused = m(0);
        refused.credits = Some(CreditDecision { allowed: false, remaining: 0, refill_in: None });
        assert_eq!(refused.credit_notice(1, Some(10)), None, "a refusal took nothing");
    }
    use crate::ratelimit::local::LocalLimiter;
    use crate::store::sqlite::SqliteStore;

    const T0: i64 = 1_700_000_040_000;

    /// A whole charge, as `decide` makes it (there with the rest boxed).
    async fn charge(
        limiter: &Limiter,
        credits: (&Credits, &dyn CreditLedger),
        charge: &Charge<'_>,
        now_ms: i64,
        on_error: RedisErrorPolicy,
        metrics: &Metrics,
    ) -> Result<Metered, StoreError> {
        match charge_ready(limiter, charge, now_ms) {
            Progress::Done(m) => Ok(m),
            Progress::Wait(m, from) => charge_rest(limiter, credits, charge, (m, from), now_ms, on_error, metrics).await,
        }
    }

    fn charge_of(quota: Quota, route: Option<(&'static str, u32)>, cost: u32) -> Charge<'static> {
        Charge {
            key_id: "key_a",
            subject: "key_a",
            route,
            limits: Limits { per_minute: 100, quota },
            credits: None,
            cost,
            algorithm: Algorithm::FixedWindow,
        }
    }

    #[tokio::test]
    async fn a_refusal_by_any_window_takes_from_none() {
        let limiter = Limiter::Local(LocalLimiter::default());
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db")).unwrap();
        let credits = Credits::default();
        let metrics = Metrics::new().unwrap();
        let quota = Quota { per_hour: None, per_day: Some(25), per_month: Some(1000) };
        let c = charge_of(quota, Some(("key_a\u{1f}POST /send", 40)), 10);
        let run = |c: Charge<'static>| {
            let (limiter, credits, store, metrics) = (&limiter, &credits, &store, &metrics);
            async move { charge(limiter, (credits, store), &c, T0, RedisErrorPolicy::Deny, metrics).await.unwrap() }
        };
        assert!(run(c).await.refused.is_none());
        assert!(run(c).await.refused.is_none());
        // The day has 5 units left: a cost of 10 is refused by the day...
        let m = run(c).await;
        assert_eq!(m.refused, Some(Refused::Window(Policy::Day)));
        assert_eq!(m.view().unwrap().policy, Policy::Day);
        // ...and took nothing from the minute, the route or the month.
        let minute = Counter { id: "key_a", period: Period::Minute };
        let route = Counter { id: "key_a\u{1f}POST /send", period: Period::Minute };
        let month = Counter { id: "key_a", period: Period::Month };
        let Limiter::Local(l) = &limiter else { unreachable!() };
        assert_eq!((l.used(minute, T0), l.used(route, T0), l.used(month, T0)), (20, 20, 20));
        // The route's own limit refuses the second cheap request; the minute is untouched.
        let cheap = charge_of(quota, Some(("key_a\u{1f}POST /send", 21)), 1);
        assert!(run(cheap).await.refused.is_none());
        assert_eq!(run(cheap).await.refused, Some(Refused::Window(Policy::Route)));
        assert_eq!(l.used(minute, T0), 21);
    }

    #[test]
    fn the_tightest_window_speaks_in_the_headers() {
        let mut m = Metered::default();
        let d = |limit, remaining, period| Decision { allowed: true, limit, remaining, reset_at: 0, retry_after: 0, period };
        m.windows[Policy::Minute as usize] = Some(d(60, 59, Period::Minute));
        m.windows[Policy::Day as usize] = Some(d(500, 3, Period::Day));
        let v = m.view().unwrap();
        assert_eq!((v.policy, v.decision.remaining, v.quotas), (Policy::Day, 3, [60, 0, 0, 500, 0]));
    }
}
