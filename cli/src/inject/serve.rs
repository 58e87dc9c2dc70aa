//! The webhook's HTTPS server: rustls over TCP, HTTP/1.1 (hyper), three routes.
//!
//! - `POST /inject/namespace`: for pods in namespaces labelled `trellis.dev/inject=enabled`
//!   (the MutatingWebhookConfiguration's namespaceSelector): injected unless opted out;
//! - `POST /inject/pod`: for every other pod: injected only if annotated
//!   `trellis.dev/inject: enabled`;
//! - `GET /healthz`: liveness and readiness.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::pod::{Settings, Unannotated};
use super::webhook;

/// The API server sends whole pods; 3 MiB is its own request limit, so this is generous.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// On SIGTERM, requests in flight may finish for this long.
const DRAIN: Duration = Duration::from_secs(10);

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

async fn handle(
    request: Request<Incoming>,
    settings: Arc<Settings>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let mode = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (&Method::POST, "/inject/namespace") => Unannotated::Inject,
        (&Method::POST, "/inject/pod") => Unannotated::Skip,
        (_, "/inject/namespace" | "/inject/pod") => {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
        }
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the request body: {e}\n"),
            );
        }
    };
    match webhook::review(&body, &settings, mode) {
        Ok((answer, decision)) => {
            eprintln!("inject: pod {}: {}", decision.pod, decision.outcome);
            let mut response = text(
                StatusCode::OK,
                serde_json::to_vec(&answer).unwrap_or_default(),
            );
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => {
            eprintln!("inject: bad request from {peer}: {e}");
            text(StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
    }
}

/// Serves until `shutdown` completes, then lets requests in flight finish for a while.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    settings: Arc<Settings>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    eprintln!("inject: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let settings = settings.clone();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    eprintln!("inject: TLS handshake with {peer} failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |request| {
                let settings = settings.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(handle(request, settings, peer).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
    let _ = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}
