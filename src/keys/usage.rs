//! `lastUsed` and per-key usage counts, gathered in memory on the request
//! path and written to the store in batches, never synchronously. A failed
//! write keeps its counts for the next try, so nothing is lost while the
//! store is down.

use crate::store::{Store, StoreError, UsageDelta};
use crate::FastHash;
use dashmap::DashMap;

#[derive(Debug, Default)]
struct Pending {
    minute: i64,
    count: u64,
    last_used: i64,
    /// Counts of earlier minutes not yet written.
    earlier: Vec<(i64, u64)>,
}

/// Usage not yet written.
#[derive(Default)]
pub struct UsageRecorder {
    pending: DashMap<String, Pending, FastHash>,
}

impl UsageRecorder {
    /// Notes one request of `key_id` at `now` (Unix seconds).
    pub fn record(&self, key_id: &str, now: i64) {
        let minute = now / 60;
        if let Some(mut p) = self.pending.get_mut(key_id) {
            bump(&mut p, minute, now, 1);
            return;
        }
        bump(&mut self.pending.entry(key_id.to_string()).or_default(), minute, now, 1);
    }

    fn take(&self) -> Vec<UsageDelta> {
        let mut out = Vec::new();
        self.pending.retain(|key_id, p| {
            for (minute, count) in p.earlier.drain(..) {
                out.push(UsageDelta { key_id: key_id.clone(), count, last_used: p.last_used, minute });
            }
            if p.count > 0 {
                out.push(UsageDelta { key_id: key_id.clone(), count: p.count, last_used: p.last_used, minute: p.minute });
            }
            false
        });
        out
    }

    /// Writes what is pending; on failure puts it back.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(0);
        }
        match store.record_usage(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                for d in batch {
                    bump(&mut self.pending.entry(d.key_id).or_default(), d.minute, d.last_used, d.count);
                }
                Err(e)
            }
        }
    }
}

fn bump(p: &mut Pending, minute: i64, at: i64, count: u64) {
    if p.count > 0 && p.minute != minute {
        let (m, c) = (p.minute, p.count);
        match p.earlier.iter_mut().find(|(em, _)| *em == m) {
            Some(slot) => slot.1 += c,
            None => p.earlier.push((m, c)),
        }
        p.count = 0;
    }
    p.minute = minute;
    p.count += count;
    p.last_used = p.last_used.max(at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_minute() {
        let r = UsageRecorder::default();
        r.record("key_a", 120);
        r.record("key_a", 130);
        r.record("key_a", 185);
        r.record("key_b", 10);
        let mut batch = r.take();
        batch.sort_by_key(|d| (d.key_id.clone(), d.minute));
        assert_eq!(batch.len(), 3);
        assert_eq!((batch[0].minute, batch[0].count), (2, 2));
        assert_eq!((batch[1].minute, batch[1].count, batch[1].last_used), (3, 1, 185));
        assert_eq!(batch[2].key_id, "key_b");
        assert!(r.take().is_empty());
    }
}
