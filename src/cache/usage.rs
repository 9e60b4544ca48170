//! `lastUsed` and per-key usage counts, gathered in memory on the request
//! path and written to the store in batches, never synchronously. A failed
//! write keeps its counts for the next try, so nothing is lost while the
//! store is down.

use crate::store::{StoreError, UsageDelta, UsageLog};
use crate::FastHash;
use dashmap::DashMap;

/// Requests counted in one minute, and the units they cost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    admitted: u64,
    refused: u64,
    /// What admitted requests cost: their routes' `cost`, settled with what
    /// the upstream reported (`cost_header`).
    units: i64,
}

impl Counts {
    fn is_empty(&self) -> bool {
        *self == Counts::default()
    }

    fn add(&mut self, other: Counts) {
        self.admitted += other.admitted;
        self.refused += other.refused;
        self.units += other.units;
    }
}

#[derive(Debug, Default)]
struct Pending {
    /// The key's owner when last seen (usage reports group by it).
    owner: String,
    minute: i64,
    counts: Counts,
    last_used: i64,
    /// Counts of earlier minutes not yet written.
    earlier: Vec<(i64, Counts)>,
}

/// Usage not yet written.
#[derive(Default)]
pub struct UsageRecorder {
    pending: DashMap<String, Pending, FastHash>,
}

impl UsageRecorder {
    /// Notes one admitted request of `key_id` at `now` (Unix seconds)
    /// that cost `units`.
    pub fn record(&self, key_id: &str, owner: &str, now: i64, units: u32) {
        self.note(key_id, owner, now, Counts { admitted: 1, refused: 0, units: i64::from(units) });
    }

    /// Notes one request of `key_id` refused by a limit, quota or credits.
    pub fn refused(&self, key_id: &str, owner: &str, now: i64) {
        self.note(key_id, owner, now, Counts { admitted: 0, refused: 1, units: 0 });
    }

    /// Notes that an admitted request cost `delta` units more (or fewer)
    /// than was recorded: what its upstream reported.
    pub fn settle(&self, key_id: &str, owner: &str, now: i64, delta: i64) {
        self.note(key_id, owner, now, Counts { admitted: 0, refused: 0, units: delta });
    }

    fn note(&self, key_id: &str, owner: &str, now: i64, counts: Counts) {
        let minute = now / 60;
        if let Some(mut p) = self.pending.get_mut(key_id) {
            bump(&mut p, minute, now, counts);
            return;
        }
        let mut p = self.pending.entry(key_id.to_string()).or_default();
        if p.owner != owner {
            p.owner = owner.to_string();
        }
        bump(&mut p, minute, now, counts);
    }

    fn take(&self) -> Vec<UsageDelta> {
        let mut out = Vec::new();
        self.pending.retain(|key_id, p| {
            let delta = |(minute, c): (i64, Counts)| UsageDelta {
                key_id: key_id.clone(),
                owner: p.owner.clone(),
                count: c.admitted,
                refused: c.refused,
                units: c.units,
                last_used: p.last_used,
                minute,
            };
            out.extend(p.earlier.iter().copied().map(delta));
            if !p.counts.is_empty() {
                out.push(delta((p.minute, p.counts)));
            }
            false
        });
        out
    }

    /// Writes what is pending; on failure puts it back.
    pub async fn flush(&self, store: &dyn UsageLog) -> Result<usize, StoreError> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(0);
        }
        match store.record_usage(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                for d in batch {
                    let mut p = self.pending.entry(d.key_id).or_default();
                    p.owner = d.owner;
                    let counts = Counts { admitted: d.count, refused: d.refused, units: d.units };
                    bump(&mut p, d.minute, d.last_used, counts);
                }
                Err(e)
            }
        }
    }
}

fn bump(p: &mut Pending, minute: i64, at: i64, counts: Counts) {
    if !p.counts.is_empty() && p.minute != minute {
        let (m, c) = (p.minute, std::mem::take(&mut p.counts));
        match p.earlier.iter_mut().find(|(em, _)| *em == m) {
            Some(slot) => slot.1.add(c),
            None => p.earlier.push((m, c)),
        }
    }
    p.minute = minute;
    p.counts.add(counts);
    if counts.admitted > 0 {
        p.last_used = p.last_used.max(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_minute() {
        let r = UsageRecorder::default();
        r.record("key_a", "acme", 120, 1);
        r.record("key_a", "acme", 130, 5);
        r.refused("key_a", "acme", 140);
        r.record("key_a", "acme", 185, 1);
        r.settle("key_a", "acme", 186, 499);
        r.refused("key_a", "acme", 200);
        r.record("key_b", "", 10, 1);
        let mut batch = r.take();
        batch.sort_by_key(|d| (d.key_id.clone(), d.minute));
        assert_eq!(batch.len(), 3);
        assert_eq!((batch[0].minute, batch[0].count, batch[0].refused, batch[0].units), (2, 2, 1, 6));
        let b = &batch[1];
        assert_eq!((b.minute, b.count, b.refused, b.units, b.last_used), (3, 1, 1, 500, 185));
        assert_eq!(batch[1].owner, "acme");
        assert_eq!(batch[2].key_id, "key_b");
        assert!(r.take().is_empty());
    }
}
