//! Every socket's wait is bounded by the timeouts the README promises, and
//! a client that gives up takes its upstream exchange with it: silent new
//! connections, an HTTP/2 client that never opens its window or never
//! finishes a header block, a refused head answered while the client still sends,
//! and clients closing (HTTP/1.1) or resetting (HTTP/2) mid-request.

use crate::common::recorder::Recorder;
use crate::common::{eventually, Setup};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A gateway in front of a recorder, with a key that may call every route.
fn gateway(server_extra: &str) -> (Recorder, Setup, crate::common::Gateway, String) {
    let up = Recorder::start();
    let s = Setup::new(&up.url, server_extra, "");
    let (_, token) = s.create_key(&["--name", "t", "--role", "full-access"]);
    let gw = s.start();
    (up, s, gw, token)
}

/// How long until the gateway closes `conn` (reading and dropping what it sends).
fn time_to_close(mut conn: TcpStream, limit: Duration) -> Duration {
    conn.set_read_timeout(Some(limit)).unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    let _ = conn.read_to_end(&mut sink);
    started.elapsed()
}

#[test]
fn a_new_connection_that_says_nothing_gets_the_header_timeout_not_the_idle_one() {
    let (_up, s, _gw, _) = gateway("header_read_timeout = \"500ms\"\nidle_timeout = \"20s\"");
    let silent = TcpStream::connect(("127.0.0.1", s.data_port)).unwrap();
    let held = time_to_close(silent, Duration::from_secs(10));
    assert!(held < Duration::from_secs(3), "a silent new connection was held for {held:?}");
    // A kept-alive connection between requests does get the idle timeout.
    let mut kept = TcpStream::connect(("127.0.0.1", s.data_port)).unwrap();
    kept.write_all(b"GET /api/ping HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = [0u8; 512];
    assert!(kept.read(&mut answer).unwrap() > 0);
    std::thread::sleep(Duration::from_millis(1500));
    kept.write_all(b"GET /api/ping HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert!(kept.read(&mut answer).unwrap() > 0, "the kept-alive connection was closed after 1.5 s idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_head_reaches_a_client_that_is_still_sending() {
    let (_up, s, _gw, token) = gateway("");
    // A head over the size limit, then a body the client goes on sending:
    // closing at once with its bytes unread would reset the answer away.
    let resp = crate::common::client()
        .post(s.url("/api/lists"))
        .bearer_auth(&token)
        .header("x-big", "x".repeat(20 * 1024))
        .body(vec![b'x'; 4 * 1024 * 1024])
        .send()
        .await;
    match resp {
        Ok(resp) => assert_eq!(resp.status(), 431),
        Err(e) => panic!("the answer was lost: {e:?}"),
    }
}

/// Waits until the recorder has seen a request, and returns its connection.
fn first_request(up: &Recorder) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = up.take().first() {
            return r.conn;
        }
        assert!(Instant::now() < deadline, "the request never reached the upstream");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_http1_client_that_gives_up_cancels_its_upstream_exchange() {
    let (up, s, _gw, token) = gateway("");
    let mut conn = TcpStream::connect(("127.0.0.1", s.data_port)).unwrap();
    write!(conn, "GET /api/contacts/slow/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n").unwrap();
    let upstream_conn = first_request(&up);
    drop(conn);
    let started = Instant::now();
    while !up.closed(upstream_conn) {
        // Well within the upstream's 2 s timeout, which would end it anyway.
        assert!(started.elapsed() < Duration::from_secs(1), "the upstream exchange outlived its client");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_resets_its_stream_cancels_its_upstream_exchange() {
    let (up, s, _gw, token) = gateway("");
    let h2 = reqwest::Client::builder().http2_prior_knowledge().timeout(Duration::from_millis(500)).build().unwrap();
    let sent = h2.get(s.url("/api/contacts/slow/1")).bearer_auth(&token).send().await;
    assert!(sent.is_err(), "the slow answer came within the client's timeout");
    let upstream_conn = first_request(&up);
    let closed = eventually(Duration::from_secs(1), || async { up.closed(upstream_conn) }).await;
    assert!(closed.is_some(), "the upstream exchange outlived its reset stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_never_opens_its_window_is_cut_off_after_the_idle_timeout() {
    let (up, s, _gw, token) = gateway("idle_timeout = \"1s\"");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.data_port)).await.unwrap();
    // A window of 0: the gateway may send response heads, never a byte of body.
    let (mut client, connection) =
        h2::client::Builder::new().initial_window_size(0).handshake::<_, bytes::Bytes>(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let request =
        http::Request::get(s.url("/api/contacts/big/1")).header("authorization", format!("Bearer {token}")).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let upstream_conn = first_request(&up);
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(ended.is_ok(), "the connection was held past 10 s");
    assert!(started.elapsed() < Duration::from_secs(4), "held for {:?} with a 1 s idle timeout", started.elapsed());
    let closed = eventually(Duration::from_secs(2), || async { up.closed(upstream_conn) }).await;
    assert!(closed.is_some(), "the upstream connection was kept for a client that never read");
    drop(response);
}

#[test]
fn an_http2_header_block_left_open_is_cut_off_after_the_header_timeout() {
    let (_up, s, _gw, _) = gateway("header_read_timeout = \"500ms\"\nidle_timeout = \"20s\"");
    let mut conn = TcpStream::connect(("127.0.0.1", s.data_port)).unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    conn.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).unwrap(); // SETTINGS
                                                             // HEADERS on stream 1 with `:method GET` and no END_HEADERS: CONTINUATION never comes.
    conn.write_all(&[0, 0, 1, 0x1, 0, 0, 0, 0, 1, 0x82]).unwrap();
    let held = time_to_close(conn, Duration::from_secs(30));
    assert!(held < Duration::from_secs(3), "an open header block held the connection for {held:?}");
}
