//! Redis faults the nodes must ride out without refusing keys they know
//! (a restart that loads a large data set: Redis answers `-LOADING`, yet
//! accepts SUBSCRIBE, for seconds) or missing a change (a data set restored
//! from an older copy, whose change feed went back).

use crate::common::redis::{command, command_within, RedisServer};
use crate::common::*;
use std::time::{Duration, Instant};

/// A gateway on `redis` with a read-only key, already cached by one request.
struct Keyed {
    _up: upstream::Upstream,
    s: Setup,
    gw: Gateway,
    id: String,
    token: String,
    url: String,
}

async fn keyed_gateway(redis: &RedisServer) -> Keyed {
    let up = upstream::start().await;
    let s = Setup::redis(&up.url(), &redis.url(), "");
    let (id, token) = s.create_key(&["--name", "reader", "--role", "read-only", "--rate-limit", "100000"]);
    let gw = s.start();
    let url = s.url("/api/lists");
    assert_eq!(client().get(&url).bearer_auth(&token).send().await.unwrap().status(), 200);
    Keyed { _up: up, s, gw, id, token, url }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn cached_keys_keep_working_while_a_restarted_redis_loads_its_data() {
    let Some(redis) = RedisServer::start_with(&["--enable-debug-command", "yes"]) else { return };
    // Bound whole: its temporary folder and upstream must outlive the test.
    let k = keyed_gateway(&redis).await;
    let (gw, token, url) = (&k.gw, &k.token, &k.url);
    // A data set that takes Redis a few seconds to load, saved to its folder.
    let populated = command_within(redis.port, "DEBUG POPULATE 3000000 filler 16", Duration::from_secs(120));
    assert!(populated.unwrap().starts_with("+OK"));
    let saved = tokio::task::spawn_blocking(move || {
        let reply = command_within(redis.port, "SAVE", Duration::from_secs(120)).unwrap();
        (redis, reply)
    });
    let (mut redis_back, reply) = saved.await.unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");
    redis_back.restart_loading();
    let port = redis_back.port;

    // Ask with the cached key until Redis has loaded, and a second more.
    let (mut statuses, mut saw_loading, mut loaded_at) = (Vec::new(), false, None::<Instant>);
    let deadline = Instant::now() + Duration::from_secs(30);
    while loaded_at.is_none_or(|t| t.elapsed() < Duration::from_secs(1)) && Instant::now() < deadline {
        statuses.push(client().get(url).bearer_auth(token).send().await.unwrap().status().as_u16());
        match command(port, "PING") {
            Ok(r) if r.starts_with("-LOADING") => saw_loading = true,
            Ok(r) if r.starts_with("+PONG") && loaded_at.is_none() => loaded_at = Some(Instant::now()),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_loading, "Redis loaded too fast to test anything");
    let refused = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(
        refused,
        0,
        "{refused} of {} requests with a cached key were refused while Redis loaded: {statuses:?}\n{}",
        statuses.len(),
        gw.log_text()
    );
    drop(redis_back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn changes_after_redis_came_back_from_an_older_snapshot_reach_every_node_within_a_second() {
    let Some(mut redis) = RedisServer::start() else { return };
    let k = keyed_gateway(&redis).await;
    let (s, gw, id, token, url) = (&k.s, &k.gw, &k.id, &k.token, &k.url);
    let other = s.another_node();
    let gw2 = other.start();
    let url2 = other.url("/api/lists");
    let (_, second) = s.create_key(&["--name", "second", "--role", "read-only"]);
    for (u, t) in [(url, token), (&url2, token), (url, &second), (&url2, &second)] {
        assert_eq!(client().get(u).bearer_auth(t).send().await.unwrap().status(), 200);
    }
    // A snapshot, then changes it does not hold: the feed's sequence moves on.
    assert!(command(redis.port, "SAVE").unwrap().starts_with("+OK"));
    for i in 0..5 {
        s.cli_json(&["keys", "edit", id, "--description", &format!("edit {i}")]);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Redis comes back from the older snapshot (a backup restore, a failover
    // to a lagging replica): its sequence is behind every node's cursor.
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.cli_json(&["roles", "edit", "read-only", "--permission", "contacts.view"]);
    s.cli_json(&["keys", "disable", id]);
    for (u, t, want) in [(url, token, 401), (&url2, token, 401), (url, &second, 403), (&url2, &second, 403)] {
        let applied = eventually(Duration::from_secs(1), || async {
            client().get(u).bearer_auth(t).send().await.unwrap().status() == want
        })
        .await;
        assert!(applied.is_some(), "{u}: not {want} within 1 s of the change:\n{}\n{}", gw.log_text(), gw2.log_text());
    }
}

/// Every key of the store and its serialized value (`DUMP`), as a backup
/// tool copies a live Redis.
fn backup(url: &str) -> Vec<(String, Vec<u8>)> {
    let mut c = ::redis::Client::open(url).unwrap().get_connection().unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    keys.into_iter().map(|k| (k.clone(), ::redis::cmd("DUMP").arg(&k).query(&mut c).unwrap())).collect()
}

/// Replaces everything in the running Redis with the backup: its clients
/// (and subscriptions) stay connected.
fn restore(url: &str, saved: &[(String, Vec<u8>)]) {
    let mut c = ::redis::Client::open(url).unwrap().get_connection().unwrap();
    let _: () = ::redis::cmd("FLUSHALL").query(&mut c).unwrap();
    for (key, value) in saved {
        let _: () = ::redis::cmd("RESTORE").arg(key).arg(0).arg(value).query(&mut c).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn a_revocation_in_a_restored_feed_that_already_passed_the_cursor_is_applied() {
    let Some(redis) = RedisServer::start() else { return };
    let k = keyed_gateway(&redis).await;
    let (s, gw, id, token, url) = (&k.s, &k.gw, &k.id, &k.token, &k.url);
    let saved = backup(&redis.url());
    for i in 0..3 {
        s.create_key(&["--name", &format!("after the backup {i}")]);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // While the node is not looking (stopped), the backup is restored and
    // written to until its sequence is past the node's cursor: the number
    // alone no longer tells that the feed went back.
    gw.signal("STOP");
    restore(&redis.url(), &saved);
    s.cli_json(&["keys", "disable", id]);
    for i in 0..3 {
        s.create_key(&["--name", &format!("after the restore {i}")]);
    }
    gw.signal("CONT");
    let refused = eventually(Duration::from_secs(1), || async {
        client().get(url).bearer_auth(token).send().await.unwrap().status() == 401
    })
    .await;
    assert!(refused.is_some(), "a key disabled after the restore stayed accepted:\n{}", gw.log_text());
}
