//! Two operators at the same instant, through the real binary on both
//! stores: a disable racing an edit always sticks, an edit never writes back
//! usage it read, a key deleted during an import stays deleted, and
//! `If-Match` refuses a change made for another version.

use crate::common::redis::RedisServer;
use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The admin API as an operator's script calls it.
#[derive(Clone)]
struct Admin {
    base: String,
    c: reqwest::Client,
}

impl Admin {
    fn new(s: &Setup) -> Admin {
        Admin { base: s.admin_url(""), c: client() }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>, if_match: Option<&str>) -> (u16, Value) {
        let mut req = self.c.request(method, format!("{}{path}", self.base)).bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(tag) = if_match {
            req = req.header("If-Match", tag);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, json_of(resp).await)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body), None).await
    }
    async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PATCH, path, Some(body), None).await
    }

    /// Creates a key and returns (keyId, secret).
    async fn create(&self, body: Value) -> (String, String) {
        let (status, v) = self.post("/api-keys", body).await;
        assert_eq!(status, 201, "{v}");
        (v["data"]["keyId"].as_str().unwrap().to_string(), v["data"]["apiKey"].as_str().unwrap().to_string())
    }
}

fn stores(up: &str, redis: &RedisServer) -> Vec<(&'static str, Setup)> {
    vec![("sqlite", Setup::new(up, "", "")), ("redis", Setup::redis(up, &redis.url(), ""))]
}

/// 100 trials of `POST .../disable` sent at the same instant as a `PATCH`
/// naming a description and a role: the key ends disabled every time, and
/// the audit log's two entries chain (each saw the other's result, or came
/// first), the edit's never touching `enabled`.
async fn disable_racing_an_edit(store: &str, s: &Setup) {
    let _gw = s.start();
    let api = Admin::new(s);
    let (id, _) = api.create(json!({ "name": "raced", "role": "read-only" })).await;
    let path = format!("/api-keys/{id}");
    let (mut resurrected, mut lost, mut logs) = (0, 0, Vec::new());
    for trial in 0..100 {
        let (status, v) = api.post(&format!("{path}/enable"), json!({})).await;
        assert_eq!(status, 200, "{v}");
        let role = if trial % 2 == 0 { "full-access" } else { "read-only" };
        let edit = json!({ "description": format!("trial {trial}"), "role": role });
        let disable = format!("{path}/disable");
        let (disabled, edited) = tokio::join!(api.post(&disable, json!({})), api.patch(&path, edit));
        assert_eq!((disabled.0, edited.0), (200, 200), "{store}: {disabled:?} {edited:?}");
        let (_, now) = api.get(&path).await;
        if now["data"]["enabled"] != false {
            resurrected += 1;
            continue;
        }
        if now["data"]["description"] != format!("trial {trial}").as_str() || now["data"]["role"] != role {
            lost += 1;
            continue;
        }
        // The two newest entries: the disable and the edit.
        let (_, log) = api.get(&format!("/audit-log?target={id}&per_page=2")).await;
        logs.push(log);
    }
    assert_eq!(
        (resurrected, lost),
        (0, 0),
        "{store}: of 100 trials, a racing edit re-enabled the disabled key in {resurrected}; the disable undid the edit in {lost}"
    );
    for log in logs {
        let entries = log["data"].as_array().unwrap();
        let edit = entries.iter().find(|e| e["action"] == "key.edit").unwrap_or_else(|| panic!("{store}: {log}"));
        let disable = entries.iter().find(|e| e["action"] == "key.disable").unwrap_or_else(|| panic!("{store}: {log}"));
        assert_eq!(edit["before"]["enabled"], edit["after"]["enabled"], "{store}: the edit touched `enabled`: {edit}");
        assert_eq!(disable["after"]["enabled"], false, "{store}: {disable}");
        // The log's order is the order the entries were appended in; the
        // versions say the order the store made the changes in.
        let version = |e: &Value, side: &str| e[side]["version"].as_u64().unwrap_or_else(|| panic!("{store}: no version: {e}"));
        let (older, newer) = if version(&entries[0], "before") < version(&entries[1], "before") {
            (&entries[0], &entries[1])
        } else {
            (&entries[1], &entries[0])
        };
        assert_eq!(newer["before"], older["after"], "{store}: the later change did not see the earlier one: {log}");
        assert_eq!(version(older, "after"), version(older, "before") + 1, "{store}: {older}");
        assert_eq!(version(newer, "after"), version(older, "after") + 1, "{store}: {newer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn a_disable_racing_an_edit_sticks_on_both_stores() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    for (store, s) in stores(&up.url(), &redis) {
        disable_racing_an_edit(store, &s).await;
    }
}

/// Requests served while an operator edits the key every 5 ms are all
/// counted: no edit writes back the count it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn usage_counted_under_an_edit_storm_equals_the_requests_served() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    for (store, mut s) in stores(&up.url(), &redis) {
        let text = std::fs::read_to_string(&s.config).unwrap();
        let text = text.replace("[rate_limit]", "[keys]\nusage_flush_interval = \"10ms\"\n\n[rate_limit]");
        s = Setup::with_text(s.dir, &text, s.data_port, s.admin_port);
        let _gw = s.start();
        let api = Admin::new(&s);
        let (id, secret) = api.create(json!({ "name": "busy", "role": "read-only", "rateLimit": 10000 })).await;
        let path = format!("/api-keys/{id}");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Two operators, each editing every 5 ms.
        let storms: Vec<_> = (0..2)
            .map(|who| {
                let (api, path, stop) = (api.clone(), path.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut edits = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let (status, v) = api.patch(&path, json!({ "description": format!("edit {who}.{edits}") })).await;
                        assert_eq!(status, 200, "{v}");
                        edits += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    edits
                })
            })
            .collect();
        let c = client();
        for _ in 0..120 {
            let resp = c.get(s.url("/api/lists")).bearer_auth(&secret).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{store}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut edits = 0;
        for storm in storms {
            edits += storm.await.unwrap();
        }
        assert!(edits >= 20, "{store}: only {edits} edits raced the requests");
        let counted = eventually(Duration::from_secs(5), || async { api.get(&path).await.1["data"]["usageCount"] == 120 }).await;
        let (_, v) = api.get(&path).await;
        assert!(counted.is_some(), "{store}: 120 requests served, usageCount {} after {edits} edits", v["data"]["usageCount"]);
    }
}

/// An import that checked a key, then found it deleted before writing its
/// line, reports the conflict and leaves it deleted: its secret stays
/// refused. The same file again does not bring it back either, unless
/// asked to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn a_key_deleted_during_a_long_import_stays_deleted() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    for (store, s) in stores(&up.url(), &redis) {
        let _gw = s.start();
        let api = Admin::new(&s);
        let (id, secret) = api.create(json!({ "name": "doomed", "role": "read-only" })).await;
        let c = client();
        assert_eq!(c.get(s.url("/api/lists")).bearer_auth(&secret).send().await.unwrap().status(), 200);
        let export = c.get(s.admin_url("/api-keys/export")).bearer_auth(ADMIN_TOKEN).send().await.unwrap().text().await.unwrap();
        let mut line: Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
        line["description"] = "restored".into();
        // 2,000 other keys first: the import runs long after the delete.
        let mut body = String::new();
        for i in 0..2000 {
            let hash = keygate::keys::token::TokenHash::of(&format!("filler-{store}-{i}")).to_hex();
            body.push_str(
                &json!({ "keyId": format!("key_filler{i}"), "name": format!("filler {i}"), "tokenSha256": hash }).to_string(),
            );
            body.push('\n');
        }
        body.push_str(&line.to_string());
        body.push('\n');
        let import = {
            let (c, url, body) = (c.clone(), s.admin_url("/api-keys/import"), body.clone());
            tokio::spawn(async move {
                let resp = c.post(url).bearer_auth(ADMIN_TOKEN).body(body).send().await.unwrap();
                (resp.status().as_u16(), json_of(resp).await)
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, v) = api.send(reqwest::Method::DELETE, &format!("/api-keys/{id}"), None, None).await;
        assert_eq!(status, 200, "{store}: {v}");
        let (status, summary) = import.await.unwrap();
        assert_eq!(status, 200, "{store}: {summary}");
        assert_eq!(
            api.get(&format!("/api-keys/{id}")).await.0,
            404,
            "{store}: the import brought the deleted key back: {summary}"
        );
        let conflicts = summary["data"]["conflicts"].as_array().unwrap_or_else(|| panic!("{store}: {summary}"));
        assert_eq!(conflicts.len(), 1, "{store}: {summary}");
        assert_eq!((conflicts[0]["line"].as_u64(), conflicts[0]["keyId"].as_str()), (Some(2001), Some(id.as_str())));
        assert!(conflicts[0]["reason"].as_str().unwrap().contains("deleted"), "{store}: {summary}");
        assert_eq!(summary["data"]["created"], 2000, "{store}: {summary}");
        let refused = eventually(Duration::from_secs(3), || async {
            c.get(s.url("/api/lists")).bearer_auth(&secret).send().await.unwrap().status() == 401
        })
        .await;
        assert!(refused.is_some(), "{store}: the deleted key's secret still works");

        // The line alone, later: the key was deleted, so it is not created.
        let resp = c.post(s.admin_url("/api-keys/import")).bearer_auth(ADMIN_TOKEN).body(line.to_string()).send().await.unwrap();
        let again = json_of(resp).await;
        assert_eq!(again["data"]["created"], 0, "{store}: {again}");
        assert!(again["data"]["conflicts"][0]["reason"].as_str().unwrap().contains("recreateDeleted"), "{again}");
        assert_eq!(c.get(s.url("/api/lists")).bearer_auth(&secret).send().await.unwrap().status(), 401);
        // Asked to, it is: the same secret works again.
        let url = s.admin_url("/api-keys/import?recreateDeleted=true");
        let resp = c.post(url).bearer_auth(ADMIN_TOKEN).body(line.to_string()).send().await.unwrap();
        let recreated = json_of(resp).await;
        assert_eq!(recreated["data"]["created"], 1, "{store}: {recreated}");
        let (_, key) = api.get(&format!("/api-keys/{id}")).await;
        assert!(key["data"]["version"].as_u64().unwrap() > 1, "{store}: versions go on from the deleted key's: {key}");
        let works = eventually(Duration::from_secs(3), || async {
            c.get(s.url("/api/lists")).bearer_auth(&secret).send().await.unwrap().status() == 200
        })
        .await;
        assert!(works.is_some(), "{store}: a recreated key's secret is refused");
    }
}

/// `ETag` and `If-Match` on keys and roles: a change made for another
/// version is 412 with the current one, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn if_match_refuses_a_change_made_for_another_version() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    for (store, s) in stores(&up.url(), &redis) {
        let _gw = s.start();
        let api = Admin::new(&s);
        let c = client();
        let (id, _) = api.create(json!({ "name": "tagged", "role": "read-only" })).await;
        let path = format!("/api-keys/{id}");
        let resp = c.get(s.admin_url(&path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(resp.headers()["etag"], "\"1\"", "{store}");
        assert_eq!(json_of(resp).await["data"]["version"], 1);
        let (status, v) = api.send(reqwest::Method::PATCH, &path, Some(json!({ "description": "one" })), Some("\"1\"")).await;
        assert_eq!((status, v["data"]["version"].as_u64()), (200, Some(2)), "{store}: {v}");
        // Every change of a key takes it: each made for version 1 now fails.
        let stale: [(reqwest::Method, String, Option<Value>); 6] = [
            (reqwest::Method::PATCH, path.clone(), Some(json!({ "description": "stale" }))),
            (reqwest::Method::POST, format!("{path}/disable"), Some(json!({}))),
            (reqwest::Method::POST, format!("{path}/enable"), Some(json!({}))),
            (reqwest::Method::POST, format!("{path}/rotate"), Some(json!({}))),
            (reqwest::Method::POST, format!("{path}/credits"), Some(json!({ "add": 5 }))),
            (reqwest::Method::DELETE, path.clone(), None),
        ];
        for (method, p, body) in stale {
            let (status, v) = api.send(method.clone(), &p, body, Some("\"1\"")).await;
            assert_eq!((status, v["code"].as_str()), (412, Some("version_conflict")), "{store} {method} {p}: {v}");
            assert_eq!(v["currentVersion"], 2, "{store}: {v}");
        }
        let (_, now) = api.get(&path).await;
        assert_eq!((now["data"]["version"].as_u64(), now["data"]["description"].as_str()), (Some(2), Some("one")), "{now}");
        assert_eq!(now["data"]["enabled"], true);
        assert!(now["data"]["credits"].is_null(), "{store}: a refused top-up gave the key credits: {now}");
        // A bad tag is refused, not guessed at.
        for bad in ["2", "W/\"2\"", "*", "\"2\", \"3\""] {
            let (status, v) = api.send(reqwest::Method::PATCH, &path, Some(json!({ "description": "x" })), Some(bad)).await;
            assert_eq!((status, v["field"].as_str()), (400, Some("If-Match")), "{store} {bad}: {v}");
        }
        let (status, _) = api.send(reqwest::Method::POST, &format!("{path}/disable"), Some(json!({})), Some("\"2\"")).await;
        assert_eq!(status, 200);
        let (status, _) = api.send(reqwest::Method::DELETE, &path, None, Some("\"3\"")).await;
        assert_eq!(status, 200, "{store}");

        // Roles the same way.
        let (status, v) = api.post("/api-roles", json!({ "id": "tagged", "permissions": ["lists.view"] })).await;
        assert_eq!(status, 201, "{v}");
        let resp = c.get(s.admin_url("/api-roles/tagged")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(resp.headers()["etag"], "\"1\"");
        let edit = Some(json!({ "description": "d" }));
        let (status, v) = api.send(reqwest::Method::PATCH, "/api-roles/tagged", edit.clone(), Some("\"1\"")).await;
        assert_eq!((status, v["data"]["version"].as_u64()), (200, Some(2)), "{v}");
        let (status, v) = api.send(reqwest::Method::PATCH, "/api-roles/tagged", edit, Some("\"1\"")).await;
        assert_eq!((status, v["currentVersion"].as_u64()), (412, Some(2)), "{v}");
        let (status, _) = api.send(reqwest::Method::DELETE, "/api-roles/tagged", None, Some("\"1\"")).await;
        assert_eq!(status, 412);
        let (status, _) = api.send(reqwest::Method::DELETE, "/api-roles/tagged", None, Some("\"2\"")).await;
        assert_eq!(status, 200);

        // The CLI's --if-version.
        let (id, _) = s.create_key(&["--name", "cli-tagged"]);
        let out = s.cli(&["keys", "disable", &id, "--if-version", "7", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{store}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["code"], "version_conflict", "{v}");
        let v = s.cli_json(&["keys", "disable", &id, "--if-version", "1"]);
        assert_eq!((v["enabled"].as_bool(), v["version"].as_u64()), (Some(false), Some(2)));
    }
}
