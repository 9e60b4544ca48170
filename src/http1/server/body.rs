//! A request body on an HTTP/1.1 connection: the handler holds the body,
//! the connection keeps the socket, and bytes move from one to the other
//! only when the body asks for them (so an upload is never read ahead of
//! the upstream taking it, and a request whose body nobody reads leaves it
//! in the socket).

use crate::body::BoxError;
use crate::http1::framing::{Framing, Step, READ_CHUNK};
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the body and the connection share.
#[derive(Default)]
struct Slot {
    /// A piece read for the body and not taken yet.
    ready: Option<Result<Bytes, BoxError>>,
    /// The body waits for a piece.
    wanted: bool,
    /// Every piece has been handed over.
    ended: bool,
    /// The handler dropped the body.
    dropped: bool,
    body_waker: Option<Waker>,
    conn_waker: Option<Waker>,
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // A panic while holding this lock leaves plain data behind: use it.
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The handler's side: a streamed request body.
pub struct RequestBody {
    slot: Arc<Mutex<Slot>>,
    hint: SizeHint,
}

/// The connection's side: reads the body from the socket on demand.
pub struct Feeder {
    slot: Arc<Mutex<Slot>>,
    framing: Framing,
    /// Bytes of `100 Continue` still to write, once the body is first read.
    continue_left: usize,
    /// The socket or the framing failed: the connection cannot go on.
    pub broken: bool,
}

/// A body framed by `framing`; `expect_continue` when the client waits
/// for `100 Continue` before sending it.
pub fn channel(framing: Framing, expect_continue: bool) -> (RequestBody, Feeder) {
    let slot = Arc::new(Mutex::new(Slot::default()));
    let body = RequestBody { slot: Arc::clone(&slot), hint: framing.size_hint() };
    let continue_left = if expect_continue { CONTINUE.len() } else { 0 };
    (body, Feeder { slot, framing, continue_left, broken: false })
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut slot = lock(&self.slot);
        if let Some(piece) = slot.ready.take() {
            return Poll::Ready(Some(piece.map(Frame::data)));
        }
        if slot.ended {
            return Poll::Ready(None);
        }
        slot.wanted = true;
        if !slot.body_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            slot.body_waker = Some(cx.waker().clone());
        }
        if let Some(w) = slot.conn_waker.take() {
            w.wake();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let slot = lock(&self.slot);
        slot.ended && slot.ready.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let mut slot = lock(&self.slot);
        slot.dropped = true;
        if let Some(w) = slot.conn_waker.take() {
            w.wake();
        }
    }
}

impl Feeder {
    /// Whether the whole body has been read from the socket.
    pub fn is_done(&self) -> bool {
        self.framing.is_done()
    }

    /// Whether the body has its end (or its error): nothing is left to
    /// hand over.
    pub fn handed_over(&self) -> bool {
        lock(&self.slot).ended
    }

    /// Whether the client still waits for `100 Continue` (it may never
    /// send the body, so the connection cannot be reused).
    pub fn continue_unsent(&self) -> bool {
        self.continue_left == CONTINUE.len() && self.continue_left > 0
    }

    /// The framing left to read (to drain it after the response).
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Moves body bytes from `io` (and what `buf` holds already) to the
    /// body while it asks for them. Never ready: the handler's answer ends
    /// the wait.
    pub fn poll_feed<I: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
        buf: &mut BytesMut,
    ) -> Poll<()> {
        loop {
            if self.broken {
                return Poll::Pending;
            }
            {
                let mut slot = lock(&self.slot);
                if slot.dropped || slot.ended {
                    return Poll::Pending;
                }
                if !slot.wanted || slot.ready.is_some() {
                    slot.conn_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            if self.continue_left > 0 {
                let from = CONTINUE.len() - self.continue_left;
                match ready!(Pin::new(&mut *io).poll_write(cx, &CONTINUE[from..])) {
                    Ok(n) if n > 0 => self.continue_left -= n,
                    _ => self.fail("the client went away before sending the body".into()),
                }
                continue;
            }
            match self.framing.next(buf) {
                Ok(Step::Data(data)) => self.hand_over(Some(Ok(data))),
                Ok(Step::End) => self.hand_over(None),
                Err(e) => self.fail(e.into()),
                Ok(Step::NeedMore) => {
                    buf.reserve(READ_CHUNK);
                    match ready!(poll_read_buf(Pin::new(&mut *io), cx, buf)) {
                        Ok(0) => self.fail("the client closed the connection in the middle of the body".into()),
                        Ok(_) => {}
                        Err(e) => self.fail(e.into()),
                    }
                }
            }
        }
    }

    /// Gives the body a piece (or its end) and wakes it.
    fn hand_over(&mut self, piece: Option<Result<Bytes, BoxError>>) {
        let mut slot = lock(&self.slot);
        match piece {
            Some(p) => slot.ready = Some(p),
            None => slot.ended = true,
        }
        slot.wanted = false;
        if let Some(w) = slot.body_waker.take() {
            w.wake();
        }
    }

    fn fail(&mut self, error: BoxError) {
        self.broken = true;
        self.hand_over(Some(Err(error)));
        lock(&self.slot).ended = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    fn poll_body(body: &mut RequestBody) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(body).poll_frame(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn the_body_is_read_from_the_socket_only_when_asked() {
        let (mut client, mut server) = duplex(1024);
        client.write_all(b"hello").await.unwrap();
        let (mut body, mut feeder) = channel(Framing::Length(5), false);
        assert_eq!(body.size_hint().exact(), Some(5));
        let mut buf = BytesMut::new();
        let cx = &mut Context::from_waker(Waker::noop());
        assert!(feeder.poll_feed(cx, &mut server, &mut buf).is_pending());
        assert!(buf.is_empty(), "nothing is read ahead of the body asking");
        assert!(poll_body(&mut body).is_pending());
        let _ = feeder.poll_feed(cx, &mut server, &mut buf);
        match poll_body(&mut body) {
            Poll::Ready(Some(Ok(frame))) => assert_eq!(frame.into_data().unwrap(), "hello"),
            other => panic!("{:?}", other.map(|f| f.map(|r| r.is_ok()))),
        }
        assert!(!feeder.handed_over());
        assert!(poll_body(&mut body).is_pending());
        let _ = feeder.poll_feed(cx, &mut server, &mut buf);
        assert!(feeder.handed_over() && feeder.is_done());
        assert!(matches!(poll_body(&mut body), Poll::Ready(None)));
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn continue_goes_out_once_the_body_is_first_asked_for() {
        let (mut client, mut server) = duplex(1024);
        let (mut body, mut feeder) = channel(Framing::CHUNKED, true);
        assert_eq!(body.size_hint().exact(), None);
        assert!(feeder.continue_unsent());
        let mut buf = BytesMut::new();
        let cx = &mut Context::from_waker(Waker::noop());
        assert!(poll_body(&mut body).is_pending());
        let _ = feeder.poll_feed(cx, &mut server, &mut buf);
        assert!(!feeder.continue_unsent());
        let mut got = [0u8; CONTINUE.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, CONTINUE);
    }

    #[tokio::test]
    async fn a_client_gone_mid_body_is_an_error_for_the_body_and_breaks_the_connection() {
        let (mut client, mut server) = duplex(1024);
        client.write_all(b"hel").await.unwrap();
        drop(client);
        let (mut body, mut feeder) = channel(Framing::Length(5), false);
        let mut buf = BytesMut::new();
        let cx = &mut Context::from_waker(Waker::noop());
        assert!(poll_body(&mut body).is_pending());
        let _ = feeder.poll_feed(cx, &mut server, &mut buf);
        assert!(matches!(poll_body(&mut body), Poll::Ready(Some(Ok(_)))), "what came is passed on");
        assert!(poll_body(&mut body).is_pending());
        let _ = feeder.poll_feed(cx, &mut server, &mut buf);
        assert!(matches!(poll_body(&mut body), Poll::Ready(Some(Err(_)))));
        assert!(feeder.broken && feeder.handed_over());
    }
}
