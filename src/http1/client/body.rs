//! An upstream response body, read from its connection as the client
//! reads it (never buffered whole), de-chunked, and the connection given
//! back to its pool once the body ended cleanly.

use super::pool::Pool;
use super::{Coding, Connection, Head};
use crate::body::BoxError;
use crate::http1::framing::{bodiless, Framing, Step, READ_CHUNK};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio_util::io::poll_read_buf;

/// The framing of a response to a request (`head_only` for HEAD).
pub(super) fn framing_of(head: &Head, head_only: bool) -> Framing {
    if head_only || bodiless(head.status) {
        return Framing::Empty;
    }
    match (head.transfer_encoding, head.lines.content_length()) {
        (Some(Coding::Chunked), _) => Framing::CHUNKED,
        (Some(Coding::Other), _) | (None, None) => Framing::UntilClose,
        (None, Some(n)) => Framing::Length(n),
    }
}

/// The body of an upstream response.
pub struct UpstreamBody {
    conn: Option<Connection>,
    framing: Framing,
    /// Where the connection goes when the body ends, if it may be reused.
    home: Option<Arc<Pool>>,
    /// The longest the upstream may pause between two reads.
    pause: Duration,
}

impl UpstreamBody {
    /// Reads the rest of a response from `conn`.
    pub(super) fn new(mut conn: Connection, framing: Framing, home: Option<Arc<Pool>>, pause: Duration) -> UpstreamBody {
        // Whoever polls the body (the client's connection) may not be the
        // task that read the head.
        conn.timer.hand_over();
        let mut body = UpstreamBody { conn: Some(conn), framing, home, pause };
        if body.is_end_stream() {
            body.finish();
        }
        body
    }

    /// The body ended: the connection goes back if nothing is left over.
    fn finish(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.home.take()) {
            if conn.buffered.is_empty() {
                pool.put_back(conn);
            }
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let step = match this.conn.as_mut() {
                Some(conn) => this.framing.next(&mut conn.buffered).map_err(BoxError::from),
                None => Ok(Step::End),
            };
            match step {
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::Data(data)) => {
                    if this.is_end_stream() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::NeedMore) => {}
            }
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            conn.buffered.reserve(READ_CHUNK);
            let (stream, buffered) = (&mut conn.stream, &mut conn.buffered);
            let Ok(read) = ready!(conn.timer.poll_bound(cx, this.pause, |cx| poll_read_buf(Pin::new(stream), cx, buffered)))
            else {
                this.conn = None;
                return Poll::Ready(Some(Err(format!("the upstream sent nothing for {:?}", this.pause).into())));
            };
            match read {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.framing = Framing::Empty;
                    this.home = None;
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err("the upstream closed the connection in the middle of the body".into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.framing.size_hint()
    }
}
