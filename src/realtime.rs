//! Live connections a key holds open (event streams, WebSockets),
//! registered by key
//! so that what revokes the key closes them: each node follows the change
//! feed, and a key disabled, deleted, leaked or stripped of a stream's
//! permission has that node's streams ended within the feed's lag. A
//! registration also bounds how many streams one key holds on a node.

use crate::FastHash;
use dashmap::DashMap;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why a live connection was closed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The key was disabled, deleted, leaked or expired.
    Revoked,
    /// The key lost the permission its route needs.
    Forbidden,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Revoked => "revoked",
            Closed::Forbidden => "forbidden",
        }
    }
}

/// What kind of connection (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    EventStream,
    WebSocket,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::EventStream => "event_stream",
            Kind::WebSocket => "websocket",
        }
    }
}

struct Open {
    id: u64,
    /// The permission its route needs, checked again when roles change.
    permission: Option<Arc<str>>,
    close: CancellationToken,
}

/// Every live connection on this node, by key id.
pub struct Streams {
    next: AtomicU64,
    by_key: DashMap<String, Vec<Open>, FastHash>,
    /// By kind, in [`Kind`]'s order.
    gauges: [IntGauge; 2],
    closed: IntCounterVec,
}

/// A connection's place in the registry; dropped, it is taken out.
pub struct Registration {
    streams: Arc<Streams>,
    key_id: String,
    id: u64,
    kind: Kind,
    /// Cancelled when the key is revoked: the connection ends.
    pub close: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.streams.gauges[self.kind as usize].dec();
        if let Some(mut open) = self.streams.by_key.get_mut(&self.key_id) {
            open.retain(|o| o.id != self.id);
        }
        self.streams.by_key.remove_if(&self.key_id, |_, open| open.is_empty());
    }
}

impl Streams {
    /// `gauges` count the connections open, by kind; `closed` those
    /// closed, by reason.
    pub fn new(gauges: &IntGaugeVec, closed: IntCounterVec) -> Arc<Streams> {
        let gauges = [Kind::EventStream, Kind::WebSocket].map(|k| gauges.with_label_values(&[k.as_str()]));
        Arc::new(Streams { next: AtomicU64::new(0), by_key: DashMap::default(), gauges, closed })
    }

    /// Registers a connection of `key_id` on a route needing `permission`,
    /// unless the key holds `limit` already (of either kind).
    pub fn open(self: &Arc<Self>, key_id: &str, permission: Option<&str>, limit: u32, kind: Kind) -> Option<Registration> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = CancellationToken::new();
        {
            let mut open = self.by_key.entry(key_id.to_string()).or_default();
            if open.len() >= limit as usize {
                return None;
            }
            open.push(Open { id, permission: permission.map(Arc::from), close: close.clone() });
        }
        self.gauges[kind as usize].inc();
        Some(Registration { streams: Arc::clone(self), key_id: key_id.to_string(), id, kind, close })
    }

    /// Keys with a connection open now.
    pub fn keys(&self) -> Vec<String> {
        self.by_key.iter().map(|e| e.key().clone()).collect()
    }

    /// Whether `key_id` has a connection open now.
    pub fn is_open(&self, key_id: &str) -> bool {
        self.by_key.contains_key(key_id)
    }

    /// Closes `key_id`'s connections (those `which` picks by the permission
    /// their route needs); how many.
    pub fn close(&self, key_id: &str, why: Closed, which: impl Fn(Option<&str>) -> bool) -> usize {
        let Some(open) = self.by_key.get(key_id) else { return 0 };
        let mut n = 0;
        for o in open.iter().filter(|o| which(o.permission.as_deref()) && !o.close.is_cancelled()) {
            o.close.cancel();
            n += 1;
        }
        if n > 0 {
            self.closed.with_label_values(&[why.as_str()]).inc_by(n as u64);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    #[test]
    fn connections_are_bounded_per_key_and_closed_by_key_and_permission() {
        let closed = IntCounterVec::new(Opts::new("c", "c"), &["reason"]).unwrap();
        let gauges = IntGaugeVec::new(Opts::new("g", "g"), &["kind"]).unwrap();
        let s = Streams::new(&gauges, closed.clone());
        let a = s.open("key_a", Some("stats.view"), 2, Kind::EventStream).unwrap();
        let b = s.open("key_a", Some("lists.view"), 2, Kind::WebSocket).unwrap();
        assert_eq!(gauges.with_label_values(&["websocket"]).get(), 1);
        assert!(s.open("key_a", None, 2, Kind::EventStream).is_none(), "two is the limit, of both kinds");
        let other = s.open("key_b", None, 2, Kind::EventStream).unwrap();
        assert_eq!(s.close("key_a", Closed::Forbidden, |p| p == Some("stats.view")), 1);
        assert!(a.close.is_cancelled() && !b.close.is_cancelled());
        assert_eq!(s.close("key_a", Closed::Revoked, |_| true), 1, "one left open");
        assert!(b.close.is_cancelled() && !other.close.is_cancelled());
        assert_eq!(closed.with_label_values(&["revoked"]).get(), 1);
        drop((a, b));
        assert_eq!(s.keys(), vec!["key_b".to_string()]);
        assert_eq!(gauges.with_label_values(&["websocket"]).get(), 0);
        assert!(s.open("key_a", None, 2, Kind::WebSocket).is_some(), "closed ones free their places");
    }
}
