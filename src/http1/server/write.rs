//! Writing a response: the head, then the body as it comes, framed by
//! `Content-Length` when its size is known and chunked otherwise. Small
//! pieces are gathered so a typical response leaves in one write.

use crate::http1::framing::{bodiless, chunk_line, declared_length};
use crate::http1::lines::HeaderLines;
use crate::http1::{is_hop_by_hop, spelled, write_line, Fields, Reply};
use http::header;
use http::response::Parts;
use http::Version;
use http_body::Body as HttpBody;
use std::cell::RefCell;
use std::pin::Pin;
use std::task::Poll;

/// Gathered bytes are written once they reach this size.
const GATHER: usize = 64 * 1024;
/// A data piece at least this large is written from its own buffer.
const LARGE_PIECE: usize = 16 * 1024;

/// How the body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// No body bytes at all (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client with an unknown length: the close ends it.
    UntilClose,
}

/// What the request says about how to answer it.
#[derive(Debug, Clone, Copy)]
pub struct Answering {
    pub version: Version,
    pub head_only: bool,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
}

/// Where the response's bytes go, and the deadline each write gets.
pub trait Sink {
    /// Writes all of `data` (and flushes it).
    fn send(&mut self, data: &[u8]) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    /// Whether the reader went away (its connection closed) while the
    /// answer waits on its body; registers for a wake-up when it does.
    fn poll_gone(&mut self, _cx: &mut std::task::Context<'_>) -> bool {
        false
    }
    /// How the caller spells its own field names (see `spelled`).
    fn spellings(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Writes `resp` through `sink`, gathering into `out`. Returns whether the
/// connection may carry another request.
pub async fn response<S: Sink>(sink: &mut S, out: &mut Vec<u8>, reply: Reply, how: Answering) -> std::io::Result<bool> {
    let (parts, mut body) = reply.response.into_parts();
    out.clear();
    let extra = Extra { upstream: &reply.upstream, fields: &reply.extra, spellings: sink.spellings() };
    let (wire, keep_alive) = encode_head(out, &parts, extra, body.size_hint().exact(), how);
    if wire == Wire::None {
        sink.send(out).await?;
        return Ok(keep_alive);
    }
    let mut left = match wire {
        Wire::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        // Take what the body has ready; write the gathered bytes only when
        // it has nothing more for now.
        let next = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            // Nothing to write and nothing ready: a client gone now ends
            // the answer (and what it holds) before the next write would.
            Poll::Pending if sink.poll_gone(cx) => Poll::Ready(Some(Some(Err("the client closed the connection".into())))),
            Poll::Pending => Poll::Pending,
        })
        .await;
        let frame = match next {
            Some(None) => break,
            Some(Some(Ok(frame))) => Ok(frame),
            Some(Some(Err(e))) => Err(std::io::Error::other(e.to_string())),
            None => {
                sink.send(out).await?;
                out.clear();
                continue;
            }
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                // Cut the response short: the client must see it incomplete.
                let _ = sink.send(out).await;
                return Err(error);
            }
        };
        let Ok(data) = frame.into_data() else { continue }; // trailers are not forwarded
        if data.is_empty() {
            continue;
        }
        if data.len() as u64 > left {
            let _ = sink.send(out).await;
            return Err(std::io::Error::other("the response body is longer than its Content-Length"));
        }
        left -= data.len() as u64;
        if wire == Wire::Chunked {
            let mut size = [0u8; 18];
            out.extend_from_slice(chunk_line(data.len(), &mut size));
        }
        if data.len() >= LARGE_PIECE {
            sink.send(out).await?;
            out.clear();
            sink.send(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if wire == Wire::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= GATHER {
            sink.send(out).await?;
            out.clear();
        }
    }
    if wire == Wire::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        sink.send(out).await?;
    }
    if matches!(wire, Wire::Length(_)) && left != 0 {
        // Shorter than announced: the client must not wait for the rest.
        return Ok(false);
    }
    Ok(keep_alive && wire != Wire::UntilClose)
}

/// Header fields that come with a response besides its own map.
struct Extra<'a> {
    upstream: &'a HeaderLines,
    fields: &'a Fields,
    spellings: &'static [&'static str],
}

/// The status line and header fields; returns the body's wire framing and
/// whether the connection stays open.
fn encode_head(out: &mut Vec<u8>, parts: &Parts, extra: Extra<'_>, exact: Option<u64>, how: Answering) -> (Wire, bool) {
    let status = parts.status;
    let mut keep_alive = how.keep_alive;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // An invalid or conflicting length of our own handlers is dropped.
    let declared = extra.upstream.content_length().or_else(|| declared_length(&parts.headers).ok().flatten());
    for (name, value) in &parts.headers {
        if is_hop_by_hop(name) || name == header::CONTENT_LENGTH {
            continue;
        }
        let mut buf = [0u8; 64];
        write_line(out, spelled(name.as_str(), extra.spellings, &mut buf), value.as_bytes());
    }
    out.extend_from_slice(extra.upstream.text());
    extra.fields.write_lines(out);
    if !extra.upstream.has_date() && !parts.headers.contains_key(header::DATE) {
        DATE.with(|d| write_line(out, b"Date", d.borrow_mut().now()));
    }
    let no_body = bodiless(status) || how.head_only;
    // A declared length is passed on as it is (a HEAD answer keeps it); the
    // body's own size is announced only when the body is sent.
    if let Some(n) = declared.or(exact.filter(|_| !no_body)) {
        write_line(out, b"Content-Length", itoa::Buffer::new().format(n).as_bytes());
    }
    let wire = if no_body {
        Wire::None
    } else if let Some(n) = declared.or(exact) {
        Wire::Length(n)
    } else if how.version == Version::HTTP_11 {
        write_line(out, b"Transfer-Encoding", b"chunked");
        Wire::Chunked
    } else {
        keep_alive = false;
        Wire::UntilClose
    };
    if status == http::StatusCode::SWITCHING_PROTOCOLS {
        // The connection is the new protocol's after this head.
        if let Some(protocol) = parts.headers.get(header::UPGRADE) {
            write_line(out, b"Connection", b"Upgrade");
            write_line(out, b"Upgrade", protocol.as_bytes());
            out.extend_from_slice(b"\r\n");
            return (Wire::None, false);
        }
    }
    if !keep_alive {
        write_line(out, b"Connection", b"close");
    } else if how.version == Version::HTTP_10 {
        write_line(out, b"Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    (wire, keep_alive)
}

/// The `Date` value, formatted once per second per thread.
struct DateCache {
    second: u64,
    text: [u8; 29],
}

impl DateCache {
    fn now(&mut self) -> &[u8] {
        let now = std::time::SystemTime::now();
        let second = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
                self.second = second;
            }
        }
        &self.text
    }
}

thread_local! {
    static DATE: RefCell<DateCache> = const { RefCell::new(DateCache { second: 0, text: *b"Thu, 01 Jan 1970 00:00:00 GMT" }) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::Response;
    use http_body_util::BodyExt;

    struct Collect(Vec<u8>);
    impl Sink for Collect {
        async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
            self.0.extend_from_slice(data);
            Ok(())
        }
    }

    async fn wire(resp: Response<crate::body::Body>, how: Answering) -> (String, bool) {
        let mut sink = Collect(Vec::new());
        let keep = response(&mut sink, &mut Vec::new(), resp.into(), how).await.unwrap();
        (String::from_utf8(sink.0).unwrap(), keep)
    }

    const HTTP11: Answering = Answering { version: Version::HTTP_11, head_only: false, keep_alive: true };

    #[tokio::test]
    async fn known_sizes_get_a_length_and_unknown_ones_are_chunked() {
        let (text, keep) = wire(Response::new(crate::body::full("hello")), HTTP11).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 5\r\n") && text.contains("Date: ") && text.ends_with("\r\n\r\nhello"), "{text}");
        assert!(keep);
        let stream = futures_util::stream::iter(["ab", "cdefghijklmnopqr"].map(|s| Ok(http_body::Frame::data(Bytes::from(s)))));
        let body = http_body_util::StreamBody::new(stream).boxed();
        let (text, keep) = wire(Response::new(body), HTTP11).await;
        assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n2\r\nab\r\n10\r\ncdefghijklmnopqr\r\n0\r\n\r\n"), "{text}");
        assert!(keep);
    }

    #[tokio::test]
    async fn head_answers_keep_the_length_and_send_no_body() {
        let mut resp = Response::new(crate::body::empty());
        resp.headers_mut().insert(header::CONTENT_LENGTH, http::HeaderValue::from_static("31"));
        let (text, keep) = wire(resp, Answering { head_only: true, ..HTTP11 }).await;
        assert!(text.contains("Content-Length: 31\r\n") && text.ends_with("\r\n\r\n"), "{text}");
        assert!(keep);
    }

    #[tokio::test]
    async fn http10_clients_get_close_delimited_bodies_and_hop_by_hop_never_passes() {
        let stream = futures_util::stream::iter([Ok(http_body::Frame::data(Bytes::from("abc")))]);
        let mut resp = Response::new(http_body_util::StreamBody::new(stream).boxed());
        resp.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("upgrade"));
        let (text, keep) = wire(resp, Answering { version: Version::HTTP_10, ..HTTP11 }).await;
        assert!(!keep);
        assert!(text.contains("Connection: close\r\n") && !text.contains("upgrade") && text.ends_with("\r\n\r\nabc"), "{text}");
    }

    #[tokio::test]
    async fn upstream_lines_pass_as_they_came_with_one_length_and_their_own_date() {
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Response::new(&mut fields);
        parsed
            .parse(b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 5\r\nDate: Mon, 30 Nov 2026 07:00:00 GMT\r\n\r\n")
            .unwrap();
        let (upstream, _) = HeaderLines::sort(parsed.headers).unwrap();
        let reply = |body| Reply { upstream: upstream.clone(), ..Reply::from(Response::new(body)) };
        let mut sink = Collect(Vec::new());
        let keep = response(&mut sink, &mut Vec::new(), reply(crate::body::full("hello")), HTTP11).await.unwrap();
        let text = String::from_utf8(sink.0).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nServer: up\r\nDate: Mon, 30 Nov 2026 07:00:00 GMT\r\nContent-Length: 5\r\n\r\nhello"
        );
        assert!(keep);
        // HEAD: the upstream's length is kept, no body follows.
        let mut sink = Collect(Vec::new());
        response(&mut sink, &mut Vec::new(), reply(crate::body::empty()), Answering { head_only: true, ..HTTP11 }).await.unwrap();
        let text = String::from_utf8(sink.0).unwrap();
        assert!(text.contains("Content-Length: 5\r\n") && text.ends_with("\r\n\r\n"), "{text}");
    }

    #[tokio::test]
    async fn bodiless_statuses_send_no_body_whatever_it_holds() {
        for status in [http::StatusCode::NO_CONTENT, http::StatusCode::NOT_MODIFIED] {
            let mut resp = Response::new(crate::body::full("ignored"));
            *resp.status_mut() = status;
            let (text, keep) = wire(resp, HTTP11).await;
            assert!(text.ends_with("\r\n\r\n") && !text.contains("ignored"), "{text}");
            assert!(keep);
        }
    }

    #[tokio::test]
    async fn a_conflicting_length_of_our_own_gives_way_to_the_body_s() {
        let mut resp = Response::new(crate::body::full("hello"));
        resp.headers_mut().append(header::CONTENT_LENGTH, http::HeaderValue::from_static("3"));
        resp.headers_mut().append(header::CONTENT_LENGTH, http::HeaderValue::from_static("4"));
        let (text, _) = wire(resp, HTTP11).await;
        assert_eq!(text.matches("Content-Length").count(), 1, "{text}");
        assert!(text.contains("Content-Length: 5\r\n") && text.ends_with("hello"), "{text}");
    }

    #[tokio::test]
    async fn extra_fields_come_last_and_a_closing_answer_says_so() {
        let mut reply = Reply::from(Response::new(crate::body::full("x")));
        reply.extra =
            Fields::new([7, 0, 0, 0, 0, 0, 0, 0], |n, field| field("x-ratelimit-remaining", n[0].to_string().as_bytes()));
        let mut sink = Collect(Vec::new());
        let keep = response(&mut sink, &mut Vec::new(), reply, Answering { keep_alive: false, ..HTTP11 }).await.unwrap();
        let text = String::from_utf8(sink.0).unwrap();
        assert!(!keep);
        let extra = text.find("x-ratelimit-remaining: 7\r\n").unwrap();
        assert!(extra < text.find("Content-Length").unwrap(), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
    }

    #[tokio::test]
    async fn an_http10_client_kept_alive_is_told_so() {
        let (text, keep) = wire(Response::new(crate::body::full("ok")), Answering { version: Version::HTTP_10, ..HTTP11 }).await;
        assert!(keep);
        assert!(text.contains("Connection: keep-alive\r\n") && text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    }

    #[tokio::test]
    async fn a_switch_names_its_protocol_and_nothing_follows_it() {
        let mut resp = Response::new(crate::body::full("ignored"));
        *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
        let (text, keep) = wire(resp, HTTP11).await;
        assert!(!keep, "no other request follows on the connection");
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{text}");
        assert!(text.ends_with("Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"), "{text}");
    }

    #[tokio::test]
    async fn a_body_that_fails_midway_ends_the_answer_with_an_error() {
        let frames: Vec<Result<http_body::Frame<Bytes>, crate::body::BoxError>> =
            vec![Ok(http_body::Frame::data(Bytes::from("part"))), Err("upstream went away".into())];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let mut sink = Collect(Vec::new());
        let result = response(&mut sink, &mut Vec::new(), Response::new(body).into(), HTTP11).await;
        assert!(result.is_err(), "a chunked answer cut short must not look complete");
        assert!(!String::from_utf8_lossy(&sink.0).ends_with("0\r\n\r\n"));
    }
}
