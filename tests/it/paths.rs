//! Path normalisation end to end: no spelling of a path reaches the
//! upstream without the permission its route needs.

use crate::common::*;
use std::io::{Read, Write};

/// Sends a raw request line (clients normalise paths themselves) and returns status and body.
fn raw_get(port: u16, target: &str, token: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_encoding_tricks() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    // May read lists but not contacts.
    let (_, token) = s.create_key(&["--name", "lists only", "--permission", "lists.view"]);
    let _gw = s.start();
    let port = s.data_port;

    // Spellings of an allowed path reach the upstream normalised.
    for target in ["/api/lists", "//api//lists", "/api/./lists", "/api/x/../lists", "/api/%6cists", "/api/contacts/%2e%2e/lists"]
    {
        let (status, body) = raw_get(port, target, &token);
        assert_eq!(status, 200, "{target}: {body}");
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(seen["path"], "/api/lists", "{target}");
    }
    // Spellings of a forbidden path are still forbidden.
    for target in ["/api/lists/../contacts/1", "/api/%63ontacts/1", "/api/lists/%2e%2e/contacts/1", "/api//contacts/./1"] {
        let (status, body) = raw_get(port, target, &token);
        assert_eq!(status, 403, "{target}: {body}");
        assert!(body.contains("insufficient_permissions"), "{target}: {body}");
    }
    // Unsafe spellings are refused outright.
    for target in [
        "/../etc/passwd",
        "/api/../../etc/passwd",
        "/api/lists%2f..%2fcontacts",
        "/api/lists%2F1",
        "/api/lists%00",
        "/api/%2e%2e/%2e%2e/x",
        "/api/lists%zz",
        "/api/lists%5c..%5ccontacts",
    ] {
        let (status, body) = raw_get(port, target, &token);
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body.contains("bad_request"), "{target}: {body}");
    }
}
