//! The SPIFFE bundle endpoint (off unless `bundle_endpoint_listen` is set): the trust
//! bundle in the SPIFFE bundle format over HTTPS, for other trust domains that federate
//! with this one and for tools. It follows the `https_spiffe` profile: the CA serves it with
//! its own serving certificate (`spiffe://<td>/trellis/ca`), which a consumer verifies
//! against a bundle of this trust domain it already holds, so each bundle it fetches is
//! authenticated by the one before. No client certificate is asked for: the bundle is
//! public.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use trellis_identity::spiffe_bundle::SpiffeBundle;
use trellis_proto::listen::{ConnBudget, Http1Settings, serve_https1};

use crate::state::Core;

/// Connections the endpoint holds at once, in total and per source address. Consumers
/// poll at the refresh hint, so a few suffice; the bound keeps a flood from taking the
/// descriptors the gRPC port needs (they come out of the open-file reserve).
const MAX_CONNECTIONS: usize = 128;
const MAX_CONNECTIONS_PER_SOURCE: usize = 8;

/// The bundle document as served now.
pub(crate) fn document(core: &Core) -> String {
    SpiffeBundle::from_trust_bundle(&core.bundle(), Some(core.config.bundle_refresh_hint)).to_json()
}

async fn bundle(State(core): State<Arc<Core>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document(&core),
    )
}

/// Serves until `stop`, with the newest serving certificate of `grpc_tls` (its ALPN
/// changed to HTTP/1.1).
pub(crate) async fn serve(
    listener: TcpListener,
    core: Arc<Core>,
    grpc_tls: watch::Receiver<Arc<ServerConfig>>,
    stop: CancellationToken,
) {
    let tls = http1_configs(grpc_tls, stop.clone());
    let settings = Http1Settings {
        header_timeout: core.config.connections.http_header_timeout,
        drain: core.config.shutdown_grace,
    };
    let handshake_timeout = core.config.connections.handshake_timeout;
    let budget = ConnBudget::new(
        "bundle_endpoint",
        MAX_CONNECTIONS,
        MAX_CONNECTIONS_PER_SOURCE,
    );
    let app = Router::new().route("/", get(bundle)).with_state(core);
    let shutdown = async move { stop.cancelled().await };
    serve_https1(
        listener,
        budget,
        settings,
        tls,
        handshake_timeout,
        app,
        shutdown,
    )
    .await;
}

/// Follows the gRPC port's TLS config (renewed serving certificate included) with HTTP/1.1
/// as the only ALPN protocol.
fn http1_configs(
    mut grpc_tls: watch::Receiver<Arc<ServerConfig>>,
    stop: CancellationToken,
) -> watch::Receiver<Arc<ServerConfig>> {
    let http1 = |config: &Arc<ServerConfig>| {
        let mut config = ServerConfig::clone(config);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    };
    let (tx, rx) = watch::channel(http1(&grpc_tls.borrow_and_update()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = grpc_tls.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
            tx.send_replace(http1(&grpc_tls.borrow_and_update()));
        }
    });
    rx
}

/// The refresh hint when none is configured: consumers see a rotation within this.
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);
