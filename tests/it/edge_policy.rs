//! The edge policy as one table: for each attack class keygate closes and
//! each framing rule of RFC 9112 section 6, the bytes a client sends and
//! exactly what the upstream receives, byte for byte, or the refusal.
//! One gateway (the real binary) in front of a recording upstream that
//! reads strictly, so a smuggled request would show as a message of its
//! own. To add a case, add a row.
//!
//! In the rows: `{key}` is a valid key's token, `{cl}` the length of what
//! follows the head (in a client's bytes and an expected message alike),
//! `{up}` the upstream's address and `{id}` the key's identity lines.

use crate::common::recorder::Recorder;
use crate::common::Setup;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What a row expects.
enum Expect {
    /// Answered with these statuses, the upstream having received exactly
    /// these messages.
    Forwarded(&'static [u16], &'static [&'static str]),
    /// Refused with this status; the upstream received nothing.
    Refused(u16),
}

struct Row {
    name: &'static str,
    send: &'static str,
    expect: Expect,
    /// The client's connection is closed after the answer, and so is the
    /// upstream connection that carried it.
    closes: bool,
}

const fn row(name: &'static str, send: &'static str, expect: Expect) -> Row {
    Row { name, send, expect, closes: false }
}

/// The forwarded head's fixed part after the client's own headers.
const FWD: &str = "x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: gw\r\n";

use Expect::{Forwarded, Refused};

const ROWS: &[Row] = &[
    // The baseline every other row differs from.
    row(
        "a plain keyed GET",
        "GET /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nAccept: */*\r\n\r\n",
        Forwarded(&[200], &["GET /api/lists HTTP/1.1\r\nhost: {up}\r\naccept: */*\r\n{fwd}{id}\r\n"]),
    ),
    row(
        "a body is framed by keygate with the length it checked",
        "POST /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Length: {cl}\r\n\r\n{\"name\":\"x\"}",
        Forwarded(&[200], &["POST /api/lists HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}content-length: {cl}\r\n\r\n{\"name\":\"x\"}"]),
    ),
    // The request id: a sane one passes on, in keygate's place for it;
    // any other is replaced (by a made one, left out of the comparison).
    row(
        "a sane X-Request-Id is forwarded once, in keygate's place",
        "GET /api/lists HTTP/1.1\r\nHost: gw\r\nX-Request-Id: order-7\r\nAuthorization: Bearer {key}\r\n\r\n",
        Forwarded(&[200], &["GET /api/lists HTTP/1.1\r\nhost: {up}\r\n{fwd}x-request-id: order-7\r\n{id}\r\n"]),
    ),
    row(
        "two X-Request-Id lines, or one with a space, are replaced",
        "GET /api/lists HTTP/1.1\r\nHost: gw\r\nX-Request-Id: a\r\nX-Request-Id: b\r\nX-Request-ID: c d\r\nAuthorization: Bearer {key}\r\n\r\n",
        Forwarded(&[200], &["GET /api/lists HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}\r\n"]),
    ),
    // 1. Framing headers named in Connection.
    row(
        "Connection naming content-length does not unframe the body",
        "POST /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nConnection: keep-alive, content-length\r\nContent-Length: {cl}\r\n\r\nGET /api/ping HTTP/1.1\r\nHost: gw\r\n\r\n",
        Forwarded(
            &[200],
            &["POST /api/lists HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}content-length: {cl}\r\n\r\nGET /api/ping HTTP/1.1\r\nHost: gw\r\n\r\n"],
        ),
    ),
    row(
        "Connection naming transfer-encoding does not unframe a chunked body",
        "POST /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Forwarded(&[200], &["POST /api/lists HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]),
    ),
    row(
        "Connection cannot remove Host, X-Forwarded-* or a public route's credentials",
        "GET /api/ping HTTP/1.1\r\nHost: gw\r\nConnection: host, x-forwarded-for, x-forwarded-host, authorization, x-api-key, x-keygate-key-id, x-hop\r\nAuthorization: Bearer public-route-own\r\nX-Api-Key: own\r\nX-Hop: 1\r\n\r\n",
        Forwarded(&[200], &["GET /api/ping HTTP/1.1\r\nhost: {up}\r\nauthorization: Bearer public-route-own\r\nx-api-key: own\r\n{fwd}\r\n"]),
    ),
    // 2. Header names with `_`, which CGI-style backends read as `-`.
    row(
        "names with an underscore are dropped",
        "GET /api/ping HTTP/1.1\r\nHost: gw\r\nX_Keygate_Owner: forged\r\nX_Forwarded_For: 192.0.2.66\r\nX_API_Key: {key}\r\nTransfer_Encoding: chunked\r\nContent_Length: 5\r\nX_Custom: 1\r\nX-Custom: 2\r\n\r\n",
        Forwarded(&[200], &["GET /api/ping HTTP/1.1\r\nhost: {up}\r\nx-custom: 2\r\n{fwd}\r\n"]),
    ),
    row(
        "an underscore look-alike beside a keyed request's real header",
        "GET /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nX_Keygate_Role: admin\r\n\r\n",
        Forwarded(&[200], &["GET /api/lists HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}\r\n"]),
    ),
    row(
        "look-alikes of framing, identity and credential names with runs of - are dropped",
        "GET /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nTransfer---Encoding: chunked\r\nContent--Length: 5\r\nX-Keygate--Owner: forged\r\nX--Api-Key: other\r\nX--Custom: 1\r\n\r\n",
        Forwarded(&[200], &["GET /api/lists HTTP/1.1\r\nhost: {up}\r\nx--custom: 1\r\n{fwd}{id}\r\n"]),
    ),
    // 3. `;` path parameters a servlet container would resolve.
    row(
        "..; climbs in a servlet container",
        "GET /api/contacts/..;/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\r\n",
        Refused(400),
    ),
    row(
        "%2e%2e; is ..; spelled otherwise",
        "GET /api/contacts/%2e%2e;/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\r\n",
        Refused(400),
    ),
    row(
        "..;jsessionid=1 climbs too",
        "GET /api/contacts/..;jsessionid=1/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\r\n",
        Refused(400),
    ),
    row(
        ".; and an empty segment with parameters",
        "GET /api/contacts/.;x=1/;y=2/z HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\r\n",
        Refused(400),
    ),
    row(
        "..%3B is refused as ..;",
        "GET /api/contacts/..%3Bx/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\r\n",
        Refused(400),
    ),
    row(
        "bytes no URI allows in a path are escaped, so every parser reads it alike",
        "GET /api/contacts/a{b}|c\"d^[e] HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\r\n",
        Forwarded(&[200], &["GET /api/contacts/a%7Bb%7D%7Cc%22d%5E%5Be%5D HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}\r\n"]),
    ),
    row(
        "a parameter on a named segment goes through",
        "GET /api/contacts/a;v=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\r\n",
        Forwarded(&[200], &["GET /api/contacts/a;v=1 HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}\r\n"]),
    ),
    // 4. Credential look-alikes in the query.
    row(
        "every parameter whose name folds to api_token is stripped",
        "GET /api/lists?page=2&API_TOKEN={key}&api.token={key}&api+token={key}&api%20token=x&api_token[]={key}&api_token+={key}&Api-Token=1&x=1;api_token={key}&api_token={key} HTTP/1.1\r\nHost: gw\r\n\r\n",
        Forwarded(&[200], &["GET /api/lists?page=2&x=1 HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}\r\n"]),
    ),
    // 5. Method and URL overrides.
    row(
        "method and URL override headers and _method are dropped",
        "GET /api/lists?_method=DELETE&q=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nX-HTTP-Method-Override: DELETE\r\nX-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nX-Original-URL: /api/admin\r\nX-Rewrite-URL: /api/admin\r\n\r\n",
        Forwarded(&[200], &["GET /api/lists?q=1 HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}\r\n"]),
    ),
    // 6. X-Forwarded-For on several lines: the chain that was evaluated.
    row(
        "every X-Forwarded-For line is forwarded, in order",
        "GET /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 203.0.113.9, 192.0.2.1\r\n\r\n",
        Forwarded(
            &[200],
            &["GET /api/lists HTTP/1.1\r\nhost: {up}\r\nx-forwarded-for: 198.51.100.1, 203.0.113.9, 192.0.2.1, 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: gw\r\n{id}\r\n"],
        ),
    ),
    row(
        "other client-address headers are the client's word only, and dropped",
        "GET /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nForwarded: for=192.0.2.9\r\nX-Real-IP: 192.0.2.9\r\nTrue-Client-IP: 192.0.2.9\r\nX-Client-IP: 192.0.2.9\r\n\r\n",
        Forwarded(&[200], &["GET /api/lists HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}\r\n"]),
    ),
    // 7. Duplicate lengths, bodies on GET, Host.
    row(
        "two identical Content-Length lines become one",
        "POST /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        Forwarded(&[200], &["POST /api/lists HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}content-length: 5\r\n\r\nhello"]),
    ),
    Row {
        name: "a body on GET is forwarded framed, and neither connection is used again",
        send: "GET /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Length: {cl}\r\n\r\nGET /api/ping HTTP/1.1\r\n\r\n",
        expect: Forwarded(&[200], &["GET /api/lists HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}content-length: {cl}\r\n\r\nGET /api/ping HTTP/1.1\r\n\r\n"]),
        closes: true,
    },
    Row {
        name: "a body on OPTIONS likewise",
        send: "OPTIONS /api/contacts/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        expect: Forwarded(&[200], &["OPTIONS /api/contacts/x HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}transfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"]),
        closes: true,
    },
    row("HTTP/1.1 without Host", "GET /api/ping HTTP/1.1\r\nAccept: */*\r\n\r\n", Refused(400)),
    row("two Host lines", "GET /api/ping HTTP/1.1\r\nHost: gw\r\nHost: other\r\n\r\n", Refused(400)),
    row("two Host lines, the same", "GET /api/ping HTTP/1.1\r\nHost: gw\r\nHost: gw\r\n\r\n", Refused(400)),
    Row {
        name: "HTTP/1.0 may omit Host",
        send: "GET /api/ping HTTP/1.0\r\n\r\n",
        expect: Forwarded(&[200], &["GET /api/ping HTTP/1.1\r\nhost: {up}\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n\r\n"]),
        closes: false,
    },
    // RFC 9112 section 6: every framing keygate cannot be sure of is refused.
    row(
        "Transfer-Encoding and Content-Length together",
        "POST /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        Refused(400),
    ),
    row(
        "a coding other than chunked",
        "POST /api/lists HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        Refused(400),
    ),
    row(
        "chunked twice",
        "POST /api/lists HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        Refused(400),
    ),
    row("chunked in HTTP/1.0", "POST /api/lists HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Refused(400)),
    row(
        "differing Content-Length lines",
        "POST /api/lists HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        Refused(400),
    ),
    row("a Content-Length list", "POST /api/lists HTTP/1.1\r\nHost: gw\r\nContent-Length: 5, 5\r\n\r\nhello", Refused(400)),
    row("a signed Content-Length", "POST /api/lists HTTP/1.1\r\nHost: gw\r\nContent-Length: +5\r\n\r\nhello", Refused(400)),
    row(
        "a Content-Length past u64",
        "POST /api/lists HTTP/1.1\r\nHost: gw\r\nContent-Length: 99999999999999999999\r\n\r\n",
        Refused(400),
    ),
    row("a space before the colon", "GET /api/ping HTTP/1.1\r\nHost: gw\r\nContent-Length : 5\r\n\r\nhello", Refused(400)),
    row("an obs-folded header", "GET /api/ping HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n b\r\n\r\n", Refused(400)),
    row("a NUL in a value", "GET /api/ping HTTP/1.1\r\nHost: gw\r\nX-A: 1\u{0}2\r\n\r\n", Refused(400)),
    row(
        "chunk extensions and trailers stay behind",
        "POST /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=\"a\"\r\nhello\r\n0\r\nX-Trailer: forged\r\n\r\n",
        Forwarded(&[200], &["POST /api/lists HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]),
    ),
    row(
        "pipelined requests are forwarded one by one",
        "GET /api/ping HTTP/1.1\r\nHost: gw\r\n\r\nGET /api/ping?n=2 HTTP/1.1\r\nHost: gw\r\n\r\n",
        Forwarded(
            &[200, 200],
            &["GET /api/ping HTTP/1.1\r\nhost: {up}\r\n{fwd}\r\n", "GET /api/ping?n=2 HTTP/1.1\r\nhost: {up}\r\n{fwd}\r\n"],
        ),
    ),
    row(
        "the absolute form is read for its path only",
        "GET http://evil.example/api/ping HTTP/1.1\r\nHost: gw\r\n\r\n",
        Forwarded(&[200], &["GET /api/ping HTTP/1.1\r\nhost: {up}\r\n{fwd}\r\n"]),
    ),
    // Upgrades: a WebSocket handshake reaches only a route that takes them
    // (tests/it/websocket.rs); another protocol's is a hop-by-hop field.
    row(
        "a WebSocket handshake on a route without websocket = true is refused",
        "GET /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        Refused(400),
    ),
    row(
        "Connection: upgrade with a body, for a WebSocket, is refused",
        "POST /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Content-Length: {cl}\r\n\r\n\x01\x05hello",
        Refused(400),
    ),
    row(
        "Connection: upgrade with a body, for h2c, goes on without the upgrade",
        "POST /api/lists HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nContent-Length: {cl}\r\n\r\nhello",
        Forwarded(&[200], &["POST /api/lists HTTP/1.1\r\nhost: {up}\r\n{fwd}{id}content-length: {cl}\r\n\r\nhello"]),
    ),
];

/// `{cl}`: the length of what follows the first blank line.
fn with_length(text: &str) -> String {
    match text.split_once("\r\n\r\n") {
        Some((_, body)) if text.contains("{cl}") => text.replace("{cl}", &body.len().to_string()),
        _ => text.to_string(),
    }
}

/// Sends `bytes` on a new connection; the statuses answered, and whether
/// the gateway closed the connection after them.
fn exchange(port: u16, bytes: &[u8], answers: usize) -> (Vec<u16>, bool) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(300)));
    loop {
        let mut chunk = [0u8; 8192];
        match conn.read(&mut chunk) {
            Ok(0) => return (read_statuses(&got), true),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                let statuses = read_statuses(&got);
                if statuses.len() >= answers || Instant::now() > deadline {
                    return (statuses, false);
                }
            }
            Err(_) => return (read_statuses(&got), true),
        }
    }
}

/// `text` without its `x-request-id` line when that holds an id keygate
/// made (32 lowercase hex digits); a head with none or several of either
/// kind is noted in `wrong`.
fn without_made_id(text: &str, wrong: &mut Vec<String>) -> String {
    let head_end = text.find("\r\n\r\n").unwrap_or(text.len());
    let ids: Vec<&str> = text[..head_end].split("\r\n").filter(|l| l.starts_with("x-request-id: ")).collect();
    if ids.len() != 1 {
        wrong.push(format!("{} x-request-id lines in {text:?}", ids.len()));
        return text.to_string();
    }
    let value = &ids[0]["x-request-id: ".len()..];
    let made = value.len() == 32 && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if made {
        text.replacen(&format!("{}\r\n", ids[0]), "", 1)
    } else {
        text.to_string()
    }
}

/// The statuses of the complete responses in `wire`.
fn read_statuses(wire: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = resp.parse(&wire[at..]) else { return out };
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        if wire.len() < at + n + length {
            return out;
        }
        out.push(resp.code.unwrap_or(0));
        at += n + length;
    }
}

#[test]
fn the_edge_policy_table() {
    let up = Recorder::start();
    let s = Setup::new(&up.url, "trusted_proxies = [\"127.0.0.1/32\"]", "default_per_minute = 100000");
    let (key_id, token) = s.create_key(&["--name", "edge", "--role", "full-access", "--owner", "acme"]);
    let gw = s.start();
    let identity =
        format!("x-keygate-key-id: {key_id}\r\nx-keygate-owner: acme\r\nx-keygate-role: full-access\r\nx-keygate-env: live\r\n");
    let mut failures = Vec::new();
    for row in ROWS {
        let send = with_length(&row.send.replace("{key}", &token));
        let answers = match row.expect {
            Forwarded(statuses, _) => statuses.len(),
            Refused(_) => 1,
        };
        let (statuses, closed) = exchange(s.data_port, send.as_bytes(), answers);
        // What the upstream read has arrived before its answer did.
        std::thread::sleep(Duration::from_millis(50));
        let received = up.take();
        // The id keygate makes is new each time: each forwarded head must
        // carry exactly one, and the table compares the rest.
        let mut wrong_ids = Vec::new();
        let texts: Vec<String> = received.iter().map(|r| without_made_id(&r.text, &mut wrong_ids)).collect();
        let (want_statuses, want_upstream): (Vec<u16>, Vec<String>) = match row.expect {
            Forwarded(statuses, messages) => (
                statuses.to_vec(),
                messages
                    .iter()
                    .map(|m| with_length(&m.replace("{up}", &up.host).replace("{fwd}", FWD).replace("{id}", &identity)))
                    .collect(),
            ),
            Refused(status) => (vec![status], Vec::new()),
        };
        let mut wrong = wrong_ids;
        if statuses != want_statuses {
            wrong.push(format!("statuses {statuses:?}, want {want_statuses:?}"));
        }
        if texts != want_upstream {
            wrong.push(format!("upstream read {texts:#?}\n  want {want_upstream:#?}"));
        }
        if row.closes {
            if !closed {
                wrong.push("the client connection stayed open".into());
            }
            std::thread::sleep(Duration::from_millis(50));
            if let Some(r) = received.first().filter(|r| !up.closed(r.conn)) {
                wrong.push(format!("upstream connection {} was kept for another request", r.conn));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!("{}:\n  {}", row.name, wrong.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n\n{}\n\nlog:\n{}",
        failures.len(),
        ROWS.len(),
        failures.join("\n\n"),
        gw.log_text()
    );
}

/// The policy is the request path's, not the HTTP/1.1 server's: the same
/// refusals and the same rewriting for a client speaking HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_policy_over_http2() {
    let up = Recorder::start();
    let s = Setup::new(&up.url, "", "");
    let (_, token) = s.create_key(&["--name", "edge", "--role", "full-access", "--owner", "acme"]);
    let _gw = s.start();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    for path in ["/api/contacts/..;/lists", "/api/contacts/%2e%2e;/lists", "/api/contacts/..;jsessionid=1/lists"] {
        let resp = h2.get(s.url(path)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 400, "{path}");
    }
    assert!(up.take().is_empty(), "a refused path reached the upstream");
    let resp = h2
        .post(s.url("/api/lists?page=2&API_TOKEN=x&api.token=x&_method=DELETE"))
        .bearer_auth(&token)
        .header("x_keygate_owner", "forged")
        .header("x-http-method-override", "DELETE")
        .header("x-forwarded-for", "192.0.2.1")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = up.take();
    assert_eq!(got.len(), 1, "{got:?}");
    let text = &got[0].text;
    assert!(text.starts_with("POST /api/lists?page=2 HTTP/1.1\r\n"), "{text}");
    for gone in ["x_keygate_owner", "forged", "override", "192.0.2.1", "authorization"] {
        assert!(!text.to_ascii_lowercase().contains(gone), "{gone} reached the upstream: {text}");
    }
    assert!(text.contains("x-keygate-owner: acme\r\n"), "{text}");
    assert!(text.ends_with("content-length: 5\r\n\r\nhello"), "keygate frames the body itself: {text}");
}
