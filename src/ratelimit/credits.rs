//! Prepaid credits: a balance per key that every admitted request spends
//! its cost from, refilled (set back to an amount) at the start of each
//! UTC day or month when the key says so.
//!
//! The store holds the balance; operators change it there (CLI, admin
//! API), and every change is in the change feed. A node reads a key's
//! balance once, spends from it in memory, and writes what it spent in
//! batches (with usage, every `keys.usage_flush_interval`). A change from
//! outside makes the node read the balance again, minus what it spent and
//! has not written yet. A `set` starts a new generation: spending from
//! before it is dropped rather than taken from the new balance.

use crate::clock::Period;
use crate::keys::model::{CreditTerms, RefillInterval};
use crate::store::{CreditBalance, CreditSpend, Store, StoreError};
use crate::FastHash;
use dashmap::DashMap;

/// The window a refill interval counts in.
pub fn refill_period(interval: RefillInterval) -> Period {
    match interval {
        RefillInterval::Day => Period::Day,
        RefillInterval::Month => Period::Month,
    }
}

/// Applies one batch of spending to a balance, refilling first when it
/// happened in a later refill window than the balance was last refilled
/// in. The store applies spending the same way, so both agree.
pub fn apply(balance: &mut CreditBalance, refill: Option<u64>, period: i64, spent: i64) {
    if let Some(amount) = refill {
        if balance.period < period {
            balance.remaining = amount as i64;
            balance.period = period;
        }
    }
    balance.remaining -= spent;
}

/// The refill due now for these terms: (amount, refill window index).
fn due(terms: &CreditTerms, now_ms: i64) -> (Option<u64>, i64) {
    match terms.refill() {
        Some((amount, interval)) => (Some(amount), refill_period(interval).index(now_ms)),
        None => (None, 0),
    }
}

/// What a key's balance is now: `remaining` after the refill due, and
/// seconds to the next refill (none without one).
pub fn effective(stored: CreditBalance, terms: &CreditTerms, now_ms: i64) -> (i64, Option<u64>) {
    let (refill, period) = due(terms, now_ms);
    let mut b = stored;
    apply(&mut b, refill, period, 0);
    (b.remaining, next_refill_in(terms, now_ms))
}

/// Seconds until the next refill, if the key has one.
pub fn next_refill_in(terms: &CreditTerms, now_ms: i64) -> Option<u64> {
    let (_, interval) = terms.refill()?;
    let p = refill_period(interval);
    Some(((p.end_ms(p.index(now_ms)) - now_ms + 999) / 1000).max(1) as u64)
}

#[derive(Debug, Default)]
struct Balance {
    /// The store's balance as last read, with this node's spending since
    /// applied; `None` until read (or after a change from outside).
    known: Option<CreditBalance>,
    /// Spending not yet written: (generation, refill, window, units).
    pending: Vec<CreditSpend>,
}

/// What spending credits said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditDecision {
    pub allowed: bool,
    /// The balance after this request (before it, when refused).
    pub remaining: i64,
    /// Seconds until the next refill, if any.
    pub refill_in: Option<u64>,
}

/// Every key's credits on this node.
#[derive(Default)]
pub struct Credits {
    balances: DashMap<String, Balance, FastHash>,
    /// Held while spending is written, and while a balance is read: a
    /// balance read half way through a write would miss what is being
    /// written and count it twice the other way.
    writing: tokio::sync::Mutex<()>,
}

impl Credits {
    /// Spends `cost` units of `key_id`'s credits if it has them. Reads the
    /// balance from the store the first time (and after a change).
    pub async fn spend(
        &self,
        store: &dyn Store,
        key_id: &str,
        terms: &CreditTerms,
        cost: u32,
        now_ms: i64,
    ) -> Result<CreditDecision, StoreError> {
        if let Some(d) = self.try_spend(key_id, terms, cost, now_ms) {
            return Ok(d);
        }
        let _writing = self.writing.lock().await;
        let stored = store.credit_balance(key_id).await?.unwrap_or_default();
        let mut b = self.balances.entry(key_id.to_string()).or_default();
        if b.known.is_none() {
            let mut known = stored;
            for p in b.pending.iter().filter(|p| p.generation == stored.generation) {
                apply(&mut known, p.refill, p.period, p.spent);
            }
            b.pending.retain(|p| p.generation == stored.generation);
            b.known = Some(known);
        }
        drop(b);
        Ok(self.try_spend(key_id, terms, cost, now_ms).unwrap_or(CreditDecision {
            allowed: false,
            remaining: 0,
            refill_in: next_refill_in(terms, now_ms),
        }))
    }

    /// Spends from a balance already read; `None` if it is not.
    fn try_spend(&self, key_id: &str, terms: &CreditTerms, cost: u32, now_ms: i64) -> Option<CreditDecision> {
        let mut b = self.balances.get_mut(key_id)?;
        let known = b.known.as_mut()?;
        let (refill, period) = due(terms, now_ms);
        apply(known, refill, period, 0);
        let refill_in = next_refill_in(terms, now_ms);
        if known.remaining < i64::from(cost) {
            return Some(CreditDecision { allowed: false, remaining: known.remaining.max(0), refill_in });
        }
        known.remaining -= i64::from(cost);
        let (remaining, generation) = (known.remaining, known.generation);
        match b.pending.last_mut() {
            Some(p) if p.generation == generation && p.period == period && p.refill == refill => p.spent += i64::from(cost),
            _ => b.pending.push(CreditSpend { key_id: key_id.to_string(), generation, refill, period, spent: i64::from(cost) }),
        }
        Some(CreditDecision { allowed: true, remaining, refill_in })
    }

    /// Gives back what a request took (a later check refused it).
    pub fn refund(&self, key_id: &str, cost: u32) {
        if let Some(mut b) = self.balances.get_mut(key_id) {
            let Some(known) = b.known.as_mut() else { return };
            known.remaining += i64::from(cost);
            if let Some(p) = b.pending.last_mut() {
                p.spent -= i64::from(cost);
            }
        }
    }

    /// The balance this node sees now, if it has read it.
    pub fn known(&self, key_id: &str) -> Option<CreditBalance> {
        self.balances.get(key_id)?.known
    }

    /// The balance as this node sees it, given the store's: what it read,
    /// or the store's less what it spent and has not written.
    pub fn seen(&self, key_id: &str, stored: CreditBalance) -> CreditBalance {
        let Some(b) = self.balances.get(key_id) else { return stored };
        if let Some(known) = b.known {
            return known;
        }
        let mut seen = stored;
        for p in b.pending.iter().filter(|p| p.generation == stored.generation) {
            apply(&mut seen, p.refill, p.period, p.spent);
        }
        seen
    }

    /// The key's balance changed outside this node (or the key did): read
    /// it again before the next spend.
    pub fn forget(&self, key_id: &str) {
        if let Some(mut b) = self.balances.get_mut(key_id) {
            b.known = None;
        }
        self.balances.remove_if(key_id, |_, b| b.pending.is_empty() && b.known.is_none());
    }

    /// Every balance changed (the node missed changes): read them again.
    pub fn forget_all(&self) {
        self.balances.retain(|_, b| {
            b.known = None;
            !b.pending.is_empty()
        });
    }

    /// Holds off balance reads while spending is written (see the field).
    pub async fn writing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writing.lock().await
    }

    /// Takes the spending not yet written.
    pub fn take_unflushed(&self) -> Vec<CreditSpend> {
        let mut out = Vec::new();
        for mut b in self.balances.iter_mut() {
            out.append(&mut b.pending);
        }
        out.retain(|p| p.spent != 0);
        out
    }

    /// Puts back spending a failed flush could not write (before anything
    /// spent since, so the order of refill windows holds).
    pub fn put_back(&self, spends: Vec<CreditSpend>) {
        for s in spends.into_iter().rev() {
            self.balances.entry(s.key_id.clone()).or_default().pending.insert(0, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const T0: i64 = 20_000 * DAY + 3_600_000; // 01:00 UTC on some day

    fn refilled(amount: u64) -> CreditTerms {
        CreditTerms { refill_amount: Some(amount), refill_interval: Some(RefillInterval::Day) }
    }

    #[test]
    fn spending_refills_at_the_day_boundary_and_store_and_node_agree() {
        let terms = refilled(100);
        let mut node = CreditBalance { remaining: 5, period: Period::Day.index(T0), generation: 0 };
        let mut store = node;
        // Spend 5 today, 30 tomorrow, as a flush would replay it.
        let batches = [(Period::Day.index(T0), 5), (Period::Day.index(T0 + DAY), 30)];
        for (period, spent) in batches {
            apply(&mut node, Some(100), period, spent);
        }
        for (period, spent) in batches {
            apply(&mut store, Some(100), period, spent);
        }
        assert_eq!(node.remaining, 70);
        assert_eq!(node, store);
        assert_eq!(effective(node, &terms, T0 + 2 * DAY).0, 100);
        assert_eq!(effective(node, &CreditTerms::default(), T0 + 2 * DAY), (70, None));
        assert_eq!(next_refill_in(&terms, T0), Some(23 * 3600));
    }

    #[test]
    fn a_balance_is_spent_whole_then_refused_and_refunds_give_back() {
        let c = Credits::default();
        let terms = CreditTerms::default();
        c.balances
            .insert("k".into(), Balance { known: Some(CreditBalance { remaining: 3, ..Default::default() }), pending: vec![] });
        assert_eq!(c.try_spend("k", &terms, 2, T0).unwrap().remaining, 1);
        let refused = c.try_spend("k", &terms, 2, T0).unwrap();
        assert!(!refused.allowed);
        assert_eq!((refused.remaining, refused.refill_in), (1, None));
        c.refund("k", 2);
        assert_eq!(c.known("k").unwrap().remaining, 3);
        assert!(c.take_unflushed().is_empty(), "spent and refunded: nothing to write");
    }
}
