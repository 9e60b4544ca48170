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
//!
//! When several nodes spend one balance (the Redis limiter), that would
//! let each spend it whole. Instead a node takes units from the store in
//! leases (the store grants them atomically, never more than the
//! balance), spends them locally, and gives back what it did not spend
//! once the key is idle or the node stops. A `set` or a refill makes the
//! units of an older lease worthless: they are not given back.

use super::RecentRate;
use crate::clock::Period;
use crate::keys::model::{CreditTerms, RefillInterval};
use crate::store::{CreditBalance, CreditLedger, CreditSpend, CreditTake, StoreError};
use crate::FastHash;
use dashmap::DashMap;

/// The window a refill interval counts in.
pub fn refill_period(interval: RefillInterval) -> Period {
    match interval {
        RefillInterval::Day => Period::Day,
        RefillInterval::Month => Period::Month,
    }
}

/// A stored balance with this node's unwritten spending of the same
/// generation applied (spending from before a `set` counts for nothing).
fn replay(stored: CreditBalance, pending: &[CreditSpend]) -> CreditBalance {
    let mut b = stored;
    for p in pending.iter().filter(|p| p.generation == stored.generation) {
        b.apply(p.refill, p.period, p.spent);
    }
    b
}

/// The refill due now for these terms: (amount, refill window index).
pub fn due(terms: &CreditTerms, now_ms: i64) -> (Option<u64>, i64) {
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
    b.apply(refill, period, 0);
    (b.remaining, next_refill_in(terms, now_ms))
}

/// Seconds until the next refill, if the key has one.
pub fn next_refill_in(terms: &CreditTerms, now_ms: i64) -> Option<u64> {
    let (_, interval) = terms.refill()?;
    let p = refill_period(interval);
    Some(((p.end_ms(p.index(now_ms)) - now_ms + 999) / 1000).max(1) as u64)
}

/// Adds `units` (fewer than none: given back) to the spending of a
/// balance's generation and refill window not yet written.
fn note_spent(b: &mut Balance, key_id: &str, (generation, refill, period): (i64, Option<u64>, i64), units: i64) {
    match b.pending.last_mut() {
        Some(p) if p.generation == generation && p.period == period && p.refill == refill => p.spent += units,
        _ => b.pending.push(CreditSpend { key_id: key_id.to_string(), generation, refill, period, spent: units }),
    }
}

#[derive(Debug, Default)]
struct Balance {
    /// The store's balance as last read, with this node's spending since
    /// applied; `None` until read (or after a change from outside).
    known: Option<CreditBalance>,
    /// Spending not yet written: (generation, refill, window, units).
    pending: Vec<CreditSpend>,
    /// Shared balances: units this node took and has not spent.
    lease: u64,
    /// The balance the lease came from, as the store left it.
    taken_from: CreditBalance,
    /// Shared balances: the store could not grant what was needed; until
    /// this time a request needing more than it had is refused without
    /// asking again.
    empty_until_ms: i64,
    rate: RecentRate,
}

impl Balance {
    /// Drops the lease if a refill came since it was taken (what was left
    /// of the old balance is gone); whether one did.
    fn refilled_since_lease(&mut self, refill: Option<u64>, period: i64) -> bool {
        let refilled = refill.is_some() && self.taken_from.period != period;
        if refilled {
            self.lease = 0;
        }
        refilled
    }

    /// Notes the balance as the store left it after a take; a `set` since
    /// the lease was taken makes the old lease worth nothing.
    fn took_from(&mut self, after: CreditBalance) {
        if self.taken_from.generation != after.generation {
            self.lease = 0;
        }
        self.taken_from = after;
    }
}

/// A shared balance's lease aims to last this long at the key's rate.
const LEASE_HORIZON_MS: u64 = 100;
/// A lease unused for this long is given back.
const LEASE_IDLE_MS: i64 = 1_000;
/// An empty shared balance is asked again after this long (sooner after a
/// top-up, which comes by the change feed): a client calling on with no
/// credits costs the store a few commands a second, not one per request.
/// Units other nodes give back are seen at most this late.
const EMPTY_RECHECK_MS: i64 = 250;

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
    /// `Some(nodes)`: balances are shared by that many nodes and spent
    /// from leases (see the module's comment).
    shared: Option<u32>,
}

impl Credits {
    /// Credits several nodes spend: each from leases it takes.
    pub fn shared(nodes: u32) -> Credits {
        Credits { shared: Some(nodes.max(1)), ..Credits::default() }
    }

    /// Spends `cost` units of `key_id`'s credits if it has them. Reads the
    /// balance from the store the first time (and after a change).
    pub async fn spend(
        &self,
        store: &dyn CreditLedger,
        key_id: &str,
        terms: &CreditTerms,
        cost: u32,
        now_ms: i64,
    ) -> Result<CreditDecision, StoreError> {
        if let Some(nodes) = self.shared {
            return self.spend_leased(store, key_id, terms, cost, now_ms, nodes).await;
        }
        if let Some(d) = self.try_spend(key_id, terms, cost, now_ms) {
            return Ok(d);
        }
        self.read(store, key_id).await?;
        Ok(self.try_spend(key_id, terms, cost, now_ms).unwrap_or(CreditDecision {
            allowed: false,
            remaining: 0,
            refill_in: next_refill_in(terms, now_ms),
        }))
    }

    /// Reads a balance this node does not know (first use, or after a
    /// change from outside), with what it spent and has not written.
    async fn read(&self, store: &dyn CreditLedger, key_id: &str) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        let stored = store.credit_balance(key_id).await?.unwrap_or_default();
        let mut b = self.balances.entry(key_id.to_string()).or_default();
        if b.known.is_none() {
            b.pending.retain(|p| p.generation == stored.generation);
            b.known = Some(replay(stored, &b.pending));
        }
        Ok(())
    }

    /// Settles a spend with what the request really cost: `delta` units
    /// more, taken down to an empty balance and never below it (what a
    /// balance cannot pay is not carried as a debt), or fewer, given back.
    pub async fn settle(
        &self,
        store: &dyn CreditLedger,
        key_id: &str,
        terms: &CreditTerms,
        delta: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if delta == 0 {
            return Ok(());
        }
        if let Some(nodes) = self.shared {
            return self.settle_leased(store, key_id, terms, delta, now_ms, nodes).await;
        }
        if self.balances.get(key_id).is_none_or(|b| b.known.is_none()) {
            self.read(store, key_id).await?;
        }
        let Some(mut b) = self.balances.get_mut(key_id) else { return Ok(()) };
        let (refill, period) = due(terms, now_ms);
        let Some(known) = b.known.as_mut() else { return Ok(()) };
        known.apply(refill, period, 0);
        let units = delta.min(known.remaining.max(0));
        known.remaining -= units;
        let generation = known.generation;
        note_spent(&mut b, key_id, (generation, refill, period), units);
        Ok(())
    }

    /// [`Self::settle`] for a shared balance: from or into this node's
    /// lease, the rest of a debit taken from the store.
    async fn settle_leased(
        &self,
        store: &dyn CreditLedger,
        key_id: &str,
        terms: &CreditTerms,
        delta: i64,
        now_ms: i64,
        nodes: u32,
    ) -> Result<(), StoreError> {
        let (refill, period) = due(terms, now_ms);
        let rest = {
            let mut b = self.balances.entry(key_id.to_string()).or_default();
            b.refilled_since_lease(refill, period);
            if delta < 0 {
                // Back into the lease: spent by this node or given back with it.
                b.lease += delta.unsigned_abs();
                return Ok(());
            }
            let from_lease = b.lease.min(delta as u64);
            b.lease -= from_lease;
            delta as u64 - from_lease
        };
        let mut take = CreditTake { need: rest, want: rest, nodes, refill, period };
        let (mut granted, mut after) = store.take_credits(key_id, take).await?;
        if granted == 0 && after.remaining > 0 {
            // Short of the whole: what there is.
            take.need = after.remaining as u64;
            take.want = take.need;
            (granted, after) = store.take_credits(key_id, take).await?;
        }
        let mut b = self.balances.entry(key_id.to_string()).or_default();
        b.took_from(after);
        if granted < rest {
            // Empty now: the next request asks the store, which says so.
            b.empty_until_ms = 0;
        }
        Ok(())
    }

    /// A shared balance: from this node's lease, taking more from the
    /// store when it runs short.
    async fn spend_leased(
        &self,
        store: &dyn CreditLedger,
        key_id: &str,
        terms: &CreditTerms,
        cost: u32,
        now_ms: i64,
        nodes: u32,
    ) -> Result<CreditDecision, StoreError> {
        let (refill, period) = due(terms, now_ms);
        let refill_in = next_refill_in(terms, now_ms);
        let cost = u64::from(cost);
        let spend = |b: &mut Balance| {
            if b.refilled_since_lease(refill, period) {
                b.empty_until_ms = 0;
            }
            b.rate.note(now_ms);
            let allowed = b.lease >= cost;
            if allowed {
                b.lease -= cost;
            }
            let remaining = b.taken_from.remaining.max(0) + b.lease as i64;
            (CreditDecision { allowed, remaining, refill_in }, b.lease, u64::from(b.rate.per_second()))
        };
        let (rate, need) = {
            let mut b = self.balances.entry(key_id.to_string()).or_default();
            let (decision, held, rate) = spend(&mut b);
            let need = cost - held.min(cost);
            let short = need > b.taken_from.remaining.max(0) as u64 && b.empty_until_ms != 0;
            if decision.allowed || (short && now_ms < b.empty_until_ms) {
                return Ok(decision);
            }
            if short {
                // One request asks again; the others keep the refusal meanwhile.
                b.empty_until_ms = now_ms + EMPTY_RECHECK_MS;
            }
            (rate, need)
        };
        let want = need.max(rate * LEASE_HORIZON_MS / 1000 * cost);
        let (granted, after) = store.take_credits(key_id, CreditTake { need, want, nodes, refill, period }).await?;
        let mut b = self.balances.entry(key_id.to_string()).or_default();
        b.took_from(after);
        b.lease += granted;
        b.empty_until_ms = if granted < need { now_ms + EMPTY_RECHECK_MS } else { 0 };
        b.rate.unnote();
        Ok(spend(&mut b).0)
    }

    /// Gives back the leases of shared balances idle for a while (all of
    /// them with `all`, when the node stops).
    pub async fn give_back_idle(&self, store: &dyn CreditLedger, now_ms: i64, all: bool) {
        if self.shared.is_none() {
            return;
        }
        let idle: Vec<(String, u64, CreditBalance)> = self
            .balances
            .iter_mut()
            .filter(|b| b.lease > 0 && (all || now_ms - b.rate.last_used_ms > LEASE_IDLE_MS))
            .map(|mut b| (b.key().clone(), std::mem::take(&mut b.lease), b.taken_from))
            .collect();
        for (key_id, units, from) in idle {
            if let Err(e) = store.return_credits(&key_id, units, from).await {
                tracing::debug!(error = %e, "could not give back unspent credits; they stay spent");
            }
        }
        self.balances.retain(|_, b| b.lease > 0 || !b.pending.is_empty() || now_ms - b.rate.last_used_ms < 60_000);
    }

    /// Spends from a balance already read; `None` if it is not.
    fn try_spend(&self, key_id: &str, terms: &CreditTerms, cost: u32, now_ms: i64) -> Option<CreditDecision> {
        let mut b = self.balances.get_mut(key_id)?;
        let known = b.known.as_mut()?;
        let (refill, period) = due(terms, now_ms);
        known.apply(refill, period, 0);
        let refill_in = next_refill_in(terms, now_ms);
        if known.remaining < i64::from(cost) {
            return Some(CreditDecision { allowed: false, remaining: known.remaining.max(0), refill_in });
        }
        known.remaining -= i64::from(cost);
        let (remaining, generation) = (known.remaining, known.generation);
        note_spent(&mut b, key_id, (generation, refill, period), i64::from(cost));
        Some(CreditDecision { allowed: true, remaining, refill_in })
    }

    /// The balance as this node sees it, given the store's: what it read,
    /// or the store's less what it spent and has not written.
    pub fn seen(&self, key_id: &str, stored: CreditBalance) -> CreditBalance {
        let Some(b) = self.balances.get(key_id) else { return stored };
        if self.shared.is_some() {
            // What other nodes hold counts as spent.
            return CreditBalance { remaining: stored.remaining + b.lease as i64, ..stored };
        }
        b.known.unwrap_or_else(|| replay(stored, &b.pending))
    }

    /// The key's balance changed outside this node (or the key did): read
    /// it again before the next spend.
    pub fn forget(&self, key_id: &str) {
        if let Some(mut b) = self.balances.get_mut(key_id) {
            b.known = None;
            b.empty_until_ms = 0;
        }
        // A lease stays: its units were taken from the store and go back
        // (or are spent) whatever the change was.
        self.balances.remove_if(key_id, |_, b| b.pending.is_empty() && b.known.is_none() && b.lease == 0);
    }

    /// Every balance changed (the node missed changes): read them again.
    pub fn forget_all(&self) {
        self.balances.retain(|_, b| {
            b.known = None;
            b.empty_until_ms = 0;
            !b.pending.is_empty() || b.lease > 0
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
            node.apply(Some(100), period, spent);
        }
        for (period, spent) in batches {
            store.apply(Some(100), period, spent);
        }
        assert_eq!(node.remaining, 70);
        assert_eq!(node, store);
        assert_eq!(effective(node, &terms, T0 + 2 * DAY).0, 100);
        assert_eq!(effective(node, &CreditTerms::default(), T0 + 2 * DAY), (70, None));
        assert_eq!(next_refill_in(&terms, T0), Some(23 * 3600));
    }

    #[test]
    fn a_change_from_outside_keeps_a_shared_balances_lease() {
        let c = Credits::shared(3);
        for key in ["a", "b"] {
            c.balances.insert(key.into(), Balance { lease: 5, ..Balance::default() });
        }
        c.forget("a");
        c.forget_all();
        for key in ["a", "b"] {
            assert_eq!(c.balances.get(key).map(|b| b.lease), Some(5), "{key}: the units taken must go back or be spent");
        }
        c.balances.insert("idle".into(), Balance::default());
        c.forget("idle");
        assert!(c.balances.get("idle").is_none());
    }

    #[test]
    fn a_balance_is_spent_whole_then_refused() {
        let c = Credits::default();
        let terms = CreditTerms::default();
        c.balances.insert(
            "k".into(),
            Balance { known: Some(CreditBalance { remaining: 3, ..Default::default() }), ..Balance::default() },
        );
        assert_eq!(c.try_spend("k", &terms, 2, T0).unwrap().remaining, 1);
        let refused = c.try_spend("k", &terms, 2, T0).unwrap();
        assert!(!refused.allowed);
        assert_eq!((refused.remaining, refused.refill_in), (1, None));
        let pending = c.take_unflushed();
        assert_eq!(pending.iter().map(|p| p.spent).sum::<i64>(), 2, "only what was spent is written");
        assert!(c.take_unflushed().is_empty());
    }

    #[tokio::test]
    async fn a_settled_cost_is_taken_down_to_empty_or_given_back_on_either_kind_of_balance() {
        use crate::keys::model::{ApiKey, Env};
        use crate::keys::token::TokenHash;
        use crate::store::{sqlite::SqliteStore, CreditChange, Records, UsageLog};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db")).unwrap();
        let terms = CreditTerms::default();
        for (key_id, node) in [("key_a", Credits::default()), ("key_b", Credits::shared(2))] {
            let key = ApiKey::blank(key_id.into(), Env::Live, format!("kg_live_{key_id}"), 0);
            store.insert_key(&key, &TokenHash::of(key_id), None).await.unwrap();
            store.change_credits(key_id, CreditChange::Set(1000), None, 0, None).await.unwrap();
            assert_eq!(node.spend(&store, key_id, &terms, 1, T0).await.unwrap().remaining, 999);
            node.settle(&store, key_id, &terms, 499, T0).await.unwrap();
            node.settle(&store, key_id, &terms, -100, T0).await.unwrap();
            assert!(node.spend(&store, key_id, &terms, 600, T0).await.unwrap().allowed, "{key_id}: 600 left");
            node.settle(&store, key_id, &terms, 5_000, T0).await.unwrap();
            assert!(!node.spend(&store, key_id, &terms, 1, T0).await.unwrap().allowed, "{key_id}: taken down to empty");
            for spend in node.take_unflushed() {
                store.record_meter(&[], &[spend]).await.unwrap();
            }
            node.give_back_idle(&store, T0 + 10_000, true).await;
            assert_eq!(store.credit_balance(key_id).await.unwrap().unwrap().remaining, 0, "{key_id}: never below empty");
        }
    }

    #[tokio::test]
    async fn an_empty_shared_balance_is_asked_again_only_after_a_pause_or_a_top_up() {
        use crate::keys::model::{ApiKey, Env};
        use crate::keys::token::TokenHash;
        use crate::store::{sqlite::SqliteStore, CreditChange, Records};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db")).unwrap();
        let key = ApiKey::blank("key_a".into(), Env::Live, "kg_live_a".into(), 0);
        store.insert_key(&key, &TokenHash::of("token-a"), None).await.unwrap();
        store.change_credits("key_a", CreditChange::Set(2), None, 0, None).await.unwrap();
        let terms = CreditTerms::default();
        let (node, other) = (Credits::shared(2), Credits::shared(2));
        assert!(other.spend(&store, "key_a", &terms, 1, T0).await.unwrap().allowed);
        assert!(node.spend(&store, "key_a", &terms, 1, T0).await.unwrap().allowed);
        assert!(!node.spend(&store, "key_a", &terms, 1, T0).await.unwrap().allowed);
        // Units come back behind the node's back (another node gives back,
        // with `other`'s lease ending): the node is short from memory...
        store.return_credits("key_a", 1, store.credit_balance("key_a").await.unwrap().unwrap()).await.unwrap();
        assert!(!node.spend(&store, "key_a", &terms, 1, T0 + 100).await.unwrap().allowed);
        // ...until the pause is over.
        assert!(node.spend(&store, "key_a", &terms, 1, T0 + EMPTY_RECHECK_MS).await.unwrap().allowed);
        let later = T0 + EMPTY_RECHECK_MS + 1;
        assert!(!node.spend(&store, "key_a", &terms, 1, later).await.unwrap().allowed);
        // A top-up comes by the change feed and is seen at once.
        store.change_credits("key_a", CreditChange::Add(5), None, 0, None).await.unwrap();
        node.forget("key_a");
        assert!(node.spend(&store, "key_a", &terms, 1, later).await.unwrap().allowed);
    }
}
