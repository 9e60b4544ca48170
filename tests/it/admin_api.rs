//! The admin REST API (docs/interface.md, "Admin API") driven as an integration would,
//! on both stores: create a key, use it on the data port, edit, disable,
//! rotate, delete; roles; validation; the audit log; never a secret shown
//! twice. The OpenAPI document is checked against the route table.

use crate::common::redis::RedisServer;
use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

struct Admin {
    base: String,
    c: reqwest::Client,
    /// Every body the API returned, to check no secret leaks.
    seen: std::sync::Mutex<Vec<String>>,
}

impl Admin {
    fn new(s: &Setup) -> Admin {
        Admin { base: s.admin_url(""), c: client(), seen: Default::default() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.c.request(method, format!("{}{path}", self.base)).bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        let text = resp.text().await.unwrap();
        self.seen.lock().unwrap().push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}")))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }
    async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

async fn data_status(s: &Setup, token: &str) -> (u16, reqwest::header::HeaderMap) {
    let resp = client().get(s.url("/api/lists")).bearer_auth(token).send().await.unwrap();
    (resp.status().as_u16(), resp.headers().clone())
}

/// The whole journey of an integration, on whichever store `s` names.
async fn journey(s: &Setup) {
    let _gw = s.start();
    let api = Admin::new(s);
    let c = client();

    // Authentication of the admin API itself.
    let resp = c.get(s.admin_url("/api-keys")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(json_of(resp).await["code"], "unauthorized");
    assert_eq!(c.get(s.admin_url("/api-keys")).bearer_auth("wrong-token-wrong-token").send().await.unwrap().status(), 401);
    assert_eq!(c.get(s.admin_url("/healthz")).send().await.unwrap().status(), 200);

    // Create; the secret is shown once.
    let (status, v) = api
        .post("/api-keys", json!({ "name": "Zapier", "role": "read-only", "owner": "ops@example.com", "expirationDays": 30, "metadata": { "default_optin_mailing": "12" } }))
        .await;
    assert_eq!(status, 201, "{v}");
    assert!(v["meta"]["warning"].as_str().unwrap().contains("only be shown once"));
    let id = v["data"]["keyId"].as_str().unwrap().to_string();
    let secret = v["data"]["apiKey"].as_str().unwrap().to_string();
    assert_eq!(v["data"]["keyPrefix"].as_str().unwrap(), format!("{}****", &secret[..12]));
    assert_eq!(v["data"]["rateLimit"], 60);
    assert!(v["data"]["expiresAt"].is_string());

    // Use it on the data port.
    let (status, headers) = data_status(s, &secret).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ratelimit-limit"], "60");

    // Edit the rate limit and see the header change.
    let (status, v) = api.patch(&format!("/api-keys/{id}"), json!({ "rateLimit": 500, "description": "CRM sync" })).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["rateLimit"], 500);
    assert_eq!(v["data"]["owner"], "ops@example.com");
    let seen =
        eventually(Duration::from_secs(2), || async { data_status(s, &secret).await.1["x-ratelimit-limit"] == "500" }).await;
    assert!(seen.is_some(), "the new rate limit did not reach the gateway");

    // List, search, paging: masked, with meta.total.
    for i in 0..3 {
        assert_eq!(api.post("/api-keys", json!({ "name": format!("filler {i}"), "owner": "someone-else" })).await.0, 201);
    }
    let (_, v) = api.get("/api-keys?per_page=2&page=1").await;
    assert_eq!(v["meta"]["total"], 4);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let (_, v) = api.get("/api-keys?per_page=2&page=2").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    // The key's whole shown prefix: two random characters could be another's.
    for needle in ["zapier", "crm", "ops%40example", "read-only", &secret[..12]] {
        let (_, v) = api.get(&format!("/api-keys?search={needle}")).await;
        assert_eq!(v["meta"]["total"], 1, "search {needle}: {v}");
        assert_eq!(v["data"][0]["keyId"], id.as_str());
    }
    assert_eq!(api.get("/api-keys?per_page=0").await.0, 400);
    let (status, v) = api.get(&format!("/api-keys/{id}")).await;
    assert_eq!(status, 200);
    assert!(v["data"].get("apiKey").is_none());

    // Expiry to the minute: expiresAt in, null out; never in the past, never with expirationDays.
    let in_two_hours = keygate::clock::rfc3339(keygate::clock::now_unix() + 7200);
    let (status, v) = api.patch(&format!("/api-keys/{id}"), json!({ "expiresAt": in_two_hours })).await;
    assert_eq!((status, v["data"]["expiresAt"].as_str()), (200, Some(in_two_hours.as_str())), "{v}");
    let (status, v) = api.post("/api-keys", json!({ "name": "contractor", "expiresAt": in_two_hours })).await;
    assert_eq!((status, v["data"]["expiresAt"].as_str()), (201, Some(in_two_hours.as_str())), "{v}");
    api.delete(&format!("/api-keys/{}", v["data"]["keyId"].as_str().unwrap())).await;
    for body in [
        json!({ "expiresAt": "2020-01-01T00:00:00Z" }),
        json!({ "expiresAt": "tomorrow" }),
        json!({ "expiresAt": in_two_hours, "expirationDays": 3 }),
    ] {
        let (status, v) = api.patch(&format!("/api-keys/{id}"), body.clone()).await;
        assert_eq!((status, v["field"].as_str()), (400, Some("expiresAt")), "{body}: {v}");
    }
    let (_, v) = api.patch(&format!("/api-keys/{id}"), json!({ "expiresAt": null })).await;
    assert_eq!(v["data"]["expiresAt"], serde_json::Value::Null, "{v}");

    // Disable, enable.
    assert_eq!(api.post(&format!("/api-keys/{id}/disable"), json!({})).await.0, 200);
    assert!(eventually(Duration::from_secs(2), || async { data_status(s, &secret).await.0 == 401 }).await.is_some());
    // Listing filters by state and role.
    let (_, v) = api.get("/api-keys?status=disabled").await;
    assert_eq!(v["data"].as_array().unwrap().iter().map(|k| k["keyId"].clone()).collect::<Vec<_>>(), vec![json!(id)], "{v}");
    let (_, v) = api.get("/api-keys?status=active").await;
    assert!(v["data"].as_array().unwrap().iter().all(|k| k["status"] == "active" && k["keyId"] != json!(id)), "{v}");
    let (_, v) = api.get("/api-keys?status=disabled&role=nobody-has-it").await;
    assert_eq!(v["meta"]["total"], 0, "{v}");
    let (status, v) = api.get("/api-keys?status=sleeping").await;
    assert_eq!((status, v["field"].as_str()), (400, Some("status")), "{v}");
    let (status, v) = api.post(&format!("/api-keys/{id}/enable"), json!({})).await;
    assert_eq!((status, v["data"]["status"].as_str()), (200, Some("active")));
    assert!(eventually(Duration::from_secs(2), || async { data_status(s, &secret).await.0 == 200 }).await.is_some());

    // Rotate with a grace period.
    let (status, v) = api.post(&format!("/api-keys/{id}/rotate"), json!({ "graceSeconds": 2 })).await;
    assert_eq!(status, 200, "{v}");
    let new_secret = v["data"]["apiKey"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    assert!(eventually(Duration::from_secs(2), || async { data_status(s, &new_secret).await.0 == 200 }).await.is_some());
    assert_eq!(data_status(s, &secret).await.0, 200, "the old secret works during the grace period");
    assert!(
        eventually(Duration::from_secs(5), || async { data_status(s, &secret).await.0 == 401 }).await.is_some(),
        "old secret kept working"
    );

    // Roles: create, edit with effect on the data plane, role in use, delete.
    let (status, v) =
        api.post("/api-roles", json!({ "id": "stats-only", "name": "Stats only", "permissions": ["contacts.view"] })).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(api.post("/api-roles", json!({ "id": "stats-only", "permissions": ["lists.view"] })).await.0, 409);
    assert_eq!(api.patch(&format!("/api-keys/{id}"), json!({ "role": "stats-only" })).await.0, 200);
    assert!(eventually(Duration::from_secs(2), || async { data_status(s, &new_secret).await.0 == 403 }).await.is_some());
    let (status, v) = api.patch("/api-roles/stats-only", json!({ "permissions": ["lists.*"] })).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        eventually(Duration::from_secs(2), || async { data_status(s, &new_secret).await.0 == 200 }).await.is_some(),
        "role edit not seen"
    );
    let (status, v) = api.delete("/api-roles/stats-only").await;
    assert_eq!((status, v["code"].as_str()), (409, Some("role_in_use")), "{v}");
    let (_, v) = api.get("/api-roles").await;
    assert!(v["data"].as_array().unwrap().iter().any(|r| r["id"] == "stats-only"));
    assert_eq!(api.get("/api-roles/nope").await.0, 404);
    let (_, v) = api.get("/modules").await;
    assert_eq!(v["data"][0]["permissions"][0]["label"], "Add New List");
    assert_eq!(v["meta"]["plans"], json!({ "free": 3, "pro": 100 }), "the plans the console offers");

    // Validation names the field, and creates nothing.
    let long = "x".repeat(101);
    for (body, field) in [
        (json!({ "name": "a", "role": "ghost" }), "role"),
        (json!({ "name": "a", "permissions": ["lists.fly"] }), "permissions"),
        (json!({ "name": "a", "allowedIps": ["10.0.0.0/33"] }), "allowedIps"),
        (json!({ "name": long }), "name"),
        (json!({ "description": "no name" }), "name"),
        (json!({ "name": "a", "expirationDays": 0 }), "expirationDays"),
        (json!({ "name": "a", "expirationDays": 366 }), "expirationDays"),
        (json!({ "name": "a", "plan": "platinum" }), "plan"),
        (json!({ "name": "a", "colour": "red" }), "colour"),
        (json!({ "name": "a", "rateLimit": "fast" }), "rateLimit"),
    ] {
        let (status, v) = api.post("/api-keys", body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["code"], "invalid_request");
        assert_eq!(v["field"], field, "{body}: {v}");
    }
    let resp = c.post(s.admin_url("/api-keys")).bearer_auth(ADMIN_TOKEN).body("{not json").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(api.get("/api-keys").await.1["meta"]["total"], 4);
    assert_eq!(api.post("/api-roles", json!({ "id": "bad", "permissions": ["nope.*"] })).await.0, 400);
    assert_eq!(api.patch("/api-keys/key_doesnotexist", json!({ "rateLimit": 5 })).await.0, 404);
    assert_eq!(api.call(reqwest::Method::PUT, "/api-keys", None).await.0, 405);

    // Delete.
    let (status, v) = api.delete(&format!("/api-keys/{id}")).await;
    assert_eq!((status, v["data"].clone()), (200, json!({ "keyId": id, "revoked": true })));
    assert!(eventually(Duration::from_secs(2), || async { data_status(s, &new_secret).await.0 == 401 }).await.is_some());
    assert_eq!(api.delete(&format!("/api-keys/{id}")).await.0, 404);
    assert_eq!(api.delete("/api-roles/stats-only").await.0, 200);

    // The audit log tells the story, newest first, without secrets.
    let (_, v) = api.get(&format!("/audit-log?target={id}")).await;
    let actions: Vec<&str> = v["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["key.delete", "key.edit", "key.rotate", "key.enable", "key.disable", "key.edit", "key.edit", "key.edit", "key.create"],
        "{v}"
    );
    let edit = &v["data"][7];
    assert_eq!(edit["before"]["rateLimit"], 60);
    assert_eq!(edit["after"]["rateLimit"], 500);
    assert!(edit["actor"].as_str().unwrap().starts_with("admin-api (admin@127.0.0.1)"));
    let (_, v) = api.get("/audit-log?per_page=1").await;
    assert!(v["meta"]["total"].as_u64().unwrap() >= 12);
    assert_eq!(v["data"][0]["action"], "role.delete");
    // The CLI sees the same log.
    let cli = s.cli_json(&["audit-log", "--target", &id]);
    assert_eq!(cli.as_array().unwrap().len(), 9);

    // No response but the two that revealed them ever held a secret or its hash.
    use sha2::Digest;
    let seen = api.seen.lock().unwrap();
    for s in [&secret, &new_secret] {
        let hash = hex::encode(sha2::Sha256::digest(s.as_bytes()));
        let holders = seen.iter().filter(|b| b.contains(s.as_str())).count();
        assert_eq!(holders, 1, "a secret appeared in {holders} responses");
        assert!(!seen.iter().any(|b| b.contains(&hash)), "a secret's hash appeared in a response");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_on_sqlite() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    journey(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn admin_api_on_redis() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    let s = Setup::redis(&up.url(), &redis.url(), "");
    journey(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let _gw = s.start();
    let resp = client().get(s.admin_url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc = json_of(resp).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in paths {
        for method in ["get", "post", "patch", "put", "delete"] {
            if let Some(op) = item.get(method) {
                documented.insert((method.to_uppercase(), path.clone()));
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
                for r in op["responses"].as_object().unwrap().values() {
                    if let Some(reference) = r.pointer("/content/application~1json/schema/$ref").and_then(Value::as_str) {
                        let name = reference.rsplit('/').next().unwrap();
                        assert!(doc["components"]["schemas"].get(name).is_some(), "{reference} is not defined");
                    }
                }
            }
        }
    }
    let served: std::collections::BTreeSet<(String, String)> =
        keygate::admin::routes::ROUTES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, served, "the OpenAPI document and the route table disagree");
    // The documented key fields are exactly what the API returns.
    let key_fields: std::collections::BTreeSet<String> =
        doc["components"]["schemas"]["ApiKey"]["properties"].as_object().unwrap().keys().cloned().collect();
    let api = Admin::new(&s);
    let (_, v) = api.post("/api-keys", json!({ "name": "shape" })).await;
    let mut returned: std::collections::BTreeSet<String> = v["data"].as_object().unwrap().keys().cloned().collect();
    returned.remove("apiKey");
    assert_eq!(key_fields, returned);
}

/// Every door refuses what would break a later read: a time past year
/// 9999 (an export would hold bare digits no import reads back), a
/// balance pushed below 0 or past the cap, a planted secret outliving
/// every rotation, metadata names that are one header, invisible format
/// characters in names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_at_every_door() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let _gw = s.start();
    let api = Admin::new(&s);
    let (_, v) = api.post("/api-keys", json!({ "name": "bounded", "role": "read-only" })).await;
    let id = v["data"]["keyId"].as_str().unwrap().to_string();
    let path = format!("/api-keys/{id}");
    let refused = |(status, v): (u16, Value), field: &str| {
        assert_eq!((status, v["field"].as_str()), (400, Some(field)), "{v}");
        v["error"].as_str().unwrap().to_string()
    };

    // Year 10000 in UTC, written as year 9999 with an offset.
    let e = refused(api.patch(&path, json!({ "expiresAt": "9999-12-31T23:59:59-23:59" })).await, "expiresAt");
    assert!(e.contains("9999-12-31T23:59:59Z"), "{e}");
    let out = s.cli(&["keys", "edit", &id, "--expires-in", "99999999999d"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("expiresAt"), "{out:?}");
    assert_eq!(api.get(&path).await.1["data"]["expiresAt"], Value::Null, "a refused expiry was written");
    let export =
        client().get(s.admin_url("/api-keys/export")).bearer_auth(ADMIN_TOKEN).send().await.unwrap().text().await.unwrap();
    let mut line: Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
    line["expiresAt"] = "9999-12-31T23:59:59-23:59".into();
    let resp =
        client().post(s.admin_url("/api-keys/import")).bearer_auth(ADMIN_TOKEN).body(line.to_string()).send().await.unwrap();
    let v = json_of(resp).await;
    assert!(v["error"].as_str().unwrap().contains("line 1: expiresAt"), "{v}");

    // An import cannot plant a rotated-out secret valid for years.
    let mut line: Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
    line["previousSecrets"] = json!([{ "sha256": "ab".repeat(32), "validUntil": "2999-01-01T00:00:00Z" }]);
    let resp =
        client().post(s.admin_url("/api-keys/import")).bearer_auth(ADMIN_TOKEN).body(line.to_string()).send().await.unwrap();
    let v = json_of(resp).await;
    assert!(v["error"].as_str().unwrap().contains("line 1: previousSecrets"), "{v}");
    // What a rotation leaves is shown by when it ends, never by its hash.
    let (status, _) = api.post(&format!("{path}/rotate"), json!({ "graceSeconds": 3600 })).await;
    assert_eq!(status, 200);
    let (_, v) = api.get(&path).await;
    let previous = v["meta"]["previousSecrets"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(previous.len(), 1, "{v}");
    let until = keygate::clock::parse_rfc3339(previous[0]["validUntil"].as_str().unwrap()).unwrap();
    assert!((until - keygate::clock::now_unix() - 3600).abs() < 30, "{v}");
    assert!(!v.to_string().contains(&"ab".repeat(32)));

    // A balance stays from 0 to the cap, whatever an add says.
    let credits = format!("{path}/credits");
    assert_eq!(api.post(&credits, json!({ "set": 10, "start": true })).await.0, 200);
    let e = refused(api.post(&credits, json!({ "add": -11 })).await, "add");
    assert!(e.contains("below 0"), "{e}");
    let e = refused(api.post(&credits, json!({ "add": 1_000_000_000_000i64 })).await, "add");
    assert!(e.contains("above"), "{e}");
    let (_, v) = api.post(&credits, json!({ "add": -10 })).await;
    assert_eq!(v["data"]["credits"]["remaining"], 0, "{v}");

    // Two metadata names that are one header; invisible characters in text.
    let e = refused(api.patch(&path, json!({ "metadata": { "Tier": "gold", "tier": "free" } })).await, "metadata");
    assert!(e.contains("same header"), "{e}");
    refused(api.patch(&path, json!({ "metadata": { "a_b": "1", "a-b": "2" } })).await, "metadata");
    refused(api.patch(&path, json!({ "name": "invoice\u{202e}fdp.exe" })).await, "name");
    refused(api.patch(&path, json!({ "description": "zero\u{200b}width" })).await, "description");
    refused(api.patch(&path, json!({ "metadata": { "plan": "\u{2066}gold" } })).await, "metadata");
    let (_, v) = api.get(&path).await;
    assert_eq!((v["data"]["name"].as_str(), v["data"]["metadata"].as_object().map(|m| m.len())), (Some("bounded"), Some(0)));
}

/// A web page that rebinds its own name to the admin listener's address
/// sends its own name as `Host`: the listener answers loopback names and
/// addresses and `admin.allowed_hosts` only (421 otherwise), so such a
/// page reads nothing, not even `/metrics` or the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_only_loopback_and_listed_hosts() {
    use std::io::{Read, Write};
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = text.replacen("[admin]\n", "[admin]\nallowed_hosts = [\"keygate-admin.ops.example\", \"192.0.2.0/24\"]\n", 1);
    let s = Setup::with_text(s.dir, &text, s.data_port, s.admin_port);
    let _gw = s.start();
    let status = |path: &str, host: Option<&str>| {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.admin_port)).unwrap();
        let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
        write!(conn, "GET {path} HTTP/1.1\r\n{host}Authorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer.split(' ').nth(1).unwrap_or("").to_string()
    };
    for path in ["/api-keys", "/metrics", "/healthz", "/console/", "/openapi.json"] {
        for host in ["127.0.0.1:1", "localhost", "[::1]:9180", "keygate-admin.ops.example", "192.0.2.9:9180"] {
            assert_eq!(status(path, Some(host)), "200", "{path} {host}");
        }
        for host in ["evil.example", "evil.example:9180", "keygate-admin.ops.example.evil.example", "203.0.113.9"] {
            assert_eq!(status(path, Some(host)), "421", "{path} {host}");
        }
    }
    let resp = client().get(s.admin_url("/healthz")).header("Host", "rebound.example").send().await.unwrap();
    assert_eq!(resp.status(), 421);
    assert_eq!(json_of(resp).await["code"], "host_not_allowed");
    // A name that is not a host name is refused at load, naming the entry.
    let bad = text.replace("\"192.0.2.0/24\"", "\"*.ops.example\"");
    let bad = Setup::with_text(tempfile::tempdir().unwrap(), &bad, free_port(), free_port());
    let out = bad.cli(&["config", "check"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.allowed_hosts[1]"), "{out:?}");
}
