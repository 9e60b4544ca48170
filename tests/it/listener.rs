//! The listener and forwarding: HTTP/2 and TLS on the data port, header and
//! body bounds, slow and garbage clients, streamed bodies, upstream faults.

use crate::common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn raw(port: u16, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_garbage_closes_only_that_connection() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "max_header_bytes = 8192", "");
    let (_, token) = s.create_key(&["--name", "h", "--role", "read-only"]);
    let _gw = s.start();
    let big = "x".repeat(20_000);
    let resp = raw(s.data_port, format!("GET /api/lists HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes());
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let resp = raw(s.data_port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert!(resp.is_empty() || resp.starts_with("HTTP/1.1 400"), "{resp}");
    let resp = raw(s.data_port, b"NOT HTTP AT ALL\r\n\r\n");
    assert!(resp.is_empty() || resp.starts_with("HTTP/1.1 400"), "{resp}");
    // The gateway is still fine.
    let ok = client().get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "header_read_timeout = \"500ms\"\nidle_timeout = \"600ms\"", "");
    let _gw = s.start();
    // A client that never finishes its request head.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", s.data_port)).unwrap();
    slow.write_all(b"GET /api/lists HTTP/1.1\r\nHost: a\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(3), "slow head held for {:?}", started.elapsed());
    // A connection that sends nothing at all.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", s.data_port)).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let n = silent.read(&mut [0u8; 64]).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(3), "silent connection held for {:?}", started.elapsed());
    // An idle keep-alive connection after a complete request.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", s.data_port)).unwrap();
    idle.write_all(b"GET /api/ping HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut all = Vec::new();
    let _ = idle.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(4), "idle connection held for {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_on_the_same_port() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let (_, token) = s.create_key(&["--name", "h2", "--role", "read-only"]);
    let _gw = s.start();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = h2.get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-ratelimit-limit"));
    // The upstream's own fields pass on HTTP/2 too; its hop-by-hop ones do not.
    assert_eq!(resp.headers()["x-upstream"], "yes");
    assert!(resp.headers().get("x-hop").is_none() && resp.headers().get("connection").is_none());
    let seen = json_of(resp).await;
    assert_eq!(seen["version"], "HTTP/1.1", "the upstream is spoken to over HTTP/1.1");
    assert_eq!(seen["headers"]["x-forwarded-host"], format!("127.0.0.1:{}", s.data_port));
    let resp = h2.get(s.url("/api/lists")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_stream_and_oversized_bodies_are_refused() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "max_body_bytes = 150000000", "");
    let (_, token) = s.create_key(&["--name", "upload", "--permission", "contacts.create"]);
    let gw = s.start();
    // 100 MB, sent in 1 MiB chunks without a length: it must stream through.
    const TOTAL: u64 = 100 * 1000 * 1000;
    let chunk = bytes::Bytes::from(vec![b'a'; 1 << 20]);
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= TOTAL {
                return None;
            }
            let n = (TOTAL - sent).min(chunk.len() as u64);
            Some((Ok::<_, std::io::Error>(chunk.slice(..n as usize)), sent + n))
        }
    });
    let resp =
        client().post(s.url("/api/upload")).bearer_auth(&token).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json_of(resp).await["bodyBytes"].as_u64(), Some(TOTAL));
    if let Some(peak) = gw.peak_rss_kib() {
        assert!(peak < 64 * 1024, "the gateway peaked at {peak} KiB: the upload was buffered");
    }
    // An upload with a bad key is refused before its body is read; the
    // client, still sending, gets the 401 all the same.
    for _ in 0..3 {
        let resp = client().post(s.url("/api/upload")).bearer_auth("kg_test_not_a_key").body(vec![b'a'; 8 << 20]).send().await;
        assert_eq!(resp.unwrap().status(), 401);
    }
    // A declared length over the cap is refused before anything is forwarded.
    let resp = client()
        .post(s.url("/api/upload"))
        .bearer_auth(&token)
        .header("content-length", "200000000")
        .body(vec![0u8; 10])
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
        assert_eq!(json_of(resp).await["code"], "payload_too_large");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_body_is_the_clients_fault_not_the_upstreams() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "max_body_bytes = 1000\nbody_read_timeout = \"1s\"", "");
    let (_, token) = s.create_key(&["--name", "upload", "--permission", "contacts.create"]);
    let gw = s.start();
    // A body that stops after 10 of its 100 bytes: 408 once the pause is
    // over, and the connection closes (the rest of the body never came).
    // Sends an upload's head declaring `length` bytes, then `sent` bytes of it.
    let upload = |length: usize, sent: &str| {
        let started = Instant::now();
        let head =
            format!("POST /api/upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nContent-Length: {length}\r\n\r\n");
        (raw(s.data_port, format!("{head}{sent}").as_bytes()), started)
    };
    let (resp, started) = upload(100, "0123456789");
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("\"code\":\"request_timeout\""), "{resp}");
    assert!(started.elapsed() >= Duration::from_millis(900), "answered before the pause was over: {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5), "the connection lingered: {:?}", started.elapsed());
    // A declared length over the cap: 413 at once, without waiting for the
    // body, over HTTP/1.1 and HTTP/2 alike.
    let (resp, started) = upload(5000, "");
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(started.elapsed() < Duration::from_millis(900), "waited for the body: {:?}", started.elapsed());
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = h2.post(s.url("/api/upload")).bearer_auth(&token).body(vec![b'a'; 5000]).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 413);
    // A client that goes on sending the whole oversized body still gets
    // its answer: the gateway reads and drops the rest before it closes,
    // instead of resetting the connection under the client.
    for _ in 0..3 {
        let resp = client().post(s.url("/api/upload")).bearer_auth(&token).body(vec![b'a'; 8 << 20]).send().await.unwrap();
        assert_eq!(resp.status(), 413);
    }
    // A chunked body that grows past the cap: 413, as a declared one gets.
    let chunks = futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a'; 600]))));
    let resp =
        client().post(s.url("/api/upload")).bearer_auth(&token).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(json_of(resp).await["code"], "payload_too_large");
    assert!(!gw.log_text().contains("upstream request failed"), "the upstream was blamed: {}", gw.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_are_502_and_504() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let (_, token) = s.create_key(&["--name", "faults", "--role", "read-only"]);
    let _gw = s.start();
    let resp = client().get(s.url("/api/slow/4000")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(resp.headers().contains_key("x-ratelimit-limit"));
    assert_eq!(json_of(resp).await["code"], "upstream_timeout");
    // On a kept-alive upstream connection too (one client: one worker, one pool).
    let one = client();
    for _ in 0..2 {
        assert_eq!(one.get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap().status(), 200);
        let started = std::time::Instant::now();
        let resp = one.get(s.url("/api/slow/4000")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 504);
        assert!(started.elapsed() < Duration::from_millis(3900), "the timeout did not fire: {:?}", started.elapsed());
    }

    let dead = format!("http://127.0.0.1:{}", free_port());
    let s2 = Setup::new(&dead, "", "");
    let (_, token2) = s2.create_key(&["--name", "dead", "--role", "read-only"]);
    let _gw2 = s2.start();
    let resp = client().get(s2.url("/api/lists")).bearer_auth(&token2).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(json_of(resp).await["code"], "upstream_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_http2_and_http1() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (tls, _) = self_signed_listener(dir.path(), &[]);
    let s = Setup::new(&up.url(), &tls, "");
    let (_, token) = s.create_key(&["--name", "tls", "--role", "read-only"]);
    let _gw = s.start();
    let url = format!("https://localhost:{}/api/lists", s.data_port);
    // reqwest takes the certificate as PEM: the file the listener serves.
    let root = reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("cert.pem")).unwrap()).unwrap();
    for http1 in [false, true] {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(root.clone())
            .resolve("localhost", ([127, 0, 0, 1], s.data_port).into());
        if http1 {
            b = b.http1_only();
        }
        let resp = b.build().unwrap().get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), if http1 { reqwest::Version::HTTP_11 } else { reqwest::Version::HTTP_2 });
        let seen = json_of(resp).await;
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    }
    // A burst of new clients: all complete (an ECDSA certificate's first
    // flight runs on the worker's loop, one handshake after another).
    let burst = (0..24).map(|i| {
        let client = reqwest::Client::builder()
            .add_root_certificate(root.clone())
            .resolve("localhost", ([127, 0, 0, 1], s.data_port).into())
            .http1_only()
            .build()
            .unwrap();
        let (url, token) = (url.clone(), token.clone());
        tokio::spawn(async move { (i, client.get(&url).bearer_auth(&token).send().await.map(|r| r.status())) })
    });
    for handle in burst {
        let (i, status) = handle.await.unwrap();
        assert_eq!(status.unwrap(), 200, "client {i}");
    }
    // Something that is not TLS fails its own handshake and nothing else.
    let garbage = raw(s.data_port, b"GET /api/lists HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(!garbage.contains("200 OK"), "{garbage}");
    let client = reqwest::Client::builder().add_root_certificate(root).resolve("localhost", ([127, 0, 0, 1], s.data_port).into());
    let resp = client.build().unwrap().get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// A TLS connection keygate ends (here after `Connection: close`) ends
/// with a `close_notify`: without it a client cannot tell the answer's end
/// from a cut (RFC 8446, 6.1), and OpenSSL clients then refuse to resume
/// the session, so every later connection pays a full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_keygate_closes_ends_with_close_notify() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (tls, connector) = self_signed_listener(dir.path(), &[b"http/1.1"]);
    let s = Setup::new(&up.url(), &tls, "");
    let (_, token) = s.create_key(&["--name", "tls", "--role", "read-only"]);
    let _gw = s.start();
    let requests = [
        format!("GET /api/lists HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
        format!("GET /api/lists HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n"),
        "GET /api/lists HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n".to_string(),
    ];
    for request in requests {
        let mut stream = tls_connect(&connector, s.data_port).await;
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        // rustls reports a close without close_notify as UnexpectedEof.
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut answer)).await.unwrap();
        assert!(read.is_ok(), "{request:?}: {read:?} after {:?}", String::from_utf8_lossy(&answer));
        assert!(answer.starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&answer));
    }
}

/// A client that comes back resumes its TLS session (a ticket), so it
/// skips the certificate and the signature: with an ECDSA certificate,
/// whose first flight runs on the worker's loop, and with an RSA one,
/// whose first flight runs on a blocking thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_tls_client_resumes_its_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream::start().await;
    for listener in [self_signed_listener, rsa_listener] {
        let dir = tempfile::tempdir().unwrap();
        let (tls, connector) = listener(dir.path(), &[]);
        let s = Setup::new(&up.url(), &tls, "");
        let _gw = s.start();
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let mut stream = tls_connect(&connector, s.data_port).await;
            kinds.push(stream.get_ref().1.handshake_kind());
            stream.write_all(b"GET /api/lists HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            assert!(answer.starts_with(b"HTTP/1.1 401"), "{}", String::from_utf8_lossy(&answer));
        }
        use rustls::HandshakeKind::{Full, Resumed};
        assert_eq!(kinds, [Some(Full), Some(Resumed), Some(Resumed)], "{tls}");
    }
}
