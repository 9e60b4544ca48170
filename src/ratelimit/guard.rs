//! The failed-credential guard: 401s counted per client address over a
//! minute; an address that passes the limit is blocked for a while, and
//! a blocked address is refused before its credential is looked at. A
//! good key from it changes nothing: guessing stops being worth it.
//! Here: this node's count (used without Redis) and the blocks it knows
//! (its own, and every node's as the store lists them); the time is
//! passed in.

use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Addresses tracked at once: past it, new addresses are not counted
/// (an attacker rotating addresses cannot grow the map without bound;
/// each address then needs its own 401s, which the limit is for).
pub const MAX_TRACKED: usize = 100_000;

pub use crate::config::GuardPolicy;

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    minute: i64,
    failures: u32,
    blocked_until_ms: i64,
    blocked_at_ms: i64,
}

/// How long a block this node set may be missing from the store's list
/// before it is taken for lifted (its write may still be on the way).
const WRITE_GRACE_MS: i64 = 2_000;

/// Failures and blocks by client address.
#[derive(Default)]
pub struct FailureGuard {
    entries: DashMap<IpAddr, Entry, crate::FastHash>,
    blocked: AtomicUsize,
    /// Blocks written to the store by any node, as last read.
    shared: arc_swap::ArcSwap<std::collections::HashMap<IpAddr, i64>>,
}

impl FailureGuard {
    /// Seconds until `ip` may try again, if it is blocked at `now_ms`.
    pub fn blocked_for(&self, ip: IpAddr, now_ms: i64) -> Option<u64> {
        let own = self.entries.get(&ip).map_or(0, |e| e.blocked_until_ms);
        let until = own.max(self.shared.load().get(&ip).copied().unwrap_or(0));
        (until > now_ms).then(|| ((until - now_ms + 999) / 1000).max(1) as u64)
    }

    /// The blocks the store holds now (every node's), replacing those read
    /// before: a block an operator removed is gone here too.
    pub fn follow(&self, blocks: std::collections::HashMap<IpAddr, i64>) {
        self.shared.store(std::sync::Arc::new(blocks));
    }

    /// Counts a failed credential from `ip`; true when this one blocks it.
    pub fn note_failure(&self, ip: IpAddr, policy: GuardPolicy, now_ms: i64) -> bool {
        let minute = now_ms.div_euclid(60_000);
        if !self.entries.contains_key(&ip) && self.entries.len() >= MAX_TRACKED {
            return false;
        }
        let passed = {
            let mut e = self.entries.entry(ip).or_default();
            if e.minute != minute {
                e.minute = minute;
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.failures > policy.per_minute && e.blocked_until_ms <= now_ms
        };
        if passed {
            self.block(ip, now_ms, now_ms.saturating_add(policy.block_for_ms));
        }
        passed
    }

    /// Blocks `ip` until `until_ms` (its failures were counted elsewhere:
    /// on Redis, across nodes).
    pub fn block(&self, ip: IpAddr, now_ms: i64, until_ms: i64) {
        let mut e = self.entries.entry(ip).or_default();
        // Counted while its block is set (a lapsed one is cleared by the sweep).
        if e.blocked_until_ms == 0 {
            self.blocked.fetch_add(1, Ordering::Relaxed);
        }
        e.blocked_until_ms = e.blocked_until_ms.max(until_ms);
        e.blocked_at_ms = now_ms;
    }

    /// Whether this node's block of `ip` was set long enough ago that the
    /// store, not listing it, has had it removed.
    pub fn settled(&self, ip: IpAddr, now_ms: i64) -> bool {
        self.entries.get(&ip).is_some_and(|e| e.blocked_at_ms + WRITE_GRACE_MS < now_ms)
    }

    /// Ends this node's own block early (an operator removed it from the
    /// store); whether there was one.
    pub fn unblock(&self, ip: IpAddr, now_ms: i64) -> bool {
        let Some((_, e)) = self.entries.remove(&ip) else { return false };
        if e.blocked_until_ms != 0 {
            self.blocked.fetch_sub(1, Ordering::Relaxed);
        }
        e.blocked_until_ms > now_ms
    }

    /// Forgets addresses neither blocked nor failing this minute.
    pub fn sweep(&self, now_ms: i64) {
        let minute = now_ms.div_euclid(60_000);
        let mut ended = 0;
        self.entries.retain(|_, e| {
            if e.blocked_until_ms != 0 && e.blocked_until_ms <= now_ms {
                // Its block is over: from now on only its failures count.
                e.blocked_until_ms = 0;
                ended += 1;
            }
            e.blocked_until_ms != 0 || e.minute == minute
        });
        if ended > 0 {
            self.blocked.fetch_sub(ended, Ordering::Relaxed);
        }
    }

    /// Addresses blocked now (as of the last sweep).
    pub fn blocked_count(&self) -> usize {
        self.blocked.load(Ordering::Relaxed)
    }

    /// Every address blocked at `now_ms`, with when its block ends.
    pub fn blocked(&self, now_ms: i64) -> Vec<(IpAddr, i64)> {
        let mut out: Vec<(IpAddr, i64)> =
            self.entries.iter().filter(|e| e.blocked_until_ms > now_ms).map(|e| (*e.key(), e.blocked_until_ms)).collect();
        out.sort();
        out
    }
}

impl std::fmt::Debug for FailureGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureGuard").field("tracked", &self.entries.len()).field("blocked", &self.blocked_count()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: GuardPolicy = GuardPolicy { per_minute: 3, block_for_ms: 60_000 };
    const T0: i64 = 1_700_000_040_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_failure_past_the_limit_blocks_the_address_and_nothing_else() {
        let g = FailureGuard::default();
        let (bad, other) = (ip("203.0.113.9"), ip("198.51.100.1"));
        for i in 0..3 {
            assert!(!g.note_failure(bad, POLICY, T0 + i), "failure {i} is within the limit");
        }
        assert_eq!(g.blocked_for(bad, T0 + 3), None);
        assert!(g.note_failure(bad, POLICY, T0 + 4), "the fourth blocks");
        assert_eq!(g.blocked_for(bad, T0 + 4), Some(60));
        assert_eq!(g.blocked_for(bad, T0 + 30_000), Some(31), "rounded up");
        assert_eq!(g.blocked_for(other, T0 + 5), None, "another address is not touched");
        assert!(!g.note_failure(bad, POLICY, T0 + 5), "blocked once, not again");
        assert_eq!(g.blocked_count(), 1);
        assert_eq!(g.blocked(T0 + 5), vec![(bad, T0 + 4 + 60_000)]);
        // The block ends; a sweep then counts it gone.
        assert_eq!(g.blocked_for(bad, T0 + 4 + 60_000), None);
        g.sweep(T0 + 4 + 60_000);
        assert_eq!(g.blocked_count(), 0);
    }

    #[test]
    fn failures_are_counted_per_minute_and_an_operator_may_unblock() {
        let g = FailureGuard::default();
        let bad = ip("2001:db8::1");
        for i in 0..3 {
            g.note_failure(bad, POLICY, T0 + i);
        }
        // A new minute starts the count again.
        assert!(!g.note_failure(bad, POLICY, T0 + 60_000));
        for i in 1..3 {
            assert!(!g.note_failure(bad, POLICY, T0 + 60_000 + i));
        }
        assert!(g.note_failure(bad, POLICY, T0 + 60_010));
        assert!(g.unblock(bad, T0 + 60_011));
        assert_eq!(g.blocked_for(bad, T0 + 60_011), None);
        assert!(!g.unblock(bad, T0 + 60_011));
        assert_eq!(g.blocked_count(), 0);
        // Every node's blocks, as the store lists them.
        let other = ip("192.0.2.77");
        g.follow([(other, T0 + 90_000)].into_iter().collect());
        assert_eq!(g.blocked_for(other, T0 + 60_000), Some(30));
        g.follow(Default::default());
        assert_eq!(g.blocked_for(other, T0 + 60_000), None, "removed from the store: gone here");
        // Quiet addresses are forgotten by a sweep.
        g.note_failure(ip("192.0.2.1"), POLICY, T0);
        g.sweep(T0 + 120_000);
        assert!(g.entries.is_empty());
    }
}
