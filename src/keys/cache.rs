//! The per-node key cache: a sharded map from token hash to the key it
//! resolves to, so the hot path for a known key touches no store and no
//! lock shared by every request. Misses are single-flight (one store call
//! however many requests wait), unknown tokens are cached briefly
//! (negative cache), and a store error is never cached: a cached key keeps
//! working while the store is down, an uncached one gets 503.

use super::model::KeyLookup;
use super::token::TokenHash;
use crate::store::{Store, StoreError};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

type Fetch = Arc<OnceCell<Result<Option<Arc<KeyLookup>>, StoreError>>>;

#[derive(Clone)]
struct Entry {
    /// `None`: the store said no such token.
    found: Option<Arc<KeyLookup>>,
    fetched: Instant,
}

/// Where an answer came from, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Cache,
    Store,
    /// The store failed; an expired cache entry answered instead.
    Stale,
}

/// Cache of resolved keys.
pub struct KeyCache {
    entries: DashMap<TokenHash, Entry>,
    inflight: DashMap<TokenHash, Fetch>,
    /// Bumped by every invalidation, so a fetch that raced one is not cached.
    generation: AtomicU64,
    ttl: Duration,
    negative_ttl: Duration,
}

impl KeyCache {
    /// An empty cache.
    pub fn new(ttl: Duration, negative_ttl: Duration) -> KeyCache {
        KeyCache { entries: DashMap::new(), inflight: DashMap::new(), generation: AtomicU64::new(0), ttl, negative_ttl }
    }

    /// Resolves a token hash: cache first, then the store.
    pub async fn resolve(&self, hash: &TokenHash, store: &dyn Store) -> Result<(Option<Arc<KeyLookup>>, Origin), StoreError> {
        let now = Instant::now();
        let stale = match self.entries.get(hash) {
            Some(e) => {
                let ttl = if e.found.is_some() { self.ttl } else { self.negative_ttl };
                if now.duration_since(e.fetched) < ttl {
                    return Ok((e.found.clone(), Origin::Cache));
                }
                e.found.clone()
            }
            None => None,
        };
        let generation = self.generation.load(Ordering::Acquire);
        let fetch: Fetch = self.inflight.entry(*hash).or_default().clone();
        let result = fetch.get_or_init(|| async { store.key_by_hash(hash).await.map(|o| o.map(Arc::new)) }).await.clone();
        self.inflight.remove_if(hash, |_, v| Arc::ptr_eq(v, &fetch));
        match result {
            Ok(found) => {
                if self.generation.load(Ordering::Acquire) == generation {
                    self.entries.insert(*hash, Entry { found: found.clone(), fetched: Instant::now() });
                }
                Ok((found, Origin::Store))
            }
            Err(e) => match stale {
                Some(key) => Ok((Some(key), Origin::Stale)),
                None => Err(e),
            },
        }
    }

    /// Drops every entry of one key, and every negative entry (a new key
    /// may now own a token that was unknown a moment ago). Returns how many.
    pub fn invalidate_key(&self, key_id: &str) -> usize {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let before = self.entries.len();
        self.entries.retain(|_, e| e.found.as_ref().is_some_and(|k| k.key.key_id != key_id));
        before.saturating_sub(self.entries.len())
    }

    /// Drops everything (after a gap in the change feed).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }

    /// Entries held, positive and negative.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
