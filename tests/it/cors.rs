//! Browsers on other origins: preflights answered by keygate without a
//! key, CORS fields on every answer of a governed route, nothing for an
//! origin `[cors]` does not list.

use crate::common::*;
use reqwest::StatusCode;

const APP: &str = "https://app.example.com";

fn setup(up: &upstream::Upstream) -> Setup {
    let s = Setup::new(&up.url(), "", "");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = text.replace("match = \"GET /api/ping\"\npublic = true", "match = \"GET /api/ping\"\npublic = true\ncors = false");
    let text = format!(
        "{text}\n[cors]\nallowed_origins = [\"{APP}\", \"https://*.mail.test\"]\nallow_credentials = true\nmax_age = \"1h\"\n"
    );
    std::fs::write(&s.config, text).unwrap();
    s
}

fn preflight(s: &Setup, path: &str, origin: &str, method: &str) -> reqwest::RequestBuilder {
    client()
        .request(reqwest::Method::OPTIONS, s.url(path))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method)
        .header("Access-Control-Request-Headers", "authorization, content-type")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_from_an_allowed_origin_is_answered_without_a_key() {
    let up = upstream::start().await;
    let s = setup(&up);
    let _gw = s.start();
    for origin in [APP, "https://eu.mail.test"] {
        let resp = preflight(&s, "/api/lists", origin, "POST").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{origin}");
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], origin);
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-allow-methods"], "GET, HEAD, POST, PUT, PATCH, DELETE");
        assert!(h["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
        assert_eq!(h["access-control-max-age"], "3600");
        assert!(h.contains_key("x-request-id"));
        assert!(!h.contains_key("x-upstream"), "the backend never saw it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_keygate_does_not_allow_gets_no_cors_fields() {
    let up = upstream::start().await;
    let s = setup(&up);
    let _gw = s.start();
    for (origin, method, path) in [
        ("https://evil.test", "GET", "/api/lists"),
        ("https://mail.test", "GET", "/api/lists"),
        (APP, "TRACE", "/api/contacts/x"),
    ] {
        let resp = preflight(&s, path, origin, method).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{origin} {method}");
        assert!(resp.headers().get("access-control-allow-origin").is_none());
        assert_eq!(json_of(resp).await["code"], "cors_not_allowed");
    }
    // A route with `cors = false` is not keygate's to answer for: no route
    // takes OPTIONS there.
    let resp = preflight(&s, "/api/ping", APP, "GET").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_cors_fields_for_allowed_origins_only() {
    let up = upstream::start().await;
    let s = setup(&up);
    let (_, token) = s.create_key(&["--name", "browser", "--role", "read-only"]);
    let _gw = s.start();
    let c = client();

    let resp = c.get(s.url("/api/lists")).bearer_auth(&token).header("Origin", APP).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-credentials"], "true");
    let exposed = h["access-control-expose-headers"].to_str().unwrap();
    assert!(exposed.contains("x-ratelimit-remaining") && exposed.contains("x-request-id"), "{exposed}");
    assert!(h.get_all("vary").iter().any(|v| v == "Origin"));

    // The upstream's own `Access-Control-Allow-Origin: *` does not pass:
    // keygate speaks for governed routes.
    let resp = c.get(s.url("/api/contacts/own-headers")).bearer_auth(&token).header("Origin", APP).send().await.unwrap();
    let origins: Vec<_> = resp.headers().get_all("access-control-allow-origin").iter().collect();
    assert_eq!(origins, [APP]);
    let resp =
        c.get(s.url("/api/contacts/own-headers")).bearer_auth(&token).header("Origin", "https://evil.test").send().await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());

    // Another origin: served (CORS is not access control) but unreadable to its page.
    let resp = c.get(s.url("/api/lists")).bearer_auth(&token).header("Origin", "https://evil.test").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("access-control-allow-origin").is_none());

    // A refusal is readable by an allowed page, so it can show why.
    let resp = c.get(s.url("/api/lists")).header("Origin", APP).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["access-control-allow-origin"], APP);
}

/// `/whoami` is keygate's own route: under `[cors]` its preflight is
/// answered and its answers (a refusal too) carry the CORS fields, so a
/// browser app can ask which key it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_answers_browsers_like_a_route() {
    let up = upstream::start().await;
    let s = setup(&up);
    let (_, token) = s.create_key(&["--name", "browser app", "--role", "read-only"]);
    let _gw = s.start();
    let resp = preflight(&s, "/whoami", APP, "GET").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.headers()["access-control-allow-origin"], APP);
    let resp = client().get(s.url("/whoami")).header("Origin", APP).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], APP);
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    let resp = client().get(s.url("/whoami")).header("Origin", APP).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["access-control-allow-origin"], APP, "a browser reads the refusal too");
    let resp = client().get(s.url("/whoami")).header("Origin", "https://evil.test").bearer_auth(&token).send().await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}
