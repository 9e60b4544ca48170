//! HTTP/2 connections, served by hyper: chosen by ALPN on TLS, or by the
//! client's preface in clear text (prior knowledge). A watchdog ends what
//! hyper would let run on: a connection idle for `server.idle_timeout`
//! without a request in flight (gracefully), one whose response body waited
//! that long for the client to open its window, and one with a header block
//! left open past `server.header_read_timeout` (at once).

use super::activity::{Activity, FrameWatch};
use super::{Limits, Reply};
use crate::body::{Body, BoxError};
use crate::pipeline::ConnInfo;
use bytes::{Buf, BytesMut};
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// Streams one HTTP/2 client may run at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Serves HTTP/2 on `io`, whose first bytes (already read) are `prefix`.
pub async fn serve<I, H, F, R>(
    io: I,
    prefix: BytesMut,
    limits: Limits,
    handler: H,
    info: ConnInfo,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Body>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = R> + Send + 'static,
    R: Into<Reply> + Send + 'static,
{
    let activity = Activity::new();
    let service_activity = Arc::clone(&activity);
    let peer = info.peer;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = service_activity.start_request();
        let req = req.map(|b| b.map_err(box_error).boxed());
        // Boxed: hyper moves each stream's future into a task of its own
        // and on, and the request's future is kilobytes (HTTP/1.1 polls it
        // in place instead).
        let fut = Box::pin(handler(req, info.clone()));
        let activity = Arc::clone(&service_activity);
        async move {
            let resp = fut.await.into().into_response().map(|body| activity.watch(body));
            drop(guard);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let watch = FrameWatch::new(Arc::clone(&activity));
    let conn = builder.serve_connection(TokioIo::new(Prefixed { prefix, io, watch }), service);
    tokio::pin!(conn);
    let idle_ms = limits.idle_timeout.as_millis() as i64;
    let head_ms = limits.header_read_timeout.as_millis() as i64;
    let period = (limits.idle_timeout.min(limits.header_read_timeout) / 4).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(period);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tick.tick() => {
                // Dropping the connection fails its streams, which drops
                // their handlers and upstream connections with them.
                if activity.longest_client_wait_ms() > idle_ms {
                    tracing::debug!(%peer, "a response waited on the client's window past the idle timeout");
                    return;
                }
                if activity.header_block_ms() > head_ms {
                    tracing::debug!(%peer, "a header block stayed open past the header read timeout");
                    return;
                }
                if !closing && !activity.busy() && activity.idle_ms() > idle_ms {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A socket whose first bytes were already read: they are read again
/// first. Everything read goes past the frame watch.
struct Prefixed<I> {
    prefix: BytesMut,
    io: I,
    watch: FrameWatch,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix[..n]);
            this.watch.saw(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = out.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, out);
        this.watch.saw(&out.filled()[before..]);
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn box_error(e: hyper::Error) -> BoxError {
    Box::new(e)
}
