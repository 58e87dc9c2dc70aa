//! The running CA's shared state: configuration, store, clock, the signing intermediate and
//! the published trust bundle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use trellis_proto::metrics::Histogram;

use tokio::sync::watch;
use trellis_identity::TrustBundle;
use trellis_identity::bundle::{KnownIssuer, Usage, VerifiedSvid};
use trellis_identity::clock::Clock;
use trellis_identity::svid::SvidError;

use crate::attest::kubernetes::Attestor;
use crate::config::Config;
use crate::jwt_svid::JwtSigner;
use crate::limits::Limits;
use crate::peer::PeerChain;
use crate::store::Store;
use trellis_identity::profile::SigningCa;

/// Everything a request handler needs.
#[derive(Debug)]
pub struct CaState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    signer: RwLock<Signer>,
    /// The active JWT-SVID signing key.
    jwt_signer: RwLock<Arc<JwtSigner>>,
    /// Bumped whenever the signing intermediate changes (the serving certificate follows).
    signer_changes: watch::Sender<u64>,
    bundle: watch::Sender<Arc<TrustBundle>>,
    /// Held from reading the bundle version to publishing the next one, so that root, JWT
    /// key and federation changes never give two different bundles the same version.
    bundle_changes: tokio::sync::Mutex<()>,
    revocations: watch::Sender<Arc<RevocationList>>,
    /// Last trust-bundle version each workload reported, and when: what the store's
    /// acknowledgements say, read at start-up and written through.
    reported_bundles: Mutex<HashMap<String, BundleReport>>,
    /// The serving TLS config, set once the server starts.
    pub(crate) serving_tls: OnceLock<watch::Sender<Arc<rustls::ServerConfig>>>,
    /// Verifies Kubernetes service-account tokens, if `[kubernetes]` is configured.
    pub kubernetes: Option<Arc<Attestor>>,
    /// Overload protection for the issuance APIs.
    pub limits: Limits,
    /// How long issuances took, for `/metrics`.
    pub(crate) issuance_seconds: Histogram,
    /// Signed CRLs, shared by the HTTP endpoint and the admin status.
    pub(crate) crls: crate::crl::CrlCache,
    /// NotAfter (Unix seconds) of the newest serving certificate, 0 before the first.
    pub(crate) serving_not_after: std::sync::atomic::AtomicU64,
}

/// The signing intermediate, and the same certificate as a verification shortcut for the
/// chains it signed (renewals present leaf + this intermediate).
#[derive(Debug, Clone)]
struct Signer {
    ca: Arc<SigningCa>,
    as_issuer: Option<Arc<KnownIssuer>>,
}

impl Signer {
    fn new(ca: SigningCa, bundle: &TrustBundle) -> Self {
        let as_issuer = KnownIssuer::new(ca.cert.clone(), bundle)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "signing intermediate does not verify against the bundle; renewals take the full chain check")
            })
            .ok()
            .map(Arc::new);
        Self {
            ca: Arc::new(ca),
            as_issuer,
        }
    }
}

/// The revoked, unexpired certificates, as streamed to sidecars.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    pub version: u64,
    pub entries: Vec<crate::store::RevocationRecord>,
}

/// A workload's report of the bundle version it holds.
#[derive(Debug, Clone, Copy)]
pub struct BundleReport {
    pub version: u64,
    pub reported_at: u64,
}

impl CaState {
    /// Assembles the state of an initialised CA.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        signer: SigningCa,
        jwt_signer: Arc<JwtSigner>,
        bundle: TrustBundle,
    ) -> Self {
        Self {
            kubernetes: config
                .kubernetes
                .clone()
                .map(|k| Arc::new(Attestor::new(k))),
            limits: Limits::new(config.limits.clone()),
            issuance_seconds: Histogram::default(),
            crls: crate::crl::CrlCache::default(),
            serving_not_after: std::sync::atomic::AtomicU64::new(0),
            config,
            store,
            clock,
            signer: RwLock::new(Signer::new(signer, &bundle)),
            jwt_signer: RwLock::new(jwt_signer),
            signer_changes: watch::Sender::new(0),
            bundle: watch::Sender::new(Arc::new(bundle)),
            bundle_changes: tokio::sync::Mutex::new(()),
            revocations: watch::Sender::new(Arc::new(RevocationList::default())),
            reported_bundles: Mutex::new(HashMap::new()),
            serving_tls: OnceLock::new(),
        }
    }

    /// Replaces the signing intermediate (root activation).
    pub fn set_signer(&self, signer: SigningCa) {
        *self.signer.write().unwrap_or_else(|p| p.into_inner()) =
            Signer::new(signer, &self.bundle());
        self.signer_changes.send_modify(|n| *n += 1);
    }

    /// The active JWT-SVID signing key.
    pub fn jwt_signer(&self) -> Arc<JwtSigner> {
        self.jwt_signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the JWT-SVID signing key (activation).
    pub fn set_jwt_signer(&self, signer: Arc<JwtSigner>) {
        *self.jwt_signer.write().unwrap_or_else(|p| p.into_inner()) = signer;
    }

    /// Follows changes of the signing intermediate.
    pub fn watch_signer(&self) -> watch::Receiver<u64> {
        self.signer_changes.subscribe()
    }

    /// The current revocation list.
    pub fn revocations(&self) -> Arc<RevocationList> {
        self.revocations.borrow().clone()
    }

    /// Follows revocation-list changes.
    pub fn watch_revocations(&self) -> watch::Receiver<Arc<RevocationList>> {
        self.revocations.subscribe()
    }

    /// Publishes a revocation list if its entries differ from the current one.
    pub fn publish_revocations(&self, entries: Vec<crate::store::RevocationRecord>) {
        self.revocations.send_if_modified(|current| {
            if current.entries == entries {
                return false;
            }
            *current = Arc::new(RevocationList {
                version: current.version + 1,
                entries,
            });
            true
        });
    }

    /// Reads the acknowledgements the store holds (start-up), so that the rotation checks
    /// answer after a restart as they did before it.
    pub fn load_bundle_reports(&self) -> Result<(), crate::store::StoreError> {
        let acks = self.store.acks()?;
        let mut reports = self
            .reported_bundles
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (spiffe_id, version, reported_at) in acks {
            reports.insert(
                spiffe_id,
                BundleReport {
                    version,
                    reported_at,
                },
            );
        }
        Ok(())
    }

    /// Records, durably, that `spiffe_id` holds bundle `version`. Writes only when the
    /// version changes, so renewals that repeat it cost nothing.
    pub async fn report_bundle(
        &self,
        spiffe_id: &str,
        version: u64,
    ) -> Result<(), crate::store::StoreError> {
        let known = self
            .reported_bundles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(spiffe_id)
            .map(|r| r.version);
        if known == Some(version) {
            return Ok(());
        }
        let report = BundleReport {
            version,
            reported_at: self.now_unix(),
        };
        let mark = self.store.mark();
        self.store.put_ack(spiffe_id, version, report.reported_at)?;
        self.store.durable(mark).await?;
        self.reported_bundles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spiffe_id.to_owned(), report);
        Ok(())
    }

    /// Every workload's latest bundle report.
    pub fn bundle_reports(&self) -> HashMap<String, BundleReport> {
        self.reported_bundles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The intermediate that signs new certificates.
    pub fn signer(&self) -> Arc<SigningCa> {
        self.signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ca
            .clone()
    }

    /// Verifies a client chain against the current bundle, with the signing intermediate
    /// as a shortcut for the chains it signed (see [`TrustBundle::verify_with_known`]).
    pub fn verify_client_chain(
        &self,
        chain: &[rustls_pki_types::CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<VerifiedSvid, SvidError> {
        let bundle = self.bundle();
        let as_issuer = self
            .signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_issuer
            .clone();
        match as_issuer {
            Some(known) => bundle.verify_with_known(&known, chain, now, Usage::Client),
            None => bundle.verify(chain, now, Usage::Client),
        }
    }

    /// Verifies a connection's client chain like [`verify_client_chain`](Self::verify_client_chain),
    /// reusing the connection's earlier result while it still holds (see [`PeerChain`]).
    pub fn verify_peer(
        &self,
        peer: &PeerChain,
        now: SystemTime,
    ) -> Result<VerifiedSvid, SvidError> {
        peer.verify_with(&self.bundle(), now, |chain| {
            self.verify_client_chain(chain, now)
        })
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.borrow().clone()
    }

    /// Follows trust-bundle changes.
    pub fn watch_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.subscribe()
    }

    /// Waits for any other bundle change to finish; hold the guard until the new version is
    /// published.
    pub(crate) async fn changing_bundle(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.bundle_changes.lock().await
    }

    /// Publishes a new trust bundle to every watcher.
    pub fn publish_bundle(&self, bundle: TrustBundle) {
        self.bundle.send_replace(Arc::new(bundle));
    }

    /// Now, from the injected clock.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Now as Unix seconds.
    pub fn now_unix(&self) -> u64 {
        unix(self.now())
    }
}

/// A time as Unix seconds (0 before the epoch).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs `work` on the blocking pool: file writes with fsync, key files, signatures on a
/// cache miss, store scans. The async workers (two by default) carry every connection, so
/// a call that waits on the disk there stalls issuance for its duration.
pub async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::error::CaError> + Send + 'static,
) -> Result<T, crate::error::CaError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| crate::error::CaError::Internal(format!("blocking task: {e}")))?
}
