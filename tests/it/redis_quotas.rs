//! Quotas and credits shared by three gateways on one real redis-server:
//! a day quota and a credit balance hit by bursts spread over the nodes
//! admit exactly what they hold, never more; consumption survives a
//! restart of every gateway and of Redis (with AOF on); and a month
//! window, driven with the limiter's clock injected, resets at 00:00 UTC
//! on the 1st.

use crate::common::redis::RedisServer;
use crate::common::*;
use keygate::clock::Period;
use keygate::config::{Algorithm, RedisErrorPolicy};
use keygate::ratelimit::redis::RedisLimiter;
use keygate::ratelimit::Counter;
use keygate::store::redis_conn::RedisHandle;
use std::sync::Arc;
use std::time::Duration;

const PLAN: &str = "\n[plans.metered]\nper_minute = 10000\nper_day = 30\nper_month = 100000\n";

struct Nodes {
    setups: Vec<Setup>,
    gateways: Vec<Gateway>,
}

impl Nodes {
    fn start(upstream: &str, redis: &RedisServer) -> (Nodes, Setup) {
        let first = Setup::redis(upstream, &redis.url(), "nodes_hint = 3\nredis_timeout = \"2s\"");
        let text = std::fs::read_to_string(&first.config).unwrap();
        std::fs::write(&first.config, format!("{text}{PLAN}")).unwrap();
        let setups: Vec<Setup> = (0..3).map(|_| first.another_node()).collect();
        let gateways = setups.iter().map(Setup::start).collect();
        (Nodes { setups, gateways }, first)
    }

    /// `n` requests at once, spread over the nodes: how many were admitted,
    /// and the codes of the refusals.
    async fn burst(&self, token: &str, n: usize) -> (usize, Vec<String>) {
        let c = client();
        let sends = (0..n).map(|i| c.get(self.setups[i % 3].url("/api/lists")).bearer_auth(token).send());
        admitted_and_refused(sends, |_| {}).await
    }

    /// Bursts until nothing more is admitted, with a pause between them
    /// for leases left unspent at a burst's end to go back.
    async fn drain(&self, token: &str, n: usize) -> (usize, Vec<String>) {
        let (mut admitted, mut codes) = self.burst(token, n).await;
        loop {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let (more, more_codes) = self.burst(token, n).await;
            codes.extend(more_codes);
            if more == 0 {
                return (admitted, codes);
            }
            admitted += more;
        }
    }

    /// How many credit leases the nodes have asked of Redis.
    async fn credit_takes(&self) -> u64 {
        let series = r#"keygate_redis_calls_total{op="take_credits",result="ok"} "#;
        let mut n = 0;
        for s in &self.setups {
            let text = client().get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
            n += text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
        }
        n
    }

    fn restart(&mut self) {
        let stopped: Vec<Gateway> = std::mem::take(&mut self.gateways);
        for g in stopped {
            assert!(g.stop().success());
        }
        self.gateways = self.setups.iter().map(Setup::start).collect();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn a_day_quota_over_three_nodes_admits_exactly_its_limit_and_survives_restarts() {
    let Some(mut redis) = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]) else { return };
    let up = upstream::start().await;
    let (mut nodes, first) = Nodes::start(&up.url(), &redis);
    let (_, token) = first.create_key(&["--name", "shared", "--role", "read-only", "--plan", "metered"]);
    let (admitted, codes) = nodes.burst(&token, 20).await;
    assert_eq!(admitted, 20);
    assert!(codes.is_empty());
    // Every node restarts: what they took and did not spend goes back.
    nodes.restart();
    let (admitted, codes) = nodes.drain(&token, 40).await;
    assert_eq!(admitted, 10, "the day had 10 left");
    assert!(codes.iter().all(|c| c == "quota_exceeded"), "{codes:?}");
    // Redis restarts (AOF, fsync always): the day is still spent.
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (admitted, _) = nodes.burst(&token, 30).await;
    assert_eq!(admitted, 0, "the day holds 30, all spent before Redis restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn credits_shared_by_three_nodes_are_spent_exactly_and_topped_up_once() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    let (nodes, first) = Nodes::start(&up.url(), &redis);
    // The minute window is wide: the credits alone decide.
    let args = ["--name", "prepaid", "--role", "read-only", "--credits", "25", "--rate-limit", "100000"];
    let (key_id, token) = first.create_key(&args);
    let (admitted, codes) = nodes.drain(&token, 90).await;
    assert_eq!(admitted, 25, "25 credits, bursts of 90 requests over three nodes");
    assert!(codes.iter().all(|c| c == "credits_exhausted"), "{codes:?}");
    // A client calling on with no credits is refused from what the node
    // knows, not with a Redis command each.
    let before = nodes.credit_takes().await;
    let started = std::time::Instant::now();
    for _ in 0..4 {
        let (admitted, _) = nodes.burst(&token, 60).await;
        assert_eq!(admitted, 0);
    }
    // Each node asks again at most every 250 ms.
    let bound = 3 * (started.elapsed().as_millis() as u64 / 250 + 2);
    let asked = nodes.credit_takes().await - before;
    assert!(asked <= bound, "240 refusals asked Redis {asked} times (at most {bound})");
    // A top-up from the CLI reaches every node; leases are never more than the balance.
    first.cli_json(&["keys", "credits", &key_id, "--add", "7"]);
    let (admitted, _) = nodes.drain(&token, 30).await;
    assert_eq!(admitted, 7);
    // The nodes have given back what they held: the balance reads 0.
    let usage = first.cli_json(&["keys", "usage", &key_id]);
    assert_eq!(usage["credits"]["remaining"], 0, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn a_month_window_on_redis_resets_at_midnight_utc_on_the_first() {
    let Some(redis) = RedisServer::start() else { return };
    let metrics = keygate::metrics::Metrics::new().unwrap();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let handle =
            RedisHandle::connect(&redis.url(), false, Duration::from_secs(2), metrics.redis_calls.clone()).await.unwrap();
        nodes.push(RedisLimiter::new(Arc::new(handle), 3));
    }
    // The last second of a 31-day month, then the first of the next.
    let last = keygate::clock::parse_rfc3339("2031-01-31T23:59:59Z").unwrap() * 1000;
    let counter = Counter { id: "key_month", period: Period::Month };
    let mut admitted = 0;
    for i in 0..50 {
        let d =
            nodes[i % 3].check(Algorithm::SlidingWindow, counter, 20, 2, last + i as i64, RedisErrorPolicy::Deny, &metrics).await;
        if d.allowed {
            admitted += 1;
        } else {
            assert_eq!(d.retry_after, 1, "{d:?}");
            assert_eq!(d.reset_at, last / 1000 + 1);
        }
    }
    assert_eq!(admitted, 10, "20 units of cost 2 over three nodes");
    let feb = last + 1000;
    let d = nodes[0].check(Algorithm::SlidingWindow, counter, 20, 2, feb, RedisErrorPolicy::Deny, &metrics).await;
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.reset_at, keygate::clock::parse_rfc3339("2031-03-01T00:00:00Z").unwrap(), "February has 28 days");
    // The month's counter lives about two months, not forever.
    let ttl = crate::common::redis::command(redis.port, "PTTL kg:rl:{key_month}:mo:24373").unwrap();
    let ttl: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
    assert!(ttl > 40 * 86_400_000 && ttl < 70 * 86_400_000, "{ttl}");
}

/// Two nodes on one Redis store with the local limiter (their minute
/// windows their own): the credits still come from the store's one
/// balance, so 10 credits admit 10 requests over both nodes, not 10 each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn credits_on_a_shared_store_are_exact_with_the_local_limiter_too() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    let first = Setup::redis(&up.url(), &redis.url(), "");
    let text = std::fs::read_to_string(&first.config).unwrap();
    let local = text.replace("[rate_limit]\nbackend = \"redis\"\n", "[rate_limit]\nbackend = \"local\"\n");
    assert_ne!(local, text);
    std::fs::write(&first.config, local).unwrap();
    let setups: Vec<Setup> = (0..2).map(|_| first.another_node()).collect();
    let _gateways: Vec<Gateway> = setups.iter().map(Setup::start).collect();
    let (key_id, token) =
        first.create_key(&["--name", "prepaid", "--role", "read-only", "--credits", "10", "--rate-limit", "100000"]);
    let c = client();
    let mut admitted = 0;
    for round in 0..4 {
        let sends = (0..30).map(|i| c.get(setups[i % 2].url("/api/lists")).bearer_auth(&token).send());
        for r in futures_util::future::join_all(sends).await {
            match r.unwrap().status().as_u16() {
                200 => admitted += 1,
                429 => {}
                other => panic!("unexpected status {other}"),
            }
        }
        if round < 3 {
            // Leases left unspent go back to the balance.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    assert_eq!(admitted, 10, "10 credits over two nodes with local limiters");
    let usage = first.cli_json(&["keys", "usage", &key_id]);
    assert_eq!(usage["credits"]["remaining"], 0, "{usage}");
}
