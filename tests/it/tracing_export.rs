//! Spans over OTLP/HTTP to a real receiver: one server span per request,
//! its steps as events, the upstream exchange as a child whose id the
//! upstream got as its parent, all in the caller's trace.

use crate::common::*;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_a_span_in_the_callers_trace() {
    let receiver = otlp::start().await;
    let up = upstream::start().await;
    // The caller comes through a trusted proxy: its sampling is followed.
    let s = Setup::new(&up.url(), "trusted_proxies = [\"127.0.0.1/32\"]", "");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let tracing = format!("[tracing]\notlp_endpoint = \"{}\"\nservice_name = \"gateway-test\"\n\n", receiver.url());
    std::fs::write(&s.config, format!("{tracing}{text}")).unwrap();
    let (key_id, token) = s.create_key(&["--name", "traced", "--role", "read-only"]);
    let gw = s.start();
    let c = client();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let resp = c.get(s.url("/api/lists")).bearer_auth(&token).header("traceparent", &caller).send().await.unwrap();
    let seen = json_of(resp).await;
    let forwarded = seen["headers"]["traceparent"].as_str().unwrap().to_string();
    assert!(forwarded.starts_with(&format!("00-{trace_id}-")) && forwarded.ends_with("-01"), "{forwarded}");
    assert_ne!(forwarded, caller, "the upstream's parent is keygate's span");
    // A caller that does not sample its trace gets no span recorded.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    let resp = c.get(s.url("/api/lists")).bearer_auth(&token).header("traceparent", unsampled).send().await.unwrap();
    let passed = json_of(resp).await["headers"]["traceparent"].as_str().unwrap().to_string();
    assert!(passed.starts_with("00-11111111111111111111111111111111-") && passed.ends_with("-00"), "{passed}");
    // A refused request is a span too, in a new trace.
    let _ = c.get(s.url("/api/lists")).send().await.unwrap();

    // The SDK sends batches every few seconds; a clean stop sends the rest.
    gw.stop();
    let spans = receiver.spans();
    assert!(receiver.paths().iter().all(|p| p == "/v1/traces"), "{:?}", receiver.paths());
    let server = spans.iter().find(|(_, s)| s.name == "GET /api/lists" && hex(&s.trace_id) == trace_id).map(|(svc, s)| (svc, s));
    let (service, server) = server.unwrap_or_else(|| panic!("no server span: {spans:?}"));
    assert!(service.contains("gateway-test"), "{service}");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    let events: Vec<&str> = server.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, ["key resolved", "rate limit"]);
    let attr = |span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
        span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()).map(|v| format!("{:?}", v.value))
    };
    assert!(attr(server, "keygate.key_id").unwrap().contains(&key_id));
    assert!(attr(server, "http.response.status_code").unwrap().contains("200"));
    let upstream = spans.iter().map(|(_, s)| s).find(|s| s.kind == SpanKind::Client as i32).expect("an upstream span");
    assert_eq!(upstream.parent_span_id, server.span_id);
    assert_eq!(upstream.trace_id, server.trace_id);
    assert!(forwarded.contains(&hex(&upstream.span_id)), "the upstream's parent id is this span's");
    assert!(upstream.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(upstream.end_time_unix_nano <= server.end_time_unix_nano);

    assert!(!spans.iter().any(|(_, s)| hex(&s.trace_id).starts_with("1111")), "an unsampled trace was recorded");
    let refused = spans.iter().map(|(_, s)| s).find(|s| hex(&s.trace_id) != trace_id).expect("the refused request's span");
    assert!(attr(refused, "keygate.code").unwrap().contains("missing_key"), "{refused:?}");
}

/// Any client can send `traceparent …-01`: from one that is not a trusted
/// proxy, the flag is not followed and `sample_ratio` decides, so a client
/// cannot make every span exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_callers_sampled_flag_is_not_followed() {
    let receiver = otlp::start().await;
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let tracing = format!("[tracing]\notlp_endpoint = \"{}\"\nsample_ratio = 0.0\n\n", receiver.url());
    std::fs::write(&s.config, format!("{tracing}{text}")).unwrap();
    let (_, token) = s.create_key(&["--name", "forcing", "--role", "read-only"]);
    let gw = s.start();
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    for i in 0..20 {
        let caller = format!("00-{trace_id}-00f067aa0ba902{i:02x}-01");
        let resp = client().get(s.url("/api/lists")).bearer_auth(&token).header("traceparent", &caller).send().await.unwrap();
        let passed = json_of(resp).await["headers"]["traceparent"].as_str().unwrap().to_string();
        assert!(passed.starts_with(&format!("00-{trace_id}-")) && passed.ends_with("-00"), "{passed}");
    }
    gw.stop();
    assert!(receiver.spans().is_empty(), "sample_ratio 0 exported spans a client asked for: {:?}", receiver.spans().len());
}
