//! The admin HTTP endpoint (loopback only): liveness, readiness, Prometheus metrics and the
//! current identity as JSON. It never shows key material.
//!
//! - `GET /live`: 200 while the process runs;
//! - `GET /ready`: 200 once a certificate is held and unexpired, 503 with the reason before
//!   (and while shutting down);
//! - `GET /metrics`: [`Metrics::render`], `text/plain; version=0.0.4`;
//! - `GET /identity`: SPIFFE ID, serial, validity, seconds left, bundle roots, whether
//!   capture is on and which app ports are reachable around the sidecar; 503 JSON before the
//!   first certificate;
//! - `GET /app-health/<container>/<kind>`: the app's kubelet probe, run over loopback
//!   ([`AppProbes`]).

use std::io;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use trellis_identity::bundle::{format_time, spki_sha256};
use trellis_identity::hex;

use crate::app_probes::AppProbes;
use crate::capture::exposure::{Exposure, ExposureView};
use crate::credentials::{Credentials, CredentialsRx};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The Prometheus text exposition format's content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

#[derive(Clone)]
struct AdminState {
    creds: CredentialsRx,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    pod: PodState,
}

/// What the admin endpoint knows of the pod around the sidecar.
#[derive(Debug, Clone, Default)]
pub struct PodState {
    pub exposure: Arc<Exposure>,
    pub probes: Arc<AppProbes>,
}

/// The admin routes, for serving or for driving in tests without a socket.
pub fn router(
    creds: CredentialsRx,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    pod: PodState,
) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/identity", get(identity))
        .route("/app-health/{container}/{kind}", get(app_health))
        .with_state(AdminState {
            creds,
            metrics,
            shutdown,
            pod,
        })
}

/// Serves the admin endpoint on `listener` until `shutdown`.
///
/// Wiring: bind `config.admin_listen`, then
/// `tokio::spawn(serve_admin(listener, creds, metrics, shutdown))`.
pub async fn serve_admin(
    listener: TcpListener,
    creds: CredentialsRx,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    pod: PodState,
) -> io::Result<()> {
    let app = router(creds, metrics, shutdown.clone(), pod);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

async fn live() -> &'static str {
    "live\n"
}

async fn ready(State(state): State<AdminState>) -> (StatusCode, String) {
    if state.shutdown.is_triggered() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n".into(),
        );
    }
    let creds = state.creds.borrow().clone();
    match creds {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no certificate yet\n".into(),
        ),
        Some(c) if c.expired() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: certificate expired at {}\n",
                format_time(c.svid.not_after)
            ),
        ),
        Some(_) => (StatusCode::OK, "ready\n".into()),
    }
}

async fn app_health(
    State(state): State<AdminState>,
    Path((container, kind)): Path<(String, String)>,
) -> (StatusCode, String) {
    state.pod.probes.run(&container, &kind).await
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.metrics.render(),
    )
}

/// `/identity`: what the sidecar is, never its key.
#[derive(Debug, Serialize)]
struct IdentityView {
    spiffe_id: String,
    serial: String,
    not_before: String,
    not_after: String,
    seconds_left: u64,
    bundle: BundleView,
    pod: ExposureView,
}

#[derive(Debug, Serialize)]
struct BundleView {
    trust_domain: String,
    version: u64,
    roots: Vec<RootView>,
}

#[derive(Debug, Serialize)]
struct RootView {
    id: String,
    spki_sha256: String,
}

impl IdentityView {
    fn of(c: &Credentials, pod: ExposureView) -> Self {
        let roots = c
            .bundle
            .roots()
            .iter()
            .zip(c.bundle.root_ids())
            .map(|(root, id)| RootView {
                id: id.clone(),
                spki_sha256: spki_sha256(root)
                    .map(|fp| hex::encode(&fp))
                    .unwrap_or_default(),
            })
            .collect();
        Self {
            spiffe_id: c.svid.spiffe_id.to_string(),
            serial: c.svid.serial.clone(),
            not_before: format_time(c.not_before),
            not_after: format_time(c.svid.not_after),
            seconds_left: c.time_left().as_secs(),
            bundle: BundleView {
                trust_domain: c.bundle.trust_domain().to_string(),
                version: c.bundle.version(),
                roots,
            },
            pod,
        }
    }
}

async fn identity(State(state): State<AdminState>) -> Response {
    let creds = state.creds.borrow().clone();
    match creds {
        Some(c) => Json(IdentityView::of(&c, state.pod.exposure.view())).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": "no certificate yet" })),
        )
            .into_response(),
    }
}
