//! Request ids and trace context, end to end: what the upstream receives,
//! what the client gets back, what the access log says.

use crate::common::*;
use reqwest::StatusCode;

fn is_new_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sane_request_id_goes_through_and_any_other_is_replaced() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let (_, token) = s.create_key(&["--name", "ids", "--role", "read-only"]);
    let gw = s.start();
    let c = client();

    let resp = c.get(s.url("/api/lists")).bearer_auth(&token).header("X-Request-Id", "order-7.retry_2").send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "order-7.retry_2");
    let seen = json_of(resp).await;
    assert_eq!(seen["headers"]["x-request-id"], "order-7.retry_2");

    for (what, sent) in [
        ("none", vec![]),
        ("too long", vec!["a".repeat(129)]),
        ("a space", vec!["a b".into()]),
        ("two", vec!["a".into(), "b".into()]),
    ] {
        let mut req = c.get(s.url("/api/lists")).bearer_auth(&token);
        for v in &sent {
            req = req.header("X-Request-Id", v);
        }
        let resp = req.send().await.unwrap();
        let given = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(is_new_id(&given), "{what}: {given}");
        let seen = json_of(resp).await;
        assert_eq!(seen["headers"]["x-request-id"], given.as_str(), "{what}: the upstream got the same one, alone");
    }

    // keygate's own answers carry it, in the header and the body.
    let resp = c.get(s.url("/api/lists")).header("X-Request-Id", "no-key-1").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["x-request-id"], "no-key-1");
    assert_eq!(json_of(resp).await["requestId"], "no-key-1");
    let resp = c.get(s.url("/nowhere")).send().await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(json_of(resp).await["requestId"], id.as_str());

    // An upstream's own id does not make a second one.
    let resp = c.get(s.url("/api/contacts/own-headers")).bearer_auth(&token).header("X-Request-Id", "mine").send().await.unwrap();
    let ids: Vec<_> = resp.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids, ["mine"]);

    // HTTP/2 answers carry it too, forwarded or refused.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = h2.get(s.url("/api/lists")).bearer_auth(&token).header("X-Request-Id", "over-h2").send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.headers()["x-request-id"], "over-h2");
    let resp = h2.get(s.url("/api/lists")).send().await.unwrap();
    assert!(is_new_id(resp.headers()["x-request-id"].to_str().unwrap()));

    assert!(gw.log_text().contains("request_id=\"no-key-1\""), "{}", gw.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_trace_context_is_passed_on_and_a_bad_one_dropped() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let (_, token) = s.create_key(&["--name", "traces", "--role", "read-only"]);
    let _gw = s.start();
    let c = client();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = c
        .get(s.url("/api/lists"))
        .bearer_auth(&token)
        .header("traceparent", parent)
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .unwrap();
    let seen = json_of(resp).await;
    assert_eq!(seen["headers"]["traceparent"], parent);
    assert_eq!(seen["headers"]["tracestate"], "congo=t61rcWkgMzE");

    let resp = c
        .get(s.url("/api/lists"))
        .bearer_auth(&token)
        .header("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .unwrap();
    let seen = json_of(resp).await;
    assert!(seen["headers"].get("traceparent").is_none(), "{seen}");
    assert!(seen["headers"].get("tracestate").is_none(), "a state without its parent goes too: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_are_json_objects_when_the_config_says_so() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, format!("[log]\nformat = \"json\"\n\n{text}")).unwrap();
    let (key_id, token) = s.create_key(&["--name", "json", "--role", "read-only"]);
    let gw = s.start();
    let c = client();
    c.get(s.url("/api/lists")).bearer_auth(&token).header("X-Request-Id", "json-1").send().await.unwrap();
    c.get(s.url("/api/lists")).header("X-Request-Id", "json-2").send().await.unwrap();
    let log = gw.log_text();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let access: Vec<&serde_json::Value> = lines.iter().filter(|l| l["target"] == "keygate::access").collect();
    assert_eq!(access.len(), 2, "{log}");
    let (ok, refused) = (access[0], access[1]);
    assert_eq!(ok["request_id"], "json-1");
    assert_eq!(ok["key_id"], key_id.as_str());
    assert_eq!((ok["status"].as_u64(), &ok["outcome"], &ok["code"]), (Some(200), &"forwarded".into(), &"none".into()));
    assert_eq!((refused["status"].as_u64(), &refused["code"]), (Some(401), &"missing_key".into()));
    assert!(ok["timestamp"].is_string() && ok["level"] == "INFO", "{ok}");
    assert!(!log.contains(&token), "never a token");
}
