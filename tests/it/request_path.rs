//! The data plane, end to end: the real binary in front of a real upstream,
//! keys made with the real CLI. Statuses, bodies and headers of docs/interface.md
//! ("Answers"); credentials as "Credentials" there says.

use crate::common::*;
use base64::Engine;
use reqwest::StatusCode;
use std::time::Duration;

async fn setup(server_extra: &str, rate_extra: &str) -> (upstream::Upstream, Setup) {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), server_extra, rate_extra);
    (up, s)
}

fn assert_error(v: &serde_json::Value, code: &str) {
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_all_four_places_are_accepted_and_stripped() {
    let (_up, s) = setup("", "").await;
    let (key_id, token) =
        s.create_key(&["--name", "four ways", "--role", "read-only", "--owner", "acct-42", "--meta", "default_optin_mailing=77"]);
    let _gw = s.start();
    let c = client();
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("mail2many:{token}")));
    let requests = vec![
        c.get(s.url("/api/lists?page=2")).bearer_auth(&token),
        c.get(s.url("/api/lists?page=2")).header("X-API-Key", &token),
        c.get(s.url("/api/lists?page=2")).header("Authorization", &basic),
        c.get(s.url(&format!("/api/lists?page=2&api_token={token}"))),
    ];
    for req in requests {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let seen = json_of(resp).await;
        let text = seen.to_string();
        assert!(!text.contains(&token), "the token reached the upstream: {text}");
        assert!(seen["headers"].get("authorization").is_none());
        assert!(seen["headers"].get("x-api-key").is_none());
        assert_eq!(seen["query"], "page=2");
        assert_eq!(seen["path"], "/api/lists");
        assert_eq!(seen["headers"]["x-keygate-key-id"], key_id.as_str());
        assert_eq!(seen["headers"]["x-keygate-owner"], "acct-42");
        assert_eq!(seen["headers"]["x-keygate-role"], "read-only");
        assert_eq!(seen["headers"]["x-keygate-env"], "live");
        assert_eq!(seen["headers"]["x-keygate-meta-default-optin-mailing"], "77");
        assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
        assert_eq!(seen["headers"]["x-forwarded-host"], format!("127.0.0.1:{}", s.data_port));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_identity_and_hop_by_hop_headers_are_dropped() {
    let (_up, s) = setup("", "").await;
    let (key_id, token) = s.create_key(&["--name", "spoof", "--role", "full-access"]);
    let _gw = s.start();
    let c = client();
    let resp = c
        .get(s.url("/api/lists"))
        .bearer_auth(&token)
        .header("X-Keygate-Key-Id", "key_forged")
        .header("X-Keygate-Role", "admin")
        .header("X-Keygate-Meta-Plan", "enterprise")
        .header("Connection", "x-drop-me")
        .header("X-Drop-Me", "1")
        .header("X-Keep-Me", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Hop-by-hop headers of the upstream's response are not passed back either.
    assert!(resp.headers().get("x-hop").is_none());
    assert_eq!(resp.headers()["x-upstream"], "yes");
    let seen = json_of(resp).await;
    assert_eq!(seen["headers"]["x-keygate-key-id"], key_id.as_str());
    assert_eq!(seen["headers"]["x-keygate-role"], "full-access");
    assert!(seen["headers"].get("x-keygate-meta-plan").is_none());
    assert!(seen["headers"].get("x-drop-me").is_none());
    assert_eq!(seen["headers"]["x-keep-me"], "1");
    // Public routes too: no key, and forged identity headers never pass.
    let resp = c.get(s.url("/api/ping")).header("X-Keygate-Key-Id", "key_forged").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = json_of(resp).await;
    assert!(seen["headers"].get("x-keygate-key-id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_body() {
    let (_up, s) = setup("", "").await;
    let (_, reader) = s.create_key(&["--name", "reader", "--role", "read-only"]);
    let (_, test_key) = s.create_key(&["--name", "test env", "--role", "read-only", "--env", "test"]);
    let (_, walled) = s.create_key(&["--name", "walled", "--role", "read-only", "--allow-ip", "203.0.113.0/24"]);
    let (disabled_id, disabled) = s.create_key(&["--name", "off", "--role", "read-only"]);
    s.cli_json(&["keys", "disable", &disabled_id]);
    let _gw = s.start();
    let c = client();

    let resp = c.get(s.url("/api/lists")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_error(&json_of(resp).await, "missing_key");

    for bad in ["kg_live_0000000000000000000000000000000000000000", "not-a-key-at-all-but-long", "short"] {
        let resp = c.get(s.url("/api/lists")).bearer_auth(bad).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{bad}");
        assert_error(&json_of(resp).await, "invalid_key");
    }

    let resp = c.get(s.url("/api/lists")).bearer_auth(&disabled).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_error(&json_of(resp).await, "key_disabled");

    let resp = c.get(s.url("/api/lists")).bearer_auth(&test_key).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_error(&json_of(resp).await, "wrong_environment");

    let resp = c.get(s.url("/api/lists")).bearer_auth(&reader).header("X-API-Key", &walled).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_error(&json_of(resp).await, "ambiguous_credentials");

    let resp = c.get(s.url("/api/lists")).header("Authorization", "Basic !!!notbase64").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_error(&json_of(resp).await, "bad_request");

    let resp = c.get(s.url("/api/lists")).bearer_auth(&walled).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-ratelimit-limit"], "60");
    assert_error(&json_of(resp).await, "ip_blocked");

    let resp = c.post(s.url("/api/lists")).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().contains_key("x-ratelimit-remaining"));
    let body = json_of(resp).await;
    assert_error(&body, "insufficient_permissions");
    assert_eq!(body["required"], "lists.create");

    let resp = c.get(s.url("/api/nothing-here")).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_error(&json_of(resp).await, "no_route");
    // Method mismatch is no route either (deny by default).
    let resp = c.delete(s.url("/api/lists")).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_refused() {
    let (_up, s) = setup("", "").await;
    let (key_id, token) = s.create_key(&["--name", "short-lived", "--role", "read-only", "--expires-in-days", "1"]);
    // Move the expiry into the past through the real store.
    let store = keygate::store::sqlite::SqliteStore::open(&s.dir.path().join("keygate.db")).unwrap();
    use keygate::store::Records;
    let mut key = store.get_key(&key_id).await.unwrap().unwrap();
    key.expires_at = Some(keygate::clock::now_unix() - 5);
    store.update_key(&key, None).await.unwrap();
    let _gw = s.start();
    let resp = client().get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_error(&json_of(resp).await, "key_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_expiring_within_seconds_is_served_then_refused() {
    let (_up, s) = setup("", "").await;
    let (_, token) = s.create_key(&["--name", "afternoon", "--role", "read-only", "--expires-in", "2s"]);
    let _gw = s.start();
    let status = || async { client().get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap().status() };
    assert_eq!(status().await, 200);
    // Cached meanwhile: the expiry is checked on every request, not at lookup.
    let refused = eventually(Duration::from_secs(4), || async { status().await == 401 }).await;
    assert!(refused.is_some(), "a key past its expiresAt was still served");
    let resp = client().get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap();
    assert_error(&json_of(resp).await, "key_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_headers_429_and_refusals_cost_nothing() {
    let (_up, s) = setup("", "").await;
    let (_, token) = s.create_key(&["--name", "limited", "--role", "read-only", "--rate-limit", "3"]);
    let _gw = s.start();
    away_from_window_edge(std::time::Duration::from_secs(3)).await;
    let c = client();
    // Refused requests (403) do not consume quota.
    for _ in 0..5 {
        let resp = c.post(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["x-ratelimit-remaining"], "3");
    }
    let mut reset = 0;
    for expected in [2, 1, 0] {
        let resp = c.get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["x-ratelimit-limit"], "3");
        assert_eq!(h["x-ratelimit-remaining"], expected.to_string().as_str());
        reset = h["x-ratelimit-reset"].to_str().unwrap().parse::<i64>().unwrap();
        assert!(h["ratelimit-policy"].to_str().unwrap().contains("q=3"));
        assert!(h["ratelimit"].to_str().unwrap().contains(&format!("r={expected}")));
    }
    let now = keygate::clock::now_unix();
    assert!(reset > now - 1 && reset <= now + 60, "reset {reset} now {now}");
    let resp = c.get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
    let body = json_of(resp).await;
    assert_error(&body, "rate_limited");
    assert_eq!(body["retryAfter"].as_u64(), Some(retry));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_and_defaults_set_the_limit() {
    let (_up, s) = setup("", "default_per_minute = 7\nietf_headers = false").await;
    let (_, free) = s.create_key(&["--name", "free plan", "--role", "read-only", "--plan", "free"]);
    let (_, plain) = s.create_key(&["--name", "no plan", "--role", "read-only"]);
    let (_, own) = s.create_key(&["--name", "own", "--role", "read-only", "--plan", "free", "--rate-limit", "11"]);
    let _gw = s.start();
    let c = client();
    for (token, limit) in [(&free, "3"), (&plain, "7"), (&own, "11")] {
        let resp = c.get(s.url("/api/lists")).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.headers()["x-ratelimit-limit"], limit);
        assert!(resp.headers().get("ratelimit").is_none(), "ietf headers were switched off");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_window_is_selectable() {
    let (_up, s) = setup("", "algorithm = \"sliding_window\"").await;
    let (_, token) = s.create_key(&["--name", "slide", "--role", "read-only", "--rate-limit", "2"]);
    let _gw = s.start();
    away_from_window_edge(std::time::Duration::from_secs(3)).await;
    let c = client();
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..4).map(|_| c.get(s.url("/api/lists")).bearer_auth(&token).send()))
            .await
            .into_iter()
            .map(|r| r.unwrap().status().as_u16())
            .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_combine_role_key_and_wildcards() {
    let (_up, s) = setup("", "").await;
    let (_, extra) = s.create_key(&["--name", "extra", "--role", "read-only", "--permission", "lists.create"]);
    let (_, module) = s.create_key(&["--name", "module", "--permission", "lists.*"]);
    let (_, none) = s.create_key(&["--name", "nothing"]);
    let _gw = s.start();
    let c = client();
    assert_eq!(c.post(s.url("/api/lists")).bearer_auth(&extra).send().await.unwrap().status(), 200);
    assert_eq!(c.get(s.url("/api/contacts/1")).bearer_auth(&extra).send().await.unwrap().status(), 200);
    assert_eq!(c.post(s.url("/api/lists")).bearer_auth(&module).send().await.unwrap().status(), 200);
    assert_eq!(c.get(s.url("/api/lists/9")).bearer_auth(&module).send().await.unwrap().status(), 200);
    assert_eq!(c.get(s.url("/api/contacts/1")).bearer_auth(&module).send().await.unwrap().status(), 403);
    assert_eq!(c.get(s.url("/api/lists")).bearer_auth(&none).send().await.unwrap().status(), 403);
    // A route without a permission needs only a valid key.
    assert_eq!(c.get(s.url("/api/slow/0")).bearer_auth(&none).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_reports_the_key() {
    let (_up, s) = setup("", "").await;
    let (key_id, token) = s.create_key(&[
        "--name",
        "me",
        "--owner",
        "acct-1",
        "--role",
        "read-only",
        "--permission",
        "broadcasts.send",
        "--allow-ip",
        "127.0.0.0/8",
        "--rate-limit",
        "9",
    ]);
    let _gw = s.start();
    away_from_window_edge(std::time::Duration::from_secs(3)).await;
    let resp = client().get(s.url("/whoami")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "8");
    let v = json_of(resp).await;
    assert_eq!(v["success"], true);
    let d = &v["data"];
    assert_eq!(d["keyId"], key_id.as_str());
    assert_eq!(d["name"], "me");
    assert_eq!(d["owner"], "acct-1");
    assert_eq!(d["role"], "read-only");
    assert_eq!(d["env"], "live");
    assert_eq!(d["rateLimit"], 9);
    assert_eq!(d["remaining"], 8);
    assert_eq!(d["allowedIps"], serde_json::json!(["127.0.0.0/8"]));
    assert_eq!(d["expiresAt"], serde_json::Value::Null);
    let perms: Vec<&str> = d["permissions"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(perms, vec!["lists.view", "contacts.view", "broadcasts.send"]);
    let resp = client().get(s.url("/whoami")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_tokens_work_and_are_only_hashed_at_rest() {
    let (_up, s) = setup("", "").await;
    let legacy = "abc123.1a2b3c4d5e6f7a8b9c0d";
    let data = s.cli_json(&["keys", "import", "--token", legacy, "--name", "legacy", "--role", "read-only"]);
    assert_eq!(data["keyPrefix"], "abc123.****");
    assert!(data.get("apiKey").is_none());
    let _gw = s.start();
    let resp = client().get(s.url("/api/lists")).basic_auth("mail2many", Some(legacy)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let db = std::fs::read(s.dir.path().join("keygate.db")).unwrap();
    let wal = std::fs::read(s.dir.path().join("keygate.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(legacy.len()).any(|w| w == legacy.as_bytes()), "the token is stored in clear");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_decide_whose_forwarded_for_counts() {
    let (_up, s) = setup("trusted_proxies = [\"127.0.0.1/32\"]", "").await;
    let (_, walled) = s.create_key(&["--name", "walled", "--role", "read-only", "--allow-ip", "203.0.113.0/24"]);
    let _gw = s.start();
    let c = client();
    let resp = c.get(s.url("/api/lists")).bearer_auth(&walled).header("X-Forwarded-For", "203.0.113.9").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c.get(s.url("/api/lists")).bearer_auth(&walled).header("X-Forwarded-For", "198.51.100.1").send().await.unwrap();
    assert_eq!(resp.status(), 403);
    // Without trust, the header is ignored.
    let (_up2, s2) = setup("", "").await;
    let (_, walled2) = s2.create_key(&["--name", "walled", "--role", "read-only", "--allow-ip", "203.0.113.0/24"]);
    let _gw2 = s2.start();
    let resp = c.get(s2.url("/api/lists")).bearer_auth(&walled2).header("X-Forwarded-For", "203.0.113.9").send().await.unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_on_the_admin_listener() {
    let (_up, s) = setup("", "").await;
    let (_, token) = s.create_key(&["--name", "m", "--role", "read-only"]);
    let _gw = s.start();
    let c = client();
    // Before any request, every counter an alert may watch is there at zero.
    let fresh = c.get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    for series in [
        r#"keygate_config_reloads_total{result="error"} 0"#,
        r#"keygate_config_reloads_total{result="ok"} 0"#,
        r#"keygate_store_errors_total{operation="key_by_hash"} 0"#,
        r#"keygate_store_errors_total{operation="changes_since"} 0"#,
        r#"keygate_ratelimit_fallback_total{policy="local"} 0"#,
        r#"keygate_cache_invalidations_total{kind="flush"} 0"#,
        r#"keygate_usage_flushes_total{result="error"} 0"#,
        r#"keygate_upstream_ejections_total{target="127.0.0.1:"#,
        r#"keygate_build_info{version=""#,
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_cpu_seconds_total ",
    ] {
        assert!(fresh.contains(series), "{series} missing:\n{fresh}");
    }
    assert!(!fresh.contains("keygate_redis_calls_total{"), "no Redis series on a SQLite node");
    c.get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap();
    c.get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap();
    c.get(s.url("/api/lists")).send().await.unwrap();
    assert_eq!(c.get(s.admin_url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(s.admin_url("/readyz")).send().await.unwrap().status(), 200);
    let text = c.get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains(r#"keygate_requests_total{code="none",outcome="forwarded",route="GET /api/lists",status="200"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"keygate_requests_total{code="missing_key",outcome="unauthenticated",route="GET /api/lists",status="401"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("keygate_cache_hits_total 1"), "{text}");
    assert!(text.contains("keygate_cache_misses_total 1"), "{text}");
    assert!(text.contains("keygate_gateway_latency_seconds_bucket"));
    assert!(text.contains("keygate_upstream_latency_seconds_bucket"));
    assert!(!text.contains(&token));
    // Everything else on the admin listener needs the admin token.
    assert_eq!(c.get(s.admin_url("/modules")).send().await.unwrap().status(), 401);
    let resp = c.get(s.admin_url("/modules")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json_of(resp).await["data"][0]["id"], "lists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_admin_token_is_said_at_start_naming_the_variable() {
    let (_up, s) = setup("", "").await;
    let text = std::fs::read_to_string(&s.config).unwrap().replace("[admin]\n", "[admin]\ntoken_env = \"KG_TEST_UNSET_TOKEN\"\n");
    std::fs::write(&s.config, text).unwrap();
    let gw = s.start();
    let resp = client().get(s.admin_url("/modules")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(json_of(resp).await["code"], "admin_disabled");
    let log = gw.log_text();
    assert_eq!(log.matches("set KG_TEST_UNSET_TOKEN to a token").count(), 1, "{log}");
}

/// Sends one raw HTTP/1.1 request and returns the response head as sent.
fn raw_head(addr: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the head ended");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_answers_spell_keygates_own_headers_as_clients_expect() {
    let (_up, s) = setup("", "").await;
    let (_, token) = s.create_key(&["--name", "spelled", "--role", "read-only", "--rate-limit", "1"]);
    let gw = s.start();
    let ask = |auth: &str| format!("GET /api/lists HTTP/1.1\r\nHost: gw\r\n{auth}Connection: close\r\n\r\n");
    let ok = raw_head(gw.data, &ask(&format!("Authorization: Bearer {token}\r\n")));
    for line in
        ["X-RateLimit-Limit: 1\r\n", "X-RateLimit-Remaining: 0\r\n", "X-RateLimit-Reset: ", "RateLimit-Policy: ", "RateLimit: "]
    {
        assert!(ok.contains(line), "{line:?} in\n{ok}");
    }
    let limited = raw_head(gw.data, &ask(&format!("Authorization: Bearer {token}\r\n")));
    assert!(limited.starts_with("HTTP/1.1 429") && limited.contains("\r\nRetry-After: "), "{limited}");
    assert!(limited.contains("\r\nContent-Type: application/json\r\n"), "{limited}");
    let missing = raw_head(gw.data, &ask(""));
    assert!(missing.contains("\r\nWWW-Authenticate: Bearer\r\n"), "{missing}");
}
