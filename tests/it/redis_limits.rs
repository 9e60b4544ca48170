//! The distributed limit beyond two nodes, against a real redis-server:
//! 3 and 5 nodes, both algorithms, bursts of ten times the limit, a node
//! killed mid-window, a window edge crossed mid-burst and a short Redis
//! stall. Never more than the limit (or, in a stall, than the bound the
//! README gives), and every counter Redis holds expires.

use crate::common::redis::RedisServer;
use crate::common::*;
use std::time::{Duration, Instant};

const ALGORITHMS: [&str; 2] = ["fixed_window", "sliding_window"];

/// `nodes` gateways on one Redis sharing one key of `limit` requests a
/// minute; `extra` goes in their `[rate_limit]` table.
struct Cluster {
    setups: Vec<Setup>,
    gateways: Vec<Option<Gateway>>,
    token: String,
}

impl Cluster {
    fn start(upstream: &str, redis: &RedisServer, nodes: usize, limit: u32, extra: &str) -> Cluster {
        let first = Setup::redis(upstream, &redis.url(), &format!("nodes_hint = {nodes}\n{extra}"));
        let (_, token) = first.create_key(&["--name", "shared", "--role", "read-only", "--rate-limit", &limit.to_string()]);
        let mut setups = vec![first];
        for _ in 1..nodes {
            setups.push(setups[0].another_node());
        }
        let gateways = setups.iter().map(|s| Some(s.start())).collect();
        Cluster { setups, gateways, token }
    }

    /// The URL of every node still running.
    fn urls(&self) -> Vec<String> {
        self.setups.iter().zip(&self.gateways).filter(|(_, g)| g.is_some()).map(|(s, _)| s.url("/api/lists")).collect()
    }

    /// Sends `n` requests at once, spread over the running nodes; returns
    /// each one's status and the window (`X-RateLimit-Reset`) it fell in.
    async fn burst(&self, n: usize) -> Vec<(u16, i64)> {
        let (c, urls) = (client(), self.urls());
        let sends = (0..n).map(|i| c.get(&urls[i % urls.len()]).bearer_auth(&self.token).send());
        futures_util::future::join_all(sends)
            .await
            .into_iter()
            .map(|r| {
                let r = r.unwrap();
                let reset = r.headers().get("x-ratelimit-reset").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
                (r.status().as_u16(), reset)
            })
            .collect()
    }

    fn kill(&mut self, node: usize) {
        self.gateways[node] = None;
    }
}

fn admitted(statuses: &[(u16, i64)]) -> usize {
    statuses.iter().filter(|(s, _)| *s == 200).count()
}

fn assert_only_200_and_429(what: &str, statuses: &[(u16, i64)]) {
    let odd: Vec<_> = statuses.iter().filter(|(s, _)| *s != 200 && *s != 429).collect();
    assert!(odd.is_empty(), "{what}: answers other than 200 and 429: {odd:?}");
}

/// Every rate-limit counter in Redis carries a time to live.
fn assert_every_counter_expires(redis: &RedisServer) {
    let mut c = ::redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("kg:rl:*").query(&mut c).unwrap();
    assert!(!keys.is_empty(), "no rate-limit counter in Redis");
    for key in keys {
        let ttl: i64 = ::redis::cmd("PTTL").arg(&key).query(&mut c).unwrap();
        assert!(ttl > 0, "{key} has no time to live ({ttl})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn bursts_of_ten_times_the_limit_over_three_and_five_nodes_never_exceed_it() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    for nodes in [3, 5] {
        for algorithm in ALGORITHMS {
            // A generous Redis timeout: a lease request that timed out on a
            // loaded machine would fall back, which is not what this tests.
            let cluster =
                Cluster::start(&up.url(), &redis, nodes, 60, &format!("algorithm = \"{algorithm}\"\nredis_timeout = \"2s\""));
            away_from_window_edge(Duration::from_secs(10)).await;
            let statuses = cluster.burst(600).await;
            let what = format!("{nodes} nodes, {algorithm}");
            assert_only_200_and_429(&what, &statuses);
            let n = admitted(&statuses);
            assert!(n <= 60, "{what}: {n} admitted with a limit of 60");
            // What is leased and unspent when the burst ends: at most one
            // lease (a quarter of a node's share) per node.
            let lease = (60 / nodes / 4).max(1);
            assert!(n >= 60 - nodes * lease, "{what}: only {n} of 60 admitted");
        }
    }
    assert_every_counter_expires(&redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn a_node_killed_mid_window_leaves_the_limit_whole() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    for algorithm in ALGORITHMS {
        let mut cluster =
            Cluster::start(&up.url(), &redis, 3, 90, &format!("algorithm = \"{algorithm}\"\nredis_timeout = \"2s\""));
        away_from_window_edge(Duration::from_secs(10)).await;
        let before = cluster.burst(40).await;
        // Killed with its leases: what it held is lost for this window,
        // never handed out twice.
        cluster.kill(2);
        let after = cluster.burst(800).await;
        assert_only_200_and_429(algorithm, &after);
        let n = admitted(&before) + admitted(&after);
        assert!(n <= 90, "{algorithm}: {n} admitted with a limit of 90 and a node killed");
        assert!(admitted(&after) > 0, "{algorithm}: the surviving nodes admitted nothing");
    }
    assert_every_counter_expires(&redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn a_burst_across_a_window_edge_stays_within_each_window() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    let limit = 50;
    let clusters: Vec<Cluster> = ALGORITHMS
        .iter()
        .map(|a| Cluster::start(&up.url(), &redis, 3, limit, &format!("algorithm = \"{a}\"\nredis_timeout = \"2s\"")))
        .collect();
    // Start a second before a window ends; send waves for two seconds.
    let into_window = keygate::clock::now_ms().rem_euclid(60_000);
    tokio::time::sleep(Duration::from_millis((59_000 - into_window).rem_euclid(60_000) as u64)).await;
    let started = Instant::now();
    let mut all: Vec<Vec<(u16, i64)>> = vec![Vec::new(), Vec::new()];
    while started.elapsed() < Duration::from_secs(2) {
        let (fixed, sliding) = tokio::join!(clusters[0].burst(50), clusters[1].burst(50));
        all[0].extend(fixed);
        all[1].extend(sliding);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (algorithm, statuses) in ALGORITHMS.iter().zip(&all) {
        assert_only_200_and_429(algorithm, statuses);
        let mut windows: Vec<i64> = statuses.iter().map(|(_, w)| *w).collect();
        windows.sort_unstable();
        windows.dedup();
        assert!(windows.len() >= 2, "{algorithm}: the burst did not cross a window edge: {windows:?}");
        for w in &windows {
            let n = statuses.iter().filter(|(s, at)| *s == 200 && at == w).count();
            eprintln!("{algorithm}: {n} admitted in the window ending at {w}");
            assert!(n <= limit as usize, "{algorithm}: {n} admitted in the window ending at {w}, limit {limit}");
        }
    }
    // Sliding: the first window still weighs on the start of the next, so
    // the two together admit hardly more than one limit (the weight lost in
    // the ~1 s of the new window this ran in: 50 * 2/60, rounded up).
    let sliding = admitted(&all[1]);
    assert!(sliding <= limit as usize + 2, "sliding: {sliding} admitted across the edge, limit {limit}");
    assert_every_counter_expires(&redis);
}

/// Load at every node for `for_how_long` and until at least `at_least`
/// requests were sent (a loaded machine sends fewer in the time); returns
/// what each got.
async fn steady_load(cluster: &Cluster, for_how_long: Duration, at_least: usize) -> Vec<(u16, i64)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let urls = cluster.urls();
    let (until, sent) = (Instant::now() + for_how_long, std::sync::Arc::new(AtomicUsize::new(0)));
    let workers = (0..urls.len() * 8).map(|i| {
        let (url, token, sent) = (urls[i % urls.len()].clone(), cluster.token.clone(), sent.clone());
        async move {
            let (c, mut got) = (client(), Vec::new());
            while Instant::now() < until || sent.load(Ordering::Relaxed) < at_least {
                sent.fetch_add(1, Ordering::Relaxed);
                let r = c.get(&url).bearer_auth(&token).send().await.unwrap();
                got.push((r.status().as_u16(), 0));
            }
            got
        }
    });
    futures_util::future::join_all(workers).await.concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn a_short_redis_stall_mid_burst_admits_no_more_than_the_bound() {
    let Some(redis) = RedisServer::start_with(&["--enable-debug-command", "yes"]) else { return };
    let up = upstream::start().await;
    for algorithm in ALGORITHMS {
        let (limit, nodes) = (300, 3);
        let cluster =
            Cluster::start(&up.url(), &redis, nodes, limit, &format!("algorithm = \"{algorithm}\"\non_redis_error = \"local\""));
        away_from_window_edge(Duration::from_secs(10)).await;
        // Part of the limit spent through Redis, then Redis stalls and the
        // burst goes on through the stall and after it.
        let mut statuses = cluster.burst(120).await;
        let port = redis.port;
        let stall = tokio::task::spawn_blocking(move || crate::common::redis::command(port, "DEBUG SLEEP 0.3"));
        tokio::time::sleep(Duration::from_millis(30)).await;
        statuses.extend(steady_load(&cluster, Duration::from_millis(1000), 10 * limit as usize / 3).await);
        assert!(stall.await.unwrap().unwrap().starts_with("+OK"));
        assert_only_200_and_429(algorithm, &statuses);
        let n = admitted(&statuses);
        eprintln!("{algorithm}: {n} admitted of {} offered, limit {limit}, a 0.3 s stall", statuses.len());
        assert!(statuses.len() >= 10 * limit as usize / 3, "{algorithm}: only {} requests offered", statuses.len());
        // The bound the README gives: a node alone admits what is left of
        // its share once what Redis granted it is counted; the nodes took
        // leases of a quarter share at most, so with the load spread evenly
        // the window exceeds the limit by at most that much per node.
        let bound = limit as usize + nodes * (limit as usize / nodes / 4);
        assert!(n <= bound, "{algorithm}: {n} admitted with a limit of {limit} (bound {bound}) across a stall");
    }
    assert_every_counter_expires(&redis);
}
