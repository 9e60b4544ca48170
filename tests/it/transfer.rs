//! `keys export` / `keys import --file` and `roles export` / `roles import`:
//! a backup restored into a fresh store, and a move from SQLite to Redis,
//! after which every key works with the secret it had (a rotated-out one
//! too, for its grace period); an existing platform's tokens in bulk; and
//! an import with one bad line changes nothing.

use crate::common::redis::RedisServer;
use crate::common::*;
use serde_json::Value;

async fn status(s: &Setup, token: &str) -> u16 {
    client().get(s.url("/api/lists")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

fn export(s: &Setup, what: &str) -> String {
    let out = s.cli(&[what, "export"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn import(s: &Setup, what: &str, text: &str) -> Value {
    let file = s.config.with_file_name(format!("{what}.jsonl"));
    std::fs::write(&file, text).unwrap();
    s.cli_json(&[what, "import", "--file", file.to_str().unwrap()])
}

/// A store with a custom role and keys of every kind, and their secrets.
fn populated(s: &Setup) -> Vec<String> {
    s.cli_json(&[
        "roles",
        "create",
        "--id",
        "stats-reader",
        "--name",
        "Stats",
        "--permission",
        "contacts.view",
        "--permission",
        "lists.view",
    ]);
    let (_, plain) = s.create_key(&["--name", "plain", "--role", "read-only"]);
    let (_, full) = s.create_key(&[
        "--name",
        "everything",
        "--description",
        "d",
        "--owner",
        "ops@example.com",
        "--role",
        "stats-reader",
        "--permission",
        "broadcasts.send",
        "--plan",
        "pro",
        "--rate-limit",
        "250",
        "--allow-ip",
        "127.0.0.0/8",
        "--expires-in",
        "30d",
        "--meta",
        "default_optin_mailing=7",
        "--per-day",
        "900",
        "--credits",
        "40",
        "--refill",
        "50",
        "--refill-interval",
        "month",
    ]);
    let (rotated_id, old) = s.create_key(&["--name", "rotated", "--role", "read-only"]);
    let new = s.cli_json(&["keys", "rotate", &rotated_id, "--grace-seconds", "3600"])["apiKey"].as_str().unwrap().to_string();
    let (_, fourth) = s.create_key(&["--name", "fourth", "--role", "read-only", "--env", "live"]);
    vec![plain, full, old, new, fourth]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn a_backup_restores_into_a_fresh_sqlite_and_into_redis_with_every_secret_working() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    let source = Setup::new(&up.url(), "", "");
    let secrets = populated(&source);
    let (keys, roles) = (export(&source, "keys"), export(&source, "roles"));
    assert_eq!(keys.lines().count(), 4, "{keys}");
    for secret in &secrets {
        assert!(!keys.contains(secret.as_str()), "an export holds a secret");
    }
    let before: Vec<Value> = keys.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(before.iter().all(|k| k["tokenSha256"].as_str().is_some_and(|h| h.len() == 64)), "{keys}");
    let rotated = before.iter().find(|k| k["name"] == "rotated").unwrap();
    assert_eq!(rotated["previousSecrets"].as_array().map(Vec::len), Some(1), "{rotated}");

    for target in [Setup::new(&up.url(), "", ""), Setup::redis(&up.url(), &redis.url(), "")] {
        assert_eq!(import(&target, "roles", &roles)["created"], 1, "the one role not seeded by the config");
        let summary = import(&target, "keys", &keys);
        assert_eq!((summary["created"].as_u64(), summary["updated"].as_u64()), (Some(4), Some(0)), "{summary}");
        // The same export again: every key is found by its id and replaced.
        let again = import(&target, "keys", &keys);
        assert_eq!((again["created"].as_u64(), again["updated"].as_u64()), (Some(0), Some(4)), "{again}");
        let sorted = |text: &str| {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(&export(&target, "keys")), sorted(&keys), "what is exported again is what was imported");
        let gw = target.start();
        for secret in &secrets {
            assert_eq!(status(&target, secret).await, 200, "{secret:.12}: a restored key refused its secret:\n{}", gw.log_text());
        }
        let shown = target.cli_json(&["keys", "list"]);
        let everything = shown.as_array().unwrap().iter().find(|k| k["name"] == "everything").unwrap().clone();
        assert_eq!(everything["rateLimit"], 250);
        assert_eq!(everything["plan"], "pro");
        assert_eq!(everything["metadata"]["default_optin_mailing"], "7");
        assert_eq!(everything["allowedIps"], serde_json::json!(["127.0.0.0/8"]));
        // Quotas and credits (terms and balance) travel with the key.
        assert_eq!(everything["quota"]["perDay"], 900);
        assert_eq!(everything["credits"], serde_json::json!({ "refillAmount": 50, "refillInterval": "month" }));
        // Stopped, the gateway has written what it spent (the CLI reads the store).
        assert!(gw.stop().success());
        let usage = target.cli_json(&["keys", "usage", everything["keyId"].as_str().unwrap()]);
        assert_eq!(usage["credits"]["remaining"], 39, "40 restored, one spent by the request above: {usage}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_platforms_tokens_import_in_bulk_and_a_bad_line_changes_nothing() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let lines = "{\"name\": \"legacy one\", \"token\": \"acme.0123456789abcdef01\", \"role\": \"read-only\", \"owner\": \"a@example.com\"}\n\
                 \n\
                 {\"name\": \"legacy two\", \"token\": \"acme.0123456789abcdef02\", \"role\": \"read-only\"}\n";
    let summary = import(&s, "keys", lines);
    assert_eq!(summary["created"], 2, "{summary}");
    let gw = s.start();
    assert_eq!(status(&s, "acme.0123456789abcdef01").await, 200, "{}", gw.log_text());
    assert_eq!(status(&s, "acme.0123456789abcdef02").await, 200);

    // One good line, then three bad ones: refused whole, each bad line named.
    let bad = "{\"name\": \"fine\", \"token\": \"acme.0123456789abcdef03\"}\n\
               {\"name\": \"no role\", \"token\": \"acme.0123456789abcdef04\", \"role\": \"ghost\"}\n\
               {\"name\": \"typo\", \"token\": \"acme.0123456789abcdef05\", \"rolle\": \"read-only\"}\n\
               {\"name\": \"forged\", \"token\": \"kg_live_0123456789abcdefghijABCDEFGHIJ0123456789\"}\n";
    let file = s.config.with_file_name("bad.jsonl");
    std::fs::write(&file, bad).unwrap();
    let out = s.cli(&["keys", "import", "--file", file.to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = v["error"].as_str().unwrap();
    for want in ["nothing was imported", "line 2: role:", "line 3:", "rolle", "line 4: token:", "checksum"] {
        assert!(error.contains(want), "{want}: {error}");
    }
    assert!(!error.contains("line 1"), "{error}");
    assert_eq!(s.cli_json(&["keys", "list"]).as_array().unwrap().len(), 2, "the good line was not written either");
    assert_eq!(status(&s, "acme.0123456789abcdef03").await, 401);

    // A secret that belongs to another key is refused, naming that key.
    let stolen = "{\"keyId\": \"key_other\", \"name\": \"thief\", \"token\": \"acme.0123456789abcdef01\"}\n";
    // Standard input works as a file (here an empty one: nothing to do).
    let out = s.cli(&["keys", "import", "--file", "-", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["data"]["created"], 0);
    let file = s.config.with_file_name("stolen.jsonl");
    std::fs::write(&file, stolen).unwrap();
    let out = s.cli(&["keys", "import", "--file", file.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("already belongs to key"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_exports_and_imports_the_same_lines() {
    let up = upstream::start().await;
    let (from, to) = (Setup::new(&up.url(), "", ""), Setup::new(&up.url(), "", ""));
    let secrets = populated(&from);
    let (_a, _b) = (from.start(), to.start());
    let c = client();
    let get = |s: &Setup, path: &str| c.get(s.admin_url(path)).bearer_auth(ADMIN_TOKEN).send();
    for what in ["api-roles", "api-keys"] {
        let resp = get(&from, &format!("/{what}/export")).await.unwrap();
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        let lines = resp.text().await.unwrap();
        assert!(secrets.iter().all(|s| !lines.contains(s.as_str())), "an export holds a secret");
        let resp = c.post(to.admin_url(&format!("/{what}/import"))).bearer_auth(ADMIN_TOKEN).body(lines).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(json_of(resp).await["data"]["created"].as_u64().unwrap() >= 1);
    }
    // The running gateway learns of the imported roles and keys through the
    // change feed (within its poll interval), as of any change.
    for secret in &secrets {
        let works = eventually(std::time::Duration::from_secs(2), || async { status(&to, secret).await == 200 }).await;
        assert!(works.is_some(), "a key moved through the admin API refused its secret: {}", status(&to, secret).await);
    }
    let resp = c.post(to.admin_url("/api-keys/import")).bearer_auth(ADMIN_TOKEN).body("{\"name\": 5}\n").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(json_of(resp).await["error"].as_str().unwrap().contains("line 1"));
}
