//! Keep-alive HTTP/1.1 connections to one upstream target, for one worker thread.
//!
//! A connection is checked out for exactly one request and goes back to the
//! pool when its response body has been read to the end, so a connection is
//! never shared by two requests and never reused after a broken exchange.
//! A connection is only ever used by the worker thread that opened it, from
//! the request's own task: forwarding never wakes another thread or task.

use super::stream::{Stream, TlsTarget};
use super::Connection;
use http::HeaderValue;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream and worker.
pub const MAX_IDLE: usize = 512;
/// TCP keep-alive probes on upstream connections start after this long idle.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(String),
    #[error("connect to {0}: {1}")]
    Io(String, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, std::io::Error),
}

/// Where to connect and how long to try.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as written in the config (for logs and metric labels).
    pub authority: String,
    host: String,
    /// The port written in the config, if any (else 80, or 443 for TLS).
    port: Option<u16>,
    /// The `Host` header every forwarded request carries.
    pub host_header: HeaderValue,
    connect_timeout: Duration,
    tls: Option<TlsTarget>,
    /// Connections checked out of this target's pools (one per request in
    /// flight), shared by every worker's pool of the same target; counted
    /// only when asked for (two atomic operations and a reference count per
    /// request otherwise spent for nothing).
    in_use: Option<Arc<AtomicUsize>>,
}

impl Target {
    /// The target for an upstream authority, over plain TCP.
    pub fn new(origin: &http::uri::Authority, connect_timeout: Duration) -> Target {
        let host = origin.host().trim_start_matches('[').trim_end_matches(']').to_string();
        // An authority is visible ASCII, always a valid header value.
        let host_header = HeaderValue::from_str(origin.as_str()).unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Target {
            authority: origin.as_str().to_string(),
            host,
            port: origin.port_u16(),
            host_header,
            connect_timeout,
            tls: None,
            in_use: None,
        }
    }

    /// Speaks TLS to this target.
    pub fn with_tls(mut self, tls: TlsTarget) -> Target {
        self.tls = Some(tls);
        self
    }

    /// Sends `host` as every request's `Host` (the upstream's name, when
    /// the target is one address of several).
    pub fn with_host_header(mut self, host: HeaderValue) -> Target {
        self.host_header = host;
        self
    }

    /// Counts the requests in flight to this target (see [`Target::in_use`]).
    pub fn counting_in_flight(mut self) -> Target {
        self.in_use = Some(Arc::default());
        self
    }

    /// Requests in flight to this target, from every worker (0 unless counted).
    pub fn in_use(&self) -> usize {
        self.in_use.as_ref().map_or(0, |n| n.load(Ordering::Relaxed))
    }
}

/// Counts a connection as checked out until it is dropped or put back.
pub(super) struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(count: &Option<Arc<AtomicUsize>>) -> Option<Busy> {
        let count = count.as_ref()?;
        count.fetch_add(1, Ordering::Relaxed);
        Some(Busy(Arc::clone(count)))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The idle connections to one upstream from one worker.
pub struct Pool {
    target: Target,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: Connection,
    since: Instant,
}

impl Pool {
    /// An empty pool for `target`.
    pub fn new(target: Target) -> Arc<Pool> {
        Arc::new(Pool { target, idle: Mutex::new(Vec::new()) })
    }

    /// Where this pool connects.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The most recently used idle connection that still looks usable.
    #[inline]
    pub fn take_idle(&self, now: Instant) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut entry) = idle.pop() {
            if now.saturating_duration_since(entry.since) < IDLE_TIMEOUT && entry.conn.is_reusable() {
                entry.conn.busy = Busy::new(&self.target.in_use);
                return Some(entry.conn);
            }
        }
        None
    }

    /// Takes back a connection whose last exchange completed.
    pub(super) fn put_back(&self, mut conn: Connection) {
        conn.busy = None;
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // The oldest sit at the front: drop one that has gone stale, so a
        // pool that shrinks after a burst frees its sockets over time.
        if idle.first().is_some_and(|c| now.saturating_duration_since(c.since) >= IDLE_TIMEOUT) {
            idle.remove(0);
        }
        if idle.len() < MAX_IDLE {
            idle.push(Idle { conn, since: now });
        }
    }

    /// Opens a new connection (and its TLS session, if the target speaks TLS).
    pub async fn connect(&self) -> Result<Connection, ConnectError> {
        let t = &self.target;
        let port = t.port.unwrap_or(if t.tls.is_some() { 443 } else { 80 });
        let connected = async {
            let tcp = TcpStream::connect((t.host.as_str(), port)).await.map_err(|e| ConnectError::Io(t.authority.clone(), e))?;
            let _ = tcp.set_nodelay(true);
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
            Stream::over(tcp, t.tls.as_ref()).await.map_err(|e| ConnectError::Tls(t.authority.clone(), e))
        };
        let stream = match tokio::time::timeout(t.connect_timeout, connected).await {
            Err(_) => return Err(ConnectError::Timeout(t.authority.clone())),
            Ok(result) => result?,
        };
        let mut conn = Connection::new(stream);
        conn.busy = Busy::new(&t.in_use);
        Ok(conn)
    }
}
