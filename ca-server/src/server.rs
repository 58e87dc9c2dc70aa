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
use trellis_identity::{TrustBundle, TrustDomain};
use trellis_proto::admin::v1::admin_server::AdminServer;
use trellis_proto::ca::v1::workload_ca_server::WorkloadCaServer;
use trellis_proto::listen::{self, ThrottledLog};

use crate::api::admin::AdminService;
use crate::api::workload::WorkloadService;
use crate::auth::{TlsConn, admin_interceptor};
use crate::bootstrap;
use crate::config::Config;
use crate::connections::{ConnectionsConfig, Listeners};
use crate::error::CaError;
use crate::first_request::{GuardedConn, mark_request};
use crate::limits::Limits;
use crate::services::Services;
use crate::store::Store;

/// Largest gRPC message the CA accepts. Requests are a CSR and a few strings.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A running CA. Drop-safe: call [`RunningCa::shutdown`] for a graceful stop.
#[derive(Debug)]
pub struct RunningCa {
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The CRL and metrics endpoint, if configured.
    pub http_addr: Option<SocketAddr>,
    /// The SPIFFE bundle endpoint, if configured.
    pub bundle_endpoint_addr: Option<SocketAddr>,
    ca: Arc<Services>,
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
        let grace = self.ca.core.config.shutdown_grace;
        match tokio::time::timeout(grace + Duration::from_secs(1), self.task).await {
            Ok(joined) => joined.map_err(|e| CaError::Internal(e.to_string()))??,
            Err(_) => tracing::warn!("shutdown grace period over; closing remaining connections"),
        }
        // The last entries get a checkpoint of their own (flushed just below).
        if let Err(e) = self.ca.audit.checkpoint() {
            tracing::warn!(error = %e, "no audit checkpoint at shutdown");
        }
        let store = &self.ca.core.store;
        store
            .flush_now()
            .map_err(|e| CaError::Unavailable(e.to_string()))?;
        // Wait for connection and stream tasks to let go of the store, so the database is
        // closed (and its lock released) when this returns: a restart in the same process
        // can then reopen it.
        let store = Arc::downgrade(store);
        drop(self.ca);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.strong_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if store.strong_count() > 0 {
            tracing::warn!("CA store still referenced after shutdown; database stays open");
        }
        Ok(())
    }

    /// The trust domain this CA serves.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.ca.core.config.trust_domain
    }

    /// The data directory (keys, admin credentials, `bundle.pem`, the database).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.ca.core.config.data_dir
    }

    /// The trust bundle in force.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.ca.core.bundle()
    }

    /// Streams `bundle` to every watcher as the one in force, without storing it: for tests
    /// that need a bundle this CA would not make itself (another CA's roots in it).
    pub fn publish_bundle(&self, bundle: TrustBundle) {
        self.ca.core.publish_bundle(bundle);
    }

    /// The store, for tools and tests that seed or read records directly.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.ca.core.store
    }

    /// The issuance limiter (its counters, or a slot taken as a busy request would).
    pub fn limits(&self) -> &Arc<Limits> {
        &self.ca.limits
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
    let ca = bootstrap::open(config, clock).await?;
    let core = &ca.core;
    let tls = ca.serving.start().await?;
    // What initialisation and this start wrote is signed at once, so that even a CA younger
    // than one checkpoint interval has its whole audit log covered.
    ca.audit.checkpoint()?;
    core.store
        .flush_now()
        .map_err(|e| CaError::Unavailable(e.to_string()))?;
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(crate::serving::renew_in_background(
        ca.serving.clone(),
        stopped.clone(),
    ));
    tokio::spawn(crate::revocation::prune_expired(
        ca.revocations.clone(),
        stopped.clone(),
    ));
    tokio::spawn(crate::follow::run(ca.follower.clone(), stopped.clone()));
    tokio::spawn(crate::roots::watch_expiry(core.clone(), stopped.clone()));
    tokio::spawn(crate::audit::maintain(ca.audit.clone(), stopped.clone()));
    tokio::spawn(crate::federation::maintain(
        ca.federations.clone(),
        stopped.clone(),
    ));
    tokio::spawn(crate::retention::run(
        core.store.clone(),
        core.clock(),
        core.config.certificate_retention,
        stopped.clone(),
    ));
    let listeners = Listeners::new(&core.config.connections);
    let http_addr = match http_listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            tokio::spawn(crate::http::serve(
                listener,
                listeners.clone(),
                ca.clone(),
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
                core.clone(),
                tls.clone(),
                stopped.clone(),
            ));
            addr
        }
        None => None,
    };
    let task = tokio::spawn(serve(listener, listeners.clone(), ca.clone(), tls, stopped));
    tracing::info!(%addr, trust_domain = %core.config.trust_domain, "trellis-ca serving");
    Ok(RunningCa {
        addr,
        http_addr,
        bundle_endpoint_addr,
        ca,
        listeners,
        _stop_on_drop: stop.clone().drop_guard(),
        stop,
        task,
    })
}

/// Builds the tonic router with both APIs and the standard health service.
async fn serve(
    listener: TcpListener,
    listeners: Listeners,
    ca: Arc<Services>,
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
    let workload = WorkloadCaServer::new(WorkloadService::new(ca.clone(), stopped.clone()))
        .max_decoding_message_size(MAX_MESSAGE);
    let admin = tonic::service::interceptor::InterceptedService::new(
        AdminServer::new(AdminService::new(ca.clone())).max_decoding_message_size(MAX_MESSAGE),
        admin_interceptor(ca.core.clone(), ca.revocations.clone()),
    );
    let (conns_tx, conns_rx) = mpsc::channel::<Result<GuardedConn, std::io::Error>>(64);
    let accept = tokio::spawn(accept_loop(
        listener,
        tls,
        conns_tx,
        stopped.clone(),
        listeners,
        ca.core.config.connections.clone(),
    ));
    let grace = ca.core.config.shutdown_grace;
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
