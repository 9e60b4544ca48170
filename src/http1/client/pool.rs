//! Keep-alive HTTP/1.1 connections to one upstream, for one worker thread.
//!
//! A connection is checked out for exactly one request and goes back to the
//! pool when its response body has been read to the end, so a connection is
//! never shared by two requests and never reused after a broken exchange.
//! A connection is only ever used by the worker thread that opened it, from
//! the request's own task: forwarding never wakes another thread or task.

use super::Connection;
use http::HeaderValue;
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
}

/// Where to connect and how long to try.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as written in the config (for logs and the `Host` header).
    pub authority: String,
    host: String,
    port: u16,
    /// The `Host` header every forwarded request carries.
    pub host_header: HeaderValue,
    connect_timeout: Duration,
}

impl Target {
    /// The target for an `http://` upstream authority.
    pub fn new(origin: &http::uri::Authority, connect_timeout: Duration) -> Target {
        let host = origin.host().trim_start_matches('[').trim_end_matches(']').to_string();
        // An authority is visible ASCII, always a valid header value.
        let host_header = HeaderValue::from_str(origin.as_str()).unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Target {
            authority: origin.as_str().to_string(),
            host,
            port: origin.port_u16().unwrap_or(80),
            host_header,
            connect_timeout,
        }
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
    pub fn take_idle(&self, now: Instant) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut entry) = idle.pop() {
            if now.saturating_duration_since(entry.since) < IDLE_TIMEOUT && entry.conn.is_reusable() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Takes back a connection whose last exchange completed.
    pub(super) fn put_back(&self, conn: Connection) {
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

    /// Opens a new connection.
    pub async fn connect(&self) -> Result<Connection, ConnectError> {
        let t = &self.target;
        let stream = match tokio::time::timeout(t.connect_timeout, TcpStream::connect((t.host.as_str(), t.port))).await {
            Err(_) => return Err(ConnectError::Timeout(t.authority.clone())),
            Ok(Err(e)) => return Err(ConnectError::Io(t.authority.clone(), e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        Ok(Connection::new(stream))
    }
}
