//! Guards against abuse (#28): deny lists, read from the config and a
//! file, refused before any key is looked at, and reloaded with SIGHUP.

use crate::common::*;
use std::time::Duration;

async fn status_from(s: &Setup, path: &str, from: &str, token: Option<&str>) -> (u16, String) {
    let mut req = client().get(s.url(path)).header("X-Forwarded-For", from);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    (status, body["code"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_addresses_are_refused_before_any_key_and_a_reload_reads_the_file_again() {
    let up = upstream::start().await;
    let s =
        Setup::new(&up.url(), "trusted_proxies = [\"127.0.0.1/32\"]\ndeny = [\"198.51.100.0/24\"]\ndeny_file = \"deny.txt\"", "");
    std::fs::write(s.dir.path().join("deny.txt"), "# known bad\n203.0.113.0/24\n\n2001:db8::/32 # a whole block\n").unwrap();
    let text = std::fs::read_to_string(&s.config).unwrap().replacen(
        "match = \"GET /api/lists\"\npermission = \"lists.view\"",
        "match = \"GET /api/lists\"\npermission = \"lists.view\"\ndeny = [\"192.0.2.0/24\"]",
        1,
    );
    std::fs::write(&s.config, text).unwrap();
    let (_, token) = s.create_key(&["--name", "good", "--role", "read-only"]);
    let gw = s.start();

    let denied = (403, "ip_denied".to_string());
    // Denied everywhere: with a key, without one, on a public route.
    for client in ["203.0.113.9", "198.51.100.1", "2001:db8::7"] {
        assert_eq!(status_from(&s, "/api/lists", client, Some(&token)).await, denied, "{client}");
        assert_eq!(status_from(&s, "/api/lists", client, None).await, denied, "{client} without a key");
        assert_eq!(status_from(&s, "/api/ping", client, None).await, denied, "{client} on a public route");
    }
    // A route's own list: only that route.
    assert_eq!(status_from(&s, "/api/lists", "192.0.2.5", Some(&token)).await, denied);
    assert_eq!(status_from(&s, "/api/lists/7", "192.0.2.5", Some(&token)).await.0, 200);
    assert_eq!(status_from(&s, "/api/lists", "10.0.0.1", Some(&token)).await.0, 200);
    // Refused before the key: an invalid token from a denied address is 403, not 401.
    assert_eq!(status_from(&s, "/api/lists", "203.0.113.9", Some("kg_live_nonsense")).await, denied);

    // The file changes; a reload reads it again.
    std::fs::write(s.dir.path().join("deny.txt"), "10.0.0.0/8\n").unwrap();
    gw.signal("HUP");
    let reloaded =
        eventually(Duration::from_secs(5), || async { status_from(&s, "/api/lists", "10.0.0.1", Some(&token)).await == denied })
            .await;
    assert!(reloaded.is_some(), "the reload did not read the deny file again");
    assert_eq!(status_from(&s, "/api/lists", "203.0.113.9", Some(&token)).await.0, 200);
    assert_eq!(status_from(&s, "/api/lists", "198.51.100.1", Some(&token)).await, denied, "server.deny stays");

    let metrics = client().get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("code=\"ip_denied\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_guessing_credentials_is_blocked_even_with_a_good_key_then_let_go() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "trusted_proxies = [\"127.0.0.1/32\"]", "");
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str("\n[abuse]\nfailed_credentials = { per_minute = 3, block_for = \"2s\" }\n");
    std::fs::write(&s.config, text).unwrap();
    let (_, token) = s.create_key(&["--name", "good", "--role", "read-only"]);
    let _gw = s.start();
    away_from_window_edge(Duration::from_secs(5)).await;

    let guesser = "203.0.113.50";
    // Every kind of 401 counts: a bad token, none at all.
    assert_eq!(status_from(&s, "/api/lists", guesser, Some("kg_live_guess1")).await.0, 401);
    assert_eq!(status_from(&s, "/api/lists", guesser, None).await.0, 401);
    assert_eq!(status_from(&s, "/api/lists", guesser, Some("kg_live_guess2")).await.0, 401);
    // The fourth passes the limit: answered, and the address blocked.
    assert_eq!(status_from(&s, "/api/lists", guesser, Some("kg_live_guess3")).await.0, 401);
    // Blocked before the credential is looked at: a good key changes nothing.
    let resp = client().get(s.url("/api/lists")).header("X-Forwarded-For", guesser).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "too_many_failures");
    // Another address is not touched.
    assert_eq!(status_from(&s, "/api/lists", "198.51.100.20", Some(&token)).await.0, 200);
    assert_eq!(status_from(&s, "/api/lists", "198.51.100.20", Some("kg_live_typo")).await.0, 401);
    let metrics = client().get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keygate_blocks_total 1"), "{metrics}");

    // The block ends.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(status_from(&s, "/api/lists", guesser, Some(&token)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn guessing_across_two_redis_nodes_is_counted_once_and_an_operator_lifts_the_block() {
    let Some(redis) = crate::common::redis::RedisServer::start() else { return };
    let up = upstream::start().await;
    let first = Setup::redis(&up.url(), &redis.url(), "");
    let text = std::fs::read_to_string(&first.config).unwrap().replacen(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        1,
    );
    std::fs::write(&first.config, format!("{text}\n[abuse]\nfailed_credentials = {{ per_minute = 3, block_for = \"10m\" }}\n"))
        .unwrap();
    let second = first.another_node();
    // Polled often below: a limit that polling cannot reach.
    let (_, token) = first.create_key(&["--name", "good", "--role", "read-only", "--rate-limit", "100000"]);
    let _g1 = first.start();
    let _g2 = second.start();
    away_from_window_edge(Duration::from_secs(5)).await;

    let guesser = "203.0.113.60";
    // Two failures on each node: four in all, one past the limit of three.
    for (i, node) in [&first, &second, &first, &second].iter().enumerate() {
        assert_eq!(status_from(node, "/api/lists", guesser, Some(&format!("kg_live_guess{i}"))).await.0, 401);
    }
    let blocked_everywhere = eventually(Duration::from_secs(2), || async {
        status_from(&first, "/api/lists", guesser, Some(&token)).await.0 == 429
            && status_from(&second, "/api/lists", guesser, Some(&token)).await.0 == 429
    })
    .await;
    assert!(blocked_everywhere.is_some(), "not blocked on both nodes");
    assert_eq!(status_from(&second, "/api/lists", "198.51.100.30", Some(&token)).await.0, 200, "another address");

    let listed = first.cli_json(&["blocks", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["address"], guesser);
    let via_api: serde_json::Value =
        client().get(second.admin_url("/blocks")).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(via_api["data"][0]["address"], guesser);

    first.cli_json(&["blocks", "remove", guesser]);
    let lifted = eventually(Duration::from_secs(5), || async {
        status_from(&first, "/api/lists", guesser, Some(&token)).await.0 == 200
            && status_from(&second, "/api/lists", guesser, Some(&token)).await.0 == 200
    })
    .await;
    assert!(lifted.is_some(), "the block was not lifted on both nodes");
    let gone = client().delete(first.admin_url(&format!("/blocks/{guesser}"))).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(gone.status().as_u16(), 404, "nothing left to lift");
    let audit = first.cli_json(&["audit-log", "--target", guesser]);
    assert_eq!(audit[0]["action"], "block.remove");
}
