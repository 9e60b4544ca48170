//! A limiter that counts on this node alone: the embedded default, and the
//! fallback when Redis cannot be asked. Each key has a small window record
//! in a sharded map; nothing is shared by every request.

use super::{Decision, WINDOW_MS};
use crate::config::Algorithm;
use crate::FastHash;
use dashmap::DashMap;

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    /// Index of the current window (ms / 60_000).
    index: i64,
    current: u32,
    previous: u32,
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
    }
}

/// Counts requests per key on this node.
#[derive(Default)]
pub struct LocalLimiter {
    windows: DashMap<String, Window, FastHash>,
}

impl LocalLimiter {
    /// Counts one request if it fits within `limit`.
    pub fn check(&self, algorithm: Algorithm, key_id: &str, limit: u32, now_ms: i64) -> Decision {
        self.decide(algorithm, key_id, limit, now_ms, true)
    }

    /// What a check would say, without counting (for refused requests,
    /// which must not consume quota, and for `/whoami`).
    pub fn peek(&self, algorithm: Algorithm, key_id: &str, limit: u32, now_ms: i64) -> Decision {
        self.decide(algorithm, key_id, limit, now_ms, false)
    }

    fn decide(&self, algorithm: Algorithm, key_id: &str, limit: u32, now_ms: i64, consume: bool) -> Decision {
        let index = now_ms.div_euclid(WINDOW_MS);
        let mut window = match self.windows.get_mut(key_id) {
            Some(w) => w,
            None if !consume => return evaluate(algorithm, &mut Window { index, ..Window::default() }, limit, now_ms, false),
            None => self.windows.entry(key_id.to_string()).or_insert(Window { index, ..Window::default() }),
        };
        evaluate(algorithm, &mut window, limit, now_ms, consume)
    }

    /// Forgets windows too old to matter; run now and then.
    pub fn sweep(&self, now_ms: i64) {
        let index = now_ms.div_euclid(WINDOW_MS);
        self.windows.retain(|_, w| w.index + 1 >= index);
    }

    /// Keys with a live window.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether no key has a live window.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

/// Applies one request to a window record.
fn evaluate(algorithm: Algorithm, w: &mut Window, limit: u32, now_ms: i64, consume: bool) -> Decision {
    let index = now_ms.div_euclid(WINDOW_MS);
    w.roll(index);
    let window_end_ms = (index + 1) * WINDOW_MS;
    let reset_at = window_end_ms.div_euclid(1000);
    let elapsed = now_ms - index * WINDOW_MS;
    // Requests the window holds now: the current count, plus, when sliding,
    // the share of the previous window that still overlaps the last minute
    // (rounded up, so the estimate never admits more than the limit).
    let carried = match algorithm {
        Algorithm::FixedWindow => 0,
        Algorithm::SlidingWindow => ((w.previous as i64 * (WINDOW_MS - elapsed) + WINDOW_MS - 1) / WINDOW_MS) as u32,
    };
    let used = carried.saturating_add(w.current);
    if used < limit {
        if consume {
            w.current += 1;
        }
        let after = used + u32::from(consume);
        return Decision { allowed: true, limit, remaining: limit.saturating_sub(after), reset_at, retry_after: 0 };
    }
    Decision::refused(algorithm, limit, w.current, w.previous, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_040_000; // the start of a window

    /// The limiter with one algorithm bound, to keep the tests short.
    struct Limiter(LocalLimiter, Algorithm);

    impl Limiter {
        fn new(a: Algorithm) -> Limiter {
            Limiter(LocalLimiter::default(), a)
        }
        fn check(&self, k: &str, limit: u32, now: i64) -> Decision {
            self.0.check(self.1, k, limit, now)
        }
        fn peek(&self, k: &str, limit: u32, now: i64) -> Decision {
            self.0.peek(self.1, k, limit, now)
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
}
