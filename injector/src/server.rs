//! The webhook's HTTPS server: rustls over TCP, HTTP/1.1, an axum router.
//!
//! - `POST /inject/namespace`: for pods in namespaces labelled `trellis.dev/inject=enabled`
//!   (the MutatingWebhookConfiguration's namespaceSelector): injected unless opted out;
//! - `POST /inject/pod`: for every other pod: injected only if annotated
//!   `trellis.dev/inject: enabled`;
//! - `GET /live`, `GET /ready` (503 once shutting down), `GET /metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::Instrument;
use trellis_inject::webhook;
use trellis_inject::{Settings, Unannotated};
use trellis_proto::listen::{ConnBudget, ThrottledLog, accept};

use crate::metrics::Metrics;

/// The API server sends whole pods; 3 MiB is its own request limit, so this is generous.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// A TLS handshake, and each request head, must arrive within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once. Only the API server and the kubelet connect; this bounds a
/// flood from anything else in the cluster.
const MAX_CONNECTIONS: usize = 1024;

/// What every request handler shares.
#[derive(Debug, Clone)]
pub struct Injector {
    /// What goes into every injected pod.
    pub settings: Arc<Settings>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server is shutting down (`/ready` then answers 503).
    pub stop: CancellationToken,
}

/// The routes, without a socket (tests drive it with `oneshot`).
pub fn router(injector: Injector) -> Router {
    Router::new()
        .route("/inject/namespace", post(namespace))
        .route("/inject/pod", post(pod))
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(injector)
}

async fn namespace(State(injector): State<Injector>, body: Bytes) -> Response {
    review(&injector, &body, Unannotated::Inject)
}

async fn pod(State(injector): State<Injector>, body: Bytes) -> Response {
    review(&injector, &body, Unannotated::Skip)
}

fn review(injector: &Injector, body: &[u8], unannotated: Unannotated) -> Response {
    let started = Instant::now();
    match webhook::review(body, &injector.settings, unannotated) {
        Ok((answer, decision)) => {
            tracing::info!(pod = %decision.pod, outcome = %decision.outcome, "admission review");
            injector
                .metrics
                .answered(&decision.outcome, started.elapsed());
            (
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_vec(&answer).unwrap_or_default(),
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "bad request");
            injector.metrics.bad_request(started.elapsed());
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
    }
}

async fn ready(State(injector): State<Injector>) -> Response {
    if injector.stop.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

async fn metrics(State(injector): State<Injector>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = trellis_proto::metrics::negotiate(accept, &injector.metrics);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Serves `router` over TLS on `listener` until `stop` is cancelled, then lets requests
/// in flight finish for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    drain: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let budget = ConnBudget::new("webhook", MAX_CONNECTIONS, MAX_CONNECTIONS);
    let failures = ThrottledLog::default();
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = accept(&listener, budget.name(), &failures) => accepted,
        };
        let Some(permit) = budget.admit(peer.ip()) else {
            continue;
        };
        let connection = connection(
            tcp,
            acceptor.clone(),
            router.clone(),
            metrics.clone(),
            stop.clone(),
        );
        connections.spawn(
            async move {
                let _permit = permit;
                connection.await;
            }
            .instrument(tracing::info_span!("connection", %peer)),
        );
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the drain; closing them"
        );
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    router: Router,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics.handshake_failed();
            tracing::info!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics.handshake_failed();
            tracing::info!("TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |request| router.clone().oneshot(request));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended");
            }
            return;
        }
        () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use trellis_inject::pod::Trust;

    fn injector() -> Injector {
        Injector {
            settings: Arc::new(Settings {
                image: "trellis/sidecar:test".into(),
                pull_policy: None,
                ca_address: "trellis-ca.trellis-system.svc:8443".into(),
                trust_domain: "cluster.local".into(),
                trust: Trust::ConfigMap("trellis-trust-bundle".into()),
            }),
            metrics: Arc::new(Metrics::default()),
            stop: CancellationToken::new(),
        }
    }

    async fn call(router: &Router, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body.to_owned()))
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn review(pod: &str) -> String {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{
            "uid":"u1","kind":{{"group":"","version":"v1","kind":"Pod"}},"namespace":"demo",
            "operation":"CREATE","object":{pod}}}}}"#
        )
    }

    #[tokio::test]
    async fn answers_are_counted_by_outcome_and_ready_follows_shutdown() {
        let injector = injector();
        let router = router(injector.clone());
        let pod = r#"{"metadata":{"name":"web"},"spec":{"containers":[{"name":"web"}]}}"#;
        let (status, body) = call(&router, "POST", "/inject/namespace", &review(pod)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("\"patchType\":\"JSONPatch\""), "{body}");
        let (status, _) = call(&router, "POST", "/inject/pod", &review(pod)).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = call(&router, "POST", "/inject/pod", "{}").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("not an AdmissionReview"), "{body}");
        assert_eq!(
            call(&router, "GET", "/inject/pod", "").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            call(&router, "GET", "/nowhere", "").await.0,
            StatusCode::NOT_FOUND
        );

        let (_, metrics) = call(&router, "GET", "/metrics", "").await;
        for line in [
            "trellis_injector_requests_total{outcome=\"patched\"} 1\n",
            "trellis_injector_requests_total{outcome=\"skipped\"} 1\n",
            "trellis_injector_requests_total{outcome=\"bad_request\"} 1\n",
            "trellis_injector_request_duration_seconds_count 3\n",
        ] {
            assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
        }

        assert_eq!(
            call(&router, "GET", "/ready", "").await,
            (StatusCode::OK, "ready\n".into())
        );
        injector.stop.cancel();
        assert_eq!(
            call(&router, "GET", "/ready", "").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(call(&router, "GET", "/live", "").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let router = router(injector());
        let huge = "x".repeat(MAX_BODY + 1);
        let (status, _) = call(&router, "POST", "/inject/pod", &huge).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
