//! Serving: the CA's own TLS identity (renewed in the background), the accept loop that
//! terminates TLS with the newest config, and the tonic server with both APIs and health.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::util::MapRequestLayer;
use trellis_identity::clock::{Clock, SystemClock};
use trellis_identity::tls::{self, DeferredClientVerifier, Identity, KeyExchange, Versions};
use trellis_identity::{SpiffeId, WorkloadKey};
use trellis_proto::admin::v1::admin_server::AdminServer;
use trellis_proto::ca::v1::workload_ca_server::WorkloadCaServer;
use trellis_proto::listen::{self, ThrottledLog};

use crate::api::admin::AdminService;
use crate::api::workload::WorkloadService;
use crate::auth::{TlsConn, admin_interceptor};
use crate::bootstrap::{self, CA_PATH};
use crate::config::Config;
use crate::connections::{ConnectionsConfig, Listeners};
use crate::error::CaError;
use crate::first_request::{GuardedConn, mark_request};
use crate::issuance::Credential;
use crate::state::CaState;

/// Largest gRPC message the CA accepts. Requests are a CSR and a few strings.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Lifetime of the CA's serving certificate; renewed at half of it.
const SERVING_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A running CA. Drop-safe: call [`RunningCa::shutdown`] for a graceful stop.
#[derive(Debug)]
pub struct RunningCa {
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The CRL and metrics endpoint, if configured.
    pub http_addr: Option<SocketAddr>,
    /// The SPIFFE bundle endpoint, if configured.
    pub bundle_endpoint_addr: Option<SocketAddr>,
    pub state: Arc<CaState>,
    /// The listeners' connection budgets (what `/metrics` shows of them).
    pub listeners: Listeners,
    stop: CancellationToken,
    /// Stops the background tasks if the CA is dropped without [`RunningCa::shutdown`].
    _stop_on_drop: DropGuard,
    task: JoinHandle<Result<(), CaError>>,
}

impl RunningCa {
    /// Stops accepting, lets in-flight requests finish (up to `shutdown_grace`), flushes.
    pub async fn shutdown(self) -> Result<(), CaError> {
        self.stop.cancel();
        let grace = self.state.config.shutdown_grace;
        match tokio::time::timeout(grace + Duration::from_secs(1), self.task).await {
            Ok(joined) => joined.map_err(|e| CaError::Internal(e.to_string()))??,
            Err(_) => tracing::warn!("shutdown grace period over; closing remaining connections"),
        }
        // The last entries get a checkpoint of their own (flushed just below).
        if let Err(e) = self.state.checkpoint_audit() {
            tracing::warn!(error = %e, "no audit checkpoint at shutdown");
        }
        self.state
            .store
            .flush_now()
            .map_err(|e| CaError::Unavailable(e.to_string()))?;
        // Wait for connection and stream tasks to let go of the state, so the database is
        // closed (and its lock released) when this returns: a restart in the same process
        // can then reopen it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.state) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&self.state) > 1 {
            tracing::warn!("CA state still referenced after shutdown; database stays open");
        }
        Ok(())
    }
}

/// Opens (initialising if needed) the CA and serves it on `config.listen`.
pub async fn start(config: Config) -> Result<RunningCa, CaError> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// [`start`] with an injected clock.
pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<RunningCa, CaError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| CaError::Unavailable(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CaError::Internal(e.to_string()))?;
    let http_listener = match config.http_listen {
        Some(http) => Some(TcpListener::bind(http).await.map_err(|e| {
            CaError::Unavailable(format!("cannot listen on {http} (http_listen): {e}"))
        })?),
        None => None,
    };
    let bundle_listener = match config.bundle_endpoint_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            CaError::Unavailable(format!(
                "cannot listen on {addr} (bundle_endpoint_listen): {e}"
            ))
        })?),
        None => None,
    };
    let state = bootstrap::open(config, clock).await?;
    state.refresh_revocations()?;
    let tls = serving_config(&state).await?;
    // What initialisation and this start wrote is signed at once, so that even a CA younger
    // than one checkpoint interval has its whole audit log covered.
    state.checkpoint_audit()?;
    state
        .store
        .flush_now()
        .map_err(|e| CaError::Unavailable(e.to_string()))?;
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(renew_serving_identity(
        state.clone(),
        tls.clone(),
        stopped.clone(),
    ));
    tokio::spawn(crate::revocation::prune_expired(
        state.clone(),
        stopped.clone(),
    ));
    tokio::spawn(crate::roots::watch_expiry(state.clone(), stopped.clone()));
    tokio::spawn(crate::audit::maintain(state.clone(), stopped.clone()));
    tokio::spawn(crate::federation::maintain(state.clone(), stopped.clone()));
    tokio::spawn(crate::retention::run(state.clone(), stopped.clone()));
    let listeners = Listeners::new(&state.config.connections);
    let http_addr = match http_listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            tokio::spawn(crate::http::serve(
                listener,
                listeners.clone(),
                state.clone(),
                stopped.clone(),
            ));
            addr
        }
        None => None,
    };
    let bundle_endpoint_addr = match bundle_listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            tokio::spawn(crate::bundle_endpoint::serve(
                listener,
                state.clone(),
                tls.subscribe(),
                stopped.clone(),
            ));
            addr
        }
        None => None,
    };
    let task = tokio::spawn(serve(
        listener,
        listeners.clone(),
        state.clone(),
        tls.subscribe(),
        stopped,
    ));
    tracing::info!(%addr, trust_domain = %state.config.trust_domain, "trellis-ca serving");
    Ok(RunningCa {
        addr,
        http_addr,
        bundle_endpoint_addr,
        state,
        listeners,
        _stop_on_drop: stop.clone().drop_guard(),
        stop,
        task,
    })
}

/// Issues the CA's own serving certificate and builds a TLS config around it.
async fn issue_serving_identity(state: &CaState) -> Result<Arc<ServerConfig>, CaError> {
    let id: SpiffeId = state
        .config
        .trust_domain
        .id(CA_PATH)
        .map_err(|e| CaError::Internal(e.to_string()))?;
    let key = WorkloadKey::generate().map_err(|e| CaError::Internal(e.to_string()))?;
    let csr = key
        .csr_der(None)
        .map_err(|e| CaError::Internal(e.to_string()))?;
    let credential = Credential::Internal {
        spiffe_id: id,
        lifetime: SERVING_LIFETIME,
        names: state.config.server_names.clone(),
    };
    let issued = state.certify(&csr, credential, None).await?;
    if let Some(leaf) = issued.chain.first()
        && let Ok(info) = trellis_identity::CertInfo::parse(leaf)
    {
        state.serving_not_after.store(
            crate::state::unix(info.not_after),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    let identity = Identity {
        chain: issued.chain,
        key: key.private_key_der(),
    };
    let bundle = state.bundle();
    let verifier = Arc::new(DeferredClientVerifier::new(&bundle));
    let config = tls::server_config(
        &identity,
        verifier,
        Versions::Tls12And13,
        // Prefer-only: the CA also serves tools (openssl, grpcurl) without ML-KEM.
        KeyExchange::PostQuantumPreferred,
        &[trellis_proto::channel::ALPN_H2],
    )
    .map_err(|e| CaError::Internal(e.to_string()))?;
    Ok(Arc::new(config))
}

async fn serving_config(state: &CaState) -> Result<watch::Sender<Arc<ServerConfig>>, CaError> {
    let sender = watch::Sender::new(issue_serving_identity(state).await?);
    let _ = state.serving_tls.set(sender.clone());
    Ok(sender)
}

impl CaState {
    /// Issues a new serving certificate under the current signer and switches to it.
    pub async fn renew_serving_identity(&self) -> Result<(), CaError> {
        let config = issue_serving_identity(self).await?;
        if let Some(tls) = self.serving_tls.get() {
            tls.send_replace(config);
        }
        Ok(())
    }
}

/// Renews the serving certificate at half its lifetime, whenever the bundle changes (so
/// the client-auth hints name every current root), and when the signing intermediate
/// changes (so it moves to the new root before the old one is retired).
async fn renew_serving_identity(
    state: Arc<CaState>,
    tls: watch::Sender<Arc<ServerConfig>>,
    stopped: CancellationToken,
) {
    let mut bundles = state.watch_bundle();
    let mut signers = state.watch_signer();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SERVING_LIFETIME / 2) => {}
            changed = bundles.changed() => if changed.is_err() { return },
            changed = signers.changed() => if changed.is_err() { return },
            _ = stopped.cancelled() => return,
        }
        match issue_serving_identity(&state).await {
            Ok(config) => {
                tls.send_replace(config);
                tracing::info!("CA serving certificate renewed");
            }
            Err(e) => {
                tracing::error!(error = %e, "renewing the CA serving certificate failed; retrying in 60s")
            }
        }
    }
}

/// Builds the tonic router with both APIs and the standard health service.
async fn serve(
    listener: TcpListener,
    listeners: Listeners,
    state: Arc<CaState>,
    tls: watch::Receiver<Arc<ServerConfig>>,
    stopped: CancellationToken,
) -> Result<(), CaError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<WorkloadCaServer<WorkloadService>>()
        .await;
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;
    let workload = WorkloadCaServer::new(WorkloadService::new(state.clone(), stopped.clone()))
        .max_decoding_message_size(MAX_MESSAGE);
    let admin = tonic::service::interceptor::InterceptedService::new(
        AdminServer::new(AdminService::new(state.clone())).max_decoding_message_size(MAX_MESSAGE),
        admin_interceptor(state.clone()),
    );
    let (conns_tx, conns_rx) = mpsc::channel::<Result<GuardedConn, std::io::Error>>(64);
    let accept = tokio::spawn(accept_loop(
        listener,
        tls,
        conns_tx,
        stopped.clone(),
        listeners,
        state.config.connections.clone(),
    ));
    let grace = state.config.shutdown_grace;
    let stop_signal = stopped.clone();
    let server = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .concurrency_limit_per_connection(256)
        .layer(MapRequestLayer::new(
            mark_request::<tonic::body::Body> as fn(_) -> _,
        ))
        .add_service(health)
        .add_service(workload)
        .add_service(admin)
        .serve_with_incoming_shutdown(ReceiverStream::new(conns_rx), async move {
            stop_signal.cancelled().await;
        });
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        _ = async {
            stopped.cancelled().await;
            tokio::time::sleep(grace).await;
        } => Ok(()),
    };
    accept.abort();
    result.map_err(|e| CaError::Internal(format!("gRPC server: {e}")))
}

/// Accepts gRPC connections: each takes a slot of the listener's budget (in total and per
/// source address) and, until its handshake is done, one of the handshake budget; over
/// either it is closed at once. A handshake must finish within `handshake_timeout` of
/// accept, and the first request must follow within `first_request_timeout`.
async fn accept_loop(
    listener: TcpListener,
    tls: watch::Receiver<Arc<ServerConfig>>,
    conns: mpsc::Sender<Result<GuardedConn, std::io::Error>>,
    stopped: CancellationToken,
    listeners: Listeners,
    limits: ConnectionsConfig,
) {
    let failures = ThrottledLog::default();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listen::accept(&listener, "grpc", &failures) => accepted,
            _ = stopped.cancelled() => return,
        };
        let Some(slot) = listeners.grpc.admit(peer.ip()) else {
            continue;
        };
        let Some(handshake_slot) = listeners.grpc_handshakes.admit(peer.ip()) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.borrow().clone());
        let conns = conns.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
            let result = handshake.await;
            drop(handshake_slot);
            match result {
                Ok(Ok(stream)) => {
                    let conn =
                        GuardedConn::new(TlsConn::new(stream), slot, limits.first_request_timeout);
                    let _ = conns.send(Ok(conn)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
