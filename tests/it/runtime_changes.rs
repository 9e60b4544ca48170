//! A running gateway sees CLI changes (disable, delete, edit, role edit)
//! within a second, without a restart; SIGHUP reloads the config and a bad
//! file keeps the running one.

use crate::common::*;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(1);

async fn status(url: &str, token: &str) -> u16 {
    client().get(url).bearer_auth(token).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_enable_and_delete_take_effect_without_restart() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let (id, token) = s.create_key(&["--name", "victim", "--role", "read-only", "--rate-limit", "100000"]);
    let _gw = s.start();
    let url = s.url("/api/lists");
    assert_eq!(status(&url, &token).await, 200); // now cached

    s.cli_json(&["keys", "disable", &id]);
    let took = eventually(WITHIN, || async { status(&url, &token).await == 401 }).await;
    assert!(took.is_some(), "disable was not seen within {WITHIN:?}");
    let body = json_of(client().get(&url).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(body["code"], "key_disabled");

    s.cli_json(&["keys", "enable", &id]);
    assert!(eventually(WITHIN, || async { status(&url, &token).await == 200 }).await.is_some(), "enable not seen");

    s.cli_json(&["keys", "delete", &id]);
    assert!(eventually(WITHIN, || async { status(&url, &token).await == 401 }).await.is_some(), "delete not seen");
    let body = json_of(client().get(&url).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(body["code"], "invalid_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_and_role_edits_take_effect_without_restart() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let (id, token) = s.create_key(&["--name", "editable", "--role", "read-only", "--rate-limit", "50000"]);
    let _gw = s.start();
    let c = client();
    let lists = s.url("/api/lists");
    let resp = c.get(&lists).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.headers()["x-ratelimit-limit"], "50000");

    s.cli_json(&["keys", "edit", &id, "--rate-limit", "40000"]);
    let seen = eventually(WITHIN, || async {
        let resp = client().get(&lists).bearer_auth(&token).send().await.unwrap();
        resp.headers()["x-ratelimit-limit"] == "40000"
    })
    .await;
    assert!(seen.is_some(), "rate-limit edit not seen");

    // Role edit: read-only loses lists.view.
    s.cli_json(&["roles", "edit", "read-only", "--permission", "contacts.view"]);
    assert!(eventually(WITHIN, || async { status(&lists, &token).await == 403 }).await.is_some(), "role edit not seen");
    assert_eq!(status(&s.url("/api/contacts/1"), &token).await, 200);

    // A new key for a token that was just refused (negative cache) works at once.
    let legacy = "legacy.0123456789abcdefghij";
    assert_eq!(status(&lists, legacy).await, 401);
    s.cli_json(&["keys", "import", "--token", legacy, "--name", "late", "--permission", "lists.view", "--rate-limit", "100000"]);
    assert!(eventually(WITHIN, || async { status(&lists, legacy).await == 200 }).await.is_some(), "import not seen");

    let text = c.get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("keygate_revocation_lag_seconds_count"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_old_secret_for_the_grace_period() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let (id, old) = s.create_key(&["--name", "rotating", "--role", "read-only", "--rate-limit", "100000"]);
    let _gw = s.start();
    let url = s.url("/api/lists");
    assert_eq!(status(&url, &old).await, 200);
    let data = s.cli_json(&["keys", "rotate", &id, "--grace-seconds", "2"]);
    let new = data["apiKey"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(data["keyId"], id.as_str());
    assert!(eventually(WITHIN, || async { status(&url, &new).await == 200 }).await.is_some());
    assert_eq!(status(&url, &old).await, 200, "old secret must work during the grace period");
    assert!(
        eventually(Duration::from_secs(4), || async { status(&url, &old).await == 401 }).await.is_some(),
        "old secret still works"
    );
    assert_eq!(status(&url, &new).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_bad_file_keeps_the_running_config() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "default_per_minute = 5");
    let (_, token) = s.create_key(&["--name", "reload", "--role", "read-only"]);
    let gw = s.start();
    let url = s.url("/api/lists");
    let limit = || async {
        client().get(&url).bearer_auth(&token).send().await.unwrap().headers()["x-ratelimit-limit"].to_str().unwrap().to_string()
    };
    assert_eq!(limit().await, "5");

    let good = std::fs::read_to_string(&s.config).unwrap().replace("default_per_minute = 5", "default_per_minute = 6");
    std::fs::write(&s.config, &good).unwrap();
    gw.signal("HUP");
    assert!(eventually(Duration::from_secs(2), || async { limit().await == "6" }).await.is_some(), "reload not applied");

    std::fs::write(&s.config, good.replace("default_per_minute = 6", "default_per_minute = 8\nbogus_field = 1")).unwrap();
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(limit().await, "6", "a bad file must keep the running config");
    assert!(gw.log_text().contains("bogus_field"), "the refusal names the field:\n{}", gw.log_text());
    let text = client().get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"keygate_config_reloads_total{result="error"} 1"#), "{text}");
    assert!(text.contains(r#"keygate_config_reloads_total{result="ok"} 1"#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_recorded_in_batches_and_survives_restart() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("[rate_limit]", "[keys]\nusage_flush_interval = \"200ms\"\n\n[rate_limit]");
    std::fs::write(&s.config, text).unwrap();
    let (id, token) = s.create_key(&["--name", "counted", "--role", "read-only"]);
    let gw = s.start();
    for _ in 0..3 {
        assert_eq!(status(&s.url("/api/lists"), &token).await, 200);
    }
    // Refused requests are not usage.
    client().post(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap();
    assert!(gw.stop().success());
    let data = s.cli_json(&["keys", "show", &id]);
    assert_eq!(data["usageCount"], 3, "{data}");
    assert!(data["lastUsed"].is_string(), "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_tls_certificate_without_a_restart() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let issue = || {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()
    };
    let old = issue();
    let tls = format!("tls = {{ cert = \"{}\", key = \"{}\" }}", cert_path.display(), key_path.display());
    let s = Setup::new(&up.url(), &tls, "");
    let (_, token) = s.create_key(&["--name", "tls", "--role", "read-only"]);
    let gw = s.start();
    let url = format!("https://localhost:{}/api/lists", s.data_port);
    let trusting = |root: &reqwest::Certificate| {
        reqwest::Client::builder()
            .add_root_certificate(root.clone())
            .resolve("localhost", ([127, 0, 0, 1], s.data_port).into())
            .build()
            .unwrap()
    };
    assert_eq!(trusting(&old).get(&url).bearer_auth(&token).send().await.unwrap().status(), 200);
    // The certificate is renewed in place (as certbot does), then SIGHUP.
    let new = issue();
    gw.signal("HUP");
    let rotated = eventually(Duration::from_secs(5), || async {
        trusting(&new).get(&url).bearer_auth(&token).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(rotated.is_some(), "new connections still got the old certificate:\n{}", gw.log_text());
    assert!(trusting(&old).get(&url).bearer_auth(&token).send().await.is_err(), "the old certificate is still served");
}
