//! When an HTTP/2 connection last finished a request, and whether one is
//! in flight, so its task can close it once it sits idle. (HTTP/1.1
//! connections time their own waits, see `super::h1`.)
//!
//! Only request boundaries count as activity: frames that move without a
//! request (pings) must not keep a connection open.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Shared between the request handler and the connection's watchdog.
pub struct Activity {
    last_ms: AtomicI64,
    in_flight: AtomicUsize,
}

impl Activity {
    /// A connection that starts now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity { last_ms: AtomicI64::new(crate::clock::now_ms()), in_flight: AtomicUsize::new(0) })
    }

    /// Milliseconds since the connection started or last finished a request.
    pub fn idle_ms(&self) -> i64 {
        crate::clock::now_ms() - self.last_ms.load(Ordering::Relaxed)
    }

    /// Whether a request is being handled.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Marks a request in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(Arc::clone(self))
    }
}

/// Ends a request's "in flight" mark when dropped.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.last_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
