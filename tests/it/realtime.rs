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
