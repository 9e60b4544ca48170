//! Redis Cluster: a real 3-master cluster on free loopback ports; the store
//! conformance suite, the limiter and a gateway node all run against it.

use crate::common::redis::{command, RedisServer};
use crate::common::*;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_with(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])?);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed with redis-server");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ok = nodes.iter().all(|n| command(n.port, "CLUSTER INFO").is_ok_and(|i| i.contains("cluster_state:ok")));
            if ok {
                return Some(Cluster { nodes });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster did not become ready");
    }

    fn url(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }
}

fn counter() -> prometheus::IntCounterVec {
    prometheus::IntCounterVec::new(prometheus::Opts::new("calls", "calls"), &["op", "result"]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn store_limiter_and_gateway_on_a_three_master_cluster() {
    let Some(cluster) = Cluster::start() else { return };
    use keygate::store::redis_conn::RedisHandle;

    // The store: every key shares the {kg} hash tag, so its scripts run on one slot.
    let handle = RedisHandle::connect(&cluster.url(), true, Duration::from_secs(1), counter()).await.unwrap();
    let store = keygate::store::redis::RedisStore::new(Arc::new(handle));
    crate::common::conformance::conformance(&store).await;

    // The limiter: counters of different keys spread over the masters, each exact.
    let handle = RedisHandle::connect(&cluster.url(), true, Duration::from_secs(1), counter()).await.unwrap();
    let limiter = keygate::ratelimit::redis::RedisLimiter::new(Arc::new(handle), 1);
    let metrics = keygate::metrics::Metrics::new().unwrap();
    let now = keygate::clock::now_ms();
    let window_start = now - now.rem_euclid(60_000);
    let t = window_start + 1_000.max(now - window_start).min(50_000);
    use keygate::clock::Period;
    for key in ["key_a", "key_b", "key_c", "key_d"] {
        // A minute window, and a month window (cost 2) in the same slot.
        for (period, cost, admits) in [(Period::Minute, 1, 20), (Period::Month, 2, 10)] {
            let counter = keygate::ratelimit::Counter { id: key, period };
            let mut admitted = 0;
            for _ in 0..30 {
                let policy = keygate::config::RedisErrorPolicy::Deny;
                let d = limiter.check(keygate::config::Algorithm::FixedWindow, counter, 20, cost, t, policy, &metrics).await;
                admitted += u32::from(d.allowed);
            }
            assert_eq!(admitted, admits, "{key} {period:?}");
        }
    }
    let slots: Vec<u16> = ["key_a", "key_b", "key_c", "key_d"]
        .iter()
        .map(|k| {
            let reply = command(cluster.nodes[0].port, &format!("CLUSTER KEYSLOT kg:rl:{{{k}}}:1")).unwrap();
            reply.trim_start_matches(':').trim().parse().unwrap()
        })
        .collect();
    assert!(slots.windows(2).any(|w| w[0] != w[1]), "rate-limit counters should not share one slot: {slots:?}");

    // A gateway node on the cluster: keys from the CLI, changes seen through pub/sub.
    let up = upstream::start().await;
    let s = Setup::redis(&up.url(), &cluster.url(), "");
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("backend = \"redis\"\nurl", "backend = \"redis\"\ncluster = true\nurl");
    std::fs::write(&s.config, text).unwrap();
    let (id, token) = s.create_key(&["--name", "clustered", "--role", "read-only", "--rate-limit", "100000"]);
    let _gw = s.start();
    let url = s.url("/api/lists");
    let status = || async { client().get(&url).bearer_auth(&token).send().await.unwrap().status().as_u16() };
    assert_eq!(status().await, 200);
    s.cli_json(&["keys", "disable", &id]);
    assert!(
        eventually(Duration::from_secs(1), || async { status().await == 401 }).await.is_some(),
        "disable not seen on the cluster"
    );
}
