//! Reading a request head: the request line and header fields (RFC 9112
//! sections 2 to 6), what frames the body, and whether the connection may
//! carry another request. Anything ambiguous about where the body ends is
//! refused, since two parsers disagreeing there is how requests are smuggled.

use crate::http1::framing::{body_has_no_meaning, Framing};
use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use std::ops::Range;

/// Header lines parsed on the stack; heads with more use the heap.
const INLINE_HEADERS: usize = 64;
/// The first line an HTTP/2 client with prior knowledge sends.
pub const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// A request head, ready for the handler.
pub struct Head {
    pub request: Request<()>,
    /// How the body that follows is delimited.
    pub framing: Framing,
    /// The client lets the connection carry another request.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

/// Why a head is refused (the connection ends after the answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the request head is malformed: {0}")]
    Malformed(String),
    #[error("the request head is larger than {0} bytes or has more than {1} header lines")]
    TooLarge(usize, usize),
    #[error("the client speaks HTTP/2 with prior knowledge")]
    Http2Preface,
}

/// Parses a complete head at the start of `buf` and takes it out of `buf`
/// (`Ok(None)`: not complete yet). Header values and the target are slices
/// of the head's own buffer, not copies.
pub fn parse(buf: &mut BytesMut, max_bytes: usize, max_headers: usize) -> Result<Option<Head>, HeadError> {
    // Where each field sits, kept on the stack for most heads: the field
    // lines borrow `buf`, which must be split before the values can share it.
    let mut inline_spans = [Span::default(); INLINE_HEADERS];
    let mut heap_spans = Vec::new();
    let scanned = {
        let mut inline = [httparse::EMPTY_HEADER; INLINE_HEADERS];
        let fit = max_headers.min(INLINE_HEADERS);
        match scan(buf, &mut inline[..fit], max_bytes, max_headers, &mut inline_spans[..fit]) {
            Err(HeadError::TooLarge(..)) if max_headers > INLINE_HEADERS => {
                let mut lines = vec![httparse::EMPTY_HEADER; max_headers];
                heap_spans = vec![Span::default(); max_headers];
                scan(buf, &mut lines, max_bytes, max_headers, &mut heap_spans)
            }
            other => other,
        }
    };
    let Some(Scanned { used, method, version, target, fields }) = scanned? else {
        return Ok(None);
    };
    let spans = if heap_spans.is_empty() { &inline_spans[..fields] } else { &heap_spans[..fields] };
    let malformed = |e: &dyn std::fmt::Display| HeadError::Malformed(e.to_string());
    let bytes = buf.split_to(used).freeze();
    let uri = Uri::from_maybe_shared(bytes.slice(target)).map_err(|e| malformed(&e))?;
    let mut headers = HeaderMap::with_capacity(fields);
    let (mut framing_fields, mut hosts, mut upgrade) = (false, 0, false);
    for &span in spans {
        let name = HeaderName::from_bytes(&bytes[span.name()]).map_err(|e| malformed(&e))?;
        hosts += usize::from(name == header::HOST);
        framing_fields |= name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
            || name == header::CONNECTION
            || name == header::EXPECT;
        upgrade |= name == header::UPGRADE;
        let value = HeaderValue::from_maybe_shared(bytes.slice(span.value())).map_err(|e| malformed(&e))?;
        headers.append(name, value);
    }
    // RFC 9112 section 3.2: exactly one Host in HTTP/1.1, at most one in 1.0.
    if hosts > 1 || (hosts == 0 && version == Version::HTTP_11) {
        return Err(HeadError::Malformed(format!("{hosts} Host header fields; HTTP/1.1 requires exactly one")));
    }
    // Most heads (a GET with a few headers) carry none of the fields that
    // frame the body or the connection: then there is nothing to look up.
    let (framing, keep_alive, expect_continue) = if framing_fields {
        let framing = body_framing(&headers, version)?;
        let expect_continue = version == Version::HTTP_11
            && !framing.is_done()
            && headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        // A body on a GET (say) is forwarded, and the connection closed
        // after the answer: see `framing::body_has_no_meaning`.
        let last = !framing.is_done() && body_has_no_meaning(&method);
        (framing, keep_alive(&headers, version) && !last, expect_continue)
    } else {
        (Framing::Empty, version == Version::HTTP_11, false)
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    if upgrade {
        request.extensions_mut().insert(crate::http1::UpgradeAsked);
    }
    Ok(Some(Head { request, framing, keep_alive, expect_continue }))
}

/// Where a field's name and value sit in the head, as (start, end)
/// offsets; [`scan`] refuses a head whose offsets a `u32` cannot hold.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    fn name(self) -> Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    fn value(self) -> Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

/// A complete head found in the buffer: its length, where its parts sit,
/// and how many fields it has (their spans written by [`scan`]).
struct Scanned {
    used: usize,
    method: Method,
    version: Version,
    target: Range<usize>,
    fields: usize,
}

fn scan<'b>(
    buf: &'b [u8],
    lines: &mut [httparse::Header<'b>],
    max_bytes: usize,
    max_headers: usize,
    spans: &mut [Span],
) -> Result<Option<Scanned>, HeadError> {
    let too_large = HeadError::TooLarge(max_bytes, max_headers);
    let mut parsed = httparse::Request::new(lines);
    let used = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return if buf.len() >= max_bytes { Err(too_large) } else { Ok(None) },
        Err(httparse::Error::TooManyHeaders) => return Err(too_large),
        Err(httparse::Error::Version) if buf.starts_with(H2_PREFACE_LINE) => return Err(HeadError::Http2Preface),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    // Spans keep offsets as u32: a head past that is too large whatever the config.
    if used > max_bytes || u32::try_from(used).is_err() {
        return Err(too_large);
    }
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes()).map_err(|e| HeadError::Malformed(e.to_string()))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| s.as_ptr() as usize - base..s.as_ptr() as usize - base + s.len();
    let target = at(parsed.path.unwrap_or("").as_bytes());
    // Within the head, so each offset fits a u32 (checked above).
    let at32 = |s: &[u8]| {
        let r = at(s);
        (r.start as u32, r.end as u32)
    };
    for (line, span) in parsed.headers.iter().zip(spans.iter_mut()) {
        *span = Span { name: at32(line.name.as_bytes()), value: at32(line.value) };
    }
    Ok(Some(Scanned { used, method, version, target, fields: parsed.headers.len() }))
}

/// Where the request body ends (RFC 9112 section 6.3). A request with both
/// `Transfer-Encoding` and `Content-Length`, a coding other than `chunked`,
/// or differing lengths is refused rather than guessed at.
fn body_framing(headers: &HeaderMap, version: Version) -> Result<Framing, HeadError> {
    let malformed = |why: &str| Err(HeadError::Malformed(why.into()));
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        if version == Version::HTTP_10 {
            return malformed("Transfer-Encoding in an HTTP/1.0 request");
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            return malformed("both Transfer-Encoding and Content-Length");
        }
        let only_chunked = codings.count() == 1
            && headers.get(header::TRANSFER_ENCODING).is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if !only_chunked {
            return malformed("the only transfer coding accepted is chunked");
        }
        return Ok(Framing::CHUNKED);
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.as_bytes().trim_ascii();
        if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
            return malformed("invalid Content-Length");
        }
        let n = std::str::from_utf8(text).ok().and_then(|t| t.parse::<u64>().ok());
        let Some(n) = n else { return malformed("invalid Content-Length") };
        if length.is_some_and(|l| l != n) {
            return malformed("conflicting Content-Length values");
        }
        length = Some(n);
    }
    Ok(match length {
        Some(n) if n > 0 => Framing::Length(n),
        _ => Framing::Empty,
    })
}

/// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 only when
/// told `keep-alive`.
fn keep_alive(headers: &HeaderMap, version: Version) -> bool {
    let mut keep = version == Version::HTTP_11;
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                return false;
            }
            keep |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(wire: &str) -> Result<Option<Head>, HeadError> {
        parse(&mut BytesMut::from(wire), 8192, 100)
    }

    /// [`head`] with a `Host` line after the request line, so each test
    /// is refused (or not) for what it is about.
    fn hosted(wire: &str) -> Result<Option<Head>, HeadError> {
        let (line, rest) = wire.split_once("\r\n").unwrap_or((wire, ""));
        head(&format!("{line}\r\nHost: a\r\n{rest}"))
    }

    #[test]
    fn a_request_head_becomes_a_request() {
        let mut buf = BytesMut::from("GET /api/lists?page=2 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\r\nNEXT");
        let h = parse(&mut buf, 8192, 100).unwrap().unwrap();
        assert_eq!(h.request.method(), Method::GET);
        assert_eq!(h.request.uri().path(), "/api/lists");
        assert_eq!(h.request.uri().query(), Some("page=2"));
        assert_eq!(h.request.headers()["authorization"], "Bearer t");
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive && !h.expect_continue);
        assert_eq!(&buf[..], b"NEXT", "the next request stays in the buffer");
        assert!(head("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none(), "incomplete");
        assert!(h.request.extensions().get::<crate::http1::UpgradeAsked>().is_none());
    }

    #[test]
    fn a_head_with_upgrade_is_marked_in_any_spelling() {
        for field in ["Upgrade: websocket", "upgrade: h2c", "UPGRADE: x"] {
            let h = hosted(&format!("GET / HTTP/1.1\r\n{field}\r\n\r\n")).unwrap().unwrap();
            assert!(h.request.extensions().get::<crate::http1::UpgradeAsked>().is_some(), "{field}");
        }
    }

    #[test]
    fn body_framing_is_never_guessed() {
        let framing = |wire: &str| hosted(wire).map(|h| h.map(|h| h.framing));
        assert_eq!(framing("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"), Ok(Some(Framing::Length(5))));
        assert_eq!(framing("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"), Ok(Some(Framing::CHUNKED)));
        for bad in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
        ] {
            assert!(matches!(framing(bad), Err(HeadError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let keep = |wire: &str| hosted(wire).unwrap().unwrap().keep_alive;
        assert!(keep("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        let h = hosted("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").unwrap().unwrap();
        assert!(h.expect_continue);
    }

    #[test]
    fn oversized_heads_and_http2_are_told_apart_from_garbage() {
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "x".repeat(9000));
        assert!(matches!(head(&big), Err(HeadError::TooLarge(..))));
        let partial_big = format!("GET / HTTP/1.1\r\nX-Big: {}", "x".repeat(9000));
        assert!(matches!(head(&partial_big), Err(HeadError::TooLarge(..))));
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(matches!(head(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Err(HeadError::TooLarge(..))));
        let within: String = (0..98).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(hosted(&format!("GET / HTTP/1.1\r\n{within}\r\n")).unwrap().unwrap().request.headers().len(), 99);
        assert_eq!(head("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").err(), Some(HeadError::Http2Preface));
        assert!(matches!(head("\x16\x03\x01\x02\x00garbage\r\n\r\n"), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn host_is_required_once_in_http_1_1() {
        let refused = |wire: &str| matches!(head(wire), Err(HeadError::Malformed(m)) if m.contains("Host"));
        assert!(refused("GET / HTTP/1.1\r\n\r\n"));
        assert!(refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"));
        assert!(refused("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), "the same twice is still twice");
        assert!(refused("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"));
        assert!(head("GET / HTTP/1.0\r\n\r\n").unwrap().is_some(), "HTTP/1.0 may omit it");
        assert!(head("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().is_some());
    }

    #[test]
    fn a_body_on_a_method_without_body_semantics_closes_the_connection() {
        let keep = |wire: &str| hosted(wire).unwrap().unwrap().keep_alive;
        assert!(!keep("GET / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"));
        assert!(!keep("OPTIONS / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(!keep("HEAD / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"));
        assert!(keep("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), "an empty body is no body");
        assert!(keep("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"));
    }

    #[test]
    fn the_absolute_form_is_read_for_its_path() {
        let h = head("GET http://other.example/api/lists?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.request.uri().path(), "/api/lists");
        assert_eq!(h.request.uri().query(), Some("x=1"));
    }

    #[test]
    fn a_zero_length_body_is_no_body() {
        let h = hosted("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
    }

    #[test]
    fn expect_counts_only_for_100_continue_over_http_1_1_with_a_body() {
        let expects = |wire: &str| hosted(wire).unwrap().unwrap().expect_continue;
        assert!(expects("PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n"));
        assert!(!expects("PUT / HTTP/1.1\r\nExpect: something-else\r\nContent-Length: 1\r\n\r\n"));
        assert!(!expects("PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"), "no body, nothing to wait for");
        assert!(!expects("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"), "HTTP/1.0 knows no 100");
    }

    #[test]
    fn heads_past_the_inline_lines_are_parsed_on_the_heap() {
        let lines: String = (0..80).map(|i| format!("X-{i}: v\r\n")).collect();
        let h = hosted(&format!("GET / HTTP/1.1\r\n{lines}\r\n")).unwrap().unwrap();
        assert_eq!(h.request.headers().len(), 81);
        assert_eq!(h.request.headers()["x-79"], "v");
    }

    #[test]
    fn extension_methods_are_tokens_and_nothing_else() {
        assert_eq!(hosted("PURGE / HTTP/1.1\r\n\r\n").unwrap().unwrap().request.method().as_str(), "PURGE");
        assert!(matches!(hosted("GE(T / HTTP/1.1\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(hosted("GET / HTTP/1.2\r\n\r\n"), Err(HeadError::Malformed(_))), "HTTP/1.2 is not a version we speak");
    }

    #[test]
    fn control_bytes_and_folding_are_refused() {
        for bad in [
            "GET / HTTP/1.1\r\nX-A: 1\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A : 1\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: a\u{0}b\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX\u{1}A: 1\r\n\r\n",
        ] {
            assert!(matches!(hosted(bad), Err(HeadError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_chunked_coding_may_carry_spaces_and_any_case() {
        let framing = hosted("POST / HTTP/1.1\r\nTransfer-Encoding:  cHuNkEd \r\n\r\n").unwrap().unwrap().framing;
        assert_eq!(framing, Framing::CHUNKED);
    }
}
