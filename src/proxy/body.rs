//! The request body as forwarded: streamed frame by frame, with a cap on
//! its total size and on the pause between two frames, so a slow or
//! endless upload cannot hold a connection (or memory) forever.

use crate::body::BoxError;
use crate::http1::Deadline;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    #[error("request body stalled for longer than {0:?}")]
    Stalled(Duration),
}

/// A body with a size cap and an inactivity timeout.
pub struct GuardedBody<B> {
    inner: B,
    remaining: u64,
    max: u64,
    pause: Duration,
    /// Armed only while the client's next frame is late.
    timer: Deadline,
}

impl<B> GuardedBody<B> {
    /// Wraps `inner`: at most `max` bytes, at most `pause` between frames.
    pub fn new(inner: B, max: u64, pause: Duration) -> GuardedBody<B> {
        GuardedBody { inner, remaining: max, max, pause, timer: Deadline::new() }
    }
}

impl<B> HttpBody for GuardedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // The pause starts when the body first makes us wait.
        let polled = this.timer.poll_bound(cx, this.pause, |cx| Pin::new(&mut this.inner).poll_frame(cx));
        let Ok(next) = ready!(polled) else {
            return Poll::Ready(Some(Err(Box::new(BodyError::Stalled(this.pause)))));
        };
        match next {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyError::TooLarge(this.max)))));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn passes_small_bodies() {
        let b = GuardedBody::new(Full::new(Bytes::from_static(b"hello")), 10, Duration::from_secs(1));
        assert_eq!(b.collect().await.unwrap().to_bytes(), Bytes::from_static(b"hello"));
    }

    #[tokio::test]
    async fn refuses_large_bodies() {
        let b = GuardedBody::new(Full::new(Bytes::from_static(b"hello world")), 5, Duration::from_secs(1));
        let err = b.collect().await.err().unwrap();
        assert!(err.to_string().contains("exceeds 5 bytes"));
    }

    #[tokio::test]
    async fn times_out_stalled_bodies() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let b = GuardedBody::new(stream, 10, Duration::from_millis(50));
        let err = b.collect().await.err().unwrap();
        assert!(err.to_string().contains("stalled"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_pause_is_between_frames_not_the_whole_body() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"ab")))).await;
            }
        });
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let b = GuardedBody::new(stream, 100, Duration::from_millis(100));
        assert_eq!(b.collect().await.unwrap().to_bytes().len(), 10, "five frames 60 ms apart, each within the 100 ms pause");
    }

    fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
