//! The CA's plain-HTTP endpoint (off unless `http_listen` is set): CRLs for tools outside
//! the mesh, and Prometheus metrics. Nothing here is secret: CRLs are signed and public.
//!
//! Routes: `/crl` and `/crl.pem` (the active intermediate's CRL), `/crl/{id}` and
//! `/crl/{id}.pem` (any intermediate's), `/metrics`.

use std::fmt::Write;
use std::sync::Arc;
use trellis_identity::histogram;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trellis_identity::{CertInfo, pem};
use trellis_proto::listen::{ConnBudget, Http1Settings, serve_http1};

use crate::connections::Listeners;
use crate::error::CaError;
use crate::state::{CaState, unix};

#[derive(Clone)]
struct Http {
    state: Arc<CaState>,
    listeners: Listeners,
}

/// Serves until `stop` is set, within the `http` budget of `listeners` and its header
/// timeout (`trellis_proto::listen::serve_http1`).
pub async fn serve(
    listener: TcpListener,
    listeners: Listeners,
    state: Arc<CaState>,
    stop: CancellationToken,
) {
    let settings = Http1Settings {
        header_timeout: state.config.connections.http_header_timeout,
        drain: state.config.shutdown_grace,
    };
    let budget = listeners.http.clone();
    let app = Router::new()
        .route("/crl", get(active_der))
        .route("/crl.pem", get(active_pem))
        .route("/crl/{id}", get(by_id))
        .route("/metrics", get(metrics))
        .with_state(Http { state, listeners });
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
    crl_response(http.state.crls.get(&http.state, None).await, false)
}

async fn active_pem(State(http): State<Http>) -> Response {
    crl_response(http.state.crls.get(&http.state, None).await, true)
}

async fn by_id(State(http): State<Http>, Path(id): Path<String>) -> Response {
    let (id, as_pem) = match id.strip_suffix(".pem") {
        Some(bare) => (bare.to_owned(), true),
        None => (id, false),
    };
    crl_response(http.state.crls.get(&http.state, Some(&id)).await, as_pem)
}

async fn metrics(State(http): State<Http>) -> Response {
    let state = &http.state;
    let now = state.now_unix() as i64;
    let mut out = String::new();
    let name = "trellis_ca_issuance_duration_seconds";
    histogram::header(
        &mut out,
        name,
        "Certificates issued (Certify and admin IssueCertificate), from the credential check to the durable record.",
    );
    state.issuance_seconds.render(&mut out, name, "");
    crate::federation::render_metrics(state, &mut out);
    // Absent, not zero, while the store is being reopened after a write failure.
    if let Some(count) = state.store.issued_total() {
        let _ = writeln!(
            out,
            "# HELP trellis_ca_certificates_issued_total Certificates issued since initialisation.\n# TYPE trellis_ca_certificates_issued_total counter\ntrellis_ca_certificates_issued_total {count}"
        );
    }
    if let Some(live) = state.store.live_by_root(now as u64) {
        let _ = writeln!(
            out,
            "# HELP trellis_ca_certificates_live Unexpired certificates (revoked ones included), by the root they chain to.\n# TYPE trellis_ca_certificates_live gauge"
        );
        for (root, count) in live {
            let _ = writeln!(
                out,
                "trellis_ca_certificates_live{{root=\"{root}\"}} {count}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP trellis_ca_store_pruned_total Expired certificate records removed by retention since start.\n# TYPE trellis_ca_store_pruned_total counter\ntrellis_ca_store_pruned_total {}",
        state.store.pruned_total()
    );
    let _ = writeln!(
        out,
        "# HELP trellis_ca_store_writable 1 if the certificate store can record issuances, 0 while it cannot (disk full, read-only).\n# TYPE trellis_ca_store_writable gauge\ntrellis_ca_store_writable {}",
        u8::from(state.store.failure().is_none())
    );
    let _ = writeln!(
        out,
        "# HELP trellis_ca_store_flushes_total Group-commit flushes of the certificate store (each ends in fdatasync) since start; issuances per flush is how well writers share them.\n# TYPE trellis_ca_store_flushes_total counter\ntrellis_ca_store_flushes_total {}",
        state.store.flushes()
    );
    let _ = writeln!(
        out,
        "# HELP trellis_ca_revoked_unexpired Revoked certificates that have not expired.\n# TYPE trellis_ca_revoked_unexpired gauge\ntrellis_ca_revoked_unexpired {}",
        state.revocations().entries.len()
    );
    let _ = writeln!(
        out,
        "# HELP trellis_ca_trust_bundle_version Current trust-bundle version.\n# TYPE trellis_ca_trust_bundle_version gauge\ntrellis_ca_trust_bundle_version {}",
        state.bundle().version()
    );
    let _ = writeln!(
        out,
        "# HELP trellis_ca_root_expiry_seconds Seconds until each root expires.\n# TYPE trellis_ca_root_expiry_seconds gauge"
    );
    for root in state.store.roots().unwrap_or_default() {
        if let Ok(info) = CertInfo::parse(&root.cert_der) {
            let _ = writeln!(
                out,
                "trellis_ca_root_expiry_seconds{{root=\"{}\",state=\"{}\"}} {}",
                root.id,
                root.state.as_str(),
                unix(info.not_after) as i64 - now
            );
        }
    }
    expiry_timestamps(state, &mut out);
    crate::limits::metrics::render(&state.limits, &mut out);
    let l = &http.listeners;
    ConnBudget::render(
        "trellis_ca",
        &[&l.grpc, &l.grpc_handshakes, &l.http],
        &mut out,
    );
    let signer = state.signer();
    if let Ok(info) = CertInfo::parse(&signer.cert) {
        let _ = writeln!(
            out,
            "# HELP trellis_ca_intermediate_expiry_seconds Seconds until the signing intermediate expires.\n# TYPE trellis_ca_intermediate_expiry_seconds gauge\ntrellis_ca_intermediate_expiry_seconds{{intermediate=\"{}\"}} {}",
            signer.id,
            unix(info.not_after) as i64 - now
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// When each CA certificate expires, as Unix seconds (the Prometheus convention for
/// points in time: alerts compare them with `time()`). Roots carry their state, so an
/// alert can ignore retired ones.
fn expiry_timestamps(state: &CaState, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP trellis_ca_root_expiry_timestamp_seconds NotAfter of each root, in Unix seconds.\n# TYPE trellis_ca_root_expiry_timestamp_seconds gauge"
    );
    for root in state.store.roots().unwrap_or_default() {
        if let Ok(info) = CertInfo::parse(&root.cert_der) {
            let _ = writeln!(
                out,
                "trellis_ca_root_expiry_timestamp_seconds{{root=\"{}\",state=\"{}\"}} {}",
                root.id,
                root.state.as_str(),
                unix(info.not_after)
            );
        }
    }
    let signer = state.signer();
    if let Ok(info) = CertInfo::parse(&signer.cert) {
        let _ = writeln!(
            out,
            "# HELP trellis_ca_intermediate_expiry_timestamp_seconds NotAfter of the signing intermediate, in Unix seconds.\n# TYPE trellis_ca_intermediate_expiry_timestamp_seconds gauge\ntrellis_ca_intermediate_expiry_timestamp_seconds{{intermediate=\"{}\",root=\"{}\"}} {}",
            signer.id,
            signer.root_id,
            unix(info.not_after)
        );
    }
    let serving = state
        .serving_not_after
        .load(std::sync::atomic::Ordering::Relaxed);
    if serving > 0 {
        let _ = writeln!(
            out,
            "# HELP trellis_ca_serving_certificate_expiry_timestamp_seconds NotAfter of the CA's own TLS serving certificate, in Unix seconds (renewed at half its life).\n# TYPE trellis_ca_serving_certificate_expiry_timestamp_seconds gauge\ntrellis_ca_serving_certificate_expiry_timestamp_seconds {serving}"
        );
    }
    if let Some(attestor) = &state.kubernetes {
        let stats = attestor.key_stats();
        let _ = writeln!(
            out,
            "# HELP trellis_ca_kubernetes_keys Service-account signing keys in force (the last set read successfully).\n# TYPE trellis_ca_kubernetes_keys gauge\ntrellis_ca_kubernetes_keys {}\n# HELP trellis_ca_kubernetes_key_refresh_failures_total Reads of the service-account signing keys that failed since start.\n# TYPE trellis_ca_kubernetes_key_refresh_failures_total counter\ntrellis_ca_kubernetes_key_refresh_failures_total {}",
            stats.keys.load(std::sync::atomic::Ordering::Relaxed),
            stats.failures.load(std::sync::atomic::Ordering::Relaxed),
        );
    }
}
