//! The shared conformance suite (`common/conformance.rs`) against SQLite and
//! a real redis-server; `redis_cluster.rs` runs it against a 3-master cluster.

use crate::common::conformance::{conformance, key};
use keygate::keys::token::TokenHash;
use keygate::store::redis::RedisStore;
use keygate::store::redis_conn::RedisHandle;
use keygate::store::sqlite::SqliteStore;
use keygate::store::{ChangeFeed, Records, Resolver};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn redis_store_conforms() {
    let Some(server) = crate::common::redis::RedisServer::start() else { return };
    let calls = prometheus::IntCounterVec::new(prometheus::Opts::new("calls", "calls"), &["op", "result"]).unwrap();
    let handle = RedisHandle::connect(&server.url(), false, Duration::from_secs(1), calls).await.unwrap();
    conformance(&RedisStore::new(Arc::new(handle))).await;
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("k.db")).unwrap();
    conformance(&store).await;
}

#[tokio::test]
async fn sqlite_store_is_shared_between_handles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let writer = SqliteStore::open(&path).unwrap();
    let reader = SqliteStore::open(&path).unwrap();
    let cursor = reader.change_cursor().await.unwrap();
    writer.insert_key(&key("key_x", "x", None), &TokenHash::of("tx"), None).await.unwrap();
    assert!(reader.key_by_hash(&TokenHash::of("tx")).await.unwrap().is_some());
    assert_eq!(reader.changes_since(&cursor).await.unwrap().changes.len(), 1);
}
