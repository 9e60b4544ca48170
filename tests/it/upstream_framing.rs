//! keygate's HTTP/1.1 upstream client against a raw TCP upstream that
//! answers with exactly the bytes each test needs: chunked bodies with
//! extensions and trailers, bodies delimited by close, 1xx before the
//! answer, 204, HEAD, truncated, stalled and malformed responses, kept-alive
//! connections closed under the gateway, a large streamed download, and an upload
//! answered before the upstream read it.

use crate::common::{client, Setup};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Size of the streamed download.
const DOWNLOAD: usize = 100 * 1000 * 1000;
/// An upload larger than the socket buffers between the gateway and the
/// upstream can hold.
const UPLOAD: usize = 32 * 1024 * 1024;

/// A raw upstream; counts the connections it accepted.
struct RawUpstream {
    url: String,
    connections: Arc<AtomicUsize>,
}

async fn raw_upstream() -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream));
        }
    });
    RawUpstream { url, connections }
}

/// Answers requests on one connection until a script says to close.
async fn serve(mut stream: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let line = head.lines().next().unwrap_or("").to_string();
        let path = line.split(' ').nth(1).unwrap_or("");
        let close = match path {
            "/api/contacts/chunked" => write(&mut stream, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n").await,
            "/api/contacts/chunked-with-length" => write(&mut stream, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await,
            "/api/contacts/until-close" => {
                write(&mut stream, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread until the end").await;
                true
            }
            "/api/contacts/early-hints" => write(&mut stream, b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await,
            "/api/contacts/no-content" => write(&mut stream, b"HTTP/1.1 204 No Content\r\nX-Done: 1\r\n\r\n").await,
            "/api/contacts/head" => write(&mut stream, b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n").await,
            "/api/contacts/garbage" => {
                write(&mut stream, b"this is not HTTP at all\r\n\r\n").await;
                true
            }
            "/api/contacts/truncated" => {
                write(&mut stream, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort").await;
                true
            }
            "/api/contacts/stalls" => {
                // A good head and the start of the body, then nothing for
                // longer than the upstream's timeout, connection open.
                write(&mut stream, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst").await;
                tokio::time::sleep(Duration::from_secs(10)).await;
                true
            }
            "/api/contacts/early-answer" => {
                // Refuses an upload at once, before reading its body, then
                // holds the connection without reading, past the gateway's
                // upstream timeout.
                write(&mut stream, b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 19\r\nConnection: close\r\n\r\nupstream: too large").await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                true
            }
            "/api/contacts/then-close" => {
                // Kept alive by the headers, closed anyway right after.
                write(&mut stream, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                true
            }
            "/api/contacts/download" => {
                let mut ok = !write(&mut stream, format!("HTTP/1.1 200 OK\r\nContent-Length: {DOWNLOAD}\r\n\r\n").as_bytes()).await;
                let block = vec![b'd'; 1 << 16];
                let mut sent = 0;
                while ok && sent < DOWNLOAD {
                    let n = block.len().min(DOWNLOAD - sent);
                    ok = stream.write_all(&block[..n]).await.is_ok();
                    sent += n;
                }
                !ok
            }
            _ => write(&mut stream, b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: keep-alive\r\n\r\ndefault").await,
        };
        if close {
            return;
        }
    }
}

/// Writes `bytes`; true when the connection must close (write failed).
async fn write(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    stream.write_all(bytes).await.is_err()
}

async fn setup(server_extra: &str) -> (RawUpstream, Setup, String) {
    let up = raw_upstream().await;
    let s = Setup::new(&up.url, server_extra, "");
    let (_, token) = s.create_key(&["--name", "framing", "--role", "read-only"]);
    (up, s, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_framings_reach_the_client_intact() {
    let (_up, s, token) = setup("").await;
    let _gw = s.start();
    let get = |path: &str| client().get(s.url(path)).bearer_auth(&token).send();

    let resp = get("/api/contacts/chunked").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("transfer-encoding").is_none_or(|v| v == "chunked"));
    assert_eq!(resp.text().await.unwrap(), "hello world");

    let resp = get("/api/contacts/chunked-with-length").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hello", "Transfer-Encoding wins over Content-Length");

    let resp = get("/api/contacts/until-close").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "read until the end");

    let resp = get("/api/contacts/early-hints").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");

    let resp = get("/api/contacts/no-content").await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["x-done"], "1");
    assert_eq!(resp.text().await.unwrap(), "");

    let resp =
        tokio::time::timeout(Duration::from_secs(1), client().head(s.url("/api/contacts/head")).bearer_auth(&token).send())
            .await
            .expect("a HEAD answer has no body to wait for")
            .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_upstream_answers_are_502_or_a_cut_body() {
    let (_up, s, token) = setup("").await;
    let gw = s.start();
    let resp = client().get(s.url("/api/contacts/garbage")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "upstream_unavailable", "{body}");
    assert!(gw.log_text().contains("malformed"), "the log says why: {}", gw.log_text());

    // The head was good, so the client may have its 200 (or the connection
    // closes before the head is out), but never a silently short body.
    let sent = client().get(s.url("/api/contacts/truncated")).bearer_auth(&token).send().await;
    if let Ok(resp) = sent {
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.is_err(), "a truncated body must fail, not end early");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_stalling_in_its_body_is_cut_off_after_its_timeout() {
    let (_up, s, token) = setup("").await;
    let _gw = s.start();
    let mut resp = client().get(s.url("/api/contacts/stalls")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.chunk().await.unwrap().as_deref(), Some(&b"first"[..]));
    // The upstream's timeout (2s in the test config) also bounds a pause
    // in the body; the upstream itself would stay silent for 10s.
    let paused = std::time::Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(8), resp.chunk()).await.expect("the stalled body was not cut off");
    assert!(rest.is_err(), "a cut body must fail, not end early: {rest:?}");
    assert!(paused.elapsed() >= Duration::from_millis(1500), "cut before the timeout: {:?}", paused.elapsed());
    // The gateway goes on serving.
    let resp = client().get(s.url("/api/contacts/after")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_and_closed_ones_are_retried() {
    let (up, s, token) = setup("workers = 1").await;
    let _gw = s.start();
    for _ in 0..20 {
        let resp = client().get(s.url("/api/contacts/reused")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "default");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "one kept-alive upstream connection serves them all");

    // The upstream closes each connection right after answering: the next
    // request finds its pooled connection dead and must still succeed.
    for i in 0..20 {
        let resp = client().get(s.url("/api/contacts/then-close")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.text().await.unwrap(), "ok");
        if i % 2 == 0 {
            // Sometimes give the gateway time to see the close first.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_before_it_reads_the_body_is_heard() {
    let (up, s, token) = setup("workers = 1").await;
    let _gw = s.start();
    // The upstream never reads the upload: a gateway that must finish
    // sending it first waits out the upstream timeout (504).
    let resp =
        client().post(s.url("/api/contacts/early-answer")).bearer_auth(&token).body(vec![b'u'; UPLOAD]).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.text().await.unwrap(), "upstream: too large");
    // The connection the upload was cut short on is not used again.
    let resp = client().get(s.url("/api/contacts/after")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "default");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_downloads_stream_through() {
    let (_up, s, token) = setup("").await;
    let gw = s.start();
    let mut resp = client().get(s.url("/api/contacts/download")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut total = 0usize;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        assert!(chunk.iter().all(|&b| b == b'd'));
        total += chunk.len();
    }
    assert_eq!(total, DOWNLOAD);
    if let Some(peak) = gw.peak_rss_kib() {
        assert!(peak < 64 * 1024, "the gateway peaked at {peak} KiB: the download was buffered");
    }
}
