//! Property-based fuzzing of everything that parses untrusted bytes (the
//! targets and their checks are `keygate::fuzzing`), and the replay of
//! every input kept in `tests/corpus/<target>/`: each once failed, or
//! seeds the coverage-guided fuzzers in `fuzz/`.
//!
//! `PROPTEST_CASES=100000 cargo test --release --test it fuzz::` runs longer.
//! A failing input found here goes into the corpus as a file of its own.

use keygate::fuzzing;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use std::path::Path;

fn config(cases: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases),
        // A failing input is kept in tests/corpus by hand, not in a file of proptest's own.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

#[test]
fn every_kept_input_still_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    for (name, check) in fuzzing::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no inputs kept for {name}");
        for input in inputs {
            let bytes = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&bytes));
            assert!(outcome.is_ok(), "{} fails again", input.display());
        }
    }
}

/// Pieces heads are made of: the names and values that decide framing,
/// hop-by-hop fields, identity, credentials and overrides, in the
/// spellings attacks use.
fn header_line() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "Host",
        "host",
        "Content-Length",
        "content-length",
        "Content_Length",
        "Transfer-Encoding",
        "Transfer_Encoding",
        "Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Upgrade",
        "Expect",
        "Authorization",
        "X-API-Key",
        "X_API_Key",
        "X-Keygate-Owner",
        "X_Keygate_Owner",
        "X-Forwarded-For",
        "X_Forwarded_For",
        "X-Forwarded-Port",
        "Forwarded",
        "X-Real-IP",
        "X-HTTP-Method-Override",
        "X-Original-URL",
        "Accept",
        "X-Custom",
    ]);
    let values = prop::sample::select(vec![
        "0",
        "5",
        "05",
        "+5",
        "5, 5",
        "-1",
        "99999999999999999999",
        "chunked",
        "Chunked",
        " chunked",
        "gzip, chunked",
        "chunked, identity",
        "close",
        "keep-alive",
        "keep-alive, content-length",
        "transfer-encoding",
        "host, x-custom, authorization",
        "x-forwarded-for, x-keygate-owner",
        "100-continue",
        "Bearer kg_live_notarealtoken",
        "198.51.100.1, 10.0.0.1",
        "gw",
        "DELETE",
        "/admin",
        "a\u{0}b",
        "x",
    ]);
    (names, values, prop::sample::select(vec![": ", ":", " : ", ":\t"])).prop_map(|(n, v, sep)| format!("{n}{sep}{v}\r\n"))
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    let methods = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"]);
    let targets = prop::sample::select(vec![
        "/api/lists",
        "/api/lists?api_token=x&a=1",
        "/api/contacts/..;/lists",
        "/api/%2e%2e;/x",
        "/api/lists?API_TOKEN=x;b=2&_method=DELETE",
        "http://evil.example/api/lists",
        "//api//lists/.",
        "*",
    ]);
    let versions = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]);
    let body = prop::sample::select(vec![
        "",
        "hello",
        "5\r\nhello\r\n0\r\n\r\n",
        "5;x=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        "GET /api/ping HTTP/1.1\r\nHost: x\r\n\r\n",
        "0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    ]);
    (methods, targets, versions, prop::collection::vec(header_line(), 0..8), body)
        .prop_map(|(m, t, v, lines, body)| format!("{m} {t} {v}\r\n{}\r\n{body}", lines.concat()).into_bytes())
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn request_heads_are_forwarded_as_one_checked_request(wire in request()) {
        fuzzing::request_head(&wire);
    }

    #[test]
    fn arbitrary_bytes_as_a_request_head(wire in prop::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::request_head(&wire);
    }

    #[test]
    fn chunked_bodies_decode_alike_however_they_arrive(
        chunks in prop::collection::vec((prop::collection::vec(any::<u8>(), 1..40), prop::sample::select(vec!["", ";a=1", ";a=\"q\"", " ;x", "\t;y"])), 0..6),
        trailers in prop::collection::vec(prop::sample::select(vec!["X-T: 1", "Content-Length: 4", ""]), 0..3),
        tail in prop::sample::select(vec!["", "GET / HTTP/1.1\r\n\r\n", "garbage"]),
        flip in any::<Option<(usize, u8)>>(),
    ) {
        let mut wire = Vec::new();
        for (data, ext) in &chunks {
            wire.extend(format!("{:x}{ext}\r\n", data.len()).into_bytes());
            wire.extend(data);
            wire.extend(b"\r\n");
        }
        wire.extend(b"0\r\n");
        for t in trailers.iter().filter(|t| !t.is_empty()) {
            wire.extend(format!("{t}\r\n").into_bytes());
        }
        wire.extend(b"\r\n");
        wire.extend(tail.as_bytes());
        if let Some((at, byte)) = flip {
            let at = at % wire.len();
            wire[at] = byte;
        }
        fuzzing::chunked(&wire);
    }

    #[test]
    fn websocket_handshakes_forward_one_upgrade_and_no_key(
        line in prop::sample::select(vec!["GET /ws HTTP/1.1", "GET /ws HTTP/1.0", "POST /ws HTTP/1.1", "GET /ws?api_token=k1 HTTP/1.1"]),
        fields in prop::collection::vec(prop::sample::select(vec![
            "Host: gw", "Connection: Upgrade", "Connection: keep-alive, upgrade", "Connection: close", "Upgrade: websocket",
            "Upgrade: WebSocket", "Upgrade: h2c, websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Key: c2hvcnQ=",
            "Sec-WebSocket-Protocol: keygate.token.k1, chat", "Sec-WebSocket-Protocol: KEYGATE.TOKEN.k2",
            "Sec-WebSocket-Protocol: chat,,keygate.token.", "Sec-Websocket-Protocol: v2", "Authorization: Bearer k1",
            "Content-Length: 3", "Transfer-Encoding: chunked", "X-Forwarded-For: 10.0.0.1",
        ]), 0..12),
        frames in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut wire = format!("{line}\r\n{}\r\n", fields.iter().map(|f| format!("{f}\r\n")).collect::<String>()).into_bytes();
        wire.extend(frames);
        fuzzing::websocket_handshake(&wire);
    }

    #[test]
    fn arbitrary_bytes_as_a_chunked_body(wire in prop::collection::vec(any::<u8>(), 0..256)) {
        fuzzing::chunked(&wire);
    }

    #[test]
    fn paths_normalise_to_what_every_backend_reads_alike(
        pieces in prop::collection::vec(prop::sample::select(vec![
            "/", "a", "api", ".", "..", ";", "%2e", "%2E", "%2f", "%3b", "%3B", "%5c", "%00", "%", "%zz", "%41", "\\", "~", "jsessionid=1", "é",
        ]), 0..12),
    ) {
        let p = format!("/{}", pieces.concat());
        fuzzing::path(p.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_as_a_path(p in prop::collection::vec(any::<u8>(), 0..128)) {
        fuzzing::path(&p);
    }

    #[test]
    fn queries_lose_every_credential_look_alike(
        pieces in prop::collection::vec(prop::sample::select(vec![
            "api", "API", "_", "token", "TOKEN", ".", " ", "+", "%20", "%5F", "%5f", "[", "]", "[]", "=", "=", "&", ";", "x", "1", "_method", "-", "%", "%61",
        ]), 0..16),
    ) {
        fuzzing::query(pieces.concat().as_bytes());
    }

    #[test]
    fn forwarded_for_chains_never_name_an_unlisted_client(
        lines in prop::collection::vec(prop::collection::vec(prop::sample::select(vec![
            "198.51.100.1", "10.0.0.2", "::ffff:10.0.0.3", "2001:db8::1", "unknown", "", " ", ",", ", ", "1.2.3.4:80", "[2001:db8::1]",
        ]), 0..5), 0..4),
    ) {
        let text: Vec<String> = lines.iter().map(|l| l.concat()).collect();
        fuzzing::forwarded_for(text.join("\n").as_bytes());
    }

    #[test]
    fn request_ids_and_trace_context_pass_only_when_sane(
        lines in prop::collection::vec(prop::sample::select(vec![
            "order-7", "a b", "", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "congo=t61rcWkgMzE", "\u{7f}", "x.y_z-0",
        ]), 0..7),
    ) {
        fuzzing::correlation(lines.join("\n").as_bytes());
    }

    #[test]
    fn arbitrary_bytes_as_correlation_headers(wire in prop::collection::vec(any::<u8>(), 0..256)) {
        fuzzing::correlation(&wire);
    }

    #[test]
    fn only_listed_origins_are_allowed(
        pieces in prop::collection::vec(prop::sample::select(vec![
            "https://", "http://", "app", ".example.com", ".mail.test", "mail.test", "x", "-", ".", ":443", "/", "@", "*", "evil", "A",
        ]), 0..6),
    ) {
        fuzzing::cors_origin(pieces.concat().as_bytes());
    }
}
