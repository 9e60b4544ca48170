//! In-flight limits (#28): `max_in_flight` per key, per plan and (with
//! `scope = "owner"`) per owner; at most that many of a subject's requests
//! reach the upstream at once, the rest get 429 `too_many_in_flight`;
//! exact over two nodes through Redis, where a killed node's slots come
//! back within `slot_ttl`.

use crate::common::redis::RedisServer;
use crate::common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// `n` requests to `/api/slow/{ms}` at once, `tokens[i % len]` on
/// `nodes[i % len]`: the statuses and the codes of refusals.
async fn burst(nodes: &[&Setup], tokens: &[&str], n: usize, ms: u64) -> (usize, Vec<String>) {
    let c = client();
    let sends = (0..n).map(|i| {
        let (node, token) = (nodes[i % nodes.len()], tokens[i % tokens.len()]);
        c.get(node.url(&format!("/api/slow/{ms}"))).bearer_auth(token).send()
    });
    admitted_and_refused(sends, |r| assert_eq!(r.headers()["retry-after"], "1")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_a_plan_and_an_owner_each_hold_at_most_their_slots() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "scope = \"owner\"\nmax_in_flight = 3");
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, format!("{text}\n[plans.single]\nper_minute = 100\nmax_in_flight = 1\n")).unwrap();
    let (_, acme_one) = s.create_key(&["--name", "a1", "--role", "full-access", "--owner", "acme"]);
    let (_, acme_two) = s.create_key(&["--name", "a2", "--role", "full-access", "--owner", "acme"]);
    let (_, single) = s.create_key(&["--name", "single", "--role", "full-access", "--plan", "single"]);
    let (own_id, own) = s.create_key(&["--name", "own", "--role", "full-access", "--max-in-flight", "5"]);
    assert_eq!(s.cli_json(&["keys", "show", &own_id])["maxInFlight"], 5);
    let _gw = s.start();
    away_from_window_edge(Duration::from_secs(10)).await;

    // An owner's keys share the owner's three slots.
    let (admitted, codes) = burst(&[&s], &[&acme_one, &acme_two], 5, 800).await;
    assert_eq!((admitted, codes.len()), (3, 2), "{codes:?}");
    assert!(codes.iter().all(|c| c == "too_many_in_flight"), "{codes:?}");
    // A plan's one slot; a key's own five.
    assert_eq!(burst(&[&s], &[&single], 3, 800).await.0, 1);
    assert_eq!(burst(&[&s], &[&own], 7, 800).await.0, 5);
    assert!(up.slow.peak() <= 5, "peak {}", up.slow.peak());

    // Every slot is free once the answers are out; a refused request took
    // nothing from the minute (the plan's 100 less the one admitted).
    assert_eq!(metric_value(&s, "keygate_in_flight").await, "0");
    let usage = client().get(s.url("/whoami")).bearer_auth(&single).send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(usage["data"]["remaining"], 98, "one admitted, two refused, /whoami peeks: {usage}");
    assert_eq!(burst(&[&s], &[&single], 1, 10).await.0, 1, "the slot came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn two_redis_nodes_share_the_slots_and_a_killed_nodes_come_back() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    let first = Setup::redis(&up.url(), &redis.url(), "nodes_hint = 2\nmax_in_flight = 10\nslot_ttl = \"3s\"");
    let second = first.another_node();
    let (_, token) = first.create_key(&["--name", "busy", "--role", "full-access", "--rate-limit", "10000"]);
    let (a, _b) = (first.start(), second.start());

    // 50 slow requests at once over both nodes: ten reach the upstream.
    let (admitted, codes) = burst(&[&first, &second], &[&token], 50, 1500).await;
    assert_eq!(admitted, 10, "{codes:?}");
    assert!(codes.iter().all(|c| c == "too_many_in_flight"), "{codes:?}");
    assert!(up.slow.peak() <= 10, "peak {}", up.slow.peak());
    // Released as the answers end.
    assert_eq!(burst(&[&first, &second], &[&token], 10, 10).await.0, 10);

    // The first node dies holding all ten: the second refuses until the
    // slots expire, then admits again, within slot_ttl.
    let holding = tokio::spawn({
        let (url, token) = (first.url("/api/slow/1900"), token.clone());
        async move {
            let c = client();
            futures_util::future::join_all((0..10).map(|_| c.get(&url).bearer_auth(&token).send())).await
        }
    });
    let held = eventually(Duration::from_secs(3), || async { up.slow.now() == 10 }).await;
    assert!(held.is_some(), "ten in flight on the first node: {}", up.slow.now());
    drop(a);
    let killed = Instant::now();
    let (admitted, _) = burst(&[&second], &[&token], 1, 10).await;
    assert_eq!(admitted, 0, "the dead node's slots are still held");
    let back = eventually(Duration::from_secs(6), || async { burst(&[&second], &[&token], 1, 10).await.0 == 1 }).await;
    assert!(back.is_some(), "slots did not come back");
    assert!(killed.elapsed() <= Duration::from_millis(3000 + 1000), "back after {:?}", killed.elapsed());
    let _ = holding.await;
}
