//! Shadow mode (#28): a route, a plan or every limit is tried before it
//! bites. What it would refuse goes on, the upstream told by
//! `X-Keygate-Shadow`, the access line and a counter; counters advance as
//! if enforced; what is wrong with the key itself is never shadowed.

use crate::common::*;
use serde_json::Value;

/// The status and, when forwarded, the `X-Keygate-Shadow` the upstream saw.
async fn call(s: &Setup, method: &str, path: &str, token: &str) -> (u16, Option<String>) {
    let resp = client()
        .request(method.parse().unwrap(), s.url(path))
        .bearer_auth(token)
        .header("X-Keygate-Shadow", "forged-by-the-client")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or_default();
    (status, body["headers"]["x-keygate-shadow"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadowed_route_or_plan_forwards_what_it_would_refuse_and_says_so() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let text = std::fs::read_to_string(&s.config).unwrap().replacen(
        "match = \"POST /api/lists\"\npermission = \"lists.create\"",
        "match = \"POST /api/lists\"\npermission = \"lists.create\"\nshadow = true",
        1,
    );
    std::fs::write(&s.config, format!("{text}\n[plans.trial]\nper_minute = 2\nshadow = true\n")).unwrap();
    let (reader_id, reader) = s.create_key(&["--name", "reader", "--role", "read-only"]);
    let (trial_id, trial) = s.create_key(&["--name", "trial", "--role", "read-only", "--plan", "trial"]);
    let (_, own) = s.create_key(&["--name", "own limit", "--role", "read-only", "--plan", "trial", "--rate-limit", "2"]);
    let gw = s.start();
    away_from_window_edge(std::time::Duration::from_secs(5)).await;

    // The route's permission is tried: a read-only key goes on, the upstream told.
    assert_eq!(call(&s, "POST", "/api/lists", &reader).await, (200, Some("insufficient_permissions".into())));
    // Allowed requests carry no header (and never the client's forgery).
    assert_eq!(call(&s, "GET", "/api/lists", &reader).await, (200, None));

    // The plan's minute window is tried; the third request would be refused.
    let statuses: Vec<(u16, Option<String>)> =
        futures_util::future::join_all((0..3).map(|_| call(&s, "GET", "/api/lists", &trial))).await;
    assert_eq!(statuses.iter().filter(|r| r.0 == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|r| r.1.as_deref() == Some("rate_limited")).count(), 1, "{statuses:?}");
    // Counted as if enforced: two of the minute's two taken, none more.
    let usage: Value = client()
        .get(s.admin_url(&format!("/api-keys/{trial_id}/usage")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let minute = usage["data"]["windows"].as_array().unwrap().iter().find(|w| w["window"] == "minute").cloned().unwrap();
    assert_eq!(minute["used"], 2, "{usage}");

    // A key's own limit is enforced even on a shadowed plan.
    let mut own_statuses = Vec::new();
    for _ in 0..3 {
        own_statuses.push(call(&s, "GET", "/api/lists", &own).await.0);
    }
    assert_eq!(own_statuses, [200, 200, 429]);

    let metrics = client().get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("keygate_shadow_refusals_total{code=\"insufficient_permissions\",route=\"POST /api/lists\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("keygate_shadow_refusals_total{code=\"rate_limited\",route=\"GET /api/lists\"} 1"), "{metrics}");
    assert!(
        gw.log_text().contains("shadow=\"insufficient_permissions\"")
            || gw.log_text().contains("shadow=insufficient_permissions")
    );

    // What is wrong with the key itself is never shadowed.
    s.cli_json(&["keys", "disable", &reader_id]);
    let refused =
        eventually(std::time::Duration::from_secs(2), || async { call(&s, "POST", "/api/lists", &reader).await.0 == 401 }).await;
    assert!(refused.is_some(), "a disabled key went through a shadowed route");
    assert_eq!(call(&s, "POST", "/api/lists", "kg_live_not-a-key-of-anyone-at-all").await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadowing_every_limit_tries_quotas_and_credits_but_not_the_key() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "shadow = true");
    let (_, daily) = s.create_key(&["--name", "daily", "--role", "read-only", "--per-day", "1"]);
    let (_, prepaid) = s.create_key(&["--name", "prepaid", "--role", "read-only", "--credits", "1"]);
    let (_, narrow) = s.create_key(&["--name", "narrow", "--role", "read-only", "--allow-ip", "10.9.9.9/32"]);
    let _gw = s.start();
    assert_eq!(call(&s, "GET", "/api/lists", &daily).await, (200, None));
    assert_eq!(call(&s, "GET", "/api/lists", &daily).await, (200, Some("quota_exceeded".into())));
    assert_eq!(call(&s, "GET", "/api/lists", &prepaid).await, (200, None));
    assert_eq!(call(&s, "GET", "/api/lists", &prepaid).await, (200, Some("credits_exhausted".into())));
    // A key's IP allowlist is not a limit: enforced.
    assert_eq!(call(&s, "GET", "/api/lists", &narrow).await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_shadow_mode_tries_its_own_rules_until_turned_off() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let (id, token) =
        s.create_key(&["--name", "trying", "--role", "read-only", "--allow-ip", "10.9.9.9/32", "--per-day", "1", "--shadow"]);
    assert_eq!(s.cli_json(&["keys", "show", &id])["shadow"], true);
    let gw = s.start();
    // Its allowlist, its permissions and its quota: each would refuse.
    assert_eq!(call(&s, "GET", "/api/lists", &token).await, (200, Some("ip_blocked".into())));
    s.cli_json(&["keys", "edit", &id, "--allow-ip", ""]);
    // The first request past the allowlist takes the day's one.
    let edited = eventually(std::time::Duration::from_secs(2), || async {
        call(&s, "GET", "/api/lists", &token).await.1.as_deref() != Some("ip_blocked")
    })
    .await;
    assert!(edited.is_some(), "the allowlist was not cleared");
    assert_eq!(call(&s, "GET", "/api/lists", &token).await, (200, Some("quota_exceeded".into())));
    assert_eq!(call(&s, "POST", "/api/lists", &token).await, (200, Some("insufficient_permissions".into())));
    // Turned off through the admin API: enforced at once, nothing else changed.
    let resp = client()
        .patch(s.admin_url(&format!("/api-keys/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "shadow": false }))
        .send()
        .await
        .unwrap();
    let edited: Value = resp.json().await.unwrap();
    assert_eq!((edited["data"]["shadow"].as_bool(), edited["data"]["quota"]["perDay"].as_u64()), (Some(false), Some(1)));
    let enforced =
        eventually(std::time::Duration::from_secs(2), || async { call(&s, "POST", "/api/lists", &token).await.0 == 403 }).await;
    assert!(enforced.is_some(), "shadow mode did not end");
    // An export carries it.
    s.cli_json(&["keys", "edit", &id, "--shadow"]);
    let exported = String::from_utf8(s.cli(&["keys", "export"]).stdout).unwrap();
    assert!(exported.contains("\"shadow\":true"), "{exported}");
    drop(gw);
}
