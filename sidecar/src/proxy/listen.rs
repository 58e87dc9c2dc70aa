//! The accept loop shared by the inbound and outbound listeners: connection cap, metrics,
//! a span per connection, graceful drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;
use trellis_proto::listen::{self, ThrottledLog};

use super::{Context, Registration};
use crate::metrics::{Direction, Metrics};
use crate::shutdown;

/// After the drain deadline, how long closed connections get to finish their teardown.
const FORCE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// An accepted connection: counted in the metrics and the drain tracker, holding one of the
/// listener's connection slots until dropped.
#[derive(Debug)]
pub(crate) struct Conn {
    metrics: Arc<Metrics>,
    direction: Direction,
    close_now: CancellationToken,
    _tracked: TaskTrackerToken,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    /// Completes when this connection must close: its registration was closed (revocation)
    /// or the listener's drain deadline passed.
    pub(crate) async fn closed(&self, registration: &Registration) {
        tokio::select! {
            () = self.close_now.cancelled() => {}
            () = registration.closed().cancelled() => {}
        }
    }

    /// The drain deadline passed.
    pub(crate) fn close_now(&self) -> &CancellationToken {
        &self.close_now
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let c = self.metrics.dir(self.direction);
        c.closed.fetch_add(1, Relaxed);
        c.active.fetch_sub(1, Relaxed);
    }
}

/// Accepts connections until `ctx.shutdown`, at most `max_connections` at a time (when all
/// slots are taken, new connections wait in the kernel's backlog), running `handle` for
/// each in its own task and span, on the least busy of `ctx.workers`. Then drains: stops
/// accepting, lets connections finish until `timeouts.drain`, closes the rest, and
/// returns.
pub(crate) async fn accept_loop<H, F>(
    listener: TcpListener,
    direction: Direction,
    max_connections: usize,
    ctx: &Context,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, Conn) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(
        max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let tracker = TaskTracker::new();
    let close_now = CancellationToken::new();
    let failures = ThrottledLog::default();
    loop {
        let permit = tokio::select! {
            biased;
            () = ctx.shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        // Out of descriptors and the like: back off and retry, logging at most every 10s.
        let (stream, peer) = tokio::select! {
            biased;
            () = ctx.shutdown.cancelled() => break,
            accepted = listen::accept(&listener, direction.as_str(), &failures) => accepted,
        };
        // A proxy forwards what it has at once; Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        let counters = ctx.metrics.dir(direction);
        counters.opened.fetch_add(1, Relaxed);
        counters.active.fetch_add(1, Relaxed);
        let conn = Conn {
            metrics: ctx.metrics.clone(),
            direction,
            close_now: close_now.clone(),
            _tracked: tracker.token(),
            _permit: permit,
        };
        let span = tracing::info_span!(
            "connection",
            direction = direction.as_str(),
            %peer,
            spiffe_id = tracing::field::Empty,
        );
        // Off this runtime's driver, onto the chosen worker's (see `workers.rs`).
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand the connection to a worker");
                continue;
            }
        };
        let handle = handle.clone();
        ctx.workers.spawn(move || {
            async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => handle(stream, peer, conn).await,
                    Err(e) => tracing::warn!(error = %e, "a worker cannot take the connection"),
                }
            }
            .instrument(span)
        });
    }
    drop(listener);
    let drain = ctx.timeouts.drain;
    tracing::info!(
        direction = direction.as_str(),
        live = tracker.len(),
        ?drain,
        "stopped accepting; draining"
    );
    let forced = shutdown::drain(
        &tracker,
        &close_now,
        Instant::now() + drain,
        FORCE_CLOSE_GRACE,
    )
    .await;
    if forced > 0 {
        tracing::warn!(
            direction = direction.as_str(),
            forced,
            "drain deadline passed; closed the remaining connections"
        );
    }
}
