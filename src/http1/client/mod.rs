//! A small HTTP/1.1 client for upstream connections, run inside the
//! request's own task.
//!
//! A general client drives each connection from a task of its own and
//! passes requests, responses and body chunks through channels, three task
//! switches per request (docs/decisions/002-own-http1-client.md). A gateway
//! needs far less: send one request on an idle connection, read the
//! response head, stream the body, put the connection back. That is what
//! this module does, on the request task, with the framing rules of RFC
//! 9112 (section 6) and nothing else.

pub mod body;
pub mod pool;
pub mod stream;

use super::lines::FieldLines;
use super::lines::HeaderLines;
use super::{frames_or_hops, write_line};
use crate::body::Body;
use crate::http1::deadline::Deadline;
use crate::http1::framing::{body_has_no_meaning, chunk_line, Framing, READ_CHUNK};
use body::{framing_of, UpstreamBody};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use pool::Pool;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;
use stream::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

/// A request head to forward, as the caller decided it: which fields go
/// on is the caller's business; the framing is this module's (see
/// [`write_request`]).
pub trait RequestHead: Sync {
    fn method(&self) -> &Method;
    /// Origin-form `/path?query`.
    fn target(&self) -> &str;
    /// The upstream's `Host`, written first.
    fn host(&self) -> Option<&HeaderValue>;
    /// Calls `field` with each other field's name and value, in order.
    fn each_field(&self, field: &mut dyn FnMut(&[u8], &[u8]));
    /// Fields rendered once for many requests, written after the others.
    fn rendered(&self) -> &FieldLines;
    /// The protocol to switch to (`websocket`), when the request asks to
    /// upgrade: `Connection: upgrade` and `Upgrade` are written for it.
    fn upgrade(&self) -> Option<&'static str> {
        None
    }
}

/// An upstream's answer: the status and body, and the header fields as
/// the lines they arrived in (see [`HeaderLines`]).
pub struct Upstreamed {
    pub response: Response<Body>,
    pub lines: HeaderLines,
}

/// Largest response head accepted from an upstream.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most header lines accepted in a response head.
pub const MAX_RESPONSE_HEADERS: usize = 128;

/// One keep-alive connection, the bytes read from it but not used yet,
/// and the timer bounding its waits (kept with the connection, so most
/// requests never touch the timer wheel: see [`crate::http1::deadline`]).
pub struct Connection {
    pub(super) stream: Stream,
    pub(super) buffered: BytesMut,
    pub(super) timer: Deadline,
    /// Set while the connection is checked out of its pool.
    busy: Option<pool::Busy>,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("the upstream closed the connection before answering")]
    ClosedBeforeResponse,
    #[error("writing the request: {0}")]
    Write(io::Error),
    #[error("reading the response: {0}")]
    Read(io::Error),
    #[error("the request body failed: {0}")]
    RequestBody(crate::body::BoxError),
    #[error("the response head is malformed: {0}")]
    Malformed(String),
    #[error("the response head is larger than {MAX_RESPONSE_HEAD} bytes")]
    HeadTooLarge,
    #[error("no response head before the upstream's timeout")]
    TimedOut,
    #[error("the upstream switched protocols (101) when no upgrade was asked, or to another protocol")]
    UnaskedSwitch,
}

impl ExchangeError {
    /// Whether the upstream may never have seen the request: the kept-alive
    /// connection was closed under us before any answer came back.
    pub fn connection_was_stale(&self) -> bool {
        match self {
            ExchangeError::ClosedBeforeResponse => true,
            ExchangeError::Write(e) | ExchangeError::Read(e) => {
                matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted)
            }
            _ => false,
        }
    }
}

impl Connection {
    /// Wraps a connected stream.
    pub fn new(stream: Stream) -> Connection {
        Connection { stream, buffered: BytesMut::new(), timer: Deadline::new(), busy: None }
    }

    /// Whether an idle connection still looks usable: nothing may arrive on
    /// an idle connection but its end. Costs a system call only when the
    /// event loop has seen the socket become readable.
    pub fn is_reusable(&mut self) -> bool {
        if !self.buffered.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        poll_read_buf(Pin::new(&mut self.stream), &mut cx, &mut self.buffered).is_pending()
    }

    /// Sends a request (origin-form URI, `Host` set, hop-by-hop headers
    /// gone) and reads the response head, both before `timing.deadline`.
    /// The response body reads the rest from this connection (pausing at
    /// most `timing.pause` between reads, an event stream
    /// `timing.stream_pause`) and gives it back to `pool` if it ends
    /// cleanly and the upstream keeps it open.
    pub async fn exchange(
        mut self,
        out: &impl RequestHead,
        body: Body,
        pool: &Arc<Pool>,
        timing: &Timing,
    ) -> Result<Upstreamed, ExchangeError> {
        let deadline = timing.deadline;
        let Connection { stream, buffered, timer, .. } = &mut self;
        // The connection may have served another request's task last.
        timer.hand_over();
        let head_only = *out.method() == Method::HEAD;
        // A backend that ignores a GET's body would read it as the next
        // request: such a connection carries no other.
        let last = !body.is_end_stream() && body_has_no_meaning(out.method());
        let sent_and_answered = async {
            if !body.is_end_stream() {
                return send_while_reading(stream, buffered, out, body, head_only).await;
            }
            write_request(stream, out, body).await?;
            Ok((read_head(stream, buffered, head_only).await?, Sent::All))
        };
        let ((head, framing), sent) = timer.within(deadline, sent_and_answered).await.map_err(|_| ExchangeError::TimedOut)??;
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            return self.switched(head, out.upgrade());
        }
        let reusable = sent == Sent::All && head.keep_alive && framing != Framing::UntilClose && !last;
        let home = reusable.then(|| Arc::clone(pool));
        // An event stream is quiet between events by design.
        let pause = if head.lines.is_event_stream() { timing.stream_pause } else { timing.pause };
        let mut response = Response::new(UpstreamBody::new(self, framing, home, pause).boxed());
        *response.status_mut() = head.status;
        Ok(Upstreamed { response, lines: head.lines })
    }
}

impl Connection {
    /// The upstream's 101: the connection is the new protocol's now (never
    /// pooled again), handed over in the response's extensions as a
    /// [`SwitchedIo`]. A 101 to a request that asked for no upgrade, or to
    /// another protocol than it asked, is refused: the bytes after it are
    /// not HTTP, and read as the next answer they would be smuggled.
    fn switched(self, head: Head, asked: Option<&'static str>) -> Result<Upstreamed, ExchangeError> {
        let agreed =
            matches!((head.upgrade.as_deref(), asked), (Some(said), Some(asked)) if said.eq_ignore_ascii_case(asked.as_bytes()));
        if !agreed {
            return Err(ExchangeError::UnaskedSwitch);
        }
        let mut response = Response::new(crate::body::empty());
        *response.status_mut() = head.status;
        let io = SwitchedIo { stream: self.stream, read: self.buffered, _busy: self.busy };
        response.extensions_mut().insert(super::Handover::new(io));
        Ok(Upstreamed { response, lines: head.lines })
    }
}

/// A switched connection's socket and what was read past the 101. (Its
/// place under the upstream's `max_connections` goes with the socket.)
pub struct SwitchedIo {
    pub stream: Stream,
    pub read: BytesMut,
    _busy: Option<pool::Busy>,
}

/// How long an exchange may take: its head before `deadline`, then at most
/// `pause` between two reads of the body (`stream_pause` for an event
/// stream's).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub deadline: Instant,
    pub pause: Duration,
    pub stream_pause: Duration,
}

impl Timing {
    /// One bound for the head and every pause (keygate's own calls).
    pub fn within(pause: Duration) -> Timing {
        Timing { deadline: Instant::now() + pause, pause, stream_pause: pause }
    }
}

/// A response head, its body's framing, and how much of the request went out.
type Answered = ((Head, Framing), Sent);

/// How much of a request went out before its answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    All,
    /// The upstream answered (or stopped reading) before the body was all
    /// sent: the connection is not in a state to carry another request.
    Part,
}

/// Sends a request with a body while watching for the answer. An upstream
/// may answer before it has read the whole body (a 413, a 401 for an
/// upload) and stop reading it; waiting to finish the body first would turn
/// that answer into a timeout or a broken pipe. The answer is passed on as
/// soon as it comes.
///
/// Boxed and kept out of line: requests without a body, most of them, then
/// carry neither its state in their future nor its code in their path.
#[inline(never)]
fn send_while_reading<'a>(
    stream: &'a mut Stream,
    buffered: &'a mut BytesMut,
    out: &'a impl RequestHead,
    body: Body,
    head_only: bool,
) -> Pin<Box<dyn Future<Output = Result<Answered, ExchangeError>> + Send + 'a>> {
    Box::pin(async move {
        match stream {
            Stream::Plain(tcp) => {
                let (reader, writer) = tcp.split();
                send_and_read(reader, writer, buffered, out, body, head_only).await
            }
            Stream::Tls(tls) => {
                let (reader, writer) = tokio::io::split(tls.as_mut());
                send_and_read(reader, writer, buffered, out, body, head_only).await
            }
        }
    })
}

async fn send_and_read<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut reader: R,
    mut writer: W,
    buffered: &mut BytesMut,
    out: &impl RequestHead,
    body: Body,
    head_only: bool,
) -> Result<Answered, ExchangeError> {
    let mut sending = std::pin::pin!(write_request(&mut writer, out, body));
    let mut answered = std::pin::pin!(read_head(&mut reader, buffered, head_only));
    tokio::select! {
        biased;
        sent = &mut sending => match sent {
            Ok(()) => Ok((answered.await?, Sent::All)),
            // The upstream stopped reading: its answer may already be here.
            Err(ExchangeError::Write(e)) => match answered.await {
                Ok(head) => Ok((head, Sent::Part)),
                Err(_) => Err(ExchangeError::Write(e)),
            },
            Err(e) => Err(e),
        },
        head = &mut answered => Ok((head?, Sent::Part)),
    }
}

/// Reads until a final (non-1xx) response head is complete.
async fn read_head<R: AsyncRead + Unpin>(
    stream: &mut R,
    buffered: &mut BytesMut,
    head_only: bool,
) -> Result<(Head, Framing), ExchangeError> {
    loop {
        if !buffered.is_empty() {
            if let Some(head) = parse_head(buffered)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                    // 100 Continue and 103 Early Hints: the answer follows.
                    continue;
                }
                let framing = framing_of(&head, head_only);
                return Ok((head, framing));
            }
            if buffered.len() > MAX_RESPONSE_HEAD {
                return Err(ExchangeError::HeadTooLarge);
            }
        }
        buffered.reserve(READ_CHUNK);
        // Through `AsyncRead`, so a short read marks the socket drained
        // and the next wait costs no extra system call.
        match stream.read_buf(buffered).await {
            Ok(0) => return Err(ExchangeError::ClosedBeforeResponse),
            Ok(_) => {}
            Err(e) => return Err(ExchangeError::Read(e)),
        }
    }
}

/// A parsed response head.
pub(super) struct Head {
    pub status: StatusCode,
    pub lines: HeaderLines,
    /// Whether the upstream lets the connection be used again.
    pub keep_alive: bool,
    /// Whether the body is chunked (the last `Transfer-Encoding` coding),
    /// or, with another coding, runs until the upstream closes.
    pub transfer_encoding: Option<Coding>,
    /// The protocol a 101 switches to.
    pub upgrade: Option<Vec<u8>>,
}

/// The last `Transfer-Encoding` coding of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coding {
    Chunked,
    Other,
}

/// Parses a complete head at the start of `buf` and takes it out of `buf`.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, ExchangeError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let used = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ExchangeError::Malformed(e.to_string())),
    };
    let code = parsed.code.ok_or_else(|| ExchangeError::Malformed("no status code".into()))?;
    let status = StatusCode::from_u16(code).map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    let (lines, hop) = HeaderLines::sort(parsed.headers).map_err(|why| ExchangeError::Malformed(why.into()))?;
    // HTTP/1.1 keeps the connection by default, HTTP/1.0 closes it;
    // `close` wins over `keep-alive`.
    let keep_alive = !hop.close && (hop.keep_alive || parsed.version == Some(1));
    let transfer_encoding =
        hop.transfer_encoding.map(|coding| if coding.eq_ignore_ascii_case(b"chunked") { Coding::Chunked } else { Coding::Other });
    let upgrade = hop.upgrade.filter(|_| status == StatusCode::SWITCHING_PROTOCOLS).map(<[u8]>::to_vec);
    buf.advance(used);
    Ok(Some(Head { status, lines, keep_alive, transfer_encoding, upgrade }))
}

/// Writes the request line, headers and body. The message is framed
/// here, whatever the caller's fields say (a framing, `Host` or hop-by-hop
/// field among them is left out): a body of known length (the one the
/// server checked) goes out with that `Content-Length`, any other chunked,
/// and a bodiless POST, PUT or PATCH says `content-length: 0`. A bodiless
/// request goes out in one write.
pub async fn write_request<W: AsyncWrite + Unpin>(
    stream: &mut W,
    out: &impl RequestHead,
    mut body: Body,
) -> Result<(), ExchangeError> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(out.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(out.target().as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = out.host() {
        write_line(&mut head, b"host", host.as_bytes());
    }
    out.each_field(&mut |name, value| {
        if !frames_or_hops(name) {
            write_line(&mut head, name, value);
        }
    });
    head.extend_from_slice(out.rendered().text());
    if let Some(protocol) = out.upgrade() {
        write_line(&mut head, b"connection", b"upgrade");
        write_line(&mut head, b"upgrade", protocol.as_bytes());
    }
    let has_body = !body.is_end_stream();
    let length = if has_body { body.size_hint().exact() } else { None };
    let chunked = has_body && length.is_none();
    if let Some(n) = length {
        let mut digits = itoa::Buffer::new();
        write_line(&mut head, b"content-length", digits.format(n).as_bytes());
    } else if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if method_implies_body(out.method()) {
        head.extend_from_slice(b"content-length: 0\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if !has_body {
        stream.write_all(&head).await.map_err(ExchangeError::Write)?;
        // A no-op on TCP; TLS may hold the last record until flushed.
        return stream.flush().await.map_err(ExchangeError::Write);
    }
    stream.write_all(&head).await.map_err(ExchangeError::Write)?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ExchangeError::RequestBody)?;
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        if chunked {
            write_chunk(stream, data).await?;
        } else {
            stream.write_all(&data).await.map_err(ExchangeError::Write)?;
        }
        // Each piece goes out as it came (a no-op on TCP; TLS buffers).
        stream.flush().await.map_err(ExchangeError::Write)?;
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").await.map_err(ExchangeError::Write)?;
    }
    stream.flush().await.map_err(ExchangeError::Write)
}

async fn write_chunk<W: AsyncWrite + Unpin>(stream: &mut W, data: Bytes) -> Result<(), ExchangeError> {
    let mut line = [0u8; 18];
    stream.write_all(chunk_line(data.len(), &mut line)).await.map_err(ExchangeError::Write)?;
    stream.write_all(&data).await.map_err(ExchangeError::Write)?;
    stream.write_all(b"\r\n").await.map_err(ExchangeError::Write)
}

/// POST, PUT and PATCH carry a body by definition: an empty one is said
/// out loud, or some servers wait for one.
fn method_implies_body(method: &Method) -> bool {
    *method == Method::POST || *method == Method::PUT || *method == Method::PATCH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_taken_out_and_keep_alive_follows_the_version() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nAccept: */*\r\n\r\nbody");
        let head = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(head.lines.text(), b"Accept: */*\r\n");
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"body", "the head is taken out of the buffer");
        let mut old = BytesMut::from("HTTP/1.0 200 OK\r\n\r\n");
        assert!(!parse_head(&mut old).unwrap().unwrap().keep_alive, "HTTP/1.0 closes by default");
        let mut kept = BytesMut::from("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n");
        assert!(parse_head(&mut kept).unwrap().unwrap().keep_alive);
        let mut close = BytesMut::from("HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\n\r\n");
        assert!(!parse_head(&mut close).unwrap().unwrap().keep_alive, "close wins");
    }

    /// A head that passes its fields as given.
    struct Given {
        method: Method,
        target: &'static str,
        fields: Vec<(&'static str, &'static str)>,
    }

    impl RequestHead for Given {
        fn method(&self) -> &Method {
            &self.method
        }
        fn target(&self) -> &str {
            self.target
        }
        fn host(&self) -> Option<&HeaderValue> {
            static HOST: HeaderValue = HeaderValue::from_static("up.test");
            Some(&HOST)
        }
        fn each_field(&self, field: &mut dyn FnMut(&[u8], &[u8])) {
            for (n, v) in &self.fields {
                field(n.as_bytes(), v.as_bytes());
            }
        }
        fn rendered(&self) -> &FieldLines {
            static NONE: FieldLines = FieldLines::EMPTY;
            &NONE
        }
    }

    fn given(method: Method, fields: &[(&'static str, &'static str)]) -> Given {
        Given { method, target: "/t?q=1", fields: fields.to_vec() }
    }

    fn stream_of(pieces: &[&'static str]) -> Body {
        let frames: Vec<Result<http_body::Frame<Bytes>, crate::body::BoxError>> =
            pieces.iter().map(|p| Ok(http_body::Frame::data(Bytes::from_static(p.as_bytes())))).collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    async fn written(head: &Given, body: Body) -> String {
        let mut wire = Vec::new();
        write_request(&mut wire, head, body).await.unwrap();
        String::from_utf8(wire).unwrap()
    }

    #[tokio::test]
    async fn the_message_is_framed_here_whatever_the_fields_say() {
        let fields = [
            ("content-length", "999"),
            ("Transfer-Encoding", "chunked"),
            ("host", "evil"),
            ("connection", "close"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ];
        let text = written(&given(Method::POST, &fields), crate::body::full("hello")).await;
        assert_eq!(text, "POST /t?q=1 HTTP/1.1\r\nhost: up.test\r\naccept: */*\r\ncontent-length: 5\r\n\r\nhello");
        let text = written(&given(Method::POST, &fields), stream_of(&["ab", "", "cde"])).await;
        assert_eq!(
            text,
            "POST /t?q=1 HTTP/1.1\r\nhost: up.test\r\naccept: */*\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n",
            "an unknown length goes chunked, empty frames skipped"
        );
    }

    #[tokio::test]
    async fn bodiless_requests_say_zero_only_where_a_body_is_expected() {
        for (method, framing) in [
            (Method::POST, "content-length: 0\r\n"),
            (Method::PUT, "content-length: 0\r\n"),
            (Method::PATCH, "content-length: 0\r\n"),
            (Method::GET, ""),
            (Method::DELETE, ""),
            (Method::HEAD, ""),
        ] {
            let text = written(&given(method.clone(), &[]), crate::body::empty()).await;
            assert_eq!(text, format!("{method} /t?q=1 HTTP/1.1\r\nhost: up.test\r\n{framing}\r\n"), "{method}");
        }
    }

    #[test]
    fn informational_and_bodiless_statuses_frame_no_body() {
        let framing = |wire: &str, head_only| framing_of(&parse_head(&mut BytesMut::from(wire)).unwrap().unwrap(), head_only);
        assert_eq!(framing("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", false), Framing::Empty);
        assert_eq!(framing("HTTP/1.1 304 Not Modified\r\n\r\n", false), Framing::Empty);
        assert_eq!(framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true), Framing::Empty, "HEAD");
        assert_eq!(framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false), Framing::Length(5));
        assert_eq!(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false), Framing::CHUNKED);
        assert_eq!(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false), Framing::UntilClose);
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n", false), Framing::UntilClose);
        assert!(parse_head(&mut BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")).is_err());
        assert!(parse_head(&mut BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")).is_err());
        assert!(parse_head(&mut BytesMut::from("HTTP/1.1 200 OK\r\n")).unwrap().is_none(), "incomplete");
    }

    /// An upstream in this process that reads one request head and answers
    /// with `script`, then holds the connection open for `hold`; it returns
    /// what it read, once the gateway's side closes.
    async fn scripted(script: &'static [u8], hold: Duration) -> (Arc<Pool>, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin: http::uri::Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let pool = Pool::new(pool::Target::new(&origin, Duration::from_secs(1)));
        let read = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = s.write_all(script).await;
            let _ = tokio::time::timeout(hold, async {
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&chunk[..n]);
                }
            })
            .await;
            got
        });
        (pool, read)
    }

    async fn ask(pool: &Arc<Pool>, method: Method, body: Body, timeout: Duration) -> Result<(StatusCode, Bytes), ExchangeError> {
        let conn = pool.connect().await.unwrap();
        let head = Given { method, target: "/x", fields: Vec::new() };
        let up = conn.exchange(&head, body, pool, &Timing::within(timeout)).await?;
        let status = up.response.status();
        let body = up.response.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        Ok((status, body))
    }

    #[tokio::test]
    async fn a_complete_answer_gives_the_connection_back() {
        let (pool, _read) = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Duration::from_secs(5)).await;
        let (status, body) = ask(&pool, Method::GET, crate::body::empty(), Duration::from_secs(2)).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        assert!(pool.take_idle(std::time::Instant::now()).is_some(), "pooled after its body ended");
    }

    #[tokio::test]
    async fn informational_answers_are_skipped_and_close_is_heard() {
        let script = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\nConnection: close\r\n\r\n!";
        let (pool, _read) = scripted(script, Duration::from_secs(5)).await;
        let (status, body) = ask(&pool, Method::POST, crate::body::full("x"), Duration::from_secs(2)).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"!"[..]));
        assert!(pool.take_idle(std::time::Instant::now()).is_none(), "the upstream said close");
    }

    #[tokio::test]
    async fn a_body_on_get_leaves_the_connection_unpooled() {
        let (pool, read) = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Duration::from_secs(5)).await;
        let (status, _) = ask(&pool, Method::GET, crate::body::full("body"), Duration::from_secs(2)).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(pool.take_idle(std::time::Instant::now()).is_none());
        let got = String::from_utf8(read.await.unwrap()).unwrap();
        assert!(got.ends_with("content-length: 4\r\n\r\nbody"), "{got}");
    }

    #[tokio::test]
    async fn a_truncated_body_is_an_error_and_never_pooled() {
        let (pool, _read) = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", Duration::ZERO).await;
        let conn = pool.connect().await.unwrap();
        let head = given(Method::GET, &[]);
        let timeout = Duration::from_secs(2);
        let up = conn.exchange(&head, crate::body::empty(), &pool, &Timing::within(timeout)).await.unwrap();
        assert!(up.response.into_body().collect().await.is_err());
        assert!(pool.take_idle(std::time::Instant::now()).is_none());
    }

    #[tokio::test]
    async fn no_answer_in_time_is_a_timeout() {
        let (pool, _read) = scripted(b"", Duration::from_secs(5)).await;
        let err = ask(&pool, Method::GET, crate::body::empty(), Duration::from_millis(200)).await.err().unwrap();
        assert!(matches!(err, ExchangeError::TimedOut), "{err}");
    }

    #[tokio::test]
    async fn a_stalled_body_is_cut_after_the_pause() {
        let (pool, _read) = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst", Duration::from_secs(5)).await;
        let started = std::time::Instant::now();
        let conn = pool.connect().await.unwrap();
        let head = given(Method::GET, &[]);
        let pause = Duration::from_millis(200);
        let up = conn.exchange(&head, crate::body::empty(), &pool, &Timing::within(pause)).await.unwrap();
        assert!(up.response.into_body().collect().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn garbage_is_a_malformed_answer() {
        let (pool, _read) = scripted(b"this is not HTTP\r\n\r\n", Duration::from_secs(1)).await;
        let err = ask(&pool, Method::GET, crate::body::empty(), Duration::from_secs(2)).await.err().unwrap();
        assert!(matches!(err, ExchangeError::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn a_closed_connection_before_any_answer_counts_as_stale() {
        let (pool, _read) = scripted(b"", Duration::ZERO).await;
        let err = ask(&pool, Method::GET, crate::body::empty(), Duration::from_secs(2)).await.err().unwrap();
        assert!(err.connection_was_stale(), "{err}");
    }

    #[tokio::test]
    async fn an_answer_before_the_upload_is_read_is_passed_on_at_once() {
        // Answers as soon as the head is in, then reads nothing more.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin: http::uri::Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let pool = Pool::new(pool::Target::new(&origin, Duration::from_secs(1)));
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut chunk = [0u8; 1024];
            let _ = s.read(&mut chunk).await;
            let _ = s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n").await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        // An upload far larger than the socket buffers hold.
        let block: &'static str = Box::leak("u".repeat(1 << 16).into_boxed_str());
        let body = stream_of(&[block; 256]);
        let started = std::time::Instant::now();
        let (status, _) = ask(&pool, Method::POST, body, Duration::from_secs(3)).await.unwrap();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(started.elapsed() < Duration::from_secs(2), "waited {:?} for the upload", started.elapsed());
        assert!(pool.take_idle(std::time::Instant::now()).is_none(), "half-sent: never reused");
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_not_handed_out() {
        let (pool, read) = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Duration::ZERO).await;
        let (status, _) = ask(&pool, Method::GET, crate::body::empty(), Duration::from_secs(2)).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        // The upstream closes its end once it answered; the pool must notice.
        let _ = read.await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take_idle(std::time::Instant::now()).is_none(), "a closed connection would fail the next request");
    }

    #[tokio::test]
    async fn a_pooled_connection_with_unexpected_bytes_is_not_reused() {
        // An answer followed by bytes nobody asked for: the connection is out of step.
        let (pool, _read) =
            scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(5)).await;
        let (status, body) = ask(&pool, Method::GET, crate::body::empty(), Duration::from_secs(2)).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        assert!(pool.take_idle(std::time::Instant::now()).is_none());
    }

    #[test]
    fn a_head_of_many_fields_or_bytes_is_refused() {
        let many: String = (0..MAX_RESPONSE_HEADERS + 1).map(|i| format!("X-{i}: v\r\n")).collect();
        let mut buf = BytesMut::from(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_str());
        assert!(matches!(parse_head(&mut buf), Err(ExchangeError::Malformed(_))));
        assert!(parse_head(&mut BytesMut::from("HTTP/1.1 999 Odd\r\n\r\n")).is_ok(), "an unknown status passes as a number");
        assert!(parse_head(&mut BytesMut::from("HTTP/1.1 20 Short\r\n\r\n")).is_err());
    }
}
