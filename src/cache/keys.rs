//! The per-node key cache: a sharded map from a keyed hash of the token to
//! the key it resolves to, so the hot path for a known key touches no
//! store, no lock shared by every request, and no SHA-256. Misses are
//! single-flight (one store call however many requests wait), unknown
//! tokens are cached briefly (negative cache), and a store error is never
//! cached: a cached key keeps working while the store is down, an uncached
//! one gets 503.

use crate::keys::model::KeyLookup;
use crate::keys::token::TokenHash;
use crate::store::{Resolver, StoreError};
use crate::FastHash;
use dashmap::DashMap;
use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

type Fetch = Arc<OnceCell<Result<Option<Arc<KeyLookup>>, StoreError>>>;

/// What the cache knows a token by: SipHash-2-4 (128 bits) under a key
/// drawn when the cache is made. Like the store's SHA-256 it keeps no
/// secret in memory, and without the key no one can aim two tokens at one
/// entry; it costs a tenth of a SHA-256 on a CPU without SHA extensions,
/// which is then computed on a miss only (the store's lookup).
#[derive(Clone, Copy)]
struct Tag(u64, u64);

impl std::hash::Hash for Tag {
    /// A keyed hash is already uniform: one word is hash enough.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

impl PartialEq for Tag {
    /// Constant-time, as every comparison of a token's hash is.
    fn eq(&self, other: &Tag) -> bool {
        use subtle::ConstantTimeEq;
        ((self.0 ^ other.0) | (self.1 ^ other.1)).ct_eq(&0).into()
    }
}

impl Eq for Tag {}

#[derive(Clone)]
struct Entry {
    /// `None`: the store said no such token.
    found: Option<Arc<KeyLookup>>,
    fetched: Instant,
    /// To be asked of the store again before it is trusted (see
    /// [`KeyCache::expire_all`]); until the store answers, it still serves.
    stale: bool,
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
    entries: DashMap<Tag, Entry, FastHash>,
    inflight: DashMap<Tag, Fetch, FastHash>,
    /// The key of every [`Tag`], this process's own.
    tag_key: (u64, u64),
    /// Bumped by every invalidation, so a fetch that raced one is not cached.
    generation: AtomicU64,
    ttl: Duration,
    negative_ttl: Duration,
    /// Longest a store lookup may take before the request gets 503.
    lookup_timeout: Duration,
}

impl KeyCache {
    /// An empty cache.
    pub fn new(ttl: Duration, negative_ttl: Duration, lookup_timeout: Duration) -> KeyCache {
        use rand::Rng;
        let mut rng = rand::rngs::OsRng;
        KeyCache {
            entries: DashMap::default(),
            inflight: DashMap::default(),
            tag_key: (rng.gen(), rng.gen()),
            generation: AtomicU64::new(0),
            ttl,
            negative_ttl,
            lookup_timeout,
        }
    }

    fn tag(&self, token: &str) -> Tag {
        let mut hasher = SipHasher24::new_with_keys(self.tag_key.0, self.tag_key.1);
        hasher.write(token.as_bytes());
        let h = hasher.finish128();
        Tag(h.h1, h.h2)
    }

    /// Resolves a token: cache first (fresh as of `now`), then the store.
    pub async fn resolve(
        &self,
        token: &str,
        store: &dyn Resolver,
        now: Instant,
    ) -> Result<(Option<Arc<KeyLookup>>, Origin), StoreError> {
        let tag = self.tag(token);
        let stale = match self.entries.get(&tag) {
            Some(e) => {
                let ttl = if e.found.is_some() { self.ttl } else { self.negative_ttl };
                if !e.stale && now.saturating_duration_since(e.fetched) < ttl {
                    return Ok((e.found.clone(), Origin::Cache));
                }
                e.found.clone()
            }
            None => None,
        };
        // Boxed: the store's path is rare, and unboxed its state would
        // make every request's future (moved at each await) larger.
        Box::pin(self.fetch(tag, token, store, stale)).await
    }

    /// A miss: one lookup per token at a time, shared by concurrent callers.
    async fn fetch(
        &self,
        tag: Tag,
        token: &str,
        store: &dyn Resolver,
        stale: Option<Arc<KeyLookup>>,
    ) -> Result<(Option<Arc<KeyLookup>>, Origin), StoreError> {
        let generation = self.generation.load(Ordering::Acquire);
        let fetch: Fetch = self.inflight.entry(tag).or_default().clone();
        let hash = TokenHash::of(token);
        let lookup = async {
            match tokio::time::timeout(self.lookup_timeout, store.key_by_hash(&hash)).await {
                Ok(found) => found.map(|o| o.map(Arc::new)),
                Err(_) => Err(StoreError::Unavailable(format!("no answer within {:?}", self.lookup_timeout))),
            }
        };
        let result = fetch.get_or_init(|| lookup).await.clone();
        self.inflight.remove_if(&tag, |_, v| Arc::ptr_eq(v, &fetch));
        match result {
            Ok(found) => {
                if self.generation.load(Ordering::Acquire) == generation {
                    self.entries.insert(tag, Entry { found: found.clone(), fetched: Instant::now(), stale: false });
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

    /// Marks every entry stale: each is asked of the store again at its
    /// next use, and meanwhile answers only if the store cannot (after a
    /// gap in the change feed or a lost subscription: changes may have been
    /// missed, but a store still loading its data set after a restart must
    /// not turn every cached key into a 503). Unknown-token entries go.
    pub fn expire_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.retain(|_, e| e.found.is_some());
        for mut entry in self.entries.iter_mut() {
            entry.stale = true;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::model::{ApiKey, Env, Role};
    use crate::store::sqlite::SqliteStore;
    use crate::store::*;
    use async_trait::async_trait;
    use std::sync::atomic::AtomicBool;

    /// The real SQLite store with a lookup counter, a switch that makes it
    /// fail, and an optional delay: enough to watch the cache's behaviour.
    struct Instrumented {
        inner: SqliteStore,
        lookups: AtomicU64,
        failing: AtomicBool,
        delay: Duration,
    }

    /// Only the part of the store the cache uses.
    #[async_trait]
    impl Resolver for Instrumented {
        async fn key_by_hash(&self, hash: &TokenHash) -> Result<Option<KeyLookup>, StoreError> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("switched off".into()));
            }
            self.inner.key_by_hash(hash).await
        }
        async fn list_roles(&self) -> Result<Vec<Role>, StoreError> {
            self.inner.list_roles().await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.inner.ping().await
        }
    }

    fn key(id: &str) -> ApiKey {
        ApiKey {
            key_id: id.into(),
            name: id.into(),
            description: String::new(),
            owner: String::new(),
            role: None,
            permissions: vec![],
            plan: None,
            rate_limit: None,
            allowed_ips: vec![],
            env: Env::Live,
            enabled: true,
            expires_at: None,
            created_at: 0,
            last_used: None,
            usage_count: 0,
            metadata: Default::default(),
            quota: Default::default(),
            credits: None,
            key_prefix: String::new(),
            shadow: false,
            max_in_flight: None,
            version: 1,
        }
    }

    async fn store(delay: Duration) -> (tempfile::TempDir, Arc<Instrumented>) {
        let dir = tempfile::tempdir().unwrap();
        let inner = SqliteStore::open(&dir.path().join("k.db")).unwrap();
        inner.insert_key(&key("key_a"), &TokenHash::of("token-a"), None).await.unwrap();
        let s = Instrumented { inner, lookups: AtomicU64::new(0), failing: AtomicBool::new(false), delay };
        (dir, Arc::new(s))
    }

    fn lookups(s: &Instrumented) -> u64 {
        s.lookups.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn hits_skip_the_store() {
        let (_d, s) = store(Duration::ZERO).await;
        let cache = KeyCache::new(Duration::from_secs(60), Duration::from_secs(60), Duration::from_secs(1));
        let h = "token-a";
        assert_eq!(cache.resolve(h, s.as_ref(), Instant::now()).await.unwrap().1, Origin::Store);
        for _ in 0..10 {
            let (found, origin) = cache.resolve(h, s.as_ref(), Instant::now()).await.unwrap();
            assert_eq!((found.unwrap().key.key_id.as_str(), origin), ("key_a", Origin::Cache));
        }
        assert_eq!(lookups(&s), 1);
    }

    #[tokio::test]
    async fn unknown_tokens_are_cached_negatively_until_a_key_changes() {
        let (_d, s) = store(Duration::ZERO).await;
        let cache = KeyCache::new(Duration::from_secs(60), Duration::from_secs(60), Duration::from_secs(1));
        let h = "token-b";
        for _ in 0..5 {
            assert!(cache.resolve(h, s.as_ref(), Instant::now()).await.unwrap().0.is_none());
        }
        assert_eq!(lookups(&s), 1);
        s.inner.insert_key(&key("key_b"), &TokenHash::of(h), None).await.unwrap();
        cache.invalidate_key("key_b");
        assert!(cache.resolve(h, s.as_ref(), Instant::now()).await.unwrap().0.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_make_one_store_call() {
        let (_d, s) = store(Duration::from_millis(100)).await;
        let cache = Arc::new(KeyCache::new(Duration::from_secs(60), Duration::from_secs(60), Duration::from_secs(1)));
        let h = "token-a";
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, s) = (Arc::clone(&cache), Arc::clone(&s));
                tokio::spawn(async move { cache.resolve(h, s.as_ref(), Instant::now()).await.unwrap().0.is_some() })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(lookups(&s), 1);
    }

    #[tokio::test]
    async fn store_errors_are_never_cached_and_stale_keys_keep_working() {
        let (_d, s) = store(Duration::ZERO).await;
        let cache = KeyCache::new(Duration::from_millis(20), Duration::from_secs(60), Duration::from_secs(1));
        let (known, unknown) = ("token-a", "token-x");
        cache.resolve(known, s.as_ref(), Instant::now()).await.unwrap();
        s.failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Expired entry + store down: the stale key answers.
        assert_eq!(cache.resolve(known, s.as_ref(), Instant::now()).await.unwrap().1, Origin::Stale);
        // Unknown token + store down: an error, not "unknown key", and not remembered.
        assert!(cache.resolve(unknown, s.as_ref(), Instant::now()).await.is_err());
        assert!(cache.resolve(unknown, s.as_ref(), Instant::now()).await.is_err());
        s.failing.store(false, Ordering::SeqCst);
        assert!(cache.resolve(unknown, s.as_ref(), Instant::now()).await.unwrap().0.is_none());
        assert_eq!(cache.resolve(known, s.as_ref(), Instant::now()).await.unwrap().1, Origin::Store);
    }

    #[tokio::test]
    async fn expired_entries_are_asked_again_and_answer_only_while_the_store_cannot() {
        let (_d, s) = store(Duration::ZERO).await;
        let cache = KeyCache::new(Duration::from_secs(60), Duration::from_secs(60), Duration::from_secs(1));
        let (known, unknown) = ("token-a", "token-x");
        cache.resolve(known, s.as_ref(), Instant::now()).await.unwrap();
        cache.resolve(unknown, s.as_ref(), Instant::now()).await.unwrap();
        assert_eq!(cache.len(), 2);
        cache.expire_all();
        assert_eq!(cache.len(), 1, "unknown-token entries go");
        // A store still loading its data after a restart: the key keeps working.
        s.failing.store(true, Ordering::SeqCst);
        assert_eq!(cache.resolve(known, s.as_ref(), Instant::now()).await.unwrap().1, Origin::Stale);
        assert_eq!(cache.resolve(known, s.as_ref(), Instant::now()).await.unwrap().1, Origin::Stale, "still to be asked");
        // Once the store answers, the entry is what it says, and fresh again.
        s.failing.store(false, Ordering::SeqCst);
        assert_eq!(cache.resolve(known, s.as_ref(), Instant::now()).await.unwrap().1, Origin::Store);
        assert_eq!(cache.resolve(known, s.as_ref(), Instant::now()).await.unwrap().1, Origin::Cache);
    }

    #[tokio::test]
    async fn slow_stores_time_out() {
        let (_d, s) = store(Duration::from_millis(500)).await;
        let cache = KeyCache::new(Duration::from_secs(60), Duration::from_secs(60), Duration::from_millis(50));
        let err = cache.resolve("token-a", s.as_ref(), Instant::now()).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)));
    }

    #[tokio::test]
    async fn invalidation_drops_every_entry_of_the_key() {
        let (_d, s) = store(Duration::ZERO).await;
        let cache = KeyCache::new(Duration::from_secs(60), Duration::from_secs(60), Duration::from_secs(1));
        let h = "token-a";
        cache.resolve(h, s.as_ref(), Instant::now()).await.unwrap();
        cache.resolve("nope", s.as_ref(), Instant::now()).await.unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.invalidate_key("key_a"), 2);
        assert!(cache.is_empty());
    }
}
