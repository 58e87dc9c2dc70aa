//! The admin HTTP endpoint (loopback only): liveness, readiness, Prometheus metrics and the
//! current identity as JSON. It never shows key material.
//!
//! - `GET /live`: 200 while the process runs;
//! - `GET /ready`: 200 once a certificate is held and unexpired, 503 with the reason before
//!   (and while shutting down);
//! - `GET /metrics`: [`Metrics::render`], `text/plain; version=0.0.4`;
//! - `GET /identity`: SPIFFE ID, serial, validity, seconds left, when it renews, the last
//!   renewal error, whether the CA's streams are connected, bundle roots and expiry, whether
//!   capture is on and which app ports are reachable around the sidecar; 503 JSON before the
//!   first certificate;
//! - `GET /app-health/<container>/<kind>`: the app's kubelet probe, run over loopback
//!   ([`AppProbes`]).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use trellis_identity::bundle::{format_time, spki_sha256};
use trellis_identity::{CertInfo, hex};
use trellis_proto::listen::{ConnBudget, Http1Settings, serve_http1};
use trellis_proto::metrics as exposition;

use crate::app_probes::AppProbes;
use crate::capture::exposure::{Exposure, ExposureView};
use crate::credentials::{Credentials, CredentialsRx};
use crate::metrics::{CaStream, Metrics};
use tokio_util::sync::CancellationToken;

/// The admin port's bounds: it may be reachable from the pod network (kubelet probes,
/// Prometheus), so a peer that opens connections and sends nothing, or sends headers that
/// never end, must neither hold them for ever nor take descriptors from the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Open connections at once (lowered to fit the open-file limit, `fd_budget.rs`).
    pub max_connections: usize,
    /// Open connections from one source address (IPv6 per /64), so that one peer cannot
    /// take the kubelet's probes' slots.
    pub max_connections_per_source: usize,
    /// A request head must arrive within this: after accept, and between requests.
    pub header_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_connections_per_source: 16,
            header_timeout: Duration::from_secs(10),
        }
    }
}

impl AdminLimits {
    /// The defaults with whatever is set; an error names the setting (without `admin.`).
    pub fn build(
        max_connections: Option<usize>,
        max_connections_per_source: Option<usize>,
        header_timeout: Option<Duration>,
    ) -> Result<Self, String> {
        let d = Self::default();
        let count = |name: &str, v: Option<usize>, default: usize| match v.unwrap_or(default) {
            n @ 1..=100_000 => Ok(n),
            n => Err(format!("{name} is {n}; it must be between 1 and 100000")),
        };
        let header_timeout = header_timeout.unwrap_or(d.header_timeout);
        if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&header_timeout) {
            return Err(format!(
                "header_timeout is {header_timeout:?}; it must be between 100ms and 10m"
            ));
        }
        Ok(Self {
            max_connections: count("max_connections", max_connections, d.max_connections)?,
            max_connections_per_source: count(
                "max_connections_per_source",
                max_connections_per_source,
                d.max_connections_per_source,
            )?,
            header_timeout,
        })
    }
}

#[derive(Clone)]
struct AdminState {
    creds: CredentialsRx,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    pod: PodState,
    /// The admin port's connections, shown in `/metrics` when served.
    budget: Option<Arc<ConnBudget>>,
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
    shutdown: CancellationToken,
    pod: PodState,
) -> Router {
    routes(AdminState {
        creds,
        metrics,
        shutdown,
        pod,
        budget: None,
    })
}

fn routes(state: AdminState) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/identity", get(identity))
        .route("/app-health/{container}/{kind}", get(app_health))
        .with_state(state)
}

/// Serves the admin endpoint on `listener` until `shutdown`, with the default
/// [`AdminLimits`].
pub async fn serve_admin(
    listener: TcpListener,
    creds: CredentialsRx,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    pod: PodState,
) -> io::Result<()> {
    serve_admin_limited(
        listener,
        AdminLimits::default(),
        creds,
        metrics,
        shutdown,
        pod,
    )
    .await
}

/// Serves the admin endpoint on `listener` until `shutdown`, within `limits`: a connection
/// over them is closed at accept and counted in
/// `trellis_sidecar_listener_connections_refused_total{listener="admin"}`.
///
/// Wiring: bind `config.admin_listen`, then
/// `tokio::spawn(serve_admin_limited(listener, config.admin_limits, creds, metrics, shutdown, pod))`.
pub async fn serve_admin_limited(
    listener: TcpListener,
    limits: AdminLimits,
    creds: CredentialsRx,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    pod: PodState,
) -> io::Result<()> {
    let budget = ConnBudget::new(
        "admin",
        limits.max_connections,
        limits.max_connections_per_source,
    );
    let app = routes(AdminState {
        creds,
        metrics,
        shutdown: shutdown.clone(),
        pod,
        budget: Some(budget.clone()),
    });
    let settings = Http1Settings {
        header_timeout: limits.header_timeout,
        drain: Duration::from_secs(2),
    };
    serve_http1(listener, budget, settings, app, async move {
        shutdown.cancelled().await
    })
    .await;
    Ok(())
}

async fn live() -> &'static str {
    "live\n"
}

async fn ready(State(state): State<AdminState>) -> (StatusCode, String) {
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n".into(),
        );
    }
    let creds = state.creds.borrow().clone();
    let why = state
        .metrics
        .last_failure()
        .map(|w| format!(": {w}"))
        .unwrap_or_default();
    match creds {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: no certificate yet{why}\n"),
        ),
        Some(c) if c.expired() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: certificate expired at {}{why}\n",
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

/// The sidecar's metrics and its admin listener's connection budget, in one exposition.
struct Exported {
    metrics: Arc<Metrics>,
    budget: Option<Arc<ConnBudget>>,
}

impl exposition::Source for Exported {
    fn collect(&self, families: &mut exposition::Families<'_>) -> std::fmt::Result {
        self.metrics.collect(families)?;
        match &self.budget {
            Some(budget) => ConnBudget::collect("trellis_sidecar_listener", &[budget], families),
            None => Ok(()),
        }
    }
}

async fn metrics_text(State(state): State<AdminState>, headers: HeaderMap) -> impl IntoResponse {
    let exported = Arc::new(Exported {
        metrics: state.metrics.clone(),
        budget: state.budget.clone(),
    });
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = exposition::negotiate(accept, &exported);
    ([(header::CONTENT_TYPE, content_type)], body)
}

/// `/identity`: what the sidecar is, never its key.
#[derive(Debug, Serialize)]
struct IdentityView {
    spiffe_id: String,
    serial: String,
    not_before: String,
    not_after: String,
    seconds_left: u64,
    /// NotAfter − NotBefore.
    lifetime_seconds: u64,
    /// When the sidecar renews this certificate (40–60 % into its life), and how far off
    /// that is (negative: overdue).
    renews_at: String,
    seconds_until_renewal: i64,
    /// Why the last attempt to get a certificate failed, while no newer one was obtained.
    last_renewal_error: Option<String>,
    /// Whether the CA's streams are connected: the trust bundle and the revocations.
    ca_streams: CaStreamsView,
    bundle: BundleView,
    pod: ExposureView,
}

#[derive(Debug, Serialize)]
struct CaStreamsView {
    trust_bundle: bool,
    revocations: bool,
}

#[derive(Debug, Serialize)]
struct BundleView {
    trust_domain: String,
    version: u64,
    /// NotAfter of the longest-lived root: after it, the bundle trusts nothing.
    not_after: String,
    /// Until then (negative once passed).
    seconds_left: i64,
    roots: Vec<RootView>,
    /// The trust domains this one federates with, whose peers are verified against their
    /// own roots where a policy names them.
    federated: Vec<FederatedView>,
}

#[derive(Debug, Serialize)]
struct FederatedView {
    trust_domain: String,
    /// The foreign bundle's sequence number.
    sequence: u64,
    /// Root ids (SPKI SHA-256 prefixes, as `trellis root list` shows them).
    roots: Vec<String>,
}

#[derive(Debug, Serialize)]
struct RootView {
    id: String,
    spki_sha256: String,
    not_after: String,
}

impl IdentityView {
    fn of(c: &Credentials, metrics: &Metrics, pod: ExposureView) -> Self {
        let mut last_root_expiry = None;
        let roots = c
            .bundle
            .roots()
            .iter()
            .zip(c.bundle.root_ids())
            .map(|(root, id)| {
                let not_after = CertInfo::parse(root).ok().map(|info| info.not_after);
                last_root_expiry = last_root_expiry.max(not_after);
                RootView {
                    id: id.clone(),
                    spki_sha256: spki_sha256(root)
                        .map(|fp| hex::encode(&fp))
                        .unwrap_or_default(),
                    not_after: not_after.map(format_time).unwrap_or_default(),
                }
            })
            .collect();
        let connected = |s: CaStream| metrics.ca_streams[s as usize].load(Relaxed) == 1;
        let now = std::time::SystemTime::now();
        let signed = |t: std::time::SystemTime| match t.duration_since(now) {
            Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        let renews_at = crate::agent::renew_at(c);
        Self {
            spiffe_id: c.svid.spiffe_id.to_string(),
            serial: c.svid.serial.clone(),
            not_before: format_time(c.not_before),
            not_after: format_time(c.svid.not_after),
            seconds_left: c.time_left().as_secs(),
            lifetime_seconds: c
                .svid
                .not_after
                .duration_since(c.not_before)
                .unwrap_or_default()
                .as_secs(),
            renews_at: format_time(renews_at),
            seconds_until_renewal: signed(renews_at),
            last_renewal_error: metrics.last_failure(),
            ca_streams: CaStreamsView {
                trust_bundle: connected(CaStream::TrustBundle),
                revocations: connected(CaStream::Revocations),
            },
            bundle: BundleView {
                trust_domain: c.bundle.trust_domain().to_string(),
                version: c.bundle.version(),
                not_after: last_root_expiry.map(format_time).unwrap_or_default(),
                seconds_left: last_root_expiry.map(signed).unwrap_or_default(),
                roots,
                federated: c
                    .bundle
                    .federated()
                    .values()
                    .map(|b| FederatedView {
                        trust_domain: b.trust_domain().to_string(),
                        sequence: b.version(),
                        roots: b.root_ids().to_vec(),
                    })
                    .collect(),
            },
            pod,
        }
    }
}

async fn identity(State(state): State<AdminState>) -> Response {
    let creds = state.creds.borrow().clone();
    match creds {
        Some(c) => Json(IdentityView::of(
            &c,
            &state.metrics,
            state.pod.exposure.view(),
        ))
        .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": "no certificate yet" })),
        )
            .into_response(),
    }
}
