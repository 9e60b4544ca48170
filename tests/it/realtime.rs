//! Event streams through the gateway (#29): each event reaches the client
//! as the backend sends it, over HTTP/1.1 and HTTP/2, and a quiet stream
//! outlives the upstream's `timeout` and the server's `idle_timeout`,
//! bounded by `[realtime] idle_timeout` instead.

use crate::common::*;
use futures_util::StreamExt;

/// A config whose upstream times out after 2 s and whose connections idle
/// out after 1 s, with `realtime` as `[realtime]`, and a key for it.
fn setup(upstream: &str, realtime: &str) -> (Setup, String) {
    let s = Setup::new(upstream, "idle_timeout = \"1s\"", "");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = text.replacen(
        "[[routes]]\n",
        "[[routes]]\nmatch = \"GET /api/events/*\"\npermission = \"lists.view\"\n\n[[routes]]\n",
        1,
    );
    std::fs::write(&s.config, format!("{text}\n[realtime]\n{realtime}\n")).unwrap();
    let (_, token) = s.create_key(&["--name", "watcher", "--role", "read-only"]);
    (s, token)
}

/// Reads an event stream to its end: for each event, how long after the
/// upstream sent it the client had it, in ms.
async fn lateness(client: &reqwest::Client, url: &str, token: &str) -> Result<Vec<i64>, String> {
    let resp = client.get(url).bearer_auth(token).send().await.map_err(|e| e.to_string())?;
    if resp.status() != 200 || !resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream") {
        return Err(format!("{} {:?}", resp.status(), resp.headers()));
    }
    let mut late = Vec::new();
    let mut text = String::new();
    let mut chunks = resp.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let arrived = keygate::clock::now_ms();
        text.push_str(&String::from_utf8_lossy(&chunk.map_err(|e| format!("cut after {} events: {e}", late.len()))?));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            let sent = event.lines().find_map(|l| l.strip_prefix("data: ")).and_then(|d| d.parse::<i64>().ok());
            late.push(arrived - sent.ok_or(format!("no data in {event:?}"))?);
        }
    }
    Ok(late)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_arrives_as_it_is_sent_over_http1_and_http2() {
    let up = upstream::start().await;
    let (s, token) = setup(&up.url(), "");
    let _gw = s.start();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    for (version, c) in [("HTTP/1.1", client()), ("HTTP/2", h2)] {
        let late = lateness(&c, &s.url("/api/events/10/100"), &token).await.unwrap();
        assert_eq!(late.len(), 10, "{version}");
        assert!(late.iter().all(|ms| *ms < 50), "{version}: each event within 50 ms of being sent: {late:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_outlives_the_timeouts_and_is_cut_by_its_own() {
    let up = upstream::start().await;
    let (s, token) = setup(&up.url(), "idle_timeout = \"4s\"");
    let _gw = s.start();
    // Three events 3 s apart: longer than the upstream's 2 s timeout and
    // the 1 s idle_timeout, shorter than [realtime]'s 4 s.
    let late = lateness(&client(), &s.url("/api/events/3/3000"), &token).await.unwrap();
    assert_eq!(late.len(), 3, "{late:?}");
    // A pause past [realtime] idle_timeout cuts the stream.
    let cut = lateness(&client(), &s.url("/api/events/2/5000"), &token).await;
    assert!(cut.is_err(), "{cut:?}");
}

/// Sends `head` on a new connection and reads the answer's status line.
async fn raw_status(s: &Setup, head: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", s.data_port)).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    (text.lines().next().unwrap_or("").to_string(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_on_a_plain_route_is_refused_and_never_forwarded() {
    let up = upstream::start().await;
    let (s, token) = setup(&up.url(), "");
    let _gw = s.start();
    let handshake = |upgrade: &str, connection: &str| {
        format!(
            "GET /api/slow/10 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nUpgrade: {upgrade}\r\n\
             Connection: {connection}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    for (upgrade, connection) in [("websocket", "Upgrade"), ("WebSocket", "close"), ("h2c, websocket", "Upgrade, close")] {
        let (status, text) = raw_status(&s, &handshake(upgrade, connection)).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{upgrade}: {text}");
        assert!(text.contains("\"upgrade_not_allowed\""), "{text}");
    }
    assert_eq!(up.slow.peak(), 0, "no handshake reached the upstream");
    // Another protocol's upgrade is a hop-by-hop field: dropped, and the
    // request served as it is.
    let (status, text) = raw_status(&s, &handshake("h2c", "Upgrade, HTTP2-Settings, close")).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains("\"upgrade\""), "{text}");
}
