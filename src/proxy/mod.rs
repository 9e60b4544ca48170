//! Forwarding to upstreams over pooled keep-alive connections, with bodies
//! streamed both ways: which upstream, what of the client's head goes on
//! (`outgoing`, `headers`), the body's size and pause guard (`body`). The
//! HTTP/1.1 exchange itself is `crate::http1::client`'s.

pub mod body;
pub mod call;
pub mod headers;
pub mod outgoing;
pub mod targets;

use crate::body::Body;
use crate::config::Upstream;
use crate::error::GatewayError;
use crate::http1::{ConnectError, Pool, Target};
use crate::http1::{ExchangeError, RequestHead, Timing, Upstreamed};
use crate::metrics::Metrics;
use http::HeaderValue;
use outgoing::Outgoing;
use std::sync::Arc;
use std::time::{Duration, Instant};
use targets::{Group, Outcome, Tried};

/// Idle-connection pools, one per upstream target for each worker thread:
/// a connection is only used by the worker that opened it, so forwarding
/// never wakes another thread. Target health is shared by all workers.
pub struct Forwarder {
    groups: Vec<Group>,
    /// `pools[worker][upstream][target]`.
    pools: Vec<Vec<Vec<Arc<Pool>>>>,
    /// The longest pause inside an event stream's body
    /// (`text/event-stream`), in place of an upstream's `timeout`:
    /// `[realtime] idle_timeout`.
    stream_pause: Duration,
}

/// Why an exchange with an upstream failed (logged, answered 502).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Exchange(#[from] ExchangeError),
    #[error("the upstream's timeout passed while connecting")]
    ConnectTimedOut,
}

impl Forwarder {
    /// Builds the (empty) pools of `workers` worker threads.
    pub fn new(upstreams: &[Upstream], workers: usize, stream_pause: Duration, metrics: &Metrics) -> Forwarder {
        // One in-flight count per target, shared by every worker's pool.
        let targets: Vec<Vec<Target>> = upstreams.iter().map(targets_of).collect();
        let pools = (0..workers.max(1))
            .map(|_| targets.iter().map(|ts| ts.iter().map(|t| Pool::new(t.clone())).collect()).collect())
            .collect();
        Forwarder { groups: upstreams.iter().map(|u| Group::new(u, metrics)).collect(), pools, stream_pause }
    }

    /// Sends a request to upstream `index` from worker `worker` and waits
    /// for the response head, at most `upstream.timeout` after `now`. A
    /// target that cannot be connected to has seen nothing of the request:
    /// the next target is tried, until one answers or none is left.
    pub async fn send(
        &self,
        worker: usize,
        index: usize,
        upstream: &Upstream,
        head: &mut Outgoing<'_>,
        body: Body,
        now: Instant,
    ) -> Result<Upstreamed, GatewayError> {
        let per_worker = self.pools.get(worker).or_else(|| self.pools.first());
        let pools = per_worker.and_then(|p| p.get(index)).ok_or(GatewayError::UpstreamUnavailable)?;
        let group = self.groups.get(index).ok_or(GatewayError::UpstreamUnavailable)?;
        let deadline = tokio::time::Instant::from_std(now) + upstream.timeout;
        let mut body = Some(body);
        let mut tried = Tried::default();
        while let Some(t) = group.pick(pools, tried, now) {
            tried.add(t);
            let pool = &pools[t];
            head.host = Some(pool.target().host_header.clone());
            let timing = Timing { deadline, pause: upstream.timeout, stream_pause: self.stream_pause };
            let result = exchange(pool, head, &mut body, now, &timing).await;
            let (outcome, answer) = match result {
                Ok(resp) => (group.outcome_of(resp.response.status()), Ok(resp)),
                // The client's body failed, not the upstream.
                Err(ForwardError::Exchange(ExchangeError::RequestBody(e))) => return Err(client_body_error(e)),
                Err(ForwardError::Exchange(ExchangeError::TimedOut) | ForwardError::ConnectTimedOut) => {
                    (Outcome::Timeout, Err(GatewayError::UpstreamTimeout))
                }
                Err(e) => {
                    // `target` is the log line's own field (the module): the address goes by its own name.
                    tracing::warn!(upstream = %upstream.name, target_addr = %pool.target().authority, error = %e, "upstream request failed");
                    let outcome = if matches!(e, ForwardError::Connect(_)) { Outcome::ConnectError } else { Outcome::Error };
                    (outcome, Err(GatewayError::UpstreamUnavailable))
                }
            };
            group.record(t, outcome, Instant::now());
            // Only a request none of whose bytes went out goes elsewhere.
            if outcome == Outcome::ConnectError && body.is_some() && tokio::time::Instant::now() < deadline {
                continue;
            }
            return answer;
        }
        Err(GatewayError::UpstreamUnavailable)
    }
}

/// The connection targets of an upstream, each with the upstream's `Host`
/// and TLS settings.
fn targets_of(u: &Upstream) -> Vec<Target> {
    let host = HeaderValue::from_str(u.origin.as_str()).ok();
    u.targets
        .iter()
        .map(|authority| {
            let mut t = Target::new(authority, u.connect_timeout);
            if u.balance == crate::config::Balance::LeastOutstanding {
                t = t.counting_in_flight();
            }
            if let Some(host) = &host {
                t = t.with_host_header(host.clone());
            }
            match &u.tls {
                Some(tls) => t.with_tls(tls.clone()),
                None => t,
            }
        })
        .collect()
}

/// A request body keygate reads itself (a leak report), whole: at most
/// `max` bytes, no pause over `pause`, and all of it within `total`.
pub async fn read_whole(body: Body, max: u64, pause: Duration, total: Duration) -> Result<bytes::Bytes, GatewayError> {
    use http_body_util::BodyExt;
    // Boxed as every body is: a future over the generic guard would need
    // rustc to prove `Send` for every lifetime of its error, which it cannot.
    let guarded: Body = body::GuardedBody::new(body, max, pause).boxed();
    match tokio::time::timeout(total, guarded.collect()).await {
        Err(_) => Err(GatewayError::RequestTimeout),
        Ok(Err(e)) => Err(client_body_error(e)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The refusal for a request body that failed on its way through.
fn client_body_error(e: crate::body::BoxError) -> GatewayError {
    match e.downcast_ref::<body::BodyError>() {
        Some(body::BodyError::TooLarge(_)) => GatewayError::PayloadTooLarge,
        Some(body::BodyError::Stalled(_)) => GatewayError::RequestTimeout,
        None => GatewayError::BadRequest(format!("the request body could not be read: {e}")),
    }
}

/// One request and its response head over a pooled (or new) connection,
/// before `deadline`. The body is taken only once a connection is had, so
/// a failed connect leaves it for another target. A kept-alive connection
/// the upstream closed a moment ago fails before any answer; a bodiless
/// idempotent request then goes out again on the next idle connection, or
/// on a new one.
pub(crate) async fn exchange(
    pool: &Arc<Pool>,
    head: &impl RequestHead,
    body: &mut Option<Body>,
    now: Instant,
    timing: &Timing,
) -> Result<Upstreamed, ForwardError> {
    let deadline = timing.deadline;
    let replayable = body.as_ref().is_none_or(http_body::Body::is_end_stream) && head.method().is_idempotent();
    loop {
        let (conn, reused) = match pool.take_idle(now) {
            Some(conn) => (conn, true),
            // Boxed: connecting is rare, and its state would otherwise be
            // part of every request's future.
            None => match Box::pin(tokio::time::timeout_at(deadline, pool.connect())).await {
                Ok(connected) => (connected?, false),
                Err(_) => return Err(ForwardError::ConnectTimedOut),
            },
        };
        match conn.exchange(head, body.take().unwrap_or_else(crate::body::empty), pool, timing).await {
            Err(e) if reused && replayable && e.connection_was_stale() => continue,
            result => return Ok(result?),
        }
    }
}

/// The origin-form target (`/base/path?query`) for a normalised path and
/// (stripped) query. Its pieces come from parsed URIs and the checked
/// configuration; a byte that could break the request line is still
/// refused here, the last step before the upstream sees it.
pub fn upstream_target(upstream: &Upstream, path: &str, query: Option<&str>) -> Result<String, GatewayError> {
    upstream_target_of(&upstream.base_path, path, query)
}

/// [`upstream_target`] under a base path.
pub fn upstream_target_of(base_path: &str, path: &str, query: Option<&str>) -> Result<String, GatewayError> {
    let mut target = String::with_capacity(base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    target.push_str(base_path);
    target.push_str(path);
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(GatewayError::BadRequest("the request target contains a space or a control character".into()));
    }
    Ok(target)
}
