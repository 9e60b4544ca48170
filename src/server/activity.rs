//! What an HTTP/2 connection's watchdog needs to know, kept where hyper
//! cannot hide it: when the connection last finished a request and whether
//! one is in flight (to close it once idle), whether a response body waits
//! on the client (a flow-control window never opened), and whether a header
//! block was begun and not finished. (HTTP/1.1 connections time their own
//! waits, see `crate::http1::server`.)
//!
//! Only request boundaries count as activity: frames that move without a
//! request (pings) must not keep a connection open.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

/// Shared between the request handlers, the connection's socket and its watchdog.
pub struct Activity {
    last_ms: AtomicI64,
    in_flight: AtomicUsize,
    /// For each response body still alive: since when (Unix ms) it has
    /// waited for the client to take its next frame, or 0.
    bodies: Mutex<Vec<Arc<AtomicI64>>>,
    /// Since when a header block has been open (HEADERS without
    /// END_HEADERS, then CONTINUATION), or 0.
    header_block_since: AtomicI64,
}

impl Activity {
    /// A connection that starts now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            last_ms: AtomicI64::new(crate::clock::now_ms()),
            in_flight: AtomicUsize::new(0),
            bodies: Mutex::new(Vec::new()),
            header_block_since: AtomicI64::new(0),
        })
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

    /// Wraps a response body so the watchdog sees when it waits on the
    /// client. It waits from the moment it is handed over (hyper asks for
    /// a body's frames only once the client's window has room).
    pub fn watch<B>(&self, body: B) -> Watched<B> {
        let waiting = Arc::new(AtomicI64::new(crate::clock::now_ms()));
        let mut bodies = self.bodies.lock().unwrap_or_else(PoisonError::into_inner);
        bodies.retain(|b| Arc::strong_count(b) > 1);
        bodies.push(Arc::clone(&waiting));
        Watched { inner: body, waiting }
    }

    /// The longest a live response body has waited on the client, in ms.
    pub fn longest_client_wait_ms(&self) -> i64 {
        let now = crate::clock::now_ms();
        let bodies = self.bodies.lock().unwrap_or_else(PoisonError::into_inner);
        let since =
            bodies.iter().filter(|b| Arc::strong_count(b) > 1).map(|b| b.load(Ordering::Relaxed)).filter(|s| *s > 0).min();
        since.map_or(0, |s| now - s)
    }

    /// How long a header block has been open, in ms (0: none is).
    pub fn header_block_ms(&self) -> i64 {
        match self.header_block_since.load(Ordering::Relaxed) {
            0 => 0,
            since => crate::clock::now_ms() - since,
        }
    }

    fn header_block(&self, open: bool) {
        let since = if open { crate::clock::now_ms().max(1) } else { 0 };
        self.header_block_since.store(since, Ordering::Relaxed);
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

/// A response body that says when it waits on the client: between handing
/// out a frame (or being created) and being asked for the next one. While
/// it waits on its own source (the upstream), that source's timeout applies.
pub struct Watched<B> {
    inner: B,
    waiting: Arc<AtomicI64>,
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for Watched<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let waits_on_client = matches!(polled, Poll::Ready(Some(Ok(_))));
        self.waiting.store(if waits_on_client { crate::clock::now_ms() } else { 0 }, Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Follows the frames a client sends on an HTTP/2 connection, as far as
/// their 9-byte headers tell: enough to see a header block left open.
/// Payloads are skipped by their length, never parsed.
pub struct FrameWatch {
    activity: Arc<Activity>,
    /// Preface bytes still to skip.
    preface_left: usize,
    /// Bytes of the current frame header read so far.
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to skip.
    payload_left: usize,
    /// The current frame ends a header block.
    ends_block: bool,
}

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

impl FrameWatch {
    pub fn new(activity: Arc<Activity>) -> FrameWatch {
        FrameWatch { activity, preface_left: PREFACE_LEN, header: [0; 9], header_len: 0, payload_left: 0, ends_block: false }
    }

    /// Notes bytes read from the client.
    pub fn saw(&mut self, mut bytes: &[u8]) {
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            let n = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 9 {
                self.header_len = 0;
                self.frame_started();
            }
        }
    }

    fn frame_started(&mut self) {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        let in_block = matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION);
        self.ends_block = in_block && flags & END_HEADERS != 0;
        if matches!(kind, HEADERS | PUSH_PROMISE) {
            self.activity.header_block(true);
        }
        if self.payload_left == 0 {
            self.frame_done();
        }
    }

    fn frame_done(&mut self) {
        if self.ends_block {
            self.activity.header_block(false);
            self.ends_block = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn an_open_header_block_is_seen_until_it_ends() {
        let activity = Activity::new();
        let mut watch = FrameWatch::new(Arc::clone(&activity));
        watch.saw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        watch.saw(&frame(0x4, 0, &[])); // SETTINGS
        assert_eq!(activity.header_block_since.load(Ordering::Relaxed), 0);
        watch.saw(&frame(HEADERS, 0, &[0x82, 0x86]));
        assert!(activity.header_block_since.load(Ordering::Relaxed) > 0, "HEADERS without END_HEADERS opens a block");
        let cont = frame(CONTINUATION, END_HEADERS, &[0x84]);
        // Byte by byte: frame headers split across reads are put together.
        for b in &cont[..cont.len() - 1] {
            watch.saw(std::slice::from_ref(b));
        }
        assert!(activity.header_block_since.load(Ordering::Relaxed) > 0, "closed only once its last frame is read");
        watch.saw(&cont[cont.len() - 1..]);
        assert_eq!(activity.header_block_since.load(Ordering::Relaxed), 0);
        // A complete HEADERS frame in one piece, then DATA.
        let mut both = frame(HEADERS, END_HEADERS, &[0x82; 300]);
        both.extend(frame(0x0, 0x1, b"hello"));
        watch.saw(&both);
        assert_eq!(activity.header_block_since.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_body_waits_on_the_client_between_frames() {
        use http_body_util::{BodyExt, Full};
        let activity = Activity::new();
        assert_eq!(activity.longest_client_wait_ms(), 0);
        let mut body = activity.watch(Full::new(Bytes::from_static(b"x")));
        assert!(activity.bodies.lock().unwrap()[0].load(Ordering::Relaxed) > 0, "waits from the moment it is handed over");
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        assert!(matches!(Pin::new(&mut body).poll_frame(cx), Poll::Ready(Some(Ok(_)))));
        assert!(activity.bodies.lock().unwrap()[0].load(Ordering::Relaxed) > 0);
        assert!(matches!(Pin::new(&mut body).poll_frame(cx), Poll::Ready(None)));
        assert_eq!(activity.longest_client_wait_ms(), 0, "an ended body waits for nothing");
        let _ = body.boxed();
        assert_eq!(activity.longest_client_wait_ms(), 0);
        let _second = activity.watch(Full::new(Bytes::from_static(b"y")));
        assert_eq!(activity.bodies.lock().unwrap().len(), 1, "dropped bodies are let go");
    }
}
