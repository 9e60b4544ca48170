//! keygate's HTTP/1.1 server connection: read a head, run the handler,
//! write the response, again, on the connection's own task.
//!
//! A gateway's connection needs less than a general server's: one request
//! at a time, the body handed to the handler on demand, one lazily moved
//! deadline (`Deadline`) for every wait on the client, and keep-alive
//! idleness and a slow head with limits of their own
//! (`server.idle_timeout`, `server.header_read_timeout`). Why it is not
//! hyper's: docs/decisions/003-own-http1-server.md. HTTP/2 stays with
//! hyper (`crate::server::h2`).

mod body;
mod head;
mod write;

#[cfg(test)]
mod tests;

#[cfg(feature = "fuzzing")]
pub use head::parse as parse_head;
pub use head::HeadError;

use super::deadline::{Deadline, Expired};
use super::framing::{Framing, Step};
use super::{BodyOutcome, Reply};
use crate::body::Body;
use bytes::BytesMut;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::io::poll_read_buf;
use write::{Answering, Sink};

/// Room asked of the read buffer before each read of a head.
const HEAD_READ: usize = 8 * 1024;
/// Room kept for gathering responses between requests.
const KEEP_OUT: usize = 16 * 1024;
/// An unread request body up to this size is read and dropped after the
/// response, so the connection can carry the next request.
const MAX_DRAIN: u64 = 64 * 1024;
/// How long a connection closed with its request body unread goes on
/// reading (and dropping) what the client still sends: see [`Conn::linger`].
const LINGER: Duration = Duration::from_secs(5);
/// How long an ending connection may take to say so (see [`Conn::close`]).
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Bounds applied to every connection of a listener, and how a head that
/// cannot be served is answered.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// How long open connections get to finish once shutdown is asked (the
    /// listener's to enforce: it drops what is left).
    pub drain_timeout: Duration,
    /// The answer to a refused head (400, 431), in the caller's own shape.
    pub refusal: fn(StatusCode, String) -> Response<Body>,
    /// How the caller's own field names are spelled on the wire where
    /// capitalising each word would not do (`X-RateLimit-Limit`).
    pub spellings: &'static [&'static str],
}

/// How a connection's request loop ended.
pub enum Ended<I> {
    /// Closed, timed out, failed or shut down.
    Closed,
    /// The client opened with the HTTP/2 preface: its socket and the
    /// bytes read so far, for the HTTP/2 server.
    Http2(I, BytesMut),
    /// The handler answered 101 and its head is written: the socket, the
    /// bytes read past the request, and the answer's extensions (what the
    /// handler left for the new protocol).
    Switched(I, BytesMut, http::Extensions),
}

/// One client connection.
struct Conn<I> {
    io: I,
    /// Bytes read and not used yet (the next head, or body bytes).
    buf: BytesMut,
    /// Response bytes gathered for the next write.
    out: Vec<u8>,
    deadline: Deadline,
    limits: Limits,
    /// Set once shutdown is asked; a pending wait for it otherwise.
    stop: Stop,
    /// A request was read: from now on a silent client is an idle one.
    served: bool,
}

/// Serves requests on `io` until the client or the server ends it.
/// `info` goes to the handler with each request, as it is.
pub async fn serve<I, H, F, R, C>(io: I, limits: Limits, handler: H, info: C, shutdown: watch::Receiver<bool>) -> Ended<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
    C: Clone,
    H: Fn(Request<Body>, C) -> F,
    F: Future<Output = R> + Send,
    R: Into<Reply>,
{
    let mut conn = Conn {
        io,
        buf: BytesMut::new(),
        out: Vec::new(),
        deadline: Deadline::new(),
        limits,
        stop: Stop::new(shutdown),
        served: false,
    };
    let mut first = true;
    loop {
        let head = match conn.read_head().await {
            Ok(Some(head)) => head,
            Ok(None) => return conn.close().await,
            Err(HeadError::Http2Preface) if first => return Ended::Http2(conn.io, conn.buf),
            Err(e) => {
                // The client may still be sending (the rest of a bad head, a
                // body): a close with unread bytes would reset the 400 away.
                conn.refuse(&e).await;
                return conn.linger().await;
            }
        };
        first = false;
        conn.served = true;
        let how = Answering {
            version: head.request.version(),
            head_only: head.request.method() == Method::HEAD,
            keep_alive: head.keep_alive,
        };
        let (request, mut feeder) = if head.framing.is_done() {
            (head.request.map(|()| crate::body::empty()), None)
        } else {
            let (body, feeder) = body::channel(head.framing, head.expect_continue);
            (head.request.map(|()| body.boxed()), Some(feeder))
        };
        // Pinned here and polled through a reference: moved into `run`, the
        // handler's future (kilobytes) would be copied twice per request.
        let handling = pin!(handler(request, info.clone()));
        // A client that gives up takes its request with it: dropping the
        // handler drops its upstream exchange and that connection.
        let Some(response) = conn.run(handling, feeder.as_mut()).await else { return conn.close().await };
        // The connection carries another request only if this one's body
        // is read, or can be: not after a body found too large or stalled.
        if response.response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // Only a request read whole switches: what follows it is the
            // new protocol's.
            return match feeder.is_none_or(|f| f.is_done()) {
                true => conn.switch(response, how).await,
                false => conn.close().await,
            };
        }
        let unread = feeder.as_ref().filter(|f| !f.is_done());
        let body_refused = response.body == BodyOutcome::Refused;
        let reusable = unread.is_none_or(|f| !body_refused && !f.broken && !f.continue_unsent() && drainable(f.framing()));
        let how = Answering { keep_alive: how.keep_alive && reusable && !conn.stop.asked(), ..how };
        // With the request read whole, the socket is watched while a slow
        // answer streams: a client gone ends it at once.
        match conn.respond(response, how, unread.is_none()).await {
            Ok(true) => {}
            Ok(false) if unread.is_some() => return conn.linger().await,
            _ => return conn.close().await,
        }
        if conn.out.capacity() > KEEP_OUT {
            // A large response must not stay allocated on an idle connection.
            conn.out = Vec::new();
        }
        if let Some(f) = unread {
            if conn.drain(f.framing()).await.is_err() {
                return conn.close().await;
            }
        }
    }
}

/// Whether what is left of an unread body is small enough to drop.
fn drainable(framing: Framing) -> bool {
    matches!(framing, Framing::Length(n) if n <= MAX_DRAIN) || matches!(framing, Framing::Chunked(_))
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send> Conn<I> {
    /// Waits for a complete head: `idle_timeout` for the first byte of a
    /// kept-alive connection's next one, `header_read_timeout` for the rest
    /// and for a new connection's first (a client that connects and says
    /// nothing has not earned an idle connection's time). `Ok(None)`: the
    /// connection ends without a word (closed, idle, shut down).
    async fn read_head(&mut self) -> Result<Option<head::Head>, HeadError> {
        let slow_head = self.limits.header_read_timeout;
        let idle = if self.served { self.limits.idle_timeout } else { slow_head };
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = head::parse(&mut self.buf, self.limits.max_header_bytes, self.limits.max_headers)? {
                    self.deadline.clear();
                    return Ok(Some(head));
                }
            }
            let was_idle = self.buf.is_empty();
            let Conn { io, buf, deadline, stop, .. } = self;
            let waited = std::future::poll_fn(|cx| {
                buf.reserve(HEAD_READ);
                if let Poll::Ready(r) = poll_read_buf(Pin::new(&mut *io), cx, buf) {
                    return Poll::Ready(Ok(r));
                }
                if buf.is_empty() {
                    if stop.poll(cx) {
                        return Poll::Ready(Err(Expired));
                    }
                    deadline.start(idle);
                } else {
                    deadline.start(slow_head);
                }
                deadline.poll_expired(cx).map(Err)
            })
            .await;
            match waited {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) if was_idle => self.deadline.clear(), // a head starts: its own limit
                Ok(Ok(_)) => {}
                Err(Expired) if self.buf.is_empty() => return Ok(None),
                Err(Expired) => return Err(HeadError::Malformed(format!("the request head took longer than {slow_head:?}"))),
            }
        }
    }

    /// Runs the handler; meanwhile feeds it the request body as it asks,
    /// and, once the body is read, watches the socket: `None` when the
    /// client closed it (or it failed) before the answer was ready.
    async fn run<F: Future<Output = R>, R: Into<Reply>>(
        &mut self,
        mut handler: Pin<&mut F>,
        mut feeder: Option<&mut body::Feeder>,
    ) -> Option<Reply> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(resp) = handler.as_mut().poll(cx) {
                return Poll::Ready(Some(resp.into()));
            }
            match feeder.as_deref_mut() {
                Some(f) if !f.handed_over() => {
                    let _ = f.poll_feed(cx, &mut self.io, &mut self.buf);
                }
                _ if self.client_gone(cx) => return Poll::Ready(None),
                _ => {}
            }
            Poll::Pending
        })
        .await
    }

    /// Whether the client closed its connection, as nginx checks while an
    /// upstream works. What a pipelining client sends meanwhile is kept
    /// for the next request, up to a head's size; past that the socket is
    /// left unread until the answer is written.
    fn client_gone(&mut self, cx: &mut Context<'_>) -> bool {
        gone(&mut self.io, &mut self.buf, self.limits.max_header_bytes, cx)
    }

    /// Writes the response; `Ok(true)` if the connection stays open.
    /// `watch`: the request was read whole, so the socket may be read
    /// while the answer waits on its body, to see the client go.
    async fn respond(&mut self, reply: Reply, how: Answering, watch: bool) -> std::io::Result<bool> {
        let watched = watch.then_some(&mut self.buf);
        let mut sink = ClientSink { io: &mut self.io, deadline: &mut self.deadline, limits: &self.limits, watched };
        write::response(&mut sink, &mut self.out, reply, how).await
    }

    /// Ends the connection with its sending side shut: a FIN, and over TLS
    /// a `close_notify` first, without which a client cannot tell the
    /// answer's end from a cut (and OpenSSL will not resume the session).
    async fn close(mut self) -> Ended<I> {
        let Conn { io, deadline, .. } = &mut self;
        let _ = deadline.within(tokio::time::Instant::now() + CLOSE_WAIT, io.shutdown()).await;
        Ended::Closed
    }

    /// Writes a 101 and hands the connection over.
    async fn switch(mut self, mut reply: Reply, how: Answering) -> Ended<I> {
        let extensions = std::mem::take(reply.response.extensions_mut());
        match self.respond(reply, how, false).await {
            Ok(_) => Ended::Switched(self.io, self.buf, extensions),
            Err(_) => Ended::Closed,
        }
    }

    /// Answers a refused head (400 or 431, in the contract's JSON shape);
    /// the connection closes after it.
    async fn refuse(&mut self, error: &HeadError) {
        let status = match error {
            HeadError::TooLarge(..) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        let resp = (self.limits.refusal)(status, error.to_string());
        tracing::debug!(error = %error, "request head refused");
        let how = Answering { version: http::Version::HTTP_11, head_only: false, keep_alive: false };
        let _ = self.respond(resp.into(), how, false).await;
    }

    /// Closes a connection whose request body was answered before it was
    /// read (a 413, an upstream's early answer): the sending side first,
    /// then what the client still sends is read and dropped, for at most
    /// [`LINGER`]. Closing with unread bytes would make the kernel reset the
    /// connection, and a client still sending its body could lose the
    /// answer with it.
    async fn linger(mut self) -> Ended<I> {
        let Conn { io, buf, deadline, .. } = &mut self;
        let drained = async {
            if io.shutdown().await.is_err() {
                return;
            }
            loop {
                buf.clear();
                buf.reserve(HEAD_READ);
                match io.read_buf(buf).await {
                    Ok(n) if n > 0 => {}
                    _ => return,
                }
            }
        };
        let _ = deadline.within(tokio::time::Instant::now() + LINGER, drained).await;
        // Its sending side is shut already, as `close` would.
        Ended::Closed
    }

    /// Reads and drops the rest of a body nobody read (at most
    /// [`MAX_DRAIN`] bytes, within `header_read_timeout`).
    async fn drain(&mut self, mut framing: Framing) -> Result<(), ()> {
        let mut budget = MAX_DRAIN;
        loop {
            match framing.next(&mut self.buf).map_err(|_| ())? {
                Step::End => return Ok(()),
                Step::Data(d) => budget = budget.checked_sub(d.len() as u64).ok_or(())?,
                Step::NeedMore => {
                    let Conn { io, buf, deadline, limits, .. } = self;
                    buf.reserve(HEAD_READ);
                    match deadline.bound(limits.header_read_timeout, |cx| poll_read_buf(Pin::new(&mut *io), cx, buf)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return Err(()),
                    }
                }
            }
        }
    }
}

/// Whether the client closed its connection (see `Conn::client_gone`):
/// what it sends meanwhile is kept in `buf`, up to `max` bytes.
fn gone<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut, max: usize, cx: &mut Context<'_>) -> bool {
    // Read into the stack, not into `buf`: reserving room there while
    // the request's head still shares its allocation would copy it.
    let mut probe = [0u8; 512];
    while buf.len() < max {
        let mut read = tokio::io::ReadBuf::new(&mut probe);
        match Pin::new(&mut *io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => return true,
            Poll::Ready(Ok(())) => buf.extend_from_slice(read.filled()),
            Poll::Ready(Err(_)) => return true,
            Poll::Pending => return false,
        }
    }
    false
}

/// The client socket as the response writer sees it: every write bounded
/// by `limit` of no progress.
struct ClientSink<'a, I> {
    io: &'a mut I,
    deadline: &'a mut Deadline,
    /// Its idle timeout bounds each write; its spellings name the fields.
    limits: &'a Limits,
    /// Where what the client sends while the answer streams is kept, when
    /// its socket is watched (the request was read whole).
    watched: Option<&'a mut BytesMut>,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send> Sink for ClientSink<'_, I> {
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> bool {
        match self.watched.as_deref_mut() {
            Some(buf) => gone(&mut *self.io, buf, self.limits.max_header_bytes, cx),
            None => false,
        }
    }

    async fn send(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        let io = &mut *self.io;
        let written = self
            .deadline
            .bound(self.limits.idle_timeout, |cx| {
                while !data.is_empty() {
                    match Pin::new(&mut *io).poll_write(cx, data) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                        Poll::Ready(Ok(n)) => data = &data[n..],
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Pin::new(&mut *io).poll_flush(cx)
            })
            .await;
        written.map_err(|Expired| std::io::Error::new(std::io::ErrorKind::TimedOut, "the client did not read its response"))?
    }

    fn spellings(&self) -> &'static [&'static str] {
        self.limits.spellings
    }
}

/// Whether shutdown was asked. The wait for it is polled once, which
/// leaves the connection's waker with the channel; later checks only look
/// at the channel's version.
struct Stop {
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    changes: watch::Receiver<bool>,
    registered: bool,
}

impl Stop {
    fn new(mut shutdown: watch::Receiver<bool>) -> Stop {
        let changes = shutdown.clone();
        if *shutdown.borrow() {
            return Stop { wait: None, changes, registered: true };
        }
        // A closed channel (the server is going away) counts as asked.
        let wait = async move { while shutdown.changed().await.is_ok() && !*shutdown.borrow() {} };
        Stop { wait: Some(Box::pin(wait)), changes, registered: false }
    }

    /// Polls the wait (when something changed); true once shutdown was asked.
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(wait) = &mut self.wait else { return true };
        if self.registered && !self.changes.has_changed().unwrap_or(true) {
            return false;
        }
        self.registered = true;
        if wait.as_mut().poll(cx).is_ready() {
            self.wait = None;
        }
        self.wait.is_none()
    }

    /// Whether shutdown was asked, without waiting.
    fn asked(&self) -> bool {
        self.wait.is_none() || self.changes.has_changed().unwrap_or(true)
    }
}
