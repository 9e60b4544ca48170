//! Lifecycle events reach `[[webhooks]]` endpoints signed as Standard
//! Webhooks, every one, in order per key: through an endpoint's outage, a
//! gateway killed mid-delivery, and two nodes over one Redis.

use crate::common::hooks::{Received, Receiver};
use crate::common::redis::RedisServer;
use crate::common::*;
use keygate::webhooks::SigningSecret;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const SECRET_ENV: &str = "KG_TEST_WEBHOOK_SECRET";

/// Adds a `[[webhooks]]` endpoint (retries at most 2 s apart, so a test
/// sees an endpoint's return at once) and its secret.
fn with_webhook(s: &mut Setup, url: &str, extra: &str) {
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!(
        "\n[[webhooks]]\nname = \"backend\"\nurl = \"{url}\"\nsecret_env = \"{SECRET_ENV}\"\nmax_retry_interval = \"2s\"\n{extra}\n"
    ));
    std::fs::write(&s.config, text).unwrap();
    s.env.push((SECRET_ENV.into(), SECRET.into()));
}

async fn admin_get(s: &Setup, path: &str) -> Value {
    let resp = client().get(s.admin_url(path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    resp.json().await.unwrap()
}

/// Every event the outbox holds, oldest first: (id, type, keyId).
async fn events(s: &Setup) -> Vec<(String, String, String)> {
    let listed = admin_get(s, "/events?limit=500").await;
    let mut out: Vec<(String, String, String)> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["id"].as_str().unwrap().into(), e["type"].as_str().unwrap().into(), e["data"]["keyId"].as_str().unwrap().into())
        })
        .collect();
    out.reverse();
    out
}

/// Waits until the endpoint has had every one of `ids`.
async fn all_received(receiver: &Receiver, ids: &[String], within: Duration) -> bool {
    let want: BTreeSet<&String> = ids.iter().collect();
    eventually(within, || async {
        let got: BTreeSet<String> = receiver.received().into_iter().map(|r| r.id).collect();
        want.iter().all(|id| got.contains(*id))
    })
    .await
    .is_some()
}

/// Each delivery is signed for its own id, time and body, and the body
/// names the id it was sent under.
fn check_signed(received: &[Received]) {
    let secret = SigningSecret::parse(SECRET).unwrap();
    for r in received {
        let ts: i64 = r.timestamp.parse().unwrap();
        assert!((ts - keygate::clock::now_unix()).abs() < 300, "webhook-timestamp {ts}");
        assert!(secret.verify(&r.id, ts, &r.body, &r.signature), "a delivery's signature does not verify: {r:?}");
        assert_eq!(r.json()["id"], r.id.as_str());
    }
}

/// Per key, the order events were first received in is the order they
/// were written in.
fn check_order(received: &[Received], events: &[(String, String, String)]) {
    let mut first_seen: Vec<String> = Vec::new();
    for r in received {
        if !first_seen.contains(&r.id) {
            first_seen.push(r.id.clone());
        }
    }
    let mut written: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut arrived: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, _, key) in events {
        written.entry(key).or_default().push(id);
        if first_seen.contains(id) {
            let at = first_seen.iter().position(|f| f == id).unwrap();
            arrived.entry(key).or_default().push(&first_seen[at]);
        }
    }
    for (key, ids) in &written {
        let mut by_arrival = ids.clone();
        by_arrival.sort_by_key(|id| first_seen.iter().position(|f| f == id));
        assert_eq!(&by_arrival, ids, "the events of {key} arrived out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_an_endpoint_down_for_thirty_seconds_signed_and_in_order() {
    let up = upstream::start().await;
    let receiver = Receiver::start().await;
    let mut s = Setup::new(&up.url(), "", "");
    with_webhook(&mut s, &receiver.url(), "");
    let (a, secret_a) = s.create_key(&["--name", "alpha", "--role", "read-only", "--owner", "acme"]);
    let (b, _) = s.create_key(&["--name", "beta", "--role", "read-only"]);
    let _gw = s.start();
    let so_far: Vec<String> = events(&s).await.into_iter().map(|e| e.0).collect();
    assert_eq!(so_far.len(), 2);
    assert!(all_received(&receiver, &so_far, Duration::from_secs(5)).await, "the first events never came");
    // Keys go side by side: which came first is not promised.
    let of_a = receiver.received().into_iter().find(|r| r.json()["data"]["keyId"] == a.as_str()).unwrap();
    assert_eq!(of_a.json()["type"], "key.created");
    assert_eq!(of_a.json()["data"]["owner"], "acme");
    assert!(!String::from_utf8_lossy(&of_a.body).contains(&secret_a), "an event carries the secret");

    receiver.down();
    for args in [
        vec!["keys", "disable", a.as_str()],
        vec!["keys", "enable", a.as_str()],
        vec!["keys", "rotate", b.as_str()],
        vec!["keys", "edit", a.as_str(), "--name", "alpha two"],
        vec!["keys", "delete", b.as_str()],
        vec!["keys", "disable", a.as_str()],
    ] {
        s.cli_json(&args);
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let failed = admin_get(&s, "/webhooks/deliveries?status=failed").await;
    assert!(!failed["data"].as_array().unwrap().is_empty(), "nothing failed while the endpoint was down");
    assert!(failed["data"][0]["lastError"].as_str().is_some(), "{failed}");
    receiver.up().await;

    let all = events(&s).await;
    let types: Vec<&str> = all.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        types,
        [
            "key.created",
            "key.created",
            "key.disabled",
            "key.enabled",
            "key.rotated",
            "key.updated",
            "key.deleted",
            "key.disabled"
        ]
    );
    let ids: Vec<String> = all.iter().map(|e| e.0.clone()).collect();
    assert!(all_received(&receiver, &ids, Duration::from_secs(20)).await, "events were lost: {:?}", receiver.received());
    let received = receiver.received();
    let distinct: BTreeSet<&String> = received.iter().map(|r| &r.id).collect();
    assert_eq!(distinct.len(), ids.len(), "the endpoint got events the outbox does not hold");
    check_signed(&received);
    check_order(&received, &all);
    let delivered = admin_get(&s, "/webhooks/deliveries?status=delivered").await;
    assert_eq!(delivered["data"].as_array().unwrap().len(), ids.len());
    let metrics = client().get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keygate_webhook_deliveries_total{result=\"delivered\"}"), "{metrics}");
    assert!(!metrics.contains("keygate_webhook_deliveries_total{result=\"failed\"} 0"), "no failure counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_delivery_sends_the_event_again_after_its_restart() {
    let up = upstream::start().await;
    let receiver = Receiver::start().await;
    let mut s = Setup::new(&up.url(), "", "");
    with_webhook(&mut s, &receiver.url(), "");
    receiver.hold(Duration::from_secs(60));
    let gw = s.start();
    let (a, _) = s.create_key(&["--name", "alpha", "--role", "read-only"]);
    let in_flight = eventually(Duration::from_secs(5), || async { !receiver.received().is_empty() }).await;
    assert!(in_flight.is_some(), "the delivery never started");
    drop(gw); // SIGKILL, the endpoint's answer still held
    receiver.hold(Duration::ZERO);
    s.cli_json(&["keys", "disable", &a]);
    let _gw = s.start();
    let ids: Vec<String> = events(&s).await.into_iter().map(|e| e.0).collect();
    assert!(all_received(&receiver, &ids, Duration::from_secs(15)).await, "lost after the kill: {:?}", receiver.received());
    let received = receiver.received();
    assert!(received.iter().filter(|r| r.id == ids[0]).count() >= 2, "the interrupted delivery was not sent again");
    check_signed(&received);
    check_order(&received, &events(&s).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn two_redis_nodes_deliver_each_event_once_and_one_takes_over_from_the_other() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    let receiver = Receiver::start().await;
    let mut first = Setup::redis(&up.url(), &redis.url(), "");
    with_webhook(&mut first, &receiver.url(), "");
    let mut second = first.another_node();
    second.env = first.env.clone();
    let g1 = first.start();
    let _g2 = second.start();
    let mut keys = Vec::new();
    for i in 0..6 {
        keys.push(first.create_key(&["--name", &format!("k{i}"), "--role", "read-only"]).0);
    }
    for k in &keys[..3] {
        second.cli_json(&["keys", "disable", k]);
    }
    let ids: Vec<String> = events(&first).await.into_iter().map(|e| e.0).collect();
    assert_eq!(ids.len(), 9);
    assert!(all_received(&receiver, &ids, Duration::from_secs(10)).await, "lost: {:?}", receiver.received());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = receiver.received();
    for id in &ids {
        assert_eq!(received.iter().filter(|r| &r.id == id).count(), 1, "{id} was delivered more than once");
    }
    check_signed(&received);

    // The first node dies: whichever node held the lease, the events
    // written now are delivered (by the second once the lease lapses).
    drop(g1);
    for k in &keys[3..] {
        second.cli_json(&["keys", "disable", k]);
    }
    let ids: Vec<String> = events(&second).await.into_iter().map(|e| e.0).collect();
    assert_eq!(ids.len(), 12);
    assert!(all_received(&receiver, &ids, Duration::from_secs(20)).await, "not taken over: {:?}", receiver.received());
    check_order(&receiver.received(), &events(&second).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_is_listed_and_a_replay_sends_it_with_its_first_id() {
    let up = upstream::start().await;
    let receiver = Receiver::start().await;
    receiver.down();
    let mut s = Setup::new(&up.url(), "", "");
    with_webhook(&mut s, &receiver.url(), "retry_for = \"2s\"\nevents = [\"key.created\", \"key.deleted\"]");
    let _gw = s.start();
    let (a, _) = s.create_key(&["--name", "alpha", "--role", "read-only"]);
    s.cli_json(&["keys", "disable", &a]);
    let dead = eventually(Duration::from_secs(10), || async {
        admin_get(&s, "/webhooks/deliveries?status=dead").await["data"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    assert!(dead.is_some(), "the delivery never died");
    let listed = admin_get(&s, "/webhooks/deliveries?status=dead").await;
    let delivery = &listed["data"][0];
    assert_eq!((delivery["type"].as_str(), delivery["keyId"].as_str()), (Some("key.created"), Some(a.as_str())));
    assert!(delivery["attempts"].as_u64().unwrap() >= 2, "{delivery}");
    assert!(delivery["log"].as_array().unwrap().iter().all(|a| a["error"].is_string()), "{delivery}");
    // key.disabled is not among the endpoint's types: never a delivery.
    let all = admin_get(&s, "/webhooks/deliveries").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 1, "{all}");
    let of_key = admin_get(&s, &format!("/events?keyId={a}&type=key.disabled")).await;
    assert_eq!(of_key["data"].as_array().unwrap().len(), 1);

    receiver.up().await;
    let replayed = s.cli_json(&["events", "replay", "--since", "1h"]);
    assert_eq!(replayed["opened"], 1);
    let id = delivery["eventId"].as_str().unwrap().to_string();
    assert!(all_received(&receiver, std::slice::from_ref(&id), Duration::from_secs(10)).await);
    check_signed(&receiver.received());
    let bad = client().get(s.admin_url("/webhooks/deliveries?status=lost")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);
}

/// The events of one key, oldest first: their types.
async fn types_of(s: &Setup, key_id: &str) -> Vec<String> {
    let listed = admin_get(s, &format!("/events?keyId={key_id}")).await;
    let mut types: Vec<String> =
        listed["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    types.reverse();
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_notices_quota_thresholds_and_credit_marks_are_told_once_each() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(
        "\n[events]\nexpiry_notice = [\"1s\", \"2s\"]\nquota_thresholds = [60, 100]\ncredits_low = 5\ncheck_interval = \"100ms\"\n",
    );
    std::fs::write(&s.config, text).unwrap();
    let (quota, quota_token) = s.create_key(&["--name", "quota", "--role", "read-only", "--per-day", "5"]);
    let (credits, credits_token) = s.create_key(&["--name", "credits", "--role", "read-only", "--credits", "10"]);
    let _gw = s.start();
    let (expiring, _) = s.create_key(&["--name", "short-lived", "--role", "read-only", "--expires-in", "4s"]);

    let get = |token: String| {
        let url = s.url("/api/lists");
        async move { client().get(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    let mut quota_statuses = Vec::new();
    for _ in 0..7 {
        quota_statuses.push(get(quota_token.clone()).await);
    }
    assert_eq!(quota_statuses, [200, 200, 200, 200, 200, 429, 429]);
    let mut credit_statuses = Vec::new();
    for _ in 0..12 {
        credit_statuses.push(get(credits_token.clone()).await);
    }
    assert_eq!(credit_statuses.iter().filter(|s| **s == 200).count(), 10, "{credit_statuses:?}");

    let settled = eventually(Duration::from_secs(10), || async {
        types_of(&s, &expiring).await.last().map(String::as_str) == Some("key.expired")
    })
    .await;
    assert!(settled.is_some(), "never told of the expiry: {:?}", types_of(&s, &expiring).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(types_of(&s, &expiring).await, ["key.created", "key.expiring", "key.expiring", "key.expired"]);
    let told = admin_get(&s, &format!("/events?keyId={expiring}&type=key.expiring")).await;
    let notices: Vec<u64> =
        told["data"].as_array().unwrap().iter().map(|e| e["data"]["expiry"]["noticeSeconds"].as_u64().unwrap()).collect();
    assert_eq!(notices, [1, 2], "newest first: the 2s notice, then the 1s one");

    assert_eq!(types_of(&s, &quota).await, ["key.created", "quota.threshold", "quota.threshold"]);
    let thresholds = admin_get(&s, &format!("/events?keyId={quota}&type=quota.threshold")).await;
    let told: Vec<(u64, u64, String)> = thresholds["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let q = &e["data"]["quota"];
            (q["threshold"].as_u64().unwrap(), q["used"].as_u64().unwrap(), q["window"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(told, [(100, 5, "day".to_string()), (60, 3, "day".to_string())]);

    assert_eq!(types_of(&s, &credits).await, ["key.created", "credits.low", "credits.exhausted"]);
    let low = admin_get(&s, &format!("/events?keyId={credits}&type=credits.low")).await;
    assert_eq!(low["data"][0]["data"]["credits"]["remaining"], 4);
}
