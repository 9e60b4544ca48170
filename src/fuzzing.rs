//! Fuzz targets: each takes untrusted bytes and panics if keygate breaks
//! one of its edge promises on them (docs/security.md). The same checks are
//! driven three ways: by `proptest` in `tests/it/fuzz.rs`, by the inputs kept
//! in `tests/corpus/<target>/` (replayed by `cargo test`), and by the
//! coverage-guided targets in `fuzz/` (`cargo fuzz run <target>`).
//!
//! The request-head target is differential: what keygate would forward is
//! read back by a strict parser of RFC 9112 written here, apart from both
//! httparse (which keygate's server uses) and keygate's own framing code,
//! which must see exactly one request, the checked method, target and body.
//! What keygate accepts from a client, the strict parser must accept too,
//! as the same method and target.

use crate::config::Underscores;
use crate::http1::fuzzing::{parse_head, write_request, Framing, Step};
use crate::policy::{ip, path};
use crate::proxy::headers;
use crate::proxy::outgoing::Outgoing;
use crate::{credentials, proxy};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::HeaderValue;
use http_body_util::BodyExt;
use std::net::IpAddr;

/// A target: panics if keygate breaks a promise on these bytes.
pub type Check = fn(&[u8]);

/// The targets, by the name of their corpus folder.
pub const TARGETS: [(&str, Check); 8] = [
    ("request_head", request_head),
    ("chunked", chunked),
    ("path", path),
    ("query", query),
    ("forwarded_for", forwarded_for),
    ("correlation", correlation),
    ("cors_origin", cors_origin),
    ("websocket_handshake", websocket_handshake),
];

/// A request head (and what follows it) from a client: parsed as the
/// HTTP/1.1 server does; if accepted, forwarded as the upstream client
/// would write it, with a body of the framing the head declared.
pub fn request_head(input: &[u8]) {
    let mut buf = BytesMut::from(input);
    let Ok(Some(head)) = parse_head(&mut buf, 16 * 1024, 100) else { return };
    let (parts, ()) = head.request.into_parts();
    let strict = strict_head(input).unwrap_or_else(|e| panic!("keygate accepted a head RFC 9112 refuses ({e}): {}", show(input)));
    assert_eq!(strict.method, parts.method.as_str(), "the method read differently: {}", show(input));
    if strict.target.starts_with('/') {
        assert_eq!(strict.target, parts.uri.to_string(), "the target read differently: {}", show(input));
    }
    let Ok(normal) = path::normalise(parts.uri.path()) else { return };
    let query = parts.uri.query().and_then(|q| credentials::forwarded_query(q, true));
    let Ok(target) = proxy::upstream_target_of("", &normal, query.as_deref()) else { return };
    let sent: Vec<u8> = match head.framing {
        Framing::Length(n) => vec![b'b'; n.min(4096) as usize],
        Framing::Chunked(_) => b"chunked body".to_vec(),
        _ => Vec::new(),
    };
    let body = match head.framing {
        Framing::Length(n) if n <= 4096 => crate::body::full(sent.clone()),
        Framing::Length(_) => return,
        Framing::Chunked(_) => {
            let frames = sent.chunks(5).map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c)))).collect::<Vec<_>>();
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
        }
        _ => crate::body::empty(),
    };
    let mut out = Outgoing::new(&parts.method, target.clone(), &parts.headers, true, Underscores::Drop);
    out.host = Some(HeaderValue::from_static("upstream.test"));
    out.set_forwarded(
        &headers::peer_value(IpAddr::from([192, 0, 2, 1])),
        false,
        parts.headers.get(http::header::HOST).cloned(),
        false,
    );
    let mut wire = Vec::new();
    let written = write_request(&mut wire, &out, body).now_or_never();
    assert!(matches!(written, Some(Ok(()))), "writing to memory finishes at once: {written:?}");
    let read =
        strict_read(&wire).unwrap_or_else(|e| panic!("keygate forwarded what a strict parser refuses ({e}): {}", show(&wire)));
    assert_eq!(read.used, wire.len(), "more than one message forwarded: {}", show(&wire));
    assert_eq!(read.method, parts.method.as_str());
    assert_eq!(read.target, target);
    assert_eq!(read.body, sent, "the body changed on its way: {}", show(&wire));
    assert_eq!(read.hosts, 1, "one Host, keygate's: {}", show(&wire));
    let hop: Vec<String> = parts
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(headers::connection_named)
        .map(|n| n.as_str().to_string())
        .collect();
    for name in &read.names {
        let ours = matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding" | "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host"
        );
        if ours {
            continue;
        }
        assert!(!name.contains('_'), "{name} forwarded: {}", show(&wire));
        assert_eq!(headers::fate(name), headers::Fate::Pass, "{name} should have stayed behind: {}", show(&wire));
        assert!(!hop.contains(name), "{name}, named in Connection, was forwarded: {}", show(&wire));
    }
}

/// A chunked body: decoded in one piece and byte by byte the result is
/// the same, never reads past the body's end, and agrees with a reference
/// decoder whenever keygate accepts.
pub fn chunked(input: &[u8]) {
    let whole = decode_all(input, input.len().max(1));
    let bytewise = decode_all(input, 1);
    assert_eq!(whole, bytewise, "the result depends on how the bytes arrived");
    if let Ok((body, Some(used))) = &whole {
        let reference = reference_chunked(input).unwrap_or_else(|e| panic!("keygate accepted what the reference refuses ({e})"));
        assert_eq!((body, *used), (&reference.0, reference.1), "keygate and the reference disagree on {}", show(input));
    }
}

/// A path: normalised, it is absolute, stable, free of dot segments,
/// empty segments and dot stems before `;`, and a valid URI path.
pub fn path(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else { return };
    let Ok(p) = path::normalise(text) else { return };
    assert!(p.starts_with('/'), "{p}");
    assert_eq!(path::normalise(&p).as_deref(), Ok(&*p), "normalising twice changed {p}");
    let inner = p.strip_suffix('/').unwrap_or(&p);
    for segment in inner.split('/').skip(1) {
        let stem = segment.split(';').next().unwrap_or("");
        assert!(!matches!(stem, "" | "." | ".."), "segment {segment:?} in {p}");
        assert!(!segment.to_ascii_lowercase().contains("%2e%2e"), "an escaped dot-dot survived in {p}");
    }
    if !p.bytes().any(|b| b <= b' ' || b == 0x7f) {
        assert!(p.parse::<http::uri::PathAndQuery>().is_ok(), "{p} is not a valid path");
    }
}

/// A query string: what is forwarded carries no parameter a backend could
/// read as `api_token` or `_method`, and a query without them is untouched.
pub fn query(input: &[u8]) {
    let Ok(q) = std::str::from_utf8(input) else { return };
    let forwarded = credentials::forwarded_query(q, true);
    let dangerous = |query: &str| query.split(['&', ';']).any(|p| credentials::names_a_dropped_parameter(p, true));
    if let Some(f) = &forwarded {
        assert!(!dangerous(f), "{q:?} was forwarded as {f:?}");
        assert!(f.len() <= q.len());
    }
    if !dangerous(q) {
        assert_eq!(forwarded.as_deref(), (!q.is_empty()).then_some(q), "nothing to drop, yet {q:?} changed");
    }
}

/// `X-Forwarded-For` lines (split at newlines of the input) from a peer:
/// the client address is the peer unless the peer is trusted, and
/// otherwise the peer or an address the lines name.
pub fn forwarded_for(input: &[u8]) {
    let mut headers = http::HeaderMap::new();
    for line in input.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append("x-forwarded-for", v);
        }
    }
    let peer = IpAddr::from([10, 0, 0, 1]);
    let trusted = [ip::parse_cidr("10.0.0.0/8").unwrap_or_else(|e| panic!("{e}"))];
    assert_eq!(ip::client_ip(IpAddr::from([192, 0, 2, 7]), &headers, &trusted), IpAddr::from([192, 0, 2, 7]));
    let client = ip::client_ip(peer, &headers, &trusted);
    let named = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .any(|ip| ip == client || ip.to_canonical() == client);
    assert!(client == peer || named, "{client} is neither the peer nor named in {}", show(input));
}

/// `X-Request-Id`, `traceparent` and `tracestate` lines (the input's
/// lines, in turn): what keygate forwards is a sane id (the client's only
/// when it sent exactly one sane one), a trace context that reads back as
/// itself, and a bounded printable state.
pub fn correlation(input: &[u8]) {
    use crate::correlation::{self as c, TraceParent};
    let mut headers = http::HeaderMap::new();
    let names = [c::REQUEST_ID, c::TRACEPARENT, c::TRACESTATE];
    for (i, line) in input.split(|b| *b == b'\n').enumerate() {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(names[i % 3].clone(), v);
        }
    }
    let incoming = c::Incoming::of(&headers);
    let id = incoming.request_id;
    let sane = |v: &[u8]| !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b));
    assert!(sane(id.as_bytes()) && HeaderValue::from_bytes(id.as_bytes()).is_ok(), "request id {id:?} from {}", show(input));
    let sent: Vec<_> = headers.get_all(&c::REQUEST_ID).iter().collect();
    if sent.len() == 1 && sane(sent[0].as_bytes()) {
        assert_eq!(id.as_bytes(), sent[0].as_bytes(), "a sane id was replaced");
    } else {
        assert!(matches!(id, c::RequestId::Made(_)), "an insane id {sent:?} passed as {id:?}");
    }
    if let Some(tp) = incoming.parent {
        let written = tp.value();
        assert_eq!(TraceParent::parse(written.as_bytes()), Some(tp), "{written:?} does not read back");
        assert!(written.as_bytes().iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b) || *b == b'-'));
        let sent = headers.get(&c::TRACEPARENT).map(HeaderValue::as_bytes).unwrap_or_default();
        if sent.starts_with(b"00-") {
            assert_eq!(written.as_bytes(), sent, "a version-00 context was changed");
        }
    }
    if let Some(state) = incoming.state {
        assert!(state.len() <= c::MAX_TRACESTATE && state.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)));
    }
}

/// An `Origin` against `[cors]` listing an exact origin and a subdomain
/// wildcard: what is allowed is that origin, or `https://` and a host
/// ending in `.mail.test` with a subdomain of DNS characters.
pub fn cors_origin(input: &[u8]) {
    use crate::policy::cors::{CorsPolicy, CorsSettings};
    let Ok(origin) = HeaderValue::from_bytes(input) else { return };
    let settings = CorsSettings { origins: vec!["https://app.example.com", "https://*.mail.test"], ..Default::default() };
    let policy = CorsPolicy::new(&settings).unwrap_or_else(|e| panic!("{e:?}"));
    if !policy.allows(&origin) {
        return;
    }
    let text = origin.to_str().unwrap_or_else(|_| panic!("non-text origin {} allowed", show(input)));
    let sub = text.strip_prefix("https://").and_then(|h| h.strip_suffix(".mail.test"));
    let dns = sub
        .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b)));
    assert!(text == "https://app.example.com" || dns, "{text:?} was allowed");
}

/// A WebSocket handshake head, then frames: a head keygate takes as a
/// handshake is one RFC 6455 allows (a GET over HTTP/1.1 with each field
/// once), its key is found in at most one place, and it is forwarded
/// with one `Upgrade: websocket`, no body, and no `keygate.token.` entry
/// left anywhere. The bytes after the head, read as frames, find the same
/// boundaries however they arrive.
pub fn websocket_handshake(input: &[u8]) {
    let mut buf = BytesMut::from(input);
    if let Ok(Some(head)) = parse_head(&mut buf, 16 * 1024, 100) {
        handshake_forwarded(head.request.into_parts().0);
    }
    let frames_in = |size: usize| {
        let mut f = crate::websocket::Frames::default();
        buf.chunks(size).for_each(|piece| f.pass(piece));
        f.at_boundary()
    };
    let whole = frames_in(buf.len().max(1));
    assert!(frames_in(1) == whole && frames_in(7) == whole, "frames read differently in pieces: {}", show(&buf));
}

/// A head taken as a handshake, forwarded: the checks of
/// [`websocket_handshake`].
fn handshake_forwarded(parts: http::request::Parts) {
    if crate::websocket::handshake_problem(&parts.method, parts.version, &parts.headers).is_some() {
        return;
    }
    assert_eq!(parts.method, http::Method::GET);
    // Found in one place or refused, never a panic.
    let _ = credentials::extract_from(&parts.headers, parts.uri.query(), true);
    let mut out = Outgoing::new(&parts.method, "/ws".into(), &parts.headers, true, Underscores::Drop);
    out.set_websocket();
    let mut wire = Vec::new();
    let written = write_request(&mut wire, &out, crate::body::empty()).now_or_never();
    assert!(matches!(written, Some(Ok(()))), "writing to memory finishes at once: {written:?}");
    let read =
        strict_read(&wire).unwrap_or_else(|e| panic!("a handshake forwarded as what RFC 9112 refuses ({e}): {}", show(&wire)));
    assert_eq!(read.used, wire.len(), "more than one message forwarded: {}", show(&wire));
    assert!(read.body.is_empty(), "a handshake forwarded with a body: {}", show(&wire));
    assert_eq!(read.names.iter().filter(|n| *n == "upgrade").count(), 1, "{}", show(&wire));
    let text = String::from_utf8_lossy(&wire).to_ascii_lowercase();
    assert!(text.contains("\r\nupgrade: websocket\r\n") && text.contains("\r\nconnection: upgrade\r\n"), "{}", show(&wire));
    for line in text.lines().filter_map(|l| l.strip_prefix("sec-websocket-protocol:")) {
        assert!(
            !line.split(',').any(|e| credentials::is_key_entry(e.trim().as_bytes())),
            "a key entry forwarded: {}",
            show(&wire)
        );
    }
}

fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<usize>), String> {
    let mut framing = Framing::CHUNKED;
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        match framing.next(&mut buf).map_err(|e| e.to_string())? {
            Step::Data(d) => body.extend_from_slice(&d),
            Step::End => return Ok((body, Some(fed - buf.len()))),
            Step::NeedMore if fed < input.len() => {
                let n = step.min(input.len() - fed);
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
            Step::NeedMore => return Ok((body, None)),
        }
    }
}

/// RFC 9112 section 7.1, as plainly as it reads: hex size, optional
/// extensions, CRLF, data, CRLF; a zero size, trailer lines, an empty line.
fn reference_chunked(input: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut at = 0;
    let mut body = Vec::new();
    let line = |at: usize| -> Result<(&[u8], usize), String> {
        let end = input[at..].windows(2).position(|w| w == b"\r\n").ok_or("no CRLF")?;
        Ok((&input[at..at + end], at + end + 2))
    };
    loop {
        let (size_line, next) = line(at)?;
        let digits: Vec<u8> = size_line.iter().copied().take_while(u8::is_ascii_hexdigit).collect();
        let size =
            usize::from_str_radix(std::str::from_utf8(&digits).map_err(|e| e.to_string())?, 16).map_err(|e| e.to_string())?;
        at = next;
        if size == 0 {
            loop {
                let (trailer, next) = line(at)?;
                at = next;
                if trailer.is_empty() {
                    return Ok((body, at));
                }
            }
        }
        let data = input.get(at..at + size).ok_or("short chunk")?;
        body.extend_from_slice(data);
        at += size;
        if input.get(at..at + 2) != Some(b"\r\n") {
            return Err("no CRLF after a chunk".into());
        }
        at += 2;
    }
}

/// A forwarded request as a strict parser reads it.
struct Read {
    used: usize,
    method: String,
    target: String,
    hosts: usize,
    names: Vec<String>,
    body: Vec<u8>,
}

fn strict_read(wire: &[u8]) -> Result<Read, String> {
    let head = strict_head(wire)?;
    if head.version != "HTTP/1.1" {
        return Err("not HTTP/1.1".into());
    }
    let named = |name: &'static str| head.fields.iter().filter(move |(n, _)| n == name);
    let lengths: Vec<_> = named("content-length").collect();
    let codings: Vec<_> = named("transfer-encoding").collect();
    let rest = &wire[head.len..];
    let (body, body_len) = match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => (Vec::new(), 0),
        ([(_, one)], []) => {
            let digits = one.iter().all(u8::is_ascii_digit) && !one.is_empty();
            let n: usize =
                std::str::from_utf8(one).ok().filter(|_| digits).and_then(|v| v.parse().ok()).ok_or("bad Content-Length")?;
            (rest.get(..n).ok_or("body shorter than its length")?.to_vec(), n)
        }
        ([], [(_, one)]) if one == b"chunked" => reference_chunked(rest)?,
        _ => return Err("ambiguous framing".into()),
    };
    Ok(Read {
        used: head.len + body_len,
        method: head.method,
        target: head.target,
        hosts: named("host").count(),
        names: head.fields.iter().map(|(n, _)| n.clone()).collect(),
        body,
    })
}

/// A request head as RFC 9112 (sections 3 and 5) reads it, written here
/// apart from httparse, the parser keygate's server uses, so that the two
/// cannot share a mistake.
struct StrictHead {
    method: String,
    target: String,
    version: String,
    /// Names in lower case, values without their surrounding white space.
    fields: Vec<(String, Vec<u8>)>,
    /// Bytes of the head, its empty line included.
    len: usize,
}

/// `tchar` of RFC 9110 section 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn strict_head(wire: &[u8]) -> Result<StrictHead, String> {
    // Lines end in CRLF; a recipient may take a lone LF for one, and a
    // server ignores empty lines before the request line (section 2.2).
    // The head ends at the first empty line after it.
    let mut at = 0;
    let mut head_lines = Vec::new();
    loop {
        let nl = wire[at..].iter().position(|b| *b == b'\n').ok_or("incomplete head")?;
        let line = &wire[at..at + nl];
        at += nl + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match (line.is_empty(), head_lines.is_empty()) {
            (true, true) => continue,
            (true, false) => break,
            (false, _) => head_lines.push(line),
        }
    }
    let (end, mut lines) = (at, head_lines.into_iter());
    let mut next_line = || lines.next();
    let request_line = next_line().ok_or("no request line")?;
    let mut parts = request_line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("a request line is method SP target SP version".into());
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err("the method is not a token".into());
    }
    if target.is_empty() || !target.iter().all(|b| b.is_ascii_graphic()) {
        return Err("the target has a byte outside VCHAR".into());
    }
    let digits = version.len() == 8 && version.starts_with(b"HTTP/") && version[5].is_ascii_digit() && version[6] == b'.';
    if !digits || !version[7].is_ascii_digit() {
        return Err("the version is not HTTP/d.d".into());
    }
    let mut fields = Vec::new();
    while let Some(line) = next_line() {
        if line.contains(&b'\r') {
            return Err("a bare CR".into());
        }
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return Err("obsolete line folding".into());
        }
        let colon = line.iter().position(|b| *b == b':').ok_or("a field line without a colon")?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
            return Err("a field name is not a token".into());
        }
        let value = value.trim_ascii();
        if value.iter().any(|b| (b.is_ascii_control() && *b != b'\t') || *b == 0x7f) {
            return Err("a control character in a field value".into());
        }
        fields.push((String::from_utf8_lossy(name).to_ascii_lowercase(), value.to_vec()));
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(StrictHead { method: text(method), target: text(target), version: text(version), fields, len: end })
}

fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strict_parser_reads_rfc_9112_and_nothing_looser() {
        let head = strict_head(b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-A:  v w \r\n\r\nbody").unwrap();
        assert_eq!((head.method.as_str(), head.target.as_str(), head.version.as_str()), ("GET", "/a?b", "HTTP/1.1"));
        assert_eq!(head.fields, [("host".to_string(), b"x".to_vec()), ("x-a".to_string(), b"v w".to_vec())]);
        assert_eq!(head.len, 42);
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/11\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
        ] {
            assert!(strict_head(bad).is_err(), "{}", show(bad));
        }
    }

    #[test]
    fn a_head_keygate_reads_with_bare_line_feeds_is_checked_alike() {
        request_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        request_head(b"GET / HTTP/1.1\nHost: a\n\n");
        assert_eq!(strict_head(b"GET / HTTP/1.1\nHost: a\n\nrest").unwrap().len, 24);
        request_head(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(strict_head(b"\r\nGET / HTTP/1.1\r\n\r\n").unwrap().len, 20);
    }
}
