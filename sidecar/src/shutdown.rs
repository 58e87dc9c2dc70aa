//! Graceful shutdown: a one-shot [`Shutdown`] signal, and a [`Tracker`] of live connections
//! so a listener can stop accepting, let its connections finish until a deadline, and then
//! close the rest.
//!
//! The same signal type closes single connections from outside (see
//! [`crate::proxy::Registry`]), so it is deliberately small: one flag and one `Notify`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Default)]
struct Flag {
    set: AtomicBool,
    notify: Notify,
}

/// A signal that is set once and awaited by any number of tasks; clones share it.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<Flag>);

impl Shutdown {
    /// A signal that has not been set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the signal, waking every waiter. Returns false if it was already set.
    pub fn trigger(&self) -> bool {
        let first = !self.0.set.swap(true, Ordering::AcqRel);
        if first {
            self.0.notify.notify_waiters();
        }
        first
    }

    /// True once [`trigger`](Self::trigger) has been called.
    pub fn is_triggered(&self) -> bool {
        self.0.set.load(Ordering::Acquire)
    }

    /// Completes when the signal is set (at once if it already is).
    pub async fn wait(&self) {
        let notified = self.0.notify.notified();
        tokio::pin!(notified);
        // Register before checking the flag, so a trigger between the check and the await
        // cannot be missed (`notify_waiters` wakes only registered waiters).
        notified.as_mut().enable();
        if self.is_triggered() {
            return;
        }
        notified.await;
    }
}

#[derive(Debug, Default)]
struct Live {
    count: AtomicUsize,
    idle: Notify,
    /// Set when the drain deadline passed: connections still open must close.
    close_now: Shutdown,
}

/// Counts a listener's live connections, for draining on shutdown.
#[derive(Clone, Debug, Default)]
pub struct Tracker(Arc<Live>);

/// One live connection; dropping it stops counting it.
#[derive(Debug)]
pub struct Tracked(Arc<Live>);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tracker {
    /// A tracker with no connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a new connection until the returned guard is dropped.
    pub fn track(&self) -> Tracked {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        Tracked(self.0.clone())
    }

    /// How many connections are live.
    pub fn live(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }

    /// Set when connections must close now (the drain deadline passed). Every connection
    /// task watches it.
    pub fn close_now(&self) -> &Shutdown {
        &self.0.close_now
    }

    /// Waits until no connection is live or `deadline` passes; true if idle.
    pub async fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.live() == 0;
            }
        }
    }

    /// Graceful drain: lets connections finish until `deadline`, then tells the rest to
    /// close and waits up to `grace` for them to go. Returns how many were still open at
    /// the deadline.
    pub async fn drain(&self, deadline: Instant, grace: Duration) -> usize {
        if self.wait_idle(deadline).await {
            return 0;
        }
        let remaining = self.live();
        self.0.close_now.trigger();
        self.wait_idle(Instant::now() + grace).await;
        remaining
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_wakes_waiters_set_before_and_after() {
        let s = Shutdown::new();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait().await }
        });
        assert!(!s.is_triggered());
        assert!(s.trigger());
        assert!(!s.trigger(), "second trigger reports already set");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter woke")
            .expect("task");
        // A waiter arriving after the trigger returns at once.
        tokio::time::timeout(Duration::from_secs(5), s.wait())
            .await
            .expect("immediate");
    }

    #[tokio::test]
    async fn drain_waits_for_connections_then_forces_the_rest() {
        let tracker = Tracker::new();
        assert!(tracker.wait_idle(Instant::now()).await, "empty is idle");

        // A connection that finishes on its own before the deadline.
        let guard = tracker.track();
        let finisher = tokio::spawn(async move {
            tokio::task::yield_now().await;
            drop(guard);
        });
        let forced = tracker
            .drain(
                Instant::now() + Duration::from_secs(10),
                Duration::from_secs(1),
            )
            .await;
        assert_eq!(forced, 0);
        finisher.await.expect("task");
        assert!(!tracker.close_now().is_triggered());

        // A connection that only closes when told to.
        let guard = tracker.track();
        let close_now = tracker.close_now().clone();
        let stubborn = tokio::spawn(async move {
            close_now.wait().await;
            drop(guard);
        });
        let forced = tracker
            .drain(
                Instant::now() + Duration::from_millis(50),
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(forced, 1);
        assert_eq!(tracker.live(), 0);
        stubborn.await.expect("task");
    }
}
