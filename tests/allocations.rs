//! What a request with a cached key costs the heap, through the real
//! HTTP/1.1 server, request path and forwarder, in-process: how many
//! allocations it makes, and how many bytes each key seen keeps. A global
//! allocator is one per binary, so this file is a test binary of its own;
//! the client and the upstream run on threads of their own and allocate
//! nothing per request, so every allocation counted is keygate's.
//!
//! Each figure is a ceiling measured on the code as it is: a change that
//! adds an allocation to the hot path, or bytes to a cached key, fails
//! here, and one that removes some lowers the figure (BENCHMARKS.md lists
//! what is left).

use keygate::config::Config;
use keygate::manage::{KeyInput, Manager};
use keygate::pipeline::ConnInfo;
use keygate::server::Limits;
use keygate::state::App;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations (and reallocations) per request, measured.
const MEASURED: usize = 7;

/// Heap bytes each cached key keeps, as asked of the allocator (1,272 to
/// 1,279 measured: where the maps double moves with their hash seeds).
/// The process's resident memory per key is the load script's figure
/// (BENCHMARKS.md, memory).
const MEASURED_BYTES_PER_KEY: i64 = 1_300;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[store]
path = "keygate.db"

[rate_limit]
default_per_minute = 1000000000

[[upstreams]]
name = "backend"
url = "{upstream}"

[[modules]]
id = "lists"
name = "Lists"
permissions = [ { id = "lists.view", label = "View" } ]

[[routes]]
match = "GET /api/lists"
permission = "lists.view"

[[roles]]
id = "reader"
permissions = ["lists.view"]
"#;

const UPSTREAM_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 31\r\n\r\n{\"success\":true,\"data\":[1,2,3]}";

fn allocations() -> usize {
    let s = GLOBAL.stats();
    s.allocations + s.reallocations
}

/// Where a head ends in `buf`, if it has ended.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// An upstream that answers every request head on a connection with the
/// same bytes, from fixed buffers.
fn upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut len = 0;
                loop {
                    match conn.read(&mut buf[len..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                    while let Some(end) = head_end(&buf[..len]) {
                        if conn.write_all(UPSTREAM_ANSWER).is_err() {
                            return;
                        }
                        buf.copy_within(end..len, 0);
                        len -= end;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Sends one request on `conn` and reads its whole answer; the status.
fn exchange(conn: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> u16 {
    conn.write_all(request).unwrap();
    let mut len = 0;
    loop {
        let n = conn.read(&mut buf[len..]).unwrap();
        assert!(n > 0, "keygate closed the connection");
        len += n;
        let Some(end) = head_end(&buf[..len]) else { continue };
        let head = std::str::from_utf8(&buf[..end]).unwrap();
        // Read without allocating: this thread's allocations count too.
        let length: usize = head
            .split("\r\n")
            .find(|l| l.len() > 16 && l[..16].eq_ignore_ascii_case("content-length: "))
            .map(|l| l[16..].parse().unwrap())
            .expect("every answer here has a length");
        if len >= end + length {
            return head[9..12].parse().unwrap();
        }
    }
}

/// A gateway serving in-process on one worker thread, as each of
/// keygate's workers is, with `keys` keys made before it serves.
struct Gateway {
    addr: std::net::SocketAddr,
    tokens: Vec<String>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start(keys: usize) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, CONFIG.replace("{upstream}", &upstream())).unwrap();
        let config = Config::load(&path).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (tokens_tx, tokens_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let limits = Limits::from_server(&config.server);
                let app = App::new(config, path).await.unwrap();
                let runtime = app.runtime.load_full();
                let manager = Manager::new(app.store.as_ref(), &runtime.config, "test");
                let mut tokens = Vec::with_capacity(keys);
                for i in 0..keys {
                    let input = KeyInput { name: Some(format!("key {i}")), role: Some("reader".into()), ..KeyInput::default() };
                    tokens.push(manager.create_key(input, None).await.unwrap().1);
                }
                tokens_tx.send(tokens).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let handler = move |req, conn: ConnInfo| keygate::pipeline::handle(Arc::clone(&app), req, conn);
                keygate::server::serve(listener, None, limits, handler, stop_rx, None).await;
            });
        });
        Gateway { addr, tokens: tokens_rx.recv().unwrap(), stop, thread, _dir: dir }
    }

    fn stop(self) {
        self.stop.send(true).unwrap();
        self.thread.join().unwrap();
    }
}

/// A request for `/api/lists` with `token`.
fn request(token: &str) -> String {
    format!(
        "GET /api/lists HTTP/1.1\r\nHost: gateway.example\r\nAuthorization: Bearer {token}\r\n\
         User-Agent: load/1.0\r\nAccept: */*\r\n\r\n"
    )
}

/// The tests take turns: each reads the process-wide counters.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_request_with_a_cached_key_allocates_no_more_than_measured() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let gateway = Gateway::start(1);
    let request = request(&gateway.tokens[0]);
    let mut conn = TcpStream::connect(gateway.addr).unwrap();
    let mut buf = vec![0u8; 16384];
    // The first request finds the key in the store; the rest in the cache.
    for _ in 0..50 {
        assert_eq!(exchange(&mut conn, request.as_bytes(), &mut buf), 200);
    }
    // Each window runs from one answer's end to the next's: in the steady
    // state, exactly one request's work. The median leaves out a window a
    // timer or a background task happened to fall in.
    let mut per_request = Vec::with_capacity(400);
    let mut last = allocations();
    for _ in 0..400 {
        assert_eq!(exchange(&mut conn, request.as_bytes(), &mut buf), 200);
        let now = allocations();
        per_request.push(now - last);
        last = now;
    }
    per_request.sort_unstable();
    let median = per_request[per_request.len() / 2];
    drop(conn);
    gateway.stop();
    eprintln!("allocations per request with a cached key: median {median} (min {}, max {})", per_request[0], per_request[399]);
    assert!(median > 0, "the counting allocator counts nothing: is it installed?");
    assert!(
        median <= MEASURED,
        "a request with a cached key now makes {median} allocations, above the {MEASURED} measured; \
         find the new one (BENCHMARKS.md, allocations) or, if it is worth its cost, raise MEASURED and say why"
    );
}

/// Heap bytes in use (as asked of the allocator, before its rounding).
fn live_bytes() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 + s.bytes_reallocated as i64 - s.bytes_deallocated as i64
}

/// What each key a node has seen keeps on the heap: its cache entry, its
/// identity fields, its limiter window and its pending usage.
#[test]
fn a_cached_key_keeps_no_more_heap_than_measured() {
    const KEYS: usize = 2_000;
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let gateway = Gateway::start(KEYS + 100);
    let mut conn = TcpStream::connect(gateway.addr).unwrap();
    let mut buf = vec![0u8; 16384];
    // The first hundred warm what every key shares (pools, buffers, maps).
    for token in &gateway.tokens[..100] {
        assert_eq!(exchange(&mut conn, request(token).as_bytes(), &mut buf), 200);
    }
    let requests: Vec<String> = gateway.tokens[100..].iter().map(|t| request(t)).collect();
    let before = live_bytes();
    for request in &requests {
        assert_eq!(exchange(&mut conn, request.as_bytes(), &mut buf), 200);
    }
    let per_key = (live_bytes() - before) / KEYS as i64;
    drop(conn);
    gateway.stop();
    eprintln!("heap bytes per cached key: {per_key}");
    assert!(per_key > 0, "the counting allocator counts nothing: is it installed?");
    assert!(
        per_key <= MEASURED_BYTES_PER_KEY,
        "each cached key now keeps {per_key} heap bytes, above the {MEASURED_BYTES_PER_KEY} measured; \
         find what grew (BENCHMARKS.md, memory) or, if it is worth its cost, raise the figure and say why"
    );
}
