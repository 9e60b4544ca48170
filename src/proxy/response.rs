//! An upstream response body, read from its connection as the client
//! reads it (never buffered whole), de-chunked, and the connection given
//! back to its pool once the body ended cleanly.

use super::h1::{Connection, Head, READ_CHUNK};
use super::pool::Pool;
use crate::body::BoxError;
use bytes::Bytes;
use http::header;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio_util::io::poll_read_buf;

/// Longest chunk-size or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// How a response body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a HEAD answer, 1xx, 204 or 304.
    Empty,
    /// `Content-Length`: this many bytes are still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`, at this point of the decoding.
    Chunked(Chunk),
    /// Neither: the body ends when the upstream closes the connection.
    UntilClose,
}

/// Where a chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl Framing {
    /// The framing of a response to a request (`head_only` for HEAD).
    pub(super) fn of(head: &Head, head_only: bool) -> Result<Framing, super::h1::ExchangeError> {
        use super::h1::ExchangeError::Malformed;
        let status = head.status;
        if head_only
            || status.is_informational()
            || status == http::StatusCode::NO_CONTENT
            || status == http::StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        if let Some(te) = &head.transfer_encoding {
            let last = te.to_str().unwrap_or("").rsplit(',').next().unwrap_or("").trim().to_ascii_lowercase();
            return Ok(if last == "chunked" { Framing::Chunked(Chunk::Size) } else { Framing::UntilClose });
        }
        let mut length = None;
        for value in head.headers.get_all(header::CONTENT_LENGTH) {
            let n = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| Malformed("invalid Content-Length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(Malformed("conflicting Content-Length values".into()));
            }
            length = Some(n);
        }
        Ok(length.map_or(Framing::UntilClose, Framing::Length))
    }
}

/// The body of an upstream response.
pub struct UpstreamBody {
    conn: Option<Connection>,
    framing: Framing,
    /// Where the connection goes when the body ends, if it may be reused.
    home: Option<Arc<Pool>>,
}

impl UpstreamBody {
    /// Reads the rest of a response from `conn`.
    pub(super) fn new(conn: Connection, framing: Framing, home: Option<Arc<Pool>>) -> UpstreamBody {
        let mut body = UpstreamBody { conn: Some(conn), framing, home };
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

    /// The next piece of body already read, if the framing allows one.
    fn next_data(&mut self) -> Result<Step, BoxError> {
        let Some(conn) = self.conn.as_mut() else { return Ok(Step::End) };
        let buf = &mut conn.buffered;
        loop {
            match &mut self.framing {
                Framing::Empty | Framing::Length(0) | Framing::Chunked(Chunk::Done) => return Ok(Step::End),
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = (*left).min(buf.len() as u64);
                    *left -= take;
                    if let Framing::Chunked(c @ Chunk::Data(0)) = &mut self.framing {
                        *c = Chunk::DataEnd;
                    }
                    return Ok(Step::Data(buf.split_to(take as usize).freeze()));
                }
                Framing::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("malformed chunked body: missing CRLF after a chunk".into());
                    }
                    let _ = buf.split_to(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(state @ (Chunk::Size | Chunk::Trailers)) => {
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err("malformed chunked body: line too long".into());
                        }
                        return Ok(Step::NeedMore);
                    };
                    let line = buf.split_to(end + 2);
                    let line = &line[..end];
                    *state = match state {
                        Chunk::Size => match chunk_size(line)? {
                            0 => Chunk::Trailers,
                            n => Chunk::Data(n),
                        },
                        // Trailers are dropped; an empty line ends the body.
                        _ if line.is_empty() => Chunk::Done,
                        _ => Chunk::Trailers,
                    };
                }
            }
        }
    }
}

/// What the buffered bytes give.
enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

/// The size on a chunk-size line (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<u64, BoxError> {
    let text = std::str::from_utf8(line).map_err(|_| "malformed chunk size")?;
    let digits = text.split(';').next().unwrap_or("").trim();
    u64::from_str_radix(digits, 16).map_err(|_| format!("malformed chunk size {digits:?}").into())
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.next_data() {
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
            match ready!(poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buffered)) {
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
        matches!(self.framing, Framing::Empty | Framing::Length(0) | Framing::Chunked(Chunk::Done))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
