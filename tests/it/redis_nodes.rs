//! Several gateway nodes sharing one real redis-server: shared keys, exact
//! distributed rate limits, fast revocation, and Redis faults.

use crate::common::redis::RedisServer;
use crate::common::*;
use std::time::{Duration, Instant};

async fn get(url: &str, token: &str) -> u16 {
    client().get(url).bearer_auth(token).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn a_burst_across_three_nodes_never_exceeds_the_limit() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    for algorithm in ["fixed_window", "sliding_window"] {
        // A generous Redis timeout: on a loaded machine a timed-out lease
        // request falls back to the node's local limiter (on_redis_error =
        // "local"), which is by design not exact across nodes.
        let extra = format!("algorithm = \"{algorithm}\"\nnodes_hint = 3\nredis_timeout = \"2s\"");
        let first = Setup::redis(&up.url(), &redis.url(), &extra);
        let nodes = [first.another_node(), first.another_node()];
        let (_, token) = first.create_key(&["--name", "burst", "--role", "read-only", "--rate-limit", "50"]);
        let _g0 = first.start();
        let _g1 = nodes[0].start();
        let _g2 = nodes[1].start();
        let urls: Vec<String> = [&first, &nodes[0], &nodes[1]].iter().map(|s| s.url("/api/lists")).collect();
        away_from_window_edge(Duration::from_secs(15)).await;
        let c = client();
        let sends = (0..240).map(|i| c.get(&urls[i % 3]).bearer_auth(&token).send());
        let statuses: Vec<u16> =
            futures_util::future::join_all(sends).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
        let admitted = statuses.iter().filter(|s| **s == 200).count();
        let refused = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!(admitted + refused, 240, "{algorithm}: {statuses:?}");
        assert!(admitted <= 50, "{algorithm}: {admitted} admitted with a limit of 50");
        // Quota leased but not yet spent when the burst ends is at most one
        // lease per node (a quarter of the node's share, here 4).
        assert!(admitted >= 50 - 3 * 4, "{algorithm}: only {admitted} of 50 admitted: leases held back too much");
        // Spread out after the burst, the remaining quota is still found by any node.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut later = 0;
        for url in &urls {
            for _ in 0..10 {
                if get(url, &token).await == 200 {
                    later += 1;
                }
            }
        }
        assert!(admitted + later <= 50, "{algorithm}: {admitted} + {later} admitted with a limit of 50");
        assert_eq!(admitted + later, 50, "{algorithm}: idle leases must be given back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn revocation_reaches_every_node_fast() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    let first = Setup::redis(&up.url(), &redis.url(), "");
    let others = [first.another_node(), first.another_node()];
    let _g0 = first.start();
    let _g1 = others[0].start();
    let _g2 = others[1].start();
    let mut lags = Vec::new();
    for i in 0..30 {
        let (id, token) = first.create_key(&["--name", &format!("victim {i}"), "--role", "read-only", "--rate-limit", "100000"]);
        let urls: Vec<String> = [&others[0], &others[1]].iter().map(|s| s.url("/api/lists")).collect();
        for url in &urls {
            assert_eq!(get(url, &token).await, 200);
        }
        first.cli_json(&["keys", "disable", &id]);
        // Lag: from the CLI's return until every other node refuses the key.
        let committed = Instant::now();
        for url in &urls {
            let refused = eventually(Duration::from_secs(2), || async { get(url, &token).await == 401 }).await;
            assert!(refused.is_some(), "node {url} still accepts a disabled key");
        }
        lags.push(committed.elapsed());
    }
    lags.sort();
    let p50 = lags[lags.len() / 2];
    let p99 = lags[(lags.len() * 99).div_ceil(100) - 1];
    eprintln!("revocation lag over {} trials (2 nodes each): p50 {p50:?}, p99 {p99:?}", lags.len());
    assert!(p99 < Duration::from_secs(1), "revocation took {p99:?}");
    let text = client().get(others[0].admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("keygate_revocation_lag_seconds_count"), "{text}");
    // A Redis node's failure series exist before the first failure.
    assert!(text.contains(r#"keygate_redis_calls_total{op="ratelimit_take",result="timeout"} 0"#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn redis_down_slow_and_back() {
    let Some(mut redis) = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]) else { return };
    let up = upstream::start().await;
    let s = Setup::redis(&up.url(), &redis.url(), "on_redis_error = \"local\"\nnodes_hint = 2\nredis_timeout = \"250ms\"");
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(
            "[[routes]]\nmatch = \"POST /api/broadcasts/{id}/send\"",
            "[[routes]]\nmatch = \"POST /api/broadcasts/{id}/send\"\non_redis_error = \"deny\"",
        )
        .replace(
            "[[routes]]\nmatch = \"GET /api/slow/{ms}\"",
            "[[routes]]\nmatch = \"GET /api/slow/{ms}\"\non_redis_error = \"allow\"",
        );
    std::fs::write(&s.config, text).unwrap();
    let (_, token) = s.create_key(&["--name", "survivor", "--role", "full-access", "--rate-limit", "20"]);
    let (_, unknown_yet) = s.create_key(&["--name", "never used", "--role", "read-only"]);
    let gw = s.start();
    let c = client();
    let lists = s.url("/api/lists");
    let send = s.url("/api/broadcasts/1/send");
    assert_eq!(get(&lists, &token).await, 200);
    assert_eq!(c.post(&send).bearer_auth(&token).send().await.unwrap().status(), 200);

    redis.kill();
    // Cached key: still served; the limiter falls back to limit / nodes_hint on this node.
    let started = Instant::now();
    let statuses: Vec<u16> = futures_util::future::join_all((0..15).map(|_| get(&lists, &token))).await;
    assert!(started.elapsed() < Duration::from_secs(3), "requests stalled on a dead redis: {:?}", started.elapsed());
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((5..=10).contains(&ok), "local fallback admitted {ok} with a share of 10: {statuses:?}");
    // A route that fails closed.
    let resp = c.post(&send).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    // A route that fails open: no limit at all while Redis is away.
    let slow = s.url("/api/slow/0");
    let statuses: Vec<u16> = futures_util::future::join_all((0..25).map(|_| get(&slow, &token))).await;
    assert!(statuses.iter().all(|s| *s == 200), "allow must admit everything: {statuses:?}");
    // A key not cached: 503, never "unknown key".
    let resp = c.get(&lists).bearer_auth(&unknown_yet).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(json_of(resp).await["code"], "store_unavailable");
    assert_eq!(c.get(s.admin_url("/readyz")).send().await.unwrap().status(), 503);

    redis.restart();
    let back = eventually(Duration::from_secs(10), || async { get(&lists, &unknown_yet).await == 200 }).await;
    assert!(back.is_some(), "the gateway did not recover after redis came back:\n{}", gw.log_text());
    // The fail-closed route passes again once the limiter reaches Redis.
    let send_ok = || async { client().post(&send).bearer_auth(&token).send().await.unwrap().status() == 200 };
    let limiter_back = eventually(Duration::from_secs(10), send_ok).await;
    assert!(limiter_back.is_some(), "the limiter did not recover after redis came back");
    eprintln!("recovered: store after {back:?}, limiter {limiter_back:?} later");
    assert_eq!(c.get(s.admin_url("/readyz")).send().await.unwrap().status(), 200);

    // A slow redis (DEBUG SLEEP) must not make requests hang.
    let port = redis.port;
    let sleeper = std::thread::spawn(move || crate::common::redis::command(port, "DEBUG SLEEP 2"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let status = get(&lists, &token).await;
    assert!(started.elapsed() < Duration::from_secs(1), "a request waited {:?} on a sleeping redis", started.elapsed());
    assert!(status == 200 || status == 429, "{status}");
    sleeper.join().unwrap().unwrap();
    let text = c.get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("keygate_ratelimit_fallback_total{policy=\"local\"}"), "{text}");
    assert!(text.contains("keygate_ratelimit_fallback_total{policy=\"deny\"}"), "{text}");
    assert!(text.contains("keygate_ratelimit_fallback_total{policy=\"allow\"} 25"), "{text}");
    assert!(text.contains("keygate_change_subscription_losses_total 1"), "{text}");
}
