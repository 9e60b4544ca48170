//! Quotas and metered usage with the embedded store and the local limiter,
//! end to end: plans with day and month quotas, a route's cost and own
//! limit, credits, limits an owner's keys share, what survives a restart
//! and `kill -9`, usage reports, and the verify API. The real binary, a
//! real upstream, keys made with the real CLI.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// A plan with a small day quota, and the broadcast route costing 2 with
/// its own limit of 4 per minute.
const METERED: &str = r#"
[plans.metered]
per_minute = 100
per_day = 6
per_month = 1000
"#;

fn with_metering(s: &Setup, scope: &str, flush: &str) {
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = text
        .replace("[rate_limit]\n", &format!("[rate_limit]\nscope = \"{scope}\"\n"))
        .replace(
            "match = \"POST /api/broadcasts/{id}/send\"\npermission = \"broadcasts.send\"",
            "match = \"POST /api/broadcasts/{id}/send\"\npermission = \"broadcasts.send\"\ncost = 2\nrate_limit = { per_minute = 4 }",
        )
        .replace("[store]\n", &format!("[keys]\nusage_flush_interval = \"{flush}\"\n\n[store]\n"));
    std::fs::write(&s.config, format!("{text}\n{METERED}")).unwrap();
}

async fn setup(scope: &str) -> (upstream::Upstream, Setup) {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    with_metering(&s, scope, "200ms");
    (up, s)
}

async fn get(s: &Setup, token: &str) -> reqwest::Response {
    client().get(s.url("/api/lists")).bearer_auth(token).send().await.unwrap()
}

async fn send(s: &Setup, token: &str) -> reqwest::Response {
    client().post(s.url("/api/broadcasts/7/send")).bearer_auth(token).send().await.unwrap()
}

async fn admin(s: &Setup, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = client().request(method, s.admin_url(path)).bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, json_of(resp).await)
}

/// Seconds from now to the next 00:00 UTC.
fn to_midnight() -> i64 {
    86_400 - keygate::clock::now_unix().rem_euclid(86_400)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_quota_counts_cost_refuses_with_quota_exceeded_and_a_refusal_takes_nothing() {
    let (_up, s) = setup("key").await;
    let (key_id, token) = s.create_key(&["--name", "metered", "--role", "full-access", "--plan", "metered"]);
    let _gw = s.start();
    away_from_window_edge(Duration::from_secs(10)).await;
    // 1 + 1 + 2 (the send costs 2) + 2 = 6: the day is full.
    for r in [get(&s, &token).await, get(&s, &token).await, send(&s, &token).await] {
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = send(&s, &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-ratelimit-limit"], "6", "the day has the least room");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let policy = r.headers()["ratelimit-policy"].to_str().unwrap().to_string();
    assert_eq!(
        policy,
        "\"minute\";q=100;w=60, \"route\";q=4;w=60, \"day\";q=6;w=86400, \"month\";q=1000;w=".to_string() + &month_secs()
    );
    let r = get(&s, &token).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: i64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((retry - to_midnight()).abs() <= 2, "Retry-After {retry} is the time to midnight UTC");
    assert!(r.headers()["ratelimit"].to_str().unwrap().starts_with("\"day\";r=0;t="));
    let v = json_of(r).await;
    assert_eq!((v["code"].as_str(), v["window"].as_str()), (Some("quota_exceeded"), Some("day")), "{v}");
    assert!((v["retryAfter"].as_i64().unwrap() - to_midnight()).abs() <= 2);
    // Refused requests took nothing: the minute and month still show 6.
    let (status, usage) = admin(&s, reqwest::Method::GET, &format!("/api-keys/{key_id}/usage"), None).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    let windows = &usage["data"]["windows"];
    let used = |w: &str| windows.as_array().unwrap().iter().find(|x| x["window"] == w).unwrap()["used"].clone();
    assert_eq!((used("minute"), used("day"), used("month")), (json!(6), json!(6), json!(6)), "{usage}");
    let day = windows.as_array().unwrap().iter().find(|x| x["window"] == "day").unwrap();
    assert_eq!(day["limit"], 6);
    assert!(day["resetsAt"].as_str().unwrap().ends_with("T00:00:00Z"), "{day}");
    // The key's own quota beats its plan's.
    s.cli_json(&["keys", "edit", &key_id, "--per-day", "8"]);
    assert!(eventually(Duration::from_secs(5), || async { get(&s, &token).await.status() == StatusCode::OK }).await.is_some());
}

fn month_secs() -> String {
    let now = keygate::clock::now_ms();
    keygate::clock::Period::Month.length_secs(keygate::clock::Period::Month.index(now)).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_own_limit_is_rate_limited_and_leaves_other_routes_alone() {
    let (_up, s) = setup("key").await;
    let (key_id, token) = s.create_key(&["--name", "sender", "--role", "full-access", "--rate-limit", "1000"]);
    let _gw = s.start();
    away_from_window_edge(Duration::from_secs(10)).await;
    // Cost 2 against a route limit of 4: two sends fit, the third does not.
    assert_eq!(send(&s, &token).await.status(), StatusCode::OK);
    assert_eq!(send(&s, &token).await.status(), StatusCode::OK);
    let r = send(&s, &token).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers()["ratelimit"].to_str().unwrap().starts_with("\"route\";r="), "{:?}", r.headers());
    let v = json_of(r).await;
    assert_eq!(v["code"], "rate_limited", "{v}");
    assert!(v.get("window").is_none());
    assert_eq!(get(&s, &token).await.status(), StatusCode::OK);
    // The usage lists the route's own window beside the key's.
    let (_, usage) = admin(&s, reqwest::Method::GET, &format!("/api-keys/{key_id}/usage"), None).await;
    let windows = usage["data"]["windows"].as_array().unwrap();
    let route = windows.iter().find(|w| w["window"] == "route").unwrap_or_else(|| panic!("{usage}"));
    assert_eq!(
        (route["route"].as_str(), route["used"].as_u64(), route["limit"].as_u64()),
        (Some("POST /api/broadcasts/{id}/send"), Some(4), Some(4))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_are_spent_by_cost_topped_up_by_api_and_cli_and_refused_without_retry_when_none_refill() {
    let (_up, s) = setup("key").await;
    let (key_id, token) = s.create_key(&["--name", "prepaid", "--role", "full-access", "--credits", "3"]);
    assert_eq!(s.cli_json(&["keys", "show", &key_id])["credits"], json!({ "refillAmount": null, "refillInterval": null }));
    let _gw = s.start();
    away_from_window_edge(Duration::from_secs(10)).await;
    let r = send(&s, &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-credits-remaining"], "1", "every answer tells the balance");
    assert!(r.headers()["ratelimit-policy"].to_str().unwrap().ends_with("\"credits\";q=1"), "{:?}", r.headers());
    let r = send(&s, &token).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "2 of 3 spent: a send costs 2");
    assert!(r.headers().get("retry-after").is_none(), "no refill will come");
    // The refusal is the credits': no window's fields say there is room.
    assert_eq!(r.headers()["x-credits-remaining"], "1");
    assert!(r.headers().get("x-ratelimit-remaining").is_none(), "{:?}", r.headers());
    assert_eq!(r.headers()["ratelimit"], "\"credits\";r=1");
    let v = json_of(r).await;
    assert_eq!(v["code"], "credits_exhausted", "{v}");
    assert!(v.get("retryAfter").is_none(), "{v}");
    assert_eq!(get(&s, &token).await.status(), StatusCode::OK, "the last credit");
    assert_eq!(get(&s, &token).await.status(), StatusCode::TOO_MANY_REQUESTS);
    // A top-up through the admin API counts at once.
    let (status, v) = admin(&s, reqwest::Method::POST, &format!("/api-keys/{key_id}/credits"), Some(json!({ "add": 10 }))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["credits"]["remaining"], 10);
    assert_eq!(send(&s, &token).await.status(), StatusCode::OK);
    let (_, usage) = admin(&s, reqwest::Method::GET, &format!("/api-keys/{key_id}/usage"), None).await;
    assert_eq!(usage["data"]["credits"]["remaining"], 8, "{usage}");
    // One from the CLI, another process, through the change feed.
    let out = s.cli_json(&["keys", "credits", &key_id, "--set", "1"]);
    assert_eq!(out["credits"]["remaining"], 1);
    assert!(eventually(Duration::from_secs(5), || async {
        let (_, u) = admin(&s, reqwest::Method::GET, &format!("/api-keys/{key_id}/usage"), None).await;
        u["data"]["credits"]["remaining"] == 1
    })
    .await
    .is_some());
    assert_eq!(get(&s, &token).await.status(), StatusCode::OK);
    assert_eq!(get(&s, &token).await.status(), StatusCode::TOO_MANY_REQUESTS);
    // Bad changes name their field.
    let (status, v) = admin(&s, reqwest::Method::POST, &format!("/api-keys/{key_id}/credits"), Some(json!({ "set": -1 }))).await;
    assert_eq!((status, v["field"].as_str()), (StatusCode::BAD_REQUEST, Some("set")), "{v}");
    let (status, _) = admin(&s, reqwest::Method::POST, &format!("/api-keys/{key_id}/credits"), Some(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let audit = s.cli_json(&["audit-log", "--target", &key_id]);
    assert!(audit.as_array().unwrap().iter().any(|e| e["action"] == "key.credits"), "{audit}");
    // --no-credits: the key stops spending them, and is admitted again.
    assert_eq!(s.cli_json(&["keys", "edit", &key_id, "--no-credits"])["credits"], Value::Null);
    assert!(eventually(Duration::from_secs(5), || async { get(&s, &token).await.status() == StatusCode::OK }).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_up_never_makes_a_key_prepaid_unasked() {
    let (_up, s) = setup("key").await;
    let (key_id, token) = s.create_key(&["--name", "quota only", "--role", "full-access", "--per-day", "50"]);
    let _gw = s.start();
    // The CLI: refused, saying what would change; the key untouched.
    let out = s.cli(&["keys", "credits", &key_id, "--add", "10"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("spends no credits") && text.contains("--start"), "{text}");
    // The admin API: 409, the same.
    let path = format!("/api-keys/{key_id}/credits");
    let (status, v) = admin(&s, reqwest::Method::POST, &path, Some(json!({ "add": 10 }))).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{v}");
    assert_eq!(s.cli_json(&["keys", "show", &key_id])["credits"], Value::Null, "nothing changed");
    assert_eq!(get(&s, &token).await.status(), StatusCode::OK);
    // Asked for, it starts: the key spends credits from then on.
    let (status, v) = admin(&s, reqwest::Method::POST, &path, Some(json!({ "add": 1, "start": true }))).await;
    assert_eq!((status, &v["data"]["credits"]["remaining"]), (StatusCode::OK, &json!(1)), "{v}");
    assert!(eventually(Duration::from_secs(5), || async { get(&s, &token).await.status() == StatusCode::TOO_MANY_REQUESTS })
        .await
        .is_some());
    let (status, v) = admin(&s, reqwest::Method::POST, &path, Some(json!({ "add": 2 }))).await;
    assert_eq!((status, &v["data"]["credits"]["remaining"]), (StatusCode::OK, &json!(2)), "topped up as before: {v}");
    let (status, v) = admin(&s, reqwest::Method::POST, &path, Some(json!({ "add": 1, "start": "yes" }))).await;
    assert_eq!((status, v["field"].as_str()), (StatusCode::BAD_REQUEST, Some("start")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_with_a_daily_refill_say_when_it_comes() {
    let (_up, s) = setup("key").await;
    let (_, token) = s.create_key(&[
        "--name",
        "daily",
        "--role",
        "full-access",
        "--credits",
        "1",
        "--refill",
        "5",
        "--refill-interval",
        "day",
    ]);
    let _gw = s.start();
    assert_eq!(get(&s, &token).await.status(), StatusCode::OK);
    let r = get(&s, &token).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: i64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((retry - to_midnight()).abs() <= 2, "the refill comes at midnight UTC: {retry}");
    assert_eq!(json_of(r).await["code"], "credits_exhausted");
    // A refill needs both its amount and interval.
    let out = s.cli(&["keys", "create", "--name", "half", "--refill", "5", "--json"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("credits.refillInterval"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_owner_scope_every_key_of_an_owner_shares_the_quota() {
    let (_up, s) = setup("owner").await;
    let args = |name: &'static str, owner: &'static str| {
        ["--name", name, "--role", "full-access", "--plan", "metered", "--owner", owner]
    };
    let (_, a) = s.create_key(&args("a", "acme"));
    let (_, b) = s.create_key(&args("b", "acme"));
    let (_, other) = s.create_key(&args("c", "globex"));
    let _gw = s.start();
    away_from_window_edge(Duration::from_secs(10)).await;
    for token in [&a, &b, &a, &b, &a, &b] {
        assert_eq!(get(&s, token).await.status(), StatusCode::OK);
    }
    // Another key of acme's does not get a fresh quota; globex's does.
    assert_eq!(get(&s, &a).await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(get(&s, &b).await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(get(&s, &other).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_survives_a_restart_and_kill_9_after_a_flush() {
    let (_up, s) = setup("key").await;
    let (_, token) = s.create_key(&["--name", "durable", "--role", "full-access", "--plan", "metered", "--credits", "100"]);
    let gw = s.start();
    for _ in 0..3 {
        assert_eq!(get(&s, &token).await.status(), StatusCode::OK);
    }
    // A graceful stop writes what is pending.
    assert!(gw.stop().success());
    let gw = s.start();
    assert_eq!(get(&s, &token).await.status(), StatusCode::OK);
    assert_eq!(get(&s, &token).await.status(), StatusCode::OK);
    // kill -9 after a flush interval (200 ms) loses nothing either.
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(gw);
    let _gw = s.start();
    assert_eq!(get(&s, &token).await.status(), StatusCode::OK, "the sixth unit of the day");
    let r = get(&s, &token).await;
    assert_eq!(json_of(r).await["code"], "quota_exceeded");
    let (_, usage) = admin(&s, reqwest::Method::GET, "/api-keys", None).await;
    let key_id = usage["data"][0]["keyId"].as_str().unwrap().to_string();
    let (_, usage) = admin(&s, reqwest::Method::GET, &format!("/api-keys/{key_id}/usage"), None).await;
    assert_eq!(usage["data"]["credits"]["remaining"], 94, "credits spent before both restarts are gone: {usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_count_admitted_and_refused_per_key_in_json_and_csv() {
    let (_up, s) = setup("key").await;
    let (key_id, token) = s.create_key(&["--name", "billed", "--role", "full-access", "--plan", "metered", "--owner", "acme"]);
    let (other_id, other) = s.create_key(&["--name", "other", "--role", "full-access", "--owner", "globex"]);
    let _gw = s.start();
    for _ in 0..8 {
        get(&s, &token).await;
    }
    get(&s, &other).await;
    let today = keygate::clock::date(keygate::clock::now_unix());
    let (status, v) = eventually_report(&s, &format!("/usage?owner=acme&from={today}&to={today}"), |v| {
        v["data"].as_array().is_some_and(|rows| rows.iter().any(|r| r["refused"] == 2))
    })
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v["data"],
        json!([{ "period": today, "keyId": key_id, "owner": "acme", "admitted": 6, "refused": 2, "units": 6 }])
    );
    assert_eq!(v["meta"]["retentionDays"], 420);
    let (_, hourly) = admin(&s, reqwest::Method::GET, &format!("/usage?keyId={other_id}&granularity=hour"), None).await;
    let rows = hourly["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{hourly}");
    assert!(rows[0]["period"].as_str().unwrap().ends_with(":00:00Z"));
    let csv = client()
        .get(s.admin_url(&format!("/usage?from={today}&to={today}")))
        .bearer_auth(ADMIN_TOKEN)
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = csv.text().await.unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1..].sort();
    let mut expected = vec![
        "period,key_id,owner,admitted,refused,units".to_string(),
        format!("{today},{key_id},acme,6,2,6"),
        format!("{today},{other_id},globex,1,0,1"),
    ];
    expected[1..].sort();
    assert_eq!(lines, expected);
    for (query, field) in
        [("from=2026-13-01", "from"), ("granularity=week", "granularity"), ("from=2026-12-02&to=2026-12-01", "from")]
    {
        let (status, v) = admin(&s, reqwest::Method::GET, &format!("/usage?{query}"), None).await;
        assert_eq!((status, v["field"].as_str()), (StatusCode::BAD_REQUEST, Some(field)), "{query}: {v}");
    }
}

async fn eventually_report(s: &Setup, path: &str, done: impl Fn(&Value) -> bool) -> (StatusCode, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, v) = admin(s, reqwest::Method::GET, path, None).await;
        if done(&v) || std::time::Instant::now() > deadline {
            return (status, v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_answers_as_the_gateway_would_and_consumes_with_cost() {
    let (_up, s) = setup("key").await;
    let (key_id, token) = s.create_key(&["--name", "service", "--role", "read-only", "--plan", "metered", "--owner", "acme"]);
    let _gw = s.start();
    let verify = |body: Value| {
        let s = &s;
        async move { admin(s, reqwest::Method::POST, "/v1/keys/verify", Some(body)).await }
    };
    let (status, v) = verify(json!({ "key": token, "permission": "lists.view", "cost": 4 })).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let d = &v["data"];
    assert_eq!((d["valid"].clone(), d["code"].clone(), d["keyId"].clone()), (json!(true), Value::Null, json!(key_id)), "{v}");
    assert_eq!(d["owner"], "acme");
    assert!(d["permissions"].as_array().unwrap().contains(&json!("lists.view")));
    assert_eq!(d["remaining"], 2, "6 a day, 4 taken");
    // Without a cost nothing is taken.
    let (_, v) = verify(json!({ "key": token })).await;
    assert_eq!(v["data"]["remaining"], 2, "{v}");
    let (_, v) = verify(json!({ "key": token, "cost": 3 })).await;
    assert_eq!((v["data"]["valid"].clone(), v["data"]["code"].clone()), (json!(false), json!("quota_exceeded")), "{v}");
    assert_eq!(v["data"]["window"], "day");
    // The gateway sees the same counters.
    assert_eq!(get(&s, &token).await.status(), StatusCode::OK);
    assert_eq!(get(&s, &token).await.status(), StatusCode::OK);
    assert_eq!(get(&s, &token).await.status(), StatusCode::TOO_MANY_REQUESTS);
    let (_, v) = verify(json!({ "key": token, "permission": "broadcasts.send" })).await;
    assert_eq!(v["data"]["code"], "insufficient_permissions", "{v}");
    let (_, v) = verify(json!({ "key": "kg_live_not_a_real_key_at_all_000000" })).await;
    assert_eq!((v["data"]["valid"].clone(), v["data"]["code"].clone()), (json!(false), json!("invalid_key")), "{v}");
    let (status, v) = verify(json!({ "key": token, "cost": -1 })).await;
    assert_eq!((status, v["field"].as_str()), (StatusCode::BAD_REQUEST, Some("cost")), "{v}");
}

/// A charged verify counts in the key's usage as one request, admitted or
/// refused, as the data plane counts it; a verify without a cost is the
/// verdict a request would get now, and takes and counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_is_billed_like_a_request_and_a_peek_tells_the_gateways_verdict() {
    let (_up, s) = setup("key").await;
    let (key_id, token) = s.create_key(&["--name", "service", "--role", "read-only", "--plan", "metered", "--owner", "acme"]);
    let (credit_id, credit_token) = s.create_key(&["--name", "prepaid", "--role", "read-only", "--credits", "1"]);
    let _gw = s.start();
    let verify = |body: Value| {
        let s = &s;
        async move { admin(s, reqwest::Method::POST, "/v1/keys/verify", Some(body)).await.1["data"].clone() }
    };
    let said = |d: &Value| (d["valid"].as_bool(), d["code"].as_str().map(str::to_string));
    assert_eq!(said(&verify(json!({ "key": token, "cost": 4 })).await), (Some(true), None));
    let d = verify(json!({ "key": token, "cost": 3 })).await;
    assert_eq!(said(&d), (Some(false), Some("quota_exceeded".into())), "{d}");
    let d = verify(json!({ "key": token })).await;
    assert_eq!((said(&d), d["remaining"].as_i64()), ((Some(true), None), Some(2)), "{d}");
    assert_eq!(get(&s, &token).await.status(), StatusCode::OK);
    assert_eq!(get(&s, &token).await.status(), StatusCode::OK);
    // The day is spent: the gateway would refuse, and the peek says so.
    let d = verify(json!({ "key": token })).await;
    assert_eq!(said(&d), (Some(false), Some("quota_exceeded".into())), "{d}");
    assert_eq!(d["window"], "day");
    assert!(d["retryAfter"].as_u64().is_some_and(|n| n >= 1), "{d}");
    assert_eq!(get(&s, &token).await.status(), StatusCode::TOO_MANY_REQUESTS, "a peek took something");
    // Credits: the peek sees the balance, takes none of it.
    for _ in 0..2 {
        assert_eq!(said(&verify(json!({ "key": credit_token })).await), (Some(true), None));
    }
    assert_eq!(said(&verify(json!({ "key": credit_token, "cost": 1 })).await), (Some(true), None));
    let d = verify(json!({ "key": credit_token })).await;
    assert_eq!(said(&d), (Some(false), Some("credits_exhausted".into())), "{d}");

    // Billed: one admitted and one refused verify, beside the two served
    // and one refused requests (peeks count for nothing).
    let counted = eventually(Duration::from_secs(5), || async {
        let (_, v) = admin(&s, reqwest::Method::GET, &format!("/usage?keyId={key_id}"), None).await;
        v["data"][0]["admitted"] == 3 && v["data"][0]["refused"] == 2
    })
    .await;
    let (_, report) = admin(&s, reqwest::Method::GET, &format!("/usage?keyId={key_id}"), None).await;
    assert!(counted.is_some(), "{report}");
    let (_, key) = admin(&s, reqwest::Method::GET, &format!("/api-keys/{key_id}"), None).await;
    assert_eq!(key["data"]["usageCount"], 3, "{key}");
    let (_, prepaid) = admin(&s, reqwest::Method::GET, &format!("/api-keys/{credit_id}"), None).await;
    assert_eq!(prepaid["data"]["usageCount"], 1, "{prepaid}");
    assert!(prepaid["data"]["lastUsed"].is_string(), "a charged verify left lastUsed empty: {prepaid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_and_routes_with_bad_quota_settings_are_refused_naming_the_field() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "scope = \"everyone\"");
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("match = \"GET /api/ping\"\npublic = true", "match = \"GET /api/ping\"\npublic = true\ncost = 3");
    std::fs::write(
        &s.config,
        format!("{text}\n[plans.gold]\nper_dya = 5\nper_month = 0\n\n[[routes]]\nmatch = \"GET /x\"\ncost = 0\nrate_limit = {{ per_minute = -2 }}\n"),
    )
    .unwrap();
    let out = s.cli(&["config", "check"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    for field in [
        "rate_limit.scope",
        "plans.gold.per_dya",
        "plans.gold.per_month",
        ".cost",
        ".rate_limit.per_minute",
        "a public route has no key to charge",
    ] {
        assert!(text.contains(field), "{field} missing from:\n{text}");
    }
}
