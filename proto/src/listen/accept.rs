//! `accept` that neither spins nor gives up: out of descriptors (`EMFILE`, `ENFILE`), out
//! of memory, or a connection reset before it was taken, the loop waits a moment and tries
//! again, logging at most once per interval.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::ThrottledLog;

/// After a failed `accept`, wait this long before the next: long enough not to spin on
/// `EMFILE` (the pending connection stays in the backlog, so `accept` would fail at once
/// again), short enough that the listener resumes as soon as descriptors are free.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection on `listener` (named `name` in logs). Cancel-safe.
pub async fn accept(
    listener: &TcpListener,
    name: &'static str,
    failures: &ThrottledLog,
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                if let Some(suppressed) = failures.event() {
                    tracing::warn!(
                        listener = name,
                        error = %e,
                        not_logged_since_last = suppressed,
                        "accept failed; retrying (logged at most every 10s)"
                    );
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
