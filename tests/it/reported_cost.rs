//! Cost the upstream reports (#28): a route's `cost_header` settles what
//! a request really cost against what was charged up front, in every
//! window and the credits, on the embedded store and on two Redis nodes;
//! the field never reaches the client; a malformed report is counted and
//! the route's cost stands.

use crate::common::redis::RedisServer;
use crate::common::*;
use serde_json::Value;

/// The test config's routes with one whose upstream reports its cost.
fn with_cost_route(s: &Setup) {
    let text = std::fs::read_to_string(&s.config).unwrap().replacen(
        "[[routes]]\n",
        "[[routes]]\nmatch = \"POST /api/cost/{n}\"\npermission = \"broadcasts.send\"\ncost_header = \"X-Keygate-Cost\"\n\n[[routes]]\n",
        1,
    );
    let text = text.replace("[store]\n", "[keys]\nusage_flush_interval = \"200ms\"\n\n[store]\n");
    std::fs::write(&s.config, format!("{text}\n[plans.daily]\nper_minute = 100000\nper_day = 1000\n")).unwrap();
}

/// `GET path` on the admin API of `node`.
async fn admin(node: &Setup, path: &str) -> Value {
    let resp = client().get(node.admin_url(path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    resp.json().await.unwrap()
}

/// What the node says of a key's window (`day`) or credits.
async fn used(node: &Setup, key_id: &str, window: &str) -> Value {
    let usage = admin(node, &format!("/api-keys/{key_id}/usage")).await;
    if window == "credits" {
        return usage["data"]["credits"]["remaining"].clone();
    }
    let windows = usage["data"]["windows"].as_array().cloned().unwrap_or_default();
    windows.into_iter().find(|w| w["window"] == window).map_or(Value::Null, |w| w["used"].clone())
}

/// POSTs `/api/cost/{reported}` on `node`: the status, the code of a
/// refusal, and whether the cost field reached the client.
async fn send(node: &Setup, token: &str, reported: &str) -> (u16, String, bool) {
    let resp = client().post(node.url(&format!("/api/cost/{reported}"))).bearer_auth(token).send().await.unwrap();
    let status = resp.status().as_u16();
    let leaked = resp.headers().contains_key("x-keygate-cost");
    let body: Value = resp.json().await.unwrap_or_default();
    (status, body["code"].as_str().unwrap_or("").to_string(), leaked)
}

/// 1,000 credits, a backend reporting 500 each time: 500 left, then 0,
/// then refused; the client never sees the field.
async fn credits_follow_the_reported_cost(nodes: &[&Setup]) {
    let first = nodes[0];
    let (key_id, token) =
        first.create_key(&["--name", "sender", "--role", "full-access", "--credits", "1000", "--rate-limit", "100000"]);
    assert_eq!(send(nodes[0], &token, "500").await, (200, String::new(), false));
    assert_eq!(used(first, &key_id, "credits").await, 500, "1,000 less 500");
    assert_eq!(send(nodes[nodes.len() - 1], &token, "500").await, (200, String::new(), false));
    assert_eq!(used(first, &key_id, "credits").await, 0, "then none");
    let third = send(nodes[0], &token, "500").await;
    assert_eq!((third.0, third.1.as_str()), (429, "credits_exhausted"), "{third:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_cost_is_settled_against_credits_windows_and_usage() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    with_cost_route(&s);
    let gw = s.start();
    credits_follow_the_reported_cost(&[&s]).await;

    // A day quota of 1,000: a report of 900 takes the day to 900, less
    // is given back, and a report past the limit refuses the next request.
    let (key_id, token) = s.create_key(&["--name", "daily", "--role", "full-access", "--plan", "daily"]);
    assert_eq!(send(&s, &token, "900").await.0, 200);
    assert_eq!(send(&s, &token, "0").await.0, 200, "reported less: the unit charged up front goes back");
    assert_eq!(used(&s, &key_id, "day").await, 900);
    assert_eq!(send(&s, &token, "1000").await.0, 200, "admitted at 900 + 1, then settled past the limit");
    let refused = send(&s, &token, "1").await;
    assert_eq!((refused.0, refused.1.as_str()), (429, "quota_exceeded"), "{refused:?}");

    // Malformed or repeated: counted and logged; the route's cost stands.
    let (malformed_id, malformed) = s.create_key(&["--name", "malformed", "--role", "full-access", "--plan", "daily"]);
    for bad in ["abc", "1000001", "-5"] {
        assert_eq!(send(&s, &malformed, bad).await, (200, String::new(), false), "{bad}");
    }
    assert_eq!(metric_value(&s, "keygate_reported_costs_total{result=\"malformed\"}").await, "3");
    assert_eq!(used(&s, &malformed_id, "day").await, 3);
    assert!(gw.log_text().contains("reported cost was refused"));
    assert!(!gw.log_text().contains(&malformed), "never a token in the log");

    // The report is the real cost in usage: 900 + 0 + 1000 over three
    // admitted requests (the refused fourth costs nothing).
    let mut row = Value::Null;
    for _ in 0..40 {
        row = admin(&s, &format!("/usage?keyId={key_id}")).await["data"][0].clone();
        if row["units"] == 1900 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    assert_eq!(
        (row["admitted"].clone(), row["refused"].clone(), row["units"].clone()),
        (3.into(), 1.into(), 1900.into()),
        "{row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn a_reported_cost_is_settled_across_two_redis_nodes() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    let first = Setup::redis(&up.url(), &redis.url(), "nodes_hint = 2");
    with_cost_route(&first);
    let second = first.another_node();
    let (_a, _b) = (first.start(), second.start());
    credits_follow_the_reported_cost(&[&first, &second]).await;
}
