//! keygate's HTTP/1.1 server as raw clients meet it: keep-alive and its
//! idle limit, pipelining, HEAD, HTTP/1.0, chunked uploads with trailers,
//! `Expect: 100-continue`, unread bodies, and heads that would let a
//! request be smuggled past the gateway.

use crate::common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One response read off a raw connection.
struct Answer {
    status: u16,
    /// Header lines, lowercased.
    head: String,
    body: Vec<u8>,
}

fn connect(port: u16) -> BufReader<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    BufReader::new(s)
}

fn send(conn: &mut BufReader<TcpStream>, bytes: &[u8]) {
    conn.get_mut().write_all(bytes).unwrap();
}

/// Reads one response (`head_only`: a HEAD answer, no body follows).
fn answer(conn: &mut BufReader<TcpStream>, head_only: bool) -> Answer {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(conn.read_line(&mut line).unwrap() > 0, "connection closed; head so far: {head:?}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status = head[9..12].parse().unwrap();
    let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string));
    let mut body = Vec::new();
    if head_only || status == 100 || status == 204 || status == 304 {
        return Answer { status, head, body };
    }
    if let Some(n) = header("content-length") {
        body.resize(n.parse().unwrap(), 0);
        conn.read_exact(&mut body).unwrap();
    } else if header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let mut size = String::new();
            conn.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            conn.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        conn.read_to_end(&mut body).unwrap();
    }
    Answer { status, head, body }
}

/// A gateway in front of the test upstream, and a key created with `key_args`.
async fn keyed_gateway(key_args: &[&str]) -> (upstream::Upstream, Setup, Gateway, String) {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let (_, token) = s.create_key(key_args);
    let gw = s.start();
    (up, s, gw, token)
}

fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_slice(&a.body).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&a.body)))
}

/// Whether the server closed the connection (EOF) within `within`.
fn closed_within(conn: &mut BufReader<TcpStream>, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    conn.get_ref().set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    match conn.read(&mut byte) {
        Ok(0) => Some(started.elapsed()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_lasts_the_idle_timeout_not_the_head_timeout() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "header_read_timeout = \"1s\"\nidle_timeout = \"3s\"", "");
    let _gw = s.start();
    let mut conn = connect(s.data_port);
    send(&mut conn, b"GET /api/ping HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(answer(&mut conn, false).status, 200);
    // Idle for longer than the head timeout: the connection is still there.
    std::thread::sleep(Duration::from_millis(1800));
    send(&mut conn, b"GET /api/ping HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(answer(&mut conn, false).status, 200);
    // And it goes once idle for longer than the idle timeout.
    let closed = closed_within(&mut conn, Duration::from_secs(8)).expect("the idle connection was never closed");
    assert!(closed >= Duration::from_millis(2500), "closed after {closed:?}, before the idle timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_head_and_http10_are_answered_in_order() {
    let (_up, s, _gw, token) = keyed_gateway(&["--name", "pipe", "--role", "read-only"]).await;
    let mut conn = connect(s.data_port);
    let get = format!("GET /api/lists?n=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n");
    let head = format!("HEAD /api/lists?n=2 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n");
    let unknown = "GET /api/lists?n=3 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer nope\r\n\r\n";
    send(&mut conn, format!("{get}{head}{unknown}{get}").as_bytes());
    let first = answer(&mut conn, false);
    assert_eq!((first.status, json(&first)["query"].as_str()), (200, Some("n=1")));
    let second = answer(&mut conn, true);
    assert_eq!(second.status, 200);
    assert!(second.head.contains("content-length: "), "a HEAD answer keeps its length: {}", second.head);
    let third = answer(&mut conn, false);
    assert_eq!((third.status, json(&third)["code"].as_str()), (401, Some("invalid_key")));
    assert_eq!(answer(&mut conn, false).status, 200);

    // HTTP/1.0 without keep-alive: answered, then closed.
    let mut old = connect(s.data_port);
    send(&mut old, format!("GET /api/lists HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes());
    let a = answer(&mut old, false);
    assert_eq!(a.status, 200);
    assert!(a.head.contains("connection: close"), "{}", a.head);
    assert!(closed_within(&mut old, Duration::from_secs(5)).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_and_expect_continue_reach_the_upstream_whole() {
    let (_up, s, _gw, token) = keyed_gateway(&["--name", "up", "--permission", "contacts.create"]).await;
    let mut conn = connect(s.data_port);
    let head =
        format!("POST /api/upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n");
    send(&mut conn, head.as_bytes());
    send(&mut conn, b"5;note=x\r\nhello\r\n");
    std::thread::sleep(Duration::from_millis(100));
    send(&mut conn, b"6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    let a = answer(&mut conn, false);
    assert_eq!((a.status, json(&a)["bodyBytes"].as_u64()), (200, Some(11)));

    // Expect: 100-continue: the interim answer comes before the body is sent.
    let head = format!(
        "POST /api/upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    );
    send(&mut conn, head.as_bytes());
    assert_eq!(answer(&mut conn, false).status, 100);
    send(&mut conn, b"data");
    let a = answer(&mut conn, false);
    assert_eq!((a.status, json(&a)["bodyBytes"].as_u64()), (200, Some(4)));

    // A refused request whose body nobody read: the connection still serves.
    send(&mut conn, b"POST /api/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789");
    let a = answer(&mut conn, false);
    assert_eq!((a.status, json(&a)["code"].as_str()), (401, Some("missing_key")));
    send(&mut conn, b"GET /api/ping HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(answer(&mut conn, false).status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_bodies_are_refused_before_reaching_the_upstream() {
    let (_up, s, _gw, token) = keyed_gateway(&["--name", "smuggle", "--permission", "contacts.create"]).await;
    let smuggled = "GET /api/admin-only HTTP/1.1\r\nHost: a\r\n\r\n";
    for framing in [
        format!("Content-Length: {}\r\nTransfer-Encoding: chunked", 5 + smuggled.len()),
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity".to_string(),
        "Transfer-Encoding: gzip, chunked".to_string(),
        "Content-Length: 5\r\nContent-Length: 7".to_string(),
        "Content-Length: -1".to_string(),
    ] {
        let mut conn = connect(s.data_port);
        let request = format!(
            "POST /api/upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n{framing}\r\n\r\n0\r\n\r\n{smuggled}"
        );
        send(&mut conn, request.as_bytes());
        let a = answer(&mut conn, false);
        assert_eq!((a.status, json(&a)["code"].as_str()), (400, Some("bad_request")), "{framing}");
        assert!(closed_within(&mut conn, Duration::from_secs(5)).is_some(), "{framing}: the connection must close");
    }
    // A broken chunk size ends the upload (and the connection) too.
    let mut conn = connect(s.data_port);
    let head =
        format!("POST /api/upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n");
    send(&mut conn, format!("{head}+5\r\nhello\r\n0\r\n\r\n").as_bytes());
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.is_empty() || !text.starts_with("HTTP/1.1 2"), "a malformed chunk was accepted: {text}");
}
