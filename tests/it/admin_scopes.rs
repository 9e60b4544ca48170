//! Named admin tokens with scopes: made with `keygate admin-token new`,
//! pasted into the config by hash, each allowed what its scopes say and
//! named in the audit log; `POST /verify` for the `verify` scope.

use crate::common::*;
use serde_json::{json, Value};

/// Makes a token with the CLI and adds its block to the config.
fn add_token(s: &Setup, name: &str, scopes: &[&str]) -> String {
    let mut args = vec!["admin-token", "new", "--name", name];
    for scope in scopes {
        args.extend(["--scope", scope]);
    }
    let made = s.cli_json(&args);
    let block = made["config"].as_str().unwrap();
    assert!(!block.contains(made["token"].as_str().unwrap()), "the config block holds the token itself");
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!("\n{block}"));
    std::fs::write(&s.config, text).unwrap();
    made["token"].as_str().unwrap().to_string()
}

async fn call(s: &Setup, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let c = client();
    let mut req = c.request(method.parse().unwrap(), s.admin_url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_may_do_what_its_scopes_say_and_is_named_in_the_audit_log() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let reader = add_token(&s, "grafana-reader", &["read"]);
    let writer = add_token(&s, "ci.writer", &["write"]);
    let verifier = add_token(&s, "billing-verify", &["verify"]);
    let out = s.cli(&["config", "check"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, key) = s.create_key(&["--name", "checked", "--role", "read-only"]);
    let gw = s.start();

    // Who is signed in.
    assert_eq!(
        call(&s, &reader, "GET", "/session", None).await.1["data"],
        json!({ "name": "grafana-reader", "scopes": ["read"] })
    );
    assert_eq!(call(&s, ADMIN_TOKEN, "GET", "/session", None).await.1["data"], json!({ "name": "admin", "scopes": ["admin"] }));
    assert_eq!(call(&s, "kgadm_not-a-token-of-ours-at-all", "GET", "/session", None).await.0, 401);

    // read: listings, never changes nor exports.
    assert_eq!(call(&s, &reader, "GET", "/api-keys", None).await.0, 200);
    let (status, v) = call(&s, &reader, "POST", "/api-keys", Some(json!({ "name": "nope" }))).await;
    assert_eq!((status, v["code"].as_str(), v["required"].as_str()), (403, Some("insufficient_scope"), Some("write")), "{v}");
    assert_eq!(call(&s, &reader, "GET", "/api-keys/export", None).await.0, 403);
    assert_eq!(call(&s, &reader, "POST", "/verify", Some(json!({ "key": key }))).await.0, 403);

    // write: changes, named in the audit log.
    let (status, v) = call(&s, &writer, "POST", "/api-keys", Some(json!({ "name": "from ci" }))).await;
    assert_eq!(status, 201, "{v}");
    let id = v["data"]["keyId"].as_str().unwrap().to_string();
    assert_eq!(call(&s, &writer, "GET", "/api-keys", None).await.0, 403, "write alone does not read");
    let (_, log) = call(&s, ADMIN_TOKEN, "GET", &format!("/audit-log?target={id}"), None).await;
    assert_eq!(log["data"][0]["actor"], "admin-api (ci.writer@127.0.0.1)", "{log}");

    // verify: a token's verdict, and nothing else.
    let (status, v) = call(&s, &verifier, "POST", "/verify", Some(json!({ "key": key }))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["data"]["valid"].as_bool(), v["data"]["name"].as_str()), (Some(true), Some("checked")), "{v}");
    assert!(v["data"]["permissions"].as_array().unwrap().contains(&json!("lists.view")), "{v}");
    let (_, v) = call(&s, &verifier, "POST", "/verify", Some(json!({ "key": key, "permission": "broadcasts.send" }))).await;
    assert_eq!(
        (v["data"]["valid"].as_bool(), v["data"]["code"].as_str()),
        (Some(false), Some("insufficient_permissions")),
        "{v}"
    );
    let (_, v) =
        call(&s, &verifier, "POST", "/verify", Some(json!({ "key": "kg_live_0123456789abcdefghijABCDEFGHIJ0123456789" }))).await;
    assert_eq!((v["data"]["valid"].as_bool(), v["data"]["code"].as_str()), (Some(false), Some("invalid_key")), "{v}");
    s.cli_json(&["keys", "disable", &id]);
    assert_eq!(call(&s, &verifier, "GET", "/api-keys", None).await.0, 403);
    let (status, v) = call(&s, &verifier, "POST", "/verify", Some(json!({}))).await;
    assert_eq!((status, v["field"].as_str()), (400, Some("key")), "{v}");

    // The metering routes: verify-and-charge is verify's, reports are
    // read's, credit changes write's.
    let charge = json!({ "key": key, "cost": 1 });
    assert_eq!(call(&s, &reader, "POST", "/v1/keys/verify", Some(charge.clone())).await.0, 403);
    let (status, v) = call(&s, &verifier, "POST", "/v1/keys/verify", Some(charge)).await;
    assert_eq!((status, v["data"]["valid"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(call(&s, &verifier, "GET", "/usage", None).await.0, 403);
    assert_eq!(call(&s, &reader, "GET", "/usage", None).await.0, 200);
    let top_up = format!("/api-keys/{id}/credits");
    assert_eq!(call(&s, &reader, "POST", &top_up, Some(json!({ "add": 5 }))).await.0, 403);
    assert_eq!(call(&s, &writer, "POST", &top_up, Some(json!({ "add": 5, "start": true }))).await.0, 200);

    // The full token does everything, exports included.
    assert_eq!(call(&s, ADMIN_TOKEN, "GET", "/api-keys/export", None).await.0, 200);
    drop(gw);
}

#[test]
fn the_cli_names_its_user_or_its_uid_in_the_audit_log() {
    let s = Setup::new("http://127.0.0.1:9", "", "");
    let out = std::process::Command::new(keygate_bin())
        .arg("--config")
        .arg(&s.config)
        .args(["keys", "create", "--name", "nobody's", "--json"])
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = s.cli_json(&["audit-log"]);
    let actor = log[0]["actor"].as_str().unwrap();
    assert!(actor.starts_with("cli (uid ") && actor.ends_with(')'), "{actor}");
}

#[test]
fn bad_token_entries_are_refused_with_their_path() {
    let s = Setup::new("http://127.0.0.1:9", "", "");
    let text = std::fs::read_to_string(&s.config).unwrap();
    for (block, field, why) in [
        ("name = \"admin\"\nsha256 = \"{h}\"\nscopes = [\"read\"]", "admin.tokens[0].name", "token_env"),
        ("name = \"x\"\nsha256 = \"abc\"\nscopes = [\"read\"]", "admin.tokens[0].sha256", "64 hex"),
        ("name = \"x\"\nsha256 = \"{h}\"\nscopes = [\"root\"]", "admin.tokens[0].scopes", "unknown scope"),
        ("name = \"x\"\nsha256 = \"{h}\"\nscopes = []", "admin.tokens[0].scopes", "at least one"),
    ] {
        let block = block.replace("{h}", &"ab".repeat(32));
        std::fs::write(&s.config, format!("{text}\n[[admin.tokens]]\n{block}\n")).unwrap();
        let out = s.cli(&["config", "check"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(field) && err.contains(why), "{block}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_added_to_the_config_works_after_a_reload() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let gw = s.start();
    let made = s.cli_json(&["admin-token", "new", "--name", "late", "--scope", "read"]);
    let token = made["token"].as_str().unwrap().to_string();
    assert_eq!(call(&s, &token, "GET", "/api-keys", None).await.0, 401);
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!("\n{}", made["config"].as_str().unwrap()));
    std::fs::write(&s.config, text).unwrap();
    gw.signal("HUP");
    let works =
        eventually(std::time::Duration::from_secs(3), || async { call(&s, &token, "GET", "/api-keys", None).await.0 == 200 })
            .await;
    assert!(works.is_some(), "the new token was refused after SIGHUP:\n{}", gw.log_text());
}
