//! The CA's own serving identity: its certificate, issued through the issuance pipeline and
//! renewed at half its lifetime, whenever the bundle changes and whenever the signing
//! intermediate does; the TLS config built around it, which every new connection reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use trellis_identity::tls::{self, DeferredClientVerifier, Identity, KeyExchange, Versions};
use trellis_identity::{SpiffeId, WorkloadKey};

use crate::bootstrap::CA_PATH;
use crate::error::CaError;
use crate::issuance::{Credential, Issuance};
use crate::state::unix;

/// Lifetime of the CA's serving certificate; renewed at half of it.
const SERVING_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The serving-identity service.
#[derive(Debug)]
pub(crate) struct ServingIdentity {
    issuance: Arc<Issuance>,
    /// The serving TLS config, set once the server starts.
    tls: OnceLock<watch::Sender<Arc<ServerConfig>>>,
    /// NotAfter (Unix seconds) of the newest serving certificate, 0 before the first.
    not_after: AtomicU64,
}

impl ServingIdentity {
    pub(crate) fn new(issuance: Arc<Issuance>) -> Self {
        Self {
            issuance,
            tls: OnceLock::new(),
            not_after: AtomicU64::new(0),
        }
    }

    /// Issues the first serving certificate; the config it returns follows every renewal.
    pub(crate) async fn start(&self) -> Result<watch::Receiver<Arc<ServerConfig>>, CaError> {
        let sender = watch::Sender::new(self.issue().await?);
        let receiver = sender.subscribe();
        let _ = self.tls.set(sender);
        Ok(receiver)
    }

    /// NotAfter (Unix seconds) of the newest serving certificate, 0 before the first.
    pub(crate) fn not_after(&self) -> u64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// Issues a new serving certificate under the current signer and switches to it.
    pub(crate) async fn renew(&self) -> Result<(), CaError> {
        let config = self.issue().await?;
        if let Some(tls) = self.tls.get() {
            tls.send_replace(config);
        }
        Ok(())
    }

    /// Issues the CA's own serving certificate and builds a TLS config around it.
    async fn issue(&self) -> Result<Arc<ServerConfig>, CaError> {
        let core = self.issuance.core();
        let id: SpiffeId = core
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
            names: core.config.server_names.clone(),
        };
        let issued = self.issuance.certify(&csr, credential, None).await?;
        if let Some(leaf) = issued.chain.first()
            && let Ok(info) = trellis_identity::CertInfo::parse(leaf)
        {
            self.not_after
                .store(unix(info.not_after), Ordering::Relaxed);
        }
        let identity = Identity {
            chain: issued.chain,
            key: key.private_key_der(),
        };
        let verifier = Arc::new(DeferredClientVerifier::new(&core.bundle()));
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
}

/// Renews the serving certificate at half its lifetime, whenever the bundle changes (so
/// the client-auth hints name every current root), and when the signing intermediate
/// changes (so it moves to the new root before the old one is retired).
pub(crate) async fn renew_in_background(serving: Arc<ServingIdentity>, stopped: CancellationToken) {
    let core = serving.issuance.core();
    let mut bundles = core.watch_bundle();
    let mut signers = core.watch_signer();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SERVING_LIFETIME / 2) => {}
            changed = bundles.changed() => if changed.is_err() { return },
            changed = signers.changed() => if changed.is_err() { return },
            _ = stopped.cancelled() => return,
        }
        match serving.renew().await {
            Ok(()) => tracing::info!("CA serving certificate renewed"),
            Err(e) => {
                tracing::error!(error = %e, "renewing the CA serving certificate failed; retrying in 60s")
            }
        }
    }
}
