//! Graceful drain of a listener's connections, on tokio-util: the connections are counted
//! by a [`TaskTracker`] (one token each), and a [`CancellationToken`] tells those still open
//! at the deadline to close. The sidecar's own stop signal is a `CancellationToken` too.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Stops counting new connections, lets the live ones finish until `deadline`, then
/// cancels `close_now` and waits up to `grace` for the rest to go. Returns how many were
/// still open at the deadline.
pub async fn drain(
    connections: &TaskTracker,
    close_now: &CancellationToken,
    deadline: Instant,
    grace: Duration,
) -> usize {
    connections.close();
    if tokio::time::timeout_at(deadline, connections.wait())
        .await
        .is_ok()
    {
        return 0;
    }
    let remaining = connections.len();
    close_now.cancel();
    let _ = tokio::time::timeout(grace, connections.wait()).await;
    remaining
}

/// Cancels `token`; true if this call did it (it was not cancelled before).
pub fn cancel_once(token: &CancellationToken) -> bool {
    let first = !token.is_cancelled();
    token.cancel();
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_connections_then_forces_the_rest() {
        let tracker = TaskTracker::new();
        let close_now = CancellationToken::new();
        let far = Instant::now() + Duration::from_secs(10);
        assert_eq!(
            drain(&tracker, &close_now, far, Duration::ZERO).await,
            0,
            "empty is idle"
        );

        // A connection that finishes on its own before the deadline.
        let tracker = TaskTracker::new();
        let guard = tracker.token();
        let finisher = tokio::spawn(async move {
            tokio::task::yield_now().await;
            drop(guard);
        });
        let forced = drain(&tracker, &close_now, far, Duration::from_secs(1)).await;
        assert_eq!(forced, 0);
        finisher.await.expect("task");
        assert!(!close_now.is_cancelled());

        // A connection that only closes when told to.
        let tracker = TaskTracker::new();
        let guard = tracker.token();
        let told = close_now.clone();
        let stubborn = tokio::spawn(async move {
            told.cancelled().await;
            drop(guard);
        });
        let forced = drain(
            &tracker,
            &close_now,
            Instant::now() + Duration::from_millis(50),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(forced, 1);
        assert!(tracker.is_empty());
        stubborn.await.expect("task");
    }

    #[test]
    fn cancel_once_reports_the_first_cancel_only() {
        let token = CancellationToken::new();
        assert!(cancel_once(&token));
        assert!(!cancel_once(&token));
        assert!(token.is_cancelled());
    }
}
