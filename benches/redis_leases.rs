//! How many Redis commands the distributed limiter costs per request, and
//! how exact it is. Three limiter "nodes" share one real redis-server; the
//! clock is simulated (the limiter takes the time as an argument), so a
//! minute of traffic at 10,000 requests per second runs in seconds.
//! Commands are counted with `INFO commandstats`.
//!
//! Each request is counted against one window (a minute) or three
//! (minute, day and month, as a plan with quotas has): each window holds
//! its own lease, so three windows should cost about three times one, and
//! stay far below one command per request.
//!
//! Run: `cargo bench --bench redis_leases` (needs `redis-server`).

use keygate::clock::Period;
use keygate::config::{Algorithm, RedisErrorPolicy};
use keygate::metrics::Metrics;
use keygate::ratelimit::redis::RedisLimiter;
use keygate::ratelimit::Counter;
use keygate::store::redis_conn::RedisHandle;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const NODES: usize = 3;

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_command(port: u16, cmd: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    s.write_all(format!("{cmd}\r\n").as_bytes()).expect("write");
    std::thread::sleep(Duration::from_millis(50));
    let mut buf = vec![0u8; 1 << 16];
    let n = s.read(&mut buf).expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn start_redis() -> Option<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child, port);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// (round trips, all commands incl. those inside scripts) so far.
fn command_counts(port: u16) -> (u64, u64) {
    let info = redis_command(port, "INFO commandstats");
    let mut trips = 0;
    let mut all = 0;
    for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        let name = line.split(':').next().unwrap_or("");
        let calls: u64 = line.split("calls=").nth(1).and_then(|r| r.split(',').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
        if matches!(name, "cmdstat_info") {
            continue;
        }
        all += calls;
        if matches!(name, "cmdstat_evalsha" | "cmdstat_eval" | "cmdstat_script") {
            trips += calls;
        }
    }
    (trips, all)
}

struct Outcome {
    requests: u64,
    admitted: u64,
    trips: u64,
    all: u64,
}

/// Offers `rate` requests per second of one key, spread over the nodes,
/// for `seconds` of simulated time starting at a window boundary; each
/// request is counted in every one of `windows` (all with `limit`), and
/// admitted only when all admit it.
#[allow(clippy::too_many_arguments)]
async fn run(
    port: u16,
    nodes: &[RedisLimiter],
    metrics: &Metrics,
    key: &str,
    (rate, seconds): (u64, u64),
    limit: u32,
    windows: &[Period],
) -> Outcome {
    let start_ms = (keygate::clock::now_ms() / 60_000 + 1) * 60_000;
    let before = command_counts(port);
    let total = rate * seconds;
    let mut admitted = 0;
    let mut next_sweep = start_ms + 500;
    for i in 0..total {
        let now = start_ms + (i * 1000 / rate) as i64;
        while now >= next_sweep {
            for n in nodes {
                n.sweep(next_sweep).await;
            }
            next_sweep += 500;
        }
        let node = &nodes[i as usize % nodes.len()];
        let mut all = true;
        for period in windows {
            let counter = Counter { id: key, period: *period };
            let d = node.check(Algorithm::FixedWindow, counter, limit, 1, now, RedisErrorPolicy::Deny, metrics).await;
            all &= d.allowed;
        }
        admitted += u64::from(all);
    }
    let after = command_counts(port);
    Outcome { requests: total, admitted, trips: after.0 - before.0, all: after.1 - before.1 }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let Some(server) = start_redis() else {
        eprintln!("redis-server is not available: skipping the lease benchmark");
        return;
    };
    let port = server.1;
    let url = format!("redis://127.0.0.1:{port}");
    let metrics = Metrics::new().expect("metrics");
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        let handle = RedisHandle::connect(&url, false, Duration::from_secs(1), metrics.redis_calls.clone()).await.expect("redis");
        nodes.push(RedisLimiter::new(Arc::new(handle), NODES as u32));
    }
    println!(
        "| windows | offered rate per key (req/s) | requests | Redis round trips / request | Redis commands / request (incl. in scripts) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    let three = [Period::Minute, Period::Day, Period::Month];
    for (name, windows) in [("minute", &three[..1]), ("minute + day + month", &three[..])] {
        for (rate, seconds) in [(1u64, 120u64), (100, 60), (10_000, 30)] {
            let key = format!("key_rate_{rate}_{}", windows.len());
            // A limit no burst reaches: this measures cost, not refusals.
            let o = run(port, &nodes, &metrics, &key, (rate, seconds), u32::MAX / 2, windows).await;
            assert_eq!(o.admitted, o.requests);
            println!(
                "| {name} | {rate} | {} | {:.4} | {:.4} |",
                o.requests,
                o.trips as f64 / o.requests as f64,
                o.all as f64 / o.requests as f64
            );
        }
    }
    println!();
    println!("| scenario | limit / window | offered | admitted | over-admission | under-admission |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, rate, limit) in [
        ("flood: 10,000 req/s against 6,000/min", 10_000u64, 6_000u32),
        ("at the limit: 100 req/s against 6,000/min", 100, 6_000),
    ] {
        let key = format!("key_exact_{rate}");
        let o = run(port, &nodes, &metrics, &key, (rate, 60), limit, &[Period::Minute]).await;
        let expected = o.requests.min(u64::from(limit));
        println!(
            "| {name} | {limit} | {} | {} | {} | {} |",
            o.requests,
            o.admitted,
            o.admitted.saturating_sub(expected),
            expected.saturating_sub(o.admitted)
        );
    }
}
