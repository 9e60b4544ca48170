//! `lastUsed` and per-key usage counts, gathered in memory on the request
//! path and written to the store in batches, never synchronously. A failed
//! write keeps its counts for the next try, so nothing is lost while the
//! store is down.

use crate::store::{StoreError, UsageDelta, UsageLog};
use crate::FastHash;
use dashmap::DashMap;

#[derive(Debug, Default)]
struct Pending {
    /// The key's owner when last seen (usage reports group by it).
    owner: String,
    minute: i64,
    count: u64,
    refused: u64,
    last_used: i64,
    /// Counts (admitted, refused) of earlier minutes not yet written.
    earlier: Vec<(i64, u64, u64)>,
}

/// Usage not yet written.
#[derive(Default)]
pub struct UsageRecorder {
    pending: DashMap<String, Pending, FastHash>,
}

impl UsageRecorder {
    /// Notes one admitted request of `key_id` at `now` (Unix seconds).
    pub fn record(&self, key_id: &str, owner: &str, now: i64) {
        self.note(key_id, owner, now, (1, 0));
    }

    /// Notes one request of `key_id` refused by a limit, quota or credits.
    pub fn refused(&self, key_id: &str, owner: &str, now: i64) {
        self.note(key_id, owner, now, (0, 1));
    }

    fn note(&self, key_id: &str, owner: &str, now: i64, counts: (u64, u64)) {
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
            let delta = |(minute, count, refused)| UsageDelta {
                key_id: key_id.clone(),
                owner: p.owner.clone(),
                count,
                refused,
                last_used: p.last_used,
                minute,
            };
            out.extend(p.earlier.iter().copied().map(delta));
            if p.count > 0 || p.refused > 0 {
                out.push(delta((p.minute, p.count, p.refused)));
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
                    bump(&mut p, d.minute, d.last_used, (d.count, d.refused));
                }
                Err(e)
            }
        }
    }
}

fn bump(p: &mut Pending, minute: i64, at: i64, (count, refused): (u64, u64)) {
    if (p.count > 0 || p.refused > 0) && p.minute != minute {
        let (m, c, r) = (p.minute, p.count, p.refused);
        match p.earlier.iter_mut().find(|(em, _, _)| *em == m) {
            Some(slot) => {
                slot.1 += c;
                slot.2 += r;
            }
            None => p.earlier.push((m, c, r)),
        }
        p.count = 0;
        p.refused = 0;
    }
    p.minute = minute;
    p.count += count;
    p.refused += refused;
    if count > 0 {
        p.last_used = p.last_used.max(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_minute() {
        let r = UsageRecorder::default();
        r.record("key_a", "acme", 120);
        r.record("key_a", "acme", 130);
        r.refused("key_a", "acme", 140);
        r.record("key_a", "acme", 185);
        r.refused("key_a", "acme", 200);
        r.record("key_b", "", 10);
        let mut batch = r.take();
        batch.sort_by_key(|d| (d.key_id.clone(), d.minute));
        assert_eq!(batch.len(), 3);
        assert_eq!((batch[0].minute, batch[0].count, batch[0].refused), (2, 2, 1));
        assert_eq!((batch[1].minute, batch[1].count, batch[1].refused, batch[1].last_used), (3, 1, 1, 185));
        assert_eq!(batch[1].owner, "acme");
        assert_eq!(batch[2].key_id, "key_b");
        assert!(r.take().is_empty());
    }
}
