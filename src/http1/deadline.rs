//! One timer per connection, re-armed lazily.
//!
//! Every wait on a socket is bounded (a client's head must arrive, a slow
//! reader must take its response, an upstream must answer), but arming a
//! timer for each wait costs two timer-wheel operations per request, and
//! a timer earlier than every other one also wakes the event loop through
//! a system call so that it sleeps less. A connection keeps one timer
//! instead: each wait moves the deadline it should end at, and the timer
//! only moves when it fires early (to the later deadline) or when a wait
//! needs an earlier one. Most requests never touch the timer wheel.
//!
//! A `Deadline` serves one task at a time: once the timer has been polled,
//! that task is woken when it fires, so later waits only look at whether
//! it fired instead of polling it again. A connection that passes to
//! another task (an upstream connection taken from its pool) says so with
//! [`Deadline::hand_over`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The connection's timer and the deadline of the current wait.
pub struct Deadline {
    /// Made the first time a wait blocks: a connection (or a request body)
    /// whose waits never block never allocates or arms one.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the current wait ends; `None` outside of waits.
    at: Option<Instant>,
    /// The timer holds this task's waker for its current deadline.
    registered: bool,
}

/// The wait's deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;

impl Deadline {
    /// No wait running, no timer yet.
    pub fn new() -> Deadline {
        Deadline { timer: None, at: None, registered: false }
    }

    /// Ends the current wait (the next one sets its own deadline).
    pub fn clear(&mut self) {
        self.at = None;
    }

    /// Starts a wait that may last `limit` from now, unless one is running.
    pub fn start(&mut self, limit: Duration) {
        if self.at.is_none() {
            self.restart(limit);
        }
    }

    /// Sets the current wait to end `limit` from now.
    pub fn restart(&mut self, limit: Duration) {
        self.restart_at(Instant::now() + limit);
    }

    /// Sets the current wait to end at `at`.
    pub fn restart_at(&mut self, at: Instant) {
        self.at = Some(at);
        if let Some(timer) = self.timer.as_mut().filter(|t| at < t.deadline()) {
            timer.as_mut().reset(at);
            self.registered = false;
        }
    }

    /// The next wait runs on another task: its waker must reach the timer.
    pub fn hand_over(&mut self) {
        self.registered = false;
    }

    /// Ready once the current wait's deadline has passed.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        let Some(at) = self.at else { return Poll::Pending };
        let timer = match &mut self.timer {
            Some(timer) => timer,
            None => {
                self.registered = false;
                self.timer.insert(Box::pin(tokio::time::sleep_until(at)))
            }
        };
        loop {
            if self.registered && !timer.is_elapsed() {
                return Poll::Pending;
            }
            self.registered = true;
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= at {
                return Poll::Ready(Expired);
            }
            // Fired for an earlier wait: follow the current one.
            timer.as_mut().reset(at);
            self.registered = false;
        }
    }

    /// One poll of a bounded wait: `poll_io` once, and if it is not ready,
    /// the wait (started the first time it was not) ends `limit` later. A
    /// ready result ends the wait, so the next one gets a fresh `limit`.
    /// For `poll_*` code (bodies); async code uses [`Deadline::bound`].
    pub fn poll_bound<T>(
        &mut self,
        cx: &mut Context<'_>,
        limit: Duration,
        poll_io: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<Result<T, Expired>> {
        if let Poll::Ready(v) = poll_io(cx) {
            self.clear();
            return Poll::Ready(Ok(v));
        }
        self.start(limit);
        self.poll_expired(cx).map(Err)
    }

    /// Runs `io` (polled by `poll_io`) until it is ready or `limit` has
    /// passed since the first time it was not: a wait that never blocks
    /// never reads the clock.
    pub async fn bound<T>(
        &mut self,
        limit: Duration,
        mut poll_io: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Result<T, Expired> {
        self.clear();
        let result = std::future::poll_fn(|cx| self.poll_bound(cx, limit, &mut poll_io)).await;
        self.clear();
        result
    }

    /// Runs `work` until it completes or `at` passes, as
    /// `tokio::time::timeout_at` does, on this connection's timer.
    pub async fn within<F: Future>(&mut self, at: Instant, work: F) -> Result<F::Output, Expired> {
        let mut work = std::pin::pin!(work);
        self.restart_at(at);
        let result = std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = work.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            self.poll_expired(cx).map(Err)
        })
        .await;
        self.clear();
        result
    }
}

impl Default for Deadline {
    fn default() -> Deadline {
        Deadline::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_own_deadline_whatever_the_timer_had() {
        let mut d = Deadline::new();
        // An earlier, long wait leaves the timer far out.
        assert_eq!(d.bound(Duration::from_secs(60), |_| Poll::Ready(1)).await, Ok(1));
        let started = Instant::now();
        let r: Result<(), Expired> = d.bound(Duration::from_millis(500), |_| Poll::Pending).await;
        assert_eq!(r, Err(Expired));
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        // A later, longer wait outlives the timer's earlier firing.
        let started = Instant::now();
        let r: Result<(), Expired> = d.bound(Duration::from_secs(2), |_| Poll::Pending).await;
        assert_eq!(r, Err(Expired));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn within_ends_work_at_the_instant_given() {
        let mut d = Deadline::new();
        let at = Instant::now() + Duration::from_secs(3);
        assert_eq!(d.within(at, async { 7 }).await, Ok(7));
        let r = d.within(at, tokio::time::sleep(Duration::from_secs(1))).await;
        assert_eq!(r, Ok(()), "work done before the instant keeps its result");
        let r = d.within(at, std::future::pending::<()>()).await;
        assert_eq!(r, Err(Expired));
        assert_eq!(Instant::now(), at);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handed_over_timer_wakes_its_new_task() {
        let mut d = Deadline::new();
        let at = Instant::now() + Duration::from_secs(3);
        // This task's waker reaches the timer: the work is not ready at once.
        let mut polled = false;
        let once_pending = std::future::poll_fn(|cx| {
            if std::mem::replace(&mut polled, true) {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert_eq!(d.within(at, once_pending).await, Ok(()));
        d.hand_over();
        let other = tokio::spawn(async move { d.within(at, std::future::pending::<()>()).await });
        let r = tokio::time::timeout(Duration::from_secs(10), other).await.expect("the new task was never woken").unwrap();
        assert_eq!(r, Err(Expired));
        assert_eq!(Instant::now(), at);
    }
}
