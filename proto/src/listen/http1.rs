//! HTTP/1.1 on a connection budget, for the plain-HTTP endpoints (the CA's CRLs and
//! metrics, the sidecar's admin port) and, over TLS, the CA's SPIFFE bundle endpoint. `axum::serve` has no bound on connections and no
//! header timeout: an idle connection or a request whose headers never end was held for
//! ever. Here hyper's header read timeout runs from the moment the server waits for a
//! request head, so it closes a connection that never sends one, one that sends it too
//! slowly, and a keep-alive connection idle between requests.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tower::{Service, ServiceExt};

use super::{ConnBudget, ThrottledLog, accept};

/// Timeouts of [`serve_http1`].
#[derive(Debug, Clone, Copy)]
pub struct Http1Settings {
    /// A request head must arrive within this of the server starting to wait for it (after
    /// accept, and after each response on a keep-alive connection).
    pub header_timeout: Duration,
    /// On shutdown, a request in progress may finish for this long.
    pub drain: Duration,
}

/// A request handler these servers can run, e.g. an axum `Router`.
pub trait HttpService<B>:
    Service<Request<Incoming>, Response = Response<B>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S, B> HttpService<B> for S where
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A response body hyper can send from any thread.
pub trait ResponseBody:
    Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

impl<B> ResponseBody for B where
    B: Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

/// Serves `service` on `listener` until `shutdown` completes, each connection holding a
/// slot of `budget` (a connection over budget is closed at accept).
pub async fn serve_http1<S, B>(
    listener: TcpListener,
    budget: Arc<ConnBudget>,
    settings: Http1Settings,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: HttpService<B>,
    B: ResponseBody,
{
    let plain = |tcp: TcpStream, _peer| async move { Some(tcp) };
    serve(listener, budget, settings, service, shutdown, plain).await;
}

/// Like [`serve_http1`] over TLS with the newest config of `tls` (no client certificate
/// asked for); a handshake must finish within `handshake_timeout`.
pub async fn serve_https1<S, B>(
    listener: TcpListener,
    budget: Arc<ConnBudget>,
    settings: Http1Settings,
    tls: watch::Receiver<Arc<ServerConfig>>,
    handshake_timeout: Duration,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: HttpService<B>,
    B: ResponseBody,
{
    let handshake = move |tcp: TcpStream, peer: std::net::SocketAddr| {
        let acceptor = TlsAcceptor::from(tls.borrow().clone());
        async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    None
                }
            }
        }
    };
    serve(listener, budget, settings, service, shutdown, handshake).await;
}

async fn serve<S, B, W, F, Io>(
    listener: TcpListener,
    budget: Arc<ConnBudget>,
    settings: Http1Settings,
    service: S,
    shutdown: impl Future<Output = ()>,
    wrap: W,
) where
    S: HttpService<B>,
    B: ResponseBody,
    W: Fn(TcpStream, std::net::SocketAddr) -> F,
    F: Future<Output = Option<Io>> + Send + 'static,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let failures = ThrottledLog::default();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = accept(&listener, budget.name(), &failures) => accepted,
        };
        let Some(permit) = budget.admit(peer.ip()) else {
            drop(tcp);
            continue;
        };
        let service = service.clone();
        let mut stop = stop_rx.clone();
        let io = wrap(tcp, peer);
        tokio::spawn(async move {
            let _permit = permit;
            let Some(io) = io.await else { return };
            let handler =
                hyper::service::service_fn(move |request| service.clone().oneshot(request));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(settings.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), handler);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended");
                    }
                    return;
                }
                _ = stop.wait_for(|stopped| *stopped) => conn.as_mut().graceful_shutdown(),
            }
            let _ = tokio::time::timeout(settings.drain, conn).await;
        });
    }
    drop(listener);
    stop_tx.send_replace(true);
}
