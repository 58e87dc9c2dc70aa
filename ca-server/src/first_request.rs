//! A gRPC connection that has not sent a request is closed after `first_request_timeout`.
//! Without this, a peer could finish the TLS handshake (no client certificate needed: a
//! bootstrap has none) and send nothing, holding a descriptor for ever; HTTP/2 keepalive
//! does not help, since it starts only once the peer has spoken HTTP/2.
//!
//! The connection's [`RequestSeen`] travels in its [`PeerInfo`], which tonic puts into
//! every request; [`mark_request`] (a layer on the whole router) sets it, and
//! [`GuardedConn`] fails its next read once the deadline passes without it, which makes
//! hyper close the connection. The connection also holds its slot of the listener's
//! [`ConnBudget`](trellis_proto::listen::ConnBudget) until it closes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tonic::transport::server::Connected;
use trellis_proto::listen::ConnPermit;

use crate::auth::{PeerInfo, TlsConn};

/// Whether a connection has carried a request yet.
#[derive(Debug, Clone, Default)]
pub struct RequestSeen(Arc<AtomicBool>);

impl RequestSeen {
    fn get(&self) -> bool {
        self.0.load(Relaxed)
    }
}

/// Marks the request's connection as used (for `Server::layer` via
/// `tower::util::MapRequestLayer`).
pub fn mark_request<B>(request: http::Request<B>) -> http::Request<B> {
    if let Some(peer) = request.extensions().get::<PeerInfo>() {
        peer.request_seen.0.store(true, Relaxed);
    }
    request
}

/// A TLS connection with its listener slot and its first-request deadline.
#[derive(Debug)]
pub struct GuardedConn {
    inner: TlsConn,
    seen: RequestSeen,
    deadline: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    _permit: ConnPermit,
}

impl GuardedConn {
    /// Guards `inner`, which must send a request within `timeout` from now.
    pub fn new(inner: TlsConn, permit: ConnPermit, timeout: Duration) -> Self {
        Self {
            seen: inner.connect_info().request_seen,
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            timeout,
            _permit: permit,
        }
    }
}

impl Connected for GuardedConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for GuardedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut() {
            if this.seen.get() {
                this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                let peer = this.inner.connect_info().remote_addr;
                tracing::debug!(
                    ?peer,
                    "no request within the first-request timeout; closing"
                );
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no request within {:?} of the handshake (connections.first_request_timeout)",
                        this.timeout
                    ),
                )));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
