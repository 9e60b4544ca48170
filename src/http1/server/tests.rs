//! The server connection's state machine, in-process over `tokio::io::duplex`:
//! keep-alive, pipelining, bodies and their draining, `100-continue`,
//! lingering, cancellation, timeouts (on tokio's paused clock), shutdown and
//! the hand-over to HTTP/2. No sockets, no binary: feedback in milliseconds.

use super::*;
use crate::http1::BodyOutcome;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

const HEAD_TIMEOUT: Duration = Duration::from_millis(500);
const IDLE: Duration = Duration::from_secs(2);

fn limits() -> Limits {
    Limits {
        header_read_timeout: HEAD_TIMEOUT,
        max_header_bytes: 8192,
        max_headers: 32,
        idle_timeout: IDLE,
        max_connections: 16,
        drain_timeout: Duration::from_secs(1),
        refusal: |status, message| {
            let mut resp = Response::new(crate::body::full(message));
            *resp.status_mut() = status;
            resp
        },
        spellings: &[],
    }
}

/// Answers `METHOD target body-it-read`.
async fn echo(req: Request<Body>, (): ()) -> Reply {
    let (parts, body) = req.into_parts();
    let read = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let text = format!("{} {} {}", parts.method, parts.uri, String::from_utf8_lossy(&read));
    Response::new(crate::body::full(text)).into()
}

/// Answers at once without reading the body.
async fn ignore_body(_: Request<Body>, (): ()) -> Reply {
    Response::new(crate::body::full("ignored")).into()
}

/// Answers 413 at once, the body refused.
async fn refuse_body(_: Request<Body>, (): ()) -> Reply {
    let mut resp = Response::new(crate::body::full("too large"));
    *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    Reply { body: BodyOutcome::Refused, ..resp.into() }
}

type Served = JoinHandle<Ended<DuplexStream>>;

/// A connection served by `handler`; the client's end and the shutdown switch.
fn connect<H, F>(handler: H) -> (DuplexStream, Served, watch::Sender<bool>)
where
    H: Fn(Request<Body>, ()) -> F + Send + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let (client, server) = duplex(64 * 1024);
    let (stop, stopped) = watch::channel(false);
    let served = tokio::spawn(serve(server, limits(), handler, (), stopped));
    (client, served, stop)
}

/// One response as a client reads it.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// Reads `n` responses (fails after 5 s of the test's clock).
async fn answers(client: &mut DuplexStream, n: usize) -> Vec<Answer> {
    let mut wire = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while out.len() < n {
        if let Some((answer, used)) = parse_answer(&wire) {
            out.push(answer);
            wire.drain(..used);
            continue;
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, client.read(&mut chunk)).await;
        match read {
            Ok(Ok(0)) => panic!("closed after {} of {n} answers; unread: {:?}", out.len(), String::from_utf8_lossy(&wire)),
            Ok(Ok(k)) => wire.extend_from_slice(&chunk[..k]),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("no answer in time; got {out:?}, unread {:?}", String::from_utf8_lossy(&wire)),
        }
    }
    assert!(wire.is_empty(), "bytes after the answers: {:?}", String::from_utf8_lossy(&wire));
    out
}

fn parse_answer(wire: &[u8]) -> Option<(Answer, usize)> {
    let end = wire.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&wire[..end]).to_ascii_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    if status == 100 {
        return Some((Answer { status, head, body: String::new() }, end));
    }
    let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |n| n.trim().parse().unwrap());
    let body = wire.get(end..end + length)?;
    Some((Answer { status, head, body: String::from_utf8_lossy(body).into_owned() }, end + length))
}

/// Whether the server end closed (read gives EOF), within the test's clock.
async fn closed(client: &mut DuplexStream) -> bool {
    let mut rest = Vec::new();
    matches!(tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest)).await, Ok(Ok(_)))
}

async fn ended(served: Served) -> Ended<DuplexStream> {
    tokio::time::timeout(Duration::from_secs(10), served).await.expect("the connection did not end").unwrap()
}

/// The answer says the connection closes, and it does once the client lets go.
async fn closes_after(answer: &Answer, client: DuplexStream, served: Served) {
    assert!(answer.head.contains("connection: close"), "{answer:?}");
    drop(client);
    assert!(matches!(ended(served).await, Ended::Closed));
}

#[tokio::test]
async fn keep_alive_serves_requests_one_after_another() {
    let (mut c, _served, _stop) = connect(echo);
    for i in 0..3 {
        c.write_all(format!("GET /n/{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await.unwrap();
        let a = answers(&mut c, 1).await;
        assert_eq!((a[0].status, a[0].body.as_str()), (200, format!("GET /n/{i} ").as_str()));
        assert!(!a[0].head.contains("connection: close"));
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (mut c, _served, _stop) = connect(echo);
    c.write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let a = answers(&mut c, 3).await;
    let bodies: Vec<&str> = a.iter().map(|a| a.body.as_str()).collect();
    assert_eq!(bodies, ["GET /1 ", "POST /2 abc", "GET /3 "]);
}

#[tokio::test]
async fn a_length_body_reaches_the_handler_whole() {
    let (mut c, _served, _stop) = connect(echo);
    c.write_all(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello").await.unwrap();
    tokio::task::yield_now().await;
    c.write_all(b" world").await.unwrap();
    let a = answers(&mut c, 1).await;
    assert_eq!(a[0].body, "POST /u hello world");
    // The connection goes on after a body read to its end.
    c.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert_eq!(answers(&mut c, 1).await[0].body, "GET /next ");
}

#[tokio::test]
async fn a_chunked_body_reaches_the_handler_without_its_framing() {
    let (mut c, _served, _stop) = connect(echo);
    c.write_all(
        b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(answers(&mut c, 1).await[0].body, "POST /u hello!");
    c.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert_eq!(answers(&mut c, 1).await[0].body, "GET /next ", "the trailers were consumed, not read as a request");
}

#[tokio::test]
async fn a_broken_chunked_body_ends_the_connection() {
    let (mut c, served, _stop) = connect(echo);
    c.write_all(b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n").await.unwrap();
    let a = answers(&mut c, 1).await;
    closes_after(&a[0], c, served).await;
}

#[tokio::test]
async fn continue_is_sent_only_when_the_body_is_first_read() {
    let (mut c, _served, _stop) = connect(echo);
    c.write_all(b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n").await.unwrap();
    let a = answers(&mut c, 1).await;
    assert_eq!(a[0].status, 100);
    c.write_all(b"ok").await.unwrap();
    assert_eq!(answers(&mut c, 1).await[0].body, "PUT /u ok");
}

#[tokio::test]
async fn no_continue_when_the_body_is_never_read_and_the_connection_closes() {
    let (mut c, served, _stop) = connect(ignore_body);
    c.write_all(b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n").await.unwrap();
    let a = answers(&mut c, 1).await;
    assert_eq!(a[0].status, 200, "answered without 100 first: the client may never send the body");
    closes_after(&a[0], c, served).await;
}

#[tokio::test]
async fn http10_and_connection_close_end_the_connection_after_the_answer() {
    for head in ["GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"] {
        let (mut c, served, _stop) = connect(echo);
        c.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(answers(&mut c, 1).await[0].status, 200);
        assert!(closed(&mut c).await, "{head}");
        assert!(matches!(ended(served).await, Ended::Closed));
    }
    let (mut c, _served, _stop) = connect(echo);
    c.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
    let a = answers(&mut c, 1).await;
    assert!(a[0].head.contains("connection: keep-alive"), "{a:?}");
}

#[tokio::test]
async fn a_small_unread_body_is_drained_and_the_connection_goes_on() {
    let (mut c, _served, _stop) = connect(ignore_body);
    c.write_all(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let a = answers(&mut c, 2).await;
    assert_eq!((a[0].status, a[1].status), (200, 200), "the body was not read as the next request");
}

#[tokio::test]
async fn a_large_unread_body_closes_the_connection() {
    let (mut c, served, _stop) = connect(ignore_body);
    c.write_all(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\nstart").await.unwrap();
    let a = answers(&mut c, 1).await;
    closes_after(&a[0], c, served).await;
}

#[tokio::test]
async fn a_refused_body_is_not_drained_however_small() {
    let (mut c, served, _stop) = connect(refuse_body);
    c.write_all(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
    let a = answers(&mut c, 1).await;
    assert_eq!(a[0].status, 413);
    assert!(closed(&mut c).await, "not kept to drain the body");
    closes_after(&a[0], c, served).await;
}

#[tokio::test]
async fn a_body_on_get_is_read_and_the_connection_closes_after_the_answer() {
    let (mut c, served, _stop) = connect(echo);
    c.write_all(b"GET /g HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody").await.unwrap();
    let a = answers(&mut c, 1).await;
    assert_eq!(a[0].body, "GET /g body");
    closes_after(&a[0], c, served).await;
}

#[tokio::test]
async fn malformed_and_ambiguous_heads_are_refused_and_the_connection_closes() {
    for head in [
        "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    ] {
        let (mut c, served, _stop) = connect(echo);
        c.write_all(head.as_bytes()).await.unwrap();
        let a = answers(&mut c, 1).await;
        assert_eq!(a[0].status, 400, "{head:?}");
        closes_after(&a[0], c, served).await;
    }
}

#[tokio::test]
async fn an_oversized_head_is_431() {
    let (mut c, _served, _stop) = connect(echo);
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "x".repeat(10_000));
    c.write_all(big.as_bytes()).await.unwrap();
    assert_eq!(answers(&mut c, 1).await[0].status, 431);
}

#[tokio::test]
async fn a_refused_head_lingers_for_what_the_client_still_sends() {
    let (mut c, served, _stop) = connect(echo);
    c.write_all(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").await.unwrap();
    assert_eq!(answers(&mut c, 1).await[0].status, 400);
    // The server's side is shut, yet it still reads: writes keep succeeding.
    for _ in 0..8 {
        c.write_all(&[b'x'; 4096]).await.unwrap();
    }
    assert!(!served.is_finished(), "lingering, not gone");
    drop(c);
    assert!(matches!(ended(served).await, Ended::Closed));
}

#[tokio::test]
async fn a_client_that_closes_cancels_its_request() {
    let dropped = Arc::new(AtomicBool::new(false));
    let handler_dropped = Arc::clone(&dropped);
    let handler = move |_: Request<Body>, (): ()| {
        let guard = DropFlag(Arc::clone(&handler_dropped));
        async move {
            let _guard = guard;
            std::future::pending::<Reply>().await
        }
    };
    let (mut c, served, _stop) = connect(handler);
    c.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    tokio::task::yield_now().await;
    drop(c);
    assert!(matches!(ended(served).await, Ended::Closed));
    assert!(dropped.load(Ordering::SeqCst), "the handler (and its upstream exchange) outlived the client");
}

/// Set when dropped: whether a handler's future was.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn what_a_client_pipelines_while_it_waits_is_kept_for_the_next_request() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let handler = move |req: Request<Body>, (): ()| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                // The second request arrives while the first is in flight.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            echo(req, ()).await
        }
    };
    let (mut c, _served, _stop) = connect(handler);
    c.write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    tokio::task::yield_now().await;
    c.write_all(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let a = answers(&mut c, 2).await;
    assert_eq!((a[0].body.as_str(), a[1].body.as_str()), ("GET /1 ", "GET /2 "));
}

#[tokio::test(start_paused = true)]
async fn a_silent_new_connection_gets_the_head_timeout() {
    let (mut c, served, _stop) = connect(echo);
    let started = tokio::time::Instant::now();
    assert!(closed(&mut c).await);
    assert!(matches!(ended(served).await, Ended::Closed));
    let held = started.elapsed();
    assert!(held >= HEAD_TIMEOUT && held < IDLE, "held {held:?}");
}

#[tokio::test(start_paused = true)]
async fn a_kept_alive_connection_gets_the_idle_timeout_between_requests() {
    let (mut c, served, _stop) = connect(echo);
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    answers(&mut c, 1).await;
    let started = tokio::time::Instant::now();
    tokio::time::sleep(HEAD_TIMEOUT * 2).await;
    c.write_all(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert_eq!(answers(&mut c, 1).await[0].body, "GET /again ", "closed before the idle timeout");
    let started_idle = tokio::time::Instant::now();
    assert!(closed(&mut c).await);
    assert!(started_idle.elapsed() >= IDLE, "closed after {:?}", started.elapsed());
    assert!(matches!(ended(served).await, Ended::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_head_that_stalls_past_the_timeout_is_refused() {
    let (mut c, _served, _stop) = connect(echo);
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let a = answers(&mut c, 1).await;
    assert_eq!(a[0].status, 400);
    assert!(a[0].body.contains("took longer"), "{a:?}");
}

#[tokio::test]
async fn shutdown_ends_an_idle_connection_and_closes_one_in_use_after_its_answer() {
    let (mut c, served, stop) = connect(echo);
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    answers(&mut c, 1).await;
    stop.send(true).unwrap();
    assert!(matches!(ended(served).await, Ended::Closed));
    let (mut c, _served, stop) = connect(|req, ()| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        echo(req, ()).await
    });
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    tokio::task::yield_now().await;
    stop.send(true).unwrap();
    let a = answers(&mut c, 1).await;
    assert!(a[0].head.contains("connection: close"), "answered, then closed: {a:?}");
}

#[tokio::test]
async fn the_http2_preface_hands_the_connection_over_with_what_was_read() {
    let (mut c, served, _stop) = connect(echo);
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04").await.unwrap();
    match ended(served).await {
        Ended::Http2(_, read) => assert!(read.starts_with(b"PRI * HTTP/2.0\r\n"), "{read:?}"),
        _ => panic!("not handed over"),
    }
    // Only as a connection's first request.
    let (mut c2, served, _stop) = connect(echo);
    c2.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    answers(&mut c2, 1).await;
    c2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    assert_eq!(answers(&mut c2, 1).await[0].status, 400);
    drop(c2);
    assert!(matches!(ended(served).await, Ended::Closed));
    drop(c);
}

#[tokio::test]
async fn head_requests_get_no_body_and_the_connection_goes_on() {
    let (mut c, _served, _stop) = connect(echo);
    c.write_all(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /g HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut wire = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while wire.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 || !wire.ends_with(b"GET /g ") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout_at(deadline, c.read(&mut chunk)).await.unwrap().unwrap();
        wire.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&wire);
    let first_head = text.find("\r\n\r\n").unwrap() + 4;
    assert!(text[first_head..].starts_with("HTTP/1.1 200"), "the HEAD answer carried a body: {text:?}");
}

/// Answers 101, leaving a marker in the answer's extensions.
async fn switch(_: Request<Body>, (): ()) -> Reply {
    let mut resp = Response::new(crate::body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
    resp.extensions_mut().insert(7u32);
    resp.into()
}

#[tokio::test]
async fn a_101_hands_the_connection_over_with_what_follows_the_request() {
    let (mut c, served, _stop) = connect(switch);
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00").await.unwrap();
    let a = answers(&mut c, 1).await;
    assert_eq!(a[0].status, 101);
    assert!(a[0].head.contains("upgrade: websocket\r\n") && a[0].head.contains("connection: upgrade\r\n"), "{a:?}");
    match ended(served).await {
        Ended::Switched(_, read, extensions) => {
            assert_eq!(&read[..], b"\x81\x00", "bytes past the request are the new protocol's");
            assert_eq!(extensions.get::<u32>(), Some(&7));
        }
        _ => panic!("not handed over"),
    }
    // A request whose body is unread never switches.
    let (mut c, served, _stop) = connect(switch);
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n").await.unwrap();
    assert!(matches!(ended(served).await, Ended::Closed));
    assert!(closed(&mut c).await);
}
