//! A limiter that counts on this node alone: the embedded default, and the
//! fallback when Redis cannot be asked. Each counter has a small window
//! record in a sharded map per period; nothing is shared by every request.
//! Calendar windows (hour, day, month) also remember what they counted
//! since the last flush, which the gateway writes to the store so a
//! restart does not forget a day's consumption.

use super::{Counter, Decision};
use crate::clock::Period;
use crate::config::Algorithm;
use crate::store::WindowCount as WindowDelta;
use crate::FastHash;
use dashmap::DashMap;

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    /// Index of the current window (see [`Period::index`]).
    index: i64,
    current: u32,
    previous: u32,
    /// Counted (or given back) since the last flush.
    unflushed: i64,
}

impl Window {
    /// Moves the window forward to `index`.
    fn roll(&mut self, index: i64) {
        if index == self.index {
            return;
        }
        self.previous = if index == self.index + 1 { self.current } else { 0 };
        self.current = 0;
        self.index = index;
        // What the old window counted matters no more: only the current
        // window is read back at start (and writing it would count it in
        // the new one).
        self.unflushed = 0;
    }
}

/// Counts requests per counter on this node.
#[derive(Default)]
pub struct LocalLimiter {
    minutes: DashMap<String, Window, FastHash>,
    /// A counter's hour, day and month windows, together: a request with
    /// quotas finds all three in one lookup.
    calendar: DashMap<String, [Window; 3], FastHash>,
}

/// The calendar periods, in the order `LocalLimiter::calendar` keeps them.
const CALENDAR: [Period; 3] = [Period::Hour, Period::Day, Period::Month];

fn calendar_slot(period: Period) -> usize {
    match period {
        Period::Hour => 0,
        Period::Day => 1,
        _ => 2,
    }
}

impl LocalLimiter {
    /// Counts `cost` units if they fit within `limit`.
    pub fn check(&self, algorithm: Algorithm, counter: Counter<'_>, limit: u32, cost: u32, now_ms: i64) -> Decision {
        self.decide(algorithm, counter, limit, cost, now_ms, true)
    }

    /// What a check would say, without counting (for refused requests,
    /// which must not consume quota, and for `/whoami`).
    pub fn peek(&self, algorithm: Algorithm, counter: Counter<'_>, limit: u32, now_ms: i64) -> Decision {
        self.decide(algorithm, counter, limit, 1, now_ms, false)
    }

    fn decide(&self, algorithm: Algorithm, c: Counter<'_>, limit: u32, cost: u32, now_ms: i64, consume: bool) -> Decision {
        // A new record rolls to the current window as it is evaluated.
        let run = |w: &mut Window| evaluate(algorithm, c.period, w, limit, cost, now_ms, consume);
        if c.period == Period::Minute {
            return match self.minutes.get_mut(c.id) {
                Some(mut w) => run(&mut w),
                None if !consume => run(&mut Window::default()),
                None => run(&mut self.minutes.entry(c.id.to_string()).or_default()),
            };
        }
        let k = calendar_slot(c.period);
        match self.calendar.get_mut(c.id) {
            Some(mut ws) => run(&mut ws[k]),
            None if !consume => run(&mut Window::default()),
            None => run(&mut self.calendar.entry(c.id.to_string()).or_default()[k]),
        }
    }

    /// The hour, day and month quotas of one counter, in one lookup: all
    /// of `limits` that are set have room for `cost` and all take it, or
    /// none does (the refusing window's decision is the last one set).
    pub fn check_calendar(&self, id: &str, limits: [Option<u32>; 3], cost: u32, now_ms: i64) -> [Option<Decision>; 3] {
        let mut ws = match self.calendar.get_mut(id) {
            Some(ws) => ws,
            None => self.calendar.entry(id.to_string()).or_default(),
        };
        let mut out = [None; 3];
        for k in 0..3 {
            let Some(limit) = limits[k] else { continue };
            let d = evaluate(Algorithm::FixedWindow, CALENDAR[k], &mut ws[k], limit, cost, now_ms, false);
            out[k] = Some(d);
            if !d.allowed {
                return out;
            }
        }
        for k in 0..3 {
            if let Some(d) = out[k].as_mut() {
                ws[k].current += cost;
                ws[k].unflushed += i64::from(cost);
                d.remaining = d.remaining.saturating_sub(cost);
            }
        }
        out
    }

    /// The counter's window record, if it has one.
    fn with<R>(&self, counter: Counter<'_>, f: impl FnOnce(&mut Window) -> R) -> Option<R> {
        if counter.period == Period::Minute {
            return self.minutes.get_mut(counter.id).map(|mut w| f(&mut w));
        }
        self.calendar.get_mut(counter.id).map(|mut ws| f(&mut ws[calendar_slot(counter.period)]))
    }

    /// Gives back `cost` units a check took, when a later check of the
    /// same request refused it (a refused request takes from none).
    pub fn refund(&self, counter: Counter<'_>, cost: u32, now_ms: i64) {
        let index = counter.period.index(now_ms);
        self.with(counter, |w| {
            if w.index == index {
                w.current = w.current.saturating_sub(cost);
                if counter.period.is_calendar() {
                    w.unflushed -= i64::from(cost);
                }
            }
        });
    }

    /// Counts `units` more in the counter's current window, whatever its
    /// limit: a request the upstream said cost more than was checked. A
    /// window taken past its limit refuses the next request.
    pub fn debit(&self, counter: Counter<'_>, units: u32, now_ms: i64) {
        let index = counter.period.index(now_ms);
        let add = |w: &mut Window| {
            if w.index > index {
                return; // the clock stepped back: never roll a window backwards
            }
            w.roll(index);
            w.current = w.current.saturating_add(units);
            if counter.period.is_calendar() {
                w.unflushed += i64::from(units);
            }
        };
        if counter.period == Period::Minute {
            add(&mut self.minutes.entry(counter.id.to_string()).or_default());
        } else {
            add(&mut self.calendar.entry(counter.id.to_string()).or_default()[calendar_slot(counter.period)]);
        }
    }

    /// Units counted in the counter's current window.
    pub fn used(&self, counter: Counter<'_>, now_ms: i64) -> u32 {
        let index = counter.period.index(now_ms);
        self.with(counter, |w| if w.index == index { w.current } else { 0 }).unwrap_or(0)
    }

    /// Forgets windows too old to matter; run now and then. Calendar
    /// windows with unflushed counts stay until they are flushed.
    pub fn sweep(&self, now_ms: i64) {
        let minute = Period::Minute.index(now_ms);
        self.minutes.retain(|_, w| w.index + 1 >= minute);
        let current = CALENDAR.map(|p| p.index(now_ms));
        self.calendar.retain(|_, ws| (0..3).any(|k| ws[k].index + 1 >= current[k] || ws[k].unflushed != 0));
    }

    /// Takes what calendar windows counted since the last call.
    pub fn take_unflushed(&self) -> Vec<WindowDelta> {
        let mut out = Vec::new();
        for mut e in self.calendar.iter_mut() {
            for k in 0..3 {
                if e[k].unflushed != 0 {
                    let delta = std::mem::take(&mut e[k].unflushed);
                    out.push(WindowDelta { period: CALENDAR[k], id: e.key().clone(), index: e[k].index, delta });
                }
            }
        }
        out
    }

    /// Puts back deltas a failed flush could not write.
    pub fn put_back(&self, deltas: Vec<WindowDelta>) {
        for d in deltas {
            let mut ws = self.calendar.entry(d.id).or_default();
            let w = &mut ws[calendar_slot(d.period)];
            if w.index == 0 {
                w.index = d.index;
            }
            w.unflushed += d.delta;
        }
    }

    /// Starts a counter's current window from what the store holds (at
    /// start, before any request).
    pub fn restore(&self, period: Period, id: &str, index: i64, used: u32) {
        if !period.is_calendar() {
            return;
        }
        let mut ws = self.calendar.entry(id.to_string()).or_default();
        let w = &mut ws[calendar_slot(period)];
        w.roll(index);
        w.current = w.current.saturating_add(used);
    }

    /// Counters with a live window (a counter's calendar windows count once).
    pub fn len(&self) -> usize {
        self.minutes.len() + self.calendar.len()
    }

    /// Whether no counter has a live window.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Applies one request to a window record.
fn evaluate(algorithm: Algorithm, period: Period, w: &mut Window, limit: u32, cost: u32, now_ms: i64, consume: bool) -> Decision {
    let (index, start_ms, end_ms) = period.bounds(now_ms);
    w.roll(index);
    let reset_at = end_ms.div_euclid(1000);
    let length_ms = end_ms - start_ms;
    let elapsed = now_ms - start_ms;
    // Units the window holds now: the current count, plus, when sliding,
    // the share of the previous window that still overlaps the last
    // window's length (rounded up, so the estimate never admits more than
    // the limit).
    let carried = match algorithm.for_period(period) {
        Algorithm::SlidingWindow => ((w.previous as i64 * (length_ms - elapsed) + length_ms - 1) / length_ms) as u32,
        _ => 0,
    };
    let used = carried.saturating_add(w.current);
    if u64::from(used) + u64::from(cost) <= u64::from(limit) {
        let taken = if consume { cost } else { 0 };
        if consume {
            w.current += cost;
            if period.is_calendar() {
                w.unflushed += i64::from(cost);
            }
        }
        let after = used + taken;
        return Decision { allowed: true, limit, remaining: limit.saturating_sub(after), reset_at, retry_after: 0, period };
    }
    Decision::refused(algorithm, period, limit, w.current, w.previous, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::WINDOW_MS;

    const T0: i64 = 1_700_000_040_000; // the start of a window

    /// The limiter with one algorithm bound, to keep the tests short.
    struct Limiter(LocalLimiter, Algorithm);

    fn minute(id: &str) -> Counter<'_> {
        Counter { id, period: Period::Minute }
    }

    impl Limiter {
        fn new(a: Algorithm) -> Limiter {
            Limiter(LocalLimiter::default(), a)
        }
        fn check(&self, k: &str, limit: u32, now: i64) -> Decision {
            self.0.check(self.1, minute(k), limit, 1, now)
        }
        fn peek(&self, k: &str, limit: u32, now: i64) -> Decision {
            self.0.peek(self.1, minute(k), limit, now)
        }
        fn sweep(&self, now: i64) {
            self.0.sweep(now)
        }
        fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
    }

    #[test]
    fn fixed_window_counts_and_resets() {
        let l = Limiter::new(Algorithm::FixedWindow);
        for i in 0..3 {
            let d = l.check("k", 3, T0 + i);
            assert!(d.allowed);
            assert_eq!(d.remaining, 2 - i as u32);
        }
        let d = l.check("k", 3, T0 + 10_000);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, 50);
        assert_eq!(d.reset_at, (T0 + WINDOW_MS) / 1000);
        assert!(l.check("k", 3, T0 + WINDOW_MS).allowed);
    }

    #[test]
    fn refusals_and_peeks_consume_nothing() {
        let l = Limiter::new(Algorithm::FixedWindow);
        assert_eq!(l.peek("k", 2, T0).remaining, 2);
        assert!(l.is_empty());
        l.check("k", 2, T0);
        l.check("k", 2, T0);
        for _ in 0..10 {
            assert!(!l.check("k", 2, T0).allowed);
        }
        assert_eq!(l.peek("k", 2, T0 + WINDOW_MS).remaining, 2);
    }

    #[test]
    fn sliding_window_has_no_double_burst() {
        let l = Limiter::new(Algorithm::SlidingWindow);
        // Fill the limit at the very end of one window...
        for _ in 0..10 {
            assert!(l.check("k", 10, T0 + WINDOW_MS - 1).allowed);
        }
        // ...and just after the boundary almost nothing is admitted.
        let admitted = (0..10).filter(|_| l.check("k", 10, T0 + WINDOW_MS + 1).allowed).count();
        assert_eq!(admitted, 0);
        // Half way through the next window, half the previous count still weighs.
        let admitted = (0..10).filter(|_| l.check("k", 10, T0 + WINDOW_MS + WINDOW_MS / 2).allowed).count();
        assert_eq!(admitted, 5);
        let d = l.check("k", 10, T0 + WINDOW_MS + WINDOW_MS / 2);
        assert!(!d.allowed);
        assert!(d.retry_after >= 1 && d.retry_after <= 60, "{d:?}");
    }

    #[test]
    fn fixed_window_allows_boundary_burst() {
        let l = Limiter::new(Algorithm::FixedWindow);
        for _ in 0..10 {
            assert!(l.check("k", 10, T0 + WINDOW_MS - 1).allowed);
        }
        assert!(l.check("k", 10, T0 + WINDOW_MS + 1).allowed);
    }

    #[test]
    fn keys_are_independent_and_swept() {
        let l = Limiter::new(Algorithm::FixedWindow);
        assert!(l.check("a", 1, T0).allowed);
        assert!(l.check("b", 1, T0).allowed);
        assert!(!l.check("a", 1, T0).allowed);
        l.sweep(T0 + 3 * WINDOW_MS);
        assert!(l.is_empty());
    }

    #[test]
    fn a_debit_counts_past_the_limit_and_is_flushed() {
        let l = LocalLimiter::default();
        let (day, minute) = (Counter { id: "k", period: Period::Day }, Counter { id: "k", period: Period::Minute });
        assert!(l.check(Algorithm::FixedWindow, day, 100, 1, T0).allowed);
        l.debit(day, 499, T0);
        l.debit(minute, 7, T0);
        assert_eq!((l.used(day, T0), l.used(minute, T0)), (500, 7));
        assert!(!l.check(Algorithm::FixedWindow, day, 100, 1, T0).allowed, "taken past its limit: the next is refused");
        assert_eq!(l.take_unflushed().iter().map(|d| d.delta).sum::<i64>(), 500);
        // A debit dated before the window never rolls it back.
        l.debit(day, 5, T0 - 2 * 86_400_000);
        assert_eq!(l.used(day, T0), 500);
    }

    #[test]
    fn cost_takes_several_units_and_refunds_give_them_back() {
        let l = LocalLimiter::default();
        let day = Counter { id: "k", period: Period::Day };
        assert!(l.check(Algorithm::FixedWindow, day, 25, 10, T0).allowed);
        assert!(l.check(Algorithm::FixedWindow, day, 25, 10, T0).allowed);
        let d = l.check(Algorithm::FixedWindow, day, 25, 10, T0);
        assert!(!d.allowed, "20 + 10 > 25");
        assert_eq!(d.period, Period::Day);
        assert!(l.check(Algorithm::FixedWindow, day, 25, 5, T0).allowed, "a cheaper request still fits");
        l.refund(day, 5, T0);
        assert_eq!(l.used(day, T0), 20);
        // What was counted (net of refunds) is what a flush writes.
        let deltas = l.take_unflushed();
        assert_eq!(deltas, vec![WindowDelta { period: Period::Day, id: "k".into(), index: Period::Day.index(T0), delta: 20 }]);
        assert!(l.take_unflushed().is_empty());
        // Minute windows are not durable: nothing to flush.
        l.check(Algorithm::FixedWindow, minute("k"), 5, 1, T0);
        assert!(l.take_unflushed().is_empty());
    }

    #[test]
    fn a_month_window_resets_on_the_first_at_midnight_utc() {
        let l = LocalLimiter::default();
        let month = Counter { id: "k", period: Period::Month };
        let last = crate::clock::parse_rfc3339("2026-03-31T23:59:59Z").unwrap() * 1000 + 999;
        for _ in 0..3 {
            assert!(l.check(Algorithm::SlidingWindow, month, 3, 1, last - 86_400_000).allowed);
        }
        let d = l.check(Algorithm::SlidingWindow, month, 3, 1, last);
        assert!(!d.allowed);
        assert_eq!(d.reset_at, (last + 1) / 1000);
        assert_eq!(d.retry_after, 1);
        // April: no carry-over, whatever the minute algorithm.
        assert!(l.check(Algorithm::SlidingWindow, month, 3, 1, last + 1).allowed);
        assert_eq!(l.used(month, last + 1), 1);
    }

    #[test]
    fn a_day_that_ends_before_a_flush_is_not_written_into_the_next() {
        let l = LocalLimiter::default();
        let day = Counter { id: "k", period: Period::Day };
        let end = (Period::Day.index(T0) + 1) * 86_400_000 - 1;
        l.check(Algorithm::FixedWindow, day, 10, 4, end);
        l.check(Algorithm::FixedWindow, day, 10, 1, end + 1);
        let deltas = l.take_unflushed();
        assert_eq!(
            deltas,
            vec![WindowDelta { period: Period::Day, id: "k".into(), index: Period::Day.index(end + 1), delta: 1 }]
        );
    }

    #[test]
    fn the_calendar_windows_of_a_counter_are_taken_together_or_not_at_all() {
        let l = LocalLimiter::default();
        let limits = [Some(100), Some(5), Some(1000)];
        let all = l.check_calendar("k", limits, 3, T0);
        assert!(all.iter().all(|d| d.is_some_and(|d| d.allowed)));
        assert_eq!(all[1].unwrap().remaining, 2);
        // The day has 2 left: a cost of 3 is refused by it, and nothing is taken.
        let refused = l.check_calendar("k", limits, 3, T0);
        assert_eq!(refused[1].map(|d| (d.allowed, d.period)), Some((false, Period::Day)));
        assert_eq!(refused[2], None, "the month was not reached");
        for period in [Period::Hour, Period::Day, Period::Month] {
            assert_eq!(l.used(Counter { id: "k", period }, T0), 3, "{period:?}");
        }
        assert_eq!(l.check_calendar("k", [None, Some(5), None], 2, T0)[1].map(|d| d.remaining), Some(0));
    }

    #[test]
    fn restored_counts_weigh_in_the_current_window_only() {
        let l = LocalLimiter::default();
        let day = Counter { id: "k", period: Period::Day };
        l.restore(Period::Day, "k", Period::Day.index(T0), 4);
        assert!(l.check(Algorithm::FixedWindow, day, 5, 1, T0).allowed);
        assert!(!l.check(Algorithm::FixedWindow, day, 5, 1, T0).allowed);
        assert_eq!(l.take_unflushed()[0].delta, 1, "only what this node counted is flushed");
    }
}
