//! Forwarding to upstreams over pooled keep-alive connections, with bodies
//! streamed both ways.

pub mod body;
pub mod headers;

use crate::body::Body;
use crate::config::Upstream;
use crate::error::GatewayError;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream.
pub const POOL_MAX_IDLE_PER_HOST: usize = 512;

/// Pooled clients, one per upstream (each with its own connect timeout) for
/// each worker thread: a worker only ever uses connections whose tasks run
/// on its own thread, so forwarding never wakes another thread.
pub struct Forwarder {
    clients: Vec<Vec<Client<HttpConnector, Body>>>,
}

impl Forwarder {
    /// Builds the clients of `workers` worker threads.
    pub fn new(upstreams: &[Upstream], workers: usize) -> Forwarder {
        Forwarder { clients: (0..workers.max(1)).map(|_| Self::clients(upstreams)).collect() }
    }

    fn clients(upstreams: &[Upstream]) -> Vec<Client<HttpConnector, Body>> {
        upstreams
            .iter()
            .map(|u| {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(u.connect_timeout));
                connector.set_keepalive(Some(Duration::from_secs(60)));
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .build(connector)
            })
            .collect()
    }

    /// Sends `req` (already rewritten) to upstream `index` from worker
    /// `worker` and waits for the response head, at most `upstream.timeout`.
    pub async fn send(
        &self,
        worker: usize,
        index: usize,
        upstream: &Upstream,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let per_worker = self.clients.get(worker).or_else(|| self.clients.first());
        let client = per_worker.and_then(|c| c.get(index)).ok_or(GatewayError::UpstreamUnavailable)?;
        match tokio::time::timeout(upstream.timeout, client.request(req)).await {
            Err(_) => Err(GatewayError::UpstreamTimeout),
            Ok(Err(e)) => {
                tracing::warn!(upstream = %upstream.name, error = %error_chain(&e), "upstream request failed");
                Err(GatewayError::UpstreamUnavailable)
            }
            Ok(Ok(resp)) => Ok(resp.map(|b: Incoming| b.map_err(Into::into).boxed())),
        }
    }
}

/// An error with its causes, for logs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The upstream URI for a normalised path and (stripped) query.
pub fn upstream_uri(upstream: &Upstream, path: &str, query: Option<&str>) -> Result<http::Uri, GatewayError> {
    let mut pq = String::with_capacity(upstream.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    pq.push_str(&upstream.base_path);
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    http::Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.origin.clone())
        .path_and_query(pq)
        .build()
        .map_err(|e| GatewayError::BadRequest(format!("cannot build the upstream URI: {e}")))
}
