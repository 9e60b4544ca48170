//! Upstreams as operators run them: HTTPS with a private CA (and mTLS),
//! several targets with round robin or fewest-in-flight, a dead target
//! skipped and ejected, and a request that must never go out twice.

use crate::common::upstream::{self, TestCa};
use crate::common::*;
use reqwest::StatusCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// A setup whose `[[upstreams]]` entry is `block` (name, timeouts kept).
fn with_upstream(block: &str) -> Setup {
    let s = Setup::new("http://placeholder.invalid", "", "");
    let text = std::fs::read_to_string(&s.config).unwrap().replace("url = \"http://placeholder.invalid\"", block);
    std::fs::write(&s.config, text).unwrap();
    s
}

/// A setup whose upstream `backend.internal` is served by `targets`,
/// with `extra` lines in its table.
fn over_targets(targets: &[String], extra: &str) -> Setup {
    let listed: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    with_upstream(&format!("url = \"http://backend.internal\"\ntargets = [{}]\n{extra}", listed.join(", ")))
}

/// A setup reaching `up` over HTTPS as `api.internal`, trusting `ca`.
fn trusting(up: &upstream::Upstream, ca: &TestCa) -> Setup {
    with_upstream(&format!(
        "url = \"https://{}\"\nca_file = \"{}\"\nserver_name = \"api.internal\"",
        up.addr,
        toml_path(&ca.ca_file)
    ))
}

fn toml_path(p: &std::path::Path) -> String {
    p.display().to_string()
}

async fn get(s: &Setup, token: &str, path: &str) -> (StatusCode, serde_json::Value) {
    let resp = client().get(s.url(path)).bearer_auth(token).send().await.unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)))
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_reached_with_its_certificate_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "internal");
    // The certificate names the service, not the address it is reached at.
    let up = upstream::start_tls(ca.server(&["api.internal"], None)).await;
    let s = trusting(&up, &ca);
    let (_, token) = s.create_key(&["--name", "tls", "--role", "read-only"]);
    let gw = s.start();
    for _ in 0..3 {
        let (status, seen) = get(&s, &token, "/api/lists").await;
        assert_eq!(status, StatusCode::OK, "{seen}\n{}", gw.log_text());
        assert_eq!(seen["tls"], true);
        assert_eq!(seen["version"], "HTTP/1.1");
        assert_eq!(seen["headers"]["host"], up.addr.to_string());
    }
    // A POST with a body goes over TLS too, whole.
    let (_, full) = s.create_key(&["--name", "full", "--role", "full-access"]);
    let resp = client().post(s.url("/api/upload")).bearer_auth(&full).body(vec![b'x'; 300_000]).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_of(resp).await["bodyBytes"], 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_keygate_cannot_check_gets_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "internal");
    let stranger = TestCa::new(dir.path(), "stranger");
    let signed_by_stranger = upstream::start_tls(stranger.server(&["api.internal"], None)).await;
    let other_name = upstream::start_tls(ca.server(&["elsewhere.internal"], None)).await;
    for (up, what) in [(&signed_by_stranger, "another CA"), (&other_name, "another name")] {
        let s = trusting(up, &ca);
        let (_, token) = s.create_key(&["--name", "tls", "--role", "read-only"]);
        let gw = s.start();
        let (status, body) = get(&s, &token, "/api/lists").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{what}: {body}");
        assert_eq!(body["code"], "upstream_unavailable", "{what}");
        let log = gw.log_text();
        assert!(log.contains("TLS with") && log.to_lowercase().contains("certificate"), "{what}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_asks_for_a_client_certificate_gets_keygates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "internal");
    let clients = TestCa::new(dir.path(), "clients");
    let up = upstream::start_tls(ca.server(&["127.0.0.1"], Some(&clients))).await;
    let (cert, key) = clients.issue(&["keygate.internal"], true);
    let (cert_file, key_file) = (dir.path().join("gw.pem"), dir.path().join("gw-key.pem"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let base = format!("url = \"https://{}\"\nca_file = \"{}\"", up.addr, toml_path(&ca.ca_file));

    let without = with_upstream(&base);
    let (_, token) = without.create_key(&["--name", "no cert", "--role", "read-only"]);
    let gw = without.start();
    assert_eq!(get(&without, &token, "/api/lists").await.0, StatusCode::BAD_GATEWAY);
    drop(gw);

    let with = with_upstream(&format!(
        "{base}\nclient_cert = {{ cert = \"{}\", key = \"{}\" }}",
        toml_path(&cert_file),
        toml_path(&key_file)
    ));
    let (_, token) = with.create_key(&["--name", "cert", "--role", "read-only"]);
    let gw = with.start();
    let (status, seen) = get(&with, &token, "/api/lists").await;
    assert_eq!(status, StatusCode::OK, "{seen}\n{}", gw.log_text());
    assert_eq!(seen["clientCert"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_take_the_targets_in_turn() {
    let ups = [upstream::start().await, upstream::start().await, upstream::start().await];
    let urls: Vec<String> = ups.iter().map(upstream::Upstream::url).collect();
    let s = over_targets(&urls, "");
    let (_, token) = s.create_key(&["--name", "rr", "--role", "read-only"]);
    let _gw = s.start();
    let mut served = std::collections::HashMap::new();
    for _ in 0..30 {
        let (status, seen) = get(&s, &token, "/api/lists").await;
        assert_eq!(status, StatusCode::OK);
        // Every target is asked for the upstream's name, not its own address.
        assert_eq!(seen["headers"]["host"], "backend.internal");
        *served.entry(seen["servedBy"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    let counts: Vec<i32> = ups.iter().map(|u| served.get(&u.addr.to_string()).copied().unwrap_or(0)).collect();
    assert_eq!(counts, [10, 10, 10], "{served:?}");
    let metrics = client().get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    for u in &ups {
        let line = format!("keygate_upstream_requests_total{{result=\"ok\",target=\"{}\",upstream=\"backend\"}}", u.addr);
        assert_eq!(metric(&metrics, &line), Some(10.0), "{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_is_skipped_then_ejected() {
    let live = upstream::start().await;
    let dead_port = free_port();
    let s = over_targets(&[format!("http://127.0.0.1:{dead_port}"), live.url()], "health = { failures = 2, eject = \"30s\" }");
    let (_, token) = s.create_key(&["--name", "dead", "--role", "full-access"]);
    let _gw = s.start();
    // Nothing of a refused request was sent: it goes to the other target,
    // a POST with a body too.
    for i in 0..10 {
        let resp = client().post(s.url("/api/lists")).bearer_auth(&token).body(format!("{{\"n\":{i:02}}}")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let seen = json_of(resp).await;
        assert_eq!(seen["servedBy"], live.addr.to_string());
        assert_eq!(seen["bodyBytes"], 8);
    }
    let metrics = client().get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    let dead = format!("target=\"127.0.0.1:{dead_port}\",upstream=\"backend\"}}");
    assert_eq!(metric(&metrics, &format!("keygate_upstream_ejections_total{{{dead}")), Some(1.0), "{metrics}");
    // Ejected after two refusals: the next eight never tried it.
    assert_eq!(metric(&metrics, &format!("keygate_upstream_requests_total{{result=\"connect_error\",{dead}")), Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_while_serving_is_routed_around() {
    let (a, b) = (upstream::start().await, upstream::start().await);
    let s = over_targets(&[a.url(), b.url()], "health = { failures = 2, eject = \"30s\" }");
    let (_, token) = s.create_key(&["--name", "killed", "--role", "full-access"]);
    let _gw = s.start();
    let c = client();
    // Both serve, each with kept-alive connections in keygate's pools.
    let mut served = std::collections::HashSet::new();
    for _ in 0..6 {
        let (status, seen) = get(&s, &token, "/api/lists").await;
        assert_eq!(status, StatusCode::OK);
        served.insert(seen["servedBy"].as_str().unwrap().to_string());
    }
    assert_eq!(served.len(), 2);
    a.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Every request still gets its answer, POSTs too, from the survivor.
    for i in 0..10 {
        let resp = if i % 2 == 0 {
            c.get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap()
        } else {
            c.post(s.url("/api/lists")).bearer_auth(&token).body("{}").send().await.unwrap()
        };
        assert_eq!(resp.status(), StatusCode::OK, "request {i} after the kill");
        assert_eq!(json_of(resp).await["servedBy"], b.addr.to_string());
    }
    let metrics = c.get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    let killed = format!("target=\"{}\",upstream=\"backend\"}}", a.addr);
    assert_eq!(metric(&metrics, &format!("keygate_upstream_ejections_total{{{killed}")), Some(1.0), "{metrics}");
}

/// A target that reads each request and closes without answering,
/// counting what it read.
async fn black_hole() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_a_target_received_is_never_sent_to_another() {
    let (hole, seen_by_hole) = black_hole().await;
    let live = upstream::start().await;
    let s = over_targets(&[format!("http://{hole}"), live.url()], "health = { failures = 100 }");
    let (_, token) = s.create_key(&["--name", "once", "--role", "full-access"]);
    let _gw = s.start();
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..6 {
        let resp = client().post(s.url("/api/lists")).bearer_auth(&token).body("{}").send().await.unwrap();
        match resp.status() {
            StatusCode::OK => ok += 1,
            StatusCode::BAD_GATEWAY => failed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hole_count = seen_by_hole.load(Ordering::SeqCst);
    assert_eq!(hole_count, 3, "round robin sends every other request to the black hole");
    // Had a POST the black hole read gone on to the live target, it would
    // have come back 200 and `ok + hole_count` would exceed 6.
    assert_eq!((ok, failed), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_sends_around_a_busy_target() {
    let (a, b) = (upstream::start().await, upstream::start().await);
    let s = over_targets(&[a.url(), b.url()], "balance = \"least_outstanding\"");
    let (_, token) = s.create_key(&["--name", "lo", "--role", "read-only"]);
    let _gw = s.start();
    // One slow request holds a target busy...
    let slow = {
        let (url, token) = (s.url("/api/slow/1500"), token.clone());
        tokio::spawn(async move { json_of(client().get(url).bearer_auth(token).send().await.unwrap()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so the quick ones all go to the other.
    let mut quick = Vec::new();
    for _ in 0..8 {
        let (status, seen) = get(&s, &token, "/api/lists").await;
        assert_eq!(status, StatusCode::OK);
        quick.push(seen["servedBy"].as_str().unwrap().to_string());
    }
    let busy = slow.await.unwrap()["servedBy"].as_str().unwrap().to_string();
    assert!(quick.iter().all(|q| *q != busy), "busy {busy}, quick ones went to {quick:?}");
}

/// Any client can ask for a page whose answer is 503: such answers count
/// against a target only when `health.statuses` lists them, so six of
/// them eject nothing by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_statuses_count_against_a_target() {
    let (a, b) = (upstream::start().await, upstream::start().await);
    let ejections = |metrics: &str, up: &upstream::Upstream| {
        let line = format!("keygate_upstream_ejections_total{{target=\"{}\",upstream=\"backend\"}}", up.addr);
        metric(metrics, &line).unwrap_or(0.0)
    };
    for (statuses, ejected) in [("", 0.0), (", statuses = [503]", 1.0)] {
        let s = over_targets(&[a.url(), b.url()], &format!("health = {{ failures = 2, eject = \"30s\"{statuses} }}"));
        let (_, token) = s.create_key(&["--name", "asker", "--role", "full-access"]);
        let _gw = s.start();
        for _ in 0..6 {
            assert_eq!(get(&s, &token, "/api/contacts/unavailable").await.0, StatusCode::SERVICE_UNAVAILABLE);
        }
        let metrics = client().get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert_eq!((ejections(&metrics, &a), ejections(&metrics, &b)), (ejected, ejected), "statuses{statuses}: {metrics}");
    }
}

/// A JSON log line never holds a key twice: the failing target's address
/// goes by its own name, beside the line's own `target` (its module).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_name_the_failing_target_once() {
    let live = upstream::start().await;
    let dead_port = free_port();
    let s = over_targets(&[format!("http://127.0.0.1:{dead_port}"), live.url()], "health = { failures = 1, eject = \"30s\" }");
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, format!("[log]\nformat = \"json\"\n\n{text}")).unwrap();
    let (_, token) = s.create_key(&["--name", "logged", "--role", "full-access"]);
    let gw = s.start();
    for _ in 0..3 {
        assert_eq!(get(&s, &token, "/api/lists").await.0, StatusCode::OK);
    }
    let log = gw.log_text();
    let warned: Vec<&str> =
        log.lines().filter(|l| l.contains("upstream request failed") || l.contains("target ejected")).collect();
    assert_eq!(warned.len(), 2, "{log}");
    for line in warned {
        assert_eq!(line.matches("\"target\":").count(), 1, "a key twice: {line}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["target_addr"], format!("127.0.0.1:{dead_port}"), "{line}");
    }
}
