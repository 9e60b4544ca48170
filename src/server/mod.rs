//! Listeners: accept TCP (or TLS) connections and serve HTTP/1.1 and
//! HTTP/2 on the same port, with every socket bounded in header size and
//! time. Garbage on one socket ends that connection only.

pub mod io;
pub mod tls;

use crate::body::Body;
use crate::pipeline::ConnInfo;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use io::{Activity, Tracked};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// How long open connections get to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams one HTTP/2 client may run at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Bounds applied to every connection of a listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The data listener's limits from `[server]`.
    pub fn from_server(s: &crate::config::ServerConfig) -> Limits {
        Limits {
            header_read_timeout: s.header_read_timeout,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            idle_timeout: s.idle_timeout,
            max_connections: s.max_connections,
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` turns true, then drains.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
    open_gauge: Option<prometheus::IntGauge>,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        let (handler, tls, shutdown, gauge) = (handler.clone(), tls.clone(), shutdown.clone(), open_gauge.clone());
        tokio::spawn(async move {
            if let Some(g) = &gauge {
                g.inc();
            }
            let info = ConnInfo { peer, tls: tls.is_some() };
            let activity = Arc::new(Activity::default());
            match tls {
                None => drive(Tracked::new(stream, Arc::clone(&activity)), activity, limits, handler, info, shutdown).await,
                Some(acceptor) => match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => drive(Tracked::new(s, Arc::clone(&activity)), activity, limits, handler, info, shutdown).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
            if let Some(g) = &gauge {
                g.dec();
            }
            drop(permit);
        });
    }
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all)).await.is_err() {
        tracing::warn!("some connections were still open after the drain timeout");
    }
}

/// Serves one connection until it ends, goes idle, or shutdown is asked.
async fn drive<I, H, F>(
    io: I,
    activity: Arc<Activity>,
    limits: Limits,
    handler: H,
    info: ConnInfo,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service_activity = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |req| {
        let guard = service_activity.start_request();
        let fut = handler(req, info);
        async move {
            let resp = fut.await;
            drop(guard);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle_ms = limits.idle_timeout.as_millis() as i64;
    let mut tick = tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(50)));
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tick.tick(), if !closing => {
                if !activity.busy() && activity.idle_ms() > idle_ms {
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
