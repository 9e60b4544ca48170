//! Listeners: accept TCP (or TLS) connections and serve HTTP/1.1 and
//! HTTP/2 on the same port, with every socket bounded in header size and
//! time. Garbage on one socket ends that connection only.
//!
//! HTTP/1.1 is keygate's own (`crate::http1::server`); HTTP/2 is hyper's (`h2`), picked by
//! ALPN on TLS or by the client's preface in clear text.

pub mod activity;
pub mod h2;
pub mod tls;

use crate::body::Body;
use crate::http1 as h1;
use crate::pipeline::ConnInfo;
use crate::websocket;
use http::{Request, Response};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

pub use crate::http1::Limits;
pub use crate::http1::Reply;

impl Limits {
    /// The data listener's limits from `[server]`.
    pub fn from_server(s: &crate::config::ServerConfig) -> Limits {
        Limits {
            header_read_timeout: s.header_read_timeout,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            idle_timeout: s.idle_timeout,
            max_connections: s.max_connections,
            drain_timeout: s.drain_timeout,
            refusal,
            spellings: SPELLINGS,
        }
    }
}

/// The fields keygate writes whose usual spelling is not each word
/// capitalised; clients look some of them up case-sensitively.
pub const SPELLINGS: &[&str] =
    &["WWW-Authenticate", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "RateLimit", "RateLimit-Policy"];

/// A refused head answered in the contract's JSON shape (`bad_request`).
pub fn refusal(status: http::StatusCode, message: String) -> Response<Body> {
    let mut resp = crate::error::GatewayError::BadRequest(message).to_response();
    *resp.status_mut() = status;
    resp
}

/// An accepted connection on its way to a worker, with its slot under
/// `max_connections` (freed when the connection ends).
pub struct Accepted {
    stream: std::net::TcpStream,
    peer: std::net::SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// Accepts on `listener` and hands connections to `workers` in turn, until
/// `shutdown`; then closes the listener at once (new clients are refused,
/// which a load balancer understands) and waits, at most `limits`'
/// drain timeout, for the open connections to finish.
pub async fn dispatch(
    listener: TcpListener,
    workers: Vec<mpsc::UnboundedSender<Accepted>>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let max_connections = limits.max_connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut next = 0usize;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream.into_std() else { continue };
        if workers.is_empty() {
            break;
        }
        next = (next + 1) % workers.len();
        if workers[next].send(Accepted { stream, peer, permit }).is_err() {
            tracing::error!(worker = next, "a worker has stopped");
        }
    }
    drop(listener);
    drop(workers);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain_timeout, slots.acquire_many(all)).await.is_err() {
        tracing::warn!("some connections were still open after the drain timeout");
    }
}

/// Serves the connections handed to one worker until its channel closes,
/// then lets the open ones finish (each also hears `shutdown`).
pub async fn serve_worker<H, F, R>(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    tls: Option<tls::ConfigSource>,
    limits: Limits,
    handler: H,
    shutdown: watch::Receiver<bool>,
    open_gauge: Option<prometheus::IntGauge>,
    worker: usize,
) where
    H: Fn(Request<Body>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = R> + Send + 'static,
    R: Into<Reply> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    // This worker's TLS handshakes take turns at their CPU-heavy step.
    let signing = Arc::new(Semaphore::new(1));
    while let Some(Accepted { stream, peer, permit }) = incoming.recv().await {
        let Ok(stream) = tokio::net::TcpStream::from_std(stream) else { continue };
        let (handler, tls, shutdown, gauge) = (handler.clone(), tls.clone(), shutdown.clone(), open_gauge.clone());
        let signing = Arc::clone(&signing);
        connections.spawn(async move {
            if let Some(g) = &gauge {
                g.inc();
            }
            let info = ConnInfo::new(peer, tls.is_some(), worker);
            match tls {
                None => drive(stream, false, limits, handler, info, shutdown).await,
                Some(source) => {
                    match tokio::time::timeout(limits.header_read_timeout, tls::accept(source(), stream, &signing)).await {
                        Ok(Ok(s)) => {
                            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                            drive(s, h2, limits, handler, info, shutdown).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            if let Some(g) = &gauge {
                g.dec();
            }
            drop(permit);
        });
        // Reap finished connections as we go, so the set stays small.
        while connections.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(limits.drain_timeout, async { while connections.join_next().await.is_some() {} }).await;
}

/// Serves `handler` on `listener` on the current runtime (one worker) until
/// `shutdown` turns true, then drains. The admin listener runs this way.
pub async fn serve<H, F, R>(
    listener: TcpListener,
    tls: Option<tls::ConfigSource>,
    limits: Limits,
    handler: H,
    shutdown: watch::Receiver<bool>,
    open_gauge: Option<prometheus::IntGauge>,
) where
    H: Fn(Request<Body>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = R> + Send + 'static,
    R: Into<Reply> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = tokio::spawn(serve_worker(rx, tls, limits, handler, shutdown.clone(), open_gauge, 0));
    dispatch(listener, vec![tx], limits, shutdown).await;
    let _ = worker.await;
}

/// Serves one connection until it ends, goes idle, or shutdown is asked:
/// HTTP/2 if `h2` (ALPN) or the client opens with its preface, else HTTP/1.1.
async fn drive<I, H, F, R>(io: I, h2: bool, limits: Limits, handler: H, info: ConnInfo, shutdown: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Body>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = R> + Send + 'static,
    R: Into<Reply> + Send + 'static,
{
    if h2 {
        return h2::serve(io, bytes::BytesMut::new(), limits, handler, info, shutdown).await;
    }
    match h1::serve(io, limits, handler.clone(), info.clone(), shutdown.clone()).await {
        h1::Ended::Closed => {}
        h1::Ended::Http2(io, read) => h2::serve(io, read, limits, handler, info, shutdown).await,
        h1::Ended::Switched(io, read, extensions) => tunnel(io, read, &extensions, shutdown).await,
    }
}

/// A connection switched to WebSocket: spliced to its upstream until
/// either side closes, or keygate ends it (what the handler left says
/// when; shutdown ends it with 1001).
async fn tunnel<I: AsyncRead + AsyncWrite + Unpin>(
    mut io: I,
    read: bytes::BytesMut,
    extensions: &http::Extensions,
    mut shutdown: watch::Receiver<bool>,
) {
    let upstream = extensions.get::<h1::Handover<h1::SwitchedIo>>().and_then(|h| h.take());
    let watch = extensions.get::<h1::Handover<websocket::Watch>>().and_then(|h| h.take());
    let (Some(mut upstream), Some(watch)) = (upstream, watch) else { return };
    let end = async move {
        tokio::select! {
            why = watch.end => why,
            _ = shutdown.wait_for(|stop| *stop) => websocket::Ending::GOING_AWAY,
        }
    };
    let spliced = websocket::splice((&mut io, &read), (&mut upstream.stream, &upstream.read), watch.bounds, end).await;
    tracing::debug!(?spliced, "a WebSocket connection ended");
}
