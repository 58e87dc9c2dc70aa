//! The CA's plain-HTTP endpoint (off unless `http_listen` is set): CRLs for tools outside
//! the mesh, and Prometheus metrics. Nothing here is secret: CRLs are signed and public.
//!
//! Routes: `/crl` and `/crl.pem` (the active intermediate's CRL), `/crl/{id}` and
//! `/crl/{id}.pem` (any intermediate's), `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trellis_identity::pem;
use trellis_proto::listen::{Http1Settings, serve_http1};

use crate::connections::Listeners;
use crate::error::CaError;
use crate::services::Services;

#[derive(Clone)]
struct Http {
    ca: Arc<Services>,
    listeners: Listeners,
}

/// Serves until `stop` is set, within the `http` budget of `listeners` and its header
/// timeout (`trellis_proto::listen::serve_http1`).
pub(crate) async fn serve(
    listener: TcpListener,
    listeners: Listeners,
    ca: Arc<Services>,
    stop: CancellationToken,
) {
    let config = &ca.core.config;
    let settings = Http1Settings {
        header_timeout: config.connections.http_header_timeout,
        drain: config.shutdown_grace,
    };
    let budget = listeners.http.clone();
    let app = Router::new()
        .route("/crl", get(active_der))
        .route("/crl.pem", get(active_pem))
        .route("/crl/{id}", get(by_id))
        .route("/metrics", get(metrics))
        .with_state(Http { ca, listeners });
    let shutdown = async move { stop.cancelled().await };
    serve_http1(listener, budget, settings, app, shutdown).await;
}

fn crl_response(result: Result<Vec<u8>, CaError>, as_pem: bool) -> Response {
    match result {
        Ok(der) if as_pem => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            pem::encode("X509 CRL", &der),
        )
            .into_response(),
        Ok(der) => ([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response(),
        Err(CaError::NotFound(m)) => (StatusCode::NOT_FOUND, m).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "signing a CRL failed");
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
    }
}

async fn active_der(State(http): State<Http>) -> Response {
    crl_response(http.ca.crls.get(None).await, false)
}

async fn active_pem(State(http): State<Http>) -> Response {
    crl_response(http.ca.crls.get(None).await, true)
}

async fn by_id(State(http): State<Http>, Path(id): Path<String>) -> Response {
    let (id, as_pem) = match id.strip_suffix(".pem") {
        Some(bare) => (bare.to_owned(), true),
        None => (id, false),
    };
    crl_response(http.ca.crls.get(Some(&id)).await, as_pem)
}

async fn metrics(State(http): State<Http>, headers: HeaderMap) -> Response {
    let exported = Arc::new(crate::metrics::Exported {
        ca: http.ca,
        listeners: http.listeners,
    });
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = trellis_proto::metrics::negotiate(accept, &exported);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
