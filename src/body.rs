//! The one body type every response and forwarded request uses: a boxed
//! stream of bytes, so upstream bodies flow through without buffering.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// Errors a body stream may carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed HTTP body.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding `data` whole (error responses, admin answers).
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

/// An empty body (zero-sized: boxing it allocates nothing).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// `body`, keeping `guard` until the body is dropped: what must last as
/// long as an answer is being written (an in-flight slot is released
/// only when its answer's last byte is out, or the client is gone).
pub fn holding<G: Send + Sync + Unpin + 'static>(body: Body, guard: G) -> Body {
    Kept { body, closed: None, until: None, _guard: guard }.boxed()
}

/// `body`, ended early (cleanly, as if the upstream had ended it) when
/// `close` is cancelled or at `until`; `guard` is kept until it is
/// dropped. A live connection a revoked key holds ends this way.
pub fn ending<G: Send + Sync + Unpin + 'static>(
    body: Body,
    close: tokio_util::sync::CancellationToken,
    until: Option<tokio::time::Instant>,
    guard: G,
) -> Body {
    let until = until.map(|at| Box::pin(tokio::time::sleep_until(at)));
    Kept { body, closed: Some(Box::pin(close.cancelled_owned())), until, _guard: guard }.boxed()
}

/// A body with something kept alive beside it, and maybe a signal and a
/// time that end it early.
struct Kept<G> {
    body: Body,
    closed: Option<std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
    until: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    _guard: G,
}

impl<G: Send + Sync + Unpin + 'static> http_body::Body for Kept<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::future::Future;
        let this = self.get_mut();
        let closed = this.closed.as_mut().is_some_and(|c| c.as_mut().poll(cx).is_ready());
        if closed || this.until.as_mut().is_some_and(|u| u.as_mut().poll(cx).is_ready()) {
            return std::task::Poll::Ready(None);
        }
        std::pin::Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body could not be read: {0}")]
    Failed(String),
}

/// Reads a whole body of at most `max` bytes (admin requests, answers to
/// keygate's own calls). Frame by frame rather than through `Limited`,
/// whose error conversion keeps a caller's future from being provably `Send`.
pub async fn read_to_bytes<B>(mut body: B, max: usize) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Failed(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(ReadError::TooLarge(max));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    struct Flag(Arc<AtomicBool>);

    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_held_guard_lasts_until_the_body_is_read_and_dropped() {
        let dropped = Arc::new(AtomicBool::new(false));
        let body = holding(full("streamed"), Flag(Arc::clone(&dropped)));
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(8), "the length still shows");
        let bytes = read_to_bytes(body, 100).await.unwrap();
        assert_eq!(&bytes[..], b"streamed");
        assert!(dropped.load(Ordering::SeqCst), "released with the body");
        let kept = holding(empty(), Flag(Arc::new(AtomicBool::new(false))));
        assert!(http_body::Body::is_end_stream(&kept));
    }
}
