//! WebSockets through the gateway (#29), with a real client
//! (tokio-tungstenite) and the test upstream's echo server: the handshake
//! takes the whole request path, the key may come as a subprotocol and
//! never reaches the upstream, live connections are bounded per key, and
//! revoking the key closes them (1008) on every node; shutdown says 1001.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The routes: `/ws/*` takes WebSockets with `lists.view`, `/ws-admin/*`
/// with `broadcasts.send`, and `/api/*` (the catalogue's) none.
const ROUTES: &str = "[[routes]]\nmatch = \"GET /ws/*\"\npermission = \"lists.view\"\nwebsocket = true\n\n\
                      [[routes]]\nmatch = \"GET /ws-admin/*\"\npermission = \"broadcasts.send\"\nwebsocket = true\n\n[[routes]]\n";

/// Adds the WebSocket routes (and `extra` at the end) to `s`'s config.
fn with_routes(s: &Setup, extra: &str) {
    let text = std::fs::read_to_string(&s.config).unwrap().replacen("[[routes]]\n", ROUTES, 1);
    std::fs::write(&s.config, format!("{text}\n{extra}\n")).unwrap();
}

/// A config with the WebSocket routes, and a read-only key: (setup, key id, token).
fn setup(upstream: &str, server_extra: &str, extra: &str) -> (Setup, String, String) {
    let s = Setup::new(upstream, server_extra, "");
    with_routes(&s, extra);
    let (id, token) = s.create_key(&["--name", "socket", "--role", "read-only"]);
    (s, id, token)
}

/// Opens a WebSocket to `path` over `stream` with `headers` on the handshake.
async fn open_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(WebSocketStream<S>, http::Response<Option<Vec<u8>>>), WsError> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    tokio_tungstenite::client_async(request, stream).await
}

type Plain = WebSocketStream<tokio::net::TcpStream>;

/// Opens a WebSocket to the gateway's `path` in clear text.
async fn open(s: &Setup, path: &str, headers: &[(&str, &str)]) -> Result<(Plain, http::Response<Option<Vec<u8>>>), WsError> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.data_port)).await.unwrap();
    open_over(tcp, &format!("ws://127.0.0.1:{}{path}", s.data_port), headers).await
}

/// The status and JSON body of a refused handshake.
fn refusal<T>(result: Result<T, WsError>) -> (u16, serde_json::Value) {
    match result {
        Err(WsError::Http(resp)) => {
            let body = resp.body().as_deref().map(|b| serde_json::from_slice(b).unwrap()).unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("not an HTTP refusal: {e}"),
        Ok(_) => panic!("the handshake was not refused"),
    }
}

/// Reads the echo's first message (what the upstream's handshake
/// carried), then checks a text, a binary and a ping round trip.
async fn echo_round_trip<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> serde_json::Value {
    let seen = match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("{other:?}"),
    };
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong(b"p".to_vec().into()));
    seen
}

/// How the connection ended, if within `within`: the close code, or
/// `None` for an end without a close frame.
async fn closed_with<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, within: Duration) -> Option<Option<u16>> {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_with_the_key_in_each_place_and_the_token_never_reaches_the_upstream() {
    let up = upstream::start().await;
    let (s, _, token) = setup(&up.url(), "", "");
    let _gw = s.start();
    let bearer = format!("Bearer {token}");
    let subprotocols = format!("keygate.token.{token}, chat");
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
    let cases: [Case; 3] = [
        ("bearer", "/ws/live?list=1".into(), vec![("authorization", &bearer)]),
        ("query", format!("/ws/live?list=1&api_token={token}"), vec![]),
        ("subprotocol", "/ws/live?list=1".into(), vec![("sec-websocket-protocol", &subprotocols)]),
    ];
    for (place, path, headers) in cases {
        let (mut ws, resp) = open(&s, &path, &headers).await.unwrap_or_else(|e| panic!("{place}: {e}"));
        assert_eq!(resp.status(), 101, "{place}");
        let seen = echo_round_trip(&mut ws).await;
        let text = seen.to_string();
        assert!(!text.contains(&token), "{place}: the upstream saw the token: {text}");
        assert_eq!(seen["query"], "list=1", "{place}");
        assert!(seen["headers"]["sec-websocket-key"].is_string(), "{place}: {text}");
        if place == "subprotocol" {
            assert_eq!(seen["headers"]["sec-websocket-protocol"], "chat", "{text}");
            assert_eq!(resp.headers()["sec-websocket-protocol"], "chat", "the upstream's choice comes back");
        }
        ws.close(None).await.unwrap();
    }
    assert_eq!(up.websockets.handshakes(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_tls() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (tls, connector) = self_signed_listener(dir.path(), &[b"http/1.1"]);
    let (s, _, token) = setup(&up.url(), &tls, "");
    let _gw = s.start();
    let stream = tls_connect(&connector, s.data_port).await;
    let url = format!("wss://localhost:{}/ws/live", s.data_port);
    let (mut ws, _) = open_over(stream, &url, &[("authorization", &format!("Bearer {token}"))]).await.unwrap();
    let seen = echo_round_trip(&mut ws).await;
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_is_refused_before_the_upstream_when_the_request_path_says_no() {
    let up = upstream::start().await;
    let (s, _, token) = setup(&up.url(), "", "[cors]\nallowed_origins = [\"https://app.example\"]\n");
    let _gw = s.start();
    let bearer = format!("Bearer {token}");
    // No key, a key without the route's permission, a bad key.
    assert_eq!(refusal(open(&s, "/ws/live", &[]).await).0, 401);
    let (status, body) = refusal(open(&s, "/ws-admin/live", &[("authorization", &bearer)]).await);
    assert_eq!((status, body["code"].as_str()), (403, Some("insufficient_permissions")));
    assert_eq!(refusal(open(&s, "/ws/live", &[("sec-websocket-protocol", "keygate.token.kg_nope, chat")]).await).0, 401);
    // Two keys that differ: ambiguous.
    let two = [("authorization", bearer.as_str()), ("sec-websocket-protocol", "keygate.token.other")];
    assert_eq!(refusal(open(&s, "/ws/live", &two).await).1["code"], "ambiguous_credentials");
    // A browser page from an origin [cors] does not allow.
    let (status, body) = refusal(open(&s, "/ws/live", &[("authorization", &bearer), ("origin", "https://evil.example")]).await);
    assert_eq!((status, body["code"].as_str()), (403, Some("cors_not_allowed")));
    let (mut ws, _) = open(&s, "/ws/live", &[("authorization", &bearer), ("origin", "https://app.example")]).await.unwrap();
    echo_round_trip(&mut ws).await;
    assert_eq!(up.websockets.handshakes(), 1, "only the allowed handshake reached the upstream");
}

/// Sends `head` on a new connection; the answer as text.
async fn raw(s: &Setup, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", s.data_port)).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_handshake_or_one_with_a_body_is_a_bad_request() {
    let up = upstream::start().await;
    let (s, _, token) = setup(&up.url(), "", "");
    let _gw = s.start();
    let head = |extra: &str| {
        format!(
            "GET /ws/live HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    };
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (case, extra) in [
        ("no Connection: upgrade", format!("{key}Connection: keep-alive\r\n")),
        ("no key", "Connection: Upgrade\r\n".to_string()),
        ("two keys", format!("{key}{key}Connection: Upgrade\r\n")),
        ("a body", format!("{key}Connection: Upgrade\r\nContent-Length: 5\r\n\r\nhello")),
    ] {
        let text = raw(&s, &head(&extra)).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{case}: {text}");
    }
    assert_eq!(up.websockets.handshakes(), 0);
    let text = raw(&s, &head(&format!("{key}Connection: Upgrade\r\n"))).await;
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_holds_ten_connections_and_revocation_closes_them_with_1008() {
    let up = upstream::start().await;
    let (s, key_id, token) = setup(&up.url(), "", "");
    let (other_id, other) = s.create_key(&["--name", "other", "--role", "read-only"]);
    let _gw = s.start();
    let bearer = [("authorization", format!("Bearer {token}"))];
    let headers: Vec<(&str, &str)> = bearer.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let mut open_ones = Vec::new();
    for _ in 0..10 {
        open_ones.push(open(&s, "/ws/live", &headers).await.unwrap().0);
    }
    let (status, body) = refusal(open(&s, "/ws/live", &headers).await);
    assert_eq!((status, body["code"].as_str()), (429, Some("too_many_connections")));
    assert_eq!(metric_value(&s, "keygate_realtime_connections{kind=\"websocket\"}").await, "10");
    // One closed by its client frees its place.
    let mut first = open_ones.remove(0);
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    drop(first);
    let freed = eventually(Duration::from_secs(2), || async {
        metric_value(&s, "keygate_realtime_connections{kind=\"websocket\"}").await == "9"
    });
    assert!(freed.await.is_some());
    open_ones.push(open(&s, "/ws/live", &headers).await.unwrap().0);

    let since = Instant::now();
    s.cli(&["keys", "disable", &key_id]);
    for ws in &mut open_ones {
        assert_eq!(closed_with(ws, Duration::from_secs(1)).await, Some(Some(1008)), "after {:?}", since.elapsed());
    }
    assert!(since.elapsed() < Duration::from_secs(1), "{:?}", since.elapsed());
    let told =
        eventually(Duration::from_secs(2), || async { up.websockets.closes().iter().filter(|c| **c == 1008).count() == 10 });
    assert!(told.await.is_some(), "the upstream is told too: {:?}", up.websockets.closes());

    // A role change that takes the route's permission away: the same.
    let (mut ws, _) = open(&s, "/ws/live", &[("authorization", &format!("Bearer {other}"))]).await.unwrap();
    s.cli(&["keys", "edit", &other_id, "--role", ""]);
    assert_eq!(closed_with(&mut ws, Duration::from_secs(1)).await, Some(Some(1008)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn a_key_disabled_through_one_redis_node_has_its_socket_closed_on_another() {
    let Some(redis) = crate::common::redis::RedisServer::start() else { return };
    let up = upstream::start().await;
    let first = Setup::redis(&up.url(), &redis.url(), "");
    with_routes(&first, "");
    let second = first.another_node();
    let (key_id, token) = first.create_key(&["--name", "socket", "--role", "read-only"]);
    let (_a, _b) = (first.start(), second.start());
    let (mut ws, _) = open(&second, "/ws/live", &[("authorization", &format!("Bearer {token}"))]).await.unwrap();
    echo_round_trip(&mut ws).await;
    let since = Instant::now();
    let disabled =
        client().post(first.admin_url(&format!("/api-keys/{key_id}/disable"))).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(disabled.status(), 200);
    assert_eq!(closed_with(&mut ws, Duration::from_secs(1)).await, Some(Some(1008)), "after {:?}", since.elapsed());
    assert!(since.elapsed() < Duration::from_secs(1), "{:?}", since.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_past_the_idle_timeout_closes_and_pings_keep_it_open() {
    let up = upstream::start().await;
    let (s, _, token) = setup(&up.url(), "idle_timeout = \"300ms\"", "[realtime]\nidle_timeout = \"1s\"\n");
    let _gw = s.start();
    let bearer = format!("Bearer {token}");
    let (mut ws, _) = open(&s, "/ws/live", &[("authorization", &bearer)]).await.unwrap();
    echo_round_trip(&mut ws).await;
    // Pings every 600 ms for 2.4 s: past the server's idle_timeout and
    // [realtime]'s, the connection lives.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        ws.send(Message::Ping(b"k".to_vec().into())).await.unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Pong(_)))));
    }
    let since = Instant::now();
    assert_eq!(closed_with(&mut ws, Duration::from_secs(3)).await, Some(Some(1001)));
    assert!(since.elapsed() >= Duration::from_millis(900), "{:?}", since.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_going_away_and_ends_event_streams_after_the_drain() {
    let up = upstream::start().await;
    let (s, _, token) = setup(&up.url(), "drain_timeout = \"1s\"", "");
    let text = std::fs::read_to_string(&s.config).unwrap().replacen(
        "[[routes]]\n",
        "[[routes]]\nmatch = \"GET /api/events/*\"\npermission = \"lists.view\"\n\n[[routes]]\n",
        1,
    );
    std::fs::write(&s.config, text).unwrap();
    let gw = s.start();
    let (mut ws, _) = open(&s, "/ws/live", &[("authorization", &format!("Bearer {token}"))]).await.unwrap();
    echo_round_trip(&mut ws).await;
    let stream = client().get(s.url("/api/events/3/20000")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let since = Instant::now();
    let stopping = std::thread::spawn(move || gw.stop());
    assert_eq!(closed_with(&mut ws, Duration::from_secs(1)).await, Some(Some(1001)));
    let mut chunks = stream.bytes_stream();
    let ended = tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = chunks.next().await {} }).await;
    assert!(ended.is_ok(), "the event stream was not ended");
    assert!(since.elapsed() < Duration::from_secs(4), "{:?}", since.elapsed());
    assert!(stopping.join().unwrap().success());
}

/// An upstream that answers every request with a 101 it was not asked
/// for, followed by what would be read as a second answer.
async fn switching_upstream(upgrade: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {upgrade}\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\
                     HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
                );
                let _ = conn.write_all(answer.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_nobody_asked_for_is_refused_and_what_follows_it_never_read() {
    let upstream = switching_upstream("websocket").await;
    // A plain config: the same test runs against a binary from before #29.
    let s = Setup::new(&upstream, "", "");
    let (_, token) = s.create_key(&["--name", "plain", "--role", "read-only"]);
    let _gw = s.start();
    let resp = client().get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(!resp.text().await.unwrap().contains("smuggled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_answered_with_a_switch_to_another_protocol_is_refused() {
    let other = switching_upstream("h2c").await;
    let (s, _, token) = setup(&other, "", "");
    let _gw = s.start();
    assert_eq!(refusal(open(&s, "/ws/live", &[("authorization", &format!("Bearer {token}"))]).await).0, 502);
}
