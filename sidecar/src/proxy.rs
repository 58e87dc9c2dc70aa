//! Moving bytes between two streams, and what every listener shares.
//!
//! - [`proxy`]: a byte-exact bidirectional copy that propagates half-close, closes on an
//!   idle timeout or on request, and counts bytes live into [`Metrics`].
//! - [`PlainStream`] and [`Coalesced`] (`streams.rs`): the TCP and TLS sides, each read
//!   through a buffer that exists only while data flows.
//! - [`Registry`] (`registry.rs`): live connections by peer certificate serial, so that a
//!   revocation can close them ([`Registry::close_peer_serial`]).
//! - [`Context`] and the accept loop (`listen.rs`) shared by the inbound and outbound
//!   listeners: connection cap, a span per connection, graceful drain.
//! - [`tls_failure_reason`] and [`session_params`] (`reason.rs`): short names for
//!   handshake failures and for what a handshake negotiated.
//! - [`Workers`] (`workers.rs`): the single-threaded runtimes connections are spread over.

mod listen;
mod reason;
mod registry;
mod streams;
mod workers;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncWrite};
use tokio::time::Instant;

pub(crate) use listen::{Conn, accept_loop};
pub use reason::{session_params, tls_failure_reason};
pub use registry::{Registration, Registry};
pub use streams::{BUFFER_SIZE, Coalesced, PlainStream};
pub use workers::Workers;

use crate::config::Timeouts;
use crate::credentials::CredentialsRx;
use crate::metrics::{DirectionCounters, Metrics};
use tokio_util::sync::CancellationToken;

/// What every listener shares; clone one per listener.
#[derive(Clone, Debug)]
pub struct Context {
    pub timeouts: Timeouts,
    /// The current certificate; `None` until the first one (connections are refused).
    pub creds: CredentialsRx,
    pub metrics: Arc<Metrics>,
    /// Live connections by peer serial, for closing revoked peers.
    pub registry: Registry,
    /// Set on SIGTERM: listeners stop accepting and drain for `timeouts.drain`.
    pub shutdown: CancellationToken,
    /// Read buffer per direction of a connection; [`BUFFER_SIZE`] unless measuring.
    pub buffer_size: usize,
    /// The runtimes connections run on; the current one unless the sidecar starts more.
    pub workers: Workers,
}

impl Context {
    /// A context with the default buffer size, running connections on the current runtime
    /// (call it inside one).
    pub fn new(
        timeouts: Timeouts,
        creds: CredentialsRx,
        metrics: Arc<Metrics>,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            timeouts,
            creds,
            metrics,
            registry,
            shutdown,
            buffer_size: BUFFER_SIZE,
            workers: Workers::current(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The bidirectional copy.

/// How a proxied connection ended.
#[derive(Debug)]
pub enum End {
    /// Both sides finished writing (each EOF was passed on as a shutdown).
    Finished,
    /// No byte moved either way for the idle timeout.
    Idle,
    /// Closed from outside: revocation or the drain deadline.
    Closed,
    /// A read or write failed (reset, TLS error, a TLS EOF without close_notify).
    Failed(io::Error),
}

/// The result of [`proxy`].
#[derive(Debug)]
pub struct Outcome {
    pub end: End,
    /// Bytes read from `peer` and written to `other`.
    pub from_peer: u64,
    /// Bytes read from `other` and written to `peer`.
    pub to_peer: u64,
}

impl Outcome {
    /// Logs how the connection ended (inside the connection's span, which names the peer).
    pub fn log(&self) {
        let (from_peer, to_peer) = (self.from_peer, self.to_peer);
        match &self.end {
            End::Finished => tracing::debug!(from_peer, to_peer, "connection finished"),
            End::Idle => tracing::debug!(from_peer, to_peer, "connection closed: idle timeout"),
            End::Closed => tracing::info!(from_peer, to_peer, "connection closed by the sidecar"),
            End::Failed(e) => {
                tracing::debug!(from_peer, to_peer, error = %e, "connection ended with an error")
            }
        }
    }
}

/// One direction: read chunks from a buffered reader, write them out, and pass EOF on as a
/// shutdown of the writer (for TLS: close_notify, then TCP FIN).
struct Pump<'a> {
    counter: &'a AtomicU64,
    activity: &'a Activity,
    moved: u64,
    read_done: bool,
    need_flush: bool,
    done: bool,
}

impl<'a> Pump<'a> {
    fn new(counter: &'a AtomicU64, activity: &'a Activity) -> Self {
        Self {
            counter,
            activity,
            moved: 0,
            read_done: false,
            need_flush: false,
            done: false,
        }
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut TaskContext<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        while !self.done {
            if self.read_done {
                // poll_shutdown flushes first.
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                break;
            }
            let chunk = match Pin::new(&mut *reader).poll_fill_buf(cx) {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    // Nothing more to read for now: push out what the writer buffered (a
                    // TLS writer may hold encrypted records the socket did not take).
                    if self.need_flush {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            };
            if chunk.is_empty() {
                self.read_done = true;
                continue;
            }
            let n = ready!(Pin::new(&mut *writer).poll_write(cx, chunk))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            Pin::new(&mut *reader).consume(n);
            self.moved += n as u64;
            self.need_flush = true;
            self.counter.fetch_add(n as u64, Relaxed);
            self.activity.touch();
        }
        Poll::Ready(Ok(()))
    }
}

/// When a byte last moved, in milliseconds since the connection started.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
    }

    /// Completes once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Relaxed));
            let Some(deadline) = last.checked_add(idle) else {
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Copies bytes both ways between `peer` and `other` until both directions finished, one
/// failed, nothing moved for `idle`, or `close` completes. When one side's reads end, the
/// other side's write half is shut down and the opposite direction carries on (half-close).
///
/// Bytes from `peer` count into `counters.bytes_received`, bytes to it into `bytes_sent`
/// (inbound: the remote sidecar is the peer; outbound: the local client is). Both streams
/// are dropped (closed) on return.
pub async fn proxy<P, O, C>(
    mut peer: P,
    mut other: O,
    idle: Duration,
    counters: &DirectionCounters,
    close: C,
) -> Outcome
where
    P: AsyncBufRead + AsyncWrite + Unpin,
    O: AsyncBufRead + AsyncWrite + Unpin,
    C: Future<Output = ()>,
{
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let mut inward = Pump::new(&counters.bytes_received, &activity);
    let mut outward = Pump::new(&counters.bytes_sent, &activity);
    let end = {
        let copy = std::future::poll_fn(|cx| {
            if let Poll::Ready(Err(e)) = inward.poll(cx, &mut peer, &mut other) {
                return Poll::Ready(Err(e));
            }
            if let Poll::Ready(Err(e)) = outward.poll(cx, &mut other, &mut peer) {
                return Poll::Ready(Err(e));
            }
            if inward.done && outward.done {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        });
        tokio::select! {
            result = copy => match result {
                Ok(()) => End::Finished,
                Err(e) => End::Failed(e),
            },
            () = activity.idle_for(idle) => End::Idle,
            () = close => End::Closed,
        }
    };
    Outcome {
        end,
        from_peer: inward.moved,
        to_peer: outward.moved,
    }
}
